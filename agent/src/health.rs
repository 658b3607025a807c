//! Health checks of running replicas: http, tcp and exec, with interval,
//! timeout, retries and start_period. http/tcp connect to the container's own
//! loopback from a short-lived thread that joined only the container's network
//! namespace; exec runs inside the container through the runtime. A status
//! change wakes the reconciler.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::manifest::{Health, HealthCheck};

use crate::control::Agent;

/// A replica's health as the checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The live health of one container, owned by its checker task.
#[derive(Debug, Clone)]
pub struct HealthLive {
    pub status: HealthStatus,
    pub failures: u32,
    pub last_output: Option<String>,
    /// Set to stop the checker.
    pub cancel: Arc<AtomicBool>,
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
                    agent
                        .metrics
                        .health_check_failures
                        .with_label_values(&[&service])
                        .inc();
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
                    "health",
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
    use super::*;

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
