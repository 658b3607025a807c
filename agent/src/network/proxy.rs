//! Published ports: the agent's socket on each published host port and an
//! in-agent TCP proxy behind it (docker-proxy style, but balanced and
//! drain-aware). The socket holds the port (so nothing else can take it, and
//! a port that cannot be bound is an error naming its holder); a TCP listener
//! sends each connection it gets round-robin to a Ready endpoint (retrying the
//! next one if connect fails), never to a Draining or removed one, lets
//! in-flight connections run to completion, and counts active connections per
//! endpoint for the drain logic. With [`PortProxy::with_dnat`] the kernel
//! takes new connections first ([`super::dnat`]) and the listener only sees
//! what DNAT leaves (no Ready endpoint); UDP ports are served by DNAT alone.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_core::manifest::{Port, Protocol};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::dnat::{Dnat, DnatError, PortMap};
use super::holder::Holder;
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

/// Where a published port is bound on the host: `ip:port/protocol`, as
/// Docker prints it (`0.0.0.0` = every address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl HostPort {
    /// TCP `port` on every address.
    pub fn tcp(port: u16) -> HostPort {
        HostPort {
            ip: Ipv4Addr::UNSPECIFIED,
            port,
            protocol: Protocol::Tcp,
        }
    }

    /// The host side of a manifest port; `None` for a container-only port
    /// (no host port) or an IPv6 host address (refused by validation).
    pub fn of(p: &Port) -> Option<HostPort> {
        match (p.host, p.host_ip) {
            (Some(port), std::net::IpAddr::V4(ip)) => Some(HostPort {
                ip,
                port,
                protocol: p.protocol,
            }),
            _ => None,
        }
    }

    /// [`HostPort::of`], with `default_ip` (the agent's `--publish-ip`) for
    /// a port the manifest publishes on every address.
    pub fn on(p: &Port, default_ip: Ipv4Addr) -> Option<HostPort> {
        HostPort::of(p).map(|mut hp| {
            if hp.ip.is_unspecified() {
                hp.ip = default_ip;
            }
            hp
        })
    }

    /// Whether two bindings cannot coexist: same protocol and port, and the
    /// same address or either one every address.
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || self.ip.is_unspecified() || other.ip.is_unspecified())
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)
    }
}

/// Why a service could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The host port could not be bound; `holder` is the process holding
    /// it, when procfs tells.
    #[error("service {service}: publishing {port}: {source}{}", holder.as_ref().map(|h| format!("; held by {h}")).unwrap_or_default())]
    Bind {
        service: String,
        port: HostPort,
        source: std::io::Error,
        holder: Option<Holder>,
    },
    #[error(
        "service {service}: publishing {port}: already published by service {owner} of this agent"
    )]
    Taken {
        service: String,
        port: HostPort,
        owner: String,
    },
    /// The service's running replicas publish an overlapping binding (the
    /// same port on every address vs one address): both cannot be bound.
    #[error("service {service}: publishing {port}: its running replicas publish {other}; change a port's host address with update.strategy = \"stop-first\"")]
    Overlap {
        service: String,
        port: HostPort,
        other: HostPort,
    },
    /// The DNAT rules could neither be updated nor removed: new connections
    /// might still reach a replica that should get none.
    #[error("service {service}: updating the DNAT rules: {update}; removing them: {remove}")]
    Dnat {
        service: String,
        update: Box<DnatError>,
        remove: Box<DnatError>,
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

/// One replica of a service behind one host port, as the proxy sees it.
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
    /// Endpoints of each held host port.
    ports: HashMap<HostPort, Vec<Endpoint>>,
    /// Counters of current endpoints (by container, over all ports) and of
    /// removed ones with live connections.
    counters: HashMap<String, Arc<Counter>>,
}

impl Table {
    fn state_of(&self, id: &str) -> Option<EndpointState> {
        let mut states = self.ports.values().flatten().filter(|e| e.id == id);
        let first = states.next()?.state;
        Some(if states.any(|e| e.state == EndpointState::Ready) {
            EndpointState::Ready
        } else {
            first
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    table: RwLock<Table>,
    next: AtomicUsize,
    refused: AtomicU64,
    /// Times a held port went from some Ready endpoint to none.
    unserved: AtomicU64,
}

impl Shared {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks a Ready endpoint of `port` not in `tried` and counts the
    /// connection on it under the table lock, so a caller that marks it
    /// Draining and then reads `active() == 0` cannot miss a connection
    /// picked just before.
    fn pick(&self, port: &HostPort, tried: &[String]) -> Option<(SocketAddrV4, String, Active)> {
        let t = self.table();
        let ready: Vec<&Endpoint> = t
            .ports
            .get(port)?
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .collect();
        let n = ready.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let ep = ready[(start + i) % n];
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

/// The agent's socket on one host port: a TCP listener and the task
/// accepting on it, or a bound UDP socket nobody reads (no userspace UDP
/// proxy: what reaches it — no Ready endpoint — is dropped by the kernel
/// once its small receive buffer is full).
#[derive(Debug)]
enum Held {
    Tcp {
        listener: Arc<TcpListener>,
        task: JoinHandle<()>,
    },
    /// Held for its binding only.
    Udp { _socket: std::net::UdpSocket },
}

impl Held {
    /// Stops listening now (not when the aborted task is next polled), so
    /// the port can be bound again at once.
    fn close(&self) {
        use std::os::fd::AsRawFd as _;
        if let Held::Tcp { listener, task } = self {
            let fd = listener.as_raw_fd();
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            task.abort();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.close();
    }
}

#[derive(Debug, Default)]
struct Service {
    shared: Arc<Shared>,
    held: BTreeMap<HostPort, Held>,
}

/// The published-port proxy of the agent. Cheap to clone; methods are
/// synchronous and may be called from any thread.
#[derive(Debug, Clone)]
pub struct PortProxy {
    handle: Handle,
    services: Arc<Mutex<HashMap<String, Service>>>,
    /// The kernel fast path, when enabled: new connections go to a Ready
    /// replica by DNAT, the listener gets the rest.
    dnat: Option<Arc<Dnat>>,
    /// Where a port published on every address binds (`--publish-ip`).
    default_ip: Ipv4Addr,
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
            default_ip: Ipv4Addr::UNSPECIFIED,
        }
    }

    /// Ports the manifest publishes on every address bind `ip` instead
    /// (`--publish-ip`; `0.0.0.0` keeps every address).
    pub fn with_default_ip(self, ip: Ipv4Addr) -> PortProxy {
        PortProxy {
            default_ip: ip,
            ..self
        }
    }

    /// Where the manifest port `p` is bound on this host (see [`HostPort::on`]).
    pub fn host_port(&self, p: &Port) -> Option<HostPort> {
        HostPort::on(p, self.default_ip)
    }

    /// A proxy on `handle` with the nftables DNAT fast path in front of it
    /// (see [`super::dnat`]): same guarantees, no copy through the agent.
    pub fn with_dnat(handle: Handle, dnat: Dnat) -> PortProxy {
        PortProxy {
            dnat: Some(Arc::new(dnat)),
            ..PortProxy::with_handle(handle)
        }
    }

    /// Container addresses the DNAT rules served when the agent started
    /// (the replicas that were Ready before a restart); empty without DNAT.
    pub fn adopted(&self) -> Vec<Ipv4Addr> {
        self.dnat
            .as_ref()
            .map(|d| d.adopted().iter().copied().collect())
            .unwrap_or_default()
    }

    fn services(&self) -> std::sync::MutexGuard<'_, HashMap<String, Service>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds the host ports in `ports` that `service` does not hold yet
    /// (before a replica publishing them starts). They stay held until a
    /// [`PortProxy::set_service`] no longer lists them. The first port that
    /// cannot be bound is the error.
    pub fn publish(&self, service: &str, ports: &[HostPort]) -> Result<(), ProxyError> {
        let mut services = self.services();
        for hp in ports {
            self.hold(&mut services, service, *hp)?;
        }
        Ok(())
    }

    fn hold(
        &self,
        services: &mut HashMap<String, Service>,
        service: &str,
        hp: HostPort,
    ) -> Result<(), ProxyError> {
        if services
            .get(service)
            .is_some_and(|s| s.held.contains_key(&hp))
        {
            return Ok(());
        }
        for (name, s) in services.iter() {
            let Some(other) = s.held.keys().find(|h| h.overlaps(&hp)) else {
                continue;
            };
            return Err(if name == service {
                ProxyError::Overlap {
                    service: service.into(),
                    port: hp,
                    other: *other,
                }
            } else {
                ProxyError::Taken {
                    service: service.into(),
                    port: hp,
                    owner: name.clone(),
                }
            });
        }
        let entry = services.entry(service.to_string()).or_default();
        let held = self.bind(&hp, entry.shared.clone()).map_err(|source| {
            let holder = (source.kind() == std::io::ErrorKind::AddrInUse)
                .then(|| super::holder::find(hp.protocol, hp.ip, hp.port))
                .flatten();
            ProxyError::Bind {
                service: service.into(),
                port: hp,
                source,
                holder,
            }
        });
        match held {
            Ok(h) => {
                entry.held.insert(hp, h);
                Ok(())
            }
            Err(e) => {
                if entry.held.is_empty() {
                    services.remove(service);
                }
                Err(e)
            }
        }
    }

    fn bind(&self, hp: &HostPort, shared: Arc<Shared>) -> std::io::Result<Held> {
        let _rt = self.handle.enter();
        let addr = SocketAddr::V4(SocketAddrV4::new(hp.ip, hp.port));
        match hp.protocol {
            Protocol::Tcp => {
                let sock = TcpSocket::new_v4()?;
                sock.set_reuseaddr(true)?;
                sock.bind(addr)?;
                let listener = Arc::new(sock.listen(BACKLOG)?);
                Ok(Held::Tcp {
                    task: self
                        .handle
                        .spawn(accept_loop(listener.clone(), shared, *hp)),
                    listener,
                })
            }
            Protocol::Udp => {
                // No SO_REUSEADDR: for UDP it would let another socket share the port.
                let sock = std::net::UdpSocket::bind(addr)?;
                // The kernel's minimum: a few datagrams.
                let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &0);
                Ok(Held::Udp { _socket: sock })
            }
        }
    }

    /// Sets `service`'s published ports: each host port in `ports` is held
    /// (bound now if needed; ports no longer listed are closed at once) and
    /// served to its endpoints, replacing the previous set atomically. When
    /// this returns, no new connection goes to an endpoint that is Draining
    /// or absent here. Returns what could not be published (a port that
    /// cannot be bound gets no DNAT rule: it would steal the holder's traffic).
    pub fn set_service(
        &self,
        service: &str,
        ports: BTreeMap<HostPort, Vec<Endpoint>>,
    ) -> Vec<ProxyError> {
        let mut services = self.services();
        let mut errors = Vec::new();
        for hp in ports.keys() {
            if let Err(e) = self.hold(&mut services, service, *hp) {
                errors.push(e);
            }
        }
        let Some(entry) = services.get_mut(service) else {
            // Nothing held: nothing published.
            drop(services);
            self.set_dnat(service, &PortMap::new(), &mut errors);
            return errors;
        };
        entry.held.retain(|hp, _| ports.contains_key(hp));
        let held: BTreeMap<HostPort, Vec<Endpoint>> = ports
            .into_iter()
            .filter(|(hp, _)| entry.held.contains_key(hp))
            .collect();
        let ready: PortMap = held
            .iter()
            .map(|(hp, eps)| {
                let r = eps
                    .iter()
                    .filter(|e| e.state == EndpointState::Ready)
                    .map(|e| e.addr)
                    .collect();
                (*hp, r)
            })
            .collect();
        {
            let mut t = entry
                .shared
                .table
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let listed = |id: &String| held.values().flatten().any(|e| &e.id == id);
            let mut counters: HashMap<String, Arc<Counter>> = std::mem::take(&mut t.counters)
                .into_iter()
                .filter(|(id, c)| c.active.load(Ordering::Acquire) > 0 || listed(id))
                .collect();
            for e in held.values().flatten() {
                counters.entry(e.id.clone()).or_default();
            }
            let ready_count = |eps: &[Endpoint]| {
                eps.iter()
                    .filter(|e| e.state == EndpointState::Ready)
                    .count()
            };
            let lost = held.iter().any(|(hp, eps)| {
                ready_count(eps) == 0 && t.ports.get(hp).is_some_and(|was| ready_count(was) > 0)
            });
            if lost {
                entry.shared.unserved.fetch_add(1, Ordering::Relaxed);
            }
            t.counters = counters;
            t.ports = held.into_iter().collect();
        }
        if entry.held.is_empty() {
            services.remove(service);
        }
        drop(services);
        self.set_dnat(service, &ready, &mut errors);
        errors
    }

    fn set_dnat(&self, service: &str, ready: &PortMap, errors: &mut Vec<ProxyError>) {
        let Some(dnat) = &self.dnat else { return };
        if let Err(update) = dnat.set(service, ready) {
            // Without the rules the listener serves the port, with the
            // guarantees above; stale rules could break them.
            tracing::warn!(service, error = %update, "DNAT update failed; the proxy serves the port");
            if let Err(remove) = dnat.remove(service) {
                errors.push(ProxyError::Dnat {
                    service: service.into(),
                    update: Box::new(update),
                    remove: Box::new(remove),
                });
            }
        }
    }

    /// [`PortProxy::set_service`] with one TCP port on every address.
    pub fn set_port(
        &self,
        service: &str,
        host_port: u16,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), ProxyError> {
        let mut ports = BTreeMap::new();
        ports.insert(HostPort::tcp(host_port), endpoints);
        match self.set_service(service, ports).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops publishing `service` (its ports are free when this returns).
    /// Its in-flight connections continue.
    pub fn remove_service(&self, service: &str) -> bool {
        if let Some(dnat) = &self.dnat {
            if let Err(e) = dnat.remove(service) {
                tracing::error!(service, error = %e, "could not remove the DNAT rules");
            }
        }
        self.services().remove(service).is_some()
    }

    /// Removes DNAT rules of services not in `keep` (see [`Dnat::prune`]).
    pub fn prune(&self, keep: &std::collections::BTreeSet<&str>) {
        if let Some(dnat) = &self.dnat {
            if let Err(e) = dnat.prune(keep) {
                tracing::warn!(error = %e, "could not remove stale DNAT rules");
            }
        }
    }

    /// Active connections of endpoint `id` of `service` (0 when unknown):
    /// the proxy's own and, with the fast path, those DNAT sent there over
    /// TCP (conntrack). If conntrack cannot be read, the endpoint counts as
    /// busy (1), so a drain waits for its deadline rather than cutting connections.
    pub fn active(&self, service: &str, id: &str) -> usize {
        let services = self.services();
        let Some(s) = services.get(service) else {
            return 0;
        };
        let t = s.shared.table();
        let proxied = t
            .counters
            .get(id)
            .map(|c| c.active.load(Ordering::Acquire))
            .unwrap_or(0);
        let pairs: Vec<(u16, SocketAddrV4)> = t
            .ports
            .iter()
            .filter(|(hp, _)| hp.protocol == Protocol::Tcp)
            .flat_map(|(hp, eps)| eps.iter().filter(|e| e.id == id).map(|e| (hp.port, e.addr)))
            .collect();
        drop(t);
        drop(services);
        let dnat = match &self.dnat {
            Some(dnat) => dnat.active(&pairs).unwrap_or_else(|e| {
                tracing::warn!(service, error = %e, "cannot count DNAT connections");
                1
            }),
            None => 0,
        };
        proxied + dnat
    }

    /// The host ports held, by service.
    pub fn published(&self) -> Vec<(String, HostPort)> {
        let mut v: Vec<_> = self
            .services()
            .iter()
            .flat_map(|(n, s)| s.held.keys().map(|hp| (n.clone(), *hp)))
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
                state: t.state_of(id),
                active: c.active.load(Ordering::Acquire),
                total: c.total.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// TCP connections of `service` the agent's listeners turned away
    /// because no endpoint was Ready or reachable.
    pub fn refused(&self, service: &str) -> u64 {
        self.services()
            .get(service)
            .map(|s| s.shared.refused.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Times one of `service`'s held ports lost its last Ready endpoint
    /// (from then until a replica is Ready again its connections are
    /// refused): a crash of the only replica counts, a start-first rollout
    /// never should.
    pub fn unserved(&self, service: &str) -> u64 {
        self.services()
            .get(service)
            .map(|s| s.shared.unserved.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>, port: HostPort) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(proxy_conn(client, shared.clone(), port));
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

async fn proxy_conn(mut client: TcpStream, shared: Arc<Shared>, port: HostPort) {
    let _ = client.set_nodelay(true);
    let mut tried = Vec::new();
    let (mut backend, _active) = loop {
        let Some((addr, id, active)) = shared.pick(&port, &tried) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_on_every_address_binds_the_publish_ip() {
        let port = |ip: &str, host: Option<u16>| Port {
            container: 80,
            host,
            host_ip: ip.parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let lo2: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let cases = [
            // (manifest host_ip, host port, --publish-ip, bound)
            (
                "0.0.0.0",
                Some(8080),
                Ipv4Addr::UNSPECIFIED,
                Some("0.0.0.0"),
            ),
            ("0.0.0.0", Some(8080), lo2, Some("127.0.0.2")),
            ("127.0.0.1", Some(8080), lo2, Some("127.0.0.1")),
            ("0.0.0.0", None, lo2, None),
            ("::1", Some(8080), lo2, None),
        ];
        for (ip, host, default, want) in cases {
            let got = HostPort::on(&port(ip, host), default).map(|hp| hp.ip.to_string());
            assert_eq!(got.as_deref(), want, "{ip} {host:?} {default}");
        }
        assert_eq!(
            HostPort::on(&port("0.0.0.0", Some(8080)), lo2).map(|hp| hp.port),
            Some(8080)
        );
    }
}
