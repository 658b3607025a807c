//! Named volumes on disk: `<state>/volumes/NAME/_data` (what containers
//! mount) and `NAME/meta.json` (created, seeded from where). A volume appears
//! under its name only once complete — seeded in a `.tmp-*` directory, then
//! renamed — so a volume is seeded at most once and never half. Also owns the
//! migration from the old layout (data directly in `NAME/`), listing with
//! sizes, and removal. See docs/volumes.md.

pub mod implicit;
pub mod seed;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::sys::stat::{fstatat, Mode};
use serde::{Deserialize, Serialize};

pub use seed::{seed_from_layers, SeedError, Seeded};

/// The volume data directory inside a volume's directory (Docker's name).
pub const DATA_DIR: &str = "_data";
/// The volume's own record, beside (never inside) its data.
pub const META_FILE: &str = "meta.json";
/// `format` of [`VolumeMeta`]: tells a migrated or new volume from old data
/// that happens to hold a `meta.json`.
const META_FORMAT: &str = "berth-volume/1";
/// Longest volume name: manifest names have 64 bytes; implicit volumes of an
/// image VOLUME are `<service>_<path>` (see [`implicit::volume_name`]).
pub const MAX_NAME_LEN: usize = 128;

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` is not a valid volume name (1-{MAX_NAME_LEN} of [A-Za-z0-9_.-], starting with a letter or digit)")]
    InvalidName(String),
    #[error("volume `{0}` not found")]
    NotFound(String),
    #[error("volume `{name}` is in use by {}; remove or change what uses it first", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    #[error("volume `{name}`: {source}")]
    Seed { name: String, source: SeedError },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a volume's first content came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedInfo {
    /// The image reference (pinned) the content was copied from.
    pub image: String,
    /// The path in the image.
    pub path: String,
    /// Entries (files, links, symlinks, directories excluded) and bytes copied.
    pub entries: u64,
    pub bytes: u64,
}

/// `NAME/meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub format: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Set when the image had content at the target; `None` for an empty
    /// start (no such path in the image) and for migrated volumes.
    #[serde(default)]
    pub seeded_from: Option<SeedInfo>,
    /// Moved from the old layout (data directly in `volumes/NAME/`); such a
    /// volume counts as initialized and is never seeded.
    #[serde(default)]
    pub migrated: bool,
}

/// A volume as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub meta: VolumeMeta,
    /// The directory containers mount.
    pub data: PathBuf,
}

/// What [`VolumeStore::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub data: PathBuf,
    /// Made by this call (and seeded, if the seeder copied anything).
    pub created: bool,
    pub seeded_from: Option<SeedInfo>,
}

/// The volumes directory. Creation, migration and removal are serialized by
/// one lock; callers run its methods off the async workers (they do I/O).
#[derive(Debug)]
pub struct VolumeStore {
    root: PathBuf,
    lock: Mutex<()>,
    counter: AtomicU64,
    /// Image config digest → its `Volumes`, for records stored before the
    /// image record carried them.
    config_volumes: Mutex<HashMap<String, Vec<String>>>,
}

/// Whether `name` may name a volume: what the manifest allows, up to
/// [`MAX_NAME_LEN`] bytes. Such a name is one plain path component.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl VolumeStore {
    /// Opens `root` (0700): removes unfinished creations (`.tmp-*`, never
    /// used by a container) and removals (`.rm-*`), finishes interrupted
    /// migrations (`.migrate-*`) and migrates volumes of the old layout.
    pub fn open(root: impl Into<PathBuf>) -> Result<VolumeStore, VolumeError> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &root))?;
        let store = VolumeStore {
            root,
            lock: Mutex::new(()),
            counter: AtomicU64::new(0),
            config_volumes: Mutex::new(HashMap::new()),
        };
        store.recover()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn temp_name(&self, kind: &str, name: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".{kind}-{name}-{}-{n}", std::process::id()))
    }

    fn recover(&self) -> Result<(), VolumeError> {
        let _g = self.guard();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io("list", &self.root))? {
            let entry = entry.map_err(io("list", &self.root))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in &names {
            let path = self.root.join(name);
            if name.starts_with(".tmp-") || name.starts_with(".rm-") {
                tracing::info!(path = %path.display(), "removing an unfinished volume creation or removal");
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            } else if let Some(vol) = name.strip_prefix(".migrate-") {
                self.finish_migration(vol)?;
            }
        }
        for name in &names {
            if !name.starts_with('.') && valid_name(name) {
                let dir = self.root.join(name);
                if dir.is_dir() && read_meta(&dir).is_none() {
                    self.migrate(name)?;
                }
            }
        }
        Ok(())
    }

    /// Moves an old-layout volume (data directly in `NAME/`) to `NAME/_data`
    /// with a `meta.json`, by renames only: at every step the data is whole,
    /// either at `NAME/` or at `.migrate-NAME/_data`, and `open` finishes an
    /// interrupted migration.
    fn migrate(&self, name: &str) -> Result<(), VolumeError> {
        let dir = self.root.join(name);
        let staging = self.root.join(format!(".migrate-{name}"));
        tracing::info!(
            volume = name,
            "moving volume data to {name}/{DATA_DIR} (new layout)"
        );
        match std::fs::create_dir(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Only an empty leftover of an interrupted first step.
                std::fs::remove_dir(&staging).map_err(io("clean up", &staging))?;
                std::fs::create_dir(&staging).map_err(io("create", &staging))?;
            }
            Err(e) => return Err(io("create", &staging)(e)),
        }
        set_mode(&staging, 0o700)?;
        sync_dir(&self.root)?;
        std::fs::rename(&dir, staging.join(DATA_DIR)).map_err(io("move", &dir))?;
        sync_dir(&self.root)?;
        self.finish_migration(name)
    }

    /// Completes `.migrate-NAME`: writes its meta (when missing) and renames it
    /// to `NAME`. An empty staging dir is removed; nothing with data is.
    fn finish_migration(&self, name: &str) -> Result<(), VolumeError> {
        let staging = self.root.join(format!(".migrate-{name}"));
        let dir = self.root.join(name);
        let data = staging.join(DATA_DIR);
        if !data.is_dir() {
            // Interrupted before the data moved: the data is still at NAME/.
            return match std::fs::remove_dir(&staging) {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(path = %staging.display(), error = %e, "leaving an unexpected migration directory alone");
                    Ok(())
                }
            };
        }
        if dir.exists() {
            tracing::warn!(volume = name, path = %staging.display(), "both a volume and a migration directory exist; leaving both alone");
            return Ok(());
        }
        if read_meta(&staging).is_none() {
            let meta = VolumeMeta {
                format: META_FORMAT.into(),
                name: name.into(),
                created_at: created_of(&data),
                seeded_from: None,
                migrated: true,
            };
            write_meta(&staging, &meta)?;
        }
        std::fs::rename(&staging, &dir).map_err(io("finish migration of", &staging))?;
        sync_dir(&self.root)
    }

    /// The image's `VOLUME` paths: from its record, or — for a record an
    /// older berthd stored without them — from its config blob (cached).
    pub fn image_volumes(
        &self,
        images: &crate::image::store::ImageStore,
        rec: &crate::image::store::ImageRecord,
    ) -> Vec<String> {
        if !rec.run.volumes.is_empty() {
            return rec.run.volumes.clone();
        }
        let key = rec.config_digest.to_string();
        let mut cache = self
            .config_volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(&key) {
            return v.clone();
        }
        let volumes = images
            .content()
            .read_capped(&rec.config_digest, 4 << 20)
            .ok()
            .and_then(|b| crate::launch::ImageRunConfig::from_config_json(&b).ok())
            .map(|c| c.volumes)
            .unwrap_or_default();
        cache.insert(key, volumes.clone());
        volumes
    }

    /// The data directory of `name`, if the volume exists.
    pub fn get(&self, name: &str) -> Option<VolumeInfo> {
        if !valid_name(name) {
            return None;
        }
        let dir = self.root.join(name);
        read_meta(&dir).map(|meta| VolumeInfo {
            meta,
            data: dir.join(DATA_DIR),
        })
    }

    /// Returns volume `name`, creating it when missing. A new volume's data
    /// directory starts 0755 root:root and `seed` fills it (from the image);
    /// only once that succeeded does the volume appear under its name, so a
    /// failed seed leaves nothing behind, and an existing volume — even an
    /// emptied one — is never seeded again.
    pub fn ensure(
        &self,
        name: &str,
        seed: impl FnOnce(&Path) -> Result<Option<SeedInfo>, SeedError>,
    ) -> Result<Ensured, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName(name.into()));
        }
        let _g = self.guard();
        let dir = self.root.join(name);
        if let Some(meta) = read_meta(&dir) {
            return Ok(Ensured {
                data: dir.join(DATA_DIR),
                created: false,
                seeded_from: meta.seeded_from,
            });
        }
        if dir.is_dir() {
            // A volume of the old layout that appeared after open.
            self.migrate(name)?;
            return Ok(Ensured {
                data: dir.join(DATA_DIR),
                created: false,
                seeded_from: None,
            });
        }
        let tmp = self.temp_name("tmp", name);
        let result = (|| {
            std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
            set_mode(&tmp, 0o700)?;
            let data = tmp.join(DATA_DIR);
            std::fs::create_dir(&data).map_err(io("create", &data))?;
            set_mode(&data, 0o755)?;
            let seeded_from = seed(&data).map_err(|source| VolumeError::Seed {
                name: name.into(),
                source,
            })?;
            let meta = VolumeMeta {
                format: META_FORMAT.into(),
                name: name.into(),
                created_at: crate::now_rfc3339(),
                seeded_from: seeded_from.clone(),
                migrated: false,
            };
            sync_tree_root(&data)?;
            write_meta(&tmp, &meta)?;
            Ok(seeded_from)
        })();
        let seeded_from = match result {
            Ok(s) => s,
            Err(e) => {
                if let Err(rm) = std::fs::remove_dir_all(&tmp) {
                    tracing::warn!(path = %tmp.display(), error = %rm, "removing a failed volume creation");
                }
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &dir).map_err(io("create", &dir))?;
        sync_dir(&self.root)?;
        Ok(Ensured {
            data: dir.join(DATA_DIR),
            created: true,
            seeded_from,
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io("list", &self.root))? {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(info) = self.get(&name) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Removes volume `name` and its data, unless `users` (asked under the
    /// store's lock, so no creation races it) names anything using it.
    /// Renamed away first, so a half-deleted volume never looks whole.
    pub fn remove(
        &self,
        name: &str,
        users: impl FnOnce() -> Result<Vec<String>, VolumeError>,
    ) -> Result<(), VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName(name.into()));
        }
        let _g = self.guard();
        let dir = self.root.join(name);
        if read_meta(&dir).is_none() {
            return Err(VolumeError::NotFound(name.into()));
        }
        let users = users()?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.into(),
                users,
            });
        }
        let doomed = self.temp_name("rm", name);
        std::fs::rename(&dir, &doomed).map_err(io("remove", &dir))?;
        sync_dir(&self.root)?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))
    }
}

fn read_meta(dir: &Path) -> Option<VolumeMeta> {
    let bytes = std::fs::read(dir.join(META_FILE)).ok()?;
    let meta: VolumeMeta = serde_json::from_slice(&bytes).ok()?;
    (meta.format == META_FORMAT && dir.join(DATA_DIR).is_dir()).then_some(meta)
}

fn write_meta(dir: &Path, meta: &VolumeMeta) -> Result<(), VolumeError> {
    let path = dir.join(META_FILE);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| VolumeError::Io {
        op: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::state::write_atomic(&path, &bytes).map_err(|e| VolumeError::Io {
        op: "write",
        path,
        source: std::io::Error::other(e.to_string()),
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Flushes a freshly seeded tree: `syncfs` on its filesystem (one call for
/// every file copied, instead of one fsync each).
fn sync_tree_root(dir: &Path) -> Result<(), VolumeError> {
    let f = std::fs::File::open(dir).map_err(io("sync", dir))?;
    nix::unistd::syncfs(&f).map_err(|e| io("sync", dir)(e.into()))
}

/// The mtime of an old volume's data, as its best-known creation time.
fn created_of(data: &Path) -> String {
    std::fs::metadata(data)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(crate::now_rfc3339)
}

/// Bytes a directory tree occupies (as `du`: allocated blocks, each inode
/// once), walked without following any symlink or leaving the filesystem —
/// a container may be rewriting it meanwhile: every directory is opened from
/// the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and what
/// vanished or changed kind meanwhile is skipped.
pub fn disk_usage(dir: &Path) -> Result<u64, VolumeError> {
    use crate::sys::openat2::openat2;
    use nix::fcntl::{OpenHow, ResolveFlag};
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", dir)(e.into()))?;
    let st = nix::sys::stat::fstat(&root).map_err(|e| io("stat", dir)(e.into()))?;
    let dev = st.st_dev;
    let mut total = (st.st_blocks as u64).saturating_mul(512);
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut pending: Vec<std::ffi::OsString> = vec![".".into()];
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    while let Some(rel) = pending.pop() {
        let fd: OwnedFd = match openat2(&root, rel.as_os_str(), how) {
            Ok(fd) => fd,
            Err(_) => continue, // gone, replaced by a symlink, too long
        };
        let Ok(probe) = fd.try_clone() else { continue };
        let Ok(mut d) = nix::dir::Dir::from_fd(fd) else {
            continue;
        };
        for entry in d.iter().flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            let Ok(st) = fstatat(&probe, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if st.st_dev != dev || (st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino))) {
                continue;
            }
            total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                let mut child = rel.clone();
                child.push("/");
                child.push(name);
                pending.push(child);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
