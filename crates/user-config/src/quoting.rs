//! How the user's values enter the template: every string JSON-quoted first, exactly as
//! Globus Compute quotes them, so a value cannot break out of its YAML scalar.
//!
//! Globus Compute 4.19 passes each user string through Python's `json.dumps` before
//! rendering (ASCII-only output: everything outside `' '..='~'` is escaped), leaves
//! numbers and booleans as they are, turns `null` into the four-letter string `null`,
//! and walks lists and the values of objects (keys are left alone). A template therefore
//! sees `"test"`, quotes included, for the user's `test`, and a template written for
//! Globus that compares `x == '"test"'` behaves the same here.

use serde_json::{Map, Value};

use crate::RenderError;

/// The variable names the endpoint reserves for its own values; a user may not pass them.
pub const RESERVED_NAMES: [&str; 4] = ["parent_config", "user_runtime", "mapped_identity", "_GC"];

/// Refuses user variables that use a reserved name.
pub(crate) fn check_reserved(user_opts: &Map<String, Value>) -> Result<(), RenderError> {
    match RESERVED_NAMES
        .iter()
        .find(|name| user_opts.contains_key(**name))
    {
        Some(name) => Err(RenderError::ReservedName {
            name: (*name).to_owned(),
        }),
        None => Ok(()),
    }
}

/// The user's values as the template sees them: strings JSON-quoted, `null` as the
/// string `null`, numbers and booleans unchanged, containers walked (keys unchanged).
///
/// Recursion depth is bounded by the caller's limit check on the same value.
pub(crate) fn quote_value(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(python_json_string(s)),
        Value::Null => Value::String("null".to_owned()),
        Value::Bool(_) | Value::Number(_) => value.clone(),
        Value::Array(items) => Value::Array(items.iter().map(quote_value).collect()),
        Value::Object(map) => Value::Object(quote_map(map)),
    }
}

/// [`quote_value`] over every value of an object.
pub(crate) fn quote_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), quote_value(v)))
        .collect()
}

/// `s` as Python's `json.dumps(s)` writes it (with its default `ensure_ascii=True`):
/// in double quotes, `"` and `\` escaped, `\n \r \t \b \f` as such, and every other
/// character outside printable ASCII as `\uXXXX` (lowercase hex, UTF-16 surrogate pairs
/// above U+FFFF).
pub fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_quoted_like_python_json_dumps() {
        assert_eq!(python_json_string("test"), r#""test""#);
        assert_eq!(python_json_string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            python_json_string("x\nengine: evil"),
            r#""x\nengine: evil""#
        );
        assert_eq!(
            python_json_string("é😀\u{7f}\u{1}\u{8}\u{c}\t\r"),
            r#""\u00e9\ud83d\ude00\u007f\u0001\b\f\t\r""#
        );
    }

    #[test]
    fn only_strings_and_null_change() {
        let v = json!({"s": "a", "n": null, "i": 3, "f": 1.5, "b": true, "l": ["x", null, [2]], "d": {"k\"": "v"}});
        assert_eq!(
            quote_value(&v),
            json!({"s": "\"a\"", "n": "null", "i": 3, "f": 1.5, "b": true, "l": ["\"x\"", "null", [2]], "d": {"k\"": "\"v\""}})
        );
    }
}
