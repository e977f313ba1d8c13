//! A live object as a reconcile keeps it: read from the cluster (one GET or a paged LIST) and
//! reduced at once to what the checks read, and for a full sync the body a dry-run result is
//! compared with. Memory grows with what Driftless manages, not with the objects' size.

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};
use kube::api::{DynamicObject, ObjectMeta};
use serde_json::Value;

use super::drift::Expected;
use crate::cluster::{api_message, status_code, Cluster};
use crate::manifest::{ObjectRef, ResourceType};
use crate::plan::{Plan, Planned};
use crate::{keys, FIELD_MANAGER};

/// How many objects are read at once.
const READ_CONCURRENCY: usize = 32;

/// Reading a desired object failed (not: it does not exist).
#[derive(Debug, thiserror::Error)]
#[error("{id}: reading the live object: {}", api_message(.source))]
pub struct ReadError {
    pub id: ObjectRef,
    #[source]
    pub source: kube::Error,
}

/// Metadata the server changes on every write, or that a dry-run fills in differently; not a
/// difference in desired state.
const VOLATILE_METADATA: [&str; 4] = ["managedFields", "resourceVersion", "generation", "creationTimestamp"];

/// How much of a live object a reconcile keeps beyond what its checks read (see [`LiveObject`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Also the body a dry-run result is compared with (a full sync).
    Body,
    /// Only what the checks read (the agent's incremental reconciles, where an object is
    /// dry-run only when its desired hash changed, and watches find drift).
    Checks,
}

/// A live object as a reconcile keeps it. Memory grows with what Driftless manages: a listing
/// is reduced to this as each page arrives, before anything becomes JSON, dropping what no check
/// reads, other managers' `managedFields` first (often the largest part of an object).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveObject {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    /// Its `applyset.kubernetes.io/part-of` label.
    pub part_of: Option<String>,
    /// Its `driftless.dev/desired-hash` annotation.
    pub desired_hash: Option<String>,
    /// Annotated `driftless.dev/prune: disabled`.
    pub prune_disabled: bool,
    /// Its `driftless.dev/source` annotation: the source that applied it.
    pub source: Option<String>,
    /// Driftless's field manager applied it (an Apply entry in its managedFields): a member that
    /// lacks one was not created by Driftless, whatever its labels say, and is never pruned.
    pub owned: bool,
    /// Labelled `applyset.kubernetes.io/id`: the parent of an ApplySet (anyone's).
    pub is_parent: bool,
    /// What Driftless's field manager owns of it now.
    pub expected: Expected,
    /// With [`Keep::Body`]: the object as the differ compares it (no status, no volatile
    /// metadata).
    pub body: Option<Value>,
}

impl LiveObject {
    /// What the checks read of an object's metadata; Driftless's managedFields are reduced to
    /// the expectation and the rest of them dropped.
    pub fn from_meta(meta: &mut ObjectMeta) -> Self {
        let ours: Vec<_> =
            meta.managed_fields.take().unwrap_or_default().into_iter().filter(|f| f.manager.as_deref() == Some(FIELD_MANAGER)).collect();
        let owned = ours.iter().any(|f| f.operation.as_deref() == Some("Apply") && f.subresource.as_deref().unwrap_or("").is_empty());
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let expected = Expected::from_object(&serde_json::json!({"metadata": {"managedFields": ours}}));
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        LiveObject {
            name: text(&meta.name),
            namespace: text(&meta.namespace),
            uid: text(&meta.uid),
            resource_version: text(&meta.resource_version),
            part_of: label(keys::APPLYSET_PART_OF),
            desired_hash: annotation(keys::DESIRED_HASH),
            prune_disabled: annotation(keys::PRUNE).as_deref() == Some("disabled"),
            source: annotation(keys::SOURCE),
            owned,
            is_parent: label(keys::APPLYSET_ID).is_some(),
            expected,
            body: None,
        }
    }

    /// An object with its body ([`Keep::Body`]).
    pub fn read(mut o: DynamicObject) -> Self {
        let mut live = LiveObject::from_meta(&mut o.metadata);
        let mut body = serde_json::to_value(o).unwrap_or(Value::Null);
        strip(&mut body);
        live.body = Some(body);
        live
    }
}

/// Reads one object as a reconcile keeps it, if it exists (only its metadata when only the
/// checks are kept).
pub async fn get(cluster: &Cluster, rt: &ResourceType, id: &ObjectRef, keep: Keep) -> Result<Option<LiveObject>, kube::Error> {
    Ok(match keep {
        Keep::Checks => cluster.get_metadata(rt, id).await?.map(|mut o| LiveObject::from_meta(&mut o.metadata)),
        Keep::Body => cluster.get_object(rt, id).await?.map(LiveObject::read),
    })
}

/// Lists objects of one type matching a label selector (in one namespace, or all when empty),
/// each kept as `keep` says as its page arrives; when only the checks are kept, the server sends
/// only metadata.
pub async fn list(
    cluster: &Cluster,
    rt: &ResourceType,
    namespace: &str,
    selector: &str,
    keep: Keep,
) -> Result<Vec<LiveObject>, kube::Error> {
    match keep {
        Keep::Checks => cluster.list_metadata(rt, namespace, selector, |mut o| LiveObject::from_meta(&mut o.metadata)).await,
        Keep::Body => cluster.list_objects(rt, namespace, selector, LiveObject::read).await,
    }
}

/// Beyond this many desired objects of one kind in one namespace that are not members yet, one
/// (paged) LIST of that kind and namespace replaces their GETs: a first sync of a large set.
const LIST_INSTEAD_OF_GETS: usize = 20;

/// Live objects by identity: `live` (the set's members, as listed) and every desired object that
/// is not one of them yet, by GET (or by a LIST of their kind and namespace when many are missing).
pub async fn read_desired(
    cluster: &Cluster,
    plan: &Plan,
    mut live: HashMap<ObjectRef, LiveObject>,
    keep: Keep,
) -> Result<HashMap<ObjectRef, LiveObject>, ReadError> {
    let missing: Vec<&Planned> = plan.objects().iter().filter(|p| !live.contains_key(&p.id) && !p.needs_crd).collect();
    let mut by_scope: HashMap<(String, String, String), Vec<&Planned>> = HashMap::new();
    for p in &missing {
        by_scope.entry((p.id.group.clone(), p.id.kind.clone(), p.id.namespace.clone())).or_default().push(p);
    }
    let mut singles: Vec<&Planned> = Vec::new();
    for ((_, _, namespace), objects) in by_scope {
        let Some(first) = objects.first().copied().filter(|_| objects.len() > LIST_INSTEAD_OF_GETS) else {
            singles.extend(objects);
            continue;
        };
        let wanted: HashSet<&ObjectRef> = objects.iter().map(|p| &p.id).collect();
        match list(cluster, &first.resource, &namespace, "", keep).await {
            Ok(items) => {
                for item in items {
                    let id = ObjectRef::new(first.id.group.clone(), first.id.kind.clone(), item.namespace.clone(), item.name.clone());
                    if wanted.contains(&id) {
                        live.insert(id, item);
                    }
                }
            }
            // a namespace this revision creates does not exist yet: nothing lives there
            Err(e) if status_code(&e) == Some(404) => {}
            // e.g. may not list there: look each object up instead
            Err(_) => singles.extend(objects),
        }
    }
    let singles = &singles;
    let fetched: Vec<(ObjectRef, Result<Option<LiveObject>, kube::Error>)> = stream::iter(0..singles.len())
        .map(|i| async move {
            let p = singles[i];
            (p.id.clone(), get(cluster, &p.resource, &p.id, keep).await)
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    for (id, result) in fetched {
        match result {
            Ok(Some(o)) => {
                live.insert(id, o);
            }
            Ok(None) => {}
            // a namespace that does not exist yet answers 404 above; anything else is fatal
            Err(e) => return Err(ReadError { id, source: e }),
        }
    }
    Ok(live)
}

/// Drops what is no difference in desired state: status and volatile metadata (what the
/// differ ignores).
pub fn strip(o: &mut Value) {
    if let Some(map) = o.as_object_mut() {
        // Identity is known from the plan; list items come without apiVersion and kind, and a
        // dry-run through another served version describes the same object.
        map.remove("apiVersion");
        map.remove("kind");
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in VOLATILE_METADATA {
                meta.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_keeps_what_the_checks_read_and_for_a_full_sync_what_the_differ_compares() {
        let full = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "labels": {keys::APPLYSET_PART_OF: "set"},
                "annotations": {keys::DESIRED_HASH: "h", keys::PRUNE: "disabled", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "driftless", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                                  {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}}]},
            "spec": {"replicas": 3}, "status": {"availableReplicas": 3}});
        let object = || serde_json::from_value::<kube::api::DynamicObject>(full.clone()).unwrap();

        let checks = LiveObject::from_meta(&mut object().metadata);
        assert_eq!(
            (checks.name.as_str(), checks.namespace.as_str(), checks.uid.as_str(), checks.resource_version.as_str()),
            ("a", "n", "u", "7")
        );
        assert_eq!(checks.part_of.as_deref(), Some("set"));
        assert_eq!(checks.desired_hash.as_deref(), Some("h"));
        assert!(checks.prune_disabled);
        assert_eq!(checks.expected, Expected::from_object(&full), "the drift expectation of the full object");
        assert!(checks.body.is_none());
        let body = LiveObject::read(object());
        assert_eq!(LiveObject { body: None, ..body.clone() }, checks);
        let body = body.body.unwrap();
        assert!(body.get("status").is_none() && body["metadata"].get("managedFields").is_none());
        assert_eq!(body["spec"], full["spec"]);
    }
}
