//! `cove serve` as a real process: control plane, proxy, lifecycle and restart safety,
//! driven with the Rust SDK and raw HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox};
use cove_test_util::{TestServer, wait_until};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

async fn sandbox(server: &TestServer) -> Sandbox {
    Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_info_kill() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let options = CreateOptions {
        metadata: BTreeMap::from([("purpose".to_owned(), "test".to_owned())]),
        envs: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        timeout: Some(Duration::from_secs(120)),
        ..CreateOptions::default()
    };
    let sbx = Sandbox::create(&config, options).await.unwrap();
    assert_eq!(sbx.id().len(), 20);
    assert_eq!(sbx.template_id(), "base");

    let out = sbx
        .commands()
        .run("echo $GREETING $E2B_SANDBOX_ID; id -un; pwd")
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        format!("hello {}\nuser\n/home/user\n", sbx.id())
    );

    let listed = Sandbox::list(&config).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sandbox_id, sbx.id());
    assert_eq!(listed[0].metadata["purpose"], "test");

    let info = sbx.info().await.unwrap();
    assert_eq!(info.listed.sandbox_id, sbx.id());
    assert_eq!(
        info.domain.as_deref(),
        Some(format!("localhost:{}", server.addr.port()).as_str())
    );

    let metrics = sbx.metrics().await.unwrap();
    assert!(metrics[0].mem_total > 0);

    assert!(sbx.kill().await.unwrap());
    assert!(!sbx.kill().await.unwrap());
    assert!(Sandbox::list(&config).await.unwrap().is_empty());
    assert!(!sbx.is_running().await.unwrap());
    assert!(matches!(
        sbx.commands().run("true").await,
        Err(Error::SandboxGone(_))
    ));
    // Its writable layer is gone too.
    assert!(!server.state_dir().join("sandboxes").join(sbx.id()).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_sandboxes_are_killed_and_timeouts_extend() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let short = Sandbox::create(
        &config,
        CreateOptions {
            timeout: Some(Duration::from_secs(1)),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    let extended = Sandbox::create(
        &config,
        CreateOptions {
            timeout: Some(Duration::from_secs(1)),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    extended.set_timeout(Duration::from_secs(60)).await.unwrap();
    wait_until(
        "the short sandbox to expire",
        Duration::from_secs(60),
        || {
            let short = short.clone();
            async move { (!short.is_running().await.ok()?).then_some(()) }
        },
    )
    .await;
    assert!(extended.is_running().await.unwrap());
    let ids: Vec<_> = Sandbox::list(&config)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    assert_eq!(ids, vec![extended.id().to_owned()]);

    let too_long = Sandbox::create(
        &config,
        CreateOptions {
            timeout: Some(Duration::from_secs(100_000)),
            ..CreateOptions::default()
        },
    )
    .await;
    assert!(
        matches!(too_long, Err(Error::InvalidArgument(_))),
        "{too_long:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_and_teams() {
    let server = TestServer::start(cove()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2/sandboxes", server.url());

    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["code"], 401);
    assert!(body["message"].as_str().unwrap().contains("X-API-KEY"));
    let wrong = ConnectionConfig::new(&server.url(), "cove_wrong").unwrap();
    assert!(matches!(Sandbox::list(&wrong).await, Err(Error::Auth(_))));
    assert!(matches!(
        Sandbox::create(&wrong, CreateOptions::default()).await,
        Err(Error::Auth(_))
    ));

    // A key of another team, made with the CLI against the running server's state.
    let created = Command::new(cove())
        .args(["keys", "create", "--team", "other", "--state-dir"])
        .arg(server.state_dir())
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let other_key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let other = ConnectionConfig::new(&server.url(), &other_key).unwrap();

    let mine = sandbox(&server).await;
    assert!(Sandbox::list(&other).await.unwrap().is_empty());
    assert!(matches!(
        Sandbox::connect(&other, mine.id(), None).await,
        Err(Error::NotFound(_))
    ));
    assert!(!Sandbox::kill_by_id(&other, mine.id()).await.unwrap());
    assert!(mine.is_running().await.unwrap());

    let listed = Command::new(cove())
        .args(["keys", "list", "--json", "--state-dir"])
        .arg(server.state_dir())
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let other_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["team"] == "other")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = Command::new(cove())
        .args(["keys", "revoke", &other_id, "--state-dir"])
        .arg(server.state_dir())
        .status()
        .unwrap();
    assert!(revoked.success());
    assert!(matches!(Sandbox::list(&other).await, Err(Error::Auth(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_routes_and_errors() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server).await;
    let http = reqwest::Client::new();

    // An unknown sandbox: E2B's 502 body.
    let response = http
        .get(format!("{}/health", server.url()))
        .header("e2b-sandbox-id", "nosuchsandbox")
        .header("e2b-sandbox-port", "49983")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"sandboxId": "nosuchsandbox", "message": "The sandbox was not found", "code": 502})
    );

    // Only one of the two routing headers.
    let half = http
        .get(format!("{}/health", server.url()))
        .header("e2b-sandbox-id", sbx.id())
        .send()
        .await
        .unwrap();
    assert_eq!(half.status(), 400);

    // A server inside the sandbox, reached by host name, and a closed port.
    let _web = sbx
        .commands()
        .spawn(cove_sdk::Command::shell(
            "python3 -m http.server 8080 --bind 127.0.0.1 --directory /etc",
        ))
        .await
        .unwrap();
    let host = sbx.host(8080);
    assert_eq!(
        host,
        format!("8080-{}.localhost:{}", sbx.id(), server.addr.port())
    );
    let page = wait_until(
        "the web server in the sandbox",
        Duration::from_secs(60),
        || {
            let (http, url, host) = (
                http.clone(),
                format!("{}/hostname", server.url()),
                host.clone(),
            );
            async move {
                let response = http.get(url).header("host", host).send().await.ok()?;
                response.status().is_success().then_some(response)
            }
        },
    )
    .await;
    assert_eq!(page.text().await.unwrap(), "sandbox\n");
    let closed = http
        .get(server.url())
        .header("host", sbx.host(9999))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 502);
    let body: serde_json::Value = closed.json().await.unwrap();
    assert_eq!(
        body["message"],
        "The sandbox is running but port is not open"
    );
    assert_eq!(body["port"], 9999);

    // The agent's API without the sandbox's access token is refused by the agent.
    let anonymous = http
        .post(format!("{}/process.Process/List", server.url()))
        .header("e2b-sandbox-id", sbx.id())
        .header("e2b-sandbox-port", "49983")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_find_their_sandbox() {
    let server = TestServer::start(cove()).await;
    let first = sandbox(&server).await;
    let second = sandbox(&server).await;
    second
        .files()
        .write("/home/user/secret.txt", "second's file")
        .await
        .unwrap();
    first
        .files()
        .write("/home/user/secret.txt", "first's file")
        .await
        .unwrap();
    let token = second.info().await.unwrap().envd_access_token.unwrap();
    let signature = cove_proto::signing::sign(
        "/home/user/secret.txt",
        cove_proto::signing::Operation::Read,
        "",
        &token,
        None,
    );
    let http = reqwest::Client::new();
    let fetched = http
        .get(format!("{}/files", server.url()))
        .query(&[
            ("path", "/home/user/secret.txt"),
            ("signature", signature.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().await.unwrap(), "second's file");
    let forged = http
        .get(format!("{}/files", server.url()))
        .query(&[
            ("path", "/home/user/secret.txt"),
            ("signature", "v1_forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_survive_a_server_crash() {
    let mut server = TestServer::start(cove()).await;
    let sbx = sandbox(&server).await;
    sbx.files()
        .write("/home/user/keep.txt", "still here")
        .await
        .unwrap();
    let sleeper = sbx
        .commands()
        .spawn(cove_sdk::Command::shell("sleep 600"))
        .await
        .unwrap();

    // The others are warm sandboxes, ready or still being made: the crash must not leak them.
    let others: Vec<String> = sandbox_dirs(&server)
        .into_iter()
        .filter(|d| d != sbx.id())
        .collect();
    server.crash_and_restart().await;
    for id in &others {
        let cgroup = |v1: &str| {
            Path::new(&format!("/sys/fs/cgroup/{v1}/cove/{id}")).exists()
                || Path::new(&format!("/sys/fs/cgroup/cove/{id}")).exists()
        };
        assert!(
            !cgroup("pids") && !cgroup("memory"),
            "sandbox {id} outlived the crash"
        );
        assert!(!server.state_dir().join("sandboxes").join(id).exists());
    }

    let listed = Sandbox::list(&server.config()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let again = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    assert_eq!(
        again
            .files()
            .read_to_string("/home/user/keep.txt")
            .await
            .unwrap(),
        "still here"
    );
    let processes = again.commands().list().await.unwrap();
    assert!(
        processes.iter().any(|p| p.pid == sleeper.pid()),
        "{processes:?}"
    );
    assert!(again.kill().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_stays_out_of_sight() {
    let server = TestServer::start(cove()).await;
    let a = sandbox(&server).await;
    let b = sandbox(&server).await;
    let root = a.agent().clone().as_user("root");
    // Host directories outside the template are simply not there.
    let out = root
        .commands()
        .run("ls -a / /home; test -e /work && echo WORK; test -e /root/.cargo && echo CARGO; cat /etc/shadow | grep -c '\\$' || true")
        .await
        .unwrap();
    assert!(
        !out.stdout.contains("WORK") && !out.stdout.contains("CARGO"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.trim_end().ends_with('0'),
        "no password hash may be visible: {}",
        out.stdout
    );
    assert!(!out.stdout.contains("cloudsdk"), "{}", out.stdout);

    // Each sandbox has its own files and processes.
    a.files().write("/tmp/only-in-a", "a").await.unwrap();
    assert!(!b.files().exists("/tmp/only-in-a").await.unwrap());
    let _sleep = a
        .commands()
        .spawn(cove_sdk::Command::shell("sleep 321"))
        .await
        .unwrap();
    let ps = b.commands().run("ps -eo args").await.unwrap();
    assert!(!ps.stdout.contains("sleep 321"), "{}", ps.stdout);
    let pid1 = b
        .commands()
        .run("cat /proc/1/cmdline | tr '\\0' ' '")
        .await
        .unwrap();
    assert!(pid1.stdout.starts_with("cove-agent"), "{}", pid1.stdout);

    // Root inside is not root outside: the sandbox's files belong to its own uid range, as
    // the host sees them through a process of the sandbox (found in its cgroup).
    a.files().write("/home/user/owned", "x").await.unwrap();
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/cove/{}/cgroup.procs", a.id()))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/cove/{}/cgroup.procs", a.id()))
            })
            .unwrap();
    let pid1 = procs.lines().next().unwrap();
    let host_view = std::fs::metadata(format!("/proc/{pid1}/root/home/user/owned")).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&host_view);
    assert!(
        uid >= cove_runtime::userns::FIRST_BASE + 1000,
        "host uid {uid}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_leaves_sandboxes_running() {
    let mut server = TestServer::start_with(cove(), false).await;
    let sbx = sandbox(&server).await;
    sbx.files()
        .write("/home/user/kept.txt", "kept")
        .await
        .unwrap();
    server.terminate_and_restart().await;
    let again = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    assert_eq!(
        again
            .files()
            .read_to_string("/home/user/kept.txt")
            .await
            .unwrap(),
        "kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn private_sandboxes_need_their_traffic_token() {
    let server = TestServer::start(cove()).await;
    let options = CreateOptions {
        allow_public_traffic: Some(false),
        ..CreateOptions::default()
    };
    let sbx = Sandbox::create(&server.config(), options).await.unwrap();
    let token = sbx.traffic_access_token().unwrap().to_owned();
    let _web = sbx
        .commands()
        .spawn(cove_sdk::Command::shell(
            "python3 -m http.server 8080 --bind 127.0.0.1 --directory /etc",
        ))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let mut request = http
            .get(format!("{}/hostname", server.url()))
            .header("host", sbx.host(8080));
        if let Some(token) = token {
            request = request.header("e2b-traffic-access-token", token);
        }
        request.send()
    };
    let missing = get(None).await.unwrap();
    assert_eq!(missing.status(), 403);
    assert!(missing.text().await.unwrap().contains("is missing"));
    assert_eq!(get(Some("wrong")).await.unwrap().status(), 403);
    let page = wait_until("the private web server", Duration::from_secs(60), || {
        let response = get(Some(&token));
        async move { response.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    assert_eq!(page.text().await.unwrap(), "sandbox\n");
    // The code interpreter's port, which the server reaches without a tunnel, too.
    let interpreter = |token: Option<&str>| {
        let mut request = http
            .get(format!("{}/health", server.url()))
            .header("host", sbx.host(cove_proto::envd::CODE_INTERPRETER_PORT));
        if let Some(token) = token {
            request = request.header("e2b-traffic-access-token", token);
        }
        request.send()
    };
    assert_eq!(interpreter(None).await.unwrap().status(), 403);
    assert_eq!(interpreter(Some("wrong")).await.unwrap().status(), 403);
    let health = interpreter(Some(&token)).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "\"OK\"");
    // The agent's own port is guarded by the access token, not the traffic token.
    assert!(sbx.commands().run("true").await.is_ok());
}

/// The sandboxes under the server's state directory (running, warm or being made).
fn sandbox_dirs(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.state_dir().join("sandboxes"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_sandboxes_are_handed_out_as_asked_and_never_outlive_the_server() {
    let mut server = TestServer::launch(cove(), false, &["--warm-pool", "1"]).await;
    // One warm sandbox of each kind.
    let warm = wait_until("two warm sandboxes", Duration::from_secs(30), || async {
        let dirs = sandbox_dirs(&server);
        (dirs.len() == 2).then_some(dirs)
    })
    .await;

    let options = CreateOptions {
        envs: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        cpu_count: Some(1),
        memory_mb: Some(256),
        allow_internet_access: Some(false),
        ..CreateOptions::default()
    };
    let sbx = Sandbox::create(&server.config(), options).await.unwrap();
    assert!(
        warm.iter().any(|w| w == sbx.id()),
        "{} was not warm",
        sbx.id()
    );
    let out = sbx
        .commands()
        .run("echo $GREETING $E2B_SANDBOX_ID")
        .await
        .unwrap();
    assert_eq!(out.stdout, format!("hello {}\n", sbx.id()));
    // Its limits are the ones asked for, not the warm sandbox's defaults.
    let cgroup = |v1: &str, v2: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{v1}"))
            .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/{v2}")))
            .unwrap()
    };
    let memory = cgroup(
        &format!("memory/cove/{}/memory.limit_in_bytes", sbx.id()),
        &format!("cove/{}/memory.max", sbx.id()),
    );
    assert_eq!(memory.trim(), (256u64 << 20).to_string());
    let quota = cgroup(
        &format!("cpu/cove/{}/cpu.cfs_quota_us", sbx.id()),
        &format!("cove/{}/cpu.max", sbx.id()),
    );
    assert!(quota.starts_with("100000"), "{quota}");
    // Only its owner lists it, and its agent wants the token it was handed out with.
    assert_eq!(Sandbox::list(&server.config()).await.unwrap().len(), 1);
    let unauthorized = reqwest::Client::new()
        .post(format!("{}/filesystem.Filesystem/ListDir", server.url()))
        .header("e2b-sandbox-id", sbx.id())
        .header("e2b-sandbox-port", "49983")
        .header("content-type", "application/json")
        .body(r#"{"path":"/"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unauthorized, reqwest::StatusCode::UNAUTHORIZED);

    // The pool refills; a stop ends the warm sandboxes but not the one handed out.
    wait_until("the pool to refill", Duration::from_secs(30), || async {
        (sandbox_dirs(&server).len() == 3).then_some(())
    })
    .await;
    server.terminate_and_restart().await;
    let dirs = sandbox_dirs(&server);
    assert!(dirs.iter().any(|d| d == sbx.id()), "{dirs:?}");
    assert!(
        warm.iter().all(|w| w == sbx.id() || !dirs.contains(w)),
        "{dirs:?}"
    );
    let again = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    let out = again.commands().run("echo $GREETING").await.unwrap();
    assert_eq!(out.stdout, "hello\n");
}

/// A multipart upload whose chunked body ends a moment after its closing boundary (as the
/// JS SDK's fetch sends it) is answered, not cut off: the agent reads the body to its end
/// before answering, so the proxy is never left writing into a closed connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_that_ends_late_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start(cove()).await;
    let (id, token) = server.raw_sandbox().await;
    let boundary = "cove-test-boundary";
    let chunks = [
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"late.txt\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ),
        "written late".to_owned(),
        "\r\n".to_owned(),
        format!("--{boundary}--\r\n"),
    ];
    let mut stream = tokio::net::TcpStream::connect(server.url().trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /files?path=/home/user/late.txt HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         E2B-Sandbox-Id: {id}\r\nE2B-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("/home/user/late.txt"), "{answer}");
    let sbx = Sandbox::connect(&server.config(), &id, None).await.unwrap();
    assert_eq!(
        sbx.files()
            .read_to_string("/home/user/late.txt")
            .await
            .unwrap(),
        "written late"
    );
}

/// A request refused before its body arrives keeps its connection (see
/// [`common::refusals::upload_to_an_unknown_sandbox`]).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_refused_before_its_body_arrives_keeps_its_connection() {
    let server = TestServer::start(cove()).await;
    common::refusals::upload_to_an_unknown_sandbox(server.url().trim_start_matches("http://"))
        .await;
}
