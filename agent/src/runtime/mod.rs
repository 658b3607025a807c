//! The container runtime: isolated containers (namespaces, cgroups, overlayfs,
//! pivot_root) that outlive the agent. [`Runtime`] keeps no state in memory:
//! everything lives in `<state_dir>/containers/<id>/` (config, state, exit, logs)
//! so a fresh `Runtime` re-adopts containers after an agent restart. Each
//! container has a small monitor process (see [`monitor`]) as parent of its PID 1.
//! See docs/runtime.md for the design, including the CVE-2019-5736 mitigation.

pub mod cgroups;
pub mod config;
pub mod crilog;
pub mod exec;
pub mod init;
pub mod monitor;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod syscall;
pub mod sysctl;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

pub use cgroups::CgroupStats;
pub use config::{ContainerConfig, Mount, MountKind, User};
pub use crilog::{LogFile, Stream};
pub use exec::{exec_main, EXEC_SUBCOMMAND};
pub use monitor::monitor_main;

use cgroups::{Cgroup, Hierarchy, Limits};
use config::{DiskConfig, ExitFile, StateFile};
use monitor::MonitorReport;

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

/// The result of [`Runtime::exec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit status; 128 + signal when signalled; 124 on timeout; 127 when the
    /// command was not found and 126 when it could not be executed (as a shell).
    pub code: i32,
    /// Combined stdout and stderr, the first 4 KiB ([`exec::OUTPUT_CAP`]).
    pub output: String,
    pub timed_out: bool,
}

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
    /// The process is gone but no exit status was recorded (the monitor was killed).
    Unknown {
        reason: String,
    },
    NotFound,
}

impl ContainerState {
    fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
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

fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_start(pid) == Some(start)
}

/// The container runtime. Cheap to create; all state is on disk.
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
}

impl Runtime {
    pub fn new(paths: RuntimePaths) -> Self {
        Runtime {
            paths,
            hierarchy: Hierarchy::detect(),
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

    /// Creates the container and starts its workload; returns once the
    /// workload has been exec'd (or with the step that failed, after undoing
    /// everything create made).
    pub fn create_and_start(&self, cfg: &ContainerConfig) -> Result<ContainerInfo, RuntimeError> {
        cfg.validate()?;
        let id = cfg.id.as_str();
        let parent = self.containers_dir();
        std::fs::create_dir_all(&parent).map_err(Self::io(id, "creating", &parent))?;
        set_mode(&parent, 0o700).map_err(Self::io(id, "chmod", &parent))?;
        let dir = self.container_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: id.into() })
            }
            Err(e) => return Err(Self::io(id, "creating", &dir)(e)),
        }
        match self.create_inner(cfg, &dir) {
            Ok(()) => Ok(self.info(id)?),
            Err(error) => match self.teardown(id, &dir) {
                Ok(()) => Err(error),
                Err(cleanup) => Err(RuntimeError::CreateFailed {
                    id: id.into(),
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    fn create_inner(&self, cfg: &ContainerConfig, dir: &Path) -> Result<(), RuntimeError> {
        let id = cfg.id.as_str();
        set_mode(dir, 0o700).map_err(Self::io(id, "chmod", dir))?;
        for sub in ["upper", "work", "merged", "logs"] {
            let p = dir.join(sub);
            std::fs::create_dir(&p).map_err(Self::io(id, "creating", &p))?;
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hostname", format!("{}\n", cfg.name)),
            ("hosts", hosts_file(&cfg.name, cfg.address)),
            ("resolv.conf", resolv_conf(&host_resolv, cfg.dns_server)),
        ];
        for (name, content) in files {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(Self::io(id, "writing", &p))?;
        }
        let disk = DiskConfig {
            version: config::CONFIG_VERSION,
            container: cfg.clone(),
            cgroup_parent: self.paths.cgroup_parent.clone(),
            created_at_ms: config::now_ms(),
        };
        config::write_json(id, &dir.join("config.json"), &disk)?;
        let cgroup = self.cgroup(id)?;
        cgroup.create(&Limits {
            memory_bytes: cfg.memory_bytes,
            millicpus: cfg.millicpus,
            pids: cfg.pids,
        })?;

        let report = self.spawn_monitor(id, dir)?;
        match report {
            MonitorReport { state: Some(_), .. } => Ok(()),
            MonitorReport { error: Some(e), .. } => Err(RuntimeError::Start {
                id: id.into(),
                step: e.step,
                message: e.message,
            }),
            other => Err(RuntimeError::MonitorProtocol {
                id: id.into(),
                output: format!("{other:?}"),
            }),
        }
    }

    /// Starts `monitor_exe monitor_args... <dir>` from a read-only bind mount of
    /// the executable (detached once exec'd) and reads its one-line report.
    fn spawn_monitor(&self, id: &str, dir: &Path) -> Result<MonitorReport, RuntimeError> {
        let log = dir.join("monitor.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(Self::io(id, "opening", &log))?;
        let mut args: Vec<std::ffi::OsString> =
            self.paths.monitor_args.iter().map(Into::into).collect();
        args.push(dir.into());
        let mut child = self.spawn_from_ro_mount(
            id,
            &dir.join("monitor.exe"),
            &args,
            stderr.into(),
            |source| RuntimeError::SpawnMonitor {
                id: id.into(),
                exe: self.paths.monitor_exe.clone(),
                source,
            },
        )?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).map_err(Self::io(
                id,
                "reading the monitor's report from",
                &self.paths.monitor_exe,
            ))?;
        }
        let _ = child.wait();
        serde_json::from_str(out.trim()).map_err(|_| {
            let log = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
            RuntimeError::MonitorProtocol {
                id: id.into(),
                output: format!("{out}{log}"),
            }
        })
    }

    /// Runs `monitor_exe args...` (stdin `/dev/null`, stdout piped, empty env)
    /// from a read-only bind mount of it at `exe` that is lazily detached and
    /// removed as soon as the process has exec'd: its `/proc/<pid>/exe` then
    /// names a read-only mount nothing else can reach (CVE-2019-5736).
    fn spawn_from_ro_mount(
        &self,
        id: &str,
        exe: &Path,
        args: &[std::ffi::OsString],
        stderr: Stdio,
        spawn_err: impl FnOnce(std::io::Error) -> RuntimeError,
    ) -> Result<std::process::Child, RuntimeError> {
        std::fs::write(exe, b"").map_err(Self::io(id, "creating", exe))?;
        let mount_err = |step: &'static str, exe: &Path| {
            let (id, exe) = (id.to_string(), exe.to_path_buf());
            move |e: nix::Error| RuntimeError::Io {
                id,
                step,
                path: exe,
                source: e.into(),
            }
        };
        let bound = nix::mount::mount(
            Some(&self.paths.monitor_exe),
            exe,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("bind-mounting the monitor executable at", exe));
        if let Err(e) = bound {
            let _ = std::fs::remove_file(exe);
            return Err(e);
        }
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        let spawned = nix::mount::mount(None::<&str>, exe, None::<&str>, ro, None::<&str>)
            .map_err(mount_err("remounting read-only", exe))
            .and_then(|()| {
                Command::new(exe)
                    .args(args)
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(stderr)
                    .spawn()
                    .map_err(spawn_err)
            });
        // The running process keeps the detached read-only mount alive as its /proc/self/exe.
        let detached =
            nix::mount::umount2(exe, MntFlags::MNT_DETACH).map_err(mount_err("detaching", exe));
        let removed = std::fs::remove_file(exe).map_err(Self::io(id, "removing", exe));
        let child = spawned?;
        detached?;
        removed?;
        Ok(child)
    }

    /// Runs `args` inside the running container `id` (all its namespaces, its
    /// cgroup, user, capabilities, env and cwd, `no_new_privs`) and returns its
    /// exit code and first 4 KiB of combined output. After `timeout` the
    /// command is SIGKILLed (code 124, `timed_out`). Whatever it started in its
    /// session is killed when it ends. A command missing in the container is
    /// code 127 with a message in the output, not an error. The joining is done
    /// by a fresh `monitor_exe exec_args…` process started from a read-only
    /// mount (see [`exec`]); the calling process never changes namespaces.
    pub fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);

        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        let bad_args = |message: &str| RuntimeError::Exec {
            id: id.into(),
            step: "arguments".into(),
            message: message.into(),
        };
        if args.is_empty() || args[0].is_empty() {
            return Err(bad_args("the command is empty"));
        }
        if args.iter().any(|a| a.contains('\0')) {
            return Err(bad_args("arguments must not contain NUL"));
        }
        match self.state(id) {
            ContainerState::Running { .. } => {}
            other => {
                return Err(RuntimeError::NotRunning {
                    id: id.into(),
                    state: other.name().into(),
                })
            }
        }
        let mut argv: Vec<std::ffi::OsString> =
            self.paths.exec_args.iter().map(Into::into).collect();
        argv.push(dir.clone().into());
        argv.push(
            timeout
                .as_millis()
                .min(u128::from(u64::MAX))
                .to_string()
                .into(),
        );
        argv.push("--".into());
        argv.extend(args.iter().map(Into::into));
        let exe = dir.join(format!(
            "exec-{}-{}.exe",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self.spawn_from_ro_mount(id, &exe, &argv, Stdio::piped(), |source| {
            RuntimeError::Exec {
                id: id.into(),
                step: "starting the exec helper".into(),
                message: source.to_string(),
            }
        })?;
        let out = child.wait_with_output().map_err(|e| RuntimeError::Exec {
            id: id.into(),
            step: "waiting for the exec helper".into(),
            message: e.to_string(),
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: exec::ExecReport =
            serde_json::from_str(stdout.trim()).map_err(|_| RuntimeError::Exec {
                id: id.into(),
                step: "reading the exec helper's report".into(),
                message: format!(
                    "{}: {stdout:?} {:?}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            })?;
        match report.error {
            None => Ok(ExecOutput {
                code: report.code,
                output: exec::cap_output(report.output.as_bytes()),
                timed_out: report.timed_out,
            }),
            Some(e) if e.step == exec::STEP_NOT_RUNNING => Err(RuntimeError::NotRunning {
                id: id.into(),
                state: self.state(id).name().into(),
            }),
            Some(e) => Err(RuntimeError::Exec {
                id: id.into(),
                step: e.step,
                message: e.message,
            }),
        }
    }

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

    /// Sends `signal` (default: the config's stop signal), waits `timeout`
    /// (default: the config's), then SIGKILLs and waits for the exit status.
    pub fn stop(
        &self,
        id: &str,
        signal: Option<i32>,
        timeout: Option<Duration>,
    ) -> Result<ExitInfo, RuntimeError> {
        let dir = self.container_dir(id);
        let cfg = self
            .info(id)
            .and_then(|_| Ok(config::read_disk_config(id, &dir.join("config.json"))?))?;
        let signal = signal.unwrap_or(cfg.container.stop_signal);
        let timeout = timeout.unwrap_or(cfg.container.stop_timeout);
        match self.state(id) {
            ContainerState::Running { .. } => {}
            ContainerState::Exited {
                code,
                signal,
                oom_killed,
                finished_at,
            } => {
                return Ok(ExitInfo {
                    code,
                    signal,
                    oom_killed,
                    finished_at,
                })
            }
            ContainerState::Unknown { .. } => {
                return Err(RuntimeError::MonitorLost { id: id.into() })
            }
            other => {
                return Err(RuntimeError::NotRunning {
                    id: id.into(),
                    state: other.name().into(),
                })
            }
        }
        let st: StateFile = config::read_json(id, &dir.join("state.json"))?
            .ok_or_else(|| RuntimeError::NotFound { id: id.into() })?;
        self.signal(id, &st, signal)?;
        if let Some(r) = self.wait_exit(id, timeout) {
            return r;
        }
        self.signal(id, &st, libc::SIGKILL)?;
        // Also anything that escaped PID 1's death (there should be nothing).
        if let Ok(cg) = self.cgroup(id) {
            cg.kill_all();
        }
        let waited = Duration::from_secs(10);
        self.wait_exit(id, waited)
            .unwrap_or(Err(RuntimeError::StopTimeout {
                id: id.into(),
                waited,
            }))
    }

    /// Signals the container's PID 1 through a pidfd after checking its start
    /// time, so a recycled pid is never signalled.
    fn signal(&self, id: &str, st: &StateFile, signal: i32) -> Result<(), RuntimeError> {
        let sig_err = |source| RuntimeError::Signal {
            id: id.into(),
            signal,
            source,
        };
        let pidfd = match crate::sys::process::pidfd_open(st.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(sig_err(e)),
        };
        if !alive(st.pid, st.pid_start) {
            return Ok(());
        }
        match crate::sys::process::pidfd_send_signal(&pidfd, signal) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(sig_err(e)),
            _ => Ok(()),
        }
    }

    fn wait_exit(&self, id: &str, timeout: Duration) -> Option<Result<ExitInfo, RuntimeError>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.state(id) {
                ContainerState::Exited {
                    code,
                    signal,
                    oom_killed,
                    finished_at,
                } => {
                    return Some(Ok(ExitInfo {
                        code,
                        signal,
                        oom_killed,
                        finished_at,
                    }))
                }
                ContainerState::Running { .. } => {}
                ContainerState::Unknown { .. } => {
                    return Some(Err(RuntimeError::MonitorLost { id: id.into() }))
                }
                other => {
                    return Some(Err(RuntimeError::NotRunning {
                        id: id.into(),
                        state: other.name().into(),
                    }))
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the container: kills it if still running, waits for its monitor,
    /// unmounts anything left, deletes its cgroup (every hierarchy) and directory.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove_with(id, |_, _| {})
    }

    /// [`Runtime::remove`], calling `keep_logs` with the container's info and
    /// log files once its monitor has exited (every line is written) and
    /// before its directory is deleted, so the files can be moved away.
    pub fn remove_with(
        &self,
        id: &str,
        keep_logs: impl FnOnce(&ContainerInfo, &[LogFile]),
    ) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        if let ContainerState::Running { .. } = self.state(id) {
            match self.stop(id, Some(libc::SIGKILL), Some(Duration::ZERO)) {
                Ok(_) | Err(RuntimeError::MonitorLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The monitor writes into the directory until it exits.
        if let Ok(Some(st)) = config::read_json::<StateFile>(id, &dir.join("state.json")) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(st.monitor_pid, st.monitor_start) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let (Ok(info), Ok(files)) = (self.info(id), self.logs(id)) {
            keep_logs(&info, &files);
        }
        self.teardown(id, &dir)
    }

    /// Undoes everything create may have made; collects every failure.
    fn teardown(&self, id: &str, dir: &Path) -> Result<(), RuntimeError> {
        let mut failures = Vec::new();
        match self.cgroup(id) {
            Ok(cg) => {
                cg.kill_all();
                if let Err(e) = cg.remove(Duration::from_secs(5)) {
                    failures.push(e.to_string());
                }
            }
            Err(RuntimeError::NoCgroups { .. }) => {}
            Err(e) => failures.push(e.to_string()),
        }
        for m in mounts_under(dir) {
            if let Err(e) = nix::mount::umount2(&m, MntFlags::MNT_DETACH) {
                failures.push(format!("unmounting {}: {e}", m.display()));
            }
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("removing {}: {e}", dir.display())),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Cleanup {
                id: id.into(),
                failures,
            })
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

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The container's `/etc/hosts`, as Docker writes it: localhost lines, then
/// the hostname mapped to the container's `address` (to 127.0.0.1 and ::1
/// when it has none, i.e. without networking).
fn hosts_file(name: &str, address: Option<std::net::Ipv4Addr>) -> String {
    match address {
        Some(ip) => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n{ip}\t{name}\n"
        ),
        None => format!(
            "127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost ip6-loopback {name}\n"
        ),
    }
}

/// The container's `/etc/resolv.conf` from the host's (`host`).
///
/// With `dns_server` (berth-dns on the bridge gateway), as Docker writes it
/// for its embedded DNS: that one nameserver, the host's `search`/`domain`
/// and `options` lines, and `options ndots:0` unless the host sets ndots (so
/// a service name is asked as is, first). Without, the host's file minus
/// loopback nameservers (unreachable from the container's netns).
fn resolv_conf(host: &str, dns_server: Option<std::net::Ipv4Addr>) -> String {
    let keyword = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    match dns_server {
        Some(server) => {
            let mut out = format!(
                "# berth: service names resolve through berth-dns on the bridge gateway\nnameserver {server}\n"
            );
            for l in host.lines() {
                if matches!(keyword(l).as_str(), "search" | "domain" | "options") {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            let has_ndots = host
                .lines()
                .filter(|l| keyword(l) == "options")
                .any(|l| l.split_whitespace().any(|o| o.starts_with("ndots:")));
            if !has_ndots {
                out.push_str("options ndots:0\n");
            }
            out
        }
        None => host
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                !(w.next() == Some("nameserver")
                    && w.next()
                        .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
            })
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
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

    #[test]
    fn resolv_conf_points_at_berth_dns_or_keeps_the_host_resolvers() {
        let host = "# host\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0 trust-ad\n";
        let gw = "10.89.0.1".parse().ok();
        let cases: &[(&str, Option<std::net::Ipv4Addr>, &str)] = &[
            (
                host,
                gw,
                "# berth: service names resolve through berth-dns on the bridge gateway\n\
                 nameserver 10.89.0.1\nsearch corp.example\noptions edns0 trust-ad\noptions ndots:0\n",
            ),
            (
                "nameserver 192.0.2.1\noptions ndots:2\n",
                gw,
                "# berth: service names resolve through berth-dns on the bridge gateway\n\
                 nameserver 10.89.0.1\noptions ndots:2\n",
            ),
            (
                host,
                None,
                "# host\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0 trust-ad\n",
            ),
        ];
        for (host, server, want) in cases {
            assert_eq!(&resolv_conf(host, *server), want, "{host:?} {server:?}");
        }
    }

    #[test]
    fn hosts_maps_the_hostname_to_the_container_address() {
        let with = hosts_file("web-1", "10.89.0.7".parse().ok());
        assert!(
            with.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        assert!(with.ends_with("\n10.89.0.7\tweb-1\n"), "{with}");
        assert!(!with.contains("127.0.0.1\tlocalhost web-1"));
        let without = hosts_file("web-1", None);
        assert_eq!(
            without,
            "127.0.0.1\tlocalhost web-1\n::1\tlocalhost ip6-localhost ip6-loopback web-1\n"
        );
    }
}
