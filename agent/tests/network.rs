//! End-to-end tests of container networking on the real kernel (run as root):
//! bridge, per-container namespaces and veths, reachability host ↔ container and
//! container ↔ container, isolation of two networks, a real container joining its
//! namespace, restart cleanup. Every test uses its own bridge `bt<hex>` and a free
//! 10.200.X.0/24 and asserts nothing (link, namespace, mount) is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_agent::network::{netns, veth_name, Attachment, Ipv4Net, NetConfig, Network};
use berth_agent::runtime::{ContainerConfig, ContainerState, Runtime, RuntimePaths};
use berth_agent::sys::netlink::Netlink;

/// Picks a bridge name and a /24 under 10.200.0.0/16 that no route of the host
/// overlaps and no other test of this process holds.
fn pick_subnet() -> (String, Ipv4Net) {
    static TAKEN: Mutex<Option<HashSet<u8>>> = Mutex::new(None);
    let mut taken = TAKEN.lock().unwrap();
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut nl = Netlink::open().unwrap();
    let routes = nl.routes().unwrap();
    for _ in 0..1000 {
        let x = fastrand::u8(..);
        let net: Ipv4Net = format!("10.200.{x}.0/24").parse().unwrap();
        let overlaps = routes.iter().any(|r| {
            let len = r.dst_len.min(24);
            len > 0 && {
                let mask = u32::MAX << (32 - u32::from(len));
                u32::from(r.dst) & mask == u32::from(net.network()) & mask
            }
        });
        let bridge = format!("bt{:04x}", fastrand::u16(..));
        if !overlaps && taken.insert(x) && nl.link_index(&bridge).unwrap().is_none() {
            return (bridge, net);
        }
    }
    panic!("no free test subnet");
}

/// A network on its own bridge, run dir and sled db; destroyed on drop.
struct TestNet {
    net: Option<Network>,
    run: tempfile::TempDir,
    _db_dir: tempfile::TempDir,
    db: sled::Db,
    bridge: String,
    subnet: Ipv4Net,
    masquerade: bool,
    ids: Vec<String>,
}

impl TestNet {
    fn new() -> TestNet {
        let (bridge, subnet) = pick_subnet();
        let db_dir = tempfile::tempdir().unwrap();
        let db = sled::open(db_dir.path()).unwrap();
        let mut t = TestNet {
            net: None,
            run: tempfile::Builder::new()
                .prefix("berth-net-run-")
                .tempdir()
                .unwrap(),
            _db_dir: db_dir,
            db,
            bridge,
            subnet,
            masquerade: false,
            ids: Vec::new(),
        };
        t.open();
        t
    }

    fn open(&mut self) {
        assert!(self.net.is_none());
        self.net = Some(
            Network::open(NetConfig {
                bridge: self.bridge.clone(),
                subnet: self.subnet,
                run_dir: self.run.path().to_path_buf(),
                ipam_tree: self.db.open_tree("net").unwrap(),
                masquerade: self.masquerade,
            })
            .unwrap(),
        );
    }

    fn net(&self) -> &Network {
        self.net.as_ref().unwrap()
    }

    fn attach(&mut self, id: &str) -> Attachment {
        let id = format!("{id}-{}", std::process::id());
        self.ids.push(id.clone());
        self.net().attach(&id).unwrap()
    }

    /// Simulates the agent dying: the Network goes away, containers stay.
    fn crash(&mut self) {
        drop(self.net.take());
    }

    fn netns_dir(&self) -> PathBuf {
        self.run.path().join("netns")
    }

    /// Destroys the network and asserts nothing of it is left.
    fn finish(mut self) {
        self.net.take().unwrap().destroy().unwrap();
        self.assert_clean();
    }

    fn assert_clean(&self) {
        let links = ip_links();
        assert!(
            !links.contains(&self.bridge),
            "bridge {} left: {links}",
            self.bridge
        );
        for id in &self.ids {
            let v = veth_name(&self.bridge, id);
            assert!(!links.contains(&v), "veth {v} of {id} left: {links}");
        }
        let dir = self.netns_dir();
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{} not empty",
            dir.display()
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let run = self.run.path().to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&run), "mount left under {run}");
        assert!(
            !self.db.open_tree("net").unwrap().iter().any(|_| true),
            "address records left"
        );
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if self.net.is_none() && !std::thread::panicking() {
            return;
        }
        if self.net.is_none() {
            self.open();
        }
        if let Some(net) = self.net.take() {
            let _ = net.destroy();
        }
    }
}

fn ip_links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A line-echo server: answers every line with `name`. Stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(listener: TcpListener, name: &str) -> Server {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve_lines(s, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }

    /// A server on port 7000 inside the namespace at `netns_path`.
    fn in_netns(netns_path: &Path, name: &str) -> Server {
        let l = netns::run_in(netns_path, || TcpListener::bind(("0.0.0.0", 7000)))
            .unwrap()
            .unwrap();
        Server::start(l, name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_lines(s: TcpStream, name: &str) {
    s.set_nonblocking(false).unwrap();
    let mut w = s.try_clone().unwrap();
    for line in BufReader::new(s).lines() {
        if line.is_err() || writeln!(w, "{name}").is_err() {
            return;
        }
    }
}

/// Connects to `addr` (bounded), sends a line, returns the answer. The connect
/// timeout allows one SYN retransmit (1 s): installing another test's nftables
/// table (conntrack hooks) in parallel has been seen to drop a first SYN.
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn attach_gives_eth0_routes_and_reachability() {
    berth_agent::require_root!();
    let mut t = TestNet::new();
    let a = t.attach("c1");
    let b = t.attach("c2");
    let gw = t.subnet.gateway();
    assert_eq!(a.ip, Ipv4Addr::from(u32::from(t.subnet.network()) + 2));
    assert_eq!(b.ip, Ipv4Addr::from(u32::from(t.subnet.network()) + 3));
    assert_eq!((a.gateway, a.prefix_len), (gw, 24));
    assert!(a.netns_path.starts_with(t.netns_dir()));
    assert!(netns::is_pinned(&a.netns_path));
    assert_eq!(t.net().get(&a.id), Some(a.clone()));

    // Inside: lo and eth0 up, the address, the default route via the gateway.
    let (links, addrs, routes) = netns::run_in(&a.netns_path, || {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let eth0 = links.iter().find(|l| l.name == "eth0").unwrap().index;
        (links.clone(), nl.addrs(eth0).unwrap(), nl.routes().unwrap())
    })
    .unwrap();
    let names: Vec<_> = links.iter().map(|l| (l.name.as_str(), l.up)).collect();
    assert_eq!(names, [("lo", true), ("eth0", true)], "{links:?}");
    assert_eq!(addrs, [(a.ip, 24)]);
    assert!(
        routes
            .iter()
            .any(|r| r.dst_len == 0 && r.gateway == Some(gw)),
        "{routes:?}"
    );
    // Outside: the host end is on the bridge and up.
    let host = Netlink::open().unwrap().links().unwrap();
    let br = host.iter().find(|l| l.name == t.bridge).unwrap();
    let veth = host.iter().find(|l| l.name == a.host_veth).unwrap();
    assert_eq!(veth.master, Some(br.index));
    assert!(veth.up && br.up);

    // Host → container, container → container, container → gateway.
    let _srv_a = Server::in_netns(&a.netns_path, "A");
    let _srv_b = Server::in_netns(&b.netns_path, "B");
    assert_eq!(ask(sock(a.ip, 7000)).unwrap(), "A");
    let from_b = netns::run_in(&b.netns_path, || ask(sock(a.ip, 7000))).unwrap();
    assert_eq!(from_b.unwrap(), "A");
    let from_a = netns::run_in(&a.netns_path, || ask(sock(b.ip, 7000))).unwrap();
    assert_eq!(from_a.unwrap(), "B");

    // Detach: the namespace is unpinned at once, the rest follows in the background.
    t.net().detach(&a.id).unwrap();
    assert!(!a.netns_path.exists());
    t.net().detach(&b.id).unwrap();
    t.net().settle();
    let links = ip_links();
    assert!(!links.contains(&a.host_veth) && !links.contains(&b.host_veth));
    assert!(t.net().ipam().entries().is_empty());
    // Addresses go round-robin: a released one is not handed out at once
    // (the host may still have a neighbor entry for it).
    let c = t.attach("c3");
    assert_ne!(c.ip, a.ip);
    assert_ne!(c.ip, b.ip);
    t.net().detach(&c.id).unwrap();
    t.finish();
}

#[test]
fn container_reaches_the_host_through_the_gateway() {
    berth_agent::require_root!();
    let mut t = TestNet::new();
    let a = t.attach("gw");
    let listener = TcpListener::bind((t.subnet.gateway(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _srv = Server::start(listener, "host");
    let got = netns::run_in(&a.netns_path, || ask(sock(a.gateway, port))).unwrap();
    assert_eq!(got.unwrap(), "host");
    t.finish();
}

/// Two networks (two agents): each container is reachable from the host, but not
/// from the other network's containers (the host does not forward for them).
#[test]
fn two_networks_are_isolated_and_nat_keeps_them_so() {
    berth_agent::require_root!();
    let mut t1 = TestNet::new();
    let mut t2 = TestNet::new();
    let a = t1.attach("iso-a");
    let b = t2.attach("iso-b");
    let _srv = Server::in_netns(&b.netns_path, "B");
    assert_eq!(ask(sock(b.ip, 7000)).unwrap(), "B", "host reaches both");
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    /// Puts `ip_forward` back as it was, even when the test fails.
    struct RestoreForward(String);
    impl Drop for RestoreForward {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.0);
        }
    }
    let _restore = RestoreForward(forward.clone());
    let unreachable = || {
        let t0 = Instant::now();
        let r = netns::run_in(&a.netns_path, || ask(sock(b.ip, 7000))).unwrap();
        assert!(r.is_err(), "network 1 reached network 2: {r:?}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    };
    if forward.trim() == "0" {
        unreachable();
    }

    // With outbound NAT (ip_forward=1) the per-bridge forward rules keep isolating.
    t2.crash();
    t2.masquerade = true;
    t2.open();
    let rules = std::process::Command::new("nft")
        .args(["list", "table", "ip", &format!("berth_{}", t2.bridge)])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(rules.contains("masquerade"), "{rules}");
    assert!(rules.contains(&t2.subnet.to_string()), "{rules}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    unreachable();
    assert_eq!(ask(sock(b.ip, 7000)).unwrap(), "B");
    drop(_srv);
    let bridge2 = t2.bridge.clone();
    t2.finish();
    let gone = std::process::Command::new("nft")
        .args(["list", "table", "ip", &format!("berth_{bridge2}")])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "nft table left behind");
    t1.finish();
}

#[test]
fn restart_adopts_then_reconcile_removes_orphans() {
    berth_agent::require_root!();
    let mut t = TestNet::new();
    let a = t.attach("keep");
    let b = t.attach("gone");
    t.crash();
    t.open();
    // Re-adoption: the live container's attachment is found again.
    assert_eq!(t.net().get(&a.id), Some(a.clone()));
    let report = t.net().reconcile([a.id.as_str()]).unwrap();
    assert_eq!(report.namespaces_removed, vec![b.id.clone()]);
    assert_eq!(report.veths_deleted, vec![b.host_veth.clone()]);
    assert_eq!(report.addresses_released, vec![(b.id.clone(), b.ip)]);
    assert!(!ip_links().contains(&b.host_veth));
    assert!(ip_links().contains(&a.host_veth));
    // A new container does not get a live one's address.
    let c = t.attach("new");
    assert_ne!(c.ip, a.ip);
    // Agent restart with nothing live: everything goes.
    t.crash();
    t.open();
    let report = t.net().reconcile([]).unwrap();
    assert_eq!(report.namespaces_removed.len(), 2);
    assert_eq!(report.veths_deleted.len(), 2);
    assert!(t.net().ipam().entries().is_empty());
    let dir = t.netns_dir();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let links = ip_links();
    for id in &t.ids {
        assert!(!links.contains(&veth_name(&t.bridge, id)));
    }
    t.finish();
}

#[test]
fn attach_refuses_an_attached_id_and_cleans_up_failures() {
    berth_agent::require_root!();
    let mut t = TestNet::new();
    let a = t.attach("twice");
    assert!(t.net().attach(&a.id).is_err());
    assert!(t.net().attach("bad/id").is_err());
    // Still intact after the refusals.
    assert!(netns::is_pinned(&a.netns_path));
    t.net().detach(&a.id).unwrap();
    t.finish();
}

// ---- a real container joining its namespace ------------------------------------

fn busybox_layer() -> &'static Path {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    LAYER.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let root = base.join(format!("net-busybox-layer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "www"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "ip", "httpd", "echo", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("www/index.html"), "hello from berth\n").unwrap();
        root
    })
}

#[test]
fn a_container_joins_its_namespace_and_serves_http() {
    berth_agent::require_root!();
    let mut t = TestNet::new();
    let att = t.attach("httpd");
    let state = tempfile::Builder::new()
        .prefix("berth-net-state-")
        .tempdir()
        .unwrap();
    let rt = Runtime::new(RuntimePaths::new(
        state.path(),
        state.path().join("run"),
        "berth-test",
        env!("CARGO_BIN_EXE_berth-monitor"),
    ));
    let mut cfg = ContainerConfig::new(
        att.id.clone(),
        vec![busybox_layer().to_path_buf()],
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "ip -4 addr show eth0; ip route; exec httpd -f -p 8080 -h /www".into(),
        ],
    );
    cfg.netns = Some(att.netns_path.clone());
    cfg.stop_timeout = Duration::from_secs(1);
    struct Remove<'a>(&'a Runtime, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove(&self.1);
        }
    }
    rt.create_and_start(&cfg).unwrap();
    let guard = Remove(&rt, cfg.id.clone());

    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match http_get(sock(att.ip, 8080)) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("httpd in the container did not answer: {e}"),
        }
    };
    assert!(body.contains("hello from berth"), "{body}");
    let files = rt.logs(&cfg.id).unwrap();
    let mut out = String::new();
    while Instant::now() < deadline && !out.contains("default via") {
        out = berth_agent::runtime::crilog::read_entries(&files)
            .iter()
            .map(|e| format!("{}\n", String::from_utf8_lossy(&e.line)))
            .collect();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        out.contains(&format!("inet {}/24", att.ip)),
        "eth0 inside: {out}"
    );
    assert!(
        out.contains(&format!("default via {}", att.gateway)),
        "routes inside: {out}"
    );
    assert!(matches!(rt.state(&cfg.id), ContainerState::Running { .. }));

    drop(guard);
    t.net().detach(&att.id).unwrap();
    t.finish();
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
