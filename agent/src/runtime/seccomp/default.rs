//! Berth's default seccomp profile: Docker's default profile (moby's
//! `profiles/seccomp/default.json`) as an allowlist — the same syscalls, the
//! same argument filters on `clone`/`clone3` namespace flags, `personality`
//! and `socket` families, the same groups allowed only with a capability —
//! with three documented differences ([`DIFFERENCES`]). Everything the
//! profile does not allow fails with `EPERM` ([`DENIED`] says why for each);
//! a syscall numbered above every one it names (newer than the profile) fails
//! with `ENOSYS`, so libc falls back to an older call.

use super::profile::{Action, ArgCmp, Condition, Op, Profile, Rule, Width};

/// Allowed whatever the container's capabilities. Names an architecture does
/// not have are skipped there.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    // Files and directories.
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
    "getdents64", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat", "lstat64",
    "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pread64",
    "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64",
    "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
    "cachestat", "statmount", "listmount",
    // Extended attributes.
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "getxattrat", "lgetxattr",
    "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr", "removexattr",
    "removexattrat", "setxattr", "setxattrat",
    // Notification and polling.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "_newselect", "pause", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
    // Asynchronous I/O (io_uring is not: its operations bypass seccomp, as Docker >= 25).
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "ioctl", "ioprio_get", "ioprio_set",
    // Processes, threads and signals.
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "futex",
    "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "get_robust_list",
    "get_thread_area", "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "getrusage", "getsid", "gettid", "getuid", "getuid32", "kill", "membarrier",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
    "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid", "setuid32",
    "sigaltstack", "sigprocmask", "sigreturn", "tgkill", "tkill", "ugetrlimit", "wait4",
    "waitid", "waitpid", "uretprobe",
    // Process inspection: a tracer cannot bypass seccomp since Linux 4.8.
    "ptrace", "process_vm_readv", "process_vm_writev",
    // Memory.
    "brk", "madvise", "map_shadow_stack", "memfd_create", "memfd_secret", "mincore", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "mseal", "msync", "munlock",
    "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    // Time.
    "adjtimex", "alarm", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday",
    "nanosleep", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "times",
    // IPC (namespaced).
    "pipe", "pipe2", "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
    "shmget",
    // Sockets (socket itself: by family, below).
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    // Self-sandboxing.
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    // System information.
    "getrandom", "sysinfo", "uname",
    // Architecture-specific.
    "arch_prctl", "modify_ldt", "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
    "riscv_flush_icache", "riscv_hwprobe",
];

/// Allowed only when the container has the capability (Docker's groups).
#[rustfmt::skip]
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", &[
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
        "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        "name_to_handle_at",
    ]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Namespace flags of `clone` (argument 0): Docker's mask `0x7E020000`
/// (`CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET`).
pub const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// `personality(2)` values allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `UNAME26|PER_LINUX32` and `0xffffffff` (query).
pub const PERSONALITY_ALLOWED: &[u32] = &[0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Socket families refused: `AF_ALG` (38, the kernel's crypto API, a
/// recurring source of exploits) and `AF_VSOCK` (40, not network-namespaced:
/// it reaches the hypervisor and host).
pub const SOCKET_DENIED: &[u32] = &[38, 40];

/// Where Berth's default differs from Docker's, and why.
pub const DIFFERENCES: &[(&str, &str)] = &[
    ("name_to_handle_at", "only with CAP_SYS_ADMIN (Docker allows it): it makes the handles open_by_handle_at takes"),
    ("clock_adjtime", "only with CAP_SYS_TIME (Docker allows it): reading the clock state uses adjtimex, which stays allowed"),
    ("unshare", "allowed without namespace flags (CLONE_FS, CLONE_FILES, CLONE_SYSVSEM; Docker denies unshare without CAP_SYS_ADMIN)"),
];

/// Every syscall of x86_64 and aarch64 the profile does not allow (without
/// added capabilities), with why; the number decides the errno: up to the
/// highest one the profile names, `EPERM`, above it (newer), `ENOSYS`.
#[rustfmt::skip]
pub const DENIED: &[(&str, &str)] = &[
    ("mount", "mount table changes (CAP_SYS_ADMIN)"),
    ("umount2", "mount table changes (CAP_SYS_ADMIN); would uncover masked paths"),
    ("pivot_root", "mount table changes"),
    ("open_tree", "new mount API (CAP_SYS_ADMIN)"),
    ("move_mount", "new mount API"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("mount_setattr", "new mount API: changes mount flags (read-only /sys, masks)"),
    ("open_tree_attr", "new mount API (newer than the profile: ENOSYS)"),
    ("setns", "joining another namespace (CAP_SYS_ADMIN)"),
    ("unshare", "with namespace flags: a user namespace gives full capabilities over itself, a door to namespaced kernel code"),
    ("clone3", "ENOSYS: its flags sit in a struct a filter cannot read; glibc falls back to clone"),
    ("sethostname", "the hostname is set by the runtime (CAP_SYS_ADMIN)"),
    ("setdomainname", "as sethostname"),
    ("keyctl", "kernel keyrings are not namespaced: other containers' and the host's keys"),
    ("add_key", "kernel keyrings"),
    ("request_key", "kernel keyrings"),
    ("bpf", "eBPF programs and maps (CAP_SYS_ADMIN or CAP_BPF)"),
    ("perf_event_open", "performance counters: host-wide data and a large attack surface (CAP_PERFMON)"),
    ("userfaultfd", "pauses kernel threads on page faults: a common exploit primitive"),
    ("io_uring_setup", "io_uring: frequent kernel exploits, its operations bypass seccomp (Docker >= 25)"),
    ("io_uring_enter", "io_uring"),
    ("io_uring_register", "io_uring"),
    ("lookup_dcookie", "kernel profiling (CAP_SYS_ADMIN)"),
    ("fanotify_init", "filesystem-wide notification (CAP_SYS_ADMIN)"),
    ("open_by_handle_at", "opens any inode by handle, escaping the rootfs: the 'shocker' escape (CAP_DAC_READ_SEARCH)"),
    ("name_to_handle_at", "the handles open_by_handle_at takes (CAP_SYS_ADMIN here; Docker allows it)"),
    ("quotactl", "host filesystem quotas (CAP_SYS_ADMIN)"),
    ("quotactl_fd", "as quotactl"),
    ("syslog", "the kernel log: host information (CAP_SYSLOG)"),
    ("lsm_get_self_attr", "LSM attributes (CAP_SYS_ADMIN)"),
    ("lsm_set_self_attr", "LSM attributes (CAP_SYS_ADMIN)"),
    ("lsm_list_modules", "LSM attributes (CAP_SYS_ADMIN)"),
    ("kexec_load", "loads a new kernel (CAP_SYS_BOOT)"),
    ("kexec_file_load", "loads a new kernel"),
    ("reboot", "host reboot (CAP_SYS_BOOT)"),
    ("init_module", "kernel modules (CAP_SYS_MODULE)"),
    ("finit_module", "kernel modules"),
    ("delete_module", "kernel modules"),
    ("create_module", "removed in Linux 2.6"),
    ("get_kernel_syms", "removed in Linux 2.6"),
    ("query_module", "removed in Linux 2.6"),
    ("swapon", "host swap"),
    ("swapoff", "host swap"),
    ("acct", "process accounting to a file (CAP_SYS_PACCT)"),
    ("settimeofday", "the host's clock is not namespaced (CAP_SYS_TIME)"),
    ("clock_settime", "the host's clock (CAP_SYS_TIME)"),
    ("clock_settime64", "the host's clock (CAP_SYS_TIME)"),
    ("clock_adjtime", "the host's clock (CAP_SYS_TIME here; Docker allows it)"),
    ("iopl", "raw I/O ports (CAP_SYS_RAWIO)"),
    ("ioperm", "raw I/O ports (CAP_SYS_RAWIO)"),
    ("vhangup", "hangs up the terminal (CAP_SYS_TTY_CONFIG)"),
    ("kcmp", "compares other processes' kernel objects (CAP_SYS_PTRACE)"),
    ("pidfd_getfd", "takes another process's fds (CAP_SYS_PTRACE)"),
    ("process_madvise", "advises on another process's memory (CAP_SYS_PTRACE)"),
    ("move_pages", "moves other processes' pages between NUMA nodes"),
    ("migrate_pages", "as move_pages"),
    ("mbind", "NUMA policy (CAP_SYS_NICE)"),
    ("set_mempolicy", "NUMA policy (CAP_SYS_NICE)"),
    ("get_mempolicy", "NUMA policy (CAP_SYS_NICE)"),
    ("set_mempolicy_home_node", "NUMA policy (CAP_SYS_NICE)"),
    ("nfsservctl", "removed in Linux 3.1"),
    ("uselib", "a.out shared libraries"),
    ("ustat", "filesystem statistics by host device number"),
    ("sysfs", "filesystem type enumeration"),
    ("_sysctl", "binary sysctl, removed in Linux 5.5"),
    ("getpmsg", "unimplemented (STREAMS)"),
    ("putpmsg", "unimplemented (STREAMS)"),
    ("afs_syscall", "unimplemented"),
    ("tuxcall", "unimplemented"),
    ("security", "unimplemented"),
    ("vserver", "unimplemented"),
    ("uprobe", "uprobe trampolines: only the kernel's own code calls it"),
    ("fstatat", "aarch64's name of newfstatat, allowed under that name"),
    ("file_getattr", "newer than the profile: ENOSYS"),
    ("file_setattr", "newer than the profile: ENOSYS"),
];

fn dword(op: Op, value: u32) -> ArgCmp {
    ArgCmp {
        index: 0,
        op,
        value: u64::from(value),
        value_two: 0,
        width: Width::Dword,
    }
}

fn allow(names: &[&str], args: Vec<ArgCmp>) -> Rule {
    Rule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: Action::Allow,
        args,
        includes: Condition::default(),
        excludes: Condition::default(),
    }
}

fn unless_sys_admin(mut rule: Rule) -> Rule {
    rule.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    rule
}

/// The profile.
pub fn profile() -> Profile {
    let mut rules = vec![allow(ALLOWED, Vec::new())];
    // socket: every family but AF_ALG and AF_VSOCK (Docker: < 38, == 39, > 40).
    rules.push(allow(&["socket"], vec![dword(Op::Lt, 38)]));
    rules.push(allow(&["socket"], vec![dword(Op::Eq, 39)]));
    rules.push(allow(&["socket"], vec![dword(Op::Gt, 40)]));
    for p in PERSONALITY_ALLOWED {
        rules.push(allow(&["personality"], vec![dword(Op::Eq, *p)]));
    }
    // clone and unshare without namespace flags (unshare also CLONE_NEWTIME).
    rules.push(unless_sys_admin(allow(
        &["clone"],
        vec![dword(Op::MaskedEq, CLONE_NAMESPACES)],
    )));
    rules.push(unless_sys_admin(allow(
        &["unshare"],
        vec![dword(
            Op::MaskedEq,
            CLONE_NAMESPACES | libc::CLONE_NEWTIME as u32,
        )],
    )));
    rules.push(unless_sys_admin(Rule {
        action: Action::Errno(libc::ENOSYS as u32),
        ..allow(&["clone3"], Vec::new())
    }));
    for (cap, names) in BY_CAPABILITY {
        let mut r = allow(names, Vec::new());
        r.includes.caps = vec![cap.to_string()];
        rules.push(r);
    }
    Profile {
        default_action: Action::Errno(libc::EPERM as u32),
        rules,
    }
}
