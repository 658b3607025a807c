//! `apply --wait`, `rollback --wait`, `restart --wait`: follow the rollout of
//! the newest revision on the agent's event stream, showing per service how
//! many replicas run the new spec, how many are ready and how many old ones
//! still drain (redrawn in place on a terminal, one line per change
//! otherwise), until the revision completes (every old replica gone), fails
//! (or is rolled back), is superseded, or the timeout passes. A failure
//! prints the agent's reason: the replica's exit or the health probe's last
//! output, or the image error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_core::api::{ContainerView, Event, RevisionInfo, ServiceStatus, StatusResponse};
use berth_core::vocab::RevisionState;
use bytes::Bytes;
use hyper::Method;

use crate::client::Client;

/// Longest wait between refreshes when no event arrives.
const REFRESH: Duration = Duration::from_secs(1);

/// One service's progress in a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub service: String,
    pub desired: u32,
    pub updated: u32,
    pub ready: u32,
    /// Replicas being drained and stopped (old ones, or all of a removed service).
    pub draining: u32,
    /// The service's last error, or what it waits for.
    pub note: Option<String>,
}

impl Progress {
    /// `web 2/3 ready, 3/3 updated, 1 draining (waiting for db)`; a removed
    /// service that still drains: `old 2 draining (removed)`.
    pub fn line(&self) -> String {
        let note = self
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        if self.desired == 0 && self.updated == 0 && self.ready == 0 {
            return format!(
                "{} {} draining (removed){note}",
                self.service, self.draining
            );
        }
        let draining = if self.draining > 0 {
            format!(", {} draining", self.draining)
        } else {
            String::new()
        };
        format!(
            "{} {}/{} ready, {}/{} updated{draining}{note}",
            self.service, self.ready, self.desired, self.updated, self.desired
        )
    }
}

/// Each service's progress from the agent's status and containers: the
/// services of the current revision, then removed services that still have
/// containers draining.
pub fn progress(services: &[ServiceStatus], containers: &[ContainerView]) -> Vec<Progress> {
    let mut draining: BTreeMap<&str, u32> = BTreeMap::new();
    for c in containers.iter().filter(|c| c.health == "draining") {
        *draining.entry(c.service.as_str()).or_default() += 1;
    }
    let mut out: Vec<Progress> = services
        .iter()
        .map(|s| Progress {
            service: s.name.clone(),
            desired: s.replicas_desired,
            updated: s.replicas_updated,
            ready: s.replicas_ready,
            draining: draining.remove(s.name.as_str()).unwrap_or(0),
            note: s.last_error.clone(),
        })
        .collect();
    let mut removed: BTreeMap<&str, u32> = BTreeMap::new();
    for c in containers {
        if !services.iter().any(|s| s.name == c.service) {
            *removed.entry(c.service.as_str()).or_default() += 1;
        }
    }
    out.extend(removed.into_iter().map(|(service, n)| Progress {
        service: service.to_string(),
        desired: 0,
        updated: 0,
        ready: 0,
        draining: n,
        note: None,
    }));
    out
}

/// Where progress goes: redrawn in place on a terminal, else one line per change.
struct Display {
    terminal: bool,
    json: bool,
    /// Lines drawn last (terminal) or the last line printed (plain).
    last: Vec<String>,
}

impl Display {
    fn show(&mut self, target: u64, lines: Vec<String>) {
        if self.json || lines == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // Up over the previous block, clear it, draw the new one.
            if !self.last.is_empty() {
                let _ = write!(err, "\x1b[{}A\x1b[J", self.last.len());
            }
            for l in &lines {
                let _ = writeln!(err, "{l}");
            }
        } else if !lines.is_empty() {
            // (Nothing left to show — an empty manifest — prints no line.)
            let _ = writeln!(err, "revision {target}: {}", lines.join(", "));
        }
        self.last = lines;
    }
}

/// Follows the newest revision's rollout (see the module doc).
pub async fn wait_for_rollout(client: &Client, timeout: Duration, json: bool) -> Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let revs: Vec<RevisionInfo> = get(client, "/v1/revisions").await?;
    let Some(target) = revs.last().map(|r| r.number) else {
        return Ok(ExitCode::SUCCESS);
    };
    // Every event is a reason to look again; without events, every REFRESH.
    let changed = Arc::new(tokio::sync::Notify::new());
    let follower = {
        let (client, changed) = (client.clone(), changed.clone());
        tokio::spawn(async move {
            let _ = client
                .stream_lines("/v1/events?follow=true&since=1s", |_| {
                    changed.notify_one();
                    Ok(())
                })
                .await;
        })
    };
    let mut display = Display {
        terminal: std::io::stderr().is_terminal(),
        json,
        last: Vec::new(),
    };
    let result = loop {
        let revs: Vec<RevisionInfo> = get(client, "/v1/revisions").await?;
        let status: StatusResponse = get(client, "/v1/status").await?;
        let containers: Vec<ContainerView> = get(client, "/v1/containers").await?;
        let lines: Vec<String> = progress(&status.services, &containers)
            .iter()
            .map(Progress::line)
            .collect();
        display.show(target, lines);
        let rev = revs.iter().find(|r| r.number == target);
        match rev.map(|r| r.state) {
            Some(RevisionState::Complete) => {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({ "revision": target, "state": "complete" })
                    );
                } else {
                    outln!("revision {target} rolled out");
                }
                break ExitCode::SUCCESS;
            }
            Some(RevisionState::Failed) => {
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
                break ExitCode::FAILURE;
            }
            Some(RevisionState::Superseded) => {
                eprintln!(
                    "revision {target} was superseded by revision {}",
                    revs.last().map(|r| r.number).unwrap_or(0)
                );
                break ExitCode::FAILURE;
            }
            _ => {}
        }
        if Instant::now() > deadline {
            eprintln!("timed out after {timeout:?} waiting for revision {target}");
            break ExitCode::FAILURE;
        }
        let wait = REFRESH.min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    };
    follower.abort();
    Ok(result)
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
        anyhow::bail!("{}", crate::client::error_text(&reply.body));
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("decoding {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, desired: u32, ready: u32, updated: u32) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            image: "r/x:1".into(),
            digest: None,
            replicas_desired: desired,
            replicas_ready: ready,
            replicas_updated: updated,
            restarts: 0,
            last_error: None,
        }
    }

    fn container(service: &str, health: &str) -> ContainerView {
        ContainerView {
            id: format!("{service}-1"),
            service: service.into(),
            image: "r/x:1".into(),
            state: "running".into(),
            health: health.into(),
            exit_code: None,
            oom_killed: false,
            pid: None,
            ip: None,
            ports: vec![],
            exposed_ports: vec![],
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            revision: None,
            spec_hash: String::new(),
        }
    }

    #[test]
    fn progress_lines_count_updated_ready_and_draining_replicas() {
        let mut db = service("db", 1, 0, 0);
        db.last_error = Some("waiting for cache (0/1 ready)".into());
        let got: Vec<String> = progress(
            &[service("web", 3, 2, 3), db],
            &[
                container("web", "healthy"),
                container("web", "draining"),
                container("old", "draining"),
                container("old", "draining"),
            ],
        )
        .iter()
        .map(Progress::line)
        .collect();
        assert_eq!(
            got,
            [
                "web 2/3 ready, 3/3 updated, 1 draining",
                "db 0/1 ready, 0/1 updated (waiting for cache (0/1 ready))",
                "old 2 draining (removed)",
            ]
        );
    }
}
