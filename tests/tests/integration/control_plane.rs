//! Proof that the local control plane (tests/cluster/up) behaves like a real cluster for what
//! Driftless needs: workloads get scheduled onto the kwok node and become Ready, CRDs serve
//! custom resources, ServiceAccounts get tokens, and every request lands in the audit log.
//! Each test works in its own namespace and uses unique cluster-scoped names, so they run in
//! parallel (and alongside other test binaries).

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use driftless_tests::{audit_log_path, client, unique_name, wait_for, wait_for_ok, TestNamespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::Api;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn condition_true(conditions: Option<&[impl HasCondition]>, kind: &str) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.kind() == kind && c.status() == "True"))
}

trait HasCondition {
    fn kind(&self) -> &str;
    fn status(&self) -> &str;
}
macro_rules! has_condition {
    ($t:ty) => {
        impl HasCondition for $t {
            fn kind(&self) -> &str {
                &self.type_
            }
            fn status(&self) -> &str {
                &self.status
            }
        }
    };
}
has_condition!(k8s_openapi::api::apps::v1::DeploymentCondition);
has_condition!(k8s_openapi::api::core::v1::PodCondition);
has_condition!(k8s_openapi::api::core::v1::NodeCondition);
has_condition!(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionCondition);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_becomes_available_on_the_kwok_node() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "deployment").await;

    // The node(s) registered by tests/cluster/up: label type=kwok, Ready, no taints.
    let nodes: Api<Node> = Api::all(client.clone());
    let kwok_nodes: BTreeSet<String> = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter(|n| {
            let ready = condition_true(n.status.as_ref().and_then(|s| s.conditions.as_deref()), "Ready");
            let untainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty());
            ready && untainted
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(!kwok_nodes.is_empty(), "no Ready, untainted node labelled type=kwok");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let deployment: Deployment = from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "containers": [{
                        "name": "app",
                        "image": "registry.example/app:1",
                        "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } }
                    }]
                }
            }
        }
    }));
    deployments.create(&PostParams::default(), &deployment).await.expect("create deployment");

    let status = wait_for("deployment web to be Available with 2 ready replicas", TIMEOUT, || {
        let deployments = deployments.clone();
        async move {
            let status = deployments.get("web").await.ok()?.status?;
            let available = condition_true(status.conditions.as_deref(), "Available");
            (available && status.ready_replicas == Some(2) && status.available_replicas == Some(2)).then_some(status)
        }
    })
    .await;
    assert_eq!(status.replicas, Some(2));

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pods = pods.list(&ListParams::default().labels("app=web")).await.expect("list pods").items;
    assert_eq!(pods.len(), 2, "expected exactly 2 pods of deployment web");
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert!(node.is_some_and(|n| kwok_nodes.contains(n)), "pod {name} is on node {node:?}, not on a kwok node {kwok_nodes:?}");
        let status = pod.status.as_ref().expect("pod status");
        assert_eq!(status.phase.as_deref(), Some("Running"), "pod {name} phase");
        assert!(condition_true(status.conditions.as_deref(), "Ready"), "pod {name} is not Ready");
        assert!(status.pod_ip.as_ref().is_some_and(|ip| !ip.is_empty()), "pod {name} has no IP");
    }

    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_serves_custom_resources() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "crd").await;

    // A group of its own per run: CRDs are cluster-scoped and tests run in parallel.
    let group = format!("{}.test.driftless.dev", unique_name("g"));
    let crd_name = format!("widgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = from_json(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": crd_name },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": { "type": "integer", "minimum": 1 },
                            "color": { "type": "string" }
                        }
                    }}
                }}
            }]
        }
    }));
    crds.create(&PostParams::default(), &crd).await.expect("create CRD");

    wait_for(&format!("CRD {crd_name} to be Established"), TIMEOUT, || {
        let crds = crds.clone();
        let crd_name = crd_name.clone();
        async move {
            let crd = crds.get(&crd_name).await.ok()?;
            condition_true(crd.status?.conditions.as_deref(), "Established").then_some(())
        }
    })
    .await;

    let resource = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &resource);
    let widget = DynamicObject::new("blue-widget", &resource).within(ns.name()).data(json!({ "spec": { "size": 3, "color": "blue" } }));
    // Established can precede the new endpoint answering on every path for a moment: retry.
    wait_for_ok("create a Widget", TIMEOUT, || {
        let widgets = widgets.clone();
        let widget = widget.clone();
        async move { widgets.create(&PostParams::default(), &widget).await }
    })
    .await;

    let read = widgets.get("blue-widget").await.expect("read the Widget back");
    assert_eq!(read.types.as_ref().map(|t| t.kind.as_str()), Some("Widget"));
    assert_eq!(read.data["spec"]["size"], json!(3));
    assert_eq!(read.data["spec"]["color"], json!("blue"));
    assert!(read.metadata.uid.is_some(), "stored object has a uid");

    // The schema is enforced by the real apiserver: size must be an integer >= 1.
    let invalid = DynamicObject::new("bad-widget", &resource).within(ns.name()).data(json!({ "spec": { "size": 0 } }));
    match widgets.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "unexpected rejection: {s:?}"),
        other => panic!("an invalid Widget was not rejected: {other:?}"),
    }

    crds.delete(&crd_name, &DeleteParams::default()).await.expect("delete CRD");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_tokens() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "token").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());

    // The controller-manager's serviceaccount controller gives every namespace a `default` one.
    wait_for("ServiceAccount default in the test namespace", TIMEOUT, || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;

    let sa: ServiceAccount = from_json(json!({ "metadata": { "name": "robot" } }));
    accounts.create(&PostParams::default(), &sa).await.expect("create ServiceAccount");
    let request: TokenRequest = from_json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": { "audiences": ["driftless-test"], "expirationSeconds": 600 }
    }));
    let response = accounts.create_token_request("robot", &PostParams::default(), &request).await.expect("TokenRequest");
    let token = response.status.expect("TokenRequest status").token;
    assert!(!token.is_empty(), "empty token");

    // A signed JWT whose claims name this ServiceAccount and the requested audience.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    assert!(parts.iter().all(|p| !p.is_empty()), "JWT with an empty part");
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url JWT payload"))
            .expect("JSON JWT payload");
    assert_eq!(claims["sub"], json!(format!("system:serviceaccount:{}:robot", ns.name())));
    assert_eq!(claims["aud"], json!(["driftless-test"]));

    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_audited_at_metadata_level() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "audit").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let cm: ConfigMap = from_json(json!({ "metadata": { "name": "audit-probe" }, "data": { "k": "v" } }));
    configmaps.create(&PostParams::default(), &cm).await.expect("create ConfigMap");

    // --audit-log-mode=blocking: the event is on disk before the response arrives, so no polling.
    let path = audit_log_path();
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let events: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!events.is_empty(), "no JSON lines in {}", path.display());
    assert!(log.lines().any(|l| l.contains(r#""level":"Metadata""#)), "no line with \"level\":\"Metadata\" in {}", path.display());
    let ours = events.iter().find(|e| {
        e["verb"] == "create"
            && e["objectRef"]["resource"] == "configmaps"
            && e["objectRef"]["namespace"] == ns.name()
            && e["objectRef"]["name"] == "audit-probe"
    });
    let ours = ours.unwrap_or_else(|| panic!("the ConfigMap create is not in {}", path.display()));
    assert_eq!(ours["level"], "Metadata");
    assert_eq!(ours["stage"], "ResponseComplete");
    assert_eq!(ours["responseStatus"]["code"], 201);
    assert!(ours.get("requestObject").is_none(), "Metadata level must not record bodies");

    ns.cleanup().await;
}

/// The Drop fallback of TestNamespace deletes the namespace, also from a current-thread runtime
/// (the default of #[tokio::test]), where blocking in drop must not deadlock.
#[tokio::test]
async fn dropped_test_namespace_is_deleted() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "drop").await;
    let name = ns.name().to_string();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let created = namespaces.get(&name).await.expect("namespace exists");
    let labels = created.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(driftless_tests::TEST_LABEL).map(String::as_str), Some("true"));

    drop(ns);
    // Deleted means gone or terminating (the namespace controller empties it in the background).
    let ns = namespaces.get_opt(&name).await.expect("get namespace");
    assert!(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()), "namespace {name} was not deleted on drop");
}
