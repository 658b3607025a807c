//! Seccomp profiles: the model every filter is compiled from ([`Profile`]:
//! a default action and rules by syscall name, with argument comparisons and
//! capability/arch/kernel conditions, as Docker's and the OCI runtime spec's
//! JSON profiles write them), reading such a JSON file ([`Profile::from_json`],
//! errors naming the file and the entry), and resolving a profile for one
//! container ([`Profile::resolve`]: names to native syscall numbers, rules
//! kept or dropped by the container's capabilities, the running kernel and
//! the architecture, as moby does before handing a profile to runc).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caps::CapsHashSet;
use serde::{Deserialize, Serialize};

/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// A profile file that cannot be used, with the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seccomp profile {}: {}{message}", path.display(), if entry.is_empty() { String::new() } else { format!("{entry}: ") })]
pub struct ProfileError {
    pub path: PathBuf,
    /// Where in the file: `syscalls[3].names[1]`, `defaultAction`; empty for the whole file.
    pub entry: String,
    pub message: String,
}

/// What a filter does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Fail with this errno.
    Errno(u32),
    KillThread,
    KillProcess,
    /// `SIGSYS`.
    Trap,
    /// Allow and log.
    Log,
    /// Notify a ptrace tracer with this value (`ENOSYS` without one).
    Trace(u32),
}

impl Action {
    /// Whether a call that gets it does not run (so syscalls the profile
    /// never heard of get `ENOSYS` instead, see [`super::compile`]).
    pub fn blocks(self) -> bool {
        matches!(
            self,
            Action::Errno(_) | Action::KillThread | Action::KillProcess | Action::Trap
        )
    }

    pub(super) fn seccompiler(self) -> seccompiler::SeccompAction {
        use seccompiler::SeccompAction as S;
        match self {
            Action::Allow => S::Allow,
            Action::Errno(e) => S::Errno(e),
            Action::KillThread => S::KillThread,
            Action::KillProcess => S::KillProcess,
            Action::Trap => S::Trap,
            Action::Log => S::Log,
            Action::Trace(v) => S::Trace(v),
        }
    }
}

/// An argument comparison operator (`SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == value_two`.
    MaskedEq,
}

/// How much of an argument is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Width {
    /// The low 32 bits: what the kernel reads of an `int` argument (Berth's
    /// default profile compares `int`s this way, so garbage in the high half
    /// of the register cannot slip past a comparison).
    Dword,
    /// All 64 bits, as libseccomp compares (JSON profiles).
    Qword,
}

/// One argument comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgCmp {
    /// 0..=5.
    pub index: u8,
    pub op: Op,
    pub value: u64,
    /// The expected value of [`Op::MaskedEq`].
    pub value_two: u64,
    pub width: Width,
}

/// When a rule applies (`includes`) or does not (`excludes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Capability names (`CAP_SYS_ADMIN`): includes needs all, excludes any.
    pub caps: Vec<String>,
    /// Docker's arch names (`amd64`, `arm64`, `x86`…): the native one listed.
    pub arches: Vec<String>,
    /// `(major, minor)`: the running kernel is at least this.
    pub min_kernel: Option<(u32, u32)>,
}

impl Condition {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

/// One rule: what `action` calls of `names` get (those matching `args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    /// AND'ed; but when one argument index is compared more than once, each
    /// comparison is a rule of its own (OR'ed), as runc does it.
    pub args: Vec<ArgCmp>,
    pub includes: Condition,
    pub excludes: Condition,
}

/// A seccomp profile: calls matching no rule get `default_action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

/// What a filter is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The container's capability set (its bounding set; what moby keys on).
    pub caps: CapsHashSet,
    /// The running kernel's `(major, minor)`.
    pub kernel: (u32, u32),
}

/// One syscall's conditions of one action: OR'ed chains of AND'ed
/// comparisons; an empty list matches every call.
pub type Chains = Vec<Vec<ArgCmp>>;

/// A profile resolved for a [`Target`] on the native architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub default_action: Action,
    /// Syscall number → action → the calls that get it.
    pub rules: BTreeMap<i64, BTreeMap<Action, Chains>>,
    /// The highest native syscall number the profile names at all (whatever
    /// its conditions): numbers above it are newer than the profile.
    pub max_named: Option<i64>,
}

/// Docker's name of the native architecture (`includes.arches`).
#[cfg(target_arch = "x86_64")]
pub const NATIVE_ARCH: &[&str] = &["amd64", "x86_64"];
#[cfg(target_arch = "aarch64")]
pub const NATIVE_ARCH: &[&str] = &["arm64", "aarch64"];

/// The native architecture's `SCMP_ARCH_*` name.
#[cfg(target_arch = "x86_64")]
pub const NATIVE_SCMP_ARCH: &str = "SCMP_ARCH_X86_64";
#[cfg(target_arch = "aarch64")]
pub const NATIVE_SCMP_ARCH: &str = "SCMP_ARCH_AARCH64";

/// libseccomp names the syscalls crate spells otherwise, per architecture.
const ALIASES: &[(&str, &str, &str)] = &[("aarch64", "newfstatat", "fstatat")];

/// ARM's private syscalls (`__ARM_NR_*`), which the syscalls crate's tables leave out.
const ARM_PRIVATE: &[&str] = &["breakpoint", "cacheflush", "set_tls", "usr26", "usr32"];

/// The number of syscall `name` on architecture `arch` (`x86_64` or
/// `aarch64`); `None` where it has none.
pub fn number_on(arch: &str, name: &str) -> Option<i64> {
    let name = ALIASES
        .iter()
        .find(|(a, n, _)| *a == arch && *n == name)
        .map_or(name, |(_, _, crate_name)| *crate_name);
    match arch {
        "x86_64" => name
            .parse::<syscalls::x86_64::Sysno>()
            .ok()
            .map(|s| i64::from(s.id())),
        "aarch64" => name
            .parse::<syscalls::aarch64::Sysno>()
            .ok()
            .map(|s| i64::from(s.id())),
        _ => None,
    }
}

/// The native number of syscall `name`; `None` where this architecture has none.
pub fn native_number(name: &str) -> Option<i64> {
    number_on(std::env::consts::ARCH, name)
}

/// Whether any Linux architecture has a syscall called `name` (so a name
/// this one lacks, like `chown32` on x86_64, is skipped rather than refused).
pub fn known_anywhere(name: &str) -> bool {
    use std::str::FromStr as _;
    ARM_PRIVATE.contains(&name)
        || ALIASES.iter().any(|(_, n, _)| *n == name)
        || syscalls::x86_64::Sysno::from_str(name).is_ok()
        || syscalls::x86::Sysno::from_str(name).is_ok()
        || syscalls::aarch64::Sysno::from_str(name).is_ok()
        || syscalls::arm::Sysno::from_str(name).is_ok()
        || syscalls::riscv64::Sysno::from_str(name).is_ok()
        || syscalls::riscv32::Sysno::from_str(name).is_ok()
        || syscalls::s390x::Sysno::from_str(name).is_ok()
        || syscalls::powerpc::Sysno::from_str(name).is_ok()
        || syscalls::powerpc64::Sysno::from_str(name).is_ok()
        || syscalls::mips::Sysno::from_str(name).is_ok()
        || syscalls::mips64::Sysno::from_str(name).is_ok()
        || syscalls::loongarch64::Sysno::from_str(name).is_ok()
        || syscalls::sparc::Sysno::from_str(name).is_ok()
        || syscalls::sparc64::Sysno::from_str(name).is_ok()
}

/// `(major, minor)` of a kernel release string (`6.18.44-fc`); `None` if it has none.
pub fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's `(major, minor)` (`(0, 0)` if `uname` says nothing usable).
pub fn running_kernel() -> (u32, u32) {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| parse_kernel(&u.release().to_string_lossy()))
        .unwrap_or((0, 0))
}

impl Condition {
    /// Whether `target` satisfies every part (an `includes`).
    fn all(&self, target: &Target) -> bool {
        self.caps.iter().all(|c| has_cap(target, c))
            && (self.arches.is_empty()
                || self
                    .arches
                    .iter()
                    .any(|a| NATIVE_ARCH.contains(&a.as_str())))
            && self.min_kernel.is_none_or(|k| target.kernel >= k)
    }
    /// Whether `target` meets any part (an `excludes`).
    fn any(&self, target: &Target) -> bool {
        self.caps.iter().any(|c| has_cap(target, c))
            || self
                .arches
                .iter()
                .any(|a| NATIVE_ARCH.contains(&a.as_str()))
            || self.min_kernel.is_some_and(|k| target.kernel >= k)
    }
}

fn has_cap(target: &Target, name: &str) -> bool {
    super::super::capabilities::parse(name).is_ok_and(|c| target.caps.contains(&c))
}

impl Profile {
    /// The rules that apply to `target`, by native syscall number. Names this
    /// architecture lacks are skipped.
    pub fn resolve(&self, target: &Target) -> Resolved {
        let mut rules: BTreeMap<i64, BTreeMap<Action, Chains>> = BTreeMap::new();
        let mut max_named = None;
        for rule in &self.rules {
            let nrs: Vec<i64> = rule.names.iter().filter_map(|n| native_number(n)).collect();
            max_named = nrs.iter().copied().chain(max_named).max();
            if !rule.includes.all(target)
                || (!rule.excludes.is_empty() && rule.excludes.any(target))
            {
                continue;
            }
            // runc: comparisons of one argument index given twice are OR'ed.
            let mut seen = [0u8; 6];
            for a in &rule.args {
                seen[usize::from(a.index.min(5))] += 1;
            }
            let chains: Chains = if rule.args.is_empty() {
                Vec::new()
            } else if seen.iter().any(|n| *n > 1) {
                rule.args.iter().map(|a| vec![*a]).collect()
            } else {
                vec![rule.args.clone()]
            };
            for nr in nrs {
                let entry = rules.entry(nr).or_default().entry(rule.action);
                match entry {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(chains.clone());
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        // Unconditional (empty) absorbs everything.
                        if !o.get().is_empty() {
                            if chains.is_empty() {
                                o.get_mut().clear();
                            } else {
                                o.get_mut().extend(chains.iter().cloned());
                            }
                        }
                    }
                }
            }
        }
        Resolved {
            default_action: self.default_action,
            rules,
            max_named,
        }
    }

    /// Reads a Docker/OCI seccomp JSON profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        use std::io::Read as _;
        let err = |message: String| ProfileError {
            path: path.into(),
            entry: String::new(),
            message,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PROFILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        if text.len() as u64 > MAX_PROFILE_BYTES {
            return Err(err(format!("larger than {MAX_PROFILE_BYTES} bytes")));
        }
        Profile::from_json(path, &text)
    }

    /// Parses the JSON text of a profile (`path` names it in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<Profile, ProfileError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ProfileError {
            path: path.into(),
            entry: format!("line {} column {}", e.line(), e.column()),
            message: e.to_string(),
        })?;
        Reader { path }.profile(&value)
    }
}

/// Walks a profile's JSON, naming the entry of every problem.
struct Reader<'a> {
    path: &'a Path,
}

type Obj = serde_json::Map<String, serde_json::Value>;

const TOP_KEYS: &[&str] = &[
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "archMap",
    "syscalls",
    "flags",
    "listenerPath",
    "listenerMetadata",
    "comment",
];
const RULE_KEYS: &[&str] = &[
    "names", "name", "action", "errnoRet", "args", "includes", "excludes", "comment",
];
const ARG_KEYS: &[&str] = &["index", "value", "valueTwo", "op"];
const COND_KEYS: &[&str] = &["caps", "arches", "minKernel"];
const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_NOTIFY",
];
const OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];
const FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/// `(did you mean X?)` when `wrong` is close to one of `names`.
/// (The manifest's rule: Jaro-Winkler at least 0.85 or at most two edits.)
fn hint(wrong: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            (
                n,
                strsim::jaro_winkler(wrong, n),
                strsim::levenshtein(wrong, n),
            )
        })
        .filter(|(_, jw, lev)| *jw >= 0.85 || *lev <= 2)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _, _)| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default()
}

impl Reader<'_> {
    fn err(&self, entry: impl Into<String>, message: impl Into<String>) -> ProfileError {
        ProfileError {
            path: self.path.into(),
            entry: entry.into(),
            message: message.into(),
        }
    }

    fn object<'v>(&self, v: &'v serde_json::Value, entry: &str) -> Result<&'v Obj, ProfileError> {
        v.as_object()
            .ok_or_else(|| self.err(entry, format!("must be an object, not {v}")))
    }

    fn known_keys(&self, o: &Obj, entry: &str, keys: &[&str]) -> Result<(), ProfileError> {
        match o.keys().find(|k| !keys.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let at = if entry.is_empty() {
                    k.clone()
                } else {
                    format!("{entry}.{k}")
                };
                Err(self.err(at, format!("unknown key{}", hint(k, keys))))
            }
        }
    }

    fn string<'v>(&self, v: &'v serde_json::Value, entry: &str) -> Result<&'v str, ProfileError> {
        v.as_str()
            .ok_or_else(|| self.err(entry, format!("must be a string, not {v}")))
    }

    fn strings(&self, o: &Obj, key: &str, entry: &str) -> Result<Vec<String>, ProfileError> {
        let at = format!("{entry}.{key}");
        match o.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| self.string(v, &format!("{at}[{i}]")).map(str::to_string))
                .collect(),
            Some(v) => Err(self.err(at, format!("must be a list of strings, not {v}"))),
        }
    }

    fn uint(&self, v: &serde_json::Value, entry: &str) -> Result<u64, ProfileError> {
        v.as_u64()
            .ok_or_else(|| self.err(entry, format!("must be a non-negative integer, not {v}")))
    }

    fn errno(&self, o: &Obj, key: &str, entry: &str, default: u32) -> Result<u32, ProfileError> {
        match o.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => {
                let at = format!("{entry}{key}");
                let n = self.uint(v, &at)?;
                // SECCOMP_RET_DATA is 16 bits; errnos stop at 4095.
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..4096).contains(n))
                    .ok_or_else(|| self.err(at, format!("{n} is not an errno (1-4095)")))
            }
        }
    }

    fn action(
        &self,
        o: &Obj,
        key: &str,
        errno_key: &str,
        entry: &str,
        default_errno: u32,
    ) -> Result<Action, ProfileError> {
        let at = format!("{entry}{key}");
        let v = o.get(key).ok_or_else(|| self.err(at.clone(), "missing"))?;
        let name = self.string(v, &at)?;
        Ok(match name {
            "SCMP_ACT_ALLOW" => Action::Allow,
            "SCMP_ACT_ERRNO" => Action::Errno(self.errno(o, errno_key, entry, default_errno)?),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
            "SCMP_ACT_TRAP" => Action::Trap,
            "SCMP_ACT_LOG" => Action::Log,
            "SCMP_ACT_TRACE" => {
                Action::Trace(self.errno(o, errno_key, entry, libc::EPERM as u32)?)
            }
            "SCMP_ACT_NOTIFY" => {
                return Err(self.err(at, "SCMP_ACT_NOTIFY needs a seccomp agent; Berth has none"))
            }
            other => {
                return Err(self.err(
                    at,
                    format!("unknown action {other:?}{}", hint(other, ACTIONS)),
                ))
            }
        })
    }

    fn condition(&self, o: &Obj, key: &str, entry: &str) -> Result<Condition, ProfileError> {
        let Some(v) = o.get(key).filter(|v| !v.is_null()) else {
            return Ok(Condition::default());
        };
        let at = format!("{entry}.{key}");
        let c = self.object(v, &at)?;
        self.known_keys(c, &at, COND_KEYS)?;
        let caps = self.strings(c, "caps", &at)?;
        for (i, cap) in caps.iter().enumerate() {
            if super::super::capabilities::parse(cap).is_err() {
                let names: Vec<String> = berth_core::manifest::CAPABILITIES
                    .iter()
                    .map(|n| format!("CAP_{n}"))
                    .collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                return Err(self.err(
                    format!("{at}.caps[{i}]"),
                    format!("{cap:?} is not a capability{}", hint(cap, &names)),
                ));
            }
        }
        let arches = self.strings(c, "arches", &at)?;
        let min_kernel = match c.get("minKernel") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let k_at = format!("{at}.minKernel");
                let text = self.string(v, &k_at)?;
                Some(
                    parse_kernel(text)
                        .filter(|_| !text.is_empty())
                        .ok_or_else(|| {
                            self.err(
                                k_at,
                                format!("{text:?} is not a kernel version like \"4.8\""),
                            )
                        })?,
                )
            }
        };
        Ok(Condition {
            caps,
            arches,
            min_kernel,
        })
    }

    fn arg(&self, v: &serde_json::Value, at: &str) -> Result<ArgCmp, ProfileError> {
        let o = self.object(v, at)?;
        self.known_keys(o, at, ARG_KEYS)?;
        let get = |k: &str| {
            o.get(k)
                .ok_or_else(|| self.err(format!("{at}.{k}"), "missing"))
        };
        let index = self.uint(get("index")?, &format!("{at}.index"))?;
        if index > 5 {
            return Err(self.err(
                format!("{at}.index"),
                format!("{index} is not an argument index (0-5)"),
            ));
        }
        let value = self.uint(get("value")?, &format!("{at}.value"))?;
        let value_two = match o.get("valueTwo") {
            None | Some(serde_json::Value::Null) => 0,
            Some(v) => self.uint(v, &format!("{at}.valueTwo"))?,
        };
        let op_at = format!("{at}.op");
        let op = match self.string(get("op")?, &op_at)? {
            "SCMP_CMP_NE" => Op::Ne,
            "SCMP_CMP_LT" => Op::Lt,
            "SCMP_CMP_LE" => Op::Le,
            "SCMP_CMP_EQ" => Op::Eq,
            "SCMP_CMP_GE" => Op::Ge,
            "SCMP_CMP_GT" => Op::Gt,
            "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
            other => {
                return Err(self.err(
                    op_at,
                    format!("unknown operator {other:?}{}", hint(other, OPS)),
                ))
            }
        };
        Ok(ArgCmp {
            index: index as u8,
            op,
            value,
            value_two,
            width: Width::Qword,
        })
    }

    fn rule(&self, v: &serde_json::Value, at: &str) -> Result<Rule, ProfileError> {
        let o = self.object(v, at)?;
        self.known_keys(o, at, RULE_KEYS)?;
        let mut names = self.strings(o, "names", at)?;
        if let Some(n) = o.get("name").filter(|n| !n.is_null()) {
            names.push(self.string(n, &format!("{at}.name"))?.to_string());
        }
        if names.is_empty() {
            return Err(self.err(at, "names no syscall (`names` is missing or empty)"));
        }
        for (i, n) in names.iter().enumerate() {
            if !known_anywhere(n) {
                let near: Vec<&str> = syscalls::x86_64::Sysno::iter().map(|s| s.name()).collect();
                return Err(self.err(
                    format!("{at}.names[{i}]"),
                    format!("{n:?} is no syscall on any architecture{}", hint(n, &near)),
                ));
            }
        }
        let action = self.action(
            o,
            "action",
            "errnoRet",
            &format!("{at}."),
            libc::EPERM as u32,
        )?;
        let args = match o.get("args") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| self.arg(v, &format!("{at}.args[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(self.err(format!("{at}.args"), format!("must be a list, not {v}")))
            }
        };
        Ok(Rule {
            names,
            action,
            args,
            includes: self.condition(o, "includes", at)?,
            excludes: self.condition(o, "excludes", at)?,
        })
    }

    fn profile(&self, v: &serde_json::Value) -> Result<Profile, ProfileError> {
        let o = self.object(v, "")?;
        self.known_keys(o, "", TOP_KEYS)?;
        let default_action = self.action(
            o,
            "defaultAction",
            "defaultErrnoRet",
            "",
            libc::EPERM as u32,
        )?;
        for (i, a) in self.strings(o, "architectures", "")?.iter().enumerate() {
            if !a.starts_with("SCMP_ARCH_") {
                return Err(self.err(
                    format!("architectures[{i}]"),
                    format!("{a:?} is not an SCMP_ARCH_* name"),
                ));
            }
        }
        for (i, f) in self.strings(o, "flags", "")?.iter().enumerate() {
            if !FLAGS.contains(&f.as_str()) {
                return Err(self.err(
                    format!("flags[{i}]"),
                    format!("unknown flag {f:?}{}", hint(f, FLAGS)),
                ));
            }
        }
        if let Some(p) = o
            .get("listenerPath")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
        {
            return Err(self.err(
                "listenerPath",
                format!("{p:?}: seccomp agents (SCMP_ACT_NOTIFY) are not supported"),
            ));
        }
        let rules = match o.get("syscalls") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| self.rule(v, &format!("syscalls[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(self.err("syscalls", format!("must be a list, not {v}"))),
        };
        Ok(Profile {
            default_action,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::from_json(Path::new("/etc/berth/p.json"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_docker_style_profile_reads_with_every_field() {
        let p = parse(
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": null}],
              "syscalls": [
                {"names": ["read", "write", "chown32"], "action": "SCMP_ACT_ALLOW"},
                {"name": "personality", "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["mount"], "action": "SCMP_ACT_KILL", "comment": "no"}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(p.rules.len(), 6);
        assert_eq!(p.rules[1].names, ["personality"]);
        assert_eq!(p.rules[2].args[0].op, Op::MaskedEq);
        assert_eq!(p.rules[2].args[0].value, 0x7E02_0000);
        assert_eq!(p.rules[2].excludes.caps, ["CAP_SYS_ADMIN"]);
        assert_eq!(p.rules[3].action, Action::Errno(38));
        assert_eq!(p.rules[4].includes.min_kernel, Some((4, 8)));
        assert_eq!(p.rules[5].action, Action::KillThread);
    }

    #[test]
    fn bad_profiles_name_the_file_and_the_entry() {
        let table = [
            ("{", "seccomp profile /etc/berth/p.json: line 1 column 1: EOF"),
            ("[]", "must be an object"),
            ("{}", "defaultAction: missing"),
            (r#"{"defaultAction": "SCMP_ACT_ALOW"}"#, "defaultAction: unknown action \"SCMP_ACT_ALOW\" (did you mean \"SCMP_ACT_ALLOW\"?)"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#, "defaultErrnoRet: 70000 is not an errno"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "defautlErrnoRet": 1}"#, "defautlErrnoRet: unknown key (did you mean \"defaultErrnoRet\"?)"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["read", "opne"], "action": "SCMP_ACT_ALLOW"}]}"#,
             "syscalls[1].names[1]: \"opne\" is no syscall on any architecture (did you mean \"open\"?)"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#, "syscalls[0]: names no syscall"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}"#, "syscalls[0].action: missing"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#, "syscalls[0].action: SCMP_ACT_NOTIFY needs a seccomp agent"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#, "syscalls[0].args[0].index: 6 is not an argument index (0-5)"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQUAL"}]}]}"#, "syscalls[0].args[0].op: unknown operator \"SCMP_CMP_EQUAL\""),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]}"#, "syscalls[0].args[0].value: missing"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMN"]}}]}"#, "syscalls[0].includes.caps[0]: \"CAP_SYS_ADMN\" is not a capability (did you mean \"CAP_SYS_ADMIN\"?)"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#, "syscalls[0].includes.minKernel: \"new\" is not a kernel version"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}"#, "syscalls[0].names: must be a list of strings"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"}"#, "listenerPath: \"/run/agent.sock\": seccomp agents"),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_TSYNCC"]}"#, "flags[0]: unknown flag"),
        ];
        for (text, needle) in table {
            let e = err(text);
            assert!(e.starts_with("seccomp profile /etc/berth/p.json: "), "{e}");
            assert!(e.contains(needle), "{text}\n  gave: {e}\n  want: {needle}");
        }
        let missing = Profile::load(Path::new("/nonexistent/p.json")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("/nonexistent/p.json: cannot read it"),
            "{missing}"
        );
    }

    #[test]
    fn rules_resolve_by_caps_arch_and_kernel() {
        let p = parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read", "chown32", "arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["write"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                    {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                    {"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ]}"#,
        )
        .unwrap();
        let nr = |n: &str| native_number(n).unwrap();
        let plain = Target {
            caps: CapsHashSet::new(),
            kernel: (6, 1),
        };
        let r = p.resolve(&plain);
        assert_eq!(r.rules[&nr("read")][&Action::Allow], Chains::new());
        assert!(!r.rules.contains_key(&nr("mount")));
        assert!(!r.rules.contains_key(&nr("write")), "not this arch");
        assert_eq!(r.rules[&nr("clone3")][&Action::Errno(38)], Chains::new());
        assert!(r.rules.contains_key(&nr("ptrace")));
        // Same index twice: OR'ed (two chains); different indexes: AND'ed (one chain).
        let socket = &r.rules[&nr("socket")][&Action::Allow];
        assert_eq!(socket.len(), 3);
        assert_eq!(socket[2].len(), 2);
        assert_eq!(r.max_named, Some(nr("clone3")));

        let admin = Target {
            caps: [caps::Capability::CAP_SYS_ADMIN].into_iter().collect(),
            kernel: (4, 4),
        };
        let r = p.resolve(&admin);
        assert!(r.rules.contains_key(&nr("mount")));
        assert!(!r.rules.contains_key(&nr("clone3")));
        assert!(!r.rules.contains_key(&nr("ptrace")), "kernel too old");
    }

    #[test]
    fn kernel_versions_and_names() {
        assert_eq!(parse_kernel("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_kernel("5.10"), Some((5, 10)));
        assert_eq!(parse_kernel("x"), None);
        assert!(
            known_anywhere("chown32") && known_anywhere("set_tls") && known_anywhere("newfstatat")
        );
        assert!(!known_anywhere("opne"));
        assert_eq!(number_on("aarch64", "newfstatat"), Some(79));
        assert_eq!(number_on("x86_64", "newfstatat"), Some(262));
        assert_eq!(number_on("x86_64", "chown32"), None);
    }
}
