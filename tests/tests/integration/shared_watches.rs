//! Many sources in one agent share their watches: one watch per kind of every namespace (the
//! agent here may watch everywhere), never one per source per kind; each source still hears only
//! of its own members, so drift in one is corrected by it and no other.

use std::time::Duration;

use driftless_tests::agent::{configmap, configmap_value, intrude_configmap, wait_status, AgentProcess};
use driftless_tests::{client, unique_name, wait_for, GitFixture, TestNamespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use serde_json::{json, Value};
use tempfile::TempDir;

const SOURCES: usize = 12;

fn service_account(name: &str) -> String {
    format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n")
}

fn headless_service(name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: None\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n")
}

fn secret(name: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  password: hunter2\n")
}

/// The agent's `driftless_watches`, once it stops moving.
async fn watches(agent: &AgentProcess) -> f64 {
    agent.gauge("driftless_watches").await.expect("driftless_watches on /metrics")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dozen_sources_share_one_watch_per_kind_and_each_heals_only_its_own() {
    let client = client().await;
    let inv = TestNamespace::new(&client, "shared-inv").await;
    let mut namespaces = Vec::new();
    for i in 0..SOURCES {
        namespaces.push(TestNamespace::new(&client, &format!("shared-{i}")).await);
    }
    // one repository, a directory per source: a ConfigMap, a ServiceAccount and a headless Service
    let repo = GitFixture::new();
    for i in 0..SOURCES {
        repo.write(format!("app-{i}/config.yaml"), configmap("config", &i.to_string()))
            .write(format!("app-{i}/sa.yaml"), service_account("app"))
            .write(format!("app-{i}/svc.yaml"), headless_service("app"));
    }
    repo.commit("twelve apps");
    let names: Vec<String> = (0..SOURCES).map(|i| unique_name(&format!("shared-{i}"))).collect();
    let entry = |i: usize| json!({"name": names[i], "repo": repo.url(), "path": format!("app-{i}"), "namespace": namespaces[i].name(), "interval": "2s"});
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(&config, serde_json::to_string(&json!({"sources": (0..SOURCES).map(entry).collect::<Vec<Value>>()})).unwrap()).unwrap();
    let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;

    // every source Synced and Healthy, each with its own three objects only
    for (i, name) in names.iter().enumerate() {
        let st = wait_status(&agent, name, "Synced and Healthy", Duration::from_secs(90), |s| {
            s["state"] == "Synced" && s["health"] == "Healthy"
        })
        .await;
        let objects: Vec<String> = st["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| format!("{}/{}/{}", o["kind"].as_str().unwrap(), o["namespace"].as_str().unwrap(), o["name"].as_str().unwrap()))
            .collect();
        let ns = namespaces[i].name();
        assert_eq!(objects, [format!("ConfigMap/{ns}/config"), format!("Service/{ns}/app"), format!("ServiceAccount/{ns}/app")], "{st:#}");
    }
    // three kinds in twelve namespaces: three watches, not thirty-six
    assert_eq!(watches(&agent).await, 3.0, "{}", agent.get("/metrics").await.body);

    // drift in one source is corrected by it: a field taken and an object deleted
    intrude_configmap(&client, namespaces[3].name(), "config", "intruded").await;
    Api::<ConfigMap>::namespaced(client.clone(), namespaces[7].name()).delete("config", &DeleteParams::default()).await.unwrap();
    wait_for("the taken field put back", Duration::from_secs(20), || async {
        (configmap_value(&client, namespaces[3].name(), "config").await.as_deref() == Some("3")).then_some(())
    })
    .await;
    wait_for("the deleted ConfigMap re-created", Duration::from_secs(20), || async {
        (configmap_value(&client, namespaces[7].name(), "config").await.as_deref() == Some("7")).then_some(())
    })
    .await;
    for (i, name) in names.iter().enumerate() {
        let st = agent.get(&format!("/status/{name}")).await.json();
        let expected = u64::from(i == 3 || i == 7);
        assert_eq!(st["driftCorrections"].as_u64(), Some(expected), "source {i} corrected what was not its own: {st:#}");
    }

    // one source adds a kind in its one namespace: a watch of that namespace only, which heals it
    repo.write("app-5/secret.yaml", secret("db"));
    let commit = repo.commit("a Secret for app 5");
    wait_status(&agent, &names[5], "the Secret applied", Duration::from_secs(90), |s| {
        s["lastAppliedCommit"] == commit.as_str() && s["state"] == "Synced"
    })
    .await;
    assert_eq!(watches(&agent).await, 4.0, "ConfigMaps, Services, ServiceAccounts everywhere; Secrets in one namespace");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespaces[5].name());
    secrets.delete("db", &DeleteParams::default()).await.unwrap();
    wait_for("the deleted Secret re-created", Duration::from_secs(20), || async { secrets.get_opt("db").await.ok().flatten().map(|_| ()) })
        .await;

    drop(agent);
    for ns in namespaces {
        ns.cleanup().await;
    }
    inv.cleanup().await;
}
