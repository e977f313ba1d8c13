//! Helm: `helm template` of a chart in the repository, in the [`tool`] sandbox. The release
//! name, the source's namespace, values files from the repository (relative to the chart, never
//! outside the repository), inline values, CRDs (`--include-crds`), and the cluster's version
//! and API versions (from discovery) go in; test hooks are skipped. Chart dependencies must be
//! vendored in `charts/` unless the source allows downloads: only then does `helm dependency
//! build` run, online, before the (always offline) `helm template`.
//!
//! Hooks: a chart's objects are applied in waves like any others (see [`hooks`]). Install and
//! upgrade hooks become ordinary objects in a wave before (`pre-*`) or after (`post-*`) the chart's
//! own objects, recreated when they change; hooks that only run on delete or rollback are left
//! out, since Driftless never runs a chart's delete or rollback.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use serde_json::Value;

use super::tool::{self, Sandbox, ToolError};
use super::RenderError;
use crate::keys;
use crate::manifest::{Manifest, ResourceType, SourceFile};
use crate::source::Checkout;

/// How helm is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Helm {
    /// The `helm` program.
    pub program: std::path::PathBuf,
    pub sandbox: Sandbox,
    /// What `helm version --short` printed when the agent started (see [`Helm::new`]).
    pub version: String,
}

impl Helm {
    /// `program` (looked up in PATH unless it has a `/`), with its version.
    pub fn new(program: &str) -> Self {
        let program = tool::find_program(program);
        let version = tool::version(&program, &["version", "--short"]).unwrap_or_else(|e| format!("unavailable ({e})"));
        Helm { program, sandbox: Sandbox::default(), version }
    }
}

/// What a source says about its chart (`helm:` in the config).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// The release name (default: the source's name).
    #[serde(default)]
    pub release: Option<String>,
    /// Values files, relative to the chart directory; later ones override earlier ones.
    #[serde(default)]
    pub values_files: Vec<String>,
    /// Values given in the config, over the files.
    #[serde(default)]
    pub values: serde_json::Map<String, Value>,
    /// Let `helm dependency build` download the chart's dependencies that are not vendored in
    /// its `charts/` (from the repositories its `Chart.yaml` names).
    #[serde(default)]
    pub allow_dependency_downloads: bool,
}

/// What the chart's templates see of the cluster (`.Capabilities`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server's version, e.g. `v1.35.4` (empty: helm's default).
    pub kube_version: String,
    /// Every served `group/version` and `group/version/Kind` (`v1`, `v1/Service` for core).
    pub api_versions: Vec<String>,
}

/// The release name helm accepts: a DNS-1123 label of at most 53 characters.
pub fn valid_release(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 53
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The API versions a chart may ask for (`.Capabilities.APIVersions.Has`): each served
/// `group/version`, and `group/version/Kind`.
pub fn api_versions(types: &[ResourceType]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for t in types {
        let gv = if t.group.is_empty() { t.version.clone() } else { format!("{}/{}", t.group, t.version) };
        out.insert(format!("{gv}/{}", t.kind));
        out.insert(gv);
    }
    out.into_iter().collect()
}

/// Renders the chart at the checkout's source path; returns one file per template helm
/// rendered, named after it (`<chart path>/templates/x.yaml (helm template)`).
pub fn template(
    helm: &Helm,
    checkout: &Checkout,
    release: &str,
    namespace: &str,
    values: &Release,
    capabilities: &Capabilities,
) -> Result<Vec<SourceFile>, RenderError> {
    let dir = checkout.source_dir();
    let shown = if checkout.path.is_empty() { ".".to_string() } else { checkout.path.trim_end_matches('/').to_string() };
    let fail = RenderError::of_file;
    let chart_file = format!("{shown} (helm template)");

    // values: files inside the repository, then the inline values in a private file
    let mut args: Vec<OsString> =
        ["template", release, ".", "--namespace", namespace, "--include-crds", "--skip-tests"].iter().map(OsString::from).collect();
    if !capabilities.kube_version.is_empty() {
        args.extend(["--kube-version".into(), capabilities.kube_version.clone().into()]);
    }
    for version in &capabilities.api_versions {
        args.extend(["--api-versions".into(), version.into()]);
    }
    for file in &values.values_files {
        let path = values_file(checkout.root(), &dir, file).map_err(|cause| fail(format!("{shown}/{file}"), cause))?;
        args.extend(["--values".into(), path.into_os_string()]);
    }
    let inline = tempfile::Builder::new().prefix("driftless-values-").tempdir().map_err(|e| fail(chart_file.clone(), e.to_string()))?;
    if !values.values.is_empty() {
        let path = inline.path().join("values.json");
        let text = serde_json::to_vec(&values.values).map_err(|e| fail(chart_file.clone(), e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| fail(chart_file.clone(), e.to_string()))?;
        args.extend(["--values".into(), path.into_os_string()]);
    }

    let renames = [(checkout.root(), "."), (inline.path(), "(inline values)")];
    // dependencies: downloaded into the chart's `charts/` only when the source allows it
    if values.allow_dependency_downloads {
        let step = format!("{shown} (helm dependency build)");
        checkout.unseal_source_dir().map_err(|e| fail(step.clone(), e.to_string()))?;
        let online = Sandbox { offline: false, ..helm.sandbox };
        let args: [&OsStr; 3] = ["dependency".as_ref(), "build".as_ref(), ".".as_ref()];
        tool::run(&helm.program, &args, &dir, online, &renames).map_err(|e| fail(step.clone(), e.cause("helm dependency build")))?;
    }

    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let output = tool::run(&helm.program, &args, &dir, helm.sandbox, &renames).map_err(|e| {
        let mut cause = e.cause("helm template");
        if matches!(&e, ToolError::Failed { stderr, .. } if stderr.contains("missing in charts/ directory")) {
            cause.push_str("; vendor the chart's dependencies in its charts/ directory, or set helm.allowDependencyDownloads");
        }
        fail(chart_file.clone(), cause)
    })?;
    Ok(split_templates(&output, &shown))
}

/// A values file's path in the checkout: relative, and inside the repository once `..` is
/// resolved (the checkout holds no symlinks: git's are written out as the files they name).
fn values_file(root: &Path, chart: &Path, file: &str) -> Result<std::path::PathBuf, String> {
    if file.is_empty() || Path::new(file).is_absolute() {
        return Err(format!("values file {file:?} must be a path relative to the chart directory"));
    }
    let path = super::normalize(&chart.join(file));
    if !path.starts_with(root) {
        return Err(format!("values file {file:?} leaves the repository; values files must be inside it"));
    }
    if !path.is_file() {
        return Err(format!("values file {file:?} does not exist in the repository"));
    }
    Ok(path)
}

/// helm's output as one file per template: each document follows a `# Source: <chart>/<path>`
/// line, named `<chart path>/<path> (helm template)` so a problem names the template.
fn split_templates(output: &[u8], chart_path: &str) -> Vec<SourceFile> {
    let text = String::from_utf8_lossy(output);
    let mut files: Vec<SourceFile> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        if let Some(source) = line.trim_end().strip_prefix("# Source: ") {
            // `<chart name>/templates/x.yaml`, or a subchart's `<chart>/charts/<sub>/templates/x.yaml`
            let template = source.split_once('/').map_or(source, |(_, rest)| rest);
            let path = if chart_path == "." { template.to_string() } else { format!("{chart_path}/{template}") };
            if let Some((path, content)) = current.take() {
                files.push(SourceFile { path: format!("{path} (helm template)"), content: content.into_bytes() });
            }
            current = Some((path, String::new()));
            continue;
        }
        match &mut current {
            Some((_, content)) => content.push_str(line),
            // before the first template: only helm's `---` separators
            None if line.trim() == "---" || line.trim().is_empty() => {}
            None => current = Some((format!("{chart_path}/(helm template output)"), line.to_string())),
        }
    }
    if let Some((path, content)) = current {
        files.push(SourceFile { path: format!("{path} (helm template)"), content: content.into_bytes() });
    }
    files
}

/// The `helm.sh/hook` annotation.
pub const HOOK: &str = "helm.sh/hook";

/// Helm hooks as Driftless applies them: an object whose hooks include `pre-install` or
/// `pre-upgrade` goes in wave -1, one with only `post-install`/`post-upgrade` in wave 1, and both
/// are recreated when they change (helm's default `before-hook-creation`), unless the chart sets
/// `driftless.dev/wave` or `driftless.dev/recreate` itself. An object whose hooks are all delete,
/// rollback or test hooks is left out, with its name in the returned list.
pub fn hooks(manifests: Vec<Manifest>) -> (Vec<Manifest>, Vec<String>) {
    let mut kept = Vec::with_capacity(manifests.len());
    let mut skipped = Vec::new();
    for m in manifests {
        let Some(hook) = m.annotation(HOOK) else {
            kept.push(m);
            continue;
        };
        // helm reads the events without regard to case
        let events: Vec<String> = hook.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).collect();
        let pre = events.iter().any(|e| matches!(e.as_str(), "pre-install" | "pre-upgrade"));
        let post = events.iter().any(|e| matches!(e.as_str(), "post-install" | "post-upgrade"));
        if !pre && !post {
            skipped.push(format!("{} {} ({HOOK}: {hook})", m.kind(), m.name()));
            continue;
        }
        let wave = if pre { "-1" } else { "1" };
        let mut object = m.value();
        if let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            annotations.entry(keys::WAVE).or_insert_with(|| wave.into());
            annotations.entry(keys::RECREATE).or_insert_with(|| "true".into());
        }
        kept.push(Manifest::new(&object, m.origin.clone()));
    }
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Origin;
    use serde_json::json;

    fn manifest(kind: &str, name: &str, annotations: Value) -> Manifest {
        let object = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "annotations": annotations}});
        Manifest::new(&object, Origin { file: "chart/templates/x.yaml (helm template)".into(), line: 1, doc: 0 })
    }

    #[test]
    fn install_hooks_get_waves_around_the_chart_and_delete_hooks_are_left_out() {
        let (kept, skipped) = hooks(vec![
            manifest("ConfigMap", "plain", json!({})),
            manifest("Job", "migrate", json!({HOOK: "pre-install,pre-upgrade"})),
            manifest("Job", "notify", json!({HOOK: "Post-Install"})),
            manifest("Job", "own-wave", json!({HOOK: "pre-upgrade", keys::WAVE: "5"})),
            manifest("Job", "cleanup", json!({HOOK: "pre-delete"})),
            manifest("Job", "undo", json!({HOOK: "post-rollback, post-delete"})),
            manifest("Pod", "probe", json!({HOOK: "test"})),
        ]);
        let waves: Vec<(&str, Option<&str>, Option<&str>)> =
            kept.iter().map(|m| (m.name(), m.annotation(keys::WAVE), m.annotation(keys::RECREATE))).collect();
        assert_eq!(
            waves,
            [
                ("plain", None, None),
                ("migrate", Some("-1"), Some("true")),
                ("notify", Some("1"), Some("true")),
                ("own-wave", Some("5"), Some("true"))
            ]
        );
        assert_eq!(
            skipped,
            [
                "Job cleanup (helm.sh/hook: pre-delete)",
                "Job undo (helm.sh/hook: post-rollback, post-delete)",
                "Pod probe (helm.sh/hook: test)"
            ]
        );
    }

    #[test]
    fn output_is_split_per_template_named_in_the_chart_path() {
        let out = b"---\n# Source: db/templates/svc.yaml\napiVersion: v1\nkind: Service\n---\n# Source: db/charts/sub/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\n";
        let files = split_templates(out, "charts/db");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["charts/db/templates/svc.yaml (helm template)", "charts/db/charts/sub/templates/cm.yaml (helm template)"]);
        assert_eq!(files[0].content, b"apiVersion: v1\nkind: Service\n---\n");
        assert_eq!(files[1].content, b"apiVersion: v1\nkind: ConfigMap\n");
        assert_eq!(split_templates(b"# Source: db/templates/a.yaml\nkind: A\n", ".")[0].path, "templates/a.yaml (helm template)");
    }

    #[test]
    fn values_files_stay_in_the_repository() {
        let repo = tempfile::tempdir().unwrap();
        let chart = repo.path().join("charts/db");
        std::fs::create_dir_all(&chart).unwrap();
        std::fs::write(chart.join("values-prod.yaml"), "a: 1\n").unwrap();
        std::fs::write(repo.path().join("shared.yaml"), "b: 2\n").unwrap();
        assert_eq!(values_file(repo.path(), &chart, "values-prod.yaml").unwrap(), chart.join("values-prod.yaml"));
        assert_eq!(values_file(repo.path(), &chart, "../../shared.yaml").unwrap(), repo.path().join("shared.yaml"));
        for (file, cause) in [
            ("../../../etc/passwd", "leaves the repository"),
            ("/etc/passwd", "must be a path relative"),
            ("", "must be a path relative"),
            ("missing.yaml", "does not exist"),
        ] {
            let err = values_file(repo.path(), &chart, file).unwrap_err();
            assert!(err.contains(cause), "{file}: {err}");
        }
    }

    #[test]
    fn api_versions_name_each_group_version_and_kind() {
        let t = |group: &str, version: &str, kind: &str| ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: String::new(),
            namespaced: true,
        };
        let versions = api_versions(&[t("", "v1", "Service"), t("apps", "v1", "Deployment"), t("apps", "v1", "StatefulSet")]);
        assert_eq!(versions, ["apps/v1", "apps/v1/Deployment", "apps/v1/StatefulSet", "v1", "v1/Service"]);
    }

    #[test]
    fn release_names_are_dns_labels() {
        for good in ["shop-db", "a", "db1"] {
            assert!(valid_release(good), "{good}");
        }
        for bad in ["", "Shop", "-db", "db-", "a_b", &"x".repeat(54)] {
            assert!(!valid_release(bad), "{bad}");
        }
    }
}
