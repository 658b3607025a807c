//! Image archives for hosts without a registry: `berthctl load` and `save`.
//! A load unpacks an OCI image layout tar (skopeo's `oci-archive:`, Docker
//! 25+'s `docker save`) or a classic `docker save` tar, optionally gzip or
//! zstd compressed, and serves it as a read-only OCI Distribution registry on
//! a loopback port while the image store pulls from it: every manifest,
//! config and layer goes through the pull's verified path (digests, diff_ids,
//! the safe layer applier). A save writes an OCI image layout tar of an
//! image's stored blobs, so a save then a load gives the same digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use berth_core::image_ref::Digest;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// Why an archive could not be read, served or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive: entry {entry:?} {why}")]
    Entry { entry: String, why: &'static str },
    #[error("archive: {0}")]
    Format(String),
    #[error("archive: {size} bytes unpacked would leave less than the reserve on the state filesystem ({free} bytes free)")]
    NoSpace { size: u64, free: u64 },
    #[error("archive: serving it on loopback: {0}")]
    Serve(std::io::Error),
}

/// Compressed archives are read through a decoder chosen by magic bytes.
fn decoder(path: &Path) -> Result<Box<dyn Read + Send>, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.into(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io)?;
    let f = std::fs::File::open(path).map_err(io)?;
    let r = std::io::BufReader::new(f);
    Ok(match &magic[..n.min(4)] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(r).map_err(io)?),
        _ => Box::new(r),
    })
}

/// One image the archive names.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// The name it carries (`io.containerd.image.name`,
    /// `org.opencontainers.image.ref.name` when a full reference, or the
    /// classic format's `RepoTags`), if any.
    pub name: Option<String>,
    /// The tag it is served as on the loopback registry (`i0`, `i1`, …).
    pub served_tag: String,
    pub digest: Digest,
}

/// An unpacked archive: blob files by digest and the images it names.
#[derive(Debug)]
pub struct Archive {
    dir: ScratchDir,
    blobs: BTreeMap<Digest, (PathBuf, Option<String>)>,
    pub images: Vec<ArchiveImage>,
}

const MAX_JSON: u64 = 4 << 20;

/// A directory of its own below the scratch dir, removed on drop (a failed
/// removal is logged: it would be found again by the next load's sweep).
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> std::io::Result<ScratchDir> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = parent.join(format!("unpack-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p)?;
        Ok(ScratchDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::error!(dir = %self.0.display(), error = %e, "could not remove a loaded archive's scratch dir");
        }
    }
}

impl Archive {
    /// Unpacks `path` below `scratch` (only files and directories, no path
    /// leaving the archive root, `reserve` bytes kept free) and reads its
    /// index. Blocking.
    pub fn unpack(path: &Path, scratch: &Path, reserve: u64) -> Result<Archive, ArchiveError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ArchiveError::Io { path: p, source }
        };
        std::fs::create_dir_all(scratch).map_err(io(scratch))?;
        let dir = ScratchDir::new(scratch).map_err(io(scratch))?;
        let root = dir.path().to_path_buf();
        let mut tar = tar::Archive::new(decoder(path)?);
        // A tar error quotes what it could not read: keep it printable.
        let unreadable = |e: std::io::Error| {
            let text: String = e
                .to_string()
                .chars()
                .map(|c| {
                    if c.is_control() || c == '\u{fffd}' {
                        '?'
                    } else {
                        c
                    }
                })
                .take(200)
                .collect();
            ArchiveError::Format(format!(
                "not a readable tar archive (plain, gzip or zstd): {text}"
            ))
        };
        let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut total = 0u64;
        let free = super::store::free_bytes(scratch);
        for entry in tar.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let name = entry.path().map_err(unreadable)?.into_owned();
            let shown = name.display().to_string();
            let rel = safe_relative(&name).ok_or(ArchiveError::Entry {
                entry: shown.clone(),
                why: "leaves the archive (absolute or `..`)",
            })?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let target = root.join(&rel);
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    std::fs::create_dir_all(&target).map_err(io(&target))?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    total = total.saturating_add(entry.size());
                    if total.saturating_add(reserve) > free {
                        return Err(ArchiveError::NoSpace { size: total, free });
                    }
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    let mut out = std::fs::File::create(&target).map_err(io(&target))?;
                    std::io::copy(&mut entry, &mut out).map_err(unreadable)?;
                }
                // The classic format links a repeated layer to its first copy.
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let to = entry
                        .link_name()
                        .map_err(io(path))?
                        .ok_or(ArchiveError::Entry {
                            entry: shown.clone(),
                            why: "is a link without a target",
                        })?
                        .into_owned();
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        rel.parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()
                            .join(&to)
                    } else {
                        to.clone()
                    };
                    let resolved = safe_relative(&base).ok_or(ArchiveError::Entry {
                        entry: shown.clone(),
                        why: "links outside the archive",
                    })?;
                    links.push((rel, resolved));
                }
                _ => {
                    return Err(ArchiveError::Entry {
                        entry: shown,
                        why: "is not a file or a directory",
                    })
                }
            }
        }
        for (link, to) in links {
            let (link, to) = (root.join(link), root.join(to));
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::hard_link(&to, &link).map_err(io(&to))?;
        }
        let mut archive = Archive {
            dir,
            blobs: BTreeMap::new(),
            images: Vec::new(),
        };
        if root.join("index.json").is_file() {
            archive.read_oci_layout()?;
        } else if root.join("manifest.json").is_file() {
            archive.read_docker_save()?;
        } else {
            return Err(ArchiveError::Format(
                "neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)".into(),
            ));
        }
        if archive.images.is_empty() {
            return Err(ArchiveError::Format("it holds no image".into()));
        }
        Ok(archive)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn read_json(&self, rel: &Path) -> Result<serde_json::Value, ArchiveError> {
        let p = self.root().join(rel);
        let f = std::fs::File::open(&p).map_err(|source| ArchiveError::Io {
            path: rel.into(),
            source,
        })?;
        let mut text = String::new();
        f.take(MAX_JSON)
            .read_to_string(&mut text)
            .map_err(|source| ArchiveError::Io {
                path: rel.into(),
                source,
            })?;
        serde_json::from_str(&text)
            .map_err(|e| ArchiveError::Format(format!("{}: {e}", rel.display())))
    }

    /// `blobs/<alg>/<hex>` of an OCI layout: every blob by its digest (the
    /// bytes are checked when pulled, not trusted from the name).
    fn index_blobs(&mut self) -> Result<(), ArchiveError> {
        let blobs = self.root().join("blobs");
        let Ok(algs) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        for alg in algs.flatten() {
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(alg.path()) else {
                continue;
            };
            for f in files.flatten() {
                let d = format!("{alg_name}:{}", f.file_name().to_string_lossy());
                if let Ok(digest) = d.parse::<Digest>() {
                    self.blobs.insert(digest, (f.path(), None));
                }
            }
        }
        Ok(())
    }

    fn read_oci_layout(&mut self) -> Result<(), ArchiveError> {
        self.index_blobs()?;
        let index = self.read_json(Path::new("index.json"))?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        for (i, m) in manifests.iter().enumerate() {
            let digest: Digest = m["digest"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    ArchiveError::Format(format!("index.json: manifests[{i}] has no valid digest"))
                })?;
            if !self.blobs.contains_key(&digest) {
                return Err(ArchiveError::Format(format!(
                    "index.json names {digest}, which is not in blobs/"
                )));
            }
            if let Some(mt) = m["mediaType"].as_str() {
                if let Some(b) = self.blobs.get_mut(&digest) {
                    b.1 = Some(mt.to_string());
                }
            }
            let ann = &m["annotations"];
            let name = ann["io.containerd.image.name"]
                .as_str()
                .or(ann["org.opencontainers.image.ref.name"].as_str())
                // A bare tag (`1.36`) is no reference of its own.
                .filter(|n| n.contains(':') || n.contains('/'))
                .map(String::from);
            self.images.push(ArchiveImage {
                name,
                served_tag: format!("i{i}"),
                digest,
            });
        }
        Ok(())
    }

    /// The classic `docker save` format: `manifest.json` lists each image's
    /// config file, `RepoTags` and layer tars; an OCI manifest is made for it
    /// (uncompressed layers, digests computed here, checked again on pull).
    fn read_docker_save(&mut self) -> Result<(), ArchiveError> {
        self.index_blobs()?;
        let list = self.read_json(Path::new("manifest.json"))?;
        let list = list
            .as_array()
            .cloned()
            .ok_or_else(|| ArchiveError::Format("manifest.json is not a list".into()))?;
        for (i, item) in list.iter().enumerate() {
            let field = |k: &str| {
                item[k]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| ArchiveError::Format(format!("manifest.json[{i}] has no {k}")))
            };
            let config_rel = safe_relative(Path::new(&field("Config")?)).ok_or_else(|| {
                ArchiveError::Format(format!("manifest.json[{i}].Config leaves the archive"))
            })?;
            let (config_digest, config_size) = self.add_file(&config_rel)?;
            let mut layers = Vec::new();
            for l in item["Layers"].as_array().cloned().unwrap_or_default() {
                let rel = l
                    .as_str()
                    .and_then(|s| safe_relative(Path::new(s)))
                    .ok_or_else(|| {
                        ArchiveError::Format(format!("manifest.json[{i}].Layers: bad path {l}"))
                    })?;
                let (d, size) = self.add_file(&rel)?;
                layers.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d.to_string(),
                    "size": size,
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(),
                    "size": config_size,
                },
                "layers": layers,
            });
            let bytes =
                serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Format(e.to_string()))?;
            let digest = sha256_digest(&bytes);
            let path = self.root().join(format!("made-manifest-{i}.json"));
            std::fs::write(&path, &bytes).map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
            self.blobs.insert(
                digest.clone(),
                (
                    path,
                    Some("application/vnd.oci.image.manifest.v1+json".into()),
                ),
            );
            let tags: Vec<String> = item["RepoTags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            self.images.push(ArchiveImage {
                name: tags.first().cloned(),
                served_tag: format!("i{i}"),
                digest,
            });
        }
        Ok(())
    }

    /// Hashes a file of the archive and serves it by that digest.
    fn add_file(&mut self, rel: &Path) -> Result<(Digest, u64), ArchiveError> {
        let path = self.root().join(rel);
        let io = |source| ArchiveError::Io {
            path: rel.into(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        let digest: Digest = format!("sha256:{}", hex::encode(h.finalize()))
            .parse()
            .map_err(|e| ArchiveError::Format(format!("{e}")))?;
        self.blobs.insert(digest.clone(), (path, None));
        Ok((digest, size))
    }

    /// Serves the archive on `127.0.0.1:<ephemeral>` as repository `load`
    /// (tags [`ArchiveImage::served_tag`]); the server stops when the
    /// returned handle is dropped.
    pub async fn serve(self: Arc<Self>) -> Result<Served, ArchiveError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ArchiveError::Serve)?;
        let addr = listener.local_addr().map_err(ArchiveError::Serve)?;
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route("/v2/{*rest}", axum::routing::get(serve_path))
            .with_state(self);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Served { addr, task })
    }
}

/// A running loopback server of an archive; aborted on drop.
#[derive(Debug)]
pub struct Served {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Media type of a manifest blob: from the index, else its own `mediaType`.
fn media_type_of(bytes: &[u8], known: Option<&str>) -> String {
    if let Some(k) = known {
        return k.to_string();
    }
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(String::from))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into())
}

async fn serve_path(
    axum::extract::State(archive): axum::extract::State<Arc<Archive>>,
    axum::extract::Path(rest): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            "{\"errors\":[{\"code\":\"NOT_FOUND\"}]}",
        )
            .into_response()
    };
    let Some((kind, reference)) = rest.strip_prefix("load/").and_then(|r| r.split_once('/')) else {
        return not_found();
    };
    let digest = match reference.parse::<Digest>() {
        Ok(d) => d,
        Err(_) => match archive.images.iter().find(|i| i.served_tag == reference) {
            Some(i) => i.digest.clone(),
            None => return not_found(),
        },
    };
    let Some((path, mt)) = archive.blobs.get(&digest) else {
        return not_found();
    };
    match kind {
        "manifests" => {
            let Ok(bytes) = tokio::fs::read(path).await else {
                return not_found();
            };
            let mt = media_type_of(&bytes, mt.as_deref());
            (
                [
                    (header::CONTENT_TYPE, mt),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        digest.to_string(),
                    ),
                ],
                Bytes::from(bytes),
            )
                .into_response()
        }
        "blobs" => {
            let Ok(file) = tokio::fs::File::open(path).await else {
                return not_found();
            };
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let body = file_body(file);
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
            )
                .into_response()
        }
        _ => not_found(),
    }
}

/// An open file streamed as an HTTP body in 64 KiB chunks (the archive
/// server's blobs, and `save`'s answer).
pub fn file_body(f: tokio::fs::File) -> axum::body::Body {
    let chunks = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    axum::body::Body::from_stream(chunks)
}

/// `path` as a relative path inside an archive root, or `None` when it is
/// absolute or climbs out with `..`.
pub fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
        .parse()
        .expect("a sha256 digest parses")
}

/// Writes an OCI image layout tar to `out`: `oci-layout`, `index.json`
/// naming `top` (with `reference` as `io.containerd.image.name` and its tag
/// as `org.opencontainers.image.ref.name`), and each of `blobs` (digest,
/// file) under `blobs/<alg>/<hex>`. `top_media_type` is the top manifest's.
pub fn write_layout<W: Write>(
    out: W,
    reference: &str,
    tag: Option<&str>,
    top: &Digest,
    top_media_type: &str,
    top_size: u64,
    blobs: &[(Digest, PathBuf)],
) -> std::io::Result<W> {
    let mut tar = tar::Builder::new(out);
    let add_bytes = |tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes)
    };
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut ann = serde_json::Map::new();
    ann.insert("io.containerd.image.name".into(), reference.into());
    if let Some(t) = tag {
        ann.insert("org.opencontainers.image.ref.name".into(), t.into());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": top_media_type,
            "digest": top.to_string(),
            "size": top_size,
            "annotations": ann,
        }],
    });
    add_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for (d, path) in blobs {
        if !seen.insert(d.clone()) {
            continue;
        }
        let s = d.to_string();
        let (alg, hex) = s.split_once(':').unwrap_or(("sha256", s.as_str()));
        let mut f = std::fs::File::open(path)?;
        tar.append_file(format!("blobs/{alg}/{hex}"), &mut f)?;
    }
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_inside_the_archive() {
        assert_eq!(safe_relative(Path::new("a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(
            safe_relative(Path::new("./a/../b")),
            Some(PathBuf::from("b"))
        );
        assert_eq!(safe_relative(Path::new("../x")), None);
        assert_eq!(safe_relative(Path::new("a/../../x")), None);
        assert_eq!(safe_relative(Path::new("/etc/passwd")), None);
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_hostile_or_foreign_archive_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        // tar::Builder refuses `..` itself; a raw header does not.
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"../x\0\0");
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0u8; 1024]);
        let p = write("evil.tar", &raw);
        let e = Archive::unpack(&p, &dir.path().join("s"), 0).unwrap_err();
        assert!(e.to_string().contains("leaves the archive"), "{e}");
        let p = write("other.tar", &tar_of(&[("hello.txt", b"hi")]));
        let e = Archive::unpack(&p, &dir.path().join("s"), 0).unwrap_err();
        assert!(e.to_string().contains("neither an OCI image layout"), "{e}");
        let p = write("dangling.tar", &tar_of(&[("index.json", br#"{"manifests":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#)]));
        let e = Archive::unpack(&p, &dir.path().join("s"), 0).unwrap_err();
        assert!(e.to_string().contains("not in blobs/"), "{e}");
    }

    #[test]
    fn a_saved_layout_reads_back_with_its_name_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("m.json");
        let manifest =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        std::fs::write(&blob, manifest).unwrap();
        let d = sha256_digest(manifest);
        let bytes = write_layout(
            Vec::new(),
            "reg.test/shop/web:1",
            Some("1"),
            &d,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.len() as u64,
            &[(d.clone(), blob)],
        )
        .unwrap();
        // gzip-compressed, as users ship archives.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let p = dir.path().join("a.tar.gz");
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let a = Archive::unpack(&p, &dir.path().join("s"), 0).unwrap();
        assert_eq!(a.images.len(), 1);
        assert_eq!(a.images[0].name.as_deref(), Some("reg.test/shop/web:1"));
        assert_eq!(a.images[0].digest, d);
    }
}
