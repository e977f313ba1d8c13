//! Recovery from a bad commit on the real control plane: a newer commit ends a wave's wait for
//! health, and `rollback: onFailure` re-applies the last good revision when a commit fails its
//! health check, keeping the objects both share and pruning what the failed one added.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use driftless::config::Rollback;
use driftless::live::health::Health;
use driftless::report::Reason;
use driftless::status::model::SyncState;
use driftless_tests::agent::{
    audit_events, configmap, driftless_requests_since, dynamic_api, get, is_write, Agent, RunningSource, STUCK_DEPLOYMENT as STUCK,
};
use driftless_tests::{unique_name, GitFixture, TestNamespace};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};

fn wave(manifest: &str, wave: i64) -> String {
    manifest.replacen("metadata:\n", &format!("metadata:\n  annotations: {{driftless.dev/wave: \"{wave}\"}}\n"), 1)
}

/// A ConfigMap's `value`.
async fn value(agent: &Agent, ns: &str, name: &str) -> Option<String> {
    let api = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns);
    get(&api, name).await.and_then(|o| o["data"]["value"].as_str().map(String::from))
}

/// The uid of each ConfigMap in the namespace.
async fn uids(agent: &Agent, ns: &str) -> BTreeMap<String, String> {
    let api = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns);
    let mut out = BTreeMap::new();
    for name in ["settings", "keep"] {
        if let Some(o) = get(&api, name).await {
            out.insert(name.to_string(), o["metadata"]["uid"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_commit_ends_a_wait_for_health_and_is_applied() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "recover-cancel").await;
    let repo = GitFixture::new();
    // wave 0 never becomes Healthy; wave 1 waits for it, for up to ten minutes
    repo.write("stuck.yaml", STUCK);
    repo.write("base.yaml", configmap("base", "1"));
    repo.write("late.yaml", wave(&configmap("late", "1"), 1));
    let stuck_commit = repo.commit("a rollout that cannot finish");
    let mut source = driftless_tests::agent::source("cancel", &repo.url(), ns.name());
    source.interval = Duration::from_secs(1);
    source.health_timeout = Duration::from_secs(600);
    let run = RunningSource::start(&agent, source);
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    driftless_tests::wait_for("wave 0 applied", Duration::from_secs(30), || async { get(&deployments, "stuck").await.map(|_| ()) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(run.status().last_applied_commit.is_none(), "still waiting for wave 0's health");

    // the fix lands while the reconcile waits: the wait ends, the new commit is applied
    repo.remove("stuck.yaml");
    let fixed = repo.commit("drop the stuck rollout");
    let pushed = Instant::now();
    run.wait("the new commit Synced", Duration::from_secs(60), |s| {
        s.last_applied_commit.as_deref() == Some(fixed.as_str()) && s.state == SyncState::Synced
    })
    .await;
    println!("superseded commit {stuck_commit}; the next one was Synced {:?} after its push", pushed.elapsed());
    let cms = driftless_tests::agent::configmaps(&agent.client, ns.name()).await;
    assert!(cms.contains_key("late"), "wave 1 applied: {cms:?}");
    assert!(get(&deployments, "stuck").await.is_none(), "the superseded revision's object left git and was pruned");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_failing_its_health_check_is_rolled_back_to_the_last_good_one() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "recover-rollback").await;
    let repo = GitFixture::new();
    repo.write("settings.yaml", configmap("settings", "v1"));
    repo.write("keep.yaml", configmap("keep", "1"));
    let good = repo.commit("v1");
    let mut source = driftless_tests::agent::source("rollback", &repo.url(), ns.name());
    source.interval = Duration::from_secs(1);
    source.health_timeout = Duration::from_secs(4);
    source.rollback = Rollback::OnFailure;
    let run = RunningSource::start(&agent, source);
    run.wait("v1 Synced and Healthy", Duration::from_secs(30), |s| {
        s.last_applied_commit.as_deref() == Some(good.as_str()) && s.state == SyncState::Synced && s.health == Health::Healthy
    })
    .await;
    let before = uids(&agent, ns.name()).await;
    assert_eq!(before.len(), 2);

    // a bad commit: a changed setting and a Deployment that never becomes Available
    let since = audit_events().len();
    repo.write("settings.yaml", configmap("settings", "v2"));
    repo.write("stuck.yaml", STUCK);
    let bad = repo.commit("v2 with a stuck rollout");
    run.wait("the rollback", Duration::from_secs(60), |s| s.state == SyncState::RolledBack).await;
    let status = run.status();
    assert_eq!(status.reason, Some(Reason::RolledBack));
    assert!(status.message.contains(&bad[..12]) && status.message.contains(&good[..12]), "both commits named: {}", status.message);
    assert!(status.message.contains("not Healthy"), "the cause named: {}", status.message);
    assert_eq!(status.last_applied_commit.as_deref(), Some(good.as_str()));
    assert_eq!(value(&agent, ns.name(), "settings").await.as_deref(), Some("v1"), "the good revision's data is back");
    assert_eq!(uids(&agent, ns.name()).await, before, "the objects both revisions hold kept their uids");
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    assert!(get(&deployments, "stuck").await.is_none(), "what the failed revision added is pruned");
    let deletes: Vec<String> = driftless_requests_since(since, ns.name(), &run.name)
        .iter()
        .filter(|e| e["verb"] == "delete" && is_write(e))
        .map(|e| format!("{}/{}", e["objectRef"]["resource"].as_str().unwrap_or(""), e["objectRef"]["name"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(deletes, ["deployments/stuck"], "exactly one object deleted");

    // the failed commit is not retried while the branch names it
    let since = audit_events().len();
    tokio::time::sleep(Duration::from_secs(4)).await; // about four polls
    let writes: Vec<_> = driftless_requests_since(since, ns.name(), &run.name)
        .into_iter()
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == ns.name())
        .collect();
    assert!(writes.is_empty(), "the failed commit was applied again: {writes:#?}");
    assert_eq!(run.status().state, SyncState::RolledBack);

    // a newer commit lands and is applied
    repo.remove("stuck.yaml");
    repo.write("settings.yaml", configmap("settings", "v3"));
    let fixed = repo.commit("v3");
    run.wait("v3 Synced", Duration::from_secs(60), |s| {
        s.last_applied_commit.as_deref() == Some(fixed.as_str()) && s.state == SyncState::Synced
    })
    .await;
    assert_eq!(value(&agent, ns.name(), "settings").await.as_deref(), Some("v3"));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_healthy_only_after_its_health_timeout_fails_then_turns_synced() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "recover-late").await;
    // pods of this Deployment fit only a node that does not exist yet (tainted for it alone)
    let label = unique_name("late-node");
    let late = STUCK
        .replace("name: stuck", "name: late")
        .replace("{app: stuck}", "{app: late}")
        .replace("{no-such-node: \"true\"}", &format!("{{{label}: \"true\"}}"))
        .replace(
            "      containers:",
            &format!("      tolerations: [{{key: {label}, operator: Exists, effect: NoSchedule}}]\n      containers:"),
        );
    let repo = GitFixture::new();
    repo.write("late.yaml", late);
    let commit = repo.commit("a rollout that finishes late");
    let mut source = driftless_tests::agent::source("late", &repo.url(), ns.name());
    source.interval = Duration::from_secs(1);
    source.health_timeout = Duration::from_secs(3);
    let run = RunningSource::start(&agent, source);
    run.wait("HealthCheckFailed after the apply", Duration::from_secs(60), |s| {
        s.state == SyncState::Failed && s.reason == Some(Reason::HealthCheckFailed)
    })
    .await;
    assert_eq!(run.status().last_applied_commit.as_deref(), Some(commit.as_str()), "the revision was applied");

    // the node arrives: the rollout finishes, the source turns Synced without a new commit
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": label, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {"type": "kwok", label.as_str(): "true"}},
        "spec": {"taints": [{"key": label, "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "10", "memory": "10Gi", "pods": "10"}, "capacity": {"cpu": "10", "memory": "10Gi", "pods": "10"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    // (were this to time out, the node stays behind: tainted for this test alone, it takes no other pod)
    run.wait("Synced once Healthy", Duration::from_secs(90), |s| s.state == SyncState::Synced && s.health == Health::Healthy).await;
    let _ = nodes.delete(&label, &DeleteParams::default()).await;
    ns.cleanup().await;
}
