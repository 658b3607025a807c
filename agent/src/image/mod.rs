//! Images: pulling OCI images into a verified content store and unpacking
//! their layers into snapshot directories that overlayfs stacks. `store`
//! orchestrates a pull and keeps records; `layer` streams one layer through
//! decompression and diff_id checks into `unpack`; `snapshot` owns the dirs.

pub mod archive;
pub mod layer;
pub mod snapshot;
pub mod store;
pub mod unpack;
