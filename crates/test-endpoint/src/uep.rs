//! A UEP in this process: Gantry's shipped UEP loop ([`gantry_endpoint::uep::serve`])
//! over the echo engine or the real thread-pool engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::{Context, bail};
use gantry_endpoint::uep::{StopReason, UepConfig, UepSettings, serve};
use gantry_protocol::command::AmqpCreds;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::STOP_WAIT;
use crate::engines::{echo_engine, python_engine};

/// How tasks are run.
#[derive(Debug, Clone)]
pub enum Executor {
    /// In Gantry's real engine, a `ThreadPoolEngine` with one worker thread, whose
    /// worker pool (`gantry-pool`, built on first use) runs Gantry's Python worker with
    /// this interpreter, which must have `globus-compute-sdk` installed.
    Python(PathBuf),
    /// In an echo engine that runs nothing: every task returns JSON `null`
    /// (`"11\nnull"`) at once, so that benchmarks measure the service and the broker
    /// rather than Python.
    Echo,
}

/// A UEP running in this process.
pub struct RunningUep {
    /// Its id.
    pub endpoint_id: Uuid,
    /// How many tasks its engine has finished (their results handed to the UEP loop,
    /// which publishes them with a confirm).
    pub completed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<StopReason>>,
}

impl RunningUep {
    /// Stops it and waits, at most a minute: the UEP loop stops its engine and sends its
    /// last heartbeat (`heartbeat_period: 0, active: false`).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let reason = tokio::time::timeout(STOP_WAIT, self.handle)
            .await
            .context("the test UEP did not stop within a minute")?
            .context("the test UEP's task failed")??;
        tracing::debug!(uep_id = %self.endpoint_id, ?reason, "test UEP stopped");
        Ok(())
    }
}

/// Starts a UEP on the given queues; it runs until stopped (or dropped).
///
/// `heartbeat_period` is the UEP config's `heartbeat_period` in seconds (at least 0.5,
/// as the config allows); the idle shutdowns are off (`idle_heartbeats_soft` and
/// `idle_heartbeats_hard` are 0), every function is allowed, and results are kept in
/// memory only until confirmed. The UEP connects, sends its first heartbeat and starts
/// consuming in the background once this returns.
pub async fn run_uep(
    creds: AmqpCreds,
    executor: Executor,
    heartbeat_period: f64,
) -> anyhow::Result<RunningUep> {
    if !(heartbeat_period.is_finite() && heartbeat_period >= 0.5) {
        bail!(
            "the test UEP's heartbeat period must be a number of seconds, at least 0.5 \
             (got {heartbeat_period})"
        );
    }
    let endpoint_id = creds.endpoint_id;
    let completed = Arc::new(AtomicUsize::new(0));
    let (engine, run_dir) = match &executor {
        Executor::Echo => (echo_engine(completed.clone()), None),
        Executor::Python(python) => {
            let run_dir = gantry_testkit::fresh_temp_dir("test-uep");
            match python_engine(python, run_dir.clone(), endpoint_id, completed.clone()).await {
                Ok(engine) => (engine, Some(run_dir)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&run_dir);
                    return Err(e);
                }
            }
        }
    };
    let settings = UepSettings {
        creds,
        config: UepConfig {
            // `serve` does not read this: the engine was started above.
            engine: Value::Null,
            heartbeat_period,
            idle_heartbeats_soft: 0,
            idle_heartbeats_hard: 0,
            allowed_functions: None,
            endpoint_setup: None,
            endpoint_teardown: None,
        },
        dir: None,
        parent_pid: None,
        title: None,
        audit_fd: None,
    };
    let (stop, stopped) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let outcome = serve(settings, engine, stopped).await;
        if let Some(dir) = run_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        outcome
    });
    Ok(RunningUep {
        endpoint_id,
        completed,
        stop,
        handle,
    })
}
