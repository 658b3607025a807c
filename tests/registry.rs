//! End-to-end pulls from a real `docker-registry` on loopback: by tag and by
//! digest, an OCI index, htpasswd auth, a umoci/skopeo-built image, and the
//! errors a user sees for a missing tag or a registry that is down.
#![allow(clippy::unwrap_used)]

use std::io::Read;

use anyhow::Result;
use berth_agent::content::ContentStore;
use berth_agent::registry::{
    ClientOptions, LayerCompression, RegistryClient, RegistryConfig, RegistryError,
};
use berth_core::image_ref::{Digest, ImageRef};
use berth_e2e::registry::{
    busybox_rootfs, push_with_umoci, Compression, ImageBuilder, LayerBuilder, TestRegistry,
};

fn client(config: RegistryConfig) -> RegistryClient {
    let options = ClientOptions {
        attempts: 2,
        backoff_initial: std::time::Duration::from_millis(20),
        ..ClientOptions::default()
    };
    RegistryClient::with_options(config, options).unwrap()
}

/// The uncompressed tar of a stored layer hashes to its diff_id.
fn check_diff_id(store: &ContentStore, layer: &berth_agent::registry::Layer) -> Vec<u8> {
    let file = store.open_reader(&layer.digest).unwrap();
    let mut tar = Vec::new();
    match layer.compression {
        LayerCompression::Gzip => flate2::read::GzDecoder::new(file)
            .read_to_end(&mut tar)
            .unwrap(),
        LayerCompression::Zstd => zstd::Decoder::new(file)
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap(),
        LayerCompression::None => { file }.read_to_end(&mut tar).unwrap(),
    };
    assert_eq!(
        Digest::sha256_of(&tar),
        layer.diff_id,
        "layer {}",
        layer.digest
    );
    tar
}

fn tar_paths(tar: &[u8]) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn pull_by_tag_and_digest_from_real_registry() -> Result<()> {
    let reg = TestRegistry::start()?;
    let built = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Zstd)
                .dir("/srv", 0o755)
                .file("/srv/index.html", b"hello berth\n", 0o644)
                .whiteout("/etc/group"),
        )
        .layer(LayerBuilder::new(Compression::None).file("/srv/plain.txt", b"plain", 0o600))
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .env("MODE=test")
        .workdir("/srv")
        .build()?;
    let digest = reg.push("shop/web", "1.4", &built)?;
    assert_eq!(digest, built.digest);

    let dir = tempfile::tempdir()?;
    let store = ContentStore::open(dir.path())?;
    let c = client(RegistryConfig::new());
    let by_tag = ImageRef::parse(&reg.image("shop/web:1.4"))?;
    let resolved = c.resolve(&by_tag).await?;
    assert_eq!(resolved.digest, digest);
    assert_eq!(resolved.size, built.manifest.len() as u64);

    let pulled = c.pull_image(&store, &by_tag).await?;
    assert_eq!(pulled.digest, digest);
    assert_eq!(
        pulled.reference.to_string(),
        format!("{}/shop/web:1.4@{digest}", reg.host())
    );
    assert_eq!(pulled.config_digest, built.config_digest);
    let cfg = pulled.config.config().clone().unwrap();
    assert_eq!(cfg.entrypoint().clone().unwrap(), vec!["/bin/sh", "-c"]);
    assert_eq!(cfg.cmd().clone().unwrap(), vec!["echo hi"]);
    assert!(cfg
        .env()
        .clone()
        .unwrap()
        .contains(&"MODE=test".to_string()));
    assert_eq!(cfg.working_dir().clone().unwrap(), "/srv");
    assert_eq!(pulled.layers.len(), 3);
    assert_eq!(
        pulled
            .layers
            .iter()
            .map(|l| l.compression)
            .collect::<Vec<_>>(),
        vec![
            LayerCompression::Gzip,
            LayerCompression::Zstd,
            LayerCompression::None
        ]
    );
    let base = check_diff_id(&store, &pulled.layers[0]);
    assert!(tar_paths(&base).contains(&"bin/busybox".to_string()));
    let second = check_diff_id(&store, &pulled.layers[1]);
    assert!(
        tar_paths(&second).contains(&"etc/.wh.group".to_string()),
        "{:?}",
        tar_paths(&second)
    );
    check_diff_id(&store, &pulled.layers[2]);
    for blob in store.list()? {
        store.verify(&blob.digest)?;
    }
    // manifest + config + 3 layers
    assert_eq!(store.list()?.len(), 5);
    assert!(std::fs::read_dir(dir.path().join("ingest"))?
        .next()
        .is_none());

    // By digest, into a fresh store.
    let dir2 = tempfile::tempdir()?;
    let store2 = ContentStore::open(dir2.path())?;
    let by_digest = ImageRef::parse(&reg.image(&format!("shop/web@{digest}")))?;
    let pulled2 = c.pull_image(&store2, &by_digest).await?;
    assert_eq!(pulled2.digest, digest);
    assert_eq!(pulled2.layers, pulled.layers);
    assert_eq!(store2.disk_usage()?, store.disk_usage()?);

    // Docker schema2 media types push and pull too.
    let docker = ImageBuilder::busybox().docker_media_types(true).build()?;
    reg.push("shop/docker", "v2", &docker)?;
    let pulled = c
        .pull_image(&store, &ImageRef::parse(&reg.image("shop/docker:v2"))?)
        .await?;
    assert_eq!(
        pulled.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    check_diff_id(&store, &pulled.layers[0]);
    Ok(())
}

#[tokio::test]
async fn oci_index_resolves_to_linux_amd64() -> Result<()> {
    let reg = TestRegistry::start()?;
    let amd = ImageBuilder::busybox().label("arch", "amd64").build()?;
    let arm = ImageBuilder::busybox()
        .label("arch", "arm64")
        .platform("linux", "arm64", Some("v8"))
        .build()?;
    let index = reg.push_index("multi", "latest", &[&arm, &amd])?;
    let dir = tempfile::tempdir()?;
    let store = ContentStore::open(dir.path())?;
    let c = client(RegistryConfig::new());
    let r = ImageRef::parse(&reg.image("multi"))?;
    let resolved = c.resolve(&r).await?;
    assert_eq!(resolved.digest, index);
    assert_eq!(
        resolved.media_type,
        "application/vnd.oci.image.index.v1+json"
    );
    let pulled = c.pull_image(&store, &r).await?;
    assert_eq!(
        pulled.digest, index,
        "the index digest is what gets recorded"
    );
    assert_eq!(pulled.manifest_digest, amd.digest);
    assert_eq!(pulled.config_digest, amd.config_digest);
    assert!(!store.has(&arm.config_digest));
    Ok(())
}

#[tokio::test]
async fn htpasswd_registry_needs_credentials() -> Result<()> {
    let reg = TestRegistry::start_with_htpasswd("deploy", "s3cret-pw")?;
    let built = ImageBuilder::busybox().build()?;
    let digest = reg.push("private/app", "v1", &built)?;
    let r = ImageRef::parse(&reg.image("private/app:v1"))?;
    let dir = tempfile::tempdir()?;
    let store = ContentStore::open(dir.path().join("state"))?;

    let err = client(RegistryConfig::new())
        .pull_image(&store, &r)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { ref registry, .. } if registry == reg.host()),
        "{err}"
    );
    assert!(err.to_string().contains("private/app:v1"), "{err}");

    let pass = dir.path().join("registry.pass");
    std::fs::write(&pass, "s3cret-pw\n")?;
    let cfg = RegistryConfig::from_toml(&format!(
        "[[registry]]\nhost = \"{}\"\nusername = \"deploy\"\npassword_file = \"{}\"\n",
        reg.host(),
        pass.display()
    ))?;
    let pulled = client(cfg).pull_image(&store, &r).await?;
    assert_eq!(pulled.digest, digest);

    std::fs::write(&pass, "wrong")?;
    let cfg = RegistryConfig::from_toml(&format!(
        "[[registry]]\nhost = \"{}\"\nusername = \"deploy\"\npassword_file = \"{}\"\n",
        reg.host(),
        pass.display()
    ))?;
    let err = client(cfg).resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn umoci_and_skopeo_built_image_pulls() -> Result<()> {
    berth_agent::require_root!();
    let reg = TestRegistry::start()?;
    let rootfs = tempfile::tempdir()?;
    busybox_rootfs(rootfs.path())?;
    std::fs::write(rootfs.path().join("hello.txt"), "from umoci\n")?;
    let image = push_with_umoci(
        &reg,
        rootfs.path(),
        "third/party",
        "v1",
        &[
            "--config.entrypoint=/bin/sh",
            "--config.cmd=-c",
            "--config.cmd=cat /hello.txt",
            "--config.env=FROM=umoci",
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let store = ContentStore::open(dir.path())?;
    let pulled = client(RegistryConfig::new())
        .pull_image(&store, &ImageRef::parse(&image)?)
        .await?;
    let cfg = pulled.config.config().clone().unwrap();
    assert_eq!(cfg.entrypoint().clone().unwrap(), vec!["/bin/sh"]);
    assert_eq!(cfg.cmd().clone().unwrap(), vec!["-c", "cat /hello.txt"]);
    let last = pulled.layers.last().unwrap();
    let tar = check_diff_id(&store, last);
    let paths = tar_paths(&tar);
    assert!(
        paths
            .iter()
            .any(|p| p.trim_start_matches("./") == "hello.txt"),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.trim_start_matches("./") == "bin/busybox"),
        "{paths:?}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_tag_and_stopped_registry_errors() -> Result<()> {
    let reg = TestRegistry::start()?;
    reg.push("app", "v1", &ImageBuilder::busybox().build()?)?;
    let dir = tempfile::tempdir()?;
    let store = ContentStore::open(dir.path())?;
    let c = client(RegistryConfig::new());
    let missing = ImageRef::parse(&reg.image("app:v2"))?;
    let err = c.pull_image(&store, &missing).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{}/app:v2", reg.host())),
        "{err}"
    );
    let unknown_repo = ImageRef::parse(&reg.image("nope:v1"))?;
    assert!(matches!(
        c.resolve(&unknown_repo).await,
        Err(RegistryError::NotFound { .. })
    ));

    let host = reg.host().to_string();
    let pid = reg.pid();
    let storage = reg.storage_dir();
    drop(reg);
    // Drop killed the process and removed its storage.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} still running"
    );
    assert!(!storage.exists());
    let r = ImageRef::parse(&format!("{host}/app:v1"))?;
    let err = c.pull_image(&store, &r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { ref registry, .. } if registry == &host),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("{host}/app:v1")), "{err}");
    assert!(store.list()?.is_empty());
    assert!(std::fs::read_dir(dir.path().join("ingest"))?
        .next()
        .is_none());
    Ok(())
}

#[test]
fn registry_is_killed_when_a_test_panics() {
    let pid = std::sync::Mutex::new(0u32);
    let result = std::panic::catch_unwind(|| {
        let reg = TestRegistry::start().unwrap();
        *pid.lock().unwrap() = reg.pid();
        panic!("test failure while the registry runs");
    });
    assert!(result.is_err());
    let pid = *pid.lock().unwrap();
    assert!(pid > 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} outlived the panic"
    );
}
