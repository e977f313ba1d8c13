//! Live state on the real control plane: drift is corrected from watch events, changes by
//! others to fields Driftless does not set are left alone, fights back off, waves wait for
//! health, and a resync with nothing new sends nothing to the API server.

use std::time::{Duration, Instant};

use driftless::live::health::Health;
use driftless::report::{Reason, State};
use driftless::status::model::SyncState;
use driftless_tests::agent::{
    audit_events, configmap, driftless_requests_since, dynamic_api, get, is_dry_run, is_write, Agent, RunningSource,
};
use driftless_tests::{wait_for, GitFixture, TestNamespace};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: api
          image: registry.example/api:1
"#;

/// Edits a ConfigMap's `value` as another field manager would (`kubectl edit`).
async fn edit(agent: &Agent, ns: &str, name: &str, value: &str, manager: &str) {
    let api = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns);
    let params = PatchParams { field_manager: Some(manager.into()), ..PatchParams::default() };
    api.patch(name, &params, &Patch::Merge(json!({"data": {"value": value}}))).await.unwrap();
}

async fn value(agent: &Agent, ns: &str, name: &str) -> Option<String> {
    let api = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns);
    get(&api, name).await.and_then(|o| o["data"]["value"].as_str().map(String::from))
}

async fn running(agent: &Agent, repo: &GitFixture, ns: &str, tweak: impl FnOnce(&mut driftless::config::Source)) -> RunningSource {
    let mut source = driftless_tests::agent::source("live", &repo.url(), ns);
    source.interval = Duration::from_secs(3600);
    tweak(&mut source);
    let run = RunningSource::start(agent, source);
    run.wait("the first sync", Duration::from_secs(30), |s| s.last_applied_commit.is_some()).await;
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outside_edit_is_reverted_and_a_deleted_object_comes_back() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-heal").await;
    let repo = GitFixture::new();
    repo.write("cm.yaml", configmap("settings", "from-git"));
    repo.commit("settings");
    let run = running(&agent, &repo, ns.name(), |_| {}).await;
    run.wait("the watch to see the object Healthy", Duration::from_secs(10), |s| s.state == SyncState::Synced).await;

    edit(&agent, ns.name(), "settings", "by-hand", "kubectl-edit").await;
    let edited = Instant::now();
    wait_for("the edit to be reverted", Duration::from_secs(5), || async {
        (value(&agent, ns.name(), "settings").await.as_deref() == Some("from-git")).then_some(())
    })
    .await;
    assert!(edited.elapsed() < Duration::from_secs(2), "reverted in {:?}", edited.elapsed());

    let api = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    api.delete("settings", &DeleteParams::default()).await.unwrap();
    wait_for("the deleted object to come back", Duration::from_secs(5), || async {
        (value(&agent, ns.name(), "settings").await.as_deref() == Some("from-git")).then_some(())
    })
    .await;
    run.wait("two corrections counted", Duration::from_secs(5), |s| s.drift_corrections >= 2).await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_owned_by_an_hpa_are_left_alone() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-hpa").await;
    let repo = GitFixture::new();
    repo.write("api.yaml", DEPLOYMENT);
    repo.write(
        "hpa.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: api\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: api}\n  minReplicas: 3\n  maxReplicas: 5\n  metrics:\n    - type: Resource\n      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}\n",
    );
    repo.commit("api with an hpa");
    let since = audit_events().len();
    let run = running(&agent, &repo, ns.name(), |_| {}).await;
    // the HPA controller raises the Deployment to its minimum of 3 (the manifest sets no replicas)
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    wait_for("the HPA to scale api to 3", Duration::from_secs(60), || async {
        let d = get(&deployments, "api").await?;
        (d["spec"]["replicas"] == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = get(&deployments, "api").await.unwrap();
    assert_eq!(d["spec"]["replicas"], 3, "Driftless did not scale it back");
    let writes: Vec<_> = driftless_requests_since(since, ns.name(), &run.name)
        .into_iter()
        .filter(|e| is_write(e) && e["objectRef"]["resource"] == "deployments")
        .collect();
    assert_eq!(writes.len(), 1, "only the initial apply of the Deployment: {writes:#?}");
    assert_eq!(run.status().drift_corrections, 0);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn self_heal_off_reports_drift_without_writing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-report").await;
    let repo = GitFixture::new();
    repo.write("cm.yaml", configmap("settings", "from-git"));
    repo.commit("settings");
    let run = running(&agent, &repo, ns.name(), |s| s.self_heal = false).await;
    run.wait("Synced", Duration::from_secs(10), |s| s.state == SyncState::Synced).await;

    let since = audit_events().len();
    edit(&agent, ns.name(), "settings", "by-hand", "kubectl-edit").await;
    run.wait("OutOfSync", Duration::from_secs(5), |s| s.state == SyncState::OutOfSync).await;
    let status = run.status();
    assert!(status.message.contains("kubectl-edit"), "{}", status.message);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(value(&agent, ns.name(), "settings").await.as_deref(), Some("by-hand"));
    // writes to the app's objects; the parent's status annotations are not app writes
    let writes = driftless_requests_since(since, ns.name(), &run.name)
        .into_iter()
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == ns.name())
        .count();
    assert_eq!(writes, 0);
    assert_eq!(run.status().drift_corrections, 0);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fight_is_reported_and_backed_off() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-fight").await;
    let repo = GitFixture::new();
    repo.write("cm.yaml", configmap("contested", "from-git"));
    repo.commit("contested");
    let run = running(&agent, &repo, ns.name(), |_| {}).await;
    run.wait("Synced", Duration::from_secs(10), |s| s.state == SyncState::Synced).await;

    // another controller rewrites the field every 100ms for 4 seconds
    let since = audit_events().len();
    let started = Instant::now();
    let mut edits = 0;
    while started.elapsed() < Duration::from_secs(4) {
        edit(&agent, ns.name(), "contested", &format!("theirs-{edits}"), "rogue-controller").await;
        edits += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run.status().fights, 1, "the fight is reported once");
    // without backoff it would be corrected after almost every edit; with it: 3 at once, then 1s, 2s
    // (the status counts a correction once its write returned: read both until they agree)
    let corrections = wait_for("the status to count every correction the audit log shows", Duration::from_secs(5), || async {
        let written = driftless_requests_since(since, ns.name(), &run.name)
            .into_iter()
            .filter(|e| is_write(e) && e["objectRef"]["namespace"] == ns.name())
            .count();
        (run.status().drift_corrections as usize == written).then_some(written)
    })
    .await;
    assert!(edits >= 20, "the test made {edits} edits");
    assert!((3..=6).contains(&corrections), "{corrections} corrections for {edits} edits");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wave_one_waits_for_wave_zero_to_be_available() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-waves").await;
    let repo = GitFixture::new();
    // db turns Available only once its pod has been ready for 2 s (maxUnavailable 0: one
    // available replica is the minimum), well after the controller's first status writes
    let db = DEPLOYMENT
        .replace("name: api", "name: db")
        .replace("app: api", "app: db")
        .replace("spec:\n  selector:", "spec:\n  minReadySeconds: 2\n  strategy:\n    rollingUpdate: {maxUnavailable: 0}\n  selector:");
    repo.write("db.yaml", db);
    repo.write("app.yaml", configmap("app", "1").replace("metadata:\n", "metadata:\n  annotations: {driftless.dev/wave: \"1\"}\n"));
    repo.commit("db first, then app");
    let source = driftless_tests::agent::source("waves", &repo.url(), ns.name());
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);

    // from the audit log: when db and the app ConfigMap were written
    let events = audit_events();
    let time_of = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events.iter().filter(|e| pred(e)).map(|e| e["stageTimestamp"].as_str().unwrap_or_default().to_string()).next()
    };
    let ns_name = ns.name().to_string();
    let db_applied = time_of(&|e| {
        is_write(e)
            && e["objectRef"]["namespace"] == ns_name.as_str()
            && e["objectRef"]["name"] == "db"
            && e["objectRef"]["resource"] == "deployments"
    })
    .expect("db applied");
    let app_applied = time_of(&|e| {
        is_write(e)
            && e["objectRef"]["namespace"] == ns_name.as_str()
            && e["objectRef"]["name"] == "app"
            && e["objectRef"]["resource"] == "configmaps"
    })
    .expect("app applied");
    // and from db itself: when its Available condition turned True (whole seconds)
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    let db = get(&deployments, "db").await.unwrap();
    assert_eq!(db["status"]["availableReplicas"], 1);
    let available = db["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available" && c["status"] == "True"))
        .unwrap_or_else(|| panic!("db is Available: {:#}", db["status"]));
    let db_available = available["lastTransitionTime"].as_str().expect("lastTransitionTime").to_string();
    // the transition came seconds after db was applied (so a second's precision tells them apart)...
    assert!(micros(&db_available) > micros(&db_applied), "db applied at {db_applied}, Available at {db_available}");
    // ...and the app ConfigMap of wave 1 was written only after it
    assert!(micros(&app_applied) >= micros(&db_available), "app written at {app_applied}, before db turned Available at {db_available}");
    ns.cleanup().await;
}

/// An RFC 3339 UTC time (`...:05Z` or `...:05.123456Z`) as `...:05.123456`, which sorts as time.
fn micros(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (seconds, fraction) = t.split_once('.').unwrap_or((t, ""));
    assert_eq!(seconds.len(), 19, "not an RFC 3339 UTC time: {t}");
    format!("{seconds}.{fraction:0<6}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_health_timeout_fails_the_sync_and_prunes_nothing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-timeout").await;
    let repo = GitFixture::new();
    for i in 0..4 {
        repo.write(format!("c{i}.yaml"), configmap(&format!("c{i}"), "1"));
    }
    repo.commit("configmaps");
    let mut source = driftless_tests::agent::source("timeout", &repo.url(), ns.name());
    source.health_timeout = Duration::from_secs(3);
    assert_eq!(agent.sync(&source).await.state, State::Synced);

    // a wave 0 Deployment that can never be scheduled, a wave 1 object, and c0 removed from git
    let stuck = DEPLOYMENT
        .replace("name: api", "name: stuck")
        .replace("      containers:", "      nodeSelector: {no-such-node: \"true\"}\n      containers:");
    repo.write("stuck.yaml", stuck);
    repo.write("late.yaml", configmap("late", "1").replace("metadata:\n", "metadata:\n  annotations: {driftless.dev/wave: \"1\"}\n"));
    repo.remove("c0.yaml");
    repo.commit("stuck rollout");
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Failed);
    assert_eq!(report.reason, Some(Reason::HealthCheckFailed), "{}", report.message);
    assert!(report.message.contains("stuck"), "{}", report.message);
    let cms = driftless_tests::agent::configmaps(&agent.client, ns.name()).await;
    assert!(cms.contains_key("c0"), "nothing pruned");
    assert!(!cms.contains_key("late"), "wave 1 not applied");
    assert_eq!(report.changes.count(driftless::report::changes::Action::Deleted), 0);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resync_with_nothing_new_sends_no_write_and_no_dry_run() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "live-noop").await;
    let repo = GitFixture::new();
    for i in 0..20 {
        repo.write(format!("c{i}.yaml"), configmap(&format!("c{i}"), "1"));
    }
    repo.commit("twenty configmaps");
    let mut source = driftless_tests::agent::source("noop", &repo.url(), ns.name());
    source.interval = Duration::from_secs(1);
    let run = RunningSource::start(&agent, source);
    run.wait("Synced", Duration::from_secs(30), |s| s.state == SyncState::Synced && s.health == Health::Healthy).await;

    let since = audit_events().len();
    let polls_before = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(4)).await; // about four polls
    let requests = driftless_requests_since(since, ns.name(), &run.name);
    let writes = requests.iter().filter(|e| is_write(e)).count();
    let dry_runs = requests.iter().filter(|e| is_dry_run(e)).count();
    assert_eq!((writes, dry_runs), (0, 0), "{requests:#?}");
    assert!(requests.is_empty(), "no API request at all: {requests:#?}");
    assert!(run.status().last_sync_time.unwrap() < polls_before, "no reconcile ran");

    // a new commit is applied incrementally: only the changed object is dry-run and written
    // (the mark comes first: with a poll every second the agent may apply the commit while
    // the audit log is being read)
    let since = audit_events().len();
    repo.write("c3.yaml", configmap("c3", "2"));
    repo.commit("change c3");
    run.wait("the new commit", Duration::from_secs(10), |s| s.counts.get(&driftless::report::changes::Action::Configured) == Some(&1))
        .await;
    let requests = driftless_requests_since(since, ns.name(), &run.name);
    let names: Vec<&str> = requests
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "configmaps" && e["verb"] == "patch" && e["objectRef"]["namespace"] == ns.name())
        .filter_map(|e| e["objectRef"]["name"].as_str())
        .collect();
    assert_eq!(names, ["c3", "c3"], "one dry-run and one apply, of c3 only");
    ns.cleanup().await;
}
