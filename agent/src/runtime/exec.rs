//! Running a command inside a running container: [`Runtime::exec`] (exec
//! health checks and the one-shot API: output captured, first 4 KiB) and
//! [`Runtime::exec_stream`] (`berthctl exec [-it]`: the command's stdio, or a
//! pty, handed to the agent), the caller's side; and the hidden `__exec`
//! subcommand of the monitor binary that does the work.
//!
//! Both start `berth-monitor __exec <dir> <timeout-ms> [--pipes|--tty=RxC] --
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
//! 4. capture: relays the child's combined stdout+stderr (first [`OUTPUT_CAP`]
//!    bytes kept, the rest read and dropped); streaming (its stdout is a unix
//!    socket to the agent): sends the agent one byte `S` with the child's pidfd
//!    and the other ends of its stdin/stdout/stderr pipes, or the pty master
//!    (`SCM_RIGHTS`), then waits; the agent closing that socket kills the
//!    command (the client went away, or the agent died);
//! 5. enforces the timeout (SIGKILL, code 124), then SIGKILLs whatever is left
//!    of the child's session and reaps it;
//! 6. prints one JSON [`ExecReport`] on its stdout and exits with the child's code.
//!
//! The child: non-dumpable, parent-death signal SIGKILL, `setsid` (its own
//! session, so the helper can kill everything it started), `setns(pidfd,
//! mnt|net|uts|ipc|cgroup)` (root and cwd become the container's), stdio
//! (capture: stdin the host's `/dev/null`, stdout/stderr the pipe; `--pipes`:
//! three pipes; `--tty`: a new pty opened in the container's `/dev/ptmx`,
//! sized as asked, the slave owned by the command's user and made the
//! controlling terminal, the master sent to the helper), the container's
//! user/groups and reduced capabilities, cwd, `no_new_privs`, default signals,
//! only fds 0/1/2 survive, the seccomp filter (compiled by the helper before
//! the fork), `execve` of the command with the container's env (plus
//! `TERM=xterm` on a pty when the env has no `TERM`, as Docker).
//! A command that cannot be found or executed ends with 127/126 and a message
//! on its stderr, as a shell would; other failures are reported as errors.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
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
use crate::sys::fdpass;
use crate::sys::process::{self as sysproc, Forked};
use crate::sys::tty;

/// The hidden subcommand (`berth-monitor __exec <dir> <timeout-ms> -- args…`).
pub const EXEC_SUBCOMMAND: &str = "__exec";
/// At most this many bytes of output are kept (as Docker keeps for health checks).
pub const OUTPUT_CAP: usize = 4096;
/// Exit code reported when the command ran out of time (as `timeout(1)`).
pub const TIMEOUT_CODE: i32 = 124;
/// The report's `error.step` when the container is not (or no longer) running.
pub const STEP_NOT_RUNNING: &str = "not running";
/// The byte the helper sends with the descriptors of a started streaming exec.
const STARTED: u8 = b'S';
/// The byte the child sends with the pty master.
const PTY_MASTER: u8 = b'P';

/// How a streaming exec connects the command's stdio (see [`Runtime::exec_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// stdin, stdout and stderr are three pipes; the agent gets their other ends.
    Pipes,
    /// A new pty of the container, `rows` x `cols`, is the command's stdio and
    /// controlling terminal; the agent gets its master.
    Tty { rows: u16, cols: u16 },
}

impl StreamMode {
    /// The helper's flag for this mode.
    fn arg(self) -> String {
        match self {
            StreamMode::Pipes => "--pipes".into(),
            StreamMode::Tty { rows, cols } => format!("--tty={rows}x{cols}"),
        }
    }

    fn parse(arg: &str) -> Option<StreamMode> {
        if arg == "--pipes" {
            return Some(StreamMode::Pipes);
        }
        let (rows, cols) = arg.strip_prefix("--tty=")?.split_once('x')?;
        Some(StreamMode::Tty {
            rows: rows.parse().ok()?,
            cols: cols.parse().ok()?,
        })
    }
}

/// What the helper does with the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keeps the first [`OUTPUT_CAP`] bytes for its report.
    Capture,
    /// Hands the command's stdio to the agent.
    Stream(StreamMode),
}

/// An exec step that failed (in the helper or in its child before `execve`).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec: usage: __exec <container-dir> <timeout-ms> [--pipes|--tty=ROWSxCOLS] -- <command> [args...]")]
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
    /// Combined stdout+stderr, at most [`OUTPUT_CAP`] bytes (empty when streaming).
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

/// The command's stdio ends the agent holds while a streaming exec runs.
#[derive(Debug)]
pub enum ExecStdio {
    /// Write end of the command's stdin, read ends of its stdout and stderr.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The master of the command's pty (its stdin, stdout and stderr).
    Tty { master: OwnedFd },
}

/// Signals a running streaming exec, or ends it.
#[derive(Debug)]
pub struct ExecHandle {
    id: String,
    /// A pidfd of the command (immune to pid reuse).
    pidfd: OwnedFd,
    /// A clone of the socket to the helper.
    control: UnixStream,
}

impl ExecHandle {
    /// Sends signal `sig` to the command (not to the rest of its session).
    /// A command that has already ended is not an error.
    pub fn signal(&self, sig: i32) -> Result<(), RuntimeError> {
        match sysproc::pidfd_send_signal(&self.pidfd, sig) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(RuntimeError::Signal {
                id: self.id.clone(),
                signal: sig,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Closes the agent's side of the helper's socket: the helper SIGKILLs
    /// the command and its session and reports (code 137).
    pub fn abandon(&self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }
}

/// Waits for a streaming exec's end: [`ExecWaiter::wait`] blocks; an async
/// caller reads the helper's report from [`ExecWaiter::into_parts`]'s socket
/// itself (so no thread is held while the command runs, and dropping the
/// socket kills the command) and passes it to [`ExecReaper::finish`].
#[derive(Debug)]
pub struct ExecWaiter {
    control: UnixStream,
    reaper: ExecReaper,
}

/// Reaps the exec helper and reads its report (see [`ExecWaiter`]).
#[derive(Debug)]
pub struct ExecReaper {
    id: String,
    helper: std::process::Child,
}

impl ExecWaiter {
    /// Blocks until the command has ended (or was killed after the timeout,
    /// or after [`ExecHandle::abandon`]), the helper has killed what was left
    /// of its session and reported, and the helper is reaped. `output` is empty.
    pub fn wait(mut self) -> Result<ExecOutput, RuntimeError> {
        let mut text = Vec::new();
        let read = self.control.read_to_end(&mut text);
        let id = self.reaper.id.clone();
        let out = self.reaper.finish(&text);
        read.map_err(|e| RuntimeError::Exec {
            id,
            step: "reading the exec helper's report".into(),
            message: e.to_string(),
        })?;
        out
    }

    /// The socket the helper's report arrives on (read it to its end; the
    /// command is killed when it is closed early) and the [`ExecReaper`].
    pub fn into_parts(self) -> (UnixStream, ExecReaper) {
        (self.control, self.reaper)
    }
}

impl ExecReaper {
    /// Reaps the helper (it exits right after its report; blocking until
    /// then) and turns `report`, everything read from the socket, into the
    /// command's result.
    pub fn finish(mut self, report: &[u8]) -> Result<ExecOutput, RuntimeError> {
        let status = self.helper.wait();
        let id = self.id.as_str();
        let parsed: ExecReport =
            serde_json::from_slice(report.trim_ascii()).map_err(|_| RuntimeError::Exec {
                id: id.into(),
                step: "reading the exec helper's report".into(),
                message: format!(
                    "{}: {:?}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    String::from_utf8_lossy(report)
                ),
            })?;
        match parsed.error {
            None => Ok(ExecOutput {
                code: parsed.code,
                output: String::new(),
                timed_out: parsed.timed_out,
            }),
            Some(e) => Err(RuntimeError::Exec {
                id: id.into(),
                step: e.step,
                message: e.message,
            }),
        }
    }
}

/// A command started by [`Runtime::exec_stream`].
#[derive(Debug)]
pub struct ExecProcess {
    pub stdio: ExecStdio,
    pub handle: ExecHandle,
    pub waiter: ExecWaiter,
}

impl Runtime {
    /// Checks `args` and that `id` runs; the helper's argv and the path of
    /// the read-only mount point of its executable.
    fn exec_argv(
        &self,
        id: &str,
        args: &[String],
        timeout: Option<Duration>,
        mode: Mode,
    ) -> Result<(Vec<OsString>, PathBuf), RuntimeError> {
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
        let mut argv: Vec<OsString> = self.paths.exec_args.iter().map(Into::into).collect();
        argv.push(dir.clone().into());
        // 0: no limit.
        let ms = timeout.map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)));
        argv.push(ms.to_string().into());
        if let Mode::Stream(m) = mode {
            argv.push(m.arg().into());
        }
        argv.push("--".into());
        argv.extend(args.iter().map(Into::into));
        let exe = dir.join(format!(
            "exec-{}-{}.exe",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        Ok((argv, exe))
    }

    /// The error a helper's [`InitFailure`] stands for.
    fn exec_failure(&self, id: &str, e: InitFailure) -> RuntimeError {
        if e.step == STEP_NOT_RUNNING {
            RuntimeError::NotRunning {
                id: id.into(),
                state: self.state(id).name().into(),
            }
        } else {
            RuntimeError::Exec {
                id: id.into(),
                step: e.step,
                message: e.message,
            }
        }
    }

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
        let (argv, exe) = self.exec_argv(id, args, Some(timeout), Mode::Capture)?;
        let child = self.spawn_from_ro_mount(
            id,
            &exe,
            &argv,
            (Stdio::null(), Stdio::piped(), Stdio::piped()),
            |source| RuntimeError::Exec {
                id: id.into(),
                step: "starting the exec helper".into(),
                message: source.to_string(),
            },
        )?;
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
            Some(e) => Err(self.exec_failure(id, e)),
        }
    }

    /// Starts `args` inside the running container `id` exactly as [`exec`]
    /// runs it, but hands its stdio to the caller ([`StreamMode`]): returns
    /// once the command has been exec'd (or failed to: 127/126 with a
    /// message on its stderr, as a shell). The command is SIGKILLed after
    /// `timeout` (none: no limit), after [`ExecHandle::abandon`], or when
    /// every copy of the returned [`ExecWaiter`]'s socket is closed (an agent
    /// that dies takes its execs with it). Blocking; errors as [`exec`].
    ///
    /// [`exec`]: Runtime::exec
    pub fn exec_stream(
        &self,
        id: &str,
        args: &[String],
        mode: StreamMode,
        timeout: Option<Duration>,
    ) -> Result<ExecProcess, RuntimeError> {
        let (argv, exe) = self.exec_argv(id, args, timeout, Mode::Stream(mode))?;
        let io_err = |step: &'static str| {
            move |e: std::io::Error| RuntimeError::Exec {
                id: id.into(),
                step: step.into(),
                message: e.to_string(),
            }
        };
        let (control, theirs) = UnixStream::pair().map_err(io_err("socketpair"))?;
        let mut helper = self.spawn_from_ro_mount(
            id,
            &exe,
            &argv,
            (
                Stdio::null(),
                Stdio::from(OwnedFd::from(theirs)),
                // Nothing but a panic ends up here: keep it in the agent's log.
                Stdio::inherit(),
            ),
            io_err("starting the exec helper"),
        )?;
        let first = fdpass::recv_fds(control.as_fd(), 4);
        let started = match first {
            Ok(Some((STARTED, fds))) => Some(fds),
            Ok(Some((byte, fds))) if fds.is_empty() => {
                // No command: the helper's report follows.
                let mut text = vec![byte];
                let _ = (&control).read_to_end(&mut text);
                let status = helper.wait();
                let report: Option<ExecReport> = serde_json::from_slice(text.trim_ascii()).ok();
                return Err(match report.and_then(|r| r.error) {
                    Some(e) => self.exec_failure(id, e),
                    None => RuntimeError::Exec {
                        id: id.into(),
                        step: "reading the exec helper's report".into(),
                        message: format!(
                            "{}: {:?}",
                            status.map(|s| s.to_string()).unwrap_or_default(),
                            String::from_utf8_lossy(&text)
                        ),
                    },
                });
            }
            _ => None,
        };
        let parts = started.and_then(|fds| {
            let mut fds = fds.into_iter();
            let pidfd = fds.next()?;
            let stdio = match (mode, fds.next(), fds.next(), fds.next()) {
                (StreamMode::Pipes, Some(stdin), Some(stdout), Some(stderr)) => ExecStdio::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                (StreamMode::Tty { .. }, Some(master), None, None) => ExecStdio::Tty { master },
                _ => return None,
            };
            Some((pidfd, stdio))
        });
        let Some((pidfd, stdio)) = parts else {
            // Closing our end makes the helper kill whatever it started.
            drop(control);
            let status = helper.wait();
            return Err(RuntimeError::Exec {
                id: id.into(),
                step: "starting the exec helper".into(),
                message: format!(
                    "no usable start message ({})",
                    status.map(|s| s.to_string()).unwrap_or_default()
                ),
            });
        };
        let handle_control = control.try_clone().map_err(io_err("socket"))?;
        Ok(ExecProcess {
            stdio,
            handle: ExecHandle {
                id: id.into(),
                pidfd,
                control: handle_control,
            },
            waiter: ExecWaiter {
                control,
                reaper: ExecReaper {
                    id: id.into(),
                    helper,
                },
            },
        })
    }
}

/// Entry point of the hidden `__exec` subcommand; `args` follow it. Never returns.
pub fn exec_main(args: &[String]) -> ! {
    // Nothing may ptrace us or open our /proc entries while we run agent code.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Exec'd through /proc/self/fd/N, the kernel named us "N".
    let _ = nix::sys::prctl::set_name(c"berth-exec");
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
    let report = match parse_args(args).and_then(|a| run(a.dir, a.timeout, a.mode, a.cmd)) {
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

/// The helper's arguments.
#[derive(Debug, PartialEq, Eq)]
struct HelperArgs<'a> {
    dir: &'a Path,
    timeout: Option<Duration>,
    mode: Mode,
    cmd: &'a [String],
}

/// `<dir> <timeout-ms> [--pipes|--tty=RxC] -- cmd…`; a timeout of 0 is none.
fn parse_args(args: &[String]) -> Result<HelperArgs<'_>, ExecError> {
    let [dir, ms, rest @ ..] = args else {
        return Err(ExecError::Usage);
    };
    let (mode, rest) = match rest {
        [flag, rest @ ..] if flag != "--" => (
            Mode::Stream(StreamMode::parse(flag).ok_or(ExecError::Usage)?),
            rest,
        ),
        _ => (Mode::Capture, rest),
    };
    match rest {
        [sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => {
            let ms: u64 = ms.parse().map_err(|_| ExecError::Usage)?;
            Ok(HelperArgs {
                dir: Path::new(dir),
                timeout: (ms > 0).then(|| Duration::from_millis(ms)),
                mode,
                cmd,
            })
        }
        _ => Err(ExecError::Usage),
    }
}

/// The child's stdio, by mode (its ends; the helper keeps or forwards the others).
enum ChildStdio {
    /// stdin the host's `/dev/null`, stdout and stderr the output pipe.
    Capture { null: OwnedFd, output: OwnedFd },
    /// Read end of the stdin pipe, write ends of the stdout and stderr pipes.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A socket to send the pty master on; the pty is opened in the container.
    Tty {
        socket: OwnedFd,
        rows: u16,
        cols: u16,
    },
}

/// The helper's ends of the child's stdio.
enum HelperStdio {
    Capture {
        output: OwnedFd,
    },
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Tty {
        socket: OwnedFd,
    },
}

/// The fds the exec child gets from the helper.
struct ChildFds {
    /// pidfd of the container's PID 1 (the namespaces to join).
    target: OwnedFd,
    stdio: ChildStdio,
    /// Read end: one byte once the child is in the cgroup; EOF means abort.
    go: OwnedFd,
    /// Write end (close-on-exec): an [`InitFailure`] on error, EOF on exec.
    report: OwnedFd,
}

/// Pipes and sockets for the child's stdio in `mode`.
fn stdio_for(mode: Mode, id: &str) -> Result<(ChildStdio, HelperStdio), ExecError> {
    let sys = |step: &'static str| {
        let id = id.to_string();
        move |source| ExecError::Sys { id, step, source }
    };
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"));
    Ok(match mode {
        Mode::Capture => {
            let null = nix::fcntl::open(
                "/dev/null",
                OFlag::O_RDWR | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys("open /dev/null"))?;
            let (r, w) = pipe()?;
            (
                ChildStdio::Capture { null, output: w },
                HelperStdio::Capture { output: r },
            )
        }
        Mode::Stream(StreamMode::Pipes) => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            (
                ChildStdio::Pipes {
                    stdin: in_r,
                    stdout: out_w,
                    stderr: err_w,
                },
                HelperStdio::Pipes {
                    stdin: in_w,
                    stdout: out_r,
                    stderr: err_r,
                },
            )
        }
        Mode::Stream(StreamMode::Tty { rows, cols }) => {
            let (ours, theirs) = UnixStream::pair().map_err(|source| ExecError::Io {
                id: id.into(),
                step: "socketpair",
                source,
            })?;
            (
                ChildStdio::Tty {
                    socket: theirs.into(),
                    rows,
                    cols,
                },
                HelperStdio::Tty {
                    socket: ours.into(),
                },
            )
        }
    })
}

fn run(
    dir: &Path,
    timeout: Option<Duration>,
    mode: Mode,
    cmd: &[String],
) -> Result<ExecReport, ExecError> {
    let deadline = timeout.map(|t| Instant::now() + t);
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

    let (child_stdio, stdio) = stdio_for(mode, &id)?;
    let cloexec = OFlag::O_CLOEXEC;
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
            drop((stdio, go_w, rep_r));
            child_main(
                &cfg,
                cmd,
                ChildFds {
                    target,
                    stdio: child_stdio,
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
    drop((child_stdio, go_r, rep_w, target));
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
    // The container's init runs in its monitor's cgroup in every hierarchy
    // berthd does not manage and in the container's own in the rest: the
    // command joins exactly the same ones (when the monitor's exist).
    let monitor = super::cgroups::MonitorCgroup::detect(&cfg.cgroup_parent, &id);
    if monitor.paths().iter().all(|d| d.is_dir()) {
        monitor.enter(child.as_raw()).map_err(|e| abort(e.into()))?;
    }
    cgroup
        .add_pid(child.as_raw())
        .map_err(|e| abort(e.into()))?;
    nix::unistd::write(&go_w, b"g").map_err(|e| abort(sys("release child")(e)))?;
    drop(go_w);

    // EOF without data: the command was exec'd (or the child exited with a
    // 126/127 message on its stderr).
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

    let (output, exited) = match stdio {
        HelperStdio::Capture { output } => {
            let (out, exited) = relay(&output, &child_fd, deadline);
            (Some((output, out)), exited)
        }
        HelperStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let fds = [
                child_fd.as_fd(),
                stdin.as_fd(),
                stdout.as_fd(),
                stderr.as_fd(),
            ];
            hand_over(&fds, &id).map_err(&abort)?;
            drop((stdin, stdout, stderr));
            (None, wait_streaming(&child_fd, deadline))
        }
        HelperStdio::Tty { socket } => {
            let master = match fdpass::recv_fds(socket.as_fd(), 1) {
                Ok(Some((PTY_MASTER, fds))) if fds.len() == 1 => fds.into_iter().next(),
                _ => None,
            };
            let Some(master) = master else {
                return Err(abort(ExecError::Child {
                    id,
                    step: "pty".into(),
                    message: "the child sent no pty master".into(),
                }));
            };
            drop(socket);
            hand_over(&[child_fd.as_fd(), master.as_fd()], &id).map_err(&abort)?;
            drop(master);
            (None, wait_streaming(&child_fd, deadline))
        }
    };
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
    let output = match output {
        Some((pipe, mut output)) => {
            // Whatever the session's members wrote before they died.
            drain(&pipe, &mut output);
            cap_output(&output)
        }
        None => String::new(),
    };
    Ok(ExecReport {
        code: if timed_out { TIMEOUT_CODE } else { status },
        output,
        timed_out,
        error: None,
    })
}

/// Sends the agent (our stdout, a unix socket) [`STARTED`] with `fds`.
fn hand_over(fds: &[std::os::fd::BorrowedFd<'_>], id: &str) -> Result<(), ExecError> {
    fdpass::send_fds(std::io::stdout().as_fd(), STARTED, fds).map_err(|source| ExecError::Io {
        id: id.into(),
        step: "handing the command's stdio to the agent",
        source,
    })
}

/// Waits until the child exits (`true`), or the deadline passes or the agent
/// closes its socket (our stdout) (`false`: the command is to be killed).
fn wait_streaming(child: &OwnedFd, deadline: Option<Instant>) -> bool {
    let agent = std::io::stdout();
    loop {
        let Some(timeout) = poll_timeout(deadline) else {
            return false;
        };
        let mut fds = [
            PollFd::new(child.as_fd(), PollFlags::POLLIN),
            PollFd::new(agent.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return false,
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            return true;
        }
        // The agent never writes to us: readable means it closed its end.
        if ready(&fds[1]) {
            return false;
        }
    }
}

/// How long to poll before `deadline` (none: forever); `None` once it has passed.
fn poll_timeout(deadline: Option<Instant>) -> Option<PollTimeout> {
    let Some(d) = deadline else {
        return Some(PollTimeout::NONE);
    };
    let left = d.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    Some(PollTimeout::from(
        u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX),
    ))
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
fn relay(pipe: &OwnedFd, child: &OwnedFd, deadline: Option<Instant>) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pipe_open = true;
    loop {
        let Some(timeout) = poll_timeout(deadline) else {
            return (out, false);
        };
        let mut fds = vec![PollFd::new(child.as_fd(), PollFlags::POLLIN)];
        if pipe_open {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, timeout) {
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

/// Makes fds 0, 1 and 2 the command's stdio; with a pty, first opens it in
/// the container's `/dev/ptmx` (the caller's root is the container's),
/// gives the slave to the command's user (as runc), makes it the controlling
/// terminal of the child's session and sends the master to the helper.
fn connect_stdio(cfg: &DiskConfig, stdio: &ChildStdio) -> Result<(), ExecError> {
    let id = cfg.container.id.as_str();
    let sys = |step: &'static str| {
        move |source| ExecError::Sys {
            id: id.into(),
            step,
            source,
        }
    };
    let io = |step: &'static str| {
        move |source| ExecError::Io {
            id: id.into(),
            step,
            source,
        }
    };
    let (stdin, stdout, stderr) = match stdio {
        ChildStdio::Capture { null, output } => (null.as_fd(), output.as_fd(), output.as_fd()),
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => (stdin.as_fd(), stdout.as_fd(), stderr.as_fd()),
        ChildStdio::Tty { socket, rows, cols } => {
            let size = nix::pty::Winsize {
                ws_row: *rows,
                ws_col: *cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(&size, None).map_err(sys("opening a pty"))?;
            let user = &cfg.container.user;
            // Still outside the user namespace: its ids as the host sees them.
            let host = |id: u32| {
                cfg.container
                    .userns
                    .map_or(id, |r| r.base.saturating_add(id))
            };
            nix::unistd::fchown(
                &pty.slave,
                Some(nix::unistd::Uid::from_raw(host(user.uid))),
                Some(nix::unistd::Gid::from_raw(host(user.gid))),
            )
            .map_err(sys("chown of the pty"))?;
            tty::set_controlling_terminal(pty.slave.as_fd()).map_err(io("TIOCSCTTY"))?;
            fdpass::send_fds(socket.as_fd(), PTY_MASTER, &[pty.master.as_fd()])
                .map_err(io("sending the pty master"))?;
            drop(pty.master);
            let slave = pty.slave;
            for (fd, step) in [(0, "stdin"), (1, "stdout"), (2, "stderr")] {
                dup_to(slave.as_fd(), fd).map_err(sys(step))?;
            }
            return Ok(());
        }
    };
    dup_to(stdin, 0).map_err(sys("stdin"))?;
    dup_to(stdout, 1).map_err(sys("stdout"))?;
    dup_to(stderr, 2).map_err(sys("stderr"))?;
    Ok(())
}

/// `dup2(fd, target)` for target 0, 1 or 2.
fn dup_to(fd: std::os::fd::BorrowedFd<'_>, target: i32) -> nix::Result<()> {
    match target {
        0 => nix::unistd::dup2_stdin(fd),
        1 => nix::unistd::dup2_stdout(fd),
        _ => nix::unistd::dup2_stderr(fd),
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

    connect_stdio(cfg, &fds.stdio)?;
    // The user namespace last: the others are owned by the host's (and the
    // pty is chowned as host root).
    if c.userns.is_some() {
        nix::sched::setns(fds.target.as_fd(), CloneFlags::CLONE_NEWUSER)
            .map_err(sys("setns(user)"))?;
    }

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
    let mut env: Vec<CString> = c.env.iter().map(|e| cstr(e)).collect();
    // As Docker: a terminal gets a TERM unless the container sets one.
    if matches!(fds.stdio, ChildStdio::Tty { .. }) && !c.env.iter().any(|e| e.starts_with("TERM="))
    {
        env.push(cstr("TERM=xterm"));
    }
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
        assert_eq!(
            parse_args(&ok).unwrap(),
            HelperArgs {
                dir: Path::new("/d"),
                timeout: Some(Duration::from_millis(300)),
                mode: Mode::Capture,
                cmd: &ok[3..]
            }
        );
        let ok = a(&["/d", "0", "--pipes", "--", "cat"]);
        let got = parse_args(&ok).unwrap();
        assert_eq!(
            (got.timeout, got.mode, got.cmd),
            (None, Mode::Stream(StreamMode::Pipes), &ok[4..])
        );
        let ok = a(&["/d", "5", "--tty=40x132", "--", "sh", "-i"]);
        let got = parse_args(&ok).unwrap();
        assert_eq!(
            (got.mode, got.cmd),
            (
                Mode::Stream(StreamMode::Tty {
                    rows: 40,
                    cols: 132
                }),
                &ok[4..]
            )
        );
        for bad in [
            &["/d", "300", "--"][..],
            &["/d", "x", "--", "a"],
            &["/d", "1", "a"],
            &["/d", "1", "--tty", "--", "a"],
            &["/d", "1", "--tty=40", "--", "a"],
            &["/d", "1", "--tty=40x", "--", "a"],
            &["/d", "1", "--tty=99999x1", "--", "a"],
            &["/d", "1", "--pipe", "--", "a"],
            &["/d", "1", "--pipes", "a"],
        ] {
            assert!(
                matches!(parse_args(&a(bad)), Err(ExecError::Usage)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn stream_modes_round_trip_through_their_flag() {
        for m in [
            StreamMode::Pipes,
            StreamMode::Tty { rows: 1, cols: 2 },
            StreamMode::Tty {
                rows: u16::MAX,
                cols: 80,
            },
        ] {
            assert_eq!(StreamMode::parse(&m.arg()), Some(m));
        }
    }
}
