//! Seeding a new named volume from the image, as Docker does: the content the
//! container would see at the volume's target — the image's layer snapshots
//! merged top-most first with overlayfs rules (whiteouts, opaque directories,
//! a non-directory hiding what lies below) — is copied into the volume with
//! owners, modes, xattrs, times, hard links and symlinks (never followed).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys::openat2::openat2;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat,
    Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

/// Symlinks followed while resolving the target (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;
/// Directory levels copied below the target (each open resolves the whole
/// path again, so a deep tree costs depth² lookups).
const MAX_DEPTH: usize = 512;
/// overlayfs' own xattrs are never copied into a volume.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a volume could not be seeded. `path` is relative to the image root.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("seeding from image path /{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("seeding from image path {path}: more than {MAX_SYMLINKS} symlinks")]
    TooManySymlinks { path: String },
    #[error("seeding from image path /{path}: deeper than {max} directories")]
    TooDeep { path: String, max: usize },
}

/// What seeding found at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    /// The image has a directory there; its content was copied.
    Copied { entries: u64, bytes: u64 },
    /// The image has nothing there: the volume stays empty, 0755 root:root.
    NoSuchPath,
    /// The image has a non-directory there: nothing is copied.
    NotADirectory,
}

/// Copies the image's content at `target` (absolute, as the manifest writes
/// it) into `dest`, an existing empty directory that takes the image
/// directory's owner, mode, xattrs and times. `layers` are the image's layer
/// snapshots, top-most first. Symlinks on the way to the target are resolved
/// in the image's merged view and clamped to its root (as the runtime mounts
/// the volume); below it nothing is ever followed. On error `dest` is left
/// partly filled: the caller discards it.
pub fn seed_from_layers(
    layers: &[PathBuf],
    target: &str,
    dest: &Path,
) -> Result<Seeded, SeedError> {
    seed_with_limit(layers, target, dest, MAX_DEPTH)
}

/// [`seed_from_layers`] with `max_depth` directory levels.
fn seed_with_limit(
    layers: &[PathBuf],
    target: &str,
    dest: &Path,
    max_depth: usize,
) -> Result<Seeded, SeedError> {
    let mut roots = Vec::with_capacity(layers.len());
    for l in layers {
        let fd = nix::fcntl::open(
            l.as_path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&l.display().to_string(), "open layer snapshot", e))?;
        roots.push(fd);
    }
    let view = MergedView { roots };
    let (rel, layers) = match view.resolve(target)? {
        Resolved::Dir { rel, layers } => (rel, layers),
        Resolved::Missing => return Ok(Seeded::NoSuchPath),
        Resolved::NotDir => return Ok(Seeded::NotADirectory),
    };
    let dest_fd = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&dest.display().to_string(), "open volume directory", e))?;
    let mut copier = Copier {
        view: &view,
        dest_root: dest_fd.try_clone().map_err(|e| io_io("", "dup", e))?,
        links: HashMap::new(),
        entries: 0,
        bytes: 0,
        max_depth,
    };
    copier.copy_tree(&rel, &layers)?;
    // The volume root takes the image directory's metadata (after its
    // children, which changed its mtime).
    let top = view.open_dir(layers[0], &rel)?;
    let st = nix::sys::stat::fstat(&top).map_err(|e| io_err(&join(&rel), "stat", e))?;
    let src = File::from(top);
    let dst = File::from(dest_fd);
    apply_meta(&src, &dst, &st, &join(&rel))?;
    Ok(Seeded::Copied {
        entries: copier.entries,
        bytes: copier.bytes,
    })
}

/// The image's layers as overlayfs merges them, read with fd-relative calls
/// that never follow a symlink inside a layer.
struct MergedView {
    /// Layer roots, top-most first.
    roots: Vec<OwnedFd>,
}

enum Resolved {
    /// A directory: its path and the layers that contribute to it, top-most first.
    Dir {
        rel: Vec<OsString>,
        layers: Vec<usize>,
    },
    Missing,
    NotDir,
}

/// The top-most entry of a name in a merged directory.
enum Node {
    Dir { layers: Vec<usize> },
    Other { layer: usize, st: FileStat },
    Hidden,
}

impl MergedView {
    /// Opens directory `rel` of layer `layer`, refusing any symlink.
    fn open_dir(&self, layer: usize, rel: &[OsString]) -> Result<OwnedFd, SeedError> {
        self.open_at(layer, rel, OFlag::O_DIRECTORY)
            .map_err(|e| io_err(&join(rel), "open directory", e))
    }

    fn open_at(&self, layer: usize, rel: &[OsString], extra: OFlag) -> nix::Result<OwnedFd> {
        let path = join_os(rel);
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let path: &OsStr = if path.is_empty() {
            OsStr::new(".")
        } else {
            &path
        };
        openat2(&self.roots[layer], path, how)
    }

    /// The layers contributing to the root directory.
    fn root_layers(&self) -> Result<Vec<usize>, SeedError> {
        let mut out = Vec::new();
        for i in 0..self.roots.len() {
            out.push(i);
            let dir = File::from(self.open_dir(i, &[])?);
            if is_opaque(&dir) {
                break;
            }
        }
        Ok(out)
    }

    /// Looks `name` up in merged directory `rel` (contributed to by `layers`).
    fn lookup(&self, rel: &[OsString], layers: &[usize], name: &OsStr) -> Result<Node, SeedError> {
        let mut child: Vec<OsString> = rel.to_vec();
        child.push(name.to_os_string());
        for (pos, &li) in layers.iter().enumerate() {
            let dir = self.open_dir(li, rel)?;
            let st = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io_err(&join(&child), "stat", e)),
            };
            if is_whiteout(&st) {
                return Ok(Node::Hidden);
            }
            if !is_dir(&st) {
                return Ok(Node::Other { layer: li, st });
            }
            let mut below = vec![li];
            if !self.dir_is_opaque(li, &child)? {
                for &lj in &layers[pos + 1..] {
                    let dir = self.open_dir(lj, rel)?;
                    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) if is_dir(&st) => {
                            below.push(lj);
                            if self.dir_is_opaque(lj, &child)? {
                                break;
                            }
                        }
                        // A whiteout or a non-directory ends the lower stack.
                        Ok(_) => break,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(io_err(&join(&child), "stat", e)),
                    }
                }
            }
            return Ok(Node::Dir { layers: below });
        }
        Ok(Node::Hidden)
    }

    fn dir_is_opaque(&self, layer: usize, rel: &[OsString]) -> Result<bool, SeedError> {
        Ok(is_opaque(&File::from(self.open_dir(layer, rel)?)))
    }

    /// Resolves `target` in the merged view as `RESOLVE_IN_ROOT` would:
    /// symlinks are followed, absolute ones from the image root, and `..`
    /// never climbs above it.
    fn resolve(&self, target: &str) -> Result<Resolved, SeedError> {
        let mut pending: std::collections::VecDeque<OsString> = components(target.as_bytes());
        // The resolved directories so far, each with its contributing layers.
        let root = self.root_layers()?;
        let mut rel: Vec<OsString> = Vec::new();
        let mut stack: Vec<Vec<usize>> = vec![root.clone()];
        let mut followed = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                if rel.pop().is_some() {
                    stack.pop();
                }
                continue;
            }
            let here = stack.last().cloned().unwrap_or_default();
            match self.lookup(&rel, &here, &c)? {
                Node::Hidden => return Ok(Resolved::Missing),
                Node::Dir { layers } => {
                    rel.push(c);
                    stack.push(layers);
                }
                Node::Other { layer, st } if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(SeedError::TooManySymlinks {
                            path: target.to_string(),
                        });
                    }
                    let dir = self.open_dir(layer, &rel)?;
                    let link = readlinkat(&dir, c.as_os_str())
                        .map_err(|e| io_err(&join(&rel), "read symlink", e))?;
                    let mut next = components(link.as_bytes());
                    next.extend(pending);
                    pending = next;
                    if link.as_bytes().starts_with(b"/") {
                        rel.clear();
                        stack = vec![root.clone()];
                    }
                }
                Node::Other { .. } => {
                    return Ok(if pending.iter().all(|p| p == ".") {
                        Resolved::NotDir
                    } else {
                        Resolved::Missing
                    });
                }
            }
        }
        let layers = stack.pop().unwrap_or_default();
        Ok(Resolved::Dir { rel, layers })
    }

    /// The merged listing of directory `rel`: name → top-most node.
    fn list(
        &self,
        rel: &[OsString],
        layers: &[usize],
    ) -> Result<BTreeMap<OsString, Node>, SeedError> {
        // Per name: the node, and (for directories) whether lower layers may
        // still contribute to it.
        let mut out: BTreeMap<OsString, (Node, bool)> = BTreeMap::new();
        for &li in layers {
            let fd = self.open_dir(li, rel)?;
            let probe = fd.try_clone().map_err(|e| io_io(&join(rel), "dup", e))?;
            let mut dir =
                nix::dir::Dir::from_fd(fd).map_err(|e| io_err(&join(rel), "read directory", e))?;
            for entry in dir.iter() {
                let entry = entry.map_err(|e| io_err(&join(rel), "read directory", e))?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                let mut child: Vec<OsString> = rel.to_vec();
                child.push(name.to_os_string());
                let st = fstatat(&probe, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(&join(&child), "stat", e))?;
                match out.get_mut(name) {
                    None => {
                        let node = if is_whiteout(&st) {
                            (Node::Hidden, false)
                        } else if is_dir(&st) {
                            let open = !self.dir_is_opaque(li, &child)?;
                            (Node::Dir { layers: vec![li] }, open)
                        } else {
                            (Node::Other { layer: li, st }, false)
                        };
                        out.insert(name.to_os_string(), node);
                    }
                    Some((Node::Dir { layers }, open)) if *open => {
                        if is_dir(&st) {
                            layers.push(li);
                            *open = !self.dir_is_opaque(li, &child)?;
                        } else {
                            *open = false;
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(out.into_iter().map(|(k, (n, _))| (k, n)).collect())
    }
}

struct Copier<'a> {
    view: &'a MergedView,
    dest_root: OwnedFd,
    /// (layer, dev, ino) of a multiply-linked source → its path in the volume.
    links: HashMap<(usize, u64, u64), PathBuf>,
    entries: u64,
    bytes: u64,
    max_depth: usize,
}

impl Copier<'_> {
    /// Opens directory `rel` of the new volume (ours alone: nothing else
    /// writes it yet, and still no symlink is followed).
    fn open_dest(&self, rel: &[OsString]) -> Result<OwnedFd, SeedError> {
        let path = join_os(rel);
        let path: &OsStr = if path.is_empty() {
            OsStr::new(".")
        } else {
            &path
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        openat2(&self.dest_root, path, how)
            .map_err(|e| io_err(&join(rel), "open volume directory", e))
    }

    /// Copies the children of merged directory `rel` into the volume's root,
    /// depth-first with an explicit stack (no recursion, and no descriptor
    /// held across levels). A directory's metadata is set after its
    /// children, which changed its mtime.
    fn copy_tree(&mut self, rel: &[OsString], layers: &[usize]) -> Result<(), SeedError> {
        enum Work {
            Dir {
                rel: Vec<OsString>,
                layers: Vec<usize>,
                dest_rel: Vec<OsString>,
                depth: usize,
            },
            Meta {
                rel: Vec<OsString>,
                layer: usize,
                dest_rel: Vec<OsString>,
            },
        }
        let mut stack = vec![Work::Dir {
            rel: rel.to_vec(),
            layers: layers.to_vec(),
            dest_rel: Vec::new(),
            depth: 0,
        }];
        while let Some(work) = stack.pop() {
            match work {
                Work::Dir {
                    rel,
                    layers,
                    dest_rel,
                    depth,
                } => {
                    if depth > self.max_depth {
                        return Err(SeedError::TooDeep {
                            path: join(&rel),
                            max: self.max_depth,
                        });
                    }
                    for (name, layers) in self.copy_entries(&rel, &layers, &dest_rel)? {
                        let mut child = rel.clone();
                        child.push(name.clone());
                        let mut child_dest = dest_rel.clone();
                        child_dest.push(name);
                        stack.push(Work::Meta {
                            rel: child.clone(),
                            layer: layers[0],
                            dest_rel: child_dest.clone(),
                        });
                        stack.push(Work::Dir {
                            rel: child,
                            layers,
                            dest_rel: child_dest,
                            depth: depth + 1,
                        });
                    }
                }
                Work::Meta {
                    rel,
                    layer,
                    dest_rel,
                } => {
                    let path = join(&rel);
                    let src = self.view.open_dir(layer, &rel)?;
                    let st = nix::sys::stat::fstat(&src).map_err(|e| io_err(&path, "stat", e))?;
                    let dst = self.open_dest(&dest_rel)?;
                    apply_meta(&File::from(src), &File::from(dst), &st, &path)?;
                }
            }
        }
        Ok(())
    }

    /// Copies the non-directory children of merged directory `rel` into the
    /// volume's directory `dest_rel` and creates its subdirectories (0700
    /// until their metadata is set); returns those with their layers.
    fn copy_entries(
        &mut self,
        rel: &[OsString],
        layers: &[usize],
        dest_rel: &[OsString],
    ) -> Result<Vec<(OsString, Vec<usize>)>, SeedError> {
        let mut subdirs = Vec::new();
        let dest = self.open_dest(dest_rel)?;
        for (name, node) in self.view.list(rel, layers)? {
            let mut child = rel.to_vec();
            child.push(name.clone());
            let path = join(&child);
            match node {
                Node::Hidden => continue,
                Node::Dir { layers } => {
                    mkdirat(&dest, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| io_err(&path, "create directory", e))?;
                    subdirs.push((name, layers));
                }
                Node::Other { layer, st } => {
                    self.entries += 1;
                    if st.st_nlink > 1 {
                        let key = (layer, st.st_dev, st.st_ino);
                        if let Some(first) = self.links.get(&key) {
                            // flags = 0: the first copy itself, never what it points at.
                            linkat(
                                &self.dest_root,
                                first.as_path(),
                                &dest,
                                name.as_os_str(),
                                AtFlags::empty(),
                            )
                            .map_err(|e| io_err(&path, "create hard link", e))?;
                            continue;
                        }
                        let mut child_dest = dest_rel.to_vec();
                        child_dest.push(name.clone());
                        self.links.insert(key, join_os(&child_dest).into());
                    }
                    self.copy_other(layer, &child, &st, &dest, &name, &path)?;
                }
            }
        }
        Ok(subdirs)
    }

    /// Copies one non-directory: a regular file, symlink, device or FIFO.
    fn copy_other(
        &mut self,
        layer: usize,
        rel: &[OsString],
        st: &FileStat,
        dest: &OwnedFd,
        name: &OsStr,
        path: &str,
    ) -> Result<(), SeedError> {
        let fmt = st.st_mode & libc::S_IFMT;
        let owner = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        match fmt {
            libc::S_IFREG => {
                let src = self
                    .view
                    .open_at(layer, rel, OFlag::empty())
                    .map_err(|e| io_err(path, "open file", e))?;
                let mut src = File::from(src);
                let now = src.metadata().map_err(|e| io_io(path, "stat", e))?;
                if !now.is_file() {
                    return Err(io_io(
                        path,
                        "open file",
                        io::Error::other("not a regular file"),
                    ));
                }
                let fd = openat(
                    dest,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err(path, "create file", e))?;
                let mut dst = File::from(fd);
                // File to file: copy_file_range (reflinks or in-kernel copy).
                self.bytes +=
                    io::copy(&mut src, &mut dst).map_err(|e| io_io(path, "copy data", e))?;
                apply_meta(&src, &dst, st, path)?;
            }
            libc::S_IFLNK => {
                let dir = self.view.open_dir(layer, &rel[..rel.len() - 1])?;
                let target = readlinkat(&dir, name).map_err(|e| io_err(path, "read symlink", e))?;
                symlinkat(target.as_os_str(), dest, name)
                    .map_err(|e| io_err(path, "create symlink", e))?;
                fchownat(dest, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(path, "lchown symlink", e))?;
                utimensat(dest, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| io_err(path, "set symlink times", e))?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                let kind = match fmt {
                    libc::S_IFCHR => SFlag::S_IFCHR,
                    libc::S_IFBLK => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                mknodat(
                    dest,
                    name,
                    kind,
                    Mode::from_bits_truncate(0o600),
                    st.st_rdev,
                )
                .map_err(|e| io_err(path, "mknod", e))?;
                fchownat(dest, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(path, "chown node", e))?;
                // Just created by us in a directory nobody else writes: not a symlink.
                fchmodat(
                    dest,
                    name,
                    Mode::from_bits_truncate(st.st_mode & 0o7777),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| io_err(path, "chmod node", e))?;
                utimensat(dest, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| io_err(path, "set node times", e))?;
            }
            _ => {
                // Sockets cannot come from a layer tar; nothing else exists.
                tracing::debug!(path, "not copying a socket into a volume");
                self.entries -= 1;
            }
        }
        Ok(())
    }
}

/// Owner, then mode (chown clears setuid), then xattrs (chown clears
/// `security.capability`), then times, from `src` (stat `st`) onto `dst`.
fn apply_meta(src: &File, dst: &File, st: &FileStat, path: &str) -> Result<(), SeedError> {
    fchown(
        dst.as_fd(),
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .map_err(|e| io_err(path, "chown", e))?;
    fchmod(dst.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))
        .map_err(|e| io_err(path, "chmod", e))?;
    copy_xattrs(src, dst, path)?;
    futimens(
        dst.as_fd(),
        &TimeSpec::new(st.st_atime, st.st_atime_nsec),
        &TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
    .map_err(|e| io_err(path, "set times", e))
}

/// Every xattr but overlayfs' own. `user.*` on a filesystem without them is
/// dropped with a warning (as the layer applier does); other failures fail.
fn copy_xattrs(src: &File, dst: &File, path: &str) -> Result<(), SeedError> {
    use xattr::FileExt;
    let names = match src.list_xattr() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(io_io(path, "list xattrs", e)),
    };
    for name in names {
        if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let Some(value) = src
            .get_xattr(&name)
            .map_err(|e| io_io(path, "read xattr", e))?
        else {
            continue;
        };
        match dst.set_xattr(&name, &value) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTSUP)
                    && name.as_bytes().starts_with(b"user.") =>
            {
                tracing::warn!(path, xattr = ?name, "volume filesystem has no user xattrs; dropped");
            }
            Err(e) => return Err(io_io(path, "set xattr", e)),
        }
    }
    Ok(())
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// overlayfs' whiteout: a 0:0 character device.
fn is_whiteout(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

fn is_opaque(dir: &File) -> bool {
    use xattr::FileExt;
    matches!(dir.get_xattr(OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Path components, empty ones and `.` dropped (`..` kept: it is resolved).
fn components(path: &[u8]) -> std::collections::VecDeque<OsString> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

fn join_os(rel: &[OsString]) -> OsString {
    let mut out = OsString::new();
    for (i, c) in rel.iter().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(c);
    }
    out
}

fn join(rel: &[OsString]) -> String {
    join_os(rel).to_string_lossy().into_owned()
}

fn io_err(path: &str, op: &'static str, e: Errno) -> SeedError {
    io_io(path, op, io::Error::from(e))
}

fn io_io(path: &str, op: &'static str, source: io::Error) -> SeedError {
    SeedError::Io {
        path: path.to_string(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests;
