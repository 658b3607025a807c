//! Removing a container (`remove`, `remove_with`): killing it if still
//! running, waiting for its monitor to write its last lines, handing the log
//! files over, then undoing everything create made (cgroups, mounts left,
//! the directory); `teardown` is also how a failed create is undone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MntFlags;

use super::cgroups::MonitorCgroup;
use super::config::{self, StateFile};
use super::crilog::LogFile;
use super::state::alive;
use super::{ContainerInfo, ContainerState, Runtime, RuntimeError};

impl Runtime {
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
        if let ContainerState::Running { .. } | ContainerState::MonitorLost { .. } = self.state(id)
        {
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
    pub(super) fn teardown(&self, id: &str, dir: &Path) -> Result<(), RuntimeError> {
        self.forget(id);
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
        let monitor = MonitorCgroup::detect(&self.paths.cgroup_parent, id);
        if let Err(e) = monitor.remove(Duration::from_secs(5)) {
            failures.push(e.to_string());
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
