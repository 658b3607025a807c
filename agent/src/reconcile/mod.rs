//! The reconciler: level-triggered, idempotent convergence of this host to the
//! current revision. `decide` is the pure per-service decision; `run` is the
//! loop that observes, decides and executes.

pub mod decide;
pub mod run;
