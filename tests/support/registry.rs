//! A real registry for tests: [`TestRegistry`] runs `/usr/bin/docker-registry`
//! on 127.0.0.1 with an ephemeral port and temp storage (optionally htpasswd),
//! and kills it on drop, on panic, or (via a watchdog) when the test process dies.
//! [`ImageBuilder`] makes OCI images from in-memory and host files and pushes
//! them with the registry's own HTTP push API; [`push_with_umoci`] builds one
//! with umoci and copies it with skopeo.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use berth_core::image_ref::Digest;
use serde_json::json;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Fixed mtime for reproducible layers.
const MTIME: u64 = 1_700_000_000;

/// A `docker-registry serve` process on 127.0.0.1 with its own temp storage.
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    watchdog: Option<Child>,
    dir: tempfile::TempDir,
    host: String,
    auth: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts an anonymous registry and waits until `/v2/` answers.
    pub fn start() -> Result<Self> {
        Self::launch(None)
    }

    /// Starts a registry that requires Basic auth for `user`/`pass` (bcrypt htpasswd).
    /// The fixture's own push helpers use these credentials.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Result<Self> {
        Self::launch(Some((user.to_string(), pass.to_string())))
    }

    fn launch(auth: Option<(String, String)>) -> Result<Self> {
        let mut last_err = anyhow!("registry did not start");
        for _ in 0..5 {
            match Self::try_launch(auth.clone()) {
                Ok(r) => return Ok(r),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn try_launch(auth: Option<(String, String)>) -> Result<Self> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing (apt-get install docker-registry)");
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()?;
        // Pick a free port; the tiny race with other processes is covered by retrying.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {host}\n  secret: berth-test-secret\n",
            storage.display()
        );
        if let Some((user, pass)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("running htpasswd")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        // Kills the registry if this test process dies without running Drop (kill -9).
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 1; done; kill -9 \"$2\" 2>/dev/null",
                "berth-registry-watchdog",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut reg = TestRegistry {
            child,
            watchdog,
            dir,
            host,
            auth,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = reg.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", reg.log());
            }
            if let Ok(resp) = http_request("GET", &format!("{}/v2/", reg.url()), &[], &[]) {
                if resp.status == 200 || resp.status == 401 {
                    return Ok(reg);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer on {}: {}",
                    reg.host,
                    reg.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`.
    pub fn image(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host)
    }

    /// The process id (to check it is gone after drop).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's storage directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Credentials of an htpasswd registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn auth_header(&self) -> Option<String> {
        self.auth.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// Sends a request to the registry with its credentials.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        let auth = self.auth_header();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("Authorization", a));
        }
        let url = if path.starts_with("http://") {
            path.to_string()
        } else {
            format!("{}{path}", self.url())
        };
        http_request(method, &url, &all, body)
    }

    /// Uploads one blob (monolithic POST + PUT) unless present; returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(data);
        let head = self.request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], &[])?;
        if head.status == 200 {
            return Ok(digest);
        }
        let start = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])?;
        if start.status != 202 {
            bail!(
                "starting upload to {repo}: HTTP {} {}",
                start.status,
                start.text()
            );
        }
        let location = start
            .header("location")
            .ok_or_else(|| anyhow!("upload without Location"))?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location.to_string()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        )?;
        if put.status != 201 {
            bail!(
                "uploading blob {digest} to {repo}: HTTP {} {}",
                put.status,
                put.text()
            );
        }
        Ok(digest)
    }

    /// PUTs a manifest under `reference` (tag or digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Digest> {
        let resp = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            body,
        )?;
        if resp.status != 201 {
            bail!(
                "pushing manifest {repo}:{reference}: HTTP {} {}",
                resp.status,
                resp.text()
            );
        }
        Ok(Digest::sha256_of(body))
    }

    /// Pushes an image's blobs and manifest and tags it; returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> Result<Digest> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob)?;
        }
        self.push_blob(repo, &image.config)?;
        let d = self.push_manifest(repo, tag, &image.media_type, &image.manifest)?;
        if d != image.digest {
            bail!("registry stored manifest {d}, built {}", image.digest);
        }
        Ok(d)
    }

    /// Pushes several single-platform images and an OCI index over them under `tag`;
    /// returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[&BuiltImage]) -> Result<Digest> {
        let mut manifests = Vec::new();
        for image in images {
            self.push(repo, &image.digest.to_string(), image)?;
            let (os, arch, variant) = &image.platform;
            let mut platform = json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            manifests.push(json!({
                "mediaType": image.media_type,
                "digest": image.digest.to_string(),
                "size": image.manifest.len(),
                "platform": platform,
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": manifests,
        }))?;
        self.push_manifest(repo, tag, MEDIA_OCI_INDEX, &index)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 request to a plain-http loopback URL (usable from sync and
/// async tests alike; one connection per request).
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)?
        .next()
        .ok_or_else(|| anyhow!("bad host {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        rest = dechunk(&rest)?;
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        rest.truncate(len);
    }
    Ok(HttpResponse { body: rest, ..resp })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("short chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// How a layer tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    HostFile {
        path: String,
        host: PathBuf,
        mode: Option<u32>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
}

/// The contents of one layer, in the order given (parents before children).
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    compression: Compression,
    /// A tar written by another tool, used as is (see [`LayerBuilder::verbatim`]).
    verbatim: Option<Vec<u8>>,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

/// The applets `LayerBuilder::busybox` links to `/bin/busybox`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "ls", "sleep", "true", "false", "env", "id", "mkdir", "rm",
    "touch", "printf", "hostname", "ps", "kill", "grep", "head", "tail", "date", "test", "sed",
    "wc", "nc", "wget", "httpd", "mount", "stat", "readlink", "chmod", "cp", "mv", "ln", "uname",
    "whoami", "pwd", "sync", "find", "xargs", "tr", "sort",
];

impl LayerBuilder {
    pub fn new(compression: Compression) -> Self {
        LayerBuilder {
            entries: Vec::new(),
            compression,
            verbatim: None,
        }
    }

    /// A layer whose uncompressed tar is `tar` byte for byte (e.g. written by
    /// GNU tar), so the agent sees exactly what another tool produced.
    pub fn verbatim(tar: Vec<u8>, compression: Compression) -> Self {
        LayerBuilder {
            entries: Vec::new(),
            compression,
            verbatim: Some(tar),
        }
    }

    /// A root filesystem with `/bin/busybox` (from the host), applet symlinks,
    /// `/etc/passwd`, `/etc/group`, and the usual empty directories.
    pub fn busybox(compression: Compression) -> Self {
        let mut l = LayerBuilder::new(compression);
        for d in [
            "/bin", "/etc", "/dev", "/proc", "/sys", "/root", "/var", "/run",
        ] {
            l = l.dir(d, 0o755);
        }
        l = l
            .dir("/tmp", 0o1777)
            .host_file("/bin/busybox", "/bin/busybox");
        for applet in BUSYBOX_APPLETS {
            l = l.symlink(&format!("/bin/{applet}"), "busybox");
        }
        l.file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        )
        .file("/etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644)
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: rel(path),
            mode,
        });
        self
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        self.entries.push(Entry::File {
            path: rel(path),
            data: data.to_vec(),
            mode,
        });
        self
    }

    /// A file copied from the host at build time, keeping its mode.
    pub fn host_file(mut self, path: &str, host: impl Into<PathBuf>) -> Self {
        self.entries.push(Entry::HostFile {
            path: rel(path),
            host: host.into(),
            mode: None,
        });
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: rel(path),
            target: target.into(),
        });
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Hardlink {
            path: rel(path),
            target: rel(target),
        });
        self
    }

    /// An OCI whiteout deleting `path` from lower layers.
    pub fn whiteout(self, path: &str) -> Self {
        let p = rel(path);
        let (dir, name) = p
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n.to_string()))
            .unwrap_or((String::new(), p));
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An opaque-directory marker: lower layers' contents of `dir` are hidden.
    pub fn opaque(self, dir: &str) -> Self {
        let d = rel(dir);
        self.file(
            &format!("{}/.wh..wh..opq", d.trim_end_matches('/')),
            b"",
            0o644,
        )
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        if let Some(tar) = &self.verbatim {
            return Ok(tar.clone());
        }
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            match e {
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(
                        &mut h,
                        format!("{}/", path.trim_end_matches('/')),
                        std::io::empty(),
                    )?;
                }
                Entry::File { path, data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::HostFile { path, host, mode } => {
                    let data = std::fs::read(host)
                        .with_context(|| format!("reading {}", host.display()))?;
                    let host_mode = std::os::unix::fs::PermissionsExt::mode(
                        &std::fs::metadata(host)?.permissions(),
                    );
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(mode.unwrap_or(host_mode & 0o7777));
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Symlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::Hardlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// The compressed blob, its digest and diff_id.
    pub fn build(&self) -> Result<BuiltLayer> {
        let tar = self.tar()?;
        let diff_id = Digest::sha256_of(&tar);
        let blob = match self.compression {
            Compression::None => tar,
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar)?;
                enc.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3)?,
        };
        Ok(BuiltLayer {
            digest: Digest::sha256_of(&blob),
            diff_id,
            media_type: self.compression.oci_media_type().to_string(),
            compression: self.compression,
            blob,
        })
    }
}

/// A built layer blob.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub blob: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub compression: Compression,
}

/// A built image, ready to push.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<BuiltLayer>,
    /// (os, architecture, variant)
    pub platform: (String, String, Option<String>),
}

/// Builds an OCI (or Docker schema2) image in memory.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerBuilder>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    labels: Vec<(String, String)>,
    stop_signal: Option<String>,
    healthcheck: Option<serde_json::Value>,
    exposed_ports: Vec<String>,
    volumes: Vec<String>,
    platform: (String, String, Option<String>),
    docker_types: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl ImageBuilder {
    /// An empty linux/amd64 image with `PATH` set.
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            workdir: None,
            user: None,
            labels: Vec::new(),
            stop_signal: None,
            healthcheck: None,
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            platform: ("linux".into(), "amd64".into(), None),
            docker_types: false,
        }
    }

    /// A busybox root filesystem (gzip) with `Cmd = ["/bin/sh"]`.
    pub fn busybox() -> Self {
        Self::new()
            .layer(LayerBuilder::busybox(Compression::Gzip))
            .cmd(&["/bin/sh"])
    }

    pub fn layer(mut self, layer: LayerBuilder) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = Some(strings(argv));
        self
    }

    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = Some(strings(argv));
        self
    }

    /// Adds `KEY=VALUE` to the environment.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }

    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    /// `StopSignal` (Dockerfile `STOPSIGNAL`).
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.stop_signal = Some(signal.into());
        self
    }

    /// `Healthcheck` as `docker build` writes it: `test` (`["CMD", ...]`,
    /// `["CMD-SHELL", "..."]`, `["NONE"]`), durations in nanoseconds (0 = unset).
    pub fn healthcheck(
        mut self,
        test: &[&str],
        interval: Duration,
        timeout: Duration,
        start_period: Duration,
        retries: u32,
    ) -> Self {
        let mut h = serde_json::Map::new();
        h.insert("Test".into(), json!(test));
        for (k, d) in [
            ("Interval", interval),
            ("Timeout", timeout),
            ("StartPeriod", start_period),
        ] {
            if !d.is_zero() {
                h.insert(k.into(), json!(d.as_nanos() as u64));
            }
        }
        if retries > 0 {
            h.insert("Retries".into(), json!(retries));
        }
        self.healthcheck = Some(serde_json::Value::Object(h));
        self
    }

    /// An `ExposedPorts` key (`8080/tcp`, `53/udp`, or a bare `80`).
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.push(port.into());
        self
    }

    /// A `Volumes` path (Dockerfile `VOLUME`).
    pub fn volume(mut self, path: &str) -> Self {
        self.volumes.push(path.into());
        self
    }

    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.platform = (os.into(), arch.into(), variant.map(Into::into));
        self
    }

    /// Use Docker schema2 media types (layers must be gzip).
    pub fn docker_media_types(mut self, yes: bool) -> Self {
        self.docker_types = yes;
        self
    }

    pub fn build(&self) -> Result<BuiltImage> {
        let layers = self
            .layers
            .iter()
            .map(LayerBuilder::build)
            .collect::<Result<Vec<_>>>()?;
        let mut cfg = serde_json::Map::new();
        if let Some(e) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            cfg.insert("Cmd".into(), json!(c));
        }
        cfg.insert("Env".into(), json!(self.env));
        if let Some(w) = &self.workdir {
            cfg.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.user {
            cfg.insert("User".into(), json!(u));
        }
        if let Some(sig) = &self.stop_signal {
            cfg.insert("StopSignal".into(), json!(sig));
        }
        if let Some(h) = &self.healthcheck {
            cfg.insert("Healthcheck".into(), h.clone());
        }
        // Go's map[string]struct{} form: `{"80/tcp": {}}`.
        let set = |keys: &[String]| -> serde_json::Value {
            keys.iter()
                .map(|k| (k.clone(), json!({})))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        if !self.exposed_ports.is_empty() {
            cfg.insert("ExposedPorts".into(), set(&self.exposed_ports));
        }
        if !self.volumes.is_empty() {
            cfg.insert("Volumes".into(), set(&self.volumes));
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            cfg.insert("Labels".into(), json!(labels));
        }
        let (os, arch, variant) = &self.platform;
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": arch,
            "os": os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| json!({"created": "2023-11-14T22:13:20Z", "created_by": "berth ImageBuilder"})).collect::<Vec<_>>(),
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config)?;
        let config_digest = Digest::sha256_of(&config);
        let (media_type, config_type) = if self.docker_types {
            if layers.iter().any(|l| l.compression != Compression::Gzip) {
                bail!("Docker schema2 images need gzip layers");
            }
            (MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_CONFIG)
        } else {
            (MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG)
        };
        let layer_type = |l: &BuiltLayer| {
            if self.docker_types {
                "application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()
            } else {
                l.media_type.clone()
            }
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": layer_type(l), "digest": l.digest.to_string(), "size": l.blob.len()})).collect::<Vec<_>>(),
        }))?;
        let layers = layers.into_iter().map(|mut l| {
            l.media_type = layer_type(&l);
            l
        });
        Ok(BuiltImage {
            digest: Digest::sha256_of(&manifest),
            manifest,
            media_type: media_type.into(),
            config,
            config_digest,
            layers: layers.collect(),
            platform: self.platform.clone(),
        })
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds an image with umoci from the contents of `rootfs` (as root), applies
/// `config_args` (e.g. `--config.entrypoint=/bin/sh`), and copies it to
/// `reg` as `repo:tag` with skopeo. Returns the image reference.
pub fn push_with_umoci(
    reg: &TestRegistry,
    rootfs: &Path,
    repo: &str,
    tag: &str,
    config_args: &[&str],
) -> Result<String> {
    let work = tempfile::Builder::new().prefix("berth-umoci-").tempdir()?;
    let layout = work.path().join("oci");
    let bundle = work.path().join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", rootfs.display()))
        .arg(bundle.join("rootfs")))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    if !config_args.is_empty() {
        run(Command::new("umoci")
            .args(["config", "--image", &image])
            .args(config_args))?;
    }
    let dest = format!("docker://{}/{repo}:{tag}", reg.host());
    let mut skopeo = Command::new("skopeo");
    skopeo.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
    if let Some((u, p)) = reg.credentials() {
        skopeo.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    run(skopeo.arg(format!("oci:{image}")).arg(&dest))?;
    Ok(reg.image(&format!("{repo}:{tag}")))
}

/// A host directory holding a busybox root filesystem (for umoci builds).
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("etc"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(())
}
