//! The gVisor runtime on its own: real runsc, real agent, sandboxes from the `base` template
//! with disk quotas. Commands run through the agent, a pause with memory checkpoints the
//! sandbox and a resume continues the same processes, a kill leaves nothing behind, and the
//! host refuses a symlink the sandbox puts where its agent's socket or its quiesce marker
//! was.
//!
//! Skipped (with a message) where runsc is not installed; `scripts/setup` installs it.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cove_runtime::{
    AgentEndpoint, AgentSettings, GvisorRuntime, Handle, PauseMode, Recovered, Runtime,
    SandboxSpec, Started, Template, endpoint::ConnectPath, template,
};
use cove_sdk::{AgentClient, Command};
use cove_test_util::wait_until;

const RUNSC: &str = "/usr/bin/runsc";

struct Fixture {
    runtime: GvisorRuntime,
    state: tempfile::TempDir,
    template: Template,
    /// Sandboxes started, taken down when the fixture goes (a failed test's too).
    started: std::sync::Mutex<Vec<String>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            if let Err(err) = self.runtime.kill_leftovers(&id) {
                eprintln!("cannot kill what is left of {id}: {err}");
            }
            let _ = self.runtime.remove(&id);
        }
        self.runtime.shutdown();
    }
}

impl Fixture {
    /// A fixture whose sandboxes may have internet access (the namespace backend's helper,
    /// egress filter and uid ranges, as `cove serve` shares them).
    fn with_internet() -> Option<Self> {
        let mut fixture = Self::new()?;
        let namespace = cove_runtime::NamespaceRuntime::new(
            env!("CARGO_BIN_EXE_cove"),
            fixture.state.path().join("sandboxes"),
            cove_runtime::egress::EgressConfig::default(),
        );
        fixture.runtime = fixture.runtime.clone().with_internet(namespace.internet());
        Some(fixture)
    }

    /// A fixture, or `None` (after saying why) when runsc is missing.
    fn new() -> Option<Self> {
        if !Path::new(RUNSC).exists() {
            eprintln!("SKIPPED: {RUNSC} is not installed (Debian package runsc)");
            return None;
        }
        let state = tempfile::Builder::new()
            .prefix("cove-gvisor-test-")
            .tempdir()
            .unwrap();
        let template = template::base(&state.path().join("templates/base")).unwrap();
        let runtime = GvisorRuntime::new(env!("CARGO_BIN_EXE_cove"), state.path().join("gvisor"))
            .with_disk_quota(state.path().join("disk-pool"), 256 << 20)
            .unwrap();
        Some(Self {
            runtime,
            state,
            template,
            started: Default::default(),
        })
    }

    fn spec(&self, id: &str) -> SandboxSpec {
        self.spec_with(id, "gvisor-token", &self.template)
    }

    fn spec_with(&self, id: &str, token: &str, template: &Template) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            template: template.clone(),
            hostname: "sandbox".to_owned(),
            agent: AgentSettings {
                access_token: token.into(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: [("E2B_SANDBOX_ID".to_owned(), id.to_owned())].into(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            network: false,
            limits: cove_runtime::Limits {
                memory_bytes: 512 << 20,
                cpus: 1,
                pids: 256,
            },
            volumes: Vec::new(),
            runtime: None,
        }
    }

    fn start(&self, id: &str) -> Started {
        self.started.lock().unwrap().push(id.to_owned());
        let began = Instant::now();
        let started = self.runtime.create(&self.spec(id)).unwrap();
        eprintln!(
            "TIMING create -> agent listening ({id}): {:?}",
            began.elapsed()
        );
        started
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.path().join("gvisor/sandboxes").join(id)
    }

    fn end(&self, id: &str, handle: &Handle) {
        self.runtime.kill(handle).unwrap();
        self.runtime.remove(id).unwrap();
    }
}

/// A client of the sandbox's agent, through the pinned socket (kept open with it).
struct Agent {
    client: AgentClient,
    _pinned: ConnectPath,
}

fn agent(started: &Started) -> Agent {
    agent_with(started, "gvisor-token")
}

fn agent_with(started: &Started, token: &str) -> Agent {
    assert!(matches!(started.agent, AgentEndpoint::UnixInSandbox(_)));
    let pinned = started.agent.resolve().unwrap();
    let client = AgentClient::unix(pinned.path())
        .unwrap()
        .with_access_token(token)
        .unwrap();
    Agent {
        client,
        _pinned: pinned,
    }
}

async fn sh(agent: &AgentClient, script: &str) -> String {
    agent.commands().run(script).await.unwrap().stdout
}

/// Processes whose command line names `needle` (runsc's sandbox and gofer name their
/// container id and bundle directory).
fn processes_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// Host mounts at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&dir)))
        .map(str::to_owned)
        .collect()
}

/// Loop devices whose backing file lies under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|backing| backing.trim().starts_with(dir.to_str().unwrap()))
        .collect()
}

/// The container's cgroup directories, in every hierarchy.
fn cgroups_of(container: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join("cove").join(container))
        .filter(|d| d.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_sandbox_runs_commands_through_its_agent() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-commands";
    let started = fixture.start(id);
    let agent = agent(&started);
    let began = Instant::now();
    let out = sh(
        &agent.client,
        "python3 -c \"import os; print('hello from', os.uname().release, os.getuid())\"",
    )
    .await;
    eprintln!("TIMING first command: {:?}", began.elapsed());
    // gVisor's own kernel answers, not the host's.
    assert_eq!(out, "hello from 4.4.0 1000\n");
    let root = agent.client.clone().as_user("root");
    assert_eq!(sh(&root, "id -u").await, "0\n");
    agent.client.files().write("hello.txt", "hi").await.unwrap();
    assert_eq!(sh(&agent.client, "cat /home/user/hello.txt").await, "hi");
    // Files go to the sandbox's disk, the writable layer on its 256 MiB quota image, which
    // is mounted in the container's own mount namespace and not in the host's.
    assert!(!fixture.dir(id).join("disk/upper/0/home").exists());
    let full = sh(
        &agent.client,
        "dd if=/dev/zero of=/home/user/big bs=1M count=300 2>&1; rm -f /home/user/big",
    )
    .await;
    assert!(full.contains("No space left on device"), "{full}");
    // Without the token, the agent refuses.
    let pinned = started.agent.resolve().unwrap();
    let stranger = AgentClient::unix(pinned.path()).unwrap();
    assert!(stranger.commands().run("true").await.is_err());
    assert!(fixture.runtime.usage(&started.handle).unwrap().memory_bytes > 0);
    // The agent's log is the sandbox's.
    let log = fixture.runtime.log(id).unwrap();
    assert!(log.contains("agent listening (quiescible)"), "{log}");
    // A restarted server finds it running, at the same endpoint.
    match fixture.runtime.recover(&started.handle).unwrap() {
        Some(Recovered::Running(found)) => assert_eq!(found, started),
        other => panic!("{other:?}"),
    }
    // New limits reach the container's cgroup (cgroup v1, as on this host).
    let limits = cove_runtime::Limits {
        memory_bytes: 256 << 20,
        cpus: 1,
        pids: 100,
    };
    fixture.runtime.set_limits(&started.handle, limits).unwrap();
    let container = fixture.runtime.container_id(id);
    let memory = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/cove/{container}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(memory.trim(), (256u64 << 20).to_string());
    assert_eq!(sh(&agent.client, "echo still here").await, "still here\n");
    fixture.end(id, &started.handle);
    fixture.runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_pause_checkpoints_and_a_resume_continues_the_same_process() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-pause";
    let started = fixture.start(id);
    let agent = agent(&started);
    // A counter that lives only in the process's memory, with a token drawn at its start:
    // after the resume the same process (same pid, same token) must go on counting.
    let counter = spawn_counter(&agent.client).await;
    let before = counted_past(&agent.client, 3).await;

    let began = Instant::now();
    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Memory)
        .unwrap();
    eprintln!(
        "TIMING pause (quiesce + checkpoint + delete): {:?}",
        began.elapsed()
    );
    assert_eq!(paused.state["paused"], "memory");
    let image = fixture.dir(id).join("checkpoint/checkpoint.img");
    eprintln!(
        "checkpoint image: {} bytes",
        std::fs::metadata(&image).unwrap().len()
    );
    // Nothing of the sandbox runs while it is paused.
    let container = fixture.runtime.container_id(id);
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    assert!(fixture.runtime.pause(&paused, PauseMode::Memory).is_err());
    assert!(matches!(
        fixture.runtime.liveness(&paused).unwrap(),
        cove_runtime::Liveness::Running
    ));

    let began = Instant::now();
    let resumed = fixture.runtime.resume(&paused, &fixture.spec(id)).unwrap();
    eprintln!(
        "TIMING resume (restore + agent listening): {:?}",
        began.elapsed()
    );
    let agent = self::agent(&resumed);
    let after = counted_past(&agent.client, before.2).await;
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    // The agent still knows the process it started.
    assert!(
        agent
            .client
            .commands()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.pid == counter.pid())
    );
    assert!(!image.exists(), "the checkpoint is removed once restored");
    fixture.end(id, &resumed.handle);
}

/// A process that counts in its memory, with a token drawn at its start, writing `pid token
/// count` to `/tmp/count` (the sentry's tmpfs, kept by a checkpoint) every 50 ms.
const COUNTER: &str = "exec python3 -c \"\nimport os, time\ntoken = os.urandom(8).hex()\ni = 0\nwhile True:\n    i += 1\n    open('/tmp/count.new', 'w').write(f'{os.getpid()} {token} {i}')\n    os.replace('/tmp/count.new', '/tmp/count')\n    time.sleep(0.05)\n\"";

/// Starts a [`COUNTER`] in the sandbox.
async fn spawn_counter(agent: &AgentClient) -> cove_sdk::CommandHandle {
    agent
        .commands()
        .spawn(Command::shell(COUNTER))
        .await
        .unwrap()
}

/// What the [`COUNTER`] wrote last: pid, token, count.
async fn count(agent: &AgentClient) -> Option<(String, String, u64)> {
    let raw = sh(agent, "cat /tmp/count 2>/dev/null || true").await;
    let parts: Vec<String> = raw.split_whitespace().map(str::to_owned).collect();
    (parts.len() == 3).then(|| {
        (
            parts[0].clone(),
            parts[1].clone(),
            parts[2].parse::<u64>().unwrap(),
        )
    })
}

/// Waits until the counter in `agent`'s sandbox has counted past `past`.
async fn counted_past(agent: &AgentClient, past: u64) -> (String, String, u64) {
    wait_until("the counter to count on", Duration::from_secs(60), || {
        let agent = agent.clone();
        async move { count(&agent).await.filter(|(_, _, n)| *n > past) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_snapshot_starts_sandboxes_with_its_processes_running_under_their_own_identity() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let source_id = "gv-snap-source";
    let source = fixture.start(source_id);
    let agent = agent(&source);
    spawn_counter(&agent.client).await;
    agent
        .client
        .files()
        .write("before.txt", "written before the snapshot")
        .await
        .unwrap();
    let before = counted_past(&agent.client, 3).await;

    let snapshots = fixture.state.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let into = snapshots.join("one");
    let began = Instant::now();
    let snapshot = fixture
        .runtime
        .snapshot_memory(&source.handle, &fixture.template, &into)
        .unwrap();
    eprintln!(
        "TIMING memory snapshot of a running sandbox: {:?}",
        began.elapsed()
    );
    let image = snapshot.memory.clone().unwrap();
    assert!(image.join("checkpoint.img").exists());
    assert!(snapshot.layers.len() > fixture.template.layers.len());
    // The source runs on: the same process counts on, its agent answers on a new connection.
    let source_agent = self::agent(&source);
    let after = counted_past(&source_agent.client, before.2).await;
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));

    // Two sandboxes from it, each with its own id and token.
    let mut forks = Vec::new();
    for (id, token) in [("gv-snap-a", "token-a"), ("gv-snap-b", "token-b")] {
        fixture.started.lock().unwrap().push(id.to_owned());
        let began = Instant::now();
        let started = fixture
            .runtime
            .create(&fixture.spec_with(id, token, &snapshot))
            .unwrap();
        eprintln!(
            "TIMING create from a memory snapshot -> agent listening: {:?}",
            began.elapsed()
        );
        let agent = agent_with(&started, token);
        // The counter of the snapshot runs in it: same pid and token, counting on.
        let there = counted_past(&agent.client, before.2).await;
        assert_eq!((&there.0, &there.1), (&before.0, &before.1));
        assert_eq!(
            sh(&agent.client, "cat before.txt").await,
            "written before the snapshot"
        );
        // Its own identity: its id in new processes, its token; the source's is refused.
        assert_eq!(
            sh(&agent.client, "printenv E2B_SANDBOX_ID").await,
            format!("{id}\n")
        );
        let with_source_token = agent_with(&started, "gvisor-token");
        assert!(
            with_source_token
                .client
                .commands()
                .run("true")
                .await
                .is_err()
        );
        forks.push((id, started, agent));
    }
    // They diverge: what one writes, the others do not see.
    let (a, b) = (&forks[0].2.client, &forks[1].2.client);
    sh(a, "echo a > /home/user/mine.txt").await;
    assert!(
        sh(b, "cat /home/user/mine.txt 2>&1 || true")
            .await
            .contains("No such file")
    );
    assert!(
        sh(&source_agent.client, "cat /home/user/mine.txt 2>&1 || true")
            .await
            .contains("No such file")
    );

    for (id, started, _) in &forks {
        fixture.end(id, &started.handle);
    }

    // A sandbox paused with memory gives its checkpoint as it is.
    let at_pause = counted_past(&source_agent.client, after.2).await;
    drop(source_agent);
    let paused = fixture
        .runtime
        .pause(&source.handle, PauseMode::Memory)
        .unwrap();
    let from_paused = fixture
        .runtime
        .snapshot_memory(&paused, &fixture.template, &snapshots.join("two"))
        .unwrap();
    assert!(
        from_paused
            .memory
            .as_ref()
            .unwrap()
            .join("checkpoint.img")
            .exists()
    );
    let id = "gv-snap-c";
    fixture.started.lock().unwrap().push(id.to_owned());
    let copy = fixture
        .runtime
        .create(&fixture.spec_with(id, "token-c", &from_paused))
        .unwrap();
    let there = counted_past(&agent_with(&copy, "token-c").client, at_pause.2).await;
    assert_eq!((&there.0, &there.1), (&before.0, &before.1));
    fixture.end(id, &copy.handle);
    let source = fixture
        .runtime
        .resume(&paused, &fixture.spec(source_id))
        .unwrap();
    fixture.end(source_id, &source.handle);
    assert_eq!(
        loop_devices_under(fixture.state.path()),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_leaves_no_process_mount_loop_device_or_cgroup() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-kill";
    let started = fixture.start(id);
    let agent = agent(&started);
    // Something of the sandbox's own running too.
    agent
        .client
        .commands()
        .spawn(Command::shell("sleep 1000"))
        .await
        .unwrap();
    let container = fixture.runtime.container_id(id);
    let dir = fixture.dir(id);
    // Everything checked below is there first, so the checks can fail.
    // The sentry names the container id; the gofer, the bundle directory.
    assert_eq!(processes_naming(&container).len(), 1);
    assert!(processes_naming(dir.to_str().unwrap()).len() >= 2);
    // Its mounts are in the container's own mount namespace, never in the host's (where
    // copies made by other sandboxes' setup would keep its disk busy).
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(loop_devices_under(fixture.state.path()).len(), 1);
    assert!(!cgroups_of(&container).is_empty());

    fixture.runtime.kill(&started.handle).unwrap();
    assert!(matches!(
        fixture.runtime.liveness(&started.handle).unwrap(),
        cove_runtime::Liveness::Ended(_)
    ));
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    assert_eq!(
        processes_naming(dir.to_str().unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(
        loop_devices_under(fixture.state.path()),
        Vec::<String>::new()
    );
    assert_eq!(cgroups_of(&container), Vec::<PathBuf>::new());
    fixture.runtime.remove(id).unwrap();
    assert!(!dir.exists());
    fixture.runtime.shutdown();
}

/// Has root in the sandbox put a symlink to the host's `target` at `path` (inside) whenever
/// nothing is there, over and over, and returns once it runs.
async fn plant_links_forever(agent: &AgentClient, path: &str, target: &Path) {
    let root = agent.clone().as_user("root");
    root.commands()
        .spawn(Command::shell(format!(
            "exec python3 -c \"\nimport os\np = '{path}'\nopen('/tmp/attacker-ready', 'w').close()\nwhile True:\n    try:\n        os.symlink('{}', p)\n    except OSError:\n        pass\n\"",
            target.display()
        )))
        .await
        .unwrap();
    wait_until("the attacker to run", Duration::from_secs(60), || {
        let agent = agent.clone();
        async move {
            (sh(&agent, "test -e /tmp/attacker-ready && echo yes || true").await == "yes\n")
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_put_in_place_of_the_agent_socket_is_refused() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-attack";
    let started = fixture.start(id);
    let agent = agent(&started);
    // Another socket of the host, which the sandbox would like the server to talk to.
    let decoy_path = fixture.state.path().join("decoy.sock");
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).unwrap();
    decoy.set_nonblocking(true).unwrap();
    // Root in the sandbox waits for the agent's socket to go (gVisor does not let it
    // unlink or rename over a socket bound on the host; the host removes it before a
    // checkpoint) and puts a symlink to the decoy in its place, over and over.
    plant_links_forever(&agent.client, "/run/cove/agent.sock", &decoy_path).await;
    let socket = fixture.dir(id).join("agent/agent.sock");
    let mut handle = started.handle.clone();
    let mut refused = false;
    // The link lands between the host's removal of the socket and the checkpoint, or not
    // (a race the sandbox usually wins): pause until it did, a few times at most.
    for cycle in 1..=5 {
        let paused = fixture.runtime.pause(&handle, PauseMode::Memory).unwrap();
        let planted = std::fs::symlink_metadata(&socket)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        eprintln!("cycle {cycle}: the sandbox planted its link: {planted}");
        if planted {
            // The host's connect refuses it: no symlink is followed to the decoy.
            let refusal = AgentEndpoint::UnixInSandbox(socket.clone())
                .resolve()
                .unwrap_err();
            assert!(
                refusal.to_string().contains("not a socket but a symlink"),
                "{refusal}"
            );
            refused = true;
        }
        // The resume removes whatever is at the path and the agent binds it again, unless
        // the sandbox plants its link first: then the resume fails, refusing it.
        match fixture.runtime.resume(&paused, &fixture.spec(id)) {
            Ok(resumed) => {
                let agent = self::agent(&resumed);
                assert_eq!(sh(&agent.client, "echo ok").await, "ok\n");
                handle = resumed.handle;
            }
            Err(err) => {
                let err = format!("{err}");
                assert!(err.contains("not a socket but a symlink"), "{err}");
                refused = true;
                handle = paused;
                break;
            }
        }
        if refused {
            break;
        }
    }
    assert!(refused, "the sandbox never planted its link in five pauses");
    fixture.end(id, &handle);
    // Never a connection to the decoy, and the decoy is still there after the removal.
    assert_eq!(
        decoy.accept().map(drop).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert!(decoy_path.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_put_in_place_of_the_quiesce_marker_is_never_followed() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-marker";
    let started = fixture.start(id);
    let agent = agent(&started);
    // A file of the host's that would make the pause fail with its text, were the host to
    // read the marker through a link (and would be gone, were it removed through one).
    let bait = fixture.state.path().join("bait.txt");
    let said = "refused: the host followed the sandbox's link\n";
    std::fs::write(&bait, said).unwrap();
    // Root in the sandbox puts a link to it wherever the marker is missing, over and over:
    // after the host removes the old marker, before the agent renames its own into place,
    // and after the host removes that one again.
    plant_links_forever(&agent.client, "/run/cove/quiesced", &bait).await;
    let marker = fixture.dir(id).join("agent/quiesced");
    let mut handle = started.handle.clone();
    let mut planted = 0;
    for cycle in 1..=3 {
        // A link is never an acknowledgement, and the agent's own marker replaces it.
        let paused = fixture.runtime.pause(&handle, PauseMode::Memory).unwrap();
        let linked = std::fs::symlink_metadata(&marker).is_ok_and(|m| m.file_type().is_symlink());
        eprintln!("cycle {cycle}: a link sat in the marker's place: {linked}");
        planted += u32::from(linked);
        let resumed = fixture.runtime.resume(&paused, &fixture.spec(id)).unwrap();
        assert_eq!(sh(&self::agent(&resumed).client, "echo ok").await, "ok\n");
        handle = resumed.handle;
    }
    fixture.end(id, &handle);
    eprintln!("links left in the marker's place at a checkpoint: {planted} of 3");
    // The next pause removed each link, never what it pointed at.
    assert_eq!(std::fs::read_to_string(&bait).unwrap(), said);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filesystem_pause_keeps_the_files_and_a_resume_starts_again_on_them() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-files";
    let started = fixture.start(id);
    let agent = agent(&started);
    sh(&agent.client, "echo kept > /home/user/kept.txt").await;
    let sleeper = agent
        .client
        .commands()
        .spawn(Command::shell("sleep 1000"))
        .await
        .unwrap();
    let container = fixture.runtime.container_id(id);
    let dir = fixture.dir(id);

    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Filesystem)
        .unwrap();
    assert_eq!(paused.state["paused"], "filesystem");
    // Nothing runs and nothing is mounted; the files stay.
    assert_eq!(
        processes_naming(dir.to_str().unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(
        loop_devices_under(fixture.state.path()),
        Vec::<String>::new()
    );
    assert_eq!(cgroups_of(&container), Vec::<PathBuf>::new());
    assert!(dir.join("disk.img").exists());
    assert!(matches!(
        fixture.runtime.liveness(&paused).unwrap(),
        cove_runtime::Liveness::Running
    ));
    assert!(fixture.runtime.pause(&paused, PauseMode::Memory).is_err());

    let began = Instant::now();
    let resumed = fixture.runtime.resume(&paused, &fixture.spec(id)).unwrap();
    eprintln!("TIMING resume from files: {:?}", began.elapsed());
    let agent = self::agent(&resumed);
    assert_eq!(sh(&agent.client, "cat /home/user/kept.txt").await, "kept\n");
    // A new start: the old processes are gone.
    let listed = agent.client.commands().list().await.unwrap();
    assert!(listed.iter().all(|p| p.pid != sleeper.pid()), "{listed:?}");
    fixture.end(id, &resumed.handle);
}

/// A sandbox with internet access: its link (holder and relay) lives in a cgroup of its own
/// while its container runs; a pause with memory freezes it in place (this runsc cannot save
/// its network stack), a server restarted meanwhile finds it paused, a resume thaws it with
/// its processes, and a kill takes the link with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_with_internet_access_freezes_to_pause_and_its_link_goes_with_it() {
    let Some(fixture) = Fixture::with_internet() else {
        return;
    };
    let id = "gv-link";
    fixture.started.lock().unwrap().push(id.to_owned());
    let spec = SandboxSpec {
        network: true,
        ..fixture.spec(id)
    };
    let started = fixture.runtime.create(&spec).unwrap();
    let link = PathBuf::from(format!("/sys/fs/cgroup/memory/cove/{id}"));
    let link_procs = || {
        std::fs::read_to_string(link.join("cgroup.procs"))
            .map(|procs| procs.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(link_procs(), 2, "the holder and the relay");
    let agent = agent(&started);
    let routes = sh(&agent.client, "cat /proc/net/route").await;
    assert!(routes.contains("tap0"), "{routes}");
    spawn_counter(&agent.client).await;
    let before = counted_past(&agent.client, 3).await;

    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Memory)
        .unwrap();
    assert_eq!(paused.state["paused"], "memory");
    assert_eq!(paused.state["frozen"], true);
    assert!(!fixture.dir(id).join("checkpoint").exists());
    // A files-only snapshot works on it; one with memory says why not.
    let into = fixture.state.path().join("snapshot");
    let refused = fixture
        .runtime
        .snapshot_memory(&paused, &fixture.template, &into)
        .unwrap_err();
    assert!(refused.to_string().contains("internet access"), "{refused}");
    // A restarted server (a new runtime on the same state) finds it paused with memory.
    let again = GvisorRuntime::new(
        env!("CARGO_BIN_EXE_cove"),
        fixture.state.path().join("gvisor"),
    );
    assert!(matches!(
        again.recover(&paused).unwrap(),
        Some(Recovered::Paused(_, PauseMode::Memory))
    ));
    let resumed = fixture.runtime.resume(&paused, &spec).unwrap();
    let agent = self::agent(&resumed);
    let after = counted_past(&agent.client, before.2).await;
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    assert_eq!(link_procs(), 2, "the link ran on through the pause");

    fixture.end(id, &resumed.handle);
    assert!(!link.exists(), "the link outlived its sandbox");
    assert!(!fixture.dir(id).join("netns").exists());
}

/// A counter like [`COUNTER`] that writes to the sandbox's disk (`/home/user/count`, in the
/// writable layer the host copies for snapshots) every millisecond.
const DISK_COUNTER: &str = "exec python3 -c \"\nimport os, time\ntoken = os.urandom(8).hex()\ni = 0\nwhile True:\n    i += 1\n    open('/home/user/count.new', 'w').write(f'{os.getpid()} {token} {i}')\n    os.replace('/home/user/count.new', '/home/user/count')\n    time.sleep(0.001)\n\"";

/// The CPU time, in ns, that the processes in container `container`'s cgroup have used.
fn cpu_used(container: &str) -> u64 {
    let usage = cgroups_of(container)
        .into_iter()
        .map(|dir| dir.join("cpuacct.usage"))
        .find(|file| file.exists())
        .expect("the container has a cpuacct cgroup");
    std::fs::read_to_string(usage)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A sandbox that `runsc restore` started (here: one made from a memory snapshot, with
/// internet access) is still while it is paused and while a snapshot copies its files, as
/// one that `runsc run` started is. This runsc's own pause leaves a restored container
/// running: without the host's freezer, its processes wrote on through the pause, and a
/// copy of its files met a file renamed away under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_sandbox_is_still_while_paused_and_while_its_files_are_copied() {
    let Some(fixture) = Fixture::with_internet() else {
        return;
    };
    let source_id = "gv-still-source";
    let source = fixture.start(source_id);
    let source_agent = agent(&source);
    source_agent
        .client
        .commands()
        .spawn(Command::shell(DISK_COUNTER))
        .await
        .unwrap();
    wait_until("the counter to count", Duration::from_secs(60), || {
        let agent = source_agent.client.clone();
        async move {
            (sh(&agent, "cat /home/user/count 2>/dev/null || true").await)
                .contains(' ')
                .then_some(())
        }
    })
    .await;
    let snapshots = fixture.state.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let snapshot = fixture
        .runtime
        .snapshot_memory(&source.handle, &fixture.template, &snapshots.join("memory"))
        .unwrap();
    drop(source_agent);
    fixture.end(source_id, &source.handle);

    let id = "gv-still";
    fixture.started.lock().unwrap().push(id.to_owned());
    let spec = SandboxSpec {
        network: true,
        ..fixture.spec_with(id, "token-still", &snapshot)
    };
    let restored = fixture.runtime.create(&spec).unwrap();
    let agent = agent_with(&restored, "token-still");
    let read_count = || {
        let agent = agent.client.clone();
        async move {
            let raw = sh(&agent, "cat /home/user/count").await;
            raw.split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let at_start = read_count().await;
    wait_until(
        "the restored counter to count on",
        Duration::from_secs(60),
        || {
            let count = read_count();
            async move { (count.await > at_start).then_some(()) }
        },
    )
    .await;

    // Files-only snapshots while it writes and renames a file every millisecond: each one
    // copies a still moment (a copy of a running disk failed about one time in ten).
    for i in 0..20 {
        let into = snapshots.join(format!("files-{i}"));
        let files = fixture
            .runtime
            .snapshot(&restored.handle, &snapshot, &into)
            .unwrap_or_else(|e| panic!("files-only snapshot {i}: {e}"));
        assert!(files.layers.len() > snapshot.layers.len());
    }

    // Pauses and resumes while the server's reaper looks at it over and over, as it looks
    // at every running sandbox: each look answers, none waits on a sentry frozen under it.
    let looking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reaper = {
        let (runtime, handle, looking) = (
            fixture.runtime.clone(),
            restored.handle.clone(),
            looking.clone(),
        );
        std::thread::spawn(move || {
            let mut looks = 0;
            while looking.load(std::sync::atomic::Ordering::Relaxed) {
                let look = runtime.liveness(&handle);
                assert!(
                    matches!(look, Ok(cove_runtime::Liveness::Running)),
                    "{look:?}"
                );
                looks += 1;
            }
            looks
        })
    };
    let mut handle = restored.handle.clone();
    for _ in 0..50 {
        let paused = fixture.runtime.pause(&handle, PauseMode::Memory).unwrap();
        handle = fixture.runtime.resume(&paused, &spec).unwrap().handle;
    }
    looking.store(false, std::sync::atomic::Ordering::Relaxed);
    let looks = reaper.join().unwrap();
    assert!(looks > 0);

    // A pause freezes it in place (it has internet access): its processes use no CPU.
    let container = fixture.runtime.container_id(id);
    let paused = fixture.runtime.pause(&handle, PauseMode::Memory).unwrap();
    assert_eq!(paused.state["frozen"], true);
    let before = cpu_used(&container);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = cpu_used(&container) - before;
    assert_eq!(during, 0, "a paused sandbox used {during} ns of CPU");
    // It is alive, said without asking runsc (whose `state` waits on a frozen sentry).
    assert!(matches!(
        fixture.runtime.liveness(&paused).unwrap(),
        cove_runtime::Liveness::Running
    ));

    // It goes on after the resume.
    let resumed = fixture.runtime.resume(&paused, &spec).unwrap();
    let agent = agent_with(&resumed, "token-still");
    let at_resume = sh(&agent.client, "cat /home/user/count").await;
    wait_until(
        "the counter to count on after the resume",
        Duration::from_secs(60),
        || {
            let agent = agent.client.clone();
            let at_resume = at_resume.clone();
            async move { (sh(&agent, "cat /home/user/count").await != at_resume).then_some(()) }
        },
    )
    .await;
    // Frozen again, then paused without memory: its processes end where they stand, and its
    // files stay for the next start.
    let frozen = fixture
        .runtime
        .pause(&resumed.handle, PauseMode::Memory)
        .unwrap();
    drop(agent);
    let files = fixture
        .runtime
        .pause(&frozen, PauseMode::Filesystem)
        .unwrap();
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    // It starts afresh on its files: the snapshot's processes are not restored onto files
    // that have moved on (the counter may have renamed away the file it held open).
    let again = fixture.runtime.resume(&files, &spec).unwrap();
    let agent = agent_with(&again, "token-still");
    let kept = sh(&agent.client, "cat /home/user/count").await;
    assert!(kept.contains(' '), "{kept:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sh(&agent.client, "cat /home/user/count").await, kept);
    // A kill of a frozen sandbox ends it without thawing it first.
    let frozen = fixture
        .runtime
        .pause(&again.handle, PauseMode::Memory)
        .unwrap();
    let began = Instant::now();
    fixture.end(id, &frozen);
    eprintln!("TIMING kill of a frozen sandbox: {:?}", began.elapsed());
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    assert_eq!(cgroups_of(&container), Vec::<PathBuf>::new());
    assert_eq!(
        loop_devices_under(fixture.state.path()),
        Vec::<String>::new()
    );
}

/// A container that runsc itself paused (as an older Cove did, and as Cove does on a host
/// without a cgroup freezer) is killed all the same, though this runsc's delete of a
/// paused container panics once it has deleted it.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_paused_by_runsc_is_killed_all_the_same() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-runsc-paused";
    let started = fixture.start(id);
    let container = fixture.runtime.container_id(id);
    let paused = std::process::Command::new(RUNSC)
        .arg("--root")
        .arg(fixture.state.path().join("gvisor/runsc"))
        .args(["pause", &container])
        .status()
        .unwrap();
    assert!(paused.success());
    fixture.end(id, &started.handle);
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    assert_eq!(cgroups_of(&container), Vec::<PathBuf>::new());
}

/// A sandbox whose sentry dies (killed from the host, as a crash would end it) is seen to
/// have ended, from its cgroup alone: nothing asks runsc, whose `state` waits on a frozen
/// sentry. A kill then clears what is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_whose_sentry_died_is_seen_ended() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let id = "gv-sentry-died";
    let started = fixture.start(id);
    let container = fixture.runtime.container_id(id);
    assert!(matches!(
        fixture.runtime.liveness(&started.handle).unwrap(),
        cove_runtime::Liveness::Running
    ));
    let sentry = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmdline = String::from_utf8_lossy(&raw);
                cmdline.starts_with("runsc-sandbox") && cmdline.contains(&container)
            })
        })
        .expect("the sandbox's sentry runs");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sentry).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_until(
        "the sandbox to be seen ended",
        Duration::from_secs(30),
        || {
            let look = fixture.runtime.liveness(&started.handle).unwrap();
            async move { matches!(look, cove_runtime::Liveness::Ended(_)).then_some(()) }
        },
    )
    .await;
    fixture.end(id, &started.handle);
    assert_eq!(processes_naming(&container), Vec::<String>::new());
    assert_eq!(cgroups_of(&container), Vec::<PathBuf>::new());
}
