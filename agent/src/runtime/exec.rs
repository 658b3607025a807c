//! Running a command inside a running container (exec health checks, `docker
//! exec`-like): [`Runtime::exec`], the caller's side, and the hidden `__exec`
//! subcommand of the monitor binary that does the work.
//!
//! [`Runtime::exec`] starts `berth-monitor __exec <dir> <timeout-ms> --
//! args…` from a read-only, detached bind mount of the binary, exactly as it
//! starts monitors, so no process the container can reach has a writable
//! `/proc/<pid>/exe` (CVE-2019-5736). The agent never calls `setns` itself.
//!
//! The helper (single-threaded, non-dumpable, in the host's namespaces):
//! 1. re-checks the container's PID 1 through a pidfd opened *before* checking
//!    its start time (a recycled pid is never joined);
//! 2. `setns(pidfd, CLONE_NEWPID)`: only its children land in the container's
//!    PID namespace; the helper itself stays invisible to the container;
//! 3. forks the child, moves it into the container's cgroup (from the host's
//!    view of cgroupfs; the helper itself stays outside, so it does not count
//!    against the container's limits) and releases it through a pipe;
//! 4. relays the child's combined stdout+stderr (first [`OUTPUT_CAP`] bytes kept,
//!    the rest read and dropped), enforces the timeout (SIGKILL, code 124),
//!    then SIGKILLs whatever is left of the child's session and reaps it;
//! 5. prints one JSON [`ExecReport`] on its stdout and exits with the child's code.
//!
//! The child: non-dumpable, parent-death signal SIGKILL, `setsid` (its own
//! session, so the helper can kill everything it started), `setns(pidfd,
//! mnt|net|uts|ipc|cgroup)` (root and cwd become the container's), stdio
//! (stdin the host's `/dev/null`, stdout/stderr the pipe), the container's
//! user/groups and reduced capabilities, cwd, `no_new_privs`, default signals,
//! only fds 0/1/2 survive, the seccomp filter (compiled by the helper before
//! the fork), `execve` of the command with the container's env.
//! A command that cannot be found or executed ends with 127/126 and a message
//! in the output, as a shell would; other failures are reported as errors.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::cgroups::{Cgroup, Hierarchy};
use super::config::{self, DiskConfig, ExitFile, StateFile};
use super::namespaces::Namespaces;
use super::process::{self, InitFailure, ProcessError};
use super::seccomp::{self, Filter, SeccompError};
use super::{ContainerState, Runtime, RuntimeError};
use crate::sys::process::{self as sysproc, Forked};

/// The hidden subcommand (`berth-monitor __exec <dir> <timeout-ms> -- args…`).
pub const EXEC_SUBCOMMAND: &str = "__exec";
/// At most this many bytes of output are kept (as Docker keeps for health checks).
pub const OUTPUT_CAP: usize = 4096;
/// Exit code reported when the command ran out of time (as `timeout(1)`).
pub const TIMEOUT_CODE: i32 = 124;
/// The report's `error.step` when the container is not (or no longer) running.
pub const STEP_NOT_RUNNING: &str = "not running";

/// An exec step that failed (in the helper or in its child before `execve`).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec: usage: __exec <container-dir> <timeout-ms> -- <command> [args...]")]
    Usage,
    #[error("container {id}: is not running")]
    NotRunning { id: String },
    #[error("container {id}: exec: {step}: {source}")]
    Io {
        id: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("container {id}: exec: {step}: {source}")]
    Sys {
        id: String,
        step: &'static str,
        source: nix::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Cgroup(#[from] super::cgroups::CgroupError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("container {id}: no usable cgroup hierarchy")]
    NoCgroups { id: String },
    #[error("container {id}: exec: {source}")]
    Seccomp { id: String, source: SeccompError },
    #[error("container {id}: exec: {step}: {message}")]
    Child {
        id: String,
        step: String,
        message: String,
    },
}

impl ExecError {
    fn step(&self) -> String {
        match self {
            ExecError::Usage => "usage".into(),
            ExecError::NotRunning { .. } => STEP_NOT_RUNNING.into(),
            ExecError::Io { step, .. } | ExecError::Sys { step, .. } => (*step).into(),
            ExecError::Config(_) => "config".into(),
            ExecError::Cgroup(_) | ExecError::NoCgroups { .. } => "cgroup".into(),
            ExecError::Seccomp { .. } => "seccomp".into(),
            ExecError::Process(e) => e.step().into(),
            ExecError::Child { step, .. } => step.clone(),
        }
    }
}

/// What the helper prints on its stdout (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReport {
    /// Exit status, 128 + signal when signalled, [`TIMEOUT_CODE`] on timeout.
    pub code: i32,
    /// Combined stdout+stderr, at most [`OUTPUT_CAP`] bytes.
    pub output: String,
    pub timed_out: bool,
    /// Set when the command could not be run at all.
    pub error: Option<InitFailure>,
}

/// The first [`OUTPUT_CAP`] bytes of `bytes` as UTF-8 (invalid sequences
/// replaced; never more than the cap, never a split character).
pub fn cap_output(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(OUTPUT_CAP)]);
    let mut end = s.len().min(OUTPUT_CAP);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The result of [`Runtime::exec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit status; 128 + signal when signalled; 124 on timeout; 127 when the
    /// command was not found and 126 when it could not be executed (as a shell).
    pub code: i32,
    /// Combined stdout and stderr, the first 4 KiB ([`OUTPUT_CAP`]).
    pub output: String,
    pub timed_out: bool,
}

impl Runtime {
    /// Runs `args` inside the running container `id` (all its namespaces, its
    /// cgroup, user, capabilities, env and cwd, `no_new_privs`) and returns its
    /// exit code and first 4 KiB of combined output. After `timeout` the
    /// command is SIGKILLed (code 124, `timed_out`). Whatever it started in its
    /// session is killed when it ends. A command missing in the container is
    /// code 127 with a message in the output, not an error. The joining is done
    /// by a fresh `monitor_exe exec_args…` process started from a read-only
    /// mount (see the module doc); the calling process never changes namespaces.
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
        let report: ExecReport =
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
                output: cap_output(report.output.as_bytes()),
                timed_out: report.timed_out,
            }),
            Some(e) if e.step == STEP_NOT_RUNNING => Err(RuntimeError::NotRunning {
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
}

/// Entry point of the hidden `__exec` subcommand; `args` follow it. Never returns.
pub fn exec_main(args: &[String]) -> ! {
    // Nothing may ptrace us or open our /proc entries while we run agent code.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Always run to the end (bounded by the timeout) so the cleanup happens even
    // when the agent's terminal or process group is signalled.
    let _ = sysproc::ignore_signals(&[
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ]);
    // Pin no mount of the agent's working directory.
    let _ = nix::unistd::chdir("/");
    let report = match parse_args(args).and_then(|(dir, timeout, cmd)| run(dir, timeout, cmd)) {
        Ok(r) => r,
        Err(e) => ExecReport {
            code: 125,
            output: String::new(),
            timed_out: false,
            error: Some(InitFailure {
                step: e.step(),
                message: e.to_string(),
            }),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    sysproc::exit_now(report.code)
}

fn parse_args(args: &[String]) -> Result<(&Path, Duration, &[String]), ExecError> {
    match args {
        [dir, ms, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => {
            let ms: u64 = ms.parse().map_err(|_| ExecError::Usage)?;
            Ok((Path::new(dir), Duration::from_millis(ms), cmd))
        }
        _ => Err(ExecError::Usage),
    }
}

/// The fds the exec child gets from the helper.
struct ChildFds {
    /// pidfd of the container's PID 1 (the namespaces to join).
    target: OwnedFd,
    /// The host's `/dev/null` (stdin).
    null: OwnedFd,
    /// Write end of the output pipe (stdout and stderr).
    output: OwnedFd,
    /// Read end: one byte once the child is in the cgroup; EOF means abort.
    go: OwnedFd,
    /// Write end (close-on-exec): an [`InitFailure`] on error, EOF on exec.
    report: OwnedFd,
}

fn run(dir: &Path, timeout: Duration, cmd: &[String]) -> Result<ExecReport, ExecError> {
    let deadline = Instant::now() + timeout;
    let id_hint = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cfg = config::read_disk_config(&id_hint, &dir.join("config.json"))?;
    let id = cfg.container.id.clone();
    let sys = |step: &'static str| {
        let id = id.clone();
        move |source| ExecError::Sys { id, step, source }
    };
    let not_running = || ExecError::NotRunning { id: id.clone() };
    if config::read_json::<ExitFile>(&id, &dir.join("exit.json"))?.is_some() {
        return Err(not_running());
    }
    let st: StateFile = config::read_json(&id, &dir.join("state.json"))?.ok_or_else(not_running)?;
    // Open the pidfd first, then check the start time: the fd cannot switch to a
    // recycled pid afterwards.
    let target = sysproc::pidfd_open(st.pid).map_err(|_| not_running())?;
    if super::proc_start(st.pid) != Some(st.pid_start) {
        return Err(not_running());
    }
    let hierarchy = Hierarchy::detect().ok_or_else(|| ExecError::NoCgroups { id: id.clone() })?;
    let cgroup = Cgroup::new(hierarchy, &cfg.cgroup_parent, &id);

    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open /dev/null"))?;
    let cloexec = OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    let (rep_r, rep_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    // Compiled here so the child only has to install it, right before execve.
    let filter = seccomp::compile_for(&cfg).map_err(|source| ExecError::Seccomp {
        id: id.clone(),
        source,
    })?;

    // Only our children enter the container's PID namespace; we stay in the host's.
    nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWPID).map_err(sys("setns(pid)"))?;
    let child = match sysproc::fork_single_threaded() {
        Ok(Forked::Child) => {
            drop((out_r, go_w, rep_r));
            child_main(
                &cfg,
                cmd,
                ChildFds {
                    target,
                    null,
                    output: out_w,
                    go: go_r,
                    report: rep_w,
                },
                &filter,
            )
        }
        Ok(Forked::Parent(child)) => child,
        // The PID namespace refuses new members once its init is gone.
        Err(_) if super::proc_start(st.pid) != Some(st.pid_start) => return Err(not_running()),
        Err(source) => {
            return Err(ExecError::Io {
                id,
                step: "fork",
                source,
            })
        }
    };
    drop((out_w, go_r, rep_w, null, target));
    // From here on every error path kills and reaps the child.
    let abort = |e: ExecError| {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        e
    };
    let child_fd = sysproc::pidfd_open(child.as_raw()).map_err(|source| {
        abort(ExecError::Io {
            id: id.clone(),
            step: "pidfd_open(child)",
            source,
        })
    })?;
    cgroup
        .add_pid(child.as_raw())
        .map_err(|e| abort(e.into()))?;
    nix::unistd::write(&go_w, b"g").map_err(|e| abort(sys("release child")(e)))?;
    drop(go_w);

    // EOF without data: the command was exec'd (or the child exited with a
    // 126/127 message in the output).
    let failure = read_to_end(&rep_r);
    if !failure.is_empty() {
        let _ = waitpid(child, None);
        let f = serde_json::from_slice::<InitFailure>(&failure).unwrap_or_else(|_| InitFailure {
            step: "exec".into(),
            message: String::from_utf8_lossy(&failure).into_owned(),
        });
        return Err(ExecError::Child {
            id,
            step: f.step,
            message: f.message,
        });
    }

    let (output, exited) = relay(&out_r, &child_fd, deadline);
    let timed_out = !exited;
    // The child is still unreaped (a zombie at worst), so its pid — the id of
    // its session and process group — cannot have been recycled yet.
    kill_session(&cgroup, child);
    // Raw statuses: nix's WaitStatus fails on a death by a real-time signal.
    let status = loop {
        match sysproc::wait_raw(child.as_raw(), true) {
            Ok(Some((_, status))) => break super::init::exit_status(status).0,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(source) => {
                return Err(ExecError::Io {
                    id,
                    step: "waitpid",
                    source,
                })
            }
        }
    };
    // Whatever the session's members wrote before they died.
    let mut output = output;
    drain(&out_r, &mut output);
    Ok(ExecReport {
        code: if timed_out { TIMEOUT_CODE } else { status },
        output: cap_output(&output),
        timed_out,
        error: None,
    })
}

fn read_to_end(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return out,
        }
    }
}

fn keep(out: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_CAP.saturating_sub(out.len());
    out.extend_from_slice(&data[..data.len().min(room)]);
}

/// Copies the pipe until the child exits (`true`) or the deadline passes (`false`).
fn relay(pipe: &OwnedFd, child: &OwnedFd, deadline: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pipe_open = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = vec![PollFd::new(child.as_fd(), PollFlags::POLLIN)];
        if pipe_open {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return (out, false),
        }
        let child_done = fds[0].revents().is_some_and(|r| !r.is_empty());
        let pipe_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if pipe_ready {
            match nix::unistd::read(pipe, &mut buf) {
                Ok(0) => pipe_open = false,
                Ok(n) => keep(&mut out, &buf[..n]),
                Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
                Err(_) => pipe_open = false,
            }
        }
        if child_done {
            return (out, true);
        }
    }
}

/// Reads what is already in the pipe without waiting for writers that remain.
fn drain(pipe: &OwnedFd, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        match nix::unistd::read(pipe, &mut buf) {
            Ok(n) if n > 0 => keep(out, &buf[..n]),
            _ => return,
        }
    }
}

/// `(pgrp, session)` of a host pid, from `/proc/<pid>/stat`.
fn pgrp_and_session(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat.get(stat.rfind(')')? + 2..)?.split(' ').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// How long [`kill_session`] waits for the killed processes to be gone.
const KILL_SESSION_WAIT: Duration = Duration::from_secs(5);

/// SIGKILLs the child's process group and every process of its session in the
/// container's cgroup (each through a pidfd opened before checking it), until
/// none is left. Processes that started their own session on purpose stay.
fn kill_session(cgroup: &Cgroup, child: Pid) {
    let leader = child.as_raw();
    let _ = nix::sys::signal::killpg(child, Signal::SIGKILL);
    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    // Killed processes leave the cgroup once they are past exit; on a loaded
    // host that can take a while, so the bound is generous and reported.
    let deadline = Instant::now() + KILL_SESSION_WAIT;
    loop {
        let mut left = Vec::new();
        for pid in cgroup.pids() {
            if pid == leader {
                continue;
            }
            let Ok(fd) = sysproc::pidfd_open(pid) else {
                continue;
            };
            if pgrp_and_session(pid).is_some_and(|(g, s)| g == leader || s == leader) {
                left.push(pid);
                let _ = sysproc::pidfd_send_signal(&fd, libc::SIGKILL);
            }
        }
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(pids = ?left, "exec: processes of the command still exiting after SIGKILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How the child ends before `execve`.
enum ChildEnd {
    /// Reported to the helper as an [`InitFailure`] (becomes an agent error).
    Fail(ExecError),
    /// A shell-like failure: message in the output, this exit code.
    Exit(i32, String),
}

impl From<ExecError> for ChildEnd {
    fn from(e: ExecError) -> Self {
        ChildEnd::Fail(e)
    }
}

impl From<ProcessError> for ChildEnd {
    fn from(e: ProcessError) -> Self {
        ChildEnd::Fail(e.into())
    }
}

fn child_main(cfg: &DiskConfig, cmd: &[String], fds: ChildFds, filter: &Filter) -> ! {
    match child(cfg, cmd, &fds, filter) {
        Ok(never) => match never {},
        Err(ChildEnd::Exit(code, message)) => {
            // stderr is the output pipe by now.
            let _ = nix::unistd::write(std::io::stderr(), format!("{message}\n").as_bytes());
            sysproc::exit_now(code)
        }
        Err(ChildEnd::Fail(e)) => {
            let f = InitFailure {
                step: e.step(),
                message: e.to_string(),
            };
            let _ = nix::unistd::write(&fds.report, &serde_json::to_vec(&f).unwrap_or_default());
            sysproc::exit_now(125)
        }
    }
}

fn child(
    cfg: &DiskConfig,
    cmd: &[String],
    fds: &ChildFds,
    filter: &Filter,
) -> Result<Infallible, ChildEnd> {
    let c = &cfg.container;
    let id = c.id.as_str();
    let sys = |step: &'static str| {
        move |source| ExecError::Sys {
            id: id.into(),
            step,
            source,
        }
    };
    nix::sys::prctl::set_dumpable(false).map_err(sys("set non-dumpable"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("parent death signal"))?;
    let mut byte = [0u8; 1];
    if nix::unistd::read(&fds.go, &mut byte).map_err(sys("wait for release"))? != 1 {
        sysproc::exit_now(125);
    }
    // Its own session and process group: the helper kills both when done.
    nix::unistd::setsid().map_err(sys("setsid"))?;
    // Root and cwd become the container's (the mount namespace's root).
    let flags = Namespaces::default().init_flags();
    nix::sched::setns(fds.target.as_fd(), flags).map_err(sys("setns"))?;

    nix::unistd::dup2_stdin(fds.null.as_fd()).map_err(sys("stdin"))?;
    nix::unistd::dup2_stdout(fds.output.as_fd()).map_err(sys("stdout"))?;
    nix::unistd::dup2_stderr(fds.output.as_fd()).map_err(sys("stderr"))?;

    process::set_identity_and_caps(cfg)?;
    // As the container's user, like the workload's start.
    nix::unistd::chdir(&c.cwd).map_err(sys("chdir to the container's cwd"))?;
    let exe: PathBuf = process::find_in_path(&cmd[0], &c.env).map_err(|path| {
        ChildEnd::Exit(
            127,
            format!("berth exec: {}: not found (PATH={path})", cmd[0]),
        )
    })?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    sysproc::reset_signals().map_err(|source| ExecError::Io {
        id: id.into(),
        step: "reset signals",
        source,
    })?;
    // A uid change clears the parent-death signal: set it again, then make sure
    // the helper did not die before that.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("parent death signal"))?;
    let mut poll = [PollFd::new(fds.report.as_fd(), PollFlags::empty())];
    if nix::poll::poll(&mut poll, PollTimeout::ZERO).is_ok_and(|n| n > 0) {
        sysproc::exit_now(125);
    }
    sysproc::cloexec_from(3).map_err(|source| ExecError::Io {
        id: id.into(),
        step: "close fds",
        source,
    })?;

    let cstr = |s: &str| CString::new(s.as_bytes()).unwrap_or_default();
    let args: Vec<CString> = cmd.iter().map(|a| cstr(a)).collect();
    let env: Vec<CString> = c.env.iter().map(|e| cstr(e)).collect();
    let path = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // Last: from here on the denied syscalls fail, and nothing but execve follows.
    filter.apply().map_err(|e| ExecError::Sys {
        id: id.into(),
        step: "seccomp",
        source: e.errno(),
    })?;
    let err = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(match err {
        nix::Error::ENOENT | nix::Error::ENOTDIR => ChildEnd::Exit(
            127,
            format!("berth exec: {}: {}", exe.display(), err.desc()),
        ),
        nix::Error::EACCES | nix::Error::ENOEXEC | nix::Error::EISDIR | nix::Error::EPERM => {
            ChildEnd::Exit(
                126,
                format!("berth exec: {}: {}", exe.display(), err.desc()),
            )
        }
        source => ChildEnd::Fail(ExecError::Sys {
            id: id.into(),
            step: "exec",
            source,
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        assert_eq!(cap_output(b"hi\n"), "hi\n");
        let big = vec![b'x'; OUTPUT_CAP + 10];
        assert_eq!(cap_output(&big).len(), OUTPUT_CAP);
        let mut v = vec![b'a'; OUTPUT_CAP - 1];
        v.extend_from_slice("é".as_bytes());
        let s = cap_output(&v);
        assert!(s.len() <= OUTPUT_CAP && s.starts_with('a'));
        // Invalid bytes are replaced, still within the cap.
        let s = cap_output(&vec![0xff; OUTPUT_CAP]);
        assert!(s.len() <= OUTPUT_CAP && s.starts_with('\u{fffd}'));
    }

    #[test]
    fn args_need_a_separator_and_a_command() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = a(&["/d", "300", "--", "echo", "hi"]);
        let (dir, t, cmd) = parse_args(&ok).unwrap();
        assert_eq!(
            (dir, t, cmd),
            (Path::new("/d"), Duration::from_millis(300), &ok[3..])
        );
        for bad in [
            &["/d", "300", "--"][..],
            &["/d", "x", "--", "a"],
            &["/d", "1", "a"],
        ] {
            assert!(matches!(parse_args(&a(bad)), Err(ExecError::Usage)));
        }
    }
}
