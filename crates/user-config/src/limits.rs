//! Every bound this crate enforces, in one place, and the check of the user's variables
//! that runs before anything else looks at them.
//!
//! The variables come from whoever submits to the endpoint, so they are measured first:
//! a 10 MB string or a value nested a thousand levels deep is refused before the schema
//! validator, the quoting or the template engine walks it.

use serde_json::{Map, Value};

use crate::RenderError;

/// Most bytes the user's variables may take as compact JSON.
pub const MAX_VARIABLES_BYTES: usize = 64 * 1024;
/// Deepest nesting of the user's variables; the top-level object is level 1.
pub const MAX_VARIABLES_DEPTH: usize = 16;
/// Most bytes of rendered YAML.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The template engine's work budget for one render (MiniJinja fuel: about one unit per
/// instruction and per 64 bytes of data made), so a template loop cannot run forever or
/// fill memory. Real templates use a few thousand.
pub const RENDER_FUEL: u64 = 500_000;
/// Most files read beside the main template (for `include`, `import`, `extends`).
pub const MAX_SIBLING_FILES: usize = 64;
/// Largest template or schema file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most schema violations listed in one error.
pub const MAX_REPORTED_VIOLATIONS: usize = 10;

/// Refuses `value` when it is nested deeper than [`MAX_VARIABLES_DEPTH`] or larger than
/// [`MAX_VARIABLES_BYTES`] as compact JSON. `what` names the variables in the message.
/// Returns the size in bytes.
pub(crate) fn check_variables(what: &'static str, value: &Value) -> Result<usize, RenderError> {
    walk(what, vec![(value, 0, String::new())], 0)
}

/// [`check_variables`] for an object held as a map (the user's variables).
pub(crate) fn check_map(
    what: &'static str,
    map: &Map<String, Value>,
) -> Result<usize, RenderError> {
    let mut size = 2 + map.len().saturating_sub(1);
    let mut stack = Vec::new();
    for (key, item) in map.iter().rev() {
        size += json_string_len(key) + 1;
        check_size(what, size)?;
        stack.push((item, 1, format!("/{}", pointer_escape(key))));
    }
    walk(what, stack, size)
}

/// The walk is iterative, adds each container's size before queueing its items, and
/// stops as soon as a limit is crossed, so its cost is bounded by the limits rather than
/// by the input. `stack` holds (value, depth of its container, JSON pointer).
fn walk(
    what: &'static str,
    mut stack: Vec<(&Value, usize, String)>,
    mut size: usize,
) -> Result<usize, RenderError> {
    while let Some((v, depth, path)) = stack.pop() {
        match v {
            Value::Null => size += 4,
            Value::Bool(b) => size += if *b { 4 } else { 5 },
            Value::Number(n) => size += n.to_string().len(),
            Value::String(s) => size += json_string_len(s),
            Value::Array(items) => {
                check_depth(what, depth + 1, &path)?;
                size += 2 + items.len().saturating_sub(1);
                check_size(what, size)?;
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((item, depth + 1, format!("{path}/{i}")));
                }
            }
            Value::Object(map) => {
                check_depth(what, depth + 1, &path)?;
                size += 2 + map.len().saturating_sub(1);
                for (key, item) in map.iter().rev() {
                    size += json_string_len(key) + 1;
                    check_size(what, size)?;
                    stack.push((item, depth + 1, format!("{path}/{}", pointer_escape(key))));
                }
            }
        }
        check_size(what, size)?;
    }
    Ok(size)
}

fn check_size(what: &'static str, size: usize) -> Result<(), RenderError> {
    if size > MAX_VARIABLES_BYTES {
        return Err(RenderError::VariablesTooLarge {
            what,
            size,
            limit: MAX_VARIABLES_BYTES,
        });
    }
    Ok(())
}

fn check_depth(what: &'static str, depth: usize, path: &str) -> Result<(), RenderError> {
    if depth > MAX_VARIABLES_DEPTH {
        return Err(RenderError::VariablesTooDeep {
            what,
            path: if path.is_empty() {
                "the top level".to_owned()
            } else {
                path.to_owned()
            },
            limit: MAX_VARIABLES_DEPTH,
        });
    }
    Ok(())
}

/// Length of `s` as a JSON string with its quotes (serde_json's escaping).
fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub(crate) fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_matches_serde_json() {
        let v = json!({"a": [1, "x\"y\n", null, true, false, 2.5, [], {}], "b/c": {"é": "\u{1}"}});
        assert_eq!(
            check_variables("test", &v).unwrap(),
            serde_json::to_string(&v).unwrap().len()
        );
        assert_eq!(
            check_map("test", v.as_object().unwrap()).unwrap(),
            serde_json::to_string(&v).unwrap().len()
        );
    }

    #[test]
    fn exactly_the_depth_limit_passes() {
        let mut v = json!("leaf");
        for _ in 0..MAX_VARIABLES_DEPTH {
            v = json!({ "k": v });
        }
        assert!(check_variables("test", &v).is_ok());
        let v = json!({ "k": v });
        assert!(matches!(
            check_variables("test", &v),
            Err(RenderError::VariablesTooDeep { .. })
        ));
    }
}
