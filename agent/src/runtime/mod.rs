//! The container runtime: isolated containers (namespaces, cgroups, overlayfs,
//! pivot_root) that outlive the agent. [`Runtime`] keeps no state in memory:
//! everything lives in `<state_dir>/containers/<id>/` (config, state, exit, logs)
//! so a fresh `Runtime` re-adopts containers after an agent restart. Each
//! container has a small monitor process (see [`monitor`]) as parent of its PID 1.
//! [`Runtime`]'s verbs live one per file, as in youki's libcontainer: `create`
//! (create and start), `stop`, `delete` (remove), `exec`, `state` (state, info,
//! list, logs, stats), `wait`; `spawn` starts their helper processes.
//! See docs/runtime.md for the design, including the CVE-2019-5736 mitigation.

pub mod capabilities;
pub mod cgroups;
pub mod config;
mod create;
pub mod crilog;
mod delete;
pub mod devices;
pub mod exec;
pub mod init;
pub mod monitor;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
mod spawn;
pub mod stages;
mod state;
mod stop;
pub mod syscall;
pub mod sysctl;
pub mod userns;
mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cgroups::CgroupStats;
pub use config::{ContainerConfig, Mount, MountKind, User};
pub use crilog::{LogFile, Stream};
pub use delete::mounts_under;
pub use exec::{exec_main, ExecOutput, EXEC_SUBCOMMAND};
pub use monitor::monitor_main;
pub(crate) use state::proc_start;
pub use state::{ContainerInfo, ContainerState, ExitInfo};

use cgroups::{Cgroup, Hierarchy};

/// The hidden subcommand the monitor runs as (`berthd __monitor <dir>`).
pub const MONITOR_SUBCOMMAND: &str = "__monitor";

/// Where the runtime keeps things and how it starts monitors.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    /// Containers live in `<state_dir>/containers/<id>/`.
    pub state_dir: PathBuf,
    /// Runtime-only files (reserved; nothing is written there yet).
    pub run_dir: PathBuf,
    /// Cgroups are `<cgroup_parent>/<id>` in every hierarchy, e.g. `berth`.
    pub cgroup_parent: String,
    /// The executable that understands `monitor_args` (normally berthd itself).
    pub monitor_exe: PathBuf,
    /// Arguments before the container directory, normally `["__monitor"]`.
    pub monitor_args: Vec<String>,
    /// Arguments `monitor_exe` runs an exec helper with, before
    /// `<dir> <timeout-ms> -- <command>…`; normally `["__exec"]`.
    pub exec_args: Vec<String>,
    /// Record stage timestamps of every start in `<dir>/stages` (see
    /// [`stages`]); off by default (benchmarks turn it on).
    pub trace_stages: bool,
}

impl RuntimePaths {
    /// Paths with the monitor being `monitor_exe __monitor`.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
        cgroup_parent: &str,
        monitor_exe: impl Into<PathBuf>,
    ) -> Self {
        RuntimePaths {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            cgroup_parent: cgroup_parent.into(),
            monitor_exe: monitor_exe.into(),
            monitor_args: vec![MONITOR_SUBCOMMAND.into()],
            exec_args: vec![EXEC_SUBCOMMAND.into()],
            trace_stages: false,
        }
    }
}

/// Any runtime failure; every variant names the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: not found")]
    NotFound { id: String },
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    #[error("container {id}: is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error("container {id}: {step} {path}: {source}")]
    Io {
        id: String,
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("container {id}: no usable cgroup hierarchy (cgroup v1 controllers or cgroup2 at /sys/fs/cgroup)")]
    NoCgroups { id: String },
    #[error("container {id}: starting the monitor {exe}: {source}")]
    SpawnMonitor {
        id: String,
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: start failed at {step}: {message}")]
    Start {
        id: String,
        step: String,
        message: String,
    },
    #[error("container {id}: the monitor gave no usable report: {output:?}")]
    MonitorProtocol { id: String, output: String },
    #[error("container {id}: sending signal {signal}: {source}")]
    Signal {
        id: String,
        signal: i32,
        source: std::io::Error,
    },
    #[error("container {id}: still running {waited:?} after SIGKILL")]
    StopTimeout { id: String, waited: Duration },
    #[error("container {id}: its monitor died; the exit status is unknown")]
    MonitorLost { id: String },
    #[error("container {id}: {error}; undoing the create also failed: {cleanup}")]
    CreateFailed {
        id: String,
        error: Box<RuntimeError>,
        cleanup: Box<RuntimeError>,
    },
    #[error("container {id}: cleanup failed: {}", .failures.join("; "))]
    Cleanup { id: String, failures: Vec<String> },
    /// `exec` could not run the command at all (a command that ran, or was not
    /// found in the container, is an [`ExecOutput`] instead).
    #[error("container {id}: exec failed at {step}: {message}")]
    Exec {
        id: String,
        step: String,
        message: String,
    },
}

/// The container runtime. Cheap to create; all state is on disk (what it
/// remembers in memory is only a cache of files written once).
///
/// CVE-2019-5736 (`/proc/self/exe` overwrite): the monitor — and so the init it
/// forks — is exec'd from a read-only bind mount of the agent binary that is
/// lazily detached right after exec, so `/proc/<pid>/exe` of every process that
/// could be reached from a container names a read-only mount (`EROFS` on any
/// reopen for writing); the init is also non-dumpable until it execs the
/// workload directly, so no agent code ever runs after exec.
#[derive(Debug, Clone)]
pub struct Runtime {
    paths: RuntimePaths,
    hierarchy: Option<Hierarchy>,
    /// What never changes about a container once written, shared by clones
    /// (see [`state::Cache`]); the files stay the truth.
    cache: std::sync::Arc<std::sync::Mutex<state::Cache>>,
    /// Seccomp filters compiled by this agent, shared by its clones.
    seccomp: std::sync::Arc<seccomp::FilterCache>,
    /// The detached read-only clone of `monitor_exe` helpers are exec'd
    /// from (made at the first start; `None`: this kernel has no `open_tree`).
    exe_clone: std::sync::Arc<std::sync::OnceLock<Option<std::os::fd::OwnedFd>>>,
}

impl Runtime {
    pub fn new(paths: RuntimePaths) -> Self {
        Runtime {
            paths,
            hierarchy: Hierarchy::detect(),
            cache: Default::default(),
            seccomp: Default::default(),
            exe_clone: Default::default(),
        }
    }

    pub fn paths(&self) -> &RuntimePaths {
        &self.paths
    }

    fn containers_dir(&self) -> PathBuf {
        self.paths.state_dir.join("containers")
    }

    /// `<state_dir>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// The cgroup of container `id`.
    pub fn cgroup(&self, id: &str) -> Result<Cgroup, RuntimeError> {
        let h = self
            .hierarchy
            .clone()
            .ok_or_else(|| RuntimeError::NoCgroups { id: id.into() })?;
        Ok(Cgroup::new(h, &self.paths.cgroup_parent, id))
    }

    /// The [`RuntimeError::Io`] of one filesystem `step` on `path`.
    fn io(
        id: &str,
        step: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let (id, path) = (id.to_string(), path.to_path_buf());
        move |source| RuntimeError::Io {
            id,
            step,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_failed_undo_reports_both_errors() {
        let e = RuntimeError::CreateFailed {
            id: "c1".into(),
            error: Box::new(RuntimeError::Start {
                id: "c1".into(),
                step: "rootfs".into(),
                message: "boom".into(),
            }),
            cleanup: Box::new(RuntimeError::Cleanup {
                id: "c1".into(),
                failures: vec!["removing /x: busy".into()],
            }),
        };
        let s = e.to_string();
        assert!(
            s.contains("rootfs") && s.contains("boom") && s.contains("removing /x: busy"),
            "{s}"
        );
    }
}
