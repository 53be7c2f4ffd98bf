//! What a create request asks for, checked, and the record it becomes.

use std::collections::BTreeMap;

use cove_proto::rest::NewSandbox;

use cove_runtime::{AgentSettings, PauseMode};

use super::{ApiVersion, LifecycleConfig, LifecycleError, templates::TemplateEntry};
use crate::{
    clock, secrets,
    store::{LifecyclePolicy, SandboxRecord},
};

/// Refuses a backend this server does not have, `named_by` saying who named it.
pub fn check_runtime(
    runtimes: &[&'static str],
    asked: &str,
    named_by: &str,
) -> Result<(), LifecycleError> {
    if runtimes.contains(&asked) {
        return Ok(());
    }
    Err(LifecycleError::BadRequest(format!(
        "{named_by}: this server has no runtime {asked:?}; it has {}{}",
        runtimes.join(", "),
        if asked == cove_runtime::gvisor::NAME {
            " (gVisor needs runsc: apt-get install runsc)"
        } else {
            ""
        }
    )))
}

/// Longest lifetime a sandbox can be given (E2B's highest tier: 24 hours).
pub const MAX_TIMEOUT_SECS: i64 = 24 * 60 * 60;
/// Resources of a sandbox whose request names none.
const CPU_COUNT: u32 = 2;
const MEMORY_MB: u64 = 1024;
/// The least memory a sandbox may ask for (the agent and a shell need some).
const MEMORY_MB_MIN: u64 = 64;
/// Processes and threads a sandbox may have at once (a fork bomb stops here).
const PIDS_MAX: u32 = 2048;
/// The create metadata key that picks the backend a sandbox runs on (`namespace`,
/// `gvisor`); without it, the server's `--runtime`.
pub const RUNTIME_KEY: &str = "cove.runtime";

/// The most one sandbox may ask for: at most what the host has, unless the operator says
/// otherwise (`--max-sandbox-memory-mb`, `--max-sandbox-cpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCaps {
    pub memory_mb: u64,
    pub cpus: u32,
}

impl HostCaps {
    /// This host's memory and CPUs.
    pub fn of_this_host() -> Self {
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(MEMORY_MB, |kib| kib >> 10);
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        Self { memory_mb, cpus }
    }
}

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
    /// Its own egress rules (`allowOut`, `denyOut`), checked.
    pub egress: Option<crate::store::EgressRules>,
    /// The `Host` requests to its ports carry (`maskRequestHost`), checked.
    pub mask_request_host: Option<String>,
    /// Paused instead of killed when its time is up; resumed by traffic.
    pub lifecycle: LifecyclePolicy,
    /// Volumes mounted into it (resolved after the request is read).
    pub volumes: Vec<crate::store::MountedVolume>,
    /// For a fork: its source's template, when a warm sandbox of that template can take the
    /// fork's files as its new root ([`cove_runtime::Runtime::reroot`]).
    pub fork_of: Option<TemplateEntry>,
    /// It asked for a backend other than the server's default ([`RUNTIME_KEY`]): no warm
    /// sandbox of the default backend fits it.
    pub other_runtime: bool,
    /// It runs on gVisor (asked for, or the server's default; for a fork, its source
    /// named it).
    pub on_gvisor: bool,
    /// The create named the code-interpreter template, as E2B's code-interpreter SDKs do.
    pub code_interpreter: bool,
}

impl Settings {
    pub fn from_request(
        templates: &super::Templates,
        caps: HostCaps,
        runtimes: &[&'static str],
        team: &str,
        mut request: NewSandbox,
        version: ApiVersion,
    ) -> Result<Self, LifecycleError> {
        let mut metadata = request.metadata.take().unwrap_or_default();
        if let Some(asked) = metadata.get(RUNTIME_KEY) {
            check_runtime(runtimes, asked, &format!("metadata {RUNTIME_KEY}"))?;
        }
        let template_name = request.template_id.as_deref().unwrap_or("base");
        let template = templates.get(team, template_name)?;
        // The template's backend, unless the create named one.
        if let Some(runtime) = &template.runtime
            && !metadata.contains_key(RUNTIME_KEY)
        {
            check_runtime(runtimes, runtime, &format!("template {template_name:?}"))?;
            metadata.insert(RUNTIME_KEY.to_owned(), runtime.clone());
        }
        if let Some(runtime) = memory_runtime(&template, &metadata, runtimes)? {
            metadata.insert(RUNTIME_KEY.to_owned(), runtime.to_owned());
        }
        let other_runtime = metadata
            .get(RUNTIME_KEY)
            .is_some_and(|asked| asked != runtimes[0]);
        let on_gvisor = metadata
            .get(RUNTIME_KEY)
            .map_or(runtimes[0], String::as_str)
            == cove_runtime::gvisor::NAME;
        let timeout_secs = request.timeout.unwrap_or(match version {
            ApiVersion::V1 => 15,
            ApiVersion::V2 => 300,
        });
        check_timeout(timeout_secs)?;
        let lifecycle = lifecycle_policy(&request, timeout_secs)?;
        let mut env_vars = request.env_vars.unwrap_or_default();
        check_env_vars(&env_vars)?;
        let egress = super::egress::from_create(request.network.as_ref())?;
        if egress.as_ref().is_some_and(|e| !e.rules.is_empty()) {
            super::egress::add_ca_env(&mut env_vars);
        }
        let mask_request_host = super::mask::from_create(request.network.as_ref())?;
        // The defaults fit any host that can run a sandbox at all.
        let cpu_count = request
            .cpu_count
            .or(template.cpu_count)
            .unwrap_or(CPU_COUNT)
            .min(if request.cpu_count.is_some() {
                u32::MAX
            } else {
                caps.cpus
            });
        if !(1..=caps.cpus).contains(&cpu_count) {
            return Err(LifecycleError::BadResources(format!(
                "cpuCount must be between 1 and {} on this server, got {cpu_count}",
                caps.cpus
            )));
        }
        let memory_mb = request
            .memory_mb
            .or(template.memory_mb)
            .unwrap_or(MEMORY_MB)
            .min(if request.memory_mb.is_some() {
                u64::MAX
            } else {
                caps.memory_mb
            });
        if !(MEMORY_MB_MIN..=caps.memory_mb).contains(&memory_mb) {
            return Err(LifecycleError::BadResources(format!(
                "memoryMB must be between {MEMORY_MB_MIN} and {} on this server, got {memory_mb}",
                caps.memory_mb
            )));
        }
        Ok(Self {
            team: team.to_owned(),
            template,
            timeout_secs,
            cpu_count,
            memory_mb,
            metadata,
            env_vars,
            network: request.allow_internet_access.unwrap_or(true),
            private_ports: request
                .network
                .and_then(|n| n.allow_public_traffic)
                .is_some_and(|public| !public),
            egress,
            mask_request_host,
            lifecycle,
            volumes: Vec::new(),
            fork_of: None,
            other_runtime,
            on_gvisor,
            code_interpreter: super::templates::CODE_INTERPRETER_NAMES.contains(&template_name),
        })
    }

    /// A fork of the sandbox `source`: its settings, from `template`, for `timeout_secs`.
    pub fn fork(source: &SandboxRecord, template: TemplateEntry, timeout_secs: i64) -> Self {
        Self {
            team: source.team.clone(),
            template,
            timeout_secs,
            cpu_count: source.cpu_count,
            memory_mb: source.memory_mb,
            metadata: source.metadata.clone(),
            env_vars: source.env_vars.clone(),
            network: source.allow_internet_access,
            private_ports: source.traffic_access_token.is_some(),
            egress: source.egress.clone(),
            mask_request_host: source.mask_request_host.clone(),
            lifecycle: LifecyclePolicy {
                timeout_secs,
                ..source.lifecycle.clone()
            },
            volumes: source.volumes.clone(),
            fork_of: None,
            // Its source's backend, when it named one (no warm sandbox is taken then).
            other_runtime: source.metadata.contains_key(RUNTIME_KEY),
            on_gvisor: source
                .metadata
                .get(RUNTIME_KEY)
                .is_some_and(|r| r == cove_runtime::gvisor::NAME),
            code_interpreter: false,
        }
    }

    /// A warm sandbox's: default resources, nobody's team, no deadline of its own.
    pub fn warm(template: TemplateEntry, caps: HostCaps, network: bool) -> Self {
        Self {
            team: super::pool::WARM_TEAM.to_owned(),
            timeout_secs: 0,
            cpu_count: template.cpu_count.unwrap_or(CPU_COUNT).min(caps.cpus),
            memory_mb: template.memory_mb.unwrap_or(MEMORY_MB).min(caps.memory_mb),
            template,
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            network,
            private_ports: false,
            egress: None,
            mask_request_host: None,
            lifecycle: LifecyclePolicy::default(),
            volumes: Vec::new(),
            fork_of: None,
            other_runtime: false,
            on_gvisor: false,
            code_interpreter: false,
        }
    }

    /// The record of sandbox `id` with these settings, starting now, not yet running.
    pub fn record(&self, config: &LifecycleConfig, id: String) -> SandboxRecord {
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
            id,
            handle: None,
            paused: None,
            lifecycle: self.lifecycle.clone(),
            // A memory snapshot's image is for its start alone: a resume from files starts
            // the sandbox afresh on its files, never from the image again.
            template: Some(cove_runtime::Template {
                memory: None,
                ..self.template.template.clone()
            }),
            defaults: self.template.defaults.clone(),
            volumes: self.volumes.clone(),
            egress: self.egress.clone(),
            mask_request_host: self.mask_request_host.clone(),
        }
    }
}

/// The backend a sandbox of `template` must run on, when the template is a snapshot with
/// memory (only a backend that can restore its image starts it: gVisor), checked against
/// the create's metadata and the server's backends.
fn memory_runtime(
    template: &TemplateEntry,
    metadata: &BTreeMap<String, String>,
    runtimes: &[&'static str],
) -> Result<Option<&'static str>, LifecycleError> {
    if template.template.memory.is_none() {
        return Ok(None);
    }
    let needed = cove_runtime::gvisor::NAME;
    if let Some(asked) = metadata.get(RUNTIME_KEY).filter(|a| *a != needed) {
        return Err(LifecycleError::BadRequest(format!(
            "snapshot {:?} keeps the processes and memory of a {needed} sandbox: it starts only on {needed}, not on {asked:?} (leave out metadata {RUNTIME_KEY})",
            template.alias
        )));
    }
    if !runtimes.contains(&needed) {
        return Err(LifecycleError::BadRequest(format!(
            "snapshot {:?} keeps the processes and memory of a {needed} sandbox, and this server has no {needed} runtime now (it needs runsc: apt-get install runsc)",
            template.alias
        )));
    }
    Ok(Some(needed))
}

/// Environment variables every process of the sandbox gets must be ones a process can have:
/// a name that is not empty and holds no `=` or NUL, a value without NUL. (Accepted, they
/// made every later command fail to start, or set another variable than the one named.)
pub fn check_env_vars(env_vars: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    for (name, value) in env_vars {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(LifecycleError::BadEnvVar(name.clone()));
        }
    }
    Ok(())
}

/// What a create asks for about pausing: E2B's `autoPause`, `autoPauseMemory` and
/// `autoResume`, checked as E2B checks them.
fn lifecycle_policy(
    request: &NewSandbox,
    timeout_secs: i64,
) -> Result<LifecyclePolicy, LifecycleError> {
    let auto_pause = request.auto_pause.unwrap_or(false).then(|| {
        if request.auto_pause_memory.unwrap_or(true) {
            PauseMode::Memory
        } else {
            PauseMode::Filesystem
        }
    });
    let auto_resume = request.auto_resume.is_some_and(|a| a.enabled());
    match auto_pause {
        None if auto_resume => Err(LifecycleError::BadRequest(
            "autoResume needs autoPause: a sandbox that is killed on timeout cannot be resumed"
                .to_owned(),
        )),
        Some(PauseMode::Filesystem) if auto_resume => Err(LifecycleError::BadRequest(
            "autoResume cannot be combined with autoPauseMemory=false: a sandbox paused without its memory starts again from its files, so it must be resumed with an explicit connect".to_owned(),
        )),
        _ => Ok(LifecyclePolicy {
            auto_pause,
            auto_resume,
            timeout_secs,
        }),
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

/// The limits a record asks for.
pub fn limits(record: &SandboxRecord) -> cove_runtime::Limits {
    cove_runtime::Limits {
        memory_bytes: record.memory_mb << 20,
        cpus: record.cpu_count,
        pids: PIDS_MAX,
    }
}

/// What a sandbox's agent is told at start: its token, E2B's defaults (user `user` in
/// `/home/user`), the code interpreter's port, the variables every process gets, and whether
/// to start its Python kernel at once (`warm_kernel`: a warm sandbox's, so the first
/// `run_code` of whoever takes it finds the kernel running; others start it on first use).
pub fn agent_settings(record: &SandboxRecord, warm_kernel: bool) -> AgentSettings {
    // The template's variables, then E2B's, then the create request's.
    let mut env = record
        .defaults
        .as_ref()
        .map(|d| d.env.clone())
        .unwrap_or_default();
    env.extend([
        ("E2B_SANDBOX_ID".to_owned(), record.id.clone()),
        ("E2B_TEMPLATE_ID".to_owned(), record.template_id.clone()),
    ]);
    env.extend(record.env_vars.clone());
    let (user, workdir) = match &record.defaults {
        Some(d) => (d.user.clone(), d.workdir.clone()),
        None => ("user".to_owned(), "/home/user".to_owned()),
    };
    AgentSettings {
        access_token: record.envd_access_token.clone(),
        default_user: user,
        default_workdir: workdir.into(),
        env,
        code_interpreter_port: Some(cove_proto::envd::CODE_INTERPRETER_PORT),
        warm_kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while checking the inputs schemathesis sends to `cove serve`: `{"envVars":
    /// {"A\u0000B": "x"}}` was a 201, after which every command failed to start ("nul byte
    /// found in provided data"); `{"A=B": "x"}` set `A` to `B=x`.
    #[test]
    fn env_vars_a_process_cannot_have_are_refused() {
        let env = |name: &str, value: &str| BTreeMap::from([(name.to_owned(), value.to_owned())]);
        assert!(check_env_vars(&env("PATH_2", "a=b c")).is_ok());
        assert!(check_env_vars(&BTreeMap::new()).is_ok());
        for (name, value) in [("A\0B", "x"), ("A", "x\0y"), ("", "x"), ("A=B", "x")] {
            assert!(
                matches!(check_env_vars(&env(name, value)), Err(LifecycleError::BadEnvVar(n)) if n == name),
                "{name:?}={value:?}"
            );
        }
    }
}
