//! A throwaway PKI for the HTTPS API tests (rcgen): a server CA and a
//! client CA, a server certificate for 127.0.0.1, a client certificate, and
//! look-alikes signed by an unrelated CA. Everything is PEM files in a temp
//! dir that goes with the value.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// The PEM files; `path(name)` gives `NAME.pem`.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
    expired: bool,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![purpose];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Files: `ca` (signs `server` and `server-expired`), `client-ca`
    /// (signs `client` and `client-expired`), `other-ca` (signs
    /// `other-client`), each leaf with its `-key`; the expired ones were
    /// valid in 2020.
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("berth-pki-")
            .tempdir()
            .unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(format!("{name}.pem")), text).unwrap()
        };
        let (server_ca, server_issuer) = ca("berth test server CA");
        let (client_ca, client_issuer) = ca("berth test client CA");
        let (other_ca, other_issuer) = ca("berth test unrelated CA");
        write("ca", &server_ca.pem());
        write("client-ca", &client_ca.pem());
        write("other-ca", &other_ca.pem());
        let (cert, key) = leaf(
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_issuer,
            false,
        );
        write("server", &cert);
        write("server-key", &key);
        let (cert, key) = leaf(
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_issuer,
            true,
        );
        write("server-expired", &cert);
        write("server-expired-key", &key);
        let (cert, key) = leaf(
            &["operator"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_issuer,
            false,
        );
        write("client", &cert);
        write("client-key", &key);
        let (cert, key) = leaf(
            &["operator"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_issuer,
            true,
        );
        write("client-expired", &cert);
        write("client-expired-key", &key);
        let (cert, key) = leaf(
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_issuer,
            false,
        );
        write("other-client", &cert);
        write("other-client-key", &key);
        TestPki { dir }
    }

    /// The path of `NAME.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    /// The path of `NAME.pem` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
