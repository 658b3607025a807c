//! End to end: an etcd-gated fleet on one machine. A real `etcd` (Debian's
//! etcd-server) on loopback ports with its data in a temp dir; three agents as
//! three hosts (own state/run dirs, bridges, subnets, cgroup parents, each
//! publishing on its own loopback address with `--publish-ip`) follow one
//! local bare git repository: `c` in group `canary`, `d1` and `d2` in
//! `default`, `max_parallel = 1`, `bake = 3s`, a real HAProxy in front.
//! Shown: a new image rolls the canary first and the default hosts after the
//! bake, never two hosts at once (from the agents' slot events), with zero
//! failed requests through HAProxy under load; an image that never becomes
//! healthy fails on the canary, halts the fleet, and the default hosts never
//! start it; `fleet resume` plus a fixed commit rolls on; with `auto_revert`
//! a manifest that fails on d2 only (its port is taken there) is halted and
//! the hosts that completed it return to the previous digest; with etcd
//! stopped nothing new starts, status says so, and the pending rollout
//! proceeds once etcd is back. Also: a three-member etcd cluster losing its
//! leader never grants a slot twice (12 in-process hosts on the agent's own
//! etcd requests); TLS client certificates and etcd auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::haproxy::Haproxy;
use berth_e2e::load::{get, Load};
use berth_e2e::registry::{ImageBuilder, TestRegistry};
use berth_e2e::*;

/// One etcd member on loopback (Debian's etcd-server), its data in a temp
/// dir, killed on drop. Clients speak `scheme` on `client`; `/health` is
/// plain HTTP on `metrics` (also when the client port is TLS).
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    name: String,
    client: u16,
    peer: u16,
    metrics: u16,
    /// `--initial-cluster`.
    cluster: String,
    scheme: &'static str,
    /// Extra flags (TLS).
    extra: Vec<String>,
}

impl Etcd {
    /// A single-member etcd on plain HTTP, started and healthy.
    fn start() -> Etcd {
        let mut e = Etcd::new("t", "http", &[]);
        e.cluster = format!("t={}", e.peer_url());
        e.spawn();
        e
    }

    /// A member not started yet; `cluster` is filled in by the caller.
    fn new(name: &str, scheme: &'static str, extra: &[String]) -> Etcd {
        Etcd {
            child: None,
            dir: tempfile::Builder::new()
                .prefix("berth-etcd-")
                .tempdir()
                .unwrap(),
            name: name.to_string(),
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
            cluster: String::new(),
            scheme,
            extra: extra.to_vec(),
        }
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    /// Starts etcd on the same data dir and ports; waits for /health.
    fn spawn(&mut self) {
        self.launch();
        self.wait_healthy();
    }

    /// Starts etcd on the same data dir and ports without waiting (the
    /// members of a new cluster wait for each other).
    fn launch(&mut self) {
        let client = self.url();
        let peer = self.peer_url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics),
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", "berth-test"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (apt package etcd-server) must be installed");
        self.child = Some(child);
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http_tcp(self.metrics, "GET", "/health", &[], b"") {
                if r.status == 200 && r.text().contains("true") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd {} exited with {status}:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} not healthy in 20s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fleet's manifest with `image`: one health-checked replica, a short
/// probation, and the fleet policy of the test.
fn manifest(image: &str) -> String {
    manifest_on(image, &[], "")
}

/// [`manifest`] publishing container port 8080 on each host port of
/// `ports` (each host binds them on its `--publish-ip`), with `policy`
/// lines added to `[fleet]`.
fn manifest_on(image: &str, ports: &[u16], policy: &str) -> String {
    let mut text = format!(
        r#"[fleet]
max_parallel = 1
groups = ["canary", "default"]
bake = "3s"
{policy}

[service.web]
image = "{image}"
stop_timeout = "1s"
[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
retries = 2
[service.web.update]
probation = "1s"
drain = "200ms"
"#
    );
    for port in ports {
        text.push_str(&format!(
            "\n[[service.web.ports]]\ncontainer = 8080\nhost = {port}\n"
        ));
    }
    text
}

/// Commits and pushes `text` as the fleet's manifest; the commit id.
fn commit(work: &Path, text: &str, message: &str) -> String {
    std::fs::write(work.join("manifests/web.toml"), text).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// A fleet host following `repo`; its published ports bind `ip` (each host
/// of this machine its own loopback address, as each real host its own).
fn host(name: &str, group: &str, repo: &str, etcd: &str, ip: &str) -> Agent {
    Agent::start_with(&[
        "--publish-ip",
        ip,
        "--git",
        repo,
        "--git-path",
        "manifests",
        "--manifest-poll-interval",
        "200ms",
        "--fleet-etcd",
        etcd,
        "--fleet",
        "shop",
        "--fleet-group",
        group,
        "--fleet-host",
        name,
        "--fleet-interval",
        "200ms",
        "--fleet-lease-ttl",
        "4s",
    ])
}

/// Whether the agent's current revision runs `image`, complete and ready.
fn runs(a: &Agent, image: &str) -> bool {
    let s = a.status_json();
    s["revision"]["state"] == "complete"
        && s["services"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["image"] == image && x["replicas_ready"] == 1)
        })
}

fn events(a: &Agent, kind: &str) -> Vec<serde_json::Value> {
    let out = a.ctl(&["-o", "json", "events"]).ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// An event's time as Unix seconds.
fn at(e: &serde_json::Value) -> f64 {
    unix_seconds(e["time"].as_str().unwrap())
}

fn sources(a: &Agent) -> Vec<String> {
    let out = a.ctl(&["-o", "json", "history"]).ok();
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn fleet_status(a: &Agent) -> serde_json::Value {
    let out = a.ctl(&["-o", "json", "fleet", "status"]).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

fn metric(a: &Agent, name: &str) -> f64 {
    a.metric(name)
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

/// Waits until no host holds a slot (the last rollout passed probation).
fn wait_slots_free(a: &Agent) {
    a.wait_for(30, "every slot released", |a| {
        let f = fleet_status(a);
        f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["slot_held"] == false)
            .then_some(())
    });
}

/// The (acquired, released) times of each slot the agent took, in order.
fn slots(a: &Agent) -> Vec<(f64, f64)> {
    let acq = events(a, "fleet-slot-acquired");
    let rel = events(a, "fleet-slot-released");
    if acq.len() != rel.len() {
        let out = a.ctl(&["-o", "json", "events"]).ok();
        panic!(
            "every slot taken was released:\n{}\nfleet: {}",
            out.stdout,
            serde_json::to_string_pretty(&fleet_status(a)).unwrap()
        );
    }
    acq.iter().zip(&rel).map(|(x, y)| (at(x), at(y))).collect()
}

#[test]
fn an_etcd_gated_fleet_rolls_canary_first_halts_on_failure_and_waits_out_etcd() {
    berth_agent::require_root!();
    let started = Instant::now();
    let mut etcd = Etcd::start();
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let v3 = push_web_image(&reg, "shop/web:3", "v3");
    // Never healthy: nothing listens on 8080.
    let bad = {
        let img = ImageBuilder::busybox()
            .entrypoint(&["/bin/busybox"])
            .cmd(&["sleep", "3600"])
            .build()
            .unwrap();
        reg.push("shop/web", "bad", &img).unwrap();
        reg.image("shop/web:bad")
    };
    let dir = tempfile::tempdir().unwrap();
    let bare: PathBuf = dir.path().join("fleet.git");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("manifests")).unwrap();
    std::fs::create_dir(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    git(&work, &["init", "-q"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    // The published port: the same on every host, each host binding it on
    // its own address (c 127.0.0.2, d1 127.0.0.3, d2 127.0.0.4).
    let web = free_port();
    let ips = [("c", "127.0.0.2"), ("d1", "127.0.0.3"), ("d2", "127.0.0.4")];
    commit(&work, &manifest_on(&v1, &[web], ""), "v1");
    let repo = format!("file://{}", bare.display());
    let c = host("c", "canary", &repo, &etcd.url(), ips[0].1);
    let d1 = host("d1", "default", &repo, &etcd.url(), ips[1].1);
    let d2 = host("d2", "default", &repo, &etcd.url(), ips[2].1);
    let all = [&c, &d1, &d2];
    for a in all {
        a.wait_for(60, "v1 on every host", |a| runs(a, &v1).then_some(()));
    }
    wait_slots_free(&c);
    let f = fleet_status(&c);
    assert_eq!(f["hosts"].as_array().unwrap().len(), 3, "{f}");

    // HAProxy balances the published port over the three hosts, checking
    // each agent's readiness endpoint (docs/fleet.md).
    let frontend = free_port();
    let servers: Vec<(&str, std::net::SocketAddr, u16)> = ips
        .iter()
        .zip(all)
        .map(|((name, ip), a)| (*name, format!("{ip}:{web}").parse().unwrap(), a.http_port))
        .collect();
    let lb = Haproxy::start(frontend, &servers);
    for (name, _) in ips {
        lb.wait_state(name, "UP");
    }
    assert_eq!(get(frontend, "/index.html").unwrap().trim(), "v1");

    // 1. A new image under load through HAProxy: canary first, the default
    // hosts after the bake, one at a time, no failed request.
    let load = Load::start(frontend, 4, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    let rollout = Instant::now();
    let v2_commit = commit(&work, &manifest_on(&v2, &[web], ""), "v2");
    for a in all {
        a.wait_for(60, "v2 on every host", |a| runs(a, &v2).then_some(()));
    }
    wait_slots_free(&c);
    let rolled = rollout.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, bodies, errors) = load.finish();
    println!(
        "fleet rollout v1 -> v2 on 3 hosts behind HAProxy: {:.1}s, {ok} requests served, {failed} failed, bodies {bodies:?}",
        rolled.as_secs_f64()
    );
    assert_eq!(
        failed, 0,
        "{failed} requests failed through HAProxy during the fleet rollout: {errors:?}"
    );
    assert!(ok > 100, "too little load: {ok}");
    assert!(
        bodies.contains(&"v1".to_string()) && bodies.contains(&"v2".to_string()),
        "{bodies:?}"
    );
    for _ in 0..6 {
        assert_eq!(get(frontend, "/index.html").unwrap().trim(), "v2");
    }
    let canary_done = events(&c, "revision-complete").last().map(at).unwrap();
    let mut windows: Vec<(&str, f64, f64)> = Vec::new();
    for (name, a) in [("c", &c), ("d1", &d1), ("d2", &d2)] {
        assert!(
            sources(a).contains(&format!("git:{v2_commit}")),
            "{name} applied the v2 commit"
        );
        let (acq, rel) = *slots(a).last().unwrap();
        windows.push((name, acq, rel));
    }
    let canary_acq = windows[0].1;
    for (name, acq, _) in &windows[1..] {
        assert!(
            *acq > canary_acq,
            "{name} took its slot before the canary: {windows:?}"
        );
        assert!(
            *acq >= canary_done + 3.0 - 0.05,
            "{name} started {:.2}s after the canary completed, before the 3s bake: {windows:?}",
            acq - canary_done
        );
    }
    // Event times trail the etcd requests they report: a host says
    // "released" once its queue delete has returned (and the order key's
    // after it), while the next host may already have been granted the slot
    // and said so. A real double grant overlaps by a whole rollout (seconds:
    // probation alone is 1 s); 0.5 s covers the reporting lag of a loaded
    // machine. (`a_three_member_etcd_cluster_never_grants_a_slot_twice…`
    // checks grants exactly, in process.)
    const REPORT_LAG: f64 = 0.5;
    for (i, x) in windows.iter().enumerate() {
        for y in &windows[i + 1..] {
            let overlap = x.2.min(y.2) - x.1.max(y.1);
            assert!(
                overlap <= REPORT_LAG,
                "two hosts rolled at once for {overlap:.3}s: {x:?} {y:?}"
            );
        }
    }

    // 2. An image that never becomes healthy: the canary fails and rolls
    // back, the fleet is halted, the default hosts never start it.
    let bad_commit = commit(&work, &manifest_on(&bad, &[web], ""), "bad");
    c.wait_for(60, "the canary to halt the manifest", |a| {
        (!events(a, "fleet-halted").is_empty()).then_some(())
    });
    c.wait_for(30, "the canary back on v2", |a| runs(a, &v2).then_some(()));
    let f = fleet_status(&d1);
    let halted = f["halted"].as_array().unwrap();
    assert_eq!(halted.len(), 1, "{f}");
    assert_eq!(halted[0]["host"], "c", "{f}");
    for a in [&d1, &d2] {
        let s = a.wait_for(10, "the halt in status", |a| {
            let s = a.status_json();
            s["fleet"]["pending"]
                .as_str()
                .is_some_and(|p| p.contains("halted"))
                .then_some(s)
        });
        assert!(runs(a, &v2), "{s}");
    }
    std::thread::sleep(Duration::from_secs(2));
    for a in [&d1, &d2] {
        assert!(
            !sources(a).contains(&format!("git:{bad_commit}")),
            "a default host started the halted manifest"
        );
    }
    let text = d2.ctl(&["fleet", "status"]).ok().stdout;
    assert!(
        text.contains("HALTED MANIFEST") && text.contains("c  "),
        "{text}"
    );
    assert!(metric(&c, "berth_fleet_halts_total") >= 1.0);

    // `fleet resume` and a fixed commit: the fleet rolls on.
    d1.ctl(&["fleet", "resume"]).ok();
    assert!(fleet_status(&c)["halted"].as_array().unwrap().is_empty());
    commit(&work, &manifest_on(&v3, &[web], ""), "fixed");
    for a in all {
        a.wait_for(60, "v3 on every host", |a| runs(a, &v3).then_some(()));
    }
    for a in [&d1, &d2] {
        assert!(
            !sources(a).contains(&format!("git:{bad_commit}")),
            "a default host started the halted manifest"
        );
    }
    wait_slots_free(&c);

    // 3. auto_revert: a manifest that works on c (and d1) but fails on d2,
    // where its second port is already taken on d2's address. d2 fails it
    // and halts it; the hosts that had completed it go back to v3.
    let reverting = Instant::now();
    let digests = |a: &Agent| -> serde_json::Value {
        let f = fleet_status(a);
        let me = f["host"].clone();
        f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == me)
            .unwrap()["digests"]
            .clone()
    };
    let v3_digests: Vec<serde_json::Value> = all.iter().map(|a| digests(a)).collect();
    let taken = free_port();
    let _squatter = std::net::TcpListener::bind(("127.0.0.4", taken)).unwrap();
    let revert_commit = commit(
        &work,
        &manifest_on(&v2, &[web, taken], "auto_revert = true"),
        "v2 with a second port",
    );
    let f = c.wait_for(60, "d2 to halt the manifest", |a| {
        let f = fleet_status(a);
        (f["halted"].as_array().unwrap().len() == 1).then_some(f)
    });
    let halt = &f["halted"][0];
    assert_eq!(halt["host"], "d2", "{f}");
    let reason = halt["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("127.0.0.4:{taken}")),
        "the halt says why: {reason}"
    );
    let mut reverted = Vec::new();
    for (i, (name, a)) in [("c", &c), ("d1", &d1)].into_iter().enumerate() {
        if !sources(a).contains(&format!("git:{revert_commit}")) {
            assert_ne!(name, "c", "the canary rolled it out first");
            continue; // d2 took its slot first: d1 never started it.
        }
        let e = a.wait_for(30, "the completed host reverted", |a| {
            events(a, "fleet-reverted").pop()
        });
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("halted by d2") && message.contains(&format!("127.0.0.4:{taken}")),
            "{message}"
        );
        a.wait_for(30, "v3 again", |a| runs(a, &v3).then_some(()));
        assert_eq!(digests(a), v3_digests[i], "{name} is back on v3's digest");
        reverted.push(name);
    }
    d2.wait_for(30, "d2 rolled back to v3", |a| runs(a, &v3).then_some(()));
    assert_eq!(digests(&d2), v3_digests[2]);
    let text = d1.ctl(&["fleet", "status"]).ok().stdout;
    assert!(
        text.contains("HALTED MANIFEST") && text.contains(&format!("127.0.0.4:{taken}")),
        "{text}"
    );
    println!(
        "auto_revert: halted by d2 ({reason}); reverted to v3: {reverted:?}; {:.1}s",
        reverting.elapsed().as_secs_f64()
    );
    wait_slots_free(&c);

    // 4. etcd stopped: what runs keeps running, nothing new starts, status
    // and metrics say so; etcd back: the pending rollout proceeds.
    let seen = fleet_status(&c);
    assert_eq!(seen["reachable"], true, "{seen}");
    let read_at = seen["read_at"].as_str().unwrap().to_string();
    etcd.stop();
    for a in all {
        a.wait_for(15, "etcd unreachable in status", |a| {
            (a.status_json()["fleet"]["reachable"] == false).then_some(())
        });
    }
    let v1_again = commit(&work, &manifest_on(&v1, &[web], ""), "back to v1");
    std::thread::sleep(Duration::from_secs(3));
    for a in all {
        assert!(
            !sources(a).contains(&format!("git:{v1_again}")),
            "a rollout started without etcd"
        );
        assert!(runs(a, &v3));
        let ready = a.http("GET", "/v1/services/web/ready");
        assert_eq!(ready.status, 200, "still serving: {}", ready.text());
        assert_eq!(metric(a, "berth_fleet_etcd_up"), 0.0);
        assert!(!events(a, "fleet-unreachable").is_empty());
    }
    let s = c.status_json();
    assert!(
        s["fleet"]["pending"]
            .as_str()
            .is_some_and(|p| p.contains("etcd unreachable")),
        "{s}"
    );
    let text = c.ctl(&["status"]).ok().stdout;
    assert!(text.contains("etcd UNREACHABLE"), "{text}");
    // `fleet status` shows the last view and when it was read.
    let text = c.ctl(&["fleet", "status"]).ok().stdout;
    assert!(
        text.contains(&format!("showing the last view, read at {read_at}")),
        "{text}"
    );
    etcd.spawn();
    for a in all {
        a.wait_for(60, "v1 on every host after etcd returned", |a| {
            runs(a, &v1).then_some(())
        });
        assert_eq!(metric(a, "berth_fleet_etcd_up"), 1.0);
        assert!(!events(a, "fleet-reachable").is_empty());
    }
    wait_slots_free(&c);
    assert!(slots(&d1).len() >= 4 && slots(&d2).len() >= 4);
    println!(
        "etcd-gated fleet of 3 hosts: every step in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// An agent in the fleet without a manifest source (`berthctl apply` is gated).
fn api_host(name: &str, etcd: &str) -> Agent {
    Agent::start_with(&[
        "--fleet-etcd",
        etcd,
        "--fleet",
        "api",
        "--fleet-host",
        name,
        "--fleet-interval",
        "200ms",
        "--fleet-lease-ttl",
        "3s",
    ])
}

fn hosts(a: &Agent) -> Vec<String> {
    fleet_status(a)["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn apply_is_gated_by_a_pause_host_ids_are_claimed_and_a_dead_host_leaves_after_its_lease() {
    berth_agent::require_root!();
    let etcd = Etcd::start();
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let a = api_host("a", &etcd.url());
    let mut b = api_host("b", &etcd.url());
    a.wait_for(10, "both hosts in the fleet", |a| {
        (hosts(a) == ["a", "b"]).then_some(())
    });

    // Paused: `apply` is refused with the reason, nothing is recorded.
    let paused = a.ctl(&["fleet", "pause"]).ok();
    assert!(paused.stdout.contains("PAUSED"), "{}", paused.stdout);
    let out = a.apply_text("web.toml", &manifest(&v1));
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("not applied yet") && out.stderr.contains("paused"),
        "{}",
        out.stderr
    );
    assert!(a.status_json()["revision"].is_null());
    assert!(a.status_json()["fleet"]["pending"]
        .as_str()
        .is_some_and(|p| p.contains("paused")));
    let r = a.api("PUT", "/v1/manifest", &[], manifest(&v1).as_bytes());
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "fleet_wait", "{}", r.text());

    // Resumed: the same apply goes through the gate and rolls out.
    a.ctl(&["fleet", "resume"]).ok();
    a.apply_wait("web.toml", &manifest(&v1), "60s").ok();
    a.wait_for(30, "v1 complete", |a| runs(a, &v1).then_some(()));
    a.wait_for(30, "the slot released", |a| {
        (!events(a, "fleet-slot-released").is_empty()).then_some(())
    });
    assert_eq!(slots(&a).len(), 1);
    assert_eq!(metric(&a, "berth_fleet_slots_held"), 0.0);

    // max_parallel = 1. While a rolls v2, b's apply is refused and queued;
    // b never applies again. a's next apply (`--wait` asks again every
    // second) waits for a's own rollout, then behind b's entry, which is
    // given up once nobody asked for it for 5 s: it cannot block the fleet.
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let v3 = push_web_image(&reg, "shop/web:3", "v3");
    a.apply_text("web.toml", &manifest(&v2)).ok();
    let queued = b.apply_text("web.toml", &manifest(&v2));
    assert_ne!(queued.code, 0, "{}", queued.stdout);
    assert!(
        queued.stderr.contains("not applied yet")
            && queued
                .stderr
                .contains("hint: nothing applies it later by itself"),
        "{}",
        queued.stderr
    );
    let waited = a.apply_wait("web.toml", &manifest(&v3), "60s").ok();
    assert!(
        waited.stderr.contains("asking again until --timeout"),
        "{}",
        waited.stderr
    );
    assert!(runs(&a, &v3));
    let given_up = b.wait_for(10, "b's apply given up", |b| {
        events(b, "fleet-waiting").into_iter().find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("no longer waits")
        })
    });
    assert!(
        given_up["message"]
            .as_str()
            .unwrap()
            .contains("left the slot queue"),
        "{given_up}"
    );
    assert!(b.status_json()["fleet"]["pending"].is_null());
    assert!(!runs(&b, &v2), "b recorded a manifest nobody applied again");

    // A second agent with a's host id (its own state dir) is refused while
    // a lives, says why, and never shows up as a second row.
    let dup = api_host("a", &etcd.url());
    let refused = dup.wait_for(10, "the duplicate refused", |d| {
        d.status_json()["fleet"]["error"]
            .as_str()
            .filter(|e| e.contains("held by another agent"))
            .map(str::to_string)
    });
    assert!(refused.contains("--fleet-host"), "{refused}");
    // etcd answered: not an outage, in any view.
    assert_eq!(dup.status_json()["fleet"]["reachable"], true);
    assert_eq!(metric(&dup, "berth_fleet_etcd_up"), 1.0);
    assert!(events(&dup, "fleet-unreachable").is_empty());
    assert_eq!(events(&dup, "fleet-host-taken").len(), 1);
    let text = dup.ctl(&["status"]).ok().stdout;
    assert!(text.contains("NOT JOINED"), "{text}");
    let text = dup.ctl(&["fleet", "status"]).ok().stdout;
    assert!(
        text.contains("not in the fleet") && text.contains("held by another agent"),
        "{text}"
    );
    assert_eq!(hosts(&a), ["a", "b"]);
    assert!(a.status_json()["fleet"]["error"].is_null());
    drop(dup);

    // A host killed and restarted at once, on its own state, takes its
    // claim over without waiting for the old lease.
    b.kill9();
    b.spawn();
    b.wait_for(15, "b back in the fleet", |b| {
        let s = b.status_json();
        (s["fleet"]["reachable"] == true && s["fleet"]["error"].is_null()).then_some(())
    });
    let refused: Vec<_> = events(&b, "fleet-unreachable")
        .into_iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("held by another agent")
        })
        .collect();
    assert!(refused.is_empty(), "b was refused its own id: {refused:?}");

    // A host killed without leaving disappears once its lease expires (3s).
    b.kill9();
    assert!(
        hosts(&a).contains(&"b".to_string()),
        "b's record outlives it until the TTL"
    );
    let t = Instant::now();
    a.wait_for(15, "b's record gone", |a| (hosts(a) == ["a"]).then_some(()));
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "gone by its lease, not at once"
    );

    // An agent in no fleet says so.
    let lone = Agent::start();
    let out = lone.ctl(&["fleet", "status"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("in no fleet"), "{}", out.stderr);
}

/// Three etcd members on loopback (static `--initial-cluster`), healthy.
fn etcd_cluster() -> Vec<Etcd> {
    let mut members: Vec<Etcd> = (0..3)
        .map(|i| Etcd::new(&format!("m{i}"), "http", &[]))
        .collect();
    let cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for m in &mut members {
        m.cluster = cluster.clone();
        m.launch();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    members
}

/// The index of the member that is the cluster's leader now.
async fn leader(members: &[Etcd]) -> usize {
    for (i, m) in members.iter().enumerate() {
        let mut c = etcd_client::Client::connect([m.url()], None).await.unwrap();
        let s = c.status().await.unwrap();
        if s.header().map(|h| h.member_id()) == Some(s.leader()) {
            return i;
        }
    }
    panic!("no member says it leads");
}

/// What one contender saw.
#[derive(Debug, Default)]
struct Contended {
    grants: usize,
    /// etcd requests that failed (and were retried).
    errors: usize,
    first_error: Option<String>,
}

/// Counts of slot holders over all contenders.
#[derive(Debug, Default)]
struct Holders {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    grants: std::sync::atomic::AtomicUsize,
    /// Grants that made more than `max_parallel` holders at once.
    over: std::sync::atomic::AtomicUsize,
}

/// Retries an etcd request until it succeeds (a contender, like an agent,
/// tries again after a failed request), counting the failures.
macro_rules! retry {
    ($seen:expr, $call:expr) => {
        loop {
            match $call.await {
                Ok(v) => break v,
                Err(e) => {
                    $seen.errors += 1;
                    $seen.first_error.get_or_insert_with(|| e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
}

/// One in-process host: joins the queue of the fleet's counting semaphore
/// with the agent's own requests (`fleet::etcd::Conn`), waits until
/// `fleet::decide::slot` grants it, holds the slot `hold`, releases it;
/// `rounds` times. Its lease is renewed every second meanwhile.
async fn contend(
    config: berth_agent::fleet::FleetConfig,
    rounds: usize,
    hold: Duration,
    holders: std::sync::Arc<Holders>,
) -> Contended {
    use berth_agent::fleet::{decide, etcd::Conn};
    use std::sync::atomic::Ordering::SeqCst;
    let mut seen = Contended::default();
    let max = config.policy.max_parallel.unwrap();
    let mut conn = retry!(seen, Conn::open(&config));
    let mut renew = conn.clone();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = renew.keep_alive().await;
        }
    });
    for round in 0..rounds {
        let hash = format!("manifest-{round}");
        retry!(seen, conn.enqueue(&hash));
        loop {
            let snap = retry!(seen, conn.snapshot());
            if decide::slot(&snap.queue, &config.host, max).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = holders.now.fetch_add(1, SeqCst) + 1;
        holders.max.fetch_max(now, SeqCst);
        holders.grants.fetch_add(1, SeqCst);
        if now > max as usize {
            holders.over.fetch_add(1, SeqCst);
        }
        seen.grants += 1;
        tokio::time::sleep(hold).await;
        // Out of the critical section before the release is visible.
        holders.now.fetch_sub(1, SeqCst);
        retry!(seen, conn.dequeue());
    }
    keeper.abort();
    let _ = conn.revoke().await;
    seen
}

/// The fleet configuration of an in-process host of fleet `race`.
fn host_config(
    endpoints: &[String],
    host: &str,
    max_parallel: u32,
) -> berth_agent::fleet::FleetConfig {
    berth_agent::fleet::FleetConfig {
        endpoints: endpoints.to_vec(),
        name: "race".into(),
        group: "default".into(),
        host: host.into(),
        auth: None,
        tls: None,
        policy: berth_core::manifest::FleetPolicy {
            max_parallel: Some(max_parallel),
            ..Default::default()
        },
        interval: Duration::from_millis(500),
        lease_ttl: Duration::from_secs(5),
        instance: host.into(),
    }
}

#[test]
fn a_three_member_etcd_cluster_never_grants_a_slot_twice_while_its_leader_dies() {
    use std::sync::atomic::Ordering::SeqCst;
    const HOSTS: usize = 12;
    const ROUNDS: usize = 3;
    const MAX_PARALLEL: u32 = 2;
    let started = Instant::now();
    let mut members = etcd_cluster();
    let endpoints: Vec<String> = members.iter().map(Etcd::url).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let holders = std::sync::Arc::new(Holders::default());
    let tasks: Vec<_> = (0..HOSTS)
        .map(|i| {
            let config = host_config(&endpoints, &format!("h{i:02}"), MAX_PARALLEL);
            rt.spawn(contend(
                config,
                ROUNDS,
                Duration::from_millis(60),
                holders.clone(),
            ))
        })
        .collect();
    // A third of the grants in, the leader is killed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while holders.grants.load(SeqCst) < HOSTS * ROUNDS / 3 {
        assert!(Instant::now() < deadline, "too few grants before the kill");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A connection made while all three members ran, like an agent's.
    let mut observer = rt
        .block_on(berth_agent::fleet::etcd::Conn::open(&host_config(
            &endpoints, "observer", 1,
        )))
        .unwrap();
    let killed = rt.block_on(leader(&members));
    members[killed].stop();
    let at_kill = holders.grants.load(SeqCst);
    let killed_at = Instant::now();
    let results: Vec<Contended> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("a contender was not served within 60s")
                    .unwrap(),
            );
        }
        out
    });
    let after_kill = killed_at.elapsed();
    // Once the cluster settled, that connection's requests keep succeeding
    // although the client still spreads them over the dead member too.
    let failed_reads: Vec<String> = (0..40)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            rt.block_on(observer.snapshot())
                .err()
                .map(|e| e.to_string())
        })
        .collect();
    let grants: usize = results.iter().map(|r| r.grants).sum();
    let errors: usize = results.iter().map(|r| r.errors).sum();
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    println!(
        "etcd cluster: {HOSTS} hosts x {ROUNDS} rounds, max_parallel {MAX_PARALLEL}: {grants} grants \
         ({at_kill} before member m{killed}, the leader, was killed; the rest in {:.1}s after), \
         most holders at once {}, over the limit {}, failed etcd requests {errors} (first: {first_error:?}), \
         reads failed afterwards on a connection made before the kill {}/40, total {:.1}s",
        after_kill.as_secs_f64(),
        holders.max.load(SeqCst),
        holders.over.load(SeqCst),
        failed_reads.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        holders.over.load(SeqCst),
        0,
        "a slot was granted twice: more than {MAX_PARALLEL} holders at once"
    );
    assert_eq!(
        holders.max.load(SeqCst),
        MAX_PARALLEL as usize,
        "the hosts contended (both slots were in use at once)"
    );
    assert_eq!(grants, HOSTS * ROUNDS, "every host was served every round");
    assert!(
        failed_reads.len() <= 1,
        "an agent's connection keeps failing with one member of three down: {failed_reads:?}"
    );
    assert!(
        grants - at_kill >= HOSTS,
        "the remaining members kept serving: {} grants after the kill",
        grants - at_kill
    );
    // The two members left agree the queue is empty.
    let left: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, m)| m.url())
        .collect();
    let keys = rt.block_on(async {
        let mut c = etcd_client::Client::connect(left, None).await.unwrap();
        c.get(
            "/berth/fleet/race/queue/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .len()
    });
    assert_eq!(keys, 0, "every slot was released");
}

/// etcd with TLS client certificates and authentication: root, and a
/// `berth` user whose role may read and write `/berth/fleet/secure/` only.
fn secure_etcd(pki: &berth_e2e::pki::TestPki) -> Etcd {
    let extra: Vec<String> = [
        ("--cert-file", "server"),
        ("--key-file", "server-key"),
        ("--trusted-ca-file", "client-ca"),
    ]
    .iter()
    .flat_map(|(flag, name)| [flag.to_string(), pki.arg(name)])
    .chain(["--client-cert-auth".to_string()])
    .collect();
    let mut e = Etcd::new("s", "https", &extra);
    e.cluster = format!("s={}", e.peer_url());
    e.spawn();
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(pki.path("ca")).unwrap(),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(pki.path("client")).unwrap(),
            std::fs::read(pki.path("client-key")).unwrap(),
        ));
    let url = e.url();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = etcd_client::Client::connect(
                [url],
                Some(etcd_client::ConnectOptions::new().with_tls(tls)),
            )
            .await
            .unwrap();
            c.role_add("root").await.unwrap();
            c.user_add("root", "root-secret", None).await.unwrap();
            c.user_grant_role("root", "root").await.unwrap();
            c.role_add("berth").await.unwrap();
            c.role_grant_permission(
                "berth",
                etcd_client::Permission::read_write("/berth/fleet/secure/").with_prefix(),
            )
            .await
            .unwrap();
            c.user_add("berth", "fleet-secret", None).await.unwrap();
            c.user_grant_role("berth", "berth").await.unwrap();
            c.auth_enable().await.unwrap();
        });
    e
}

/// An agent joining fleet `secure` over TLS as etcd user `berth`.
fn secure_host(
    name: &str,
    etcd: &Etcd,
    pki: &berth_e2e::pki::TestPki,
    password: &str,
    client_cert: bool,
) -> Agent {
    let mut a = Agent::create(&[]);
    let pw = a.dir.path().join("etcd-password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let mut args = vec![
        "--fleet-etcd".to_string(),
        etcd.url(),
        "--fleet".into(),
        "secure".into(),
        "--fleet-host".into(),
        name.into(),
        "--fleet-interval".into(),
        "200ms".into(),
        "--fleet-etcd-ca".into(),
        pki.arg("ca"),
        "--fleet-etcd-user".into(),
        "berth".into(),
        "--fleet-etcd-password-file".into(),
        pw.display().to_string(),
    ];
    if client_cert {
        args.extend([
            "--fleet-etcd-cert".into(),
            pki.arg("client"),
            "--fleet-etcd-key".into(),
            pki.arg("client-key"),
        ]);
    }
    a.extra_args = args;
    a.spawn();
    a
}

#[test]
fn agents_join_an_etcd_with_client_certificates_and_auth_and_say_why_they_cannot() {
    berth_agent::require_root!();
    let started = Instant::now();
    let pki = berth_e2e::pki::TestPki::new();
    let etcd = secure_etcd(&pki);
    let good = secure_host("s1", &etcd, &pki, "fleet-secret", true);
    let wrong_password = secure_host("s2", &etcd, &pki, "not-the-password", true);
    let no_cert = secure_host("s3", &etcd, &pki, "fleet-secret", false);

    // The agent with the client certificate and the right password is in
    // the fleet (its record was written under the role's prefix).
    good.wait_for(15, "s1 in the fleet", |a| {
        (hosts(a) == ["s1"]).then_some(())
    });
    let f = fleet_status(&good);
    assert_eq!(f["reachable"], true, "{f}");
    assert_eq!(good.status_json()["fleet"]["reachable"], true);
    assert_eq!(metric(&good, "berth_fleet_etcd_up"), 1.0);

    // The others keep running and say why etcd refuses them, in status,
    // events and `fleet status`; neither appears in the fleet.
    for (a, name, why) in [
        (&wrong_password, "s2", "authentication failed"),
        (&no_cert, "s3", "without a client certificate"),
    ] {
        let s = a.wait_for(15, "etcd's refusal in status", |a| {
            let s = a.status_json();
            (s["fleet"]["reachable"] == false
                && s["fleet"]["error"]
                    .as_str()
                    .is_some_and(|e| e.to_lowercase().contains(why)))
            .then_some(s)
        });
        println!("{name}: status.fleet.error: {}", s["fleet"]["error"]);
        let unreachable = events(a, "fleet-unreachable");
        println!("{name}: events: {unreachable:?}");
        assert!(
            unreachable
                .iter()
                .any(|e| e["message"].as_str().unwrap().to_lowercase().contains(why)),
            "{name}: the fleet-unreachable event says why: {unreachable:?}"
        );
        let text = a.ctl(&["fleet", "status"]).ok().stdout;
        assert!(
            text.contains("etcd unreachable") && text.to_lowercase().contains(why),
            "{name}: {text}"
        );
        // Which etcd refused: the endpoints as configured.
        assert!(
            text.contains(&format!("etcd at {}", etcd.url())),
            "{name}: {text}"
        );
        assert_eq!(metric(a, "berth_fleet_etcd_up"), 0.0);
        assert_eq!(a.http("GET", "/readyz").status, 200, "{name} still runs");
    }
    assert_eq!(hosts(&good), ["s1"], "only the authenticated host joined");
    println!(
        "etcd with TLS client certificates and auth: 3 agents checked in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
