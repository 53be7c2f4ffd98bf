//! Uploads as the agent receives them (`POST /files`, through the real agent app): multipart
//! forms parsed by `multer`, raw bodies, gzip, `X-Metadata-*` headers, any content type.
//!
//! Input: `path` or `filename` on the first line, header lines, a blank line, the body. A
//! header `x-fuzz-gzip` has the target gzip the body (and say so in `Content-Encoding`).
//! - `path`: the upload names `?path=upload.bin` (in the user's home); every part goes there.
//! - `filename`: each part's own filename is its path. An accepted upload really writes those
//!   files, so bodies holding `/`, `%`, `~`, `\` or `*` are skipped (and gzip is not used):
//!   a filename is then one name relative to the home, which cannot leave the temporary root.
//!
//! Properties: an upload is answered 200 with the files written (each exists, in the home),
//! or refused with a 4xx (or 507) E2B error body; no input gets a 500; nothing panics or hangs.
#![no_main]

use std::{io::Write, sync::OnceLock};

use axum::body::Body;
use cove_fuzz::{Agent, Input, block_on, exchange, pick};
use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::new(None))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fuzz_target!(|data: &[u8]| {
    let agent = agent();
    let input = Input::parse(data);
    let by_filename = pick(input.first, &["path", "filename"]) == "filename";
    let mut headers = input.header_map();
    let zip = headers.remove("x-fuzz-gzip").is_some();
    let mut body = input.body.to_vec();
    if by_filename {
        if body.iter().any(|b| b"/%~\\*".contains(b)) {
            return;
        }
        headers.remove(header::CONTENT_ENCODING);
    } else if zip {
        body = gzip(&body);
        headers.insert(
            header::CONTENT_ENCODING,
            "gzip".parse().expect("a header value"),
        );
    }
    let uri = if by_filename {
        "/files"
    } else {
        "/files?path=upload.bin"
    };
    let mut request = Request::post(uri)
        .body(Body::from(body))
        .expect("a valid request");
    *request.headers_mut() = headers;

    let answer = block_on(exchange(&agent.app, request));
    if answer.status == StatusCode::OK {
        let written: Vec<serde_json::Value> =
            serde_json::from_slice(&answer.body).expect("a JSON list of the files written");
        for entry in &written {
            let path = std::path::Path::new(entry["path"].as_str().expect("a path"));
            assert!(
                path.starts_with(&agent.home),
                "{path:?} is outside the home"
            );
            assert!(
                path.is_file(),
                "{path:?} was reported written but is not a file"
            );
            if !by_filename {
                assert_eq!(path, agent.home.join("upload.bin"));
            }
        }
    } else {
        assert!(
            answer.status.is_client_error() || answer.status == StatusCode::INSUFFICIENT_STORAGE,
            "an upload got {answer:?}"
        );
        answer.assert_rest_error("upload");
    }
    if agent.home.read_dir().is_ok_and(|d| d.count() > 1000) {
        agent.reset_home();
    }
});
