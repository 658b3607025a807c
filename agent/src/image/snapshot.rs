//! Layer snapshots: one directory per unpacked layer under `<state>/layers/`,
//! keyed by chain id, usable as an overlayfs lower dir. A snapshot is built in
//! a `tmp-*` directory and renamed into place, so a name that exists is
//! complete; leftovers of a crash are removed when the store opens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_core::image_ref::Digest;

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Chain id of a layer stack: `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))` (OCI image spec).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The snapshot directory store.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
    counter: Arc<AtomicU64>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SnapshotStore {
    /// Opens `root` (0700), removing unfinished snapshots of an earlier run.
    pub fn open(root: impl Into<PathBuf>) -> Result<SnapshotStore, SnapshotError> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &root))?;
        for entry in std::fs::read_dir(&root).map_err(io("list", &root))? {
            let entry = entry.map_err(io("list", &root))?;
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing an unfinished snapshot");
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            }
        }
        Ok(SnapshotStore {
            root,
            counter: Arc::new(AtomicU64::new(0)),
            locks: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the snapshot of `chain_id` lives (whether or not it exists).
    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex())
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.path(chain_id).is_dir()
    }

    /// Serializes work on one chain id (two pulls of a shared layer unpack it once).
    pub async fn lock(&self, chain_id: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(chain_id.hex().to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// A fresh, empty directory to unpack into.
    pub fn prepare(&self, chain_id: &Digest) -> Result<PathBuf, SnapshotError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(format!(
            "tmp-{}-{}-{n}",
            chain_id.short(),
            std::process::id()
        ));
        std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
        Ok(tmp)
    }

    /// Makes a prepared directory the snapshot of `chain_id`.
    pub fn commit(&self, tmp: &Path, chain_id: &Digest) -> Result<PathBuf, SnapshotError> {
        let dest = self.path(chain_id);
        std::fs::rename(tmp, &dest).map_err(io("commit", &dest))?;
        Ok(dest)
    }

    /// Removes a prepared directory after a failure.
    pub fn discard(&self, tmp: &Path) -> Result<(), SnapshotError> {
        match std::fs::remove_dir_all(tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SnapshotError::Io {
                op: "discard",
                path: tmp.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Deletes a snapshot: renamed away first, so a half-deleted one never
    /// looks complete.
    pub fn remove(&self, chain_id: &Digest) -> Result<bool, SnapshotError> {
        let path = self.path(chain_id);
        if !path.exists() {
            return Ok(false);
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let doomed = self.root.join(format!("tmp-rm-{}-{n}", chain_id.short()));
        std::fs::rename(&path, &doomed).map_err(io("remove", &path))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
        Ok(true)
    }

    /// Chain ids of every complete snapshot.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io("list", &self.root))? {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Ok(d) = format!("sha256:{name}").parse::<Digest>() {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn prepare_commit_remove_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("layers")).unwrap();
        let id = Digest::sha256_of(b"layer");
        let tmp = store.prepare(&id).unwrap();
        std::fs::write(tmp.join("f"), b"x").unwrap();
        assert!(
            !store.exists(&id),
            "an unfinished snapshot must not look complete"
        );
        store.commit(&tmp, &id).unwrap();
        assert!(store.exists(&id));
        assert_eq!(store.list().unwrap(), vec![id.clone()]);
        // A leftover from a crash is removed on open; complete ones stay.
        let leftover = store.prepare(&Digest::sha256_of(b"other")).unwrap();
        let store = SnapshotStore::open(dir.path().join("layers")).unwrap();
        assert!(!leftover.exists());
        assert!(store.exists(&id));
        assert!(store.remove(&id).unwrap());
        assert!(!store.exists(&id));
        assert!(store.list().unwrap().is_empty());
    }
}
