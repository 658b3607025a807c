//! Process-level syscalls the container runtime needs and nix leaves unsafe or
//! uncovered: `fork` in a provably single-threaded process, `_exit`,
//! `close_range`, pidfds, resetting signal dispositions before `execve`, and
//! what the container's init needs for any signal number (nix's `Signal` has no
//! real-time signals): `sigwaitinfo`, `kill` and `waitpid` with raw statuses.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// Which side of a fork we are on.
#[derive(Debug)]
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Number of threads of the calling process, from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks the calling process. Refuses (with `EDEADLK`-like error) unless the
/// process has exactly one thread, which makes the child free to allocate,
/// lock and run arbitrary Rust code.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )));
    }
    // SAFETY: the process is single-threaded (checked above; nothing in this
    // crate starts threads between the check and the call), so no lock can be
    // held by another thread at fork time and the child may run any code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Ends the process immediately, without running atexit handlers or
/// destructors (what a forked child that failed must do).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Marks every fd >= `first` close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`),
/// so only fds below `first` survive `execve`.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only changes fd flags; the arguments are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `pidfd_open(pid, 0)`: a stable handle on one process, immune to pid reuse.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; on success the kernel returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly returned, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    let null: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: a valid pidfd, a signal number and a NULL siginfo (allowed by the ABI).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, null, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the listed signals to be ignored (the monitor ignores SIGHUP, SIGINT,
/// SIGTERM, SIGQUIT and SIGPIPE so it outlives its creator's terminal/session).
pub fn ignore_signals(signals: &[Signal]) -> io::Result<()> {
    for &s in signals {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety concerns.
        unsafe { nix::sys::signal::signal(s, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// Resets every catchable signal to its default disposition and unblocks all
/// signals: what the workload must start with (ignored signals survive execve).
pub fn reset_signals() -> io::Result<()> {
    default_signal_handlers()?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// Sets every catchable standard signal to its default disposition, leaving
/// the signal mask as it is.
pub fn default_signal_handlers() -> io::Result<()> {
    for s in Signal::iterator() {
        if s == Signal::SIGKILL || s == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code.
        unsafe { nix::sys::signal::signal(s, SigHandler::SigDfl) }?;
    }
    Ok(())
}

/// `sigwaitinfo(set)`: waits for one of the signals in `set` (which must be
/// blocked) and returns its number, real-time signals included. `EINTR` when
/// a signal outside `set` interrupted the wait.
pub fn wait_signal(set: &SigSet) -> io::Result<i32> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: `set` is a valid sigset_t for the call's duration and `info`
    // points to writable memory of the right size, filled by the kernel on success.
    let r = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `kill(pid, sig)` for any signal number (nix's `kill` takes standard signals only).
pub fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments; kill has no memory effects in this process.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `waitpid(pid, &status, WNOHANG if !block)` with the raw status (nix's
/// `WaitStatus` cannot hold a death by a real-time signal). `pid` -1 is any
/// child. `Ok(None)`: children exist but none has changed state (only with
/// `block == false`); `ECHILD`: no child left.
pub fn wait_raw(pid: i32, block: bool) -> io::Result<Option<(i32, i32)>> {
    let flags = if block { 0 } else { libc::WNOHANG };
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable int for the call's duration.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    match r {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        r => Ok(Some((r, status))),
    }
}
