//! Prune: the ApplySet inventory in the cluster and the safeguarded deletion of members that
//! left git. What to delete is decided by [`crate::plan::prune`]; this module lists members,
//! deletes in reverse order with preconditions, and keeps the parent's record.
//!
//! Deletion is guarded twice: the planner only picks objects whose live part-of label names this
//! set, and every delete carries the uid and resourceVersion seen in that listing, so an object
//! relabelled or replaced since is never touched.

pub mod applyset;

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::{Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::apply::changeset::{Action, ChangeSet};
use crate::apply::{api_message, status_code, Cluster, Keep, Live};
use crate::keys;
use crate::manifest::{GroupKind, ObjectRef, ResourceType};
use crate::plan::prune::{LiveObject, PrunePlan};
use crate::plan::Catalog;
use applyset::Inventory;

fn configmap_type() -> ResourceType {
    ResourceType { group: String::new(), version: "v1".into(), kind: "ConfigMap".into(), plural: "configmaps".into(), namespaced: true }
}

fn namespace_type() -> ResourceType {
    ResourceType { group: String::new(), version: "v1".into(), kind: "Namespace".into(), plural: "namespaces".into(), namespaced: false }
}

/// Creates the agent's namespace when it is missing (never pruned).
pub async fn ensure_namespace(cluster: &Cluster, name: &str) -> Result<(), kube::Error> {
    let ns = ObjectRef::new("", "Namespace", "", name);
    match cluster.get(&namespace_type(), &ns).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        // least privilege: an agent that may not read namespaces runs in one that exists
        Err(e) if status_code(&e) == Some(403) => return Ok(()),
        Err(e) => return Err(e),
    }
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let params = PatchParams::apply(crate::FIELD_MANAGER);
    cluster.api(&namespace_type(), "").patch(name, &params, &Patch::Apply(&body)).await?;
    Ok(())
}

/// The live parent and what it records, if the set exists.
pub async fn read_parent(cluster: &Cluster, parent: &ObjectRef) -> Result<Option<(Value, Inventory)>, kube::Error> {
    Ok(cluster.get(&configmap_type(), parent).await?.map(|live| {
        let inv = Inventory::from_annotations(&live["metadata"]["annotations"]);
        (live, inv)
    }))
}

/// Writes the parent: id label, tooling, group-kinds and namespaces, plus extra annotations
/// (the last applied revision and state).
pub async fn write_parent(
    cluster: &Cluster,
    parent: &ObjectRef,
    inventory: &Inventory,
    extra_annotations: &[(&str, String)],
) -> Result<(), kube::Error> {
    let id = applyset::applyset_id(parent);
    let mut annotations = inventory.annotations();
    for (k, v) in extra_annotations {
        annotations[*k] = json!(v);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": parent.name,
            "namespace": parent.namespace,
            "labels": {keys::APPLYSET_ID: id, "app.kubernetes.io/managed-by": "driftless"},
            "annotations": annotations,
        },
    });
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    cluster.api(&configmap_type(), &parent.namespace).patch(&parent.name, &params, &Patch::Apply(&body)).await?;
    Ok(())
}

/// Listing the set's members failed: for which kind and namespace, and why.
#[derive(Debug, thiserror::Error)]
#[error("listing {what}: {}", api_message(.source))]
pub struct ListError {
    pub what: String,
    #[source]
    pub source: kube::Error,
}

impl ListError {
    /// Forbidden: the revision reaches where this agent may not read.
    pub fn is_forbidden(&self) -> bool {
        status_code(&self.source) == Some(403)
    }
}

/// A member as listed: plain data for the planner, what the reconcile keeps of it, and its type.
#[derive(Clone, Debug)]
pub struct Member {
    pub live: LiveObject,
    pub current: Live,
    pub resource: Arc<ResourceType>,
}

/// Lists every object labelled as a member of the set, in the recorded group-kinds and
/// namespaces (never cluster-wide for namespaced kinds, and never a namespace that holds no
/// member, so namespace-scoped RBAC suffices).
/// Each kind is read through the version the plan applies (`versions`), else the most stable
/// served one, so that listed objects compare field for field with their dry-runs. Each object
/// is reduced to what `keep` says as it arrives.
pub async fn list_members(
    cluster: &Cluster,
    catalog: &Catalog,
    versions: &HashMap<GroupKind, Arc<ResourceType>>,
    applyset_id: &str,
    inventory: &Inventory,
    keep: Keep,
) -> Result<Vec<Member>, ListError> {
    let selector = format!("{}={applyset_id}", keys::APPLYSET_PART_OF);
    let namespaces = &inventory.namespaces;
    let mut members = Vec::new();
    for gk in &inventory.group_kinds {
        let Some(rt) = catalog.preferred(gk).map(|preferred| versions.get(gk).unwrap_or(preferred)) else {
            if !versions.contains_key(gk) {
                warn!(group_kind = %gk, "the set records a kind the server no longer serves; its members cannot be listed");
            }
            continue;
        };
        let scopes: Vec<&str> = if rt.namespaced { namespaces.iter().map(String::as_str).collect() } else { vec![""] };
        for ns in scopes {
            let items = match cluster.list_live(rt, ns, &selector, keep).await {
                Ok(items) => items,
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => {
                    let scope = if ns.is_empty() { "the cluster".to_string() } else { format!("namespace {ns}") };
                    return Err(ListError { what: format!("{gk} in {scope}"), source: e });
                }
            };
            for current in items {
                members.push(Member { live: live_object(gk, &rt.plural, &current), current, resource: rt.clone() });
            }
        }
    }
    debug!(count = members.len(), "listed set members");
    Ok(members)
}

/// Plain data of a live object for the planner.
pub fn live_object(gk: &GroupKind, plural: &str, live: &Live) -> LiveObject {
    LiveObject {
        id: ObjectRef::new(gk.group.clone(), gk.kind.clone(), live.namespace.clone(), live.name.clone()),
        uid: live.uid.clone(),
        resource_version: live.resource_version.clone(),
        part_of: live.part_of.clone(),
        prune_disabled: live.prune_disabled,
        owned: live.owned,
        plural: plural.to_string(),
    }
}

/// The claims of every other Driftless parent in the agent's namespace: object -> the claiming
/// set's id (see [`keys::CLAIMS`]).
pub async fn read_claims(cluster: &Cluster, agent_namespace: &str, own: &ObjectRef) -> Result<HashMap<ObjectRef, String>, kube::Error> {
    let parents = cluster.list(&configmap_type(), agent_namespace, "app.kubernetes.io/managed-by=driftless").await?;
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
        let params = PatchParams { field_manager: Some(crate::FIELD_MANAGER.into()), ..PatchParams::default() };
        match cluster.api(rt, &o.id.namespace).patch(&o.id.name, &params, &Patch::Merge(&patch)).await {
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
