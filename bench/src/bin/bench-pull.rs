//! `bench-pull`: cold pulls of the benchmark image, Berth beside `docker pull`
//! and `podman pull`, each run from an empty store. Berth pulls through
//! `berthctl pull` against a fresh `berthd` on empty temp dirs, or — while
//! berthctl has no `pull` — through the image store library (what berthd's
//! pull runs). Driven by `bench/pull.sh`; see bench/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::image::store::{ImageStore, PullEvent};
use berth_agent::metrics::Metrics;
use berth_agent::registry::{ClientOptions, RegistryClient, RegistryConfig};
use berth_bench::{
    emit, fmt_dur, ratio, run_quiet, split_cmd, table, time_cmd, verdict, Berthd, Samples,
};
use berth_core::image_ref::ImageRef;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `cli` when `berthctl pull --help` works, else `library`.
    Auto,
    /// `berthctl --agent unix:SOCK pull IMAGE` against a fresh berthd per run.
    Cli,
    /// `ImageStore::pull` in this process on a fresh state dir per run.
    Library,
}

#[derive(Parser, Debug)]
#[command(about = "Cold pull benchmark: Berth vs docker pull, podman pull")]
struct Cli {
    /// `127.0.0.1:PORT/bench/big:1`.
    #[arg(long)]
    image: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    berthd: PathBuf,
    #[arg(long)]
    berthctl: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Parent of Berth's temp state dirs.
    #[arg(long)]
    work: PathBuf,
    /// Docker command prefix, e.g. `/usr/bin/docker -H unix:///run/x.sock`.
    #[arg(long)]
    docker: Option<String>,
    /// Podman command prefix, e.g. `podman --root /tmp/x/root --runroot /tmp/x/run`.
    #[arg(long)]
    podman: Option<String>,
    /// Library mode only: layers fetched and unpacked at once (default: the
    /// client's default, 3). For experiments.
    #[arg(long)]
    layer_concurrency: Option<usize>,
    /// Print Berth's pull progress (resolve, each layer done) with timestamps.
    #[arg(long)]
    trace: bool,
    /// The machine's lower bound for this pull in seconds (from
    /// `bench-pull-bound`): adds a row and the goal Berth ≤ 1.3× bound.
    #[arg(long)]
    bound: Option<f64>,
    /// `NAME=REASON` for a peer that could not be set up. Repeatable.
    #[arg(long)]
    unavailable: Vec<String>,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn cmd(prefix: &str, rest: &[&str]) -> Vec<String> {
    let mut v = split_cmd(prefix);
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn ctl_has_pull(berthctl: &Path) -> bool {
    Command::new(berthctl)
        .args(["pull", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One cold pull through berthctl against a fresh berthd.
fn berth_cli(a: &Cli) -> Result<Duration> {
    let agent = Berthd::start(&a.berthd, &a.work)?;
    let argv = vec![
        a.berthctl.display().to_string(),
        "--agent".into(),
        format!("unix:{}", agent.socket().display()),
        "pull".into(),
        a.image.clone(),
    ];
    let r = time_cmd(&argv);
    if r.is_err() {
        eprintln!("berthd log:\n{}", agent.log());
    }
    drop(agent); // stops berthd and removes its dirs
    r
}

/// One cold pull through the image store library on a fresh state dir.
fn berth_library(a: &Cli, rt: &tokio::runtime::Runtime) -> Result<(Duration, usize)> {
    let dir = tempfile::Builder::new()
        .prefix("berth-pull-")
        .tempdir_in(&a.work)?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    let image: ImageRef = a.image.parse().context("parsing --image")?;
    let r = rt.block_on(async {
        let db = sled::open(state.join("db"))?;
        let tree = db.open_tree("images")?;
        let store = ImageStore::open(
            state.clone(),
            tree,
            match a.layer_concurrency {
                Some(n) => RegistryClient::with_options(
                    RegistryConfig::new(),
                    ClientOptions {
                        layer_concurrency: n,
                        ..ClientOptions::default()
                    },
                )?,
                None => RegistryClient::new(RegistryConfig::new())?,
            },
            Metrics::new(),
        )?;
        // Progress events with their time since the start (printed with --trace).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
        let t = Instant::now();
        let trace = a.trace;
        let log = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if !trace {
                    continue;
                }
                let at = t.elapsed().as_secs_f64();
                match ev {
                    PullEvent::Resolved { layers, .. } => {
                        eprintln!("  {at:7.3}s resolved, {} layers", layers.len())
                    }
                    PullEvent::LayerDone { digest, .. } => {
                        eprintln!("  {at:7.3}s layer {} done", &digest.to_string()[7..19])
                    }
                    PullEvent::Done { .. } => eprintln!("  {at:7.3}s done"),
                    PullEvent::Layer { .. } => {}
                }
            }
        });
        let rec = store.pull(&image, Some(tx)).await?;
        let d = t.elapsed();
        let _ = log.await;
        if !store.is_complete(&rec) {
            bail!("pulled image is incomplete");
        }
        Ok::<_, anyhow::Error>((d, rec.layers.len()))
    });
    drop(dir);
    r
}

fn main() -> Result<()> {
    let a = Cli::parse();
    std::fs::create_dir_all(&a.work)?;
    let mode = match a.mode {
        Mode::Auto if ctl_has_pull(&a.berthctl) => Mode::Cli,
        Mode::Auto => Mode::Library,
        m => m,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let berth_name = match mode {
        Mode::Cli => "Berth (`berthctl pull`, fresh berthd)",
        _ => "Berth (`ImageStore::pull` library; berthctl has no `pull` yet)",
    };
    let mut berth = Samples::new(berth_name);
    let mut docker = Samples::new("docker pull");
    let mut podman = Samples::new("podman pull");
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut docker_ok = a.docker.is_some();
    let mut podman_ok = a.podman.is_some();
    let mut layers = 0;

    let docker_clean = |p: &str| {
        let _ = run_quiet(&cmd(p, &["rmi", "-f", &a.image]));
        let _ = run_quiet(&cmd(p, &["image", "prune", "-a", "-f"]));
    };
    let podman_clean = |p: &str| {
        let _ = run_quiet(&cmd(p, &["rmi", "-a", "-f"]));
    };
    if let Some(p) = &a.docker {
        docker_clean(p);
    }
    if let Some(p) = &a.podman {
        podman_clean(p);
    }
    for round in 0..a.runs {
        // Rotate the order so no case always follows another's disk writeback,
        // and flush dirty pages before each timed pull.
        for case in (0..3).map(|i| (i + round) % 3) {
            let _ = run_quiet(&["sync".to_string()]);
            match case {
                0 => {
                    // Berth, cold: a fresh state dir every time.
                    let d = match mode {
                        Mode::Cli => berth_cli(&a)?,
                        _ => {
                            let (d, n) = berth_library(&a, &rt)?;
                            layers = n;
                            d
                        }
                    };
                    eprintln!("round {round}: berth {}", fmt_dur(d));
                    berth.times.push(d);
                }
                1 => {
                    if let (true, Some(p)) = (docker_ok, &a.docker) {
                        match time_cmd(&cmd(p, &["pull", "-q", &a.image])) {
                            Ok(d) => {
                                eprintln!("round {round}: docker {}", fmt_dur(d));
                                docker.times.push(d)
                            }
                            Err(e) => {
                                docker_ok = false;
                                errors.push(("docker pull".into(), format!("{e:#}")));
                            }
                        }
                        docker_clean(p);
                    }
                }
                _ => {
                    if let (true, Some(p)) = (podman_ok, &a.podman) {
                        match time_cmd(&cmd(p, &["pull", "-q", "--tls-verify=false", &a.image])) {
                            Ok(d) => {
                                eprintln!("round {round}: podman {}", fmt_dur(d));
                                podman.times.push(d)
                            }
                            Err(e) => {
                                podman_ok = false;
                                errors.push(("podman pull".into(), format!("{e:#}")));
                            }
                        }
                        podman_clean(p);
                    }
                }
            }
        }
    }

    let b = berth.p50();
    let row = |s: &Samples| {
        vec![
            s.name.clone(),
            fmt_dur(s.p50()),
            fmt_dur(s.min()),
            fmt_dur(s.max()),
            format!("{:.2}×", ratio(s.p50(), b)),
        ]
    };
    let mut rows = vec![row(&berth)];
    let bound = a.bound.map(Duration::from_secs_f64);
    if let Some(bound) = bound {
        rows.push(vec![
            "lower bound (slowest stage alone, `bench-pull-bound`)".into(),
            fmt_dur(bound),
            "—".into(),
            "—".into(),
            format!("{:.2}×", ratio(bound, b)),
        ]);
    }
    for s in [&docker, &podman] {
        if !s.times.is_empty() {
            rows.push(row(s));
        }
    }
    for (name, why) in errors.iter().cloned().chain(a.unavailable.iter().map(|u| {
        let (n, w) = u.split_once('=').unwrap_or((u, "unavailable"));
        (n.to_string(), w.to_string())
    })) {
        rows.push(vec![
            name,
            "—".into(),
            "—".into(),
            "—".into(),
            format!(
                "could not run: {}",
                why.replace('|', "/").replace('\n', " ")
            ),
        ]);
    }
    let mut md = format!(
        "\n### Cold pull of `{}` ({} runs each, interleaved in rotating order, `sync` before each{})\n\n",
        a.image,
        a.runs,
        if layers > 0 {
            format!(", {layers} layers")
        } else {
            String::new()
        }
    );
    md.push_str(&table(
        &[
            "case",
            "median",
            "min",
            "max",
            "ratio vs Berth (median, case ÷ Berth)",
        ],
        &rows,
    ));
    md.push('\n');
    if docker.times.is_empty() {
        md.push_str("- Goal Berth ≤ 0.2× docker pull: docker did not run — **NOT MEASURED**\n");
    } else {
        let r = ratio(b, docker.p50());
        md.push_str(&format!(
            "- Goal Berth ≤ 0.2× `docker pull` (median): Berth/docker = {r:.2}× — **{}**\n",
            verdict(r <= 0.2)
        ));
    }
    match bound {
        Some(bound) => {
            let r = ratio(b, bound);
            md.push_str(&format!(
                "- Goal Berth ≤ 1.3× the machine's lower bound (median): Berth/bound = {r:.2}× — **{}**\n",
                verdict(r <= 1.3)
            ));
        }
        None => md.push_str(
            "- Goal Berth ≤ 1.3× the lower bound: bound not measured — **NOT MEASURED**\n",
        ),
    }
    if !podman.times.is_empty() {
        md.push_str(&format!(
            "- Berth/podman (median): {:.2}× (no goal)\n",
            ratio(b, podman.p50())
        ));
    }
    md.push_str("\nCommands (each run starts from an empty store):\n\n");
    match mode {
        Mode::Cli => md.push_str(&format!(
            "- Berth: `{} --agent unix:SOCK pull {}` against a freshly started `berthd` on empty temp dirs (only the berthctl command is timed)\n",
            a.berthctl.display(),
            a.image
        )),
        _ => md.push_str(
            "- Berth: `ImageStore::open(fresh_state_dir, sled_tree, RegistryClient::new(RegistryConfig::new()), Metrics::new())` then `.pull(&image, None)` is timed (the code `berthd` runs for a pull; `berthctl pull` is not in this branch yet)\n",
        ),
    }
    if let Some(p) = &a.docker {
        md.push_str(&format!(
            "- docker: `{p} pull -q {}`; between runs `{p} rmi -f …` + `{p} image prune -a -f`\n",
            a.image
        ));
    }
    if let Some(p) = &a.podman {
        md.push_str(&format!(
            "- podman: `{p} pull -q --tls-verify=false {}`; between runs `{p} rmi -a -f`\n",
            a.image
        ));
    }
    emit(a.out.as_deref(), &md)
}
