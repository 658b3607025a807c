//! Service discovery: every container resolves every service name of its
//! agent to that service's ready replicas. The DNS server is `berth-dns`, a
//! separate long-lived process on the bridge gateway (port 53, UDP and TCP),
//! so names keep resolving while berthd is stopped or restarting. berthd
//! starts, finds and replaces it ([`supervise`]) and publishes the records it
//! serves ([`records`]); [`server`] is the berth-dns process itself.

pub mod records;
pub mod server;
pub mod supervise;

use std::path::{Path, PathBuf};

pub use records::{answer, build_records, Answer, Readiness, Records, ReplicaView, Table, DOMAIN};
pub use supervise::{stop_server, Dns, DnsConfig, Outcome, PidFile, ServerAction};

/// Why a DNS step failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("records {path}: {message}")]
    Records { path: PathBuf, message: String },
    #[error("berth-dns ({exe}) did not start: {message}")]
    Start { exe: PathBuf, message: String },
    #[error("berth-dns: listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddrV4,
        source: std::io::Error,
    },
    #[error("berth-dns: upstream resolvers: {0}")]
    Upstream(String),
}

impl DnsError {
    /// An `Io` error constructor for `map_err`.
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DnsError {
        let path = path.to_path_buf();
        move |source| DnsError::Io { what, path, source }
    }
}
