//! Render: files of a revision to objects.
//!
//! The source hands over the selected files (see [`crate::source::Selector`]) sorted by path; [`render`] turns
//! them into [`Manifest`]s in file order, then document order:
//!
//! - `.yaml`/`.yml` files may hold many documents, separated by `---` lines as kubectl splits
//!   them; `.json` files hold one document.
//! - Documents holding only comments, whitespace or `null` are skipped.
//! - A `kind: List` (or any `*List` kind with an `items` list) is replaced by its items, which
//!   keep the file and line of the List.
//! - Every object must be a mapping with a string `apiVersion`, `kind` and `metadata.name`;
//!   `metadata.namespace`, labels and annotations, where present, must be strings.
//! - [`Limits`] bound file sizes, the number of documents, nesting depth and the number of nodes
//!   after YAML alias expansion, so that a YAML bomb fails quickly instead of filling memory.
//!
//! Problems are collected over the whole revision (parsing of a file stops at its first syntax
//! error) and returned together in a [`RenderError`]. Rendering never panics on any input.
//! Duplicate objects are not detected here: the planner does that after namespace defaulting.

pub mod helm;
mod json;
pub mod kustomize;
mod tabs;
pub mod tool;
mod value;
pub mod yaml;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::manifest::{Manifest, Origin, SourceFile};
use crate::source::ReadLimits;

use value::{Budget, Doc};

/// Limits on what one revision may contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_bytes: u64,
    /// Largest sum of all selected files, in bytes.
    pub max_total_bytes: u64,
    /// Most documents in the whole revision (each item of a List counts as one).
    pub max_documents: usize,
    /// Deepest nesting of maps and sequences in one document (the document's root map is 1).
    pub max_depth: usize,
    /// Most nodes (scalars, keys, maps and sequences) in one document after alias expansion.
    /// The whole revision may also hold at most `max_nodes` plus one node per byte of its files.
    pub max_nodes: usize,
}

impl Limits {
    /// The limits on reading the tree: file sizes, one by one and in total.
    pub fn read(&self) -> ReadLimits {
        ReadLimits { max_file_bytes: self.max_file_bytes, max_total_bytes: self.max_total_bytes }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let read = ReadLimits::default();
        Self {
            max_file_bytes: read.max_file_bytes,
            max_total_bytes: read.max_total_bytes,
            max_documents: 20_000,
            max_depth: 64,
            max_nodes: 200_000,
        }
    }
}

/// One problem found while rendering: the file, the line where known, the object where known
/// (e.g. `Deployment api` or `kind Deployment (no name)`), and the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the repository root.
    pub file: String,
    /// The 1-based line: where the document starts, or where a syntax error was found.
    pub line: Option<usize>,
    /// The object the problem is about, where known.
    pub object: Option<String>,
    /// What is wrong.
    pub cause: String,
}

impl fmt::Display for Problem {
    /// `file:line: object: cause`, leaving out what is not known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.cause)
    }
}

/// Every problem of a render. Displayed as the problems joined by `"; "`, at most
/// [`RenderError::SHOWN`] of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RenderError {
    pub problems: Vec<Problem>,
}

impl RenderError {
    /// How many problems the `Display` form lists before summing up the rest.
    pub const SHOWN: usize = 20;

    /// One problem of a whole file (a kustomization, a chart), with no line or object.
    pub fn of_file(file: String, cause: String) -> Self {
        RenderError { problems: vec![Problem { file, line: None, object: None, cause }] }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("no problems recorded");
        }
        for (i, problem) in self.problems.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        let rest = self.problems.len().saturating_sub(Self::SHOWN);
        if rest > 0 {
            write!(f, "; and {rest} more problem{}", if rest == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

/// Renders the selected files (in the given order) to objects, in file order then document
/// order. Returns every problem of the revision if there is any.
pub fn render(files: &[SourceFile], limits: &Limits) -> Result<Vec<Manifest>, RenderError> {
    let mut problems = Vec::new();

    // Sizes first: a revision over the total limit is not parsed at all.
    let mut total: u64 = 0;
    for file in files {
        let size = file.content.len() as u64;
        if size > limits.max_file_bytes {
            problems.push(file_problem(
                file,
                None,
                format!("the file has {size} bytes, more than the limit of {} (max_file_bytes)", limits.max_file_bytes),
            ));
        }
        let before = total;
        total = total.saturating_add(size);
        if before <= limits.max_total_bytes && total > limits.max_total_bytes {
            problems.push(file_problem(
                file,
                None,
                format!(
                    "the selected files pass the limit of {} bytes in total (max_total_bytes) at \
                     this file",
                    limits.max_total_bytes
                ),
            ));
        }
    }
    if total > limits.max_total_bytes {
        return Err(RenderError { problems });
    }

    let budget = Budget::new(limits, total);
    let mut manifests = Vec::new();
    for file in files {
        if file.content.len() as u64 > limits.max_file_bytes {
            continue;
        }
        let text = match decode(&file.content) {
            Ok(text) => text,
            Err((line, cause)) => {
                problems.push(file_problem(file, Some(line), cause));
                continue;
            }
        };
        let parsed = if file.path.ends_with(".json") { json::parse_document(text, &budget) } else { yaml::parse_documents(text, &budget) };
        for doc in parsed.docs {
            collect(&file.path, doc, &budget, &mut manifests, &mut problems);
        }
        if let Some(failure) = parsed.failure {
            problems.push(Problem { file: file.path.clone(), line: failure.line, object: failure.object, cause: failure.message });
        }
        if budget.exhausted() {
            break;
        }
    }

    tracing::debug!(files = files.len(), objects = manifests.len(), problems = problems.len(), "rendered");
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(RenderError { problems })
    }
}

fn file_problem(file: &SourceFile, line: Option<usize>, cause: String) -> Problem {
    Problem { file: file.path.clone(), line, object: None, cause }
}

/// Whether `path` stays under `root` once `..` is resolved (without following symlinks: a
/// renderer's checkout holds none).
fn inside(root: &Path, path: &Path) -> bool {
    normalize(path).starts_with(root)
}

/// `path` with `.` and `..` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
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

/// The file's text: UTF-8 without a byte order mark. On error, the line of the first invalid
/// byte and the cause.
fn decode(content: &[u8]) -> Result<&str, (usize, String)> {
    match std::str::from_utf8(content) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        Err(error) => {
            let valid = &content[..error.valid_up_to()];
            let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
            Err((line, "the file is not valid UTF-8 text".to_owned()))
        }
    }
}

/// Checks one document, expands it if it is a List, and adds its objects (or its problems).
fn collect(file: &str, doc: Doc, budget: &Budget, manifests: &mut Vec<Manifest>, problems: &mut Vec<Problem>) {
    let origin = Origin { file: file.to_owned(), line: doc.line, doc: doc.index };
    let problem = |object: Option<String>, cause: String| Problem { file: file.to_owned(), line: Some(doc.line), object, cause };
    match doc.value {
        Value::Null => {}
        Value::Object(mut object) if is_list(&object) => {
            let items = match object.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(_) => {
                    problems.push(problem(Some(describe_map(&object)), "items must be a list".to_owned()));
                    return;
                }
            };
            if let Err(cause) = budget.take_documents(items.len().saturating_sub(1)) {
                problems.push(problem(None, cause));
                return;
            }
            for (i, item) in items.into_iter().enumerate() {
                let (object, causes) = check(&item);
                let object = Some(match object {
                    Some(object) => format!("{object} (items[{i}])"),
                    None => format!("items[{i}]"),
                });
                if causes.is_empty() {
                    manifests.push(Manifest::new(&item, origin.clone()));
                } else {
                    problems.extend(causes.into_iter().map(|cause| problem(object.clone(), cause)));
                }
            }
        }
        value => {
            let (object, causes) = check(&value);
            if causes.is_empty() {
                manifests.push(Manifest::new(&value, origin));
            } else {
                problems.extend(causes.into_iter().map(|cause| problem(object.clone(), cause)));
            }
        }
    }
}

/// Whether a document is a list of objects to expand: `kind: List`, or a `*List` kind with an
/// `items` list (as kubectl treats `ConfigMapList` and the like).
fn is_list(object: &Map<String, Value>) -> bool {
    match object.get("kind").and_then(Value::as_str) {
        Some("List") => true,
        Some(kind) => kind.ends_with("List") && object.get("items").is_some_and(Value::is_array),
        None => false,
    }
}

/// Checks that a value is an object the later stages can use. Returns how to name the object in
/// messages (where known) and every problem found.
fn check(value: &Value) -> (Option<String>, Vec<String>) {
    let Value::Object(object) = value else {
        return (None, vec![format!("expected a mapping with apiVersion, kind and metadata, found {}", type_name(value))]);
    };
    let mut causes = Vec::new();
    for field in ["apiVersion", "kind"] {
        match object.get(field) {
            None | Some(Value::Null) => causes.push(format!("{field} is required")),
            Some(Value::String(s)) if s.is_empty() => causes.push(format!("{field} is required")),
            Some(Value::String(_)) => {}
            Some(other) => causes.push(format!("{field} must be a string, not {}", type_name(other))),
        }
    }
    match object.get("metadata") {
        None | Some(Value::Null) => causes.push("metadata.name is required".to_owned()),
        Some(Value::Object(metadata)) => check_metadata(metadata, &mut causes),
        Some(other) => causes.push(format!("metadata must be a mapping, not {}", type_name(other))),
    }
    (Some(describe_map(object)), causes)
}

fn check_metadata(metadata: &Map<String, Value>, causes: &mut Vec<String>) {
    match metadata.get("name") {
        None | Some(Value::Null) => causes.push("metadata.name is required".to_owned()),
        Some(Value::String(s)) if s.is_empty() => causes.push("metadata.name is required".to_owned()),
        Some(Value::String(_)) => {}
        Some(other) => causes.push(format!("metadata.name must be a string, not {} (quote it)", type_name(other))),
    }
    match metadata.get("namespace") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(other) => causes.push(format!("metadata.namespace must be a string, not {} (quote it)", type_name(other))),
    }
    for field in ["labels", "annotations"] {
        match metadata.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                for (key, value) in entries {
                    if !value.is_string() {
                        causes.push(format!("metadata.{field}.{key} must be a string, not {} (quote it)", type_name(value)));
                    }
                }
            }
            Some(other) => causes.push(format!("metadata.{field} must be a mapping, not {}", type_name(other))),
        }
    }
}

/// How to name an object in messages: `Deployment api`, `kind Deployment (no name)`,
/// `object api (no kind)` or `object with no kind and no name`.
fn describe_map(object: &Map<String, Value>) -> String {
    let kind = object.get("kind").and_then(Value::as_str).filter(|s| !s.is_empty());
    let name = object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (kind, name) {
        (Some(kind), Some(name)) => format!("{kind} {name}"),
        (Some(kind), None) => format!("kind {kind} (no name)"),
        (None, Some(name)) => format!("object {name} (no kind)"),
        (None, None) => "object with no kind and no name".to_owned(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
