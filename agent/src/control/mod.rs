//! The agent handle and its command surface. `Agent` is what every part of
//! berthd shares: the store, events, metrics, images, runtime, network and the
//! live state, with the handle's own verbs (emit, wake, ready, drain). The
//! commands are plain methods grouped by room: `apply` (apply, rollback,
//! restart), `status`, `containers`, `images`, `volumes`. The HTTP layer only
//! turns requests into these calls; `daemon` constructs the agent.

mod apply;
mod containers;
mod images;
mod status;
mod volumes;

use berth_core::vocab::EventKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_core::manifest::Problem;

use crate::config::AgentConfig;
use crate::containers::{ContainerError, Containers};
use crate::events::EventBus;
use crate::image::store::{ImageError, ImageStore};
use crate::launch::LaunchError;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::network::proxy::PortProxy;
use crate::runtime::{ContainerInfo, Runtime, RuntimeError};
use crate::state::{StateError, Store};
use crate::volumes::implicit::WriterProblem;
use crate::volumes::VolumeError;

pub use apply::{desired_services, manifest_identity, pinned_image, would_remove, EnvFiles};
pub use containers::{
    ExecReply, LogFollow, LogTargetKind, LogsReply, LogsRequest, MAX_EXEC_TIMEOUT,
};

/// Revisions whose images GC keeps.
pub const RETAINED_REVISIONS: usize = 5;

/// Why a command failed. Each module's error is its own variant (the
/// caller's mistakes: `InvalidManifest`, `NotFound`, `BadRequest`,
/// `Conflict`, `ManagedBySource`, `WouldRemove`; the rest are the agent's or
/// its parts'), so `http` picks the status from the variant, never from text
/// (`http::status_of` is the table).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifest is invalid:\n{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    InvalidManifest(Vec<Problem>),
    /// The caller named something that does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The request itself is wrong (ambiguous id, bad argument).
    #[error("{0}")]
    BadRequest(String),
    /// The request is valid but the object is not in a state to serve it.
    #[error("{0}")]
    Conflict(String),
    /// The agent is in a fleet and the manifest waits for it (a slot, an
    /// earlier group's bake, a halt, a pause, etcd): not recorded.
    #[error("not applied yet: {0}")]
    FleetWait(String),
    #[error("this agent's manifest is managed by {0}: change the source instead (apply --dry-run and diff still work)")]
    ManagedBySource(String),
    /// The manifest drops services the current revision runs and the caller
    /// did not ask to prune them.
    #[error("this manifest would remove {}: apply again with --prune (API: ?prune=true) to remove them", .0.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "))]
    WouldRemove(Vec<String>),
    /// An image reference the caller gave does not parse.
    #[error(transparent)]
    Reference(#[from] berth_core::image_ref::ReferenceError),
    /// A tag of `service` could not be resolved to a digest at apply.
    #[error(transparent)]
    Archive(#[from] crate::image::archive::ArchiveError),
    #[error("service `{service}`: {image} is not in the agent's store and its pull.policy is \"never\": load it first with `berthctl load ARCHIVE`")]
    NotLoaded { service: String, image: String },
    #[error("service `{service}`: {source}")]
    ImageResolve {
        service: String,
        source: Box<ImageError>,
    },
    #[error(transparent)]
    Image(#[from] Box<ImageError>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// A stored revision's manifest no longer validates (a newer manifest
    /// rule, or a damaged store).
    #[error("internal error: revision {number} no longer parses: {source}")]
    StoredRevision {
        number: u64,
        source: Box<berth_core::manifest::ManifestError>,
    },
    #[error(transparent)]
    Runtime(#[from] Box<RuntimeError>),
    #[error(transparent)]
    Containers(#[from] ContainerError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A service's user namespace cannot be given (no kernel support, pool full).
    #[error(transparent)]
    IdRange(#[from] crate::idranges::IdRangeError),
    /// The service's process cannot be built from `image`'s config and the
    /// manifest (no command, unknown user, ...).
    #[error("{image}: {source}")]
    Launch { image: String, source: LaunchError },
    /// An image VOLUME of `service` would get a second writer.
    #[error("{}: {}", .problem.key(.service), .problem.message(.service))]
    VolumeWriters {
        service: String,
        problem: Box<WriterProblem>,
    },
    #[error("internal error: JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Blocking work (`what`) run off the async threads panicked or was
    /// cancelled.
    #[error("internal error: {what}: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    /// Writing an image archive (`save`) into `path` failed.
    #[error("writing the image archive {path}: {source}")]
    SaveIo {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<RuntimeError> for AgentError {
    fn from(e: RuntimeError) -> Self {
        AgentError::Runtime(Box::new(e))
    }
}

impl From<ImageError> for AgentError {
    fn from(e: ImageError) -> Self {
        AgentError::Image(Box::new(e))
    }
}

/// Runs blocking work off the async threads; a panic in it is
/// [`AgentError::Task`] naming `what`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| AgentError::Task { what, source })
}

/// Where a manifest came from; `label` is the bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplySource {
    Api,
    File(String),
    Url(String),
    Git {
        commit: String,
    },
    Rollback(u64),
    /// `berthctl restart SERVICE`.
    Restart(String),
    /// A `pull.check` found a new digest for a tag.
    PullCheck,
    /// A failed rollout restored an earlier revision.
    AutoRollback {
        failed: u64,
        restored: u64,
    },
}

impl ApplySource {
    /// Whether a manifest from here passes the fleet's gate: new manifests
    /// (API, sources) do; the agent's own re-records and rollbacks do not.
    pub fn gated(&self) -> bool {
        matches!(
            self,
            ApplySource::Api | ApplySource::File(_) | ApplySource::Url(_) | ApplySource::Git { .. }
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            ApplySource::Api | ApplySource::Rollback(_) | ApplySource::Restart(_) => "api",
            ApplySource::File(_) => "file",
            ApplySource::Url(_) => "url",
            ApplySource::Git { .. } => "git",
            ApplySource::PullCheck | ApplySource::AutoRollback { .. } => "agent",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ApplySource::Api => "api".into(),
            ApplySource::File(p) => format!("file:{p}"),
            ApplySource::Url(u) => format!("url:{u}"),
            ApplySource::Git { commit } => format!("git:{commit}"),
            ApplySource::Rollback(n) => format!("rollback:{n}"),
            ApplySource::Restart(s) => format!("restart:{s}"),
            ApplySource::PullCheck => "pull-check".into(),
            ApplySource::AutoRollback { failed, restored } => {
                format!("rollback:{restored} (revision {failed} failed)")
            }
        }
    }
}

/// The running agent's shared core.
#[derive(Debug)]
pub struct Agent {
    pub config: AgentConfig,
    store: Store,
    pub events: EventBus,
    pub metrics: Metrics,
    pub images: ImageStore,
    pub runtime: Arc<Runtime>,
    /// Logs of removed containers, per service.
    pub log_archive: crate::logs::LogArchive,
    /// What the reconciler and health checks do to containers (the runtime
    /// on the bridge network, or a test's fake).
    pub containers: Arc<dyn Containers>,
    /// Published ports: balanced over ready replicas, drain-aware.
    pub proxy: PortProxy,
    /// Service discovery: berth-dns and the records it serves.
    pub dns: Arc<crate::dns::Dns>,
    /// Named volumes (`<state>/volumes`).
    pub volumes: Arc<crate::volumes::VolumeStore>,
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    apply_lock: tokio::sync::Mutex<()>,
    /// The configured manifest source (`--manifests`, `--manifest-url`, `--git`),
    /// which alone may record revisions while it is set.
    managed_source: Option<String>,
    /// Why the source's newest version was not applied, for `status`.
    source_error: std::sync::Mutex<Option<String>>,
    /// Wakes the reconcile loop (apply, exits, health changes).
    pub wake: tokio::sync::Notify,
    pub live: std::sync::Mutex<Live>,
    /// The services' user-namespace id ranges (persisted).
    pub id_ranges: crate::idranges::IdRanges,
    /// The fleet this agent is in (`--fleet-etcd`), whose gate new manifests pass.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Whether this kernel can run services in their own user namespace
    /// (`Err`: why not), probed once at start.
    pub userns_support: Result<(), String>,
    /// What was rebuilt at start after the state database was found lost
    /// (`crate::rebuild`), shown in `status`; set once.
    pub rebuilt: std::sync::OnceLock<berth_core::api::StateRebuild>,
}

/// Everything an [`Agent`] is made of, built by `daemon` (the one
/// composition root) or by a test.
#[derive(Debug)]
pub struct AgentParts {
    pub config: AgentConfig,
    pub store: Store,
    pub events: EventBus,
    pub metrics: Metrics,
    pub images: ImageStore,
    pub runtime: Arc<Runtime>,
    pub log_archive: crate::logs::LogArchive,
    pub containers: Arc<dyn Containers>,
    pub proxy: PortProxy,
    pub dns: Arc<crate::dns::Dns>,
    pub volumes: Arc<crate::volumes::VolumeStore>,
    /// Whether `userns = "auto"` services can get user namespaces here
    /// (`Err` says why not): the kernel's and the state dir's filesystem's
    /// answer, found by `daemon::userns_support`.
    pub userns_support: Result<(), String>,
}

impl Agent {
    /// The agent of `parts`, not yet ready or draining.
    pub fn new(parts: AgentParts) -> Result<Arc<Agent>, AgentError> {
        let AgentParts {
            config,
            store,
            events,
            metrics,
            images,
            runtime,
            log_archive,
            containers,
            proxy,
            dns,
            volumes,
            userns_support,
        } = parts;
        let id_ranges = crate::idranges::IdRanges::open(&store, config.userns_pool)?;
        if let Err(why) = &userns_support {
            if config.userns_fallback {
                tracing::warn!(%why, "user namespaces unavailable: userns = \"auto\" services run in the host's user namespace (--userns-fallback)");
            } else {
                tracing::warn!(%why, "user namespaces unavailable: userns = \"auto\" services will fail to start (set userns = \"host\" or pass --userns-fallback)");
            }
        }
        let fleet = match config.fleet.clone() {
            Some(mut c) => {
                c.instance = crate::fleet::instance_id(&config.state_dir)?;
                Some(c)
            }
            None => None,
        };
        let agent = Agent {
            id_ranges,
            fleet: fleet.map(|c| Arc::new(crate::fleet::Fleet::new(c))),
            userns_support,
            managed_source: config.source.as_ref().map(|s| s.describe()),
            source_error: std::sync::Mutex::new(None),
            config,
            store,
            events,
            metrics,
            images,
            runtime,
            log_archive,
            containers,
            proxy,
            dns,
            volumes,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            apply_lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            live: std::sync::Mutex::new(Live::default()),
            rebuilt: std::sync::OnceLock::new(),
        };
        if let Some(rev) = agent.store.latest_revision()? {
            agent.metrics.current_revision.set(rev.info.number as i64);
        }
        Ok(Arc::new(agent))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Locks the live state (a poisoned lock is still usable: it holds plain data).
    pub fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the initial reconcile as done (`/readyz` turns 200).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Puts the whole host into drain (every readiness endpoint answers 503).
    pub fn set_draining(&self, on: bool) {
        let was = self.draining.swap(on, Ordering::SeqCst);
        self.metrics.host_draining.set(i64::from(on));
        if was != on {
            self.emit(
                EventKind::Drain,
                None,
                if on {
                    "host drain on".into()
                } else {
                    "host drain off".into()
                },
            );
            self.wake.notify_one();
        }
    }

    /// The configured manifest source, if any (it owns the manifest).
    pub fn managed_source(&self) -> Option<&str> {
        self.managed_source.as_deref()
    }

    /// Sets or clears the error `status` shows for the manifest source.
    pub fn set_source_error(&self, error: Option<String>) {
        *self.source_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub(crate) fn source_error(&self) -> Option<String> {
        self.source_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every container on disk (running or not), from the runtime.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, AgentError> {
        Ok(self.containers.list().await?)
    }

    /// Emits an event and counts it.
    pub fn emit(&self, kind: EventKind, service: Option<&str>, message: String) {
        self.metrics.count_event(kind);
        self.events.emit(kind, service, None, message);
        self.nudge_fleet(kind);
    }

    /// A host event (a rollout ended, health changed) may change the fleet
    /// record or free the slot: the fleet loop looks at once.
    fn nudge_fleet(&self, kind: EventKind) {
        if let Some(fleet) = &self.fleet {
            if !kind.as_str().starts_with("fleet-") {
                fleet.nudge();
            }
        }
    }

    /// Emits an event about one container.
    pub fn emit_container(&self, kind: EventKind, service: &str, container: &str, message: String) {
        self.metrics.count_event(kind);
        self.events
            .emit(kind, Some(service), Some(container), message);
        self.nudge_fleet(kind);
    }
}
