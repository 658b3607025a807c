//! Published ports: an in-agent TCP proxy per service (docker-proxy style, but
//! balanced and drain-aware). It listens on `0.0.0.0:host_port`, sends each new
//! connection round-robin to a Ready endpoint (retrying the next one if connect
//! fails), never to a Draining or removed one, lets in-flight connections run to
//! completion, and counts active connections per endpoint for the drain logic.
//! With [`PortProxy::with_dnat`] the kernel takes new connections first
//! ([`super::dnat`]); the listener keeps the port and serves what DNAT leaves.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::dnat::{Dnat, DnatError};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// How long connecting to one endpoint may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An endpoint on the bridge answers a SYN in well under a millisecond; one
/// with no answer after this long most likely dropped it (a full accept
/// queue), and the kernel would resend it only after 1 s. So another attempt
/// starts beside it, after twice the delay the next, and the first to connect wins.
const RACE_AFTER: Duration = Duration::from_millis(20);
/// Attempts racing for one endpoint at most.
const RACE_ATTEMPTS: usize = 5;
const BACKLOG: u32 = 1024;

/// Why a service could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {service}: listening on 0.0.0.0:{port}: {source}")]
    Bind {
        service: String,
        port: u16,
        source: std::io::Error,
    },
    /// The DNAT rules could neither be updated nor removed: new connections
    /// might still reach a replica that should get none.
    #[error("service {service}: updating the DNAT rules of port {port}: {update}; removing them: {remove}")]
    Dnat {
        service: String,
        port: u16,
        update: DnatError,
        remove: DnatError,
    },
}

/// Whether an endpoint takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Receives new connections.
    Ready,
    /// Keeps its in-flight connections; receives no new ones.
    Draining,
}

/// One replica of a service as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The container id.
    pub id: String,
    /// Container IP and container port.
    pub addr: SocketAddrV4,
    pub state: EndpointState,
}

/// Per-endpoint connection counts, as returned by [`PortProxy::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub id: String,
    /// `None` once the endpoint was removed but still has connections.
    pub state: Option<EndpointState>,
    pub active: usize,
    pub total: u64,
}

#[derive(Debug, Default)]
struct Counter {
    active: AtomicUsize,
    total: AtomicU64,
}

/// Decrements the endpoint's active count when the connection ends.
struct Active(Arc<Counter>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct Table {
    endpoints: Vec<Endpoint>,
    /// Counters of current endpoints and of removed ones with live connections.
    counters: HashMap<String, Arc<Counter>>,
    /// Indexes into `endpoints` of the Ready ones.
    ready: Vec<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    table: RwLock<Table>,
    next: AtomicUsize,
    refused: AtomicU64,
}

impl Shared {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks a Ready endpoint not in `tried` and counts the connection on it
    /// under the table lock, so a caller that marks it Draining and then reads
    /// `active() == 0` cannot miss a connection picked just before.
    fn pick(&self, tried: &[String]) -> Option<(SocketAddrV4, String, Active)> {
        let t = self.table();
        let n = t.ready.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let ep = &t.endpoints[t.ready[(start + i) % n]];
            if tried.contains(&ep.id) {
                return None;
            }
            let c = t.counters.get(&ep.id)?.clone();
            c.active.fetch_add(1, Ordering::AcqRel);
            c.total.fetch_add(1, Ordering::Relaxed);
            Some((ep.addr, ep.id.clone(), Active(c)))
        })
    }
}

#[derive(Debug)]
struct Service {
    port: u16,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    accept: JoinHandle<()>,
}

impl Service {
    /// Stops listening now (not when the aborted task is next polled), so the
    /// port can be bound again at once.
    fn close(&self) {
        use std::os::fd::AsRawFd as _;
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        self.accept.abort();
    }
}

/// The published-port proxy of the agent. Cheap to clone; methods are
/// synchronous and may be called from any thread.
#[derive(Debug, Clone)]
pub struct PortProxy {
    handle: Handle,
    services: Arc<Mutex<HashMap<String, Service>>>,
    /// The kernel fast path, when enabled: new connections from the host and
    /// other hosts go to a Ready replica by DNAT, the listener gets the rest.
    dnat: Option<Arc<Dnat>>,
}

impl Default for PortProxy {
    /// Same as [`PortProxy::new`]: panics outside a tokio runtime.
    fn default() -> Self {
        PortProxy::new()
    }
}

impl PortProxy {
    /// A proxy whose tasks run on the current tokio runtime (panics outside one).
    pub fn new() -> PortProxy {
        PortProxy::with_handle(Handle::current())
    }

    /// A proxy whose tasks run on `handle`.
    pub fn with_handle(handle: Handle) -> PortProxy {
        PortProxy {
            handle,
            services: Arc::new(Mutex::new(HashMap::new())),
            dnat: None,
        }
    }

    /// A proxy on `handle` with the nftables DNAT fast path in front of it
    /// (see [`super::dnat`]): same guarantees, no copy through the agent.
    pub fn with_dnat(handle: Handle, dnat: Dnat) -> PortProxy {
        PortProxy {
            dnat: Some(Arc::new(dnat)),
            ..PortProxy::with_handle(handle)
        }
    }

    fn services(&self) -> std::sync::MutexGuard<'_, HashMap<String, Service>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `service` on `0.0.0.0:host_port` with `endpoints` (replacing
    /// the previous set atomically). When this returns, no new connection goes
    /// to an endpoint that is Draining or absent here. A changed port is bound
    /// before the old listener closes; a failed bind leaves the service as it was.
    pub fn set_service(
        &self,
        service: &str,
        host_port: u16,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), ProxyError> {
        let mut services = self.services();
        let shared = match services.get(service) {
            Some(s) if s.port == host_port => s.shared.clone(),
            _ => {
                let shared = Arc::new(Shared::default());
                if let Some(old) = services.get(service) {
                    // Carry the counters over so connections of the old port stay counted.
                    let old_t = old.shared.table();
                    let mut t = shared.table.write().unwrap_or_else(|p| p.into_inner());
                    t.counters = old_t.counters.clone();
                }
                let listener = Arc::new(self.listen(service, host_port)?);
                let accept = self
                    .handle
                    .spawn(accept_loop(listener.clone(), shared.clone()));
                let new = Service {
                    port: host_port,
                    shared: shared.clone(),
                    listener,
                    accept,
                };
                if let Some(old) = services.insert(service.into(), new) {
                    old.close();
                }
                shared
            }
        };
        let mut t = shared.table.write().unwrap_or_else(|p| p.into_inner());
        let mut counters: HashMap<String, Arc<Counter>> = std::mem::take(&mut t.counters)
            .into_iter()
            .filter(|(id, c)| {
                c.active.load(Ordering::Acquire) > 0 || endpoints.iter().any(|e| &e.id == id)
            })
            .collect();
        for e in &endpoints {
            counters.entry(e.id.clone()).or_default();
        }
        t.ready = (0..endpoints.len())
            .filter(|i| endpoints[*i].state == EndpointState::Ready)
            .collect();
        let ready: Vec<SocketAddrV4> = t.ready.iter().map(|i| endpoints[*i].addr).collect();
        t.endpoints = endpoints;
        t.counters = counters;
        drop(t);
        if let Some(dnat) = &self.dnat {
            if let Err(update) = dnat.set(service, host_port, ready) {
                // Without the rules the listener serves the port, with the
                // guarantees above; stale rules could break them.
                tracing::warn!(service, error = %update, "DNAT update failed; the proxy serves the port");
                if let Err(remove) = dnat.remove(service) {
                    return Err(ProxyError::Dnat {
                        service: service.into(),
                        port: host_port,
                        update,
                        remove,
                    });
                }
            }
        }
        Ok(())
    }

    fn listen(&self, service: &str, port: u16) -> Result<TcpListener, ProxyError> {
        let err = |source| ProxyError::Bind {
            service: service.into(),
            port,
            source,
        };
        let _rt = self.handle.enter();
        let sock = TcpSocket::new_v4().map_err(err)?;
        sock.set_reuseaddr(true).map_err(err)?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )))
        .map_err(err)?;
        sock.listen(BACKLOG).map_err(err)
    }

    /// Stops listening for `service` (the port is free when this returns). Its
    /// in-flight connections continue.
    pub fn remove_service(&self, service: &str) -> bool {
        if let Some(dnat) = &self.dnat {
            if let Err(e) = dnat.remove(service) {
                tracing::error!(service, error = %e, "could not remove the DNAT rules");
            }
        }
        match self.services().remove(service) {
            Some(s) => {
                s.close();
                true
            }
            None => false,
        }
    }

    /// Active connections of endpoint `id` of `service` (0 when unknown):
    /// the proxy's own and, with the fast path, those DNAT sent there
    /// (conntrack). If conntrack cannot be read, the endpoint counts as busy
    /// (1), so a drain waits for its deadline rather than cutting connections.
    pub fn active(&self, service: &str, id: &str) -> usize {
        let services = self.services();
        let Some(s) = services.get(service) else {
            return 0;
        };
        let port = s.port;
        let t = s.shared.table();
        let proxied = t
            .counters
            .get(id)
            .map(|c| c.active.load(Ordering::Acquire))
            .unwrap_or(0);
        let addr = t.endpoints.iter().find(|e| e.id == id).map(|e| e.addr);
        drop(t);
        drop(services);
        let dnat = match (&self.dnat, addr) {
            (Some(dnat), Some(addr)) => dnat.active(port, addr).unwrap_or_else(|e| {
                tracing::warn!(service, error = %e, "cannot count DNAT connections");
                1
            }),
            _ => 0,
        };
        proxied + dnat
    }

    /// The published services and their host ports.
    pub fn published(&self) -> Vec<(String, u16)> {
        let mut v: Vec<_> = self
            .services()
            .iter()
            .map(|(n, s)| (n.clone(), s.port))
            .collect();
        v.sort();
        v
    }

    /// Connection counts of every endpoint of `service` (incl. removed ones still busy).
    pub fn stats(&self, service: &str) -> Vec<EndpointStats> {
        let services = self.services();
        let Some(s) = services.get(service) else {
            return Vec::new();
        };
        let t = s.shared.table();
        let mut v: Vec<EndpointStats> = t
            .counters
            .iter()
            .map(|(id, c)| EndpointStats {
                id: id.clone(),
                state: t.endpoints.iter().find(|e| &e.id == id).map(|e| e.state),
                active: c.active.load(Ordering::Acquire),
                total: c.total.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Connections of `service` closed at once because no endpoint was Ready or reachable.
    pub fn refused(&self, service: &str) -> u64 {
        self.services()
            .get(service)
            .map(|s| s.shared.refused.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(proxy_conn(client, shared.clone()));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Connects to `addr`, starting another attempt beside the pending ones each
/// time an attempt goes unanswered for [`RACE_AFTER`] (doubling), up to
/// [`RACE_ATTEMPTS`]. The losers are dropped: their sockets close, and a
/// late SYN-ACK to one of them is answered with a reset.
async fn connect_racing(addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let mut attempts = FuturesUnordered::new();
    attempts.push(TcpStream::connect(addr));
    let mut started = 1;
    let mut delay = RACE_AFTER;
    loop {
        let next_start = tokio::time::sleep(delay);
        tokio::select! {
            done = attempts.next() => match done {
                Some(Ok(stream)) => return Ok(stream),
                // Refused or unreachable: another attempt would fail alike.
                Some(Err(e)) if attempts.is_empty() => return Err(e),
                Some(Err(_)) => {}
                None => return Err(std::io::Error::other("no connect attempt left")),
            },
            () = next_start, if started < RACE_ATTEMPTS => {
                attempts.push(TcpStream::connect(addr));
                started += 1;
                delay *= 2;
            }
        }
    }
}

async fn proxy_conn(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut tried = Vec::new();
    let (mut backend, _active) = loop {
        let Some((addr, id, active)) = shared.pick(&tried) else {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            // RST rather than FIN, so the client sees an error, not an empty reply.
            let _ = client.set_zero_linger();
            return;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_racing(addr)).await {
            Ok(Ok(b)) => break (b, active),
            Ok(Err(e)) => tracing::debug!(endpoint = %id, error = %e, "proxy connect failed"),
            Err(_) => tracing::debug!(endpoint = %id, "proxy connect timed out"),
        }
        tried.push(id);
    };
    let _ = backend.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
}
