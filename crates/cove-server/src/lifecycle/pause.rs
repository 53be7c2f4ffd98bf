//! Pausing and resuming sandboxes: asked for (`POST /sandboxes/{id}/pause`, connect), when
//! their time is up (`autoPause`), and when traffic reaches a paused one (`autoResume`).
//!
//! One transition of a sandbox at a time ([`Live::transition`]): two resumes at once make
//! one resume and one connect to a running sandbox; a connect during an auto-pause waits for
//! the pause and then resumes; a kill waits for a pause under way and then kills the paused
//! sandbox. A paused sandbox has no timeout: it stays until it is resumed or killed.

use std::sync::Arc;

use cove_runtime::{PauseMode, RuntimeError, SandboxSpec};

use super::{
    Lifecycle, LifecycleError, Live,
    settings::{RUNTIME_KEY, agent_settings, check_timeout, limits},
};
use crate::clock;

/// What a connect found.
#[derive(Debug)]
pub enum Connected {
    /// It was running (its timeout extended).
    Running(Arc<Live>),
    /// It was paused and now runs again.
    Resumed(Arc<Live>),
}

impl Lifecycle {
    /// Pauses a running sandbox of `team`, keeping what `mode` says.
    pub async fn pause(
        self: &Arc<Self>,
        team: &str,
        id: &str,
        mode: PauseMode,
    ) -> Result<(), LifecycleError> {
        let live = self.get(team, id)?;
        let this = self.clone();
        self.in_own_task(async move {
            let _turn = this.turn_of(&live).await?;
            this.pause_locked(&live, mode).await
        })
        .await
    }

    /// Pauses `live`, whose turn the caller holds.
    pub(super) async fn pause_locked(
        &self,
        live: &Live,
        mode: PauseMode,
    ) -> Result<(), LifecycleError> {
        let id = live.id();
        if live.paused().is_some() {
            return Err(LifecycleError::AlreadyPaused(id));
        }
        let handle = live.handle();
        let paused = self
            .blocking(move |r| r.pause(&handle, mode))
            .await
            .map_err(|source| transition(&id, "paused", source))?;
        live.set_started(cove_runtime::Started {
            handle: paused.clone(),
            agent: live.agent(),
        });
        self.commit(live, |r| {
            r.paused = Some(mode);
            r.handle = Some(paused);
        });
        *live.cpu_sample.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(sandbox_id = %id, team = %live.team(), ?mode, "sandbox paused");
        Ok(())
    }

    /// Connects to a sandbox of `team`: a running one lives at least `timeout` seconds
    /// more (never less), a paused one is resumed for `timeout` seconds. `memory: false`
    /// starts a paused sandbox again from its files even when it kept its memory.
    pub async fn connect(
        self: &Arc<Self>,
        team: &str,
        id: &str,
        timeout: Option<i64>,
        memory: Option<bool>,
    ) -> Result<Connected, LifecycleError> {
        let timeout = timeout.unwrap_or(300);
        check_timeout(timeout)?;
        let live = self.get(team, id)?;
        let this = self.clone();
        self.in_own_task(async move {
            let turn = this.turn_of(&live).await?;
            if live.paused().is_none() {
                let end = clock::now_ms() + timeout * 1000;
                this.update(&live, |r| r.end_at = r.end_at.max(end))?;
                drop(turn);
                return Ok(Connected::Running(live));
            }
            if memory == Some(false) && live.paused() == Some(PauseMode::Memory) {
                // Dropping the memory first is what a reboot is.
                let handle = live.handle();
                let stopped = this
                    .blocking(move |r| r.pause(&handle, PauseMode::Filesystem))
                    .await
                    .map_err(|source| transition(&live.id(), "restarted", source))?;
                live.set_started(cove_runtime::Started {
                    handle: stopped.clone(),
                    agent: live.agent(),
                });
                this.commit(&live, |r| {
                    r.paused = Some(PauseMode::Filesystem);
                    r.handle = Some(stopped);
                });
            }
            this.resume_locked(&live, timeout).await?;
            drop(turn);
            Ok(Connected::Resumed(live))
        })
        .await
    }

    /// The deprecated `POST /sandboxes/{id}/resume`: only a paused sandbox.
    pub async fn resume(
        self: &Arc<Self>,
        team: &str,
        id: &str,
        timeout: Option<i64>,
    ) -> Result<Arc<Live>, LifecycleError> {
        let live = self.get(team, id)?;
        if live.paused().is_none() {
            return Err(LifecycleError::AlreadyRunning(id.to_owned()));
        }
        match self.connect(team, id, timeout, None).await? {
            Connected::Resumed(live) => Ok(live),
            // Another resume came first.
            Connected::Running(_) => Err(LifecycleError::AlreadyRunning(id.to_owned())),
        }
    }

    /// Traffic reached `live`: a running sandbox is left as it is, a paused one with
    /// `autoResume` is resumed for its own timeout, any other paused one is refused.
    pub async fn wake(self: &Arc<Self>, live: &Arc<Live>) -> Result<(), LifecycleError> {
        if live.paused().is_none() {
            return Ok(());
        }
        let (auto_resume, timeout) =
            live.read(|r| (r.lifecycle.auto_resume, r.lifecycle.timeout_secs));
        // Only a pause that kept memory resumes behind a request's back: one without
        // memory would restart its processes under the client's feet.
        if !auto_resume || live.paused() != Some(PauseMode::Memory) {
            return Err(LifecycleError::Paused(live.id()));
        }
        let (this, live) = (self.clone(), live.clone());
        self.in_own_task(async move {
            let _turn = this.turn_of(&live).await?;
            if live.paused().is_none() {
                return Ok(());
            }
            this.resume_locked(&live, timeout).await
        })
        .await
    }

    /// Resumes `live`, whose turn the caller holds, to run `timeout` seconds from now.
    async fn resume_locked(&self, live: &Live, timeout: i64) -> Result<(), LifecycleError> {
        let id = live.id();
        let record = live.record();
        let mode = record.paused;
        // Starting again takes memory and CPUs again: admitted like a create.
        let _admitted = match mode {
            Some(PauseMode::Filesystem) => {
                Some(self.admit(&record.team, record.memory_mb, record.cpu_count)?)
            }
            _ => None,
        };
        let _turn = match mode {
            Some(PauseMode::Filesystem) => Some(self.admission.turn().await?),
            _ => None,
        };
        let template = match record.template.clone() {
            Some(template) => template,
            None => {
                self.templates
                    .get(&record.team, &record.template_id)?
                    .template
            }
        };
        let mut spec = SandboxSpec {
            id: id.clone(),
            template,
            hostname: "sandbox".to_owned(),
            agent: agent_settings(&record, false),
            network: record.allow_internet_access,
            limits: limits(&record),
            volumes: Vec::new(),
            runtime: record.metadata.get(RUNTIME_KEY).cloned(),
        };
        let handle = live.handle();
        let (volumes, mounts) = (self.volumes.clone(), record.volumes.clone());
        // Its egress rules hold from the first connection after it starts again.
        let policy = super::egress::policy_of_record(record.egress.as_ref());
        let started = self
            .blocking(move |r| {
                volumes.attach(&mut spec, &mounts)?;
                if policy.is_some() {
                    r.set_egress_policy(&spec.id, policy.as_ref())?;
                }
                r.resume(&handle, &spec)
            })
            .await
            .map_err(|source| transition(&id, "resumed", source))?;
        // A sandbox resumed from its files starts as after a create; a template's start
        // command (templates have none yet) belongs here as it will after a create.
        let new_handle = started.handle.clone();
        live.set_started(started);
        let now = clock::now_ms();
        self.commit(live, |r| {
            r.paused = None;
            r.handle = Some(new_handle);
            r.end_at = now + timeout * 1000;
        });
        *live.cpu_sample.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Rules given while it was paused may need the egress CA (installed once).
        self.install_egress_ca(&live.record(), &live.agent()).await;
        if mode == Some(PauseMode::Filesystem) {
            // A new PID 1, named as at a create.
            tracing::info!(sandbox_id = %id, handle = %live.handle().state, team = %live.team(), "sandbox started");
        }
        tracing::info!(sandbox_id = %id, team = %live.team(), ?mode, "sandbox resumed");
        Ok(())
    }

    /// The reaper's part: a sandbox with `autoPause` whose time is up is paused (as it
    /// asked); `None` when it does not pause.
    pub(super) async fn pause_on_timeout(
        self: &Arc<Self>,
        live: &Arc<Live>,
    ) -> Option<Result<(), LifecycleError>> {
        let mode = live.read(|r| r.lifecycle.auto_pause)?;
        let (this, live) = (self.clone(), live.clone());
        Some(
            self.in_own_task(async move {
                let _turn = this.turn_of(&live).await?;
                // A connect may have extended it while we waited.
                if live.paused().is_some() || live.read(|r| r.end_at) > clock::now_ms() {
                    return Ok(());
                }
                tracing::info!(sandbox_id = %live.id(), team = %live.team(), ?mode, "its timeout ended: pausing it");
                this.pause_locked(&live, mode).await
            })
            .await,
        )
    }
}

fn transition(id: &str, what: &'static str, source: RuntimeError) -> LifecycleError {
    match source {
        RuntimeError::WrongState {
            state: "running", ..
        } => LifecycleError::AlreadyRunning(id.to_owned()),
        RuntimeError::WrongState { .. } => LifecycleError::AlreadyPaused(id.to_owned()),
        source => LifecycleError::Transition {
            id: id.to_owned(),
            what,
            source,
        },
    }
}
