//! Signed file URLs as the agent checks them (`GET|POST /files?path=…&username=…&signature=…
//! &signature_expiration=…`, through the real agent app and its access-token middleware), and
//! the signatures themselves (`cove_proto::signing`).
//!
//! Input, first line `RAW`: the rest is a query string sent as is.
//! First line `SIGN`: header lines `path`, `user`, `exp` (a number, `+N`/`-N` from now, or
//! absent), `op` (`read`/`write`), `mutate` (`path`, `user`, `exp`, `op`, `sig`, `token` or
//! nothing). The target signs the URL as the SDKs do with the sandbox's token, then changes
//! the named part. The path is kept to one name in a directory of the home (`/` becomes `_`),
//! since an accepted signature really reads or writes it.
//! Properties: a query the fuzzer wrote is never accepted (it cannot know the token); a URL
//! signed with the token is accepted unless it expired or names an unknown user; any change to
//! a signed URL makes it refused; signatures have E2B's form.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use cove_fuzz::{Agent, Input, block_on, exchange, percent_encode, query_text};
use cove_proto::signing::{Operation, constant_time_eq, sign};
use http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-access-token";

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::new(Some(TOKEN)))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn message(answer: &cove_fuzz::Answer) -> String {
    answer
        .json()
        .and_then(|j| j["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn raw(agent: &Agent, query: &[u8]) {
    let Ok(request) = Request::get(format!("/files?{}", query_text(query))).body(Body::empty())
    else {
        return;
    };
    let answer = block_on(exchange(&agent.app, request));
    // 400: a query that does not parse (before any signature is looked at).
    assert!(
        answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::BAD_REQUEST,
        "an unsigned query got {answer:?}"
    );
}

fn signed(agent: &Agent, input: &Input<'_>) {
    let field = |name: &str| {
        input
            .headers
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let name = field("path").unwrap_or_default().replace('/', "_");
    let name = if name.is_empty() || name == "." || name == ".." {
        format!("x{name}")
    } else {
        name
    };
    let dir = agent.home.join("signed");
    let path = format!("{}/{name}", dir.display());
    let user = field("user").unwrap_or_default();
    let exp = field("exp").and_then(|e| {
        if let Some(ahead) = e.strip_prefix('+') {
            ahead.parse::<i64>().ok().map(|a| now().saturating_add(a))
        } else if e.starts_with('-') && e.len() < 12 {
            e.parse::<i64>().ok().map(|a| now().saturating_add(a))
        } else {
            e.parse::<i64>().ok()
        }
    });
    let op = match field("op").as_deref() {
        Some("write") => Operation::Write,
        _ => Operation::Read,
    };
    let mutate = field("mutate").unwrap_or_default();

    let signature = sign(&path, op, &user, TOKEN, exp);
    assert!(
        signature.starts_with("v1_") && signature.len() == 46,
        "{signature}"
    );
    assert_eq!(signature, sign(&path, op, &user, TOKEN, exp));

    let (mut q_path, mut q_user, mut q_exp, mut q_op, mut q_sig) =
        (path.clone(), user.clone(), exp, op, signature.clone());
    let changed = match mutate.as_str() {
        "path" => {
            q_path.push('x');
            true
        }
        "user" => {
            q_user.push('x');
            true
        }
        "exp" => {
            q_exp = Some(exp.map_or(i64::MAX, |e| e.wrapping_add(1)));
            true
        }
        "op" => {
            q_op = match op {
                Operation::Read => Operation::Write,
                Operation::Write => Operation::Read,
            };
            true
        }
        "sig" => {
            let at = 3 + name.len() % 43;
            let mut chars: Vec<char> = q_sig.chars().collect();
            chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
            q_sig = chars.into_iter().collect();
            true
        }
        "token" => {
            q_sig = sign(&path, op, &user, "another-token", exp);
            true
        }
        _ => false,
    };
    assert_eq!(
        constant_time_eq(q_sig.as_bytes(), signature.as_bytes()),
        q_sig == signature
    );

    let mut query = format!(
        "path={}&signature={}",
        percent_encode(q_path.as_bytes()),
        percent_encode(q_sig.as_bytes())
    );
    if !q_user.is_empty() {
        query.push_str(&format!("&username={}", percent_encode(q_user.as_bytes())));
    }
    if let Some(e) = q_exp {
        query.push_str(&format!("&signature_expiration={e}"));
    }
    std::fs::create_dir_all(&dir).expect("the directory of signed files");
    let request = match q_op {
        Operation::Read => Request::get(format!("/files?{query}")).body(Body::empty()),
        Operation::Write => Request::post(format!("/files?{query}"))
            .header("content-type", "application/octet-stream")
            .body(Body::from("signed")),
    }
    .expect("a valid request");
    let answer = block_on(exchange(&agent.app, request));
    let text = message(&answer);

    let clock = now();
    let expired = q_exp.is_some_and(|e| e < clock);
    let on_the_edge = q_exp.is_some_and(|e| (e - clock).abs() <= 2);
    if changed {
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "a changed URL ({mutate}) got {answer:?}"
        );
        assert!(text.contains("signature"), "{text}");
    } else if on_the_edge {
    } else if expired {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert!(text.contains("expired"), "{text}");
    } else if !user.is_empty() && user != "user" {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert!(text.contains("does not exist"), "{text}");
    } else {
        assert_ne!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "a signed URL was refused: {answer:?}"
        );
        assert!(!answer.status.is_server_error(), "{answer:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let agent = agent();
    let input = Input::parse(data);
    if input.first == "SIGN" {
        signed(agent, &input);
    } else {
        let after = data
            .iter()
            .position(|b| *b == b'\n')
            .map_or(&[][..], |at| &data[at + 1..]);
        raw(agent, after);
    }
    if agent
        .home
        .join("signed")
        .read_dir()
        .is_ok_and(|d| d.count() > 1000)
    {
        agent.reset_home();
    }
});
