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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestService};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use uuid::Uuid;

const ALICE: &str = "gtest-alice";
const BOB: &str = "gtest-bob";
const SYSTEM: &str = "gtest-sys";
const GROUP: &str = "gtest-shared";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs gantry-endpoint as a root MEP and creates local users; run it as root"
    );
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

fn ensure_users() {
    // Tests run in parallel processes: one creates the users at a time.
    let lock = std::fs::File::create("/tmp/gantry-test-users.lock").unwrap();
    lock.lock().unwrap();
    if nix::unistd::Group::from_name(GROUP).unwrap().is_none() {
        run("groupadd", &[GROUP]);
    }
    for name in [ALICE, BOB] {
        if nix::unistd::User::from_name(name).unwrap().is_none() {
            run("useradd", &["--create-home", "--shell", "/bin/bash", name]);
        }
    }
    run("usermod", &["-a", "-G", GROUP, ALICE]);
    // A home left by an earlier, interrupted run may belong to someone else.
    for name in [ALICE, BOB] {
        let user = nix::unistd::User::from_name(name).unwrap().unwrap();
        let owned = std::fs::metadata(&user.dir).is_ok_and(|m| m.uid() == user.uid.as_raw());
        if !owned {
            std::fs::create_dir_all(&user.dir).unwrap();
            run(
                "chown",
                &[
                    "-R",
                    &format!("{name}:{name}"),
                    &user.dir.display().to_string(),
                ],
            );
        }
    }
    if nix::unistd::User::from_name(SYSTEM).unwrap().is_none() {
        run(
            "useradd",
            &["--system", "--create-home", "--shell", "/bin/bash", SYSTEM],
        );
    }
}

fn user_processes(user: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-u", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A running `gantry-endpoint start mep`, killed with its process group when dropped.
struct Mep {
    child: Child,
    home: PathBuf,
}

impl Mep {
    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("mep.err")).unwrap_or_default()
    }

    fn dir(&self) -> PathBuf {
        self.home.join("mep")
    }

    fn id(&self) -> Option<Uuid> {
        let text = std::fs::read_to_string(self.dir().join("endpoint.json")).ok()?;
        serde_json::from_str::<Value>(&text).ok()?["endpoint_id"]
            .as_str()?
            .parse()
            .ok()
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Mep {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
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
    let program = gantry_testkit::workspace_binary("gantry-endpoint", "gantry-endpoint");
    let (client, secret) = service
        .store()
        .add_endpoint_client("gantry-mep")
        .await
        .unwrap();
    let home = gantry_testkit::fresh_temp_dir("gantry-mep");
    write_mep(&home);
    let child = Command::new(program)
        .args(["start", "mep"])
        .env("GANTRY_HOME", &home)
        .env("GANTRY_CLIENT_ID", client.client_id.to_string())
        .env("GANTRY_CLIENT_SECRET", &secret)
        .env("GANTRY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(home.join("mep.out")).unwrap())
        .stderr(std::fs::File::create(home.join("mep.err")).unwrap())
        .spawn()
        .unwrap();
    let mut mep = Mep { child, home };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = mep.id()
            && let Ok(Some(ep)) = service.store().endpoint(id).await
            && ep.is_online(gantry_store::now_ms())
        {
            return mep;
        }
        assert!(!mep.exited(), "the MEP exited:\n{}", mep.log());
        assert!(
            Instant::now() < deadline,
            "the MEP did not come online:\n{}",
            mep.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a scenario of `python/uep_client.py` as the SDK user `token`.
async fn submit(scenario: &str, token: &str, mep: Uuid, config: Value) -> Value {
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

fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

fn home_of(name: &str) -> PathBuf {
    nix::unistd::User::from_name(name).unwrap().unwrap().dir
}

fn gid_of_group(name: &str) -> u32 {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

fn cleanup_uep_dirs(mep: Uuid) {
    for user in [ALICE, BOB] {
        if let Ok(entries) = std::fs::read_dir(home_of(user).join(".gantry")) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .contains(&mep.to_string())
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

async fn wait_no_user_processes(limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<String> = [ALICE, BOB]
            .iter()
            .flat_map(|u| user_processes(u))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    drop(mep);
    wait_no_user_processes(Duration::from_secs(5)).await;
    cleanup_uep_dirs(mep_id);
    service.stop().await;
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
