//! The three `bpf(2)` commands the cgroup v2 device filter needs, which nix
//! does not wrap: `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! (with the verifier's log on failure), `BPF_PROG_ATTACH` to a cgroup
//! directory (`BPF_CGROUP_DEVICE`, `BPF_F_ALLOW_MULTI`, as runc and systemd
//! attach theirs) and `BPF_PROG_QUERY` of how many are attached. Layouts
//! follow `union bpf_attr` of `include/uapi/linux/bpf.h`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
pub const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` (attach type).
pub const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: programs of descendants run too; all must allow.
pub const F_ALLOW_MULTI: u32 = 2;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;

/// The size every attr below is padded to; the kernel requires the bytes
/// past the fields it knows to be zero.
const ATTR_SIZE: usize = 128;

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _tail: [u8; ATTR_SIZE - 72],
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _tail: [u8; ATTR_SIZE - 20],
}

#[repr(C)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _tail: [u8; ATTR_SIZE - 28],
}

/// `bpf(cmd, attr, ATTR_SIZE)`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    const { assert!(std::mem::size_of::<T>() == ATTR_SIZE) };
    // SAFETY: `attr` is a live, writable repr(C) struct of exactly ATTR_SIZE
    // bytes laid out as the kernel's `union bpf_attr` member for `cmd`; every
    // pointer inside it was set by the caller to memory that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, ATTR_SIZE) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads eBPF `insns` (8-byte instructions, native endian) as a cgroup device
/// program named `name` (at most 15 bytes of `[A-Za-z0-9_.]`). On a refusal
/// by the verifier, the error carries its log.
pub fn load_cgroup_device(insns: &[u8], name: &str) -> io::Result<OwnedFd> {
    if insns.is_empty() || !insns.len().is_multiple_of(8) || name.len() > 15 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type: PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: (insns.len() / 8) as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type: ATTACH_CGROUP_DEVICE,
            _tail: [0; ATTR_SIZE - 72],
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let fd = match load(&mut []) {
        Ok(fd) => fd,
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Once more with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            match load(&mut log) {
                Ok(fd) => fd,
                Err(again) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    return Err(io::Error::new(
                        again.kind(),
                        format!("{again}; verifier: {}", text.trim()),
                    ));
                }
            }
        }
        Err(e) => return Err(e),
    };
    // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches device program `prog` to the cgroup whose directory is open as
/// `cgroup` (`BPF_F_ALLOW_MULTI`). The attachment lives as long as the
/// cgroup; `prog` may be closed afterwards.
pub fn attach_cgroup_device(prog: &OwnedFd, cgroup: &OwnedFd) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        attach_flags: F_ALLOW_MULTI,
        replace_bpf_fd: 0,
        _tail: [0; ATTR_SIZE - 20],
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// How many device programs are attached to the cgroup open as `cgroup`
/// itself (not counting its ancestors').
pub fn attached_cgroup_device(cgroup: &OwnedFd) -> io::Result<u32> {
    let mut ids = [0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _tail: [0; ATTR_SIZE - 28],
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr.prog_cnt)
}
