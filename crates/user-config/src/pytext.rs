//! Values printed the way Jinja2 prints them, which is Python's `str()`.
//!
//! Globus Compute renders with Jinja2, so `{{ flag }}` prints `True`, `{{ nothing }}`
//! prints `None`, `{{ 1e20 }}` prints `1e+20` and `{{ modules }}` prints a Python list
//! such as `['"gcc"', 12]`. MiniJinja already prints most values the Python way, but not
//! floats (`100000000000000000000.0` for `1e+20`, also inside lists and dicts). This
//! module prints every value as Python does; it is installed as the environment's
//! formatter and as the `string` filter, so templates written for Globus produce the
//! same text.
//!
//! Limits of the imitation: Python's "printable" test for non-ASCII characters is
//! approximated by the ranges below (only template literals and endpoint-side values can
//! reach it: users' strings are ASCII after quoting).

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

use crate::context::DeprecatedVar;

/// Deepest container nesting printed; deeper values are an error, not a stack overflow.
const MAX_PRINT_DEPTH: usize = 64;

/// Python's `str(value)`: strings as they are, everything else as [`repr`].
pub(crate) fn python_str(value: &Value) -> Result<String, Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.to_owned());
    }
    let mut out = String::new();
    repr_into(&mut out, value, 0)?;
    Ok(out)
}

fn repr_into(out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
    if depth > MAX_PRINT_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("value nested more than {MAX_PRINT_DEPTH} levels deep cannot be printed"),
        ));
    }
    if let Some(var) = value.downcast_object_ref::<DeprecatedVar>() {
        var.warn();
        return repr_into(out, &var.inner, depth);
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                match f64::try_from(value.clone()) {
                    Ok(f) => out.push_str(&python_float(f)),
                    Err(_) => {
                        let _ = write!(out, "{value}");
                    }
                }
            }
        }
        ValueKind::String => out.push_str(&python_str_repr(value.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            // Pairs from `items` and `dictsort` are tuples, as in Python.
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut count = 0;
            for item in value.try_iter()? {
                if count > 0 {
                    out.push_str(", ");
                }
                repr_into(out, &item, depth + 1)?;
                count += 1;
            }
            if tuple {
                out.push_str(if count == 1 { ",)" } else { ")" });
            } else {
                out.push(']');
            }
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(out, &key, depth + 1)?;
                out.push_str(": ");
                repr_into(out, &value.get_item(&key)?, depth + 1)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr(float)`: the shortest text that reads back the same, in scientific
/// notation when the decimal exponent is below -4 or above 15 (`1e+16`, `1e-05`), with
/// `.0` on whole numbers, and `inf`, `-inf`, `nan`.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf" } else { "inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e17", "5e-7".
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // The value is 0.DIGITS * 10^point.
    let point = exponent + 1;
    let body = if !(-4 < point && point <= 16) {
        let (first, rest) = digits.split_at(1);
        let dot_rest = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{dot_rest}e{exp_sign}{:02}", exponent.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if point >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`; backslash
/// escapes for the quote, `\`, tab, newline, return, and non-printable characters.
pub(crate) fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 && !is_printable(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !is_printable(c) && (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if !is_printable(c) => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// An approximation of Python's `str.isprintable` for one character: false for control
/// and format characters, separators other than the space, private-use characters and
/// noncharacters.
fn is_printable(c: char) -> bool {
    let u = c as u32;
    !(c.is_control()
        || matches!(
            u,
            0xA0 | 0xAD
                | 0x600..=0x605
                | 0x61C
                | 0x6DD
                | 0x70F
                | 0x1680
                | 0x180E
                | 0x2000..=0x200F
                | 0x2028..=0x202F
                | 0x205F..=0x2064
                | 0x2066..=0x206F
                | 0x3000
                | 0xD800..=0xF8FF
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0xFFFE..=0xFFFF
                | 0xE0000..=0xE0FFF
                | 0xF0000..=0x10FFFF
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        for (f, text) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (2.5, "2.5"),
            (-2.5, "-2.5"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (3.0e-7, "3e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
            (123.456, "123.456"),
        ] {
            assert_eq!(python_float(f), text, "{f:e}");
        }
    }

    #[test]
    fn strings_repr_like_python() {
        assert_eq!(python_str_repr("\"a\""), r#"'"a"'"#);
        assert_eq!(python_str_repr("it's"), r#""it's""#);
        assert_eq!(python_str_repr("it's \"x\""), r#"'it\'s "x"'"#);
        assert_eq!(
            python_str_repr("a\\b\n\u{1}\u{7f}é\u{a0}"),
            r"'a\\b\n\x01\x7fé\xa0'"
        );
    }
}
