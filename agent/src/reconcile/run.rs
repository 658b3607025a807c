//! The reconcile loop and the executor of decisions. Each pass reads the
//! current revision and what is on disk, asks `decide` per service, and
//! carries the actions out: start replicas, retire (drain, stop, remove),
//! record failures with backoff, fail rollouts (rolling back when asked),
//! pull missing images (transient errors retried with backoff, permanent ones
//! fail the rollout) and re-resolve tags. It never asks why it woke.

use berth_core::vocab::{EventKind, RevisionState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_core::image_ref::ImageRef;
use berth_core::manifest::{Manifest, PullPolicy, Service, VolumeSource};
use berth_core::spec::ContainerSpec;

use super::backoff::BackoffPolicy;
use super::decide::{decide, Action, Dependency, Intent, Phase, Replica, RetireReason};
use crate::control::{pinned_image, Agent, AgentError, ApplySource};
use crate::health;
use crate::image::store::ImageRecord;
use crate::labels::{
    stored_spec, LABEL_EXPOSED_PORTS, LABEL_IMAGE, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC,
    LABEL_VOLUMES,
};
use crate::network::HostPort;
use crate::runtime::{ContainerConfig, ContainerInfo, ContainerState, Mount, User};
use crate::state::RevisionRecord;

/// How often the loop runs when nothing wakes it.
pub const RESYNC: Duration = Duration::from_millis(500);
/// A replica without a health check is ready after running this long (or
/// its start_period, if longer).
pub const MIN_READY_RUN: Duration = Duration::from_secs(1);
/// How often `pull.policy = "always"` re-resolves tags.
pub const ALWAYS_CHECK: Duration = Duration::from_secs(30);
/// Waits between pulls after transient failures (network, 5xx, 429): 1 s
/// doubling to 30 s. Permanent failures are not retried within a revision.
const PULL_RETRY: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
    stable_after: Duration::ZERO,
};

/// Runs reconcile passes until `stop` turns true. Signals `first_pass` after
/// the first pass (whatever its result).
pub async fn run_loop(
    agent: Arc<Agent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    first_pass: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_pass = Some(first_pass);
    loop {
        let started = Instant::now();
        match reconcile_once(&agent).await {
            Ok(()) => agent.metrics.last_reconcile_success.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            ),
            Err(e) => {
                agent.metrics.reconcile_errors.inc();
                tracing::warn!(error = %e, "reconcile pass failed");
            }
        }
        {
            let mut draining: BTreeMap<String, i64> = BTreeMap::new();
            for service in agent.live().retiring.values() {
                *draining.entry(service.clone()).or_default() += 1;
            }
            agent.metrics.replicas_draining.reset();
            for (service, n) in draining {
                agent
                    .metrics
                    .replicas_draining
                    .with_label_values(&[&service])
                    .set(n);
            }
        }
        agent
            .metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if let Some(tx) = first_pass.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            _ = agent.wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = stop.changed() => return,
        }
    }
}

fn phase_of(agent: &Agent, c: &ContainerInfo, svc: &Service, now: SystemTime) -> Option<Phase> {
    if agent.live().retiring.contains_key(&c.id) {
        return Some(Phase::Retiring);
    }
    match &c.state {
        ContainerState::Running { started_at, .. } => {
            if health::of_container(svc.health.as_ref(), &c.labels).is_some() {
                let live = agent.live();
                let status = live.health.get(&c.id).map(|h| h.status);
                Some(match status {
                    Some(health::HealthStatus::Healthy) => Phase::Ready,
                    Some(health::HealthStatus::Unhealthy) => Phase::Unhealthy,
                    // Served before the agent restarted: stays in service
                    // until its checks say otherwise (as without a restart).
                    _ if live.adopted_ready.contains(&c.id) => Phase::Ready,
                    _ => Phase::Starting,
                })
            } else {
                let ran = now.duration_since(*started_at).unwrap_or_default();
                Some(if ran >= MIN_READY_RUN {
                    Phase::Ready
                } else {
                    Phase::Starting
                })
            }
        }
        ContainerState::Created => Some(Phase::Starting),
        ContainerState::Exited {
            code, oom_killed, ..
        } => Some(Phase::Exited {
            code: *code,
            oom_killed: *oom_killed,
        }),
        ContainerState::Unknown { .. } => Some(Phase::Exited {
            code: -1,
            oom_killed: false,
        }),
        ContainerState::NotFound => None,
    }
}

/// One pass over every service of the current revision.
pub async fn reconcile_once(agent: &Arc<Agent>) -> Result<(), AgentError> {
    let Some(rec) = agent.store().latest_revision()? else {
        return Ok(());
    };
    let (manifest, desired) = Agent::desired_of(&rec)?;
    let containers = agent.list_containers().await?;
    let now = SystemTime::now();
    let mut by_service: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
    let mut state_counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for c in &containers {
        let state = match c.state {
            ContainerState::Running { .. } => "running",
            ContainerState::Exited { .. } => "exited",
            ContainerState::Created => "created",
            _ => "unknown",
        };
        *state_counts.entry(state).or_default() += 1;
        if let Some(s) = c.labels.get(LABEL_SERVICE) {
            by_service.entry(s.clone()).or_default().push(c.clone());
        }
    }
    for state in ["running", "exited", "created", "unknown"] {
        agent
            .metrics
            .containers
            .with_label_values(&[state])
            .set(*state_counts.get(state).unwrap_or(&0));
    }
    // Forget checkers of containers that are gone or no longer running.
    let running: BTreeSet<&str> = containers
        .iter()
        .filter(|c| matches!(c.state, ContainerState::Running { .. }))
        .map(|c| c.id.as_str())
        .collect();
    let stale: Vec<String> = agent
        .live()
        .health
        .keys()
        .filter(|id| !running.contains(id.as_str()))
        .cloned()
        .collect();
    for id in stale {
        health::forget(agent, &id);
    }
    {
        let mut live = agent.live();
        live.adopted_ready
            .retain(|id| running.contains(id.as_str()));
        let listed: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        live.ports.retain(|id, _| listed.contains(id.as_str()));
    }

    maybe_check_tags(agent, &rec, &manifest);

    let mut all_converged = true;
    for (svc, want) in manifest.services.values().zip(desired.iter()) {
        let list = by_service.remove(&svc.name).unwrap_or_default();
        if rec.halted.contains(&svc.name) {
            all_converged = false;
            update_ready(agent, svc, &list, now);
            // What runs keeps its ports; the halted spec's are not held.
            sync_ports(agent, &svc.name, &[]);
            continue;
        }
        let converged =
            reconcile_service(agent, &rec, &manifest, svc, &want.spec, &list, now).await?;
        all_converged &= converged;
    }
    // Containers of services no revision wants. While any is still there
    // (draining included), the revision has not rolled out.
    for (service, list) in by_service {
        for c in list {
            all_converged = false;
            if agent.live().retiring.contains_key(&c.id) {
                continue;
            }
            // A service a revision removed goes as planned; only a container
            // no revision ever asked for is drift.
            if !removal_planned(agent, &service) {
                agent
                    .metrics
                    .drift
                    .with_label_values(&[&service, "unwanted"])
                    .inc();
            }
            match c.state {
                ContainerState::Running { .. } | ContainerState::Created => retire(
                    agent,
                    &service,
                    &c.id,
                    Duration::ZERO,
                    Duration::from_secs(10),
                    RetireReason::ScaleDown,
                ),
                _ => remove_now(agent, &service, &c.id).await,
            }
        }
        agent.live().services.remove(&service);
        agent
            .metrics
            .services_desired
            .remove_label_values(&[&service])
            .ok();
        agent
            .metrics
            .services_ready
            .remove_label_values(&[&service])
            .ok();
        drop_image_info(agent, &service, None);
    }
    // Published ports of services no longer in the manifest; then DNAT
    // rules of services the agent no longer knows (after a full pass, so a
    // restart never removes rules before their replacement exists).
    for (service, _) in agent.proxy.published() {
        if !manifest.services.contains_key(&service) {
            agent.proxy.remove_service(&service);
        }
    }
    agent
        .proxy
        .prune(&manifest.services.keys().map(String::as_str).collect());
    publish_dns(agent, &manifest, &containers, now);
    if all_converged
        && (rec.info.state == RevisionState::Applied || rec.info.state == RevisionState::RollingOut)
    {
        let mut done = rec.clone();
        done.info.state = RevisionState::Complete;
        agent.store().update_revision(&done)?;
        agent.emit(
            EventKind::RevisionComplete,
            None,
            format!("revision {} is running everywhere", rec.info.number),
        );
    } else if !all_converged && rec.info.state == RevisionState::Applied {
        // Re-read: a rollout that failed in this very pass recorded it, and
        // this pass's copy must not overwrite that.
        if let Some(mut rolling) = agent
            .store()
            .revision(rec.info.number)?
            .filter(|r| r.info.state == RevisionState::Applied)
        {
            rolling.info.state = RevisionState::RollingOut;
            agent.store().update_revision(&rolling)?;
        }
    }
    Ok(())
}

/// Publishes each service's ready replicas (and running containers' names)
/// to berth-dns; see `dns::build_records`.
fn publish_dns(agent: &Agent, manifest: &Manifest, containers: &[ContainerInfo], now: SystemTime) {
    use crate::dns::{Readiness, ReplicaView};
    let addresses = agent.live().addresses.clone();
    let replicas: Vec<ReplicaView> = containers
        .iter()
        .filter_map(|c| {
            let service = c.labels.get(LABEL_SERVICE)?;
            let phase = manifest
                .services
                .get(service)
                .and_then(|svc| phase_of(agent, c, svc, now));
            Some(ReplicaView {
                service,
                id: &c.id,
                ip: addresses.get(&c.id).copied(),
                running: matches!(c.state, ContainerState::Running { .. }),
                readiness: match phase {
                    Some(Phase::Ready) => Readiness::Ready,
                    Some(Phase::Starting) => Readiness::Unknown,
                    _ => Readiness::NotReady,
                },
            })
        })
        .collect();
    let services = manifest.services.keys().map(String::as_str);
    if let Err(e) = agent.dns.publish(services, &replicas) {
        tracing::warn!(error = %e, "publishing DNS records failed");
    }
}

/// Counts ready replicas of a service (any spec, not retiring) for status,
/// metrics and the readiness endpoint.
fn update_ready(agent: &Agent, svc: &Service, list: &[ContainerInfo], now: SystemTime) -> u32 {
    let ready_ids: Vec<String> = list
        .iter()
        .filter(|c| phase_of(agent, c, svc, now) == Some(Phase::Ready))
        .map(|c| c.id.clone())
        .collect();
    let ready = ready_ids.len() as u32;
    let members: Vec<&ContainerInfo> = list
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                ContainerState::Running { .. } | ContainerState::Created
            )
        })
        .collect();
    let mut live = agent.live();
    for c in &members {
        if !live.ports.contains_key(&c.id) {
            let ports = stored_spec(&c.labels).map(|s| s.ports).unwrap_or_default();
            live.ports.insert(c.id.clone(), ports);
        }
    }
    let l = live.services.entry(svc.name.clone()).or_default();
    l.desired = svc.replicas;
    l.ready = ready;
    l.ready_ids = ready_ids;
    l.members = members.iter().map(|c| c.id.clone()).collect();
    drop(live);
    // Every per-service series exists from the start (at 0), so rates and
    // alerts work before the first event.
    let m = &agent.metrics;
    m.container_restarts.with_label_values(&[&svc.name]);
    m.health_check_failures.with_label_values(&[&svc.name]);
    m.rollout_duration.with_label_values(&[&svc.name]);
    for result in ["success", "failed"] {
        m.rollouts.with_label_values(&[&svc.name, result]);
    }
    for kind in ["missing", "unwanted"] {
        m.drift.with_label_values(&[&svc.name, kind]);
    }
    agent
        .metrics
        .services_desired
        .with_label_values(&[&svc.name])
        .set(i64::from(svc.replicas));
    agent
        .metrics
        .services_ready
        .with_label_values(&[&svc.name])
        .set(i64::from(ready));
    ready
}

async fn reconcile_service(
    agent: &Arc<Agent>,
    rec: &RevisionRecord,
    manifest: &Manifest,
    svc: &Service,
    spec: &ContainerSpec,
    list: &[ContainerInfo],
    now: SystemTime,
) -> Result<bool, AgentError> {
    // Health checkers for running replicas.
    for c in list {
        if let (ContainerState::Running { pid, .. }, Some(h)) = (
            &c.state,
            health::of_container(svc.health.as_ref(), &c.labels),
        ) {
            health::ensure_checker(agent, &svc.name, &c.id, *pid, &h);
        }
    }
    let replicas: Vec<Replica> = list
        .iter()
        .filter_map(|c| {
            let phase = phase_of(agent, c, svc, now)?;
            let current = stored_spec(&c.labels).is_some_and(|s| s.changed_fields(spec).is_empty());
            let probe = agent
                .live()
                .health
                .get(&c.id)
                .and_then(|h| h.last_output.as_deref())
                .map(health::summary);
            Some(Replica {
                id: c.id.clone(),
                current,
                phase,
                probe,
            })
        })
        .collect();
    // The check that judges its replicas: the manifest's, else the image's.
    let check = svc.health.clone().or_else(|| {
        list.iter()
            .find_map(|c| health::of_container(None, &c.labels))
    });
    let policy = BackoffPolicy::of(svc, check.as_ref());
    let image = pinned_image(&svc.image, rec.info.digests.get(&svc.name));
    // Image VOLUMEs kept as volumes have one writer: such a service updates
    // stop-first. Until the image's config is known, nothing starts.
    let implicit = agent.implicit_volumes(svc, &image);
    let strategy = match &implicit {
        Some(v) if !v.is_empty() => berth_core::manifest::UpdateStrategy::StopFirst,
        _ => svc.update.strategy,
    };
    let spec_key = spec.canonical_json();
    let intent = {
        let clock = Instant::now();
        // A dependency counts as ready once its name resolves too (an nginx
        // with `proxy_pass http://app` exits if `app` does not resolve yet).
        let answering: BTreeMap<&str, u32> = svc
            .depends_on
            .iter()
            .map(|d| (d.as_str(), agent.dns.answering(d) as u32))
            .collect();
        let dns_serves = agent.dns.nameserver().is_some();
        let mut live = agent.live();
        let depends_on = svc
            .depends_on
            .iter()
            .map(|d| Dependency {
                service: d.clone(),
                ready: {
                    let ready = live.services.get(d).map(|l| l.ready).unwrap_or(0);
                    if dns_serves {
                        ready.min(answering.get(d.as_str()).copied().unwrap_or(0))
                    } else {
                        ready
                    }
                },
                desired: manifest.services.get(d).map(|s| s.replicas).unwrap_or(0),
            })
            .collect();
        let l = live.services.entry(svc.name.clone()).or_default();
        if l.spec.as_deref() != Some(spec_key.as_str()) {
            // A new spec starts with a clean failure count.
            l.restart.reset();
            l.spec = Some(spec_key.clone());
        }
        let ready = replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .map(|r| r.id.as_str());
        if l.restart.observe(clock, ready, &policy) {
            tracing::debug!(service = %svc.name, "stable again: restart backoff reset");
        }
        if replicas
            .iter()
            .any(|r| r.current && r.phase == Phase::Ready)
        {
            l.ready_spec = Some(spec_key.clone());
        }
        let image_failed = l
            .image_failed
            .as_ref()
            .filter(|(rev, img, _)| *rev == rec.info.number && *img == image.to_string())
            .map(|(_, _, message)| message.clone());
        Intent {
            replicas: svc.replicas,
            strategy,
            max_surge: svc.update.max_surge,
            max_unavailable: svc.update.max_unavailable,
            restart: svc.restart.policy,
            on_unhealthy: svc
                .health
                .as_ref()
                .map(|h| h.on_unhealthy)
                .unwrap_or(berth_core::manifest::OnUnhealthy::Restart),
            restart_wait: l.restart.wait(clock),
            failures: l.restart.failures(),
            // A complete revision had every service ready once.
            first_deploy: rec.info.state != RevisionState::Complete
                && l.ready_spec.as_deref() != Some(spec_key.as_str()),
            image_failed,
            depends_on,
        }
    };
    let decision = decide(&intent, &replicas);
    {
        let mut live = agent.live();
        let l = live.services.entry(svc.name.clone()).or_default();
        if decision.rolling_out && l.rollout_started.is_none() {
            l.rollout_started = Some(Instant::now());
            drop(live);
            agent.emit(
                EventKind::RolloutStarted,
                Some(&svc.name),
                format!("rolling out revision {}", rec.info.number),
            );
        }
    }
    note_waiting(agent, svc, decision.waiting.as_deref());
    let mut image_record: Option<ImageRecord> = None;
    if decision.rolling_out || decision.waiting.is_some() {
        // Pull ahead: a stop-first rollout learns of a bad image before it
        // stops anything, a waiting service starts at once when let.
        image_record = ensure_image(agent, rec, svc, &image).await;
    }
    for action in decision.actions.clone() {
        match action {
            Action::Start => {
                // The replica's host ports are bound before it starts; one
                // that cannot be is the rollout's failure (Docker refuses
                // to start such a container).
                let ports: Vec<_> = spec.ports.iter().filter_map(HostPort::of).collect();
                if let Err(e) = agent.proxy.publish(&svc.name, &ports) {
                    let message = e.to_string();
                    agent.emit(EventKind::PortFailed, Some(&svc.name), message.clone());
                    if rec.info.state != RevisionState::Complete {
                        fail_rollout(agent, rec, svc, &message).await?;
                        return Ok(false);
                    }
                    agent
                        .live()
                        .services
                        .entry(svc.name.clone())
                        .or_default()
                        .last_error = Some(message);
                    break;
                }
                if image_record.is_none() {
                    image_record = ensure_image(agent, rec, svc, &image).await;
                }
                // Decided without the image's config (pulled meanwhile): the
                // next pass decides again, knowing its VOLUMEs.
                if implicit.is_none() {
                    break;
                }
                let Some(img) = &image_record else { break };
                if let Err(e) = start_replica(agent, rec, svc, spec, &image, img).await {
                    let message = format!("starting a replica: {e}");
                    agent.emit(
                        EventKind::ContainerStartFailed,
                        Some(&svc.name),
                        message.clone(),
                    );
                    let rolling = decision.rolling_out;
                    {
                        let mut live = agent.live();
                        let l = live.services.entry(svc.name.clone()).or_default();
                        l.last_error = Some(message.clone());
                        if !rolling {
                            let wait = l.restart.record_failure(Instant::now(), &policy);
                            wake_after(agent, wait);
                        }
                    }
                    if rolling {
                        fail_rollout(agent, rec, svc, &message).await?;
                        return Ok(false);
                    }
                    break;
                }
            }
            Action::Retire { id, reason } => {
                let drain = match reason {
                    RetireReason::Replaced | RetireReason::ScaleDown => svc.update.drain,
                    RetireReason::Unhealthy | RetireReason::RolloutFailed => Duration::ZERO,
                };
                retire(agent, &svc.name, &id, drain, svc.stop_timeout, reason);
            }
            Action::Remove { id } => remove_now(agent, &svc.name, &id).await,
            Action::Failure { id, reason } => {
                let on_probation = {
                    let mut live = agent.live();
                    let l = live.services.entry(svc.name.clone()).or_default();
                    match l.probation_until {
                        Some(t) if Instant::now() < t => {
                            l.probation_until = None;
                            true
                        }
                        _ => false,
                    }
                };
                if on_probation {
                    let message = format!("replica {id} {reason} during probation");
                    fail_rollout(agent, rec, svc, &message).await?;
                    return Ok(false);
                }
                let exited = list.iter().find(|c| c.id == id);
                let oom = matches!(
                    exited.map(|c| &c.state),
                    Some(ContainerState::Exited {
                        oom_killed: true,
                        ..
                    })
                );
                agent
                    .metrics
                    .container_restarts
                    .with_label_values(&[&svc.name])
                    .inc();
                if oom {
                    agent
                        .metrics
                        .oom_kills
                        .with_label_values(&[&svc.name])
                        .inc();
                }
                agent
                    .metrics
                    .drift
                    .with_label_values(&[&svc.name, "missing"])
                    .inc();
                let (failures, wait) = {
                    let mut live = agent.live();
                    let l = live.services.entry(svc.name.clone()).or_default();
                    l.restarts += 1;
                    let wait = l.restart.record_failure(Instant::now(), &policy);
                    l.last_error = Some(format!("replica {id} {reason}"));
                    (l.restart.failures(), wait)
                };
                wake_after(agent, wait);
                let kind = if oom {
                    EventKind::ContainerOomKilled
                } else {
                    EventKind::ContainerFailed
                };
                agent.emit_container(
                    kind,
                    &svc.name,
                    &id,
                    format!(
                        "{id} {reason}; replacing it in {wait:?} (failure {failures} in a row)"
                    ),
                );
            }
            Action::FailRollout { reason } => {
                fail_rollout(agent, rec, svc, &reason).await?;
                return Ok(false);
            }
        }
    }
    update_ready(agent, svc, list, now);
    // The ports come from this pass's revision: no re-read and re-parse of
    // the whole manifest per service (that made a no-op pass O(services²)).
    sync_ports(agent, &svc.name, &spec.ports);
    let (converged, rollout_started) = {
        let mut live = agent.live();
        let l = live.services.entry(svc.name.clone()).or_default();
        l.converged = decision.converged;
        let started = if decision.converged {
            l.rollout_started.take()
        } else {
            None
        };
        (decision.converged, started)
    };
    if let Some(started) = rollout_started {
        // A successful rollout clears the error of an earlier one, and opens
        // the probation window in which a crash still rolls it back.
        if let Some(l) = agent.live().services.get_mut(&svc.name) {
            l.last_error = None;
            if !svc.update.probation.is_zero() {
                l.probation_until = Some(Instant::now() + svc.update.probation);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        agent
            .metrics
            .rollouts
            .with_label_values(&[&svc.name, "success"])
            .inc();
        agent
            .metrics
            .rollout_duration
            .with_label_values(&[&svc.name])
            .observe(secs);
        agent.emit(
            EventKind::RolloutComplete,
            Some(&svc.name),
            format!("revision {} rolled out in {secs:.1}s", rec.info.number),
        );
    }
    if converged {
        if let Some(d) = rec.info.digests.get(&svc.name) {
            set_image_info(agent, &svc.name, d);
        }
    }
    Ok(converged)
}

/// `berth_service_image_info{service,digest}` is 1 for the digest each
/// service runs now. Only this service's other digests are dropped (a
/// `reset()` here cleared every other service's series on each pass), and
/// only when its digest changed, so a no-op pass does one lookup.
fn set_image_info(agent: &Agent, service: &str, digest: &str) {
    let gauge = agent
        .metrics
        .service_image_info
        .with_label_values(&[service, digest]);
    if gauge.get() == 1 {
        return;
    }
    drop_image_info(agent, service, Some(digest));
    gauge.set(1);
}

/// Removes `berth_service_image_info` series of `service`, except `keep`.
fn drop_image_info(agent: &Agent, service: &str, keep: Option<&str>) {
    use prometheus::core::Collector;
    let info = &agent.metrics.service_image_info;
    let mut stale = Vec::new();
    for family in info.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if label("service").as_deref() == Some(service) {
                if let Some(d) = label("digest").filter(|d| Some(d.as_str()) != keep) {
                    stale.push(d);
                }
            }
        }
    }
    for d in stale {
        info.remove_label_values(&[service, &d]).ok();
    }
}

/// The image record of a pinned image, pulling it in the background when
/// missing. `None` means not available yet: a pull runs, waits out its retry
/// backoff after a transient failure, or failed for good in this revision
/// (recorded in `image_failed`, which fails the rollout on the next pass).
async fn ensure_image(
    agent: &Arc<Agent>,
    rec: &RevisionRecord,
    svc: &Service,
    image: &ImageRef,
) -> Option<ImageRecord> {
    if let Ok(Some(rec)) = agent.images.find(image) {
        if agent.images.is_complete(&rec) {
            return Some(rec);
        }
    }
    let key = image.to_string();
    let revision = rec.info.number;
    {
        let mut live = agent.live();
        if live.pulling.contains(&key) {
            return None;
        }
        let l = live.services.entry(svc.name.clone()).or_default();
        if l.pull_retry.wait(Instant::now()).is_some() {
            return None;
        }
        if l.image_failed
            .as_ref()
            .is_some_and(|(rev, img, _)| *rev == revision && *img == key)
        {
            return None;
        }
        live.pulling.insert(key.clone());
    }
    let (agent, image, service) = (agent.clone(), image.clone(), svc.name.clone());
    tokio::spawn(async move {
        let result = agent.images.pull(&image, None).await;
        let failure = {
            let mut live = agent.live();
            live.pulling.remove(&key);
            let l = live.services.entry(service.clone()).or_default();
            match &result {
                Ok(_) => {
                    l.pull_retry.reset();
                    None
                }
                Err(e) if e.is_permanent() => {
                    let message = format!("pulling {image}: {e}");
                    l.image_failed = Some((revision, key.clone(), message.clone()));
                    l.last_error = Some(message);
                    Some(format!("{image}: {e} (permanent: not retried)"))
                }
                Err(e) => {
                    let wait = l.pull_retry.fail(Instant::now(), &PULL_RETRY);
                    wake_after(&agent, wait);
                    l.last_error = Some(format!("pulling {image}: {e}; retrying in {wait:?}"));
                    Some(format!("{image}: {e}; retrying in {wait:?}"))
                }
            }
        };
        match result {
            Ok(rec) => agent.emit(
                EventKind::ImagePulled,
                Some(&service),
                format!("{} as {}", image, rec.digest),
            ),
            Err(_) => agent.emit(
                EventKind::PullFailed,
                Some(&service),
                failure.unwrap_or_default(),
            ),
        }
        agent.wake.notify_one();
    });
    None
}

/// Runs a pass when a backoff ends, so a replacement starts on time rather
/// than up to [`RESYNC`] later.
fn wake_after(agent: &Arc<Agent>, wait: Duration) {
    let agent = agent.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        agent.wake.notify_one();
    });
}

/// Records (and announces once) what a service waits for before starting
/// replicas; status shows it as the service's last error while it lasts.
fn note_waiting(agent: &Agent, svc: &Service, waiting: Option<&str>) {
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
    .map_err(|e| AgentError::BadRequest(format!("{image}: {e}")))?;
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
    cfg.labels.insert(LABEL_SERVICE.into(), svc.name.clone());
    cfg.labels.insert(LABEL_SPEC.into(), spec.canonical_json());
    cfg.labels
        .insert(LABEL_REVISION.into(), rec.info.number.to_string());
    cfg.labels.insert(LABEL_IMAGE.into(), image.to_string());
    let image_health = health::from_image(img.run.healthcheck.as_ref());
    if let Some(h) = &image_health {
        cfg.labels.insert(
            health::LABEL_IMAGE_HEALTH.into(),
            serde_json::to_string(h).map_err(|e| AgentError::Internal(e.to_string()))?,
        );
    }
    if !img.run.exposed_ports.is_empty() {
        cfg.labels
            .insert(LABEL_EXPOSED_PORTS.into(), img.run.exposed_ports.join(","));
    }
    cfg.dns_server = agent.dns.nameserver();
    cfg.labels
        .insert(LABEL_VOLUMES.into(), volume_names.join(","));
    let rt = agent.runtime.clone();
    let net = agent.network.clone();
    let (started, ip) = tokio::task::spawn_blocking(move || {
        let att = net
            .attach(&cfg.id)
            .map_err(|e| AgentError::Runtime(format!("network: {e}")))?;
        cfg.netns = Some(att.netns_path.clone());
        cfg.address = Some(att.ip);
        match rt.create_and_start(&cfg) {
            Ok(info) => Ok((info, att.ip)),
            Err(e) => {
                let undo = net
                    .detach(&cfg.id)
                    .err()
                    .map(|u| format!("; undoing the network also failed: {u}"));
                Err(AgentError::Runtime(format!(
                    "{e}{}",
                    undo.unwrap_or_default()
                )))
            }
        }
    })
    .await
    .map_err(|e| AgentError::Internal(e.to_string()))??;
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
            return Err(AgentError::BadRequest(format!(
                "{}: {}",
                p.key(&svc.name),
                p.message(&svc.name)
            )));
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
    .map_err(|e| AgentError::Internal(e.to_string()))??;
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

/// Takes a replica out of service: no longer ready at once, then after
/// `drain` stopped (stop_signal, SIGKILL after stop_timeout) and removed.
fn retire(
    agent: &Arc<Agent>,
    service: &str,
    id: &str,
    drain: Duration,
    stop_timeout: Duration,
    reason: RetireReason,
) {
    if agent
        .live()
        .retiring
        .insert(id.to_string(), service.to_string())
        .is_some()
    {
        return;
    }
    // New connections stop at once; in-flight ones may finish.
    sync_proxy(agent, service);
    let (agent, service, id) = (agent.clone(), service.to_string(), id.to_string());
    tokio::spawn(async move {
        agent.wake.notify_one();
        if !drain.is_zero() {
            tokio::time::sleep(drain).await;
        }
        // In-flight connections get up to the stop timeout to finish.
        let deadline = Instant::now() + stop_timeout;
        while agent.proxy.active(&service, &id) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rt = agent.runtime.clone();
        let net = agent.network.clone();
        let archive = agent.log_archive.clone();
        let id2 = id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let stopped = rt.stop(&id2, None, None);
            let removed = crate::logs::remove_keeping_logs(&rt, &archive, &id2);
            if let Err(e) = net.detach(&id2) {
                tracing::warn!(container = %id2, error = %e, "network detach failed");
            }
            (stopped, removed)
        })
        .await;
        {
            let mut live = agent.live();
            live.addresses.remove(&id);
            live.ports.remove(&id);
        }
        health::forget(&agent, &id);
        match result {
            Ok((_, Ok(()))) => agent.emit_container(
                EventKind::ContainerRemoved,
                &service,
                &id,
                format!("{id} removed ({})", reason_text(reason)),
            ),
            Ok((_, Err(e))) => {
                agent.emit_container(
                    EventKind::ContainerRemoveFailed,
                    &service,
                    &id,
                    format!("{id}: {e}"),
                );
            }
            Err(e) => tracing::error!(container = %id, error = %e, "retire task failed"),
        }
        agent.live().retiring.remove(&id);
        sync_proxy(&agent, &service);
        agent.wake.notify_one();
    });
}

/// Points a service's published ports at its replicas, with the ports
/// of the spec its last pass rolled out (see [`sync_ports`]).
pub fn sync_proxy(agent: &Agent, service: &str) {
    let spec_ports = match agent.live().services.get(service) {
        Some(l) => l.spec_ports.clone(),
        None => return,
    };
    sync_ports(agent, service, &spec_ports);
}

/// Publishes `service`: each replica publishes the host ports of its own
/// spec (so during a rollout that moves a port, the old port stays with the
/// old replicas until they retire); Ready replicas take new connections,
/// retiring ones drain; the ports of `spec_ports` (the spec being rolled
/// out) are held even before a replica has them. Ports that cannot be
/// published are recorded (status; readiness answers 503) and named in an event.
fn sync_ports(agent: &Agent, service: &str, spec_ports: &[berth_core::manifest::Port]) {
    use crate::network::proxy::{Endpoint, EndpointState};
    let ports = {
        let mut live = agent.live();
        let live = &mut *live;
        let Some(l) = live.services.get_mut(service) else {
            return;
        };
        l.spec_ports = spec_ports.to_vec();
        let mut ports: BTreeMap<HostPort, Vec<Endpoint>> = BTreeMap::new();
        for hp in spec_ports.iter().filter_map(HostPort::of) {
            ports.entry(hp).or_default();
        }
        for id in &l.members {
            let state = if live.retiring.contains_key(id) {
                Some(EndpointState::Draining)
            } else if l.ready_ids.contains(id) {
                Some(EndpointState::Ready)
            } else {
                None
            };
            let (Some(ip), Some(own)) = (live.addresses.get(id), live.ports.get(id)) else {
                continue;
            };
            for p in own {
                let Some(hp) = HostPort::of(p) else { continue };
                let eps = ports.entry(hp).or_default();
                if let Some(state) = state {
                    eps.push(Endpoint {
                        id: id.clone(),
                        addr: std::net::SocketAddrV4::new(*ip, p.container),
                        state,
                    });
                }
            }
        }
        ports
    };
    let errors: Vec<String> = agent
        .proxy
        .set_service(service, ports)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let mut live = agent.live();
    let Some(l) = live.services.get_mut(service) else {
        return;
    };
    if l.unpublished == errors {
        return;
    }
    l.unpublished = errors.clone();
    if errors.is_empty() {
        return;
    }
    let message = errors.join("; ");
    l.last_error = Some(message.clone());
    drop(live);
    agent.emit(EventKind::PortFailed, Some(service), message);
}

fn reason_text(r: RetireReason) -> &'static str {
    match r {
        RetireReason::Replaced => "replaced",
        RetireReason::ScaleDown => "scaled down",
        RetireReason::Unhealthy => "unhealthy",
        RetireReason::RolloutFailed => "rollout failed",
    }
}

async fn remove_now(agent: &Arc<Agent>, service: &str, id: &str) {
    let rt = agent.runtime.clone();
    let net = agent.network.clone();
    let archive = agent.log_archive.clone();
    let id2 = id.to_string();
    let result = tokio::task::spawn_blocking(move || {
        let removed = crate::logs::remove_keeping_logs(&rt, &archive, &id2);
        if let Err(e) = net.detach(&id2) {
            tracing::warn!(container = %id2, error = %e, "network detach failed");
        }
        removed
    })
    .await;
    {
        let mut live = agent.live();
        live.addresses.remove(id);
        live.ports.remove(id);
    }
    health::forget(agent, id);
    match result {
        Ok(Ok(())) => agent.emit_container(
            EventKind::ContainerRemoved,
            service,
            id,
            format!("{id} removed (exited)"),
        ),
        Ok(Err(e)) => agent.emit_container(
            EventKind::ContainerRemoveFailed,
            service,
            id,
            format!("{id}: {e}"),
        ),
        Err(e) => tracing::error!(container = %id, error = %e, "remove failed"),
    }
}

/// A rollout failed: record it, then roll back (a new revision restoring the
/// last complete one) or halt the service until the next revision.
async fn fail_rollout(
    agent: &Arc<Agent>,
    rec: &RevisionRecord,
    svc: &Service,
    reason: &str,
) -> Result<(), AgentError> {
    let started = agent
        .live()
        .services
        .get_mut(&svc.name)
        .and_then(|l| l.rollout_started.take());
    if let Some(s) = started {
        agent
            .metrics
            .rollout_duration
            .with_label_values(&[&svc.name])
            .observe(s.elapsed().as_secs_f64());
    }
    agent
        .metrics
        .rollouts
        .with_label_values(&[&svc.name, "failed"])
        .inc();
    agent
        .live()
        .services
        .entry(svc.name.clone())
        .or_default()
        .last_error = Some(format!("rollout failed: {reason}"));
    agent.emit(
        EventKind::RolloutFailed,
        Some(&svc.name),
        format!("revision {}: {reason}", rec.info.number),
    );
    let mut failed = rec.clone();
    failed.info.state = RevisionState::Failed;
    let previous = agent
        .store()
        .revisions()?
        .into_iter()
        .rev()
        .find(|r| r.info.number < rec.info.number && r.info.state == RevisionState::Complete);
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

/// Re-resolves tags of services with `pull.check` (or `pull.policy =
/// "always"`) when due; a moved tag becomes a new revision.
fn maybe_check_tags(agent: &Arc<Agent>, rec: &RevisionRecord, manifest: &Manifest) {
    let due: Vec<Service> = {
        let mut live = agent.live();
        manifest
            .services
            .values()
            .filter(|s| s.image.digest.is_none())
            .filter(|s| {
                let every = match (s.pull.check, s.pull.policy) {
                    (Some(d), _) => d,
                    (None, PullPolicy::Always) => ALWAYS_CHECK,
                    (None, PullPolicy::IfMissing) => return false,
                };
                let l = live.services.entry(s.name.clone()).or_default();
                match l.last_check {
                    Some(t) if t.elapsed() < every => false,
                    _ => {
                        l.last_check = Some(Instant::now());
                        true
                    }
                }
            })
            .cloned()
            .collect()
    };
    if due.is_empty() {
        return;
    }
    let (agent, rec) = (agent.clone(), rec.clone());
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
                        .registry_errors
                        .with_label_values(&[s.image.registry.as_str(), e.kind()])
                        .inc();
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

/// Whether some recorded revision ran `service` (so a container of it that no
/// revision wants now was removed on purpose, not drift).
fn removal_planned(agent: &Agent, service: &str) -> bool {
    agent.store().revisions().is_ok_and(|revs| {
        revs.iter()
            .any(|r| Agent::desired_of(r).is_ok_and(|(m, _)| m.services.contains_key(service)))
    })
}
