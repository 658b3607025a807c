//! The desired-state manifest: wire types (as written, with spans) are
//! validated into types that cannot hold an invalid state. Every problem found
//! is reported with file, line, column and key; a directory of `*.toml` files
//! is merged, and a service defined twice names both files.

mod lenient;
mod validate;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::image_ref::ImageRef;

pub use validate::{namespaced_sysctl, parse_env_file, well_formed_sysctl};

/// Most files a manifest directory may hold.
pub const MAX_FILES: usize = 256;
/// Largest manifest file accepted.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most services one manifest may define.
pub const MAX_SERVICES: usize = 1000;
/// Most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 100;

/// A validated manifest: services by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub services: BTreeMap<String, Service>,
    /// The `[fleet]` table: how a fleet of agents following this manifest
    /// rolls it out (docs/fleet.md). Absent from the identity hash when unset,
    /// so manifests without it hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetPolicy>,
}

/// The `[fleet]` table as written: each key optional, the agent's
/// `--fleet-*` configuration fills what it leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FleetPolicy {
    /// Most hosts rolling out at once (1..=10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Groups in rollout order, e.g. `["canary", "default"]`: a host of a
    /// later group starts only once every host of the earlier ones runs the
    /// new manifest, ready, for `bake`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// How long a group must stay ready on the new manifest before the next
    /// group may start (0s..=24h).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "option_duration_text"
    )]
    pub bake: Option<Duration>,
    /// Hosts that completed a manifest later halted roll back to their last
    /// complete revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<bool>,
}

/// Most hosts a `[fleet]` may roll at once.
pub const MAX_FLEET_PARALLEL: u32 = 10_000;

/// Whether `name` may name a fleet group (or a fleet, or a host): 1-63 of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn valid_fleet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One service, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The file that defines it.
    pub file: String,
    pub image: ImageRef,
    pub replicas: u32,
    /// Replaces the image's Entrypoint and clears its Cmd when set (as Docker's
    /// `--entrypoint`); may be empty, which clears the image's Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd only (Compose's `command`): the arguments of
    /// the Entrypoint, or the whole argv when there is no Entrypoint.
    pub command: Option<Vec<String>>,
    /// Any name Docker accepts: non-empty, no `=`, no NUL.
    pub env: BTreeMap<String, String>,
    pub env_file: Option<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub readonly_rootfs: bool,
    /// The signal that asks a replica to stop, when the manifest sets one.
    /// Unset, the image's `StopSignal` applies, else SIGTERM (as Docker); the
    /// agent resolves it when it starts a replica (`launch::stop_signal`).
    pub stop_signal: Option<Signal>,
    #[serde(with = "duration_text")]
    pub stop_timeout: Duration,
    /// Namespaced kernel parameters set in the container (`net.*`, IPC ones,
    /// `fs.mqueue.*`, `kernel.domainname`), on top of Docker's defaults.
    pub sysctls: BTreeMap<String, String>,
    /// Services that must have a ready replica before this one starts.
    pub depends_on: Vec<String>,
    /// Run a minimal init as PID 1 (Compose's `init`).
    pub init: bool,
    /// Capabilities added to the default set (Docker's `--cap-add`): names
    /// as [`CAPABILITIES`] spells them (no `CAP_` prefix), or `ALL`; sorted.
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`--cap-drop`), the same way; `ALL`
    /// starts from none.
    pub cap_drop: Vec<String>,
    /// The seccomp profile (`--security-opt seccomp=`).
    pub seccomp: SeccompProfile,
    /// Own user namespace (`auto`, the default) or the host's (`host`).
    pub userns: UsernsMode,
    pub resources: Resources,
    /// Published and container-only ports, in manifest order.
    pub ports: Vec<Port>,
    pub health: Option<Health>,
    pub update: Update,
    pub restart: Restart,
    pub volumes: Vec<Volume>,
    pub secrets: Vec<Secret>,
    pub pull: Pull,
}

impl Service {
    /// The first volume that allows one writer at a time, if any; it makes the
    /// service update stop-first and forbids more than one replica.
    pub fn single_writer_volume(&self) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.single_writer())
    }

    /// What `diff` and a dry run say about how this service is rolled out,
    /// beyond the fields that change.
    pub fn rollout_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(v) = self.single_writer_volume() {
            let what = match &v.source {
                VolumeSource::Named(n) => format!("volume `{n}`"),
                VolumeSource::Host(h) => format!("host path `{h}`"),
                VolumeSource::Tmpfs { .. } => v.target.clone(),
            };
            notes.push(format!(
                "updates stop-first: {what} at {} has one writer at a time",
                v.target
            ));
        }
        notes
    }
}

/// The Linux capabilities, in their kernel order (`CAP_CHOWN` is 0), without
/// the `CAP_` prefix: what `cap_add` and `cap_drop` accept (any case, with or
/// without `CAP_`), as Docker does.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `cap_add = ["ALL"]` / `cap_drop = ["ALL"]`: every capability.
pub const ALL_CAPABILITIES: &str = "ALL";

/// The seccomp filter of a service's containers, written as a string:
/// `"default"`, `"unconfined"` or the absolute path of a Docker/OCI JSON
/// profile (read by the agent when it starts a replica).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeccompProfile {
    /// Berth's default: Docker's default profile as an allowlist.
    #[default]
    Default,
    /// No filter at all (Docker's `seccomp=unconfined`).
    Unconfined,
    /// A JSON profile file on the agent's host.
    File(String),
}

impl SeccompProfile {
    /// Whether it is [`SeccompProfile::Default`] (left out of stored specs).
    pub fn is_default(&self) -> bool {
        *self == SeccompProfile::Default
    }

    /// The manifest text: `default`, `unconfined` or the path.
    pub fn as_str(&self) -> &str {
        match self {
            SeccompProfile::Default => "default",
            SeccompProfile::Unconfined => "unconfined",
            SeccompProfile::File(p) => p,
        }
    }

    /// Reads the manifest text back (`None` for anything else).
    pub fn parse(text: &str) -> Option<SeccompProfile> {
        match text {
            "default" => Some(SeccompProfile::Default),
            "unconfined" => Some(SeccompProfile::Unconfined),
            p if p.starts_with('/') => Some(SeccompProfile::File(p.to_string())),
            _ => None,
        }
    }
}

impl std::fmt::Display for SeccompProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SeccompProfile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SeccompProfile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SeccompProfile::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not \"default\", \"unconfined\" or an absolute path"
            ))
        })
    }
}

/// Which user namespace a service's containers run in: `"auto"` (default):
/// an own one with a range of 65536 subordinate ids the agent allocates for
/// the service, container root an unprivileged host uid (Docker's
/// `userns-remap`, podman's `--userns=auto`); `"host"`: the host's
/// (`--userns=host`), container root is host root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UsernsMode {
    #[default]
    Auto,
    Host,
}

impl UsernsMode {
    /// Whether it is [`UsernsMode::Auto`] (left out of stored specs).
    pub fn is_default(&self) -> bool {
        *self == UsernsMode::Auto
    }

    /// The manifest text: `auto` or `host`.
    pub fn as_str(&self) -> &'static str {
        match self {
            UsernsMode::Auto => "auto",
            UsernsMode::Host => "host",
        }
    }

    /// Reads the manifest text back (`None` for anything else).
    pub fn parse(text: &str) -> Option<UsernsMode> {
        match text {
            "auto" => Some(UsernsMode::Auto),
            "host" => Some(UsernsMode::Host),
            _ => None,
        }
    }
}

impl Serialize for UsernsMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UsernsMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        UsernsMode::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not \"auto\" or \"host\""))
        })
    }
}

/// A signal, by its normalized name (`SIGTERM`, `SIGRTMIN+3`) and Linux number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub name: String,
    pub number: i32,
}

impl Signal {
    /// SIGTERM, what stops a replica when neither the manifest nor the image
    /// names a signal.
    pub fn term() -> Signal {
        Signal {
            name: "SIGTERM".into(),
            number: 15,
        }
    }

    /// Parses a signal as Docker's `ParseSignal` does: a number (1–31, or a
    /// real-time one 34–64), or a name in any case with or without `SIG`
    /// (`SIGINT`, `int`, `RTMIN+3`, `SIGRTMAX-1`). `None` when it is none of
    /// these.
    pub fn parse(text: &str) -> Option<Signal> {
        validate::parse_signal(text)
    }
}

/// Resource limits. CPU is kept in millicpus so specs compare exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    pub millicpus: Option<u32>,
    pub pids: Option<u32>,
}

/// A port of a service, as Compose's long form writes it. With `host` it is
/// published on the host at `host_ip:host` and balanced over ready replicas;
/// without, only other containers reach it (directly, on the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Port {
    pub container: u16,
    pub host: Option<u16>,
    /// The host address to bind; `0.0.0.0` (every address) by default.
    pub host_ip: std::net::IpAddr,
    pub protocol: Protocol,
}

impl Port {
    /// The published host socket address, when the port is published.
    pub fn host_addr(&self) -> Option<std::net::SocketAddr> {
        self.host
            .map(|h| std::net::SocketAddr::new(self.host_ip, h))
    }
}

/// A port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health checking of replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub check: HealthCheck,
    #[serde(with = "duration_text")]
    pub interval: Duration,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "duration_text")]
    pub start_period: Duration,
    pub on_unhealthy: OnUnhealthy,
}

/// Exactly one kind of check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnhealthy {
    Restart,
    Ignore,
}

/// How a service's replicas are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// `stop-first` by default for a service with a single-writer volume
    /// ([`Volume::single_writer`]), `start-first` otherwise.
    pub strategy: UpdateStrategy,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub rollback_on_failure: bool,
    #[serde(with = "duration_text")]
    pub drain: Duration,
    #[serde(with = "duration_text")]
    pub probation: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    StartFirst,
    StopFirst,
}

/// What happens when a replica exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    #[serde(with = "duration_text")]
    pub backoff_initial: Duration,
    #[serde(with = "duration_text")]
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// A mount of a named volume, a host path or a tmpfs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub readonly: bool,
    /// Several writers are fine for this data. With `false` (the default) a
    /// writable named or host volume has one writer at a time.
    #[serde(default)]
    pub shared: bool,
}

impl Volume {
    /// Whether two containers writing it at once could corrupt it: a writable,
    /// not-shared named or host volume (a tmpfs is per container).
    pub fn single_writer(&self) -> bool {
        !self.readonly && !self.shared && !matches!(self.source, VolumeSource::Tmpfs { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeSource {
    Named(String),
    Host(String),
    Tmpfs { size_bytes: u64 },
}

/// A host file mounted read-only at `/run/secrets/<target>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Secret {
    pub source: String,
    pub target: String,
}

/// When tags are (re-)resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub policy: PullPolicy,
    #[serde(with = "option_duration_text")]
    pub check: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    IfMissing,
    Always,
    /// Only what is in the agent's store (loaded with `berthctl load`): tags
    /// resolve there, and a missing image fails instead of being pulled.
    Never,
}

/// One problem found in a manifest, located in its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `service.web.resources.memory`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.key, self.message
            )
        }
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no *.toml files found")]
    NoFiles { path: PathBuf },
    #[error("{path}: more than {MAX_FILES} manifest files")]
    TooManyFiles { path: PathBuf },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

impl ManifestError {
    /// The located problems, when the manifest was read but is invalid.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ManifestError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    lines.join("\n")
}

/// Manifest source files: display name → TOML text, in a stable order.
pub type SourceFiles = BTreeMap<String, String>;

impl Manifest {
    /// Parses and validates one or more files (name → TOML text) as one manifest.
    pub fn from_sources(files: &SourceFiles) -> Result<Manifest, ManifestError> {
        validate::validate_sources(files)
    }

    /// Parses and validates a single TOML text under a display name.
    pub fn from_str_named(name: &str, text: &str) -> Result<Manifest, ManifestError> {
        let mut files = SourceFiles::new();
        files.insert(name.to_string(), text.to_string());
        Self::from_sources(&files)
    }
}

/// Reads a manifest file, or every `*.toml` file of a directory (sorted, not
/// recursive), into source files named by their path as given.
pub fn read_sources(path: &Path) -> Result<SourceFiles, ManifestError> {
    let read_err = |p: &Path, source| ManifestError::Read {
        path: p.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(path, e))?;
    let mut files = SourceFiles::new();
    let mut paths = Vec::new();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| read_err(path, e))? {
            let entry = entry.map_err(|e| read_err(path, e))?;
            let p = entry.path();
            let is_toml = p.extension().is_some_and(|e| e == "toml");
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if is_toml && !hidden && p.is_file() {
                paths.push(p);
            }
        }
        if paths.is_empty() {
            return Err(ManifestError::NoFiles {
                path: path.to_path_buf(),
            });
        }
        if paths.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles {
                path: path.to_path_buf(),
            });
        }
        paths.sort();
    } else {
        paths.push(path.to_path_buf());
    }
    for p in paths {
        let len = std::fs::metadata(&p).map_err(|e| read_err(&p, e))?.len();
        if len > MAX_FILE_BYTES {
            return Err(ManifestError::TooLarge { path: p });
        }
        let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
        files.insert(p.display().to_string(), text);
    }
    Ok(files)
}

/// Reads and validates a manifest file or directory.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    Manifest::from_sources(&read_sources(path)?)
}

pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::units::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod option_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::units::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => crate::units::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
