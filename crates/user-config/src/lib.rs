//! Renders a multi-user endpoint's user-endpoint (UEP) template with one user's
//! variables, the way Globus Compute 4.19 does, so a template written for Globus renders
//! the same text here.
//!
//! A scientist submits with `user_endpoint_config={"ACCOUNT_ID": "314159265", ...}`; the
//! administrator wrote `user_config_template.yaml.j2` (Jinja) and, optionally,
//! `user_config_schema.json`. Before the user's endpoint starts, the spawner:
//!
//! 1. reads the template and the Jinja files beside it into a [`TemplateBundle`], and the
//!    schema with [`read_schema`], while still root (the folder may be root-only);
//! 2. drops to the user's account and calls [`render`], which touches no file.
//!
//! [`render`] checks, in this order, and each failure is a [`RenderError`] whose text
//! tells the scientist or the administrator what to fix:
//! - the size and nesting of the variables ([`limits`]), before anything walks them;
//! - that no variable uses a reserved name (`_GC`, `parent_config`, `user_runtime`,
//!   `mapped_identity`);
//! - the schema, against the variables as sent (a violation names the JSON path and the
//!   rule; remote `$ref`s are refused, never fetched);
//! - the template, rendered with every user string JSON-quoted first ([`quoting`]), so
//!   `"x\nengine: evil"` stays one harmless YAML string; undefined variables are errors;
//!   loops run on a budget; the output is bounded;
//! - the output, which must parse as a YAML mapping.
//!
//! ```
//! use std::collections::BTreeMap;
//! use gantry_user_config::{MappedIdentity, RenderInputs, TemplateBundle, render};
//!
//! let template = "engine:\n  type: GlobusComputeEngine\n  account: {{ ACCOUNT_ID }}\n";
//! let bundle = TemplateBundle::from_strings(
//!     "user_config_template.yaml.j2",
//!     BTreeMap::from([("user_config_template.yaml.j2".to_owned(), template.to_owned())]),
//! );
//! let identity = MappedIdentity {
//!     uname: "alice".into(), uid: 1000, gid: 1000,
//!     dir: "/home/alice".into(), shell: "/bin/bash".into(), groups: vec![1000],
//! };
//! let opts = serde_json::json!({"ACCOUNT_ID": "314159265"});
//! let yaml = render(&bundle, None, &RenderInputs {
//!     user_opts: opts.as_object().unwrap(),
//!     user_runtime: &serde_json::json!({}),
//!     parent_config: &serde_json::json!({}),
//!     mapped_identity: &identity,
//! }).unwrap();
//! // The user's string arrives quoted, as with Globus Compute.
//! assert_eq!(yaml, "engine:\n  type: GlobusComputeEngine\n  account: \"314159265\"");
//! ```

mod bundle;
mod context;
mod engine;
mod error;
pub mod limits;
mod pytext;
pub mod quoting;
mod schema;
mod shell;
mod yaml;

use serde::{Deserialize, Serialize};

pub use bundle::{INCLUDABLE_SUFFIXES, TemplateBundle};
pub use error::RenderError;
pub use schema::read_schema;
pub use shell::shlex_quote;

/// The template `gantry-endpoint configure --multi-user` writes: modelled on Globus
/// Compute's default (a `GlobusComputeEngine` on this host, the idle settings, the user's
/// optional `endpoint_setup` and `worker_init`), with comments for the administrator.
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/user_config_template.yaml.j2");

/// The schema written beside [`DEFAULT_TEMPLATE`]: exactly the variables it uses, each a
/// string; any other variable is refused so a misspelt name is reported, not ignored.
pub const DEFAULT_SCHEMA: &str = include_str!("../templates/user_config_schema.json");

/// The local account a user maps to, as the template sees it under
/// `_GC.mapped_identity.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedIdentity {
    /// Login name.
    pub uname: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub dir: String,
    /// Login shell.
    pub shell: String,
    /// Every group id the account belongs to (`getgrouplist`), the primary included.
    pub groups: Vec<u32>,
}

/// What one render uses besides the template.
#[derive(Debug, Clone, Copy)]
pub struct RenderInputs<'a> {
    /// The user's variables (`user_endpoint_config` from the SDK), as sent.
    pub user_opts: &'a serde_json::Map<String, serde_json::Value>,
    /// The SDK's description of the submitting side (`user_runtime`); quoted like the
    /// user's variables and limited the same way. `null` counts as `{}`.
    pub user_runtime: &'a serde_json::Value,
    /// The multi-user endpoint's own configuration, shown as `_GC.parent_config`.
    pub parent_config: &'a serde_json::Value,
    /// The local account the user maps to.
    pub mapped_identity: &'a MappedIdentity,
}

/// Validates the user's variables and renders; returns the YAML text.
///
/// Reads no file: everything comes from `bundle`, `schema` and `inputs`, so this runs
/// after the spawner dropped privileges. See the crate documentation for the order of
/// the checks.
pub fn render(
    bundle: &TemplateBundle,
    schema: Option<&serde_json::Value>,
    inputs: &RenderInputs<'_>,
) -> Result<String, RenderError> {
    limits::check_map("user_endpoint_config", inputs.user_opts)?;
    limits::check_variables("runtime description (user_runtime)", inputs.user_runtime)?;
    quoting::check_reserved(inputs.user_opts)?;
    if let Some(schema) = schema {
        let validator = schema::compile(schema)?;
        schema::validate(
            &validator,
            &serde_json::Value::Object(inputs.user_opts.clone()),
        )?;
    }
    let ctx = context::build(inputs);
    let text = engine::render_template(bundle, ctx)?;
    yaml::check_mapping(&text)?;
    Ok(text)
}
