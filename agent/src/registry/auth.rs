//! Registry authentication: parsing `WWW-Authenticate` challenges, the bearer
//! token flow (anonymous or with Basic credentials to the realm) and a cache of
//! the `Authorization` value per registry host and scope, so a token is fetched
//! once per repository until it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::config::Credentials;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header value. Only
/// `Basic` and `Bearer` are understood.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key=value` or `key="quoted, \"value\""` pairs separated by commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// The `Authorization` value for Basic credentials.
pub fn basic_header(creds: &Credentials) -> String {
    let raw = format!("{}:{}", creds.username, creds.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A token endpoint's answer (`token` or `access_token`).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        // The distribution spec's default lifetime is 60 seconds.
        Some((
            token,
            Duration::from_secs(self.expires_in.unwrap_or(60).max(1)),
        ))
    }
}

#[derive(Debug)]
struct Entry {
    header: String,
    expires: Option<Instant>,
}

/// `Authorization` values cached per (host, scope).
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl AuthCache {
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(&(host.to_string(), scope.to_string()))?;
        // Refresh a little before the registry would refuse the token.
        match e.expires {
            Some(t) if Instant::now() + Duration::from_secs(5) >= t => None,
            _ => Some(e.header.clone()),
        }
    }

    pub fn put(&self, host: &str, scope: &str, header: String, ttl: Option<Duration>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(
            (host.into(), scope.into()),
            Entry {
                header,
                expires: ttl.map(|d| Instant::now() + d),
            },
        );
    }

    pub fn forget(&self, host: &str, scope: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&(host.to_string(), scope.to_string()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }
        );
        let c =
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, scope="a:b:pull,push""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("a:b:pull,push".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn cache_expiry() {
        let cache = AuthCache::default();
        cache.put("h", "s", "Bearer a".into(), Some(Duration::from_secs(60)));
        assert_eq!(cache.get("h", "s").as_deref(), Some("Bearer a"));
        cache.put("h", "s2", "Bearer b".into(), Some(Duration::from_secs(1)));
        assert_eq!(cache.get("h", "s2"), None);
        cache.forget("h", "s");
        assert_eq!(cache.get("h", "s"), None);
        let t = TokenResponse {
            token: None,
            access_token: Some("x".into()),
            expires_in: None,
        };
        assert_eq!(t.into_token(), Some(("x".into(), Duration::from_secs(60))));
    }
}
