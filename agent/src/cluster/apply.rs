//! Server-side apply, field manager `driftless`, forcing conflicts (git wins), with strict field
//! validation; and the dry-run create that judges an object in a namespace other than its own.

use kube::api::{Patch, PatchParams};
use serde_json::Value;

use super::{to_value, Cluster};
use crate::manifest::{ObjectRef, ResourceType};
use crate::FIELD_MANAGER;

/// How an object is applied.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Only validate: the server answers what it would store.
    pub dry_run: bool,
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
        let mut params = PatchParams::apply(FIELD_MANAGER).force().validation_strict();
        params.dry_run = opts.dry_run;
        let applied = self.api(rt, &id.namespace).patch(&id.name, &params, &Patch::Apply(object)).await?;
        Ok(to_value(applied))
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
