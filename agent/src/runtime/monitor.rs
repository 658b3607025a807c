//! The per-container monitor: `berthd __monitor <container-dir>` re-executed by
//! the runtime. It double-forks (setsid, the first child exits) so it is
//! reparented away from berthd and outlives it, forks the container's init
//! into a new PID namespace (after moving itself into its own cgroup,
//! [`MonitorCgroup`], outside the agent's), reports the start result on its stdout, then runs a
//! single-threaded poll loop writing the workload's stdout/stderr as CRI log
//! records (see [`super::crilog`]) into one size-rotated `logs/container.log`,
//! in the order it reads them, and finally records `exit.json` (code, signal,
//! OOM) once both pipes are closed and every line is written.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use serde::{Deserialize, Serialize};

use super::cgroups::{Cgroup, Hierarchy, MonitorCgroup};
use super::config::{self, ExitFile, StateFile};
use super::crilog::{self, LineSplitter, Stream};
use super::namespaces::Namespaces;
use super::process::{self, InitFailure, InitFds};
use super::seccomp;
use super::stages::{self, Stamps};
use crate::sys::process::{self as sysproc, Forked};

/// Number of log files kept per container (the live one plus `.1`).
pub const LOG_FILES: u32 = 2;
/// The container's log, in `<container-dir>/logs/`.
pub const LOG_NAME: &str = "container.log";

/// A monitor step that failed (reported to the agent, or to monitor.log).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor: usage: __monitor <container-dir>")]
    Usage,
    #[error("container {id}: monitor: {step}: {source}")]
    Io {
        id: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("container {id}: monitor: {step}: {source}")]
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
    Namespace(#[from] super::namespaces::NamespaceError),
    #[error("container {id}: {source}")]
    Seccomp {
        id: String,
        source: super::seccomp::SeccompError,
    },
    #[error("container {id}: no usable cgroup hierarchy")]
    NoCgroups { id: String },
}

/// What the monitor writes to its stdout (read by [`super::Runtime::create_and_start`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorReport {
    pub state: Option<StateFile>,
    pub error: Option<InitFailure>,
}

/// Entry point of the hidden `__monitor` subcommand: `args` are the arguments
/// after it (the container directory). Never returns.
pub fn monitor_main(args: &[String]) -> ! {
    let [dir] = args else {
        eprintln!("{}", MonitorError::Usage);
        std::process::exit(2)
    };
    let mut stamps = Stamps::from_env();
    stamps.stamp("monitor.main");
    // Exec'd through /proc/self/fd/N (see spawn.rs), the kernel named us "N".
    let _ = nix::sys::prctl::set_name(c"berth-monitor");
    // The seccomp filter the agent compiled (and caches), on stdin; nothing
    // there: compile it here.
    let received = {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes);
        seccomp::Filter::decode(&bytes)
    };
    // Survive the agent's terminal, session and signals aimed at its group.
    let _ = sysproc::ignore_signals(&[
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ]);
    let _ = nix::unistd::setsid();
    // Pin no mount of the agent's working directory.
    let _ = nix::unistd::chdir("/");
    match sysproc::fork_single_threaded() {
        Ok(Forked::Parent(_)) => sysproc::exit_now(0),
        Ok(Forked::Child) => {}
        Err(e) => {
            report(&MonitorReport {
                state: None,
                error: Some(InitFailure {
                    step: "monitor fork".into(),
                    message: e.to_string(),
                }),
            });
            std::process::exit(1)
        }
    }
    stamps.stamp("monitor.forked");
    let result = received
        .map_err(|source| MonitorError::Seccomp {
            id: Path::new(dir)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source,
        })
        .and_then(|filter| run(Path::new(dir), filter, stamps));
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            // Before the report this reaches the agent; afterwards only monitor.log.
            report(&MonitorReport {
                state: None,
                error: Some(InitFailure {
                    step: "monitor".into(),
                    message: e.to_string(),
                }),
            });
            eprintln!("berth monitor: {e}");
            1
        }
    };
    sysproc::exit_now(code)
}

fn report(r: &MonitorReport) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, r);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Detaches stdin/stdout from the agent's pipe (its reader sees EOF).
fn detach_stdio() {
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}

fn run(
    dir: &Path,
    received: Option<seccomp::Filter>,
    mut stamps: Stamps,
) -> Result<(), MonitorError> {
    let id_hint = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cfg = config::read_disk_config(&id_hint, &dir.join("config.json"))?;
    let id = cfg.container.id.clone();
    let sys = |step: &'static str| {
        let id = id.clone();
        move |source| MonitorError::Sys { id, step, source }
    };
    let hierarchy =
        Hierarchy::detect().ok_or_else(|| MonitorError::NoCgroups { id: id.clone() })?;
    let cgroup = Cgroup::new(hierarchy, &cfg.cgroup_parent, &id);
    stamps.stamp("monitor.config");
    // Leave the agent's cgroup (its unit) before the container exists, so
    // stopping or killing the agent's unit leaves the monitor and its logs alone.
    MonitorCgroup::detect(&cfg.cgroup_parent, &id).enter(std::process::id() as i32)?;
    stamps.stamp("monitor.cgroup");
    // The trace file, for the init too (close-on-exec).
    let stages = if stamps.on() {
        stages::open_append(dir).ok().map(OwnedFd::from)
    } else {
        None
    };

    let cloexec = OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;
    let (rep_r, rep_w) = nix::unistd::pipe2(cloexec).map_err(sys("pipe"))?;

    // Compiled before the fork (by the agent, or here) so the init only has
    // to install it, right before execve.
    let filter = match received {
        Some(filter) => filter,
        None => seccomp::compile_for(&cfg).map_err(|source| MonitorError::Seccomp {
            id: id.clone(),
            source,
        })?,
    };
    stamps.stamp("monitor.seccomp");
    Namespaces::default().enter_pid_for_children(&id)?;
    let child = match sysproc::fork_single_threaded().map_err(|source| MonitorError::Io {
        id: id.clone(),
        step: "fork init",
        source,
    })? {
        Forked::Child => {
            drop((out_r, err_r, go_w, rep_r));
            stamps.clear();
            stamps.stamp("init.start");
            process::init_main(
                dir,
                &cfg,
                InitFds {
                    go: go_r,
                    report: rep_w,
                    stdout: out_w,
                    stderr: err_w,
                    stages,
                },
                &filter,
                stamps,
            )
        }
        Forked::Parent(child) => child,
    };
    stamps.stamp("monitor.fork");
    drop((out_w, err_w, go_r, rep_w, filter));

    if let Err(e) = cgroup.add_pid(child.as_raw()) {
        drop(go_w); // the init sees EOF and exits
        let _ = waitpid(child, None);
        return Err(e.into());
    }
    nix::unistd::write(&go_w, b"g").map_err(sys("release init"))?;
    drop(go_w);
    stamps.stamp("monitor.released");

    let failure = read_to_end(rep_r);
    stamps.stamp("monitor.exec-seen");
    if !failure.is_empty() {
        let _ = waitpid(child, None);
        let error =
            serde_json::from_slice::<InitFailure>(&failure).unwrap_or_else(|_| InitFailure {
                step: "init".into(),
                message: String::from_utf8_lossy(&failure).into_owned(),
            });
        report(&MonitorReport {
            state: None,
            error: Some(error),
        });
        detach_stdio();
        return Ok(());
    }

    let me = nix::unistd::getpid().as_raw();
    let state = StateFile {
        pid: child.as_raw(),
        pid_start: super::proc_start(child.as_raw()).unwrap_or(0),
        monitor_pid: me,
        monitor_start: super::proc_start(me).unwrap_or(0),
        started_at_ms: config::now_ms(),
    };
    config::write_json(&id, &dir.join("state.json"), &state)?;
    stamps.stamp("monitor.state");
    if let Some(fd) = &stages {
        stamps.flush_to(fd);
    }
    report(&MonitorReport {
        state: Some(state),
        error: None,
    });
    detach_stdio();
    // The config is not needed while pumping logs; dropping it keeps RSS small.
    let log_max = cfg.container.log_max_bytes.max(4096);
    drop(cfg);

    pump_logs(
        [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        RotatingLog::open(dir.join("logs").join(LOG_NAME), log_max),
    );
    stamps.stamp("monitor.exit-seen");

    // Raw statuses: nix's WaitStatus fails on a death by a real-time signal.
    let exit = loop {
        match sysproc::wait_raw(child.as_raw(), true) {
            Ok(Some((_, status))) => break super::init::exit_status(status),
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                return Err(MonitorError::Io {
                    id: id.clone(),
                    step: "waitpid",
                    source: e,
                })
            }
        }
    };
    stamps.stamp("monitor.reaped");
    let exit = ExitFile {
        code: exit.0,
        signal: exit.1,
        oom_killed: cgroup.oom_kills() > 0,
        finished_at_ms: config::now_ms(),
    };
    config::write_json(&id, &dir.join("exit.json"), &exit)?;
    stamps.stamp("monitor.exit-json");
    if let Some(fd) = &stages {
        stamps.flush_to(fd);
    }
    Ok(())
}

fn read_to_end(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return out,
        }
    }
}

/// A log file rotated to `<path>.1` before a record would take it past
/// `max` bytes. Records are collected with [`RotatingLog::push`] and written
/// with one `write` per [`RotatingLog::flush`]; a record is never split
/// between two files.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    pending: Vec<u8>,
}

impl RotatingLog {
    /// Opens (appends to) `path`.
    pub fn open(path: PathBuf, max: u64) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        RotatingLog {
            path,
            file,
            size,
            max,
            pending: Vec::new(),
        }
    }

    /// Queues one whole record, first writing out and rotating when it
    /// would not fit in the current file.
    pub fn push(&mut self, record: &[u8]) {
        let used = self.size + self.pending.len() as u64;
        if used > 0 && used + record.len() as u64 > self.max {
            self.flush();
            self.rotate();
        }
        self.pending.extend_from_slice(record);
    }

    /// Writes the queued records. A full disk drops them rather than
    /// blocking the workload: what a failed write left of them is cut off
    /// again, so the file holds whole records only, and a file that could
    /// not be opened is tried again at the next flush.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.file.is_none() {
            *self = RotatingLog {
                pending: std::mem::take(&mut self.pending),
                ..RotatingLog::open(self.path.clone(), self.max)
            };
        }
        if let Some(f) = &mut self.file {
            if f.write_all(&self.pending).is_ok() {
                self.size += self.pending.len() as u64;
            } else {
                let _ = f.set_len(self.size);
            }
        }
        self.pending.clear();
    }

    /// Moves the live file to `<path>.1` (older ones one step on) and
    /// starts an empty one, so that `<path>` never stops existing: an empty
    /// file is renamed over `<path>.1` and then exchanged with the live file
    /// (`renameat2(RENAME_EXCHANGE)`), each step atomic. Where that cannot
    /// be done (a full disk, a filesystem without exchange), the live file
    /// is renamed away and recreated.
    fn rotate(&mut self) {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        self.file = None;
        for i in (2..LOG_FILES).rev() {
            let _ = std::fs::rename(rotated(&self.path, i - 1), rotated(&self.path, i));
        }
        let first = rotated(&self.path, 1);
        let fresh = staged(&first);
        let swapped = std::fs::File::create(&fresh).is_ok()
            && std::fs::rename(&fresh, &first).is_ok()
            && renameat2(
                AT_FDCWD,
                &self.path,
                AT_FDCWD,
                &first,
                RenameFlags::RENAME_EXCHANGE,
            )
            .is_ok();
        if !swapped {
            let _ = std::fs::remove_file(&fresh);
            let _ = std::fs::rename(&self.path, &first);
        }
        let pending = std::mem::take(&mut self.pending);
        *self = RotatingLog::open(self.path.clone(), self.max);
        self.pending = pending;
    }
}

/// `<path>.new`: where a file is made before it is renamed into place.
fn staged(path: &Path) -> PathBuf {
    suffixed(path, "new")
}

/// `<path>.<suffix>`.
fn suffixed(path: &Path, suffix: impl std::fmt::Display) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    PathBuf::from(s)
}

/// `<path>.<n>`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    suffixed(path, n)
}

/// Writes each pipe's lines into `log` as CRI records, in the order they are
/// read, until every pipe is closed (the workload and all its processes are
/// gone: PID 1 exiting kills the whole PID namespace). Each read is stamped
/// with the time it returned; a line's record carries the time of the read
/// that completed it.
fn pump_logs<const N: usize>(streams: [(OwnedFd, Stream); N], mut log: RotatingLog) {
    let mut splitters = streams
        .each_ref()
        .map(|(_, s)| LineSplitter::new(*s, crilog::MAX_LINE));
    let mut open = [true; N];
    let mut buf = vec![0u8; 16 * 1024];
    while open.iter().any(|o| *o) {
        let idx: Vec<usize> = (0..N).filter(|i| open[*i]).collect();
        let mut fds: Vec<PollFd<'_>> = idx
            .iter()
            .map(|i| PollFd::new(streams[*i].0.as_fd(), PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<(usize, PollFlags)> = idx
            .iter()
            .zip(&fds)
            .map(|(i, f)| (*i, f.revents().unwrap_or(PollFlags::empty())))
            .collect();
        drop(fds);
        for (i, rev) in ready {
            if rev.is_empty() {
                continue;
            }
            let n = match nix::unistd::read(&streams[i].0, &mut buf) {
                Ok(0) => {
                    open[i] = false;
                    0
                }
                Ok(n) => n,
                Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => continue,
                Err(_) => {
                    open[i] = false;
                    0
                }
            };
            let now = crilog::now();
            let splitter = &mut splitters[i];
            splitter.push(&buf[..n], now, &mut |r| log.push(r));
            if !open[i] {
                splitter.finish(now, &mut |r| log.push(r));
            }
        }
        log.flush();
    }
    let now = crilog::now();
    for s in &mut splitters {
        s.finish(now, &mut |r| log.push(r));
    }
    log.flush();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_disk_drops_whole_records_and_logging_resumes_when_there_is_room() {
        crate::require_root!();
        let fs = crate::testing::SmallFs::mount("64k").unwrap();
        let p = fs.path().join("container.log");
        let mut log = RotatingLog::open(p.clone(), 1 << 20);
        log.push(b"first\n");
        log.flush();
        fs.fill("filler");
        // 40 KiB of records meet the full disk part-way (tmpfs pages).
        let record = [b'x'; 1023];
        for _ in 0..40 {
            log.push(&record);
            log.push(b"\n");
        }
        log.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "first\n");
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        log.push(b"again\n");
        log.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "first\nagain\n");
    }

    #[test]
    fn logs_rotate_keeping_two_files_without_splitting_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("container.log");
        let mut log = RotatingLog::open(p.clone(), 10);
        for r in [&b"aaaaaaaa\n"[..], b"bbbbbbbb\n", b"cccc\n", b"dd\n"] {
            log.push(r);
            log.flush();
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "cccc\ndd\n");
        assert_eq!(
            std::fs::read_to_string(rotated(&p, 1)).unwrap(),
            "bbbbbbbb\n"
        );
        assert!(!rotated(&p, 2).exists());
        // Queued records rotate at record boundaries too.
        log.push(b"eeee\n");
        log.push(b"ffff\n");
        log.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "eeee\nffff\n");
        assert_eq!(
            std::fs::read_to_string(rotated(&p, 1)).unwrap(),
            "cccc\ndd\n"
        );
        // A record larger than the bound gets a file of its own.
        log.push(b"gggggggggggggggg\n");
        log.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "gggggggggggggggg\n");
        // Reopening appends.
        let mut log = RotatingLog::open(p.clone(), 100);
        log.push(b"h\n");
        log.flush();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "gggggggggggggggg\nh\n"
        );
    }

    /// `tail -F`, `berthctl logs -f` or a listing at any moment finds the
    /// live file: a rotation never leaves its name missing.
    #[test]
    fn the_live_file_exists_throughout_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("container.log");
        let mut log = RotatingLog::open(p.clone(), 8);
        log.push(b"first\n");
        log.flush();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (p, done) = (p.clone(), done.clone());
            std::thread::spawn(move || {
                let mut missing = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    missing += usize::from(!p.exists());
                }
                missing
            })
        };
        for i in 0..3000 {
            log.push(format!("line {i:03}\n").as_bytes());
            log.flush();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            watcher.join().unwrap(),
            0,
            "times the live file was missing"
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["container.log", "container.log.1"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "line 2999\n");
        assert_eq!(
            std::fs::read_to_string(rotated(&p, 1)).unwrap(),
            "line 2998\n"
        );
    }

    #[test]
    fn pipes_become_interleaved_records_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("container.log");
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            for i in 1..=3 {
                nix::unistd::write(&out_w, format!("out{i}\n").as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
                nix::unistd::write(&err_w, format!("err{i}\n").as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            nix::unistd::write(&out_w, b"unterminated").unwrap();
        });
        pump_logs(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            RotatingLog::open(p.clone(), 1 << 20),
        );
        writer.join().unwrap();
        let entries = crilog::read_entries(&[crilog::LogFile {
            path: p,
            stream: Stream::Stdout,
        }]);
        let got: Vec<(Stream, String)> = entries
            .iter()
            .map(|e| (e.stream, String::from_utf8(e.line.clone()).unwrap()))
            .collect();
        let want: Vec<(Stream, String)> = (1..=3)
            .flat_map(|i| {
                [
                    (Stream::Stdout, format!("out{i}")),
                    (Stream::Stderr, format!("err{i}")),
                ]
            })
            .chain([(Stream::Stdout, "unterminated".to_string())])
            .collect();
        assert_eq!(got, want);
        assert!(entries.iter().all(|e| e.time.is_some()));
        assert!(entries.windows(2).all(|w| w[0].time <= w[1].time));
    }
}
