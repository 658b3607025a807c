//! End to end: faults a host meets, with real parts — the agent's state dir
//! on a small ext4 on a loop device that fills up (during a pull; under a
//! container that logs fast), and a registry that goes away in the middle of a
//! rollout (a TCP proxy the test controls stands between berthd and the real
//! registry). Each test prints one `figure` line with what it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use berth_core::image_ref::Digest;
use berth_e2e::disk::{incompressible, used_fraction, Filler, LoopFs};
use berth_e2e::load::{get, Load};
use berth_e2e::proxy::{OnTrigger, Proxy};
use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

const MIB: u64 = 1 << 20;

/// An agent whose state dir is a loop-mounted ext4 of `mib` MiB. Fields drop
/// in order: the agent (berthd killed, containers and their mounts removed)
/// before the filesystem is unmounted and its device detached.
struct DiskAgent {
    agent: Agent,
    /// Only held: unmounted when the test ends.
    _fs: LoopFs,
}

impl DiskAgent {
    fn start(mib: u64) -> DiskAgent {
        let mut agent = Agent::create(&["--disk-check-interval", "500ms"]);
        let fs = LoopFs::new(&agent.state_dir(), mib);
        agent.spawn();
        DiskAgent { agent, _fs: fs }
    }
}

impl std::ops::Deref for DiskAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

fn web(image: &str, port: u16, replicas: u32) -> String {
    format!(
        r#"
[service.web]
image = "{image}"
replicas = {replicas}

[[service.web.ports]]
container = 8080
host = {port}

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2
"#
    )
}

/// Pushes the busybox web image `repo:tag` saying `marker` and returns the
/// digest of its own (top) layer.
fn push_web(reg: &TestRegistry, repo: &str, tag: &str, marker: &str) -> Digest {
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/www", 0o755)
                .file("/www/index.html", format!("{marker}\n").as_bytes(), 0o644),
        )
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
        .unwrap();
    reg.push(repo, tag, &img).unwrap();
    img.layers.last().unwrap().digest.clone()
}

/// Pushes a busybox image with one more layer of `bytes` incompressible
/// bytes; returns that layer's digest.
fn push_big(reg: &TestRegistry, repo: &str, tag: &str, bytes: usize) -> Digest {
    let img = ImageBuilder::busybox()
        .layer(LayerBuilder::new(Compression::None).file("/big", &incompressible(bytes), 0o644))
        .build()
        .unwrap();
    reg.push(repo, tag, &img).unwrap();
    img.layers.last().unwrap().digest.clone()
}

fn running_web(agent: &Agent) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = agent
        .containers()
        .iter()
        .filter(|c| c["service"] == "web" && c["state"] == "running")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["pid"].as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn events(agent: &Agent, kind: &str) -> Vec<serde_json::Value> {
    agent
        .api("GET", "/v1/events", &[], b"")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn pull(agent: &Agent, image: &str) -> HttpReply {
    let body = serde_json::json!({ "image": image }).to_string();
    agent.api("POST", "/v1/images/pull", &[], body.as_bytes())
}

/// What the content store holds on disk: the files under `blobs/` (each
/// re-hashed: the name must be the digest of the content), the leftovers
/// in `ingest/`, and the snapshot dirs under `layers/`.
struct StoreOnDisk {
    blobs: Vec<String>,
    unverified: Vec<String>,
    ingest: Vec<String>,
    snapshots: Vec<String>,
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn store_on_disk(state: &Path) -> StoreOnDisk {
    let dir = state.join("blobs/sha256");
    let blobs = names(&dir);
    let unverified = blobs
        .iter()
        .filter(|hex| {
            let data = std::fs::read(dir.join(hex)).unwrap();
            Digest::sha256_of(&data).hex() != hex.as_str()
        })
        .cloned()
        .collect();
    StoreOnDisk {
        blobs,
        unverified,
        ingest: names(&state.join("ingest")),
        snapshots: names(&state.join("layers")),
    }
}

fn error_message(reply: &HttpReply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A pull that does not fit, then a pull whose disk fills while its layer
/// downloads: both fail naming the state filesystem, leave nothing
/// half-written, and touch no running container; the agent keeps working
/// and the same pull succeeds once there is room again.
#[test]
fn a_full_disk_fails_the_pull_cleanly_and_the_agent_works_once_space_is_freed() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let proxy = Proxy::start(reg.host());
    push_web(&reg, "berth/web", "1", "v1");
    let big_layer = push_big(&reg, "berth/big", "1", 24 * MIB as usize);
    let web_image = format!("{}/berth/web:1", proxy.host());
    let big_image = format!("{}/berth/big:1", proxy.host());

    let agent = DiskAgent::start(128);
    let state = agent.state_dir();
    let port = free_port();
    agent
        .apply_wait("m.toml", &web(&web_image, port, 1), "60s")
        .ok();
    assert_eq!(get(port, "/index.html").unwrap().trim(), "v1");
    let before = running_web(&agent);
    assert_eq!(before.len(), 1, "{before:?}");
    let snapshots_before = store_on_disk(&state).snapshots;

    // 1. An image larger than the free space: refused before any byte is
    //    fetched, 507, naming the state dir.
    let filler = Filler::new(&state, 12 * MIB);
    let t = Instant::now();
    let r = pull(&agent, &big_image);
    let refused_in = t.elapsed();
    let msg = error_message(&r);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(
        msg.contains(&state.display().to_string()) && msg.contains("no space left"),
        "the error names the state filesystem and says it is full: {msg}"
    );
    filler.remove();

    // 2. The disk fills while the layer downloads: the proxy holds the blob
    //    request until the filler took every free block.
    proxy.on(big_layer.hex(), OnTrigger::Hold);
    let puller = {
        let socket = agent.socket();
        let image = big_image.clone();
        std::thread::spawn(move || {
            let body = serde_json::json!({ "image": image }).to_string();
            http_unix(&socket, "POST", "/v1/images/pull", &[], body.as_bytes()).unwrap()
        })
    };
    proxy.wait_fired(30, "the big layer's GET");
    filler.top_up(0);
    let t = Instant::now();
    proxy.release();
    let r = puller.join().unwrap();
    let failed_in = t.elapsed();
    let msg = error_message(&r);
    assert_eq!(r.status, 507, "a full disk is 507: {}", r.text());
    assert!(
        msg.contains(&state.display().to_string()) && msg.contains("No space left on device"),
        "the error names the path on the full disk: {msg}"
    );

    // Nothing half-written: every blob verifies, no ingest file, no
    // partial snapshot, and the big layer is not in the store.
    let disk = store_on_disk(&state);
    assert!(
        disk.unverified.is_empty(),
        "unverified blobs: {:?}",
        disk.unverified
    );
    assert!(
        disk.ingest.is_empty(),
        "ingest leftovers: {:?}",
        disk.ingest
    );
    assert_eq!(disk.snapshots, snapshots_before, "snapshots changed");
    assert!(!disk.blobs.contains(&big_layer.hex().to_string()));

    // Running containers untouched, the agent answers, still full.
    assert_eq!(running_web(&agent), before, "the container was touched");
    assert_eq!(get(port, "/index.html").unwrap().trim(), "v1");
    assert_eq!(agent.http("GET", "/healthz").status, 200);
    assert_eq!(agent.ready_of("web"), (1, 1));
    // The failed pull's files are gone; the disk is full again for what
    // follows. A manifest applied now fails naming the disk, and keeps what
    // runs.
    filler.top_up(0);
    let r = agent.api(
        "PUT",
        "/v1/manifest",
        &[],
        web(&web_image, port, 2).as_bytes(),
    );
    let apply_msg = error_message(&r);
    assert_eq!(r.status, 507, "an apply on a full disk: {}", r.text());
    assert!(
        apply_msg.contains(&state.join("revisions").display().to_string())
            && apply_msg.contains("No space left on device"),
        "{apply_msg}"
    );
    assert_eq!(
        names(&state.join("revisions")),
        ["1.rev"],
        "a temp file is left"
    );
    let revisions = agent.api("GET", "/v1/revisions", &[], b"").json();
    assert_eq!(revisions.as_array().unwrap().len(), 1, "{revisions}");
    assert_eq!(running_web(&agent), before);

    // 3. Space back: the agent works, the same pull succeeds.
    filler.remove();
    let t = Instant::now();
    let r = pull(&agent, &big_image);
    assert_eq!(r.status, 200, "{}", r.text());
    let pulled_in = t.elapsed();
    let disk = store_on_disk(&state);
    assert!(disk.blobs.contains(&big_layer.hex().to_string()));
    assert!(disk.unverified.is_empty() && disk.ingest.is_empty());
    agent
        .apply_wait("m.toml", &web(&web_image, port, 2), "60s")
        .ok();
    assert_eq!(agent.ready_of("web"), (2, 2));
    assert!(
        running_web(&agent).contains(&before[0]),
        "the first replica kept running"
    );
    println!(
        "figure full-disk: too-large pull refused in {:.2} s; pull failed {:.2} s after the disk filled naming {}; \
         0 partial blobs, 0 ingest files, 0 partial snapshots; 0 container restarts; \
         apply while full refused (507: {apply_msg}); pull after freeing space {:.2} s",
        refused_in.as_secs_f64(),
        failed_in.as_secs_f64(),
        msg,
        pulled_in.as_secs_f64(),
    );
    drop(proxy);
}

/// Sum of the sizes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The time stamp of the last CRI record in a container's live log.
fn last_record_time(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .rev()
        .find(|l| !l.is_empty())
        .and_then(|l| l.split(' ').next())
        .map(str::to_string)
}

/// A container writing to stdout as fast as a shell loop can: its logs stay
/// within their two rotated files, it keeps running, and when the disk
/// fills the agent's disk check removes the unused image; once there is room
/// again the log goes on.
#[test]
fn a_container_logging_fast_stays_bounded_and_a_full_disk_triggers_image_gc() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    push_web(&reg, "berth/web", "1", "v1");
    let big_layer = push_big(&reg, "berth/big", "1", 24 * MIB as usize);
    let web_image = reg.image("berth/web:1");

    let agent = DiskAgent::start(128);
    let state = agent.state_dir();
    // An image nothing uses: what GC may take.
    let r = pull(&agent, &reg.image("berth/big:1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let line = "x".repeat(200);
    let manifest = format!(
        r#"
[service.chatty]
image = "{web_image}"
command = ["sh", "-c", "while :; do echo {line}; done"]
"#
    );
    let t = Instant::now();
    agent.apply_wait("m.toml", &manifest, "60s").ok();
    let chatty = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "chatty")
        .unwrap();
    let (id, pid) = (
        chatty["id"].as_str().unwrap().to_string(),
        chatty["pid"].as_i64().unwrap(),
    );
    let logs = state.join("containers").join(&id).join("logs");
    let live = logs.join("container.log");
    let bound = 2 * berth_agent::runtime::config::DEFAULT_LOG_MAX_BYTES + 64 * 1024;

    // It writes more than one file's worth: the log rotates, stays bounded.
    agent.wait_for(120, "the log to rotate", |_| {
        logs.join("container.log.1").exists().then_some(())
    });
    let rotated_in = t.elapsed();
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        peak = peak.max(dir_bytes(&logs));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(peak <= bound, "logs {peak} bytes > {bound}");
    // A rotation stages its empty file as `container.log.1.new` for a
    // moment; the live file itself never goes missing.
    let mut names = names(&logs);
    names.retain(|n| !n.ends_with(".new"));
    assert_eq!(names, ["container.log", "container.log.1"], "{names:?}");

    // The disk fills (another writer): the disk check runs GC, the unused
    // image goes, the workload's stays and keeps running.
    assert!(store_on_disk(&state)
        .blobs
        .contains(&big_layer.hex().to_string()));
    let filler = Filler::new(&state, 2 * MIB);
    let used = used_fraction(&state);
    assert!(used > 0.9, "{used}");
    let t = Instant::now();
    let gc = agent.wait_for(30, "automatic GC", |a| events(a, "gc").into_iter().next());
    let gc_in = t.elapsed();
    let msg = gc["message"].as_str().unwrap().to_string();
    let disk = store_on_disk(&state);
    assert!(
        !disk.blobs.contains(&big_layer.hex().to_string()),
        "the unused image's layer is still stored: {msg}"
    );
    let images = agent.api("GET", "/v1/images", &[], b"").json();
    let refs: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["reference"].as_str())
        .collect();
    assert!(!refs.iter().any(|r| r.contains("berth/big")), "{refs:?}");
    assert!(refs.iter().any(|r| r.contains("berth/web")), "{refs:?}");
    assert!(disk.unverified.is_empty() && disk.ingest.is_empty());

    // Full again (GC's room taken too): the workload runs on, the agent
    // answers, the logs stay bounded.
    filler.top_up(0);
    std::thread::sleep(Duration::from_secs(3));
    let c = agent
        .containers()
        .into_iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap();
    assert_eq!(c["state"], "running");
    assert_eq!(
        c["pid"].as_i64().unwrap(),
        pid,
        "the container was restarted"
    );
    assert_eq!(agent.http("GET", "/healthz").status, 200);
    let full_bytes = dir_bytes(&logs);
    assert!(full_bytes <= bound, "logs {full_bytes} bytes > {bound}");
    let stalled_at = last_record_time(&live);

    // Room again: the log goes on, the agent's state works (a pull).
    filler.remove();
    agent.wait_for(20, "new log records", |_| {
        (last_record_time(&live) > stalled_at).then_some(())
    });
    let r = pull(&agent, &reg.image("berth/big:1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agent.ready_of("chatty"), (1, 1));
    let c = agent
        .containers()
        .into_iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap();
    assert_eq!(c["pid"].as_i64().unwrap(), pid);
    println!(
        "figure full-disk-logs: log rotated {:.1} s after the apply, peak {:.1} MiB on disk (bound {:.1} MiB); \
         disk {:.0}% full -> GC in {:.1} s ({msg}); 0 container restarts; logging resumed once freed",
        rotated_in.as_secs_f64(),
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        used * 100.0,
        gc_in.as_secs_f64(),
    );
}

/// The registry goes away after the new image's manifest was fetched (its
/// layer GET is the cut): the rollout waits, reporting the pull error, the
/// old replicas serve every request, and the rollout completes by itself
/// once the registry is back.
#[test]
fn a_registry_outage_mid_rollout_keeps_the_old_replicas_serving_and_completes_after() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let proxy = Proxy::start(reg.host());
    push_web(&reg, "berth/web", "1", "v1");
    let v2_layer = push_web(&reg, "berth/web", "2", "v2");
    let agent = Agent::start();
    let port = free_port();
    let v1 = format!("{}/berth/web:1", proxy.host());
    let v2 = format!("{}/berth/web:2", proxy.host());
    agent.apply_wait("m.toml", &web(&v1, port, 2), "60s").ok();
    let old = running_web(&agent);
    assert_eq!(old.len(), 2);

    let load = Load::start(port, 2, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    proxy.on(v2_layer.hex(), OnTrigger::Cut);
    agent.apply_text("m.toml", &web(&v2, port, 2)).ok();
    let cut = proxy.wait_fired(30, "the v2 layer's GET");

    // While it is down: the pull error is reported and retried with backoff,
    // the old replicas stay.
    let (error, retries) = agent.wait_for(60, "two failed pulls reported", |a| {
        let failed = events(a, "pull-failed");
        let status = a.status_json();
        let err = status["services"][0]["last_error"]
            .as_str()
            .map(str::to_string);
        (failed.len() >= 2).then_some(())?;
        err.filter(|e| e.contains("retrying in"))
            .map(|e| (e, failed.len()))
    });
    assert!(error.contains("berth/web:2"), "names the image: {error}");
    assert_eq!(running_web(&agent), old, "old replicas replaced while down");
    assert!(
        proxy.refused() > 0,
        "no attempt reached the proxy while down"
    );
    let down_for = cut.elapsed();

    proxy.restore();
    let back = Instant::now();
    let mut pulled_after = None;
    agent.wait_for(60, "the rollout to v2", |a| {
        if pulled_after.is_none()
            && events(a, "image-pulled")
                .iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains("web:2"))
        {
            pulled_after = Some(back.elapsed());
        }
        let s = a.status_json();
        let svc = &s["services"][0];
        (s["revision"]["state"] == "complete"
            && svc["replicas_ready"] == 2
            && svc["replicas_updated"] == 2
            && get(port, "/index.html").ok()?.trim() == "v2")
            .then_some(())
    });
    let completed_after = back.elapsed();
    let pulled_after = pulled_after.unwrap_or(completed_after);
    let attempts = events(&agent, "pull-failed").len();
    let status = agent.status_json();
    assert!(status["services"][0]["last_error"].is_null(), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, bodies, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(bodies.contains(&"v1".to_string()) && bodies.contains(&"v2".to_string()));
    println!(
        "figure registry-outage: {} requests, {failed} failed; registry down {:.1} s, {attempts} pull attempts failed \
         ({retries} reported before it came back); image pulled {:.1} s and rollout completed {:.1} s after the registry came back",
        ok + failed,
        down_for.as_secs_f64(),
        pulled_after.as_secs_f64(),
        completed_after.as_secs_f64(),
    );
}
