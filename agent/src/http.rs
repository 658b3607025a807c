//! The HTTP layer: turns requests into calls on the agent core and results
//! into JSON. Two routers: the mutating API (root-only unix socket, or TCP —
//! HTTPS, see `tls` — behind a bearer token and/or client certificates) and
//! the read-only listener (metrics, health, readiness) that a load balancer
//! or Prometheus may reach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use berth_core::api::ErrorBody;
use berth_core::manifest::SourceFiles;
use futures_util::StreamExt;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::control::{Agent, AgentError, ApplySource, LogTargetKind, LogsRequest};

/// Largest request body accepted (a manifest directory as JSON).
pub const MAX_BODY: usize = 4 << 20;
/// How much of an oversized body is read and discarded so the client sees 413.
const DRAIN_LIMIT: usize = 64 << 20;
/// Longest a non-streaming request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error answer: a status and the JSON body of SPEC.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub ErrorBody);

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError(status, ErrorBody::new(code, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(self.1)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"berth\""),
            );
        }
        resp
    }
}

/// The status and error `code` of an [`AgentError`] (SPEC: errors are JSON
/// with a fitting status). The caller's mistakes are 4xx; a module error is
/// 5xx unless what it says is about the request (an unknown container, an
/// image the registry does not have). Exhaustive: a new variant must be
/// placed here.
pub fn status_of(e: &AgentError) -> (StatusCode, &'static str) {
    use crate::image::store::ImageError;
    use crate::volumes::VolumeError;
    const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "internal");
    // A full state filesystem, whatever step hit it: 507, retry once there
    // is room (the message names the path).
    if crate::state::is_no_space(e) {
        let code = match e {
            AgentError::Image(_) => "image_error",
            _ => "no_space",
        };
        return (StatusCode::INSUFFICIENT_STORAGE, code);
    }
    match e {
        AgentError::InvalidManifest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest"),
        AgentError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        AgentError::BadRequest(_) | AgentError::Reference(_) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        AgentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        AgentError::FleetWait(_) => (StatusCode::CONFLICT, "fleet_wait"),
        AgentError::ManagedBySource(_) => (StatusCode::CONFLICT, "managed_by_source"),
        AgentError::WouldRemove(_) => (StatusCode::CONFLICT, "would_remove"),
        AgentError::ImageResolve { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "image_unresolvable"),
        AgentError::NotLoaded { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "image_not_loaded"),
        AgentError::Archive(a) => match a {
            crate::image::archive::ArchiveError::NoSpace { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "no_space")
            }
            crate::image::archive::ArchiveError::Entry { .. }
            | crate::image::archive::ArchiveError::Format(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "bad_archive")
            }
            _ => INTERNAL,
        },
        AgentError::SaveIo { .. } | AgentError::Fleet(_) => INTERNAL,
        AgentError::Image(inner) => match inner.as_ref() {
            ImageError::Registry(r) if r.kind() == "not_found" => {
                (StatusCode::NOT_FOUND, "image_error")
            }
            // Storing what the registry sent is local storage.
            ImageError::Registry(crate::registry::RegistryError::Store { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "image_error")
            }
            ImageError::Registry(_) => (StatusCode::BAD_GATEWAY, "image_error"),
            ImageError::NotFound(_) => (StatusCode::NOT_FOUND, "image_error"),
            i if i.is_no_space() => (StatusCode::INSUFFICIENT_STORAGE, "image_error"),
            // Content the agent refuses (too many layers, a bad config, a
            // digest mismatch): pulling it again cannot help.
            i if i.is_permanent() => (StatusCode::UNPROCESSABLE_ENTITY, "image_error"),
            // Local storage, the state database.
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "image_error"),
        },
        AgentError::Volume(v) => match v {
            VolumeError::InUse { .. } => (StatusCode::CONFLICT, "volume_in_use"),
            VolumeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            VolumeError::InvalidName(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            VolumeError::Io { .. } | VolumeError::Seed { .. } => INTERNAL,
        },
        AgentError::Runtime(r) => runtime_status(r),
        AgentError::Containers(c) => match c {
            crate::containers::ContainerError::Runtime(r) => runtime_status(r),
            _ => INTERNAL,
        },
        AgentError::Launch { .. } | AgentError::VolumeWriters { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "unrunnable")
        }
        AgentError::IdRange(r) => match r {
            crate::idranges::IdRangeError::Db(_) => INTERNAL,
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "unrunnable"),
        },
        AgentError::State(_)
        | AgentError::StoredRevision { .. }
        | AgentError::Json(_)
        | AgentError::Task { .. } => INTERNAL,
    }
}

/// A runtime error's status: an unknown container is 404, one that is not
/// running 409, arguments exec cannot pass (a NUL byte) 400, the rest 500.
fn runtime_status(e: &crate::runtime::RuntimeError) -> (StatusCode, &'static str) {
    use crate::runtime::RuntimeError;
    match e {
        RuntimeError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        RuntimeError::NotRunning { .. } => (StatusCode::CONFLICT, "conflict"),
        RuntimeError::Exec { step, .. } if step == "arguments" => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let (status, code) = status_of(&e);
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        let details = match &e {
            AgentError::InvalidManifest(problems) => {
                return ApiError(status, ErrorBody::invalid_manifest(problems))
            }
            AgentError::ManagedBySource(owner) => serde_json::json!({ "source": owner }),
            AgentError::WouldRemove(services) => serde_json::json!({ "services": services }),
            AgentError::Volume(crate::volumes::VolumeError::InUse { name, users }) => {
                serde_json::json!({ "volume": name, "users": users })
            }
            _ => serde_json::Value::Null,
        };
        ApiError(
            status,
            ErrorBody {
                error: berth_core::api::ErrorDetail {
                    code: code.into(),
                    message: e.to_string(),
                    details,
                },
            },
        )
    }
}

/// Which listener a router serves, for the request counter.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    Unix,
    Tcp,
    Http,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Unix => "unix",
            Listener::Tcp => "tcp",
            Listener::Http => "http",
        }
    }
}

#[derive(Clone)]
struct Ctx {
    agent: Arc<Agent>,
    listener: Listener,
    token: Option<Arc<String>>,
}

/// The mutating API. With `token`, every request must carry it (TCP
/// listeners; client certificates, when required, are checked by the TLS
/// handshake before a request is read).
pub fn api_router(agent: Arc<Agent>, listener: Listener, token: Option<String>) -> Router {
    let ctx = Ctx {
        agent,
        listener,
        token: token.map(Arc::new),
    };
    let timed = Router::new()
        .route("/v1/manifest", put(put_manifest))
        .route("/v1/revisions", get(get_revisions))
        .route("/v1/status", get(get_status))
        .route("/v1/services", get(get_services))
        .route("/v1/services/{name}", get(get_service))
        .route("/v1/containers", get(get_containers))
        .route("/v1/stats", get(get_stats))
        .route("/v1/containers/{id}", get(get_container))
        .route("/v1/rollback", post(post_rollback))
        .route("/v1/services/{name}/restart", post(post_restart))
        .route("/v1/images", get(get_images))
        .route("/v1/gc", post(post_gc))
        .route("/v1/volumes", get(get_volumes))
        .route("/v1/volumes/{name}", delete(delete_volume))
        .route("/v1/drain", put(put_drain).get(get_drain))
        .route("/v1/fleet", get(get_fleet))
        .route("/v1/fleet/pause", post(post_fleet_pause))
        .route("/v1/fleet/resume", post(post_fleet_resume))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    Router::new()
        .route("/v1/events", get(get_events))
        .route("/v1/containers/{id}/logs", get(get_logs))
        .route("/v1/services/{name}/logs", get(get_service_logs))
        .route("/v1/images/pull", post(post_pull))
        .route("/v1/images/load", post(post_load))
        .route("/v1/images/save", get(get_save))
        .route("/v1/containers/{id}/exec", post(post_exec))
        .route("/v1/services/{name}/exec", post(post_exec))
        .merge(timed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(middleware::from_fn_with_state(ctx.clone(), count_requests))
        .with_state(ctx)
}

/// The read-only listener: metrics, liveness, readiness.
pub fn read_only_router(agent: Arc<Agent>) -> Router {
    let ctx = Ctx {
        agent,
        listener: Listener::Http,
        token: None,
    };
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .route("/readyz", get(get_readyz))
        .route("/v1/services/{name}/ready", get(get_service_ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(middleware::from_fn_with_state(ctx.clone(), count_requests))
        .with_state(ctx)
}

async fn count_requests(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    ctx.agent
        .metrics
        .http_request(ctx.listener.label(), &route, resp.status().as_str());
    resp
}

async fn authorize(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Reads a body up to [`MAX_BODY`]; a larger one is drained (up to a cap) and
/// refused with 413.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading body: {e}"),
            )
        })?;
        total += chunk.len();
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= MAX_BODY {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

#[derive(Debug, Deserialize)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// Remove services the current revision runs that the manifest leaves out.
    #[serde(default)]
    prune: bool,
}

/// `PUT /v1/manifest`: a TOML body, or a JSON map of file name → TOML.
async fn put_manifest(
    State(ctx): State<Ctx>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let files: SourceFiles = if is_json {
        let map: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("expected a JSON object of file name to TOML text: {e}"),
            )
        })?;
        if map.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_manifest",
                "no manifest files given",
            ));
        }
        if map.len() > berth_core::manifest::MAX_FILES {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "too_many_files",
                "too many manifest files",
            ));
        }
        map
    } else {
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_encoding",
                "manifest is not UTF-8",
            )
        })?;
        BTreeMap::from([("manifest.toml".to_string(), text)])
    };
    let resp = ctx
        .agent
        .apply_checked(files, ApplySource::Api, q.dry_run, q.prune)
        .await?;
    let status = if resp.dry_run || resp.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(resp)).into_response())
}

async fn get_revisions(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.revisions()?).into_response())
}

async fn get_status(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.status()?).into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// RFC 3339 time or a duration back from now (`10m`).
    #[serde(default)]
    since: Option<String>,
}

/// `GET /v1/events[?service=S&kind=K&since=T]`: kept events as JSON; with
/// `follow`, newline-delimited JSON that stays open and streams new events.
async fn get_events(
    State(ctx): State<Ctx>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let follow = q
        .follow
        .as_deref()
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1");
    let since = match q.since.as_deref() {
        None => None,
        Some(t) => Some(
            crate::events::parse_since(t, time::OffsetDateTime::now_utc())
                .map_err(|m| ApiError::from(AgentError::BadRequest(format!("since: {m}"))))?,
        ),
    };
    let filter = crate::events::EventFilter {
        service: q.service,
        kind: q.kind,
        since,
    };
    if !follow {
        return Ok(Json(ctx.agent.events.query(&filter)).into_response());
    }
    let rx = ctx.agent.events.subscribe();
    let history = ctx.agent.events.query(&filter);
    let last_seq = history.last().map(|e| e.seq).unwrap_or(0);
    let head = futures_util::stream::iter(
        history
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(ndjson(&e))),
    );
    let tail = futures_util::stream::unfold((rx, filter), move |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq <= last_seq || !filter.matches(&e) => continue,
                Ok(e) => return Some((Ok(ndjson(&e)), (rx, filter))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = serde_json::json!({ "kind": "events-dropped", "message": format!("{n} events were dropped: reader too slow") });
                    return Some((Ok(Bytes::from(format!("{note}\n"))), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut resp = Body::from_stream(head.chain(tail)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

fn ndjson<T: serde::Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn get_metrics(State(ctx): State<Ctx>) -> Response {
    // Rendering reads cgroup files: keep it off the async workers.
    let agent = ctx.agent.clone();
    let text = tokio::task::spawn_blocking(move || agent.metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn get_services(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.status()?.services).into_response())
}

async fn get_service(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let status = ctx.agent.status()?;
    let svc = status
        .services
        .into_iter()
        .find(|s| s.name == name)
        .ok_or(AgentError::NotFound {
            what: format!("service `{name}`"),
        })?;
    let containers: Vec<_> = ctx
        .agent
        .container_views()
        .await?
        .into_iter()
        .filter(|c| c.service == name)
        .collect();
    Ok(Json(serde_json::json!({ "service": svc, "containers": containers })).into_response())
}

async fn get_containers(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.container_views().await?).into_response())
}

/// `GET /v1/stats`: CPU, memory and pids of every running container.
async fn get_stats(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let runtime = ctx.agent.runtime.clone();
    let stats =
        crate::control::blocking("reading stats", move || crate::stats::snapshot(&runtime)).await?;
    Ok(Json(stats).into_response())
}

async fn get_container(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.container_detail(&id).await?).into_response())
}

#[derive(Debug, Deserialize, Default)]
struct RollbackBody {
    #[serde(default)]
    revision: Option<u64>,
}

async fn post_rollback(State(ctx): State<Ctx>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let req: RollbackBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))?
    };
    let resp = ctx.agent.rollback(req.revision).await?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

/// Whether a request asks to upgrade to the streaming exec protocol
/// (`Connection: upgrade` and `Upgrade: berth-exec.v1`).
fn wants_exec_stream(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, berth_core::exec::UPGRADE_PROTOCOL)
}

/// `POST /v1/containers/ID/exec` and `POST /v1/services/NAME/exec` with a
/// JSON `ExecRequest` (`{"cmd": [..], "timeout_ms", "tty", "stdin", "size"}`)
/// runs the command in the container (a container id or prefix, or a
/// service's running replica, ready first). With `Connection: upgrade` and
/// `Upgrade: berth-exec.v1` the answer is `101 Switching Protocols` once the
/// command has started, and the connection carries the frames of
/// docs/exec.md (stdio streamed, no cap, no default timeout). Otherwise the
/// answer is `{container, exit_code, output, timed_out}` once it has ended
/// (output: combined stdout+stderr, first 4 KiB; default timeout 60 s;
/// `tty`/`stdin` need the upgrade). Not under the request timeout.
async fn post_exec(
    State(ctx): State<Ctx>,
    Path(target): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let stream = wants_exec_stream(req.headers());
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body).await?;
    let req: berth_core::exec::ExecRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))?;
    if stream {
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "this connection cannot be upgraded (HTTP/1.1 needed)",
                )
            })?;
        let (container, process) = ctx.agent.exec_stream(&target, &req).await?;
        let stdin = req.stdin;
        let id = container.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    crate::exec_stream::serve(
                        hyper_util::rt::TokioIo::new(upgraded),
                        container,
                        process,
                        stdin,
                    )
                    .await
                }
                Err(e) => {
                    tracing::debug!(error = %e, "exec: the upgrade failed");
                    crate::exec_stream::abandon(process).await
                }
            }
        });
        let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(
            header::UPGRADE,
            HeaderValue::from_static(berth_core::exec::UPGRADE_PROTOCOL),
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert("berth-container", v);
        }
        return Ok(resp);
    }
    if req.tty || req.stdin {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "\"tty\" and \"stdin\" need a streaming exec: send Connection: upgrade and Upgrade: {}",
                berth_core::exec::UPGRADE_PROTOCOL
            ),
        ));
    }
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(60_000));
    let reply = ctx.agent.exec(&target, req.cmd, timeout).await?;
    Ok(Json(reply).into_response())
}

/// `POST /v1/services/NAME/restart`: records the current revision again with
/// the service's restart generation bumped (201 with the apply response).
async fn post_restart(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let resp = ctx.agent.restart(&name).await?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

async fn get_images(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.image_views().await?).into_response())
}

async fn post_gc(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.gc().await?).into_response())
}

/// `GET /v1/volumes`: every named volume with its size and users.
async fn get_volumes(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    Ok(Json(ctx.agent.volume_views().await?).into_response())
}

/// `DELETE /v1/volumes/NAME`: 409 `volume_in_use` (naming the users) while
/// the current revision or a container on disk uses it.
async fn delete_volume(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    ctx.agent.remove_volume(&name).await?;
    Ok(Json(serde_json::json!({ "removed": name })).into_response())
}

#[derive(Debug, Deserialize)]
struct DrainBody {
    on: bool,
}

async fn put_drain(State(ctx): State<Ctx>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let req: DrainBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("expected {{\"on\": true|false}}: {e}"),
        )
    })?;
    ctx.agent.set_draining(req.on);
    Ok(Json(serde_json::json!({ "draining": ctx.agent.is_draining() })).into_response())
}

/// The agent's fleet, or 404 when it is in none.
fn fleet_of(ctx: &Ctx) -> Result<Arc<crate::fleet::Fleet>, ApiError> {
    ctx.agent.fleet.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this agent is in no fleet (start berthd with --fleet-etcd and --fleet)",
        )
    })
}

/// `GET /v1/fleet`: every host of the fleet, its slots and halts.
async fn get_fleet(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let fleet = fleet_of(&ctx)?;
    Ok(Json(fleet.fleet_status(&*ctx.agent).await).into_response())
}

async fn fleet_pause(ctx: Ctx, on: bool) -> Result<Response, ApiError> {
    let fleet = fleet_of(&ctx)?;
    fleet.set_paused(&*ctx.agent, on).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet_unreachable",
            e.to_string(),
        )
    })?;
    Ok(Json(fleet.fleet_status(&*ctx.agent).await).into_response())
}

/// `POST /v1/fleet/pause`: no host of the fleet takes a new slot.
async fn post_fleet_pause(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    fleet_pause(ctx, true).await
}

/// `POST /v1/fleet/resume`: clears the pause and every halted manifest.
async fn post_fleet_resume(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    fleet_pause(ctx, false).await
}

async fn get_drain(State(ctx): State<Ctx>) -> Response {
    Json(serde_json::json!({ "draining": ctx.agent.is_draining() })).into_response()
}

#[derive(Deserialize)]
struct LoadQuery {
    tag: Option<String>,
}

/// A file below the state dir's `tmp/` for one request, removed on drop.
struct RequestFile(std::path::PathBuf);

impl RequestFile {
    fn new(agent: &Agent, what: &str) -> Result<RequestFile, ApiError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = agent.config.state_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{}: {e}", dir.display()),
            )
        })?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(RequestFile(
            dir.join(format!("{what}-{}-{n}", std::process::id())),
        ))
    }
}

impl Drop for RequestFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %self.0.display(), error = %e, "could not remove a request's scratch file")
            }
        }
    }
}

/// `POST /v1/images/load[?tag=REF]`: the body is an image archive (OCI
/// layout or `docker save` tar, optionally gzip/zstd), written to the state
/// dir's `tmp/` (507 when it and its unpacked copy would not fit above the
/// pull reserve), then loaded. Answers the loaded image records.
async fn post_load(
    State(ctx): State<Ctx>,
    Query(q): Query<LoadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    use tokio::io::AsyncWriteExt;
    let file = RequestFile::new(&ctx.agent, "load")?;
    let state_dir = ctx.agent.config.state_dir.clone();
    let room = crate::image::store::free_bytes(&state_dir)
        .saturating_sub(crate::image::store::disk_reserve(&state_dir));
    let io = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("storing the upload: {e}"),
        )
    };
    let mut out = tokio::fs::File::create(&file.0).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the archive: {e}"),
            )
        })?;
        total += chunk.len() as u64;
        if total > room / 2 {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
                format!(
                    "the archive ({total}+ bytes) and its unpacked copy do not fit the free space of {}",
                    state_dir.display()
                ),
            ));
        }
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    drop(out);
    let recs = ctx.agent.load(&file.0, q.tag.as_deref()).await?;
    Ok(Json(recs).into_response())
}

#[derive(Deserialize)]
struct SaveQuery {
    image: String,
}

/// `GET /v1/images/save?image=REF`: an OCI image layout tar of a stored
/// image (`application/x-tar`; header `Berth-Image-Digest`), streamed from a
/// scratch file that is unlinked once open.
async fn get_save(
    State(ctx): State<Ctx>,
    Query(q): Query<SaveQuery>,
) -> Result<Response, ApiError> {
    let file = RequestFile::new(&ctx.agent, "save")?;
    let rec = ctx.agent.save(&q.image, &file.0).await?;
    let f = tokio::fs::File::open(&file.0).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("opening the archive: {e}"),
        )
    })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    drop(file);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::HeaderName::from_static("berth-image-digest"),
                rec.digest.to_string(),
            ),
        ],
        crate::image::archive::file_body(f),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct PullQuery {
    #[serde(default)]
    stream: Option<bool>,
}

/// `POST /v1/images/pull`: `{"image": REF}`. With `?stream=true`,
/// newline-delimited progress events, the last one `done` or `error`.
async fn post_pull(
    State(ctx): State<Ctx>,
    Query(q): Query<PullQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let req: berth_core::api::PullRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("expected {{\"image\": REF}}: {e}"),
        )
    })?;
    if !q.stream.unwrap_or(false) {
        let rec = ctx.agent.pull(&req.image, None).await?;
        return Ok(Json(rec).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = ctx.agent.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = agent.pull(&req.image, Some(tx)).await;
        let _ = done_tx.send(result);
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::io::Error>(ndjson(&e)), rx))
    });
    let tail = futures_util::stream::once(async move {
        let line = match done_rx.await {
            Ok(Ok(rec)) => serde_json::json!({ "event": "record", "image": rec }),
            Ok(Err(e)) => {
                let api: ApiError = e.into();
                serde_json::json!({ "event": "error", "status": api.0.as_u16(), "error": api.1.error })
            }
            Err(_) => {
                serde_json::json!({ "event": "error", "error": { "code": "internal", "message": "pull task died" } })
            }
        };
        Ok::<_, std::io::Error>(ndjson(&line))
    });
    let mut resp = Body::from_stream(events.chain(tail)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    previous: Option<String>,
}

/// A flag parameter: present empty, `true` or `1`.
fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

/// `GET /v1/containers/ID/logs?follow&tail=N&since=T&timestamps&previous`:
/// a container's lines (ID may also be a service name, or an archived
/// container) as plain text, one per line, `timestamps` prefixing each with
/// its RFC 3339 time.
async fn get_logs(
    State(ctx): State<Ctx>,
    Path(target): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    logs_response(ctx, target, LogTargetKind::Any, q).await
}

/// `GET /v1/services/NAME/logs?...`: a service's replicas merged by time;
/// with `follow`, new replicas are followed as they start.
async fn get_service_logs(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    logs_response(ctx, name, LogTargetKind::Service, q).await
}

async fn logs_response(
    ctx: Ctx,
    target: String,
    kind: LogTargetKind,
    q: LogsQuery,
) -> Result<Response, ApiError> {
    let since = match q.since.as_deref() {
        Some(t) if !t.is_empty() => Some(crate::runtime::crilog::nanos_of(
            crate::events::parse_since(t, time::OffsetDateTime::now_utc())
                .map_err(|m| ApiError::from(AgentError::BadRequest(format!("since: {m}"))))?,
        )),
        _ => None,
    };
    let req = LogsRequest {
        target,
        kind,
        follow: flag(&q.follow),
        previous: flag(&q.previous),
        query: crate::logs::LogQuery {
            tail: q.tail,
            since,
            timestamps: flag(&q.timestamps),
        },
    };
    let reply = ctx.agent.logs(&req).await?;
    let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let Some(follow) = reply.follow else {
        return Ok((content_type, reply.head).into_response());
    };
    let head = reply.head;
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    let agent = ctx.agent.clone();
    let tail = futures_util::stream::unfold((agent, follow), |(agent, mut follow)| async move {
        let chunk = follow.next(&agent).await?;
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (agent, follow)))
    });
    Ok((content_type, Body::from_stream(head.chain(tail))).into_response())
}

async fn get_healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn get_readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.agent.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "initial reconcile not done",
        )
        .into_response()
    }
}

async fn get_service_ready(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (ready, detail) = ctx.agent.service_ready(&name)?;
    if ready {
        Ok(
            Json(serde_json::json!({ "service": name, "ready": true, "detail": detail }))
                .into_response(),
        )
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("service `{name}`: {detail}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::ContainerError;
    use crate::image::store::ImageError;
    use crate::registry::RegistryError;
    use crate::runtime::RuntimeError;
    use crate::state::StateError;
    use crate::volumes::implicit::{ImplicitVolume, WriterProblem};
    use crate::volumes::VolumeError;

    fn image(e: ImageError) -> AgentError {
        AgentError::Image(Box::new(e))
    }

    fn not_running() -> RuntimeError {
        RuntimeError::NotRunning {
            id: "web-1".into(),
            state: "exited".into(),
        }
    }

    /// The problems of a manifest whose image is a number.
    fn invalid_manifest() -> Vec<berth_core::manifest::Problem> {
        berth_core::manifest::Manifest::from_str_named("berth.toml", "[service.x]\nimage = 1\n")
            .unwrap_err()
            .problems()
            .to_vec()
    }

    /// A `JoinError` as a cancelled blocking task gives.
    async fn join_error() -> tokio::task::JoinError {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        task.await.unwrap_err()
    }

    /// Every variant (and each module error's cases that differ) with the
    /// status and code a client gets: the caller's mistakes 4xx, the
    /// agent's own failures 5xx.
    #[tokio::test]
    async fn each_error_has_a_fitting_status() {
        let problem = invalid_manifest();
        let rows: Vec<(AgentError, StatusCode, &str)> = vec![
            (
                AgentError::InvalidManifest(problem.clone()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
            ),
            (
                AgentError::NotFound {
                    what: "service `web`".into(),
                },
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                AgentError::BadRequest("`a` matches 2 containers".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                AgentError::Conflict("service `web` has no running replica".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                AgentError::ManagedBySource("git:https://example.invalid/x".into()),
                StatusCode::CONFLICT,
                "managed_by_source",
            ),
            (
                AgentError::WouldRemove(vec!["db".into()]),
                StatusCode::CONFLICT,
                "would_remove",
            ),
            (
                AgentError::Reference(berth_core::image_ref::ReferenceError::Empty),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                AgentError::ImageResolve {
                    service: "web".into(),
                    source: Box::new(ImageError::Registry(RegistryError::NotFound {
                        image: "shop/web:1".into(),
                    })),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_unresolvable",
            ),
            (
                image(ImageError::Registry(RegistryError::NotFound {
                    image: "shop/web:1".into(),
                })),
                StatusCode::NOT_FOUND,
                "image_error",
            ),
            (
                image(ImageError::Registry(RegistryError::Status {
                    registry: "127.0.0.1:5000".into(),
                    image: "shop/web:1".into(),
                    what: "manifest".into(),
                    status: 503,
                })),
                StatusCode::BAD_GATEWAY,
                "image_error",
            ),
            (
                image(ImageError::NotFound("shop/web:1".into())),
                StatusCode::NOT_FOUND,
                "image_error",
            ),
            (
                image(ImageError::TooManyLayers {
                    image: "shop/web:1".into(),
                    count: 500,
                }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_error",
            ),
            (
                image(ImageError::NoSpace {
                    image: "shop/web:1".into(),
                    path: "/var/lib/berth".into(),
                    need: 2,
                    free: 1,
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "image_error",
            ),
            // The disk filled during the pull (ingest, snapshot) or a
            // state write: 507 as well; other I/O errors stay 500.
            (
                image(ImageError::Content {
                    image: "shop/web:1".into(),
                    source: crate::content::ContentError::Io {
                        op: "writing",
                        path: "/var/lib/berth/ingest/x".into(),
                        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                    },
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "image_error",
            ),
            (
                image(ImageError::Content {
                    image: "shop/web:1".into(),
                    source: crate::content::ContentError::Io {
                        op: "writing",
                        path: "/var/lib/berth/ingest/x".into(),
                        source: std::io::Error::from_raw_os_error(libc::EIO),
                    },
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "image_error",
            ),
            (
                AgentError::State(StateError::Db {
                    path: "/var/lib/berth/db".into(),
                    source: sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
            ),
            (
                AgentError::State(StateError::Io {
                    path: "/var/lib/berth/revisions/3.rev".into(),
                    source: std::io::Error::from_raw_os_error(libc::EDQUOT),
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
            ),
            (
                image(ImageError::Internal("sled".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "image_error",
            ),
            (
                AgentError::State(StateError::Corrupt {
                    tree: "revisions".into(),
                    key: "3".into(),
                    why: "bad json".into(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::StoredRevision {
                    number: 3,
                    source: Box::new(berth_core::manifest::ManifestError::Invalid(problem)),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::from(RuntimeError::NotFound { id: "web-1".into() }),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                AgentError::from(not_running()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                AgentError::from(RuntimeError::Exec {
                    id: "web-1".into(),
                    step: "arguments".into(),
                    message: "NUL byte".into(),
                }),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                AgentError::from(RuntimeError::MonitorLost { id: "web-1".into() }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::Containers(ContainerError::from(not_running())),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                AgentError::Containers(ContainerError::Worker {
                    what: "list",
                    reason: "panicked".into(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::Volume(VolumeError::InUse {
                    name: "data".into(),
                    users: vec!["service `db`".into()],
                }),
                StatusCode::CONFLICT,
                "volume_in_use",
            ),
            (
                AgentError::Volume(VolumeError::NotFound("data".into())),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                AgentError::Volume(VolumeError::InvalidName("../x".into())),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                AgentError::Volume(VolumeError::Io {
                    op: "remove",
                    path: "/var/lib/berth/volumes/data".into(),
                    source: std::io::Error::other("EIO"),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::Launch {
                    image: "shop/web:1".into(),
                    source: crate::launch::LaunchError::NoCommand,
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "unrunnable",
            ),
            (
                AgentError::VolumeWriters {
                    service: "db".into(),
                    problem: Box::new(WriterProblem::Replicas {
                        volume: ImplicitVolume {
                            name: "db_data".into(),
                            target: "/data".into(),
                            declared: "/data/".into(),
                        },
                        replicas: 2,
                    }),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "unrunnable",
            ),
            (
                AgentError::Json(serde_json::from_str::<u8>("x").unwrap_err()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                AgentError::Task {
                    what: "reading stats",
                    source: join_error().await,
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (e, status, code) in rows {
            let message = e.to_string();
            assert_eq!(status_of(&e), (status, code), "{e:?}");
            let ApiError(got, body) = ApiError::from(e);
            assert_eq!((got, body.error.code.as_str()), (status, code), "{message}");
            assert!(!body.error.message.is_empty(), "{code}");
        }
    }

    /// The body carries the message users saw before and the details
    /// clients read.
    #[test]
    fn bodies_keep_messages_and_details() {
        let ApiError(_, body) = ApiError::from(AgentError::WouldRemove(vec!["db".into()]));
        assert_eq!(body.error.details["services"], serde_json::json!(["db"]));
        assert!(
            body.error.message.contains("--prune"),
            "{}",
            body.error.message
        );

        let ApiError(_, body) = ApiError::from(AgentError::Volume(VolumeError::InUse {
            name: "data".into(),
            users: vec!["service `db`".into()],
        }));
        assert_eq!(body.error.details["volume"], "data");
        assert_eq!(body.error.details["users"][0], "service `db`");

        let ApiError(_, body) = ApiError::from(AgentError::NotFound {
            what: "container `abc`".into(),
        });
        assert_eq!(body.error.message, "container `abc` not found");
        assert!(body.error.details.is_null());

        let ApiError(_, body) = ApiError::from(AgentError::from(not_running()));
        assert_eq!(
            body.error.message,
            "container web-1: is exited, not running"
        );

        let problem = invalid_manifest();
        let ApiError(_, body) = ApiError::from(AgentError::InvalidManifest(problem));
        assert_eq!(body.error.details["problems"][0]["key"], "service.x.image");
    }
}
