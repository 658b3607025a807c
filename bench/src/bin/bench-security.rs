//! `bench-security`: runs one command in a Berth container with the defaults
//! a manifest service gets (the runtime library, as berthd uses it) and
//! prints its output, for `scripts/security-compare.sh`, which runs the same
//! probe under `docker run` and prints both side by side.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_agent::runtime::crilog::read_entries;
use berth_agent::runtime::{ContainerConfig, ContainerState, Mount, Runtime, RuntimePaths};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Runs a command in a Berth container and prints its output")]
struct Cli {
    /// The image's root filesystem (one lowerdir).
    #[arg(long)]
    rootfs: PathBuf,
    /// The state directory (containers are created and removed there).
    #[arg(long)]
    state: PathBuf,
    /// The berth-monitor binary.
    #[arg(long)]
    monitor: PathBuf,
    /// `HOST:TARGET[:ro]` bind mounts.
    #[arg(long)]
    volume: Vec<String>,
    /// `auto`: its own user namespace (berthd's default, a 65536-id range
    /// from the default pool); `host`: the host's.
    #[arg(long, default_value = "auto", value_parser = ["auto", "host"])]
    userns: String,
    /// The command.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

fn main() -> Result<()> {
    let a = Cli::parse();
    let rt = Runtime::new(RuntimePaths::new(
        &a.state,
        a.state.join("run"),
        "berth-bench",
        &a.monitor,
    ));
    let id = format!("security-probe-{}", std::process::id());
    let mut cfg = ContainerConfig::new(&id, vec![a.rootfs.clone()], a.cmd.clone());
    if a.userns == "auto" {
        cfg.userns = Some(berth_agent::runtime::userns::IdRange {
            base: berth_agent::runtime::userns::DEFAULT_POOL_START,
            len: berth_agent::runtime::userns::RANGE_LEN,
        });
    }
    for v in &a.volume {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, target, ro) = match parts[..] {
            [h, t] => (h, t, false),
            [h, t, "ro"] => (h, t, true),
            _ => bail!("--volume {v}: HOST:TARGET[:ro]"),
        };
        cfg.mounts.push(Mount::bind(host, target, ro));
    }
    rt.create_and_start(&cfg)
        .with_context(|| format!("create_and_start {id}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(rt.state(&id), ContainerState::Exited { .. }) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for e in read_entries(&rt.logs(&id)?) {
        println!("{}", String::from_utf8_lossy(&e.line));
    }
    rt.remove(&id).with_context(|| format!("remove {id}"))?;
    Ok(())
}
