//! The container's init: the monitor's child that becomes the container's
//! PID 1. It waits for the monitor to place it in its cgroup, enters the other
//! namespaces, writes the sysctls, builds the rootfs, applies stdio, user,
//! capabilities ([`super::capabilities`]), `no_new_privs`, closes
//! every fd but 0/1/2, installs the seccomp filter and `execve`s the workload
//! directly: no agent code runs after exec. With `init = true` it forks the
//! workload after the rootfs and stays PID 1 ([`super::init`]). Any failure
//! before exec is reported to the monitor as JSON on a close-on-exec pipe.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, CapsHashSet};
use serde::{Deserialize, Serialize};

use super::config::DiskConfig;
use super::namespaces::{NamespaceError, Namespaces};
use super::rootfs::{RootfsError, RootfsPlan};
use super::seccomp::Filter;
use super::stages::Stamps;
use super::syscall::RealSys;
use super::sysctl::{self, SysctlError};
use crate::sys::process::{self as sysproc, Forked};

pub use super::capabilities::DEFAULT_CAPS;

/// The `CapEff` mask a root workload ends up with by default (`/proc/<pid>/status` format).
pub fn default_caps_mask() -> u64 {
    super::capabilities::mask(&DEFAULT_CAPS.iter().copied().collect())
}

/// PATH used when the config's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step of the init that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("container {id}: the monitor went away before releasing the init")]
    MonitorGone { id: String },
    #[error(transparent)]
    Namespaces(#[from] NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Userns(#[from] super::userns::UsernsError),
    #[error("container {id}: {step}: {source}")]
    Setup {
        id: String,
        step: &'static str,
        source: nix::Error,
    },
    #[error("container {id}: {source}")]
    BadCapability {
        id: String,
        source: super::capabilities::CapabilityError,
    },
    #[error("container {id}: capabilities ({step}): {source}")]
    Capabilities {
        id: String,
        step: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("container {id}: executable {cmd:?} not found in PATH {path:?}")]
    NotFound {
        id: String,
        cmd: String,
        path: String,
    },
    #[error("container {id}: exec {path}: {source}")]
    Exec {
        id: String,
        path: PathBuf,
        source: nix::Error,
    },
}

impl ProcessError {
    /// A short name of the failed step (reported to the agent).
    pub fn step(&self) -> &'static str {
        match self {
            ProcessError::MonitorGone { .. } => "wait for monitor",
            ProcessError::Namespaces(_) => "namespaces",
            ProcessError::Rootfs(_) => "rootfs",
            ProcessError::Sysctl(_) => "sysctl",
            ProcessError::Userns(_) => "user namespace",
            ProcessError::Setup { step, .. } => step,
            ProcessError::Capabilities { .. } | ProcessError::BadCapability { .. } => {
                "capabilities"
            }
            ProcessError::NotFound { .. } => "find executable",
            ProcessError::Exec { .. } => "exec",
        }
    }
}

/// How a failed start is reported from init to monitor to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFailure {
    pub step: String,
    pub message: String,
}

/// The fds the init gets from the monitor.
#[derive(Debug)]
pub struct InitFds {
    /// Read end: one byte once the init is in its cgroup; EOF means abort.
    pub go: OwnedFd,
    /// Write end (close-on-exec): an [`InitFailure`] on error, EOF on successful exec.
    pub report: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// `<dir>/stages` when tracing ([`super::stages`]); written right before `execve`.
    pub stages: Option<OwnedFd>,
}

/// Runs the init in the forked child; never returns. `filter` (compiled by the
/// monitor before the fork) is installed right before `execve`. With
/// `init = true` the init forks the workload after building the rootfs and
/// stays PID 1 itself (see [`super::init`]). `stamps` records the stages
/// when tracing.
pub fn init_main(
    dir: &Path,
    cfg: &DiskConfig,
    fds: InitFds,
    filter: &Filter,
    mut stamps: Stamps,
) -> ! {
    let InitFds {
        go,
        report,
        stdout,
        stderr,
        stages,
    } = fds;
    let prepared = prepare(dir, cfg, &go, &stdout, &stderr, &mut stamps);
    // stdout/stderr are fds 1 and 2 by now; nothing else is needed but `report`.
    drop((go, stdout, stderr));
    let forked = prepared.and_then(|()| {
        if cfg.container.init {
            super::init::fork_workload(&cfg.container.id)
        } else {
            Ok(Forked::Child)
        }
    });
    let err = match forked {
        Ok(Forked::Child) => match exec_workload(cfg, filter, &mut stamps, stages) {
            Ok(never) => match never {},
            Err(e) => e,
        },
        Ok(Forked::Parent(workload)) => {
            // PID 1 keeps no host file open.
            drop(stages);
            match super::init::become_init(cfg, filter) {
                Ok(()) => {
                    // The workload holds the other copy: EOF once it has exec'd.
                    drop(report);
                    sysproc::exit_now(super::init::supervise(workload.as_raw()))
                }
                Err(e) => {
                    let _ = sysproc::send_signal(workload.as_raw(), libc::SIGKILL);
                    e
                }
            }
        }
        Err(e) => e,
    };
    let failure = InitFailure {
        step: err.step().into(),
        message: err.to_string(),
    };
    let bytes = serde_json::to_vec(&failure).unwrap_or_default();
    let _ = nix::unistd::write(&report, &bytes);
    sysproc::exit_now(127)
}

/// Builds the rootfs plan of the container in `dir`.
pub fn rootfs_plan<'a>(dir: &Path, cfg: &'a DiskConfig) -> RootfsPlan<'a> {
    let c = &cfg.container;
    RootfsPlan {
        id: &c.id,
        lowerdirs: &c.lowerdirs,
        upper: dir.join("upper"),
        work: dir.join("work"),
        merged: dir.join("merged"),
        etc_files: [
            (dir.join("hostname"), "/etc/hostname"),
            (dir.join("hosts"), "/etc/hosts"),
            (dir.join("resolv.conf"), "/etc/resolv.conf"),
        ],
        mounts: &c.mounts,
        readonly_rootfs: c.readonly_rootfs,
        cwd: &c.cwd,
    }
}

/// `ProcessError::Setup` for a failed `step` of container `id`, as a
/// `map_err` argument.
fn setup_error<'a>(
    id: &'a str,
    step: &'static str,
) -> impl FnOnce(nix::Error) -> ProcessError + 'a {
    move |source| ProcessError::Setup {
        id: id.into(),
        step,
        source,
    }
}

/// Everything before the user changes: wait for the cgroup, namespaces,
/// sysctls, rootfs, stdio.
fn prepare(
    dir: &Path,
    cfg: &DiskConfig,
    go: &OwnedFd,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    stamps: &mut Stamps,
) -> Result<(), ProcessError> {
    let c = &cfg.container;
    let id = c.id.as_str();
    let setup = |step| setup_error(id, step);
    // Nothing may ptrace us or open our /proc entries while we still run agent code.
    nix::sys::prctl::set_dumpable(false).map_err(setup("set non-dumpable"))?;

    let mut byte = [0u8; 1];
    if nix::unistd::read(go, &mut byte).map_err(setup("wait for monitor"))? != 1 {
        return Err(ProcessError::MonitorGone { id: id.into() });
    }
    stamps.stamp("init.go");

    // Made while this process still sees the host's /proc.
    let userns = match c.userns {
        Some(range) => Some(super::userns::create(id, range)?),
        None => None,
    };
    stamps.stamp("init.userns");
    if let Some(netns) = &c.netns {
        Namespaces::join_net(id, netns)?;
    }
    Namespaces::for_netns(c.netns.as_deref()).enter_in_init(id, &c.name)?;
    stamps.stamp("init.namespaces");
    // In the container's net/ipc/uts namespaces now; the rootfs's /proc/sys
    // will be read-only, so through the host's /proc (which shows ours).
    sysctl::apply(id, Path::new("/proc/sys"), &sysctl::plan(&c.sysctls))?;
    stamps.stamp("init.sysctl");
    match &userns {
        Some(ns) => {
            let (lowers, mounts) =
                super::userns::idmap_sources(id, dir, &c.lowerdirs, &c.mounts, ns)?;
            stamps.stamp("init.idmap");
            let mut plan = rootfs_plan(dir, cfg);
            plan.lowerdirs = &lowers;
            plan.mounts = &mounts;
            crate::runtime::rootfs::setup_traced(&mut RealSys, &plan, stamps)?;
        }
        None => {
            stamps.stamp("init.idmap");
            crate::runtime::rootfs::setup_traced(&mut RealSys, &rootfs_plan(dir, cfg), stamps)?
        }
    }

    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(setup("open /dev/null"))?;
    nix::unistd::dup2_stdin(null.as_fd()).map_err(setup("stdin"))?;
    nix::unistd::dup2_stdout(stdout.as_fd()).map_err(setup("stdout"))?;
    nix::unistd::dup2_stderr(stderr.as_fd()).map_err(setup("stderr"))?;
    stamps.stamp("init.stdio");
    // Last: from here on this process has capabilities only over its own
    // user namespace, which owns none of the others.
    if let Some(ns) = &userns {
        super::userns::join(id, ns)?;
    }
    Ok(())
}

/// The rest, in the process that becomes the workload: user, capabilities,
/// `no_new_privs`, default signals, fds, seccomp, `execve`; the stamps go to
/// `stages` (when tracing) right before `execve`.
fn exec_workload(
    cfg: &DiskConfig,
    filter: &Filter,
    stamps: &mut Stamps,
    stages: Option<OwnedFd>,
) -> Result<Infallible, ProcessError> {
    let c = &cfg.container;
    let id = c.id.as_str();
    let setup = |step| setup_error(id, step);
    set_identity_and_caps(cfg)?;
    stamps.stamp("init.identity");
    let exe = find_executable(cfg)?;
    nix::sys::prctl::set_no_new_privs().map_err(setup("no_new_privs"))?;
    sysproc::reset_signals().map_err(|e| ProcessError::Setup {
        id: id.into(),
        step: "reset signals",
        source: io_errno(&e),
    })?;
    // Only 0, 1 and 2 survive exec (the report pipe closes on exec, telling the monitor we made it).
    sysproc::cloexec_from(3).map_err(|e| ProcessError::Setup {
        id: id.into(),
        step: "close fds",
        source: io_errno(&e),
    })?;

    let args: Vec<CString> = c
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = c
        .env
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let path = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    stamps.stamp("init.exec-prep");
    // Last: from here on the denied syscalls fail, and nothing but execve follows.
    filter.apply().map_err(|e| ProcessError::Setup {
        id: id.into(),
        step: "seccomp",
        source: e.errno(),
    })?;
    stamps.stamp("init.seccomp");
    if let Some(fd) = stages {
        stamps.flush_to(&fd);
    }
    let source = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(ProcessError::Exec {
        id: id.into(),
        path: exe,
        source,
    })
}

pub(crate) fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Sets the container's user and groups and its capabilities
/// ([`super::capabilities::effective`] of its `cap_add`/`cap_drop`; none in
/// the effective set for a non-root uid); the bounding set is always reduced.
pub(crate) fn set_identity_and_caps(cfg: &DiskConfig) -> Result<(), ProcessError> {
    set_identity_keeping(cfg, &container_caps(cfg)?)
}

/// The container's capability set (see [`super::capabilities`]).
pub(crate) fn container_caps(cfg: &DiskConfig) -> Result<CapsHashSet, ProcessError> {
    let c = &cfg.container;
    super::capabilities::effective(&c.cap_add, &c.cap_drop).map_err(|source| {
        ProcessError::BadCapability {
            id: c.id.clone(),
            source,
        }
    })
}

/// Sets the container's user and groups and reduces the bounding set to
/// `root_caps`; the permitted and effective sets become `root_caps` for
/// uid 0 and empty for any other uid (as Docker); the inheritable and
/// ambient sets are always emptied (Docker clears them: CVE-2022-24769).
/// Capabilities the running kernel does not have are left out.
pub(crate) fn set_identity_keeping(
    cfg: &DiskConfig,
    root_caps: &CapsHashSet,
) -> Result<(), ProcessError> {
    let c = &cfg.container;
    let id = c.id.as_str();
    let capserr = |step: &'static str| {
        move |source| ProcessError::Capabilities {
            id: id.into(),
            step,
            source,
        }
    };
    let setup = |step| setup_error(id, step);
    let supported = caps::runtime::thread_all_supported();
    let keep: CapsHashSet = root_caps.intersection(&supported).copied().collect();

    // Bounding set first: dropping needs CAP_SETPCAP, which a non-root uid loses.
    for cap in &supported {
        if !keep.contains(cap) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(capserr("drop bounding"))?;
        }
    }
    let gids: Vec<nix::unistd::Gid> = c
        .user
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(setup("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(c.user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(setup("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(c.user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(setup("setresuid"))?;

    caps::clear(None, CapSet::Ambient).map_err(capserr("clear ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(capserr("inheritable"))?;
    if c.user.uid == 0 {
        caps::set(None, CapSet::Effective, &keep).map_err(capserr("effective"))?;
        caps::set(None, CapSet::Permitted, &keep).map_err(capserr("permitted"))?;
    } else {
        // As Docker: a non-root workload starts with no capabilities (bounding still reduced).
        caps::clear(None, CapSet::Effective).map_err(capserr("effective"))?;
        caps::clear(None, CapSet::Permitted).map_err(capserr("permitted"))?;
    }
    Ok(())
}

/// `args[0]` as is when it contains a `/`, else the first executable match in
/// the config's `PATH` (resolved inside the container, after pivot_root).
fn find_executable(cfg: &DiskConfig) -> Result<PathBuf, ProcessError> {
    let c = &cfg.container;
    let cmd = &c.args[0];
    find_in_path(cmd, &c.env).map_err(|path| ProcessError::NotFound {
        id: c.id.clone(),
        cmd: cmd.clone(),
        path,
    })
}

/// `cmd` as is when it contains a `/`, else the first executable regular file
/// named `cmd` in `PATH` of `env` ([`DEFAULT_PATH`] without one), searched in
/// the caller's root. `Err` carries the `PATH` searched.
pub(crate) fn find_in_path(cmd: &str, env: &[String]) -> Result<PathBuf, String> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(path.into())
}
