//! kustomize: `kustomize build` of the source path, in the [`tool`] sandbox, with the root-only
//! load restrictor, no plugins and no exec functions (kustomize's defaults without
//! `--enable-alpha-plugins`, `--enable-exec` or `--enable-helm`). Remote bases and resources
//! (`https://...`, `git@...`, `github.com/...`) are refused before the build, naming the file
//! and the reference, unless the source allows them. What kustomize prints is then read like
//! any other YAML file, under the same limits.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::tool::{self, Sandbox};
use super::{inside, normalize, RenderError};
use crate::manifest::SourceFile;
use crate::source::{Checkout, KUSTOMIZATION_FILES};

/// How kustomize is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kustomize {
    /// The `kustomize` program.
    pub program: PathBuf,
    pub sandbox: Sandbox,
    /// Let remote bases and resources through (kustomize then fetches them).
    pub allow_remote: bool,
    /// What `kustomize version` printed when the agent started (see [`Kustomize::new`]).
    pub version: String,
}

impl Kustomize {
    /// `program` (looked up in PATH unless it has a `/`), with its version.
    pub fn new(program: &str) -> Self {
        let program = tool::find_program(program);
        let version = tool::version(&program, &["version"]).unwrap_or_else(|e| format!("unavailable ({e})"));
        Kustomize { program, sandbox: Sandbox::default(), allow_remote: false, version }
    }
}

/// Builds the kustomization at the checkout's source path; returns what kustomize printed, as
/// one file named after the kustomization (`<path>/kustomization.yaml (kustomize build)`).
pub fn build(kustomize: &Kustomize, checkout: &Checkout) -> Result<SourceFile, RenderError> {
    let dir = checkout.source_dir();
    let shown = if checkout.path.is_empty() { ".".to_string() } else { checkout.path.clone() };
    let fail = RenderError::of_file;
    match first_refusal(checkout.root(), &dir) {
        None => {}
        Some(Refusal::Remote { .. }) if kustomize.allow_remote => {}
        Some(Refusal::Remote { file, reference }) => {
            return Err(fail(
                file,
                format!(
                    "refers to the remote {reference:?}; remote bases and resources are refused unless the source sets allowRemoteBases"
                ),
            ))
        }
        Some(Refusal::Outside { file, reference }) => {
            return Err(fail(file, format!("refers to {reference:?}, which leaves the repository")))
        }
        Some(Refusal::Unreadable { file, reason }) => return Err(fail(file, format!("cannot be checked before the build: {reason}"))),
    }
    let args: [&OsStr; 4] = ["build".as_ref(), "--load-restrictor".as_ref(), "LoadRestrictionsRootOnly".as_ref(), ".".as_ref()];
    let output = tool::run(&kustomize.program, &args, &dir, kustomize.sandbox, &[(checkout.root(), ".")])
        .map_err(|e| fail(format!("{shown} (kustomize build)"), e.cause("kustomize build")))?;
    Ok(SourceFile { path: format!("{}/kustomization.yaml (kustomize build)", shown.trim_end_matches('/')), content: output })
}

/// The fields of a kustomization that name other kustomizations (directories) or files to load,
/// as kustomize reads them (field names match whatever their case).
const REFERENCES: [&str; 13] = [
    "resources",
    "bases",
    "components",
    "generators",
    "transformers",
    "validators",
    "crds",
    "configurations",
    "patchesstrategicmerge",
    "patches",
    "patchesjson6902",
    "replacements",
    "openapi",
];

/// The generators whose entries name files (`files: [key=path]`, `envs`, `env`).
const GENERATORS: [&str; 3] = ["configmapgenerator", "secretgenerator", "helmchartinflationgenerator"];

/// Why a kustomization is refused before the build, with the repository-relative file.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Remote { file: String, reference: String },
    Outside { file: String, reference: String },
    Unreadable { file: String, reason: String },
}

/// The first reference among the kustomizations reachable from `dir` (it and the local
/// directories it names) that kustomize would fetch, or that leaves the repository; a
/// kustomization this cannot read is refused too, rather than passed unchecked.
fn first_refusal(root: &Path, dir: &Path) -> Option<Refusal> {
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        let Some(file) = KUSTOMIZATION_FILES.iter().map(|name| dir.join(name)).find(|f| f.is_file()) else { continue };
        let shown = file.strip_prefix(root).map_or_else(|_| file.display().to_string(), |p| p.display().to_string());
        let kustomization = match read_kustomization(&file) {
            Ok(k) => k,
            Err(reason) => return Some(Refusal::Unreadable { file: shown, reason }),
        };
        for entry in references(&kustomization) {
            let local = dir.join(&entry);
            if is_remote(&entry, &local) {
                return Some(Refusal::Remote { file: shown, reference: entry });
            }
            if !inside(root, &local) {
                return Some(Refusal::Outside { file: shown, reference: entry });
            }
            // a base in the repository: its own references count too
            if local.is_dir() {
                pending.push(normalize(&local));
            }
        }
    }
    None
}

/// Every path or URL a kustomization names: the strings of [`REFERENCES`] (and the `path` of
/// their entries), and the files of its generators.
fn references(kustomization: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(fields) = kustomization.as_object() else { return out };
    for (key, value) in fields {
        let key = key.to_ascii_lowercase();
        if REFERENCES.contains(&key.as_str()) {
            for item in one_or_many(value) {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Object(entry) => out.extend(entry.get("path").and_then(Value::as_str).map(String::from)),
                    _ => {}
                }
            }
        } else if GENERATORS.contains(&key.as_str()) {
            for generator in one_or_many(value) {
                for field in ["files", "envs", "env"] {
                    for file in generator.get(field).map(one_or_many).unwrap_or_default().into_iter().filter_map(Value::as_str) {
                        // `key=path` names the file after the `=`
                        out.push(file.split_once('=').map_or(file, |(_, path)| path).to_string());
                    }
                }
            }
        }
    }
    out
}

fn one_or_many(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// A kustomization's content, read as strictly as the agent reads YAML (one document, no
/// duplicate keys), so that what is checked is what kustomize builds.
fn read_kustomization(file: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    super::yaml::parse_config(&text)
}

/// Whether a reference names something kustomize would fetch: a URL, an scp-like git address,
/// or `host.tld/...` where no such local path exists.
fn is_remote(entry: &str, local: &Path) -> bool {
    let entry = entry.trim();
    if entry.contains("://") || entry.starts_with("git@") || entry.contains("?ref=") || entry.contains(".git//") {
        return true;
    }
    let first = entry.split('/').next().unwrap_or_default();
    first.contains('.') && first != "." && first != ".." && entry.contains('/') && !local.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn remote(file: &str, reference: &str) -> Option<Refusal> {
        Some(Refusal::Remote { file: file.into(), reference: reference.into() })
    }

    #[test]
    fn remote_references_are_found_through_local_bases() {
        let t = tree(&[
            ("overlays/prod/kustomization.yaml", "resources:\n  - ../../base\n  - extra.yaml\n"),
            ("overlays/prod/extra.yaml", "kind: ConfigMap\n"),
            ("base/kustomization.yaml", "resources:\n  - deploy.yaml\n  - https://github.com/org/repo//config?ref=v1\n"),
            ("base/deploy.yaml", "kind: Deployment\n"),
        ]);
        let found = first_refusal(t.path(), &t.path().join("overlays/prod"));
        assert_eq!(found, remote("base/kustomization.yaml", "https://github.com/org/repo//config?ref=v1"));
        let local = tree(&[("a/kustomization.yaml", "resources:\n  - ../b\n"), ("b/kustomization.yml", "resources:\n  - cm.yaml\n")]);
        assert_eq!(first_refusal(local.path(), &local.path().join("a")), None);
    }

    #[test]
    fn every_field_that_loads_a_file_is_checked_whatever_its_case() {
        let url = "https://example.com/x.yaml";
        for kustomization in [
            format!("patches:\n  - path: {url}\n"),
            format!("patchesStrategicMerge:\n  - {url}\n"),
            format!("patchesJson6902:\n  - target: {{kind: A}}\n    path: {url}\n"),
            format!("replacements:\n  - path: {url}\n"),
            format!("crds: [{url}]\n"),
            format!("configurations: [{url}]\n"),
            format!("openapi:\n  path: {url}\n"),
            format!("configMapGenerator:\n  - name: a\n    files: [key={url}]\n"),
            format!("secretGenerator:\n  - name: a\n    envs: [{url}]\n"),
            format!("RESOURCES:\n  - {url}\n"),
            format!("components: [git::{url}]\n"),
        ] {
            let t = tree(&[("kustomization.yaml", &kustomization)]);
            let found = first_refusal(t.path(), t.path());
            assert!(matches!(found, Some(Refusal::Remote { .. })), "{kustomization}: {found:?}");
        }
        // literals are values, not files
        let t = tree(&[("kustomization.yaml", &format!("configMapGenerator:\n  - name: a\n    literals: [URL={url}]\n"))]);
        assert_eq!(first_refusal(t.path(), t.path()), None);
    }

    #[test]
    fn a_kustomization_that_cannot_be_checked_is_refused() {
        for text in ["resources: [a.yaml]\nresources: [https://example.com/x.yaml]\n", "resources: [a.yaml]\n---\nresources: [b.yaml]\n"] {
            let t = tree(&[("kustomization.yaml", text)]);
            let found = first_refusal(t.path(), t.path());
            assert!(matches!(&found, Some(Refusal::Unreadable { file, .. }) if file == "kustomization.yaml"), "{text}: {found:?}");
        }
    }

    #[test]
    fn what_counts_as_remote() {
        let none = Path::new("/nonexistent/x");
        for remote in
            ["https://example.com/x.yaml", "git@github.com:org/repo.git", "github.com/org/repo/base?ref=v1", "example.com/org/repo"]
        {
            assert!(is_remote(remote, none), "{remote}");
        }
        for local in ["../base", "deploy.yaml", "./a/b", "base"] {
            assert!(!is_remote(local, none), "{local}");
        }
        let t = tree(&[("v1.2/kustomization.yaml", "")]);
        assert!(!is_remote("v1.2/x", &t.path().join("v1.2")), "an existing local path with a dot");
    }

    #[test]
    fn a_reference_outside_the_repository_is_refused() {
        let t = tree(&[
            ("a/kustomization.yaml", "resources:\n  - ../../../etc\n"),
            ("b/kustomization.yaml", "patches:\n  - path: ../../x.yaml\n"),
        ]);
        for (dir, reference) in [("a", "../../../etc"), ("b", "../../x.yaml")] {
            let found = first_refusal(t.path(), &t.path().join(dir));
            assert_eq!(found, Some(Refusal::Outside { file: format!("{dir}/kustomization.yaml"), reference: reference.into() }));
        }
        assert!(!inside(t.path(), &t.path().join("a/../../etc")));
    }
}
