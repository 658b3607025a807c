//! Agent configuration: the TOML config file and the command-line flags of
//! SPEC, merged (a flag wins over the file, the file over the default) into one
//! validated `AgentConfig`. Every path is injected from here, so tests run the
//! agent on temp dirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/berth/agent.toml";

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("--api `{0}`: expected unix:PATH or tcp:ADDR:PORT")]
    BadApi(String),
    #[error(
        "--api tcp:{0} needs --api-token-file or --api-tls-client-ca: the TCP API is never served without a bearer token or client certificates"
    )]
    TcpWithoutToken(SocketAddr),
    #[error(
        "--api tcp:{0} serves HTTPS: give --api-tls-cert and --api-tls-key (or --api-insecure for plain HTTP, which sends the token and manifests in clear text)"
    )]
    TcpWithoutTls(SocketAddr),
    #[error("--api-insecure needs --api-token-file: client certificates need TLS")]
    InsecureWithoutToken,
    #[error("{0}")]
    TlsFlags(&'static str),
    /// The `--fleet-*` flags do not fit together.
    #[error("{0}")]
    Fleet(&'static str),
    #[error("cannot read token file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    TokenEmpty(PathBuf),
    #[error("--http `{0}` is not an ADDR:PORT")]
    BadHttp(String),
    #[error("--subnet `{0}` is not an IPv4 CIDR like 10.89.0.0/16")]
    BadSubnet(String),
    #[error("{0} are both set: an agent follows at most one manifest source")]
    ConflictingSources(String),
    #[error("--userns-range: {0}")]
    UsernsRange(String),
    #[error("{what} `{value}` is invalid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Where the mutating API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for ApiListen {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ConfigError::BadApi(s.into()));
            }
            Ok(ApiListen::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            addr.parse()
                .map(ApiListen::Tcp)
                .map_err(|_| ConfigError::BadApi(s.into()))
        } else {
            Err(ConfigError::BadApi(s.into()))
        }
    }
}

/// Values as the file or flags give them; all optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub api: Option<Vec<String>>,
    pub api_token_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first) the TCP API serves HTTPS with.
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `api_tls_cert`.
    pub api_tls_key: Option<PathBuf>,
    /// PEM CA certificates; when set, TCP API clients must present a
    /// certificate they signed (mTLS).
    pub api_tls_client_ca: Option<PathBuf>,
    /// Serve the TCP API as plain HTTP (bearer token still required).
    pub api_insecure: Option<bool>,
    pub http: Option<String>,
    pub manifests: Option<PathBuf>,
    pub manifest_url: Option<String>,
    pub git: Option<String>,
    pub git_ref: Option<String>,
    pub git_path: Option<String>,
    /// How often a `--manifest-url` or `--git` source is polled, e.g. `"30s"`.
    pub manifest_poll_interval: Option<String>,
    /// How often the state filesystem's usage is checked (automatic image
    /// GC above 90% used), e.g. `"10s"`.
    pub disk_check_interval: Option<String>,
    pub registry_config: Option<PathBuf>,
    /// The host address a published port binds when the manifest names
    /// none (`host_ip` left out, or `0.0.0.0`); default every address.
    /// Docker's `dockerd --ip`.
    pub publish_ip: Option<String>,
    pub subnet: Option<String>,
    pub bridge: Option<String>,
    pub cgroup_parent: Option<String>,
    /// Upstream resolvers of berth-dns (`ADDR` or `ADDR:PORT`); default: the
    /// host's /etc/resolv.conf.
    pub dns_upstream: Option<Vec<String>>,
    /// The pool of subordinate ids for services' user namespaces,
    /// `START:COUNT` (default `0x10000000:0x10000000`).
    pub userns_range: Option<String>,
    /// Run `userns = "auto"` services in the host's user namespace when the
    /// kernel cannot give them their own (default: they fail to start).
    pub userns_fallback: Option<bool>,
    /// etcd endpoints of the fleet this agent joins (`http://H:P`, `https://H:P`).
    pub fleet_etcd: Option<Vec<String>>,
    /// The fleet's name (its key prefix in etcd).
    pub fleet: Option<String>,
    /// This host's rollout group (default `default`).
    pub fleet_group: Option<String>,
    /// This host's id in the fleet (default: the hostname).
    pub fleet_host: Option<String>,
    /// etcd user (with `fleet_etcd_password_file`).
    pub fleet_etcd_user: Option<String>,
    /// File holding the etcd user's password.
    pub fleet_etcd_password_file: Option<PathBuf>,
    /// PEM CA certificates that sign etcd's server certificate.
    pub fleet_etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (mTLS).
    pub fleet_etcd_cert: Option<PathBuf>,
    /// PEM private key of `fleet_etcd_cert`.
    pub fleet_etcd_key: Option<PathBuf>,
    /// Rollout policy defaults; a manifest's `[fleet]` table wins.
    pub fleet_max_parallel: Option<u32>,
    pub fleet_groups: Option<Vec<String>>,
    pub fleet_bake: Option<String>,
    pub fleet_auto_revert: Option<bool>,
    /// How often the host record, slot and halts are checked, e.g. `"2s"`.
    pub fleet_interval: Option<String>,
    /// TTL of the agent's etcd lease, e.g. `"10s"`.
    pub fleet_lease_ttl: Option<String>,
}

impl ConfigLayer {
    /// Reads a config file. A missing file is fine only for the default path.
    pub fn from_file(path: &Path, required: bool) -> Result<ConfigLayer, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(ConfigLayer::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            ConfigError::Parse {
                path: path.into(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }

    /// `self` with every value `over` sets replacing it.
    pub fn overlay(self, over: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            state_dir: over.state_dir.or(self.state_dir),
            run_dir: over.run_dir.or(self.run_dir),
            api: over.api.or(self.api),
            api_token_file: over.api_token_file.or(self.api_token_file),
            api_tls_cert: over.api_tls_cert.or(self.api_tls_cert),
            api_tls_key: over.api_tls_key.or(self.api_tls_key),
            api_tls_client_ca: over.api_tls_client_ca.or(self.api_tls_client_ca),
            api_insecure: over.api_insecure.or(self.api_insecure),
            http: over.http.or(self.http),
            manifests: over.manifests.or(self.manifests),
            manifest_url: over.manifest_url.or(self.manifest_url),
            git: over.git.or(self.git),
            git_ref: over.git_ref.or(self.git_ref),
            git_path: over.git_path.or(self.git_path),
            manifest_poll_interval: over.manifest_poll_interval.or(self.manifest_poll_interval),
            disk_check_interval: over.disk_check_interval.or(self.disk_check_interval),
            registry_config: over.registry_config.or(self.registry_config),
            publish_ip: over.publish_ip.or(self.publish_ip),
            subnet: over.subnet.or(self.subnet),
            bridge: over.bridge.or(self.bridge),
            cgroup_parent: over.cgroup_parent.or(self.cgroup_parent),
            dns_upstream: over.dns_upstream.or(self.dns_upstream),
            userns_range: over.userns_range.or(self.userns_range),
            userns_fallback: over.userns_fallback.or(self.userns_fallback),
            fleet_etcd: over.fleet_etcd.or(self.fleet_etcd),
            fleet: over.fleet.or(self.fleet),
            fleet_group: over.fleet_group.or(self.fleet_group),
            fleet_host: over.fleet_host.or(self.fleet_host),
            fleet_etcd_user: over.fleet_etcd_user.or(self.fleet_etcd_user),
            fleet_etcd_password_file: over
                .fleet_etcd_password_file
                .or(self.fleet_etcd_password_file),
            fleet_etcd_ca: over.fleet_etcd_ca.or(self.fleet_etcd_ca),
            fleet_etcd_cert: over.fleet_etcd_cert.or(self.fleet_etcd_cert),
            fleet_etcd_key: over.fleet_etcd_key.or(self.fleet_etcd_key),
            fleet_max_parallel: over.fleet_max_parallel.or(self.fleet_max_parallel),
            fleet_groups: over.fleet_groups.or(self.fleet_groups),
            fleet_bake: over.fleet_bake.or(self.fleet_bake),
            fleet_auto_revert: over.fleet_auto_revert.or(self.fleet_auto_revert),
            fleet_interval: over.fleet_interval.or(self.fleet_interval),
            fleet_lease_ttl: over.fleet_lease_ttl.or(self.fleet_lease_ttl),
        }
    }
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub api: Vec<ApiListen>,
    /// The bearer token for TCP API listeners (read from --api-token-file).
    pub api_token: Option<String>,
    /// How TCP API listeners speak: HTTPS with these files, or plain HTTP
    /// (`None`, only with `--api-insecure`). Unused without a TCP listener.
    pub api_tls: Option<ApiTls>,
    pub http: SocketAddr,
    /// Where the manifest comes from when it is not applied through the API.
    pub source: Option<ManifestSource>,
    /// Poll interval of the URL and git sources (also the directory rescan).
    pub manifest_poll_interval: Duration,
    /// How often the state filesystem's usage is checked: automatic GC
    /// when it is fuller than `control::images::AUTO_GC_USED_FRACTION`.
    pub disk_check_interval: Duration,
    pub registry_config: Option<PathBuf>,
    /// Docker's `config.json` (credentials and credential helpers), when
    /// there is one: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`. The binary reads the environment
    /// ([`docker_config_from_env`]); the agent only this field.
    pub docker_config: Option<PathBuf>,
    /// See [`ConfigLayer::publish_ip`]; `0.0.0.0` by default.
    pub publish_ip: std::net::Ipv4Addr,
    pub subnet: (std::net::Ipv4Addr, u8),
    pub bridge: String,
    pub cgroup_parent: String,
    /// Upstream resolvers of berth-dns; empty: the host's /etc/resolv.conf.
    pub dns_upstream: Vec<SocketAddr>,
    /// Subordinate ids for services' user namespaces (65536 per service).
    pub userns_pool: crate::runtime::userns::Pool,
    /// See [`ConfigLayer::userns_fallback`].
    pub userns_fallback: bool,
    /// The fleet this agent joins (`--fleet-etcd`); `None`: a lone host,
    /// manifests apply as they come.
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl AgentConfig {
    /// Validates a merged layer, filling in SPEC's defaults.
    pub fn from_layer(layer: ConfigLayer) -> Result<AgentConfig, ConfigError> {
        let fleet = crate::fleet::FleetConfig::from_layer(&layer)?;
        let state_dir = layer.state_dir.unwrap_or_else(|| "/var/lib/berth".into());
        let run_dir = layer.run_dir.unwrap_or_else(|| "/run/berth".into());
        let api_texts = layer.api.unwrap_or_default();
        let mut api = api_texts
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<ApiListen>, _>>()?;
        if api.is_empty() {
            api.push(ApiListen::Unix(run_dir.join("berth.sock")));
        }
        let api_token = match &layer.api_token_file {
            None => None,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::TokenRead {
                        path: path.clone(),
                        source,
                    })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(ConfigError::TokenEmpty(path.clone()));
                }
                Some(token)
            }
        };
        let api_tls = api_tls(
            api.iter().find_map(|a| match a {
                ApiListen::Tcp(addr) => Some(*addr),
                ApiListen::Unix(_) => None,
            }),
            api_token.is_some(),
            layer.api_insecure.unwrap_or(false),
            layer.api_tls_cert,
            layer.api_tls_key,
            layer.api_tls_client_ca,
        )?;
        let http_text = layer.http.unwrap_or_else(|| "127.0.0.1:9480".into());
        let http = http_text
            .parse()
            .map_err(|_| ConfigError::BadHttp(http_text.clone()))?;
        let subnet_text = layer.subnet.unwrap_or_else(|| "10.89.0.0/16".into());
        let subnet = parse_cidr(&subnet_text).ok_or(ConfigError::BadSubnet(subnet_text))?;
        let bridge = layer.bridge.unwrap_or_else(|| "berth0".into());
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Invalid {
                what: "--bridge",
                value: bridge,
                why: "1-15 of [A-Za-z0-9_-]",
            });
        }
        let sources: Vec<&str> = [
            layer.manifests.as_ref().map(|_| "--manifests"),
            layer.manifest_url.as_ref().map(|_| "--manifest-url"),
            layer.git.as_ref().map(|_| "--git"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(ConfigError::ConflictingSources(sources.join(" and ")));
        }
        if let Some(url) = &layer.manifest_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    what: "--manifest-url",
                    value: url.clone(),
                    why: "expected an http:// or https:// URL",
                });
            }
        }
        if let Some(repo) = &layer.git {
            if repo.is_empty() || repo.starts_with('-') {
                return Err(ConfigError::Invalid {
                    what: "--git",
                    value: repo.clone(),
                    why: "expected a repository URL or path",
                });
            }
        }
        let git_ref = layer.git_ref.unwrap_or_else(|| "main".into());
        if git_ref.is_empty()
            || git_ref.starts_with('-')
            || git_ref.contains("..")
            || git_ref.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::Invalid {
                what: "--git-ref",
                value: git_ref,
                why: "a branch, tag or commit name",
            });
        }
        let git_path = layer.git_path.unwrap_or_else(|| "manifests/".into());
        if git_path.starts_with('/') || git_path.split('/').any(|c| c == "..") {
            return Err(ConfigError::Invalid {
                what: "--git-path",
                value: git_path,
                why: "a path inside the repository, without `..`",
            });
        }
        let poll_text = layer.manifest_poll_interval.unwrap_or_else(|| "30s".into());
        let manifest_poll_interval = match berth_core::units::parse_duration(&poll_text) {
            Ok(d) if d >= Duration::from_millis(50) => d,
            _ => {
                return Err(ConfigError::Invalid {
                    what: "--manifest-poll-interval",
                    value: poll_text,
                    why: "a duration of at least 50ms, like \"30s\"",
                })
            }
        };
        let disk_text = layer.disk_check_interval.unwrap_or_else(|| "10s".into());
        let disk_check_interval = match berth_core::units::parse_duration(&disk_text) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            _ => {
                return Err(ConfigError::Invalid {
                    what: "--disk-check-interval",
                    value: disk_text,
                    why: "a duration of at least 100ms, like \"10s\"",
                })
            }
        };
        let publish_ip = match layer.publish_ip {
            None => std::net::Ipv4Addr::UNSPECIFIED,
            Some(text) => text.parse().map_err(|_| ConfigError::Invalid {
                what: "--publish-ip",
                value: text,
                why: "an IPv4 address of this host, like 192.0.2.11",
            })?,
        };
        let cgroup_parent = layer.cgroup_parent.unwrap_or_else(|| "berth".into());
        if cgroup_parent.is_empty()
            || cgroup_parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ConfigError::Invalid {
                what: "--cgroup-parent",
                value: cgroup_parent,
                why: "a relative cgroup path without `..`",
            });
        }
        let dns_upstream = layer
            .dns_upstream
            .unwrap_or_default()
            .into_iter()
            .map(|text| {
                text.parse::<SocketAddr>()
                    .or_else(|_| {
                        text.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| ConfigError::Invalid {
                        what: "--dns-upstream",
                        value: text,
                        why: "an IP address, optionally with :PORT",
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let userns_pool = match &layer.userns_range {
            None => crate::runtime::userns::Pool::default(),
            Some(text) => text
                .parse()
                .map_err(|e: crate::runtime::userns::UsernsError| {
                    ConfigError::UsernsRange(e.to_string())
                })?,
        };
        Ok(AgentConfig {
            state_dir,
            run_dir,
            api,
            api_token,
            api_tls,
            http,
            source: match (layer.manifests, layer.manifest_url, layer.git) {
                (Some(path), _, _) => Some(ManifestSource::Dir(path)),
                (_, Some(url), _) => Some(ManifestSource::Url(url)),
                (_, _, Some(repo)) => Some(ManifestSource::Git {
                    repo,
                    reference: git_ref,
                    path: git_path,
                }),
                _ => None,
            },
            manifest_poll_interval,
            disk_check_interval,
            registry_config: layer.registry_config,
            docker_config: None,
            publish_ip,
            subnet,
            bridge,
            cgroup_parent,
            dns_upstream,
            userns_pool,
            userns_fallback: layer.userns_fallback.unwrap_or(false),
            fleet,
        })
    }
}

/// The files of the TCP API's HTTPS (PEM; read when the agent starts, see
/// `crate::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (mTLS); `None`:
    /// no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Decides how TCP API listeners are secured. `tcp` is the first TCP
/// listener, if any. HTTPS needs a certificate and key; plain HTTP needs
/// `--api-insecure`, and a token. Clients authenticate with the bearer
/// token, a client certificate (`--api-tls-client-ca`), or both; never with
/// neither. TLS files without a TCP listener, or with `--api-insecure`, are
/// refused as the mistakes they are.
fn api_tls(
    tcp: Option<SocketAddr>,
    has_token: bool,
    insecure: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<ApiTls>, ConfigError> {
    let any_tls = cert.is_some() || key.is_some() || client_ca.is_some();
    let Some(addr) = tcp else {
        if any_tls || insecure {
            return Err(ConfigError::TlsFlags(
                "--api-tls-* and --api-insecure apply to a tcp: API listener, and there is none",
            ));
        }
        return Ok(None);
    };
    if insecure {
        if any_tls {
            return Err(ConfigError::TlsFlags(
                "--api-insecure and --api-tls-* exclude each other: plain HTTP or HTTPS",
            ));
        }
        if !has_token {
            return Err(ConfigError::InsecureWithoutToken);
        }
        return Ok(None);
    }
    match (cert, key) {
        (None, None) => Err(ConfigError::TcpWithoutTls(addr)),
        (Some(_), None) | (None, Some(_)) => Err(ConfigError::TlsFlags(
            "--api-tls-cert and --api-tls-key go together",
        )),
        (Some(cert), Some(key)) => {
            if !has_token && client_ca.is_none() {
                return Err(ConfigError::TcpWithoutToken(addr));
            }
            Ok(Some(ApiTls {
                cert,
                key,
                client_ca,
            }))
        }
    }
}

/// The one manifest source an agent may have (`--manifests`,
/// `--manifest-url` and `--git` exclude each other). While one is set, it
/// alone records revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// A file or directory, watched (`--manifests PATH`).
    Dir(PathBuf),
    /// An http(s) URL, polled with If-None-Match (`--manifest-url URL`).
    Url(String),
    /// A file or directory at `path` in `repo` at `reference` (`--git`,
    /// `--git-ref`, `--git-path`).
    Git {
        repo: String,
        reference: String,
        path: String,
    },
}

impl ManifestSource {
    /// The source in operator terms, e.g. `--git REPO (ref main, path hosts/common)`.
    pub fn describe(&self) -> String {
        match self {
            ManifestSource::Dir(path) => format!("--manifests {}", path.display()),
            ManifestSource::Url(url) => format!("--manifest-url {url}"),
            ManifestSource::Git {
                repo,
                reference,
                path,
            } => format!("--git {repo} (ref {reference}, path {path})"),
        }
    }
}

/// Docker's `config.json` as the Docker CLI finds it:
/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; `None`
/// when that file does not exist. Reads the environment: binaries call it.
pub fn docker_config_from_env() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
        .filter(|p| p.is_file())
}

fn parse_cidr(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (8..=30).contains(&len).then_some((addr, len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_example_agent_toml_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let layer = ConfigLayer::from_file(&path, true).unwrap();
        let example = AgentConfig::from_layer(layer).unwrap();
        let defaults = AgentConfig::from_layer(ConfigLayer::default()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn defaults_follow_spec() {
        let c = AgentConfig::from_layer(ConfigLayer::default()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.api, vec![ApiListen::Unix("/run/berth/berth.sock".into())]);
        assert_eq!(c.http, "127.0.0.1:9480".parse().unwrap());
        assert_eq!(c.bridge, "berth0");
        assert_eq!(c.cgroup_parent, "berth");
        assert_eq!(c.subnet, ("10.89.0.0".parse().unwrap(), 16));
        assert_eq!(c.manifest_poll_interval, Duration::from_secs(30));
        assert_eq!(c.disk_check_interval, Duration::from_secs(10));
        assert_eq!(c.source, None);
        assert_eq!(
            (c.userns_pool.start, c.userns_pool.count, c.userns_fallback),
            (0x1000_0000, 0x1000_0000, false)
        );
        let e = AgentConfig::from_layer(ConfigLayer {
            userns_range: Some("0:65536".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--userns-range: ") && e.contains("host root"),
            "{e}"
        );
        let git = AgentConfig::from_layer(ConfigLayer {
            git: Some("/srv/repo.git".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            git.source,
            Some(ManifestSource::Git {
                repo: "/srv/repo.git".into(),
                reference: "main".into(),
                path: "manifests/".into(),
            })
        );
        assert_eq!(
            git.source.unwrap().describe(),
            "--git /srv/repo.git (ref main, path manifests/)"
        );
    }

    #[test]
    fn publish_ip_is_an_ipv4_address() {
        let c = AgentConfig::from_layer(ConfigLayer {
            publish_ip: Some("192.0.2.11".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.publish_ip, std::net::Ipv4Addr::new(192, 0, 2, 11));
        let default = AgentConfig::from_layer(ConfigLayer::default()).unwrap();
        assert!(default.publish_ip.is_unspecified(), "every address");
        for bad in ["::1", "host.example", "192.0.2.300"] {
            let e = AgentConfig::from_layer(ConfigLayer {
                publish_ip: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("--publish-ip") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn dns_upstreams_default_to_port_53() {
        let c = AgentConfig::from_layer(ConfigLayer {
            dns_upstream: Some(vec!["127.0.0.53".into(), "127.0.0.1:5353".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.dns_upstream,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        let empty = AgentConfig::from_layer(ConfigLayer::default()).unwrap();
        assert!(
            empty.dns_upstream.is_empty(),
            "default: the host's resolv.conf"
        );
    }

    #[test]
    fn tcp_api_requires_a_token() {
        let layer = ConfigLayer {
            api: Some(vec!["tcp:127.0.0.1:9000".into()]),
            api_insecure: Some(true),
            ..Default::default()
        };
        assert!(matches!(
            AgentConfig::from_layer(layer),
            Err(ConfigError::InsecureWithoutToken)
        ));
    }

    /// (tcp listener, token, insecure, cert, key, client CA) → TLS or the error.
    #[test]
    fn how_the_tcp_api_is_secured() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let p = |s: &str| Some(PathBuf::from(s));
        let tls = |ca: Option<PathBuf>| -> Result<Option<ApiTls>, &'static str> {
            Ok(Some(ApiTls {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: ca,
            }))
        };
        type Row = (
            Option<SocketAddr>,
            bool,
            bool,
            Option<PathBuf>,
            Option<PathBuf>,
            Option<PathBuf>,
            Result<Option<ApiTls>, &'static str>,
        );
        let rows: Vec<Row> = vec![
            // No TCP listener: nothing to secure, and TLS flags are a mistake.
            (None, false, false, None, None, None, Ok(None)),
            (
                None,
                true,
                false,
                p("c.pem"),
                p("k.pem"),
                None,
                Err("there is none"),
            ),
            (None, true, true, None, None, None, Err("there is none")),
            // HTTPS with the token, with client certificates, with both.
            (
                Some(addr),
                true,
                false,
                p("c.pem"),
                p("k.pem"),
                None,
                tls(None),
            ),
            (
                Some(addr),
                false,
                false,
                p("c.pem"),
                p("k.pem"),
                p("ca.pem"),
                tls(p("ca.pem")),
            ),
            (
                Some(addr),
                true,
                false,
                p("c.pem"),
                p("k.pem"),
                p("ca.pem"),
                tls(p("ca.pem")),
            ),
            // HTTPS with neither token nor client certificates.
            (
                Some(addr),
                false,
                false,
                p("c.pem"),
                p("k.pem"),
                None,
                Err("needs --api-token-file or --api-tls-client-ca"),
            ),
            // Plain TCP: only when asked for, and with a token.
            (
                Some(addr),
                true,
                false,
                None,
                None,
                None,
                Err("--api-insecure for plain HTTP"),
            ),
            (Some(addr), true, true, None, None, None, Ok(None)),
            (
                Some(addr),
                false,
                true,
                None,
                None,
                None,
                Err("--api-insecure needs --api-token-file"),
            ),
            (
                Some(addr),
                true,
                true,
                p("c.pem"),
                p("k.pem"),
                None,
                Err("exclude each other"),
            ),
            // Half a key pair; a client CA without a server certificate.
            (
                Some(addr),
                true,
                false,
                p("c.pem"),
                None,
                None,
                Err("go together"),
            ),
            (
                Some(addr),
                true,
                false,
                None,
                p("k.pem"),
                None,
                Err("go together"),
            ),
            (
                Some(addr),
                true,
                false,
                None,
                None,
                p("ca.pem"),
                Err("--api-tls-cert and --api-tls-key"),
            ),
        ];
        for (tcp, token, insecure, cert, key, ca, want) in rows {
            let got = api_tls(tcp, token, insecure, cert, key, ca);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
                _ => {
                    panic!("{tcp:?} token={token} insecure={insecure}: got {got:?}, want {want:?}")
                }
            }
        }
    }

    #[test]
    fn flags_win_over_file_and_file_errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "state_dir = \"/srv/berth\"\nbridge = \"br1\"\n").unwrap();
        let file = ConfigLayer::from_file(&path, true).unwrap();
        let flags = ConfigLayer {
            bridge: Some("br2".into()),
            ..Default::default()
        };
        let c = AgentConfig::from_layer(file.overlay(flags)).unwrap();
        assert_eq!(
            (c.state_dir.to_str().unwrap(), c.bridge.as_str()),
            ("/srv/berth", "br2")
        );
        std::fs::write(&path, "state_dir = \"/x\"\nbrigde = \"br1\"\n").unwrap();
        let err = ConfigLayer::from_file(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml:2:1") && err.contains("brigde"),
            "{err}"
        );
        assert!(ConfigLayer::from_file(&dir.path().join("missing.toml"), false).is_ok());
        assert!(ConfigLayer::from_file(&dir.path().join("missing.toml"), true).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for layer in [
            ConfigLayer {
                api: Some(vec!["http://x".into()]),
                ..Default::default()
            },
            ConfigLayer {
                http: Some("localhost".into()),
                ..Default::default()
            },
            ConfigLayer {
                subnet: Some("10.0.0.0/40".into()),
                ..Default::default()
            },
            ConfigLayer {
                bridge: Some("a-very-long-bridge-name".into()),
                ..Default::default()
            },
            ConfigLayer {
                cgroup_parent: Some("../escape".into()),
                ..Default::default()
            },
            ConfigLayer {
                manifests: Some("/srv/m".into()),
                git: Some("https://example.invalid/r.git".into()),
                ..Default::default()
            },
            ConfigLayer {
                manifest_url: Some("ftp://x/m.toml".into()),
                ..Default::default()
            },
            ConfigLayer {
                git: Some("--upload-pack=evil".into()),
                ..Default::default()
            },
            ConfigLayer {
                git: Some("/srv/repo".into()),
                git_ref: Some("--output=x".into()),
                ..Default::default()
            },
            ConfigLayer {
                manifest_poll_interval: Some("soon".into()),
                ..Default::default()
            },
            ConfigLayer {
                dns_upstream: Some(vec!["resolver.example:53".into()]),
                ..Default::default()
            },
        ] {
            assert!(AgentConfig::from_layer(layer).is_err());
        }
    }
}
