//! Which files of the source path are manifests: `.yaml`, `.yml` and `.json` files not excluded
//! by the `.driftlessignore` file at the root of the source path (gitignore syntax).

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The name of the ignore file at the root of the source path.
pub const IGNORE_FILE: &str = ".driftlessignore";

/// Patterns of the ignore file that do not parse, each with its line.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct IgnoreError {
    pub problems: Vec<Problem>,
}

/// One pattern that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {cause}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub cause: String,
}

/// Decides which files of the source path are manifests: `.yaml`, `.yml`, `.json`, not excluded
/// by `.driftlessignore`. Paths are relative to the source path, with `/` separators; nothing is
/// read from the filesystem.
///
/// Patterns follow gitignore: `dir/` excludes a directory and everything under it, `*.json`
/// excludes files at any depth, `/x.yaml` only at the root, and `!keep.yaml` includes again a
/// file excluded by an earlier pattern (but, as in git, not one whose directory is excluded).
#[derive(Clone, Debug)]
pub struct Selector {
    ignore: Gitignore,
}

impl Selector {
    /// A selector from the content of `.driftlessignore`, if the source path has one. A pattern
    /// that does not parse is an error naming the file and line.
    pub fn new(ignore_file: Option<&str>) -> Result<Self, IgnoreError> {
        let Some(content) = ignore_file else {
            return Ok(Self { ignore: Gitignore::empty() });
        };
        let mut builder = GitignoreBuilder::new("");
        let mut problems = Vec::new();
        for (index, line) in content.lines().enumerate() {
            if let Err(error) = builder.add_line(None, line) {
                problems.push(Problem { file: IGNORE_FILE.to_owned(), line: Some(index + 1), cause: format!("invalid pattern: {error}") });
            }
        }
        if !problems.is_empty() {
            return Err(IgnoreError { problems });
        }
        let ignore = builder.build().map_err(|error| IgnoreError {
            problems: vec![Problem { file: IGNORE_FILE.to_owned(), line: None, cause: format!("invalid patterns: {error}") }],
        })?;
        Ok(Self { ignore })
    }

    /// Whether the file at `rel_path` is a manifest: its extension is `.yaml`, `.yml` or
    /// `.json` and neither it nor a directory above it is ignored.
    pub fn wants_file(&self, rel_path: &str) -> bool {
        let path = normalize(rel_path);
        let manifest = [".yaml", ".yml", ".json"].iter().any(|ext| path.ends_with(ext));
        manifest && !self.ignored(path, false)
    }

    /// Whether the directory at `rel_path` should be walked: false when it (or a directory above
    /// it) is ignored. The root (`""`) is always walked.
    pub fn wants_dir(&self, rel_path: &str) -> bool {
        let path = normalize(rel_path).trim_end_matches('/');
        path.is_empty() || !self.ignored(path, true)
    }

    /// Git's rule: a path is ignored when a directory above it is, else when its own last
    /// matching pattern is not a negation.
    fn ignored(&self, path: &str, is_dir: bool) -> bool {
        let mut parent_end = 0;
        while let Some(slash) = path[parent_end..].find('/') {
            let parent = &path[..parent_end + slash];
            if !parent.is_empty() && self.ignore.matched(parent, true).is_ignore() {
                return true;
            }
            parent_end += slash + 1;
        }
        self.ignore.matched(path, is_dir).is_ignore()
    }
}

/// Drops a leading `./` or `/`: paths are always relative to the source path.
fn normalize(rel_path: &str) -> &str {
    let mut path = rel_path;
    loop {
        if let Some(rest) = path.strip_prefix("./") {
            path = rest;
        } else if let Some(rest) = path.strip_prefix('/') {
            path = rest;
        } else {
            return path;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(patterns: &str) -> Selector {
        Selector::new(Some(patterns)).expect("valid patterns")
    }

    #[test]
    fn extensions_without_ignore_file() {
        let s = Selector::new(None).unwrap();
        assert!(s.wants_file("a.yaml"));
        assert!(s.wants_file("dir/b.yml"));
        assert!(s.wants_file("c.json"));
        assert!(!s.wants_file("README.md"));
        assert!(!s.wants_file("yaml"));
        assert!(!s.wants_file(".driftlessignore"));
        assert!(s.wants_dir(""));
        assert!(s.wants_dir("any/dir"));
    }

    #[test]
    fn directory_patterns() {
        let s = selector("# comment\n\nexamples/\n/local/\nodd.yaml/\n");
        assert!(!s.wants_dir("examples"));
        assert!(!s.wants_dir("apps/examples"));
        assert!(!s.wants_dir("examples/"));
        assert!(!s.wants_file("examples/a.yaml"));
        assert!(!s.wants_file("apps/examples/deep/a.yaml"));
        // `dir/` only matches directories.
        assert!(!s.wants_dir("odd.yaml"));
        assert!(s.wants_file("odd.yaml"));
        // Anchored patterns only match at the root.
        assert!(!s.wants_dir("local"));
        assert!(s.wants_dir("apps/local"));
        assert!(s.wants_file("apps/local/a.yaml"));
        assert!(s.wants_dir("apps"));
        assert!(s.wants_file("apps/a.yaml"));
    }

    #[test]
    fn file_patterns_and_negation() {
        let s = selector("*.json\n!keep.json\nsecret-*.yaml\n");
        assert!(!s.wants_file("a.json"));
        assert!(!s.wants_file("deep/nested/b.json"));
        assert!(s.wants_file("keep.json"));
        assert!(s.wants_file("deep/keep.json"));
        assert!(!s.wants_file("apps/secret-db.yaml"));
        assert!(s.wants_file("apps/db.yaml"));
        // File patterns do not exclude directories named like a file.
        assert!(s.wants_dir("config.d"));
    }

    #[test]
    fn negation_cannot_reinclude_under_an_ignored_directory() {
        let s = selector("staging/\n!staging/keep.yaml\n*.yaml\n!keep.yaml\n");
        assert!(!s.wants_file("staging/keep.yaml"));
        assert!(!s.wants_file("other.yaml"));
        assert!(s.wants_file("keep.yaml"));
        assert!(s.wants_file("prod/keep.yaml"));
    }

    #[test]
    fn nested_path_patterns() {
        let s = selector("apps/*/test/\nbase/**/patch-*.yaml\n");
        assert!(!s.wants_dir("apps/web/test"));
        assert!(s.wants_dir("other/web/test"));
        assert!(!s.wants_file("apps/web/test/x.yaml"));
        assert!(!s.wants_file("base/a/b/patch-1.yaml"));
        assert!(!s.wants_file("base/patch-1.yaml"));
        assert!(s.wants_file("base/a/b/deploy.yaml"));
    }

    #[test]
    fn everything_but_yaml() {
        let s = selector("*\n!*/\n!*.yaml\n");
        assert!(s.wants_dir("apps"));
        assert!(s.wants_file("apps/a.yaml"));
        assert!(!s.wants_file("apps/a.json"));
    }

    #[test]
    fn leading_dot_slash_and_slash_are_ignored() {
        let s = selector("skip/\n");
        assert!(!s.wants_file("./skip/a.yaml"));
        assert!(!s.wants_file("/skip/a.yaml"));
        assert!(!s.wants_dir("/skip"));
    }

    #[test]
    fn bad_pattern_names_the_file_and_line() {
        let err = Selector::new(Some("ok/\n\n{a,b\n")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].file, ".driftlessignore");
        assert_eq!(err.problems[0].line, Some(3));
        assert!(err.to_string().starts_with(".driftlessignore:3: invalid pattern"), "{err}");
    }
}
