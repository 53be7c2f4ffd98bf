//! A client for the pull side of the OCI distribution API: manifests, configs and blobs,
//! with token (Bearer) and Basic auth, mirrors with fallback, platform selection, and the
//! digest of every document checked.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{StatusCode, Url, header};

use crate::{
    auth::{Challenge, Credentials},
    config::{ImageConfig, RawConfig},
    digest::Digest,
    manifest::{
        Descriptor, ImageManifest, MAX_DOCUMENT_BYTES, Manifest, ManifestError, media_type,
    },
    mirror::Mirror,
    platform::{Platform, PlatformError},
    reference::Reference,
};

/// How the client reaches registries.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Mirrors tried in order before the registry they mirror.
    pub mirrors: Vec<Mirror>,
    /// Registries (`host:port`) reached over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// The platform picked from multi-platform images.
    pub platform: Platform,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            platform: Platform::host(),
            user_agent: format!("cove/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A registry client; cheap to clone, it keeps tokens between requests.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    config: ClientConfig,
    /// Authorization header values by (endpoint, repository).
    tokens: Mutex<HashMap<(String, String), String>>,
}

/// An image's manifest and config, found and verified, ready for its layers to be fetched.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference pinned to the manifest's digest.
    pub reference: Reference,
    /// The digest of the platform's image manifest (not of the index).
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// The layers' uncompressed digests, bottom first, in the manifest's order.
    pub diff_ids: Vec<Digest>,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) credentials: Credentials,
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    base: Url,
    mirror: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {reference} not found")]
    NotFound { reference: String },
    #[error(
        "access to {reference} was denied: the image does not exist or needs credentials{}",
        if *with_credentials { " (the ones given were refused)" } else { "" }
    )]
    Denied {
        reference: String,
        with_credentials: bool,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the token service {url} gave no usable token")]
    Token {
        url: String,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("{what} of {reference}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url} sent more than {limit} bytes for a document")]
    TooLarge { url: String, limit: u64 },
    #[error("bad manifest for {reference}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("bad image config for {reference}")]
    Config {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl RegistryClient {
    pub fn new(config: ClientConfig) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                config,
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Finds the image for our platform: its manifest (through an index if there is one)
    /// and its config, every document checked against its digest.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: &Credentials,
    ) -> Result<ResolvedImage, RegistryError> {
        let shown = reference.to_string();
        let mut endpoints = self.endpoints(reference);
        let (first, digest) = self
            .manifest(
                reference,
                &mut endpoints,
                credentials,
                &reference.manifest_reference(),
                reference.digest(),
            )
            .await?;
        let (manifest, manifest_digest) = match first {
            Manifest::Image(manifest) => (manifest, digest),
            Manifest::Index(index) => {
                let entry = self.inner.config.platform.select(&index, &shown)?;
                let wanted = entry.digest.clone();
                let (inner, digest) = self
                    .manifest(
                        reference,
                        &mut endpoints,
                        credentials,
                        &wanted.to_string(),
                        Some(&wanted),
                    )
                    .await?;
                match inner {
                    Manifest::Image(manifest) => (manifest, digest),
                    Manifest::Index(_) => {
                        return Err(RegistryError::Invalid {
                            reference: shown,
                            message: "an index points at another index".to_owned(),
                        });
                    }
                }
            }
        };
        let config_bytes = self
            .document(
                reference,
                &mut endpoints,
                credentials,
                &format!("blobs/{}", manifest.config.digest),
                None,
            )
            .await?
            .0;
        let actual = Digest::of(&config_bytes);
        if actual != manifest.config.digest {
            return Err(RegistryError::DigestMismatch {
                reference: shown,
                what: "config",
                expected: manifest.config.digest.clone(),
                actual,
            });
        }
        let raw = RawConfig::parse(&config_bytes).map_err(|source| RegistryError::Config {
            reference: shown.clone(),
            source,
        })?;
        check_image(&shown, &self.inner.config.platform, &manifest, &raw)?;
        Ok(ResolvedImage {
            reference: reference.with_digest(manifest_digest.clone()),
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            config: raw.image_config(),
            diff_ids: raw.rootfs.diff_ids,
            manifest,
            endpoints,
            credentials: credentials.clone(),
        })
    }

    /// The bytes of a layer blob as they arrive (the caller checks the digest).
    pub async fn blob(
        &self,
        image: &ResolvedImage,
        layer: &Descriptor,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + Unpin + use<>, RegistryError>
    {
        let mut endpoints = image.endpoints.clone();
        let response = self
            .fetch(
                &image.reference,
                &mut endpoints,
                &image.credentials,
                &format!("blobs/{}", layer.digest),
                None,
            )
            .await?;
        Ok(response.bytes_stream())
    }

    /// The mirrors of the image's registry, then the registry itself.
    fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let config = &self.inner.config;
        let mut endpoints: Vec<Endpoint> = config
            .mirrors
            .iter()
            .filter(|m| m.registry == reference.registry())
            .map(|m| Endpoint {
                base: m.endpoint.clone(),
                mirror: true,
            })
            .collect();
        let plain = reference.is_loopback()
            || config
                .insecure_registries
                .iter()
                .any(|r| r == reference.registry());
        let scheme = if plain { "http" } else { "https" };
        let origin = Url::parse(&format!("{scheme}://{}/", reference.api_host()))
            .expect("a validated registry name makes a valid URL");
        endpoints.push(Endpoint {
            base: origin,
            mirror: false,
        });
        endpoints
    }

    /// A manifest by tag or digest, parsed, with its digest checked.
    async fn manifest(
        &self,
        reference: &Reference,
        endpoints: &mut Vec<Endpoint>,
        credentials: &Credentials,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<(Manifest, Digest), RegistryError> {
        let shown = reference.to_string();
        let (bytes, headers) = self
            .document(
                reference,
                endpoints,
                credentials,
                &format!("manifests/{tag_or_digest}"),
                Some(media_type::MANIFEST_ACCEPT),
            )
            .await?;
        let actual = Digest::of(&bytes);
        let claimed = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        if let Some(expected) = expected.or(claimed.as_ref())
            && *expected != actual
        {
            return Err(RegistryError::DigestMismatch {
                reference: shown,
                what: "manifest",
                expected: expected.clone(),
                actual,
            });
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let manifest =
            Manifest::parse(&bytes, content_type).map_err(|source| RegistryError::Manifest {
                reference: shown,
                source,
            })?;
        Ok((manifest, actual))
    }

    /// A small document (manifest or config), refused past [`MAX_DOCUMENT_BYTES`].
    async fn document(
        &self,
        reference: &Reference,
        endpoints: &mut Vec<Endpoint>,
        credentials: &Credentials,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(Vec<u8>, header::HeaderMap), RegistryError> {
        let response = self
            .fetch(reference, endpoints, credentials, path, accept)
            .await?;
        let url = response.url().to_string();
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|l| l > MAX_DOCUMENT_BYTES)
        {
            return Err(RegistryError::TooLarge {
                url,
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Connect {
                url: url.clone(),
                source,
            })?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_DOCUMENT_BYTES {
                return Err(RegistryError::TooLarge {
                    url,
                    limit: MAX_DOCUMENT_BYTES,
                });
            }
        }
        Ok((body, headers))
    }

    /// GETs `/v2/<repository>/<path>` from the first endpoint that serves it. A mirror that
    /// fails is logged and dropped for the rest of this pull; the registry's own answer is
    /// the one reported.
    async fn fetch(
        &self,
        reference: &Reference,
        endpoints: &mut Vec<Endpoint>,
        credentials: &Credentials,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        loop {
            let endpoint = endpoints
                .first()
                .cloned()
                .expect("the registry itself is always the last endpoint");
            // Credentials are for the registry they were given for, never for a mirror.
            let anonymous = Credentials::Anonymous;
            let credentials = if endpoint.mirror {
                &anonymous
            } else {
                credentials
            };
            let result = self
                .get(&endpoint, reference, path, accept, credentials)
                .await;
            let err = match result {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => status_error(reference, credentials, response).await,
                Err(err) => err,
            };
            if !endpoint.mirror {
                return Err(err);
            }
            tracing::warn!(
                mirror = %endpoint.base,
                error = %crate::error_chain(&err),
                "registry mirror failed; falling back"
            );
            endpoints.remove(0);
        }
    }

    /// One GET, answering an auth challenge once.
    async fn get(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        path: &str,
        accept: Option<&str>,
        credentials: &Credentials,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = endpoint
            .base
            .join(&format!("v2/{}/{path}", reference.repository()))
            .expect("repository names and digests are URL-safe");
        let key = (endpoint.base.to_string(), reference.repository().to_owned());
        let cached = self.tokens().get(&key).cloned();
        let response = self.send(&url, accept, cached.as_deref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse);
        let authorization = match challenge {
            Some(Challenge::Basic) => match credentials.basic_header() {
                Some(basic) => basic,
                None => return Ok(response),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
                let credentials = if url.scheme() == "https" && realm.starts_with("http:") {
                    // A registry reached over TLS naming a plain-HTTP token service: its
                    // password would cross the network in clear, so ask anonymously.
                    tracing::warn!(%realm, "plain-HTTP token service of an HTTPS registry: credentials withheld");
                    &Credentials::Anonymous
                } else {
                    credentials
                };
                self.token(&realm, service.as_deref(), &scope, credentials, reference)
                    .await?
            }
            None => return Ok(response),
        };
        self.tokens().insert(key, authorization.clone());
        self.send(&url, accept, Some(&authorization)).await
    }

    /// Asks a token service for a pull token (with Basic credentials when there are some).
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: &Credentials,
        reference: &Reference,
    ) -> Result<String, RegistryError> {
        let token_error = |source| RegistryError::Token {
            url: realm.to_owned(),
            source,
        };
        let mut url = Url::parse(realm).map_err(|_| token_error(None))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.inner.http.get(url.clone());
        if let Some(basic) = credentials.basic_header() {
            request = request.header(header::AUTHORIZATION, basic);
        }
        let response = request
            .send()
            .await
            .map_err(|source| RegistryError::Connect {
                url: url.to_string(),
                source,
            })?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::Denied {
                reference: reference.to_string(),
                with_credentials: credentials != &Credentials::Anonymous,
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: TokenResponse = response
            .error_for_status()
            .map_err(|e| token_error(Some(e)))?
            .json()
            .await
            .map_err(|e| token_error(Some(e)))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_error(None))?;
        Ok(format!("Bearer {token}"))
    }

    async fn send(
        &self,
        url: &Url,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.inner.http.get(url.clone());
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        request
            .send()
            .await
            .map_err(|source| RegistryError::Connect {
                url: url.to_string(),
                source,
            })
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// The error a failed answer means: not found, denied, or the registry's own message.
async fn status_error(
    reference: &Reference,
    credentials: &Credentials,
    response: reqwest::Response,
) -> RegistryError {
    let status = response.status();
    let url = response.url().to_string();
    match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            reference: reference.to_string(),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Denied {
            reference: reference.to_string(),
            with_credentials: credentials != &Credentials::Anonymous,
        },
        _ => {
            #[derive(serde::Deserialize)]
            struct Errors {
                errors: Vec<ErrorEntry>,
            }
            #[derive(serde::Deserialize)]
            struct ErrorEntry {
                #[serde(default)]
                code: String,
                #[serde(default)]
                message: String,
            }
            let body = response.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<Errors>(&body)
                .ok()
                .and_then(|e| e.errors.into_iter().next())
                .map(|e| format!("{} {}", e.code, e.message).trim().to_owned())
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            RegistryError::Status {
                url,
                status: status.as_u16(),
                message,
            }
        }
    }
}

/// An image manifest and its config must agree with each other and with our platform.
pub(crate) fn check_image(
    reference: &str,
    platform: &Platform,
    manifest: &ImageManifest,
    raw: &RawConfig,
) -> Result<(), RegistryError> {
    if !raw.os.is_empty() && !platform.matches(&raw.os, &raw.architecture, raw.variant.as_deref()) {
        let mut theirs = format!("{}/{}", raw.os, raw.architecture);
        if let Some(variant) = &raw.variant {
            theirs = format!("{theirs}/{variant}");
        }
        return Err(PlatformError {
            reference: reference.to_owned(),
            wanted: platform.to_string(),
            available: vec![theirs],
        }
        .into());
    }
    if !raw.rootfs.kind.is_empty() && raw.rootfs.kind != "layers" {
        return Err(RegistryError::Invalid {
            reference: reference.to_owned(),
            message: format!(
                "the config's rootfs type is {:?}, not \"layers\"",
                raw.rootfs.kind
            ),
        });
    }
    if raw.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Invalid {
            reference: reference.to_owned(),
            message: format!(
                "the manifest has {} layers but the config names {}",
                manifest.layers.len(),
                raw.rootfs.diff_ids.len()
            ),
        });
    }
    if let Some(layer) = manifest
        .layers
        .iter()
        .find(|l| !crate::manifest::is_layer_media_type(&l.media_type))
    {
        return Err(RegistryError::Invalid {
            reference: reference.to_owned(),
            message: format!(
                "layer {} has media type {:?}, which is not a filesystem layer",
                layer.digest, layer.media_type
            ),
        });
    }
    Ok(())
}
