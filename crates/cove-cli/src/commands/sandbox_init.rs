//! `cove __sandbox-init`: the stages that build a sandbox (see `cove_runtime::namespace::init`).
//! The last stage, the sandbox's PID 1, is `cove-init` (`cove_init`), or this binary when
//! `cove-init` is not installed next to it.

use anyhow::Context;
use cove_runtime::namespace::init;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run as the sandbox's PID 1.
    #[arg(long)]
    pid1: bool,
    /// Run as the init of a gVisor sandbox (its spec in the environment).
    #[arg(long = "gvisor-agent")]
    gvisor_agent: bool,
    /// Copy a sandbox's writable layers (a snapshot); the spec comes on stdin.
    #[arg(long = "copy-layers")]
    copy_layers: bool,
    /// Give a warm sandbox a new root (a fork); the spec comes on stdin.
    #[arg(long)]
    reroot: bool,
    /// Mount a gVisor sandbox's root in a mount namespace of its own, then run runsc there:
    /// ROOT_SPEC RUNSC [ARGS...].
    #[arg(long = "gvisor-launch", num_args = 2.., allow_hyphen_values = true, value_names = ["ROOT_SPEC", "RUNSC"])]
    gvisor_launch: Option<Vec<std::ffi::OsString>>,
    /// Connect a gVisor sandbox's network namespace to the outside:
    /// LEASE_DIR SLOT HELPER LOG [CGROUP_JOINS...].
    #[arg(long = "gvisor-link", num_args = 4.., value_names = ["LEASE_DIR", "SLOT", "HELPER", "LOG"])]
    gvisor_link: Option<Vec<String>>,
    /// Only hold a user and a network namespace (a gVisor sandbox's link), until killed.
    #[arg(long = "hold-netns")]
    hold_netns: bool,
    /// Fork setup stages for the server that started this, as it asks on stdin.
    #[arg(long)]
    spawner: bool,
    /// Connect a sandbox to the network: HELPER PID UID_BASE LOG [CGROUP_JOINS...].
    #[arg(long, num_args = 4.., value_names = ["HELPER", "PID", "UID_BASE", "LOG"])]
    network: Option<Vec<String>>,
}

impl Args {
    /// Whether this process is to be a sandbox's PID 1.
    pub fn is_pid1(&self) -> bool {
        self.pid1 || self.gvisor_agent
    }
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    // runsc hands a gVisor sandbox's init nothing but its stdio, and this sentry's
    // close_range refuses CLOSE_RANGE_CLOEXEC (EINVAL): nothing to close there.
    if args.gvisor_agent {
        cove_init::gvisor_agent()?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // Without a `cove-init` next to this binary, this one is a sandbox's PID 1.
    if args.pid1 {
        cove_init::pid1()?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // Whatever the server inherited must not reach the sandbox.
    cove_runtime::confine::close_inherited_fds()
        .context("cannot mark inherited descriptors close-on-exec")?;
    if let Some(launch) = args.gvisor_launch {
        let (spec, argv) = launch
            .split_first()
            .context("--gvisor-launch takes a root spec and a command")?;
        let spec: cove_runtime::gvisor::rootfs::RootSpec =
            serde_json::from_str(spec.to_str().context("the root spec is not UTF-8")?)
                .context("cannot read the root spec")?;
        let err = cove_runtime::gvisor::rootfs::run_launch_stage(&spec, argv);
        return Err(anyhow::Error::from(err).context("cannot launch the gVisor sandbox"));
    }
    if let Some(network) = args.network {
        let [helper, pid, base, log, joins @ ..] = network.as_slice() else {
            anyhow::bail!("--network takes at least four values");
        };
        let joins: Vec<std::path::PathBuf> = joins.iter().map(std::path::PathBuf::from).collect();
        let connection = cove_runtime::network::Connection {
            helper: std::path::Path::new(helper),
            pid: pid.parse().context("invalid pid")?,
            uid_base: base.parse().context("invalid uid base")?,
            log: std::path::Path::new(log),
            cgroup_joins: &joins,
        };
        cove_runtime::network::run_stage(&connection)
            .context("cannot connect the sandbox to the network")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(link) = args.gvisor_link {
        let [lease_dir, slot, helper, log, joins @ ..] = link.as_slice() else {
            anyhow::bail!("--gvisor-link takes at least four values");
        };
        let joins: Vec<std::path::PathBuf> = joins.iter().map(std::path::PathBuf::from).collect();
        let stage = cove_runtime::gvisor::link::Stage {
            lease_dir: std::path::Path::new(lease_dir),
            slot: slot.parse().context("invalid slot")?,
            helper: std::path::Path::new(helper),
            log: std::path::Path::new(log),
            cgroup_joins: &joins,
        };
        cove_runtime::gvisor::link::run_stage(&stage)
            .context("cannot connect the gVisor sandbox to the network")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.hold_netns {
        cove_runtime::gvisor::link::hold().context("cannot hold a network namespace")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.copy_layers {
        cove_runtime::layer::run_stage().context("the layer copy")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.reroot {
        cove_runtime::namespace::reroot::run_stage().context("the reroot")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.spawner {
        cove_runtime::namespace::spawner::serve(|stage| match forked_stage(stage) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("cove: {err:#}");
                1
            }
        })
        .context("the stage spawner")?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    setup()?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A stage the spawner forked: the setup stage without arguments, else the network stage
/// they name (the only other stage the runtime asks it for).
fn forked_stage(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    if args.is_empty() {
        return setup();
    }
    use clap::Parser as _;
    let parsed = crate::Cli::try_parse_from(
        ["cove".into(), init::SUBCOMMAND.into()]
            .into_iter()
            .chain(args),
    )?;
    match parsed.command {
        crate::Command::SandboxInit(stage) if stage.network.is_some() => run(stage).map(drop),
        _ => anyhow::bail!("the spawner forks only setup and network stages"),
    }
}

/// The setup stage: builds the sandbox from the spec on stdin, and reports on stdout.
fn setup() -> anyhow::Result<()> {
    // A forked stage has what its spawner had besides its stdio.
    cove_runtime::confine::close_inherited_fds()
        .context("cannot mark inherited descriptors close-on-exec")?;
    let report = init::setup().unwrap_or_else(|err| init::Report::Failed {
        error: format!("{:#}", anyhow::Error::from(err)),
    });
    println!(
        "{}",
        serde_json::to_string(&report).context("cannot encode the report")?
    );
    Ok(())
}
