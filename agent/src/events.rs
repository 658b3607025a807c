//! The event stream: a history kept in the state database (bounded in count
//! and age, so it survives `kill -9` and restarts), a recent window in memory,
//! and a broadcast channel for followers (`berthctl events -f`). Emitting never
//! blocks; a slow follower misses events and is told so rather than stalling
//! the agent. Filters (`service`, `kind`, `since`) are [`EventFilter`].

use berth_core::vocab::EventKind;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::api::Event;
use tokio::sync::broadcast;

/// Events kept in memory (the newest); the database keeps more.
pub const HISTORY: usize = 1000;
/// Most events kept in the state database.
pub const PERSISTED_MAX: usize = 10_000;
/// Oldest event kept in the state database.
pub const PERSISTED_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The sled tree holding events: key = seq (u64 big-endian), value = envelope.
pub const TREE: &str = "events";
/// Prune the database every this many events.
const PRUNE_EVERY: u64 = 64;

/// Which events a reader wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub service: Option<String>,
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since: Option<time::OffsetDateTime>,
}

impl EventFilter {
    /// Whether `e` passes. An event whose time cannot be read passes `since`.
    pub fn matches(&self, e: &Event) -> bool {
        self.service
            .as_deref()
            .is_none_or(|s| e.service.as_deref() == Some(s))
            && self.kind.as_deref().is_none_or(|k| e.kind == k)
            && self
                .since
                .is_none_or(|since| event_time(e).is_none_or(|t| t >= since))
    }
}

fn event_time(e: &Event) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339).ok()
}

/// Parses `--since`: an RFC 3339 time, or a duration back from `now` (`10m`).
pub fn parse_since(text: &str, now: time::OffsetDateTime) -> Result<time::OffsetDateTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t);
    }
    let d = berth_core::units::parse_duration(text)
        .map_err(|e| format!("`{text}` is neither an RFC 3339 time nor a duration ({e})"))?;
    Ok(now - d)
}

/// The agent's event bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<Mutex<Inner>>,
    sender: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    history: VecDeque<Event>,
    db: Option<sled::Tree>,
}

impl EventBus {
    /// A bus that keeps its history in memory only.
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(1024);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                history: VecDeque::new(),
                db: None,
            })),
            sender,
        }
    }

    /// A bus whose history is kept in `tree` (see [`TREE`]); it continues the
    /// sequence numbers found there. Unreadable records are skipped with a
    /// warning naming their key (the rest of the history stays usable).
    pub fn persistent(tree: sled::Tree) -> EventBus {
        let bus = EventBus::new();
        {
            let mut inner = bus.lock();
            for item in tree.iter().rev() {
                let Ok((key, value)) = item else { break };
                let seq = key_seq(&key);
                inner.next_seq = inner.next_seq.max(seq + 1);
                if inner.history.len() == HISTORY {
                    break;
                }
                match crate::state::decode::<Event>(TREE, &seq.to_string(), &value) {
                    Ok(e) => inner.history.push_front(e),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable event"),
                }
            }
            inner.db = Some(tree);
        }
        bus
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records and broadcasts an event.
    pub fn emit(
        &self,
        kind: EventKind,
        service: Option<&str>,
        container: Option<&str>,
        message: impl Into<String>,
    ) -> Event {
        let mut inner = self.lock();
        let event = Event {
            seq: inner.next_seq,
            time: crate::now_rfc3339(),
            kind: kind.as_str().into(),
            service: service.map(str::to_string),
            container: container.map(str::to_string),
            message: message.into(),
        };
        inner.next_seq += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        if let Some(db) = &inner.db {
            let stored = crate::state::encode(TREE, &event)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    db.insert(event.seq.to_be_bytes(), bytes)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = stored {
                tracing::warn!(error = %e, seq = event.seq, "event not persisted");
            }
            if event.seq.is_multiple_of(PRUNE_EVERY) {
                if let Err(e) = prune(db, time::OffsetDateTime::now_utc()) {
                    tracing::warn!(error = %e, "pruning old events failed");
                }
            }
        }
        drop(inner);
        let _ = self.sender.send(event.clone()); // no follower is fine
        event
    }

    /// The recent (in-memory) history, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.lock().history.iter().cloned().collect()
    }

    /// Every kept event that passes `filter`, oldest first: from the database
    /// when there is one (older than the in-memory window too).
    pub fn query(&self, filter: &EventFilter) -> Vec<Event> {
        let inner = self.lock();
        match &inner.db {
            None => inner
                .history
                .iter()
                .filter(|e| filter.matches(e))
                .cloned()
                .collect(),
            Some(db) => db
                .iter()
                .filter_map(|item| {
                    let (key, value) = item.ok()?;
                    crate::state::decode::<Event>(TREE, &key_seq(&key).to_string(), &value).ok()
                })
                .filter(|e| filter.matches(e))
                .collect(),
        }
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

fn key_seq(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// Drops the oldest events past [`PERSISTED_MAX`] and those older than
/// [`PERSISTED_MAX_AGE`] at `now`.
fn prune(db: &sled::Tree, now: time::OffsetDateTime) -> Result<(), sled::Error> {
    let excess = db.len().saturating_sub(PERSISTED_MAX);
    let oldest_kept = now - PERSISTED_MAX_AGE;
    let mut dropped = 0;
    for item in db.iter() {
        let (key, value) = item?;
        let too_old = crate::state::decode::<Event>(TREE, "", &value)
            .ok()
            .and_then(|e| event_time(&e))
            .is_some_and(|t| t < oldest_kept);
        if dropped < excess || too_old {
            db.remove(key)?;
            dropped += 1;
        } else {
            break;
        }
    }
    Ok(())
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_ordered() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        for i in 0..(HISTORY + 5) {
            bus.emit(EventKind::Health, None, None, format!("{i}"));
        }
        let h = bus.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].seq, 6);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
    }

    /// The events tree of the database in `dir`. A database just closed
    /// may still be locked for a moment by sled's flusher thread: reopening
    /// waits for it (up to 5 s), as a restarted agent would.
    fn tree(dir: &std::path::Path) -> sled::Tree {
        crate::state::open_db(dir)
            .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
            .open_tree(TREE)
            .unwrap()
    }

    #[test]
    fn a_persistent_bus_continues_where_it_stopped_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = EventBus::persistent(tree(dir.path()));
            bus.emit(EventKind::ContainerStarted, Some("web"), Some("web-1"), "a");
            bus.emit(EventKind::RolloutFailed, Some("db"), None, "b");
            bus.emit(EventKind::ContainerStarted, Some("db"), Some("db-1"), "c");
        }
        let bus = EventBus::persistent(tree(dir.path()));
        assert_eq!(bus.history().len(), 3);
        assert_eq!(bus.emit(EventKind::Drain, None, None, "d").seq, 4);
        let only = |f: EventFilter| -> Vec<String> {
            bus.query(&f).into_iter().map(|e| e.message).collect()
        };
        assert_eq!(only(EventFilter::default()), ["a", "b", "c", "d"]);
        assert_eq!(
            only(EventFilter {
                service: Some("db".into()),
                ..Default::default()
            }),
            ["b", "c"]
        );
        assert_eq!(
            only(EventFilter {
                kind: Some("container-started".into()),
                ..Default::default()
            }),
            ["a", "c"]
        );
        let future = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert!(only(EventFilter {
            since: Some(future),
            ..Default::default()
        })
        .is_empty());
    }

    #[test]
    fn the_database_is_bounded_in_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let db = tree(dir.path());
        let now = time::OffsetDateTime::now_utc();
        let put = |seq: u64, t: time::OffsetDateTime| {
            let e = Event {
                seq,
                time: t
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
                kind: "k".into(),
                service: None,
                container: None,
                message: String::new(),
            };
            db.insert(seq.to_be_bytes(), crate::state::encode(TREE, &e).unwrap())
                .unwrap();
        };
        put(1, now - time::Duration::days(8));
        for seq in 2..(PERSISTED_MAX as u64 + 12) {
            put(seq, now);
        }
        prune(&db, now).unwrap();
        assert_eq!(db.len(), PERSISTED_MAX);
        assert_eq!(key_seq(&db.first().unwrap().unwrap().0), 12);
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(
            parse_since("10m", now).unwrap(),
            now - time::Duration::minutes(10)
        );
        let t = parse_since("2026-01-02T03:04:05Z", now).unwrap();
        assert_eq!(t.year(), 2026);
        assert!(parse_since("yesterday", now)
            .unwrap_err()
            .contains("yesterday"));
    }
}
