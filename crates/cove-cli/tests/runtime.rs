//! The namespace runtime on its own: real sandboxes from the `base` template, driven through
//! their agents, checked for isolation from the host and from each other.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use cove_runtime::{
    AgentEndpoint, AgentSettings, NamespaceRuntime, Runtime, SandboxSpec, Started, template,
};
use cove_sdk::AgentClient;

struct Fixture {
    runtime: NamespaceRuntime,
    state: tempfile::TempDir,
    template: cove_runtime::Template,
}

impl Fixture {
    fn new() -> Self {
        Self::with_exe(Path::new(env!("CARGO_BIN_EXE_cove")))
    }

    /// A runtime using the `cove` at `exe` (and what is installed beside it).
    fn with_exe(exe: &Path) -> Self {
        let state = tempfile::Builder::new()
            .prefix("cove-runtime-test-")
            .tempdir()
            .unwrap();
        let template = template::base(&state.path().join("templates/base")).unwrap();
        Self {
            runtime: NamespaceRuntime::new(
                exe,
                state.path().join("sandboxes"),
                cove_runtime::egress::EgressConfig::default(),
            ),
            state,
            template,
        }
    }

    fn start(&self, id: &str) -> (Started, AgentClient) {
        self.start_with(id, false)
    }

    /// Starts sandbox `id`, with internet access when `network`.
    fn start_with(&self, id: &str, network: bool) -> (Started, AgentClient) {
        self.start_spec(&self.spec(id, network))
    }

    /// The spec of sandbox `id`, with internet access when `network`.
    fn spec(&self, id: &str, network: bool) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            template: self.template.clone(),
            hostname: id.to_owned(),
            agent: AgentSettings {
                access_token: String::new(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: Default::default(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            network,
            limits: cove_runtime::Limits {
                memory_bytes: 512 << 20,
                cpus: 1,
                pids: 256,
            },
            volumes: Vec::new(),
            runtime: None,
        }
    }

    fn start_spec(&self, spec: &SandboxSpec) -> (Started, AgentClient) {
        let id = &spec.id;
        let started = std::time::Instant::now();
        let sandbox = self.runtime.create(spec).unwrap();
        eprintln!("sandbox {id} up in {:?}", started.elapsed());
        let AgentEndpoint::Unix(socket) = &sandbox.agent else {
            panic!("the namespace backend's agent listens on a host-only socket");
        };
        let client = AgentClient::unix(socket).unwrap();
        (sandbox, client)
    }

    fn stop(&self, id: &str, sandbox: &Started) {
        self.runtime.kill(&sandbox.handle).unwrap();
        assert!(matches!(
            self.runtime.liveness(&sandbox.handle).unwrap(),
            cove_runtime::Liveness::Ended(_)
        ));
        self.runtime.remove(id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_larger_than_a_pipe_reaches_pid1_whole() {
    // PID 1's spec is written into its stdin before it starts, as much as the pipe holds
    // (64 KiB); the rest follows once it runs. Three values of 100 KiB each (an exec takes
    // none longer than 128 KiB) make a spec of more than 300 KiB.
    let fixture = Fixture::new();
    let mut spec = fixture.spec("large", false);
    for n in 0..3 {
        let value: String = std::iter::repeat_n(char::from(b'a' + n), 100 << 10).collect();
        spec.agent.env.insert(format!("LARGE_{n}"), value);
    }
    let (sandbox, client) = fixture.start_spec(&spec);
    let out = client
        .commands()
        .run("for n in 0 1 2; do printenv LARGE_$n | tr -d '\\n' | wc -c; done; printenv LARGE_2 | cut -c1-3")
        .await
        .unwrap();
    assert_eq!(out.stdout, "102400\n102400\n102400\nccc\n");
    fixture.stop("large", &sandbox);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_runs_commands_as_its_own_users() {
    // A strict umask on the host side must not reach the sandbox.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let fixture = Fixture::new();
    let (sandbox, client) = fixture.start("alpha");
    // The root is assembled on mount points of the setup stage's own: the host's directory
    // of the sandbox holds none of them (only this sandbox's plain writable layer, `disk`).
    let dir = fixture.state.path().join("sandboxes/alpha");
    for point in ["rootfs", "mapped", "lower"] {
        assert!(!dir.join(point).exists(), "{point} made on the host");
    }
    assert!(dir.join("disk/upper/0").is_dir());
    // Setup stages are forked by a spawner, a child of this process, not exec'd each time.
    assert!(
        !spawners_of(std::process::id()).is_empty(),
        "no setup spawner"
    );
    let out = client
        .commands()
        .run("id; hostname; echo $HOME; ls /; cat /proc/1/cmdline | tr '\\0' ' '")
        .await
        .unwrap();
    eprintln!("{}", out.stdout);
    assert!(
        out.stdout.starts_with("uid=1000(user) gid=1000(user)"),
        "{}",
        out.stdout
    );
    let root = client.clone().as_user("root");
    assert_eq!(root.commands().run("id -u").await.unwrap().stdout, "0\n");
    assert_eq!(
        client.commands().run("sudo -n id -u").await.unwrap().stdout,
        "0\n"
    );
    // Host-root-owned template files look root-owned inside.
    assert_eq!(
        client
            .commands()
            .run("stat -c %U /usr/bin/sudo /etc/passwd")
            .await
            .unwrap()
            .stdout,
        "root\nroot\n"
    );
    // Its network namespace's /proc/net is its root's (the owner is fixed as the namespace
    // is made: before the ids were mapped, it would be nobody's).
    assert_eq!(
        root.commands()
            .run("stat -c '%u %g' /proc/self/net/dev /proc/self/net")
            .await
            .unwrap()
            .stdout,
        "0 0\n0 0\n"
    );
    // The usual modes for what the sandbox makes, whatever the server's umask.
    assert_eq!(
        client
            .commands()
            .run("umask; touch ~/f; mkdir ~/d; stat -c %a ~/f ~/d")
            .await
            .unwrap()
            .stdout,
        "0022\n644\n755\n"
    );
    client.files().write("hello.txt", "hi").await.unwrap();
    assert_eq!(
        client
            .commands()
            .run("cat ~/hello.txt")
            .await
            .unwrap()
            .stdout,
        "hi"
    );
    // The network stage under the same umask: its helper runs as the sandbox's uid and
    // must still reach the tun device of the root it is given.
    let (online, online_client) = fixture.start_with("alpha-online", true);
    assert_eq!(
        online_client
            .commands()
            .run("echo up")
            .await
            .unwrap()
            .stdout,
        "up\n"
    );
    fixture.stop("alpha-online", &online);
    fixture.stop("alpha", &sandbox);
    fixture.runtime.shutdown();
    assert!(!Path::new(&fixture.state.path().join("sandboxes/alpha")).exists());
    let _ = Duration::from_secs(1);
}

/// Directories removed when dropped (if the runtime did not), also when a test fails.
struct Removed(Vec<std::path::PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The setup spawners whose parent is `parent`.
fn spawners_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        // The parent pid is the second field after the command's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if ppid == Some(parent) && args.contains(&b"--spawner".as_slice()) {
            found.push(pid);
        }
    }
    found
}

/// The cgroup directories sandbox `id` may have on this host.
fn cgroup_dirs(id: &str) -> Vec<std::path::PathBuf> {
    ["memory", "cpu", "cpuacct", "pids", "freezer", "unified", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join("cove").join(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kills_cgroups_go_after_it_and_a_stopped_servers_at_the_next_start() {
    let fixture = Fixture::new();
    // With internet access, the kill is answered before the network helper's exit is
    // through; its cgroups go after, and a shutdown waits for that.
    let id = format!("teardown-{}", std::process::id());
    let (sandbox, client) = fixture.start_with(&id, true);
    assert_eq!(
        client.commands().run("echo up").await.unwrap().stdout,
        "up\n"
    );
    assert!(cgroup_dirs(&id).iter().any(|d| d.exists()));
    fixture.stop(&id, &sandbox);
    fixture.runtime.shutdown();
    let left: Vec<_> = cgroup_dirs(&id)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "left after the shutdown: {left:?}");

    // A removal a server began and did not finish (it stopped first) is done when the next
    // one starts on the same state.
    let left_over = format!("teardown-left-{}", std::process::id());
    let made: Vec<_> = cgroup_dirs(&left_over)[..4]
        .iter()
        .filter(|d| d.ancestors().nth(2).is_some_and(Path::exists))
        .cloned()
        .collect();
    assert!(!made.is_empty(), "this host has no cgroup v1 hierarchies");
    let made = Removed(made);
    for dir in &made.0 {
        std::fs::create_dir_all(dir).unwrap();
    }
    let markers = fixture.state.path().join("sandbox-teardowns");
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::write(markers.join(&left_over), b"").unwrap();
    let again = NamespaceRuntime::new(
        env!("CARGO_BIN_EXE_cove"),
        fixture.state.path().join("sandboxes"),
        cove_runtime::egress::EgressConfig::default(),
    );
    let left: Vec<_> = made.0.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "left after the next start: {left:?}");
    assert!(!markers.join(&left_over).exists());
    again.shutdown();
}

/// The pids listed in the cgroup directory `dir` (`cgroup.procs`), sorted.
fn pids_in(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Sandboxes of one runtime, killed and the runtime ended when dropped: a test that fails
/// halfway leaves no sandbox running and no cgroup behind.
struct Sandboxes<'a> {
    fixture: &'a Fixture,
    started: Vec<(String, Started)>,
}

impl Drop for Sandboxes<'_> {
    fn drop(&mut self) {
        for (id, sandbox) in &self.started {
            let _ = self.fixture.runtime.kill(&sandbox.handle);
            let _ = self.fixture.runtime.remove(id);
        }
        self.fixture.runtime.shutdown();
    }
}

impl<'a> Sandboxes<'a> {
    fn of(fixture: &'a Fixture) -> Self {
        Self {
            fixture,
            started: Vec::new(),
        }
    }

    /// Starts sandbox `id` (with internet access when `network`); its PID 1's host pid.
    fn start_with(&mut self, id: &str, network: bool) -> (u32, AgentClient) {
        let (sandbox, client) = self.fixture.start_with(id, network);
        let pid1 = sandbox.handle.state["pid"]
            .as_u64()
            .unwrap()
            .try_into()
            .unwrap();
        self.started.push((id.to_owned(), sandbox));
        (pid1, client)
    }

    /// Starts sandbox `id`; the host's path of the binary its PID 1 runs, once a command ran.
    async fn start_pid1_binary(&mut self, id: &str) -> std::path::PathBuf {
        let (pid1, client) = self.start_with(id, false);
        let out = client.commands().run("echo up").await.unwrap();
        assert_eq!(out.stdout, "up\n");
        std::fs::read_link(format!("/proc/{pid1}/exe")).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_of_a_sandbox_is_in_each_of_its_cgroups() {
    // The stages join the sandbox's cgroups themselves (v1 through `tasks`, the network
    // helper's v2 egress cgroup through a child started in it): nothing of the sandbox may
    // run outside any of them, or its limits, freezing, kill and egress filter miss it.
    let fixture = Fixture::new();
    let id = format!("joined-{}", std::process::id());
    let mut stop = Sandboxes::of(&fixture);
    let (pid1, client) = stop.start_with(&id, true);
    let out = client
        .commands()
        .run("sleep 60 >/dev/null 2>&1 & sleep 60 >/dev/null 2>&1 & echo started")
        .await
        .unwrap();
    assert_eq!(out.stdout, "started\n");
    let v1: Vec<_> = cgroup_dirs(&id)[..5]
        .iter()
        .filter(|d| d.ancestors().nth(2).is_some_and(Path::exists))
        .cloned()
        .collect();
    assert!(
        v1.len() >= 4,
        "this host has no cgroup v1 hierarchies: {v1:?}"
    );
    let memory = pids_in(&v1[0]);
    // PID 1 (the agent), the two sleeps and the network helper, at least.
    assert!(memory.len() >= 4, "{memory:?}");
    assert!(memory.contains(&pid1), "PID 1 {pid1} not in {memory:?}");
    for dir in &v1[1..] {
        assert_eq!(
            pids_in(dir),
            memory,
            "{} differs from memory",
            dir.display()
        );
    }
    // The helper, and only it, in the egress cgroup, whose filter it passes through.
    let egress = Path::new("/sys/fs/cgroup/unified/cove")
        .join(&id)
        .join("egress");
    if egress.exists() {
        let helpers = pids_in(&egress);
        assert_eq!(helpers.len(), 1, "{helpers:?}");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", helpers[0])).unwrap();
        assert_eq!(comm.trim(), "slirp4netns");
        assert!(
            memory.contains(&helpers[0]),
            "the helper is outside the limits"
        );
    }
    // No stage is left over in them (they end once the sandbox is up).
    for pid in &memory {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !cmdline.windows(14).any(|w| w == b"__sandbox-init") || *pid == pid1,
            "a stage {pid} is still in the sandbox's cgroups"
        );
    }
    drop(stop);
    let left: Vec<_> = cgroup_dirs(&id)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "left after the kill: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pid1_runs_the_init_binary_checked_at_the_start_or_else_cove() {
    // `cove-init` beside `cove` is PID 1 (an exec far smaller than all of `cove`); without
    // it, `cove` itself; and never a `cove-init` other than the one the runtime checked when
    // it started: one installed anew since (an upgrade before the restart) is passed over.
    // The installed binaries: hard links in a directory of the build's own filesystem.
    let built = Path::new(env!("CARGO_BIN_EXE_cove"));
    let dir = tempfile::Builder::new()
        .prefix("cove-install-")
        .tempdir_in(built.parent().unwrap())
        .unwrap();
    let cove = dir.path().join("cove");
    let init = dir.path().join("cove-init");
    std::fs::hard_link(built, &cove).unwrap();
    let tag = std::process::id();

    let alone = Fixture::with_exe(&cove);
    let mut sandboxes = Sandboxes::of(&alone);
    let ran = sandboxes.start_pid1_binary(&format!("alone-{tag}")).await;
    assert_eq!(ran, cove);
    drop(sandboxes);

    std::fs::hard_link(env!("CARGO_BIN_EXE_cove-init"), &init).unwrap();
    let beside = Fixture::with_exe(&cove);
    let mut sandboxes = Sandboxes::of(&beside);
    let ran = sandboxes.start_pid1_binary(&format!("beside-{tag}")).await;
    assert_eq!(ran, init);

    let new = dir.path().join("cove-init.new");
    std::fs::copy(env!("CARGO_BIN_EXE_cove-init"), &new).unwrap();
    std::fs::rename(&new, &init).unwrap();
    let id = format!("upgraded-{tag}");
    let ran = sandboxes.start_pid1_binary(&id).await;
    assert_eq!(ran, cove, "a cove-init the runtime never checked ran");
    let log = std::fs::read_to_string(
        beside
            .state
            .path()
            .join("sandboxes")
            .join(&id)
            .join("sandbox.log"),
    )
    .unwrap();
    assert!(log.contains("not the file the server checked"), "{log}");
}
