//! Reading a commit's files straight from the object database: no checkout, no working
//! directory.
//!
//! The tree under the source path is walked iteratively (no recursion, so deep trees cannot
//! exhaust the stack). `.driftlessignore` at the source path's root feeds the
//! [`Selector`], which decides which directories are entered and which files are taken. Each
//! blob's size is read from its header before its content is loaded, and checked against
//! [`ReadLimits::max_file_bytes`] and the running total against [`ReadLimits::max_total_bytes`].
//!
//! Symlinks are resolved inside the commit: the target is taken relative to the link's
//! directory, `..` is normalized, and a target that is absolute or leaves the source path is an
//! error. A link to a file inside the path is read as that file's content under the link's own
//! path; chains of links are followed up to [`MAX_SYMLINK_HOPS`]. Links to directories are not
//! followed (a warning is logged; when the link's own name is one the selector would take as a
//! file, it is an error), and a path that goes *through* a symlinked directory is not resolved
//! (it reads as dangling). Submodules (gitlinks) are skipped with a warning.

use std::path::Path;

use git2::{Oid, Repository, Tree};

use super::{Checkout, ReadLimits, RenderMode, Revision, Selector};
use crate::manifest::SourceFile;

use super::{parse_commit, Repo, SourceError};

/// The ignore file read at the source path's root.
pub const IGNORE_FILE: &str = ".driftlessignore";

/// How many symlinks a chain may go through before it is treated as a loop.
pub const MAX_SYMLINK_HOPS: usize = 8;

/// Longest symlink target read, in bytes.
const MAX_SYMLINK_TARGET: usize = 4096;

const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_GROUP_WRITABLE: i32 = 0o100664;
const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_GITLINK: i32 = 0o160000;

fn is_regular_file(mode: i32) -> bool {
    matches!(mode, MODE_BLOB | MODE_BLOB_EXECUTABLE | MODE_BLOB_GROUP_WRITABLE)
}

/// See [`Repo::read`].
pub(crate) fn read(repo: &Repo, commit: &str, limits: &ReadLimits) -> Result<Vec<SourceFile>, SourceError> {
    match read_revision(repo, commit, limits, RenderMode::Plain)? {
        Revision::Files(files) => Ok(files),
        Revision::Kustomization(_) | Revision::Chart(_) => Ok(Vec::new()),
    }
}

/// The names kustomize reads as a kustomization, in the order it looks for them.
pub const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The file that makes a directory a Helm chart.
pub const CHART_FILE: &str = "Chart.yaml";

/// See [`Repo::read_revision`].
pub(crate) fn read_revision(repo: &Repo, commit: &str, limits: &ReadLimits, mode: RenderMode) -> Result<Revision, SourceError> {
    let oid = parse_commit(commit)?;
    let commit = oid.to_string();
    let git = repo.git()?;
    let commit_obj = git.find_commit(oid).map_err(|_| SourceError::CommitNotFound {
        commit: commit.clone(),
        url: repo.display_url(),
        detail: " (it has not been fetched into the cache)".into(),
    })?;
    let root = commit_obj.tree().map_err(|e| object_error("the root tree", &commit, &e))?;

    let base = normalize_source_path(&repo.spec.path)?;
    let base_path = base.join("/");
    let base_tree = if base.is_empty() {
        root.clone()
    } else {
        let entry = root
            .get_path(Path::new(&base_path))
            .map_err(|_| SourceError::PathNotFound { path: base_path.clone(), commit: commit.clone() })?;
        if entry.filemode() != MODE_TREE {
            return Err(SourceError::NotADirectory { path: base_path.clone(), commit: commit.clone() });
        }
        git.find_tree(entry.id()).map_err(|e| object_error(&base_path, &commit, &e))?
    };

    let has = |names: &[&str]| names.iter().any(|name| base_tree.get_name(name).is_some());
    let mode = match mode {
        RenderMode::Auto if has(&KUSTOMIZATION_FILES) => RenderMode::Kustomize,
        RenderMode::Auto if has(&[CHART_FILE]) => RenderMode::Helm,
        other => other,
    };
    if matches!(mode, RenderMode::Kustomize | RenderMode::Helm) {
        // the tool reads the repository as files: every file of the commit, within the limits,
        // with symlinks resolved inside the repository
        let checkout = Checkout::new(base_path.clone())?;
        let mut reader = Reader { git: &git, root: &root, base: &[], commit: &commit, limits, total: 0 };
        reader.write_out(&root, checkout.root())?;
        checkout.seal()?;
        tracing::debug!(url = %repo.display_url(), commit = %commit, bytes = reader.total, ?mode, "wrote the commit out for a renderer");
        return Ok(if mode == RenderMode::Helm { Revision::Chart(checkout) } else { Revision::Kustomization(checkout) });
    }

    let mut reader = Reader { git: &git, root: &root, base: &base, commit: &commit, limits, total: 0 };
    let selector = reader.selector(&base_tree, &base_path)?;
    let mut files = reader.walk(&base_tree, &base_path, &selector)?;
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    tracing::debug!(url = %repo.display_url(), commit = %commit, files = files.len(), bytes = reader.total, "read source tree");
    Ok(Revision::Files(files))
}

/// The source path's components: `""`, `"."`, `"./"`, `"/"` are the root; `"./a/b/"` is
/// `["a", "b"]`; `..` is refused.
fn normalize_source_path(path: &str) -> Result<Vec<String>, SourceError> {
    let mut parts = Vec::new();
    for part in path.trim().split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(SourceError::InvalidPath { path: path.to_string(), reason: "it must not contain \"..\"".into() }),
            p => parts.push(p.to_string()),
        }
    }
    Ok(parts)
}

/// `dir/name`, or `name` at the root.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn object_error(what: &str, commit: &str, err: &git2::Error) -> SourceError {
    SourceError::Object { what: what.to_string(), commit: commit.to_string(), reason: err.message().to_string() }
}

/// What a symlink leads to.
enum LinkTarget {
    /// A regular file's blob.
    File(Oid),
    /// A directory (not followed).
    Directory,
}

struct Reader<'a> {
    git: &'a Repository,
    root: &'a Tree<'a>,
    /// The source path's components.
    base: &'a [String],
    commit: &'a str,
    limits: &'a ReadLimits,
    /// Bytes of the files taken so far.
    total: u64,
}

impl Reader<'_> {
    /// Builds the selector from `.driftlessignore` at the source path's root, if present.
    fn selector(&self, base_tree: &Tree<'_>, base_path: &str) -> Result<Selector, SourceError> {
        let file = join(base_path, IGNORE_FILE);
        let text = match base_tree.get_name(IGNORE_FILE) {
            Some(entry) if is_regular_file(entry.filemode()) => {
                let size = self.blob_size(&file, entry.id())?;
                if size > self.limits.max_file_bytes {
                    return Err(SourceError::FileTooLarge { file, size, limit: self.limits.max_file_bytes });
                }
                let content = self.blob_content(&file, entry.id())?;
                let text = String::from_utf8(content)
                    .map_err(|_| SourceError::Ignore { file: file.clone(), reason: "it is not valid UTF-8".into() })?;
                Some(text)
            }
            Some(_) => {
                tracing::warn!(file = %file, "ignore file is not a regular file; not used");
                None
            }
            None => None,
        };
        Selector::new(text.as_deref()).map_err(|e| SourceError::Ignore { file, reason: e.to_string() })
    }

    /// Walks the tree iteratively and returns the selected files (unsorted).
    fn walk(&mut self, base_tree: &Tree<'_>, base_path: &str, selector: &Selector) -> Result<Vec<SourceFile>, SourceError> {
        let mut files = Vec::new();
        // (tree id, path of the tree relative to the source path)
        let mut pending: Vec<(Oid, String)> = vec![(base_tree.id(), String::new())];
        while let Some((tree_id, rel_dir)) = pending.pop() {
            let tree = self.git.find_tree(tree_id).map_err(|e| object_error(&join(base_path, &rel_dir), self.commit, &e))?;
            for entry in tree.iter() {
                let Ok(name) = entry.name() else {
                    tracing::warn!(dir = %join(base_path, &rel_dir), "skipping an entry whose name is not valid UTF-8");
                    continue;
                };
                let rel = join(&rel_dir, name);
                let path = join(base_path, &rel);
                match entry.filemode() {
                    MODE_TREE => {
                        if selector.wants_dir(&rel) {
                            pending.push((entry.id(), rel));
                        }
                    }
                    mode if is_regular_file(mode) => {
                        if selector.wants_file(&rel) {
                            let content = self.take(&path, entry.id())?;
                            files.push(SourceFile { path, content });
                        }
                    }
                    MODE_LINK => {
                        if selector.wants_file(&rel) {
                            match self.resolve_link(&path, entry.id())? {
                                LinkTarget::File(blob) => {
                                    let content = self.take(&path, blob)?;
                                    files.push(SourceFile { path, content });
                                }
                                LinkTarget::Directory => {
                                    let target = self.link_target(&path, entry.id()).unwrap_or_default();
                                    return Err(SourceError::Symlink {
                                        link: path,
                                        target,
                                        reason: "it points to a directory; symlinks to directories are not followed".into(),
                                    });
                                }
                            }
                        } else if selector.wants_dir(&rel) {
                            if let Ok(LinkTarget::Directory) = self.resolve_link(&path, entry.id()) {
                                tracing::warn!(link = %path, "symlink to a directory is not followed");
                            }
                        }
                    }
                    MODE_GITLINK => {
                        tracing::warn!(path = %path, commit = %entry.id(), "skipping submodule");
                    }
                    mode => {
                        tracing::debug!(path = %path, mode = format!("{mode:o}"), "skipping tree entry of unknown mode");
                    }
                }
            }
        }
        Ok(files)
    }

    /// Writes every file of `tree` (the commit's root) under `dest`, as regular files: a symlink
    /// to a file inside the repository becomes a copy of that file, a symlink to a directory is
    /// skipped, one leaving the repository is an error; submodules are skipped. Within the limits.
    fn write_out(&mut self, tree: &Tree<'_>, dest: &Path) -> Result<(), SourceError> {
        let mut pending: Vec<(Oid, String)> = vec![(tree.id(), String::new())];
        let write = |path: &str, content: &[u8]| {
            let target = dest.join(path);
            let io = |e: std::io::Error| SourceError::Checkout { path: path.to_string(), reason: e.to_string() };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::write(&target, content).map_err(io)
        };
        while let Some((tree_id, dir)) = pending.pop() {
            let tree = self.git.find_tree(tree_id).map_err(|e| object_error(&dir, self.commit, &e))?;
            for entry in tree.iter() {
                let Ok(name) = entry.name() else {
                    tracing::warn!(dir = %dir, "skipping an entry whose name is not valid UTF-8");
                    continue;
                };
                let path = join(&dir, name);
                // git never makes such names; a crafted tree could, to write outside the checkout
                if matches!(name, "" | "." | "..") || name.contains(['/', '\0']) {
                    return Err(SourceError::Checkout {
                        path,
                        reason: format!("the tree holds an entry named {name:?}, which is no file name"),
                    });
                }
                match entry.filemode() {
                    MODE_TREE => pending.push((entry.id(), path)),
                    mode if is_regular_file(mode) => {
                        let content = self.take(&path, entry.id())?;
                        write(&path, &content)?;
                    }
                    MODE_LINK => match self.resolve_link(&path, entry.id())? {
                        LinkTarget::File(blob) => {
                            let content = self.take(&path, blob)?;
                            write(&path, &content)?;
                        }
                        LinkTarget::Directory => tracing::warn!(link = %path, "symlink to a directory is not followed"),
                    },
                    MODE_GITLINK => tracing::warn!(path = %path, commit = %entry.id(), "skipping submodule"),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The size of a blob, from its header (without loading it).
    fn blob_size(&self, path: &str, oid: Oid) -> Result<u64, SourceError> {
        let odb = self.git.odb().map_err(|e| object_error(path, self.commit, &e))?;
        let (size, _kind) = odb.read_header(oid).map_err(|e| object_error(path, self.commit, &e))?;
        Ok(size as u64)
    }

    fn blob_content(&self, path: &str, oid: Oid) -> Result<Vec<u8>, SourceError> {
        let blob = self.git.find_blob(oid).map_err(|e| object_error(path, self.commit, &e))?;
        Ok(blob.content().to_vec())
    }

    /// Checks the limits, then loads the blob as the file at `path`.
    fn take(&mut self, path: &str, oid: Oid) -> Result<Vec<u8>, SourceError> {
        let size = self.blob_size(path, oid)?;
        if size > self.limits.max_file_bytes {
            return Err(SourceError::FileTooLarge { file: path.to_string(), size, limit: self.limits.max_file_bytes });
        }
        let total = self.total.saturating_add(size);
        if total > self.limits.max_total_bytes {
            return Err(SourceError::TotalTooLarge { file: path.to_string(), total, limit: self.limits.max_total_bytes });
        }
        let content = self.blob_content(path, oid)?;
        self.total = total;
        Ok(content)
    }

    /// The target text of the symlink blob.
    fn link_target(&self, link: &str, oid: Oid) -> Result<String, SourceError> {
        let size = self.blob_size(link, oid)?;
        let broken = |reason: &str| SourceError::Symlink { link: link.to_string(), target: String::new(), reason: reason.into() };
        if size > MAX_SYMLINK_TARGET as u64 {
            return Err(broken("its target is too long"));
        }
        String::from_utf8(self.blob_content(link, oid)?).map_err(|_| broken("its target is not valid UTF-8"))
    }

    /// Follows the symlink at `link` (repository-relative) whose blob is `oid`.
    fn resolve_link(&self, link: &str, oid: Oid) -> Result<LinkTarget, SourceError> {
        let mut current = link.to_string();
        let mut current_oid = oid;
        for _ in 0..MAX_SYMLINK_HOPS {
            let target = self.link_target(&current, current_oid)?;
            let escape = || SourceError::SymlinkEscape { link: link.to_string(), target: target.clone() };
            let broken = |reason: &str| SourceError::Symlink { link: link.to_string(), target: target.clone(), reason: reason.into() };
            if target.starts_with('/') {
                return Err(escape());
            }
            let resolved = resolve_relative(&current, &target).ok_or_else(escape)?;
            if resolved.len() < self.base.len() || resolved[..self.base.len()] != *self.base {
                return Err(escape());
            }
            if resolved.len() == self.base.len() {
                return Ok(LinkTarget::Directory);
            }
            let resolved_path = resolved.join("/");
            let entry = self.root.get_path(Path::new(&resolved_path)).map_err(|_| broken("its target does not exist in the commit"))?;
            match entry.filemode() {
                mode if is_regular_file(mode) => return Ok(LinkTarget::File(entry.id())),
                MODE_TREE => return Ok(LinkTarget::Directory),
                MODE_LINK => {
                    current = resolved_path;
                    current_oid = entry.id();
                }
                MODE_GITLINK => return Err(broken("its target is a submodule")),
                _ => return Err(broken("its target is not a regular file")),
            }
        }
        let target = self.link_target(link, oid).unwrap_or_default();
        Err(SourceError::Symlink {
            link: link.to_string(),
            target,
            reason: format!("more than {MAX_SYMLINK_HOPS} levels of symlinks (a loop?)"),
        })
    }
}

/// The repository-relative components of `target` taken relative to the directory of `link`,
/// with `.` and `..` normalized; `None` when it climbs above the repository root.
fn resolve_relative(link: &str, target: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = link.split('/').map(str::to_string).collect();
    parts.pop(); // the link's own name
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p.to_string()),
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testutil::*;
    use crate::source::Revision;

    fn limits() -> ReadLimits {
        ReadLimits::default()
    }

    fn paths(files: &[SourceFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    /// A commit whose root tree holds `kustomization.yaml` and an entry named `name` (a file),
    /// written as raw objects: git's own tree builder refuses such names.
    fn crafted(dir: &Path, name: &str) -> (Repo, String) {
        let origin = dir.join("origin");
        let git = Repository::init(&origin).unwrap();
        let blob = git.blob(b"kind: ConfigMap\n").unwrap();
        let mut raw = Vec::new();
        for entry in [name, "kustomization.yaml"] {
            raw.extend_from_slice(format!("100644 {entry}\0").as_bytes());
            raw.extend_from_slice(blob.as_bytes());
        }
        let tree = git.odb().unwrap().write(git2::ObjectType::Tree, &raw).unwrap();
        let tree = git.find_tree(tree).unwrap();
        let sig = git2::Signature::now("Test", "test@example.com").unwrap();
        git.commit(Some("refs/heads/main"), &sig, &sig, "crafted", &tree, &[]).unwrap();
        git.set_head("refs/heads/main").unwrap();
        let repo = Repo::open(spec_for(origin.to_str().unwrap()), &dir.join("cache")).unwrap();
        let commit = repo.remote_commit().unwrap();
        repo.fetch(&commit).unwrap();
        (repo, commit)
    }

    #[test]
    fn a_tree_entry_that_is_no_file_name_is_refused_before_anything_is_written() {
        for name in ["..", "../../escaped.yaml", "."] {
            let tmp = tempfile::tempdir().unwrap();
            let (repo, commit) = crafted(&tmp.path().join("repo"), name);
            let err = repo.read_revision(&commit, &limits(), RenderMode::Auto).unwrap_err();
            assert!(matches!(&err, SourceError::Checkout { reason, .. } if reason.contains("which is no file name")), "{name}: {err}");
            assert!(!tmp.path().join("escaped.yaml").exists() && !std::env::temp_dir().join("escaped.yaml").exists(), "{name}");
        }
    }

    #[test]
    fn a_kustomization_is_written_out_whole_read_only_and_removed_after() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(
            tmp.path(),
            "overlays/prod",
            &[
                ("overlays/prod/kustomization.yaml", File(b"resources:\n  - ../../base\n")),
                ("overlays/prod/app.env", File(b"MODE=prod\n")),
                ("overlays/prod/linked.env", Link("app.env")),
                ("base/kustomization.yaml", File(b"resources:\n  - cm.yaml\n")),
                ("base/cm.yaml", File(b"kind: ConfigMap\n")),
                ("README.md", File(b"docs\n")),
            ],
        );
        let Revision::Kustomization(checkout) = repo.read_revision(&commit, &limits(), RenderMode::Auto).unwrap() else {
            panic!("a kustomization at the source path is built with kustomize");
        };
        assert_eq!(checkout.path, "overlays/prod");
        let root = checkout.root().to_path_buf();
        assert_eq!(std::fs::read(root.join("base/cm.yaml")).unwrap(), b"kind: ConfigMap\n", "bases outside the path too");
        assert_eq!(std::fs::read(root.join("overlays/prod/linked.env")).unwrap(), b"MODE=prod\n", "a symlink is a copy");
        assert_eq!(std::fs::read(root.join("README.md")).unwrap(), b"docs\n", "files of every kind");
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("base/cm.yaml"), mode("base"), mode("")), (0o444, 0o555, 0o555), "read-only");
        assert_eq!(checkout.source_dir(), root.join("overlays/prod"));
        drop(checkout);
        assert!(!root.exists(), "removed when dropped");

        // plain, when told so or when there is no kustomization; kustomize when told so
        assert!(matches!(repo.read_revision(&commit, &limits(), RenderMode::Plain).unwrap(), Revision::Files(_)));
        let base = reopen_with_path(&repo, "base");
        assert!(matches!(base.read_revision(&commit, &limits(), RenderMode::Auto).unwrap(), Revision::Kustomization(_)));
        let docs = reopen_with_path(&repo, "");
        assert!(matches!(docs.read_revision(&commit, &limits(), RenderMode::Auto).unwrap(), Revision::Files(_)));
        assert!(matches!(docs.read_revision(&commit, &limits(), RenderMode::Kustomize).unwrap(), Revision::Kustomization(_)));
        // a chart when there is a Chart.yaml and no kustomization, or when told so
        let (chart_repo, chart_commit) = fetched(
            &tmp.path().join("chart"),
            "charts/db",
            &[("charts/db/Chart.yaml", File(b"apiVersion: v2\nname: db\nversion: 0.1.0\n")), ("charts/db/values.yaml", File(b"a: 1\n"))],
        );
        let Revision::Chart(chart) = chart_repo.read_revision(&chart_commit, &limits(), RenderMode::Auto).unwrap() else {
            panic!("a Chart.yaml at the source path is rendered with helm");
        };
        assert_eq!(std::fs::read(chart.source_dir().join("values.yaml")).unwrap(), b"a: 1\n");
        assert!(matches!(docs.read_revision(&commit, &limits(), RenderMode::Helm).unwrap(), Revision::Chart(_)));
        // within the limits, over the whole tree
        let small = ReadLimits { max_total_bytes: 20, ..limits() };
        assert!(matches!(repo.read_revision(&commit, &small, RenderMode::Auto), Err(SourceError::TotalTooLarge { .. })));
    }

    #[test]
    fn a_kustomization_symlink_leaving_the_repository_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) =
            fetched(tmp.path(), "app", &[("app/kustomization.yaml", File(b"resources: []\n")), ("app/token", Link("../../../etc/passwd"))]);
        let err = repo.read_revision(&commit, &limits(), RenderMode::Auto).unwrap_err();
        assert!(matches!(err, SourceError::SymlinkEscape { .. }), "{err}");
    }

    #[test]
    fn normalizes_source_paths() {
        assert!(normalize_source_path("").unwrap().is_empty());
        assert!(normalize_source_path(".").unwrap().is_empty());
        assert!(normalize_source_path("./").unwrap().is_empty());
        assert_eq!(normalize_source_path("./apps/prod/").unwrap(), vec!["apps", "prod"]);
        assert_eq!(normalize_source_path("apps//prod").unwrap(), vec!["apps", "prod"]);
        assert!(matches!(normalize_source_path("apps/../etc"), Err(SourceError::InvalidPath { .. })));
        assert!(matches!(normalize_source_path("../etc"), Err(SourceError::InvalidPath { .. })));
        // an absolute path names a directory of the repository's own tree, never the filesystem
        assert_eq!(normalize_source_path("/etc/").unwrap(), vec!["etc"]);
    }

    #[test]
    fn resolves_relative_targets() {
        assert_eq!(resolve_relative("a/b/link", "../c/x.yaml").unwrap(), vec!["a", "c", "x.yaml"]);
        assert_eq!(resolve_relative("a/link", "./x.yaml").unwrap(), vec!["a", "x.yaml"]);
        assert_eq!(resolve_relative("link", "x.yaml").unwrap(), vec!["x.yaml"]);
        assert!(resolve_relative("link", "../x.yaml").is_none());
        assert!(resolve_relative("a/link", "../../x.yaml").is_none());
    }

    #[test]
    fn reads_sorted_and_filtered_files_from_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(
            tmp.path(),
            "",
            &[
                ("z.yaml", File(b"z: 1\n")),
                ("a.yml", File(b"a: 1\n")),
                ("README.md", File(b"# readme\n")),
                ("b/c.json", File(b"{}")),
                ("b/notes.txt", File(b"text")),
                ("B.yaml", File(b"upper: 1\n")),
                ("b-c.yaml", File(b"dash: 1\n")),
            ],
        );
        let files = repo.read(&commit, &limits()).unwrap();
        // Byte order: uppercase before lowercase, '-' (0x2d) before '/' (0x2f).
        assert_eq!(paths(&files), vec!["B.yaml", "a.yml", "b-c.yaml", "b/c.json", "z.yaml"]);
        assert_eq!(files[4].content, b"z: 1\n");
        assert_eq!(files[3].content, b"{}");
    }

    #[test]
    fn reads_a_subdirectory_with_paths_relative_to_the_repo_root() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = [
            ("apps/prod/deploy.yaml", File(b"kind: Deployment\n")),
            ("apps/prod/nested/svc.yaml", File(b"kind: Service\n")),
            ("apps/staging/deploy.yaml", File(b"kind: Deployment\n")),
            ("root.yaml", File(b"kind: ConfigMap\n")),
        ];
        for path in ["apps/prod", "./apps/prod/", "/apps/prod"] {
            let (repo, commit) = fetched(tmp.path().join(path.replace('/', "_")).as_path(), path, &tree);
            let files = repo.read(&commit, &limits()).unwrap();
            assert_eq!(paths(&files), vec!["apps/prod/deploy.yaml", "apps/prod/nested/svc.yaml"], "path {path:?}");
        }
    }

    #[test]
    fn missing_path_and_file_path_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(tmp.path(), "nope", &[("a/x.yaml", File(b"x: 1\n"))]);
        let err = repo.read(&commit, &limits()).unwrap_err();
        assert!(matches!(err, SourceError::PathNotFound { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"nope\"") && msg.contains(&commit), "{msg}");

        let repo = reopen_with_path(&repo, "a/x.yaml");
        let err = repo.read(&commit, &limits()).unwrap_err();
        assert!(matches!(err, SourceError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains("a/x.yaml"), "{err}");
    }

    #[test]
    fn unknown_commit_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, _commit) = fetched(tmp.path(), "", &[("a.yaml", File(b"a: 1\n"))]);
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let err = repo.read(missing, &limits()).unwrap_err();
        assert!(matches!(err, SourceError::CommitNotFound { .. }), "{err}");
        assert!(err.to_string().contains(missing), "{err}");
        assert!(matches!(repo.read("HEAD", &limits()), Err(SourceError::InvalidCommit(_))));
    }

    #[test]
    fn file_size_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(tmp.path(), "", &[("small.yaml", File(b"a: 1\n")), ("big.yaml", File(&[b'x'; 100]))]);
        let lim = ReadLimits { max_file_bytes: 99, ..ReadLimits::default() };
        let err = repo.read(&commit, &lim).unwrap_err();
        match &err {
            SourceError::FileTooLarge { file, size, limit } => {
                assert_eq!((file.as_str(), *size, *limit), ("big.yaml", 100, 99));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("big.yaml") && err.to_string().contains("99"), "{err}");
        let lim = ReadLimits { max_file_bytes: 100, ..ReadLimits::default() };
        assert_eq!(repo.read(&commit, &lim).unwrap().len(), 2);
    }

    #[test]
    fn total_size_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) =
            fetched(tmp.path(), "", &[("a.yaml", File(&[b'a'; 40])), ("b.yaml", File(&[b'b'; 40])), ("c.yaml", File(&[b'c'; 40]))]);
        let lim = ReadLimits { max_total_bytes: 100, ..ReadLimits::default() };
        let err = repo.read(&commit, &lim).unwrap_err();
        assert!(matches!(err, SourceError::TotalTooLarge { total: 120, limit: 100, .. }), "{err}");
        assert!(err.to_string().contains("100 bytes"), "{err}");
        let lim = ReadLimits { max_total_bytes: 120, ..ReadLimits::default() };
        assert_eq!(repo.read(&commit, &lim).unwrap().len(), 3);
    }

    #[test]
    fn symlink_inside_the_path_is_read_under_the_link_path() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(
            tmp.path(),
            "app",
            &[
                ("app/base/cm.yaml", File(b"kind: ConfigMap\n")),
                ("app/prod/cm.yaml", Link("../base/cm.yaml")),
                ("app/prod/chain.yaml", Link("cm.yaml")),
                ("app/prod/dir-link", Link("../base")),
                ("app/prod/readme.md", Link("../../outside.md")),
                ("outside.md", File(b"ignored: not selected\n")),
            ],
        );
        let files = repo.read(&commit, &limits()).unwrap();
        assert_eq!(paths(&files), vec!["app/base/cm.yaml", "app/prod/chain.yaml", "app/prod/cm.yaml"]);
        assert!(files.iter().all(|f| f.content == b"kind: ConfigMap\n"));
    }

    #[test]
    fn symlink_escaping_the_path_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, target) in ["../outside.yaml", "/etc/passwd.yaml", "../../../x.yaml", "./../app2/x.yaml"].iter().enumerate() {
            let (repo, commit) = fetched(
                &tmp.path().join(i.to_string()),
                "app",
                &[("app/link.yaml", Link(target)), ("outside.yaml", File(b"secret: 1\n")), ("app2/x.yaml", File(b"x: 1\n"))],
            );
            let err = repo.read(&commit, &limits()).unwrap_err();
            assert!(matches!(err, SourceError::SymlinkEscape { .. }), "{target}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("app/link.yaml") && msg.contains(target), "{msg}");
        }
    }

    #[test]
    fn broken_symlinks_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, &'a [(&'a str, Node<'a>)], &'a str);
        let cases: [Case<'_>; 3] = [
            ("dangling", &[("app/a.yaml", Link("missing.yaml"))], "does not exist"),
            ("loop", &[("app/a.yaml", Link("b.yaml")), ("app/b.yaml", Link("a.yaml"))], "levels of symlinks"),
            ("dir", &[("app/a.yaml", Link("sub")), ("app/sub/x.yaml", File(b"x: 1\n"))], "directories are not followed"),
        ];
        for (name, tree, want) in cases {
            let (repo, commit) = fetched(&tmp.path().join(name), "app", tree);
            let err = repo.read(&commit, &limits()).unwrap_err();
            assert!(matches!(err, SourceError::Symlink { .. }), "{name}: {err}");
            assert!(err.to_string().contains(want) && err.to_string().contains("app/a.yaml"), "{name}: {err}");
        }
    }

    #[test]
    fn submodules_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(
            tmp.path(),
            "",
            &[
                ("a.yaml", File(b"a: 1\n")),
                ("vendor.yaml", Gitlink("0123456789abcdef0123456789abcdef01234567")),
                ("sub/mod", Gitlink("89abcdef0123456789abcdef0123456789abcdef")),
                ("sub/b.yaml", File(b"b: 1\n")),
            ],
        );
        let files = repo.read(&commit, &limits()).unwrap();
        assert_eq!(paths(&files), vec!["a.yaml", "sub/b.yaml"]);
    }

    #[test]
    fn ignore_file_is_read_from_the_source_path() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(
            tmp.path(),
            "app",
            &[
                ("app/.driftlessignore", File(b"skipped/\nlocal-*.yaml\n")),
                ("app/keep.yaml", File(b"k: 1\n")),
                ("app/local-dev.yaml", File(b"l: 1\n")),
                ("app/skipped/x.yaml", File(b"x: 1\n")),
                ("app/other/y.yaml", File(b"y: 1\n")),
            ],
        );
        let files = repo.read(&commit, &limits()).unwrap();
        // `skipped/` is not entered, `local-*.yaml` is not taken, and `.driftlessignore`
        // itself is never a manifest.
        assert_eq!(paths(&files), vec!["app/keep.yaml", "app/other/y.yaml"]);
    }

    #[test]
    fn ignore_file_outside_the_source_path_has_no_effect() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(tmp.path(), "app", &[(".driftlessignore", File(b"*.yaml\n")), ("app/keep.yaml", File(b"k: 1\n"))]);
        assert_eq!(paths(&repo.read(&commit, &limits()).unwrap()), vec!["app/keep.yaml"]);
    }

    #[test]
    fn oversized_ignore_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, commit) = fetched(tmp.path(), "", &[(".driftlessignore", File(&[b'#'; 64])), ("a.yaml", File(b"a: 1\n"))]);
        let err = repo.read(&commit, &ReadLimits { max_file_bytes: 10, ..ReadLimits::default() }).unwrap_err();
        assert!(err.to_string().contains(".driftlessignore"), "{err}");
    }
}
