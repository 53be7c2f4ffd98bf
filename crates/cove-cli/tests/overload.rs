//! Overload from clients without (or with) an API key: floods of idle connections, slowloris
//! headers, bodies that never arrive or never end, huge headers. In each case another client
//! (the Rust SDK) can still create a sandbox, run a command in it and read /health, a sandbox
//! made before is still alive, and the server's open descriptors stay below its limit.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestServer, wait_until};
use futures::future::join_all;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// Where floods come from: loopback addresses other than the SDK's 127.0.0.1.
const FLOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// How long a wait for the server to act may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// These tests hold thousands of sockets themselves.
fn allow_many_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

async fn start(args: &[&str]) -> TestServer {
    allow_many_descriptors();
    let mut all = vec!["--warm-pool", "0"];
    all.extend_from_slice(args);
    TestServer::start_with_args(cove(), &all).await
}

/// The server process's descriptors, as /proc shows them.
struct Descriptors(u32);

impl Descriptors {
    fn of(server: &TestServer) -> Self {
        Self(server.pid().unwrap())
    }

    fn open(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.0))
            .unwrap()
            .count()
    }

    /// The client ports of the connections from `source` the server holds: its socket
    /// descriptors whose peer is `source` (other descriptors of its own coming and going
    /// meanwhile do not count).
    ///
    /// A set, because /proc reads its TCP table a page at a time and shows a line twice (or
    /// not at all) when other sockets come and go between two pages: counting lines once
    /// found 2208 connections where the server held 2200.
    fn peer_ports_from(&self, source: Ipv4Addr) -> HashSet<u16> {
        let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{}/fd", self.0))
            .unwrap()
            .flatten()
            .filter_map(|fd| {
                let target = std::fs::read_link(fd.path()).ok()?;
                let inode = target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?;
                Some(inode.to_owned())
            })
            .collect();
        // /proc shows an IPv4 address as its 32 bits in host order, in hex, and a port in hex.
        let peer = format!("{:08X}", u32::from_le_bytes(source.octets()));
        std::fs::read_to_string(format!("/proc/{}/net/tcp", self.0))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (address, port) = fields.get(2)?.split_once(':')?;
                (address == peer && inodes.contains(*fields.get(9)?))
                    .then(|| u16::from_str_radix(port, 16).ok())?
            })
            .collect()
    }

    /// Whether the server holds each of `streams`, opened from `source`.
    fn holds_all(&self, source: Ipv4Addr, streams: &[TcpStream]) -> bool {
        let held = self.peer_ports_from(source);
        streams
            .iter()
            .all(|stream| held.contains(&stream.local_addr().unwrap().port()))
    }

    /// The soft RLIMIT_NOFILE it runs with.
    fn limit(&self) -> usize {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.0)).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    fn assert_below_limit(&self) -> usize {
        let (open, limit) = (self.open(), self.limit());
        assert!(open < limit, "{open} descriptors open, limit {limit}");
        open
    }
}

async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(server).await
}

/// `count` connections from `source`, opened a batch at a time.
async fn connections(source: Ipv4Addr, server: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        let batch = (count - all.len()).min(200);
        for opened in join_all((0..batch).map(|_| connect_from(source, server))).await {
            all.push(opened.unwrap());
        }
    }
    all
}

/// As [`connections`], each batch accepted by the server (each of its connections among
/// those the server holds) before the next is opened: a handshake the kernel completed is not
/// yet a connection the server holds.
async fn accepted_connections(
    source: Ipv4Addr,
    server: SocketAddr,
    count: usize,
    fds: &Descriptors,
) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        let batch = connections(source, server, (count - all.len()).min(200)).await;
        wait_until("the server to accept a batch", DEADLINE, || async {
            fds.holds_all(source, &batch).then_some(())
        })
        .await;
        all.extend(batch);
    }
    all
}

/// Everything the server sends until it closes the connection (end of stream or reset);
/// fails the test if that takes longer than `within`.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) if got.len() < 64 * 1024 => got.extend_from_slice(&buf[..n]),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server closes the connection in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// One whole response on a kept-alive connection: its head and a body of `Content-Length`
/// bytes or in chunks.
async fn one_response(stream: &mut TcpStream) -> String {
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map(|n| n.trim().parse::<usize>().unwrap());
                let complete = match length {
                    Some(length) => got.len() >= end + 4 + length,
                    None => text.ends_with("0\r\n\r\n"),
                };
                if complete {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed in a response: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a response in time")
}

/// Whether the server has neither closed `stream` nor sent anything on it.
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Another client gets its work done: /health, a new sandbox with a command, and the
/// sandbox made before the attack still runs commands.
async fn everyone_else_is_served(server: &TestServer, existing: &Sandbox) {
    let health = reqwest::get(format!("{}/health", server.url()))
        .await
        .unwrap();
    assert!(health.status().is_success(), "{}", health.status());
    let config = server.config();
    let sbx = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        sbx.commands().run("echo served").await.unwrap().stdout,
        "served\n"
    );
    assert!(sbx.kill().await.unwrap());
    assert!(existing.is_running().await.unwrap());
    assert_eq!(
        existing.commands().run("echo alive").await.unwrap().stdout,
        "alive\n"
    );
}

async fn existing_sandbox(server: &TestServer) -> Sandbox {
    Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_leave_room_for_everyone_else() {
    const IDLE: usize = 4000;
    // Limits given, so that the test does not depend on this machine's descriptor limit; the
    // header timeout long, so that the idle connections stay for the whole test.
    let server = start(&[
        "--max-connections",
        "6000",
        "--max-connections-per-ip",
        "5000",
        "--header-read-timeout",
        "10m",
    ])
    .await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;
    let before = fds.open();

    let idle = accepted_connections(FLOOD, server.addr, IDLE, &fds).await;
    let held = fds.open();
    everyone_else_is_served(&server, &existing).await;
    assert!(idle.iter().all(still_open));
    // Read again until a read of /proc shows them all (see `peer_ports_from`): one the
    // server dropped meanwhile is never shown again.
    wait_until(
        "the server to still hold every idle connection",
        DEADLINE,
        || async { fds.holds_all(FLOOD, &idle).then_some(()) },
    )
    .await;
    let during = fds.assert_below_limit();
    eprintln!(
        "{IDLE} idle connections held: {before} descriptors before, {held} with them, {during} \
         after serving others, limit {}",
        fds.limit()
    );

    drop(idle);
    wait_until(
        "the server to let go of the closed connections",
        DEADLINE,
        || async { (fds.open() < before + 100).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_connection() {
    let server = start(&[
        "--max-connections",
        "300",
        "--max-connections-per-ip",
        "100",
        "--header-read-timeout",
        "10m",
    ])
    .await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;

    // One after the other, so that the server takes them in this order: the first 100 are
    // admitted, the rest refused at once.
    let mut flood = Vec::new();
    for _ in 0..250 {
        flood.push(connect_from(FLOOD, server.addr).await.unwrap());
    }
    let (admitted, refused) = flood.split_at_mut(100);
    for stream in refused.iter_mut() {
        let answer = until_closed(stream, DEADLINE).await;
        assert!(
            answer.starts_with("HTTP/1.1 503")
                && answer.contains("retry-after: 1")
                && answer.contains("too many connections from your address"),
            "{answer}"
        );
    }
    assert!(admitted.iter().all(still_open));
    everyone_else_is_served(&server, &existing).await;

    // Other addresses fill the rest: then the server as a whole is full, and says so.
    let mut others = Vec::new();
    for last in 3..=5 {
        for _ in 0..100 {
            others.push(connect_from(Ipv4Addr::new(127, 0, 0, last), server.addr).await);
        }
    }
    let mut full = connect_from(Ipv4Addr::new(127, 0, 0, 6), server.addr)
        .await
        .unwrap();
    let answer = until_closed(&mut full, DEADLINE).await;
    assert!(
        answer.starts_with("HTTP/1.1 503")
            && answer.contains("the server has too many connections"),
        "{answer}"
    );
    fds.assert_below_limit();

    drop(others);
    drop(flood);
    wait_until("the server to have room again", DEADLINE, || async {
        reqwest::get(format!("{}/health", server.url()))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    everyone_else_is_served(&server, &existing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_headers_are_cut_off() {
    const SLOW: usize = 200;
    let server = start(&["--header-read-timeout", "2s"]).await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;

    /// Sends `first`, then one header byte every 500 ms until the server closes.
    async fn trickle(mut stream: TcpStream, first: &'static [u8]) {
        stream.write_all(first).await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if stream.write_all(b"a").await.is_err() || !still_open(&stream) {
                return;
            }
        }
    }
    let mut slow = Vec::new();
    for stream in connections(FLOOD, server.addr, SLOW).await {
        slow.push(tokio::spawn(trickle(
            stream,
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        )));
    }
    // A kept-alive connection whose next request trickles in.
    let mut kept = connect_from(FLOOD, server.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    slow.push(tokio::spawn(trickle(kept, b"GET /health HTTP/1.1\r\n")));

    everyone_else_is_served(&server, &existing).await;
    let during = fds.assert_below_limit();
    tokio::time::timeout(DEADLINE, join_all(slow))
        .await
        .expect("the server cuts every slow header off");
    eprintln!("{SLOW} slowloris connections cut off; {during} descriptors open meanwhile");
    everyone_else_is_served(&server, &existing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_arrives_is_dropped() {
    let server = start(&["--body-read-timeout", "2s"]).await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;
    let (id, token) = server.raw_sandbox().await;

    let promise = "Content-Length: 10737418240\r\n\r\n";
    // To the API, with a valid key: the body is read, stalls, and the request fails (408).
    let mut api = connect_from(FLOOD, server.addr).await.unwrap();
    api.write_all(
        format!(
            "POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: {}\r\n\
             Content-Type: application/json\r\n{promise}{{\"templ",
            server.api_key
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut connect = connect_from(FLOOD, server.addr).await.unwrap();
    connect
        .write_all(
            format!(
                "POST /sandboxes/{id}/connect HTTP/1.1\r\nHost: x\r\nX-API-KEY: {}\r\n{promise}{{",
                server.api_key
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Through the proxy to a sandbox's agent, as an upload.
    let mut upload = connect_from(FLOOD, server.addr).await.unwrap();
    upload
        .write_all(
            format!(
                "POST /files?path=/home/user/never.bin HTTP/1.1\r\nHost: x\r\n\
                 E2B-Sandbox-Id: {id}\r\nE2B-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\n\
                 Content-Type: application/octet-stream\r\n{promise}first bytes"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // With a wrong key: answered at once, nothing read.
    let mut unauthenticated = connect_from(FLOOD, server.addr).await.unwrap();
    unauthenticated
        .write_all(
            format!("POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: cove_wrong\r\n{promise}")
                .as_bytes(),
        )
        .await
        .unwrap();

    everyone_else_is_served(&server, &existing).await;
    fds.assert_below_limit();

    let refused = until_closed(&mut unauthenticated, DEADLINE).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let api_answer = until_closed(&mut api, DEADLINE).await;
    assert!(api_answer.starts_with("HTTP/1.1 408"), "{api_answer}");
    assert!(
        api_answer.contains("delivered nothing for 2s"),
        "{api_answer}"
    );
    assert!(api_answer.contains("connection: close"), "{api_answer}");
    let connect_answer = until_closed(&mut connect, DEADLINE).await;
    assert!(
        connect_answer.starts_with("HTTP/1.1 408"),
        "{connect_answer}"
    );
    let upload_answer = until_closed(&mut upload, DEADLINE).await;
    assert!(upload_answer.starts_with("HTTP/1.1 408"), "{upload_answer}");
    assert!(
        upload_answer.contains("delivered nothing for 2s"),
        "{upload_answer}"
    );

    everyone_else_is_served(&server, &existing).await;
    fds.assert_below_limit();
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_headers_are_refused_without_being_buffered() {
    // Headers that stall are not cut off by their timeout here: only the bound refuses them.
    let server = start(&["--header-read-timeout", "10m"]).await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;

    // One huge header.
    let mut huge = connect_from(FLOOD, server.addr).await.unwrap();
    let mut request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend_from_slice(b"\r\n\r\n");
    // The server may close before all of it is written.
    let _ = huge.write_all(&request).await;
    let answer = until_closed(&mut huge, DEADLINE).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // Many small headers.
    let mut many = connect_from(FLOOD, server.addr).await.unwrap();
    let mut request = "GET /health HTTP/1.1\r\nHost: x\r\n".to_owned();
    for n in 0..300 {
        request.push_str(&format!("X-Header-{n}: y\r\n"));
    }
    request.push_str("\r\n");
    many.write_all(request.as_bytes()).await.unwrap();
    let answer = until_closed(&mut many, DEADLINE).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Many connections, each with a head larger than the bound and never finished: each is
    // refused as soon as the bound is reached, none is kept buffering.
    let mut partial = connections(FLOOD, server.addr, 200).await;
    let head = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
        &[b'b'; 200 * 1024],
    ]
    .concat();
    let answers = join_all(partial.iter_mut().map(|stream| {
        let head = head.clone();
        async move {
            let _ = stream.write_all(&head).await;
            until_closed(stream, DEADLINE).await
        }
    }))
    .await;
    for answer in answers {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    // A connection whose read buffer grew with an upload (reads of up to 256 KiB) still has
    // its next request's head bounded: an unfinished 200 KiB head is refused, not kept.
    let (id, token) = server.raw_sandbox().await;
    let mut uploader = connect_from(FLOOD, server.addr).await.unwrap();
    let body = vec![b'u'; 8 << 20];
    uploader
        .write_all(
            format!(
                "POST /files?path=/home/user/upload.bin HTTP/1.1\r\nHost: x\r\n\
                 E2B-Sandbox-Id: {id}\r\nE2B-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    uploader.write_all(&body).await.unwrap();
    let uploaded = one_response(&mut uploader).await;
    assert!(uploaded.starts_with("HTTP/1.1 200"), "{uploaded}");
    let _ = uploader.write_all(&head).await;
    let answer = until_closed(&mut uploader, DEADLINE).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // HTTP/2 (h2c) serves, and refuses a header list over the bound.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let health = h2
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert!(health.status().is_success());
    let too_big = h2
        .get(format!("{}/health", server.url()))
        .header("x-huge", "c".repeat(100 * 1024))
        .send()
        .await;
    assert!(
        too_big.as_ref().map_or(true, |r| r.status() == 431),
        "{too_big:?}"
    );

    everyone_else_is_served(&server, &existing).await;
    fds.assert_below_limit();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_chunked_body_is_cut_off() {
    let server = start(&[]).await;
    let fds = Descriptors::of(&server);
    let existing = existing_sandbox(&server).await;

    /// Sends `head`, then 64 KiB chunks for as long as the server takes them; then reads
    /// the answer.
    async fn endless(mut stream: TcpStream, head: String) -> String {
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = [
            format!("{:x}\r\n", 64 * 1024).into_bytes(),
            vec![b'x'; 64 * 1024],
            b"\r\n".to_vec(),
        ]
        .concat();
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move { while writer.write_all(&chunk).await.is_ok() {} });
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes");
        tokio::time::timeout(DEADLINE, writing)
            .await
            .expect("the server stops taking the body")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
    let to_api = tokio::spawn(endless(
        connect_from(FLOOD, server.addr).await.unwrap(),
        format!(
            "POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: {}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            server.api_key
        ),
    ));
    let to_health = tokio::spawn(endless(
        connect_from(FLOOD, server.addr).await.unwrap(),
        "POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
    ));

    everyone_else_is_served(&server, &existing).await;
    fds.assert_below_limit();
    let api_answer = to_api.await.unwrap();
    assert!(api_answer.starts_with("HTTP/1.1 413"), "{api_answer}");
    let health_answer = to_health.await.unwrap();
    assert!(health_answer.starts_with("HTTP/1.1 405"), "{health_answer}");
    assert!(
        health_answer.contains("connection: close"),
        "{health_answer}"
    );
    everyone_else_is_served(&server, &existing).await;
}

/// An echo server on port 8080 that answers any request with `101 Switching Protocols`.
const ECHO_SERVER: &str = r#"
import socket
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 8080))
listener.listen()
while True:
    conn, _ = listener.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1024)
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    while True:
        data = conn.recv(1024)
        if not data:
            break
        conn.sendall(data)
    conn.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn long_streams_and_upgrades_outlive_the_short_timeouts() {
    let server = start(&[
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--body-read-timeout",
        "1s",
        "--upgrade-idle-timeout",
        "8s",
    ])
    .await;
    let sbx = existing_sandbox(&server).await;

    // A command that runs longer than every timeout but the upgrade's streams its output.
    let slow = sbx.commands().run("sleep 5; echo done").await.unwrap();
    assert_eq!(slow.stdout, "done\n");
    // Transfers larger than any buffer go through whole.
    let data: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    sbx.files()
        .write("/home/user/big.bin", data.clone())
        .await
        .unwrap();
    assert!(sbx.files().read("/home/user/big.bin").await.unwrap() == data);

    // A WebSocket-like upgrade to a server in the sandbox.
    sbx.files()
        .write("/home/user/echo.py", ECHO_SERVER)
        .await
        .unwrap();
    let _echo = sbx
        .commands()
        .spawn(cove_sdk::Command::shell("python3 /home/user/echo.py"))
        .await
        .unwrap();
    let host = format!("8080-{}.localhost:{}", sbx.id(), server.addr.port());
    let upgrade = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    let mut upgraded = wait_until("the echo server to switch protocols", DEADLINE, || {
        let upgrade = upgrade.clone();
        async move {
            let mut stream = TcpStream::connect(server.addr).await.ok()?;
            stream.write_all(upgrade.as_bytes()).await.ok()?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.ok()?;
                head.push(byte[0]);
            }
            head.starts_with(b"HTTP/1.1 101").then_some(stream)
        }
    })
    .await;
    async fn echo(stream: &mut TcpStream, text: &[u8]) {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, text);
    }
    echo(&mut upgraded, b"ping").await;

    // A plain connection beside it, idle after one request, is closed by the idle timeout...
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut plain, DEADLINE).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ...while the upgraded one, as quiet meanwhile, still echoes,
    echo(&mut upgraded, b"pong").await;
    // and is closed only after its own, longer timeout.
    assert_eq!(until_closed(&mut upgraded, DEADLINE).await, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn descriptors_stay_below_the_limit_under_a_flood() {
    const LIMIT: usize = 512;
    let server = start(&[
        "--max-open-files",
        "512",
        "--max-connections",
        "5000",
        "--max-connections-per-ip",
        "5000",
        "--header-read-timeout",
        "3s",
    ])
    .await;
    let fds = Descriptors::of(&server);
    assert_eq!(fds.limit(), LIMIT);
    let existing = existing_sandbox(&server).await;

    // More connections than descriptors: the server takes them up to its reserve, the rest
    // wait in the kernel's queue (or time out connecting).
    let flood: Vec<TcpStream> = join_all((0..1500).map(|_| async {
        tokio::time::timeout(Duration::from_secs(5), connect_from(FLOOD, server.addr))
            .await
            .ok()
            .and_then(Result::ok)
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    // The server works through the whole flood (each connection it takes times out), and
    // its descriptors stay below the limit all the while.
    let mut flood = flood;
    let worked_through = join_all(
        flood
            .iter_mut()
            .map(|stream| until_closed(stream, DEADLINE)),
    );
    let most = std::cell::Cell::new(0);
    let watch = async {
        loop {
            most.set(most.get().max(fds.assert_below_limit()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = worked_through => {}
        _ = watch => {}
    }
    let most = most.get();
    assert!(
        most > LIMIT * 3 / 4,
        "the flood should have taken the server near its reserve: {most} descriptors at most"
    );
    fds.assert_below_limit();
    eprintln!(
        "flood of {} connections worked through: at most {most} descriptors open seen, limit {LIMIT}",
        flood.len()
    );
    drop(flood);
    wait_until("the server to serve again", DEADLINE, || async {
        reqwest::get(format!("{}/health", server.url()))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    everyone_else_is_served(&server, &existing).await;
    fds.assert_below_limit();
}
