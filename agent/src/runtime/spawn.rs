//! Starting the runtime's helper processes (the monitor, the exec helper)
//! from a read-only mount of the agent binary that nothing can reach, so no
//! process a container can reach has a writable `/proc/<pid>/exe`
//! (CVE-2019-5736, see docs/runtime.md): a detached read-only clone of the
//! binary's mount made once per runtime (`open_tree` + `mount_setattr`,
//! Linux 5.12+) and exec'd through `/proc/self/fd/N`; on older kernels a
//! read-only bind mount per start, lazily detached once the process has exec'd.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};

use super::{Runtime, RuntimeError};

/// The detached read-only clone of `exe`'s mount (its root is the file), or
/// `None` when this kernel cannot make one.
pub(super) fn detached_ro_clone(exe: &Path) -> Option<OwnedFd> {
    let tree = crate::sys::mount::open_tree_clone(exe).ok()?;
    let ro = crate::sys::mount::ATTR_RDONLY
        | crate::sys::mount::ATTR_NOSUID
        | crate::sys::mount::ATTR_NODEV;
    crate::sys::mount::mount_setattr(std::os::fd::AsFd::as_fd(&tree), ro, 0, false).ok()?;
    Some(tree)
}

impl Runtime {
    /// Runs `monitor_exe args...` (`stdio`: stdin, stdout and stderr; empty
    /// env but [`super::stages::ENV`] when tracing; `argv[0]` is
    /// `monitor_exe`) from a read-only mount nothing else can reach, so its
    /// `/proc/<pid>/exe` names a read-only mount (CVE-2019-5736): the
    /// runtime's detached clone ([`detached_ro_clone`], no mount call per
    /// start), or else a bind mount of it at `exe` that is lazily detached
    /// and removed as soon as the process has exec'd.
    pub(super) fn spawn_from_ro_mount(
        &self,
        id: &str,
        exe: &Path,
        args: &[std::ffi::OsString],
        stdio: (Stdio, Stdio, Stdio),
        spawn_err: impl FnOnce(std::io::Error) -> RuntimeError,
    ) -> Result<std::process::Child, RuntimeError> {
        let clone = self
            .exe_clone
            .get_or_init(|| detached_ro_clone(&self.paths.monitor_exe));
        match clone {
            Some(fd) => {
                // Resolved by the kernel before close-on-exec fds are closed.
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                self.helper_command(&path, args, stdio)
                    .spawn()
                    .map_err(spawn_err)
            }
            None => self.spawn_from_bind_mount(id, exe, args, stdio, spawn_err),
        }
    }

    /// The command of a helper process: `program args…` with `stdio`, an
    /// empty environment (but [`super::stages::ENV`] when tracing) and
    /// `monitor_exe` as `argv[0]`.
    fn helper_command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[std::ffi::OsString],
        (stdin, stdout, stderr): (Stdio, Stdio, Stdio),
    ) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg0(&self.paths.monitor_exe)
            .args(args)
            .env_clear()
            .envs(self.paths.trace_stages.then_some((super::stages::ENV, "1")))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        cmd
    }

    /// [`Runtime::spawn_from_ro_mount`] on kernels without `open_tree`.
    fn spawn_from_bind_mount(
        &self,
        id: &str,
        exe: &Path,
        args: &[std::ffi::OsString],
        stdio: (Stdio, Stdio, Stdio),
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
                self.helper_command(exe, args, stdio)
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
