//! Requests refused before their bodies arrive, over raw connections.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Uploads to a sandbox that does not exist, at `address` (`host:port`) of a server or an
/// edge. The body comes 300 ms after the head, as a client that writes them separately can
/// send it: it must be taken, and the connection must carry the next request. A body
/// announced as 64 MiB is not waited for: the refusal comes at once, with
/// `Connection: close`.
pub async fn upload_to_an_unknown_sandbox(address: &str) {
    let head = |length: usize| {
        format!(
            "POST /files?path=/home/user/x HTTP/1.1\r\nHost: localhost\r\n\
             E2B-Sandbox-Id: nosuchsandbox\r\nE2B-Sandbox-Port: 49983\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        )
    };

    let body = "x".repeat(64 * 1024);
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head(body.len()).as_bytes()).await.unwrap();
    // Long past the moment the refusal is ready.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(body.as_bytes())
        .await
        .expect("the body is taken, not cut off");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("the connection is kept for the next request");
    let mut answers = String::new();
    stream
        .read_to_string(&mut answers)
        .await
        .expect("the connection carries both answers, not a reset");
    assert!(answers.starts_with("HTTP/1.1 502"), "{answers}");
    assert!(answers.contains("The sandbox was not found"), "{answers}");
    let (first, second) = answers.split_at(answers.find("HTTP/1.1 200").expect(&answers));
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    assert!(second.starts_with("HTTP/1.1 200 OK"), "{second}");

    // 64 MiB announced: not waited for.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head(64 << 20).as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}
