//! The object model shared by every stage: a desired object as read from git, where it came
//! from, and how objects are identified.

use std::fmt;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// A desired object as rendered from a document: always a mapping with a string `apiVersion`,
/// `kind` and `metadata.name` (render guarantees it). The object is kept as compact JSON text,
/// with its identity and annotations read out: a revision's objects are all held between render
/// and plan, and a parsed object takes several times the memory of its text.
#[derive(Clone, Debug)]
pub struct Manifest {
    object: Box<RawValue>,
    pub origin: Origin,
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
    annotations: BTreeMap<String, String>,
}

impl Manifest {
    pub fn new(object: &Value, origin: Origin) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let meta = &object["metadata"];
        let annotations = meta["annotations"]
            .as_object()
            .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        Manifest {
            // a serde_json::Value always serializes
            object: serde_json::value::to_raw_value(object).unwrap_or_else(|_| RawValue::NULL.to_owned()),
            origin,
            api_version: text(&object["apiVersion"]),
            kind: text(&object["kind"]),
            name: text(&meta["name"]),
            namespace: meta["namespace"].as_str().filter(|s| !s.is_empty()).map(String::from),
            annotations,
        }
    }
    /// The object, parsed.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.object.get()).unwrap_or(Value::Null)
    }
    pub fn api_version(&self) -> &str {
        &self.api_version
    }
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
    /// `(group, version)` of the apiVersion: `apps/v1` is `("apps", "v1")`, `v1` is `("", "v1")`.
    pub fn group_version(&self) -> (&str, &str) {
        split_api_version(self.api_version())
    }
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.object.get() == other.object.get() && self.origin == other.origin
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
///
/// Every stage keys its maps by identity, so one object's identity is held many times over;
/// it is shared, and a clone is a reference count, not four strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef(Arc<Identity>);

/// The parts of an [`ObjectRef`], read through it (`id.kind`).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(group: impl Into<String>, kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef(Arc::new(Identity { group: group.into(), kind: kind.into(), namespace: namespace.into(), name: name.into() }))
    }
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(self.group.clone(), self.kind.clone())
    }
}

impl Deref for ObjectRef {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Identity::deserialize(d).map(|i| ObjectRef(Arc::new(i)))
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
    /// A kind of the core group (`v1`).
    fn core(kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceType { group: String::new(), version: "v1".into(), kind: kind.into(), plural: plural.into(), namespaced }
    }

    /// ConfigMaps, the kind of every ApplySet parent.
    pub fn config_maps() -> Self {
        Self::core("ConfigMap", "configmaps", true)
    }

    pub fn namespaces() -> Self {
        Self::core("Namespace", "namespaces", false)
    }

    pub fn custom_resource_definitions() -> Self {
        ResourceType {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
            namespaced: false,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}
