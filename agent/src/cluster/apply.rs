//! Writes: server-side apply (by default field manager `driftless`, forcing conflicts: git wins),
//! always with strict field validation; the dry-run create that judges an object in a namespace
//! other than its own; a create (Events) and a merge patch (a relabel with a precondition).

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::Value;

use super::{to_value, Cluster};
use crate::manifest::{ObjectRef, ResourceType};
use crate::FIELD_MANAGER;

/// How an object is applied.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Only validate: the server answers what it would store.
    pub dry_run: bool,
    /// Who owns the applied fields.
    pub field_manager: &'static str,
    /// Take over fields another manager owns.
    pub force: bool,
}

impl Default for ApplyOptions {
    /// A write as git's: field manager `driftless`, forced.
    fn default() -> Self {
        ApplyOptions { dry_run: false, field_manager: FIELD_MANAGER, force: true }
    }
}

impl Cluster {
    /// Server-side apply of one object; returns what the server stored (or would store).
    pub async fn apply<T: serde::Serialize + std::fmt::Debug + ?Sized>(
        &self,
        rt: &ResourceType,
        id: &ObjectRef,
        object: &T,
        opts: ApplyOptions,
    ) -> Result<Value, kube::Error> {
        // strict: an unknown or duplicate field fails with its path instead of being dropped
        let mut params = PatchParams::apply(opts.field_manager).validation_strict();
        params.force = opts.force;
        params.dry_run = opts.dry_run;
        let applied = self.api(rt, &id.namespace).patch(&id.name, &params, &Patch::Apply(object)).await?;
        Ok(to_value(applied))
    }

    /// Creates an object (an Event: one per occurrence, named by the server).
    pub async fn create(&self, rt: &ResourceType, namespace: &str, object: &DynamicObject) -> Result<(), kube::Error> {
        self.api(rt, namespace).create(&PostParams::default(), object).await.map(|_| ())
    }

    /// A JSON merge patch by `field_manager`; a `metadata.resourceVersion` in it makes it a
    /// precondition (409 when the object changed).
    pub async fn merge_patch(&self, rt: &ResourceType, id: &ObjectRef, patch: &Value, field_manager: &str) -> Result<(), kube::Error> {
        let params = PatchParams { field_manager: Some(field_manager.into()), ..PatchParams::default() };
        self.api(rt, &id.namespace).patch(&id.name, &params, &Patch::Merge(patch)).await.map(|_| ())
    }

    /// A dry-run create of an object in another namespace (one that exists), with strict field
    /// validation: what the object itself gets wrong, judged before its own namespace exists.
    pub async fn dry_run_create_in(&self, rt: &ResourceType, mut object: Value, namespace: &str) -> Result<(), kube::Error> {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
        let collection = if rt.group.is_empty() {
            format!("/api/{}/namespaces/{namespace}/{}", rt.version, rt.plural)
        } else {
            format!("/apis/{}/{}/namespaces/{namespace}/{}", rt.group, rt.version, rt.plural)
        };
        let uri = format!("{collection}?dryRun=All&fieldManager={FIELD_MANAGER}&fieldValidation=Strict");
        let body = serde_json::to_vec(&object).map_err(kube::Error::SerdeError)?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
        self.client.request::<Value>(request).await.map(|_| ())
    }
}
