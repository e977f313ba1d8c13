//! The outbox against a loopback server that records each request and answers the codes it is
//! told to.

use super::*;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use ::http::{HeaderMap, Method, StatusCode, Uri};
use axum::body::Bytes;
use forge::Provider;
use hook::NotifyEvent;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "tok-5ecret-never-shown";

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    /// Path and query, as sent.
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A loopback server: answers each request with the next code (200 once they run out), or
/// never answers when `hang`.
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(codes: &[u16], hang: bool) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let codes = Arc::new(Mutex::new(codes.iter().copied().collect::<VecDeque<u16>>()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let codes = codes.clone();
            async move {
                let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                record.lock().unwrap().push(Seen { method, path, headers, body });
                if hang {
                    std::future::pending::<()>().await;
                }
                let code = codes.lock().unwrap().pop_front().unwrap_or(200);
                (StatusCode::from_u16(code).unwrap(), "{}")
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Short retry delays, so retries take milliseconds; timeouts long enough for a loaded machine.
fn fast() -> Settings {
    Settings {
        timeouts: Timeouts { connect: Duration::from_secs(2), request: Duration::from_secs(2) },
        retry_delays: vec![Duration::from_millis(10), Duration::from_millis(20)],
        queue: QUEUE,
    }
}

/// A file in a fresh temporary directory (kept alive by the returned guard).
fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn status_cfg(provider: Provider, api: &str, repository: &str, token_file: &Path) -> CommitStatusConfig {
    CommitStatusConfig { provider, api_url: Some(api.into()), repository: repository.into(), token_file: token_file.into() }
}

fn count(metrics: &Metrics, family: &str, source: &str, provider: &str) -> u64 {
    let line = format!("driftless_{family}_total{{source=\"{source}\",provider=\"{provider}\"}} ");
    let text = metrics.encode();
    text.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.trim().parse().unwrap())
}

fn notification(event: NotifyEvent, message: &str) -> Notification {
    Notification { event, source: "shop".into(), commit: Some(SHA.into()), reason: None, message: message.into(), object: None }
}

#[tokio::test]
async fn each_forge_gets_its_path_auth_header_and_body() {
    let server = Server::start(&[], false).await;
    let (_dir, token) = file(&format!("{TOKEN}\n"));
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), fast());
    let github = status_cfg(Provider::GitHub, &server.url, "acme/shop", &token);
    let gitlab = status_cfg(Provider::GitLab, &format!("{}/api/v4", server.url), "acme/sub/shop", &token);
    let gitea = status_cfg(Provider::Gitea, &format!("{}/api/v1/", server.url), "acme/shop", &token);
    outbox.post_status("shop", &github, SHA, CommitState::Pending, "syncing".into());
    outbox.post_status("shop", &gitlab, SHA, CommitState::Failure, "apply failed:\nDeployment/web".into());
    outbox.post_status("shop", &gitea, SHA, CommitState::Success, "synced".into());
    outbox.flush().await;

    let seen = server.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let (gh, gl, gt) = (&seen[0], &seen[1], &seen[2]);
    assert!(seen.iter().all(|s| s.method == Method::POST));
    assert!(seen.iter().all(|s| s.header("user-agent") == Some(&format!("driftless/{}", crate::VERSION))));
    assert_eq!(gh.path, format!("/repos/acme/shop/statuses/{SHA}"));
    assert_eq!(gh.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()), "the token file is trimmed");
    assert_eq!(gh.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(gh.json(), serde_json::json!({"state": "pending", "context": "driftless/shop", "description": "syncing"}));
    assert_eq!(gl.path, format!("/api/v4/projects/acme%2Fsub%2Fshop/statuses/{SHA}"));
    assert_eq!(gl.header("private-token"), Some(TOKEN));
    assert_eq!(gl.json(), serde_json::json!({"state": "failed", "name": "driftless/shop", "description": "apply failed: Deployment/web"}));
    assert_eq!(gt.path, format!("/api/v1/repos/acme/shop/statuses/{SHA}"));
    assert_eq!(gt.header("authorization"), Some(format!("token {TOKEN}").as_str()));
    assert_eq!(gt.json(), serde_json::json!({"state": "success", "context": "driftless/shop", "description": "synced"}));
    for provider in ["github", "gitlab", "gitea"] {
        assert_eq!(count(&metrics, "notifications_sent", "shop", provider), 1, "{provider}");
    }
}

#[tokio::test]
async fn a_repeated_state_for_a_commit_is_posted_once() {
    let server = Server::start(&[], false).await;
    let (_dir, token) = file(TOKEN);
    let outbox = Outbox::with_settings(Arc::new(Metrics::new()), fast());
    let cfg = status_cfg(Provider::GitHub, &server.url, "acme/shop", &token);
    outbox.post_status("shop", &cfg, SHA, CommitState::Success, "synced".into());
    outbox.post_status("shop", &cfg, SHA, CommitState::Success, "synced again".into());
    outbox.flush().await;
    assert_eq!(server.seen().len(), 1);
    // another source, another commit or another state is news
    outbox.post_status("web", &cfg, SHA, CommitState::Success, "synced".into());
    outbox.post_status("shop", &cfg, "abcdef", CommitState::Success, "synced".into());
    outbox.post_status("shop", &cfg, SHA, CommitState::Failure, "drifted".into());
    outbox.post_status("shop", &cfg, SHA, CommitState::Success, "back".into());
    outbox.flush().await;
    let states: Vec<String> = server.seen().iter().map(|s| s.json()["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["success", "success", "success", "failure", "success"]);
}

#[tokio::test]
async fn a_500_is_retried_and_delivered_once() {
    let server = Server::start(&[500, 200], false).await;
    let (_dir, token) = file(TOKEN);
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), fast());
    outbox.post_status("shop", &status_cfg(Provider::GitHub, &server.url, "acme/shop", &token), SHA, CommitState::Success, "ok".into());
    outbox.flush().await;
    assert_eq!(server.seen().len(), 2, "one failed attempt, one delivered");
    assert_eq!(count(&metrics, "notifications_sent", "shop", "github"), 1);
    assert_eq!(count(&metrics, "notification_failures", "shop", "github"), 0);
}

#[tokio::test]
async fn a_429_is_retried_until_the_retries_run_out() {
    let server = Server::start(&[429, 503, 502], false).await;
    let (_dir, token) = file(TOKEN);
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), fast());
    outbox.post_status("shop", &status_cfg(Provider::Gitea, &server.url, "acme/shop", &token), SHA, CommitState::Success, "ok".into());
    outbox.flush().await;
    assert_eq!(server.seen().len(), 3, "the first attempt and one retry per delay");
    assert_eq!(count(&metrics, "notification_failures", "shop", "gitea"), 1);
    assert_eq!(count(&metrics, "notifications_sent", "shop", "gitea"), 0);
}

#[tokio::test]
async fn a_404_is_not_retried_and_counts_as_a_failure() {
    let server = Server::start(&[404], false).await;
    let (_dir, token) = file(TOKEN);
    let metrics = Arc::new(Metrics::new());
    metrics.zero_series("shop", &["gitlab"]);
    assert!(metrics.encode().contains("driftless_notification_failures_total{source=\"shop\",provider=\"gitlab\"} 0"));
    let outbox = Outbox::with_settings(metrics.clone(), fast());
    outbox.post_status("shop", &status_cfg(Provider::GitLab, &server.url, "7", &token), SHA, CommitState::Failure, "x".into());
    outbox.flush().await;
    assert_eq!(server.seen().len(), 1);
    assert_eq!(count(&metrics, "notification_failures", "shop", "gitlab"), 1);
    // a failed post is not remembered: the same state is tried again
    outbox.post_status("shop", &status_cfg(Provider::GitLab, &server.url, "7", &token), SHA, CommitState::Failure, "x".into());
    outbox.flush().await;
    assert_eq!(server.seen().len(), 2);
    assert_eq!(count(&metrics, "notifications_sent", "shop", "gitlab"), 1);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_counts() {
    let server = Server::start(&[], true).await;
    let (_dir, token) = file(TOKEN);
    let metrics = Arc::new(Metrics::new());
    let timeouts = Timeouts { connect: Duration::from_secs(2), request: Duration::from_millis(300) };
    let settings = Settings { timeouts, retry_delays: vec![Duration::from_millis(10)], ..fast() };
    let outbox = Outbox::with_settings(metrics.clone(), settings);
    let started = Instant::now();
    outbox.post_status("shop", &status_cfg(Provider::GitHub, &server.url, "acme/shop", &token), SHA, CommitState::Pending, "x".into());
    outbox.flush().await;
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the timeouts: {:?}", started.elapsed());
    assert_eq!(server.seen().len(), 2, "a timeout is retried");
    assert_eq!(count(&metrics, "notification_failures", "shop", "github"), 1);
}

#[tokio::test]
async fn the_webhook_is_signed_over_the_exact_body() {
    let server = Server::start(&[], false).await;
    let (_u, url_file) = file(&format!("{}/hooks/driftless?key=abc\n", server.url));
    let (_s, secret_file) = file("hook-s3cret\n");
    let outbox = Outbox::with_settings(Arc::new(Metrics::new()), fast());
    let target = NotifyConfig { kind: NotifyType::Webhook, url_file, secret_file: Some(secret_file), events: vec![] };
    outbox.notify("shop", &[target], notification(NotifyEvent::SyncFailed, "apply failed"));
    outbox.flush().await;

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let hook = &seen[0];
    assert_eq!(hook.path, "/hooks/driftless?key=abc");
    assert_eq!(hook.header("content-type"), Some("application/json"));
    let sig = hook.header("x-signature-256").unwrap();
    assert_eq!(
        crate::status::webhook::verify(b"hook-s3cret", [("x-signature-256", sig.as_bytes())], &hook.body),
        Some(crate::status::webhook::Forge::Generic)
    );
    let body = hook.json();
    assert_eq!(
        (body["event"].as_str(), body["source"].as_str(), body["agent"].as_str()),
        (Some("SyncFailed"), Some("shop"), Some("driftless"))
    );
    assert_eq!(body["commit"], SHA);
    assert!(body["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn slack_gets_one_escaped_line_and_targets_filter_events() {
    let server = Server::start(&[], false).await;
    let (_u, url_file) = file(&format!("{}/services/T0/B0/XXXX", server.url));
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), fast());
    let slack = NotifyConfig { kind: NotifyType::Slack, url_file, secret_file: None, events: vec![NotifyEvent::SyncFailed] };
    outbox.notify("shop", std::slice::from_ref(&slack), notification(NotifyEvent::Synced, "fine"));
    outbox.notify("shop", std::slice::from_ref(&slack), notification(NotifyEvent::SyncFailed, "<Deployment/web> & more"));
    outbox.flush().await;

    let seen = server.seen();
    assert_eq!(seen.len(), 1, "Synced is not among the target's events");
    assert_eq!(seen[0].path, "/services/T0/B0/XXXX");
    assert_eq!(seen[0].json(), serde_json::json!({"text": "[shop] SyncFailed at 0123456789ab: &lt;Deployment/web&gt; &amp; more"}));
    assert_eq!(count(&metrics, "notifications_sent", "shop", "slack"), 1);
}

#[tokio::test]
async fn no_token_nor_secret_url_shows_in_errors_or_metrics() {
    let server = Server::start(&[404, 404, 500], false).await;
    let (_dir, token) = file(TOKEN);
    let client = HttpClient::new(fast().timeouts);
    let mut errors = Vec::new();
    // a forge that refuses, a secret Slack URL that refuses, a port nobody listens on
    let cfg = status_cfg(Provider::GitHub, &server.url, "acme/shop", &token);
    errors.push(deliver_status(&client, "shop", &cfg, SHA, CommitState::Success, "x").await.unwrap_err());
    let (_u, url_file) = file(&format!("{}/services/T0/B0/XXXXSECRET?token={TOKEN}", server.url));
    let slack = NotifyConfig { kind: NotifyType::Slack, url_file, secret_file: None, events: vec![] };
    errors.push(deliver_notification(&client, &slack, &notification(NotifyEvent::Synced, "ok")).await.unwrap_err());
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cfg = status_cfg(Provider::Gitea, &format!("{dead}/api/v1?access_token={TOKEN}"), "acme/shop", &token);
    errors.push(deliver_status(&client, "shop", &cfg, SHA, CommitState::Success, "x").await.unwrap_err());
    // a token with a line break cannot become a header; its value is not shown either
    let (_t, broken) = file(&format!("{TOKEN}\nX-Injected: 1"));
    let cfg = status_cfg(Provider::GitHub, &server.url, "acme/shop", &broken);
    errors.push(deliver_status(&client, "shop", &cfg, SHA, CommitState::Success, "x").await.unwrap_err());

    assert!(matches!(&errors[0], DeliveryError::Http(HttpError::Status { code, .. }) if *code == StatusCode::NOT_FOUND), "{}", errors[0]);
    assert_eq!(errors[1].to_string(), format!("{}: answered 404 Not Found", server.url));
    assert!(matches!(&errors[2], DeliveryError::Http(HttpError::Connect { .. })), "{}", errors[2]);
    assert!(matches!(&errors[3], DeliveryError::Http(HttpError::InvalidHeader { .. })), "{}", errors[3]);
    for e in &errors {
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(TOKEN) && !shown.contains("XXXXSECRET") && !shown.contains("/services/"), "{shown}");
        }
    }

    // the same failures through the outbox: counted, and the metrics name no secret either
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), Settings { retry_delays: vec![], ..fast() });
    outbox.notify("shop", &[slack], notification(NotifyEvent::Synced, "ok"));
    outbox.post_status("shop", &cfg, SHA, CommitState::Success, "x".into());
    outbox.flush().await;
    assert_eq!(count(&metrics, "notification_failures", "shop", "slack"), 1);
    assert_eq!(count(&metrics, "notification_failures", "shop", "github"), 1);
    let text = metrics.encode();
    assert!(!text.contains(TOKEN) && !text.contains("XXXX") && !text.contains("127.0.0.1"), "{text}");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let server = Server::start(&[], true).await;
    let (_dir, token) = file(TOKEN);
    let metrics = Arc::new(Metrics::new());
    let outbox = Outbox::with_settings(metrics.clone(), Settings { queue: 2, ..fast() });
    let cfg = status_cfg(Provider::GitHub, &server.url, "acme/shop", &token);
    let started = Instant::now();
    // nothing awaits in between: the task has taken none of them yet (current-thread runtime)
    for i in 0..5 {
        outbox.post_status("shop", &cfg, SHA, if i % 2 == 0 { CommitState::Pending } else { CommitState::Success }, "x".into());
    }
    assert!(started.elapsed() < Duration::from_secs(1), "enqueueing never waits: {:?}", started.elapsed());
    assert_eq!(count(&metrics, "notification_failures", "shop", "github"), 3, "two queued, three dropped");
}

#[tokio::test]
async fn a_disabled_outbox_sends_and_counts_nothing() {
    let server = Server::start(&[], false).await;
    let (_dir, token) = file(TOKEN);
    let outbox = Outbox::disabled();
    outbox.post_status("shop", &status_cfg(Provider::GitHub, &server.url, "acme/shop", &token), SHA, CommitState::Success, "x".into());
    outbox.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(server.seen().is_empty());
}

#[test]
fn providers_lists_each_configured_target_once() {
    let (_dir, path) = file("x");
    let cfg = status_cfg(Provider::Gitea, "https://g", "o/r", &path);
    let target = |kind| NotifyConfig { kind, url_file: path.clone(), secret_file: None, events: vec![] };
    let targets = [target(NotifyType::Slack), target(NotifyType::Webhook), target(NotifyType::Slack)];
    assert_eq!(providers(Some(&cfg), &targets), ["gitea", "slack", "webhook"]);
    assert!(providers(None, &[]).is_empty());
}
