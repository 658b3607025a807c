//! Container commands: list and inspect (state, health, spec, config) and
//! logs by container id or by service (merged replicas, the archive of
//! exited ones, following into new replicas; see `crate::logs`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use berth_core::api::{ContainerDetail, ContainerView};

use super::{Agent, AgentError};
use crate::labels::{
    stored_spec, LABEL_EXPOSED_PORTS, LABEL_IMAGE, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC,
};
use crate::logs::{self, ContainerTail, LogQuery};
use crate::runtime::crilog::{self, Entry, Nanos};
use crate::runtime::{ContainerInfo, ContainerState};

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Agent {
    fn view(&self, c: &ContainerInfo) -> ContainerView {
        let spec = stored_spec(&c.labels);
        let (state, pid, exit_code, oom_killed, started_at, finished_at) = match &c.state {
            ContainerState::Created => ("created", None, None, false, None, None),
            ContainerState::Running { pid, started_at }
            | ContainerState::MonitorLost {
                pid, started_at, ..
            } => (
                "running",
                Some(*pid),
                None,
                false,
                Some(rfc3339(*started_at)),
                None,
            ),
            ContainerState::Exited {
                code,
                oom_killed,
                finished_at,
                ..
            } => (
                "exited",
                None,
                Some(*code),
                *oom_killed,
                None,
                Some(rfc3339(*finished_at)),
            ),
            ContainerState::Unknown { .. } => ("unknown", None, None, false, None, None),
            ContainerState::NotFound => ("removed", None, None, false, None, None),
        };
        let live = self.live();
        let health = if live.retiring.contains_key(&c.id) {
            "draining".to_string()
        } else if let Some(h) = live.health.get(&c.id) {
            h.status.as_str().to_string()
        } else {
            "none".to_string()
        };
        let ip = live.addresses.get(&c.id).map(|a| a.to_string());
        drop(live);
        ContainerView {
            id: c.id.clone(),
            service: c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            image: c.labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
            state: state.into(),
            health,
            exit_code,
            oom_killed,
            pid,
            ip,
            ports: spec
                .as_ref()
                .map(|s| {
                    s.ports
                        .iter()
                        .map(|p| port_text(p, self.proxy.host_port(p)))
                        .collect()
                })
                .unwrap_or_default(),
            exposed_ports: c
                .labels
                .get(LABEL_EXPOSED_PORTS)
                .map(|p| p.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            created_at: rfc3339(c.created_at),
            started_at,
            finished_at,
            revision: c.labels.get(LABEL_REVISION).and_then(|r| r.parse().ok()),
            spec_hash: spec.map(|s| s.short_hash()).unwrap_or_default(),
        }
    }

    /// Every container berthd manages, by service then id.
    pub async fn container_views(&self) -> Result<Vec<ContainerView>, AgentError> {
        let mut out: Vec<ContainerView> = self
            .list_containers()
            .await?
            .iter()
            .map(|c| self.view(c))
            .collect();
        out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        Ok(out)
    }

    async fn find_container(&self, id: &str) -> Result<ContainerInfo, AgentError> {
        let all = self.list_containers().await?;
        // An exact id, or a unique prefix of one.
        if let Some(c) = all.iter().find(|c| c.id == id) {
            return Ok(c.clone());
        }
        let matches: Vec<&ContainerInfo> = all.iter().filter(|c| c.id.starts_with(id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(AgentError::NotFound {
                what: format!("container `{id}`"),
            }),
            _ => Err(AgentError::BadRequest(format!(
                "`{id}` matches {} containers; give more of the id",
                matches.len()
            ))),
        }
    }

    /// Everything about one container.
    pub async fn container_detail(&self, id: &str) -> Result<ContainerDetail, AgentError> {
        let c = self.find_container(id).await?;
        let view = self.view(&c);
        let spec = c
            .labels
            .get(LABEL_SPEC)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let config = std::fs::read(c.dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|mut v| {
                // The spec label is shown once, as `spec`.
                if let Some(labels) = v
                    .pointer_mut("/container/labels")
                    .and_then(|l| l.as_object_mut())
                {
                    labels.remove(LABEL_SPEC);
                }
                v
            })
            .unwrap_or(serde_json::Value::Null);
        let logs = self.runtime.logs(&c.id).map_err(AgentError::from)?;
        let last_health_output = self
            .live()
            .health
            .get(&c.id)
            .and_then(|h| h.last_output.clone());
        Ok(ContainerDetail {
            view,
            spec,
            config,
            log_files: logs
                .iter()
                .filter(|f| f.path.exists())
                .map(|f| f.path.display().to_string())
                .collect(),
            last_health_output,
        })
    }

    /// Whether `name` is a service: one the current revision runs, or with
    /// containers or archived logs.
    fn service_known(&self, name: &str, all: &[ContainerInfo]) -> bool {
        all.iter()
            .any(|c| c.labels.get(LABEL_SERVICE).is_some_and(|s| s == name))
            || self
                .store()
                .latest_revision()
                .ok()
                .flatten()
                .and_then(|r| Agent::desired_of(&r).ok())
                .is_some_and(|(m, _)| m.services.contains_key(name))
            || !self.log_archive.list(name).is_empty()
    }

    /// A container's or a service's logs (see [`LogsRequest`]): the lines
    /// written so far and, with `follow`, the state to follow on with.
    ///
    /// A service's logs merge its replicas' lines by time; when they have
    /// none yet (a crash-looping first deploy), the lines of its last
    /// exited or replaced replica are shown instead. `previous` shows only
    /// that replica. A container id (or unique prefix) may also name an
    /// archived container.
    pub async fn logs(&self, req: &LogsRequest) -> Result<LogsReply, AgentError> {
        let all = self.list_containers().await?;
        if self.service_known(&req.target, &all) {
            return self.service_logs(req, all).await;
        }
        if req.kind == LogTargetKind::Service {
            return Err(AgentError::NotFound {
                what: format!("service `{}`", req.target),
            });
        }
        if req.previous {
            return Err(AgentError::BadRequest(format!(
                "`{}` is not a service: previous shows the last exited or replaced replica of a service",
                req.target
            )));
        }
        let q = req.query;
        match self.find_container(&req.target).await {
            Ok(c) => {
                let files = crate::runtime::Runtime::logs_in(&c.dir);
                let running = matches!(c.state, ContainerState::Running { .. });
                let (tail, head) = blocking(move || {
                    if running {
                        let (tail, head) = ContainerTail::open(&c.id, &files);
                        (Some(tail), head)
                    } else {
                        (None, logs::read_all(&files))
                    }
                })
                .await?;
                let mut out = Vec::new();
                logs::render(&logs::select(head, &q), q.timestamps, &mut out);
                let follow = tail
                    .filter(|_| req.follow)
                    .map(|t| LogFollow::new(None, vec![t], &q));
                Ok(LogsReply { head: out, follow })
            }
            Err(AgentError::NotFound { what }) => {
                let archive = self.log_archive.clone();
                let target = req.target.clone();
                let found = blocking(move || archive.find(&target)).await?;
                match found {
                    Ok(Some(a)) => {
                        let mut out = Vec::new();
                        let entries = blocking(move || a.read_all()).await?;
                        logs::render(&logs::select(entries, &q), q.timestamps, &mut out);
                        Ok(LogsReply {
                            head: out,
                            follow: None,
                        })
                    }
                    Ok(None) => Err(AgentError::NotFound { what }),
                    Err(n) => Err(AgentError::BadRequest(format!(
                        "`{}` matches {n} archived containers; give more of the id",
                        req.target
                    ))),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn service_logs(
        &self,
        req: &LogsRequest,
        all: Vec<ContainerInfo>,
    ) -> Result<LogsReply, AgentError> {
        let q = req.query;
        let service = req.target.clone();
        let archive = self.log_archive.clone();
        if req.previous {
            let svc = service.clone();
            let entries =
                blocking(move || archive.list(&svc).first().map(logs::Archived::read_all))
                    .await?
                    .ok_or_else(|| AgentError::NotFound {
                        what: format!("an exited or replaced replica of service `{service}`"),
                    })?;
            let mut out = Vec::new();
            logs::render(&logs::select(entries, &q), q.timestamps, &mut out);
            return Ok(LogsReply {
                head: out,
                follow: None,
            });
        }
        let mut members: Vec<ContainerInfo> = all
            .into_iter()
            .filter(|c| c.labels.get(LABEL_SERVICE) == Some(&service))
            .collect();
        members.sort_by_key(|c| c.created_at);
        let svc = service.clone();
        let (tails, head, fallback) = blocking(move || {
            let mut tails = Vec::new();
            let mut sources = Vec::new();
            for c in &members {
                let (tail, entries) =
                    ContainerTail::open(&c.id, &crate::runtime::Runtime::logs_in(&c.dir));
                tails.push(tail);
                sources.push(entries);
            }
            let mut head = logs::select(logs::merge(sources), &q);
            let mut fallback = None;
            if head.is_empty() {
                if let Some(a) = archive.list(&svc).into_iter().next() {
                    head = logs::select(a.read_all(), &q);
                    fallback = Some(a.meta.id);
                }
            }
            (tails, head, fallback)
        })
        .await?;
        let mut out = Vec::new();
        logs::render(&head, q.timestamps, &mut out);
        let follow = req.follow.then(|| {
            let mut f = LogFollow::new(Some(service), tails, &q);
            f.seen.extend(fallback);
            f
        });
        Ok(LogsReply { head: out, follow })
    }
}

/// Which names a logs request may mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTargetKind {
    /// A service, else a container id (or unique prefix), live or archived.
    Any,
    Service,
}

/// A `logs` request (`GET /v1/containers/ID/logs`, `GET /v1/services/NAME/logs`).
#[derive(Debug, Clone)]
pub struct LogsRequest {
    pub target: String,
    pub kind: LogTargetKind,
    /// Keep streaming new lines (a service's new replicas too).
    pub follow: bool,
    /// The service's last exited or replaced replica, from the archive.
    pub previous: bool,
    pub query: LogQuery,
}

/// The lines written so far and, when following, how to go on.
#[derive(Debug)]
pub struct LogsReply {
    pub head: Vec<u8>,
    pub follow: Option<LogFollow>,
}

/// How often a follower reads its files.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often a service follower looks for new replicas (and a container
/// follower whether its container ended).
const FOLLOW_SCAN: Duration = Duration::from_secs(1);

/// The state of `logs -f`: the files followed and, for a service, which
/// replicas were seen, so new replicas are picked up after a rollout or
/// restart and a replica that started and ended between two scans is read
/// from the archive.
#[derive(Debug)]
pub struct LogFollow {
    service: Option<String>,
    tails: Vec<ContainerTail>,
    seen: BTreeSet<String>,
    started: Nanos,
    query: LogQuery,
    last_scan: Instant,
    ended: bool,
}

impl LogFollow {
    fn new(service: Option<String>, tails: Vec<ContainerTail>, q: &LogQuery) -> Self {
        LogFollow {
            service,
            seen: tails.iter().map(|t| t.id.clone()).collect(),
            tails,
            started: crilog::now(),
            query: LogQuery { tail: None, ..*q },
            last_scan: Instant::now(),
            ended: false,
        }
    }

    /// The next lines (rendered), waiting for some; `None` once a followed
    /// container has ended (a service is followed until the client leaves).
    pub async fn next(&mut self, agent: &Agent) -> Option<Vec<u8>> {
        loop {
            if self.ended {
                return None;
            }
            let mut sources: Vec<Vec<Entry>> = Vec::new();
            let scan = self.last_scan.elapsed() >= FOLLOW_SCAN;
            if scan {
                self.last_scan = Instant::now();
                self.scan(agent, &mut sources).await;
            }
            let tails = std::mem::take(&mut self.tails);
            let (tails, polled) = blocking(move || {
                let mut tails = tails;
                let polled: Vec<Vec<Entry>> = tails.iter_mut().map(ContainerTail::poll).collect();
                (tails, polled)
            })
            .await
            .unwrap_or_default();
            self.tails = tails;
            sources.extend(polled);
            let entries = logs::select(logs::merge(sources), &self.query);
            if !entries.is_empty() {
                let mut out = Vec::new();
                logs::render(&entries, self.query.timestamps, &mut out);
                return Some(out);
            }
            if self.ended {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Service: picks up new replicas (and ones archived since the last
    /// scan), finishes replicas that are gone. Container: ends once it has.
    async fn scan(&mut self, agent: &Agent, sources: &mut Vec<Vec<Entry>>) {
        let Some(service) = self.service.clone() else {
            let Some(id) = self.tails.first().map(|t| t.id.clone()) else {
                self.ended = true;
                return;
            };
            let rt = agent.runtime.clone();
            let state = blocking(move || rt.state(&id)).await;
            if !matches!(
                state,
                Ok(ContainerState::Running { .. }) | Ok(ContainerState::Created)
            ) {
                let tails = std::mem::take(&mut self.tails);
                if let Ok(done) = blocking(move || {
                    tails
                        .into_iter()
                        .map(|mut t| t.finish())
                        .collect::<Vec<_>>()
                })
                .await
                {
                    sources.extend(done);
                }
                self.ended = true;
            }
            return;
        };
        let Ok(all) = agent.list_containers().await else {
            return;
        };
        let members: Vec<ContainerInfo> = all
            .into_iter()
            .filter(|c| c.labels.get(LABEL_SERVICE) == Some(&service))
            .collect();
        let live: BTreeSet<String> = members.iter().map(|c| c.id.clone()).collect();
        let new: Vec<ContainerInfo> = members
            .into_iter()
            .filter(|c| !self.seen.contains(&c.id))
            .collect();
        self.seen.extend(new.iter().map(|c| c.id.clone()));
        let archive = agent.log_archive.clone();
        let tails = std::mem::take(&mut self.tails);
        let seen = self.seen.clone();
        let started = self.started;
        let result = blocking(move || {
            let mut out = Vec::new();
            let mut kept = Vec::new();
            for mut t in tails {
                if live.contains(&t.id) {
                    kept.push(t);
                } else {
                    out.push(t.finish());
                }
            }
            let mut sorted = new;
            sorted.sort_by_key(|c| c.created_at);
            for c in &sorted {
                let (t, head) =
                    ContainerTail::open(&c.id, &crate::runtime::Runtime::logs_in(&c.dir));
                kept.push(t);
                out.push(head);
            }
            let mut archived_ids = Vec::new();
            for a in archive.list(&service) {
                let at = crilog::parse_time(&a.meta.archived_at).unwrap_or(0);
                if at >= started && !seen.contains(&a.meta.id) {
                    out.push(a.read_all());
                    archived_ids.push(a.meta.id);
                }
            }
            (kept, out, archived_ids)
        })
        .await;
        if let Ok((kept, out, archived_ids)) = result {
            self.tails = kept;
            sources.extend(out);
            self.seen.extend(archived_ids);
        }
    }
}

/// Runs blocking log file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    super::blocking("reading logs", f).await
}

/// A port as `docker ps` shows it: `127.0.0.1:8080->80/tcp`, or `80/tcp` for
/// a port only other containers use; `bound` is where this host binds it
/// (the manifest's address, or `--publish-ip`).
pub fn port_text(
    p: &berth_core::manifest::Port,
    bound: Option<crate::network::proxy::HostPort>,
) -> String {
    match (p.host, bound) {
        (Some(h), Some(b)) => format!("{}:{h}->{}/{}", b.ip, p.container, p.protocol),
        (Some(h), None) => format!("{}:{h}->{}/{}", p.host_ip, p.container, p.protocol),
        (None, _) => format!("{}/{}", p.container, p.protocol),
    }
}

/// Longest `exec` a client may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `berthctl exec` ran and how it ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecReply {
    /// The container the command ran in.
    pub container: String,
    /// Exit status; 128 + signal when signalled; 124 on timeout; 126/127
    /// when the command could not be executed / found (as a shell).
    pub exit_code: i32,
    /// Combined stdout and stderr, the first 4 KiB (`runtime::exec::OUTPUT_CAP`).
    pub output: String,
    pub timed_out: bool,
}

impl Agent {
    /// The running container `target` names: a container id (or unique
    /// prefix), or a service, of which one running replica is picked (a
    /// ready one first, then the newest).
    pub async fn exec_target(&self, target: &str) -> Result<ContainerInfo, AgentError> {
        let all = self.list_containers().await?;
        if let Some(c) = all.iter().find(|c| c.id == target) {
            return Ok(c.clone());
        }
        let mut replicas: Vec<&ContainerInfo> = all
            .iter()
            .filter(|c| c.labels.get(LABEL_SERVICE).is_some_and(|s| s == target))
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .collect();
        if !replicas.is_empty() {
            let live = self.live();
            let ready: Vec<String> = live
                .services
                .get(target)
                .map(|s| s.ready_ids.clone())
                .unwrap_or_default();
            let retiring = live.retiring.clone();
            drop(live);
            replicas.sort_by_key(|c| {
                (
                    !ready.contains(&c.id),
                    retiring.contains_key(&c.id),
                    std::cmp::Reverse(c.created_at),
                )
            });
            return Ok(replicas[0].clone());
        }
        if self.service_known(target, &all) {
            return Err(AgentError::Conflict(format!(
                "service `{target}` has no running replica"
            )));
        }
        self.find_container(target).await
    }

    /// Runs `cmd` in `target`'s container (see [`Agent::exec_target`]) as its
    /// health checks do: its namespaces, cgroup, user, capabilities and
    /// seccomp filter (`Runtime::exec`), killed after `timeout`.
    pub async fn exec(
        &self,
        target: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecReply, AgentError> {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(AgentError::BadRequest("exec: the command is empty".into()));
        }
        if timeout.is_zero() || timeout > MAX_EXEC_TIMEOUT {
            return Err(AgentError::BadRequest(format!(
                "exec: timeout must be between 1 ms and {} s",
                MAX_EXEC_TIMEOUT.as_secs()
            )));
        }
        let c = self.exec_target(target).await?;
        let (rt, id) = (self.runtime.clone(), c.id.clone());
        let out = tokio::task::spawn_blocking(move || rt.exec(&id, &cmd, timeout))
            .await
            .map_err(|source| AgentError::Task {
                what: "exec",
                source,
            })?
            .map_err(exec_error)?;
        Ok(ExecReply {
            container: c.id,
            exit_code: out.code,
            output: out.output,
            timed_out: out.timed_out,
        })
    }
}

/// The API error of a runtime exec failure.
fn exec_error(e: crate::runtime::RuntimeError) -> AgentError {
    match e {
        crate::runtime::RuntimeError::NotRunning { .. } => AgentError::Conflict(e.to_string()),
        crate::runtime::RuntimeError::Exec { ref step, .. } if step == "arguments" => {
            AgentError::BadRequest(e.to_string())
        }
        other => AgentError::from(other),
    }
}

impl Agent {
    /// Starts `req.cmd` in `target`'s container (see [`Agent::exec_target`])
    /// for a streaming session (`exec_stream::serve`): on its pipes, or on a
    /// new pty of `req.size` (default 24x80) with `req.tty`; killed after
    /// `req.timeout_ms` when given. Returns the container's id and the
    /// started command.
    pub async fn exec_stream(
        &self,
        target: &str,
        req: &berth_core::exec::ExecRequest,
    ) -> Result<(String, crate::runtime::exec::ExecProcess), AgentError> {
        use crate::runtime::exec::StreamMode;
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(AgentError::BadRequest("exec: the command is empty".into()));
        }
        let timeout = req.timeout_ms.map(Duration::from_millis);
        if timeout.is_some_and(|t| t.is_zero() || t > MAX_EXEC_TIMEOUT) {
            return Err(AgentError::BadRequest(format!(
                "exec: timeout must be between 1 ms and {} s",
                MAX_EXEC_TIMEOUT.as_secs()
            )));
        }
        let mode = if req.tty {
            let size = req.size.unwrap_or_default();
            if size.rows == 0 || size.cols == 0 {
                return Err(AgentError::BadRequest(format!(
                    "exec: window size {}x{}: rows and columns must be at least 1",
                    size.rows, size.cols
                )));
            }
            StreamMode::Tty {
                rows: size.rows,
                cols: size.cols,
            }
        } else {
            StreamMode::Pipes
        };
        let c = self.exec_target(target).await?;
        let (rt, id, cmd) = (self.runtime.clone(), c.id.clone(), req.cmd.clone());
        let process = super::blocking("exec", move || rt.exec_stream(&id, &cmd, mode, timeout))
            .await?
            .map_err(exec_error)?;
        Ok((c.id, process))
    }
}
