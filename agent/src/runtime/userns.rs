//! User namespaces: a container with `userns` runs in its own user namespace
//! whose uid/gid map sends container ids `0..len` to host ids
//! `base..base+len` (an unprivileged range the agent allocates per service).
//! The init makes the namespace (a helper child unshares it, the init writes
//! its maps), gives the image layers and the volume binds id-mapped mounts
//! (`MOUNT_ATTR_IDMAP`, so shared layers stay shared and volume ownership on
//! disk stays as the container sees it), builds the rootfs as host root, and
//! joins the namespace last, right before it drops to the container's user.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{Mount, MountKind};
use crate::sys::process::{self as sysproc, Forked};

/// Ids per service: the 16-bit uid/gid space images are built for.
pub const RANGE_LEN: u32 = 65536;

/// Where the agent's pool of subordinate ids starts by default (as podman's
/// and systemd's "container" ranges, far above any login user).
pub const DEFAULT_POOL_START: u32 = 0x1000_0000;
/// Default pool size: 4096 services of [`RANGE_LEN`] ids.
pub const DEFAULT_POOL_COUNT: u32 = 0x1000_0000;

/// A failed user-namespace step.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("container {id}: user namespace: {step}: {source}")]
    Io {
        id: String,
        step: String,
        source: std::io::Error,
    },
    #[error("invalid user namespace range {text:?}: {why} (want START:COUNT, e.g. 0x10000000:0x10000000)")]
    BadPool { text: String, why: &'static str },
}

/// A container's id map: container ids `0..len` are host ids `base..base+len`
/// (the same map for uids and gids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub base: u32,
    pub len: u32,
}

impl IdRange {
    /// The `uid_map`/`gid_map` line (`user_namespaces(7)`).
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.base, self.len)
    }
}

/// The agent's pool of subordinate ids (`--userns-range START:COUNT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub start: u32,
    pub count: u32,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            start: DEFAULT_POOL_START,
            count: DEFAULT_POOL_COUNT,
        }
    }
}

impl std::str::FromStr for Pool {
    type Err = UsernsError;
    /// `START:COUNT`, each decimal or `0x` hex; START must be above 0 (host
    /// root), both multiples of [`RANGE_LEN`], and the pool within 32 bits.
    fn from_str(text: &str) -> Result<Pool, UsernsError> {
        let bad = |why| UsernsError::BadPool {
            text: text.into(),
            why,
        };
        let num = |s: &str| match s.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => s.parse::<u32>().ok(),
        };
        let (a, b) = text.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let start = num(a.trim()).ok_or_else(|| bad("START is not a 32-bit number"))?;
        let count = num(b.trim()).ok_or_else(|| bad("COUNT is not a 32-bit number"))?;
        if start == 0 {
            return Err(bad("START 0 would map container root to host root"));
        }
        if start % RANGE_LEN != 0 || count % RANGE_LEN != 0 || count == 0 {
            return Err(bad("START and COUNT must be non-zero multiples of 65536"));
        }
        if start.checked_add(count - 1).is_none() || start as u64 + count as u64 > u32::MAX as u64 {
            return Err(bad("the range goes past the 32-bit id space"));
        }
        Ok(Pool { start, count })
    }
}

/// The lowest free range of `pool` given the bases already `taken` (by other
/// services), or `None` when the pool is full.
pub fn allocate(pool: Pool, taken: &std::collections::BTreeSet<u32>) -> Option<IdRange> {
    let n = pool.count / RANGE_LEN;
    (0..n)
        .map(|i| pool.start + i * RANGE_LEN)
        .find(|b| !taken.contains(b))
        .map(|base| IdRange {
            base,
            len: RANGE_LEN,
        })
}

/// Whether this kernel can run containers in user namespaces with
/// id-mapped layers: Linux 5.19+ (overlayfs on idmapped lower layers) and
/// `user.max_user_namespaces` > 0. `Err` says what is missing.
pub fn kernel_support(release: &str, max_user_namespaces: Option<u64>) -> Result<(), String> {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) < (5, 19) {
        return Err(format!(
            "kernel {release} is older than 5.19 (overlayfs on idmapped layers)"
        ));
    }
    match max_user_namespaces {
        Some(0) => Err("user.max_user_namespaces is 0".into()),
        None => Err("/proc/sys/user/max_user_namespaces is missing (no CONFIG_USER_NS)".into()),
        Some(_) => Ok(()),
    }
}

/// [`kernel_support`] of the running kernel.
pub fn probe() -> Result<(), String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    kernel_support(&release, max)
}

/// The hidden subcommand that checks a directory's filesystem for id-mapped
/// mounts (`berth-monitor __probe-idmap <dir>`; see [`probe_filesystem`]).
pub const PROBE_SUBCOMMAND: &str = "__probe-idmap";

/// The name of the empty directory below the state dir that
/// [`probe_filesystem`] id-maps (kept, so the probe never races a container).
pub const PROBE_DIR: &str = ".idmap-probe";

/// Whether the filesystem holding `state_dir` (image layers and volumes)
/// accepts id-mapped mounts: runs `exe PROBE_SUBCOMMAND <state_dir>/.idmap-probe`,
/// which must be single-threaded to make a user namespace. `Err` names the
/// directory and the kernel's answer; tmpfs, for one, needs Linux 6.3+.
pub fn probe_filesystem(exe: &Path, state_dir: &Path) -> Result<(), String> {
    let dir = state_dir.join(PROBE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = std::process::Command::new(exe)
        .arg(PROBE_SUBCOMMAND)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {} {PROBE_SUBCOMMAND}: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(format!(
        "{} cannot be id-mapped ({why}); the state dir needs a filesystem with idmapped-mount support (ext4, xfs, btrfs; tmpfs from Linux 6.3)",
        state_dir.display()
    ))
}

/// The body of [`PROBE_SUBCOMMAND`]: makes a user namespace and gives a
/// detached clone of `args[0]` its id mapping; the clone is dropped
/// unattached, so nothing stays mounted. Exits 0 on success, 1 with the
/// failed step on stderr otherwise.
pub fn probe_main(args: &[String]) -> ! {
    let Some(dir) = args.first() else {
        eprintln!("usage: {PROBE_SUBCOMMAND} <dir>");
        std::process::exit(2);
    };
    let range = IdRange {
        base: DEFAULT_POOL_START,
        len: 1,
    };
    let result = create("idmap-probe", range)
        .map_err(|e| e.to_string())
        .and_then(|userns| {
            let tree = crate::sys::mount::open_tree_clone(Path::new(dir))
                .map_err(|e| format!("open_tree {dir}: {e}"))?;
            crate::sys::mount::mount_setattr_idmap(tree.as_fd(), userns.as_fd())
                .map_err(|e| format!("mount_setattr(MOUNT_ATTR_IDMAP) {dir}: {e}"))
        });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// Makes a user namespace with `range` as its uid and gid map and returns an
/// fd of it. Must run in a single-threaded process with the host's `/proc`:
/// a helper child unshares the namespace and reports its host pid; this
/// process (root on the host) writes the maps and opens `ns/user`; the child
/// then exits (the fd keeps the namespace).
pub fn create(id: &str, range: IdRange) -> Result<OwnedFd, UsernsError> {
    let err = |step: &str| {
        let step = step.to_string();
        move |source| UsernsError::Io {
            id: id.into(),
            step,
            source,
        }
    };
    let (ready_r, ready_w) = nix::unistd::pipe()
        .map_err(|e| err("pipe")(std::io::Error::from_raw_os_error(e as i32)))?;
    let (hold_r, hold_w) = nix::unistd::pipe()
        .map_err(|e| err("pipe")(std::io::Error::from_raw_os_error(e as i32)))?;
    match sysproc::fork_single_threaded().map_err(err("fork"))? {
        Forked::Child => {
            drop((ready_r, hold_w));
            let mut ready = std::fs::File::from(ready_w);
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
                sysproc::exit_now(1);
            }
            // The host's /proc names us by our host pid.
            let pid = std::fs::read_link("/proc/self").unwrap_or_default();
            let _ = ready.write_all(pid.as_os_str().as_encoded_bytes());
            drop(ready);
            let mut b = [0u8; 1];
            let _ = std::fs::File::from(hold_r).read(&mut b);
            sysproc::exit_now(0)
        }
        Forked::Parent(child) => {
            drop((ready_w, hold_r));
            let mut pid = String::new();
            let read = std::fs::File::from(ready_r).read_to_string(&mut pid);
            let result = read.map_err(err("reading the helper's pid")).and_then(|_| {
                if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("unshare(CLONE_NEWUSER) in the helper")(
                        std::io::Error::other("the helper failed"),
                    ));
                }
                let proc = PathBuf::from("/proc").join(&pid);
                let line = range.map_line();
                std::fs::write(proc.join("uid_map"), &line).map_err(err("writing uid_map"))?;
                std::fs::write(proc.join("gid_map"), &line).map_err(err("writing gid_map"))?;
                let f =
                    std::fs::File::open(proc.join("ns/user")).map_err(err("opening ns/user"))?;
                Ok(OwnedFd::from(f))
            });
            drop(hold_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// Clones the mount tree at `source` onto `target` (created as an empty
/// directory or file like `source`) with `userns`'s id mapping.
pub fn idmapped_clone(source: &Path, target: &Path, userns: &OwnedFd) -> std::io::Result<()> {
    if source.is_dir() {
        std::fs::create_dir_all(target)?;
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)?;
    }
    let tree = crate::sys::mount::open_tree_clone(source)?;
    crate::sys::mount::mount_setattr_idmap(tree.as_fd(), userns.as_fd())?;
    crate::sys::mount::move_mount_to(tree.as_fd(), target)
}

/// In the init, in its own mount namespace: id-mapped copies of the image
/// layers (required) and of every bind source (volumes, host paths,
/// secrets) under `dir/idmap`; returns the lowerdirs and mounts to build the
/// rootfs from. A bind whose filesystem cannot be idmapped is bound as is
/// (its files then show as `nobody` in the container), with a warning on
/// stderr (the monitor's log).
pub fn idmap_sources(
    id: &str,
    dir: &Path,
    lowerdirs: &[PathBuf],
    mounts: &[Mount],
    userns: &OwnedFd,
) -> Result<(Vec<PathBuf>, Vec<Mount>), UsernsError> {
    let err = |step: String| {
        move |source| UsernsError::Io {
            id: id.into(),
            step,
            source,
        }
    };
    // Nothing mounted here may propagate back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| err("make / rslave".into())(std::io::Error::from_raw_os_error(e as i32)))?;
    let base = dir.join("idmap");
    let mut lowers = Vec::with_capacity(lowerdirs.len());
    for (i, l) in lowerdirs.iter().enumerate() {
        let t = base.join(format!("l{i}"));
        idmapped_clone(l, &t, userns)
            .map_err(err(format!("idmapped mount of layer {}", l.display())))?;
        lowers.push(t);
    }
    let mut out = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let mut m = m.clone();
        if let MountKind::Bind { source } = &m.kind {
            let t = base.join(format!("v{i}"));
            match idmapped_clone(source, &t, userns) {
                Ok(()) => m.kind = MountKind::Bind { source: t },
                Err(e) => eprintln!(
                    "berth: container {id}: {} cannot be idmapped ({e}); bound as is, its files show as nobody",
                    source.display()
                ),
            }
        }
        out.push(m);
    }
    Ok((lowers, out))
}

/// In the init, last before the user change: joins the user namespace.
pub fn join(id: &str, userns: &OwnedFd) -> Result<(), UsernsError> {
    nix::sched::setns(userns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| {
        UsernsError::Io {
            id: id.into(),
            step: "setns(CLONE_NEWUSER)".into(),
            source: std::io::Error::from_raw_os_error(e as i32),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_or_say_what_is_wrong() {
        let ok: &[(&str, Pool)] = &[
            (
                "0x10000000:0x10000000",
                Pool {
                    start: 0x1000_0000,
                    count: 0x1000_0000,
                },
            ),
            (
                "65536:131072",
                Pool {
                    start: 65536,
                    count: 131072,
                },
            ),
        ];
        for (t, want) in ok {
            assert_eq!(t.parse::<Pool>().unwrap(), *want, "{t}");
        }
        for (t, why) in [
            ("100000", "no ':'"),
            ("0:65536", "host root"),
            ("65537:65536", "multiples"),
            ("65536:0", "multiples"),
            ("0xffff0000:0x20000", "32-bit id space"),
            ("x:65536", "START"),
        ] {
            let e = t.parse::<Pool>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(t), "{t}: {e}");
        }
    }

    #[test]
    fn allocation_takes_the_lowest_free_range_and_stops_when_full() {
        let pool = Pool {
            start: 0x10000,
            count: 3 * RANGE_LEN,
        };
        let mut taken = std::collections::BTreeSet::new();
        let a = allocate(pool, &taken).unwrap();
        assert_eq!(a.base, 0x10000);
        taken.insert(a.base);
        taken.insert(0x30000);
        assert_eq!(allocate(pool, &taken).unwrap().base, 0x20000);
        taken.insert(0x20000);
        assert_eq!(allocate(pool, &taken), None);
        assert_eq!(a.map_line(), "0 65536 65536\n");
    }

    #[test]
    fn kernel_support_needs_5_19_and_user_namespaces() {
        assert!(kernel_support("6.18.44-fc", Some(63000)).is_ok());
        assert!(kernel_support("5.19.0", Some(1)).is_ok());
        assert!(kernel_support("5.15.0-91-generic", Some(1))
            .unwrap_err()
            .contains("5.19"));
        assert!(kernel_support("6.1.0", Some(0))
            .unwrap_err()
            .contains("max_user_namespaces is 0"));
        assert!(kernel_support("6.1.0", None)
            .unwrap_err()
            .contains("CONFIG_USER_NS"));
    }
}
