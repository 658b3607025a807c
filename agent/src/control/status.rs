//! The status room: revisions, the agent's and each service's state, and
//! the per-service readiness answer load balancers poll.

use berth_core::api::{AgentStatus, RevisionInfo, ServiceStatus, StatusResponse};

use super::{Agent, AgentError};

impl Agent {
    /// Every revision, oldest first.
    pub fn revisions(&self) -> Result<Vec<RevisionInfo>, AgentError> {
        Ok(self
            .store
            .revisions()?
            .into_iter()
            .map(|r| r.info)
            .collect())
    }

    /// The agent, its current revision and each service's state.
    pub fn status(&self) -> Result<StatusResponse, AgentError> {
        let latest = self.store.latest_revision()?;
        let mut services = Vec::new();
        if let Some(rec) = &latest {
            let (manifest, _) = Self::desired_of(rec)?;
            let live = self.live();
            for s in manifest.services.values() {
                let l = live.services.get(&s.name).cloned().unwrap_or_default();
                services.push(ServiceStatus {
                    name: s.name.clone(),
                    image: s.image.to_string(),
                    digest: rec.info.digests.get(&s.name).cloned(),
                    replicas_desired: s.replicas,
                    replicas_ready: l.ready,
                    // Counted against an older revision: none is of this one yet.
                    replicas_updated: if l.updated_revision == rec.info.number {
                        l.updated
                    } else {
                        0
                    },
                    restarts: l.restarts,
                    last_error: l.last_error,
                });
            }
        }
        Ok(StatusResponse {
            agent: AgentStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                ready: self.is_ready(),
                draining: self.is_draining(),
                uptime_seconds: self.started.elapsed().as_secs(),
            },
            revision: latest.map(|r| r.info),
            services,
            source_error: self.source_error(),
            rebuilt: self.rebuilt.get().cloned(),
            fleet: self.fleet.as_ref().map(|f| f.agent_status()),
        })
    }

    /// Whether a service has a ready replica here and the host is not draining.
    pub fn service_ready(&self, name: &str) -> Result<(bool, String), AgentError> {
        let latest = self.store.latest_revision()?;
        let declared = latest
            .as_ref()
            .is_some_and(|r| r.info.services.iter().any(|s| s == name));
        if !declared {
            return Err(AgentError::NotFound {
                what: format!("service `{name}`"),
            });
        }
        if self.is_draining() {
            return Ok((false, "host is draining".into()));
        }
        let live = self.live();
        let l = live.services.get(name).cloned().unwrap_or_default();
        if let Some(why) = l.unpublished.first() {
            Ok((false, format!("a port is not published: {why}")))
        } else if l.ready > 0 {
            Ok((true, format!("{}/{} replicas ready", l.ready, l.desired)))
        } else {
            Ok((false, format!("0/{} replicas ready", l.desired)))
        }
    }
}
