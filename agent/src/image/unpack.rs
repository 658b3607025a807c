//! The layer applier: one decompressed OCI layer tar stream (untrusted input)
//! becomes one overlayfs-ready snapshot directory. It owns path safety (all
//! operations fd-relative below the root), entry kinds, ownership, modes, mtimes,
//! xattrs, OCI→overlay whiteouts, limits and end-of-stream checks. Policies
//! (mknod devices, xattr allow-list, clamped symlink parents) are documented on
//! [`apply_layer`].

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use crate::sys::openat2::openat2;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

mod sparse;
pub use sparse::SparseError;
use sparse::{Format, MapParser, SparseHeader, MAP_BLOCK};

/// Bytes the tar reader may consume between two entries (headers, PAX records,
/// GNU long names, padding) before the stream is refused.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Zero padding accepted after the end-of-archive block.
const MAX_TRAILER_BYTES: u64 = 1 << 20;
/// Bytes of directory paths remembered for the final mtime pass (bounds memory
/// independently of `max_entries * max_path_len`).
const MAX_DIR_TIME_BYTES: usize = 256 << 20;
const BLOCK: u64 = 512;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Caps on what one layer may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Tar entries (after PAX/GNU extension headers are folded in).
    pub max_entries: u64,
    /// Bytes of an entry name or link target, before normalization.
    pub max_path_len: usize,
    /// Sum of all entry data bytes.
    pub max_total_bytes: u64,
    /// Data bytes of one entry (the real size for sparse files).
    pub max_entry_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_total_bytes: 64 << 30,
            max_entry_bytes: 16 << 30,
        }
    }
}

/// What a successful apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries read (including skipped PAX global headers and whiteouts).
    pub entries: u64,
    /// Entry data bytes read (regular file contents plus any payload on others).
    pub bytes: u64,
}

/// Why a layer could not be applied. `path` is the entry name as found in the
/// archive (lossily decoded).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream could not be read or parsed (bad checksum, short header,
    /// I/O error of the underlying reader).
    #[error("reading layer tar stream (after entry {after:?}): {source}")]
    Read {
        after: String,
        #[source]
        source: io::Error,
    },
    /// An entry's data ended before its declared size.
    #[error("layer entry {path:?}: stream truncated ({got} of {expected} data bytes)")]
    Truncated {
        path: String,
        expected: u64,
        got: u64,
    },
    /// The stream ended without an end-of-archive (zero) block.
    #[error("layer tar stream ended without an end-of-archive block (truncated?)")]
    MissingEndOfArchive,
    /// Bytes other than zero padding follow the end-of-archive block.
    #[error("layer tar stream has trailing data after the end-of-archive block: {what}")]
    TrailingData { what: String },
    /// A limit from [`UnpackLimits`] (or the fixed header budget) was exceeded.
    #[error("layer entry {path:?}: limit exceeded: {what}")]
    Limit { path: String, what: String },
    /// The entry's name (or link target) is not acceptable.
    #[error("layer entry {path:?}: unsafe or invalid path: {reason}")]
    InvalidPath { path: String, reason: String },
    /// A hard link whose target is missing, a directory or outside the root.
    #[error("layer entry {path:?}: bad hard link to {target:?}: {reason}")]
    BadHardLink {
        path: String,
        target: String,
        reason: String,
    },
    /// An entry type or encoding this applier does not support.
    #[error("layer entry {path:?}: unsupported: {what}")]
    Unsupported { path: String, what: String },
    /// A header field that cannot be honoured (e.g. uid over 32 bits).
    #[error("layer entry {path:?}: invalid header: {what}")]
    InvalidHeader { path: String, what: String },
    /// A GNU sparse file whose records or map are malformed (`path` is the
    /// real name from `GNU.sparse.name` when there is one).
    #[error("layer entry {path:?}: bad GNU sparse file: {source}")]
    Sparse {
        path: String,
        #[source]
        source: Box<SparseError>,
    },
    /// A filesystem operation failed.
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Applies one decompressed layer tar stream to `root`, an existing empty
/// directory that becomes an overlayfs lower directory. On error `root` is left
/// partially populated (the caller deletes it); nothing outside it is touched.
///
/// Policies:
/// * **Paths.** Names are normalized lexically (leading `/` and `.` dropped,
///   `a/../b` folded); a `..` that would climb above the root is refused. Parent
///   directories are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink in a
///   parent position (e.g. `lib -> /usr/lib`) is followed but *clamped to the
///   root*, as containerd does; missing parents are created 0755 root:root; a
///   parent that is a dangling symlink or a non-directory is an error. The last
///   component is never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `O_EXCL`).
///   A directory entry naming the root itself (`./`) sets the root's owner,
///   mode, xattrs and mtime; any other kind of entry naming it is refused.
/// * **Replacement** (as Docker): a later entry wins; a directory over a
///   directory merges; anything else first removes what is there (a directory
///   recursively, fd-relative, without following symlinks).
/// * **Symlinks** are stored verbatim (they may point anywhere); they are only
///   ever followed as parents, clamped to the root.
/// * **Hard links** must name an existing non-directory already in the root
///   (resolved like parents, clamped); a link to a symlink links the symlink
///   itself. The link entry's own metadata is ignored (it shares the inode).
/// * **Devices and FIFOs** are created with `mknodat` (berthd runs as root).
///   Sockets cannot appear in tar; other entry types (GNU volume/multivolume,
///   unknown) are refused. PAX global headers are skipped.
/// * **Xattrs** (`SCHILY.xattr.*`) on files and directories: `user.*`,
///   `security.capability` and `system.posix_acl_{access,default}` are applied;
///   everything else (`trusted.*` — notably `trusted.overlay.*` —, other
///   `security.*`, unknown namespaces) is dropped with a warning, as are xattrs
///   on symlinks, devices and FIFOs. `user.*` on a filesystem without support
///   is dropped with a warning; any other failure is an error.
/// * **Whiteouts**: `.wh.NAME` becomes a 0:0 character device `NAME` (unless
///   this layer already created `NAME`: a whiteout only hides lower layers);
///   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; a
///   directory that replaces a whiteout of the same layer is made opaque; other
///   `.wh..wh.*` (AUFS metadata) are skipped with a warning; `.wh.`, `.wh..`,
///   `.wh...` are refused. Whiteouts never delete anything.
/// * **Metadata order**: data, `fchown`, `fchmod` (after chown, which clears
///   setuid), xattrs (after chown, which clears `security.capability`), then
///   mtimes; directory mtimes are set after the last entry.
/// * **Stream**: header checksum errors, short data, extension headers over
///   1 MiB, a partial end-of-archive block and non-zero (or over 1 MiB of)
///   bytes after it are errors; one zero block ends the archive (GNU tar
///   accepts a lone one too). A stream that ends exactly after an entry, with
///   no end-of-archive block at all, is accepted: `umoci insert` writes such
///   layers and docker and podman take them; a cut there is caught by the
///   caller's diff_id check over the whole stream.
/// * **Sparse files** keep their holes. PAX-encoded GNU sparse entries
///   (formats 0.0, 0.1 and 1.0, `tar --format=posix --sparse`) get their real
///   name (`GNU.sparse.name`) and size; each data segment is written at its
///   offset and the file is extended to the real size, so the gaps are holes.
///   Maps are checked first: numbers, counts, segments inside the real size,
///   sorted and non-overlapping, lengths adding up to exactly the stored data;
///   anything else is refused, naming the entry. Old-GNU sparse entries
///   (type `S`, expanded by the tar crate) are written skipping aligned
///   all-zero 4 KiB blocks, which become holes too.
pub fn apply_layer<R: Read>(
    tar_stream: R,
    root: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("", "open snapshot root", e))?;

    let state = Rc::new(GuardState::default());
    let guard = Guard {
        inner: tar_stream,
        state: Rc::clone(&state),
    };
    let mut archive = tar::Archive::new(guard);
    let mut applier = Applier {
        root: root_fd,
        limits,
        stats: UnpackStats::default(),
        dir_times: HashMap::new(),
        dir_time_bytes: 0,
    };
    let mut last_name = String::new();
    let mut data_end = 0u64;
    {
        let mut entries = archive.entries().map_err(|e| UnpackError::Read {
            after: String::new(),
            source: e,
        })?;
        loop {
            state.budget.set(Some(MAX_HEADER_BYTES));
            let next = entries.next();
            state.budget.set(None);
            let entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(_)) if state.over_budget.get() => {
                    return Err(UnpackError::Limit {
                        path: last_name,
                        what: format!(
                            "extension headers after this entry exceed {MAX_HEADER_BYTES} bytes"
                        ),
                    });
                }
                Some(Err(e)) => {
                    return Err(UnpackError::Read {
                        after: last_name,
                        source: e,
                    })
                }
            };
            last_name = applier.apply_entry(entry)?;
            data_end = state.pos.get();
        }
    }
    check_trailer(archive.into_inner(), &state, data_end)?;
    applier.finish_dir_times()?;
    Ok(applier.stats)
}

/// After `entries()` ended: the tar reader must have consumed a whole zero block
/// past the last entry's data (plus its padding), and everything after that must
/// be zero padding, at most [`MAX_TRAILER_BYTES`].
fn check_trailer<R: Read>(
    mut guard: Guard<R>,
    state: &GuardState,
    data_end: u64,
) -> Result<(), UnpackError> {
    let after = state.pos.get().saturating_sub(data_end);
    // Only the last entry's padding was read, up to a block boundary.
    if after < BLOCK && state.pos.get().is_multiple_of(BLOCK) {
        // Ended right after an entry: no end-of-archive block (see above).
        tracing::debug!("layer tar has no end-of-archive block; accepted (diff_id is checked)");
        return Ok(());
    }
    if after < BLOCK {
        return Err(UnpackError::MissingEndOfArchive);
    }
    let mut buf = [0u8; 8192];
    let mut extra = 0u64;
    loop {
        let n = match guard.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(UnpackError::Read {
                    after: "<end-of-archive>".into(),
                    source: e,
                })
            }
        };
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Err(UnpackError::TrailingData {
                what: format!(
                    "non-zero byte {} bytes past the end-of-archive block",
                    extra + i as u64
                ),
            });
        }
        extra += n as u64;
        if extra > MAX_TRAILER_BYTES {
            return Err(UnpackError::TrailingData {
                what: format!("more than {MAX_TRAILER_BYTES} bytes of padding"),
            });
        }
    }
}

/// Copies `reader` to `writer` through a buffer of up to 256 KiB.
fn copy_large<R: Read, W: io::Write>(reader: &mut R, writer: &mut W, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; size.clamp(1, 256 << 10) as usize];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Granularity at which [`HoleWriter`] leaves zeros unwritten.
const HOLE_BLOCK: u64 = 4096;

/// Writes a file from offset 0, leaving each aligned all-zero [`HOLE_BLOCK`]
/// unwritten (a hole once the caller sets the final length).
struct HoleWriter<'f> {
    file: &'f File,
    pos: u64,
}

impl io::Write for HoleWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = HOLE_BLOCK - self.pos % HOLE_BLOCK;
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let chunk = &buf[..n];
        if chunk.iter().any(|b| *b != 0) {
            std::os::unix::fs::FileExt::write_all_at(self.file, chunk, self.pos)?;
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Shared between [`apply_layer`] and the reader handed to the tar crate, which
/// owns it: stream position and the header-phase byte budget.
#[derive(Debug, Default)]
struct GuardState {
    pos: Cell<u64>,
    budget: Cell<Option<u64>>,
    over_budget: Cell<bool>,
}

/// Counts bytes and, while the tar crate reads headers (`budget` is set), caps
/// them: the crate buffers PAX and GNU long-name payloads in memory unbounded.
struct Guard<R> {
    inner: R,
    state: Rc<GuardState>,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut want = buf.len();
        if let Some(left) = self.state.budget.get() {
            if left == 0 && want > 0 {
                self.state.over_budget.set(true);
                return Err(io::Error::other("tar extension headers too large"));
            }
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.state.pos.set(self.state.pos.get() + n as u64);
        if let Some(left) = self.state.budget.get() {
            self.state.budget.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

/// PAX records as (key, value), in archive order.
type PaxRecords = Vec<(String, Vec<u8>)>;

/// Ownership, mode, times and xattrs from an entry's header and PAX records.
#[derive(Debug)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Per-apply state.
struct Applier<'l> {
    root: OwnedFd,
    limits: &'l UnpackLimits,
    stats: UnpackStats,
    /// Directory mtimes, applied after the last entry (children change them).
    dir_times: HashMap<Vec<u8>, TimeSpec>,
    /// Sum of the key lengths in `dir_times`.
    dir_time_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    GlobalHeader,
}

impl Applier<'_> {
    /// Applies one entry; returns its display name (for later error context).
    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<String, UnpackError> {
        let mut raw = entry.path_bytes().into_owned();
        let mut path = String::from_utf8_lossy(&raw).into_owned();
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(limit(
                &path,
                format!("more than {} entries", self.limits.max_entries),
            ));
        }
        if raw.len() > self.limits.max_path_len {
            return Err(limit(
                &path,
                format!(
                    "name is {} bytes, over {}",
                    raw.len(),
                    self.limits.max_path_len
                ),
            ));
        }
        let kind = entry_kind(&entry, &raw, &path)?;
        let size = entry.size();
        self.check_size(size, &path)?;
        if self.stats.bytes.saturating_add(size) > self.limits.max_total_bytes {
            return Err(limit(
                &path,
                format!("layer data over {} bytes", self.limits.max_total_bytes),
            ));
        }
        if kind == Kind::GlobalHeader {
            self.drain(&mut entry, &path)?;
            return Ok(path);
        }
        let (meta, sparse_records) = read_meta(&mut entry, &path)?;
        let sparse = if sparse_records.is_empty() {
            None
        } else {
            let sp = self.sparse_header(&entry, kind, &sparse_records, &path)?;
            if let Some(name) = &sp.name {
                raw.clone_from(name);
                path = lossy(&raw);
            }
            self.check_size(sp.real_size, &path)?;
            Some(sp)
        };
        let comps = normalize(&raw).map_err(|reason| invalid_path(&path, reason))?;

        // Whiteouts are recognized by name, whatever their type.
        if let Some(last) = comps.last() {
            if last.starts_with(WHITEOUT_PREFIX) {
                self.drain(&mut entry, &path)?;
                self.whiteout(&comps, &path)?;
                return Ok(path);
            }
        }

        match kind {
            Kind::File => match sparse {
                Some(sp) => self.pax_sparse(&mut entry, &comps, &path, &meta, &sp)?,
                None => self.regular(&mut entry, &comps, &path, &meta)?,
            },
            Kind::Dir => {
                self.drain(&mut entry, &path)?;
                self.directory(&comps, &path, &meta)?;
            }
            Kind::Symlink => {
                let target = self.link_target(&entry, &path)?;
                self.drain(&mut entry, &path)?;
                self.symlink(&comps, &path, &target, &meta)?;
            }
            Kind::HardLink => {
                let target = self.link_target(&entry, &path)?;
                self.drain(&mut entry, &path)?;
                self.hardlink(&comps, &path, &target)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let dev = device_number(&entry, kind, &path)?;
                self.drain(&mut entry, &path)?;
                self.node(&comps, &path, kind, dev, &meta)?;
            }
            Kind::GlobalHeader => {}
        }
        Ok(path)
    }

    /// Refuses an entry (or a sparse file's real size) over `max_entry_bytes`.
    fn check_size(&self, size: u64, path: &str) -> Result<(), UnpackError> {
        if size > self.limits.max_entry_bytes {
            return Err(limit(
                path,
                format!(
                    "entry is {size} bytes, over {}",
                    self.limits.max_entry_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Parses an entry's `GNU.sparse.*` records; errors name the real name
    /// when the records carry one. Only plain regular files may be sparse
    /// this way, and the real name must respect `max_path_len`.
    fn sparse_header<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        kind: Kind,
        records: &[(String, Vec<u8>)],
        path: &str,
    ) -> Result<SparseHeader, UnpackError> {
        let shown = records
            .iter()
            .find(|(k, _)| k == "GNU.sparse.name")
            .map_or_else(|| path.to_owned(), |(_, v)| lossy(v));
        if kind != Kind::File || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(UnpackError::Unsupported {
                path: shown,
                what: format!(
                    "GNU sparse records on a {:?} entry (type {:?})",
                    kind,
                    char::from(entry.header().entry_type().as_byte())
                ),
            });
        }
        let sp = sparse::from_pax(records).map_err(|e| UnpackError::Sparse {
            path: shown.clone(),
            source: Box::new(e),
        })?;
        if let Some(name) = &sp.name {
            if name.len() > self.limits.max_path_len {
                return Err(limit(
                    &shown,
                    format!(
                        "GNU.sparse.name is {} bytes, over {}",
                        name.len(),
                        self.limits.max_path_len
                    ),
                ));
            }
        }
        Ok(sp)
    }

    /// Reads (and discards) the rest of an entry's data, so the tar crate never
    /// has to skip it under the header budget; short data is an error.
    fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
    ) -> Result<(), UnpackError> {
        let expected = entry.size();
        let got = io::copy(entry, &mut io::sink()).map_err(|e| read_err(path, e))?;
        self.count(path, expected, got)
    }

    fn count(&mut self, path: &str, expected: u64, got: u64) -> Result<(), UnpackError> {
        self.stats.bytes += got;
        if got != expected {
            return Err(UnpackError::Truncated {
                path: path.into(),
                expected,
                got,
            });
        }
        Ok(())
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        path: &str,
    ) -> Result<Vec<u8>, UnpackError> {
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        if target.len() > self.limits.max_path_len {
            return Err(limit(
                path,
                format!(
                    "link target is {} bytes, over {}",
                    target.len(),
                    self.limits.max_path_len
                ),
            ));
        }
        if target.is_empty() {
            return Err(invalid_path(path, "empty link target"));
        }
        if target.contains(&0) {
            return Err(invalid_path(path, "NUL byte in link target"));
        }
        Ok(target)
    }

    // ---- path resolution -------------------------------------------------

    /// Opens directory `comps` (clamped to the root, symlinks followed inside it).
    fn open_dir(&self, comps: &[Vec<u8>], nofollow: bool) -> nix::Result<OwnedFd> {
        self.open_dir_path(&join(comps), nofollow)
    }

    /// [`Self::open_dir`] for an already joined relative path.
    fn open_dir_path(&self, rel: &[u8], nofollow: bool) -> nix::Result<OwnedFd> {
        let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        if nofollow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        openat2(&self.root, OsStr::from_bytes(rel), how)
    }

    /// Opens directory `comps`, creating missing components 0755.
    fn ensure_dir(&self, comps: &[Vec<u8>], path: &str) -> Result<OwnedFd, UnpackError> {
        match self.open_dir(comps, false) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if !comps.is_empty() => {
                let (last, parent) = split_last(comps, path)?;
                let parent_fd = self.ensure_dir(parent, path)?;
                match mkdirat(
                    &parent_fd,
                    OsStr::from_bytes(last),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(path, "create parent directory", e)),
                }
                self.open_dir(comps, false).map_err(|e| match e {
                    Errno::ENOENT => invalid_path(
                        path,
                        format!("parent {:?} is a dangling symlink", lossy(&join(comps))),
                    ),
                    e => io_err(path, "open parent directory", e),
                })
            }
            Err(Errno::ENOTDIR) => Err(invalid_path(
                path,
                format!("parent {:?} is not a directory", lossy(&join(comps))),
            )),
            Err(e) => Err(io_err(path, "open parent directory", e)),
        }
    }

    /// Makes room for a new entry `name` in `dir`. Returns the existing
    /// directory's stat if it is kept (new entry is a directory, merge), and
    /// whether what was removed was an overlay whiteout.
    fn clear(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        new_is_dir: bool,
        path: &str,
    ) -> Result<Cleared, UnpackError> {
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Cleared::Empty),
            Err(e) => return Err(io_err(path, "stat existing entry", e)),
        };
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFDIR {
            if new_is_dir {
                return Ok(Cleared::KeptDir);
            }
            remove_tree(dir, name).map_err(|e| io_err(path, "remove existing directory", e))?;
            return Ok(Cleared::Removed { whiteout: false });
        }
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| io_err(path, "remove existing entry", e))?;
        Ok(Cleared::Removed {
            whiteout: is_whiteout(&st),
        })
    }

    // ---- entry kinds -----------------------------------------------------

    /// Creates the (new, empty, 0600) regular file `comps`, replacing what is there.
    fn create_file(&self, comps: &[Vec<u8>], path: &str) -> Result<File, UnpackError> {
        let (parent, name) = self.parent_of(comps, path)?;
        self.clear(&parent, name, false, path)?;
        let fd = openat(
            &parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(path, "create file", e))?;
        Ok(File::from(fd))
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let mut file = self.create_file(comps, path)?;
        let expected = entry.size();
        // Large writes (io::copy's 8 KiB buffer means many small syscalls);
        // a small file is written with one. Reader-side and writer-side errors
        // look alike here; both fail the layer.
        let got = if entry.header().entry_type() == tar::EntryType::GNUSparse {
            // Old-GNU sparse: the tar crate expands holes to zeros; skip them.
            let mut w = HoleWriter {
                file: &file,
                pos: 0,
            };
            let got = copy_large(&mut entry.take(expected), &mut w, expected)
                .map_err(|e| io_err_io(path, "write file data", e))?;
            file.set_len(got)
                .map_err(|e| io_err_io(path, "set sparse file size", e))?;
            got
        } else {
            copy_large(&mut entry.take(expected), &mut file, expected)
                .map_err(|e| io_err_io(path, "write file data", e))?
        };
        self.count(path, expected, got)?;
        apply_fd_meta(&file, meta, path)?;
        futimens(&file, &meta.mtime, &meta.mtime).map_err(|e| io_err(path, "set mtime", e))
    }

    /// A PAX-encoded GNU sparse file: (1.0: reads the map from the data,)
    /// validates the map, writes each segment at its offset and extends the
    /// file to its real size; nothing is created before the map is accepted.
    fn pax_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
        meta: &Meta,
        sp: &SparseHeader,
    ) -> Result<(), UnpackError> {
        let stored = entry.size();
        let bad = |e: SparseError| UnpackError::Sparse {
            path: path.into(),
            source: Box::new(e),
        };
        let mut read = 0u64;
        let v1_map;
        let map = if sp.format == Format::V1_0 {
            let mut parser = MapParser::default();
            let mut block = [0u8; MAP_BLOCK];
            v1_map = loop {
                if parser.fed() + MAP_BLOCK as u64 > stored {
                    return Err(bad(SparseError::MapPastData { stored }));
                }
                let n = read_full(entry, &mut block).map_err(|e| read_err(path, e))?;
                read += n as u64;
                if n < MAP_BLOCK {
                    return self.count(path, stored, read);
                }
                if let Some(map) = parser.feed(&block).map_err(bad)? {
                    break map;
                }
            };
            if let Some(declared) = sp.count.filter(|c| *c != v1_map.len() as u64) {
                return Err(bad(SparseError::CountMismatch {
                    declared,
                    found: v1_map.len() as u64,
                }));
            }
            &v1_map
        } else {
            &sp.map
        };
        sparse::validate(map, sp.real_size, stored - read).map_err(bad)?;
        let mut file = self.create_file(comps, path)?;
        for seg in map {
            file.seek(SeekFrom::Start(seg.offset))
                .map_err(|e| io_err_io(path, "seek to sparse segment", e))?;
            let got = copy_large(&mut (&mut *entry).take(seg.len), &mut file, seg.len)
                .map_err(|e| io_err_io(path, "write file data", e))?;
            read += got;
            if got != seg.len {
                return self.count(path, stored, read);
            }
        }
        file.set_len(sp.real_size)
            .map_err(|e| io_err_io(path, "set sparse file size", e))?;
        self.count(path, stored, read)?;
        apply_fd_meta(&file, meta, path)?;
        futimens(&file, &meta.mtime, &meta.mtime).map_err(|e| io_err(path, "set mtime", e))
    }

    fn directory(&mut self, comps: &[Vec<u8>], path: &str, meta: &Meta) -> Result<(), UnpackError> {
        let (fd, opaque) = if comps.is_empty() {
            let fd = self
                .root
                .try_clone()
                .map_err(|e| io_err_io(path, "dup root", e))?;
            (fd, false)
        } else {
            let (parent, name) = self.parent_of(comps, path)?;
            let cleared = self.clear(&parent, name, true, path)?;
            if cleared != Cleared::KeptDir {
                mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err(path, "create directory", e))?;
            }
            let fd = openat(
                &parent,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(path, "open directory", e))?;
            (fd, cleared == Cleared::Removed { whiteout: true })
        };
        let dir = File::from(fd);
        apply_fd_meta(&dir, meta, path)?;
        if opaque {
            set_opaque(&dir, path)?;
        }
        let key = join(comps);
        let len = key.len();
        if self.dir_times.insert(key, meta.mtime).is_none() {
            self.dir_time_bytes += len;
            if self.dir_time_bytes > MAX_DIR_TIME_BYTES {
                return Err(limit(
                    path,
                    format!("directory paths exceed {MAX_DIR_TIME_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        comps: &[Vec<u8>],
        path: &str,
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent_of(comps, path)?;
        self.clear(&parent, name, false, path)?;
        symlinkat(OsStr::from_bytes(target), &parent, name)
            .map_err(|e| io_err(path, "create symlink", e))?;
        fchownat(
            &parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, "lchown symlink", e))?;
        drop_xattrs(meta, path, "symlink");
        utimensat(
            &parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(path, "set symlink mtime", e))
    }

    fn hardlink(
        &mut self,
        comps: &[Vec<u8>],
        path: &str,
        target_raw: &[u8],
    ) -> Result<(), UnpackError> {
        let target = lossy(target_raw);
        let bad = |reason: String| UnpackError::BadHardLink {
            path: path.into(),
            target: target.clone(),
            reason,
        };
        let tcomps = normalize(target_raw).map_err(|r| bad(r.into()))?;
        if tcomps.is_empty() {
            return Err(bad("target is the layer root".into()));
        }
        if comps.is_empty() {
            return Err(invalid_path(
                path,
                "a hard link cannot replace the layer root",
            ));
        }
        let (tname, tparent_comps) = split_last(&tcomps, path)?;
        let tparent = self.open_dir(tparent_comps, false).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => {
                bad("target's directory does not exist in this layer".into())
            }
            e => io_err(path, "open hard link target directory", e),
        })?;
        let tname = OsStr::from_bytes(tname);
        let tst = match fstatat(&tparent, tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(bad("target does not exist in this layer".into())),
            Err(e) => return Err(io_err(path, "stat hard link target", e)),
        };
        if tst.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(bad("target is a directory".into()));
        }
        let (parent, name) = self.parent_of(comps, path)?;
        if let Ok(st) = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(()); // already that inode (e.g. a link to itself)
            }
        }
        self.clear(&parent, name, false, path)?;
        // flags = 0: a symlink target is linked itself, never dereferenced.
        linkat(&tparent, tname, &parent, name, AtFlags::empty())
            .map_err(|e| io_err(path, "create hard link", e))
    }

    fn node(
        &mut self,
        comps: &[Vec<u8>],
        path: &str,
        kind: Kind,
        dev: libc::dev_t,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent_of(comps, path)?;
        self.clear(&parent, name, false, path)?;
        let sflag = match kind {
            Kind::Char => SFlag::S_IFCHR,
            Kind::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        mknodat(&parent, name, sflag, Mode::from_bits_truncate(0o600), dev)
            .map_err(|e| io_err(path, "mknod", e))?;
        fchownat(
            &parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, "chown node", e))?;
        // fchmodat cannot refuse symlinks portably; the node was just created
        // by us, so check it is still not a symlink before following the name.
        let st = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, "stat node", e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(invalid_path(path, "node was replaced by a symlink"));
        }
        fchmodat(
            &parent,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io_err(path, "chmod node", e))?;
        drop_xattrs(meta, path, "device/fifo");
        utimensat(
            &parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(path, "set node mtime", e))
    }

    fn whiteout(&mut self, comps: &[Vec<u8>], path: &str) -> Result<(), UnpackError> {
        let (last, parent_comps) = split_last(comps, path)?;
        if last == WHITEOUT_OPAQUE {
            let dir = File::from(self.ensure_dir(parent_comps, path)?);
            return set_opaque(&dir, path);
        }
        if last.starts_with(WHITEOUT_META_PREFIX) {
            tracing::warn!(entry = %path, "skipping unknown whiteout metadata entry");
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(invalid_path(path, "invalid whiteout name"));
        }
        let parent = self.ensure_dir(parent_comps, path)?;
        let name = OsStr::from_bytes(hidden);
        match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // Created by this same layer: a whiteout only hides lower layers.
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(io_err(path, "stat whiteout target", e)),
        }
        mknodat(&parent, name, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| io_err(path, "create whiteout device", e))
    }

    /// Resolves (creating if needed) the parent of `comps`; returns it with the
    /// last component. `comps` must not be empty (only directories may name the root).
    fn parent_of<'c>(
        &self,
        comps: &'c [Vec<u8>],
        path: &str,
    ) -> Result<(OwnedFd, &'c OsStr), UnpackError> {
        if comps.is_empty() {
            return Err(invalid_path(
                path,
                "only a directory may name the layer root",
            ));
        }
        let (last, parent) = split_last(comps, path)?;
        Ok((self.ensure_dir(parent, path)?, OsStr::from_bytes(last)))
    }

    fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let path = lossy(&rel);
            let fd = match self.open_dir_path(&rel, true) {
                Ok(fd) => fd,
                // Replaced by a later entry: its times are not ours to set.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(io_err(&path, "open directory for mtime", e)),
            };
            futimens(&fd, &mtime, &mtime).map_err(|e| io_err(&path, "set directory mtime", e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleared {
    Empty,
    KeptDir,
    Removed { whiteout: bool },
}

fn entry_kind<R: Read>(
    entry: &tar::Entry<'_, R>,
    raw: &[u8],
    path: &str,
) -> Result<Kind, UnpackError> {
    let t = entry.header().entry_type();
    Ok(match t {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            // Pre-POSIX tar marks directories with a trailing slash on a '\0'
            // entry (the tar crate reports '\0' as '0', so read the raw flag).
            if entry.header().as_old().linkflag[0] == b'\0' && raw.ends_with(b"/") {
                Kind::Dir
            } else {
                Kind::File
            }
        }
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::HardLink,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        tar::EntryType::Fifo => Kind::Fifo,
        tar::EntryType::XGlobalHeader => Kind::GlobalHeader,
        other => {
            return Err(UnpackError::Unsupported {
                path: path.into(),
                what: format!("entry type {:?} ({:?})", other, char::from(other.as_byte())),
            })
        }
    })
}

/// The entry's ownership, mode, mtime and xattrs, and its `GNU.sparse.*`
/// PAX records in archive order (empty for a non-sparse entry).
fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &str,
) -> Result<(Meta, PaxRecords), UnpackError> {
    let hdr = entry.header();
    let bad = |what: String| UnpackError::InvalidHeader {
        path: path.into(),
        what,
    };
    let uid = hdr.uid().map_err(|e| bad(format!("uid: {e}")))?;
    let gid = hdr.gid().map_err(|e| bad(format!("gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} over 32 bits")))?;
    let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} over 32 bits")))?;
    let mode = hdr.mode().map_err(|e| bad(format!("mode: {e}")))? & 0o7777;
    let secs = hdr.mtime().map_err(|e| bad(format!("mtime: {e}")))?;
    let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    let mut sparse = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| read_err(path, e))? {
        for ext in exts {
            let ext = ext.map_err(|e| bad(format!("PAX record: {e}")))?;
            let Ok(key) = ext.key() else {
                return Err(bad("PAX key is not UTF-8".into()));
            };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                let v = ext
                    .value()
                    .map_err(|_| bad("PAX mtime is not UTF-8".into()))?;
                mtime = parse_pax_time(v).ok_or_else(|| bad(format!("PAX mtime {v:?}")))?;
            } else if key.starts_with("GNU.sparse.") {
                sparse.push((key.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    let meta = Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    };
    Ok((meta, sparse))
}

/// `secs[.frac]`, possibly negative, as in PAX `mtime` records.
fn parse_pax_time(v: &str) -> Option<TimeSpec> {
    let (neg, body) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if !neg {
        TimeSpec::new(secs, nanos)
    } else if nanos == 0 {
        TimeSpec::new(-secs, 0)
    } else {
        TimeSpec::new(-secs - 1, 1_000_000_000 - nanos)
    })
}

fn device_number<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: Kind,
    path: &str,
) -> Result<libc::dev_t, UnpackError> {
    if kind == Kind::Fifo {
        return Ok(0);
    }
    let bad = |what: String| UnpackError::InvalidHeader {
        path: path.into(),
        what,
    };
    let hdr = entry.header();
    let major = hdr
        .device_major()
        .map_err(|e| bad(format!("device major: {e}")))?
        .unwrap_or(0);
    let minor = hdr
        .device_minor()
        .map_err(|e| bad(format!("device minor: {e}")))?
        .unwrap_or(0);
    Ok(makedev(u64::from(major), u64::from(minor)))
}

/// Lexical normalization: drops empty and `.` components and leading `/`,
/// folds `..`, refuses a `..` that would leave the root and NUL bytes.
fn normalize(raw: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if raw.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("`..` climbs above the layer root");
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b".".to_vec();
    }
    comps.join(&b'/')
}

/// Splits off the last component; callers only pass non-empty paths, but an
/// empty one is reported rather than trusted.
fn split_last<'c>(
    comps: &'c [Vec<u8>],
    path: &str,
) -> Result<(&'c [u8], &'c [Vec<u8>]), UnpackError> {
    match comps.split_last() {
        Some((last, parent)) => Ok((last.as_slice(), parent)),
        None => Err(invalid_path(path, "empty name")),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_whiteout(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// chown, then chmod (chown clears setuid/setgid), then xattrs (chown clears
/// `security.capability`).
fn apply_fd_meta(file: &File, meta: &Meta, path: &str) -> Result<(), UnpackError> {
    fchown(
        file,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| io_err(path, "chown", e))?;
    fchmod(file, Mode::from_bits_truncate(meta.mode)).map_err(|e| io_err(path, "chmod", e))?;
    for (name, value) in &meta.xattrs {
        let allowed = name.starts_with("user.")
            || name == "security.capability"
            || name == "system.posix_acl_access"
            || name == "system.posix_acl_default";
        if !allowed {
            tracing::warn!(entry = %path, xattr = %name, "dropping xattr not allowed by policy");
            continue;
        }
        match xattr::FileExt::set_xattr(file, name, value) {
            Ok(()) => {}
            Err(e) if name.starts_with("user.") && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(entry = %path, xattr = %name, "filesystem has no user xattrs; dropped");
            }
            Err(e) => return Err(io_err_io(path, "set xattr", e)),
        }
    }
    Ok(())
}

fn drop_xattrs(meta: &Meta, path: &str, what: &str) {
    for (name, _) in &meta.xattrs {
        tracing::warn!(entry = %path, xattr = %name, "dropping xattr on {what} (not supported)");
    }
}

fn set_opaque(dir: &File, path: &str) -> Result<(), UnpackError> {
    xattr::FileExt::set_xattr(dir, OVERLAY_OPAQUE_XATTR, b"y")
        .map_err(|e| io_err_io(path, "set overlay opaque xattr", e))
}

/// Removes `name` in `dir` recursively without following symlinks.
fn remove_tree(dir: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    {
        let mut listing = nix::dir::Dir::from_fd(fd.try_clone().map_err(|_| Errno::EMFILE)?)?;
        for ent in listing.iter() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                children.push(n.to_vec());
            }
        }
    }
    for child in children {
        let child = OsStr::from_bytes(&child);
        let st = fstatat(&fd, child, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            remove_tree(&fd, child)?;
        } else {
            unlinkat(&fd, child, UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

fn limit(path: &str, what: String) -> UnpackError {
    UnpackError::Limit {
        path: path.into(),
        what,
    }
}

fn invalid_path(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::InvalidPath {
        path: path.into(),
        reason: reason.into(),
    }
}

fn read_err(path: &str, e: io::Error) -> UnpackError {
    UnpackError::Read {
        after: path.into(),
        source: e,
    }
}

fn io_err(path: &str, op: &'static str, e: Errno) -> UnpackError {
    io_err_io(path, op, io::Error::from(e))
}

fn io_err_io(path: &str, op: &'static str, e: io::Error) -> UnpackError {
    UnpackError::Io {
        path: path.into(),
        op,
        source: e,
    }
}

#[cfg(test)]
mod tests;
