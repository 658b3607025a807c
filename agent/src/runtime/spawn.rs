//! Starting the runtime's helper processes (the monitor, the exec helper)
//! from a read-only bind mount of the agent binary that is lazily detached
//! once they have exec'd, so no process a container can reach has a writable
//! `/proc/<pid>/exe` (CVE-2019-5736, see docs/runtime.md).

use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};

use super::{Runtime, RuntimeError};

impl Runtime {
    /// Runs `monitor_exe args...` (stdin `/dev/null`, `stdout` and `stderr` as
    /// given, empty env)
    /// from a read-only bind mount of it at `exe` that is lazily detached and
    /// removed as soon as the process has exec'd: its `/proc/<pid>/exe` then
    /// names a read-only mount nothing else can reach (CVE-2019-5736).
    pub(super) fn spawn_from_ro_mount(
        &self,
        id: &str,
        exe: &Path,
        args: &[std::ffi::OsString],
        stdout: Stdio,
        stderr: Stdio,
        spawn_err: impl FnOnce(std::io::Error) -> RuntimeError,
    ) -> Result<std::process::Child, RuntimeError> {
        std::fs::write(exe, b"").map_err(Self::io(id, "creating", exe))?;
        let mount_err = |step: &'static str, exe: &Path| {
            let (id, exe) = (id.to_string(), exe.to_path_buf());
            move |e: nix::Error| RuntimeError::Io {
                id,
                step,
                path: exe,
                source: e.into(),
            }
        };
        let bound = nix::mount::mount(
            Some(&self.paths.monitor_exe),
            exe,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("bind-mounting the monitor executable at", exe));
        if let Err(e) = bound {
            let _ = std::fs::remove_file(exe);
            return Err(e);
        }
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        let spawned = nix::mount::mount(None::<&str>, exe, None::<&str>, ro, None::<&str>)
            .map_err(mount_err("remounting read-only", exe))
            .and_then(|()| {
                Command::new(exe)
                    .args(args)
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    .spawn()
                    .map_err(spawn_err)
            });
        // The running process keeps the detached read-only mount alive as its /proc/self/exe.
        let detached =
            nix::mount::umount2(exe, MntFlags::MNT_DETACH).map_err(mount_err("detaching", exe));
        let removed = std::fs::remove_file(exe).map_err(Self::io(id, "removing", exe));
        let child = spawned?;
        detached?;
        removed?;
        Ok(child)
    }
}
