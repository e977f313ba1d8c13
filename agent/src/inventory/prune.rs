//! Prune: members that left git are deleted, behind the safeguards [`crate::plan::prune`]
//! decides, in reverse apply order; members another source's revision claims are handed over to
//! that set instead. Every delete and handover carries what was listed (uid and
//! resourceVersion), so an object relabelled or replaced since is never touched.

use std::collections::{HashMap, HashSet};

use kube::api::Preconditions;
use serde_json::json;
use tracing::{debug, warn};

use super::{Listed, Set};
use crate::cluster::{api_message, status_code, Cluster};
use crate::config::Source;
use crate::keys;
use crate::manifest::{ObjectRef, ResourceType};
use crate::plan::prune::{plan_prune, Hold, KeepReason, PrunePlan, PrunePolicy};
use crate::plan::Plan;
use crate::report::changes::{Action, ChangeSet};

/// The prune stage: deletes the members that left git unless a safeguard holds the prune (then
/// returns the hold). What happened to each is recorded in `changes`.
pub async fn prune(
    cluster: &Cluster,
    source: &Source,
    set: &Set,
    plan: &Plan,
    members: &[Listed],
    changes: &mut ChangeSet,
) -> Option<Hold> {
    let desired: HashSet<&ObjectRef> = plan.objects().iter().map(|p| &p.id).collect();
    // what other sources claim is handed over, not deleted: read it when anything left git
    let mut claims = HashMap::new();
    if members.iter().any(|m| !desired.contains(&m.member.id)) {
        match read_claims(cluster, &set.agent_namespace, &set.parent).await {
            Ok(c) => claims = c,
            Err(e) => {
                changes.push(set.parent.clone(), Action::Failed, format!("not pruned: reading other sources' claims: {}", api_message(&e)));
                return None;
            }
        }
    }
    let policy = policy(source, set, claims);
    let prune_plan = plan_prune(members.iter().map(|m| &m.member), &desired, &policy);
    for (id, reason) in &prune_plan.kept {
        if *reason != KeepReason::NotAMember {
            changes.push(id.clone(), Action::Skipped, format!("not pruned: {reason:?}"));
        }
    }
    if let Some(hold) = &prune_plan.held {
        warn!(source = %source.name, %hold, "prune held");
        return Some(hold.clone());
    }
    let types = members.iter().map(|m| (&m.member.id, &*m.resource)).collect();
    execute(cluster, &prune_plan, &types, changes).await;
    None
}

/// The safeguards of a source's prune: its settings, its set, and what other sets claim.
pub fn policy(source: &Source, set: &Set, claims: HashMap<ObjectRef, String>) -> PrunePolicy {
    PrunePolicy {
        applyset_id: set.id.clone(),
        allow_empty: source.allow_empty,
        max_prune_percent: source.max_prune_percent,
        prunable: source.prunable.clone(),
        agent_namespace: set.agent_namespace.clone(),
        parent: set.parent.clone(),
        claims,
    }
}

/// The claims of every other Driftless parent in the agent's namespace: object -> the claiming
/// set's id (see [`keys::CLAIMS`]).
pub async fn read_claims(cluster: &Cluster, agent_namespace: &str, own: &ObjectRef) -> Result<HashMap<ObjectRef, String>, kube::Error> {
    let parents = cluster.list(&ResourceType::config_maps(), agent_namespace, "app.kubernetes.io/managed-by=driftless").await?;
    let mut claims = HashMap::new();
    for parent in parents {
        let meta = &parent["metadata"];
        if meta["name"].as_str() == Some(own.name.as_str()) {
            continue;
        }
        let (Some(set), Some(text)) = (meta["labels"][keys::APPLYSET_ID].as_str(), meta["annotations"][keys::CLAIMS].as_str()) else {
            continue;
        };
        for [group, kind, namespace, name] in decode_claims(text) {
            claims.insert(ObjectRef::new(group, kind, namespace, name), set.to_string());
        }
    }
    Ok(claims)
}

/// The claims annotation's value for these objects.
pub fn encode_claims(ids: &[ObjectRef]) -> String {
    let list: Vec<[&str; 4]> =
        ids.iter().map(|id| [id.group.as_str(), id.kind.as_str(), id.namespace.as_str(), id.name.as_str()]).collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// Reads a claims annotation; anything malformed claims nothing.
pub fn decode_claims(text: &str) -> Vec<[String; 4]> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Carries out a prune plan: hands claimed members over to the claiming set (relabelled, only if
/// unchanged since listed), then deletes in order, each only if the object is unchanged since it
/// was listed. A failed delete is reported and its object stays a member, to be retried.
pub async fn execute(cluster: &Cluster, plan: &PrunePlan, types: &HashMap<&ObjectRef, &ResourceType>, changes: &mut ChangeSet) {
    for (id, reason) in &plan.kept {
        debug!(object = %id, ?reason, "kept by a prune safeguard");
    }
    for (o, claimant) in &plan.handover {
        let Some(rt) = types.get(&o.id) else { continue };
        // the resourceVersion makes the patch a precondition: a changed object is left alone
        let patch = json!({"metadata": {"resourceVersion": o.resource_version, "labels": {keys::APPLYSET_PART_OF: claimant}}});
        match cluster.merge_patch(rt, &o.id, &patch, crate::FIELD_MANAGER).await {
            Ok(_) => changes.push(o.id.clone(), Action::Skipped, format!("handed over to ApplySet {claimant}, which declares it now")),
            Err(e) if status_code(&e) == Some(409) => {
                changes.push(o.id.clone(), Action::Skipped, "changed since it was listed; handed over at the next sync")
            }
            Err(e) => changes.push(o.id.clone(), Action::Failed, format!("handover failed: {}", api_message(&e))),
        }
    }
    for o in &plan.delete {
        let Some(rt) = types.get(&o.id) else {
            changes.push(o.id.clone(), Action::Failed, "its kind is no longer served");
            continue;
        };
        let pre = Preconditions { uid: Some(o.uid.clone()), resource_version: Some(o.resource_version.clone()) };
        match cluster.delete(rt, &o.id, Some(pre)).await {
            Ok(_) => changes.push(o.id.clone(), Action::Deleted, ""),
            Err(e) if status_code(&e) == Some(409) => {
                changes.push(o.id.clone(), Action::Skipped, "changed since it was listed; checked again at the next sync")
            }
            Err(e) => changes.push(o.id.clone(), Action::Failed, format!("delete failed: {}", api_message(&e))),
        }
    }
}
