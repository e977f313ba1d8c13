//! YAML files to documents, parsed with serde-saphyr. This is the only file that uses it
//! (with [`super::tabs`], which uses its scanner).
//!
//! A file is first split into documents the way kubectl does: a line starting with `---`
//! followed by nothing, whitespace or a comment starts a new document, and a `...` line ends
//! one. Each document is then parsed on its own, which gives every document its line in the file
//! (for [`Origin`](crate::manifest::Origin)) and lets parse errors, whose positions the parser
//! reports relative to the text it was given, be moved to the true line in the file.
//!
//! The parser is set up to read documents as serde_yaml (libyaml) did before it, which is also
//! what kubectl does for the cases the tests pin: only `true`/`false` are booleans (`yes`, `on`
//! stay strings), merge keys (`<<`) are applied, local and unknown tags are errors, `.nan` and
//! `.inf` are errors, a decimal integer wider than 64 bits is an error, and tabs are accepted
//! and rejected where libyaml accepts and rejects them ([`super::tabs`]). Where serde_yaml
//! differed from kubectl and no test pinned it, kubectl's reading is kept: `0644` is the octal
//! integer 420, `1_000` is 1000, a null mapping key is an error.
//!
//! [`parse_config`] is the entry point for other YAML files of the agent (its config file).

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeSeed;
use serde_json::Value;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::{ErrorKind, Event, Parser, ScalarStyle, Scanner, StrInput, TokenType};
use serde_saphyr::{DefaultMessageFormatter, Error, ExternalMessageSource, Location, MessageFormatter, NonFiniteFloatPolicy};

use super::tabs;
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
        (Some(_), Some(second)) => Err(format!("line {}: the file must hold a single YAML document", second.line)),
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
        let result = panic::catch_unwind(AssertUnwindSafe(|| parse_chunk(chunk.text, offset, budget)));
        let value = match result {
            Ok(Ok(value)) => value,
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
        let index = parsed.docs.len();
        parsed.docs.push(Doc { value, line: chunk.content_line, index });
    }
    parsed
}

/// The parser's options for one document under `budget`'s limits.
///
/// serde-saphyr's own budget (counted on parser events, before alias expansion) stays on as a
/// second line of defence, with its limits set above ours so that ours, with their messages,
/// are met first: its depth one level deeper, its node and event counts above `max_nodes`. Its
/// alias/anchor ratio heuristic is off: our node count bounds alias expansion exactly, and the
/// heuristic rejects ordinary documents that use one anchor many times.
fn options(budget: &Budget) -> serde_saphyr::Options {
    let depth = budget.max_depth().saturating_add(1);
    let nodes = budget.max_nodes().saturating_mul(2).saturating_add(1024);
    let mut limits = serde_saphyr::Budget::default();
    limits.max_depth = depth;
    limits.flow_nesting_limit = limits.flow_nesting_limit.max(depth);
    limits.max_nodes = limits.max_nodes.max(nodes);
    limits.max_events = limits.max_events.max(nodes.saturating_mul(2));
    limits.enforce_alias_anchor_ratio = false;

    let mut options = serde_saphyr::Options::default();
    options.budget = Some(limits);
    options.alias_limits.max_total_replayed_events = options.alias_limits.max_total_replayed_events.max(nodes.saturating_mul(2));
    options.alias_limits.max_replay_stack_depth = options.alias_limits.max_replay_stack_depth.max(depth);
    // `yes`, `on`, `y` stay strings, as serde_yaml read them (kubectl makes them booleans).
    options.strict_booleans = true;
    // `0644` is 420, as kubectl reads it (serde_yaml kept the string "0644").
    options.legacy_octal_numbers = true;
    // `.nan` and `.inf` reach the seed, which names them.
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    // `!!binary AAAA` stays the base64 text, as in serde_yaml.
    options.ignore_binary_tag_for_string = true;
    // `!Secret x` is an error, not silently the string `x`.
    options.reject_unsupported_tags = true;
    // Comments are not needed; not recording them also lifts the cap on consecutive comments.
    options.emit_comments = false;
    options.with_snippet = false;
    options
}

/// Parses the text of one document (a chunk never holds a `---` or `...` line after its
/// content). `offset` is added to the lines of errors.
fn parse_chunk(text: &str, offset: usize, budget: &Budget) -> Result<Value, Failure> {
    budget.start_document().map_err(|message| Failure { line: None, object: None, message })?;
    let tabs = tabs::check(text);
    let source: &str = &tabs.text;
    match alias_expansion(source, budget.max_nodes().saturating_mul(2)) {
        Some(Expansion::Nodes(line)) => {
            let message = format!(
                "the document has more than {} nodes after expanding YAML aliases (limit \
                 max_nodes)",
                budget.max_nodes()
            );
            return Err(Failure { line: Some(line + offset), object: None, message });
        }
        Some(Expansion::Aliases) => {
            let message = "too many YAML alias expansions in this document (a YAML bomb?)";
            return Err(Failure { line: None, object: None, message: message.to_owned() });
        }
        None => {}
    }
    let parse = |text: &str| {
        serde_saphyr::with_deserializer_from_str_with_options(text, options(budget), |deserializer| {
            ValueSeed::yaml(budget).deserialize(deserializer)
        })
    };
    // A continuation line of a quoted scalar indented no deeper than its block: libyaml (and so
    // kubectl) accepts it, YAML 1.2 and serde-saphyr do not. Its leading whitespace is never
    // content, so the line is indented deeper and the document parsed again.
    let used = budget.nodes_used();
    let mut repaired: Option<String> = None;
    let mut result = parse(source);
    for _ in 0..MAX_QUOTED_REPAIRS {
        let Err(error) = &result else { break };
        let text = repaired.as_deref().unwrap_or(source);
        let Some(fixed) = underindented_quoted_line(error).filter(|_| !budget.has_exceeded()).and_then(|line| reindent(text, line)) else {
            break;
        };
        budget.rewind(used);
        result = parse(&fixed);
        repaired = Some(fixed);
    }
    let source = repaired.as_deref().unwrap_or(source);
    let wide = budget.take_wide_number();
    let value = result.map_err(|error| describe_error(&error, source, offset, budget, tabs.rejected))?;
    if let Some((line, column)) = tabs.rejected {
        return Err(tab_failure(line + offset, column));
    }
    match wide.then(|| wide_integer(source, offset)).flatten() {
        Some(failure) => Err(failure),
        None => Ok(value),
    }
}

/// Turns a serde-saphyr error on `text` (which starts at line `offset + 1` of the file) into a
/// failure with the true line. `tab` is the first tab [`tabs::check`] rejected in the text.
fn describe_error(error: &Error, text: &str, offset: usize, budget: &Budget, tab: Option<(usize, usize)>) -> Failure {
    let (error, location) = unwrap_error(error);
    let position = location.map(|l| (l.line() as usize, l.column() as usize));
    let limit = budget.take_exceeded();
    let scan = match error {
        Error::ExternalMessage { source, .. } => match source.as_ref() {
            ExternalMessageSource::Parser(scan) => Some(scan.kind()),
            _ => None,
        },
        _ => None,
    };
    // A tab libyaml rejects is the error when nothing went wrong before it; a parser error
    // about a tab is about the first one in the indentation of its line or a later one.
    let tab = match tab {
        Some(tab) if position.is_none_or(|p| tab <= p) => Some(tab),
        _ if scan.is_some_and(is_tab_error) => indentation_tab(text, position.map_or(1, |(line, _)| line)).or(tab),
        _ => None,
    };
    if let Some((tab_line, column)) = tab {
        return tab_failure(tab_line + offset, column);
    }
    let line = position.map(|(line, _)| line + offset);
    if let Some(limit) = limit {
        return Failure { line, object: None, message: limit };
    }
    let mut unclosed = false;
    let cause = match error {
        Error::ExternalMessage { msg, .. } => match scan {
            // libyaml's words, which the tests and users know.
            Some(ErrorKind::UnexpectedCharacter { character }) => {
                format!("found character `{}` that cannot start any token", character.escape_default())
            }
            // The scanner looks ahead through nested flow collections before the seed sees
            // them; its nesting limit is above max_depth.
            Some(ErrorKind::RecursionLimitExceeded) => breach_message(&BudgetBreach::Depth { depth: 0 }, budget),
            // Found where the document ends (as libyaml reported them), pointing at the opening.
            Some(ErrorKind::UnclosedFlowCollection { open }) => {
                unclosed = true;
                format!("the document ends before the `{open}`")
            }
            Some(ErrorKind::UnclosedQuotedScalar) => {
                unclosed = true;
                "the document ends before the quoted scalar".to_owned()
            }
            _ => msg.clone(),
        },
        Error::Message { msg, .. } => msg.clone(),
        Error::UnsupportedTag { tag, .. } => format!("YAML tag `{tag}` is not supported"),
        Error::DuplicateMappingKey { key: Some(key), .. } => format!("duplicate key `{key}`"),
        Error::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        Error::MergeValueNotMapOrSeqOfMaps { .. } => "a merge key `<<` needs a mapping or a list of mappings".to_owned(),
        Error::NullIntoString { .. } => "a mapping key is null (`~`, `null` or nothing); quote it if it is meant as a string".to_owned(),
        Error::Unexpected { expected: "string scalar", .. } => {
            let found = match position.and_then(|(line, column)| char_at(text, line, column)) {
                Some('[' | '-') => "sequence",
                _ => "map",
            };
            format!("invalid type: {found}, expected a string or other scalar as mapping key")
        }
        Error::InvalidScalar { ty, .. } => format!("the value is not a valid {ty} for its tag"),
        Error::TaggedScalarCannotDeserializeIntoString { .. } => "the YAML tag of this scalar is not supported".to_owned(),
        Error::RecursiveReferencesRequireWeakTypes { .. } => "a YAML alias refers to a node that contains it".to_owned(),
        Error::AliasReplayCounterOverflow { .. }
        | Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => "too many YAML alias expansions in this document (a YAML bomb?)".to_owned(),
        Error::Budget { breach, .. } => breach_message(breach, budget),
        other => DefaultMessageFormatter.format_message(other).into_owned(),
    };
    let message = match position {
        // In the text's lines, then moved (with any the cause names) to lines of the file.
        Some((at, column)) if unclosed => relocate(&format!("invalid YAML: {cause} at line {at} column {column} is closed"), text, offset),
        Some((at, column)) => relocate(&format!("invalid YAML: {cause} at line {at} column {column}"), text, offset),
        None => format!("invalid YAML: {cause}"),
    };
    let line = if unclosed { Some(end_line(text) + offset) } else { line };
    Failure { line, object: None, message }
}

/// The error itself (not its snippet or alias wrapper) and where it happened: for an error
/// found while expanding an alias, where the alias is used.
fn unwrap_error(error: &Error) -> (&Error, Option<Location>) {
    let known = |location: Location| (location != Location::UNKNOWN).then_some(location);
    match error.without_snippet() {
        Error::AliasError { error, locations, .. } => {
            let (inner, location) = unwrap_error(error);
            (inner, known(locations.reference_location).or(location))
        }
        other => (other, other.location().and_then(known)),
    }
}

/// The most continuation lines of quoted scalars re-indented in one document (each parses it
/// again).
const MAX_QUOTED_REPAIRS: usize = 100;

/// The 1-based line of a quoted scalar's continuation line indented no deeper than its
/// block, when that is the error.
fn underindented_quoted_line(error: &Error) -> Option<usize> {
    let (error, location) = unwrap_error(error);
    let Error::ExternalMessage { source, .. } = error else { return None };
    let ExternalMessageSource::Parser(scan) = source.as_ref() else { return None };
    matches!(scan.kind(), ErrorKind::InvalidQuotedScalarIndent).then_some(location?.line() as usize)
}

/// `text` with line `line` (1-based; a continuation line of a quoted scalar) indented one
/// column deeper than the nearest line above it with content (counting a sequence's `- ` as
/// indentation): deeper than the block the scalar is in. Every line keeps its number.
fn reindent(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let index = line.checked_sub(1)?;
    let target = lines.get(index)?;
    let above = lines.get(..index)?.iter().rev().find(|l| !l.trim().is_empty())?;
    let depth = above.len() - above.trim_start_matches([' ', '-']).len() + 1;
    let content = target.trim_start_matches([' ', '\t']);
    let marker = ["---", "..."]
        .iter()
        .any(|m| target.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n'])));
    if marker {
        // a document marker ends the document, inside a quoted scalar too (libyaml's error)
        return None;
    }
    if target.len() - content.len() >= depth {
        // already as deep: the error is another one
        return None;
    }
    let mut out = String::with_capacity(text.len() + depth);
    for (i, l) in lines.iter().enumerate() {
        if i == index {
            out.extend(std::iter::repeat_n(' ', depth));
            out.push_str(content);
        } else {
            out.push_str(l);
        }
    }
    Some(out)
}

/// Whether the scanner's error is about a tab.
fn is_tab_error(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::TabNotAllowed
            | ErrorKind::TabInBlockIndentation
            | ErrorKind::TabAtBlockScalarStart
            | ErrorKind::TabInIndentation
            | ErrorKind::TabInPlainScalar
            | ErrorKind::InvalidBlockEntryWhitespace
            | ErrorKind::UnexpectedCharacter { character: '\t' }
    )
}

/// The first tab in the indentation (spaces, tabs and `-` sequence indicators) of line `from`
/// of `text` or a later line, as its 1-based line and column.
fn indentation_tab(text: &str, from: usize) -> Option<(usize, usize)> {
    text.lines().enumerate().skip(from.saturating_sub(1)).find_map(|(index, line)| {
        let indentation = line.find(|c: char| !matches!(c, ' ' | '\t' | '-')).unwrap_or(line.len());
        line[..indentation].find('\t').map(|at| (index + 1, at + 1))
    })
}

/// The failure for a tab in indentation at `line` of the file and `column`.
fn tab_failure(line: usize, column: usize) -> Failure {
    // libyaml's own words ("found character that cannot start any token") did not say why.
    Failure {
        line: Some(line),
        object: None,
        message: format!(
            "invalid YAML: tabs are not allowed for indentation (a tab at column {column}); \
             indent with spaces"
        ),
    }
}

/// The line where the parser finds the end of the document `text`: its `...` line, or the line
/// after its last line break (libyaml's place for errors found at the end).
fn end_line(text: &str) -> usize {
    let mut line = 1;
    for raw in text.split_inclusive('\n') {
        if marker_rest(raw, "...").is_some_and(|rest| !is_content(rest)) {
            return line;
        }
        // as the parser counts them: `\r\n`, `\n` and a lone `\r` each end a line
        line += raw.matches('\r').count() + usize::from(raw.ends_with('\n')) - usize::from(raw.ends_with("\r\n"));
    }
    line
}

/// The character at 1-based `line` and `column` of `text`.
fn char_at(text: &str, line: usize, column: usize) -> Option<char> {
    text.lines().nth(line.checked_sub(1)?)?.chars().nth(column.checked_sub(1)?)
}

/// A message for a limit of serde-saphyr's own budget (see [`options`]).
fn breach_message(breach: &BudgetBreach, budget: &Budget) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!("maps and lists are nested deeper than {} levels (limit max_depth)", budget.max_depth()),
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
            format!("the document has more than {} nodes after expanding YAML aliases (limit max_nodes)", budget.max_nodes())
        }
        other => {
            format!("the document passes a limit of the YAML parser ({other:?}; a YAML bomb?)")
        }
    }
}

/// Why [`alias_expansion`] rejects a document.
#[derive(Debug, PartialEq, Eq)]
enum Expansion {
    /// Expanded, the document has more nodes than the limit: the 1-based line where the count
    /// passes it.
    Nodes(usize),
    /// serde_yaml's repetition limit: more alias expansions (counting those inside expanded
    /// nodes) than 100 per event of the document.
    Aliases,
}

/// Counts what the document `text` expands to on the parser's events, expanding nothing, so
/// that a YAML bomb fails at once instead of after the seed has built `max_nodes` nodes (which
/// takes long in debug builds). Rejects a document with more than `node_limit` nodes expanded,
/// and one over serde_yaml's repetition limit, which the renderer had before and
/// serde-saphyr does not have. Documents under `node_limit` (twice `max_nodes`: the seed counts
/// a little differently around merge keys) are left to the seed's exact count. Only texts with
/// anchors and aliases are parsed; `None` also when the text does not parse.
fn alias_expansion(text: &str, node_limit: usize) -> Option<Expansion> {
    if !(text.contains('&') && text.contains('*')) {
        return None;
    }
    let node_limit = u64::try_from(node_limit).unwrap_or(u64::MAX);
    // Per anchor: its nodes and the alias expansions in it, aliases expanded.
    let mut anchors: HashMap<usize, (u64, u64)> = HashMap::new();
    // The collections open: their anchor, and the counts before them.
    let mut open: Vec<(usize, u64, u64)> = Vec::new();
    let (mut nodes, mut aliases, mut events) = (0u64, 0u64, 0u64);
    let mut too_many_nodes = None;
    for event in Parser::new_from_str(text) {
        // A text that does not parse is the parser's to report, as serde_yaml reported its
        // syntax errors before expanding anything.
        let (event, span) = event.ok()?;
        match event {
            Event::Scalar(_, _, anchor, _) => {
                nodes = nodes.saturating_add(1);
                if anchor != 0 {
                    anchors.insert(anchor, (1, 0));
                }
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                open.push((anchor, nodes, aliases));
                nodes = nodes.saturating_add(1);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, nodes_before, aliases_before)) = open.pop() {
                    if anchor != 0 {
                        anchors.insert(anchor, (nodes - nodes_before, aliases - aliases_before));
                    }
                }
            }
            Event::Alias(anchor) => {
                // An alias of an anchor still open (recursion) is the parser's error.
                let (inner_nodes, inner_aliases) = anchors.get(&anchor).copied().unwrap_or((0, 0));
                nodes = nodes.saturating_add(inner_nodes);
                aliases = aliases.saturating_add(1).saturating_add(inner_aliases);
            }
            _ => continue,
        }
        events += 1;
        if nodes > node_limit && too_many_nodes.is_none() {
            too_many_nodes = Some(span.start.line());
        }
    }
    if aliases > events.saturating_mul(100) {
        return Some(Expansion::Aliases);
    }
    too_many_nodes.map(Expansion::Nodes)
}

/// The failure for the first plain scalar of `text` (a document that parsed) that is a decimal
/// integer wider than 64 bits, if any: serde-saphyr reads it as a float, which would silently
/// change the number. Keys and tagged scalars are left alone.
fn wide_integer(text: &str, offset: usize) -> Option<Failure> {
    let mut key = false;
    let mut tagged = false;
    for token in Scanner::new(StrInput::new(text)) {
        let token = token.ok()?;
        match token.token_type() {
            TokenType::Key => key = true,
            TokenType::Tag(..) => tagged = true,
            TokenType::Anchor(_) => {}
            TokenType::Scalar(ScalarStyle::Plain, value) if !key && !tagged => {
                let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
                let wide = !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && value.parse::<i64>().is_err()
                    && value.parse::<u64>().is_err();
                if wide {
                    let start = token.span().start;
                    let line = start.line() + offset;
                    return Some(Failure {
                        line: Some(line),
                        object: None,
                        message: format!(
                            "invalid YAML: the number {value} does not fit in 64 bits (quote it \
                             if it is meant as a string) at line {line} column {}",
                            start.col() + 1
                        ),
                    });
                }
                key = false;
                tagged = false;
            }
            _ => {
                key = false;
                tagged = false;
            }
        }
    }
    None
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
                chunks.push(Chunk { text: &text[start..line_start], first_line: start_line, content_line });
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
                chunks.push(Chunk { text: &text[start..pos], first_line: start_line, content_line });
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
            vec![(serde_json::json!({"a": 1}), 1, 0), (serde_json::json!({"b": 2}), 4, 1), (Value::Null, 5, 2), (Value::Null, 7, 3),]
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
        assert_eq!(parsed.docs[0].value, serde_json::json!({"base": {"x": 1, "y": 2}, "obj": {"x": 1, "y": 3}, "1": "one", "true": "yes"}));

        let failure = parse("a: 1\nb: !Secret x\n").failure.expect("tag error");
        assert!(failure.message.contains("YAML tag `!Secret` is not supported"), "{}", failure.message);
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
        assert_eq!(parse_config("# c\nsources:\n- name: a\n"), Ok(serde_json::json!({"sources": [{"name": "a"}]})));
        assert_eq!(parse_config("# nothing\n"), Err("the file holds no YAML document".to_owned()));
        assert_eq!(parse_config("a: 1\n---\nb: 2\n"), Err("line 3: the file must hold a single YAML document".to_owned()));
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
        assert_eq!(named("kind: Service\nspec:\n  name: not-metadata\n\tx: 1\n"), Some("kind Service".to_owned()));
        assert_eq!(named("metadata:\n  name: n\nspec: [\n"), Some("object n".to_owned()));
        assert_eq!(named("kind: {a\nmetadata:\n  name: *x\n"), None);
        assert_eq!(named("kind: ConfigMap\nmetadata:\n  name: broken: really\n"), Some("kind ConfigMap".to_owned()));
        assert_eq!(named("spec:\n\tx: 1\n"), None);
    }

    fn value(text: &str) -> Value {
        let parsed = parse(text);
        assert!(parsed.failure.is_none(), "{text:?}: {:?}", parsed.failure);
        parsed.docs.into_iter().next().expect("a document").value
    }

    fn failure(text: &str) -> Failure {
        parse(text).failure.unwrap_or_else(|| panic!("{text:?} parsed"))
    }

    #[test]
    fn scalars_read_as_before_or_as_kubectl() {
        // as serde_yaml: only true/false (any of three cases) are booleans
        assert_eq!(
            value("a: [yes, no, on, off, y, n, True, FALSE, ~, null, '']\n"),
            serde_json::json!({"a": ["yes", "no", "on", "off", "y", "n", true, false, null, null, ""]})
        );
        // as kubectl (serde_yaml kept "0644" and "1_000" strings): octal file modes and
        // digit separators; hexadecimal and 0o octal as in both
        assert_eq!(
            value("mode: 0644\nb: 0o644\nc: 1_000\nd: 0x1F\ne: -012\nf: 1.5e3\n"),
            serde_json::json!({"mode": 420, "b": 420, "c": 1000, "d": 31, "e": -10, "f": 1500.0})
        );
        // quoted, they are strings; keys keep their spelling
        assert_eq!(value("\"0644\": '0644'\n0x1F: a\n1.50: b\n"), serde_json::json!({"0644": "0644", "0x1F": "a", "1.50": "b"}));
        assert_eq!(value("a: !!binary AAAA\nb: ! 12\nc: !!str 1\n"), serde_json::json!({"a": "AAAA", "b": "12", "c": "1"}));
    }

    #[test]
    fn integers_wider_than_64_bits_are_errors_where_written() {
        let wide = failure("a: 1\nb:\n  - -123456789012345678901234567890\n");
        assert_eq!(wide.line, Some(3));
        assert!(
            wide.message.contains(
                "the number -123456789012345678901234567890 does not fit in 64 bits (quote it if \
                 it is meant as a string) at line 3 column 5"
            ),
            "{}",
            wide.message
        );
        let wide = failure("a: 1\n---\nb: &n 18446744073709551616\nc: *n\n");
        assert_eq!(wide.line, Some(3), "{}", wide.message);
        // floats, explicit floats, keys and quoted numbers are not integers
        assert_eq!(
            value("a: 1e30\nb: !!float 123456789012345678901234567890\n123456789012345678901234567890: x\nc: \"123456789012345678901234567890\"\nd: 18446744073709551615\n"),
            serde_json::json!({
                "a": 1e30,
                "b": 1.2345678901234568e29,
                "123456789012345678901234567890": "x",
                "c": "123456789012345678901234567890",
                "d": 18446744073709551615u64
            })
        );
        // as kubectl: a hexadecimal number too wide is a string (serde_yaml: an error)
        assert_eq!(value("a: 0x10000000000000000\n"), serde_json::json!({"a": "0x10000000000000000"}));
    }

    #[test]
    fn keys_merges_and_tags() {
        let null_key = failure("a: 1\n~: b\n");
        assert_eq!(null_key.line, Some(2));
        assert!(null_key.message.contains("a mapping key is null"), "{}", null_key.message);
        // a quoted `<<` is an ordinary key (serde_yaml merged it)
        assert_eq!(value("b: &b {x: 1}\no:\n  \"<<\": *b\n  <<: *b\n"), serde_json::json!({"b": {"x": 1}, "o": {"<<": {"x": 1}, "x": 1}}));
        let merge = failure("a: 1\nb:\n  <<: [1]\n");
        assert_eq!(merge.line, Some(3));
        assert!(merge.message.contains("a merge key `<<` needs a mapping"), "{}", merge.message);
        for (text, tag) in
            [("a: !!python/object x\n", "!!python/object"), ("!Thing {a: 1}\n", "!Thing"), ("a: 1\nb: !t [1]\n", "!t"), ("!k a: 1\n", "!k")]
        {
            let tagged = failure(text);
            assert!(tagged.message.contains(&format!("YAML tag `{tag}` is not supported")), "{text:?}: {}", tagged.message);
        }
        let recursive = failure("a: 1\nb: &b [*b]\n");
        assert_eq!(recursive.line, Some(2));
        assert!(recursive.message.contains("alias refers to a node that contains it"), "{}", recursive.message);
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_duplicate() {
        let duplicate = failure("a: 1\nb:\n  c: 2\n  c: 3\n");
        assert_eq!(duplicate.line, Some(4));
        assert!(duplicate.message.starts_with("invalid YAML: duplicate key `c` at line 4"), "{}", duplicate.message);
        // integer keys are compared as integers
        assert!(failure("0xB: a\n11: b\n").message.contains("duplicate key"));
    }

    #[test]
    fn unclosed_collections_are_reported_where_the_document_ends() {
        let unclosed = failure("a: 1\n---\nb: {x: 1,\n  y: 2\n---\nc: 3\n");
        assert_eq!(unclosed.line, Some(5));
        assert_eq!(unclosed.message, "invalid YAML: the document ends before the `{` at line 3 column 4 is closed");
        let unclosed = failure("a: \"x\n...\n");
        assert_eq!(unclosed.line, Some(2), "{}", unclosed.message);
    }

    #[test]
    fn aliases_within_limits_and_bombs() {
        // one anchor used many times is fine (serde-saphyr's alias/anchor ratio check is off)
        let text = format!("x: &x v\nl: [{}]\n", vec!["*x"; 500].join(", "));
        assert_eq!(value(&text)["l"].as_array().map(Vec::len), Some(500));
        // serde_yaml's repetition limit: a small bomb under max_nodes still fails
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        assert_eq!(failure(bomb).message, "too many YAML alias expansions in this document (a YAML bomb?)");
        // a bomb far over max_nodes fails before anything is expanded, at the line that passes it
        let limits = Limits { max_nodes: 100, ..Limits::default() };
        let text = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n";
        let over = parse_documents(text, &Budget::new(&limits, text.len() as u64)).failure.expect("over");
        assert_eq!(over.line, Some(2));
        assert!(over.message.contains("more than 100 nodes"), "{}", over.message);
    }

    #[test]
    fn long_runs_of_comments_parse() {
        let text = format!("a:\n{}  b: 1\n", "# a comment\n".repeat(100));
        assert_eq!(value(&text), serde_json::json!({"a": {"b": 1}}));
    }

    #[test]
    fn tabs_libyaml_accepts_and_rejects() {
        // accepted: the continuation lines of flow collections and quoted scalars
        assert_eq!(
            value("spec:\n  args: [\n\t\"--a\",\n\t\"--b\"]\nnote: \"x\n\ty\"\n"),
            serde_json::json!({"spec": {"args": ["--a", "--b"]}, "note": "x y"})
        );
        let cause = |column: usize| {
            format!(
                "invalid YAML: tabs are not allowed for indentation (a tab at column {column}); \
                 indent with spaces"
            )
        };
        // rejected: after a sequence's `-`, before a document's first key, and after the spaces
        // that set a block scalar's indentation (serde-saphyr accepts all three)
        for (text, line, column) in [("a:\n- x\n-\ty\n", 3, 2), ("\ta: 1\n", 1, 1), ("a: 1\nb: |-\n   \tx\n    y\n", 3, 4)] {
            let tab = failure(text);
            assert_eq!((tab.line, tab.message), (Some(line), cause(column)), "{text:?}");
        }
        // a syntax error before the tab is the error
        let early = failure("a: [1\nb:\n- \tx\n");
        assert_eq!(early.line, Some(2));
        assert!(!early.message.contains("tab"), "{}", early.message);
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
