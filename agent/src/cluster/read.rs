//! Reads: one object, or every object of a type matching a selector, read in pages so a large
//! set never arrives as one response; each item is reduced by the caller as its page arrives.

use kube::api::{Api, DynamicObject, ListParams, ObjectList, PartialObjectMeta};
use serde_json::Value;

use super::{to_value, Cluster, LIST_PAGE};
use crate::manifest::{ObjectRef, ResourceType};

impl Cluster {
    /// The live object, if it exists.
    pub async fn get(&self, rt: &ResourceType, id: &ObjectRef) -> Result<Option<Value>, kube::Error> {
        Ok(self.get_object(rt, id).await?.map(to_value))
    }

    /// The live object as the client reads it, if it exists.
    pub async fn get_object(&self, rt: &ResourceType, id: &ObjectRef) -> Result<Option<DynamicObject>, kube::Error> {
        self.api(rt, &id.namespace).get_opt(&id.name).await
    }

    /// Only the live object's metadata, if it exists.
    pub async fn get_metadata(&self, rt: &ResourceType, id: &ObjectRef) -> Result<Option<PartialObjectMeta<DynamicObject>>, kube::Error> {
        self.api(rt, &id.namespace).get_metadata_opt(&id.name).await
    }

    /// Objects of one type matching a label selector, in one namespace or (empty) all of them.
    pub async fn list(&self, rt: &ResourceType, namespace: &str, selector: &str) -> Result<Vec<Value>, kube::Error> {
        self.list_objects(rt, namespace, selector, to_value).await
    }

    /// Like [`Cluster::list`], each object turned into what the caller keeps as its page arrives.
    pub async fn list_objects<T>(
        &self,
        rt: &ResourceType,
        namespace: &str,
        selector: &str,
        each: impl FnMut(DynamicObject) -> T,
    ) -> Result<Vec<T>, kube::Error> {
        let api = self.api(rt, namespace);
        paged(selector, |p| list_page(&api, p), each).await
    }

    /// Like [`Cluster::list_objects`], the server sending only each object's metadata.
    pub async fn list_metadata<T>(
        &self,
        rt: &ResourceType,
        namespace: &str,
        selector: &str,
        each: impl FnMut(PartialObjectMeta<DynamicObject>) -> T,
    ) -> Result<Vec<T>, kube::Error> {
        let api = self.api(rt, namespace);
        paged(selector, |p| metadata_page(&api, p), each).await
    }
}

async fn list_page(api: &Api<DynamicObject>, params: ListParams) -> Result<ObjectList<DynamicObject>, kube::Error> {
    api.list(&params).await
}

async fn metadata_page(api: &Api<DynamicObject>, params: ListParams) -> Result<ObjectList<PartialObjectMeta<DynamicObject>>, kube::Error> {
    api.list_metadata(&params).await
}

/// Reads a listing page by page, turning each item into what is kept as its page arrives.
async fn paged<I, T, Fut>(
    selector: &str,
    mut page: impl FnMut(ListParams) -> Fut,
    mut each: impl FnMut(I) -> T,
) -> Result<Vec<T>, kube::Error>
where
    Fut: std::future::Future<Output = Result<ObjectList<I>, kube::Error>>,
    I: Clone,
{
    let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
    let mut out = Vec::new();
    loop {
        let list = page(params.clone()).await?;
        out.extend(list.items.into_iter().map(&mut each));
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}
