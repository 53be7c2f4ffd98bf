//! The Rust SDK against a real `cove serve`: every call of `Sandbox`, `files()`,
//! `commands()` and `pty()`, and the error each category of failure comes back as.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, time::Duration};

use bytes::Bytes;
use cove_sdk::{
    Command, ConnectionConfig, CreateOptions, Error, FileKind, FsEventKind, Output, PtyOptions,
    Sandbox, Signal,
};
use cove_test_util::{TestServer, raw_http, wait_until};
use futures::{StreamExt, TryStreamExt};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

async fn server() -> TestServer {
    TestServer::start_with_args(cove(), &["--warm-pool", "0"]).await
}

async fn sandbox(server: &TestServer) -> Sandbox {
    Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_lifecycle_by_handle_and_by_id() {
    let server = server().await;
    let config = server.config();
    let sbx = Sandbox::create(
        &config,
        CreateOptions {
            template: Some("base".into()),
            timeout: Some(Duration::from_secs(60)),
            metadata: BTreeMap::from([("owner".into(), "sdk-test".into())]),
            envs: BTreeMap::from([("FROM_CREATE".into(), "yes".into())]),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(sbx.template_id(), "base");
    assert_eq!(
        sbx.commands()
            .run("echo $FROM_CREATE")
            .await
            .unwrap()
            .stdout,
        "yes\n"
    );

    // Listing and inspecting.
    let listed = Sandbox::list(&config).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata["owner"], "sdk-test");
    let info = sbx.info().await.unwrap();
    assert_eq!(info, Sandbox::info_by_id(&config, sbx.id()).await.unwrap());
    assert_eq!(info.listed.sandbox_id, sbx.id());

    // Timeouts: shorter and longer; `get` leaves it alone, `connect` extends it.
    let end = |info: &cove_sdk::rest::SandboxDetail| {
        humantime::parse_rfc3339(&info.listed.end_at).unwrap()
    };
    let started = humantime::parse_rfc3339(&info.listed.started_at).unwrap();
    sbx.set_timeout(Duration::from_secs(30)).await.unwrap();
    let short = end(&sbx.info().await.unwrap());
    assert!(short < started + Duration::from_secs(60), "{short:?}");
    let got = Sandbox::get(&config, sbx.id()).await.unwrap();
    assert_eq!(end(&got.info().await.unwrap()), short);
    assert_eq!(
        got.commands().run("echo via get").await.unwrap().stdout,
        "via get\n"
    );
    let connected = Sandbox::connect(&config, sbx.id(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let long = end(&connected.info().await.unwrap());
    assert!(long > short + Duration::from_secs(500), "{long:?}");
    Sandbox::set_timeout_by_id(&config, sbx.id(), Duration::from_secs(120))
        .await
        .unwrap();
    assert!(end(&sbx.info().await.unwrap()) < long);

    // Metrics and logs.
    let metrics = sbx.metrics().await.unwrap();
    assert!(metrics[0].mem_total > 0 && metrics[0].disk_total > 0);
    assert!(
        !Sandbox::metrics_by_id(&config, sbx.id())
            .await
            .unwrap()
            .is_empty()
    );
    let logs = sbx.logs().await.unwrap();
    assert!(
        logs.log_entries
            .iter()
            .any(|e| e.message.contains("agent listening")),
        "{logs:?}"
    );
    assert_eq!(logs.logs.len(), logs.log_entries.len());
    // Plain text with each line's own time: no colour codes from the agent's logger.
    assert!(
        logs.logs.iter().all(|l| !l.line.contains('\u{1b}')),
        "{logs:?}"
    );
    let listening = logs
        .log_entries
        .iter()
        .find(|e| e.message.contains("agent listening"))
        .unwrap();
    assert_eq!(listening.level, "info");

    // Templates.
    let templates = cove_sdk::templates::list(&config).await.unwrap();
    assert!(templates.iter().any(|t| t.template_id == "base"));

    // Kill, then every path reports it gone.
    assert!(connected.kill().await.unwrap());
    assert!(!sbx.kill().await.unwrap());
    assert!(!Sandbox::kill_by_id(&config, sbx.id()).await.unwrap());
    assert!(matches!(sbx.info().await, Err(Error::NotFound(_))));
    assert!(matches!(
        Sandbox::connect(&config, sbx.id(), None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        Sandbox::get(&config, sbx.id()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(sbx.metrics().await, Err(Error::NotFound(_))));
    assert!(matches!(sbx.logs().await, Err(Error::NotFound(_))));
    assert!(matches!(
        sbx.set_timeout(Duration::from_secs(10)).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        sbx.commands().run("true").await,
        Err(Error::SandboxGone(_))
    ));
    assert!(matches!(
        sbx.files().read("/etc/hostname").await,
        Err(Error::SandboxGone(_))
    ));
    assert!(!sbx.is_running().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_errors() {
    let server = server().await;
    let wrong = ConnectionConfig::new(&server.url(), "cove_not_a_key").unwrap();
    assert!(matches!(Sandbox::list(&wrong).await, Err(Error::Auth(_))));
    assert!(matches!(
        Sandbox::create(&wrong, CreateOptions::default()).await,
        Err(Error::Auth(_))
    ));
    assert!(matches!(
        Sandbox::info_by_id(&wrong, "whatever").await,
        Err(Error::Auth(_))
    ));
    assert!(matches!(
        cove_sdk::templates::list(&wrong).await,
        Err(Error::Auth(_))
    ));

    let config = server.config();
    let unknown = Sandbox::create(
        &config,
        CreateOptions {
            template: Some("no-such-template".into()),
            ..CreateOptions::default()
        },
    )
    .await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    assert!(matches!(
        Sandbox::connect(&config, "nosuchsandbox", None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        Sandbox::create(
            &config,
            CreateOptions {
                timeout: Some(Duration::from_secs(10_000_000)),
                ..CreateOptions::default()
            }
        )
        .await,
        Err(Error::InvalidArgument(_))
    ));

    // The E2B variables (and their COVE_ twins) configure the same thing.
    let (url, key) = (server.url(), server.api_key.clone());
    let from_env = ConnectionConfig::from_vars(|name| match name {
        "E2B_API_URL" | "E2B_SANDBOX_URL" => Some(url.clone()),
        "E2B_API_KEY" => Some(key.clone()),
        _ => None,
    })
    .unwrap();
    assert!(Sandbox::list(&from_env).await.unwrap().is_empty());

    // Nothing listens: a transport error, not a category.
    let nowhere = ConnectionConfig::new(
        &format!("http://127.0.0.1:{}", cove_test_util::free_port()),
        "k",
    )
    .unwrap();
    assert!(matches!(
        Sandbox::list(&nowhere).await,
        Err(Error::Transport(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_every_call() {
    let server = server().await;
    let sbx = sandbox(&server).await;
    let files = sbx.files();

    // Writes: bytes, text, a stream, many at once; reads: bytes, text, a stream.
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let written = files
        .write("/home/user/data/bin", binary.clone())
        .await
        .unwrap();
    assert_eq!(
        (written.path.as_str(), written.name.as_str()),
        ("/home/user/data/bin", "bin")
    );
    assert_eq!(
        files.read("/home/user/data/bin").await.unwrap(),
        Bytes::from(binary.clone())
    );
    files.write("relative.txt", "text ✓").await.unwrap();
    assert_eq!(
        files
            .read_to_string("/home/user/relative.txt")
            .await
            .unwrap(),
        "text ✓"
    );
    let chunks = futures::stream::iter(
        (0..8).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; 65_536]))),
    );
    files.write_stream("/tmp/streamed", chunks).await.unwrap();
    let mut streamed = Vec::new();
    let mut reader = files.read_stream("/tmp/streamed").await.unwrap();
    while let Some(chunk) = reader.try_next().await.unwrap() {
        streamed.extend_from_slice(&chunk);
    }
    assert_eq!(streamed.len(), 8 * 65_536);
    assert!(
        streamed
            .chunks(65_536)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8))
    );
    let many = files
        .write_many([
            ("/tmp/many/one", "1".to_owned()),
            ("/tmp/many/deeper/two", "22".to_owned()),
        ])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert!(matches!(
        files.read_to_string("/home/user/data/bin").await,
        Err(Error::InvalidArgument(_))
    ));

    // Listing by depth, stat, exists.
    let paths = |entries: Vec<cove_sdk::Entry>| {
        let mut paths: Vec<_> = entries.into_iter().map(|e| e.path).collect();
        paths.sort();
        paths
    };
    assert_eq!(
        paths(files.list("/tmp/many", 1).await.unwrap()),
        ["/tmp/many/deeper", "/tmp/many/one"]
    );
    assert_eq!(
        paths(files.list("/tmp/many", 2).await.unwrap()),
        ["/tmp/many/deeper", "/tmp/many/deeper/two", "/tmp/many/one"]
    );
    let two = files.stat("/tmp/many/deeper/two").await.unwrap();
    assert_eq!(
        (two.kind, two.size, two.owner.as_str()),
        (FileKind::File, 2, "user")
    );
    assert_eq!(files.stat("/tmp/many").await.unwrap().kind, FileKind::Dir);
    assert!(files.exists("/tmp/many/one").await.unwrap());
    assert!(!files.exists("/tmp/many/none").await.unwrap());

    // Directories, moves, removal.
    assert!(files.make_dir("/tmp/made/a/b").await.unwrap());
    assert!(!files.make_dir("/tmp/made/a/b").await.unwrap());
    let moved = files
        .rename("/tmp/many/one", "/tmp/made/a/b/one")
        .await
        .unwrap();
    assert_eq!(moved.path, "/tmp/made/a/b/one");
    assert!(!files.exists("/tmp/many/one").await.unwrap());
    files.remove("/tmp/made").await.unwrap();
    assert!(!files.exists("/tmp/made/a/b/one").await.unwrap());
    files.remove("/tmp/made").await.unwrap();

    // Missing paths are NotFound everywhere.
    assert!(matches!(files.stat("/nope").await, Err(Error::NotFound(_))));
    assert!(matches!(files.read("/nope").await, Err(Error::NotFound(_))));
    assert!(matches!(
        files.list("/nope", 1).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        files.rename("/nope", "/tmp/x").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        files.watch("/nope", false).await,
        Err(Error::NotFound(_))
    ));
    // A user the sandbox does not have is an authentication failure, as envd answers.
    let stranger = sbx.agent().clone().as_user("no-such-user");
    assert!(matches!(
        stranger.files().write("/tmp/x", "x").await,
        Err(Error::Auth(_))
    ));
    assert!(matches!(
        stranger.commands().run("true").await,
        Err(Error::Auth(_))
    ));
    let root = sbx.agent().clone().as_user("root");
    root.files().write("/root/mine", "x").await.unwrap();
    assert_eq!(root.files().stat("/root/mine").await.unwrap().owner, "root");
    // A place nobody may write is a 403 naming the cause, as a read there is, not a
    // server fault. (Like envd, the agent writes as root and gives the file to the user,
    // so the user's own permissions do not stop a write.)
    match root.files().write("/sys/mine", "y").await {
        Err(Error::Auth(message)) => {
            assert!(message.contains("Read-only file system"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // So is a directory that takes no new files: procfs answers "not found" to a create,
    // for a new name and beside an existing file alike (neither is written in place).
    for path in ["/proc/mine", "/proc/1/status"] {
        match root.files().write(path, "y").await {
            Err(Error::Auth(message)) => {
                assert!(message.contains("takes no new files"), "{path}: {message}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    sbx.kill().await.unwrap();
}

type Events = futures::stream::BoxStream<'static, cove_sdk::Result<cove_sdk::FsEvent>>;

async fn next(stream: &mut Events) -> cove_sdk::FsEvent {
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an event within 60 s")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_is_a_stream_recursive_or_not() {
    let server = server().await;
    let sbx = sandbox(&server).await;
    let files = sbx.files();
    files.make_dir("/tmp/w/sub").await.unwrap();

    let mut recursive = files.watch("/tmp/w", true).await.unwrap();
    let mut flat = files.watch("/tmp/w", false).await.unwrap();
    files.write("/tmp/w/sub/deep.txt", "1").await.unwrap();
    files.write("/tmp/w/top.txt", "2").await.unwrap();
    files.remove("/tmp/w/top.txt").await.unwrap();

    let first = next(&mut recursive).await;
    assert_eq!(
        (first.name.as_str(), first.kind),
        ("sub/deep.txt", FsEventKind::Create)
    );
    // The flat watch does not see inside `sub`: its first event is the top-level file.
    let first_flat = next(&mut flat).await;
    assert_eq!(
        (first_flat.name.as_str(), first_flat.kind),
        ("top.txt", FsEventKind::Create)
    );
    let mut kinds = Vec::new();
    while !kinds.contains(&(String::from("top.txt"), FsEventKind::Remove)) {
        let event = next(&mut recursive).await;
        kinds.push((event.name, event.kind));
    }
    assert!(
        kinds.contains(&("top.txt".into(), FsEventKind::Create)),
        "{kinds:?}"
    );
    sbx.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_spawn_and_drive() {
    let server = server().await;
    let sbx = sandbox(&server).await;
    let commands = sbx.commands();

    // run: output, and a non-zero exit as a typed error carrying both.
    let out = commands.run("echo out; echo err >&2").await.unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "out\n", "err\n")
    );
    match commands.run("echo partial; echo why >&2; exit 42").await {
        Err(Error::CommandExit(exit)) => {
            assert_eq!(exit.exit_code, 42);
            assert_eq!(
                (exit.stdout.as_str(), exit.stderr.as_str()),
                ("partial\n", "why\n")
            );
            assert_eq!(exit.error.as_deref(), Some("exit status 42"));
        }
        other => panic!("{other:?}"),
    }
    let configured = commands
        .run_command(
            Command::shell("echo $A $(pwd) $(id -un)")
                .env("A", "a")
                .cwd("/tmp"),
        )
        .await
        .unwrap();
    assert_eq!(configured.stdout, "a /tmp user\n");
    assert!(matches!(
        commands.spawn(Command::new("/no/such/program")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        commands
            .run_command(Command::shell("sleep 30").timeout(Duration::from_millis(300)))
            .await,
        Err(Error::Timeout(_))
    ));

    // spawn: a stream of output events, stdin, and the end.
    let mut cat = commands
        .spawn(Command::new("cat").stdin(true).tag("the-cat"))
        .await
        .unwrap();
    let listed = commands.list().await.unwrap();
    let entry = listed.iter().find(|p| p.pid == cat.pid()).unwrap();
    assert_eq!(
        (entry.cmd.as_str(), entry.tag.as_deref()),
        ("cat", Some("the-cat"))
    );
    cat.send_stdin("ping\n").await.unwrap();
    assert_eq!(
        cat.next().await.unwrap().unwrap(),
        Output::Stdout(Bytes::from_static(b"ping\n"))
    );
    // A second client attaches to the same process by pid and sees what follows.
    let mut attached = commands.connect(cat.pid()).await.unwrap();
    commands.send_stdin(cat.pid(), "pong\n").await.unwrap();
    assert_eq!(
        attached.next().await.unwrap().unwrap(),
        Output::Stdout(Bytes::from_static(b"pong\n"))
    );
    cat.close_stdin().await.unwrap();
    let rest = cat.wait().await.unwrap();
    assert_eq!((rest.exit_code, rest.stdout.as_str()), (0, "pong\n"));
    assert!(attached.next().await.is_none());
    assert_eq!(attached.exit_code(), Some(0));

    // Signals end a process with their name; kill twice is "already gone".
    let sleeper = commands
        .spawn(Command::new("sleep").arg("300"))
        .await
        .unwrap();
    sleeper.signal(Signal::Sigterm).await.unwrap();
    match sleeper.wait().await {
        Err(Error::CommandExit(exit)) => {
            assert_eq!(
                (exit.exit_code, exit.error.as_deref()),
                (-1, Some("signal: terminated"))
            )
        }
        other => panic!("{other:?}"),
    }
    let sleeper = commands
        .spawn(Command::new("sleep").arg("300"))
        .await
        .unwrap();
    let pid = sleeper.pid();
    assert!(sleeper.kill().await.unwrap());
    assert!(
        matches!(sleeper.wait().await, Err(Error::CommandExit(e)) if e.error.as_deref() == Some("signal: killed"))
    );
    wait_until(
        "the killed process to leave the list",
        Duration::from_secs(60),
        || async { (!commands.list().await.ok()?.iter().any(|p| p.pid == pid)).then_some(()) },
    )
    .await;
    assert!(!commands.kill(pid).await.unwrap());
    assert!(matches!(
        commands.connect(999_999).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        commands.send_stdin(999_999, "x").await,
        Err(Error::NotFound(_))
    ));
    sbx.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn terminals_type_resize_and_reattach() {
    let server = server().await;
    let sbx = sandbox(&server).await;
    let pty = sbx.pty();
    let mut terminal = pty
        .create(PtyOptions {
            cols: 90,
            rows: 20,
            cwd: Some("/tmp".into()),
            envs: [("SHELL_GREETING".to_owned(), "hi".to_owned())].into(),
        })
        .await
        .unwrap();
    let pid = terminal.pid();

    let screen = std::sync::Arc::new(tokio::sync::Mutex::new(String::new()));
    let reader = tokio::spawn({
        let screen = screen.clone();
        async move {
            while let Some(output) = terminal.next().await {
                if let Output::Pty(bytes) = output.unwrap() {
                    screen
                        .lock()
                        .await
                        .push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            terminal.exit_code()
        }
    });
    let shows = |text: &'static str| {
        let screen = screen.clone();
        async move {
            wait_until(text, Duration::from_secs(60), || {
                let screen = screen.clone();
                async move { screen.lock().await.contains(text).then_some(()) }
            })
            .await
        }
    };
    pty.send_input(pid, "echo $SHELL_GREETING-$TERM-$(pwd); stty size\n")
        .await
        .unwrap();
    shows("hi-xterm-256color-/tmp").await;
    shows("20 90").await;
    pty.resize(pid, 132, 43).await.unwrap();
    pty.send_input(pid, "stty size\n").await.unwrap();
    shows("43 132").await;

    // Another client follows the same terminal. It waits for the command's output (the echo
    // of the typed line holds only the sum) and the prompt after it: a Ctrl-D typed while
    // a command runs meets the terminal in canonical mode, which keeps it as a NUL that
    // readline then reads, and the shell would stay.
    let mut follower = pty.connect(pid).await.unwrap();
    pty.send_input(pid, "echo followed-$((40 + 2))\n")
        .await
        .unwrap();
    let at_prompt = |seen: &str| {
        seen.split_once("followed-42\r\n")
            .is_some_and(|(_, after)| after.ends_with("$ "))
    };
    let mut seen = String::new();
    let followed = tokio::time::timeout(Duration::from_secs(60), async {
        while !at_prompt(&seen) {
            if let Output::Pty(bytes) = follower.next().await.unwrap().unwrap() {
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "the follower never saw the output and the next prompt: {seen:?}"
    );

    // Ctrl-D ends the shell.
    pty.send_input(pid, vec![4u8]).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), reader).await;
    let ended = ended.unwrap_or_else(|_| {
        panic!(
            "the shell did not end on Ctrl-D; the screen: {:?}",
            screen.try_lock().map(|s| s.clone())
        )
    });
    assert_eq!(ended.unwrap(), Some(0));
    assert!(!pty.kill(pid).await.unwrap());
    sbx.kill().await.unwrap();
}

/// Large downloads leave the agent with `sendfile` and reach the client through the proxy
/// (which turns the agent's file upgrade back into a `200`, and splices the bytes into a
/// plain HTTP/1.1 client's socket): every byte arrives in order, also on a kept-alive
/// connection between other answers and over HTTP/2, a client that goes away mid-download
/// leaves the server serving, and a file cut short while it downloads ends the download with
/// an error, never with fewer bytes passed off as the whole file.
#[tokio::test(flavor = "multi_thread")]
async fn large_downloads_arrive_whole_or_fail() {
    let server = server().await;
    let raw = server.raw_sandbox().await;
    let sbx = Sandbox::connect(&server.config(), &raw.0, None)
        .await
        .unwrap();
    let pattern =
        |n: usize, salt: usize| -> Vec<u8> { (0..n).map(|i| ((i + salt) % 251) as u8).collect() };
    let content = pattern((5 << 20) + 123, 0);
    sbx.files()
        .write("/home/user/big.bin", content.clone())
        .await
        .unwrap();
    let read = sbx.files().read("/home/user/big.bin").await.unwrap();
    assert!(read == content, "{} bytes, not the file", read.len());

    // One plain HTTP/1.1 connection, kept alive: large downloads (their bytes spliced past
    // the server's HTTP stack), a small one (an ordinary answer) and an upload between them,
    // each answer whole and in its place.
    let (medium, small) = (pattern(300 << 10, 1), pattern(1000, 2));
    for (path, body) in [
        ("/home/user/medium.bin", &medium),
        ("/home/user/small.bin", &small),
    ] {
        sbx.files().write(path, body.clone()).await.unwrap();
    }
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    for (path, body) in [
        ("/home/user/big.bin", &content),
        ("/home/user/small.bin", &small),
        ("/home/user/medium.bin", &medium),
        ("/home/user/big.bin", &content),
    ] {
        let (head, got) = raw_download(&mut stream, &raw, path).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(got == *body, "{path}: {} bytes, not the file", got.len());
    }
    let (head, answer) = raw_upload(&mut stream, &raw, "/home/user/up.bin", &medium).await;
    assert!(head.starts_with("http/1.1 200"), "{head}\n{answer}");
    let (_, got) = raw_download(&mut stream, &raw, "/home/user/up.bin").await;
    assert!(got == medium, "{} bytes, not the upload", got.len());

    // A client that goes away in the middle of a download leaves the server serving.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut gone = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        gone.write_all(download_head(&raw, "/home/user/big.bin").as_bytes())
            .await
            .unwrap();
        let (head, _) = raw_http::read_head(&mut gone).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }

    // HTTP/2 (no socket of its own to splice into): the bytes go through the server.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = h2
        .get(format!("{}/files?path=/home/user/big.bin", server.url()))
        .header("e2b-sandbox-id", &raw.0)
        .header("e2b-sandbox-port", "49983")
        .header("x-access-token", &raw.1)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert!(answer.bytes().await.unwrap() == content);

    let made = sbx
        .commands()
        .run("head -c 64M /dev/zero > /home/user/long.bin")
        .await
        .unwrap();
    assert_eq!(made.exit_code, 0, "{made:?}");
    let mut stream = Box::pin(
        sbx.files()
            .read_stream("/home/user/long.bin")
            .await
            .unwrap(),
    );
    let mut got = stream.next().await.unwrap().unwrap().len();
    let cut = sbx
        .commands()
        .run("truncate -s 1M /home/user/long.bin")
        .await
        .unwrap();
    assert_eq!(cut.exit_code, 0, "{cut:?}");
    let mut failed = false;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => got += piece.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "the download of a file cut short ended cleanly after {got} bytes"
    );
    assert!(got < 64 << 20, "{got}");
    sbx.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_not_enough_space() {
    let server =
        TestServer::start_with_args(cove(), &["--warm-pool", "0", "--sandbox-disk-mb", "64"]).await;
    let sbx = sandbox(&server).await;
    let upload = sbx
        .files()
        .write("/home/user/big", vec![0u8; 100 << 20])
        .await;
    assert!(
        matches!(upload, Err(Error::NotEnoughSpace(_))),
        "{upload:?}"
    );
    sbx.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn code_runs_in_contexts_with_state() {
    use cove_sdk::{ExecutionEvent, RunCodeOptions};

    let server = server().await;
    let sbx = sandbox(&server).await;

    // State lives on in the default context; print is output, the last value a result.
    let first = sbx.run_code("import math\nx = 41").await.unwrap();
    assert!(
        first.error.is_none() && first.results.is_empty(),
        "{first:?}"
    );
    let second = sbx.run_code("print('adding')\nx + 1").await.unwrap();
    assert_eq!(second.text(), Some("42"));
    assert_eq!(second.stdout, ["adding\n"]);
    assert_eq!(second.execution_count, first.execution_count.map(|n| n + 1));
    let html = sbx
        .run_code("from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))")
        .await
        .unwrap();
    assert_eq!(html.results[0].html.as_deref(), Some("<b>x</b>"));
    assert!(!html.results[0].is_main_result);

    // An exception is the execution's error, not a failed call.
    let failed = sbx
        .run_code("import sys\nprint('before', file=sys.stderr)\n1 / 0")
        .await
        .unwrap();
    let error = failed.error.unwrap();
    assert_eq!(
        (error.name.as_str(), error.value.as_str()),
        ("ZeroDivisionError", "division by zero")
    );
    assert!(error.traceback.contains("1 / 0"), "{}", error.traceback);
    assert_eq!(failed.stderr, ["before\n"]);

    // Environment for one execution only.
    let with_env = sbx
        .run_code_with(
            "import os\nos.environ.get('ONLY_NOW')",
            RunCodeOptions {
                envs: [("ONLY_NOW".to_owned(), "yes".to_owned())].into(),
                ..RunCodeOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(with_env.text(), Some("yes"));
    assert_eq!(
        sbx.run_code("import os\nos.environ.get('ONLY_NOW')")
            .await
            .unwrap()
            .text(),
        None
    );

    // Contexts: separate state, own directory, listed, restarted, removed.
    let code = sbx.code_interpreter();
    let context = code
        .create_context(Some("python"), Some("/tmp"))
        .await
        .unwrap();
    assert_eq!(
        (context.language.as_str(), context.cwd.as_str()),
        ("python", "/tmp")
    );
    let in_context = |line: &'static str| {
        sbx.run_code_with(
            line,
            RunCodeOptions {
                context: Some(context.id.clone()),
                ..RunCodeOptions::default()
            },
        )
    };
    let isolated = in_context("import os\n(os.getcwd(), 'x' in globals())")
        .await
        .unwrap();
    assert_eq!(isolated.text(), Some("('/tmp', False)"));
    in_context("y = 5").await.unwrap();
    assert!(
        code.list_contexts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == context.id)
    );
    code.restart_context(&context.id).await.unwrap();
    let lost = in_context("y").await.unwrap();
    assert_eq!(lost.error.unwrap().name, "NameError");
    code.remove_context(&context.id).await.unwrap();
    assert!(
        !code
            .list_contexts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == context.id)
    );
    assert!(matches!(in_context("1").await, Err(Error::NotFound(_))));
    assert!(matches!(
        code.remove_context(&context.id).await,
        Err(Error::NotFound(_))
    ));

    // Other languages, and the ones the sandbox lacks.
    let bash = sbx
        .run_code_with(
            "echo from-bash",
            RunCodeOptions {
                language: Some("bash".into()),
                ..RunCodeOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(bash.stdout.concat(), "from-bash\n");
    let cobol = sbx
        .run_code_with(
            "DISPLAY 'x'",
            RunCodeOptions {
                language: Some("cobol".into()),
                ..RunCodeOptions::default()
            },
        )
        .await;
    assert!(matches!(cobol, Err(Error::InvalidArgument(_))), "{cobol:?}");

    // Output streams while the code runs: the code waits for a file only this test writes,
    // once it has seen the first line.
    let mut events = code
        .run_stream(
            "import os, time\nprint('early', flush=True)\nwhile not os.path.exists('/tmp/go'):\n    time.sleep(0.02)\nprint('late')",
            RunCodeOptions::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.try_next().await.unwrap() {
        if let ExecutionEvent::Stdout(text) = event {
            if text == "early\n" {
                sbx.files().write("/tmp/go", "").await.unwrap();
            }
            seen.push(text);
        }
    }
    // The first line came before the file was written; how the kernel cuts what follows
    // into messages is its own (a loaded host sent "late" and "\n" apart).
    assert_eq!(seen.first().map(String::as_str), Some("early\n"));
    assert_eq!(seen.concat(), "early\nlate\n");

    // A time limit interrupts the code and keeps the context's state.
    let slow = sbx
        .run_code_with(
            "import time\ntime.sleep(60)",
            RunCodeOptions {
                timeout: Some(Duration::from_secs(1)),
                ..RunCodeOptions::default()
            },
        )
        .await;
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    let after = sbx.run_code("x").await.unwrap();
    assert_eq!(after.text(), Some("41"), "{after:?}");

    sbx.kill().await.unwrap();
    assert!(matches!(
        sbx.run_code("1").await,
        Err(Error::SandboxGone(_))
    ));
}

/// Whether sandbox `id`'s log says its kernel was started ahead of use.
fn kernel_started_ahead(server: &TestServer, id: &str) -> bool {
    let log = server
        .state_dir()
        .join("sandboxes")
        .join(id)
        .join("sandbox.log");
    std::fs::read_to_string(log).is_ok_and(|log| log.contains("warm kernel ready"))
}

/// By default a code-interpreter create takes a warm sandbox whose kernel already runs, but
/// not one asking for little memory: an idle kernel holds about 60 MiB, and a warm
/// sandbox's limit cannot go below what it holds. That one starts its kernel on first use.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_code_interpreter_sandbox_starts_its_kernel_on_first_use() {
    let server = TestServer::start_with_args(cove(), &["--warm-pool", "1"]).await;
    let options = |memory_mb| CreateOptions {
        template: Some("code-interpreter-v1".into()),
        memory_mb,
        ..CreateOptions::default()
    };
    // The first code-interpreter create starts the pool of warm kernels.
    let first = Sandbox::create(&server.config(), options(None))
        .await
        .unwrap();
    first.kill().await.unwrap();
    let sandboxes = server.state_dir().join("sandboxes");
    wait_until(
        "a warm sandbox's kernel to be ready",
        Duration::from_secs(120),
        || async {
            let entries = std::fs::read_dir(&sandboxes).ok()?;
            entries
                .flatten()
                .any(|e| kernel_started_ahead(&server, &e.file_name().to_string_lossy()))
                .then_some(())
        },
    )
    .await;
    let small = Sandbox::create(&server.config(), options(Some(128)))
        .await
        .unwrap();
    assert!(!kernel_started_ahead(&server, small.id()));
    let result = small.run_code("1 + 1").await.unwrap();
    assert_eq!(result.text(), Some("2"));
    small.kill().await.unwrap();
    let warm = Sandbox::create(&server.config(), options(Some(512)))
        .await
        .unwrap();
    assert!(kernel_started_ahead(&server, warm.id()));
    warm.kill().await.unwrap();
}

/// Writes a raw upload of `body` to `path` on `stream` (HTTP/1.1, kept alive) and reads the
/// answer: its head, lowercased, and its body.
fn download_head((id, token): &(String, String), path: &str) -> String {
    format!(
        "GET /files?path={path} HTTP/1.1\r\nHost: x\r\nE2B-Sandbox-Id: {id}\r\n\
         E2B-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\n\r\n"
    )
}

/// A `GET /files` of `path` on `stream`: the answer's head (lower case) and its body.
async fn raw_download(
    stream: &mut tokio::net::TcpStream,
    raw: &(String, String),
    path: &str,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncWriteExt as _;
    stream
        .write_all(download_head(raw, path).as_bytes())
        .await
        .unwrap();
    let (head, mut body) = raw_http::read_head(stream).await;
    let length = raw_http::content_length(&head).expect("a download has a Content-Length");
    while body.len() < length {
        let read = raw_http::read_some(stream, &mut body).await;
        assert!(read > 0, "closed before the download ended");
    }
    assert_eq!(body.len(), length, "bytes beyond the answer's length");
    (head, body)
}

async fn raw_upload(
    stream: &mut tokio::net::TcpStream,
    (id, token): &(String, String),
    path: &str,
    body: &[u8],
) -> (String, String) {
    use tokio::io::AsyncWriteExt as _;
    let head = format!(
        "POST /files?path={path} HTTP/1.1\r\nHost: x\r\nE2B-Sandbox-Id: {id}\r\n\
         E2B-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let (head, mut answer) = raw_http::read_head(stream).await;
    let length = raw_http::content_length(&head).unwrap_or(0);
    while answer.len() < length {
        let read = raw_http::read_some(stream, &mut answer).await;
        assert!(read > 0, "closed before the answer ended");
    }
    (
        head,
        String::from_utf8_lossy(&answer[..length]).into_owned(),
    )
}

/// Large raw uploads reach the sandbox's agent past the server's HTTP stack (`splice` from a
/// plain HTTP/1.1 connection, the body's frames from an HTTP/2 one): every byte arrives, a
/// connection that carried one serves the next request, and an upload the client cuts short
/// leaves the old file as it was and nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn large_uploads_arrive_whole_or_leave_the_file_as_it_was() {
    use tokio::io::AsyncWriteExt as _;
    let server = server().await;
    let raw = server.raw_sandbox().await;
    let sbx = Sandbox::connect(&server.config(), &raw.0, None)
        .await
        .unwrap();
    let files = sbx.files();
    let pattern =
        |n: usize, salt: usize| -> Vec<u8> { (0..n).map(|i| ((i + salt) % 251) as u8).collect() };

    // The Rust SDK (HTTP/1.1).
    let content = pattern((5 << 20) + 123, 0);
    files
        .write("/home/user/up.bin", content.clone())
        .await
        .unwrap();
    assert!(files.read("/home/user/up.bin").await.unwrap() == content);

    // One connection, kept alive: two uploads taken past hyper with fewer bytes than the
    // front drains after a handler (so it keeps the connection), then a larger one, after
    // which it closes.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (small_a, small_b) = (pattern(300 << 10, 1), pattern((1 << 20) + 1, 2));
    for (path, body) in [
        ("/home/user/a.bin", &small_a),
        ("/home/user/b.bin", &small_b),
    ] {
        let (head, answer) = raw_upload(&mut stream, &raw, path, body).await;
        assert!(head.starts_with("http/1.1 200"), "{head}\n{answer}");
        assert!(!head.contains("connection: close"), "{head}");
        assert!(answer.contains(path), "{answer}");
    }
    let large = pattern(6 << 20, 3);
    let (head, _) = raw_upload(&mut stream, &raw, "/home/user/c.bin", &large).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(files.read("/home/user/a.bin").await.unwrap() == small_a);
    assert!(files.read("/home/user/b.bin").await.unwrap() == small_b);
    assert!(files.read("/home/user/c.bin").await.unwrap() == large);

    // HTTP/2 (no socket to splice from): the frames go down the upgraded connection.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let over_h2 = pattern((3 << 20) + 7, 4);
    let answer = h2
        .post(format!("{}/files?path=/home/user/h2.bin", server.url()))
        .header("e2b-sandbox-id", &raw.0)
        .header("e2b-sandbox-port", "49983")
        .header("x-access-token", &raw.1)
        .header("content-type", "application/octet-stream")
        .body(over_h2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    assert!(files.read("/home/user/h2.bin").await.unwrap() == over_h2);

    // Cut short: 1 MiB of a promised 5 MiB, then the client goes.
    let mut cut = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /files?path=/home/user/up.bin HTTP/1.1\r\nHost: x\r\nE2B-Sandbox-Id: {}\r\n\
         E2B-Sandbox-Port: 49983\r\nX-Access-Token: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        raw.0,
        raw.1,
        5 << 20
    );
    cut.write_all(head.as_bytes()).await.unwrap();
    cut.write_all(&pattern(1 << 20, 5)).await.unwrap();
    drop(cut);
    let leftovers = || async {
        files
            .list("/home/user", 1)
            .await
            .unwrap()
            .into_iter()
            .filter(|entry| entry.name.starts_with(".cove-upload-"))
            .count()
    };
    wait_until(
        "the cut upload's file is removed",
        Duration::from_secs(30),
        || async { (leftovers().await == 0).then_some(()) },
    )
    .await;
    assert!(files.read("/home/user/up.bin").await.unwrap() == content);

    // The server goes on.
    files
        .write("/home/user/up.bin", large.clone())
        .await
        .unwrap();
    assert!(files.read("/home/user/up.bin").await.unwrap() == large);
    sbx.kill().await.unwrap();
}
