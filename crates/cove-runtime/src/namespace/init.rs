//! The processes that build a sandbox. They run from the `cove` binary itself (hidden
//! subcommands), each a fresh single-threaded process, which namespace changes require:
//!
//! 1. **setup** (host root): private mount namespace; the sandbox's disk (mounted ahead by
//!    the disk pool and handed over, or attached and mounted here), idmapped template layers,
//!    overlays, `/dev`; then it becomes root of the sandbox's user namespace, enters its
//!    network namespace, unshares the other namespaces and starts…
//! 2. **pid1**: PID 1 of the new PID namespace. It mounts `/proc`, `/sys` and devpts,
//!    pivots into the new root, and then runs the agent.
//!
//! Setup forks a holder of the user namespace (not a stage of its own: no exec), which
//! creates it so that setup can map its ids and use it for idmapped mounts before anything
//! runs inside it, and then, while setup builds the root, creates the network namespace in
//! it and brings its loopback interface up.
//!
//! Setup takes the lease on the sandbox's uid range and makes the agent's listening socket;
//! PID 1 gets both as descriptors ([`crate::inherited`]) and holds them for the sandbox's
//! life. No host path is shared with the sandbox.

use std::{
    fs,
    io::{self, BufRead, BufReader, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::{
            fs::{DirBuilderExt, PermissionsExt},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};

use crate::{
    AgentSettings, confine, disk, idmap, inherited, mounts, net, seccomp, template::Template,
    uid_ranges, userns, volume,
};

/// The hidden `cove` subcommand the stages run as.
pub const SUBCOMMAND: &str = "__sandbox-init";
/// Its flag for the PID 1 stage.
pub const PID1_FLAG: &str = "--pid1";
/// Its flag for the network stage (see `crate::network::connect`).
pub const NETWORK_FLAG: &str = "--network";
/// The flag of the gVisor launch stage (`crate::gvisor::rootfs::run_launch_stage`): ROOT_SPEC
/// RUNSC ARGS...
pub const GVISOR_LAUNCH_FLAG: &str = "--gvisor-launch";
/// The flag of a gVisor sandbox's link stage (`crate::gvisor::link::run_stage`): LEASE_DIR
/// SLOT HELPER LOG [CGROUP_JOINS...].
pub const GVISOR_LINK_FLAG: &str = "--gvisor-link";
/// The flag of the network namespace holder of a gVisor sandbox's link
/// (`crate::gvisor::link::hold`).
pub const HOLD_NETNS_FLAG: &str = "--hold-netns";

/// The variable of `cove serve`'s environment that sets what sandboxes' agents log
/// (a `COVE_LOG` filter; default `info`).
pub const AGENT_LOG_ENV: &str = "COVE_AGENT_LOG";

/// `PATH` of the sandbox's PID 1, inherited by everything the agent starts.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the stages need, passed on stdin as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitSpec {
    pub id: String,
    /// The sandbox's directory on the host (disk image, socket, log): only host root may
    /// write it, and nothing of it is shown inside the sandbox.
    pub dir: PathBuf,
    pub template: Template,
    /// The uid range the sandbox runs as (see [`userns::base_for_slot`]).
    pub slot: u32,
    /// Where the range's lease is taken ([`uid_ranges::LEASE_DIR`]).
    pub lease_dir: PathBuf,
    pub hostname: String,
    /// What the agent PID 1 runs is told.
    pub agent: AgentSettings,
    /// The cgroup hierarchy the sandbox's cgroup (named after its id) lives in.
    pub cgroups: Option<crate::cgroup::Hierarchy>,
    /// Set no_new_privs for every process of the sandbox (setuid programs like sudo stop
    /// working).
    #[serde(default)]
    pub no_new_privs: bool,
    /// The size the agent keeps its log under, in bytes.
    #[serde(default = "default_log_cap")]
    pub log_cap: u64,
    /// Volumes mounted into the sandbox, in order.
    #[serde(default)]
    pub volumes: Vec<crate::volume::VolumeMount>,
    /// The binary PID 1 runs ([`super::init_binary`]); without one, this stage's own.
    #[serde(default)]
    pub init_exe: Option<super::init_binary::InitBinary>,
    /// The server hands the setup stage the disk's filesystem mounted already, at
    /// [`inherited::SETUP_DISK`] (the disk pool mounts its images ahead).
    #[serde(default)]
    pub disk_mounted: bool,
}

/// The size a sandbox's agent keeps its log under unless told otherwise.
pub const DEFAULT_LOG_CAP: u64 = 4 << 20;

fn default_log_cap() -> u64 {
    DEFAULT_LOG_CAP
}

/// What setup reports on stdout when the sandbox's agent is up.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Started {
        pid: u32,
    },
    /// Another server's sandbox holds the uid range: nothing was started.
    SlotTaken,
    Failed {
        error: String,
    },
}

/// The umask a sandbox's processes start with (files 0644, directories 0755).
const SANDBOX_UMASK: u32 = 0o022;

/// Open files each process of a sandbox may have (soft and hard limit; lower where the
/// server's own hard limit is lower). Set explicitly so a sandbox never inherits the limit
/// the server raises for itself.
const NOFILE_LIMIT: u64 = 65536;

/// The sandbox's root filesystem, relative to its directory.
const ROOTFS: &str = "rootfs";

/// Paths inside a sandbox's host directory.
#[derive(Clone, Debug)]
pub struct SandboxDirs {
    pub root: PathBuf,
}

impl SandboxDirs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// Where the sandbox's root filesystem is assembled (inside its mount namespace only).
    pub fn rootfs(&self) -> PathBuf {
        self.root.join(ROOTFS)
    }
    /// The sandbox's disk image (its quota), when it has one.
    pub fn disk_image(&self) -> PathBuf {
        self.root.join(disk::IMAGE)
    }
    /// Where the writable layers live: the disk image's filesystem when mounted there (in
    /// the sandbox's mount namespace only), owners stored as the sandbox sees them.
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk")
    }
    /// The writable layer of the `i`-th mount point ("/" is 0), on the disk as stored.
    pub fn upper(&self, i: usize) -> PathBuf {
        upper_in(&self.disk(), i)
    }
    fn work(&self, i: usize) -> PathBuf {
        work_in(&self.disk(), i)
    }
    /// The disk seen through the sandbox's idmapping (owners shifted into its uid range),
    /// which the overlays write through.
    fn mapped(&self) -> PathBuf {
        self.root.join("mapped")
    }
    fn mapped_upper(&self, i: usize) -> PathBuf {
        upper_in(&self.mapped(), i)
    }
    fn mapped_work(&self, i: usize) -> PathBuf {
        self.mapped().join("work").join(i.to_string())
    }
    fn lower(&self, n: usize) -> PathBuf {
        self.root.join("lower").join(n.to_string())
    }
    /// The agent's listening socket, made by setup and handed to PID 1 by descriptor.
    pub fn socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    /// The sandbox's log: what setup and the agent (PID 1's stderr) write.
    pub fn log(&self) -> PathBuf {
        self.root.join("sandbox.log")
    }
}

pub use crate::disk::{upper_in, work_in};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read the sandbox spec")]
    Spec(#[source] io::Error),
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox's PID 1 failed before its agent was up: {0}")]
    Pid1(String),
}

fn step(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> InitError {
    move |source| InitError::Step {
        step: what(),
        source,
    }
}

/// Reads the spec PID 1 gets on stdin: one line, there before the setup stage that wrote it
/// has closed the pipe (see [`start_pid1`]).
pub fn read_spec() -> Result<InitSpec, InitError> {
    let mut raw = String::new();
    io::stdin().read_line(&mut raw).map_err(InitError::Spec)?;
    parse_spec(&raw)
}

fn parse_spec(raw: &str) -> Result<InitSpec, InitError> {
    serde_json::from_str(raw)
        .map_err(|err| InitError::Spec(io::Error::new(io::ErrorKind::InvalidData, err)))
}

/// The setup stage, run as host root. Reads its spec as the first line of stdin; prints a
/// [`Report`] on stdout.
///
/// It joins the sandbox's cgroups itself, first, so that everything it starts (the holder
/// of the user namespace, PID 1 and all below it) is limited and accounted as the sandbox.
/// A single-threaded process joining by itself spares the RCU grace period a move by pid
/// waits for on cgroup v1 ([`crate::cgroup::join`]): 5-20 ms on the critical path of each
/// create that the server's move of the stage, overlapped with the mounts, used to cost.
pub fn setup() -> Result<Report, InitError> {
    let mut input = io::stdin().lock();
    let mut line = String::new();
    input.read_line(&mut line).map_err(InitError::Spec)?;
    let spec = parse_spec(&line)?;
    // Taken first, before anything could open a descriptor at its number.
    let disk_from = if spec.disk_mounted {
        DiskFrom::Mounted(
            inherited::setup_disk().map_err(step(|| "cannot take the sandbox's disk".into()))?,
        )
    } else {
        DiskFrom::Attach
    };
    if let Some(cgroups) = &spec.cgroups {
        cgroups.join(&spec.id).map_err(|e| InitError::Step {
            step: "cannot join the sandbox's cgroups".into(),
            source: io::Error::other(e),
        })?;
    }
    let dirs = SandboxDirs::new(&spec.dir);
    // Opened while host paths are still reachable: PID 1 is exec'd through the descriptor.
    let init_exe = match &spec.init_exe {
        None => None,
        Some(binary) => {
            let fd = super::init_binary::open(binary, inherited::ABOVE_TARGETS)
                .map_err(step(|| format!("cannot open {}", binary.path.display())))?;
            if fd.is_none() {
                tracing::warn!(
                    path = %binary.path.display(),
                    "not the file the server checked at its start (installed anew?): this sandbox's PID 1 runs cove"
                );
            }
            fd
        }
    };

    // The agent (PID 1) should survive an out-of-memory kill inside the sandbox: it gives
    // every process it starts a high score, and keeps the lowest itself when the host lets
    // us set it (lowering needs CAP_SYS_RESOURCE, which some hosts withhold even from root).
    if let Err(err) = fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::debug!(%err, "cannot lower the agent's OOM score; children still rank above it");
    }
    let Some(lease) = uid_ranges::Lease::take(&spec.lease_dir, spec.slot)
        .map_err(step(|| format!("cannot lease uid range {}", spec.slot)))?
    else {
        return Ok(Report::SlotTaken);
    };
    // Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts withhold from root.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or(NOFILE_LIMIT, |hard| hard.min(NOFILE_LIMIT));
    let nofile = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, nofile).map_err(|e| {
        InitError::Step {
            step: "cannot set the sandbox's open-file limit".into(),
            source: e.into(),
        }
    })?;
    let listener = listen(&dirs.socket())?;
    // Files the sandbox makes get the usual modes, whatever the server's umask.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(SANDBOX_UMASK));

    unshare(UnshareFlags::NEWNS).map_err(step(|| "cannot create a mount namespace".into()))?;
    mounts::make_private().map_err(step(|| "cannot make mounts private".into()))?;

    let uid_base = userns::base_for_slot(spec.slot);
    let (mut holder, userns) = create_userns(uid_base)?;
    // From the sandbox's user namespace on, host paths are not searchable (the state
    // directory is host root's alone). The working directory, the sandbox's own directory
    // entered by enter_dir, survives the switch, so the later steps reach it relative to it.
    enter_dir(&dirs, disk_from)?;
    let root = RootSpec {
        template: &spec.template,
        slot: spec.slot,
        volumes: &spec.volumes,
    };
    build_rootfs(&root, &dirs, userns.as_fd())?;
    // Made by the holder meanwhile.
    let netns = match holder.network_namespace() {
        Ok(netns) => netns,
        Err(err) => {
            holder.release();
            return Err(err);
        }
    };

    userns::enter_as_root(userns.as_fd()).map_err(step(|| {
        "cannot become root of the sandbox's user namespace".into()
    }))?;
    drop(userns);
    rustix::thread::move_into_link_name_space(
        netns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| step(|| "cannot enter the sandbox's network namespace".into())(e.into()))?;
    drop(netns);
    let ending = holder.let_go();

    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWCGROUP;
    unshare(flags).map_err(step(|| "cannot create the sandbox's namespaces".into()))?;

    start_pid1(
        &spec,
        init_exe.as_ref(),
        vec![
            (OwnedFd::from(listener), inherited::AGENT_LISTENER),
            (lease.into_fd(), inherited::UID_LEASE),
        ],
        ending,
    )
}

/// The agent's listening socket at `path` (replacing one a previous start of the same
/// sandbox left), for host root only from its first moment.
fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, InitError> {
    let what = || format!("cannot listen on {}", path.display());
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(step(what)(err)),
    }
    // Only for the bind: the sandbox inherits the umask of what comes after.
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(umask);
    bound.map_err(step(what))
}

/// `unshare(2)` of namespaces only, in a single-threaded stage.
pub(crate) fn unshare(flags: UnshareFlags) -> io::Result<()> {
    debug_assert!(!flags.contains(UnshareFlags::FILES));
    // SAFETY: the stages are single-threaded and never unshare the file table, so no
    // thread can observe descriptors from a table it does not share.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

fn create_userns(uid_base: u32) -> Result<(Holder, OwnedFd), InitError> {
    let holder = Holder::start(uid_base)?;
    let pid = holder.pid.as_raw_nonzero();
    let maps = userns::write_id_maps(pid.get().unsigned_abs(), uid_base)
        .map_err(step(|| format!("cannot map ids from {uid_base}")))
        .and_then(|()| holder.ids_mapped());
    let ns = maps.and_then(|()| {
        fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(step(|| "cannot open the user namespace".into()))
    });
    match ns {
        Ok(ns) => Ok((holder, ns)),
        Err(err) => {
            holder.release();
            Err(err)
        }
    }
}

/// The process that makes the sandbox's user namespace and keeps it until the setup has its
/// ids mapped and a descriptor of it. It makes it as the sandbox's host uid, so that uid
/// owns the namespace, and helpers running as it (the user-mode network stack) can join it
/// without host privileges. Then, inside it, it makes the sandbox's network namespace (owned
/// by the user namespace, as one PID 1 made would be) with its loopback interface up, and
/// says so again: about 0.4 ms that pass beside the setup's work on the root filesystem, on
/// the other CPU, rather than after it.
///
/// A fork of this stage, not a new `cove`: an exec of the whole binary (its loader, its
/// relocations, its CPU feature probes, its argument parser) cost about 2 ms of every
/// create, for three system calls. The child shares nothing with a sandbox: it runs before
/// anything does in the namespace, it is not dumpable (its memory is a copy of the stage's),
/// and it is reaped before the setup reports the sandbox started (nothing but PID 1 runs in
/// it before).
struct Holder {
    pid: rustix::process::Pid,
    /// Closed to let the holder go.
    release: OwnedFd,
    /// What it says: a line when the user namespace is made, one when the network namespace
    /// is, or what failed.
    reports: BufReader<fs::File>,
}

impl Holder {
    fn start(uid: u32) -> Result<Self, InitError> {
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
                step(|| "cannot make a pipe to the user namespace holder".into())(e.into())
            })
        };
        let (ready_read, ready_write) = pipe()?;
        let (release_read, release_write) = pipe()?;
        // SAFETY: the setup stage is single-threaded (see the module's documentation), so
        // the child inherits no lock another thread holds; it only makes system calls and
        // ends in `_exit`, never returning into the stage's code.
        let forked = unsafe { libc::fork() };
        if forked < 0 {
            return Err(step(|| "cannot start the user namespace holder".into())(
                io::Error::last_os_error(),
            ));
        }
        if forked == 0 {
            drop(ready_read);
            drop(release_write);
            hold(uid, ready_write, release_read);
        }
        drop(ready_write);
        drop(release_read);
        let mut holder = Self {
            pid: rustix::process::Pid::from_raw(forked).expect("fork returned a positive pid"),
            release: release_write,
            reports: BufReader::new(fs::File::from(ready_read)),
        };
        match holder.hear(USERNS_MADE) {
            Ok(()) => Ok(holder),
            Err(err) => {
                holder.release();
                Err(err)
            }
        }
    }

    /// Tells the holder that the user namespace's ids are mapped: it makes the network
    /// namespace only then, since a network namespace takes the owner of its `/proc/net`
    /// from its user namespace's root as it is made (unmapped, it would be nobody's).
    fn ids_mapped(&self) -> Result<(), InitError> {
        rustix::io::write(&self.release, IDS_MAPPED)
            .map(drop)
            .map_err(|e| step(|| "cannot tell the user namespace holder".into())(e.into()))
    }

    /// Waits until the holder has made the network namespace, and opens it.
    fn network_namespace(&mut self) -> Result<OwnedFd, InitError> {
        self.hear(NETNS_MADE)?;
        let pid = self.pid.as_raw_nonzero();
        fs::File::open(format!("/proc/{pid}/ns/net"))
            .map(OwnedFd::from)
            .map_err(step(|| "cannot open the network namespace".into()))
    }

    /// Reads the holder's next line, which must be `expected`.
    fn hear(&mut self, expected: &str) -> Result<(), InitError> {
        let mut line = String::new();
        match self.reports.read_line(&mut line) {
            Ok(_) if line == expected => Ok(()),
            Ok(_) => {
                let said = match line.trim_end() {
                    "" => "it ended without a word",
                    said => said,
                };
                Err(InitError::Step {
                    step: "the user namespace holder failed".into(),
                    source: io::Error::other(said.to_owned()),
                })
            }
            Err(err) => Err(step(|| "cannot hear from the user namespace holder".into())(err)),
        }
    }

    /// Lets the holder end; it is reaped when what this returns is dropped. Its exit (an
    /// expedited RCU grace period among it) took 0.15–1.4 ms that the setup waited for
    /// before it could unshare PID 1's namespaces; now it passes while PID 1 starts.
    fn let_go(self) -> Ending {
        drop(self.release);
        Ending(self.pid)
    }

    /// Lets the holder end, and reaps it.
    fn release(self) {
        drop(self.let_go());
    }
}

/// A holder let go of: reaped when dropped.
struct Ending(rustix::process::Pid);

impl Drop for Ending {
    fn drop(&mut self) {
        if let Err(err) =
            rustix::process::waitpid(Some(self.0), rustix::process::WaitOptions::empty())
        {
            tracing::warn!(%err, "cannot reap the user namespace holder");
        }
    }
}

/// What the holder says when it has made the user namespace.
const USERNS_MADE: &str = "ready\n";
/// What the holder says when it has made the network namespace as well.
const NETNS_MADE: &str = "net\n";
/// What the setup tells the holder when it has mapped the user namespace's ids.
const IDS_MAPPED: &[u8] = b"m";

/// The holder's side of [`Holder::start`], in the forked child: drops to `uid` (no
/// supplementary groups), creates the user namespace and says [`USERNS_MADE`] on `ready`,
/// waits for [`IDS_MAPPED`] on `release`, creates the network namespace in it and says
/// [`NETNS_MADE`] (or, instead of either, what failed), and waits until `release` is
/// closed.
fn hold(uid: u32, ready: OwnedFd, release: OwnedFd) -> ! {
    let user = (|| -> io::Result<()> {
        // SAFETY: plain system calls on values of our own; no pointer is passed but null
        // with a count of zero.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(uid, uid, uid) == 0
                && libc::setresuid(uid, uid, uid) == 0
        };
        if !dropped {
            return Err(in_step(
                "drop to the sandbox's uid",
                io::Error::last_os_error(),
            ));
        }
        // Whatever the host's `fs.suid_dumpable`: nothing of the sandbox's uid may read or
        // trace the memory it shares with the setup stage.
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .map_err(|e| in_step("make the holder undumpable", e.into()))?;
        unshare(UnshareFlags::NEWUSER).map_err(|e| in_step("create a user namespace", e))
    })();
    // All capabilities within the new user namespace (its ids need not be mapped yet):
    // enough for a network namespace owned by it, and for its interfaces.
    let made = user.and_then(|()| {
        let _ = rustix::io::write(&ready, USERNS_MADE.as_bytes());
        let mut word = [0u8; 1];
        match rustix::io::read(&release, &mut word) {
            Ok(1) if word == IDS_MAPPED => {}
            // The setup gave up (closed its end) before it mapped them.
            _ => return Err(io::Error::other("the setup mapped no ids")),
        }
        unshare(UnshareFlags::NEWNET).map_err(|e| in_step("create a network namespace", e))?;
        net::loopback_up().map_err(|e| in_step("bring the loopback interface up", e))
    });
    let message = match &made {
        Ok(()) => NETNS_MADE.to_owned(),
        Err(err) => format!("{err}\n"),
    };
    let _ = rustix::io::write(&ready, message.as_bytes());
    if made.is_ok() {
        let mut byte = [0u8; 1];
        // Nothing more is written: the read ends when the setup closes its end, or dies.
        while let Ok(n) = rustix::io::read(&release, &mut byte) {
            if n == 0 {
                break;
            }
        }
    }
    // SAFETY: ends this forked child at once, without running the stage's exit handlers or
    // destructors, which belong to the parent.
    unsafe { libc::_exit(if made.is_ok() { 0 } else { 1 }) }
}

/// `err` with what was being done (the holder reports one line).
fn in_step(what: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("cannot {what}: {err}"))
}

/// What a sandbox's root filesystem is made of.
pub(super) struct RootSpec<'a> {
    pub template: &'a Template,
    /// The uid range the sandbox runs as.
    pub slot: u32,
    pub volumes: &'a [crate::volume::VolumeMount],
}

fn mkdir(path: &Path, mode: u32) -> Result<(), InitError> {
    let what = || format!("cannot create {}", path.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(step(what))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(step(what))
}

/// Where [`enter_dir`] finds the filesystem of a sandbox's disk image.
#[derive(Debug)]
pub(super) enum DiskFrom {
    /// Attach the image to a loop device and mount it (its sandbox is starting).
    Attach,
    /// Mounted already, detached, by the server's disk pool (its sandbox is starting).
    Mounted(OwnedFd),
    /// The device its running sandbox's disk is attached to (a stage beside it).
    Running,
}

/// Enters the sandbox's directory and makes the mount points the root is assembled on, with
/// the sandbox's disk mounted at [`SandboxDirs::disk`]: its image's filesystem, or the plain
/// directory there when it has no image. Runs in a private mount namespace of the stage's
/// own.
///
/// The mount points are made on a tmpfs over the sandbox's directory, in this namespace
/// only: the host's filesystem gets none of them, and they go with the namespace. Made on
/// the host's filesystem, each `mkdir` took 0.4–0.7 ms during back-to-back creates on a
/// host whose ext4 has no journal (it steps over recently freed inodes one at a time then).
/// What the directory itself holds (the image, the agent's socket) is reached before.
pub(super) fn enter_dir(dirs: &SandboxDirs, from: DiskFrom) -> Result<(), InitError> {
    let image = dirs.disk_image();
    let disk = if image.exists() {
        let attach = step(|| "cannot attach the sandbox's disk".into());
        match from {
            DiskFrom::Attach => Writable::Device(disk::attach_image(&image).map_err(attach)?),
            DiskFrom::Running => {
                Writable::Device(disk::existing_device(&image, true).map_err(attach)?)
            }
            DiskFrom::Mounted(mount) => {
                disk::check_mounted(&image, &mount)
                    .map_err(step(|| "cannot take the sandbox's mounted disk".into()))?;
                Writable::Mounted(mount)
            }
        }
    } else if let DiskFrom::Mounted(_) = from {
        return Err(step(|| "cannot take the sandbox's mounted disk".into())(
            io::Error::other("the sandbox has no disk image"),
        ));
    } else {
        // No image: the writable layers are that plain directory, kept on the host.
        mkdir(&dirs.disk(), 0o755)?;
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            dirs.disk(),
            rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
                | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| step(|| "cannot take the sandbox's disk directory".into())(e.into()))?;
        Writable::Directory(tree)
    };
    mounts::mount_scratch(&dirs.root)
        .map_err(step(|| "cannot make the sandbox's mount points".into()))?;
    // The overlays are given paths relative to the sandbox's directory, so that its
    // `/proc/self/mountinfo` (which shows them) tells nothing of the host's directories.
    // Entered after the tmpfs, so that relative paths lead into it.
    rustix::process::chdir(&dirs.root).map_err(|e| InitError::Step {
        step: format!("cannot enter {}", dirs.root.display()),
        source: e.into(),
    })?;
    mkdir(&dirs.rootfs(), 0o755)?;
    mkdir(&dirs.disk(), 0o755)?;
    mkdir(&dirs.mapped(), 0o755)?;
    match disk {
        Writable::Device(device) => device
            .mount(&dirs.disk())
            .map_err(step(|| "cannot mount the sandbox's disk".into())),
        Writable::Mounted(tree) | Writable::Directory(tree) => rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            dirs.disk(),
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| step(|| "cannot mount the sandbox's disk".into())(e.into())),
    }
}

/// What a sandbox's writable layers are on, on the way to [`SandboxDirs::disk`].
enum Writable {
    /// The loop device of its disk image.
    Device(disk::Device),
    /// Its disk image's filesystem, mounted detached by the disk pool.
    Mounted(OwnedFd),
    /// A copy of the plain directory's mount, taken before the tmpfs hid it.
    Directory(OwnedFd),
}

/// Assembles the sandbox's root at [`SandboxDirs::rootfs`] in this mount namespace, from
/// its disk (mounted at [`SandboxDirs::disk`] already, or a plain directory there): the
/// template's layers and the writable layers seen through the sandbox's idmapping, the
/// overlays, volumes and `/dev`. Runs in the sandbox's directory ([`enter_dir`]).
pub(super) fn build_rootfs(
    spec: &RootSpec<'_>,
    dirs: &SandboxDirs,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<(), InitError> {
    let rootfs = dirs.rootfs();
    // Owners on the disk are the sandbox's own (uid 0 is its root): the same layer works in
    // any uid range, after a resume or as a snapshot's template layer.
    idmap::mount_idmapped_writable(&dirs.disk(), &dirs.mapped(), userns)
        .map_err(step(|| "cannot map the sandbox's writable layer".into()))?;

    for (n, layer) in spec.template.layers.iter().enumerate() {
        let lower = dirs.lower(n);
        mkdir(&lower, 0o755)?;
        idmap::mount_idmapped(&layer.path, &lower, userns).map_err(step(|| {
            format!("cannot map template layer {}", layer.path.display())
        }))?;
    }
    let relative = SandboxDirs::new("");
    for (i, at) in spec.template.mount_points().iter().enumerate() {
        let lowers: Vec<PathBuf> = spec
            .template
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| &l.at == at)
            .map(|(n, _)| relative.lower(n))
            .collect();
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        // Made by host root on the disk as stored, so owned by the sandbox's root; an
        // existing writable layer (a resumed sandbox) keeps its owner and content.
        if !dirs.upper(i).exists() {
            mkdir(&dirs.upper(i), 0o755)?;
        }
        mkdir(&dirs.work(i), 0o755)?;
        let target = rootfs.join(at.strip_prefix("/").unwrap_or(at));
        let _as_root = userns::ActingAsSandboxRoot::begin(userns::base_for_slot(spec.slot))
            .map_err(step(|| "cannot act as the sandbox's root".into()))?;
        mounts::mount_overlay(
            &target,
            &lowers,
            &relative.mapped_upper(i),
            &relative.mapped_work(i),
        )
        .map_err(step(|| {
            format!("cannot mount the overlay at {}", at.display())
        }))?;
    }
    for volume in spec.volumes {
        volume::attach(&rootfs, volume, userns, userns::base_for_slot(spec.slot)).map_err(step(
            || format!("cannot mount a volume at {}", volume.target.display()),
        ))?;
    }
    mounts::populate_dev(&rootfs.join("dev")).map_err(step(|| "cannot populate /dev".into()))?;
    Ok(())
}

/// Starts PID 1, hands it the spec, and waits until it is ready (its sandbox entered, its
/// agent's socket listening, see `cove_init`). The binary, `init_exe` or else this one, is
/// reached through `/proc/self`, which needs no search permission on its directories.
fn start_pid1(
    spec: &InitSpec,
    init_exe: Option<&OwnedFd>,
    fds: Vec<(OwnedFd, std::os::fd::RawFd)>,
    holder: Ending,
) -> Result<Report, InitError> {
    let mut command = Command::new(init_exe.map_or_else(
        || PathBuf::from("/proc/self/exe"),
        super::init_binary::exec_path,
    ));
    // The spec goes into PID 1's stdin before it is started, as much as the pipe holds (all
    // of it, as a rule): PID 1 reads it as soon as it runs, instead of waiting until this
    // stage, back from the spawn, is scheduled to write it (up to 0.4 ms of each create).
    let mut spec_line =
        serde_json::to_vec(spec).map_err(|e| InitError::Spec(io::Error::other(e)))?;
    spec_line.push(b'\n');
    let (stdin, spec_pipe) = inherited::SpecPipe::new(&spec_line).map_err(step(|| {
        "cannot hand the spec to the sandbox's PID 1".into()
    }))?;
    command
        .arg0("cove-agent")
        .args([SUBCOMMAND, PID1_FLAG])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .env_clear()
        .env("PATH", SANDBOX_PATH);
    // The agent logs at info (its log is the sandbox's, which users read) unless the
    // operator asks otherwise.
    command.env(
        "COVE_LOG",
        std::env::var_os(AGENT_LOG_ENV).unwrap_or_else(|| "info".into()),
    );
    inherited::pass(&mut command, fds).map_err(step(|| {
        "cannot hand descriptors to the sandbox's PID 1".into()
    }))?;
    // A PID 1 that died early cannot take the rest of its spec; its stdout tells why.
    let mut child = spec_pipe
        .spawn(command, &spec_line)
        .map_err(step(|| "cannot start the sandbox's PID 1".into()))?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    // Gone long since, as a rule: reaped before the server hears that the sandbox started,
    // so before anything runs in it but PID 1.
    drop(holder);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(InitError::Pid1(if line.trim().is_empty() {
            "no readiness report (see the sandbox log)".into()
        } else {
            line.trim().to_owned()
        }));
    }
    Ok(Report::Started { pid })
}

/// The PID 1 stage before its agent runs: kernel filesystems, host name, loopback, and the
/// switch into the sandbox's root.
pub fn enter_sandbox(spec: &InitSpec) -> Result<(), InitError> {
    // Relative to the working directory inherited from setup: the sandbox's directory.
    let rootfs = Path::new(ROOTFS);
    mounts::rebind_root(rootfs).map_err(step(|| {
        "cannot prepare the sandbox's root for pivot_root".into()
    }))?;
    mounts::mount_kernel_filesystems(rootfs)
        .map_err(step(|| "cannot mount /proc, /sys and /dev/pts".into()))?;
    rustix::system::sethostname(spec.hostname.as_bytes()).map_err(|e| InitError::Step {
        step: "cannot set the host name".into(),
        source: e.into(),
    })?;
    confine::mask_kernel_interfaces(rootfs)
        .map_err(step(|| "cannot mask /proc and /sys".into()))?;
    mounts::pivot_into(rootfs).map_err(step(|| "cannot switch to the sandbox's root".into()))?;
    confine_self(spec)
}

/// No ptrace of PID 1, the system call filter, fewer capabilities, and no_new_privs when
/// asked. The filter goes first: installing it needs the capabilities dropped after.
fn confine_self(spec: &InitSpec) -> Result<(), InitError> {
    confine::make_undumpable().map_err(step(|| "cannot make the agent undumpable".into()))?;
    let filter = seccomp::compile().map_err(|e| InitError::Step {
        step: "cannot build the system call filter".into(),
        source: io::Error::other(e),
    })?;
    seccomp::install(&filter).map_err(|e| InitError::Step {
        step: "cannot install the system call filter".into(),
        source: io::Error::other(e),
    })?;
    confine::drop_capabilities().map_err(step(|| "cannot drop capabilities".into()))?;
    if spec.no_new_privs {
        confine::forbid_new_privileges().map_err(step(|| "cannot set no_new_privs".into()))?;
    }
    Ok(())
}

/// Tells setup the agent is up, then points stdout at stderr, the sandbox's log (nobody
/// reads the pipe any more). Not at the sandbox's `/dev/null`: a descriptor into the root
/// would keep that root mounted after a [`super::reroot`].
pub fn report_ready() -> io::Result<()> {
    let mut out = io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    rustix::stdio::dup2_stdout(rustix::stdio::stderr())?;
    Ok(())
}

/// Tells setup that PID 1 failed (it forwards the line to the server).
pub fn report_failure(err: &dyn std::fmt::Display) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{}", err.to_string().replace('\n', " "));
    let _ = out.flush();
}
