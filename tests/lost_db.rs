//! End to end: a lost state database. With services running (a published
//! port, a named volume, user namespaces), berthd is killed, its database
//! deleted or overwritten with garbage, and started again: every container
//! is re-adopted without a restart (same id, pid, address, id map), the
//! revision history is intact, `status` and the event log say what was
//! rebuilt, and what starts afterwards (a scale-up, a new service) gets a
//! fresh address and a disjoint id range — with the registry gone, so the
//! image records came back from the content store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use berth_e2e::load::get;
use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

/// What a container looked like: pid, address, uid_map `(base, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    service: String,
    pid: i64,
    ip: String,
    map: (u64, u64),
}

/// Every running container, by id.
fn running(agent: &Agent) -> BTreeMap<String, Seen> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["state"] == "running")
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            let seen = Seen {
                service: c["service"].as_str().unwrap().to_string(),
                pid: c["pid"].as_i64().unwrap(),
                ip: c["ip"].as_str().unwrap_or("").to_string(),
                map: uid_map(agent, &id),
            };
            (id, seen)
        })
        .collect()
}

/// The host base and length of the container's uid_map (one line).
fn uid_map(agent: &Agent, id: &str) -> (u64, u64) {
    let r = agent.exec(id, &["/bin/busybox", "cat", "/proc/self/uid_map"]);
    assert_eq!(r.code, 0, "{r:?}");
    let w: Vec<u64> = r
        .output
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(w.len(), 3, "{}", r.output);
    (w[1], w[2])
}

fn disjoint(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0
}

fn manifest(image: &str, port: u16, web_replicas: u32, extra: bool) -> String {
    let mut text = format!(
        r#"
[service.web]
image = "{image}"
replicas = {web_replicas}

[[service.web.ports]]
container = 8080
host = {port}
host_ip = "127.0.0.1"

[service.db]
image = "{image}"
command = ["sh", "-c", "echo kept > /data/mark; exec sleep 3600"]

[[service.db.volumes]]
name = "dbdata"
target = "/data"

[service.worker]
image = "{image}"
command = ["sleep", "3600"]
"#
    );
    if extra {
        text.push_str(&format!(
            "\n[service.extra]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n"
        ));
    }
    text
}

/// The scenario: run three services, kill berthd, `damage` the database,
/// start again and check everything; `want_reason` starts the reason
/// `status` gives, `moved` says whether the old database was moved aside.
fn lost_database(case: &str, damage: fn(&Path), want_reason: &str, moved: bool) {
    let reg = TestRegistry::start().unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/www", 0o755)
                .file("/www/index.html", b"lost-db\n", 0o644),
        )
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
        .unwrap();
    let digest = reg.push("shop/web", "1", &img).unwrap();
    // Pinned, so nothing after the registry is gone needs to resolve a tag.
    let image = format!("{}@{digest}", reg.image("shop/web:1"));
    // User namespaces where this kernel and the state dir's filesystem
    // take them (as berthd decides), the host's otherwise.
    let mut agent = Agent::create(&[]);
    std::fs::create_dir_all(agent.state_dir()).unwrap();
    let support =
        berth_agent::daemon::userns_support(&bin_dir().join("berth-monitor"), &agent.state_dir());
    let userns = support.is_ok();
    if let Err(why) = support {
        eprintln!("no user namespaces here ({why}): running with --userns-fallback");
        agent.extra_args.push("--userns-fallback".into());
    }
    agent.spawn();
    let port = free_port();
    agent
        .apply_wait("m.toml", &manifest(&image, port, 1, false), "90s")
        .ok();
    let before = agent.wait_for(30, "three services running", |a| {
        let r = running(a);
        (r.len() == 3).then_some(r)
    });
    assert_eq!(get(port, "/index.html").unwrap().trim(), "lost-db");
    let history = agent.ctl(&["-o", "json", "history"]).ok().stdout;
    let ips: BTreeSet<&str> = before.values().map(|s| s.ip.as_str()).collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {before:?}");
    if userns {
        let maps: Vec<(u64, u64)> = before.values().map(|s| s.map).collect();
        for (i, a) in maps.iter().enumerate() {
            for b in &maps[i + 1..] {
                assert!(disjoint(*a, *b), "{before:?}");
            }
        }
    }

    // Lose the database while everything runs; no registry any more.
    agent.kill9();
    damage(&agent.state_dir().join("db"));
    drop(reg);
    agent.spawn();

    // Every container re-adopted: same id, pid, address and id map.
    let after = running(&agent);
    assert_eq!(after, before, "containers after the restart");
    let restarted = before
        .iter()
        .filter(|(id, s)| after.get(*id).map(|a| a.pid) != Some(s.pid))
        .count();
    let containers = agent.containers();
    assert!(
        containers.iter().all(|c| c["state"] == "running"),
        "{containers:?}"
    );
    assert_eq!(get(port, "/index.html").unwrap().trim(), "lost-db");
    assert_eq!(
        agent.ctl(&["-o", "json", "history"]).ok().stdout,
        history,
        "revision history"
    );
    let db = before.iter().find(|(_, s)| s.service == "db").unwrap().0;
    let r = agent.exec(db, &["/bin/busybox", "cat", "/data/mark"]);
    assert_eq!(r.output, "kept\n", "{r:?}");

    // status, the event log and the log say what was rebuilt.
    let status = agent.status_json();
    let rebuilt = &status["rebuilt"];
    let reason = rebuilt["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with(want_reason), "{rebuilt}");
    let counts = |k: &str| rebuilt[k].as_u64().unwrap_or(u64::MAX);
    let want_ranges = if userns { 3 } else { 0 };
    assert_eq!(
        [
            "revisions",
            "containers",
            "leases",
            "id_ranges",
            "images",
            "volumes"
        ]
        .map(counts),
        [1, 3, 3, want_ranges, 1, 1],
        "{rebuilt}"
    );
    assert_eq!(rebuilt["problems"], serde_json::json!([]), "{rebuilt}");
    match rebuilt["moved_aside"].as_str() {
        Some(p) if moved => assert!(Path::new(p).exists(), "{p}"),
        None if !moved => {}
        other => panic!("moved_aside {other:?}, expected moved = {moved}"),
    }
    let text = agent.ctl(&["status"]).ok().stdout;
    assert!(
        text.contains(&format!("({reason}): 1 revisions, 3 containers re-adopted, 3 leases, {want_ranges} id ranges, 1 images, 1 volumes")),
        "{text}"
    );
    let events = agent.api("GET", "/v1/events", &[], b"").json();
    let events = events.as_array().unwrap();
    let told: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "state-rebuilt")
        .collect();
    assert_eq!(told.len(), 1, "{events:?}");
    assert!(
        told[0]["message"]
            .as_str()
            .unwrap()
            .contains("3 containers re-adopted, 3 leases"),
        "{told:?}"
    );
    assert!(
        !events.iter().any(|e| e["kind"] == "container-started"),
        "nothing was started: {events:?}"
    );
    assert!(
        agent
            .log()
            .contains("state rebuilt from the kernel and the disk"),
        "log line"
    );
    let images = agent.ctl(&["-o", "json", "images"]).ok().stdout;
    assert!(images.contains(&digest.to_string()), "{images}");

    // What starts now collides with nothing: a second web replica and a new
    // service, started from the rebuilt image records (no registry).
    agent
        .apply_wait("m.toml", &manifest(&image, port, 2, true), "90s")
        .ok();
    let now = agent.wait_for(30, "five containers running", |a| {
        let r = running(a);
        (r.len() == 5).then_some(r)
    });
    for (id, s) in &before {
        assert_eq!(now.get(id), Some(s), "{id} untouched by the scale-up");
    }
    let fresh: Vec<(&String, &Seen)> = now
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .collect();
    assert_eq!(fresh.len(), 2, "{now:?}");
    let all_ips: BTreeSet<&str> = now.values().map(|s| s.ip.as_str()).collect();
    assert_eq!(all_ips.len(), 5, "every address distinct: {now:?}");
    if userns {
        let web_map = before.values().find(|s| s.service == "web").unwrap().map;
        for (id, s) in &fresh {
            match s.service.as_str() {
                "web" => assert_eq!(s.map, web_map, "{id}: web keeps its range"),
                "extra" => {
                    for old in before.values() {
                        assert!(disjoint(s.map, old.map), "extra {s:?} vs {old:?}");
                    }
                }
                other => panic!("unexpected new container of {other}"),
            }
        }
    }
    println!(
        "lost-db ({case}): {} containers re-adopted, {restarted} restarted, rebuilt ({reason}): {} revisions, {} leases, {} id ranges, {} images, {} volumes; then 2 new containers on fresh addresses{}",
        after.len(),
        counts("revisions"),
        counts("leases"),
        counts("id_ranges"),
        counts("images"),
        counts("volumes"),
        if userns { " and disjoint id ranges" } else { "" }
    );

    // A plain restart afterwards finds the database whole: nothing to report.
    agent.kill9();
    agent.spawn();
    assert_eq!(agent.status_json()["rebuilt"], serde_json::Value::Null);
    assert_eq!(running(&agent), now);
    agent.remove_all_containers();
}

#[test]
fn a_deleted_database_is_rebuilt_and_every_container_readopted() {
    berth_agent::require_root!();
    lost_database(
        "deleted",
        |db| std::fs::remove_dir_all(db).unwrap(),
        "database missing",
        false,
    );
}

#[test]
fn a_corrupted_database_is_moved_aside_rebuilt_and_every_container_readopted() {
    berth_agent::require_root!();
    lost_database("corrupted", garbage_over, "database unopenable", true);
}

/// Overwrites every file of the database with pseudo-random bytes of the
/// same size.
fn garbage_over(db: &Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut stack = vec![db.to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let len = std::fs::metadata(&p).unwrap().len().max(64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(&p, bytes).unwrap();
            files += 1;
        }
    }
    assert!(files > 0, "no database files under {}", db.display());
}
