//! The administrator's JSON schema for the user's variables.
//!
//! As in Globus Compute, the schema is checked against the user's variables as they were
//! sent (before quoting), the draft is taken from `$schema` (2020-12 when absent), and
//! `format` is not asserted. A schema is self-contained: any `$ref` to another document
//! (`http:`, `https:`, `file:`, ...) is an error, never a fetch, whatever features the
//! validator crate was built with.

use std::path::Path;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

use crate::RenderError;
use crate::bundle::read_text_file;
use crate::limits::MAX_REPORTED_VIOLATIONS;

/// Reads a schema file and compiles it once, so a broken schema is reported when the
/// endpoint starts rather than when a user's first request arrives.
///
/// A missing file is an error; callers that treat the schema as optional (as Globus
/// Compute does) check for the file first.
pub fn read_schema(path: &Path) -> Result<Value, RenderError> {
    let text = read_text_file(path, true)?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| RenderError::BadSchema {
        origin: Some(path.to_path_buf()),
        reason: format!("it is not valid JSON: {e}"),
    })?;
    compile(&schema).map_err(|e| match e {
        RenderError::BadSchema { reason, .. } => RenderError::BadSchema {
            origin: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    })?;
    Ok(schema)
}

/// Compiles `schema` with remote references refused.
pub(crate) fn compile(schema: &Value) -> Result<Validator, RenderError> {
    jsonschema::options()
        .with_retriever(NoRetrieval)
        .should_validate_formats(false)
        .build(schema)
        .map_err(|e| {
            // For a schema that breaks the meta-schema, the "instance" is the schema.
            let at = match e.instance_path().as_str() {
                "" => String::new(),
                path => format!(" (at '{path}' in the schema)"),
            };
            RenderError::BadSchema {
                origin: None,
                reason: format!("{}{at}", shorten(&e.to_string())),
            }
        })
}

/// Checks the user's variables; every violation (up to [`MAX_REPORTED_VIOLATIONS`])
/// names the JSON path of the value and the schema rule it breaks.
pub(crate) fn validate(validator: &Validator, instance: &Value) -> Result<(), RenderError> {
    let mut violations = Vec::new();
    let mut more = 0usize;
    for error in validator.iter_errors(instance) {
        if violations.len() == MAX_REPORTED_VIOLATIONS {
            more += 1;
            continue;
        }
        let at = match error.instance_path().as_str() {
            "" => "the top level".to_owned(),
            path => format!("'{path}'"),
        };
        violations.push(format!(
            "at {at}: {} (rule '{}')",
            shorten(&error.to_string()),
            error.schema_path().as_str()
        ));
    }
    if more > 0 {
        violations.push(format!("and {more} more"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(RenderError::SchemaViolation { violations })
    }
}

/// Validator messages quote the offending value; a long one is cut so the message stays
/// readable.
fn shorten(message: &str) -> String {
    const MAX_CHARS: usize = 300;
    match message.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_owned(),
    }
}

/// A retriever that fetches nothing: every external `$ref` fails with this message.
struct NoRetrieval;

impl Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "the schema refers to {uri}, but user-config schemas must be self-contained \
             (external $ref documents are never fetched); copy the definition into the \
             schema's $defs"
        )
        .into())
    }
}
