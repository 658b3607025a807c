//! Restart and retry bookkeeping, modelled on Nomad's restart tracker: each
//! consecutive failure doubles the wait before the next attempt
//! (`initial × 2^(n-1)`, capped at `max`). A service's failure count resets
//! only once a replica that became ready *after* the last failure has stayed
//! ready (healthy, or running for a service without a check) for the stable
//! window — never merely because some replica has been up for a while. Pure:
//! every method takes `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_core::manifest::{Health, Service};

/// A replica must stay ready at least this long to reset its service's
/// failure backoff (longer when `health.interval × health.retries` is).
pub const STABLE_READY: Duration = Duration::from_secs(10);

/// The waits of one service's restart backoff and what counts as stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait (`restart.backoff.max`).
    pub max: Duration,
    /// How long a replica stays ready before failures are forgotten.
    pub stable_after: Duration,
}

impl BackoffPolicy {
    /// The service's `restart.backoff`; stable after [`STABLE_READY`] or one
    /// full unhealthy-detection window (`interval × retries`) of its
    /// effective `health` check (the manifest's, else the image's), whichever
    /// is longer, so a replica that flaps slower than 10 s is not judged stable.
    pub fn of(svc: &Service, health: Option<&Health>) -> BackoffPolicy {
        let window = health
            .map(|h| h.interval.saturating_mul(h.retries.max(1)))
            .unwrap_or_default();
        BackoffPolicy {
            initial: svc.restart.backoff_initial,
            max: svc.restart.backoff_max,
            stable_after: STABLE_READY.max(window),
        }
    }

    /// The wait after `failures` consecutive failures (0 → no wait).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = (failures - 1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// Consecutive failures and when the next attempt may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    last_failure: Option<Instant>,
    next_at: Option<Instant>,
}

impl Backoff {
    /// Records a failure at `now`; returns the wait before the next attempt.
    pub fn fail(&mut self, now: Instant, policy: &BackoffPolicy) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = policy.delay(self.failures);
        self.last_failure = Some(now);
        self.next_at = Some(now + wait);
        wait
    }

    /// Forgets every failure.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// How long until the next attempt may run (`None`: now).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.next_at
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the last failure was recorded.
    pub fn last_failure(&self) -> Option<Instant> {
        self.last_failure
    }
}

/// One service's restart backoff plus what proves it stable again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartTracker {
    backoff: Backoff,
    /// Replicas ready now → the first observation that saw them ready (a
    /// replica that stops being ready is dropped, so this is a streak).
    ready_since: BTreeMap<String, Instant>,
}

impl RestartTracker {
    /// Records which replicas are ready at `now` and resets the failures
    /// once one that became ready after the last failure has been ready for
    /// `policy.stable_after`. Returns true when it reset.
    pub fn observe<'a>(
        &mut self,
        now: Instant,
        ready: impl IntoIterator<Item = &'a str>,
        policy: &BackoffPolicy,
    ) -> bool {
        let mut seen = BTreeMap::new();
        for id in ready {
            let since = self.ready_since.get(id).copied().unwrap_or(now);
            seen.insert(id.to_string(), since);
        }
        self.ready_since = seen;
        let Some(last) = self.backoff.last_failure() else {
            return false;
        };
        let proven = self
            .ready_since
            .values()
            .any(|&since| since >= last && now.duration_since(since) >= policy.stable_after);
        if proven {
            self.backoff.reset();
        }
        proven
    }

    /// A replica failed at `now`; returns the wait before its replacement.
    pub fn record_failure(&mut self, now: Instant, policy: &BackoffPolicy) -> Duration {
        self.backoff.fail(now, policy)
    }

    /// How long until a replacement may start (`None`: now).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.backoff.wait(now)
    }

    /// Consecutive failures since the service was last stable.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// Forgets failures and readiness (a new spec starts afresh).
    pub fn reset(&mut self) {
        *self = RestartTracker::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: 100 * MS,
            max: 2000 * MS,
            stable_after: 10_000 * MS,
        }
    }

    #[test]
    fn delays_double_up_to_the_max() {
        let p = policy();
        let delays: Vec<u64> = (0..8).map(|n| p.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.delay(u32::MAX), p.max, "no overflow");
    }

    #[test]
    fn stable_window_covers_the_health_detection_window() {
        let text = |health: &str| {
            format!("[service.s]\nimage = \"r/i:1\"\n[service.s.restart]\nbackoff = {{ initial = \"1s\", max = \"7s\" }}\n{health}")
        };
        let svc = |t: String| {
            let mut files = berth_core::manifest::SourceFiles::new();
            files.insert("m.toml".into(), t);
            berth_core::manifest::Manifest::from_sources(&files)
                .unwrap()
                .services["s"]
                .clone()
        };
        let p = BackoffPolicy::of(&svc(text("")), None);
        assert_eq!(
            (p.initial, p.max, p.stable_after),
            (1000 * MS, 7000 * MS, STABLE_READY)
        );
        let slow = "[service.s.health]\ntcp = { port = 80 }\ninterval = \"5s\"\nretries = 4\n";
        let slow = svc(text(slow));
        assert_eq!(
            BackoffPolicy::of(&slow, slow.health.as_ref()).stable_after,
            20_000 * MS
        );
    }

    /// Each row: a sequence of (ms since start, event) and the failure count
    /// and wait (ms) expected after it.
    #[test]
    fn tracker_table() {
        enum E {
            Fail,
            Ready(&'static [&'static str]),
        }
        use E::*;
        type Row = (&'static str, Vec<(u64, E)>, u32, Option<u64>);
        let cases: Vec<Row> = vec![
            ("nothing happened", vec![], 0, None),
            ("one failure waits initial", vec![(0, Fail)], 1, Some(100)),
            (
                "never-healthy replacements back off to the max",
                (0..8).map(|i| (i * 50, Fail)).collect(),
                8,
                Some(2000),
            ),
            (
                "a replacement ready for the stable window resets",
                vec![(0, Fail), (500, Ready(&["b"])), (10_500, Ready(&["b"]))],
                0,
                None,
            ),
            (
                "ready, but not yet for the stable window",
                vec![(0, Fail), (500, Ready(&["b"])), (10_000, Ready(&["b"]))],
                1,
                None,
            ),
            (
                "a replica ready since before the failure proves nothing",
                vec![
                    (0, Ready(&["a"])),
                    (100, Fail),
                    (20_000, Ready(&["a"])),
                    (20_000, Fail),
                ],
                2,
                Some(200),
            ),
            (
                "a readiness streak that broke starts over",
                vec![
                    (0, Fail),
                    (500, Ready(&["b"])),
                    (6_000, Ready(&[])),
                    (6_500, Ready(&["b"])),
                    (12_000, Ready(&["b"])),
                ],
                1,
                None,
            ),
            (
                "up but never ready does not reset (the draining unhealthy one)",
                vec![(0, Fail), (30_000, Ready(&[])), (30_000, Fail)],
                2,
                Some(200),
            ),
        ];
        for (name, events, failures, wait) in cases {
            let p = policy();
            let t0 = Instant::now();
            let mut t = RestartTracker::default();
            let mut last = t0;
            for (ms, e) in events {
                last = t0 + Duration::from_millis(ms);
                match e {
                    Fail => {
                        t.record_failure(last, &p);
                    }
                    Ready(ids) => {
                        t.observe(last, ids.iter().copied(), &p);
                    }
                }
            }
            assert_eq!(t.failures(), failures, "{name}");
            assert_eq!(t.wait(last).map(|d| d.as_millis() as u64), wait, "{name}");
        }
    }

    #[test]
    fn wait_counts_down() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.fail(t0, &p), 100 * MS);
        assert_eq!(b.wait(t0 + 40 * MS), Some(60 * MS));
        assert_eq!(b.wait(t0 + 100 * MS), None);
        b.reset();
        assert_eq!((b.failures(), b.wait(t0)), (0, None));
    }
}
