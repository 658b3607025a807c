//! Health checks of running replicas: http, tcp and exec, with interval,
//! timeout, retries and start_period. http/tcp connect to the container's own
//! loopback from a short-lived thread that joined only the container's network
//! namespace; exec runs inside the container through the runtime. A status
//! change wakes the reconciler. Which check applies is [`effective`]: the
//! manifest's `[health]`, else the image's `Healthcheck` ([`from_image`]).

use berth_core::vocab::EventKind;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use berth_core::manifest::{Health, HealthCheck, OnUnhealthy};

use crate::control::Agent;
use crate::launch::ImageHealthcheck;
pub use crate::live::{HealthLive, HealthStatus};

/// Docker's interval for an image `Healthcheck` that leaves it 0.
pub const IMAGE_INTERVAL: Duration = Duration::from_secs(30);
/// Docker's timeout for an image `Healthcheck` that leaves it 0.
pub const IMAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Docker's retries for an image `Healthcheck` that leaves them 0.
pub const IMAGE_RETRIES: u32 = 3;
/// Shortest interval and timeout taken from an image (the manifest's minimums).
const MIN_IMAGE_INTERVAL: Duration = Duration::from_millis(100);
const MIN_IMAGE_TIMEOUT: Duration = Duration::from_millis(10);
pub use crate::labels::LABEL_IMAGE_HEALTH;

/// The check an image's `Healthcheck` asks for, as Docker runs it:
/// `["CMD", arg…]` execs the args; `["CMD-SHELL", cmd…]` execs `/bin/sh -c
/// cmd…` (Docker does not use the image's `Shell` here: it is not part of the
/// container's config); `["NONE"]`, an empty
/// test or an unknown first word is no check. Durations left 0 take Docker's
/// defaults (interval 30s, timeout 30s, start period 0), retries 0 take 3;
/// interval and timeout are at least the manifest's minimums (100ms, 10ms).
/// A replica turning unhealthy is replaced, as with the manifest's default
/// `on_unhealthy`.
pub fn from_image(hc: Option<&ImageHealthcheck>) -> Option<Health> {
    let hc = hc?;
    let (kind, rest) = hc.test.split_first()?;
    let command: Vec<String> = match kind.as_str() {
        "CMD" => rest.to_vec(),
        "CMD-SHELL" => ["/bin/sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain(rest.iter().cloned())
            .collect(),
        _ => return None,
    };
    let or = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
    Some(Health {
        check: HealthCheck::Exec { command },
        interval: or(hc.interval, IMAGE_INTERVAL).max(MIN_IMAGE_INTERVAL),
        timeout: or(hc.timeout, IMAGE_TIMEOUT).max(MIN_IMAGE_TIMEOUT),
        retries: if hc.retries == 0 {
            IMAGE_RETRIES
        } else {
            hc.retries
        },
        start_period: hc.start_period,
        on_unhealthy: OnUnhealthy::Restart,
    })
}

/// The health check that applies: the manifest's `[health]` wins whole;
/// without one, the image's.
pub fn effective(manifest: Option<&Health>, image: Option<&Health>) -> Option<Health> {
    manifest.or(image).cloned()
}

/// The health check of a container: [`effective`] of the manifest's and the
/// image check recorded in its [`LABEL_IMAGE_HEALTH`] label when it started.
/// Every reader of a replica's health goes through here.
pub fn of_container(
    manifest: Option<&Health>,
    labels: &BTreeMap<String, String>,
) -> Option<Health> {
    if manifest.is_some() {
        return manifest.cloned();
    }
    let image = labels
        .get(LABEL_IMAGE_HEALTH)
        .and_then(|l| serde_json::from_str::<Health>(l).ok());
    effective(None, image.as_ref())
}

/// Why one check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot enter the container's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("connect to port {port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("http {path}: {0}", path = .1)]
    Http(String, String),
    #[error("exec: {0}")]
    Exec(String),
    #[error("check thread failed")]
    Thread,
}

/// Longest probe output carried into status, events and rollout failures.
pub const SUMMARY_CHARS: usize = 240;

/// A probe's output as one line for status and events: whitespace runs
/// (newlines included) become one space, and only the last
/// [`SUMMARY_CHARS`] characters are kept (an exec check's stderr tail is
/// where its reason usually is), with `…` marking the cut.
pub fn summary(output: &str) -> String {
    let line = output.split_whitespace().collect::<Vec<_>>().join(" ");
    let count = line.chars().count();
    if count <= SUMMARY_CHARS {
        return line;
    }
    let tail: String = line.chars().skip(count - SUMMARY_CHARS).collect();
    format!("…{tail}")
}

/// Runs `f` on a fresh thread that has joined the network namespace of `pid`.
/// The thread ends afterwards, so no pooled thread is left in a foreign netns.
fn in_netns<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
) -> Result<T, CheckError> {
    let handle = std::thread::Builder::new()
        .name("berth-health".into())
        .spawn(move || {
            let ns =
                std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(CheckError::Netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| CheckError::Netns(std::io::Error::from(e)))?;
            f()
        })
        .map_err(|_| CheckError::Thread)?;
    handle.join().map_err(|_| CheckError::Thread)?
}

fn tcp_check(pid: i32, port: u16, timeout: Duration) -> Result<String, CheckError> {
    in_netns(pid, move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| CheckError::Connect { port, source })?;
        Ok(format!("port {port} accepts connections"))
    })
}

fn http_check(pid: i32, port: u16, path: String, timeout: Duration) -> Result<String, CheckError> {
    in_netns(pid, move || {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| CheckError::Connect { port, source })?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(left));
        let _ = s.set_write_timeout(Some(left));
        let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .map_err(|e| CheckError::Http(e.to_string(), path.clone()))?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            match s.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(CheckError::Http(e.to_string(), path.clone())),
            }
        }
        let line = String::from_utf8_lossy(&head[..n]).to_string();
        let code: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        if (200..400).contains(&code) {
            Ok(format!("HTTP {code}"))
        } else {
            Err(CheckError::Http(
                format!("status line {:?}", line.lines().next().unwrap_or("")),
                path.clone(),
            ))
        }
    })
}

/// Runs one check of `health` against container `id` (PID 1 = `pid`).
pub async fn check_once(
    agent: &Arc<Agent>,
    id: &str,
    pid: i32,
    health: &Health,
) -> Result<String, CheckError> {
    let timeout = health.timeout;
    match &health.check {
        HealthCheck::Tcp { port } => {
            let port = *port;
            tokio::task::spawn_blocking(move || tcp_check(pid, port, timeout))
                .await
                .map_err(|_| CheckError::Thread)?
        }
        HealthCheck::Http { port, path } => {
            let (port, path) = (*port, path.clone());
            tokio::task::spawn_blocking(move || http_check(pid, port, path, timeout))
                .await
                .map_err(|_| CheckError::Thread)?
        }
        HealthCheck::Exec { command } => {
            let (rt, id, command) = (agent.runtime.clone(), id.to_string(), command.clone());
            let out = tokio::task::spawn_blocking(move || rt.exec(&id, &command, timeout))
                .await
                .map_err(|_| CheckError::Thread)?
                .map_err(|e| CheckError::Exec(e.to_string()))?;
            if out.timed_out {
                Err(CheckError::Exec(format!("timed out after {timeout:?}")))
            } else if out.code == 0 {
                Ok(out.output)
            } else {
                Err(CheckError::Exec(format!(
                    "exit code {}: {}",
                    out.code,
                    out.output.trim()
                )))
            }
        }
    }
}

/// Starts the checker of one running container, unless one runs already.
pub fn ensure_checker(agent: &Arc<Agent>, service: &str, id: &str, pid: i32, health: &Health) {
    let cancel = {
        let mut live = agent.live();
        if live.health.contains_key(id) {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        live.health.insert(
            id.to_string(),
            HealthLive {
                status: HealthStatus::Starting,
                failures: 0,
                last_output: None,
                cancel: cancel.clone(),
            },
        );
        cancel
    };
    let (agent, service, id, health) = (
        agent.clone(),
        service.to_string(),
        id.to_string(),
        health.clone(),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        // The first probe comes soon after start, then every interval.
        let mut wait = health.interval.min(Duration::from_millis(250));
        loop {
            tokio::time::sleep(wait).await;
            wait = health.interval;
            if cancel.load(Ordering::SeqCst) {
                return;
            }
            let result = check_once(&agent, &id, pid, &health).await;
            if cancel.load(Ordering::SeqCst) {
                return;
            }
            let in_start_period = started.elapsed() < health.start_period;
            let changed = {
                let mut live = agent.live();
                let Some(h) = live.health.get_mut(&id) else {
                    return;
                };
                let before = h.status;
                match &result {
                    Ok(out) => {
                        h.failures = 0;
                        h.status = HealthStatus::Healthy;
                        h.last_output = Some(out.clone());
                    }
                    Err(e) => {
                        h.last_output = Some(e.to_string());
                        if !in_start_period {
                            h.failures += 1;
                            if h.failures >= health.retries {
                                h.status = HealthStatus::Unhealthy;
                            }
                        }
                    }
                }
                before != h.status
            };
            if let Err(e) = &result {
                if !in_start_period {
                    agent.metrics.health_check_failed(&service);
                }
                tracing::debug!(container = %id, error = %e, "health check failed");
            }
            if changed {
                let status = agent
                    .live()
                    .health
                    .get(&id)
                    .map(|h| h.status)
                    .unwrap_or(HealthStatus::Starting);
                agent.emit_container(
                    EventKind::Health,
                    &service,
                    &id,
                    format!("{id} is {}", status.as_str()),
                );
                agent.wake.notify_one();
            }
        }
    });
}

/// Stops and forgets the checker of a container.
pub fn forget(agent: &Agent, id: &str) {
    if let Some(h) = agent.live().health.remove(id) {
        h.cancel.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hc(
        test: &[&str],
        interval_ms: u64,
        timeout_ms: u64,
        start_ms: u64,
        retries: u32,
    ) -> ImageHealthcheck {
        ImageHealthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            start_period: Duration::from_millis(start_ms),
            retries,
        }
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Each row is how Docker's daemon (daemon/health.go) runs the image's
    /// `Healthcheck`.
    #[test]
    fn image_healthchecks_convert_as_docker_runs_them() {
        type Row<'a> = (
            ImageHealthcheck,
            Option<(&'a [&'a str], u64, u64, u64, u32)>,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (
                hc(&["CMD", "pg_isready", "-q"], 0, 0, 0, 0),
                Some((&["pg_isready", "-q"], 30_000, 30_000, 0, 3)),
                "CMD: exec the args; 0 = defaults",
            ),
            (
                hc(
                    &["CMD-SHELL", "curl -f localhost || exit 1"],
                    2000,
                    500,
                    5000,
                    4,
                ),
                Some((
                    &["/bin/sh", "-c", "curl -f localhost || exit 1"],
                    2000,
                    500,
                    5000,
                    4,
                )),
                "CMD-SHELL: /bin/sh -c",
            ),
            (
                hc(&["NONE"], 1000, 0, 0, 0),
                None,
                "NONE disables the check",
            ),
            (hc(&[], 1000, 0, 0, 0), None, "an empty test: none"),
            (
                hc(&["CMDX", "true"], 0, 0, 0, 0),
                None,
                "an unknown type: none (Docker logs it)",
            ),
            (
                hc(&["CMD"], 0, 0, 0, 0),
                Some((&[], 30_000, 30_000, 0, 3)),
                "CMD without args: a check that fails",
            ),
            (
                hc(&["CMD", "true"], 1, 1, 0, 1),
                Some((&["true"], 100, 10, 0, 1)),
                "tiny durations: the manifest's minimums",
            ),
        ];
        for (hc, want, rule) in rows {
            let got = from_image(Some(&hc));
            let want = want.map(|(cmd, i, t, s, r)| Health {
                check: HealthCheck::Exec { command: v(cmd) },
                interval: Duration::from_millis(i),
                timeout: Duration::from_millis(t),
                start_period: Duration::from_millis(s),
                retries: r,
                on_unhealthy: OnUnhealthy::Restart,
            });
            assert_eq!(got, want, "{rule}");
        }
        assert_eq!(from_image(None), None, "no Healthcheck in the image");
    }

    #[test]
    fn the_manifest_check_wins_else_the_image_label() {
        let manifest = Health {
            check: HealthCheck::Tcp { port: 80 },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 1,
            start_period: Duration::ZERO,
            on_unhealthy: OnUnhealthy::Ignore,
        };
        let image = from_image(Some(&hc(&["CMD", "true"], 0, 0, 0, 0))).unwrap();
        let labels = BTreeMap::from([(
            LABEL_IMAGE_HEALTH.to_string(),
            serde_json::to_string(&image).unwrap(),
        )]);
        assert_eq!(
            of_container(Some(&manifest), &labels),
            Some(manifest.clone())
        );
        assert_eq!(of_container(None, &labels), Some(image.clone()));
        assert_eq!(
            of_container(None, &BTreeMap::new()),
            None,
            "no label: no check"
        );
        assert_eq!(effective(None, Some(&image)), Some(image));
        assert_eq!(effective(None, None), None);
    }

    #[test]
    fn summary_is_one_line_and_keeps_the_tail() {
        let cases: Vec<(String, String)> = vec![
            ("HTTP 200".into(), "HTTP 200".into()),
            (
                "exit code 1: line one\n  line two\n".into(),
                "exit code 1: line one line two".into(),
            ),
            (
                format!("{}END", "x".repeat(500)),
                format!("…{}END", "x".repeat(SUMMARY_CHARS - 3)),
            ),
            ("".into(), "".into()),
        ];
        for (input, want) in cases {
            assert_eq!(summary(&input), want, "{input:?}");
        }
    }
}
