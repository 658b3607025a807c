//! Wire types: one service exactly as written, with source spans on every
//! value so validation can point at file:line:col. `lenient` reads a file
//! into these (unknown keys reported and set aside first, so
//! `deny_unknown_fields` is only a safety net); `validate` checks the rest.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireService {
    pub image: Option<Spanned<String>>,
    pub replicas: Option<Spanned<i64>>,
    pub entrypoint: Option<Spanned<Vec<Spanned<String>>>>,
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub env_file: Option<Spanned<String>>,
    pub workdir: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub readonly_rootfs: Option<bool>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub sysctls: Option<Spanned<BTreeMap<Spanned<String>, Spanned<WireScalar>>>>,
    pub depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    pub init: Option<bool>,
    pub cap_add: Option<Spanned<Vec<Spanned<String>>>>,
    pub cap_drop: Option<Spanned<Vec<Spanned<String>>>>,
    pub seccomp: Option<Spanned<String>>,
    pub userns: Option<Spanned<String>>,
    pub resources: Option<WireResources>,
    pub port: Option<Spanned<WirePort>>,
    pub ports: Option<Spanned<Vec<Spanned<WirePorts>>>>,
    pub health: Option<Spanned<WireHealth>>,
    pub update: Option<Spanned<WireUpdate>>,
    pub restart: Option<WireRestart>,
    pub volumes: Option<Spanned<Vec<Spanned<WireVolume>>>>,
    pub secrets: Option<Spanned<Vec<Spanned<WireSecret>>>>,
    pub pull: Option<WirePull>,
}

/// The `[fleet]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireFleet {
    pub max_parallel: Option<Spanned<i64>>,
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub bake: Option<Spanned<String>>,
    pub auto_revert: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireResources {
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
    pub pids: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WirePort {
    pub container: Spanned<i64>,
    pub host: Spanned<i64>,
}

/// One entry of `[[service.X.ports]]` (Compose's long form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WirePorts {
    pub container: Spanned<i64>,
    pub host: Option<Spanned<i64>>,
    pub host_ip: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
}

/// A sysctl value as written: a string, or a number Compose users write bare.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum WireScalar {
    Text(String),
    Int(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireHealth {
    pub http: Option<Spanned<WireHttpCheck>>,
    pub tcp: Option<Spanned<WireTcpCheck>>,
    pub exec: Option<Spanned<Vec<Spanned<String>>>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub start_period: Option<Spanned<String>>,
    pub on_unhealthy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireHttpCheck {
    pub port: Spanned<i64>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireTcpCheck {
    pub port: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireUpdate {
    pub strategy: Option<Spanned<String>>,
    pub max_surge: Option<Spanned<i64>>,
    pub max_unavailable: Option<Spanned<i64>>,
    pub rollback_on_failure: Option<bool>,
    pub drain: Option<Spanned<String>>,
    pub probation: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireRestart {
    pub policy: Option<Spanned<String>>,
    pub backoff: Option<Spanned<WireBackoff>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireBackoff {
    pub initial: Option<Spanned<String>>,
    pub max: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireVolume {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub tmpfs: Option<Spanned<String>>,
    pub target: Spanned<String>,
    pub readonly: Option<bool>,
    pub shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireSecret {
    pub source: Spanned<String>,
    pub target: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WirePull {
    pub policy: Option<Spanned<String>>,
    pub check: Option<Spanned<String>>,
}
