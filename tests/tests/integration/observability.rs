//! Observability of `driftless run`, against the local control plane with the agent running as
//! a child process: the HTTP endpoints (health, readiness, status API, push webhooks with their
//! proofs, size limit and rate), a signed push applied within 2 s while polling hourly, every
//! Prometheus metric after a sync, drift corrections, a fight, a prune, a failed and a held sync
//! (and the exposition through a real Prometheus parser), Events and status annotations on the
//! ApplySet parent, `driftless status` from the agent and from the cluster, that no git token or
//! Secret value leaks anywhere users read, and the Grafana dashboard built on these metrics.
//!
//! Every test has its own namespaces (inventory and target), source names, loopback ports, git
//! repositories and agent process (killed on drop), so they run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use driftless_tests::agent::{
    configmap, configmap_value, dynamic_api, eventually_ok as eventually, intrude_configmap, run_status, source_status, tail, wait_status,
    AgentProcess, HttpResponse,
};
use driftless_tests::dashboard::{all_panels, dashboard_queries, load_dashboard};
use driftless_tests::git_http::GitHttpServer;
use driftless_tests::{client, cluster_bin, kubeconfig_path, unique_name, GitFixture, TestNamespace};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// The first 12 characters of a commit, as Events, the CLI and logs print it.
fn short(commit: &str) -> &str {
    &commit[..12]
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The hex HMAC-SHA256 of `body` under `secret`, computed independently of the agent.
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Files of a test (config, token, webhook secret), removed on drop.
struct Files(TempDir);

impl Files {
    fn new() -> Self {
        Files(TempDir::new().unwrap())
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// The agent's config file (JSON is YAML) listing `sources`.
    fn config(&self, sources: Vec<Value>) -> String {
        let path = self.write("driftless.yaml", &serde_json::to_string_pretty(&json!({ "sources": sources })).unwrap());
        path.to_str().unwrap().to_string()
    }
}

/// Which header proves a webhook.
#[derive(Clone, Copy, Debug)]
enum Forge {
    GitHub,
    Gitea,
    GitLab,
    Generic,
}

/// A push payload as a forge would send it.
fn push_body(commit: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"ref": "refs/heads/main", "after": commit, "repository": {"name": "deploy"}})).unwrap()
}

/// POST /hooks/{source} proved the way `forge` proves it.
async fn post_hook(agent: &AgentProcess, source: &str, secret: &str, forge: Forge, body: &[u8]) -> HttpResponse {
    let hex = hmac_hex(secret, body);
    let prefixed = format!("sha256={hex}");
    let (header, value) = match forge {
        Forge::GitHub => ("X-Hub-Signature-256", prefixed.as_str()),
        Forge::Gitea => ("X-Gitea-Signature", hex.as_str()),
        Forge::GitLab => ("X-Gitlab-Token", secret),
        Forge::Generic => ("X-Signature-256", prefixed.as_str()),
    };
    let event = match forge {
        Forge::GitHub => ("X-GitHub-Event", "push"),
        Forge::Gitea => ("X-Gitea-Event", "push"),
        Forge::GitLab => ("X-Gitlab-Event", "Push Hook"),
        Forge::Generic => ("X-Event", "push"),
    };
    agent.request("POST", &format!("/hooks/{source}"), &[(header, value), event, ("Content-Type", "application/json")], body).await
}

async fn wait_ready(agent: &AgentProcess) {
    eventually(agent, "/readyz 200", Duration::from_secs(60), || async {
        let r = agent.get("/readyz").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await
}

// ----- metrics -------------------------------------------------------------------------------

/// One sample of the exposition.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scraped exposition.
#[derive(Clone, Debug)]
struct Metrics {
    text: String,
    samples: Vec<Sample>,
    /// Family name -> type, from the `# TYPE` lines.
    types: BTreeMap<String, String>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                types.insert(parts.next().unwrap().to_string(), parts.next().unwrap_or_default().to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                samples.push(parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line {line:?}")));
            }
        }
        Metrics { text: text.to_string(), samples, types }
    }

    /// Samples named `name` carrying every label of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The value of the one sample matching, if any (panics if several match).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(found.len() <= 1, "several samples of {name} match {labels:?}: {found:?}");
        found.first().map(|s| s.value)
    }

    /// The value, which must exist.
    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
    }

    /// The series names a Prometheus server stores from this exposition: a counter family `x`
    /// gives `x_total`, a histogram `x_bucket`, `x_sum`, `x_count`, a gauge `x`; plus every
    /// sample name seen.
    fn series_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.samples.iter().map(|s| s.name.clone()).collect();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "counter" => {
                    names.insert(format!("{}_total", family.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                "info" => {
                    names.insert(format!("{family}_info"));
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }

    /// Checks a histogram's series for one source: buckets cumulative, `+Inf` equal to the
    /// count, a non-negative sum. Returns the count.
    fn check_histogram(&self, family: &str, source: &str) -> f64 {
        let count = self.must(&format!("{family}_count"), &[("source", source)]);
        let sum = self.must(&format!("{family}_sum"), &[("source", source)]);
        assert!(sum >= 0.0 && sum.is_finite(), "{family}_sum {sum}");
        let mut buckets: Vec<(f64, f64)> = self
            .find(&format!("{family}_bucket"), &[("source", source)])
            .iter()
            .map(|s| {
                let le = &s.labels["le"];
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(buckets.len() >= 2, "{family}: buckets {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{{source={source}}}: buckets not cumulative: {buckets:?}");
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite() && inf.1 == count, "{family}: +Inf bucket {inf:?} is not the count {count}");
        if count > 0.0 {
            assert!(sum > 0.0, "{family}: {count} observations summing to 0");
        }
        count
    }
}

/// `name{k="v",...} value [timestamp|exemplar]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = r[..eq].trim().to_string();
            r = r[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key, value);
            r = &r[end + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

async fn scrape(agent: &AgentProcess) -> Metrics {
    let r = agent.get("/metrics").await;
    assert_eq!(r.status, 200, "/metrics: {}", r.body);
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(content_type.contains("openmetrics-text") || content_type.contains("text/plain"), "content-type {content_type}");
    Metrics::parse(&r.body)
}

async fn wait_metrics(agent: &AgentProcess, what: &str, f: impl Fn(&Metrics) -> Result<(), String>) -> Metrics {
    eventually(agent, what, Duration::from_secs(20), || async {
        let m = scrape(agent).await;
        f(&m).map(|()| m)
    })
    .await
}

/// The exposition through the reference Python parser (Debian's python3-prometheus-client, so
/// /usr/bin/python3, not whatever `python3` is on PATH): the families with their type and
/// samples, or the parser's error.
fn prometheus_client_parse(text: &str) -> Result<Vec<Value>, String> {
    const SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    samples = [{"name": s.name, "labels": dict(s.labels),
                "value": s.value if math.isfinite(s.value) else str(s.value)} for s in f.samples]
    families.append({"name": f.name, "type": f.type, "unit": f.unit, "samples": samples})
print(json.dumps(families))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs (Debian package python3-prometheus-client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("the script prints JSON"))
}

/// Label names a Driftless metric may carry (bounded; `le` for histogram buckets).
const ALLOWED_LABELS: [&str; 10] = ["source", "kind", "action", "result", "health", "reason", "state", "revision", "version", "le"];

/// Parses the exposition with the reference parser; checks it lists `families` (name, type)
/// and that every label name is an allowed one. Returns the parsed families.
fn check_with_reference_parser(m: &Metrics, families: &[(&str, &str)]) -> Vec<Value> {
    let parsed = prometheus_client_parse(&m.text)
        .unwrap_or_else(|e| panic!("the Prometheus OpenMetrics parser refuses the exposition: {e}\n{}", m.text));
    let found: BTreeMap<&str, &str> = parsed.iter().map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap())).collect();
    for (name, kind) in families {
        assert_eq!(found.get(name), Some(kind), "family {name} ({kind}) missing or mistyped; the parser found {found:?}");
    }
    for f in &parsed {
        for s in f["samples"].as_array().unwrap() {
            for label in s["labels"].as_object().unwrap().keys() {
                assert!(ALLOWED_LABELS.contains(&label.as_str()), "{} has label {label:?}, not one of {ALLOWED_LABELS:?}", s["name"]);
            }
        }
    }
    // the Rust-side reading agrees with the reference parser on every sample
    let reference_samples: usize = parsed.iter().map(|f| f["samples"].as_array().unwrap().len()).sum();
    assert_eq!(reference_samples, m.samples.len(), "the two parsers disagree on the sample count");
    parsed
}

// ----- cluster -------------------------------------------------------------------------------

/// The ApplySet parent of `source` in the inventory namespace.
async fn parent(client: &kube::Client, inventory: &str, source: &str) -> Option<Value> {
    let api = dynamic_api(client, "v1", "ConfigMap", "configmaps", inventory);
    driftless_tests::agent::get(&api, &format!("driftless-{source}")).await
}

fn annotations(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["annotations"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// One Event.
#[derive(Clone, Debug)]
struct Ev {
    type_: String,
    reason: String,
    note: String,
}

/// Events (events.k8s.io/v1) about the ApplySet parent of `source`.
async fn parent_events(client: &kube::Client, inventory: &str, source: &str) -> Vec<Ev> {
    let parent = format!("driftless-{source}");
    let api = dynamic_api(client, "events.k8s.io/v1", "Event", "events", inventory);
    let list = api.list(&ListParams::default()).await.expect("list events");
    let mut events: Vec<(String, Ev)> = list
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .filter(|e| e["regarding"]["kind"] == "ConfigMap" && e["regarding"]["name"] == parent.as_str())
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&e["eventTime"]), Ev { type_: s(&e["type"]), reason: s(&e["reason"]), note: s(&e["note"]) })
        })
        .collect();
    events.sort_by(|a, b| a.0.cmp(&b.0));
    events.into_iter().map(|(_, e)| e).collect()
}

/// Waits for an Event of `reason` on the parent whose note satisfies `f`.
async fn wait_event(agent: &AgentProcess, client: &kube::Client, source: &str, reason: &str, f: impl Fn(&Ev) -> bool) -> Ev {
    eventually(agent, &format!("a {reason} Event on driftless-{source}"), Duration::from_secs(20), || async {
        let events = parent_events(client, &agent.inventory_namespace, source).await;
        events.iter().find(|e| e.reason == reason && f(e)).cloned().ok_or_else(|| format!("{events:#?}"))
    })
    .await
}

/// Every Event of a namespace, both APIs, as JSON text (for the leak search).
async fn all_events_text(client: &kube::Client, namespace: &str) -> String {
    let mut out = String::new();
    for (api_version, plural) in [("events.k8s.io/v1", "events"), ("v1", "events")] {
        let api = dynamic_api(client, api_version, "Event", plural, namespace);
        for o in api.list(&ListParams::default()).await.expect("list events").items {
            out.push_str(&serde_json::to_string(&o).unwrap());
            out.push('\n');
        }
    }
    out
}

/// `kubectl describe configmap driftless-<source>` in the inventory namespace.
fn kubectl_describe_parent(inventory: &str, source: &str) -> String {
    let out = Command::new(cluster_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(["describe", "configmap", &format!("driftless-{source}"), "-n", inventory])
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl describe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// a scenario shared by the metrics, events and dashboard tests
// ---------------------------------------------------------------------------------------------

/// An agent with two sources: `good` (a file:// repository of ConfigMaps `a`, `b`, `c`, polled
/// hourly, pushed by signed webhooks) and `broken` (a repository that does not exist, polled
/// every 2 s). Steps: drift, a pruning commit, an unparsable commit, a commit whose prune is held.
struct Scenario {
    client: kube::Client,
    inv: TestNamespace,
    ns: TestNamespace,
    repo: GitFixture,
    good: String,
    broken: String,
    hook_secret: String,
    agent: AgentProcess,
    commits: Vec<String>,
    started: f64,
    _files: Files,
}

impl Scenario {
    async fn start(prefix: &str) -> Self {
        let started = now_secs();
        let client = client().await;
        let inv = TestNamespace::new(&client, &format!("{prefix}-inv")).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let repo = GitFixture::new();
        for name in ["a", "b", "c"] {
            repo.write(format!("{name}.yaml"), configmap(name, "v1"));
        }
        let first = repo.commit("a, b and c");
        let files = Files::new();
        let hook_secret = unique_name("hook-secret");
        let secret_file = files.write("webhook-secret", &format!("{hook_secret}\n"));
        let good = unique_name(&format!("{prefix}-good"));
        let broken = unique_name(&format!("{prefix}-broken"));
        let config = files.config(vec![
            json!({"name": good, "repo": repo.url(), "namespace": ns.name(), "interval": "1h", "webhookSecretFile": secret_file}),
            json!({"name": broken, "repo": format!("file://{}", files.path("no-such-repo").display()), "namespace": ns.name(), "interval": "2s"}),
        ]);
        let agent = AgentProcess::start(inv.name(), &["--config", &config]).await;
        wait_ready(&agent).await;
        let s = Scenario { client, inv, ns, repo, good, broken, hook_secret, agent, commits: vec![first], started, _files: files };
        s.wait_good("the first revision Synced", |st| st["state"] == "Synced" && st["lastAppliedCommit"] == s.commits[0].as_str()).await;
        s
    }

    fn head(&self) -> &str {
        self.commits.last().unwrap()
    }

    async fn wait_good(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        wait_status(&self.agent, &self.good, what, Duration::from_secs(30), f).await
    }

    /// A signed GitHub push for `good`.
    async fn push(&self) {
        let r = post_hook(&self.agent, &self.good, &self.hook_secret, Forge::GitHub, &push_body(self.head())).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }

    /// Commits what `change` did and pushes the webhook.
    async fn commit(&mut self, message: &str, change: impl FnOnce(&GitFixture)) -> String {
        change(&self.repo);
        let c = self.repo.commit(message);
        self.commits.push(c.clone());
        self.push().await;
        c
    }

    /// Another writer changes ConfigMap `a`; waits until Driftless put it back.
    async fn drift(&self, round: usize) {
        intrude_configmap(&self.client, self.ns.name(), "a", &format!("intruder-{round}")).await;
        eventually(&self.agent, "the drift on a corrected", Duration::from_secs(20), || async {
            match configmap_value(&self.client, self.ns.name(), "a").await.as_deref() {
                Some("v1") => Ok(()),
                other => Err(format!("a is {other:?}")),
            }
        })
        .await;
    }

    /// c2: `b` changes, `c` leaves git (pruned).
    async fn commit_prune(&mut self) -> String {
        let c = self
            .commit("b v2, c removed", |r| {
                r.write("b.yaml", configmap("b", "v2")).remove("c.yaml");
            })
            .await;
        self.wait_good("the pruning revision Synced", |st| st["state"] == "Synced" && st["lastAppliedCommit"] == c.as_str()).await;
        eventually(&self.agent, "c pruned", Duration::from_secs(20), || async {
            match configmap_value(&self.client, self.ns.name(), "c").await {
                None => Ok(()),
                Some(v) => Err(format!("c is still there ({v})")),
            }
        })
        .await;
        c
    }

    /// c3: an unparsable file (RenderFailed).
    async fn commit_invalid(&mut self) -> String {
        let c = self
            .commit("broken YAML", |r| {
                r.write("zz-bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad\ndata: [unclosed\n");
            })
            .await;
        self.wait_good("the unparsable revision Failed", |st| {
            st["state"] == "Failed" && st["reason"] == "RenderFailed" && st["lastFetchedCommit"] == c.as_str()
        })
        .await;
        c
    }

    /// c4: the bad file fixed, `a` and `b` removed, `d` added: deleting the whole set is held.
    async fn commit_prune_held(&mut self) -> String {
        let c = self
            .commit("only d", |r| {
                r.remove("zz-bad.yaml").remove("a.yaml").remove("b.yaml").write("d.yaml", configmap("d", "v1"));
            })
            .await;
        self.wait_good("the revision PruneHeld", |st| st["state"] == "PruneHeld" && st["lastAppliedCommit"] == c.as_str()).await;
        c
    }

    async fn cleanup(self) {
        drop(self.agent);
        self.ns.cleanup().await;
        self.inv.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. the endpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_answer_as_specified() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-endpoints-inv").await;
    let ns = TestNamespace::new(&client, "obs-endpoints").await;
    let repo = GitFixture::new();
    repo.write("web/web-a.yaml", configmap("web-a", "1")).write("burst/burst-b.yaml", configmap("burst-b", "1"));
    let commit = repo.commit("web and burst");
    // the repository is reached with credentials in its URL; its first answer comes late, so the
    // first reconcile is still running when readiness is asked
    let url_token = unique_name("urltoken");
    let git = GitHttpServer::start(repo.path(), &url_token).await;
    git.delay_next(1, Duration::from_secs(4));
    let files = Files::new();
    let hook_secret = unique_name("hook-secret");
    let secret_file = files.write("webhook-secret", &format!("{hook_secret}\n"));
    let web = unique_name("obs-web");
    let burst = unique_name("obs-burst");
    let source = |name: &str, path: &str| {
        json!({"name": name, "repo": git.url_with_credentials("git"), "ref": "main", "path": path, "namespace": ns.name(),
               "interval": "1h", "webhookSecretFile": secret_file, "insecureHttp": true})
    };
    let config = files.config(vec![source(&web, "web"), source(&burst, "burst")]);
    let agent = AgentProcess::start(inv.name(), &["--config", &config]).await;

    // /readyz: 503 with a reason before the first reconcile; /healthz 200 meanwhile
    let not_ready = agent.get("/readyz").await;
    assert_eq!(not_ready.status, 503, "/readyz before the first reconcile: {}", not_ready.body);
    assert!(not_ready.body.contains("waiting for the first reconcile"), "no reason given: {:?}", not_ready.body);
    assert!(not_ready.body.contains(&web) || not_ready.body.contains(&burst), "the waiting source is named: {:?}", not_ready.body);
    let pending = agent.get("/status").await.json();
    assert!(
        pending.as_array().unwrap().iter().any(|s| s["state"] == "Pending" && s["ready"] == false),
        "a source is Pending while /readyz is 503: {pending:#}"
    );
    let health = agent.get("/healthz").await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    // then 200 once every source reconciled
    wait_ready(&agent).await;
    assert_eq!(agent.get("/readyz").await.body.trim(), "ready");
    assert_eq!(agent.get("/healthz").await.status, 200);

    // /status: every source; /status/{source}: one, with every field
    let all = agent.get("/status").await;
    assert_eq!(all.status, 200);
    assert!(all.header("content-type").unwrap_or_default().starts_with("application/json"));
    let names: BTreeSet<String> = all.json().as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, BTreeSet::from([web.clone(), burst.clone()]));
    let before = now_secs();
    let st = wait_status(&agent, &web, "web Synced and Healthy", Duration::from_secs(30), |s| {
        s["state"] == "Synced" && s["health"] == "Healthy"
    })
    .await;
    assert_eq!(st["name"], web.as_str());
    assert_eq!(st["repo"], git.url().as_str(), "the repo without its credentials");
    assert!(!st.to_string().contains(&url_token), "the URL's token is in /status: {st:#}");
    assert_eq!(st["ref"], "main");
    assert_eq!(st["path"], "web");
    assert_eq!(st["lastFetchedCommit"], commit.as_str());
    assert_eq!(st["lastAppliedCommit"], commit.as_str());
    assert_eq!(st["reason"], "");
    assert_eq!(st["message"], "");
    let synced_at = st["lastSyncTime"].as_f64().expect("lastSyncTime is Unix seconds");
    assert!(synced_at > before - 120.0 && synced_at <= now_secs() + 1.0, "lastSyncTime {synced_at}");
    let took = st["lastSyncDurationSeconds"].as_f64().expect("lastSyncDurationSeconds");
    assert!(took > 0.0 && took < 60.0, "lastSyncDurationSeconds {took}");
    assert_eq!(st["counts"], json!({"created": 1}));
    assert_eq!(
        st["objects"],
        json!([{"group": "", "kind": "ConfigMap", "namespace": ns.name(), "name": "web-a", "action": "created", "health": "Healthy", "wave": 0}])
    );
    assert_eq!(st["ready"], true);

    // 404 for an unknown source (status and hooks)
    let unknown = unique_name("no-such-source");
    assert_eq!(agent.get(&format!("/status/{unknown}")).await.status, 404);
    assert_eq!(post_hook(&agent, &unknown, &hook_secret, Forge::GitHub, b"{}").await.status, 404);

    // webhooks: 401 for a missing or a bad proof, and nothing is triggered
    let checks = |m: &Metrics| m.value("driftless_git_fetch_duration_seconds_count", &[("source", &web)]).unwrap_or(0.0);
    let checks_before = checks(&scrape(&agent).await);
    let requests_before = git.requests().len();
    let body = push_body(&commit);
    let path = format!("/hooks/{web}");
    let missing = agent.request("POST", &path, &[("Content-Type", "application/json")], &body).await;
    assert_eq!(missing.status, 401, "no proof: {}", missing.body);
    let wrong_hex = hmac_hex("not-the-secret", &body);
    for (header, value) in [
        ("X-Hub-Signature-256", format!("sha256={wrong_hex}")),
        ("X-Hub-Signature-256", hmac_hex(&hook_secret, &body)), // no sha256= prefix
        ("X-Gitea-Signature", wrong_hex.clone()),
        ("X-Gitlab-Token", "not-the-secret".to_string()),
        ("X-Signature-256", format!("sha256={wrong_hex}")),
        ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(&hook_secret, b"another body"))),
    ] {
        let r = agent.request("POST", &path, &[(header, &value)], &body).await;
        assert_eq!(r.status, 401, "{header}: {value}: {}", r.body);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(git.requests().len(), requests_before, "a refused webhook reached the remote: {:#?}", git.requests());
    assert_eq!(checks(&scrape(&agent).await), checks_before, "a refused webhook triggered a remote check");

    // 413 for a body over 1 MiB (even signed)
    let big = vec![b'x'; (1 << 20) + 1];
    let too_big = post_hook(&agent, &web, &hook_secret, Forge::GitHub, &big).await;
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    // exactly 1 MiB is accepted
    let max = vec![b' '; 1 << 20];
    assert_eq!(post_hook(&agent, &web, &hook_secret, Forge::Generic, &max).await.status, 202);

    // 202 for each forge's good proof (4 of the burst of 5 left), and the remote is checked
    for forge in [Forge::GitHub, Forge::Gitea, Forge::GitLab] {
        let r = post_hook(&agent, &web, &hook_secret, forge, &body).await;
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
    }
    wait_metrics(&agent, "a remote check after the accepted webhooks", |m| {
        if checks(m) > checks_before {
            Ok(())
        } else {
            Err(format!("{} checks", checks(m)))
        }
    })
    .await;
    assert!(git.authorized_ref_checks() > 0);

    // 429 over the rate, on a source of its own: a burst of 5, then one per second
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(post_hook(&agent, &burst, &hook_secret, Forge::GitHub, &body).await.status);
    }
    let burst_took = started.elapsed();
    assert_eq!(&codes[..5], &[202; 5], "the first five pass: {codes:?}");
    assert!(burst_took < Duration::from_secs(1), "eight requests took {burst_took:?}: too slow to test the rate");
    assert_eq!(&codes[5..], &[429; 3], "over the burst: {codes:?}");
    let refused = post_hook(&agent, &burst, &hook_secret, Forge::GitLab, &body).await;
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("too many"), "{}", refused.body);
    // then about one per second: a request every 100 ms for 3 s
    let paced = Instant::now();
    let mut accepted = 0;
    while paced.elapsed() < Duration::from_secs(3) {
        if post_hook(&agent, &burst, &hook_secret, Forge::GitHub, &body).await.status == 202 {
            accepted += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((2..=4).contains(&accepted), "{accepted} webhooks accepted in 3 s at 10/s");

    // a flood of bad proofs on `web` (7 refused above, up to 10 then 1 per 6 s): refused with
    // 401 until the refusal budget is spent, then 429 before any proof is checked, a good one too
    let checks_before_flood = checks(&scrape(&agent).await);
    let mut flood = Vec::new();
    for _ in 0..15 {
        let wrong = format!("sha256={wrong_hex}");
        flood.push(agent.request("POST", &path, &[("X-Hub-Signature-256", &wrong)], &body).await.status);
    }
    let unauthorized = flood.iter().take_while(|s| **s == 401).count();
    assert!((3..=5).contains(&unauthorized), "10 refusals in all, then 429 (one may have refilled): {flood:?}");
    assert!(flood[unauthorized..].iter().all(|s| *s == 429), "every request after the budget is 429: {flood:?}");
    let good = post_hook(&agent, &web, &hook_secret, Forge::GitHub, &body).await;
    assert_eq!(good.status, 429, "while the refusals are spent no proof is checked: {}", good.body);
    assert!(good.body.contains("too many refused"), "{}", good.body);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(checks(&scrape(&agent).await), checks_before_flood, "nothing in the flood triggered a remote check");

    // the URL's token shows nowhere
    for (what, text) in
        [("log", agent.stderr()), ("/metrics", agent.get("/metrics").await.body), ("/status", agent.get("/status").await.body)]
    {
        assert!(!text.contains(&url_token), "the URL's token is in the {what}");
    }
    drop(agent);
    ns.cleanup().await;
    inv.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 2. a push applied within 2 s while polling hourly
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_webhook_applies_a_new_commit_within_two_seconds() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-push-inv").await;
    let ns = TestNamespace::new(&client, "obs-push").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    let first = repo.commit("a");
    let files = Files::new();
    let hook_secret = unique_name("hook-secret");
    let secret_file = files.write("webhook-secret", &hook_secret);
    let name = unique_name("obs-push");
    let secret_arg = secret_file.to_str().unwrap();
    // given an agent polling hourly (flags this time, not a config file)
    #[rustfmt::skip]
    let agent = AgentProcess::start(inv.name(), &[
        "--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--interval", "1h", "--webhook-secret-file", secret_arg,
    ])
    .await;
    wait_ready(&agent).await;
    wait_status(&agent, &name, "the first commit applied", Duration::from_secs(30), |s| s["lastAppliedCommit"] == first.as_str()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());

    // when a commit lands and its push webhook arrives
    repo.write("b.yaml", configmap("b", "1"));
    let second = repo.commit("b");
    let committed = Instant::now();
    let r = post_hook(&agent, &name, &hook_secret, Forge::GitHub, &push_body(&second)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let accepted = committed.elapsed();

    // then the new object exists within 2 s
    let applied = loop {
        if api.get_opt("b").await.expect("get b").is_some() {
            break committed.elapsed();
        }
        if committed.elapsed() > Duration::from_secs(10) {
            panic!("b not applied 10 s after the push\n{}", tail(&agent.stderr(), 30));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("push webhook: accepted after {accepted:?}, the new ConfigMap existed {applied:?} after the commit");
    assert!(applied < Duration::from_secs(2), "the pushed commit took {applied:?} to apply");
    let st =
        wait_status(&agent, &name, "the second commit applied", Duration::from_secs(10), |s| s["lastAppliedCommit"] == second.as_str())
            .await;
    assert_eq!(st["counts"]["created"], 1, "{st:#}");
    drop(agent);
    ns.cleanup().await;
    inv.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. metrics
// ---------------------------------------------------------------------------------------------

/// Every family of the agent: (name as the reference parser names it, type).
const FAMILIES: [(&str, &str); 20] = [
    ("driftless_sync", "counter"),
    ("driftless_sync_failures", "counter"),
    ("driftless_sync_duration_seconds", "histogram"),
    ("driftless_last_sync_timestamp_seconds", "gauge"),
    ("driftless_last_successful_sync_timestamp_seconds", "gauge"),
    ("driftless_last_in_sync_timestamp_seconds", "gauge"),
    ("driftless_source_state", "gauge"),
    ("driftless_source_interval_seconds", "gauge"),
    ("driftless_source_info", "gauge"),
    ("driftless_objects", "gauge"),
    ("driftless_apply", "counter"),
    ("driftless_drift_detected", "counter"),
    ("driftless_drift_corrections", "counter"),
    ("driftless_fights", "counter"),
    ("driftless_prune_held", "counter"),
    ("driftless_git_fetch_duration_seconds", "histogram"),
    ("driftless_git_fetch_errors", "counter"),
    ("driftless_commit_to_healthy_seconds", "histogram"),
    ("driftless_build_info", "gauge"),
    ("driftless_leader", "gauge"),
];

/// The states whose `driftless_source_state` series is 1 for `source`; panics unless the source
/// has a series for every state, each 0 or 1.
fn states_on(m: &Metrics, source: &str) -> Vec<String> {
    let series = m.find("driftless_source_state", &[("source", source)]);
    let states: BTreeSet<&str> = series.iter().map(|s| s.labels["state"].as_str()).collect();
    let every = ["Pending", "Synced", "Progressing", "OutOfSync", "Failed", "PruneHeld", "RolledBack"];
    assert_eq!(states, BTreeSet::from(every), "{source}: one series per state: {series:?}");
    assert!(series.iter().all(|s| s.value == 0.0 || s.value == 1.0), "{series:?}");
    series.iter().filter(|s| s.value == 1.0).map(|s| s.labels["state"].clone()).collect()
}

/// The one `driftless_source_info` series of a source: its revision.
fn revision_series(m: &Metrics, source: &str) -> Vec<String> {
    m.find("driftless_source_info", &[("source", source)]).iter().map(|s| s.labels["revision"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_has_sane_values_after_a_sync_drift_a_prune_and_failures() {
    let mut s = Scenario::start("obs-metrics").await;
    let (good, broken) = (s.good.clone(), s.broken.clone());
    let g = [("source", good.as_str())];

    // after the first sync
    let m = wait_metrics(&s.agent, "the object gauges and the lead time of the first sync", |m| {
        let healthy = m.value("driftless_objects", &[("source", &good), ("health", "Healthy")]);
        let lead = m.value("driftless_commit_to_healthy_seconds_count", &g);
        if healthy == Some(3.0) && lead >= Some(1.0) {
            Ok(())
        } else {
            Err(format!("healthy {healthy:?}, lead-time count {lead:?}"))
        }
    })
    .await;
    assert_eq!(m.must("driftless_build_info", &[("version", driftless::VERSION)]), 1.0);
    assert_eq!(m.find("driftless_build_info", &[]).len(), 1);
    assert_eq!(m.must("driftless_leader", &[]), 1.0, "a lone agent without leader election leads");
    assert_eq!(m.must("driftless_sync_total", &[("source", &good), ("result", "success")]), 1.0);
    // the per-source counters exist from the start, at 0, so rate() sees the first failure
    assert_eq!(m.value("driftless_sync_total", &[("source", &good), ("result", "failure")]), Some(0.0));
    assert_eq!(m.value("driftless_fights_total", &[("source", &good)]), Some(0.0));
    assert_eq!(m.check_histogram("driftless_sync_duration_seconds", &good), 1.0);
    let last = m.must("driftless_last_sync_timestamp_seconds", &g);
    let last_ok = m.must("driftless_last_successful_sync_timestamp_seconds", &g);
    assert!(last >= s.started - 1.0 && last <= now_secs() + 1.0, "last sync {last}, test started {}", s.started);
    assert_eq!(last, last_ok);
    assert_eq!(revision_series(&m, &good), vec![s.commits[0].clone()]);
    assert_eq!(m.must("driftless_source_info", &g), 1.0);
    for health in ["Progressing", "Degraded", "Unknown"] {
        assert_eq!(m.must("driftless_objects", &[("source", &good), ("health", health)]), 0.0, "{health}");
    }
    assert_eq!(m.must("driftless_apply_total", &[("source", &good), ("action", "created")]), 3.0);
    assert!(m.check_histogram("driftless_git_fetch_duration_seconds", &good) >= 1.0);
    assert!(m.check_histogram("driftless_commit_to_healthy_seconds", &good) >= 1.0);
    assert_eq!(m.value("driftless_git_fetch_errors_total", &g).unwrap_or(0.0), 0.0);
    // the state, one-hot; the interval; in sync since the first sync ended
    assert_eq!(states_on(&m, &good), ["Synced"]);
    assert_eq!(m.must("driftless_source_interval_seconds", &g), 3600.0);
    assert_eq!(m.must("driftless_source_interval_seconds", &[("source", &broken)]), 2.0);
    let in_sync = m.must("driftless_last_in_sync_timestamp_seconds", &g);
    assert!(in_sync >= last && in_sync <= now_secs() + 1.0, "in sync at {in_sync}, the sync ended at {last}");
    // the broken source: its remote checks fail and are counted, and it never had a revision
    let m = wait_metrics(&s.agent, "two failed remote checks of the broken source", |m| {
        match m.value("driftless_git_fetch_errors_total", &[("source", &broken)]) {
            Some(n) if n >= 2.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(m.check_histogram("driftless_git_fetch_duration_seconds", &broken) >= 2.0);
    assert!(revision_series(&m, &broken).is_empty());
    assert_eq!(m.value("driftless_last_successful_sync_timestamp_seconds", &[("source", &broken)]), None);
    let st = source_status(&s.agent, &broken).await;
    assert_eq!((st["state"].as_str(), st["reason"].as_str()), (Some("Failed"), Some("FetchFailed")), "{st:#}");
    assert_eq!(states_on(&m, &broken), ["Failed"]);
    assert_eq!(m.value("driftless_last_in_sync_timestamp_seconds", &[("source", &broken)]), None, "never in sync");

    // drift: corrected three times in a row is a fight
    for round in 1..=3 {
        s.drift(round).await;
    }
    let m = wait_metrics(&s.agent, "three corrections and a fight", |m| {
        let corrected = m.value("driftless_drift_corrections_total", &[("source", &good), ("kind", "ConfigMap")]);
        let fights = m.value("driftless_fights_total", &g);
        if corrected >= Some(3.0) && fights == Some(1.0) {
            Ok(())
        } else {
            Err(format!("corrections {corrected:?}, fights {fights:?}"))
        }
    })
    .await;
    let detected = m.must("driftless_drift_detected_total", &[("source", &good), ("kind", "ConfigMap")]);
    let corrected = m.must("driftless_drift_corrections_total", &[("source", &good), ("kind", "ConfigMap")]);
    assert!(detected >= corrected, "detected {detected} < corrected {corrected}");
    assert_eq!(m.must("driftless_sync_total", &[("source", &good), ("result", "success")]), 1.0, "a correction is not a sync");
    let st = source_status(&s.agent, &good).await;
    assert!(st["driftCorrections"].as_u64() >= Some(3) && st["fights"] == 1, "{st:#}");

    // a commit that changes b and prunes c: a new revision series replaces the old one
    let c2 = s.commit_prune().await;
    let m = wait_metrics(&s.agent, "two Healthy objects", |m| {
        match m.value("driftless_objects", &[("source", &good), ("health", "Healthy")]) {
            Some(2.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(revision_series(&m, &good), vec![c2.clone()], "the old revision's series is gone");
    assert!(!m.text.contains(&s.commits[0]), "the first revision is still exposed");
    assert_eq!(m.must("driftless_sync_total", &[("source", &good), ("result", "success")]), 2.0);
    assert_eq!(m.must("driftless_apply_total", &[("source", &good), ("action", "configured")]), 1.0);
    assert_eq!(m.must("driftless_apply_total", &[("source", &good), ("action", "deleted")]), 1.0);
    assert_eq!(m.check_histogram("driftless_sync_duration_seconds", &good), 2.0);
    let ok_after_c2 = m.must("driftless_last_successful_sync_timestamp_seconds", &g);
    assert!(ok_after_c2 >= last_ok);

    // an unparsable commit: a failed sync, by reason; the revision and last success stay
    s.commit_invalid().await;
    let m = scrape(&s.agent).await;
    assert_eq!(m.must("driftless_sync_total", &[("source", &good), ("result", "failure")]), 1.0);
    assert_eq!(m.must("driftless_sync_failures_total", &[("source", &good), ("reason", "RenderFailed")]), 1.0);
    let other_failures: f64 = m
        .find("driftless_sync_failures_total", &g)
        .iter()
        .filter(|sample| sample.labels.get("reason").map(String::as_str) != Some("RenderFailed"))
        .map(|sample| sample.value)
        .sum();
    assert_eq!(other_failures, 0.0, "only RenderFailed");
    assert_eq!(revision_series(&m, &good), vec![c2.clone()], "a failed revision is not the applied one");
    assert_eq!(m.must("driftless_last_successful_sync_timestamp_seconds", &g), ok_after_c2);
    assert!(m.must("driftless_last_sync_timestamp_seconds", &g) >= ok_after_c2);
    assert_eq!(m.check_histogram("driftless_sync_duration_seconds", &good), 3.0);
    assert_eq!(states_on(&m, &good), ["Failed"]);
    let in_sync_failed = m.must("driftless_last_in_sync_timestamp_seconds", &g);
    assert!(
        in_sync_failed >= ok_after_c2 && in_sync_failed < m.must("driftless_last_sync_timestamp_seconds", &g),
        "a failed sync is not in sync"
    );

    // a commit removing the whole set: applied, the prune held
    let c4 = s.commit_prune_held().await;
    let m = scrape(&s.agent).await;
    assert_eq!(m.must("driftless_sync_total", &[("source", &good), ("result", "prune_held")]), 1.0);
    assert_eq!(m.must("driftless_prune_held_total", &g), 1.0);
    assert_eq!(revision_series(&m, &good), vec![c4.clone()]);
    assert_eq!(m.must("driftless_apply_total", &[("source", &good), ("action", "created")]), 4.0, "d was created");
    assert!(m.must("driftless_last_successful_sync_timestamp_seconds", &g) > ok_after_c2);
    assert_eq!(m.check_histogram("driftless_sync_duration_seconds", &good), 4.0);
    let total: f64 = m.find("driftless_sync_total", &g).iter().map(|s| s.value).sum();
    assert_eq!(total, 4.0, "every reconcile counted once by result");
    assert_eq!(states_on(&m, &good), ["PruneHeld"]);
    assert!(m.must("driftless_last_in_sync_timestamp_seconds", &g) > in_sync_failed, "a held prune applied git: in sync");

    // the exposition passes the reference parser, lists every family, uses bounded labels only
    let parsed = check_with_reference_parser(&m, &FAMILIES);
    let info: Vec<&Value> = parsed
        .iter()
        .filter(|f| f["name"] == "driftless_source_info")
        .flat_map(|f| f["samples"].as_array().unwrap())
        .filter(|s| s["labels"]["source"] == good.as_str())
        .collect();
    assert_eq!(info.len(), 1, "one source_info series per source: {info:?}");
    assert!(m.text.trim_end().ends_with("# EOF"));
    s.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Events and annotations on the parent
// ---------------------------------------------------------------------------------------------

/// Waits until the parent's status annotations satisfy `f`; returns them.
async fn wait_annotations(s: &Scenario, what: &str, f: impl Fn(&BTreeMap<String, String>) -> bool) -> BTreeMap<String, String> {
    eventually(&s.agent, what, Duration::from_secs(20), || async {
        let p = parent(&s.client, s.inv.name(), &s.good).await.ok_or("no parent yet")?;
        let a = annotations(&p);
        if f(&a) {
            Ok(a)
        } else {
            Err(format!("{a:#?}"))
        }
    })
    .await
}

/// `driftless.dev/last-sync-time` is RFC 3339 UTC (seconds) and recent.
fn assert_recent_rfc3339(t: &str) {
    let b = t.as_bytes();
    assert!(b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z', "last-sync-time {t:?}");
    let year: i32 = t[..4].parse().unwrap();
    let now_year = 1970 + (now_secs() / 31_556_952.0) as i32;
    assert!((now_year - 1..=now_year + 1).contains(&year), "last-sync-time {t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_parent_annotations_report_syncs_drift_prunes_and_failures() {
    let mut s = Scenario::start("obs-events").await;
    let good = s.good.clone();
    let c1 = s.commits[0].clone();

    // a sync: a Synced Event naming the revision, seen by kubectl describe too
    let synced = wait_event(&s.agent, &s.client, &good, "Synced", |e| e.note.contains(short(&c1))).await;
    assert_eq!(synced.type_, "Normal");
    assert!(synced.note.contains("3 created"), "{synced:?}");
    let described = kubectl_describe_parent(s.inv.name(), &good);
    assert!(
        described.lines().any(|l| l.contains("Synced") && l.contains(short(&c1))),
        "kubectl describe shows the Synced event:\n{described}"
    );
    // and the status annotations
    let a = wait_annotations(&s, "the annotations of the first sync", |a| {
        a.get("driftless.dev/state").map(String::as_str) == Some("Synced")
            && a.get("driftless.dev/health").map(String::as_str) == Some("Healthy")
    })
    .await;
    assert_eq!(a["driftless.dev/revision"], c1);
    assert!(a.contains_key("driftless.dev/message"), "{a:#?}");
    assert_recent_rfc3339(&a["driftless.dev/last-sync-time"]);

    // drift: a DriftCorrected Event naming the object and the other writer; a fight is a Warning
    s.drift(1).await;
    let corrected = wait_event(&s.agent, &s.client, &good, "DriftCorrected", |e| e.type_ == "Normal").await;
    assert!(
        corrected.note.contains(short(&c1))
            && corrected.note.contains(&format!("ConfigMap {}/a", s.ns.name()))
            && corrected.note.contains("intruder"),
        "{corrected:?}"
    );
    s.drift(2).await;
    s.drift(3).await;
    let fight = wait_event(&s.agent, &s.client, &good, "DriftCorrected", |e| e.type_ == "Warning").await;
    assert!(fight.note.contains("keeps changing") && fight.note.contains("intruder"), "{fight:?}");

    // a pruning commit: Pruned naming what was deleted; the parent carries the new revision
    // (the Synced Event of this second sync and the health annotation after it: see the two tests
    // below, the_synced_event_of_each_new_revision_names_that_revision and
    // the_parent_keeps_its_health_annotation_after_another_sync)
    let c2 = s.commit_prune().await;
    let pruned = wait_event(&s.agent, &s.client, &good, "Pruned", |e| e.note.contains(short(&c2))).await;
    assert_eq!(pruned.type_, "Normal");
    assert!(pruned.note.contains(&format!("ConfigMap {}/c", s.ns.name())), "{pruned:?}");
    let a = wait_annotations(&s, "the annotations of the second sync", |a| {
        a.get("driftless.dev/revision") == Some(&c2) && a.get("driftless.dev/state").map(String::as_str) == Some("Synced")
    })
    .await;
    assert_recent_rfc3339(&a["driftless.dev/last-sync-time"]);
    assert!(a.contains_key("driftless.dev/message"), "{a:#?}");

    // a failed sync: a SyncFailed Warning with the reason; the state says Failed, the revision stays
    let c3 = s.commit_invalid().await;
    let failed = wait_event(&s.agent, &s.client, &good, "SyncFailed", |e| e.note.contains(short(&c3))).await;
    assert_eq!(failed.type_, "Warning");
    assert!(failed.note.contains("RenderFailed"), "{failed:?}");
    let a =
        wait_annotations(&s, "the annotations of the failed sync", |a| a.get("driftless.dev/state").map(String::as_str) == Some("Failed"))
            .await;
    assert_eq!(a["driftless.dev/revision"], c2, "the applied revision stays");
    let failed_status = source_status(&s.agent, &good).await;
    let message = failed_status["message"].as_str().unwrap();
    assert!(!message.is_empty() && message.len() < 1000, "{failed_status:#}");
    assert_eq!(a["driftless.dev/message"], message, "the annotation says what /status says");
    assert_recent_rfc3339(&a["driftless.dev/last-sync-time"]);

    // a held prune: a PruneHeld Warning; the state says so
    let c4 = s.commit_prune_held().await;
    let held = wait_event(&s.agent, &s.client, &good, "PruneHeld", |e| e.note.contains(short(&c4))).await;
    assert_eq!(held.type_, "Warning");
    let a = wait_annotations(&s, "the annotations of the held prune", |a| {
        a.get("driftless.dev/state").map(String::as_str) == Some("PruneHeld") && a.get("driftless.dev/revision") == Some(&c4)
    })
    .await;
    let held_status = source_status(&s.agent, &good).await;
    assert!(!a["driftless.dev/message"].is_empty(), "the hold is explained: {a:#?}");
    assert_eq!(a["driftless.dev/message"], held_status["message"].as_str().unwrap(), "the annotation says what /status says");

    let described = kubectl_describe_parent(s.inv.name(), &good);
    for reason in ["Synced", "DriftCorrected", "Pruned", "SyncFailed", "PruneHeld"] {
        assert!(described.contains(reason), "kubectl describe lacks {reason}:\n{described}");
    }
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_synced_event_of_each_new_revision_names_that_revision() {
    let mut s = Scenario::start("obs-events2").await;
    let good = s.good.clone();
    wait_event(&s.agent, &s.client, &good, "Synced", |e| e.note.contains(short(&s.commits[0]))).await;
    let c2 = s.commit_prune().await;
    let synced = wait_event(&s.agent, &s.client, &good, "Synced", |e| e.note.contains(short(&c2))).await;
    assert!(synced.note.contains("1 configured") && synced.note.contains("1 deleted"), "{synced:?}");
    let described = kubectl_describe_parent(s.inv.name(), &good);
    assert!(described.lines().any(|l| l.contains("Synced") && l.contains(short(&c2))), "{described}");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parent_keeps_its_health_annotation_after_another_sync() {
    let mut s = Scenario::start("obs-health").await;
    wait_annotations(&s, "health after the first sync", |a| a.get("driftless.dev/health").map(String::as_str) == Some("Healthy")).await;
    let c2 = s.commit_prune().await;
    wait_annotations(&s, "the second revision", |a| a.get("driftless.dev/revision") == Some(&c2)).await;
    // give the agent time to write what it writes after a sync
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = wait_annotations(&s, "health after the second sync", |a| a.contains_key("driftless.dev/health")).await;
    assert_eq!(a["driftless.dev/health"], "Healthy");
    s.cleanup().await;
}

/// A source whose remote cannot be read at all (the repository is gone, or its credentials were
/// revoked) fails at the remote check, before `sync::reconcile`. It should count and show as a
/// failed sync like any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_whose_remote_cannot_be_read_counts_and_shows_as_a_failed_sync() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-unreachable-inv").await;
    let files = Files::new();
    let name = unique_name("obs-unreachable");
    let missing = files.path("no-such-repo");
    #[rustfmt::skip]
    let agent = AgentProcess::start(inv.name(), &[
        "--repo", &format!("file://{}", missing.display()), "--name", &name, "--namespace", inv.name(), "--interval", "1s",
    ])
    .await;
    wait_status(&agent, &name, "the source Failed", Duration::from_secs(30), |s| s["reason"] == "FetchFailed").await;
    let m = wait_metrics(&agent, "a failed sync counted", |m| {
        match m.value("driftless_sync_total", &[("source", &name), ("result", "failure")]) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("sync_total failure {other:?}")),
        }
    })
    .await;
    assert!(m.must("driftless_sync_failures_total", &[("source", &name), ("reason", "FetchFailed")]) >= 1.0);
    assert!(m.value("driftless_last_sync_timestamp_seconds", &[("source", &name)]).is_some());
    assert!(source_status(&agent, &name).await["lastSyncTime"].is_number());
    wait_event(&agent, &client, &name, "SyncFailed", |e| e.note.contains("FetchFailed")).await;
    drop(agent);
    inv.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 5. `driftless status`
// ---------------------------------------------------------------------------------------------

/// Runs `driftless status` with `args` until its row for `source` shows `revision` (short),
/// Synced and, when given, `health`, in the table and in JSON.
async fn assert_status_cli(agent: &AgentProcess, source: &str, commit: &str, health: Option<&str>, how: &str, args: &[&str]) {
    let want = short(commit).to_string();
    eventually(agent, &format!("driftless status ({how}, table) at {want}"), Duration::from_secs(20), || async {
        let (code, out, err) = run_status(args);
        if code != 0 {
            return Err(format!("exit {code}: {err}"));
        }
        let header = out.lines().next().unwrap_or_default();
        if !header.split_whitespace().eq(["NAME", "REVISION", "STATE", "HEALTH", "AGE", "MESSAGE"]) {
            return Err(format!("header {header:?}"));
        }
        let row = out.lines().find(|l| l.split_whitespace().next() == Some(source)).ok_or_else(|| out.clone())?;
        let cols: Vec<&str> = row.split_whitespace().collect();
        if cols.get(1..3) == Some(&[want.as_str(), "Synced"][..]) && health.is_none_or(|h| cols.get(3) == Some(&h)) {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    eventually(agent, &format!("driftless status ({how}, -o json) at {want}"), Duration::from_secs(20), || async {
        let (code, out, err) = run_status(&json_args);
        if code != 0 {
            return Err(format!("exit {code}: {err}"));
        }
        let rows: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let row = rows.as_array().and_then(|r| r.iter().find(|r| r["name"] == source)).ok_or_else(|| out.clone())?;
        let age = row["age_seconds"].as_u64().ok_or_else(|| format!("age_seconds: {row}"))?;
        if row["revision"] == want.as_str() && row["state"] == "Synced" && health.is_none_or(|h| row["health"] == h) && age < 600 {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_command_prints_the_revision_from_the_agent_and_from_the_cluster() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-status-inv").await;
    let ns = TestNamespace::new(&client, "obs-status").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    let c1 = repo.commit("a");
    let files = Files::new();
    let hook_secret = unique_name("hook-secret");
    let secret_file = files.write("webhook-secret", &hook_secret);
    let name = unique_name("obs-status");
    let config = files.config(vec![
        json!({"name": name, "repo": repo.url(), "namespace": ns.name(), "interval": "1h", "webhookSecretFile": secret_file}),
    ]);
    let agent = AgentProcess::start(inv.name(), &["--config", &config]).await;
    wait_ready(&agent).await;
    let server = agent.url();
    let kubeconfig = kubeconfig_path().to_str().unwrap().to_string();
    let from_agent = ["--server", server.as_str()];
    let from_cluster = ["--kubeconfig", kubeconfig.as_str(), "--inventory-namespace", inv.name()];

    assert_status_cli(&agent, &name, &c1, Some("Healthy"), "--server", &from_agent).await;
    assert_status_cli(&agent, &name, &c1, Some("Healthy"), "from the cluster", &from_cluster).await;

    // a new commit shows both ways
    repo.write("b.yaml", configmap("b", "1"));
    let c2 = repo.commit("b");
    assert_eq!(post_hook(&agent, &name, &hook_secret, Forge::GitHub, &push_body(&c2)).await.status, 202);
    assert_status_cli(&agent, &name, &c2, Some("Healthy"), "--server", &from_agent).await;
    // the health annotation is lost after a second sync: the_parent_keeps_its_health_annotation_after_another_sync
    assert_status_cli(&agent, &name, &c2, None, "from the cluster", &from_cluster).await;

    // an agent that does not answer is an error, not an empty table
    let (code, _, err) = run_status(&["--server", &format!("http://127.0.0.1:{}", driftless_tests::agent::free_port())]);
    assert_eq!(code, 1, "{err}");
    drop(agent);
    ns.cleanup().await;
    inv.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 6. no leaks
// ---------------------------------------------------------------------------------------------

/// A Secret `creds`: `password` given as stringData, `token` as data (base64).
fn secret_manifest(password: &str, token: &str, type_: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ntype: {type_}\nstringData:\n  password: \"{password}\"\n  username: app\ndata:\n  token: {}\n",
        b64(token)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_git_token_or_secret_value_leaks_into_logs_events_status_or_metrics() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-leak-inv").await;
    let ns = TestNamespace::new(&client, "obs-leak").await;
    let token = unique_name("tok").replace('-', "");
    let wrong_token = unique_name("wrongtok").replace('-', "");
    let hook_secret = unique_name("hooksecret").replace('-', "");
    let canaries: Vec<String> = (1..=5).map(|i| unique_name(&format!("canary{i}")).replace('-', "")).collect();

    // a repository over HTTP, behind a token, holding a Secret
    let repo = GitFixture::new();
    repo.write("app/creds.yaml", secret_manifest(&canaries[0], &canaries[2], "Opaque")).write("app/plain.yaml", configmap("plain", "1"));
    let c1 = repo.commit("a secret");
    let git = GitHttpServer::start(repo.path(), &token).await;
    let files = Files::new();
    let token_file = files.write("token", &format!("{token}\n"));
    let wrong_file = files.write("wrong-token", &format!("{wrong_token}\n"));
    let secret_file = files.write("webhook-secret", &hook_secret);
    let good = unique_name("obs-leak");
    let denied = unique_name("obs-leak-denied");
    let config = files.config(vec![
        json!({"name": good, "repo": git.url(), "path": "app", "namespace": ns.name(), "interval": "1h",
               "auth": {"tokenFile": token_file}, "webhookSecretFile": secret_file, "insecureHttp": true}),
        // the same remote with a wrong token: its failures are logged and reported too
        json!({"name": denied, "repo": git.url(), "path": "app", "namespace": ns.name(), "interval": "2s",
               "auth": {"tokenFile": wrong_file}, "insecureHttp": true}),
    ]);
    let agent = AgentProcess::start(inv.name(), &["--config", &config]).await;
    wait_ready(&agent).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let key =
        |secret: &Secret, key: &str| secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let password = |secret: &Secret| key(secret, "password");

    // the sync worked: the Secret is there with the canary
    wait_status(&agent, &good, "the first revision Synced", Duration::from_secs(30), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == c1.as_str()
    })
    .await;
    assert_eq!(password(&secrets.get("creds").await.unwrap()).as_deref(), Some(canaries[0].as_str()));
    assert!(git.authorized_ref_checks() >= 1, "the agent authenticated with the token");
    let st = wait_status(&agent, &denied, "the wrong token refused", Duration::from_secs(30), |s| s["state"] == "Failed").await;
    assert_eq!(st["reason"], "FetchFailed", "{st:#}");

    // a change of the Secret
    repo.write("app/creds.yaml", secret_manifest(&canaries[1], &canaries[2], "Opaque"));
    let c2 = repo.commit("new password");
    assert_eq!(post_hook(&agent, &good, &hook_secret, Forge::GitHub, &push_body(&c2)).await.status, 202);
    wait_status(&agent, &good, "the second revision Synced", Duration::from_secs(30), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == c2.as_str()
    })
    .await;
    assert_eq!(password(&secrets.get("creds").await.unwrap()).as_deref(), Some(canaries[1].as_str()));

    // drift of the Secret's data, corrected
    let params = PatchParams { field_manager: Some("intruder".into()), ..PatchParams::default() };
    secrets
        .patch("creds", &params, &Patch::Merge(json!({"data": {"token": b64(&canaries[3])}})))
        .await
        .expect("patch the secret as intruder");
    eventually(&agent, "the Secret corrected", Duration::from_secs(20), || async {
        let p = key(&secrets.get("creds").await.unwrap(), "token");
        if p.as_deref() == Some(canaries[2].as_str()) {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    wait_event(&agent, &client, &good, "DriftCorrected", |e| e.note.contains("Secret")).await;

    // a revision the server refuses (a Secret's type is immutable), carrying another value
    repo.write("app/creds.yaml", secret_manifest(&canaries[4], &canaries[2], "kubernetes.io/basic-auth"));
    let c3 = repo.commit("immutable type change");
    assert_eq!(post_hook(&agent, &good, &hook_secret, Forge::Gitea, &push_body(&c3)).await.status, 202);
    let st = wait_status(&agent, &good, "the refused revision Failed", Duration::from_secs(30), |s| {
        s["state"] == "Failed" && s["lastFetchedCommit"] == c3.as_str()
    })
    .await;
    eprintln!("the refused revision: {}: {}", st["reason"], st["message"]);
    assert_eq!(password(&secrets.get("creds").await.unwrap()).as_deref(), Some(canaries[1].as_str()));
    wait_event(&agent, &client, &good, "SyncFailed", |e| e.note.contains(short(&c3))).await;
    // let the denied source fail a few more times
    tokio::time::sleep(Duration::from_secs(2)).await;

    // search everything users read
    let server = agent.url();
    let kubeconfig = kubeconfig_path().to_str().unwrap().to_string();
    let mut haystacks: Vec<(String, String)> = vec![
        ("the agent's log".into(), agent.stderr()),
        ("the agent's stdout".into(), agent.stdout()),
        ("/status".into(), agent.get("/status").await.body),
        ("/status/good".into(), agent.get(&format!("/status/{good}")).await.body),
        ("/status/denied".into(), agent.get(&format!("/status/{denied}")).await.body),
        ("/metrics".into(), agent.get("/metrics").await.body),
        ("/readyz".into(), agent.get("/readyz").await.body),
        ("Events of the inventory namespace".into(), all_events_text(&client, inv.name()).await),
        ("Events of the target namespace".into(), all_events_text(&client, ns.name()).await),
    ];
    for source in [&good, &denied] {
        if let Some(p) = parent(&client, inv.name(), source).await {
            haystacks.push((format!("the parent of {source}"), p.to_string()));
            haystacks.push((format!("kubectl describe of the parent of {source}"), kubectl_describe_parent(inv.name(), source)));
        }
    }
    for (how, args) in [
        ("driftless status --server", vec!["--server", server.as_str()]),
        ("driftless status --server -o json", vec!["--server", server.as_str(), "-o", "json"]),
        ("driftless status (cluster)", vec!["--kubeconfig", kubeconfig.as_str(), "--inventory-namespace", inv.name()]),
        (
            "driftless status (cluster) -o json",
            vec!["--kubeconfig", kubeconfig.as_str(), "--inventory-namespace", inv.name(), "-o", "json"],
        ),
    ] {
        let (code, out, err) = run_status(&args);
        assert_eq!(code, 0, "{how}: {err}");
        haystacks.push((how.to_string(), format!("{out}{err}")));
    }
    // the search is meaningful: each place speaks of the source
    for (what, text) in &haystacks {
        if !what.contains("stdout") && !what.contains("target namespace") && !what.contains("/readyz") {
            assert!(text.contains(&good) || text.contains(&denied), "{what} does not mention the sources:\n{text}");
        }
    }
    assert!(
        haystacks[0].1.contains("sync finished") && haystacks[0].1.contains("authentication"),
        "the log covers the syncs and the refusals"
    );

    let mut needles: Vec<(String, String)> = vec![
        ("the git token".into(), token.clone()),
        ("the wrong git token".into(), wrong_token.clone()),
        ("the Basic credentials".into(), b64(&format!("git:{token}"))),
        ("the wrong Basic credentials".into(), b64(&format!("git:{wrong_token}"))),
        ("the webhook secret".into(), hook_secret.clone()),
    ];
    for (i, c) in canaries.iter().enumerate() {
        needles.push((format!("canary {}", i + 1), c.clone()));
        needles.push((format!("canary {} in base64", i + 1), b64(c).trim_end_matches('=').to_string()));
    }
    let mut hits = Vec::new();
    for (what, text) in &haystacks {
        for (needle_name, needle) in &needles {
            if text.contains(needle.as_str()) {
                let at = text.find(needle.as_str()).unwrap();
                let context = &text[at.saturating_sub(200)..(at + needle.len() + 100).min(text.len())];
                hits.push(format!("{needle_name} in {what}: ...{context}..."));
            }
        }
    }
    assert!(hits.is_empty(), "{} leak(s):\n{}", hits.len(), hits.join("\n\n"));
    drop(agent);
    ns.cleanup().await;
    inv.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_key_written_as_string_data_is_corrected_when_it_drifts() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "obs-stringdata-inv").await;
    let ns = TestNamespace::new(&client, "obs-stringdata").await;
    let repo = GitFixture::new();
    repo.write("creds.yaml", secret_manifest("from-git", "token-from-git", "Opaque"));
    let c1 = repo.commit("a secret");
    let name = unique_name("obs-stringdata");
    #[rustfmt::skip]
    let agent = AgentProcess::start(inv.name(), &["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--interval", "1h"]).await;
    wait_status(&agent, &name, "Synced", Duration::from_secs(30), |s| s["state"] == "Synced" && s["lastAppliedCommit"] == c1.as_str())
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let params = PatchParams { field_manager: Some("intruder".into()), ..PatchParams::default() };
    secrets.patch("creds", &params, &Patch::Merge(json!({"data": {"password": b64("intruder")}}))).await.unwrap();
    eventually(&agent, "the password corrected", Duration::from_secs(20), || async {
        let s = secrets.get("creds").await.unwrap();
        let p = s.data.as_ref().and_then(|d| d.get("password")).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        if p.as_deref() == Some("from-git") {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    drop(agent);
    ns.cleanup().await;
    inv.cleanup().await;
}

/// The test git server itself: the git CLI clones through it with the token and is refused
/// without it; a delayed answer is delayed.
#[tokio::test(flavor = "multi_thread")]
async fn the_test_git_server_serves_git_behind_its_token() {
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    let head = repo.commit("a");
    let git = GitHttpServer::start(repo.path(), "right-token").await;
    let clone = |url: String| {
        let dir = TempDir::new().unwrap();
        let out = Command::new("git")
            .args(["clone", "--quiet", &url])
            .arg(dir.path().join("c"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        let cloned = std::fs::read_to_string(dir.path().join("c/a.yaml")).ok();
        (out.status.success(), cloned, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ok = tokio::task::spawn_blocking({
        let url = git.url_with_credentials("anyone");
        move || clone(url)
    })
    .await
    .unwrap();
    assert!(ok.0 && ok.1.as_deref() == Some(configmap("a", "1").as_str()), "{ok:?}");
    let refused = tokio::task::spawn_blocking({
        let url = git.url().replace("://", "://anyone:wrong-token@");
        move || clone(url)
    })
    .await
    .unwrap();
    assert!(!refused.0 && refused.1.is_none(), "{refused:?}");
    let log = git.requests();
    assert!(log.iter().any(|r| r.authorized && r.uri.contains("git-upload-pack") && r.status == 200), "{log:#?}");
    assert!(log.iter().any(|r| !r.authorized && r.status == 401), "{log:#?}");
    // delays
    git.delay_next(1, Duration::from_millis(700));
    let started = Instant::now();
    let addr = git.addr();
    let r = driftless_tests::agent::http_request(addr, "GET", "/repo.git/info/refs?service=git-upload-pack", &[], b"").await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Basic")), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    let auth = format!("Basic {}", b64("x:right-token"));
    let r =
        driftless_tests::agent::http_request(addr, "GET", "/repo.git/info/refs?service=git-upload-pack", &[("Authorization", &auth)], b"")
            .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&head), "the ref advertisement lists HEAD");
    let r = driftless_tests::agent::http_request(addr, "GET", "/other.git/info/refs", &[("Authorization", &auth)], b"").await;
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------------------------------------
// the Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// Every `datasource` object anywhere in the dashboard, with where it is.
fn datasource_refs(v: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{path}.{k}");
                if k == "datasource" {
                    out.push((p.clone(), child.clone()));
                }
                datasource_refs(child, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                datasource_refs(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// PromQL functions, aggregations and keywords: identifiers that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "day_of_month",
    "day_of_week",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
    "year",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_WORDS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression reads.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    // drop string literals, label matchers {...} and ranges [...]
    let mut plain = String::new();
    let (mut quote, mut braces, mut brackets) = (None::<char>, 0, 0);
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            _ if braces > 0 || brackets > 0 => {}
            _ => plain.push(c),
        }
        if braces > 0 || brackets > 0 {
            plain.push(' ');
        }
    }
    // identifiers, skipping grafana variables, numbers, functions and label lists
    let bytes: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_paren = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '$' {
            i += 1;
            while i < bytes.len() && (bytes[i].is_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // a number (with exponent or hex digits)
            while i < bytes.len() && (bytes[i].is_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if LABEL_LIST_WORDS.contains(&word.as_str()) {
                skip_paren = true;
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_paren {
            skip_paren = false;
            let mut depth = 0;
            while i < bytes.len() {
                match bytes[i] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        i += 1;
    }
    names
}

#[test]
fn the_dashboard_is_grafana_json_on_a_datasource_variable() {
    let d = load_dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(d["title"], "Driftless");
    assert!(d["id"].is_null(), "no database id in a provisioned dashboard");

    // the variables: a prometheus datasource, and the sources from driftless_source_info
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}"));
    let ds = var("datasource");
    assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let source = var("source");
    assert_eq!(source["type"], "query");
    let query = source["query"]["query"].as_str().or(source["query"].as_str()).expect("the source variable's query");
    assert_eq!(query.split_whitespace().collect::<String>(), "label_values(driftless_source_info,source)");
    assert_eq!(
        source["definition"].as_str().map(|d| d.split_whitespace().collect::<String>()).as_deref(),
        Some("label_values(driftless_source_info,source)")
    );

    // no datasource uid is hard-coded: every reference goes through ${datasource}
    let mut refs = Vec::new();
    datasource_refs(&d, "$", &mut refs);
    assert!(refs.len() > 10, "panels and targets name their datasource");
    for (path, r) in &refs {
        if r["type"] == "grafana" {
            assert_eq!(r["uid"], "-- Grafana --", "{path}: {r}");
            continue;
        }
        assert_eq!(r["type"], "prometheus", "{path}: {r}");
        let uid = r["uid"].as_str().unwrap_or_default();
        assert!(uid == "${datasource}" || uid == "$datasource", "{path}: hard-coded datasource {r}");
    }

    // panels: unique ids, on the 24-column grid, each query with a refId, every required view
    let panels = all_panels(&d);
    let ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "duplicate panel ids");
    for p in &panels {
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{}: gridPos {g}", p["title"]);
        if p["type"] != "row" {
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{} has no targets", p["title"]));
            assert!(!targets.is_empty());
            for t in targets {
                assert!(t["refId"].is_string() && t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{}: {t}", p["title"]);
            }
        }
    }
    let queries = dashboard_queries(&d);
    let uses = |needle: &str| queries.iter().any(|(_, e)| e.contains(needle));
    for (view, needle) in [
        ("sync rate by result", "driftless_sync_total"),
        ("failures by reason", "driftless_sync_failures_total"),
        ("sync duration p50/p95", "driftless_sync_duration_seconds_bucket"),
        ("time since last successful sync", "driftless_last_successful_sync_timestamp_seconds"),
        ("current revision", "driftless_source_info"),
        ("objects by health", "driftless_objects"),
        ("apply actions rate", "driftless_apply_total"),
        ("drift detected", "driftless_drift_detected_total"),
        ("drift corrected", "driftless_drift_corrections_total"),
        ("fights", "driftless_fights_total"),
        ("prune held", "driftless_prune_held_total"),
        ("git fetch duration", "driftless_git_fetch_duration_seconds_bucket"),
        ("git fetch errors", "driftless_git_fetch_errors_total"),
        ("commit-to-healthy p50/p95", "driftless_commit_to_healthy_seconds_bucket"),
        ("leader", "driftless_leader"),
    ] {
        assert!(uses(needle), "no panel shows {view} ({needle})");
    }
    for q in ["0.5", "0.95"] {
        for h in ["driftless_sync_duration_seconds_bucket", "driftless_commit_to_healthy_seconds_bucket"] {
            assert!(queries.iter().any(|(_, e)| e.contains(&format!("histogram_quantile({q},")) && e.contains(h)), "no p{q} of {h}");
        }
    }
    // queries are filtered by the source variable where they are per source
    for (panel, expr) in &queries {
        if !expr.contains("driftless_leader") && !expr.contains("driftless_build_info") {
            assert!(expr.contains("$source"), "{panel}: {expr} ignores the source variable");
        }
    }
}

#[test]
fn promql_metric_names_are_found() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (source, le) (rate(driftless_x_bucket{source=~"$source"}[$__rate_interval]))) / on (source) group_left(revision) driftless_y + time() - 1e9"#,
    );
    assert_eq!(names, BTreeSet::from(["driftless_x_bucket".to_string(), "driftless_y".to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_queries_only_metrics_the_agent_exposes() {
    // an agent that went through everything its metrics count, so every family is exposed
    let mut s = Scenario::start("obs-dashboard").await;
    for round in 1..=3 {
        s.drift(round).await;
    }
    s.commit_invalid().await;
    s.commit_prune_held().await;
    let m = wait_metrics(&s.agent, "every family exposed", |m| {
        let missing: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).filter(|f| !m.types.contains_key(*f)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    let exposed = m.series_names();

    let d = load_dashboard();
    let mut queries = dashboard_queries(&d);
    let vars = d["templating"]["list"].as_array().unwrap();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap();
        // label_values(metric, label): the metric is the first argument
        let inner = q.trim().strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("a label_values query");
        let metric = inner.split(',').next().unwrap().trim();
        queries.push((format!("variable {}", v["name"]), metric.to_string()));
    }
    assert!(queries.len() >= 15, "{queries:#?}");
    let mut unknown = Vec::new();
    let mut referenced = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "{panel}: no metric in {expr}");
        for name in names {
            if !exposed.contains(&name) {
                unknown.push(format!("{panel}: {name} (in {expr})"));
            }
            referenced.insert(name);
        }
    }
    assert!(unknown.is_empty(), "the dashboard queries metrics the agent does not expose:\n{}\nexposed: {exposed:#?}", unknown.join("\n"));
    eprintln!("the dashboard reads {} series names: {referenced:?}", referenced.len());
    s.cleanup().await;
}
