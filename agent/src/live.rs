//! What the agent knows that is not on disk, as plain data shared between
//! the reconcile pass, health checkers and the API: each service's readiness
//! and errors, each container's health, address and ports, replicas being
//! retired and images being pulled. No behaviour lives here; the reconcile
//! pass and the checkers write it, commands read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What the reconciler knows that is not on disk: readiness, health,
/// restart backoff, replicas being retired and images being pulled.
#[derive(Debug, Default)]
pub struct Live {
    pub services: BTreeMap<String, ServiceLive>,
    pub health: HashMap<String, HealthLive>,
    /// Replicas being drained and stopped: container id → service.
    pub retiring: HashMap<String, String>,
    pub pulling: HashSet<String>,
    /// Container id → its address on the bridge (networking fills it in).
    pub addresses: HashMap<String, std::net::Ipv4Addr>,
    /// Container id → its ports (from its own spec), for publishing.
    pub ports: HashMap<String, Vec<berth_core::manifest::Port>>,
    /// Replicas re-adopted at start that the DNAT rules were serving (Ready
    /// before the restart): Ready until their first health result says otherwise.
    pub adopted_ready: HashSet<String>,
}

/// One service's live state.
#[derive(Debug, Default, Clone)]
pub struct ServiceLive {
    pub desired: u32,
    pub ready: u32,
    /// Replicas of the desired spec, alive and not retiring.
    pub updated: u32,
    /// The revision `updated` was counted against: until a pass has seen a
    /// newly recorded revision, its count is the previous one's.
    pub updated_revision: u64,
    /// Ids of ready replicas (the proxy and readiness endpoint use them).
    pub ready_ids: Vec<String>,
    pub restarts: u64,
    /// What the service waits for before starting replicas (`depends_on`).
    pub waiting: Option<String>,
    pub last_error: Option<String>,
    /// The revision `last_error` belongs to (for a failed rollout that was
    /// rolled back: the revision that restored the old one). The error
    /// clears once the service converges on a later revision.
    pub error_revision: u64,
    /// Every replica current and ready as of the last pass.
    pub converged: bool,
    /// Running or created replicas (any spec) as of the last pass: their
    /// ports are held.
    pub members: Vec<String>,
    /// The ports of the spec being rolled out (held even before a replica
    /// has them); empty while the service is halted.
    pub spec_ports: Vec<berth_core::manifest::Port>,
    /// Host ports of this service that are not published, with why.
    pub unpublished: Vec<String>,
    /// (desired, ready) as last exported to the metrics (`None`: its series
    /// are not made yet), so an unchanged service costs no label lookups.
    pub exported: Option<(u32, u32)>,
}

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
