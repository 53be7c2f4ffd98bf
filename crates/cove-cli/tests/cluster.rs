//! A cluster as an operator runs it: two real `cove serve --role node` processes and one
//! `cove serve --role edge` on one real PostgreSQL (Debian's server, a cluster of the test's
//! own), each with its own state directory and port. The nodes register and report
//! themselves (`cove nodes list`); each knows where the other's sandboxes are; the edge
//! carries every sandbox's traffic to its node (headers, `{port}-{id}.` hosts, signed file
//! URLs); a node killed with SIGKILL is marked down within the heartbeat bound and its
//! sandboxes are reported lost, never moved, until it comes back and takes them over; a
//! drained node takes no new sandboxes until undrained; a second process claiming a running
//! node's id is refused. Skipped (with a message) where PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use assert_cmd::Command;
use common::cluster::{DOWN_AFTER, echo, edge, node, nodes, offline};
use cove_sdk::{Error, Sandbox};
use cove_test_util::{TestPostgres, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Each node's state, by id.
fn states(database: &str) -> Vec<(String, String)> {
    let listed: serde_json::Value =
        serde_json::from_str(&nodes(database, &["list", "--json"])).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A server for a sandbox's 127.0.0.1:9000 that switches a request asking `Upgrade: echo`
/// to its own protocol (101, as a WebSocket server does) and then echoes every byte; any
/// other request is answered 400, so a relay that drops the upgrade headers shows.
const UPGRADE_ECHO_SERVER: &str = r#"
import socket, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 9000))
listener.listen()
def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = [line.lower().replace(b" ", b"") for line in head.split(b"\r\n")[1:]]
    if b"upgrade:echo" not in lines or not any(
        l.startswith(b"connection:") and b"upgrade" in l for l in lines
    ):
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()
        return
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n" + rest
    )
    while True:
        data = conn.recv(4096)
        if not data:
            break
        conn.sendall(data)
    conn.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Over a raw connection to the edge at `edge` (`host:port`): a request for `host` asking
/// `Upgrade: echo`, then `ping` over the upgraded connection, which must come back. The
/// answer's head (lower case) when it does; what went wrong otherwise.
async fn echo_through_upgrade(edge: &str, host: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(edge)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send the request: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("read the answer's head: {e} (so far {head:?})"))?;
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101 ") {
            let mut body = vec![0; 512];
            let read = stream.read(&mut body).await.unwrap_or(0);
            return Err(format!(
                "not switched: {head:?} {:?}",
                String::from_utf8_lossy(&body[..read])
            ));
        }
        stream
            .write_all(b"ping")
            .await
            .map_err(|e| format!("write on the upgraded connection: {e}"))?;
        let mut back = [0; 4];
        stream
            .read_exact(&mut back)
            .await
            .map_err(|e| format!("read on the upgraded connection: {e}"))?;
        if &back != b"ping" {
            return Err(format!("echoed {back:?}"));
        }
        Ok(head)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// The message of a REST error of `status`.
fn api_error(err: Error, status: u16) -> String {
    match err {
        Error::Api {
            status: got,
            message,
        } if got == status => message,
        Error::NotFound(message) if status == 404 => message,
        other => panic!("wanted a {status}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_report_themselves_and_a_dead_one_loses_its_sandboxes_until_it_returns() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let (mut edge, domain) = edge(&url).await;
    let mut a = node("node-a", &url, &domain).await;
    let mut b = node("node-b", &url, &domain).await;
    assert_eq!(
        states(&url),
        [
            ("node-a".into(), "up".into()),
            ("node-b".into(), "up".into())
        ]
    );
    let listed: serde_json::Value =
        serde_json::from_str(&nodes(&url, &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["address"], format!("{}", a.url()));
    assert!(listed[0]["capacity"]["cpus"].as_u64().unwrap() >= 1);
    assert!(listed[0]["capacity"]["memory_free_mb"].as_u64().unwrap() > 0);
    let table = nodes(&url, &["list"]);
    assert!(table.contains("node-b") && table.contains("up"), "{table}");

    // A second process with a running node's id is refused.
    let other_state = tempfile::tempdir().unwrap();
    let twin = Command::new(common::cove())
        .args([
            "serve",
            "--warm-pool",
            "0",
            "--database",
            &url,
            "--role",
            "node",
        ])
        .args(["--node-id", "node-a", "--listen"])
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(other_state.path())
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&twin.stderr);
    assert!(!twin.status.success(), "{said}");
    assert!(
        said.contains("another cove serve runs node node-a on this database"),
        "{said}"
    );

    // Each node runs its own sandboxes and knows where the other's are.
    let on_a = Sandbox::create(&a.config(), offline()).await.unwrap();
    let on_b = Sandbox::create(&b.config(), offline()).await.unwrap();
    echo(&on_a, "a").await;
    echo(&on_b, "b").await;
    let elsewhere = api_error(Sandbox::get(&b.config(), on_a.id()).await.unwrap_err(), 404);
    assert!(elsewhere.contains("runs on node node-a"), "{elsewhere}");

    // The edge carries each sandbox's traffic to its node: by headers (the SDK's, with the
    // edge as its sandbox URL), by host, and by a signed file URL.
    let through_edge = Sandbox::connect(&a.config().with_sandbox_url(&edge.url()), on_a.id(), None)
        .await
        .unwrap();
    echo(&through_edge, "via-edge").await;
    through_edge
        .files()
        .write("/home/user/note.txt", "through the edge")
        .await
        .unwrap();
    let on_b_via_edge =
        Sandbox::connect(&b.config().with_sandbox_url(&edge.url()), on_b.id(), None)
            .await
            .unwrap();
    echo(&on_b_via_edge, "b-via-edge").await;
    let _web = on_a
        .commands()
        .spawn(cove_sdk::Command::shell(
            "python3 -m http.server 8000 --bind 127.0.0.1 --directory /home/user",
        ))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let host = format!("8000-{}.{domain}", on_a.id());
    let listing = wait_until(
        "the sandbox's server, by host through the edge",
        Duration::from_secs(20),
        || {
            let (http, host, edge) = (http.clone(), host.clone(), edge.url());
            async move {
                let answer = http
                    .get(format!("{edge}/"))
                    .header("host", host)
                    .send()
                    .await
                    .ok()?;
                answer.status().is_success().then_some(answer)
            }
        },
    )
    .await;
    assert!(listing.text().await.unwrap().contains("note.txt"));
    // An upgraded connection (as a WebSocket's) to a server in the sandbox, relayed both
    // ways through the edge and the node.
    on_a.files()
        .write("/home/user/echo.py", UPGRADE_ECHO_SERVER)
        .await
        .unwrap();
    let _echo = on_a
        .commands()
        .spawn(cove_sdk::Command::shell("python3 /home/user/echo.py"))
        .await
        .unwrap();
    let echo_host = format!("9000-{}.{domain}", on_a.id());
    let edge_addr = edge.url().trim_start_matches("http://").to_owned();
    let last_failure = Mutex::new(String::new());
    let switched = wait_until(
        "ping to come back over an upgraded connection through the edge",
        Duration::from_secs(30),
        || {
            let (edge_addr, echo_host, last_failure) = (&edge_addr, &echo_host, &last_failure);
            async move {
                match echo_through_upgrade(edge_addr, echo_host).await {
                    Ok(head) => Some(head),
                    Err(why) => {
                        let mut last = last_failure.lock().unwrap();
                        if *last != why {
                            eprintln!("upgrade through the edge, not yet: {why}");
                            *last = why;
                        }
                        None
                    }
                }
            }
        },
    )
    .await;
    assert!(switched.contains("\r\nupgrade: echo\r\n"), "{switched}");
    let store = cove_server::open_store(a.state_dir(), Some(&url)).unwrap();
    let (record, _) = store.placed(Some(on_a.id())).unwrap().remove(0);
    let signature = cove_proto::signing::sign(
        "/home/user/note.txt",
        cove_proto::signing::Operation::Read,
        "user",
        &record.envd_access_token,
        None,
    );
    let signed = http
        .get(format!("{}/files", edge.url()))
        .query(&[
            ("path", "/home/user/note.txt"),
            ("username", "user"),
            ("signature", &signature),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    assert_eq!(signed.text().await.unwrap(), "through the edge");
    let forged = http
        .get(format!("{}/files", edge.url()))
        .query(&[
            ("path", "/home/user/note.txt"),
            ("username", "user"),
            ("signature", "v1_forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let unknown = http
        .get(format!("{}/health", edge.url()))
        .header("e2b-sandbox-id", "nosuchsandbox")
        .header("e2b-sandbox-port", "49983")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 502);
    common::refusals::upload_to_an_unknown_sandbox(edge.url().trim_start_matches("http://")).await;

    // Node a dies: within the bound it is down, and its sandbox is reported lost.
    a.crash();
    let died = Instant::now();
    wait_until("node-a to be marked down", DOWN_AFTER * 3, || {
        let url = url.clone();
        async move {
            states(&url)
                .contains(&("node-a".into(), "down".into()))
                .then_some(())
        }
    })
    .await;
    let noticed = died.elapsed();
    eprintln!(
        "node-a marked down {} ms after it died",
        noticed.as_millis()
    );
    let lost = api_error(Sandbox::get(&b.config(), on_a.id()).await.unwrap_err(), 404);
    assert!(
        lost.contains("is lost: its node node-a stopped answering"),
        "{lost}"
    );
    echo(&on_b, "b-goes-on").await;
    let lost_via_edge = through_edge.commands().run("echo lost").await.unwrap_err();
    assert!(
        format!("{lost_via_edge:?}").contains("lost"),
        "{lost_via_edge:?}"
    );
    echo(&on_b_via_edge, "b-via-edge-goes-on").await;

    // It comes back: up again, and its sandbox (which ran on) is its own again.
    a.start_again().await;
    assert!(states(&url).contains(&("node-a".into(), "up".into())));
    wait_until(
        "the edge to route to node-a again",
        Duration::from_secs(10),
        || {
            let sandbox = &through_edge;
            async move { sandbox.commands().run("echo back").await.ok() }
        },
    )
    .await;
    let back = Sandbox::connect(&a.config(), on_a.id(), None)
        .await
        .unwrap();
    echo(&back, "a-again").await;
    let ids_on_a: Vec<String> = Sandbox::list(&a.config())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    assert_eq!(
        ids_on_a,
        [on_a.id().to_owned()],
        "node-a took over only its own"
    );

    // Drained, node b takes no new sandboxes (its own run on); undrained, it does again.
    nodes(&url, &["drain", "node-b"]);
    wait_until("node-b to refuse creates", Duration::from_secs(10), || {
        let config = b.config();
        async move {
            match Sandbox::create(&config, offline()).await {
                Err(Error::Api {
                    status: 503,
                    message,
                }) => Some(message),
                Ok(made) => {
                    made.kill().await.unwrap();
                    None
                }
                Err(other) => panic!("a create on a draining node: {other:?}"),
            }
        }
    })
    .await;
    assert!(states(&url).contains(&("node-b".into(), "draining".into())));
    echo(&on_b, "b-while-draining").await;
    nodes(&url, &["undrain", "node-b"]);
    let again = wait_until(
        "node-b to take creates again",
        Duration::from_secs(10),
        || {
            let config = b.config();
            async move { Sandbox::create(&config, offline()).await.ok() }
        },
    )
    .await;
    again.kill().await.unwrap();

    // A node stopped by its operator says it is down at once.
    back.kill().await.unwrap();
    a.stop();
    assert!(states(&url).contains(&("node-a".into(), "down".into())));
    on_b.kill().await.unwrap();
    b.stop();
    edge.stop();
    drop(postgres);
}
