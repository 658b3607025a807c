//! `--manifests PATH`: a manifest file or directory, watched with inotify (via
//! `notify`) and debounced, so the rename-heavy writes of a `git checkout` or
//! an editor become one change. The parent directory is watched too, so a file
//! or directory replaced by a rename is seen; a periodic rescan covers missed
//! events. The current content is applied on start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::manifest::{read_sources, ManifestError, SourceFiles};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot, watch};

use super::{content_hash, Tracker};
use crate::control::{Agent, ApplySource};

/// Quiet time after the last change before the path is read.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a burst of changes may postpone reading.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Why the path could not be watched or read.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error(transparent)]
    Read(#[from] ManifestError),
    #[error("reading manifests: {0}")]
    Join(String),
}

/// Whether an event can change what the path holds (opens and reads cannot).
fn is_change(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn watch(w: &mut notify::RecommendedWatcher, p: &Path) -> Result<(), DirError> {
    w.watch(p, RecursiveMode::NonRecursive)
        .map_err(|source| DirError::Watch {
            path: p.to_path_buf(),
            source,
        })
}

/// Watches the parent of `path`, so a file or directory replaced by a rename
/// (or created later) is seen.
fn watch_parent(w: &mut notify::RecommendedWatcher, path: &Path) -> Result<(), DirError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watch(w, parent)
}

/// (Re-)watches `path` if it is a directory: watching again after a change
/// re-attaches to a directory that was replaced or created.
fn rewatch_dir(w: &mut notify::RecommendedWatcher, path: &Path) -> Result<(), DirError> {
    let _ = w.unwatch(path);
    if path.is_dir() {
        watch(w, path)?;
    }
    Ok(())
}

async fn read(path: &Path) -> Result<SourceFiles, DirError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_sources(&p))
        .await
        .map_err(|e| DirError::Join(e.to_string()))?
        .map_err(DirError::from)
}

/// The state of one watched path.
#[derive(Debug)]
struct DirSource {
    path: PathBuf,
    tracker: Tracker,
    /// Hash of the last version offered (applied or refused).
    last_seen: Option<String>,
    /// The last read error, so a persisting one is reported once.
    read_error: Option<String>,
}

impl DirSource {
    async fn sync(&mut self) {
        let files = match read(&self.path).await {
            Ok(f) => f,
            Err(e) => {
                let message = e.to_string();
                if self.read_error.as_deref() != Some(message.as_str()) {
                    let what = ApplySource::File(self.path.display().to_string()).describe();
                    self.tracker.refuse(&what, &message);
                    self.read_error = Some(message);
                    self.last_seen = None;
                }
                return;
            }
        };
        self.read_error = None;
        // Image archives beside the manifest are part of the version.
        let archives = super::archives_in(&self.path);
        let mut hash = content_hash(&files);
        if !archives.is_empty() {
            let ids: Vec<String> = archives
                .iter()
                .map(|(p, id)| format!("{}={id}", p.display()))
                .collect();
            hash = format!(
                "{hash}+{:x}",
                <sha2::Sha256 as sha2::Digest>::digest(ids.join("\n").as_bytes())
            );
        }
        if self.last_seen.as_deref() == Some(hash.as_str()) {
            return;
        }
        self.last_seen = Some(hash.clone());
        let source = ApplySource::File(self.path.display().to_string());
        if !self
            .tracker
            .load_archives(&archives, &source.describe())
            .await
        {
            return;
        }
        self.tracker.offer(files, source, hash, None).await;
    }
}

/// Watches and applies `path` until `shutdown` turns true.
pub async fn run(
    agent: Arc<Agent>,
    path: PathBuf,
    rescan: Duration,
    mut shutdown: watch::Receiver<bool>,
    first_sync: oneshot::Sender<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(event) if !is_change(&event) => {}
        // An error (e.g. a queue overflow) may hide a change: rescan.
        _ => {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the file watcher; falling back to rescans");
            None
        }
    };
    let mut src = DirSource {
        tracker: Tracker::new(agent, "file", path.display().to_string()),
        path,
        last_seen: None,
        read_error: None,
    };
    src.last_seen = src.tracker.persisted().map(|s| s.version);
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = watch_parent(w, &src.path).and_then(|()| rewatch_dir(w, &src.path)) {
            tracing::warn!(error = %e, "watching manifests (rescans still run)");
        }
    }
    tracing::info!(path = %src.path.display(), "watching manifests");
    src.sync().await;
    let _ = first_sync.send(());
    let mut ticker = tokio::time::interval(rescan);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            got = rx.recv() => {
                if got.is_none() {
                    break;
                }
                // Debounce: wait for DEBOUNCE of quiet (at most MAX_DELAY).
                let start = Instant::now();
                while start.elapsed() < MAX_DELAY {
                    match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) | Err(_) => break,
                    }
                }
                if let Some(w) = watcher.as_mut() {
                    if let Err(e) = rewatch_dir(w, &src.path) {
                        tracing::debug!(error = %e, "re-watching manifests");
                    }
                }
                src.sync().await;
            }
            _ = ticker.tick() => {
                src.sync().await;
                src.tracker.retry_pending().await;
            }
            _ = src.tracker.fleet_changed() => {
                src.tracker.retry_pending().await;
            }
        }
    }
    tracing::debug!("manifest watcher stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reads_are_not_changes() {
        let ev = |kind| Event::new(kind);
        assert!(!is_change(&ev(EventKind::Access(AccessKind::Open(
            AccessMode::Any
        )))));
        assert!(!is_change(&ev(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        )))));
        assert!(is_change(&ev(EventKind::Access(AccessKind::Close(
            AccessMode::Write
        )))));
        assert!(is_change(&ev(EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        )))));
        assert!(is_change(&ev(EventKind::Create(CreateKind::File))));
    }
}
