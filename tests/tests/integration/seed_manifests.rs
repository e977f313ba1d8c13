//! Users' own manifests (issue 10, point 4), copied from the seed write-ups and synced with the
//! real `driftless sync` binary beside a couple of valid ConfigMaps. Each bad manifest fails the
//! whole revision before anything is written, `driftless sync` exits 1, and one line of its
//! output names the file (and line, where the cause is YAML or the plan), the object and the
//! cause:
//!
//! - seed 004's ClusterRoleBinding of the removed `rbac.authorization.k8s.io/v1beta1`: the
//!   version, and the one the cluster serves;
//! - seed 002's postgres change with tabs in its indentation: the file, line and "tabs are not
//!   allowed for indentation";
//! - seed 002's `persistenctVolumeClaim` (and `constainers`): the field paths, from the API
//!   server's strict field validation;
//! - seed 000's Ingress still holding the placeholder `secretName: "[SECRET_NAME]"`: the field and
//!   the server's message;
//! - the same Ingress in a Namespace the revision creates: the Namespace is not written either.
//!
//! "Nothing written" is counted in the audit log: no create, update, patch or delete (dry-runs
//! aside) by Driftless's user agent for the test's namespaces and objects (the ApplySet parent
//! ConfigMap, Events and the agent's own namespace are not counted), and the valid ConfigMaps do
//! not exist.

use std::process::Command;

use driftless_tests::agent::{audit_events, configmap, configmaps, dynamic_api, get, is_write, run_sync, AGENT_NAMESPACE};
use driftless_tests::{client, cluster_bin, kubeconfig_path, unique_name, GitFixture, TestNamespace, TEST_LABEL};
use kube::Client;
use serde_json::Value;

/// Seed 004's rbac-config.yaml, with Tiller's namespace (`kube-system`) made `namespace` and the
/// ClusterRoleBinding named `binding` (it is cluster-scoped: tests running at once must not share
/// it). The ClusterRoleBinding's document starts on line 7.
fn tiller_rbac(namespace: &str, binding: &str) -> String {
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata:
  name: tiller
  namespace: {namespace}
---
apiVersion: rbac.authorization.k8s.io/v1beta1
kind: ClusterRoleBinding
metadata:
  name: {binding}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: tiller
    namespace: {namespace}
"
    )
}

/// Seed 002's change to the postgres Deployment, exactly as the write-up gives it: three `---`
/// lines, then a pod spec indented with spaces and tabs (the first tab is on line 8), holding the
/// typos `persistenctVolumeClaim` and `constainers`.
const SEED_002_POSTGRES: &str = "---
---
---
spec:
 volumes:
  - name: pg-storage
    persistenctVolumeClaim:
\t claimName: db-pvc
 constainers:
  - name: postgres
    image: postgres
\tports:
\t - containerPort: 5432
\tvolumeMounts:
\t - name: pg-storage
\t   mountPath: /var/lib/postgresql/data
\t   subPath: postgres
";

/// The postgres Deployment the seed's change is made to, with the seed's pod spec as its
/// template's spec: tabs made spaces (else YAML refuses it first), indented under the template.
/// `constainers` is kept or corrected, to see one unknown field named and then both (the API
/// server lists each on a line of its own).
fn postgres_deployment(keep_containers_typo: bool) -> String {
    let pod_spec: String =
        SEED_002_POSTGRES.trim_start_matches("---\n").replace('\t', "    ").lines().map(|l| format!("    {l}\n")).collect();
    let pod_spec = if keep_containers_typo { pod_spec } else { pod_spec.replace("constainers", "containers") };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: postgres-deployment
spec:
  replicas: 1
  selector:
    matchLabels:
      component: postgres
  template:
    metadata:
      labels:
        component: postgres
{pod_spec}"
    )
}

/// Seed 000's Ingress.yaml as the write-up gives it, in `namespace` when one is given.
fn seed_000_ingress(namespace: Option<&str>) -> String {
    let namespace = namespace.map(|ns| format!("  namespace: {ns}\n")).unwrap_or_default();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: my-ingress
{namespace}  annotations:
    kubernetes.io/ingress.class: \"gce\"
    networking.gke.io/pre-shared-cert: \"[NAME]\"
spec:
  rules:
  - host: your-domain.com
    http:
      paths:
      - pathType: Prefix
        path: \"/\"
        backend:
          service:
            name: your-backend-service
            port:
              number: 80
  tls:
  - hosts:
    - your-domain.com
    secretName: \"[SECRET_NAME]\"
"
    )
}

/// What `driftless sync` did: its exit code and output.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The line of the output (stdout, then stderr) holding every one of `needles`.
    fn line_with(&self, needles: &[&str]) -> Option<String> {
        self.stdout.lines().chain(self.stderr.lines()).find(|l| needles.iter().all(|n| l.contains(n))).map(String::from)
    }
}

/// One seed's repository, beside two valid ConfigMaps, synced into a test namespace.
struct Case {
    client: Client,
    ns: TestNamespace,
    repo: GitFixture,
    /// The source's name.
    name: String,
    /// Cluster-scoped objects of the revision (resource, name) whose writes are counted too.
    cluster_scoped: Vec<(String, String)>,
    /// Namespaces besides the test's whose writes are counted (and Namespaces by that name).
    namespaces: Vec<String>,
}

impl Case {
    async fn new(prefix: &str) -> Self {
        let client = client().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let repo = GitFixture::new();
        repo.write("config/valid-a.yaml", configmap("valid-a", "1")).write("config/valid-b.yaml", configmap("valid-b", "2"));
        let namespaces = vec![ns.name().to_string()];
        Case { client, ns, repo, name: unique_name(prefix), cluster_scoped: Vec::new(), namespaces }
    }

    /// Commits the working tree and runs `driftless sync` on it.
    fn sync(&self, message: &str) -> (Run, usize) {
        self.repo.commit(message);
        let since = audit_events().len();
        let (code, stdout, stderr) = run_sync(&["--repo", &self.repo.url(), "--name", &self.name, "--namespace", self.ns.name()]);
        (Run { code, stdout, stderr }, since)
    }

    /// Then the sync failed (exit 1) with one line holding every one of `needles`, and nothing
    /// was written. Returns that line.
    async fn assert_failed_before_any_write(&self, run: &Run, since: usize, needles: &[&str]) -> String {
        // every check first, so that a failure shows all that is wrong
        let line = run.line_with(needles);
        let writes = self.writes_since(since);
        let left = configmaps(&self.client, self.ns.name()).await;
        let mut wrong = Vec::new();
        if run.code != 1 {
            wrong.push(format!("exit code {}, not 1", run.code));
        }
        if line.is_none() {
            wrong.push(format!("no line of the output holds all of {needles:?}"));
        }
        if !writes.is_empty() {
            wrong.push(format!("a revision that failed wrote: {writes:#?}"));
        }
        if !left.is_empty() {
            wrong.push(format!("ConfigMaps of the failed revision exist: {left:?}"));
        }
        assert!(wrong.is_empty(), "{}\nstdout:\n{}\nstderr:\n{}", wrong.join("\n"), run.stdout, run.stderr);
        let line = line.unwrap_or_default();
        eprintln!("the failure: {line}");
        line
    }

    /// Driftless's non-dry-run writes since `since` to the test's namespaces, the objects in
    /// them and its cluster-scoped objects: `verb resource namespace/name (code)`.
    fn writes_since(&self, since: usize) -> Vec<String> {
        audit_events()
            .into_iter()
            .skip(since)
            .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")) && is_write(e))
            .filter(|e| {
                let (resource, namespace, name) = (text(e, "resource"), text(e, "namespace"), text(e, "name"));
                let ours = self.namespaces.iter().any(|ns| namespace == ns || (resource == "namespaces" && name == ns))
                    || self.cluster_scoped.iter().any(|(r, n)| r == resource && n == name);
                let excluded =
                    resource == "events" || namespace == AGENT_NAMESPACE || (resource == "namespaces" && name == AGENT_NAMESPACE);
                ours && !excluded
            })
            .map(|e| {
                format!(
                    "{} {} {}/{} ({})",
                    e["verb"].as_str().unwrap_or_default(),
                    text(&e, "resource"),
                    text(&e, "namespace"),
                    text(&e, "name"),
                    e["responseStatus"]["code"]
                )
            })
            .collect()
    }

    async fn cleanup(self) {
        self.ns.cleanup().await;
    }
}

/// A field of an audit event's objectRef ("" when absent).
fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event["objectRef"][field].as_str().unwrap_or_default()
}

/// Deletes a cluster-scoped object with kubectl when dropped (also when the test panics), in
/// case a sync that should have failed wrote it.
struct DeleteOnDrop(&'static str, String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(cluster_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["delete", self.0, &self.1, "--ignore-not-found", "--wait=false"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_004_a_removed_api_version_names_the_version_the_cluster_serves_and_writes_nothing() {
    let mut case = Case::new("seed-rbac").await;
    let binding = unique_name("tiller");
    let _binding = DeleteOnDrop("clusterrolebinding", binding.clone());
    case.cluster_scoped.push(("clusterrolebindings".into(), binding.clone()));
    case.repo.write("rbac-config.yaml", tiller_rbac(case.ns.name(), &binding));

    let (run, since) = case.sync("Tiller's RBAC, as the write-up has it");

    // then: the file and line of the binding's document, the binding, the version and what the
    // cluster serves instead
    let object = format!("ClusterRoleBinding {binding}");
    let line = case
        .assert_failed_before_any_write(
            &run,
            since,
            &[
                "rbac-config.yaml:7",
                &object,
                "rbac.authorization.k8s.io/v1beta1 is not served for ClusterRoleBinding",
                "the cluster serves rbac.authorization.k8s.io/v1",
            ],
        )
        .await;
    assert!(line.contains("ValidationFailed"), "{line}");
    let bindings = dynamic_api(&case.client, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", "");
    assert!(get(&bindings, &binding).await.is_none(), "the binding exists");
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_002_tabs_in_indentation_name_the_file_and_line_and_write_nothing() {
    let case = Case::new("seed-tabs").await;

    // when the seed's change is committed as the write-up gives it
    case.repo.write("k8s/postgres-deployment.yaml", SEED_002_POSTGRES);
    let (run, since) = case.sync("the seed's postgres change");

    // then: the file, the line of the first tab, and why
    let line =
        case.assert_failed_before_any_write(&run, since, &["k8s/postgres-deployment.yaml:8", "tabs are not allowed for indentation"]).await;
    assert!(line.contains("RenderFailed"), "{line}");

    // and when the same lines are the spec of the Deployment they change, the object is named too
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: postgres-deployment\n{}",
        SEED_002_POSTGRES.trim_start_matches("---\n")
    );
    case.repo.write("k8s/postgres-deployment.yaml", deployment);
    let (run, since) = case.sync("the change in its Deployment");
    case.assert_failed_before_any_write(
        &run,
        since,
        &["k8s/postgres-deployment.yaml:9: Deployment postgres-deployment: ", "tabs are not allowed for indentation"],
    )
    .await;
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_002_an_unknown_field_names_its_path_and_writes_nothing() {
    let case = Case::new("seed-field").await;

    // when the Deployment holds the seed's persistenctVolumeClaim (constainers corrected)
    case.repo.write("k8s/postgres-deployment.yaml", postgres_deployment(false));
    let (run, since) = case.sync("persistenctVolumeClaim");

    // then: the file, the Deployment, and the field's path as the server gives it
    case.assert_failed_before_any_write(
        &run,
        since,
        &["k8s/postgres-deployment.yaml", "Deployment", "postgres-deployment", "spec.template.spec.volumes", ".persistenctVolumeClaim"],
    )
    .await;

    // and with both of the seed's typos: still one line naming an unknown field's path (the
    // server lists one or both of them, on lines of their own, which Driftless joins)
    case.repo.write("k8s/postgres-deployment.yaml", postgres_deployment(true));
    let (run, since) = case.sync("and constainers");
    let line = case
        .assert_failed_before_any_write(
            &run,
            since,
            &["k8s/postgres-deployment.yaml", "Deployment", "postgres-deployment", "field not declared in schema"],
        )
        .await;
    assert!(
        line.contains("spec.template.spec.constainers")
            || line.contains("spec.template.spec.volumes[name=\"pg-storage\"].persistenctVolumeClaim"),
        "an unknown field's path: {line}"
    );
    let deployments = dynamic_api(&case.client, "apps/v1", "Deployment", "deployments", case.ns.name());
    assert!(get(&deployments, "postgres-deployment").await.is_none(), "the Deployment exists");
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_000_a_value_the_server_rejects_names_the_field_and_the_servers_message_and_writes_nothing() {
    let case = Case::new("seed-value").await;

    // when the Ingress still holds the write-up's placeholder secretName
    case.repo.write("Ingress.yaml", seed_000_ingress(None));
    let (run, since) = case.sync("the write-up's Ingress");

    // then: the file, the Ingress, the field and the server's message
    case.assert_failed_before_any_write(
        &run,
        since,
        &["Ingress.yaml", "Ingress", "my-ingress", "spec.tls[0].secretName", "Invalid value: \"[SECRET_NAME]\"", "RFC 1123"],
    )
    .await;
    let ingresses = dynamic_api(&case.client, "networking.k8s.io/v1", "Ingress", "ingresses", case.ns.name());
    assert!(get(&ingresses, "my-ingress").await.is_none(), "the Ingress exists");
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_000_in_a_new_namespace_fails_before_the_namespace_is_written() {
    let mut case = Case::new("seed-newns").await;
    let new_ns = unique_name("t-seed-newns-app");
    let _new_ns = DeleteOnDrop("namespace", new_ns.clone());
    case.namespaces.push(new_ns.clone());

    // when one revision creates a Namespace holding a valid ConfigMap and the seed's Ingress
    case.repo
        .write(
            "app/namespace.yaml",
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {new_ns}\n  labels:\n    {TEST_LABEL}: \"true\"\n"),
        )
        .write(
            "app/settings.yaml",
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {new_ns}\ndata:\n  value: \"1\"\n"),
        )
        .write("app/Ingress.yaml", seed_000_ingress(Some(&new_ns)));
    let (run, since) = case.sync("a new namespace with the write-up's Ingress");

    // then: the Ingress is refused with the server's message, and not even the Namespace exists
    case.assert_failed_before_any_write(
        &run,
        since,
        &["app/Ingress.yaml", "Ingress", "my-ingress", "spec.tls[0].secretName", "[SECRET_NAME]"],
    )
    .await;
    let namespaces = dynamic_api(&case.client, "v1", "Namespace", "namespaces", "");
    assert!(get(&namespaces, &new_ns).await.is_none(), "Namespace {new_ns} was created by a revision that failed validation");
    case.cleanup().await;
}
