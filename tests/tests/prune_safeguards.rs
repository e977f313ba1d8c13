//! Every prune safeguard on the real control plane, each counting the objects deleted.
//!
//! 1. a failed fetch prunes nothing (render and validation failures: sync_errors.rs)
//! 2. an empty render of a source that had objects is refused unless allowEmpty
//! 3. a prune of more than maxPrunePercent of the set is held
//! 4. Namespaces and PersistentVolumeClaims are kept unless prunable; `driftless.dev/prune:
//!    disabled` is never pruned
//! 5. objects created by hand or by another set are never touched
//! 6. (conflicts with another set and adoption: sync_errors.rs)
//! 7. a delete that fails stays in the inventory and is retried; the agent's namespace and the
//!    parent are never pruned

use std::time::Duration;

use driftless::apply::changeset::Action;
use driftless::config::Source;
use driftless::manifest::GroupKind;
use driftless::sync::{Report, State};
use driftless_tests::agent::{audit_events, configmap, configmaps, dynamic_api, get, Agent, AGENT_NAMESPACE};
use driftless_tests::{wait_for, GitFixture, TestNamespace};
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
    assert_eq!(report.reason, "FetchFailed", "{}", report.message);
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
    assert!(
        held.message.contains("would delete 3 of 4 members, more than maxPrunePercent 50%"),
        "{}",
        held.message
    );
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
    repo.write("ns.yaml", format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {extra_ns}\n  labels: {{driftless.dev/test: \"true\"}}\n"));
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
    let skipped: Vec<String> =
        kept.changes.entries.iter().filter(|c| c.action == Action::Skipped).map(|c| c.id.kind.clone()).collect();
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
    let gone: Vec<String> =
        pruned.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.kind.clone()).collect();
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
    vapb.patch(&policy_name, &params, &Patch::Apply(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {"policyName": policy_name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}}}}
    }))).await.unwrap();
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    wait_for("the delete policy to take effect", Duration::from_secs(30), || async {
        let canary = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sticky-canary"}})).unwrap();
        let _ = cms.create(&PostParams::default(), &canary).await;
        cms.delete("sticky-canary", &DeleteParams::default()).await.is_err().then_some(())
    })
    .await;

    repo.remove("sticky.yaml");
    repo.commit("drop sticky");
    let failed = agent.sync(&source).await;
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.reason, "PruneFailed", "{}", failed.message);
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
        let canary = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sticky-canary"}})).unwrap();
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
    repo.write("agent-ns.yaml", format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {agent_ns}\n  labels: {{driftless.dev/test: \"true\"}}\n"));
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
    let deleted: Vec<String> =
        report.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
    assert_eq!(deleted, [format!("ConfigMap {agent_ns}/in-agent-ns")]);
    let nss = dynamic_api(&agent.client, "v1", "Namespace", "namespaces", "");
    let live_ns = get(&nss, &agent_ns).await.expect("the agent's namespace exists");
    assert!(live_ns["metadata"]["deletionTimestamp"].is_null());
    let parent = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", &agent_ns);
    assert!(get(&parent, &format!("driftless-{}", source.name)).await.is_some(), "the parent stays");
    let _ = nss.delete(&agent_ns, &DeleteParams::background()).await;
}
