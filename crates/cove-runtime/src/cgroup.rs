//! Resource limits per sandbox with cgroups: memory (swap included), CPU quota and number
//! of processes; their usage for metrics; freezing and thawing them (a pause that keeps
//! memory); and killing everything left in them. Works with cgroup v2
//! (`/sys/fs/cgroup/cgroup.controllers`) and v1 (a hierarchy per controller).

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The directory, under each hierarchy, that holds Cove's sandboxes.
const PARENT: &str = "cove";
/// The CPU accounting period (CPU limits are quotas per period).
const CPU_PERIOD_US: u64 = 100_000;

/// What a sandbox may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory including swap, in bytes.
    pub memory_bytes: u64,
    /// CPUs' worth of time per period (2 = two full CPUs).
    pub cpus: u32,
    /// Processes and threads at once.
    pub pids: u32,
}

/// What a sandbox uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    /// Page cache part of `memory_bytes`.
    pub cache_bytes: u64,
    /// CPU time used since the sandbox started.
    pub cpu_time: Duration,
    pub pids: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no usable cgroup hierarchy under {0} (needs cgroup v2, or v1 memory, cpu, cpuacct and pids)"
    )]
    Unavailable(PathBuf),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { what, path, source }
}

/// A v1 hierarchy's file through which a thread joins a cgroup.
const V1_JOIN: &str = "tasks";
/// A v2 hierarchy's file through which a process joins a cgroup.
const V2_JOIN: &str = "cgroup.procs";
/// clone3's flag for a child that starts in the v2 cgroup `clone_args.cgroup` names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Moves the calling process, which must be single-threaded (as every stage is: the kernel
/// lets no other process into a user namespace), into the cgroup of each of `files`: a v1
/// hierarchy's `tasks` or a v2 hierarchy's `cgroup.procs` file.
///
/// No move here takes the kernel's lock on every process's threads for writing, as a move
/// through `cgroup.procs` does: the first such move after a quiet spell waits for an RCU
/// grace period (5-20 ms on a 2-CPU VM), on the critical path of every create.
/// - A v1 `tasks` file is told `0`, the calling thread: the whole process, since it has no
///   other.
/// - v2 has no such file for the cgroups sandboxes use. For the (one) v2 cgroup, the caller
///   carries on in a child that starts in it ([`continue_in`]); the process that called
///   waits for that child and exits with its status.
pub fn join(files: &[PathBuf]) -> Result<(), CgroupError> {
    let mut v1 = Vec::new();
    let mut v2 = None;
    for file in files {
        match file.file_name().and_then(|n| n.to_str()) {
            Some(V1_JOIN) => v1.push(file),
            Some(V2_JOIN) if v2.is_none() => v2 = file.parent(),
            _ => {
                return Err(CgroupError::Io {
                    what: "join through",
                    path: file.clone(),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                });
            }
        }
    }
    for file in v1 {
        write(file, "0")?;
    }
    match v2 {
        Some(dir) => continue_in(dir).map_err(io_err("start a process in", dir)),
        None => Ok(()),
    }
}

/// Forks the calling process, which must be single-threaded, into the v2 cgroup `dir` (clone3
/// with `CLONE_INTO_CGROUP`, which takes the threads lock only for reading): returns in the
/// child; the parent waits for it and exits with its exit code (1 if a signal ended it).
fn continue_in(dir: &Path) -> io::Result<()> {
    let cgroup = fs::File::open(dir)?;
    // SAFETY: an all-zero `clone_args` is valid (integers only); the fields set are the flag,
    // the cgroup's descriptor (open until the call returns) and SIGCHLD as the exit signal.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.cgroup = u64::try_from(std::os::fd::AsRawFd::as_raw_fd(&cgroup))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: clone3 without a new stack or shared memory is a fork; the caller is
    // single-threaded, so the child's copy of it is whole. `args` outlives the call and its
    // size is the one passed.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        pid => {
            drop(cgroup);
            let pid = rustix::process::Pid::from_raw(
                i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?,
            )
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            let code = loop {
                match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
                    Ok(Some((_, status))) => break status.exit_status().unwrap_or(1),
                    Ok(None) => continue,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break 1,
                }
            };
            // Nothing of this process's own is left to flush or drop: the child does the work.
            // SAFETY: `_exit` ends the process at once; no Rust state is used after it.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Which cgroup version the host runs, and where.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Hierarchy {
    V2(PathBuf),
    /// Mount points of the memory, cpu, cpuacct and pids controllers, of the freezer (for
    /// pauses that keep memory) when the host has it, and of the cgroup v2 hierarchy that
    /// hybrid hosts mount beside them (for eBPF programs on cgroups).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
        #[serde(default)]
        freezer: Option<PathBuf>,
        unified: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// Finds the host's hierarchy under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Result<Self, CgroupError> {
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if ["memory", "cpu", "pids"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|x| x == *c))
        {
            return Ok(Hierarchy::V2(root.to_owned()));
        }
        let v1 = |name: &str| {
            let path = root.join(name);
            path.join("tasks").exists().then_some(path)
        };
        match (
            v1("memory"),
            v1("cpu"),
            v1("cpuacct").or_else(|| v1("cpu,cpuacct")),
            v1("pids"),
        ) {
            (Some(memory), Some(cpu), Some(cpuacct), Some(pids)) => Ok(Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer: v1("freezer"),
                unified: Some(root.join("unified"))
                    .filter(|u| u.join("cgroup.controllers").exists()),
            }),
            _ => Err(CgroupError::Unavailable(root.to_owned())),
        }
    }

    /// The cgroup directories of sandbox `id` (one for v2; one per controller for v1).
    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2(root) => vec![root.join(PARENT).join(id)],
            Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
                ..
            } => {
                let mut dirs = vec![memory.join(PARENT).join(id), cpu.join(PARENT).join(id)];
                // cpu and cpuacct may be one co-mounted hierarchy.
                if cpuacct != cpu {
                    dirs.push(cpuacct.join(PARENT).join(id));
                }
                dirs.push(pids.join(PARENT).join(id));
                dirs.extend(freezer.as_ref().map(|f| f.join(PARENT).join(id)));
                dirs
            }
        }
    }

    /// Creates sandbox `id`'s cgroup with `limits`.
    pub fn create(&self, id: &str, limits: Limits) -> Result<(), CgroupError> {
        if let Hierarchy::V2(root) = self {
            let parent = root.join(PARENT);
            fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
            // Children of the parent may only use controllers it hands down.
            let control = parent.join("cgroup.subtree_control");
            write(&control, "+memory +cpu +pids")?;
        }
        for dir in self.dirs(id).into_iter().chain(self.egress_dir(id)) {
            // Another server's shutdown may remove the empty parent under our feet; once more.
            fs::create_dir_all(&dir)
                .or_else(|_| fs::create_dir_all(&dir))
                .map_err(io_err("create", &dir))?;
        }
        self.set_limits(id, limits)
    }

    /// Sets (or changes) the limits of sandbox `id`.
    pub fn set_limits(&self, id: &str, limits: Limits) -> Result<(), CgroupError> {
        let quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
        let memory = limits.memory_bytes.to_string();
        match self {
            Hierarchy::V2(root) => {
                let dir = root.join(PARENT).join(id);
                write(&dir.join("memory.max"), &memory)?;
                write(&dir.join("memory.swap.max"), "0")?;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
            Hierarchy::V1 {
                memory: mem_root,
                cpu,
                pids,
                ..
            } => {
                let mem = mem_root.join(PARENT).join(id);
                // memsw (memory + swap) exists only with swap accounting, and must never be
                // below the memory limit: open it first, set memory, then close it to match.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                let swap_accounting = memsw.exists();
                if swap_accounting {
                    write(&memsw, "-1")?;
                }
                write(&mem.join("memory.limit_in_bytes"), &memory)?;
                if swap_accounting {
                    write(&memsw, &memory)?;
                }
                let cpu = cpu.join(PARENT).join(id);
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(
                    &pids.join(PARENT).join(id).join("pids.max"),
                    &limits.pids.to_string(),
                )?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to, to join sandbox `id`.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The cgroup v2 hierarchy, where eBPF programs attach to cgroups.
    fn v2_root(&self) -> Option<&Path> {
        match self {
            Hierarchy::V2(root) => Some(root),
            Hierarchy::V1 { unified, .. } => unified.as_deref(),
        }
    }

    /// The cgroup v2 directory of sandbox `id`'s network helper, whose egress is filtered.
    pub fn egress_dir(&self, id: &str) -> Option<PathBuf> {
        Some(self.v2_root()?.join(PARENT).join(id).join("egress"))
    }

    /// The files through which the network helper's stage joins (see [`join`]): the
    /// sandbox's limits and, below them where the host has cgroup v2, its egress filter.
    pub fn helper_join_files(&self, id: &str) -> Vec<PathBuf> {
        let mut files = match self {
            // On v2 the egress cgroup is inside the sandbox's own.
            Hierarchy::V2(_) => Vec::new(),
            Hierarchy::V1 { .. } => self.join_files(id),
        };
        files.extend(self.egress_dir(id).map(|d| d.join(V2_JOIN)));
        files
    }

    /// Every directory of sandbox `id`, innermost first.
    fn teardown_dirs(&self, id: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.egress_dir(id).into_iter().collect();
        if let Hierarchy::V1 {
            unified: Some(unified),
            ..
        } = self
        {
            dirs.push(unified.join(PARENT).join(id));
        }
        dirs.extend(self.dirs(id));
        dirs
    }

    /// Moves the calling process (and so its future children) into sandbox `id`'s cgroups.
    /// It must be single-threaded, as every stage is (the kernel lets no other process into
    /// a user namespace): see [`join`].
    pub fn join(&self, id: &str) -> Result<(), CgroupError> {
        join(&self.join_files(id))
    }

    /// The files through which the calling process joins sandbox `id`'s cgroups.
    fn join_files(&self, id: &str) -> Vec<PathBuf> {
        let file = match self {
            Hierarchy::V2(_) => V2_JOIN,
            Hierarchy::V1 { .. } => V1_JOIN,
        };
        self.dirs(id).into_iter().map(|d| d.join(file)).collect()
    }

    /// Removes the CPU and memory limits of sandbox `id` (on its way out).
    fn lift_limits(&self, id: &str) {
        let unlimited = [
            ("cpu.max", "max"),
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("cpu.cfs_quota_us", "-1"),
            // memsw before memory: v1 refuses a memory limit above memsw's.
            ("memory.memsw.limit_in_bytes", "-1"),
            ("memory.limit_in_bytes", "-1"),
            ("memory.memsw.limit_in_bytes", "-1"),
        ];
        for dir in self.dirs(id) {
            for (file, value) in unlimited {
                let path = dir.join(file);
                if path.exists() {
                    let _ = fs::write(path, value);
                }
            }
        }
    }

    /// What sandbox `id` uses now.
    pub fn usage(&self, id: &str) -> Result<Usage, CgroupError> {
        let number = |path: PathBuf| -> Result<u64, CgroupError> {
            let raw = fs::read_to_string(&path).map_err(io_err("read", &path))?;
            Ok(raw.trim().parse().unwrap_or(0))
        };
        let stat_field = |path: PathBuf, key: &str| -> u64 {
            fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        match self {
            Hierarchy::V2(root) => {
                let dir = root.join(PARENT).join(id);
                Ok(Usage {
                    memory_bytes: number(dir.join("memory.current"))?,
                    cache_bytes: stat_field(dir.join("memory.stat"), "file "),
                    cpu_time: Duration::from_micros(stat_field(
                        dir.join("cpu.stat"),
                        "usage_usec ",
                    )),
                    pids: number(dir.join("pids.current"))?,
                })
            }
            Hierarchy::V1 {
                memory,
                cpuacct,
                pids,
                ..
            } => {
                let mem = memory.join(PARENT).join(id);
                Ok(Usage {
                    memory_bytes: number(mem.join("memory.usage_in_bytes"))?,
                    cache_bytes: stat_field(mem.join("memory.stat"), "total_cache "),
                    cpu_time: Duration::from_nanos(number(
                        cpuacct.join(PARENT).join(id).join("cpuacct.usage"),
                    )?),
                    pids: number(pids.join(PARENT).join(id).join("pids.current"))?,
                })
            }
        }
    }

    /// How many of sandbox `id`'s processes the kernel killed for want of memory.
    pub fn oom_kills(&self, id: &str) -> Result<u64, CgroupError> {
        let path = match self {
            Hierarchy::V2(root) => root.join(PARENT).join(id).join("memory.events"),
            Hierarchy::V1 { memory, .. } => memory.join(PARENT).join(id).join("memory.oom_control"),
        };
        let raw = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Ok(raw
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// SIGKILLs whatever is in sandbox `id`'s cgroups, without waiting for it to be gone;
    /// `timeout` bounds the thaw of a frozen sandbox.
    pub fn kill(&self, id: &str, timeout: Duration) {
        // Dying takes CPU time and sometimes memory: a thousand processes throttled to one
        // CPU, or stuck at the memory limit, would otherwise exit one slow tick at a time.
        self.lift_limits(id);
        // A frozen process only dies once thawed (cgroup v1): the kill is sent first, so
        // that none of them runs a single instruction of its own again.
        if self.freeze_state(id) != Some(false) {
            for dir in self.teardown_dirs(id) {
                kill_all_in(&dir);
            }
            let _ = self.thaw(id, timeout);
        }
        for dir in self.teardown_dirs(id) {
            // v2 kills the whole cgroup in the kernel, without pid races.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            kill_all_in(&dir);
        }
    }

    /// SIGKILLs whatever is still in sandbox `id`'s cgroup and removes it, waiting up to
    /// `timeout` for the processes to be gone. A cgroup that does not exist is fine.
    pub fn destroy(&self, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        self.kill(id, timeout);
        for dir in self.teardown_dirs(id) {
            if !dir.exists() {
                continue;
            }
            // A killed process is usually reaped within a millisecond or two: poll fast at
            // first, then back off (a fixed 5 ms made every kill wait 20-30 ms).
            let mut pause = Duration::from_micros(200);
            loop {
                kill_all_in(&dir);
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    Err(err) if Instant::now() >= deadline => {
                        return Err(io_err("remove", &dir)(err));
                    }
                    // Busy until the last process is reaped.
                    Err(_) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                }
            }
        }
        Ok(())
    }
}

/// SIGKILLs every process in the cgroup `dir`.
fn kill_all_in(dir: &Path) {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// How long a freeze or thaw may take (processes in uninterruptible sleep delay it).
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a freeze or thaw in progress is looked at, at first (then less often).
const FREEZE_POLL: Duration = Duration::from_micros(100);

impl Hierarchy {
    /// The file that freezes sandbox `id`'s cgroup, and the values for frozen and thawed;
    /// `None` when the host's cgroups cannot freeze.
    fn freezer(&self, id: &str) -> Option<(PathBuf, &'static str, &'static str)> {
        match self {
            Hierarchy::V2(root) => {
                Some((root.join(PARENT).join(id).join("cgroup.freeze"), "1", "0"))
            }
            Hierarchy::V1 { freezer, .. } => Some((
                freezer
                    .as_ref()?
                    .join(PARENT)
                    .join(id)
                    .join("freezer.state"),
                "FROZEN",
                "THAWED",
            )),
        }
    }

    /// Whether the host's cgroups can freeze sandboxes.
    pub fn can_freeze(&self) -> bool {
        match self {
            Hierarchy::V2(_) => true,
            Hierarchy::V1 { freezer, .. } => freezer.is_some(),
        }
    }

    /// Whether sandbox `id` is frozen (`None`: it has no freezer, or no cgroup).
    pub fn freeze_state(&self, id: &str) -> Option<bool> {
        let (file, _, _) = self.freezer(id)?;
        match self {
            Hierarchy::V2(root) => {
                let events =
                    fs::read_to_string(root.join(PARENT).join(id).join("cgroup.events")).ok()?;
                events
                    .lines()
                    .find_map(|l| l.strip_prefix("frozen "))
                    .map(|v| v.trim() == "1")
            }
            // FREEZING (on its way) counts as frozen: a thaw is what it needs either way.
            Hierarchy::V1 { .. } => Some(fs::read_to_string(file).ok()?.trim() != "THAWED"),
        }
    }

    /// Freezes (`frozen`) or thaws sandbox `id` within [`FREEZE_TIMEOUT`], as a pause or a
    /// resume of a runtime does.
    pub fn hold(&self, id: &str, frozen: bool) -> Result<(), crate::RuntimeError> {
        let done = if frozen {
            self.freeze(id, FREEZE_TIMEOUT)
        } else {
            self.thaw(id, FREEZE_TIMEOUT)
        };
        done.map_err(|e| crate::RuntimeError::Io {
            what: if frozen {
                "freeze the sandbox"
            } else {
                "thaw the sandbox"
            },
            source: io::Error::other(e),
        })
    }

    /// Stops every process of sandbox `id` where it is (their memory stays), and waits up
    /// to `timeout` until all are stopped.
    pub fn freeze(&self, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(id, true, timeout)
    }

    /// Lets the processes of a frozen sandbox `id` run again.
    pub fn thaw(&self, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(id, false, timeout)
    }

    fn set_frozen(&self, id: &str, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let (file, on, off) = self.freezer(id).ok_or_else(|| CgroupError::Io {
            what: "freeze",
            path: PathBuf::from(id),
            source: io::Error::new(io::ErrorKind::Unsupported, "the host has no cgroup freezer"),
        })?;
        write(&file, if frozen { on } else { off })?;
        let deadline = Instant::now() + timeout;
        let mut pause = FREEZE_POLL;
        loop {
            let done = match self {
                Hierarchy::V1 { .. } => {
                    let state = fs::read_to_string(&file).map_err(io_err("read", &file))?;
                    state.trim() == if frozen { "FROZEN" } else { "THAWED" }
                }
                Hierarchy::V2(_) => self.freeze_state(id) == Some(frozen),
            };
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Io {
                    what: if frozen {
                        "finish freezing"
                    } else {
                        "finish thawing"
                    },
                    path: file,
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            if frozen && matches!(self, Hierarchy::V1 { .. }) {
                // v1 tries to freeze each task once, when the state is written. A traced task
                // that its tracer let run just before the tracer froze stops for ptrace after
                // that, not frozen, and nothing tries it again: the cgroup stays FREEZING
                // (seen with gVisor's ptrace platform, about one freeze in 150). Writing the
                // state again tries every task again.
                write(&file, on)?;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Removes Cove's parent cgroups when no sandbox is left in them.
    pub fn remove_parents_if_empty(&self) {
        let parents: Vec<PathBuf> = match self {
            Hierarchy::V2(root) => vec![root.join(PARENT)],
            Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
                unified,
            } => [
                Some(memory),
                Some(cpu),
                Some(cpuacct),
                Some(pids),
                freezer.as_ref(),
                unified.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|h| h.join(PARENT))
            .collect(),
        };
        for parent in parents {
            // Fails harmlessly while a sandbox's cgroup is still inside.
            let _ = fs::remove_dir(parent);
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_joins_only_through_the_files_meant_for_it() {
        // Nothing to join: nothing done (no fork).
        join(&[]).unwrap();
        // Any other file of a cgroup is refused before anything is written.
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        for other in ["cgroup.threads", "cgroup.events", "notify_on_release"] {
            let err = join(&[tasks.clone(), dir.path().join(other)]).unwrap_err();
            assert!(err.to_string().contains(other), "{err}");
        }
        assert!(!tasks.exists(), "written before the refusal");
        // A v1 `tasks` file is told the calling thread.
        fs::write(&tasks, "").unwrap();
        join(std::slice::from_ref(&tasks)).unwrap();
        assert_eq!(fs::read_to_string(&tasks).unwrap(), "0");
    }

    #[test]
    fn detects_v1_and_v2_layouts() {
        let v2 = tempfile::tempdir().unwrap();
        fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(
            Hierarchy::detect(v2.path()).unwrap(),
            Hierarchy::V2(v2.path().to_owned())
        );

        let v1 = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            fs::create_dir(v1.path().join(c)).unwrap();
            fs::write(v1.path().join(c).join("tasks"), "").unwrap();
        }
        let detected = Hierarchy::detect(v1.path()).unwrap();
        assert!(matches!(detected, Hierarchy::V1 { .. }));
        assert_eq!(detected.dirs("x").len(), 4);
        assert!(!detected.can_freeze());
        fs::create_dir(v1.path().join("freezer")).unwrap();
        fs::write(v1.path().join("freezer/tasks"), "").unwrap();
        let detected = Hierarchy::detect(v1.path()).unwrap();
        assert_eq!(detected.dirs("x").len(), 5);
        assert!(detected.can_freeze());

        let none = tempfile::tempdir().unwrap();
        assert!(Hierarchy::detect(none.path()).is_err());
    }
}
