//! TLS on the front door: a certificate and key the operator gives (`--tls-cert`,
//! `--tls-key`), or a local certificate authority made once in the state directory that signs
//! a certificate for the domain and every name under it (`--tls self-signed`), so that
//! `https://{port}-{id}.{domain}` preview URLs verify once the CA is trusted.
//!
//! The handshake happens in the accept loop's connection task, after the connection limits
//! admitted it and within the header read timeout (see `front`).

pub mod egress_ca;
mod local_ca;

use std::{path::PathBuf, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

pub use self::local_ca::LocalCa;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("cannot read the private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key cannot serve TLS")]
    Config(#[source] rustls::Error),
    #[error("cannot use the local certificate authority in {path}")]
    CaFiles {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a certificate")]
    Generate(#[source] rcgen::Error),
}

/// Where the server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the certificate chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A local CA in the state directory signs a certificate for the domain.
    SelfSigned,
}

/// The names the certificate of a self-signed setup is for: the domain's host and everything
/// under it, and the loopback names and addresses the server is reached by locally.
pub fn names_for(domain_host: &str) -> Vec<String> {
    let mut names = vec![domain_host.to_owned(), format!("*.{domain_host}")];
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_owned());
        }
    }
    names
}

/// The acceptor for `source`. `state_dir` holds the local CA; `domain_host` is the domain
/// without its port.
pub fn acceptor(
    source: &TlsSource,
    state_dir: &std::path::Path,
    domain_host: &str,
) -> Result<(TlsAcceptor, Option<LocalCa>), TlsError> {
    let (chain, key, ca) = match source {
        TlsSource::Files { cert, key } => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| TlsError::Certificate {
                    path: cert.clone(),
                    source,
                })?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate(cert.clone()));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
                path: key.clone(),
                source,
            })?;
            (chain, key, None)
        }
        TlsSource::SelfSigned => {
            let ca = LocalCa::open_or_create(&state_dir.join("tls"))?;
            let (chain, key) = ca.issue(&names_for(domain_host))?;
            (chain, key, Some(ca))
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    // HTTP/2 first, as clients that speak it prefer; the connection serves both either way.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_setup_covers_the_domain_and_loopback() {
        assert_eq!(
            names_for("cove.localhost"),
            [
                "cove.localhost",
                "*.cove.localhost",
                "localhost",
                "127.0.0.1",
                "::1"
            ]
        );
        assert_eq!(
            names_for("localhost"),
            ["localhost", "*.localhost", "127.0.0.1", "::1"]
        );
    }

    #[test]
    fn files_that_are_not_pem_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let source = TlsSource::Files {
            cert: cert.clone(),
            key: dir.path().join("missing-key.pem"),
        };
        let Err(err) = acceptor(&source, dir.path(), "localhost") else {
            panic!("a file without a certificate was taken");
        };
        assert!(matches!(err, TlsError::NoCertificate(path) if path == cert));
    }
}
