//! Image references (`[registry/]repository[:tag][@digest]`) and digests, with
//! Docker Hub defaults: `busybox` means `docker.io/library/busybox:latest`.
//! The grammar follows the distribution reference grammar; a reference that
//! fails it is refused with the part that is wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The registry Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// The API host actually spoken to for Docker Hub.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Longest image name, `registry/repository` as normalized (`busybox` counts
/// as `docker.io/library/busybox`): Docker's `NameTotalLengthMax`.
const MAX_NAME_LEN: usize = 255;
/// Longest reference worth parsing: the longest name, `:` tag, `@` digest.
const MAX_REFERENCE_LEN: usize = MAX_NAME_LEN + 1 + 128 + 1 + "sha512:".len() + 128;

/// Why an image reference or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference is longer than {MAX_REFERENCE_LEN} characters")]
    TooLong,
    #[error("`{reference}`: the image name (registry/repository) is {len} characters, over the limit of {MAX_NAME_LEN}")]
    NameTooLong { reference: String, len: usize },
    #[error("`{reference}`: repository component `{component}` is invalid (lowercase letters, digits and separators `.`, `_`, `__`, `-` only)")]
    BadRepository {
        reference: String,
        component: String,
    },
    #[error("`{reference}`: registry host `{host}` is invalid")]
    BadRegistry { reference: String, host: String },
    #[error("`{reference}`: tag `{tag}` is invalid (up to 128 of [A-Za-z0-9_.-], not starting with `.` or `-`)")]
    BadTag { reference: String, tag: String },
    #[error("`{0}`: {1}")]
    BadDigest(String, DigestError),
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest `{0}` has no `algorithm:` prefix")]
    NoAlgorithm(String),
    #[error("digest `{0}` uses an unsupported algorithm (only sha256 and sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest `{0}` must be {1} lowercase hex characters after the algorithm")]
    BadHex(String, usize),
}

/// A content digest such as `sha256:…` (lowercase hex, checked length).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

/// Digest algorithms the OCI image spec registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl Digest {
    /// Builds a sha256 digest from raw hash bytes.
    pub fn sha256_from_bytes(hash: &[u8]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(hash),
        }
    }

    /// Hashes `data` with sha256.
    pub fn sha256_of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::sha256_from_bytes(&sha2::Sha256::digest(data))
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name as written (`sha256`).
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::NoAlgorithm(s.into()))?;
        let (algorithm, len) = match alg {
            "sha256" => (DigestAlgorithm::Sha256, 64),
            "sha512" => (DigestAlgorithm::Sha512, 128),
            _ => return Err(DigestError::UnsupportedAlgorithm(s.into())),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadHex(s.into(), len));
        }
        Ok(Digest {
            algorithm,
            hex: hex.into(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm_name(), self.hex)
    }
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// Pinned digest, if any.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference, applying Docker Hub defaults.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        if reference.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if reference.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong);
        }
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| ReferenceError::BadDigest(reference.into(), e))?,
                ),
            ),
            None => (reference, None),
        };
        // A tag is the part after the last ':' when that part holds no '/'.
        let (name, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name_tag, None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag {
                    reference: reference.into(),
                    tag: tag.clone(),
                });
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::BadRegistry {
                reference: reference.into(),
                host: registry,
            });
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for component in repository.split('/') {
            if !valid_path_component(component) {
                return Err(ReferenceError::BadRepository {
                    reference: reference.into(),
                    component: component.into(),
                });
            }
        }
        // Checked on the normalized name, so a parsed reference always prints
        // as one that parses again.
        let len = registry.len() + 1 + repository.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong {
                reference: reference.into(),
                len,
            });
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn pinned(&self, digest: Digest) -> Self {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True when the registry is on loopback (reached over plain http by default).
    pub fn registry_is_loopback(&self) -> bool {
        let host = host_without_port(&self.registry);
        host == "localhost" || host == "::1" || host.starts_with("127.")
    }
}

/// Strips a `:port` (and IPv6 brackets) from a registry host.
pub fn host_without_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ReferenceError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ImageRef::parse(&value)
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip6, after)) => {
                if ip6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => (None, None),
                    // Nothing but a port may follow the address.
                    _ => match after.strip_prefix(':') {
                        Some(port) => (None, Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port {
        if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return false;
        }
    }
    match name {
        None => true,
        Some(n) => {
            !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_defaults() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("user/app:1.0").unwrap();
        assert_eq!(r.to_string(), "docker.io/user/app:1.0");
        let r = ImageRef::parse("index.docker.io/library/nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let r = ImageRef::parse("127.0.0.1:5000/shop/web:1.4").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "shop/web");
        assert_eq!(r.tag.as_deref(), Some("1.4"));
        assert!(r.registry_is_loopback());
        let r = ImageRef::parse(&format!("localhost:5000/web@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(|d| d.to_string()).as_deref(), Some(D));
        let r = ImageRef::parse(&format!("[::1]:5000/web:v1@{D}")).unwrap();
        assert!(r.registry_is_loopback());
        assert!(!ImageRef::parse("ghcr.io/a/b")
            .unwrap()
            .registry_is_loopback());
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-bad",
            "a//b",
            "a/b_/c",
            "web@sha256:abc",
            "web@md5:e3b0c44298fc1c149afbf4c8996fb924",
            "host:0/a",
            "-host.com/a",
            "web:tag@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            ImageRef::parse(&"a".repeat(600)),
            Err(ReferenceError::TooLong)
        );
    }

    /// Found by the `image_ref` fuzz target (fuzz/regressions/image_ref/):
    /// a 237-character name was accepted, but its normalized form
    /// (`docker.io/library/…:latest`) was over the old 255-character cap
    /// on the whole reference, so a stored reference no longer parsed. The
    /// limit is now Docker's: 255 characters of normalized name.
    #[test]
    fn the_name_limit_counts_the_normalized_name() {
        let long = "b".repeat(230);
        let r = ImageRef::parse(&long).unwrap();
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
        let stored = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ImageRef>(&stored).unwrap(), r);
        let pinned = r.pinned(D.parse().unwrap());
        assert_eq!(ImageRef::parse(&pinned.to_string()).unwrap(), pinned);
        // `docker.io/library/` + 237 = 255 characters: the longest name.
        assert!(ImageRef::parse(&"c".repeat(237)).is_ok());
        assert!(matches!(
            ImageRef::parse(&"c".repeat(238)),
            Err(ReferenceError::NameTooLong { len: 256, .. })
        ));
        let at_limit = format!("{}:{}@{D}", "c".repeat(237), "t".repeat(128));
        let r = ImageRef::parse(&at_limit).unwrap();
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
    }

    /// Found by the `image_ref` fuzz target: after a bracketed IPv6 address
    /// anything was taken as part of the host (`[::1]evil/x`, which also
    /// counted as loopback, reached over plain http).
    #[test]
    fn only_a_port_may_follow_a_bracketed_address() {
        for bad in [
            "[::1]evil/x",
            "[::1].example.com/x",
            "[::1]:/x",
            "[::1]5000/x",
        ] {
            assert!(
                matches!(
                    ImageRef::parse(bad),
                    Err(ReferenceError::BadRegistry { .. })
                ),
                "{bad:?}: {:?}",
                ImageRef::parse(bad)
            );
        }
        assert_eq!(ImageRef::parse("[::1]/x:1").unwrap().registry, "[::1]");
        assert_eq!(
            ImageRef::parse("[::1]:5000/x").unwrap().registry,
            "[::1]:5000"
        );
    }

    #[test]
    fn digests() {
        let d: Digest = D.parse().unwrap();
        assert_eq!(d.to_string(), D);
        assert_eq!(Digest::sha256_of(b""), d);
        assert!(matches!(
            "sha256".parse::<Digest>(),
            Err(DigestError::NoAlgorithm(_))
        ));
        assert!(matches!(
            "sha1:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:xyz".parse::<Digest>(),
            Err(DigestError::BadHex(_, 64))
        ));
    }
}
