//! Real repositories on the real control plane (issue 10): the shapes users' repositories have
//! (a Namespace with its own RBAC, a CRD with a custom resource, cluster RBAC, waves) sync in one
//! pass and again after a commit; drift made while the agent was stopped is repaired on start (or
//! reported with `selfHeal: false`); and a sync writes only what changed, even while the
//! Deployment controller is rolling out what the previous sync applied.
//!
//! Every test counts what it claims: objects created/configured/unchanged, UIDs, and the
//! non-dry-run writes the audit log shows for Driftless's user agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use driftless::report::changes::Action;
use driftless::report::{Report, State};
use driftless_tests::agent::{self, audit_events, configmap, driftless_requests_since, dynamic_api, get, is_write, Agent, AgentProcess};
use driftless_tests::{cluster_bin, kubeconfig_path, unique_name, wait_for, GitFixture, TestNamespace, TEST_LABEL};
use serde_json::{json, Value};
use tempfile::TempDir;

// ----- helpers -------------------------------------------------------------------------------

fn assert_synced(report: &Report) {
    assert_eq!(report.state, State::Synced, "{:?}: {}\n{:#?}", report.reason, report.message, report.changes);
}

/// `kubectl <args>` on the test cluster; panics with its stderr when it fails.
fn kubectl(args: &[&str]) -> String {
    let out = Command::new(cluster_bin("kubectl")).arg("--kubeconfig").arg(kubeconfig_path()).args(args).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes cluster-scoped objects (`kind/name` as kubectl takes them) when dropped, also when
/// the test panics.
struct ClusterGuard(Vec<String>);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        for object in &self.0 {
            let _ = Command::new(cluster_bin("kubectl"))
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(["delete", object, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

/// A Deployment manifest with `replicas` (no namespace: the source's is given to it).
fn deployment(name: &str, replicas: u32, annotations: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n{annotations}spec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example/{name}:1\n"
    )
}

/// Non-dry-run writes (create, patch, update, delete) by Driftless since `since` to objects of
/// `namespace`: `verb resource/name`.
fn writes_in(since: usize, namespace: &str, source: &str) -> Vec<String> {
    driftless_requests_since(since, namespace, source)
        .iter()
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == namespace)
        .map(|e| {
            format!(
                "{} {}/{} ({})",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["responseStatus"]["code"]
            )
        })
        .collect()
}

/// Successful non-dry-run writes by Driftless since `since` to `resource/name` in `namespace`.
fn successful_writes_to(since: usize, namespace: &str, source: &str, resource: &str, name: &str) -> usize {
    driftless_requests_since(since, namespace, source)
        .iter()
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == namespace)
        .filter(|e| e["objectRef"]["resource"] == resource && e["objectRef"]["name"] == name)
        .filter(|e| e["responseStatus"]["code"].as_i64().is_some_and(|c| c < 300))
        .count()
}

// ----- 1. a Namespace with its RBAC, a CRD and its CR, cluster RBAC, waves --------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_with_a_role_and_its_binding_syncs_in_one_pass_and_again_after_a_second_commit() {
    let agent = Agent::new().await;
    let app_ns = unique_name("rr-app");
    let group = format!("{}.test.driftless.dev", unique_name("g").replace('-', ""));
    let crd = format!("gadgets.{group}");
    let cluster_role = unique_name("rr-reader");
    let _guard = ClusterGuard(vec![
        format!("namespace/{app_ns}"),
        format!("clusterrolebinding/{cluster_role}"),
        format!("clusterrole/{cluster_role}"),
        format!("customresourcedefinition/{crd}"),
    ]);

    // given a repository as an app's would be: its Namespace, a ServiceAccount, a Role and a
    // RoleBinding to it, a CRD and one of its custom resources, a ClusterRole and its binding,
    // ConfigMaps in wave 0 and a Deployment in wave 1
    let repo = GitFixture::new();
    repo.write(
        "00-namespace.yaml",
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {app_ns}\n  labels: {{{TEST_LABEL}: \"true\"}}\n"),
    );
    repo.write(
        "rbac/serviceaccount.yaml",
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: {app_ns}\n"),
    );
    repo.write(
        "rbac/role.yaml",
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: app-config-reader\n  namespace: {app_ns}\nrules:\n  - apiGroups: [\"\"]\n    resources: [configmaps]\n    verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: app-config-reader\n  namespace: {app_ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: app-config-reader\nsubjects:\n  - kind: ServiceAccount\n    name: app\n    namespace: {app_ns}\n"
        ),
    );
    repo.write(
        "rbac/clusterrole.yaml",
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {cluster_role}\nrules:\n  - apiGroups: [\"\"]\n    resources: [nodes]\n    verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {cluster_role}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {cluster_role}\nsubjects:\n  - kind: ServiceAccount\n    name: app\n    namespace: {app_ns}\n"
        ),
    );
    repo.write(
        "crd.yaml",
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {crd}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: gadgets, singular: gadget, kind: Gadget, listKind: GadgetList}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              size: {{type: integer}}\n"
        ),
    );
    repo.write("gadget.yaml", format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: main\nspec:\n  size: 3\n"));
    let wave0 = "  annotations: {driftless.dev/wave: \"0\"}\n";
    repo.write("config/settings.yaml", configmap("settings", "v1").replace("metadata:\n", &format!("metadata:\n{wave0}")));
    repo.write("config/features.yaml", configmap("features", "v1").replace("metadata:\n", &format!("metadata:\n{wave0}")));
    repo.write("deploy.yaml", deployment("api", 1, "  annotations: {driftless.dev/wave: \"1\"}\n"));
    repo.commit("an app with its namespace, RBAC, a CRD, cluster RBAC and waves");

    // (apiVersion, kind, plural, namespace, name) of every object in git
    let gadget_av = format!("{group}/v1");
    let objects: Vec<(&str, &str, &str, &str, &str)> = vec![
        ("v1", "Namespace", "namespaces", "", &app_ns),
        ("v1", "ServiceAccount", "serviceaccounts", &app_ns, "app"),
        ("rbac.authorization.k8s.io/v1", "Role", "roles", &app_ns, "app-config-reader"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", &app_ns, "app-config-reader"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", "", &cluster_role),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", "", &cluster_role),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", "", &crd),
        (&gadget_av, "Gadget", "gadgets", &app_ns, "main"),
        ("v1", "ConfigMap", "configmaps", &app_ns, "settings"),
        ("v1", "ConfigMap", "configmaps", &app_ns, "features"),
        ("apps/v1", "Deployment", "deployments", &app_ns, "api"),
    ];
    let source = agent::source("rr-app", &repo.url(), &app_ns);

    // when it is synced, then everything is created in one pass, each object decided once
    let first = agent.sync(&source).await;
    assert_synced(&first);
    assert_eq!(first.changes.count(Action::Created), objects.len(), "{:#?}", first.changes);
    assert_eq!(first.changes.entries.len(), objects.len(), "one entry per object: {:#?}", first.changes);
    let uids = async || {
        let mut uids = BTreeMap::new();
        for (av, kind, plural, ns, name) in &objects {
            let live =
                get(&dynamic_api(&agent.client, av, kind, plural, ns), name).await.unwrap_or_else(|| panic!("{kind} {ns}/{name} exists"));
            let uid = live["metadata"]["uid"].as_str().expect("a uid").to_string();
            uids.insert(format!("{kind} {ns}/{name}"), uid);
        }
        uids
    };
    let before = uids().await;
    assert_eq!(before.len(), objects.len());

    // when a second commit changes one ConfigMap
    repo.write("config/features.yaml", configmap("features", "v2").replace("metadata:\n", &format!("metadata:\n{wave0}")));
    let second_commit = repo.commit("features v2");
    let second = agent.sync(&source).await;

    // then exactly that one is configured, the rest unchanged, and no object was replaced
    assert_synced(&second);
    assert_eq!(second.commit.as_deref(), Some(second_commit.as_str()));
    let configured: Vec<String> = second
        .changes
        .entries
        .iter()
        .filter(|c| c.action == Action::Configured)
        .map(|c| format!("{} {}/{}", c.id.kind, c.id.namespace, c.id.name))
        .collect();
    assert_eq!(configured, [format!("ConfigMap {app_ns}/features")], "{:#?}", second.changes);
    assert_eq!(second.changes.count(Action::Unchanged), objects.len() - 1, "{:#?}", second.changes);
    assert_eq!(second.changes.entries.len(), objects.len(), "one entry per object: {:#?}", second.changes);
    let features = get(&dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", &app_ns), "features").await.unwrap();
    assert_eq!(features["data"]["value"], "v2");
    assert_eq!(uids().await, before, "UIDs changed: an object was deleted and created again");

    // cleanup: the Namespace (and so everything in it) and the cluster-scoped objects
    drop(_guard);
}

// ----- 2. drift made while the agent was down ------------------------------------------------

/// The agent's config file, removed on drop.
struct ConfigFile(TempDir);

impl ConfigFile {
    fn new(source: Value) -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("driftless.yaml"), serde_json::to_string_pretty(&json!({"sources": [source]})).unwrap()).unwrap();
        ConfigFile(dir)
    }

    fn path(&self) -> String {
        let path: PathBuf = self.0.path().join("driftless.yaml");
        path.to_str().unwrap().to_string()
    }
}

/// `GET /status/{source}` as JSON.
async fn status_of(agent: &AgentProcess, source: &str) -> Value {
    let r = agent.get(&format!("/status/{source}")).await;
    assert_eq!(r.status, 200, "/status/{source}: {}", r.body);
    r.json()
}

/// Waits until `/status/{source}` satisfies `f`; panics with the last status and the log's end.
async fn wait_status(agent: &AgentProcess, source: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let s = status_of(agent, source).await;
        if f(&s) {
            return s;
        }
        if started.elapsed() > timeout {
            let log = agent.stderr();
            let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("timed out after {timeout:?} waiting for {what}; status: {s:#}\nagent log (end):\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A ConfigMap `settings` and a Deployment `api` (2 replicas) synced by `driftless run`, the
/// agent stopped, then both edited with `kubectl patch`; returns what the restarted agent needs.
struct Downtime {
    ns: TestNamespace,
    inv: TestNamespace,
    _repo: GitFixture,
    config: ConfigFile,
    name: String,
}

impl Downtime {
    async fn given(prefix: &str, self_heal: bool) -> Self {
        let client = driftless_tests::client().await;
        let inv = TestNamespace::new(&client, &format!("{prefix}-inv")).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let repo = GitFixture::new();
        repo.write("settings.yaml", configmap("settings", "from-git"));
        repo.write("api.yaml", deployment("api", 2, ""));
        let commit = repo.commit("settings and api");
        let name = unique_name(prefix);
        let config = ConfigFile::new(json!({
            "name": name, "repo": repo.url(), "namespace": ns.name(), "interval": "1h", "selfHeal": self_heal,
        }));

        // given the agent ran and synced the revision
        let mut first = AgentProcess::start(inv.name(), &["--config", &config.path()]).await;
        wait_status(&first, &name, "the first revision Synced", Duration::from_secs(60), |s| {
            s["state"] == "Synced" && s["lastAppliedCommit"] == commit.as_str()
        })
        .await;
        assert_eq!(value(ns.name()).as_deref(), Some("from-git"));
        assert_eq!(replicas(ns.name()), 2);

        // and was stopped
        first.terminate();
        wait_for("the agent to exit", Duration::from_secs(15), || std::future::ready(first.exited())).await;

        // when owned fields are edited while it is down
        kubectl(&["patch", "configmap", "settings", "-n", ns.name(), "--type", "merge", "-p", r#"{"data":{"value":"by-hand"}}"#]);
        kubectl(&["patch", "deployment", "api", "-n", ns.name(), "--type", "merge", "-p", r#"{"spec":{"replicas":5}}"#]);
        assert_eq!(value(ns.name()).as_deref(), Some("by-hand"));
        assert_eq!(replicas(ns.name()), 5);
        Downtime { ns, inv, _repo: repo, config, name }
    }

    async fn cleanup(self) {
        self.ns.cleanup().await;
        self.inv.cleanup().await;
    }
}

/// ConfigMap `settings`' value, read with kubectl.
fn value(ns: &str) -> Option<String> {
    let v = kubectl(&["get", "configmap", "settings", "-n", ns, "-o", "jsonpath={.data.value}"]);
    (!v.is_empty()).then_some(v)
}

/// Deployment `api`'s spec.replicas, read with kubectl.
fn replicas(ns: &str) -> i64 {
    kubectl(&["get", "deployment", "api", "-n", ns, "-o", "jsonpath={.spec.replicas}"]).trim().parse().expect("replicas")
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_made_while_the_agent_was_down_is_reverted_on_start() {
    let given = Downtime::given("rr-down-heal", true).await;
    let ns = given.ns.name().to_string();

    // when the agent starts again
    let since = audit_events().len();
    let agent = AgentProcess::start(given.inv.name(), &["--config", &given.config.path()]).await;

    // then both edits are reverted to git within 30 s
    wait_for("the edits made while down to be reverted", Duration::from_secs(30), || async {
        (value(&ns).as_deref() == Some("from-git") && replicas(&ns) == 2).then_some(())
    })
    .await;

    // and the audit log shows Driftless's writes: one each to the two drifted objects, nothing else
    let writes = writes_in(since, &ns, &given.name);
    let to_settings = successful_writes_to(since, &ns, &given.name, "configmaps", "settings");
    let to_api = successful_writes_to(since, &ns, &given.name, "deployments", "api");
    assert_eq!((to_settings, to_api), (1, 1), "one correction each: {writes:#?}\nagent log:\n{}", agent.stderr());
    assert_eq!(writes.len(), 2, "writes only to the two drifted objects: {writes:#?}");
    drop(agent);
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_made_while_down_with_self_heal_off_is_reported_out_of_sync() {
    let given = Downtime::given("rr-down-report", false).await;
    let ns = given.ns.name().to_string();

    // when the agent starts again with selfHeal off
    let since = audit_events().len();
    let agent = AgentProcess::start(given.inv.name(), &["--config", &given.config.path()]).await;

    // then /status reports the source OutOfSync within 30 s
    wait_status(&agent, &given.name, "OutOfSync", Duration::from_secs(30), |s| s["state"] == "OutOfSync").await;

    // and the fields stay as patched: Driftless wrote nothing to the app's objects
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(value(&ns).as_deref(), Some("by-hand"));
    assert_eq!(replicas(&ns), 5);
    let writes = writes_in(since, &ns, &given.name);
    assert!(writes.is_empty(), "selfHeal is off, yet Driftless wrote: {writes:#?}");
    let status = status_of(&agent, &given.name).await;
    assert_eq!(status["state"], "OutOfSync", "still OutOfSync: {status:#}");

    // and it tells what drifted: both objects named, each with one action
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("settings") && message.contains("api"), "both drifted objects are named: {status:#}");
    let actions: u64 = status["counts"].as_object().expect("counts").values().filter_map(Value::as_u64).sum();
    assert_eq!(actions, 2, "one action per object (2 objects): {status:#}");
    drop(agent);
    given.cleanup().await;
}

// ----- 3. no writes for a no-op sync during a rollout, only what changed for a commit ---------

#[tokio::test(flavor = "multi_thread")]
async fn a_no_op_sync_during_a_rollout_writes_nothing_and_a_change_writes_only_what_changed() {
    const EACH: usize = 30;
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "rr-rollout").await;
    let repo = GitFixture::new();
    for i in 0..EACH {
        repo.write(format!("deploy/d{i:02}.yaml"), deployment(&format!("d{i:02}"), 2, ""));
        repo.write(format!("config/c{i:02}.yaml"), configmap(&format!("c{i:02}"), "v1"));
    }
    repo.commit("30 Deployments and 30 ConfigMaps");
    let source = agent::source("rr-rollout", &repo.url(), ns.name());

    // given the revision was applied
    let cold = agent.sync(&source).await;
    assert_synced(&cold);
    assert_eq!(cold.changes.count(Action::Created), 2 * EACH, "{:#?}", cold.changes);

    // when it is synced again at once, while the Deployment controller is still rolling out
    let since = audit_events().len();
    let noop = agent.sync(&source).await;
    assert_synced(&noop);
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    let mut rolling = 0;
    for i in 0..EACH {
        let d = get(&deployments, &format!("d{i:02}")).await.unwrap();
        if d["status"]["availableReplicas"] != 2 || d["status"]["observedGeneration"] != d["metadata"]["generation"] {
            rolling += 1;
        }
    }
    let controller_writes = audit_events()
        .into_iter()
        .skip(since)
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == ns.name())
        .filter(|e| !e["userAgent"].as_str().unwrap_or_default().starts_with("driftless/"))
        .count();
    eprintln!("during the no-op sync: {controller_writes} writes by controllers, {rolling} Deployments still rolling out after it");

    // then it wrote nothing
    let writes = writes_in(since, ns.name(), &source.name);
    assert!(writes.is_empty(), "a no-op sync wrote {} objects: {writes:#?}", writes.len());
    assert_eq!(noop.changes.count(Action::Unchanged), 2 * EACH, "{:#?}", noop.changes);
    assert!(controller_writes > 0, "the no-op sync did not overlap the rollout (no controller writes in the namespace)");

    // when a commit changes one ConfigMap of the 60
    repo.write("config/c07.yaml", configmap("c07", "v2"));
    repo.commit("c07 v2");
    let since = audit_events().len();
    let change = agent.sync(&source).await;

    // then exactly that object is written, once
    assert_synced(&change);
    assert_eq!(change.changes.count(Action::Configured), 1, "{:#?}", change.changes);
    let writes = writes_in(since, ns.name(), &source.name);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert!(writes[0].starts_with("patch configmaps/c07 "), "{writes:#?}");
    let c07 = get(&dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name()), "c07").await.unwrap();
    assert_eq!(c07["data"]["value"], "v2");
    ns.cleanup().await;
}
