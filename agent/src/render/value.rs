//! Building `serde_json::Value`s from any serde data format under the render [`Limits`].
//!
//! Parsers (YAML in [`super::yaml`], JSON in [`super::json`]) feed their documents through
//! [`ValueSeed`], a [`DeserializeSeed`] that counts every node it builds and the nesting depth,
//! and fails as soon as a limit is passed. serde-saphyr replays an alias's events while it feeds
//! the visitor (and copies merged entries in the same way), so counting here bounds alias
//! expansion: a YAML bomb fails after at most `max_nodes` nodes instead of being expanded into
//! memory.
//!
//! The seed also rejects what JSON cannot represent (`.nan`/`.inf`, binary values, non-scalar
//! mapping keys) and duplicate keys. For YAML, serde-saphyr itself applies merge keys (`<<`),
//! rejects tags and reports duplicates first (see [`super::yaml`]); it hands integers wider than
//! 64 bits over as floats, which the seed notes for [`super::yaml`] to check against the text.

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::Limits;

/// One parsed document: its value, the 1-based line its content starts on in the file, and its
/// 0-based index among the file's documents.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Doc {
    pub value: Value,
    pub line: usize,
    pub index: usize,
}

/// Why a file could not be parsed completely: the 1-based line in the file where known, the
/// object of the document where its text names one, and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub line: Option<usize>,
    pub object: Option<String>,
    pub message: String,
}

/// What a parser got out of one file: every document before the first error, and that error.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub docs: Vec<Doc>,
    pub failure: Option<Failure>,
}

/// Counters for one revision: documents and nodes seen so far, checked against the limits.
///
/// Besides the per-document `max_nodes`, the whole revision may hold at most one node per byte
/// of its files plus `max_nodes`. Text without aliases never gets near this (every node costs
/// at least a byte), but it stops many small YAML bombs from adding up to an enormous revision.
pub(crate) struct Budget {
    max_depth: usize,
    max_nodes: usize,
    max_documents: usize,
    revision_nodes: usize,
    documents: Cell<usize>,
    doc_nodes: Cell<usize>,
    revision_nodes_used: Cell<usize>,
    /// The message of the limit that was passed, so that callers can report it cleanly.
    exceeded: RefCell<Option<String>>,
    /// Set once a revision-wide limit is passed: nothing more should be parsed.
    exhausted: Cell<bool>,
    /// Set when a YAML document gave a float that may have been written as an integer wider
    /// than 64 bits (see [`Budget::take_wide_number`]).
    wide_number: Cell<bool>,
}

impl Budget {
    /// A budget for a revision whose selected files hold `total_bytes` bytes.
    pub fn new(limits: &Limits, total_bytes: u64) -> Self {
        let total = usize::try_from(total_bytes).unwrap_or(usize::MAX);
        Self {
            max_depth: limits.max_depth,
            max_nodes: limits.max_nodes,
            max_documents: limits.max_documents,
            revision_nodes: limits.max_nodes.saturating_add(total),
            documents: Cell::new(0),
            doc_nodes: Cell::new(0),
            revision_nodes_used: Cell::new(0),
            exceeded: RefCell::new(None),
            exhausted: Cell::new(false),
            wide_number: Cell::new(false),
        }
    }

    /// The deepest nesting allowed (limit `max_depth`).
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// The most nodes allowed in one document (limit `max_nodes`).
    pub fn max_nodes(&self) -> usize {
        self.max_nodes
    }

    /// The revision's node count so far, to go back to with [`Budget::rewind`].
    pub fn nodes_used(&self) -> usize {
        self.revision_nodes_used.get()
    }

    /// Forgets the nodes counted since `nodes_used` was `used`: the document is parsed again.
    pub fn rewind(&self, used: usize) {
        self.revision_nodes_used.set(used);
        self.doc_nodes.set(0);
        self.wide_number.set(false);
    }

    /// Whether a limit was passed (and not yet taken by [`Budget::take_exceeded`]).
    pub fn has_exceeded(&self) -> bool {
        self.exceeded.borrow().is_some()
    }

    /// Counts the start of a new document and resets the per-document node count.
    pub fn start_document(&self) -> Result<(), String> {
        self.doc_nodes.set(0);
        self.take_documents(1)
    }

    /// Counts `n` more documents (items of a `List`) towards `max_documents`.
    pub fn take_documents(&self, n: usize) -> Result<(), String> {
        let documents = self.documents.get().saturating_add(n);
        self.documents.set(documents);
        if documents > self.max_documents {
            self.exhausted.set(true);
            return Err(format!("more than {} documents in the revision (limit max_documents)", self.max_documents));
        }
        Ok(())
    }

    /// Whether a revision-wide limit was passed.
    pub fn exhausted(&self) -> bool {
        self.exhausted.get()
    }

    /// The message of the limit passed during the last parse, if one was.
    pub fn take_exceeded(&self) -> Option<String> {
        self.exceeded.borrow_mut().take()
    }

    /// Whether a YAML document parsed since the last call held a float with an integral value
    /// beyond the 64-bit integers: serde-saphyr turns an integer literal too wide for 64 bits
    /// into such a float, so the caller checks the text for one.
    pub fn take_wide_number(&self) -> bool {
        self.wide_number.replace(false)
    }

    /// Counts one node.
    fn node<E: de::Error>(&self) -> Result<(), E> {
        let doc_nodes = self.doc_nodes.get() + 1;
        self.doc_nodes.set(doc_nodes);
        if doc_nodes > self.max_nodes {
            return Err(
                self.fail(format!("the document has more than {} nodes after expanding YAML aliases (limit max_nodes)", self.max_nodes))
            );
        }
        let used = self.revision_nodes_used.get() + 1;
        self.revision_nodes_used.set(used);
        if used > self.revision_nodes {
            self.exhausted.set(true);
            return Err(self.fail(format!(
                "the revision has more than {} nodes after expanding YAML aliases (limit: \
                 max_nodes plus one node per byte of the selected files)",
                self.revision_nodes
            )));
        }
        Ok(())
    }

    /// Checks the nesting depth of a map or sequence.
    fn enter<E: de::Error>(&self, depth: usize) -> Result<(), E> {
        if depth > self.max_depth {
            return Err(self.fail(format!("maps and lists are nested deeper than {} levels (limit max_depth)", self.max_depth)));
        }
        Ok(())
    }

    fn fail<E: de::Error>(&self, message: String) -> E {
        let error = E::custom(&message);
        *self.exceeded.borrow_mut() = Some(message);
        error
    }
}

/// Deserializes one value (and everything under it) into a [`Value`], counting against a
/// [`Budget`].
#[derive(Clone, Copy)]
pub(crate) struct ValueSeed<'b> {
    budget: &'b Budget,
    /// Nesting depth of the value: the document's root is at depth 0.
    depth: usize,
    /// Whether the document is YAML, whose wide integers arrive as floats (see
    /// [`Budget::take_wide_number`]). JSON documents keep such numbers as floats, as before.
    yaml: bool,
}

impl<'b> ValueSeed<'b> {
    /// A seed for the root of a YAML document (merge keys are applied by the parser).
    pub fn yaml(budget: &'b Budget) -> Self {
        Self { budget, depth: 0, yaml: true }
    }

    /// A seed for the root of a JSON document (`<<` is an ordinary key).
    pub fn json(budget: &'b Budget) -> Self {
        Self { budget, depth: 0, yaml: false }
    }

    fn child(self) -> Self {
        Self { depth: self.depth + 1, ..self }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value that JSON can represent")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(format!("the number {v} does not fit in 64 bits (quote it if it is meant as a string)"))),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("the number {v} does not fit in 64 bits (quote it if it is meant as a string)"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.node()?;
        // 2^64 and -2^63: integer literals past them reach us as floats from serde-saphyr.
        if self.yaml && v.fract() == 0.0 && (v >= 18_446_744_073_709_551_616.0 || v <= -9_223_372_036_854_775_808.0) {
            self.budget.wide_number.set(true);
        }
        match Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(E::custom(format!("the number {v} cannot be represented in JSON (quote it if it is meant as a string)"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported (use a base64 string)"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.node()?;
        let child = self.child();
        self.budget.enter(child.depth)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.node()?;
        let child = self.child();
        self.budget.enter(child.depth)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed { budget: self.budget })? {
            let value = map.next_value_seed(child)?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Deserializes a mapping key. Scalar keys become strings as written (`1: x` has the key `"1"`,
/// `true: x` the key `"true"`, `0x1F: x` the key `"0x1F"`); mappings and sequences as keys are
/// an error, and so (from serde-saphyr) is a null YAML key (`~: x`).
struct KeySeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or other scalar as mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.budget.node()?;
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        self.budget.node()?;
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        self.visit_string("null".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_depth: usize, max_nodes: usize) -> Limits {
        Limits { max_depth, max_nodes, ..Limits::default() }
    }

    fn parse_json(text: &str, budget: &Budget) -> Result<Value, serde_json::Error> {
        budget.start_document().expect("document budget");
        let mut de = serde_json::Deserializer::from_str(text);
        ValueSeed::json(budget).deserialize(&mut de)
    }

    #[test]
    fn builds_values_and_counts_nodes() {
        let budget = Budget::new(&limits(8, 100), 0);
        let value = parse_json(r#"{"a": [1, -2, 2.5, true, null, "s"]}"#, &budget).unwrap();
        assert_eq!(value, serde_json::json!({"a": [1, -2, 2.5, true, null, "s"]}));
        // map + key + seq + 6 items
        assert_eq!(budget.doc_nodes.get(), 9);
    }

    #[test]
    fn node_limit_is_exact() {
        let budget = Budget::new(&limits(8, 9), 0);
        assert!(parse_json(r#"{"a": [1, 2, 3, 4, 5, 6]}"#, &budget).is_ok());
        let budget = Budget::new(&limits(8, 8), 0);
        assert!(parse_json(r#"{"a": [1, 2, 3, 4, 5, 6]}"#, &budget).is_err());
        let message = budget.take_exceeded().expect("limit recorded");
        assert!(message.contains("max_nodes"), "{message}");
    }

    #[test]
    fn depth_limit_is_exact() {
        let budget = Budget::new(&limits(3, 100), 0);
        assert!(parse_json(r#"{"a": {"b": [1]}}"#, &budget).is_ok());
        assert!(budget.take_exceeded().is_none());
        assert!(parse_json(r#"{"a": {"b": [[1]]}}"#, &budget).is_err());
        assert!(budget.take_exceeded().expect("limit recorded").contains("max_depth"));
    }

    #[test]
    fn json_keeps_merge_key_literal_and_rejects_duplicates() {
        let budget = Budget::new(&Limits::default(), 0);
        let value = parse_json(r#"{"<<": {"a": 1}}"#, &budget).unwrap();
        assert_eq!(value, serde_json::json!({"<<": {"a": 1}}));
        let err = parse_json(r#"{"a": 1, "a": 2}"#, &budget).unwrap_err();
        assert!(err.to_string().contains("duplicate key `a`"), "{err}");
    }

    #[test]
    fn revision_node_budget_spans_documents() {
        // max_nodes 10 plus 0 bytes: 10 nodes for the whole revision.
        let budget = Budget::new(&limits(8, 10), 0);
        assert!(parse_json("[1, 2, 3, 4]", &budget).is_ok());
        assert!(parse_json("[1, 2, 3, 4]", &budget).is_ok());
        assert!(!budget.exhausted());
        assert!(parse_json("[1, 2, 3, 4]", &budget).is_err());
        assert!(budget.exhausted());
        assert!(budget.take_exceeded().expect("recorded").contains("revision"));
    }

    #[test]
    fn document_limit() {
        let budget = Budget::new(&Limits { max_documents: 2, ..Limits::default() }, 0);
        assert!(budget.start_document().is_ok());
        assert!(budget.take_documents(1).is_ok());
        let err = budget.start_document().unwrap_err();
        assert!(err.contains("max_documents"), "{err}");
        assert!(budget.exhausted());
    }
}
