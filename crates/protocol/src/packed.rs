//! Packed buffers and serialization headers: the text format of `function_code`,
//! task payloads and `task_buffer`.
//!
//! A packed buffer is a concatenation of `"<len>\n<buffer>"` records, where `len` is
//! the buffer's length in Unicode **code points** (the SDK is Python, where `len(str)`
//! counts code points), not bytes. Each buffer is a serialized value that starts with a
//! two-character strategy identifier and a newline (`"00\n..."`). Gantry never decodes
//! the dill or base64 behind the header; it only needs to recognise and route it.

use std::fmt;

/// Why a packed buffer could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// A record had no newline after its length.
    #[error("packed buffer record {index} has no newline after its length")]
    MissingDelimiter {
        /// Zero-based index of the record.
        index: usize,
    },
    /// The length was not a plain decimal number.
    #[error("packed buffer record {index} has an invalid length {length:?}")]
    InvalidLength {
        /// Zero-based index of the record.
        index: usize,
        /// The text found where the length should be (at most 32 characters of it).
        length: String,
    },
    /// The record claims more code points than remain in the input.
    #[error(
        "packed buffer record {index} claims {claimed} code points but only {available} remain"
    )]
    Truncated {
        /// Zero-based index of the record.
        index: usize,
        /// The length the record announced.
        claimed: usize,
        /// The code points that were left.
        available: usize,
    },
}

/// Joins buffers into one packed string, each prefixed by its length in code points.
pub fn pack_buffers<S: AsRef<str>>(buffers: &[S]) -> String {
    let mut out = String::with_capacity(buffers.iter().map(|b| b.as_ref().len() + 8).sum());
    for buffer in buffers {
        let buffer = buffer.as_ref();
        out.push_str(&buffer.chars().count().to_string());
        out.push('\n');
        out.push_str(buffer);
    }
    out
}

/// Splits a packed string into its buffers, borrowing from the input.
///
/// Stricter than the SDK's reader on purpose: a length that is not plain ASCII digits,
/// or one that runs past the end of the input, is an error rather than a silently
/// shortened buffer, so a truncated message is noticed where it is read.
pub fn unpack_buffers(packed: &str) -> Result<Vec<&str>, PackedError> {
    let mut buffers = Vec::new();
    let mut rest = packed;
    while !rest.is_empty() {
        let index = buffers.len();
        let (length_text, after) = rest
            .split_once('\n')
            .ok_or(PackedError::MissingDelimiter { index })?;
        let invalid = || PackedError::InvalidLength {
            index,
            length: length_text.chars().take(32).collect(),
        };
        if length_text.is_empty() || !length_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let claimed: usize = length_text.parse().map_err(|_| invalid())?;
        let end = byte_offset_of_char(after, claimed).ok_or_else(|| PackedError::Truncated {
            index,
            claimed,
            available: after.chars().count(),
        })?;
        buffers.push(&after[..end]);
        rest = &after[end..];
    }
    Ok(buffers)
}

/// The byte offset just past the first `chars` code points of `text`, if it has that many.
fn byte_offset_of_char(text: &str, chars: usize) -> Option<usize> {
    if chars == 0 {
        return Some(0);
    }
    // A code point is at least one byte, so a short text can be refused without a scan.
    if chars > text.len() {
        return None;
    }
    match text.char_indices().nth(chars) {
        Some((offset, _)) => Some(offset),
        None if text.chars().count() == chars => Some(text.len()),
        None => None,
    }
}

/// The strategy named by the two characters that start a serialized value.
///
/// The identifiers are those of the SDK's `ComputeSerializer`; unknown ones are kept as
/// [`Strategy::Other`] so that a newer SDK's payload still routes through Gantry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// `00`: any Python value, dill-pickled then base64-encoded. The default for data.
    DillDataBase64,
    /// `01`: a function pickled by dill. The default for code.
    DillCode,
    /// `02`: a function pickled by the standard library.
    PickleCode,
    /// `03`: source text found by `inspect`, loaded with dill.
    DillCodeTextInspect,
    /// `04`: source text found by dill.
    DillCodeSource,
    /// `10`: several code strategies in one buffer, tried in turn.
    CombinedCode,
    /// `11`: a JSON document.
    JsonData,
    /// `12`: every code strategy, tried in turn.
    AllCodeStrategies,
    /// `13`: every data strategy, tried in turn.
    AllDataStrategies,
    /// `st`: plain source text found by `inspect`.
    PureSourceTextInspect,
    /// `sd`: plain source text found by dill.
    PureSourceDill,
    /// Any other two-character identifier.
    Other([char; 2]),
}

impl Strategy {
    /// Reads the strategy from the first three characters (`"xy\n"`) of a serialized value.
    pub fn of_serialized(serialized: &str) -> Option<Strategy> {
        let mut chars = serialized.chars();
        let (a, b, newline) = (chars.next()?, chars.next()?, chars.next()?);
        if newline != '\n' || a == '\n' || b == '\n' {
            return None;
        }
        Some(match [a, b] {
            ['0', '0'] => Strategy::DillDataBase64,
            ['0', '1'] => Strategy::DillCode,
            ['0', '2'] => Strategy::PickleCode,
            ['0', '3'] => Strategy::DillCodeTextInspect,
            ['0', '4'] => Strategy::DillCodeSource,
            ['1', '0'] => Strategy::CombinedCode,
            ['1', '1'] => Strategy::JsonData,
            ['1', '2'] => Strategy::AllCodeStrategies,
            ['1', '3'] => Strategy::AllDataStrategies,
            ['s', 't'] => Strategy::PureSourceTextInspect,
            ['s', 'd'] => Strategy::PureSourceDill,
            other => Strategy::Other(other),
        })
    }

    /// The two-character identifier, as written before the newline.
    pub fn identifier(self) -> String {
        let pair = match self {
            Strategy::DillDataBase64 => ['0', '0'],
            Strategy::DillCode => ['0', '1'],
            Strategy::PickleCode => ['0', '2'],
            Strategy::DillCodeTextInspect => ['0', '3'],
            Strategy::DillCodeSource => ['0', '4'],
            Strategy::CombinedCode => ['1', '0'],
            Strategy::JsonData => ['1', '1'],
            Strategy::AllCodeStrategies => ['1', '2'],
            Strategy::AllDataStrategies => ['1', '3'],
            Strategy::PureSourceTextInspect => ['s', 't'],
            Strategy::PureSourceDill => ['s', 'd'],
            Strategy::Other(pair) => pair,
        };
        pair.iter().collect()
    }

    /// Whether the SDK uses this strategy for functions rather than for data.
    pub fn is_for_code(self) -> Option<bool> {
        match self {
            Strategy::DillDataBase64 | Strategy::JsonData | Strategy::AllDataStrategies => {
                Some(false)
            }
            Strategy::Other(_) => None,
            _ => Some(true),
        }
    }

    /// Writes `value` behind this strategy's header, e.g. `"11\n" + json`.
    pub fn serialize_raw(self, value: &str) -> String {
        format!("{}\n{value}", self.identifier())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.identifier())
    }
}

/// Splits a serialized value into its strategy and the text after the header.
pub fn split_serialized(serialized: &str) -> Option<(Strategy, &str)> {
    let strategy = Strategy::of_serialized(serialized)?;
    let header_len: usize = serialized.chars().take(3).map(char::len_utf8).sum();
    Some((strategy, &serialized[header_len..]))
}

/// The JSON strategy (`11`) for a value Gantry produces itself, such as a result that
/// needs no Python to read (`None`, a string, a number).
pub fn serialize_json(value: &serde_json::Value) -> String {
    Strategy::JsonData.serialize_raw(&value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_code_points_not_bytes() {
        let packed = pack_buffers(&["héllo", "ü€𝄞"]);
        assert_eq!(packed, "5\nhéllo3\nü€𝄞");
        assert_eq!(unpack_buffers(&packed).unwrap(), vec!["héllo", "ü€𝄞"]);
    }

    #[test]
    fn empty_buffers_and_newlines_inside_buffers_round_trip() {
        let buffers = ["", "a\nb\n", "12\n", ""];
        let packed = pack_buffers(&buffers);
        assert_eq!(unpack_buffers(&packed).unwrap(), buffers.to_vec());
        assert_eq!(unpack_buffers("").unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn truncated_and_malformed_records_are_errors() {
        assert_eq!(
            unpack_buffers("5\nabc"),
            Err(PackedError::Truncated {
                index: 0,
                claimed: 5,
                available: 3
            })
        );
        assert_eq!(
            unpack_buffers("2\nab3\nü"),
            Err(PackedError::Truncated {
                index: 1,
                claimed: 3,
                available: 1
            })
        );
        assert_eq!(
            unpack_buffers("12"),
            Err(PackedError::MissingDelimiter { index: 0 })
        );
        for bad in ["+1\na", "-1\na", " 1\na", "1_0\na", "\na", "x\n"] {
            assert!(
                matches!(
                    unpack_buffers(bad),
                    Err(PackedError::InvalidLength { index: 0, .. })
                ),
                "{bad:?} should be refused"
            );
        }
        let huge = format!("{}\nabc", u128::MAX);
        assert!(matches!(
            unpack_buffers(&huge),
            Err(PackedError::InvalidLength { .. })
        ));
    }

    #[test]
    fn strategy_headers_are_recognised() {
        assert_eq!(
            split_serialized("00\nabc"),
            Some((Strategy::DillDataBase64, "abc"))
        );
        assert_eq!(
            split_serialized("11\n[1]"),
            Some((Strategy::JsonData, "[1]"))
        );
        assert_eq!(
            split_serialized("st\ndef f(): pass"),
            Some((Strategy::PureSourceTextInspect, "def f(): pass"))
        );
        assert_eq!(
            split_serialized("zé\nx"),
            Some((Strategy::Other(['z', 'é']), "x"))
        );
        assert_eq!(split_serialized("0\nx"), None);
        assert_eq!(split_serialized("00x"), None);
        assert_eq!(split_serialized("00"), None);
        assert_eq!(serialize_json(&serde_json::json!(null)), "11\nnull");
        for s in [
            "00", "01", "02", "03", "04", "10", "11", "12", "13", "st", "sd",
        ] {
            let strategy = Strategy::of_serialized(&format!("{s}\n")).unwrap();
            assert_eq!(strategy.identifier(), s);
            assert!(strategy.is_for_code().is_some());
        }
    }
}
