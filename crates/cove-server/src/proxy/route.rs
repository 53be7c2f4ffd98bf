//! Which requests are sandbox traffic, and for which sandbox and port.

use axum::{extract::Request, http::header};
use cove_proto::signing::{self, Operation};

/// Where a sandbox request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A sandbox named by id, and a port inside it.
    Sandbox { id: String, port: u16 },
    /// A signed `/files` link, which names no sandbox: the signature decides.
    Signed(SignedFiles),
}

/// The signed parts of a `/files` query.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedFiles {
    path: String,
    username: String,
    signature: String,
    expiration: Option<i64>,
    operation: Operation,
}

impl SignedFiles {
    /// Whether the sandbox with access token `token` made this signature.
    pub fn is_signed_by(&self, token: &str) -> bool {
        let expected = signing::sign(
            &self.path,
            self.operation,
            &self.username,
            token,
            self.expiration,
        );
        signing::constant_time_eq(expected.as_bytes(), self.signature.as_bytes())
    }
}

/// `None` for control-plane requests; `Some(Err)` for a malformed sandbox request.
pub fn classify(request: &Request, domain: &str) -> Option<Result<Route, String>> {
    let headers = request.headers();
    let id = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok());
    let port = headers
        .get("e2b-sandbox-port")
        .and_then(|v| v.to_str().ok());
    match (id, port) {
        (Some(id), Some(port)) => {
            return Some(match port.trim().parse::<u16>() {
                Ok(port) if port > 0 => Ok(Route::Sandbox {
                    id: id.trim().to_owned(),
                    port,
                }),
                _ => Err(format!("Invalid sandbox port {port:?}")),
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Some(Err(
                "missing header: sandbox traffic needs both E2b-Sandbox-Id and E2b-Sandbox-Port"
                    .to_owned(),
            ));
        }
        (None, None) => {}
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if let Some(route) = route_by_host(host, domain) {
        return Some(Ok(route));
    }
    signed_files(request).map(|signed| Ok(Route::Signed(signed)))
}

/// `{port}-{id}.{domain}`.
fn route_by_host(host: &str, domain: &str) -> Option<Route> {
    let (label, rest) = host.split_once('.')?;
    if !rest.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let valid_id = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    valid_id.then(|| Route::Sandbox {
        id: id.to_owned(),
        port,
    })
}

/// A `GET` or `POST` to `/files` carrying `signature=`.
fn signed_files(request: &Request) -> Option<SignedFiles> {
    if request.uri().path() != "/files" {
        return None;
    }
    let operation = match *request.method() {
        http::Method::GET => Operation::Read,
        http::Method::POST => Operation::Write,
        _ => return None,
    };
    let query = request.uri().query()?;
    let mut signed = SignedFiles {
        path: String::new(),
        username: String::new(),
        signature: String::new(),
        expiration: None,
        operation,
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = crate::query::percent_decode(value)?;
        match key {
            "path" => signed.path = value,
            "username" => signed.username = value,
            "signature" => signed.signature = value,
            "signature_expiration" => signed.expiration = value.parse().ok(),
            _ => {}
        }
    }
    (!signed.signature.is_empty()).then_some(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = http::Request::get(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn routes_by_headers_host_and_signature() {
        let by_headers = request(
            "/health",
            &[("e2b-sandbox-id", "abc123"), ("e2b-sandbox-port", "49983")],
        );
        assert_eq!(
            classify(&by_headers, "localhost:3000"),
            Some(Ok(Route::Sandbox {
                id: "abc123".into(),
                port: 49983
            }))
        );
        let half = request("/", &[("e2b-sandbox-id", "abc123")]);
        assert!(matches!(classify(&half, "localhost:3000"), Some(Err(_))));

        let by_host = request("/", &[("host", "8080-abc123.localhost:3000")]);
        assert_eq!(
            classify(&by_host, "localhost:3000"),
            Some(Ok(Route::Sandbox {
                id: "abc123".into(),
                port: 8080
            }))
        );
        let api = request("/v2/sandboxes", &[("host", "localhost:3000")]);
        assert_eq!(classify(&api, "localhost:3000"), None);
        let other_domain = request("/", &[("host", "8080-abc123.example.com")]);
        assert_eq!(classify(&other_domain, "localhost:3000"), None);

        let sig = signing::sign("/home/user/a b.txt", Operation::Read, "", "tok", None);
        let encoded: String = sig.replace('+', "%2B").replace('/', "%2F");
        let signed = request(
            &format!("/files?path=%2Fhome%2Fuser%2Fa%20b.txt&signature={encoded}"),
            &[],
        );
        match classify(&signed, "localhost:3000") {
            Some(Ok(Route::Signed(signed))) => {
                assert!(signed.is_signed_by("tok"));
                assert!(!signed.is_signed_by("other"));
            }
            other => panic!("expected a signed route, got {other:?}"),
        }
    }
}
