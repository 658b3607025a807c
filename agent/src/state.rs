//! Durable agent state in sled 0.34: applied revisions now, image records and
//! container/IPAM indexes later. Values are wrapped in a versioned envelope
//! with a sha256 checksum; a format-version key guards the layout. Revisions
//! are also written as files under `revisions/`, so a database that fails to
//! open is moved aside and the revision history is rebuilt from disk.

use std::path::{Path, PathBuf};

use berth_core::api::RevisionInfo;
use berth_core::manifest::SourceFiles;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Room kept allocated past the end of sled's log file (see
/// [`Store::reserve_headroom`]): 16 MiB, weeks of events and records.
pub const DB_HEADROOM: u64 = 16 << 20;
/// Layout version of the database; bumped when keys or trees change meaning.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &[u8] = b"format_version";
const ENVELOPE_VERSION: u16 = 1;
const ENVELOPE_HEADER: usize = 2 + 32;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
    #[error("state database {path} has format version {found}; this berthd understands up to {FORMAT_VERSION} (refusing to touch it)")]
    FutureFormat { path: PathBuf, found: u32 },
    #[error("state record {tree}/{key} is corrupt: {why}")]
    Corrupt {
        tree: String,
        key: String,
        why: String,
    },
    #[error("state I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a {tree} record: {source}")]
    Encode {
        tree: String,
        source: serde_json::Error,
    },
}

/// One applied revision: what `history` shows plus the manifest sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub info: RevisionInfo,
    pub files: SourceFiles,
    /// Each service's `env_file` pairs, read when the revision was applied.
    #[serde(default)]
    pub env_files: std::collections::BTreeMap<String, Vec<(String, String)>>,
    /// Services whose failed rollout was halted without a rollback: the
    /// reconciler leaves what runs for them alone until the next revision.
    #[serde(default)]
    pub halted: std::collections::BTreeSet<String>,
    /// Each service's restart generation (`berthctl restart` bumps it; every
    /// later revision carries it on), set on its desired spec.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub restarts: std::collections::BTreeMap<String, u64>,
}

/// What happened while opening the store, for the log.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Where an unopenable database was moved.
    pub moved_aside: Option<PathBuf>,
    /// Revisions restored from `revisions/*.json`.
    pub rebuilt_revisions: usize,
}

/// The sled-backed store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    db_path: PathBuf,
    revisions: sled::Tree,
    revision_dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True when `error` or any error it wraps is `ENOSPC` or `EDQUOT` (an
/// `io::Error` or sled's I/O error): the filesystem, or the quota, is full.
pub fn is_no_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let full = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::StorageFull
            || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if full(io) {
                return true;
            }
        }
        if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
            if full(io) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Creates a directory (and parents) and makes it root-only (0700).
pub fn private_dir(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_err(path))
}

/// Wraps a value: `[u16 version][sha256 of payload][payload JSON]`.
pub fn encode<T: Serialize>(tree: &str, value: &T) -> Result<Vec<u8>, StateError> {
    let payload = serde_json::to_vec(value).map_err(|source| StateError::Encode {
        tree: tree.into(),
        source,
    })?;
    let mut out = Vec::with_capacity(ENVELOPE_HEADER + payload.len());
    out.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Unwraps and verifies a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(tree: &str, key: &str, bytes: &[u8]) -> Result<T, StateError> {
    let corrupt = |why: String| StateError::Corrupt {
        tree: tree.into(),
        key: key.into(),
        why,
    };
    if bytes.len() < ENVELOPE_HEADER {
        return Err(corrupt(format!(
            "{} bytes is shorter than the envelope header",
            bytes.len()
        )));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version != ENVELOPE_VERSION {
        return Err(corrupt(format!(
            "envelope version {version}, expected {ENVELOPE_VERSION}"
        )));
    }
    let payload = &bytes[ENVELOPE_HEADER..];
    if Sha256::digest(payload).as_slice() != &bytes[2..ENVELOPE_HEADER] {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(payload).map_err(|e| corrupt(format!("payload: {e}")))
}

impl Store {
    /// Opens (or creates) the store under `state_dir`. A database that fails to
    /// open is renamed to `db.broken-<unix time>` and a fresh one is rebuilt
    /// from the revision files. The caller must hold the state-dir lock, so a
    /// locked database is never mistaken for a broken one.
    pub fn open(state_dir: &Path) -> Result<(Store, OpenReport), StateError> {
        private_dir(state_dir)?;
        let db_path = state_dir.join("db");
        let revision_dir = state_dir.join("revisions");
        private_dir(&revision_dir)?;
        let mut report = OpenReport::default();
        let db = match sled::Config::new()
            .path(&db_path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Ok(db) => db,
            Err(e) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = state_dir.join(format!("db.broken-{stamp}"));
                tracing::error!(db = %db_path.display(), moved_to = %aside.display(), error = %e,
                    "state database failed to open; moving it aside and rebuilding from disk");
                std::fs::rename(&db_path, &aside).map_err(io_err(&db_path))?;
                report.moved_aside = Some(aside);
                sled::open(&db_path).map_err(|source| StateError::Db {
                    path: db_path.clone(),
                    source,
                })?
            }
        };
        private_dir(&db_path)?;
        let db_err = |source| StateError::Db {
            path: db_path.clone(),
            source,
        };
        match db.get(FORMAT_KEY).map_err(db_err)? {
            Some(v) => {
                let found =
                    u32::from_le_bytes(v.as_ref().try_into().map_err(|_| StateError::Corrupt {
                        tree: "meta".into(),
                        key: "format_version".into(),
                        why: "not 4 bytes".into(),
                    })?);
                if found > FORMAT_VERSION {
                    return Err(StateError::FutureFormat {
                        path: db_path,
                        found,
                    });
                }
            }
            None => {
                db.insert(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())
                    .map_err(db_err)?;
            }
        }
        let revisions = db.open_tree("revisions").map_err(db_err)?;
        let store = Store {
            db,
            db_path,
            revisions,
            revision_dir,
        };
        report.rebuilt_revisions = store.rebuild_revisions()?;
        store.flush()?;
        if let Err(e) = store.reserve_headroom() {
            tracing::warn!(error = %e, "no room reserved for the state database; it may fail when the disk fills");
        }
        Ok((store, report))
    }

    /// Allocates [`DB_HEADROOM`] bytes past the end of sled's log file
    /// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so the database keeps writing
    /// when the filesystem fills: sled 0.34 turns one failed log write
    /// (`ENOSPC`) into an error of every later operation until the process
    /// restarts. Called at open and by the agent's disk check (the log
    /// grows); nothing to do while the room is still there. Fails (retried
    /// at the next check) when the filesystem has no room for it.
    pub fn reserve_headroom(&self) -> Result<(), StateError> {
        use std::os::unix::fs::MetadataExt as _;
        let log = self.db_path.join("db");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let meta = f.metadata().map_err(io_err(&log))?;
        let want = meta.len().saturating_add(DB_HEADROOM);
        if meta.blocks().saturating_mul(512) >= want {
            return Ok(());
        }
        nix::fcntl::fallocate(
            &f,
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            i64::try_from(want).unwrap_or(i64::MAX),
        )
        .map_err(|e| io_err(&log)(std::io::Error::from(e)))
    }

    /// Restores revisions whose file exists but whose record is missing.
    fn rebuild_revisions(&self) -> Result<usize, StateError> {
        let mut restored = 0;
        let entries = std::fs::read_dir(&self.revision_dir).map_err(io_err(&self.revision_dir))?;
        for entry in entries {
            let path = entry.map_err(io_err(&self.revision_dir))?.path();
            let Some(number) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".rev"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if self
                .revisions
                .contains_key(number.to_be_bytes())
                .map_err(|e| self.db_err(e))?
            {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            match decode::<RevisionRecord>("revisions", &path.display().to_string(), &bytes) {
                Ok(rec) if rec.info.number == number => {
                    self.revisions
                        .insert(number.to_be_bytes(), bytes)
                        .map_err(|e| self.db_err(e))?;
                    restored += 1;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %path.display(), "skipping unreadable revision file")
                }
            }
        }
        Ok(restored)
    }

    fn db_err(&self, source: sled::Error) -> StateError {
        StateError::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    /// Flushes everything to disk; call before acknowledging a change.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }

    /// Records a revision durably: its file (fsynced, atomically renamed), then
    /// the database record, then a flush.
    pub fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StateError> {
        let bytes = encode("revisions", rec)?;
        let path = self.revision_dir.join(format!("{}.rev", rec.info.number));
        write_atomic(&path, &bytes)?;
        self.revisions
            .insert(rec.info.number.to_be_bytes(), bytes)
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// Rewrites an existing revision (its state or digests changed).
    pub fn update_revision(&self, rec: &RevisionRecord) -> Result<(), StateError> {
        self.put_revision(rec)
    }

    /// One revision by number.
    pub fn revision(&self, number: u64) -> Result<Option<RevisionRecord>, StateError> {
        match self
            .revisions
            .get(number.to_be_bytes())
            .map_err(|e| self.db_err(e))?
        {
            Some(v) => decode("revisions", &number.to_string(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// All revisions, oldest first.
    pub fn revisions(&self) -> Result<Vec<RevisionRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.revisions.iter() {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = k
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                .to_string();
            out.push(decode("revisions", &key, &v)?);
        }
        Ok(out)
    }

    /// The newest revision.
    pub fn latest_revision(&self) -> Result<Option<RevisionRecord>, StateError> {
        match self.revisions.last().map_err(|e| self.db_err(e))? {
            Some((k, v)) => {
                let key = k
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
                    .to_string();
                decode("revisions", &key, &v).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Opens a named tree for a later subsystem (images, containers, ipam).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StateError> {
        self.db.open_tree(name).map_err(|e| self.db_err(e))
    }
}

/// Writes a file atomically and durably: temp file, fsync, rename, fsync dir.
/// On failure (a full disk) the temp file is removed and `path` keeps what
/// it held.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io_err(&tmp));
    if let Err(e) = written {
        // A half-written temp file (a full disk) is not left behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(n: u64) -> RevisionRecord {
        let mut files = SourceFiles::new();
        files.insert("m.toml".into(), format!("# rev {n}\n"));
        RevisionRecord {
            info: RevisionInfo {
                number: n,
                applied_at: "2026-01-01T00:00:00Z".into(),
                source: "api".into(),
                manifest_sha256: "x".into(),
                services: vec!["web".into()],
                digests: Default::default(),
                state: berth_core::vocab::RevisionState::Applied,
            },
            files,
            env_files: Default::default(),
            halted: Default::default(),
            restarts: Default::default(),
        }
    }

    #[test]
    fn a_write_that_meets_a_full_disk_leaves_no_temp_file_and_the_old_content() {
        crate::require_root!();
        let fs = crate::testing::SmallFs::mount("64k").unwrap();
        let path = fs.path().join("3.rev");
        write_atomic(&path, b"old").unwrap();
        fs.fill("filler");
        let err = write_atomic(&path, &vec![7u8; 256 << 10]).unwrap_err();
        assert!(is_no_space(&err), "{err}");
        assert!(
            err.to_string().contains(".3.rev.tmp"),
            "names the file: {err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut left: Vec<String> = std::fs::read_dir(fs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3.rev", "filler"]);
    }

    #[test]
    fn the_database_keeps_working_on_a_full_disk() {
        crate::require_root!();
        let fs = crate::testing::SmallFs::mount("32m").unwrap();
        let (store, _) = Store::open(fs.path()).unwrap();
        store.put_revision(&record(1)).unwrap();
        let tree = store.tree("images").unwrap();
        assert!(fs.fill("filler") > 0);
        assert_eq!(crate::image::store::free_bytes(fs.path()), 0);
        // Records of the agent's size (events, image records, addresses):
        // without the headroom sled's first log write fails here and every
        // later operation returns that error until a restart.
        for i in 0..2048u32 {
            tree.insert(i.to_be_bytes(), vec![1u8; 512 + (i as usize % 8) * 512])
                .unwrap();
            if i % 64 == 0 {
                tree.flush().unwrap();
            }
        }
        tree.flush().unwrap();
        // A revision needs its file: refused while full, naming it ...
        let err = store.put_revision(&record(2)).unwrap_err();
        assert!(is_no_space(&err), "{err}");
        // ... and fine once there is room.
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        tree.insert(b"after", b"x".to_vec()).unwrap();
        tree.flush().unwrap();
        store.put_revision(&record(2)).unwrap();
        assert_eq!(store.latest_revision().unwrap().unwrap(), record(2));
        assert_eq!(tree.get(b"after").unwrap().unwrap(), b"x".to_vec());
    }

    #[test]
    fn revisions_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.put_revision(&record(1)).unwrap();
            store.put_revision(&record(2)).unwrap();
        }
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.rebuilt_revisions, 0);
        let numbers: Vec<u64> = store
            .revisions()
            .unwrap()
            .iter()
            .map(|r| r.info.number)
            .collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(store.latest_revision().unwrap().unwrap(), record(2));
        use std::os::unix::fs::PermissionsExt;
        for sub in ["", "db", "revisions"] {
            let mode = std::fs::metadata(dir.path().join(sub))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
    }

    #[test]
    fn envelope_detects_corruption() {
        let mut bytes = encode("t", &record(1)).unwrap();
        assert_eq!(
            decode::<RevisionRecord>("t", "1", &bytes).unwrap(),
            record(1)
        );
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        let err = decode::<RevisionRecord>("t", "1", &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t/1") && err.contains("checksum"), "{err}");
        assert!(decode::<RevisionRecord>("t", "1", b"xx").is_err());
    }

    #[test]
    fn a_broken_database_is_moved_aside_and_revisions_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.put_revision(&record(1)).unwrap();
            store.put_revision(&record(2)).unwrap();
        }
        // Replace the database with garbage that sled cannot open.
        let db = dir.path().join("db");
        std::fs::remove_dir_all(&db).unwrap();
        std::fs::write(&db, b"not a database").unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        let aside = report.moved_aside.expect("moved aside");
        assert!(aside.exists());
        assert_eq!(report.rebuilt_revisions, 2);
        assert_eq!(store.revisions().unwrap().len(), 2);
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.db.insert(FORMAT_KEY, &99u32.to_le_bytes()).unwrap();
            store.flush().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StateError::FutureFormat { found: 99, .. })
        ));
    }
}
