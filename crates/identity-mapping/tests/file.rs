//! A mapping file on disk: loading, following edits, and surviving a broken edit.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{temp_dir, used};
use gantry_identity_mapping::{MappingError, MappingFile};
use serde_json::json;
use uuid::Uuid;

/// A file mapping every `used` identity to `user`.
fn mapping_to(user: &str) -> String {
    json!([{
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [{"source": "{username}", "match": "(.*)", "output": user}],
    }])
    .to_string()
}

fn mapped(file: &mut MappingFile) -> Option<String> {
    file.current().map(&[used("someone")], Uuid::nil()).unwrap()
}

/// Replaces the file the way an editor that writes a temp file and renames does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn an_edit_is_picked_up_by_the_next_call() {
    let dir = temp_dir("file-reload");
    let path = dir.join("identity_mapping.json");
    std::fs::write(&path, mapping_to("alice")).unwrap();
    let mut file = MappingFile::load(&path).unwrap();
    assert_eq!(mapped(&mut file).as_deref(), Some("alice"));
    assert_eq!(file.current_text(), mapping_to("alice"));

    // In place (same inode, a different size) and by rename (a new inode).
    std::fs::write(&path, mapping_to("bob-the-second")).unwrap();
    assert_eq!(mapped(&mut file).as_deref(), Some("bob-the-second"));
    replace(&path, &mapping_to("carol"));
    assert_eq!(mapped(&mut file).as_deref(), Some("carol"));
    assert_eq!(file.current_text(), mapping_to("carol"));
}

/// Collects what `tracing` writes, to count warnings.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn a_broken_edit_keeps_the_old_mapping_and_is_reported_once() {
    let dir = temp_dir("file-broken");
    let path = dir.join("identity_mapping.json");
    std::fs::write(&path, mapping_to("alice")).unwrap();
    let mut file = MappingFile::load(&path).unwrap();

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let broken = r#"[{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": [{"source": "{username}", "match": "(", "output": "x"}]}]"#;
        replace(&path, broken);
        for _ in 0..3 {
            assert_eq!(mapped(&mut file).as_deref(), Some("alice"));
        }
        assert_eq!(file.current_text(), mapping_to("alice"));
        let text = logs.text();
        assert_eq!(text.matches("WARN").count(), 1, "{text}");
        assert!(
            text.contains("document at index 0: mapping 0: match"),
            "{text}"
        );

        // A second, different broken change is reported again.
        replace(&path, "[{");
        assert_eq!(mapped(&mut file).as_deref(), Some("alice"));
        assert_eq!(logs.text().matches("WARN").count(), 2, "{}", logs.text());

        // A deleted file keeps the mapping too.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(mapped(&mut file).as_deref(), Some("alice"));
        assert_eq!(logs.text().matches("WARN").count(), 3, "{}", logs.text());

        // The fix is picked up.
        replace(&path, &mapping_to("dave"));
        assert_eq!(mapped(&mut file).as_deref(), Some("dave"));
    });
}

#[test]
fn loading_a_bad_or_missing_file_says_which_and_why() {
    let dir = temp_dir("file-load");
    let path = dir.join("identity_mapping.json");
    let err = MappingFile::load(&path).unwrap_err();
    assert!(matches!(err, MappingError::Read { .. }), "{err}");
    assert!(err.to_string().contains("identity_mapping.json"), "{err}");

    std::fs::write(
        &path,
        r#"[{"DATA_TYPE": "expression_identity_mapping#1.0.0"}]"#,
    )
    .unwrap();
    let err = MappingFile::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("identity_mapping.json") && err.contains("index 0"),
        "{err}"
    );
}
