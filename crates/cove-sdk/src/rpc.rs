//! A Connect RPC client over reqwest, binary protobuf codec, unary and server streaming.

use std::time::Duration;

use bytes::Bytes;
use cove_proto::connect::{self, Code, Codec, FrameDecoder, RpcError, Wire};
use futures::{Stream, StreamExt, stream::BoxStream};
use http::{HeaderMap, HeaderValue, header};

use crate::error::{Error, Result};

/// Where RPCs go and what every request carries.
#[derive(Clone, Debug)]
pub(crate) struct Channel {
    pub http: reqwest::Client,
    /// Scheme and authority (plus any path prefix), without a trailing slash.
    pub base: String,
    pub headers: HeaderMap,
}

impl Channel {
    fn post(
        &self,
        method: &str,
        content_type: &'static str,
        timeout: Option<Duration>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!("{}/{method}", self.base))
            .headers(self.headers.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
            .header("connect-protocol-version", "1");
        if let Some(timeout) = timeout.filter(|t| !t.is_zero()) {
            request = request.header("connect-timeout-ms", timeout.as_millis().to_string());
        }
        request
    }

    /// A unary call.
    pub async fn unary<Req: Wire, Resp: Wire>(
        &self,
        method: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let mut builder = self
            .post(method, "application/proto", timeout)
            .body(Codec::Proto.encode(request));
        if let Some(timeout) = timeout.filter(|t| !t.is_zero()) {
            // A little slack so the server's deadline error arrives before ours.
            builder = builder.timeout(timeout + Duration::from_secs(1));
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        if status != 200 {
            return Err(rpc_error(status, &body).into());
        }
        Ok(Codec::Proto.decode(&body)?)
    }

    /// A server-streaming call: the stream yields messages until the end-of-stream frame.
    pub async fn server_stream<Req: Wire, Resp: Wire>(
        &self,
        method: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<BoxStream<'static, Result<Resp>>> {
        let frame = connect::envelope(0, &Codec::Proto.encode(request));
        let response = self
            .post(method, "application/connect+proto", timeout)
            .body(frame)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.bytes().await?;
            return Err(rpc_error(status, &body).into());
        }
        Ok(decode_stream(response.bytes_stream()).boxed())
    }
}

/// An error answer: a Connect error body, or one inferred from the HTTP status.
fn rpc_error(status: u16, body: &[u8]) -> RpcError {
    RpcError::from_json(body).unwrap_or_else(|| {
        RpcError::new(
            Code::from_http_status(status),
            format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        )
    })
}

/// How long the rest of a body may take to arrive once its last message has: the end of
/// the HTTP body comes right behind the end-of-stream message from any Connect server.
pub(crate) const END_OF_BODY_WAIT: Duration = Duration::from_secs(1);

/// Reads what is left of a response's body after its end-of-stream message (nothing but
/// the end of the HTTP body itself), so that its connection goes back to the client's pool:
/// a body dropped before its end closes the connection, and every call would open a new one
/// (a TCP handshake through the proxy, and a socket left in `TIME_WAIT` per command).
/// Whatever comes, or fails, after that message changes nothing of the call. (The same
/// holds for the code interpreter's lines after `end_of_execution`.)
pub(crate) async fn read_to_end(mut body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin) {
    let rest = async { while let Some(Ok(_)) = body.next().await {} };
    let _ = tokio::time::timeout(END_OF_BODY_WAIT, rest).await;
}

fn decode_stream<Resp: Wire>(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<Resp>> + Send {
    let state = (body.boxed(), FrameDecoder::default(), false);
    futures::stream::unfold(state, |(mut body, mut decoder, done)| async move {
        if done {
            return None;
        }
        loop {
            match decoder.next_frame() {
                Err(err) => return Some((Err(err.into()), (body, decoder, true))),
                Ok(Some(frame)) if frame.is_end_stream() => {
                    return match connect::parse_end_stream(&frame.payload) {
                        Ok(None) => {
                            read_to_end(body).await;
                            None
                        }
                        Ok(Some(err)) | Err(err) => Some((Err(err.into()), (body, decoder, true))),
                    };
                }
                Ok(Some(frame)) => {
                    let message = Codec::Proto
                        .decode::<Resp>(&frame.payload)
                        .map_err(Error::from);
                    return Some((message, (body, decoder, false)));
                }
                Ok(None) => {}
            }
            match body.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(err)) => return Some((Err(err.into()), (body, decoder, true))),
                None => {
                    let err = Error::Protocol(
                        "the stream ended without an end-of-stream message".to_owned(),
                    );
                    return Some((Err(err), (body, decoder, true)));
                }
            }
        }
    })
}
