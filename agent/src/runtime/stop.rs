//! Stopping a container (`stop`): its stop signal to PID 1 through a pidfd
//! (never a recycled pid), the stop timeout, then SIGKILL to PID 1 and to
//! anything left in its cgroup, and the exit status as the monitor recorded
//! it — or, for a workload whose monitor died, as `stop` records it itself.

use std::time::{Duration, Instant};

use super::config::{self, ExitFile, StateFile};
use super::state::alive;
use super::{ContainerState, ExitInfo, Runtime, RuntimeError};

impl Runtime {
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
            ContainerState::MonitorLost { .. } => {
                return self.stop_unsupervised(id, signal, timeout);
            }
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

    /// Stops a workload whose monitor died (no one else will record its
    /// exit): its stop signal, `timeout`, SIGKILL to PID 1 and the cgroup,
    /// then `exit.json` written here with 128 + the last signal sent (its
    /// real status went to whoever reaps orphans), as containerd reports a
    /// task whose shim died. Afterwards the container reads `Exited`.
    fn stop_unsupervised(
        &self,
        id: &str,
        signal: i32,
        timeout: Duration,
    ) -> Result<ExitInfo, RuntimeError> {
        let dir = self.container_dir(id);
        let st: StateFile = config::read_json(id, &dir.join("state.json"))?
            .ok_or_else(|| RuntimeError::NotFound { id: id.into() })?;
        let gone = |within: Duration| {
            let deadline = Instant::now() + within;
            loop {
                if !alive(st.pid, st.pid_start) {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let mut last = signal;
        self.signal(id, &st, signal)?;
        if !gone(timeout) {
            last = libc::SIGKILL;
            self.signal(id, &st, libc::SIGKILL)?;
            if let Ok(cg) = self.cgroup(id) {
                cg.kill_all();
            }
            let waited = Duration::from_secs(10);
            if !gone(waited) {
                return Err(RuntimeError::StopTimeout {
                    id: id.into(),
                    waited,
                });
            }
        }
        let exit = ExitFile {
            code: 128 + last,
            signal: Some(last),
            oom_killed: false,
            finished_at_ms: config::now_ms(),
        };
        config::write_json(id, &dir.join("exit.json"), &exit)?;
        Ok(exit.into())
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

    /// The exit within `timeout` (`None`: still running): notified by
    /// [`Runtime::wait`]; when the monitor went away without a record,
    /// whatever [`Runtime::state`] says within the rest of `timeout`.
    fn wait_exit(&self, id: &str, timeout: Duration) -> Option<Result<ExitInfo, RuntimeError>> {
        let deadline = Instant::now() + timeout;
        match self.wait(id, timeout) {
            Ok(Some(exit)) => return Some(Ok(exit)),
            Ok(None) => return None,
            Err(_) => {}
        }
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
                ContainerState::Running { .. } | ContainerState::MonitorLost { .. } => {}
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
}
