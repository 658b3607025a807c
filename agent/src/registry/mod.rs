//! OCI distribution-spec pull client: resolves references to digests, fetches
//! manifests (capped, digest-verified), picks the host platform from indexes,
//! and streams blobs into the [`ContentStore`]. Handles bearer-token and Basic
//! auth, mirrors, retries with backoff and jitter, stalled bodies, and redirects
//! (dropping `Authorization` when one leaves the registry's origin).

pub mod auth;
pub mod config;
pub mod platform;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_core::image_ref::{Digest, ImageRef};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};

use crate::content::{digest_like, Begin, ContentError, ContentStore};
use auth::{AuthCache, Challenge};
pub use config::{ConfigError, Credentials, RegistryConfig, RegistryEntry};
pub use platform::{select_platform, Platform};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The `Accept` header for manifest requests: every manifest type we can pull.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// Manifests larger than this are refused (the limit registries commonly apply).
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;
/// Image configs larger than this are refused.
pub const CONFIG_LIMIT: u64 = 8 * 1024 * 1024;
const TOKEN_LIMIT: u64 = 1024 * 1024;
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Why a pull failed. Variants name the image and, where one is involved, the digest.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {image} not found: the registry has no such tag or manifest")]
    NotFound { image: String },
    #[error("image {image}: blob {digest} not found in the registry")]
    BlobNotFound { image: String, digest: Digest },
    #[error("image {image}: manifest {digest} is larger than the {limit}-byte limit")]
    ManifestTooLarge {
        image: String,
        digest: String,
        limit: u64,
    },
    #[error("image {image}: content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        image: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {image}: blob {digest} is truncated or oversized: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        image: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("image {image}: malformed digest `{digest}` in {context}: {reason}")]
    BadDigest {
        image: String,
        digest: String,
        context: String,
        reason: String,
    },
    /// `what` names the object: `manifest <ref>`, `config of manifest
    /// <digest>`, `layer <digest>`.
    #[error("image {image}: {what} has unsupported media type `{media_type}`{}", artifact_hint(.media_type))]
    UnsupportedMediaType {
        image: String,
        what: String,
        media_type: String,
    },
    #[error("image {image}: manifest {digest} is invalid: {reason}")]
    InvalidManifest {
        image: String,
        digest: Digest,
        reason: String,
    },
    #[error("image {image}: config {digest} is invalid: {reason}")]
    InvalidConfig {
        image: String,
        digest: Digest,
        reason: String,
    },
    #[error("image {image} has no manifest for platform {wanted} (available: {available})")]
    NoMatchingPlatform {
        image: String,
        wanted: String,
        available: String,
    },
    #[error("unauthorized to pull {image} from registry {registry}: {reason}")]
    Unauthorized {
        registry: String,
        image: String,
        reason: String,
    },
    #[error("registry {registry} is unreachable while pulling {image}: {source}")]
    Unreachable {
        registry: String,
        image: String,
        source: reqwest::Error,
    },
    #[error("registry {registry} answered {status} to {what} of {image}")]
    Status {
        registry: String,
        image: String,
        what: String,
        status: u16,
    },
    #[error("registry {registry} broke the protocol while pulling {image}: {reason}")]
    Protocol {
        registry: String,
        image: String,
        reason: String,
    },
    #[error("token server for {registry} failed while pulling {image}: {reason}")]
    TokenRequest {
        registry: String,
        image: String,
        reason: String,
    },
    #[error("image {image}: {digest} stalled (no data for {secs}s)")]
    Stalled {
        image: String,
        digest: String,
        secs: u64,
    },
    #[error("image {image}: reading {digest} failed: {source}")]
    Body {
        image: String,
        digest: String,
        source: reqwest::Error,
    },
    #[error("image {image}: storing {digest}: {source}")]
    Store {
        image: String,
        digest: Digest,
        source: ContentError,
    },
    #[error("credentials for registry {registry}: {source}")]
    Credentials {
        registry: String,
        source: ConfigError,
    },
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
}

impl RegistryError {
    /// A short, bounded label for metrics (`registry_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::NotFound { .. } | RegistryError::BlobNotFound { .. } => "not_found",
            RegistryError::ManifestTooLarge { .. } => "too_large",
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                "verification"
            }
            RegistryError::BadDigest { .. }
            | RegistryError::InvalidManifest { .. }
            | RegistryError::InvalidConfig { .. }
            | RegistryError::Protocol { .. } => "invalid",
            RegistryError::UnsupportedMediaType { .. } => "unsupported",
            RegistryError::NoMatchingPlatform { .. } => "platform",
            RegistryError::Unauthorized { .. } | RegistryError::TokenRequest { .. } => "auth",
            RegistryError::Credentials { .. } => "credentials",
            RegistryError::Unreachable { .. } | RegistryError::Client(_) => "unreachable",
            RegistryError::Status { .. } => "status",
            RegistryError::Stalled { .. } | RegistryError::Body { .. } => "transfer",
            RegistryError::Store { .. } => "store",
        }
    }

    /// True when no retry can help: the reference or its content is wrong
    /// (no such tag, manifest or blob; not a container image; unsupported
    /// media type; no manifest for this platform; invalid or mismatching
    /// content), or access is refused (401/403, unusable credentials), or the
    /// registry answered another 4xx. Network errors, stalls, 408/429/5xx, a
    /// broken token server and local storage failures are not permanent: the
    /// reconciler retries those with backoff. A blob shorter than announced
    /// counts as a cut transfer (not permanent); a longer one as wrong content.
    pub fn is_permanent(&self) -> bool {
        match self {
            RegistryError::NotFound { .. }
            | RegistryError::BlobNotFound { .. }
            | RegistryError::ManifestTooLarge { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::BadDigest { .. }
            | RegistryError::UnsupportedMediaType { .. }
            | RegistryError::InvalidManifest { .. }
            | RegistryError::InvalidConfig { .. }
            | RegistryError::NoMatchingPlatform { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Credentials { .. } => true,
            RegistryError::SizeMismatch {
                expected, actual, ..
            } => actual > expected,
            RegistryError::Status { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            RegistryError::Unreachable { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::TokenRequest { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Body { .. }
            | RegistryError::Store { .. }
            | RegistryError::Client(_) => false,
        }
    }

    /// True for failures worth another attempt at once, within one request
    /// (network, stalls, 5xx/429): the client's own retry loop.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Body { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Tunables of the client. `Default` suits production; tests shorten the timings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Attempts per request on connection errors, 429 and 5xx (at least 1).
    pub attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A body that delivers no bytes for this long fails.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// The platform picked from indexes.
    pub platform: Platform,
    pub manifest_limit: u64,
    pub config_limit: u64,
    pub max_redirects: usize,
    /// Layers downloaded at once by [`RegistryClient::pull_image`].
    pub layer_concurrency: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: 4,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            platform: Platform::host(),
            manifest_limit: MANIFEST_LIMIT,
            config_limit: CONFIG_LIMIT,
            max_redirects: 10,
            layer_concurrency: 3,
        }
    }
}

/// What a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A parsed top-level manifest.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived; boxing buys nothing
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type, or `None` when it is not a layer we can unpack.
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(LayerCompression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            Some(LayerCompression::Gzip)
        }
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Some(LayerCompression::Zstd)
        }
        _ => None,
    }
}

/// One layer of a pulled image, in stack order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    /// The digest of the uncompressed tar (from the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: LayerCompression,
}

/// An image whose manifest(s), config and layers are all verified in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pinned to [`PulledImage::digest`].
    pub reference: ImageRef,
    /// What the reference resolved to (an index's digest for multi-platform images): the digest to record.
    pub digest: Digest,
    pub media_type: String,
    /// The platform-specific image manifest (equal to `digest` for single-platform images).
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// The config blob as stored (verified against `config_digest`), for the
    /// Docker fields oci-spec does not model (`Healthcheck`).
    pub config_json: Vec<u8>,
    pub layers: Vec<Layer>,
    /// Bytes downloaded by this pull (blobs already present cost nothing).
    pub fetched_bytes: u64,
}

/// A registry endpoint to try: a mirror or the registry itself.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host[:port]` spoken to (Docker Hub's API host for `docker.io`).
    host: String,
    base: String,
    mirror: bool,
}

/// A stream of blob bytes that fails with [`RegistryError::Stalled`] when no
/// data arrives for the stall timeout. Bytes are not verified here; commit them
/// through a [`ContentStore`] ingest (as [`RegistryClient::pull_blob`] does).
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
    content_length: Option<u64>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    fn new(resp: reqwest::Response, image: String, what: String, stall: Duration) -> Self {
        let content_length = header_u64(resp.headers(), CONTENT_LENGTH.as_str());
        let body = resp.bytes_stream().boxed();
        let inner = futures_util::stream::unfold(Some(body), move |state| {
            let (image, what) = (image.clone(), what.clone());
            async move {
                let mut body = state?;
                match tokio::time::timeout(stall, body.next()).await {
                    Err(_) => Some((
                        Err(RegistryError::Stalled {
                            image,
                            digest: what,
                            secs: stall.as_secs(),
                        }),
                        None,
                    )),
                    Ok(None) => None,
                    Ok(Some(Err(source))) => Some((
                        Err(RegistryError::Body {
                            image,
                            digest: what,
                            source,
                        }),
                        None,
                    )),
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                }
            }
        });
        BlobStream {
            inner: Box::pin(inner),
            content_length,
        }
    }

    /// The `Content-Length` the registry announced, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The pull client. Cheap to clone; clones share connections and cached tokens.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: RegistryConfig,
    options: ClientOptions,
    http: reqwest::Client,
    auth: AuthCache,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name).and_then(|v| v.trim().parse().ok())
}

fn bare_media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        MEDIA_OCI_MANIFEST | MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST | MEDIA_DOCKER_LIST
    )
}

/// The media type of a manifest body: the header when it names a manifest type,
/// else the body's `mediaType`, else guessed from its shape.
pub fn sniff_media_type(header: Option<&str>, body: &[u8]) -> String {
    let header = header.map(bare_media_type).unwrap_or_default();
    if is_manifest_type(&header) {
        return header;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return header;
    };
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        return mt.to_string();
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(2) {
        if v.get("manifests").is_some() {
            return MEDIA_OCI_INDEX.into();
        }
        if v.get("config").is_some() && v.get("layers").is_some() {
            return MEDIA_OCI_MANIFEST.into();
        }
    }
    if header.is_empty() {
        "(none)".into()
    } else {
        header
    }
}

impl Manifest {
    /// Parses a manifest or index, checking its schema and every digest it names.
    pub fn parse(
        image: &ImageRef,
        digest: &Digest,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Self, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidManifest {
            image: image.to_string(),
            digest: digest.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
            return Err(invalid("schemaVersion is not 2".into()));
        }
        let mut descriptors: Vec<(String, &serde_json::Value)> = Vec::new();
        if let Some(c) = value.get("config") {
            descriptors.push(("config".into(), c));
        }
        for key in ["layers", "manifests"] {
            if let Some(list) = value.get(key).and_then(|l| l.as_array()) {
                descriptors.extend(
                    list.iter()
                        .enumerate()
                        .map(|(i, d)| (format!("{key}[{i}]"), d)),
                );
            }
        }
        for (place, d) in descriptors {
            let raw = d.get("digest").and_then(|x| x.as_str()).unwrap_or("");
            if let Err(e) = raw.parse::<Digest>() {
                return Err(RegistryError::BadDigest {
                    image: image.to_string(),
                    digest: raw.to_string(),
                    context: format!("{place} of manifest {digest}"),
                    reason: e.to_string(),
                });
            }
        }
        match media_type {
            MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => serde_json::from_value(value)
                .map(Manifest::Image)
                .map_err(|e| invalid(e.to_string())),
            MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => serde_json::from_value(value)
                .map(Manifest::Index)
                .map_err(|e| invalid(e.to_string())),
            other => Err(RegistryError::UnsupportedMediaType {
                image: image.to_string(),
                what: format!("manifest {digest}"),
                media_type: other.into(),
            }),
        }
    }
}

/// What a known non-image media type is, for the error message: a tag that
/// points at a Helm chart or another OCI artifact is no container image.
fn artifact_hint(media_type: &str) -> &'static str {
    if media_type.starts_with("application/vnd.cncf.helm.") {
        " (a Helm chart, not a container image)"
    } else if media_type.starts_with("application/vnd.dev.cosign")
        || media_type.starts_with("application/vnd.dev.sigstore")
    {
        " (a signature, not a container image)"
    } else if media_type == "application/vnd.oci.empty.v1+json"
        || media_type.starts_with("application/vnd.oci.artifact")
    {
        " (an OCI artifact, not a container image)"
    } else {
        ""
    }
}

/// The media type of a stored manifest: its `mediaType` field, else (OCI
/// allows leaving it out) an index when it lists `manifests`, a manifest
/// otherwise. The registry's header is not stored with the blob.
fn stored_media_type(bytes: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if value.get("manifests").is_some() => MEDIA_OCI_INDEX.into(),
        None => MEDIA_OCI_MANIFEST.into(),
    }
}

/// An image index whose chosen entry is itself an index (Berth follows one
/// level, as Docker does).
fn nested_index(image: &ImageRef, child: Digest) -> RegistryError {
    RegistryError::InvalidManifest {
        image: image.to_string(),
        digest: child,
        reason: "an index entry points at another index".into(),
    }
}

fn parse_digest(image: &ImageRef, raw: &str, context: &str) -> Result<Digest, RegistryError> {
    raw.parse::<Digest>().map_err(|e| RegistryError::BadDigest {
        image: image.to_string(),
        digest: raw.into(),
        context: context.into(),
        reason: e.to_string(),
    })
}

fn store_error(image: &ImageRef, digest: &Digest, e: ContentError) -> RegistryError {
    match e {
        ContentError::DigestMismatch { expected, actual } => RegistryError::DigestMismatch {
            image: image.to_string(),
            expected,
            actual,
        },
        ContentError::SizeMismatch {
            digest,
            expected,
            actual,
        } => RegistryError::SizeMismatch {
            image: image.to_string(),
            digest,
            expected,
            actual,
        },
        other => RegistryError::Store {
            image: image.to_string(),
            digest: digest.clone(),
            source: other,
        },
    }
}

/// A layer as an image manifest describes it, before the config pairs it
/// with its diff_id: digest, size, media type, compression.
pub type LayerDescriptor = (Digest, u64, String, LayerCompression);

/// The config digest and the layers an image manifest names, checked: the
/// config is an OCI or Docker image config, every digest parses and every
/// layer has a media type this agent can unpack. Pure (no I/O), so the
/// checks are fuzzed (`fuzz/`) as well as unit-tested.
pub fn manifest_parts(
    image: &ImageRef,
    manifest_digest: &Digest,
    manifest: &ImageManifest,
) -> Result<(Digest, Vec<LayerDescriptor>), RegistryError> {
    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if config_type != MEDIA_OCI_CONFIG && config_type != MEDIA_DOCKER_CONFIG {
        return Err(RegistryError::UnsupportedMediaType {
            image: image.to_string(),
            what: format!("the config of manifest {manifest_digest}"),
            media_type: config_type,
        });
    }
    let config_digest = parse_digest(image, config_desc.digest().as_ref(), "config descriptor")?;
    let mut layer_descs = Vec::new();
    for (i, l) in manifest.layers().iter().enumerate() {
        let mt = l.media_type().to_string();
        let digest = parse_digest(image, l.digest().as_ref(), &format!("layers[{i}]"))?;
        let compression =
            layer_compression(&mt).ok_or_else(|| RegistryError::UnsupportedMediaType {
                image: image.to_string(),
                what: format!("layer {digest} (layers[{i}] of manifest {manifest_digest})"),
                media_type: mt.clone(),
            })?;
        layer_descs.push((digest, l.size(), mt, compression));
    }
    Ok((config_digest, layer_descs))
}

/// Parses an image config blob (verified against `config_digest`) and pairs
/// its `rootfs.diff_ids` with the manifest's layers, in order: there must be
/// exactly one valid diff_id per layer. Pure, like [`manifest_parts`].
pub fn parse_config(
    image: &ImageRef,
    config_digest: &Digest,
    config_bytes: &[u8],
    layer_descs: Vec<LayerDescriptor>,
) -> Result<(ImageConfiguration, Vec<Layer>), RegistryError> {
    let invalid_config = |reason: String| RegistryError::InvalidConfig {
        image: image.to_string(),
        digest: config_digest.clone(),
        reason,
    };
    let config: ImageConfiguration =
        serde_json::from_slice(config_bytes).map_err(|e| invalid_config(e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layer_descs.len() {
        return Err(invalid_config(format!(
            "{} diff_ids for {} layers",
            diff_ids.len(),
            layer_descs.len()
        )));
    }
    let mut layers = Vec::with_capacity(layer_descs.len());
    for (i, ((digest, size, media_type, compression), diff_id)) in
        layer_descs.into_iter().zip(diff_ids).enumerate()
    {
        let diff_id = parse_digest(
            image,
            diff_id,
            &format!("rootfs.diff_ids[{i}] of config {config_digest}"),
        )?;
        layers.push(Layer {
            digest,
            diff_id,
            size,
            media_type,
            compression,
        });
    }
    Ok((config, layers))
}

impl RegistryClient {
    /// A client with default options.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        Self::with_options(config, ClientOptions::default())
    }

    pub fn with_options(
        config: RegistryConfig,
        options: ClientOptions,
    ) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            inner: Arc::new(ClientInner {
                config,
                options,
                http,
                auth: AuthCache::default(),
            }),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    fn endpoints(&self, image: &ImageRef) -> Vec<Endpoint> {
        let cfg = &self.inner.config;
        let mk = |host: &str, mirror: bool| {
            let host = RegistryConfig::api_host(host);
            let scheme = if cfg.use_tls(&host) { "https" } else { "http" };
            Endpoint {
                base: format!("{scheme}://{host}"),
                host,
                mirror,
            }
        };
        let mut eps: Vec<Endpoint> = cfg
            .mirrors(&image.registry)
            .iter()
            .map(|m| mk(m, true))
            .collect();
        eps.push(mk(&image.registry, false));
        eps
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.inner.options;
        let exp = o
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(o.backoff_max);
        let half = exp / 2;
        half + Duration::from_nanos(fastrand::u64(
            0..=half.as_nanos().min(u64::MAX as u128) as u64,
        ))
    }

    /// Sends one request, following redirects by hand: `Authorization` goes only
    /// to the endpoint's own origin.
    async fn send_once(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        method: &Method,
        url: Url,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let origin = url.origin();
        let mut url = url;
        let mut method = method.clone();
        for _ in 0..=self.inner.options.max_redirects {
            let mut req = self.inner.http.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = authorization {
                if url.origin() == origin {
                    req = req.header(AUTHORIZATION, a);
                }
            }
            // A server that accepts but never answers counts as stalled.
            let stall = self.inner.options.stall_timeout;
            let resp = tokio::time::timeout(stall, req.send())
                .await
                .map_err(|_| RegistryError::Stalled {
                    image: image.to_string(),
                    digest: format!("{method} {}", url.path()),
                    secs: stall.as_secs(),
                })?
                .map_err(|source| RegistryError::Unreachable {
                    registry: ep.host.clone(),
                    image: image.to_string(),
                    source,
                })?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let location = header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| {
                RegistryError::Protocol {
                    registry: ep.host.clone(),
                    image: image.to_string(),
                    reason: format!("{} redirect without Location from {url}", resp.status()),
                }
            })?;
            let next = url.join(location).map_err(|e| RegistryError::Protocol {
                registry: ep.host.clone(),
                image: image.to_string(),
                reason: format!("bad redirect Location `{location}`: {e}"),
            })?;
            if resp.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
            tracing::debug!(from = %url, to = %next, "following registry redirect");
            url = next;
        }
        Err(RegistryError::Protocol {
            registry: ep.host.clone(),
            image: image.to_string(),
            reason: format!("more than {} redirects", self.inner.options.max_redirects),
        })
    }

    /// Sends a request to `ep` with authentication (answering one challenge),
    /// retrying connection errors, 429 and 5xx with backoff. Returns the final
    /// response, whatever its status, except 401 which becomes `Unauthorized`.
    async fn send(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url =
            Url::parse(&format!("{}{}", ep.base, path)).map_err(|e| RegistryError::Protocol {
                registry: ep.host.clone(),
                image: image.to_string(),
                reason: format!("bad URL: {e}"),
            })?;
        let scope = format!("repository:{}:pull", image.repository);
        let attempts = self.inner.options.attempts.max(1);
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let authorization = self
                .inner
                .auth
                .get(&ep.host, &scope)
                .or_else(|| self.inner.auth.get(&ep.host, ""));
            let result = self
                .send_once(
                    ep,
                    image,
                    &method,
                    url.clone(),
                    accept,
                    authorization.as_deref(),
                )
                .await;
            let retry_after = match &result {
                Err(e) if e.is_transient() => Some(None),
                Ok(r)
                    if r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status().is_server_error() =>
                {
                    Some(header_u64(r.headers(), RETRY_AFTER.as_str()).map(Duration::from_secs))
                }
                _ => None,
            };
            if let Some(hint) = retry_after {
                if attempt + 1 < attempts {
                    let delay = hint
                        .map(|h| h.min(self.inner.options.backoff_max))
                        .unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(registry = %ep.host, attempt, ?delay, "retrying registry request");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
            }
            let resp = result?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if authenticated {
                self.inner.auth.forget(&ep.host, &scope);
                self.inner.auth.forget(&ep.host, "");
                return Err(RegistryError::Unauthorized {
                    registry: ep.host.clone(),
                    image: image.to_string(),
                    reason: "the registry refused the credentials".into(),
                });
            }
            let challenge = header_str(resp.headers(), WWW_AUTHENTICATE.as_str())
                .and_then(auth::parse_challenge);
            self.authenticate(ep, image, &scope, challenge).await?;
            authenticated = true;
        }
    }

    async fn authenticate(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        scope: &str,
        challenge: Option<Challenge>,
    ) -> Result<(), RegistryError> {
        let unauthorized = |reason: &str| RegistryError::Unauthorized {
            registry: ep.host.clone(),
            image: image.to_string(),
            reason: reason.into(),
        };
        let creds = self.inner.config.credentials(&ep.host).map_err(|source| {
            RegistryError::Credentials {
                registry: ep.host.clone(),
                source,
            }
        })?;
        match challenge {
            None => Err(unauthorized("401 without a Basic or Bearer challenge")),
            Some(Challenge::Basic) => {
                let creds = creds.ok_or_else(|| {
                    unauthorized("the registry requires credentials and none are configured")
                })?;
                self.inner
                    .auth
                    .put(&ep.host, "", auth::basic_header(&creds), None);
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: _,
            }) => {
                let token_err = |reason: String| RegistryError::TokenRequest {
                    registry: ep.host.clone(),
                    image: image.to_string(),
                    reason,
                };
                let mut url = Url::parse(&realm)
                    .map_err(|e| token_err(format!("bad realm `{realm}`: {e}")))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                let attempts = self.inner.options.attempts.max(1);
                let mut attempt = 0;
                let resp = loop {
                    let mut req = self.inner.http.get(url.clone());
                    if let Some(c) = &creds {
                        req = req.header(AUTHORIZATION, auth::basic_header(c));
                    }
                    let transient = match req.send().await {
                        Ok(r)
                            if r.status() == StatusCode::TOO_MANY_REQUESTS
                                || r.status().is_server_error() =>
                        {
                            Err(token_err(format!("token server answered {}", r.status())))
                        }
                        Ok(r) => break r,
                        Err(e) => Err(token_err(e.to_string())),
                    };
                    attempt += 1;
                    if attempt >= attempts {
                        return transient;
                    }
                    tokio::time::sleep(self.backoff(attempt - 1)).await;
                };
                match resp.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(unauthorized(if creds.is_some() {
                            "the token server refused the credentials"
                        } else {
                            "the token server requires credentials and none are configured"
                        }))
                    }
                    s => return Err(token_err(format!("token server answered {s}"))),
                }
                let body = self
                    .read_limited(resp, image, "token response", TOKEN_LIMIT, |_| {
                        token_err("token response is too large".into())
                    })
                    .await?;
                let parsed: auth::TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| token_err(format!("bad token response: {e}")))?;
                let (token, ttl) = parsed
                    .into_token()
                    .ok_or_else(|| token_err("token response has no token".into()))?;
                self.inner
                    .auth
                    .put(&ep.host, scope, format!("Bearer {token}"), Some(ttl));
                Ok(())
            }
        }
    }

    /// Reads a whole body of at most `limit` bytes, honouring the stall timeout.
    async fn read_limited(
        &self,
        resp: reqwest::Response,
        image: &ImageRef,
        what: &str,
        limit: u64,
        too_large: impl Fn(u64) -> RegistryError,
    ) -> Result<Bytes, RegistryError> {
        if let Some(len) = header_u64(resp.headers(), CONTENT_LENGTH.as_str()) {
            if len > limit {
                return Err(too_large(len));
            }
        }
        let stall = self.inner.options.stall_timeout;
        let mut stream = BlobStream::new(resp, image.to_string(), what.to_string(), stall);
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            if buf.len() as u64 > limit {
                return Err(too_large(buf.len() as u64));
            }
        }
        Ok(buf.freeze())
    }

    fn status_error(
        ep: &Endpoint,
        image: &ImageRef,
        what: String,
        status: StatusCode,
    ) -> RegistryError {
        RegistryError::Status {
            registry: ep.host.clone(),
            image: image.to_string(),
            what,
            status: status.as_u16(),
        }
    }

    /// Runs `op` against each endpoint (mirrors first); a mirror's failure falls
    /// through to the next endpoint, the registry's own is returned.
    async fn on_endpoints<T, F, Fut>(&self, image: &ImageRef, op: F) -> Result<T, RegistryError>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let endpoints = self.endpoints(image);
        let last = endpoints.len() - 1;
        for (i, ep) in endpoints.into_iter().enumerate() {
            let host = ep.host.clone();
            let mirror = ep.mirror;
            match op(ep).await {
                Ok(v) => return Ok(v),
                Err(e) if mirror && i < last => {
                    tracing::warn!(mirror = %host, image = %image, error = %e, "mirror failed; trying next");
                }
                Err(e) => return Err(e),
            }
        }
        Err(RegistryError::Protocol {
            registry: image.registry.clone(),
            image: image.to_string(),
            reason: "no endpoint".into(),
        })
    }

    /// Resolves a tag (or checks a pinned digest) to the manifest digest, media
    /// type and size, with a HEAD request where the registry allows it.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Resolved, RegistryError> {
        self.on_endpoints(image, |ep| async move { self.resolve_at(&ep, image).await })
            .await
    }

    async fn resolve_at(&self, ep: &Endpoint, image: &ImageRef) -> Result<Resolved, RegistryError> {
        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        };
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let limit = self.inner.options.manifest_limit;
        let too_large = |_| RegistryError::ManifestTooLarge {
            image: image.to_string(),
            digest: reference.clone(),
            limit,
        };
        let head = self
            .send(ep, image, Method::HEAD, &path, Some(ACCEPT_MANIFESTS))
            .await?;
        let status = head.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                image: image.to_string(),
            });
        }
        if status.is_success() {
            if let Some(len) = header_u64(head.headers(), CONTENT_LENGTH.as_str()) {
                if len > limit {
                    return Err(too_large(len));
                }
            }
            let media_type = header_str(head.headers(), CONTENT_TYPE.as_str()).map(bare_media_type);
            let digest = header_str(head.headers(), DOCKER_CONTENT_DIGEST);
            if let (Some(mt), Some(raw)) = (media_type, digest) {
                if is_manifest_type(&mt) {
                    let digest = parse_digest(
                        image,
                        raw.trim(),
                        "the registry's Docker-Content-Digest header",
                    )?;
                    if let Some(want) = &image.digest {
                        if &digest != want {
                            return Err(RegistryError::DigestMismatch {
                                image: image.to_string(),
                                expected: want.clone(),
                                actual: digest,
                            });
                        }
                    }
                    let size = header_u64(head.headers(), CONTENT_LENGTH.as_str()).unwrap_or(0);
                    return Ok(Resolved {
                        digest,
                        media_type: mt,
                        size,
                    });
                }
            }
        } else if status != StatusCode::METHOD_NOT_ALLOWED && !status.is_client_error() {
            return Err(Self::status_error(
                ep,
                image,
                format!("manifest HEAD {reference}"),
                status,
            ));
        }
        // The registry gave no usable digest or type on HEAD: fetch and hash.
        let resp = self
            .send(ep, image, Method::GET, &path, Some(ACCEPT_MANIFESTS))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                image: image.to_string(),
            });
        }
        if !resp.status().is_success() {
            return Err(Self::status_error(
                ep,
                image,
                format!("manifest GET {reference}"),
                resp.status(),
            ));
        }
        let header_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).map(str::to_owned);
        let body = self
            .read_limited(resp, image, &reference, limit, too_large)
            .await?;
        let media_type = sniff_media_type(header_type.as_deref(), &body);
        if !is_manifest_type(&media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                image: image.to_string(),
                what: format!("manifest {reference}"),
                media_type,
            });
        }
        let digest = match &image.digest {
            Some(want) => {
                let actual = digest_like(want, &body);
                if &actual != want {
                    return Err(RegistryError::DigestMismatch {
                        image: image.to_string(),
                        expected: want.clone(),
                        actual,
                    });
                }
                actual
            }
            None => Digest::sha256_of(&body),
        };
        Ok(Resolved {
            digest,
            media_type,
            size: body.len() as u64,
        })
    }

    /// Fetches the manifest `digest` of `image` (at most the manifest limit),
    /// verifies the bytes against the digest, and returns them with their media type.
    pub async fn fetch_manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<(Bytes, String), RegistryError> {
        self.on_endpoints(image, |ep| async move {
            self.fetch_manifest_at(&ep, image, digest).await
        })
        .await
    }

    async fn fetch_manifest_at(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<(Bytes, String), RegistryError> {
        let path = format!("/v2/{}/manifests/{digest}", image.repository);
        let resp = self
            .send(ep, image, Method::GET, &path, Some(ACCEPT_MANIFESTS))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                image: image.pinned(digest.clone()).to_string(),
            });
        }
        if !resp.status().is_success() {
            return Err(Self::status_error(
                ep,
                image,
                format!("manifest GET {digest}"),
                resp.status(),
            ));
        }
        let header_type = header_str(resp.headers(), CONTENT_TYPE.as_str()).map(str::to_owned);
        let limit = self.inner.options.manifest_limit;
        let body = self
            .read_limited(resp, image, &digest.to_string(), limit, |_| {
                RegistryError::ManifestTooLarge {
                    image: image.to_string(),
                    digest: digest.to_string(),
                    limit,
                }
            })
            .await?;
        let actual = digest_like(digest, &body);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                expected: digest.clone(),
                actual,
            });
        }
        let media_type = sniff_media_type(header_type.as_deref(), &body);
        if !is_manifest_type(&media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                image: image.to_string(),
                what: format!("manifest {digest}"),
                media_type,
            });
        }
        Ok((body, media_type))
    }

    /// Opens the blob `digest` of `image` as a byte stream (unverified; see [`BlobStream`]).
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<BlobStream, RegistryError> {
        self.on_endpoints(image, |ep| async move {
            let path = format!("/v2/{}/blobs/{digest}", image.repository);
            let resp = self.send(&ep, image, Method::GET, &path, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(RegistryError::BlobNotFound {
                    image: image.to_string(),
                    digest: digest.clone(),
                });
            }
            if !resp.status().is_success() {
                return Err(Self::status_error(
                    &ep,
                    image,
                    format!("blob GET {digest}"),
                    resp.status(),
                ));
            }
            Ok(BlobStream::new(
                resp,
                image.to_string(),
                digest.to_string(),
                self.inner.options.stall_timeout,
            ))
        })
        .await
    }

    /// Downloads the blob `digest` into `store`, verified against digest and
    /// `size`. Concurrent calls for one digest download it once. Returns the bytes
    /// downloaded (0 when the blob was already present).
    pub async fn pull_blob(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let mut ingest = match store
            .begin(digest, size)
            .await
            .map_err(|e| store_error(image, digest, e))?
        {
            Begin::Exists => return Ok(0),
            Begin::Ingest(i) => i,
        };
        let attempts = self.inner.options.attempts.max(1);
        let mut attempt = 0;
        loop {
            ingest
                .reset()
                .await
                .map_err(|e| store_error(image, digest, e))?;
            let result: Result<(), RegistryError> = async {
                let mut stream = self.fetch_blob(image, digest).await?;
                if let (Some(len), Some(want)) = (stream.content_length(), size) {
                    if len != want {
                        return Err(RegistryError::SizeMismatch {
                            image: image.to_string(),
                            digest: digest.clone(),
                            expected: want,
                            actual: len,
                        });
                    }
                }
                while let Some(chunk) = stream.next().await {
                    ingest
                        .write(&chunk?)
                        .await
                        .map_err(|e| store_error(image, digest, e))?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt + 1 < attempts => {
                    tracing::warn!(image = %image, digest = %digest, error = %e, "blob download failed; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        let written = ingest.written();
        ingest
            .commit()
            .await
            .map_err(|e| store_error(image, digest, e))?;
        Ok(written)
    }

    /// Pulls a whole image for the configured platform: resolves the reference,
    /// stores the verified manifest(s), config and layers, and checks that the
    /// config's diff_ids match the layers.
    pub async fn pull_image(
        &self,
        store: &ContentStore,
        image: &ImageRef,
    ) -> Result<PulledImage, RegistryError> {
        let (mut pulled, manifests) = self.pull_metadata(store, image).await?;
        let layer_bytes: Vec<u64> = futures_util::stream::iter(pulled.layers.iter())
            .map(|l| self.pull_blob(store, image, &l.digest, Some(l.size)))
            .buffer_unordered(self.inner.options.layer_concurrency.max(1))
            .try_collect()
            .await?;
        pulled.fetched_bytes += layer_bytes.iter().sum::<u64>();
        pulled.fetched_bytes += self.store_manifests(store, image, manifests).await?;
        Ok(pulled)
    }

    /// Stores verified manifests (top-most last, once what they name is stored);
    /// returns the bytes written.
    pub async fn store_manifests(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        manifests: Vec<(Digest, Bytes)>,
    ) -> Result<u64, RegistryError> {
        let mut written = 0;
        for (digest, bytes) in manifests.into_iter().rev() {
            if store
                .write_blob(&digest, &bytes)
                .await
                .map_err(|e| store_error(image, &digest, e))?
            {
                written += bytes.len() as u64;
            }
        }
        Ok(written)
    }

    /// An image's metadata read back from the content store alone (no
    /// network): the manifest or index stored as `top`, the platform's
    /// manifest under an index, and the config, each checked against its
    /// digest, as [`RegistryClient::pull_metadata`] would have returned it
    /// (`fetched_bytes` 0). Used to rebuild a lost image record (see
    /// `crate::rebuild`); a missing blob is [`RegistryError::Store`] naming it.
    pub fn metadata_from_store(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        top: &Digest,
    ) -> Result<PulledImage, RegistryError> {
        let read = |digest: &Digest, limit: u64| -> Result<Vec<u8>, RegistryError> {
            let bytes = store
                .read_capped(digest, limit)
                .map_err(|e| store_error(image, digest, e))?;
            let actual = crate::content::digest_like(digest, &bytes);
            if &actual != digest {
                return Err(RegistryError::DigestMismatch {
                    image: image.to_string(),
                    expected: digest.clone(),
                    actual,
                });
            }
            Ok(bytes)
        };
        let limit = self.inner.options.manifest_limit;
        let bytes = read(top, limit)?;
        let media_type = stored_media_type(&bytes);
        let (manifest_digest, manifest) = match Manifest::parse(image, top, &bytes, &media_type)? {
            Manifest::Image(m) => (top.clone(), m),
            Manifest::Index(index) => {
                let desc = select_platform(image, &index, &self.inner.options.platform)?;
                let child = parse_digest(image, desc.digest().as_ref(), "index entry")?;
                let child_bytes = read(&child, limit)?;
                match Manifest::parse(
                    image,
                    &child,
                    &child_bytes,
                    &stored_media_type(&child_bytes),
                )? {
                    Manifest::Image(m) => (child, m),
                    Manifest::Index(_) => return Err(nested_index(image, child)),
                }
            }
        };
        let (config_digest, layer_descs) = manifest_parts(image, &manifest_digest, &manifest)?;
        let config_bytes = read(&config_digest, self.inner.options.config_limit)?;
        let (config, layers) = parse_config(image, &config_digest, &config_bytes, layer_descs)?;
        Ok(PulledImage {
            reference: image.pinned(top.clone()),
            digest: top.clone(),
            media_type,
            manifest_digest,
            manifest,
            config_digest,
            config,
            config_json: config_bytes,
            layers,
            fetched_bytes: 0,
        })
    }

    /// Everything of a pull but the layers: resolves the reference, fetches and
    /// verifies the manifest(s) and stores the config. Returns the image (its
    /// layers not yet fetched) and the manifests to store with
    /// [`RegistryClient::store_manifests`] once the layers are in.
    pub async fn pull_metadata(
        &self,
        store: &ContentStore,
        image: &ImageRef,
    ) -> Result<(PulledImage, Vec<(Digest, Bytes)>), RegistryError> {
        let resolved = self.resolve(image).await?;
        let top = resolved.digest.clone();
        let (bytes, media_type) = self.fetch_manifest(image, &top).await?;
        // Manifests are stored last, once everything they name is in the store.
        let mut manifests = vec![(top.clone(), bytes.clone())];
        let (manifest_digest, manifest) = match Manifest::parse(image, &top, &bytes, &media_type)? {
            Manifest::Image(m) => (top.clone(), m),
            Manifest::Index(index) => {
                let desc = select_platform(image, &index, &self.inner.options.platform)?;
                let child = parse_digest(image, desc.digest().as_ref(), "index entry")?;
                let (child_bytes, child_type) = self.fetch_manifest(image, &child).await?;
                manifests.push((child.clone(), child_bytes.clone()));
                match Manifest::parse(image, &child, &child_bytes, &child_type)? {
                    Manifest::Image(m) => (child, m),
                    Manifest::Index(_) => return Err(nested_index(image, child)),
                }
            }
        };
        let (config_digest, layer_descs) = manifest_parts(image, &manifest_digest, &manifest)?;
        let config_desc = manifest.config();
        let config_limit = self.inner.options.config_limit;
        if config_desc.size() > config_limit {
            return Err(RegistryError::InvalidConfig {
                image: image.to_string(),
                digest: config_digest,
                reason: format!(
                    "{} bytes is over the {config_limit}-byte limit",
                    config_desc.size()
                ),
            });
        }
        let fetched = self
            .pull_blob(store, image, &config_digest, Some(config_desc.size()))
            .await?;
        let config_bytes = store
            .read_capped(&config_digest, config_limit)
            .map_err(|e| store_error(image, &config_digest, e))?;
        let (config, layers) = parse_config(image, &config_digest, &config_bytes, layer_descs)?;
        Ok((
            PulledImage {
                reference: image.pinned(top.clone()),
                digest: top,
                media_type,
                manifest_digest,
                manifest,
                config_digest,
                config,
                config_json: config_bytes,
                layers,
                fetched_bytes: fetched,
            },
            manifests,
        ))
    }
}
