//! The engines a test UEP runs: an echo engine that answers every task at once, and
//! the real thread-pool engine wrapped so that its finished tasks are counted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use gantry_engine::{
    EngineConfig, EngineEnv, EngineError, EngineEvent, EngineHandle, EngineResult, EngineStatus,
    EngineTask,
};
use gantry_protocol::packed::serialize_json;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How often the counting wrapper copies the wrapped engine's status, so that a
/// heartbeat shows figures at most this old even when no task moves.
const STATUS_REFRESH: Duration = Duration::from_millis(200);

/// The echo engine's load when it holds `held` tasks: it is one slot in this process
/// (one "block" with one worker), busy while it holds anything.
fn echo_status(held: usize, waiting: usize) -> EngineStatus {
    EngineStatus {
        workers: 1,
        idle_workers: usize::from(held == 0),
        outstanding: held,
        pending: waiting,
        blocks: 1,
    }
}

/// An engine that runs nothing: each task is answered with JSON `null` (`"11\nnull"`)
/// the moment it arrives, after a `Started` event, as a worker that took it and
/// returned at once would report. `completed` counts the tasks it finished.
///
/// Benchmarks use it to measure the service, the broker and the UEP loop, not Python.
pub(crate) fn echo_engine(completed: Arc<AtomicUsize>) -> EngineHandle {
    let (handle, mut side) = EngineHandle::channel();
    side.status.send_replace(echo_status(0, 0));
    let null = serialize_json(&Value::Null);
    let task = tokio::spawn(async move {
        while let Some(task) = side.next_task().await {
            // This task, and whatever else the UEP already handed over behind it.
            let waiting = side.tasks.len();
            side.status.send_replace(echo_status(1 + waiting, waiting));
            let at = SystemTime::now();
            let started = EngineEvent::Started {
                task_id: task.task_id,
                at,
            };
            let finished = EngineEvent::Finished(EngineResult {
                task_id: task.task_id,
                data: null.clone(),
                error: None,
                started: Some(at),
                finished: SystemTime::now(),
                details: Default::default(),
            });
            // A closed channel means the UEP dropped its handle: nothing to answer to.
            if side.events.send(started).await.is_err() || side.events.send(finished).await.is_err()
            {
                break;
            }
            completed.fetch_add(1, Ordering::Relaxed);
            let waiting = side.tasks.len();
            side.status.send_replace(echo_status(waiting, waiting));
        }
        side.status.send_replace(echo_status(0, 0));
        // Dropping `side` tells the UEP that the engine has stopped.
    });
    handle.with_task(task)
}

/// The `gantry-pool` program, built once per test process: the engine runs it for
/// every worker pool. Building is a no-op when the binary is up to date.
pub(crate) async fn pool_program() -> anyhow::Result<PathBuf> {
    static POOL: OnceCell<PathBuf> = OnceCell::const_new();
    POOL.get_or_try_init(|| async {
        tokio::task::spawn_blocking(|| {
            gantry_testkit::workspace_binary("gantry-endpoint", "gantry-pool")
        })
        .await
        .context("cannot build gantry-pool (the worker pool program) with cargo")
    })
    .await
    .cloned()
}

/// Starts the real `ThreadPoolEngine` with one worker thread in `python` (one thread,
/// so that `GC_TASK_UUID`, which the worker sets in its process environment, is the
/// running task's), keeping its files in `run_dir`, and counts its finished tasks in
/// `completed`.
pub(crate) async fn python_engine(
    python: &Path,
    run_dir: PathBuf,
    uep_id: Uuid,
    completed: Arc<AtomicUsize>,
) -> anyhow::Result<EngineHandle> {
    let worker_python = python.to_str().with_context(|| {
        format!(
            "the Python path {} is not UTF-8; the engine config cannot name it",
            python.display()
        )
    })?;
    let config = EngineConfig::from_value(&json!({
        "type": "ThreadPoolEngine",
        "max_workers": 1,
        "worker_python": worker_python,
    }))
    .context("the test endpoint's engine config is invalid")?;
    let env = EngineEnv {
        run_dir,
        pool_program: pool_program().await?,
        expected_python: None,
        uep_id,
    };
    let engine = gantry_engine::start_engine(&config, env)
        .await
        .context("the thread-pool engine could not start")?;
    Ok(counted(engine, completed))
}

/// Wraps `inner` in a handle that passes tasks, events and status through unchanged,
/// counting each `Finished` event in `completed` as it goes to the UEP. Stopping the
/// wrapper stops `inner`; `inner` stopping on its own ends the wrapper, so the UEP
/// sees its engine stop.
pub(crate) fn counted(inner: EngineHandle, completed: Arc<AtomicUsize>) -> EngineHandle {
    let (outer, mut side) = EngineHandle::channel();
    side.status.send_replace(inner.status());
    let task = tokio::spawn(async move {
        let mut inner = inner;
        // Tasks the inner engine's queue had no room for yet, oldest first.
        let mut held: VecDeque<EngineTask> = VecDeque::new();
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'relay: loop {
            tokio::select! {
                _ = async { drop(side.stop.wait_for(|stop| *stop).await) } => break,
                task = side.tasks.recv(), if held.is_empty() => match task {
                    Some(task) => held.push_back(task),
                    None => break,
                },
                event = inner.next_event() => {
                    let Some(event) = event else {
                        tracing::error!("the wrapped engine stopped on its own");
                        break;
                    };
                    let finished = matches!(event, EngineEvent::Finished(_));
                    if side.events.send(event).await.is_err() {
                        break;
                    }
                    if finished {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = refresh.tick() => {}
            }
            while let Some(task) = held.pop_front() {
                match inner.submit(task.clone()) {
                    Ok(()) => {}
                    Err(EngineError::Full { .. }) => {
                        // Tried again after the next event or status refresh.
                        held.push_front(task);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the wrapped engine refused a task");
                        break 'relay;
                    }
                }
            }
            let now = inner.status();
            side.status.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
        inner.shutdown().await;
        // Dropping `side` tells the UEP that the engine has stopped.
    });
    outer.with_task(task)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task() -> EngineTask {
        EngineTask {
            task_id: Uuid::new_v4(),
            task_buffer: "irrelevant".into(),
            resource_specification: None,
            result_serializers: None,
        }
    }

    #[tokio::test]
    async fn the_echo_engine_starts_then_finishes_each_task_with_json_null() {
        let completed = Arc::new(AtomicUsize::new(0));
        let mut engine = echo_engine(completed.clone());
        assert_eq!(engine.status(), echo_status(0, 0));
        let (a, b) = (task(), task());
        engine.submit(a.clone()).unwrap();
        engine.submit(b.clone()).unwrap();
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(engine.next_event().await.unwrap());
        }
        for (pair, id) in events.chunks(2).zip([a.task_id, b.task_id]) {
            let EngineEvent::Started { task_id, at } = &pair[0] else {
                panic!("expected Started first: {pair:?}");
            };
            assert_eq!(*task_id, id);
            let EngineEvent::Finished(result) = &pair[1] else {
                panic!("expected Finished second: {pair:?}");
            };
            assert_eq!(result.task_id, id);
            assert_eq!(result.data, "11\nnull");
            assert_eq!(result.error, None);
            assert_eq!(result.started, Some(*at));
            assert!(
                result.details.is_empty(),
                "no worker, no worker environment"
            );
        }
        // The count follows the send of the Finished event; wait for the engine to idle.
        while engine.status().outstanding > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(completed.load(Ordering::Relaxed), 2);
        assert_eq!(engine.status(), echo_status(0, 0));
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn the_counting_wrapper_passes_everything_through_and_counts_finished_tasks() {
        let echoed = Arc::new(AtomicUsize::new(0));
        let counted_here = Arc::new(AtomicUsize::new(0));
        let mut engine = counted(echo_engine(echoed.clone()), counted_here.clone());
        let tasks: Vec<EngineTask> = (0..5).map(|_| task()).collect();
        for task in &tasks {
            engine.submit(task.clone()).unwrap();
        }
        let mut finished = Vec::new();
        let mut started = 0;
        while finished.len() < tasks.len() {
            match engine.next_event().await.unwrap() {
                EngineEvent::Started { .. } => started += 1,
                EngineEvent::Finished(result) => finished.push(result.task_id),
            }
        }
        assert_eq!(started, tasks.len());
        assert_eq!(
            finished,
            tasks.iter().map(|t| t.task_id).collect::<Vec<_>>()
        );
        assert_eq!(counted_here.load(Ordering::Relaxed), tasks.len());
        engine.shutdown().await;
        assert_eq!(echoed.load(Ordering::Relaxed), tasks.len());
    }

    #[tokio::test]
    async fn stopping_the_wrapper_stops_the_wrapped_engine() {
        let (inner, mut side) = EngineHandle::channel();
        let engine = counted(inner, Arc::new(AtomicUsize::new(0)));
        // The wrapped engine's side: it is told to stop, then goes (dropping it is how an
        // engine says it has stopped).
        let asked = tokio::spawn(async move {
            let told = side.stop.wait_for(|stop| *stop).await.is_ok();
            drop(side);
            told
        });
        engine.shutdown().await;
        assert!(asked.await.unwrap(), "the wrapped engine was told to stop");
    }
}
