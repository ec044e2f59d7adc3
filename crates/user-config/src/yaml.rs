//! The last check: the rendered text must be one YAML mapping, the shape of a UEP
//! configuration. Parsing with serde-saphyr (the project's YAML reader, with its default
//! budget against alias bombs) here means a broken template is reported to the user as
//! such, with the YAML error, instead of as a UEP that fails to start.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::RenderError;

/// Lines of rendered text quoted in a [`RenderError::NotAMapping`].
const EXCERPT_LINES: usize = 40;

/// Refuses `text` unless it parses as a YAML mapping.
pub(crate) fn check_mapping(text: &str) -> Result<(), RenderError> {
    let not_a_mapping = |detail: String| RenderError::NotAMapping {
        detail,
        excerpt: excerpt(text),
    };
    match serde_saphyr::from_str::<Shape>(text) {
        Ok(Shape::Mapping) => Ok(()),
        Ok(Shape::Other(what)) => Err(not_a_mapping(format!(
            "the document is {what}; it must be `key: value` lines such as `engine:`"
        ))),
        Err(e) => Err(not_a_mapping(e.to_string())),
    }
}

fn excerpt(text: &str) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .take(EXCERPT_LINES)
        .enumerate()
        .map(|(i, line)| format!("{:>4} | {line}", i + 1))
        .collect();
    if text.lines().nth(EXCERPT_LINES).is_some() {
        lines.push("     | ...".to_owned());
    }
    lines.join("\n")
}

/// The top-level shape of a YAML document, read without keeping its contents (so keys
/// of any type, and values of any kind, are accepted).
enum Shape {
    Mapping,
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape::Mapping)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other("a list"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Other("empty (or null)"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Other("empty (or null)"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other("a single boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other("a single number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other("a single number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other("a single number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other("a single string"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Shape, E> {
        Ok(Shape::Other("binary data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(check_mapping("engine:\n  type: X\n1: a\n").is_ok());
        assert!(check_mapping("{}").is_ok());
        for bad in [
            "",
            "- a\n- b\n",
            "just text",
            "42",
            "a: [1\n",
            "a: 1\na: 2\n",
        ] {
            assert!(
                matches!(check_mapping(bad), Err(RenderError::NotAMapping { .. })),
                "{bad:?}"
            );
        }
    }
}
