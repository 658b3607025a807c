//! Volume commands: list (size, users, creation), remove (refused while the
//! current revision or a container on disk uses the volume), and the apply
//! check that an image `VOLUME` kept as a volume has one writer — core
//! validates manifest volumes, but only the agent sees image configs.

use berth_core::vocab::EventKind;
use std::collections::{BTreeMap, BTreeSet};

use berth_core::api::VolumeView;
use berth_core::image_ref::ImageRef;
use berth_core::manifest::{Manifest, Problem, Service, SourceFiles, VolumeSource};

use super::{pinned_image, Agent, AgentError};
use crate::labels::{stored_spec, LABEL_SERVICE, LABEL_VOLUMES};
use crate::runtime::{ContainerInfo, ContainerState};
use crate::state::RevisionRecord;
use crate::volumes::implicit::{implicit_volumes, writer_problems, ImplicitVolume};
use crate::volumes::{disk_usage, VolumeError};

/// What uses a volume: service names, and one line per user for messages.
#[derive(Debug, Default)]
struct Users {
    services: BTreeSet<String>,
    containers: Vec<String>,
    lines: Vec<String>,
}

/// The named volumes a container mounts: its label, or (for containers made
/// before the label) the named volumes of its stored spec.
fn container_volumes(c: &ContainerInfo) -> Vec<String> {
    if let Some(list) = c.labels.get(LABEL_VOLUMES) {
        return list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    stored_spec(&c.labels)
        .map(|s| {
            s.volumes
                .iter()
                .filter_map(|v| match &v.source {
                    VolumeSource::Named(n) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_text(s: &ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "created",
        ContainerState::Running { .. } | ContainerState::MonitorLost { .. } => "running",
        ContainerState::Exited { .. } => "exited",
        ContainerState::Unknown { .. } => "unknown",
        ContainerState::NotFound => "removed",
    }
}

impl Agent {
    /// The image VOLUMEs of `svc` that become volumes, when the image's
    /// config is known locally (`None`: not pulled yet).
    pub fn implicit_volumes(&self, svc: &Service, image: &ImageRef) -> Option<Vec<ImplicitVolume>> {
        let rec = self.images.find(image).ok().flatten()?;
        Some(implicit_volumes(
            svc,
            &self.volumes.image_volumes(&self.images, &rec),
        ))
    }

    /// Named volume → the services of revision `rec` that mount it.
    fn revision_volume_users(&self, rec: &RevisionRecord) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let Ok((manifest, _)) = Self::desired_of(rec) else {
            return out;
        };
        for svc in manifest.services.values() {
            for v in &svc.volumes {
                if let VolumeSource::Named(n) = &v.source {
                    out.entry(n.clone()).or_default().insert(svc.name.clone());
                }
            }
            let image = pinned_image(&svc.image, rec.info.digests.get(&svc.name));
            for v in self.implicit_volumes(svc, &image).unwrap_or_default() {
                out.entry(v.name).or_default().insert(svc.name.clone());
            }
        }
        out
    }

    /// Everything using each volume: the current revision and containers on disk.
    fn all_volume_users(
        &self,
        containers: &[ContainerInfo],
    ) -> Result<BTreeMap<String, Users>, AgentError> {
        let mut out: BTreeMap<String, Users> = BTreeMap::new();
        if let Some(rec) = self.store().latest_revision()? {
            for (name, services) in self.revision_volume_users(&rec) {
                let u = out.entry(name).or_default();
                for s in services {
                    u.lines
                        .push(format!("service `{s}` (revision {})", rec.info.number));
                    u.services.insert(s);
                }
            }
        }
        for c in containers {
            let service = c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
            for name in container_volumes(c) {
                let u = out.entry(name).or_default();
                u.lines
                    .push(format!("container {} ({})", c.id, state_text(&c.state)));
                u.containers.push(c.id.clone());
                if !service.is_empty() {
                    u.services.insert(service.clone());
                }
            }
        }
        Ok(out)
    }

    /// Every volume with its size, users and origin.
    pub async fn volume_views(&self) -> Result<Vec<VolumeView>, AgentError> {
        let containers = self.list_containers().await?;
        let mut users = self.all_volume_users(&containers)?;
        let store = self.volumes.clone();
        super::blocking("listing volumes", move || {
            let mut out = Vec::new();
            for v in store.list()? {
                let u = users.remove(&v.meta.name).unwrap_or_default();
                out.push(VolumeView {
                    size_bytes: disk_usage(&v.data).unwrap_or(0),
                    services: u.services.into_iter().collect(),
                    containers: u.containers,
                    created_at: v.meta.created_at,
                    seeded_from: v
                        .meta
                        .seeded_from
                        .map(|s| format!("{}:{}", s.image, s.path)),
                    name: v.meta.name,
                });
            }
            Ok(out)
        })
        .await?
    }

    /// Removes a volume and its data, refused (naming the users) while the
    /// current revision or any container on disk uses it. The users are read
    /// under the volume store's lock, so no start creates it meanwhile.
    pub async fn remove_volume(self: &std::sync::Arc<Self>, name: &str) -> Result<(), AgentError> {
        let agent = self.clone();
        let name2 = name.to_string();
        super::blocking("removing a volume", move || {
            agent.volumes.remove(&name2, || {
                let containers = agent.runtime.list().map_err(|e| VolumeError::Io {
                    op: "list containers for",
                    path: agent.volumes.root().join(&name2),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let users = agent
                    .all_volume_users(&containers)
                    .map_err(|e| VolumeError::Io {
                        op: "read the current revision for",
                        path: agent.volumes.root().join(&name2),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                Ok(users
                    .get(&name2)
                    .map(|u| u.lines.clone())
                    .unwrap_or_default())
            })
        })
        .await??;
        self.emit(
            EventKind::VolumeRemoved,
            None,
            format!("volume {name} removed"),
        );
        Ok(())
    }

    /// The one-writer rule for image VOLUMEs kept as volumes, checked at apply
    /// for each service that could break it (more than one replica, an
    /// explicit `start-first`, or a manifest volume named like one of its
    /// implicit volumes). The image config comes from the local store, or
    /// from the registry (manifest + config only). When neither answers, the
    /// check is left to the reconciler, which refuses to start the replicas.
    pub(super) async fn image_volume_problems(
        &self,
        files: &SourceFiles,
        manifest: &Manifest,
        digests: &BTreeMap<String, String>,
    ) -> Vec<Problem> {
        let written = written_keys(files);
        let mut problems = Vec::new();
        for svc in manifest.services.values() {
            let w = written.get(&svc.name);
            let start_first = w.is_some_and(|w| w.start_first.is_some());
            let prefix = format!("{}_", svc.name);
            let may_collide = manifest.services.values().any(|o| {
                o.volumes.iter().any(|v| {
                    !v.readonly
                        && matches!(&v.source, VolumeSource::Named(n) if n.starts_with(&prefix))
                })
            });
            if svc.replicas <= 1 && !start_first && !may_collide {
                continue;
            }
            let image = pinned_image(&svc.image, digests.get(&svc.name));
            let declared = match self.images.find(&image) {
                Ok(Some(rec)) => self.volumes.image_volumes(&self.images, &rec),
                _ => match self
                    .images
                    .registry()
                    .pull_metadata(self.images.content(), &image)
                    .await
                {
                    Ok((pulled, _)) => {
                        crate::launch::ImageRunConfig::from_config_json(&pulled.config_json)
                            .map(|c| c.volumes)
                            .unwrap_or_default()
                    }
                    Err(e) => {
                        tracing::warn!(service = %svc.name, error = %e, "image VOLUMEs not checked at apply; the reconciler enforces one writer");
                        continue;
                    }
                },
            };
            let implicit = implicit_volumes(svc, &declared);
            for p in writer_problems(manifest, svc, &implicit, start_first) {
                let at = w.and_then(|w| {
                    match &p {
                        crate::volumes::implicit::WriterProblem::Replicas { .. } => w.replicas,
                        crate::volumes::implicit::WriterProblem::StartFirst { .. } => w.start_first,
                        crate::volumes::implicit::WriterProblem::NameTaken { .. } => None,
                    }
                    .or(Some(w.header))
                });
                let (line, column) = at.unwrap_or((1, 1));
                problems.push(Problem {
                    file: svc.file.clone(),
                    line,
                    column,
                    key: p.key(&svc.name),
                    message: p.message(&svc.name),
                });
            }
        }
        problems
    }
}

impl Agent {
    /// Adds "updates stop-first" to what `diff` and `apply` show for services
    /// whose image (when already pulled here) has a VOLUME kept as a volume.
    pub(super) fn note_image_volumes(
        &self,
        manifest: &Manifest,
        digests: &BTreeMap<String, String>,
        resp: &mut berth_core::api::ApplyResponse,
    ) {
        let mut notes: BTreeMap<&str, String> = BTreeMap::new();
        for svc in manifest.services.values() {
            if svc.single_writer_volume().is_some() {
                continue; // core's note says it already
            }
            let image = pinned_image(&svc.image, digests.get(&svc.name));
            let implicit = self.implicit_volumes(svc, &image).unwrap_or_default();
            if let Some(v) = implicit.first() {
                notes.insert(
                    &svc.name,
                    format!(
                        "updates stop-first: image VOLUME {} is kept as volume `{}` with one writer at a time",
                        v.declared, v.name
                    ),
                );
            }
        }
        for p in &mut resp.plan {
            if let Some(n) = notes.get(p.service.as_str()) {
                if p.action != berth_core::plan::ServiceAction::Unchanged {
                    p.notes.push(n.clone());
                }
            }
        }
        for c in &mut resp.changes {
            if let Some(n) = notes.get(c.service.as_str()) {
                if !matches!(
                    c.change,
                    berth_core::plan::ChangeKind::Removed | berth_core::plan::ChangeKind::Unchanged
                ) {
                    c.notes.push(n.clone());
                }
            }
        }
    }
}

/// Where a service's keys are written in the manifest sources.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    /// The service's table.
    header: (usize, usize),
    replicas: Option<(usize, usize)>,
    /// Set when `update.strategy = "start-first"` is written.
    start_first: Option<(usize, usize)>,
}

/// Reads the positions of `replicas` and `update.strategy` of every service
/// (core validated the files already; unreadable ones are skipped).
fn written_keys(files: &SourceFiles) -> BTreeMap<String, Written> {
    use serde::Deserialize;
    use toml::Spanned;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        service: BTreeMap<Spanned<String>, Svc>,
    }
    #[derive(Deserialize)]
    struct Svc {
        replicas: Option<Spanned<toml::Value>>,
        update: Option<Update>,
    }
    #[derive(Deserialize)]
    struct Update {
        strategy: Option<Spanned<String>>,
    }
    let mut out = BTreeMap::new();
    for text in files.values() {
        let Ok(file) = toml::from_str::<File>(text) else {
            continue;
        };
        for (name, svc) in file.service {
            let at = |offset: usize| line_col(text, offset);
            out.insert(
                name.get_ref().clone(),
                Written {
                    header: at(name.span().start),
                    replicas: svc.replicas.map(|r| at(r.span().start)),
                    start_first: svc
                        .update
                        .and_then(|u| u.strategy)
                        .filter(|s| s.get_ref() == "start-first")
                        .map(|s| at(s.span().start)),
                },
            );
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_located_in_their_file() {
        let files = SourceFiles::from([
            (
                "a.toml".to_string(),
                "[service.db]\nimage = \"r/db:1\"\nreplicas = 2\n\n[service.db.update]\nstrategy = \"start-first\"\n".to_string(),
            ),
            (
                "b.toml".to_string(),
                "service.web = { image = \"r/w:1\", update = { strategy = \"stop-first\" } }\n".to_string(),
            ),
        ]);
        let w = written_keys(&files);
        assert_eq!(w["db"].header, (1, 10));
        assert_eq!(w["db"].replicas, Some((3, 12)));
        assert_eq!(w["db"].start_first, Some((6, 12)));
        assert_eq!(w["web"].replicas, None);
        assert_eq!(w["web"].start_first, None, "stop-first is not start-first");
    }
}
