//! The egress CA: a local certificate authority of its own in `<state>/egress-ca/`, made once,
//! that signs the certificates the egress proxy shows sandboxes whose `rules` set headers on
//! HTTPS requests (TLS interception). Sandboxes with such rules trust it (the server installs
//! it in them); nothing else should.

use std::path::{Path, PathBuf};

use cove_runtime::egress::IssueCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{LocalCa, TlsError};

/// Where the egress CA lives in the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("egress-ca")
}

/// The CA as the runtime's proxies use it.
#[derive(Debug)]
pub struct EgressIssuer(LocalCa);

impl EgressIssuer {
    /// The CA of `state_dir`, made when there is none.
    pub fn open(state_dir: &Path) -> Result<Self, TlsError> {
        LocalCa::open_or_create(&dir(state_dir)).map(Self)
    }
}

impl IssueCert for EgressIssuer {
    fn ca_pem(&self) -> &str {
        self.0.cert_pem()
    }

    fn issue(
        &self,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        self.0
            .issue(&[name.to_owned()])
            .map_err(|e| cove_runtime::egress::error_chain(&e))
    }
}
