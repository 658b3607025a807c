//! The reconciler: level-triggered, idempotent convergence of this host to the
//! current revision. `decide` is the pure per-service decision; `backoff` the
//! restart/retry bookkeeping it is fed from; `run` is the loop that observes,
//! decides and executes.

pub mod backoff;
pub mod decide;
pub mod run;
