//! One service's reconcile bookkeeping, kept by the reconcile pass alone
//! (as Nomad's restart tracker is its own type): restart backoff and what
//! proves the service stable, the spec it last saw ready, rollout timing and
//! probation, image pull retries and failures, and tag-check timing. Pure:
//! every method takes `now`, so tests move time by hand.

use std::time::{Duration, Instant};

use super::backoff::{Backoff, BackoffPolicy, RestartTracker};

/// Waits between pulls after transient failures (network, 5xx, 429): 1 s
/// doubling to 30 s. Permanent failures are not retried within a revision.
pub const PULL_RETRY: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
    stable_after: Duration::ZERO,
};

/// A pull's result as the tracker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    Pulled,
    /// Pulling again cannot help in this revision (not an image, no such
    /// manifest, a layer refused ...).
    Permanent(String),
    /// May work later (network, 5xx, 429): retried after a backoff.
    Transient(String),
}

/// The bookkeeping of one service.
#[derive(Debug, Clone, Default)]
pub struct ServiceTracker {
    /// Consecutive failures and the restart backoff they set.
    restart: RestartTracker,
    /// The canonical desired spec of the last pass (a new one resets `restart`).
    spec: Option<String>,
    /// The canonical spec of which a replica was last seen ready: while it
    /// differs from `spec`, the service is on its first deploy.
    ready_spec: Option<String>,
    /// When the rollout in progress started.
    rollout_started: Option<Instant>,
    /// Until then, a failing replica of the last rollout rolls it back.
    probation_until: Option<Instant>,
    /// When tags were last re-resolved (`pull.check`), and how often.
    last_check: Option<(Instant, Duration)>,
    /// Transient pull failures of the service's image.
    pull_retry: Backoff,
    /// A permanent pull failure: (revision, image, message). Each revision
    /// tries the pull again once.
    image_failed: Option<(u64, String, String)>,
}

impl ServiceTracker {
    /// Records what the pass observed: the desired spec (a new one starts
    /// with a clean failure count), the replicas ready now (`observe` of the
    /// restart tracker: stable long enough resets the failures) and whether
    /// a replica of the desired spec is ready. Returns true when the
    /// failures were reset because the service proved stable.
    pub fn observe<'a>(
        &mut self,
        now: Instant,
        spec: &str,
        ready: impl IntoIterator<Item = &'a str>,
        current_ready: bool,
        policy: &BackoffPolicy,
    ) -> bool {
        if self.spec.as_deref() != Some(spec) {
            self.restart.reset();
            self.spec = Some(spec.to_string());
        }
        if current_ready {
            self.ready_spec = Some(spec.to_string());
        }
        self.restart.observe(now, ready, policy)
    }

    /// No replica of the desired spec was ever ready here, and the revision
    /// has not completed (a complete revision had every service ready once).
    pub fn first_deploy(&self, revision_complete: bool) -> bool {
        !revision_complete && self.ready_spec != self.spec
    }

    /// How long until a replacement may start (`None`: now).
    pub fn restart_wait(&self, now: Instant) -> Option<Duration> {
        self.restart.wait(now)
    }

    /// Consecutive replica failures since the service was last stable.
    pub fn failures(&self) -> u32 {
        self.restart.failures()
    }

    /// A replica failed (or failed to start) at `now`; returns the wait
    /// before its replacement.
    pub fn replica_failed(&mut self, now: Instant, policy: &BackoffPolicy) -> Duration {
        self.restart.record_failure(now, policy)
    }

    /// Notes a rollout in progress; true when it just began.
    pub fn rollout_in_progress(&mut self, now: Instant) -> bool {
        if self.rollout_started.is_some() {
            return false;
        }
        self.rollout_started = Some(now);
        true
    }

    /// The service converged: ends the rollout in progress, if any, and
    /// opens its probation window. Returns how long the rollout took.
    pub fn converged(&mut self, now: Instant, probation: Duration) -> Option<Duration> {
        let started = self.rollout_started.take()?;
        if !probation.is_zero() {
            self.probation_until = Some(now + probation);
        }
        Some(now.saturating_duration_since(started))
    }

    /// The rollout failed: ends it and its probation. Returns how long it ran.
    pub fn rollout_failed(&mut self, now: Instant) -> Option<Duration> {
        self.probation_until = None;
        self.rollout_started
            .take()
            .map(|s| now.saturating_duration_since(s))
    }

    /// Within the probation window of the last rollout.
    pub fn on_probation(&self, now: Instant) -> bool {
        self.probation_until.is_some_and(|t| now < t)
    }

    /// Whether tags are due to be re-resolved every `every`; if so, the
    /// check counts as done at `now`.
    pub fn tag_check_due(&mut self, now: Instant, every: Duration) -> bool {
        match self.last_check {
            Some((t, _)) if now.saturating_duration_since(t) < every => false,
            _ => {
                self.last_check = Some((now, every));
                true
            }
        }
    }

    /// Whether a pull of `image` for `revision` may start now: not waiting
    /// out a retry backoff, and not failed for good in this revision.
    pub fn pull_may_start(&self, now: Instant, revision: u64, image: &str) -> bool {
        self.pull_retry.wait(now).is_none() && self.image_failed_for(revision, image).is_none()
    }

    /// Records a pull's outcome; returns the retry wait of a transient failure.
    pub fn pulled(
        &mut self,
        now: Instant,
        revision: u64,
        image: &str,
        outcome: &PullOutcome,
    ) -> Option<Duration> {
        match outcome {
            PullOutcome::Pulled => {
                self.pull_retry.reset();
                None
            }
            PullOutcome::Permanent(message) => {
                self.image_failed = Some((revision, image.to_string(), message.clone()));
                None
            }
            PullOutcome::Transient(_) => Some(self.pull_retry.fail(now, &PULL_RETRY)),
        }
    }

    /// The permanent pull failure of `image` in `revision`, if any.
    pub fn image_failed_for(&self, revision: u64, image: &str) -> Option<&str> {
        self.image_failed
            .as_ref()
            .filter(|(rev, img, _)| *rev == revision && img == image)
            .map(|(_, _, message)| message.as_str())
    }

    /// When this service next needs a pass even if nothing else happens: the
    /// end of its restart backoff, of its pull retry wait, of its probation,
    /// or its next tag check. `None`: only when something changes.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        [
            self.restart.wait(now).map(|d| now + d),
            self.pull_retry.wait(now).map(|d| now + d),
            self.probation_until.filter(|t| *t > now),
            self.last_check.map(|(t, every)| t + every),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: 100 * MS,
            max: 1000 * MS,
            stable_after: 500 * MS,
        }
    }

    #[test]
    fn a_new_spec_forgets_failures_and_is_a_first_deploy_until_ready() {
        let t0 = Instant::now();
        let mut t = ServiceTracker::default();
        t.observe(t0, "a", [], false, &policy());
        assert!(t.first_deploy(false));
        assert!(!t.first_deploy(true), "a complete revision was ready once");
        assert_eq!(t.replica_failed(t0, &policy()), 100 * MS);
        assert_eq!(t.replica_failed(t0, &policy()), 200 * MS);
        assert_eq!(t.failures(), 2);
        assert_eq!(t.restart_wait(t0 + 50 * MS), Some(150 * MS));
        t.observe(t0, "b", [], false, &policy());
        assert_eq!((t.failures(), t.restart_wait(t0)), (0, None));
        t.observe(t0, "b", ["r1"], true, &policy());
        assert!(!t.first_deploy(false));
    }

    #[test]
    fn stable_for_long_enough_resets_the_backoff() {
        let t0 = Instant::now();
        let mut t = ServiceTracker::default();
        t.observe(t0, "a", [], false, &policy());
        t.replica_failed(t0, &policy());
        assert!(!t.observe(t0 + 100 * MS, "a", ["r1"], true, &policy()));
        assert!(!t.observe(t0 + 500 * MS, "a", ["r1"], true, &policy()));
        assert!(t.observe(t0 + 600 * MS, "a", ["r1"], true, &policy()));
        assert_eq!(t.failures(), 0);
    }

    #[test]
    fn a_rollout_is_timed_and_opens_probation() {
        let t0 = Instant::now();
        let mut t = ServiceTracker::default();
        assert!(t.rollout_in_progress(t0));
        assert!(!t.rollout_in_progress(t0 + MS), "noted once");
        assert_eq!(t.converged(t0 + 300 * MS, 1000 * MS), Some(300 * MS));
        assert_eq!(
            t.converged(t0 + 400 * MS, 1000 * MS),
            None,
            "no rollout now"
        );
        assert!(t.on_probation(t0 + 900 * MS));
        assert!(!t.on_probation(t0 + 1300 * MS));
        assert_eq!(t.next_deadline(t0 + 900 * MS), Some(t0 + 1300 * MS));
        assert!(t.rollout_in_progress(t0 + 1000 * MS));
        assert_eq!(t.rollout_failed(t0 + 1100 * MS), Some(100 * MS));
        assert!(!t.on_probation(t0 + 1150 * MS), "a failure ends probation");
    }

    #[test]
    fn pulls_retry_transient_failures_and_not_permanent_ones() {
        let t0 = Instant::now();
        let mut t = ServiceTracker::default();
        assert!(t.pull_may_start(t0, 1, "r/a:1"));
        let wait = t.pulled(t0, 1, "r/a:1", &PullOutcome::Transient("503".into()));
        assert_eq!(wait, Some(Duration::from_secs(1)));
        assert!(!t.pull_may_start(t0 + 500 * MS, 1, "r/a:1"));
        assert_eq!(t.next_deadline(t0), Some(t0 + Duration::from_secs(1)));
        assert!(t.pull_may_start(t0 + 1000 * MS, 1, "r/a:1"));
        t.pulled(
            t0,
            1,
            "r/a:1",
            &PullOutcome::Permanent("not an image".into()),
        );
        assert_eq!(t.image_failed_for(1, "r/a:1"), Some("not an image"));
        assert!(!t.pull_may_start(t0 + Duration::from_secs(60), 1, "r/a:1"));
        assert!(
            t.pull_may_start(t0 + Duration::from_secs(60), 2, "r/a:1"),
            "a new revision tries again"
        );
        assert_eq!(t.image_failed_for(1, "r/a:2"), None);
    }

    #[test]
    fn tag_checks_come_due_every_interval() {
        let t0 = Instant::now();
        let mut t = ServiceTracker::default();
        let every = Duration::from_secs(30);
        assert!(t.tag_check_due(t0, every));
        assert!(!t.tag_check_due(t0 + Duration::from_secs(29), every));
        assert_eq!(t.next_deadline(t0), Some(t0 + every));
        assert!(t.tag_check_due(t0 + every, every));
    }
}
