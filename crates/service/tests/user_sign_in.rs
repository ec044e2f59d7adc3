//! A scientist's script signs in with no code for it: the talk's `seed_script.py`, run
//! unchanged (no `Client` line), with the official SDK configured only through its own
//! environment variables and a user client from `gantry-service admin add-user-client`.
//! Its tokens act as the user; revoking the client stops the script from signing in.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Backend, TestService, register_site};
use gantry_test_endpoint::{Executor, StartBehaviour, run_mep};

/// Runs the seed's script, byte for byte as the talk shows it, with the SDK's own
/// settings: the local environment, the service as the auth server, the client.
async fn seed_script(mep_id: String, client_id: String, secret: String) -> Output {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/seed_script.py");
    let home = gantry_testkit::fresh_temp_dir("seed-script-home");
    tokio::task::spawn_blocking(move || {
        Command::new(gantry_testkit::venv_python())
            .arg(script)
            .env("MEP_ID", mep_id)
            .env("GLOBUS_COMPUTE_CLIENT_ID", client_id)
            .env("GLOBUS_COMPUTE_CLIENT_SECRET", secret)
            .env("GLOBUS_SDK_ENVIRONMENT", "local")
            .env("GLOBUS_SDK_SERVICE_URL_AUTH", "http://localhost:5000")
            .env("GLOBUS_COMPUTE_USER_DIR", home.join(".globus_compute"))
            .env("HOME", &home)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_script_signs_in_with_a_user_client() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (alice, _) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let mep = run_mep(
        &registered,
        StartBehaviour::Start(Executor::Python(gantry_testkit::venv_python())),
        2.0,
    )
    .await
    .unwrap();
    let client = service.admin_ok(&["add-user-client", "alice@example.org"]);
    assert_eq!(client["acts_as"], "alice@example.org", "{client}");
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let secret = client["client_secret"].as_str().unwrap().to_owned();
    let mep_id = registered.endpoint_id.to_string();

    let output = seed_script(mep_id.clone(), client_id.clone(), secret.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the seed script failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The test MEP runs its UEPs as this test's own account.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    assert_eq!(stdout.trim(), format!("('{me}', None)"));
    // The task was alice's: the client's token acted as her, through her MEP.
    let commands = mep.commands.lock().unwrap().clone();
    assert_eq!(commands.len(), 1, "one UEP started");
    assert_eq!(commands[0].globus_effective_identity, alice);
    assert_eq!(commands[0].globus_username, "alice@example.org");
    let listed = service.admin_ok(&["list-clients"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == client_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (entry["kind"].as_str(), entry["acts_as"].as_str()),
        (Some("user"), Some("alice@example.org")),
        "{listed}"
    );

    // Revoked, the same script cannot sign in, and says so.
    service.admin_ok(&["revoke-client", &client_id]);
    let output = seed_script(mep_id, client_id, secret).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a revoked client signed in");
    assert!(
        stderr.contains("invalid_client") || stderr.contains("401"),
        "{stderr}"
    );
    mep.stop().await.unwrap();
    service.stop().await;
}
