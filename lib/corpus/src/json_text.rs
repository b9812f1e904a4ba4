//! Pull one string field out of a JSON object without building the whole object: other fields
//! are skipped by the parser, so records with large metadata cost little.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// What a record's text field turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Field {
    Text(String),
    /// The object has no such key.
    Missing,
    /// The key is present but its value is not a string (null, number, ...): the kind found.
    NotAString(&'static str),
}

/// A seed that deserializes a JSON object and keeps only `key`.
pub struct TextField<'k> {
    pub key: &'k str,
}

impl<'de> DeserializeSeed<'de> for TextField<'_> {
    type Value = Field;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TextField<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object with a {:?} field", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        let mut found = Field::Missing;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == self.key && found == Field::Missing {
                found = map.next_value::<AnyString>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A value that is kept if it is a string and otherwise described by its kind.
struct AnyString(Field);

impl<'de> de::Deserialize<'de> for AnyString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<AnyString, E> {
                Ok(AnyString(Field::Text(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<AnyString, E> {
                Ok(AnyString(Field::Text(v)))
            }
            fn visit_unit<E>(self) -> Result<AnyString, E> {
                Ok(AnyString(Field::NotAString("null")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyString, E> {
                Ok(AnyString(Field::NotAString("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<AnyString, E> {
                Ok(AnyString(Field::NotAString("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<AnyString, E> {
                Ok(AnyString(Field::NotAString("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<AnyString, E> {
                Ok(AnyString(Field::NotAString("a number")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyString(Field::NotAString("an array")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyString(Field::NotAString("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse one JSON line (already known to be UTF-8) and extract `key`.
pub fn extract_from_line(line: &str, key: &str) -> Result<Field, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let field = TextField { key }.deserialize(&mut de)?;
    de.end()?;
    Ok(field)
}

/// serde_json's message for an error in `line`, made plain for a lone UTF-16 surrogate escape
/// (serde_json reports those as "unexpected end of hex escape" or "lone leading surrogate").
pub fn describe_error(line: Option<&str>, e: &serde_json::Error) -> String {
    let message = e.to_string();
    if !(message.contains("hex escape") || message.contains("surrogate")) {
        return message;
    }
    match line.and_then(lone_surrogate) {
        Some((column, escape)) => format!(
            "a lone UTF-16 surrogate escape {escape} at column {column}: a character outside the Basic Multilingual Plane \
             is written as a pair \\uD800-\\uDBFF then \\uDC00-\\uDFFF, and half a pair is no character ({message})"
        ),
        None => format!("{message} (a \\uD800-\\uDFFF escape that is not half of a surrogate pair?)"),
    }
}

/// The 1-based column and text of the first `\uXXXX` escape in `line` that is half of a
/// surrogate pair without its other half.
fn lone_surrogate(line: &str) -> Option<(usize, String)> {
    let b = line.as_bytes();
    let escape_at = |i: usize| -> Option<u16> {
        (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
            .then(|| line.get(i + 2..i + 6).and_then(|h| u16::from_str_radix(h, 16).ok()))
            .flatten()
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(high @ 0xD800..=0xDBFF) => match escape_at(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => return Some((i + 1, format!("\\u{high:04x}"))),
            },
            Some(low @ 0xDC00..=0xDFFF) => return Some((i + 1, format!("\\u{low:04x}"))),
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_and_skips() {
        let line = r#"{"id": 3, "meta": {"text": "nested"}, "text": "h\u00e9llo \"x\"", "z": [1, {"a": null}]}"#;
        assert_eq!(extract_from_line(line, "text").unwrap(), Field::Text("héllo \"x\"".into()));
        assert_eq!(extract_from_line(line, "content").unwrap(), Field::Missing);
        assert_eq!(extract_from_line(r#"{"text": null}"#, "text").unwrap(), Field::NotAString("null"));
        assert_eq!(extract_from_line(r#"{"text": 5}"#, "text").unwrap(), Field::NotAString("a number"));
        assert!(extract_from_line(r#"{"text": "a"} trailing"#, "text").is_err());
        assert!(extract_from_line(r#"["text"]"#, "text").is_err());
        assert!(extract_from_line(r#"{"text": "\ud800"}"#, "text").is_err(), "lone surrogate");
    }

    #[test]
    fn lone_surrogates_are_named_plainly() {
        for (line, column, escape) in [
            (r#"{"text": "ab\ud800"}"#, 13, "\\ud800"),
            (r#"{"text": "\\u0041 \ud83d\ude00 x \udc00 y"}"#, 34, "\\udc00"),
            (r#"{"text": "\uD800\u0041"}"#, 11, "\\ud800"),
        ] {
            let e = extract_from_line(line, "text").unwrap_err();
            let m = describe_error(Some(line), &e);
            assert!(m.contains(&format!("lone UTF-16 surrogate escape {escape} at column {column}")), "{line}: {m}");
        }
        // A valid pair and an escaped backslash before "u" are no surrogates.
        assert_eq!(lone_surrogate(r#"{"text": "\ud83d\ude00 \\ud800"}"#), None);
        let e = extract_from_line("{", "text").unwrap_err();
        assert_eq!(describe_error(Some("{"), &e), e.to_string());
    }
}
