//! Chaos end to end (issue 15, "Random kills"): rounds of a user's change
//! (new image digest, scale up/down, env change, removal of a service, a
//! pull, an image GC), a random wait, `kill -9` of berthd and a restart,
//! with a real registry, the real binaries and the real kernel. After each
//! round: converged within a bound, never more running replicas than
//! `replicas + max_surge`, no acknowledged revision lost. At the end nothing
//! is left behind. A second test `kill -9`s a container's monitor.
//!
//! `BERTH_CHAOS_SEED` and `BERTH_CHAOS_ROUNDS` override the seed (printed)
//! and the number of rounds (50).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::labels::LABEL_SERVICE;
use berth_agent::runtime::{ContainerState, Runtime, RuntimePaths};
use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

/// How long the agent may take to converge after a restart.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);
/// The longest random wait between a change and the kill.
const MAX_WAIT_MS: u64 = 2000;
/// Incompressible padding in every pushed image, so pulls take long enough
/// for a kill to land in the middle of one.
const PAD_BYTES: usize = 3 << 20;
/// How often the sampler counts running containers.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What the manifest asks for; each round changes one thing.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    web_replicas: u32,
    worker_replicas: u32,
    /// `GEN` in the worker's env.
    worker_env: u32,
    /// The `extra` service is in the manifest.
    extra: bool,
}

impl Shape {
    fn services(&self) -> BTreeMap<&'static str, u32> {
        let mut m = BTreeMap::from([("web", self.web_replicas), ("worker", self.worker_replicas)]);
        if self.extra {
            m.insert("extra", 1);
        }
        m
    }
}

/// The services' `max_surge` (web is start-first with surge 1; worker and
/// extra are stop-first: never more than `replicas`).
fn surge(service: &str) -> u32 {
    if service == "web" {
        1
    } else {
        0
    }
}

fn manifest(reg: &TestRegistry, port: u16, s: &Shape) -> String {
    let web = reg.image("chaos/web:live");
    let worker = reg.image("chaos/worker:1");
    let mut text = format!(
        r#"
[service.web]
image = "{web}"
replicas = {wr}
init = true
stop_timeout = "2s"

[[service.web.ports]]
container = 8080
host = {port}
host_ip = "127.0.0.1"

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2

[service.web.update]
drain = "100ms"
max_surge = 1

[service.worker]
image = "{worker}"
replicas = {kr}
init = true
stop_timeout = "2s"
env = {{ GEN = "{gen}" }}

[service.worker.update]
strategy = "stop-first"
max_unavailable = 1
drain = "100ms"
"#,
        wr = s.web_replicas,
        kr = s.worker_replicas,
        gen = s.worker_env,
    );
    if s.extra {
        text.push_str(&format!(
            r#"
[service.extra]
image = "{worker}"
init = true
stop_timeout = "2s"

[service.extra.update]
strategy = "stop-first"
max_unavailable = 1
drain = "100ms"
"#
        ));
    }
    text
}

/// Incompressible bytes from the test's RNG.
fn pad(rng: &mut fastrand::Rng) -> Vec<u8> {
    (0..PAD_BYTES).map(|_| rng.u8(..)).collect()
}

/// Pushes a busybox httpd image serving `marker` (plus padding) as `repo:tag`.
fn push_web(reg: &TestRegistry, repo_tag: &str, marker: &str, rng: &mut fastrand::Rng) {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/www", 0o755)
                .file("/www/index.html", format!("{marker}\n").as_bytes(), 0o644)
                .file("/pad", &pad(rng), 0o644),
        )
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
        .unwrap();
    reg.push(repo, tag, &img).unwrap();
}

fn push_worker(reg: &TestRegistry) {
    let img = ImageBuilder::busybox()
        .entrypoint(&["/bin/busybox"])
        .cmd(&["sleep", "3600"])
        .build()
        .unwrap();
    reg.push("chaos/worker", "1", &img).unwrap();
}

/// The runtime on the agent's dirs, read straight from disk (works while
/// berthd is down).
fn runtime_of(agent: &Agent) -> Runtime {
    Runtime::new(RuntimePaths::new(
        agent.state_dir(),
        agent.run_dir(),
        &agent.cgroup_parent(),
        bin_dir().join("berth-monitor"),
    ))
}

/// Counts running containers per service every [`SAMPLE_EVERY`] from the
/// runtime's own state (`state.json` + /proc), keeping the maximum since the
/// last [`Sampler::take`], and every container id it ever saw.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<BTreeMap<String, usize>>>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether `pid` is a live process now (not gone, not a zombie).
fn still_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

impl Sampler {
    fn start(rt: Runtime) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(BTreeMap::new()));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, m, n, k) = (stop.clone(), max.clone(), seen.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(list) = rt.list() {
                    // A list reads one container after another: an old
                    // replica read before it stopped and its replacement
                    // read after it started were never running together.
                    // Only those still running once the list is done were
                    // all running at one instant.
                    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                    for c in &list {
                        n.lock().unwrap().insert(c.id.clone());
                        if let (ContainerState::Running { pid, .. }, Some(svc)) =
                            (&c.state, c.labels.get(LABEL_SERVICE))
                        {
                            if still_running(*pid) {
                                *counts.entry(svc.clone()).or_default() += 1;
                            }
                        }
                    }
                    let mut max = m.lock().unwrap();
                    for (svc, c) in counts {
                        let e: &mut usize = max.entry(svc).or_default();
                        *e = (*e).max(c);
                    }
                    k.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler {
            stop,
            max,
            seen,
            samples,
            thread: Some(thread),
        }
    }

    /// The maximum running count per service since the last call.
    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.max.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    NewDigest,
    ScaleWeb,
    ScaleWorker,
    Env,
    ToggleExtra,
    Pull,
    Gc,
}

const CHANGES: [Change; 7] = [
    Change::NewDigest,
    Change::ScaleWeb,
    Change::ScaleWorker,
    Change::Env,
    Change::ToggleExtra,
    Change::Pull,
    Change::Gc,
];

/// What later rounds pick from: rollouts (a new digest, an env change)
/// more often, as they are where a kill hurts most.
const WEIGHTED: [Change; 10] = [
    Change::NewDigest,
    Change::NewDigest,
    Change::NewDigest,
    Change::Env,
    Change::Env,
    Change::ScaleWeb,
    Change::ScaleWorker,
    Change::ToggleExtra,
    Change::Pull,
    Change::Gc,
];

/// The longest wait before the kill for a change: 0–2 s, shorter for the
/// quick pull and GC (here, on loopback) so kills land in the middle of them.
fn max_wait_ms(change: Change) -> u64 {
    match change {
        Change::Pull => 250,
        Change::Gc => 100,
        _ => MAX_WAIT_MS,
    }
}

/// An acknowledged apply: the revision it returned and its digests.
#[derive(Debug, Clone)]
struct Acked {
    number: u64,
    web_digest: String,
}

fn revisions(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.ctl(&["-o", "json", "history"]).ok();
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// `apply --prune -f` of `text`; the revision number it acknowledged.
fn apply(agent: &Agent, text: &str) -> u64 {
    let path = agent.dir.path().join("chaos.toml");
    std::fs::write(&path, text).unwrap();
    let out = agent
        .ctl(&[
            "-o",
            "json",
            "apply",
            "--prune",
            "-f",
            path.to_str().unwrap(),
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("apply -o json ({e}): {}", out.stdout));
    v["revision"].as_u64().expect("a revision number")
}

/// Running container ids per service, from the API.
fn running_ids(agent: &Agent) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in agent.containers() {
        if c["state"] == "running" {
            m.entry(c["service"].as_str().unwrap().to_string())
                .or_default()
                .insert(c["id"].as_str().unwrap().to_string());
        }
    }
    m
}

/// Converged on `shape` and revision `number`: the revision is complete,
/// every service has exactly its replicas, all running and ready (web
/// healthy), and nothing else runs.
fn converged(agent: &Agent, shape: &Shape, number: u64) -> bool {
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    let Some(last) = revs.as_array().and_then(|a| a.last()) else {
        return false;
    };
    if last["number"] != number || last["state"] != "complete" {
        return false;
    }
    let containers = agent.containers();
    let want = shape.services();
    for (svc, n) in &want {
        let of: Vec<_> = containers.iter().filter(|c| c["service"] == *svc).collect();
        if of.len() != *n as usize || of.iter().any(|c| c["state"] != "running") {
            return false;
        }
        if *svc == "web" && of.iter().any(|c| c["health"] != "healthy") {
            return false;
        }
        if agent.ready_of(svc) != (u64::from(*n), u64::from(*n)) {
            return false;
        }
    }
    containers
        .iter()
        .all(|c| want.contains_key(c["service"].as_str().unwrap_or("")))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn random_kills_of_berthd_converge_without_surge_loss_or_orphans() {
    berth_agent::require_root!();
    let seed: u64 = std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let rounds: usize = std::env::var("BERTH_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    eprintln!("chaos: seed {seed} (BERTH_CHAOS_SEED={seed} repeats this run), {rounds} rounds");
    let mut rng = fastrand::Rng::with_seed(seed);
    let test_started = Instant::now();

    let reg = TestRegistry::start().unwrap();
    let mut generation = 1u32;
    push_web(&reg, "chaos/web:live", "gen 1", &mut rng);
    push_worker(&reg);
    let port = free_port();
    let mut agent = Agent::start();
    let sampler = Sampler::start(runtime_of(&agent));

    let mut shape = Shape {
        web_replicas: 2,
        worker_replicas: 1,
        worker_env: 1,
        extra: true,
    };
    let first = apply(&agent, &manifest(&reg, port, &shape));
    let mut acked = vec![Acked {
        number: first,
        web_digest: String::new(),
    }];
    agent.wait_for(60, "the first revision converged", |a| {
        converged(a, &shape, first).then_some(())
    });
    acked[0].web_digest = revisions(&agent)[0]["digests"]["web"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = sampler.take();

    let mut times = Vec::new();
    let mut kills = 0usize;
    let mut unexpected_replacements = 0usize;
    // Per service: (most running at once, allowed then) of the closest round.
    let mut max_seen_over_allowed: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut pulls = 0u32;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut landings: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..rounds {
        // Each kind once, then at random with rollouts weighted up.
        let change = match CHANGES.get(round) {
            Some(c) => *c,
            None => WEIGHTED[rng.usize(..WEIGHTED.len())],
        };
        *counts.entry(format!("{change:?}")).or_default() += 1;
        let before = running_ids(&agent);
        let prev = shape.clone();
        let mut background: Option<std::thread::JoinHandle<CtlOutput>> = None;
        match change {
            Change::NewDigest => {
                generation += 1;
                push_web(
                    &reg,
                    "chaos/web:live",
                    &format!("gen {generation}"),
                    &mut rng,
                );
            }
            Change::ScaleWeb => {
                shape.web_replicas = if shape.web_replicas == 1 {
                    rng.u32(2..=3)
                } else if shape.web_replicas == 3 {
                    rng.u32(1..=2)
                } else {
                    [1, 3][rng.usize(..2)]
                }
            }
            Change::ScaleWorker => shape.worker_replicas = 3 - shape.worker_replicas,
            Change::Env => shape.worker_env += 1,
            Change::ToggleExtra => shape.extra = !shape.extra,
            Change::Pull => {
                pulls += 1;
                let tag = format!("chaos/pulled:{pulls}");
                push_web(&reg, &tag, "pulled", &mut rng);
                let (flag, image) = (agent.agent_flag(), reg.image(&tag));
                background = Some(std::thread::spawn(move || {
                    ctl(&["--agent".into(), flag, "pull".into(), image])
                }));
            }
            Change::Gc => {
                let flag = agent.agent_flag();
                background = Some(std::thread::spawn(move || {
                    ctl(&["--agent".into(), flag, "gc".into()])
                }));
            }
        }
        let applies = !matches!(change, Change::Pull | Change::Gc);
        if applies {
            let number = apply(&agent, &manifest(&reg, port, &shape));
            assert!(
                number > acked.last().unwrap().number,
                "round {round}: {change:?} acknowledged revision {number}, not a new one"
            );
            acked.push(Acked {
                number,
                web_digest: String::new(),
            });
            let rev = revisions(&agent)
                .into_iter()
                .find(|r| r["number"] == number)
                .unwrap();
            acked.last_mut().unwrap().web_digest =
                rev["digests"]["web"].as_str().unwrap().to_string();
        }
        let wait = Duration::from_millis(rng.u64(..=max_wait_ms(change)));
        std::thread::sleep(wait);
        // Where the kill lands: mid-rollout (the newest revision not yet
        // complete) or mid-pull / mid-GC (the command still running).
        let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
        let rolling = revs
            .as_array()
            .and_then(|a| a.last())
            .map(|r| r["state"] != "complete");
        let busy = background.as_ref().is_some_and(|t| !t.is_finished());
        agent.kill9();
        let landed = match (rolling, busy) {
            (_, true) => "mid-command",
            (Some(true), _) => "mid-rollout",
            _ => "when idle",
        };
        *landings.entry(landed).or_default() += 1;
        kills += 1;
        let killed = Instant::now();
        if let Some(t) = background.take() {
            // The command finished or failed with the agent; either is fine.
            let _ = t.join();
        }
        agent.spawn();
        let number = acked.last().unwrap().number;
        let started = Instant::now();
        loop {
            if converged(&agent, &shape, number) {
                break;
            }
            if started.elapsed() > CONVERGE_BOUND {
                agent.wait_for(0, &format!("round {round} ({change:?}, killed after {wait:?}) to converge within {CONVERGE_BOUND:?}"), |_| None::<()>);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = killed.elapsed();
        times.push(took);

        // No acknowledged revision lost, each with the digest it resolved to.
        let history = revisions(&agent);
        for a in &acked {
            let found = history.iter().find(|r| r["number"] == a.number);
            let found = found.unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged revision {} is missing from history: {history:?}",
                    a.number
                )
            });
            assert_eq!(
                found["digests"]["web"], a.web_digest,
                "round {round}: revision {} changed its digest",
                a.number
            );
        }
        assert_eq!(
            history.last().unwrap()["number"],
            number,
            "round {round}: the newest revision is the last acknowledged one"
        );
        // And what runs is that manifest: nothing to change.
        let path = agent.dir.path().join("chaos.toml");
        let diff = agent.ctl(&["diff", "--exit-code", "-f", path.to_str().unwrap()]);
        assert_eq!(
            diff.code, 0,
            "round {round}: what runs differs from the last acknowledged manifest:\n{}{}",
            diff.stdout, diff.stderr
        );

        // Replacements the change itself did not ask for.
        let after = running_ids(&agent);
        for (svc, ids) in &before {
            let replaced_by_change = match change {
                Change::NewDigest => svc == "web",
                Change::Env => svc == "worker",
                _ => false,
            };
            let Some(n) = shape.services().get(svc.as_str()).copied() else {
                continue;
            };
            if replaced_by_change {
                continue;
            }
            let gone = ids
                .difference(after.get(svc).unwrap_or(&BTreeSet::new()))
                .count();
            let expected_gone = ids.len().saturating_sub(n as usize);
            unexpected_replacements += gone.saturating_sub(expected_gone);
        }

        // Never more running than replicas + max_surge (the larger of the
        // two manifests while it changes).
        let seen = sampler.take();
        let (old, new) = (prev.services(), shape.services());
        for (svc, count) in seen {
            let replicas = old
                .get(svc.as_str())
                .copied()
                .unwrap_or(0)
                .max(new.get(svc.as_str()).copied().unwrap_or(0));
            let allowed = (replicas + surge(&svc)) as usize;
            // Keep the round closest to (or over) its allowance.
            let margin = |(c, a): (usize, usize)| (c as i64 - a as i64, c);
            let e = max_seen_over_allowed
                .entry(svc.clone())
                .or_insert((count, allowed));
            if margin((count, allowed)) > margin(*e) {
                *e = (count, allowed);
            }
            assert!(
                count <= allowed,
                "round {round} ({change:?}, killed after {wait:?}): {count} {svc} containers ran at once, allowed {allowed} (replicas {replicas} + max_surge {})",
                surge(&svc)
            );
        }
        eprintln!(
            "chaos: round {round:2} {change:<11?} killed after {:4} ms ({landed}), converged {:5} ms after the kill",
            wait.as_millis(),
            took.as_millis()
        );
    }

    // Remove everything, then look for anything left behind.
    let empty = agent.dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    agent
        .ctl(&["apply", "--prune", "-f", empty.to_str().unwrap()])
        .ok();
    agent.wait_for(30, "every container removed", |a| {
        let revs = a.api("GET", "/v1/revisions", &[], b"").json();
        (a.containers().is_empty()
            && revs.as_array().unwrap().last().unwrap()["state"] == "complete")
            .then_some(())
    });
    agent.ctl(&["gc"]).ok();
    let seen_ids = sampler.seen.lock().unwrap().clone();
    let samples = sampler.samples.load(Ordering::Relaxed);
    drop(sampler);
    assert_no_orphans(&agent, &seen_ids);

    times.sort();
    eprintln!("chaos: seed {seed}");
    eprintln!("chaos: rounds {rounds}, kills {kills} ({landings:?}), changes {counts:?}");
    eprintln!(
        "chaos: convergence after a kill p50 {:?}, max {:?} (bound {CONVERGE_BOUND:?})",
        percentile(&times, 0.5),
        times.last().copied().unwrap_or_default()
    );
    eprintln!("chaos: replacements caused by kills: {unexpected_replacements}");
    eprintln!(
        "chaos: max running replicas observed vs allowed (replicas + max_surge), over {samples} samples: {max_seen_over_allowed:?}"
    );
    eprintln!(
        "chaos: {} containers seen, wall time {:?}",
        seen_ids.len(),
        test_started.elapsed()
    );
    assert_eq!(
        unexpected_replacements, 0,
        "containers were replaced that no change asked for"
    );
}

/// Nothing of any container is left: directories, mounts, cgroups (every
/// hierarchy), veths, network namespaces, nftables rules, blobs no image
/// references.
fn assert_no_orphans(agent: &Agent, seen: &BTreeSet<String>) {
    agent.settle_links(seen, true);
    let mut problems = Vec::new();
    // Container directories.
    let dir = agent.state_dir().join("containers");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        problems.push(format!("container dir {}", e.path().display()));
    }
    // Mounts under the state and run dirs (the agent's own shared netns dir
    // mount is not a container's).
    let netns_dir = agent.run_dir().join("netns");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
        let p = Path::new(m);
        if (p.starts_with(agent.state_dir()) || p.starts_with(agent.run_dir())) && p != netns_dir {
            problems.push(format!("mount {m}"));
        }
    }
    // Cgroups: nothing under the agent's cgroup parent in any hierarchy.
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if !matches!(fields.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2")) {
            continue;
        }
        let parent = PathBuf::from(fields[4]).join(agent.cgroup_parent());
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                problems.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    // Veths of any container seen, and anything still on the bridge.
    let links: BTreeSet<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for id in seen {
        let veth = berth_agent::network::veth_name(&agent.bridge(), id);
        if links.contains(&veth) {
            problems.push(format!("veth {veth} of {id}"));
        }
    }
    let brif = PathBuf::from("/sys/class/net")
        .join(agent.bridge())
        .join("brif");
    for e in std::fs::read_dir(&brif).into_iter().flatten().flatten() {
        problems.push(format!("bridge port {}", e.file_name().to_string_lossy()));
    }
    // Network namespaces pinned for containers.
    for e in std::fs::read_dir(&netns_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        problems.push(format!("netns pin {}", e.path().display()));
    }
    // nftables: no DNAT to a container and no container address.
    let table = std::process::Command::new("nft")
        .args(["list", "table", "ip", &format!("berth_{}", agent.bridge())])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let subnet = agent.subnet();
    let prefix = subnet.trim_end_matches("0/24");
    for line in table.lines() {
        let t = line.trim();
        let dnat_to = t.contains("dnat ip to") || t.contains("dnat to");
        let container_ip = t
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|w| {
                w.starts_with(prefix) && w != format!("{prefix}1") && w != format!("{prefix}0")
            });
        if dnat_to || container_ip {
            problems.push(format!("nft rule: {t}"));
        }
    }
    // Blobs no image references (the images GC kept for rollbacks stay).
    let images = agent.api("GET", "/v1/images", &[], b"").json();
    let blobs_dir = agent.state_dir().join("blobs").join("sha256");
    let mut referenced = BTreeSet::new();
    let mut todo: Vec<String> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    while let Some(hex) = todo.pop() {
        if !referenced.insert(hex.clone()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(blobs_dir.join(&hex)) else {
            problems.push(format!("image blob sha256:{hex} missing"));
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let mut push = |d: &serde_json::Value| {
            if let Some(d) = d["digest"].as_str() {
                todo.push(d.trim_start_matches("sha256:").to_string());
            }
        };
        push(&v["config"]);
        for l in v["layers"].as_array().into_iter().flatten() {
            push(l);
        }
        for m in v["manifests"].as_array().into_iter().flatten() {
            push(m);
        }
    }
    for e in std::fs::read_dir(&blobs_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !referenced.contains(&name) {
            problems.push(format!("blob sha256:{name} referenced by no image"));
        }
    }
    for e in std::fs::read_dir(agent.state_dir().join("layers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("tmp-") {
            problems.push(format!("partial snapshot {}", e.path().display()));
        }
    }
    assert!(
        problems.is_empty(),
        "left behind after removing everything:\n{}\nlog tail:\n{}",
        problems.join("\n"),
        agent
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "chaos: no orphans ({} images kept for rollback, {} blobs, all referenced)",
        images.as_array().unwrap().len(),
        referenced.len()
    );
}

/// Whether `pid` is a live (not zombie) process.
fn live_process(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].split(' ').next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "")
}

/// Nothing of container `id` is left: its directory, mounts, cgroups (the
/// container's and its monitor's, every hierarchy), veth and netns pin.
fn assert_container_gone(agent: &Agent, id: &str) {
    agent.settle_links([&id.to_string()], false);
    let mut left = Vec::new();
    let dir = agent.state_dir().join("containers").join(id);
    if dir.exists() {
        left.push(format!("dir {}", dir.display()));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4).is_some_and(|m| m.contains(id)) {
            left.push(format!("mount {}", fields[4]));
        }
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if matches!(fields.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2")) {
            let parent = PathBuf::from(fields[4]).join(agent.cgroup_parent());
            for name in [id.to_string(), format!("{id}.monitor")] {
                if parent.join(&name).exists() {
                    left.push(format!("cgroup {}", parent.join(&name).display()));
                }
            }
        }
    }
    let veth = berth_agent::network::veth_name(&agent.bridge(), id);
    if Path::new("/sys/class/net").join(&veth).exists() {
        left.push(format!("veth {veth}"));
    }
    if agent.run_dir().join("netns").join(id).exists() {
        left.push(format!("netns pin of {id}"));
    }
    assert!(left.is_empty(), "left of {id}: {left:?}");
}

#[test]
fn a_killed_monitor_is_reported_and_its_container_replaced_cleanly() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    push_worker(&reg);
    let agent = Agent::start();
    let text = format!(
        "[service.worker]\nimage = \"{}\"\ninit = true\nstop_timeout = \"2s\"\n",
        reg.image("chaos/worker:1")
    );
    agent.apply_text("m.toml", &text).ok();
    let old = agent.wait_for(30, "worker 1/1", |a| {
        let ids = running_ids(a).remove("worker").unwrap_or_default();
        (a.ready_of("worker") == (1, 1) && ids.len() == 1).then(|| ids.into_iter().next().unwrap())
    });
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            agent
                .state_dir()
                .join("containers")
                .join(&old)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let (pid, monitor) = (
        st["pid"].as_i64().unwrap() as i32,
        st["monitor_pid"].as_i64().unwrap() as i32,
    );
    assert!(live_process(pid) && live_process(monitor));
    let killed = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &monitor.to_string()])
        .status()
        .unwrap()
        .success());

    // The agent says which container lost its monitor ...
    let event = agent.wait_for(
        10,
        "a container-monitor-lost event naming the container",
        |a| {
            let events = a
                .api("GET", "/v1/events?kind=container-monitor-lost", &[], b"")
                .json();
            events
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["container"] == old.as_str() && e["kind"] == "container-monitor-lost")
                .cloned()
        },
    );
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains(&old) && message.contains(&monitor.to_string()),
        "{message}"
    );
    // ... stops the unsupervised workload and replaces the replica.
    let new = agent.wait_for(30, "a new worker replica ready", |a| {
        let ids = running_ids(a).remove("worker").unwrap_or_default();
        (a.ready_of("worker") == (1, 1) && ids.len() == 1 && !ids.contains(&old))
            .then(|| ids.into_iter().next().unwrap())
    });
    let replaced = killed.elapsed();
    agent.wait_for(10, "the old replica removed", |a| {
        (!a.state_dir().join("containers").join(&old).exists()).then_some(())
    });
    assert!(
        !live_process(pid),
        "the old workload (pid {pid}) still runs unsupervised"
    );
    assert_container_gone(&agent, &old);
    let failed = agent
        .api("GET", "/v1/events?kind=container-failed", &[], b"")
        .json();
    assert!(
        failed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["container"] == old.as_str()),
        "the replacement is counted as a failure of the old replica: {failed}"
    );
    eprintln!(
        "monitor kill: {old} (monitor {monitor}, workload {pid}) replaced by {new} in {replaced:?}; event: {message}"
    );
}

/// A kill of berthd between writing a new replica's `config.json` and
/// starting its monitor leaves a directory that never starts (`created`).
/// The restarted agent must not count it as a replica starting forever: it
/// removes it and the service converges.
#[test]
fn a_create_cut_short_by_a_kill_is_removed_and_the_service_converges() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    push_worker(&reg);
    let mut agent = Agent::start();
    let text = |replicas: u32| {
        format!(
            "[service.worker]\nimage = \"{}\"\nreplicas = {replicas}\ninit = true\nstop_timeout = \"2s\"\n",
            reg.image("chaos/worker:1")
        )
    };
    agent.apply_text("m.toml", &text(2)).ok();
    let ids = agent.wait_for(30, "worker 2/2", |a| {
        let ids = running_ids(a).remove("worker").unwrap_or_default();
        (a.ready_of("worker") == (2, 2) && ids.len() == 2).then_some(ids)
    });
    let mut ids = ids.into_iter();
    let (old, second) = (ids.next().unwrap(), ids.next().unwrap());
    agent.kill9();
    // As if the kill had landed while the second replica was created: its
    // directory with its config (same spec and labels), no monitor, no
    // state.json.
    let rt = runtime_of(&agent);
    rt.stop(&second, Some(9), Some(Duration::from_secs(2)))
        .unwrap();
    rt.remove(&second).unwrap();
    let cut = "worker-0123456789ab";
    let containers = agent.state_dir().join("containers");
    std::fs::create_dir(containers.join(cut)).unwrap();
    for sub in ["upper", "work", "merged", "logs"] {
        std::fs::create_dir(containers.join(cut).join(sub)).unwrap();
    }
    let config = std::fs::read_to_string(containers.join(&old).join("config.json")).unwrap();
    std::fs::write(
        containers.join(cut).join("config.json"),
        config.replace(&old, cut),
    )
    .unwrap();
    agent.spawn();
    let started = Instant::now();
    agent.wait_for(30, "worker 2/2 without the cut-short replica", |a| {
        let ids = running_ids(a).remove("worker").unwrap_or_default();
        let revs = a.api("GET", "/v1/revisions", &[], b"").json();
        (a.ready_of("worker") == (2, 2)
            && ids.len() == 2
            && ids.contains(&old)
            && !containers.join(cut).exists()
            && revs.as_array().unwrap().last().unwrap()["state"] == "complete")
            .then_some(())
    });
    assert_container_gone(&agent, cut);
    let removed = agent
        .api("GET", "/v1/events?kind=container-removed", &[], b"")
        .json();
    let event = removed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["container"] == cut)
        .unwrap_or_else(|| panic!("no container-removed event for {cut}: {removed}"));
    eprintln!(
        "cut-short create: removed and converged in {:?}; event: {}",
        started.elapsed(),
        event["message"]
    );
}
