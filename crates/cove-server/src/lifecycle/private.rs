//! Sandboxes the server starts for its own work: the steps of a template build and the check
//! of a new template's start command. They are started as warm ones are — recorded under the
//! warm team, so a server that dies mid-build ends them when it comes back — but never
//! listed, never handed out, and ended by whoever started them.

use std::{collections::HashMap, path::PathBuf, sync::Mutex};

use cove_runtime::{Handle, Started, Template};

use super::{Lifecycle, LifecycleError, pool::WARM_TEAM};
use crate::{
    secrets,
    store::{SandboxDefaults, SandboxRecord},
};

/// The private sandboxes that run, by id.
#[derive(Debug, Default)]
pub struct Running(Mutex<HashMap<String, (Handle, SandboxRecord)>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Handle, SandboxRecord)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A sandbox of the server's own.
#[derive(Debug)]
pub struct PrivateSandbox {
    pub record: SandboxRecord,
    pub started: Started,
}

/// What a private sandbox gets.
#[derive(Clone, Debug)]
pub struct PrivateSpec {
    /// What it is for (its template id in the records: `build:<id>`).
    pub purpose: String,
    pub template: Template,
    pub defaults: SandboxDefaults,
    pub network: bool,
    pub cpu_count: u32,
    pub memory_mb: u64,
}

impl Lifecycle {
    /// Starts a private sandbox.
    pub async fn start_private(&self, spec: PrivateSpec) -> Result<PrivateSandbox, LifecycleError> {
        let now = crate::clock::now_ms();
        let mut record = SandboxRecord {
            id: secrets::random_id(20),
            team: WARM_TEAM.to_owned(),
            template_id: spec.purpose,
            alias: None,
            metadata: Default::default(),
            env_vars: Default::default(),
            envd_access_token: secrets::random_token(),
            traffic_access_token: None,
            started_at: now,
            end_at: now,
            cpu_count: spec.cpu_count.min(self.config.caps.cpus),
            memory_mb: spec.memory_mb.min(self.config.caps.memory_mb),
            disk_mb: self.config.disk_mb,
            allow_internet_access: spec.network,
            handle: None,
            paused: None,
            lifecycle: Default::default(),
            template: Some(spec.template.clone()),
            defaults: Some(spec.defaults),
            volumes: Vec::new(),
            egress: None,
            mask_request_host: None,
        };
        let _turn = self.admission.turn().await?;
        match self.start(&mut record, spec.template, false).await {
            Ok(started) => {
                self.private
                    .lock()
                    .insert(record.id.clone(), (started.handle.clone(), record.clone()));
                Ok(PrivateSandbox { record, started })
            }
            Err(err) => {
                self.discard(&record).await;
                Err(err)
            }
        }
    }

    /// Ends a private sandbox's processes (a pause that keeps only its files), copies its
    /// writable layer into read-only layers under `into` with the runtime's one mechanism
    /// for that (the one snapshots use, [`cove_runtime::Runtime::snapshot`]), and removes
    /// it; returns its template with the new layers on top. Nothing runs in it while its
    /// files are copied, so nothing can change the tree under the copy.
    pub async fn freeze_private(
        &self,
        sandbox: PrivateSandbox,
        into: PathBuf,
    ) -> Result<Template, LifecycleError> {
        self.private.lock().remove(&sandbox.record.id);
        let id = sandbox.record.id.clone();
        let handle = sandbox.started.handle.clone();
        let template = sandbox.record.template.clone().unwrap_or(Template {
            memory: None,
            name: String::new(),
            layers: Vec::new(),
        });
        let frozen = self
            .blocking(move |r| {
                let paused = r.pause(&handle, cove_runtime::PauseMode::Filesystem)?;
                r.snapshot(&paused, &template, &into)
            })
            .await
            .map_err(|source| LifecycleError::Transition {
                id,
                what: "frozen into layers",
                source,
            });
        self.end_private_now(sandbox.started.handle, sandbox.record)
            .await;
        frozen
    }

    /// Ends a private sandbox and removes its files.
    pub async fn end_private(&self, sandbox: PrivateSandbox) {
        if self.private.lock().remove(&sandbox.record.id).is_some() {
            self.end_private_now(sandbox.started.handle, sandbox.record)
                .await;
        }
    }

    async fn end_private_now(&self, handle: Handle, record: SandboxRecord) {
        match self.blocking(move |r| r.kill(&handle)).await {
            Ok(()) => self.discard(&record).await,
            Err(err) => {
                tracing::warn!(?err, sandbox_id = %record.id, "cannot kill a build sandbox")
            }
        }
    }

    /// At shutdown: ends every private sandbox (the builds using them are cut short, and
    /// marked failed by the next server).
    pub async fn end_all_private(&self) {
        let running: Vec<_> = self.private.lock().drain().map(|(_, v)| v).collect();
        for (handle, record) in running {
            self.end_private_now(handle, record).await;
        }
    }
}
