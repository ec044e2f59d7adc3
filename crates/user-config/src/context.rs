//! What the template sees, laid out as Globus Compute 4.19 lays it out.
//!
//! - each user variable at the top level, quoted (see [`crate::quoting`]);
//! - `_GC`, the endpoint's namespace: `_GC.parent_config` (the MEP's configuration),
//!   `_GC.mapped_identity.local.{uname,uid,gid,dir,shell,groups}` (the local account the
//!   user maps to), `_GC.user_runtime` (the SDK's description of the submitting side,
//!   quoted like the user's variables) and `_GC.env` (the rendering process's
//!   environment: the UEP's, once the spawner has set it up);
//! - `parent_config`, `mapped_identity` and `user_runtime` at the top level too, as
//!   Globus keeps them for older templates: reading them works and logs a deprecation
//!   warning naming the `_GC.` spelling.

use std::sync::Arc;

use minijinja::Value;
use minijinja::value::{Object, ObjectRepr, Serde};

use crate::RenderInputs;
use crate::quoting::{quote_map, quote_value};

/// Builds the template's root context. The user's variables must already have passed the
/// limit, reserved-name and schema checks.
pub(crate) fn build(inputs: &RenderInputs<'_>) -> Value {
    let user_runtime = match inputs.user_runtime {
        // Globus: `user_runtime or {}`.
        serde_json::Value::Null => Value::from_pairs(std::iter::empty::<(String, Value)>()),
        other => Value::from(Serde(quote_value(other))),
    };
    let parent_config = Value::from(Serde(inputs.parent_config));
    let mapped_identity =
        Value::from_pairs([("local", Value::from(Serde(inputs.mapped_identity)))]);
    let env = Value::from_pairs(std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    }));
    let gc = Value::from_pairs([
        ("parent_config", parent_config.clone()),
        ("mapped_identity", mapped_identity.clone()),
        ("user_runtime", user_runtime.clone()),
        ("env", env),
    ]);

    let mut root: Vec<(String, Value)> = quote_map(inputs.user_opts)
        .into_iter()
        .map(|(k, v)| (k, Value::from(Serde(v))))
        .collect();
    root.push(("_GC".to_owned(), gc));
    for (name, inner) in [
        ("parent_config", parent_config),
        ("mapped_identity", mapped_identity),
        ("user_runtime", user_runtime),
    ] {
        root.push((
            name.to_owned(),
            Value::from_object(DeprecatedVar { name, inner }),
        ));
    }
    Value::from_pairs(root)
}

/// A top-level alias of a `_GC` value kept for templates written before `_GC` existed.
/// Attribute access and truth tests work (each logs a warning); like Globus's wrapper it
/// cannot be iterated.
#[derive(Debug)]
pub(crate) struct DeprecatedVar {
    pub(crate) name: &'static str,
    pub(crate) inner: Value,
}

impl DeprecatedVar {
    pub(crate) fn warn(&self) {
        tracing::warn!(
            variable = self.name,
            use_instead = %format_args!("_GC.{}", self.name),
            "template reads a deprecated top-level variable"
        );
    }
}

impl Object for DeprecatedVar {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.warn();
        self.inner.get_item(key).ok().filter(|v| !v.is_undefined())
    }

    fn is_true(self: &Arc<Self>) -> bool {
        self.warn();
        self.inner.is_true()
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.warn();
        match crate::pytext::python_str(&self.inner) {
            Ok(text) => f.write_str(&text),
            Err(_) => Err(std::fmt::Error),
        }
    }
}
