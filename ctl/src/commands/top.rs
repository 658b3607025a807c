//! `berthctl top`: CPU, memory and pids per running container, from two reads
//! of `GET /v1/stats` one interval apart (CPU % = CPU time used / wall time,
//! 100 % = one core), as `docker stats --no-stream` shows them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_core::api::ContainerStats;
use clap::Args;
use hyper::Method;

use super::call;
use crate::cli::Cli;
use crate::table::{human_bytes, print_table};

/// The arguments of `berthctl top` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Top {
    /// How long to measure CPU use over, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s")]
    interval: String,
}

/// One row of `top`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopRow {
    #[serde(flatten)]
    pub stats: ContainerStats,
    /// CPU use over the interval; 100.0 is one core.
    pub cpu_percent: f64,
}

/// CPU percent of each container in `after` that was also in `before`, over
/// `elapsed` (pure; containers new in `after` show 0).
pub fn rows(
    before: &[ContainerStats],
    after: Vec<ContainerStats>,
    elapsed: Duration,
) -> Vec<TopRow> {
    let prev: BTreeMap<&str, u64> = before.iter().map(|s| (s.id.as_str(), s.cpu_ns)).collect();
    let secs = elapsed.as_secs_f64().max(1e-6);
    after
        .into_iter()
        .map(|s| {
            let used = prev
                .get(s.id.as_str())
                .map(|p| s.cpu_ns.saturating_sub(*p))
                .unwrap_or(0);
            TopRow {
                cpu_percent: used as f64 / 1e9 / secs * 100.0,
                stats: s,
            }
        })
        .collect()
}

async fn read(cli: &Cli) -> Result<Vec<ContainerStats>> {
    let reply = call(cli, Method::GET, "/v1/stats").await?;
    serde_json::from_slice(&reply.body).context("decoding stats")
}

/// Runs `top` once over `--interval`.
pub async fn run(cli: &Cli, args: &Top) -> Result<ExitCode> {
    let interval = berth_core::units::parse_duration(&args.interval)
        .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    let before = read(cli).await?;
    let t0 = Instant::now();
    tokio::time::sleep(interval).await;
    let after = read(cli).await?;
    let rows = rows(&before, after, t0.elapsed());
    if cli.json() {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![[
        "CONTAINER".to_string(),
        "SERVICE".into(),
        "CPU %".into(),
        "MEM USAGE / LIMIT".into(),
        "MEM %".into(),
        "PIDS".into(),
    ]];
    for r in &rows {
        let s = &r.stats;
        let (limit, pct) = match s.memory_limit_bytes {
            Some(l) if l > 0 => (
                human_bytes(l),
                format!("{:.1}%", s.memory_bytes as f64 / l as f64 * 100.0),
            ),
            _ => ("-".to_string(), "-".to_string()),
        };
        table.push([
            s.id.clone(),
            s.service.clone(),
            format!("{:.1}%", r.cpu_percent),
            format!("{} / {limit}", human_bytes(s.memory_bytes)),
            pct,
            s.pids.to_string(),
        ]);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(id: &str, cpu_ns: u64) -> ContainerStats {
        ContainerStats {
            id: id.into(),
            service: "web".into(),
            cpu_ns,
            memory_bytes: 1,
            memory_limit_bytes: None,
            pids: 1,
            read_at: String::new(),
        }
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let before = [s("a", 1_000_000_000), s("gone", 5)];
        let after = vec![s("a", 1_500_000_000), s("new", 9_000_000_000)];
        let r = rows(&before, after, Duration::from_millis(500));
        assert_eq!(r.len(), 2);
        assert!(
            (r[0].cpu_percent - 100.0).abs() < 1e-9,
            "{}",
            r[0].cpu_percent
        );
        assert_eq!(r[1].cpu_percent, 0.0);
    }
}
