//! The fuzz targets' bodies: each takes the fuzzer's bytes, feeds them to one
//! of Berth's parsers of untrusted input, and panics when a property that must
//! hold for every input breaks (a panic is what the fuzzer reports as a
//! crash). The AFL++ binaries in `src/bin/` only call these; `tests/corpus.rs`
//! replays the checked-in seeds and every crash ever found through them, so
//! the properties are also checked by a plain `cargo test`.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use berth_agent::image::unpack::{apply_layer, UnpackLimits};
use berth_agent::launch::ImageRunConfig;
use berth_agent::registry::{self, auth, Manifest, Platform};
use berth_core::image_ref::{host_without_port, Digest, ImageRef};
use berth_core::manifest::{Manifest as ServiceManifest, SourceFiles, MAX_FILES};
use berth_core::spec::ContainerSpec;
use berth_core::units;

/// The target names, as `scripts/fuzz.sh` and the corpus directories use them.
pub const TARGETS: [&str; 4] = ["manifest", "layer", "registry", "image_ref"];

/// Runs the target called `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "manifest" => manifest(data),
        "layer" => layer(data),
        "registry" => registry(data),
        "image_ref" => image_ref(data),
        _ => return false,
    }
    true
}

/// Manifest parsing and validation (`berth_core::manifest`): `data` is one
/// or more TOML files separated by NUL bytes. Properties: no panic; an
/// invalid manifest has at least one problem, each located in one of the
/// given files (line and column inside it); a valid one survives a JSON
/// round trip (as revisions are stored) and every service's container spec
/// survives the stored-spec round trip. Durations and sizes, the manifest's
/// units, are checked on the whole text too (a duration prints as text that
/// parses to the same duration).
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut files = SourceFiles::new();
    for (i, part) in text.split('\0').take(MAX_FILES).enumerate() {
        files.insert(format!("f{i}.toml"), part.to_string());
    }
    match ServiceManifest::from_sources(&files) {
        Err(e) => {
            let problems = e.problems();
            assert!(!problems.is_empty(), "an invalid manifest names no problem");
            for p in problems {
                let source = files
                    .get(&p.file)
                    .unwrap_or_else(|| panic!("problem in unknown file {:?}: {p}", p.file));
                let lines = source.split('\n').count();
                assert!(
                    p.line >= 1 && p.line <= lines,
                    "problem line {} outside {} ({lines} lines): {p}",
                    p.line,
                    p.file
                );
                assert!(p.column >= 1, "problem column 0: {p}");
            }
            let _ = e.to_string();
        }
        Ok(m) => {
            let json = serde_json::to_string(&m).expect("a manifest serializes");
            let back: ServiceManifest =
                serde_json::from_str(&json).expect("a serialized manifest reads back");
            assert_eq!(back, m, "manifest JSON round trip");
            for service in m.services.values() {
                let _ = service.rollout_notes();
                let spec = ContainerSpec::for_service(service, None, &[]);
                let value: serde_json::Value =
                    serde_json::from_str(&spec.canonical_json()).expect("canonical JSON parses");
                let stored = ContainerSpec::from_stored(&value).expect("a stored spec reads back");
                assert_eq!(stored, spec, "container spec round trip");
                assert_eq!(stored.short_hash(), spec.short_hash());
            }
        }
    }
    if text.len() <= 64 {
        if let Ok(d) = units::parse_duration(&text) {
            let shown = units::format_duration(d);
            let again = units::parse_duration(&shown)
                .unwrap_or_else(|e| panic!("formatted duration {shown:?} does not parse: {e}"));
            assert_eq!(again, d, "duration {shown:?} round trip");
        }
        let _ = units::parse_size(&text);
    }
}

/// The image reference and digest parsers (`berth_core::image_ref`).
/// Properties: no panic; a parsed reference prints as a reference that
/// parses to the same value (normalization is idempotent) and survives its
/// serde form; a parsed digest prints as the input.
pub fn image_ref(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ImageRef::parse(text) {
        let shown = r.to_string();
        let again = ImageRef::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which does not parse: {e}"));
        assert_eq!(again, r, "{text:?} → {shown:?} changes on reparse");
        let json = serde_json::to_string(&r).expect("a reference serializes");
        let back: ImageRef = serde_json::from_str(&json).expect("a reference reads back");
        assert_eq!(back, r);
        assert!(r.name().starts_with(&r.registry));
        let _ = (r.registry_is_loopback(), host_without_port(&r.registry));
        if let Some(d) = &r.digest {
            assert_eq!(d.short().len(), 12);
        }
    }
    if let Ok(d) = Digest::from_str(text) {
        assert_eq!(d.to_string(), text, "a digest prints as written");
        assert_eq!(d.short().len(), 12);
    }
    let _ = host_without_port(text);
}

/// The registry's parsers of what a registry sends (`berth_agent::registry`):
/// the manifest media-type sniffing, image manifests and indexes (digest
/// checks, platform selection, config and layer descriptors), image configs
/// (diff_ids paired with layers, and the run settings the agent reads) and
/// `WWW-Authenticate` challenges. Properties: no panic; a selected platform
/// entry is one of the index's; a parsed config pairs each layer with its own
/// diff_id.
pub fn registry(data: &[u8]) {
    let image = ImageRef::parse("127.0.0.1:5000/fuzz/image:1").expect("fixed reference");
    let digest = Digest::sha256_of(data);
    let sniffed = registry::sniff_media_type(None, data);
    let _ = registry::sniff_media_type(Some("application/json; charset=utf-8"), data);
    let mut types = vec![
        registry::MEDIA_OCI_MANIFEST,
        registry::MEDIA_OCI_INDEX,
        registry::MEDIA_DOCKER_MANIFEST,
        registry::MEDIA_DOCKER_LIST,
    ];
    if !types.contains(&sniffed.as_str()) {
        types.push(sniffed.as_str());
    }
    for media_type in types {
        match Manifest::parse(&image, &digest, data, media_type) {
            Ok(Manifest::Image(m)) => {
                if let Ok((config_digest, layers)) = registry::manifest_parts(&image, &digest, &m) {
                    assert_eq!(layers.len(), m.layers().len());
                    let _ = registry::parse_config(&image, &config_digest, data, layers);
                }
            }
            Ok(Manifest::Index(index)) => {
                for wanted in [
                    "linux/amd64",
                    "linux/arm64/v8",
                    "linux/arm/v7",
                    "windows/amd64",
                ] {
                    let wanted = Platform::from_str(wanted).expect("fixed platform");
                    match registry::select_platform(&image, &index, &wanted) {
                        Ok(d) => assert!(
                            index.manifests().iter().any(|m| std::ptr::eq(m, d)),
                            "the selected entry is not one of the index's"
                        ),
                        Err(e) => {
                            let _ = e.to_string();
                        }
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // The config alone, with as many layers as it has diff_ids.
    if let Ok(config) = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(data) {
        let diff_ids = config.rootfs().diff_ids().clone();
        let layers: Vec<registry::LayerDescriptor> = (0..diff_ids.len())
            .map(|i| {
                (
                    Digest::sha256_of(&i.to_le_bytes()),
                    i as u64,
                    "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
                    registry::LayerCompression::Gzip,
                )
            })
            .collect();
        if let Ok((_, paired)) = registry::parse_config(&image, &digest, data, layers) {
            assert_eq!(paired.len(), diff_ids.len());
            for (layer, id) in paired.iter().zip(&diff_ids) {
                assert_eq!(
                    &layer.diff_id.to_string(),
                    id,
                    "diff_id paired out of order"
                );
            }
        }
    }
    if let Ok(run) = ImageRunConfig::from_config_json(data) {
        let mut ports = run.exposed_ports.clone();
        ports.dedup();
        assert_eq!(ports, run.exposed_ports, "exposed ports are deduplicated");
    }
    if data.len() <= 4096 {
        let _ = auth::parse_challenge(&String::from_utf8_lossy(data));
    }
}

/// Limits of the layer target: small enough that one input cannot fill the
/// scratch filesystem, large enough for every code path.
const LAYER_LIMITS: UnpackLimits = UnpackLimits {
    max_entries: 10_000,
    max_path_len: 4096,
    max_total_bytes: 64 << 20,
    max_entry_bytes: 16 << 20,
};

/// Confines the layer target before it starts fuzzing: as root, the process
/// chroots into a fresh directory on tmpfs (`/dev/shm/berth-fuzz-jail.*`,
/// left for the caller to remove), so even an applier bug that escaped its
/// root could not touch the host; the sentinel check then reports it. Not
/// root, or `BERTH_FUZZ_NO_JAIL=1`: nothing happens. Returns the jail's
/// path outside the chroot, if one was made.
pub fn jail_layer_target() -> std::io::Result<Option<PathBuf>> {
    if !nix::unistd::geteuid().is_root() || std::env::var_os("BERTH_FUZZ_NO_JAIL").is_some() {
        return Ok(None);
    }
    let jail = tempfile::Builder::new()
        .prefix("berth-fuzz-jail.")
        .tempdir_in(scratch_dir())?
        .keep();
    nix::unistd::chroot(&jail)?;
    std::env::set_current_dir("/")?;
    std::env::set_var("BERTH_FUZZ_SCRATCH", "/");
    Ok(Some(jail))
}

/// Where the layer target unpacks: `$BERTH_FUZZ_SCRATCH`, else `/dev/shm`
/// (tmpfs: fast, with xattrs), else the temp dir.
fn scratch_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_FUZZ_SCRATCH") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.into()
    } else {
        std::env::temp_dir()
    }
}

/// The layer applier (`berth_agent::image::unpack::apply_layer`): `data` is
/// a decompressed layer tar stream, applied to an empty directory beside a
/// sentinel directory. Properties: no panic; whatever the layer holds
/// (`..`, absolute and symlinked parents, hard links out, whiteouts),
/// nothing outside the root is created, removed or changed. As root it
/// also makes devices and sets owners; as another user those entries fail
/// cleanly.
pub fn layer(data: &[u8]) {
    let base = tempfile::Builder::new()
        .prefix("berth-fuzz-layer.")
        .tempdir_in(scratch_dir())
        .expect("scratch dir");
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir(&root).expect("mkdir root");
    std::fs::create_dir(&outside).expect("mkdir outside");
    std::fs::write(outside.join("sentinel"), b"keep").expect("write sentinel");
    let before = snapshot(base.path(), &outside);
    let result = apply_layer(Cursor::new(data), &root, &LAYER_LIMITS);
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    let after = snapshot(base.path(), &outside);
    assert_eq!(
        before, after,
        "the layer changed something outside its root"
    );
    make_removable(&root);
}

/// What must not change outside the root: the base dir's entries and the
/// sentinel dir's entries with their kind, mode, owner, size and content.
fn snapshot(base: &Path, outside: &Path) -> Vec<String> {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    let mut out: Vec<String> = names(base).into_iter().collect();
    for name in names(outside) {
        let path = outside.join(&name);
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let content = if meta.is_file() {
            std::fs::read(&path).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(format!(
            "outside/{name} mode {:o} owner {}:{} size {} content {:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.len(),
            content
        ));
    }
    let meta = std::fs::symlink_metadata(outside).expect("lstat outside");
    out.push(format!(
        "outside mode {:o} owner {}:{}",
        meta.mode(),
        meta.uid(),
        meta.gid()
    ));
    out
}

/// Gives the owner write and search permission on every directory below
/// `dir` (not following symlinks), so an unprivileged run can remove what a
/// layer made read-only.
fn make_removable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_removable(&entry.path());
        }
    }
}
