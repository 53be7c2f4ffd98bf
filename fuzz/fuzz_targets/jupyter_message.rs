//! Jupyter messages as the code interpreter receives them from a kernel
//! (`cove_jupyter::Signer::decode`): routing identities, `<IDS|MSG>`, an HMAC-SHA256
//! signature, four JSON parts, binary buffers.
//!
//! Input: the connection key on the first line (empty: unsigned), then the frames separated by
//! the byte 0x1e. A signature frame reading `SIGN` is replaced by the right signature, so
//! inputs reach the JSON parts behind the check.
//! Properties: with a key, a message decodes only when its signature is the HMAC of its four
//! JSON parts under that key; a decoded message encodes and decodes back to itself (numbers
//! within float rounding); a message signed with another key is refused.
#![no_main]

use bytes::Bytes;
use cove_fuzz::json_close;
use cove_jupyter::{Message, Signer, message::DELIMITER};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

fn hmac(key: &[u8], parts: &[Bytes]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn assert_same(a: &Message, b: &Message) {
    assert_eq!(a.header, b.header);
    assert_eq!(a.parent, b.parent);
    assert_eq!(a.buffers, b.buffers);
    assert!(
        json_close(&a.metadata, &b.metadata),
        "{:?} != {:?}",
        a.metadata,
        b.metadata
    );
    assert!(
        json_close(&a.content, &b.content),
        "{:?} != {:?}",
        a.content,
        b.content
    );
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(key) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let rest = data.get(split + 1..).unwrap_or_default();
    let mut frames: Vec<Bytes> = rest
        .split(|b| *b == 0x1e)
        .map(Bytes::copy_from_slice)
        .collect();
    let delimiter = frames.iter().position(|f| f.as_ref() == DELIMITER);
    if let Some(at) = delimiter {
        if frames.get(at + 1).is_some_and(|f| f.as_ref() == b"SIGN") && frames.len() >= at + 6 {
            frames[at + 1] =
                Bytes::from(hex::encode(hmac(key.as_bytes(), &frames[at + 2..at + 6])));
        }
    }

    let signer = Signer::new(key);
    let Ok(message) = signer.decode(&frames) else {
        return;
    };
    let at = delimiter.expect("a decoded message has the delimiter");
    if !key.is_empty() {
        let given = hex::decode(&frames[at + 1]).expect("an accepted signature is hex");
        assert_eq!(
            given,
            hmac(key.as_bytes(), &frames[at + 2..at + 6]),
            "a forged signature was accepted"
        );
    }

    let encoded = signer.encode(&message);
    let again = signer
        .decode(&encoded)
        .unwrap_or_else(|err| panic!("our own encoding does not decode: {err}"));
    assert_same(&message, &again);

    let other = Signer::new(&format!("{key}-other"));
    assert!(
        other.decode(&encoded).is_err(),
        "a message signed with another key was accepted"
    );
});
