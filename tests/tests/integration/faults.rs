//! Fault injection on the real control plane (issue 11, "Fault-injection suite"): each test
//! injects a real fault, counts the objects wrongly deleted (must be 0) and checks that the
//! source converges once the fault ends.
//!
//! - the kube-apiserver stopped for 60 s in the middle of a large apply, then started again (on
//!   a private control plane of this test's own, `PrivateCluster`: stopping the shared one would
//!   break every test running in parallel);
//! - `driftless run` killed with SIGKILL in the middle of a large apply, then started again;
//! - the API server answering 429 to Driftless's user (API Priority and Fairness with a priority
//!   level of one share that rejects instead of queuing, for a ServiceAccount of this test only);
//! - a ResourceQuota that lets every dry-run pass and rejects one object at apply.
//!
//! Every wait is bounded; everything listens on loopback only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use driftless::report::changes::Action;
use driftless::report::{Reason, State};
use driftless_tests::agent::{configmap, configmaps, eventually_ok as eventually, is_write, tail, Agent, AgentProcess};
use driftless_tests::cluster::{by_driftless, code, AuditTail, PrivateCluster};
use driftless_tests::{audit_log_path, client, unique_name, GitFixture, TestNamespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.invalid/{name}:1   # kwok runs the pod without pulling it\n"
    )
}

/// The ConfigMaps (but `kube-root-ca.crt`) and Deployments of a namespace: `Kind/name` → uid.
async fn uids(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for cm in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("list configmaps") {
        let name = cm.metadata.name.unwrap_or_default();
        if name != "kube-root-ca.crt" {
            out.insert(format!("ConfigMap/{name}"), cm.metadata.uid.unwrap_or_default());
        }
    }
    for d in Api::<Deployment>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("list deployments") {
        out.insert(format!("Deployment/{}", d.metadata.name.unwrap_or_default()), d.metadata.uid.unwrap_or_default());
    }
    out
}

/// Objects of `before` that are gone from `after` or came back as another object (other uid):
/// what was wrongly deleted.
fn lost(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before.iter().filter(|(k, uid)| after.get(*k) != Some(uid)).map(|(k, uid)| format!("{k} (uid {uid}, now {:?})", after.get(k))).collect()
}

/// Deletes Driftless sent (any namespace when `namespace` is None): `kind namespace/name`.
fn driftless_deletes(events: &[Value], namespace: Option<&str>) -> Vec<String> {
    events
        .iter()
        .filter(|e| by_driftless(e) && e["verb"] == "delete")
        .filter(|e| namespace.is_none_or(|ns| e["objectRef"]["namespace"].as_str() == Some(ns)))
        .map(|e| {
            format!(
                "{} {}/{} -> {}",
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                code(e)
            )
        })
        .collect()
}

/// Successful writes (not dry-runs) Driftless made to objects in `namespace`.
fn successful_writes<'a>(events: &'a [Value], namespace: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events
        .iter()
        .filter(move |e| by_driftless(e) && is_write(e) && e["objectRef"]["namespace"] == namespace)
        .filter(|e| (200..300).contains(&code(e)))
}

/// `GET /status/{source}` of a running agent.
async fn status(agent: &AgentProcess, source: &str) -> Value {
    let r = agent.get(&format!("/status/{source}")).await;
    assert_eq!(r.status, 200, "/status/{source}: {}", r.body);
    r.json()
}

/// Waits until the source reports `Synced` at `commit`; returns its status.
async fn wait_synced(agent: &AgentProcess, source: &str, commit: &str, timeout: Duration) -> Value {
    eventually(agent, &format!("{source} Synced at {}", &commit[..12]), timeout, || async {
        let s = status(agent, source).await;
        if s["state"] == "Synced" && s["lastAppliedCommit"] == commit {
            Ok(s)
        } else {
            let unhealthy: Vec<String> =
                s["objects"].as_array().into_iter().flatten().filter(|o| o["health"] != "Healthy").take(5).map(|o| o.to_string()).collect();
            Err(format!(
                "state {} health {} reason {} applied {} message {}; not Healthy (first 5): {unhealthy:?}",
                s["state"], s["health"], s["reason"], s["lastAppliedCommit"], s["message"]
            ))
        }
    })
    .await
}

/// The agent's log lines about syncs (JSON log): time, level, message, error or summary.
fn sync_log(agent: &AgentProcess) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("sync ")))
        .map(|l| {
            let f = &l["fields"];
            let detail = f["error"].as_str().or(f["summary"].as_str()).unwrap_or_default();
            format!(
                "{} {} {} {} {}",
                l["timestamp"].as_str().unwrap_or_default(),
                l["level"].as_str().unwrap_or_default(),
                f["message"].as_str().unwrap_or_default(),
                f["state"].as_str().or(f["reason"].as_str()).unwrap_or_default(),
                detail.chars().take(200).collect::<String>()
            )
        })
        .collect()
}

/// The agent's log lines about its watches (JSON log): time, kind, namespace, error.
fn watch_log(agent: &AgentProcess) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("watch")))
        .map(|l| {
            let f = &l["fields"];
            format!(
                "{} {} {} {}",
                l["timestamp"].as_str().unwrap_or_default(),
                f["kind"].as_str().unwrap_or_default(),
                f["message"].as_str().unwrap_or_default(),
                f["error"].as_str().unwrap_or_default().chars().take(150).collect::<String>()
            )
        })
        .collect()
}

/// The sum of a metric's samples (every label set) on the agent's `/metrics`; 0 when absent.
async fn metric_sum(agent: &AgentProcess, name: &str) -> f64 {
    let text = agent.get("/metrics").await.body;
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the audit log until Driftless's first successful write to `namespace` appears; returns
/// every event read so far (bounded by `timeout`).
async fn wait_first_write(tail: &mut AuditTail, namespace: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        seen.extend(tail.read());
        if successful_writes(&seen, namespace).next().is_some() {
            return seen;
        }
        assert!(Instant::now() < deadline, "no write by Driftless to {namespace} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A large revision: `keep` ConfigMaps of the first revision (with `data`), then `cms` new
/// ConfigMaps and `deploys` new Deployments of `replicas` replicas.
fn write_objects(repo: &GitFixture, keep: usize, data: &str, cms: usize, deploys: usize, replicas: u32) {
    for i in 0..keep {
        repo.write(format!("keep/cm-{i:03}.yaml"), configmap(&format!("keep-{i:03}"), data));
    }
    for i in 0..cms {
        repo.write(format!("new/cm-{i:03}.yaml"), configmap(&format!("new-{i:03}"), "1"));
    }
    for i in 0..deploys {
        repo.write(format!("new/deploy-{i:03}.yaml"), deployment(&format!("new-{i:03}"), replicas));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kube-apiserver stopped for 60 s mid-apply (private control plane)
// ---------------------------------------------------------------------------------------------

const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_stopped_mid_apply_then_restarted_converges_without_losing_anything() {
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start("faults-apiserver")).await.unwrap();
    println!("private control plane up in {:?} ({})", started.elapsed(), cluster.dir().display());
    let client = cluster.client().await;
    let app = "app";
    let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace app");

    // revision 1: 100 ConfigMaps and 10 Deployments, synced. The Deployments have no replicas:
    // after a minute without an API server, the node lifecycle controller marks the kwok node
    // NotReady and its pods Ready=False (before kwok renews the node's lease), and kwok never makes
    // a pod that already has an IP Ready again, so a replica would stay unavailable for reasons
    // that have nothing to do with Driftless.
    let repo = GitFixture::new();
    write_objects(&repo, 100, "1", 0, 0, 0);
    for i in 0..10 {
        repo.write(format!("keep/deploy-{i:03}.yaml"), deployment(&format!("keep-{i:03}"), 0));
    }
    let r1 = repo.commit("revision 1");
    let source = "big";
    let args = ["--repo", &repo.url(), "--name", source, "--namespace", app, "--interval", "2s"];
    let mut agent = AgentProcess::start_on(&cluster.kubeconfig(), "driftless-system", &args, &[]).await;
    wait_synced(&agent, source, &r1, Duration::from_secs(120)).await;
    let before = uids(&client, app).await;
    assert_eq!(before.len(), 110, "{before:?}");

    // revision 2: every ConfigMap of revision 1 changed, 400 ConfigMaps and 40 Deployments more
    write_objects(&repo, 100, "2", 400, 40, 0);
    let mut audit = AuditTail::from_end(cluster.audit_log());
    let r2 = repo.commit("revision 2");
    let to_write = 100 + 400 + 40;

    // the kube-apiserver goes away as soon as the agent's first write of revision 2 is in
    let mut events = wait_first_write(&mut audit, app, Duration::from_secs(60)).await;
    let stop_began = Instant::now();
    tokio::task::block_in_place(|| cluster.stop_component("kube-apiserver"));
    let down_at = Instant::now();
    events.extend(audit.read());
    let written_before: BTreeSet<String> =
        successful_writes(&events, app).map(|e| e["objectRef"]["name"].as_str().unwrap_or_default().to_string()).collect();
    println!("kube-apiserver stopped in {:?}, after {} of {to_write} writes of revision 2", down_at - stop_began, written_before.len());
    assert!(
        !written_before.is_empty() && written_before.len() < to_write,
        "the outage must begin in the middle of the apply: {} of {to_write} objects were written before it",
        written_before.len()
    );

    // 60 s without an API server: the agent keeps running, /healthz stays 200
    let mut states = BTreeSet::new();
    while down_at.elapsed() < OUTAGE {
        assert_eq!(agent.exited(), None, "the agent exited during the outage:\n{}", tail(&agent.stderr(), 40));
        let health = agent.get("/healthz").await;
        assert_eq!(health.status, 200, "/healthz during the outage: {}", health.body);
        let s = status(&agent, source).await;
        states.insert(format!("{} {}", s["state"].as_str().unwrap_or_default(), s["reason"].as_str().unwrap_or_default()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("during the outage the source reported: {states:?}");
    let restart_began = Instant::now();
    tokio::task::block_in_place(|| cluster.start_component("kube-apiserver"));
    let up_at = Instant::now();
    println!("kube-apiserver down {:?}, ready again in {:?}", up_at - down_at, up_at - restart_began);

    // converges: revision 2 in full, every object of revision 1 with its uid, nothing deleted
    let transitions = std::sync::Mutex::new(Vec::<String>::new());
    let synced = eventually(&agent, "revision 2 Synced after the restart", Duration::from_secs(180), || {
        let (agent, transitions, r2) = (&agent, &transitions, &r2);
        async move {
            let s = status(agent, source).await;
            let now = format!(
                "{} {} {} applied {}",
                s["state"].as_str().unwrap_or_default(),
                s["health"].as_str().unwrap_or_default(),
                s["reason"].as_str().unwrap_or_default(),
                s["lastAppliedCommit"].as_str().map(|c| &c[..12]).unwrap_or("-")
            );
            let mut seen = transitions.lock().unwrap();
            if seen.last().is_none_or(|l| !l.ends_with(&now)) {
                seen.push(format!("+{:.1}s {now}", up_at.elapsed().as_secs_f64()));
            }
            if s["state"] == "Synced" && s["lastAppliedCommit"] == r2.as_str() {
                Ok(s)
            } else {
                Err(now)
            }
        }
    })
    .await;
    println!("status after the restart: {:#?}", transitions.lock().unwrap());
    let watches = watch_log(&agent);
    println!(
        "watch errors (first 3 and last 5 of {}):\n{}\n...\n{}",
        watches.len(),
        watches[..watches.len().min(3)].join("\n"),
        watches[watches.len().saturating_sub(5)..].join("\n")
    );
    println!("converged {:?} after the restart; syncs:\n{}", up_at.elapsed(), sync_log(&agent).join("\n"));
    let after = uids(&client, app).await;
    assert_eq!(lost(&before, &after), Vec::<String>::new(), "objects of revision 1 wrongly deleted");
    assert_eq!(after.len(), 100 + 10 + 400 + 40, "every object of revision 2 exists");
    let data: BTreeMap<String, String> = Api::<ConfigMap>::namespaced(client.clone(), app)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.metadata.name?, c.data?.get("value")?.clone())))
        .collect();
    assert!((0..100).all(|i| data[&format!("keep-{i:03}")] == "2"), "revision 2's data everywhere");
    let all_events = AuditTail::from_start(cluster.audit_log()).read();
    assert_eq!(driftless_deletes(&all_events, None), Vec::<String>::new(), "Driftless deleted nothing");
    assert_eq!(agent.exited(), None, "no crash");
    assert_eq!(agent.get("/healthz").await.status, 200);
    assert_eq!(metric_sum(&agent, "driftless_panics_total").await, 0.0, "no panic");
    assert_eq!(synced["health"], "Healthy", "{synced:#}");
    println!("test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. the agent killed with SIGKILL mid-apply (shared control plane)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_killed_mid_apply_converges_after_restart() {
    let started = Instant::now();
    let client = client().await;
    let inventory = TestNamespace::new(&client, "faults-kill-inv").await;
    let app = TestNamespace::new(&client, "faults-kill").await;

    // revision 1: 50 ConfigMaps, synced
    let repo = GitFixture::new();
    write_objects(&repo, 50, "1", 0, 0, 1);
    let r1 = repo.commit("revision 1");
    let source = unique_name("kill");
    let args = ["--repo", &repo.url(), "--name", &source, "--namespace", app.name(), "--interval", "2s"];
    let mut first = AgentProcess::start(inventory.name(), &args).await;
    wait_synced(&first, &source, &r1, Duration::from_secs(60)).await;
    let before = uids(&client, app.name()).await;
    assert_eq!(before.len(), 50);

    // revision 2: keep-000 removed, the other 49 changed, 300 ConfigMaps and 30 Deployments more
    write_objects(&repo, 50, "2", 300, 30, 1);
    repo.remove("keep/cm-000.yaml");
    let mut audit = AuditTail::from_end(audit_log_path());
    let r2 = repo.commit("revision 2");
    let to_write = 49 + 300 + 30;
    let mut events = wait_first_write(&mut audit, app.name(), Duration::from_secs(60)).await;
    first.kill();
    let killed_at = Instant::now();
    // requests already sent may still complete
    tokio::time::sleep(Duration::from_millis(500)).await;
    events.extend(audit.read());
    let written_before = successful_writes(&events, app.name()).count();
    println!("killed after {written_before} of {to_write} writes of revision 2");
    assert!(written_before < to_write, "the kill must come in the middle of the apply: all {to_write} writes were done");
    assert_eq!(driftless_deletes(&events, Some(app.name())), Vec::<String>::new(), "nothing pruned before the kill");

    // started again: converges to revision 2
    let second = AgentProcess::start(inventory.name(), &args).await;
    let synced = wait_synced(&second, &source, &r2, Duration::from_secs(120)).await;
    println!("converged {:?} after the restart", killed_at.elapsed());
    events.extend(audit.read());

    let after = uids(&client, app.name()).await;
    let mut expected_before = before.clone();
    expected_before.remove("ConfigMap/keep-000");
    assert_eq!(lost(&expected_before, &after), Vec::<String>::new(), "objects wrongly deleted");
    assert_eq!(after.len(), 49 + 300 + 30, "exactly revision 2: {:?}", after.keys().filter(|k| !k.contains("new-")).collect::<Vec<_>>());
    assert!(!after.contains_key("ConfigMap/keep-000"), "the member removed from git is pruned");
    let deletes = driftless_deletes(&events, Some(app.name()));
    assert_eq!(deletes, [format!("configmaps {}/keep-000 -> 200", app.name())], "only the member removed from git was deleted, once");

    // no duplicate or failed state: one ApplySet parent, every member in it, Synced everywhere
    let parents = Api::<ConfigMap>::namespaced(client.clone(), inventory.name())
        .list(&ListParams::default().labels("applyset.kubernetes.io/id"))
        .await
        .unwrap()
        .items;
    let names: Vec<String> = parents.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, [format!("driftless-{source}")], "one parent");
    let parent = &parents[0];
    let id = parent.metadata.labels.as_ref().unwrap()["applyset.kubernetes.io/id"].clone();
    let annotations = parent.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("driftless.dev/revision"), Some(&r2), "{annotations:?}");
    assert_eq!(annotations.get("driftless.dev/state").map(String::as_str), Some("Synced"), "{annotations:?}");
    let members = Api::<ConfigMap>::namespaced(client.clone(), app.name())
        .list(&ListParams::default().labels(&format!("applyset.kubernetes.io/part-of={id}")))
        .await
        .unwrap()
        .items
        .len()
        + Api::<Deployment>::namespaced(client.clone(), app.name())
            .list(&ListParams::default().labels(&format!("applyset.kubernetes.io/part-of={id}")))
            .await
            .unwrap()
            .items
            .len();
    assert_eq!(members, 49 + 300 + 30, "every object is a member of the one set");
    assert_eq!(synced["reason"], "", "{synced:#}");
    assert_eq!(metric_sum(&second, "driftless_sync_failures_total").await, 0.0, "the restarted agent never failed a sync");
    assert_eq!(metric_sum(&second, "driftless_panics_total").await, 0.0);
    drop(second);
    app.cleanup().await;
    inventory.cleanup().await;
    println!("test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. 429 Too Many Requests (API Priority and Fairness, for this test's ServiceAccount only)
// ---------------------------------------------------------------------------------------------

/// A kubeconfig for the cluster of the `admin` kubeconfig that authenticates with `token`.
fn token_kubeconfig(admin: &Path, token: &str, dir: &Path) -> std::path::PathBuf {
    let admin = kube::config::Kubeconfig::read_from(admin).expect("the admin kubeconfig");
    let cluster = admin.clusters[0].cluster.clone().expect("a cluster");
    let text = serde_json::to_string_pretty(&json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster.server, "certificate-authority-data": cluster.certificate_authority_data}}],
        "users": [{"name": "throttled", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "throttled"}}],
        "current-context": "local",
    }))
    .unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// A client from a kubeconfig that does not retry anything (to see the server's answers as
/// they are).
async fn raw_client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// GET `path` with a client; returns (status, response headers).
async fn raw_get(client: &Client, path: &str) -> (u16, http::HeaderMap) {
    let request = http::Request::get(path).body(Vec::<u8>::new()).unwrap();
    let request = request.map(kube::client::Body::from);
    let response = client.send(request).await.expect("a response");
    (response.status().as_u16(), response.headers().clone())
}

/// ConfigMaps of the throttled revision.
const THROTTLED_OBJECTS: usize = 40;

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_are_retried_and_converge() {
    let started = Instant::now();
    // A control plane of its own: how many seats a request takes depends on the whole cluster (a
    // LIST is estimated from the number of objects of its kind, which the shared cluster's other
    // tests keep changing), so only a cluster with nothing else going on throttles the same way
    // every run.
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start("faults-429")).await.unwrap();
    let admin = cluster.client().await;
    let (inventory, app) = ("driftless-system", "app");
    for name in [inventory, app] {
        let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.unwrap();
    }
    let sa = "driftless-throttled";
    let user = format!("system:serviceaccount:{inventory}:{sa}");
    let flow = "driftless-throttled";

    // a ServiceAccount (an admin kubeconfig is in system:masters, which the `exempt` FlowSchema
    // never limits), allowed everything
    let sa_api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), inventory);
    sa_api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap()).await.unwrap();
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
    crbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": inventory}],
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let token: k8s_openapi::api::authentication::v1::TokenRequest = sa_api
        .create_token_request(
            sa,
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let files = TempDir::new().unwrap();
    let kubeconfig = token_kubeconfig(&cluster.kubeconfig(), &token.status.unwrap().token, files.path());

    // its requests get a priority level of one share that rejects instead of queuing: 3 seats
    // (ceil(600 * 1 / 246): the server's 600 shared by the built-in levels' 245 shares and this
    // one), no borrowing, and a 429 for every request beyond them
    let params = kube::api::PatchParams::apply("faults-test");
    let plcs = driftless_tests::agent::dynamic_api(
        &admin,
        "flowcontrol.apiserver.k8s.io/v1",
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
        "",
    );
    let fss = driftless_tests::agent::dynamic_api(&admin, "flowcontrol.apiserver.k8s.io/v1", "FlowSchema", "flowschemas", "");
    plcs.patch(
        flow,
        &params,
        &kube::api::Patch::Apply(json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": {"name": flow},
            "spec": {"type": "Limited", "limited": {
                "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"}}}
        })),
    )
    .await
    .unwrap();
    let fs = fss
        .patch(flow, &params, &kube::api::Patch::Apply(json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": flow},
            "spec": {
                "priorityLevelConfiguration": {"name": flow},
                // before `service-accounts` (9000) and every other schema that could match it
                "matchingPrecedence": 90,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [{
                    "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": inventory}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            }
        })))
        .await
        .unwrap();
    let fs_uid = fs.metadata.uid.unwrap();

    // the fault is real: the ServiceAccount's requests are classified there, and a burst of them
    // is answered 429 with a Retry-After
    let throttled = raw_client(&kubeconfig).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, headers) = raw_get(&throttled, "/api").await;
        if headers.get("x-kubernetes-pf-flowschema-uid").and_then(|v| v.to_str().ok()) == Some(fs_uid.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the FlowSchema is not in effect within 30s: {headers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = format!("/api/v1/namespaces/{app}/configmaps");
    let burst = futures::future::join_all((0..60).map(|_| raw_get(&throttled, &list))).await;
    let rejected: Vec<&http::HeaderMap> = burst.iter().filter(|(s, _)| *s == 429).map(|(_, h)| h).collect();
    assert!(!rejected.is_empty(), "a burst of 60 requests was never answered 429: {:?}", burst.iter().map(|(s, _)| s).collect::<Vec<_>>());
    let retry_after = rejected[0].get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    println!("{} of 60 requests rejected with 429, Retry-After {retry_after:?}", rejected.len());
    assert!(retry_after.is_some(), "429 without Retry-After: {:?}", rejected[0]);

    // `driftless run` as that ServiceAccount: THROTTLED_OBJECTS ConfigMaps, dry-run and applied
    // concurrently (up to 32 at a time) against 3 seats
    let repo = GitFixture::new();
    for i in 0..THROTTLED_OBJECTS {
        repo.write(format!("cm-{i:02}.yaml"), configmap(&format!("cm-{i:02}"), "1"));
    }
    let commit = repo.commit("configmaps");
    let source = unique_name("throttled");
    let mut audit = AuditTail::from_end(cluster.audit_log());
    let sync_began = Instant::now();
    let args = ["--repo", &repo.url(), "--name", &source, "--namespace", app, "--interval", "2s"];
    let agent = AgentProcess::start_on(&kubeconfig, inventory, &args, &[]).await;
    wait_synced(&agent, &source, &commit, Duration::from_secs(120)).await;
    let took = sync_began.elapsed();
    assert_eq!(configmaps(&admin, app).await.len(), THROTTLED_OBJECTS, "every object applied");
    let failed_syncs = metric_sum(&agent, "driftless_sync_failures_total").await;
    let log = sync_log(&agent);
    println!("Synced after {took:?}, {failed_syncs} failed syncs before; the agent's log:\n{}", log.join("\n"));
    // the client's retries absorbed the 429s: the first sync converged, no resync was needed
    assert_eq!(failed_syncs, 0.0, "a sync failed under 429s:\n{}", log.join("\n"));
    drop(agent);

    // the audit log: 429s to Driftless's requests, followed by the same requests succeeding
    let events: Vec<Value> = audit.read().into_iter().filter(|e| e["user"]["username"] == user.as_str() && by_driftless(e)).collect();
    let too_many: Vec<&Value> = events.iter().filter(|e| code(e) == 429).collect();
    assert!(!too_many.is_empty(), "no 429 in {} requests of the sync", events.len());
    let key = |e: &Value| format!("{} {}", e["verb"].as_str().unwrap_or_default(), e["requestURI"].as_str().unwrap_or_default());
    let received = |e: &Value| e["requestReceivedTimestamp"].as_str().unwrap_or_default().to_string();
    // an apply (or its dry-run) of one object: one request per object and sync, so the next
    // one with the same URI is its retry
    let object_apply = |e: &Value| e["verb"] == "patch" && e["objectRef"]["namespace"] == app && e["objectRef"]["name"].is_string();
    let mut retried_ok = 0;
    let mut gaps = Vec::new();
    for rejected in &too_many {
        let at = received(rejected);
        let Some(next) = events.iter().find(|e| key(e) == key(rejected) && received(e) > at) else { continue };
        if (200..300).contains(&code(next)) {
            retried_ok += 1;
        }
        if object_apply(rejected) {
            gaps.push(seconds_between(&at, &received(next)));
        }
    }
    let rejected_objects: BTreeSet<&str> =
        too_many.iter().filter(|e| object_apply(e)).filter_map(|e| e["objectRef"]["name"].as_str()).collect();
    gaps.sort_by(f64::total_cmp);
    println!(
        "{} requests, {} answered 429 ({} applies or dry-runs of {} objects), {retried_ok} 429s followed by the same request succeeding; retry gaps of applies min {:?} median {:?} max {:?}",
        events.len(),
        too_many.len(),
        too_many.iter().filter(|e| object_apply(e)).count(),
        rejected_objects.len(),
        gaps.first(),
        gaps.get(gaps.len() / 2),
        gaps.last(),
    );
    assert!(!rejected_objects.is_empty(), "no apply was answered 429");
    assert!(retried_ok > 0, "no 429 was followed by the same request succeeding");
    // every object's last write succeeded
    for i in 0..THROTTLED_OBJECTS {
        let name = format!("cm-{i:02}");
        let last = events.iter().rev().find(|e| is_write(e) && e["objectRef"]["name"] == name.as_str()).expect("a write");
        assert!((200..300).contains(&code(last)), "the last write of {name} succeeded: {last}");
    }
    // Retry-After (1 s) honoured: no apply is repeated sooner than it asks, give or take the
    // resolution of the timestamps
    let wait: f64 = retry_after.unwrap().parse().unwrap();
    assert!(gaps.first().is_some_and(|g| *g >= wait * 0.9), "a 429 was retried sooner than Retry-After {wait}s: {gaps:?}");
    assert_eq!(driftless_deletes(&events, None), Vec::<String>::new(), "Driftless deleted nothing");
    println!("test took {:?}", started.elapsed());
}

/// Seconds from one RFC 3339 timestamp (`2025-01-01T00:00:00.123456Z`) to another on the same day.
fn seconds_between(a: &str, b: &str) -> f64 {
    let secs = |t: &str| -> f64 {
        let time = t.split('T').nth(1).unwrap_or_default().trim_end_matches('Z');
        let mut parts = time.split(':');
        let h: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
        let m: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
        let s: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
        h * 3600.0 + m * 60.0 + s
    };
    secs(b) - secs(a)
}

// ---------------------------------------------------------------------------------------------
// 4. a ResourceQuota that passes every dry-run and rejects one object at apply
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_that_rejects_one_object_at_apply_reports_it_and_prunes_nothing() {
    let started = Instant::now();
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "faults-quota").await;
    let repo = GitFixture::new();
    repo.write("old.yaml", configmap("old", "1")).write("kept.yaml", configmap("kept", "1"));
    repo.commit("old and kept");
    let source = driftless_tests::agent::source("quota", &repo.url(), ns.name());
    let first = agent.sync(&source).await;
    assert_eq!(first.state, State::Synced, "{}", first.message);
    let before = uids(&agent.client, ns.name()).await;

    // room for exactly one ConfigMap more (kube-root-ca.crt, old and kept use 3)
    let quotas: Api<ResourceQuota> = Api::namespaced(agent.client.clone(), ns.name());
    let used = Api::<ConfigMap>::namespaced(agent.client.clone(), ns.name()).list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(used, 3);
    let hard = (used + 1).to_string();
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "configmap-quota"}, "spec": {"hard": {"count/configmaps": hard}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    // admission refuses every ConfigMap until the quota controller has counted the usage
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = quotas.get("configmap-quota").await.unwrap();
        let status = q.status.unwrap_or_default();
        let counted = status.used.as_ref().and_then(|u| u.get("count/configmaps")).map(|q| q.0.clone());
        if status.hard.is_some() && counted.as_deref() == Some("3") {
            break;
        }
        assert!(Instant::now() < deadline, "the quota's usage is not counted within 30s: {counted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the next commit removes `old`, changes `kept` and adds two ConfigMaps and a Secret, all in
    // one stage (applied concurrently). Each ConfigMap's dry-run fits (3 + 1 <= 4); at apply the
    // first one written takes the last slot and the quota rejects the other.
    repo.remove("old.yaml");
    repo.write("kept.yaml", configmap("kept", "2"))
        .write("new-a.yaml", configmap("new-a", "1"))
        .write("new-b.yaml", configmap("new-b", "1"))
        .write("secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: new-secret\nstringData:\n  key: value\n");
    repo.commit("drop old, change kept, add new-a, new-b and a Secret");
    let audit_since = AuditTail::from_end(audit_log_path());
    let mut audit = audit_since;
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Failed, "{}", report.message);
    assert_eq!(report.reason, Some(Reason::ApplyFailed), "{}", report.message);

    // exactly one of new-a and new-b was rejected, by the quota, and named
    let live = uids(&agent.client, ns.name()).await;
    let created: Vec<&str> = ["new-a", "new-b"].into_iter().filter(|n| live.contains_key(&format!("ConfigMap/{n}"))).collect();
    assert_eq!(created.len(), 1, "exactly one of the two fits the quota: {live:?}");
    let rejected = if created == ["new-a"] { "new-b" } else { "new-a" };
    println!("{rejected} rejected: {}", report.message);
    assert!(report.message.contains(rejected), "the message names the rejected object {rejected}: {}", report.message);
    assert!(report.message.contains("configmap-quota"), "the message names the quota: {}", report.message);
    let failed: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| c.id.name.clone()).collect();
    assert_eq!(failed, [rejected], "{:#?}", report.changes);
    let entry = report.changes.entries.iter().find(|c| c.action == Action::Failed).unwrap();
    assert!(entry.message.contains("exceeded quota"), "the per-object error says why: {}", entry.message);

    // the others were applied; nothing was pruned
    let cms: BTreeMap<String, String> = Api::<ConfigMap>::namespaced(agent.client.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.metadata.name?, c.data?.get("value")?.clone())))
        .collect();
    assert_eq!(cms.get("kept").map(String::as_str), Some("2"), "the change to kept is applied: {cms:?}");
    let secrets = driftless_tests::agent::dynamic_api(&agent.client, "v1", "Secret", "secrets", ns.name());
    assert!(driftless_tests::agent::get(&secrets, "new-secret").await.is_some(), "the Secret is applied");
    assert_eq!(report.changes.count(Action::Deleted), 0);
    assert_eq!(lost(&before, &live), Vec::<String>::new(), "old (removed from git in the same commit) is still there");
    let events = audit.read();
    assert_eq!(driftless_deletes(&events, Some(ns.name())), Vec::<String>::new(), "no delete was sent");

    // the fault ends (room for one more): the next sync converges and only then prunes old
    quotas
        .patch("configmap-quota", &PatchParams::default(), &Patch::Merge(json!({"spec": {"hard": {"count/configmaps": "10"}}})))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let converged = loop {
        let report = agent.sync(&source).await;
        if report.state == State::Synced {
            break report;
        }
        assert!(Instant::now() < deadline, "no convergence within 30s after the quota was raised: {:?} {}", report.reason, report.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let deleted: Vec<String> =
        converged.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.name.clone()).collect();
    assert_eq!(deleted, ["old"], "{:#?}", converged.changes);
    let after = uids(&agent.client, ns.name()).await;
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), ["ConfigMap/kept", "ConfigMap/new-a", "ConfigMap/new-b"], "exactly the revision");
    assert_eq!(after["ConfigMap/kept"], before["ConfigMap/kept"], "kept is the same object");
    ns.cleanup().await;
    println!("test took {:?}", started.elapsed());
}
