//! berthd, the per-host Berth agent, as a library: the binary in `bin/berthd.rs`
//! only parses flags and calls [`daemon::run`]. See docs/ARCHITECTURE.md for how
//! data flows from a manifest to a running container.

pub mod config;
pub mod containers;
pub mod content;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod events;
pub mod exec_stream;
pub mod fleet;
pub mod health;
pub mod http;
pub mod idranges;
pub mod image;
pub mod labels;
pub mod launch;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod rebuild;
pub mod reconcile;
pub mod registry;
pub mod runtime;
pub mod shutdown;
pub mod sources;
pub mod state;
pub mod stats;
pub mod sys;
pub mod testing;
pub mod tls;
pub mod volumes;

/// The current time as RFC 3339 UTC, e.g. `2026-11-23T16:00:00Z`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
