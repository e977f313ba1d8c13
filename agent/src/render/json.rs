//! JSON files to documents: one document per file, parsed with serde_json under the same limits
//! as YAML.

use serde::de::DeserializeSeed;

use super::value::{Budget, Doc, Failure, Parsed, ValueSeed};

/// Parses a JSON file holding one document. A file holding only whitespace has no documents.
pub(crate) fn parse_document(text: &str, budget: &Budget) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(start) = text.find(|c: char| !c.is_whitespace()) else {
        return parsed;
    };
    let line = 1 + text[..start].matches('\n').count();
    if let Err(message) = budget.start_document() {
        parsed.failure = Some(Failure { line: Some(line), object: None, message });
        return parsed;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let result = ValueSeed::json(budget).deserialize(&mut deserializer).and_then(|value| deserializer.end().map(|()| value));
    match result {
        Ok(value) => parsed.docs.push(Doc { value, line, index: 0 }),
        Err(error) => {
            let error_line = (error.line() > 0).then_some(error.line());
            let message = match budget.take_exceeded() {
                Some(limit) => limit,
                None => format!("invalid JSON: {error}"),
            };
            parsed.failure = Some(Failure { line: error_line.or(Some(line)), object: None, message });
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Limits;

    fn parse(text: &str, limits: &Limits) -> Parsed {
        parse_document(text, &Budget::new(limits, text.len() as u64))
    }

    #[test]
    fn one_document_with_its_line() {
        let parsed = parse("\n\n  {\"a\": [1, 2]}\n", &Limits::default());
        assert!(parsed.failure.is_none());
        assert_eq!(parsed.docs, vec![Doc { value: serde_json::json!({"a": [1, 2]}), line: 3, index: 0 }]);
    }

    #[test]
    fn empty_file_has_no_documents() {
        let parsed = parse(" \n\t\n", &Limits::default());
        assert!(parsed.docs.is_empty() && parsed.failure.is_none());
    }

    #[test]
    fn syntax_errors_and_trailing_data_report_lines() {
        let failure = parse("{\n\"a\": 1,\n\"b\": }\n", &Limits::default()).failure.expect("error");
        assert_eq!(failure.line, Some(3));
        assert!(failure.message.starts_with("invalid JSON: "), "{}", failure.message);

        let failure = parse("{}\n{}\n", &Limits::default()).failure.expect("trailing");
        assert_eq!(failure.line, Some(2));
        assert!(failure.message.contains("trailing characters"), "{}", failure.message);
    }

    #[test]
    fn depth_limit_applies() {
        let limits = Limits { max_depth: 10, ..Limits::default() };
        let deep = format!("{}{}", "[".repeat(11), "]".repeat(11));
        let failure = parse(&deep, &limits).failure.expect("too deep");
        assert!(failure.message.contains("max_depth"), "{}", failure.message);
        let ok = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(parse(&ok, &limits).failure.is_none());
    }
}
