//! Request bodies of the control plane (`cove_server::router` over a temporary state dir and
//! `cove-test-util`'s fake runtime, so no sandbox runs but everything above the runtime is
//! real): create (v2 and v1), connect (v2 and v1), set timeout; and the DTOs of
//! `cove_proto::rest` they deserialize.
//!
//! Input: the route on the first line (`POST /v2/sandboxes`, `POST /sandboxes`,
//! `POST /v2/sandboxes/{id}/connect`, `POST /sandboxes/{id}/connect`,
//! `POST /sandboxes/{id}/timeout`; `{id}` is a sandbox the target keeps running), header
//! lines (`Content-Type` defaults to JSON), a blank line, the body.
//! Properties: no body gets a 5xx; every answer is JSON (errors in E2B's `{code, message}`
//! shape); a 201 or 200 is a whole sandbox; a sandbox created is killed again; a DTO that
//! deserializes serializes back to itself.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use cove_fuzz::{API_KEY, Input, Server, block_on, exchange, pick};
use cove_proto::rest::{ConnectSandbox, NewSandbox, Sandbox, SetTimeout};
use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

const ROUTES: &[&str] = &[
    "POST /v2/sandboxes",
    "POST /sandboxes",
    "POST /v2/sandboxes/{id}/connect",
    "POST /sandboxes/{id}/connect",
    "POST /sandboxes/{id}/timeout",
];

struct Fixture {
    server: Server,
    kept: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = Server::new(50);
        let created = block_on(server.create(serde_json::json!({"timeout": 3600})));
        let kept = created["sandboxID"].as_str().expect("an id").to_owned();
        Fixture { server, kept }
    })
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let json = serde_json::to_vec(&value).expect("a DTO serializes");
        let again: T = serde_json::from_slice(&json).expect("our own JSON deserializes");
        assert_eq!(value, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let input = Input::parse(data);
    let route = pick(input.first, ROUTES).replace("{id}", &fixture.kept);
    let (method, path) = route.split_once(' ').expect("a method and a path");

    round_trip::<NewSandbox>(input.body);
    round_trip::<ConnectSandbox>(input.body);
    round_trip::<SetTimeout>(input.body);

    let mut headers = input.header_map();
    headers.remove("x-api-key");
    headers.insert("x-api-key", API_KEY.parse().expect("a header value"));
    headers.remove("e2b-sandbox-id");
    headers.remove("e2b-sandbox-port");
    headers.remove(header::HOST);
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("a header value"),
        );
    }
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(input.body.to_vec()))
        .expect("a valid request");
    *request.headers_mut() = headers;

    block_on(async {
        let answer = exchange(&fixture.server.app, request).await;
        assert!(!answer.status.is_server_error(), "{route}: {answer:?}");
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => {
                let sandbox: Sandbox = serde_json::from_slice(&answer.body)
                    .unwrap_or_else(|err| panic!("{route}: not a sandbox ({err}): {answer:?}"));
                if answer.status == StatusCode::CREATED {
                    fixture.server.kill(&sandbox.sandbox_id).await;
                } else {
                    assert_eq!(sandbox.sandbox_id, fixture.kept);
                }
            }
            StatusCode::NO_CONTENT => assert!(path.ends_with("/timeout"), "{route}: {answer:?}"),
            _ => answer.assert_rest_error(&route),
        }
    });
});
