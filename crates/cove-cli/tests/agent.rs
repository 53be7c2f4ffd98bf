//! The agent, as a real process (PID 1 of its own namespaces), driven over its Unix socket
//! and over TCP with the Rust SDK and with raw HTTP for what the SDK would never send.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use bytes::Bytes;
use cove_proto::connect::{self, Code};
use cove_sdk::{AgentClient, Command, Error, FileKind, FsEventKind, Output};
use cove_test_util::{AgentOptions, TestAgent, raw_http, wait_until};
use futures::StreamExt;

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// A raw HTTP client for the agent's Unix socket.
fn raw(agent: &TestAgent) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(agent.socket.clone())
        .build()
        .unwrap()
}

const BASE: &str = "http://agent";

async fn files_scenario(client: &AgentClient) {
    let files = client.files();
    let written = files
        .write("notes/hello.txt", "Hello from E2B!")
        .await
        .unwrap();
    assert_eq!(written.path, "/home/user/notes/hello.txt");
    assert_eq!(written.name, "hello.txt");
    assert_eq!(
        files
            .read_to_string("/home/user/notes/hello.txt")
            .await
            .unwrap(),
        "Hello from E2B!"
    );

    let info = files.stat("~/notes/hello.txt").await.unwrap();
    assert_eq!(
        (info.kind, info.size, info.mode),
        (FileKind::File, 15, 0o644)
    );
    assert_eq!((info.owner.as_str(), info.group.as_str()), ("user", "user"));
    assert_eq!(info.permissions, "-rw-r--r--");
    assert!(info.modified.is_some());

    assert!(files.make_dir("notes/deep/er").await.unwrap());
    assert!(!files.make_dir("notes/deep/er").await.unwrap());
    files
        .write("notes/deep/er/x.bin", vec![0u8, 255, 1, 2])
        .await
        .unwrap();

    let names =
        |entries: Vec<cove_sdk::Entry>| entries.into_iter().map(|e| e.path).collect::<Vec<_>>();
    assert_eq!(
        names(files.list("notes", 1).await.unwrap()),
        ["/home/user/notes/deep", "/home/user/notes/hello.txt"]
    );
    assert_eq!(
        names(files.list("notes", 3).await.unwrap()),
        [
            "/home/user/notes/deep",
            "/home/user/notes/deep/er",
            "/home/user/notes/deep/er/x.bin",
            "/home/user/notes/hello.txt"
        ]
    );

    let moved = files
        .rename("notes/hello.txt", "archive/2026/hello.txt")
        .await
        .unwrap();
    assert_eq!(moved.path, "/home/user/archive/2026/hello.txt");
    assert!(!files.exists("notes/hello.txt").await.unwrap());
    assert_eq!(files.stat("archive/2026").await.unwrap().owner, "user");

    files.remove("notes").await.unwrap();
    assert!(!files.exists("notes").await.unwrap());
    // Removing what is not there is not an error.
    files.remove("notes").await.unwrap();

    assert!(matches!(
        files.read("missing.txt").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        files.stat("missing.txt").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        files.read("/home/user").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        files.list("archive/2026/hello.txt", 1).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// An agent that also listens on TCP.
async fn agent_with_tcp() -> TestAgent {
    TestAgent::start_with(
        cove(),
        AgentOptions {
            tcp: true,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn files_over_unix_socket_and_tcp() {
    let agent = agent_with_tcp().await;
    files_scenario(&agent.client()).await;
    agent.client().files().remove("archive").await.unwrap();
    files_scenario(&agent.tcp_client()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_upload_and_several_files_at_once() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let files = client.files();
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    files
        .write("/tmp/all.bin", all_bytes.clone())
        .await
        .unwrap();
    assert_eq!(
        files.read("/tmp/all.bin").await.unwrap(),
        Bytes::from(all_bytes)
    );

    let written = files
        .write_many(vec![
            ("/tmp/many/a", Bytes::from_static(b"1")),
            ("many/b", Bytes::from_static(b"2")),
        ])
        .await
        .unwrap();
    let paths: Vec<_> = written.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["/tmp/many/a", "/home/user/many/b"]);
    assert_eq!(files.read_to_string("/tmp/many/a").await.unwrap(), "1");

    // Small parts are written several at once, large ones streamed: the answer keeps the
    // order of the parts, and every file has its own content.
    let large: Bytes = (0..=250u8).cycle().take(3 << 20).collect::<Vec<_>>().into();
    let mut parts: Vec<(String, Bytes)> = (0..200)
        .map(|i| {
            (
                format!("/tmp/mixed/{i}.txt"),
                Bytes::from(format!("part {i}")),
            )
        })
        .collect();
    parts.insert(100, ("/tmp/mixed/large.bin".into(), large.clone()));
    let written = files.write_many(parts.clone()).await.unwrap();
    let paths: Vec<_> = written.iter().map(|w| w.path.clone()).collect();
    let expected: Vec<_> = parts.iter().map(|(path, _)| path.clone()).collect();
    assert_eq!(paths, expected);
    assert_eq!(files.read("/tmp/mixed/large.bin").await.unwrap(), large);
    for i in [0, 99, 199] {
        assert_eq!(
            files
                .read_to_string(&format!("/tmp/mixed/{i}.txt"))
                .await
                .unwrap(),
            format!("part {i}")
        );
    }

    // A part that cannot be written fails the upload with its own error; the parts before
    // it are written, and no temporary file is left anywhere.
    files
        .write("/tmp/blocked/dir/keep", "a directory in the way")
        .await
        .unwrap();
    let mut parts: Vec<(String, Bytes)> = (0..20)
        .map(|i| (format!("/tmp/blocked/{i}"), Bytes::from_static(b"x")))
        .collect();
    parts.insert(10, ("/tmp/blocked/dir".into(), Bytes::from_static(b"y")));
    let refused = files.write_many(parts).await.unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidArgument(m) if m.contains("/tmp/blocked/dir") && m.contains("is a directory")),
        "{refused:?}"
    );
    assert_eq!(files.read_to_string("/tmp/blocked/9").await.unwrap(), "x");
    let left = client
        .commands()
        .run("find /tmp/blocked /tmp/mixed -name '.cove-upload-*' | wc -l")
        .await
        .unwrap();
    assert_eq!(left.stdout.trim(), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_are_reported_as_symlinks() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    client.files().write("target.txt", "x").await.unwrap();
    client
        .commands()
        .run("ln -s target.txt link && ln -s nowhere broken")
        .await
        .unwrap();
    let link = client.files().stat("link").await.unwrap();
    assert_eq!(
        (link.kind, link.target_kind),
        (FileKind::Symlink, FileKind::File)
    );
    assert_eq!(
        link.symlink_target.as_deref(),
        Some("/home/user/target.txt")
    );
    assert!(link.permissions.starts_with('L'));
    let broken = client.files().stat("broken").await.unwrap();
    assert_eq!(
        (broken.kind, broken.target_kind),
        (FileKind::Symlink, FileKind::Other)
    );
}

/// Names of the agent's temporary upload files in the user's home.
async fn temporary_files(client: &AgentClient) -> Vec<String> {
    client
        .files()
        .list("/home/user", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|name| name.starts_with(".cove-upload-"))
        .collect()
}

/// Opens a raw connection to the agent and sends half of a multipart upload of 1 MiB to
/// `path`: the headers, the part's headers and the first 512 KiB of its content.
async fn half_an_upload(agent: &TestAgent, path: &str) -> tokio::net::UnixStream {
    use tokio::io::AsyncWriteExt as _;
    let boundary = "cove-cut-off";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let epilogue = format!("\r\n--{boundary}--\r\n");
    let content = vec![b'x'; 1 << 20];
    let length = preamble.len() + content.len() + epilogue.len();
    let head = format!(
        "POST /files?path={path} HTTP/1.1\r\nHost: agent\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    );
    let mut stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(preamble.as_bytes()).await.unwrap();
    stream
        .write_all(&content[..content.len() / 2])
        .await
        .unwrap();
    stream.flush().await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_replace_files_whole() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let files = client.files();
    files.write("kept.txt", "the original").await.unwrap();

    // Permissions, owner and a link in the way stay as a write in place kept them.
    client
        .commands()
        .run("chmod 640 kept.txt && ln -s kept.txt link.txt")
        .await
        .unwrap();
    files.write("link.txt", "second version").await.unwrap();
    let kept = files.stat("kept.txt").await.unwrap();
    assert_eq!(
        (kept.mode, kept.owner.as_str(), kept.group.as_str()),
        (0o640, "user", "user")
    );
    assert_eq!(
        files.stat("link.txt").await.unwrap().kind,
        FileKind::Symlink
    );
    assert_eq!(
        files.read_to_string("kept.txt").await.unwrap(),
        "second version"
    );

    // An upload cut off in the middle of its body: the file as it was, no temporary file.
    for (path, before) in [
        ("/home/user/kept.txt", Some("second version")),
        ("/home/user/new.bin", None),
    ] {
        let connection = half_an_upload(&agent, path).await;
        wait_until(
            "the agent to start writing the upload",
            Duration::from_secs(60),
            || {
                let client = client.clone();
                async move { (!temporary_files(&client).await.is_empty()).then_some(()) }
            },
        )
        .await;
        // Mid-body the old content is still whole.
        if let Some(before) = before {
            assert_eq!(files.read_to_string(path).await.unwrap(), before);
        }
        drop(connection);
        wait_until(
            "the cut-off upload's temporary file to go",
            Duration::from_secs(60),
            || {
                let client = client.clone();
                async move { temporary_files(&client).await.is_empty().then_some(()) }
            },
        )
        .await;
        match before {
            Some(before) => assert_eq!(files.read_to_string(path).await.unwrap(), before),
            None => assert!(!files.exists(path).await.unwrap(), "{path} was created"),
        }
    }

    files.write("kept.txt", "third").await.unwrap();
    assert_eq!(files.read_to_string("kept.txt").await.unwrap(), "third");
    assert!(temporary_files(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_as_the_right_user_with_env_and_cwd() {
    let agent = agent_with_tcp().await;
    for client in [agent.client(), agent.tcp_client()] {
        let commands = client.commands();
        let out = commands
            .run("id -u; pwd; echo $HOME $USER; echo oops >&2")
            .await
            .unwrap();
        assert_eq!(out.stdout, "1000\n/home/user\n/home/user user\n");
        assert_eq!(out.stderr, "oops\n");

        let root = client.clone().as_user("root");
        assert_eq!(root.commands().run("id -u").await.unwrap().stdout, "0\n");

        let handle = commands
            .spawn(
                Command::shell("echo $MY_VAR; pwd")
                    .env("MY_VAR", "hello")
                    .cwd("/tmp"),
            )
            .await
            .unwrap();
        assert_eq!(handle.wait().await.unwrap().stdout, "hello\n/tmp\n");

        match commands.run("echo partial; exit 3").await {
            Err(Error::CommandExit(exit)) => {
                assert_eq!((exit.exit_code, exit.stdout.as_str()), (3, "partial\n"));
                assert_eq!(exit.error.as_deref(), Some("exit status 3"));
            }
            other => panic!("expected a command exit error, got {other:?}"),
        }

        let bad_cwd = commands
            .spawn(Command::shell("true").cwd("/does/not/exist"))
            .await;
        assert!(
            matches!(bad_cwd, Err(Error::InvalidArgument(_))),
            "{bad_cwd:?}"
        );
        let missing = commands.spawn(Command::new("/no/such/binary")).await;
        assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
        let nobody = client.clone().as_user("nobody-here");
        assert!(matches!(
            nobody.commands().run("true").await,
            Err(Error::Auth(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_output_arrives_complete_and_in_order() {
    let agent = TestAgent::start(cove()).await;
    let out = agent.client().commands().run("seq 1 500000").await.unwrap();
    let expected: String = (1..=500_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_signals_list_and_reattach() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let commands = client.commands();

    let mut cat = commands
        .spawn(Command::new("cat").stdin(true).tag("echo"))
        .await
        .unwrap();
    commands.send_stdin(cat.pid(), "ping\n").await.unwrap();
    assert_eq!(
        cat.next_output().await.unwrap(),
        Some(Output::Stdout(Bytes::from_static(b"ping\n")))
    );
    let listed = commands.list().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|p| p.pid == cat.pid() && p.tag.as_deref() == Some("echo"))
    );
    commands.close_stdin(cat.pid()).await.unwrap();
    assert_eq!(cat.wait().await.unwrap().exit_code, 0);

    // stdin not requested: writing is refused.
    let sleeper = commands.spawn(Command::shell("sleep 30")).await.unwrap();
    let refused = commands.send_stdin(sleeper.pid(), "x").await;
    assert!(
        matches!(
            refused,
            Err(Error::Rpc {
                code: Code::FailedPrecondition,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(commands.kill(sleeper.pid()).await.unwrap());
    match sleeper.wait().await {
        Err(Error::CommandExit(exit)) => assert_eq!(exit.error.as_deref(), Some("signal: killed")),
        other => panic!("expected the kill to show, got {other:?}"),
    }
    // stdin requested, but the process closed it: nobody reads the pipe any more (EPIPE),
    // which is the caller's race to lose, not the agent's failure.
    let mut deaf = commands
        .spawn(Command::shell("exec 0<&-; echo closed; sleep 30").stdin(true))
        .await
        .unwrap();
    assert_eq!(
        deaf.next_output().await.unwrap(),
        Some(Output::Stdout(Bytes::from_static(b"closed\n")))
    );
    let refused = commands.send_stdin(deaf.pid(), "x").await;
    assert!(
        matches!(
            &refused,
            Err(Error::Rpc {
                code: Code::FailedPrecondition,
                message,
            }) if message.contains("no longer reads its input")
        ),
        "{refused:?}"
    );
    assert!(commands.kill(deaf.pid()).await.unwrap());
    assert!(!commands.kill(999_999).await.unwrap());
    assert!(matches!(
        commands.send_stdin(999_999, "x").await,
        Err(Error::NotFound(_))
    ));

    // Re-attach: the new stream gets the output produced after it attached, then the end.
    let ticker = commands
        .spawn(Command::shell("read go; echo after; exit 7").stdin(true))
        .await
        .unwrap();
    let pid = ticker.pid();
    drop(ticker);
    let again = commands.connect(pid).await.unwrap();
    commands.send_stdin(pid, "go\n").await.unwrap();
    match again.wait().await {
        Err(Error::CommandExit(exit)) => {
            assert_eq!((exit.exit_code, exit.stdout.as_str()), (7, "after\n"))
        }
        other => panic!("expected exit 7, got {other:?}"),
    }
    // An ended process still reports its end for a while.
    let ended = commands.connect(pid).await.unwrap();
    assert!(matches!(ended.wait().await, Err(Error::CommandExit(exit)) if exit.exit_code == 7));
    assert!(matches!(
        commands.connect(999_999).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_kills_the_process_group() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let commands = client.commands();
    let handle = commands
        .spawn(
            Command::shell("sleep 300 & echo $! > /tmp/child; wait")
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert!(matches!(handle.wait().await, Err(Error::Timeout(_))));
    let child = agent
        .client()
        .files()
        .read_to_string("/tmp/child")
        .await
        .unwrap();
    let check = agent.client();
    wait_until(
        "the shell's child to be killed too",
        Duration::from_secs(60),
        || {
            let check = check.clone();
            let child = child.trim().to_owned();
            async move {
                let out = check
                    .commands()
                    .run(&format!(
                        "kill -0 {child} 2>/dev/null && echo alive || echo gone"
                    ))
                    .await
                    .ok()?;
                (out.stdout == "gone\n").then_some(())
            }
        },
    )
    .await;
    assert!(commands.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn terminals() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let commands = client.commands();
    let mut shell = commands
        .spawn(Command::new("/bin/bash").args(["-i", "-l"]).pty(80, 24))
        .await
        .unwrap();
    commands.resize(shell.pid(), 100, 30).await.unwrap();
    commands
        .send_pty(shell.pid(), "stty size; tty; exit\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(output) = shell.next_output().await.unwrap() {
        match output {
            Output::Pty(bytes) => seen.extend_from_slice(&bytes),
            other => panic!("a terminal process only produces pty output, got {other:?}"),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("30 100"), "terminal output: {seen}");
    assert!(seen.contains("/dev/pts/"), "terminal output: {seen}");

    let sleeper = commands.spawn(Command::shell("sleep 30")).await.unwrap();
    let not_a_terminal = commands.resize(sleeper.pid(), 10, 10).await;
    assert!(matches!(
        not_a_terminal,
        Err(Error::Rpc {
            code: Code::FailedPrecondition,
            ..
        })
    ));
    commands.kill(sleeper.pid()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_are_reaped_by_pid_1() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let commands = client.commands();
    // The shell exits at once; its children become orphans of the agent.
    commands
        .run("for i in 1 2 3; do (sleep 0.1 &) ; done")
        .await
        .unwrap();
    let probe = agent.client();
    wait_until("every orphan to be reaped", Duration::from_secs(60), || {
        let probe = probe.clone();
        async move {
            let out = probe
                .commands()
                .run("ps -eo stat= | grep -c '^Z' || true")
                .await
                .ok()?;
            (out.stdout.trim() == "0").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_streams_and_polls_events() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let files = client.files();
    files.make_dir("watched/sub").await.unwrap();

    let mut events = files.watch("watched", true).await.unwrap();
    let watcher = files.create_watcher("watched", true).await.unwrap();
    files.write("watched/sub/new.txt", "x").await.unwrap();
    files
        .rename("watched/sub/new.txt", "watched/renamed.txt")
        .await
        .unwrap();
    files.remove("watched/renamed.txt").await.unwrap();

    let mut streamed = Vec::new();
    while !streamed
        .iter()
        .any(|(name, kind)| name == "renamed.txt" && *kind == FsEventKind::Remove)
    {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        streamed.push((event.name, event.kind));
    }
    for expected in [
        ("sub/new.txt", FsEventKind::Create),
        ("sub/new.txt", FsEventKind::Write),
        ("sub/new.txt", FsEventKind::Rename),
        ("renamed.txt", FsEventKind::Create),
    ] {
        assert!(
            streamed
                .iter()
                .any(|(n, k)| n == expected.0 && *k == expected.1),
            "missing {expected:?} in {streamed:?}"
        );
    }

    let polled = files.watcher_events(&watcher).await.unwrap();
    assert!(
        polled
            .iter()
            .any(|e| e.name == "sub/new.txt" && e.kind == FsEventKind::Create),
        "{polled:?}"
    );
    assert!(
        files.watcher_events(&watcher).await.unwrap().is_empty(),
        "events are handed out once"
    );
    files.remove_watcher(&watcher).await.unwrap();
    assert!(matches!(
        files.watcher_events(&watcher).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        files.watch("watched/missing", false).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_sees_every_change_made_before_it() {
    let agent = TestAgent::start(cove()).await;
    let client = agent.client();
    let files = client.files();
    files.make_dir("polled").await.unwrap();
    let watcher = files.create_watcher("polled", false).await.unwrap();
    // Busy CPUs delay the agent's threads, the way a loaded machine does.
    let _hogs = Hogs::start(4);
    // The write has been answered before the poll is sent, so its event is due at once:
    // no waiting for the watcher's reader to catch up.
    for round in 0..300 {
        let name = format!("f{round}.txt");
        files.write(&format!("polled/{name}"), "x").await.unwrap();
        let polled = files.watcher_events(&watcher).await.unwrap();
        assert!(
            polled
                .iter()
                .any(|e| e.name == name && e.kind == FsEventKind::Create),
            "round {round}: {polled:?}"
        );
    }
    files.remove_watcher(&watcher).await.unwrap();
}

/// Processes that spin on the host until dropped (then killed by their own ids).
struct Hogs(Vec<std::process::Child>);

impl Hogs {
    fn start(count: usize) -> Hogs {
        // Pushed one by one, so a failed spawn still kills the ones started before it.
        let mut hogs = Hogs(Vec::new());
        for _ in 0..count {
            let hog = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap();
            hogs.0.push(hog);
        }
        hogs
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_clear_errors_and_the_agent_stays_up() {
    let agent = TestAgent::start(cove()).await;
    let http = raw(&agent);

    // Invalid JSON in a unary call: 400 with a Connect error body.
    let response = http
        .post(format!("{BASE}/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_argument");

    // The wrong content type for the method kind.
    let response = http
        .post(format!("{BASE}/process.Process/List"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // A frame announcing more than the limit: the stream ends with resource_exhausted.
    let mut oversized = vec![0u8];
    oversized.extend_from_slice(&(u32::MAX).to_be_bytes());
    let response = http
        .post(format!("{BASE}/process.Process/Start"))
        .header("content-type", "application/connect+json")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        end_stream_error(response.bytes().await.unwrap())
            .unwrap()
            .code,
        Code::ResourceExhausted
    );

    // A stream for a pid that does not exist: 200 and a not_found end of stream.
    let frame = connect::envelope(0, br#"{"process":{"pid":424242}}"#);
    let response = http
        .post(format!("{BASE}/process.Process/Connect"))
        .header("content-type", "application/connect+json")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/connect+json"
    );
    let error = end_stream_error(response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (error.code, error.message.as_str()),
        (Code::NotFound, "process with pid 424242 not found")
    );

    // Unknown endpoints are JSON 404s.
    let response = http.get(format!("{BASE}/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["code"],
        404
    );

    // Truncated streams and garbage bodies on every streaming method.
    for method in [
        "process.Process/Start",
        "filesystem.Filesystem/WatchDir",
        "process.Process/StreamInput",
    ] {
        let response = http
            .post(format!("{BASE}/{method}"))
            .header("content-type", "application/connect+json")
            .body(vec![0u8, 0, 0, 0, 9, b'{'])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert!(
            end_stream_error(response.bytes().await.unwrap()).is_some(),
            "{method}"
        );
    }

    agent.client().health().await.expect("the agent survived");
}

/// The error of the end-of-stream frame of a streaming response body.
fn end_stream_error(body: Bytes) -> Option<connect::RpcError> {
    let mut decoder = connect::FrameDecoder::default();
    decoder.push(&body);
    while let Some(frame) = decoder.next_frame().unwrap() {
        if frame.is_end_stream() {
            return connect::parse_end_stream(&frame.payload).unwrap();
        }
    }
    panic!("no end-of-stream frame in {body:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_token_and_signed_urls() {
    let token = "secret-token";
    let agent = TestAgent::start_with(
        cove(),
        AgentOptions {
            access_token: Some(token.into()),
            tcp: false,
        },
    )
    .await;
    let http = raw(&agent);

    // /health needs nothing.
    assert_eq!(
        http.get(format!("{BASE}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    // Without or with a wrong token: 401 on RPC and REST.
    let anonymous = agent.client();
    assert!(matches!(
        anonymous.commands().list().await,
        Err(Error::Auth(_))
    ));
    let wrong = agent.client().with_access_token("nope").unwrap();
    assert!(matches!(wrong.files().stat("/").await, Err(Error::Auth(_))));
    assert_eq!(
        http.get(format!("{BASE}/envs"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let client = agent.client().with_access_token(token).unwrap();
    client
        .files()
        .write("/tmp/signed.txt", "signed content")
        .await
        .unwrap();
    assert!(client.commands().list().await.unwrap().is_empty());

    // Signed download links, as the E2B SDKs build them.
    let sign = |path: &str, op: &str, expiration: Option<i64>| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut raw = format!("{path}:{op}::{token}");
        if let Some(exp) = expiration {
            raw.push_str(&format!(":{exp}"));
        }
        format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(sha2::Sha256::digest(raw.as_bytes()))
        )
    };
    let get = |query: Vec<(&'static str, String)>| {
        let http = http.clone();
        async move {
            http.get(format!("{BASE}/files"))
                .query(&query)
                .send()
                .await
                .unwrap()
        }
    };
    let path = "/tmp/signed.txt".to_owned();
    let ok = get(vec![
        ("path", path.clone()),
        ("signature", sign(&path, "read", None)),
    ])
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "signed content");
    let write_sig = get(vec![
        ("path", path.clone()),
        ("signature", sign(&path, "write", None)),
    ])
    .await;
    assert_eq!(write_sig.status(), 401);
    // envd's words for each refusal (`validateSigning`): the SDKs show them.
    let refusal = |message: &str| serde_json::json!({"code": 401, "message": message});
    assert_eq!(
        write_sig.json::<serde_json::Value>().await.unwrap(),
        refusal("invalid signature")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = get(vec![
        ("path", path.clone()),
        ("signature", sign(&path, "read", Some(now - 10))),
        ("signature_expiration", (now - 10).to_string()),
    ])
    .await;
    assert_eq!(expired.status(), 401);
    assert_eq!(
        expired.json::<serde_json::Value>().await.unwrap(),
        refusal("signature is already expired")
    );
    // A forged expiry is a wrong signature before it is an expired one.
    let forged = get(vec![
        ("path", path.clone()),
        ("signature", sign(&path, "read", Some(now + 60))),
        ("signature_expiration", (now - 10).to_string()),
    ])
    .await;
    assert_eq!(
        forged.json::<serde_json::Value>().await.unwrap(),
        refusal("invalid signature")
    );
    let fresh = get(vec![
        ("path", path.clone()),
        ("signature", sign(&path, "read", Some(now + 60))),
        ("signature_expiration", (now + 60).to_string()),
    ])
    .await;
    assert_eq!(fresh.status(), 200);
    let unsigned = get(vec![("path", path.clone())]).await;
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        unsigned.json::<serde_json::Value>().await.unwrap(),
        refusal("missing signature query parameter")
    );
    let wrong_token = http
        .get(format!("{BASE}/files"))
        .query(&[("path", path.clone())])
        .header("x-access-token", "not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong_token.json::<serde_json::Value>().await.unwrap(),
        refusal("access token present in header but does not match")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_endpoints() {
    let agent = TestAgent::start(cove()).await;
    let http = raw(&agent);
    agent
        .client()
        .files()
        .write("/tmp/big.txt", "z".repeat(100_000))
        .await
        .unwrap();

    // gzip when asked for, identity otherwise.
    let gz = http
        .get(format!("{BASE}/files?path=/tmp/big.txt"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let compressed = gz.bytes().await.unwrap();
    assert!(compressed.len() < 10_000);
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, "z".repeat(100_000));

    // Errors of /files.
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{BASE}/files?path=/tmp")).await, 400);
    assert_eq!(status(format!("{BASE}/files?path=/tmp/none")).await, 404);
    assert_eq!(
        status(format!("{BASE}/files?path=/tmp/big.txt&username=ghost")).await,
        401
    );
    let no_path = http
        .post(format!("{BASE}/files"))
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(no_path.status(), 400);

    // Metadata headers become user.e2b.* xattrs, visible in stat.
    let upload = http
        .post(format!("{BASE}/files?path=/home/user/meta.txt"))
        .header("content-type", "application/octet-stream")
        .header("x-metadata-Owner", "alice")
        .body("m")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let written: serde_json::Value = upload.json().await.unwrap();
    assert_eq!(written[0]["type"], "file");
    let info = agent.client().files().stat("meta.txt").await.unwrap();
    assert_eq!(
        info.metadata.get("owner").map(String::as_str),
        Some("alice")
    );

    // /init sets sandbox-wide env vars, default user and workdir; /envs shows them.
    let init = http
        .post(format!("{BASE}/init"))
        .json(&serde_json::json!({"envVars": {"GREETING": "hi"}, "defaultUser": "root", "defaultWorkdir": "/tmp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 204);
    let envs: serde_json::Value = http
        .get(format!("{BASE}/envs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envs["GREETING"], "hi");
    let out = agent
        .client()
        .commands()
        .run("echo $GREETING; id -u; pwd")
        .await
        .unwrap();
    assert_eq!(out.stdout, "hi\n0\n/tmp\n");
    let bad_init = http
        .post(format!("{BASE}/init"))
        .json(&serde_json::json!({"defaultUser": "ghost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_init.status(), 400);

    let metrics: serde_json::Value = http
        .get(format!("{BASE}/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metrics["mem_total"].as_u64().unwrap() > 0);
    assert!(metrics["disk_total"].as_u64().unwrap() > 0);
    assert!(metrics["cpu_count"].as_u64().unwrap() >= 1);
}

/// Sends `GET /files?path={path}` asking for the file upgrade, plus `extra` headers, and
/// reads the answer: its head (status line and headers, lower-cased names) and every byte
/// after it until the agent closes the connection.
async fn ask_file_upgrade<S>(mut stream: S, path: &str, extra: &str) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let request = format!(
        "GET /files?path={path} HTTP/1.1\r\nHost: agent\r\nConnection: upgrade\r\nUpgrade: {}\r\n{extra}\r\n",
        cove_proto::envd::FILE_UPGRADE
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, mut body) = raw_http::read_head(&mut stream).await;
    // A 200 keeps the connection open: read until its body is complete (by its length, or
    // its last chunk). A 101's bytes end with the connection.
    let length = raw_http::content_length(&head);
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete =
            length.is_some_and(|n| body.len() >= n) || (chunked && body.ends_with(b"0\r\n\r\n"));
        if complete || raw_http::read_some(&mut stream, &mut body).await == 0 {
            return (head, body);
        }
    }
}

/// Sends `path`'s upload the way `cove serve` sends one through the file upgrade: the
/// request without its body, with `extra` headers. On a `101`, writes `body` on the raw
/// stream, closes its sending side, and reads the agent's answer to its end. The answer's
/// head, and what followed it.
async fn upload_through_upgrade<S>(
    mut stream: S,
    path: &str,
    extra: &str,
    body: &[u8],
) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let request = format!(
        "POST /files?path={path} HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: upgrade\r\nUpgrade: {}\r\n{extra}\r\n",
        cove_proto::envd::FILE_UPGRADE
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, mut answer) = raw_http::read_head(&mut stream).await;
    if head.starts_with("http/1.1 101") {
        assert!(answer.is_empty(), "the agent wrote before the body came");
        stream.write_all(body).await.unwrap();
        stream.shutdown().await.unwrap();
    }
    // A refusal keeps the connection: its body ends at its length. The upgrade's answer
    // ends with the connection.
    let length = raw_http::content_length(&head);
    while length.is_none_or(|n| answer.len() < n) {
        if raw_http::read_some(&mut stream, &mut answer).await == 0 {
            break;
        }
    }
    (head, answer)
}

/// A large raw upload sent through the file upgrade (as `cove serve` sends one) is checked
/// first (a refusal is the ordinary answer), then taken from the raw stream, with `splice` on
/// the Unix socket and through the upgraded stream on TCP, and answered there. One cut short
/// leaves the old file as it was and nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn large_uploads_come_through_the_file_upgrade() {
    let agent = agent_with_tcp().await;
    let client = agent.client();
    let files = client.files();
    let unix = || async {
        tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap()
    };
    let tcp = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", agent.port.unwrap()))
            .await
            .unwrap()
    };
    let big: Vec<u8> = (0..(5 << 20) + 17).map(|i| (i % 251) as u8).collect();
    let length = |n: usize| format!("x-cove-file-length: {n}\r\n");
    let raw = "Content-Type: application/octet-stream\r\n";

    let extra = format!("{raw}{}X-Metadata-Kind: spliced\r\n", length(big.len()));
    let (head, answer) = upload_through_upgrade(unix().await, "up/big.bin", &extra, &big).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let answer = String::from_utf8(answer).unwrap();
    let (status, json) = answer.split_once('\n').unwrap();
    assert_eq!(status, "200", "{answer}");
    let written: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(written[0]["path"], "/home/user/up/big.bin", "{answer}");
    assert_eq!(written[0]["metadata"]["kind"], "spliced", "{answer}");
    assert!(files.read("up/big.bin").await.unwrap() == big);

    // Over TCP (no descriptor to splice from), replacing the file.
    let other: Vec<u8> = big.iter().rev().copied().collect();
    let extra = format!("{raw}{}", length(other.len()));
    let (head, answer) = upload_through_upgrade(tcp().await, "up/big.bin", &extra, &other).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        answer.starts_with(b"200\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(files.read("up/big.bin").await.unwrap() == other);

    // Cut short: the old content stays, and no temporary file is left.
    for stream in [
        Box::new(unix().await) as Box<dyn AsyncStream>,
        Box::new(tcp().await),
    ] {
        let extra = format!("{raw}{}", length(big.len()));
        let (head, answer) =
            upload_through_upgrade(stream, "up/big.bin", &extra, &big[..1 << 20]).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("400\n"), "{answer}");
        assert!(answer.contains("ended before its length"), "{answer}");
        assert!(files.read("up/big.bin").await.unwrap() == other);
        let names: Vec<String> = files
            .list("up", 1)
            .await
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(names, ["big.bin"]);
    }

    // Refusals are ordinary answers, before any byte is sent.
    for (path, extra, why) in [
        ("up/x.bin", raw.to_owned(), "x-cove-file-length"),
        (
            "up/x.bin",
            format!("{raw}{}Content-Encoding: gzip\r\n", length(10)),
            "raw body",
        ),
        (
            "up/x.bin",
            format!(
                "Content-Type: multipart/form-data; boundary=x\r\n{}",
                length(10)
            ),
            "raw body",
        ),
        ("up", format!("{raw}{}", length(10)), "is a directory"),
        ("", format!("{raw}{}", length(10)), "path query parameter"),
    ] {
        let (head, answer) = upload_through_upgrade(unix().await, path, &extra, b"").await;
        assert!(head.starts_with("http/1.1 400"), "{path} {extra}: {head}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains(why), "{path} {extra}: {answer}");
    }
    assert!(files.read("up/x.bin").await.is_err());
}

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for S {}

/// A large download asked for with the file upgrade (as `cove serve` asks) comes as `101`
/// with its length and then the raw bytes, sent with `sendfile` on the Unix socket and
/// through the upgraded stream on TCP; a small file, or one going out gzip-compressed,
/// gets the ordinary `200`.
#[tokio::test(flavor = "multi_thread")]
async fn large_downloads_come_through_the_file_upgrade() {
    let agent = agent_with_tcp().await;
    let client = agent.client();
    let files = client.files();
    let big: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
    files.write("big.bin", big.clone()).await.unwrap();
    files.write("small.txt", vec![b'a'; 1000]).await.unwrap();
    files.write("text.txt", vec![b'b'; 1 << 20]).await.unwrap();
    let unix = || async {
        tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap()
    };
    let tcp = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", agent.port.unwrap()))
            .await
            .unwrap()
    };

    let (head, body) = ask_file_upgrade(unix().await, "big.bin", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!("x-cove-file-length: {}", big.len())),
        "{head}"
    );
    assert!(head.contains("content-disposition: "), "{head}");
    assert!(head.contains("upgrade: cove-file"), "{head}");
    assert!(
        body == big,
        "{} bytes after the 101, not the file",
        body.len()
    );
    let (head, body) = ask_file_upgrade(tcp().await, "big.bin", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(body == big, "{} bytes after the 101 over TCP", body.len());

    // Asked for gzip, a file that does not compress goes out as it is: the sample read to
    // judge it first, then the rest with `sendfile`.
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), (1 << 20) + 5),
        &mut noise,
    )
    .unwrap();
    files.write("noise.bin", noise.clone()).await.unwrap();
    let (head, body) =
        ask_file_upgrade(unix().await, "noise.bin", "Accept-Encoding: gzip\r\n").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(
        body == noise,
        "{} bytes after the 101, not the file",
        body.len()
    );

    let (head, body) = ask_file_upgrade(unix().await, "small.txt", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, vec![b'a'; 1000]);
    let (head, _) = ask_file_upgrade(unix().await, "text.txt", "Accept-Encoding: gzip\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let (head, _) = ask_file_upgrade(unix().await, "missing.bin", "").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
}
