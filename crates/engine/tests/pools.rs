//! Worker pools as processes: failed starts, lost workers and pools, timeouts, strangers
//! at the door, scaling, and a shutdown that leaves nothing behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gantry_engine::EngineEvent;
use gantry_engine::codes;
use serde_json::{Value, json};
use uuid::Uuid;

/// Submits one `add` task and returns its failure text, checking the code.
async fn first_task_fails_to_start(engine: Value, expected_python: Option<String>) -> String {
    let buffers = make_tasks(&[case("add", json!([1, 2]))]);
    let mut engine = start_expecting(engine, expected_python).await;
    let id = engine.submit_all(&buffers)[0];
    let result = engine.result(id).await;
    eprintln!("{}", result.data);
    assert_eq!(code(&result), codes::WORKER_START_FAILED, "{}", result.data);
    assert_eq!(result.error.as_ref().unwrap().user_message, result.data);
    engine.shutdown().await;
    result.data
}

#[tokio::test]
async fn a_missing_python_fails_tasks_saying_so() {
    let message = first_task_fails_to_start(
        json!({"type": "ThreadPoolEngine", "max_workers": 1,
               "worker_python": "/nonexistent/bin/python3"}),
        None,
    )
    .await;
    assert!(
        message.contains("\"/nonexistent/bin/python3\""),
        "{message}"
    );
    assert!(message.contains("was not found"), "{message}");
    assert!(message.contains("worker_python"), "{message}");
}

#[tokio::test]
async fn a_python_without_the_sdk_fails_tasks_saying_so() {
    // The venv's Python without its site-packages: a real interpreter, no SDK.
    let dir = RunDir::new();
    let wrapper = dir.path.join("python-without-sdk");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", venv_python()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let message = first_task_fails_to_start(
        json!({"type": "ProcessPoolEngine", "max_workers": 1,
               "worker_python": wrapper.to_string_lossy()}),
        None,
    )
    .await;
    assert!(
        message.contains("cannot import globus_compute_sdk"),
        "{message}"
    );
    assert!(message.contains("ModuleNotFoundError"), "{message}");
    assert!(message.contains("Install globus-compute-sdk"), "{message}");
}

#[tokio::test]
async fn a_different_python_minor_fails_tasks_naming_both() {
    let actual = venv_python_minor();
    let message = first_task_fails_to_start(
        json!({"type": "GlobusComputeEngine", "worker_python": venv_python(),
               "provider": {"type": "LocalProvider"}}),
        Some("3.99".into()),
    )
    .await;
    assert!(message.contains("submitted from Python 3.99"), "{message}");
    assert!(
        message.contains(&format!("is Python {actual}.")),
        "{message}"
    );
}

#[tokio::test]
async fn a_failing_worker_init_fails_tasks_with_its_output() {
    let message = first_task_fails_to_start(
        json!({"type": "GlobusComputeEngine", "worker_python": venv_python(),
               "provider": {"type": "LocalProvider",
                            "worker_init": "echo 'module: cuda/12 not found' >&2\nexit 3"}}),
        None,
    )
    .await;
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("module: cuda/12 not found"), "{message}");
}

#[tokio::test]
async fn gc_task_timeout_stops_the_task_and_the_pool_goes_on() {
    let buffers = make_tasks(&[case("sleep", json!([60])), case("add", json!([2, 3]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "worker_python": venv_python(),
        "provider": {"type": "LocalProvider", "worker_init": "export GC_TASK_TIMEOUT=1"},
    }))
    .await;
    let slow = engine.submit_with(&buffers[0], None);
    let result = engine.result(slow).await;
    assert_eq!(code(&result), codes::TASK_TIMEOUT, "{}", result.data);
    assert!(
        result.data.contains("GC_TASK_TIMEOUT (1 s)"),
        "{}",
        result.data
    );
    let quick = engine.submit_with(&buffers[1], None);
    let result = engine.result(quick).await;
    assert_eq!(code(&result), "", "{}", result.data);
    assert_eq!(decode(&[&result.data])[0], json!({"sum": 5}));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_killed_worker_loses_its_task_and_is_replaced() {
    let dir = RunDir::new();
    let pids = dir.path.join("pids");
    let buffers = make_tasks(&[
        case("pid_then_sleep", json!([pids.to_string_lossy(), 60])),
        case("add", json!([1, 1])),
    ]);
    let mut engine = start(json!({
        "type": "ProcessPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let doomed = engine.submit_with(&buffers[0], None);
    let worker = wait_for_pids(&pids, 1).await[0];
    kill_9(worker);
    let result = engine.result(doomed).await;
    assert_eq!(code(&result), codes::WORKER_LOST, "{}", result.data);
    assert!(
        result.data.contains(&format!("(pid {worker})")),
        "{}",
        result.data
    );
    assert!(
        result.data.contains("signal 9 (SIGKILL)"),
        "{}",
        result.data
    );
    // ProcessPoolEngine does not retry: the task ran once.
    assert_eq!(wait_for_pids(&pids, 1).await.len(), 1);
    let next = engine.submit_with(&buffers[1], None);
    assert_eq!(code(&engine.result(next).await), "");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_lost_worker_is_retried_up_to_max_retries_on_system_failure() {
    let dir = RunDir::new();
    let pids = dir.path.join("pids");
    let buffers = make_tasks(&[case("pid_then_sleep", json!([pids.to_string_lossy(), 60]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "worker_python": venv_python(),
        "max_retries_on_system_failure": 1,
        "provider": {"type": "LocalProvider"},
    }))
    .await;
    let id = engine.submit_with(&buffers[0], None);
    kill_9(wait_for_pids(&pids, 1).await[0]);
    let result = engine.result(id).await;
    assert_eq!(code(&result), "", "{}", result.data);
    assert_eq!(
        decode(&[&result.data])[0],
        json!(2),
        "the second attempt ran it"
    );
    let starts = engine
        .seen
        .iter()
        .filter(|e| matches!(e, EngineEvent::Started { task_id, .. } if *task_id == id))
        .count();
    assert_eq!(starts, 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_task_whose_worker_is_lost_every_time_fails_listing_each_attempt() {
    let buffers = make_tasks(&[case("sleep", json!([60]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "worker_python": venv_python(),
        "max_retries_on_system_failure": 1,
        "provider": {"type": "LocalProvider"},
    }))
    .await;
    let id = engine.submit_with(&buffers[0], None);
    for attempt in 1..=2 {
        wait_started(&mut engine, id, attempt).await;
        // Started means the (replacement) worker is up and has the task.
        let workers = worker_pids(&engine.dir.marker());
        assert_eq!(workers.len(), 1, "{workers:?}");
        kill_9(workers[0]);
    }
    let result = engine.result(id).await;
    assert_eq!(code(&result), codes::WORKER_LOST, "{}", result.data);
    assert!(result.data.contains("ran 2 times"), "{}", result.data);
    assert!(
        result.data.contains("attempt 1: worker 0"),
        "{}",
        result.data
    );
    assert!(
        result.data.contains("attempt 2: worker 0"),
        "{}",
        result.data
    );
    engine.shutdown().await;
}

/// Waits until the engine reported `count` starts of `id`.
async fn wait_started(engine: &mut TestEngine, id: Uuid, count: usize) {
    let started = |engine: &TestEngine| {
        engine
            .seen
            .iter()
            .filter(|e| matches!(e, EngineEvent::Started { task_id, .. } if *task_id == id))
            .count()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while started(engine) < count {
        let event = tokio::time::timeout_at(deadline, engine.handle.next_event())
            .await
            .unwrap_or_else(|_| panic!("start {count} of {id} never came"))
            .expect("the engine stopped");
        engine.seen.push(event);
    }
}

/// The pids of this engine's Python workers.
fn worker_pids(marker: &str) -> Vec<i32> {
    processes_with(marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("gantry_worker.py"))
        .map(|(pid, _)| pid as i32)
        .collect()
}

/// The pids of this engine's pool processes (after their shell exec'd them).
fn pool_pids(marker: &str) -> Vec<i32> {
    let program = pool_program().to_string_lossy().into_owned();
    processes_with(marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with(&program))
        .map(|(pid, _)| pid as i32)
        .collect()
}

#[tokio::test]
async fn a_killed_pool_loses_its_tasks_its_workers_die_and_a_new_pool_starts() {
    let dir = RunDir::new();
    let pids = dir.path.join("pids");
    let buffers = make_tasks(&[
        case("pid_then_sleep", json!([pids.to_string_lossy(), 600])),
        case("add", json!([1, 1])),
    ]);
    // A process worker runs its task on its main thread and does not notice its pipe
    // closing: only the parent-death signal can end it.
    let mut engine = start(json!({
        "type": "ProcessPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let doomed = engine.submit_with(&buffers[0], None);
    let worker = wait_for_pids(&pids, 1).await[0];
    let pools = pool_pids(&engine.dir.marker());
    assert_eq!(pools.len(), 1, "{:?}", processes_with(&engine.dir.marker()));
    kill_9(pools[0]);
    let result = engine.result(doomed).await;
    assert_eq!(code(&result), codes::WORKER_LOST, "{}", result.data);
    assert!(result.data.contains("block 1"), "{}", result.data);
    // The worker died with its pool (parent-death signal).
    wait_until("the orphaned worker to die", || {
        !std::path::Path::new(&format!("/proc/{worker}")).exists() || is_zombie_pid(worker)
    })
    .await;
    // A new block takes over.
    let next = engine.submit_with(&buffers[1], None);
    assert_eq!(code(&engine.result(next).await), "");
    engine.shutdown().await;
}

fn is_zombie_pid(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited too long for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects this process's logs.
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

fn frame(value: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(value).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn read_frame(stream: &mut std::net::TcpStream) -> Option<Value> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_stranger_without_the_secret_is_refused_and_logged() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let buffers = make_tasks(&[case("add", json!([2, 2]))]);
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let address = engine.handle.pool_address().unwrap();

    // A stranger who speaks the protocol but guesses the proof.
    let stranger = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let local = stream.local_addr().unwrap();
        let challenge = read_frame(&mut stream).unwrap();
        assert_eq!(challenge["type"], "challenge");
        stream
            .write_all(&frame(&json!({
                "type": "hello", "protocol": 1, "block": 1,
                "nonce": "00".repeat(32), "proof": "11".repeat(32)
            })))
            .unwrap();
        let answer = read_frame(&mut stream).unwrap();
        // Nothing more: the door is shut.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (local, challenge, answer, rest)
    })
    .await
    .unwrap();
    let (local, challenge, answer, rest) = stranger;
    assert_eq!(answer["type"], "refused", "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("authentication failed")
    );
    assert!(rest.is_empty());

    // A real pool program holding another secret gets no further.
    let other_secret = engine.dir.path.join("other-secret");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&other_secret)
            .unwrap();
        file.write_all("ab".repeat(32).as_bytes()).unwrap();
    }
    let output = tokio::process::Command::new(pool_program())
        .args(["--uep", &address.to_string(), "--uep-id"])
        .arg(challenge["uep_id"].as_str().unwrap())
        .args(["--block", "1", "--secret-file"])
        .arg(&other_secret)
        .arg("--run-dir")
        .arg(&engine.dir.path)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused this pool"), "{stderr}");

    // The engine's own pool still works.
    let id = engine.submit_all(&buffers)[0];
    assert_eq!(code(&engine.result(id).await), "");
    engine.shutdown().await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let refusal = logs
        .lines()
        .find(|l| l.contains("refused a worker pool connection") && l.contains(&local.to_string()))
        .unwrap_or_else(|| panic!("no refusal naming {local} in the logs:\n{logs}"));
    assert!(refusal.contains("wrong proof"), "{refusal}");
}

#[tokio::test]
async fn blocks_scale_out_to_max_blocks_and_in_after_max_idletime() {
    let buffers = make_tasks(&[case("sleep", json!([2]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "worker_python": venv_python(),
        "job_status_kwargs": {"max_idletime": 1, "strategy_period": 0.2},
        "provider": {"type": "LocalProvider", "init_blocks": 0, "min_blocks": 0, "max_blocks": 3},
    }))
    .await;
    let ids: Vec<Uuid> = (0..5)
        .map(|_| engine.submit_with(&buffers[0], None))
        .collect();
    let mut statuses = engine
        .wait_status("three blocks running tasks", |s| {
            s.blocks == 3 && s.workers == 3
        })
        .await;
    engine.results(&ids).await;
    statuses.extend(
        engine
            .wait_status("scaling in to min_blocks", |s| s.blocks == 0)
            .await,
    );
    let most = statuses.iter().map(|s| s.blocks).max().unwrap();
    assert_eq!(most, 3, "never more than max_blocks: {statuses:?}");
    wait_until("the idle pools to exit", || {
        pool_pids(&engine.dir.marker()).is_empty()
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn min_blocks_stay_when_idle() {
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "worker_python": venv_python(),
        "job_status_kwargs": {"max_idletime": 0, "strategy_period": 0.1},
        "provider": {"type": "LocalProvider", "init_blocks": 2, "min_blocks": 1, "max_blocks": 2},
    }))
    .await;
    let statuses = engine
        .wait_status("one idle block stopped", |s| {
            s.blocks == 1 && s.workers == 1
        })
        .await;
    assert!(statuses.iter().any(|s| s.blocks == 2), "{statuses:?}");
    // And the last one stays: several strategy periods later it is still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.handle.status().blocks, 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_pool_worker_or_task_process_behind() {
    let unique = format!("{}", 600 + (Uuid::new_v4().as_u128() % 1000) as u32);
    let sleeper = format!("sleep {unique}.25");
    let buffers = make_tasks(&[
        json!({"case": format!("shell:{sleeper}; echo never")}),
        case("sleep", json!([600])),
    ]);
    let mut engine = start(json!({
        "type": "ProcessPoolEngine", "max_workers": 2, "worker_python": venv_python()
    }))
    .await;
    let marker = engine.dir.marker();
    engine.submit_all(&buffers);
    engine
        .wait_status("both tasks running", |s| {
            s.workers == 2 && s.idle_workers == 0
        })
        .await;
    wait_until("the shell command to run", || {
        !processes_with(&sleeper).is_empty()
    })
    .await;
    assert_eq!(worker_pids(&marker).len(), 2);
    assert_eq!(pool_pids(&marker).len(), 1);
    let dir = engine.shutdown().await;
    wait_until("every process to be gone", || {
        processes_with(&marker).is_empty() && processes_with(&sleeper).is_empty()
    })
    .await;
    drop(dir);
}

#[tokio::test]
async fn dropping_the_handle_also_stops_the_pools() {
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    engine
        .wait_status("the pool ready", |s| s.workers == 1)
        .await;
    let marker = engine.dir.marker();
    let common::TestEngine { handle, dir, .. } = engine;
    drop(handle);
    wait_until("every process to be gone", || {
        processes_with(&marker).is_empty()
    })
    .await;
    drop(dir);
}

#[tokio::test]
async fn a_uep_killed_outright_takes_its_pools_and_workers_with_it() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = RunDir::new();
    let marker = dir.marker();
    let buffers = make_tasks(&[case("sleep", json!([600])), case("sleep", json!([600]))]);
    let request = json!({
        "engine": {"type": "GlobusComputeEngine", "max_workers_per_node": 1,
                   "worker_python": venv_python(),
                   "provider": {"type": "LocalProvider", "init_blocks": 2, "max_blocks": 2}},
        "tasks": buffers,
    });
    let mut uep = tokio::process::Command::new(pool_program().with_file_name("engine-host"))
        .arg(&dir.path)
        .arg(pool_program())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = uep.stdin.take().unwrap();
    stdin
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut events = tokio::io::BufReader::new(uep.stdout.take().unwrap()).lines();
    let mut started = 0;
    while started < 2 {
        let line = tokio::time::timeout(PATIENCE, events.next_line())
            .await
            .expect("the tasks never started")
            .unwrap()
            .expect("the UEP stand-in exited");
        started += usize::from(line.contains("started"));
    }
    assert_eq!(pool_pids(&marker).len(), 2, "{:?}", processes_with(&marker));
    assert_eq!(
        worker_pids(&marker).len(),
        2,
        "{:?}",
        processes_with(&marker)
    );
    uep.start_kill().unwrap();
    uep.wait().await.unwrap();
    wait_until("the pools and workers of the killed UEP to be gone", || {
        processes_with(&marker).is_empty()
    })
    .await;
}

#[tokio::test]
async fn unusable_allowed_serializers_fail_tasks_saying_so() {
    let message = first_task_fails_to_start(
        json!({"type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python(),
               "allowed_serializers": ["no.such.Strategy"]}),
        None,
    )
    .await;
    assert!(
        message.contains("allowed_serializers cannot be used"),
        "{message}"
    );
    assert!(message.contains("no.such.Strategy"), "{message}");
}
