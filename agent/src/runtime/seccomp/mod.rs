//! The seccomp filter of every container process (the workload, `init`, and
//! `exec` commands). A container runs under Berth's default profile
//! ([`default`]: Docker's default profile as an allowlist), no filter
//! (`unconfined`), or a Docker/OCI JSON profile ([`profile`]). [`compile`]
//! resolves the profile for the container's capabilities and builds the BPF
//! programs (seccompiler) before the fork; the child only calls
//! [`Filter::apply`], right before `execve`. Calls matching no rule get the
//! default action (`EPERM`), syscalls numbered above every one the profile
//! names get `ENOSYS` (runc's rule, so libc falls back), and a syscall of
//! another ABI (i386 `int 0x80`) kills the process. See docs/runtime.md.

pub mod default;
pub mod profile;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

pub use profile::{Action, Profile, ProfileError, Resolved, Target};

use super::capabilities::CapabilityError;
use super::config::DiskConfig;

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: rule for syscall {nr}: {source}")]
    Rule {
        nr: i64,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: compiling the {program} program: {source}")]
    Compile {
        program: String,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: installing the {program} program: {source}")]
    Apply {
        program: String,
        source: seccompiler::Error,
    },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("seccomp: {0}")]
    Capability(#[from] CapabilityError),
    #[error("seccomp: config.json names the profile {} but does not hold it", .0.display())]
    MissingProfile(PathBuf),
    #[error("seccomp: the compiled programs from the agent are malformed: {0}")]
    Decode(&'static str),
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

/// Which filter a container gets (the manifest's `seccomp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// [`default::profile`].
    #[default]
    Default,
    /// No filter (Docker's `seccomp=unconfined`).
    Unconfined,
    /// A Docker/OCI JSON profile, read when the container is created and kept
    /// in its `config.json` (so `exec` uses the same one).
    Profile { path: PathBuf },
}

impl From<&berth_core::manifest::SeccompProfile> for Seccomp {
    fn from(p: &berth_core::manifest::SeccompProfile) -> Self {
        use berth_core::manifest::SeccompProfile as M;
        match p {
            M::Default => Seccomp::Default,
            M::Unconfined => Seccomp::Unconfined,
            M::File(path) => Seccomp::Profile { path: path.into() },
        }
    }
}

/// The compiled programs, ready to install (none when unconfined).
#[derive(Debug, Clone)]
pub struct Filter {
    programs: Vec<(String, BpfProgram)>,
}

impl Filter {
    /// Installs the programs on the calling thread, in order (each:
    /// `prctl(NO_NEW_PRIVS)` then `seccomp(SET_MODE_FILTER)`; no allocation).
    /// Call it last before `execve`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        for (program, bpf) in &self.programs {
            seccompiler::apply_filter(bpf).map_err(|source| SeccompError::Apply {
                program: program.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The programs, in installation order, each with what it decides.
    pub fn programs(&self) -> impl Iterator<Item = (&str, &BpfProgram)> {
        self.programs.iter().map(|(e, p)| (e.as_str(), p))
    }

    /// The programs as bytes, for the monitor's stdin ([`Filter::decode`]):
    /// [`WIRE_MAGIC`], then per program its name and instructions, each
    /// length a little-endian `u32`, each instruction `code` (u16), `jt`,
    /// `jf` (u8) and `k` (u32), little endian. No program: unconfined.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self
            .programs
            .iter()
            .map(|(n, p)| 8 + n.len() + 8 * p.len())
            .sum();
        let mut out = Vec::with_capacity(WIRE_MAGIC.len() + 4 + len);
        out.extend_from_slice(WIRE_MAGIC);
        out.extend_from_slice(&(self.programs.len() as u32).to_le_bytes());
        for (name, bpf) in &self.programs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(bpf.len() as u32).to_le_bytes());
            for i in bpf {
                out.extend_from_slice(&i.code.to_le_bytes());
                out.push(i.jt);
                out.push(i.jf);
                out.extend_from_slice(&i.k.to_le_bytes());
            }
        }
        out
    }

    /// Reads [`Filter::encode`]'s bytes back. `Ok(None)` for no bytes at all
    /// (nothing was sent: compile it yourself); at most 16 programs of at
    /// most `BPF_MAXINSNS` (4096) instructions each.
    pub fn decode(bytes: &[u8]) -> Result<Option<Filter>, SeccompError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let mut r = Reader(
            bytes
                .strip_prefix(WIRE_MAGIC)
                .ok_or(SeccompError::Decode("no magic"))?,
        );
        let count = r.u32()?;
        if count > 16 {
            return Err(SeccompError::Decode("more than 16 programs"));
        }
        let mut programs = Vec::with_capacity(count);
        for _ in 0..count {
            let name_len = r.u32()?;
            if name_len > 256 {
                return Err(SeccompError::Decode("program name over 256 bytes"));
            }
            let name = String::from_utf8(r.take(name_len)?.to_vec())
                .map_err(|_| SeccompError::Decode("program name is not UTF-8"))?;
            let n = r.u32()?;
            if n == 0 || n > 4096 {
                return Err(SeccompError::Decode("program length not in 1..=4096"));
            }
            let bpf = r
                .take(8 * n)?
                .chunks_exact(8)
                .map(|c| seccompiler::sock_filter {
                    code: u16::from_le_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect();
            programs.push((name, bpf));
        }
        if !r.0.is_empty() {
            return Err(SeccompError::Decode("trailing bytes"));
        }
        Ok(Some(Filter { programs }))
    }
}

/// The rest of the bytes [`Filter::decode`] reads.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SeccompError> {
        if self.0.len() < n {
            return Err(SeccompError::Decode("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<usize, SeccompError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// First bytes of [`Filter::encode`]'s format.
pub const WIRE_MAGIC: &[u8] = b"berth-seccomp-1\n";

/// Compiled filters by what they are compiled from (profile, capability
/// set), so an agent compiles each profile once rather than at every start
/// (Docker's default profile: ~1600 instructions). Holds at most
/// [`FilterCache::MAX`] entries (emptied when full).
#[derive(Debug, Default)]
pub struct FilterCache {
    map: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>>,
}

impl FilterCache {
    /// Entries kept before the cache is emptied.
    pub const MAX: usize = 64;

    /// The encoded filter ([`Filter::encode`]) of the container `cfg`
    /// describes, compiled on first use.
    pub fn encoded_for(&self, cfg: &DiskConfig) -> Result<std::sync::Arc<Vec<u8>>, SeccompError> {
        let key = cache_key(cfg)?;
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        let bytes = std::sync::Arc::new(compile_for(cfg)?.encode());
        let mut map = self.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(key, bytes.clone());
        Ok(bytes)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>> {
        // A panic while holding it cannot leave a half-made entry: use it.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a filter depends on: the profile (default, unconfined, or the JSON
/// profile's content) and the capability set it is resolved for. The kernel
/// version is the same for the agent's lifetime.
fn cache_key(cfg: &DiskConfig) -> Result<String, SeccompError> {
    let c = &cfg.container;
    let mut caps: Vec<String> = super::capabilities::effective(&c.cap_add, &c.cap_drop)?
        .iter()
        .map(|c| c.to_string())
        .collect();
    caps.sort();
    let profile = match &c.seccomp {
        Seccomp::Default => "default".to_string(),
        Seccomp::Unconfined => "unconfined".to_string(),
        Seccomp::Profile { .. } => serde_json::to_string(&profile_of(cfg)?)
            .map_err(|_| SeccompError::Decode("profile does not serialize"))?,
    };
    Ok(format!("{} {profile}", caps.join(",")))
}

/// The native architecture the programs are checked against.
#[cfg(target_arch = "x86_64")]
pub const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
pub const TARGET_ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp filter is written for x86_64 and aarch64 only");

/// The profile a container's config asks for (`None`: unconfined).
pub fn profile_of(cfg: &DiskConfig) -> Result<Option<Profile>, SeccompError> {
    match &cfg.container.seccomp {
        Seccomp::Default => Ok(Some(default::profile())),
        Seccomp::Unconfined => Ok(None),
        Seccomp::Profile { path } => cfg
            .seccomp_profile
            .clone()
            .map(Some)
            .ok_or_else(|| SeccompError::MissingProfile(path.clone())),
    }
}

/// The filter of the container `cfg` describes, for its capability set and
/// the running kernel.
pub fn compile_for(cfg: &DiskConfig) -> Result<Filter, SeccompError> {
    let c = &cfg.container;
    let target = Target {
        caps: super::capabilities::effective(&c.cap_add, &c.cap_drop)?,
        kernel: profile::running_kernel(),
    };
    compile(profile_of(cfg)?.as_ref(), &target)
}

/// Compiles `profile` (`None`: unconfined, no programs) for `target`. Done
/// before forking the process that will exec, so the child only installs it.
pub fn compile(profile: Option<&Profile>, target: &Target) -> Result<Filter, SeccompError> {
    match profile {
        None => Ok(Filter {
            programs: Vec::new(),
        }),
        Some(p) => compile_resolved(&p.resolve(target)),
    }
}

fn label(a: Action) -> String {
    match a {
        Action::Allow => "ALLOW".into(),
        Action::Errno(e) => format!("ERRNO({:?})", nix::Error::from_raw(e as i32)),
        Action::KillThread => "KILL_THREAD".into(),
        Action::KillProcess => "KILL_PROCESS".into(),
        Action::Trap => "TRAP".into(),
        Action::Log => "LOG".into(),
        Action::Trace(v) => format!("TRACE({v})"),
    }
}

fn seccompiler_rules(nr: i64, chains: &profile::Chains) -> Result<Vec<SeccompRule>, SeccompError> {
    let err = |source| SeccompError::Rule { nr, source };
    chains
        .iter()
        .map(|chain| {
            let conds = chain
                .iter()
                .map(|a| {
                    let len = match a.width {
                        profile::Width::Dword => SeccompCmpArgLen::Dword,
                        profile::Width::Qword => SeccompCmpArgLen::Qword,
                    };
                    let (op, value) = match a.op {
                        profile::Op::Ne => (SeccompCmpOp::Ne, a.value),
                        profile::Op::Lt => (SeccompCmpOp::Lt, a.value),
                        profile::Op::Le => (SeccompCmpOp::Le, a.value),
                        profile::Op::Eq => (SeccompCmpOp::Eq, a.value),
                        profile::Op::Ge => (SeccompCmpOp::Ge, a.value),
                        profile::Op::Gt => (SeccompCmpOp::Gt, a.value),
                        profile::Op::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
                    };
                    SeccompCondition::new(a.index, len, op, value).map_err(err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            SeccompRule::new(conds).map_err(err)
        })
        .collect()
}

fn program(
    name: String,
    map: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<(String, BpfProgram), SeccompError> {
    let err = |source| SeccompError::Compile {
        program: name.clone(),
        source,
    };
    let filter = SeccompFilter::new(map, mismatch, matched, TARGET_ARCH).map_err(err)?;
    let bpf = BpfProgram::try_from(filter).map_err(err)?;
    Ok((name, bpf))
}

/// The programs of a resolved profile, in the order they are installed.
/// The kernel runs all of them and takes the most restrictive answer, and
/// among errnos the one of the program installed last:
/// 1. `default`: a call matching any rule → allow, else the default action;
/// 2. one per other action of the rules: matching calls → that action;
/// 3. (blocking defaults only) numbers above the highest named → `ENOSYS`.
pub fn compile_resolved(r: &Resolved) -> Result<Filter, SeccompError> {
    let mut programs = Vec::new();
    if r.default_action != Action::Allow {
        let mut map = BTreeMap::new();
        for (nr, by_action) in &r.rules {
            let chains: profile::Chains = if by_action.values().any(|c| c.is_empty()) {
                Vec::new()
            } else {
                by_action.values().flatten().cloned().collect()
            };
            map.insert(*nr, seccompiler_rules(*nr, &chains)?);
        }
        programs.push(program(
            format!("default {}", label(r.default_action)),
            map,
            r.default_action.seccompiler(),
            SeccompAction::Allow,
        )?);
    }
    let actions: BTreeSet<Action> = r
        .rules
        .values()
        .flat_map(|m| m.keys().copied())
        .filter(|a| *a != Action::Allow)
        .collect();
    for action in actions {
        let mut map = BTreeMap::new();
        for (nr, by_action) in &r.rules {
            if let Some(chains) = by_action.get(&action) {
                map.insert(*nr, seccompiler_rules(*nr, chains)?);
            }
        }
        programs.push(program(
            format!("rules {}", label(action)),
            map,
            SeccompAction::Allow,
            action.seccompiler(),
        )?);
    }
    if let (true, Some(max)) = (r.default_action.blocks(), r.max_named) {
        programs.push((format!("above syscall {max} ENOSYS"), newer_enosys(max)));
    }
    Ok(Filter { programs })
}

/// `AUDIT_ARCH_*` of the native architecture.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// The program answering `ENOSYS` to every syscall number above `max`
/// (x32's, with bit 30 set, included) and allowing the rest, after the same
/// arch check as seccompiler's. Written out by hand: seccompiler compares
/// numbers one by one, this is one unsigned comparison.
fn newer_enosys(max: i64) -> BpfProgram {
    use seccompiler::sock_filter;
    let i = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld_w_abs, jeq_k, jgt_k, ret_k) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    vec![
        i(ld_w_abs, 0, 0, 4), // seccomp_data.arch
        i(jeq_k, 1, 0, AUDIT_ARCH),
        i(ret_k, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        i(ld_w_abs, 0, 0, 0), // seccomp_data.nr
        i(jgt_k, 0, 1, max as u32),
        i(ret_k, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        i(ret_k, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use caps::{Capability, CapsHashSet};

    const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    /// `AUDIT_ARCH_I386` (`EM_386 | __AUDIT_ARCH_LE`).
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_NATIVE: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH_NATIVE: u32 = 183 | 0x8000_0000 | 0x4000_0000;
    /// On x86_64, x32 shares the native audit arch; its numbers carry this bit.
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;

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
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("unexpected BPF instruction {other:#x}"),
            }
        }
    }

    /// What the kernel returns with every program installed: it runs them
    /// from the last installed to the first and keeps an answer only when
    /// strictly more restrictive, so among equals the latest program wins.
    fn eval(filter: &Filter, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let data = seccomp_data(arch, nr, args);
        let programs: Vec<_> = filter.programs().collect();
        let mut ret = RET_ALLOW;
        for (_, p) in programs.iter().rev() {
            let cur = run(p, &data);
            let rank = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if rank(cur) < rank(ret) {
                ret = cur;
            }
        }
        ret
    }

    fn target(extra: &[Capability]) -> Target {
        let mut caps: CapsHashSet = super::super::capabilities::DEFAULT_CAPS
            .iter()
            .copied()
            .collect();
        caps.extend(extra.iter().copied());
        Target {
            caps,
            kernel: (6, 1),
        }
    }

    fn default_filter(extra: &[Capability]) -> Filter {
        compile(Some(&default::profile()), &target(extra)).unwrap()
    }

    fn call(f: &Filter, nr: i64, arg0: u64) -> u32 {
        eval(f, AUDIT_ARCH_NATIVE, nr, [arg0, 0, 0, 0, 0, 0])
    }

    fn nr(name: &str) -> i64 {
        profile::native_number(name).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn the_default_programs_compile_and_fit() {
        for extra in [
            &[][..],
            &[Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE],
        ] {
            let f = default_filter(extra);
            let programs: Vec<_> = f.programs().collect();
            let names: Vec<&str> = programs.iter().map(|(n, _)| *n).collect();
            assert_eq!(names.len(), 2 + usize::from(extra.is_empty()), "{names:?}");
            for (name, p) in programs {
                assert!(!p.is_empty() && p.len() < 4096, "{name}: {}", p.len());
            }
        }
        let unconfined = compile(None, &target(&[])).unwrap();
        assert_eq!(unconfined.programs().count(), 0);
    }

    #[test]
    fn every_syscall_is_allowed_or_denied_with_a_reason_on_both_arches() {
        let p = default::profile();
        let named: std::collections::HashSet<&str> = p
            .rules
            .iter()
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect();
        let denied: std::collections::HashSet<&str> =
            default::DENIED.iter().map(|(n, _)| *n).collect();
        for name in named.iter().chain(&denied) {
            assert!(profile::known_anywhere(name), "{name} is no syscall");
        }
        for (n, why) in default::DENIED {
            assert!(!why.is_empty());
            assert!(!default::ALLOWED.contains(n), "{n} both allowed and denied");
        }
        let check = |arch: &str, names: Vec<&'static str>| {
            for name in names {
                assert!(
                    named
                        .iter()
                        .any(|n| profile::number_on(arch, n) == profile::number_on(arch, name))
                        || denied.contains(name),
                    "{arch}: {name} is neither allowed nor denied with a reason"
                );
            }
        };
        check(
            "x86_64",
            syscalls::x86_64::Sysno::iter().map(|s| s.name()).collect(),
        );
        check(
            "aarch64",
            syscalls::aarch64::Sysno::iter().map(|s| s.name()).collect(),
        );
    }

    #[test]
    fn the_default_allows_dockers_syscalls_and_denies_the_rest() {
        let f = default_filter(&[]);
        let max = default::profile().resolve(&target(&[])).max_named.unwrap();
        for name in default::ALLOWED
            .iter()
            .filter_map(|n| profile::native_number(n).map(|_| *n))
        {
            if ["socket", "personality"].contains(&name) {
                continue;
            }
            assert_eq!(call(&f, nr(name), 0), RET_ALLOW, "{name}");
        }
        for (name, _) in default::DENIED {
            let Some(n) = profile::native_number(name) else {
                continue;
            };
            let (want, arg0) = match *name {
                "clone3" => (ENOSYS, 0),
                "unshare" => (EPERM, libc::CLONE_NEWUSER as u64),
                "chroot" => (RET_ALLOW, 0),
                _ if n > max => (ENOSYS, 0),
                _ => (EPERM, 0),
            };
            assert_eq!(call(&f, n, arg0), want, "{name} ({n})");
        }
        for name in [
            "keyctl",
            "mount",
            "bpf",
            "io_uring_setup",
            "name_to_handle_at",
            "clock_adjtime",
        ] {
            assert_eq!(call(&f, nr(name), 0), EPERM, "{name}");
        }
        // Unknown numbers, and those newer than the profile: ENOSYS.
        for n in [max + 1, 999, 4095] {
            assert_eq!(call(&f, n, 0), ENOSYS, "{n}");
        }
        assert_eq!(
            call(&f, nr("chroot"), 0),
            RET_ALLOW,
            "CAP_SYS_CHROOT is a default"
        );
    }

    #[test]
    fn clone_and_unshare_are_denied_only_with_namespace_flags() {
        let f = default_filter(&[]);
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
            (libc::CLONE_VFORK | libc::CLONE_VM) as u64 | sigchld,
        ] {
            assert_eq!(call(&f, nr("clone"), flags), RET_ALLOW, "{flags:#x}");
        }
        assert_eq!(default::CLONE_NAMESPACES, 0x7E02_0000);
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
            assert_eq!(call(&f, nr("clone"), ns | sigchld), EPERM, "{ns:#x}");
            assert_eq!(call(&f, nr("clone"), ns | thread), EPERM, "{ns:#x}");
            assert_eq!(call(&f, nr("unshare"), ns), EPERM, "{ns:#x}");
        }
        assert_eq!(call(&f, nr("unshare"), libc::CLONE_NEWTIME as u64), EPERM);
        for flags in [0, libc::CLONE_FS, libc::CLONE_FILES, libc::CLONE_SYSVSEM] {
            assert_eq!(call(&f, nr("unshare"), flags as u64), RET_ALLOW);
        }
        assert_eq!(call(&f, nr("clone3"), 0), ENOSYS);
    }

    #[test]
    fn capability_groups_follow_the_containers_caps() {
        let admin = default_filter(&[Capability::CAP_SYS_ADMIN]);
        for name in [
            "mount",
            "umount2",
            "setns",
            "unshare",
            "clone3",
            "bpf",
            "sethostname",
        ] {
            assert_eq!(
                call(&admin, nr(name), libc::CLONE_NEWUSER as u64),
                RET_ALLOW,
                "{name}"
            );
        }
        assert_eq!(
            call(&admin, nr("clone"), libc::CLONE_NEWNET as u64),
            RET_ALLOW
        );
        assert_eq!(
            call(&admin, nr("keyctl"), 0),
            EPERM,
            "no capability allows keyrings"
        );
        let time = default_filter(&[Capability::CAP_SYS_TIME]);
        assert_eq!(call(&time, nr("settimeofday"), 0), RET_ALLOW);
        assert_eq!(call(&time, nr("clock_adjtime"), 0), RET_ALLOW);
        assert_eq!(call(&time, nr("mount"), 0), EPERM);
        // Dropping CAP_SYS_CHROOT takes chroot away.
        let mut t = target(&[]);
        t.caps.remove(&Capability::CAP_SYS_CHROOT);
        let f = compile(Some(&default::profile()), &t).unwrap();
        assert_eq!(call(&f, nr("chroot"), 0), EPERM);
    }

    #[test]
    fn personality_and_socket_families() {
        let f = default_filter(&[]);
        for p in default::PERSONALITY_ALLOWED {
            assert_eq!(call(&f, nr("personality"), u64::from(*p)), RET_ALLOW);
        }
        let no_aslr = 0x0040000; // ADDR_NO_RANDOMIZE
        let read_implies_exec = 0x0400000;
        for p in [no_aslr, read_implies_exec, no_aslr | 0x8] {
            assert_eq!(call(&f, nr("personality"), p), EPERM, "{p:#x}");
        }
        for domain in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            39,
            41,
            44,
        ] {
            assert_eq!(call(&f, nr("socket"), domain as u64), RET_ALLOW, "{domain}");
        }
        for domain in [libc::AF_ALG, libc::AF_VSOCK] {
            let d = domain as u64;
            assert_eq!(call(&f, nr("socket"), d), EPERM, "{domain}");
            // Garbage in the high half of the register: the kernel reads an int.
            assert_eq!(call(&f, nr("socket"), d | 1 << 32), EPERM, "{domain}");
        }
    }

    #[test]
    fn other_abis_are_killed_and_x32_gets_enosys() {
        let f = default_filter(&[]);
        // i386 numbers: 3 read, 20 getpid, 26 ptrace; whatever the call.
        for n in [3, 20, 26, 120] {
            assert_eq!(
                eval(&f, AUDIT_ARCH_I386, n, [0; 6]),
                RET_KILL_PROCESS,
                "i386 {n}"
            );
        }
        if cfg!(target_arch = "x86_64") {
            for name in ["read", "unshare", "keyctl", "kexec_load"] {
                let r = call(&f, nr(name) | X32_SYSCALL_BIT, libc::CLONE_NEWUSER as u64);
                assert_eq!(r, ENOSYS, "x32 {name}");
            }
        }
    }

    #[test]
    fn a_json_profile_compiles_as_written() {
        let p = Profile::from_json(
            std::path::Path::new("/p.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["mkdir"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}
            ]}"#,
        )
        .unwrap();
        let f = compile(Some(&p), &target(&[])).unwrap();
        // A denylist: no default program and no ENOSYS program, one per action.
        assert_eq!(f.programs().count(), 3);
        assert_eq!(call(&f, nr("keyctl"), 0), libc::SECCOMP_RET_ERRNO | 13);
        assert_eq!(call(&f, nr("mkdir"), 0), RET_KILL_PROCESS);
        assert_eq!(call(&f, nr("mount"), 0), RET_ALLOW);
        assert_eq!(call(&f, 999, 0), RET_ALLOW);
        let kill = |sig| eval(&f, AUDIT_ARCH_NATIVE, nr("kill"), [1, sig, 0, 0, 0, 0]);
        assert_eq!(kill(9), EPERM);
        assert_eq!(kill(15), RET_ALLOW);

        // An allowlist with a default errno: rules named, newer ones ENOSYS.
        let p = Profile::from_json(
            std::path::Path::new("/p.json"),
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
                {"names": ["read", "write", "exit_group", "openat"], "action": "SCMP_ACT_ALLOW"}
            ]}"#,
        )
        .unwrap();
        let f = compile(Some(&p), &target(&[])).unwrap();
        assert_eq!(call(&f, nr("openat"), 0), RET_ALLOW);
        assert_eq!(call(&f, nr("read"), 0), RET_ALLOW);
        assert_eq!(call(&f, nr("mkdir"), 0), EPERM);
        assert_eq!(
            call(&f, nr("openat") + 1, 0),
            ENOSYS,
            "above the highest named"
        );
    }

    #[test]
    fn an_install_failure_keeps_its_errno() {
        let apply = |source| SeccompError::Apply {
            program: "default ERRNO(EPERM)".into(),
            source,
        };
        let os = std::io::Error::from_raw_os_error;
        let e = apply(seccompiler::Error::Seccomp(os(libc::EFAULT)));
        assert_eq!(e.errno(), nix::Error::EFAULT);
        let e = apply(seccompiler::Error::Prctl(os(libc::EPERM)));
        assert_eq!(e.errno(), nix::Error::EPERM);
        assert!(
            e.to_string()
                .contains("installing the default ERRNO(EPERM) program"),
            "{e}"
        );
        let e = apply(seccompiler::Error::EmptyFilter);
        assert_eq!(e.errno(), nix::Error::EINVAL);
    }

    #[test]
    fn the_programs_the_agent_sends_arrive_unchanged() {
        let f = default_filter(&[]);
        let back = Filter::decode(&f.encode()).unwrap().unwrap();
        let names = |f: &Filter| {
            f.programs()
                .map(|(n, p)| (n.to_string(), p.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&back), names(&f));
        for ((_, a), (_, b)) in f.programs().zip(back.programs()) {
            let raw = |p: &BpfProgram| {
                p.iter()
                    .map(|i| (i.code, i.jt, i.jf, i.k))
                    .collect::<Vec<_>>()
            };
            assert_eq!(raw(a), raw(b));
        }
        // Same answers as the original, for one allowed and one denied call.
        assert_eq!(call(&back, nr("read"), 0), RET_ALLOW);
        assert_eq!(call(&back, nr("keyctl"), 0), EPERM);
        // Unconfined: no program; nothing sent: compile yourself.
        let none = compile(None, &target(&[])).unwrap();
        assert_eq!(
            Filter::decode(&none.encode())
                .unwrap()
                .unwrap()
                .programs()
                .count(),
            0
        );
        assert!(Filter::decode(b"").unwrap().is_none());
    }

    #[test]
    fn malformed_programs_are_refused_not_installed() {
        let good = default_filter(&[]).encode();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut too_many = WIRE_MAGIC.to_vec();
        too_many.extend_from_slice(&17u32.to_le_bytes());
        let cases: [(&[u8], &str); 4] = [
            (b"not the magic", "no magic"),
            (&good[..good.len() - 3], "truncated"),
            (&trailing, "trailing bytes"),
            (&too_many, "more than 16"),
        ];
        for (bytes, want) in cases {
            let e = Filter::decode(bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn the_cache_compiles_each_profile_and_capability_set_once() {
        use super::super::config::{DiskConfig, CONFIG_VERSION};
        let disk = |cap_add: &[&str], seccomp: Seccomp| {
            let mut c = super::super::ContainerConfig::new(
                "c1",
                vec!["/l".into()],
                vec!["/bin/true".into()],
            );
            c.cap_add = cap_add.iter().map(|s| s.to_string()).collect();
            c.seccomp = seccomp;
            DiskConfig {
                version: CONFIG_VERSION,
                container: c,
                cgroup_parent: "berth".into(),
                created_at_ms: 0,
                seccomp_profile: None,
            }
        };
        let cache = FilterCache::default();
        let a = cache.encoded_for(&disk(&[], Seccomp::Default)).unwrap();
        let again = cache.encoded_for(&disk(&[], Seccomp::Default)).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a, &again),
            "a second start compiles nothing"
        );
        let admin = cache
            .encoded_for(&disk(&["SYS_ADMIN"], Seccomp::Default))
            .unwrap();
        assert_ne!(a, admin, "CAP_SYS_ADMIN allows mount & co.: another filter");
        let open = cache.encoded_for(&disk(&[], Seccomp::Unconfined)).unwrap();
        assert_eq!(
            Filter::decode(&open).unwrap().unwrap().programs().count(),
            0
        );
        assert_eq!(
            *a,
            compile_for(&disk(&[], Seccomp::Default)).unwrap().encode()
        );
    }
}
