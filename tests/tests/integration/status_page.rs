//! The status page of `driftless run` against the local control plane: the overview and a
//! source's page list what `/status` says, escape what a manifest or the API server says (a
//! `<script>` in a label value and an object name), and show no Secret value; and headless
//! Chromium renders the page and sees a new commit arrive on it without a reload.
//!
//! Each test has its own namespaces, source, repository and agent process.

use std::time::Duration;

use driftless_tests::agent::{eventually_ok as eventually, AgentProcess};
use driftless_tests::browser::Browser;
use driftless_tests::{client, unique_name, GitFixture, TestNamespace};
use serde_json::{json, Value};

const HOSTILE: &str = "<script>document.title='pwned'</script>";

/// A repository of a ConfigMap, a Secret and a Deployment, and an agent polling it every second.
struct PageScenario {
    _inv: TestNamespace,
    ns: TestNamespace,
    repo: GitFixture,
    source: String,
    secret_value: String,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl PageScenario {
    async fn start(prefix: &str) -> Self {
        let client = client().await;
        let inv = TestNamespace::new(&client, &format!("{prefix}-inv")).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let repo = GitFixture::new();
        let secret_value = unique_name("s3cr3t-value");
        repo.write("settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  annotations:\n    note: \"<b>bold</b>\"\ndata:\n  mode: fast\n")
            .write("creds.yaml", format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-credentials\nstringData:\n  password: {secret_value}\n"))
            .write("web.yaml", DEPLOYMENT);
        repo.commit("settings, credentials and web");
        let source = unique_name(prefix);
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("config.yaml");
        let sources = json!({"sources": [{"name": source, "repo": repo.url(), "namespace": ns.name(), "interval": "1s"}]});
        std::fs::write(&config, serde_json::to_string(&sources).unwrap()).unwrap();
        let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;
        PageScenario { _inv: inv, ns, repo, source, secret_value, agent, _dir: dir }
    }

    async fn status(&self) -> Value {
        let r = self.agent.get(&format!("/status/{}", self.source)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    async fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        eventually(&self.agent, what, Duration::from_secs(40), || async {
            let s = self.status().await;
            if f(&s) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
        .await
    }

    async fn page(&self, path: &str) -> String {
        let r = self.agent.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.header("content-security-policy").is_some_and(|p| p.contains("script-src 'self'")), "{:?}", r.headers);
        r.body
    }
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    driftless.dev/wave: \"1\"\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27\n";

/// What no page may contain: the Secret's value, raw or base64.
fn assert_no_secret(page: &str, value: &str) {
    use base64::Engine;
    assert!(!page.contains(value), "the Secret's value is on the page");
    assert!(!page.contains(&base64::engine::general_purpose::STANDARD.encode(value)), "the Secret's value (base64) is on the page");
}

#[tokio::test]
async fn the_pages_list_what_status_says_escape_hostile_text_and_show_no_secret() {
    let s = PageScenario::start("page-http").await;
    let status = s.wait("the first revision Synced", |st| st["state"] == "Synced" && st["lastAppliedCommit"].is_string()).await;
    let commit = status["lastAppliedCommit"].as_str().unwrap().to_string();

    // the overview: the source, its short commit, state and health, as /status says
    let overview = s.page("/").await;
    assert!(overview.contains(&format!("<tr data-source=\"{}\">", s.source)), "{overview}");
    assert!(overview.contains(&format!("<code title=\"{commit}\">{}</code>", &commit[..12])), "{overview}");
    assert!(overview.contains(&format!("badge state-{0}\">{0}<", status["state"].as_str().unwrap())));
    assert!(overview.contains(&format!("badge health-{0}\">{0}<", status["health"].as_str().unwrap())));
    assert!(overview.contains(&format!("<a href=\"/sources/{0}\">{0}</a>", s.source)));
    assert_no_secret(&overview, &s.secret_value);

    // the source's page: every object /status lists, by wave (the Deployment is in wave 1)
    let page = s.page(&format!("/sources/{}", s.source)).await;
    for o in status["objects"].as_array().unwrap() {
        let name = format!("{}/{}", o["namespace"].as_str().unwrap(), o["name"].as_str().unwrap());
        assert!(page.contains(&format!("<td>{name}</td>")), "{name} missing from {page}");
    }
    assert_eq!(status["objects"].as_array().unwrap().len(), 3, "{status}");
    let (wave0, wave1) = (page.find("<h3>Wave 0</h3>").unwrap(), page.find("<h3>Wave 1</h3>").unwrap());
    let web = page.find(&format!("<td>{}/web</td>", s.ns.name())).unwrap();
    assert!(wave0 < wave1 && wave1 < web, "{page}");
    assert!(page.contains("Secret") && page.contains("db-credentials"));
    assert!(!page.contains("<b>bold</b>"), "an annotation's markup is not on the page as markup");
    assert_no_secret(&page, &s.secret_value);
    // the Synced Event of the parent
    let events = eventually(&s.agent, "the Synced Event on the page", Duration::from_secs(30), || async {
        let page = s.page(&format!("/sources/{}", s.source)).await;
        if page.contains("<td>Synced</td>") {
            Ok(page)
        } else {
            Err(page)
        }
    })
    .await;
    assert!(events.contains(&format!("revision {}", &commit[..12])), "{events}");

    // a revision the API server refuses: a label value and an object name that are markup
    let bad_label = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: labelled\n  labels:\n    evil: \"{HOSTILE}\"\n");
    let bad_name = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{HOSTILE}\"\n");
    s.repo.write("zz-label.yaml", bad_label).write("zz-name.yaml", bad_name);
    let broken = s.repo.commit("hostile label value and name");
    let failed = s.wait("the hostile revision Failed", |st| st["state"] == "Failed" && st["lastFetchedCommit"] == broken.as_str()).await;
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains("<script>"), "the server's message quotes the hostile text: {message}");
    let escaped = "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;";
    for path in ["/".to_string(), format!("/sources/{}", s.source)] {
        let page = eventually(&s.agent, "the failure on the page", Duration::from_secs(20), || async {
            let page = s.page(&path).await;
            if page.contains("badge state-Failed") && page.contains(escaped) {
                Ok(page)
            } else {
                Err(page)
            }
        })
        .await;
        assert!(!page.contains("<script>document"), "{path}: unescaped markup: {page}");
        assert_eq!(page.matches("<script").count(), 1, "{path}: only the page's own script: {page}");
        assert_no_secret(&page, &s.secret_value);
    }
    let page = s.page(&format!("/sources/{}", s.source)).await;
    assert!(page.contains("<h2>Last error</h2>"), "{page}");
}

/// Where the browser test leaves its screenshot (under the target directory, for a look after a
/// failed run).
fn screenshot_path() -> std::path::PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| driftless_tests::repo_root().join("target"));
    target.join("test-screenshots").join("status-page.png")
}

#[tokio::test]
async fn a_browser_shows_the_sources_and_a_new_commit_without_a_reload() {
    let s = PageScenario::start("page-browser").await;
    let status = s.wait("the first revision Synced", |st| st["state"] == "Synced" && st["lastAppliedCommit"].is_string()).await;
    let first = status["lastAppliedCommit"].as_str().unwrap().to_string();
    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/", s.agent.url())).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "Sources · Driftless");

    // the rendered DOM: the source, its commit and its state
    let row = format!("tr[data-source=\"{}\"]", s.source);
    let text = |css: String| {
        let browser = &browser;
        async move {
            let e = browser.find(&css).await.unwrap().unwrap_or_else(|| panic!("no element {css}"));
            browser.text(&e).await.unwrap()
        }
    };
    assert_eq!(text(format!("{row} td.source a")).await, s.source);
    assert_eq!(text(format!("{row} td.commit")).await, first[..12]);
    assert_eq!(text(format!("{row} td.state .badge")).await, "Synced");
    assert_eq!(text(format!("{row} td.health .badge")).await, "Healthy");
    let png = browser.screenshot().await.unwrap();
    assert!(driftless_tests::browser::png_size(&png).is_some_and(|(w, h)| w >= 800 && h >= 400), "a PNG of the page");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();

    // a new commit shows up on the page, the page never reloaded
    browser.execute("window.__driftlessMarker = 'still the same page'; return null", vec![]).await.unwrap();
    let stamp = text("#updated time".into()).await;
    s.repo.write("settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: careful\n");
    let second = s.repo.commit("settings: careful mode");
    let shown = browser.wait_text(&format!("{row} td.commit"), Duration::from_secs(40), |t| t == &second[..12]).await;
    assert!(shown.is_ok(), "{shown:?}\nagent log:\n{}", driftless_tests::agent::tail(&s.agent.stderr(), 30));
    let marker = browser.execute("return window.__driftlessMarker || null", vec![]).await.unwrap();
    assert_eq!(marker, json!("still the same page"), "the page was reloaded");
    assert_ne!(text("#updated time".into()).await, stamp, "the last-updated time moves on");
    assert_eq!(text(format!("{row} td.state .badge")).await, "Synced");
    // the whole content was swapped in, not part of it
    assert_eq!(browser.find_all(&format!("{row} td")).await.unwrap().len(), 8, "every cell of the row");
    assert_eq!(browser.find_all("main#content table#sources").await.unwrap().len(), 1);

    // the source's page, reached by its link: the objects by wave
    let link = browser.find(&format!("{row} td.source a")).await.unwrap().unwrap();
    assert_eq!(browser.attribute(&link, "href").await.unwrap().as_deref(), Some(&*format!("/sources/{}", s.source)));
    browser.goto(&format!("{}/sources/{}", s.agent.url(), s.source)).await.unwrap();
    assert_eq!(text("h1 .badge".into()).await, "Synced");
    let objects = browser.find_all("tr.object").await.unwrap();
    assert_eq!(objects.len(), 3, "ConfigMap, Secret and Deployment");
    let waves = browser.find_all("h3").await.unwrap();
    assert_eq!(waves.len(), 2, "waves 0 and 1");
    // the health filter keeps only the matching objects
    browser.goto(&format!("{}/sources/{}?health=Degraded", s.agent.url(), s.source)).await.unwrap();
    assert_eq!(browser.find_all("tr.object").await.unwrap().len(), 0);
    assert_eq!(text(".objects .empty".into()).await, "No object has this health.");

    // on a phone's width the page does not scroll sideways (tables scroll in their own box)
    browser.set_window_size(390, 844).await.unwrap();
    for path in ["/".to_string(), format!("/sources/{}", s.source)] {
        browser.goto(&format!("{}{path}", s.agent.url())).await.unwrap();
        let overflow = browser.execute("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await.unwrap();
        assert!(overflow.as_i64().is_some_and(|o| o <= 0), "{path} is {overflow} px wider than a phone's screen");
    }
}
