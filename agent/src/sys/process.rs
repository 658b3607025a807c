//! Process-level syscalls the container runtime needs and nix leaves unsafe or
//! uncovered: `fork` in a provably single-threaded process, `_exit`,
//! `close_range`, pidfds, and resetting signal dispositions before `execve`.

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
    for s in Signal::iterator() {
        if s == Signal::SIGKILL || s == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code.
        unsafe { nix::sys::signal::signal(s, SigHandler::SigDfl) }?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}
