//! PAM in Gantry's multi-user endpoint, end to end: a root `gantry-endpoint start` with
//! `pam: {enable: true, service_name: ...}` against the real service and RabbitMQ, real
//! local users made here, a real PAM service file in /etc/pam.d (Debian's modules:
//! pam_exec, pam_permit, pam_deny, pam_unix, pam_echo, pam_env), and the official SDK
//! submitting as a scientist. Checks SPEC §5 step 2: the spawn helper runs PAM's account
//! check and opens a session for the mapped account before the drop, hands PAM's
//! environment to the user endpoint and leaves no_new_privs unset; a refused account
//! fails the user's task with PAM's reason and the MEP keeps serving.
//!
//! Needs root: it creates the local users `gtest-pam` and `gtest-pamexp` (an expired
//! account), writes `/etc/pam.d/gantry-test-pam-<pid>` (removed afterwards) and runs
//! the MEP as root.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::local::{self, Mep, home_of, run, uid_of};
use common::{Backend, TestService};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use uuid::Uuid;

/// A regular account that PAM admits (unless the stack says otherwise).
const USER: &str = "gtest-pam";
/// An account whose expiry date has passed: pam_unix refuses it.
const EXPIRED: &str = "gtest-pamexp";

fn require_root() {
    local::require_root(
        "this test runs gantry-endpoint as a root MEP, creates local users and writes a \
         PAM service file in /etc/pam.d",
    );
}

fn ensure_users() {
    // Tests run in parallel processes: one creates the users at a time.
    let _lock = local::users_lock();
    for name in [USER, EXPIRED] {
        local::ensure_user(name, &[]);
    }
    // Expired on 1970-01-02, so pam_unix's account check refuses it.
    run("usermod", &["--expiredate", "1", EXPIRED]);
    run("usermod", &["--expiredate", "", USER]);
}

async fn wait_no_user_processes(limit: Duration) -> Vec<String> {
    local::wait_no_user_processes(&[USER, EXPIRED], limit).await
}

fn cleanup_uep_dirs(mep: Uuid) {
    local::cleanup_uep_dirs(&[USER, EXPIRED], mep)
}

/// A PAM service of this test: `/etc/pam.d/<name>`, a pam_exec script that appends
/// "<PAM_TYPE> <PAM_USER>" to a marker file, and a pam_env conffile; all removed when
/// dropped.
struct PamService {
    name: String,
    dir: PathBuf,
}

/// The account stack admits everyone and says so through the conversation; the
/// session stack marks and sets GANTRY_PAM_MARK.
const PERMIT: &str = "account required {mark}\n\
                      account required pam_permit.so\n\
                      account optional pam_echo.so PAM account check for %u\n\
                      session required {mark}\n\
                      session required {env}\n";
/// The account stack refuses everyone.
const DENY: &str = "account required {mark}\n\
                    account required pam_deny.so\n\
                    session required {mark}\n";
/// The distribution's account check: expired and locked accounts are refused.
const UNIX: &str = "account required {mark}\n\
                    account required pam_unix.so\n\
                    session required {mark}\n\
                    session required {env}\n";

impl PamService {
    fn new() -> PamService {
        let name = format!("gantry-test-pam-{}", std::process::id());
        let dir = gantry_testkit::fresh_temp_dir("pam");
        let script = dir.join("mark.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$PAM_TYPE $PAM_USER\" >> \"$1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.join("pam_env.conf"),
            "GANTRY_PAM_MARK DEFAULT=set-by-pam-env\n",
        )
        .unwrap();
        let service = PamService { name, dir };
        service.set_stack(PERMIT);
        service
    }

    /// Rewrites the service file; libpam reads it at each `pam_start`, so the next UEP
    /// start uses it.
    fn set_stack(&self, stack: &str) {
        let mark = format!(
            "pam_exec.so quiet {} {}",
            self.dir.join("mark.sh").display(),
            self.marker().display()
        );
        let env = format!(
            "pam_env.so readenv=0 conffile={}",
            self.dir.join("pam_env.conf").display()
        );
        let text = stack.replace("{mark}", &mark).replace("{env}", &env);
        std::fs::write(Path::new("/etc/pam.d").join(&self.name), text).unwrap();
        let _ = std::fs::remove_file(self.marker());
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("marker")
    }

    /// What pam_exec wrote since the last `set_stack`, one "<phase> <user>" a line.
    fn marks(&self) -> Vec<String> {
        std::fs::read_to_string(self.marker())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new("/etc/pam.d").join(&self.name));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_mep(home: &Path, pam_service: &str) {
    let dir = home.join("mep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "display_name: Gantry PAM test MEP\nmulti_user: true\nservice_url: http://127.0.0.1:5000\n\
             heartbeat_period: 5\nidentity_mapping_config_path: {}\n\
             pam:\n  enable: true\n  service_name: {pam_service}\n",
            dir.join("identity_mapping.json").display()
        ),
    )
    .unwrap();
    let mappings = [("pam@example.org", USER), ("expired@example.org", EXPIRED)].map(
        |(from, to)| json!({"source": "{username}", "match": from, "output": to, "literal": true}),
    );
    std::fs::write(
        dir.join("identity_mapping.json"),
        json!([{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": mappings}])
            .to_string(),
    )
    .unwrap();
    let python = gantry_testkit::venv_python();
    std::fs::write(
        dir.join("user_config_template.yaml.j2"),
        format!(
            "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n  worker_python: {}\n\
             heartbeat_period: 5\nidle_heartbeats_soft: 60\n# account {{{{ ACCOUNT_ID }}}}\n",
            python.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("user_config_schema.json"),
        json!({
            "type": "object",
            "properties": {"ACCOUNT_ID": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
            "required": ["ACCOUNT_ID"],
            "additionalProperties": false
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("user_environment.yaml"),
        "GANTRY_TEST_MARK: from user_environment.yaml\n",
    )
    .unwrap();
}

async fn start_mep(service: &TestService, pam_service: &str) -> Mep {
    let home = gantry_testkit::fresh_temp_dir("gantry-mep");
    write_mep(&home, pam_service);
    local::start_mep_in(service, home).await
}

/// The scientist's side: the official SDK submits `probe` and prints one JSON document
/// with the result (what the task saw where it ran) or the error.
const CLIENT: &str = r#"
import json, os, sys

import globus_sdk
import globus_compute_sdk as GC


def probe():
    import getpass
    import os

    def status_field(name):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        return None

    return {
        "user": getpass.getuser(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "home": os.environ.get("HOME"),
        "pam_mark": os.environ.get("GANTRY_PAM_MARK"),
        "test_mark": os.environ.get("GANTRY_TEST_MARK"),
        "no_new_privs": status_field("NoNewPrivs"),
    }


gcc = GC.Client(
    local_compute_services=True,
    authorizer=globus_sdk.AccessTokenAuthorizer(os.environ["GANTRY_TOKEN"]),
)
ex = GC.Executor(
    endpoint_id=os.environ["ENDPOINT_ID"],
    client=gcc,
    user_endpoint_config=json.loads(os.environ["USER_ENDPOINT_CONFIG"]),
)
out = {}
try:
    fut = ex.submit(probe)
    try:
        out["result"] = fut.result(timeout=60)
    except Exception as e:  # noqa: BLE001 - the test checks which
        out["error"] = {"type": type(e).__name__, "text": str(e)}
finally:
    ex.shutdown(wait=False, cancel_futures=True)
json.dump(out, sys.stdout)
sys.stdout.flush()
os._exit(0)
"#;

/// Runs the probe as the SDK user `token`.
async fn submit(token: &str, mep: Uuid, config: Value) -> Value {
    let dir = gantry_testkit::fresh_temp_dir("sdk-home");
    let script = dir.join("pam_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let mut command = Command::new(gantry_testkit::venv_python());
    command
        .arg(script)
        .env("GANTRY_TOKEN", token)
        .env("ENDPOINT_ID", mep.to_string())
        .env("USER_ENDPOINT_CONFIG", config.to_string())
        .env("GLOBUS_COMPUTE_USER_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let child = command.spawn().unwrap();
        let pid = child.id();
        // A hung client is killed after 120 s and fails the test with its output.
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        });
        let output = child.wait_with_output().unwrap();
        drop(watchdog);
        output
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK client failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON from the SDK ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pam_the_uep_runs_after_the_account_check_and_session_and_gets_pams_environment() {
    require_root();
    ensure_users();
    let pam = PamService::new();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("pam@example.org").await;
    let mut mep = start_mep(&service, &pam.name).await;
    let mep_id = mep.id().unwrap();

    let out = submit(&token, mep_id, json!({"ACCOUNT_ID": "1"})).await;
    let r = &out["result"];
    assert_eq!(r["user"], USER, "{out}\n{}", mep.log());
    assert_eq!(r["uid"], uid_of(USER));
    assert_eq!(r["euid"], uid_of(USER));
    assert_eq!(r["home"], home_of(USER).display().to_string());
    // PAM ran for the mapped account: its account stack, then its session stack.
    assert_eq!(
        pam.marks(),
        [format!("account {USER}"), format!("open_session {USER}")],
        "{}",
        mep.log()
    );
    // pam_env's variable reaches the task, next to user_environment.yaml's.
    assert_eq!(r["pam_mark"], "set-by-pam-env", "{out}");
    assert_eq!(r["test_mark"], "from user_environment.yaml", "{out}");
    // With PAM, setuid programs (schedulers' submit commands) keep working.
    assert_eq!(r["no_new_privs"], 0, "{out}");
    // What the modules said through the conversation is in the MEP's log.
    assert!(
        mep.log().contains(&format!("PAM account check for {USER}")),
        "pam_echo's message is not in the MEP's log:\n{}",
        mep.log()
    );

    assert!(!mep.exited());
    kill(Pid::from_raw(mep.child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(12);
    while !mep.exited() {
        assert!(
            Instant::now() < deadline,
            "the MEP did not stop within 12 s:\n{}",
            mep.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = wait_no_user_processes(Duration::from_secs(2)).await;
    assert!(left.is_empty(), "processes outlived the MEP: {left:?}");
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pam_refusal_fails_the_task_with_pams_reason_and_the_mep_keeps_serving() {
    require_root();
    ensure_users();
    let pam = PamService::new();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("pam@example.org").await;
    let (_, expired_token) = service.user("expired@example.org").await;
    let mut mep = start_mep(&service, &pam.name).await;
    let mep_id = mep.id().unwrap();

    // pam_deny in the account stack: refused, and no session is opened.
    pam.set_stack(DENY);
    let started = Instant::now();
    let out = submit(&token, mep_id, json!({"ACCOUNT_ID": "2"})).await;
    let text = out["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!(
            "PAM refused the account {USER}: Authentication failure"
        )),
        "{out}\n{}",
        mep.log()
    );
    assert!(text.contains(&pam.name), "the service is named: {text}");
    assert!(out.get("result").is_none(), "the task ran: {out}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the failure took {:?}",
        started.elapsed()
    );
    assert_eq!(pam.marks(), [format!("account {USER}")], "{}", mep.log());

    // pam_unix and an expired account: refused with pam_unix's own words.
    pam.set_stack(UNIX);
    let out = submit(&expired_token, mep_id, json!({"ACCOUNT_ID": "3"})).await;
    let text = out["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("PAM refused the account {EXPIRED}")),
        "{out}\n{}",
        mep.log()
    );
    assert!(
        text.contains("Your account has expired"),
        "pam_unix's message is missing: {out}"
    );
    assert_eq!(pam.marks(), [format!("account {EXPIRED}")]);

    // Through that the MEP kept serving: the same stack admits a valid account.
    assert!(!mep.exited(), "{}", mep.log());
    let out = submit(&token, mep_id, json!({"ACCOUNT_ID": "4"})).await;
    assert_eq!(out["result"]["user"], USER, "{out}\n{}", mep.log());
    assert_eq!(
        pam.marks(),
        [
            format!("account {EXPIRED}"),
            format!("account {USER}"),
            format!("open_session {USER}")
        ]
    );
    drop(mep);
    wait_no_user_processes(Duration::from_secs(5)).await;
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}
