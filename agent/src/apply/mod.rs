//! Apply: talks to the API server. A server-side dry-run of the whole revision decides what each
//! object needs (create, configure, nothing, recreate) before anything is written; then the
//! objects that need it are applied with server-side apply, field manager `driftless`, forcing
//! conflicts (git wins), stage by stage with bounded concurrency.
//!
//! One file per verb: [`discovery`] (what the server serves), [`diff`] (does a dry-run change the
//! live object), [`changeset`] (what each verb did); this file holds the client and the verbs.

pub mod changeset;
pub mod diff;
pub mod discovery;
pub mod fence;
pub mod throttle;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, ObjectList, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PropagationPolicy,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::Value;

use crate::live::drift::Expected;
use crate::manifest::{ObjectRef, ResourceType};
use crate::plan::Planned;
use crate::{FIELD_MANAGER, VERSION};

/// How many objects of one stage are dry-run or applied at once.
pub const CONCURRENCY: usize = 32;

/// Objects per page when listing: a page is held in full while it is read.
pub const LIST_PAGE: u32 = 250;

/// A client of one cluster, identifying itself as `driftless/<version>`.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

/// How the API client talks to the server. Every request is bounded: a server that accepts the
/// connection and never answers fails the request in `request_timeout`, retries of 429/503/504
/// (honouring Retry-After) included.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// One request from sending it to its response's headers, with every retry of a 429, 503 or
    /// 504 (a watch's stream is not cut by it: watches time out on the server's side and are
    /// restarted).
    pub request_timeout: Duration,
    /// Run a kubeconfig's `exec` credential plugin (runs a program named by the kubeconfig).
    pub allow_exec_plugins: bool,
    /// Writes pass only while it is open (see [`fence`]); open by default.
    pub fence: crate::leader::Fence,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            allow_exec_plugins: false,
            fence: crate::leader::Fence::default(),
        }
    }
}

impl Cluster {
    /// Connects with the given kubeconfig, or the in-cluster / default configuration, with the
    /// default [`ConnectOptions`].
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, crate::Error> {
        Self::connect_with(kubeconfig, &ConnectOptions::default()).await
    }

    /// Connects with the given kubeconfig (else `KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster configuration).
    pub async fn connect_with(kubeconfig: Option<&Path>, opts: &ConnectOptions) -> Result<Self, crate::Error> {
        let found = match kubeconfig {
            Some(path) => Some((
                Kubeconfig::read_from(path).map_err(|e| crate::Error::Config(format!("cannot read kubeconfig {}: {e}", path.display())))?,
                path.display().to_string(),
            )),
            None => Kubeconfig::read().ok().map(|kc| (kc, "the default kubeconfig".to_string())),
        };
        let mut config = match found {
            Some((kc, name)) => {
                if let Some(user) = exec_user(&kc).filter(|_| !opts.allow_exec_plugins) {
                    return Err(crate::Error::Config(format!(
                        "{name}: user {user:?} authenticates with an exec plugin, which runs a program the kubeconfig names; pass --allow-exec-plugins to allow it"
                    )));
                }
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| crate::Error::Config(format!("kubeconfig {name}: {e}")))?
            }
            None => Config::incluster().map_err(|e| crate::Error::Config(format!("no Kubernetes configuration found: {e}")))?,
        };
        // `driftless/<version>`, and the replica's identity when it has one, so the audit log
        // tells replicas apart
        let agent = match std::env::var("POD_NAME") {
            Ok(pod) if !pod.is_empty() => format!("driftless/{VERSION} ({pod})"),
            _ => format!("driftless/{VERSION}"),
        };
        let agent = http::HeaderValue::from_str(&agent).unwrap_or(http::HeaderValue::from_static("driftless"));
        config.headers.push((http::header::USER_AGENT, agent));
        config.connect_timeout = Some(opts.connect_timeout);
        // 429, 503 and 504 are retried by the shared throttle (a buffer under it makes the stack
        // cloneable for its retries), inside the request timeout that bounds the whole
        config.default_retry = false;
        let client = kube::client::ClientBuilder::try_from(config)?
            .with_layer(&tower::buffer::BufferLayer::new(1024))
            .with_layer(&throttle::ThrottleLayer::default())
            .with_layer(&tower::timeout::TimeoutLayer::new(opts.request_timeout))
            .with_layer(&fence::FenceLayer(opts.fence.clone()))
            .build();
        Ok(Self { client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The API of one resource type, in a namespace (ignored for cluster-scoped types).
    pub fn api(&self, rt: &ResourceType, namespace: &str) -> Api<DynamicObject> {
        let ar = api_resource(rt);
        if rt.namespaced && !namespace.is_empty() {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        }
    }

    /// The live object, if it exists.
    pub async fn get(&self, rt: &ResourceType, id: &ObjectRef) -> Result<Option<Value>, kube::Error> {
        let found = self.api(rt, &id.namespace).get_opt(&id.name).await?;
        Ok(found.map(to_value))
    }

    /// The live object, if it exists, as a reconcile keeps it (only its metadata is read when
    /// only the checks are kept).
    pub async fn get_live(&self, rt: &ResourceType, id: &ObjectRef, keep: Keep) -> Result<Option<Live>, kube::Error> {
        let api = self.api(rt, &id.namespace);
        Ok(match keep {
            Keep::Checks => api.get_metadata_opt(&id.name).await?.map(|mut o| Live::from_meta(&mut o.metadata)),
            Keep::Body => api.get_opt(&id.name).await?.map(Live::read),
        })
    }

    /// Objects of one type matching a label selector, in one namespace or (empty) all of them,
    /// read in pages so a large set never arrives as one response.
    pub async fn list(&self, rt: &ResourceType, namespace: &str, selector: &str) -> Result<Vec<Value>, kube::Error> {
        let api = self.api(rt, namespace);
        paged(selector, |p| list_page(&api, p), to_value).await
    }

    /// Like [`Cluster::list`], each object kept as a reconcile keeps it as its page arrives, so a
    /// large set is never held in full; when only the checks are kept, the server sends only
    /// metadata.
    pub async fn list_live(&self, rt: &ResourceType, namespace: &str, selector: &str, keep: Keep) -> Result<Vec<Live>, kube::Error> {
        let api = self.api(rt, namespace);
        match keep {
            Keep::Checks => paged(selector, |p| metadata_page(&api, p), |mut o| Live::from_meta(&mut o.metadata)).await,
            Keep::Body => paged(selector, |p| list_page(&api, p), Live::read).await,
        }
    }

    /// Server-side apply of one planned object (a dry-run when `dry_run`); returns the result.
    pub async fn apply(&self, p: &Planned, dry_run: bool) -> Result<Value, kube::Error> {
        // strict: an unknown or duplicate field fails with its path instead of being dropped
        let mut params = PatchParams::apply(FIELD_MANAGER).force().validation_strict();
        params.dry_run = dry_run;
        let applied = self.api(&p.resource, &p.id.namespace).patch(&p.id.name, &params, &Patch::Apply(&p.object)).await?;
        Ok(to_value(applied))
    }

    /// A dry-run create of an object in another namespace (one that exists), with strict field
    /// validation: what the object itself gets wrong, judged before its own namespace exists.
    pub async fn dry_run_create_in(&self, p: &Planned, namespace: &str) -> Result<(), kube::Error> {
        let mut body = p.value();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
        let rt = &p.resource;
        let collection = if rt.group.is_empty() {
            format!("/api/{}/namespaces/{namespace}/{}", rt.version, rt.plural)
        } else {
            format!("/apis/{}/{}/namespaces/{namespace}/{}", rt.group, rt.version, rt.plural)
        };
        let uri = format!("{collection}?dryRun=All&fieldManager={FIELD_MANAGER}&fieldValidation=Strict");
        let body = serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
        self.client.request::<Value>(request).await.map(|_| ())
    }

    /// Deletes an object in the background, only if it is still the object that was listed
    /// (same uid and resourceVersion). `Ok(false)` when it is already gone.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        id: &ObjectRef,
        preconditions: Option<kube::api::Preconditions>,
    ) -> Result<bool, kube::Error> {
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), preconditions, ..DeleteParams::default() };
        match self.api(rt, &id.namespace).delete(&id.name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until an object is gone (after a delete), up to `timeout`.
    pub async fn wait_gone(&self, rt: &ResourceType, id: &ObjectRef, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.get(rt, id).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(Some(_)) => return Err(format!("{id} still exists {}s after its deletion", timeout.as_secs())),
                Err(e) => return Err(api_message(&e)),
            }
        }
    }
}

/// A dry-run's verdict on one object: its decision and, when the dry-run would change it, what
/// Driftless would own of it afterwards; or the server's refusal.
pub type Verdict = Result<(Decision, Option<Expected>), (ObjectRef, String)>;

/// What the dry-run decided for one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Create,
    Configure,
    Unchanged,
    /// Immutable fields changed on an object annotated for recreation.
    Recreate,
}

/// Dry-runs each object against the live state, with bounded concurrency. Returns a decision
/// per object index (with, for an object the dry-run would change, what Driftless would own of
/// it afterwards), or every failure (object and server message).
pub async fn dry_run(
    cluster: &Cluster,
    objects: &[&Planned],
    live: &HashMap<ObjectRef, Live>,
) -> Result<Vec<(Decision, Option<Expected>)>, Vec<(ObjectRef, String)>> {
    // Indices, not references, go through the stream: closures over `&Planned` arguments are
    // not general enough for futures spawned on the runtime.
    let results: Vec<Verdict> = stream::iter(0..objects.len())
        .map(|i| async move {
            let p = objects[i];
            let current = live.get(&p.id);
            match cluster.apply(p, true).await {
                Ok(result) => Ok(match current.map(|c| (c.body.as_ref(), &c.expected)) {
                    None => (Decision::Create, None),
                    // only the checks were kept: the object is dry-run because its desired
                    // hash changed, so it is written (a no-op on the server if nothing differs)
                    Some((None, _)) => (Decision::Configure, None),
                    Some((Some(body), owned)) if diff::owned_differs(body, owned, &result) => {
                        tracing::debug!(object = %p.id, changed = ?diff::changed_paths(body, &result, 5), "dry-run differs");
                        (Decision::Configure, Some(Expected::from_object(&result)))
                    }
                    Some((Some(_), _)) => (Decision::Unchanged, None),
                }),
                Err(e) => {
                    let message = api_message(&e);
                    if p.recreate && current.is_some() && diff::is_immutable_field_error(&message) {
                        Ok((Decision::Recreate, None))
                    } else {
                        Err((p.id.clone(), message))
                    }
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    if failures.is_empty() {
        Ok(results.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(failures)
    }
}

/// Prechecks objects whose namespace this revision creates, before anything is written: each is
/// dry-run as a create in `namespace` (which exists). Only what the object itself gets wrong
/// fails the revision: an unknown field (400) or an invalid value (422). Anything else (the name
/// taken there, that namespace's quota or policies, RBAC) says nothing about the object in its
/// own namespace, where the dry-run in place judges it once the namespace exists.
pub async fn precheck(cluster: &Cluster, objects: &[&Planned], namespace: &str) -> Result<(), Vec<(ObjectRef, String)>> {
    let results: Vec<Option<(ObjectRef, String)>> = stream::iter(0..objects.len())
        .map(|i| async move {
            let p = objects[i];
            match cluster.dry_run_create_in(p, namespace).await {
                Ok(()) => None,
                Err(e) if matches!(status_code(&e), Some(400 | 422)) => Some((p.id.clone(), api_message(&e))),
                Err(e) => {
                    tracing::debug!(object = %p.id, error = %api_message(&e), "precheck inconclusive; dry-run in place later");
                    None
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let failures: Vec<_> = results.into_iter().flatten().collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// The user of the kubeconfig's current context, when it authenticates with an exec plugin.
fn exec_user(kc: &Kubeconfig) -> Option<String> {
    let context = kc.current_context.as_deref()?;
    let user = kc.contexts.iter().find(|c| c.name == context)?.context.as_ref()?.user.clone()?;
    let auth = kc.auth_infos.iter().find(|a| a.name == user)?.auth_info.as_ref()?;
    auth.exec.is_some().then_some(user)
}

/// The ApiResource of a resource type.
pub fn api_resource(rt: &ResourceType) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&rt.group, &rt.version, &rt.kind), &rt.plural)
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// How much of a live object a reconcile keeps beyond what its checks read (see [`Live`]).
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
pub struct Live {
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
    /// With [`Keep::Body`]: the object as [`diff::differs`] compares it (no status, no volatile
    /// metadata).
    pub body: Option<Value>,
}

impl Live {
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
        Live {
            name: text(&meta.name),
            namespace: text(&meta.namespace),
            uid: text(&meta.uid),
            resource_version: text(&meta.resource_version),
            part_of: label(crate::keys::APPLYSET_PART_OF),
            desired_hash: annotation(crate::keys::DESIRED_HASH),
            prune_disabled: annotation(crate::keys::PRUNE).as_deref() == Some("disabled"),
            source: annotation(crate::keys::SOURCE),
            owned,
            is_parent: label(crate::keys::APPLYSET_ID).is_some(),
            expected,
            body: None,
        }
    }

    /// An object with its body ([`Keep::Body`]).
    pub fn read(mut o: DynamicObject) -> Self {
        let mut live = Live::from_meta(&mut o.metadata);
        let mut body = to_value(o);
        diff::strip_in_place(&mut body);
        live.body = Some(body);
        live
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

/// The HTTP status of an API error.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The server's message for an API error (or the client error), for reports.
/// On one line: the server lists several field errors on lines of their own.
pub fn api_message(e: &kube::Error) -> String {
    let text = match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    };
    one_line(&text)
}

/// Joins the lines of a message with "; ", dropping blank ones and the colon that introduced them.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut out = String::new();
    for line in lines {
        if !out.is_empty() {
            out = out.trim_end_matches(':').to_string();
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig for `server` with the given user entry.
    fn kubeconfig(dir: &Path, server: &str, user: serde_json::Value) -> std::path::PathBuf {
        let kc = serde_json::json!({"apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": user}]});
        let path = dir.join("kubeconfig");
        std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
        path
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_never_answers_fails_the_request_in_time() {
        // a loopback listener that takes connections and never says a word; it stops with the test
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(dir.path(), &format!("http://{addr}"), serde_json::json!({"token": "t"}));
        let opts = ConnectOptions { request_timeout: Duration::from_secs(1), ..ConnectOptions::default() };
        let cluster = Cluster::connect_with(Some(&path), &opts).await.unwrap();
        let started = std::time::Instant::now();
        let rt = ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        };
        let result = cluster.get(&rt, &ObjectRef::new("", "ConfigMap", "default", "x")).await;
        let took = started.elapsed();
        held.abort();
        assert!(result.is_err(), "{result:?}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "failed after {took:?}");
    }

    #[tokio::test]
    async fn a_kubeconfig_exec_plugin_runs_only_when_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // the plugin leaves a mark when it runs, and answers with a token
        let (plugin, mark) = (dir.path().join("plugin"), dir.path().join("ran"));
        let credential = r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t"}}"#;
        std::fs::write(&plugin, format!("#!/bin/sh\ntouch {}\necho '{credential}'\n", mark.display())).unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec =
            serde_json::json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": plugin, "interactiveMode": "Never"}});
        let path = kubeconfig(dir.path(), "http://127.0.0.1:1", exec);
        let refused = Cluster::connect_with(Some(&path), &ConnectOptions::default()).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("exec plugin") && message.contains("--allow-exec-plugins") && message.contains("\"u\""), "{message}");
        assert!(!mark.exists(), "refused before the plugin ran");
        let allowed = ConnectOptions { allow_exec_plugins: true, request_timeout: Duration::from_secs(2), ..ConnectOptions::default() };
        let cluster = Cluster::connect_with(Some(&path), &allowed).await.unwrap();
        let rt = ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        };
        let _ = cluster.get(&rt, &ObjectRef::new("", "ConfigMap", "default", "x")).await;
        assert!(mark.exists(), "allowed: the plugin ran");
        // a kubeconfig without one connects as before
        let plain = kubeconfig(dir.path(), "http://127.0.0.1:1", serde_json::json!({"token": "t"}));
        assert!(Cluster::connect_with(Some(&plain), &ConnectOptions::default()).await.is_ok());
    }

    #[test]
    fn a_message_of_several_lines_becomes_one() {
        let server = "failed to create typed patch object (apps/v1, Kind=Deployment): errors:\n  .spec.a: field not declared in schema\n  .spec.b: field not declared in schema";
        assert_eq!(
            super::one_line(server),
            "failed to create typed patch object (apps/v1, Kind=Deployment): errors; .spec.a: field not declared in schema; .spec.b: field not declared in schema"
        );
        assert_eq!(super::one_line("plain (422)"), "plain (422)");
    }
}
