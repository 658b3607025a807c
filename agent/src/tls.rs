//! HTTPS for the TCP API (rustls, ring provider): loads the PEM certificate
//! chain, key and client CA of [`ApiTls`] into a rustls server config
//! (TLS 1.2 and 1.3; client certificates required when a client CA is set),
//! and [`TlsListener`] accepts TCP connections and completes their handshakes
//! off the accept path, each bounded by [`HANDSHAKE_TIMEOUT`], so one slow or
//! hostile client cannot stall the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ApiTls;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 128;

/// Why the TCP API's TLS files are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path}: {message}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{flag} {path}: no PEM {what} in it")]
    Empty {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("--api-tls-client-ca {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("--api-tls-cert {cert} with --api-tls-key {key}: {message}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// The rustls crypto provider of the API (ring, as reqwest uses).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; at least one.
pub fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.into(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            flag,
            path: path.into(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            flag,
            path: path.into(),
            what: "PRIVATE KEY",
        },
        e => TlsError::Pem {
            flag,
            path: path.into(),
            message: e.to_string(),
        },
    })
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.into(),
        source,
    })
}

/// The server config of `tls`: its certificate chain and key (checked to
/// belong together) and, with a client CA, a verifier that requires every
/// client to present a certificate that CA signed.
pub fn server_config(tls: &ApiTls) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs("--api-tls-cert", &tls.cert)?;
    let key = load_key("--api-tls-key", &tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::KeyPair {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            message: e.to_string(),
        })?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("--api-tls-client-ca", path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::KeyPair {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that hands out connections whose TLS handshake completed.
/// Handshakes run in their own tasks; a failed one is logged with the peer's
/// address and the reason (no client certificate, an unknown CA, …).
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(16);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait, then retry.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "API TLS handshake failed");
                }
                Err(_) => {
                    tracing::warn!(%peer, "API TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA, a server certificate for 127.0.0.1 it signed, and a second,
        /// unrelated key, as PEM files.
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
            w("ca.pem", ca_cert.pem());
            w("cert.pem", leaf.pem());
            w("key.pem", key.serialize_pem());
            w("other-key.pem", other.serialize_pem());
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn tls(&self, cert: &str, key: &str, ca: Option<&str>) -> ApiTls {
            ApiTls {
                cert: self.path(cert),
                key: self.path(key),
                client_ca: ca.map(|c| self.path(c)),
            }
        }
    }

    #[test]
    fn a_matching_pair_loads_with_and_without_client_certificates() {
        let pki = Pki::new();
        let plain = server_config(&pki.tls("cert.pem", "key.pem", None)).unwrap();
        assert_eq!(plain.alpn_protocols, vec![b"http/1.1".to_vec()]);
        server_config(&pki.tls("cert.pem", "key.pem", Some("ca.pem"))).unwrap();
    }

    /// Each unusable file is refused naming the flag and the file.
    #[test]
    fn unusable_files_name_the_flag_and_the_file() {
        let pki = Pki::new();
        std::fs::write(pki.path("garbage.pem"), "not pem at all\n").unwrap();
        let cases = [
            (
                pki.tls("missing.pem", "key.pem", None),
                "--api-tls-cert",
                "missing.pem",
            ),
            (
                pki.tls("cert.pem", "missing.pem", None),
                "--api-tls-key",
                "missing.pem",
            ),
            (
                pki.tls("garbage.pem", "key.pem", None),
                "no PEM CERTIFICATE",
                "garbage.pem",
            ),
            (
                pki.tls("cert.pem", "garbage.pem", None),
                "no PEM PRIVATE KEY",
                "garbage.pem",
            ),
            (
                pki.tls("key.pem", "key.pem", None),
                "no PEM CERTIFICATE",
                "key.pem",
            ),
            (
                pki.tls("cert.pem", "other-key.pem", None),
                "--api-tls-key",
                "other-key.pem",
            ),
            (
                pki.tls("cert.pem", "key.pem", Some("garbage.pem")),
                "--api-tls-client-ca",
                "garbage.pem",
            ),
        ];
        for (tls, flag, file) in cases {
            let e = server_config(&tls).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(file), "{e}");
        }
    }
}
