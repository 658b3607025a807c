//! Tests of the registry client against a fake registry served in-process on
//! 127.0.0.1: auth flows, corruption, truncation, stalls, oversized manifests,
//! malformed digests, media types, redirects, mirrors, retries and dedup.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

use super::*;

#[derive(Default)]
struct Fake {
    blobs: Mutex<HashMap<String, Bytes>>,
    /// tag or digest → (body, content type)
    manifests: Mutex<HashMap<String, (Bytes, String)>>,
    basic: Option<(String, String)>,
    bearer: Option<BearerMode>,
    corrupt: Mutex<HashSet<String>>,
    truncate: Mutex<HashSet<String>>,
    stall: Mutex<HashSet<String>>,
    /// Blob GETs answer 307 to this base URL.
    redirect_blobs: Mutex<Option<String>>,
    head_without_digest: bool,
    /// Manifest requests never get an answer.
    hang_manifests: bool,
    chunked_manifests: bool,
    blob_delay: Option<Duration>,
    fail_first: AtomicUsize,
    hits: Mutex<HashMap<String, usize>>,
    auth_seen: Mutex<Vec<(String, Option<String>)>>,
    token_requests: AtomicUsize,
    base: Mutex<String>,
}

struct BearerMode {
    token: String,
    creds: Option<(String, String)>,
}

impl Fake {
    fn hit(&self, key: &str) -> usize {
        *self.hits.lock().unwrap().get(key).unwrap_or(&0)
    }
}

fn resp(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(body).unwrap()
}

fn basic_of(user: &str, pass: &str) -> String {
    auth::basic_header(&Credentials {
        username: user.into(),
        password: pass.into(),
    })
}

async fn handle(
    State(s): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    let authz = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.auth_seen
        .lock()
        .unwrap()
        .push((path.clone(), authz.clone()));
    *s.hits
        .lock()
        .unwrap()
        .entry(format!("{method} {path}"))
        .or_default() += 1;
    let base = s.base.lock().unwrap().clone();

    if path == "/token" {
        s.token_requests.fetch_add(1, Ordering::SeqCst);
        let Some(mode) = &s.bearer else {
            return resp(StatusCode::NOT_FOUND, &[], Body::empty());
        };
        let q = uri.query().unwrap_or("");
        if !q.contains("scope=repository%3Aapp%3Apull") || !q.contains("service=fake") {
            return resp(
                StatusCode::BAD_REQUEST,
                &[],
                Body::from(format!("bad query {q}")),
            );
        }
        if let Some((u, p)) = &mode.creds {
            if authz.as_deref() != Some(basic_of(u, p).as_str()) {
                return resp(StatusCode::UNAUTHORIZED, &[], Body::empty());
            }
        }
        let body = json!({"token": mode.token, "expires_in": 300}).to_string();
        return resp(
            StatusCode::OK,
            &[("content-type", "application/json".into())],
            Body::from(body),
        );
    }
    if let Some(rest) = path.strip_prefix("/storage/") {
        // The "other host" a blob redirect points to.
        let blob = s.blobs.lock().unwrap().get(rest).cloned();
        return match blob {
            Some(b) => resp(StatusCode::OK, &[], Body::from(b)),
            None => resp(StatusCode::NOT_FOUND, &[], Body::empty()),
        };
    }
    if s.fail_first.load(Ordering::SeqCst) > 0 {
        s.fail_first.fetch_sub(1, Ordering::SeqCst);
        return resp(StatusCode::SERVICE_UNAVAILABLE, &[], Body::empty());
    }
    let authorized = match (&s.basic, &s.bearer) {
        (Some((u, p)), _) => authz.as_deref() == Some(basic_of(u, p).as_str()),
        (_, Some(mode)) => authz.as_deref() == Some(format!("Bearer {}", mode.token).as_str()),
        _ => true,
    };
    if !authorized {
        let challenge = if s.basic.is_some() {
            r#"Basic realm="fake""#.to_string()
        } else {
            format!(r#"Bearer realm="{base}/token",service="fake",scope="repository:app:pull""#)
        };
        return resp(
            StatusCode::UNAUTHORIZED,
            &[("www-authenticate", challenge)],
            Body::empty(),
        );
    }
    if path == "/v2/" {
        return resp(StatusCode::OK, &[], Body::empty());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return resp(StatusCode::NOT_FOUND, &[], Body::empty());
    };
    if let Some((_, reference)) = rest.split_once("/manifests/") {
        if s.hang_manifests {
            std::future::pending::<()>().await;
        }
        let Some((body, ct)) = s.manifests.lock().unwrap().get(reference).cloned() else {
            return resp(StatusCode::NOT_FOUND, &[], Body::empty());
        };
        let digest = Digest::sha256_of(&body).to_string();
        let mut h = vec![("content-type", ct)];
        if !s.head_without_digest {
            h.push(("docker-content-digest", digest));
        }
        if method == Method::HEAD {
            h.push(("content-length", body.len().to_string()));
            return resp(StatusCode::OK, &h, Body::empty());
        }
        if s.chunked_manifests {
            let chunks: Vec<Result<Bytes, std::io::Error>> = body
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            return resp(
                StatusCode::OK,
                &h,
                Body::from_stream(futures_util::stream::iter(chunks)),
            );
        }
        return resp(StatusCode::OK, &h, Body::from(body));
    }
    if let Some((_, digest)) = rest.split_once("/blobs/") {
        if let Some(d) = s.blob_delay {
            tokio::time::sleep(d).await;
        }
        let Some(body) = s.blobs.lock().unwrap().get(digest).cloned() else {
            return resp(StatusCode::NOT_FOUND, &[], Body::empty());
        };
        if let Some(target) = s.redirect_blobs.lock().unwrap().clone() {
            return resp(
                StatusCode::TEMPORARY_REDIRECT,
                &[("location", format!("{target}/storage/{digest}"))],
                Body::empty(),
            );
        }
        if s.corrupt.lock().unwrap().contains(digest) {
            let mut v = body.to_vec();
            v[0] ^= 0xff;
            return resp(StatusCode::OK, &[], Body::from(v));
        }
        let len = body.len().to_string();
        if s.truncate.lock().unwrap().contains(digest) {
            // Half the body, then the connection dies.
            let half = body.slice(..body.len() / 2);
            let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(half)]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("cut"))
                }),
            );
            return resp(
                StatusCode::OK,
                &[("content-length", len)],
                Body::from_stream(stream),
            );
        }
        if s.stall.lock().unwrap().contains(digest) {
            let first = body.slice(..10);
            let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(first)])
                .chain(futures_util::stream::pending());
            return resp(
                StatusCode::OK,
                &[("content-length", len)],
                Body::from_stream(stream),
            );
        }
        return resp(StatusCode::OK, &[("content-length", len)], Body::from(body));
    }
    resp(StatusCode::NOT_FOUND, &[], Body::empty())
}

struct Server {
    fake: Arc<Fake>,
    host: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `fake` on 127.0.0.1 (or under the name `localhost` when `as_localhost`).
async fn serve(fake: Fake, as_localhost: bool) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = if as_localhost {
        format!("localhost:{port}")
    } else {
        format!("127.0.0.1:{port}")
    };
    *fake.base.lock().unwrap() = format!("http://{host}");
    let fake = Arc::new(fake);
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { fake, host, task }
}

struct TestImage {
    manifest: Bytes,
    digest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

fn layer_bytes(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Adds a small two-layer image tagged `tag` to `fake`.
fn add_image(fake: &Fake, tag: &str, arch: &str, docker_types: bool) -> TestImage {
    let seed = arch
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(7).wrapping_add(b));
    let l1 = layer_bytes(seed, 300_000);
    let l2 = layer_bytes(seed.wrapping_add(1), 1000);
    let layers = [l1, l2];
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::sha256_of(&[l.as_ref(), b"raw"].concat()).to_string()).collect::<Vec<_>>()},
    })
    .to_string();
    let config = Bytes::from(config);
    let (mt, config_mt, layer_mt) = if docker_types {
        (
            MEDIA_DOCKER_MANIFEST,
            MEDIA_DOCKER_CONFIG,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            MEDIA_OCI_MANIFEST,
            MEDIA_OCI_CONFIG,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let cd = Digest::sha256_of(&config);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": config_mt, "digest": cd.to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": layer_mt, "digest": Digest::sha256_of(l).to_string(), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string();
    let manifest = Bytes::from(manifest);
    let digest = Digest::sha256_of(&manifest);
    let mut blobs = fake.blobs.lock().unwrap();
    blobs.insert(cd.to_string(), config);
    let mut layer_digests = Vec::new();
    for l in layers {
        let d = Digest::sha256_of(&l);
        blobs.insert(d.to_string(), l);
        layer_digests.push(d);
    }
    let mut manifests = fake.manifests.lock().unwrap();
    manifests.insert(tag.into(), (manifest.clone(), mt.into()));
    manifests.insert(digest.to_string(), (manifest.clone(), mt.into()));
    TestImage {
        manifest,
        digest,
        config: cd,
        layers: layer_digests,
    }
}

fn add_raw_manifest(fake: &Fake, tag: &str, body: Bytes, ct: &str) -> Digest {
    let d = Digest::sha256_of(&body);
    let mut m = fake.manifests.lock().unwrap();
    m.insert(tag.into(), (body.clone(), ct.into()));
    m.insert(d.to_string(), (body, ct.into()));
    d
}

fn opts() -> ClientOptions {
    ClientOptions {
        attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        // Generous: a loaded test machine must not look like a stalled registry.
        stall_timeout: Duration::from_secs(3),
        platform: Platform::new("linux", "amd64", None),
        ..ClientOptions::default()
    }
}

fn client(config: RegistryConfig) -> RegistryClient {
    RegistryClient::with_options(config, opts()).unwrap()
}

/// A client that calls 400 ms without a byte a stall, for the stall tests.
fn impatient_client(config: RegistryConfig) -> RegistryClient {
    let opts = ClientOptions {
        stall_timeout: Duration::from_millis(400),
        ..opts()
    };
    RegistryClient::with_options(config, opts).unwrap()
}

fn img(host: &str, rest: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{rest}")).unwrap()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Nothing is left in ingest/, `bad` is absent, and every stored blob verifies.
fn assert_store_clean(store: &ContentStore, bad: &Digest) {
    assert!(
        files_under(&store.root().join("ingest")).is_empty(),
        "ingest leftovers"
    );
    assert!(!store.has(bad), "{bad} must not be stored");
    for b in store.list().unwrap() {
        store.verify(&b.digest).unwrap();
    }
}

#[tokio::test]
async fn pulls_by_tag_and_digest_with_docker_and_oci_types() {
    let fake = Fake::default();
    let oci = add_image(&fake, "oci", "amd64", false);
    let docker = add_image(&fake, "docker", "amd64", true);
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = client(RegistryConfig::new());

    let r = img(&srv.host, "app:oci");
    let resolved = c.resolve(&r).await.unwrap();
    assert_eq!(resolved.digest, oci.digest);
    assert_eq!(resolved.media_type, MEDIA_OCI_MANIFEST);
    assert_eq!(resolved.size, oci.manifest.len() as u64);
    let pulled = c.pull_image(&store, &r).await.unwrap();
    assert_eq!(pulled.digest, oci.digest);
    assert_eq!(
        pulled.reference.to_string(),
        format!("{}/app:oci@{}", srv.host, oci.digest)
    );
    assert_eq!(pulled.config_digest, oci.config);
    assert_eq!(
        pulled
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        oci.layers
    );
    assert_eq!(pulled.layers[0].compression, LayerCompression::Gzip);
    assert_eq!(
        pulled
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap(),
        &vec!["/bin/sh".to_string()]
    );
    for d in [&oci.digest, &oci.config, &oci.layers[0], &oci.layers[1]] {
        assert!(store.has(d), "{d}");
        store.verify(d).unwrap();
    }
    assert!(pulled.fetched_bytes > 300_000);
    // A second pull downloads nothing.
    let again = c.pull_image(&store, &r).await.unwrap();
    assert_eq!(again.fetched_bytes, 0);

    // By digest, Docker schema2 types.
    let by_digest = img(&srv.host, &format!("app@{}", docker.digest));
    let pulled = c.pull_image(&store, &by_digest).await.unwrap();
    assert_eq!(pulled.manifest_digest, docker.digest);
    assert_eq!(pulled.media_type, MEDIA_DOCKER_MANIFEST);
    // A digest that is not the tag's: the registry must not hand back other content.
    let wrong = img(&srv.host, &format!("app:oci@{}", docker.digest));
    assert_eq!(c.resolve(&wrong).await.unwrap().digest, docker.digest);
}

#[tokio::test]
async fn resolve_without_head_digest_hashes_the_body() {
    let fake = Fake {
        head_without_digest: true,
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let c = client(RegistryConfig::new());
    let resolved = c.resolve(&img(&srv.host, "app:v1")).await.unwrap();
    assert_eq!(resolved.digest, image.digest);
    assert_eq!(srv.fake.hit("GET /v2/app/manifests/v1"), 1);
}

#[tokio::test]
async fn index_resolves_to_host_platform() {
    let fake = Fake::default();
    let arm = add_image(&fake, "arm", "arm64", false);
    let amd = add_image(&fake, "amd", "amd64", false);
    let index = json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": arm.digest.to_string(), "size": arm.manifest.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": amd.digest.to_string(), "size": amd.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    let idx = add_raw_manifest(&fake, "multi", index.to_string().into(), MEDIA_OCI_INDEX);
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = client(RegistryConfig::new());
    let pulled = c
        .pull_image(&store, &img(&srv.host, "app:multi"))
        .await
        .unwrap();
    assert_eq!(pulled.digest, idx);
    assert_eq!(pulled.manifest_digest, amd.digest);
    assert_eq!(pulled.layers[0].digest, amd.layers[0]);
    assert!(store.has(&idx) && store.has(&amd.digest) && !store.has(&arm.layers[0]));

    let s390 = ClientOptions {
        platform: Platform::new("linux", "s390x", None),
        ..opts()
    };
    let c = RegistryClient::with_options(RegistryConfig::new(), s390).unwrap();
    let err = c
        .pull_image(&store, &img(&srv.host, "app:multi"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("app:multi")
            && msg.contains("linux/s390x")
            && msg.contains("linux/arm64/v8, linux/amd64"),
        "{msg}"
    );
}

#[tokio::test]
async fn bearer_token_flow_anonymous_and_with_credentials() {
    // Anonymous token.
    let fake = Fake {
        bearer: Some(BearerMode {
            token: "tok-anon".into(),
            creds: None,
        }),
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = client(RegistryConfig::new());
    let pulled = c
        .pull_image(&store, &img(&srv.host, "app:v1"))
        .await
        .unwrap();
    assert_eq!(pulled.digest, image.digest);
    // One token for the whole pull: it is cached per repository scope.
    assert_eq!(srv.fake.token_requests.load(Ordering::SeqCst), 1);

    // A token server that wants credentials.
    let fake = Fake {
        bearer: Some(BearerMode {
            token: "tok-user".into(),
            creds: Some(("alice".into(), "pw".into())),
        }),
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let r = img(&srv.host, "app:v1");
    let err = client(RegistryConfig::new()).resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains(&srv.host) && err.to_string().contains("app:v1"),
        "{err}"
    );

    let mut cfg = RegistryConfig::new();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:pw");
    cfg.add_docker_config(
        &format!(r#"{{"auths": {{"{}": {{"auth": "{b64}"}}}}}}"#, srv.host),
        "test",
    )
    .unwrap();
    let pulled = client(cfg).pull_image(&store, &r).await.unwrap();
    assert_eq!(pulled.digest, image.digest);
}

#[tokio::test]
async fn basic_auth_and_redirects_drop_authorization() {
    let storage = serve(Fake::default(), true).await;
    let fake = Fake {
        basic: Some(("bob".into(), "hunter2".into())),
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    // The storage host serves the same blobs.
    *storage.fake.blobs.lock().unwrap() = fake.blobs.lock().unwrap().clone();
    *fake.redirect_blobs.lock().unwrap() = Some(format!("http://{}", storage.host));
    let srv = serve(fake, false).await;

    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "hunter2\n").unwrap();
    let cfg = RegistryConfig::from_toml(&format!(
        "[[registry]]\nhost = \"{}\"\nusername = \"bob\"\npassword_file = \"{}\"\n",
        srv.host,
        pass.display()
    ))
    .unwrap();
    let store = ContentStore::open(dir.path().join("state")).unwrap();
    let pulled = client(cfg)
        .pull_image(&store, &img(&srv.host, "app:v1"))
        .await
        .unwrap();
    assert_eq!(pulled.layers.len(), 2);
    // The registry got the credentials; the storage host never did.
    let seen = srv.fake.auth_seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .any(|(p, a)| p.contains("/blobs/") && a.is_some()));
    let storage_seen = storage.fake.auth_seen.lock().unwrap().clone();
    assert_eq!(storage_seen.len(), 3, "{storage_seen:?}");
    assert!(
        storage_seen.iter().all(|(_, a)| a.is_none()),
        "{storage_seen:?}"
    );
    assert!(store.has(&image.layers[0]));

    // Without credentials: Unauthorized naming the registry.
    let err = client(RegistryConfig::new())
        .resolve(&img(&srv.host, "app:v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { ref registry, .. } if registry == &srv.host),
        "{err}"
    );
    // With wrong ones too.
    std::fs::write(&pass, "wrong").unwrap();
    let cfg = RegistryConfig::from_toml(&format!(
        "[[registry]]\nhost = \"{}\"\nusername = \"bob\"\npassword_file = \"{}\"\n",
        srv.host,
        pass.display()
    ))
    .unwrap();
    let err = client(cfg)
        .resolve(&img(&srv.host, "app:v1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
}

#[tokio::test]
async fn corrupt_truncated_and_stalled_blobs_fail_cleanly() {
    let fake = Fake::default();
    let a = add_image(&fake, "corrupt", "amd64", false);
    fake.corrupt.lock().unwrap().insert(a.layers[0].to_string());
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = impatient_client(RegistryConfig::new());

    let r = img(&srv.host, "app:corrupt");
    let err = c.pull_image(&store, &r).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::DigestMismatch { ref expected, .. } if expected == &a.layers[0]),
        "{msg}"
    );
    assert!(
        msg.contains("app:corrupt") && msg.contains(&a.layers[0].to_string()),
        "{msg}"
    );
    assert_store_clean(&store, &a.layers[0]);

    // Truncated: Content-Length promises more than arrives; retried, then fails.
    srv.fake.corrupt.lock().unwrap().clear();
    srv.fake
        .truncate
        .lock()
        .unwrap()
        .insert(a.layers[0].to_string());
    let err = c
        .pull_blob(&store, &r, &a.layers[0], Some(300_000))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            RegistryError::Body { .. } | RegistryError::SizeMismatch { .. }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("app:corrupt") && msg.contains(&a.layers[0].to_string()),
        "{msg}"
    );
    assert_eq!(
        srv.fake.hit(&format!("GET /v2/app/blobs/{}", a.layers[0])),
        3 + 1,
        "retried up to 3 attempts"
    );
    assert_store_clean(&store, &a.layers[0]);

    // Stalled: no bytes for longer than the stall timeout.
    srv.fake.truncate.lock().unwrap().clear();
    srv.fake
        .stall
        .lock()
        .unwrap()
        .insert(a.layers[0].to_string());
    let started = std::time::Instant::now();
    let err = c
        .pull_blob(&store, &r, &a.layers[0], Some(300_000))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err}");
    assert!(err.to_string().contains(&a.layers[0].to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_store_clean(&store, &a.layers[0]);

    // A descriptor size that disagrees with the blob.
    store.delete(&a.layers[1]).unwrap();
    srv.fake.stall.lock().unwrap().clear();
    let err = c
        .pull_blob(&store, &r, &a.layers[1], Some(999))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::SizeMismatch {
                expected: 999,
                actual: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert_store_clean(&store, &a.layers[1]);
}

#[tokio::test]
async fn manifest_errors_name_the_image() {
    let fake = Fake {
        chunked_manifests: true,
        ..Fake::default()
    };
    let good = add_image(&fake, "good", "amd64", false);
    // Oversized (> 4 MiB), sent chunked so only the streaming cap can catch it.
    let mut big =
        json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST, "config": {}, "layers": []})
            .to_string();
    big.push_str(&" ".repeat(5 * 1024 * 1024));
    let big_digest = add_raw_manifest(&fake, "big", big.into(), MEDIA_OCI_MANIFEST);
    // Unknown media type.
    let helm = json!({"schemaVersion": 2, "mediaType": "application/vnd.cncf.helm.chart.v1+json"});
    add_raw_manifest(
        &fake,
        "helm",
        helm.to_string().into(),
        "application/vnd.cncf.helm.chart.v1+json",
    );
    // A layer with a malformed digest.
    let bad_layer = json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": good.config.to_string(), "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:ABC", "size": 1}],
    });
    add_raw_manifest(
        &fake,
        "baddigest",
        bad_layer.to_string().into(),
        MEDIA_OCI_MANIFEST,
    );
    // A layer media type we cannot unpack.
    let odd_layer = json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": good.config.to_string(), "size": 10},
        "layers": [{"mediaType": "application/x-squashfs", "digest": good.layers[1].to_string(), "size": 1000}],
    });
    add_raw_manifest(
        &fake,
        "oddlayer",
        odd_layer.to_string().into(),
        MEDIA_OCI_MANIFEST,
    );
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = client(RegistryConfig::new());

    let err = c
        .pull_image(&store, &img(&srv.host, "app:big"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::ManifestTooLarge {
                limit: MANIFEST_LIMIT,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("app:big"), "{err}");
    // Fetching it by digest: streaming cap.
    let err = c
        .fetch_manifest(&img(&srv.host, "app:big"), &big_digest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&big_digest.to_string()), "{err}");

    let err = c
        .pull_image(&store, &img(&srv.host, "app:helm"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { ref media_type, .. } if media_type.contains("helm")),
        "{err}"
    );
    assert!(err.to_string().contains("app:helm"), "{err}");

    let err = c
        .pull_image(&store, &img(&srv.host, "app:baddigest"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BadDigest { .. }), "{err}");
    assert!(
        err.to_string().contains("sha256:ABC") && err.to_string().contains("layers[0]"),
        "{err}"
    );

    let err = c
        .pull_image(&store, &img(&srv.host, "app:oddlayer"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { ref media_type, .. } if media_type == "application/x-squashfs"),
        "{err}"
    );

    let err = c
        .pull_image(&store, &img(&srv.host, "app:missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{}/app:missing", srv.host)),
        "{err}"
    );

    // A pinned digest the registry does not have.
    let absent = Digest::sha256_of(b"absent");
    let err = c
        .pull_image(&store, &img(&srv.host, &format!("app@{absent}")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NotFound { .. })
            && err.to_string().contains(&absent.to_string()),
        "{err}"
    );

    assert!(files_under(&dir.path().join("ingest")).is_empty());
    assert!(
        files_under(&dir.path().join("blobs")).is_empty(),
        "{:?}",
        files_under(&dir.path().join("blobs"))
    );
}

#[tokio::test]
async fn malformed_digest_header_is_refused() {
    let fake = Fake::default();
    add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    // A manifest served under a digest it does not hash to.
    let other = add_raw_manifest(
        &srv.fake,
        "x",
        Bytes::from_static(b"{}"),
        MEDIA_OCI_MANIFEST,
    );
    let lie = Digest::sha256_of(b"lie");
    let body = srv
        .fake
        .manifests
        .lock()
        .unwrap()
        .get("v1")
        .cloned()
        .unwrap();
    srv.fake
        .manifests
        .lock()
        .unwrap()
        .insert(lie.to_string(), body);
    let c = client(RegistryConfig::new());
    let err = c
        .fetch_manifest(&img(&srv.host, "app:v1"), &lie)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { ref expected, .. } if expected == &lie),
        "{err}"
    );
    assert!(err.to_string().contains(&lie.to_string()), "{err}");
    let _ = other;
    // A reference whose digest is malformed never reaches the network.
    assert!(ImageRef::parse(&format!("{}/app@sha256:xyz", srv.host)).is_err());
}

#[tokio::test]
async fn registry_down_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let err = client(RegistryConfig::new())
        .pull_image(&store, &img(&host, "app:v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { ref registry, .. } if registry == &host),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("{host}/app:v1")), "{err}");
    assert!(err.is_transient());
    assert_eq!(err.kind(), "unreachable");
}

#[tokio::test]
async fn retries_503_then_succeeds() {
    let fake = Fake {
        fail_first: AtomicUsize::new(2),
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let resolved = client(RegistryConfig::new())
        .resolve(&img(&srv.host, "app:v1"))
        .await
        .unwrap();
    assert_eq!(resolved.digest, image.digest);
    assert_eq!(srv.fake.hit("HEAD /v2/app/manifests/v1"), 3);

    srv.fake.fail_first.store(10, Ordering::SeqCst);
    let err = client(RegistryConfig::new())
        .resolve(&img(&srv.host, "app:v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_pulls_fetch_each_blob_once() {
    let fake = Fake {
        blob_delay: Some(Duration::from_millis(150)),
        ..Fake::default()
    };
    let image = add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let c = client(RegistryConfig::new());
    let r = img(&srv.host, "app:v1");
    let (a, b, c2) = tokio::join!(
        c.pull_image(&store, &r),
        c.pull_image(&store, &r),
        c.pull_blob(&store, &r, &image.layers[0], Some(300_000))
    );
    assert_eq!(a.unwrap().digest, image.digest);
    assert_eq!(b.unwrap().digest, image.digest);
    c2.unwrap();
    for d in image.layers.iter().chain([&image.config]) {
        assert_eq!(
            srv.fake.hit(&format!("GET /v2/app/blobs/{d}")),
            1,
            "{d} fetched more than once"
        );
    }
}

#[tokio::test]
async fn mirrors_are_tried_first_and_fall_back() {
    let mirror_fake = Fake::default();
    let upstream_fake = Fake::default();
    let image = add_image(&upstream_fake, "v1", "amd64", false);
    add_image(&mirror_fake, "v1", "amd64", false);
    let mirror = serve(mirror_fake, false).await;
    let upstream = serve(upstream_fake, false).await;
    let cfg = RegistryConfig::from_toml(&format!(
        "[[registry]]\nhost = \"{}\"\nmirrors = [\"{}\"]\n",
        upstream.host, mirror.host
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let r = img(&upstream.host, "app:v1");
    client(cfg.clone()).pull_image(&store, &r).await.unwrap();
    assert!(
        upstream.fake.hits.lock().unwrap().is_empty(),
        "upstream was contacted"
    );
    assert_eq!(
        mirror
            .fake
            .hit(&format!("GET /v2/app/blobs/{}", image.layers[0])),
        1
    );

    // The mirror lacks a tag: the upstream answers.
    add_image(&upstream.fake, "v2", "amd64", true);
    let pulled = client(cfg)
        .pull_image(&store, &img(&upstream.host, "app:v2"))
        .await
        .unwrap();
    assert_eq!(pulled.media_type, MEDIA_DOCKER_MANIFEST);
    assert_eq!(mirror.fake.hit("HEAD /v2/app/manifests/v2"), 1);
}

#[tokio::test]
async fn a_registry_that_never_answers_is_a_stall() {
    let fake = Fake {
        hang_manifests: true,
        ..Fake::default()
    };
    add_image(&fake, "v1", "amd64", false);
    let srv = serve(fake, false).await;
    let started = std::time::Instant::now();
    let err = impatient_client(RegistryConfig::new())
        .resolve(&img(&srv.host, "app:v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err}");
    assert!(
        err.to_string().contains("app:v1") && err.to_string().contains("/v2/app/manifests/v1"),
        "{err}"
    );
    // Three attempts of 400ms each, plus short backoffs.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(srv.fake.hit("HEAD /v2/app/manifests/v1"), 3);
}
