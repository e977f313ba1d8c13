//! Leader election between two `driftless run` processes on the real control plane: only the
//! leader writes (the audit log tells them apart by user agent), and when the leader gets
//! SIGTERM it releases the Lease and the standby takes over within 5 seconds.

use std::time::{Duration, Instant};

use driftless_tests::agent::{audit_events, configmap, configmaps, is_write, AgentProcess};
use driftless_tests::{client, unique_name, wait_for, GitFixture, TestNamespace};
use serde_json::Value;

/// Successful writes to the app namespace by one replica (its user agent names it), with their
/// times.
fn writes_by(events: &[Value], namespace: &str, replica: &str) -> Vec<String> {
    let marker = format!("({replica})");
    events
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/") && u.contains(&marker)))
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == namespace)
        .filter(|e| e["responseStatus"]["code"].as_i64().is_some_and(|c| c < 300))
        .map(|e| e["stageTimestamp"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_writes_and_a_terminated_leader_hands_over_within_five_seconds() {
    let client = client().await;
    let inventory = TestNamespace::new(&client, "leader-inv").await;
    let app = TestNamespace::new(&client, "leader-app").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    repo.commit("a");
    let name = unique_name("leader");
    let args = ["--repo", &repo.url(), "--name", &name, "--namespace", app.name(), "--interval", "1s", "--leader-elect"];
    let since = audit_events().len();

    let first = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", "replica-a")]).await;
    wait_for("replica-a to lead", Duration::from_secs(20), || async { (first.gauge("driftless_leader").await == Some(1.0)).then_some(()) }).await;
    let second = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", "replica-b")]).await;
    wait_for("replica-a's first sync", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("a").then_some(())
    })
    .await;

    // while a leads, b stands by and a applies new commits
    repo.write("b.yaml", configmap("b", "1"));
    repo.commit("b");
    wait_for("the second commit", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("b").then_some(())
    })
    .await;
    assert_eq!(second.gauge("driftless_leader").await, Some(0.0), "replica-b stands by");
    assert_eq!(second.get("/healthz").await.status, 200, "a standby is alive");

    // SIGTERM to the leader: it releases the lease, the standby takes over within 5 s
    let stopped = Instant::now();
    first.terminate();
    wait_for("replica-b to lead", Duration::from_secs(10), || async { (second.gauge("driftless_leader").await == Some(1.0)).then_some(()) }).await;
    let handover = stopped.elapsed();
    assert!(handover < Duration::from_secs(5), "handed over in {handover:?}");
    let mut first = first;
    wait_for("replica-a to exit", Duration::from_secs(10), || std::future::ready(first.exited())).await;

    repo.write("c.yaml", configmap("c", "1"));
    repo.commit("c");
    wait_for("the third commit, applied by replica-b", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("c").then_some(())
    })
    .await;

    // the audit log: a wrote before the handover, b only after it; never both
    let events: Vec<Value> = audit_events().into_iter().skip(since).collect();
    let by_a = writes_by(&events, app.name(), "replica-a");
    let by_b = writes_by(&events, app.name(), "replica-b");
    assert!(!by_a.is_empty() && !by_b.is_empty(), "a wrote {}, b wrote {}", by_a.len(), by_b.len());
    let last_a = by_a.iter().max().unwrap();
    let first_b = by_b.iter().min().unwrap();
    assert!(last_a < first_b, "a's last write {last_a} is after b's first {first_b}");
    println!("handover in {handover:?}; replica-a wrote {} times, replica-b {} times", by_a.len(), by_b.len());
    app.cleanup().await;
    inventory.cleanup().await;
}
