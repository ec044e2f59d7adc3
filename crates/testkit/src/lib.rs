//! Test support shared by Gantry's crates: where the Python venv with the official
//! Globus Compute packages lives, and checks that the real services the tests talk to
//! (RabbitMQ, PostgreSQL) are there.
//!
//! Nothing here skips a test. A missing venv or service makes the test fail with a
//! message that says what is missing and that `scripts/test` sets it up, so a suite
//! that ran green really exercised the real peers, in CI (`CI=true`) and out of it.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the workspace root")
        .to_path_buf()
}

/// Whether the suite runs under CI (`CI=true`), where every service must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The directory of the test venv: `$GANTRY_TEST_VENV`, else `<workspace>/.venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("GANTRY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"))
}

/// The venv's Python, which has the pinned `globus-compute-sdk` and
/// `globus-compute-endpoint`. Panics with set-up advice when it is missing.
pub fn venv_python() -> PathBuf {
    let python = venv_dir().join("bin/python");
    assert!(
        python.exists(),
        "the test venv is missing: {} does not exist. Run scripts/test (it creates the \
         venv from tests/python-requirements.txt), or point GANTRY_TEST_VENV at one.",
        python.display()
    );
    python
}

/// Runs a Python script from the venv with `args`, feeding `stdin`; panics unless it
/// exits 0, printing its stderr.
pub fn run_python(script: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(venv_python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start the venv's python for {}: {e}",
                script.display()
            )
        });
    let mut pipe = child.stdin.take().expect("stdin was piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let output = child.wait_with_output().expect("python ran");
    writer.join().expect("stdin writer").expect("stdin written");
    assert!(
        output.status.success(),
        "{} {args:?} failed with {}:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Asserts that a TCP service answers at `addr`, naming it in the failure.
pub fn require_service(name: &str, addr: &str) {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "{name} is not reachable at {addr}; this test needs the real service{}. \
         scripts/test installs and starts it.",
        if in_ci() {
            " (CI=true: missing services are failures)"
        } else {
            ""
        }
    );
}

/// The PostgreSQL server the tests use: `$GANTRY_TEST_POSTGRES_URL`, else
/// `postgres://postgres@127.0.0.1:5432/test` (trust authentication).
pub fn postgres_admin_url() -> String {
    std::env::var("GANTRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Creates an empty PostgreSQL database for one test and returns its URL.
///
/// Databases are named `gantry_test_<unix seconds>_<random>`; each call also drops
/// those older than two hours, so crashed runs do not pile up.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let authority = admin
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split('/').next())
        .expect("GANTRY_TEST_POSTGRES_URL looks like postgres://user@host:port/db")
        .to_owned();
    require_service(
        "PostgreSQL",
        authority.rsplit('@').next().unwrap_or(&authority),
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {admin}: {e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let stale: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'gantry_test_%'")
            .fetch_all(&mut conn)
            .await
            .expect("list databases");
    for name in stale {
        let created: u64 = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if created + 7200 < now {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    }
    let name = format!("gantry_test_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    format!("postgres://{authority}/{name}")
}

/// A fresh directory under the system's temp dir for one test's files.
pub fn fresh_temp_dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gantry-{label}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// RabbitMQ's AMQP address for tests: `$GANTRY_TEST_AMQP_HOST`, else `127.0.0.1:5672`.
pub fn amqp_host() -> String {
    std::env::var("GANTRY_TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".to_owned())
}

/// RabbitMQ's management API for tests: `$GANTRY_TEST_AMQP_ADMIN_URL`, else
/// `http://guest:guest@127.0.0.1:15672`.
pub fn amqp_admin_url() -> String {
    std::env::var("GANTRY_TEST_AMQP_ADMIN_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned())
}

/// A virtual host name unique to one test, so tests share the broker without sharing
/// queues. The caller creates it (the service does so itself on start).
pub fn fresh_vhost_name() -> String {
    format!("gantry-test-{}", uuid::Uuid::new_v4().simple())
}

/// The AMQP URL of `vhost` as the guest (admin) account.
pub fn amqp_admin_amqp_url(vhost: &str) -> String {
    require_service("RabbitMQ", &amqp_host());
    format!("amqp://guest:guest@{}/{vhost}", amqp_host())
}

/// The path of a binary of this workspace, built first (a no-op when it is up to date):
/// tests of one package run the shipped programs of another (the service's end-to-end
/// tests run `gantry-endpoint`), which cargo does not build for them by itself.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bins"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(status.success(), "building {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
