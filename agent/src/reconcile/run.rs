//! The reconcile loop and pass. A pass applies what spawned tasks reported,
//! reads the current revision and what runs, and per service observes its
//! replicas, asks the pure `decide`, and has `execute` carry the actions
//! out. It is the only writer of service state, and returns when it next
//! needs to run (the earliest backoff, pull retry, probation or tag check),
//! as kube-rs's `Action::requeue` does. It never asks why it woke.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_core::image_ref::ImageRef;
use berth_core::manifest::{Manifest, Service};
use berth_core::spec::ContainerSpec;
use berth_core::vocab::{EventKind, RevisionState};
use tokio::sync::mpsc;

use super::backoff::BackoffPolicy;
use super::decide::{decide, Action, Dependency, Intent, Phase, Replica};
use super::execute::{note_waiting, removal_planned, set_last_error, StartResult};
use super::policy::{self, AfterStartFailure, Unwanted};
use super::publish::{phase_of, publish_dns, sync_ports, update_ready};
use super::tracker::{PullOutcome, ServiceTracker};
use crate::control::{pinned_image, Agent, AgentError};
use crate::health;
use crate::image::store::ImageRecord;
use crate::labels::{stored_spec, LABEL_SERVICE};
use crate::metrics::Drift;
use crate::runtime::{ContainerInfo, ContainerState};
use crate::state::RevisionRecord;

/// The longest the loop sleeps without a pass while anything is in motion
/// (a rollout, a replica not yet ready, a drain): a replica without a
/// health check turns ready by running past [`MIN_READY_RUN`], which only a
/// pass sees. Every other deadline wakes the loop on time.
pub const RESYNC: Duration = Duration::from_millis(500);
/// The longest the loop sleeps once everything is converged and every
/// running container's exit is watched through pidfds (an exit, a health
/// change, an apply or a finished task wakes it at once), so an idle agent
/// with a thousand containers lists them every few seconds, not twice a
/// second. It bounds how late a change made behind the agent's back (a
/// container directory removed by hand) is seen.
pub const IDLE_RESYNC: Duration = Duration::from_secs(5);
/// How often `pull.policy = "always"` re-resolves tags.
pub const ALWAYS_CHECK: Duration = Duration::from_secs(30);
pub use super::policy::MIN_READY_RUN;

/// What a spawned task reports back; the next pass applies it.
#[derive(Debug)]
pub enum Report {
    /// A retire task stopped and removed a replica (or failed to).
    Retired {
        service: String,
        id: String,
        reason: &'static str,
        result: Result<(), String>,
    },
    /// A background pull finished: the digest, or (permanent, message).
    Pulled {
        service: String,
        image: ImageRef,
        revision: u64,
        result: Result<String, (bool, String)>,
    },
}

/// The reconciler: the agent, each service's [`ServiceTracker`], and the
/// channel on which its spawned tasks report.
#[derive(Debug)]
pub struct Reconciler {
    pub(super) agent: Arc<Agent>,
    trackers: BTreeMap<String, ServiceTracker>,
    pub(super) reporter: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// What never changes for a revision number or a container id, kept so
    /// a no-op pass does not parse it again (see [`Memo`]).
    memo: Memo,
    /// The last pass found every service converged and nothing draining.
    settled: bool,
    /// Whether berth-dns serves, asked once per pass (it reads its /proc
    /// entry; asked per service it was a third of an idle pass at 1000).
    dns_serves: bool,
    /// Services with a replica a retire task removed after this pass read
    /// the list but has not reported yet (see `Intent::retiring_unreported`).
    retiring_unreported: BTreeSet<String>,
}

/// Parsed forms of immutable inputs: a revision's manifest and desired
/// specs (its files, digests, env files and restart generations never
/// change once recorded), each container's stored spec (labels never change
/// after create), and the VOLUMEs of each image pinned by digest.
#[derive(Debug, Default)]
struct Memo {
    revision: Option<(u64, Arc<Desired>)>,
    specs: std::collections::HashMap<String, Option<ContainerSpec>>,
    image_volumes: std::collections::HashMap<String, Vec<String>>,
}

/// A revision's manifest, desired services and their canonical specs.
#[derive(Debug)]
struct Desired {
    manifest: Manifest,
    desired: Vec<berth_core::plan::DesiredService>,
    canonical: Vec<String>,
}

/// One service after its part of a pass.
#[derive(Debug, Clone, Copy)]
struct ServiceOutcome {
    converged: bool,
    /// When the service next needs a pass, if nothing else happens first.
    next: Option<Instant>,
}

impl ServiceOutcome {
    const FAILED: ServiceOutcome = ServiceOutcome {
        converged: false,
        next: None,
    };
}

/// Runs reconcile passes until `stop` turns true. Signals `first_pass` after
/// the first pass (whatever its result).
pub async fn run_loop(
    agent: Arc<Agent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    first_pass: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_pass = Some(first_pass);
    let mut reconciler = Reconciler::new(agent.clone());
    agent.runtime.watch_exits();
    loop {
        let started = Instant::now();
        let next = match reconciler.pass().await {
            Ok(next) => {
                agent.metrics.last_reconcile_success.set(
                    SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                );
                next
            }
            Err(e) => {
                agent.metrics.reconcile_errors.inc();
                tracing::warn!(error = %e, "reconcile pass failed");
                None
            }
        };
        let mut draining: BTreeMap<String, i64> = BTreeMap::new();
        for service in agent.live().retiring.values() {
            *draining.entry(service.clone()).or_default() += 1;
        }
        agent.metrics.replicas_draining(&draining);
        agent
            .metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if let Some(tx) = first_pass.take() {
            let _ = tx.send(());
        }
        for pidfd in agent.runtime.take_exit_fds() {
            tokio::spawn(wake_on_exit(Arc::downgrade(&agent), pidfd));
        }
        let resync = if reconciler.settled && agent.runtime.all_running_watched() {
            IDLE_RESYNC
        } else {
            RESYNC
        };
        let sleep = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(resync)
            .min(resync);
        tokio::select! {
            _ = agent.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Wakes the loop when the process of `pidfd` exits (it turns readable);
/// ends then, or at once if the fd cannot be registered (the loop's resync
/// is then short: the container counts as unwatched only if the runtime
/// holds no pidfd for it, so this is the rare case of a full reactor).
async fn wake_on_exit(agent: std::sync::Weak<Agent>, pidfd: std::os::fd::OwnedFd) {
    let Ok(fd) = crate::sys::tty::register_async(pidfd) else {
        return;
    };
    if fd.readable().await.is_ok() {
        if let Some(agent) = agent.upgrade() {
            agent.wake.notify_one();
        }
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Reconciler {
    pub fn new(agent: Arc<Agent>) -> Reconciler {
        let (reporter, reports) = mpsc::unbounded_channel();
        Reconciler {
            agent,
            trackers: BTreeMap::new(),
            reporter,
            reports,
            memo: Memo::default(),
            settled: false,
            dns_serves: false,
            retiring_unreported: BTreeSet::new(),
        }
    }

    /// The tracker of `service` (created on first use).
    pub(super) fn tracker(&mut self, service: &str) -> &mut ServiceTracker {
        self.trackers.entry(service.to_string()).or_default()
    }

    /// One pass over every service of the current revision. Returns when
    /// the next pass is due at the latest for a deadline of its own (the
    /// loop also runs one when woken, and every [`RESYNC`]).
    pub async fn pass(&mut self) -> Result<Option<Instant>, AgentError> {
        self.settled = false;
        self.dns_serves = self.agent.dns.nameserver().is_some();
        let agent = self.agent.clone();
        let Some(rec) = agent.store().latest_revision()? else {
            return Ok(None);
        };
        let parsed = self.desired_of(&rec)?;
        let (manifest, desired) = (&parsed.manifest, &parsed.desired);
        let mut containers = agent.list_containers().await?;
        // Reports are applied after the list is read: a replica reported
        // removed is dropped from it, and a retire task that removed its
        // replica but has not reported yet leaves its service retiring for
        // this pass (a stop-first start waits, and events keep their order).
        let gone = self.apply_reports();
        containers.retain(|c| !gone.contains(&c.id));
        self.stop_unsupervised(&mut containers).await;
        self.remove_abandoned(&mut containers, SystemTime::now())
            .await;
        // A set, not a scan per entry: with a thousand containers the scan
        // was a million comparisons per pass.
        let listed: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        self.retiring_unreported = agent
            .live()
            .retiring
            .iter()
            .filter(|(id, _)| !listed.contains(id.as_str()))
            .map(|(_, service)| service.clone())
            .collect();
        self.memo.specs.retain(|id, _| listed.contains(id.as_str()));
        for c in &containers {
            if !self.memo.specs.contains_key(&c.id) {
                self.memo.specs.insert(c.id.clone(), stored_spec(&c.labels));
            }
        }
        let now = SystemTime::now();
        let clock = Instant::now();
        // Each service's containers as a slice of the list, not a copy (a
        // container's labels carry its whole spec): a stable sort by service
        // keeps each service's containers oldest first.
        containers.sort_by(|a, b| {
            a.labels
                .get(LABEL_SERVICE)
                .cmp(&b.labels.get(LABEL_SERVICE))
        });
        let mut by_service: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
        let mut state_counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        for (i, c) in containers.iter().enumerate() {
            let state = match c.state {
                ContainerState::Running { .. } => "running",
                ContainerState::Exited { .. } => "exited",
                ContainerState::Created => "created",
                _ => "unknown",
            };
            *state_counts.entry(state).or_default() += 1;
            if let Some(s) = c.labels.get(LABEL_SERVICE) {
                match by_service.get_mut(s.as_str()) {
                    Some(range) => range.end = i + 1,
                    None => {
                        by_service.insert(s.clone(), i..i + 1);
                    }
                }
            }
        }
        let containers = containers;
        agent.metrics.containers_by_state(&state_counts);
        forget_gone(&agent, &containers);
        self.check_tags(&rec, manifest, clock);

        let mut all_converged = true;
        let mut next = None;
        for ((svc, want), canonical) in manifest
            .services
            .values()
            .zip(desired.iter())
            .zip(parsed.canonical.iter())
        {
            let list = by_service
                .remove(&svc.name)
                .map_or(&[][..], |range| &containers[range]);
            if rec.halted.contains(&svc.name) {
                all_converged = false;
                update_ready(&agent, svc, list, now, None);
                // What runs keeps its ports; the halted spec's are not held.
                sync_ports(&agent, &svc.name, &[]);
                continue;
            }
            let out = self
                .reconcile_service(
                    &rec,
                    manifest,
                    svc,
                    (&want.spec, canonical),
                    list,
                    now,
                    clock,
                )
                .await?;
            all_converged &= out.converged;
            next = earliest(next, out.next);
        }
        // Containers of services no revision wants. While any is still there
        // (draining included), the revision has not rolled out.
        for (service, range) in by_service {
            for c in &containers[range] {
                all_converged = false;
                let retiring = agent.live().retiring.contains_key(&c.id);
                // A service a revision removed goes as planned; only a
                // container no revision ever asked for is drift.
                if !retiring && !removal_planned(&agent, &service) {
                    agent.metrics.drift(&service, Drift::Unwanted);
                }
                match policy::unwanted(&c.state, retiring) {
                    Unwanted::Leave => {}
                    Unwanted::Retire {
                        reason,
                        drain,
                        stop_timeout,
                    } => self.retire(&service, &c.id, drain, stop_timeout, reason),
                    Unwanted::Remove => self.remove_now(&service, &c.id).await,
                }
            }
            agent.live().services.remove(&service);
            agent.metrics.service_gone(&service);
        }
        self.trackers
            .retain(|name, _| manifest.services.contains_key(name));
        // Published ports of services no longer in the manifest; then DNAT
        // rules of services the agent no longer knows (after a full pass, so
        // a restart never removes rules before their replacement exists).
        for (service, _) in agent.proxy.published() {
            if !manifest.services.contains_key(&service) {
                agent.proxy.remove_service(&service);
            }
        }
        agent
            .proxy
            .prune(&manifest.services.keys().map(String::as_str).collect());
        publish_dns(&agent, manifest, &containers, now);
        self.advance_revision(&rec, all_converged)?;
        self.settled = all_converged && agent.live().retiring.is_empty();
        Ok(next)
    }

    /// The parsed manifest and desired specs of `rec` (parsed once per
    /// revision number).
    fn desired_of(&mut self, rec: &RevisionRecord) -> Result<Arc<Desired>, AgentError> {
        if let Some((n, d)) = &self.memo.revision {
            if *n == rec.info.number {
                return Ok(d.clone());
            }
        }
        let (manifest, desired) = Agent::desired_of(rec)?;
        let canonical = desired.iter().map(|d| d.spec.canonical_json()).collect();
        let d = Arc::new(Desired {
            manifest,
            desired,
            canonical,
        });
        self.memo.revision = Some((rec.info.number, d.clone()));
        Ok(d)
    }

    /// The VOLUMEs the image declares, once its config is here (`None`: not
    /// pulled yet); remembered for images pinned by digest.
    fn image_volumes(&mut self, image: &ImageRef) -> Option<Vec<String>> {
        let key = image.to_string();
        if let Some(v) = self.memo.image_volumes.get(&key) {
            return Some(v.clone());
        }
        let agent = &self.agent;
        let rec = agent.images.find(image).ok().flatten()?;
        let declared = agent.volumes.image_volumes(&agent.images, &rec);
        if image.digest.is_some() {
            self.memo.image_volumes.insert(key, declared.clone());
        }
        Some(declared)
    }

    /// Moves the current revision's state after a pass (see
    /// [`RevisionState::after_pass`]).
    fn advance_revision(
        &self,
        rec: &RevisionRecord,
        all_converged: bool,
    ) -> Result<(), AgentError> {
        let agent = &self.agent;
        match rec.info.state.after_pass(all_converged) {
            Some(RevisionState::Complete) => {
                let mut done = rec.clone();
                done.info.state = RevisionState::Complete;
                agent.store().update_revision(&done)?;
                agent.emit(
                    EventKind::RevisionComplete,
                    None,
                    format!("revision {} is running everywhere", rec.info.number),
                );
            }
            Some(state) => {
                // Re-read: a rollout that failed in this very pass recorded
                // it, and this pass's copy must not overwrite that.
                if let Some(mut current) = agent
                    .store()
                    .revision(rec.info.number)?
                    .filter(|r| r.info.state == rec.info.state)
                {
                    current.info.state = state;
                    agent.store().update_revision(&current)?;
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Applies what spawned tasks reported since the last pass. Returns the
    /// ids of the replicas they removed.
    fn apply_reports(&mut self) -> BTreeSet<String> {
        let mut gone = BTreeSet::new();
        while let Ok(report) = self.reports.try_recv() {
            match report {
                Report::Retired {
                    service,
                    id,
                    reason,
                    result,
                } => {
                    if result.is_ok() {
                        gone.insert(id.clone());
                    }
                    self.removed(&service, &id, reason, result);
                    self.agent.live().retiring.remove(&id);
                    super::publish::sync_proxy(&self.agent, &service);
                }
                Report::Pulled {
                    service,
                    image,
                    revision,
                    result,
                } => self.pulled(&service, &image, revision, result),
            }
        }
        gone
    }

    /// Records a background pull's result: its retry backoff or permanent
    /// failure, the service's error, and an event.
    fn pulled(
        &mut self,
        service: &str,
        image: &ImageRef,
        revision: u64,
        result: Result<String, (bool, String)>,
    ) {
        let agent = self.agent.clone();
        let key = image.to_string();
        agent.live().pulling.remove(&key);
        let outcome = match &result {
            Ok(_) => PullOutcome::Pulled,
            Err((true, e)) => PullOutcome::Permanent(format!("pulling {image}: {e}")),
            Err((false, e)) => PullOutcome::Transient(e.clone()),
        };
        let wait = self
            .tracker(service)
            .pulled(Instant::now(), revision, &key, &outcome);
        let (error, event) = match (&outcome, &result) {
            (PullOutcome::Pulled, Ok(digest)) => {
                agent.emit(
                    EventKind::ImagePulled,
                    Some(service),
                    format!("{image} as {digest}"),
                );
                return;
            }
            (PullOutcome::Permanent(message), Err((_, e))) => (
                message.clone(),
                format!("{image}: {e} (permanent: not retried)"),
            ),
            (_, Err((_, e))) => {
                let wait = wait.unwrap_or_default();
                (
                    format!("pulling {image}: {e}; retrying in {wait:?}"),
                    format!("{image}: {e}; retrying in {wait:?}"),
                )
            }
            (_, Ok(_)) => return,
        };
        set_last_error(&agent, service, error, revision);
        agent.emit(EventKind::PullFailed, Some(service), event);
    }

    /// One service's part of a pass: observe, decide, execute, publish.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_service(
        &mut self,
        rec: &RevisionRecord,
        manifest: &Manifest,
        svc: &Service,
        (spec, canonical): (&ContainerSpec, &str),
        list: &[ContainerInfo],
        now: SystemTime,
        clock: Instant,
    ) -> Result<ServiceOutcome, AgentError> {
        let agent = self.agent.clone();
        ensure_checkers(&agent, svc, list);
        let replicas = observe_replicas(&agent, svc, spec, list, &self.memo.specs, now);
        // The check that judges its replicas: the manifest's, else the image's.
        let check = svc.health.clone().or_else(|| {
            list.iter()
                .find_map(|c| health::of_container(None, &c.labels))
        });
        let policy = BackoffPolicy::of(svc, check.as_ref());
        let image = pinned_image(&svc.image, rec.info.digests.get(&svc.name));
        // Image VOLUMEs kept as volumes have one writer: such a service
        // updates stop-first. Until the image's config is known, nothing starts.
        let implicit = self
            .image_volumes(&image)
            .map(|declared| crate::volumes::implicit::implicit_volumes(svc, &declared));
        let strategy = match &implicit {
            Some(v) if !v.is_empty() => berth_core::manifest::UpdateStrategy::StopFirst,
            _ => svc.update.strategy,
        };
        let depends_on = dependencies(&agent, svc, manifest, self.dns_serves);
        let complete = rec.info.state == RevisionState::Complete;
        let retiring_unreported = self.retiring_unreported.contains(&svc.name);
        let tracker = self.tracker(&svc.name);
        let ready = replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .map(|r| r.id.as_str());
        let current_ready = replicas
            .iter()
            .any(|r| r.current && r.phase == Phase::Ready);
        let stable_again = tracker.observe(clock, canonical, ready, current_ready, &policy);
        if stable_again {
            tracing::debug!(service = %svc.name, "stable again: restart backoff reset");
        }
        let intent = Intent {
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
            restart_wait: tracker.restart_wait(clock),
            failures: tracker.failures(),
            first_deploy: tracker.first_deploy(complete),
            image_failed: tracker
                .image_failed_for(rec.info.number, &image.to_string())
                .map(str::to_string),
            depends_on,
            on_probation: tracker.on_probation(clock),
            retiring_unreported,
        };
        let decision = decide(&intent, &replicas);
        if decision.rolling_out && tracker.rollout_in_progress(clock) {
            agent.emit(
                EventKind::RolloutStarted,
                Some(&svc.name),
                format!("rolling out revision {}", rec.info.number),
            );
        }
        note_waiting(&agent, svc, decision.waiting.as_deref());
        let mut image_record: Option<ImageRecord> = None;
        if decision.rolling_out || decision.waiting.is_some() {
            // Pull ahead: a stop-first rollout learns of a bad image before
            // it stops anything, a waiting service starts at once when let.
            image_record = self.ensure_image(rec, svc, &image);
        }
        let updated = replicas
            .iter()
            .filter(|r| r.current && r.phase.running())
            .count() as u32;
        if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Retire { .. }))
        {
            // A retirement takes its replica off the published ports at
            // once; the replicas this pass found Ready must be on them by
            // then, or for the rest of the pass the port has no Ready
            // replica and its connections are reset.
            update_ready(&agent, svc, list, now, Some((updated, rec.info.number)));
        }
        let actions = decision.actions.clone();
        let mut i = 0;
        'actions: while i < actions.len() {
            let action = actions[i].clone();
            i += 1;
            match action {
                Action::Start => {
                    // This start and the ones right after it go as one batch.
                    let mut n = 1;
                    while matches!(actions.get(i), Some(Action::Start)) {
                        n += 1;
                        i += 1;
                    }
                    let implicit_volumes = implicit.as_ref().map(|v| !v.is_empty());
                    let results = self
                        .start_batch(
                            rec,
                            svc,
                            spec,
                            &image,
                            &mut image_record,
                            implicit_volumes,
                            n,
                        )
                        .await;
                    // The first start that did not happen decides, as one at a time did.
                    let Some(failed) = results
                        .into_iter()
                        .find(|r| !matches!(r, StartResult::Started))
                    else {
                        continue;
                    };
                    let (why, message) = match failed {
                        StartResult::Started => continue,
                        StartResult::NotYet => break 'actions,
                        StartResult::Failed(why, message) => (why, message),
                    };
                    match policy::after_start_failure(why, decision.rolling_out, complete) {
                        AfterStartFailure::FailRollout => {
                            self.fail_rollout(rec, svc, &message).await?;
                            return Ok(ServiceOutcome::FAILED);
                        }
                        AfterStartFailure::Backoff => {
                            self.tracker(&svc.name)
                                .replica_failed(Instant::now(), &policy);
                            set_last_error(&agent, &svc.name, message, rec.info.number);
                        }
                        AfterStartFailure::Report => {
                            set_last_error(&agent, &svc.name, message, rec.info.number);
                        }
                    }
                    break 'actions;
                }
                Action::Retire { id, reason } => self.retire(
                    &svc.name,
                    &id,
                    reason.drain(svc.update.drain),
                    svc.stop_timeout,
                    reason,
                ),
                Action::Remove { id } => self.remove_now(&svc.name, &id).await,
                Action::Failure { id, reason } => {
                    self.replica_failed(svc, rec, list, &id, &reason, &policy)
                }
                Action::FailRollout { reason } => {
                    self.fail_rollout(rec, svc, &reason).await?;
                    return Ok(ServiceOutcome::FAILED);
                }
            }
        }
        update_ready(&agent, svc, list, now, Some((updated, rec.info.number)));
        // The ports come from this pass's revision: no re-read and re-parse
        // of the whole manifest per service (that made a no-op pass O(services²)).
        sync_ports(&agent, &svc.name, &spec.ports);
        if let Some(l) = agent.live().services.get_mut(&svc.name) {
            l.converged = decision.converged;
        }
        if decision.converged {
            self.converged(rec, svc, stable_again);
        }
        Ok(ServiceOutcome {
            converged: decision.converged,
            next: self.tracker(&svc.name).next_deadline(Instant::now()),
        })
    }

    /// A service converged: a rollout in progress completed (its error
    /// cleared, its probation begun, counted and announced), an error of an
    /// earlier revision (or, once stable again, of this one) is cleared, and
    /// the image info metric names the digest it runs.
    fn converged(&mut self, rec: &RevisionRecord, svc: &Service, stable_again: bool) {
        let agent = self.agent.clone();
        let failures = self.tracker(&svc.name).failures();
        if let Some(l) = agent.live().services.get_mut(&svc.name) {
            if policy::error_clears(
                l.error_revision,
                rec.info.number,
                failures,
                stable_again,
                !l.unpublished.is_empty(),
            ) {
                l.last_error = None;
            }
        }
        let took = self
            .tracker(&svc.name)
            .converged(Instant::now(), svc.update.probation);
        if let Some(took) = took {
            if let Some(l) = agent.live().services.get_mut(&svc.name) {
                l.last_error = None;
            }
            agent.metrics.rollout_finished(&svc.name, true, Some(took));
            agent.emit(
                EventKind::RolloutComplete,
                Some(&svc.name),
                format!(
                    "revision {} rolled out in {:.1}s",
                    rec.info.number,
                    took.as_secs_f64()
                ),
            );
        }
        if let Some(d) = rec.info.digests.get(&svc.name) {
            agent.metrics.set_image_info(&svc.name, Some(d));
        }
    }
}

/// Forgets health checkers of containers that are gone or no longer
/// running, and adopted readiness and ports of containers that are gone.
fn forget_gone(agent: &Agent, containers: &[ContainerInfo]) {
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
    let mut live = agent.live();
    live.adopted_ready
        .retain(|id| running.contains(id.as_str()));
    let listed: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    live.ports.retain(|id, _| listed.contains(id.as_str()));
}

/// Starts the health checker of each running replica that has a check.
fn ensure_checkers(agent: &Arc<Agent>, svc: &Service, list: &[ContainerInfo]) {
    for c in list {
        if let (ContainerState::Running { pid, .. }, Some(h)) = (
            &c.state,
            health::of_container(svc.health.as_ref(), &c.labels),
        ) {
            health::ensure_checker(agent, &svc.name, &c.id, *pid, &h);
        }
    }
}

/// The replicas of `svc` as `decide` sees them: phase, whether they run the
/// desired spec, and their last probe output.
fn observe_replicas(
    agent: &Agent,
    svc: &Service,
    spec: &ContainerSpec,
    list: &[ContainerInfo],
    specs: &std::collections::HashMap<String, Option<ContainerSpec>>,
    now: SystemTime,
) -> Vec<Replica> {
    list.iter()
        .filter_map(|c| {
            let phase = phase_of(agent, c, svc, now)?;
            let parsed;
            let stored = match specs.get(&c.id) {
                Some(s) => s.as_ref(),
                None => {
                    parsed = stored_spec(&c.labels);
                    parsed.as_ref()
                }
            };
            let current = super::decide::is_current(stored, spec);
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
        .collect()
}

/// The readiness of the services `svc` depends on. A dependency counts as
/// ready once its name resolves too, while berth-dns serves (an nginx with
/// `proxy_pass http://app` exits if `app` does not resolve yet).
fn dependencies(
    agent: &Agent,
    svc: &Service,
    manifest: &Manifest,
    dns_serves: bool,
) -> Vec<Dependency> {
    svc.depends_on
        .iter()
        .map(|d| {
            let answering = agent.dns.answering(d) as u32;
            let ready = agent.live().services.get(d).map(|l| l.ready).unwrap_or(0);
            Dependency {
                service: d.clone(),
                ready: if dns_serves {
                    ready.min(answering)
                } else {
                    ready
                },
                desired: manifest.services.get(d).map(|s| s.replicas).unwrap_or(0),
            }
        })
        .collect()
}
