//! The fleet's rollout decisions as pure functions over a snapshot of its
//! etcd keys: may this host queue for a slot of a new manifest or must it
//! wait (paused, halted, an earlier group not yet baked), and does its place
//! in the queue grant it a slot. [`Cache`] is the watched part of the keys
//! (queue, halts, pause) kept current from etcd's watch events, so a waiting
//! host learns of a freed slot or a halt without polling. Executing the
//! decisions (etcd I/O) is in `etcd`.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_core::api::{FleetHalt, FleetHostRecord};

/// The rollout policy in force: the manifest's `[fleet]` over the agent's
/// configuration over the defaults (1 host at once, no groups, no bake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Most hosts holding a slot at once (>= 1).
    pub max_parallel: u32,
    /// Groups in rollout order; a group not listed comes after every listed one.
    pub groups: Vec<String>,
    /// How long every host of an earlier group must have been healthy on the
    /// new manifest before a later group may queue.
    pub bake: Duration,
    /// Hosts that completed a manifest later halted roll back.
    pub auto_revert: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_parallel: 1,
            groups: Vec::new(),
            bake: Duration::ZERO,
            auto_revert: false,
        }
    }
}

impl Policy {
    /// A group's place in the rollout order (unlisted groups last).
    pub fn rank(&self, group: &str) -> usize {
        self.groups
            .iter()
            .position(|g| g == group)
            .unwrap_or(self.groups.len())
    }
}

/// A host waiting for (or holding) a slot: its key under `queue/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub host: String,
    /// The manifest hash it queued for.
    pub hash: String,
    /// The key's etcd create revision: the queue's order.
    pub create_revision: i64,
}

/// The fleet's keys as read at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub hosts: Vec<FleetHostRecord>,
    /// Any order; [`slot`] sorts by create revision.
    pub queue: Vec<QueueEntry>,
    pub halted: Vec<FleetHalt>,
    pub paused: bool,
}

/// Why a host may not queue for a manifest yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// `berthctl fleet pause`.
    Paused,
    /// The manifest failed on `host`.
    Halted { host: String, reason: String },
    /// A host of an earlier group is not yet on the manifest, healthy, for
    /// the bake time.
    EarlierGroup {
        group: String,
        host: String,
        why: String,
        /// When only the bake time is missing: how much of it is left.
        ready_in: Option<Duration>,
    },
    /// In the queue behind `position - 1` hosts; `holders` have the slots.
    Queued {
        position: usize,
        holders: Vec<String>,
    },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Paused => write!(f, "the fleet is paused (berthctl fleet resume)"),
            Wait::Halted { host, reason } => write!(
                f,
                "halted: the rollout failed on {host}: {reason} (berthctl fleet resume, or commit a fix)"
            ),
            Wait::EarlierGroup {
                group, host, why, ..
            } => {
                write!(f, "waiting for group {group}: host {host} {why}")
            }
            Wait::Queued { position, holders } if holders.is_empty() => {
                write!(f, "queued for a rollout slot (position {position})")
            }
            Wait::Queued { position, holders } => write!(
                f,
                "queued for a rollout slot (position {position}; held by {})",
                holders.join(", ")
            ),
        }
    }
}

/// May `group`'s host queue for a slot to roll out `hash` at `now_ms` (Unix
/// milliseconds)? A host already in the queue for `hash` keeps its place
/// (it passed this check when it joined).
pub fn may_queue(
    snap: &Snapshot,
    me: &str,
    group: &str,
    hash: &str,
    policy: &Policy,
    now_ms: u64,
) -> Result<(), Wait> {
    if snap.paused {
        return Err(Wait::Paused);
    }
    if let Some(h) = snap.halted.iter().find(|h| h.hash == hash) {
        return Err(Wait::Halted {
            host: h.host.clone(),
            reason: h.reason.clone(),
        });
    }
    if snap.queue.iter().any(|q| q.host == me && q.hash == hash) {
        return Ok(());
    }
    let mine = policy.rank(group);
    let bake_ms = policy.bake.as_millis() as u64;
    let mut earlier: Vec<&FleetHostRecord> = snap
        .hosts
        .iter()
        .filter(|h| h.host != me && policy.rank(&h.group) < mine)
        .collect();
    earlier.sort_by(|a, b| (policy.rank(&a.group), &a.host).cmp(&(policy.rank(&b.group), &b.host)));
    // The first host not ready names the wait; while every earlier host is
    // only short of bake time, the wait ends when the last of them baked.
    let mut baking: Option<(&FleetHostRecord, u64, u64)> = None;
    for h in earlier {
        let why = if h.manifest_hash.as_deref() != Some(hash) {
            Some("is not on this manifest yet".to_string())
        } else if !h.healthy {
            Some(format!("is not healthy ({}/{} ready)", h.ready, h.desired))
        } else {
            let since = h.healthy_since_ms.unwrap_or(now_ms);
            let baked = now_ms.saturating_sub(since);
            if baked < bake_ms && baking.is_none_or(|(_, b, _)| baked < b) {
                baking = Some((h, baked, bake_ms - baked));
            }
            None
        };
        if let Some(why) = why {
            return Err(Wait::EarlierGroup {
                group: h.group.clone(),
                host: h.host.clone(),
                why,
                ready_in: None,
            });
        }
    }
    match baking {
        None => Ok(()),
        Some((h, baked, left)) => Err(Wait::EarlierGroup {
            group: h.group.clone(),
            host: h.host.clone(),
            why: format!(
                "has baked {:.1}s of {:.1}s",
                baked as f64 / 1000.0,
                bake_ms as f64 / 1000.0
            ),
            ready_in: Some(Duration::from_millis(left)),
        }),
    }
}

/// Whether `me`'s queue entry is among the first `max_parallel` by create
/// revision (a counting semaphore: ties cannot happen, etcd revisions are
/// unique per write). `Err` when it waits, or is not queued at all
/// (position 0).
pub fn slot(queue: &[QueueEntry], me: &str, max_parallel: u32) -> Result<(), Wait> {
    let mut q: Vec<&QueueEntry> = queue.iter().collect();
    q.sort_by_key(|e| e.create_revision);
    let n = max_parallel.max(1) as usize;
    let holders: Vec<String> = q.iter().take(n).map(|e| e.host.clone()).collect();
    match q.iter().position(|e| e.host == me) {
        Some(i) if i < n => Ok(()),
        Some(i) => Err(Wait::Queued {
            position: i + 1,
            holders,
        }),
        None => Err(Wait::Queued {
            position: 0,
            holders,
        }),
    }
}

/// Whether the slot held for a revision may be released: it completed and
/// has stayed complete (every replica ready) for `probation`.
pub fn may_release(complete_for: Option<Duration>, probation: Duration) -> bool {
    complete_for.is_some_and(|d| d >= probation)
}

/// What to do with the slot held for revision `n`, from that revision's
/// state (`None`: it was never recorded), whether it is still the current
/// revision, and how long it has been complete with every replica ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotNext {
    /// Still rolling out, or on probation.
    Hold,
    /// Done (or nothing to do): free the slot.
    Release(String),
    /// The rollout failed: halt its manifest for the fleet, then free the slot.
    Halt,
}

/// See [`SlotNext`].
pub fn slot_next(
    n: u64,
    state: Option<berth_core::vocab::RevisionState>,
    current: bool,
    complete_for: Option<Duration>,
    probation: Duration,
) -> SlotNext {
    use berth_core::vocab::RevisionState as S;
    match state {
        None => SlotNext::Release("nothing was recorded".into()),
        Some(S::Failed | S::RolledBack) => SlotNext::Halt,
        Some(S::Superseded) => SlotNext::Release(format!("revision {n} superseded")),
        Some(S::Applied | S::RollingOut) => SlotNext::Hold,
        Some(S::Complete) if !current => SlotNext::Release(format!("revision {n} complete")),
        Some(S::Complete) if may_release(complete_for, probation) => {
            SlotNext::Release(format!("revision {n} complete and past probation"))
        }
        Some(S::Complete) => SlotNext::Hold,
    }
}

/// The revision `auto_revert` restores on a host whose current manifest was
/// halted: the newest complete one of another manifest. `revisions` are
/// (number, state, fleet hash), oldest first.
pub fn revert_target(
    revisions: &[(u64, berth_core::vocab::RevisionState, String)],
    halted: &str,
) -> Option<u64> {
    revisions
        .iter()
        .rev()
        .find(|(_, state, hash)| {
            *state == berth_core::vocab::RevisionState::Complete && hash != halted
        })
        .map(|(n, _, _)| *n)
}

/// One change to a watched key, relative to the fleet's prefix
/// (`queue/<host>`, `halted/<hash>`, `paused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        key: String,
        value: Vec<u8>,
        create_revision: i64,
    },
    Delete {
        key: String,
    },
}

/// What one host knows of the fleet's watched keys: the halts and the pause
/// (every host watches them), its own queue entry, and — only while it waits
/// near the front of the queue — the entries ahead of it. Entries behind a
/// host never matter to it, and a host far back does not watch the queue at
/// all (it asks at the fleet interval), so a queue change reaches at most
/// the hosts near the front: O(N·K) watch events per rollout, not O(N²).
/// Built from reads at a revision, then kept current by applying the
/// watches' events in order ([`Cache::apply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cache {
    me: String,
    /// The etcd revision the cache reflects.
    pub revision: i64,
    /// This host's queue entry: (create revision, hash).
    mine: Option<(i64, String)>,
    /// The hosts whose entries are ahead of this host's, oldest first,
    /// while watched.
    ahead: Option<Vec<String>>,
    pub halted: BTreeMap<String, FleetHalt>,
    pub paused: bool,
}

/// What the cache says about a manifest `hash` this host wants to roll out,
/// without asking etcd (a freed slot or a halt changes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub paused: bool,
    /// The halt of `hash`, if any.
    pub halted: Option<FleetHalt>,
    /// This host is in the queue for `hash`.
    pub queued: bool,
    /// The entries ahead of it are watched.
    pub watching: bool,
    /// ... and fewer than `max_parallel` are left: its turn came.
    pub slot: bool,
}

/// Where a queued host that is not yet granted stands, from the entries
/// ahead of it that [`etcd`](super::etcd) read (at most `limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Fewer than `max_parallel` ahead: it holds a slot.
    Slot,
    /// Known to be among the first `limit`: watch the entries ahead.
    Near,
    /// `limit` or more ahead: ask again at the fleet interval.
    Far,
}

/// How long a manifest applied through the API keeps waiting (its place in
/// the slot queue, its pending reason) without being applied again:
/// 10 × the fleet interval, at least 5 s; once its turn has come
/// (`at_front`: fewer than K entries ahead, so it holds a slot nobody
/// takes) 3 s, at least the interval. `berthctl apply --wait` asks every
/// second; a manifest source retries by itself and keeps it as long as it
/// waits.
pub fn unasked_hold(interval: Duration, at_front: bool) -> Duration {
    if at_front {
        interval.max(Duration::from_secs(3))
    } else {
        (interval * 10).max(Duration::from_secs(5))
    }
}

/// Whether a waiting manifest is given up: nothing retries it (an API
/// apply) and it was not asked again for `hold`. Once its turn came, an
/// entry kept for nobody would block every host behind it.
pub fn given_up(retried: bool, since_asked: Duration, hold: Duration) -> bool {
    !retried && since_asked >= hold
}

/// How many entries ahead a waiting host reads (and watches, once it is
/// that close): 4 × `max_parallel`, so the queue cannot move past a host
/// between two of its reads unless a whole slot generation (K hosts) rolls
/// out in a quarter of the fleet interval.
pub fn near_limit(max_parallel: u32) -> usize {
    4 * max_parallel.max(1) as usize
}

/// See [`Place`]; `ahead` is how many entries etcd returned (capped at `limit`).
pub fn place(ahead: usize, max_parallel: u32, limit: usize) -> Place {
    if ahead < max_parallel.max(1) as usize {
        Place::Slot
    } else if ahead < limit {
        Place::Near
    } else {
        Place::Far
    }
}

impl Cache {
    /// An empty cache for host `me` at `revision`.
    pub fn new(me: &str, revision: i64) -> Cache {
        Cache {
            me: me.to_string(),
            revision,
            ..Default::default()
        }
    }

    /// Applies one change made at etcd revision `revision` (changes must come
    /// in revision order, as a read then a watch from the next revision
    /// deliver them). Unknown keys and unreadable halts are skipped; queue
    /// puts are ignored (an entry created later is behind this host).
    pub fn apply(&mut self, revision: i64, change: Change) {
        self.revision = self.revision.max(revision);
        match change {
            Change::Put { key, value, .. } => {
                if key == "paused" {
                    self.paused = true;
                } else if let Some(hash) = key.strip_prefix("halted/") {
                    match serde_json::from_slice::<FleetHalt>(&value) {
                        Ok(h) => {
                            self.halted.insert(hash.to_string(), h);
                        }
                        Err(e) => tracing::warn!(key, error = %e, "unreadable fleet halt"),
                    }
                }
            }
            Change::Delete { key } => {
                if key == "paused" {
                    self.paused = false;
                } else if let Some(host) = key.strip_prefix("queue/") {
                    if let Some(ahead) = self.ahead.as_mut() {
                        ahead.retain(|h| h != host);
                    }
                    if host == self.me {
                        self.mine = None;
                        self.ahead = None;
                    }
                } else if let Some(hash) = key.strip_prefix("halted/") {
                    self.halted.remove(hash);
                }
            }
        }
    }

    /// This host's queue entry: (create revision, hash); `None` after it
    /// left the queue.
    pub fn set_mine(&mut self, mine: Option<(i64, String)>) {
        if mine.is_none() {
            self.ahead = None;
        }
        self.mine = mine;
    }

    /// This host's queue entry: (create revision, hash).
    pub fn mine(&self) -> Option<(i64, &str)> {
        self.mine.as_ref().map(|(r, h)| (*r, h.as_str()))
    }

    /// The entries ahead as read at `revision` (a watch of the queue's
    /// deletions from the next revision keeps them); `None`: not watched.
    pub fn set_ahead(&mut self, revision: i64, ahead: Option<Vec<String>>) {
        self.revision = self.revision.max(revision);
        self.ahead = ahead;
    }

    /// How many entries are ahead, while watched.
    pub fn ahead(&self) -> Option<usize> {
        self.ahead.as_ref().map(Vec::len)
    }

    /// The first `n` hosts ahead (the slot holders, with `n` = K), while
    /// watched.
    pub fn first(&self, n: usize) -> Vec<String> {
        self.ahead.iter().flatten().take(n).cloned().collect()
    }

    /// See [`View`].
    pub fn view(&self, hash: &str, max_parallel: u32) -> View {
        let queued = self.mine.as_ref().is_some_and(|(_, h)| h == hash);
        let ahead = self.ahead();
        View {
            paused: self.paused,
            halted: self.halted.get(hash).cloned(),
            queued,
            watching: queued && ahead.is_some(),
            slot: queued && ahead.is_some_and(|a| a < max_parallel.max(1) as usize),
        }
    }

    /// The halts, oldest first.
    pub fn halts(&self) -> Vec<FleetHalt> {
        let mut h: Vec<FleetHalt> = self.halted.values().cloned().collect();
        h.sort_by(|a, b| a.time.cmp(&b.time));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_apply_not_asked_again_is_given_up_a_source_never() {
        let s = Duration::from_secs;
        assert_eq!(unasked_hold(Duration::from_millis(200), false), s(5));
        assert_eq!(unasked_hold(s(2), false), s(20));
        // Its turn came: the slot it holds for nobody goes soon.
        assert_eq!(unasked_hold(Duration::from_millis(200), true), s(3));
        assert_eq!(unasked_hold(s(5), true), s(5));
        let cases = [
            // (retried by a source, since last asked, hold) → given up
            ((false, s(4), s(5)), false),
            ((false, s(5), s(5)), true),
            ((false, s(60), s(20)), true),
            ((true, s(3600), s(20)), false),
        ];
        for ((retried, since, hold), want) in cases {
            assert_eq!(
                given_up(retried, since, hold),
                want,
                "{retried} {since:?} {hold:?}"
            );
        }
    }

    fn host(name: &str, group: &str, hash: &str, healthy: bool, since: u64) -> FleetHostRecord {
        FleetHostRecord {
            host: name.into(),
            group: group.into(),
            manifest_hash: Some(hash.into()),
            healthy,
            healthy_since_ms: healthy.then_some(since),
            ready: u32::from(healthy),
            desired: 1,
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy {
            max_parallel: 1,
            groups: vec!["canary".into(), "default".into()],
            bake: Duration::from_secs(3),
            auto_revert: false,
        }
    }

    fn q(host: &str, hash: &str, rev: i64) -> QueueEntry {
        QueueEntry {
            host: host.into(),
            hash: hash.into(),
            create_revision: rev,
        }
    }

    #[test]
    fn who_may_queue() {
        let now = 100_000;
        let fleet = |canary: FleetHostRecord| Snapshot {
            hosts: vec![
                canary,
                host("d1", "default", "old", true, 0),
                host("d2", "default", "old", true, 0),
            ],
            ..Default::default()
        };
        let halted = Snapshot {
            halted: vec![FleetHalt {
                hash: "new".into(),
                host: "c1".into(),
                reason: "web: unhealthy".into(),
                time: "t".into(),
            }],
            ..fleet(host("c1", "canary", "old", true, 0))
        };
        let paused = Snapshot {
            paused: true,
            ..fleet(host("c1", "canary", "new", true, 0))
        };
        let queued_before = Snapshot {
            queue: vec![q("d1", "new", 7)],
            ..fleet(host("c1", "canary", "old", true, 0))
        };
        type Case<'a> = (&'a str, Snapshot, &'a str, &'a str, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            (
                "the canary goes first",
                fleet(host("c1", "canary", "old", true, 0)),
                "c1",
                "canary",
                Ok(()),
            ),
            (
                "default waits for the canary to take it",
                fleet(host("c1", "canary", "old", true, 0)),
                "d1",
                "default",
                Err("host c1 is not on this manifest yet"),
            ),
            (
                "default waits while the canary is unhealthy",
                fleet(host("c1", "canary", "new", false, 0)),
                "d1",
                "default",
                Err("not healthy (0/1 ready)"),
            ),
            (
                "default waits for the bake",
                fleet(host("c1", "canary", "new", true, now - 1_000)),
                "d1",
                "default",
                Err("has baked 1.0s of 3.0s"),
            ),
            (
                "baked: default may queue",
                fleet(host("c1", "canary", "new", true, now - 3_000)),
                "d1",
                "default",
                Ok(()),
            ),
            (
                "an unlisted group comes after default",
                fleet(host("c1", "canary", "new", true, now - 3_000)),
                "x1",
                "batch",
                Err("waiting for group default: host d1"),
            ),
            (
                "a halted manifest is not started",
                halted.clone(),
                "c1",
                "canary",
                Err("halted: the rollout failed on c1: web: unhealthy"),
            ),
            (
                "halted for the default hosts too",
                halted,
                "d1",
                "default",
                Err("halted"),
            ),
            (
                "paused: nobody queues",
                paused,
                "d1",
                "default",
                Err("paused"),
            ),
            (
                "already queued keeps its place",
                queued_before,
                "d1",
                "default",
                Ok(()),
            ),
        ];
        for (name, snap, me, group, want) in cases {
            let got = may_queue(&snap, me, group, "new", &policy(), now).map_err(|w| w.to_string());
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(needle), Err(got)) => {
                    assert!(got.contains(needle), "{name}: {got:?} lacks {needle:?}")
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn slots_go_to_the_first_max_parallel_by_create_revision() {
        let queue = vec![q("c", "h", 30), q("a", "h", 10), q("b", "h", 20)];
        let cases = [
            ("a", 1, Ok(())),
            ("b", 1, Err("position 2; held by a")),
            ("c", 1, Err("position 3; held by a")),
            ("b", 2, Ok(())),
            ("c", 2, Err("position 3; held by a, b")),
            ("c", 3, Ok(())),
            ("z", 3, Err("position 0")),
            ("a", 0, Ok(())),
        ];
        for (me, n, want) in cases {
            let got = slot(&queue, me, n).map_err(|w| w.to_string());
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(needle), Err(got)) => {
                    assert!(got.contains(needle), "{me}/{n}: {got:?} lacks {needle:?}")
                }
                (want, got) => panic!("{me}/{n}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn release_after_probation() {
        let p = Duration::from_secs(2);
        assert!(!may_release(None, p), "not complete");
        assert!(
            !may_release(Some(Duration::from_secs(1)), p),
            "on probation"
        );
        assert!(may_release(Some(p), p));
        assert!(may_release(Some(Duration::ZERO), Duration::ZERO));
    }

    #[test]
    fn what_a_held_slot_does() {
        use berth_core::vocab::RevisionState::*;
        let p = Duration::from_secs(1);
        let s = Some(Duration::from_secs(2));
        let cases = [
            (
                None,
                true,
                None,
                SlotNext::Release("nothing was recorded".into()),
            ),
            (Some(Applied), true, None, SlotNext::Hold),
            (Some(RollingOut), true, None, SlotNext::Hold),
            (Some(Complete), true, Some(Duration::ZERO), SlotNext::Hold),
            (Some(Complete), true, None, SlotNext::Hold),
            (
                Some(Complete),
                true,
                s,
                SlotNext::Release("revision 7 complete and past probation".into()),
            ),
            (
                Some(Complete),
                false,
                None,
                SlotNext::Release("revision 7 complete".into()),
            ),
            (Some(Failed), true, None, SlotNext::Halt),
            (Some(RolledBack), false, None, SlotNext::Halt),
            (
                Some(Superseded),
                false,
                None,
                SlotNext::Release("revision 7 superseded".into()),
            ),
        ];
        for (state, current, complete_for, want) in cases {
            assert_eq!(
                slot_next(7, state, current, complete_for, p),
                want,
                "{state:?} {current}"
            );
        }
    }

    #[test]
    fn auto_revert_restores_the_newest_complete_revision_of_another_manifest() {
        use berth_core::vocab::RevisionState::*;
        let r = |n, s, h: &str| (n, s, h.to_string());
        let revs = [
            r(1, Complete, "a"),
            r(2, Complete, "b"),
            r(3, Failed, "c"),
            r(4, Complete, "b"),
            r(5, Complete, "x"),
        ];
        assert_eq!(revert_target(&revs, "x"), Some(4));
        assert_eq!(
            revert_target(&revs, "b"),
            Some(5),
            "the halted hash is skipped, not older ones"
        );
        assert_eq!(
            revert_target(&revs[..1], "a"),
            None,
            "nothing else to restore"
        );
        assert_eq!(revert_target(&[], "a"), None);
    }

    fn put(key: &str, value: &str, create_revision: i64) -> Change {
        Change::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision,
        }
    }

    fn del(key: &str) -> Change {
        Change::Delete { key: key.into() }
    }

    #[test]
    fn the_cache_follows_the_watch() {
        let halt = |hash: &str| {
            serde_json::to_string(&FleetHalt {
                hash: hash.into(),
                host: "c1".into(),
                reason: "web: unhealthy".into(),
                time: "t".into(),
            })
            .expect("json")
        };
        let v = |paused, halted: bool, queued, watching, slot| View {
            paused,
            halted: halted.then(|| serde_json::from_str(&halt("new")).expect("halt")),
            queued,
            watching,
            slot,
        };
        let mut c = Cache::new("me", 5);
        assert_eq!(c.view("new", 2), v(false, false, false, false, false));
        c.set_mine(Some((8, "new".into())));
        assert_eq!(
            c.view("new", 2),
            v(false, false, true, false, false),
            "queued, not watching: no slot from the cache"
        );
        assert!(!c.view("other", 2).queued, "queued for another hash");
        c.set_ahead(9, Some(vec!["a".into(), "b".into(), "x".into()]));
        assert_eq!(c.ahead(), Some(3));
        assert_eq!(c.first(2), ["a", "b"]);
        let steps: Vec<(Change, View)> = vec![
            // A put in the queue is someone behind (or a hash update).
            (
                put("queue/z", "new", 10),
                v(false, false, true, true, false),
            ),
            (del("queue/z"), v(false, false, true, true, false)),
            (del("queue/a"), v(false, false, true, true, false)),
            // Two ahead, max_parallel 2: still waiting; one ahead: a slot.
            (del("queue/x"), v(false, false, true, true, true)),
            (put("paused", "ops", 10), v(true, false, true, true, true)),
            (del("paused"), v(false, false, true, true, true)),
            (
                put("halted/new", &halt("new"), 11),
                v(false, true, true, true, true),
            ),
            (
                put("halted/junk", "{not json", 12),
                v(false, true, true, true, true),
            ),
            (del("halted/new"), v(false, false, true, true, true)),
            // My own entry gone (lease expired): not queued, nothing watched.
            (del("queue/me"), v(false, false, false, false, false)),
        ];
        for (i, (change, want)) in steps.into_iter().enumerate() {
            let rev = 10 + i as i64;
            c.apply(rev, change.clone());
            assert_eq!(c.view("new", 2), want, "step {i}: {change:?}");
            assert_eq!(c.revision, rev);
        }
        assert_eq!(c.mine(), None);
        assert_eq!(c.ahead(), None);
        assert!(c.halts().is_empty(), "the unreadable halt is skipped");
    }

    #[test]
    fn a_waiting_host_watches_only_near_the_front() {
        assert_eq!(near_limit(50), 200);
        assert_eq!(near_limit(0), 4);
        let cases = [
            (0, 50, Place::Slot),
            (49, 50, Place::Slot),
            (50, 50, Place::Near),
            (199, 50, Place::Near),
            (200, 50, Place::Far),
            (0, 1, Place::Slot),
            (1, 1, Place::Near),
            (4, 1, Place::Far),
        ];
        for (ahead, k, want) in cases {
            assert_eq!(place(ahead, k, near_limit(k)), want, "{ahead} ahead, K={k}");
        }
        let mut c = Cache::new("me", 0);
        c.set_mine(Some((3, "x".into())));
        c.set_ahead(4, Some(vec!["a".into()]));
        c.set_mine(None);
        assert_eq!(c.ahead(), None, "leaving the queue stops the watch");
    }

    #[test]
    fn the_bake_wait_says_when_it_ends() {
        let now = 100_000;
        let snap = Snapshot {
            hosts: vec![
                host("c1", "canary", "new", true, now - 2_500),
                host("c2", "canary", "new", true, now - 1_000),
            ],
            ..Default::default()
        };
        match may_queue(&snap, "d1", "default", "new", &policy(), now) {
            Err(Wait::EarlierGroup { host, ready_in, .. }) => {
                assert_eq!(host, "c2", "the host that baked least");
                assert_eq!(ready_in, Some(Duration::from_millis(2_000)));
            }
            other => panic!("{other:?}"),
        }
        let unhealthy = Snapshot {
            hosts: vec![
                host("c1", "canary", "new", true, now - 1_000),
                host("c2", "canary", "new", false, 0),
            ],
            ..Default::default()
        };
        match may_queue(&unhealthy, "d1", "default", "new", &policy(), now) {
            Err(Wait::EarlierGroup { host, ready_in, .. }) => {
                assert_eq!(host, "c2", "not healthy wins over baking");
                assert_eq!(ready_in, None, "no end in sight");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unlisted_groups_rank_last() {
        let p = policy();
        assert_eq!(p.rank("canary"), 0);
        assert_eq!(p.rank("default"), 1);
        assert_eq!(p.rank("other"), 2);
        assert_eq!(Policy::default().rank("any"), 0);
    }
}
