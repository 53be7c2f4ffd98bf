//! How the control plane tells sandbox traffic from API calls and routes it
//! (`cove-server/src/proxy`: `E2b-Sandbox-Id`/`-Port` headers, `Host: {port}-{id}.{domain}`,
//! signed `/files` URLs, traffic tokens), through `cove_server::router` over the fake runtime
//! (forwarding to a sandbox fails there, which answers 502 naming the sandbox it tried).
//!
//! Input: `METHOD target` on the first line, header lines, a blank line, the body. In the
//! first line and the headers, `{id}` stands for a running public sandbox, `{private}` for one
//! whose ports need its traffic token, `{traffic}` for that token. A first line
//! `SIGN path user` (optionally `exp` and `bad`) has the target sign a `/files` URL with the
//! public sandbox's access token as the SDKs do (`bad`: then change one character).
//! Properties: nothing panics, no request gets a 500; a request reaches a running sandbox (a
//! 502 naming it) only when it named that sandbox, or carried a signature made with its token;
//! the private sandbox's ports are reached only with its traffic token; a changed signature is
//! refused with 401.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use cove_fuzz::{Input, Server, block_on, exchange, percent_encode};
use cove_proto::signing::{Operation, sign};
use http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

struct Fixture {
    server: Server,
    public: String,
    public_token: String,
    private: String,
    traffic: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = Server::new(50);
        let public = block_on(server.create(json!({"timeout": 3600})));
        let private = block_on(
            server.create(json!({"timeout": 3600, "network": {"allowPublicTraffic": false}})),
        );
        let text = |v: &serde_json::Value, k: &str| v[k].as_str().expect(k).to_owned();
        Fixture {
            public: text(&public, "sandboxID"),
            public_token: text(&public, "envdAccessToken"),
            private: text(&private, "sandboxID"),
            traffic: text(&private, "trafficAccessToken"),
            server,
        }
    })
}

fn expand(fixture: &Fixture, text: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(text) {
        Ok(text) if text.contains('{') => text
            .replace("{id}", &fixture.public)
            .replace("{private}", &fixture.private)
            .replace("{traffic}", &fixture.traffic)
            .into_bytes(),
        _ => text.to_vec(),
    }
}

/// The sandbox a 502 says the proxy tried to reach.
fn reached(answer: &cove_fuzz::Answer) -> Option<String> {
    if answer.status != StatusCode::BAD_GATEWAY {
        return None;
    }
    answer.json()?["sandboxId"].as_str().map(str::to_owned)
}

fn signed(fixture: &Fixture, first: &str) {
    let mut words = first.split(' ').skip(1);
    let path = words.next().unwrap_or("/home/user/a.txt").to_owned();
    let user = words.next().unwrap_or("").to_owned();
    let rest: Vec<&str> = words.collect();
    let exp = rest.iter().find_map(|w| w.parse::<i64>().ok());
    let bad = rest.contains(&"bad");
    let post = rest.contains(&"post");
    let operation = if post {
        Operation::Write
    } else {
        Operation::Read
    };
    let mut signature = sign(&path, operation, &user, &fixture.public_token, exp);
    if bad {
        let at = 3 + path.len() % 43;
        let mut chars: Vec<char> = signature.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        signature = chars.into_iter().collect();
    }
    let mut uri = format!(
        "/files?path={}&signature={}",
        percent_encode(path.as_bytes()),
        percent_encode(signature.as_bytes())
    );
    if !user.is_empty() {
        uri.push_str(&format!("&username={}", percent_encode(user.as_bytes())));
    }
    if let Some(exp) = exp {
        uri.push_str(&format!("&signature_expiration={exp}"));
    }
    let method = if post { Method::POST } else { Method::GET };
    let request = Request::builder()
        .method(method)
        .uri(&uri)
        .header("host", cove_fuzz::DOMAIN)
        .body(Body::empty())
        .expect("a valid request");
    let answer = block_on(exchange(&fixture.server.app, request));
    if bad {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{uri}: {answer:?}");
    } else {
        assert_eq!(
            reached(&answer).as_deref(),
            Some(fixture.public.as_str()),
            "{uri}: {answer:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let input = Input::parse(data);
    if input.first.starts_with("SIGN") {
        signed(fixture, input.first);
        return;
    }
    let first = String::from_utf8_lossy(&expand(fixture, input.first.as_bytes())).into_owned();
    let (method, target) = first.split_once(' ').unwrap_or(("GET", &first));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut request = Request::builder().method(method).uri(uri);
    let mut named = String::new();
    let mut traffic_given = false;
    for (name, value) in &input.headers {
        let value = expand(fixture, value);
        named.push_str(&String::from_utf8_lossy(&value));
        named.push('\n');
        if name.eq_ignore_ascii_case(b"e2b-traffic-access-token")
            && value == fixture.traffic.as_bytes()
        {
            traffic_given = true;
        }
        request = request.header(*name, value);
    }
    named.push_str(&first);
    let Ok(request) = request.body(Body::from(input.body.to_vec())) else {
        return;
    };
    // The port the request names, by header or else by host (`{port}-{id}.{domain}`).
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let port = match (header("e2b-sandbox-id"), header("e2b-sandbox-port")) {
        (Some(_), Some(port)) => port.trim().parse::<u16>().ok(),
        _ => header("host")
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .and_then(|host| host.split_once('-'))
            .and_then(|(port, _)| port.parse::<u16>().ok()),
    };
    let port_is_agent = port == Some(cove_proto::envd::PORT);

    let answer = block_on(exchange(&fixture.server.app, request));
    assert_ne!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{answer:?}"
    );
    if let Some(id) = reached(&answer) {
        if id == fixture.public || id == fixture.private {
            assert!(
                named.contains(&id),
                "reached {id} without naming it: {answer:?}"
            );
        }
        if id == fixture.private
            && answer
                .json()
                .is_some_and(|j| j["message"] == "The sandbox was not found")
        {
            // Forwarded: to the agent's port, or with the traffic token.
            assert!(port_is_agent || traffic_given, "{answer:?}");
        }
    }
});
