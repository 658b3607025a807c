//! End to end: an etcd-gated fleet on one machine. A real `etcd` (Debian's
//! etcd-server) on loopback ports with its data in a temp dir; three agents as
//! three hosts (own state/run dirs, bridges, subnets, cgroup parents) follow
//! one local bare git repository: `c` in group `canary`, `d1` and `d2` in
//! `default`, `max_parallel = 1`, `bake = 3s`. Shown: a new image rolls the
//! canary first and the default hosts after the bake, never two hosts at once
//! (from the agents' slot events); an image that never becomes healthy fails
//! on the canary, halts the fleet, and the default hosts never start it;
//! `fleet resume` plus a fixed commit rolls on; with etcd stopped nothing new
//! starts, status says so, and the pending rollout proceeds once etcd is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::registry::{ImageBuilder, TestRegistry};
use berth_e2e::*;

/// A single-member etcd on loopback, killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

impl Etcd {
    fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
        };
        e.spawn();
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts etcd on the same data dir and ports; waits for /health.
    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
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
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (apt package etcd-server) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http_tcp(self.client, "GET", "/health", &[], b"") {
                if r.status == 200 && r.text().contains("true") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd not healthy in 20s");
            std::thread::sleep(Duration::from_millis(100));
        }
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
    format!(
        r#"[fleet]
max_parallel = 1
groups = ["canary", "default"]
bake = "3s"

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
    )
}

fn commit(work: &Path, image: &str, message: &str) -> String {
    std::fs::write(work.join("manifests/web.toml"), manifest(image)).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

fn host(name: &str, group: &str, repo: &str, etcd: &str) -> Agent {
    Agent::start_with(&[
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
    let t = time::OffsetDateTime::parse(
        e["time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() as f64 / 1e9
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
    let text = a.http("GET", "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in metrics"))
        .trim()
        .parse()
        .unwrap()
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
    commit(&work, &v1, "v1");
    let repo = format!("file://{}", bare.display());
    let c = host("c", "canary", &repo, &etcd.url());
    let d1 = host("d1", "default", &repo, &etcd.url());
    let d2 = host("d2", "default", &repo, &etcd.url());
    let all = [&c, &d1, &d2];
    for a in all {
        a.wait_for(60, "v1 on every host", |a| runs(a, &v1).then_some(()));
    }
    wait_slots_free(&c);
    let f = fleet_status(&c);
    assert_eq!(f["hosts"].as_array().unwrap().len(), 3, "{f}");

    // 1. A new image: canary first, the default hosts after the bake, one at a time.
    let v2_commit = commit(&work, &v2, "v2");
    for a in all {
        a.wait_for(60, "v2 on every host", |a| runs(a, &v2).then_some(()));
    }
    wait_slots_free(&c);
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
    for (i, x) in windows.iter().enumerate() {
        for y in &windows[i + 1..] {
            assert!(
                x.2 <= y.1 || y.2 <= x.1,
                "two hosts rolled at once: {x:?} {y:?}"
            );
        }
    }

    // 2. An image that never becomes healthy: the canary fails and rolls
    // back, the fleet is halted, the default hosts never start it.
    let bad_commit = commit(&work, &bad, "bad");
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
    commit(&work, &v3, "fixed");
    for a in all {
        a.wait_for(60, "v3 on every host", |a| runs(a, &v3).then_some(()));
    }
    for a in [&d1, &d2] {
        assert!(
            !sources(a).contains(&format!("git:{bad_commit}")),
            "a default host started the halted manifest"
        );
    }

    // 3. etcd stopped: what runs keeps running, nothing new starts, status
    // and metrics say so; etcd back: the pending rollout proceeds.
    etcd.stop();
    for a in all {
        a.wait_for(15, "etcd unreachable in status", |a| {
            (a.status_json()["fleet"]["reachable"] == false).then_some(())
        });
    }
    let v1_again = commit(&work, &v1, "back to v1");
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
fn apply_is_gated_by_a_pause_and_a_dead_host_leaves_the_fleet_after_its_lease() {
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
