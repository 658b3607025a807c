//! The event stream: a bounded in-memory history plus a broadcast channel for
//! followers (`berthctl events -f`). Emitting never blocks; a slow follower
//! misses events and is told so rather than stalling the agent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_core::api::Event;
use tokio::sync::broadcast;

/// Events kept for `GET /v1/events` without `follow`.
pub const HISTORY: usize = 1000;

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
}

impl EventBus {
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(1024);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                history: VecDeque::new(),
            })),
            sender,
        }
    }

    /// Records and broadcasts an event.
    pub fn emit(
        &self,
        kind: &str,
        service: Option<&str>,
        container: Option<&str>,
        message: impl Into<String>,
    ) -> Event {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            seq: inner.next_seq,
            time: crate::now_rfc3339(),
            kind: kind.into(),
            service: service.map(str::to_string),
            container: container.map(str::to_string),
            message: message.into(),
        };
        inner.next_seq += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        drop(inner);
        let _ = self.sender.send(event.clone()); // no follower is fine
        event
    }

    /// The recent history, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .history
            .iter()
            .cloned()
            .collect()
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
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
            bus.emit("test", None, None, format!("{i}"));
        }
        let h = bus.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].seq, 6);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
    }
}
