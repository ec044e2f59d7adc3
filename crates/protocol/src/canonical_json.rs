//! A canonical JSON text for a JSON value: the same value always gives the same bytes,
//! whatever order its keys arrived in. Gantry hashes it to name user endpoints.
//!
//! The form:
//! - no whitespace outside strings; `,` and `:` as separators;
//! - object keys sorted by Unicode code point (the same as UTF-8 byte order), at every
//!   depth; arrays keep their order;
//! - strings: raw UTF-8, with only `"`, `\` and the control characters U+0000–U+001F
//!   escaped (`\b \t \n \f \r` short, the rest as `\u00xx` in lowercase hex);
//! - integers in plain decimal; other numbers in the shortest form that reads back to
//!   the same `f64`, as the `ryu` crate writes it (`1.0`, `0.1`, `1e16`, `1e-7`).
//!
//! For values without floats this is byte-for-byte what Python writes with
//! `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//! Floats may be written differently (`1e16` here, `1e+16` there; `1e-5` here, `1e-05`
//! there; `-0.0` for Python's `-0.0` but also for an input `-0`); the form is fixed here
//! regardless of which serde_json features other crates turn on. Integers beyond 64
//! bits arrive as floats and lose their identity; the service refuses such numbers in
//! a user endpoint config rather than let two configs share a UEP.

use serde_json::Value;

/// Writes `value` in canonical form.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            if let Some(i) = number.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = number.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = number.as_f64() {
                out.push_str(ryu::Buffer::new().format(f));
            } else {
                // Only reachable with serde_json's arbitrary precision, for a number
                // beyond f64: keep its own digits rather than invent some.
                out.push_str(&number.to_string());
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_whitespace_dropped() {
        let value: Value = serde_json::from_str(
            r#"{ "b": [3, {"z": 1, "a": null}], "a": "x", "é": 1, "Z": true }"#,
        )
        .unwrap();
        assert_eq!(
            to_canonical_string(&value),
            r#"{"Z":true,"a":"x","b":[3,{"a":null,"z":1}],"é":1}"#
        );
    }

    #[test]
    fn strings_escape_only_what_json_requires() {
        let value = json!("q\"b\\s\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}ü𝄞\u{2028}");
        assert_eq!(
            to_canonical_string(&value),
            "\"q\\\"b\\\\s\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}ü𝄞\u{2028}\""
        );
    }

    #[test]
    fn numbers_have_one_form() {
        let value: Value =
            serde_json::from_str("[1, -1, 18446744073709551615, 1.0, 0.1, 1e16, 1.5e-7, -0.0]")
                .unwrap();
        assert_eq!(
            to_canonical_string(&value),
            "[1,-1,18446744073709551615,1.0,0.1,1e16,1.5e-7,-0.0]"
        );
    }

    #[test]
    fn equal_values_give_equal_text() {
        let a: Value = serde_json::from_str(r#"{"x":{"p":1,"q":[1,2]},"y":"z"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":"z","x":{"q":[1,2],"p":1}}"#).unwrap();
        assert_eq!(to_canonical_string(&a), to_canonical_string(&b));
    }
}
