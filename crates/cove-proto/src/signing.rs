//! Signed file URLs: how the E2B SDKs sign `download_url()` / `upload_url()` links with a
//! sandbox's access token, so the agent (and Cove's proxy) can check them.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// What a signed URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// `v1_` + unpadded base64 of sha256(`path:operation:user:token[:expiration]`).
pub fn sign(
    path: &str,
    operation: Operation,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut raw = format!("{path}:{}:{user}:{token}", operation.as_str());
    if let Some(expiration) = expiration {
        raw.push_str(&format!(":{expiration}"));
    }
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_format() {
        let sig = sign("/home/user/a.txt", Operation::Read, "", "tok", None);
        assert!(sig.starts_with("v1_") && !sig.ends_with('='));
        assert_eq!(sig.len(), 3 + 43);
        assert_ne!(
            sig,
            sign("/home/user/a.txt", Operation::Write, "", "tok", None)
        );
        assert_ne!(
            sig,
            sign("/home/user/a.txt", Operation::Read, "", "tok", Some(1))
        );
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
