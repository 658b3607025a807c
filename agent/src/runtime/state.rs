//! What the runtime reads back about containers, all from disk and /proc so
//! a fresh [`Runtime`] re-adopts what an earlier agent started: a container's
//! state (`exit.json`, `state.json`, the PID 1's start time), its info, the
//! list of all containers, its log files and its cgroup stats. A [`Cache`]
//! keeps what was written once (config, start state) and pidfds of running
//! processes, so listing many running containers reads no file again; the
//! agent may take copies of those pidfds to wake when a process exits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
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

/// What a [`Runtime`] (and its clones) remembers between reads, so that a
/// list of a thousand running containers does not parse a thousand
/// `config.json`s and read two `/proc/<pid>/stat` each (the reconciler
/// lists every pass): each container's parsed `config.json` (written once
/// at create; re-read if its inode, size or mtime changed), and for a
/// running container its `state.json` (written once at start) with pidfds
/// of its PID 1 and monitor — a pidfd never names another process and
/// turns readable when its process exits, so "still running" is two polls.
/// Entries go on teardown and when a list no longer sees the container.
#[derive(Debug, Default)]
pub(super) struct Cache {
    configs: HashMap<String, CachedConfig>,
    running: HashMap<String, Watched>,
    /// Copies of newly watched pidfds not yet taken
    /// ([`Runtime::take_exit_fds`]); `None` until asked for
    /// ([`Runtime::watch_exits`]), so nothing piles up unread.
    exit_fds: Option<Vec<OwnedFd>>,
    /// Running containers the last list could not watch (no pidfd).
    unwatched: usize,
}

/// The parts of a `config.json` a [`ContainerInfo`] carries.
#[derive(Debug)]
struct CachedConfig {
    /// Inode, size, mtime (s, ns) of the file parsed.
    key: (u64, u64, i64, i64),
    name: String,
    labels: BTreeMap<String, String>,
    created_at: SystemTime,
}

/// A running container's start state and pidfds of its PID 1 and monitor.
#[derive(Debug)]
struct Watched {
    /// Inode, size, mtime (s, ns) of the `state.json` that `st` came from.
    key: (u64, u64, i64, i64),
    st: StateFile,
    pid: OwnedFd,
    monitor: OwnedFd,
}

/// Whether the process of `pidfd` has exited (a poll that cannot tell says yes:
/// the caller then reads the files, as without a pidfd).
fn has_exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

fn file_key(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec())
}

impl Runtime {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops what the cache holds of container `id` (it is being removed).
    pub(super) fn forget(&self, id: &str) {
        let mut cache = self.cache();
        cache.configs.remove(id);
        cache.running.remove(id);
    }

    /// Reads the container's info from disk (re-adoption after a restart is just this).
    pub fn info(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        let path = dir.join("config.json");
        let mut dir_known = false;
        let (name, labels, created_at) = match std::fs::metadata(&path) {
            Ok(meta) => {
                dir_known = true;
                let key = file_key(&meta);
                let cached = self
                    .cache()
                    .configs
                    .get(id)
                    .filter(|c| c.key == key)
                    .map(|c| (c.name.clone(), c.labels.clone(), c.created_at));
                match cached {
                    Some(c) => c,
                    None => {
                        let cfg = config::read_disk_config(id, &path)?;
                        let c = CachedConfig {
                            key,
                            name: cfg.container.name,
                            labels: cfg.container.labels,
                            created_at: config::ms_to_time(cfg.created_at_ms),
                        };
                        let out = (c.name.clone(), c.labels.clone(), c.created_at);
                        self.cache().configs.insert(id.to_string(), c);
                        out
                    }
                }
            }
            Err(_) => {
                if !dir.is_dir() {
                    return Err(RuntimeError::NotFound { id: id.into() });
                }
                // Names the file and why it cannot be read.
                let cfg = config::read_disk_config(id, &path)?;
                (
                    cfg.container.name,
                    cfg.container.labels,
                    config::ms_to_time(cfg.created_at_ms),
                )
            }
        };
        Ok(ContainerInfo {
            id: id.into(),
            name,
            labels,
            created_at,
            state: if dir_known {
                self.state_in(id, &dir)
            } else {
                self.state(id)
            },
            dir,
        })
    }

    /// The configuration container `id` was created with (its
    /// `config.json`): address, network namespace, id map, labels.
    pub fn config(&self, id: &str) -> Result<super::ContainerConfig, RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        Ok(config::read_disk_config(id, &dir.join("config.json"))?.container)
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
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !config::valid_id(&id) {
                continue;
            }
            seen.insert(id.clone());
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
        let mut cache = self.cache();
        cache.configs.retain(|id, _| seen.contains(id));
        cache.running.retain(|id, _| seen.contains(id));
        cache.unwatched = out
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .filter(|c| !cache.running.contains_key(&c.id))
            .count();
        Ok(out)
    }

    /// From now on, keep a copy of each pidfd the cache starts watching
    /// (PID 1 and monitor of each running container) for
    /// [`Runtime::take_exit_fds`].
    pub fn watch_exits(&self) {
        self.cache().exit_fds.get_or_insert_with(Vec::new);
    }

    /// The pidfds watched since the last call (after [`Runtime::watch_exits`]):
    /// each turns readable when its process exits, which the agent waits for
    /// to reconcile at once instead of at its next resync.
    pub fn take_exit_fds(&self) -> Vec<OwnedFd> {
        self.cache()
            .exit_fds
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether every container the last [`Runtime::list`] saw running is
    /// watched through pidfds (so its exit can be waited for, not polled).
    pub fn all_running_watched(&self) -> bool {
        self.cache().unwatched == 0
    }

    /// The state of a container the cache watches, while both its
    /// processes run and its `state.json` is the one read (`None`: not
    /// watched, or something changed: read the files).
    fn watched_state(&self, id: &str, dir: &Path) -> Option<ContainerState> {
        let mut cache = self.cache();
        let w = cache.running.get(id)?;
        let same_file =
            std::fs::metadata(dir.join("state.json")).is_ok_and(|m| file_key(&m) == w.key);
        if !same_file || has_exited(&w.pid) || has_exited(&w.monitor) {
            cache.running.remove(id);
            return None;
        }
        Some(ContainerState::Running {
            pid: w.st.pid,
            started_at: config::ms_to_time(w.st.started_at_ms),
        })
    }

    /// Starts watching a container found running: pidfds of its PID 1 and
    /// monitor, kept only if both are still the processes `st` names after
    /// opening (so neither can be a recycled pid). Without pidfds (old
    /// kernel, no fds left) nothing is kept and the files are read each time.
    fn watch(&self, id: &str, dir: &Path, st: &StateFile) {
        use crate::sys::process::pidfd_open;
        let Ok(meta) = std::fs::metadata(dir.join("state.json")) else {
            return;
        };
        let (Ok(pid), Ok(monitor)) = (pidfd_open(st.pid), pidfd_open(st.monitor_pid)) else {
            return;
        };
        if alive(st.pid, st.pid_start) && alive(st.monitor_pid, st.monitor_start) {
            let mut cache = self.cache();
            if let Some(fds) = cache.exit_fds.as_mut() {
                fds.extend([pid.try_clone(), monitor.try_clone()].into_iter().flatten());
            }
            cache.running.insert(
                id.to_string(),
                Watched {
                    key: file_key(&meta),
                    st: *st,
                    pid,
                    monitor,
                },
            );
        }
    }

    /// The container's state from `exit.json`, `state.json` and /proc (pid + start time).
    pub fn state(&self, id: &str) -> ContainerState {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return ContainerState::NotFound;
        }
        self.state_in(id, &dir)
    }

    /// [`Runtime::state`] of container `id` whose directory `dir` is known
    /// to exist (one path lookup fewer per container of a list).
    fn state_in(&self, id: &str, dir: &Path) -> ContainerState {
        if let Some(state) = self.watched_state(id, dir) {
            return state;
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
                self.watch(id, dir, &st);
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

    fn test_runtime(tmp: &Path) -> Runtime {
        Runtime::new(super::super::RuntimePaths::new(
            tmp.join("state"),
            tmp.join("run"),
            "berth-test",
            "/nonexistent",
        ))
    }

    fn write_config(rt: &Runtime, id: &str, name: &str) {
        let dir = rt.container_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut container = super::super::ContainerConfig::new(id, vec![], vec!["true".into()]);
        container.name = name.into();
        let disk = config::DiskConfig {
            version: config::CONFIG_VERSION,
            container,
            cgroup_parent: "berth-test".into(),
            created_at_ms: 1_000,
            seccomp_profile: None,
        };
        config::write_json(id, &dir.join("config.json"), &disk).unwrap();
    }

    /// The cached config is the file's: a rewritten `config.json` is read
    /// again, and a container whose directory is gone leaves the cache.
    #[test]
    fn info_follows_the_config_file_and_a_list_forgets_the_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = test_runtime(tmp.path());
        write_config(&rt, "web-1", "first");
        write_config(&rt, "web-2", "other");
        assert_eq!(rt.info("web-1").unwrap().name, "first");
        assert_eq!(rt.info("web-1").unwrap().name, "first");
        write_config(&rt, "web-1", "second");
        assert_eq!(rt.info("web-1").unwrap().name, "second");
        assert_eq!(rt.list().unwrap().len(), 2);
        assert_eq!(rt.cache().configs.len(), 2);
        std::fs::remove_dir_all(rt.container_dir("web-2")).unwrap();
        assert!(matches!(
            rt.info("web-2"),
            Err(RuntimeError::NotFound { .. })
        ));
        let listed: Vec<String> = rt.list().unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(listed, ["web-1"]);
        assert_eq!(rt.cache().configs.len(), 1, "web-2 is forgotten");
        // A directory whose config.json is unreadable still lists (half-created).
        std::fs::remove_file(rt.container_dir("web-1").join("config.json")).unwrap();
        assert!(matches!(rt.info("web-1"), Err(RuntimeError::Config(_))));
    }

    /// A running container is watched through pidfds; once its PID 1 exits
    /// the files are read again (its exit.json), and the watch is dropped.
    #[test]
    fn a_watched_container_reads_exited_once_its_process_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = test_runtime(tmp.path());
        let id = "web-1";
        write_config(&rt, id, "web");
        let dir = rt.container_dir(id);
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let st = StateFile {
            pid,
            pid_start: proc_start(pid).unwrap(),
            monitor_pid: me,
            monitor_start: proc_start(me).unwrap(),
            started_at_ms: 1_000,
        };
        config::write_json(id, &dir.join("state.json"), &st).unwrap();
        assert!(matches!(rt.state(id), ContainerState::Running { pid: p, .. } if p == pid));
        assert!(
            rt.cache().running.contains_key(id),
            "watched once seen running"
        );
        assert!(matches!(rt.state(id), ContainerState::Running { pid: p, .. } if p == pid));
        child.kill().unwrap();
        child.wait().unwrap();
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
        assert!(!rt.cache().running.contains_key(id), "the watch is dropped");
        rt.forget(id);
        assert!(rt.cache().configs.is_empty());
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
