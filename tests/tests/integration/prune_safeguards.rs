//! Every prune safeguard on the real control plane, each counting the objects deleted.
//!
//! 1. a failed fetch prunes nothing (render and validation failures: sync_errors.rs)
//! 2. an empty render of a source that had objects is refused unless allowEmpty
//! 3. a prune of more than maxPrunePercent of the set is held
//! 4. Namespaces, PersistentVolumeClaims and CRDs are kept unless prunable (a kept CRD's custom
//!    resources that left git are pruned like any member); `driftless.dev/prune: disabled` is
//!    never pruned
//! 5. objects created by hand or by another set are never touched
//! 6. (conflicts with another set and adoption: sync_errors.rs)
//! 7. a delete that fails stays in the inventory and is retried; the agent's namespace and the
//!    parent are never pruned
//!
//! And a revision one object of which an admission policy rejects at dry-run applies nothing and
//! prunes nothing.

use std::time::Duration;

use driftless::config::Source;
use driftless::manifest::GroupKind;
use driftless::report::changes::Action;
use driftless::report::{Reason, Report, State};
use driftless_tests::agent::{audit_events, configmap, configmaps, dynamic_api, get, is_dry_run, is_write, Agent, AGENT_NAMESPACE};
use driftless_tests::{cluster_bin, kubeconfig_path, unique_name, wait_for, GitFixture, TestNamespace};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Deletes Driftless sent to a namespace since the audit log had `since` events.
fn deletes_since(since: usize, namespace: &str) -> usize {
    audit_events()[since..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["namespace"].as_str() == Some(namespace))
        .count()
}

/// Deletes Driftless sent for one cluster-scoped object (by resource and name) since the audit
/// log had `since` events.
fn cluster_deletes_since(since: usize, resource: &str, name: &str) -> usize {
    audit_events()[since..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["resource"] == resource && e["objectRef"]["name"] == name)
        .count()
}

/// Cluster-scoped objects of one test (resource, name), deleted when dropped (also when the test
/// panics), last first.
struct DeleteOnDrop(Vec<(&'static str, String)>);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        for (resource, name) in self.0.iter().rev() {
            let _ = std::process::Command::new(cluster_bin("kubectl"))
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(["delete", resource, name, "--ignore-not-found", "--wait=false", "--request-timeout=10s"])
                .output();
        }
    }
}

/// A repo with ConfigMaps `c0..cN`, synced once.
async fn synced_configmaps(agent: &Agent, ns: &str, n: usize) -> (GitFixture, Source) {
    let repo = GitFixture::new();
    for i in 0..n {
        repo.write(format!("c{i}.yaml"), configmap(&format!("c{i}"), "1"));
    }
    repo.commit("configmaps");
    let source = driftless_tests::agent::source("guard", &repo.url(), ns);
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    assert_eq!(report.changes.count(Action::Created), n);
    (repo, source)
}

fn deleted(report: &Report) -> usize {
    report.changes.count(Action::Deleted)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fetch_prunes_nothing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-fetch").await;
    let (repo, mut source) = synced_configmaps(&agent, ns.name(), 3).await;
    let before = configmaps(&agent.client, ns.name()).await;

    // the ref disappears from the remote: the fetch fails
    source.spec.reference = Some("release-that-does-not-exist".into());
    repo.remove("c0.yaml");
    repo.commit("drop c0");
    let audit = audit_events().len();
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Failed);
    assert_eq!(report.reason, Some(Reason::FetchFailed), "{}", report.message);
    assert_eq!(deleted(&report), 0);
    assert_eq!(deletes_since(audit, ns.name()), 0);
    assert_eq!(configmaps(&agent.client, ns.name()).await, before, "nothing changed");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_revision_is_refused_unless_allow_empty() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-empty").await;
    let (repo, mut source) = synced_configmaps(&agent, ns.name(), 2).await;
    for i in 0..2 {
        repo.remove(format!("c{i}.yaml"));
    }
    repo.write("README.md", "nothing to deploy\n");
    repo.commit("everything removed");

    let audit = audit_events().len();
    let held = agent.sync(&source).await;
    assert_eq!(held.state, State::PruneHeld, "{}", held.message);
    assert!(held.message.contains("allowEmpty"), "{}", held.message);
    assert_eq!(deleted(&held), 0);
    assert_eq!(deletes_since(audit, ns.name()), 0);
    assert_eq!(configmaps(&agent.client, ns.name()).await.len(), 2);

    source.allow_empty = true;
    source.max_prune_percent = 100;
    let allowed = agent.sync(&source).await;
    assert_eq!(allowed.state, State::Synced, "{}", allowed.message);
    assert_eq!(deleted(&allowed), 2);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prune_above_max_prune_percent_is_held() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-percent").await;
    let (repo, mut source) = synced_configmaps(&agent, ns.name(), 4).await;
    for i in 0..3 {
        repo.remove(format!("c{i}.yaml"));
    }
    repo.write("new.yaml", configmap("new", "1"));
    repo.commit("drop three of four");

    let audit = audit_events().len();
    let held = agent.sync(&source).await;
    assert_eq!(held.state, State::PruneHeld, "{}", held.message);
    // three of the four recorded members would go (the new one is not counted), above 50%
    assert!(held.message.contains("would delete 3 of 4 members, more than maxPrunePercent 50%"), "{}", held.message);
    assert_eq!(held.changes.count(Action::Created), 1, "the revision itself is applied");
    assert_eq!(deletes_since(audit, ns.name()), 0);
    assert_eq!(configmaps(&agent.client, ns.name()).await.len(), 5);

    // a higher threshold lets it through
    source.max_prune_percent = 75;
    let pruned = agent.sync(&source).await;
    assert_eq!(pruned.state, State::Synced, "{}", pruned.message);
    assert_eq!(deleted(&pruned), 3);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_kinds_and_prune_disabled_objects_are_kept() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-protect").await;
    let extra_ns = driftless_tests::unique_name("t-guard-extra");
    let repo = GitFixture::new();
    repo.write(
        "ns.yaml",
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {extra_ns}\n  labels: {{driftless.dev/test: \"true\"}}\n"),
    );
    repo.write(
        "pvc.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    repo.write("pinned.yaml", configmap("pinned", "1"));
    for i in 0..4 {
        repo.write(format!("c{i}.yaml"), configmap(&format!("c{i}"), "1"));
    }
    repo.commit("namespace, claim, configmaps");
    let mut source = driftless_tests::agent::source("protect", &repo.url(), ns.name());
    assert_eq!(agent.sync(&source).await.state, State::Synced);

    // someone pins a ConfigMap in the cluster
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    cms.patch(
        "pinned",
        &PatchParams::apply("sre"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pinned", "annotations": {"driftless.dev/prune": "disabled"}}})),
    )
    .await
    .unwrap();

    for f in ["ns.yaml", "pvc.yaml", "pinned.yaml"] {
        repo.remove(f);
    }
    repo.commit("drop namespace, claim and pinned configmap");
    let audit = audit_events().len();
    let kept = agent.sync(&source).await;
    assert_eq!(kept.state, State::Synced, "{}", kept.message);
    assert_eq!(deleted(&kept), 0);
    assert_eq!(deletes_since(audit, ns.name()), 0);
    let skipped: Vec<String> = kept.changes.entries.iter().filter(|c| c.action == Action::Skipped).map(|c| c.id.kind.clone()).collect();
    assert_eq!(skipped.len(), 3, "{:#?}", kept.changes);
    let nss = dynamic_api(&agent.client, "v1", "Namespace", "namespaces", "");
    assert!(get(&nss, &extra_ns).await.is_some());
    let pvcs = dynamic_api(&agent.client, "v1", "PersistentVolumeClaim", "persistentvolumeclaims", ns.name());
    assert!(get(&pvcs, "data").await.is_some());
    assert!(get(&cms, "pinned").await.is_some());

    // listed as prunable, the claim goes; the pinned ConfigMap stays whatever the settings
    source.prunable.insert(GroupKind::new("", "PersistentVolumeClaim"));
    source.prunable.insert(GroupKind::new("", "Namespace"));
    let pruned = agent.sync(&source).await;
    assert_eq!(pruned.state, State::Synced, "{}", pruned.message);
    let gone: Vec<String> = pruned.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.kind.clone()).collect();
    assert_eq!(gone, ["PersistentVolumeClaim", "Namespace"], "reverse order: claim before namespace");
    assert!(get(&cms, "pinned").await.is_some());
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_made_by_hand_or_by_another_set_are_never_touched() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-foreign").await;
    // seed 002: `kubectl create secret generic pgpassword --from-literal PGPASSWORD=...`
    let secrets = dynamic_api(&agent.client, "v1", "Secret", "secrets", ns.name());
    let secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pgpassword"}, "stringData": {"PGPASSWORD": "12345asdf"}}))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    let other_repo = GitFixture::new();
    other_repo.write("theirs.yaml", configmap("theirs", "1"));
    other_repo.commit("another team");
    let other = driftless_tests::agent::source("other", &other_repo.url(), ns.name());
    assert_eq!(agent.sync(&other).await.state, State::Synced);

    let (repo, mut source) = synced_configmaps(&agent, ns.name(), 2).await;
    repo.remove("c0.yaml");
    repo.remove("c1.yaml");
    repo.write("README.md", "empty\n");
    repo.commit("all gone");
    source.allow_empty = true;
    source.max_prune_percent = 100;
    let audit = audit_events().len();
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    assert_eq!(deleted(&report), 2, "only its own two members");
    assert_eq!(deletes_since(audit, ns.name()), 2);
    assert!(get(&secrets, "pgpassword").await.is_some(), "the hand-made secret is untouched");
    let left = configmaps(&agent.client, ns.name()).await;
    assert_eq!(left.keys().collect::<Vec<_>>(), ["theirs"], "the other set's object is untouched");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_delete_stays_in_the_inventory_and_is_retried() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-retry").await;
    let repo = GitFixture::new();
    for name in ["sticky", "a", "b", "c"] {
        repo.write(format!("{name}.yaml"), configmap(name, "1"));
    }
    repo.commit("four configmaps");
    let source = driftless_tests::agent::source("retry", &repo.url(), ns.name());
    assert_eq!(agent.sync(&source).await.state, State::Synced);

    // a policy denies deleting ConfigMaps named sticky* in this namespace (fault injection with a
    // real admission policy, as Flux reproduced a DELETE denied by policy)
    let policy_name = format!("deny-delete-{}", ns.name());
    let vap = dynamic_api(&agent.client, "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", "");
    let vapb = dynamic_api(
        &agent.client,
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        "",
    );
    let params = PatchParams::apply("test");
    vap.patch(&policy_name, &params, &Patch::Apply(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["configmaps"]}]},
            "validations": [{"expression": "!oldObject.metadata.name.startsWith('sticky')", "message": "sticky objects are protected by policy"}]}
    }))).await.unwrap();
    vapb.patch(
        &policy_name,
        &params,
        &Patch::Apply(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy_name},
            "spec": {"policyName": policy_name, "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}}}}
        })),
    )
    .await
    .unwrap();
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    wait_for("the delete policy to take effect", Duration::from_secs(30), || async {
        let canary =
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sticky-canary"}})).unwrap();
        let _ = cms.create(&PostParams::default(), &canary).await;
        cms.delete("sticky-canary", &DeleteParams::default()).await.is_err().then_some(())
    })
    .await;

    repo.remove("sticky.yaml");
    repo.commit("drop sticky");
    let failed = agent.sync(&source).await;
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.reason, Some(Reason::PruneFailed), "{}", failed.message);
    assert!(failed.message.contains("protected by policy"), "{}", failed.message);
    assert_eq!(deleted(&failed), 0);
    let sticky = get(&cms, "sticky").await.expect("sticky is still there");
    assert!(sticky["metadata"]["labels"]["applyset.kubernetes.io/part-of"].is_string(), "still a member");
    let parent = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", AGENT_NAMESPACE);
    let recorded = get(&parent, &format!("driftless-{}", source.name)).await.unwrap();
    assert!(
        recorded["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"].as_str().unwrap().contains("ConfigMap"),
        "the set still records the kind of the object it failed to delete"
    );

    // the policy goes away: the next sync retries and deletes it
    vapb.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    vap.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    wait_for("the delete policy to be gone", Duration::from_secs(30), || async {
        let canary =
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sticky-canary"}})).unwrap();
        let _ = cms.create(&PostParams::default(), &canary).await;
        cms.delete("sticky-canary", &DeleteParams::default()).await.is_ok().then_some(())
    })
    .await;
    let retried = agent.sync(&source).await;
    assert_eq!(retried.state, State::Synced, "{}", retried.message);
    assert_eq!(deleted(&retried), 1);
    assert!(get(&cms, "sticky").await.is_none() || get(&cms, "sticky").await.unwrap()["metadata"]["deletionTimestamp"].is_string());
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_namespace_and_the_parent_are_never_pruned() {
    // an agent namespace of its own: this test labels it, and reruns must not find it labelled
    let agent_ns = driftless_tests::unique_name("t-agent-ns");
    let agent = Agent::with_agent_namespace(&agent_ns).await;
    let repo = GitFixture::new();
    // a source that (wrongly) manages the agent's own namespace, then drops it
    repo.write(
        "agent-ns.yaml",
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {agent_ns}\n  labels: {{driftless.dev/test: \"true\"}}\n"),
    );
    repo.write("c.yaml", configmap("in-agent-ns", "1"));
    repo.commit("agent namespace");
    let mut source = driftless_tests::agent::source("self", &repo.url(), &agent_ns);
    let first = agent.sync(&source).await;
    assert_eq!(first.state, State::Synced, "{}", first.message);

    repo.remove("agent-ns.yaml");
    repo.remove("c.yaml");
    repo.write("README.md", "empty\n");
    repo.commit("drop everything");
    source.allow_empty = true;
    source.max_prune_percent = 100;
    source.prunable.insert(GroupKind::new("", "Namespace"));
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{}", report.message);
    let deleted: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
    assert_eq!(deleted, [format!("ConfigMap {agent_ns}/in-agent-ns")]);
    let nss = dynamic_api(&agent.client, "v1", "Namespace", "namespaces", "");
    let live_ns = get(&nss, &agent_ns).await.expect("the agent's namespace exists");
    assert!(live_ns["metadata"]["deletionTimestamp"].is_null());
    let parent = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", &agent_ns);
    assert!(get(&parent, &format!("driftless-{}", source.name)).await.is_some(), "the parent stays");
    let _ = nss.delete(&agent_ns, &DeleteParams::background()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_removed_from_git_is_kept_with_its_custom_resources_unless_prunable() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-crd").await;
    let group = format!("{}.test.driftless.dev", unique_name("g").replace('-', ""));
    let plural = unique_name("gadgets").replace('-', "");
    let crd_name = format!("{plural}.{group}");
    let _crd = DeleteOnDrop(vec![("customresourcedefinitions", crd_name.clone())]);

    // given a synced revision with a CRD, two custom resources of it and a ConfigMap
    let repo = GitFixture::new();
    repo.write("crd.yaml", format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {crd_name}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: {plural}, singular: gadget, kind: Gadget, listKind: GadgetList}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              size: {{type: integer}}\n"
    ));
    repo.write("gadgets.yaml", format!(
        "apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: small\nspec:\n  size: 1\n---\napiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: large\nspec:\n  size: 9\n"
    ));
    repo.write("cm.yaml", configmap("settings", "1"));
    repo.commit("a CRD, two gadgets and a configmap");
    let mut source = driftless_tests::agent::source("crd", &repo.url(), ns.name());
    source.max_prune_percent = 100;
    let first = agent.sync(&source).await;
    assert_eq!(first.state, State::Synced, "{:?}: {}", first.reason, first.message);
    assert_eq!(first.changes.count(Action::Created), 4, "{:#?}", first.changes);
    let crds = dynamic_api(&agent.client, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", "");
    let gadgets = dynamic_api(&agent.client, &format!("{group}/v1"), "Gadget", &plural, ns.name());
    let crd_uid = get(&crds, &crd_name).await.expect("the CRD exists")["metadata"]["uid"].clone();
    let cms_before = configmaps(&agent.client, ns.name()).await;

    // when a commit removes the CRD and both custom resources from git (the ConfigMap stays;
    // maxPrunePercent 100, so the percent safeguard holds nothing)
    repo.remove("crd.yaml");
    repo.remove("gadgets.yaml");
    repo.commit("drop the CRD and its gadgets");
    let audit = audit_events().len();
    let kept = agent.sync(&source).await;

    // then the sync is Synced; the CRD is kept as a protected kind, and its custom resources stay
    // with it (the definition's data): nothing deleted
    assert_eq!(kept.state, State::Synced, "{:?}: {}", kept.reason, kept.message);
    let mut skipped: Vec<(String, String)> =
        kept.changes.entries.iter().filter(|c| c.action == Action::Skipped).map(|c| (c.id.to_string(), c.message.clone())).collect();
    skipped.sort();
    let gk = format!("Gadget.{group}");
    assert_eq!(
        skipped,
        [
            (format!("CustomResourceDefinition.apiextensions.k8s.io {crd_name}"), "not pruned: ProtectedKind".to_string()),
            (format!("{gk} {}/large", ns.name()), "not pruned: DefinitionKept".to_string()),
            (format!("{gk} {}/small", ns.name()), "not pruned: DefinitionKept".to_string()),
        ],
        "{:#?}",
        kept.changes
    );
    assert_eq!(kept.changes.count(Action::Deleted), 0, "{:#?}", kept.changes);
    assert_eq!(cluster_deletes_since(audit, "customresourcedefinitions", &crd_name), 0);
    assert_eq!(deletes_since(audit, ns.name()), 0, "no custom resource deleted");
    let crd = get(&crds, &crd_name).await.expect("the CRD is kept");
    assert_eq!(crd["metadata"]["uid"], crd_uid, "the same CRD");
    assert!(crd["metadata"]["deletionTimestamp"].is_null(), "the CRD is not being deleted");
    assert!(get(&gadgets, "small").await.is_some() && get(&gadgets, "large").await.is_some(), "the custom resources are kept");
    assert_eq!(configmaps(&agent.client, ns.name()).await, cms_before, "the ConfigMap is untouched");

    // when CustomResourceDefinition.apiextensions.k8s.io is listed as prunable, then the next
    // sync deletes the custom resources and then the CRD, and nothing else
    source.prunable.insert(GroupKind::parse("CustomResourceDefinition.apiextensions.k8s.io"));
    let audit = audit_events().len();
    let pruned = agent.sync(&source).await;
    assert_eq!(pruned.state, State::Synced, "{:?}: {}", pruned.reason, pruned.message);
    let gone: Vec<String> = pruned.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
    assert_eq!(
        gone,
        [
            format!("{gk} {}/large", ns.name()),
            format!("{gk} {}/small", ns.name()),
            format!("CustomResourceDefinition.apiextensions.k8s.io {crd_name}")
        ],
        "custom resources first, the CRD last: {:#?}",
        pruned.changes
    );
    assert_eq!(pruned.changes.count(Action::Skipped), 0, "{:#?}", pruned.changes);
    assert_eq!(cluster_deletes_since(audit, "customresourcedefinitions", &crd_name), 1);
    assert_eq!(deletes_since(audit, ns.name()), 2, "the two custom resources");
    driftless_tests::agent::eventually("the CRD to be gone", || async { get(&crds, &crd_name).await.is_none() }).await;
    assert_eq!(configmaps(&agent.client, ns.name()).await, cms_before, "the ConfigMap is untouched");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admission_policy_rejecting_one_of_n_objects_at_dry_run_applies_nothing_and_prunes_nothing() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "guard-vap").await;

    // given a synced set of ConfigMaps a, b, c
    let repo = GitFixture::new();
    for name in ["a", "b", "c"] {
        repo.write(format!("{name}.yaml"), configmap(name, "v1"));
    }
    repo.commit("three configmaps");
    let source = driftless_tests::agent::source("vap", &repo.url(), ns.name());
    let first = agent.sync(&source).await;
    assert_eq!(first.state, State::Synced, "{:?}: {}", first.reason, first.message);
    assert_eq!(first.changes.count(Action::Created), 3);
    let before = configmaps(&agent.client, ns.name()).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), ["a", "b", "c"]);

    // and an admission policy, bound to this namespace only, that rejects ConfigMaps named
    // rejected* on create and update
    let policy_name = unique_name("reject-configmaps");
    let _policy = DeleteOnDrop(vec![
        ("validatingadmissionpolicies", policy_name.clone()),
        ("validatingadmissionpolicybindings", policy_name.clone()),
    ]);
    let message = "configmaps named rejected* are refused by policy";
    let vap = dynamic_api(&agent.client, "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", "");
    let vapb = dynamic_api(
        &agent.client,
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        "",
    );
    let params = PatchParams::apply("test");
    vap.patch(&policy_name, &params, &Patch::Apply(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]},
            "validations": [{"expression": "!object.metadata.name.startsWith('rejected')", "message": message}]}
    }))).await.unwrap();
    vapb.patch(
        &policy_name,
        &params,
        &Patch::Apply(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy_name},
            "spec": {"policyName": policy_name, "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}}}}
        })),
    )
    .await
    .unwrap();
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    wait_for("the policy to refuse a dry-run create of rejected-probe", Duration::from_secs(30), || async {
        let probe =
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rejected-probe"}})).unwrap();
        match cms.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains(message) => Some(()),
            _ => None,
        }
    })
    .await;

    // when a commit changes b, removes c, adds d and adds rejected-1 (one of the revision's
    // objects is rejected)
    repo.write("b.yaml", configmap("b", "v2"));
    repo.remove("c.yaml");
    repo.write("d.yaml", configmap("d", "v1"));
    repo.write("rejected-1.yaml", configmap("rejected-1", "v1"));
    repo.commit("edit b, drop c, add d and rejected-1");
    let audit = audit_events().len();
    let report = agent.sync(&source).await;

    // then the sync fails validation naming the object, its file and the policy's message
    assert_eq!(report.state, State::Failed, "{:#?}", report);
    assert_eq!(report.reason, Some(Reason::ValidationFailed), "{}", report.message);
    let m = &report.message;
    assert!(m.contains(&format!("rejected-1.yaml:1: ConfigMap {}/rejected-1: ", ns.name())), "file and object: {m}");
    assert!(m.contains(message), "the policy's message: {m}");
    for other in ["a", "b", "d"] {
        assert!(!m.contains(&format!("ConfigMap {}/{other}:", ns.name())), "only rejected-1 is named: {m}");
    }
    let failed: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| c.id.name.clone()).collect();
    assert_eq!(failed, ["rejected-1"], "{:#?}", report.changes);
    let writes: Vec<String> =
        report.changes.entries.iter().filter(|c| c.action.is_write()).map(|c| format!("{} {}", c.action, c.id)).collect();
    assert!(writes.is_empty(), "a failed revision wrote: {writes:?}");
    assert_eq!(deleted(&report), 0);

    // and the audit log shows no write of Driftless to the namespace (only dry-runs) and no delete
    let events = audit_events();
    let in_ns: Vec<&serde_json::Value> = events[audit..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["objectRef"]["namespace"].as_str() == Some(ns.name()))
        .collect();
    assert!(in_ns.iter().any(|e| is_dry_run(e)), "the revision was dry-run in the namespace (the log is read)");
    let writes: Vec<String> = in_ns.iter().filter(|e| is_write(e)).map(|e| format!("{} {}", e["verb"], e["requestURI"])).collect();
    assert!(writes.is_empty(), "writes to the namespace: {writes:#?}");
    assert_eq!(deletes_since(audit, ns.name()), 0);

    // and the cluster is as the last good revision left it: c still there, b unchanged, no d
    let after = configmaps(&agent.client, ns.name()).await;
    assert_eq!(after, before, "b keeps its resourceVersion, c is not pruned, d and rejected-1 are not created");
    assert_eq!(get(&cms, "b").await.expect("b exists")["data"]["value"], "v1");
    assert!(get(&cms, "c").await.expect("c still exists")["metadata"]["deletionTimestamp"].is_null());
    assert!(get(&cms, "d").await.is_none());

    vapb.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    vap.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    ns.cleanup().await;
}
