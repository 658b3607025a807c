//! `openat2(2)` with the retry its man page asks for: with `RESOLVE_IN_ROOT` or
//! `RESOLVE_BENEATH`, the kernel returns `EAGAIN` when a rename or mount
//! anywhere on the host raced a `..` step, so it could not prove the walk
//! stayed inside. Every confined open in the crate goes through [`openat2`].

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OpenHow;
use nix::NixPath;

/// How many times an `EAGAIN` is retried before it is returned (the race is
/// with other hosts' renames and mounts, which a busy CI host makes common).
pub const EAGAIN_RETRIES: usize = 64;

/// `openat2(dirfd, path, how)`, retried on `EAGAIN` up to [`EAGAIN_RETRIES`]
/// times. Errors: the last errno, as `nix::fcntl::openat2` returns it.
pub fn openat2<Fd: AsFd, P: ?Sized + NixPath>(
    dirfd: Fd,
    path: &P,
    how: OpenHow,
) -> nix::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dirfd.as_fd(), path, how) {
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => {
                tries += 1;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nix::fcntl::{OFlag, ResolveFlag};
    use nix::mount::{mount, umount, MsFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// An image symlink of `..` steps, resolved in-root while another thread
    /// mounts and unmounts: the kernel's EAGAIN is retried, never returned.
    #[test]
    fn in_root_walks_through_dot_dot_survive_concurrent_mounts() {
        crate::require_root!();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("scratch")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.path().join("up")).unwrap();
        let churn = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mounter = {
            let (stop, dir) = (stop.clone(), churn.path().to_path_buf());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::empty(),
                        None::<&str>,
                    )
                    .unwrap();
                    umount(&dir).unwrap();
                }
            })
        };
        let dir = std::fs::File::open(root.path()).unwrap();
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let mut raw_eagain = 0;
        let mut failures = Vec::new();
        for _ in 0..20_000 {
            if let Err(Errno::EAGAIN) = nix::fcntl::openat2(&dir, "up/up/scratch", how) {
                raw_eagain += 1;
            }
            if let Err(e) = openat2(&dir, "up/up/scratch", how) {
                failures.push(e);
            }
        }
        stop.store(true, Ordering::Relaxed);
        mounter.join().unwrap();
        assert!(
            failures.is_empty(),
            "{failures:?} ({raw_eagain} raw EAGAINs)"
        );
        eprintln!("raw openat2 returned EAGAIN {raw_eagain} times of 20000");
    }
}
