//! The agent core's command surface: apply a manifest (validate, resolve tags
//! to digests, read env files, plan, record), list revisions, report status,
//! and the image and container commands in `images` and `containers`. The
//! HTTP layer only turns requests into these calls.

mod containers;
mod images;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::network::proxy::PortProxy;
use crate::network::{NetConfig, Network};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_core::api::{AgentStatus, ApplyResponse, RevisionInfo, ServiceStatus, StatusResponse};
use berth_core::image_ref::{Digest, ImageRef};
use berth_core::manifest::{parse_env_file, Manifest, Problem, SourceFiles};
use berth_core::plan::{self, DesiredService, ObservedContainer};
use berth_core::spec::ContainerSpec;
use sha2::{Digest as _, Sha256};

use crate::config::AgentConfig;
use crate::events::EventBus;
use crate::image::store::{ImageError, ImageStore};
use crate::metrics::Metrics;
use crate::registry::config::RegistryConfig;
use crate::registry::RegistryClient;
use crate::runtime::{ContainerInfo, Runtime, RuntimePaths};
use crate::state::{RevisionRecord, StateError, Store};

pub use containers::{ExecReply, MAX_EXEC_TIMEOUT};
pub use containers::{LogFollow, LogTargetKind, LogsReply, LogsRequest, LABEL_SERVICE};
pub use volumes::LABEL_VOLUMES;

/// Each service's env-file pairs.
pub type EnvFiles = BTreeMap<String, Vec<(String, String)>>;

/// Labels berthd puts on every container it creates.
pub const LABEL_SPEC: &str = "berth.spec";
pub const LABEL_REVISION: &str = "berth.revision";
pub const LABEL_IMAGE: &str = "berth.image";
/// The image's `ExposedPorts` (`80/tcp,443/tcp`), when it has any.
pub const LABEL_EXPOSED_PORTS: &str = "berth.exposed-ports";
/// Largest env file read.
const MAX_ENV_FILE: u64 = 1 << 20;
/// Revisions whose images GC keeps.
pub const RETAINED_REVISIONS: usize = 5;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifest is invalid:\n{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    InvalidManifest(Vec<Problem>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("this agent's manifest is managed by {0}: change the source instead (apply --dry-run and diff still work)")]
    ManagedBySource(String),
    #[error("service `{service}`: {source}")]
    ImageResolve {
        service: String,
        source: Box<ImageError>,
    },
    #[error(transparent)]
    Image(#[from] Box<ImageError>),
    #[error("{0}")]
    BadRequest(String),
    /// The request is valid but the object is not in a state to serve it.
    #[error("{0}")]
    Conflict(String),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    /// The manifest drops services the current revision runs and the caller
    /// did not ask to prune them.
    #[error("this manifest would remove {}: apply again with --prune (API: ?prune=true) to remove them", .0.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "))]
    WouldRemove(Vec<String>),
}

/// Which restart generations a new revision gets (see [`Agent::restart`]).
#[derive(Debug, Clone)]
enum Restarts<'a> {
    /// The latest revision's.
    Carry,
    /// The latest revision's with this service's bumped.
    Bump(&'a str),
    /// Exactly these (an automatic rollback restoring a revision).
    Exact(BTreeMap<String, u64>),
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

/// What the reconciler knows that is not on disk: readiness, health,
/// restart backoff, replicas being retired and images being pulled.
#[derive(Debug, Default)]
pub struct Live {
    pub services: BTreeMap<String, ServiceLive>,
    pub health: HashMap<String, crate::health::HealthLive>,
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
    /// Ids of ready replicas (the proxy and readiness endpoint use them).
    pub ready_ids: Vec<String>,
    pub restarts: u64,
    /// Consecutive failures and the restart backoff they set.
    pub restart: crate::reconcile::backoff::RestartTracker,
    /// The canonical desired spec of the last pass (a new one resets `restart`).
    pub spec: Option<String>,
    /// The canonical spec of which a replica was last seen ready: while it
    /// differs from `spec`, the service is on its first deploy.
    pub ready_spec: Option<String>,
    /// What the service waits for before starting replicas (`depends_on`).
    pub waiting: Option<String>,
    pub last_error: Option<String>,
    pub rollout_started: Option<Instant>,
    pub converged: bool,
    /// When tags were last re-resolved (`pull.check`).
    pub last_check: Option<Instant>,
    /// Transient pull failures of this service's image, for the retry backoff.
    pub pull_retry: crate::reconcile::backoff::Backoff,
    /// A permanent pull failure: (revision, image, message). Each revision
    /// tries the pull again once.
    pub image_failed: Option<(u64, String, String)>,
    /// Until then, a crash of a replica of the last rollout rolls it back.
    pub probation_until: Option<Instant>,
    /// Running or created replicas (any spec) as of the last pass: their
    /// ports are held.
    pub members: Vec<String>,
    /// The ports of the spec being rolled out (held even before a replica
    /// has them); empty while the service is halted.
    pub spec_ports: Vec<berth_core::manifest::Port>,
    /// Host ports of this service that are not published, with why.
    pub unpublished: Vec<String>,
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
    /// The bridge, addresses and per-container network namespaces.
    pub network: Arc<Network>,
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
}

/// A stable hash of what a manifest asks for, independent of file names and
/// formatting, so re-applying the same services is recognized as unchanged.
pub fn manifest_identity(manifest: &Manifest) -> String {
    let mut m = manifest.clone();
    for s in m.services.values_mut() {
        s.file.clear();
    }
    hex::encode(Sha256::digest(serde_json::to_vec(&m).unwrap_or_default()))
}

/// The monitor executable: `berth-monitor` beside the running binary, or
/// the running binary itself (it understands the monitor subcommand too).
fn monitor_exe() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| "berthd".into());
    let sibling = me.with_file_name("berth-monitor");
    if sibling.is_file() {
        sibling
    } else {
        me
    }
}

/// Registry settings: `--registry-config` plus Docker's `config.json`.
fn registry_config(config: &AgentConfig) -> Result<RegistryConfig, AgentError> {
    let mut rc = match &config.registry_config {
        Some(path) => {
            RegistryConfig::load(path).map_err(|e| AgentError::BadRequest(e.to_string()))?
        }
        None => RegistryConfig::new(),
    };
    let docker = std::env::var_os("DOCKER_CONFIG")
        .map(|d| std::path::PathBuf::from(d).join("config.json"))
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".docker/config.json"))
        });
    if let Some(path) = docker.filter(|p| p.is_file()) {
        if let Err(e) = rc.load_docker_config(&path) {
            tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable Docker config");
        }
    }
    Ok(rc)
}

impl Agent {
    pub fn new(config: AgentConfig, store: Store) -> Result<Arc<Agent>, AgentError> {
        let managed_source = crate::sources::describe(&config);
        let metrics = Metrics::new();
        let registry = RegistryClient::new(registry_config(&config)?)
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        let images = ImageStore::open(
            config.state_dir.clone(),
            store.tree("images")?,
            registry,
            metrics.clone(),
        )
        .map_err(|e| AgentError::Internal(e.to_string()))?;
        let subnet = crate::network::addr::Ipv4Net::new(config.subnet.0, config.subnet.1)
            .map_err(|e| AgentError::BadRequest(format!("--subnet: {e}")))?;
        // Outbound NAT and isolation from other bridges (nftables), like
        // Docker's default; without nftables the agent still runs, unisolated.
        let net_config = |masquerade| -> Result<NetConfig, AgentError> {
            Ok(NetConfig {
                bridge: config.bridge.clone(),
                subnet,
                run_dir: config.run_dir.clone(),
                ipam_tree: store.tree("ipam")?,
                masquerade,
            })
        };
        let network = match Network::open(net_config(true)?) {
            Ok(n) => n,
            Err(e @ crate::network::NetError::Nat { .. }) => {
                tracing::warn!(error = %e, "no NAT or bridge isolation (is nftables installed?)");
                Network::open(net_config(false)?)
                    .map_err(|e| AgentError::Internal(format!("network: {e}")))?
            }
            Err(e) => return Err(AgentError::Internal(format!("network: {e}"))),
        };
        // Published ports take the kernel's DNAT path where the bridge's
        // nftables table exists; the proxy alone otherwise.
        let proxy = if network.masquerade() {
            match crate::network::dnat::Dnat::enable(network.bridge(), network.subnet()) {
                Ok(dnat) => PortProxy::with_dnat(tokio::runtime::Handle::current(), dnat),
                Err(e) => {
                    tracing::warn!(error = %e, "published ports without the DNAT fast path");
                    PortProxy::new()
                }
            }
        } else {
            PortProxy::new()
        };
        let dns = crate::dns::Dns::new(crate::dns::DnsConfig {
            dir: config.run_dir.join("dns"),
            exe: crate::dns::DnsConfig::default_exe(),
            listen: subnet.gateway(),
            subnet,
            upstreams: config.dns_upstream.clone(),
        });
        let volumes = crate::volumes::VolumeStore::open(config.state_dir.join("volumes"))
            .map_err(|e| AgentError::Internal(format!("volumes: {e}")))?;
        let runtime = Arc::new(Runtime::new(RuntimePaths::new(
            config.state_dir.clone(),
            config.run_dir.clone(),
            &config.cgroup_parent,
            monitor_exe(),
        )));
        let log_archive = crate::logs::LogArchive::new(
            config.state_dir.join("logs"),
            crate::logs::ARCHIVE_KEEP,
            crate::logs::ARCHIVE_MAX_BYTES,
        );
        let events = EventBus::persistent(store.tree(crate::events::TREE)?);
        let agent = Agent {
            managed_source,
            source_error: std::sync::Mutex::new(None),
            config,
            store,
            events,
            metrics,
            images,
            runtime,
            log_archive,
            network: Arc::new(network),
            proxy,
            dns: Arc::new(dns),
            volumes: Arc::new(volumes),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            apply_lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            live: std::sync::Mutex::new(Live::default()),
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
                "drain",
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

    fn source_error(&self) -> Option<String> {
        self.source_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every container on disk (running or not), from the runtime.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, AgentError> {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.list())
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|e| AgentError::Runtime(e.to_string()))
    }

    /// Containers as the plan sees them: service and stored spec.
    async fn observed(&self) -> Result<Vec<ObservedContainer>, AgentError> {
        Ok(self
            .list_containers()
            .await?
            .into_iter()
            .filter_map(|c| {
                let service = c.labels.get(LABEL_SERVICE)?.clone();
                let spec = c
                    .labels
                    .get(LABEL_SPEC)
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .and_then(|v| ContainerSpec::from_stored(&v).ok());
                Some(ObservedContainer {
                    id: c.id,
                    service,
                    spec,
                })
            })
            .collect())
    }

    /// Resolves each service's image to a digest (pinned ones as written).
    /// `strict` fails on the first unresolvable image; otherwise unresolvable
    /// services are left out.
    async fn resolve_digests(
        &self,
        manifest: &Manifest,
        strict: bool,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        let mut cache: BTreeMap<String, String> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for svc in manifest.services.values() {
            if let Some(d) = &svc.image.digest {
                out.insert(svc.name.clone(), d.to_string());
                continue;
            }
            let key = svc.image.to_string();
            if let Some(d) = cache.get(&key) {
                out.insert(svc.name.clone(), d.clone());
                continue;
            }
            match self.images.registry().resolve(&svc.image).await {
                Ok(r) => {
                    cache.insert(key, r.digest.to_string());
                    out.insert(svc.name.clone(), r.digest.to_string());
                }
                Err(e) => {
                    self.metrics
                        .registry_errors
                        .with_label_values(&[svc.image.registry.as_str(), e.kind()])
                        .inc();
                    if strict {
                        return Err(AgentError::ImageResolve {
                            service: svc.name.clone(),
                            source: Box::new(ImageError::Registry(e)),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads every service's env file; problems name the file and line.
    fn read_env_files(manifest: &Manifest) -> Result<EnvFiles, Vec<Problem>> {
        use std::io::Read;
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for svc in manifest.services.values() {
            let Some(path) = &svc.env_file else { continue };
            let name = path.display().to_string();
            let mut text = String::new();
            let read = std::fs::File::open(path)
                .and_then(|f| f.take(MAX_ENV_FILE).read_to_string(&mut text));
            if let Err(e) = read {
                problems.push(Problem {
                    file: svc.file.clone(),
                    line: 1,
                    column: 1,
                    key: format!("service.{}.env_file", svc.name),
                    message: format!("cannot read {name}: {e}"),
                });
                continue;
            }
            match parse_env_file(&name, &text) {
                Ok(pairs) => {
                    out.insert(svc.name.clone(), pairs);
                }
                Err(p) => problems.push(p),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The desired services of a revision (digests and env files included).
    pub fn desired_of(rec: &RevisionRecord) -> Result<(Manifest, Vec<DesiredService>), AgentError> {
        let manifest = Manifest::from_sources(&rec.files).map_err(|e| {
            AgentError::Internal(format!(
                "revision {} no longer parses: {e}",
                rec.info.number
            ))
        })?;
        let desired = desired_services(&manifest, &rec.info.digests, &rec.env_files, &rec.restarts);
        Ok((manifest, desired))
    }

    /// Validates a manifest, resolves its tags to digests, plans it against
    /// what runs, and (unless `dry_run`) records it as a new revision,
    /// durably, before answering. The reconciler acts on it right after.
    /// Whole-host semantics: services the manifest leaves out are removed
    /// (manifest sources use this); API callers use [`Agent::apply_checked`].
    pub async fn apply(
        &self,
        files: SourceFiles,
        source: ApplySource,
        dry_run: bool,
    ) -> Result<ApplyResponse, AgentError> {
        self.apply_checked(files, source, dry_run, true).await
    }

    /// [`Agent::apply`], but unless `prune` a manifest that drops services
    /// the current revision runs is refused with [`AgentError::WouldRemove`]
    /// naming them (a dry run still shows the removal).
    pub async fn apply_checked(
        &self,
        files: SourceFiles,
        source: ApplySource,
        dry_run: bool,
        prune: bool,
    ) -> Result<ApplyResponse, AgentError> {
        if let (Some(owner), false, ApplySource::Api | ApplySource::Rollback(_)) =
            (&self.managed_source, dry_run, &source)
        {
            self.emit(
                "apply-refused",
                None,
                format!("{} refused: managed by {owner}", source.describe()),
            );
            return Err(AgentError::ManagedBySource(owner.clone()));
        }
        let refuse = |problems: Vec<Problem>| {
            if !dry_run {
                self.metrics
                    .manifest_apply_errors
                    .with_label_values(&[source.label()])
                    .inc();
                let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                self.emit(
                    "apply-refused",
                    None,
                    format!("{} refused: {first}", source.describe()),
                );
            }
            AgentError::InvalidManifest(problems)
        };
        let manifest = match Manifest::from_sources(&files) {
            Ok(m) => m,
            Err(e) => {
                let problems = match e {
                    berth_core::manifest::ManifestError::Invalid(p) => p,
                    other => vec![Problem {
                        file: files.keys().next().cloned().unwrap_or_default(),
                        line: 1,
                        column: 1,
                        key: String::new(),
                        message: other.to_string(),
                    }],
                };
                return Err(refuse(problems));
            }
        };
        let env_files = Self::read_env_files(&manifest).map_err(refuse)?;
        let digests = match self.resolve_digests(&manifest, !dry_run).await {
            Ok(d) => d,
            Err(e) => {
                if !dry_run {
                    self.metrics
                        .manifest_apply_errors
                        .with_label_values(&[source.label()])
                        .inc();
                    self.emit(
                        "apply-refused",
                        None,
                        format!("{} refused: {e}", source.describe()),
                    );
                }
                return Err(e);
            }
        };
        let problems = self
            .image_volume_problems(&files, &manifest, &digests)
            .await;
        if !problems.is_empty() {
            return Err(refuse(problems));
        }
        let mut resp = self
            .record(
                files,
                &manifest,
                digests.clone(),
                env_files,
                source,
                RecordFlags { dry_run, prune },
                Restarts::Carry,
            )
            .await?;
        self.note_image_volumes(&manifest, &digests, &mut resp);
        Ok(resp)
    }

    /// Plans and records an already validated and resolved manifest. The
    /// latest revision's restart generations carry on; `restart` bumps one
    /// service's (`berthctl restart`).
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        files: SourceFiles,
        manifest: &Manifest,
        digests: BTreeMap<String, String>,
        env_files: BTreeMap<String, Vec<(String, String)>>,
        source: ApplySource,
        flags: RecordFlags,
        restart: Restarts<'_>,
    ) -> Result<ApplyResponse, AgentError> {
        let RecordFlags { dry_run, prune } = flags;
        let observed = self.observed().await?;
        let _guard = self.apply_lock.lock().await;
        let latest = self.store.latest_revision()?;
        let carried = || {
            latest
                .as_ref()
                .map(|l| l.restarts.clone())
                .unwrap_or_default()
        };
        let mut restarts: BTreeMap<String, u64> = match restart {
            Restarts::Carry => carried(),
            Restarts::Bump(name) => {
                let mut r = carried();
                *r.entry(name.to_string()).or_default() += 1;
                r
            }
            Restarts::Exact(r) => r,
        };
        restarts.retain(|name, _| manifest.services.contains_key(name));
        let desired = desired_services(manifest, &digests, &env_files, &restarts);
        let steps = plan::plan(&desired, &observed);
        let current_desired = match &latest {
            Some(rec) => Self::desired_of(rec)?.1,
            None => Vec::new(),
        };
        let changes = plan::revision_diff(&current_desired, &desired);
        let removed = would_remove(&current_desired, manifest);
        if !prune && !dry_run && !removed.is_empty() {
            self.emit(
                "apply-refused",
                None,
                format!(
                    "{} refused: would remove {}",
                    source.describe(),
                    removed.join(", ")
                ),
            );
            return Err(AgentError::WouldRemove(removed));
        }
        let identity = {
            let mut h = Sha256::new();
            h.update(manifest_identity(manifest).as_bytes());
            h.update(serde_json::to_vec(&digests).unwrap_or_default());
            h.update(serde_json::to_vec(&env_files).unwrap_or_default());
            if !restarts.is_empty() {
                h.update(serde_json::to_vec(&restarts).unwrap_or_default());
            }
            hex::encode(h.finalize())
        };
        let unchanged = latest
            .as_ref()
            .is_some_and(|l| l.info.manifest_sha256 == identity && l.info.state != "failed");
        if dry_run || unchanged {
            return Ok(ApplyResponse {
                revision: latest.map(|l| l.info.number),
                unchanged,
                dry_run,
                changes,
                plan: steps,
            });
        }
        let number = latest.as_ref().map(|r| r.info.number + 1).unwrap_or(1);
        let record = RevisionRecord {
            info: RevisionInfo {
                number,
                applied_at: crate::now_rfc3339(),
                source: source.describe(),
                manifest_sha256: identity,
                services: manifest.services.keys().cloned().collect(),
                digests,
                state: "applied".into(),
            },
            files,
            env_files,
            halted: BTreeSet::new(),
            restarts,
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.put_revision(&record))
            .await
            .map_err(|e| AgentError::Internal(format!("storing revision: {e}")))?;
        if let Err(e) = stored {
            self.metrics
                .manifest_apply_errors
                .with_label_values(&[source.label()])
                .inc();
            return Err(e.into());
        }
        // A revision still rolling out when a newer one is recorded never
        // completes: it is `superseded` (not left `rolling-out` forever).
        if let Some(mut prev) =
            latest.filter(|l| l.info.state == "applied" || l.info.state == "rolling-out")
        {
            prev.info.state = "superseded".into();
            if let Err(e) = self.store.update_revision(&prev) {
                tracing::warn!(revision = prev.info.number, error = %e, "marking revision superseded");
            }
        }
        self.metrics
            .revisions_applied
            .with_label_values(&[source.label()])
            .inc();
        self.metrics.current_revision.set(number as i64);
        self.emit(
            "revision-applied",
            None,
            format!("revision {number} from {}", source.describe()),
        );
        self.wake.notify_one();
        Ok(ApplyResponse {
            revision: Some(number),
            unchanged: false,
            dry_run: false,
            changes,
            plan: steps,
        })
    }

    /// Re-applies an earlier revision's exact manifest and digests as a new
    /// revision. Without a number, the newest earlier revision that completed.
    pub async fn rollback(&self, target: Option<u64>) -> Result<ApplyResponse, AgentError> {
        if let Some(owner) = &self.managed_source {
            return Err(AgentError::ManagedBySource(owner.clone()));
        }
        let revisions = self.store.revisions()?;
        let current = revisions.last().map(|r| r.info.number).unwrap_or(0);
        let rec = match target {
            Some(n) => revisions
                .iter()
                .find(|r| r.info.number == n)
                .cloned()
                .ok_or(AgentError::NotFound {
                    what: format!("revision {n}"),
                })?,
            None => revisions
                .iter()
                .rev()
                .find(|r| r.info.number < current && r.info.state == "complete")
                .or_else(|| revisions.iter().rev().find(|r| r.info.number < current))
                .cloned()
                .ok_or(AgentError::NotFound {
                    what: "an earlier revision".into(),
                })?,
        };
        self.restore(&rec, ApplySource::Rollback(rec.info.number))
            .await
    }

    /// Records `rec`'s manifest, digests and env files as a new revision.
    /// An automatic rollback also restores `rec`'s restart generations (what
    /// ran before the failed rollout, including a failed `restart`); a
    /// rollback asked for keeps the current ones (no extra replacement).
    pub(crate) async fn restore(
        &self,
        rec: &RevisionRecord,
        source: ApplySource,
    ) -> Result<ApplyResponse, AgentError> {
        let (manifest, _) = Self::desired_of(rec)?;
        let restarts = match source {
            ApplySource::AutoRollback { .. } => Restarts::Exact(rec.restarts.clone()),
            _ => Restarts::Carry,
        };
        self.rerecord(rec, &manifest, rec.info.digests.clone(), source, restarts)
            .await
    }

    /// Records a stored revision's files and env files again, with `digests`,
    /// as a new whole-host revision (`manifest` is `rec`'s, already parsed).
    async fn rerecord(
        &self,
        rec: &RevisionRecord,
        manifest: &Manifest,
        digests: BTreeMap<String, String>,
        source: ApplySource,
        restarts: Restarts<'_>,
    ) -> Result<ApplyResponse, AgentError> {
        self.record(
            rec.files.clone(),
            manifest,
            digests,
            rec.env_files.clone(),
            source,
            RecordFlags::WHOLE_HOST,
            restarts,
        )
        .await
    }

    /// Records the current revision again with new digests (a `pull.check`
    /// or `pull.policy = "always"` found a tag moved).
    pub(crate) async fn record_new_digests(
        &self,
        rec: &RevisionRecord,
        digests: BTreeMap<String, String>,
    ) -> Result<ApplyResponse, AgentError> {
        let (manifest, _) = Self::desired_of(rec)?;
        self.rerecord(
            rec,
            &manifest,
            digests,
            ApplySource::PullCheck,
            Restarts::Carry,
        )
        .await
    }

    /// `berthctl restart SERVICE`: records the current revision again with
    /// the service's restart generation bumped, so the reconciler replaces
    /// its replicas with the same spec through the service's normal,
    /// health-gated rollout (start-first or stop-first). Allowed under a
    /// managed manifest source: the manifest does not change.
    pub async fn restart(&self, service: &str) -> Result<ApplyResponse, AgentError> {
        let rec = self
            .store
            .latest_revision()?
            .ok_or_else(|| AgentError::NotFound {
                what: format!("service `{service}` (no revision is applied)"),
            })?;
        let (manifest, _) = Self::desired_of(&rec)?;
        if !manifest.services.contains_key(service) {
            return Err(AgentError::NotFound {
                what: format!("service `{service}` in revision {}", rec.info.number),
            });
        }
        self.rerecord(
            &rec,
            &manifest,
            rec.info.digests.clone(),
            ApplySource::Restart(service.to_string()),
            Restarts::Bump(service),
        )
        .await
    }

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

    /// Emits an event and counts it.
    pub fn emit(&self, kind: &str, service: Option<&str>, message: String) {
        self.metrics.events.with_label_values(&[kind]).inc();
        self.events.emit(kind, service, None, message);
    }

    /// Emits an event about one container.
    pub fn emit_container(&self, kind: &str, service: &str, container: &str, message: String) {
        self.metrics.events.with_label_values(&[kind]).inc();
        self.events
            .emit(kind, Some(service), Some(container), message);
    }
}

/// How [`Agent::record`] treats a manifest.
#[derive(Debug, Clone, Copy)]
struct RecordFlags {
    /// Plan only; record nothing.
    dry_run: bool,
    /// Services the current revision runs and the manifest leaves out may go.
    prune: bool,
}

impl RecordFlags {
    /// Record, removing what the manifest leaves out (sources, rollbacks).
    const WHOLE_HOST: RecordFlags = RecordFlags {
        dry_run: false,
        prune: true,
    };
}

/// The services `current` runs that `manifest` leaves out, sorted.
pub fn would_remove(current: &[DesiredService], manifest: &Manifest) -> Vec<String> {
    let mut out: Vec<String> = current
        .iter()
        .filter(|d| !manifest.services.contains_key(&d.name))
        .map(|d| d.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The desired services of a manifest with resolved digests and env files.
pub fn desired_services(
    manifest: &Manifest,
    digests: &BTreeMap<String, String>,
    env_files: &BTreeMap<String, Vec<(String, String)>>,
    restarts: &BTreeMap<String, u64>,
) -> Vec<DesiredService> {
    manifest
        .services
        .values()
        .map(|s| {
            let digest: Option<Digest> = digests.get(&s.name).and_then(|d| d.parse().ok());
            let env = env_files.get(&s.name).map(Vec::as_slice).unwrap_or(&[]);
            let mut d = DesiredService::of(s, digest.as_ref(), env);
            d.spec.restart_generation = restarts.get(&s.name).copied().unwrap_or(0);
            d
        })
        .collect()
}

/// The image reference a service runs, pinned to its resolved digest.
pub fn pinned_image(image: &ImageRef, digest: Option<&String>) -> ImageRef {
    match digest.and_then(|d| d.parse::<Digest>().ok()) {
        Some(d) => image.pinned(d),
        None => image.clone(),
    }
}
