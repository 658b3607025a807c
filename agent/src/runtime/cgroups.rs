//! Cgroups for containers under `<cgroup_parent>/<id>`, on v1 (each controller
//! hierarchy, incl. hybrid hosts) and the v2 unified hierarchy: memory limit
//! (swap disabled), CPU quota and weight, pids limit, the devices allowed
//! ([`super::devices`]: `devices.deny`/`devices.allow` on v1, an attached eBPF
//! program on v2), OOM-kill detection and usage stats. A small own layer instead of cgroups-rs: we need only a dozen
//! files, exact v1/v2 semantics (memory.oom_control's `oom_kill`, memsw) and
//! error messages naming the file, without pulling its dependency tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::devices;

/// Mount point of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// CFS period used for CPU quotas (100 ms, as Docker).
pub const CFS_PERIOD_US: u64 = 100_000;
/// v1 controllers a container gets a cgroup in.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("container {id}: no usable cgroup hierarchy under {CGROUP_ROOT}")]
    NoHierarchy { id: String },
    #[error("container {id}: controller {controller} is not available")]
    MissingController {
        id: String,
        controller: &'static str,
    },
    #[error("container {id}: {step} {path}: {source}")]
    Io {
        id: String,
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: cgroup {path} still has processes after being killed")]
    Busy { id: String, path: PathBuf },
    #[error("container {id}: device filter for {path}: {step}: {source}")]
    Devices {
        id: String,
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// v1 (possibly hybrid): controller name → mount point of its hierarchy.
    V1 { controllers: Vec<(String, PathBuf)> },
    /// Pure v2: the unified mount point.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Detects the layout from `/proc/self/mountinfo` (v2 only when
    /// /sys/fs/cgroup itself is cgroup2; an empty hybrid `unified` mount is ignored).
    pub fn detect() -> Option<Hierarchy> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&info)
    }

    /// Parses mountinfo text (split out for tests).
    pub fn from_mountinfo(info: &str) -> Option<Hierarchy> {
        let mut v1 = Vec::new();
        let mut v2_root = None;
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4).unwrap_or_default();
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or_default();
            let super_opts = post.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" if mount_point == CGROUP_ROOT => {
                    v2_root = Some(PathBuf::from(mount_point))
                }
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.push((opt.to_string(), PathBuf::from(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2_root {
            return Some(Hierarchy::V2 { root });
        }
        (!v1.is_empty()).then_some(Hierarchy::V1 { controllers: v1 })
    }
}

/// Suffix of a monitor's own cgroup, a sibling of its container's:
/// `<cgroup_parent>/<id>.monitor` (as podman's `libpod-conmon-<id>.scope`).
pub const MONITOR_SUFFIX: &str = ".monitor";

/// Mount points of every cgroup hierarchy in mountinfo text: each v1 one
/// (controllers and named ones such as `name=systemd`) and cgroup2 (the pure
/// v2 root, or hybrid's `unified`). A service manager tracks a unit's
/// processes in these, so a process that must outlive the unit leaves all of
/// them. v1 `cpuset` is left out: a new cpuset cgroup takes no process until
/// its CPUs and memory nodes are set, and no manager kills through it.
pub fn hierarchy_mounts(info: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let cpuset = post.nth(1)?.split(',').any(|o| o == "cpuset");
            (fstype == "cgroup2" || (fstype == "cgroup" && !cpuset))
                .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or_default()))
        })
        .filter(|p| p.starts_with(CGROUP_ROOT))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The cgroup a container's monitor moves itself into before the container
/// starts: `<cgroup_parent>/<id>.monitor` in every hierarchy, outside the
/// agent's own cgroup, so stopping or OOM-killing the agent's unit
/// (systemd's `KillMode=control-group`, `cgroup.kill`) leaves monitors alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorCgroup {
    id: String,
    dirs: Vec<PathBuf>,
}

impl MonitorCgroup {
    /// The monitor cgroup of container `id` under `parent` in each of `mounts`
    /// (no filesystem access).
    pub fn new(mounts: &[PathBuf], parent: &str, id: &str) -> Self {
        let rel = Path::new(parent.trim_matches('/')).join(format!("{id}{MONITOR_SUFFIX}"));
        MonitorCgroup {
            id: id.into(),
            dirs: mounts.iter().map(|m| m.join(&rel)).collect(),
        }
    }

    /// [`MonitorCgroup::new`] over this host's hierarchies (`/proc/self/mountinfo`).
    pub fn detect(parent: &str, id: &str) -> Self {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::new(&hierarchy_mounts(&info), parent, id)
    }

    /// Its directories, one per hierarchy.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Creates the directories and moves process `pid` into each.
    pub fn enter(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let io = |step: &'static str, path: &Path| {
                let (id, path) = (self.id.clone(), path.to_path_buf());
                move |source| CgroupError::Io {
                    id,
                    step,
                    path,
                    source,
                }
            };
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
            let procs = d.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io("writing", &procs))?;
        }
        Ok(())
    }

    /// Removes every directory (idempotent), SIGKILLing what is still in
    /// them (a monitor past its exit record); fails if one stays busy for `timeout`.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        for d in &self.dirs {
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        if Instant::now() >= deadline {
                            return Err(CgroupError::Busy {
                                id: self.id.clone(),
                                path: d.clone(),
                            });
                        }
                        let procs = std::fs::read_to_string(d.join("cgroup.procs"));
                        for pid in procs.unwrap_or_default().lines() {
                            if let Ok(pid) = pid.trim().parse() {
                                let _ = nix::sys::signal::kill(
                                    nix::unistd::Pid::from_raw(pid),
                                    nix::sys::signal::Signal::SIGKILL,
                                );
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        return Err(CgroupError::Io {
                            id: self.id.clone(),
                            step: "removing",
                            path: d.clone(),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Limits applied at creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub millicpus: Option<u32>,
    pub pids: Option<u32>,
}

/// Usage numbers read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// One container's cgroup (one directory per v1 hierarchy, or one v2 directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    id: String,
    hierarchy: Hierarchy,
    rel: PathBuf,
}

/// `millicpus` → CFS quota in µs per [`CFS_PERIOD_US`] (minimum 1 ms, the kernel's floor).
pub fn cfs_quota_us(millicpus: u32) -> u64 {
    (u64::from(millicpus) * CFS_PERIOD_US / 1000).max(1000)
}

/// `millicpus` → v1 `cpu.shares` (1024 per CPU, minimum 2).
pub fn cpu_shares(millicpus: u32) -> u64 {
    (u64::from(millicpus) * 1024 / 1000).clamp(2, 262_144)
}

/// v1 shares → v2 `cpu.weight` (the conversion runc and systemd use).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

impl Cgroup {
    /// The cgroup of container `id` under `parent` (no filesystem access).
    pub fn new(hierarchy: Hierarchy, parent: &str, id: &str) -> Self {
        let rel = Path::new(parent.trim_matches('/')).join(id);
        Cgroup {
            id: id.into(),
            hierarchy,
            rel,
        }
    }

    /// Every directory of this cgroup (deduplicated across co-mounted v1 controllers).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V2 { root } => vec![root.join(&self.rel)],
            Hierarchy::V1 { controllers } => {
                controllers.iter().map(|(_, m)| m.join(&self.rel)).collect()
            }
        };
        out.sort();
        out.dedup();
        out
    }

    fn dir_for(&self, controller: &'static str) -> Result<PathBuf, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => Ok(root.join(&self.rel)),
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, m)| m.join(&self.rel))
                .ok_or(CgroupError::MissingController {
                    id: self.id.clone(),
                    controller,
                }),
        }
    }

    fn io(&self, step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
        let (id, path) = (self.id.clone(), path.to_path_buf());
        move |source| CgroupError::Io {
            id,
            step,
            path,
            source,
        }
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = dir.join(file);
        std::fs::write(&p, value).map_err(self.io("writing", &p))
    }

    fn read(&self, dir: &Path, file: &str) -> Result<String, CgroupError> {
        let p = dir.join(file);
        std::fs::read_to_string(&p).map_err(self.io("reading", &p))
    }

    /// Creates the cgroup directories and applies `limits`. On error, whatever
    /// was created is left for [`Cgroup::remove`] (the caller's undo).
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Hierarchy::V2 { root } = &self.hierarchy {
            // Enable controllers along the way down (the parent holds no processes).
            let mut dir = root.clone();
            for comp in self.rel.parent().into_iter().flat_map(|p| p.components()) {
                for c in ["+memory", "+cpu", "+pids"] {
                    // A controller the host lacks is reported when its limit is written.
                    let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
                }
                dir.push(comp);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(self.io("creating", &dir)(e)),
                }
            }
            for c in ["+memory", "+cpu", "+pids"] {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
            }
        }
        for p in self.paths() {
            std::fs::create_dir_all(&p).map_err(self.io("creating", &p))?;
        }
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let dir = self.dir_for("memory")?;
                if let Some(m) = limits.memory_bytes {
                    self.write(&dir, "memory.max", &m.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        self.write(&dir, "memory.swap.max", "0")?;
                    }
                }
                if let Some(c) = limits.millicpus {
                    self.write(
                        &dir,
                        "cpu.max",
                        &format!("{} {CFS_PERIOD_US}", cfs_quota_us(c)),
                    )?;
                    self.write(
                        &dir,
                        "cpu.weight",
                        &shares_to_weight(cpu_shares(c)).to_string(),
                    )?;
                }
                if let Some(n) = limits.pids {
                    self.write(&dir, "pids.max", &n.to_string())?;
                }
                self.attach_device_filter(&dir)?;
            }
            Hierarchy::V1 { .. } => {
                // Deny every device first, then allow the defaults back.
                let dir = self.dir_for("devices")?;
                self.write(&dir, "devices.deny", "a")?;
                for line in devices::v1_allow_lines(devices::ALLOWED) {
                    self.write(&dir, "devices.allow", &line)?;
                }
                if let Some(m) = limits.memory_bytes {
                    let dir = self.dir_for("memory")?;
                    self.write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                    // memsw = memory: no swap, so the limit really OOM-kills.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        self.write(&dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                    } else {
                        self.write(&dir, "memory.swappiness", "0")?;
                    }
                }
                if let Some(c) = limits.millicpus {
                    let dir = self.dir_for("cpu")?;
                    self.write(&dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                    self.write(&dir, "cpu.cfs_quota_us", &cfs_quota_us(c).to_string())?;
                    self.write(&dir, "cpu.shares", &cpu_shares(c).to_string())?;
                }
                if let Some(n) = limits.pids {
                    self.write(&self.dir_for("pids")?, "pids.max", &n.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Loads the v2 device program of [`devices::ALLOWED`] and attaches it to
    /// the cgroup directory `dir`.
    fn attach_device_filter(&self, dir: &Path) -> Result<(), CgroupError> {
        let err = |step: &'static str| {
            let (id, path) = (self.id.clone(), dir.to_path_buf());
            move |source| CgroupError::Devices {
                id,
                step,
                path,
                source,
            }
        };
        let insns = devices::bpf_program(devices::ALLOWED)
            .map_err(|e| err("assembling")(std::io::Error::other(e.to_string())))?;
        let prog = crate::sys::bpf::load_cgroup_device(&insns, "berth_devices")
            .map_err(err("loading (bpf BPF_PROG_LOAD)"))?;
        let cgroup = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| err("opening")(e.into()))?;
        crate::sys::bpf::attach_cgroup_device(&prog, &cgroup)
            .map_err(err("attaching (bpf BPF_PROG_ATTACH)"))
    }

    /// Moves process `pid` (a host pid) into every directory of the cgroup.
    /// A v1 `devices` directory that does not exist is skipped: containers
    /// created before Berth had a devices cgroup have none (their exec'd
    /// commands stay as unrestricted as their workload).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let devices = match &self.hierarchy {
            Hierarchy::V1 { .. } => self.dir_for("devices").ok(),
            Hierarchy::V2 { .. } => None,
        };
        for p in self.paths() {
            if devices.as_ref() == Some(&p) && !p.exists() {
                continue;
            }
            self.write(&p, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Host pids in the cgroup (union over hierarchies).
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .paths()
            .iter()
            .filter_map(|p| std::fs::read_to_string(p.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How many processes the kernel OOM-killed in this cgroup (`oom_kill` of
    /// memory.events on v2 / memory.oom_control on v1; v1 kernels before 4.13
    /// lack the counter, then a non-zero memory.failcnt counts as one).
    pub fn oom_kills(&self) -> u64 {
        let Ok(dir) = self.dir_for("memory") else {
            return 0;
        };
        let file = match self.hierarchy {
            Hierarchy::V2 { .. } => "memory.events",
            Hierarchy::V1 { .. } => "memory.oom_control",
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if let Some(n) = text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
        {
            return n;
        }
        match self.hierarchy {
            Hierarchy::V1 { .. } => std::fs::read_to_string(dir.join("memory.failcnt"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|n| u64::from(n > 0))
                .unwrap_or(0),
            Hierarchy::V2 { .. } => 0,
        }
    }

    /// CPU time, memory and pid usage.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let num = |s: String| s.trim().parse::<u64>().unwrap_or(0);
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let dir = self.dir_for("memory")?;
                let cpu = self.read(&dir, "cpu.stat")?;
                let usec = cpu
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .map(|v| v.trim().parse::<u64>().unwrap_or(0));
                Ok(CgroupStats {
                    cpu_usage_ns: usec.unwrap_or(0) * 1000,
                    memory_bytes: num(self.read(&dir, "memory.current")?),
                    pids: num(self.read(&dir, "pids.current")?),
                })
            }
            Hierarchy::V1 { .. } => Ok(CgroupStats {
                cpu_usage_ns: num(self.read(&self.dir_for("cpuacct")?, "cpuacct.usage")?),
                memory_bytes: num(self.read(&self.dir_for("memory")?, "memory.usage_in_bytes")?),
                pids: num(self.read(&self.dir_for("pids")?, "pids.current")?),
            }),
        }
    }

    /// SIGKILLs every process in the cgroup.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what is left and removes every directory (idempotent). Fails if
    /// processes survive for `timeout`, naming the directory.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        for p in self.paths() {
            loop {
                match std::fs::remove_dir(&p) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        if Instant::now() >= deadline {
                            return Err(CgroupError::Busy {
                                id: self.id.clone(),
                                path: p,
                            });
                        }
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(self.io("removing", &p)(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
37 30 0:33 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
";

    #[test]
    fn hybrid_is_v1_and_comounted_controllers_share_a_dir() {
        let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
        let cg = Cgroup::new(h, "/berth/", "c1");
        assert_eq!(
            cg.paths(),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/c1"),
                PathBuf::from("/sys/fs/cgroup/memory/berth/c1"),
                PathBuf::from("/sys/fs/cgroup/pids/berth/c1"),
            ]
        );
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(v2),
            Some(Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(
            Hierarchy::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn monitor_cgroup_is_a_sibling_in_every_hierarchy() {
        let mounts = hierarchy_mounts(HYBRID);
        assert_eq!(mounts.len(), 5, "{mounts:?}");
        let m = MonitorCgroup::new(&mounts, "/berth/", "c1");
        assert!(m
            .paths()
            .contains(&PathBuf::from("/sys/fs/cgroup/systemd/berth/c1.monitor")));
        assert!(m
            .paths()
            .contains(&PathBuf::from("/sys/fs/cgroup/unified/berth/c1.monitor")));
        assert!(m
            .paths()
            .contains(&PathBuf::from("/sys/fs/cgroup/memory/berth/c1.monitor")));
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let m = MonitorCgroup::new(&hierarchy_mounts(v2), "system.slice/berth", "c1");
        assert_eq!(
            m.paths(),
            [PathBuf::from(
                "/sys/fs/cgroup/system.slice/berth/c1.monitor"
            )]
        );
        assert!(hierarchy_mounts("1 0 0:1 / / rw - ext4 /dev/sda rw\n").is_empty());
    }

    #[test]
    fn cpu_conversions() {
        assert_eq!(cfs_quota_us(200), 20_000);
        assert_eq!(cfs_quota_us(1500), 150_000);
        assert_eq!(cfs_quota_us(1), 1000);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
    }
}
