//! Driftless in tests: a reconcile context on the local control plane, sources made from git
//! fixtures, the `driftless` binary, and counting what a sync did to the cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use driftless::apply::Cluster;
use driftless::config::{Source, SourceConfig};
use driftless::render::Limits;
use driftless::sync::{self, Context, Report};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use tempfile::TempDir;

use crate::{client, kubeconfig_path, repo_root, unique_name};

/// The namespace the tests' ApplySet parents live in (shared; each source's parent is unique).
pub const AGENT_NAMESPACE: &str = "driftless-tests";

/// A reconcile context on the local cluster with a git cache of its own.
pub struct Agent {
    pub ctx: Context,
    pub client: Client,
    _cache: TempDir,
}

impl Agent {
    pub async fn new() -> Self {
        Self::with_agent_namespace(AGENT_NAMESPACE).await
    }

    /// An agent whose ApplySet parents live in `namespace` (created when missing).
    pub async fn with_agent_namespace(namespace: &str) -> Self {
        let client = client().await;
        let cache = TempDir::new().expect("a cache directory");
        let ctx = Context {
            cluster: Cluster::connect(Some(&kubeconfig_path())).await.expect("connect as driftless"),
            agent_namespace: namespace.into(),
            cache_dir: cache.path().to_path_buf(),
            limits: Limits::default(),
        };
        Agent { ctx, client, _cache: cache }
    }

    /// One reconcile of `source`.
    pub async fn sync(&self, source: &Source) -> Report {
        sync::reconcile(&self.ctx, source).await
    }
}

/// A source named `<prefix>-<random>` reading `url` into `namespace`, with the defaults of the
/// config file (prune on, maxPrunePercent 50).
pub fn source(prefix: &str, url: &str, namespace: &str) -> Source {
    let name = unique_name(prefix);
    let cfg: SourceConfig = serde_json::from_value(serde_json::json!({
        "name": name, "repo": url, "namespace": namespace,
    }))
    .expect("a valid source config");
    cfg.validate().expect("a valid source")
}

/// The `driftless` binary built by `cargo build -p driftless` (tests/run builds it first).
pub fn driftless_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("driftless");
    assert!(bin.exists(), "{} is missing: run `cargo build -p driftless` first (tests/run does)", bin.display());
    bin
}

/// Runs `driftless sync` against the local cluster with `args`; returns (exit code, stdout, stderr).
pub fn run_sync(args: &[&str]) -> (i32, String, String) {
    let cache = TempDir::new().expect("a cache directory");
    let out = Command::new(driftless_bin())
        .arg("sync")
        .args(["--kubeconfig", kubeconfig_path().to_str().expect("utf-8 path")])
        .args(["--inventory-namespace", AGENT_NAMESPACE])
        .args(["--cache-dir", cache.path().to_str().expect("utf-8 path")])
        .args(args)
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("driftless runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The API of a kind (`apiVersion`, `Kind`, `plural`) in a namespace ("" for cluster scope).
pub fn dynamic_api(client: &Client, api_version: &str, kind: &str, plural: &str, namespace: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    if namespace.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), namespace, &ar)
    }
}

/// ConfigMaps of a namespace by name, with their resourceVersion (counts what exists).
pub async fn configmaps(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let api = dynamic_api(client, "v1", "ConfigMap", "configmaps", namespace);
    api.list(&ListParams::default())
        .await
        .expect("list configmaps")
        .items
        .into_iter()
        .filter_map(|o| {
            let name = o.metadata.name?;
            (name != "kube-root-ca.crt").then(|| (name, o.metadata.resource_version.unwrap_or_default()))
        })
        .collect()
}

/// A ConfigMap manifest.
pub fn configmap(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{data}\"\n")
}

/// The live object as JSON, if it exists.
pub async fn get(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    api.get_opt(name).await.expect("get").map(|o| serde_json::to_value(o).expect("json"))
}

/// Audit events of non-dry-run writes by Driftless (its user agent) to a namespace, in order:
/// `(verb, resource, name)`. Reads the control plane's audit log.
pub fn driftless_writes(namespace: &str) -> Vec<(String, String, String)> {
    audit_events()
        .into_iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "patch" | "update" | "delete")))
        .filter(|e| !e["requestURI"].as_str().unwrap_or_default().contains("dryRun=All"))
        .filter(|e| e["objectRef"]["namespace"].as_str() == Some(namespace))
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&e["verb"]), s(&e["objectRef"]["resource"]), s(&e["objectRef"]["name"]))
        })
        .collect()
}

/// Every audit event so far.
pub fn audit_events() -> Vec<Value> {
    let text = std::fs::read_to_string(crate::audit_log_path()).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Polls a little for eventual state (e.g. a background deletion to finish).
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut f = f;
    crate::wait_for(what, Duration::from_secs(30), || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A `driftless run` loop for one source, running in this process until dropped.
pub struct RunningSource {
    pub statuses: driftless::agent::Statuses,
    pub trigger: tokio::sync::mpsc::Sender<()>,
    pub name: String,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSource {
    /// Starts the loop of `source` (the first poll happens at once).
    pub fn start(agent: &Agent, source: Source) -> Self {
        let telemetry = driftless::status::Telemetry::quiet();
        let statuses = telemetry.statuses.clone();
        let (trigger, rx) = tokio::sync::mpsc::channel(1);
        let name = source.name.clone();
        let lp = driftless::agent::SourceLoop::new(agent.ctx.clone(), source, telemetry);
        let task = tokio::spawn(lp.run(rx));
        RunningSource { statuses, trigger, name, task }
    }

    /// The source's current status.
    pub fn status(&self) -> driftless::agent::SourceStatus {
        self.statuses.read().unwrap().get(&self.name).cloned().expect("the source has a status")
    }

    /// Waits until the status satisfies `f`.
    pub async fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&driftless::agent::SourceStatus) -> bool) {
        crate::wait_for(what, timeout, || async { f(&self.status()).then_some(()) }).await
    }
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Audit events sent by Driftless (its user agent) since the log had `since` events, about
/// objects in `namespace` or about the ApplySet parent of `source` (tests run in parallel: each
/// looks only at its own).
pub fn driftless_requests_since(since: usize, namespace: &str, source: &str) -> Vec<Value> {
    let parent = format!("driftless-{source}");
    audit_events()
        .into_iter()
        .skip(since)
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["objectRef"]["namespace"] == namespace || e["objectRef"]["name"] == parent.as_str())
        .collect()
}

/// Whether an audit event is a write (not a dry-run).
pub fn is_write(e: &Value) -> bool {
    matches!(e["verb"].as_str(), Some("create" | "patch" | "update" | "delete"))
        && !e["requestURI"].as_str().unwrap_or_default().contains("dryRun")
}

/// Whether an audit event is a dry-run.
pub fn is_dry_run(e: &Value) -> bool {
    e["requestURI"].as_str().unwrap_or_default().contains("dryRun")
}

/// Runs `driftless sync` as another identity than the tests' admin: with `kubeconfig` (e.g. one
/// holding a ServiceAccount token) and the ApplySet parents in `inventory_namespace`; returns
/// (exit code, stdout, stderr). Nothing is taken from the environment (KUBECONFIG,
/// POD_NAMESPACE, DRIFTLESS_CACHE_DIR are removed); the git cache is a fresh directory.
pub fn run_sync_with_kubeconfig(
    kubeconfig: &std::path::Path,
    inventory_namespace: &str,
    args: &[&str],
) -> (i32, String, String) {
    let cache = TempDir::new().expect("a cache directory");
    let out = Command::new(driftless_bin())
        .arg("sync")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--inventory-namespace", inventory_namespace])
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .env_remove("DRIFTLESS_CACHE_DIR")
        .env("NO_COLOR", "1")
        .output()
        .expect("driftless runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
