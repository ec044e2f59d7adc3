//! The template engine, set up to behave like Globus Compute's Jinja2 environment and
//! bounded as Gantry requires.
//!
//! Like Globus (a Jinja2 `SandboxedEnvironment` with `StrictUndefined`): no escaping of
//! output, a single trailing newline dropped, undefined values an error wherever they are
//! used, values printed as Python prints them, and a `shell_escape` filter. On top:
//! a work budget ([`RENDER_FUEL`]), an output limit ([`MAX_OUTPUT_BYTES`]) enforced while
//! writing, and a loader that serves only the bundle's files. MiniJinja has no access to
//! the host at all (no attributes of host objects, no file or process functions), which is
//! what Jinja2's sandbox approximates.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use crate::bundle::{TemplateBundle, resolve_include_name};
use crate::limits::{MAX_OUTPUT_BYTES, RENDER_FUEL};
use crate::{RenderError, pytext, shell};

/// Renders the bundle's main template with `ctx`.
pub(crate) fn render_template(bundle: &TemplateBundle, ctx: Value) -> Result<String, RenderError> {
    // The loader's refusals, so an include error can say which name and why.
    let refusals: Refusals = Arc::default();
    let mut env = environment(bundle, refusals.clone());

    let main = &bundle.main_name;
    let Some(text) = bundle.files.texts.get(main) else {
        return Err(RenderError::TemplateNotAvailable {
            name: main.clone(),
            reason: "the bundle does not hold the main template".to_owned(),
        });
    };
    env.add_template_owned(main.clone(), text.clone())
        .map_err(|e| RenderError::TemplateSyntax {
            detail: describe(&e),
        })?;
    let template = env
        .get_template(main)
        .map_err(|e| RenderError::TemplateSyntax {
            detail: describe(&e),
        })?;

    let mut out = LimitedWriter::default();
    let result = template.render_captured_to(ctx, &mut out).map(|_| ());
    if out.overflowed {
        return Err(RenderError::OutputTooLarge {
            limit: MAX_OUTPUT_BYTES,
        });
    }
    if let Err(error) = result {
        let refused = refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        return Err(classify(&error, refused));
    }
    String::from_utf8(out.buf).map_err(|_| RenderError::Template {
        detail: "the output is not UTF-8 text".to_owned(),
    })
}

type Refusals = Arc<Mutex<Vec<(String, String)>>>;

fn environment(bundle: &TemplateBundle, refusals: Refusals) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    // Debug mode makes errors name the undefined variable and show the failing line.
    env.set_debug(true);
    // MiniJinja would JSON-escape `.yaml.j2` templates by default; Jinja2 escapes nothing.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| {
        let text = pytext::python_str(value)?;
        out.write_str(&text).map_err(Error::from)
    });
    // Python's str methods (`.upper()`, `.startswith()`, `.items()`, `.get()`, ...), which
    // Jinja2 templates call directly.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("string", |value: Value| pytext::python_str(&value));
    env.add_filter("shell_escape", shell::shell_escape);

    let files = bundle.files.clone();
    env.set_loader(move |name| {
        let refuse = |reason: String| {
            refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((name.to_owned(), reason.clone()));
            // TemplateNotFound, as Jinja2 raises for these names, so `ignore missing` and
            // lists of alternatives keep working.
            Err(Error::new(
                ErrorKind::TemplateNotFound,
                format!("{name:?} is not available: {reason}"),
            ))
        };
        let file = match resolve_include_name(name) {
            Ok(file) => file,
            Err(reason) => return refuse(reason),
        };
        if let Some(text) = files.texts.get(file) {
            return Ok(Some(text.clone()));
        }
        if let Some(reason) = files.skipped.get(file) {
            return refuse(format!("the file was not loaded: {reason}"));
        }
        let folder = files
            .folder
            .as_ref()
            .map(|f| format!(" in {}", f.display()))
            .unwrap_or_default();
        let available: Vec<&str> = files.texts.keys().map(String::as_str).collect();
        refuse(format!(
            "there is no such template file{folder} (templates may use files named *.j2, \
             *.jinja or *.jinja2 beside the main template; loaded: {})",
            available.join(", ")
        ))
    });
    env
}

/// Maps an engine error to the variant that says who must act.
fn classify(error: &Error, refused: Option<(String, String)>) -> RenderError {
    let detail = describe(error);
    match root_kind(error) {
        ErrorKind::SyntaxError => RenderError::TemplateSyntax { detail },
        ErrorKind::UndefinedError => RenderError::UndefinedVariable { detail },
        ErrorKind::OutOfFuel => RenderError::OutOfFuel {
            fuel: RENDER_FUEL,
            detail,
        },
        ErrorKind::TemplateNotFound => match refused {
            Some((name, reason)) => RenderError::TemplateNotAvailable { name, reason },
            None => RenderError::Template { detail },
        },
        _ => RenderError::Template { detail },
    }
}

/// The innermost engine error's kind: an error inside an included template arrives
/// wrapped in the includer's.
fn root_kind(error: &Error) -> ErrorKind {
    let mut kind = error.kind();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(e) = inner.downcast_ref::<Error>() {
            kind = e.kind();
        }
        source = inner.source();
    }
    kind
}

/// One line per error in the chain: kind, detail, file and line.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Collects the output and fails the write that would pass [`MAX_OUTPUT_BYTES`], which
/// stops the render there.
#[derive(Default)]
struct LimitedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
