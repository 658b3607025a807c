//! The executor: each action of a decision carried out by its own small
//! function. Starting a replica (ports, image, volumes, the container),
//! retiring one (a task that drains, stops and removes it and reports back),
//! removing one, a replica's failure, a failed rollout (rolled back or
//! halted), background pulls and tag checks. Spawned tasks never write
//! service state: they send a [`Report`] the next pass applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::image_ref::ImageRef;
use berth_core::manifest::{Manifest, PullPolicy, Service, VolumeSource};
use berth_core::spec::ContainerSpec;
use berth_core::vocab::{EventKind, RevisionState};

use super::backoff::BackoffPolicy;
use super::decide::RetireReason;
use super::policy::{self, StartFailure};
use super::run::{Reconciler, Report, ALWAYS_CHECK};
use crate::containers::Started;
use crate::control::{Agent, AgentError, ApplySource};
use crate::health;
use crate::image::store::ImageRecord;
use crate::labels::{
    LABEL_EXPOSED_PORTS, LABEL_IMAGE, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC, LABEL_VOLUMES,
};
use crate::metrics::Drift;
use crate::runtime::{ContainerConfig, ContainerInfo, ContainerState, Mount, User};
use crate::state::RevisionRecord;

/// What came of a `Start`.
#[derive(Debug)]
pub(super) enum StartResult {
    Started,
    /// Not yet possible (the image is being pulled, or its config is not
    /// known yet): the next pass decides again.
    NotYet,
    Failed(StartFailure, String),
}

impl Reconciler {
    /// Starts one replica of `spec`: its host ports bound first (one that
    /// cannot be is the start's failure, as Docker refuses such a
    /// container), then its image (pulled in the background when missing).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        &mut self,
        rec: &RevisionRecord,
        svc: &Service,
        spec: &ContainerSpec,
        image: &ImageRef,
        image_record: &mut Option<ImageRecord>,
        config_known: bool,
    ) -> StartResult {
        let agent = self.agent.clone();
        let ports: Vec<_> = spec
            .ports
            .iter()
            .filter_map(|p| agent.proxy.host_port(p))
            .collect();
        if let Err(e) = agent.proxy.publish(&svc.name, &ports) {
            let message = e.to_string();
            agent.emit(EventKind::PortFailed, Some(&svc.name), message.clone());
            return StartResult::Failed(StartFailure::PortHeld, message);
        }
        if image_record.is_none() {
            *image_record = self.ensure_image(rec, svc, image);
        }
        // Decided without the image's config (pulled meanwhile): the next
        // pass decides again, knowing its VOLUMEs.
        if !config_known {
            return StartResult::NotYet;
        }
        let Some(img) = image_record.as_ref() else {
            return StartResult::NotYet;
        };
        match start_replica(&agent, rec, svc, spec, image, img).await {
            Ok(()) => StartResult::Started,
            Err(e) => {
                let message = format!("starting a replica: {e}");
                agent.emit(
                    EventKind::ContainerStartFailed,
                    Some(&svc.name),
                    message.clone(),
                );
                StartResult::Failed(StartFailure::Start, message)
            }
        }
    }

    /// The image record of a pinned image, pulling it in the background when
    /// missing. `None` means not available yet: a pull runs, waits out its
    /// retry backoff after a transient failure, or failed for good in this
    /// revision (which fails the rollout on the next pass).
    pub(super) fn ensure_image(
        &mut self,
        rec: &RevisionRecord,
        svc: &Service,
        image: &ImageRef,
    ) -> Option<ImageRecord> {
        let agent = self.agent.clone();
        if let Ok(Some(found)) = agent.images.find(image) {
            if agent.images.is_complete(&found) {
                return Some(found);
            }
        }
        let key = image.to_string();
        let revision = rec.info.number;
        if svc.pull.policy == PullPolicy::Never {
            // Never pulled: the failure is reported once per revision, as a
            // permanent pull failure (the rollout fails with it).
            if self
                .tracker(&svc.name)
                .pull_may_start(Instant::now(), revision, &key)
            {
                let _ = self.reporter.send(Report::Pulled {
                    service: svc.name.clone(),
                    image: image.clone(),
                    revision,
                    result: Err((
                        true,
                        format!("{image} is not in the agent's store and pull.policy is \"never\": load it with `berthctl load ARCHIVE`"),
                    )),
                });
                agent.wake.notify_one();
            }
            return None;
        }
        if agent.live().pulling.contains(&key)
            || !self
                .tracker(&svc.name)
                .pull_may_start(Instant::now(), revision, &key)
        {
            return None;
        }
        agent.live().pulling.insert(key);
        let (image, service, reporter) = (image.clone(), svc.name.clone(), self.reporter.clone());
        tokio::spawn(async move {
            let result = agent
                .images
                .pull(&image, None)
                .await
                .map(|r| r.digest.to_string())
                .map_err(|e| (e.is_permanent(), e.to_string()));
            let _ = reporter.send(Report::Pulled {
                service,
                image,
                revision,
                result,
            });
            agent.wake.notify_one();
        });
        None
    }

    /// A replica exited or turned unhealthy outside a rollout: counted,
    /// reported, and its replacement waits out the restart backoff.
    pub(super) fn replica_failed(
        &mut self,
        svc: &Service,
        rec: &RevisionRecord,
        list: &[ContainerInfo],
        id: &str,
        reason: &str,
        policy: &BackoffPolicy,
    ) {
        let (agent, now) = (self.agent.clone(), Instant::now());
        let oom = list.iter().any(|c| {
            c.id == id
                && matches!(
                    c.state,
                    ContainerState::Exited {
                        oom_killed: true,
                        ..
                    }
                )
        });
        agent.metrics.replica_failed(&svc.name, oom);
        agent.metrics.drift(&svc.name, Drift::Missing);
        let tracker = self.tracker(&svc.name);
        let wait = tracker.replica_failed(now, policy);
        let failures = tracker.failures();
        {
            let mut live = agent.live();
            let l = live.services.entry(svc.name.clone()).or_default();
            l.restarts += 1;
            l.last_error = Some(format!("replica {id} {reason}"));
            l.error_revision = rec.info.number;
        }
        let kind = if oom {
            EventKind::ContainerOomKilled
        } else {
            EventKind::ContainerFailed
        };
        agent.emit_container(
            kind,
            &svc.name,
            id,
            format!("{id} {reason}; replacing it in {wait:?} (failure {failures} in a row)"),
        );
    }

    /// A rollout failed: record it, then roll back (a new revision restoring
    /// the last complete one) or halt the service until the next revision.
    pub(super) async fn fail_rollout(
        &mut self,
        rec: &RevisionRecord,
        svc: &Service,
        reason: &str,
    ) -> Result<(), AgentError> {
        let agent = self.agent.clone();
        let took = self.tracker(&svc.name).rollout_failed(Instant::now());
        agent.metrics.rollout_finished(&svc.name, false, took);
        set_last_error(
            &agent,
            &svc.name,
            format!("rollout failed: {reason}"),
            rec.info.number,
        );
        agent.emit(
            EventKind::RolloutFailed,
            Some(&svc.name),
            format!("revision {}: {reason}", rec.info.number),
        );
        let mut failed = rec.clone();
        failed.info.state = RevisionState::Failed;
        let previous =
            agent.store().revisions()?.into_iter().rev().find(|r| {
                r.info.number < rec.info.number && r.info.state == RevisionState::Complete
            });
        match (svc.update.rollback_on_failure, previous) {
            (true, Some(prev)) => {
                agent.store().update_revision(&failed)?;
                let resp = agent
                    .restore(
                        &prev,
                        ApplySource::AutoRollback {
                            failed: rec.info.number,
                            restored: prev.info.number,
                        },
                    )
                    .await?;
                // The error stays while the restored revision runs.
                if let (Some(l), Some(n)) =
                    (agent.live().services.get_mut(&svc.name), resp.revision)
                {
                    l.error_revision = n;
                }
                agent.emit(
                    EventKind::Rollback,
                    Some(&svc.name),
                    format!(
                        "revision {} failed; restored revision {} as revision {}",
                        rec.info.number,
                        prev.info.number,
                        resp.revision.unwrap_or(0)
                    ),
                );
            }
            _ => {
                failed.halted.insert(svc.name.clone());
                agent.store().update_revision(&failed)?;
                agent.emit(
                    EventKind::RolloutHalted,
                    Some(&svc.name),
                    format!(
                        "revision {} failed; {} keeps what runs until the next revision",
                        rec.info.number, svc.name
                    ),
                );
            }
        }
        agent.wake.notify_one();
        Ok(())
    }

    /// Takes a replica out of service: no longer ready at once, then after
    /// `drain` stopped (stop signal, SIGKILL after its stop timeout) and
    /// removed by a task that reports back ([`Report::Retired`]).
    pub(super) fn retire(
        &self,
        service: &str,
        id: &str,
        drain: Duration,
        stop_timeout: Duration,
        reason: RetireReason,
    ) {
        let agent = self.agent.clone();
        if agent
            .live()
            .retiring
            .insert(id.to_string(), service.to_string())
            .is_some()
        {
            return;
        }
        // New connections stop at once; in-flight ones may finish.
        super::publish::sync_proxy(&agent, service);
        let (service, id, reporter) = (service.to_string(), id.to_string(), self.reporter.clone());
        tokio::spawn(async move {
            if !drain.is_zero() {
                tokio::time::sleep(drain).await;
            }
            // In-flight connections get up to the stop timeout to finish.
            let deadline = Instant::now() + stop_timeout;
            while agent.proxy.active(&service, &id) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let result = agent
                .containers
                .stop_and_remove(&id)
                .await
                .map_err(|e| e.to_string());
            let _ = reporter.send(Report::Retired {
                service,
                id,
                reason: reason.as_str(),
                result,
            });
            agent.wake.notify_one();
        });
    }

    /// Stops every container whose monitor died while its workload ran
    /// ([`policy::unsupervised`]) and announces it, naming the container;
    /// the pass then sees it exited, and the restart policy replaces it.
    pub(super) async fn stop_unsupervised(&self, containers: &mut [ContainerInfo]) {
        for c in containers
            .iter_mut()
            .filter(|c| policy::unsupervised(&c.state))
        {
            let ContainerState::MonitorLost {
                pid, monitor_pid, ..
            } = c.state
            else {
                continue;
            };
            let id = c.id.clone();
            let lost = format!(
                "{id}: its monitor (pid {monitor_pid}) died while the workload (pid {pid}) ran, so nothing captured its output or could record its exit"
            );
            let message = match self.agent.containers.kill(&id).await {
                Ok(exit) => {
                    c.state = ContainerState::Exited {
                        code: exit.code,
                        signal: exit.signal,
                        oom_killed: exit.oom_killed,
                        finished_at: exit.finished_at,
                    };
                    format!("{lost}; the workload was stopped (exit {})", exit.code)
                }
                Err(e) => format!("{lost}; stopping the workload failed: {e}"),
            };
            tracing::warn!(container = %id, "{message}");
            let service = c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
            self.agent
                .emit_container(EventKind::ContainerMonitorLost, &service, &id, message);
        }
    }

    /// Removes every container whose create was cut short
    /// ([`policy::abandoned_create`]) and drops it from `containers`, so
    /// the pass does not count it as a replica starting forever.
    pub(super) async fn remove_abandoned(
        &self,
        containers: &mut Vec<ContainerInfo>,
        now: std::time::SystemTime,
    ) {
        let mut removed = Vec::new();
        for c in containers
            .iter()
            .filter(|c| policy::abandoned_create(&c.state, c.created_at, now))
        {
            let service = c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
            let result = self
                .agent
                .containers
                .remove(&c.id)
                .await
                .map_err(|e| e.to_string());
            if result.is_ok() {
                removed.push(c.id.clone());
            }
            self.removed(
                &service,
                &c.id,
                "never started: berthd stopped while creating it",
                result,
            );
        }
        containers.retain(|c| !removed.contains(&c.id));
    }

    /// Removes a replica that is no longer running, now.
    pub(super) async fn remove_now(&self, service: &str, id: &str) {
        let result = self
            .agent
            .containers
            .remove(id)
            .await
            .map_err(|e| e.to_string());
        self.removed(service, id, "exited", result);
    }

    /// What follows a replica's removal (by the pass, or reported by a
    /// retire task): its address, ports and health checker are forgotten,
    /// and the removal (or its failure) is an event.
    pub(super) fn removed(&self, service: &str, id: &str, why: &str, result: Result<(), String>) {
        let agent = &self.agent;
        {
            let mut live = agent.live();
            live.addresses.remove(id);
            live.ports.remove(id);
        }
        health::forget(agent, id);
        match result {
            Ok(()) => agent.emit_container(
                EventKind::ContainerRemoved,
                service,
                id,
                format!("{id} removed ({why})"),
            ),
            Err(e) => agent.emit_container(
                EventKind::ContainerRemoveFailed,
                service,
                id,
                format!("{id}: {e}"),
            ),
        }
    }

    /// Re-resolves tags of services with `pull.check` (or `pull.policy =
    /// "always"`) when due; a moved tag becomes a new revision.
    pub(super) fn check_tags(&mut self, rec: &RevisionRecord, manifest: &Manifest, now: Instant) {
        let due: Vec<Service> = manifest
            .services
            .values()
            .filter(|s| s.image.digest.is_none())
            .filter(|s| {
                let every = match (s.pull.check, s.pull.policy) {
                    (Some(d), _) => d,
                    (None, PullPolicy::Always) => ALWAYS_CHECK,
                    (None, PullPolicy::IfMissing | PullPolicy::Never) => return false,
                };
                self.tracker(&s.name).tag_check_due(now, every)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let (agent, rec) = (self.agent.clone(), rec.clone());
        tokio::spawn(async move {
            let mut digests = rec.info.digests.clone();
            let mut moved = Vec::new();
            for s in &due {
                match agent.images.registry().resolve(&s.image).await {
                    Ok(r) => {
                        let new = r.digest.to_string();
                        if digests.get(&s.name) != Some(&new) {
                            moved.push(format!("{} {} → {}", s.name, s.image, r.digest.short()));
                            digests.insert(s.name.clone(), new);
                        }
                    }
                    Err(e) => {
                        agent
                            .metrics
                            .registry_error(s.image.registry.as_str(), e.kind());
                        tracing::debug!(service = %s.name, error = %e, "tag check failed");
                    }
                }
            }
            if moved.is_empty() {
                return;
            }
            // Only if the revision is still current (an apply may have won).
            let current = agent
                .store()
                .latest_revision()
                .ok()
                .flatten()
                .map(|r| r.info.number);
            if current != Some(rec.info.number) {
                return;
            }
            agent.emit(EventKind::TagMoved, None, moved.join(", "));
            if let Err(e) = agent.record_new_digests(&rec, digests).await {
                agent.emit(EventKind::ApplyRefused, None, format!("pull-check: {e}"));
            }
        });
    }
}

/// Sets the error `status` shows for a service, as of `revision`.
pub(super) fn set_last_error(agent: &Agent, service: &str, error: String, revision: u64) {
    let mut live = agent.live();
    let l = live.services.entry(service.to_string()).or_default();
    l.last_error = Some(error);
    l.error_revision = revision;
}

/// Records (and announces once) what a service waits for before starting
/// replicas; status shows it as the service's last error while it lasts.
pub(super) fn note_waiting(agent: &Agent, svc: &Service, waiting: Option<&str>) {
    let changed = {
        let mut live = agent.live();
        let l = live.services.entry(svc.name.clone()).or_default();
        if l.waiting.as_deref() == waiting {
            return;
        }
        let before = l.waiting.take();
        match waiting {
            Some(w) => l.last_error = Some(w.to_string()),
            None if l.last_error == before => l.last_error = None,
            None => {}
        }
        l.waiting = waiting.map(str::to_string);
        before
    };
    match waiting {
        Some(w) => agent.emit(EventKind::Waiting, Some(&svc.name), w.to_string()),
        None => agent.emit(
            EventKind::DependenciesReady,
            Some(&svc.name),
            format!(
                "every dependency ({}) has a ready replica; no longer {}",
                svc.depends_on.join(", "),
                changed.unwrap_or_default()
            ),
        ),
    }
}

/// A fresh container id: `<service>-<12 hex>`.
fn new_id(service: &str) -> String {
    format!("{service}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// Starts one replica of `spec` from `img`: its process from the image
/// config and the manifest, its volumes, secrets, limits and labels.
async fn start_replica(
    agent: &Arc<Agent>,
    rec: &RevisionRecord,
    svc: &Service,
    spec: &ContainerSpec,
    image: &ImageRef,
    img: &ImageRecord,
) -> Result<(), AgentError> {
    let id = new_id(&svc.name);
    let lowerdirs = agent.images.lowerdirs(img);
    let process = crate::launch::build_process(
        &img.run,
        spec.entrypoint.as_deref(),
        spec.command.as_deref(),
        &spec.env,
        spec.workdir.as_deref(),
        spec.user.as_deref(),
        &id,
        &lowerdirs,
    )
    .map_err(|source| AgentError::Launch {
        image: image.to_string(),
        source,
    })?;
    let (mut mounts, volume_names) = prepare_volumes(agent, rec, svc, spec, image, img).await?;
    for s in &spec.secrets {
        mounts.push(Mount::secret(&s.source, &s.target));
    }
    let mut cfg = ContainerConfig::new(&id, lowerdirs, process.args);
    cfg.name = id.clone();
    cfg.env = process.env;
    cfg.cwd = process.cwd.into();
    cfg.user = User {
        uid: process.uid,
        gid: process.gid,
        additional_gids: process.additional_gids,
    };
    cfg.readonly_rootfs = spec.readonly_rootfs;
    cfg.mounts = mounts;
    cfg.memory_bytes = spec.memory_bytes;
    cfg.millicpus = spec.millicpus;
    cfg.pids = spec.pids;
    // The effective signal is kept in the container's config, so a replica
    // re-adopted after a restart of berthd is stopped the same way.
    cfg.stop_signal =
        crate::launch::stop_signal(svc.stop_signal.as_ref(), img.run.stop_signal.as_deref()).number;
    cfg.stop_timeout = svc.stop_timeout;
    cfg.init = spec.init;
    cfg.sysctls = spec.sysctls.clone();
    cfg.cap_add = spec.cap_add.clone();
    cfg.cap_drop = spec.cap_drop.clone();
    cfg.seccomp = (&spec.seccomp).into();
    if crate::idranges::decide(
        &svc.name,
        spec.userns,
        &agent.userns_support,
        agent.config.userns_fallback,
    )? {
        cfg.userns = Some(agent.id_ranges.range_for(&svc.name)?);
    }
    cfg.labels.insert(LABEL_SERVICE.into(), svc.name.clone());
    cfg.labels.insert(LABEL_SPEC.into(), spec.canonical_json());
    cfg.labels
        .insert(LABEL_REVISION.into(), rec.info.number.to_string());
    cfg.labels.insert(LABEL_IMAGE.into(), image.to_string());
    let image_health = health::from_image(img.run.healthcheck.as_ref());
    if let Some(h) = &image_health {
        cfg.labels
            .insert(health::LABEL_IMAGE_HEALTH.into(), serde_json::to_string(h)?);
    }
    if !img.run.exposed_ports.is_empty() {
        cfg.labels
            .insert(LABEL_EXPOSED_PORTS.into(), img.run.exposed_ports.join(","));
    }
    cfg.dns_server = agent.dns.nameserver();
    cfg.labels
        .insert(LABEL_VOLUMES.into(), volume_names.join(","));
    let Started { info: started, ip } = agent.containers.start(cfg).await?;
    agent.live().addresses.insert(started.id.clone(), ip);
    // Probe it from now on, not from the next pass (up to RESYNC later: that
    // wait was most of a rollout's time with a short health interval).
    let health = health::effective(svc.health.as_ref(), image_health.as_ref());
    if let (Some(h), ContainerState::Running { pid, .. }) = (&health, &started.state) {
        health::ensure_checker(agent, &svc.name, &started.id, *pid, h);
    }
    let _ = agent.images.touch(&img.digest);
    agent.emit_container(
        EventKind::ContainerStarted,
        &svc.name,
        &started.id,
        format!("{} started from {image}", started.id),
    );
    Ok(())
}

/// The mounts of a new replica's volumes, and the names of the named
/// volumes among them. Named volumes are created (and seeded from the image
/// at their target, once) as needed, manifest ones and the service's image
/// VOLUMEs alike. Refuses to start a second writer of an image VOLUME
/// (`replicas > 1`, or its volume name mounted writable by another service):
/// the apply check catches this when it can see the image config.
async fn prepare_volumes(
    agent: &Arc<Agent>,
    rec: &RevisionRecord,
    svc: &Service,
    spec: &ContainerSpec,
    image: &ImageRef,
    img: &ImageRecord,
) -> Result<(Vec<Mount>, Vec<String>), AgentError> {
    use crate::volumes::implicit::{implicit_volumes, writer_problems};
    let implicit = implicit_volumes(svc, &agent.volumes.image_volumes(&agent.images, img));
    if !implicit.is_empty() {
        let (manifest, _) = Agent::desired_of(rec)?;
        if let Some(p) = writer_problems(&manifest, svc, &implicit, false).first() {
            return Err(AgentError::VolumeWriters {
                service: svc.name.clone(),
                problem: Box::new(p.clone()),
            });
        }
    }
    // (name, target, readonly) of every named volume, then the rest in order.
    let mut named: Vec<(String, String, bool)> = Vec::new();
    let mut mounts = Vec::new();
    for v in &spec.volumes {
        match &v.source {
            VolumeSource::Named(name) => named.push((name.clone(), v.target.clone(), v.readonly)),
            VolumeSource::Host(path) => mounts.push(Mount::bind(path, &v.target, v.readonly)),
            VolumeSource::Tmpfs { size_bytes } => {
                mounts.push(Mount::tmpfs(Some(*size_bytes), &v.target))
            }
        }
    }
    named.extend(implicit.into_iter().map(|v| (v.name, v.target, false)));
    let names: Vec<String> = named.iter().map(|(n, _, _)| n.clone()).collect();
    let store = agent.volumes.clone();
    let layers = agent.images.lowerdirs(img);
    let image_text = image.to_string();
    let made = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (name, target, readonly) in named {
            let seed = |data: &std::path::Path| {
                use crate::volumes::{seed_from_layers, SeedInfo, Seeded};
                Ok(match seed_from_layers(&layers, &target, data)? {
                    Seeded::Copied { entries, bytes } => Some(SeedInfo {
                        image: image_text.clone(),
                        path: target.clone(),
                        entries,
                        bytes,
                    }),
                    Seeded::NoSuchPath => None,
                    Seeded::NotADirectory => {
                        tracing::warn!(volume = %name, path = %target, "the image has a file at the volume's target; nothing seeded");
                        None
                    }
                })
            };
            let e = store.ensure(&name, seed)?;
            out.push((name, target, readonly, e));
        }
        Ok::<_, crate::volumes::VolumeError>(out)
    })
    .await
    .map_err(|source| AgentError::Task {
        what: "preparing volumes",
        source,
    })??;
    for (name, target, readonly, e) in made {
        if e.created {
            let how = match &e.seeded_from {
                Some(s) => format!(
                    "seeded from {}:{} ({} entries, {} bytes)",
                    s.image, s.path, s.entries, s.bytes
                ),
                None => "empty (nothing in the image there)".into(),
            };
            agent.emit(
                EventKind::VolumeCreated,
                Some(&svc.name),
                format!("volume {name} created, {how}"),
            );
        }
        mounts.push(Mount::bind(e.data, &target, readonly));
    }
    Ok((mounts, names))
}

/// Whether some recorded revision ran `service` (so a container of it that no
/// revision wants now was removed on purpose, not drift).
pub(super) fn removal_planned(agent: &Agent, service: &str) -> bool {
    agent.store().revisions().is_ok_and(|revs| {
        revs.iter()
            .any(|r| Agent::desired_of(r).is_ok_and(|(m, _)| m.services.contains_key(service)))
    })
}
