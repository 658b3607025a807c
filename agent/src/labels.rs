//! The labels berthd puts on every container it creates, declared in one
//! place (as containerd declares its labels), and the one decoder of the
//! spec a container was started with. Everything that reads a container's
//! service, revision, image, volumes or spec goes through here.

use std::collections::BTreeMap;

use berth_core::spec::ContainerSpec;

/// The service the container is a replica of (`web`).
pub const LABEL_SERVICE: &str = "berth.service";
/// The canonical JSON of the [`ContainerSpec`] it was started with; read
/// back with [`stored_spec`] (older spec versions are upgraded).
pub const LABEL_SPEC: &str = "berth.spec";
/// The revision number that started it (`12`).
pub const LABEL_REVISION: &str = "berth.revision";
/// The image reference it runs, pinned to its digest.
pub const LABEL_IMAGE: &str = "berth.image";
/// The image's `ExposedPorts` (`80/tcp,443/tcp`), when it has any.
pub const LABEL_EXPOSED_PORTS: &str = "berth.exposed-ports";
/// The named volumes it mounts (comma-separated), image VOLUMEs included.
pub const LABEL_VOLUMES: &str = "berth.volumes";
/// The image's health check as berthd runs it (JSON `Health`), written when
/// it starts; absent when the image has none.
pub const LABEL_IMAGE_HEALTH: &str = "berth.image-health";

/// The spec a container was started with, from its [`LABEL_SPEC`] label;
/// `None` when the label is missing or unreadable (not one of berthd's, or
/// written by a future version).
pub fn stored_spec(labels: &BTreeMap<String, String>) -> Option<ContainerSpec> {
    labels
        .get(LABEL_SPEC)
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| ContainerSpec::from_stored(&v).ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_spec_round_trips_and_junk_is_none() {
        let m = berth_core::manifest::Manifest::from_str_named(
            "m.toml",
            "[service.web]\nimage = \"busybox:1\"\n",
        )
        .unwrap();
        let spec = ContainerSpec::for_service(&m.services["web"], None, &[]);
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_SPEC.to_string(), spec.canonical_json());
        assert_eq!(stored_spec(&labels), Some(spec));
        labels.insert(LABEL_SPEC.to_string(), "{not json".into());
        assert_eq!(stored_spec(&labels), None);
        assert_eq!(stored_spec(&BTreeMap::new()), None);
    }
}
