//! Connect RPC on top of axum: turns typed async handlers into routes that speak the JSON and
//! protobuf codecs, unary and streaming, the way connect-go (and so envd) does.

use std::{future::Future, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, post},
};
use bytes::Bytes;
use cove_proto::connect::{
    self, Code, ContentType, FrameDecoder, MAX_MESSAGE_BYTES, RpcError, Wire,
};
use futures::{FutureExt, Stream, StreamExt, stream::BoxStream};
use http_body_util::BodyExt;

use crate::{AgentState, auth::Caller};

/// What a handler learns about its call besides the message.
#[derive(Clone, Debug)]
pub struct Call {
    /// The user the call acts as (from `Authorization: Basic`, else the default user).
    pub caller: Caller,
    /// `Connect-Timeout-Ms`: the client's deadline for the whole call.
    pub timeout: Option<Duration>,
    /// How often an idle stream should send a keepalive (`Keepalive-Ping-Interval`, seconds).
    pub keepalive: Duration,
}

/// Default keepalive period for streams when the client does not ask for one.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

impl Call {
    fn from_headers(state: &AgentState, headers: &HeaderMap) -> Result<Self, RpcError> {
        Ok(Self {
            caller: state.caller(headers)?,
            timeout: timeout(headers)?,
            keepalive: keepalive(headers),
        })
    }
}

/// Most digits Connect allows in `Connect-Timeout-Ms` (about 317 years): the deadline of any
/// allowed value is a time the clock can hold, where `u64::MAX` ms would overflow it.
const MAX_TIMEOUT_DIGITS: usize = 10;

/// Longest keepalive period a client may ask for; longer ones are cut to it.
const MAX_KEEPALIVE: Duration = Duration::from_secs(24 * 60 * 60);

/// `Connect-Timeout-Ms`: the client's deadline for the whole call.
fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, RpcError> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let invalid = || {
        RpcError::invalid_argument(format!(
            "invalid Connect-Timeout-Ms header: expected at most {MAX_TIMEOUT_DIGITS} digits"
        ))
    };
    let digits = value.to_str().map_err(|_| invalid())?.trim();
    if digits.is_empty()
        || digits.len() > MAX_TIMEOUT_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let millis: u64 = digits.parse().map_err(|_| invalid())?;
    Ok(Some(Duration::from_millis(millis)))
}

/// `Keepalive-Ping-Interval` (seconds): how often an idle stream sends a keepalive.
fn keepalive(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|secs| *secs > 0)
        .map_or(DEFAULT_KEEPALIVE, |secs| {
            Duration::from_secs(secs).min(MAX_KEEPALIVE)
        })
}

/// A stream of response messages; an `Err` item ends the stream with that error.
pub type MessageStream<T> = BoxStream<'static, Result<T, RpcError>>;

/// A unary method.
pub fn unary<Req, Resp, F, Fut>(handler: F) -> MethodRouter<AgentState>
where
    Req: Wire,
    Resp: Wire,
    F: Fn(AgentState, Call, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    post(
        move |State(state): State<AgentState>, headers: HeaderMap, body: Body| async move {
            let content_type = match request_content_type(&headers, false) {
                Ok(ct) => ct,
                Err(rejection) => return rejection.into_response(),
            };
            let result = async {
                let call = Call::from_headers(&state, &headers)?;
                let bytes = read_limited(body).await?;
                let request: Req = content_type.codec.decode(&bytes)?;
                let timeout = call.timeout;
                let work = handler(state, call, request);
                match timeout {
                    Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                        Err(RpcError::new(
                            Code::DeadlineExceeded,
                            "the call's deadline was exceeded",
                        ))
                    }),
                    None => work.await,
                }
            }
            .await;
            match result {
                Ok(response) => (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(content_type.as_str()),
                    )],
                    content_type.codec.encode(&response),
                )
                    .into_response(),
                Err(err) => unary_error(&err),
            }
        },
    )
}

/// A server-streaming method. The handler returns the stream of responses; failing before
/// the first message is reported in the end-of-stream message, as Connect requires.
pub fn server_stream<Req, Resp, F, Fut>(handler: F) -> MethodRouter<AgentState>
where
    Req: Wire,
    Resp: Wire,
    F: Fn(AgentState, Call, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<MessageStream<Resp>, RpcError>> + Send + 'static,
{
    post(
        move |State(state): State<AgentState>, headers: HeaderMap, body: Body| async move {
            let content_type = match request_content_type(&headers, true) {
                Ok(ct) => ct,
                Err(rejection) => return rejection.into_response(),
            };
            let codec = content_type.codec;
            let opened: Result<MessageStream<Resp>, RpcError> = async {
                let call = Call::from_headers(&state, &headers)?;
                let bytes = read_limited(body).await?;
                let mut decoder = FrameDecoder::default();
                decoder.push(&bytes);
                let frame = decoder
                    .next_frame()?
                    .ok_or_else(|| RpcError::invalid_argument("the request message is missing"))?;
                if decoder.has_partial() || decoder.next_frame()?.is_some() {
                    return Err(RpcError::invalid_argument(
                        "a server-streaming call takes exactly one request message",
                    ));
                }
                let request: Req = codec.decode(&frame.payload)?;
                handler(state, call, request).await
            }
            .await;
            stream_response(content_type, opened)
        },
    )
}

/// A client-streaming method: the request body carries enveloped messages as they come.
pub fn client_stream<Req, Resp, F, Fut>(handler: F) -> MethodRouter<AgentState>
where
    Req: Wire,
    Resp: Wire,
    F: Fn(AgentState, Call, MessageStream<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    post(
        move |State(state): State<AgentState>, headers: HeaderMap, body: Body| async move {
            let content_type = match request_content_type(&headers, true) {
                Ok(ct) => ct,
                Err(rejection) => return rejection.into_response(),
            };
            let codec = content_type.codec;
            let result: Result<Resp, RpcError> = async {
                let call = Call::from_headers(&state, &headers)?;
                handler(state, call, decode_request_stream::<Req>(codec, body)).await
            }
            .await;
            let single: MessageStream<Resp> = futures::stream::once(async { result }).boxed();
            stream_response(content_type, Ok(single))
        },
    )
}

/// Decodes the enveloped messages of a streaming request body one by one.
fn decode_request_stream<Req: Wire>(codec: connect::Codec, body: Body) -> MessageStream<Req> {
    let state = (body.into_data_stream(), FrameDecoder::default(), false);
    futures::stream::unfold(state, move |(mut body, mut decoder, done)| async move {
        if done {
            return None;
        }
        loop {
            match decoder.next_frame() {
                Err(err) => return Some((Err(err), (body, decoder, true))),
                Ok(Some(frame)) if frame.is_end_stream() => return None,
                Ok(Some(frame)) => {
                    let item = codec.decode::<Req>(&frame.payload);
                    return Some((item, (body, decoder, false)));
                }
                Ok(None) => {}
            }
            match body.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(err)) => {
                    let err =
                        RpcError::new(Code::Canceled, format!("reading the request failed: {err}"));
                    return Some((Err(err), (body, decoder, true)));
                }
                None if decoder.has_partial() => {
                    let err =
                        RpcError::invalid_argument("the request stream ended inside a message");
                    return Some((Err(err), (body, decoder, true)));
                }
                None => return None,
            }
        }
    })
    .boxed()
}

fn stream_response<Resp: Wire>(
    content_type: ContentType,
    opened: Result<MessageStream<Resp>, RpcError>,
) -> Response {
    let codec = content_type.codec;
    let frames: BoxStream<'static, Result<Bytes, std::convert::Infallible>> = match opened {
        Err(err) => {
            futures::stream::once(async move { Ok(connect::end_stream(Some(&err))) }).boxed()
        }
        Ok(messages) => {
            let state = (messages, None, false);
            futures::stream::unfold(state, move |(mut messages, ahead, finished)| async move {
                if finished {
                    return None;
                }
                let next = match ahead {
                    Some(next) => Some(next),
                    None => messages.next().await,
                };
                match next {
                    Some(Ok(message)) => {
                        let frame = connect::envelope(0, &codec.encode(&message));
                        // A message that is the last (a process's end event) goes out in one
                        // piece with the end of the stream: one write less on every hop.
                        match messages.next().now_or_never() {
                            Some(last @ (None | Some(Err(_)))) => {
                                let end = connect::end_stream(last.and_then(Result::err).as_ref());
                                let both = [frame, end].concat().into();
                                Some((Ok(both), (messages, None, true)))
                            }
                            ahead => Some((Ok(frame), (messages, ahead.flatten(), false))),
                        }
                    }
                    Some(Err(err)) => {
                        Some((Ok(connect::end_stream(Some(&err))), (messages, None, true)))
                    }
                    None => Some((Ok(connect::end_stream(None)), (messages, None, true))),
                }
            })
            .boxed()
        }
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type.as_str()),
        )],
        Body::from_stream(frames),
    )
        .into_response()
}

/// Why a request was refused before its handler ran.
enum Rejection {
    /// The content type does not fit the method (unary vs streaming) or is not Connect's.
    MediaType { given: String, streaming: bool },
    /// The body is compressed with something other than identity.
    Compression { encoding: String, streaming: bool },
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::MediaType { given, streaming } => {
                let accepted = if streaming {
                    "application/connect+json, application/connect+proto"
                } else {
                    "application/json, application/proto"
                };
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    [(
                        header::HeaderName::from_static("accept-post"),
                        HeaderValue::from_static(accepted),
                    )],
                    format!("unsupported content type {given:?}: expected {accepted}"),
                )
                    .into_response()
            }
            Rejection::Compression {
                encoding,
                streaming,
            } => {
                let err = RpcError::new(
                    Code::Unimplemented,
                    format!("unsupported compression {encoding:?}: only identity is accepted"),
                );
                if streaming {
                    let json = ContentType {
                        codec: connect::Codec::Json,
                        streaming: true,
                    };
                    stream_response::<cove_proto::process::ListResponse>(json, Err(err))
                } else {
                    unary_error(&err)
                }
            }
        }
    }
}

/// Checks the content type against the kind of method, and refuses compressed bodies.
fn request_content_type(headers: &HeaderMap, streaming: bool) -> Result<ContentType, Rejection> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content_type = ContentType::parse(given)
        .filter(|ct| ct.streaming == streaming)
        .ok_or_else(|| Rejection::MediaType {
            given: given.to_owned(),
            streaming,
        })?;
    let encoding_header = if streaming {
        "connect-content-encoding"
    } else {
        "content-encoding"
    };
    match headers.get(encoding_header).and_then(|v| v.to_str().ok()) {
        None | Some("identity") | Some("") => Ok(content_type),
        Some(other) => Err(Rejection::Compression {
            encoding: other.to_owned(),
            streaming,
        }),
    }
}

/// Reads a whole body, refusing more than one message's worth of bytes.
async fn read_limited(body: Body) -> Result<Bytes, RpcError> {
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES + 5);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(RpcError::new(
            Code::ResourceExhausted,
            format!("request is over the limit of {MAX_MESSAGE_BYTES} bytes"),
        )),
        Err(err) => Err(RpcError::new(
            Code::Canceled,
            format!("reading the request failed: {err}"),
        )),
    }
}

/// A unary error: the code's HTTP status and a JSON `{code, message}` body.
pub fn unary_error(err: &RpcError) -> Response {
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        err.to_json(),
    )
        .into_response()
}

/// Merges a message stream with keepalive messages sent whenever it is idle for `period`.
pub fn with_keepalive<T: Send + 'static>(
    messages: MessageStream<T>,
    period: Duration,
    keepalive: impl Fn() -> T + Send + 'static,
) -> MessageStream<T> {
    let ticks = tokio_stream::wrappers::IntervalStream::new({
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // The keepalive side must stop when the messages end, so race them explicitly.
    let state = (messages, ticks, keepalive);
    futures::stream::unfold(state, |(mut messages, mut ticks, keepalive)| async move {
        tokio::select! {
            biased;
            next = messages.next() => next.map(|item| (item, (messages, ticks, keepalive))),
            _ = ticks.next() => {
                let ping = keepalive();
                Some((Ok(ping), (messages, ticks, keepalive)))
            }
        }
    })
    .boxed()
}

/// Runs a future to completion with a deadline, for streams bounded by `Connect-Timeout-Ms`.
pub fn with_deadline<T: Send + 'static>(
    messages: MessageStream<T>,
    timeout: Option<Duration>,
) -> MessageStream<T> {
    let Some(timeout) = timeout else {
        return messages;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let state = (messages, false);
    futures::stream::unfold(state, move |(mut messages, done)| async move {
        if done {
            return None;
        }
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(item)) => Some((item, (messages, false))),
            Ok(None) => None,
            Err(_) => Some((
                Err(RpcError::new(
                    Code::DeadlineExceeded,
                    "the call's deadline was exceeded",
                )),
                (messages, true),
            )),
        }
    })
    .boxed()
}

/// Adapts any stream into a [`MessageStream`].
pub fn boxed<T, S>(stream: S) -> MessageStream<T>
where
    S: Stream<Item = Result<T, RpcError>> + Send + 'static,
{
    stream.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    /// The pieces of a streamed answer's body, and the Connect frames in each.
    async fn pieces_of(response: Response) -> Vec<Vec<connect::Frame>> {
        let mut body = response.into_body();
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let mut decoder = FrameDecoder::default();
            decoder.push(&frame.unwrap().into_data().unwrap());
            let mut frames = Vec::new();
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
            pieces.push(frames);
        }
        pieces
    }

    #[tokio::test]
    async fn a_last_message_leaves_with_the_end_of_the_stream() {
        use cove_proto::process::{
            ProcessEvent, StartResponse,
            process_event::{Event, StartEvent},
        };
        let message = |pid| StartResponse {
            event: Some(ProcessEvent {
                event: Some(Event::Start(StartEvent { pid })),
            }),
        };
        let content_type = ContentType {
            codec: connect::Codec::Proto,
            streaming: true,
        };
        let ends = |piece: &[connect::Frame]| piece.iter().map(|f| f.is_end_stream()).collect();

        // Messages all there at once: the last one and the end share a piece.
        let ready = futures::stream::iter([Ok(message(1)), Ok(message(2))]).boxed();
        let pieces = pieces_of(stream_response(content_type, Ok(ready))).await;
        let shape: Vec<Vec<bool>> = pieces.iter().map(|p| ends(p)).collect();
        assert_eq!(shape, [vec![false], vec![false, true]]);
        let last: StartResponse = connect::Codec::Proto.decode(&pieces[1][0].payload).unwrap();
        assert_eq!(last, message(2));

        // An error right behind the last message: in the same piece, as the end's error.
        let failing = futures::stream::iter([Ok(message(1)), Err(RpcError::internal("broke"))]);
        let pieces = pieces_of(stream_response(content_type, Ok(failing.boxed()))).await;
        assert_eq!(pieces.len(), 1);
        let err = connect::parse_end_stream(&pieces[0][1].payload).unwrap();
        assert_eq!(err.unwrap().message, "broke");

        // An end that comes later leaves on its own.
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        sender.unbounded_send(Ok(message(1))).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(sender);
        });
        let pieces = pieces_of(stream_response(content_type, Ok(receiver.boxed()))).await;
        let shape: Vec<Vec<bool>> = pieces.iter().map(|p| ends(p)).collect();
        assert_eq!(shape, [vec![false], vec![true]]);
    }

    /// `Connect-Timeout-Ms: 18446744073709551615` (or an interval of as many seconds) used to
    /// overflow `Instant + Duration`: a panic in the call, and on `Process/Start` in the task
    /// that follows the process's output. The `connect_rpc` fuzz target's seeds send both.
    #[test]
    fn timeouts_and_intervals_stay_within_the_clock() {
        assert_eq!(timeout(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            timeout(&headers("connect-timeout-ms", " 1500 ")).unwrap(),
            Some(Duration::from_millis(1500))
        );
        let longest = timeout(&headers("connect-timeout-ms", "9999999999"))
            .unwrap()
            .unwrap();
        assert!(tokio::time::Instant::now().checked_add(longest).is_some());
        for refused in ["18446744073709551615", "10000000000", "-1", "+5", "", "1e3"] {
            let err = timeout(&headers("connect-timeout-ms", refused)).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{refused:?}");
        }

        assert_eq!(keepalive(&HeaderMap::new()), DEFAULT_KEEPALIVE);
        assert_eq!(
            keepalive(&headers("keepalive-ping-interval", "5")),
            Duration::from_secs(5)
        );
        assert_eq!(
            keepalive(&headers("keepalive-ping-interval", "18446744073709551615")),
            MAX_KEEPALIVE
        );
        assert_eq!(
            keepalive(&headers("keepalive-ping-interval", "0")),
            DEFAULT_KEEPALIVE
        );
    }
}
