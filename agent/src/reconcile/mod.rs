//! The reconciler: level-triggered, idempotent convergence of this host to the
//! current revision. `decide` and `policy` are the pure rules (table-tested);
//! `tracker` and `backoff` the per-service bookkeeping they are fed from;
//! `run` the loop and pass that observe, decide and hand actions to
//! `execute`; `publish` what a pass tells the proxy, DNS and metrics.

pub mod backoff;
pub mod decide;
mod execute;
#[cfg(test)]
mod fake;
pub mod policy;
mod publish;
pub mod run;
#[cfg(test)]
mod stories;
pub mod tracker;
