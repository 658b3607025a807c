//! Waiting for a container's exit (`wait`), notified rather than polled: a
//! pidfd of its monitor becomes readable the moment the monitor exits, which
//! it does right after writing `exit.json` (and every log line). `stop` and
//! `remove` wait the same way.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::config::{self, ExitFile, StateFile};
use super::state::alive;
use super::{ContainerState, ExitInfo, Runtime, RuntimeError};

impl Runtime {
    /// Waits up to `timeout` for the container to exit and returns how it
    /// ended (at once for one that has already exited); `Ok(None)` when it
    /// still runs after `timeout`. `NotRunning` for a container that was
    /// never started, `MonitorLost` when its monitor is gone without
    /// recording the exit.
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<Option<ExitInfo>, RuntimeError> {
        let dir = self.container_dir(id);
        if !config::valid_id(id) || !dir.is_dir() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        let exited = || {
            config::read_json::<ExitFile>(id, &dir.join("exit.json"))
                .ok()
                .flatten()
                .map(ExitInfo::from)
        };
        if let Some(e) = exited() {
            return Ok(Some(e));
        }
        let Some(st) = config::read_json::<StateFile>(id, &dir.join("state.json"))? else {
            return Err(RuntimeError::NotRunning {
                id: id.into(),
                state: ContainerState::Created.name().into(),
            });
        };
        if !monitor_exited(&st, timeout) {
            return Ok(None);
        }
        exited()
            .map(Some)
            .ok_or_else(|| RuntimeError::MonitorLost { id: id.into() })
    }
}

/// Whether the monitor `st` names has exited (or is not that process any
/// more) within `timeout`: `poll` on its pidfd, which the kernel makes
/// readable when the process exits, whoever its parent is.
pub(super) fn monitor_exited(st: &StateFile, timeout: Duration) -> bool {
    let pidfd = match crate::sys::process::pidfd_open(st.monitor_pid) {
        Ok(fd) => fd,
        // ESRCH: gone. Anything else: fall back to the start-time check below.
        Err(_) => return !alive(st.monitor_pid, st.monitor_start),
    };
    // The pid may have been reused before the pidfd was opened.
    if !alive(st.monitor_pid, st.monitor_start) {
        return true;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) => {}
            Ok(_) => return true,
            Err(nix::Error::EINTR) => {}
            Err(_) => return !alive(st.monitor_pid, st.monitor_start),
        }
    }
}
