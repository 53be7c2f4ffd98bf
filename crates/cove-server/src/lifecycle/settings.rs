//! What a create request asks for, checked, and the record it becomes.

use std::collections::BTreeMap;

use cove_proto::rest::NewSandbox;

use super::{ApiVersion, LifecycleConfig, LifecycleError, templates::TemplateEntry};
use crate::{clock, secrets, store::SandboxRecord};

/// Longest lifetime a sandbox can be given (E2B's highest tier: 24 hours).
pub const MAX_TIMEOUT_SECS: i64 = 24 * 60 * 60;
/// Resources of a sandbox whose request names none.
const CPU_COUNT: u32 = 2;
const MEMORY_MB: u64 = 1024;
/// What a request may ask for.
const CPU_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
const MEMORY_MB_RANGE: std::ops::RangeInclusive<u64> = 64..=256 * 1024;
/// Processes and threads a sandbox may have at once (a fork bomb stops here).
const PIDS_MAX: u32 = 2048;

/// A sandbox's settings, checked.
#[derive(Debug)]
pub struct Settings {
    pub team: String,
    pub template: TemplateEntry,
    pub timeout_secs: i64,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Internet access.
    pub network: bool,
    /// Its ports answer only clients showing a traffic token.
    pub private_ports: bool,
}

impl Settings {
    pub fn from_request(
        templates: &super::Templates,
        team: &str,
        request: NewSandbox,
        version: ApiVersion,
    ) -> Result<Self, LifecycleError> {
        let template_name = request.template_id.as_deref().unwrap_or("base");
        let template = templates
            .get(template_name)
            .ok_or_else(|| LifecycleError::TemplateNotFound(template_name.to_owned()))?
            .clone();
        let timeout_secs = request.timeout.unwrap_or(match version {
            ApiVersion::V1 => 15,
            ApiVersion::V2 => 300,
        });
        check_timeout(timeout_secs)?;
        let cpu_count = request.cpu_count.unwrap_or(CPU_COUNT);
        if !CPU_RANGE.contains(&cpu_count) {
            return Err(LifecycleError::BadResources(format!(
                "cpuCount must be between {} and {}, got {cpu_count}",
                CPU_RANGE.start(),
                CPU_RANGE.end()
            )));
        }
        let memory_mb = request.memory_mb.unwrap_or(MEMORY_MB);
        if !MEMORY_MB_RANGE.contains(&memory_mb) {
            return Err(LifecycleError::BadResources(format!(
                "memoryMB must be between {} and {}, got {memory_mb}",
                MEMORY_MB_RANGE.start(),
                MEMORY_MB_RANGE.end()
            )));
        }
        Ok(Self {
            team: team.to_owned(),
            template,
            timeout_secs,
            cpu_count,
            memory_mb,
            metadata: request.metadata.unwrap_or_default(),
            env_vars: request.env_vars.unwrap_or_default(),
            network: request.allow_internet_access.unwrap_or(true),
            private_ports: request
                .network
                .and_then(|n| n.allow_public_traffic)
                .is_some_and(|public| !public),
        })
    }

    /// A warm sandbox's: default resources, nobody's team, no deadline of its own.
    pub fn warm(template: TemplateEntry, network: bool) -> Self {
        Self {
            team: super::pool::WARM_TEAM.to_owned(),
            template,
            timeout_secs: 0,
            cpu_count: CPU_COUNT,
            memory_mb: MEMORY_MB,
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            network,
            private_ports: false,
        }
    }

    /// The record of sandbox `id` with these settings, starting now, not yet running.
    pub fn record(&self, config: &LifecycleConfig, id: String, slot: u32) -> SandboxRecord {
        let now = clock::now_ms();
        SandboxRecord {
            team: self.team.clone(),
            template_id: self.template.id.clone(),
            alias: Some(self.template.alias.clone()),
            metadata: self.metadata.clone(),
            env_vars: self.env_vars.clone(),
            envd_access_token: secrets::random_token(),
            traffic_access_token: self.private_ports.then(secrets::random_token),
            started_at: now,
            end_at: now + self.timeout_secs * 1000,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_mb: config.disk_mb,
            allow_internet_access: self.network,
            slot,
            dir: config.state_dir.join("sandboxes").join(&id),
            id,
            pid: None,
            pid_start_time: None,
        }
    }
}

/// A sandbox's lifetime must be within 0 and [`MAX_TIMEOUT_SECS`].
pub fn check_timeout(timeout_secs: i64) -> Result<(), LifecycleError> {
    if (0..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
        Ok(())
    } else {
        Err(LifecycleError::BadTimeout(timeout_secs))
    }
}

/// The cgroup limits a record asks for.
pub fn limits(record: &SandboxRecord) -> cove_runtime::cgroup::Limits {
    cove_runtime::cgroup::Limits {
        memory_bytes: record.memory_mb << 20,
        cpus: record.cpu_count,
        pids: PIDS_MAX,
    }
}
