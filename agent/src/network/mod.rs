//! Container networking: a Linux bridge with the subnet's gateway address, an
//! address per container (IPAM in sled), a network namespace per container
//! pinned under `<run_dir>/netns/<id>` with a veth pair (`eth0` inside, the
//! host end on the bridge), optional outbound NAT ([`nft`]), and published
//! ports: DNAT ([`dnat`]) and the agent's sockets and TCP proxy ([`proxy`]).
//! See docs/networking.md for the design.

pub mod addr;
pub mod dnat;
pub mod holder;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod proxy;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

pub use addr::{AddrError, Ipv4Net};
pub use ipam::{Ipam, IpamError};
pub use proxy::{Endpoint, EndpointState, HostPort, PortProxy, ProxyError};

use crate::sys::netlink::Netlink;

/// Host-side veth names start with this (then 13 hex digits of a hash of bridge and id).
pub const VETH_PREFIX: &str = "bv";
/// How long attach waits for both veth ends to become operationally up.
const LINK_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The container-side interface name.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("bridge name {0:?} must be 1..=15 of [A-Za-z0-9_.-]")]
    BadBridge(String),
    #[error("container id {0:?} is not valid")]
    BadId(String),
    #[error("container {0}: already attached (its namespace is pinned)")]
    AlreadyAttached(String),
    #[error("{context}: {source}")]
    Sys { context: String, source: io::Error },
    #[error("outbound NAT for {bridge}: {message}")]
    Nat { bridge: String, message: String },
}

fn sys(context: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let context = context.into();
    move |source| NetError::Sys { context, source }
}

/// What [`Network::open`] needs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Bridge name (≤ 15 bytes), e.g. `berth0`.
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The agent's run dir; namespaces are pinned under `run_dir/netns/`.
    pub run_dir: PathBuf,
    /// Where addresses are recorded (e.g. `db.open_tree("net")`).
    pub ipam_tree: sled::Tree,
    /// Outbound NAT (nftables masquerade of the subnet, `ip_forward=1`) and
    /// isolation of the bridge from forwarded traffic it did not ask for.
    pub masquerade: bool,
}

/// A container's place on the network, as returned by [`Network::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    /// Pass to `runtime::ContainerConfig::netns`.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub host_veth: String,
}

/// What [`Network::reconcile`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub namespaces_removed: Vec<String>,
    pub veths_deleted: Vec<String>,
    pub addresses_released: Vec<(String, Ipv4Addr)>,
}

enum Job {
    Teardown { id: String, veth: String },
    Barrier(mpsc::Sender<()>),
}

/// The bridge network of one agent. `Send + Sync`; share it with an `Arc`.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    bridge_index: u32,
    subnet: Ipv4Net,
    netns_dir: PathBuf,
    masquerade: bool,
    ipam: Arc<Ipam>,
    host: Mutex<Netlink>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Ids whose teardown is queued but not finished.
    pending: Arc<Mutex<HashSet<String>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The host-side veth name of container `id` on `bridge` (15 bytes).
pub fn veth_name(bridge: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(bridge.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    let hex = hex::encode(h.finalize());
    format!("{VETH_PREFIX}{}", &hex[..13])
}

/// A stable, locally administered unicast MAC for `bridge`, so its address does
/// not follow the lowest port MAC as containers come and go.
fn bridge_mac(bridge: &str) -> [u8; 6] {
    let d = Sha256::digest(bridge.as_bytes());
    [0x02, d[0], d[1], d[2], d[3], d[4]]
}

fn valid_bridge(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Network {
    /// Ensures the bridge exists, is up and carries the gateway address;
    /// prepares `run_dir/netns`; loads the address records; installs NAT if asked.
    pub fn open(cfg: NetConfig) -> Result<Network, NetError> {
        if !valid_bridge(&cfg.bridge) {
            return Err(NetError::BadBridge(cfg.bridge));
        }
        let ipam = Arc::new(Ipam::open(cfg.ipam_tree, cfg.subnet)?);
        let netns_dir = cfg.run_dir.join("netns");
        netns::prepare_dir(&netns_dir)
            .map_err(sys(format!("preparing {}", netns_dir.display())))?;
        let bridge = cfg.bridge;
        let ctx = |what: &str| format!("bridge {bridge}: {what}");
        let mut nl = Netlink::open().map_err(sys(ctx("netlink socket")))?;
        nl.create_bridge(&bridge, bridge_mac(&bridge))
            .map_err(sys(ctx("create")))?;
        let bridge_index = nl
            .link_index(&bridge)
            .map_err(sys(ctx("look up")))?
            .ok_or_else(|| NetError::Sys {
                context: ctx("look up"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        nl.add_addr(bridge_index, cfg.subnet.gateway(), cfg.subnet.prefix_len())
            .map_err(sys(ctx("gateway address")))?;
        nl.set_up(bridge_index).map_err(sys(ctx("up")))?;
        if cfg.masquerade {
            nat::install(&bridge, cfg.subnet)?;
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let worker_ipam = ipam.clone();
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let worker_pending = pending.clone();
        let worker = std::thread::Builder::new()
            .name(format!("net-teardown-{bridge}"))
            .spawn(move || teardown_worker(rx, worker_ipam, worker_pending))
            .map_err(sys("spawning the teardown thread"))?;
        Ok(Network {
            bridge,
            bridge_index,
            subnet: cfg.subnet,
            netns_dir,
            masquerade: cfg.masquerade,
            ipam,
            host: Mutex::new(nl),
            jobs: Mutex::new(Some(tx)),
            pending,
            worker: Some(worker),
        })
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Whether the bridge's nftables table (NAT, isolation) is installed.
    pub fn masquerade(&self) -> bool {
        self.masquerade
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    fn attachment(&self, id: &str, ip: Ipv4Addr) -> Attachment {
        Attachment {
            id: id.into(),
            netns_path: self.netns_dir.join(id),
            ip,
            gateway: self.subnet.gateway(),
            prefix_len: self.subnet.prefix_len(),
            host_veth: veth_name(&self.bridge, id),
        }
    }

    /// The attachment of `id` if it has an address and a pinned namespace
    /// (e.g. a container adopted after an agent restart).
    pub fn get(&self, id: &str) -> Option<Attachment> {
        let ip = self.ipam.get(id)?;
        let a = self.attachment(id, ip);
        netns::is_pinned(&a.netns_path).then_some(a)
    }

    /// Whether container `id` has a pinned network namespace here (it is
    /// attached, whatever the address records say).
    pub fn is_attached(&self, id: &str) -> bool {
        netns::is_pinned(&self.netns_dir.join(id))
    }

    /// Gives container `id` an address, a pinned network namespace with `lo`
    /// and `eth0` (address, default route via the gateway) and a veth to the bridge.
    pub fn attach(&self, id: &str) -> Result<Attachment, NetError> {
        if !crate::runtime::config::valid_id(id) {
            return Err(NetError::BadId(id.into()));
        }
        let t0 = Instant::now();
        let path = self.netns_dir.join(id);
        if netns::is_pinned(&path) {
            return Err(NetError::AlreadyAttached(id.into()));
        }
        if lock(&self.pending).contains(id) {
            self.settle(); // re-attaching an id whose teardown is still queued
        }
        let ip = self.ipam.allocate(id)?;
        let a = self.attachment(id, ip);
        match self.plumb(&a) {
            Ok(()) => {
                tracing::debug!(container = id, %ip, elapsed_us = t0.elapsed().as_micros() as u64, "attached");
                Ok(a)
            }
            Err(e) => {
                let _ = netns::remove(&path);
                let _ = self.lock_host().delete_link(&a.host_veth);
                let _ = self.ipam.release(id);
                Err(e)
            }
        }
    }

    fn lock_host(&self) -> std::sync::MutexGuard<'_, Netlink> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plumb(&self, a: &Attachment) -> Result<(), NetError> {
        let id = &a.id;
        let ctx = |what: &str| format!("container {id}: {what}");
        // A stale file (crash between create and mount) would make create fail.
        if a.netns_path.exists() {
            netns::remove(&a.netns_path).map_err(sys(ctx("removing a stale netns file")))?;
        }
        let mut ns =
            netns::create(&a.netns_path).map_err(sys(ctx("creating the network namespace")))?;
        {
            let mut host = self.lock_host();
            let mut created = host.create_veth(
                &a.host_veth,
                self.bridge_index,
                CONTAINER_IFNAME,
                std::os::fd::AsFd::as_fd(&ns.fd),
            );
            if matches!(&created, Err(e) if e.raw_os_error() == Some(libc::EEXIST)) {
                // Left over from a crash: its container is gone (the id is new to the namespace dir).
                host.delete_link(&a.host_veth)
                    .map_err(sys(ctx("deleting a stale veth")))?;
                created = host.create_veth(
                    &a.host_veth,
                    self.bridge_index,
                    CONTAINER_IFNAME,
                    std::os::fd::AsFd::as_fd(&ns.fd),
                );
            }
            created.map_err(sys(ctx(&format!("creating veth {}", a.host_veth))))?;
        }
        let nl = &mut ns.netlink;
        let eth0 = nl
            .link_index(CONTAINER_IFNAME)
            .map_err(sys(ctx("looking up eth0")))?
            .ok_or_else(|| NetError::Sys {
                context: ctx("looking up eth0"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        nl.add_addr(eth0, a.ip, a.prefix_len)
            .map_err(sys(ctx("adding the address")))?;
        nl.set_up(eth0).map_err(sys(ctx("bringing eth0 up")))?;
        nl.add_default_route(a.gateway, eth0)
            .map_err(sys(ctx("adding the default route")))?;
        // Carrier, qdisc and bridge port are switched on asynchronously by the
        // kernel's link watcher; packets sent before that are dropped (a lost
        // first SYN costs the workload a 1 s retransmit). Wait for it, bounded.
        let host_index = self
            .lock_host()
            .link_index(&a.host_veth)
            .map_err(sys(ctx("looking up the host veth")))?;
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        loop {
            let host_up = match host_index {
                Some(i) => self.lock_host().oper_up(i).unwrap_or(true),
                None => true,
            };
            if host_up && nl.oper_up(eth0).unwrap_or(true) {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(container = %id, "veth not operationally up after {LINK_UP_TIMEOUT:?}; continuing");
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    /// Detaches container `id` (after its processes are gone): unpins its
    /// namespace now; deleting the veth (slow in the kernel) and releasing the
    /// address happen on a background thread. See [`Network::settle`].
    pub fn detach(&self, id: &str) -> Result<(), NetError> {
        let path = self.netns_dir.join(id);
        netns::remove(&path)
            .map_err(sys(format!("container {id}: unpinning {}", path.display())))?;
        lock(&self.pending).insert(id.into());
        self.queue(Job::Teardown {
            id: id.into(),
            veth: veth_name(&self.bridge, id),
        });
        Ok(())
    }

    fn queue(&self, job: Job) {
        // Without a worker (shut down) the job is dropped; reconcile cleans up later.
        if let Some(tx) = lock(&self.jobs).as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Waits until every teardown queued so far has finished.
    pub fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        self.queue(Job::Barrier(tx));
        let _ = rx.recv();
    }

    /// Removes everything of containers not in `live`: pinned namespaces under
    /// `run_dir/netns`, veths on the bridge (or named for a recorded address),
    /// address records. Call it at start-up with every container id the agent
    /// knows, before attaching new ones.
    pub fn reconcile<'a>(
        &self,
        live: impl IntoIterator<Item = &'a str>,
    ) -> Result<ReconcileReport, NetError> {
        self.settle();
        let live: HashSet<&str> = live.into_iter().collect();
        let mut report = ReconcileReport::default();
        // Veths go first, while their namespaces are still pinned: once a
        // namespace is unpinned the kernel destroys its veth pair at a time
        // of its own choosing, and the report would depend on that race.
        let live_veths: HashSet<String> =
            live.iter().map(|id| veth_name(&self.bridge, id)).collect();
        let recorded: HashSet<String> = self
            .ipam
            .entries()
            .iter()
            .map(|(id, _)| veth_name(&self.bridge, id))
            .collect();
        let mut host = self.lock_host();
        let links = host.links().map_err(sys("listing links"))?;
        for l in links {
            let ours = l.name.starts_with(VETH_PREFIX)
                && l.kind.as_deref() == Some("veth")
                && (l.master == Some(self.bridge_index) || recorded.contains(&l.name));
            if ours && !live_veths.contains(&l.name) {
                host.delete_link(&l.name)
                    .map_err(sys(format!("deleting veth {}", l.name)))?;
                report.veths_deleted.push(l.name);
            }
        }
        drop(host);
        let dir = &self.netns_dir;
        let entries = std::fs::read_dir(dir).map_err(sys(format!("reading {}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(name.as_str()) {
                netns::remove(&entry.path()).map_err(sys(format!("removing netns {name}")))?;
                report.namespaces_removed.push(name);
            }
        }
        for (id, ip) in self.ipam.entries() {
            if !live.contains(id.as_str()) {
                self.ipam.release(&id)?;
                report.addresses_released.push((id, ip));
            }
        }
        Ok(report)
    }

    /// Removes the whole network: every container's namespace, veth and
    /// address, the NAT rules, the bridge and the `netns` mount point. For
    /// uninstalling and for tests; containers must be stopped first.
    pub fn destroy(mut self) -> Result<(), NetError> {
        self.reconcile([])?;
        self.stop_worker();
        self.lock_host()
            .delete_link(&self.bridge)
            .map_err(sys(format!("deleting bridge {}", self.bridge)))?;
        if self.masquerade {
            nat::remove(&self.bridge)?;
        }
        netns::release_dir(&self.netns_dir)
            .map_err(sys(format!("releasing {}", self.netns_dir.display())))
    }

    fn stop_worker(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Network {
    /// Finishes queued teardowns; leaves the bridge and live containers alone.
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn teardown_worker(rx: mpsc::Receiver<Job>, ipam: Arc<Ipam>, pending: Arc<Mutex<HashSet<String>>>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => Some(nl),
        Err(e) => {
            tracing::error!(error = %e, "network teardown: no netlink socket; reconcile will clean up");
            None
        }
    };
    for job in rx {
        match job {
            Job::Barrier(done) => {
                let _ = done.send(());
            }
            Job::Teardown { id, veth } => {
                let t0 = Instant::now();
                let deleted = match nl.as_mut().map(|nl| nl.delete_link(&veth)) {
                    Some(Ok(_)) => true,
                    Some(Err(e)) => {
                        tracing::warn!(container = %id, %veth, error = %e, "deleting veth failed");
                        false
                    }
                    None => false,
                };
                // Without proof the veth is gone the address is kept; reconcile releases it later.
                if deleted {
                    if let Err(e) = ipam.release(&id) {
                        tracing::warn!(container = %id, error = %e, "releasing the address failed");
                    }
                }
                lock(&pending).remove(&id);
                tracing::debug!(container = %id, elapsed_us = t0.elapsed().as_micros() as u64, "network torn down");
            }
        }
    }
}

/// Outbound NAT and forward isolation: group `nat` of the bridge's nftables
/// table ([`nft`]), changed only where it differs.
mod nat {
    use super::nft::{self, Rule};
    use super::{Ipv4Net, NetError};

    /// The group and the chains it owns (rules there without the agent's
    /// comment are an older agent's and are replaced with it).
    pub(super) const GROUP: &str = "nat";
    const CHAINS: &[&str] = &["postrouting", "forward", "input"];

    fn err(bridge: &str) -> impl FnOnce(nft::NftError) -> NetError + '_ {
        move |e| NetError::Nat {
            bridge: bridge.into(),
            message: e.to_string(),
        }
    }

    /// The rules of `bridge` and `subnet`, in order. The `input` rule keeps
    /// berth-dns (the gateway's port 53) to the containers of the bridge and
    /// the host itself: it is not an open resolver for whoever can route to
    /// the gateway address.
    pub fn rules(bridge: &str, subnet: Ipv4Net) -> Vec<Rule> {
        let other = format!("oifname \"{bridge}\" iifname != \"{bridge}\"");
        let gw = subnet.gateway();
        vec![
            Rule::new(
                "postrouting",
                format!("ip saddr {subnet} oifname != \"{bridge}\" masquerade"),
            ),
            Rule::new(
                "forward",
                format!("{other} ct state established,related accept"),
            ),
            Rule::new("forward", format!("{other} ct status dnat accept")),
            Rule::new("forward", format!("{other} drop")),
            Rule::new(
                "input",
                format!("ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 iifname != {{ \"{bridge}\", \"lo\" }} drop"),
            ),
        ]
    }

    pub fn install(bridge: &str, subnet: Ipv4Net) -> Result<(), NetError> {
        let changed = nft::sync_group(&nft::table(bridge), GROUP, &rules(bridge, subnet), CHAINS)
            .map_err(err(bridge))?;
        if changed {
            tracing::info!(bridge, "nftables: NAT and isolation rules installed");
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetError::Nat {
            bridge: bridge.into(),
            message: format!("enabling net.ipv4.ip_forward: {e}"),
        })
    }

    pub fn remove(bridge: &str) -> Result<(), NetError> {
        let t = nft::table(bridge);
        nft::apply(&format!("table ip {t} {{}}\ndelete table ip {t}\n")).map_err(err(bridge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ_per_bridge() {
        let a = veth_name("berth0", "web-1");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(VETH_PREFIX));
        assert_ne!(a, veth_name("berth1", "web-1"));
        assert_ne!(a, veth_name("berth0", "web-2"));
        assert_eq!(a, veth_name("berth0", "web-1"));
    }

    #[test]
    fn bridge_names_are_checked() {
        assert!(valid_bridge("berth0"));
        assert!(!valid_bridge(""));
        assert!(!valid_bridge("a-very-long-bridge-name"));
        assert!(!valid_bridge("br/0"));
        assert_eq!(bridge_mac("berth0")[0], 0x02);
    }

    #[test]
    fn nat_rules_name_the_subnet_and_bridge_and_drop_last() {
        let r = nat::rules("berth0", "10.89.0.0/16".parse().expect("subnet"));
        assert_eq!(
            r[0].body,
            "ip saddr 10.89.0.0/16 oifname != \"berth0\" masquerade"
        );
        assert!(r[1].body.contains("ct state established,related accept"));
        assert_eq!(r[3].body, "oifname \"berth0\" iifname != \"berth0\" drop");
        assert_eq!(
            r[4].body,
            "ip daddr 10.89.0.1 meta l4proto { tcp, udp } th dport 53 iifname != { \"berth0\", \"lo\" } drop"
        );
    }
}
