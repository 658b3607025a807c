//! Container commands: list and inspect (state, health, spec, config) and
//! log files, by container id or by service.

use std::time::SystemTime;

use berth_core::api::{ContainerDetail, ContainerView};
use berth_core::spec::ContainerSpec;

use super::{Agent, AgentError, LABEL_EXPOSED_PORTS, LABEL_IMAGE, LABEL_REVISION, LABEL_SPEC};
use crate::runtime::{ContainerInfo, ContainerState};

/// The label naming a container's service.
pub const LABEL_SERVICE: &str = "berth.service";

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Agent {
    fn view(&self, c: &ContainerInfo) -> ContainerView {
        let spec = c
            .labels
            .get(LABEL_SPEC)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| ContainerSpec::from_stored(&v).ok());
        let (state, pid, exit_code, oom_killed, started_at, finished_at) = match &c.state {
            ContainerState::Created => ("created", None, None, false, None, None),
            ContainerState::Running { pid, started_at } => (
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
                .map(|s| s.ports.iter().map(port_text).collect())
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
        let logs = self
            .runtime
            .logs(&c.id)
            .map_err(|e| AgentError::Runtime(e.to_string()))?;
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
                .stdout
                .iter()
                .chain(logs.stderr.iter())
                .map(|p| p.display().to_string())
                .collect(),
            last_health_output,
        })
    }

    /// Log files of a container id (or unique prefix), or of every container
    /// of a service: `(container id, [stdout files], [stderr files])`.
    pub async fn log_files(
        &self,
        target: &str,
    ) -> Result<Vec<(String, Vec<std::path::PathBuf>)>, AgentError> {
        let all = self.list_containers().await?;
        let mut chosen: Vec<&ContainerInfo> = all
            .iter()
            .filter(|c| c.labels.get(LABEL_SERVICE).is_some_and(|s| s == target))
            .collect();
        if chosen.is_empty() {
            let c = self.find_container(target).await?;
            return Ok(vec![(c.id.clone(), self.merged_logs(&c.id)?)]);
        }
        chosen.sort_by_key(|c| c.created_at);
        chosen
            .iter()
            .map(|c| Ok((c.id.clone(), self.merged_logs(&c.id)?)))
            .collect()
    }

    fn merged_logs(&self, id: &str) -> Result<Vec<std::path::PathBuf>, AgentError> {
        let logs = self
            .runtime
            .logs(id)
            .map_err(|e| AgentError::Runtime(e.to_string()))?;
        Ok(logs.stdout.into_iter().chain(logs.stderr).collect())
    }
}

/// A port as `docker ps` shows it: `127.0.0.1:8080->80/tcp`, or `80/tcp` for
/// a port only other containers use.
pub fn port_text(p: &berth_core::manifest::Port) -> String {
    match p.host {
        Some(h) => format!("{}:{h}->{}/{}", p.host_ip, p.container, p.protocol),
        None => format!("{}/{}", p.container, p.protocol),
    }
}
