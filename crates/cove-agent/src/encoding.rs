//! Which content coding a download goes out in.
//!
//! The rule (measured; the numbers are in docs/COMPATIBILITY.md): a file is gzip-compressed
//! only when the client asked for gzip in particular, and only when it compresses. HTTP
//! libraries send a list of codings with every request whether or not their user cares
//! (`gzip, deflate` from httpx, requests, Node's fetch and so both E2B SDKs; `deflate, gzip,
//! br, zstd` from `curl --compressed`), and compressing on the fly costs far more than it
//! saves on the loopback and LAN links a self-hosted server is reached over. The SDKs' own
//! switch (`files.read(…, gzip=True)`) sends `Accept-Encoding: gzip` alone: that is a request
//! for compression, and it gets it, unless the file's first bytes show it would not shrink.

use std::io::Write as _;

use axum::http::{HeaderMap, header};

/// What a client's `Accept-Encoding` asks of a download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wish {
    /// The bytes as they are: no header, `identity`, or a library's default list of codings.
    Identity,
    /// gzip in particular (named alone, or above every other coding): compressed when the
    /// data compresses.
    Gzip,
    /// gzip and not the bytes as they are (`identity;q=0` or `*;q=0`): compressed whatever
    /// the data.
    GzipOnly,
}

/// How many of a file's first bytes are compressed to judge whether the rest is worth it.
pub const SAMPLE_BYTES: usize = 64 << 10;

/// Compression pays only when the sample shrinks to at most this share of its size: below
/// a tenth saved, both ends spend CPU for next to nothing (already compressed formats,
/// random data, tiny files whose gzip framing outweighs the saving).
const WORTH_IT: f64 = 0.9;

/// Reads `Accept-Encoding` (every instance of the header) as RFC 9110 §12.5.3 defines it.
pub fn wish(headers: &HeaderMap) -> Wish {
    let codings: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_coding)
        .collect();
    let q_of = |names: &[&str]| {
        codings
            .iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(_, q)| *q)
            .reduce(f32::max)
    };
    let named_gzip = q_of(&["gzip", "x-gzip"]);
    let any = q_of(&["*"]);
    let gzip = named_gzip.or(any).unwrap_or(0.0);
    if gzip <= 0.0 {
        return Wish::Identity;
    }
    let identity_refused = match q_of(&["identity"]) {
        Some(q) => q <= 0.0,
        None => any.is_some_and(|q| q <= 0.0),
    };
    if identity_refused {
        return Wish::GzipOnly;
    }
    let preferred = named_gzip.is_some()
        && codings
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "gzip" | "x-gzip" | "identity" | "*"))
            .all(|(_, q)| *q < gzip);
    if preferred {
        Wish::Gzip
    } else {
        Wish::Identity
    }
}

/// `name[;q=value]` → (lowercase name, weight); a weight that does not parse counts as 1.
fn parse_coding(item: &str) -> Option<(String, f32)> {
    let mut parts = item.split(';').map(str::trim);
    let name = parts.next().filter(|n| !n.is_empty())?.to_ascii_lowercase();
    let q = parts
        .filter_map(|p| {
            let (key, value) = p.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("q")
                .then(|| value.trim().parse::<f32>().ok())
                .flatten()
        })
        .next()
        .unwrap_or(1.0);
    Some((name, q))
}

/// Whether gzip would shrink data that starts with `sample` enough to be worth it (see
/// [`WORTH_IT`]); judged by compressing the sample at the level downloads use.
pub fn compresses(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return false;
    }
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(sample.len()),
        flate2::Compression::fast(),
    );
    let compressed = encoder
        .write_all(sample)
        .and_then(|()| encoder.finish())
        .map(|out| out.len());
    // gzip adds 18 bytes of header and trailer to the deflate stream.
    compressed.is_ok_and(|len| (len + 18) as f64 <= sample.len() as f64 * WORTH_IT)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn wish_of(values: &[&str]) -> Wish {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        wish(&headers)
    }

    #[test]
    fn what_clients_send_by_default_is_not_a_request_for_gzip() {
        // curl, urllib, the Rust SDK
        assert_eq!(wish_of(&[]), Wish::Identity);
        assert_eq!(wish_of(&["identity"]), Wish::Identity);
        // httpx, requests, Node's fetch: both E2B SDKs' file reads
        assert_eq!(wish_of(&["gzip, deflate"]), Wish::Identity);
        // curl --compressed
        assert_eq!(wish_of(&["deflate, gzip, br, zstd"]), Wish::Identity);
        // browsers
        assert_eq!(wish_of(&["gzip, deflate, br, zstd"]), Wish::Identity);
        assert_eq!(wish_of(&["*"]), Wish::Identity);
        assert_eq!(wish_of(&["br;q=1, gzip;q=0.8"]), Wish::Identity);
    }

    #[test]
    fn gzip_asked_for_in_particular() {
        // The SDKs' `gzip=True`
        assert_eq!(wish_of(&["gzip"]), Wish::Gzip);
        assert_eq!(wish_of(&["GZIP"]), Wish::Gzip);
        assert_eq!(wish_of(&["x-gzip"]), Wish::Gzip);
        assert_eq!(wish_of(&["gzip, identity;q=0.5"]), Wish::Gzip);
        assert_eq!(wish_of(&["gzip;q=1.0, deflate;q=0.5"]), Wish::Gzip);
        assert_eq!(wish_of(&["identity", "gzip"]), Wish::Gzip);
    }

    #[test]
    fn refusals() {
        assert_eq!(wish_of(&["gzip;q=0"]), Wish::Identity);
        assert_eq!(wish_of(&["identity, gzip;q=0"]), Wish::Identity);
        assert_eq!(wish_of(&["gzip, identity;q=0"]), Wish::GzipOnly);
        assert_eq!(wish_of(&["gzip, deflate, identity;q=0"]), Wish::GzipOnly);
        assert_eq!(wish_of(&["*;q=0, gzip"]), Wish::GzipOnly);
        assert_eq!(wish_of(&["*;q=0, identity, gzip"]), Wish::Gzip);
        assert_eq!(wish_of(&["deflate;q=0"]), Wish::Identity);
    }

    #[test]
    fn only_data_that_shrinks_is_worth_compressing() {
        let text: Vec<u8> = (0..SAMPLE_BYTES)
            .map(|i| b"2026-11-25 INFO request served in 12 ms\n"[i % 40])
            .collect();
        assert!(compresses(&text));
        // xorshift: incompressible
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let random: Vec<u8> = (0..SAMPLE_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(!compresses(&random));
        assert!(!compresses(b""));
        assert!(!compresses(b"tiny"));
    }
}
