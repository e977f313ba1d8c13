//! The agent's HTTP server (`driftless run --listen`): liveness, readiness, metrics, the status
//! API and push webhooks.
//!
//! | route                 | answers                                                                  |
//! |-----------------------|--------------------------------------------------------------------------|
//! | `GET /`               | the status page: every source (HTML, see [`super::page`])                  |
//! | `GET /sources/{name}` | the status page of one source: objects by wave and kind, Events, last error |
//! | `GET /ui/{asset}`     | the page's stylesheet and script (embedded)                              |
//! | `GET /healthz`        | 200 while every source loop runs; independent of git and the API server   |
//! | `GET /readyz`         | 200 once the config is loaded and every source reconciled once and synced its watches; 503 with the reason before |
//! | `GET /metrics`        | Prometheus exposition (OpenMetrics text)                                 |
//! | `GET /status`         | JSON: every source                                                       |
//! | `GET /status/{name}`  | JSON: one source (404 if unknown)                                        |
//! | `POST /hooks/{name}`  | push webhook: 202 and an immediate remote check; 401 bad or missing proof, 404 no webhook, 413 body over 1 MiB, 429 over the rate (5, then 1/s) or over the refusals (10 bad proofs, then 1 per 6 s) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::{info, warn};

use super::page::{self, assets};
use super::webhook::{self, RateLimit};
use super::Shared;

/// Webhook triggers per source: a burst of 5, then one per second.
const HOOK_BURST: u32 = 5;
const HOOK_EVERY: Duration = Duration::from_secs(1);

/// Refused webhooks per source: 10, then one per 6 s. Spent, no proof is checked (no secret read,
/// no HMAC computed over a body of up to 1 MiB) until it refills.
const REFUSAL_BURST: u32 = 10;
const REFUSAL_EVERY: Duration = Duration::from_secs(6);

/// Takes (`take`) or looks at a source's token in one of the budgets.
fn budget(
    limits: &std::sync::Mutex<std::collections::HashMap<String, RateLimit>>,
    source: &str,
    take: bool,
    burst: u32,
    every: Duration,
) -> bool {
    let mut limits = limits.lock().unwrap_or_else(|p| p.into_inner());
    let limit = limits.entry(source.to_string()).or_insert_with(|| RateLimit::new(burst, every));
    if take {
        limit.allow(Instant::now())
    } else {
        limit.available(Instant::now())
    }
}

/// The router over the shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/sources/{source}", get(source_page))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", assets::STYLE) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", assets::SCRIPT) }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(all_statuses))
        .route("/status/{source}", get(one_status))
        .route("/hooks/{source}", post(hook))
        .layer(DefaultBodyLimit::max(webhook::MAX_BODY))
        .with_state(shared)
}

/// Serves until the future `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(address = %listener.local_addr()?, "serving health, metrics, status and webhooks");
    axum::serve(listener, router(shared)).with_graceful_shutdown(shutdown).await
}

/// A page: HTML, never cached, under the page's Content-Security-Policy.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(assets::CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// An embedded asset (its URL carries the version, so it may be cached for a day).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "public, max-age=86400"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}

async fn overview_page(State(shared): State<Arc<Shared>>) -> Response {
    let sources: Vec<_> = shared.statuses.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    html(StatusCode::OK, page::overview(&sources, shared.role(), std::time::SystemTime::now()))
}

async fn source_page(State(shared): State<Arc<Shared>>, Path(source): Path<String>, RawQuery(query): RawQuery) -> Response {
    let now = std::time::SystemTime::now();
    let status = shared.statuses.read().unwrap_or_else(|p| p.into_inner()).get(&source).cloned();
    let Some(status) = status else {
        return html(StatusCode::NOT_FOUND, page::not_found(&source, now));
    };
    let events = match &shared.recent_events {
        Some(recent) => recent.about(&crate::inventory::applyset::parent_ref(&status.name, &shared.agent_namespace)).await,
        None => Err("Events are not read here".to_string()),
    };
    let health = page::health_filter(query.as_deref());
    html(StatusCode::OK, page::source(&status, health, &events, shared.role(), now))
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.alive() {
        return (StatusCode::SERVICE_UNAVAILABLE, "a source loop stopped\n").into_response();
    }
    // git and the API server being down is no reason to restart; a fetch that outlived every
    // deadline it has is
    let now = std::time::SystemTime::now();
    let statuses = shared.statuses.read().unwrap_or_else(|p| p.into_inner());
    let stuck: Vec<String> = statuses.values().filter_map(|s| s.stuck(now).map(|what| format!("{} ({what})", s.name))).collect();
    if stuck.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("stuck: {}\n", stuck.join(", "))).into_response()
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let statuses = shared.statuses.read().unwrap_or_else(|p| p.into_inner());
    let waiting: Vec<&str> = statuses.values().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = format!("waiting for the first reconcile and watches of: {}\n", waiting.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode()).into_response()
}

async fn all_statuses(State(shared): State<Arc<Shared>>) -> Response {
    let statuses = shared.statuses.read().unwrap_or_else(|p| p.into_inner());
    let all: Vec<_> = statuses.values().cloned().collect();
    Json(all).into_response()
}

async fn one_status(State(shared): State<Arc<Shared>>, Path(source): Path<String>) -> Response {
    let statuses = shared.statuses.read().unwrap_or_else(|p| p.into_inner());
    match statuses.get(&source) {
        Some(s) => Json(s.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no source named {source:?}\n")).into_response(),
    }
}

async fn hook(State(shared): State<Arc<Shared>>, Path(source): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let trigger = shared.triggers.read().unwrap_or_else(|p| p.into_inner()).get(&source).cloned();
    let (Some(secret_file), Some(trigger)) = (shared.webhook_secrets.get(&source), trigger) else {
        return (StatusCode::NOT_FOUND, "no webhook for this source (or this replica is on standby)\n").into_response();
    };
    // refusals first: a flood of bad proofs is turned away before any proof is checked
    if !budget(&shared.refusal_limits, &source, false, REFUSAL_BURST, REFUSAL_EVERY) {
        return (StatusCode::TOO_MANY_REQUESTS, "too many refused webhooks for this source; retry later\n").into_response();
    }
    let secret = match tokio::fs::read(secret_file).await {
        Ok(s) => s.trim_ascii_end().to_vec(),
        Err(e) => {
            warn!(source = %source, error = %e, "cannot read the webhook secret file");
            return (StatusCode::INTERNAL_SERVER_ERROR, "webhook secret unavailable\n").into_response();
        }
    };
    let proofs = headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    let Some(forge) = webhook::verify(&secret, proofs, &body) else {
        warn!(source = %source, "webhook refused: missing or bad signature");
        budget(&shared.refusal_limits, &source, true, REFUSAL_BURST, REFUSAL_EVERY);
        return (StatusCode::UNAUTHORIZED, "missing or bad signature\n").into_response();
    };
    if !budget(&shared.rate_limits, &source, true, HOOK_BURST, HOOK_EVERY) {
        return (StatusCode::TOO_MANY_REQUESTS, "too many webhooks for this source\n").into_response();
    }
    // a full channel means a check is already pending: that one will see the new commit
    let _ = trigger.try_send(());
    info!(source = %source, ?forge, "webhook accepted; checking the remote now");
    (StatusCode::ACCEPTED, "checking the remote\n").into_response()
}
