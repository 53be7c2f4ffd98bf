//! The Connect protocol's framing, shared by the agent (server side) and the SDK (client side).
//!
//! Only pure transformations live here: codecs, envelopes, error bodies. Sockets and HTTP
//! bodies belong to the crates that own them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

/// Largest message the agent or the SDK accepts in one frame or unary body.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Envelope flag: the payload is compressed (we never set it and refuse it on input).
pub const FLAG_COMPRESSED: u8 = 0b01;
/// Envelope flag: this frame is the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0b10;

/// A message type both codecs can carry.
pub trait Wire: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static {}
impl<T> Wire for T where T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static {}

/// The Connect error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code's name on the wire (`not_found`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// Parses a wire name; unknown names become [`Code::Unknown`].
    pub fn from_name(name: &str) -> Code {
        Code::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .unwrap_or(Code::Unknown)
    }

    /// The HTTP status a unary error with this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a client infers from an HTTP status whose body is not a Connect error.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502..=504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RPC failure as it crosses the wire: a code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The JSON error body of a unary response (also the `error` of an end-stream message).
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default())
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_owned(),
            message: self.message.clone(),
        }
    }

    /// Reads a unary error body; `None` when it is not a Connect error.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let body: ErrorBody = serde_json::from_slice(body).ok()?;
        Some(Self::new(Code::from_name(&body.code), body.message))
    }
}

/// How messages are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

/// What a request's `Content-Type` says about the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentType {
    pub codec: Codec,
    /// Enveloped streaming (`application/connect+…`) rather than a unary body.
    pub streaming: bool,
}

impl ContentType {
    /// Parses a request's content type; `None` for anything Connect does not define.
    pub fn parse(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        let (codec, streaming) = match essence.to_ascii_lowercase().as_str() {
            "application/json" => (Codec::Json, false),
            "application/proto" => (Codec::Proto, false),
            "application/connect+json" => (Codec::Json, true),
            "application/connect+proto" => (Codec::Proto, true),
            _ => return None,
        };
        Some(Self { codec, streaming })
    }

    /// The content type to answer with (the same as the request's).
    pub fn as_str(self) -> &'static str {
        match (self.codec, self.streaming) {
            (Codec::Json, false) => "application/json",
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, true) => "application/connect+json",
            (Codec::Proto, true) => "application/connect+proto",
        }
    }
}

impl Codec {
    /// Decodes one message.
    pub fn decode<M: Wire>(self, bytes: &[u8]) -> Result<M, RpcError> {
        match self {
            Codec::Json => {
                // An empty unary JSON body means the empty message.
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(M::default());
                }
                serde_json::from_slice(bytes).map_err(|err| {
                    RpcError::invalid_argument(format!("invalid JSON message: {err}"))
                })
            }
            Codec::Proto => M::decode(bytes).map_err(|err| {
                RpcError::invalid_argument(format!("invalid protobuf message: {err}"))
            }),
        }
    }

    /// Encodes one message.
    pub fn encode<M: Wire>(self, message: &M) -> Bytes {
        match self {
            Codec::Json => Bytes::from(serde_json::to_vec(message).unwrap_or_default()),
            Codec::Proto => Bytes::from(message.encode_to_vec()),
        }
    }
}

/// Frames one payload: flags byte, big-endian length, payload.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

/// The end-of-stream frame: `{}` on success, `{"error": …}` on failure (always JSON).
pub fn end_stream(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some(err) => serde_json::json!({ "error": err.body() }),
    };
    envelope(
        FLAG_END_STREAM,
        &serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// Reads the error out of an end-of-stream payload (`None` when the stream ended cleanly).
pub fn parse_end_stream(payload: &[u8]) -> Result<Option<RpcError>, RpcError> {
    #[derive(serde::Deserialize)]
    struct EndStream {
        error: Option<ErrorBody>,
    }
    let end: EndStream = serde_json::from_slice(payload)
        .map_err(|err| RpcError::internal(format!("invalid end-of-stream message: {err}")))?;
    Ok(end
        .error
        .map(|body| RpcError::new(Code::from_name(&body.code), body.message)))
}

/// One frame read off a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Incremental envelope parser for bodies that arrive in arbitrary chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_MESSAGE_BYTES)
    }
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "message of {len} bytes is over the limit of {} bytes",
                    self.max
                ),
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Whether bytes of an unfinished frame remain (a truncated stream when the body ended).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&envelope(0, b"{\"a\":1}"));
        wire.extend_from_slice(&end_stream(None));
        for split in 0..wire.len() {
            let mut decoder = FrameDecoder::default();
            decoder.push(&wire[..split]);
            let mut frames = Vec::new();
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
            decoder.push(&wire[split..]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(&frames[0].payload[..], b"{\"a\":1}");
            assert!(frames[1].is_end_stream());
            assert!(!decoder.has_partial());
        }
    }

    #[test]
    fn oversized_frame_is_resource_exhausted() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(&envelope(0, b"12345"));
        assert_eq!(
            decoder.next_frame().unwrap_err().code,
            Code::ResourceExhausted
        );
    }

    #[test]
    fn end_stream_round_trip() {
        let err = RpcError::not_found("no such process");
        let frame = end_stream(Some(&err));
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame);
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(parse_end_stream(&frame.payload).unwrap(), Some(err));
        assert_eq!(parse_end_stream(b"{}").unwrap(), None);
    }

    #[test]
    fn codes_round_trip_by_name() {
        for code in Code::ALL {
            assert_eq!(Code::from_name(code.as_str()), code);
        }
        assert_eq!(Code::from_name("bogus"), Code::Unknown);
    }

    #[test]
    fn content_types() {
        let ct = ContentType::parse("application/connect+json; charset=utf-8").unwrap();
        assert_eq!(
            ct,
            ContentType {
                codec: Codec::Json,
                streaming: true
            }
        );
        assert_eq!(ContentType::parse("text/plain"), None);
    }
}
