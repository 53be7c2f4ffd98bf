//! A request passed on to a node, and the node's answer passed back, both streamed (nothing
//! is held whole), over connections kept open to each node: how the edge and the api reach
//! the nodes. An upgraded connection (a WebSocket to a server in a sandbox) is relayed both
//! ways. A node advertised at an `https://` address is reached over TLS, its certificate
//! checked against the CAs given ([`NodeTrust`]).

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::Response,
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::tls::TlsError;

/// Where Debian keeps the system's CA bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long connecting to a node may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one hop, not the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
];

/// A node could not be reached (the cause is logged).
#[derive(Debug)]
pub struct Unreachable;

/// The CAs the certificates of nodes at `https://` addresses must chain to.
#[derive(Clone, Debug)]
pub struct NodeTrust(Arc<RootCertStore>);

impl NodeTrust {
    /// The CAs in `ca` (PEM), else the system's (none when it has no bundle: then no node
    /// at an `https://` address can be reached, and the log says why).
    pub fn load(ca: Option<&Path>) -> Result<Self, TlsError> {
        let path = ca.unwrap_or(Path::new(SYSTEM_ROOTS));
        let certs: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_file_iter(path).and_then(|certs| certs.collect());
        let certs = match (certs, ca) {
            (Ok(certs), _) => certs,
            (Err(source), Some(_)) => {
                return Err(TlsError::Certificate {
                    path: path.to_owned(),
                    source,
                });
            }
            (Err(_), None) => Vec::new(),
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 && ca.is_some() {
            return Err(TlsError::NoCertificate(path.to_owned()));
        }
        Ok(Self(Arc::new(roots)))
    }
}

/// The client the edge and the api reach nodes with.
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl Forwarder {
    pub fn new(trust: &NodeTrust) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default protocol versions are supported")
            .with_root_certificates(trust.0.clone())
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request` to the node at `address` (`http://host:port` or `https://…`) and
    /// answers with what it answers.
    pub async fn send(&self, address: &str, mut request: Request) -> Result<Response, Unreachable> {
        let Some(uri) = node_uri(address, request.uri()) else {
            tracing::error!(%address, "a node's address is not an http or https URL");
            return Err(Unreachable);
        };
        let upgrade = wanted_upgrade(request.headers());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        // Nodes are reached over HTTP/1.1 whatever the client speaks (HTTP/2 over TLS); the
        // authority an HTTP/2 request carries in its URI is the Host the node routes by.
        if !request.headers().contains_key(header::HOST)
            && let Some(host) = request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        *request.version_mut() = axum::http::Version::HTTP_11;
        *request.uri_mut() = uri;
        strip_hop_by_hop(request.headers_mut());
        if let Some(protocol) = &upgrade {
            request
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            request
                .headers_mut()
                .insert(header::UPGRADE, protocol.clone());
        }
        let mut response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => {
                // The causes say why (refused, timed out, an untrusted certificate).
                tracing::warn!(err = %cove_image::error_chain(&err), %address, "cannot reach a node");
                return Err(Unreachable);
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let node_side = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let (Ok(client), Ok(node)) = (client_side.await, node_side.await) else {
                    tracing::debug!("an upgrade was not completed");
                    return;
                };
                let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
                    tracing::debug!(%err, "an upgraded connection ended");
                }
            });
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// The node's URI for a request to `uri`: the same path and query at `address`.
fn node_uri(address: &str, uri: &Uri) -> Option<Uri> {
    let base: Uri = address.parse().ok()?;
    let scheme = base
        .scheme_str()
        .filter(|s| matches!(*s, "http" | "https"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(scheme)
        .authority(base.authority()?.clone())
        .path_and_query(path)
        .build()
        .ok()
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade: …`).
fn wanted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are this hop's too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_path_and_lose_their_hop_headers() {
        let uri: Uri = "/files?path=%2Fa&username=user".parse().unwrap();
        assert_eq!(
            node_uri("http://10.0.0.5:3000", &uri).unwrap().to_string(),
            "http://10.0.0.5:3000/files?path=%2Fa&username=user"
        );
        assert_eq!(
            node_uri("https://node-1.internal:3443", &uri)
                .unwrap()
                .to_string(),
            "https://node-1.internal:3443/files?path=%2Fa&username=user"
        );
        assert!(node_uri("ftp://x", &uri).is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("e2b-sandbox-id", HeaderValue::from_static("abc"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(wanted_upgrade(&headers), None);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrade.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(wanted_upgrade(&upgrade).unwrap(), "websocket");
    }

    /// A node sees an HTTP/2 client's request as HTTP/1.1, with the authority it was sent
    /// to as its Host (found with the api and the edge behind TLS: the SDK speaks HTTP/2
    /// there, and every create and sandbox call failed).
    #[tokio::test]
    async fn http2_requests_reach_nodes_as_http1_with_their_host() {
        let node = axum::Router::new().fallback(|request: Request| async move {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            format!("{host} {:?}", request.version())
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move { axum::serve(listener, node).await });
        let mut request = Request::new(Body::empty());
        *request.version_mut() = axum::http::Version::HTTP_2;
        *request.uri_mut() = "https://49983-abc.cove.localhost:8443/health"
            .parse()
            .unwrap();
        let response = Forwarder::new(&NodeTrust::load(None).unwrap())
            .send(&address, request)
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(body, "49983-abc.cove.localhost:8443 HTTP/1.1");
        served.abort();
    }
}
