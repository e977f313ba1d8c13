//! Driftless in tests: a reconcile context on the local control plane, sources made from git
//! fixtures, the `driftless` binary, and counting what a sync did to the cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use driftless::cluster::Cluster;
use driftless::config::{Source, SourceConfig};
use driftless::live::watch::WatchHub;
use driftless::render::helm::Helm;
use driftless::render::kustomize::Kustomize;
use driftless::render::Limits;
use driftless::report::Report;
use driftless::sync::{self, Context};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use tempfile::TempDir;

use crate::{client, cluster_bin, kubeconfig_path, repo_root, unique_name};

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
        let cluster = Cluster::connect(Some(&kubeconfig_path())).await.expect("connect as driftless");
        let ctx = Context {
            watches: Arc::new(WatchHub::new(cluster.clone())),
            cluster,
            agent_namespace: namespace.into(),
            cache_dir: cache.path().to_path_buf(),
            instance: "driftless".into(),
            limits: Limits::default(),
            // the kustomize built from Go modules by tests/cluster/build
            kustomize: Kustomize::new(&cluster_bin("kustomize").display().to_string()),
            helm: Helm::new(&cluster_bin("helm").display().to_string()),
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

/// The `driftless` binary built by `cargo build -p driftless` (tests/run builds it first), or
/// `$DRIFTLESS_BIN` when set (the benchmark's release build).
pub fn driftless_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("DRIFTLESS_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("driftless");
    assert!(bin.exists(), "{} is missing: run `cargo build -p driftless` first (tests/run does)", bin.display());
    bin
}

/// The renderers the tests build (tests/cluster/build), for the agent's binary to run.
pub fn renderers() -> [(&'static str, PathBuf); 2] {
    [("DRIFTLESS_KUSTOMIZE", cluster_bin("kustomize")), ("DRIFTLESS_HELM", cluster_bin("helm"))]
}

/// Runs `driftless sync` against the local cluster with `args`; returns (exit code, stdout, stderr).
pub fn run_sync(args: &[&str]) -> (i32, String, String) {
    let cache = TempDir::new().expect("a cache directory");
    run_driftless("sync", &kubeconfig_path(), AGENT_NAMESPACE, Some(cache.path()), args)
}

/// Runs `driftless plan` against the local cluster with the ApplySet parents in
/// `inventory_namespace` (which need not exist); returns (exit code, stdout, stderr).
pub fn run_plan(inventory_namespace: &str, args: &[&str]) -> (i32, String, String) {
    run_driftless("plan", &kubeconfig_path(), inventory_namespace, None, args)
}

/// Runs a one-shot `driftless <command>` with `kubeconfig`, the ApplySet parents in
/// `inventory_namespace` and, when given, the git cache in `cache`; nothing is taken from the
/// environment (KUBECONFIG, POD_NAMESPACE, DRIFTLESS_CACHE_DIR are removed). Returns (exit
/// code, stdout, stderr).
fn run_driftless(
    command: &str,
    kubeconfig: &std::path::Path,
    inventory_namespace: &str,
    cache: Option<&std::path::Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut run = Command::new(driftless_bin());
    run.arg(command).arg("--kubeconfig").arg(kubeconfig).args(["--inventory-namespace", inventory_namespace]);
    if let Some(cache) = cache {
        run.arg("--cache-dir").arg(cache);
    }
    let out = run
        .args(args)
        .envs(renderers())
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .env_remove("DRIFTLESS_CACHE_DIR")
        .env("NO_COLOR", "1")
        .output()
        .expect("driftless runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
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

/// A Deployment that never becomes Available: no node matches its selector.
pub const STUCK_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      nodeSelector: {no-such-node: "true"}
      containers:
        - name: app
          image: registry.example/app:1
"#;

/// A ConfigMap manifest.
pub fn configmap(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{data}\"\n")
}

/// The live object as JSON, if it exists.
pub async fn get(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    api.get_opt(name).await.expect("get").map(|o| serde_json::to_value(o).expect("json"))
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
    pub statuses: driftless::status::model::Statuses,
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
        let task = tokio::spawn(lp.run(std::sync::Arc::new(tokio::sync::Mutex::new(rx))));
        RunningSource { statuses, trigger, name, task }
    }

    /// The source's current status.
    pub fn status(&self) -> driftless::status::model::SourceStatus {
        self.statuses.read().unwrap().get(&self.name).cloned().expect("the source has a status")
    }

    /// Waits until the status satisfies `f`.
    pub async fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&driftless::status::model::SourceStatus) -> bool) {
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
pub fn run_sync_with_kubeconfig(kubeconfig: &std::path::Path, inventory_namespace: &str, args: &[&str]) -> (i32, String, String) {
    let cache = TempDir::new().expect("a cache directory");
    run_driftless("sync", kubeconfig, inventory_namespace, Some(cache.path()), args)
}

/// A free loopback port: bound to `127.0.0.1:0` and released (another process may take it
/// before it is used again; [`AgentProcess::start`] retries then).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local address").port()
}

/// `driftless run` as a child process serving its HTTP API on a loopback port of its own, killed
/// when dropped (also when the test panics). Its stdout and stderr go to files, so they can be
/// read while it runs.
pub struct AgentProcess {
    child: std::process::Child,
    dir: TempDir,
    /// Where its HTTP server listens.
    pub addr: std::net::SocketAddr,
    /// Where its ApplySet parents live.
    pub inventory_namespace: String,
}

impl AgentProcess {
    /// Starts `driftless run --listen 127.0.0.1:<free port> --kubeconfig <test cluster>
    /// --inventory-namespace <inventory_namespace> --cache-dir <own> --log-format json <args>`
    /// and waits until its HTTP server answers (retrying on another port if the port was taken
    /// meanwhile). Panics, with its stderr, if it exits instead.
    pub async fn start(inventory_namespace: &str, args: &[&str]) -> Self {
        Self::start_with_env(inventory_namespace, args, &[]).await
    }

    /// [`AgentProcess::start`] with extra environment variables (e.g. `POD_NAME`).
    pub async fn start_with_env(inventory_namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(&kubeconfig_path(), inventory_namespace, args, env).await
    }

    /// [`AgentProcess::start_with_env`] on another cluster or as another user: `--kubeconfig
    /// <kubeconfig>` (e.g. a [`crate::cluster::PrivateCluster`]'s, or one holding a
    /// ServiceAccount token).
    pub async fn start_on(kubeconfig: &std::path::Path, inventory_namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let mut agent = Self::spawn(kubeconfig, inventory_namespace, args, env);
            match agent.wait_listening(Duration::from_secs(30)).await {
                Ok(()) => return agent,
                Err(e) => {
                    last = e;
                    if !last.contains("HTTP server stopped") {
                        break;
                    }
                }
            }
        }
        panic!("driftless run did not start serving: {last}");
    }

    fn spawn(kubeconfig: &std::path::Path, inventory_namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new().expect("a temporary directory");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let child = Command::new(driftless_bin())
            .arg("run")
            .args(["--listen", &addr.to_string()])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--inventory-namespace", inventory_namespace])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--log-format", "json"])
            .args(args)
            .envs(renderers())
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("DRIFTLESS_CONFIG")
            .env_remove("DRIFTLESS_LISTEN")
            .env_remove("DRIFTLESS_LOG_FORMAT")
            .env_remove("DRIFTLESS_CACHE_DIR")
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("driftless run starts");
        AgentProcess { child, dir, addr, inventory_namespace: inventory_namespace.to_string() }
    }

    async fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("it exited with {status}:\n{}", self.stderr()));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("nothing listens on {} after {timeout:?}:\n{}", self.addr, self.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything written to stderr so far (the log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Its process id (e.g. to pause it with `kill -STOP`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no cleanup of any kind, as the OOM killer or a node failure does)
    /// and waits until it is gone.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().expect("kill -KILL");
        }
        self.child.wait().expect("wait for the killed agent");
    }

    /// Asks it to stop with SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// The value of a gauge without labels on its `/metrics` (e.g. `driftless_leader`).
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").await.body;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// A request to its HTTP server.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http_request(self.addr, method, path, headers, body).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"").await
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): HTTP {} {}", self.status, self.body))
    }
}

/// One plain HTTP/1.1 request (`Connection: close`) with a 30 s limit. The body is written while
/// the answer is read, so a server that answers before reading everything (413) is seen answering.
/// Panics when there is no answer (see [`try_http_request`] for an error instead).
pub async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http_request(addr, method, path, headers, body, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`http_request`] with a limit of the caller's, failing instead of panicking when the
/// connection is refused, the answer is malformed or none comes within `timeout`.
pub async fn try_http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    use anyhow::{anyhow, Context as _};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        let (mut reader, mut writer) = stream.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let write = tokio::spawn(async move {
            // a server may refuse before reading the whole body: a failed write is not an error
            let _ = writer.write_all(&request).await;
            let _ = writer.flush().await;
            writer
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    // some servers (chromedriver) answer `Connection: close` and keep it open
                    if is_complete(&raw) {
                        break;
                    }
                }
                // a reset after the answer arrived (the server closed with our body unread)
                Err(_) if !raw.is_empty() => break,
                Err(e) => return Err(anyhow!("{method} {path}: {e}")),
            }
        }
        drop(write.await);
        parse_http_response(&raw).ok_or_else(|| anyhow!("{method} {path}: malformed answer: {:?}", String::from_utf8_lossy(&raw)))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow!("{method} http://{addr}{path}: no answer in {timeout:?}"))?
}

fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Some(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Whether `raw` holds a whole answer by its own framing (`Content-Length` or a last chunk); one
/// without framing ends when the server closes.
pub(crate) fn is_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let Ok(head) = std::str::from_utf8(&raw[..split]) else { return false };
    let body = &raw[split + 4..];
    let header =
        |name: &str| head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')).find(|(n, _)| n.trim().eq_ignore_ascii_case(name));
    if header("transfer-encoding").is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("chunked")) {
        return dechunk(body).is_some();
    }
    header("content-length").and_then(|(_, v)| v.trim().parse::<usize>().ok()).is_some_and(|len| body.len() >= len)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Runs `driftless status <args>` (nothing taken from the environment); returns (exit code,
/// stdout, stderr).
pub fn run_status(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(driftless_bin())
        .arg("status")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .env("NO_COLOR", "1")
        .output()
        .expect("driftless status runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The example app's namespace and cluster-scoped objects: (apiVersion, kind, plural, name).
pub const EXAMPLE_CLUSTER_OBJECTS: [(&str, &str, &str, &str); 6] = [
    ("v1", "Namespace", "namespaces", "shop"),
    ("storage.k8s.io/v1", "StorageClass", "storageclasses", "shop-local"),
    ("v1", "PersistentVolume", "persistentvolumes", "shop-postgres-data"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", "shop-prometheus"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", "shop-prometheus"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", "backuppolicies.shop.example.com"),
];

/// The staging overlay's namespace and cluster-scoped objects (prod owns the CRD).
pub const EXAMPLE_STAGING_CLUSTER_OBJECTS: [(&str, &str, &str, &str); 5] = [
    ("v1", "Namespace", "namespaces", "shop-staging"),
    ("storage.k8s.io/v1", "StorageClass", "storageclasses", "shop-local-staging"),
    ("v1", "PersistentVolume", "persistentvolumes", "shop-postgres-data-staging"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", "shop-prometheus-staging"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", "shop-prometheus-staging"),
];

/// Deletes what a sync of manifests-repo-example/ left (namespaces `shop` and `shop-staging`
/// and their cluster-scoped objects) and waits until it is gone, so a test of the example starts from an empty cluster.
/// Test binaries run one after another, so two of them never race on these fixed names.
pub async fn remove_example(client: &Client) {
    let all = || EXAMPLE_CLUSTER_OBJECTS.into_iter().chain(EXAMPLE_STAGING_CLUSTER_OBJECTS);
    for (av, kind, plural, name) in all() {
        let _ = dynamic_api(client, av, kind, plural, "").delete(name, &kube::api::DeleteParams::background()).await;
    }
    crate::wait_for("the example's objects to be gone", Duration::from_secs(90), || async {
        let mut gone = true;
        for (av, kind, plural, name) in all() {
            gone &= get(&dynamic_api(client, av, kind, plural, ""), name).await.is_none();
        }
        gone.then_some(())
    })
    .await;
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET /status/{source}` of a running agent (200 expected).
pub async fn source_status(agent: &AgentProcess, source: &str) -> Value {
    let r = agent.get(&format!("/status/{source}")).await;
    assert_eq!(r.status, 200, "/status/{source}: {}", r.body);
    r.json()
}

/// Waits until `/status/{source}` satisfies `f`; returns it.
pub async fn wait_status(agent: &AgentProcess, source: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    eventually_ok(agent, what, timeout, || async {
        let s = source_status(agent, source).await;
        if f(&s) {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await
}

/// Changes `data.value` of a ConfigMap as another field manager (`intruder`): drift.
pub async fn intrude_configmap(client: &Client, namespace: &str, name: &str, value: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams { field_manager: Some("intruder".into()), ..PatchParams::default() };
    let patched = api.patch(name, &params, &Patch::Merge(serde_json::json!({"data": {"value": value}}))).await.expect("patch as intruder");
    assert_eq!(patched.data.expect("the patched ConfigMap has data")["value"], value);
}

/// `data.value` of a ConfigMap, if it exists.
pub async fn configmap_value(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.expect("get configmap").and_then(|c| c.data).and_then(|d| d.get("value").cloned())
}

/// Polls `f` every 100 ms until it returns `Ok`; on timeout panics with the last error and the
/// end of the agent's log.
pub async fn eventually_ok<T, F, Fut>(agent: &AgentProcess, what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}\nagent log (end):\n{}", tail(&agent.stderr(), 40));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
