//! Helpers shared by the integration tests: identities, temp dirs, mapper scripts.

#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_protocol::command::IdentityInfo;
use uuid::Uuid;

/// An identity with a fresh id.
pub fn identity(username: &str, status: Option<&str>) -> IdentityInfo {
    let id = Uuid::new_v4();
    IdentityInfo {
        id,
        sub: Some(id),
        username: username.into(),
        email: None,
        name: None,
        organization: None,
        identity_provider: Some("62dc25b7-c693-4528-831b-4557a7a0d1e4".into()),
        status: status.map(String::from),
    }
}

/// An identity that counts for expressions (`status: used`).
pub fn used(username: &str) -> IdentityInfo {
    identity(username, Some("used"))
}

/// A fresh directory for one test's files.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gantry-idmap-{label}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an executable script (with its `#!` line) and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A mapping file of one external document running `program`.
pub fn external_doc(program: &Path) -> String {
    serde_json::json!([{
        "DATA_TYPE": "external_identity_mapping#1.0.0",
        "command": [program.to_str().unwrap()],
    }])
    .to_string()
}
