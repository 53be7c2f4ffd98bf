//! Random identifiers and secrets, and how API keys are kept (only their hash).

use sha2::{Digest, Sha256};

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            // Interrupted: try again. The kernel's generator does not fail otherwise.
            Err(_) => continue,
        }
    }
    bytes
}

/// `len` random characters of `[a-z0-9]`: sandbox ids (no `-` or `.`, so that
/// `{port}-{id}.{domain}` hosts stay unambiguous) and key ids.
pub fn random_id(len: usize) -> String {
    let bytes = random_bytes::<64>();
    bytes
        .iter()
        // Rejection sampling keeps the characters uniform.
        .filter(|b| usize::from(**b) < 252)
        .take(len)
        .map(|b| LOWER_ALNUM[usize::from(*b) % LOWER_ALNUM.len()] as char)
        .collect()
}

/// A 256-bit secret as hex (access tokens).
pub fn random_token() -> String {
    hex::encode(random_bytes::<32>())
}

/// A new API key: `cove_` and 40 hex characters.
pub fn new_api_key() -> String {
    format!("cove_{}", hex::encode(random_bytes::<20>()))
}

/// What the store keeps of an API key.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_alphanumeric() {
        let id = random_id(20);
        assert_eq!(id.len(), 20);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(random_id(20), id);
        assert_eq!(random_token().len(), 64);
        assert!(new_api_key().starts_with("cove_"));
    }
}
