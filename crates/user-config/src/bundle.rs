//! The template and the files it may include, read into memory while still privileged.
//!
//! The spawner reads the template as root (the endpoint's folder may be readable only by
//! root), then drops to the user and renders. Rendering therefore never touches the
//! disk: `include`, `import` and `extends` resolve against what [`TemplateBundle::read`]
//! loaded.
//!
//! Which files are loaded is deliberately narrow. Globus Compute renders after dropping
//! privileges, so its templates can include only what the user may read anyway. Here the
//! files are read as root, and a template that picks an include name from a user's
//! variable could otherwise hand the endpoint's root-only files (its logs, its identity
//! mapping) to that user. So besides the main template only the Jinja files beside it are
//! loaded: regular files (not symlinks) named `*.j2`, `*.jinja` or `*.jinja2` in the same
//! folder, at most [`MAX_SIBLING_FILES`] of at most [`MAX_FILE_BYTES`] each. Subfolders
//! are not read, and names with `..` or a leading `/` are refused.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::RenderError;
use crate::limits::{MAX_FILE_BYTES, MAX_SIBLING_FILES};

/// File name endings of the sibling files a template may include.
pub const INCLUDABLE_SUFFIXES: [&str; 3] = [".j2", ".jinja", ".jinja2"];

/// The template and its sibling files, read while still privileged.
#[derive(Debug, Clone)]
pub struct TemplateBundle {
    pub(crate) main_name: String,
    pub(crate) files: Arc<Files>,
}

/// What the loader serves: file name to text, and the names left out with the reason.
#[derive(Debug, Default)]
pub(crate) struct Files {
    pub(crate) texts: BTreeMap<String, String>,
    pub(crate) skipped: BTreeMap<String, String>,
    pub(crate) folder: Option<PathBuf>,
}

impl TemplateBundle {
    /// Reads the template and the Jinja files beside it (see the module documentation for
    /// which), so includes resolve without the disk.
    ///
    /// As Globus Compute does, a missing `<name>.j2` falls back to `<name>` (for example
    /// `user_config_template.yaml`). Sibling files that cannot be used (too large, not
    /// UTF-8, unreadable, over the count) are skipped and remembered, so that including
    /// one says why it is missing; only the main template failing is an error here.
    pub fn read(template_path: &Path) -> Result<TemplateBundle, RenderError> {
        let path = resolve_main_path(template_path);
        let main_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| RenderError::UnusableFile {
                path: path.clone(),
                reason: "the template's file name is not valid UTF-8".to_owned(),
            })?
            .to_owned();
        let main_text = read_text_file(&path, true)?;

        let folder = path.parent().map(Path::to_path_buf);
        let mut files = Files {
            folder: folder.clone(),
            ..Files::default()
        };
        if let Some(folder) = folder.as_deref() {
            read_siblings(folder, &main_name, &mut files);
        }
        files.texts.insert(main_name.clone(), main_text);
        Ok(TemplateBundle {
            main_name,
            files: Arc::new(files),
        })
    }

    /// A bundle made from text in memory: `files` maps file names to template text and
    /// must hold `main_name`. For tests and the `render-user-config` dry run.
    pub fn from_strings(main_name: &str, files: BTreeMap<String, String>) -> TemplateBundle {
        TemplateBundle {
            main_name: main_name.to_owned(),
            files: Arc::new(Files {
                texts: files,
                ..Files::default()
            }),
        }
    }

    /// The main template's file name.
    pub fn main_name(&self) -> &str {
        &self.main_name
    }

    /// The names of the loaded files, the main template included.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.texts.keys().map(String::as_str)
    }
}

/// Globus Compute's fallback: `x.yaml.j2` missing means `x.yaml`.
fn resolve_main_path(template_path: &Path) -> PathBuf {
    if !template_path.exists()
        && let Some(stripped) = template_path
            .to_str()
            .and_then(|s| s.strip_suffix(".j2"))
            .map(PathBuf::from)
        && stripped.exists()
    {
        tracing::debug!(
            template = %template_path.display(),
            fallback = %stripped.display(),
            "template missing; using the name without .j2"
        );
        return stripped;
    }
    template_path.to_path_buf()
}

fn read_siblings(folder: &Path, main_name: &str, files: &mut Files) {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::debug!(
                folder = %folder.display(),
                %error,
                "cannot list the template's folder; include, import and extends will find nothing"
            );
            return;
        }
    };
    let mut candidates = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == main_name || !INCLUDABLE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        // DirEntry::file_type does not follow symlinks: a link is not a regular file here.
        match entry.file_type() {
            Ok(t) if t.is_file() => candidates.push(name),
            Ok(_) => {
                files.skipped.insert(
                    name,
                    "it is not a regular file (symlinks and folders are not read)".to_owned(),
                );
            }
            Err(error) => {
                files
                    .skipped
                    .insert(name, format!("it cannot be examined: {error}"));
            }
        }
    }
    // read_dir's order is arbitrary; sorting makes "which files are over the count" stable.
    candidates.sort();
    for (index, name) in candidates.into_iter().enumerate() {
        if index >= MAX_SIBLING_FILES {
            files.skipped.insert(
                name,
                format!(
                    "only {MAX_SIBLING_FILES} template files beside the main template are read"
                ),
            );
            continue;
        }
        match read_text_file(&folder.join(&name), false) {
            Ok(text) => {
                files.texts.insert(name, text);
            }
            Err(error) => {
                tracing::debug!(file = %name, %error, "template sibling skipped");
                files.skipped.insert(name, error.to_string());
            }
        }
    }
}

/// Reads a regular UTF-8 file of at most [`MAX_FILE_BYTES`]. `follow_symlinks` is true
/// for files the administrator named by path (the template, the schema).
pub(crate) fn read_text_file(path: &Path, follow_symlinks: bool) -> Result<String, RenderError> {
    let unusable = |reason: String| RenderError::UnusableFile {
        path: path.to_path_buf(),
        reason,
    };
    let read_error = |source| RenderError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    // Check before opening, so that a FIFO or device is never opened (it could block).
    let meta = if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(read_error)?;
    if !meta.is_file() {
        return Err(unusable("it is not a regular file".to_owned()));
    }
    let file = File::open(path).map_err(read_error)?;
    // And after: the name may have been replaced in between.
    if !file.metadata().map_err(read_error)?.is_file() {
        return Err(unusable("it is not a regular file".to_owned()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(unusable(format!(
            "it is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        unusable(format!(
            "it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Why a name used by `include`, `import` or `extends` cannot be served, or the file
/// name it means. Jinja's own rules are followed (`.` segments and empty segments are
/// dropped), then the bundle's: no `..`, no absolute paths, nothing in subfolders.
pub(crate) fn resolve_include_name(name: &str) -> Result<&str, String> {
    if name.starts_with('/') {
        return Err("absolute paths are refused; name a file beside the template".to_owned());
    }
    let segments: Vec<&str> = name
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.contains(&"..") {
        return Err("paths with '..' are refused; name a file beside the template".to_owned());
    }
    match segments.as_slice() {
        [single] => Ok(single),
        [] => Err("the name is empty".to_owned()),
        _ => Err("only files directly beside the template can be used, not subfolders".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_names() {
        assert_eq!(resolve_include_name("a.j2"), Ok("a.j2"));
        assert_eq!(resolve_include_name("./a.j2"), Ok("a.j2"));
        assert_eq!(resolve_include_name(".//a.j2"), Ok("a.j2"));
        assert!(resolve_include_name("../a.j2").is_err());
        assert!(resolve_include_name("x/../a.j2").is_err());
        assert!(resolve_include_name("/etc/passwd").is_err());
        assert!(resolve_include_name("sub/a.j2").is_err());
        assert!(resolve_include_name("").is_err());
        assert!(resolve_include_name("./").is_err());
    }
}
