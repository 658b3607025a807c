//! `bench-scale starts`: start throughput of the runtime library (what
//! berthd calls per replica) with 1, 4, 16… concurrent starts: `COUNT`
//! `sleep` containers started by N threads, wall time to all started, then
//! all removed. Prints one line per concurrency as `N starts/s p50_ms`, read
//! by `bench/scaling.sh`; see bench/README.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use berth_agent::runtime::{ContainerConfig, Runtime, RuntimePaths};
use berth_bench::Samples;
use clap::{Parser, Subcommand};

const CGROUP_PARENT: &str = "berth-bench";

#[derive(Parser, Debug)]
#[command(about = "Scaling curves of the runtime: concurrent starts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Starts COUNT `sleep` containers with each concurrency, then removes them.
    Starts {
        /// A busybox rootfs (the single overlay lowerdir), from `bench-start rootfs`.
        #[arg(long)]
        rootfs: PathBuf,
        /// The `berth-monitor` binary.
        #[arg(long)]
        monitor: PathBuf,
        /// The runtime's state dir (created).
        #[arg(long)]
        state: PathBuf,
        /// Containers per round.
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// Concurrencies to measure, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Starts {
            rootfs,
            monitor,
            state,
            count,
            concurrency,
        } => {
            let rt = Runtime::new(RuntimePaths::new(
                &state,
                state.join("run"),
                CGROUP_PARENT,
                &monitor,
            ));
            // One warm-up round so the first measured one does not pay for
            // the cgroup parent and cold page cache.
            round(&rt, &rootfs, 4, 2, "w")?;
            for (i, n) in concurrency.iter().enumerate() {
                let (wall, starts) = round(&rt, &rootfs, count, *n, &format!("r{i}"))?;
                println!(
                    "{n} {:.1} {:.1}",
                    count as f64 / wall.as_secs_f64(),
                    starts.p50().as_secs_f64() * 1000.0
                );
            }
            Ok(())
        }
    }
}

/// Starts `count` containers with `threads` workers (each takes the next
/// number until none is left); returns the wall time to all started and
/// each start's latency. Every container is removed before returning, also
/// after a failure.
fn round(
    rt: &Runtime,
    rootfs: &Path,
    count: usize,
    threads: usize,
    prefix: &str,
) -> Result<(Duration, Samples)> {
    let next = AtomicUsize::new(0);
    let started: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let latencies: Mutex<Samples> = Mutex::new(Samples::new("start"));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let id = format!("scale-{prefix}-{i}");
                let cfg = ContainerConfig::new(
                    &id,
                    vec![rootfs.to_path_buf()],
                    vec!["/bin/sleep".into(), "1000".into()],
                );
                let t = Instant::now();
                match rt.create_and_start(&cfg) {
                    Ok(_) => {
                        lock(&latencies).times.push(t.elapsed());
                        lock(&started).push(id);
                    }
                    Err(e) => lock(&errors).push(format!("{id}: {e}")),
                }
            });
        }
    });
    let wall = t0.elapsed();
    let ids = std::mem::take(&mut *lock(&started));
    let mut removal_errors = Vec::new();
    for id in &ids {
        if let Err(e) = rt.remove(id) {
            removal_errors.push(format!("{id}: {e}"));
        }
    }
    let errors = std::mem::take(&mut *lock(&errors));
    if !errors.is_empty() || !removal_errors.is_empty() {
        bail!(
            "{} starts failed ({}), {} removals failed ({})",
            errors.len(),
            errors.first().map(String::as_str).unwrap_or(""),
            removal_errors.len(),
            removal_errors.first().map(String::as_str).unwrap_or("")
        );
    }
    let samples = std::mem::replace(&mut *lock(&latencies), Samples::new("start"));
    Ok((wall, samples))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
