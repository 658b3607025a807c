//! End to end: service discovery. berth-dns answers service names from the
//! records berthd publishes and forwards the rest (to a loopback upstream the
//! test runs); containers of a three-service stack reach each other by name;
//! names follow a rollout with zero failed lookups; `/etc/hosts` maps the
//! hostname to the container's address; lookups keep answering while berthd
//! is killed, stopped, restarted, and while berth-dns itself is replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::dns::{stop_server, Dns, DnsConfig, Outcome, Readiness, ReplicaView};
use berth_agent::network::Ipv4Net;
use berth_e2e::dns::{addresses, query_tcp, query_udp, FakeUpstream};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Stops the berth-dns of a directory when the test ends, also on panic.
struct StopDns(std::path::PathBuf);

impl Drop for StopDns {
    fn drop(&mut self) {
        stop_server(&self.0);
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The berth-dns binary on its own, supervised the way berthd does it, on a
/// loopback address of this test: answers, forwarding, access, reload,
/// finding it again, and a replacement under a query loop.
#[test]
fn berth_dns_answers_reloads_and_is_replaced_without_dropping_queries() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let listen = Ipv4Addr::new(127, 100 + (pid % 100) as u8, (pid >> 8) as u8, 1);
    let client = IpAddr::V4(Ipv4Addr::new(
        127,
        listen.octets()[1],
        listen.octets()[2],
        2,
    ));
    let server = SocketAddr::new(listen.into(), 53);
    let upstream = FakeUpstream::start(&[("outside.test", ip("192.0.2.10"))]);
    let cfg = DnsConfig {
        dir: dir.path().join("dns"),
        exe: bin_dir().join("berth-dns"),
        listen,
        subnet: Ipv4Net::new(
            Ipv4Addr::new(127, listen.octets()[1], listen.octets()[2], 0),
            24,
        )
        .unwrap(),
        upstreams: vec![upstream.addr],
    };
    let _stop = StopDns(cfg.dir.clone());
    let dns = Dns::new(cfg.clone());
    let ready = |id, addr: &str| ReplicaView {
        service: "app",
        id,
        ip: Some(ip(addr)),
        running: true,
        readiness: Readiness::Ready,
    };
    let v1 = [ready("app-1", "10.0.0.2"), ready("app-2", "10.0.0.3")];
    dns.publish(["app", "db"], &v1).unwrap();
    let Outcome::Started { pid: first } = dns.ensure_server().unwrap() else {
        panic!("expected a new berth-dns")
    };
    assert_eq!(dns.nameserver(), Some(listen));

    // Service names: every ready replica, rotated per query, TTL 2 s, authoritative.
    let a = query_udp(server, client, "app", RecordType::A).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(addresses(&a), [ip("10.0.0.2"), ip("10.0.0.3")]);
    assert!(a.answers.iter().all(|r| r.ttl == 2), "{a:?}");
    let b = query_udp(server, client, "app", RecordType::A).unwrap();
    assert_eq!(
        addresses(&b),
        [ip("10.0.0.3"), ip("10.0.0.2")],
        "round-robin"
    );
    let fq = query_udp(server, client, "app.berth.internal.", RecordType::A).unwrap();
    assert_eq!(addresses(&fq).len(), 2);
    let tcp = query_tcp(server, client, "app", RecordType::A).unwrap();
    assert_eq!(addresses(&tcp).len(), 2, "TCP too");
    let aaaa = query_udp(server, client, "app", RecordType::AAAA).unwrap();
    assert_eq!(
        (aaaa.metadata.response_code, aaaa.answers.len()),
        (ResponseCode::NoError, 0),
        "AAAA of a service: empty NOERROR"
    );
    let none = query_udp(server, client, "db", RecordType::A).unwrap();
    assert_eq!(
        none.metadata.response_code,
        ResponseCode::NXDomain,
        "db has no ready replica"
    );
    let unknown = query_udp(server, client, "nope.berth.internal", RecordType::A).unwrap();
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
    let container = query_udp(server, client, "app-2", RecordType::A).unwrap();
    assert_eq!(addresses(&container), [ip("10.0.0.3")]);

    // Everything else goes to the upstream; our names never do.
    let outside = query_udp(server, client, "outside.test", RecordType::A).unwrap();
    assert_eq!(addresses(&outside), [ip("192.0.2.10")]);
    let missing = query_udp(server, client, "missing.test", RecordType::A).unwrap();
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let asked = upstream.asked();
    assert!(asked.contains(&"outside.test".to_string()), "{asked:?}");
    assert!(
        !asked
            .iter()
            .any(|n| n.starts_with("app") || n.starts_with("db") || n.contains("berth.internal")),
        "service names leaked upstream: {asked:?}"
    );

    // Clients outside the subnet get nothing (not an open resolver).
    let outsider = query_udp(
        server,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "app",
        RecordType::A,
    );
    assert!(
        outsider.map(|m| addresses(&m).is_empty()).unwrap_or(true),
        "a client outside the subnet was answered"
    );

    // A change of the records is answered within a reload interval or two.
    dns.publish(["app", "db"], &[ready("app-3", "10.0.0.4")])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let m = query_udp(server, client, "app", RecordType::A).unwrap();
        if addresses(&m) == [ip("10.0.0.4")] {
            break;
        }
        assert!(Instant::now() < deadline, "records not reloaded: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // berthd restarted: the running server is found again, not replaced.
    let again = Dns::new(cfg.clone());
    assert_eq!(
        again.ensure_server().unwrap(),
        Outcome::Running { pid: first }
    );

    // Other arguments (here another upstream): replaced while a client keeps
    // asking; every query is answered.
    let upstream2 = FakeUpstream::start(&[("outside.test", ip("192.0.2.11"))]);
    let mut cfg2 = cfg.clone();
    cfg2.upstreams = vec![upstream2.addr];
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let asker = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        for _ in 0..5000 {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            // As a stub resolver does (resolv.conf `attempts:2`): a datagram
            // lost in the instant the old server closes is asked again.
            let ask = || query_udp(server, client, "app", RecordType::A);
            match ask().or_else(|_| ask()) {
                Ok(m) if addresses(&m) == [ip("10.0.0.4")] => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(300));
    let replaced = Dns::new(cfg2).ensure_server().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = asker.join().unwrap();
    let Outcome::Replaced { old, new } = replaced else {
        panic!("expected a replacement, got {replaced:?}")
    };
    assert_eq!(old, first);
    assert_ne!(new, first);
    assert!(failed.is_empty() && ok > 20, "ok {ok}, failed {failed:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::path::Path::new(&format!("/proc/{old}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the replaced berth-dns {old} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let outside = query_udp(server, client, "outside.test", RecordType::A).unwrap();
    assert_eq!(
        addresses(&outside),
        [ip("192.0.2.11")],
        "the new upstream serves"
    );

    assert!(stop_server(&cfg.dir));
    assert!(
        query_udp(server, client, "app", RecordType::A).is_err(),
        "stopped"
    );
}

/// One `busybox nslookup` of the probe loop, from its log.
#[derive(Debug)]
struct Lookup {
    n: u32,
    failed: bool,
    /// The server answered NXDOMAIN (the name has no ready replica).
    nxdomain: bool,
    addrs: Vec<String>,
}

/// The probe: `busybox nslookup NAME` every ~50 ms, at most 3000 times,
/// each result after a `== N` line.
fn probe_command(name: &str) -> String {
    format!(
        "command = ['sh', '-c', 'i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo \"== $i\"; \
         busybox nslookup {name} 2>&1 || echo LOOKUP-FAILED; sleep 0.05; done; sleep 3600']"
    )
}

/// The complete lookups in a probe log (the last one may still be written).
fn lookups(log: &str) -> Vec<Lookup> {
    let mut out = Vec::new();
    let blocks: Vec<&str> = log.split("== ").skip(1).collect();
    let complete = blocks.len().saturating_sub(1);
    for b in &blocks[..complete] {
        let (n, body) = b.split_once('\n').unwrap_or((b, ""));
        out.push(Lookup {
            n: n.trim().parse().unwrap_or(0),
            failed: body.contains("LOOKUP-FAILED"),
            nxdomain: body.contains("NXDOMAIN"),
            addrs: body
                .lines()
                .filter_map(|l| l.strip_prefix("Address: "))
                .map(|a| a.trim().to_string())
                .collect(),
        });
    }
    out
}

fn container_of<'a>(list: &'a [serde_json::Value], service: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|c| c["service"] == service && c["state"] == "running")
        .unwrap_or_else(|| panic!("no running {service} in {list:?}"))
}

fn s(v: &serde_json::Value) -> String {
    v.as_str().unwrap().to_string()
}

/// The bridge gateway (berth-dns) of a test agent.
fn gateway(agent: &Agent) -> String {
    agent.subnet().replace(".0/24", ".1")
}

fn stack(db: &str, app: &str, web: &str) -> String {
    format!(
        r#"
[service.db]
image = "{db}"

[service.app]
image = "{app}"

[service.app.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "300ms"
timeout = "500ms"
retries = 2

[service.app.update]
strategy = "start-first"
max_surge = 1
max_unavailable = 0
drain = "2s"

[service.web]
image = "{web}"

[service.probe]
image = "{web}"
{probe}
"#,
        probe = probe_command("app")
    )
}

#[test]
fn services_reach_each_other_by_name_and_names_follow_a_rollout() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let db = push_web_image(&reg, "shop/db:1", "db-data");
    let app1 = push_web_image(&reg, "shop/app:1", "app-v1");
    let app2 = push_web_image(&reg, "shop/app:2", "app-v2");
    let web = push_web_image(&reg, "shop/web:1", "web");
    let upstream = FakeUpstream::start(&[("outside.test", ip("192.0.2.10"))]);
    let agent = Agent::start_with(&["--dns-upstream", &upstream.addr.to_string()]);
    agent.apply_text("m.toml", &stack(&db, &app1, &web)).ok();
    agent.wait_for(60, "the stack ready", |a| {
        (["db", "app", "web", "probe"]
            .iter()
            .all(|svc| a.ready_of(svc) == (1, 1)))
        .then_some(())
    });
    let list = agent.containers();
    let (web_c, app_c, probe_c) = (
        container_of(&list, "web"),
        container_of(&list, "app"),
        container_of(&list, "probe"),
    );
    let (web_id, web_ip) = (s(&web_c["id"]), s(&web_c["ip"]));
    let (old_app, old_ip) = (s(&app_c["id"]), s(&app_c["ip"]));
    let probe_id = s(&probe_c["id"]);

    // web → app and app → db by service name (getaddrinfo in the container).
    let got = agent.exec(&web_id, &["wget", "-qO-", "http://app:8080/"]);
    assert_eq!((got.code, got.output.trim()), (0, "app-v1"), "{got:?}");
    let got = agent.exec(
        &old_app,
        &["wget", "-qO-", "http://db.berth.internal:8080/"],
    );
    assert_eq!((got.code, got.output.trim()), (0, "db-data"), "{got:?}");

    // The container's files: resolv.conf names berth-dns, /etc/hosts maps
    // the hostname to the container's own address.
    let resolv = agent.exec(&web_id, &["cat", "/etc/resolv.conf"]).output;
    assert!(
        resolv.contains(&format!("nameserver {}\n", gateway(&agent)))
            && resolv.contains("options ndots:0")
            && resolv.matches("nameserver").count() == 1,
        "{resolv}"
    );
    // Port 53 of the gateway is kept to the bridge (and the host itself).
    let input = std::process::Command::new("nft")
        .args([
            "list",
            "chain",
            "ip",
            &format!("berth_{}", agent.bridge()),
            "input",
        ])
        .output()
        .unwrap();
    let input = String::from_utf8_lossy(&input.stdout);
    assert!(
        input.contains(&format!("ip daddr {}", gateway(&agent)))
            && input.contains("th dport 53")
            && input.contains("drop"),
        "{input}"
    );
    let hosts = agent.exec(&web_id, &["cat", "/etc/hosts"]).output;
    assert!(
        hosts.contains(&format!("\n{web_ip}\t{web_id}\n")),
        "{hosts}"
    );
    assert!(
        !hosts.contains(&format!("127.0.0.1\tlocalhost {web_id}")),
        "{hosts}"
    );
    let own = agent.exec(&web_id, &["hostname", "-i"]);
    assert_eq!(own.output.trim(), web_ip, "{own:?}");

    // Another name goes to the upstream resolver; service names never do.
    let outside = agent.exec(&web_id, &["busybox", "nslookup", "outside.test"]);
    assert!(
        outside.output.contains("Address: 192.0.2.10"),
        "{outside:?}"
    );
    let asked = upstream.asked();
    assert!(asked.contains(&"outside.test".to_string()), "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|n| !["app", "db", "web", "probe"].contains(&n.as_str())
                && !n.contains("berth.internal")),
        "service names leaked upstream: {asked:?}"
    );

    // The probe has been answered with app's address all along.
    let before = agent.wait_for(20, "the probe's first lookups", |a| {
        let l = lookups(&a.stdout_of(&probe_id));
        (l.len() >= 5).then_some(l)
    });
    assert!(
        before.iter().any(|l| l.addrs == [old_ip.clone()]),
        "{before:?}"
    );

    // Roll app out; the probe keeps asking for `app` throughout.
    let started = lookups(&agent.stdout_of(&probe_id)).len();
    agent.apply_text("m.toml", &stack(&db, &app2, &web)).ok();
    let new_app = agent.wait_for(60, "app replaced", |a| {
        let list = a.containers();
        let apps: Vec<&serde_json::Value> = list.iter().filter(|c| c["service"] == "app").collect();
        (apps.len() == 1 && apps[0]["id"] != old_app.as_str() && a.ready_of("app") == (1, 1))
            .then(|| (s(&apps[0]["id"]), s(&apps[0]["ip"])))
    });
    let done = lookups(&agent.stdout_of(&probe_id)).len();
    agent.wait_for(20, "6 lookups after the rollout", |a| {
        (lookups(&a.stdout_of(&probe_id)).len() >= done + 6).then_some(())
    });
    let (new_id, new_ip) = new_app;
    assert_ne!(new_ip, old_ip);
    let all = lookups(&agent.stdout_of(&probe_id));
    // (Before app's first replica was ready, `app` did not resolve: NXDOMAIN.)
    let first_ok = all.iter().position(|l| !l.failed).unwrap();
    assert!(all[..first_ok].iter().all(|l| l.nxdomain), "{all:?}");
    let failed: Vec<&Lookup> = all[first_ok..].iter().filter(|l| l.failed).collect();
    assert!(failed.is_empty(), "failed lookups: {failed:?}");
    assert!(
        done - started >= 10,
        "the probe ran {} lookups during the rollout",
        done - started
    );
    assert!(
        all[first_ok..].iter().all(|l| !l.addrs.is_empty()),
        "{all:?}"
    );
    // Once the old replica is gone, only the new address is answered.
    let after: Vec<&Lookup> = all[done..].iter().collect();
    assert!(after.len() >= 5, "{after:?}");
    assert!(
        after.iter().all(|l| l.addrs == [new_ip.clone()]),
        "old address {old_ip} still answered after the rollout: {after:?}"
    );
    assert!(all[started..done].iter().any(|l| l.addrs.contains(&new_ip)));
    assert!(
        all.windows(2).all(|w| w[1].n == w[0].n + 1),
        "no gap in the probe log"
    );
    let got = agent.exec(&web_id, &["wget", "-qO-", "http://app:8080/"]);
    assert_eq!((got.code, got.output.trim()), (0, "app-v2"), "{got:?}");
    let got = agent.exec(&new_id, &["busybox", "nslookup", "db"]);
    assert!(got.output.contains("Address: 10."), "{got:?}");
}

fn berth_dns_pid(agent: &Agent) -> i64 {
    let text = std::fs::read_to_string(agent.dns_dir().join("berth-dns.pid")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["pid"]
        .as_i64()
        .unwrap()
}

#[test]
fn lookups_keep_answering_while_berthd_is_killed_stopped_restarted_and_berth_dns_replaced() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let db = push_web_image(&reg, "shop/db:1", "db-data");
    let upstream = FakeUpstream::start(&[]);
    let upstream2 = FakeUpstream::start(&[]);
    let mut agent = Agent::start_with(&["--dns-upstream", &upstream.addr.to_string()]);
    // A slow health check: after each restart the replicas' first verdict
    // takes a while, and they must stay answered meanwhile.
    let manifest = format!(
        r#"
[service.db]
image = "{db}"
replicas = 2

[service.db.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "2s"
timeout = "500ms"
retries = 2

[service.probe]
image = "{db}"
{probe}
"#,
        probe = probe_command("db")
    );
    agent.apply_text("m.toml", &manifest).ok();
    agent.wait_for(60, "db and probe ready", |a| {
        (a.ready_of("db") == (2, 2) && a.ready_of("probe") == (1, 1)).then_some(())
    });
    let list = agent.containers();
    let probe_id = s(&container_of(&list, "probe")["id"]);
    let mut db_ips: Vec<String> = list
        .iter()
        .filter(|c| c["service"] == "db")
        .map(|c| s(&c["ip"]))
        .collect();
    db_ips.sort();
    let both = |l: &Lookup| {
        let mut a = l.addrs.clone();
        a.sort();
        a == db_ips
    };
    agent.wait_for(20, "the probe answered with both replicas", |a| {
        lookups(&a.stdout_of(&probe_id))
            .iter()
            .any(both)
            .then_some(())
    });
    let first = berth_dns_pid(&agent);
    let count = |agent: &Agent| lookups(&agent.stdout_of(&probe_id)).len();

    // kill -9: no berthd at all for 3 s.
    agent.kill9();
    let mark = count(&agent);
    std::thread::sleep(Duration::from_secs(3));
    // A lookup takes a fork and about 0.1 s: 3 s without an answer would
    // leave it far below this (a loaded machine runs fewer than 30).
    assert!(
        count(&agent) >= mark + 3,
        "the probe stalled without berthd"
    );
    let direct = agent.exec(&probe_id, &["busybox", "nslookup", "db"]);
    assert_eq!(
        direct.output.matches("Address: 10.").count(),
        2,
        "{direct:?}"
    );

    // Restarted: the same berth-dns is found again, health verdicts start over.
    agent.spawn();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(berth_dns_pid(&agent), first, "berth-dns was restarted");

    // Stopped as systemd would (SIGTERM to berthd only), then started again.
    assert!(agent.terminate().success());
    std::thread::sleep(Duration::from_secs(2));
    agent.spawn();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(berth_dns_pid(&agent), first);

    // Another upstream: berth-dns is replaced, queries keep being answered.
    agent.kill9();
    agent.extra_args = vec!["--dns-upstream".into(), upstream2.addr.to_string()];
    agent.spawn();
    let second = agent.wait_for(10, "berth-dns replaced", |a| {
        let p = berth_dns_pid(a);
        (p != first).then_some(p)
    });
    agent.wait_for(5, "the old berth-dns gone", |_| {
        (!std::path::Path::new(&format!("/proc/{first}")).exists()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(berth_dns_pid(&agent), second);

    let all = lookups(&agent.stdout_of(&probe_id));
    // From the first answer with both replicas (before, they were starting).
    let from = all.iter().position(both).unwrap();
    let all = &all[from..];
    let bad: Vec<&Lookup> = all.iter().filter(|l| l.failed || !both(l)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} lookups failed or missed a replica: {bad:?}",
        bad.len(),
        all.len()
    );
    assert!(all.len() >= 40, "only {} lookups", all.len());
    assert!(
        upstream.asked().is_empty() && upstream2.asked().is_empty(),
        "service names leaked upstream"
    );
}
