//! The syscall seam of rootfs setup: the [`Sys`] trait (mount, recursive mount
//! flags, umount, pivot_root, chdir, safe in-root resolution, symlink), [`RealSys`] that performs them, and
//! [`RecordingSys`] that only records them so the exact mount sequence can be
//! unit-tested without privileges. Resolution is real in both: it is the
//! `openat2(RESOLVE_IN_ROOT)` walk that keeps mount targets inside the rootfs.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// What [`Sys::resolve`] should create when the path does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing path is `ENOENT`.
    No,
    /// Directories (like `mkdir -p`).
    Dir,
    /// Parent directories and an empty regular file.
    File,
}

/// A path resolved inside a root: an `O_PATH` fd whose `/proc/self/fd/N` is
/// what mounts use as target, so no later path walk can be redirected.
#[derive(Debug)]
pub struct Resolved {
    fd: OwnedFd,
    /// Where the fd points on the host (for diagnostics and the recording fake).
    pub real: PathBuf,
    pub is_dir: bool,
}

impl Resolved {
    /// `/proc/self/fd/N` of the resolved fd.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
    /// The underlying `O_PATH` fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// The privileged operations rootfs setup performs, in order.
pub trait Sys {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Sets `flags` (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`) on
    /// the mount at `target` and on every mount below it, and makes them all
    /// private (`mount_setattr` with `AT_RECURSIVE`). `ENOSYS` before Linux 5.12.
    fn mount_setattr(&mut self, target: &Resolved, flags: MsFlags) -> nix::Result<()>;
    /// The calling process's `/proc/self/mountinfo`.
    fn mountinfo(&mut self) -> nix::Result<String>;
    fn umount(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    /// Makes `new_root` the root: `chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`.
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()>;
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    /// Resolves `path` inside `root` (see [`resolve_in_root`]).
    fn resolve(&mut self, root: &Path, path: &Path, create: Create) -> nix::Result<Resolved>;
    /// Creates symlink `name` -> `target` in the directory `dir`.
    fn symlink(&mut self, target: &str, dir: &Resolved, name: &str) -> nix::Result<()>;
}

/// Performs the calls for real.
#[derive(Debug, Default)]
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn mount_setattr(&mut self, target: &Resolved, flags: MsFlags) -> nix::Result<()> {
        crate::sys::mount::mount_setattr(
            target.fd.as_fd(),
            mount_attr_bits(flags),
            libc::MS_PRIVATE,
            true,
        )
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }
    fn mountinfo(&mut self) -> nix::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }
    fn umount(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        nix::unistd::chdir(new_root)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn resolve(&mut self, root: &Path, path: &Path, create: Create) -> nix::Result<Resolved> {
        resolve_in_root(root, path, create)
    }
    fn symlink(&mut self, target: &str, dir: &Resolved, name: &str) -> nix::Result<()> {
        match nix::unistd::symlinkat(target, dir.fd.as_fd(), name) {
            Err(Errno::EEXIST) => Ok(()),
            r => r,
        }
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    /// A recursive `mount_setattr` (flags set, propagation private).
    MountSetattr {
        target: PathBuf,
        flags: MsFlags,
    },
    Umount {
        target: PathBuf,
    },
    PivotRoot {
        new_root: PathBuf,
    },
    Chdir {
        path: PathBuf,
    },
    Symlink {
        target: String,
        link: PathBuf,
    },
}

/// Records every call instead of making it. Targets given as `/proc/self/fd/N`
/// are recorded as the real path the fd points to. Resolution (and creation of
/// missing targets) is performed for real on the directory tree given as root,
/// which in tests is an unprivileged temp dir.
#[derive(Debug, Default)]
pub struct RecordingSys {
    pub calls: Vec<Call>,
    /// Answer `mount_setattr` with `ENOSYS`, as a kernel before 5.12.
    pub no_mount_setattr: bool,
    /// What [`Sys::mountinfo`] returns.
    pub mountinfo: String,
}

fn real_target(p: &Path) -> PathBuf {
    if p.starts_with("/proc/self/fd") {
        std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
    } else {
        p.to_path_buf()
    }
}

impl Sys for RecordingSys {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.calls.push(Call::Mount {
            source: source.map(real_target),
            target: real_target(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        });
        Ok(())
    }
    fn mount_setattr(&mut self, target: &Resolved, flags: MsFlags) -> nix::Result<()> {
        if self.no_mount_setattr {
            return Err(Errno::ENOSYS);
        }
        self.calls.push(Call::MountSetattr {
            target: target.real.clone(),
            flags,
        });
        Ok(())
    }
    fn mountinfo(&mut self) -> nix::Result<String> {
        Ok(self.mountinfo.clone())
    }
    fn umount(&mut self, target: &Path, _flags: MntFlags) -> nix::Result<()> {
        self.calls.push(Call::Umount {
            target: real_target(target),
        });
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        self.calls.push(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
        });
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        self.calls.push(Call::Chdir {
            path: path.to_path_buf(),
        });
        Ok(())
    }
    fn resolve(&mut self, root: &Path, path: &Path, create: Create) -> nix::Result<Resolved> {
        resolve_in_root(root, path, create)
    }
    fn symlink(&mut self, target: &str, dir: &Resolved, name: &str) -> nix::Result<()> {
        self.calls.push(Call::Symlink {
            target: target.into(),
            link: dir.real.join(name),
        });
        Ok(())
    }
}

/// The `MOUNT_ATTR_*` bits of the per-mount flags in `flags`.
pub fn mount_attr_bits(flags: MsFlags) -> u64 {
    use crate::sys::mount::{ATTR_NODEV, ATTR_NOEXEC, ATTR_NOSUID, ATTR_RDONLY};
    [
        (MsFlags::MS_RDONLY, ATTR_RDONLY),
        (MsFlags::MS_NOSUID, ATTR_NOSUID),
        (MsFlags::MS_NODEV, ATTR_NODEV),
        (MsFlags::MS_NOEXEC, ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(f, _)| flags.contains(*f))
    .fold(0, |bits, (_, b)| bits | b)
}

fn how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Lexically normalizes a container path to components below the root
/// (`..` at the top stays at the top, as the kernel does for `/..`).
fn components_in_root(path: &Path) -> Vec<&std::ffi::OsStr> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn finish(fd: OwnedFd) -> nix::Result<Resolved> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
    let is_dir = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
    Ok(Resolved { fd, real, is_dir })
}

/// Resolves `path` as if `root` were `/`: every symlink (absolute or with `..`)
/// met on the way is interpreted inside `root` by the kernel
/// (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`), so an image symlink
/// like `/data -> /etc` or `../../..` cannot point a mount at the host. Missing
/// components are created per `create`, one `mkdirat` at a time relative to
/// an fd that was itself resolved in-root.
pub fn resolve_in_root(root: &Path, path: &Path, create: Create) -> nix::Result<Resolved> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let root_real = std::fs::read_link(format!("/proc/self/fd/{}", root_fd.as_raw_fd()))
        .map_err(|_| Errno::EIO)?;
    let mut path = path.to_path_buf();
    // Each dangling symlink met while creating restarts the walk at its target; bound like the kernel's ELOOP.
    for _ in 0..40 {
        match resolve_once(&root_fd, &root_real, &path, create)? {
            Step::Done(r) => return Ok(r),
            Step::Restart(p) => path = p,
        }
    }
    Err(Errno::ELOOP)
}

enum Step {
    Done(Resolved),
    Restart(PathBuf),
}

fn resolve_once(
    root_fd: &OwnedFd,
    root_real: &Path,
    path: &Path,
    create: Create,
) -> nix::Result<Step> {
    let comps = components_in_root(path);
    let rel: PathBuf = comps.iter().collect();
    let rel = if comps.is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    match crate::sys::openat2::openat2(root_fd.as_fd(), &rel, how()) {
        Ok(fd) => return finish(fd).map(Step::Done),
        Err(Errno::ENOENT) if create != Create::No => {}
        Err(e) => return Err(e),
    }
    // Walk and create what is missing.
    let mut cur = crate::sys::openat2::openat2(root_fd.as_fd(), ".", how())?;
    let mut prefix = PathBuf::new();
    for (i, comp) in comps.iter().enumerate() {
        prefix.push(comp);
        let last = i + 1 == comps.len();
        match crate::sys::openat2::openat2(root_fd.as_fd(), &prefix, how()) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // A dangling symlink (e.g. `/data -> /etc/host-thing` with no such dir in
        // the image): continue at its target, interpreted inside the root.
        if let Ok(target) = nix::fcntl::readlinkat(cur.as_fd(), *comp) {
            let target = PathBuf::from(target);
            let parent = std::fs::read_link(format!("/proc/self/fd/{}", cur.as_raw_fd()))
                .map_err(|_| Errno::EIO)?;
            let parent =
                Path::new("/").join(parent.strip_prefix(root_real).map_err(|_| Errno::EXDEV)?);
            let mut next = if target.is_absolute() {
                target
            } else {
                parent.join(target)
            };
            next.extend(&comps[i + 1..]);
            return Ok(Step::Restart(next));
        }
        if last && create == Create::File {
            // cur is an O_PATH fd of a directory resolved in-root; O_NOFOLLOW|O_EXCL
            // refuse to follow a symlink planted at the final component.
            let r = nix::fcntl::openat(
                cur.as_fd(),
                *comp,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            );
            match r {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        } else {
            match nix::sys::stat::mkdirat(cur.as_fd(), *comp, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        cur = crate::sys::openat2::openat2(root_fd.as_fd(), &prefix, how())?;
    }
    finish(cur).map(Step::Done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // Image symlinks that would point at the host if followed naively.
        std::os::unix::fs::symlink("/etc/host-thing", root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::fs::create_dir(host.path().join("outside")).unwrap();

        let r = resolve_in_root(&root, Path::new("/data"), Create::Dir).unwrap();
        assert_eq!(r.real, root.join("etc/host-thing"));
        assert!(r.is_dir);
        assert!(!Path::new("/etc/host-thing").exists());

        let r = resolve_in_root(&root, Path::new("/up/outside"), Create::Dir).unwrap();
        assert_eq!(r.real, root.join("outside"));
        let r = resolve_in_root(&root, Path::new("/../../outside/f"), Create::File).unwrap();
        assert_eq!(r.real, root.join("outside/f"));
        assert!(!r.is_dir);
        let r = resolve_in_root(&root, Path::new("/abs/up/etc"), Create::No).unwrap();
        assert_eq!(r.real, root.join("etc"));
        assert!(!host.path().join("outside/f").exists());
        assert_eq!(
            resolve_in_root(&root, Path::new("/missing"), Create::No).unwrap_err(),
            Errno::ENOENT
        );
    }
}
