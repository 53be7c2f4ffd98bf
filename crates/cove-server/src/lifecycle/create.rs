//! Creating a sandbox: admitted, then a warm one handed over when one fits, else a new one
//! started in its turn. The work runs as a task of its own: a client that hangs up halfway
//! leaves a sandbox that runs out its timeout, never one half made or owned by nobody.

use std::sync::Arc;

use cove_proto::rest::NewSandbox;
use cove_runtime::{Liveness, SandboxSpec, Started};

use super::{
    ApiVersion, Lifecycle, LifecycleError, Live,
    admission::Ask,
    pool::{Taken, Warm},
    settings::{RUNTIME_KEY, Settings, agent_settings, limits},
    templates::TemplateKind,
    warm::Flavor,
};
use crate::{
    secrets,
    store::SandboxRecord,
    telemetry::{AgentOp, CreateSource},
};

impl Lifecycle {
    /// Creates and starts a sandbox for `team`.
    pub async fn create(
        self: &Arc<Self>,
        team: &str,
        request: NewSandbox,
        version: ApiVersion,
    ) -> Result<Arc<Live>, LifecycleError> {
        let asked: Vec<(String, String)> = request
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.path.clone()))
            .collect();
        let name = request
            .template_id
            .clone()
            .unwrap_or_else(|| "base".to_owned());
        self.sync_snapshot(team, &name).await?;
        // In a cluster, a name this node does not know may be a snapshot another node took:
        // looked for only then, so other creates make no extra database round trip.
        let again = self.store.node().is_some().then(|| request.clone());
        let settings_of = |request| {
            Settings::from_request(
                &self.templates,
                self.config.caps,
                &self.config.runtimes,
                team,
                request,
                version,
            )
        };
        let mut settings = match (settings_of(request), again) {
            (Err(LifecycleError::TemplateNotFound(missing)), Some(request)) => {
                match self.adopt_snapshot(team, &name).await {
                    Some(_) => settings_of(request)?,
                    None => return Err(LifecycleError::TemplateNotFound(missing)),
                }
            }
            (settings, _) => settings?,
        };
        settings.volumes = self.volumes.resolve(team, &asked)?;
        self.templates.ensure_local(&settings.template).await?;
        self.fetch_snapshot(&settings.template).await?;
        let this = self.clone();
        self.creating
            .spawn(async move { this.create_now(settings).await })
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }

    pub(super) async fn create_now(
        self: &Arc<Self>,
        settings: Settings,
    ) -> Result<Arc<Live>, LifecycleError> {
        // A snapshot's layers stay while the sandbox is made from them (then its record
        // holds them).
        let _layers = self.layers_in_use.hold(&settings.template.template);
        let _admitted = self.admit(&settings.team, settings.memory_mb, settings.cpu_count)?;
        let began = std::time::Instant::now();
        if let TemplateKind::Built { .. } = settings.template.kind {
            // A count for listings: off the create's path.
            let (catalog, id) = (
                self.templates.catalog().clone(),
                settings.template.id.clone(),
            );
            tokio::task::spawn_blocking(move || {
                if let Err(err) = catalog.note_spawn(&id) {
                    tracing::warn!(?err, template = %id, "cannot count a spawn");
                }
            });
        }
        // Snapshots get no warm pool of their own: their layers are held by records and
        // creates only. A fork takes a warm sandbox of its source's template and gives it
        // its files (`fork_of`). Volumes are mounted as a sandbox starts, so a sandbox with
        // some is started anew. A gVisor sandbox of a template with a kernel image takes one
        // restored from it.
        let flavor = self.flavor(&settings);
        let kernel_image = flavor == Flavor::GvisorKernel;
        let warm_of = match settings.template.kind {
            _ if kernel_image => Some(&settings.template),
            TemplateKind::Snapshot { .. } => settings.fork_of.as_ref(),
            _ => Some(&settings.template),
        }
        .filter(|_| kernel_image || (settings.volumes.is_empty() && !settings.other_runtime));
        if let Some(warm_of) = warm_of {
            let key = super::warm::pool_key(warm_of, flavor);
            let taken = self.pool.take(&key, settings.network);
            let after = match taken {
                Taken::Ready(_) => super::warm::REFILL_AFTER_CLAIM,
                // No warm sandbox to hand out now: the pool is behind, and this create may
                // be waiting for a refill that was waiting out a claim.
                Taken::Soon(_) | Taken::None => {
                    self.hurry_refills.notify_waiters();
                    std::time::Duration::ZERO
                }
            };
            self.refill(warm_of, settings.network, flavor, after);
            let warm = match taken {
                Taken::Ready(warm) => Some(*warm),
                Taken::Soon(promise) => promise.await.ok(),
                Taken::None => None,
            };
            if let Some(warm) = warm {
                match self.claim(warm, &settings).await {
                    Ok(live) => {
                        self.metrics.warm_pool(true);
                        self.metrics
                            .create_took(CreateSource::Warm, began.elapsed());
                        return Ok(live);
                    }
                    Err(err) => {
                        tracing::warn!(?err, team = %settings.team, "a warm sandbox failed; starting a new one")
                    }
                }
            }
            self.metrics.warm_pool(false);
        }
        let _turn = self.admission.turn().await?;
        let _starting = self.metrics.starting();
        let mut record = settings.record(&self.config, secrets::random_id(20));
        let mut template = settings.template.template.clone();
        if kernel_image && let Some(image) = self.kernel_image(&settings.template, settings.network)
        {
            // Its files are the image's from now on (a resume from files starts on them).
            record.template = Some(cove_runtime::Template {
                memory: None,
                ..image.clone()
            });
            template = image;
        }
        let started = match self.start(&mut record, template, false).await {
            Ok(started) => started,
            Err(err) => {
                self.discard(&record).await;
                return Err(err);
            }
        };
        let warm = Warm::new(record, started);
        if let Err(reason) = self.bring_up(&warm, &settings.template).await {
            self.end_warm(warm).await;
            return Err(LifecycleError::StartCommand(reason));
        }
        self.install_egress_ca(&warm.record, &warm.started.agent)
            .await;
        self.metrics
            .create_took(CreateSource::Cold, began.elapsed());
        // Unlike a warm one, it has no connection open yet: its first command's is made
        // while the create's answer travels.
        let links = warm.links.clone();
        tokio::spawn(async move {
            if let Err(err) = links.open_ahead().await {
                tracing::debug!(%err, "no connection opened ahead");
            }
        });
        Ok(self.go_live(warm))
    }

    /// Admits a sandbox of `team` that will hold `memory_mb` and `cpus` (held until it is
    /// counted among the running, or never will be). Sandboxes paused without memory hold
    /// neither.
    pub(super) fn admit(
        &self,
        team: &str,
        memory_mb: u64,
        cpus: u32,
    ) -> Result<super::admission::Ticket<'_>, LifecycleError> {
        let limits = self.store.team_limits(team)?;
        let mut holding = self.registry.records_of(team);
        holding.retain(|r| r.paused != Some(cove_runtime::PauseMode::Filesystem));
        self.admission.admit(
            Ask {
                team,
                memory_mb,
                cpus,
            },
            self.registry.holding_memory(),
            &holding,
            limits,
        )
    }

    /// Hands a warm sandbox to its owner: its limits, environment and record become theirs.
    async fn claim(&self, warm: Warm, settings: &Settings) -> Result<Arc<Live>, LifecycleError> {
        if settings.fork_of.is_some() {
            // A fork: the warm sandbox's root becomes the snapshot's files.
            let (handle, template) = (
                warm.started.handle.clone(),
                settings.template.template.clone(),
            );
            let rerooted = self.blocking(move |r| r.reroot(&handle, &template)).await;
            if let Err(source) = rerooted {
                let id = warm.record.id.clone();
                self.end_warm(warm).await;
                return Err(LifecycleError::Start { id, source });
            }
        }
        let mut record = settings.record(&self.config, warm.record.id.clone());
        record.envd_access_token = warm.record.envd_access_token.clone();
        if settings.fork_of.is_none() {
            // The files it started on (a gVisor one's are its kernel image's).
            record.template = warm.record.template.clone();
        }
        record.handle = warm.record.handle.clone();
        if let Err(err) = self.hand_over(&record, &warm).await {
            self.end_warm(warm).await;
            return Err(err);
        }
        Ok(self.go_live(Warm { record, ..warm }))
    }

    async fn hand_over(&self, record: &SandboxRecord, warm: &Warm) -> Result<(), LifecycleError> {
        let failed = |reason: String| LifecycleError::Start {
            id: record.id.clone(),
            source: cove_runtime::RuntimeError::Start {
                id: record.id.clone(),
                reason,
            },
        };
        let handle = warm.started.handle.clone();
        match self.blocking(move |r| r.liveness(&handle)).await {
            Ok(Liveness::Running) => {}
            Ok(Liveness::Ended(why)) => {
                return Err(failed(format!("the warm sandbox ended: {why}")));
            }
            Err(err) => {
                return Err(failed(format!(
                    "the warm sandbox cannot be looked at: {err}"
                )));
            }
        }
        if (record.cpu_count, record.memory_mb) != (warm.record.cpu_count, warm.record.memory_mb) {
            let (handle, limits) = (warm.started.handle.clone(), limits(record));
            self.blocking(move |r| r.set_limits(&handle, limits))
                .await
                .map_err(|source| LifecycleError::Start {
                    id: record.id.clone(),
                    source,
                })?;
        }
        // Before its owner gets it: nothing of theirs ran in it yet.
        self.apply_egress(&record.id, record.egress.as_ref())
            .await
            .map_err(|source| LifecycleError::Start {
                id: record.id.clone(),
                source,
            })?;
        if !record.env_vars.is_empty() {
            let init = serde_json::json!({ "envVars": record.env_vars });
            crate::agent_link::post_json(
                &warm.links,
                "/init",
                Some(&record.envd_access_token),
                &init,
            )
            .await
            .map_err(|err| {
                self.metrics.agent_error(AgentOp::Init);
                failed(format!("cannot set its environment: {err}"))
            })?;
        }
        self.install_egress_ca(record, &warm.started.agent).await;
        self.store.put_sandbox(record)?;
        Ok(())
    }

    /// Makes a started sandbox reachable.
    fn go_live(&self, warm: Warm) -> Arc<Live> {
        let id = warm.record.id.clone();
        let live = Arc::new(Live::new(warm.record, warm.started, Some(warm.links)));
        self.registry.insert(live.clone());
        tracing::info!(sandbox_id = %id, handle = %live.handle().state, team = %live.team(), "sandbox started");
        live
    }

    /// Starts the sandbox `record` describes and records how to find it again. The record
    /// is stored first, so a server that dies mid-create cleans up after itself. A warm
    /// sandbox's agent starts its Python kernel at once (`warm_kernel`).
    pub(super) async fn start(
        &self,
        record: &mut SandboxRecord,
        template: cove_runtime::Template,
        warm_kernel: bool,
    ) -> Result<Started, LifecycleError> {
        self.store.put_sandbox(record)?;
        self.retain_layers(record).map_err(|err| {
            LifecycleError::TemplateNotReady(format!(
                "a layer of template {:?} is gone ({err}); build it again",
                record.template_id
            ))
        })?;
        let mut spec = SandboxSpec {
            id: record.id.clone(),
            template,
            hostname: "sandbox".to_owned(),
            agent: agent_settings(record, warm_kernel),
            network: record.allow_internet_access,
            limits: limits(record),
            volumes: Vec::new(),
            runtime: record.metadata.get(RUNTIME_KEY).cloned(),
        };
        let (volumes, mounts) = (self.volumes.clone(), record.volumes.clone());
        // Given before it starts, its egress rules hold from its first connection.
        let policy = super::egress::policy_of_record(record.egress.as_ref());
        let started = self
            .blocking(move |r| {
                volumes.attach(&mut spec, &mounts)?;
                if policy.is_some() {
                    r.set_egress_policy(&spec.id, policy.as_ref())?;
                }
                r.create(&spec)
            })
            .await
            .map_err(|source| LifecycleError::Start {
                id: record.id.clone(),
                source,
            })?;
        record.handle = Some(started.handle.clone());
        if let Err(err) = self.store.put_sandbox(record) {
            let handle = started.handle.clone();
            let _ = self.blocking(move |r| r.kill(&handle)).await;
            return Err(err.into());
        }
        Ok(started)
    }
}
