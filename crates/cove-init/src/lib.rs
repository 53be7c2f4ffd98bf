//! A sandbox's PID 1: takes its spec and sockets from the setup stage, enters the sandbox
//! (kernel filesystems, masks, the switch of root, its own confinement) and runs the agent.
//! Also the init of a gVisor sandbox, and the agent's runtime for `cove agent`.
//!
//! The `cove-init` binary is only this: an exec of it costs a sandbox's create far less than
//! one of the whole `cove` (under a third of the relocations, a quarter of the code, no
//! command line of every command, no TLS library's CPU probes), and the pages it writes at
//! start are each sandbox's own memory.
#![forbid(unsafe_code)]

pub mod log;

use anyhow::Context;
use cove_agent::AgentConfig;
use cove_runtime::{AgentSettings, namespace::init};

/// The PID 1 of a namespace sandbox, its failure reported to the setup stage. Call it with
/// the log installed ([`log::install`]) and before anything opens a descriptor.
pub fn pid1() -> anyhow::Result<()> {
    // Whatever the server inherited must not reach the sandbox.
    cove_runtime::confine::close_inherited_fds()
        .context("cannot mark inherited descriptors close-on-exec")?;
    let result = enter_and_serve();
    if let Err(err) = &result {
        init::report_failure(&format!("{err:#}"));
    }
    result
}

fn enter_and_serve() -> anyhow::Result<()> {
    let spec = init::read_spec()?;
    // Taken first, before anything could open a descriptor at its number.
    let listener = cove_runtime::inherited::agent_listener()
        .context("cannot take the agent's listening socket")?;
    log::cap(spec.log_cap);
    init::enter_sandbox(&spec)?;
    // Ready once the sandbox is what it will be (its root, masks, filter and capabilities
    // final): the agent's socket is listening since the setup made it, so a connection made
    // now waits in its queue while the agent's runtime starts (0.5-0.6 ms that now pass
    // beside the server's answer). What fails after this ends PID 1, and with it the
    // sandbox, and says why in its log.
    init::report_ready().context("cannot report readiness")?;
    serve_agent(agent_config(spec.agent), vec![listener])
}

/// The init of a gVisor sandbox: the agent, on a socket it lets go of for checkpoints. The
/// sentry already is the sandbox's kernel: no mounts, namespaces or filters to set up here.
pub fn gvisor_agent() -> anyhow::Result<()> {
    use cove_runtime::gvisor::bundle::{AGENT_SPEC_ENV, AgentSpec};
    let raw = std::env::var(AGENT_SPEC_ENV)
        .with_context(|| format!("no {AGENT_SPEC_ENV} in the environment"))?;
    let spec: AgentSpec =
        serde_json::from_str(&raw).with_context(|| format!("cannot read {AGENT_SPEC_ENV}"))?;
    log::cap(spec.log_cap);
    let mut config = agent_config(spec.agent);
    config.quiescible = Some(cove_agent::quiesce::Quiescible {
        socket: spec.socket,
        marker: spec.marker,
        renewal: spec.renewal,
    });
    serve_agent(config, Vec::new())
}

/// Runs the agent on `config` and on sockets already `listening`.
pub fn serve_agent(
    config: AgentConfig,
    listening: Vec<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    // Named, so that `top -H` and profiles tell the agent's threads from the server's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cove-agent")
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(cove_agent::serve(config, listening, || {}))
        .context("the agent failed")
}

/// The agent's configuration from what the runtime tells it.
fn agent_config(settings: AgentSettings) -> AgentConfig {
    AgentConfig {
        listen: Vec::new(),
        access_token: Some(settings.access_token).filter(|t| !t.is_empty()),
        default_user: settings.default_user,
        default_workdir: Some(settings.default_workdir),
        env: settings.env,
        code_interpreter: settings
            .code_interpreter_port
            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        warm_kernel: settings.warm_kernel,
        ..AgentConfig::default()
    }
}
