//! The object model shared by every stage: a desired object as read from git, where it came
//! from, and how objects are identified.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Where a document came from: the file (relative to the repository root), the 1-based line
/// its document starts on, and the document's index in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub doc: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One file of a revision, as the source read it from git.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    pub content: Vec<u8>,
}

/// A desired object as rendered from a document. `object` always has a string `apiVersion`,
/// `kind` and `metadata.name` (render guarantees it).
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub object: Value,
    pub origin: Origin,
}

impl Manifest {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str().filter(|s| !s.is_empty())
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object["metadata"]["annotations"][key].as_str()
    }
    /// `(group, version)` of the apiVersion: `apps/v1` is `("apps", "v1")`, `v1` is `("", "v1")`.
    pub fn group_version(&self) -> (&str, &str) {
        split_api_version(self.api_version())
    }
}

/// Splits an apiVersion into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// A group and kind, written `Kind.group` (or `Kind` for the core group) as ApplySets do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self { group: group.into(), kind: kind.into() }
    }
    /// Parses `Kind.group` / `Kind`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((k, g)) => Self::new(g, k),
            None => Self::new("", s),
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// The identity of an object in the cluster: group, kind, namespace (empty for cluster-scoped
/// objects) and name. The version is not part of the identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(self.group.clone(), self.kind.clone())
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gk = self.group_kind();
        if self.namespace.is_empty() {
            write!(f, "{gk} {}", self.name)
        } else {
            write!(f, "{gk} {}/{}", self.namespace, self.name)
        }
    }
}

/// How the API server serves one kind: its resource (plural) name and scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}
