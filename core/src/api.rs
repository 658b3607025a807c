//! JSON types of the HTTP API (`/v1`), shared by `berthd` and `berthctl`.
//! Every error is `{ "error": { "code", "message", "details" } }`.

use crate::vocab::RevisionState;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::Problem;
use crate::plan::{ServiceChange, ServicePlan};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_manifest`, `unauthorized`.
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                details: serde_json::Value::Null,
            },
        }
    }

    /// An invalid-manifest error carrying every located problem.
    pub fn invalid_manifest(problems: &[Problem]) -> Self {
        let message = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        ErrorBody {
            error: ErrorDetail {
                code: "invalid_manifest".into(),
                message,
                details: serde_json::json!({ "problems": problems }),
            },
        }
    }
}

/// Answer to `PUT /v1/manifest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The revision now current (the new one, or the unchanged current one).
    pub revision: Option<u64>,
    /// True when the manifest equals the current revision's: nothing recorded.
    pub unchanged: bool,
    pub dry_run: bool,
    /// Per service, how the manifest differs from the current revision.
    #[serde(default)]
    pub changes: Vec<ServiceChange>,
    /// Per service, the steps that converge the containers on this host.
    pub plan: Vec<ServicePlan>,
}

/// One applied revision, as `history` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub number: u64,
    /// RFC 3339, UTC.
    pub applied_at: String,
    /// Where it came from: `api`, `file:PATH`, `url:URL`, `git:COMMIT`, `rollback:N`.
    pub source: String,
    /// sha256 of the manifest sources, to tell identical applies apart.
    pub manifest_sha256: String,
    pub services: Vec<String>,
    /// Service → image digest it runs in this revision (filled once resolved).
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// See [`RevisionState`] (`applied`, `rolling-out`, `complete`, ...).
    pub state: RevisionState,
}

/// Answer to `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub agent: AgentStatus,
    pub revision: Option<RevisionInfo>,
    pub services: Vec<ServiceStatus>,
    /// The last manifest a configured source offered that was refused, if any.
    #[serde(default)]
    pub source_error: Option<String>,
    /// What this agent rebuilt at start because its state database was lost
    /// (deleted, corrupt, unopenable) or missed records; `null` otherwise.
    #[serde(default)]
    pub rebuilt: Option<StateRebuild>,
    /// This agent's part in its fleet (only with `--fleet-etcd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetAgentStatus>,
}

/// What berthd rebuilt at start from what the kernel and the disk still
/// know, after finding its state database lost (`status.rebuilt`, the
/// `state-rebuilt` event). Counts are of records written, except
/// `containers` (running replicas re-adopted) and `volumes` (named volumes
/// found on disk, which live outside the database).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRebuild {
    /// Why: `database missing: …`, `database corrupt: …` or `database
    /// unopenable: …`; `null` when the database was whole but lacked records.
    pub reason: Option<String>,
    /// Where the old database was moved (corrupt, unopenable).
    pub moved_aside: Option<String>,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Revisions restored from `revisions/*.rev`.
    pub revisions: u64,
    /// Running containers re-adopted (none restarted).
    pub containers: u64,
    /// Address leases recorded from the containers' network namespaces.
    pub leases: u64,
    /// User-namespace id ranges recorded from the containers' id maps.
    pub id_ranges: u64,
    /// Image records rebuilt from the content store.
    pub images: u64,
    /// Named volumes found on disk.
    pub volumes: u64,
    /// What could not be rebuilt or disagreed, one line each.
    #[serde(default)]
    pub problems: Vec<String>,
}

impl StateRebuild {
    /// The counts in one line: `3 revisions, 3 containers re-adopted, 3
    /// leases, 2 id ranges, 1 images, 1 volumes`.
    pub fn summary(&self) -> String {
        format!(
            "{} revisions, {} containers re-adopted, {} leases, {} id ranges, {} images, {} volumes",
            self.revisions, self.containers, self.leases, self.id_ranges, self.images, self.volumes
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub ready: bool,
    pub draining: bool,
    pub uptime_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub digest: Option<String>,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    /// Replicas running the current revision's spec (ready or not, not
    /// draining): `replicas_desired` of them once a rollout is done.
    #[serde(default)]
    pub replicas_updated: u32,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// An entry of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// e.g. `revision-applied`, `apply-refused`, `container-started`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub message: String,
}

/// `POST /v1/images/pull` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullRequest {
    pub image: String,
}

/// An image in the local store, as `images` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageView {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub layers: usize,
    pub pulled_at: String,
    pub last_used: String,
    /// Used by a container on this host or by a retained revision.
    pub in_use: bool,
}

/// One running container's resource use, read from its cgroup now
/// (`GET /v1/stats`, `berthctl top`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub id: String,
    pub service: String,
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use now (cgroup `memory.current` / `memory.usage_in_bytes`).
    pub memory_bytes: u64,
    /// The memory limit, when the manifest sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads in the container now.
    pub pids: u64,
    /// When the numbers were read (RFC 3339, UTC, nanoseconds).
    pub read_at: String,
}

/// A container, as `ps`, `inspect` and `GET /v1/containers` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub service: String,
    pub image: String,
    /// `created`, `running`, `exited`, `unknown`.
    pub state: String,
    /// `starting`, `healthy`, `unhealthy`, `none` (no check), `draining`.
    pub health: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    /// The image's `ExposedPorts` (`80/tcp`): documentation of what the
    /// image listens on; only `ports` publishes anything.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub revision: Option<u64>,
    pub spec_hash: String,
}

/// `GET /v1/containers/ID`: the view plus what it runs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerDetail {
    #[serde(flatten)]
    pub view: ContainerView,
    /// The stored, normalized spec (what decides replacement).
    pub spec: serde_json::Value,
    /// The runtime config: process, mounts, limits.
    pub config: serde_json::Value,
    pub log_files: Vec<String>,
    #[serde(default)]
    pub last_health_output: Option<String>,
}

/// A named volume, as `berthctl volumes` and `GET /v1/volumes` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    /// Bytes its data occupies on disk (as `du`).
    pub size_bytes: u64,
    /// Services using it: in the current revision or with a container on disk.
    pub services: Vec<String>,
    /// Containers on disk (running or not yet removed) that mount it.
    #[serde(default)]
    pub containers: Vec<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// `IMAGE:PATH` the volume was seeded from, if the image had content there.
    #[serde(default)]
    pub seeded_from: Option<String>,
}

/// One host's record in a fleet's etcd (`/berth/fleet/<fleet>/hosts/<host>`,
/// JSON, bound to the agent's lease): what it runs and how that is going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FleetHostRecord {
    /// The host id (`--fleet-host`, default the hostname).
    pub host: String,
    /// The rollout group (`--fleet-group`).
    pub group: String,
    /// The current revision's number.
    #[serde(default)]
    pub revision: Option<u64>,
    /// The fleet hash of the current revision's manifest (what gating compares).
    #[serde(default)]
    pub manifest_hash: Option<String>,
    /// The current revision's state (`complete`, `rolling-out`, ...).
    #[serde(default)]
    pub state: Option<RevisionState>,
    /// Service → image digest it runs.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// Ready replicas over all services.
    #[serde(default)]
    pub ready: u32,
    /// Desired replicas over all services.
    #[serde(default)]
    pub desired: u32,
    /// The revision is complete and every replica is ready.
    #[serde(default)]
    pub healthy: bool,
    /// Unix time (milliseconds) since which the host is healthy on
    /// `manifest_hash` (for the groups' bake).
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
    #[serde(default)]
    pub draining: bool,
    /// The berthd version.
    #[serde(default)]
    pub agent_version: String,
    /// The last error of a service, or of the source.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why a new manifest waits for the fleet, if one does.
    #[serde(default)]
    pub pending: Option<String>,
}

/// A manifest halted for the fleet (`/berth/fleet/<fleet>/halted/<hash>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHalt {
    /// The fleet hash of the halted manifest.
    pub hash: String,
    /// The host whose rollout failed.
    pub host: String,
    pub reason: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// One host as `GET /v1/fleet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHostView {
    #[serde(flatten)]
    pub record: FleetHostRecord,
    /// The host holds a rollout slot now.
    pub slot_held: bool,
    /// The host waits in the slot queue (position from 1), when it does.
    #[serde(default)]
    pub queue_position: Option<usize>,
}

/// Answer to `GET /v1/fleet` (`berthctl fleet status -o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The fleet's name (`--fleet`).
    pub fleet: String,
    /// This agent's host id.
    pub host: String,
    /// Whether etcd answered just now; when false the rest is this agent's
    /// last view and `error` says why.
    pub reachable: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// When the hosts, halts and pause shown were read from etcd (RFC 3339
    /// UTC): now when `reachable`, else the last answer; `None` when etcd
    /// never answered this agent.
    #[serde(default)]
    pub read_at: Option<String>,
    /// The whole fleet is paused (`berthctl fleet pause`): no slot is granted.
    pub paused: bool,
    /// The rollout policy in force for this agent.
    pub max_parallel: u32,
    pub groups: Vec<String>,
    /// The bake time, e.g. `3s`.
    pub bake: String,
    pub auto_revert: bool,
    /// Every live host, by host id.
    pub hosts: Vec<FleetHostView>,
    /// Halted manifests.
    pub halted: Vec<FleetHalt>,
}

/// This agent's part in a fleet, in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAgentStatus {
    pub fleet: String,
    pub host: String,
    pub group: String,
    /// etcd answered the last request.
    pub reachable: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// Holding a rollout slot now.
    pub slot_held: bool,
    /// Why the newest manifest waits for the fleet, if it does.
    #[serde(default)]
    pub pending: Option<String>,
}
