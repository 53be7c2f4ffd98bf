//! What the egress proxy reads from a sandbox's connections and from name servers: the TLS
//! server name of a ClientHello, the `Host` of an HTTP/1 request head, and a DNS reply.
//!
//! Input: the first byte picks the reader (0: TLS, 1: HTTP, other: DNS), the rest is what it
//! reads. A DNS reply is read as the reply to a query for `www.allowed.test` whose id is the
//! reply's own first two bytes.
//! Properties: nothing panics; a name read is lowercase, at most 253 bytes, of the characters
//! names (and, from `Host`, IP addresses) are written with; more bytes never turn a decided
//! ClientHello or request head back into "need more".
#![no_main]

use cove_runtime::egress::wire::{MAX_PEEK, Peeked, http_host, read_reply, tls_server_name};
use libfuzzer_sys::fuzz_target;

fn check(peeked: &Peeked) {
    if let Peeked::Name(name) = peeked {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._:".contains(&b)),
            "{name:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&reader, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_PEEK + 64)];
    match reader {
        0 | 1 => {
            let read = |bytes: &[u8]| match reader {
                0 => tls_server_name(bytes),
                _ => http_host(bytes),
            };
            let whole = read(rest);
            check(&whole);
            // A decision taken on a prefix stands when more bytes come.
            for cut in [rest.len() / 2, rest.len().saturating_sub(1)] {
                let prefix = read(&rest[..cut]);
                check(&prefix);
                if prefix != Peeked::NeedMore && whole != Peeked::NeedMore {
                    assert_eq!(prefix, whole, "cut at {cut}");
                }
            }
        }
        _ => {
            if rest.len() >= 2 {
                let id = u16::from_be_bytes([rest[0], rest[1]]);
                let _ = read_reply(rest, id, "www.allowed.test");
            }
        }
    }
});
