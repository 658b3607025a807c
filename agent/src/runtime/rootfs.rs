//! Builds the container's root filesystem inside its fresh mount namespace:
//! overlayfs (shared lowerdirs, per-container upper/work), /proc, /dev with the
//! OCI default devices, /sys read-only, /etc/{hostname,hosts,resolv.conf},
//! volumes, Docker's masked and read-only paths, then `pivot_root` and an
//! optional read-only remount of `/`. Every target is resolved in-root
//! ([`super::syscall::resolve_in_root`]) and mounted through `/proc/self/fd/N`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::config::{Mount, MountKind};
use super::stages::Stamps;
use super::syscall::{Create, Resolved, Sys};

/// Paths masked with `/dev/null` (files) or a read-only tmpfs (directories), as Docker does.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths bind-mounted read-only over themselves, as Docker does.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The OCI default devices, bind-mounted from the host.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A rootfs setup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("container {id}: {step} at {path}: {source}")]
    Mount {
        id: String,
        step: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("container {id}: resolving {path} inside the rootfs: {source}")]
    Resolve {
        id: String,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("container {id}: pivot_root into {path}: {source}")]
    PivotRoot {
        id: String,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("container {id}: overlay mount options for {n} lowerdirs are {len} bytes, over the kernel's page-size limit")]
    OverlayOptionsTooLong { id: String, n: usize, len: usize },
}

/// Everything rootfs setup needs, in host paths.
#[derive(Debug, Clone)]
pub struct RootfsPlan<'a> {
    pub id: &'a str,
    pub lowerdirs: &'a [PathBuf],
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    /// Files bind-mounted at /etc/hostname, /etc/hosts, /etc/resolv.conf.
    pub etc_files: [(PathBuf, &'static str); 3],
    pub mounts: &'a [Mount],
    pub readonly_rootfs: bool,
    pub cwd: &'a Path,
}

struct Ctx<'s, 'p> {
    sys: &'s mut dyn Sys,
    plan: &'p RootfsPlan<'p>,
}

impl Ctx<'_, '_> {
    fn resolve(&mut self, path: &str, create: Create) -> Result<Resolved, RootfsError> {
        self.sys
            .resolve(&self.plan.merged, Path::new(path), create)
            .map_err(|source| RootfsError::Resolve {
                id: self.plan.id.into(),
                path: path.into(),
                source,
            })
    }

    /// Resolves `path` (None when it does not exist and `create` is `No`).
    fn resolve_opt(&mut self, path: &str) -> Result<Option<Resolved>, RootfsError> {
        match self
            .sys
            .resolve(&self.plan.merged, Path::new(path), Create::No)
        {
            Ok(r) => Ok(Some(r)),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(source) => Err(RootfsError::Resolve {
                id: self.plan.id.into(),
                path: path.into(),
                source,
            }),
        }
    }

    // mount(2)'s five arguments plus the step and in-container path for errors.
    #[allow(clippy::too_many_arguments)]
    fn mount(
        &mut self,
        step: &'static str,
        display: &str,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        self.sys
            .mount(source, target, fstype, flags, data)
            .map_err(|source| RootfsError::Mount {
                id: self.plan.id.into(),
                step,
                path: display.into(),
                source,
            })
    }

    /// Mounts a fresh filesystem at in-container `path`, creating it as a directory.
    fn mount_fs(
        &mut self,
        path: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        let t = self.resolve(path, Create::Dir)?;
        self.mount(
            "mount",
            path,
            Some(Path::new(fstype)),
            &t.proc_path(),
            Some(fstype),
            flags,
            data,
        )
    }

    /// Bind-mounts host `source` at in-container `path` with its submounts,
    /// then sets `extra` flags on the whole subtree (a bind mount ignores
    /// flags on creation) and makes it private ([`Ctx::set_recursive`]).
    fn bind(&mut self, source: &Path, path: &str, extra: MsFlags) -> Result<(), RootfsError> {
        let create = if source.is_dir() {
            Create::Dir
        } else {
            Create::File
        };
        let t = self.resolve(path, create)?;
        self.mount(
            "bind",
            path,
            Some(source),
            &t.proc_path(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if !extra.is_empty() {
            // Resolve again: the old fd names the directory under the new mount.
            let t = self.resolve(path, Create::No)?;
            self.set_recursive(&t, path, extra)?;
        }
        Ok(())
    }

    /// Sets `flags` on the mount at `t` and every submount it brought along
    /// (a host volume with a tmpfs below it), and makes them private, so a
    /// mount the host adds there later does not propagate in without them:
    /// one `mount_setattr(AT_RECURSIVE)`; before Linux 5.12 a bind remount
    /// of each mount found in mountinfo (keeping its own flags) and a
    /// recursive `MS_PRIVATE`.
    fn set_recursive(
        &mut self,
        t: &Resolved,
        path: &str,
        flags: MsFlags,
    ) -> Result<(), RootfsError> {
        match self.sys.mount_setattr(t, flags) {
            Ok(()) => return Ok(()),
            Err(nix::Error::ENOSYS) => {}
            Err(source) => {
                return Err(RootfsError::Mount {
                    id: self.plan.id.into(),
                    step: "mount_setattr",
                    path: path.into(),
                    source,
                })
            }
        }
        let info = self.sys.mountinfo().map_err(|source| RootfsError::Mount {
            id: self.plan.id.into(),
            step: "read mountinfo",
            path: path.into(),
            source,
        })?;
        for (mount_point, own) in submounts(&info, &t.real) {
            let display = mount_point.display().to_string();
            self.mount(
                "remount bind",
                &display,
                None,
                &mount_point,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | own | flags,
                None,
            )?;
        }
        self.mount(
            "make rprivate",
            path,
            None,
            &t.proc_path(),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )
    }
}

/// The per-mount flags a bind remount must keep, from mountinfo's mount
/// options (field 6: `rw,nosuid,nodev,relatime`).
pub fn mount_flags(options: &str) -> MsFlags {
    options
        .split(',')
        .map(|o| match o {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        })
        .fold(MsFlags::empty(), |a, b| a | b)
}

/// mountinfo's octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The mounts at and below `target` in `mountinfo` text, parents first, each
/// with the flags it has now.
pub fn submounts(mountinfo: &str, target: &Path) -> Vec<(PathBuf, MsFlags)> {
    // A later line at the same mount point is stacked on top: it wins.
    let found: std::collections::BTreeMap<PathBuf, MsFlags> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let mount_point = unescape(f.nth(4)?);
            let options = f.next()?;
            mount_point
                .starts_with(target)
                .then(|| (mount_point, mount_flags(options)))
        })
        .collect();
    let mut out: Vec<(PathBuf, MsFlags)> = found.into_iter().collect();
    out.sort_by_key(|(p, _)| p.components().count());
    out
}

fn overlay_options(plan: &RootfsPlan<'_>) -> Result<String, RootfsError> {
    let lower: Vec<String> = plan
        .lowerdirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        plan.upper.display(),
        plan.work.display()
    );
    // The legacy mount(2) data page is 4096 bytes including the NUL.
    if opts.len() >= 4096 {
        return Err(RootfsError::OverlayOptionsTooLong {
            id: plan.id.into(),
            n: lower.len(),
            len: opts.len(),
        });
    }
    Ok(opts)
}

/// Runs the whole setup. Must be called in a new mount namespace (and, for
/// /proc to show the right pids, as a member of the container's pid namespace).
/// On return the process's root and cwd are the container's.
pub fn setup(sys: &mut dyn Sys, plan: &RootfsPlan<'_>) -> Result<(), RootfsError> {
    setup_traced(sys, plan, &mut Stamps::new(false))
}

/// [`setup`], stamping `init.overlay`, `init.mounts` (everything before
/// `pivot_root`) and `init.pivot_root` (see [`super::stages`]).
pub fn setup_traced(
    sys: &mut dyn Sys,
    plan: &RootfsPlan<'_>,
    stamps: &mut Stamps,
) -> Result<(), RootfsError> {
    let mut c = Ctx { sys, plan };
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // 1. Nothing we mount propagates back to the host; host unmounts still reach us.
    c.mount(
        "make rslave",
        "/",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;

    // 2. The overlay. nodev: device nodes created in the rootfs are unusable.
    let opts = overlay_options(plan)?;
    let merged = plan.merged.display().to_string();
    c.mount(
        "overlay",
        &merged,
        Some(Path::new("overlay")),
        &plan.merged,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&opts),
    )?;
    stamps.stamp("init.overlay");

    // 3. Kernel filesystems.
    c.mount_fs("/proc", "proc", nosuid_nodev_noexec, None)?;
    c.mount_fs(
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for dev in DEVICES {
        c.bind(
            &Path::new("/dev").join(dev),
            &format!("/dev/{dev}"),
            MsFlags::empty(),
        )?;
    }
    c.mount_fs(
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    c.mount_fs(
        "/dev/shm",
        "tmpfs",
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )?;
    c.mount_fs("/dev/mqueue", "mqueue", nosuid_nodev_noexec, None)?;
    let devdir = c.resolve("/dev", Create::No)?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        c.sys
            .symlink(target, &devdir, name)
            .map_err(|source| RootfsError::Mount {
                id: plan.id.into(),
                step: "symlink",
                path: format!("/dev/{name}").into(),
                source,
            })?;
    }
    drop(devdir);
    c.mount_fs(
        "/sys",
        "sysfs",
        MsFlags::MS_RDONLY | nosuid_nodev_noexec,
        None,
    )?;

    // 4. /etc files written by the runtime.
    for (host, target) in &plan.etc_files {
        c.bind(host, target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    }

    // 5. Volumes, parents before children.
    let mut mounts: Vec<&Mount> = plan.mounts.iter().collect();
    mounts.sort_by_key(|m| m.target.components().count());
    for m in mounts {
        let target = m.target.display().to_string();
        let ro = if m.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        match &m.kind {
            MountKind::Bind { source } => {
                c.bind(source, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV | ro)?
            }
            MountKind::Tmpfs { size_bytes } => {
                let data = match size_bytes {
                    Some(n) => format!("mode=1777,size={n}"),
                    None => "mode=1777".to_string(),
                };
                c.mount_fs(
                    &target,
                    "tmpfs",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | ro,
                    Some(&data),
                )?;
            }
        }
    }

    // 6. Masked paths: /dev/null over files, an empty read-only tmpfs over directories.
    for path in MASKED_PATHS {
        let Some(t) = c.resolve_opt(path)? else {
            continue;
        };
        if t.is_dir {
            c.mount(
                "mask",
                path,
                Some(Path::new("tmpfs")),
                &t.proc_path(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?;
        } else {
            c.mount(
                "mask",
                path,
                Some(Path::new("/dev/null")),
                &t.proc_path(),
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    // 7. Read-only paths.
    for path in READONLY_PATHS {
        let Some(t) = c.resolve_opt(path)? else {
            continue;
        };
        c.mount(
            "readonly bind",
            path,
            Some(&t.proc_path()),
            &t.proc_path(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        let t = c.resolve(path, Create::No)?;
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec;
        c.mount(
            "readonly remount",
            path,
            None,
            &t.proc_path(),
            None,
            flags,
            None,
        )?;
    }

    // 8. The working directory exists before the root may become read-only.
    let cwd = plan.cwd.display().to_string();
    drop(c.resolve(&cwd, Create::Dir)?);
    stamps.stamp("init.mounts");

    // 9. pivot_root (never chroot) and detach the old root.
    c.sys
        .pivot_root(&plan.merged)
        .map_err(|source| RootfsError::PivotRoot {
            id: plan.id.into(),
            path: plan.merged.clone(),
            source,
        })?;
    if plan.readonly_rootfs {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
        c.mount(
            "readonly rootfs",
            "/",
            None,
            Path::new("/"),
            None,
            flags,
            None,
        )?;
    }
    c.sys.chdir(plan.cwd).map_err(|source| RootfsError::Mount {
        id: plan.id.into(),
        step: "chdir",
        path: plan.cwd.into(),
        source,
    })?;
    stamps.stamp("init.pivot_root");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::syscall::{Call, RecordingSys};
    use super::*;

    fn mount_targets(calls: &[Call]) -> Vec<(PathBuf, Option<String>, MsFlags)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target.clone(), fstype.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mount_sequence_uses_pivot_root_masks_and_stays_in_root() {
        let host = tempfile::tempdir().unwrap();
        let merged = host.path().join("merged");
        // What the overlay would show: an image with malicious symlinks and the
        // /proc entries a real procfs would have.
        for d in ["etc", "proc/acpi", "proc/sys", "proc/scsi", "sys/firmware"] {
            std::fs::create_dir_all(merged.join(d)).unwrap();
        }
        for f in ["proc/kcore", "proc/keys", "proc/sysrq-trigger"] {
            std::fs::write(merged.join(f), "").unwrap();
        }
        std::os::unix::fs::symlink("/etc/host-thing", merged.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../../../", merged.join("escape")).unwrap();
        let vol = host.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "pw").unwrap();
        let etc: Vec<PathBuf> = ["hostname", "hosts", "resolv.conf"]
            .iter()
            .map(|f| host.path().join(f))
            .collect();
        for f in &etc {
            std::fs::write(f, "").unwrap();
        }
        let mounts = vec![
            Mount::bind(&vol, "/data", false),
            Mount::secret(&secret, "db"),
            Mount::tmpfs(Some(1 << 20), "/escape/tmp"),
        ];
        let lower = vec![PathBuf::from("/layers/a"), PathBuf::from("/layers/b")];
        let plan = RootfsPlan {
            id: "c1",
            lowerdirs: &lower,
            upper: host.path().join("upper"),
            work: host.path().join("work"),
            merged: merged.clone(),
            etc_files: [
                (etc[0].clone(), "/etc/hostname"),
                (etc[1].clone(), "/etc/hosts"),
                (etc[2].clone(), "/etc/resolv.conf"),
            ],
            mounts: &mounts,
            readonly_rootfs: true,
            cwd: Path::new("/srv/app"),
        };
        let mut sys = RecordingSys::default();
        setup(&mut sys, &plan).unwrap();
        let calls = &sys.calls;
        let mounts = mount_targets(calls);

        // Propagation first, then the overlay with the lowerdirs in order.
        assert_eq!(
            mounts[0],
            (
                PathBuf::from("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_SLAVE
            )
        );
        match &calls[1] {
            Call::Mount {
                target,
                fstype,
                data,
                ..
            } => {
                assert_eq!(target, &merged);
                assert_eq!(fstype.as_deref(), Some("overlay"));
                let data = data.as_deref().unwrap();
                assert!(
                    data.starts_with("lowerdir=/layers/a:/layers/b,upperdir="),
                    "{data}"
                );
            }
            other => panic!("{other:?}"),
        }
        let has = |path: &str, fs: Option<&str>| {
            mounts
                .iter()
                .any(|(t, f, _)| t == &merged.join(path) && f.as_deref() == fs)
        };
        assert!(has("proc", Some("proc")));
        assert!(has("dev", Some("tmpfs")));
        assert!(has("dev/pts", Some("devpts")));
        assert!(has("dev/mqueue", Some("mqueue")));
        assert!(has("dev/shm", Some("tmpfs")));
        for d in DEVICES {
            assert!(has(&format!("dev/{d}"), None), "{d}");
        }
        let sys_mount = mounts
            .iter()
            .find(|(t, _, _)| t == &merged.join("sys"))
            .unwrap();
        assert!(sys_mount.2.contains(MsFlags::MS_RDONLY));
        // Masked paths that exist are covered: files by /dev/null, dirs by ro tmpfs.
        for (p, fs) in [
            ("proc/kcore", None),
            ("proc/keys", None),
            ("proc/acpi", Some("tmpfs")),
            ("proc/scsi", Some("tmpfs")),
            ("sys/firmware", Some("tmpfs")),
        ] {
            assert!(has(p, fs), "{p} not masked");
        }
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), target, .. } if s == Path::new("/dev/null") && target == &merged.join("proc/kcore"))));
        // Read-only paths: a bind plus a read-only remount.
        let ro_sys: Vec<_> = mounts
            .iter()
            .filter(|(t, _, _)| t == &merged.join("proc/sys"))
            .collect();
        assert_eq!(ro_sys.len(), 2);
        assert!(ro_sys[1]
            .2
            .contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
        // Volumes land inside the rootfs even through malicious symlinks.
        assert!(
            has("etc/host-thing", None),
            "the /data -> /etc/host-thing symlink must resolve in-root"
        );
        assert!(
            has("tmp", Some("tmpfs")),
            "the ../../ symlink must resolve to the rootfs itself"
        );
        assert!(has("run/secrets/db", None));
        // Every bind gets nosuid,nodev (and ro when asked) on its whole subtree.
        let setattr = |path: &str| {
            calls
                .iter()
                .find_map(|c| match c {
                    Call::MountSetattr { target, flags } if target == &merged.join(path) => {
                        Some(*flags)
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no mount_setattr on {path}"))
        };
        let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        assert_eq!(setattr("run/secrets/db"), nosuid_nodev | MsFlags::MS_RDONLY);
        assert_eq!(setattr("etc/host-thing"), nosuid_nodev, "the /data volume");
        assert_eq!(setattr("etc/hosts"), nosuid_nodev);
        for (t, _, _) in &mounts {
            assert!(
                t == Path::new("/") || t.starts_with(&merged),
                "mount outside the rootfs: {}",
                t.display()
            );
        }
        assert!(!Path::new("/etc/host-thing").exists());
        assert!(
            has("etc/hostname", None) && has("etc/hosts", None) && has("etc/resolv.conf", None)
        );
        // pivot_root (not chroot), then the read-only remount of /, then chdir.
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { new_root } if new_root == &merged))
            .unwrap();
        match &calls[pivot + 1] {
            Call::Mount { target, flags, .. } => {
                assert_eq!(target, Path::new("/"));
                assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            calls.last(),
            Some(&Call::Chdir {
                path: "/srv/app".into()
            })
        );
        assert!(merged.join("srv/app").is_dir());
        assert!(calls.iter().any(|c| matches!(c, Call::Symlink { target, link } if target == "pts/ptmx" && link.ends_with("dev/ptmx"))));
    }

    #[test]
    fn submounts_of_a_target_come_parents_first_with_their_flags() {
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /m/data rw,relatime - ext4 /dev/vda rw
31 30 0:41 / /m/data/tmp rw,noexec,relatime - tmpfs tmpfs rw
32 31 0:42 / /m/data/tmp/deep\\040dir ro,nosuid - tmpfs tmpfs rw
33 22 0:43 / /m/data2 rw - tmpfs tmpfs rw
34 30 0:44 / /m/data/tmp rw,nodev - tmpfs tmpfs rw
";
        let subs = submounts(info, Path::new("/m/data"));
        let r = MsFlags::MS_RELATIME;
        assert_eq!(
            subs,
            vec![
                (PathBuf::from("/m/data"), r),
                // The later mount at the same point is the one on top.
                (PathBuf::from("/m/data/tmp"), MsFlags::MS_NODEV),
                (
                    PathBuf::from("/m/data/tmp/deep dir"),
                    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
                ),
            ]
        );
        assert_eq!(
            mount_flags("ro,nosuid,nodev,noexec,noatime,strictatime,seclabel"),
            MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_STRICTATIME
        );
    }

    #[test]
    fn before_mount_setattr_each_submount_is_remounted() {
        let host = tempfile::tempdir().unwrap();
        let merged = host.path().join("merged");
        std::fs::create_dir_all(merged.join("etc")).unwrap();
        let vol = host.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let etc: Vec<PathBuf> = ["hostname", "hosts", "resolv.conf"]
            .iter()
            .map(|f| host.path().join(f))
            .collect();
        for f in &etc {
            std::fs::write(f, "").unwrap();
        }
        let mounts = vec![Mount::bind(&vol, "/data", true)];
        let lower = vec![PathBuf::from("/layers/a")];
        let plan = RootfsPlan {
            id: "c1",
            lowerdirs: &lower,
            upper: host.path().join("upper"),
            work: host.path().join("work"),
            merged: merged.clone(),
            etc_files: [
                (etc[0].clone(), "/etc/hostname"),
                (etc[1].clone(), "/etc/hosts"),
                (etc[2].clone(), "/etc/resolv.conf"),
            ],
            mounts: &mounts,
            readonly_rootfs: false,
            cwd: Path::new("/"),
        };
        let data = merged.join("data");
        let mut sys = RecordingSys {
            no_mount_setattr: true,
            // What the bind brought along: the volume and a tmpfs below it.
            mountinfo: format!(
                "40 1 0:50 / {d} rw,relatime - ext4 /dev/vda rw\n\
                 41 40 0:51 / {d}/cache rw,noexec - tmpfs tmpfs rw\n",
                d = data.display()
            ),
            ..Default::default()
        };
        setup(&mut sys, &plan).unwrap();
        let remounts: Vec<(PathBuf, MsFlags)> = mount_targets(&sys.calls)
            .into_iter()
            .filter(|(t, _, f)| t.starts_with(&data) && f.contains(MsFlags::MS_REMOUNT))
            .map(|(t, _, f)| (t, f))
            .collect();
        let want = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        assert_eq!(
            remounts,
            vec![
                (data.clone(), want | MsFlags::MS_RELATIME),
                (data.join("cache"), want | MsFlags::MS_NOEXEC),
            ]
        );
        assert!(mount_targets(&sys.calls).contains(&(
            data.clone(),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE
        )));
    }

    #[test]
    fn too_many_lowerdirs_is_a_clear_error() {
        let lower: Vec<PathBuf> = (0..400)
            .map(|i| PathBuf::from(format!("/var/lib/berth/layers/{i:060}")))
            .collect();
        let plan = RootfsPlan {
            id: "c1",
            lowerdirs: &lower,
            upper: "/u".into(),
            work: "/w".into(),
            merged: "/m".into(),
            etc_files: [
                ("/a".into(), "/etc/hostname"),
                ("/b".into(), "/etc/hosts"),
                ("/c".into(), "/etc/resolv.conf"),
            ],
            mounts: &[],
            readonly_rootfs: false,
            cwd: Path::new("/"),
        };
        let err = setup(&mut RecordingSys::default(), &plan).unwrap_err();
        assert!(
            matches!(err, RootfsError::OverlayOptionsTooLong { .. }),
            "{err}"
        );
    }
}
