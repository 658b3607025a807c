//! The per-container configuration: what the agent asks for ([`ContainerConfig`],
//! already merged from image config and manifest and resolved to host paths) and
//! the on-disk form the monitor reads (`config.json`), plus the small state files
//! the monitor writes (`state.json`, `exit.json`). All files are written
//! atomically (temp file + fsync + rename).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Current version of `config.json`.
pub const CONFIG_VERSION: u32 = 1;
/// Default size at which a log file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Errors reading or writing the container's files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("container {id}: invalid config: {reason}")]
    Invalid { id: String, reason: String },
    #[error("container {id}: writing {path}: {source}")]
    Write {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: reading {path}: {source}")]
    Read {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: parsing {path}: {source}")]
    Parse {
        id: String,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "container {id}: {path} has version {found}; this build understands up to {CONFIG_VERSION}"
    )]
    FutureVersion {
        id: String,
        path: PathBuf,
        found: u32,
    },
}

/// User and groups the workload runs as (numeric; the agent resolves names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// What is mounted at a [`Mount`]'s target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host path (named volume directory, host bind or secret file), bind-mounted.
    Bind { source: PathBuf },
    /// A fresh tmpfs; `size_bytes: None` means the kernel default (half of RAM).
    Tmpfs { size_bytes: Option<u64> },
}

/// One mount into the container. `target` is a path inside the container; it is
/// resolved inside the rootfs (symlinks cannot escape it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    pub target: PathBuf,
    pub readonly: bool,
}

impl Mount {
    /// A named volume (or host bind) at `target`.
    pub fn bind(source: impl Into<PathBuf>, target: impl Into<PathBuf>, readonly: bool) -> Self {
        Mount {
            kind: MountKind::Bind {
                source: source.into(),
            },
            target: target.into(),
            readonly,
        }
    }
    /// A tmpfs of at most `size_bytes` at `target`.
    pub fn tmpfs(size_bytes: Option<u64>, target: impl Into<PathBuf>) -> Self {
        Mount {
            kind: MountKind::Tmpfs { size_bytes },
            target: target.into(),
            readonly: false,
        }
    }
    /// A secret file, read-only at `/run/secrets/<name>`.
    pub fn secret(source: impl Into<PathBuf>, name: &str) -> Self {
        Mount::bind(source, Path::new("/run/secrets").join(name), true)
    }
}

/// Everything a container is created with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `[A-Za-z0-9_.-]`, 1..=128 chars, not starting with `.`; names the directory and cgroup.
    pub id: String,
    /// The hostname inside the container.
    pub name: String,
    /// Image layers, top-most first (overlayfs `lowerdir` order). Shared between containers.
    pub lowerdirs: Vec<PathBuf>,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub user: User,
    pub readonly_rootfs: bool,
    pub mounts: Vec<Mount>,
    pub memory_bytes: Option<u64>,
    pub millicpus: Option<u32>,
    pub pids: Option<u32>,
    /// Signal number sent first by [`super::Runtime::stop`].
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub labels: BTreeMap<String, String>,
    /// `logs/container.log` is rotated at this size; one old file (`.1`) is kept.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// A network namespace to join (a pinned nsfs file, e.g. from
    /// `network::Network::attach`); `None` gives the container a fresh one with only `lo`.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The container's address on the bridge: `/etc/hosts` maps the hostname
    /// to it (None: to 127.0.0.1, as without networking).
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
    /// The only nameserver of `/etc/resolv.conf` (berth-dns on the bridge
    /// gateway); None: the host's nameservers.
    #[serde(default)]
    pub dns_server: Option<std::net::Ipv4Addr>,
    /// Run Berth's minimal init as PID 1 (Docker's `--init`, Compose's
    /// `init`): it forwards signals to the workload (its child), reaps
    /// zombies and exits with the workload's status. See [`super::init`].
    #[serde(default)]
    pub init: bool,
    /// Namespaced kernel parameters (`net.*`, `fs.mqueue.*`, IPC ones,
    /// `kernel.domainname`) written in the container's namespaces before the
    /// workload starts, over [`super::sysctl::DEFAULTS`]. See [`super::sysctl`].
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Capabilities added to and dropped from the default set, by name
    /// (`NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`); see [`super::capabilities`].
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The seccomp filter: Berth's default profile, none, or a JSON profile file.
    #[serde(default)]
    pub seccomp: super::seccomp::Seccomp,
    /// `Some`: run in an own user namespace with this id map (container
    /// root is host uid `base`); `None`: in the host's (identity map). See
    /// [`super::userns`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<super::userns::IdRange>,
}

fn default_log_max() -> u64 {
    DEFAULT_LOG_MAX_BYTES
}

impl ContainerConfig {
    /// A config with Docker-like defaults: cwd `/`, root, SIGTERM, 10 s timeout.
    pub fn new(id: impl Into<String>, lowerdirs: Vec<PathBuf>, args: Vec<String>) -> Self {
        let id = id.into();
        ContainerConfig {
            name: id.clone(),
            id,
            lowerdirs,
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: PathBuf::from("/"),
            user: User::default(),
            readonly_rootfs: false,
            mounts: Vec::new(),
            memory_bytes: None,
            millicpus: None,
            pids: None,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            labels: BTreeMap::new(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            netns: None,
            address: None,
            dns_server: None,
            init: false,
            sysctls: BTreeMap::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: super::seccomp::Seccomp::Default,
            userns: None,
        }
    }

    /// Checks what the kernel would otherwise reject with a less helpful error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| {
            Err(ConfigError::Invalid {
                id: self.id.clone(),
                reason,
            })
        };
        if !valid_id(&self.id) {
            return bad("id must be 1..=128 of [A-Za-z0-9_.-] and not start with '.'".into());
        }
        if self.name.is_empty() || self.name.len() > 64 {
            return bad(format!("hostname {:?} must be 1..=64 bytes", self.name));
        }
        if self.args.is_empty() {
            return bad("args must not be empty".into());
        }
        if self.lowerdirs.is_empty() {
            return bad("at least one lowerdir is needed".into());
        }
        for l in &self.lowerdirs {
            let s = l.to_string_lossy();
            if !l.is_absolute() || s.contains([':', ',']) {
                return bad(format!(
                    "lowerdir {} must be absolute and contain no ':' or ','",
                    l.display()
                ));
            }
        }
        if !self.cwd.is_absolute() {
            return bad(format!("cwd {} must be absolute", self.cwd.display()));
        }
        for m in &self.mounts {
            if !m.target.is_absolute() {
                return bad(format!(
                    "mount target {} must be absolute",
                    m.target.display()
                ));
            }
            if let MountKind::Bind { source } = &m.kind {
                if !source.is_absolute() {
                    return bad(format!(
                        "mount source {} must be absolute",
                        source.display()
                    ));
                }
            }
        }
        if let Some(ns) = &self.netns {
            if !ns.is_absolute() {
                return bad(format!("netns {} must be absolute", ns.display()));
            }
        }
        for e in &self.env {
            if !e.contains('=') || e.contains('\0') {
                return bad(format!("env entry {e:?} must be KEY=VALUE"));
            }
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return bad("args must not contain NUL".into());
        }
        for (name, value) in &self.sysctls {
            if let Err(reason) = super::sysctl::check(name, value) {
                return bad(reason);
            }
        }
        if let Err(e) = super::capabilities::effective(&self.cap_add, &self.cap_drop) {
            return bad(e.to_string());
        }
        if let super::seccomp::Seccomp::Profile { path } = &self.seccomp {
            if !path.is_absolute() {
                return bad(format!(
                    "seccomp profile {} must be absolute",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// Whether `id` may name a container directory and cgroup.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `config.json`: the container config plus what the monitor needs to find its cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    pub version: u32,
    pub container: ContainerConfig,
    pub cgroup_parent: String,
    pub created_at_ms: u64,
    /// The JSON profile of `container.seccomp`, read at create (so the
    /// monitor and every `exec` use the one the container started with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<super::seccomp::Profile>,
}

/// `state.json`, written by the monitor once the workload has been exec'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// Host pid of the container's PID 1.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), against pid reuse.
    pub pid_start: u64,
    pub monitor_pid: i32,
    pub monitor_start: u64,
    pub started_at_ms: u64,
}

/// `exit.json`, written by the monitor after reaping the container's PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitFile {
    /// Exit status, or 128 + signal when killed by a signal (as Docker reports it).
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The inverse of [`now_ms`].
pub fn ms_to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// renamed over `path`, so a reader sees the old or the new content, never
/// part of it. Not fsynced: these files describe processes, which do not
/// survive the host (runc and crun keep theirs on tmpfs); after a crash a
/// file may be empty, which reads as a half-made create (`Created`) or an
/// unknown exit, and the reconciler replaces the container either way. An
/// fsync here cost 10–20 ms per file on a busy disk, three per container.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
    }
    std::fs::rename(&tmp, path)
}

/// Serializes `value` as JSON into `path` atomically.
pub fn write_json<T: Serialize>(id: &str, path: &Path, value: &T) -> Result<(), ConfigError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ConfigError::Write {
        id: id.into(),
        path: path.into(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &bytes).map_err(|source| ConfigError::Write {
        id: id.into(),
        path: path.into(),
        source,
    })
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    id: &str,
    path: &Path,
) -> Result<Option<T>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ConfigError::Parse {
                    id: id.into(),
                    path: path.into(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            id: id.into(),
            path: path.into(),
            source,
        }),
    }
}

/// Reads `config.json`, refusing versions from the future.
pub fn read_disk_config(id: &str, path: &Path) -> Result<DiskConfig, ConfigError> {
    let value: serde_json::Value = read_json(id, path)?.ok_or_else(|| ConfigError::Read {
        id: id.into(),
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if found > CONFIG_VERSION {
        return Err(ConfigError::FutureVersion {
            id: id.into(),
            path: path.into(),
            found,
        });
    }
    serde_json::from_value(value).map_err(|source| ConfigError::Parse {
        id: id.into(),
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("web-1.abc_2"));
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn validate_rejects_bad_lowerdirs_and_env() {
        let mut c = ContainerConfig::new("c1", vec!["/l".into()], vec!["/bin/true".into()]);
        c.validate().unwrap();
        c.lowerdirs = vec!["/a:b".into()];
        assert!(c.validate().is_err());
        c.lowerdirs = vec!["/l".into()];
        c.env.push("NOEQUALS".into());
        assert!(c.validate().unwrap_err().to_string().contains("c1"));
    }

    #[test]
    fn json_files_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exit.json");
        let e = ExitFile {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at_ms: 5,
        };
        write_json("c", &p, &e).unwrap();
        assert_eq!(read_json::<ExitFile>("c", &p).unwrap(), Some(e));
        assert!(!p.with_extension("tmp").exists());
        assert_eq!(
            read_json::<ExitFile>("c", &dir.path().join("none")).unwrap(),
            None
        );
    }
}
