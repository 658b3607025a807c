//! `bench-fleet`: a fleet of N simulated agents against a real etcd. Each
//! host runs berthd's own fleet code (`berth_agent::fleet`: the gate, the
//! slot queue by create revision, groups and bake, release after probation,
//! halts, `auto_revert`, the lease-bound record, the watch) over a fake
//! runtime ([`FakeHost`]) whose rollout of a new manifest takes T. Driven by
//! `bench/fleet.sh`; see bench/README.md.
//!
//! `run` measures one fleet size and appends one JSON line; `report` turns
//! the lines into the markdown table with the goals and growth exponents.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::fleet::{Fleet, FleetConfig, FleetHost, HostRevision, Observation};
use berth_agent::metrics::Metrics;
use berth_bench::{emit, table, verdict};
use berth_core::manifest::FleetPolicy;
use berth_core::vocab::{EventKind, RevisionState};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "Fleet rollout benchmark: N simulated agents on one etcd")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One fleet size: join, roll a new manifest to every host, then a
    /// manifest that fails on a canary; appends a JSON line to `--json`.
    Run(RunArgs),
    /// The markdown table of every `run` line in `--json`.
    Report {
        #[arg(long)]
        json: PathBuf,
        /// Also append the table here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// etcd's client URL, `http://127.0.0.1:PORT` (its /metrics is read too).
    #[arg(long)]
    etcd: String,
    /// etcd's pid, for its CPU time and RSS.
    #[arg(long)]
    etcd_pid: i32,
    #[arg(long)]
    hosts: usize,
    #[arg(long, default_value_t = 10)]
    canary: usize,
    #[arg(long, default_value_t = 50)]
    max_parallel: u32,
    /// T: how long the fake runtime's rollout takes.
    #[arg(long, default_value_t = 1000)]
    rollout_ms: u64,
    #[arg(long, default_value_t = 2000)]
    bake_ms: u64,
    /// `--fleet-interval` (berthd's default is 2s).
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// `--fleet-lease-ttl` (berthd's default is 10s).
    #[arg(long, default_value_t = 10)]
    lease_ttl_s: u64,
    /// The fake source's poll when the fleet says nothing (berthd's git
    /// source polls every 30s by default).
    #[arg(long, default_value_t = 30_000)]
    poll_ms: u64,
    /// Longest wait for the rollout to reach every host.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[arg(long)]
    json: PathBuf,
}

/// One fleet size's figures (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Figures {
    hosts: usize,
    canary: usize,
    max_parallel: u32,
    rollout_ms: u64,
    bake_ms: u64,
    interval_ms: u64,
    /// Time from the new manifest offered to every host until the last host
    /// completed it; `None`: not every host did within the timeout.
    roll_s: Option<f64>,
    rolled: usize,
    ideal_s: f64,
    /// Most hosts rolling out at once (must not exceed max_parallel).
    max_concurrent: usize,
    /// etcd messages received (requests) and bytes during the rollout, per host.
    requests_per_host: f64,
    recv_bytes_per_host: f64,
    sent_bytes_per_host: f64,
    /// etcd's CPU seconds during the rollout, its largest RSS (MiB) sampled then.
    etcd_cpu_s: f64,
    etcd_rss_mib: f64,
    /// This process (every simulated host) during the rollout.
    bench_cpu_s: f64,
    /// From the canary's failed rollout to the last host seeing the halt.
    halt_s: Option<f64>,
    halt_seen: usize,
    /// Hosts that started the halted manifest after the halt (must be 0).
    started_after_halt: usize,
}

fn sha(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    // A fleet hash is sha256 hex; any 64 hex characters weigh the same in etcd.
    let mut out = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (text, i).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[derive(Debug, Clone)]
struct Rev {
    number: u64,
    state: RevisionState,
    hash: String,
}

#[derive(Debug, Default)]
struct Times {
    started: BTreeMap<String, Instant>,
    completed: BTreeMap<String, Instant>,
    halt_seen: Option<Instant>,
}

/// A host whose runtime is a list of revisions: a rollout is a sleep of T,
/// then the revision is complete with its one replica ready (or, on the
/// host chosen to fail, rolled back to the previous one).
struct FakeHost {
    revs: Mutex<Vec<Rev>>,
    metrics: Arc<Metrics>,
    times: Mutex<Times>,
}

impl FakeHost {
    fn new(metrics: Arc<Metrics>, hash: &str) -> FakeHost {
        FakeHost {
            revs: Mutex::new(vec![Rev {
                number: 1,
                state: RevisionState::Complete,
                hash: hash.to_string(),
            }]),
            metrics,
            times: Mutex::new(Times::default()),
        }
    }

    fn revs(&self) -> std::sync::MutexGuard<'_, Vec<Rev>> {
        self.revs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn latest(&self) -> Rev {
        self.revs().last().cloned().expect("one revision at least")
    }

    /// Records `hash` as a new revision, rolling out; its number.
    fn record(&self, hash: &str) -> u64 {
        let mut revs = self.revs();
        let number = revs.len() as u64 + 1;
        // As berthd: only a revision still in progress becomes superseded.
        if let Some(prev) = revs.last_mut() {
            if let Some(s) = prev.state.when_superseded() {
                prev.state = s;
            }
        }
        revs.push(Rev {
            number,
            state: RevisionState::RollingOut,
            hash: hash.to_string(),
        });
        number
    }

    /// Ends revision `n`'s rollout: complete, or rolled back to the
    /// revision before it (recorded again, complete) as berthd's automatic
    /// rollback does.
    fn finish(&self, n: u64, fail: bool) {
        let mut revs = self.revs();
        let Some(i) = revs.iter().position(|r| r.number == n) else {
            return;
        };
        if !fail {
            revs[i].state = RevisionState::Complete;
            return;
        }
        revs[i].state = RevisionState::RolledBack;
        let prev = revs[..i]
            .iter()
            .rev()
            .find(|r| r.hash != revs[i].hash)
            .map(|r| r.hash.clone());
        if let Some(hash) = prev {
            let number = revs.len() as u64 + 1;
            revs.push(Rev {
                number,
                state: RevisionState::Complete,
                hash,
            });
        }
    }

    fn host_revision(r: &Rev) -> HostRevision {
        HostRevision {
            number: r.number,
            state: r.state,
            hash: Some(r.hash.clone()),
            digests: BTreeMap::from([("web".to_string(), format!("sha256:{}", r.hash))]),
            policy: None,
            probation: Duration::ZERO,
        }
    }
}

impl FleetHost for FakeHost {
    fn observe(&self) -> Observation {
        let latest = self.latest();
        let ready = latest.state == RevisionState::Complete;
        Observation {
            latest: Some(Self::host_revision(&latest)),
            ready: u32::from(ready),
            desired: 1,
            all_ready: ready,
            last_error: (latest.state == RevisionState::RolledBack)
                .then(|| "web: health check failed".to_string()),
        }
    }

    fn revision(&self, n: u64) -> Option<HostRevision> {
        self.revs()
            .iter()
            .find(|r| r.number == n)
            .map(Self::host_revision)
    }

    fn revisions(&self) -> Vec<(u64, RevisionState, String)> {
        self.revs()
            .iter()
            .map(|r| (r.number, r.state, r.hash.clone()))
            .collect()
    }

    fn any_error(&self) -> Option<String> {
        Some("web: health check failed".into())
    }

    fn draining(&self) -> bool {
        false
    }

    fn source_error(&self) -> Option<String> {
        None
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn emit(&self, kind: EventKind, message: String) {
        // What an operator reads in `berthctl events`: the halt reached
        // this host when its events say so (halted here, waits on a halt,
        // or reverted because of one).
        let halt = match kind {
            EventKind::FleetHalted | EventKind::FleetReverted => true,
            EventKind::FleetWaiting => message.contains("halted"),
            _ => false,
        };
        if halt {
            self.times().halt_seen.get_or_insert_with(Instant::now);
        }
    }

    async fn restore(&self, n: u64) -> Result<Option<u64>, String> {
        let hash = self
            .revision(n)
            .and_then(|r| r.hash)
            .ok_or_else(|| format!("revision {n} is not stored"))?;
        let number = self.record(&hash);
        self.finish(number, false);
        Ok(Some(number))
    }
}

/// What every host is told to run: the manifest hash, and which host's
/// rollout of it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    hash: String,
    fails_on: Option<String>,
}

/// The fake manifest source of one host: offers the target to the gate,
/// retries when the fleet says so (or every `poll`), rolls out with a slot.
async fn source(
    name: String,
    host: Arc<FakeHost>,
    fleet: Arc<Fleet>,
    mut target: watch::Receiver<Option<Target>>,
    rollout: Duration,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let t = target.borrow_and_update().clone();
        let current = host.latest();
        let todo = t.filter(|t| {
            // Done: running it, or it rolled back here.
            t.hash != current.hash && !host.revs().iter().any(|r| r.hash == t.hash)
        });
        let Some(t) = todo else {
            tokio::select! {
                r = target.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        match fleet
            .gate(&*host, &t.hash, Some(current.hash.as_str()), None, true)
            .await
        {
            Ok(()) => {
                let n = host.record(&t.hash);
                fleet.applied(&t.hash, Some(n));
                host.times().started.insert(name.clone(), Instant::now());
                tokio::time::sleep(rollout).await;
                let fail = t.fails_on.as_deref() == Some(name.as_str());
                host.finish(n, fail);
                host.times().completed.insert(name.clone(), Instant::now());
                fleet.nudge();
            }
            Err(_) => {
                tokio::select! {
                    _ = fleet.wait_for_change(poll) => {}
                    _ = target.changed() => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Sums every sample of `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// etcd's counters: (messages received, bytes received, bytes sent).
fn etcd_counters(url: &str) -> Result<(f64, f64, f64)> {
    let addr = url
        .strip_prefix("http://")
        .context("--etcd must be http://127.0.0.1:PORT")?;
    if !addr.starts_with("127.0.0.1:") {
        bail!("--etcd must be on 127.0.0.1");
    }
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    Ok((
        metric(&page, "grpc_server_msg_received_total"),
        metric(&page, "etcd_network_client_grpc_received_bytes_total"),
        metric(&page, "etcd_network_client_grpc_sent_bytes_total"),
    ))
}

/// CPU seconds (user + system) of a process.
fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command: utime is 14th, stime 15th overall.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

/// USER_HZ (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn rss_mib(pid: i32) -> f64 {
    berth_bench::proc_mem(pid)
        .map(|m| m.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0)
}

struct Member {
    name: String,
    host: Arc<FakeHost>,
    fleet: Arc<Fleet>,
}

async fn run(a: RunArgs) -> Result<Figures> {
    if a.canary == 0 || a.canary >= a.hosts {
        bail!("--canary must be between 1 and --hosts - 1");
    }
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (target_tx, target_rx) = watch::channel::<Option<Target>>(None);
    let old = sha("manifest v1");
    let policy = FleetPolicy {
        max_parallel: Some(a.max_parallel),
        groups: Some(vec!["canary".into(), "default".into()]),
        bake: Some(Duration::from_millis(a.bake_ms)),
        auto_revert: Some(true),
    };
    let fleet_name = format!("bench{}", a.hosts);
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    eprintln!("fleet {}: {} hosts joining", fleet_name, a.hosts);
    for i in 0..a.hosts {
        let canary = i < a.canary;
        let name = format!("{}{i:04}", if canary { "c" } else { "h" });
        let config = FleetConfig {
            endpoints: vec![a.etcd.clone()],
            name: fleet_name.clone(),
            group: if canary { "canary" } else { "default" }.into(),
            host: name.clone(),
            auth: None,
            tls: None,
            policy: policy.clone(),
            interval: Duration::from_millis(a.interval_ms),
            lease_ttl: Duration::from_secs(a.lease_ttl_s),
            instance: name.clone(),
        };
        let fleet = Arc::new(Fleet::new(config));
        let host = Arc::new(FakeHost::new(metrics.clone(), &old));
        tasks.push(tokio::spawn(berth_agent::fleet::run(
            fleet.clone(),
            host.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(source(
            name.clone(),
            host.clone(),
            fleet.clone(),
            target_rx.clone(),
            Duration::from_millis(a.rollout_ms),
            Duration::from_millis(a.poll_ms),
            stop_rx.clone(),
        )));
        members.push(Member { name, host, fleet });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Joined: every host reachable with its record written.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let joined = members
            .iter()
            .filter(|m| m.fleet.agent_status().reachable)
            .count();
        if joined == a.hosts {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {joined} of {} hosts joined within 120 s", a.hosts);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("all joined; rolling out");

    // The rollout.
    let new = sha("manifest v2");
    let me = std::process::id().to_string();
    let etcd_pid = a.etcd_pid.to_string();
    let before = etcd_counters(&a.etcd)?;
    let (cpu0, bench0) = (cpu_s(&etcd_pid), cpu_s(&me));
    let t0 = Instant::now();
    target_tx.send_replace(Some(Target {
        hash: new.clone(),
        fails_on: None,
    }));
    let mut rss_max: f64 = rss_mib(a.etcd_pid);
    let deadline = t0 + Duration::from_secs(a.timeout_s);
    let rolled = loop {
        let done = members
            .iter()
            .filter(|m| {
                let l = m.host.latest();
                l.hash == new && l.state == RevisionState::Complete
            })
            .count();
        rss_max = rss_max.max(rss_mib(a.etcd_pid));
        if done == a.hosts || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = etcd_counters(&a.etcd)?;
    let (cpu1, bench1) = (cpu_s(&etcd_pid), cpu_s(&me));
    let last = members
        .iter()
        .filter_map(|m| m.host.times().completed.get(&m.name).copied())
        .max();
    let roll_s = (rolled == a.hosts)
        .then(|| last.map(|l| l.duration_since(t0).as_secs_f64()))
        .flatten();
    // Most at once, from every host's start and end.
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for m in &members {
        let t = m.host.times();
        if let (Some(s), Some(e)) = (t.started.get(&m.name), t.completed.get(&m.name)) {
            edges.push((*s, 1));
            edges.push((*e, -1));
        }
    }
    edges.sort_by_key(|e| (e.0, e.1));
    let (mut now, mut max_concurrent) = (0i32, 0i32);
    for (_, d) in &edges {
        now += d;
        max_concurrent = max_concurrent.max(now);
    }
    let n = a.hosts as f64;
    let t = a.rollout_ms as f64 / 1000.0;
    let rest = (a.hosts - a.canary).div_ceil(a.max_parallel as usize) as f64;
    let canary_batches = a.canary.div_ceil(a.max_parallel as usize) as f64;
    let ideal_s = canary_batches * t + a.bake_ms as f64 / 1000.0 + rest * t;
    eprintln!("rollout: {rolled}/{} hosts, {roll_s:?} s", a.hosts);

    // The halt: the first canary's rollout of the next manifest fails.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in &members {
        let mut t = m.host.times();
        t.started.clear();
        t.completed.clear();
        t.halt_seen = None;
    }
    let bad = sha("manifest v3");
    let failing = members[0].name.clone();
    target_tx.send_replace(Some(Target {
        hash: bad.clone(),
        fails_on: Some(failing.clone()),
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed_at = loop {
        if let Some(t) = members[0].host.times().completed.get(&failing).copied() {
            break Some(t);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let halt_seen = loop {
        let seen = members
            .iter()
            .filter(|m| m.host.times().halt_seen.is_some())
            .count();
        if seen == a.hosts || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let halt_s = match failed_at {
        Some(f) if halt_seen == a.hosts => members
            .iter()
            .filter_map(|m| m.host.times().halt_seen)
            .max()
            .map(|l| l.saturating_duration_since(f).as_secs_f64()),
        _ => None,
    };
    // Hosts that started the bad manifest after it was halted.
    let started_after_halt = match failed_at {
        Some(f) => members
            .iter()
            .filter(|m| {
                m.host
                    .times()
                    .started
                    .get(&m.name)
                    .is_some_and(|s| *s > f + Duration::from_millis(500))
            })
            .count(),
        None => 0,
    };
    eprintln!("halt: seen by {halt_seen}/{} hosts, {halt_s:?} s", a.hosts);
    for m in members
        .iter()
        .filter(|m| m.host.times().halt_seen.is_none())
        .take(5)
    {
        let st = m.fleet.agent_status();
        eprintln!(
            "  {} did not see it: revisions {:?}, slot {}, pending {:?}, halts known {}",
            m.name,
            m.host
                .revisions()
                .iter()
                .map(|r| (r.0, r.1, &r.2[..6]))
                .collect::<Vec<_>>(),
            st.slot_held,
            st.pending,
            m.fleet.known_halts().len()
        );
    }

    // Leave: every host revokes its lease.
    let _ = stop_tx.send(true);
    let leave = tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    if leave.is_err() {
        eprintln!("warning: not every host left within 60 s");
    }
    Ok(Figures {
        hosts: a.hosts,
        canary: a.canary,
        max_parallel: a.max_parallel,
        rollout_ms: a.rollout_ms,
        bake_ms: a.bake_ms,
        interval_ms: a.interval_ms,
        roll_s,
        rolled,
        ideal_s,
        max_concurrent: max_concurrent.max(0) as usize,
        requests_per_host: (after.0 - before.0) / n,
        recv_bytes_per_host: (after.1 - before.1) / n,
        sent_bytes_per_host: (after.2 - before.2) / n,
        etcd_cpu_s: cpu1 - cpu0,
        etcd_rss_mib: rss_max,
        bench_cpu_s: bench1 - bench0,
        halt_s,
        halt_seen,
        started_after_halt,
    })
}

/// The slope of log(y) over log(x): y grows like x^slope.
fn growth(points: &[(f64, f64)]) -> Option<f64> {
    let p: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if p.len() < 2 {
        return None;
    }
    let n = p.len() as f64;
    let mx = p.iter().map(|q| q.0).sum::<f64>() / n;
    let my = p.iter().map(|q| q.1).sum::<f64>() / n;
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn report(json: &PathBuf, out: Option<&std::path::Path>) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("{}", json.display()))?;
    let mut runs: Vec<Figures> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    runs.sort_by_key(|r| r.hosts);
    if runs.is_empty() {
        bail!("no runs in {}", json.display());
    }
    let opt =
        |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.2} {unit}"));
    let mut rows = Vec::new();
    for r in &runs {
        rows.push(vec![
            r.hosts.to_string(),
            format!("{:.1} s", r.ideal_s),
            match r.roll_s {
                Some(s) => format!("{s:.1} s"),
                None => format!("{} of {} hosts", r.rolled, r.hosts),
            },
            r.roll_s
                .map_or("—".into(), |s| format!("{:.2}×", s / r.ideal_s)),
            format!("{} / {}", r.max_concurrent, r.max_parallel),
            format!("{:.1}", r.requests_per_host),
            format!(
                "{:.1} / {:.1}",
                r.recv_bytes_per_host / 1024.0,
                r.sent_bytes_per_host / 1024.0
            ),
            format!("{:.1} s", r.etcd_cpu_s),
            format!("{:.0} MiB", r.etcd_rss_mib),
            format!("{:.1} s", r.bench_cpu_s),
            match r.halt_s {
                Some(_) => opt(r.halt_s, "s"),
                None => format!("{} of {} hosts", r.halt_seen, r.hosts),
            },
            r.started_after_halt.to_string(),
        ]);
    }
    let f = &runs[runs.len() - 1];
    let mut s = format!(
        "### Fleet rollout: {} hosts max, canary {} then default, max_parallel {}, T = {} ms, bake = {} ms, --fleet-interval {} ms\n\n",
        f.hosts, f.canary, f.max_parallel, f.rollout_ms, f.bake_ms, f.interval_ms
    );
    s.push_str(&table(
        &[
            "hosts",
            "ideal (canary T + bake + ⌈rest/K⌉·T)",
            "Berth: whole fleet rolled",
            "ratio",
            "most at once / K",
            "etcd requests / host",
            "etcd KiB in / out per host",
            "etcd CPU",
            "etcd RSS (max)",
            "simulated hosts' CPU",
            "halt seen by every host",
            "started after the halt",
        ],
        &rows,
    ));
    let xs: Vec<f64> = runs.iter().map(|r| r.hosts as f64).collect();
    let fit = |f: &dyn Fn(&Figures) -> Option<f64>| {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .zip(&xs)
            .filter_map(|(r, x)| f(r).map(|y| (*x, y)))
            .collect();
        growth(&pts).map_or("—".to_string(), |g| format!("N^{g:.2}"))
    };
    s.push_str(
        "\nGrowth with the fleet size N (least-squares slope of log metric over log N):\n\n",
    );
    s.push_str(&table(
        &["metric", "growth"],
        &[
            vec!["time to roll the fleet".into(), fit(&|r| r.roll_s)],
            vec![
                "etcd requests per host".into(),
                fit(&|r| Some(r.requests_per_host)),
            ],
            vec![
                "etcd requests, whole fleet".into(),
                fit(&|r| Some(r.requests_per_host * r.hosts as f64)),
            ],
            vec![
                "etcd bytes out per host".into(),
                fit(&|r| Some(r.sent_bytes_per_host)),
            ],
            vec![
                "etcd bytes out, whole fleet".into(),
                fit(&|r| Some(r.sent_bytes_per_host * r.hosts as f64)),
            ],
            vec!["etcd CPU".into(), fit(&|r| Some(r.etcd_cpu_s))],
            vec!["etcd RSS".into(), fit(&|r| Some(r.etcd_rss_mib))],
            vec!["halt reaching every host".into(), fit(&|r| r.halt_s)],
        ],
    ));
    s.push('\n');
    for r in &runs {
        let roll_ok = r.roll_s.is_some_and(|t| t <= 1.2 * r.ideal_s);
        let halt_ok = r.halt_s.is_some_and(|t| t <= 2.0);
        let safe = r.max_concurrent <= r.max_parallel as usize && r.started_after_halt == 0;
        s.push_str(&format!(
            "- {} hosts: whole fleet within 1.2× the ideal: **{}**; halt seen by every host within 2 s: **{}**; never more than K at once and nothing started after the halt: **{}**\n",
            r.hosts,
            verdict(roll_ok),
            verdict(halt_ok),
            verdict(safe)
        ));
    }
    s.push('\n');
    emit(out, &s)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let json = a.json.clone();
            let figures = rt.block_on(run(a))?;
            let line = serde_json::to_string(&figures)? + "\n";
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&json)
                .with_context(|| format!("{}", json.display()))?;
            f.write_all(line.as_bytes())?;
            print!("{line}");
            rt.shutdown_timeout(Duration::from_secs(5));
            Ok(())
        }
        Cmd::Report { json, out } => report(&json, out.as_deref()),
    }
}
