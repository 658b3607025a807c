//! The reconciler: level-triggered, idempotent convergence of this host to the
//! current revision. `decide` is the pure per-service decision; the loop that
//! observes, decides and executes lives beside it.

pub mod decide;
