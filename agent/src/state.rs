//! Durable agent state in sled 0.34: applied revisions, image records, IPAM
//! leases, user-namespace id ranges, events, source state ([`LAYOUT`]).
//! Values are wrapped in a versioned envelope with a sha256 checksum; a
//! format-version key guards the layout. Revisions are also written as files
//! under `revisions/`. A database that fails to open or holds a corrupt
//! record is moved aside, and one that is missing while the state dir shows
//! it existed is noticed too ([`Lost`]); `crate::rebuild` restores the rest.

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

/// What happened while opening the store, for the log and `status`.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Where an unopenable or corrupt database was moved.
    pub moved_aside: Option<PathBuf>,
    /// Revisions restored from `revisions/*.rev`.
    pub rebuilt_revisions: usize,
    /// Why the database's content was found lost, if it was.
    pub lost: Option<Lost>,
}

/// Why the state database's content is gone: everything it held is rebuilt
/// from what the kernel and the disk still know (see `crate::rebuild`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// sled could not open it (moved aside); the error.
    Unopenable(String),
    /// It opened but a record failed its check (moved aside); which and why.
    Corrupt(String),
    /// A new, empty database was created where the state dir shows one
    /// existed (it was deleted, or sled found nothing readable in its
    /// files); what shows it.
    Missing(String),
    /// It opened but records were missing that the disk shows were written
    /// (sled drops a damaged log tail on recovery); which.
    Incomplete(String),
}

impl Lost {
    /// One line for the log, the event and `status` (`database missing: ...`).
    pub fn describe(&self) -> String {
        match self {
            Lost::Unopenable(e) => format!("database unopenable: {e}"),
            Lost::Corrupt(r) => format!("database corrupt: {r}"),
            Lost::Missing(t) => format!("database missing: {t}"),
            Lost::Incomplete(t) => format!("database incomplete: {t}"),
        }
    }
}

/// How the values of one tree are shaped, checked record by record at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every value is an envelope ([`encode`]).
    Envelope,
    /// Envelopes under 8-byte keys (big-endian revision numbers).
    Revisions,
    /// Keys `d/<digest>` hold envelopes, keys `r/<reference>` a digest's text
    /// (the image store's tree).
    Images,
    /// Every value is a big-endian u32 (the user-namespace ranges' bases).
    U32,
}

/// Every tree of the database and the shape of its values; the format
/// version is bumped when this changes meaning. The default tree holds only
/// the format version.
pub const LAYOUT: &[(&str, Shape)] = &[
    ("revisions", Shape::Revisions),
    ("images", Shape::Images),
    ("ipam", Shape::Envelope),
    (crate::idranges::TREE, Shape::U32),
    (crate::events::TREE, Shape::Envelope),
    (crate::sources::TREE, Shape::Envelope),
];

/// Checks one record against its tree's shape; `Err` says what is wrong.
/// Pure (the open-time check calls it on every record).
pub fn check_record(tree: &str, shape: Shape, key: &[u8], value: &[u8]) -> Result<(), String> {
    let name = || format!("{tree}/{}", String::from_utf8_lossy(key));
    let envelope = || {
        verify_envelope(value)
            .map(|_| ())
            .map_err(|why| format!("{}: {why}", name()))
    };
    match shape {
        Shape::Envelope => envelope(),
        Shape::Revisions if key.len() != 8 => {
            Err(format!("{}: key is not a revision number", name()))
        }
        Shape::Revisions => envelope(),
        Shape::Images if key.starts_with(b"d/") => envelope(),
        Shape::Images if key.starts_with(b"r/") => std::str::from_utf8(value)
            .ok()
            .and_then(|t| t.parse::<berth_core::image_ref::Digest>().ok())
            .map(|_| ())
            .ok_or_else(|| format!("{}: not a digest", name())),
        Shape::Images => Err(format!("{}: unknown key", name())),
        Shape::U32 if value.len() == 4 => Ok(()),
        Shape::U32 => Err(format!("{}: {} bytes, expected 4", name(), value.len())),
    }
}

/// What in the state dir shows that a database existed before: revision
/// files, containers, pulled blobs. Counted by [`Traces::scan`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traces {
    pub revision_files: usize,
    pub containers: usize,
    pub blobs: usize,
}

impl Traces {
    /// Counts the traces under `state_dir` (missing directories count 0).
    pub fn scan(state_dir: &Path) -> Traces {
        let count = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| keep(&e.file_name().to_string_lossy()))
                        .count()
                })
                .unwrap_or(0)
        };
        Traces {
            revision_files: count(state_dir.join("revisions"), &|n| n.ends_with(".rev")),
            containers: count(state_dir.join("containers"), &|n| !n.starts_with('.')),
            blobs: count(state_dir.join("blobs/sha256"), &|n| !n.starts_with('.')),
        }
    }

    /// Whether the database a fresh open found empty must have existed: a
    /// database without its format-version key is new, and a new database
    /// beside revision files, containers or blobs lost its content. `None`
    /// for a first start. Pure.
    pub fn missing(&self, format_present: bool) -> Option<Lost> {
        if format_present {
            return None;
        }
        let mut seen = Vec::new();
        for (n, what) in [
            (self.revision_files, "revision files"),
            (self.containers, "containers"),
            (self.blobs, "blobs"),
        ] {
            if n > 0 {
                seen.push(format!("{n} {what}"));
            }
        }
        (!seen.is_empty()).then(|| Lost::Missing(format!("{} on disk", seen.join(", "))))
    }
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

/// Checks an envelope's header and checksum; returns its payload.
fn verify_envelope(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < ENVELOPE_HEADER {
        return Err(format!(
            "{} bytes is shorter than the envelope header",
            bytes.len()
        ));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {version}, expected {ENVELOPE_VERSION}"
        ));
    }
    let payload = &bytes[ENVELOPE_HEADER..];
    if Sha256::digest(payload).as_slice() != &bytes[2..ENVELOPE_HEADER] {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

/// Unwraps and verifies a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(tree: &str, key: &str, bytes: &[u8]) -> Result<T, StateError> {
    let corrupt = |why: String| StateError::Corrupt {
        tree: tree.into(),
        key: key.into(),
        why,
    };
    let payload = verify_envelope(bytes).map_err(corrupt)?;
    serde_json::from_slice(payload).map_err(|e| corrupt(format!("payload: {e}")))
}

impl Store {
    /// Opens (or creates) the store under `state_dir`. A database that fails
    /// to open, or opens with a record that fails its check
    /// ([`check_record`]), is renamed to `db.broken-<unix time>` or
    /// `db.corrupt-<unix time>` and a fresh one is made; a fresh database
    /// where [`Traces`] show an earlier one is reported missing. Either way
    /// the revision history is rebuilt from the revision files and
    /// [`OpenReport::lost`] says why, for `crate::rebuild`. A database of a
    /// newer format is refused untouched. The caller must hold the
    /// state-dir lock, so a locked database is never mistaken for a broken one.
    pub fn open(state_dir: &Path) -> Result<(Store, OpenReport), StateError> {
        private_dir(state_dir)?;
        let db_path = state_dir.join("db");
        let revision_dir = state_dir.join("revisions");
        private_dir(&revision_dir)?;
        // Counted before sled creates anything.
        let traces = Traces::scan(state_dir);
        let mut report = OpenReport::default();
        let db_err = |source| StateError::Db {
            path: db_path.clone(),
            source,
        };
        let db = match open_db(&db_path) {
            Ok(db) => {
                let format = db.get(FORMAT_KEY).map_err(db_err)?;
                if let Some(found) = format
                    .as_ref()
                    .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
                    .map(u32::from_le_bytes)
                {
                    if found > FORMAT_VERSION {
                        return Err(StateError::FutureFormat {
                            path: db_path,
                            found,
                        });
                    }
                }
                match check_db(&db) {
                    Ok(()) => db,
                    Err(why) => {
                        drop(db);
                        tracing::error!(db = %db_path.display(), record = %why,
                            "state database holds a corrupt record; moving it aside and rebuilding from disk");
                        report.moved_aside = Some(move_aside(state_dir, &db_path, "corrupt")?);
                        report.lost = Some(Lost::Corrupt(why));
                        open_db(&db_path).map_err(db_err)?
                    }
                }
            }
            // Held by another sled instance (one just dropped in this
            // process still closing): not broken, so never moved aside.
            Err(e) if is_lock_error(&e) => return Err(db_err(e)),
            Err(e) => {
                tracing::error!(db = %db_path.display(), error = %e,
                    "state database failed to open; moving it aside and rebuilding from disk");
                report.moved_aside = Some(move_aside(state_dir, &db_path, "broken")?);
                report.lost = Some(Lost::Unopenable(e.to_string()));
                open_db(&db_path).map_err(db_err)?
            }
        };
        private_dir(&db_path)?;
        if db.get(FORMAT_KEY).map_err(db_err)?.is_none() {
            if report.lost.is_none() {
                report.lost = traces.missing(false);
            }
            db.insert(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())
                .map_err(db_err)?;
        }
        let revisions = db.open_tree("revisions").map_err(db_err)?;
        let store = Store {
            db,
            db_path,
            revisions,
            revision_dir,
        };
        report.rebuilt_revisions = store.rebuild_revisions()?;
        if report.lost.is_none() && report.rebuilt_revisions > 0 {
            report.lost = Some(Lost::Incomplete(format!(
                "{} revision records missing beside their files",
                report.rebuilt_revisions
            )));
        }
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

/// Opens the sled database at `path`. A panic inside sled on garbage input
/// is turned into an error like any other where panics unwind (debug
/// builds, tests); release builds abort on panic, so there it stops berthd.
/// A database whose lock another instance holds is waited for up to
/// [`LOCK_WAIT`] (sled closes its files on a background thread after the
/// last handle is dropped), then reported as [`is_lock_error`].
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_db_once(path) {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Longest wait for another instance's lock on the database file.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether sled refused to open because another instance holds the
/// database's file lock (its message; sled has no kind for it).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn open_db_once(path: &Path) -> Result<sled::Db, sled::Error> {
    let path = path.to_path_buf();
    std::panic::catch_unwind(move || {
        sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .open()
    })
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".into());
        Err(sled::Error::ReportableBug(format!("sled panicked: {why}")))
    })
}

/// Checks every record of every tree in [`LAYOUT`] (and the format-version
/// key); `Err` names the first bad record.
fn check_db(db: &sled::Db) -> Result<(), String> {
    for kv in db.iter() {
        let (k, v) = kv.map_err(|e| format!("reading the database: {e}"))?;
        if k.as_ref() == FORMAT_KEY && v.len() != 4 {
            return Err(format!("format_version: {} bytes, expected 4", v.len()));
        }
    }
    let names = db.tree_names();
    for (name, shape) in LAYOUT {
        if !names.iter().any(|n| n.as_ref() == name.as_bytes()) {
            continue;
        }
        let tree = db
            .open_tree(name)
            .map_err(|e| format!("opening tree {name}: {e}"))?;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| format!("reading tree {name}: {e}"))?;
            check_record(name, *shape, &k, &v)?;
        }
    }
    Ok(())
}

/// Renames the database at `db_path` to `db.<why>-<unix time>` beside it
/// (a suffix keeps two in one second apart); returns the new path.
fn move_aside(state_dir: &Path, db_path: &Path, why: &str) -> Result<PathBuf, StateError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = state_dir.join(format!("db.{why}-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = state_dir.join(format!("db.{why}-{stamp}.{n}"));
        n += 1;
    }
    std::fs::rename(db_path, &aside).map_err(io_err(db_path))?;
    tracing::error!(moved_to = %aside.display(), "state database moved aside");
    Ok(aside)
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

    /// Every kind of lost database, and a first start that is not one.
    #[test]
    fn lost_databases_are_told_apart_from_a_first_start() {
        // A first start: nothing on disk, nothing lost.
        let dir = tempfile::tempdir().unwrap();
        let (_, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.lost, None);
        assert_eq!(report.moved_aside, None);

        let populated = || {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path()).unwrap();
            store.put_revision(&record(1)).unwrap();
            store.put_revision(&record(2)).unwrap();
            store
                .tree("ipam")
                .unwrap()
                .insert(
                    "c1",
                    encode("net", &serde_json::json!({"ip": "10.0.0.2"})).unwrap(),
                )
                .unwrap();
            store.flush().unwrap();
            drop(store);
            dir
        };

        // Deleted: a fresh database beside revision files.
        let dir = populated();
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(
            matches!(&report.lost, Some(Lost::Missing(t)) if t.contains("2 revision files")),
            "{report:?}"
        );
        assert_eq!(report.moved_aside, None);
        assert_eq!(report.rebuilt_revisions, 2);
        assert_eq!(store.revisions().unwrap().len(), 2);
        drop(store);
        // Reopened again, it is whole: nothing lost any more.
        let (_, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.lost, None);
        assert_eq!(report.rebuilt_revisions, 0);

        // A record that fails its check: moved aside, history rebuilt.
        let dir = populated();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let mut bad = encode("net", &serde_json::json!({"ip": "10.0.0.3"})).unwrap();
            let last = bad.len() - 2;
            bad[last] ^= 1;
            store.tree("ipam").unwrap().insert("c2", bad).unwrap();
            store.flush().unwrap();
        }
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(
            matches!(&report.lost, Some(Lost::Corrupt(r)) if r.contains("ipam/c2") && r.contains("checksum")),
            "{report:?}"
        );
        let aside = report.moved_aside.unwrap();
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.corrupt-"));
        assert!(aside.is_dir());
        assert_eq!(report.rebuilt_revisions, 2);
        assert_eq!(store.revisions().unwrap().len(), 2);
        assert!(store.tree("ipam").unwrap().is_empty());

        // Garbage over every file of the database, over its data file only,
        // and over the second half of its data file.
        for (what, mut files) in [
            (
                "every file",
                Box::new(|_: &Path| true) as Box<dyn FnMut(&Path) -> bool>,
            ),
            ("the data file", Box::new(|p: &Path| p.ends_with("db/db"))),
            (
                "half the data file",
                Box::new(|p: &Path| p.ends_with("db/db")),
            ),
        ] {
            let dir = populated();
            let half = what.starts_with("half");
            for f in walk(&dir.path().join("db"))
                .into_iter()
                .filter(|p| files(p))
            {
                overwrite_with_garbage(&f, half);
            }
            let (store, report) = Store::open(dir.path()).unwrap();
            match what {
                "every file" => {
                    assert!(
                        matches!(report.lost, Some(Lost::Unopenable(_))),
                        "{report:?}"
                    );
                    assert!(report.moved_aside.is_some());
                }
                // sled finds nothing readable and starts empty, or drops
                // the damaged tail of its log: either way it is noticed.
                _ => assert!(
                    matches!(report.lost, Some(Lost::Missing(_) | Lost::Incomplete(_))),
                    "{what}: {report:?}"
                ),
            }
            assert_eq!(store.revisions().unwrap().len(), 2, "{what}");
        }
    }

    /// Writes pseudo-random bytes over `file` (or its second half), keeping its size.
    fn overwrite_with_garbage(file: &Path, half: bool) {
        use std::io::{Seek, Write};
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let len = std::fs::metadata(file).unwrap().len().max(64);
        let from = if half { len / 2 } else { 0 };
        let bytes: Vec<u8> = (from..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.seek(std::io::SeekFrom::Start(from)).unwrap();
        f.write_all(&bytes).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn record_checks_by_shape() {
        let env = encode("t", &1u32).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        type Case<'a> = (&'a str, Shape, &'a [u8], &'a [u8], Option<&'a str>);
        let cases: &[Case] = &[
            ("ipam", Shape::Envelope, b"c1", &env, None),
            (
                "ipam",
                Shape::Envelope,
                b"c1",
                b"short",
                Some("ipam/c1: 5 bytes"),
            ),
            (
                "revisions",
                Shape::Revisions,
                &7u64.to_be_bytes(),
                &env,
                None,
            ),
            (
                "revisions",
                Shape::Revisions,
                b"7",
                &env,
                Some("not a revision number"),
            ),
            ("images", Shape::Images, b"d/sha256:x", &env, None),
            (
                "images",
                Shape::Images,
                b"d/sha256:x",
                b"{}",
                Some("images/d/sha256:x"),
            ),
            (
                "images",
                Shape::Images,
                b"r/busybox:1",
                digest.as_bytes(),
                None,
            ),
            (
                "images",
                Shape::Images,
                b"r/busybox:1",
                b"sha256:zz",
                Some("not a digest"),
            ),
            (
                "images",
                Shape::Images,
                b"x/what",
                &env,
                Some("unknown key"),
            ),
            ("userns", Shape::U32, b"web", &65536u32.to_be_bytes(), None),
            (
                "userns",
                Shape::U32,
                b"web",
                b"12345",
                Some("5 bytes, expected 4"),
            ),
        ];
        for (tree, shape, key, value, want) in cases {
            let got = check_record(tree, *shape, key, value);
            match want {
                None => assert_eq!(got, Ok(()), "{tree} {shape:?}"),
                Some(w) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(w), "{tree} {shape:?}: {e}");
                }
            }
        }
        let mut flipped = env.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(check_record("events", Shape::Envelope, b"1", &flipped)
            .unwrap_err()
            .contains("checksum"));
    }

    #[test]
    fn a_fresh_database_is_missing_only_beside_traces() {
        let none = Traces::default();
        let revs = Traces {
            revision_files: 3,
            ..Traces::default()
        };
        let all = Traces {
            revision_files: 1,
            containers: 2,
            blobs: 4,
        };
        assert_eq!(none.missing(false), None, "a first start");
        assert_eq!(none.missing(true), None);
        assert_eq!(revs.missing(true), None, "an intact database");
        assert_eq!(
            revs.missing(false),
            Some(Lost::Missing("3 revision files on disk".into()))
        );
        assert_eq!(
            all.missing(false),
            Some(Lost::Missing(
                "1 revision files, 2 containers, 4 blobs on disk".into()
            ))
        );
    }

    #[test]
    fn a_locked_database_is_waited_for_and_never_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.put_revision(&record(1)).unwrap();
        // Held for good: an error after the wait, the database untouched.
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("db.")), "{names:?}");
        // Released while waiting (as when a dropped instance closes late).
        let opener = {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || Store::open(&path))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(store);
        let (store, report) = opener.join().unwrap().unwrap();
        assert_eq!(report.lost, None);
        assert_eq!(store.revisions().unwrap().len(), 1);
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
