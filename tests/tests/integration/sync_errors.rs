//! Bad revisions against the real control plane: each one fails with a clear message and the
//! right reason, and leaves the cluster exactly as the last good revision left it. Nothing of a
//! failed revision is applied and nothing is pruned, even when the same commit also removes,
//! edits and adds ordinary objects.
//!
//! Also the ownership rules (an object of another ApplySet is never taken over, an unlabelled one
//! is adopted), a CRD with its custom resources in one revision, and `driftless.dev/recreate`.

use std::collections::BTreeMap;
use std::process::Command;

use driftless::config::Source;
use driftless::inventory::applyset;
use driftless::keys;
use driftless::report::changes::Action;
use driftless::report::{Reason, Report, State};
use driftless::source::Auth;
use driftless_tests::agent::{self, configmap, configmaps, dynamic_api, get, Agent, AGENT_NAMESPACE};
use driftless_tests::{cluster_bin, kubeconfig_path, unique_name, GitFixture, TestNamespace};
use kube::api::{DynamicObject, PostParams};
use serde_json::{json, Value};

/// A source synced to a good first revision of three ConfigMaps `a`, `b`, `c` (under `dir`).
struct Given {
    agent: Agent,
    ns: TestNamespace,
    repo: GitFixture,
    source: Source,
    /// The test namespace's ConfigMaps (name -> resourceVersion) after the good sync.
    before: BTreeMap<String, String>,
}

/// Given a repo with ConfigMaps a, b, c under `dir` ("" or "apps/"), synced.
async fn given_three_configmaps(prefix: &str, dir: &str, configure: impl FnOnce(&mut Source, &GitFixture)) -> Given {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, prefix).await;
    let repo = GitFixture::new();
    for name in ["a", "b", "c"] {
        repo.write(format!("{dir}{name}.yaml"), configmap(name, "v1"));
    }
    repo.commit("three config maps");
    let mut source = agent::source(prefix, &repo.url(), ns.name());
    configure(&mut source, &repo);
    let first = repo.head();

    let report = agent.sync(&source).await;
    assert_synced(&report);
    assert_eq!(report.commit.as_deref(), Some(first.as_str()));
    assert_eq!(report.changes.count(Action::Created), 3, "{:#?}", report.changes);
    let before = configmaps(&agent.client, ns.name()).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    Given { agent, ns, repo, source, before }
}

/// The ordinary part of the bad commit: `c` leaves git, `b` changes, `d` is new.
fn ordinary_changes(repo: &GitFixture, dir: &str) {
    repo.remove(format!("{dir}c.yaml"));
    repo.write(format!("{dir}b.yaml"), configmap("b", "v2"));
    repo.write(format!("{dir}d.yaml"), configmap("d", "v1"));
}

impl Given {
    /// Then the sync failed with `reason`, wrote nothing, and the ConfigMaps are exactly as before:
    /// `b` not edited, `c` not pruned, `d` not created.
    async fn assert_failed_and_nothing_changed(&self, report: &Report, reason: Reason) {
        assert_eq!(report.state, State::Failed, "{report:#?}");
        assert_eq!(report.reason, Some(reason), "{}", report.message);
        assert!(report.error.is_some());
        let writes: Vec<String> =
            report.changes.entries.iter().filter(|c| c.action.is_write()).map(|c| format!("{} {}", c.action, c.id)).collect();
        assert!(writes.is_empty(), "a failed revision wrote: {writes:?}");
        let after = configmaps(&self.agent.client, self.ns.name()).await;
        assert_eq!(after, self.before, "the ConfigMaps changed after a failed sync: {}", report.message);
        let b = get(&self.cm_api(), "b").await.expect("b exists");
        assert_eq!(b["data"]["value"], "v1", "b was edited");
    }

    fn cm_api(&self) -> kube::Api<DynamicObject> {
        dynamic_api(&self.agent.client, "v1", "ConfigMap", "configmaps", self.ns.name())
    }

    async fn cleanup(self) {
        self.ns.cleanup().await;
    }
}

fn assert_synced(report: &Report) {
    assert_eq!(report.state, State::Synced, "{:?}: {}\n{:#?}", report.reason, report.message, report.changes);
}

fn part_of(object: &Value) -> Option<&str> {
    object["metadata"]["labels"][keys::APPLYSET_PART_OF].as_str()
}

/// The ApplySet id of a source run by the tests' agent.
fn applyset_id_of(source: &Source) -> String {
    applyset::applyset_id(&applyset::parent_ref(&source.name, AGENT_NAMESPACE))
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_yaml_fails_render_naming_file_and_line_and_changes_nothing() {
    let given = given_three_configmaps("err-yaml", "", |_, _| {}).await;

    // when a commit lands with a file whose line 4 is not YAML (and ordinary changes beside it)
    ordinary_changes(&given.repo, "");
    given.repo.write("broken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken: really\ndata:\n  value: x\n");
    let bad = given.repo.commit("a broken file");
    let report = given.agent.sync(&given.source).await;

    // then the render fails naming the file and the line, and nothing changed
    given.assert_failed_and_nothing_changed(&report, Reason::RenderFailed).await;
    assert_eq!(report.commit.as_deref(), Some(bad.as_str()), "the failing commit is reported");
    assert!(report.message.starts_with("render failed: broken.yaml:4: "), "file and line: {}", report.message);
    assert!(report.message.contains("invalid YAML"), "{}", report.message);
    assert!(report.changes.entries.is_empty(), "render failed before planning: {:#?}", report.changes);

    // and when the file is fixed, the ordinary changes go through
    given.repo.remove("broken.yaml");
    given.repo.commit("fix");
    let fixed = given.agent.sync(&given.source).await;
    assert_synced(&fixed);
    assert_eq!(
        (fixed.changes.count(Action::Created), fixed.changes.count(Action::Configured), fixed.changes.count(Action::Deleted)),
        (1, 1, 1),
        "{:#?}",
        fixed.changes
    );
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_the_server_rejects_fail_validation_with_the_servers_message_and_change_nothing() {
    let given = given_three_configmaps("err-server", "", |_, _| {}).await;

    // when a commit adds a Service with an out-of-range port and a ConfigMap with an invalid name
    ordinary_changes(&given.repo, "");
    given.repo.write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 999999\n");
    given.repo.write("bad-name.yaml", configmap("Bad_Name", "x"));
    let bad = given.repo.commit("objects the server refuses");
    let report = given.agent.sync(&given.source).await;

    // then the dry-run refuses the revision, naming each object with the server's message
    given.assert_failed_and_nothing_changed(&report, Reason::ValidationFailed).await;
    assert_eq!(report.commit.as_deref(), Some(bad.as_str()));
    let ns = given.ns.name();
    let m = &report.message;
    assert!(m.contains(&format!("Service {ns}/web")), "the Service is named: {m}");
    assert!(m.contains("spec.ports[0].port") && m.contains("999999"), "the server's message for the port: {m}");
    assert!(m.contains(&format!("ConfigMap {ns}/Bad_Name")), "the ConfigMap is named: {m}");
    assert!(m.contains("metadata.name") && m.contains("RFC 1123"), "the server's message for the name: {m}");
    let failed: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| c.id.name.clone()).collect();
    assert_eq!(failed.len(), 2, "{:#?}", report.changes);
    assert!(failed.contains(&"web".to_string()) && failed.contains(&"Bad_Name".to_string()));
    let services = dynamic_api(&given.agent.client, "v1", "Service", "services", ns);
    assert!(get(&services, "web").await.is_none(), "the Service was not created");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kind_fails_validation_naming_file_and_object_and_changes_nothing() {
    let given = given_three_configmaps("err-kind", "", |_, _| {}).await;

    // when a commit adds a Widget of example.com/v1, which no CRD defines (a kind no other test
    // defines either: a served kind of the same name in another group is another message)
    ordinary_changes(&given.repo, "");
    given.repo.write("widget.yaml", "apiVersion: example.com/v1\nkind: UndefinedWidget\nmetadata:\n  name: w\nspec:\n  size: 1\n");
    given.repo.commit("a widget");
    let report = given.agent.sync(&given.source).await;

    // then the plan refuses it: file, object and "unknown kind"
    given.assert_failed_and_nothing_changed(&report, Reason::ValidationFailed).await;
    let m = &report.message;
    assert!(m.contains("widget.yaml:1"), "the file is named: {m}");
    assert!(m.contains("UndefinedWidget w") && m.contains("example.com/v1"), "the object is named: {m}");
    assert!(m.contains("unknown kind"), "{m}");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_escaping_the_source_path_fails_the_fetch_and_changes_nothing() {
    let given = given_three_configmaps("err-symlink", "apps/", |source, repo| {
        source.spec.path = "apps".into();
        // a file outside the source path, which the source must never read
        repo.write("secret.yaml", configmap("outside", "secret"));
        repo.commit("a file outside apps");
    })
    .await;

    // when a commit adds apps/x.yaml -> ../secret.yaml
    ordinary_changes(&given.repo, "apps/");
    given.repo.symlink("apps/x.yaml", "../secret.yaml");
    given.repo.commit("a link out of apps");
    let report = given.agent.sync(&given.source).await;

    // then the fetch refuses the link by name and target
    given.assert_failed_and_nothing_changed(&report, Reason::FetchFailed).await;
    let m = &report.message;
    assert!(m.contains("symlink apps/x.yaml"), "the link is named: {m}");
    assert!(m.contains("../secret.yaml") && m.contains("outside the source path"), "{m}");
    // and nothing of the file it points to reached the cluster
    assert!(get(&given.cm_api(), "outside").await.is_none(), "the linked file's ConfigMap was applied");
    assert!(report.changes.entries.iter().all(|c| c.id.name != "outside"), "{:#?}", report.changes);
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_path_missing_from_the_commit_fails_the_fetch_and_changes_nothing() {
    let given = given_three_configmaps("err-path", "apps/", |source, _| source.spec.path = "apps".into()).await;

    // when a commit moves everything from apps/ to deploy/ (with ordinary changes on the way)
    ordinary_changes(&given.repo, "apps/");
    for name in ["a", "b", "d"] {
        let text = std::fs::read_to_string(given.repo.path().join(format!("apps/{name}.yaml"))).unwrap();
        given.repo.write(format!("deploy/{name}.yaml"), text);
    }
    given.repo.remove("apps");
    let bad = given.repo.commit("move apps to deploy");
    let report = given.agent.sync(&given.source).await;

    // then the fetch fails naming the path and the commit; nothing is pruned although no object
    // is left
    given.assert_failed_and_nothing_changed(&report, Reason::FetchFailed).await;
    let m = &report.message;
    assert!(m.contains("\"apps\"") && m.contains("does not exist"), "{m}");
    assert!(m.contains(&bad), "the commit is named: {m}");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ref_missing_from_the_remote_fails_the_fetch_naming_the_ref_and_changes_nothing() {
    let given = given_three_configmaps("err-ref", "", |source, repo| {
        repo.branch("release-x");
        source.spec.reference = Some("release-x".into());
    })
    .await;

    // when the branch the source follows is deleted (after ordinary changes on main)
    ordinary_changes(&given.repo, "");
    given.repo.commit("ordinary changes on main");
    given.repo.branch("release-x");
    given.repo.repo().find_branch("release-x", git2::BranchType::Local).unwrap().delete().unwrap();
    let report = given.agent.sync(&given.source).await;

    // then the fetch fails naming the ref
    given.assert_failed_and_nothing_changed(&report, Reason::FetchFailed).await;
    assert_eq!(report.commit, None);
    let m = &report.message;
    assert!(m.contains("release-x") && m.contains("not found"), "{m}");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_source_without_known_hosts_is_refused_before_connecting_and_changes_nothing() {
    let given = given_three_configmaps("err-ssh", "", |_, _| {}).await;
    ordinary_changes(&given.repo, "");
    given.repo.commit("ordinary changes");

    // when the source is pointed at an ssh URL with a key but no known_hosts file
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("id_ed25519");
    std::fs::write(&key_file, "not a real key\n").unwrap();
    let mut source = given.source.clone();
    source.spec.url = "ssh://git@127.0.0.1:1/repo.git".into();
    source.spec.auth = Auth::Ssh { key_file, known_hosts_file: None, passphrase_file: None };
    let report = given.agent.sync(&source).await;

    // then it fails before connecting, saying known_hosts is required
    given.assert_failed_and_nothing_changed(&report, Reason::FetchFailed).await;
    assert_eq!(report.commit, None);
    let m = &report.message;
    assert!(m.contains("known_hosts"), "{m}");
    assert!(m.contains("ssh://git@127.0.0.1:1/repo.git"), "the URL is named: {m}");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_object_in_two_files_fails_validation_naming_both_files_and_changes_nothing() {
    let given = given_three_configmaps("err-dup", "", |_, _| {}).await;

    // when a commit defines ConfigMap a a second time in another file
    ordinary_changes(&given.repo, "");
    given.repo.write("more/dup.yaml", format!("{}---\n{}", configmap("e", "v1"), configmap("a", "other")));
    given.repo.commit("a twice");
    let report = given.agent.sync(&given.source).await;

    // then the plan refuses it, naming both places
    given.assert_failed_and_nothing_changed(&report, Reason::ValidationFailed).await;
    let m = &report.message;
    let ns = given.ns.name();
    assert!(m.contains(&format!("ConfigMap {ns}/a is defined twice")), "{m}");
    assert!(m.contains("a.yaml:1") && m.contains("more/dup.yaml:8"), "both files (and lines) are named: {m}");
    given.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_of_another_applyset_is_never_taken_over() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "err-owner").await;
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());

    // given source A owns ConfigMap shared
    let repo_a = GitFixture::new();
    repo_a.write("shared.yaml", configmap("shared", "from-a")).write("a1.yaml", configmap("a1", "v1"));
    repo_a.commit("a");
    let source_a = agent::source("owner-a", &repo_a.url(), ns.name());
    assert_synced(&agent.sync(&source_a).await);
    let before = configmaps(&agent.client, ns.name()).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), ["a1", "shared"]);

    // when source B's repo also has ConfigMap shared (and objects of its own)
    let repo_b = GitFixture::new();
    repo_b
        .write("b1.yaml", configmap("b1", "v1"))
        .write("b2.yaml", configmap("b2", "v1"))
        .write("shared.yaml", configmap("shared", "from-b"));
    repo_b.commit("b");
    let source_b = agent::source("owner-b", &repo_b.url(), ns.name());
    let report = agent.sync(&source_b).await;

    // then B fails, naming the object and its file, and applies nothing at all
    assert_eq!(report.state, State::Failed, "{report:#?}");
    assert_eq!(report.reason, Some(Reason::ValidationFailed));
    let m = &report.message;
    assert!(m.contains(&format!("ConfigMap {}/shared (shared.yaml:1)", ns.name())), "{m}");
    assert!(m.contains("belongs to another ApplySet"), "{m}");
    assert!(m.contains(&applyset_id_of(&source_a)), "A's set is named: {m}");
    assert_eq!(configmaps(&agent.client, ns.name()).await, before, "b1/b2 created or shared written");
    let shared = get(&cms, "shared").await.unwrap();
    assert_eq!(part_of(&shared), Some(applyset_id_of(&source_a).as_str()));
    assert_eq!(shared["data"]["value"], "from-a");

    // and A still syncs as before
    let again = agent.sync(&source_a).await;
    assert_synced(&again);
    assert_eq!(again.changes.count(Action::Unchanged), 2, "{:#?}", again.changes);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlabelled_object_is_adopted_and_later_pruned() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "adopt").await;
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());

    // given ConfigMap legacy created by hand, with no ApplySet label
    let by_hand: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "legacy", "labels": {"team": "shop"}},
        "data": {"value": "by-hand"},
    }))
    .unwrap();
    let created = cms.create(&PostParams { field_manager: Some("kubectl-create".into()), ..Default::default() }, &by_hand).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    // when a repo containing it (and two others) is synced
    let repo = GitFixture::new();
    repo.write("legacy.yaml", configmap("legacy", "from-git"))
        .write("keep1.yaml", configmap("keep1", "v1"))
        .write("keep2.yaml", configmap("keep2", "v1"));
    repo.commit("adopt legacy");
    let source = agent::source("adopt", &repo.url(), ns.name());
    let report = agent.sync(&source).await;

    // then it is configured (not created), and now carries the source's part-of label
    assert_synced(&report);
    let actions: BTreeMap<String, Action> = report.changes.entries.iter().map(|c| (c.id.name.clone(), c.action)).collect();
    assert_eq!(
        actions,
        BTreeMap::from([("keep1".into(), Action::Created), ("keep2".into(), Action::Created), ("legacy".into(), Action::Configured)])
    );
    let legacy = get(&cms, "legacy").await.unwrap();
    assert_eq!(part_of(&legacy), Some(applyset_id_of(&source).as_str()));
    assert_eq!(legacy["metadata"]["uid"], uid.as_str(), "adopted in place, not recreated");
    assert_eq!(legacy["data"]["value"], "from-git");
    assert_eq!(legacy["metadata"]["labels"]["team"], "shop", "fields git does not set are kept");

    // when it leaves git, then it is pruned like any member
    repo.remove("legacy.yaml");
    repo.commit("retire legacy");
    let pruned = agent.sync(&source).await;
    assert_synced(&pruned);
    let deleted: Vec<String> = pruned.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.name.clone()).collect();
    assert_eq!(deleted, ["legacy"]);
    agent::eventually("legacy to be deleted", || async { get(&cms, "legacy").await.is_none() }).await;
    assert_eq!(configmaps(&agent.client, ns.name()).await.keys().collect::<Vec<_>>(), ["keep1", "keep2"]);
    ns.cleanup().await;
}

/// A unique API group for a test's CRD, `g<random>.test.driftless.dev`.
fn unique_group() -> String {
    format!("{}.test.driftless.dev", unique_name("g").replace('-', ""))
}

/// The CRD of namespaced `Widget`s (`widgets.<group>`, version v1, `spec.size` an integer).
fn widget_crd(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              size: {{type: integer}}\n"
    )
}

/// Deletes a CRD when dropped (also when the test panics).
struct CrdGuard(String);

impl Drop for CrdGuard {
    fn drop(&mut self) {
        let _ = Command::new(cluster_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["delete", "customresourcedefinition", &self.0, "--ignore-not-found", "--wait=false"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_and_its_custom_resources_sync_in_one_revision() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "crd").await;
    let group = unique_group();
    let crd_name = format!("widgets.{group}");
    let _crd = CrdGuard(crd_name.clone());

    // given one revision with a CRD, two Widgets of it and a ConfigMap
    let repo = GitFixture::new();
    repo.write("crd.yaml", widget_crd(&group));
    repo.write("widgets.yaml", format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: small\nspec:\n  size: 1\n---\napiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: large\nspec:\n  size: 9\n"
    ));
    repo.write("cm.yaml", configmap("settings", "v1"));
    repo.commit("widgets");
    let source = agent::source("crd", &repo.url(), ns.name());

    // when it is synced once, then everything is created in one go
    let report = agent.sync(&source).await;
    assert_synced(&report);
    assert_eq!(report.changes.count(Action::Created), 4, "{:#?}", report.changes);
    let order: Vec<&str> = report.changes.entries.iter().map(|c| c.id.kind.as_str()).collect();
    let crd_at = order.iter().position(|k| *k == "CustomResourceDefinition").unwrap();
    assert!(order.iter().enumerate().all(|(i, k)| *k != "Widget" || i > crd_at), "Widgets applied after the CRD: {order:?}");
    let widgets = dynamic_api(&agent.client, &format!("{group}/v1"), "Widget", "widgets", ns.name());
    let large = get(&widgets, "large").await.expect("Widget large exists");
    assert_eq!(large["spec"]["size"], 9);
    assert_eq!(part_of(&large), Some(applyset_id_of(&source).as_str()));
    assert!(get(&widgets, "small").await.is_some());

    // and a second sync finds nothing to do
    let again = agent.sync(&source).await;
    assert_synced(&again);
    assert_eq!(again.changes.count(Action::Unchanged), 4, "{:#?}", again.changes);

    ns.cleanup().await;
}

/// The module documentation of `sync` promises that "a failed ... validation applies nothing and
/// prunes nothing". A custom resource whose CRD is in the same revision can only be dry-run once
/// the CRD exists, so the CRD itself has to be written first; nothing else of the revision may be
/// (the ordinary changes beside it: `b` configured, `c` pruned, `d` created) when the custom
/// resource's dry-run then fails with ValidationFailed.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_custom_resource_of_a_new_crd_applies_no_ordinary_object() {
    let given = given_three_configmaps("err-deferred", "", |_, _| {}).await;
    let group = unique_group();
    let _crd = CrdGuard(format!("widgets.{group}"));

    // when a commit adds a CRD and a Widget the CRD's schema refuses (beside ordinary changes)
    ordinary_changes(&given.repo, "");
    given.repo.write("crd.yaml", widget_crd(&group));
    given.repo.write("widget.yaml", format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: big\n"));
    given.repo.commit("a Widget of the wrong shape");
    let report = given.agent.sync(&given.source).await;

    // then validation fails naming the Widget, and no ConfigMap was written (the CRD may exist)
    assert_eq!((report.state, report.reason), (State::Failed, Some(Reason::ValidationFailed)), "{}", report.message);
    assert!(report.message.contains(&format!("Widget.{group} {}/w", given.ns.name())), "{}", report.message);
    assert!(report.message.contains(".spec.size"), "{}", report.message);
    let after = configmaps(&given.agent.client, given.ns.name()).await;
    assert_eq!(after, given.before, "ConfigMaps were written by a revision that failed validation: {:#?}", report.changes);
    given.cleanup().await;
}

fn job(name: &str, image: &str, recreate: bool) -> String {
    let annotations = if recreate { "  annotations:\n    driftless.dev/recreate: \"true\"\n" } else { "" };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n{annotations}spec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {image}\n        command: [\"true\"]\n"
    )
}

fn uid(o: &Value) -> String {
    o["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

fn image(o: &Value) -> &str {
    o["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_annotated_for_recreation_is_recreated_and_one_without_is_refused() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "recreate").await;
    let jobs = dynamic_api(&agent.client, "batch/v1", "Job", "jobs", ns.name());

    // given Job migrate annotated driftless.dev/recreate, and Job plain without it, in two sources
    let recreating = GitFixture::new();
    recreating.write("job.yaml", job("migrate", "busybox:1.36", true));
    recreating.commit("migrate");
    let source_r = agent::source("recreate", &recreating.url(), ns.name());
    let plain = GitFixture::new();
    plain.write("job.yaml", job("plain", "busybox:1.36", false)).write("cm.yaml", configmap("plain-settings", "v1"));
    plain.commit("plain");
    let source_p = agent::source("plain", &plain.url(), ns.name());
    assert_synced(&agent.sync(&source_r).await);
    assert_synced(&agent.sync(&source_p).await);
    let migrate_uid = uid(&get(&jobs, "migrate").await.unwrap());
    let plain_uid = uid(&get(&jobs, "plain").await.unwrap());

    // when the pod template's image changes on the annotated Job
    recreating.write("job.yaml", job("migrate", "busybox:1.37", true));
    recreating.commit("migrate 1.37");
    let report = agent.sync(&source_r).await;

    // then it is recreated: a new uid with the new image
    assert_synced(&report);
    let actions: Vec<(String, Action)> = report.changes.entries.iter().map(|c| (c.id.to_string(), c.action)).collect();
    assert_eq!(actions, [(format!("Job.batch {}/migrate", ns.name()), Action::Recreated)]);
    let migrate = get(&jobs, "migrate").await.expect("migrate exists again");
    assert_ne!(uid(&migrate), migrate_uid, "a new object");
    assert_eq!(image(&migrate), "busybox:1.37");

    // when the same change lands on the Job without the annotation (and its ConfigMap changes too)
    let cms_before = configmaps(&agent.client, ns.name()).await;
    plain.write("job.yaml", job("plain", "busybox:1.37", false)).write("cm.yaml", configmap("plain-settings", "v2"));
    plain.commit("plain 1.37");
    let refused = agent.sync(&source_p).await;

    // then validation fails with the server's immutable-field message, and nothing changed
    assert_eq!(refused.state, State::Failed, "{refused:#?}");
    assert_eq!(refused.reason, Some(Reason::ValidationFailed));
    let m = &refused.message;
    assert!(m.contains(&format!("Job.batch {}/plain", ns.name())), "{m}");
    assert!(m.contains("spec.template") && m.contains("field is immutable"), "{m}");
    let plain_job = get(&jobs, "plain").await.unwrap();
    assert_eq!(uid(&plain_job), plain_uid, "not recreated");
    assert_eq!(image(&plain_job), "busybox:1.36");
    assert_eq!(configmaps(&agent.client, ns.name()).await, cms_before, "the ConfigMap was written");
    ns.cleanup().await;
}
