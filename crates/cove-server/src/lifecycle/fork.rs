//! Forks (`POST /sandboxes/{id}/fork`): a snapshot of the sandbox, and `count` new sandboxes
//! started from it, each with its own id and token. The source keeps running as it was
//! (stopped for the moment of the copy). Where its backend can keep memory (gVisor), the
//! forks start with its processes running, each a copy going its own way (`mode: full` in
//! the answer); elsewhere, or when asked for files only, a fork starts like a sandbox made
//! from a template, on the source's files (`mode: filesystem`). The snapshot is no template
//! of its own: its layers stay as long as a fork does.

use std::sync::Arc;

use super::{Lifecycle, LifecycleError, Live, TemplateEntry, settings::Settings, snapshot::Keep};

/// The forks of one request: one outcome each, and whether they carry the source's memory.
pub struct Forked {
    pub outcomes: Vec<Result<Arc<Live>, LifecycleError>>,
    pub memory: bool,
}

/// The most forks one request may ask for.
pub const MAX_FORKS: i64 = 20;
/// A fork's lifetime when the request names none (E2B's default for forks).
const FORK_TIMEOUT_SECS: i64 = 15;

impl Lifecycle {
    /// Forks a sandbox of `team` `count` times; one outcome per fork.
    pub async fn fork(
        self: &Arc<Self>,
        team: &str,
        id: &str,
        timeout: Option<i64>,
        count: Option<i64>,
        memory: Option<bool>,
    ) -> Result<Forked, LifecycleError> {
        let count = count.unwrap_or(1);
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(LifecycleError::BadRequest(format!(
                "count must be between 1 and {MAX_FORKS}, got {count}"
            )));
        }
        let timeout = timeout.unwrap_or(FORK_TIMEOUT_SECS);
        super::settings::check_timeout(timeout)?;
        let live = self.get(team, id)?;
        let made = self.snapshot_of(&live, Keep::asked(memory)).await?;
        let with_memory = made.template.memory.is_some();
        let source = live.record();
        let template_of_source = self.templates.get(team, &source.template_id).ok();
        let entry = TemplateEntry {
            id: source.template_id.clone(),
            alias: source
                .alias
                .clone()
                .unwrap_or_else(|| source.template_id.clone()),
            names: Vec::new(),
            template: made.template.clone(),
            created_at: source.started_at,
            kind: super::TemplateKind::Snapshot {
                team: team.to_owned(),
                sandbox: id.to_owned(),
            },
            // What the source's template set for its processes, and its start command: a
            // fork starts its server again as a sandbox of that template does.
            defaults: source.defaults.clone(),
            start: template_of_source.as_ref().and_then(|t| t.start.clone()),
            cpu_count: Some(source.cpu_count),
            memory_mb: Some(source.memory_mb),
            store_layers: Vec::new(),
            shell: template_of_source.as_ref().and_then(|t| t.shell.clone()),
            runtime: source.metadata.get(super::settings::RUNTIME_KEY).cloned(),
            shared: None,
        };
        // A warm sandbox of the source's template can take a fork's files, unless something
        // of the template's already runs in it (a start command, a warm kernel), or it was
        // started from other layers or process settings (the template was rebuilt since the
        // source started: the layers it holds in the store would not be the fork's). A
        // snapshot's template has no warm sandboxes.
        let fork_of = template_of_source.filter(|t| {
            !with_memory
                && self.runtime.can_reroot()
                && !matches!(t.kind, super::TemplateKind::Snapshot { .. })
                && t.start.is_none()
                && self.default_flavor() == super::warm::Flavor::Plain
                && t.defaults == source.defaults
                && source
                    .template
                    .as_ref()
                    .is_some_and(|s| s.layers.ends_with(&t.template.layers))
        });
        let forks = (0..count).map(|_| {
            let mut settings = Settings::fork(&source, entry.clone(), timeout);
            settings.fork_of = fork_of.clone();
            let this = self.clone();
            async move {
                let tracker = this.creating.clone();
                tracker
                    .spawn(async move { this.create_now(settings).await })
                    .await
                    .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
            }
        });
        let outcomes = futures::future::join_all(forks).await;
        // The forks were restored from the checkpoint and need it no more (their records
        // name the layers beside it, which stay while they live).
        if let Some(image) = &made.template.memory
            && let Err(err) = std::fs::remove_dir_all(image)
        {
            tracing::warn!(%err, image = %image.display(), "cannot remove a fork's checkpoint");
        }
        // Each fork that started holds the layers now (its record names them); when none
        // did, nothing does, and they go (not on the way of a fork that started).
        drop(made);
        if outcomes.iter().all(Result::is_err) {
            self.collect_layers().await;
        }
        tracing::info!(sandbox_id = %id, %team, count, memory = with_memory, started = outcomes.iter().filter(|o| o.is_ok()).count(), "sandbox forked");
        Ok(Forked {
            outcomes,
            memory: with_memory,
        })
    }
}
