//! Answers given before the request body was read. Hyper closes an HTTP/1 connection whose
//! request body is left unread, and a client still sending that body then sees its write
//! fail (`EPIPE`, or a reset that also throws away the answer) instead of the answer. So a
//! body the handler dropped unread is read to its end first, when it is small and arrives
//! promptly, as nginx's lingering close does; otherwise the answer says `Connection: close`,
//! so that a client does not reuse the connection for its next request.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

/// The most of a refused request's body that is read to keep its connection.
const DRAIN_AT_MOST: u64 = 4 << 20;
/// How long the rest of a refused request's body may take to arrive.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// A request body that records whether it was read to its end, and hands itself back when
/// dropped before that.
struct Tracked {
    inner: Option<Body>,
    finished: Arc<AtomicBool>,
    give_back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        // A reader may stop at the last frame without asking for the end.
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            self.finished.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(back), Some(body)) = (self.give_back.take(), self.inner.take()) {
            let _ = back.send(body);
        }
    }
}

/// Middleware: reads what is left of a body the handler dropped unread, and marks the answer
/// `Connection: close` when that is not possible.
pub async fn close_if_unread(request: Request, next: Next) -> Response {
    // Nothing to leave unread (most GETs): no wrapper, no channel.
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let finished = Arc::new(AtomicBool::new(false));
    let (give_back, mut given_back) = oneshot::channel();
    let tracked = Body::new(Tracked {
        inner: Some(body),
        finished: finished.clone(),
        give_back: Some(give_back),
    });
    // HTTP/2 resets just the stream; only HTTP/1 connections are at stake.
    let http2 = parts.version >= http::Version::HTTP_2;
    // A client waiting for `100 Continue` is not asked for a body that is refused anyway.
    let awaits_continue = parts.headers.contains_key(header::EXPECT);
    let mut response = next.run(Request::from_parts(parts, tracked)).await;
    if http2 || finished.load(Ordering::Relaxed) {
        return response;
    }
    // The handler may still hold the body (a forwarded request streams on beside its
    // answer); then the connection closes after the answer.
    if let Ok(rest) = given_back.try_recv()
        && !awaits_continue
        && drain(rest).await
    {
        return response;
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Reads `body` to its end and throws it away; false when it is larger than
/// [`DRAIN_AT_MOST`], fails, or does not end within [`DRAIN_WITHIN`].
async fn drain(mut body: Body) -> bool {
    if body.size_hint().lower() > DRAIN_AT_MOST {
        return false;
    }
    let read = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DRAIN_AT_MOST {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_WITHIN, read)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::{Router, http::StatusCode, routing::post};
    use futures::StreamExt;
    use tower::ServiceExt;

    use super::*;

    /// An app whose one route refuses without reading the body.
    fn refusing() -> Router {
        Router::new()
            .route("/", post(|| async { StatusCode::NOT_FOUND }))
            .layer(axum::middleware::from_fn(close_if_unread))
    }

    /// A body of `chunks`, then (when `ends`) its end, else a wait that never ends; `read`
    /// counts the chunks taken from it.
    fn body(chunks: usize, ends: bool, read: Arc<std::sync::atomic::AtomicUsize>) -> Body {
        let chunks = futures::stream::iter(0..chunks).map(move |_| {
            read.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(Bytes::from_static(b"0123456789"))
        });
        let end = futures::stream::once(async move {
            if !ends {
                std::future::pending::<()>().await;
            }
            Ok(Bytes::new())
        });
        Body::from_stream(chunks.chain(end))
    }

    fn closes(response: &Response) -> bool {
        response.headers().get(header::CONNECTION) == Some(&HeaderValue::from_static("close"))
    }

    #[tokio::test]
    async fn a_refused_small_body_is_read_and_the_connection_kept() {
        let read = Arc::default();
        let request = Request::post("/")
            .body(body(3, true, Arc::clone(&read)))
            .unwrap();
        let response = refusing().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(!closes(&response));
        assert_eq!(read.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_end_in_time_closes_the_connection() {
        let request = Request::post("/")
            .body(body(1, false, Arc::default()))
            .unwrap();
        let response = refusing().oneshot(request).await.unwrap();
        assert!(closes(&response));
    }

    #[tokio::test]
    async fn a_large_body_is_not_waited_for() {
        let read = Arc::default();
        let announced = Announced(body(1, true, Arc::clone(&read)), DRAIN_AT_MOST + 1);
        let request = Request::post("/").body(Body::new(announced)).unwrap();
        let response = refusing().oneshot(request).await.unwrap();
        assert!(closes(&response));
        assert_eq!(read.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_client_waiting_for_100_continue_is_not_asked_for_its_body() {
        let read = Arc::default();
        let request = Request::post("/")
            .header(header::EXPECT, "100-continue")
            .body(body(1, true, Arc::clone(&read)))
            .unwrap();
        let response = refusing().oneshot(request).await.unwrap();
        assert!(closes(&response));
        assert_eq!(read.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_body_read_by_the_handler_keeps_the_connection() {
        let app = Router::new()
            .route("/", post(|text: String| async move { text }))
            .layer(axum::middleware::from_fn(close_if_unread));
        let request = Request::post("/")
            .body(body(2, true, Arc::default()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert!(!closes(&response));
    }

    /// A body that announces `.1` bytes (as a `Content-Length` does).
    struct Announced(Body, u64);

    impl HttpBody for Announced {
        type Data = Bytes;
        type Error = axum::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }
}
