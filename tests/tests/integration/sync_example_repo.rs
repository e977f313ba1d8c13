//! The example repository synced into the real control plane as its README says: the app from
//! `overlays/prod` (kustomize) and the database from `charts/shop-db` (helm, prod values). Every
//! object is applied in the documented order with field manager `driftless`, a second sync
//! writes nothing, and a component removed from the base is pruned.

use std::time::Duration;

use driftless::manifest::GroupKind;
use driftless::plan::order::tier_of;
use driftless::report::changes::Action;
use driftless::report::State;
use driftless_tests::agent::{audit_events, dynamic_api, get, remove_example, Agent};
use driftless_tests::{repo_root, wait_for, GitFixture};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn example_repo_applies_in_order_resyncs_without_writes_and_prunes_a_removed_component() {
    let agent = Agent::new().await;
    remove_example(&agent.client).await;
    let repo = GitFixture::new();
    repo.copy_dir(repo_root().join("manifests-repo-example"), "");
    let first = repo.commit("shop: first release");
    let mut source = driftless_tests::agent::source("example", &repo.url(), "shop");
    source.name = "example-shop".into(); // fixed, so a rerun on the same cluster finds its own set
    source.spec.path = "overlays/prod".into();
    let mut database = driftless_tests::agent::source("example", &repo.url(), "shop");
    database.name = "example-shop-db".into();
    database.spec.path = "charts/shop-db".into();
    database.helm.release = Some("shop-db".into());
    database.helm.values_files = vec!["values-prod.yaml".into()];

    // given the example repo, when the app is synced, then every object is created in order
    let audit_start = audit_events().len();
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    assert_eq!(report.commit.as_deref(), Some(first.as_str()));
    assert_eq!(report.renderer.as_deref(), Some(format!("kustomize {}", agent.ctx.kustomize.version).as_str()));
    assert_eq!(report.changes.entries.len(), 17, "{:#?}", report.changes);
    assert!(report.changes.entries.iter().all(|c| c.action == Action::Created), "{:#?}", report.changes);
    // ...and the database from its chart, into the namespace the app created
    let db = agent.sync(&database).await;
    assert_eq!(db.state, State::Synced, "{:?}: {}", db.reason, db.message);
    assert_eq!(db.renderer.as_deref(), Some(format!("helm {}", agent.ctx.helm.version).as_str()));
    let mut db_objects: Vec<String> = db.changes.entries.iter().map(|c| format!("{} {}", c.action, c.id)).collect();
    db_objects.sort();
    assert_eq!(
        db_objects,
        ["created Deployment.apps shop/postgres", "created PersistentVolumeClaim shop/postgres-data", "created Service shop/postgres"]
    );
    let claims = dynamic_api(&agent.client, "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "shop");
    let claim = get(&claims, "postgres-data").await.expect("the chart's claim");
    assert_eq!(
        (claim["spec"]["storageClassName"].as_str(), claim["spec"]["resources"]["requests"]["storage"].as_str()),
        (Some("shop-local"), Some("5Gi")),
        "the prod values"
    );

    // ...in stage order, as the API server saw the writes
    let writes: Vec<(GroupKind, String)> = audit_events()[audit_start..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| e["verb"] == "patch" && !e["requestURI"].as_str().unwrap_or_default().contains("dryRun"))
        .filter(|e| e["objectRef"]["namespace"].as_str() != Some(driftless_tests::agent::AGENT_NAMESPACE))
        .filter_map(|e| {
            let name = e["objectRef"]["name"].as_str()?;
            let resource = e["objectRef"]["resource"].as_str()?;
            let entry = report.changes.entries.iter().find(|c| c.id.name == name && resource_matches(&c.id.kind, resource))?;
            Some((entry.id.group_kind(), name.to_string()))
        })
        .collect();
    assert_eq!(writes.len(), 17, "one server-side apply per object: {writes:?}");
    // (wave, tier): the migration Job is wave 1, the app wave 2, the rest wave 0; definitions
    // (CRDs and Namespaces, and the new ClusterRole its binding names) go first whatever their
    // wave, in tier order
    let keys: Vec<(i64, usize)> = writes
        .iter()
        .map(|(gk, name)| {
            let tier = tier_of(&gk.group, &gk.kind);
            let definition = tier == 0 || (gk.kind == "ClusterRole" && name == "shop-prometheus");
            (if definition { -1 } else { wave_of(&gk.kind, name) }, tier)
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "writes out of order: {writes:?}");

    // ...each with field manager driftless (Apply)
    let catalog = driftless::plan::Catalog::new(agent.ctx.cluster.discover().await.unwrap());
    for c in &report.changes.entries {
        let rt = catalog.preferred(&c.id.group_kind()).unwrap();
        let live = get(&dynamic_api(&agent.client, &rt.api_version(), &rt.kind, &rt.plural, &c.id.namespace), &c.id.name)
            .await
            .unwrap_or_else(|| panic!("{} exists", c.id));
        let managers: Vec<&Value> = live["metadata"]["managedFields"].as_array().unwrap().iter().collect();
        assert!(
            managers.iter().any(|m| m["manager"] == "driftless" && m["operation"] == "Apply"),
            "{} is not applied by driftless: {managers:?}",
            c.id
        );
    }

    // ...and staging beside it on the same cluster (its README): its own namespace, its
    // cluster-scoped objects suffixed, a generated ConfigMap, prod's CRD
    let mut staging = source.clone();
    staging.name = "example-shop-staging".into();
    staging.spec.path = "overlays/staging".into();
    staging.namespace = "shop-staging".into();
    let mut staging_db = database.clone();
    staging_db.name = "example-shop-db-staging".into();
    staging_db.namespace = "shop-staging".into();
    staging_db.helm.values_files = vec!["values-staging.yaml".into()];
    let staged = agent.sync(&staging).await;
    assert_eq!(staged.state, State::Synced, "{:?}: {}", staged.reason, staged.message);
    assert_eq!(staged.changes.count(Action::Created), 17, "{:#?}", staged.changes);
    assert!(staged.changes.entries.iter().any(|c| c.id.kind == "ConfigMap" && c.id.name.starts_with("api-env-")), "{:#?}", staged.changes);
    let staged_db = agent.sync(&staging_db).await;
    assert_eq!(staged_db.state, State::Synced, "{:?}: {}", staged_db.reason, staged_db.message);
    assert_eq!(staged_db.changes.count(Action::Created), 3, "{:#?}", staged_db.changes);
    let staging_claims = dynamic_api(&agent.client, "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "shop-staging");
    let claim = get(&staging_claims, "postgres-data").await.expect("staging's claim");
    assert_eq!(claim["spec"]["storageClassName"], "shop-local-staging", "the staging values");

    // when it is synced again, then nothing is written
    let versions = [resource_versions(&agent, &report).await, resource_versions(&agent, &db).await].concat();
    let audit_second = audit_events().len();
    let again = agent.sync(&source).await;
    assert_eq!(again.state, State::Synced, "{}", again.message);
    assert_eq!(again.changes.count(Action::Unchanged), 17, "{:#?}", again.changes);
    let db_again = agent.sync(&database).await;
    assert_eq!(db_again.state, State::Synced, "{}", db_again.message);
    assert_eq!(db_again.changes.count(Action::Unchanged), 3, "{:#?}", db_again.changes);
    let writes_second = audit_events()[audit_second..]
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| matches!(e["verb"].as_str(), Some("patch" | "create" | "update" | "delete")))
        .filter(|e| !e["requestURI"].as_str().unwrap_or_default().contains("dryRun"))
        .filter(|e| e["objectRef"]["namespace"].as_str() != Some(driftless_tests::agent::AGENT_NAMESPACE))
        .count();
    assert_eq!(writes_second, 0, "a second sync of the same commit wrote to app objects");
    // the HPA controller writes the api Deployment (replicas) and its own status at any time:
    // their resourceVersions may move without Driftless (the audit log above shows it wrote nothing)
    let moved_by_hpa = |id: &str| id == "Deployment.apps shop/api" || id == "HorizontalPodAutoscaler.autoscaling shop/api";
    let settled = |v: Vec<(String, String)>| v.into_iter().filter(|(id, _)| !moved_by_hpa(id)).collect::<Vec<_>>();
    let now = [resource_versions(&agent, &report).await, resource_versions(&agent, &db).await].concat();
    assert_eq!(settled(now), settled(versions), "resourceVersions moved");

    // when the web component leaves the base, then its Deployment and Service are pruned, nothing else
    let kustomization = std::fs::read_to_string(repo.path().join("base/kustomization.yaml")).unwrap();
    repo.write("base/kustomization.yaml", kustomization.replace("  - web.yaml\n", ""));
    repo.remove("base/web.yaml");
    repo.commit("shop: retire the web front end");
    let pruned = agent.sync(&source).await;
    assert_eq!(pruned.state, State::Synced, "{}", pruned.message);
    let deleted: Vec<String> = pruned.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
    // in reverse apply order: the workload before the Service in front of it
    assert_eq!(deleted, ["Deployment.apps shop/web", "Service shop/web"]);
    assert_eq!(pruned.changes.count(Action::Unchanged), 15);
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", "shop");
    wait_for("web to be deleted", Duration::from_secs(30), || async { get(&deployments, "web").await.is_none().then_some(()) }).await;
    assert!(get(&deployments, "api").await.is_some());

    remove_example(&agent.client).await;
}

/// The wave the example gives an object (see manifests-repo-example/README.md).
fn wave_of(kind: &str, name: &str) -> i64 {
    match (kind, name) {
        ("Job", "shop-migrate") => 1,
        ("Deployment" | "Service" | "HorizontalPodAutoscaler", "api") => 2,
        ("Deployment" | "Service", "web") => 2,
        ("Ingress", "shop") | ("CronJob", "postgres-backup") | ("BackupPolicy", "postgres-nightly") => 2,
        _ => 0,
    }
}

fn resource_matches(kind: &str, resource: &str) -> bool {
    let plural = match kind {
        "StorageClass" => "storageclasses".to_string(),
        "Ingress" => "ingresses".to_string(),
        "BackupPolicy" => "backuppolicies".to_string(),
        "PersistentVolume" => "persistentvolumes".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    plural == resource
}

async fn resource_versions(agent: &Agent, report: &driftless::report::Report) -> Vec<(String, String)> {
    let catalog = driftless::plan::Catalog::new(agent.ctx.cluster.discover().await.unwrap());
    let mut out = Vec::new();
    for c in &report.changes.entries {
        let rt = catalog.preferred(&c.id.group_kind()).unwrap();
        let live = get(&dynamic_api(&agent.client, &rt.api_version(), &rt.kind, &rt.plural, &c.id.namespace), &c.id.name).await.unwrap();
        out.push((c.id.to_string(), live["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string()));
    }
    out
}
