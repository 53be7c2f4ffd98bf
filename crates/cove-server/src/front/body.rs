//! Bodies as the front door hands them on: a request body that stalls fails after the body
//! read timeout, and a response body keeps its request "in flight" until it is sent.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::activity::RequestGuard;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body delivered nothing for {0:?}")]
    Stalled(Duration),
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

/// The stall a request body ended with, if an error (or one of its causes) is that.
pub fn stalled(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(BodyError::Stalled(limit)) = err.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        cause = err.source();
    }
    None
}

/// A request body that fails when the client sends nothing for `limit` while it is being
/// read. Only time spent waiting for the client counts: the timer runs while a read is
/// pending and stops when a frame comes, so a reader that pauses (a sandbox busy writing
/// what it got) does not use it up.
pub struct StallGuard {
    inner: Incoming,
    limit: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    failed: bool,
}

impl StallGuard {
    /// `limit` `None`: no timeout (message streams, which carry their own keepalives).
    pub fn new(inner: Incoming, limit: Option<Duration>) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
            failed: false,
        }
    }
}

impl HttpBody for StallGuard {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let (true, Some(limit)) = (this.failed, this.limit) {
            return Poll::Ready(Some(Err(BodyError::Stalled(limit))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Poll::Pending => {
                let Some(limit) = this.limit else {
                    return Poll::Pending;
                };
                let armed = this.armed;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !armed {
                    timer.as_mut().reset(Instant::now() + limit);
                    this.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.failed = true;
                        Poll::Ready(Some(Err(BodyError::Stalled(limit))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not after a stall: the body did not end, and whoever answers must say so
        // (`Connection: close`, see `unread`).
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request in flight until it has been sent (or dropped).
pub struct InFlight {
    inner: Body,
    _request: RequestGuard,
}

impl InFlight {
    pub fn new(inner: Body, request: RequestGuard) -> Self {
        Self {
            inner,
            _request: request,
        }
    }
}

impl HttpBody for InFlight {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_found_among_the_causes() {
        let stalled_body = axum::Error::new(BodyError::Stalled(Duration::from_secs(3)));
        assert_eq!(stalled(&stalled_body), Some(Duration::from_secs(3)));
        let other = std::io::Error::other("no");
        assert_eq!(stalled(&other), None);
    }
}
