//! The id of a user endpoint (UEP), derived from what makes it distinct.
//!
//! A multi-user endpoint (MEP) runs one UEP per (user, configuration, Python). The
//! service must pick the same UEP id for the same inputs on every submit, across
//! restarts, and a new one when any input changes, so the id is a name-based UUID:
//!
//! ```text
//! uep_id = UUIDv5(namespace = MEP id,
//!                 name = b"gantry-uep-v1" 0x00 identity 0x00 config 0x00 python)
//! ```
//!
//! where, as UTF-8 bytes with no terminator:
//! - `identity` is the submitting identity's id as a lowercase hyphenated UUID
//!   (36 ASCII bytes, e.g. `0b1ea1b4-...`);
//! - `config` is the canonical JSON ([`crate::canonical_json`]) of the
//!   `user_endpoint_config` object; a submit without one counts as `{}`;
//! - `python` is the submitter's Python `major.minor` (e.g. `3.11`), or empty when the
//!   submit carries no `user_runtime`.
//!
//! UUIDv5 is SHA-1 over the namespace's 16 bytes followed by the name, truncated to
//! 128 bits with the version (5) and RFC 4122 variant bits set. The `gantry-uep-v1` tag
//! lets a later layout coexist without colliding with this one.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::canonical_json::to_canonical_string;

/// The tag that starts the name; it versions this layout.
pub const UEP_ID_LAYOUT_TAG: &[u8] = b"gantry-uep-v1";

/// The bytes hashed under the MEP's namespace, exposed so the layout can be checked.
pub fn uep_id_name(identity_id: Uuid, user_config: &Map<String, Value>, python: &str) -> Vec<u8> {
    let config = to_canonical_string(&Value::Object(user_config.clone()));
    let identity = identity_id.hyphenated().to_string();
    let mut name = Vec::with_capacity(
        UEP_ID_LAYOUT_TAG.len() + 3 + identity.len() + config.len() + python.len(),
    );
    name.extend_from_slice(UEP_ID_LAYOUT_TAG);
    name.push(0);
    name.extend_from_slice(identity.as_bytes());
    name.push(0);
    name.extend_from_slice(config.as_bytes());
    name.push(0);
    name.extend_from_slice(python.as_bytes());
    name
}

/// The UEP id for this MEP, identity, configuration and Python `major.minor`.
pub fn derive_uep_id(
    mep_id: Uuid,
    identity_id: Uuid,
    user_config: &Map<String, Value>,
    python: &str,
) -> Uuid {
    Uuid::new_v5(&mep_id, &uep_id_name(identity_id, user_config, python))
}

/// The submitter's Python `major.minor` from a submit's `user_runtime`, if it says.
///
/// Reads `python.version_tuple` first (SDK 3.x and 4.x), then `python.version`
/// (`"3.11.7"`), then the older `python_version` (`sys.version`, `"3.11.7 (main, ...)"`).
pub fn python_major_minor(user_runtime: &Value) -> Option<String> {
    let python = user_runtime.get("python");
    if let Some([major, minor, ..]) = python
        .and_then(|p| p.get("version_tuple"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        && let (Some(major), Some(minor)) = (major.as_u64(), minor.as_u64())
    {
        return Some(format!("{major}.{minor}"));
    }
    python
        .and_then(|p| p.get("version"))
        .and_then(Value::as_str)
        .and_then(major_minor_prefix)
        .or_else(|| {
            user_runtime
                .get("python_version")
                .and_then(Value::as_str)
                .and_then(major_minor_prefix)
        })
}

/// `"3.11.7 (main, ...)"` → `"3.11"`.
fn major_minor_prefix(version: &str) -> Option<String> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().filter(|p| !p.is_empty())?;
    let minor = parts.next().filter(|p| !p.is_empty())?;
    // The separator between them must be a dot, not a space or a paren.
    (version.as_bytes().get(major.len()) == Some(&b'.')).then(|| format!("{major}.{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mep() -> Uuid {
        Uuid::parse_str("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap()
    }
    fn alice() -> Uuid {
        Uuid::parse_str("0b1ea1b4-0000-4000-8000-000000000001").unwrap()
    }
    fn config(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_name_has_the_documented_layout() {
        let name = uep_id_name(alice(), &config(json!({"b": 1, "a": "é"})), "3.11");
        let expected = "gantry-uep-v1\u{0}0b1ea1b4-0000-4000-8000-000000000001\u{0}{\"a\":\"é\",\"b\":1}\u{0}3.11";
        assert_eq!(name, expected.as_bytes());
    }

    #[test]
    fn same_inputs_same_id_any_change_a_new_one() {
        let base = derive_uep_id(
            mep(),
            alice(),
            &config(json!({"a": 1, "b": [1, 2]})),
            "3.11",
        );
        let reordered = derive_uep_id(
            mep(),
            alice(),
            &config(json!({"b": [1, 2], "a": 1})),
            "3.11",
        );
        assert_eq!(base, reordered);
        assert_eq!(base.get_version_num(), 5);
        let others = [
            derive_uep_id(
                Uuid::nil(),
                alice(),
                &config(json!({"a": 1, "b": [1, 2]})),
                "3.11",
            ),
            derive_uep_id(
                mep(),
                Uuid::nil(),
                &config(json!({"a": 1, "b": [1, 2]})),
                "3.11",
            ),
            derive_uep_id(
                mep(),
                alice(),
                &config(json!({"a": 1, "b": [2, 1]})),
                "3.11",
            ),
            derive_uep_id(
                mep(),
                alice(),
                &config(json!({"a": "1", "b": [1, 2]})),
                "3.11",
            ),
            derive_uep_id(
                mep(),
                alice(),
                &config(json!({"a": 1, "b": [1, 2]})),
                "3.12",
            ),
            derive_uep_id(mep(), alice(), &config(json!({"a": 1, "b": [1, 2]})), ""),
        ];
        for other in others {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn python_version_is_read_from_any_sdk_shape() {
        let modern = json!({"python": {"version_tuple": [3, 12, 1], "version": "3.9.0"}});
        assert_eq!(python_major_minor(&modern).as_deref(), Some("3.12"));
        let by_string = json!({"python": {"version": "3.10.4"}});
        assert_eq!(python_major_minor(&by_string).as_deref(), Some("3.10"));
        let legacy = json!({"python_version": "3.11.7 (main, Dec  1 2023) [GCC 12.2.0]"});
        assert_eq!(python_major_minor(&legacy).as_deref(), Some("3.11"));
        assert_eq!(
            python_major_minor(&json!({"python_version": "3 (x)"})),
            None
        );
        assert_eq!(python_major_minor(&json!({})), None);
        assert_eq!(python_major_minor(&json!(null)), None);
    }
}
