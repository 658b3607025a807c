//! Berth's portable core, shared by `berthd` and `berthctl`.
//! It owns the manifest schema and its validation, the image reference grammar,
//! the versioned container spec (spec identity), the pure reconcile plan and the
//! JSON types of the HTTP API. It has no Linux-only dependency, so the CLI builds
//! anywhere (an operator's laptop) and validates manifests offline.

pub mod api;
pub mod exec;
pub mod image_ref;
pub mod manifest;
pub mod plan;
pub mod spec;
pub mod units;
pub mod vocab;
