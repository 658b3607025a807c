//! `apply --wait`: follows the rollout of the newest revision, printing each
//! service's ready/desired count (and last error or what it waits for) as it
//! changes, until the revision completes, fails (or is rolled back), or the
//! timeout passes. A failure prints the agent's reason: the replica's exit or
//! the health probe's last output, or the image error.

use berth_core::vocab::RevisionState;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_core::api::{Event, RevisionInfo, StatusResponse};
use bytes::Bytes;
use hyper::Method;

use crate::client::Client;

pub async fn wait_for_rollout(client: &Client, timeout: Duration, json: bool) -> Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let revs: Vec<RevisionInfo> = get(client, "/v1/revisions").await?;
    let Some(target) = revs.last().map(|r| r.number) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut last_line = String::new();
    loop {
        let revs: Vec<RevisionInfo> = get(client, "/v1/revisions").await?;
        let status: StatusResponse = get(client, "/v1/status").await?;
        let line = status
            .services
            .iter()
            .map(|s| {
                let err = s
                    .last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!(
                    "{} {}/{}{err}",
                    s.name, s.replicas_ready, s.replicas_desired
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if line != last_line && !json {
            eprintln!("revision {target}: {line}");
            last_line = line;
        }
        let rev = revs.iter().find(|r| r.number == target);
        match rev.map(|r| r.state.as_str()) {
            Some("complete") => {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({ "revision": target, "state": "complete" })
                    );
                } else {
                    outln!("revision {target} rolled out");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some("failed") => {
                let newer = revs
                    .iter()
                    .filter(|r| r.number > target)
                    .map(|r| r.source.clone())
                    .next_back();
                let errors = failure_reasons(client, target, &status).await;
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({ "revision": target, "state": "failed", "errors": errors })
                    );
                }
                eprintln!("revision {target} failed: {}", errors.join("; "));
                if let Some(src) = newer {
                    eprintln!("the agent recorded a newer revision ({src})");
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if revs.last().map(|r| r.number) != Some(target)
            && rev.is_some_and(|r| r.state != RevisionState::RollingOut)
        {
            eprintln!(
                "revision {target} was superseded by revision {}",
                revs.last().map(|r| r.number).unwrap_or(0)
            );
            return Ok(ExitCode::FAILURE);
        }
        if Instant::now() > deadline {
            eprintln!("timed out after {timeout:?} waiting for revision {target}");
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Why `target` failed, per service: the agent's `rollout-failed` events for
/// it (they outlive a rollback that drops the service from status), else
/// each service's last error.
async fn failure_reasons(client: &Client, target: u64, status: &StatusResponse) -> Vec<String> {
    let prefix = format!("revision {target}: ");
    let events: Vec<Event> = get(client, "/v1/events?kind=rollout-failed")
        .await
        .unwrap_or_default();
    let from_events: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "rollout-failed")
        .filter_map(|e| {
            let reason = e.message.strip_prefix(&prefix)?;
            Some(match &e.service {
                Some(s) => format!("{s}: {reason}"),
                None => reason.to_string(),
            })
        })
        .collect();
    if !from_events.is_empty() {
        return from_events;
    }
    status
        .services
        .iter()
        .filter_map(|s| s.last_error.as_ref().map(|e| format!("{}: {e}", s.name)))
        .collect()
}

async fn get<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<T> {
    let reply = client
        .request(Method::GET, path, None, Bytes::new())
        .await?;
    if !reply.status.is_success() {
        anyhow::bail!("{}", crate::error_text(&reply.body));
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("decoding {path}"))
}
