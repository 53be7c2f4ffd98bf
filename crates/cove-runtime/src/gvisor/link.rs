//! Internet access for gVisor sandboxes: the sentry's own network stack (netstack, runsc's
//! `--network=sandbox`) on the `tap0` interface of a network namespace that slirp4netns
//! relays to the outside, as for namespace sandboxes ([`crate::network`]), behind the same
//! egress filter ([`crate::egress`]).
//!
//! - A small holder process of its own host uid (a leased uid range, [`crate::uid_ranges`])
//!   keeps a user namespace and the network namespace it owns; slirp4netns runs as that uid
//!   too and joins them without host privileges, in its own minimal root as for namespace
//!   sandboxes.
//! - Both live in a cgroup named after the sandbox (`cove/<id>`, its egress cgroup below on
//!   cgroup v2), apart from runsc's container cgroup: the egress filter is attached there,
//!   and destroying it ends both and frees the uid range.
//! - runsc reads the interface's address and routes when it starts or restores the sentry
//!   and takes the address off the host's side, so a link is made for each start or
//!   restore and taken down when the container goes. The container's spec names the
//!   namespace through `<sandbox>/netns`, a link to the holder's (host root's directory).
//! - Debian's runsc (2022) tells the host's network namespace by the presence of
//!   `/proc/sys/net/core/rmem_default`, which every namespace has on current kernels: it then
//!   refuses every namespace. The launch stage hides `/proc/sys/net` from runsc
//!   ([`super::rootfs::run_launch_stage`]).

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead, BufReader, Write},
    os::{fd::AsFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use super::{GvisorRuntime, KILL_TIMEOUT};
use crate::{
    Limits, RuntimeError,
    cgroup::Hierarchy,
    egress::{EgressFilter, error_chain},
    namespace::init::{self, HOLD_NETNS_FLAG, SUBCOMMAND},
    network::Connection,
    uid_ranges::{Lease, Slots},
    userns,
};

/// What gVisor sandboxes reach the internet with: the namespace backend's helper, egress
/// filter and uid ranges, shared.
#[derive(Clone)]
pub struct Internet {
    /// slirp4netns, when installed.
    pub helper: Option<PathBuf>,
    /// The egress filter, or why there is none (then no sandbox gets internet access).
    pub filter: Result<Arc<EgressFilter>, String>,
    pub slots: Arc<Slots>,
}

impl std::fmt::Debug for Internet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Internet")
            .field("helper", &self.helper)
            .field("filter", &self.filter.as_ref().map(|_| "running"))
            .finish_non_exhaustive()
    }
}

/// What the link stage needs.
pub struct Stage<'a> {
    pub lease_dir: &'a Path,
    pub slot: u32,
    pub helper: &'a Path,
    pub log: &'a Path,
    /// The files through which the holder and the helper join their cgroups
    /// ([`crate::cgroup::join`]).
    pub cgroup_joins: &'a [PathBuf],
}

/// What the link stage prints when another server holds the uid range.
const TAKEN: &str = "taken";

/// Makes a link with the `cove` binary at `exe`, which runs [`run_stage`] as a process of its
/// own. The holder's pid once the sandbox's side is configured; `None` when another server
/// leased the uid range first.
pub fn start(exe: &Path, stage: &Stage<'_>) -> io::Result<Option<u32>> {
    let output = Command::new(exe)
        .args([SUBCOMMAND, init::GVISOR_LINK_FLAG])
        .arg(stage.lease_dir)
        .arg(stage.slot.to_string())
        .arg(stage.helper)
        .arg(stage.log)
        .args(stage.cgroup_joins)
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "cannot connect the sandbox to the network ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let said = String::from_utf8_lossy(&output.stdout);
    match said.trim() {
        TAKEN => Ok(None),
        pid => pid.parse().map(Some).map_err(|_| {
            io::Error::other(format!("the network stage said {pid:?}, not a process id"))
        }),
    }
}

/// The link stage (host root): joins the link's cgroups, leases uid range `slot`, starts the
/// holder as the range's base uid with the lease, maps the holder's user namespace to the
/// range, and connects its network namespace through the helper ([`crate::network`]).
/// Prints the holder's pid, or [`TAKEN`].
pub fn run_stage(stage: &Stage<'_>) -> io::Result<()> {
    crate::cgroup::join(stage.cgroup_joins).map_err(io::Error::other)?;
    let Some(lease) = Lease::take(stage.lease_dir, stage.slot)? else {
        println!("{TAKEN}");
        return Ok(());
    };
    let base = userns::base_for_slot(stage.slot);
    // The holder keeps the lease for as long as it lives: the descriptor goes with it.
    rustix::io::fcntl_setfd(lease.as_fd(), rustix::io::FdFlags::empty())?;
    let exe = std::env::current_exe()?;
    let mut holder = Command::new(exe)
        .args([SUBCOMMAND, HOLD_NETNS_FLAG])
        .uid(base)
        .gid(base)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    drop(lease);
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if line.trim() != "ready" {
        let _ = holder.kill();
        let _ = holder.wait();
        return Err(io::Error::other(
            "the network namespace holder did not start",
        ));
    }
    let pid = holder.id();
    let linked = userns::write_id_maps(pid, base).and_then(|()| {
        crate::network::run_stage(&Connection {
            helper: stage.helper,
            pid,
            uid_base: base,
            log: stage.log,
            // Joined above: the helper is this process's child.
            cgroup_joins: &[],
        })
    });
    if let Err(err) = linked {
        let _ = holder.kill();
        let _ = holder.wait();
        return Err(err);
    }
    let mut out = io::stdout();
    writeln!(out, "{pid}")?;
    out.flush()
}

/// The holder (the range's base uid): makes a user namespace and a network namespace owned
/// by it, says so, and keeps them until its cgroup is destroyed.
pub fn hold() -> io::Result<()> {
    init::unshare(rustix::thread::UnshareFlags::NEWUSER | rustix::thread::UnshareFlags::NEWNET)?;
    let mut out = io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}

/// Points `at` (in a directory only host root reaches) to the network namespace of `pid`,
/// replacing what was there.
pub fn point_netns(at: &Path, pid: u32) -> io::Result<()> {
    let fresh = at.with_extension("new");
    match fs::remove_file(&fresh) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), &fresh)?;
    fs::rename(&fresh, at)
}

/// What a link's holder and helper may use, beside the sandbox's own limits (slirp4netns
/// needs about 3 MiB).
const LINK_LIMITS: Limits = Limits {
    memory_bytes: 64 << 20,
    cpus: 1,
    pids: 16,
};
/// Uid ranges tried before giving up (each found leased by another server is skipped).
const SLOT_ATTEMPTS: usize = 8;

impl GvisorRuntime {
    /// What links are made with, or why sandboxes of this runtime cannot have internet
    /// access here.
    fn link_parts(&self) -> Result<(&Internet, &Path, &EgressFilter, &Hierarchy), String> {
        let internet = self
            .internet
            .as_ref()
            .ok_or("this server gives gVisor sandboxes no internet access")?;
        let helper = internet
            .helper
            .as_deref()
            .ok_or(crate::network::NO_HELPER)?;
        let filter = internet
            .filter
            .as_deref()
            .map_err(|reason| crate::network::unfiltered(reason))?;
        let cgroups = self.cgroups.as_ref().ok_or(
            "internet access needs cgroups (for the egress filter), which this host does not give",
        )?;
        Ok((internet, helper, filter, cgroups))
    }

    /// Refuses a sandbox that asks for internet access where it cannot have it.
    pub(super) fn check_link(&self, spec: &crate::SandboxSpec) -> Result<(), RuntimeError> {
        if spec.network {
            self.link_parts().map_err(|reason| RuntimeError::Start {
                id: spec.id.clone(),
                reason: reason.to_owned(),
            })?;
        }
        Ok(())
    }

    /// Makes sandbox `id`'s link (what there was of an earlier one goes first).
    pub(super) fn link_up(&self, id: &str) -> Result<(), RuntimeError> {
        self.link_down(id)?;
        let (internet, helper, filter, cgroups) =
            self.link_parts().map_err(|reason| RuntimeError::Start {
                id: id.to_owned(),
                reason: reason.to_owned(),
            })?;
        let failed = |what: &'static str| {
            move |err: String| RuntimeError::Io {
                what,
                source: io::Error::other(err),
            }
        };
        cgroups
            .create(id, LINK_LIMITS)
            .map_err(|e| failed("create the cgroup of the sandbox's link")(e.to_string()))?;
        let dirs = self.dirs(id);
        let made = (|| {
            let egress = cgroups
                .egress_dir(id)
                .ok_or_else(|| failed("filter the sandbox's egress")("no egress cgroup".into()))?;
            filter
                .attach_sandbox(id, &egress)
                .map_err(|e| failed("filter the sandbox's egress")(error_chain(&e)))?;
            let joins = cgroups.helper_join_files(id);
            let log = dirs.log();
            for _ in 0..SLOT_ATTEMPTS {
                let slot = internet.slots.reserve().ok_or(RuntimeError::NoUidRange)?;
                let stage = Stage {
                    lease_dir: internet.slots.dir(),
                    slot,
                    helper,
                    log: &log,
                    cgroup_joins: &joins,
                };
                match start(&self.exe, &stage) {
                    Ok(Some(pid)) => {
                        self.links().insert(id.to_owned(), slot);
                        return point_netns(&dirs.netns(), pid)
                            .map_err(RuntimeError::io("name the sandbox's network namespace"));
                    }
                    Ok(None) => internet.slots.lost(slot),
                    Err(err) => {
                        internet.slots.release(slot);
                        return Err(RuntimeError::Start {
                            id: id.to_owned(),
                            reason: err.to_string(),
                        });
                    }
                }
            }
            Err(RuntimeError::NoUidRange)
        })();
        if let Err(err) = &made {
            tracing::debug!(sandbox_id = %id, err = %error_chain(err), "no link");
            let _ = self.link_down(id);
        }
        made
    }

    /// Takes sandbox `id`'s link down, if it has one: its holder and helper end with their
    /// cgroup, which frees the uid range.
    pub(super) fn link_down(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(cgroups) = &self.cgroups {
            cgroups
                .destroy(id, KILL_TIMEOUT)
                .map_err(|e| RuntimeError::Io {
                    what: "remove the cgroup of the sandbox's link",
                    source: io::Error::other(e),
                })?;
        }
        match fs::remove_file(self.dirs(id).netns()) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::io(
                    "remove the sandbox's network namespace name",
                )(err));
            }
            _ => {}
        }
        // A link made before a restart of the server is not in the map: its range is
        // skipped as leased elsewhere until its lease goes with the holder.
        if let (Some(slot), Some(internet)) = (self.links().remove(id), &self.internet) {
            internet.slots.release(slot);
        }
        Ok(())
    }

    /// The uid ranges of the links this server made, by sandbox.
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}
