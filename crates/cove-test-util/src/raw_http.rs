//! Reading HTTP/1.1 answers off a raw stream, for tests that write requests by hand (what no
//! client would send, or exactly what the server sends its agents).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long one read of an answer may take.
const READ_WITHIN: Duration = Duration::from_secs(60);

/// Reads from `stream` until an answer's head has come: the head, lowercased, and the
/// bytes that came after it.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut answer = Vec::new();
    loop {
        let read = read_some(stream, &mut answer).await;
        assert!(read > 0, "the stream ended before the answer's head did");
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            return (head, answer.split_off(end + 4));
        }
    }
}

/// Reads more of `stream` into `into`: how many bytes came (0 at its end).
pub async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, into: &mut Vec<u8>) -> usize {
    let mut piece = [0u8; 65536];
    let read = tokio::time::timeout(READ_WITHIN, stream.read(&mut piece))
        .await
        .expect("the answer keeps coming")
        .expect("the stream can be read");
    into.extend_from_slice(&piece[..read]);
    read
}

/// The `Content-Length` of a lowercased head.
pub fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.parse().expect("a numeric Content-Length"))
}
