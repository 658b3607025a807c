//! The seam between the fleet loop and the host it runs on: what the gate,
//! the record, the slot and `auto_revert` read from and do to the host.
//! berthd's [`Agent`] implements it over its store and live state; the fleet
//! benchmark (`bench/src/bin/bench-fleet.rs`) over a fake runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use berth_core::manifest::FleetPolicy;
use berth_core::vocab::{EventKind, RevisionState};

use crate::control::{Agent, ApplySource};
use crate::metrics::Metrics;

/// One recorded revision as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRevision {
    pub number: u64,
    pub state: RevisionState,
    /// Its manifest's fleet hash (`None`: the stored manifest does not parse).
    pub hash: Option<String>,
    /// Image digest per service.
    pub digests: BTreeMap<String, String>,
    /// Its manifest's `[fleet]` table.
    pub policy: Option<FleetPolicy>,
    /// The longest `update.probation` of its services.
    pub probation: Duration,
}

/// The host's newest revision and how ready its services are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub latest: Option<HostRevision>,
    /// Ready replicas (at most desired per service), summed over the services.
    pub ready: u32,
    pub desired: u32,
    /// Every service has all its replicas ready.
    pub all_ready: bool,
    /// The first service error of the newest manifest's services.
    pub last_error: Option<String>,
}

/// What the fleet loop needs from its host. Implementations must be cheap to
/// call: the loop calls them every round.
pub trait FleetHost: Send + Sync {
    /// The newest revision and the services' readiness.
    fn observe(&self) -> Observation;
    /// Revision `n`, if recorded.
    fn revision(&self, n: u64) -> Option<HostRevision>;
    /// (number, state, fleet hash) of every revision, oldest first.
    fn revisions(&self) -> Vec<(u64, RevisionState, String)>;
    /// Any service's last error (why a failed rollout failed).
    fn any_error(&self) -> Option<String>;
    fn draining(&self) -> bool;
    /// Why the manifest source's newest version was not applied.
    fn source_error(&self) -> Option<String>;
    fn metrics(&self) -> &Metrics;
    /// Emits a host-wide event.
    fn emit(&self, kind: EventKind, message: String);
    /// Records revision `n` again as a new revision (a rollback); the new
    /// revision's number, or why not.
    fn restore(&self, n: u64) -> impl Future<Output = Result<Option<u64>, String>> + Send;
}

fn host_revision(rec: &crate::state::RevisionRecord) -> HostRevision {
    let manifest = Agent::desired_of(rec).ok().map(|(m, _)| m);
    HostRevision {
        number: rec.info.number,
        state: rec.info.state,
        hash: manifest.as_ref().map(super::fleet_hash),
        digests: rec.info.digests.clone(),
        policy: manifest.as_ref().and_then(|m| m.fleet.clone()),
        probation: manifest
            .as_ref()
            .and_then(|m| m.services.values().map(|s| s.update.probation).max())
            .unwrap_or_default(),
    }
}

impl FleetHost for Agent {
    fn observe(&self) -> Observation {
        let latest = self.store().latest_revision().ok().flatten();
        let manifest = latest
            .as_ref()
            .and_then(|r| Agent::desired_of(r).ok())
            .map(|(m, _)| m);
        let (mut ready, mut desired, mut all_ready, mut last_error) = (0, 0, true, None);
        if let Some(m) = &manifest {
            let live = self.live();
            for s in m.services.values() {
                let l = live.services.get(&s.name).cloned().unwrap_or_default();
                ready += l.ready.min(s.replicas);
                desired += s.replicas;
                all_ready &= l.ready >= s.replicas;
                if last_error.is_none() {
                    last_error = l.last_error.clone();
                }
            }
        }
        Observation {
            latest: latest.as_ref().map(host_revision),
            ready,
            desired,
            all_ready,
            last_error,
        }
    }

    fn revision(&self, n: u64) -> Option<HostRevision> {
        self.store()
            .revision(n)
            .ok()
            .flatten()
            .as_ref()
            .map(host_revision)
    }

    fn revisions(&self) -> Vec<(u64, RevisionState, String)> {
        self.store()
            .revisions()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let h = Agent::desired_of(r)
                    .map(|(m, _)| super::fleet_hash(&m))
                    .unwrap_or_default();
                (r.info.number, r.info.state, h)
            })
            .collect()
    }

    fn any_error(&self) -> Option<String> {
        self.live()
            .services
            .values()
            .find_map(|l| l.last_error.clone())
    }

    fn draining(&self) -> bool {
        self.is_draining()
    }

    fn source_error(&self) -> Option<String> {
        Agent::source_error(self)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn emit(&self, kind: EventKind, message: String) {
        Agent::emit(self, kind, None, message)
    }

    async fn restore(&self, n: u64) -> Result<Option<u64>, String> {
        let rec = self
            .store()
            .revision(n)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("revision {n} is not stored"))?;
        self.restore(&rec, ApplySource::Rollback(n))
            .await
            .map(|r| r.revision)
            .map_err(|e| e.to_string())
    }
}
