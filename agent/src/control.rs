//! The agent core's command surface: apply a manifest, list revisions, report
//! status, stream events. The HTTP layer only turns requests into these calls;
//! everything that decides or stores lives behind them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_core::api::{AgentStatus, ApplyResponse, RevisionInfo, ServiceStatus, StatusResponse};
use berth_core::manifest::{Manifest, Problem, SourceFiles};
use berth_core::plan::{self, ObservedContainer};
use sha2::{Digest as _, Sha256};

use crate::config::AgentConfig;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::state::{RevisionRecord, StateError, Store};

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
}

/// Where a manifest came from; `label` is the bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplySource {
    Api,
    File(String),
    Url(String),
    Git { commit: String },
    Rollback(u64),
}

impl ApplySource {
    pub fn label(&self) -> &'static str {
        match self {
            ApplySource::Api | ApplySource::Rollback(_) => "api",
            ApplySource::File(_) => "file",
            ApplySource::Url(_) => "url",
            ApplySource::Git { .. } => "git",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ApplySource::Api => "api".into(),
            ApplySource::File(p) => format!("file:{p}"),
            ApplySource::Url(u) => format!("url:{u}"),
            ApplySource::Git { commit } => format!("git:{commit}"),
            ApplySource::Rollback(n) => format!("rollback:{n}"),
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
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    apply_lock: tokio::sync::Mutex<()>,
    /// The configured manifest source (`--manifests`, `--manifest-url`, `--git`),
    /// which alone may record revisions while it is set.
    managed_source: Option<String>,
    /// Why the source's newest version was not applied, for `status`.
    source_error: std::sync::Mutex<Option<String>>,
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

impl Agent {
    pub fn new(config: AgentConfig, store: Store) -> Result<Arc<Agent>, AgentError> {
        let managed_source = crate::sources::describe(&config);
        let agent = Agent {
            managed_source,
            source_error: std::sync::Mutex::new(None),
            config,
            store,
            events: EventBus::new(),
            metrics: Metrics::new(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            apply_lock: tokio::sync::Mutex::new(()),
        };
        if let Some(rev) = agent.store.latest_revision()? {
            agent.metrics.current_revision.set(rev.info.number as i64);
        }
        Ok(Arc::new(agent))
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    /// Containers as observed on this host (the runtime fills this in).
    fn observed(&self) -> Vec<ObservedContainer> {
        Vec::new()
    }

    /// Validates a manifest, plans it against what runs, and (unless
    /// `dry_run`) records it as a new revision, durably, before answering.
    pub async fn apply(
        &self,
        files: SourceFiles,
        source: ApplySource,
        dry_run: bool,
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
                return Err(AgentError::InvalidManifest(problems));
            }
        };
        let desired = plan::desired_from_manifest(&manifest);
        let steps = plan::plan(&desired, &self.observed());
        let _guard = self.apply_lock.lock().await;
        let latest = self.store.latest_revision()?;
        let current_desired = match &latest {
            Some(rec) => {
                plan::desired_from_manifest(&Manifest::from_sources(&rec.files).map_err(|e| {
                    AgentError::Internal(format!(
                        "revision {} no longer parses: {e}",
                        rec.info.number
                    ))
                })?)
            }
            None => Vec::new(),
        };
        let changes = plan::revision_diff(&current_desired, &desired);
        let identity = manifest_identity(&manifest);
        let unchanged = latest
            .as_ref()
            .is_some_and(|l| l.info.manifest_sha256 == identity);
        if dry_run || unchanged {
            return Ok(ApplyResponse {
                revision: latest.map(|l| l.info.number),
                unchanged,
                dry_run,
                changes,
                plan: steps,
            });
        }
        let number = latest.map(|r| r.info.number + 1).unwrap_or(1);
        let record = RevisionRecord {
            info: RevisionInfo {
                number,
                applied_at: crate::now_rfc3339(),
                source: source.describe(),
                manifest_sha256: identity,
                services: manifest.services.keys().cloned().collect(),
                digests: Default::default(),
                state: "applied".into(),
            },
            files,
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
        Ok(ApplyResponse {
            revision: Some(number),
            unchanged: false,
            dry_run: false,
            changes,
            plan: steps,
        })
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
            // A stored revision was valid when applied; a parse failure here
            // means the store was tampered with, which status must not hide.
            let manifest = Manifest::from_sources(&rec.files).map_err(|e| {
                AgentError::Internal(format!(
                    "revision {} no longer parses: {e}",
                    rec.info.number
                ))
            })?;
            for s in manifest.services.values() {
                services.push(ServiceStatus {
                    name: s.name.clone(),
                    image: s.image.to_string(),
                    digest: rec.info.digests.get(&s.name).cloned(),
                    replicas_desired: s.replicas,
                    replicas_ready: 0,
                    restarts: 0,
                    last_error: None,
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
        if self.is_draining() {
            return Ok((false, "host is draining".into()));
        }
        let status = self.status()?;
        match status.services.iter().find(|s| s.name == name) {
            None => Err(AgentError::NotFound {
                what: format!("service `{name}`"),
            }),
            Some(s) if s.replicas_ready > 0 => Ok((
                true,
                format!("{}/{} replicas ready", s.replicas_ready, s.replicas_desired),
            )),
            Some(s) => Ok((false, format!("0/{} replicas ready", s.replicas_desired))),
        }
    }

    /// Emits an event and counts it.
    pub fn emit(&self, kind: &str, service: Option<&str>, message: String) {
        self.metrics.events.with_label_values(&[kind]).inc();
        self.events.emit(kind, service, None, message);
    }
}
