//! PostgreSQL over TLS, against a real server that lets TCP clients in only over TLS, its
//! certificate issued by a CA made here for `localhost` alone: every `sslmode` does what
//! libpq's does. Skipped (with a message) where PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

use cove_db::{Db, Location};
use cove_test_util::TestPostgres;

/// A CA, and a server certificate it issued for `localhost` (not 127.0.0.1), with its key.
fn issued() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "cove test database CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

/// Whether the connection `url` names is encrypted, by the server's own account; the error
/// with its causes otherwise.
fn encrypted(url: &str) -> Result<bool, String> {
    let db = Db::open(&Location::parse(url)).map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    let row = db
        .query_row(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .unwrap();
    Ok(row.text(0).unwrap() == "true")
}

#[test]
fn every_sslmode_does_what_libpq_does() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let (ca, cert, key) = issued();
    let postgres = TestPostgres::start_with_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, issued().0).unwrap();
    let by_ip = postgres.url();
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    let with = |url: &str, params: &str| format!("{url}?{params}");

    // The default (prefer) and require: encrypted, the certificate not checked.
    assert_eq!(encrypted(&by_ip), Ok(true));
    assert_eq!(encrypted(&with(&by_ip, "sslmode=require")), Ok(true));
    // disable: the server lets no one in without TLS.
    let refused = encrypted(&with(&by_ip, "sslmode=disable")).unwrap_err();
    assert!(refused.contains("pg_hba.conf"), "{refused}");

    let root = format!("sslrootcert={}", ca_file.display());
    // verify-full: the chain and the name.
    assert_eq!(
        encrypted(&with(&by_name, &format!("sslmode=verify-full&{root}"))),
        Ok(true)
    );
    let wrong_name = encrypted(&with(&by_ip, &format!("sslmode=verify-full&{root}"))).unwrap_err();
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    // verify-ca: the chain only, so an address the certificate does not name is fine.
    assert_eq!(
        encrypted(&with(&by_ip, &format!("sslmode=verify-ca&{root}"))),
        Ok(true)
    );
    // Another CA: refused in both verifying modes, and by require with a root (as libpq).
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = with(
            &by_name,
            &format!("sslmode={mode}&sslrootcert={}", other_ca.display()),
        );
        let err = encrypted(&url).unwrap_err();
        assert!(err.contains("certificate"), "{mode}: {err}");
    }
    // A root file that is not there: said at once.
    let missing = with(
        &by_name,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let err = encrypted(&missing).unwrap_err();
    assert!(
        err.contains("cannot read sslrootcert /nonexistent/ca.pem"),
        "{err}"
    );
}
