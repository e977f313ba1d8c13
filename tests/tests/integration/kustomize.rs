//! Kustomizations rendered by the real kustomize (built from Go modules by tests/cluster/build):
//! an overlay is applied exactly as `kustomize build` renders it, a second sync writes nothing, a
//! generator change rolls the hashed name and prunes the old ConfigMap; a remote base, a render
//! past its time limit and output over the cap fail with RenderFailed and write nothing; a running
//! agent names each source's renderer and its version in /status and on the parent.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use driftless::report::changes::Action;
use driftless::report::{Reason, Report, State};
use driftless_tests::agent::{self, configmap, configmaps, dynamic_api, eventually_ok, get, Agent, AgentProcess};
use driftless_tests::{cluster_bin, unique_name, GitFixture, TestNamespace};
use serde_json::{json, Value};

const BASE: &str = "\
resources:
  - deployment.yaml
  - service.yaml
";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
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
          image: nginx:1.0
          envFrom:
            - configMapRef: {name: app-config}
";

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
";

/// The prod overlay: a prefix, an image override, a replicas patch and a generated ConfigMap.
fn overlay(mode: &str) -> String {
    format!(
        "\
resources:
  - ../../base
namePrefix: prod-
images:
  - name: nginx
    newTag: \"1.27\"
patches:
  - target: {{kind: Deployment, name: web}}
    patch: |
      - op: replace
        path: /spec/replicas
        value: 3
configMapGenerator:
  - name: app-config
    literals: [MODE={mode}]
"
    )
}

fn repo_with_overlay() -> GitFixture {
    let repo = GitFixture::new();
    repo.write("base/kustomization.yaml", BASE)
        .write("base/deployment.yaml", DEPLOYMENT)
        .write("base/service.yaml", SERVICE)
        .write("overlays/prod/kustomization.yaml", overlay("prod"));
    repo.commit("an overlay");
    repo
}

/// What `kustomize build` prints for the overlay, run directly on a checkout of the fixture.
fn kustomize_build(repo: &GitFixture, dir: &str) -> Vec<Value> {
    let out = Command::new(cluster_bin("kustomize")).args(["build", dir]).current_dir(repo.path()).output().expect("kustomize runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    text.split("\n---\n").map(|doc| serde_json::to_value(serde_yaml_doc(doc)).expect("JSON")).collect()
}

/// One YAML document, read with the agent's own reader.
fn serde_yaml_doc(doc: &str) -> Value {
    driftless::render::yaml::parse_config(doc).expect("kustomize prints YAML")
}

fn writes(report: &Report) -> Vec<String> {
    report.changes.entries.iter().filter(|c| c.action.is_write()).map(|c| format!("{} {}", c.action, c.id)).collect()
}

#[tokio::test]
async fn an_overlay_is_applied_as_kustomize_builds_it_and_a_generator_change_rolls_and_prunes_the_old_configmap() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "kz-overlay").await;
    let repo = repo_with_overlay();
    let mut source = agent::source("kz-overlay", &repo.url(), ns.name());
    source.spec.path = "overlays/prod".into();

    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    let rendered = kustomize_build(&repo, "overlays/prod");
    assert_eq!(rendered.len(), 3, "a ConfigMap, a Service and a Deployment: {rendered:#?}");
    assert_eq!(report.changes.count(Action::Created), 3, "{:#?}", report.changes);
    // every object as kustomize rendered it: the generated name, the prefix, the image, the patch
    for object in &rendered {
        let (kind, name) = (object["kind"].as_str().unwrap(), object["metadata"]["name"].as_str().unwrap());
        let api = match kind {
            "ConfigMap" => dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name()),
            "Service" => dynamic_api(&agent.client, "v1", "Service", "services", ns.name()),
            _ => dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name()),
        };
        let live = get(&api, name).await.unwrap_or_else(|| panic!("{kind} {name} applied"));
        for field in ["data", "spec"] {
            if let Some(want) = object.get(field) {
                assert_subset(&live[field], want, &format!("{kind} {name} .{field}"));
            }
        }
    }
    let generated = rendered.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    assert!(generated.starts_with("prod-app-config-"), "{generated}");
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    let web = get(&deployments, "prod-web").await.unwrap();
    assert_eq!(web["spec"]["replicas"], 3);
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"], generated.as_str());

    // the same commit again: nothing to write
    let again = agent.sync(&source).await;
    assert_eq!(again.state, State::Synced, "{:?}: {}", again.reason, again.message);
    assert_eq!(writes(&again), Vec::<String>::new());

    // a generator change: a new hashed ConfigMap, the Deployment pointed at it, the old one pruned
    repo.write("overlays/prod/kustomization.yaml", overlay("staging"));
    repo.commit("another mode");
    let rolled = agent.sync(&source).await;
    assert_eq!(rolled.state, State::Synced, "{:?}: {}", rolled.reason, rolled.message);
    let now = configmaps(&agent.client, ns.name()).await;
    let new_name = now.keys().find(|n| n.starts_with("prod-app-config-")).cloned().unwrap_or_default();
    assert_ne!(new_name, generated, "the hash rolled");
    assert!(!now.contains_key(&generated), "the old ConfigMap pruned: {now:?}");
    assert_eq!(rolled.changes.count(Action::Deleted), 1, "{:#?}", rolled.changes);
    let web = get(&deployments, "prod-web").await.unwrap();
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"], new_name.as_str());
    ns.cleanup().await;
}

/// Every field of `want` is in `live` with the same value (the server adds defaults).
fn assert_subset(live: &Value, want: &Value, at: &str) {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => {
            for (k, v) in w {
                assert_subset(l.get(k).unwrap_or(&Value::Null), v, &format!("{at}.{k}"));
            }
        }
        (Value::Array(l), Value::Array(w)) => {
            assert_eq!(l.len(), w.len(), "{at}");
            for (i, (lv, wv)) in l.iter().zip(w).enumerate() {
                assert_subset(lv, wv, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(live, want, "{at}"),
    }
}

#[tokio::test]
async fn a_remote_base_is_refused_naming_the_file_and_url_and_nothing_is_applied_or_pruned() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "kz-remote").await;
    let repo = repo_with_overlay();
    let mut source = agent::source("kz-remote", &repo.url(), ns.name());
    source.spec.path = "overlays/prod".into();
    let good = agent.sync(&source).await;
    assert_eq!(good.state, State::Synced, "{:?}: {}", good.reason, good.message);
    let before = configmaps(&agent.client, ns.name()).await;
    assert_eq!(before.len(), 1, "the generated ConfigMap: {before:?}");

    // the next commit renames the generated ConfigMap (which would prune the old one) and adds
    // a remote base: refused, so nothing is applied or pruned
    let url = "https://github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v5.8.2";
    repo.write("base/kustomization.yaml", format!("{BASE}  - {url}\n")).write("overlays/prod/kustomization.yaml", overlay("next"));
    repo.commit("a remote resource in the base");
    let report = agent.sync(&source).await;
    assert_eq!((report.state, report.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", report.message);
    assert!(report.message.contains("base/kustomization.yaml") && report.message.contains(url), "{}", report.message);
    assert!(report.message.contains("allowRemoteBases"), "{}", report.message);
    assert_eq!(writes(&report), Vec::<String>::new());
    assert_eq!(configmaps(&agent.client, ns.name()).await, before, "the last good revision stays, untouched");
    ns.cleanup().await;
}

/// A stand-in for kustomize: a script (it sees an empty PATH, so it names its tools in full).
fn fake_kustomize(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("kustomize");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_render_past_its_time_limit_or_over_the_output_cap_fails_and_writes_nothing() {
    let tools = tempfile::tempdir().unwrap();
    let mut agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "kz-limits").await;
    let repo = repo_with_overlay();
    let mut source = agent::source("kz-limits", &repo.url(), ns.name());
    source.spec.path = "overlays/prod".into();

    agent.ctx.kustomize.program = fake_kustomize(tools.path(), "/bin/sleep 30");
    source.render_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let slow = agent.sync(&source).await;
    assert_eq!((slow.state, slow.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", slow.message);
    assert!(slow.message.contains("ran longer than 1s"), "{}", slow.message);
    assert!(started.elapsed() < Duration::from_secs(10), "stopped in time: {:?}", started.elapsed());
    assert_eq!(writes(&slow), Vec::<String>::new());

    agent.ctx.kustomize.program = fake_kustomize(tools.path(), "while :; do echo 'apiVersion: v1'; done");
    agent.ctx.kustomize.sandbox.max_output = 1 << 20;
    let chatty = agent.sync(&source).await;
    assert_eq!((chatty.state, chatty.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", chatty.message);
    assert!(chatty.message.contains("more than 1048576 bytes"), "{}", chatty.message);
    assert_eq!(writes(&chatty), Vec::<String>::new());
    assert!(configmaps(&agent.client, ns.name()).await.is_empty());
    ns.cleanup().await;
}

/// `driftless run`: each source's `/status` and its parent's annotations name the renderer and
/// its version (`plain`, `kustomize v5.8.2`, `helm v3.22.0`).
#[tokio::test(flavor = "multi_thread")]
async fn a_running_agent_shows_which_renderer_and_version_rendered_each_source() {
    let agent = Agent::new().await;
    let inventory = TestNamespace::new(&agent.client, "kz-status-inv").await;
    let ns = TestNamespace::new(&agent.client, "kz-status").await;
    let repo = repo_with_overlay();
    repo.write("chart/Chart.yaml", "apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
        .write("chart/templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata: {a: \"1\"}\n")
        .write("plain/cm.yaml", configmap("plain", "b"));
    repo.commit("a chart and plain files");
    let names = ["kz-status-overlay", "kz-status-chart", "kz-status-plain"].map(unique_name);
    let entry = |name: &str, path: &str| json!({"name": name, "repo": repo.url(), "path": path, "namespace": ns.name(), "interval": "1s"});
    let config = json!({"sources": [entry(&names[0], "overlays/prod"), entry(&names[1], "chart"), entry(&names[2], "plain")]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("driftless.yaml");
    std::fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
    let running = AgentProcess::start(inventory.name(), &["--config", file.to_str().unwrap()]).await;

    let expected = [format!("kustomize {}", agent.ctx.kustomize.version), format!("helm {}", agent.ctx.helm.version), "plain".to_string()];
    assert!(expected[0].starts_with("kustomize v5.") && expected[1].starts_with("helm v3."), "{expected:?}");
    for (name, renderer) in names.iter().zip(&expected) {
        let status = eventually_ok(&running, &format!("{name} Synced"), Duration::from_secs(60), || async {
            let status = running.get(&format!("/status/{name}")).await.json();
            if status["state"] == "Synced" {
                Ok(status)
            } else {
                Err(format!("{} {}", status["state"], status["message"]))
            }
        })
        .await;
        assert_eq!(status["renderer"], renderer.as_str(), "{status}");
        let parents = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", inventory.name());
        let parent = get(&parents, &format!("driftless-{name}")).await.expect("the source's parent");
        assert_eq!(parent["metadata"]["annotations"][driftless::keys::RENDERER], renderer.as_str());
    }
    drop(running);
    ns.cleanup().await;
    inventory.cleanup().await;
}

/// What kustomize prints is one revision, bounded by the total size: a build larger than one
/// file may be in git (4 MiB) applies, each of its documents under the same document limits.
#[tokio::test]
async fn a_build_larger_than_the_file_limit_applies() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "kz-large").await;
    let repo = GitFixture::new();
    let names: Vec<String> = (0..5).map(|i| format!("large-{i}")).collect();
    let value = "x".repeat(900 << 10);
    for name in &names {
        repo.write(
            format!("app/{name}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  blob: {value}\n"),
        );
    }
    let resources: String = names.iter().map(|n| format!("  - {n}.yaml\n")).collect();
    repo.write("app/kustomization.yaml", format!("resources:\n{resources}"));
    repo.commit("five ConfigMaps of 900 KiB");
    let mut source = agent::source("kz-large", &repo.url(), ns.name());
    source.spec.path = "app".into();
    assert!(agent.ctx.limits.max_file_bytes < 5 * (900 << 10), "the build is larger than one file may be");

    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    let live = configmaps(&agent.client, ns.name()).await;
    assert_eq!(live.keys().cloned().collect::<Vec<_>>(), names);
    ns.cleanup().await;
}
