//! Connect's 5-byte envelopes as the agent and the SDK read them (`FrameDecoder`), fed in
//! chunks of arbitrary sizes, with the default limit and with a tiny one.
//!
//! Input: byte 0 picks the limit (even: the default 32 MiB; odd: `byte >> 1` bytes), byte 1..4
//! the chunk sizes, the rest is the stream.
//! Properties: what is decoded does not depend on how the stream was chunked; re-enveloping
//! the frames gives back exactly the bytes consumed; the decoder refuses only frames over the
//! limit or compressed ones; end-of-stream payloads that parse survive their own round trip.
#![no_main]

use cove_proto::connect::{
    Code, FLAG_COMPRESSED, FrameDecoder, MAX_MESSAGE_BYTES, end_stream, envelope, parse_end_stream,
};
use libfuzzer_sys::fuzz_target;

/// Frames read off the stream, and how reading ended.
fn decode(wire: &[u8], max: usize, chunks: &[u8]) -> (Vec<(u8, Vec<u8>)>, Option<Code>, bool) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut offset = 0;
    let mut turn = 0;
    loop {
        let size = if chunks.is_empty() {
            wire.len()
        } else {
            1 + chunks[turn % chunks.len()] as usize
        };
        turn += 1;
        let end = (offset + size).min(wire.len());
        decoder.push(&wire[offset..end]);
        offset = end;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push((frame.flags, frame.payload.to_vec())),
                Ok(None) => break,
                Err(err) => return (frames, Some(err.code), true),
            }
        }
        if offset == wire.len() {
            return (frames, None, decoder.has_partial());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let max = if data[0] & 1 == 0 {
        MAX_MESSAGE_BYTES
    } else {
        (data[0] >> 1) as usize
    };
    let chunks = &data[1..5];
    let wire = &data[5..];

    let (frames, error, partial) = decode(wire, max, chunks);
    let (whole, whole_error, whole_partial) = decode(wire, max, &[]);
    assert_eq!(frames, whole, "chunking changed the frames");
    assert_eq!(error, whole_error, "chunking changed the error");
    if error.is_none() {
        assert_eq!(partial, whole_partial);
    }

    let mut consumed = Vec::new();
    for (flags, payload) in &frames {
        assert!(payload.len() <= max, "a frame over the limit was accepted");
        assert_eq!(
            flags & FLAG_COMPRESSED,
            0,
            "a compressed frame was accepted"
        );
        consumed.extend_from_slice(&envelope(*flags, payload));
    }
    assert_eq!(
        &wire[..consumed.len()],
        &consumed[..],
        "re-enveloping changed the bytes"
    );
    match error {
        None => assert_eq!(partial, consumed.len() < wire.len()),
        Some(code) => {
            // The refused frame starts right after the last good one.
            let header = &wire[consumed.len()..consumed.len() + 5];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            match code {
                Code::ResourceExhausted => assert!(len > max),
                Code::Unimplemented => assert!(header[0] & FLAG_COMPRESSED != 0 && len <= max),
                other => panic!("unexpected refusal {other:?}"),
            }
        }
    }

    for (flags, payload) in &frames {
        if flags & cove_proto::connect::FLAG_END_STREAM == 0 {
            continue;
        }
        if let Ok(ended) = parse_end_stream(payload) {
            let again = end_stream(ended.as_ref());
            assert_eq!(parse_end_stream(&again[5..]).ok(), Some(ended));
        }
    }
});
