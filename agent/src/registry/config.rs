//! Registry settings: the `[[registry]]` TOML of `--registry-config` (host,
//! insecure, username, password_file, mirrors) plus credentials from a Docker
//! `config.json` (`auths`). Decides http vs https per host: loopback registries
//! use plain http, others https unless marked insecure.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use berth_core::image_ref::{host_without_port, DOCKER_HUB, DOCKER_HUB_API};
use serde::Deserialize;

/// Why a registry config or a credential could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("registry config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registry config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("docker config {path}: {reason}")]
    DockerConfig { path: String, reason: String },
    #[error("registry config: entry for `{host}`: {reason}")]
    Invalid { host: String, reason: String },
    /// `detail` names the helper, the config file it came from, and what failed.
    #[error("credential helper for registry `{host}`: {detail}")]
    CredentialHelper { host: String, detail: String },
    #[error("password file {} for registry `{host}`: {source}", path.display())]
    PasswordFile {
        host: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One `[[registry]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// `host[:port]` as written in image references.
    pub host: String,
    /// Speak plain http to this registry (and its mirrors) even if not on loopback.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password; read at each authentication so it may rotate.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Hosts tried, in order, before the registry itself.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

/// A username and password. `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// All registry settings the client needs.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    entries: Vec<RegistryEntry>,
    docker_auths: HashMap<String, Credentials>,
    /// A Docker `config.json` with `credsStore`/`credHelpers`, for helper lookups.
    docker_helpers: Option<DockerHelpers>,
}

/// The credential-helper part of a Docker `config.json`.
#[derive(Debug, Clone)]
struct DockerHelpers {
    /// Where the config came from, for errors.
    source: String,
    /// The whole config text, handed to `docker_credential` as written.
    text: String,
    /// `credHelpers`: normalized host → helper name.
    per_host: HashMap<String, String>,
    /// `credsStore`: the helper for every other registry.
    store: Option<String>,
}

impl DockerHelpers {
    /// Runs the helper that serves `host` (normalized).
    fn get(&self, host: &str) -> Result<Option<Credentials>, ConfigError> {
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        let helper = self
            .per_host
            .get(host)
            .or(self.store.as_ref())
            .cloned()
            .unwrap_or_default();
        let fail = |reason: String| ConfigError::CredentialHelper {
            host: host.to_string(),
            detail: format!(
                "`docker-credential-{helper}` (from {}): {reason}",
                self.source
            ),
        };
        // Helpers key Docker Hub by its legacy index URL, everything else by host.
        let server = if host == DOCKER_HUB {
            "https://index.docker.io/v1/".to_string()
        } else {
            host.to_string()
        };
        // The crate looks hosts up verbatim: hand it a config whose keys are ours.
        let mut config: serde_json::Value =
            serde_json::from_str(&self.text).map_err(|e| fail(e.to_string()))?;
        if let Some(obj) = config.as_object_mut() {
            obj.remove("auths");
            let per_host: serde_json::Map<String, serde_json::Value> = self
                .per_host
                .get(host)
                .map(|h| (server.clone(), serde_json::Value::String(h.clone())))
                .into_iter()
                .collect();
            obj.insert("credHelpers".into(), serde_json::Value::Object(per_host));
        }
        let text = config.to_string();
        match docker_credential::get_credential_from_reader(text.as_bytes(), &server) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Some(Credentials { username, password }))
            }
            Ok(DockerCredential::IdentityToken(_)) => Err(fail(
                "it returned an identity token; only username/password credentials are supported"
                    .into(),
            )),
            Err(E::HelperFailure { stdout, stderr, .. })
                if stdout.contains("credentials not found")
                    || stderr.contains("credentials not found") =>
            {
                Ok(None)
            }
            Err(E::HelperFailure { stdout, stderr, .. }) => Err(fail(format!(
                "it failed: {}",
                [stdout.trim(), stderr.trim()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" / ")
            ))),
            Err(E::HelperCommunicationError) => {
                Err(fail(if on_path(&format!("docker-credential-{helper}")) {
                    "it could not be run, or exited before reading its request".into()
                } else {
                    "it is not on berthd's PATH".into()
                }))
            }
            Err(E::MalformedHelperResponse) => Err(fail(
                "its answer is not {\"Username\", \"Secret\"} JSON".into(),
            )),
            Err(other) => Err(fail(other.to_string())),
        }
    }
}

/// Whether an executable `name` is in a directory of `$PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Normalizes a host as written in references, configs or Docker `auths` keys:
/// strips a scheme and path, and folds Docker Hub's aliases into `docker.io`.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix("https://")
        .or_else(|| h.strip_prefix("http://"))
        .unwrap_or(h);
    let h = h.split('/').next().unwrap_or(h).to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB => DOCKER_HUB.to_string(),
        _ => h,
    }
}

/// True for `localhost`, 127.0.0.0/8 and `::1` (with or without a port).
pub fn host_is_loopback(host: &str) -> bool {
    let h = host_without_port(host);
    h == "localhost" || h == "::1" || h.starts_with("127.")
}

impl RegistryConfig {
    /// An empty config: anonymous pulls, default transport rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the TOML registry config.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        let mut config = RegistryConfig::default();
        for entry in file.registry {
            config.add_entry(entry)?;
        }
        Ok(config)
    }

    /// Reads and parses the TOML registry config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Adds (or replaces) one entry after checking it.
    pub fn add_entry(&mut self, mut entry: RegistryEntry) -> Result<(), ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            host: entry.host.clone(),
            reason: reason.into(),
        };
        if entry.host.is_empty() || entry.host.contains("://") || entry.host.contains('/') {
            return Err(invalid("host must be `name[:port]` without scheme or path"));
        }
        if entry.username.is_some() != entry.password_file.is_some() {
            return Err(invalid("`username` and `password_file` go together"));
        }
        if entry
            .mirrors
            .iter()
            .any(|m| m.is_empty() || m.contains("://"))
        {
            return Err(invalid("mirrors must be `name[:port]` without scheme"));
        }
        entry.host = normalize_host(&entry.host);
        self.entries.retain(|e| e.host != entry.host);
        self.entries.push(entry);
        Ok(())
    }

    /// Adds the `auths` of a Docker `config.json` (text); `source` names it in errors.
    pub fn add_docker_config(&mut self, json: &str, source: &str) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct DockerConfig {
            #[serde(default)]
            auths: HashMap<String, DockerAuth>,
            #[serde(default)]
            creds_store: Option<String>,
            #[serde(default)]
            cred_helpers: HashMap<String, String>,
        }
        #[derive(Deserialize)]
        struct DockerAuth {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let bad = |reason: String| ConfigError::DockerConfig {
            path: source.into(),
            reason,
        };
        let parsed: DockerConfig = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let store = parsed.creds_store.filter(|s| !s.is_empty());
        let per_host: HashMap<String, String> = parsed
            .cred_helpers
            .iter()
            .filter(|(_, helper)| !helper.is_empty())
            .map(|(host, helper)| (normalize_host(host), helper.clone()))
            .collect();
        self.docker_helpers = (store.is_some() || !per_host.is_empty()).then(|| DockerHelpers {
            source: source.to_string(),
            text: json.to_string(),
            per_host,
            store,
        });
        for (key, auth) in parsed.auths {
            let creds = match (auth.auth, auth.username, auth.password) {
                (Some(b64), _, _) if !b64.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|e| bad(format!("`{key}`: auth is not base64: {e}")))?;
                    let raw = String::from_utf8(raw)
                        .map_err(|_| bad(format!("`{key}`: auth is not UTF-8")))?;
                    let (u, p) = raw
                        .split_once(':')
                        .ok_or_else(|| bad(format!("`{key}`: auth is not `user:password`")))?;
                    Credentials {
                        username: u.into(),
                        password: p.into(),
                    }
                }
                (_, Some(username), Some(password)) => Credentials { username, password },
                // Entries managed by credential helpers carry no secret here.
                _ => continue,
            };
            self.docker_auths.insert(normalize_host(&key), creds);
        }
        Ok(())
    }

    /// Reads a Docker `config.json` and adds its `auths`.
    pub fn load_docker_config(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.add_docker_config(&text, &path.display().to_string())
    }

    /// The entry for `host`, if configured.
    pub fn entry(&self, host: &str) -> Option<&RegistryEntry> {
        let host = normalize_host(host);
        self.entries.iter().find(|e| e.host == host)
    }

    /// Whether `host` is spoken to over https. A mirror inherits `insecure` from
    /// the registry whose mirror it is, or from its own entry.
    pub fn use_tls(&self, host: &str) -> bool {
        if host_is_loopback(host) {
            return false;
        }
        let norm = normalize_host(host);
        let insecure = self.entry(&norm).is_some_and(|e| e.insecure)
            || self
                .entries
                .iter()
                .any(|e| e.insecure && e.mirrors.iter().any(|m| normalize_host(m) == norm));
        !insecure
    }

    /// Mirrors of `host`, in the order to try them.
    pub fn mirrors(&self, host: &str) -> &[String] {
        self.entry(host)
            .map(|e| e.mirrors.as_slice())
            .unwrap_or(&[])
    }

    /// Credentials for `host`: the config entry's (password file read now) first,
    /// then Docker's: a `credHelpers` helper for the host, the `auths` entry, then
    /// the `credsStore` helper — each helper run as `docker-credential-NAME get`
    /// (Docker's credential-helper protocol, through the `docker_credential`
    /// crate; it blocks while the helper runs). A helper that answers
    /// "credentials not found" means anonymous, as in Docker.
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>, ConfigError> {
        if let Some(entry) = self.entry(host) {
            if let (Some(username), Some(path)) = (&entry.username, &entry.password_file) {
                let password =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                        host: entry.host.clone(),
                        path: path.clone(),
                        source,
                    })?;
                let password = password.trim_end_matches(['\n', '\r']).to_string();
                return Ok(Some(Credentials {
                    username: username.clone(),
                    password,
                }));
            }
        }
        let norm = normalize_host(host);
        let helpers = self.docker_helpers.as_ref();
        if let Some(h) = helpers.filter(|h| h.per_host.contains_key(&norm)) {
            return h.get(&norm);
        }
        if let Some(creds) = self.docker_auths.get(&norm) {
            return Ok(Some(creds.clone()));
        }
        match helpers.filter(|h| h.store.is_some()) {
            Some(h) => h.get(&norm),
            None => Ok(None),
        }
    }

    /// The host actually spoken to for a registry name (`docker.io` → its API host).
    pub fn api_host(host: &str) -> String {
        if normalize_host(host) == DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else {
            host.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn toml_entries_and_transport() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cret\n").unwrap();
        let text = format!(
            r#"
[[registry]]
host = "registry.example.com:5000"
insecure = false
username = "deploy"
password_file = "{}"
mirrors = ["mirror.internal:5000"]

[[registry]]
host = "lab.internal"
insecure = true
"#,
            pass.display()
        );
        let c = RegistryConfig::from_toml(&text).unwrap();
        assert!(c.use_tls("registry.example.com:5000"));
        assert!(!c.use_tls("lab.internal"));
        assert!(!c.use_tls("127.0.0.1:5000"));
        assert!(!c.use_tls("localhost"));
        assert!(c.use_tls("ghcr.io"));
        assert_eq!(
            c.mirrors("registry.example.com:5000"),
            ["mirror.internal:5000".to_string()]
        );
        let creds = c.credentials("registry.example.com:5000").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("deploy", "s3cret")
        );
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(c.credentials("ghcr.io").unwrap().is_none());
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(RegistryConfig::from_toml("[[registry]]\nhost = \"a\"\nbogus = 1\n").is_err());
        assert!(RegistryConfig::from_toml("[[registry]]\nhost = \"https://a\"\n").is_err());
        assert!(
            RegistryConfig::from_toml("[[registry]]\nhost = \"a\"\nusername = \"u\"\n").is_err()
        );
        let c = RegistryConfig::from_toml(
            "[[registry]]\nhost = \"a\"\nusername = \"u\"\npassword_file = \"/nonexistent/x\"\n",
        )
        .unwrap();
        let err = c.credentials("a").unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/x") && err.contains("`a`"),
            "{err}"
        );
    }

    #[test]
    fn docker_config_auths() {
        let mut c = RegistryConfig::new();
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons");
        let json = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "127.0.0.1:5000": {{"username": "bob", "password": "pw2"}},
                "helper.example": {{}} }}, "credsStore": "desktop"}}"#
        );
        c.add_docker_config(&json, "config.json").unwrap();
        let hub = c.credentials("docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "pw:with:colons")
        );
        assert_eq!(
            c.credentials("127.0.0.1:5000").unwrap().unwrap().username,
            "bob"
        );
        // An auths entry without a secret goes to the credsStore helper.
        let err = c.credentials("helper.example").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-desktop") && err.contains("not on berthd's PATH"),
            "{err}"
        );
        assert!(c
            .add_docker_config(r#"{"auths": {"x": {"auth": "!!"}}}"#, "config.json")
            .is_err());
        assert_eq!(
            RegistryConfig::api_host("docker.io"),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn docker_auths_win_over_the_creds_store_and_helpers_are_per_host() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:p");
        let mut c = RegistryConfig::new();
        c.add_docker_config(
            &format!(
                r#"{{"auths": {{"a.example": {{"auth": "{b64}"}}, "b.example": {{}}}},
                    "credsStore": "", "credHelpers": {{"https://c.example/v1/": "x"}}}}"#
            ),
            "config.json",
        )
        .unwrap();
        // An empty credsStore means none; a.example answers from auths.
        assert_eq!(c.credentials("a.example").unwrap().unwrap().username, "u");
        assert!(c.credentials("b.example").unwrap().is_none());
        let h = c.docker_helpers.as_ref().unwrap();
        assert_eq!(h.per_host.get("c.example").map(String::as_str), Some("x"));
        assert!(h.store.is_none());
    }
}
