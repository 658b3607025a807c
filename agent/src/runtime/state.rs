//! What the runtime reads back about containers, all from disk and /proc so
//! a fresh [`Runtime`] re-adopts what an earlier agent started: a container's
//! state (`exit.json`, `state.json`, the PID 1's start time), its info, the
//! list of all containers, its log files and its cgroup stats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::cgroups::CgroupStats;
use super::config::{self, ExitFile, StateFile};
use super::crilog::{LogFile, Stream};
use super::{monitor, Runtime, RuntimeError};

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status, or 128 + signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: SystemTime,
}

impl From<ExitFile> for ExitInfo {
    fn from(e: ExitFile) -> Self {
        ExitInfo {
            code: e.code,
            signal: e.signal,
            oom_killed: e.oom_killed,
            finished_at: config::ms_to_time(e.finished_at_ms),
        }
    }
}

/// A container's state, derived from its files and /proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContainerState {
    /// The directory exists but the workload was never (or not yet) started.
    Created,
    Running {
        pid: i32,
        started_at: SystemTime,
    },
    Exited {
        code: i32,
        signal: Option<i32>,
        oom_killed: bool,
        finished_at: SystemTime,
    },
    /// The workload runs but its monitor died (it was killed): nothing
    /// captures its output or will record its exit. [`Runtime::stop`] stops
    /// it and records the exit itself, as containerd ends a task whose shim
    /// died; the reconciler does so at once and reports it.
    MonitorLost {
        pid: i32,
        monitor_pid: i32,
        started_at: SystemTime,
    },
    /// The process is gone but no exit status was recorded (the monitor was killed).
    Unknown {
        reason: String,
    },
    NotFound,
}

impl ContainerState {
    pub(super) fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
            ContainerState::MonitorLost { .. } => "running without its monitor",
            ContainerState::Exited { .. } => "exited",
            ContainerState::Unknown { .. } => "unknown",
            ContainerState::NotFound => "not found",
        }
    }
}

/// A container as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub created_at: SystemTime,
    pub state: ContainerState,
}

/// `/proc/<pid>/stat` start time (clock ticks since boot) of a live, non-zombie process.
pub(crate) fn proc_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start` (not a recycled pid).
pub(super) fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_start(pid) == Some(start)
}

impl Runtime {
    /// Reads the container's info from disk (re-adoption after a restart is just this).
    pub fn info(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        let cfg = config::read_disk_config(id, &dir.join("config.json"))?;
        Ok(ContainerInfo {
            id: id.into(),
            name: cfg.container.name,
            labels: cfg.container.labels,
            created_at: config::ms_to_time(cfg.created_at_ms),
            state: self.state(id),
            dir,
        })
    }

    /// Every container on disk, oldest first, with its current state.
    pub fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let dir = self.containers_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io("*", "listing", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !config::valid_id(&id) {
                continue;
            }
            match self.info(&id) {
                Ok(info) => out.push(info),
                // A directory without config.json is a create that died half-way.
                Err(RuntimeError::Config(_)) => out.push(ContainerInfo {
                    id: id.clone(),
                    name: id.clone(),
                    labels: BTreeMap::new(),
                    dir: entry.path(),
                    created_at: SystemTime::UNIX_EPOCH,
                    state: ContainerState::Created,
                }),
                // Removed while we were listing: it is simply gone.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// The container's state from `exit.json`, `state.json` and /proc (pid + start time).
    pub fn state(&self, id: &str) -> ContainerState {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return ContainerState::NotFound;
        }
        let exited = || {
            config::read_json::<ExitFile>(id, &dir.join("exit.json"))
                .ok()
                .flatten()
        };
        if let Some(e) = exited() {
            return exit_state(e);
        }
        let Ok(Some(st)) = config::read_json::<StateFile>(id, &dir.join("state.json")) else {
            return ContainerState::Created;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if alive(st.pid, st.pid_start) {
                // The monitor exits only after the workload: one gone while
                // the workload runs was killed.
                if !alive(st.monitor_pid, st.monitor_start) {
                    return ContainerState::MonitorLost {
                        pid: st.pid,
                        monitor_pid: st.monitor_pid,
                        started_at: config::ms_to_time(st.started_at_ms),
                    };
                }
                return ContainerState::Running {
                    pid: st.pid,
                    started_at: config::ms_to_time(st.started_at_ms),
                };
            }
            if let Some(e) = exited() {
                return exit_state(e);
            }
            // The workload is gone; a live monitor is about to write exit.json.
            if !alive(st.monitor_pid, st.monitor_start) || Instant::now() >= deadline {
                return exited().map(exit_state).unwrap_or(ContainerState::Unknown {
                    reason:
                        "the process is gone and its monitor died before recording the exit status"
                            .into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The container's existing log files in reading order: the rotated
    /// `container.log.1`, then `container.log` (CRI records). A container
    /// re-adopted from before the CRI format has `stdout.log[.1]` and
    /// `stderr.log[.1]` instead (raw text, listed per stream).
    pub fn logs(&self, id: &str) -> Result<Vec<LogFile>, RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        Ok(Self::logs_in(&dir))
    }

    /// The log files in a container directory, as [`Runtime::logs`] lists them.
    pub fn logs_in(container_dir: &Path) -> Vec<LogFile> {
        let logs = container_dir.join("logs");
        let mut out = Vec::new();
        for (name, stream) in [
            ("stdout.log", Stream::Stdout),
            ("stderr.log", Stream::Stderr),
            (monitor::LOG_NAME, Stream::Stdout),
        ] {
            let live = logs.join(name);
            for n in (1..monitor::LOG_FILES).rev() {
                let old = monitor::rotated(&live, n);
                if old.exists() {
                    out.push(LogFile { path: old, stream });
                }
            }
            if live.exists() || name == monitor::LOG_NAME {
                out.push(LogFile { path: live, stream });
            }
        }
        out
    }

    /// CPU time and memory from the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<CgroupStats, RuntimeError> {
        if !self.container_dir(id).is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        Ok(self.cgroup(id)?.stats()?)
    }
}

fn exit_state(e: ExitFile) -> ContainerState {
    ContainerState::Exited {
        code: e.code,
        signal: e.signal,
        oom_killed: e.oom_killed,
        finished_at: config::ms_to_time(e.finished_at_ms),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A workload alive with its monitor gone reads `MonitorLost`; with the
    /// monitor alive, `Running`; an `exit.json` wins over both.
    #[test]
    fn a_live_workload_without_its_monitor_is_monitor_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::new(super::super::RuntimePaths::new(
            tmp.path().join("state"),
            tmp.path().join("run"),
            "berth-test",
            "/nonexistent",
        ));
        let id = "web-1";
        let dir = rt.container_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id() as i32;
        let my_start = proc_start(me).unwrap();
        // A monitor that has exited: a reaped child's pid, its start time.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id() as i32;
        let dead_start = proc_start(dead).unwrap_or(1);
        child.wait().unwrap();
        let state = |monitor_pid, monitor_start| StateFile {
            pid: me,
            pid_start: my_start,
            monitor_pid,
            monitor_start,
            started_at_ms: 1_000,
        };
        config::write_json(id, &dir.join("state.json"), &state(dead, dead_start)).unwrap();
        assert_eq!(
            rt.state(id),
            ContainerState::MonitorLost {
                pid: me,
                monitor_pid: dead,
                started_at: config::ms_to_time(1_000),
            }
        );
        config::write_json(id, &dir.join("state.json"), &state(me, my_start)).unwrap();
        assert!(matches!(rt.state(id), ContainerState::Running { pid, .. } if pid == me));
        config::write_json(id, &dir.join("state.json"), &state(dead, dead_start)).unwrap();
        let exit = ExitFile {
            code: 137,
            signal: Some(9),
            oom_killed: false,
            finished_at_ms: 2_000,
        };
        config::write_json(id, &dir.join("exit.json"), &exit).unwrap();
        assert!(matches!(
            rt.state(id),
            ContainerState::Exited { code: 137, .. }
        ));
    }

    #[test]
    fn proc_start_reads_live_processes_only() {
        let me = std::process::id() as i32;
        assert!(proc_start(me).is_some());
        assert!(alive(me, proc_start(me).unwrap()));
        assert!(
            !alive(me, proc_start(me).unwrap() + 1),
            "a different start time is another process"
        );
        assert_eq!(proc_start(i32::MAX), None);
    }
}
