//! Inventory: the ApplySet in the cluster. Its parent (a ConfigMap in the agent's namespace)
//! records the group-kinds and namespaces of its members ([`applyset`]); this module reads and
//! writes the parent and lists the members. [`prune`] deletes the members that left git, behind
//! the safeguards that [`crate::plan::prune`] decides, in reverse order with preconditions.
//!
//! Deletion is guarded twice: the planner only picks objects whose live part-of label names this
//! set, and every delete carries the uid and resourceVersion seen in that listing, so an object
//! relabelled or replaced since is never touched.

pub mod applyset;
pub mod prune;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::cluster::apply::ApplyOptions;
use crate::cluster::{api_message, status_code, Cluster};
use crate::keys;
use crate::live::object::{self, Keep, LiveObject};
use crate::manifest::{GroupKind, ObjectRef, ResourceType};
use crate::plan::prune::Member;
use crate::plan::{Catalog, Plan};
use applyset::Inventory;

/// One source's ApplySet: its parent, in the agent's namespace, and the set's id.
#[derive(Clone, Debug)]
pub struct Set {
    pub parent: ObjectRef,
    pub id: String,
    pub agent_namespace: String,
}

impl Set {
    /// The set of the source named `source`.
    pub fn of(source: &str, agent_namespace: &str) -> Self {
        let parent = applyset::parent_ref(source, agent_namespace);
        Set { id: applyset::applyset_id(&parent), parent, agent_namespace: agent_namespace.to_string() }
    }
}

/// Creates the agent's namespace when it is missing (never pruned).
pub async fn ensure_namespace(cluster: &Cluster, name: &str) -> Result<(), kube::Error> {
    let ns = ObjectRef::new("", "Namespace", "", name);
    match cluster.get(&ResourceType::namespaces(), &ns).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        // least privilege: an agent that may not read namespaces runs in one that exists
        Err(e) if status_code(&e) == Some(403) => return Ok(()),
        Err(e) => return Err(e),
    }
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    // not forced: a namespace someone else manages is theirs
    cluster.apply(&ResourceType::namespaces(), &ns, &body, ApplyOptions { force: false, ..ApplyOptions::default() }).await?;
    Ok(())
}

/// The live parent and what it records, if the set exists.
pub async fn read_parent(cluster: &Cluster, parent: &ObjectRef) -> Result<Option<(Value, Inventory)>, kube::Error> {
    Ok(cluster.get(&ResourceType::config_maps(), parent).await?.map(|live| {
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
    cluster.apply(&ResourceType::config_maps(), parent, &body, ApplyOptions::default()).await?;
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

/// A member as listed: plain data for the prune planner, what the reconcile keeps of the live
/// object (taken by the live state's reading, [`LiveObject`] is moved out once read), and its type.
#[derive(Clone, Debug)]
pub struct Listed {
    pub member: Member,
    pub object: LiveObject,
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
) -> Result<Vec<Listed>, ListError> {
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
            let items = match object::list(cluster, rt, ns, &selector, keep).await {
                Ok(items) => items,
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => {
                    let scope = if ns.is_empty() { "the cluster".to_string() } else { format!("namespace {ns}") };
                    return Err(ListError { what: format!("{gk} in {scope}"), source: e });
                }
            };
            for object in items {
                members.push(Listed { member: member_of(gk, &rt.plural, &object), object, resource: rt.clone() });
            }
        }
    }
    debug!(count = members.len(), "listed set members");
    Ok(members)
}

/// Plain data of a live object for the prune planner.
pub fn member_of(gk: &GroupKind, plural: &str, live: &LiveObject) -> Member {
    Member {
        id: ObjectRef::new(gk.group.clone(), gk.kind.clone(), live.namespace.clone(), live.name.clone()),
        uid: live.uid.clone(),
        resource_version: live.resource_version.clone(),
        part_of: live.part_of.clone(),
        prune_disabled: live.prune_disabled,
        owned: live.owned,
        plural: plural.to_string(),
    }
}

/// Group-kinds and namespaces of the desired objects.
pub fn of_plan(plan: &Plan) -> Inventory {
    Inventory { group_kinds: plan.group_kinds(), namespaces: plan.namespaces() }
}

/// The inventory after a reconcile: the desired objects plus members that still exist (not in
/// `deleted`).
pub fn remaining(plan: &Plan, members: &[Listed], deleted: &HashSet<&ObjectRef>) -> Inventory {
    let mut inv = of_plan(plan);
    for m in members.iter().filter(|m| !deleted.contains(&m.member.id)) {
        inv.group_kinds.insert(m.member.id.group_kind());
        if !m.member.id.namespace.is_empty() {
            inv.namespaces.insert(m.member.id.namespace.clone());
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_object_is_planned_as_a_member_of_its_kind() {
        let live = LiveObject {
            name: "a".into(),
            namespace: "n".into(),
            uid: "u".into(),
            resource_version: "7".into(),
            part_of: Some("set".into()),
            prune_disabled: true,
            owned: true,
            ..LiveObject::default()
        };
        let member = member_of(&GroupKind::new("apps", "Deployment"), "deployments", &live);
        assert_eq!(
            (member.id.to_string(), member.uid.as_str(), member.resource_version.as_str(), member.part_of.as_deref()),
            ("Deployment.apps n/a".to_string(), "u", "7", Some("set"))
        );
        assert!(member.prune_disabled && member.owned);
        assert_eq!(member.plural, "deployments");
    }
}
