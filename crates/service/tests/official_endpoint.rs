//! The official `globus-compute-endpoint` 4.19, installed from PyPI, registers with the
//! service as a multi-user endpoint (through the client-credentials route), receives
//! `cmd_start_endpoint` for each user configuration, maps the user's identity to a real
//! local account, starts its own UEP as that account (a ThreadPoolEngine template), and
//! the official SDK receives the results. A real peer nobody here wrote, speaking the
//! protocol with Gantry.
//!
//! Needs root (the official MEP maps identities and drops privileges as root) and
//! creates the local user `gtest-alice`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestService, sdk};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

const LOCAL_USER: &str = "gtest-alice";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs the official endpoint as a root MEP and creates a local user; run it as root"
    );
}

fn ensure_local_user(name: &str) {
    if nix::unistd::User::from_name(name).unwrap().is_some() {
        return;
    }
    let status = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/bash", name])
        .status()
        .unwrap();
    assert!(status.success(), "useradd {name} failed");
}

/// The endpoint runs UEPs with the venv's Python as the mapped user, who must reach it.
fn assert_user_can_run(user: &str, python: &Path) {
    let output = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(python)
        .args(["-c", "import globus_compute_endpoint"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "local user {user} cannot run {} ({}); create the venv from a Python every user can \
         reach, in a directory they can enter (scripts/test does: see GANTRY_TEST_VENV)",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The official MEP process, stopped (its whole process group) when dropped.
struct OfficialMep {
    child: Child,
    log: PathBuf,
}

impl OfficialMep {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as an admin's `stop` does; waits for the MEP to exit.
    fn terminate(&mut self) -> bool {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for OfficialMep {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn write_mep_config(dir: &Path) {
    let mep = dir.join("mep");
    std::fs::create_dir_all(&mep).unwrap();
    std::fs::write(
        mep.join("config.yaml"),
        format!(
            "display_name: Gantry test MEP\nemail: admin@example.org\npublic: true\n\
             local_compute_services: true\nidentity_mapping_config_path: {}\n",
            mep.join("identity_mapping.json").display()
        ),
    )
    .unwrap();
    std::fs::write(
        mep.join("identity_mapping.json"),
        json!([{
            "DATA_TYPE": "expression_identity_mapping#1.0.0",
            "mappings": [{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}]
        }])
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        mep.join("user_config_template.yaml.j2"),
        "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\nheartbeat_period: 5\nidle_heartbeats_soft: 20\n",
    )
    .unwrap();
    std::fs::write(
        mep.join("user_config_schema.json"),
        json!({"type": "object", "properties": {"ACCOUNT_ID": {"type": "string"}}, "required": ["ACCOUNT_ID"]})
            .to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_endpoint_runs_tasks_as_a_mep_registered_with_gantry() {
    require_root();
    ensure_local_user(LOCAL_USER);
    let venv = gantry_testkit::venv_dir();
    assert_user_can_run(LOCAL_USER, &venv.join("bin/python"));

    let service = TestService::start(Backend::Sqlite, true).await;
    let (identity, token) = service.user(&format!("{LOCAL_USER}@example.org")).await;
    let (client, secret) = service
        .store()
        .add_endpoint_client("official-mep")
        .await
        .unwrap();
    let config_dir = gantry_testkit::fresh_temp_dir("official-mep");
    write_mep_config(&config_dir);
    let log = config_dir.join("mep.out");
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new(venv.join("bin/globus-compute-endpoint"))
            .args(["start", "mep"])
            .env("GLOBUS_COMPUTE_USER_DIR", &config_dir)
            .env("GLOBUS_COMPUTE_CLIENT_ID", client.client_id.to_string())
            .env("GLOBUS_COMPUTE_CLIENT_SECRET", &secret)
            .env("GLOBUS_SDK_SERVICE_URL_AUTH", "http://localhost:5000")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(config_dir.join("mep.err")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut mep = OfficialMep { child, log };

    // It registers through the token route and heartbeats: online.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mep_id = loop {
        let endpoints = service
            .store()
            .endpoints_of(client.client_id)
            .await
            .unwrap();
        if let Some(ep) = endpoints
            .iter()
            .find(|e| e.multi_user && e.is_online(gantry_store::now_ms()))
        {
            break ep.endpoint_id;
        }
        assert!(
            Instant::now() < deadline,
            "the official MEP did not come online:\n{}",
            mep.log_text()
        );
        assert!(
            mep.child.try_wait().unwrap().is_none(),
            "the official MEP exited:\n{}",
            mep.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let run = |account: &str| {
        vec![
            ("GANTRY_TOKEN", token.clone()),
            ("ENDPOINT_ID", mep_id.to_string()),
            (
                "USER_ENDPOINT_CONFIG",
                json!({"ACCOUNT_ID": account}).to_string(),
            ),
            ("RESULT_TIMEOUT", "120".to_owned()),
        ]
    };
    let first = sdk("single", run("314159265")).await;
    assert_eq!(first["result"], json!(3), "{first}\n{}", mep.log_text());
    assert_eq!(
        first["who"]["user"], LOCAL_USER,
        "the task ran as the mapped local user"
    );
    let second = sdk("single", run("543126688")).await;
    assert_eq!(second["result"], json!(3), "{second}\n{}", mep.log_text());
    assert_eq!(second["who"]["user"], LOCAL_USER);
    // Results serialized as the submitter asked: the official endpoint reads the
    // `result_serializers` header as a list of import paths.
    let serialized = sdk("serializers", run("314159265")).await;
    assert_eq!(
        (&serialized["type"], &serialized["value"]),
        (&json!("list"), &json!([1, "two"])),
        "{serialized}\n{}",
        mep.log_text()
    );

    // Two configurations, two UEPs, both started by the official MEP and heartbeating.
    let ueps = service.store().ueps_of(mep_id).await.unwrap();
    assert_eq!(ueps.len(), 2);
    assert!(
        ueps.iter()
            .all(|u| u.uep.as_ref().unwrap().user_identity_id == identity)
    );
    assert!(
        ueps.iter().all(|u| u.last_heartbeat_at.is_some()),
        "each UEP heartbeated"
    );
    let first_task = service
        .store()
        .task(first["task_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let second_task = service
        .store()
        .task(second["task_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first_task.endpoint_id, second_task.endpoint_id);

    // Stopping the MEP stops its UEPs: no process of the local user is left.
    assert!(
        mep.terminate(),
        "the official MEP did not stop on SIGTERM:\n{}",
        mep.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = Command::new("pgrep")
            .args(["-u", LOCAL_USER])
            .output()
            .unwrap();
        if !left.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "UEP processes outlived their MEP: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let home = nix::unistd::User::from_name(LOCAL_USER)
        .unwrap()
        .unwrap()
        .dir;
    if let Ok(entries) = std::fs::read_dir(home.join(".globus_compute")) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .contains(&mep_id.to_string())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    service.stop().await;
}
