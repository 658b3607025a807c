//! Creating a container and starting its workload (`create_and_start`): the
//! container directory and the files bind-mounted at `/etc` (`hostname`,
//! `hosts`, `resolv.conf`, written as Docker writes them), `config.json`, the
//! cgroup with its limits, then the monitor, whose one-line report says
//! whether the workload was exec'd. A failure undoes everything made.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;

use super::cgroups::Limits;
use super::config::{self, ContainerConfig, DiskConfig};
use super::monitor::MonitorReport;
use super::seccomp::{Profile, Seccomp};
use super::stages::Stamps;
use super::{ContainerInfo, Runtime, RuntimeError};

impl Runtime {
    /// Creates the container and starts its workload; returns once the
    /// workload has been exec'd (or with the step that failed, after undoing
    /// everything create made).
    pub fn create_and_start(&self, cfg: &ContainerConfig) -> Result<ContainerInfo, RuntimeError> {
        cfg.validate()?;
        let id = cfg.id.as_str();
        let parent = self.containers_dir();
        std::fs::create_dir_all(&parent).map_err(Self::io(id, "creating", &parent))?;
        set_mode(&parent, 0o700).map_err(Self::io(id, "chmod", &parent))?;
        let dir = self.container_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: id.into() })
            }
            Err(e) => return Err(Self::io(id, "creating", &dir)(e)),
        }
        let mut stamps = super::stages::Stamps::new(self.paths.trace_stages);
        stamps.stamp("runtime.create");
        match self.create_inner(cfg, &dir, &mut stamps) {
            Ok(()) => {
                let info = self.info(id)?;
                stamps.stamp("runtime.info");
                stamps.flush_into(&dir);
                Ok(info)
            }
            Err(error) => match self.teardown(id, &dir) {
                Ok(()) => Err(error),
                Err(cleanup) => Err(RuntimeError::CreateFailed {
                    id: id.into(),
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    fn create_inner(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
        stamps: &mut Stamps,
    ) -> Result<(), RuntimeError> {
        let id = cfg.id.as_str();
        set_mode(dir, 0o700).map_err(Self::io(id, "chmod", dir))?;
        for sub in ["upper", "work", "merged", "logs"] {
            let p = dir.join(sub);
            std::fs::create_dir(&p).map_err(Self::io(id, "creating", &p))?;
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hostname", format!("{}\n", cfg.name)),
            ("hosts", hosts_file(&cfg.name, cfg.address)),
            ("resolv.conf", resolv_conf(&host_resolv, cfg.dns_server)),
        ];
        for (name, content) in files {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(Self::io(id, "writing", &p))?;
        }
        // In a user namespace the container's root is host uid `base`: it
        // owns the rootfs's own layer (so `/` is root's) and its /etc files.
        if let Some(r) = cfg.userns {
            for name in ["upper", "hostname", "hosts", "resolv.conf"] {
                let p = dir.join(name);
                std::os::unix::fs::chown(&p, Some(r.base), Some(r.base))
                    .map_err(Self::io(id, "chown", &p))?;
            }
        }
        let seccomp_profile = match &cfg.seccomp {
            Seccomp::Profile { path } => {
                let profile = Profile::load(path).map_err(|e| RuntimeError::Start {
                    id: id.into(),
                    step: "seccomp".into(),
                    message: e.to_string(),
                })?;
                Some(profile)
            }
            Seccomp::Default | Seccomp::Unconfined => None,
        };
        let disk = DiskConfig {
            version: config::CONFIG_VERSION,
            container: cfg.clone(),
            cgroup_parent: self.paths.cgroup_parent.clone(),
            created_at_ms: config::now_ms(),
            seccomp_profile,
        };
        config::write_json(id, &dir.join("config.json"), &disk)?;
        stamps.stamp("runtime.files");
        let cgroup = self.cgroup(id)?;
        cgroup.create(&Limits {
            memory_bytes: cfg.memory_bytes,
            millicpus: cfg.millicpus,
            pids: cfg.pids,
        })?;
        stamps.stamp("runtime.cgroup");
        // Compiled once per profile and capability set, handed to the monitor.
        let filter = self
            .seccomp
            .encoded_for(&disk)
            .map_err(|e| RuntimeError::Start {
                id: id.into(),
                step: "seccomp".into(),
                message: e.to_string(),
            })?;
        stamps.stamp("runtime.seccomp");

        let report = self.spawn_monitor(id, dir, &filter, stamps)?;
        match report {
            MonitorReport { state: Some(_), .. } => Ok(()),
            MonitorReport { error: Some(e), .. } => Err(RuntimeError::Start {
                id: id.into(),
                step: e.step,
                message: e.message,
            }),
            other => Err(RuntimeError::MonitorProtocol {
                id: id.into(),
                output: format!("{other:?}"),
            }),
        }
    }

    /// Starts `monitor_exe monitor_args... <dir>` from a read-only bind mount of
    /// the executable (detached once exec'd), writes the compiled seccomp
    /// `filter` ([`super::seccomp::Filter::encode`]) to its stdin and reads its
    /// one-line report.
    fn spawn_monitor(
        &self,
        id: &str,
        dir: &Path,
        filter: &[u8],
        stamps: &mut Stamps,
    ) -> Result<MonitorReport, RuntimeError> {
        let log = dir.join("monitor.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(Self::io(id, "opening", &log))?;
        let mut args: Vec<std::ffi::OsString> =
            self.paths.monitor_args.iter().map(Into::into).collect();
        args.push(dir.into());
        let mut child = self.spawn_from_ro_mount(
            id,
            &dir.join("monitor.exe"),
            &args,
            (Stdio::piped(), Stdio::piped(), stderr.into()),
            |source| RuntimeError::SpawnMonitor {
                id: id.into(),
                exe: self.paths.monitor_exe.clone(),
                source,
            },
        )?;
        stamps.stamp("runtime.spawned");
        // Less than a pipe's buffer (~13 KiB for the default profile), and
        // the monitor reads it all before it writes anything: no deadlock.
        // A monitor that died early shows in its report, read below.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(filter);
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).map_err(Self::io(
                id,
                "reading the monitor's report from",
                &self.paths.monitor_exe,
            ))?;
        }
        let _ = child.wait();
        stamps.stamp("runtime.report");
        serde_json::from_str(out.trim()).map_err(|_| {
            let log = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
            RuntimeError::MonitorProtocol {
                id: id.into(),
                output: format!("{out}{log}"),
            }
        })
    }
}

/// `chmod` (the container directories are 0700).
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The container's `/etc/hosts`, as Docker writes it: localhost lines, then
/// the hostname mapped to the container's `address` (to 127.0.0.1 and ::1
/// when it has none, i.e. without networking).
fn hosts_file(name: &str, address: Option<std::net::Ipv4Addr>) -> String {
    match address {
        Some(ip) => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n{ip}\t{name}\n"
        ),
        None => format!(
            "127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost ip6-loopback {name}\n"
        ),
    }
}

/// The container's `/etc/resolv.conf` from the host's (`host`).
///
/// With `dns_server` (berth-dns on the bridge gateway), as Docker writes it
/// for its embedded DNS: that one nameserver, the host's `search`/`domain`
/// and `options` lines, and `options ndots:0` unless the host sets ndots (so
/// a service name is asked as is, first). Without, the host's file minus
/// loopback nameservers (unreachable from the container's netns).
fn resolv_conf(host: &str, dns_server: Option<std::net::Ipv4Addr>) -> String {
    let keyword = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    match dns_server {
        Some(server) => {
            let mut out = format!(
                "# berth: service names resolve through berth-dns on the bridge gateway\nnameserver {server}\n"
            );
            for l in host.lines() {
                if matches!(keyword(l).as_str(), "search" | "domain" | "options") {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            let has_ndots = host
                .lines()
                .filter(|l| keyword(l) == "options")
                .any(|l| l.split_whitespace().any(|o| o.starts_with("ndots:")));
            if !has_ndots {
                out.push_str("options ndots:0\n");
            }
            out
        }
        None => host
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                !(w.next() == Some("nameserver")
                    && w.next()
                        .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
            })
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_at_berth_dns_or_keeps_the_host_resolvers() {
        let host = "# host\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0 trust-ad\n";
        let gw = "10.89.0.1".parse().ok();
        let cases: &[(&str, Option<std::net::Ipv4Addr>, &str)] = &[
            (
                host,
                gw,
                "# berth: service names resolve through berth-dns on the bridge gateway\n\
                 nameserver 10.89.0.1\nsearch corp.example\noptions edns0 trust-ad\noptions ndots:0\n",
            ),
            (
                "nameserver 192.0.2.1\noptions ndots:2\n",
                gw,
                "# berth: service names resolve through berth-dns on the bridge gateway\n\
                 nameserver 10.89.0.1\noptions ndots:2\n",
            ),
            (
                host,
                None,
                "# host\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0 trust-ad\n",
            ),
        ];
        for (host, server, want) in cases {
            assert_eq!(&resolv_conf(host, *server), want, "{host:?} {server:?}");
        }
    }

    #[test]
    fn hosts_maps_the_hostname_to_the_container_address() {
        let with = hosts_file("web-1", "10.89.0.7".parse().ok());
        assert!(
            with.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        assert!(with.ends_with("\n10.89.0.7\tweb-1\n"), "{with}");
        assert!(!with.contains("127.0.0.1\tlocalhost web-1"));
        let without = hosts_file("web-1", None);
        assert_eq!(
            without,
            "127.0.0.1\tlocalhost web-1\n::1\tlocalhost ip6-localhost ip6-loopback web-1\n"
        );
    }
}
