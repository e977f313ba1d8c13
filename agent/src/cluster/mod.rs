//! The Kubernetes API client every stage uses: one client per cluster, identifying itself as
//! `driftless/<version>`, with every request bounded, throttled as one ([`throttle`]) and fenced
//! by the leader lease ([`fence`]). One file per verb, in the spirit of fluxcd/pkg `ssa/`:
//! [`read`] (get and paged lists), [`apply`] (server-side apply and dry-runs), [`delete`]
//! (with preconditions), [`wait`] (the one polling helper), [`discovery`] (what the server serves),
//! [`access`] (what the agent may do).
//! Nothing here knows a plan or a stage: it speaks in resource types, identities and JSON.

pub mod access;
pub mod apply;
pub mod delete;
pub mod discovery;
pub mod fence;
pub mod read;
pub mod throttle;
pub mod wait;

use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::Value;

use crate::manifest::ResourceType;
use crate::VERSION;

/// Objects per page when listing: a page is held in full while it is read.
pub const LIST_PAGE: u32 = 250;

/// Connecting failed: the configuration cannot be read or is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

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
    pub fence: fence::Fence,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            allow_exec_plugins: false,
            fence: fence::Fence::default(),
        }
    }
}

impl Cluster {
    /// Connects with the given kubeconfig, or the in-cluster / default configuration, with the
    /// default [`ConnectOptions`].
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, ConnectError> {
        Self::connect_with(kubeconfig, &ConnectOptions::default()).await
    }

    /// Connects with the given kubeconfig (else `KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster configuration).
    pub async fn connect_with(kubeconfig: Option<&Path>, opts: &ConnectOptions) -> Result<Self, ConnectError> {
        let found = match kubeconfig {
            Some(path) => Some((
                Kubeconfig::read_from(path).map_err(|e| ConnectError(format!("cannot read kubeconfig {}: {e}", path.display())))?,
                path.display().to_string(),
            )),
            None => Kubeconfig::read().ok().map(|kc| (kc, "the default kubeconfig".to_string())),
        };
        let mut config = match found {
            Some((kc, name)) => {
                if let Some(user) = exec_user(&kc).filter(|_| !opts.allow_exec_plugins) {
                    return Err(ConnectError(format!(
                        "{name}: user {user:?} authenticates with an exec plugin, which runs a program the kubeconfig names; pass --allow-exec-plugins to allow it"
                    )));
                }
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ConnectError(format!("kubeconfig {name}: {e}")))?
            }
            None => Config::incluster().map_err(|e| ConnectError(format!("no Kubernetes configuration found: {e}")))?,
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
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|e| ConnectError(format!("building the API client: {e}")))?
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

pub(crate) fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
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
    use crate::manifest::ObjectRef;

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
        let rt = ResourceType::config_maps();
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
        let rt = ResourceType::config_maps();
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
