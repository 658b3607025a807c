//! GitOps manifest sources: a watched file or directory (`--manifests`), a
//! polled URL (`--manifest-url`) and a git repository (`--git`). Each runs as a
//! tokio task that validates every new version, applies it through
//! [`Agent::apply`], surfaces refusals in `status`, and remembers per source the
//! last applied version (in the sled tree `sources`) so a restart re-applies
//! and re-fetches nothing that did not change.

pub mod dir;
pub mod git;
pub mod url;

use berth_core::vocab::EventKind;
use std::sync::Arc;
use std::time::Duration;

use berth_core::api::ApplyResponse;
use berth_core::manifest::{Manifest, ManifestError, SourceFiles};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ManifestSource;
use crate::control::{Agent, ApplySource};
use crate::state::{decode, encode, StateError};

/// The sled tree holding each source's last applied version.
pub const TREE: &str = "sources";

/// Why a source could not record what it applied.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("source state {key}: {source}")]
    Db { key: String, source: sled::Error },
}

/// Whether a file beside the manifests is an image archive to load: not
/// hidden, and named `*.tar`, `*.tar.gz`, `*.tgz` or `*.tar.zst`.
pub fn is_archive_name(name: &str) -> bool {
    !name.starts_with('.')
        && [".tar", ".tar.gz", ".tgz", ".tar.zst"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Image archives shipped in a manifest directory for hosts without a
/// registry: its `*.tar`, `*.tar.gz`, `*.tgz` and `*.tar.zst` files, sorted,
/// each with an identity (size and modification time) that changes when the
/// file is replaced. Empty when `dir` is not a directory.
pub fn archives_in(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(std::path::PathBuf, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_archive_name(&name) {
                return None;
            }
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Some((e.path(), format!("{}:{mtime}", m.len())))
        })
        .collect();
    out.sort();
    out
}

/// What a source applied last, persisted under its kind (`file`, `url`, `git`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// The source as configured (path, URL, or repo + ref + path); a change of
    /// configuration makes the state stale.
    pub location: String,
    /// Content hash (file, url) or commit id (git) of the applied version.
    pub version: String,
    /// The HTTP ETag of the applied version (url only).
    #[serde(default)]
    pub etag: Option<String>,
    /// The revision that was current after applying it.
    pub revision: Option<u64>,
}

/// A running source task.
#[derive(Debug)]
pub struct Running {
    pub task: JoinHandle<()>,
    /// Fires once the first sync attempt finished (applied, refused or failed).
    pub first_sync: oneshot::Receiver<()>,
}

/// Starts the configured source, if any. It stops when `shutdown` turns true.
pub fn spawn(agent: Arc<Agent>, shutdown: watch::Receiver<bool>) -> Option<Running> {
    let config = agent.config.clone();
    let (done, first_sync) = oneshot::channel();
    let interval = config.manifest_poll_interval;
    let task = match config.source? {
        ManifestSource::Dir(path) => tokio::spawn(dir::run(agent, path, interval, shutdown, done)),
        ManifestSource::Url(u) => tokio::spawn(url::run(agent, u, interval, shutdown, done)),
        ManifestSource::Git {
            repo,
            reference,
            path,
        } => {
            let spec = git::GitSpec {
                repo,
                reference,
                path,
            };
            let work = config.state_dir.join("sources").join("git");
            tokio::spawn(git::run(agent, spec, work, interval, shutdown, done))
        }
    };
    Some(Running { task, first_sync })
}

/// Sleeps for `d`; true if shutdown was asked for meanwhile.
pub(crate) async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

/// Sleeps for `d` like [`sleep_or_stop`], but offers the version waiting
/// for the fleet again whenever the fleet says it may get further (a slot
/// freed, a halt or pause changed: `Fleet::wait_for_change`), so a waiting
/// host starts its rollout when its turn comes, not at its next poll.
pub(crate) async fn sleep_retrying(
    tracker: &mut Tracker,
    d: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            stop = sleep_or_stop(left, shutdown) => return stop,
            _ = tracker.fleet_changed() => {
                tracker.retry_pending().await;
            }
        }
    }
}

/// sha256 of the files (names and texts), the version of a file or URL source.
pub fn content_hash(files: &SourceFiles) -> String {
    let mut h = Sha256::new();
    for (name, text) in files {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Renders a manifest error as lines of `file:line:col: key: message`.
pub fn render_manifest_error(e: &ManifestError) -> String {
    match e {
        ManifestError::Invalid(problems) => problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// What offering a version to the agent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded as this new revision.
    Applied(u64),
    /// Equal to the current revision: nothing recorded.
    Unchanged,
    /// Invalid (or unstorable): not applied, the error is in `status`.
    Refused,
    /// Waits for the fleet (`--fleet-etcd`): offered again every poll until
    /// it is applied or a newer version replaces it.
    Pending,
}

/// A version offered but waiting for the fleet's gate.
#[derive(Debug, Clone)]
struct PendingOffer {
    files: SourceFiles,
    source: ApplySource,
    version: String,
    etag: Option<String>,
}

/// The bookkeeping every source shares: refusals and fetch errors surfaced in
/// `status`, events and metrics, and the persisted last applied version.
#[derive(Debug)]
pub(crate) struct Tracker {
    agent: Arc<Agent>,
    /// `file`, `url` or `git`: the metric label and the state key.
    kind: &'static str,
    location: String,
    refused: Option<String>,
    fetch_error: Option<String>,
    /// The newest version, waiting for the fleet.
    pending: Option<PendingOffer>,
    /// `offer` ran since the last `retry_pending`.
    offered: bool,
}

impl Tracker {
    pub(crate) fn new(agent: Arc<Agent>, kind: &'static str, location: String) -> Tracker {
        Tracker {
            agent,
            kind,
            location,
            refused: None,
            fetch_error: None,
            pending: None,
            offered: false,
        }
    }

    /// Offers the version waiting for the fleet again, unless a version was
    /// offered since the last call (it replaced the waiting one). Sources
    /// call this once per poll.
    pub(crate) async fn retry_pending(&mut self) -> Option<Outcome> {
        if std::mem::take(&mut self.offered) {
            return None;
        }
        let p = self.pending.take()?;
        let outcome = self.offer(p.files, p.source, p.version, p.etag).await;
        self.offered = false;
        Some(outcome)
    }

    /// Resolves when the fleet says the version waiting for its gate may get
    /// further; never without a fleet or a waiting version.
    pub(crate) async fn fleet_changed(&self) {
        match (&self.agent.fleet, &self.pending) {
            (Some(fleet), Some(_)) => {
                while !fleet.wait_for_change(Duration::from_secs(3600)).await {}
            }
            _ => std::future::pending().await,
        }
    }

    /// The persisted state, if it belongs to this configuration and its
    /// revision is still the current one (nothing else changed the manifest).
    pub(crate) fn persisted(&self) -> Option<SourceState> {
        let tree = self.agent.store().tree(TREE).ok()?;
        let bytes = tree.get(self.kind).ok()??;
        let state: SourceState = match decode(TREE, self.kind, &bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable source state");
                return None;
            }
        };
        let current = self
            .agent
            .store()
            .latest_revision()
            .ok()?
            .map(|r| r.info.number);
        (state.location == self.location && state.revision == current).then_some(state)
    }

    fn persist(&self, state: &SourceState) -> Result<(), SourceError> {
        let tree = self.agent.store().tree(TREE)?;
        tree.insert(self.kind, encode(TREE, state)?)
            .map_err(|source| SourceError::Db {
                key: self.kind.into(),
                source,
            })?;
        self.agent.store().flush()?;
        Ok(())
    }

    fn publish(&self) {
        self.agent
            .set_source_error(self.fetch_error.clone().or_else(|| self.refused.clone()));
    }

    /// The source could not be read or reached; shown in `status` until a
    /// later attempt succeeds. The event is emitted once per distinct error.
    pub(crate) fn fetch_failed(&mut self, message: String) {
        if self.fetch_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(source = self.kind, error = %message, "manifest source unreachable");
            self.agent
                .emit(EventKind::SourceUnreachable, None, message.clone());
        }
        self.fetch_error = Some(message);
        self.publish();
    }

    /// The source was reached (possibly answering "not modified").
    pub(crate) fn fetch_ok(&mut self) {
        if self.fetch_error.take().is_some() {
            self.publish();
        }
    }

    /// Refuses a version: not applied, the error in `status`, an event and the
    /// `manifest_apply_errors_total{source}` metric.
    pub(crate) fn refuse(&mut self, what: &str, detail: &str) {
        let message = format!("{what} refused:\n{detail}");
        tracing::warn!(source = self.kind, error = %message, "manifest source refused");
        self.agent.metrics.apply_refused(self.kind);
        let first = detail.lines().next().unwrap_or_default();
        self.agent.emit(
            EventKind::SourceRefused,
            None,
            format!("{what} refused: {first}"),
        );
        self.refused = Some(message);
        self.publish();
    }

    /// Loads the image archives shipped beside the manifest (see
    /// [`archives_in`]) that were not loaded before (by path, size and
    /// modification time, kept in the `sources` tree); a failure refuses the
    /// version, naming the archive. Returns whether every archive is loaded.
    pub(crate) async fn load_archives(
        &mut self,
        archives: &[(std::path::PathBuf, String)],
        what: &str,
    ) -> bool {
        let tree = self.agent.store().tree(TREE).ok();
        for (path, identity) in archives {
            let key = format!("archive:{}", path.display());
            let seen = tree
                .as_ref()
                .and_then(|t| t.get(&key).ok().flatten())
                .is_some_and(|v| v.as_ref() == identity.as_bytes());
            if seen {
                continue;
            }
            match self.agent.load(path, None).await {
                Ok(recs) => {
                    tracing::info!(archive = %path.display(), images = recs.len(), "loaded an image archive shipped with the manifest");
                    if let Some(t) = &tree {
                        let _ = t.insert(key.as_bytes(), identity.as_bytes());
                    }
                }
                Err(e) => {
                    self.refuse(what, &format!("image archive {}: {e}", path.display()));
                    return false;
                }
            }
        }
        true
    }

    /// Validates a new version and, if valid, applies it; persists what was
    /// applied so a restart does not repeat it.
    pub(crate) async fn offer(
        &mut self,
        files: SourceFiles,
        source: ApplySource,
        version: String,
        etag: Option<String>,
    ) -> Outcome {
        let what = source.describe();
        if let Err(e) = Manifest::from_sources(&files) {
            self.refuse(&what, &render_manifest_error(&e));
            return Outcome::Refused;
        }
        self.offered = true;
        self.pending = None;
        let resp: ApplyResponse = match self.agent.apply(files.clone(), source.clone(), false).await
        {
            Ok(r) => r,
            Err(crate::control::AgentError::FleetWait(reason)) => {
                tracing::debug!(source = %what, %reason, "manifest waits for the fleet");
                self.pending = Some(PendingOffer {
                    files,
                    source,
                    version,
                    etag,
                });
                return Outcome::Pending;
            }
            Err(e) => {
                // Validation passed, so this is a storage failure; apply counted it.
                self.agent.emit(
                    EventKind::SourceRefused,
                    None,
                    format!("{what} could not be applied: {e}"),
                );
                self.refused = Some(format!("{what} could not be applied: {e}"));
                self.publish();
                return Outcome::Refused;
            }
        };
        self.refused = None;
        self.publish();
        let state = SourceState {
            location: self.location.clone(),
            version,
            etag,
            revision: resp.revision,
        };
        if let Err(e) = self.persist(&state) {
            tracing::warn!(error = %e, "could not record the source's applied version");
        }
        if resp.unchanged {
            tracing::debug!(source = %what, "manifest unchanged");
            Outcome::Unchanged
        } else {
            let n = resp.revision.unwrap_or(0);
            tracing::info!(source = %what, revision = n, "manifest applied");
            Outcome::Applied(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_tells_names_and_texts_apart() {
        let f = |pairs: &[(&str, &str)]| {
            content_hash(
                &pairs
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect(),
            )
        };
        assert_eq!(f(&[("a", "x")]), f(&[("a", "x")]));
        assert_ne!(f(&[("a", "x")]), f(&[("b", "x")]));
        assert_ne!(f(&[("ab", "")]), f(&[("a", "b")]));
    }
}
