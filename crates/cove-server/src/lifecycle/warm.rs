//! Keeping warm sandboxes: started ahead of demand, one at a time per template and kind, for
//! `base` always and for the templates creates used lately, and ended when their template
//! goes idle and at shutdown (they are not worth keeping). Templates whose gVisor sandboxes
//! start from a kernel image ([`super::kernel_images`]) have a pool of those beside, restored
//! ahead of demand once their image is ready.

use std::{sync::Arc, time::Duration};

use super::{
    Lifecycle,
    pool::{Begin, Warm},
    settings::Settings,
    start_cmd,
    templates::TemplateEntry,
};
use crate::secrets;

/// A template no create asked for in this long loses its warm sandboxes.
pub const WARM_IDLE: Duration = Duration::from_secs(600);
/// How long the refill after a claim waits: a sandbox's first command follows its create at
/// once, and a refill starting a sandbox beside it (mounts, a new agent) would slow it
/// (measured: create → first output 13.4 → 10.7 ms for `base`, 16.4 → 12.2 ms for a built
/// template, in docs/BENCHMARKS.md's quiet run). Creates that come faster find the pool
/// empty either way.
pub const REFILL_AFTER_CLAIM: Duration = Duration::from_millis(100);

impl Lifecycle {
    /// Tops the warm pool of this template and kind up again, one sandbox at a time, in the
    /// background, beginning `after` from now.
    pub fn refill(self: &Arc<Self>, entry: &TemplateEntry, network: bool, after: Duration) {
        self.refill_pool(entry, network, after, false);
    }

    /// [`Lifecycle::refill`] for the pool of gVisor sandboxes restored from the template's
    /// kernel image.
    pub(super) fn refill_gvisor(
        self: &Arc<Self>,
        entry: &TemplateEntry,
        network: bool,
        after: Duration,
    ) {
        self.refill_pool(entry, network, after, true);
    }

    fn refill_pool(
        self: &Arc<Self>,
        entry: &TemplateEntry,
        network: bool,
        after: Duration,
        gvisor: bool,
    ) {
        if self.warming.is_closed() {
            return;
        }
        let key = pool_key(entry, gvisor);
        let evicted = match self.pool.begin_start(&key, network) {
            Begin::No => return,
            Begin::Go { evicted } => evicted,
        };
        let this = self.clone();
        let entry = entry.clone();
        self.warming.spawn(async move {
            if !after.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = this.hurry_refills.notified() => {}
                }
                if this.warming.is_closed() {
                    this.pool.finish_start(&key, network, None);
                    if let Some(warm) = evicted {
                        this.end_warm(*warm).await;
                    }
                    return;
                }
            }
            if let Some(warm) = evicted {
                this.end_warm(*warm).await;
            }
            loop {
                let warm = this.start_warm(&entry, network, gvisor).await;
                let started = warm.is_some();
                this.pool.finish_start(&key, network, warm);
                // After a failure the next create tries again, not a busy loop.
                if !started || this.warming.is_closed() {
                    break;
                }
                match this.pool.begin_start(&key, network) {
                    Begin::No => break,
                    Begin::Go { evicted } => {
                        if let Some(warm) = evicted {
                            this.end_warm(*warm).await;
                        }
                    }
                }
            }
        });
    }

    /// Fills both warm pools of `base` (at startup).
    pub fn warm_up(self: &Arc<Self>) {
        let base = self.templates.base().clone();
        self.pool.touch(&base.warm_key());
        self.refill(&base, false, Duration::ZERO);
        self.refill(&base, true, Duration::ZERO);
    }

    /// Makes `entry` a template creates used lately, so its warm pool fills now (a template
    /// just built: its first create is then as quick as the next ones).
    pub fn prewarm(self: &Arc<Self>, entry: &TemplateEntry) {
        self.pool.touch(&entry.warm_key());
        self.refill(entry, true, Duration::ZERO);
    }

    async fn start_warm(&self, entry: &TemplateEntry, network: bool, gvisor: bool) -> Option<Warm> {
        let mut settings = Settings::warm(entry.clone(), self.config.caps, network);
        if gvisor {
            // Restored from the image, its kernel running: no image yet, no warm sandbox.
            settings.template.template = self.ready_kernel_image(entry)?;
            settings.metadata.insert(
                super::settings::RUNTIME_KEY.to_owned(),
                cove_runtime::gvisor::NAME.to_owned(),
            );
        }
        let mut record = settings.record(&self.config, secrets::random_id(20));
        let started = match self
            .start(
                &mut record,
                settings.template.template.clone(),
                self.config.warm_kernels && !gvisor,
            )
            .await
        {
            Ok(started) => started,
            Err(err) => {
                tracing::warn!(?err, template = %entry.id, "cannot start a warm sandbox");
                self.discard(&record).await;
                return None;
            }
        };
        let warm = Warm { record, started };
        if let Err(err) = self.bring_up(&warm, entry).await {
            tracing::warn!(%err, template = %entry.id, "a warm sandbox did not become ready");
            self.end_warm(warm).await;
            return None;
        }
        tracing::debug!(sandbox_id = %warm.record.id, team = %warm.record.team, template = %entry.id, network, "warm sandbox ready");
        Some(warm)
    }

    /// Runs the template's start command in a sandbox just started, and waits until it is
    /// ready.
    pub(super) async fn bring_up(&self, warm: &Warm, entry: &TemplateEntry) -> Result<(), String> {
        let (Some(start), Some(defaults)) = (&entry.start, &warm.record.defaults) else {
            return Ok(());
        };
        let shell = entry.shell.as_deref().unwrap_or("/bin/sh");
        start_cmd::start_and_wait(
            &warm.started.agent,
            &warm.record.envd_access_token,
            defaults,
            shell,
            start,
            start_cmd::READY_TIMEOUT,
            &mut |_, line| tracing::debug!(template = %entry.id, line, "ready command"),
        )
        .await
    }

    /// Ends a warm sandbox nobody will take.
    pub(super) async fn end_warm(&self, warm: Warm) {
        let handle = warm.started.handle.clone();
        match self.blocking(move |r| r.kill(&handle)).await {
            Ok(()) => self.discard(&warm.record).await,
            Err(err) => {
                tracing::warn!(?err, sandbox_id = %warm.record.id, team = %warm.record.team, "cannot kill a warm sandbox");
            }
        }
    }

    /// Ends the warm sandboxes of templates no create asked for lately.
    pub async fn expire_warm(&self) {
        let base = self.templates.base().warm_key();
        for warm in self.pool.expire(WARM_IDLE, &base) {
            tracing::debug!(sandbox_id = %warm.record.id, "ending the warm sandbox of an idle template");
            self.end_warm(warm).await;
        }
    }

    /// At shutdown: lets creates and transitions under way finish, stops refilling the pool
    /// and ends every warm sandbox.
    pub async fn settle(&self) {
        self.creating.close();
        self.creating.wait().await;
        // Pauses, resumes and snapshots under way finish too.
        self.transitions.close();
        self.transitions.wait().await;
        self.warming.close();
        self.warming.wait().await;
        for warm in self.pool.drain() {
            self.end_warm(warm).await;
        }
        self.end_all_private().await;
    }
}

/// The warm pool of `entry`'s sandboxes: of the default backend, or of gVisor restored from
/// its kernel image.
pub(super) fn pool_key(entry: &TemplateEntry, gvisor: bool) -> String {
    if gvisor {
        format!("{}#gvisor-kernel", entry.warm_key())
    } else {
        entry.warm_key()
    }
}
