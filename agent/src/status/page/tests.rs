//! The page against statuses as the loops write them, and through the router as a browser asks
//! for it.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::config::Source;
use crate::manifest::ObjectRef;
use crate::report::Reason;
use crate::status::metrics::Metrics;
use crate::status::Shared;

const SHA: &str = "4f2a9c01d3b5e7f90123456789abcdef01234567";
const HOSTILE: &str = "<script>alert('pwned')</script>";

fn status(name: &str, repo: &str) -> SourceStatus {
    let yaml = format!("sources:\n  - name: {name}\n    repo: {repo}\n    ref: main\n");
    let source: Source = crate::config::parse(&yaml).unwrap().remove(0);
    SourceStatus::new(&source)
}

fn object(kind: &str, name: &str, wave: i64, health: Health, message: &str) -> ObjectStatus {
    let group = if kind == "Deployment" { "apps" } else { "" };
    ObjectStatus { id: ObjectRef::new(group, kind, "shop", name), action: Action::Configured, health, message: message.into(), wave }
}

/// A source that synced two waves of objects, and one that failed on a hostile manifest.
fn sources() -> Vec<SourceStatus> {
    let mut shop = status("shop", "https://deploy:hunter2@github.com/acme/shop.git");
    shop.state = SyncState::Synced;
    shop.health = Health::Healthy;
    shop.last_applied_commit = Some(SHA.into());
    shop.last_sync_time = Some(SystemTime::now() - Duration::from_secs(42));
    shop.last_sync_duration_seconds = Some(1.25);
    shop.commit_to_healthy_seconds = Some(7.5);
    shop.counts.insert(Action::Configured, 3);
    shop.drift_corrections = 2;
    shop.objects = vec![
        object("Deployment", "web", 1, Health::Healthy, ""),
        object("Secret", "db-credentials", 0, Health::Healthy, ""),
        object("ConfigMap", "settings", 0, Health::Healthy, ""),
        object("Deployment", "worker", 1, Health::Progressing, "1/2 replicas available"),
    ];
    let mut bad = status("bad", "file:///srv/git/bad.git");
    bad.state = SyncState::Failed;
    bad.reason = Some(Reason::ValidationFailed);
    bad.message = format!("app.yaml:4: ConfigMap shop/x: metadata.labels: Invalid value: \"{HOSTILE}\"\nsecond line");
    bad.objects = vec![object("ConfigMap", HOSTILE, 0, Health::Degraded, HOSTILE)];
    vec![bad, shop]
}

#[test]
fn the_overview_lists_every_source_as_the_status_says() {
    let page = overview(&sources(), Role::Leading, SystemTime::now());
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("<tr data-source=\"shop\">") && page.contains("<tr data-source=\"bad\">"), "{page}");
    // the commit, short, linked to the forge; the repository without its credentials
    assert!(
        page.contains(&format!("<a href=\"https://github.com/acme/shop/commit/{SHA}\" title=\"{SHA}\"><code>4f2a9c01d3b5</code></a>")),
        "{page}"
    );
    assert!(page.contains("https://github.com/acme/shop.git @ main") && !page.contains("hunter2"), "{page}");
    assert!(page.contains("<span class=\"badge state-Synced\">Synced</span>"));
    assert!(page.contains("<span class=\"badge state-Failed\">Failed</span> <span class=\"reason\">ValidationFailed</span>"));
    assert!(page.contains("42s ago</time>, took 1.2s") || page.contains("43s ago</time>, took 1.2s"), "{page}");
    assert!(page.contains("7.5s") && page.contains("3 configured") && page.contains("2 corrected"));
    assert!(page.contains("2 sources: 1 Failed, 1 Synced"));
    // the overview has the message's first line only
    assert!(!page.contains("second line"));
    assert!(!page.contains("id=\"standby\""));
}

#[test]
fn hostile_names_and_messages_are_escaped() {
    let all = sources();
    let events: Recent = Ok(Arc::new(vec![recent::RecentEvent {
        time: Some(SystemTime::now()),
        warning: true,
        reason: "SyncFailed".into(),
        note: format!("revision abc: {HOSTILE}"),
        count: 3,
    }]));
    for page in [overview(&all, Role::Leading, SystemTime::now()), source(&all[0], None, &events, Role::Leading, SystemTime::now())] {
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"), "{page}");
        // the only script is the page's own
        assert_eq!(page.matches("<script").count(), 1, "{page}");
    }
    assert!(not_found(HOSTILE, SystemTime::now()).contains("No source named &lt;script&gt;"));
}

#[test]
fn a_source_page_groups_objects_by_wave_and_kind_and_filters_by_health() {
    let all = sources();
    let shop = &all[1];
    let page = source(shop, None, &Ok(Arc::default()), Role::Leading, SystemTime::now());
    let at = |needle: &str| page.find(needle).unwrap_or_else(|| panic!("{needle} missing from {page}"));
    // wave 0 (ConfigMap, then Secret), then wave 1 (Deployments)
    assert!(at("<h3>Wave 0</h3>") < at(">ConfigMap<") && at(">ConfigMap<") < at(">Secret<") && at(">Secret<") < at("<h3>Wave 1</h3>"));
    assert!(at("<h3>Wave 1</h3>") < at(">Deployment.apps<") && at("shop/web") < at("shop/worker"));
    assert!(page.contains("1/2 replicas available"));
    assert!(page.contains("No Events on the source"));
    assert!(page.contains("<a href=\"/sources/shop?health=Progressing\">Progressing (1)</a>"), "{page}");
    let progressing = source(shop, Some(Health::Progressing), &Ok(Arc::default()), Role::Leading, SystemTime::now());
    assert!(progressing.contains("shop/worker") && !progressing.contains("shop/web<"), "{progressing}");
    assert!(progressing.contains("aria-current=\"page\">Progressing (1)"));
    let degraded = source(shop, Some(Health::Degraded), &Ok(Arc::default()), Role::Leading, SystemTime::now());
    assert!(degraded.contains("No object has this health."));
    // the last error in full
    let bad = source(&all[0], None, &Err("cannot read Events: forbidden".into()), Role::Leading, SystemTime::now());
    assert!(bad.contains("<h2>Last error</h2><pre id=\"message\">app.yaml:4: ConfigMap shop/x") && bad.contains("second line</pre>"));
    assert!(bad.contains("cannot read Events: forbidden"));
}

#[test]
fn a_standby_replica_says_so() {
    assert!(overview(&sources(), Role::Standby, SystemTime::now()).contains("id=\"standby\""));
    assert!(overview(&[], Role::Standby, SystemTime::now()).contains("Standby: this replica waits for the lease"));
}

#[test]
fn health_filters_read_from_the_query() {
    assert_eq!(health_filter(Some("health=Degraded")), Some(Health::Degraded));
    assert_eq!(health_filter(Some("x=1&health=progressing")), Some(Health::Progressing));
    assert_eq!(health_filter(Some("health=%3Cscript%3E")), None);
    assert_eq!(health_filter(None), None);
}

#[test]
fn the_page_and_its_assets_are_small() {
    let page = overview(&sources(), Role::Leading, SystemTime::now());
    let total = page.len() + assets::STYLE.len() + assets::SCRIPT.len();
    assert!(total < 100 * 1024, "{total} bytes");
    // self-contained: nothing from another origin
    for text in [page.as_str(), assets::STYLE, assets::SCRIPT] {
        assert!(!text.contains("//fonts.") && !text.contains("cdn") && !text.contains("@import"), "{text}");
    }
}

fn shared(statuses: Vec<SourceStatus>, leader_elect: bool) -> Arc<Shared> {
    let shared = Shared {
        statuses: Default::default(),
        metrics: Arc::new(Metrics::new()),
        triggers: Default::default(),
        webhook_secrets: Default::default(),
        rate_limits: Default::default(),
        refusal_limits: Default::default(),
        running: Arc::new(AtomicUsize::new(0)),
        expected_loops: AtomicUsize::new(0),
        leader_elect,
        agent_namespace: "driftless".into(),
        recent_events: None,
    };
    shared.statuses.write().unwrap().extend(statuses.into_iter().map(|s| (s.name.clone(), s)));
    Arc::new(shared)
}

async fn get(shared: &Arc<Shared>, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let router = crate::status::http::router(shared.clone());
    let response = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn the_router_serves_the_pages_under_a_strict_policy() {
    let shared = shared(sources(), false);
    let (code, headers, body) = get(&shared, "/").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], assets::CSP);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    // what /status says is what the page lists
    let (_, _, json) = get(&shared, "/status").await;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    for s in &listed {
        assert!(body.contains(&format!("<tr data-source=\"{}\">", s["name"].as_str().unwrap())), "{body}");
        assert!(body.contains(&format!("badge state-{0}\">{0}<", s["state"].as_str().unwrap())), "{body}");
    }
    let (code, _, shop) = get(&shared, "/sources/shop?health=Healthy").await;
    assert_eq!(code, StatusCode::OK);
    assert!(shop.contains("shop/web") && !shop.contains("shop/worker<"), "{shop}");
    assert!(shop.contains("Events are not read here"));
    let (code, _, missing) = get(&shared, "/sources/%3Cscript%3E").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(missing.contains("No source named &lt;script&gt;"), "{missing}");
    let (code, headers, css) = get(&shared, "/ui/style.css").await;
    assert_eq!((code, &headers["content-type"]), (StatusCode::OK, &"text/css; charset=utf-8".parse::<axum::http::HeaderValue>().unwrap()));
    assert_eq!(css, assets::STYLE);
    let (_, _, js) = get(&shared, "/ui/app.js").await;
    assert_eq!(js, assets::SCRIPT);
}

#[tokio::test]
async fn the_page_shows_standby_while_another_replica_leads() {
    let elected = shared(sources(), true);
    assert!(get(&elected, "/").await.2.contains("id=\"standby\""));
    elected.metrics.leader.set(1);
    assert!(!get(&elected, "/").await.2.contains("id=\"standby\""));
    let single = shared(sources(), false);
    assert!(!get(&single, "/").await.2.contains("id=\"standby\""));
}
