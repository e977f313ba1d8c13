//! Charts in the repository rendered by the real helm (built from Go modules by
//! tests/cluster/build): an in-repo values file and inline values are merged over the chart's
//! defaults, test hooks are skipped, CRDs are included, a vendored subchart is rendered, the
//! templates see the cluster's version and API versions, install hooks run in a wave before
//! the chart and delete hooks never; a second sync writes nothing. A values file outside the
//! repository, or a dependency that is not vendored, fails with RenderFailed and writes nothing;
//! a dependency in a chart repository (on loopback) is downloaded only when the source allows it.

use driftless::keys;
use driftless::report::changes::Action;
use driftless::report::{Reason, Report, State};
use driftless_tests::agent::{self, configmaps, dynamic_api, get, Agent};
use driftless_tests::{GitFixture, TestNamespace};
use std::time::Duration;

use driftless_tests::wait_for;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use serde_json::json;

const CHART: &str = "\
apiVersion: v2
name: db
version: 0.1.0
appVersion: \"16.4\"
dependencies:
  - name: metrics
    version: 0.1.0
";

const VALUES: &str = "\
image: postgres:16.4
replicas: 1
storage: 1Gi
settings:
  max_connections: \"100\"
  shared_buffers: 128MB
";

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: postgres
          image: {{ .Values.image }}
"#;

const SETTINGS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  {{- range $k, $v := .Values.settings }}
  {{ $k }}: {{ $v | quote }}
  {{- end }}
  namespace: {{ .Release.Namespace }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
  {{- if .Capabilities.APIVersions.Has (printf "%s/v1/Backup" .Values.servedGroup) }}
  backups: served
  {{- end }}
"#;

const TEST_HOOK: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-connection-test
  annotations:
    helm.sh/hook: test
spec:
  restartPolicy: Never
  containers:
    - name: psql
      image: {{ .Values.image }}
"#;

const PRE_INSTALL: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-schema
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
data:
  version: "1"
"#;

const PRE_DELETE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-drop-everything
  annotations:
    helm.sh/hook: pre-delete
data:
  drop: "all"
"#;

fn crd(group: &str) -> String {
    format!(
        "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: backups.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: backups, singular: backup, kind: Backup}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"
    )
}

const BACKUP: &str = r#"apiVersion: {{ .Values.backupGroup }}/v1
kind: Backup
metadata:
  name: {{ .Release.Name }}-nightly
spec:
  schedule: "0 3 * * *"
"#;

const SUBCHART: &str = "apiVersion: v2\nname: metrics\nversion: 0.1.0\n";
const SUB_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-metrics
spec:
  clusterIP: None
  selector: {app: {{ .Release.Name }}}
  ports: [{port: {{ .Values.port }}}]
"#;

/// A repository with the chart at `charts/db`, its CRD in group `group`; its settings say
/// whether the cluster serves `Backup` in `served_group`.
fn chart_repo(group: &str, served_group: &str) -> GitFixture {
    let repo = GitFixture::new();
    repo.write("charts/db/Chart.yaml", CHART)
        .write("charts/db/values.yaml", format!("{VALUES}backupGroup: {group}\nservedGroup: {served_group}\n"))
        .write("charts/db/values-prod.yaml", "replicas: 2\nsettings:\n  max_connections: \"500\"\n")
        .write("charts/db/crds/backups.yaml", crd(group))
        .write("charts/db/templates/deployment.yaml", DEPLOYMENT)
        .write("charts/db/templates/settings.yaml", SETTINGS)
        .write("charts/db/templates/backup.yaml", BACKUP)
        .write("charts/db/templates/schema-hook.yaml", PRE_INSTALL)
        .write("charts/db/templates/drop-hook.yaml", PRE_DELETE)
        .write("charts/db/templates/tests/connection-test.yaml", TEST_HOOK)
        .write("charts/db/charts/metrics/Chart.yaml", SUBCHART)
        .write("charts/db/charts/metrics/values.yaml", "port: 9187\n")
        .write("charts/db/charts/metrics/templates/service.yaml", SUB_SERVICE)
        .write("shared/values-outside-the-chart.yaml", "settings:\n  work_mem: 4MB\n");
    repo.commit("a chart");
    repo
}

fn writes(report: &Report) -> Vec<String> {
    report.changes.entries.iter().filter(|c| c.action.is_write()).map(|c| format!("{} {}", c.action, c.id)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_applies_its_merged_values_and_crds_skips_test_and_delete_hooks_and_resyncs_without_writes() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "helm-chart").await;
    let group = format!("{}.example.com", ns.name());
    // a kind the cluster serves before the sync, which helm knows only from discovery
    let served = format!("served.{}.example.com", ns.name());
    let crds = dynamic_api(&agent.client, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", "");
    let definition: DynamicObject = serde_json::from_value(driftless::render::yaml::parse_config(&crd(&served)).unwrap()).unwrap();
    crds.create(&PostParams::default(), &definition).await.expect("a CRD created");
    wait_for("the served CRD to be established", Duration::from_secs(30), || async {
        let crd = get(&crds, &format!("backups.{served}")).await?;
        let conditions = crd["status"]["conditions"].as_array()?.clone();
        conditions.iter().any(|c| c["type"] == "Established" && c["status"] == "True").then_some(())
    })
    .await;
    let repo = chart_repo(&group, &served);
    let mut source = agent::source("helm-chart", &repo.url(), ns.name());
    source.spec.path = "charts/db".into();
    source.helm.release = Some("shop-db".into());
    // a file of the chart, one elsewhere in the repository, then inline values over both
    source.helm.values_files = vec!["values-prod.yaml".into(), "../../shared/values-outside-the-chart.yaml".into()];
    source.helm.values = json!({"settings": {"shared_buffers": "1GB"}}).as_object().cloned().unwrap();

    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    let mut created: Vec<String> =
        report.changes.entries.iter().filter(|c| c.action == Action::Created).map(|c| format!("{} {}", c.id.kind, c.id.name)).collect();
    created.sort();
    assert_eq!(
        created,
        [
            "Backup shop-db-nightly".to_string(),
            "ConfigMap shop-db-schema".to_string(),
            "ConfigMap shop-db-settings".to_string(),
            format!("CustomResourceDefinition backups.{group}"),
            "Deployment shop-db".to_string(),
            "Service shop-db-metrics".to_string(),
        ],
        "the chart, its CRD and its subchart; no test or delete hook: {:#?}",
        report.changes
    );

    // the values: the chart's defaults, the prod file, the shared file, the inline values
    let settings = configmaps(&agent.client, ns.name()).await;
    assert!(!settings.contains_key("shop-db-drop-everything") && !settings.contains_key("shop-db-connection-test"));
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    let data = get(&cms, "shop-db-settings").await.expect("settings applied")["data"].clone();
    let version = agent.client.apiserver_version().await.unwrap().git_version;
    assert_eq!(
        data,
        json!({
            "max_connections": "500", "shared_buffers": "1GB", "work_mem": "4MB",
            "namespace": ns.name(), "kubeVersion": version, "backups": "served",
        })
    );
    let deployments = dynamic_api(&agent.client, "apps/v1", "Deployment", "deployments", ns.name());
    let db = get(&deployments, "shop-db").await.expect("the Deployment applied");
    assert_eq!(db["spec"]["replicas"], 2);
    assert_eq!(db["spec"]["template"]["spec"]["containers"][0]["image"], "postgres:16.4");
    let pods = dynamic_api(&agent.client, "v1", "Pod", "pods", ns.name());
    assert!(get(&pods, "shop-db-connection-test").await.is_none(), "the test hook is skipped");
    // the install hook ran in the wave before the chart, recreated when it changes
    let hook = get(&cms, "shop-db-schema").await.expect("the pre-install hook applied");
    assert_eq!(hook["metadata"]["annotations"][keys::WAVE], "-1");
    assert_eq!(hook["metadata"]["annotations"][keys::RECREATE], "true");

    // the same commit again: nothing to write
    let again = agent.sync(&source).await;
    assert_eq!(again.state, State::Synced, "{:?}: {}", again.reason, again.message);
    assert_eq!(writes(&again), Vec::<String>::new());

    ns.cleanup().await;
    for name in [format!("backups.{group}"), format!("backups.{served}")] {
        let _ = crds.delete(&name, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn a_values_file_outside_the_repository_or_a_dependency_not_vendored_is_refused_and_nothing_is_written() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "helm-refused").await;
    let group = format!("{}.example.com", ns.name());
    let repo = chart_repo(&group, &group);
    let mut source = agent::source("helm-refused", &repo.url(), ns.name());
    source.spec.path = "charts/db".into();

    source.helm.values_files = vec!["../../../../etc/passwd".into()];
    let outside = agent.sync(&source).await;
    assert_eq!((outside.state, outside.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", outside.message);
    assert!(outside.message.contains("\"../../../../etc/passwd\" leaves the repository"), "{}", outside.message);
    assert_eq!(writes(&outside), Vec::<String>::new());

    // a dependency declared but not in charts/: helm is never asked to download it
    source.helm.values_files.clear();
    repo.remove("charts/db/charts");
    repo.commit("the subchart is no longer vendored");
    let missing = agent.sync(&source).await;
    assert_eq!((missing.state, missing.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", missing.message);
    assert!(
        missing.message.contains("charts/db (helm template)") && missing.message.contains("metrics") && missing.message.contains("vendor"),
        "{}",
        missing.message
    );
    assert!(!missing.message.contains("driftless-render-"), "no private paths: {}", missing.message);
    assert_eq!(writes(&missing), Vec::<String>::new());
    assert!(configmaps(&agent.client, ns.name()).await.is_empty());
    ns.cleanup().await;
}

/// A chart repository on loopback: `helm package` of one chart, `helm repo index`, served by
/// Python's http.server; stopped when dropped.
struct ChartRepository {
    url: String,
    server: std::process::Child,
    _dir: tempfile::TempDir,
}

impl ChartRepository {
    fn serve(chart: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        for (path, content) in chart {
            let file = source.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let served = dir.path().join("served");
        let port = agent::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let helm = |args: &[&str]| {
            let out = std::process::Command::new(driftless_tests::cluster_bin("helm")).args(args).output().unwrap();
            assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        helm(&["package", source.to_str().unwrap(), "--destination", served.to_str().unwrap()]);
        helm(&["repo", "index", served.to_str().unwrap(), "--url", &url]);
        let server = std::process::Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&served)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 serves the chart repository");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the chart repository did not start on {url}");
            std::thread::sleep(Duration::from_millis(50));
        }
        ChartRepository { url, server, _dir: dir }
    }
}

impl Drop for ChartRepository {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[tokio::test]
async fn a_dependency_is_downloaded_only_when_the_source_allows_it() {
    let agent = Agent::new().await;
    let ns = TestNamespace::new(&agent.client, "helm-deps").await;
    let repository = ChartRepository::serve(&[
        ("Chart.yaml", "apiVersion: v2\nname: cache\nversion: 0.3.0\n"),
        (
            "templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cache\ndata: {size: \"{{ .Values.size }}\"}\n",
        ),
        ("values.yaml", "size: 64Mi\n"),
    ]);
    let repo = GitFixture::new();
    let chart = format!(
        "apiVersion: v2\nname: app\nversion: 0.1.0\ndependencies:\n  - name: cache\n    version: 0.3.0\n    repository: {}\n",
        repository.url
    );
    repo.write("chart/Chart.yaml", chart).write("chart/values.yaml", "cache:\n  size: 1Gi\n");
    repo.commit("a chart with a dependency in a repository");
    let mut source = agent::source("helm-deps", &repo.url(), ns.name());
    source.spec.path = "chart".into();
    source.helm.release = Some("app".into());

    // not allowed: refused, nothing downloaded or written
    let refused = agent.sync(&source).await;
    assert_eq!((refused.state, refused.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", refused.message);
    assert!(refused.message.contains("allowDependencyDownloads"), "{}", refused.message);
    assert_eq!(writes(&refused), Vec::<String>::new());

    // allowed: helm dependency build fetches it, and the chart renders with it
    source.helm.allow_dependency_downloads = true;
    let report = agent.sync(&source).await;
    assert_eq!(report.state, State::Synced, "{:?}: {}", report.reason, report.message);
    let cms = dynamic_api(&agent.client, "v1", "ConfigMap", "configmaps", ns.name());
    let cache = get(&cms, "app-cache").await.expect("the downloaded subchart's ConfigMap");
    assert_eq!(cache["data"]["size"], "1Gi", "the parent's values reach the subchart");

    // the repository gone: the render fails, the applied objects stay
    drop(repository);
    repo.write("chart/values.yaml", "cache:\n  size: 2Gi\n");
    repo.commit("bigger");
    let offline = agent.sync(&source).await;
    assert_eq!((offline.state, offline.reason), (State::Failed, Some(Reason::RenderFailed)), "{}", offline.message);
    assert!(offline.message.contains("chart (helm dependency build)"), "{}", offline.message);
    assert_eq!(get(&cms, "app-cache").await.expect("still there")["data"]["size"], "1Gi");
    ns.cleanup().await;
}
