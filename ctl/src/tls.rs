//! HTTPS to the agent (rustls, ring provider): the client config from
//! `--ca-file` (else the Mozilla roots of webpki-roots) and, for mTLS,
//! `--cert`/`--key`; and [`explain`], which turns a TLS failure anywhere in an
//! error's source chain into one line that says what is wrong and what to do
//! (unknown CA, name mismatch, expired, a client certificate missing or
//! refused, an agent that does not speak TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// The TLS files of the global flags.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// `--ca-file`: PEM CA certificates the agent's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// `--cert`: PEM client certificate chain (mTLS).
    pub cert: Option<PathBuf>,
    /// `--key`: the private key of `--cert`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// True when any file is given.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM CERTIFICATE in it", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading --key {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow!("--key {}: no PEM PRIVATE KEY in it", path.display())
        }
        e => anyhow!("--key {}: {e}", path.display()),
    })
}

/// The client config of `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            for cert in read_certs("--ca-file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("--ca-file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs("--cert", cert)?, read_key(key)?)
            .map_err(|e| {
                anyhow!(
                    "--cert {} with --key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?,
        _ => bail!("--cert and --key go together"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name the agent's certificate must be valid for: the host of
/// `HOST:PORT` (a DNS name or an IP address, IPv6 in brackets).
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
    };
    ServerName::try_from(host.to_string())
        .map_err(|_| anyhow!("--agent https://{addr}: `{host}` is not a host name or IP address"))
}

/// The TLS error in `err`'s source chain, if there is one (also inside an
/// `io::Error`, whose `source` skips the error it wraps).
fn find_tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// One line for a TLS failure talking to `agent` (e.g. `https://h:9481`),
/// or `None` when `err` holds no TLS error.
pub fn explain(agent: &str, err: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_tls_error(err).map(|e| describe(agent, e))
}

/// The line for one TLS error (a pure function of it, table-tested).
pub fn describe(agent: &str, e: &rustls::Error) -> String {
    use rustls::Error as E;
    let server_cert = |what: &str| format!("berthd at {agent}: its TLS certificate {what}");
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => server_cert(
                "is not signed by a CA this client trusts (unknown issuer): pass the agent's CA with --ca-file",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                server_cert(
                    "is not valid for this name (name mismatch): use a host name or IP address the certificate lists",
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                server_cert("has expired: the agent needs a renewed certificate")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                server_cert("is not valid yet (check both clocks)")
            }
            CertificateError::Revoked => server_cert("is revoked"),
            other => server_cert(&format!("is invalid: {other:?}")),
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "berthd at {agent} requires a client certificate: pass --cert and --key (or BERTH_CERT_FILE and BERTH_KEY_FILE)"
        ),
        E::AlertReceived(
            a @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => format!(
            "berthd at {agent} refused the client certificate ({}): --cert must be signed by the CA the agent trusts (--api-tls-client-ca) and be current",
            alert_text(*a)
        ),
        E::InvalidMessage(_) => format!(
            "berthd at {agent} does not speak TLS (an agent started with --api-insecure is reached with http://)"
        ),
        other => format!("TLS with berthd at {agent} failed: {other}"),
    }
}

fn alert_text(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::UnknownCA => "unknown CA",
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::CertificateExpired => "expired",
        AlertDescription::CertificateRevoked => "revoked",
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::DecryptError => "signature check failed",
        _ => "certificate unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tls_failure_is_one_line_saying_what_to_do() {
        let agent = "https://h:9481";
        let rows: [(rustls::Error, &str); 10] = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown issuer): pass the agent's CA with --ca-file",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "name mismatch",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "has expired",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
                "not valid yet",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "requires a client certificate: pass --cert and --key",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                "refused the client certificate (unknown CA)",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                "refused the client certificate (bad certificate)",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
                "refused the client certificate (expired)",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "does not speak TLS",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                "TLS with berthd at https://h:9481 failed",
            ),
        ];
        for (error, want) in rows {
            let line = describe(agent, &error);
            assert!(line.contains(want), "{error:?}: {line}");
            assert!(line.contains(agent) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let wrapped = anyhow::Error::new(io).context("talking to berthd");
        let line = explain("https://h:1", wrapped.as_ref()).unwrap();
        assert!(line.contains("unknown issuer"), "{line}");
        let plain = std::io::Error::other("connection reset");
        assert!(explain("https://h:1", &plain).is_none());
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        for (addr, want) in [
            ("agent.example:9481", "agent.example"),
            ("127.0.0.1:9481", "127.0.0.1"),
            ("[::1]:9481", "::1"),
        ] {
            let name = server_name(addr).unwrap();
            assert_eq!(name.to_str(), want);
        }
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn half_a_client_key_pair_is_refused() {
        let files = TlsFiles {
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        let e = client_config(&files).unwrap_err().to_string();
        assert!(e.contains("--cert and --key go together"), "{e}");
        let e = client_config(&TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("--ca-file /nonexistent/ca.pem"),
            "{e:#}"
        );
    }
}
