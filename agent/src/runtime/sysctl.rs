//! Kernel parameters of a container's own namespaces (`sysctls`): Docker's
//! per-container defaults merged with the configured ones ([`plan`]), checked
//! (namespaced names only, as runc and Docker allow), and written through
//! `/proc/sys` by the container's init ([`apply`]) once it is in its network,
//! IPC and UTS namespaces and before the rootfs (whose `/proc/sys` is
//! read-only) is built. `/proc/sys/net`, the IPC and the UTS entries show the
//! namespaces of the process that opens them, so the host's values never change.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Docker's per-container defaults for a container with its own network
/// namespace (moby `daemon/oci_linux.go`, Docker ≥ 20.10), written unless the
/// config sets the same name: any user may bind ports below 1024 (a non-root
/// workload has no `CAP_NET_BIND_SERVICE`) and open ICMP echo sockets (`ping`
/// without `CAP_NET_RAW`, which the default capability set drops).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
];

/// The longest value accepted (as the manifest's check).
pub const MAX_VALUE_BYTES: usize = 256;

/// A sysctl the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("container {id}: sysctl {name} = {value:?}: {source}")]
    Write {
        id: String,
        name: String,
        value: String,
        /// The errno of opening or writing `/proc/sys/...` (`ENOENT`: the kernel has no such sysctl).
        source: nix::Error,
    },
}

/// One sysctl to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted name, e.g. `net.core.somaxconn`.
    pub name: String,
    pub value: String,
    /// One of [`DEFAULTS`]: skipped, not an error, when the kernel lacks it.
    pub default: bool,
}

/// What is written, in order: the [`DEFAULTS`] the config does not set, then
/// the configured ones in name order.
pub fn plan(configured: &BTreeMap<String, String>) -> Vec<Setting> {
    let defaults = DEFAULTS
        .iter()
        .filter(|(name, _)| !configured.contains_key(*name))
        .map(|(name, value)| Setting {
            name: (*name).into(),
            value: (*value).into(),
            default: true,
        });
    let configured = configured.iter().map(|(name, value)| Setting {
        name: name.clone(),
        value: value.clone(),
        default: false,
    });
    defaults.chain(configured).collect()
}

/// `<proc_sys>/<name with its dots as slashes>` (runc's mapping).
pub fn proc_path(proc_sys: &Path, name: &str) -> PathBuf {
    proc_sys.join(name.replace('.', "/"))
}

/// Checks a configured sysctl: a well-formed name of the container's own
/// namespaces (anything else would change the host) and a value of
/// 1..=[`MAX_VALUE_BYTES`] bytes without newline or NUL. `Err` is the reason.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    use berth_core::manifest::{namespaced_sysctl, well_formed_sysctl};
    if !well_formed_sysctl(name) {
        return Err(format!("sysctl {name:?} is not a sysctl name"));
    }
    if !namespaced_sysctl(name) {
        return Err(format!(
            "sysctl {name} is not namespaced (it would change the host)"
        ));
    }
    if value.is_empty() || value.len() > MAX_VALUE_BYTES || value.contains(['\0', '\n']) {
        return Err(format!(
            "sysctl {name}: the value must be 1-{MAX_VALUE_BYTES} bytes with no newline or NUL"
        ));
    }
    Ok(())
}

/// Writes each setting to its file under `proc_sys` (normally `/proc/sys`),
/// in order, with one `write`. A default the kernel does not have (`ENOENT`,
/// e.g. `ip_unprivileged_port_start` before Linux 4.11) is skipped, as Docker
/// skips it; any other refusal — of a configured sysctl, or a value the
/// kernel rejects (`EINVAL`) — is an error naming the sysctl and the errno.
pub fn apply(id: &str, proc_sys: &Path, settings: &[Setting]) -> Result<(), SysctlError> {
    for s in settings {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(proc_path(proc_sys, &s.name))
            .and_then(|mut f| f.write_all(s.value.as_bytes()));
        match written {
            Ok(()) => {}
            Err(e) if s.default && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SysctlError::Write {
                    id: id.into(),
                    name: s.name.clone(),
                    value: s.value.clone(),
                    source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `(name, value, default)`.
    type Row<'a> = (&'a str, &'a str, bool);
    /// Configured pairs and the plan they give.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [Row<'a>]);

    fn names(plan: &[Setting]) -> Vec<Row<'_>> {
        plan.iter()
            .map(|s| (s.name.as_str(), s.value.as_str(), s.default))
            .collect()
    }

    #[test]
    fn defaults_come_first_and_the_config_overrides_them() {
        let cases: &[Case<'_>] = &[
            (
                &[],
                &[
                    ("net.ipv4.ip_unprivileged_port_start", "0", true),
                    ("net.ipv4.ping_group_range", "0 2147483647", true),
                ],
            ),
            (
                &[
                    ("net.core.somaxconn", "1024"),
                    ("net.ipv4.ip_unprivileged_port_start", "1024"),
                ],
                &[
                    ("net.ipv4.ping_group_range", "0 2147483647", true),
                    ("net.core.somaxconn", "1024", false),
                    ("net.ipv4.ip_unprivileged_port_start", "1024", false),
                ],
            ),
            (
                &[("net.ipv4.ping_group_range", "1 0"), ("kernel.shmmax", "1")],
                &[
                    ("net.ipv4.ip_unprivileged_port_start", "0", true),
                    ("kernel.shmmax", "1", false),
                    ("net.ipv4.ping_group_range", "1 0", false),
                ],
            ),
        ];
        for (configured, want) in cases {
            assert_eq!(names(&plan(&map(configured))), *want, "{configured:?}");
        }
    }

    #[test]
    fn names_map_to_proc_sys_paths() {
        let root = Path::new("/proc/sys");
        assert_eq!(
            proc_path(root, "net.ipv4.ip_unprivileged_port_start"),
            Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        );
        assert_eq!(
            proc_path(root, "kernel.shmmax"),
            Path::new("/proc/sys/kernel/shmmax")
        );
    }

    #[test]
    fn only_namespaced_well_formed_sysctls_pass() {
        for ok in [
            ("net.core.somaxconn", "1024"),
            ("kernel.shmmax", "68719476736"),
            ("fs.mqueue.msg_max", "20"),
            ("kernel.domainname", "example.org"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
        ] {
            assert_eq!(check(ok.0, ok.1), Ok(()), "{ok:?}");
        }
        for (name, value, why) in [
            ("kernel.hostname2", "x", "not namespaced"),
            ("vm.swappiness", "1", "not namespaced"),
            ("kernel.core_pattern", "|/x", "not namespaced"),
            ("net..core", "1", "not a sysctl name"),
            ("net/core/somaxconn", "1", "not a sysctl name"),
            ("net.core.somaxconn", "", "1-256 bytes"),
            ("net.core.somaxconn", "1\n2", "1-256 bytes"),
        ] {
            let e = check(name, value).unwrap_err();
            assert!(e.contains(why), "{name}={value:?}: {e}");
        }
    }

    #[test]
    fn apply_writes_each_file_skips_missing_defaults_and_names_refusals() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("net/core");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("somaxconn"), "4096").unwrap();
        // No net/ipv4 here: both defaults are missing, like on an old kernel.
        let settings = plan(&map(&[("net.core.somaxconn", "1024")]));
        apply("c1", root.path(), &settings).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("somaxconn")).unwrap(),
            "1024"
        );

        // A configured sysctl the kernel does not have is an error naming it.
        let settings = plan(&map(&[("net.core.nope", "1")]));
        let e = apply("c1", root.path(), &settings).unwrap_err();
        let SysctlError::Write { source, .. } = &e;
        assert_eq!(*source, nix::Error::ENOENT);
        let text = e.to_string();
        assert!(
            text.contains("c1") && text.contains("net.core.nope") && text.contains("ENOENT"),
            "{text}"
        );
    }
}
