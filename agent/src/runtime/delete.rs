//! Removing a container (`remove`, `remove_with`): killing it if still
//! running, waiting for its monitor to write its last lines, handing the log
//! files over, then undoing everything create made (cgroups, mounts left,
//! the directory); `teardown` is also how a failed create is undone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MntFlags;

use super::cgroups::MonitorCgroup;
use super::config::{self, StateFile};
use super::crilog::LogFile;
use super::stages::Stamps;
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
        let mut stamps = Stamps::new(self.paths.trace_stages);
        if let ContainerState::Running { .. } | ContainerState::MonitorLost { .. } = self.state(id)
        {
            match self.stop(id, Some(libc::SIGKILL), Some(Duration::ZERO)) {
                Ok(_) | Err(RuntimeError::MonitorLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The monitor writes into the directory until it exits.
        stamps.stamp("remove.state");
        if let Ok(Some(st)) = config::read_json::<StateFile>(id, &dir.join("state.json")) {
            super::wait::monitor_exited(&st, Duration::from_secs(5));
        }
        stamps.stamp("remove.monitor");
        if let (Ok(info), Ok(files)) = (self.info(id), self.logs(id)) {
            keep_logs(&info, &files);
        }
        stamps.stamp("remove.logs");
        let result = self.teardown_traced(id, &dir, &mut stamps);
        if stamps.on() {
            // The directory is gone: beside it, for the benchmark to collect.
            let _ = std::fs::create_dir_all(&self.paths.run_dir);
            stamps.flush_into_file(&self.removal_stages(id));
        }
        result
    }

    /// Where [`Runtime::remove`] leaves its stage stamps when tracing
    /// (`<run_dir>/<id>.stages`; see [`super::stages`]); the reader deletes it.
    pub fn removal_stages(&self, id: &str) -> std::path::PathBuf {
        self.paths.run_dir.join(format!("{id}.stages"))
    }

    /// Undoes everything create may have made; collects every failure.
    pub(super) fn teardown(&self, id: &str, dir: &Path) -> Result<(), RuntimeError> {
        self.teardown_traced(id, dir, &mut Stamps::new(false))
    }

    fn teardown_traced(
        &self,
        id: &str,
        dir: &Path,
        stamps: &mut Stamps,
    ) -> Result<(), RuntimeError> {
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
        stamps.stamp("remove.cgroup");
        let monitor = MonitorCgroup::detect(&self.paths.cgroup_parent, id);
        if let Err(e) = monitor.remove(Duration::from_secs(5)) {
            failures.push(e.to_string());
        }
        stamps.stamp("remove.monitor-cgroup");
        for m in mounts_under(dir) {
            if let Err(e) = nix::mount::umount2(&m, MntFlags::MNT_DETACH) {
                failures.push(format!("unmounting {}: {e}", m.display()));
            }
        }
        stamps.stamp("remove.mounts");
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("removing {}: {e}", dir.display())),
        }
        stamps.stamp("remove.dir");
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
