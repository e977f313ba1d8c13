//! HTML text: escaping of everything that comes from git, the cluster or a request, and URL
//! path segments.

use std::fmt;

/// Text escaped for HTML element content and quoted attribute values: `&`, `<`, `>`, `"` and
/// `'` become entities, so a manifest's names and messages can never open a tag or leave an
/// attribute.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            let entity = match rest.as_bytes().get(at) {
                Some(b'&') => "&amp;",
                Some(b'<') => "&lt;",
                Some(b'>') => "&gt;",
                Some(b'"') => "&quot;",
                _ => "&#39;",
            };
            f.write_str(entity)?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// A URL path segment: unreserved characters as they are, every other byte percent-encoded.
pub struct Segment<'a>(pub &'a str);

impl fmt::Display for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn markup_characters_become_entities() {
        assert_eq!(Esc("<script>alert('x')</script>").to_string(), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(Esc("a\" onmouseover=\"x").to_string(), "a&quot; onmouseover=&quot;x");
        assert_eq!(Esc("Tom & Jerry é").to_string(), "Tom &amp; Jerry é");
        assert_eq!(Segment("shop/prod ü").to_string(), "shop%2Fprod%20%C3%BC");
        assert_eq!(Segment("web-1.a_b~").to_string(), "web-1.a_b~");
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_markup_and_reads_back(s in any::<String>()) {
            let escaped = Esc(&s).to_string();
            prop_assert!(!escaped.contains(['<', '>', '"', '\'']));
            let back = escaped.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&");
            prop_assert_eq!(back, s);
        }

        #[test]
        fn segments_are_unreserved_ascii(s in any::<String>()) {
            let encoded = Segment(&s).to_string();
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        }
    }
}
