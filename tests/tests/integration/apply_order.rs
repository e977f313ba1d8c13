//! The kind order of an apply, as the API server saw the writes: Services, NetworkPolicies and
//! PodDisruptionBudgets (and the config the pods read) before the workloads behind them, the HPA
//! after its Deployment (README "Apply order").

use driftless::report::changes::Action;
use driftless::report::State;
use driftless_tests::agent::{audit_events, is_write, Agent};
use driftless_tests::{GitFixture, TestNamespace};
use serde_json::Value;

const MANIFESTS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.example/web:1
          envFrom:
            - configMapRef: {name: web}
          resources:
            requests: {cpu: 100m}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - port: 80
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 1
  selector:
    matchLabels: {app: web}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
data:
  MODE: production
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: 80}
"#;

/// One server-side apply of an object, as the audit log recorded it.
#[derive(Debug)]
struct Write {
    resource: String,
    /// When the API server received the request.
    received: String,
    /// When it completed the response.
    completed: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn services_network_policies_and_budgets_are_written_before_workloads_and_the_hpa_after() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "apply-order").await;
    let repo = GitFixture::new();
    // one file, workload first: the order comes from the kinds, not from the files
    repo.write("web.yaml", MANIFESTS);
    repo.commit("web: deployment, service, policy, budget, config, autoscaler");
    let source = driftless_tests::agent::source("apply-order", &repo.url(), ns.name());

    // when the repository is synced once (driftless sync)
    let audit_start = audit_events().len();
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    assert_eq!(report.changes.count(Action::Created), 6, "{:#?}", report.changes);

    // then the audit log holds one apply (patch, not a dry-run) per object, in stage order
    let writes: Vec<Write> = audit_events()[audit_start..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["verb"] == "patch" && is_write(e))
        .filter(|e| e["objectRef"]["namespace"] == ns.name() && e["objectRef"]["name"] == "web")
        .map(|e| Write {
            resource: text(&e["objectRef"]["resource"]),
            received: text(&e["requestReceivedTimestamp"]),
            completed: text(&e["stageTimestamp"]),
        })
        .collect();
    let order: Vec<&str> = writes.iter().map(|w| w.resource.as_str()).collect();
    let mut kinds = order.clone();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["configmaps", "deployments", "horizontalpodautoscalers", "networkpolicies", "poddisruptionbudgets", "services"],
        "one apply per object: {writes:#?}"
    );
    let write = |resource: &str| writes.iter().find(|w| w.resource == resource).expect("written");
    let deployment = write("deployments");
    for before in ["services", "networkpolicies", "poddisruptionbudgets", "configmaps"] {
        // an earlier stage: its apply completed before the Deployment's was sent
        let w = write(before);
        assert!(
            w.completed <= deployment.received,
            "{before} completed at {}, the Deployment was sent at {}: {order:?}",
            w.completed,
            deployment.received
        );
    }
    let hpa = write("horizontalpodautoscalers");
    assert!(
        deployment.completed <= hpa.received,
        "the Deployment completed at {}, the HPA was sent at {}: {order:?}",
        deployment.completed,
        hpa.received
    );
    ns.cleanup().await;
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}
