//! The one error type of the SDK, in the categories the E2B SDKs use.

use cove_proto::connect::{Code, RpcError};

/// A command that ran and exited with a non-zero code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandExit {
    pub exit_code: i32,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file, process, sandbox or template does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A deadline passed (the call's or the command's).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The API key or access token was missing or wrong, or the user does not exist.
    #[error("not authenticated: {0}")]
    Auth(String),
    /// The server asks us to slow down, or a message was too large.
    #[error("rate limited: {0}")]
    RateLimit(String),
    /// The sandbox's disk is full.
    #[error("not enough space: {0}")]
    NotEnoughSpace(String),
    /// The sandbox is gone (killed or timed out).
    #[error("sandbox gone: {0}")]
    SandboxGone(String),
    /// The request was refused as malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A command exited with a non-zero code.
    #[error("command exited with code {}{}", .0.exit_code, .0.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    CommandExit(Box<CommandExit>),
    /// Any other RPC failure.
    #[error("{code}: {message}")]
    Rpc { code: Code, message: String },
    /// Any other REST failure.
    #[error("HTTP {status}: {message}")]
    Api { status: u16, message: String },
    /// The server answered something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection failed")]
    Transport(#[source] reqwest::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether what `result` asked about was there: `NotFound` is `false`, not an error.
pub(crate) fn found<T>(result: Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(err) => Err(err),
    }
}

impl From<RpcError> for Error {
    fn from(err: RpcError) -> Self {
        let message = err.message;
        match err.code {
            Code::NotFound => Error::NotFound(message),
            Code::DeadlineExceeded | Code::Canceled => Error::Timeout(message),
            Code::Unauthenticated => Error::Auth(message),
            // The agent says ResourceExhausted for a full disk as well as for limits.
            Code::ResourceExhausted if is_disk_full(&message) => Error::NotEnoughSpace(message),
            Code::ResourceExhausted => Error::RateLimit(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::Unavailable if message.contains("was not found") => Error::SandboxGone(message),
            code => Error::Rpc { code, message },
        }
    }
}

fn is_disk_full(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["no space left", "quota exceeded", "disk space"]
        .iter()
        .any(|needle| message.contains(needle))
}

impl From<reqwest::Error> for Error {
    fn from(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            Error::Timeout(err.to_string())
        } else {
            Error::Transport(err)
        }
    }
}

impl Error {
    /// The error for a REST answer with `status` and (JSON `{code, message}` or text) body.
    pub fn from_http(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            message: Option<String>,
        }
        let message = serde_json::from_slice::<Body>(body)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        match status {
            400 => Error::InvalidArgument(message),
            401 | 403 => Error::Auth(message),
            404 => Error::NotFound(message),
            408 | 504 => Error::Timeout(message),
            429 => Error::RateLimit(message),
            502 if message.contains("was not found") => Error::SandboxGone(message),
            507 => Error::NotEnoughSpace(message),
            _ => Error::Api { status, message },
        }
    }

    /// The Connect code of an RPC error, when there is one.
    pub fn rpc_code(&self) -> Option<Code> {
        match self {
            Error::NotFound(_) => Some(Code::NotFound),
            Error::Timeout(_) => Some(Code::DeadlineExceeded),
            Error::Auth(_) => Some(Code::Unauthenticated),
            Error::RateLimit(_) | Error::NotEnoughSpace(_) => Some(Code::ResourceExhausted),
            Error::InvalidArgument(_) => Some(Code::InvalidArgument),
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_statuses_map_to_categories() {
        let body = br#"{"code": 404, "message": "sandbox abc not found"}"#;
        assert!(
            matches!(Error::from_http(404, body), Error::NotFound(m) if m == "sandbox abc not found")
        );
        assert!(matches!(Error::from_http(401, b"{}"), Error::Auth(_)));
        assert!(
            matches!(Error::from_http(429, b"slow down"), Error::RateLimit(m) if m == "slow down")
        );
        assert!(matches!(
            Error::from_http(507, b"full"),
            Error::NotEnoughSpace(_)
        ));
        assert!(matches!(Error::from_http(504, b""), Error::Timeout(_)));
        let gone = br#"{"sandboxId": "x", "message": "The sandbox was not found", "code": 502}"#;
        assert!(matches!(Error::from_http(502, gone), Error::SandboxGone(_)));
        assert!(matches!(
            Error::from_http(500, b"boom"),
            Error::Api { status: 500, .. }
        ));
    }

    #[test]
    fn rpc_codes_map_to_categories() {
        let rpc = |code, message: &str| Error::from(RpcError::new(code, message.to_owned()));
        assert!(matches!(rpc(Code::NotFound, "x"), Error::NotFound(_)));
        assert!(matches!(
            rpc(Code::DeadlineExceeded, "x"),
            Error::Timeout(_)
        ));
        assert!(matches!(rpc(Code::Unauthenticated, "x"), Error::Auth(_)));
        assert!(matches!(
            rpc(
                Code::ResourceExhausted,
                "cannot write '/f': No space left on device (os error 28)"
            ),
            Error::NotEnoughSpace(_)
        ));
        assert!(matches!(
            rpc(Code::ResourceExhausted, "too many watchers"),
            Error::RateLimit(_)
        ));
        assert!(matches!(
            rpc(Code::Internal, "x"),
            Error::Rpc {
                code: Code::Internal,
                ..
            }
        ));
    }
}
