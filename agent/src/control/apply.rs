//! The apply room: validate a manifest (one pass, every problem with
//! file:line:col), resolve tags to digests, read env files, plan against what
//! runs, and record a revision durably before answering; rollback, restart
//! and the agent's own re-records (pull-check, automatic rollback) go through
//! the same `record`.

use berth_core::vocab::{EventKind, RevisionState};
use std::collections::{BTreeMap, BTreeSet};

use berth_core::api::{ApplyResponse, RevisionInfo};
use berth_core::image_ref::{Digest, ImageRef};
use berth_core::manifest::{parse_env_file, Manifest, Problem, SourceFiles};
use berth_core::plan::{self, DesiredService, ObservedContainer};
use sha2::{Digest as _, Sha256};

use super::{Agent, AgentError, ApplySource};
use crate::image::store::ImageError;
use crate::labels::{stored_spec, LABEL_SERVICE};
use crate::state::RevisionRecord;

/// Each service's env-file pairs.
pub type EnvFiles = BTreeMap<String, Vec<(String, String)>>;
/// Largest env file read.
const MAX_ENV_FILE: u64 = 1 << 20;

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
    /// Containers as the plan sees them: service and stored spec.
    async fn observed(&self) -> Result<Vec<ObservedContainer>, AgentError> {
        Ok(self
            .list_containers()
            .await?
            .into_iter()
            .filter_map(|c| {
                let service = c.labels.get(LABEL_SERVICE)?.clone();
                let spec = stored_spec(&c.labels);
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
            if svc.pull.policy == berth_core::manifest::PullPolicy::Never {
                // Resolved in the store only: no registry is asked.
                match self.images.find(&svc.image).map_err(Box::new)? {
                    Some(rec) => {
                        cache.insert(key, rec.digest.to_string());
                        out.insert(svc.name.clone(), rec.digest.to_string());
                    }
                    None if strict => {
                        return Err(AgentError::NotLoaded {
                            service: svc.name.clone(),
                            image: svc.image.to_string(),
                        })
                    }
                    None => {}
                }
                continue;
            }
            match self.images.registry().resolve(&svc.image).await {
                Ok(r) => {
                    cache.insert(key, r.digest.to_string());
                    out.insert(svc.name.clone(), r.digest.to_string());
                }
                Err(e) => {
                    self.metrics
                        .registry_error(svc.image.registry.as_str(), e.kind());
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

    /// Reads every service's seccomp profile file, so a missing or bad one
    /// refuses the apply (the file and entry named) rather than every start.
    fn check_seccomp_profiles(manifest: &Manifest) -> Result<(), Vec<Problem>> {
        use berth_core::manifest::SeccompProfile;
        let problems: Vec<Problem> = manifest
            .services
            .values()
            .filter_map(|svc| match &svc.seccomp {
                SeccompProfile::File(path) => {
                    crate::runtime::seccomp::Profile::load(std::path::Path::new(path))
                        .err()
                        .map(|e| Problem {
                            file: svc.file.clone(),
                            line: 1,
                            column: 1,
                            key: format!("service.{}.seccomp", svc.name),
                            message: e.to_string(),
                        })
                }
                SeccompProfile::Default | SeccompProfile::Unconfined => None,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The desired services of a revision (digests and env files included).
    pub fn desired_of(rec: &RevisionRecord) -> Result<(Manifest, Vec<DesiredService>), AgentError> {
        let manifest =
            Manifest::from_sources(&rec.files).map_err(|e| AgentError::StoredRevision {
                number: rec.info.number,
                source: Box::new(e),
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
                EventKind::ApplyRefused,
                None,
                format!("{} refused: managed by {owner}", source.describe()),
            );
            return Err(AgentError::ManagedBySource(owner.clone()));
        }
        let refuse = |problems: Vec<Problem>| {
            if !dry_run {
                self.metrics.apply_refused(source.label());
                let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                self.emit(
                    EventKind::ApplyRefused,
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
        Self::check_seccomp_profiles(&manifest).map_err(refuse)?;
        let digests = match self.resolve_digests(&manifest, !dry_run).await {
            Ok(d) => d,
            Err(e) => {
                if !dry_run {
                    self.metrics.apply_refused(source.label());
                    self.emit(
                        EventKind::ApplyRefused,
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
        // In a fleet a new manifest is recorded only with a rollout slot.
        let gated = match (&self.fleet, dry_run || !source.gated()) {
            (Some(fleet), false) => {
                let hash = crate::fleet::fleet_hash(&manifest);
                let current = crate::fleet::current_hash(self);
                fleet
                    .gate(
                        self,
                        &hash,
                        current.as_deref(),
                        manifest.fleet.as_ref(),
                        !matches!(source, ApplySource::Api),
                    )
                    .await
                    .map_err(AgentError::FleetWait)?;
                Some((fleet, hash))
            }
            _ => None,
        };
        let recorded = self
            .record(
                files,
                &manifest,
                digests.clone(),
                env_files,
                source,
                RecordFlags { dry_run, prune },
                Restarts::Carry,
            )
            .await;
        if let Some((fleet, hash)) = gated {
            fleet.applied(
                &hash,
                recorded
                    .as_ref()
                    .ok()
                    .filter(|r| !r.unchanged)
                    .and_then(|r| r.revision),
            );
        }
        let mut resp = recorded?;
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
                EventKind::ApplyRefused,
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
        let unchanged = latest.as_ref().is_some_and(|l| {
            l.info.manifest_sha256 == identity && l.info.state != RevisionState::Failed
        });
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
                state: RevisionState::Applied,
            },
            files,
            env_files,
            halted: BTreeSet::new(),
            restarts,
        };
        let store = self.store.clone();
        let stored =
            super::blocking("storing revision", move || store.put_revision(&record)).await?;
        if let Err(e) = stored {
            self.metrics.apply_refused(source.label());
            return Err(e.into());
        }
        // A revision still rolling out when a newer one is recorded never
        // completes: it is `superseded` (not left `rolling-out` forever).
        if let Some((mut prev, state)) =
            latest.and_then(|l| l.info.state.when_superseded().map(|s| (l, s)))
        {
            prev.info.state = state;
            if let Err(e) = self.store.update_revision(&prev) {
                tracing::warn!(revision = prev.info.number, error = %e, "marking revision superseded");
            }
        }
        self.metrics.revision_recorded(source.label(), number);
        self.emit(
            EventKind::RevisionApplied,
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
                .find(|r| r.info.number < current && r.info.state == RevisionState::Complete)
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
