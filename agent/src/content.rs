//! The content store: verified blobs under `<root>/blobs/<alg>/<hex>`, written
//! through an ingest (`<root>/ingest/`) that hashes while writing and renames
//! into place only after size and digest check out, so nothing unverified is
//! ever readable. One ingest per digest runs at a time; a second caller waits
//! and then sees the committed blob. Leftover ingests (crash, kill -9) are
//! deleted on open, never trusted.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use berth_core::image_ref::{Digest, DigestAlgorithm};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedMutexGuard;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Why a content-store operation failed. Every variant names the digest or path.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content store: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content {digest} has the wrong size: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("content {digest} is larger than the limit of {limit} bytes (at least {size})")]
    TooLarge {
        digest: Digest,
        limit: u64,
        size: u64,
    },
    #[error("content {digest} is not in the store")]
    NotFound { digest: Digest },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A blob present in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// A content-addressed blob store rooted at an injected directory (the agent's
/// state dir). Cheap to clone; clones share the per-digest ingest locks.
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    locks: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
    counter: AtomicU64,
}

/// What [`ContentStore::begin`] found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per blob download
pub enum Begin {
    /// The blob is already stored (possibly committed by a concurrent ingest).
    Exists,
    /// Write the content through this ingest and [`Ingest::commit`] it.
    Ingest(Ingest),
}

impl ContentStore {
    /// Opens (creating as needed, 0700) the store under `root` and deletes any
    /// ingest leftovers from an earlier run.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ContentError> {
        let root = root.into();
        let store = ContentStore {
            inner: Arc::new(Inner {
                root,
                locks: Mutex::new(HashMap::new()),
                counter: AtomicU64::new(0),
            }),
        };
        for dir in [
            store.inner.root.clone(),
            store.blobs_dir(),
            store.blobs_dir().join("sha256"),
            store.blobs_dir().join("sha512"),
            store.ingest_dir(),
        ] {
            make_private_dir(&dir)?;
        }
        let ingest = store.ingest_dir();
        for entry in fs::read_dir(&ingest).map_err(io_err("listing", &ingest))? {
            let path = entry.map_err(io_err("listing", &ingest))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("removing stale ingest", &path))?;
            tracing::info!(path = %path.display(), "removed stale ingest file");
        }
        Ok(store)
    }

    /// The root directory the store was opened on.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.inner.root.join("blobs")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.inner.root.join("ingest")
    }

    /// Where the blob `digest` lives (whether or not it is present).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir()
            .join(digest.algorithm_name())
            .join(digest.hex())
    }

    /// True when the verified blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The size of a present blob.
    pub fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ContentError::NotFound {
                digest: digest.clone(),
            }),
            Err(e) => Err(io_err("reading metadata of", &path)(e)),
        }
    }

    /// Opens a present blob for reading (O_CLOEXEC, read-only).
    pub fn open_reader(&self, digest: &Digest) -> Result<fs::File, ContentError> {
        let path = self.path(digest);
        fs::File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ContentError::NotFound {
                    digest: digest.clone(),
                }
            } else {
                io_err("opening", &path)(e)
            }
        })
    }

    /// Reads a whole blob, refusing one larger than `max` bytes.
    pub fn read_capped(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, ContentError> {
        let file = self.open_reader(digest)?;
        let path = self.path(digest);
        let mut buf = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("reading", &path))?;
        if buf.len() as u64 > max {
            return Err(ContentError::TooLarge {
                digest: digest.clone(),
                limit: max,
                size: buf.len() as u64,
            });
        }
        Ok(buf)
    }

    /// Re-hashes a present blob (for fsck); a mismatch is reported, not repaired.
    pub fn verify(&self, digest: &Digest) -> Result<(), ContentError> {
        let mut file = self.open_reader(digest)?;
        let path = self.path(digest);
        let mut hasher = Hasher::new(digest.algorithm());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_err("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    async fn lock(&self, digest: &Digest) -> OwnedMutexGuard<()> {
        let mutex = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(digest).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(digest.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        mutex.lock_owned().await
    }

    /// Starts writing the blob `expected`. Waits while another ingest of the same
    /// digest is in flight; returns [`Begin::Exists`] when the blob is (now) present.
    /// `expected_size`, when known, is enforced while writing and at commit.
    pub async fn begin(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Begin, ContentError> {
        let guard = self.lock(expected).await;
        if self.has(expected) {
            return Ok(Begin::Exists);
        }
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.ingest_dir().join(format!(
            "{}-{}-{}-{n}",
            expected.algorithm_name(),
            expected.hex(),
            std::process::id()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .await
            .map_err(io_err("creating ingest file", &tmp))?;
        Ok(Begin::Ingest(Ingest {
            store: self.clone(),
            expected: expected.clone(),
            expected_size,
            tmp,
            file: Some(file),
            hasher: Hasher::new(expected.algorithm()),
            written: 0,
            _guard: guard,
        }))
    }

    /// Stores `data` as the blob `expected` (verified). Returns false when it was already present.
    pub async fn write_blob(&self, expected: &Digest, data: &[u8]) -> Result<bool, ContentError> {
        match self.begin(expected, Some(data.len() as u64)).await? {
            Begin::Exists => Ok(false),
            Begin::Ingest(mut ingest) => {
                ingest.write(data).await?;
                ingest.commit().await?;
                Ok(true)
            }
        }
    }

    /// Deletes a blob; false when it was not present.
    pub fn delete(&self, digest: &Digest) -> Result<bool, ContentError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("deleting", &path)(e)),
        }
    }

    /// Every blob present, sorted by digest. Files whose names are not digests are skipped.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ContentError> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.blobs_dir().join(alg);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("listing", &dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(digest) = format!("{alg}:{name}").parse::<Digest>() else {
                    continue;
                };
                let meta = entry
                    .metadata()
                    .map_err(io_err("reading metadata of", &entry.path()))?;
                if meta.is_file() {
                    out.push(BlobInfo {
                        digest,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Total bytes of all blobs present.
    pub fn disk_usage(&self) -> Result<u64, ContentError> {
        Ok(self.list()?.iter().map(|b| b.size).sum())
    }
}

fn make_private_dir(dir: &Path) -> Result<(), ContentError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_err("chmod", dir))
}

/// An in-flight write of one blob. Dropping it without [`Ingest::commit`]
/// deletes the temp file; nothing becomes visible under `blobs/`.
#[derive(Debug)]
pub struct Ingest {
    store: ContentStore,
    expected: Digest,
    expected_size: Option<u64>,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Hasher,
    written: u64,
    _guard: OwnedMutexGuard<()>,
}

impl Ingest {
    /// The digest this ingest must produce.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn file(&mut self) -> Result<&mut tokio::fs::File, ContentError> {
        let tmp = self.tmp.clone();
        self.file.as_mut().ok_or_else(|| ContentError::Io {
            op: "writing",
            path: tmp,
            source: io::Error::other("ingest already closed"),
        })
    }

    /// Appends `buf`, hashing it. Fails early once the expected size is exceeded.
    pub async fn write(&mut self, buf: &[u8]) -> Result<(), ContentError> {
        let total = self.written + buf.len() as u64;
        if let Some(limit) = self.expected_size {
            if total > limit {
                return Err(ContentError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: limit,
                    actual: total,
                });
            }
        }
        let tmp = self.tmp.clone();
        self.file()?
            .write_all(buf)
            .await
            .map_err(io_err("writing", &tmp))?;
        self.hasher.update(buf);
        self.written = total;
        Ok(())
    }

    /// Discards what was written so far (for a retried download).
    pub async fn reset(&mut self) -> Result<(), ContentError> {
        let tmp = self.tmp.clone();
        let file = self.file()?;
        file.flush().await.map_err(io_err("flushing", &tmp))?;
        file.set_len(0).await.map_err(io_err("truncating", &tmp))?;
        tokio::io::AsyncSeekExt::rewind(file)
            .await
            .map_err(io_err("seeking", &tmp))?;
        self.hasher = Hasher::new(self.expected.algorithm());
        self.written = 0;
        Ok(())
    }

    /// Checks size and digest, fsyncs, and atomically renames the blob into
    /// place. On a mismatch the temp file is deleted and the error names both digests.
    pub async fn commit(mut self) -> Result<PathBuf, ContentError> {
        let tmp = self.tmp.clone();
        let mut file = self.file.take().ok_or_else(|| ContentError::Io {
            op: "committing",
            path: tmp.clone(),
            source: io::Error::other("ingest already closed"),
        })?;
        file.flush().await.map_err(io_err("flushing", &tmp))?;
        if let Some(expected) = self.expected_size {
            if expected != self.written {
                return Err(ContentError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected,
                    actual: self.written,
                });
            }
        }
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(self.expected.algorithm()));
        let actual = hasher.finish();
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        file.sync_all().await.map_err(io_err("fsync", &tmp))?;
        drop(file);
        let dest = self.store.path(&self.expected);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_err("renaming ingest into", &dest))?;
        if let Some(parent) = dest.parent() {
            let parent = parent.to_path_buf();
            let synced = tokio::task::spawn_blocking(move || {
                fs::File::open(&parent).and_then(|d| d.sync_all())
            })
            .await;
            if let Ok(Err(e)) = synced {
                tracing::warn!(error = %e, "fsync of blob directory failed");
            }
        }
        Ok(dest)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists.
        match fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove ingest file")
            }
        }
    }
}

/// A streaming hasher for the digest algorithms the store supports.
#[derive(Debug, Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::sha256_from_bytes(&h.finalize()),
            Hasher::Sha512(h) => {
                let hex = hex::encode(h.finalize());
                // A 128-hex-char sha512 string always parses.
                format!("sha512:{hex}")
                    .parse()
                    .unwrap_or_else(|_| Digest::sha256_of(b""))
            }
        }
    }
}

/// Hashes `data` with the algorithm of `like`.
pub fn digest_like(like: &Digest, data: &[u8]) -> Digest {
    let mut h = Hasher::new(like.algorithm());
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn ingest_verifies_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("state")).unwrap();
        let data = b"hello layer".to_vec();
        let d = Digest::sha256_of(&data);
        assert!(!store.has(&d));
        let Begin::Ingest(mut ing) = store.begin(&d, Some(data.len() as u64)).await.unwrap() else {
            panic!()
        };
        ing.write(&data[..5]).await.unwrap();
        // Not visible before commit.
        assert!(!store.has(&d));
        ing.write(&data[5..]).await.unwrap();
        let path = ing.commit().await.unwrap();
        assert_eq!(path, store.path(&d));
        assert!(store.has(&d));
        assert_eq!(store.read_capped(&d, 100).unwrap(), data);
        assert!(matches!(
            store.read_capped(&d, 3),
            Err(ContentError::TooLarge { .. })
        ));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(dir.path().join("state/blobs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(
            store.begin(&d, None).await.unwrap(),
            Begin::Exists
        ));
        store.verify(&d).unwrap();
        assert_eq!(
            store.list().unwrap(),
            vec![BlobInfo {
                digest: d.clone(),
                size: data.len() as u64
            }]
        );
        assert_eq!(store.disk_usage().unwrap(), data.len() as u64);
        assert!(store.delete(&d).unwrap());
        assert!(!store.delete(&d).unwrap());
        assert!(matches!(
            store.open_reader(&d),
            Err(ContentError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"right");
        let Begin::Ingest(mut ing) = store.begin(&d, None).await.unwrap() else {
            panic!()
        };
        ing.write(b"wrong").await.unwrap();
        let err = ing.commit().await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&d.to_string()) && msg.contains(&Digest::sha256_of(b"wrong").to_string()),
            "{msg}"
        );
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );

        // Short content with a known size.
        let Begin::Ingest(mut ing) = store.begin(&d, Some(5)).await.unwrap() else {
            panic!()
        };
        ing.write(b"rig").await.unwrap();
        assert!(matches!(
            ing.commit().await,
            Err(ContentError::SizeMismatch {
                expected: 5,
                actual: 3,
                ..
            })
        ));
        // Too much content fails at write time.
        let Begin::Ingest(mut ing) = store.begin(&d, Some(5)).await.unwrap() else {
            panic!()
        };
        assert!(ing.write(b"righter").await.is_err());
        drop(ing);
        assert!(files_under(dir.path()).is_empty());

        // Reset lets a retried download start over.
        let Begin::Ingest(mut ing) = store.begin(&d, Some(5)).await.unwrap() else {
            panic!()
        };
        ing.write(b"rxx").await.unwrap();
        ing.reset().await.unwrap();
        ing.write(b"right").await.unwrap();
        ing.commit().await.unwrap();
        assert!(store.has(&d));
    }

    #[tokio::test]
    async fn leftovers_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let Begin::Ingest(mut ing) = store.begin(&d, None).await.unwrap() else {
            panic!()
        };
        ing.write(b"x").await.unwrap();
        // Simulate a crash: the process dies with the temp file on disk.
        std::mem::forget(ing);
        fs::write(dir.path().join("ingest/garbage"), b"junk").unwrap();
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 2);
        let store = ContentStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert!(!store.has(&d));
    }

    #[tokio::test]
    async fn concurrent_ingests_of_one_digest_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = vec![7u8; 100_000];
        let d = Digest::sha256_of(&data);
        let writes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, d, data, writes) = (store.clone(), d.clone(), data.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                if let Begin::Ingest(mut ing) =
                    store.begin(&d, Some(data.len() as u64)).await.unwrap()
                {
                    writes.fetch_add(1, Ordering::SeqCst);
                    for chunk in data.chunks(1000) {
                        ing.write(chunk).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    ing.commit().await.unwrap();
                }
                assert!(store.has(&d));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        store.verify(&d).unwrap();
    }

    #[test]
    fn sha512_hashing() {
        let d: Digest = format!("sha512:{}", "0".repeat(128)).parse().unwrap();
        let h = digest_like(&d, b"abc");
        assert_eq!(h.algorithm_name(), "sha512");
        assert!(h.hex().starts_with("ddaf35a1"));
    }
}
