//! The one interface between a UEP and whatever runs its tasks.
//!
//! The UEP only ever sees an [`EngineHandle`]: it submits [`EngineTask`]s, reads
//! [`EngineEvent`]s, looks at an [`EngineStatus`] for its heartbeats, and shuts the engine
//! down. The pooled engines of this crate sit behind it, and so can any other engine (a
//! test echo engine in another crate, say): [`EngineHandle::channel`] gives the handle
//! and the engine-side ends, [`EngineSide`], so that such an engine is a small loop.
//!
//! ```
//! use gantry_engine::{EngineEvent, EngineHandle, EngineResult};
//!
//! # async fn demo() {
//! let (handle, mut side) = EngineHandle::channel();
//! // An engine that answers every task with JSON `null` at once.
//! tokio::spawn(async move {
//!     while let Some(task) = side.next_task().await {
//!         let result = EngineResult {
//!             task_id: task.task_id,
//!             data: "11\nnull".into(),
//!             error: None,
//!             started: None,
//!             finished: std::time::SystemTime::now(),
//!             details: Default::default(),
//!         };
//!         if side.events.send(EngineEvent::Finished(result)).await.is_err() {
//!             break;
//!         }
//!     }
//!     // Dropping `side` tells the handle that the engine has stopped.
//! });
//! handle.shutdown().await;
//! # }
//! ```

use std::time::{Duration, SystemTime};

use gantry_protocol::messagepack::ResultErrorDetails;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::limits;

/// One task handed to an engine: what the UEP read from its task queue.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTask {
    /// The task's id; every event about it carries it.
    pub task_id: Uuid,
    /// `function_code + payload`, as the service built it; only the worker decodes it.
    pub task_buffer: String,
    /// The task's `resource_specification` header, if it had one.
    pub resource_specification: Option<serde_json::Value>,
    /// The task's `result_serializers` header: import paths of the SDK serialization
    /// strategies the submitter wants the result in (e.g.
    /// `globus_compute_sdk.serialize.JSONData`), tried in order, the first that
    /// serializes the value winning. `None` or empty: the SDK's defaults.
    pub result_serializers: Option<Vec<String>>,
}

/// The outcome of one task, success or failure, ready to become a `result` message.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineResult {
    /// The task this is the result of.
    pub task_id: Uuid,
    /// The serialized return value or, when `error` is set, the text the submitter sees
    /// (the remote traceback, or what went wrong around the task).
    pub data: String,
    /// Present exactly when the task failed.
    pub error: Option<ResultErrorDetails>,
    /// When a worker began running it (the last attempt's start), if one ever did.
    pub started: Option<SystemTime>,
    /// When the engine learned the outcome.
    pub finished: SystemTime,
    /// The environment of the worker that ran it, as the official worker reports it in
    /// a result's `details` (`os`, `python_version`, `dill_version`,
    /// `globus_compute_sdk_version`), so that the SDK can warn when it differs from the
    /// submitter's. Empty when no worker ran the task or none reported.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What an engine reports, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A worker began running the task (again, after a lost worker, if it is retried).
    Started {
        /// The task.
        task_id: Uuid,
        /// When the worker took it.
        at: SystemTime,
    },
    /// The task is done; the engine no longer holds it.
    Finished(EngineResult),
}

/// A snapshot of an engine's load, for the UEP's heartbeats and idle accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    /// Task slots on connected worker pools (threads for `ThreadPoolEngine`).
    pub workers: usize,
    /// Slots with nothing to run.
    pub idle_workers: usize,
    /// Tasks the engine holds: waiting, or running on a worker.
    pub outstanding: usize,
    /// Of those, tasks not yet given to a worker.
    pub pending: usize,
    /// Worker pools started or running (a block is one pool process).
    pub blocks: usize,
}

/// Why the engine did not take or start something.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine section of the endpoint configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The engine has stopped (or is stopping); it takes no more tasks.
    #[error("the engine has stopped and takes no more tasks")]
    Stopped,
    /// The engine already holds as many submitted tasks as it queues; the UEP should
    /// keep its broker prefetch below [`limits::SUBMIT_QUEUE`].
    #[error(
        "the engine's submit queue is full ({capacity} tasks); keep the task prefetch below it"
    )]
    Full {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The `gantry-pool` program that worker pools run is not where the UEP said.
    #[error(
        "the worker pool program {path} does not exist or is not executable; it is installed \
         next to gantry-endpoint"
    )]
    PoolProgramMissing {
        /// Where it was looked for.
        path: std::path::PathBuf,
    },
    /// A file or directory of the engine could not be made.
    #[error("cannot prepare {what} at {path}: {source}")]
    Io {
        /// What it is for.
        what: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// The UEP's end of an engine. Dropping it without [`EngineHandle::shutdown`] also stops
/// the engine (its task channel closes), but does not wait for it.
pub struct EngineHandle {
    tasks: mpsc::Sender<EngineTask>,
    events: mpsc::Receiver<EngineEvent>,
    status: watch::Receiver<EngineStatus>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    pool_address: Option<std::net::SocketAddr>,
}

/// The engine's end of an [`EngineHandle`]: where it reads tasks, writes events and
/// publishes its status. The engine is finished when this is dropped.
pub struct EngineSide {
    /// Tasks the UEP submitted, in order.
    pub tasks: mpsc::Receiver<EngineTask>,
    /// Where to report; bounded, so a UEP that stops reading slows the engine down
    /// instead of letting results pile up in memory.
    pub events: mpsc::Sender<EngineEvent>,
    /// The current load; publish a new value whenever it changes.
    pub status: watch::Sender<EngineStatus>,
    /// Becomes `true` when the UEP asks the engine to stop.
    pub stop: watch::Receiver<bool>,
}

impl EngineSide {
    /// The next task, or `None` once the UEP asked to stop or dropped its handle.
    ///
    /// A convenience for simple engines; engines that also wait on other things select
    /// on `tasks` and `stop` themselves.
    pub async fn next_task(&mut self) -> Option<EngineTask> {
        if *self.stop.borrow() {
            return None;
        }
        tokio::select! {
            task = self.tasks.recv() => task,
            _ = self.stop.wait_for(|stop| *stop) => None,
        }
    }
}

impl EngineHandle {
    /// A handle and the engine-side ends of its channels, for any engine.
    pub fn channel() -> (EngineHandle, EngineSide) {
        let (task_tx, task_rx) = mpsc::channel(limits::SUBMIT_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(limits::EVENT_QUEUE);
        let (status_tx, status_rx) = watch::channel(EngineStatus::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = EngineHandle {
            tasks: task_tx,
            events: event_rx,
            status: status_rx,
            stop: stop_tx,
            task: None,
            pool_address: None,
        };
        let side = EngineSide {
            tasks: task_rx,
            events: event_tx,
            status: status_tx,
            stop: stop_rx,
        };
        (handle, side)
    }

    /// Lets [`EngineHandle::shutdown`] also wait for the engine's task (so a panic in it
    /// is logged rather than lost).
    pub fn with_task(mut self, task: JoinHandle<()>) -> EngineHandle {
        self.task = Some(task);
        self
    }

    /// Records where worker pools connect, for logs and diagnostics.
    pub(crate) fn with_pool_address(mut self, address: std::net::SocketAddr) -> EngineHandle {
        self.pool_address = Some(address);
        self
    }

    /// Where this engine's worker pools connect to (pooled engines only).
    pub fn pool_address(&self) -> Option<std::net::SocketAddr> {
        self.pool_address
    }

    /// Hands a task to the engine without waiting. After `Ok` the engine holds it and
    /// will report a [`EngineEvent::Finished`] for it (unless it is shut down first).
    pub fn submit(&self, task: EngineTask) -> Result<(), EngineError> {
        self.tasks.try_send(task).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Full {
                capacity: limits::SUBMIT_QUEUE,
            },
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })
    }

    /// The next event, or `None` once the engine has stopped.
    pub async fn next_event(&mut self) -> Option<EngineEvent> {
        self.events.recv().await
    }

    /// The engine's load as last published.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// Stops the engine and waits for it: worker pools are told to stop, then get
    /// SIGTERM on their process groups and SIGKILL a few seconds later. Waits at most
    /// [`limits::ENGINE_STOP`], then logs and returns, so a stuck engine cannot hold up
    /// the UEP's own exit. Events not read before this are dropped.
    pub async fn shutdown(self) {
        let EngineHandle {
            tasks,
            mut events,
            stop,
            task,
            ..
        } = self;
        let _ = stop.send(true);
        drop(tasks);
        let finished = async {
            // The engine is done when it drops its event sender.
            while events.recv().await.is_some() {}
            if let Some(task) = task
                && let Err(e) = task.await
            {
                tracing::error!(error = %e, "the engine's task failed");
            }
        };
        if tokio::time::timeout(limits::ENGINE_STOP, finished)
            .await
            .is_err()
        {
            tracing::error!(
                waited_s = limits::ENGINE_STOP.as_secs(),
                "the engine did not stop in time; giving up on it"
            );
        }
    }
}

/// The time now as milliseconds since the Unix epoch, the unit of the pool protocol.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The inverse of [`unix_ms`].
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}
