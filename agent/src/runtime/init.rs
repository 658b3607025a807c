//! Berth's minimal init, for `init = true` (Compose's `init`, Docker's
//! `--init`, which runs tini). The container's init process
//! ([`super::process`]) forks once more after building the rootfs: the child
//! becomes the workload as without `init`; the parent stays PID 1 as agent
//! code (no binary in the image needed), drops to the container's user with at
//! most `CAP_KILL` (if the container has it), installs the seccomp filter, and then only waits for
//! signals: it forwards each to the workload (tini's default: the workload's
//! pid), reaps every child (orphans of the PID namespace are reparented to it)
//! and exits with the workload's status (128 + signal when signalled, as tini)
//! as soon as the workload is gone — which makes the kernel kill the rest.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::config::DiskConfig;
use super::process::{self, io_errno, ProcessError};
use super::seccomp::Filter;
use crate::sys::process::{self as sysproc, Forked};

/// Signals the init leaves unblocked (as tini): faults of its own, delivered
/// to it by the kernel. `SIGKILL` and `SIGSTOP` cannot be blocked; everything
/// else is waited for with `sigwaitinfo`.
pub const FAULTS: [Signal; 7] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
];

/// The capabilities the init keeps in a root container: enough to forward a
/// signal to a workload that changed its uid (e.g. `gosu`). A non-root
/// container's init has none (it signals processes of its own uid).
pub const INIT_CAPS: &[caps::Capability] = &[caps::Capability::CAP_KILL];

/// The init's name in `/proc/<pid>/comm` (what `ps` shows in the container).
pub const COMM: &std::ffi::CStr = c"berth-init";

/// The signals the init blocks and waits for: all but [`FAULTS`] (and the
/// unblockable ones), real-time signals included.
pub fn waited() -> SigSet {
    let mut set = SigSet::all();
    for s in FAULTS {
        set.remove(s);
    }
    set
}

/// What PID 1 does with a signal it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// `SIGCHLD`: reap whatever exited.
    Reap,
    /// Anything else (the stop signal, `SIGHUP`, `SIGUSR1`, `SIGWINCH`,
    /// real-time signals…): send it on to the workload.
    Forward,
}

/// The action for signal number `sig`.
pub fn action(sig: i32) -> SignalAction {
    if sig == libc::SIGCHLD {
        SignalAction::Reap
    } else {
        SignalAction::Forward
    }
}

/// `(code, signal)` of a raw `waitpid` status of an exited process: the exit
/// code, or 128 + the signal that killed it (as a shell, tini and Docker
/// report it) together with that signal.
pub fn exit_status(raw: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(raw), None)
    }
}

/// In the container's PID 1, after the rootfs: blocks the [`waited`] signals
/// (so a `SIGCHLD` or stop signal arriving early stays pending), resets the
/// dispositions inherited from the monitor and forks. The child goes on to
/// exec the workload (it unblocks everything); the parent is the init.
pub fn fork_workload(id: &str) -> Result<Forked, ProcessError> {
    let err = |step: &'static str| {
        move |e: std::io::Error| ProcessError::Setup {
            id: id.into(),
            step,
            source: io_errno(&e),
        }
    };
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&waited()), None).map_err(
        |source| ProcessError::Setup {
            id: id.into(),
            step: "block signals",
            source,
        },
    )?;
    sysproc::default_signal_handlers().map_err(err("default signal handlers"))?;
    sysproc::fork_single_threaded().map_err(err("fork the workload"))
}

/// In the init (the parent of [`fork_workload`]): the container's user and
/// groups with at most [`INIT_CAPS`] (bounding set too), non-dumpable (no
/// ptrace or `/proc/1/exe` from the workload), named [`COMM`],
/// `no_new_privs` and the seccomp filter — the same as the workload's, which
/// denies nothing the init uses (`rt_sigtimedwait`, `kill`, `wait4`, `exit_group`).
pub fn become_init(cfg: &DiskConfig, filter: &Filter) -> Result<(), ProcessError> {
    let id = cfg.container.id.as_str();
    let setup = |step: &'static str| {
        move |source| ProcessError::Setup {
            id: id.into(),
            step,
            source,
        }
    };
    // At most CAP_KILL, and only when the container has it.
    let caps = process::container_caps(cfg)?;
    let keep = INIT_CAPS
        .iter()
        .copied()
        .filter(|c| caps.contains(c))
        .collect();
    process::set_identity_keeping(cfg, &keep)?;
    // A uid change may have reset it (to fs.suid_dumpable).
    nix::sys::prctl::set_dumpable(false).map_err(setup("set non-dumpable"))?;
    nix::sys::prctl::set_name(COMM).map_err(setup("set name"))?;
    nix::sys::prctl::set_no_new_privs().map_err(setup("no_new_privs"))?;
    filter.apply().map_err(|e| ProcessError::Setup {
        id: id.into(),
        step: "seccomp",
        source: e.errno(),
    })
}

/// The exit code used if the workload's status could not be read (no child
/// left without having seen it: should not happen).
pub const LOST_CODE: i32 = 255;

/// The init's loop: waits for signals, forwards them to `workload`, reaps
/// every exited child, and returns the workload's exit code (128 + signal
/// when signalled) once it has exited.
pub fn supervise(workload: i32) -> i32 {
    let waited = waited();
    loop {
        match sysproc::wait_signal(&waited) {
            Ok(sig) => {
                if action(sig) == SignalAction::Forward {
                    // ESRCH: the workload has exited; it is reaped below.
                    let _ = sysproc::send_signal(workload, sig);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // Only an invalid set fails; wait for the workload rather than spin.
            Err(_) => {
                return match sysproc::wait_raw(workload, true) {
                    Ok(Some((_, status))) => exit_status(status).0,
                    _ => LOST_CODE,
                }
            }
        }
        if let Some(code) = reap(workload) {
            return code;
        }
    }
}

/// Reaps every child that has exited (SIGCHLDs coalesce, and any signal may
/// arrive with one pending); the workload's exit code once it is among them.
fn reap(workload: i32) -> Option<i32> {
    let mut code = None;
    loop {
        match sysproc::wait_raw(-1, false) {
            Ok(Some((pid, status))) => {
                if pid == workload {
                    code = Some(exit_status(status).0);
                }
            }
            Ok(None) => return code,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return Some(code.unwrap_or(LOST_CODE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigchld_is_reaped_everything_else_forwarded() {
        let table = [
            (libc::SIGCHLD, SignalAction::Reap),
            (libc::SIGTERM, SignalAction::Forward),
            (libc::SIGINT, SignalAction::Forward),
            (libc::SIGQUIT, SignalAction::Forward),
            (libc::SIGHUP, SignalAction::Forward),
            (libc::SIGUSR1, SignalAction::Forward),
            (libc::SIGUSR2, SignalAction::Forward),
            (libc::SIGWINCH, SignalAction::Forward),
            (libc::SIGRTMIN() + 3, SignalAction::Forward),
        ];
        for (sig, want) in table {
            assert_eq!(action(sig), want, "signal {sig}");
        }
    }

    #[test]
    fn the_init_waits_for_all_but_its_own_faults() {
        let set = waited();
        for s in [
            Signal::SIGTERM,
            Signal::SIGCHLD,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGWINCH,
            Signal::SIGPIPE,
        ] {
            assert!(set.contains(s), "{s}");
        }
        for s in FAULTS {
            assert!(!set.contains(s), "{s}");
        }
    }

    #[test]
    fn statuses_decode_as_a_shell_reports_them() {
        // Raw wait statuses: exit code in bits 8-15; signal in bits 0-6 (0x80 = core dumped).
        let table = [
            (0, (0, None)),
            (7 << 8, (7, None)),
            (255 << 8, (255, None)),
            (libc::SIGTERM, (143, Some(15))),
            (libc::SIGKILL, (137, Some(9))),
            (libc::SIGSEGV | 0x80, (139, Some(11))),
            (libc::SIGRTMIN() + 3, (128 + 37, Some(37))),
        ];
        for (raw, want) in table {
            assert_eq!(exit_status(raw), want, "raw {raw:#x}");
        }
    }
}
