//! Pausing, resuming and snapshots in the namespace backend, on real sandboxes with disk
//! quotas: a pause with memory freezes the sandbox and a resume continues its processes; a
//! pause without memory ends them and a resume starts the sandbox again on the same files,
//! in another uid range, with owners as they were (the writable layer stores the sandbox's
//! own uids); a snapshot is a template layer that other sandboxes start from; a server that
//! died halfway through a transition finds the sandbox in one clear state; nothing is left
//! behind.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use cove_runtime::{
    AgentEndpoint, AgentSettings, Handle, NamespaceRuntime, PauseMode, Recovered, Runtime,
    SandboxSpec, Started, Template, template,
};
use cove_sdk::{AgentClient, Command};
use cove_test_util::wait_until;

struct Fixture {
    runtime: NamespaceRuntime,
    state: tempfile::TempDir,
    template: Template,
}

impl Fixture {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cove-pause-test-")
            .tempdir()
            .unwrap();
        let template = template::base(&state.path().join("templates/base")).unwrap();
        let runtime = NamespaceRuntime::new(
            env!("CARGO_BIN_EXE_cove"),
            state.path().join("sandboxes"),
            cove_runtime::egress::EgressConfig::default(),
        )
        .with_disk_quota(state.path().join("disk-pool"), 256 << 20)
        .unwrap();
        Self {
            runtime,
            state,
            template,
        }
    }

    fn spec(&self, id: &str, template: &Template) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            template: template.clone(),
            hostname: "sandbox".to_owned(),
            agent: AgentSettings {
                access_token: String::new(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: Default::default(),
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

    fn start(&self, id: &str, template: &Template) -> Started {
        self.runtime.create(&self.spec(id, template)).unwrap()
    }

    /// Where the sandboxes' directories (and disks) are; the disk pool's images, attached
    /// ahead, are elsewhere.
    fn sandboxes(&self) -> PathBuf {
        self.state.path().join("sandboxes")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.sandboxes().join(id)
    }

    fn end(&self, id: &str, handle: &Handle) {
        self.runtime.kill(handle).unwrap();
        self.runtime.remove(id).unwrap();
    }
}

fn client(started: &Started) -> AgentClient {
    let AgentEndpoint::Unix(socket) = &started.agent else {
        panic!("the namespace backend's agent listens on a host-only socket");
    };
    AgentClient::unix(socket).unwrap()
}

async fn sh(agent: &AgentClient, script: &str) -> String {
    agent.commands().run(script).await.unwrap().stdout
}

/// Waits (up to a minute) until the number in the sandbox's `file` is above `floor`.
async fn wait_for_number_above(agent: &AgentClient, file: &str, floor: u64, what: &str) {
    let read = format!("cat {file} 2>/dev/null || echo 0");
    wait_until(what, Duration::from_secs(60), || {
        let (agent, read) = (agent.clone(), read.clone());
        async move {
            let number = sh(&agent, &read).await;
            (number.trim().parse::<u64>().ok()? > floor).then_some(())
        }
    })
    .await;
}

fn state_of(handle: &Handle) -> serde_json::Value {
    handle.state.clone()
}

/// The freezer state of sandbox `id` (cgroup v1, as on this host).
fn freezer_state(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/cove/{id}/freezer.state"))
        .ok()
        .map(|s| s.trim().to_owned())
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

/// Whether `pid` runs (a zombie waiting for the host's init does not).
fn is_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

/// What `debugfs` says of `path` on the (unmounted) ext4 image.
fn stat_on_image(image: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_pause_freezes_the_sandbox_and_a_resume_continues_it() {
    let fixture = Fixture::new();
    let id = "paused-memory";
    let started = fixture.start(id, &fixture.template);
    let agent = client(&started);
    let counter = agent
        .commands()
        .spawn(Command::shell(
            // Renamed into place, so the file is never seen truncated (nor frozen so).
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; \
             mv /tmp/count.new /tmp/count; sleep 0.05; done",
        ))
        .await
        .unwrap();
    wait_for_number_above(&agent, "/tmp/count", 2, "the counter to count").await;

    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Memory)
        .unwrap();
    assert_eq!(freezer_state(id).as_deref(), Some("FROZEN"));
    assert_eq!(state_of(&paused)["paused"], "memory");
    // Pausing again is refused; the handle still names the same processes.
    assert!(fixture.runtime.pause(&paused, PauseMode::Memory).is_err());
    assert_eq!(state_of(&paused)["pid"], state_of(&started.handle)["pid"]);
    // The root of a frozen sandbox can still be read from the host: its counter stands.
    let pid = state_of(&paused)["pid"].as_u64().unwrap();
    let count = |pid| {
        std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let at_pause = count(pid);

    let resumed = fixture
        .runtime
        .resume(&paused, &fixture.spec(id, &fixture.template))
        .unwrap();
    assert_eq!(freezer_state(id).as_deref(), Some("THAWED"));
    assert_eq!(state_of(&resumed.handle)["pid"], pid);
    // The same process goes on counting from where it stopped.
    wait_until("the counter to go on", Duration::from_secs(60), || async {
        (count(pid) > at_pause).then_some(())
    })
    .await;
    assert!(
        client(&resumed)
            .commands()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.pid == counter.pid())
    );
    fixture.end(id, &resumed.handle);
    assert_eq!(freezer_state(id), None, "its cgroup is gone");
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filesystem_pause_keeps_the_files_and_a_resume_starts_again_in_another_uid_range() {
    let fixture = Fixture::new();
    let id = "paused-files";
    let started = fixture.start(id, &fixture.template);
    let agent = client(&started);
    sh(
        &agent,
        "echo kept > ~/note; mkdir -p ~/dir; sleep 600 >/dev/null 2>&1 &",
    )
    .await;
    let old_slot = state_of(&started.handle)["slot"].as_u64().unwrap() as u32;

    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Filesystem)
        .unwrap();
    assert_eq!(state_of(&paused)["paused"], "filesystem");
    let pid = state_of(&paused)["pid"].as_u64().unwrap();
    assert!(!is_alive(pid), "PID 1 is gone");
    assert!(
        loop_devices_under(&fixture.sandboxes()).is_empty(),
        "its disk is detached"
    );
    // Stored as the sandbox's own uid (1000), not as a host uid of its range.
    let image = fixture.dir(id).join("disk.img");
    let stat = stat_on_image(&image, "/upper/0/home/user/note");
    assert!(stat.contains("User:  1000"), "{stat}");
    // Its old uid range is someone else's now. Tests run side by side, so another test's
    // sandbox may lease the freed range first; it frees it when it ends, the paused sandbox
    // never would.
    let taken = wait_until(
        "the paused sandbox to give its range back",
        Duration::from_secs(60),
        || async move {
            cove_runtime::uid_ranges::Lease::take(
                Path::new(cove_runtime::uid_ranges::LEASE_DIR),
                old_slot,
            )
            .unwrap()
        },
    )
    .await;

    let resumed = fixture
        .runtime
        .resume(&paused, &fixture.spec(id, &fixture.template))
        .unwrap();
    assert_ne!(
        state_of(&resumed.handle)["slot"].as_u64().unwrap() as u32,
        old_slot
    );
    let agent = client(&resumed);
    assert_eq!(sh(&agent, "cat ~/note").await, "kept\n");
    assert_eq!(
        sh(&agent, "stat -c '%U %G' ~/note ~/dir").await,
        "user user\nuser user\n"
    );
    assert_eq!(
        sh(&agent, "pgrep -x sleep || echo none").await,
        "none\n",
        "processes started again"
    );
    sh(&agent, "echo again >> ~/note").await;
    drop(taken);
    fixture.end(id, &resumed.handle);
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
    assert!(!fixture.dir(id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_a_layer_other_sandboxes_start_from() {
    let fixture = Fixture::new();
    let id = "snapshot-source";
    let started = fixture.start(id, &fixture.template);
    let agent = client(&started);
    let root = agent.clone().as_user("root");
    sh(
        &agent,
        "echo mine > ~/mine; head -c 1048576 /dev/urandom > ~/big; sha256sum ~/big > ~/big.sum",
    )
    .await;
    // A file of the template deleted (a whiteout) and a directory replaced (opaque).
    sh(
        &root,
        "rm /etc/issue; rm -rf /etc/skel; mkdir /etc/skel; touch /etc/skel/only; echo r > /root/r",
    )
    .await;

    let into = fixture.state.path().join("snapshots/s1");
    std::fs::create_dir_all(into.parent().unwrap()).unwrap();
    let snapshot = fixture
        .runtime
        .snapshot(&started.handle, &fixture.template, &into)
        .unwrap();
    assert_eq!(snapshot.layers.len(), fixture.template.layers.len() + 1);
    assert_eq!(snapshot.layers[0].path, into.join("0"));
    // The source was frozen for the copy only.
    assert_eq!(freezer_state(id).as_deref(), Some("THAWED"));
    assert_eq!(sh(&agent, "echo still").await, "still\n");
    // On the host, owners are the sandbox's own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(into.join("0/home/user/mine"))
            .unwrap()
            .uid(),
        1000
    );
    assert_eq!(std::fs::metadata(into.join("0/root/r")).unwrap().uid(), 0);

    let copy = fixture.start("snapshot-copy", &snapshot);
    let copied = client(&copy);
    assert_eq!(
        sh(&copied, "cat ~/mine; stat -c %U ~/mine").await,
        "mine\nuser\n"
    );
    assert_eq!(
        sh(&copied, "cd ~ && sha256sum -c big.sum").await,
        format!("/home/user/big: OK\n")
    );
    assert_eq!(
        sh(&copied, "test -e /etc/issue || echo gone").await,
        "gone\n"
    );
    assert_eq!(
        sh(
            &copied.clone().as_user("root"),
            "ls -A /etc/skel; stat -c %U /root/r"
        )
        .await,
        "only\nroot\n"
    );
    // It writes its own layer; the snapshot stays as it was.
    sh(&copied, "echo changed > ~/mine").await;
    assert_eq!(
        std::fs::read_to_string(into.join("0/home/user/mine")).unwrap(),
        "mine\n"
    );

    // A paused sandbox can be snapshotted too (without memory: from its image).
    let paused = fixture
        .runtime
        .pause(&copy.handle, PauseMode::Filesystem)
        .unwrap();
    let again = fixture.state.path().join("snapshots/s2");
    let second = fixture
        .runtime
        .snapshot(&paused, &snapshot, &again)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(again.join("0/home/user/mine")).unwrap(),
        "changed\n"
    );
    assert_eq!(second.layers.len(), snapshot.layers.len() + 1);
    assert!(
        loop_devices_under(&fixture.dir("snapshot-copy")).is_empty(),
        "the copy let the paused sandbox's disk go"
    );

    fixture.end("snapshot-copy", &paused);
    fixture.end(id, &started.handle);
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reroot_gives_a_running_sandbox_the_snapshots_files_and_nothing_of_its_old_root() {
    let fixture = Fixture::new();
    let source = fixture.start("reroot-source", &fixture.template);
    let agent = client(&source);
    sh(&agent, "echo mine > ~/mine").await;
    sh(
        &agent.clone().as_user("root"),
        "rm /etc/issue; rm -rf /etc/skel; mkdir /etc/skel; touch /etc/skel/only",
    )
    .await;
    let into = fixture.state.path().join("snapshots/r1");
    std::fs::create_dir_all(into.parent().unwrap()).unwrap();
    let snapshot = fixture
        .runtime
        .snapshot(&source.handle, &fixture.template, &into)
        .unwrap();

    // A warm sandbox: its agent up, and (for this test) a file in its old root.
    let id = "reroot-target";
    let warm = fixture.start(id, &fixture.template);
    let agent = client(&warm);
    sh(&agent, "echo old > /tmp/old-root").await;
    fixture.runtime.reroot(&warm.handle, &snapshot).unwrap();

    // The same agent (PID 1 and handle kept) on the snapshot's files.
    assert_eq!(sh(&agent, "cat ~/mine").await, "mine\n");
    assert_eq!(
        sh(&agent, "test -e /etc/issue || echo gone; ls -A /etc/skel").await,
        "gone\nonly\n"
    );
    assert_eq!(
        sh(&agent, "test -e /tmp/old-root || echo gone").await,
        "gone\n"
    );
    // One root, with the kernel filesystems and their masks moved onto it.
    assert_eq!(
        sh(&agent, "awk '$5 == \"/\"' /proc/self/mountinfo | wc -l").await,
        "1\n"
    );
    assert_eq!(
        sh(
            &agent,
            "wc -c < /proc/kallsyms; test -e /dev/pts/ptmx && echo pts; ls /sys/class/net"
        )
        .await,
        "0\npts\nlo\n"
    );
    assert_eq!(
        sh(&agent, "echo shm > /dev/shm/x && cat /dev/shm/x").await,
        "shm\n"
    );
    // Its writes are its own: neither the source nor the snapshot sees them.
    sh(&agent, "echo fork > ~/mine; echo new > ~/new").await;
    assert_eq!(sh(&client(&source), "cat ~/mine").await, "mine\n");
    assert_eq!(
        std::fs::read_to_string(into.join("0/home/user/mine")).unwrap(),
        "mine\n"
    );

    // Paused without memory, its disk holds its writes and nothing of the old root.
    let paused = fixture
        .runtime
        .pause(&warm.handle, PauseMode::Filesystem)
        .unwrap();
    let image = fixture.dir(id).join("disk.img");
    assert!(stat_on_image(&image, "/upper/0/home/user/new").contains("User:  1000"));
    for gone in ["/retired", "/upper/0/tmp/old-root"] {
        let stat = stat_on_image(&image, gone);
        assert!(!stat.contains("Inode:"), "{gone}: {stat}");
    }
    // And it starts again from the snapshot's layers and its own.
    let resumed = fixture
        .runtime
        .resume(&paused, &fixture.spec(id, &snapshot))
        .unwrap();
    assert_eq!(
        sh(&client(&resumed), "cat ~/mine ~/new; ls -A /etc/skel").await,
        "fork\nnew\nonly\n"
    );
    // Nor is one where anything but the agent runs: it would go on in the old root.
    let resumed_agent = client(&resumed);
    sh(&resumed_agent, "sleep 600 >/dev/null 2>&1 &").await;
    let refused = fixture
        .runtime
        .reroot(&resumed.handle, &fixture.template)
        .unwrap_err();
    let why = std::error::Error::source(&refused).unwrap().to_string();
    assert!(why.contains("processes other than its agent"), "{why}");
    assert_eq!(sh(&resumed_agent, "cat ~/new").await, "new\n");
    // A paused sandbox is not rerooted.
    let paused = fixture
        .runtime
        .pause(&resumed.handle, PauseMode::Memory)
        .unwrap();
    assert!(fixture.runtime.reroot(&paused, &snapshot).is_err());

    fixture.end(id, &paused);
    fixture.end("reroot-source", &source.handle);
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_died_mid_transition_finds_one_clear_state() {
    let fixture = Fixture::new();
    let id = "recovered";
    let started = fixture.start(id, &fixture.template);
    let spec = fixture.spec(id, &fixture.template);

    // Paused, but the server died before it stored the paused handle: the directory says
    // paused, and so does recover.
    let paused = fixture
        .runtime
        .pause(&started.handle, PauseMode::Memory)
        .unwrap();
    match fixture.runtime.recover(&started.handle).unwrap() {
        Some(Recovered::Paused(_, PauseMode::Memory)) => {}
        other => panic!("{other:?}"),
    }
    // A thaw that was never recorded (the server died right after it) is undone.
    std::fs::write(
        format!("/sys/fs/cgroup/freezer/cove/{id}/freezer.state"),
        "THAWED",
    )
    .unwrap();
    assert!(matches!(
        fixture.runtime.recover(&paused).unwrap(),
        Some(Recovered::Paused(_, PauseMode::Memory))
    ));
    assert_eq!(freezer_state(id).as_deref(), Some("FROZEN"));

    // Memory dropped: recover says paused without memory, and resume starts it again.
    let stopped = fixture
        .runtime
        .pause(&paused, PauseMode::Filesystem)
        .unwrap();
    assert!(matches!(
        fixture.runtime.recover(&paused).unwrap(),
        Some(Recovered::Paused(_, PauseMode::Filesystem))
    ));
    let resumed = fixture.runtime.resume(&stopped, &spec).unwrap();
    // Resumed, but the server died before it stored the new handle: the directory knows the
    // new PID 1, and the sandbox runs.
    match fixture.runtime.recover(&stopped).unwrap() {
        Some(Recovered::Running(found)) => assert_eq!(found.handle, resumed.handle),
        other => panic!("{other:?}"),
    }
    assert_eq!(sh(&client(&resumed), "echo up").await, "up\n");
    fixture.end(id, &resumed.handle);
    assert!(fixture.runtime.recover(&resumed.handle).unwrap().is_none());
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_hostile_files_gives_the_host_nothing_to_follow() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fixture = Fixture::new();
    let id = "hostile";
    let started = fixture.start(id, &fixture.template);
    let root = client(&started).as_user("root");
    // Links to host paths, a setuid-root program, a hard link to it, a FIFO, a sparse
    // gigabyte.
    sh(
        &root,
        "ln -s /etc/shadow /root/shadow; ln -s ../../../../../../../../etc /root/up; \
         cp /usr/bin/id /root/suid; chmod 4755 /root/suid; ln /root/suid /root/hard; \
         mkfifo /root/fifo; truncate -s 1G /root/sparse",
    )
    .await;
    let into = fixture.state.path().join("snapshots/hostile");
    std::fs::create_dir_all(into.parent().unwrap()).unwrap();
    let snapshot = fixture
        .runtime
        .snapshot(&started.handle, &fixture.template, &into)
        .unwrap();
    let layer = into.join("0/root");

    // Copied as they are, nothing followed; only host root reaches them.
    for link in ["shadow", "up"] {
        let meta = std::fs::symlink_metadata(layer.join(link)).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{link} is a link, not what it names"
        );
    }
    let suid = std::fs::metadata(layer.join("suid")).unwrap();
    assert_eq!((suid.uid(), suid.mode() & 0o7777), (0, 0o4755));
    assert_eq!(
        suid.ino(),
        std::fs::metadata(layer.join("hard")).unwrap().ino()
    );
    assert!(
        std::fs::symlink_metadata(layer.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(std::fs::metadata(layer.join("sparse")).unwrap().blocks() * 512 < 1 << 20);
    // (The server keeps snapshots under its 0700 state directory, in a 0700 directory of
    // their own: crates/cove-server/tests/pause.rs.)

    // Inside a sandbox from the snapshot, they lead to the sandbox's own files.
    let copy = fixture.start("hostile-copy", &snapshot);
    let copied = client(&copy).as_user("root");
    let shadow = sh(&copied, "head -c 7 /root/shadow; echo; ls /root/up/passwd").await;
    assert_eq!(
        shadow, "root:*:\n/root/up/passwd\n",
        "the template's shadow, not the host's"
    );
    assert_eq!(
        sh(&copied, "stat -c '%a %U' /root/suid").await,
        "4755 root\n"
    );

    // Removing the layers follows no link either.
    std::fs::remove_dir_all(&into).unwrap();
    assert!(Path::new("/etc/shadow").exists() && Path::new("/etc/passwd").exists());
    fixture.end("hostile-copy", &copy.handle);
    fixture.end(id, &started.handle);
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
}

/// The same through `cove serve` and the Rust SDK.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_pauses_resumes_snapshots_and_forks() {
    use cove_sdk::{CreateOptions, Error, Sandbox, snapshots::PauseMode as Mode};
    let server = cove_test_util::TestServer::start(Path::new(env!("CARGO_BIN_EXE_cove"))).await;
    let config = server.config();
    let sandbox = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    sandbox.files().write("kept.txt", "kept").await.unwrap();

    assert!(sandbox.pause(Mode::Memory).await.unwrap());
    assert!(
        !sandbox.pause(Mode::Memory).await.unwrap(),
        "already paused"
    );
    assert!(!sandbox.is_running().await.unwrap());
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.pause_mode.as_deref(), Some("full"));
    let resumed = Sandbox::connect(&config, sandbox.id(), None).await.unwrap();
    assert_eq!(
        resumed.files().read("kept.txt").await.unwrap(),
        "kept".as_bytes()
    );

    assert!(sandbox.pause(Mode::Filesystem).await.unwrap());
    assert_eq!(
        sandbox.info().await.unwrap().pause_mode.as_deref(),
        Some("filesystem")
    );
    let resumed = Sandbox::connect(&config, sandbox.id(), None).await.unwrap();
    assert_eq!(
        resumed.files().read("kept.txt").await.unwrap(),
        "kept".as_bytes()
    );

    let snapshot = resumed.snapshot(Some("sdk-snap")).await.unwrap();
    assert_eq!(snapshot.snapshot_id, "default/sdk-snap:default");
    assert_eq!(snapshot.mode.as_deref(), Some("filesystem"));
    let copy = Sandbox::create(
        &config,
        CreateOptions {
            template: Some(snapshot.snapshot_id.clone()),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        copy.files().read("kept.txt").await.unwrap(),
        "kept".as_bytes()
    );
    assert!(
        Sandbox::delete_snapshot(&config, &snapshot.snapshot_id)
            .await
            .unwrap()
    );
    assert!(
        !Sandbox::delete_snapshot(&config, &snapshot.snapshot_id)
            .await
            .unwrap()
    );

    let forks = resumed
        .fork(2, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let forks: Vec<Sandbox> = forks.into_iter().collect::<Result<_, Error>>().unwrap();
    for fork in &forks {
        assert_eq!(
            fork.files().read("kept.txt").await.unwrap(),
            "kept".as_bytes()
        );
        assert!(fork.kill().await.unwrap());
    }
    assert!(copy.kill().await.unwrap());
    assert!(resumed.kill().await.unwrap());
}

/// A process that traces another (as `strace` or a debugger does), resuming it at every
/// system call; the number of stops it has seen goes to `/tmp/traced` every thousand.
const TRACER: &str = "exec python3 -c \"\nimport ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\npid = os.fork()\nif pid == 0:\n    libc.ptrace(0, 0, None, None)\n    os.kill(os.getpid(), 19)\n    while True:\n        os.getppid()\nos.waitpid(pid, 0)\nn = 0\nwhile True:\n    libc.ptrace(24, pid, None, None)\n    os.waitpid(pid, 0)\n    n += 1\n    if n % 1000 == 0:\n        open('/tmp/traced', 'w').write(str(n))\n\"";

/// A sandbox whose processes trace each other pauses every time. cgroup v1's freezer tries
/// each task once: a tracee its tracer resumed just before the tracer froze stops for
/// ptrace after that pass, unfrozen, and the freeze would wait for it for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_whose_processes_trace_each_other_pauses_every_time() {
    let fixture = Fixture::new();
    let id = "paused-tracing";
    let started = fixture.start(id, &fixture.template);
    let agent = client(&started);
    agent
        .commands()
        .spawn(Command::shell(TRACER))
        .await
        .unwrap();
    wait_for_number_above(&agent, "/tmp/traced", 0, "the tracer to trace").await;
    let spec = fixture.spec(id, &fixture.template);
    let mut handle = started.handle.clone();
    for i in 0..300 {
        let paused = fixture
            .runtime
            .pause(&handle, PauseMode::Memory)
            .unwrap_or_else(|e| panic!("pause {i}: {e}"));
        handle = fixture.runtime.resume(&paused, &spec).unwrap().handle;
    }
    fixture.end(id, &handle);
}

/// Loop devices (their names) with a backing file below `dir` (a path without links; it may
/// be gone).
fn loop_device_names_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|backing| backing.trim().starts_with(dir.to_str().unwrap()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_mounted_ahead_is_the_sandboxs_own_and_the_pools_go_with_the_runtime() {
    let fixture = Fixture::new();
    let pool = fixture.state.path().join("disk-pool");
    // The pool attaches and mounts its images ahead, so that a create does neither. Taken
    // once it is full (no change for a while): a create takes the image made last.
    let waiting = wait_until(
        "the disk pool to mount its images ahead",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                let before = loop_device_names_under(&pool);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let after = loop_device_names_under(&pool);
                (!after.is_empty() && before == after).then_some(after)
            }
        },
    )
    .await;
    let id = "mounted-ahead";
    let started = fixture.start(id, &fixture.template);
    let image = fixture.dir(id).join("disk.img");
    let device = cove_runtime::disk::attached_device(&image)
        .unwrap()
        .expect("the sandbox's disk is attached");
    let name = device.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        waiting.contains(&name),
        "{name} was not one of the pool's devices {waiting:?}"
    );
    // The sandbox writes on its own disk, of the quota's size (less ext4's own metadata).
    let agent = client(&started);
    let size: u64 = sh(
        &agent,
        "echo kept > ~/note; df -B1M --output=size / | tail -1",
    )
    .await
    .trim()
    .parse()
    .unwrap();
    assert!((200..=256).contains(&size), "a root of {size} MiB");
    assert_eq!(sh(&agent, "cat ~/note").await, "kept\n");
    fixture.end(id, &started.handle);
    assert!(loop_devices_under(&fixture.sandboxes()).is_empty());
    // The images still waiting are unmounted with the runtime, their devices detached by
    // the time it has shut down.
    fixture.runtime.shutdown();
    let left = loop_device_names_under(&pool);
    assert!(left.is_empty(), "the disk pool left {left:?} attached");
}
