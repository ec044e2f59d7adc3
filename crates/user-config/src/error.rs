//! The one error type of this crate. Every message is written for the person who can fix
//! it: the administrator (template, schema, files) or the scientist (their variables).

use std::path::PathBuf;

/// Why a user-endpoint configuration could not be produced.
///
/// The `Display` text of each variant is complete: it says what is wrong and what to
/// change, so the spawner can hand it to the scientist as the UEP's error status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// A template or schema file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A template or schema file is not a regular file, too large, or not UTF-8 text.
    #[error("cannot use {}: {reason}", path.display())]
    UnusableFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The administrator's JSON schema is not valid JSON or not a valid JSON Schema, or
    /// it refers to another document (remote `$ref`s are never fetched).
    #[error("the user-config schema{} is invalid: {reason}; the endpoint administrator must fix it", origin_suffix(.origin))]
    BadSchema {
        /// Where the schema came from, when it came from a file.
        origin: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },

    /// The user's variables exceed a size limit.
    #[error(
        "the user endpoint config {what} is {size} bytes as JSON, more than the {limit} bytes \
         allowed; send fewer or shorter values"
    )]
    VariablesTooLarge {
        /// Which variables (`user_endpoint_config` or the SDK's runtime description).
        what: &'static str,
        /// Their size as compact JSON (counting stopped soon after the limit).
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The user's variables are nested too deeply.
    #[error(
        "the user endpoint config {what} is nested more than {limit} levels deep (at {path}); \
         flatten the values"
    )]
    VariablesTooDeep {
        /// Which variables.
        what: &'static str,
        /// The JSON pointer where the limit was crossed.
        path: String,
        /// The deepest nesting allowed.
        limit: usize,
    },

    /// The user's variables use a name the endpoint reserves for its own values.
    #[error(
        "'{name}' is a reserved word and cannot be passed in via user config \
         (reserved: _GC, parent_config, user_runtime, mapped_identity); rename the variable"
    )]
    ReservedName {
        /// The reserved name that was used.
        name: String,
    },

    /// The user's variables do not satisfy the administrator's schema.
    #[error("the user endpoint config does not match this endpoint's schema: {}", .violations.join("; "))]
    SchemaViolation {
        /// One line per violation, each naming the JSON path and the failing rule.
        violations: Vec<String>,
    },

    /// The template does not parse (a Jinja syntax error, in the named file).
    #[error(
        "the user-config template has a syntax error: {detail}; the endpoint administrator must fix it"
    )]
    TemplateSyntax {
        /// The template engine's description, with file and line.
        detail: String,
    },

    /// The template used a variable (or attribute) that has no value.
    #[error(
        "the user-config template uses an undefined value: {detail}; pass it in \
         user_endpoint_config, or ask the administrator to give it a default"
    )]
    UndefinedVariable {
        /// The template engine's description, with file and line.
        detail: String,
    },

    /// The template did more work (loops, data) than one render is allowed.
    #[error(
        "the user-config template ran out of its work budget ({fuel} units) while rendering; \
         a loop runs too long or builds too much data: {detail}"
    )]
    OutOfFuel {
        /// The budget that was used up.
        fuel: u64,
        /// The template engine's description, with file and line.
        detail: String,
    },

    /// An `include`, `import` or `extends` named a file that is not available.
    #[error("the user-config template refers to {name:?}, which is not available: {reason}")]
    TemplateNotAvailable {
        /// The name the template used.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// Any other failure while rendering (a bad filter argument, a type error, ...).
    #[error("rendering the user-config template failed: {detail}")]
    Template {
        /// The template engine's description, with file and line.
        detail: String,
    },

    /// The rendered text exceeds the output limit.
    #[error(
        "the rendered user endpoint config is larger than {limit} bytes; the template or the \
         variables produce too much text"
    )]
    OutputTooLarge {
        /// The limit.
        limit: usize,
    },

    /// The rendered text is not a YAML mapping (`key: value` lines at the top).
    #[error(
        "the rendered user endpoint config is not a YAML mapping: {detail}\n--- rendered text ---\n{excerpt}"
    )]
    NotAMapping {
        /// The YAML error, or what the document is instead of a mapping.
        detail: String,
        /// The start of the rendered text, so the template's author can see the problem.
        excerpt: String,
    },
}

fn origin_suffix(origin: &Option<PathBuf>) -> String {
    origin
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default()
}
