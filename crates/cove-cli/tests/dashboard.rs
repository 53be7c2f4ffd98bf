//! The dashboard's server side (`/ui`, `GET /cove/sandboxes/{id}/terminal`) against a real
//! `cove serve` and real sandboxes: the terminal WebSocket refuses a missing or wrong key and
//! another team's sandbox before the upgrade, and with the right key bridges to a real shell
//! on a PTY that follows resizes and dies with the socket. (The pages themselves are driven
//! in Chromium by tests/ui.)
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command, time::Duration};

use base64::Engine as _;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestServer, wait_until};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

const PROTOCOL: &str = "cove.terminal.v1";

/// A WebSocket request for the terminal of `id`, offering `protocols`.
fn terminal_request(
    server: &TestServer,
    id: &str,
    protocols: &[String],
) -> tungstenite::handshake::client::Request {
    let url = format!(
        "ws://{}/cove/sandboxes/{id}/terminal?cols=100&rows=30",
        server.addr
    );
    let mut request = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    request
}

fn key_protocol(key: &str) -> String {
    format!(
        "cove.key.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    )
}

/// The refusal of a handshake: its status and the JSON error's message.
async fn refused(request: tungstenite::handshake::client::Request) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], response.status().as_u16());
            (
                response.status().as_u16(),
                body["message"].as_str().unwrap().to_owned(),
            )
        }
        Err(other) => panic!("refused otherwise than by HTTP: {other}"),
        Ok(_) => panic!("the terminal opened"),
    }
}

fn other_team_key(server: &TestServer) -> String {
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
    String::from_utf8(created.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_terminal_refuses_missing_and_wrong_keys_and_other_teams() {
    let server = TestServer::start_with_args(cove(), &["--warm-pool", "0"]).await;
    let sandbox = Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap();
    let id = sandbox.id().to_owned();

    let (status, message) = refused(terminal_request(&server, &id, &[PROTOCOL.to_owned()])).await;
    assert_eq!(status, 401);
    assert!(message.contains("missing API key"), "{message}");

    let wrong = [PROTOCOL.to_owned(), key_protocol("e2b_wrong")];
    let (status, message) = refused(terminal_request(&server, &id, &wrong)).await;
    assert_eq!((status, message.as_str()), (401, "invalid API key"));

    let garbled = [PROTOCOL.to_owned(), "cove.key.!!!".to_owned()];
    assert_eq!(
        refused(terminal_request(&server, &id, &garbled)).await.0,
        401
    );

    let mut header = terminal_request(&server, &id, &[]);
    header
        .headers_mut()
        .insert("x-api-key", "e2b_wrong".parse().unwrap());
    assert_eq!(refused(header).await.0, 401);

    // Another team's key: the sandbox does not exist for it, as in the REST API.
    let other = [PROTOCOL.to_owned(), key_protocol(&other_team_key(&server))];
    let (status, message) = refused(terminal_request(&server, &id, &other)).await;
    assert_eq!(status, 404, "{message}");
    assert!(message.contains(&id), "{message}");

    let mine = [PROTOCOL.to_owned(), key_protocol(&server.api_key)];
    assert_eq!(
        refused(terminal_request(&server, "nosuchsandbox", &mine))
            .await
            .0,
        404
    );

    // Not a WebSocket at all: a JSON 400, after the key and the sandbox were checked.
    let plain = reqwest::Client::new()
        .get(format!("{}/cove/sandboxes/{id}/terminal", server.url()))
        .header("x-api-key", &server.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);

    sandbox.kill().await.unwrap();
}

/// Reads the socket until the terminal's output (all of it so far) satisfies `done`.
async fn read_until(
    socket: &mut (impl StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin),
    seen: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} in the terminal; it showed: {seen:?}"))
            .expect("the socket ended")
            .unwrap();
        if let Message::Binary(bytes) = message {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_terminal_is_a_shell_on_a_pty_that_ends_with_the_socket() {
    let server = TestServer::start_with_args(cove(), &["--warm-pool", "0"]).await;
    let sandbox = Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap();
    let id = sandbox.id().to_owned();
    let offered = [PROTOCOL.to_owned(), key_protocol(&server.api_key)];
    let (mut socket, response) =
        tokio_tungstenite::connect_async(terminal_request(&server, &id, &offered))
            .await
            .unwrap();
    // Only the bridge's protocol is selected: the key is never echoed back.
    assert_eq!(
        response.headers()["sec-websocket-protocol"]
            .to_str()
            .unwrap(),
        PROTOCOL
    );

    let mut seen = String::new();
    socket
        .send(Message::binary(b"echo hi-$((20+22))\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "hi-42", |s| s.contains("hi-42\r\n")).await;
    // The size asked for in the URL, then a resize.
    socket
        .send(Message::binary(b"stty size\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "30 100", |s| s.contains("30 100")).await;
    socket
        .send(Message::text(r#"{"type":"resize","cols":132,"rows":43}"#))
        .await
        .unwrap();
    socket
        .send(Message::binary(b"stty size\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "43 132", |s| s.contains("43 132")).await;

    // The shell runs as the sandbox's user, and dies when the socket closes.
    let shells = || async {
        let out = sandbox.commands().run("ps -eo args").await.unwrap();
        out.stdout
            .lines()
            .filter(|line| line.trim() == "/bin/bash -i -l")
            .count()
    };
    assert_eq!(shells().await, 1);
    socket.close(None).await.unwrap();
    drop(socket);
    wait_until("the shell to end", Duration::from_secs(60), || async {
        (shells().await == 0).then_some(())
    })
    .await;

    // A shell that exits closes the socket, with its exit status as the reason.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(terminal_request(&server, &id, &offered))
            .await
            .unwrap();
    socket
        .send(Message::binary(b"exit 3\n".to_vec()))
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the socket to close")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1000);
    assert!(close.reason.contains('3'), "{}", close.reason);

    sandbox.kill().await.unwrap();
}
