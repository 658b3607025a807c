//! berthd, the per-host Berth agent, as a library: the binary in `bin/berthd.rs`
//! only parses flags and calls [`daemon::run`]. See docs/ARCHITECTURE.md for how
//! data flows from a manifest to a running container.

pub mod runtime;
pub mod sys;
