//! A scripted [`Containers`] for in-process reconcile tests: containers are
//! records in memory, started "ready" (backdated past `MIN_READY_RUN`), and
//! behave as their `FAKE` env var says (`exit:CODE` exits right after
//! starting, `nostart` fails to start). Tests crash replicas, turn their
//! health checks and read what ran. No root, no processes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::containers::{ContainerError, Containers, Started};
use crate::labels::LABEL_SERVICE;
use crate::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ExecOutput, ExitInfo, RuntimeError,
};

/// What the fake holds.
#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    /// Containers to exit (code) on the next `list`.
    exit_next: BTreeMap<String, i32>,
    /// Containers whose health exec fails.
    unhealthy: BTreeSet<String>,
    /// Every id ever started, in order.
    started: Vec<String>,
    /// Per service, the most replicas running at once.
    peak: BTreeMap<String, usize>,
    next_ip: u32,
}

/// The scripted containers.
#[derive(Debug, Default)]
pub struct FakeContainers {
    state: Mutex<State>,
}

impl FakeContainers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a container in place as if an earlier agent had started it.
    pub fn adopt(&self, info: ContainerInfo) {
        self.lock().containers.insert(info.id.clone(), info);
    }

    /// Makes `id` exit with `code` (seen by the next pass).
    pub fn crash(&self, id: &str, code: i32) {
        let mut st = self.lock();
        if let Some(c) = st.containers.get_mut(id) {
            c.state = exited(code);
        }
    }

    /// Makes `id`'s health checks fail (or pass again).
    pub fn set_unhealthy(&self, id: &str, unhealthy: bool) {
        let mut st = self.lock();
        if unhealthy {
            st.unhealthy.insert(id.to_string());
        } else {
            st.unhealthy.remove(id);
        }
    }

    /// Ids of the running containers of `service`, sorted.
    pub fn running(&self, service: &str) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service))
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Every container of `service`, any state.
    pub fn all(&self, service: &str) -> Vec<ContainerInfo> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service))
            .cloned()
            .collect()
    }

    /// Every id started so far, in order.
    pub fn started(&self) -> Vec<String> {
        self.lock().started.clone()
    }

    /// The most replicas of `service` that ever ran at once.
    pub fn peak(&self, service: &str) -> usize {
        self.lock().peak.get(service).copied().unwrap_or(0)
    }
}

fn exited(code: i32) -> ContainerState {
    ContainerState::Exited {
        code,
        signal: None,
        oom_killed: false,
        finished_at: SystemTime::now(),
    }
}

/// A running container's state, started long enough ago to be ready.
pub fn running_ready() -> ContainerState {
    ContainerState::Running {
        pid: 1,
        started_at: SystemTime::now() - Duration::from_secs(5),
    }
}

fn not_found(id: &str) -> ContainerError {
    RuntimeError::NotFound { id: id.to_string() }.into()
}

#[async_trait::async_trait]
impl Containers for FakeContainers {
    async fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError> {
        let mut st = self.lock();
        let exits = std::mem::take(&mut st.exit_next);
        for (id, code) in exits {
            if let Some(c) = st.containers.get_mut(&id) {
                c.state = exited(code);
            }
        }
        Ok(st.containers.values().cloned().collect())
    }

    async fn start(&self, cfg: ContainerConfig) -> Result<Started, ContainerError> {
        let behaviour = cfg
            .env
            .iter()
            .find_map(|e| e.strip_prefix("FAKE="))
            .unwrap_or("")
            .to_string();
        if behaviour == "nostart" {
            return Err(RuntimeError::Io {
                id: cfg.id.clone(),
                step: "starting",
                path: "/fake".into(),
                source: std::io::Error::other("the fake refuses to start it"),
            }
            .into());
        }
        let mut st = self.lock();
        st.next_ip += 1;
        let ip = std::net::Ipv4Addr::from(0x0a59_0000 + 1 + st.next_ip);
        let info = ContainerInfo {
            id: cfg.id.clone(),
            name: cfg.name.clone(),
            labels: cfg.labels.clone(),
            dir: std::path::PathBuf::from("/nonexistent").join(&cfg.id),
            created_at: SystemTime::now(),
            state: running_ready(),
        };
        if let Some(code) = behaviour.strip_prefix("exit:") {
            let code = code.parse().unwrap_or(1);
            st.exit_next.insert(cfg.id.clone(), code);
        }
        st.containers.insert(cfg.id.clone(), info.clone());
        st.started.push(cfg.id.clone());
        if let Some(service) = cfg.labels.get(LABEL_SERVICE) {
            let now = st
                .containers
                .values()
                .filter(|c| c.labels.get(LABEL_SERVICE) == Some(service))
                .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                .count();
            let peak = st.peak.entry(service.clone()).or_default();
            *peak = (*peak).max(now);
        }
        Ok(Started { info, ip })
    }

    async fn stop_and_remove(&self, id: &str) -> Result<(), ContainerError> {
        let mut st = self.lock();
        st.unhealthy.remove(id);
        st.containers
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| not_found(id))
    }

    async fn kill(&self, id: &str) -> Result<ExitInfo, ContainerError> {
        let mut st = self.lock();
        let c = st.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        c.state = exited(137);
        Ok(ExitInfo {
            code: 137,
            signal: Some(libc::SIGKILL),
            oom_killed: false,
            finished_at: SystemTime::now(),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.stop_and_remove(id).await
    }

    async fn exec(
        &self,
        id: &str,
        _argv: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        let st = self.lock();
        if !st.containers.contains_key(id) {
            return Err(not_found(id));
        }
        let failing = st.unhealthy.contains(id);
        Ok(ExecOutput {
            code: i32::from(failing),
            output: if failing { "not ok" } else { "ok" }.into(),
            timed_out: false,
        })
    }
}
