//! YAML files to documents. This is the only file that uses serde_yaml (deprecated upstream):
//! swapping the parser means rewriting [`parse_chunk`] and [`describe_error`].
//!
//! A file is first split into documents the way kubectl does: a line starting with `---`
//! followed by nothing, whitespace or a comment starts a new document, and a `...` line ends
//! one. Each document is then parsed on its own, which gives every document its line in the file
//! (for [`Origin`](crate::manifest::Origin)) and lets parse errors, whose positions serde_yaml
//! reports relative to the text it was given, be moved to the true line in the file.
//!
//! [`parse_config`] is the entry point for other YAML files of the agent (its config file).

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeSeed;
use serde_json::Value;

use super::value::{Budget, Doc, Failure, Parsed, ValueSeed};
use super::Limits;

/// Parses a YAML file holding one document (such as the agent's config file) into JSON, under
/// the default [`Limits`]. Errors read `line N: cause`; a file without a document or with more
/// than one is an error.
pub fn parse_config(text: &str) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let budget = Budget::new(&Limits::default(), text.len() as u64);
    let parsed = parse_documents(text, &budget);
    if let Some(failure) = parsed.failure {
        return Err(match failure.line {
            Some(line) => format!("line {line}: {}", failure.message),
            None => failure.message,
        });
    }
    let mut docs = parsed.docs.into_iter().filter(|doc| !doc.value.is_null());
    match (docs.next(), docs.next()) {
        (Some(doc), None) => Ok(doc.value),
        (None, _) => Err("the file holds no YAML document".to_owned()),
        (Some(_), Some(second)) => {
            Err(format!("line {}: the file must hold a single YAML document", second.line))
        }
    }
}

/// Parses every document of a YAML file, stopping at the first error.
///
/// Documents holding only comments or whitespace are not returned; documents holding `null`
/// (or `~`) are returned as `Value::Null` for the caller to skip.
pub(crate) fn parse_documents(text: &str, budget: &Budget) -> Parsed {
    let mut parsed = Parsed::default();
    for chunk in split_documents(text) {
        // The line of the chunk's first line in the file, minus one.
        let offset = chunk.first_line - 1;
        let result =
            panic::catch_unwind(AssertUnwindSafe(|| parse_chunk(chunk.text, offset, budget)));
        let values = match result {
            Ok(Ok(values)) => values,
            Ok(Err(failure)) => {
                parsed.failure = Some(Failure {
                    line: failure.line.or(Some(chunk.content_line)),
                    object: object_in_text(chunk.text),
                    message: failure.message,
                });
                return parsed;
            }
            Err(_) => {
                parsed.failure = Some(Failure {
                    line: Some(chunk.content_line),
                    object: object_in_text(chunk.text),
                    message: "invalid YAML: the parser failed on this document".to_owned(),
                });
                return parsed;
            }
        };
        for value in values {
            let index = parsed.docs.len();
            parsed.docs.push(Doc { value, line: chunk.content_line, index });
        }
    }
    parsed
}

/// Parses the text of one document (normally exactly one; a chunk never holds a `---` or `...`
/// line after its content). `offset` is added to the lines of errors.
fn parse_chunk(text: &str, offset: usize, budget: &Budget) -> Result<Vec<Value>, Failure> {
    let mut values = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        budget.start_document().map_err(|message| Failure { line: None, object: None, message })?;
        match ValueSeed::yaml(budget).deserialize(document) {
            Ok(value) => values.push(value),
            Err(error) => return Err(describe_error(&error, text, offset, budget)),
        }
    }
    Ok(values)
}

/// Turns a serde_yaml error on `text` (which starts at line `offset + 1` of the file) into a
/// failure with the true line.
fn describe_error(
    error: &serde_yaml::Error,
    text: &str,
    offset: usize,
    budget: &Budget,
) -> Failure {
    let full = error.to_string();
    // Reader errors (e.g. control characters) carry a byte position instead of a line.
    let position_line = position_of(&full).map(|pos| line_at(text, pos) + offset);
    let line = position_line.or_else(|| error.location().map(|l| l.line() + offset));
    if let Some(limit) = budget.take_exceeded() {
        return Failure { line, object: None, message: limit };
    }
    let tab = error.location().and_then(|l| tab_in_indentation(text, l.line(), &full));
    let message = if full.starts_with("repetition limit exceeded") {
        "too many YAML alias expansions in this document (a YAML bomb?)".to_owned()
    } else if let Some(column) = tab {
        // libyaml's own words ("found character that cannot start any token") do not say why.
        format!(
            "invalid YAML: tabs are not allowed for indentation (a tab at column {column}); \
             indent with spaces"
        )
    } else {
        format!("invalid YAML: {}", relocate(&full, text, offset))
    };
    Failure { line, object: None, message }
}

/// The 1-based column of a tab in the indentation of line `line` of `text` (the spaces, tabs
/// and `-` sequence indicators before its content), if the parser's `message` is one it gives
/// for such a tab. Tabs elsewhere (in flow collections, in block scalars past their
/// indentation, before comments) are not indentation and YAML allows them.
fn tab_in_indentation(text: &str, line: usize, message: &str) -> Option<usize> {
    if !(message.contains("tab character")
        || message.starts_with("found character that cannot start any token"))
    {
        return None;
    }
    let text_line = text.lines().nth(line.checked_sub(1)?)?;
    let indentation =
        text_line.find(|c: char| !matches!(c, ' ' | '\t' | '-')).unwrap_or(text_line.len());
    text_line[..indentation].find('\t').map(|at| at + 1)
}

/// Names the object of a document that could not be parsed, from its text: the top-level
/// `kind:` and the `name:` directly under the top-level `metadata:`: `Deployment api`, or
/// `kind Deployment` / `object api` when only one of them can be read. `None` when the text names
/// neither, or names them with anything but a plain or quoted scalar.
fn object_in_text(text: &str) -> Option<String> {
    fn scalar(value: &str) -> Option<String> {
        let value = match value.find(" #") {
            Some(at) => &value[..at],
            None => value,
        };
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        let plain = !unquoted.is_empty()
            && !unquoted.starts_with(['{', '[', '&', '*', '|', '>', '!', '%', '@', '`'])
            && !unquoted.contains(['"', '\'', '\t'])
            && !unquoted.contains(": ");
        plain.then(|| unquoted.to_owned())
    }
    let mut kind = None;
    let mut name = None;
    // The indentation of metadata's first key, once inside the top-level `metadata:`.
    let mut in_metadata: Option<Option<usize>> = None;
    for line in text.lines() {
        let content = line.trim_start_matches([' ', '\t']);
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0 {
            in_metadata = None;
            if let Some(value) = content.strip_prefix("kind:") {
                kind = kind.or_else(|| scalar(value));
            } else if content.trim_end() == "metadata:" {
                in_metadata = Some(None);
            }
        } else if let Some(first) = in_metadata.as_mut() {
            let first = *first.get_or_insert(indent);
            if indent == first {
                if let Some(value) = content.strip_prefix("name:") {
                    name = name.or_else(|| scalar(value));
                }
            }
        }
    }
    match (kind, name) {
        (Some(kind), Some(name)) => Some(format!("{kind} {name}")),
        (Some(kind), None) => Some(format!("kind {kind}")),
        (None, Some(name)) => Some(format!("object {name}")),
        (None, None) => None,
    }
}

/// The byte position in `at position N` of a libyaml message.
fn position_of(message: &str) -> Option<usize> {
    let start = message.find(" at position ")? + " at position ".len();
    let digits = message[start..].bytes().take_while(u8::is_ascii_digit).count();
    message[start..start + digits].parse().ok()
}

/// The 1-based line of byte `pos` in `text`.
fn line_at(text: &str, pos: usize) -> usize {
    let end = pos.min(text.len());
    1 + text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count()
}

/// Rewrites `line N column M` and `position N` in an error message to lines of the file.
fn relocate(message: &str, text: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    loop {
        let next_line = rest.find("line ");
        let next_position = rest.find("position ");
        let (at, is_position) = match (next_line, next_position) {
            (Some(l), Some(p)) if p < l => (p, true),
            (Some(l), _) => (l, false),
            (None, Some(p)) => (p, true),
            (None, None) => break,
        };
        let word = if is_position { "position " } else { "line " };
        out.push_str(&rest[..at]);
        let after = &rest[at + word.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) if is_position => {
                out.push_str(&format!("line {}", line_at(text, n) + offset));
            }
            Ok(n) if after[digits..].starts_with(" column ") => {
                out.push_str(&format!("line {}", n + offset));
            }
            _ => out.push_str(&rest[at..at + word.len() + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The text of one document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk<'a> {
    /// The document's text, including a leading `---` line and comments before it.
    text: &'a str,
    /// The 1-based line of the chunk's first line in the file.
    first_line: usize,
    /// The 1-based line of the document's first content (not a comment, blank or bare marker).
    content_line: usize,
}

/// Splits a YAML stream into documents, dropping documents without content.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    // The chunk being collected: its start (byte, line), its first content line, and whether it
    // has a `---` marker.
    let mut start = 0;
    let mut start_line = 1;
    let mut content: Option<usize> = None;
    let mut marker = false;
    let mut pos = 0;

    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        let line_start = pos;
        pos += line.len();
        if let Some(rest) = marker_rest(line, "---") {
            if let Some(content_line) = content {
                chunks.push(Chunk {
                    text: &text[start..line_start],
                    first_line: start_line,
                    content_line,
                });
            }
            // A chunk with content ends here; so does an explicit empty document (`---` with
            // nothing after it). Comments and directives before a first `---` stay with it.
            if content.is_some() || marker {
                start = line_start;
                start_line = number;
            }
            content = is_content(rest).then_some(number);
            marker = true;
        } else if marker_rest(line, "...").is_some_and(|rest| !is_content(rest)) {
            if let Some(content_line) = content {
                chunks.push(Chunk {
                    text: &text[start..pos],
                    first_line: start_line,
                    content_line,
                });
            }
            start = pos;
            start_line = number + 1;
            content = None;
            marker = false;
        } else if content.is_none() && !line.starts_with('%') && is_content(line) {
            content = Some(number);
        }
    }
    if let Some(content_line) = content {
        chunks.push(Chunk { text: &text[start..], first_line: start_line, content_line });
    }
    chunks
}

/// If `line` starts with the document marker `marker` followed by whitespace or the end of the
/// line, what follows the marker.
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    (rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n'])).then_some(rest)
}

/// Whether a line (or the rest of a marker line) holds more than whitespace and a comment.
fn is_content(line: &str) -> bool {
    let trimmed = line.trim();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Limits;

    fn parse(text: &str) -> Parsed {
        parse_documents(text, &Budget::new(&Limits::default(), text.len() as u64))
    }

    fn lines(text: &str) -> Vec<(usize, usize)> {
        split_documents(text).iter().map(|c| (c.first_line, c.content_line)).collect()
    }

    #[test]
    fn splits_like_kubectl() {
        let text = "# leading comment\n---\na: 1\n--- # second\n\n# c\nb: 2\n---\n---   \n# only a comment\n---\nc: 3\n...\n# after end\n---\r\nd: 4\r\n";
        assert_eq!(lines(text), vec![(1, 3), (4, 7), (11, 12), (14, 16)]);
        let chunks = split_documents(text);
        assert_eq!(chunks[0].text, "# leading comment\n---\na: 1\n");
        assert_eq!(chunks[2].text, "---\nc: 3\n...\n");
    }

    #[test]
    fn marker_needs_whitespace_after_it() {
        // `---x` and an indented `---` are not markers.
        assert_eq!(lines("a: |\n  ---\n  x\nb: ---x\n"), vec![(1, 1)]);
        assert_eq!(lines("---\n"), vec![]);
        assert_eq!(lines(""), vec![]);
        assert_eq!(lines("--- |\n  text\n"), vec![(1, 1)]);
    }

    #[test]
    fn directives_stay_with_their_document() {
        let parsed = parse("%YAML 1.2\n---\na: 1\n");
        assert!(parsed.failure.is_none(), "{:?}", parsed.failure);
        assert_eq!(parsed.docs.len(), 1);
        assert_eq!(parsed.docs[0].line, 3);
        assert_eq!(parsed.docs[0].value, serde_json::json!({"a": 1}));
    }

    #[test]
    fn documents_get_their_lines_and_indexes() {
        let parsed = parse("a: 1\n---\n# x\nb: 2\n--- ~\n---\nnull\n");
        assert!(parsed.failure.is_none());
        let got: Vec<_> = parsed.docs.iter().map(|d| (d.value.clone(), d.line, d.index)).collect();
        assert_eq!(
            got,
            vec![
                (serde_json::json!({"a": 1}), 1, 0),
                (serde_json::json!({"b": 2}), 4, 1),
                (Value::Null, 5, 2),
                (Value::Null, 7, 3),
            ]
        );
    }

    #[test]
    fn error_lines_are_lines_of_the_file() {
        let text = "a: 1\n---\nb: 2\n---\n# third\nc:\n  d: e: f\n";
        let parsed = parse(text);
        assert_eq!(parsed.docs.len(), 2);
        let failure = parsed.failure.expect("syntax error");
        assert_eq!(failure.line, Some(7));
        assert!(failure.message.starts_with("invalid YAML: "), "{}", failure.message);
        assert!(failure.message.contains("line 7"), "{}", failure.message);
    }

    #[test]
    fn control_characters_report_their_line() {
        let parsed = parse("a: 1\n---\nb: 2\nc: \u{1}\n");
        assert_eq!(parsed.docs.len(), 1);
        let failure = parsed.failure.expect("reader error");
        assert_eq!(failure.line, Some(4), "{}", failure.message);
    }

    #[test]
    fn merge_keys_tags_and_keys() {
        let parsed = parse("base: &b {x: 1, y: 2}\nobj:\n  <<: *b\n  y: 3\n1: one\ntrue: yes\n");
        assert!(parsed.failure.is_none(), "{:?}", parsed.failure);
        assert_eq!(
            parsed.docs[0].value,
            serde_json::json!({"base": {"x": 1, "y": 2}, "obj": {"x": 1, "y": 3}, "1": "one", "true": "yes"})
        );

        let failure = parse("a: 1\nb: !Secret x\n").failure.expect("tag error");
        assert!(
            failure.message.contains("YAML tag `!Secret` is not supported"),
            "{}",
            failure.message
        );
        assert_eq!(failure.line, Some(2));

        let failure = parse("a: .nan\n").failure.expect("nan");
        assert!(failure.message.contains("cannot be represented in JSON"), "{}", failure.message);

        let failure = parse("a: 123456789012345678901234567890\n").failure.expect("big int");
        assert!(failure.message.contains("does not fit in 64 bits"), "{}", failure.message);

        let failure = parse("? [a, b]\n: c\n").failure.expect("sequence key");
        assert!(failure.message.contains("invalid type: sequence"), "{}", failure.message);

        let failure = parse("a: 1\na: 2\n").failure.expect("duplicate key");
        assert!(failure.message.contains("duplicate key `a`"), "{}", failure.message);
    }

    #[test]
    fn config_files_hold_one_document() {
        assert_eq!(
            parse_config("# c\nsources:\n- name: a\n"),
            Ok(serde_json::json!({"sources": [{"name": "a"}]}))
        );
        assert_eq!(parse_config("# nothing\n"), Err("the file holds no YAML document".to_owned()));
        assert_eq!(
            parse_config("a: 1\n---\nb: 2\n"),
            Err("line 3: the file must hold a single YAML document".to_owned())
        );
        let err = parse_config("a: 1\nb: [\n").unwrap_err();
        assert!(err.starts_with("line 3: invalid YAML: "), "{err}");
    }

    #[test]
    fn tabs_in_indentation_are_named_with_their_line_and_column() {
        let tab_message = |text: &str| {
            let failure = parse(text).failure.expect("a tab error");
            (failure.line, failure.message)
        };
        let cause = |column: usize| {
            format!(
                "invalid YAML: tabs are not allowed for indentation (a tab at column {column}); \
                 indent with spaces"
            )
        };
        // a tab alone, after spaces, after a sequence indicator, and as a key's indentation
        assert_eq!(tab_message("a:\n  b: 1\n\tc: 2\n"), (Some(3), cause(1)));
        assert_eq!(tab_message("a: 1\n---\nb:\n  c:\n  \td: 2\n"), (Some(5), cause(3)));
        assert_eq!(tab_message("items:\n-\tname: x\n"), (Some(2), cause(2)));
        assert_eq!(tab_message("metadata:\n\tname: x\n"), (Some(2), cause(1)));
        // in a block scalar's indentation
        assert_eq!(tab_message("a: |\n\tb\n"), (Some(2), cause(1)));
        assert_eq!(parse_config("sources:\n\t- name: a\n"), Err(format!("line 2: {}", cause(1))));

        // tabs YAML allows: in flow collections, before comments, inside a block scalar's text
        for text in ["a: [\n\t1, 2]\n", "a: 1\t# c\n", "a: |\n  x\n  \ty\n", "a: \"x\ty\"\n"] {
            let parsed = parse(text);
            assert!(parsed.failure.is_none(), "{text:?}: {:?}", parsed.failure);
        }
        // other characters that cannot start a token keep the parser's words
        let failure = parse("a: 1\nb: @x\n").failure.expect("reserved character");
        assert_eq!(failure.line, Some(2));
        assert!(failure.message.contains("cannot start any token"), "{}", failure.message);
    }

    #[test]
    fn a_document_that_does_not_parse_is_named_from_its_text() {
        let named = |text: &str| parse(text).failure.expect("a syntax error").object;
        assert_eq!(
            named("# c\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels:\n    a: b\n  name: \"cfg\" # x\ndata:\n\tk: v\n"),
            Some("ConfigMap cfg".to_owned())
        );
        assert_eq!(
            named("a: 1\n---\nkind: 'Deployment'\nmetadata:\n  name: api\nspec:\n  template:\n    metadata:\n      name: other\n  x: [\n"),
            Some("Deployment api".to_owned())
        );
        assert_eq!(
            named("kind: Service\nspec:\n  name: not-metadata\n\tx: 1\n"),
            Some("kind Service".to_owned())
        );
        assert_eq!(named("metadata:\n  name: n\nspec: [\n"), Some("object n".to_owned()));
        assert_eq!(named("kind: {a\nmetadata:\n  name: *x\n"), None);
        assert_eq!(
            named("kind: ConfigMap\nmetadata:\n  name: broken: really\n"),
            Some("kind ConfigMap".to_owned())
        );
        assert_eq!(named("spec:\n\tx: 1\n"), None);
    }

    #[test]
    fn relocate_rewrites_lines() {
        let text = "a\nb\nc\n";
        assert_eq!(
            relocate("bad at line 2 column 3, while parsing at line 1 column 1", text, 10),
            "bad at line 12 column 3, while parsing at line 11 column 1"
        );
        assert_eq!(relocate("bad at position 4", text, 10), "bad at line 13");
        assert_eq!(relocate("a line about lines", text, 10), "a line about lines");
    }
}
