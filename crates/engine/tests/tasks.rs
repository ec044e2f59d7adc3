//! Tasks made by the real SDK run on each engine type, in real pools and real Python
//! workers; results are read back by the SDK's serializer.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::*;
use gantry_engine::EngineEvent;
use gantry_engine::codes;
use serde_json::{Value, json};

fn cases() -> Vec<Value> {
    vec![
        json!({"case": "add", "args": [1, 2]}),
        json!({"case": "prints_then_returns", "args": ["still fine"]}),
        json!({"case": "add", "args": [40], "kwargs": {"b": 2}}),
        json!({"case": "task_uuid"}),
    ]
}

/// Runs the common cases on `engine` and checks every result with the SDK.
async fn runs_the_common_cases(engine: Value) {
    let buffers = make_tasks(&cases());
    let mut engine = start(engine).await;
    let ids = engine.submit_all(&buffers[..3]);
    let results = engine.results(&ids).await;
    for id in &ids {
        assert_eq!(code(&results[id]), "", "{}", results[id].data);
    }
    let data: Vec<&str> = ids.iter().map(|id| results[id].data.as_str()).collect();
    let values = decode(&data);
    assert_eq!(values[0], json!({"sum": 3}));
    assert_eq!(values[1], json!("still fine"));
    assert_eq!(values[2], json!({"sum": 42}));
    for id in &ids {
        let started = engine
            .seen
            .iter()
            .any(|e| matches!(e, EngineEvent::Started { task_id, .. } if task_id == id));
        assert!(started, "no Started event for {id}");
        assert!(results[id].started.is_some());
    }
    // Alone, since GC_TASK_UUID is an environment variable: tasks running at the same
    // time in one ThreadPoolEngine worker share it, as they do in Globus Compute.
    let id = engine.submit_with(&buffers[3], None);
    let result = engine.result(id).await;
    assert_eq!(
        decode(&[&result.data])[0],
        json!(id.to_string()),
        "GC_TASK_UUID"
    );
    assert_eq!(engine.handle.status().outstanding, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn thread_pool_engine_runs_tasks() {
    runs_the_common_cases(json!({
        "type": "ThreadPoolEngine", "max_workers": 2, "worker_python": venv_python()
    }))
    .await;
}

#[tokio::test]
async fn process_pool_engine_runs_tasks() {
    runs_the_common_cases(json!({
        "type": "ProcessPoolEngine", "max_workers": 2, "worker_python": venv_python()
    }))
    .await;
}

#[tokio::test]
async fn globus_compute_engine_runs_tasks_with_python3_from_worker_init() {
    // No worker_python: the default `python3` must come from the PATH worker_init sets.
    let venv_bin = std::path::Path::new(&venv_python())
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    runs_the_common_cases(json!({
        "type": "GlobusComputeEngine",
        "max_workers_per_node": 2,
        "provider": {"type": "LocalProvider", "init_blocks": 1, "max_blocks": 1,
                     "worker_init": format!("export PATH='{venv_bin}':\"$PATH\"")},
    }))
    .await;
}

#[tokio::test]
async fn an_exception_returns_the_remote_traceback() {
    let buffers = make_tasks(&[
        case("fails", json!(["naïve ☃"])),
        case("exits", json!([])),
        case("fails_undecodably", json!([])),
    ]);
    let mut engine = start(json!({
        "type": "ProcessPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let ids = engine.submit_all(&buffers);
    let results = engine.results(&ids).await;
    let failed = &results[&ids[0]];
    assert_eq!(code(failed), codes::REMOTE_EXECUTION_ERROR);
    assert!(failed.data.starts_with("Traceback"), "{}", failed.data);
    assert!(failed.data.contains("in fails"), "{}", failed.data);
    assert!(
        failed.data.contains("ValueError: bad input 'naïve ☃'"),
        "{}",
        failed.data
    );
    assert!(
        !failed.data.contains("gantry_worker.py"),
        "the worker's own frames are left out: {}",
        failed.data
    );
    assert_eq!(
        failed.error.as_ref().unwrap().user_message,
        "An error occurred during the execution of this task"
    );
    // sys.exit() in a task fails the task, not the worker.
    let exited = &results[&ids[1]];
    assert_eq!(code(exited), codes::REMOTE_EXECUTION_ERROR);
    assert!(exited.data.contains("SystemExit: 3"), "{}", exited.data);
    // Text that is not valid Unicode still makes a result, not a hang.
    let odd = &results[&ids[2]];
    assert_eq!(code(odd), codes::REMOTE_EXECUTION_ERROR);
    assert!(odd.data.contains("ValueError: caf?"), "{}", odd.data);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_result_over_10_mib_is_refused_and_the_worker_carries_on() {
    let buffers = make_tasks(&[
        case("big", json!([11 * 1024 * 1024])),
        case("big", json!([1024 * 1024])),
    ]);
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let ids = engine.submit_all(&buffers);
    let results = engine.results(&ids).await;
    let refused = &results[&ids[0]];
    assert_eq!(code(refused), codes::MAX_RESULT_SIZE_EXCEEDED);
    assert!(
        refused.data.contains("exceeded current limit of 10485760B"),
        "{}",
        refused.data
    );
    let fine = &results[&ids[1]];
    assert_eq!(code(fine), "");
    assert_eq!(
        decode(&[&fine.data])[0].as_str().unwrap().len(),
        1024 * 1024
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_shell_function_runs() {
    let buffers = make_tasks(&[json!({
        "case": "shell:echo hello {name}; pwd", "kwargs": {"name": "gantry"}
    })]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1, "run_in_sandbox": true,
        "worker_python": venv_python(),
        "provider": {"type": "LocalProvider"},
    }))
    .await;
    let id = engine.submit_all(&buffers)[0];
    let result = engine.result(id).await;
    assert_eq!(code(&result), "", "{}", result.data);
    let shell = &decode(&[&result.data])[0];
    assert_eq!(shell["returncode"], 0, "{shell}");
    let stdout = shell["stdout"].as_str().unwrap();
    assert!(stdout.contains("hello gantry"), "{shell}");
    // run_in_sandbox: the command ran in <working_dir>/<task id>.
    let sandbox = engine
        .dir
        .path
        .join("tasks_working_dir")
        .join(id.to_string());
    assert!(stdout.contains(&*sandbox.to_string_lossy()), "{shell}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_resource_specification_is_refused_where_it_means_nothing() {
    let buffers = make_tasks(&[case("add", json!([1, 1]))]);
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let id = engine.submit_with(&buffers[0], Some(json!({"num_nodes": 2})));
    let result = engine.result(id).await;
    assert_eq!(code(&result), codes::INVALID_RESOURCE_SPECIFICATION);
    assert!(result.data.contains("ThreadPoolEngine"), "{}", result.data);
    // An empty one is no specification at all.
    let id = engine.submit_with(&buffers[0], Some(json!({})));
    assert_eq!(code(&engine.result(id).await), "");
    engine.shutdown().await;
}

#[tokio::test]
async fn globus_compute_engine_runs_lower_priority_numbers_first() {
    let buffers = make_tasks(&[case("sleep", json!([2])), case("add", json!([0, 0]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "max_workers_per_node": 1,
        "worker_python": venv_python(),
        "provider": {"type": "LocalProvider", "init_blocks": 1, "max_blocks": 1},
    }))
    .await;
    // Occupy the only worker, then queue a low and a high priority task behind it.
    let blocker = engine.submit_with(&buffers[0], None);
    engine
        .wait_status("the blocker running", |s| {
            s.workers == 1 && s.idle_workers == 0
        })
        .await;
    let low = engine.submit_with(&buffers[1], Some(json!({"priority": 10})));
    let high = engine.submit_with(&buffers[1], Some(json!({"priority": 1})));
    engine.results(&[blocker, low, high]).await;
    let order: Vec<_> = engine
        .seen
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Started { task_id, .. } if *task_id == low || *task_id == high => {
                Some(*task_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![high, low]);
    engine.shutdown().await;
}

#[tokio::test]
async fn allowed_serializers_refuse_other_strategies() {
    let buffers = make_tasks(&[case("add", json!([1, 2]))]);
    let mut engine = start(json!({
        "type": "GlobusComputeEngine", "worker_python": venv_python(),
        "allowed_serializers": ["globus_compute_sdk.serialize.DillCodeSource",
                                "globus_compute_sdk.serialize.JSONData"],
        "provider": {"type": "LocalProvider"},
    }))
    .await;
    let id = engine.submit_all(&buffers)[0];
    let result = engine.result(id).await;
    assert_eq!(
        code(&result),
        codes::REMOTE_EXECUTION_ERROR,
        "{}",
        result.data
    );
    assert!(
        result.data.contains("Code serializer DillCode disabled"),
        "{}",
        result.data
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_thread_pool_runs_max_workers_tasks_at_once() {
    let buffers = make_tasks(&[case("sleep", json!([2])), case("sleep", json!([2]))]);
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 2, "worker_python": venv_python()
    }))
    .await;
    let ids = engine.submit_all(&buffers);
    engine
        .wait_status("both tasks running at once", |s| {
            s.workers == 2 && s.idle_workers == 0 && s.pending == 0
        })
        .await;
    // One worker process holds both.
    let workers = processes_with(&engine.dir.marker())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("gantry_worker.py"))
        .count();
    assert_eq!(workers, 1);
    let results = engine.results(&ids).await;
    assert!(results.values().all(|r| r.error.is_none()));
    engine.shutdown().await;
}

#[tokio::test]
async fn results_carry_the_workers_environment() {
    let buffers = make_tasks(&[case("add", json!([1, 2])), case("fails", json!(["x"]))]);
    let mut engine = start(json!({
        "type": "ProcessPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let ids = engine.submit_all(&buffers);
    let results = engine.results(&ids).await;
    let expected = venv_environment();
    // Success or failure, the SDK compares these with its own and warns of differences.
    for id in &ids {
        let details = &results[id].details;
        for key in [
            "os",
            "python_version",
            "dill_version",
            "globus_compute_sdk_version",
        ] {
            assert_eq!(
                details.get(key),
                Some(&expected[key]),
                "{key} in {details:?}"
            );
        }
    }
    assert_eq!(code(&results[&ids[1]]), codes::REMOTE_EXECUTION_ERROR);
    engine.shutdown().await;
}

#[tokio::test]
async fn result_serializers_choose_how_the_result_is_serialized() {
    const JSON: &str = "globus_compute_sdk.serialize.JSONData";
    let buffers = make_tasks(&[case("add", json!([1, 2])), case("as_set", json!([1]))]);
    let (add, as_set) = (&buffers[0], &buffers[1]);
    let mut engine = start(json!({
        "type": "ThreadPoolEngine", "max_workers": 1, "worker_python": venv_python()
    }))
    .await;
    let json_id = engine.submit_serialized(add, &[JSON]);
    let default_id = engine.submit_with(add, None);
    // The first strategy that works wins, as in the official worker.
    let fallback_id = engine.submit_serialized(add, &["no_such_module.Strategy", JSON]);
    let unknown_id = engine.submit_serialized(add, &["no_such_module.Strategy"]);
    let unfit_id = engine.submit_serialized(as_set, &[JSON]);
    let ids = [json_id, default_id, fallback_id, unknown_id, unfit_id];
    let results = engine.results(&ids).await;

    let json = &results[&json_id];
    assert_eq!(code(json), "", "{}", json.data);
    assert_eq!(json.data, "11\n{\"sum\": 3}");
    assert_eq!(decode(&[&json.data])[0], json!({"sum": 3}));
    let default = &results[&default_id];
    assert_eq!(code(default), "", "{}", default.data);
    assert!(!default.data.starts_with("11\n"), "{}", default.data);
    assert_eq!(decode(&[&default.data])[0], json!({"sum": 3}));
    let fallback = &results[&fallback_id];
    assert_eq!(fallback.data, "11\n{\"sum\": 3}", "{fallback:?}");

    let unknown = &results[&unknown_id];
    assert_eq!(
        code(unknown),
        codes::REMOTE_EXECUTION_ERROR,
        "{}",
        unknown.data
    );
    assert!(
        unknown.data.contains("result_serializers")
            && unknown.data.contains("'no_such_module.Strategy'")
            && unknown.data.contains("No module named 'no_such_module'"),
        "{}",
        unknown.data
    );
    let unfit = &results[&unfit_id];
    assert_eq!(code(unfit), codes::REMOTE_EXECUTION_ERROR, "{}", unfit.data);
    assert!(
        unfit.data.contains(JSON) && unfit.data.contains("not JSON serializable"),
        "{}",
        unfit.data
    );
    engine.shutdown().await;
}
