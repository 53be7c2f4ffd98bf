//! The agent's Connect layer (`cove-agent/src/rpc.rs`: content types, compression refusals,
//! `Connect-Timeout-Ms`, keepalive intervals, unary bodies, enveloped request streams, error
//! mapping) through the real agent app, on the `process.Process` methods that cannot start
//! anything: List, Connect, SendInput, StreamInput, CloseStdin, SendSignal, Update. One
//! harmless process runs (tag `fuzz`, a shell that reads its stdin until it ends, started
//! again whenever an input ended it), so calls also find what they look for; `{pid}` in a
//! body stands for its pid.
//!
//! Input: the method on the first line, header lines, a blank line, the body.
//! Properties: a unary call answers 200 with its response message in the request's codec, or
//! a Connect error body with the status of its code; a streaming call answers 200 with
//! well-formed envelopes whose messages decode, ending in an end-of-stream message; no input
//! makes a call fail as `internal` or `unknown`; nothing panics or hangs.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use cove_fuzz::{Agent, Input, block_on, exchange, exchange_until, pick};
use cove_proto::{
    connect::{Code, Codec, ContentType, FLAG_END_STREAM, RpcError, Wire, parse_end_stream},
    process,
};
use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &[
    "List",
    "Connect",
    "SendInput",
    "StreamInput",
    "CloseStdin",
    "SendSignal",
    "Update",
];

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::new(None))
}

/// The pid of the `fuzz` process, started (again) when there is none.
fn target_process(agent: &Agent) -> u32 {
    let listed = || {
        agent
            .state
            .processes()
            .list()
            .into_iter()
            .find(|p| p.tag.as_deref() == Some("fuzz"))
            .map(|p| p.pid)
    };
    if let Some(pid) = listed() {
        if alive(pid) {
            return pid;
        }
        // Ended by the last input: wait until the reaper has taken it off the table, so this
        // input does not write to a pipe nobody reads.
        block_on(async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while listed() == Some(pid) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the process table kept {pid}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
    }
    let start = serde_json::json!({
        "process": {"cmd": "/bin/sh", "args": ["-c", "while read -r line; do :; done"]},
        "tag": "fuzz",
        "stdin": true,
    });
    let request = Request::post("/process.Process/Start")
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from(cove_proto::connect::envelope(
            0,
            start.to_string().as_bytes(),
        )))
        .expect("a valid request");
    let answer = block_on(exchange_until(&agent.app, request, |read| read.len() >= 5));
    assert_eq!(answer.status, StatusCode::OK);
    listed().expect("the process started")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Splits a stream body into complete envelopes (and says whether bytes were left over).
fn envelopes(body: &[u8]) -> (Vec<(u8, &[u8])>, bool) {
    let mut frames = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        frames.push((rest[0], &rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    (frames, !rest.is_empty())
}

fn assert_not_internal(code: Code, message: &str) {
    assert!(
        !matches!(code, Code::Internal | Code::Unknown | Code::DataLoss),
        "a client's input made the call fail as {code}: {message}"
    );
}

fn check_unary<Resp: Wire + std::fmt::Debug>(
    content_type: Option<ContentType>,
    answer: &cove_fuzz::Answer,
) {
    if answer.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        assert!(content_type.is_none_or(|ct| ct.streaming), "{answer:?}");
        return;
    }
    let content_type = content_type.expect("only Connect content types get past the check");
    if answer.status == StatusCode::OK {
        let decoded = content_type.codec.decode::<Resp>(&answer.body);
        assert!(
            decoded.is_ok(),
            "an answer that does not decode: {answer:?}"
        );
        return;
    }
    let err = RpcError::from_json(&answer.body)
        .unwrap_or_else(|| panic!("an error that is not a Connect error body: {answer:?}"));
    assert_eq!(answer.status.as_u16(), err.code.http_status(), "{err:?}");
    assert_not_internal(err.code, &err.message);
}

fn check_stream<Resp: Wire + std::fmt::Debug>(
    content_type: Option<ContentType>,
    answer: &cove_fuzz::Answer,
) {
    if answer.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        assert!(content_type.is_none_or(|ct| !ct.streaming), "{answer:?}");
        return;
    }
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    // A refused compression is answered in JSON whatever the request's codec.
    let codec = content_type.map_or(Codec::Json, |ct| ct.codec);
    let (frames, _) = envelopes(&answer.body);
    for (i, (flags, payload)) in frames.iter().enumerate() {
        if flags & FLAG_END_STREAM != 0 {
            assert_eq!(i, frames.len() - 1, "frames after the end of the stream");
            if let Some(err) = parse_end_stream(payload).expect("a valid end-of-stream message") {
                assert_not_internal(err.code, &err.message);
            }
        } else {
            assert_eq!(*flags, 0, "unexpected flags {flags:#x}");
            assert!(
                codec.decode::<Resp>(payload).is_ok(),
                "a message that does not decode"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let agent = agent();
    let pid = target_process(agent);
    let input = Input::parse(data);
    let method = pick(input.first, METHODS);
    let body = {
        let text = String::from_utf8_lossy(input.body);
        if text.contains("{pid}") && std::str::from_utf8(input.body).is_ok() {
            text.replace("{pid}", &pid.to_string()).into_bytes()
        } else {
            input.body.to_vec()
        }
    };
    let headers = input.header_map();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentType::parse);
    let mut request = Request::post(format!("/process.Process/{method}"))
        .body(Body::from(body))
        .expect("a valid request");
    *request.headers_mut() = headers;

    block_on(async {
        match method {
            "Connect" => {
                // The events of a live process never end: one message is enough.
                let answer = exchange_until(&agent.app, request, |read| {
                    let (frames, _) = envelopes(read);
                    !frames.is_empty()
                })
                .await;
                check_stream::<process::ConnectResponse>(content_type, &answer);
            }
            "StreamInput" => {
                let answer = exchange(&agent.app, request).await;
                check_stream::<process::StreamInputResponse>(content_type, &answer);
            }
            "List" => check_unary::<process::ListResponse>(
                content_type,
                &exchange(&agent.app, request).await,
            ),
            "SendInput" => check_unary::<process::SendInputResponse>(
                content_type,
                &exchange(&agent.app, request).await,
            ),
            "CloseStdin" => check_unary::<process::CloseStdinResponse>(
                content_type,
                &exchange(&agent.app, request).await,
            ),
            "SendSignal" => check_unary::<process::SendSignalResponse>(
                content_type,
                &exchange(&agent.app, request).await,
            ),
            "Update" => check_unary::<process::UpdateResponse>(
                content_type,
                &exchange(&agent.app, request).await,
            ),
            _ => unreachable!("pick returns one of METHODS"),
        }
    });
});
