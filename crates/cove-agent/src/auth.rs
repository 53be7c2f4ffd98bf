//! Who a request acts as, and whether it may act at all.
//!
//! Two independent checks, as envd does them: the sandbox's access token (`X-Access-Token`,
//! or a signed URL for `/files`), and the user a call runs as (`Authorization: Basic
//! base64("name:")`, else the sandbox's default user).

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
pub use cove_proto::signing::Operation;
use cove_proto::{
    connect::{Code, RpcError},
    signing::{constant_time_eq, sign},
};

use crate::{AgentState, rest::RestError, users::User};

/// The user a call acts as.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
}

/// The user named by `Authorization: Basic base64("name:")`, if the header is there.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        RpcError::new(
            Code::Unauthenticated,
            "malformed Authorization header: expected Basic base64(\"user:\")",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let name = decoded.split(':').next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// Paths that never need the access token.
fn is_public(path: &str) -> bool {
    path == "/health"
}

/// Middleware: when the sandbox has an access token, every request but `/health` must carry
/// it; `/files` may carry a valid signature instead (checked by the files handler).
pub async fn require_access_token(
    State(state): State<AgentState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let Some(expected) = state.access_token() else {
        return next.run(request).await;
    };
    if is_public(path) {
        return next.run(request).await;
    }
    match request.headers().get("x-access-token") {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        // Signed links carry no header, and a wrong header is refused by the files handler
        // in envd's words (see `check_signature`).
        _ if path == "/files" => next.run(request).await,
        _ => unauthorized(path, UNAUTHORIZED),
    }
}

/// envd's answer to a request without the right access token (`WithAuthorization`).
const UNAUTHORIZED: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

fn unauthorized(path: &str, message: &str) -> Response {
    // Connect clients expect a Connect error body; everyone else gets the REST shape.
    if path.starts_with("/filesystem.") || path.starts_with("/process.") {
        crate::rpc::unary_error(&RpcError::new(Code::Unauthenticated, message))
    } else {
        RestError::new(StatusCode::UNAUTHORIZED, message).into_response()
    }
}

/// Whether a request to `/files` carries a usable signature (or the sandbox needs none).
pub fn check_signature(
    state: &AgentState,
    headers: &HeaderMap,
    signed: &SignedQuery<'_>,
    operation: Operation,
) -> Result<(), RestError> {
    let Some(token) = state.access_token() else {
        return Ok(());
    };
    // The messages and the order of the checks are envd's (`validateSigning`): clients show
    // the message, and an expired link's is what tells its user to make a new one.
    if let Some(given) = headers.get("x-access-token").filter(|v| !v.is_empty()) {
        return if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(refused("access token present in header but does not match"))
        };
    }
    let Some(signature) = signed.signature else {
        return Err(refused("missing signature query parameter"));
    };
    let expected = sign(
        signed.path,
        operation,
        signed.username,
        &token,
        signed.expiration,
    );
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(refused("invalid signature"));
    }
    if let Some(expiration) = signed.expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if expiration < now {
            return Err(refused("signature is already expired"));
        }
    }
    Ok(())
}

fn refused(message: &str) -> RestError {
    RestError::new(StatusCode::UNAUTHORIZED, message)
}

/// The parts of a `/files` query a signature covers.
#[derive(Debug)]
pub struct SignedQuery<'a> {
    pub path: &'a str,
    pub username: &'a str,
    pub signature: Option<&'a str>,
    pub expiration: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_user() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_user(&headers).unwrap(), None);
        headers.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_user(&headers).unwrap().as_deref(), Some("root"));
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(
            basic_user(&headers).unwrap_err().code,
            Code::Unauthenticated
        );
    }
}
