//! The MEP's identity mapper: which local Unix user runs a Globus user's endpoint.
//!
//! A start command carries the submitting user's `globus_identity_set`. The
//! administrator's `identity_mapping.json` says how those identities become a local
//! username, in the format the official Globus Compute endpoint reads (through the
//! `globus-identity-mapping` package), so an existing file works unchanged:
//!
//! - a JSON list of documents, tried in order; the first that yields a name wins;
//! - `{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": [{"source",
//!   "match", "output", "ignore_case"?, "literal"?}]}`: rewrite rules over the
//!   identities whose `status` is `used` or `private` (an identity without a status does
//!   not count, as there);
//! - `{"DATA_TYPE": "external_identity_mapping#1.0.0", "command": ["/path", "arg"]}`: an
//!   administrator's program decides (see [`TIMEOUT`] and [`POSIX_CONNECTOR_ID`]).
//!
//! A document that fails while mapping (a program that exits non-zero, an identity
//! without a field a rule needs) is logged and skipped, as there; if no later document
//! maps, [`IdentityMapper::map`] returns the failures instead of `None`, so the user
//! hears why. The name found is checked by [`check_username`]: identity fields come from
//! identity providers, and must not become a path or an option. Refusing `root` or other
//! system accounts is the spawner's job, not this crate's.
//!
//! Where Gantry is stricter than the official package, on purpose: a file is checked
//! whole when loaded (unknown `DATA_TYPE`s, bad expressions, unknown identity fields and
//! match groups that do not exist are errors naming the document, not warnings or
//! failures at the first login); `match` is anchored on every branch of a top-level `|`
//! and allows no trailing newline; `literal` is strictly literal; a value inserted
//! into `output` is not scanned again for `{…}`; a program that overruns its time is
//! killed, not left running.
//!
//! ```
//! use gantry_identity_mapping::IdentityMapper;
//! use gantry_protocol::command::IdentityInfo;
//!
//! let mapper = IdentityMapper::from_json(r#"[{
//!     "DATA_TYPE": "expression_identity_mapping#1.0.0",
//!     "mappings": [{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}]
//! }]"#).unwrap();
//! let alice: IdentityInfo = serde_json::from_value(serde_json::json!({
//!     "id": "9cf5a1d2-41c4-4925-b0bb-f5e0a16c98ab",
//!     "username": "alice@example.org",
//!     "status": "used",
//! })).unwrap();
//! let user = mapper.map(&[alice], uuid::Uuid::nil()).unwrap();
//! assert_eq!(user.as_deref(), Some("alice"));
//! ```

mod error;
mod expression;
mod external;
mod file;
mod username;

use gantry_protocol::command::IdentityInfo;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use error::{DocumentError, DocumentFailure, MappingError};
pub use expression::IDENTITY_FIELDS;
pub use external::{POSIX_CONNECTOR_ID, STDOUT_LIMIT, TIMEOUT};
pub use file::MappingFile;
pub use username::{MAX_USERNAME_LEN, check_username};

use expression::ExpressionDocument;
use external::ExternalDocument;

/// A parsed, validated mapping file.
#[derive(Debug, Clone)]
pub struct IdentityMapper {
    documents: Vec<Document>,
}

#[derive(Debug, Clone)]
enum Document {
    Expression(ExpressionDocument),
    External(ExternalDocument),
}

/// One identity as the expressions see it: its fields as it serializes.
pub(crate) struct Identity<'a> {
    info: &'a IdentityInfo,
    fields: Map<String, Value>,
}

impl Identity<'_> {
    /// Only `used` and `private` identities are mapped by expressions.
    fn counts(&self) -> bool {
        matches!(self.info.status.as_deref(), Some("used" | "private"))
    }

    /// A string field; absent, null and non-string fields are all missing.
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

impl IdentityMapper {
    /// Parses and checks a whole mapping file's text. Every document is checked now, and
    /// an error names the document's index and what is wrong with it.
    pub fn from_json(text: &str) -> Result<IdentityMapper, MappingError> {
        let value: Value = serde_json::from_str(text).map_err(MappingError::Json)?;
        let Value::Array(list) = value else {
            return Err(MappingError::NotAList(json_kind(&value)));
        };
        let documents = list
            .iter()
            .enumerate()
            .map(|(index, doc)| {
                Document::parse(doc).map_err(|reason| MappingError::Document { index, reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(IdentityMapper { documents })
    }

    /// The local username for these identities, or `None` when no rule matched.
    ///
    /// Runs external programs synchronously (at most [`TIMEOUT`] each). `mep_id` is passed
    /// to them with `-s`.
    pub fn map(
        &self,
        identities: &[IdentityInfo],
        mep_id: Uuid,
    ) -> Result<Option<String>, MappingError> {
        let encoded = identities
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(MappingError::Encode)?;
        let views: Vec<Identity<'_>> = identities
            .iter()
            .zip(&encoded)
            .map(|(info, value)| Identity {
                info,
                fields: value.as_object().cloned().unwrap_or_default(),
            })
            .collect();
        let ids: Vec<Uuid> = identities.iter().map(|i| i.id).collect();
        let encoded = Value::Array(encoded);

        let mut failures = Vec::new();
        for (index, document) in self.documents.iter().enumerate() {
            let result = match document {
                Document::Expression(doc) => doc.map(&views),
                Document::External(doc) => doc.map(&encoded, &ids, mep_id),
            };
            match result {
                Ok(Some(name)) => {
                    if let Err(reason) = check_username(&name) {
                        return Err(MappingError::UnsafeUsername {
                            index,
                            name,
                            reason,
                        });
                    }
                    tracing::debug!(document = index, user = %name, "identity mapped");
                    return Ok(Some(name));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(
                        document = index,
                        %error,
                        "identity mapping document failed; trying the next one"
                    );
                    failures.push(DocumentFailure { index, error });
                }
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(MappingError::Failed(failures))
        }
    }
}

impl Document {
    fn parse(doc: &Value) -> Result<Document, String> {
        let types = format!(
            "\"{}\" or \"{}\"",
            expression::DATA_TYPE,
            external::DATA_TYPE
        );
        let Value::Object(doc) = doc else {
            return Err(format!(
                "a mapping document must be a JSON object with a DATA_TYPE, but this is {}",
                json_kind(doc)
            ));
        };
        match doc.get("DATA_TYPE") {
            Some(Value::String(t)) if t == expression::DATA_TYPE => {
                ExpressionDocument::parse(doc).map(Document::Expression)
            }
            Some(Value::String(t)) if t == external::DATA_TYPE => {
                ExternalDocument::parse(doc).map(Document::External)
            }
            Some(Value::String(t)) => Err(format!("unknown DATA_TYPE {t:?}; use {types}")),
            _ => Err(format!("missing DATA_TYPE (a string); use {types}")),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `IDENTITY_FIELDS` must name exactly the string fields an identity serializes, so
    /// a field added to the protocol is either offered to expressions or noticed here.
    #[test]
    fn identity_fields_are_the_serialized_string_fields() {
        let id = Uuid::new_v4();
        let full = IdentityInfo {
            id,
            sub: Some(id),
            username: "u".into(),
            email: Some("e".into()),
            name: Some("n".into()),
            organization: Some("o".into()),
            identity_provider: Some("p".into()),
            status: Some("used".into()),
        };
        let value = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, _)| k.as_str())
            .collect();
        let mut expected = IDENTITY_FIELDS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
