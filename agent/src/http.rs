//! The HTTP layer: turns requests into calls on the agent core and results
//! into JSON. Two routers: the mutating API (root-only unix socket, or TCP
//! behind a bearer token) and the read-only listener (metrics, health,
//! readiness) that a load balancer or Prometheus may reach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use berth_core::api::ErrorBody;
use berth_core::manifest::SourceFiles;
use futures_util::StreamExt;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::control::{Agent, AgentError, ApplySource};

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

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::InvalidManifest(problems) => ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::invalid_manifest(&problems),
            ),
            AgentError::ManagedBySource(ref owner) => ApiError(
                StatusCode::CONFLICT,
                ErrorBody {
                    error: berth_core::api::ErrorDetail {
                        code: "managed_by_source".into(),
                        message: e.to_string(),
                        details: serde_json::json!({ "source": owner }),
                    },
                },
            ),
            AgentError::NotFound { what } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
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

/// The mutating API. `token` is required on TCP listeners.
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
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    Router::new()
        .route("/v1/events", get(get_events))
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
        .http_requests
        .with_label_values(&[ctx.listener.label(), &route, resp.status().as_str()])
        .inc();
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
    let resp = ctx.agent.apply(files, ApplySource::Api, q.dry_run).await?;
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
}

/// `GET /v1/events`: recent events as JSON; with `follow`, newline-delimited
/// JSON that stays open and streams new events.
async fn get_events(State(ctx): State<Ctx>, Query(q): Query<EventsQuery>) -> Response {
    let follow = q
        .follow
        .as_deref()
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1");
    if !follow {
        return Json(ctx.agent.events.history()).into_response();
    }
    let rx = ctx.agent.events.subscribe();
    let history = ctx.agent.events.history();
    let last_seq = history.last().map(|e| e.seq).unwrap_or(0);
    let head = futures_util::stream::iter(
        history
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(ndjson(&e))),
    );
    let tail = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq <= last_seq => continue,
                Ok(e) => return Some((Ok(ndjson(&e)), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = serde_json::json!({ "kind": "events-dropped", "message": format!("{n} events were dropped: reader too slow") });
                    return Some((Ok(Bytes::from(format!("{note}\n"))), rx));
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
    resp
}

fn ndjson<T: serde::Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn get_metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        ctx.agent.metrics.render(),
    )
        .into_response()
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
