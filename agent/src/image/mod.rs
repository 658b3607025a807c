//! Images: turning pulled OCI layers into on-disk snapshots that overlayfs can
//! stack. `unpack` applies one decompressed layer tar into one snapshot dir.

pub mod unpack;
