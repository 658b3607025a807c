//! Spec identity: the versioned, canonical form of everything a container runs
//! with. Whether a container must be replaced is decided by comparing the fields
//! of its stored spec with the desired one, after upgrading the stored form to
//! the current version, so a new `berthd` never replaces a container whose
//! manifest did not change. Policies applied by the agent (replicas, health,
//! restart, update, pull, stop_timeout) are not part of it. `tests/upgrade.rs`
//! holds every release's stored specs (`tests/fixtures/upgrade/`) to that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::image_ref::Digest;
use crate::manifest::{Port, Protocol, SeccompProfile, Secret, Service, UsernsMode, Volume};

/// The version written into every spec this build stores.
///
/// | version | change |
/// |---|---|
/// | 1 | first form: `command` replaced Entrypoint+Cmd; one published `port` |
/// | 2 | `entrypoint` + `command` as Compose (command replaces Cmd only); `ports` list; `sysctls`; `init` |
pub const SPEC_VERSION: u32 = 2;

/// Why a stored spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("stored spec has version {found}; this berthd understands up to {SPEC_VERSION}")]
    FutureVersion { found: u32 },
    #[error("stored spec is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Everything a container is created with. Field order is the canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub version: u32,
    /// `registry/repo@sha256:…` once resolved; the reference as written before.
    pub image: String,
    /// Replaces the image's Entrypoint and clears its Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd only.
    pub command: Option<Vec<String>>,
    /// `env_file` merged in, `env` winning.
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub readonly_rootfs: bool,
    /// The manifest's `stop_signal`, `SIGTERM` when it sets none (the form
    /// every version stored). The signal a replica is stopped with is resolved
    /// when it starts — the manifest's, else the image's `StopSignal`, else
    /// SIGTERM — and kept with the container; so writing `SIGTERM` where
    /// nothing was written does not replace replicas (they keep the signal
    /// they started with until they are replaced for another reason).
    pub stop_signal: String,
    pub memory_bytes: Option<u64>,
    pub millicpus: Option<u32>,
    pub pids: Option<u32>,
    pub sysctls: BTreeMap<String, String>,
    pub init: bool,
    /// Sorted; container-only ports included.
    pub ports: Vec<Port>,
    /// Sorted; `shared` is a policy and always `false` here.
    pub volumes: Vec<Volume>,
    pub secrets: Vec<Secret>,
    /// Capabilities added and dropped (normalized, sorted). Like every field
    /// added after version 2, left out of the stored form while empty, so
    /// specs stored before it compare equal and keep their hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// The seccomp profile; left out while `default`. For a profile file,
    /// its path: a changed file content takes effect as replicas are replaced.
    #[serde(default, skip_serializing_if = "SeccompProfile::is_default")]
    pub seccomp: SeccompProfile,
    /// The user namespace mode; left out while `auto` (the default).
    #[serde(default, skip_serializing_if = "UsernsMode::is_default")]
    pub userns: UsernsMode,
    /// How many times `berthctl restart` asked for the service's replicas to
    /// be replaced (the agent's count, not the manifest's): a new value makes
    /// running replicas out of date. Left out of the stored form while 0, so
    /// specs stored before it compare equal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ContainerSpec {
    /// The desired spec of a service. `digest` is the resolved image digest (when
    /// known) and `env_file` the pairs read from its env file.
    pub fn for_service(
        service: &Service,
        digest: Option<&Digest>,
        env_file: &[(String, String)],
    ) -> Self {
        let image = match (digest, &service.image.digest) {
            (Some(d), _) | (None, Some(d)) => format!("{}@{d}", service.image.name()),
            (None, None) => service.image.to_string(),
        };
        let mut env: BTreeMap<String, String> = env_file.iter().cloned().collect();
        env.extend(service.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut volumes: Vec<Volume> = service
            .volumes
            .iter()
            .map(|v| Volume {
                shared: false,
                ..v.clone()
            })
            .collect();
        volumes.sort();
        let mut ports = service.ports.clone();
        ports.sort();
        let mut secrets = service.secrets.clone();
        secrets.sort();
        ContainerSpec {
            version: SPEC_VERSION,
            image,
            entrypoint: service.entrypoint.clone(),
            command: service.command.clone(),
            env,
            workdir: service.workdir.clone(),
            user: service.user.clone(),
            readonly_rootfs: service.readonly_rootfs,
            stop_signal: service
                .stop_signal
                .as_ref()
                .map_or_else(|| "SIGTERM".to_string(), |s| s.name.clone()),
            memory_bytes: service.resources.memory_bytes,
            millicpus: service.resources.millicpus,
            pids: service.resources.pids,
            sysctls: service.sysctls.clone(),
            init: service.init,
            ports,
            volumes,
            secrets,
            cap_add: service.cap_add.clone(),
            cap_drop: service.cap_drop.clone(),
            seccomp: service.seccomp.clone(),
            userns: service.userns,
            restart_generation: 0,
        }
    }

    /// Reads a stored spec of any version this build knows, upgraded to the
    /// current version (new fields get the value that means "as before").
    pub fn from_stored(value: &serde_json::Value) -> Result<Self, SpecError> {
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found > SPEC_VERSION {
            return Err(SpecError::FutureVersion { found });
        }
        let mut value = value.clone();
        if found <= 1 {
            upgrade_v1(&mut value)?;
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The canonical JSON text (stable field order, sorted maps).
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A short hash of the canonical form, for labels and display only;
    /// replacement decisions use [`ContainerSpec::changed_fields`].
    pub fn short_hash(&self) -> String {
        hex::encode(&sha2::Sha256::digest(self.canonical_json().as_bytes())[..8])
    }

    /// The fields that differ between `self` (running) and `desired`, by name.
    /// Empty means the container may stay.
    pub fn changed_fields(&self, desired: &ContainerSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($field:ident),*) => {$(
                if self.$field != desired.$field { out.push(stringify!($field)); }
            )*};
        }
        cmp!(
            image,
            entrypoint,
            command,
            env,
            workdir,
            user,
            readonly_rootfs,
            stop_signal,
            memory_bytes,
            millicpus,
            pids,
            sysctls,
            init,
            ports,
            volumes,
            secrets,
            cap_add,
            cap_drop,
            seccomp,
            userns,
            restart_generation
        );
        out
    }
}

/// Version 1 → 2, keeping what the container runs: its `command` was the whole
/// argv (image Entrypoint and Cmd replaced), which version 2 writes as an
/// `entrypoint` with no `command`; its one `port` was TCP on every address.
fn upgrade_v1(value: &mut serde_json::Value) -> Result<(), SpecError> {
    let obj = value.as_object_mut().ok_or_else(|| {
        SpecError::Malformed(serde::de::Error::custom("stored spec is not an object"))
    })?;
    let command = obj.remove("command").unwrap_or(serde_json::Value::Null);
    obj.insert("entrypoint".into(), command);
    obj.insert("command".into(), serde_json::Value::Null);
    let ports = match obj.remove("port") {
        Some(serde_json::Value::Object(p)) => {
            let field = |k: &str| {
                p.get(k)
                    .and_then(|v| v.as_u64())
                    .and_then(|n| u16::try_from(n).ok())
            };
            match (field("container"), field("host")) {
                (Some(container), Some(host)) => vec![Port {
                    container,
                    host: Some(host),
                    host_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    protocol: Protocol::Tcp,
                }],
                _ => {
                    return Err(SpecError::Malformed(serde::de::Error::custom(
                        "version 1 `port` lacks container or host",
                    )))
                }
            }
        }
        _ => Vec::new(),
    };
    obj.insert("ports".into(), serde_json::to_value(ports)?);
    obj.insert(
        "sysctls".into(),
        serde_json::Value::Object(Default::default()),
    );
    obj.insert("init".into(), serde_json::Value::Bool(false));
    obj.insert("version".into(), SPEC_VERSION.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::Manifest;

    fn spec(extra: &str) -> ContainerSpec {
        let m = Manifest::from_str_named(
            "m.toml",
            &format!("[service.web]\nimage = \"busybox:1\"\n{extra}"),
        )
        .unwrap();
        ContainerSpec::for_service(&m.services["web"], None, &[])
    }

    #[test]
    fn replicas_and_policies_do_not_change_identity() {
        let base = spec("");
        for extra in [
            "replicas = 5",
            "stop_timeout = \"30s\"",
            "[service.web.health]\ntcp = { port = 80 }",
            "[service.web.restart]\npolicy = \"never\"",
            "[service.web.update]\nstrategy = \"stop-first\"",
            "[service.web.pull]\ncheck = \"1m\"",
            "depends_on = []",
        ] {
            assert_eq!(
                base.changed_fields(&spec(extra)),
                Vec::<&str>::new(),
                "{extra}"
            );
            assert_eq!(base.short_hash(), spec(extra).short_hash(), "{extra}");
        }
    }

    #[test]
    fn a_volume_marked_shared_is_the_same_container() {
        let vol = "[[service.web.volumes]]\nname = \"v\"\ntarget = \"/v\"\n";
        let a = spec(vol);
        let b = spec(&format!("{vol}shared = true\n"));
        assert_eq!(a.changed_fields(&b), Vec::<&str>::new());
    }

    #[test]
    fn version_1_specs_upgrade_to_what_the_container_runs() {
        let v1 = serde_json::json!({
            "version": 1, "image": "docker.io/library/busybox:1",
            "command": ["/bin/httpd", "-f"], "env": {}, "workdir": null, "user": null,
            "readonly_rootfs": false, "stop_signal": "SIGTERM", "memory_bytes": null,
            "millicpus": null, "pids": null, "port": {"container": 80, "host": 8080},
            "volumes": [{"source": {"named": "d"}, "target": "/d", "readonly": false}],
            "secrets": []
        });
        let up = ContainerSpec::from_stored(&v1).unwrap();
        assert_eq!(up.version, SPEC_VERSION);
        assert_eq!(
            up.entrypoint,
            Some(vec!["/bin/httpd".to_string(), "-f".to_string()])
        );
        assert_eq!(up.command, None);
        assert_eq!(up.ports[0].host, Some(8080));
        assert_eq!(up.ports[0].protocol, Protocol::Tcp);
        assert!(up.ports[0].host_ip.is_unspecified());
        // The same manifest text now means "image Entrypoint + these args".
        let now = spec("command = [\"/bin/httpd\", \"-f\"]\nport = { container = 80, host = 8080 }\n[[service.web.volumes]]\nname = \"d\"\ntarget = \"/d\"");
        assert_eq!(up.changed_fields(&now), vec!["entrypoint", "command"]);
        // Without a command, nothing but the version differs.
        let mut plain = v1.clone();
        plain["command"] = serde_json::Value::Null;
        let up = ContainerSpec::from_stored(&plain).unwrap();
        let now = spec("port = { container = 80, host = 8080 }\n[[service.web.volumes]]\nname = \"d\"\ntarget = \"/d\"");
        assert_eq!(up.changed_fields(&now), Vec::<&str>::new());
    }

    #[test]
    fn what_a_container_runs_changes_identity() {
        let base = spec("");
        let cases = [
            ("command = [\"/bin/sh\"]", "command"),
            ("env = { A = \"1\" }", "env"),
            ("workdir = \"/srv\"", "workdir"),
            ("user = \"1000\"", "user"),
            ("readonly_rootfs = true", "readonly_rootfs"),
            ("stop_signal = \"SIGINT\"", "stop_signal"),
            ("[service.web.resources]\nmemory = \"64Mi\"", "memory_bytes"),
            ("[service.web.resources]\ncpus = 1.5", "millicpus"),
            ("[service.web.resources]\npids = 10", "pids"),
            ("port = { container = 80, host = 8080 }", "ports"),
            ("[[service.web.ports]]\ncontainer = 80", "ports"),
            ("entrypoint = [\"/bin/sh\"]", "entrypoint"),
            ("sysctls = { \"net.core.somaxconn\" = 1024 }", "sysctls"),
            ("init = true", "init"),
            (
                "[[service.web.volumes]]\nname = \"v\"\ntarget = \"/v\"",
                "volumes",
            ),
            (
                "[[service.web.secrets]]\nsource = \"/s\"\ntarget = \"s\"",
                "secrets",
            ),
            ("cap_add = [\"NET_ADMIN\"]", "cap_add"),
            ("cap_drop = [\"CHOWN\"]", "cap_drop"),
            ("seccomp = \"unconfined\"", "seccomp"),
            ("seccomp = \"/etc/berth/p.json\"", "seccomp"),
            ("userns = \"host\"", "userns"),
        ];
        for (extra, field) in cases {
            let changed = base.changed_fields(&spec(extra));
            assert_eq!(changed, vec![field], "{extra}");
            assert_ne!(base.short_hash(), spec(extra).short_hash());
        }
        let m =
            Manifest::from_str_named("m.toml", "[service.web]\nimage = \"busybox:2\"\n").unwrap();
        let other = ContainerSpec::for_service(&m.services["web"], None, &[]);
        assert_eq!(base.changed_fields(&other), vec!["image"]);
    }

    #[test]
    fn resolved_digest_pins_the_image_and_env_wins_over_env_file() {
        let m = Manifest::from_str_named(
            "m.toml",
            "[service.web]\nimage = \"busybox:1\"\nenv = { A = \"manifest\" }\n",
        )
        .unwrap();
        let d = Digest::sha256_of(b"x");
        let s = ContainerSpec::for_service(
            &m.services["web"],
            Some(&d),
            &[("A".into(), "file".into()), ("B".into(), "file".into())],
        );
        assert_eq!(s.image, format!("docker.io/library/busybox@{d}"));
        assert_eq!(s.env["A"], "manifest");
        assert_eq!(s.env["B"], "file");
    }

    #[test]
    fn stored_specs_round_trip_and_future_versions_are_refused() {
        let s = spec("env = { A = \"1\" }");
        let stored: serde_json::Value = serde_json::from_str(&s.canonical_json()).unwrap();
        assert_eq!(ContainerSpec::from_stored(&stored).unwrap(), s);
        let mut future = stored.clone();
        future["version"] = 99.into();
        assert!(matches!(
            ContainerSpec::from_stored(&future),
            Err(SpecError::FutureVersion { found: 99 })
        ));
    }

    #[test]
    fn security_fields_are_absent_while_default_so_stored_specs_keep_their_hash() {
        let s = spec("");
        let text = s.canonical_json();
        for key in ["cap_add", "cap_drop", "seccomp", "userns"] {
            assert!(!text.contains(key), "{text}");
        }
        // Writing the defaults out is the same container.
        let same = spec("cap_add = []\ncap_drop = []\nseccomp = \"default\"\nuserns = \"auto\"");
        assert_eq!(s.changed_fields(&same), Vec::<&str>::new());
        assert_eq!(s.short_hash(), same.short_hash());
        // Order, case and the CAP_ prefix do not matter.
        let a = spec("cap_add = [\"NET_ADMIN\", \"sys_time\"]");
        let b = spec("cap_add = [\"CAP_SYS_TIME\", \"net_admin\", \"NET_ADMIN\"]");
        assert_eq!(a.changed_fields(&b), Vec::<&str>::new());
        assert_eq!(a.cap_add, ["NET_ADMIN", "SYS_TIME"]);
        // A stored form with them reads back.
        let c = spec("cap_drop = [\"ALL\"]\nseccomp = \"/p.json\"");
        let stored: serde_json::Value = serde_json::from_str(&c.canonical_json()).unwrap();
        assert_eq!(stored["seccomp"], "/p.json");
        assert_eq!(ContainerSpec::from_stored(&stored).unwrap(), c);
    }

    #[test]
    fn restart_generation_replaces_and_is_absent_while_zero() {
        let s = spec("");
        assert!(!s.canonical_json().contains("restart_generation"));
        let mut r = s.clone();
        r.restart_generation = 1;
        assert_eq!(s.changed_fields(&r), vec!["restart_generation"]);
        let stored: serde_json::Value = serde_json::from_str(&r.canonical_json()).unwrap();
        assert_eq!(ContainerSpec::from_stored(&stored).unwrap(), r);
    }

    #[test]
    fn canonical_form_is_stable() {
        // A change to this text means stored specs no longer compare equal:
        // bump SPEC_VERSION and add an upgrade step instead (the upgrade
        // tests in tests/upgrade.rs fail on what a release stored).
        let s = spec("");
        assert_eq!(
            s.canonical_json(),
            r#"{"version":2,"image":"docker.io/library/busybox:1","entrypoint":null,"command":null,"env":{},"workdir":null,"user":null,"readonly_rootfs":false,"stop_signal":"SIGTERM","memory_bytes":null,"millicpus":null,"pids":null,"sysctls":{},"init":false,"ports":[],"volumes":[],"secrets":[]}"#
        );
    }
}
