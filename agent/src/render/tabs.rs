//! Tabs in YAML the way libyaml treats them (kubectl's go-yaml and serde_yaml before it), on
//! top of serde-saphyr's YAML 1.2 scanner, which differs in both directions:
//!
//! - libyaml rejects a tab that indents a line in block context, and a tab that separates a
//!   block sequence's `-`, an explicit key's `?` or a `:` at the start of a line from the content
//!   after it (`-\tname: x`). serde-saphyr accepts some of these (`-\tname: x`, a tab before the
//!   first key of a document), which would let a tab silently decide the structure.
//! - libyaml accepts tabs that indent the continuation lines of a flow collection or of a quoted
//!   scalar, where indentation carries no structure; serde-saphyr rejects some of them
//!   (`a: [` then a line `\t1, 2]`).
//!
//! [`check`] decides each tab that begins a line or follows such an indicator from the tokens of
//! the text (scanned with every line's leading tabs made spaces, so that the scan gets past
//! them): the ones libyaml accepts become spaces in the text given to the parser (tabs and spaces
//! are one byte and one column each, so every location stays the same); the first one libyaml
//! rejects is returned for the caller to report. Tabs in block scalars and plain scalars are left
//! to the parser, which reports the ones in their indentation, except a tab after the leading
//! spaces of the line that sets a block scalar's indentation (libyaml rejects it; serde-saphyr
//! makes it content). Tabs on lines holding only whitespace or a comment are accepted (libyaml
//! rejects some of them, depending on the token before).
//!
//! Texts without a tab are not scanned.

use std::borrow::Cow;

use serde_saphyr::granit_parser::{ScalarStyle, Scanner, StrInput, TokenType};

/// What [`check`] found in a text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Tabs<'a> {
    /// The text to parse: the input with the tabs libyaml accepts as indentation made spaces.
    pub text: Cow<'a, str>,
    /// The first tab libyaml rejects, as its 1-based line and column.
    pub rejected: Option<(usize, usize)>,
}

/// What a line starts inside of, as far as its leading whitespace is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// Block context: the line's first token starts a node or a key; tabs may not indent it.
    Block,
    /// Inside a flow collection: tabs before the line's content are separation.
    Flow,
    /// A continuation line of a single- or double-quoted scalar: leading tabs are stripped.
    Quoted,
    /// A continuation line of a plain scalar, or a line of a block scalar other than the one
    /// that sets its indentation: the parser decides.
    Scalar,
    /// A line of a block scalar whose indentation is found from its first line with content,
    /// which starts at the given byte offset (before its `|` or `>` header). On that first line
    /// a tab after the leading spaces cannot be indentation, and libyaml rejects it; on the
    /// others, the parser decides.
    BlockScalar(usize),
    /// The scan stopped (at a syntax error) before the line: the parser decides.
    Unknown,
}

/// One line of the text.
struct Line<'a> {
    /// Byte offset of the line's first character.
    start: usize,
    /// The line without its line break.
    text: &'a str,
}

impl Line<'_> {
    /// The length in bytes of the leading run of spaces and tabs.
    fn indent(&self) -> usize {
        self.text.len() - self.text.trim_start_matches([' ', '\t']).len()
    }

    /// The 1-based column of the first tab in the leading run of spaces and tabs.
    fn first_indent_tab(&self) -> Option<usize> {
        self.text[..self.indent()].find('\t').map(|at| at + 1)
    }

    /// Whether the line holds nothing but whitespace and maybe a comment.
    fn is_blank(&self) -> bool {
        let rest = self.text.trim_start_matches([' ', '\t', '\r']);
        rest.is_empty() || rest.starts_with('#')
    }
}

/// Decides the tabs of `text` that begin a line or follow a block indicator (see the module
/// documentation).
pub(super) fn check(text: &str) -> Tabs<'_> {
    if !text.contains('\t') {
        return Tabs { text: Cow::Borrowed(text), rejected: None };
    }
    let mut lines = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        lines.push(Line { start, text: body });
        start += raw.len();
    }
    // Every leading tab made a space, so that the scan goes past tabs that libyaml rejects.
    let mut spaced = String::with_capacity(text.len());
    for raw in text.split_inclusive('\n') {
        let indent = raw.len() - raw.trim_start_matches([' ', '\t']).len();
        spaced.extend(std::iter::repeat_n(' ', indent));
        spaced.push_str(&raw[indent..]);
    }

    let scan = scan(&spaced, text);
    let mut rejected = scan.rejected;
    let mut replace = vec![false; lines.len()];
    for (index, line) in lines.iter().enumerate() {
        let Some(column) = line.first_indent_tab() else {
            continue;
        };
        let at = (index + 1, column);
        match scan.context_at(line.start + line.indent()) {
            Context::Flow | Context::Quoted => replace[index] = true,
            // A line of only whitespace or a comment carries no structure.
            Context::Block if line.is_blank() => replace[index] = true,
            Context::Block => rejected = Some(rejected.map_or(at, |first| first.min(at))),
            Context::BlockScalar(from) if !line.is_blank() => {
                // The first line with content after the header sets the indentation.
                let body = text[from..line.start].find('\n').map_or(line.start, |nl| from + nl + 1);
                if text[body..line.start].trim_matches([' ', '\t', '\r', '\n']).is_empty() {
                    rejected = Some(rejected.map_or(at, |first| first.min(at)));
                }
            }
            Context::BlockScalar(_) | Context::Scalar | Context::Unknown => {}
        }
    }

    let text = if replace.iter().any(|r| *r) {
        let mut out = String::with_capacity(text.len());
        for (index, raw) in text.split_inclusive('\n').enumerate() {
            if replace[index] {
                let indent = raw.len() - raw.trim_start_matches([' ', '\t']).len();
                out.extend(std::iter::repeat_n(' ', indent));
                out.push_str(&raw[indent..]);
            } else {
                out.push_str(raw);
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    };
    Tabs { text, rejected }
}

/// What kind of scalar a [`Scan::scalars`] range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Quoted,
    Plain,
    /// `|` or `>`, and whether its header leaves the indentation to be found from the content.
    Block {
        auto_indent: bool,
    },
}

/// The tokens of a text, reduced to what [`check`] needs.
struct Scan {
    /// Byte offset and flow depth after each token, in token order: the flow depth at a position
    /// is the one after the last token starting before it.
    depths: Vec<(usize, usize)>,
    /// Byte ranges of the scalars, and their kinds.
    scalars: Vec<(usize, usize, Kind)>,
    /// How far the scan got: positions past it are [`Context::Unknown`].
    reached: usize,
    /// The first tab after a block indicator, as its line and column.
    rejected: Option<(usize, usize)>,
}

impl Scan {
    fn context_at(&self, at: usize) -> Context {
        if at > self.reached {
            return Context::Unknown;
        }
        // Scalars come in text order and do not overlap: the last one starting before `at`.
        let before = self.scalars.partition_point(|&(start, _, _)| start < at);
        if let Some(index) = before.checked_sub(1) {
            let (start, end, kind) = self.scalars[index];
            if at < end {
                return match kind {
                    Kind::Quoted => Context::Quoted,
                    Kind::Block { auto_indent: true } => Context::BlockScalar(start),
                    Kind::Plain | Kind::Block { .. } => Context::Scalar,
                };
            }
        }
        let after = self.depths.partition_point(|&(start, _)| start < at);
        match after.checked_sub(1).map(|i| self.depths[i].1) {
            Some(depth) if depth > 0 => Context::Flow,
            _ => Context::Block,
        }
    }
}

/// Scans `spaced` (the text with leading tabs made spaces); `original` is the text itself, which
/// has the same length and differs only in those tabs.
fn scan(spaced: &str, original: &str) -> Scan {
    let mut result = Scan { depths: Vec::new(), scalars: Vec::new(), reached: 0, rejected: None };
    let mut depth: usize = 0;
    // Where the token before ended: a block scalar's span starts at its content, after the `|`
    // or `>` line, so the scalar is taken to start there.
    let mut previous_end = 0;
    for token in Scanner::new(StrInput::new(spaced)) {
        let token = match token {
            Ok(token) => token,
            Err(error) => {
                result.reached = error.marker().byte_offset().unwrap_or(result.reached);
                return result;
            }
        };
        let span = token.span();
        let (Some(start), Some(end)) = (span.start.byte_offset(), span.end.byte_offset()) else {
            return result;
        };
        result.reached = start;
        match token.token_type() {
            TokenType::FlowSequenceStart | TokenType::FlowMappingStart => depth += 1,
            TokenType::FlowSequenceEnd | TokenType::FlowMappingEnd => depth = depth.saturating_sub(1),
            TokenType::Scalar(style, _) => match style {
                ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                    result.scalars.push((start, end, Kind::Quoted));
                }
                ScalarStyle::Literal | ScalarStyle::Folded => {
                    let header = original.get(previous_end..start).unwrap_or("");
                    let header = header.split('\n').next().unwrap_or("");
                    let auto_indent = !header.bytes().any(|b| b.is_ascii_digit());
                    result.scalars.push((previous_end, end, Kind::Block { auto_indent }));
                }
                _ => result.scalars.push((start, end, Kind::Plain)),
            },
            TokenType::BlockEntry if depth == 0 => check_indicator(&mut result, original, start, '-'),
            TokenType::Key if depth == 0 => check_indicator(&mut result, original, start, '?'),
            TokenType::Value if depth == 0 => check_indicator(&mut result, original, start, ':'),
            _ => {}
        }
        result.depths.push((start, depth));
        previous_end = previous_end.max(end);
    }
    result.reached = spaced.len();
    result
}

/// Notes the first tab between the block indicator `indicator` of the token at `at` and content
/// after it on the same line, if the indicator is one after which libyaml does not skip tabs: a
/// block sequence's `-`, an explicit key's `?`, or a `:` opening its line (after a key, `:`
/// allows tabs). The scanner puts some of these tokens at the content after the indicator.
fn check_indicator(scan: &mut Scan, text: &str, at: usize, indicator: char) {
    if scan.rejected.is_none() {
        scan.rejected = tab_after_indicator(text, at, indicator);
    }
}

fn tab_after_indicator(text: &str, at: usize, indicator: char) -> Option<(usize, usize)> {
    // The token is at the indicator, or at the content after it (`-\tname`: at `name`).
    let before = text.get(..at)?.trim_end_matches([' ', '\t']);
    let position = match before.strip_suffix(indicator) {
        Some(head) => head.len(),
        None if text[at..].starts_with(indicator) => at,
        None => return None,
    };
    let line_start = text[..position].rfind('\n').map_or(0, |i| i + 1);
    let opens_line = text[line_start..position].bytes().all(|b| b == b' ' || b == b'\t');
    if indicator == ':' && !opens_line {
        return None;
    }
    let rest = &text[position + indicator.len_utf8()..];
    let gap = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let tab = rest[..gap].find('\t')?;
    match rest[gap..].chars().next() {
        // not separating the indicator from content: a tab before a comment or a line break
        None | Some('\n' | '\r' | '#') => None,
        Some(_) => {
            let line = 1 + text[..position].matches('\n').count();
            Some((line, position - line_start + 1 + tab + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(text: &str) -> Option<(usize, usize)> {
        check(text).rejected
    }

    #[test]
    fn texts_without_tabs_are_untouched() {
        let tabs = check("a:\n  - b\n");
        assert_eq!(tabs, Tabs { text: Cow::Borrowed("a:\n  - b\n"), rejected: None });
    }

    #[test]
    fn tabs_indenting_block_content_are_rejected() {
        assert_eq!(rejected("a:\n  b: 1\n\tc: 2\n"), Some((3, 1)));
        assert_eq!(rejected("b:\n  c:\n  \td: 2\n"), Some((3, 3)));
        assert_eq!(rejected("metadata:\n\tname: x\n"), Some((2, 1)));
        assert_eq!(rejected("\ta: b\n"), Some((1, 1)));
        assert_eq!(rejected("sources:\n\t- name: a\n"), Some((2, 1)));
    }

    #[test]
    fn tabs_after_block_indicators_are_rejected() {
        assert_eq!(rejected("items:\n-\tname: x\n"), Some((2, 2)));
        assert_eq!(rejected("- a\n- \tb\n"), Some((2, 3)));
        assert_eq!(rejected("a:\n  -\tx\n"), Some((2, 4)));
        assert_eq!(rejected("? a\n:\tb\n"), Some((2, 2)));
        // after a key's `:`, and before a comment or the end of the line, tabs separate
        assert_eq!(rejected("a:\tb\n"), None);
        assert_eq!(rejected("-\t# c\n  x\n"), None);
    }

    #[test]
    fn tabs_in_flow_collections_and_quoted_scalars_become_spaces() {
        for (text, spaced) in [
            ("a: [\n\t1, 2]\n", "a: [\n 1, 2]\n"),
            ("a:\n  b: {\n\tc: 1}\n", "a:\n  b: {\n c: 1}\n"),
            ("a: \"x\n\ty\"\n", "a: \"x\n y\"\n"),
            ("a: 'x\n\t\ty'\n", "a: 'x\n  y'\n"),
            ("a: 1\n\t\n\t# c\nb: 2\n", "a: 1\n \n # c\nb: 2\n"),
        ] {
            let tabs = check(text);
            assert_eq!(tabs.rejected, None, "{text:?}");
            assert_eq!(tabs.text, spaced, "{text:?}");
        }
    }

    #[test]
    fn tabs_in_block_and_plain_scalars_are_left_to_the_parser() {
        for text in ["a: |\n  x\n  \ty\n", "a:\n  x\n  \ty\n", "a: 1\t# c\n"] {
            let tabs = check(text);
            assert_eq!(tabs, Tabs { text: Cow::Borrowed(text), rejected: None }, "{text:?}");
        }
        // but a tab after the spaces that set a block scalar's indentation is not content
        assert_eq!(rejected("a: |\n\tb\n"), Some((2, 1)));
        assert_eq!(rejected("a: |-\n\n   \tx\n    y\n"), Some((3, 4)));
        assert_eq!(rejected("a: |2\n   \tx\n"), None);
        // whitespace in a block scalar stays as written, even on a line without content
        let tabs = check("a: |\n  x\n   \t\n  y\n");
        assert_eq!(tabs, Tabs { text: Cow::Borrowed("a: |\n  x\n   \t\n  y\n"), rejected: None });
        // a line that ends the block scalar is block content again
        assert_eq!(rejected("a: |\n  x\n\ty: 1\n"), Some((3, 1)));
    }
}
