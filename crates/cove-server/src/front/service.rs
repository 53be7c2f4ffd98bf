//! The application as one connection serves it: each request is counted in flight until its
//! response is sent, its body gets the stall timeout, a switch of protocols is noted, and a
//! plain HTTP/1.1 request carries its ways past hyper ([`RawBody`], [`RawSend`]).

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{Router, body::Body, response::Response};
use http::{HeaderMap, Request, StatusCode, header};
use hyper::body::Incoming;

use super::{
    activity::{Activity, PastHyper},
    body::{InFlight, StallGuard},
    raw_body::RawBody,
    raw_send::RawSend,
};

/// The router, for the requests of one connection.
#[derive(Clone)]
pub struct ConnectionService {
    app: Router,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
    /// Set on connections that offer [`RawBody`] and [`RawSend`].
    past_hyper: Option<PastHyper>,
}

impl ConnectionService {
    pub fn new(
        app: Router,
        activity: Arc<Activity>,
        body_read_timeout: Duration,
        past_hyper: Option<PastHyper>,
    ) -> Self {
        Self {
            app,
            activity,
            body_read_timeout,
            past_hyper,
        }
    }
}

/// Whether a request body is a stream of messages (Connect or gRPC client and bidirectional
/// streams): those may rest between messages for as long as their sender likes, send their
/// own keepalives, and are authenticated by the agent before it reads them.
fn is_message_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/connect+") || ct.starts_with("application/grpc")
        })
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started(request.version());
        let limit = (!is_message_stream(request.headers())).then_some(self.body_read_timeout);
        let mut request = request.map(|body| Body::new(StallGuard::new(body, limit)));
        if let (Some(past), true) = (
            &self.past_hyper,
            request.version() <= http::Version::HTTP_11,
        ) {
            let extensions = request.extensions_mut();
            extensions.insert(RawBody::new(past.gate.clone(), limit));
            extensions.insert(RawSend::new(past.outlet.clone()));
        }
        let mut app = self.app.clone();
        Box::pin(async move {
            let response = match tower_service::Service::call(&mut app, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.upgrade();
            }
            Ok(response.map(|body| Body::new(InFlight::new(body, in_flight))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_streams_are_told_by_their_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_message_stream(&headers));
        for (ct, stream) in [
            ("application/connect+json", true),
            ("application/connect+proto", true),
            ("application/grpc+proto", true),
            ("application/json", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_message_stream(&headers), stream, "{ct}");
        }
    }
}
