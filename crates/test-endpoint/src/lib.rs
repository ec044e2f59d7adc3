//! A small endpoint over the real broker, standing in for Gantry's UEP and MEP until
//! `gantry-endpoint` exists, so the service can be tested (and benchmarked) end to end
//! with the real SDK on the other side.
//!
//! - [`run_uep`] consumes a task queue, runs each task, publishes its `result` with a
//!   confirm and only then acknowledges the task, and heartbeats meanwhile.
//! - [`run_mep`] consumes a MEP's command queue and, for each `cmd_start_endpoint`,
//!   starts a UEP in-process with the credentials the command carries (or, told to
//!   fail, reports the failed start in a heartbeat as a real MEP must).
//!
//! Tasks run in [`Executor::Python`], a worker process that uses the real
//! `globus-compute-sdk` serializer, or [`Executor::Echo`], which answers without Python
//! so that benchmarks measure the service and the broker rather than Python.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use gantry_broker::lapin::BasicProperties;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_broker::{Broker, Outgoing};
use gantry_protocol::command::{AmqpCreds, StartEndpointCommand};
use gantry_protocol::messagepack::{EpStatusReport, Message, ResultErrorDetails, TaskResult};
use gantry_protocol::packed::serialize_json;
use gantry_protocol::rest::{EndpointRegistrationRequest, EndpointRegistrationResponse, QueueInfo};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How tasks are run.
#[derive(Debug, Clone)]
pub enum Executor {
    /// In a Python worker (`python/worker.py`) run by this interpreter, which must have
    /// `globus-compute-sdk` installed.
    Python(PathBuf),
    /// Without running anything: every task returns JSON `null` (`"11\nnull"`).
    Echo,
}

/// The path of the Python worker script.
pub fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/worker.py")
}

/// Registers an endpoint with the service using an endpoint client's (or user's) token.
pub async fn register(
    service_url: &str,
    token: &str,
    request: &EndpointRegistrationRequest,
) -> anyhow::Result<EndpointRegistrationResponse> {
    let response = reqwest::Client::new()
        .post(format!("{service_url}/v3/endpoints"))
        .bearer_auth(token)
        .json(request)
        .send()
        .await
        .context("cannot reach the service")?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("registration failed with {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

struct PythonWorker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl PythonWorker {
    fn start(python: &PathBuf) -> anyhow::Result<PythonWorker> {
        let mut child = tokio::process::Command::new(python)
            .arg(worker_script())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the Python worker with {}", python.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(PythonWorker {
            child,
            stdin,
            stdout,
        })
    }

    async fn run(
        &mut self,
        task_id: Uuid,
        task_buffer: &str,
    ) -> anyhow::Result<(String, Option<ResultErrorDetails>)> {
        let request = json!({"task_id": task_id, "task_buffer": task_buffer});
        self.stdin
            .write_all(format!("{request}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line).await? == 0 {
            bail!("the Python worker exited: {:?}", self.child.try_wait());
        }
        let reply: Value = serde_json::from_str(&line)?;
        let data = reply["data"]
            .as_str()
            .context("worker reply without data")?
            .to_owned();
        let error = match &reply["error"] {
            Value::Null => None,
            e => Some(ResultErrorDetails {
                code: e["code"]
                    .as_str()
                    .unwrap_or("RemoteExecutionError")
                    .to_owned(),
                user_message: e["user_message"].as_str().unwrap_or_default().to_owned(),
            }),
        };
        Ok((data, error))
    }
}

fn publish_target(info: &QueueInfo) -> anyhow::Result<(String, String)> {
    let kwargs = info
        .queue_publish_kwargs
        .as_ref()
        .context("queue info without queue_publish_kwargs")?;
    Ok((kwargs.exchange.clone(), kwargs.routing_key.clone()))
}

/// A UEP running in this process.
pub struct RunningUep {
    /// Its id.
    pub endpoint_id: Uuid,
    /// How many tasks it has finished.
    pub completed: Arc<std::sync::atomic::AtomicUsize>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningUep {
    /// Stops it (it announces `heartbeat_period: 0`) and waits, at most a minute.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(STOP_WAIT, self.handle)
            .await
            .context("the test UEP did not stop within a minute")??
    }
}

async fn heartbeat(
    broker: &Broker,
    info: &QueueInfo,
    endpoint_id: Uuid,
    period: f64,
    extra: Map<String, Value>,
) -> anyhow::Result<()> {
    let (exchange, routing_key) = publish_target(info)?;
    let mut global_state = Map::new();
    global_state.insert("heartbeat_period".into(), json!(period));
    global_state.insert("active".into(), json!(period > 0.0));
    global_state.extend(extra);
    let body = Message::EpStatusReport(EpStatusReport {
        endpoint_id,
        global_state,
        task_statuses: Default::default(),
    })
    .pack();
    broker
        .publish_confirmed(&[Outgoing {
            exchange: &exchange,
            routing_key: &routing_key,
            body: &body,
            properties: BasicProperties::default(),
        }])
        .await?;
    Ok(())
}

/// How long stopping a test UEP or MEP may take before it is reported as hung.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The most tasks a test UEP takes at once (also its prefetch).
const TASKS_PER_BATCH: usize = 32;

/// Starts a UEP on the given queues; it runs until stopped.
pub async fn run_uep(
    creds: AmqpCreds,
    executor: Executor,
    heartbeat_period: f64,
) -> anyhow::Result<RunningUep> {
    let broker = Broker::connect(&creds.task_queue_info.connection_url).await?;
    let mut consumer = broker
        .consume(
            &creds.task_queue_info.queue,
            "test-uep",
            TASKS_PER_BATCH as u16,
        )
        .await?;
    let (result_exchange, result_key) = publish_target(&creds.result_queue_info)?;
    heartbeat(
        &broker,
        &creds.heartbeat_queue_info,
        creds.endpoint_id,
        heartbeat_period,
        Map::new(),
    )
    .await?;
    let (stop, mut stopped) = watch::channel(false);
    let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = completed.clone();
    let endpoint_id = creds.endpoint_id;
    let handle = tokio::spawn(async move {
        let mut worker = match &executor {
            Executor::Python(python) => Some(PythonWorker::start(python)?),
            Executor::Echo => None,
        };
        let mut beat = tokio::time::interval(Duration::from_secs_f64(heartbeat_period.max(0.5)));
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = beat.tick() => {
                    heartbeat(&broker, &creds.heartbeat_queue_info, endpoint_id, heartbeat_period, Map::new()).await?;
                    continue;
                }
                _ = stopped.changed() => break,
            };
            let Some(delivery) = delivery else {
                bail!("the task queue consumer ended")
            };
            // Take whatever else is already delivered (up to the prefetch), answer it all,
            // and publish the results with one round of confirms, as a busy UEP batches.
            let mut batch = vec![delivery?];
            while batch.len() < TASKS_PER_BATCH {
                match futures_lite::future::poll_once(consumer.next()).await {
                    Some(Some(delivery)) => batch.push(delivery?),
                    Some(None) => bail!("the task queue consumer ended"),
                    None => break,
                }
            }
            let mut results = Vec::with_capacity(batch.len());
            for delivery in &batch {
                let task = match Message::unpack(&delivery.data)? {
                    Message::Task(task) => task,
                    other => bail!("unexpected {} on the task queue", other.message_type()),
                };
                let (data, error_details) = match worker.as_mut() {
                    Some(worker) => worker.run(task.task_id, &task.task_buffer).await?,
                    None => (serialize_json(&Value::Null), None),
                };
                results.push(
                    Message::Result(TaskResult {
                        task_id: task.task_id,
                        data,
                        details: Some(
                            json!({"endpoint_id": endpoint_id})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        ),
                        error_details,
                        task_statuses: None,
                    })
                    .pack(),
                );
            }
            let outgoing: Vec<Outgoing> = results
                .iter()
                .map(|body| Outgoing {
                    exchange: &result_exchange,
                    routing_key: &result_key,
                    body,
                    properties: BasicProperties::default(),
                })
                .collect();
            broker.publish_confirmed(&outgoing).await?;
            // Only now are the results safe with the broker: acknowledge the tasks.
            for delivery in &batch {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            counter.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        }
        heartbeat(
            &broker,
            &creds.heartbeat_queue_info,
            endpoint_id,
            0.0,
            Map::new(),
        )
        .await?;
        broker.close().await;
        Ok(())
    });
    Ok(RunningUep {
        endpoint_id,
        completed,
        stop,
        handle,
    })
}

/// The UEP credentials of a plain endpoint's registration.
pub fn creds_of(registration: &EndpointRegistrationResponse) -> anyhow::Result<AmqpCreds> {
    Ok(AmqpCreds {
        endpoint_id: registration.endpoint_id,
        task_queue_info: registration
            .task_queue_info
            .clone()
            .context("no task_queue_info")?,
        result_queue_info: registration
            .result_queue_info
            .clone()
            .context("no result_queue_info")?,
        heartbeat_queue_info: registration.heartbeat_queue_info.clone(),
    })
}

/// How the stand-in MEP answers start commands.
#[derive(Debug, Clone)]
pub enum StartBehaviour {
    /// Start the UEP.
    Start(Executor),
    /// Report the start as failed with this message.
    Fail(String),
}

/// A MEP stand-in running in this process.
pub struct RunningMep {
    /// The MEP's id.
    pub endpoint_id: Uuid,
    /// Every start command received, in order.
    pub commands: Arc<Mutex<Vec<StartEndpointCommand>>>,
    /// The UEPs it started, by id.
    pub ueps: Arc<tokio::sync::Mutex<HashMap<Uuid, RunningUep>>>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningMep {
    /// Stops the MEP and every UEP it started.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(STOP_WAIT, self.handle)
            .await
            .context("the test MEP did not stop within a minute")???;
        let ueps: Vec<RunningUep> = self.ueps.lock().await.drain().map(|(_, u)| u).collect();
        for uep in ueps {
            uep.stop().await?;
        }
        Ok(())
    }
}

/// Starts a MEP stand-in on a multi-user registration.
pub async fn run_mep(
    registration: &EndpointRegistrationResponse,
    behaviour: StartBehaviour,
    heartbeat_period: f64,
) -> anyhow::Result<RunningMep> {
    let command_info = registration
        .command_queue_info
        .clone()
        .context("not a multi-user registration")?;
    let heartbeat_info = registration.heartbeat_queue_info.clone();
    let broker = Broker::connect(&command_info.connection_url).await?;
    let mut consumer = broker.consume(&command_info.queue, "test-mep", 8).await?;
    let mep_id = registration.endpoint_id;
    heartbeat(
        &broker,
        &heartbeat_info,
        mep_id,
        heartbeat_period,
        Map::new(),
    )
    .await?;
    let commands = Arc::new(Mutex::new(Vec::new()));
    let ueps = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
    let (stop, mut stopped) = watch::channel(false);
    let (seen, started) = (commands.clone(), ueps.clone());
    let handle = tokio::spawn(async move {
        // A MEP heartbeats for as long as it runs, as the real one does.
        let mut beat = tokio::time::interval(Duration::from_secs_f64(heartbeat_period.max(0.5)));
        beat.tick().await; // the first tick is now; the first heartbeat went out above
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = beat.tick() => {
                    heartbeat(&broker, &heartbeat_info, mep_id, heartbeat_period, Map::new()).await?;
                    continue;
                }
                _ = stopped.changed() => break,
            };
            let Some(delivery) = delivery else {
                bail!("the command queue consumer ended")
            };
            let delivery = delivery?;
            let command = StartEndpointCommand::from_json(&delivery.data)?;
            seen.lock().expect("lock").push(command.clone());
            let uep_id = command.kwargs.amqp_creds.endpoint_id;
            match &behaviour {
                StartBehaviour::Start(executor) => {
                    let mut running = started.lock().await;
                    if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(uep_id) {
                        let creds = command.kwargs.amqp_creds.clone();
                        slot.insert(run_uep(creds, executor.clone(), heartbeat_period).await?);
                    }
                }
                StartBehaviour::Fail(message) => {
                    // A MEP reports a UEP's failed start on the UEP's behalf.
                    let mut extra = Map::new();
                    extra.insert("error".into(), json!(message));
                    heartbeat(&broker, &heartbeat_info, uep_id, 0.0, extra).await?;
                }
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        heartbeat(&broker, &heartbeat_info, mep_id, 0.0, Map::new()).await?;
        broker.close().await;
        Ok(())
    });
    Ok(RunningMep {
        endpoint_id: mep_id,
        commands,
        ueps,
        stop,
        handle,
    })
}
