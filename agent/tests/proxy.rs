//! Tests of the published-port proxy with real sockets: backends on loopback
//! addresses (127.0.0.2, .3, …), the proxy on 0.0.0.0:<free port>, clients on
//! 127.0.0.1. Balancing, draining, refusal with no ready endpoint, connect
//! retries, and a bounded load loop across endpoint swaps with zero failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::network::{Endpoint, EndpointState, PortProxy};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A line server: answers each line with its name.
struct Backend {
    addr: SocketAddrV4,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(host: u8, name: &'static str) -> Backend {
        let l = TcpListener::bind((Ipv4Addr::new(127, 0, 0, host), 0))
            .await
            .unwrap();
        let addr = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(_)) = lines.next_line().await {
                        if w.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            accepted,
            task,
        }
    }

    fn endpoint(&self, id: &str, state: EndpointState) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr: self.addr,
            state,
        }
    }

    /// Stops listening (like a stopped container).
    fn stop(&self) {
        self.task.abort();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client connection through the proxy that can ask several times.
struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Client {
            lines: BufReader::new(r).lines(),
            w,
        })
    }

    async fn ask(&mut self) -> std::io::Result<String> {
        self.w.write_all(b"hi\n").await?;
        match tokio::time::timeout(Duration::from_secs(3), self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// One request on a fresh connection.
async fn request(port: u16) -> std::io::Result<String> {
    Client::connect(port).await?.ask().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_are_balanced_over_ready_endpoints() {
    let a = Backend::start(2, "A").await;
    let b = Backend::start(3, "B").await;
    let proxy = PortProxy::new();
    let port = free_port();
    proxy
        .set_port(
            "web",
            port,
            vec![
                a.endpoint("a", EndpointState::Ready),
                b.endpoint("b", EndpointState::Ready),
            ],
        )
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        *seen.entry(request(port).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("A"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("B"), Some(&10), "{seen:?}");
    let stats = proxy.stats("web");
    assert_eq!(stats.iter().map(|s| s.total).sum::<u64>(), 20);
    let deadline = Instant::now() + Duration::from_secs(3);
    while proxy.stats("web").iter().any(|s| s.active > 0) {
        assert!(Instant::now() < deadline, "connections never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        proxy.published(),
        vec![("web".to_string(), berth_agent::network::HostPort::tcp(port))]
    );
    assert!(proxy.remove_service("web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_endpoint_keeps_its_connections_and_gets_no_new_ones() {
    let a = Backend::start(2, "A").await;
    let b = Backend::start(3, "B").await;
    let proxy = PortProxy::new();
    let port = free_port();
    proxy
        .set_port("web", port, vec![a.endpoint("a", EndpointState::Ready)])
        .unwrap();
    let mut long = Client::connect(port).await.unwrap();
    assert_eq!(long.ask().await.unwrap(), "A");
    assert_eq!(proxy.active("web", "a"), 1);

    proxy
        .set_port(
            "web",
            port,
            vec![
                a.endpoint("a", EndpointState::Draining),
                b.endpoint("b", EndpointState::Ready),
            ],
        )
        .unwrap();
    let a_before = a.accepted.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(request(port).await.unwrap(), "B");
    }
    assert_eq!(
        a.accepted.load(Ordering::Relaxed),
        a_before,
        "A got new connections"
    );
    // The in-flight connection still works and is counted.
    assert_eq!(long.ask().await.unwrap(), "A");
    assert_eq!(proxy.active("web", "a"), 1);
    drop(long);
    let deadline = Instant::now() + Duration::from_secs(3);
    while proxy.active("web", "a") > 0 {
        assert!(Instant::now() < deadline, "active never dropped to 0");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Removed while busy: still counted until the connection ends.
    let mut busy = Client::connect(port).await.unwrap();
    assert_eq!(busy.ask().await.unwrap(), "B");
    proxy
        .set_port("web", port, vec![a.endpoint("a", EndpointState::Ready)])
        .unwrap();
    assert_eq!(proxy.active("web", "b"), 1);
    assert_eq!(busy.ask().await.unwrap(), "B");
    assert_eq!(request(port).await.unwrap(), "A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_endpoint_means_refused_and_dead_endpoints_are_skipped() {
    let a = Backend::start(2, "A").await;
    let b = Backend::start(3, "B").await;
    let proxy = PortProxy::new();
    let port = free_port();
    proxy
        .set_port("web", port, vec![a.endpoint("a", EndpointState::Draining)])
        .unwrap();
    assert!(request(port).await.is_err(), "draining only: refused");
    proxy.set_port("web", port, vec![]).unwrap();
    assert!(request(port).await.is_err(), "no endpoints: refused");
    assert_eq!(proxy.refused("web"), 2);
    assert_eq!(a.accepted.load(Ordering::Relaxed), 0);

    // A Ready endpoint whose container is gone: the next one is tried.
    a.stop();
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy
        .set_port(
            "web",
            port,
            vec![
                a.endpoint("a", EndpointState::Ready),
                b.endpoint("b", EndpointState::Ready),
            ],
        )
        .unwrap();
    for _ in 0..6 {
        assert_eq!(request(port).await.unwrap(), "B");
    }

    // Moving the service to another port closes the old one.
    let port2 = free_port();
    proxy
        .set_port("web", port2, vec![b.endpoint("b", EndpointState::Ready)])
        .unwrap();
    assert_eq!(request(port2).await.unwrap(), "B");
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .is_err());
    assert!(proxy.remove_service("web"));
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port2))
        .await
        .is_err());
    // The port is free again at once.
    proxy
        .set_port("again", port2, vec![b.endpoint("b", EndpointState::Ready)])
        .unwrap();
    assert_eq!(request(port2).await.unwrap(), "B");
    // Two services cannot share a port.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = l.local_addr().unwrap().port();
    assert!(proxy.set_port("other", taken, vec![]).is_err());
}

/// 2000 one-shot requests from 8 concurrent clients (≤ 10 s) while the service
/// is rolled A → C → D the way the reconciler does it: add the new endpoint
/// Ready, mark the old Draining, wait until it has no connections, remove it,
/// stop it. Not a single request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_swaps_under_load_lose_no_request() {
    const TOTAL: usize = 2000;
    let a = Backend::start(2, "A").await;
    let proxy = PortProxy::new();
    let port = free_port();
    proxy
        .set_port("web", port, vec![a.endpoint("a", EndpointState::Ready)])
        .unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (done, failed) = (done.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while done.fetch_add(1, Ordering::Relaxed) < TOTAL && Instant::now() < deadline {
                match request(port).await {
                    Ok(name) => answers.push(name),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request failed: {e}");
                    }
                }
            }
            answers
        }));
    }

    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let mut old = (a, "a");
    for (n, (host, name, id)) in [(400, (3, "C", "c")), (1200, (4, "D", "d"))] {
        wait_for(n).await;
        let new = Backend::start(host, name).await;
        proxy
            .set_port(
                "web",
                port,
                vec![
                    old.0.endpoint(old.1, EndpointState::Ready),
                    new.endpoint(id, EndpointState::Ready),
                ],
            )
            .unwrap();
        wait_for(n + 100).await;
        proxy
            .set_port(
                "web",
                port,
                vec![
                    old.0.endpoint(old.1, EndpointState::Draining),
                    new.endpoint(id, EndpointState::Ready),
                ],
            )
            .unwrap();
        while proxy.active("web", old.1) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy
            .set_port("web", port, vec![new.endpoint(id, EndpointState::Ready)])
            .unwrap();
        old.0.stop();
        old = (new, id);
    }

    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        answers.len() >= TOTAL,
        "only {} requests in 10 s",
        answers.len()
    );
    for name in ["A", "C", "D"] {
        assert!(answers.iter().any(|a| a == name), "{name} never answered");
    }
    assert_eq!(answers.last().map(String::as_str), Some("D"));
    assert_eq!(proxy.refused("web"), 0);
}

/// A request on a fresh connection to `addr`.
async fn request_at(addr: SocketAddrV4) -> std::io::Result<String> {
    let s = TcpStream::connect(addr).await?;
    let (r, mut w) = s.into_split();
    w.write_all(b"hi\n").await?;
    let mut lines = BufReader::new(r).lines();
    match tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await {
        Ok(Ok(Some(l))) => Ok(l),
        Ok(Ok(None)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ports_each_on_its_address_and_conflicts_are_named() {
    use berth_agent::network::{HostPort, ProxyError};
    use berth_core::manifest::Protocol;
    use std::collections::BTreeMap;

    let a = Backend::start(2, "A").await;
    let b = Backend::start(3, "B").await;
    let proxy = PortProxy::new();
    let (p_local, p_any, p_udp) = (free_port(), free_port(), free_port());
    let local = HostPort {
        ip: Ipv4Addr::LOCALHOST,
        port: p_local,
        protocol: Protocol::Tcp,
    };
    let udp = HostPort {
        protocol: Protocol::Udp,
        ..HostPort::tcp(p_udp)
    };
    let mut ports = BTreeMap::new();
    ports.insert(local, vec![a.endpoint("a", EndpointState::Ready)]);
    ports.insert(
        HostPort::tcp(p_any),
        vec![b.endpoint("a", EndpointState::Ready)],
    );
    ports.insert(udp, vec![]);
    assert!(proxy.set_service("web", ports.clone()).is_empty());
    assert_eq!(request(p_local).await.unwrap(), "A");
    assert_eq!(request(p_any).await.unwrap(), "B");
    // 127.0.0.1 only: not on another local address; every address: there too.
    let other = |p| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), p);
    assert!(request_at(other(p_local)).await.is_err());
    assert_eq!(request_at(other(p_any)).await.unwrap(), "B");
    // Both connections count for the one container.
    assert_eq!(proxy.stats("web")[0].total, 3);
    // The UDP port is held: nothing else can bind it.
    assert!(std::net::UdpSocket::bind(("0.0.0.0", p_udp)).is_err());

    // Another service cannot take a port this one holds; the same service
    // cannot hold an overlapping binding beside it.
    let err = proxy.set_port("shop", p_local, vec![]).unwrap_err();
    assert!(
        matches!(&err, ProxyError::Taken { owner, .. } if owner == "web"),
        "{err}"
    );
    let err = proxy.publish("web", &[HostPort::tcp(p_local)]).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "publishing 0.0.0.0:{p_local}/tcp: its running replicas publish 127.0.0.1:{p_local}/tcp"
        )),
        "{err}"
    );
    // A port held by another process: the error names it.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = l.local_addr().unwrap().port();
    let err = proxy.publish("web", &[HostPort::tcp(taken)]).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("held by pid {} (", std::process::id())),
        "{err}"
    );

    // Ports no longer listed are closed at once.
    ports.remove(&udp);
    ports.remove(&local);
    assert!(proxy.set_service("web", ports).is_empty());
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, p_local))
        .await
        .is_err());
    drop(std::net::UdpSocket::bind(("0.0.0.0", p_udp)).expect("the UDP port is free"));
    assert_eq!(
        proxy.published(),
        vec![("web".to_string(), HostPort::tcp(p_any))]
    );
}
