//! Reading the template folder (as the spawner does while still root), then rendering
//! from memory only.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry_user_config::{
    MappedIdentity, RenderError, RenderInputs, TemplateBundle, limits, read_schema, render,
};
use serde_json::{Value, json};

/// A fresh folder under the system temp dir, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Folder {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gantry-user-config-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn render_bundle(bundle: &TemplateBundle, opts: Value) -> Result<String, RenderError> {
    render(
        bundle,
        None,
        &RenderInputs {
            user_opts: opts.as_object().unwrap(),
            user_runtime: &json!({}),
            parent_config: &json!({}),
            mapped_identity: &MappedIdentity {
                uname: "alice".to_owned(),
                uid: 1234,
                gid: 1234,
                dir: "/home/alice".to_owned(),
                shell: "/bin/bash".to_owned(),
                groups: vec![1234],
            },
        },
    )
}

/// Renders `template` saved as `<folder>/mep/user_config_template.yaml.j2`.
fn render_in(folder: &Folder, template: &str) -> Result<String, RenderError> {
    let path = folder.write("mep/user_config_template.yaml.j2", template);
    render_bundle(&TemplateBundle::read(&path).unwrap(), json!({"x": "v"}))
}

fn not_available(result: Result<String, RenderError>) -> (String, String) {
    match result {
        Err(RenderError::TemplateNotAvailable { name, reason }) => (name, reason),
        other => panic!("expected TemplateNotAvailable, got {other:?}"),
    }
}

#[test]
fn include_of_a_sibling_works() {
    let folder = Folder::new();
    folder.write("mep/provider.j2", "provider: {{ x }}\n");
    let text = render_in(&folder, "engine: 1\n{% include 'provider.j2' %}").unwrap();
    assert_eq!(text, "engine: 1\nprovider: \"v\"");
}

#[test]
fn rendering_needs_no_disk_after_reading() {
    let folder = Folder::new();
    folder.write("mep/provider.j2", "provider: {{ x }}\n");
    let path = folder.write(
        "mep/user_config_template.yaml.j2",
        "{% include 'provider.j2' %}",
    );
    let bundle = TemplateBundle::read(&path).unwrap();
    std::fs::remove_dir_all(&folder.0).unwrap();
    assert_eq!(
        render_bundle(&bundle, json!({"x": "v"})).unwrap(),
        "provider: \"v\""
    );
}

#[test]
fn include_of_the_parent_folder_is_refused() {
    let folder = Folder::new();
    folder.write("x.j2", "secret: 1\n");
    let (name, reason) = not_available(render_in(&folder, "{% include '../x.j2' %}"));
    assert_eq!(name, "../x.j2");
    assert!(reason.contains("'..'"), "{reason}");
}

#[test]
fn include_of_an_absolute_path_is_refused() {
    let folder = Folder::new();
    let (name, reason) = not_available(render_in(&folder, "{% include '/etc/passwd' %}"));
    assert_eq!(name, "/etc/passwd");
    assert!(reason.contains("absolute"), "{reason}");
}

#[test]
fn include_from_a_subfolder_is_refused() {
    let folder = Folder::new();
    folder.write("mep/sub/part.j2", "part: 1\n");
    let (_, reason) = not_available(render_in(&folder, "{% include 'sub/part.j2' %}"));
    assert!(reason.contains("subfolders"), "{reason}");
}

#[test]
fn files_that_are_not_jinja_are_not_loaded() {
    let folder = Folder::new();
    folder.write("mep/endpoint.log", "root-only log lines\n");
    folder.write("mep/identity_mapping.json", "[]");
    let (name, reason) = not_available(render_in(&folder, "{% include 'endpoint.log' %}"));
    assert_eq!(name, "endpoint.log");
    assert!(reason.contains("*.j2"), "{reason}");
}

#[test]
fn symlinked_sibling_is_not_followed() {
    let folder = Folder::new();
    folder.write("outside.txt", "secret: 1\n");
    std::fs::create_dir_all(folder.0.join("mep")).unwrap();
    std::os::unix::fs::symlink(folder.0.join("outside.txt"), folder.0.join("mep/link.j2")).unwrap();
    let (_, reason) = not_available(render_in(&folder, "{% include 'link.j2' %}"));
    assert!(reason.contains("symlink"), "{reason}");
}

#[test]
fn oversized_sibling_is_skipped_with_its_reason() {
    let folder = Folder::new();
    let big = "#".repeat(usize::try_from(limits::MAX_FILE_BYTES).unwrap() + 1);
    folder.write("mep/big.j2", &big);
    let (_, reason) = not_available(render_in(&folder, "{% include 'big.j2' %}"));
    assert!(reason.contains("larger than"), "{reason}");
}

#[test]
fn oversized_main_template_is_an_error() {
    let folder = Folder::new();
    let big = "#".repeat(usize::try_from(limits::MAX_FILE_BYTES).unwrap() + 1);
    let path = folder.write("mep/user_config_template.yaml.j2", &big);
    let error = TemplateBundle::read(&path).unwrap_err();
    assert!(matches!(error, RenderError::UnusableFile { .. }), "{error}");
    assert!(error.to_string().contains("larger than"), "{error}");
}

#[test]
fn missing_template_names_the_path() {
    let folder = Folder::new();
    let path = folder.0.join("mep/user_config_template.yaml.j2");
    let error = TemplateBundle::read(&path).unwrap_err();
    assert!(matches!(error, RenderError::ReadFile { .. }), "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn missing_j2_falls_back_to_plain_yaml_as_globus_does() {
    let folder = Folder::new();
    folder.write("mep/user_config_template.yaml", "engine: {{ x }}\n");
    let bundle = TemplateBundle::read(&folder.0.join("mep/user_config_template.yaml.j2")).unwrap();
    assert_eq!(bundle.main_name(), "user_config_template.yaml");
    assert_eq!(
        render_bundle(&bundle, json!({"x": "v"})).unwrap(),
        "engine: \"v\""
    );
}

#[test]
fn only_so_many_siblings_are_read() {
    let folder = Folder::new();
    for i in 0..=limits::MAX_SIBLING_FILES {
        folder.write(&format!("mep/part{i:03}.j2"), "p: 1\n");
    }
    let path = folder.write("mep/user_config_template.yaml.j2", "a: 1\n");
    let bundle = TemplateBundle::read(&path).unwrap();
    // The main template plus the first MAX_SIBLING_FILES, by name.
    assert_eq!(bundle.file_names().count(), limits::MAX_SIBLING_FILES + 1);
    let last = format!("part{:03}.j2", limits::MAX_SIBLING_FILES);
    let (_, reason) = not_available(render_in(&folder, &format!("{{% include '{last}' %}}")));
    assert!(reason.contains("only 64"), "{reason}");
}

#[test]
fn read_schema_compiles_the_file() {
    let folder = Folder::new();
    let path = folder.write("mep/user_config_schema.json", r#"{"type": "object"}"#);
    assert_eq!(read_schema(&path).unwrap(), json!({"type": "object"}));
}

#[test]
fn read_schema_reports_bad_json_with_the_path() {
    let folder = Folder::new();
    let path = folder.write("mep/user_config_schema.json", "{\"type\": ");
    let error = read_schema(&path).unwrap_err();
    assert!(matches!(error, RenderError::BadSchema { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn read_schema_refuses_a_remote_ref_without_fetching() {
    let folder = Folder::new();
    let path = folder.write(
        "mep/user_config_schema.json",
        r#"{"$ref": "https://192.0.2.1/schema.json"}"#,
    );
    let error = read_schema(&path).unwrap_err();
    assert!(matches!(error, RenderError::BadSchema { .. }), "{error}");
    assert!(error.to_string().contains("never fetched"), "{error}");
}

#[test]
fn read_schema_refuses_a_file_ref() {
    let folder = Folder::new();
    let other = folder.write("mep/other.json", r#"{"type": "string"}"#);
    let path = folder.write(
        "mep/user_config_schema.json",
        &json!({"$ref": format!("file://{}", other.display())}).to_string(),
    );
    let error = read_schema(&path).unwrap_err();
    assert!(error.to_string().contains("never fetched"), "{error}");
}
