//! The Helm chart in `helm/`, against the local control plane:
//!
//! 1. `helm lint` is clean: default values, `--strict`, and every `ci/*-values.yaml` file;
//!    values the agent would refuse (an SSH source without known_hosts...) fail the render with
//!    a clear message; the render follows the values (leader election with replicas > 1, the
//!    config checksum, credential mounts, per-release cluster-scoped names, a config the agent
//!    parses), the dashboard ConfigMap needs both `dashboard.enabled` and the JSON file, and the
//!    PrometheusRule (behind `prometheusRule.enabled`) holds the groups of the alert rules file;
//! 2. every object `helm template` renders (defaults and the ci values) passes a server-side
//!    dry-run in a namespace enforcing the `restricted` Pod Security Standard, warnings being
//!    errors (ServiceMonitor and PrometheusRule are skipped when monitoring.coreos.com is not
//!    served);
//! 3. `helm install` brings the Deployment to Available on the kwok node, and an upgrade to two
//!    replicas turns leader election and the PodDisruptionBudget on and rolls the pod when the
//!    config changes;
//! 4. the chart's ServiceAccount, through a token minted for it, can sync a repository into the
//!    namespaces of `rbac.targetNamespaces` and keep its ApplySet parent in the release
//!    namespace, and nothing else: an object in another namespace makes the sync fail with
//!    Forbidden, and nothing is pruned. The same with `manifests-repo-example/` (its app overlay
//!    and its database chart) in namespace `shop`, its cluster-scoped objects granted through
//!    `rbac.extraClusterRules`.
//!
//! Every test uses namespaces and a release of its own, so they run in parallel with each other
//! and with the other tests; helm's cache and config live in a temporary directory per test. The
//! example test alone uses the example's fixed names (namespace `shop`...), as
//! sync_example_repo.rs does in another test binary: cargo runs test binaries one at a time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driftless::config::{NotifyType, Provider, Rollback};
use driftless::source::RenderMode;
use driftless_tests::agent::{
    audit_events, configmap, configmap_value, dynamic_api, get, intrude_configmap, is_write, remove_example, run_sync_with_kubeconfig,
    wait_status, AgentProcess,
};
use driftless_tests::{client, cluster_bin, kubeconfig_path, repo_root, unique_name, wait_for, GitFixture, TestNamespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The chart directory.
fn chart() -> PathBuf {
    repo_root().join("helm")
}

/// The values files of `helm/ci/` (helm's `ci/*-values.yaml` convention), sorted.
fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("helm/ci exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("-values.yaml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "helm/ci holds no *-values.yaml file");
    files
}

/// What a command did: exit code, stdout, stderr.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the command's output unless it exited 0.
    fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, 0, "{what} failed:\n{}", self.all());
        self
    }
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        // Written from a thread: a large input must not deadlock against a full stdout pipe.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = child.wait_with_output().expect("wait for the command");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm` from `.cluster/bin`, on the local cluster, with its cache, config and data directories
/// in a temporary directory of the test (nothing read from or written to the user's home).
struct Helm {
    home: TempDir,
}

impl Helm {
    fn new() -> Self {
        Helm { home: TempDir::new().expect("a helm home") }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(cluster_bin("helm"));
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("KUBECONFIG");
        run(cmd, None)
    }

    /// `helm template <release> helm/ -n <namespace> <args>`: the rendered manifests.
    fn template(&self, release: &str, namespace: &str, args: &[&str]) -> String {
        self.template_chart(&chart(), release, namespace, args)
    }

    /// `helm template` of the chart in directory `chart`.
    fn template_chart(&self, chart: &Path, release: &str, namespace: &str, args: &[&str]) -> String {
        let mut all = vec!["template", release, chart.to_str().expect("utf-8 path"), "--namespace", namespace];
        all.extend_from_slice(args);
        self.run(&all).ok("helm template").stdout
    }
}

/// `kubectl` from `.cluster/bin` as the tests' admin, with `stdin` as input.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(cluster_bin("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig_path()).args(args).env_remove("KUBECONFIG");
    run(cmd, stdin)
}

/// The documents of a multi-document YAML stream (helm's output) that hold an object, as JSON,
/// each with its source text. Parsed with the agent's own YAML reader.
fn documents(stream: &str) -> Vec<(Value, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let flush = |text: &mut String, docs: &mut Vec<(Value, String)>| {
        // a document of comments only (or nothing) holds no object
        if let Ok(v) = driftless::render::yaml::parse_config(text) {
            if v.is_object() {
                docs.push((v, std::mem::take(text)));
            }
        }
        text.clear();
    };
    for line in stream.lines() {
        if line.trim_end() == "---" {
            flush(&mut current, &mut docs);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, &mut docs);
    docs
}

fn kind_name(obj: &Value) -> String {
    format!("{}/{}", obj["kind"].as_str().unwrap_or("?"), obj["metadata"]["name"].as_str().unwrap_or("?"))
}

/// Makes a test namespace enforce (and warn about) the `restricted` Pod Security Standard.
async fn enforce_restricted(client: &Client, namespace: &str) {
    let patch = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("label namespace {namespace}: {e}"));
}

/// Uninstalls a release when dropped (also when the test panics), so that its cluster-scoped
/// objects never outlive the test.
struct Release<'a> {
    helm: &'a Helm,
    name: String,
    namespace: String,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let r = self.helm.run(&["uninstall", &self.name, "--namespace", &self.namespace, "--ignore-not-found"]);
        if r.code != 0 {
            eprintln!("warning: helm uninstall {} failed: {}", self.name, r.all());
        }
    }
}

/// Installs the chart as `release` in `namespace` with `args` (e.g. `--set ...`).
fn install<'a>(helm: &'a Helm, release: &str, namespace: &str, args: &[&str]) -> Release<'a> {
    let chart = chart();
    let mut all = vec!["install", release, chart.to_str().expect("utf-8 path"), "--namespace", namespace];
    all.extend_from_slice(args);
    let out = helm.run(&all).ok("helm install");
    assert!(out.stdout.contains("STATUS: deployed"), "{}", out.all());
    Release { helm, name: release.into(), namespace: namespace.into() }
}

/// Waits until the Deployment is Available with `replicas` ready replicas of its latest
/// generation; returns it.
async fn wait_available(client: &Client, namespace: &str, name: &str, replicas: i32) -> Deployment {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_for(&format!("Deployment {namespace}/{name} Available with {replicas} replicas"), Duration::from_secs(90), || {
        let api = api.clone();
        async move {
            let d = api.get_opt(name).await.ok()??;
            let status = d.status.clone()?;
            let available = status.conditions.iter().flatten().any(|c| c.type_ == "Available" && c.status == "True");
            let current = status.observed_generation == d.metadata.generation
                && status.updated_replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
                && status.replicas == Some(replicas);
            (available && current).then_some(d)
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. lint and render-time checks
// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_is_clean_with_defaults_strict_and_every_ci_values_file() {
    let helm = Helm::new();
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let mut runs = vec![vec!["lint", chart], vec!["lint", "--strict", chart]];
    let ci: Vec<String> = ci_values_files().iter().map(|p| p.display().to_string()).collect();
    for file in &ci {
        runs.push(vec!["lint", "--strict", chart, "--values", file]);
    }
    for args in runs {
        let out = helm.run(&args);
        // The one message helm may print on a clean chart is "[INFO] Chart.yaml: icon is
        // recommended": the project has no logo to point at.
        assert_eq!(out.code, 0, "helm {args:?}:\n{}", out.all());
        assert!(out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"), "helm {args:?}:\n{}", out.all());
        for bad in ["[WARNING]", "[ERROR]"] {
            assert!(!out.all().contains(bad), "helm {args:?} reports a {bad}:\n{}", out.all());
        }
    }
}

#[test]
fn inconsistent_values_fail_the_render_with_the_reason() {
    let helm = Helm::new();
    let chart = chart();
    let https = "sources[0].name=shop,sources[0].repo=https://git.example.com/shop.git";
    let cases: Vec<(String, &str)> = vec![
        // known_hosts is mandatory for SSH sources, whichever way the source is SSH
        (
            "sources[0].name=shop,sources[0].repo=ssh://git@git.example.com/shop.git,sources[0].auth.sshKeySecret.name=shop-ssh".into(),
            "known_hosts is mandatory for SSH sources: set auth.knownHostsSecret",
        ),
        (
            "sources[0].name=shop,sources[0].repo=git@git.example.com:shop.git,sources[0].auth.sshKeySecret.name=shop-ssh".into(),
            "known_hosts is mandatory for SSH sources",
        ),
        (
            "sources[0].name=shop,sources[0].repo=ssh://git@git.example.com/shop.git".into(),
            "an SSH source needs auth.sshKeySecret",
        ),
        (format!("{https},sources[0].auth.tokenSecret.name=t,sources[0].auth.passwordSecret.name=p"), "choose one kind of auth"),
        (format!("{https},sources[0].auth.usernameSecret.name=u"), "basic auth needs both"),
        (format!("{https},sources[1].name=shop,sources[1].repo=https://x/y.git"), "source \"shop\" is listed twice"),
        (format!("{https},sources[0].auth.tokenSecret.key=token"), "/sources/0/auth/tokenSecret': missing property 'name'"),
        ("networkPolicy.enabled=true".into(), "networkPolicy.apiServer.cidrs is required"),
        (
            "rbac.extraClusterRules[0].apiGroups[0]=,rbac.extraClusterRules[0].resources[0]=serviceaccounts,rbac.extraClusterRules[0].verbs[0]=impersonate".into(),
            "grants \"impersonate\": set rbac.allowPrivilegedVerbs=true",
        ),
        (
            "rbac.extraClusterRules[0].apiGroups[0]=*,rbac.extraClusterRules[0].resources[0]=*,rbac.extraClusterRules[0].verbs[0]=*".into(),
            "include escalate, bind or impersonate",
        ),
        // the schema: source names, types, unknown keys
        ("sources[0].name=Shop,sources[0].repo=https://x/y.git".into(), "/sources/0/name"),
        ("replicas=two".into(), "/replicas"),
        (format!("{https},sources[0].intervall=1m"), "'intervall' not allowed"),
        // commitStatus and notify: what the agent would refuse, and the schema's required fields
        (
            format!("{https},sources[0].commitStatus.provider=gitea,sources[0].commitStatus.repository=o/n,sources[0].commitStatus.tokenSecret.name=t"),
            "sources[0] (shop): commitStatus.apiUrl is required for provider gitea",
        ),
        (
            format!("{https},sources[0].notify[0].type=slack,sources[0].notify[0].urlSecret.name=s,sources[0].notify[0].secretSecret.name=x"),
            "sources[0] (shop): notify[0].secretSecret is for type webhook only",
        ),
        (format!("{https},sources[0].commitStatus.provider=github,sources[0].commitStatus.repository=o/n"), "missing property 'tokenSecret'"),
        (format!("{https},sources[0].commitStatus.provider=github,sources[0].commitStatus.tokenSecret.name=t"), "missing property 'repository'"),
        (format!("{https},sources[0].notify[0].type=webhook"), "missing property 'urlSecret'"),
        (format!("{https},sources[0].notify[0].type=email,sources[0].notify[0].urlSecret.name=s"), "/sources/0/notify/0/type"),
        (format!("{https},sources[0].rollback=always"), "/sources/0/rollback"),
    ];
    for (set, expected) in cases {
        let out = helm.run(&["template", "r", chart.to_str().unwrap(), "--set", &set]);
        assert_ne!(out.code, 0, "--set {set} rendered:\n{}", out.stdout);
        assert!(out.stderr.contains(expected), "--set {set}: expected {expected:?} in:\n{}", out.stderr);
    }
    // the templates' own checks of what the schema also requires, naming the source (seen when
    // the schema is skipped)
    let unchecked: Vec<(String, &str)> = vec![
        (
            format!("{https},sources[0].commitStatus.provider=github,sources[0].commitStatus.repository=o/n"),
            "sources[0] (shop): commitStatus.tokenSecret is required",
        ),
        (
            format!("{https},sources[0].commitStatus.provider=github,sources[0].commitStatus.tokenSecret.name=t"),
            "sources[0] (shop): commitStatus.repository is required",
        ),
        (format!("{https},sources[0].notify[0].type=webhook"), "sources[0] (shop): notify[0].urlSecret is required"),
    ];
    for (set, expected) in unchecked {
        let out = helm.run(&["template", "r", chart.to_str().unwrap(), "--skip-schema-validation", "--set", &set]);
        assert_ne!(out.code, 0, "--skip-schema-validation --set {set} rendered:\n{}", out.stdout);
        assert!(out.stderr.contains(expected), "--skip-schema-validation --set {set}: expected {expected:?} in:\n{}", out.stderr);
    }
}

#[test]
fn the_render_follows_the_values() {
    let helm = Helm::new();
    let find = |docs: &[(Value, String)], kind: &str| -> Vec<Value> {
        docs.iter().filter(|(d, _)| d["kind"] == kind).map(|(d, _)| d.clone()).collect()
    };
    let source = ["--set", "sources[0].name=shop,sources[0].repo=https://git.example.com/shop.git"];

    // defaults: one agent without leader election, recreated on update, no cluster-scoped object
    let defaults = documents(&helm.template("rel", "ops", &source));
    let kinds: Vec<String> = defaults.iter().map(|(d, _)| kind_name(d)).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount/rel-driftless",
            "ConfigMap/rel-driftless-config",
            "Role/rel-driftless",
            "RoleBinding/rel-driftless",
            "RoleBinding/rel-driftless-admin",
            "Service/rel-driftless",
            "Deployment/rel-driftless",
        ],
    );
    for (d, _) in &defaults {
        assert_eq!(d["metadata"]["namespace"], "ops", "{} is not in the release namespace", kind_name(d));
    }
    let deploy = &find(&defaults, "Deployment")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args,
        [
            "run",
            "--config",
            "/etc/driftless/config.yaml",
            "--listen",
            "0.0.0.0:8080",
            "--log-format",
            "json",
            "--instance",
            "rel-driftless"
        ],
        "each release names its install, so two never share a source's ApplySet"
    );
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "DRIFTLESS_CACHE_DIR", "RUST_LOG"]);
    assert_eq!(container["env"][1]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(pod["securityContext"]["runAsUser"], 65534);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string() && container["resources"]["requests"]["cpu"].is_string());
    let cache = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "cache").expect("a cache volume");
    assert_eq!(cache["emptyDir"]["sizeLimit"], "1Gi");
    let role = &find(&defaults, "Role")[0];
    let verbs = role["rules"].to_string();
    for forbidden in ["escalate", "bind", "impersonate", "\"*\"", "delete"] {
        assert!(!verbs.contains(forbidden), "the agent's own Role grants {forbidden}: {verbs}");
    }
    let admin = &find(&defaults, "RoleBinding")[1];
    assert_eq!(admin["roleRef"]["name"], "admin");
    assert_eq!(admin["metadata"]["namespace"], "ops", "the default write scope is the release namespace");
    let config = find(&defaults, "ConfigMap")[0]["data"]["config.yaml"].as_str().unwrap().to_string();
    let parsed = driftless::config::parse(&config).expect("the agent accepts the rendered config");
    assert_eq!(parsed[0].name, "shop");
    assert_eq!(parsed[0].namespace, "ops", "objects without a namespace go to the release namespace");
    let checksum = deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone();

    // two replicas: --leader-elect, a PDB, the default rolling update; a config change rolls the pod
    let two = documents(&helm.template(
        "rel",
        "ops",
        &["--set", "replicas=2,sources[0].name=shop,sources[0].repo=https://git.example.com/shop.git,sources[0].interval=5m"],
    ));
    let deploy = &find(&two, "Deployment")[0];
    assert!(deploy["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().contains(&json!("--leader-elect")));
    assert!(deploy["spec"]["strategy"].is_null(), "several replicas keep the default RollingUpdate");
    assert_eq!(find(&two, "PodDisruptionBudget").len(), 1);
    assert_ne!(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"], checksum);

    // the ci values: every credential mounted read-only from its Secret and referenced by path;
    // cluster-scoped objects named after the release namespace
    let ci = ci_values_files().into_iter().find(|p| p.ends_with("all-values.yaml")).expect("ci/all-values.yaml");
    let docs = documents(&helm.template("rel", "ops", &["--values", ci.to_str().unwrap()]));
    let config = find(&docs, "ConfigMap")[0]["data"]["config.yaml"].as_str().unwrap().to_string();
    let agent_view = driftless::config::parse(&config).expect("the agent accepts every setting the chart renders");
    assert_eq!(agent_view.len(), 4);
    let value = driftless::render::yaml::parse_config(&config).expect("the config is YAML");
    let platform = value["sources"].as_array().unwrap().iter().find(|s| s["name"] == "platform").unwrap();
    assert_eq!(platform["auth"]["knownHostsFile"], "/etc/driftless/sources/platform/known_hosts");
    assert_eq!(platform["webhookSecretFile"], "/etc/driftless/sources/platform/webhook-secret");
    // rendering settings pass through as they are; the chart's defaults fill the rest
    let public = agent_view.iter().find(|s| s.name == "public").unwrap();
    assert_eq!((public.render, public.render_timeout, public.helm_release()), (RenderMode::Helm, Duration::from_secs(120), "addons"));
    assert_eq!(
        (public.helm.values_files.as_slice(), public.helm.values.get("replicas")),
        (&["values-prod.yaml".to_string()][..], Some(&json!(2)))
    );
    let shop = agent_view.iter().find(|s| s.name == "shop").unwrap();
    assert_eq!((shop.render, shop.render_timeout, shop.allow_remote_bases), (RenderMode::Auto, Duration::from_secs(60), false));
    // rollback, commit statuses and notifications: the chart's default and the source's own;
    // each token and URL a file mounted from its Secret, unique per source
    assert_eq!((shop.rollback, public.rollback), (Rollback::OnFailure, Rollback::Never));
    let status = shop.commit_status.as_ref().expect("shop posts commit statuses");
    assert_eq!(
        (status.provider, status.api_url(), status.repository.as_str()),
        (Provider::GitHub, Some("https://git.example.com/api/v3"), "shop/deploy")
    );
    assert_eq!(status.token_file, Path::new("/etc/driftless/sources/shop/commit-status-token"));
    let hooks: Vec<(NotifyType, &Path, Option<&Path>, usize)> =
        shop.notify.iter().map(|n| (n.kind, n.url_file.as_path(), n.secret_file.as_deref(), n.events.len())).collect();
    assert_eq!(
        hooks,
        [
            (
                NotifyType::Webhook,
                Path::new("/etc/driftless/sources/shop/notify-0-url"),
                Some(Path::new("/etc/driftless/sources/shop/notify-0-secret")),
                6
            ),
            (NotifyType::Slack, Path::new("/etc/driftless/sources/shop/notify-1-url"), None, 2),
        ]
    );
    let platform_view = agent_view.iter().find(|s| s.name == "platform").unwrap();
    let gitlab = platform_view.commit_status.as_ref().expect("platform posts commit statuses");
    assert_eq!((gitlab.provider, gitlab.repository.as_str()), (Provider::GitLab, "4242"), "a numeric GitLab project id stays a string");
    assert!(public.commit_status.is_none() && public.notify.is_empty());
    let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    for dir in ["shop", "billing", "platform"] {
        let mount =
            mounts.iter().find(|m| m["mountPath"] == format!("/etc/driftless/sources/{dir}")).expect("a mount per source with credentials");
        assert_eq!(mount["readOnly"], true);
    }
    assert!(!mounts.iter().any(|m| m["mountPath"] == "/etc/driftless/sources/public"));
    assert!(pod["volumes"].to_string().contains("\"name\":\"platform-ssh\""), "the SSH key comes from its Secret");
    let shop_volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "source-0").expect("shop's credential volume");
    let items: Vec<(String, String, String)> = shop_volume["projected"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let item = &s["secret"]["items"][0];
            (s["secret"]["name"].as_str().unwrap().into(), item["key"].as_str().unwrap().into(), item["path"].as_str().unwrap().into())
        })
        .collect();
    for expected in [
        ("shop-forge", "status-token", "commit-status-token"),
        ("shop-hooks", "url", "notify-0-url"),
        ("shop-hooks", "hmac", "notify-0-secret"),
        ("shop-slack", "webhook-url", "notify-1-url"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string(), expected.2.to_string());
        assert!(items.contains(&expected), "{expected:?} is not mounted: {items:?}");
    }
    assert!(!config.contains("shop-forge") && !config.contains("shop-slack"), "the config names files, never Secrets");
    let cluster_scoped: Vec<String> =
        docs.iter().filter(|(d, _)| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding").map(|(d, _)| kind_name(d)).collect();
    assert_eq!(
        cluster_scoped,
        ["ClusterRole/ops-driftless-ci", "ClusterRoleBinding/ops-driftless-ci", "ClusterRoleBinding/ops-driftless-ci-cluster-admin"]
    );
}

#[test]
fn the_dashboard_configmap_needs_both_the_flag_and_the_dashboard_file() {
    let helm = Helm::new();
    let dashboards = |chart: &Path, args: &[&str]| -> Vec<Value> {
        documents(&helm.template_chart(chart, "rel", "ops", args))
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "rel-driftless-dashboard")
            .collect()
    };
    // the chart as it is: a ConfigMap only if helm/dashboards/driftless.json exists
    let shipped = chart().join("dashboards/driftless.json").is_file();
    assert!(dashboards(&chart(), &[]).is_empty(), "the dashboard is opt-in");
    assert_eq!(dashboards(&chart(), &["--set", "dashboard.enabled=true"]).len(), usize::from(shipped));

    // a copy of the chart with a dashboard file: rendered with the flag, labelled for the
    // Grafana sidecar, in the namespace asked for; never without the flag
    let dir = TempDir::new().unwrap();
    let copy = dir.path().join("driftless");
    let cp = Command::new("cp").arg("-R").arg(chart()).arg(&copy).status().expect("cp runs");
    assert!(cp.success());
    let json = r#"{"title": "Driftless", "panels": [{"type": "stat", "title": "Sources \"synced\""}]}"#;
    std::fs::create_dir_all(copy.join("dashboards")).unwrap();
    std::fs::write(copy.join("dashboards/driftless.json"), json).unwrap();
    assert!(dashboards(&copy, &[]).is_empty(), "the dashboard is opt-in");
    let cms = dashboards(&copy, &["--set", "dashboard.enabled=true,dashboard.namespace=monitoring"]);
    assert_eq!(cms.len(), 1);
    assert_eq!(cms[0]["metadata"]["namespace"], "monitoring");
    assert_eq!(cms[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cms[0]["data"]["driftless.json"], json, "the dashboard is shipped byte for byte");
}

#[test]
fn the_prometheus_rule_holds_the_alert_rules_file_and_needs_the_flag() {
    let helm = Helm::new();
    let rules = |chart: &Path, args: &[&str]| -> Vec<(Value, String)> {
        documents(&helm.template_chart(chart, "rel", "ops", args)).into_iter().filter(|(d, _)| d["kind"] == "PrometheusRule").collect()
    };
    assert!(rules(&chart(), &[]).is_empty(), "the PrometheusRule is opt-in");

    let rendered = rules(&chart(), &["--set", "prometheusRule.enabled=true,prometheusRule.labels.release=prometheus"]);
    assert_eq!(rendered.len(), 1, "one PrometheusRule");
    let (rule, text) = &rendered[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!((rule["metadata"]["name"].as_str(), rule["metadata"]["namespace"].as_str()), (Some("rel-driftless"), Some("ops")));
    let labels = &rule["metadata"]["labels"];
    assert_eq!(labels["release"], "prometheus", "the extra labels are applied: {labels}");
    assert_eq!(labels["app.kubernetes.io/name"], "driftless", "and the chart's own: {labels}");

    // the spec is the rules file, parsed: the same groups, nothing else
    let file = std::fs::read_to_string(chart().join("alerts/driftless.rules.yaml")).expect("helm/alerts/driftless.rules.yaml");
    let from_file = driftless::render::yaml::parse_config(&file).expect("the rules file is YAML");
    let spec = rule["spec"].as_object().expect("a spec");
    assert_eq!(spec.keys().collect::<Vec<_>>(), ["groups"], "{spec:?}");
    assert_eq!(rule["spec"]["groups"], from_file["groups"], "the PrometheusRule's groups are the rules file's");
    let alerts: Vec<&str> =
        rule["spec"]["groups"][0]["rules"].as_array().expect("rules").iter().filter_map(|r| r["alert"].as_str()).collect();
    for name in ["DriftlessSourceFailing", "DriftlessSourceNotSynced", "DriftlessFight", "DriftlessPruneHeld", "DriftlessNoLeader"] {
        assert!(alerts.contains(&name), "{name} missing: {alerts:?}");
    }
    // Helm left the rules' own templates alone, for Prometheus to expand
    assert!(text.contains("{{ $labels.source }}"), "{text}");
    assert_eq!(text.matches("{{ $labels.source }}").count(), file.matches("{{ $labels.source }}").count());

    // a chart without the rules file refuses the flag rather than render an empty rule
    let dir = TempDir::new().unwrap();
    let copy = dir.path().join("driftless");
    let cp = Command::new("cp").arg("-R").arg(chart()).arg(&copy).status().expect("cp runs");
    assert!(cp.success());
    std::fs::remove_file(copy.join("alerts/driftless.rules.yaml")).unwrap();
    assert!(rules(&copy, &[]).is_empty());
    let refused = helm.run(&["template", "rel", copy.to_str().unwrap(), "--set", "prometheusRule.enabled=true"]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(refused.all().contains("the chart carries no alerts/driftless.rules.yaml"), "{}", refused.all());
}

// ---------------------------------------------------------------------------------------------
// 2. server-side dry-run of everything the chart renders
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_rendered_object_passes_a_server_side_dry_run() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "helm-dry-run").await;
    let target = TestNamespace::new(&client, "helm-dry-run-target").await;
    enforce_restricted(&client, ns.name()).await;
    let helm = Helm::new();
    let release = unique_name("dry");

    // ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: dry-run them only where
    // they are served.
    let monitoring = kubectl(&["get", "--raw", "/apis/monitoring.coreos.com/v1"], None).code == 0;
    if !monitoring {
        eprintln!(
            "note: monitoring.coreos.com/v1 is not served by this cluster: the ServiceMonitor and PrometheusRule are rendered but not dry-run"
        );
    }
    let operator_kind = |d: &Value| {
        d["apiVersion"] == "monitoring.coreos.com/v1" && matches!(d["kind"].as_str(), Some("ServiceMonitor" | "PrometheusRule"))
    };

    // The ci values name namespaces of their own (apps, shop, monitoring): the objects that go
    // there are sent to this test's namespaces instead (the release namespace and another
    // one, as in the ci file), so that every one of them is dry-run.
    let ns_list = format!("rbac.targetNamespaces={{{},{}}}", ns.name(), target.name());
    let dashboard_ns = format!("dashboard.namespace={}", ns.name());
    let mut renders: Vec<(String, Vec<String>)> = vec![("defaults".into(), vec![])];
    for file in ci_values_files() {
        let args =
            vec!["--values".into(), file.display().to_string(), "--set".into(), ns_list.clone(), "--set".into(), dashboard_ns.clone()];
        renders.push((file.file_name().unwrap().to_string_lossy().into_owned(), args));
    }

    for (label, args) in renders {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let docs = documents(&helm.template(&release, ns.name(), &args));
        assert!(docs.iter().any(|(d, _)| d["kind"] == "Deployment"), "{label}: no Deployment rendered");
        let (checked, skipped): (Vec<_>, Vec<_>) = docs.into_iter().partition(|(d, _)| monitoring || !operator_kind(d));
        assert!(skipped.iter().all(|(d, _)| operator_kind(d)));
        let stream: String = checked.iter().map(|(_, text)| format!("---\n{text}")).collect();
        // every object names its namespace (helm template does not add one), so no --namespace
        let out = kubectl(&["--warnings-as-errors", "apply", "--server-side", "--dry-run=server", "-f", "-"], Some(&stream));
        assert_eq!(out.code, 0, "{label}: the server refuses the chart's objects:\n{}", out.all());
        let accepted = out.stdout.lines().filter(|l| l.ends_with("serverside-applied (server dry run)")).count();
        let names: Vec<String> = checked.iter().map(|(d, _)| kind_name(d)).collect();
        assert_eq!(accepted, checked.len(), "{label}: {names:?}\n{}", out.all());
        for (d, _) in &checked {
            let namespace = d["metadata"]["namespace"].as_str();
            let cluster_scoped = matches!(d["kind"].as_str(), Some("ClusterRole" | "ClusterRoleBinding"));
            assert!(
                cluster_scoped && namespace.is_none() || namespace == Some(ns.name()) || namespace == Some(target.name()),
                "{label}: {} has namespace {namespace:?}",
                kind_name(d)
            );
        }
        eprintln!("{label}: {} objects pass a server-side dry-run ({} skipped): {names:?}", checked.len(), skipped.len());
    }
    ns.cleanup().await;
    target.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. install: the agent's Deployment becomes Available (kwok fakes the pod; no image is pulled)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_brings_the_deployment_to_available_and_upgrades_roll_it() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "helm-install").await;
    enforce_restricted(&client, ns.name()).await;
    let helm = Helm::new();
    let release = unique_name("agent");
    let fullname = format!("{release}-driftless");
    let source = "sources[0].name=shop,sources[0].repo=https://git.example.com/shop.git";
    let started = Instant::now();
    let installed = install(&helm, &release, ns.name(), &["--set", source]);
    let deploy = wait_available(&client, ns.name(), &fullname, 1).await;
    eprintln!("installed and Available in {:.1}s", started.elapsed().as_secs_f64());

    // the pod passed the restricted profile (the namespace enforces it) and runs on the kwok node
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list pods");
    assert_eq!(pods.items.len(), 1);
    let pod = &pods.items[0];
    assert!(pod.spec.as_ref().unwrap().node_name.as_deref().is_some_and(|n| n.starts_with("kwok")), "{:?}", pod.spec);
    assert_eq!(pod.spec.as_ref().unwrap().service_account_name.as_deref(), Some(fullname.as_str()));
    let checksum = |d: &Deployment| {
        d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["checksum/config"].clone()
    };
    let first_checksum = checksum(&deploy);
    assert!(Api::<PodDisruptionBudget>::namespaced(client.clone(), ns.name()).get_opt(&fullname).await.unwrap().is_none());
    assert!(Api::<Service>::namespaced(client.clone(), ns.name()).get_opt(&fullname).await.unwrap().is_some());

    // two replicas and a changed config: leader election, a PDB, a new checksum (the pods roll)
    let chart = chart();
    helm.run(&[
        "upgrade",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        ns.name(),
        "--set",
        &format!("{source},sources[0].interval=5m,replicas=2"),
    ])
    .ok("helm upgrade");
    let deploy = wait_available(&client, ns.name(), &fullname, 2).await;
    let args = deploy.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert!(args.contains(&"--leader-elect".to_string()), "{args:?}");
    assert_ne!(checksum(&deploy), first_checksum, "a config change must roll the pods");
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns.name()).get(&fullname).await.expect("a PDB with 2 replicas");
    assert_eq!(pdb.spec.unwrap().min_available, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    eprintln!("upgraded to 2 replicas in {:.1}s in all", started.elapsed().as_secs_f64());

    drop(installed); // helm uninstall
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns.name());
    wait_for("helm uninstall to remove the Deployment", Duration::from_secs(30), || async {
        deployments.get_opt(&fullname).await.ok()?.is_none().then_some(())
    })
    .await;
    ns.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 4. the ServiceAccount's rights: the target namespaces and nothing else
// ---------------------------------------------------------------------------------------------

/// A kubeconfig for the local cluster (server and CA of `.cluster/kubeconfig`) that
/// authenticates with `token`. JSON, which is YAML.
fn token_kubeconfig(token: &str, dir: &Path) -> PathBuf {
    let admin = kube::config::Kubeconfig::read_from(kubeconfig_path()).expect("read the cluster kubeconfig");
    let context = admin.current_context.clone().expect("a current context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("the current context names a cluster");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .expect("the cluster of the current context");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "local", "user": "agent"}}],
        "current-context": "agent",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).expect("write the kubeconfig");
    path
}

/// The objects of a namespace that belong to an ApplySet, by `Kind/name`, with their uids.
async fn applyset_members(client: &Client, namespace: &str) -> Vec<(String, String)> {
    let lp = ListParams::default().labels("applyset.kubernetes.io/part-of");
    let mut out = Vec::new();
    for cm in Api::<ConfigMap>::namespaced(client.clone(), namespace).list(&lp).await.unwrap() {
        out.push((format!("ConfigMap/{}", cm.metadata.name.unwrap()), cm.metadata.uid.unwrap()));
    }
    for d in Api::<Deployment>::namespaced(client.clone(), namespace).list(&lp).await.unwrap() {
        out.push((format!("Deployment/{}", d.metadata.name.unwrap()), d.metadata.uid.unwrap()));
    }
    for s in Api::<Service>::namespaced(client.clone(), namespace).list(&lp).await.unwrap() {
        out.push((format!("Service/{}", s.metadata.name.unwrap()), s.metadata.uid.unwrap()));
    }
    out.sort();
    out
}

const WEB_DEPLOYMENT: &str = "\
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
          image: registry.invalid/web:1   # kwok runs the pod without pulling it
          ports: [{containerPort: 8080}]
";

const WEB_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread")]
async fn the_service_account_syncs_into_its_target_namespaces_and_nowhere_else() {
    let client = client().await;
    let agent_ns = TestNamespace::new(&client, "helm-rbac-agent").await;
    let target = TestNamespace::new(&client, "helm-rbac-target").await;
    let other = TestNamespace::new(&client, "helm-rbac-other").await;
    let helm = Helm::new();
    let release = unique_name("rbac");
    let installed = install(&helm, &release, agent_ns.name(), &["--set", &format!("rbac.targetNamespaces={{{}}}", target.name())]);

    // a token of the chart's ServiceAccount (TokenRequest), in a kubeconfig of its own
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), agent_ns.name())
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .and_then(|sa| sa.metadata.name)
        .expect("the chart's ServiceAccount");
    let token = kubectl(&["create", "token", &sa, "--namespace", agent_ns.name(), "--duration", "10m"], None)
        .ok("kubectl create token")
        .stdout
        .trim()
        .to_string();
    let dir = TempDir::new().unwrap();
    let kubeconfig = token_kubeconfig(&token, dir.path());
    let sync = |repo: &str, name: &str| {
        run_sync_with_kubeconfig(&kubeconfig, agent_ns.name(), &["--repo", repo, "--name", name, "--namespace", target.name()])
    };

    // a ConfigMap, a Deployment and a Service, all in the target namespace: applied
    let repo = GitFixture::new();
    repo.write("config.yaml", configmap("web-config", "1")).write("deployment.yaml", WEB_DEPLOYMENT).write("service.yaml", WEB_SERVICE);
    repo.commit("web");
    let source = unique_name("helm-rbac");
    let (code, stdout, stderr) = sync(&repo.url(), &source);
    assert_eq!(code, 0, "the ServiceAccount cannot sync into its target namespace:\n{stdout}{stderr}");
    let applied = applyset_members(&client, target.name()).await;
    let names: Vec<&str> = applied.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ConfigMap/web-config", "Deployment/web", "Service/web"], "{stdout}");
    // its ApplySet parent lives in the release namespace (the agent's own Role, not `admin`)
    assert_parent_synced(&client, agent_ns.name(), &source).await;

    // then a revision that drops the Service (a prune) and adds a ConfigMap in a namespace the
    // chart granted nothing in: Forbidden, exit 1, nothing written there and nothing pruned
    let outside =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: outside\n  namespace: {}\ndata:\n  value: \"1\"\n", other.name());
    repo.remove("service.yaml").write("outside.yaml", outside);
    repo.commit("web without its Service, plus an object outside the granted scope");
    let (code, stdout, stderr) = sync(&repo.url(), &source);
    let output = format!("{stdout}{stderr}");
    eprintln!("the refused sync says:\n{stdout}");
    assert_eq!(code, 1, "a sync beyond the granted scope must fail:\n{output}");
    assert!(output.contains("Forbidden") || output.contains("forbidden"), "no Forbidden in:\n{output}");
    assert!(output.contains(&format!("system:serviceaccount:{}:{sa}", agent_ns.name())), "the refused identity is named:\n{output}");
    assert!(output.contains(other.name()), "the refused namespace is named:\n{output}");
    assert_eq!(applyset_members(&client, target.name()).await, applied, "objects were pruned or replaced after a refused sync");
    assert!(Api::<ConfigMap>::namespaced(client.clone(), other.name()).get_opt("outside").await.unwrap().is_none());

    drop(installed); // helm uninstall
    for ns in [agent_ns, target, other] {
        ns.cleanup().await;
    }
}

/// The chart's rights are per target namespace: the agent cannot watch a kind everywhere, so its
/// shared watches fall back to one per namespace, and drift in each is still seen and corrected.
#[tokio::test(flavor = "multi_thread")]
async fn with_namespace_rights_only_the_agent_watches_each_target_namespace() {
    let client = client().await;
    let agent_ns = TestNamespace::new(&client, "helm-watch-agent").await;
    let first = TestNamespace::new(&client, "helm-watch-a").await;
    let second = TestNamespace::new(&client, "helm-watch-b").await;
    let helm = Helm::new();
    let release = unique_name("watch");
    let targets = format!("rbac.targetNamespaces={{{},{}}}", first.name(), second.name());
    let installed = install(&helm, &release, agent_ns.name(), &["--set", &targets]);
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), agent_ns.name())
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .and_then(|sa| sa.metadata.name)
        .expect("the chart's ServiceAccount");
    let token = kubectl(&["create", "token", &sa, "--namespace", agent_ns.name(), "--duration", "10m"], None)
        .ok("kubectl create token")
        .stdout
        .trim()
        .to_string();
    let dir = TempDir::new().unwrap();
    let kubeconfig = token_kubeconfig(&token, dir.path());

    // a source per target namespace, each a ConfigMap: the agent as the chart's ServiceAccount
    let repo = GitFixture::new();
    repo.write("a/config.yaml", configmap("config", "a")).write("b/config.yaml", configmap("config", "b"));
    repo.commit("two apps");
    let names = [unique_name("helm-watch-a"), unique_name("helm-watch-b")];
    let sources: Vec<serde_json::Value> = [(&names[0], "a", first.name()), (&names[1], "b", second.name())]
        .iter()
        .map(|(name, path, ns)| json!({"name": name, "repo": repo.url(), "path": path, "namespace": ns, "interval": "1h"}))
        .collect();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(&config, serde_json::to_string(&json!({ "sources": sources })).unwrap()).unwrap();
    let agent = AgentProcess::start_on(&kubeconfig, agent_ns.name(), &["--config", config.to_str().unwrap()], &[]).await;
    for name in &names {
        wait_status(&agent, name, "Synced and Healthy", Duration::from_secs(60), |s| s["state"] == "Synced" && s["health"] == "Healthy")
            .await;
    }
    assert_eq!(agent.gauge("driftless_watches").await, Some(2.0), "one ConfigMap watch per target namespace");

    // drift in the second namespace is seen by its watch and corrected
    intrude_configmap(&client, second.name(), "config", "intruded").await;
    wait_for("the taken field put back", Duration::from_secs(20), || async {
        (configmap_value(&client, second.name(), "config").await.as_deref() == Some("b")).then_some(())
    })
    .await;

    drop(agent);
    drop(installed); // helm uninstall
    for ns in [agent_ns, first, second] {
        ns.cleanup().await;
    }
}

/// The objects of `manifests-repo-example/` (20): (apiVersion, kind, plural, namespace, name,
/// kind as `driftless sync` prints it).
const EXAMPLE_OBJECTS: [(&str, &str, &str, &str, &str, &str); 20] = [
    ("v1", "Namespace", "namespaces", "", "shop", "Namespace"),
    ("storage.k8s.io/v1", "StorageClass", "storageclasses", "", "shop-local", "StorageClass.storage.k8s.io"),
    ("v1", "PersistentVolume", "persistentvolumes", "", "shop-postgres-data", "PersistentVolume"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims", "shop", "postgres-data", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment", "deployments", "shop", "postgres", "Deployment.apps"),
    ("v1", "Service", "services", "shop", "postgres", "Service"),
    ("v1", "ConfigMap", "configmaps", "shop", "shop-config", "ConfigMap"),
    ("batch/v1", "Job", "jobs", "shop", "shop-migrate", "Job.batch"),
    ("apps/v1", "Deployment", "deployments", "shop", "api", "Deployment.apps"),
    ("v1", "Service", "services", "shop", "api", "Service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "shop", "api", "HorizontalPodAutoscaler.autoscaling"),
    ("apps/v1", "Deployment", "deployments", "shop", "web", "Deployment.apps"),
    ("v1", "Service", "services", "shop", "web", "Service"),
    ("networking.k8s.io/v1", "Ingress", "ingresses", "shop", "shop", "Ingress.networking.k8s.io"),
    ("batch/v1", "CronJob", "cronjobs", "shop", "postgres-backup", "CronJob.batch"),
    ("v1", "ServiceAccount", "serviceaccounts", "shop", "prometheus", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", "", "shop-prometheus", "ClusterRole.rbac.authorization.k8s.io"),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "",
        "shop-prometheus",
        "ClusterRoleBinding.rbac.authorization.k8s.io",
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "",
        "backuppolicies.shop.example.com",
        "CustomResourceDefinition.apiextensions.k8s.io",
    ),
    ("shop.example.com/v1", "BackupPolicy", "backuppolicies", "shop", "postgres-nightly", "BackupPolicy.shop.example.com"),
];

/// The source's ApplySet parent lives in the release namespace (the agent's own Role, not
/// `admin`) and reports Synced.
async fn assert_parent_synced(client: &Client, release_namespace: &str, source: &str) {
    let parent = Api::<ConfigMap>::namespaced(client.clone(), release_namespace)
        .get(&format!("driftless-{source}"))
        .await
        .expect("the ApplySet parent in the release namespace");
    assert_eq!(parent.metadata.annotations.unwrap()["driftless.dev/state"], "Synced");
}

/// Removes the example's objects at the end of the test, or when dropped (also when the test
/// panics): then on a thread of its own with its own runtime and client, never panicking.
struct ExampleCleanup {
    done: bool,
}

impl ExampleCleanup {
    async fn now(mut self, client: &Client) {
        self.done = true;
        remove_example(client).await;
    }
}

impl Drop for ExampleCleanup {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let joined = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async { remove_example(&client().await).await });
        })
        .join();
        if joined.is_err() {
            eprintln!("warning: the example's objects (namespace shop...) may be left behind");
        }
    }
}

/// The rows of `driftless sync`'s table: (action, kind, namespace/name or name).
fn sync_rows(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("ACTION "))
        .skip(1)
        .take_while(|l| !l.starts_with("source "))
        .map(|l| {
            let mut words = l.split_whitespace().map(String::from);
            (words.next().unwrap_or_default(), words.next().unwrap_or_default(), words.next().unwrap_or_default())
        })
        .collect()
}

/// The example's objects as the tests' admin sees them: `Kind namespace/name` and uid.
async fn example_uids(client: &Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (av, kind, plural, ns, name, _) in EXAMPLE_OBJECTS {
        let live = get(&dynamic_api(client, av, kind, plural, ns), name).await;
        let uid = live.as_ref().and_then(|o| o["metadata"]["uid"].as_str()).unwrap_or("<missing>").to_string();
        out.push((format!("{kind} {ns}/{name}"), uid));
    }
    out
}

/// Issue 6, literally: a token of the chart's ServiceAccount, used by a locally run
/// `driftless sync`, applies `manifests-repo-example/` into the allowed namespace (`shop`) with
/// the cluster-scoped rules it needs in `rbac.extraClusterRules`; an object outside the granted
/// scope fails with Forbidden and nothing is pruned or changed. Uses the fixed names of the
/// example (namespace `shop`...), like sync_example_repo.rs, which runs in another test binary
/// (cargo runs those one after another).
#[tokio::test(flavor = "multi_thread")]
async fn the_service_account_syncs_the_example_repo_with_its_cluster_rules_and_nothing_beyond() {
    let started = Instant::now();
    let client = client().await;
    remove_example(&client).await;
    let cleanup = ExampleCleanup { done: false };
    let agent_ns = TestNamespace::new(&client, "helm-example-agent").await;
    let other = TestNamespace::new(&client, "helm-example-other").await;

    // the target namespace exists before the install (the chart binds `admin` in it)
    let shop: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &shop).await.expect("create namespace shop");

    // rbac: `admin` in shop, plus cluster-wide what the example's cluster-scoped and custom
    // objects need; creating ClusterRole shop-prometheus (and binding it) needs every permission
    // it grants (RBAC escalation prevention), so those are granted too.
    let rules = json!([
        {"apiGroups": [""], "resources": ["namespaces", "persistentvolumes"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles", "clusterrolebindings"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": ["shop.example.com"], "resources": ["backuppolicies"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": [""], "resources": ["nodes", "nodes/metrics", "services", "endpoints", "pods"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        // No `bind`: the agent applies ClusterRole shop-prometheus before it dry-runs the binding
        // that names it, so the API server's escalation check finds the role.
    ]);
    let values = json!({"rbac": {"targetNamespaces": ["shop"], "extraClusterRules": rules}});
    let dir = TempDir::new().unwrap();
    let values_file = dir.path().join("values.json"); // JSON is YAML
    std::fs::write(&values_file, serde_json::to_vec_pretty(&values).unwrap()).unwrap();
    let helm = Helm::new();
    let release = unique_name("example");
    let installed = install(&helm, &release, agent_ns.name(), &["--values", values_file.to_str().unwrap()]);
    let installed_at = started.elapsed();

    // a token of the chart's ServiceAccount, in a kubeconfig of its own
    let sa = format!("{release}-driftless");
    Api::<ServiceAccount>::namespaced(client.clone(), agent_ns.name()).get(&sa).await.expect("the chart's ServiceAccount");
    let identity = format!("system:serviceaccount:{}:{sa}", agent_ns.name());
    let token = kubectl(&["create", "token", &sa, "--namespace", agent_ns.name(), "--duration", "10m"], None)
        .ok("kubectl create token")
        .stdout
        .trim()
        .to_string();
    let kubeconfig = token_kubeconfig(&token, dir.path());
    let source = unique_name("helm-example");
    // the example's two sources (its README): the app from the prod overlay, the database chart
    let database = format!("{source}-db");
    let sync = |repo: &str, name: &str, render: &[&str]| {
        let args = [&["--repo", repo, "--name", name, "--namespace", "shop"][..], render].concat();
        run_sync_with_kubeconfig(&kubeconfig, agent_ns.name(), &args)
    };
    let app = ["--path", "overlays/prod"];
    let chart = ["--path", "charts/shop-db", "--helm-release", "shop-db", "--helm-values", "values-prod.yaml"];

    // the example repository: all 20 objects applied, wave by wave
    let repo = GitFixture::new();
    repo.copy_dir(repo_root().join("manifests-repo-example"), "");
    repo.commit("shop: first release");
    let sync_started = Instant::now();
    let (code, stdout, stderr) = sync(&repo.url(), &source, &app);
    assert_eq!(code, 0, "the ServiceAccount cannot sync the example's app:\n{stdout}{stderr}");
    eprintln!("the first sync says:\n{stdout}");
    let (code, db_stdout, stderr) = sync(&repo.url(), &database, &chart);
    let first_sync = sync_started.elapsed();
    assert_eq!(code, 0, "the ServiceAccount cannot sync the example's database:\n{db_stdout}{stderr}");
    eprintln!("the database's first sync says:\n{db_stdout}");
    let rows = [sync_rows(&stdout), sync_rows(&db_stdout)].concat();
    let mut listed: Vec<(String, String)> = rows.iter().map(|(_, kind, name)| (kind.clone(), name.clone())).collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = EXAMPLE_OBJECTS
        .iter()
        .map(|(_, _, _, ns, name, shown)| (shown.to_string(), if ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") }))
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "{stdout}");
    for (action, kind, name) in &rows {
        // namespace shop was created by the test (before the install): adopted, not created
        let want = if kind == "Namespace" { "configured" } else { "created" };
        assert_eq!(action, want, "{kind} {name}:\n{stdout}");
    }
    let applied = example_uids(&client).await;
    assert!(applied.iter().all(|(_, uid)| uid != "<missing>"), "{applied:#?}");
    assert_parent_synced(&client, agent_ns.name(), &source).await;
    assert_parent_synced(&client, agent_ns.name(), &database).await;

    // then an object in a namespace the chart granted nothing in (a template that names its
    // own namespace): Forbidden, exit 1, nothing written, pruned or replaced
    let outside =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: outside\n  namespace: {}\ndata:\n  value: \"1\"\n", other.name());
    repo.write("charts/shop-db/templates/outside.yaml", outside);
    repo.commit("shop: plus an object outside the granted scope");
    let audit_start = audit_events().len();
    let (code, stdout, stderr) = sync(&repo.url(), &database, &chart);
    let output = format!("{stdout}{stderr}");
    eprintln!("the refused sync says:\n{stdout}");
    assert_eq!(code, 1, "a sync beyond the granted scope must fail:\n{output}");
    assert!(output.contains("Forbidden") || output.contains("forbidden"), "no Forbidden in:\n{output}");
    assert!(output.contains(&identity), "the refused identity is named:\n{output}");
    assert!(output.contains(other.name()), "the refused namespace is named:\n{output}");
    assert_eq!(example_uids(&client).await, applied, "objects were pruned or replaced after a refused sync");
    let writes: Vec<String> = audit_events()
        .into_iter()
        .skip(audit_start)
        .filter(|e| e["user"]["username"] == identity.as_str() && is_write(e))
        .filter(|e| e["objectRef"]["namespace"].as_str() != Some(agent_ns.name()))
        .map(|e| format!("{} {} {}/{}", e["verb"], e["objectRef"]["resource"], e["objectRef"]["namespace"], e["objectRef"]["name"]))
        .collect();
    assert!(writes.is_empty(), "the refused sync wrote outside the release namespace: {writes:?}");
    assert!(Api::<ConfigMap>::namespaced(client.clone(), other.name()).get_opt("outside").await.unwrap().is_none());

    drop(installed); // helm uninstall
    cleanup.now(&client).await;
    agent_ns.cleanup().await;
    other.cleanup().await;
    eprintln!(
        "installed in {:.1}s, first sync {:.1}s, {:.1}s in all",
        installed_at.as_secs_f64(),
        first_sync.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
