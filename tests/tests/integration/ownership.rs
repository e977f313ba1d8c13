//! Prune and adopt only what Driftless owns (README, "Inventory and safeguards", points 5, 6 and
//! 8, "Moving an object between sources keeps it" and "One install, one set per source"), on the
//! real control plane, counting what each sync wrote and deleted from its report and from the
//! audit log, and comparing UIDs and resourceVersions of the objects it must leave alone.

use std::collections::BTreeMap;

use driftless::config::Source;
use driftless::inventory::{self, applyset};
use driftless::keys;
use driftless::manifest::ObjectRef;
use driftless::report::changes::Action;
use driftless::report::{Reason, Report, State};
use driftless_tests::agent::{
    self, audit_events, configmap, configmaps, driftless_requests_since, dynamic_api, get, is_write, Agent, AGENT_NAMESPACE,
};
use driftless_tests::{unique_name, GitFixture, TestNamespace};
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Value};

/// Deletes Driftless sent to a namespace since the audit log had `since` events.
fn deletes_since(since: usize, namespace: &str) -> usize {
    audit_events()[since..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["namespace"].as_str() == Some(namespace))
        .count()
}

/// Writes (not dry-runs) Driftless sent to objects of a namespace since the audit log had `since`
/// events, as `verb resource/name`.
fn writes_in_namespace_since(since: usize, namespace: &str) -> Vec<String> {
    driftless_requests_since(since, namespace, "")
        .iter()
        .filter(|e| is_write(e) && e["objectRef"]["namespace"].as_str() == Some(namespace))
        .map(|e| {
            format!(
                "{} {}/{}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Writes Driftless sent to one object of the agent's namespace since `since`.
fn writes_to_agent_object_since(since: usize, resource: &str, name: &str) -> usize {
    audit_events()[since..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| is_write(e))
        .filter(|e| {
            e["objectRef"]["namespace"] == AGENT_NAMESPACE && e["objectRef"]["resource"] == resource && e["objectRef"]["name"] == name
        })
        .count()
}

fn assert_synced(report: &Report) {
    assert_eq!(report.state, State::Synced, "{:?}: {}\n{:#?}", report.reason, report.message, report.changes);
}

fn assert_validation_failed(report: &Report) {
    assert_eq!((report.state, report.reason), (State::Failed, Some(Reason::ValidationFailed)), "{}\n{:#?}", report.message, report.changes);
}

fn part_of(object: &Value) -> Option<&str> {
    object["metadata"]["labels"][keys::APPLYSET_PART_OF].as_str()
}

fn uid(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

fn resource_version(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap_or_default()
}

/// The ApplySet id of a source run by the tests' agent.
fn applyset_id_of(source: &Source) -> String {
    applyset::applyset_id(&applyset::parent_ref(&source.name, AGENT_NAMESPACE))
}

/// The names of the report's entries with `action`.
fn names_with(report: &Report, action: Action) -> Vec<String> {
    report.changes.entries.iter().filter(|c| c.action == action).map(|c| c.id.name.clone()).collect()
}

/// The message of the report's single entry for object `name`, which must have `action`.
fn entry_message(report: &Report, name: &str, action: Action) -> String {
    let entries: Vec<_> = report.changes.entries.iter().filter(|c| c.id.name == name).collect();
    assert_eq!(entries.len(), 1, "one entry for {name}: {:#?}", report.changes);
    assert_eq!(entries[0].action, action, "{name}: {:#?}", report.changes);
    entries[0].message.clone()
}

fn cm_api(agent: &Agent, namespace: &str) -> Api<DynamicObject> {
    dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", namespace)
}

/// Creates an object as a person would with `kubectl create`: a plain create with the client's
/// default field manager (an Update entry in managedFields, never an Apply of `driftless`).
async fn create_by_hand(api: &Api<DynamicObject>, object: Value) -> Value {
    let object: DynamicObject = serde_json::from_value(object).expect("a valid object");
    let created = api.create(&PostParams::default(), &object).await.expect("create by hand");
    serde_json::to_value(created).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_object_with_a_copied_label_is_never_pruned() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "own-copied").await;
    let cms = cm_api(&agent, ns.name());

    // given a source synced with ConfigMaps c0, c1, c2
    let repo = GitFixture::new();
    for name in ["c0", "c1", "c2"] {
        repo.write(format!("{name}.yaml"), configmap(name, "v1"));
    }
    repo.commit("three configmaps");
    let mut source = agent::source("own-copied", &repo.url(), ns.name());
    let first = agent.sync(&source).await;
    assert_synced(&first);
    assert_eq!(first.changes.count(Action::Created), 3, "{:#?}", first.changes);

    // and a ConfigMap made by hand in the same namespace with the set's label and even the
    // source annotation, both copied from a member
    let member = get(&cms, "c0").await.expect("c0 exists");
    let label = part_of(&member).expect("c0 is a member").to_string();
    assert_eq!(label, applyset_id_of(&source));
    let annotation = member["metadata"]["annotations"][keys::SOURCE].as_str().expect("c0 names its source").to_string();
    assert_eq!(annotation, source.name);
    let imposter = create_by_hand(
        &cms,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "imposter", "labels": {keys::APPLYSET_PART_OF: label}, "annotations": {keys::SOURCE: annotation}},
            "data": {"value": "by-hand"}}),
    )
    .await;
    let imposter_uid = uid(&imposter).to_string();
    let managers: Vec<(&str, &str)> = imposter["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|f| (f["manager"].as_str().unwrap_or_default(), f["operation"].as_str().unwrap_or_default()))
        .collect();
    assert!(!managers.contains(&(driftless::FIELD_MANAGER, "Apply")), "made by hand, not applied by Driftless: {managers:?}");

    // when a commit removes one of the source's own ConfigMaps
    repo.remove("c1.yaml");
    repo.commit("drop c1");
    let audit = audit_events().len();
    let report = agent.sync(&source).await;

    // then only that member is deleted; the hand-made object is kept and reported as NotOwned
    assert_synced(&report);
    assert_eq!(names_with(&report, Action::Deleted), ["c1"], "{:#?}", report.changes);
    assert_eq!(deletes_since(audit, ns.name()), 1, "one delete in the namespace (audit log)");
    let message = entry_message(&report, "imposter", Action::Skipped);
    assert!(message.contains("NotOwned"), "{message}");
    let kept = get(&cms, "imposter").await.expect("the hand-made ConfigMap still exists");
    assert_eq!(uid(&kept), imposter_uid, "the same object, not recreated");
    assert!(kept["metadata"]["deletionTimestamp"].is_null(), "not being deleted");
    assert_eq!(kept["data"]["value"], "by-hand");
    agent::eventually("c1 to be deleted", || async { get(&cms, "c1").await.is_none() }).await;

    // and when every one of the source's objects leaves git (allowEmpty, any share), the
    // hand-made object is still kept: it is neither deleted nor counted as the set's to delete
    repo.remove("c0.yaml");
    repo.remove("c2.yaml");
    repo.write("README.md", "nothing to deploy\n");
    repo.commit("everything removed");
    source.allow_empty = true;
    source.max_prune_percent = 100;
    let audit = audit_events().len();
    let emptied = agent.sync(&source).await;
    assert_synced(&emptied);
    let mut deleted = names_with(&emptied, Action::Deleted);
    deleted.sort();
    assert_eq!(deleted, ["c0", "c2"], "{:#?}", emptied.changes);
    assert_eq!(deletes_since(audit, ns.name()), 2, "two deletes in the namespace (audit log)");
    assert!(entry_message(&emptied, "imposter", Action::Skipped).contains("NotOwned"));
    let kept = get(&cms, "imposter").await.expect("the hand-made ConfigMap still exists");
    assert_eq!(uid(&kept), imposter_uid);
    assert!(kept["metadata"]["deletionTimestamp"].is_null());
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_may_not_manage_the_agents_parents_or_lease() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "own-bookkeeping").await;
    let cms = cm_api(&agent, ns.name());
    let agent_cms = cm_api(&agent, AGENT_NAMESPACE);
    let leases = dynamic_api(&agent.client, "coordination.k8s.io/v1", "Lease", "leases", AGENT_NAMESPACE);

    // given another source, whose ApplySet parent lives in the agent's namespace
    let other_repo = GitFixture::new();
    other_repo.write("theirs.yaml", configmap("theirs", "v1"));
    other_repo.commit("another source");
    let other = agent::source("own-other", &other_repo.url(), ns.name());
    assert_synced(&agent.sync(&other).await);
    let other_parent = format!("driftless-{}", other.name);
    let other_parent_before = get(&agent_cms, &other_parent).await.expect("the other source's parent exists");

    // when a repository declares that parent, a Lease in the agent's namespace and a valid
    // ConfigMap of its own
    let lease = unique_name("own-lease");
    let repo = GitFixture::new();
    repo.write(
        "parent.yaml",
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {other_parent}\n  namespace: {AGENT_NAMESPACE}\ndata:\n  value: taken\n"
        ),
    );
    repo.write(
        "lease.yaml",
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {lease}\n  namespace: {AGENT_NAMESPACE}\nspec:\n  holderIdentity: intruder\n"),
    );
    repo.write("app.yaml", configmap("app", "v1"));
    repo.commit("bookkeeping");
    let source = agent::source("own-bookkeeping", &repo.url(), ns.name());
    let audit = audit_events().len();
    let report = agent.sync(&source).await;

    // then the revision fails, naming each object and its file
    assert_validation_failed(&report);
    let m = &report.message;
    assert!(m.contains(&format!("ConfigMap {AGENT_NAMESPACE}/{other_parent} (parent.yaml:1)")), "the parent is named: {m}");
    assert!(m.contains(&format!("Lease.coordination.k8s.io {AGENT_NAMESPACE}/{lease} (lease.yaml:1)")), "the Lease is named: {m}");
    assert_eq!(m.matches("may not manage them").count(), 2, "{m}");
    assert!(!m.contains("/app"), "the valid ConfigMap is not blamed: {m}");

    // and nothing was written: not the valid ConfigMap, not the parent, not the Lease
    assert_eq!(writes_in_namespace_since(audit, ns.name()), Vec::<String>::new());
    assert!(get(&cms, "app").await.is_none(), "the valid ConfigMap was created");
    assert_eq!(configmaps(&agent.client, ns.name()).await.keys().collect::<Vec<_>>(), ["theirs"]);
    assert_eq!(writes_to_agent_object_since(audit, "configmaps", &other_parent), 0);
    assert_eq!(writes_to_agent_object_since(audit, "leases", &lease), 0);
    let other_parent_after = get(&agent_cms, &other_parent).await.expect("the other source's parent exists");
    assert_eq!(resource_version(&other_parent_after), resource_version(&other_parent_before), "the other parent was written");
    assert!(other_parent_after["data"]["value"].is_null(), "git's data reached the other parent");
    assert!(get(&leases, &lease).await.is_none(), "the Lease was created");

    // given a ConfigMap in the test namespace that is the parent of a kubectl ApplySet
    let kubectl_parent = ObjectRef::new("", "ConfigMap", ns.name(), "kubectl-set");
    let parent_live = create_by_hand(
        &cms,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubectl-set",
                "labels": {keys::APPLYSET_ID: applyset::applyset_id(&kubectl_parent)},
                "annotations": {keys::APPLYSET_TOOLING: "kubectl/v1.35.4", keys::APPLYSET_GROUP_KINDS: "ConfigMap"}}}),
    )
    .await;

    // when the repository (without the agent's bookkeeping now) declares it
    repo.remove("parent.yaml");
    repo.remove("lease.yaml");
    repo.write("kubectl-set.yaml", configmap("kubectl-set", "from-git"));
    repo.commit("a kubectl ApplySet's parent");
    let audit = audit_events().len();
    let report = agent.sync(&source).await;

    // then the revision fails naming it, and the live parent is unchanged
    assert_validation_failed(&report);
    let m = &report.message;
    assert!(m.contains(&format!("ConfigMap {}/kubectl-set (kubectl-set.yaml:1): is the parent of an ApplySet", ns.name())), "{m}");
    assert_eq!(writes_in_namespace_since(audit, ns.name()), Vec::<String>::new());
    let after = get(&cms, "kubectl-set").await.expect("the kubectl parent exists");
    assert_eq!(resource_version(&after), resource_version(&parent_live), "the kubectl parent was written");
    assert!(after["data"]["value"].is_null());
    assert!(get(&cms, "app").await.is_none(), "the valid ConfigMap was created");

    // and once the repository no longer declares it, the revision syncs
    repo.remove("kubectl-set.yaml");
    repo.commit("leave kubectl's set alone");
    let audit = audit_events().len();
    let fixed = agent.sync(&source).await;
    assert_synced(&fixed);
    assert_eq!(names_with(&fixed, Action::Created), ["app"], "{:#?}", fixed.changes);
    // (the audit log shows that write: the "nothing written" checks above can fail)
    assert_eq!(writes_in_namespace_since(audit, ns.name()), ["patch configmaps/app"]);
    let untouched = get(&cms, "kubectl-set").await.expect("the kubectl parent exists");
    assert_eq!(resource_version(&untouched), resource_version(&parent_live));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_moved_between_sources_keeps_its_uid() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "own-move").await;
    let cms = cm_api(&agent, ns.name());
    let agent_cms = cm_api(&agent, AGENT_NAMESPACE);

    // given source A owns ConfigMaps moved, a1 and a2
    let repo_a = GitFixture::new();
    for (name, data) in [("moved", "from-a"), ("a1", "v1"), ("a2", "v1")] {
        repo_a.write(format!("{name}.yaml"), configmap(name, data));
    }
    repo_a.commit("a");
    let source_a = agent::source("own-a", &repo_a.url(), ns.name());
    let first = agent.sync(&source_a).await;
    assert_synced(&first);
    assert_eq!(first.changes.count(Action::Created), 3, "{:#?}", first.changes);
    let moved_uid = uid(&get(&cms, "moved").await.expect("moved exists")).to_string();

    // when source B's repository declares moved too (and b1 of its own)
    let repo_b = GitFixture::new();
    repo_b.write("moved.yaml", configmap("moved", "from-b")).write("b1.yaml", configmap("b1", "v1"));
    repo_b.commit("b");
    let source_b = agent::source("own-b", &repo_b.url(), ns.name());
    let parent_b = format!("driftless-{}", source_b.name);
    let audit = audit_events().len();
    let claimed = agent.sync(&source_b).await;

    // then B fails naming A, writes nothing in the namespace, and records its claim on its parent
    assert_validation_failed(&claimed);
    let m = &claimed.message;
    assert!(m.contains(&format!("ConfigMap {}/moved (moved.yaml:1)", ns.name())), "{m}");
    assert!(m.contains("handed over") && m.contains(&source_a.name), "{m}");
    assert_eq!(writes_in_namespace_since(audit, ns.name()), Vec::<String>::new());
    assert!(get(&cms, "b1").await.is_none(), "b1 was created");
    let moved = get(&cms, "moved").await.expect("moved exists");
    assert_eq!((part_of(&moved), moved["data"]["value"].as_str()), (Some(applyset_id_of(&source_a).as_str()), Some("from-a")));
    let claims = |parent: &Value| parent["metadata"]["annotations"][keys::CLAIMS].as_str().map(inventory::prune::decode_claims);
    let parent = get(&agent_cms, &parent_b).await.expect("B's parent exists");
    assert_eq!(
        claims(&parent),
        Some(vec![["".to_string(), "ConfigMap".into(), ns.name().into(), "moved".into()]]),
        "{:#?}",
        parent["metadata"]["annotations"]
    );

    // and while A's revision declares it, nothing changes for A
    let audit = audit_events().len();
    let still = agent.sync(&source_a).await;
    assert_synced(&still);
    assert_eq!(still.changes.count(Action::Unchanged), 3, "{:#?}", still.changes);
    assert_eq!(writes_in_namespace_since(audit, ns.name()), Vec::<String>::new());

    // when A's repository drops moved
    repo_a.remove("moved.yaml");
    repo_a.commit("moved goes to b");
    let audit = audit_events().len();
    let handed = agent.sync(&source_a).await;

    // then A hands it over instead of deleting it: relabelled to B's set, same UID, A's data
    assert_synced(&handed);
    let message = entry_message(&handed, "moved", Action::Skipped);
    assert!(message.contains("handed over"), "{message}");
    assert_eq!(handed.changes.count(Action::Deleted), 0, "{:#?}", handed.changes);
    assert_eq!(deletes_since(audit, ns.name()), 0, "no delete in the namespace (audit log)");
    let moved = get(&cms, "moved").await.expect("moved still exists");
    assert_eq!(uid(&moved), moved_uid);
    assert_eq!(part_of(&moved), Some(applyset_id_of(&source_b).as_str()), "labelled with B's set");
    assert_eq!(moved["data"]["value"], "from-a");

    // when B syncs again
    let adopted = agent.sync(&source_b).await;

    // then B adopts it in place: same UID as at the start, B's data and label; the claim is gone
    assert_synced(&adopted);
    let actions: BTreeMap<String, Action> = adopted.changes.entries.iter().map(|c| (c.id.name.clone(), c.action)).collect();
    assert_eq!(actions, BTreeMap::from([("b1".into(), Action::Created), ("moved".into(), Action::Configured)]));
    let moved = get(&cms, "moved").await.expect("moved still exists");
    assert_eq!(uid(&moved), moved_uid, "the same object since A created it");
    assert_eq!(moved["data"]["value"], "from-b");
    assert_eq!(part_of(&moved), Some(applyset_id_of(&source_b).as_str()));
    assert_eq!(moved["metadata"]["annotations"][keys::SOURCE], source_b.name.as_str());
    let parent = get(&agent_cms, &parent_b).await.expect("B's parent exists");
    assert_eq!(claims(&parent), None, "B's parent still claims: {:#?}", parent["metadata"]["annotations"]);

    // and a member A drops that nobody claims is still deleted
    repo_a.remove("a1.yaml");
    repo_a.commit("drop a1");
    let audit = audit_events().len();
    let pruned = agent.sync(&source_a).await;
    assert_synced(&pruned);
    assert_eq!(names_with(&pruned, Action::Deleted), ["a1"], "{:#?}", pruned.changes);
    assert_eq!(deletes_since(audit, ns.name()), 1, "one delete in the namespace (audit log)");
    agent::eventually("a1 to be deleted", || async { get(&cms, "a1").await.is_none() }).await;
    assert_eq!(uid(&get(&cms, "moved").await.expect("moved still exists")), moved_uid);
    assert_eq!(configmaps(&agent.client, ns.name()).await.keys().collect::<Vec<_>>(), ["a2", "b1", "moved"]);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_installs_never_share_a_sources_applyset() {
    // two installs with one inventory namespace: the default one and "other"
    let first = Agent::new().await;
    let mut second = Agent::new().await;
    second.ctx.instance = "other".into();
    let ns = TestNamespace::new(&first.client, "own-install").await;
    let cms = cm_api(&first, ns.name());
    let agent_cms = cm_api(&first, AGENT_NAMESPACE);

    // given a source synced by the first install
    let repo = GitFixture::new();
    repo.write("c0.yaml", configmap("c0", "v1")).write("c1.yaml", configmap("c1", "v1"));
    repo.commit("two configmaps");
    let source = agent::source("own-install", &repo.url(), ns.name());
    let synced = first.sync(&source).await;
    assert_synced(&synced);
    assert_eq!(synced.changes.count(Action::Created), 2, "{:#?}", synced.changes);
    let parent_name = format!("driftless-{}", source.name);
    let parent_before = get(&agent_cms, &parent_name).await.expect("the parent exists");
    assert_eq!(parent_before["metadata"]["annotations"][keys::INSTANCE], "driftless", "the parent names its install");
    let before = configmaps(&first.client, ns.name()).await;

    // when the second install syncs a source of the same name, at a revision that edits c0,
    // removes c1 and adds c2
    repo.write("c0.yaml", configmap("c0", "v2")).write("c2.yaml", configmap("c2", "v1"));
    repo.remove("c1.yaml");
    repo.commit("edit, remove, add");
    let audit = audit_events().len();
    let refused = second.sync(&source).await;

    // then it fails naming the parent and the install that owns it
    assert_validation_failed(&refused);
    let m = &refused.message;
    assert!(m.contains(&format!("ConfigMap {AGENT_NAMESPACE}/{parent_name}")), "the parent is named: {m}");
    assert!(m.contains("\"driftless\""), "the other install is named: {m}");

    // and nothing of its revision was written: no object, no parent
    let writes: Vec<String> = driftless_requests_since(audit, ns.name(), &source.name)
        .iter()
        .filter(|e| is_write(e))
        .map(|e| format!("{} {}", e["verb"], e["objectRef"]["name"]))
        .collect();
    assert_eq!(writes, Vec::<String>::new());
    assert_eq!(configmaps(&first.client, ns.name()).await, before, "the ConfigMaps changed");
    assert_eq!(get(&cms, "c0").await.expect("c0 exists")["data"]["value"], "v1");
    let parent_after = get(&agent_cms, &parent_name).await.expect("the parent exists");
    assert_eq!(resource_version(&parent_after), resource_version(&parent_before), "the parent was written");
    assert_eq!(parent_after["metadata"]["annotations"][keys::INSTANCE], "driftless");

    // and the first install still syncs it: the revision applies and prunes as usual (and the
    // audit log shows those writes, so the check above can fail)
    let audit = audit_events().len();
    let applied = first.sync(&source).await;
    assert_synced(&applied);
    assert_eq!(
        (names_with(&applied, Action::Created), names_with(&applied, Action::Configured), names_with(&applied, Action::Deleted)),
        (vec!["c2".to_string()], vec!["c0".to_string()], vec!["c1".to_string()]),
        "{:#?}",
        applied.changes
    );
    let writes = driftless_requests_since(audit, ns.name(), &source.name).iter().filter(|e| is_write(e)).count();
    assert!(writes >= 4, "c0, c2 and the parent patched, c1 deleted: {writes} writes");
    ns.cleanup().await;
}
