//! `bench-start`: start-to-exit of `/bin/true` from an already-present image,
//! Berth (the runtime library, as berthd uses it) beside peer commands (runc,
//! docker, podman), plus the memory of berthd and of running containers.
//! Driven by `bench/start.sh`; see bench/README.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::runtime::userns::IdRange;
use berth_agent::runtime::{stages, ContainerConfig, Runtime, RuntimePaths};
use berth_bench::{
    emit, fmt_dur, fmt_kib, mounts_under, proc_mem, processes, ratio, run_output, run_quiet,
    split_cmd, table, time_cmd, verdict, Berthd, Mem, Samples,
};
use clap::{Parser, Subcommand};

const CGROUP_PARENT: &str = "berth-bench";

#[derive(Parser, Debug)]
#[command(about = "Container start benchmark: Berth vs runc, docker, podman")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Builds a busybox root filesystem (every applet) and a tarball of it.
    Rootfs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tar: Option<PathBuf>,
    },
    /// Start-to-exit of /bin/true: Berth and every `--peer`, interleaved.
    Run {
        /// The busybox rootfs, used as the single overlay lowerdir.
        #[arg(long)]
        rootfs: PathBuf,
        /// The `berth-monitor` binary.
        #[arg(long)]
        monitor: PathBuf,
        /// Berth's state dir (created; containers are removed after each run).
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// `NAME=COMMAND`; `{n}` in COMMAND is replaced by a unique number. Repeatable.
        #[arg(long)]
        peer: Vec<String>,
        /// `NAME=REASON` for a peer that could not be set up. Repeatable.
        #[arg(long)]
        unavailable: Vec<String>,
        /// Also append the markdown to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// berthd idle RSS, and the memory each running container adds.
    Memory {
        #[arg(long)]
        berthd: PathBuf,
        #[arg(long)]
        monitor: PathBuf,
        #[arg(long)]
        rootfs: PathBuf,
        /// Parent of the temp dirs (berthd's and the runtime's state).
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// dockerd's pid (its containerd child is added).
        #[arg(long)]
        dockerd_pid: Option<i32>,
        /// The docker command prefix, e.g. `/usr/bin/docker -H unix:///run/x.sock`.
        #[arg(long)]
        docker: Option<String>,
        #[arg(long, default_value = "berth-bench/busybox:1")]
        docker_image: String,
        /// How many `sleep` containers docker runs to average its shims over.
        #[arg(long, default_value_t = 10)]
        docker_count: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Rootfs { dir, tar } => rootfs(&dir, tar.as_deref()),
        Cmd::Run {
            rootfs,
            monitor,
            state,
            runs,
            warmup,
            peer,
            unavailable,
            out,
        } => run(
            &rootfs,
            &monitor,
            &state,
            runs,
            warmup,
            &peer,
            &unavailable,
            out.as_deref(),
        ),
        Cmd::Memory {
            berthd,
            monitor,
            rootfs,
            work,
            count,
            dockerd_pid,
            docker,
            docker_image,
            docker_count,
            out,
        } => memory(&MemoryArgs {
            berthd,
            monitor,
            rootfs,
            work,
            count,
            dockerd_pid,
            docker,
            docker_image,
            docker_count,
            out,
        }),
    }
}

fn rootfs(dir: &Path, tar: Option<&Path>) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying /bin/busybox")?;
    let list = run_output(&["/bin/busybox".into(), "--list".into()])?;
    for applet in list.lines().filter(|a| *a != "busybox") {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    if let Some(tar) = tar {
        run_quiet(&[
            "tar".into(),
            "-C".into(),
            dir.display().to_string(),
            "-cf".into(),
            tar.display().to_string(),
            ".".into(),
        ])?;
    }
    Ok(())
}

fn runtime(state: &Path, monitor: &Path) -> Runtime {
    Runtime::new(RuntimePaths::new(
        state,
        state.join("run"),
        CGROUP_PARENT,
        monitor,
    ))
}

/// A runtime that records stage timestamps (`RuntimePaths::trace_stages`).
fn traced_runtime(state: &Path, monitor: &Path) -> Runtime {
    let mut paths = RuntimePaths::new(state, state.join("run"), CGROUP_PARENT, monitor);
    paths.trace_stages = true;
    Runtime::new(paths)
}

/// Phases of one Berth run, and its stage stamps when traced.
#[derive(Debug, Clone)]
struct BerthRun {
    create: Duration,
    wait: Duration,
    remove: Duration,
    stages: Vec<(String, u64)>,
}

/// create_and_start → `Runtime::wait` (notified by the monitor's exit) →
/// remove: what berthd does. `userns`: its own user namespace with this map
/// (berthd's default, `userns = "auto"`), or `None` for the host's
/// (`userns = "host"`). With a tracing runtime the stamps of the runtime,
/// monitor and init are read back, plus `bench.waited` and `bench.removed`.
fn berth_once(rt: &Runtime, rootfs: &Path, id: &str, userns: Option<IdRange>) -> Result<BerthRun> {
    let mut cfg = ContainerConfig::new(id, vec![rootfs.to_path_buf()], vec!["/bin/true".into()]);
    cfg.userns = userns;
    let t0 = Instant::now();
    rt.create_and_start(&cfg)
        .with_context(|| format!("create_and_start {id}"))?;
    let t1 = Instant::now();
    let waited = rt.wait(id, Duration::from_secs(10));
    let t2 = Instant::now();
    let waited_ns = stages::now_ns();
    let exit = match waited {
        Ok(Some(exit)) => exit,
        other => {
            let _ = rt.remove(id);
            bail!("container {id} did not exit: {other:?}");
        }
    };
    let mut stamps = if rt.paths().trace_stages {
        stages::read(&rt.container_dir(id)).unwrap_or_default()
    } else {
        Vec::new()
    };
    rt.remove(id).with_context(|| format!("remove {id}"))?;
    let t3 = Instant::now();
    if rt.paths().trace_stages {
        stamps.push(("bench.waited".into(), waited_ns));
        stamps.push(("bench.removed".into(), stages::now_ns()));
        stamps.extend(stages::take(&rt.removal_stages(id)).unwrap_or_default());
    }
    if exit.code != 0 {
        bail!("/bin/true exited {} in Berth", exit.code);
    }
    Ok(BerthRun {
        create: t1 - t0,
        wait: t2 - t1,
        remove: t3 - t2,
        stages: stamps,
    })
}

/// The start-to-exit stages of the breakdown: label, the stamps it starts
/// at (the latest of those present) and the stamp it ends at. Stages of the
/// agent, the monitor and the init overlap where the processes run side by
/// side (the workload exits while the agent still reads the report).
const STAGES: &[(&str, &[&str], &str)] = &[
    (
        "agent: directory, /etc files, config.json",
        &["runtime.create"],
        "runtime.files",
    ),
    (
        "agent: cgroup create + limits (devices)",
        &["runtime.files"],
        "runtime.cgroup",
    ),
    (
        "agent: seccomp filter (cached per agent)",
        &["runtime.cgroup"],
        "runtime.seccomp",
    ),
    (
        "monitor spawn: exec (from the read-only clone)",
        &["runtime.cgroup", "runtime.seccomp"],
        "monitor.main",
    ),
    (
        "monitor: setsid + fork",
        &["monitor.main"],
        "monitor.forked",
    ),
    (
        "monitor: read config.json",
        &["monitor.forked"],
        "monitor.config",
    ),
    ("monitor: own cgroup", &["monitor.config"], "monitor.cgroup"),
    (
        "monitor: seccomp compile / receive",
        &["monitor.cgroup"],
        "monitor.seccomp",
    ),
    (
        "monitor: unshare pid ns + fork init",
        &["monitor.seccomp"],
        "monitor.fork",
    ),
    (
        "monitor: init into cgroup + release",
        &["monitor.fork"],
        "monitor.released",
    ),
    ("init: released", &["monitor.released"], "init.go"),
    (
        "init: user namespace (userns only)",
        &["init.go"],
        "init.userns",
    ),
    (
        "init: unshare mnt/uts/ipc/net/cgroup, hostname, lo",
        &["init.userns"],
        "init.namespaces",
    ),
    ("init: sysctls", &["init.namespaces"], "init.sysctl"),
    (
        "init: idmapped layer (userns only)",
        &["init.sysctl"],
        "init.idmap",
    ),
    ("init: overlay mount", &["init.idmap"], "init.overlay"),
    (
        "init: rootfs mounts (/proc /dev /sys /etc, masks)",
        &["init.overlay"],
        "init.mounts",
    ),
    ("init: pivot_root", &["init.mounts"], "init.pivot_root"),
    ("init: stdio", &["init.pivot_root"], "init.stdio"),
    (
        "init: join userns, uid/gid, capabilities",
        &["init.stdio"],
        "init.identity",
    ),
    (
        "init: no_new_privs, signals, close fds",
        &["init.identity"],
        "init.exec-prep",
    ),
    ("init: seccomp install", &["init.exec-prep"], "init.seccomp"),
    (
        "execve (until the monitor sees it)",
        &["init.seccomp"],
        "monitor.exec-seen",
    ),
    (
        "monitor: state.json",
        &["monitor.exec-seen"],
        "monitor.state",
    ),
    ("agent: report read", &["monitor.state"], "runtime.report"),
    (
        "agent: info() returned by create",
        &["runtime.report"],
        "runtime.info",
    ),
    (
        "workload runs + exits (monitor sees EOF)",
        &["monitor.exec-seen"],
        "monitor.exit-seen",
    ),
    ("monitor: reap", &["monitor.exit-seen"], "monitor.reaped"),
    (
        "monitor: exit.json",
        &["monitor.reaped"],
        "monitor.exit-json",
    ),
    (
        "exit notification (agent's wait returns)",
        &["monitor.exit-json", "runtime.info"],
        "bench.waited",
    ),
    ("removal", &["bench.waited"], "bench.removed"),
    ("  remove: state check", &["bench.waited"], "remove.state"),
    (
        "  remove: wait for the monitor's exit",
        &["remove.state"],
        "remove.monitor",
    ),
    (
        "  remove: info + log files",
        &["remove.monitor"],
        "remove.logs",
    ),
    (
        "  remove: container cgroup (kill, rmdir)",
        &["remove.logs"],
        "remove.cgroup",
    ),
    (
        "  remove: monitor cgroup (rmdir)",
        &["remove.cgroup"],
        "remove.monitor-cgroup",
    ),
    (
        "  remove: mounts left",
        &["remove.monitor-cgroup"],
        "remove.mounts",
    ),
    ("  remove: directory", &["remove.mounts"], "remove.dir"),
    (
        "total (create → removed)",
        &["runtime.create"],
        "bench.removed",
    ),
];

/// One stage's durations over `runs` (runs missing a stamp are skipped).
fn stage_samples(runs: &[BerthRun], from: &[&str], to: &str) -> Samples {
    let mut s = Samples::new("");
    for r in runs {
        let at = |name: &str| r.stages.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        let start = from.iter().filter_map(|f| at(f)).max();
        if let (Some(a), Some(b)) = (start, at(to)) {
            s.times.push(Duration::from_nanos(b.saturating_sub(a)));
        }
    }
    s
}

/// The breakdown table: p50 (and p99) per stage for each traced case.
fn breakdown(cases: &[(&str, &[BerthRun])]) -> String {
    let mut header = vec!["stage".to_string()];
    for (name, _) in cases {
        header.push(format!("{name} p50"));
        header.push(format!("{name} p99"));
    }
    let mut rows = Vec::new();
    for (label, from, to) in STAGES {
        let mut row = vec![label.to_string()];
        let mut any = false;
        for (_, runs) in cases {
            let s = stage_samples(runs, from, to);
            if s.times.is_empty() {
                row.push("—".into());
                row.push("—".into());
            } else {
                any = true;
                row.push(fmt_us(s.p50()));
                row.push(fmt_us(s.p99()));
            }
        }
        if any {
            rows.push(row);
        }
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows)
}

/// `0.123 ms` (stages are short).
fn fmt_us(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

struct Peer {
    name: String,
    cmd: String,
    samples: Samples,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    rootfs: &Path,
    monitor: &Path,
    state: &Path,
    runs: usize,
    warmup: usize,
    peers: &[String],
    unavailable: &[String],
    out: Option<&Path>,
) -> Result<()> {
    let rootfs = std::fs::canonicalize(rootfs)?;
    std::fs::create_dir_all(state)?;
    let rt = runtime(state, monitor);
    let traced = traced_runtime(state, monitor);
    let mut peers: Vec<Peer> = peers
        .iter()
        .map(|p| {
            let (name, cmd) = p.split_once('=').context("--peer NAME=COMMAND")?;
            Ok(Peer {
                name: name.into(),
                cmd: cmd.into(),
                samples: Samples::new(name),
                error: None,
            })
        })
        .collect::<Result<_>>()?;
    let mut berth = Samples::new("Berth, own user namespace (default)");
    let mut berth_host = Samples::new("Berth, userns = \"host\"");
    let userns = Some(IdRange {
        base: berth_agent::runtime::userns::DEFAULT_POOL_START,
        len: berth_agent::runtime::userns::RANGE_LEN,
    });
    let mut phases = Vec::new();
    let mut traced_auto = Vec::new();
    let mut traced_host = Vec::new();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("bench-{}-{n}", std::process::id())
    };
    // Warm-up (page cache, first-run costs of every daemon, the agent's
    // seccomp cache), not counted.
    for _ in 0..warmup {
        berth_once(&rt, &rootfs, &next_id(), userns)?;
        berth_once(&rt, &rootfs, &next_id(), None)?;
        berth_once(&traced, &rootfs, &next_id(), userns)?;
        berth_once(&traced, &rootfs, &next_id(), None)?;
        for p in peers.iter_mut().filter(|p| p.error.is_none()) {
            let argv = split_cmd(&p.cmd.replace("{n}", &next_id()));
            if let Err(e) = time_cmd(&argv) {
                eprintln!("peer {} cannot run: {e:#}", p.name);
                p.error = Some(format!("{e:#}"));
            }
        }
    }
    // Interleaved rounds so drift on a noisy machine hits every case alike.
    // The timed Berth runs do not trace; a traced run of each mode per
    // round gives the stage breakdown.
    for round in 0..runs {
        let r = berth_once(&rt, &rootfs, &next_id(), userns)?;
        berth.times.push(r.create + r.wait + r.remove);
        phases.push(r);
        let h = berth_once(&rt, &rootfs, &next_id(), None)?;
        berth_host.times.push(h.create + h.wait + h.remove);
        for p in peers.iter_mut().filter(|p| p.error.is_none()) {
            let argv = split_cmd(&p.cmd.replace("{n}", &next_id()));
            match time_cmd(&argv) {
                Ok(d) => p.samples.times.push(d),
                Err(e) => {
                    eprintln!("peer {} failed in round {round}: {e:#}", p.name);
                    p.error = Some(format!("failed in round {round}: {e:#}"));
                }
            }
        }
        traced_auto.push(berth_once(&traced, &rootfs, &next_id(), userns)?);
        traced_host.push(berth_once(&traced, &rootfs, &next_id(), None)?);
    }
    let left = rt.list()?;
    if !left.is_empty() {
        bail!("{} Berth containers left behind", left.len());
    }
    remove_cgroup_parent(&rt)?;

    let b50 = berth.p50();
    let find = |prefix: &str| {
        peers
            .iter()
            .find(|p| p.name == prefix && p.error.is_none())
            .map(|p| p.samples.p50())
    };
    let (runc, crun) = (find("runc run"), find("crun run"));
    let (runc_u, crun_u) = (find("runc run, userns"), find("crun run, userns"));
    let vs = |d: Duration, peer: Option<Duration>| {
        peer.map(|p| format!("{:.2}×", ratio(d, p)))
            .unwrap_or_else(|| "—".into())
    };
    let mut rows = Vec::new();
    for (s, (r, c)) in [(&berth, (runc_u, crun_u)), (&berth_host, (runc, crun))] {
        rows.push(vec![
            s.name.clone(),
            fmt_dur(s.p50()),
            fmt_dur(s.p99()),
            fmt_dur(s.mean()),
            format!("{:.2}×", ratio(s.p50(), b50)),
            vs(s.p50(), r),
            vs(s.p50(), c),
        ]);
    }
    for p in &peers {
        if let Some(e) = &p.error {
            rows.push(vec![
                p.name.clone(),
                "—".into(),
                "—".into(),
                "—".into(),
                format!("could not run: {}", e.replace('|', "/").replace('\n', " ")),
                "—".into(),
                "—".into(),
            ]);
        } else {
            rows.push(vec![
                p.name.clone(),
                fmt_dur(p.samples.p50()),
                fmt_dur(p.samples.p99()),
                fmt_dur(p.samples.mean()),
                format!("{:.2}×", ratio(p.samples.p50(), b50)),
                "—".into(),
                "—".into(),
            ]);
        }
    }
    for u in unavailable {
        let (name, why) = u.split_once('=').unwrap_or((u, "unavailable"));
        rows.push(vec![
            name.into(),
            "—".into(),
            "—".into(),
            "—".into(),
            format!("could not run: {}", why.replace('|', "/")),
            "—".into(),
            "—".into(),
        ]);
    }
    let mut md = format!(
        "\n### Start to exit of `/bin/true` ({runs} runs each, interleaved, after {warmup} warm-up runs)\n\n"
    );
    md.push_str(&table(
        &[
            "case",
            "p50",
            "p99",
            "mean",
            "case ÷ Berth (p50)",
            "Berth ÷ runc (p50, same userns mode)",
            "Berth ÷ crun (p50, same userns mode)",
        ],
        &rows,
    ));
    let ph = |f: fn(&BerthRun) -> Duration| {
        let mut s = Samples::new("");
        s.times = phases.iter().map(f).collect();
        format!("p50 {} / p99 {}", fmt_dur(s.p50()), fmt_dur(s.p99()))
    };
    md.push_str(&format!(
        "\nBerth phases (own user namespace): create_and_start {}; wait for exit {}; remove {}.\n\n",
        ph(|r| r.create),
        ph(|r| r.wait),
        ph(|r| r.remove)
    ));
    md.push_str(&format!(
        "#### Where a start goes (traced runs, {runs} per mode, interleaved with the timed ones)\n\n"
    ));
    md.push_str(&breakdown(&[
        ("own userns", &traced_auto),
        ("userns = host", &traced_host),
    ]));
    md.push('\n');
    let goal_vs = |what: &str, berth: &Samples, peer: Option<Duration>, name: &str| match peer {
        Some(p) => {
            let r = ratio(berth.p50(), p);
            format!(
                "- Goal {what} p50 ≤ 0.5× `{name}` p50: {} / {} = {r:.2}× — **{}**\n",
                fmt_dur(berth.p50()),
                fmt_dur(p),
                verdict(r <= 0.5)
            )
        }
        None => {
            format!("- Goal {what} p50 ≤ 0.5× `{name}`: {name} did not run — **NOT MEASURED**\n")
        }
    };
    md.push_str(&goal_vs(
        "Berth, userns = \"host\",",
        &berth_host,
        runc,
        "runc run",
    ));
    md.push_str(&goal_vs(
        "Berth in its own user namespace",
        &berth,
        runc_u,
        "runc run, userns",
    ));
    for s in [&berth_host, &berth] {
        let r = ratio(s.p99(), s.p50());
        md.push_str(&format!(
            "- Goal p99 ≤ 2× p50 ({}): {} / {} = {r:.2}× — **{}**\n",
            s.name,
            fmt_dur(s.p99()),
            fmt_dur(s.p50()),
            verdict(r <= 2.0)
        ));
    }
    let r = ratio(b50, berth_host.p50());
    md.push_str(&format!(
        "- Goal user namespace (default `userns = \"auto\"`) p50 within 20% of `userns = \"host\"`: auto/host = {r:.2}× — **{}**\n",
        verdict(r <= 1.2)
    ));
    match peers
        .iter()
        .find(|p| p.name.starts_with("docker") && p.error.is_none())
    {
        Some(p) => {
            let r = ratio(p.samples.p50(), b50);
            md.push_str(&format!(
                "- Goal Berth ≥ 5× faster than `docker run` (p50): docker/Berth = {r:.2}× — **{}**\n",
                verdict(r >= 5.0)
            ));
        }
        None => md.push_str(
            "- Goal Berth ≥ 5× faster than `docker run`: docker did not run — **NOT MEASURED**\n",
        ),
    }
    md.push_str("\nCommands:\n\n");
    md.push_str("- Berth: `Runtime::create_and_start` (busybox rootfs as the only lowerdir, `berth-monitor` from target/release; Berth's defaults: seccomp (Docker's profile), 13 capabilities, no_new_privs, devices cgroup, masked paths) → `Runtime::wait` (notified by a pidfd of the monitor) → `Runtime::remove`; in its own user namespace (range 0x10000000, idmapped layer) as berthd's default, and with `userns = \"host\"`\n");
    for p in &peers {
        md.push_str(&format!("- {}: `{}`\n", p.name, p.cmd));
    }
    emit(out, &md)
}

/// Removes the (empty) `berth-bench` parent cgroup of every hierarchy.
fn remove_cgroup_parent(rt: &Runtime) -> Result<()> {
    for p in rt.cgroup("probe")?.paths() {
        if let Some(parent) = p.parent() {
            match std::fs::remove_dir(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("removing cgroup {}: {e}", parent.display()),
            }
        }
    }
    Ok(())
}

struct MemoryArgs {
    berthd: PathBuf,
    monitor: PathBuf,
    rootfs: PathBuf,
    work: PathBuf,
    count: usize,
    dockerd_pid: Option<i32>,
    docker: Option<String>,
    docker_image: String,
    docker_count: usize,
    out: Option<PathBuf>,
}

fn monitor_pid(dir: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(dir.join("state.json"))
        .with_context(|| format!("reading {}/state.json", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v.get("monitor_pid")
        .and_then(serde_json::Value::as_i64)
        .map(|p| p as i32)
        .context("state.json without monitor_pid")
}

/// True while `pid` exists and is not a zombie.
fn live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| !matches!(s.get(i + 2..i + 3), Some("Z") | Some("X")))
        })
        .unwrap_or(false)
}

fn memory(a: &MemoryArgs) -> Result<()> {
    std::fs::create_dir_all(&a.work)?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut md = String::from("\n### Memory\n\n");

    // berthd idle.
    let mut agent = Berthd::start(&a.berthd, &a.work)?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = proc_mem(agent.pid()).context("berthd is gone")?;
    agent.stop();
    drop(agent);
    rows.push(vec![
        "berthd, idle (ready, no services)".into(),
        fmt_kib(idle.rss_kib),
        fmt_kib(idle.pss_kib),
        "—".into(),
    ]);

    // dockerd + containerd idle.
    let mut docker_idle = None;
    if let Some(pid) = a.dockerd_pid {
        let procs = processes();
        let mut total = proc_mem(pid).context("dockerd is gone")?;
        let mut names = vec!["dockerd".to_string()];
        for (p, _, comm, _) in procs.iter().filter(|(_, pp, _, _)| *pp == pid) {
            if comm.starts_with("containerd") {
                if let Some(m) = proc_mem(*p) {
                    total = total + m;
                    names.push(comm.clone());
                }
            }
        }
        docker_idle = Some(total);
        rows.push(vec![
            format!("{}, idle (no containers)", names.join(" + ")),
            fmt_kib(total.rss_kib),
            fmt_kib(total.pss_kib),
            format!(
                "{:.1}× berthd RSS",
                total.rss_kib as f64 / idle.rss_kib as f64
            ),
        ]);
    }

    // N running containers through the runtime library.
    let state = tempfile::Builder::new()
        .prefix("berth-mem-")
        .tempdir_in(&a.work)?;
    let rt = runtime(state.path(), &a.monitor);
    let rootfs = std::fs::canonicalize(&a.rootfs)?;
    let ids: Vec<String> = (0..a.count)
        .map(|i| format!("mem-{}-{i}", std::process::id()))
        .collect();
    let t = Instant::now();
    let mut started = Vec::new();
    let mut failure = None;
    for id in &ids {
        let cfg = ContainerConfig::new(
            id.as_str(),
            vec![rootfs.clone()],
            vec!["/bin/sleep".into(), "1000".into()],
        );
        match rt.create_and_start(&cfg) {
            Ok(_) => started.push(id.clone()),
            Err(e) => {
                failure = Some(format!("create {id}: {e}"));
                break;
            }
        }
    }
    let create_time = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let mut sum = Mem::default();
    let mut monitors = Vec::new();
    for id in &started {
        let pid = monitor_pid(&rt.container_dir(id))?;
        monitors.push(pid);
        sum = sum + proc_mem(pid).with_context(|| format!("monitor of {id} is gone"))?;
    }
    // Remove everything and check nothing is left.
    let t = Instant::now();
    let mut remove_errors = Vec::new();
    for id in &started {
        if let Err(e) = rt.remove(id) {
            remove_errors.push(format!("{id}: {e}"));
        }
    }
    let remove_time = t.elapsed();
    let mut leftovers = Vec::new();
    leftovers.extend(mounts_under(state.path()));
    for id in &started {
        if rt.container_dir(id).exists() {
            leftovers.push(rt.container_dir(id).display().to_string());
        }
        for p in rt.cgroup(id)?.paths() {
            if p.exists() {
                leftovers.push(p.display().to_string());
            }
        }
    }
    // A reaped monitor may linger as a zombie until init collects it.
    for pid in &monitors {
        if live(*pid) {
            leftovers.push(format!("monitor pid {pid}"));
        }
    }
    if let Err(e) = remove_cgroup_parent(&rt) {
        leftovers.push(format!("{e:#}"));
    }
    if let Some(f) = failure {
        bail!("{f}");
    }
    if !remove_errors.is_empty() {
        bail!("remove failed: {}", remove_errors.join("; "));
    }
    if !leftovers.is_empty() {
        bail!("left behind after removing all containers: {leftovers:?}");
    }
    let n = started.len() as u64;
    let per = Mem {
        rss_kib: sum.rss_kib / n,
        pss_kib: sum.pss_kib / n,
        private_kib: sum.private_kib / n,
    };
    rows.push(vec![
        format!("Berth monitor per running container (avg of {n})"),
        fmt_kib(per.rss_kib),
        fmt_kib(per.pss_kib),
        format!("private {}", fmt_kib(per.private_kib)),
    ]);

    // docker shims.
    let mut shim_per = None;
    if let Some(docker) = &a.docker {
        match docker_shims(docker, &a.docker_image, a.docker_count) {
            Ok((m, k)) => {
                shim_per = Some(m);
                rows.push(vec![
                    format!("containerd-shim-runc-v2 per docker container (avg of {k})"),
                    fmt_kib(m.rss_kib),
                    fmt_kib(m.pss_kib),
                    format!("private {}", fmt_kib(m.private_kib)),
                ]);
            }
            Err(e) => rows.push(vec![
                "containerd-shim-runc-v2".into(),
                "—".into(),
                "—".into(),
                format!("could not measure: {e:#}"),
            ]),
        }
    }

    md.push_str(&table(&["process", "RSS", "PSS", "note"], &rows));
    md.push_str(&format!(
        "\n{n} `sleep 1000` containers: created in {} ({} each), removed in {} ({} each); afterwards no container dir, mount, cgroup or monitor was left.\n\n",
        fmt_dur(create_time),
        fmt_dur(create_time / n as u32),
        fmt_dur(remove_time),
        fmt_dur(remove_time / n as u32),
    ));
    let idle_mib = idle.rss_kib as f64 / 1024.0;
    md.push_str(&format!(
        "- Goal berthd idle RSS ≤ 20 MB: {idle_mib:.1} MiB — **{}**{}\n",
        verdict(idle.rss_kib * 1024 <= 20_000_000),
        docker_idle
            .map(|d| format!(
                " (dockerd + containerd: {:.1} MiB)",
                d.rss_kib as f64 / 1024.0
            ))
            .unwrap_or_default()
    ));
    md.push_str(&format!(
        "- Goal ≤ 1.5 MB added per running container (monitor PSS): {:.2} MiB — **{}**{}\n",
        per.pss_kib as f64 / 1024.0,
        verdict(per.pss_kib * 1024 <= 1_500_000),
        shim_per
            .map(|s| format!(
                " (a containerd-shim: PSS {:.2} MiB, RSS {:.2} MiB)",
                s.pss_kib as f64 / 1024.0,
                s.rss_kib as f64 / 1024.0
            ))
            .unwrap_or_default()
    ));
    md.push_str("\nRSS = VmRSS from /proc/PID/status; PSS and private = smaps_rollup (shared pages split among the processes sharing them). Kernel memory (cgroups, namespaces, overlay mounts) is not included for either side.\n");
    emit(a.out.as_deref(), &md)
}

/// Runs `count` detached `sleep 1000` docker containers, averages their
/// shims' memory, removes them. Returns (average, number of shims).
fn docker_shims(docker: &str, image: &str, count: usize) -> Result<(Mem, usize)> {
    let base = split_cmd(docker);
    let mut ids = Vec::new();
    let result = (|| {
        for _ in 0..count {
            let mut argv = base.clone();
            argv.extend(
                [
                    "run",
                    "-d",
                    "--network",
                    "none",
                    image,
                    "/bin/sleep",
                    "1000",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            ids.push(run_output(&argv)?.trim().to_string());
        }
        std::thread::sleep(Duration::from_secs(1));
        let procs = processes();
        let mut sum = Mem::default();
        let mut k = 0;
        for id in &ids {
            let shim = procs
                .iter()
                .find(|(_, _, comm, cmd)| comm.starts_with("containerd-shim") && cmd.contains(id))
                .with_context(|| format!("no containerd-shim for container {id}"))?;
            sum = sum + proc_mem(shim.0).context("shim is gone")?;
            k += 1;
        }
        if k == 0 {
            bail!("no containers");
        }
        Ok((
            Mem {
                rss_kib: sum.rss_kib / k as u64,
                pss_kib: sum.pss_kib / k as u64,
                private_kib: sum.private_kib / k as u64,
            },
            k,
        ))
    })();
    if !ids.is_empty() {
        let mut argv = base;
        argv.extend(["rm", "-f"].iter().map(|s| s.to_string()));
        argv.extend(ids);
        run_quiet(&argv)?;
    }
    result
}
