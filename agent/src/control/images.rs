//! Image commands: pull (with progress), list, and GC with the keep set
//! (images of running containers and of the retained revisions), which also
//! prunes the log archive.

use berth_core::vocab::EventKind;
use std::collections::BTreeSet;

use berth_core::api::ImageView;
use berth_core::image_ref::{Digest, ImageRef};

use super::{blocking, Agent, AgentError, RETAINED_REVISIONS};
use crate::image::store::{GcReport, ImageRecord, PullEvent};
use crate::labels::LABEL_IMAGE;

/// GC runs by itself when the state filesystem is fuller than this.
pub const AUTO_GC_USED_FRACTION: f64 = 0.90;

impl Agent {
    /// Loads the images of the archive at `path` (see
    /// [`crate::image::archive`]): each is pulled from a loopback server of
    /// the archive through the verified pull path, then recorded under its
    /// own name, or `tag` (an archive of one image only). Returns the records.
    pub async fn load(
        &self,
        path: &std::path::Path,
        tag: Option<&str>,
    ) -> Result<Vec<ImageRecord>, AgentError> {
        use crate::image::archive::Archive;
        let scratch = self.config.state_dir.join("tmp");
        let reserve = crate::image::store::disk_reserve(&self.config.state_dir);
        let p = path.to_path_buf();
        let archive = blocking("unpacking an image archive", move || {
            Archive::unpack(&p, &scratch, reserve)
        })
        .await??;
        if tag.is_some() && archive.images.len() != 1 {
            return Err(AgentError::BadRequest(format!(
                "--tag names one image; the archive holds {}",
                archive.images.len()
            )));
        }
        let names: Vec<ImageRef> = archive
            .images
            .iter()
            .map(|img| {
                let name = tag.map(String::from).or(img.name.clone()).ok_or_else(|| {
                    AgentError::BadRequest(format!(
                        "the archive does not name image {} (no reference in its index): load it with --tag NAME:TAG",
                        img.digest
                    ))
                })?;
                let r = ImageRef::parse(&name)?;
                if r.digest.is_some() || name.starts_with("sha256:") {
                    return Err(AgentError::BadRequest(format!(
                        "{name}: a loaded image is named REPOSITORY[:TAG]; its digest comes from its content"
                    )));
                }
                Ok(r)
            })
            .collect::<Result<_, AgentError>>()?;
        let archive = std::sync::Arc::new(archive);
        let served = archive.clone().serve().await?;
        let mut out = Vec::new();
        for (img, name) in archive.images.iter().zip(names) {
            let from = ImageRef::parse(&format!("{}/load:{}", served.addr, img.served_tag))?;
            let rec = self.images.pull(&from, None).await.map_err(|e| {
                // The loopback server is an implementation detail: the
                // error names the image in the archive and its digest.
                let text = e
                    .to_string()
                    .replace(&from.to_string(), &format!("{name} in the archive"));
                match e {
                    crate::image::store::ImageError::NoSpace { .. } => {
                        AgentError::Image(Box::new(e))
                    }
                    _ => AgentError::Archive(crate::image::archive::ArchiveError::Format(text)),
                }
            })?;
            let rec = self
                .images
                .retag(&rec, &name.to_string(), &from.to_string())
                .map_err(Box::new)?;
            self.emit(
                EventKind::ImageLoaded,
                None,
                format!("{} as {} (from an archive)", rec.reference, rec.digest),
            );
            out.push(rec);
        }
        drop(served);
        Ok(out)
    }

    /// Writes an OCI image layout tar of the stored image `reference` (a tag
    /// as pulled or loaded, or a digest) into `out` (a file the caller
    /// streams and removes). Returns the image's record.
    pub async fn save(
        &self,
        reference: &str,
        out: &std::path::Path,
    ) -> Result<ImageRecord, AgentError> {
        let image = ImageRef::parse(reference)?;
        let rec = self
            .images
            .find(&image)?
            .ok_or_else(|| AgentError::NotFound {
                what: format!("image {reference} in the agent's store"),
            })?;
        let content = self.images.content();
        let mut digests = vec![
            rec.digest.clone(),
            rec.manifest_digest.clone(),
            rec.config_digest.clone(),
        ];
        digests.extend(rec.layers.iter().map(|l| l.digest.clone()));
        let mut blobs = Vec::new();
        for d in digests {
            if !content.has(&d) {
                return Err(AgentError::Conflict(format!(
                    "blob {d} of {} is no longer stored (collected by GC?): pull the image again, then save",
                    rec.reference
                )));
            }
            blobs.push((d.clone(), content.path(&d)));
        }
        let top_path = content.path(&rec.digest);
        let top = std::fs::read(&top_path).map_err(|source| AgentError::SaveIo {
            path: top_path,
            source,
        })?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&top)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(String::from))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let tag = ImageRef::parse(&rec.reference).ok().and_then(|r| r.tag);
        let (reference, out_path, top_len) =
            (rec.reference.clone(), out.to_path_buf(), top.len() as u64);
        let top_digest = rec.digest.clone();
        let shown = out.to_path_buf();
        blocking("writing an image archive", move || {
            let f = std::fs::File::create(&out_path)?;
            crate::image::archive::write_layout(
                std::io::BufWriter::new(f),
                &reference,
                tag.as_deref(),
                &top_digest,
                &media_type,
                top_len,
                &blobs,
            )?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
        })
        .await?
        .map_err(|source| AgentError::SaveIo {
            path: shown,
            source,
        })?;
        Ok(rec)
    }

    /// Pulls an image by reference, reporting progress on `progress`.
    pub async fn pull(
        &self,
        reference: &str,
        progress: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<ImageRecord, AgentError> {
        let image = ImageRef::parse(reference)?;
        let rec = self.images.pull(&image, progress).await.map_err(Box::new)?;
        self.emit(
            EventKind::ImagePulled,
            None,
            format!("{} as {}", rec.reference, rec.digest),
        );
        self.maybe_auto_gc(Some(&rec.digest)).await;
        Ok(rec)
    }

    /// Runs GC when the state filesystem passes the threshold; `protect` (the
    /// image just pulled) is kept even when nothing uses it yet.
    pub async fn maybe_auto_gc(&self, protect: Option<&Digest>) {
        let used = crate::image::store::used_fraction(&self.config.state_dir);
        if used < AUTO_GC_USED_FRACTION {
            return;
        }
        let result = async {
            let mut keep = self.keep_set().await?;
            keep.extend(protect.cloned());
            let mut report = self.images.gc(&keep).await?;
            let logs = self.gc_logs().await?;
            report.log_archives_removed = logs.containers;
            report.bytes_freed += logs.bytes;
            Ok::<_, AgentError>(report)
        }
        .await;
        match result {
            Ok(r) if r.bytes_freed == 0 && r.images_removed.is_empty() => {
                tracing::debug!(used, "disk check: nothing for GC to free");
            }
            Ok(r) => self.emit(
                EventKind::Gc,
                None,
                format!(
                    "disk {:.0}% full: removed {} images, {} blobs, {} snapshots",
                    used * 100.0,
                    r.images_removed.len(),
                    r.blobs_removed,
                    r.snapshots_removed
                ),
            ),
            Err(e) => tracing::warn!(error = %e, "automatic GC failed"),
        }
    }

    /// Digests that must survive GC: images of every container on disk and
    /// of the last [`RETAINED_REVISIONS`] revisions (so a rollback needs no pull).
    pub async fn keep_set(&self) -> Result<BTreeSet<Digest>, AgentError> {
        let mut keep = BTreeSet::new();
        for c in self.list_containers().await? {
            if let Some(img) = c.labels.get(LABEL_IMAGE) {
                if let Some(d) = ImageRef::parse(img).ok().and_then(|r| r.digest) {
                    keep.insert(d);
                }
            }
        }
        let revisions = self.store().revisions()?;
        for rec in revisions.iter().rev().take(RETAINED_REVISIONS) {
            keep.extend(
                rec.info
                    .digests
                    .values()
                    .filter_map(|d| d.parse::<Digest>().ok()),
            );
        }
        Ok(keep)
    }

    /// Frees every blob and snapshot no kept image uses, and prunes the
    /// log archive (see [`Agent::gc_logs`]).
    pub async fn gc(&self) -> Result<GcReport, AgentError> {
        let keep = self.keep_set().await?;
        let mut report = self.images.gc(&keep).await.map_err(Box::new)?;
        let logs = self.gc_logs().await?;
        report.log_archives_removed = logs.containers;
        report.bytes_freed += logs.bytes;
        Ok(report)
    }

    /// Applies the log archive's retention to every service and drops the
    /// archives of services that neither a retained revision nor a
    /// container on disk names any more.
    pub async fn gc_logs(&self) -> Result<crate::logs::PruneReport, AgentError> {
        let mut services: BTreeSet<String> = self
            .list_containers()
            .await?
            .iter()
            .filter_map(|c| c.labels.get(crate::labels::LABEL_SERVICE).cloned())
            .collect();
        let revisions = self.store().revisions()?;
        for rec in revisions.iter().rev().take(RETAINED_REVISIONS) {
            services.extend(rec.info.services.iter().cloned());
        }
        let archive = self.log_archive.clone();
        super::blocking("removing log archives", move || archive.gc(&services)).await
    }

    /// The local images.
    pub async fn image_views(&self) -> Result<Vec<ImageView>, AgentError> {
        let keep = self.keep_set().await?;
        let mut out: Vec<ImageView> = self
            .images
            .list()
            .map_err(Box::new)?
            .into_iter()
            .map(|r| ImageView {
                in_use: keep.contains(&r.digest),
                // `repo:tag` when there is a tag; the digest has its own column.
                reference: match ImageRef::parse(&r.reference) {
                    Ok(i) if i.tag.is_some() => ImageRef { digest: None, ..i }.to_string(),
                    _ => r.reference,
                },
                digest: r.digest.to_string(),
                size: r.size,
                layers: r.layers.len(),
                pulled_at: r.pulled_at,
                last_used: r.last_used,
            })
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}
