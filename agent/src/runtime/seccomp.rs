//! The default seccomp filter of every container process (the workload and
//! `exec` commands), Docker's default profile as a denylist: every syscall is
//! allowed except those of [`DENYLIST`], which fail with `EPERM` (`clone3` with
//! `ENOSYS`). [`compile`] builds the BPF programs (seccompiler) before the fork;
//! the child only calls [`Filter::apply`], right before `execve`. A syscall of
//! another ABI (i386 `int 0x80`) kills the process. See docs/runtime.md.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Building or installing the filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: rule for {syscall}: {source}")]
    Rule {
        syscall: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: compiling the {errno} filter: {source}")]
    Compile {
        errno: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: installing the {errno} filter: {source}")]
    Apply {
        errno: &'static str,
        source: seccompiler::Error,
    },
}

impl SeccompError {
    /// The errno of a failed install (`EINVAL` for anything that is not a syscall failure).
    pub fn errno(&self) -> nix::Error {
        match self {
            SeccompError::Apply {
                source: seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e),
                ..
            } => nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
            _ => nix::Error::EINVAL,
        }
    }
}

/// Which calls of a syscall are denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every call.
    Always,
    /// Argument 0 has any bit of this mask set (namespace flags of `clone`/`unshare`).
    Arg0AnyBit(u32),
    /// Argument 0 (its low 32 bits, an `int`) equals this value.
    Arg0Is(u32),
    /// Argument 0 (its low 32 bits) is none of these values.
    Arg0NotIn(&'static [u32]),
}

/// One row of [`DENYLIST`].
#[derive(Debug, Clone, Copy)]
pub struct Denied {
    /// The libc constant, e.g. `SYS_mount` (see [`Denied::name`]).
    sym: &'static str,
    /// The syscall's number on this architecture; `None` where it has none.
    pub nr: Option<i64>,
    pub when: When,
    /// The errno a denied call returns.
    pub errno: i32,
    /// Why it is denied (and how Docker's default profile treats it).
    pub why: &'static str,
}

impl Denied {
    /// The syscall's name, e.g. `mount`.
    pub fn name(&self) -> &'static str {
        self.sym.strip_prefix("SYS_").unwrap_or(self.sym)
    }
}

/// Namespace flags of `clone` (argument 0): Docker's mask `0x7E020000`.
/// (`CLONE_NEWTIME` is `0x80`, inside clone's exit-signal byte, so only `unshare` checks it.)
pub const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// `personality(2)` values Docker allows: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `UNAME26|PER_LINUX32` and `0xffffffff` (query).
pub const PERSONALITY_ALLOWED: &[u32] = &[0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// On x86_64, the x32 ABI shares the native audit arch; its syscall numbers
/// carry this bit (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// x32 numbers (without [`X32_SYSCALL_BIT`]) of denied syscalls whose x32
/// entry is not their x86_64 number (the compat range 512–547).
#[cfg(target_arch = "x86_64")]
pub const X32_COMPAT: &[(&str, i64)] = &[("kexec_load", 528), ("move_pages", 533)];

#[cfg(target_arch = "x86_64")]
macro_rules! nr_x86_64_only {
    ($sym:ident) => {
        Some(libc::$sym)
    };
}
#[cfg(not(target_arch = "x86_64"))]
macro_rules! nr_x86_64_only {
    ($sym:ident) => {
        None
    };
}

/// `deny!(ERRNO, [x86_64] SYS_name, When, "why")`; `x86_64` marks a syscall
/// that exists only there (`nr` is `None` elsewhere).
macro_rules! deny {
    ($errno:ident, x86_64 $sym:ident, $when:expr, $why:literal) => {
        Denied {
            sym: stringify!($sym),
            nr: nr_x86_64_only!($sym),
            when: $when,
            errno: libc::$errno,
            why: $why,
        }
    };
    ($errno:ident, $sym:ident, $when:expr, $why:literal) => {
        Denied {
            sym: stringify!($sym),
            nr: Some(libc::$sym),
            when: $when,
            errno: libc::$errno,
            why: $why,
        }
    };
}

/// A syscall the kernel no longer has (number reserved, `ENOSYS`): listed, nothing to deny.
macro_rules! absent {
    ($name:literal, $why:literal) => {
        Denied {
            sym: $name,
            nr: None,
            when: When::Always,
            errno: libc::EPERM,
            why: $why,
        }
    };
}

use When::{Always, Arg0AnyBit, Arg0Is, Arg0NotIn};

/// The policy: every syscall not listed here is allowed. Docker's profile is an
/// allowlist that, for a container without added capabilities, denies these
/// (among others); a denylist also allows syscalls newer than this table.
#[rustfmt::skip]
pub const DENYLIST: &[Denied] = &[
    // Namespaces and mounts: the container's own are set up before exec.
    deny!(EPERM, SYS_clone, Arg0AnyBit(CLONE_NAMESPACES), "new namespaces; a user namespace gives full capabilities over itself, a door to namespaced kernel code (Docker: same mask)"),
    deny!(EPERM, SYS_unshare, Arg0AnyBit(CLONE_NAMESPACES | libc::CLONE_NEWTIME as u32), "same as clone; CLONE_FS/FILES/SYSVSEM stay allowed (Docker denies unshare entirely)"),
    deny!(ENOSYS, SYS_clone3, Always, "flags sit in a struct the filter cannot read; ENOSYS makes glibc fall back to clone (as Docker)"),
    deny!(EPERM, SYS_setns, Always, "joining another namespace (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_mount, Always, "mount table changes (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_umount2, Always, "mount table changes (CAP_SYS_ADMIN); would uncover masked paths"),
    deny!(EPERM, SYS_pivot_root, Always, "mount table changes (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_fsopen, Always, "new mount API (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_fsconfig, Always, "new mount API"),
    deny!(EPERM, SYS_fsmount, Always, "new mount API"),
    deny!(EPERM, SYS_fspick, Always, "new mount API"),
    deny!(EPERM, SYS_move_mount, Always, "new mount API"),
    deny!(EPERM, SYS_open_tree, Always, "new mount API: detached copies of mounts"),
    deny!(EPERM, SYS_mount_setattr, Always, "new mount API: changes mount flags (read-only /sys, masks)"),
    deny!(EPERM, SYS_sethostname, Always, "the container's hostname is set by the runtime (CAP_SYS_ADMIN in Docker)"),
    deny!(EPERM, SYS_setdomainname, Always, "as sethostname"),
    // Kernel keyrings: not namespaced.
    deny!(EPERM, SYS_keyctl, Always, "kernel keyrings are not namespaced: other containers' and the host's keys"),
    deny!(EPERM, SYS_add_key, Always, "kernel keyrings"),
    deny!(EPERM, SYS_request_key, Always, "kernel keyrings"),
    // Kernel attack surface and host-wide state.
    deny!(EPERM, SYS_bpf, Always, "eBPF programs and maps (CAP_BPF / CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_perf_event_open, Always, "performance counters: host-wide data and a large attack surface (CAP_PERFMON)"),
    deny!(EPERM, SYS_userfaultfd, Always, "pauses kernel threads on page faults: a common exploit primitive"),
    deny!(EPERM, SYS_io_uring_setup, Always, "io_uring: frequent kernel exploits, its operations bypass seccomp (Docker >= 25 denies)"),
    deny!(EPERM, SYS_io_uring_enter, Always, "io_uring"),
    deny!(EPERM, SYS_io_uring_register, Always, "io_uring"),
    deny!(EPERM, SYS_lookup_dcookie, Always, "kernel profiling (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_fanotify_init, Always, "filesystem-wide notification (CAP_SYS_ADMIN in Docker; unprivileged since 5.13)"),
    deny!(EPERM, SYS_open_by_handle_at, Always, "opens any inode by handle, escaping the rootfs (the 'shocker' escape; CAP_DAC_READ_SEARCH)"),
    deny!(EPERM, SYS_name_to_handle_at, Always, "the handles open_by_handle_at takes (Docker allows it)"),
    deny!(EPERM, SYS_quotactl, Always, "host filesystem quotas (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_quotactl_fd, Always, "as quotactl"),
    deny!(EPERM, SYS_syslog, Always, "the kernel log: host information (CAP_SYSLOG)"),
    deny!(EPERM, SYS_personality, Arg0NotIn(PERSONALITY_ALLOWED), "other personalities turn off ASLR or make data executable (Docker: same values)"),
    deny!(EPERM, SYS_socket, Arg0Is(libc::AF_VSOCK as u32), "AF_VSOCK is not network-namespaced: it reaches the hypervisor and host (as Docker)"),
    // Only the host may change these; the capabilities are dropped, denied up front as Docker does.
    deny!(EPERM, SYS_kexec_load, Always, "loads a new kernel (CAP_SYS_BOOT)"),
    deny!(EPERM, SYS_kexec_file_load, Always, "loads a new kernel (CAP_SYS_BOOT)"),
    deny!(EPERM, SYS_reboot, Always, "host reboot (CAP_SYS_BOOT)"),
    deny!(EPERM, SYS_init_module, Always, "kernel modules (CAP_SYS_MODULE)"),
    deny!(EPERM, SYS_finit_module, Always, "kernel modules (CAP_SYS_MODULE)"),
    deny!(EPERM, SYS_delete_module, Always, "kernel modules (CAP_SYS_MODULE)"),
    absent!("create_module", "removed in Linux 2.6 (ENOSYS): nothing to deny"),
    absent!("get_kernel_syms", "removed in Linux 2.6 (ENOSYS): nothing to deny"),
    absent!("query_module", "removed in Linux 2.6 (ENOSYS): nothing to deny"),
    deny!(EPERM, SYS_swapon, Always, "host swap (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_swapoff, Always, "host swap (CAP_SYS_ADMIN)"),
    deny!(EPERM, SYS_acct, Always, "process accounting to a file (CAP_SYS_PACCT)"),
    deny!(EPERM, SYS_settimeofday, Always, "the host's clock is not namespaced (CAP_SYS_TIME)"),
    deny!(EPERM, SYS_clock_settime, Always, "the host's clock (CAP_SYS_TIME)"),
    deny!(EPERM, SYS_clock_adjtime, Always, "the host's clock (Docker allows it; reading uses adjtimex, which stays allowed)"),
    deny!(EPERM, x86_64 SYS_iopl, Always, "raw I/O ports (CAP_SYS_RAWIO)"),
    deny!(EPERM, x86_64 SYS_ioperm, Always, "raw I/O ports (CAP_SYS_RAWIO)"),
    deny!(EPERM, SYS_vhangup, Always, "hangs up the terminal (CAP_SYS_TTY_CONFIG)"),
    deny!(EPERM, SYS_kcmp, Always, "compares other processes' kernel objects (CAP_SYS_PTRACE in Docker)"),
    deny!(EPERM, SYS_pidfd_getfd, Always, "takes another process's fds (CAP_SYS_PTRACE in Docker)"),
    deny!(EPERM, SYS_process_madvise, Always, "advises on another process's memory (CAP_SYS_PTRACE in Docker)"),
    // NUMA memory placement (CAP_SYS_NICE in Docker).
    deny!(EPERM, SYS_move_pages, Always, "moves other processes' pages between NUMA nodes"),
    deny!(EPERM, SYS_migrate_pages, Always, "as move_pages"),
    deny!(EPERM, SYS_mbind, Always, "NUMA policy"),
    deny!(EPERM, SYS_set_mempolicy, Always, "NUMA policy"),
    deny!(EPERM, SYS_get_mempolicy, Always, "NUMA policy"),
    deny!(EPERM, SYS_set_mempolicy_home_node, Always, "NUMA policy"),
    // Obsolete interfaces: only attack surface left.
    deny!(EPERM, SYS_nfsservctl, Always, "removed in Linux 3.1"),
    deny!(EPERM, x86_64 SYS_uselib, Always, "a.out shared libraries"),
    deny!(EPERM, x86_64 SYS_ustat, Always, "filesystem statistics by host device number"),
    deny!(EPERM, x86_64 SYS_sysfs, Always, "filesystem type enumeration"),
    deny!(EPERM, x86_64 SYS__sysctl, Always, "binary sysctl, removed in Linux 5.5"),
];

/// The errnos the filter returns, one BPF program each (seccompiler gives a
/// program a single action).
const ERRNOS: &[(i32, &str)] = &[(libc::EPERM, "EPERM"), (libc::ENOSYS, "ENOSYS")];

/// The compiled programs, ready to install.
#[derive(Debug, Clone)]
pub struct Filter {
    programs: Vec<(&'static str, BpfProgram)>,
}

impl Filter {
    /// Installs the programs on the calling thread (each: `prctl(NO_NEW_PRIVS)`
    /// then `seccomp(SET_MODE_FILTER)`; no allocation). Call it last before `execve`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        for &(errno, ref program) in &self.programs {
            seccompiler::apply_filter(program)
                .map_err(|source| SeccompError::Apply { errno, source })?;
        }
        Ok(())
    }

    /// The programs, by the errno their denied calls get.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, &BpfProgram)> {
        self.programs.iter().map(|(e, p)| (*e, p))
    }
}

/// The native architecture the programs are checked against.
#[cfg(target_arch = "x86_64")]
pub const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
pub const TARGET_ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the default seccomp filter is written for x86_64 and aarch64 only");

/// Every syscall number a row covers: its native number and, on x86_64, the
/// x32 ones (so the x32 ABI, which passes the arch check, cannot bypass it).
fn numbers(row: &Denied) -> Vec<i64> {
    let Some(nr) = row.nr else {
        return Vec::new();
    };
    #[allow(unused_mut)]
    let mut all = vec![nr];
    #[cfg(target_arch = "x86_64")]
    {
        all.push(nr | X32_SYSCALL_BIT);
        all.extend(
            X32_COMPAT
                .iter()
                .filter(|(name, _)| *name == row.name())
                .map(|(_, x32)| x32 | X32_SYSCALL_BIT),
        );
    }
    all
}

fn rules(row: &Denied) -> Result<Vec<SeccompRule>, SeccompError> {
    let err = |source| SeccompError::Rule {
        syscall: row.name(),
        source,
    };
    let arg0 = |op, value: u32| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, u64::from(value)).map_err(err)
    };
    let rule = |conds| SeccompRule::new(conds).map_err(err);
    Ok(match row.when {
        // An empty chain matches every call.
        When::Always => Vec::new(),
        // Rules are OR'ed: one per bit.
        When::Arg0AnyBit(mask) => (0..32)
            .map(|i| 1u32 << i)
            .filter(|bit| mask & bit != 0)
            .map(|bit| rule(vec![arg0(SeccompCmpOp::MaskedEq(u64::from(bit)), bit)?]))
            .collect::<Result<_, _>>()?,
        When::Arg0Is(v) => vec![rule(vec![arg0(SeccompCmpOp::Eq, v)?])?],
        // Conditions of a rule are AND'ed.
        When::Arg0NotIn(values) => vec![rule(
            values
                .iter()
                .map(|v| arg0(SeccompCmpOp::Ne, *v))
                .collect::<Result<_, _>>()?,
        )?],
    })
}

/// Compiles [`DENYLIST`] for the native architecture. Done before forking the
/// process that will exec, so the child only installs the result.
pub fn compile() -> Result<Filter, SeccompError> {
    let mut programs = Vec::new();
    for &(errno, errno_name) in ERRNOS {
        let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for row in DENYLIST.iter().filter(|r| r.errno == errno) {
            let rules = rules(row)?;
            for nr in numbers(row) {
                map.insert(nr, rules.clone());
            }
        }
        let compile_err = |source| SeccompError::Compile {
            errno: errno_name,
            source,
        };
        let filter = SeccompFilter::new(
            map,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TARGET_ARCH,
        )
        .map_err(compile_err)?;
        programs.push((
            errno_name,
            BpfProgram::try_from(filter).map_err(compile_err)?,
        ));
    }
    Ok(Filter { programs })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const fn ret_errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }
    /// `AUDIT_ARCH_I386` (`EM_386 | __AUDIT_ARCH_LE`).
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_NATIVE: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH_NATIVE: u32 = 183 | 0x8000_0000 | 0x4000_0000;

    /// `struct seccomp_data` as the kernel lays it out (little endian).
    fn seccomp_data(arch: u32, nr: i64, args: [u64; 6]) -> Vec<u8> {
        let mut d = Vec::with_capacity(64);
        d.extend_from_slice(&(nr as i32).to_le_bytes());
        d.extend_from_slice(&arch.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes()); // instruction pointer
        for a in args {
            d.extend_from_slice(&a.to_le_bytes());
        }
        d
    }

    /// A classic-BPF interpreter for the instructions seccompiler emits; panics
    /// on anything else, on a jump out of the program and on falling off its end.
    fn run(program: &BpfProgram, data: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = program.get(pc).expect("jumped out of the program");
            pc += 1;
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => a &= i.k,
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        _ => a >= i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("unexpected BPF instruction {other:#x}"),
            }
        }
    }

    /// What the kernel returns with every program installed: the action of
    /// highest precedence (lowest `(s32)(ret & SECCOMP_RET_ACTION_FULL)`).
    fn eval(filter: &Filter, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let data = seccomp_data(arch, nr, args);
        filter
            .programs()
            .map(|(_, p)| run(p, &data))
            .min_by_key(|r| (r & libc::SECCOMP_RET_ACTION_FULL) as i32)
            .unwrap()
    }

    fn native(filter: &Filter, nr: i64, arg0: u64) -> u32 {
        eval(filter, AUDIT_ARCH_NATIVE, nr, [arg0, 0, 0, 0, 0, 0])
    }

    fn row(name: &str) -> &'static Denied {
        DENYLIST.iter().find(|r| r.name() == name).unwrap()
    }

    #[test]
    fn the_programs_compile_and_fit() {
        let f = compile().unwrap();
        let programs: Vec<_> = f.programs().collect();
        assert_eq!(programs.len(), 2);
        for (errno, p) in programs {
            assert!(!p.is_empty() && p.len() < 4096, "{errno}: {}", p.len());
        }
    }

    #[test]
    fn every_name_resolves_on_this_arch_or_is_documented_absent() {
        let mut names = HashSet::new();
        let mut nrs = HashSet::new();
        for r in DENYLIST {
            assert!(names.insert(r.name()), "{} listed twice", r.name());
            assert!(!r.why.is_empty());
            match r.nr {
                Some(nr) => assert!(nrs.insert(nr) && (0..1024).contains(&nr), "{}", r.name()),
                None => {
                    let removed = r.why.starts_with("removed in Linux 2.6");
                    let x86_only = cfg!(not(target_arch = "x86_64"))
                        && ["iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl"]
                            .contains(&r.name());
                    assert!(removed || x86_only, "{} has no number", r.name());
                }
            }
        }
        // Spot checks against the kernel's x86_64 table.
        #[cfg(target_arch = "x86_64")]
        for (name, nr) in [
            ("clone", 56),
            ("mount", 165),
            ("unshare", 272),
            ("setns", 308),
            ("bpf", 321),
            ("clone3", 435),
            ("mount_setattr", 442),
            ("iopl", 172),
            ("_sysctl", 156),
        ] {
            assert_eq!(row(name).nr, Some(nr), "{name}");
        }
        #[cfg(target_arch = "x86_64")]
        for (name, _) in X32_COMPAT {
            assert!(row(name).nr.is_some(), "{name}");
        }
    }

    #[test]
    fn denied_syscalls_get_their_errno_and_the_rest_is_allowed() {
        let f = compile().unwrap();
        for r in DENYLIST.iter().filter(|r| r.when == When::Always) {
            let Some(nr) = r.nr else { continue };
            for arg0 in [0, 1, u64::MAX] {
                assert_eq!(native(&f, nr, arg0), ret_errno(r.errno), "{}", r.name());
            }
        }
        assert_eq!(native(&f, libc::SYS_clone3, 0), ret_errno(libc::ENOSYS));
        assert_eq!(native(&f, libc::SYS_mount, 0), ret_errno(libc::EPERM));
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_chroot,
            libc::SYS_ptrace,
            libc::SYS_adjtimex,
            libc::SYS_seccomp,
            libc::SYS_prctl,
        ] {
            assert_eq!(native(&f, nr, 0), RET_ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn clone_and_unshare_are_denied_only_with_namespace_flags() {
        let f = compile().unwrap();
        let sigchld = libc::SIGCHLD as u64;
        // fork(): plain clone; pthread_create: the thread flags.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        for flags in [
            sigchld,
            thread,
            libc::CLONE_VFORK as u64 | libc::CLONE_VM as u64 | sigchld,
        ] {
            assert_eq!(native(&f, libc::SYS_clone, flags), RET_ALLOW, "{flags:#x}");
        }
        assert_eq!(CLONE_NAMESPACES, 0x7E02_0000);
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
        ] {
            let ns = ns as u64;
            let eperm = ret_errno(libc::EPERM);
            assert_eq!(native(&f, libc::SYS_clone, ns | sigchld), eperm, "{ns:#x}");
            assert_eq!(native(&f, libc::SYS_clone, ns | thread), eperm, "{ns:#x}");
            assert_eq!(native(&f, libc::SYS_unshare, ns), eperm, "{ns:#x}");
        }
        let newtime = libc::CLONE_NEWTIME as u64;
        assert_eq!(
            native(&f, libc::SYS_unshare, newtime),
            ret_errno(libc::EPERM)
        );
        for flags in [0, libc::CLONE_FS, libc::CLONE_FILES, libc::CLONE_SYSVSEM] {
            assert_eq!(native(&f, libc::SYS_unshare, flags as u64), RET_ALLOW);
        }
    }

    #[test]
    fn personality_and_vsock_sockets() {
        let f = compile().unwrap();
        for p in PERSONALITY_ALLOWED {
            assert_eq!(native(&f, libc::SYS_personality, u64::from(*p)), RET_ALLOW);
        }
        let no_aslr = 0x0040000; // ADDR_NO_RANDOMIZE
        let read_implies_exec = 0x0400000;
        for p in [no_aslr, read_implies_exec, no_aslr | 0x8] {
            let r = native(&f, libc::SYS_personality, p);
            assert_eq!(r, ret_errno(libc::EPERM), "{p:#x}");
        }
        for domain in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(native(&f, libc::SYS_socket, domain as u64), RET_ALLOW);
        }
        let vsock = libc::AF_VSOCK as u64;
        assert_eq!(native(&f, libc::SYS_socket, vsock), ret_errno(libc::EPERM));
    }

    #[test]
    fn another_abi_is_killed() {
        let f = compile().unwrap();
        // i386 numbers: 3 read, 20 getpid, 26 ptrace; whatever the call.
        for nr in [3, 20, 26, 120] {
            let r = eval(&f, AUDIT_ARCH_I386, nr, [0; 6]);
            assert_eq!(r, RET_KILL_PROCESS, "i386 syscall {nr}");
        }
    }

    #[test]
    fn an_install_failure_keeps_its_errno() {
        let apply = |source| SeccompError::Apply {
            errno: "EPERM",
            source,
        };
        let os = std::io::Error::from_raw_os_error;
        let e = apply(seccompiler::Error::Seccomp(os(libc::EFAULT)));
        assert_eq!(e.errno(), nix::Error::EFAULT);
        let e = apply(seccompiler::Error::Prctl(os(libc::EPERM)));
        assert_eq!(e.errno(), nix::Error::EPERM);
        assert!(e.to_string().contains("installing the EPERM filter"), "{e}");
        let e = apply(seccompiler::Error::EmptyFilter);
        assert_eq!(e.errno(), nix::Error::EINVAL);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_are_denied_too() {
        let f = compile().unwrap();
        let x32 = |nr: i64, arg0| native(&f, nr | X32_SYSCALL_BIT, arg0);
        for r in DENYLIST.iter().filter(|r| r.when == When::Always) {
            let Some(nr) = r.nr else { continue };
            assert_eq!(x32(nr, 0), ret_errno(r.errno), "x32 {}", r.name());
        }
        for (name, nr) in X32_COMPAT {
            assert_eq!(x32(*nr, 0), ret_errno(libc::EPERM), "x32 {name}");
        }
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(x32(libc::SYS_unshare, newuser), ret_errno(libc::EPERM));
        assert_eq!(x32(libc::SYS_clone, newuser), ret_errno(libc::EPERM));
        assert_eq!(x32(libc::SYS_clone, libc::SIGCHLD as u64), RET_ALLOW);
        assert_eq!(x32(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(x32(libc::SYS_clone3, 0), ret_errno(libc::ENOSYS));
    }
}
