//! What the service leaves on disk is its account's alone, whatever the umask it was
//! started with, and the broker master secret lives in a 0600 key file (or the
//! environment), not in the database that is backed up and copied around.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Backend, TestService};
use gantry_broker_accounts::management::Management;
use gantry_service::master_secret::MasterSecretSource;
use gantry_store::Store;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `gantry-service serve` with HOME=`home` and umask 022 (as a login shell has it), on a
/// fresh vhost; returns once it listens.
fn serve_with_loose_umask(home: &Path, vhost: &str) -> Child {
    let log = home.join("serve.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" serve --listen 127.0.0.1:0")
        .arg(gantry_testkit::workspace_binary(
            "gantry-service",
            "gantry-service",
        ))
        .env("HOME", home)
        .env_remove("GANTRY_DATABASE_URL")
        .env_remove("GANTRY_BROKER_SECRET")
        .env_remove("GANTRY_BROKER_KEY_FILE")
        .env(
            "GANTRY_AMQP_URL",
            gantry_testkit::amqp_admin_amqp_url(vhost),
        )
        .env("GANTRY_AMQP_ADMIN_URL", gantry_testkit::amqp_admin_url())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("gantry-service listening") {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gantry-service serve exited ({status}): {text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gantry-service did not start: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

async fn stop(mut child: Child, vhost: &str) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap();
    Management::new(&gantry_testkit::amqp_admin_url())
        .unwrap()
        .delete_vhost_and_accounts(vhost)
        .await
        .unwrap();
}

/// The hostile finding: under umask 022, `~/.gantry` was 0755 and `service.db` (with its
/// `-wal` and `-shm`) 0644, and the database held the master secret.
#[tokio::test]
async fn a_new_deployment_keeps_its_files_private_whatever_the_umask() {
    let home = gantry_testkit::fresh_temp_dir("private-home");
    let vhost = gantry_testkit::fresh_vhost_name();
    let child = serve_with_loose_umask(&home, &vhost);
    let dir = home.join(".gantry");
    let key = dir.join("broker.key");
    let files = [
        dir.join("service.db"),
        dir.join("service.db-wal"),
        dir.join("service.db-shm"),
        key.clone(),
    ];
    let modes: Vec<(String, u32)> = std::iter::once(&dir)
        .chain(&files)
        .map(|p| (p.display().to_string(), mode(p)))
        .collect();
    stop(child, &vhost).await;
    assert_eq!(modes[0].1, 0o700, "{modes:?}");
    for (path, mode) in &modes[1..] {
        assert_eq!(*mode, 0o600, "{path}: {mode:04o}");
    }
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(secret.trim().len() >= 32, "{secret:?}");
    let store = Store::connect(&format!("sqlite://{}", dir.join("service.db").display()))
        .await
        .unwrap();
    assert_eq!(store.setting("broker_secret").await.unwrap(), None);
    let _ = std::fs::remove_dir_all(home);
}

/// A deployment made by an older version, with loose modes, is made private on start.
#[tokio::test]
async fn an_older_deployments_loose_files_are_made_private() {
    let home = gantry_testkit::fresh_temp_dir("loose-home");
    let dir = home.join(".gantry");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("service.db");
    // An empty file is an empty SQLite database.
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let vhost = gantry_testkit::fresh_vhost_name();
    let child = serve_with_loose_umask(&home, &vhost);
    let (dir_mode, db_mode) = (mode(&dir), mode(&db));
    stop(child, &vhost).await;
    assert_eq!((dir_mode, db_mode), (0o700, 0o600));
    let _ = std::fs::remove_dir_all(home);
}

/// An older version kept the secret in the database, so every backup holds it: it is
/// dropped, not moved, and a new one is made.
async fn a_secret_kept_in_the_database_is_dropped_for_a_new_one(backend: Backend) {
    let dir = gantry_testkit::fresh_temp_dir("legacy-secret");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("service.db").display()),
        Backend::Postgres => gantry_testkit::fresh_postgres_database().await,
    };
    let legacy = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    Store::connect(&database_url)
        .await
        .unwrap()
        .setting_or_init("broker_secret", || legacy.to_owned())
        .await
        .unwrap();
    let key = dir.join("new.key");
    let service = TestService::start_with(backend, false, |config| {
        config.database_url = database_url.clone();
        config.master_secret = MasterSecretSource::File(key.clone());
    })
    .await;
    let secret = service.running().state.settings.broker_secret.clone();
    assert_ne!(secret, legacy);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim(), secret);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        service.store().setting("broker_secret").await.unwrap(),
        None
    );
    service.stop().await;
    if backend == Backend::Sqlite {
        // Not in a free page or the log either.
        let mut bytes = std::fs::read(dir.join("service.db")).unwrap();
        bytes.extend(std::fs::read(dir.join("service.db-wal")).unwrap_or_default());
        assert!(
            !bytes.windows(legacy.len()).any(|w| w == legacy.as_bytes()),
            "the old secret is still in the database file"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_secret_kept_in_the_database_is_dropped_for_a_new_one_sqlite() {
    a_secret_kept_in_the_database_is_dropped_for_a_new_one(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_secret_kept_in_the_database_is_dropped_for_a_new_one_postgres() {
    a_secret_kept_in_the_database_is_dropped_for_a_new_one(Backend::Postgres).await;
}

/// A second service on the same database that has no key file refuses to make up a
/// secret of its own (its passwords would differ from the first's); a lost key is
/// replaced only when asked, and a key put in place on purpose is a rotation.
#[tokio::test]
async fn a_missing_key_is_not_made_up_for_a_database_that_has_one() {
    let dir = gantry_testkit::fresh_temp_dir("missing-key");
    let store = Store::connect(&format!("sqlite://{}", dir.join("service.db").display()))
        .await
        .unwrap();
    let first = dir.join("first.key");
    let secret =
        gantry_service::master_secret::load(&store, &MasterSecretSource::File(first.clone()))
            .await
            .unwrap();
    // The same key again: the same secret.
    let again =
        gantry_service::master_secret::load(&store, &MasterSecretSource::File(first.clone()))
            .await
            .unwrap();
    assert_eq!(again, secret);
    // Another host, no key file: refused, saying what to do.
    let elsewhere = dir.join("elsewhere.key");
    let error =
        gantry_service::master_secret::load(&store, &MasterSecretSource::File(elsewhere.clone()))
            .await
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("no key file") && error.contains("--new-broker-secret"),
        "{error}"
    );
    assert!(!elsewhere.exists());
    // Asked for: a new secret.
    let replaced = gantry_service::master_secret::load(
        &store,
        &MasterSecretSource::NewFile(elsewhere.clone()),
    )
    .await
    .unwrap();
    assert_ne!(replaced, secret);
    let error = gantry_service::master_secret::load(
        &store,
        &MasterSecretSource::NewFile(elsewhere.clone()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("exists"), "{error}");
    // The first key put back on purpose: taken (a rotation back).
    let back = gantry_service::master_secret::load(&store, &MasterSecretSource::File(first))
        .await
        .unwrap();
    assert_eq!(back, secret);
    let _ = std::fs::remove_dir_all(dir);
}

/// What start says for a key file others can read, and for a secret too short to be one.
#[tokio::test]
async fn exposed_or_weak_secrets_are_refused() {
    let dir = gantry_testkit::fresh_temp_dir("exposed-key");
    let key = dir.join("broker.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("service.db").display()))
        .await
        .unwrap();
    let error = gantry_service::master_secret::load(&store, &MasterSecretSource::File(key))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("readable by others") && error.contains("chmod 600"),
        "{error}"
    );
    // A symbolic link to a private file is not followed.
    let target = dir.join("private.key");
    std::fs::write(
        &target,
        "0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let error = gantry_service::master_secret::load(&store, &MasterSecretSource::File(link))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("symbolic link"), "{error}");
    // Nor is a key in a folder others may write to.
    let open_dir = dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let swapped = open_dir.join("broker.key");
    std::fs::write(
        &swapped,
        "0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::set_permissions(&swapped, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = gantry_service::master_secret::load(&store, &MasterSecretSource::File(swapped))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("others may write"), "{error}");
    let error =
        gantry_service::master_secret::load(&store, &MasterSecretSource::Value("short".into()))
            .await
            .unwrap_err()
            .to_string();
    assert!(error.contains("GANTRY_BROKER_SECRET"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}
