//! The `shell_escape` template filter, as Globus Compute defines it.
//!
//! A user's string reaches the template JSON-quoted (`"a b"`), and the YAML reader takes
//! the quotes off again. So the filter decodes the JSON string, quotes the text for a
//! POSIX shell (Python's `shlex.quote`), and JSON-quotes the result: the YAML value is
//! then the shell-quoted text, safe to paste into `worker_init` or a scheduler option.
//! Values that are not strings, and strings whose JSON is not a string (a quoted number
//! such as `123`), come back unchanged; a string that is not JSON at all (a literal
//! in the template) is an error, as in Globus Compute.

use minijinja::{Error, ErrorKind, Value};

use crate::quoting::python_json_string;

/// The filter: see the module documentation.
pub(crate) fn shell_escape(value: Value) -> Result<Value, Error> {
    let Some(text) = value.as_str() else {
        return Ok(value);
    };
    // Python's json.loads also reads these three non-standard numbers.
    if matches!(text.trim(), "NaN" | "Infinity" | "-Infinity") {
        return Ok(value);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(decoded)) => {
            Ok(Value::from(python_json_string(&shlex_quote(&decoded))))
        }
        Ok(_) => Ok(value),
        Err(e) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "shell_escape expects a JSON-quoted string such as a user variable, \
                 got {text:?} ({e})"
            ),
        )),
    }
}

/// Python's `shlex.quote`: `''` for the empty string, the text unchanged when it holds
/// only `[A-Za-z0-9_@%+=:,./-]`, otherwise the text in single quotes with each `'`
/// written as `'"'"'`.
pub fn shlex_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    let safe = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if safe {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shlex_quote_matches_python() {
        assert_eq!(shlex_quote(""), "''");
        assert_eq!(
            shlex_quote("abc/d-e.f=1,2:3@4%5+6_"),
            "abc/d-e.f=1,2:3@4%5+6_"
        );
        assert_eq!(shlex_quote("a b'c"), r#"'a b'"'"'c'"#);
        assert_eq!(shlex_quote("é"), "'é'");
        assert_eq!(shlex_quote("$(rm -rf ~)"), "'$(rm -rf ~)'");
    }

    #[test]
    fn filter_decodes_quotes_and_requotes() {
        let out = shell_escape(Value::from("\"a b'c\"")).unwrap();
        assert_eq!(out.as_str().unwrap(), r#""'a b'\"'\"'c'""#);
        assert_eq!(
            shell_escape(Value::from("123")).unwrap(),
            Value::from("123")
        );
        assert_eq!(shell_escape(Value::from(5)).unwrap(), Value::from(5));
        assert!(shell_escape(Value::from("abc")).is_err());
    }
}
