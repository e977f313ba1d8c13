//! kustomize: `kustomize build` of the source path, in the [`tool`] sandbox, with the root-only
//! load restrictor, no plugins and no exec functions (kustomize's defaults without
//! `--enable-alpha-plugins`, `--enable-exec` or `--enable-helm`). Remote bases and resources
//! (`https://...`, `git@...`, `github.com/...`) are refused before the build, naming the file
//! and the reference, unless the source allows them. What kustomize prints is then read like
//! any other YAML file, under the same limits.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::tool::{self, Sandbox, ToolError};
use super::{Problem, RenderError};
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
    let fail = |file: String, cause: String| RenderError { problems: vec![Problem { file, line: None, object: None, cause }] };
    if !kustomize.allow_remote {
        if let Some((file, reference)) = first_remote(checkout.root(), &dir) {
            return Err(fail(
                file,
                format!(
                    "refers to the remote {reference:?}; remote bases and resources are refused unless the source sets allowRemoteBases"
                ),
            ));
        }
    }
    let args: [&OsStr; 4] = ["build".as_ref(), "--load-restrictor".as_ref(), "LoadRestrictionsRootOnly".as_ref(), ".".as_ref()];
    let root = checkout.root().display().to_string();
    let output = tool::run(&kustomize.program, &args, &dir, kustomize.sandbox, &[(checkout.root(), "")]).map_err(|e| {
        let cause = match e {
            ToolError::Failed { stderr, .. } => format!("kustomize build failed: {stderr}"),
            other => other.to_string(),
        };
        fail(format!("{shown} (kustomize build)"), cause.replace(&root, ""))
    })?;
    Ok(SourceFile { path: format!("{}/kustomization.yaml (kustomize build)", shown.trim_end_matches('/')), content: output })
}

/// The fields of a kustomization that name other kustomizations or files to load.
const REFERENCES: [&str; 6] = ["resources", "bases", "components", "generators", "transformers", "validators"];

/// The first remote reference among the kustomizations reachable from `dir` (it and the local
/// directories it names), with the repository-relative file that makes it.
fn first_remote(root: &Path, dir: &Path) -> Option<(String, String)> {
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        let Some((file, kustomization)) = read_kustomization(&dir) else { continue };
        let shown = file.strip_prefix(root).map_or_else(|_| file.display().to_string(), |p| p.display().to_string());
        for field in REFERENCES {
            for entry in kustomization.get(field).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                let local = dir.join(entry);
                if is_remote(entry, &local) {
                    return Some((shown, entry.to_string()));
                }
                // a base in the repository: its own references count too
                if local.is_dir() && inside(root, &local) {
                    pending.push(normalize(&local));
                }
            }
        }
    }
    None
}

/// The kustomization file of `dir` and its content, if it has one that parses.
fn read_kustomization(dir: &Path) -> Option<(PathBuf, Value)> {
    let file = KUSTOMIZATION_FILES.iter().map(|name| dir.join(name)).find(|f| f.is_file())?;
    let text = std::fs::read_to_string(&file).ok()?;
    // a kustomization that does not parse is kustomize's to report
    let value = super::yaml::parse_config(&text).ok()?;
    Some((file, value))
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

/// Whether `path` stays under `root` once `..` is resolved (without following symlinks: the
/// checkout holds none).
fn inside(root: &Path, path: &Path) -> bool {
    normalize(path).starts_with(root)
}

/// `path` with `.` and `..` resolved lexically.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
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

    #[test]
    fn remote_references_are_found_through_local_bases() {
        let t = tree(&[
            ("overlays/prod/kustomization.yaml", "resources:\n  - ../../base\n  - extra.yaml\n"),
            ("overlays/prod/extra.yaml", "kind: ConfigMap\n"),
            ("base/kustomization.yaml", "resources:\n  - deploy.yaml\n  - https://github.com/org/repo//config?ref=v1\n"),
            ("base/deploy.yaml", "kind: Deployment\n"),
        ]);
        let found = first_remote(t.path(), &t.path().join("overlays/prod"));
        assert_eq!(found, Some(("base/kustomization.yaml".to_string(), "https://github.com/org/repo//config?ref=v1".to_string())));
        let local = tree(&[("a/kustomization.yaml", "resources:\n  - ../b\n"), ("b/kustomization.yml", "resources:\n  - cm.yaml\n")]);
        assert_eq!(first_remote(local.path(), &local.path().join("a")), None);
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
    fn a_base_outside_the_repository_is_not_followed() {
        let t = tree(&[("a/kustomization.yaml", "resources:\n  - ../../../etc\n")]);
        assert_eq!(first_remote(t.path(), &t.path().join("a")), None);
        assert!(!inside(t.path(), &t.path().join("a/../../etc")));
    }
}
