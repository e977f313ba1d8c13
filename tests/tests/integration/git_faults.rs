//! Git faults against the real control plane: a git server that accepts connections and never
//! answers, one that is down for several polls and comes back, and a repository whose pack is
//! over the fetch size limit. Each fails the sync with `FetchFailed` (in time, naming the limit
//! that stopped it), writes and deletes nothing meanwhile, and converges once the fault ends.
//!
//! The faults are made by a [`Gate`]: a loopback port in front of the support crate's git HTTP
//! server that forwards to it, holds connections silent, or stops listening, keeping its port
//! (so the source's URL stays the same when the server "restarts").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftless::config::Source;
use driftless::report::changes::Action;
use driftless::report::{Reason, State};
use driftless::source::Auth;
use driftless_tests::agent::{self, configmap, configmaps, driftless_requests_since, is_write, Agent, AgentProcess};
use driftless_tests::git_http::{GitHttpServer, REPO_PATH};
use driftless_tests::{unique_name, GitFixture, TestNamespace};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What a [`Gate`] does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards it to the git server.
    Forward,
    /// Accepts it and never answers (nor reads).
    Hang,
}

/// A loopback port in front of a git server. While up it forwards or hangs connections (see
/// [`Mode`]); [`Gate::down`] closes the port (connections are refused) and [`Gate::up`] listens on
/// the same port again. Everything stops when it is dropped.
struct Gate {
    addr: SocketAddr,
    backend: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Gate {
    async fn open(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut gate =
            Gate { addr, backend, mode: Arc::new(Mutex::new(Mode::Forward)), accepted: Arc::new(AtomicUsize::new(0)), task: None };
        gate.serve(listener);
        gate
    }

    /// `http://127.0.0.1:<port>/repo.git`.
    fn url(&self) -> String {
        format!("http://{}{REPO_PATH}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Nothing listens on the port any more; the connections it held are closed.
    async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on the same port again, forwarding.
    async fn up(&mut self) {
        self.set_mode(Mode::Forward);
        let listener = TcpListener::bind(self.addr).await.unwrap_or_else(|e| panic!("bind {} again: {e}", self.addr));
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (mode, accepted, backend) = (Arc::clone(&self.mode), Arc::clone(&self.accepted), self.backend);
        self.task = Some(tokio::spawn(async move {
            // dropped with the task: aborts every connection
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let mode = *mode.lock().unwrap();
                connections.spawn(async move {
                    match mode {
                        Mode::Forward => {
                            if let Ok(mut server) = TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            drop(client);
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A repository of ConfigMaps `a`, `b`, `c`, served over HTTP behind a token, through a gate.
struct Served {
    repo: GitFixture,
    _git: GitHttpServer,
    gate: Gate,
    /// Holds the token file.
    files: TempDir,
}

impl Served {
    async fn new() -> Self {
        let repo = GitFixture::new();
        for name in ["a", "b", "c"] {
            repo.write(format!("{name}.yaml"), configmap(name, "v1"));
        }
        repo.commit("three config maps");
        let token = unique_name("token");
        let git = GitHttpServer::start(repo.path(), &token).await;
        let gate = Gate::open(git.addr()).await;
        let files = TempDir::new().expect("a temporary directory");
        std::fs::write(files.path().join("token"), format!("{token}\n")).expect("write the token");
        Served { repo, _git: git, gate, files }
    }

    fn token_file(&self) -> std::path::PathBuf {
        self.files.path().join("token")
    }

    /// A source reading it through the gate into `namespace`, with `timeout`.
    fn source(&self, prefix: &str, namespace: &str, timeout: Duration) -> Source {
        let mut source = agent::source(prefix, &self.gate.url(), namespace);
        source.spec.auth = Auth::Token { token_file: self.token_file(), username: None };
        source.spec.insecure_http = true;
        source.spec.timeout = timeout;
        source
    }

    /// The commit that a fetch would apply: `c` leaves git, `b` changes, `d` is new.
    fn change(&self) -> String {
        self.repo.remove("c.yaml");
        self.repo.write("b.yaml", configmap("b", "v2"));
        self.repo.write("d.yaml", configmap("d", "v1"));
        self.repo.commit("remove c, change b, add d")
    }
}

/// The values of the namespace's ConfigMaps, by name.
async fn values(agent: &Agent, namespace: &str) -> BTreeMap<String, String> {
    let api = agent::dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", namespace);
    let mut out = BTreeMap::new();
    for name in configmaps(&agent.client, namespace).await.into_keys() {
        if let Some(o) = agent::get(&api, &name).await {
            out.insert(name, o["data"]["value"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

fn three_v1() -> BTreeMap<String, String> {
    ["a", "b", "c"].into_iter().map(|n| (n.to_string(), "v1".to_string())).collect()
}

fn converged() -> BTreeMap<String, String> {
    [("a", "v1"), ("b", "v2"), ("d", "v1")].into_iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// Driftless's writes (creates, patches, deletes; no dry-runs) in the namespace or on the parent
/// since the audit log had `since` events.
fn writes_since(since: usize, namespace: &str, source: &str) -> Vec<String> {
    driftless_requests_since(since, namespace, source)
        .iter()
        .filter(|e| is_write(e))
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_server_that_accepts_and_never_answers_fails_the_sync_in_time_and_changes_nothing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "faults-hung").await;
    let mut served = Served::new().await;
    let timeout = Duration::from_secs(3);
    let source = served.source("faults-hung", ns.name(), timeout);
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    assert_eq!(values(&agent, ns.name()).await, three_v1());
    let before = configmaps(&agent.client, ns.name()).await;

    let next = served.change();
    served.gate.set_mode(Mode::Hang);
    let accepted = served.gate.accepted();
    let since = agent::audit_events().len();
    let started = Instant::now();
    let report = agent.sync(&source).await;
    let took = started.elapsed();
    eprintln!("sync against a hung git server: {:?} {:?} after {took:?}: {}", report.state, report.reason, report.message);
    assert_eq!(report.state, State::Failed, "{}", report.message);
    assert_eq!(report.reason, Some(Reason::FetchFailed), "{}", report.message);
    assert!(report.message.contains("within the fetch timeout of 3s"), "{}", report.message);
    assert!(took < timeout + Duration::from_secs(3), "the sync took {took:?} with a timeout of {timeout:?}");
    assert!(served.gate.accepted() > accepted, "the hung server was not reached");
    assert!(report.changes.entries.is_empty(), "{:#?}", report.changes);
    // nothing written, nothing deleted
    assert_eq!(configmaps(&agent.client, ns.name()).await, before);
    let writes = writes_since(since, ns.name(), &source.name);
    assert!(writes.is_empty(), "writes during a failed fetch: {writes:?}");

    // the server answers again: the commit made meanwhile is applied
    served.gate.down().await;
    served.gate.up().await;
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    assert_eq!(report.commit.as_deref(), Some(next.as_str()));
    assert_eq!(report.changes.count(Action::Deleted), 1, "{:#?}", report.changes);
    assert_eq!(values(&agent, ns.name()).await, converged());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_over_max_fetch_bytes_fails_the_sync_naming_the_limit_and_changes_nothing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "faults-big").await;
    let served = Served::new().await;
    let mut source = served.source("faults-big", ns.name(), Duration::from_secs(30));
    source.spec.max_fetch_bytes = 1 << 20;
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    let before = configmaps(&agent.client, ns.name()).await;

    // 4 MiB that do not compress, next to the manifests (render never reads it: the fetch does)
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    served.repo.write("assets/blob.bin", noise);
    served.change();
    let since = agent::audit_events().len();
    let report = agent.sync(&source).await;
    eprintln!("sync of an oversized pack: {:?} {:?}: {}", report.state, report.reason, report.message);
    assert_eq!(report.state, State::Failed, "{}", report.message);
    assert_eq!(report.reason, Some(Reason::FetchFailed), "{}", report.message);
    assert!(report.message.contains("over the fetch size limit of 1048576 bytes (maxFetchBytes)"), "{}", report.message);
    assert_eq!(configmaps(&agent.client, ns.name()).await, before);
    let writes = writes_since(since, ns.name(), &source.name);
    assert!(writes.is_empty(), "writes during a failed fetch: {writes:?}");
}

/// The value of a counter of `driftless run`'s `/metrics` for a source.
async fn counter(agent: &AgentProcess, name: &str, source: &str) -> f64 {
    let text = agent.get("/metrics").await.body;
    let label = format!("source=\"{source}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The source's `/status/{source}`.
async fn status(agent: &AgentProcess, source: &str) -> Value {
    agent.get(&format!("/status/{source}")).await.json()
}

/// Polls `/status/{source}` until `f` holds.
async fn wait_status(agent: &AgentProcess, source: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = status(agent, source).await;
        if f(&last) {
            return last;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last status {last}\n{}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_server_down_for_several_polls_changes_nothing_and_the_agent_converges_when_it_is_back() {
    let client = driftless_tests::client().await;
    let inv = TestNamespace::new(&client, "faults-down-inv").await;
    let ns = TestNamespace::new(&client, "faults-down").await;
    let mut served = Served::new().await;
    let name = unique_name("faults-down");
    let config = served.files.path().join("driftless.yaml");
    let entry = json!({"name": name, "repo": served.gate.url(), "namespace": ns.name(), "interval": "1s",
                       "timeout": "3s", "insecureHttp": true, "auth": {"tokenFile": served.token_file()}});
    std::fs::write(&config, serde_json::to_string_pretty(&json!({ "sources": [entry] })).unwrap()).unwrap();
    let first = served.repo.head();
    let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;
    wait_status(&agent, &name, "the first revision Synced", Duration::from_secs(60), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == first.as_str()
    })
    .await;
    let check = Agent::new().await;
    assert_eq!(values(&check, ns.name()).await, three_v1());
    let before = configmaps(&client, ns.name()).await;

    // down: nothing listens; a commit is made meanwhile
    served.gate.down().await;
    let since = agent::audit_events().len();
    let down_at = Instant::now();
    let errors_before = counter(&agent, "driftless_git_fetch_errors_total", &name).await;
    let next = served.change();
    let polls = 5.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let errors = counter(&agent, "driftless_git_fetch_errors_total", &name).await - errors_before;
        let last = status(&agent, &name).await;
        if errors >= polls {
            break last;
        }
        assert!(Instant::now() < deadline, "{errors} failed polls in 30s; last status {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = down_at.elapsed();
    eprintln!("{polls} failed polls in {took:?}; status: {} {}: {}", last["state"], last["reason"], last["message"]);
    assert_eq!(last["state"], "Failed", "{last}");
    assert_eq!(last["reason"], "FetchFailed", "{last}");
    assert_eq!(last["lastAppliedCommit"], first.as_str(), "{last}");
    assert_eq!(configmaps(&client, ns.name()).await, before, "the ConfigMaps changed while git was down");
    // no object written or deleted; the parent only gets its status annotations (state Failed)
    let writes = writes_since(since, ns.name(), &name);
    let deletes = writes.iter().filter(|w| w.starts_with("\"delete\"")).count();
    assert_eq!(deletes, 0, "deleted while git was down: {writes:?}");
    let objects: Vec<&String> = writes.iter().filter(|w| w.contains(&format!("/namespaces/{}/", ns.name()))).collect();
    assert!(objects.is_empty(), "objects written while git was down: {objects:?}");

    // back: the commit made while it was down is applied
    served.gate.up().await;
    let back_at = Instant::now();
    wait_status(&agent, &name, "the commit made while git was down Synced", Duration::from_secs(30), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == next.as_str()
    })
    .await;
    eprintln!("converged {:?} after git came back", back_at.elapsed());
    assert_eq!(values(&check, ns.name()).await, converged());
}

/// The value of `name{source="<source>",<label>}` on the agent's `/metrics`.
async fn gauge(agent: &AgentProcess, name: &str, source: &str, label: &str) -> Option<f64> {
    let text = agent.get("/metrics").await.body;
    let prefix = format!("{name}{{source=\"{source}\"{label}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_failed_by_a_git_outage_is_synced_again_when_git_answers_with_nothing_new() {
    let client = driftless_tests::client().await;
    let inv = TestNamespace::new(&client, "faults-blip-inv").await;
    let ns = TestNamespace::new(&client, "faults-blip").await;
    let mut served = Served::new().await;
    let name = unique_name("faults-blip");
    let config = served.files.path().join("driftless.yaml");
    let entry = json!({"name": name, "repo": served.gate.url(), "namespace": ns.name(), "interval": "1s",
                       "timeout": "3s", "insecureHttp": true, "auth": {"tokenFile": served.token_file()}});
    std::fs::write(&config, serde_json::to_string_pretty(&json!({ "sources": [entry] })).unwrap()).unwrap();
    let first = served.repo.head();
    let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;
    wait_status(&agent, &name, "the first revision Synced", Duration::from_secs(60), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == first.as_str()
    })
    .await;

    // git goes away for a few polls: the source is Failed (FetchFailed)
    served.gate.down().await;
    wait_status(&agent, &name, "Failed while git is down", Duration::from_secs(30), |s| {
        s["state"] == "Failed" && s["reason"] == "FetchFailed"
    })
    .await;
    assert_eq!(gauge(&agent, "driftless_source_state", &name, ",state=\"Failed\"").await, Some(1.0));
    let in_sync_before = gauge(&agent, "driftless_last_in_sync_timestamp_seconds", &name, "").await.expect("in sync once");

    // back, with the same commit: the failure is over, nothing needs a reconcile
    served.gate.up().await;
    let back = wait_status(&agent, &name, "Synced again with the same commit", Duration::from_secs(30), |s| {
        s["state"] == "Synced" && s["reason"] == "" && s["message"] == ""
    })
    .await;
    assert_eq!(back["lastAppliedCommit"], first.as_str(), "{back}");
    assert_eq!(gauge(&agent, "driftless_source_state", &name, ",state=\"Synced\"").await, Some(1.0));
    assert_eq!(gauge(&agent, "driftless_source_state", &name, ",state=\"Failed\"").await, Some(0.0));
    let in_sync = gauge(&agent, "driftless_last_in_sync_timestamp_seconds", &name, "").await.expect("in sync");
    assert!(in_sync > in_sync_before, "in sync again: {in_sync} after {in_sync_before}");
    ns.cleanup().await;
    inv.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_corrected_while_a_fetch_hangs_and_a_stuck_fetch_shows_in_status() {
    let client = driftless_tests::client().await;
    let inv = TestNamespace::new(&client, "faults-hang-inv").await;
    let ns = TestNamespace::new(&client, "faults-hang").await;
    let served = Served::new().await;
    let name = unique_name("faults-hang");
    let config = served.files.path().join("driftless.yaml");
    // a long fetch timeout: the hung check below stays in progress for the whole test
    let entry = json!({"name": name, "repo": served.gate.url(), "namespace": ns.name(), "interval": "1s",
                       "timeout": "60s", "insecureHttp": true, "auth": {"tokenFile": served.token_file()}});
    std::fs::write(&config, serde_json::to_string_pretty(&json!({ "sources": [entry] })).unwrap()).unwrap();
    let first = served.repo.head();
    let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;
    wait_status(&agent, &name, "the first revision Synced", Duration::from_secs(60), |s| {
        s["state"] == "Synced" && s["lastAppliedCommit"] == first.as_str()
    })
    .await;

    // the git server now takes connections and never answers: the next check hangs
    served.gate.set_mode(Mode::Hang);
    let hung_from = served.gate.accepted();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.gate.accepted() == hung_from {
        assert!(Instant::now() < deadline, "no remote check reached the hung server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hanging =
        wait_status(&agent, &name, "the fetch in progress shows", Duration::from_secs(5), |s| s["fetchStarted"].is_number()).await;

    // when an owned ConfigMap is edited while that check hangs
    let cms = agent::dynamic_api(&client, "v1", "ConfigMap", "configmaps", ns.name());
    let edited = Instant::now();
    cms.patch("a", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"data": {"value": "by-hand"}}))).await.unwrap();

    // then it is reverted at once, the check still hanging
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = agent::get(&cms, "a").await.expect("ConfigMap a");
        if a["data"]["value"] == "v1" {
            break;
        }
        assert!(Instant::now() < deadline, "not reverted within 10 s while a fetch hung: {a}\n{}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reverted = edited.elapsed();
    let still = status(&agent, &name).await;
    assert_eq!(still["fetchStarted"], hanging["fetchStarted"], "the same check is still in progress: {still}");
    assert!(served.gate.accepted() - hung_from <= 2, "no new check started meanwhile");
    eprintln!("reverted in {reverted:?} while the remote check hung");
    // a fetch within its deadlines is slow, not stuck: the agent stays healthy
    assert_eq!(agent.get("/healthz").await.status, 200);
    ns.cleanup().await;
    inv.cleanup().await;
}
