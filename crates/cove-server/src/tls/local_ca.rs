//! The local certificate authority of `--tls self-signed`: made once in `<state>/tls/`
//! (`ca.pem`, and `ca-key.pem` readable by root alone) and kept, so that trusting it once
//! lasts across restarts; it signs a fresh certificate for the server's names at each start.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

use super::TlsError;

/// How long the CA is valid: long, as it is trusted by hand.
const CA_YEARS: i64 = 10;
/// How long a server certificate is valid (browsers refuse more than 398 days).
const LEAF_DAYS: i64 = 397;

/// The local CA: its certificate (to be trusted) and key.
#[derive(Debug)]
pub struct LocalCa {
    /// `ca.pem`, the file to trust.
    pub cert_path: PathBuf,
    /// Whether it was made by this start (then the server says how to trust it).
    pub created: bool,
    key: KeyPair,
    cert_pem: String,
}

impl LocalCa {
    /// The CA in `dir`, made there when there is none.
    pub fn open_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io_err = |source| TlsError::CaFiles {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if key_path.exists() && cert_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(io_err)?;
            let key = KeyPair::from_pem(&key_pem).map_err(TlsError::Generate)?;
            let cert_pem = fs::read_to_string(&cert_path).map_err(io_err)?;
            return Ok(Self {
                cert_path,
                created: false,
                key,
                cert_pem,
            });
        }
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = ca_params(&key)
            .self_signed(&key)
            .map_err(TlsError::Generate)?;
        // The key first, so a CA certificate never lies there without its key.
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_err)?;
        write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io_err)?;
        Ok(Self {
            cert_path,
            created: true,
            key,
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (host names, `*.` wildcards, IP addresses), signed by
    /// the CA: the chain (leaf, CA) and the leaf's key.
    pub fn issue(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let leaf_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = name;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        let issuer = Issuer::new(ca_params(&self.key), &self.key);
        let leaf = params
            .signed_by(&leaf_key, &issuer)
            .map_err(TlsError::Generate)?;
        let ca_der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|_| TlsError::Generate(rcgen::Error::CouldNotParseCertificate))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        Ok((vec![leaf.der().clone(), ca_der], key))
    }
}

/// The CA's parameters, derived from its key alone: its name carries a digest of the key, so
/// that certificates issued after a restart name the same issuer as `ca.pem`, and two state
/// directories' CAs are told apart in a trust store.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let digest = hex::encode(&Sha256::digest(key.der_bytes())[..6]);
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Cove");
    name.push(DnType::CommonName, format!("Cove local CA {digest}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CA_YEARS * 365);
    params
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Writes a new file with `mode`, failing if it exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let first = LocalCa::open_or_create(&tls).unwrap();
        assert!(first.created);
        let again = LocalCa::open_or_create(&tls).unwrap();
        assert!(!again.created);
        assert_eq!(first.cert_pem(), again.cert_pem());
        let key_mode = fs::metadata(tls.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let (chain, _) = again
            .issue(&["cove.localhost".into(), "*.cove.localhost".into()])
            .unwrap();
        assert_eq!(chain.len(), 2);
    }
}
