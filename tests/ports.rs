//! End to end: published ports as Compose users write them — several per
//! service, each on its host address (a 127.0.0.1 port does not answer on
//! another address of the host), tcp and udp, and container-only ports that
//! other containers reach directly; a host port held by another process
//! fails the rollout, naming the port and the holder; and the data plane
//! (nftables DNAT) keeps serving the host and other containers while berthd
//! is killed and restarted, which rewrites no rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_e2e::load::{get, get_at, Load};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

/// A free UDP port (on every address).
fn free_udp_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bridge's gateway address (the subnet's first host), how containers
/// reach the host's published ports.
fn gateway(agent: &Agent) -> String {
    let subnet = agent.subnet();
    let net = subnet.split('/').next().unwrap();
    let (head, _) = net.rsplit_once('.').unwrap();
    format!("{head}.1")
}

/// `nft -a list table` of the agent's table: every rule with its handle.
fn nft_table(agent: &Agent) -> String {
    let out = Command::new("nft")
        .args([
            "-a",
            "list",
            "table",
            "ip",
            &format!("berth_{}", agent.bridge()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Another host, as far as this one can tell: a network namespace of its
/// own, linked to this host by a veth pair with addresses from TEST-NET-1
/// (192.0.2.0/24). `host_ip` is this host's side of the link: a second
/// local address besides 127.0.0.1. Removed on drop.
struct OtherHost {
    netns: String,
    veth: String,
    host_ip: Ipv4Addr,
}

impl OtherHost {
    fn new() -> OtherHost {
        let pid = std::process::id();
        let base = (pid % 60 * 4 + 4) as u8;
        let o = OtherHost {
            netns: format!("bpt{}", pid % 1_000_000),
            veth: format!("bpt{}h", pid % 1_000_000),
            host_ip: Ipv4Addr::new(192, 0, 2, base + 1),
        };
        let peer_ip = Ipv4Addr::new(192, 0, 2, base + 2);
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap();
            assert!(ok.success(), "ip {args:?}");
        };
        let peer = format!("bpt{}p", pid % 1_000_000);
        ip(&["netns", "add", &o.netns]);
        ip(&[
            "link", "add", &o.veth, "type", "veth", "peer", "name", &peer, "netns", &o.netns,
        ]);
        ip(&["addr", "add", &format!("{}/30", o.host_ip), "dev", &o.veth]);
        ip(&["link", "set", &o.veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", o.netns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{peer_ip}/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        o
    }

    fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.host_ip, port))
    }

    /// Runs `f` on a thread inside the other host's namespace.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = Path::new("/run/netns").join(&self.netns);
        berth_agent::network::netns::run_in(&path, f).unwrap()
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        for args in [
            vec!["link", "del", self.veth.as_str()],
            vec!["netns", "del", self.netns.as_str()],
        ] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
    }
}

/// A UDP echo server on `port` inside a container's network namespace: the
/// test's own socket there (the test image's busybox has no UDP server), so
/// what it proves is the path from the host's published port to the
/// replica. Stopped on drop.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Answers each datagram with `tag:` and the datagram.
    fn start(netns: &Path, port: u16, tag: &'static str) -> UdpEcho {
        let sock = berth_agent::network::netns::run_in(netns, move || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        })
        .unwrap()
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut answer = format!("{tag}:").into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `msg` to `addr` over UDP from a fresh socket (three tries) and
/// returns the answer.
fn udp_ask(addr: SocketAddr, msg: &str) -> Result<String, String> {
    udp_ask_on(&UdpSocket::bind("0.0.0.0:0").unwrap(), addr, msg)
}

/// [`udp_ask`] from socket `s` (the same source port every time).
fn udp_ask_on(s: &UdpSocket, addr: SocketAddr, msg: &str) -> Result<String, String> {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1500];
    let mut last = String::new();
    for _ in 0..3 {
        s.send_to(msg.as_bytes(), addr).map_err(|e| e.to_string())?;
        match s.recv_from(&mut buf) {
            Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The running containers of `service`.
fn running(agent: &Agent, service: &str) -> Vec<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == service && c["state"] == "running")
        .collect()
}

/// Lines of `berthctl logs SERVICE`.
fn log_lines(agent: &Agent, service: &str) -> Vec<String> {
    agent
        .ctl(&["logs", service])
        .stdout
        .lines()
        .map(String::from)
        .collect()
}

/// In a client script: `{GET} HOST PORT` prints the response to `GET /index.html`.
const GET: &str = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2";

/// A client container running `script` (busybox sh) once, then sleeping.
fn client(image: &str, script: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[service.client]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \"{script}; sleep 3600\"]\n"
    )
}

#[test]
fn several_ports_each_on_its_address_tcp_udp_and_container_only() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "ports");
    let agent = Agent::start();
    let (p_local, p_any, p_udp) = (free_port(), free_port(), free_udp_port());
    // A container-only port: a number nothing on this host listens on.
    let cport = free_port();
    let web = format!(
        r#"
[service.web]
image = "{image}"
command = ["sh", "-c", "httpd -p {cport} -h /www && exec httpd -f -p 8080 -h /www"]

[[service.web.ports]]
container = 8080
host = {p_local}
host_ip = "127.0.0.1"

[[service.web.ports]]
container = 8080
host = {p_any}

[[service.web.ports]]
container = {cport}

[[service.web.ports]]
container = 5353
host = {p_udp}
protocol = "udp"

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2
"#
    );
    agent.apply_text("m.toml", &web).ok();
    let c = agent.wait_for(30, "web ready behind 127.0.0.1", |a| {
        (a.ready_of("web") == (1, 1) && get(p_local, "/index.html").is_ok())
            .then(|| running(a, "web").pop())
            .flatten()
    });
    let (id, ip) = (
        c["id"].as_str().unwrap().to_string(),
        c["ip"].as_str().unwrap().to_string(),
    );
    // Status shows the ports as docker does.
    let shown: Vec<&str> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let want_ports = [
        format!("127.0.0.1:{p_local}->8080/tcp"),
        format!("0.0.0.0:{p_any}->8080/tcp"),
        format!("{cport}/tcp"),
        format!("0.0.0.0:{p_udp}->5353/udp"),
    ];
    for want in &want_ports {
        assert!(shown.contains(&want.as_str()), "{want} not in {shown:?}");
    }
    let table = agent.ctl(&["status"]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in {table}"));
    for want in &want_ports {
        assert!(row.contains(want.as_str()), "{want} not in {row}");
    }
    assert!(
        row.contains("/tcp, "),
        "ports separated as docker does: {row}"
    );
    let inspect = agent.ctl(&["inspect", &id]).ok().stdout;
    assert!(
        inspect.contains(&format!("\"0.0.0.0:{p_udp}->5353/udp\"")),
        "{inspect}"
    );

    // TCP: 127.0.0.1 only answers on 127.0.0.1; 0.0.0.0 on every address,
    // from this host and from another one.
    assert_eq!(get(p_local, "/index.html").unwrap().trim(), "ports");
    let other = OtherHost::new();
    let to = other.at(p_any);
    assert_eq!(get_at(to, "/index.html").unwrap().trim(), "ports");
    let remote = other.run(|| get_at(to, "/index.html"));
    assert_eq!(remote.unwrap().trim(), "ports");
    let to = other.at(p_local);
    assert!(
        get_at(to, "/index.html").is_err(),
        "a port published on 127.0.0.1 answered on {to}"
    );
    assert!(
        other.run(|| get_at(to, "/index.html")).is_err(),
        "a port published on 127.0.0.1 answered another host on {to}"
    );

    // UDP: through DNAT to the replica, on 127.0.0.1, on another address,
    // from another host.
    let netns = |id: &str| agent.run_dir().join("netns").join(id);
    let _echo = UdpEcho::start(&netns(&id), 5353, "A");
    assert_eq!(
        udp_ask(SocketAddr::from(([127, 0, 0, 1], p_udp)), "ping-1").unwrap(),
        "A:ping-1"
    );
    let to = other.at(p_udp);
    assert_eq!(udp_ask(to, "ping-2").unwrap(), "A:ping-2");
    assert_eq!(other.run(|| udp_ask(to, "ping-3")).unwrap(), "A:ping-3");

    // The container-only port has nothing on the host: no socket, no rule.
    assert!(std::net::TcpStream::connect(("127.0.0.1", cport)).is_err());
    let rules = nft_table(&agent);
    assert!(
        rules.contains(&format!("udp dport {p_udp} dnat")),
        "{rules}"
    );
    assert!(!rules.contains(&format!("dport {cport} ")), "{rules}");

    // Another container reaches it by IP; it reaches the 0.0.0.0 port through
    // the gateway (DNAT, hairpin) and not the 127.0.0.1 one.
    let gw = gateway(&agent);
    let script = format!(
        "sleep 1; for round in 1 2 3; do for t in {ip}:{cport} {gw}:{p_any} {gw}:{p_local}; do \
         if {GET} ${{t%:*}} ${{t#*:}} | grep -q ports; then echo REACHED $t; \
         else echo UNREACHABLE $t; fi; done; done; echo DONE"
    );
    agent
        .apply_text("m.toml", &format!("{web}\n{}", client(&image, &script)))
        .ok();
    let lines = agent.wait_for(40, "the client's three rounds", |a| {
        let lines = log_lines(a, "client");
        lines.iter().any(|l| l == "DONE").then_some(lines)
    });
    let count = |what: &str| lines.iter().filter(|l| *l == what).count();
    assert_eq!(count(&format!("REACHED {ip}:{cport}")), 3, "{lines:?}");
    assert_eq!(count(&format!("REACHED {gw}:{p_any}")), 3, "{lines:?}");
    assert_eq!(
        count(&format!("UNREACHABLE {gw}:{p_local}")),
        3,
        "{lines:?}"
    );
    assert_eq!(agent.http("GET", "/v1/services/web/ready").status, 200);

    // A UDP flow (same client port throughout) follows the service to a new
    // replica: its conntrack entry to the old one is forgotten when the old
    // one leaves, or its datagrams would keep going to a removed address.
    let flow = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lo_udp = SocketAddr::from(([127, 0, 0, 1], p_udp));
    assert_eq!(udp_ask_on(&flow, lo_udp, "f1").unwrap(), "A:f1");
    let replaced = web.replace("[service.web]\n", "[service.web]\nenv = { V = \"2\" }\n");
    assert_ne!(replaced, web);
    agent
        .apply_text(
            "m.toml",
            &format!("{replaced}\n{}", client(&image, &script)),
        )
        .ok();
    let new_id = agent.wait_for(30, "a new web replica", |a| {
        running(a, "web")
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .find(|n| *n != id)
    });
    let _echo2 = UdpEcho::start(&netns(&new_id), 5353, "B");
    agent.wait_for(30, "the old replica gone", |a| {
        let ids: Vec<_> = running(a, "web").iter().map(|c| c["id"].clone()).collect();
        (ids == [serde_json::Value::from(new_id.clone())] && a.ready_of("web") == (1, 1))
            .then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let a = udp_ask_on(&flow, lo_udp, "f2");
        if a.as_deref() == Ok("B:f2") || Instant::now() > deadline {
            break a;
        }
    };
    assert_eq!(
        answer.as_deref(),
        Ok("B:f2"),
        "the flow stayed on the old replica"
    );
}

/// `apply --wait` of `text`.
fn apply_wait(agent: &Agent, text: &str) -> CtlOutput {
    agent.apply_wait("m.toml", text, "60s")
}

fn one_port(image: &str, host: u16) -> String {
    format!(
        r#"
[service.web]
image = "{image}"

[[service.web.ports]]
container = 8080
host = {host}

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2
"#
    )
}

#[test]
fn a_port_held_by_another_process_fails_the_rollout_and_names_the_holder() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let agent = Agent::start();
    // This test process holds the port.
    let held_by_test = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = held_by_test.local_addr().unwrap().port();
    let me = format!(
        "pid {} ({})",
        std::process::id(),
        std::fs::read_to_string("/proc/self/comm").unwrap().trim()
    );

    // A first deploy: the revision fails, the service is not ready.
    let out = apply_wait(&agent, &one_port(&v1, held));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "apply --wait succeeded: {text}");
    assert!(text.contains(&format!("0.0.0.0:{held}/tcp")), "{text}");
    assert!(text.contains(&me), "holder {me} not named: {text}");
    let ready = agent.http("GET", "/v1/services/web/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(running(&agent, "web").is_empty());

    // An update of a serving revision: it fails, the old one keeps serving.
    let p1 = free_port();
    let out = apply_wait(&agent, &one_port(&v1, p1));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(get(p1, "/index.html").unwrap().trim(), "v1");
    let out = apply_wait(&agent, &one_port(&v2, held));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "apply --wait succeeded: {text}");
    assert!(text.contains(&format!("0.0.0.0:{held}/tcp")), "{text}");
    assert!(text.contains(&me), "holder {me} not named: {text}");
    agent.wait_for(20, "the old revision serving and ready", |a| {
        (a.http("GET", "/v1/services/web/ready").status == 200).then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(get(p1, "/index.html").unwrap().trim(), "v1");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held_by_test);
}

#[test]
fn the_data_plane_outlives_the_agent_and_a_restart_rewrites_no_rule() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let mut agent = Agent::start();
    let port = free_port();
    let web = one_port(&image, port).replace("image =", "replicas = 2\nimage =");
    agent.apply_text("m.toml", &web).ok();
    agent.wait_for(30, "2 replicas behind the port", |a| {
        (a.ready_of("web") == (2, 2) && get(port, "/index.html").is_ok()).then_some(())
    });
    let ids: Vec<String> = running(&agent, "web")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    // Another container calls the published port through the gateway for 14 s.
    let gw = gateway(&agent);
    let script = format!(
        "end=$(( $(date +%s) + 14 )); while test $(date +%s) -lt $end; do \
         if {GET} {gw} {port} | grep -q v1; then echo OK; \
         else echo FAIL; fi; sleep 0.05; done; echo DONE"
    );
    agent
        .apply_text("m.toml", &format!("{web}\n{}", client(&image, &script)))
        .ok();
    agent.wait_for(30, "the client calling", |a| {
        (log_lines(a, "client").iter().filter(|l| *l == "OK").count() >= 5).then_some(())
    });
    let before = nft_table(&agent);
    assert!(
        before.contains(&format!("tcp dport {port} dnat")),
        "{before}"
    );

    // The host calls it too, sequentially, for 6 s; berthd is killed and
    // restarted in the middle.
    let started = Instant::now();
    let load = Load::start(port, 2, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9();
    std::thread::sleep(Duration::from_millis(200));
    agent.spawn();
    agent.wait_for(20, "re-adopted", |a| {
        (a.ready_of("web") == (2, 2)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()));
    let (ok, failed, _, errors) = load.finish();
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} failed requests across kill -9 + restart: {errors:?}"
    );

    // Nothing was flushed or re-created: same rules, same handles.
    let after = nft_table(&agent);
    assert_eq!(before, after, "the restart rewrote nft rules");
    let mut now: Vec<String> = running(&agent, "web")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    now.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(now, ids, "replicas were replaced");

    let lines = agent.wait_for(40, "the client done", |a| {
        let lines = log_lines(a, "client");
        lines.iter().any(|l| l == "DONE").then_some(lines)
    });
    let oks = lines.iter().filter(|l| *l == "OK").count();
    let fails = lines.iter().filter(|l| *l == "FAIL").count();
    assert!(oks > 20, "{lines:?}");
    assert_eq!(fails, 0, "container-to-container calls failed: {oks} ok");
}

#[test]
fn a_port_taken_while_the_agent_was_down_is_not_ready_until_it_is_free() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let mut agent = Agent::start();
    let port = free_port();
    let out = apply_wait(&agent, &one_port(&image, port));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(get(port, "/index.html").unwrap().trim(), "v1");

    // While berthd is down its socket on the port is gone; another process
    // takes the port. The restarted agent cannot publish it: not ready, and
    // the error names the port and the holder.
    agent.kill9();
    let taker = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    agent.spawn();
    let me = format!("held by pid {} (", std::process::id());
    let detail = agent.wait_for(20, "not ready while the port is taken", |a| {
        let r = a.http("GET", "/v1/services/web/ready");
        (r.status == 503).then(|| r.text())
    });
    assert!(
        detail.contains(&format!("0.0.0.0:{port}/tcp")) && detail.contains(&me),
        "{detail}"
    );
    let status = agent.ctl(&["status"]).ok().stdout;
    assert!(status.contains(&format!("0.0.0.0:{port}/tcp")), "{status}");
    // The port is the taker's: no DNAT rule steals its connections.
    assert!(!nft_table(&agent).contains(&format!("tcp dport {port} ")));

    // Freed: published again, ready again, served by the replica.
    drop(taker);
    agent.wait_for(20, "ready again", |a| {
        (a.http("GET", "/v1/services/web/ready").status == 200).then_some(())
    });
    assert_eq!(get(port, "/index.html").unwrap().trim(), "v1");
}
