//! `berthctl fleet status|pause|resume`: the fleet this agent is in
//! (`berthd --fleet-etcd`): every host's group, revision, digests, readiness,
//! slot and last error, and the halted manifests; pausing the whole fleet, and
//! resuming it (which also clears every halt).

use std::process::ExitCode;

use anyhow::{bail, Result};
use berth_core::api::FleetStatus;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::error_text;
use crate::table::{print_table, short_digest};

/// The arguments of `berthctl fleet` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Fleet {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Every host of the fleet and the halted manifests.
    Status,
    /// No host takes a new rollout slot until `fleet resume`.
    Pause,
    /// Clears the pause and every halted manifest.
    Resume,
}

/// `GET /v1/fleet` (status) or `POST /v1/fleet/pause|resume`, then the fleet.
pub async fn run(cli: &Cli, args: &Fleet) -> Result<ExitCode> {
    let c = client(cli)?;
    let reply = match args.action {
        Action::Status => {
            c.request(Method::GET, "/v1/fleet", None, Bytes::new())
                .await?
        }
        Action::Pause => {
            c.request(Method::POST, "/v1/fleet/pause", None, Bytes::new())
                .await?
        }
        Action::Resume => {
            c.request(Method::POST, "/v1/fleet/resume", None, Bytes::new())
                .await?
        }
    };
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let f: FleetStatus = serde_json::from_slice(&reply.body)?;
    print(&f);
    Ok(ExitCode::SUCCESS)
}

fn print(f: &FleetStatus) {
    outln!(
        "fleet {} (seen from {}): max_parallel {}, groups {}, bake {}, auto_revert {}{}",
        f.fleet,
        f.host,
        f.max_parallel,
        if f.groups.is_empty() {
            "(one)".to_string()
        } else {
            f.groups.join(" → ")
        },
        f.bake,
        f.auto_revert,
        if f.paused { ", PAUSED" } else { "" }
    );
    if let (true, Some(e)) = (f.reachable, &f.error) {
        outln!("not in the fleet ({e}); no gated rollout starts");
    }
    if !f.reachable {
        let view = match &f.read_at {
            Some(at) => format!("showing the last view, read at {at}"),
            None => "no view yet".to_string(),
        };
        outln!(
            "etcd unreachable ({}): {view}; no gated rollout starts",
            f.error.as_deref().unwrap_or("no answer")
        );
    }
    let mut rows = vec![[
        "HOST".to_string(),
        "GROUP".into(),
        "REVISION".into(),
        "MANIFEST".into(),
        "READY".into(),
        "HEALTH".into(),
        "SLOT".into(),
        "DIGESTS".into(),
        "LAST ERROR / PENDING".into(),
    ]];
    for h in &f.hosts {
        let r = &h.record;
        let slot = if h.slot_held {
            "held".to_string()
        } else if let Some(p) = h.queue_position {
            format!("queued #{p}")
        } else {
            "-".into()
        };
        let health = if r.draining {
            "draining".to_string()
        } else if r.healthy {
            "healthy".into()
        } else {
            r.state.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        };
        rows.push([
            r.host.clone(),
            r.group.clone(),
            r.revision
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r.manifest_hash
                .as_deref()
                .map(short_digest)
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", r.ready, r.desired),
            health,
            slot,
            r.digests
                .iter()
                .map(|(s, d)| format!("{s}={}", short_digest(d)))
                .collect::<Vec<_>>()
                .join(","),
            r.last_error
                .clone()
                .or_else(|| r.pending.clone().map(|p| format!("pending: {p}")))
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ]);
    }
    print_table(&rows);
    if f.halted.is_empty() {
        return;
    }
    outln!();
    let mut rows = vec![[
        "HALTED MANIFEST".to_string(),
        "HOST".into(),
        "TIME".into(),
        "REASON".into(),
    ]];
    for h in &f.halted {
        rows.push([
            short_digest(&h.hash),
            h.host.clone(),
            h.time.clone(),
            h.reason.lines().next().unwrap_or_default().to_string(),
        ]);
    }
    print_table(&rows);
    outln!("(berthctl fleet resume clears the halts; so does committing a fix)");
}
