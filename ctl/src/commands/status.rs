//! `berthctl status` (alias `ps`): the agent's version, current revision and
//! readiness, what it rebuilt after losing its state database, each
//! service's ready/desired replicas, image, restarts and last error, then
//! every container; with `-o json` one document of both.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_core::api::{ContainerView, StatusResponse};
use bytes::Bytes;
use hyper::Method;

use super::{call, client};
use crate::cli::Cli;
use crate::client::error_text;
use crate::table::{print_table, short_digest};

/// `GET /v1/status` and `GET /v1/containers`, printed together.
pub async fn run(cli: &Cli) -> Result<ExitCode> {
    let reply = call(cli, Method::GET, "/v1/status").await?;
    let containers = client(cli)?
        .request(Method::GET, "/v1/containers", None, Bytes::new())
        .await?;
    if cli.json() {
        // One document: the agent's status plus every container the
        // table lists (docs/cli-json.md names the fields).
        let mut doc: serde_json::Value =
            serde_json::from_slice(&reply.body).context("decoding status")?;
        if !containers.status.is_success() {
            bail!("listing containers: {}", error_text(&containers.body));
        }
        let list: serde_json::Value =
            serde_json::from_slice(&containers.body).context("decoding containers")?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("containers".into(), list);
        }
        outln!("{doc}");
    } else {
        let status: StatusResponse =
            serde_json::from_slice(&reply.body).context("decoding status")?;
        print_status(&status);
        if containers.status.is_success() {
            let list: Vec<ContainerView> =
                serde_json::from_slice(&containers.body).context("decoding containers")?;
            if !list.is_empty() {
                outln!();
                print_containers(&list);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &StatusResponse) {
    let rev = s
        .revision
        .as_ref()
        .map(|r| format!("revision {} ({}, {})", r.number, r.source, r.state))
        .unwrap_or_else(|| "no revision applied".into());
    outln!(
        "berthd {} — {}{}{}",
        s.agent.version,
        rev,
        if s.agent.ready { "" } else { " — not ready" },
        if s.agent.draining {
            " — DRAINING"
        } else {
            ""
        }
    );
    if let Some(err) = &s.source_error {
        outln!("source error: {err}");
    }
    if let Some(r) = &s.rebuilt {
        outln!(
            "state rebuilt at {} ({}): {}",
            r.at,
            r.reason.as_deref().unwrap_or("records were missing"),
            r.summary()
        );
        if let Some(aside) = &r.moved_aside {
            outln!("  old database kept at {aside}");
        }
        for p in &r.problems {
            outln!("  {p}");
        }
    }
    if let Some(f) = &s.fleet {
        outln!(
            "fleet {} as {} (group {}): {}{}",
            f.fleet,
            f.host,
            f.group,
            if let (true, Some(e)) = (f.reachable, &f.error) {
                format!("NOT JOINED, no new rollout starts ({e})")
            } else if f.reachable {
                "etcd reachable".to_string()
            } else {
                format!(
                    "etcd UNREACHABLE, no new rollout starts ({})",
                    f.error.as_deref().unwrap_or("no answer yet")
                )
            },
            if f.slot_held {
                ", holding a rollout slot"
            } else {
                ""
            }
        );
        if let Some(p) = &f.pending {
            outln!("pending manifest: {p}");
        }
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "READY".into(),
        "IMAGE".into(),
        "RESTARTS".into(),
        "LAST ERROR".into(),
    ]];
    for svc in &s.services {
        let image = match &svc.digest {
            Some(d) => format!("{} ({})", svc.image, short_digest(d)),
            None => svc.image.clone(),
        };
        rows.push([
            svc.name.clone(),
            format!("{}/{}", svc.replicas_ready, svc.replicas_desired),
            image,
            svc.restarts.to_string(),
            svc.last_error.clone().unwrap_or_default(),
        ]);
    }
    print_table(&rows);
}

fn print_containers(list: &[ContainerView]) {
    let mut rows = vec![[
        "CONTAINER".to_string(),
        "SERVICE".into(),
        "STATE".into(),
        "HEALTH".into(),
        "IP".into(),
        "PORTS".into(),
        "REV".into(),
    ]];
    for c in list {
        let state = match (c.state.as_str(), c.exit_code) {
            ("exited", Some(code)) if c.oom_killed => format!("exited ({code}, OOM)"),
            ("exited", Some(code)) => format!("exited ({code})"),
            (s, _) => s.to_string(),
        };
        rows.push([
            c.id.clone(),
            c.service.clone(),
            state,
            c.health.clone(),
            c.ip.clone().unwrap_or_else(|| "-".into()),
            c.ports.join(", "),
            c.revision.map(|r| r.to_string()).unwrap_or_default(),
        ]);
    }
    print_table(&rows);
}
