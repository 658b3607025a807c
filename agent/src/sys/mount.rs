//! The new mount API calls nix does not wrap: `mount_setattr(2)` (Linux
//! 5.12) changes the flags and propagation of a mount — with `AT_RECURSIVE`,
//! of every mount below it too — in one call, or gives a detached mount an
//! id mapping (`MOUNT_ATTR_IDMAP`); `open_tree(2)` clones a mount tree into
//! a detached mount and `move_mount(2)` attaches it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// `MOUNT_ATTR_RDONLY`.
pub const ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub const ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub const ATTR_NODEV: u64 = 0x4;
/// `MOUNT_ATTR_NOEXEC`.
pub const ATTR_NOEXEC: u64 = 0x8;

/// `MOUNT_ATTR_IDMAP`.
pub const ATTR_IDMAP: u64 = 0x0010_0000;
/// `OPEN_TREE_CLONE`.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH`.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets the `MOUNT_ATTR_*` bits `set` (and, unless 0, the propagation type
/// `propagation`, e.g. `MS_PRIVATE`) on the mount `fd` refers to (an
/// `O_PATH` fd of its root), and on every mount below it when `recursive`.
/// `ENOSYS` on kernels before 5.12.
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    set: u64,
    propagation: u64,
    recursive: bool,
) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    setattr(fd, flags, &mut attr)
}

/// Gives the detached mount `fd` (from [`open_tree_clone`]), and every mount
/// below it, the id mapping of the user namespace `userns` (an open
/// `/proc/PID/ns/user`): a file owned by uid `k` on disk shows as the host
/// uid that `k` maps to in `userns`, and back on writes. `EINVAL` when a
/// filesystem in the tree cannot be idmapped (Linux 5.12+; overlayfs lower
/// layers need 5.19+).
pub fn mount_setattr_idmap(fd: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    setattr(fd, libc::AT_EMPTY_PATH | libc::AT_RECURSIVE, &mut attr)
}

fn setattr(fd: BorrowedFd<'_>, flags: libc::c_int, attr: &mut MountAttr) -> io::Result<()> {
    // SAFETY: a valid fd, an empty NUL-terminated path (AT_EMPTY_PATH), and a
    // pointer to a live `struct mount_attr` with its exact size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A detached copy of the mount tree at `path` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`: the mount and every submount), close-on-exec.
pub fn open_tree_clone(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: a NUL-terminated path that lives across the call; the returned
    // fd is checked and owned by exactly one OwnedFd.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd the kernel just returned to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Attaches the detached mount `fd` at `target` (`move_mount` with
/// `MOVE_MOUNT_F_EMPTY_PATH`).
pub fn move_mount_to(fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid fd, an empty and a NUL-terminated path that live across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
