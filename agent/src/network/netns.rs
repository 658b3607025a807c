//! Network namespaces pinned by bind mounts, as `ip netns` does: a dedicated
//! thread unshares `CLONE_NEWNET`, opens a netlink socket and an fd in the new
//! namespace and bind-mounts `/proc/thread-self/ns/net` onto `<dir>/<id>`. The
//! directory is a shared mount point so the pins' unmounts reach copies of it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::sys::netlink::Netlink;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A namespace just created: an fd on it and a netlink socket inside it.
#[derive(Debug)]
pub struct NewNs {
    pub fd: OwnedFd,
    pub netlink: Netlink,
}

/// Makes `dir` (created if needed) a shared mount point, binding it onto itself if needed.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if is_mount_point(dir)? {
        return shared().map_err(errno);
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno)?;
    shared().map_err(errno)
}

/// Unmounts the bind mount `prepare_dir` made (if any) and removes `dir` when empty.
pub fn release_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() && is_mount_point(dir)? {
        umount2(dir, MntFlags::MNT_DETACH).map_err(errno)?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is the root of a mount (its device differs from its parent's,
/// or it is listed in mountinfo, which covers a directory bound onto itself).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let me = std::fs::metadata(path)?;
    if let Some(parent) = path.parent() {
        if std::fs::metadata(parent)?.dev() != me.dev() {
            return Ok(true);
        }
    }
    let canonical = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape(m) == canonical.to_string_lossy())
    }))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `path` currently pins a namespace (an nsfs bind mount is on it).
pub fn is_pinned(path: &Path) -> bool {
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(me), Some(Ok(parent))) => me.dev() != parent.dev(),
        _ => false,
    }
}

/// Creates a network namespace with `lo` up and IPv6 disabled for new
/// interfaces, pinned at `path` (which must not exist).
pub fn create(path: &Path) -> io::Result<NewNs> {
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<NewNs> {
            // Only this short-lived thread changes its namespace.
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
            if Path::new("/proc/sys/net/ipv6").exists() {
                for which in ["default", "all"] {
                    let p = format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6");
                    let _ = std::fs::write(p, "1");
                }
            }
            let mut netlink = Netlink::open()?;
            netlink.set_up(1)?; // lo is always ifindex 1 in a new namespace
            let fd: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            if let Err(e) = mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ) {
                let _ = std::fs::remove_file(path);
                return Err(errno(e));
            }
            Ok(NewNs { fd, netlink })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// Unpins the namespace at `path` and removes the file. `Ok(false)` when there was none.
pub fn remove(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(errno(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace pinned at
/// `path`. Sockets `f` creates stay in that namespace and may be used anywhere.
pub fn run_in<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<R> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(errno)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
