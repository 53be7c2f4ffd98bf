//! Keeping warm sandboxes: started ahead of demand, one at a time per template and kind, for
//! `base` always and for the templates creates used lately, and ended when their template
//! goes idle and at shutdown (they are not worth keeping). Templates whose gVisor sandboxes
//! start from a kernel image ([`super::kernel_images`]) have a pool of those beside, restored
//! ahead of demand once their image is ready. Code-interpreter creates (by default) take
//! warm sandboxes from a pool of their own whose agents started the Python kernel while they
//! waited ([`Flavor::Kernel`]): its first `run_code` finds the kernel running, while
//! sandboxes created for commands and files keep warm sandboxes without one.

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

/// A create asking for less memory takes no warm sandbox with a kernel (its kernel starts on
/// first use): an idle kernel holds about 60 MiB, and a warm sandbox's limit cannot be
/// lowered below what it holds.
const KERNEL_MIN_MEMORY_MB: u64 = 256;

/// Which warm sandboxes start their Python kernel while they wait to be handed out
/// (`cove serve --warm-kernels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WarmKernels {
    /// None: every first `run_code` starts its kernel.
    Never,
    /// Those kept for creates that name E2B's code-interpreter template (as its SDKs do);
    /// a sandbox created for commands and files pays nothing for a kernel.
    #[default]
    CodeInterpreter,
    /// Every warm sandbox's.
    Always,
}

/// The kinds of warm sandbox a template can have a pool of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Started with the template's settings (and its start command run).
    Plain,
    /// The same, with the agent's Python kernel started and primed while it waits.
    Kernel,
    /// gVisor, restored from the template's kernel image with its kernel running.
    GvisorKernel,
}

impl Lifecycle {
    /// Which pool a create with these settings takes its warm sandbox from.
    pub(super) fn flavor(&self, settings: &Settings) -> Flavor {
        if super::kernel_images::fits(settings) {
            return Flavor::GvisorKernel;
        }
        if self.wants_kernel(settings.code_interpreter)
            && settings.memory_mb >= KERNEL_MIN_MEMORY_MB
        {
            Flavor::Kernel
        } else {
            Flavor::Plain
        }
    }

    /// Whether warm sandboxes for a create (of the code-interpreter template or not) start
    /// their kernel ahead.
    fn wants_kernel(&self, code_interpreter: bool) -> bool {
        match self.config.warm_kernels {
            WarmKernels::Never => false,
            WarmKernels::CodeInterpreter => code_interpreter,
            WarmKernels::Always => true,
        }
    }

    /// The flavor of the warm sandboxes kept without a create asking (`base`'s at start-up,
    /// a template's just built), which forks take too: those of a create that names no
    /// code-interpreter template.
    pub(super) fn default_flavor(&self) -> Flavor {
        if self.wants_kernel(false) {
            Flavor::Kernel
        } else {
            Flavor::Plain
        }
    }

    /// Tops the warm pool of this template, kind and flavor up again, one sandbox at a time,
    /// in the background, beginning `after` from now.
    pub fn refill(
        self: &Arc<Self>,
        entry: &TemplateEntry,
        network: bool,
        flavor: Flavor,
        after: Duration,
    ) {
        if self.warming.is_closed() {
            return;
        }
        let key = pool_key(entry, flavor);
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
                let warm = this.start_warm(&entry, network, flavor).await;
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
        let flavor = self.default_flavor();
        self.pool.touch(&pool_key(&base, flavor));
        self.refill(&base, false, flavor, Duration::ZERO);
        self.refill(&base, true, flavor, Duration::ZERO);
    }

    /// Makes `entry` a template creates used lately, so its warm pool fills now (a template
    /// just built: its first create is then as quick as the next ones).
    pub fn prewarm(self: &Arc<Self>, entry: &TemplateEntry) {
        let flavor = self.default_flavor();
        self.pool.touch(&pool_key(entry, flavor));
        self.refill(entry, true, flavor, Duration::ZERO);
    }

    async fn start_warm(
        &self,
        entry: &TemplateEntry,
        network: bool,
        flavor: Flavor,
    ) -> Option<Warm> {
        let mut settings = Settings::warm(entry.clone(), self.config.caps, network);
        if flavor == Flavor::GvisorKernel {
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
                flavor == Flavor::Kernel,
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
        let warm = Warm::new(record, started);
        if let Err(err) = self.bring_up(&warm, entry).await {
            tracing::warn!(%err, template = %entry.id, "a warm sandbox did not become ready");
            self.end_warm(warm).await;
            return None;
        }
        // Its first command then goes without a connect (the create's answer waits for none).
        if let Err(err) = warm.links.open_ahead().await {
            tracing::debug!(%err, sandbox_id = %warm.record.id, "no connection opened ahead to a warm sandbox");
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
        let base = pool_key(self.templates.base(), self.default_flavor());
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

/// The warm pool of `entry`'s sandboxes of `flavor`.
pub(super) fn pool_key(entry: &TemplateEntry, flavor: Flavor) -> String {
    match flavor {
        Flavor::Plain => entry.warm_key(),
        Flavor::Kernel => format!("{}#kernel", entry.warm_key()),
        Flavor::GvisorKernel => format!("{}#gvisor-kernel", entry.warm_key()),
    }
}
