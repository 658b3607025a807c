//! The image store: pulls images (registry → content store → snapshots) and
//! keeps image records in sled (reference → digest, config, layers, last
//! used). Each layer is downloaded, hashed, decompressed, checked against its
//! diff_id and unpacked in one pass; layers shared between images are stored
//! and unpacked once. GC frees what no kept image uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use berth_core::image_ref::{Digest, ImageRef};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::layer::{apply_blob_file, apply_compressed, ChannelReader, LayerError};
use super::snapshot::{chain_ids, SnapshotError, SnapshotStore};
use super::unpack::UnpackLimits;
use crate::content::{Begin, ContentError, ContentStore};
use crate::launch::ImageRunConfig;
use crate::metrics::Metrics;
use crate::registry::{Layer, LayerCompression, PulledImage, RegistryClient, RegistryError};
use crate::state::{decode, encode, StateError};

/// Most layers an image may have (Docker's overlay2 allows 127 lowers).
pub const MAX_LAYERS: usize = 127;
/// Free space always left on the state filesystem: 256 MiB, or 5% of a
/// small filesystem.
/// Bytes a pull (or a load) leaves free on the state filesystem.
pub fn disk_reserve(path: &std::path::Path) -> u64 {
    let total = nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()))
        .unwrap_or(u64::MAX);
    (256u64 << 20).min(total / 20)
}
/// Layer download attempts (transient registry errors retry the layer).
const LAYER_ATTEMPTS: u32 = 3;

/// Why a pull or an image operation failed. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{image}: {source}")]
    Layer {
        image: String,
        source: Box<LayerError>,
    },
    #[error("{image}: {source}")]
    Snapshot {
        image: String,
        source: SnapshotError,
    },
    #[error("{image}: {source}")]
    Content { image: String, source: ContentError },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{image}: {count} layers, more than the {MAX_LAYERS} allowed")]
    TooManyLayers { image: String, count: usize },
    #[error("{image}: no space left on the state filesystem {}: needs at least {need} bytes, {free} free", path.display())]
    NoSpace {
        image: String,
        /// The state dir (whose filesystem is full).
        path: PathBuf,
        need: u64,
        free: u64,
    },
    #[error("{image}: config: {reason}")]
    InvalidConfig { image: String, reason: String },
    #[error("image {0} is not in the local store (pull it first)")]
    NotFound(String),
    #[error("{image}: layer {digest} is stored with unknown media type {media_type}")]
    UnknownLayerType {
        image: String,
        digest: Digest,
        media_type: String,
    },
    #[error("image store: {0}")]
    Internal(String),
}

impl ImageError {
    /// True when pulling again cannot help: the registry's answer is
    /// permanent ([`RegistryError::is_permanent`]), or the content is refused
    /// (a layer the applier will not unpack, a digest or size mismatch, too
    /// many layers, an unknown layer type, an image config it cannot run).
    /// Local conditions that may clear (no space yet, storage I/O, the state
    /// database) are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            ImageError::Registry(e) => e.is_permanent(),
            ImageError::Layer { source, .. } => source.is_permanent(),
            ImageError::Content { source, .. } => matches!(
                source,
                ContentError::DigestMismatch { .. }
                    | ContentError::SizeMismatch { .. }
                    | ContentError::TooLarge { .. }
            ),
            ImageError::TooManyLayers { .. }
            | ImageError::UnknownLayerType { .. }
            | ImageError::InvalidConfig { .. } => true,
            ImageError::Snapshot { .. }
            | ImageError::State(_)
            | ImageError::NoSpace { .. }
            | ImageError::NotFound(_)
            | ImageError::Internal(_) => false,
        }
    }
}

impl ImageError {
    /// True when the state filesystem is full: the pre-pull check, or
    /// `ENOSPC`/`EDQUOT` from any write of the pull (content store,
    /// snapshot, state database). The API answers 507 for these.
    pub fn is_no_space(&self) -> bool {
        matches!(self, ImageError::NoSpace { .. }) || crate::state::is_no_space(self)
    }
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference it was last pulled as (pinned form in `digest`).
    pub reference: String,
    /// What the reference resolved to (an index digest for multi-platform images).
    pub digest: Digest,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Bottom-most first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    pub run: ImageRunConfig,
    pub os: String,
    pub architecture: String,
    /// Compressed bytes of all layers.
    pub size: u64,
    pub pulled_at: String,
    pub last_used: String,
}

/// Progress of a pull, for progress bars and plain log lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum PullEvent {
    Resolved {
        reference: String,
        digest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    Layer {
        digest: Digest,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: Digest,
        cached: bool,
    },
    Done {
        digest: Digest,
        fetched_bytes: u64,
        seconds: f64,
    },
}

/// What GC removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
    /// Archived container logs removed (see `crate::logs::LogArchive::gc`).
    #[serde(default)]
    pub log_archives_removed: usize,
    /// Everything freed, logs included.
    pub bytes_freed: u64,
}

type Progress = Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>;

fn send(progress: &Progress, event: PullEvent) {
    if let Some(tx) = progress {
        let _ = tx.send(event);
    }
}

/// The image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state_dir: PathBuf,
    content: ContentStore,
    snapshots: SnapshotStore,
    registry: RegistryClient,
    records: sled::Tree,
    metrics: Metrics,
    limits: UnpackLimits,
    concurrency: usize,
    /// Pulls hold it shared, GC exclusively, so GC never frees a blob a pull
    /// has fetched but not yet recorded.
    gc_lock: tokio::sync::RwLock<()>,
}

fn record_key(digest: &Digest) -> Vec<u8> {
    format!("d/{digest}").into_bytes()
}

fn ref_key(reference: &str) -> Vec<u8> {
    format!("r/{reference}").into_bytes()
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(u64::MAX)
}

/// Fraction of the filesystem holding `path` that is in use.
pub fn used_fraction(path: &std::path::Path) -> f64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) if s.blocks() > 0 => 1.0 - s.blocks_available() as f64 / s.blocks() as f64,
        _ => 0.0,
    }
}

impl ImageStore {
    /// Opens the stores under `state_dir` (`blobs/`, `layers/`) and the
    /// `images` tree.
    pub fn open(
        state_dir: PathBuf,
        records: sled::Tree,
        registry: RegistryClient,
        metrics: Metrics,
    ) -> Result<ImageStore, ImageError> {
        let content = ContentStore::open(&state_dir).map_err(|source| ImageError::Content {
            image: String::new(),
            source,
        })?;
        let snapshots = SnapshotStore::open(state_dir.join("layers")).map_err(|source| {
            ImageError::Snapshot {
                image: String::new(),
                source,
            }
        })?;
        let concurrency = registry.options().layer_concurrency.max(1);
        Ok(ImageStore {
            inner: Arc::new(Inner {
                state_dir,
                content,
                snapshots,
                registry,
                records,
                metrics,
                limits: UnpackLimits::default(),
                concurrency,
                gc_lock: tokio::sync::RwLock::new(()),
            }),
        })
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.inner.registry
    }

    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.inner.snapshots
    }

    /// Overlay lower dirs of an image, top-most first.
    pub fn lowerdirs(&self, rec: &ImageRecord) -> Vec<PathBuf> {
        rec.layers
            .iter()
            .rev()
            .map(|l| self.inner.snapshots.path(&l.chain_id))
            .collect()
    }

    /// True when every layer of the image is unpacked.
    pub fn is_complete(&self, rec: &ImageRecord) -> bool {
        rec.layers
            .iter()
            .all(|l| self.inner.snapshots.exists(&l.chain_id))
    }

    /// The record of an image digest.
    pub fn get(&self, digest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        let key = record_key(digest);
        match self
            .inner
            .records
            .get(&key)
            .map_err(|e| ImageError::Internal(e.to_string()))?
        {
            Some(v) => Ok(Some(decode("images", &digest.to_string(), &v)?)),
            None => Ok(None),
        }
    }

    /// Finds a local image by reference (as pulled) or digest.
    pub fn find(&self, image: &ImageRef) -> Result<Option<ImageRecord>, ImageError> {
        if let Some(d) = &image.digest {
            return self.get(d);
        }
        let key = ref_key(&image.to_string());
        match self
            .inner
            .records
            .get(&key)
            .map_err(|e| ImageError::Internal(e.to_string()))?
        {
            Some(v) => {
                let digest: Digest = String::from_utf8_lossy(&v)
                    .parse()
                    .map_err(|e| ImageError::Internal(format!("bad ref record: {e}")))?;
                self.get(&digest)
            }
            None => Ok(None),
        }
    }

    /// Every image record.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut out = Vec::new();
        for item in self.inner.records.scan_prefix(b"d/") {
            let (k, v) = item.map_err(|e| ImageError::Internal(e.to_string()))?;
            out.push(decode("images", &String::from_utf8_lossy(&k), &v)?);
        }
        Ok(out)
    }

    /// Marks an image as used now (kept longer by GC policies, shown in `images`).
    pub fn touch(&self, digest: &Digest) -> Result<(), ImageError> {
        if let Some(mut rec) = self.get(digest)? {
            rec.last_used = crate::now_rfc3339();
            self.put(&rec)?;
        }
        Ok(())
    }

    /// Gives the record of `rec` the reference `reference` (a loaded image's
    /// own name) and forgets the reference `drop` it was pulled as.
    pub(crate) fn retag(
        &self,
        rec: &ImageRecord,
        reference: &str,
        drop: &str,
    ) -> Result<ImageRecord, ImageError> {
        let mut rec = rec.clone();
        rec.reference = reference.to_string();
        self.inner
            .records
            .remove(ref_key(drop))
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        self.put(&rec)?;
        Ok(rec)
    }

    /// Stores an image record (a pull's last step; tests put records of
    /// layerless images directly).
    pub(crate) fn put(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        // A digest-only pull does not hide the tag an image was known by.
        let mut rec = rec.clone();
        if let Some(old) = self.get(&rec.digest)? {
            let has_tag = |r: &str| ImageRef::parse(r).map(|i| i.tag.is_some()).unwrap_or(false);
            if has_tag(&old.reference) && !has_tag(&rec.reference) {
                rec.reference = old.reference;
            }
        }
        let rec = &rec;
        let bytes = encode("images", rec)?;
        let tree = &self.inner.records;
        tree.insert(record_key(&rec.digest), bytes)
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        tree.insert(ref_key(&rec.reference), rec.digest.to_string().as_bytes())
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        tree.flush()
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Rebuilds the lost record of a pinned image from what a pull left in
    /// the content store (manifests and config; see
    /// [`RegistryClient::metadata_from_store`]) and stores it; no network.
    /// `pulled_at` is the config blob's modification time when readable.
    /// [`ImageError::NotFound`] when `image` has no digest.
    pub fn rebuild_record(&self, image: &ImageRef) -> Result<ImageRecord, ImageError> {
        let Some(top) = &image.digest else {
            return Err(ImageError::NotFound(image.to_string()));
        };
        let inner = &self.inner;
        let pulled = inner
            .registry
            .metadata_from_store(&inner.content, image, top)?;
        let name = image.to_string();
        let run = run_config(&name, &pulled)?;
        let diff_ids: Vec<Digest> = pulled.layers.iter().map(|l| l.diff_id.clone()).collect();
        let pulled_at = std::fs::metadata(inner.content.path(&pulled.config_digest))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| {
                time::OffsetDateTime::from(t)
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(crate::now_rfc3339);
        let rec = record_of(
            name,
            &pulled,
            run,
            chain_ids(&diff_ids),
            pulled_at,
            crate::now_rfc3339(),
        );
        self.put(&rec)?;
        Ok(rec)
    }

    /// Returns the local image when it is complete and pinned (or `always` is
    /// false and the tag was pulled before); otherwise pulls.
    pub async fn ensure(
        &self,
        image: &ImageRef,
        always: bool,
        progress: Progress,
    ) -> Result<ImageRecord, ImageError> {
        if !always || image.digest.is_some() {
            if let Some(rec) = self.find(image)? {
                if self.is_complete(&rec) {
                    return Ok(rec);
                }
            }
        }
        self.pull(image, progress).await
    }

    /// Pulls an image: every byte verified, layers unpacked into snapshots.
    pub async fn pull(
        &self,
        image: &ImageRef,
        progress: Progress,
    ) -> Result<ImageRecord, ImageError> {
        let started = Instant::now();
        let result = self.pull_inner(image, &progress).await;
        let registry = image.registry.as_str();
        match &result {
            Ok((_, fetched)) => {
                self.inner.metrics.image_pull_bytes.inc_by(*fetched);
                self.inner
                    .metrics
                    .image_pull_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(ImageError::Registry(e)) => {
                self.inner.metrics.registry_error(registry, e.kind());
            }
            Err(_) => {}
        }
        let (rec, fetched) = result?;
        send(
            &progress,
            PullEvent::Done {
                digest: rec.digest.clone(),
                fetched_bytes: fetched,
                seconds: started.elapsed().as_secs_f64(),
            },
        );
        Ok(rec)
    }

    async fn pull_inner(
        &self,
        image: &ImageRef,
        progress: &Progress,
    ) -> Result<(ImageRecord, u64), ImageError> {
        let _shared = self.inner.gc_lock.read().await;
        let inner = &self.inner;
        let (pulled, manifests) = inner.registry.pull_metadata(&inner.content, image).await?;
        let name = image.to_string();
        if pulled.layers.len() > MAX_LAYERS {
            return Err(ImageError::TooManyLayers {
                image: name,
                count: pulled.layers.len(),
            });
        }
        // Read before any layer is fetched: a config Berth cannot run is
        // refused without downloading the image.
        let run = run_config(&name, &pulled)?;
        let diff_ids: Vec<Digest> = pulled.layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diff_ids);
        let need: u64 = pulled
            .layers
            .iter()
            .zip(&chains)
            .filter(|(l, c)| !inner.snapshots.exists(c) && !inner.content.has(&l.digest))
            .map(|(l, _)| l.size)
            .sum();
        let free = free_bytes(&inner.state_dir);
        let reserve = disk_reserve(&inner.state_dir);
        if need.saturating_add(reserve) > free {
            return Err(ImageError::NoSpace {
                image: name,
                path: inner.state_dir.clone(),
                need: need + reserve,
                free,
            });
        }
        let mut limits = inner.limits;
        limits.max_total_bytes = limits.max_total_bytes.min(free.saturating_sub(reserve));
        send(
            progress,
            PullEvent::Resolved {
                reference: name.clone(),
                digest: pulled.digest.clone(),
                layers: pulled
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
            },
        );
        let mut layer_futures = Vec::with_capacity(pulled.layers.len());
        for (layer, chain) in pulled.layers.iter().zip(chains.iter()) {
            layer_futures.push(self.ensure_layer(image, layer, chain, &limits, progress));
        }
        // Every layer runs to its end (success or cleanup) even when another
        // fails, so no partial snapshot is left behind by a cancelled future.
        let results: Vec<Result<u64, ImageError>> = futures_util::stream::iter(layer_futures)
            .buffer_unordered(inner.concurrency)
            .collect()
            .await;
        let mut fetched = Vec::with_capacity(results.len());
        for r in results {
            fetched.push(r?);
        }
        let mut fetched_bytes = pulled.fetched_bytes + fetched.iter().sum::<u64>();
        fetched_bytes += inner
            .registry
            .store_manifests(&inner.content, image, manifests)
            .await?;
        let now = crate::now_rfc3339();
        let rec = record_of(image.to_string(), &pulled, run, chains, now.clone(), now);
        self.put(&rec)?;
        Ok((rec, fetched_bytes))
    }

    /// Makes sure one layer's snapshot exists; returns the bytes downloaded.
    async fn ensure_layer(
        &self,
        image: &ImageRef,
        layer: &Layer,
        chain: &Digest,
        limits: &UnpackLimits,
        progress: &Progress,
    ) -> Result<u64, ImageError> {
        let inner = &self.inner;
        let _lock = inner.snapshots.lock(chain).await;
        if inner.snapshots.exists(chain) {
            send(
                progress,
                PullEvent::LayerDone {
                    digest: layer.digest.clone(),
                    cached: true,
                },
            );
            return Ok(0);
        }
        let mut attempt = 0;
        loop {
            match self
                .fetch_and_unpack(image, layer, chain, limits, progress)
                .await
            {
                Ok(n) => {
                    send(
                        progress,
                        PullEvent::LayerDone {
                            digest: layer.digest.clone(),
                            cached: n == 0,
                        },
                    );
                    return Ok(n);
                }
                Err(ImageError::Registry(e))
                    if e.is_transient() && attempt + 1 < LAYER_ATTEMPTS =>
                {
                    tracing::warn!(image = %image, layer = %layer.digest, error = %e, "layer download failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_and_unpack(
        &self,
        image: &ImageRef,
        layer: &Layer,
        chain: &Digest,
        limits: &UnpackLimits,
        progress: &Progress,
    ) -> Result<u64, ImageError> {
        let inner = &self.inner;
        let name = image.to_string();
        let snap_err = |source| ImageError::Snapshot {
            image: name.clone(),
            source,
        };
        let tmp = inner.snapshots.prepare(chain).map_err(snap_err)?;
        // Removes the prepared dir if this future is dropped half-way.
        let mut guard = TmpGuard {
            snapshots: inner.snapshots.clone(),
            path: Some(tmp.clone()),
        };
        let result = async {
            let ingest = match inner.content.begin(&layer.digest, Some(layer.size)).await {
                Ok(Begin::Exists) => None,
                Ok(Begin::Ingest(i)) => Some(i),
                Err(source) => {
                    return Err(ImageError::Content {
                        image: name.clone(),
                        source,
                    })
                }
            };
            let Some(mut ingest) = ingest else {
                // The blob is stored and verified: unpack it from disk.
                let path = inner.content.path(&layer.digest);
                let (l, tmp2, limits) = (layer.clone(), tmp.clone(), *limits);
                tokio::task::spawn_blocking(move || {
                    apply_blob_file(&path, l.compression, &l.digest, &l.diff_id, &tmp2, &limits)
                })
                .await
                .map_err(|e| ImageError::Internal(e.to_string()))?
                .map_err(|source| ImageError::Layer {
                    image: name.clone(),
                    source: Box::new(source),
                })?;
                return Ok(0);
            };
            // One pass: download → hash (content store) → decompress → diff_id → unpack.
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
            let (l, tmp2, limits) = (layer.clone(), tmp.clone(), *limits);
            let unpacker = tokio::task::spawn_blocking(move || {
                apply_compressed(
                    ChannelReader::new(rx),
                    l.compression,
                    &l.digest,
                    &l.diff_id,
                    &tmp2,
                    &limits,
                )
            });
            let mut stream = inner.registry.fetch_blob(image, &layer.digest).await?;
            let mut done = 0u64;
            let mut last_report = 0u64;
            let mut download: Result<(), ImageError> = Ok(());
            let mut unpacker_stopped = false;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        download = Err(e.into());
                        break;
                    }
                };
                if let Err(source) = ingest.write(&chunk).await {
                    download = Err(ImageError::Content {
                        image: name.clone(),
                        source,
                    });
                    break;
                }
                done += chunk.len() as u64;
                if done - last_report >= 1 << 20 || done == layer.size {
                    last_report = done;
                    send(
                        progress,
                        PullEvent::Layer {
                            digest: layer.digest.clone(),
                            done,
                            total: layer.size,
                        },
                    );
                }
                if tx.send(chunk).await.is_err() {
                    unpacker_stopped = true;
                    break; // the unpacker stopped: its error says why
                }
            }
            drop(tx);
            let unpacked = unpacker
                .await
                .map_err(|e| ImageError::Internal(e.to_string()))?;
            download?;
            let layer_err = |source| ImageError::Layer {
                image: name.clone(),
                source: Box::new(source),
            };
            // Writing the snapshot failed (a full disk) and cut the download
            // short: that is the reason, not the blob's size.
            if unpacker_stopped {
                if let Err(e) = &unpacked {
                    if !e.is_permanent() {
                        return unpacked.map(|_| 0).map_err(layer_err);
                    }
                }
            }
            // The digest check comes first: bytes that are not the blob are
            // reported as such, not as a tar error.
            ingest
                .commit()
                .await
                .map_err(|source| ImageError::Content {
                    image: name.clone(),
                    source,
                })?;
            unpacked.map_err(layer_err)?;
            Ok(done)
        }
        .await;
        guard.path = None;
        match result {
            Ok(n) => {
                inner.snapshots.commit(&tmp, chain).map_err(snap_err)?;
                Ok(n)
            }
            Err(e) => {
                if let Err(cleanup) = inner.snapshots.discard(&tmp) {
                    tracing::error!(error = %cleanup, "could not remove a partial snapshot");
                }
                Err(e)
            }
        }
    }

    /// Removes images whose digest is not in `keep`, then every blob and
    /// snapshot no kept image references.
    pub async fn gc(&self, keep: &BTreeSet<Digest>) -> Result<GcReport, ImageError> {
        let _exclusive = self.inner.gc_lock.write().await;
        let inner = &self.inner;
        let mut report = GcReport::default();
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut chains: BTreeSet<Digest> = BTreeSet::new();
        let mut refs_to_drop = Vec::new();
        let records = self.list()?;
        let by_digest: BTreeMap<Digest, &ImageRecord> =
            records.iter().map(|r| (r.digest.clone(), r)).collect();
        for rec in &records {
            if keep.contains(&rec.digest) {
                blobs.extend([
                    rec.digest.clone(),
                    rec.manifest_digest.clone(),
                    rec.config_digest.clone(),
                ]);
                blobs.extend(rec.layers.iter().map(|l| l.digest.clone()));
                chains.extend(rec.layers.iter().map(|l| l.chain_id.clone()));
            } else {
                refs_to_drop.push(rec.clone());
            }
        }
        for rec in refs_to_drop {
            inner
                .records
                .remove(record_key(&rec.digest))
                .map_err(|e| ImageError::Internal(e.to_string()))?;
            report
                .images_removed
                .push(format!("{}@{}", rec.reference, rec.digest));
        }
        // Reference keys pointing at removed images go too.
        for item in inner.records.scan_prefix(b"r/") {
            let (k, v) = item.map_err(|e| ImageError::Internal(e.to_string()))?;
            let digest: Option<Digest> = String::from_utf8_lossy(&v).parse().ok();
            if digest
                .as_ref()
                .is_none_or(|d| !keep.contains(d) || !by_digest.contains_key(d))
            {
                inner
                    .records
                    .remove(k)
                    .map_err(|e| ImageError::Internal(e.to_string()))?;
            }
        }
        inner
            .records
            .flush()
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        let content_err = |source| ImageError::Content {
            image: "gc".into(),
            source,
        };
        for blob in inner.content.list().map_err(content_err)? {
            if !blobs.contains(&blob.digest)
                && inner.content.delete(&blob.digest).map_err(content_err)?
            {
                report.blobs_removed += 1;
                report.bytes_freed += blob.size;
            }
        }
        for chain in inner
            .snapshots
            .list()
            .map_err(|source| ImageError::Snapshot {
                image: "gc".into(),
                source,
            })?
        {
            if !chains.contains(&chain)
                && inner
                    .snapshots
                    .remove(&chain)
                    .map_err(|source| ImageError::Snapshot {
                        image: "gc".into(),
                        source,
                    })?
            {
                report.snapshots_removed += 1;
            }
        }
        Ok(report)
    }
}

/// Removes a prepared snapshot dir when a pull is abandoned mid-way.
struct TmpGuard {
    snapshots: SnapshotStore,
    path: Option<PathBuf>,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = self.snapshots.discard(&p) {
                tracing::error!(error = %e, "could not remove an abandoned snapshot");
            }
        }
    }
}

/// The run config of a pulled image's config blob; [`ImageError::InvalidConfig`]
/// names `image` when Berth cannot run it.
fn run_config(image: &str, pulled: &PulledImage) -> Result<ImageRunConfig, ImageError> {
    ImageRunConfig::from_config_json(&pulled.config_json).map_err(|e| ImageError::InvalidConfig {
        image: image.to_string(),
        reason: e.to_string(),
    })
}

/// The record of `pulled` under `reference` (a pull's, or one rebuilt from
/// the content store); `chains` are its layers' chain ids, bottom first.
fn record_of(
    reference: String,
    pulled: &PulledImage,
    run: ImageRunConfig,
    chains: Vec<Digest>,
    pulled_at: String,
    last_used: String,
) -> ImageRecord {
    ImageRecord {
        reference,
        digest: pulled.digest.clone(),
        manifest_digest: pulled.manifest_digest.clone(),
        config_digest: pulled.config_digest.clone(),
        layers: pulled
            .layers
            .iter()
            .zip(chains)
            .map(|(l, chain_id)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                chain_id,
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        run,
        os: pulled.config.os().to_string(),
        architecture: pulled.config.architecture().to_string(),
        size: pulled.layers.iter().map(|l| l.size).sum(),
        pulled_at,
        last_used,
    }
}

/// Compression of a stored layer media type.
pub fn compression_of(media_type: &str) -> Option<LayerCompression> {
    crate::registry::layer_compression(media_type)
}

#[cfg(test)]
mod classify_tests {
    //! Which pull errors fail a rollout at once (permanent) and which the
    //! reconciler retries with backoff.
    use super::*;
    use crate::image::unpack::UnpackError;

    fn reqwest_error() -> reqwest::Error {
        reqwest::Client::new()
            .get("not a url")
            .build()
            .expect_err("a relative URL is refused")
    }

    #[test]
    fn permanent_and_transient_table() {
        let d = Digest::sha256_of(b"x");
        let image = || "r/web:1".to_string();
        let status = |status| RegistryError::Status {
            registry: "r".into(),
            image: image(),
            what: "manifest GET 1".into(),
            status,
        };
        let layer = |source| ImageError::Layer {
            image: image(),
            source: Box::new(source),
        };
        let io = || std::io::Error::other("disk");
        let cases: Vec<(&str, ImageError, bool)> = vec![
            (
                "tag or manifest 404",
                RegistryError::NotFound { image: image() }.into(),
                true,
            ),
            (
                "blob 404",
                RegistryError::BlobNotFound {
                    image: image(),
                    digest: d.clone(),
                }
                .into(),
                true,
            ),
            (
                "a Helm chart's config",
                RegistryError::UnsupportedMediaType {
                    image: image(),
                    what: format!("the config of manifest {d}"),
                    media_type: "application/vnd.cncf.helm.config.v1+json".into(),
                }
                .into(),
                true,
            ),
            (
                "an index without linux/amd64",
                RegistryError::NoMatchingPlatform {
                    image: image(),
                    wanted: "linux/amd64".into(),
                    available: "linux/arm64".into(),
                }
                .into(),
                true,
            ),
            (
                "invalid manifest",
                RegistryError::InvalidManifest {
                    image: image(),
                    digest: d.clone(),
                    reason: "no layers".into(),
                }
                .into(),
                true,
            ),
            (
                "content mismatch",
                RegistryError::DigestMismatch {
                    image: image(),
                    expected: d.clone(),
                    actual: d.clone(),
                }
                .into(),
                true,
            ),
            (
                "access denied",
                RegistryError::Unauthorized {
                    registry: "r".into(),
                    image: image(),
                    reason: "denied".into(),
                }
                .into(),
                true,
            ),
            ("HTTP 400", status(400).into(), true),
            ("HTTP 403", status(403).into(), true),
            ("HTTP 408", status(408).into(), false),
            ("HTTP 429", status(429).into(), false),
            ("HTTP 500", status(500).into(), false),
            ("HTTP 503", status(503).into(), false),
            (
                "network error",
                RegistryError::Unreachable {
                    registry: "r".into(),
                    image: image(),
                    source: reqwest_error(),
                }
                .into(),
                false,
            ),
            (
                "stalled body",
                RegistryError::Stalled {
                    image: image(),
                    digest: d.to_string(),
                    secs: 30,
                }
                .into(),
                false,
            ),
            (
                "token server down",
                RegistryError::TokenRequest {
                    registry: "r".into(),
                    image: image(),
                    reason: "503".into(),
                }
                .into(),
                false,
            ),
            (
                "a cut transfer",
                RegistryError::SizeMismatch {
                    image: image(),
                    digest: d.clone(),
                    expected: 10,
                    actual: 4,
                }
                .into(),
                false,
            ),
            (
                "an oversized blob",
                RegistryError::SizeMismatch {
                    image: image(),
                    digest: d.clone(),
                    expected: 4,
                    actual: 10,
                }
                .into(),
                true,
            ),
            (
                "a layer entry the applier refuses",
                layer(LayerError::Unpack {
                    digest: d.clone(),
                    source: UnpackError::InvalidPath {
                        path: "../etc".into(),
                        reason: "climbs out".into(),
                    },
                }),
                true,
            ),
            (
                "a layer that does not decompress",
                layer(LayerError::Decompress {
                    digest: d.clone(),
                    source: io(),
                }),
                true,
            ),
            (
                "a wrong diff_id",
                layer(LayerError::DiffIdMismatch {
                    digest: d.clone(),
                    expected: d.clone(),
                    actual: d.clone(),
                }),
                true,
            ),
            (
                "writing the snapshot failed",
                layer(LayerError::Unpack {
                    digest: d.clone(),
                    source: UnpackError::Io {
                        path: "a".into(),
                        op: "write",
                        source: io(),
                    },
                }),
                false,
            ),
            (
                "too many layers",
                ImageError::TooManyLayers {
                    image: image(),
                    count: 500,
                },
                true,
            ),
            (
                "an image config Docker would refuse",
                ImageError::InvalidConfig {
                    image: image(),
                    reason: "Healthcheck.Test is empty".into(),
                },
                true,
            ),
            (
                "not enough disk yet",
                ImageError::NoSpace {
                    image: image(),
                    path: "/var/lib/berth".into(),
                    need: 10,
                    free: 1,
                },
                false,
            ),
            (
                "content store I/O",
                ImageError::Content {
                    image: image(),
                    source: ContentError::Io {
                        op: "write",
                        path: "/x".into(),
                        source: io(),
                    },
                },
                false,
            ),
        ];
        for (name, err, permanent) in cases {
            assert_eq!(err.is_permanent(), permanent, "{name}: {err}");
            if let ImageError::Registry(e) = &err {
                // The client's own quick retries never cover a permanent error.
                assert!(!(e.is_transient() && e.is_permanent()), "{name}");
            }
        }
    }

    #[test]
    fn a_non_image_says_what_it_is() {
        let e = RegistryError::UnsupportedMediaType {
            image: "r/chart:1".into(),
            what: "the config of manifest sha256:ab".into(),
            media_type: "application/vnd.cncf.helm.config.v1+json".into(),
        };
        assert_eq!(
            e.to_string(),
            "image r/chart:1: the config of manifest sha256:ab has unsupported media type \
             `application/vnd.cncf.helm.config.v1+json` (a Helm chart, not a container image)"
        );
    }
}
