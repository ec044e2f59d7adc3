//! The `gantry-endpoint` command line as an admin uses it, on real files: `configure`
//! writes a folder only its owner can read, `render-user-config` prints what the MEP would
//! render or the exact reason it would refuse, `list`, `start` and `stop` say what they
//! see. Nothing here needs the service or root.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn home() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gantry-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry-endpoint"))
        .args(args)
        .env("GANTRY_HOME", home)
        .env_remove("GANTRY_CLIENT_ID")
        .env_remove("GANTRY_CLIENT_SECRET")
        .env_remove("GLOBUS_COMPUTE_CLIENT_ID")
        .env_remove("GLOBUS_COMPUTE_CLIENT_SECRET")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn configure_writes_a_private_folder_and_refuses_to_overwrite_it() {
    let home = home();
    let out = cli(&home, &["configure", "site", "--multi-user"]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = home.join("site");
    assert_eq!(mode(&dir), 0o700);
    for name in [
        "config.yaml",
        "identity_mapping.json",
        "user_config_template.yaml.j2",
        "user_config_schema.json",
        "user_environment.yaml",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let config = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    assert!(config.contains("multi_user: true"), "{config}");
    let again = cli(&home, &["configure", "site", "--multi-user"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already configured"),
        "{}",
        text(&again)
    );
    let bad = cli(&home, &["configure", "../escape"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("not a valid endpoint name"),
        "{}",
        text(&bad)
    );
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn render_user_config_prints_the_rendered_config_or_the_reason() {
    let home = home();
    assert!(
        cli(&home, &["configure", "site", "--multi-user"])
            .status
            .success()
    );
    let out = cli(
        &home,
        &[
            "render-user-config",
            "site",
            "--user-config",
            r#"{"worker_init": "module load python"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(rendered.contains("GlobusComputeEngine"), "{rendered}");
    assert!(rendered.contains("module load python"), "{rendered}");
    // A variable the schema does not allow: refused, naming it.
    let out = cli(
        &home,
        &[
            "render-user-config",
            "site",
            "--user-config",
            r#"{"queue": "x"}"#,
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("queue"), "{}", text(&out));
    // Not JSON at all.
    let out = cli(
        &home,
        &["render-user-config", "site", "--user-config", "ACCOUNT=1"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("JSON object"), "{}", text(&out));
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn list_start_and_stop_say_what_they_see() {
    let home = home();
    let out = cli(&home, &["list"]);
    assert!(text(&out).contains("no endpoints"), "{}", text(&out));
    assert!(
        cli(&home, &["configure", "site", "--multi-user"])
            .status
            .success()
    );
    let out = cli(&home, &["list"]);
    assert!(
        text(&out).contains("site") && text(&out).contains("stopped"),
        "{}",
        text(&out)
    );
    // No credentials anywhere: start says where to put them.
    let out = cli(&home, &["start", "site"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("GANTRY_CLIENT_ID"), "{}", text(&out));
    // A credentials file others can read is refused.
    let credentials = home.join("site/credentials.json");
    std::fs::write(&credentials, r#"{"client_id": "x", "client_secret": "y"}"#).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&home, &["start", "site"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    let out = cli(&home, &["stop", "site"]);
    assert!(out.status.success());
    assert!(text(&out).contains("not running"), "{}", text(&out));
    let out = cli(&home, &["start", "nowhere"]);
    assert!(text(&out).contains("configure nowhere"), "{}", text(&out));
    std::fs::remove_dir_all(&home).unwrap();
}
