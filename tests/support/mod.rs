//! Shared fixtures for Berth's end-to-end tests: a real `docker-registry` on
//! loopback, an OCI image builder that pushes through the registry's HTTP API,
//! and a umoci + skopeo path for third-party-built images.

pub mod registry;
