//! Gantry's own multi-user endpoint end to end: `gantry-endpoint start` as a root MEP
//! against the real service and RabbitMQ, real local users made here, and the official
//! SDK submitting as a scientist. Checks SPEC §5: one UEP per (user, configuration) as
//! the mapped account with its groups, home, clean environment and 0600 log; refused
//! identities fail their tasks with the reason; SIGTERM and `kill -9` of the MEP leave
//! no user process behind.
//!
//! Needs root: it creates the local users `gtest-alice`, `gtest-bob` and the system
//! account `gtest-sys`, and runs the MEP as root.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::local::{self, Mep, home_of, run, uid_of, user_processes, wait_online};
use common::{Backend, TestService};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use uuid::Uuid;

const ALICE: &str = "gtest-alice";
const BOB: &str = "gtest-bob";
const SYSTEM: &str = "gtest-sys";
const GROUP: &str = "gtest-shared";

fn ensure_users() {
    // Tests run in parallel processes: one creates the users at a time.
    let _lock = local::users_lock();
    if nix::unistd::Group::from_name(GROUP).unwrap().is_none() {
        run("groupadd", &[GROUP]);
    }
    for name in [ALICE, BOB] {
        local::ensure_user(name, &[]);
    }
    run("usermod", &["-a", "-G", GROUP, ALICE]);
    local::ensure_user(SYSTEM, &["--system"]);
}

fn write_mep(home: &Path) {
    let dir = home.join("mep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "display_name: Gantry test MEP\nmulti_user: true\nservice_url: http://127.0.0.1:5000\n\
             heartbeat_period: 5\nidentity_mapping_config_path: {}\nsomething_unknown: true\n",
            dir.join("identity_mapping.json").display()
        ),
    )
    .unwrap();
    write_mapping(&dir, &[]);
    let python = gantry_testkit::venv_python();
    // ENGINE picks the engine; HB and IDLE let a test shorten heartbeats and idle time.
    std::fs::write(
        dir.join("user_config_template.yaml.j2"),
        format!(
            "{{% if ENGINE is defined and ENGINE == '\"gce\"' %}}\n\
             engine:\n  type: GlobusComputeEngine\n  max_workers_per_node: 2\n\
             \x20 max_retries_on_system_failure: 1\n  worker_python: {python}\n\
             \x20 provider:\n    type: LocalProvider\n    init_blocks: 1\n    max_blocks: 1\n\
             {{% else %}}\n\
             engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n  worker_python: {python}\n\
             {{% endif %}}\n\
             heartbeat_period: {{{{ HB|default(5) }}}}\nidle_heartbeats_soft: {{{{ IDLE|default(60) }}}}\n\
             endpoint_setup: {{{{ SETUP|default(\"echo ready\") }}}}\n\
             # account {{{{ ACCOUNT_ID }}}}\n",
            python = python.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("user_config_schema.json"),
        json!({
            "type": "object",
            "properties": {
                "ACCOUNT_ID": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                "ENGINE": {"enum": ["thread", "gce"]},
                "HB": {"type": "integer", "minimum": 1, "maximum": 30},
                "IDLE": {"type": "integer", "minimum": 1, "maximum": 100},
                "SETUP": {"type": "string"}
            },
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

/// `extra` rules come first: `(username, local account)` literal mappings.
fn write_mapping(dir: &Path, extra: &[(&str, &str)]) {
    let mut mappings: Vec<Value> = extra
        .iter()
        .map(|(from, to)| json!({"source": "{username}", "match": from, "output": to, "literal": true}))
        .collect();
    mappings.push(json!({"source": "{username}", "match": "(alice|bob)@example\\.org", "output": "gtest-{0}"}));
    std::fs::write(
        dir.join("identity_mapping.json"),
        json!([{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": mappings}])
            .to_string(),
    )
    .unwrap();
}

async fn start_mep(service: &TestService) -> Mep {
    let home = gantry_testkit::fresh_temp_dir("gantry-mep");
    write_mep(&home);
    local::start_mep_in(service, home).await
}

/// The test users' leftover processes, waited for up to `limit`.
async fn wait_no_user_processes(limit: Duration) -> Vec<String> {
    local::wait_no_user_processes(&[ALICE, BOB], limit).await
}

fn cleanup_uep_dirs(mep: Uuid) {
    local::cleanup_uep_dirs(&[ALICE, BOB], mep)
}

/// Ends a test: kills the MEP, gives its users' processes a moment to go, removes the
/// UEP folders it made and stops the service (with its vhost).
async fn tear_down(mep: Mep, mep_id: Uuid, service: TestService) {
    drop(mep);
    wait_no_user_processes(Duration::from_secs(5)).await;
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}

fn require_root() {
    local::require_root("this test runs gantry-endpoint as a root MEP and creates local users");
}

/// Runs a scenario of `python/uep_client.py` as the SDK user `token`.
async fn submit(scenario: &str, token: &str, mep: Uuid, config: Value) -> Value {
    submit_with(scenario, token, mep, config, &[]).await
}

/// [`submit`] with extra environment for the scenario.
async fn submit_with(
    scenario: &str,
    token: &str,
    mep: Uuid,
    config: Value,
    env: &[(&str, String)],
) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/uep_client.py");
    let mut command = Command::new(gantry_testkit::venv_python());
    command
        .arg(script)
        .arg(scenario)
        .env("GANTRY_TOKEN", token)
        .env("ENDPOINT_ID", mep.to_string())
        .env("USER_ENDPOINT_CONFIG", config.to_string())
        .env("RESULT_TIMEOUT", "60")
        .env(
            "GLOBUS_COMPUTE_USER_DIR",
            gantry_testkit::fresh_temp_dir("sdk-home"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::task::spawn_blocking(move || {
        let child = command.spawn().unwrap();
        let pid = child.id();
        // A hung scenario is killed after 120 s and fails the test with its output.
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
        "SDK scenario {scenario} failed ({}):\n{}",
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

fn gid_of_group(name: &str) -> u32 {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mep_starts_one_uep_per_user_and_configuration_as_the_mapped_account() {
    require_root();
    ensure_users();
    assert!(
        wait_no_user_processes(Duration::from_secs(1))
            .await
            .is_empty(),
        "test users already run processes"
    );
    let service = TestService::start(Backend::Sqlite, true).await;
    let (alice_identity, alice) = service.user("alice@example.org").await;
    let (_, bob) = service.user("bob@example.org").await;
    let mut mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();

    let a1 = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "1"})).await;
    let a2 = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "2"})).await;
    let b1 = submit("probe", &bob, mep_id, json!({"ACCOUNT_ID": "1"})).await;
    for (out, user) in [(&a1, ALICE), (&a2, ALICE), (&b1, BOB)] {
        // The results carry the workers' environment, so the SDK finds nothing to warn of.
        assert_eq!(out["warnings"], json!([]), "{out}");
        let r = &out["result"];
        assert_eq!(r["user"], user, "{out}\n{}", mep.log());
        assert_eq!(r["uid"], uid_of(user));
        assert_eq!(r["euid"], uid_of(user));
        assert_eq!(r["home"], home_of(user).display().to_string());
        assert_eq!(r["env"]["USER"], user);
        assert_eq!(r["env"]["GANTRY_TEST_MARK"], "from user_environment.yaml");
        assert_eq!(r["env"]["PATH"], "/usr/local/bin:/usr/bin:/bin");
        assert_eq!(r["env"]["GC_TASK_UUID"], out["task_id"]);
        // A clean environment: none of the MEP's (root's, the test's) variables.
        let keys: Vec<&str> = r["env_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for leaked in [
            "GANTRY_CLIENT_SECRET",
            "GANTRY_CLIENT_ID",
            "GANTRY_HOME",
            "CARGO",
            "RUST_LOG",
        ] {
            assert!(
                !keys.contains(&leaked),
                "{leaked} leaked into the UEP's environment: {keys:?}"
            );
        }
        assert_eq!(r["umask"], 0o077);
        // The UEP's process title, as htop shows it.
        let titles: Vec<&str> = r["ancestors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["title"].as_str().unwrap())
            .collect();
        assert!(
            titles
                .iter()
                .any(|t| t.contains("Gantry Endpoint (") && t.contains(&format!("uep.{mep_id}."))),
            "no UEP title among the task's ancestors: {titles:?}"
        );
    }
    let alice_groups: Vec<u32> = a1["result"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap() as u32)
        .collect();
    assert!(
        alice_groups.contains(&gid_of_group(GROUP)),
        "alice's supplementary group is missing: {alice_groups:?}"
    );
    let bob_groups: Vec<u32> = b1["result"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap() as u32)
        .collect();
    assert!(!bob_groups.contains(&gid_of_group(GROUP)));

    // Three UEPs, bound to the right users, each with its own log, 0600, in its home.
    let ueps = service.store().ueps_of(mep_id).await.unwrap();
    assert_eq!(ueps.len(), 3, "{ueps:?}");
    assert_eq!(
        ueps.iter()
            .filter(|u| u.uep.as_ref().unwrap().user_identity_id == alice_identity)
            .count(),
        2
    );
    for uep in &ueps {
        let user = if uep.uep.as_ref().unwrap().user_identity_id == alice_identity {
            ALICE
        } else {
            BOB
        };
        let log = home_of(user)
            .join(".gantry")
            .join(format!("uep.{mep_id}.{}", uep.endpoint_id))
            .join("endpoint.log");
        let meta = std::fs::metadata(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            log.display()
        );
        assert_eq!(meta.uid(), uid_of(user));
    }
    let running_before = user_processes(ALICE).len();
    // A second submit to a running UEP starts no twin.
    let again = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "1"})).await;
    assert_eq!(again["result"]["user"], ALICE);
    assert_eq!(service.store().ueps_of(mep_id).await.unwrap().len(), 3);
    let uep_titles = |user: &str| {
        user_processes(user)
            .into_iter()
            .filter(|p| p.contains("Gantry Endpoint ("))
            .count()
    };
    assert_eq!(uep_titles(ALICE), 2, "{:?}", user_processes(ALICE));
    assert_eq!(uep_titles(BOB), 1);
    assert_eq!(user_processes(ALICE).len(), running_before);

    // `gantry-endpoint list` shows the MEP's UEPs.
    let program = gantry_testkit::workspace_binary("gantry-endpoint", "gantry-endpoint");
    let list = Command::new(&program)
        .arg("list")
        .env("GANTRY_HOME", &mep.home)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains("running"), "{list}");
    assert_eq!(list.matches(ALICE).count(), 2, "{list}");
    assert_eq!(list.matches(BOB).count(), 1, "{list}");

    // SIGTERM stops every UEP and the MEP within 12 s.
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
    let left = wait_no_user_processes(Duration::from_millis(500)).await;
    assert!(
        left.is_empty(),
        "processes outlived the MEP: {left:?}\n{}",
        mep.log()
    );
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_identities_and_variables_fail_the_task_with_the_reason() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mut mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    write_mapping(
        &mep.dir(),
        &[
            ("root@example.org", "root"),
            ("sys@example.org", SYSTEM),
            ("ghost@example.org", "gtest-nobody-here"),
        ],
    );
    let cases = [
        ("root@example.org", "never run as root"),
        ("sys@example.org", "below this endpoint's minimum"),
        ("ghost@example.org", "no local account"),
        ("carol@elsewhere.org", "maps to no local account"),
    ];
    for (username, reason) in cases {
        let (_, token) = service.user(username).await;
        let started = Instant::now();
        let out = submit("probe", &token, mep_id, json!({"ACCOUNT_ID": "7"})).await;
        let text = out["error"]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains(reason),
            "{username}: expected {reason:?} in {out}\n{}",
            mep.log()
        );
        assert!(out.get("result").is_none(), "{username} ran a task: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{username}: the failure took {:?}",
            started.elapsed()
        );
    }
    // Variables the schema refuses, and YAML injection: refused with the reason.
    for (config, reason) in [
        (
            json!({"ACCOUNT_ID": "12\nengine: {type: Evil}"}),
            "ACCOUNT_ID",
        ),
        (json!({"ACCOUNT_ID": "1", "extra": "x"}), "extra"),
        (json!({"ACCOUNT_ID": "1", "_GC": "x"}), "_GC"),
        // The rendered config's endpoint_setup runs as the user before the engine; its
        // failure is the start's failure.
        (
            json!({"ACCOUNT_ID": "1", "SETUP": "echo preparing; exit 3"}),
            "endpoint_setup failed",
        ),
    ] {
        let out = submit("probe", &alice, mep_id, config.clone()).await;
        let text = out["error"]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains(reason),
            "{config}: expected {reason:?} in {out}\n{}",
            mep.log()
        );
    }
    // Through all of that the MEP kept serving: alice's task runs.
    assert!(!mep.exited(), "{}", mep.log());
    let ok = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "8"})).await;
    assert_eq!(ok["result"]["user"], ALICE, "{ok}\n{}", mep.log());
    // An exception comes back as the SDK's TaskExecutionFailed with the remote traceback.
    let failed = submit("fails", &alice, mep_id, json!({"ACCOUNT_ID": "8"})).await;
    assert_eq!(failed["error"]["type"], "TaskExecutionFailed", "{failed}");
    assert!(
        failed["error"]["text"]
            .as_str()
            .unwrap()
            .contains("ValueError: refused 'this'"),
        "{failed}"
    );
    tear_down(mep, mep_id, service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mep_leaves_no_user_process_and_mapping_edits_take_effect() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let (_, bob) = service.user("bob@example.org").await;
    let mut mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    let out = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "3"})).await;
    assert_eq!(out["result"]["user"], ALICE, "{out}\n{}", mep.log());

    // An edit that maps bob to alice's account takes effect; a broken edit does not.
    std::fs::write(
        mep.dir().join("identity_mapping.json"),
        json!([{"DATA_TYPE": "expression_identity_mapping#1.0.0",
                "mappings": [{"source": "{username}", "match": "(alice|bob)@example\\.org", "output": ALICE}]}])
        .to_string(),
    )
    .unwrap();
    let out = submit("probe", &bob, mep_id, json!({"ACCOUNT_ID": "3"})).await;
    assert_eq!(
        out["result"]["user"],
        ALICE,
        "the edited mapping was not used: {out}\n{}",
        mep.log()
    );
    std::fs::write(
        mep.dir().join("identity_mapping.json"),
        "[{\"DATA_TYPE\": broken",
    )
    .unwrap();
    let out = submit("probe", &bob, mep_id, json!({"ACCOUNT_ID": "4"})).await;
    assert_eq!(
        out["result"]["user"],
        ALICE,
        "a broken edit replaced the mapping: {out}\n{}",
        mep.log()
    );

    assert!(!user_processes(ALICE).is_empty());
    kill(Pid::from_raw(mep.child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = mep.child.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left: Vec<String> = [ALICE, BOB]
        .iter()
        .flat_map(|u| user_processes(u))
        .collect();
    assert!(
        left.is_empty(),
        "2 s after kill -9 of the MEP, these live on: {left:?}"
    );
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}

/// The pids of `user`'s UEP processes (their titles name a UEP of this MEP).
fn uep_pids(user: &str, mep: Uuid) -> Vec<i32> {
    user_processes(user)
        .iter()
        .filter(|p| p.contains("Gantry Endpoint (") && p.contains(&format!("uep.{mep}.")))
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_tasks_returns_1000_correct_results() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    let out = submit_with(
        "batch",
        &alice,
        mep_id,
        json!({"ACCOUNT_ID": "10"}),
        &[("BATCH_SIZE", "1000".into())],
    )
    .await;
    assert_eq!(out["count"], 1000, "{out}\n{}", mep.log());
    assert_eq!(out["wrong"], json!([]), "wrong results: {out}");
    tear_down(mep, mep_id, service).await;
}

/// Submits the sleeper, kills its worker with SIGKILL once it runs, and returns what the
/// SDK got.
async fn kill_worker_mid_task(token: &str, mep: Uuid, config: Value) -> Value {
    let marker = gantry_testkit::fresh_temp_dir("sleeper").join("marker");
    // The task runs as alice and writes next to the marker.
    let dir = marker.parent().unwrap().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let token = token.to_owned();
    let marker_text = marker.display().to_string();
    let task = tokio::spawn(async move {
        submit_with("sleeper", &token, mep, config, &[("MARKER", marker_text)]).await
    });
    let pid_file = dir.join("marker.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            break text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the sleeper never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_fails_the_task_or_is_retried() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    // No retries (ThreadPoolEngine): a clear failure, not a hang.
    let out = kill_worker_mid_task(&alice, mep_id, json!({"ACCOUNT_ID": "20"})).await;
    let text = out["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("WorkerLost"),
        "expected a worker-lost failure: {out}\n{}",
        mep.log()
    );
    // One retry (GlobusComputeEngine, max_retries_on_system_failure: 1): it runs again.
    let out =
        kill_worker_mid_task(&alice, mep_id, json!({"ACCOUNT_ID": "21", "ENGINE": "gce"})).await;
    assert_eq!(out["result"], "retried", "{out}\n{}", mep.log());
    // The endpoint goes on: the next task runs.
    let ok = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "20"})).await;
    assert_eq!(ok["result"]["user"], ALICE, "{ok}");
    tear_down(mep, mep_id, service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_uep_stops_by_itself_and_the_next_submit_starts_it_again() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    let config = json!({"ACCOUNT_ID": "30", "HB": 1, "IDLE": 2});
    let first = submit("probe", &alice, mep_id, config.clone()).await;
    assert_eq!(first["result"]["user"], ALICE, "{first}\n{}", mep.log());
    let before = uep_pids(ALICE, mep_id);
    assert_eq!(before.len(), 1, "{:?}", user_processes(ALICE));
    // Two idle heartbeats of 1 s after its task: it stops, with its pool and workers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !uep_pids(ALICE, mep_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle UEP did not stop: {:?}\n{}",
            user_processes(ALICE),
            mep.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = wait_no_user_processes(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "the idle UEP left processes: {left:?}");
    // The next submit starts it again (a new process, the same UEP id).
    let second = submit("probe", &alice, mep_id, config).await;
    assert_eq!(second["result"]["user"], ALICE, "{second}\n{}", mep.log());
    let after = uep_pids(ALICE, mep_id);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    assert_eq!(service.store().ueps_of(mep_id).await.unwrap().len(), 1);
    tear_down(mep, mep_id, service).await;
}

fn workspace_file(path: &str) -> PathBuf {
    gantry_testkit::workspace_root().join(path)
}

#[test]
fn the_seed_examples_are_vendored_unchanged() {
    // The seed's files, as the design gives them, sit beside the repository.
    let shared = gantry_testkit::workspace_root().join("../shared/design/examples");
    for name in [
        "submit.py",
        "user_config_template.yaml.j2",
        "seed_script.py",
    ] {
        let ours = std::fs::read(workspace_file(&format!("examples/seed/{name}"))).unwrap();
        let theirs = std::fs::read(shared.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the seed's examples must sit beside the checkout)",
                shared.join(name).display()
            )
        });
        assert_eq!(ours, theirs, "examples/seed/{name} differs from the seed's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_script_runs_unchanged_against_the_quickstart_template() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    // The MEP now uses the quickstart's template and schema (the seed's template with
    // LocalProvider); the workers find Python through PATH, as an admin would set it.
    for name in ["user_config_template.yaml.j2", "user_config_schema.json"] {
        std::fs::copy(
            workspace_file(&format!("examples/quickstart/{name}")),
            mep.dir().join(name),
        )
        .unwrap();
    }
    let venv_bin = gantry_testkit::venv_python().parent().unwrap().to_owned();
    std::fs::write(
        mep.dir().join("user_environment.yaml"),
        format!(
            "PATH: {}:/usr/local/bin:/usr/bin:/bin\n",
            venv_bin.display()
        ),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(gantry_testkit::venv_python())
            .arg(workspace_file("examples/seed/submit.py"))
            .env("MEP_ID", mep_id.to_string())
            .env("GANTRY_TOKEN", &alice)
            .env(
                "GLOBUS_COMPUTE_USER_DIR",
                gantry_testkit::fresh_temp_dir("sdk-home"),
            )
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the seed's script failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        mep.log()
    );
    // It prints (user, SLURM_JOB_ID) once per configuration.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| *l == "('gtest-alice', None)")
            .count(),
        2,
        "{stdout}"
    );
    assert_eq!(service.store().ueps_of(mep_id).await.unwrap().len(), 2);
    tear_down(mep, mep_id, service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_assurance_mep_audits_every_step_of_every_task() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let home = gantry_testkit::fresh_temp_dir("gantry-mep");
    write_mep(&home);
    let config = home.join("mep/config.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("high_assurance: true\n");
    std::fs::write(&config, text).unwrap();
    let mep = local::start_mep_in(&service, home).await;
    let mep_id = mep.id().unwrap();
    let ok = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "40"})).await;
    let failed = submit("fails", &alice, mep_id, json!({"ACCOUNT_ID": "40"})).await;
    assert_eq!(ok["result"]["user"], ALICE, "{ok}\n{}", mep.log());
    assert_eq!(failed["error"]["type"], "TaskExecutionFailed", "{failed}");
    let log_path = mep.dir().join("audit.log");
    let events_of = |task: &Value| -> Vec<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["task_id"] == *task)
            .collect()
    };
    // The last record of a task can trail its result by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_of(&failed["task_id"]).len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names = |records: &[Value]| -> Vec<String> {
        records
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_owned())
            .collect()
    };
    let ok_records = events_of(&ok["task_id"]);
    assert_eq!(
        names(&ok_records),
        ["RECEIVED", "EXEC_START", "RUNNING", "EXEC_END"],
        "{ok_records:?}"
    );
    assert_eq!(
        names(&events_of(&failed["task_id"])),
        ["RECEIVED", "EXEC_START", "RUNNING", "FAILED"]
    );
    // The MEP stamps what the UEP cannot forge: its uid, pid and id.
    for record in &ok_records {
        assert_eq!(record["uid"], uid_of(ALICE));
        assert!(record["pid"].as_i64().unwrap() > 1);
        assert_eq!(
            service.store().ueps_of(mep_id).await.unwrap()[0]
                .endpoint_id
                .to_string(),
            record["uep_id"]
        );
        assert!(record["time"].as_str().unwrap().contains('.'));
    }
    let meta = std::fs::metadata(&log_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    tear_down(mep, mep_id, service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mep_run_by_a_user_serves_only_identities_that_map_to_that_user() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let (_, bob) = service.user("bob@example.org").await;
    let program = gantry_testkit::workspace_binary("gantry-endpoint", "gantry-endpoint");
    let (client, secret) = service
        .store()
        .add_endpoint_client("bobs-mep")
        .await
        .unwrap();
    // Bob's own endpoint folder, in his home, as he would configure it.
    let home = home_of(BOB).join(format!("gantry-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&home).unwrap();
    write_mep(&home);
    run(
        "chown",
        &["-R", &format!("{BOB}:{BOB}"), &home.display().to_string()],
    );
    run("chmod", &["-R", "go-w", &home.display().to_string()]);
    let child = Command::new("runuser")
        .args(["-u", BOB, "--", "env"])
        .arg(format!("GANTRY_HOME={}", home.display()))
        .arg(format!("GANTRY_CLIENT_ID={}", client.client_id))
        .arg(format!("GANTRY_CLIENT_SECRET={secret}"))
        .arg(&program)
        .args(["start", "mep"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create("/dev/null").unwrap())
        .stderr(std::fs::File::create(home.join("mep.err")).unwrap())
        .spawn()
        .unwrap();
    let mut mep = Mep {
        child,
        home: home.clone(),
    };
    let mep_id = wait_online(&service, &mut mep).await;
    let mine = submit("probe", &bob, mep_id, json!({"ACCOUNT_ID": "50"})).await;
    assert_eq!(mine["result"]["user"], BOB, "{mine}\n{}", mep.log());
    let theirs = submit("probe", &alice, mep_id, json!({"ACCOUNT_ID": "50"})).await;
    let text = theirs["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("serves only identities that map to gtest-bob"),
        "{theirs}\n{}",
        mep.log()
    );
    assert!(user_processes(ALICE).is_empty(), "something ran as alice");
    // `runuser` is the test's child; the MEP is bob's process: stop it as `stop` does.
    let pid: i32 = std::fs::read_to_string(mep.dir().join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let left = wait_no_user_processes(Duration::from_secs(15)).await;
    assert!(
        left.is_empty(),
        "bob's MEP left processes: {left:?}\n{}",
        mep.log()
    );
    drop(mep);
    wait_no_user_processes(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&home);
    cleanup_uep_dirs(mep_id);
    service.stop().await;
}

/// Closes every AMQP connection of the test's vhost through the management API, as a
/// broker restart or a network cut would.
async fn close_broker_connections(vhost: &str) -> usize {
    let http = reqwest::Client::new();
    let base = "http://127.0.0.1:15672/api";
    // The management API lists connections with a delay of a few seconds: wait until
    // the service's, the MEP's and the UEP's are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let connections: Vec<Value> = loop {
        let listed: Vec<Value> = http
            .get(format!("{base}/vhosts/{vhost}/connections"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed.len() >= 3 || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for connection in &connections {
        let name = connection["name"].as_str().unwrap();
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        http.delete(format!("{base}/connections/{encoded}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
    }
    connections.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mep_and_its_ueps_reconnect_when_the_broker_drops_them() {
    require_root();
    ensure_users();
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, alice) = service.user("alice@example.org").await;
    let mep = start_mep(&service).await;
    let mep_id = mep.id().unwrap();
    let config = json!({"ACCOUNT_ID": "60", "HB": 1});
    let first = submit("probe", &alice, mep_id, config.clone()).await;
    assert_eq!(first["result"]["user"], ALICE, "{first}\n{}", mep.log());
    let before = uep_pids(ALICE, mep_id);
    assert_eq!(before.len(), 1);
    // Every connection of the deployment goes: the service's, the MEP's and the UEP's.
    let closed = close_broker_connections(&service.vhost).await;
    assert!(
        closed >= 3,
        "expected the service's, the MEP's and the UEP's connections, closed {closed}"
    );
    // They come back by themselves, and the running UEP is kept, not restarted.
    let second = submit("probe", &alice, mep_id, config).await;
    assert_eq!(second["result"]["user"], ALICE, "{second}\n{}", mep.log());
    assert_eq!(
        uep_pids(ALICE, mep_id),
        before,
        "the UEP was restarted instead of reconnecting"
    );
    assert_eq!(service.store().ueps_of(mep_id).await.unwrap().len(), 1);
    tear_down(mep, mep_id, service).await;
}
