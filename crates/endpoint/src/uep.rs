//! The user endpoint (UEP): what the MEP's helper execs as the user. It reads its
//! instructions from stdin ([`UepStdin`]), starts the engine its rendered config names,
//! consumes its task queue, publishes results and heartbeats, and stops when idle, when
//! told, or when its MEP dies.
//!
//! Promises kept here (SPEC §6):
//! - a task is acknowledged only once the engine holds it;
//! - a result is written to `unacked_results/` before it is published with a confirm,
//!   and removed only after the confirm, so a crash or a broker outage loses none (they
//!   are sent again at the next start or reconnect);
//! - heartbeats carry the engine's figures and each task's `execution-start`;
//! - a function outside `allowed_functions` gets `FUNCTION_NOT_ALLOWED`;
//! - the last heartbeat says `heartbeat_period: 0, active: false`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_lite::StreamExt;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_broker::lapin::types::AMQPValue;
use gantry_broker::lapin::{BasicProperties, message::Delivery};
use gantry_broker::{Broker, Outgoing};
use gantry_engine::{EngineEvent, EngineHandle, EngineResult, EngineTask};
use gantry_protocol::command::{AmqpCreds, UepStdin};
use gantry_protocol::messagepack::{
    ActorName, Message, ResultErrorDetails, TaskResult, TaskState, TaskTransition,
};
use gantry_protocol::rest::QueueInfo;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::AuditEvent;
use crate::config::{ConfigError, yaml_mapping};
use crate::proctitle;

/// The most bytes of stdin a UEP reads: its instructions are small.
const MAX_STDIN: u64 = 16 * 1024 * 1024;
/// Tasks prefetched from the broker beyond what the engine runs: enough to keep
/// workers busy between broker round trips, few enough that a dying UEP hands little
/// back.
const PREFETCH: u16 = 256;
/// Results published in one round of confirms, at most.
const RESULT_BATCH: usize = 256;
/// How often the UEP checks that its MEP is still its parent.
const PARENT_WATCH: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The UEP's settings from its rendered config (SPEC §6).
#[derive(Debug, Clone)]
pub struct UepConfig {
    /// The `engine` section, handed to the engine as it is.
    pub engine: Value,
    /// Seconds between heartbeats.
    pub heartbeat_period: f64,
    /// Heartbeats with nothing outstanding (after at least one task) before it stops;
    /// 0: never.
    pub idle_heartbeats_soft: u64,
    /// Heartbeats with no movement at all before it stops; 0: never.
    pub idle_heartbeats_hard: u64,
    /// Functions it may run.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// A shell snippet run once before the engine starts.
    pub endpoint_setup: Option<String>,
    /// A shell snippet run once after the engine stopped.
    pub endpoint_teardown: Option<String>,
}

const UEP_KEYS: &[&str] = &[
    "engine",
    "heartbeat_period",
    "idle_heartbeats_soft",
    "idle_heartbeats_hard",
    "allowed_functions",
    "endpoint_setup",
    "endpoint_teardown",
    "display_name",
    "debug",
    "amqp_port",
    "log_dir",
    "stdout",
    "stderr",
    "environment",
    "local_compute_services",
    "multi_user",
];

impl UepConfig {
    /// Parses the rendered config; errors are written for the scientist who will read
    /// them as the reason their tasks failed.
    pub fn parse(yaml: &str) -> Result<UepConfig, ConfigError> {
        let path = Path::new("rendered user endpoint config");
        let map = yaml_mapping(path, yaml)?;
        let unknown: Vec<&String> = map
            .keys()
            .filter(|k| !UEP_KEYS.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError::Value {
                path: path.into(),
                key: unknown[0].clone(),
                expected: format!(
                    "is not a user endpoint setting; valid ones are: {}",
                    UEP_KEYS.join(", ")
                ),
            });
        }
        let bad = |key: &str, expected: &str| ConfigError::Value {
            path: path.into(),
            key: key.into(),
            expected: expected.into(),
        };
        let engine = map.get("engine").cloned().ok_or_else(|| {
            bad(
                "engine",
                "is required (e.g. `engine: {type: ThreadPoolEngine}`)",
            )
        })?;
        let count = |key: &str, default: u64| -> Result<u64, ConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad(key, "must be a whole number, 0 or more")),
            }
        };
        let heartbeat_period = match map.get("heartbeat_period") {
            None | Some(Value::Null) => 30.0,
            Some(v) => v
                .as_f64()
                .filter(|p| p.is_finite() && *p >= 0.5)
                .ok_or_else(|| {
                    bad(
                        "heartbeat_period",
                        "must be a number of seconds, at least 0.5",
                    )
                })?,
        };
        let allowed_functions = match map.get("allowed_functions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("allowed_functions", "must be a list of function UUIDs"))?,
            ),
            Some(_) => return Err(bad("allowed_functions", "must be a list of function UUIDs")),
        };
        let snippet = |key: &str| -> Result<Option<String>, ConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(key, "must be a shell snippet (a string)")),
            }
        };
        Ok(UepConfig {
            engine,
            heartbeat_period,
            idle_heartbeats_soft: count("idle_heartbeats_soft", 0)?,
            idle_heartbeats_hard: count("idle_heartbeats_hard", 5760)?,
            allowed_functions,
            endpoint_setup: snippet("endpoint_setup")?,
            endpoint_teardown: snippet("endpoint_teardown")?,
        })
    }
}

/// Why a UEP stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Told to (SIGTERM, or the caller's stop signal).
    Asked,
    /// Idle for `idle_heartbeats_soft` heartbeats after work.
    IdleSoft,
    /// No movement for `idle_heartbeats_hard` heartbeats.
    IdleHard,
    /// Its MEP died.
    ParentGone,
    /// An audit record could not be written (high assurance: no task runs unrecorded).
    AuditFailed,
}

/// How a running UEP is set up, beyond its engine.
#[derive(Debug, Clone)]
pub struct UepSettings {
    /// Its queues and broker accounts.
    pub creds: AmqpCreds,
    /// Its settings.
    pub config: UepConfig,
    /// Its private folder (`~/.gantry/uep.<mep>.<uep>`), for `unacked_results/` and
    /// `status.json`; `None` keeps results in memory only (tests).
    pub dir: Option<PathBuf>,
    /// The MEP's pid: when the parent changes, the MEP is gone and the UEP stops.
    pub parent_pid: Option<i32>,
    /// Its process title, to which the state is prefixed; `None`: leave the title alone.
    pub title: Option<String>,
    /// High assurance: the inherited descriptor of its audit pipe (see [`crate::audit`]).
    pub audit_fd: Option<i32>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn nanos(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn publish_target(info: &QueueInfo) -> anyhow::Result<(String, String)> {
    let kwargs = info
        .queue_publish_kwargs
        .as_ref()
        .context("queue info without queue_publish_kwargs")?;
    Ok((kwargs.exchange.clone(), kwargs.routing_key.clone()))
}

/// Results waiting for the broker's confirm, mirrored on disk when the UEP has a folder.
struct ResultStore {
    dir: Option<PathBuf>,
    pending: BTreeMap<Uuid, Vec<u8>>,
}

impl ResultStore {
    fn open(dir: Option<PathBuf>) -> anyhow::Result<ResultStore> {
        let mut pending = BTreeMap::new();
        if let Some(dir) = &dir {
            crate::dirs::create_private_dir(dir)?;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Uuid::parse_str(n).ok())
                else {
                    continue;
                };
                pending.insert(id, std::fs::read(entry.path())?);
            }
            if !pending.is_empty() {
                tracing::info!(
                    count = pending.len(),
                    "results from an earlier run will be sent again"
                );
            }
        }
        Ok(ResultStore { dir, pending })
    }

    /// Keeps a result until its confirm. Written whole (a temporary name, then a
    /// rename) but not synced: the file must outlive this process, which the page cache
    /// ensures, and an fsync per result would cost more than the task (about 1 ms each).
    fn keep(&mut self, task_id: Uuid, body: Vec<u8>) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(task_id.to_string());
            let tmp = dir.join(format!(".{task_id}.tmp"));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut file| file.write_all(&body))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .context("keeping a result in unacked_results")?;
        }
        self.pending.insert(task_id, body);
        Ok(())
    }

    fn confirmed(&mut self, task_id: Uuid) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.join(task_id.to_string()));
        }
        self.pending.remove(&task_id);
    }
}

/// What the heartbeat tells about the engine and the idle clock.
struct Activity {
    outstanding: usize,
    any_task: bool,
    moved: bool,
    soft_count: u64,
    hard_count: u64,
    transitions: BTreeMap<String, Vec<TaskTransition>>,
}

/// Runs a UEP with `engine` until it stops; sends its last heartbeat and shuts the
/// engine down. `stop` ends it from outside (the binary wires SIGTERM to it).
pub async fn serve(
    settings: UepSettings,
    mut engine: EngineHandle,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<StopReason> {
    let creds = &settings.creds;
    let endpoint_id = creds.endpoint_id;
    let allowed: Option<HashSet<Uuid>> = settings
        .config
        .allowed_functions
        .as_ref()
        .map(|f| f.iter().copied().collect());
    let mut results = ResultStore::open(settings.dir.as_ref().map(|d| d.join("unacked_results")))?;
    let (result_exchange, result_key) = publish_target(&creds.result_queue_info)?;
    // A UEP without a heartbeat route could never say it is alive: refuse it up front.
    publish_target(&creds.heartbeat_queue_info)?;
    let period = Duration::from_secs_f64(settings.config.heartbeat_period);
    // SAFETY: the MEP's helper left this descriptor open for this process alone.
    let mut audit = settings
        .audit_fd
        .map(|fd| unsafe { crate::audit::AuditWriter::from_fd(fd) });
    let mut audit_record = |event, task_id, function_id| match audit.as_mut() {
        Some(writer) => writer.record(event, task_id, function_id).map_err(|e| {
            tracing::error!(error = %e, "cannot write an audit record; stopping");
        }),
        None => Ok(()),
    };
    let mut activity = Activity {
        outstanding: 0,
        any_task: false,
        moved: false,
        soft_count: 0,
        hard_count: 0,
        transitions: BTreeMap::new(),
    };
    let mut backoff = Duration::from_secs(1);
    let reason = 'outer: loop {
        // One broker session; a lost connection ends it and the engine keeps working.
        let session = async {
            let broker = Broker::connect(&creds.task_queue_info.connection_url).await?;
            let consumer = broker
                .consume(&creds.task_queue_info.queue, "gantry-uep", PREFETCH)
                .await?;
            anyhow::Ok((broker, consumer))
        };
        let (broker, mut consumer) = match session.await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the broker; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break 'outer StopReason::Asked,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let send_beat = |broker: &Broker,
                         period: f64,
                         activity: &mut Activity,
                         status: gantry_engine::EngineStatus| {
            let state = crate::status::global_state(
                period,
                [
                    ("total_workers", json!(status.workers)),
                    ("idle_workers", json!(status.idle_workers)),
                    ("outstanding_tasks", json!(status.outstanding)),
                    ("pending_tasks", json!(status.pending)),
                    ("blocks", json!(status.blocks)),
                ],
            );
            let transitions = std::mem::take(&mut activity.transitions);
            let broker = broker.clone();
            async move {
                crate::status::publish(
                    &broker,
                    &creds.heartbeat_queue_info,
                    endpoint_id,
                    state,
                    transitions,
                )
                .await
            }
        };
        // Results left from before (a restart or an outage) go first.
        let leftovers: Vec<(Uuid, Vec<u8>)> = results
            .pending
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if !leftovers.is_empty() {
            let outgoing: Vec<Outgoing> = leftovers
                .iter()
                .map(|(_, body)| Outgoing {
                    exchange: &result_exchange,
                    routing_key: &result_key,
                    body,
                    properties: BasicProperties::default(),
                })
                .collect();
            if let Err(e) = broker.publish_confirmed(&outgoing).await {
                tracing::warn!(error = %e, "cannot send kept results; reconnecting");
                continue;
            }
            for (id, _) in &leftovers {
                results.confirmed(*id);
            }
        }
        if let Err(e) = send_beat(
            &broker,
            settings.config.heartbeat_period,
            &mut activity,
            engine.status(),
        )
        .await
        {
            tracing::warn!(error = %e, "first heartbeat failed; reconnecting");
            continue;
        }
        let mut beat = tokio::time::interval(period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut watch_parent = tokio::time::interval(PARENT_WATCH);
        loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(Ok(delivery)) = delivery else {
                        tracing::warn!("the task queue consumer ended; reconnecting");
                        break;
                    };
                    activity.moved = true;
                    let function_id = header_str(&delivery, "function_uuid").and_then(|s| Uuid::parse_str(&s).ok());
                    match accept(&delivery, &allowed) {
                        Accepted::Task(task) => {
                            let task_id = task.task_id;
                            if audit_record(AuditEvent::Received, task_id, function_id).is_err() {
                                break 'outer StopReason::AuditFailed;
                            }
                            if let Err(e) = engine.submit(task) {
                                tracing::error!(error = %e, "the engine refused a task; it stays on the queue");
                                break;
                            }
                            if audit_record(AuditEvent::ExecStart, task_id, function_id).is_err() {
                                break 'outer StopReason::AuditFailed;
                            }
                            activity.outstanding += 1;
                            activity.any_task = true;
                        }
                        Accepted::Refused(result) => {
                            let task_id = result.task_id;
                            if audit_record(AuditEvent::Received, task_id, function_id)
                                .and_then(|()| audit_record(AuditEvent::Failed, task_id, function_id))
                                .is_err()
                            {
                                break 'outer StopReason::AuditFailed;
                            }
                            results.keep(task_id, Message::Result(*result).pack())?;
                        }
                        Accepted::Junk => {}
                    }
                    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                        tracing::warn!(error = %e, "ack failed; reconnecting");
                        break;
                    }
                    if !results.pending.is_empty() && !flush(&broker, &mut results, &result_exchange, &result_key).await {
                        break;
                    }
                }
                event = engine.next_event() => {
                    let Some(event) = event else {
                        anyhow::bail!("the engine stopped unexpectedly");
                    };
                    activity.moved = true;
                    // Take what else is ready, then publish all of it with one round of confirms.
                    let mut batch = vec![event];
                    while batch.len() < RESULT_BATCH {
                        match futures_lite::future::poll_once(engine.next_event()).await {
                            Some(Some(event)) => batch.push(event),
                            _ => break,
                        }
                    }
                    for event in batch {
                        match event {
                            EngineEvent::Started { task_id, at } => {
                                if audit_record(AuditEvent::Running, task_id, None).is_err() {
                                    break 'outer StopReason::AuditFailed;
                                }
                                activity.transitions.entry(task_id.to_string()).or_default().push(TaskTransition {
                                    timestamp: nanos(at),
                                    state: TaskState::ExecStart,
                                    actor: ActorName::Worker,
                                });
                            }
                            EngineEvent::Finished(result) => {
                                activity.outstanding = activity.outstanding.saturating_sub(1);
                                let task_id = result.task_id;
                                let event = if result.error.is_some() { AuditEvent::Failed } else { AuditEvent::ExecEnd };
                                if audit_record(event, task_id, None).is_err() {
                                    // The result is kept and sent; the endpoint stops after it.
                                    results.keep(task_id, Message::Result(result_message(result, endpoint_id)).pack())?;
                                    break 'outer StopReason::AuditFailed;
                                }
                                results.keep(task_id, Message::Result(result_message(result, endpoint_id)).pack())?;
                            }
                        }
                    }
                    if !results.pending.is_empty() && !flush(&broker, &mut results, &result_exchange, &result_key).await {
                        break;
                    }
                }
                _ = beat.tick() => {
                    let status = engine.status();
                    if activity.outstanding == 0 && status.outstanding == 0 && activity.any_task {
                        activity.soft_count += 1;
                    } else {
                        activity.soft_count = 0;
                    }
                    if activity.moved { activity.hard_count = 0; } else { activity.hard_count += 1; }
                    activity.moved = false;
                    let soft = settings.config.idle_heartbeats_soft;
                    let hard = settings.config.idle_heartbeats_hard;
                    write_status(&settings, &activity, &status);
                    set_title(&settings, &activity);
                    if soft > 0 && activity.soft_count >= soft {
                        tracing::info!(heartbeats = soft, "idle after work; shutting down");
                        break 'outer StopReason::IdleSoft;
                    }
                    if hard > 0 && activity.hard_count >= hard {
                        tracing::info!(heartbeats = hard, "no activity; shutting down");
                        break 'outer StopReason::IdleHard;
                    }
                    if let Err(e) = send_beat(&broker, settings.config.heartbeat_period, &mut activity, status).await {
                        tracing::warn!(error = %e, "heartbeat failed; reconnecting");
                        break;
                    }
                }
                _ = watch_parent.tick(), if settings.parent_pid.is_some() => {
                    if settings.parent_pid != Some(crate::process::parent_pid()) {
                        tracing::warn!("the MEP that started this endpoint is gone; stopping");
                        break 'outer StopReason::ParentGone;
                    }
                }
                _ = stop.changed() => break 'outer StopReason::Asked,
            }
        }
        broker.close().await;
    };
    // Stop taking tasks, stop the engine, say goodbye.
    if reason == StopReason::ParentGone {
        // The MEP is gone: no one will wait for a graceful stop; stop everything now.
        crate::process::kill_own_session(libc::SIGKILL);
    }
    engine.shutdown().await;
    let goodbye = async {
        let broker = Broker::connect(&creds.heartbeat_queue_info.connection_url).await?;
        if !results.pending.is_empty() {
            flush(&broker, &mut results, &result_exchange, &result_key).await;
        }
        crate::status::publish(
            &broker,
            &creds.heartbeat_queue_info,
            endpoint_id,
            crate::status::global_state(0.0, []),
            std::mem::take(&mut activity.transitions),
        )
        .await?;
        broker.close().await;
        anyhow::Ok(())
    };
    let limit = if reason == StopReason::ParentGone {
        1
    } else {
        10
    };
    match tokio::time::timeout(Duration::from_secs(limit), goodbye).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not send the last heartbeat"),
        Err(_) => tracing::warn!("the last heartbeat timed out"),
    }
    Ok(reason)
}

/// Publishes every pending result with one round of confirms; false when the broker
/// connection failed (the results stay pending, on disk).
async fn flush(broker: &Broker, results: &mut ResultStore, exchange: &str, key: &str) -> bool {
    let batch: Vec<(Uuid, Vec<u8>)> = results
        .pending
        .iter()
        .take(RESULT_BATCH)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let outgoing: Vec<Outgoing> = batch
        .iter()
        .map(|(_, body)| Outgoing {
            exchange,
            routing_key: key,
            body,
            properties: BasicProperties::default(),
        })
        .collect();
    match broker.publish_confirmed(&outgoing).await {
        Ok(()) => {
            for (id, _) in &batch {
                results.confirmed(*id);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, pending = results.pending.len(), "results not confirmed; kept for the next connection");
            false
        }
    }
}

fn header_str(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The `result_serializers` header: an AMQP array of strings (SPEC §3). `Ok(None)` when
/// absent; a lone string is taken as a list of one; anything else is refused with why.
fn header_strings(delivery: &Delivery, name: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    else {
        return Ok(None);
    };
    let text = |item: &AMQPValue| match item {
        AMQPValue::LongString(s) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Ok(s.as_str().to_owned()),
        other => Err(format!(
            "the task's {name} header must list import paths of serialization strategies \
             (strings), but it holds {other:?}; submit with result_serializers such as \
             [\"globus_compute_sdk.serialize.JSONData\"]"
        )),
    };
    match value {
        AMQPValue::FieldArray(items) => items
            .as_slice()
            .iter()
            .map(text)
            .collect::<Result<_, _>>()
            .map(Some),
        AMQPValue::Void => Ok(None),
        single => text(single).map(|path| Some(vec![path])),
    }
}

/// What became of a delivery from the task queue.
enum Accepted {
    /// A task for the engine.
    Task(EngineTask),
    /// A task this endpoint refuses, with the result that says why.
    Refused(Box<TaskResult>),
    /// Not a task at all: acknowledged and dropped, with a warning.
    Junk,
}

/// Turns a delivery into a task for the engine, or into the result that refuses it.
fn accept(delivery: &Delivery, allowed: &Option<HashSet<Uuid>>) -> Accepted {
    let task = match Message::unpack(&delivery.data) {
        Ok(Message::Task(task)) => task,
        Ok(other) => {
            tracing::warn!(
                kind = other.message_type(),
                "not a task on the task queue; dropped"
            );
            return Accepted::Junk;
        }
        Err(e) => {
            tracing::warn!(error = %e, "undecodable message on the task queue; dropped");
            return Accepted::Junk;
        }
    };
    let function = header_str(delivery, "function_uuid").and_then(|s| Uuid::parse_str(&s).ok());
    if let Some(allowed) = allowed
        && !function.is_some_and(|f| allowed.contains(&f))
    {
        let shown = function
            .map(|f| f.to_string())
            .unwrap_or_else(|| "(none)".into());
        return Accepted::Refused(Box::new(refusal(
            task.task_id,
            "FUNCTION_NOT_ALLOWED",
            &format!(
                "Function {shown} is not allowed on this endpoint; ask its administrator to add it to allowed_functions"
            ),
        )));
    }
    let resource_specification =
        header_str(delivery, "resource_specification").and_then(|s| serde_json::from_str(&s).ok());
    let result_serializers = match header_strings(delivery, "result_serializers") {
        Ok(serializers) => serializers,
        Err(message) => {
            return Accepted::Refused(Box::new(refusal(
                task.task_id,
                gantry_engine::codes::INVALID_RESULT_SERIALIZERS,
                &message,
            )));
        }
    };
    Accepted::Task(EngineTask {
        task_id: task.task_id,
        task_buffer: task.task_buffer,
        resource_specification,
        result_serializers,
    })
}

fn refusal(task_id: Uuid, code: &str, message: &str) -> TaskResult {
    TaskResult {
        task_id,
        data: message.to_owned(),
        details: None,
        error_details: Some(ResultErrorDetails {
            code: code.to_owned(),
            user_message: message.to_owned(),
        }),
        task_statuses: None,
    }
}

fn result_message(result: EngineResult, endpoint_id: Uuid) -> TaskResult {
    let mut task_statuses = Vec::new();
    if let Some(started) = result.started {
        task_statuses.push(TaskTransition {
            timestamp: nanos(started),
            state: TaskState::ExecStart,
            actor: ActorName::Worker,
        });
    }
    task_statuses.push(TaskTransition {
        timestamp: nanos(result.finished),
        state: TaskState::ExecEnd,
        actor: ActorName::Worker,
    });
    // The worker's environment, as the official endpoint reports it, and this endpoint.
    let mut details = result.details;
    details.insert("endpoint_id".into(), json!(endpoint_id));
    TaskResult {
        task_id: result.task_id,
        data: result.data,
        details: Some(details),
        error_details: result.error,
        task_statuses: Some(task_statuses),
    }
}

#[cfg(test)]
mod task_header_tests {
    #![allow(clippy::unwrap_used)]
    use gantry_broker::lapin::types::{FieldArray, FieldTable};
    use gantry_protocol::messagepack::Task;

    use super::*;

    fn delivery(task_id: Uuid, serializers: Option<AMQPValue>) -> Delivery {
        let body = Message::Task(Task {
            task_id,
            container_id: None,
            container: None,
            task_buffer: "buffer".into(),
        })
        .pack();
        let mut headers = FieldTable::default();
        if let Some(value) = serializers {
            headers.insert("result_serializers".into(), value);
        }
        let mut delivery = Delivery::mock(1, "".into(), "".into(), false, body);
        delivery.properties = BasicProperties::default().with_headers(headers);
        delivery
    }

    #[test]
    fn a_function_outside_allowed_functions_is_refused_with_its_code() {
        let id = Uuid::new_v4();
        let (allowed_fn, other_fn) = (Uuid::new_v4(), Uuid::new_v4());
        let with_function = |function: Uuid| {
            let mut d = delivery(id, None);
            let mut headers = FieldTable::default();
            headers.insert(
                "function_uuid".into(),
                AMQPValue::LongString(function.to_string().as_str().into()),
            );
            d.properties = BasicProperties::default().with_headers(headers);
            d
        };
        let allowed = Some(HashSet::from([allowed_fn]));
        assert!(matches!(
            accept(&with_function(allowed_fn), &allowed),
            Accepted::Task(_)
        ));
        let Accepted::Refused(result) = accept(&with_function(other_fn), &allowed) else {
            panic!("a function outside allowed_functions was accepted");
        };
        assert_eq!(result.task_id, id);
        let error = result.error_details.unwrap();
        assert_eq!(error.code, "FUNCTION_NOT_ALLOWED");
        assert!(error.user_message.contains(&other_fn.to_string()));
        // No function header at all is not a way around the list.
        assert!(matches!(
            accept(&delivery(id, None), &allowed),
            Accepted::Refused(_)
        ));
        // Without a list, anything runs.
        assert!(matches!(
            accept(&with_function(other_fn), &None),
            Accepted::Task(_)
        ));
    }

    #[test]
    fn the_result_serializers_header_reaches_the_engine() {
        let id = Uuid::new_v4();
        let paths = ["globus_compute_sdk.serialize.JSONData", "x.Y"];
        let array = AMQPValue::FieldArray(FieldArray::from(
            paths
                .iter()
                .map(|p| AMQPValue::LongString((*p).into()))
                .collect::<Vec<_>>(),
        ));
        let Accepted::Task(task) = accept(&delivery(id, Some(array)), &None) else {
            panic!("the task was not accepted");
        };
        assert_eq!(
            task.result_serializers,
            Some(paths.map(String::from).to_vec())
        );
        let Accepted::Task(task) = accept(&delivery(id, None), &None) else {
            panic!("the task was not accepted");
        };
        assert_eq!(task.result_serializers, None);
        // Not strings: the task fails saying what the header must hold.
        let bad = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(3)]));
        let Accepted::Refused(refused) = accept(&delivery(id, Some(bad)), &None) else {
            panic!("a malformed header was accepted");
        };
        let error = refused.error_details.unwrap();
        assert_eq!(error.code, gantry_engine::codes::INVALID_RESULT_SERIALIZERS);
        assert!(error.user_message.contains("import paths"), "{error:?}");
    }

    #[test]
    fn a_result_carries_the_workers_environment_and_the_endpoint_id() {
        let endpoint_id = Uuid::new_v4();
        let mut details = serde_json::Map::new();
        details.insert("python_version".into(), json!("3.11.2"));
        details.insert("dill_version".into(), json!("0.3.9"));
        let result = EngineResult {
            task_id: Uuid::new_v4(),
            data: "11\nnull".into(),
            error: None,
            started: None,
            finished: SystemTime::now(),
            details,
        };
        let details = result_message(result, endpoint_id).details.unwrap();
        assert_eq!(details["python_version"], "3.11.2");
        assert_eq!(details["dill_version"], "0.3.9");
        assert_eq!(details["endpoint_id"], json!(endpoint_id));
    }
}

fn state_words(settings: &UepSettings, activity: &Activity) -> Option<String> {
    let soft = settings.config.idle_heartbeats_soft;
    if activity.outstanding > 0 {
        return None;
    }
    let period = settings.config.heartbeat_period;
    if soft > 0 && activity.any_task {
        let left = soft.saturating_sub(activity.soft_count) as f64 * period;
        return Some(format!("[idle; shut down in {left:.1}s]"));
    }
    let hard = settings.config.idle_heartbeats_hard;
    if hard > 0 {
        let left = hard.saturating_sub(activity.hard_count) as f64 * period;
        return Some(format!("[idle; shut down in {left:.1}s]"));
    }
    Some("[idle]".into())
}

fn set_title(settings: &UepSettings, activity: &Activity) {
    if let Some(title) = &settings.title {
        match state_words(settings, activity) {
            Some(state) => proctitle::set(&format!("{state} {title}")),
            None => proctitle::set(title),
        };
    }
}

/// `status.json` in the UEP's folder: what `gantry-endpoint list` shows for it.
fn write_status(settings: &UepSettings, activity: &Activity, status: &gantry_engine::EngineStatus) {
    let Some(dir) = &settings.dir else { return };
    let state = if activity.outstanding > 0 {
        "busy".to_owned()
    } else {
        state_words(settings, activity).unwrap_or_default()
    };
    let body = json!({
        "state": state,
        "outstanding": activity.outstanding,
        "workers": status.workers,
        "idle_workers": status.idle_workers,
        "pending": status.pending,
        "updated_at_ns": now_ns(),
    });
    let _ = crate::dirs::write_private(&dir.join("status.json"), body.to_string().as_bytes());
}

/// Reads the UEP's instructions from stdin.
pub fn read_stdin() -> anyhow::Result<UepStdin> {
    use std::io::Read;
    let mut text = Vec::new();
    std::io::stdin().take(MAX_STDIN).read_to_end(&mut text)?;
    serde_json::from_slice(&text).context("the UEP's stdin is not the JSON its MEP writes")
}

/// Publishes one heartbeat reporting a failed start, so the user's tasks fail with
/// `message` instead of waiting (used by a UEP whose config is refused, and by the MEP
/// on a UEP's behalf).
pub async fn report_failed_start(
    broker: &Broker,
    heartbeat: &QueueInfo,
    endpoint_id: Uuid,
    message: &str,
) -> anyhow::Result<()> {
    let state = crate::status::global_state(0.0, [("error", json!(message))]);
    crate::status::publish(broker, heartbeat, endpoint_id, state, Default::default()).await?;
    Ok(())
}

/// The `uep` mode of `gantry-endpoint`: what the MEP's helper execs.
pub async fn main() -> anyhow::Result<()> {
    let stdin = read_stdin()?;
    let creds = stdin.amqp_creds.clone();
    let ep_info = &stdin.ep_info;
    let dir = ep_info
        .get("uep_dir")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let parent_pid = ep_info
        .get("parent_pid")
        .and_then(Value::as_i64)
        .map(|p| p as i32);
    let title = crate::proctitle::current();
    tracing::info!(uep_id = %creds.endpoint_id, title, "user endpoint starting");
    let fail = |message: String| {
        let creds = creds.clone();
        async move {
            tracing::error!(%message, "the user endpoint cannot start");
            let broker = Broker::connect(&creds.heartbeat_queue_info.connection_url).await?;
            report_failed_start(
                &broker,
                &creds.heartbeat_queue_info,
                creds.endpoint_id,
                &message,
            )
            .await?;
            broker.close().await;
            anyhow::bail!(message)
        }
    };
    let mut config = match UepConfig::parse(&stdin.config) {
        Ok(c) => c,
        Err(e) => return fail(format!("the user endpoint config is invalid: {e}")).await,
    };
    if let Some(mep_allowed) = &stdin.allowed_functions {
        // The MEP's list bounds the UEP's: only functions on both lists run.
        config.allowed_functions = Some(match config.allowed_functions.take() {
            Some(own) => own
                .into_iter()
                .filter(|f| mep_allowed.contains(f))
                .collect(),
            None => mep_allowed.clone(),
        });
    }
    let engine_config = match gantry_engine::EngineConfig::from_value(&config.engine) {
        Ok(c) => c,
        Err(e) => return fail(format!("the user endpoint's engine is invalid: {e}")).await,
    };
    if let Some(setup) = &config.endpoint_setup {
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(setup)
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return fail(format!("endpoint_setup failed ({s})")).await,
            Err(e) => return fail(format!("endpoint_setup could not run: {e}")).await,
        }
    }
    let expected_python = ep_info
        .get("user_runtime")
        .and_then(gantry_protocol::uep_id::python_major_minor);
    let run_dir = dir.clone().unwrap_or_else(std::env::temp_dir);
    let pool_program = std::env::current_exe()?
        .parent()
        .map(|d| d.join("gantry-pool"))
        .context("cannot find gantry-pool next to gantry-endpoint")?;
    let engine = match gantry_engine::start_engine(
        &engine_config,
        gantry_engine::EngineEnv {
            run_dir,
            pool_program,
            expected_python,
            uep_id: creds.endpoint_id,
        },
    )
    .await
    {
        Ok(engine) => engine,
        Err(e) => return fail(format!("the user endpoint's engine could not start: {e}")).await,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        tokio::select! {
            _ = async { if let Some(s) = term.as_mut() { s.recv().await; } else { std::future::pending::<()>().await } } => {}
            _ = async { if let Some(s) = int.as_mut() { s.recv().await; } else { std::future::pending::<()>().await } } => {}
        }
        let _ = stop_tx.send(true);
    });
    let teardown = config.endpoint_teardown.clone();
    let settings = UepSettings {
        creds,
        config,
        dir,
        parent_pid,
        title: Some(title.trim_end().to_owned()),
        audit_fd: ep_info
            .get("audit_fd")
            .and_then(Value::as_i64)
            .map(|fd| fd as i32),
    };
    let reason = serve(settings, engine, stop_rx).await?;
    if let Some(teardown) = teardown {
        let _ = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(teardown)
            .status()
            .await;
    }
    // Whatever the workers left behind in this session goes with the endpoint.
    crate::process::kill_own_session(libc::SIGKILL);
    tracing::info!(?reason, "user endpoint stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn kept_results_survive_a_restart_until_confirmed() {
        let dir = std::env::temp_dir().join(format!("gantry-unacked-{}", Uuid::new_v4()));
        let unacked = dir.join("unacked_results");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let mut store = ResultStore::open(Some(unacked.clone())).unwrap();
            store.keep(a, b"result a".to_vec()).unwrap();
            store.keep(b, b"result b".to_vec()).unwrap();
            store.confirmed(b);
        }
        let mode = std::fs::metadata(unacked.join(a.to_string()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a kept result is the user's alone");
        assert!(
            !unacked.join(b.to_string()).exists(),
            "a confirmed result is removed"
        );
        // A new UEP process (a restart) finds the unconfirmed one and sends it first.
        let reopened = ResultStore::open(Some(unacked.clone())).unwrap();
        assert_eq!(reopened.pending.len(), 1);
        assert_eq!(reopened.pending[&a], b"result a");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_rendered_config_is_checked_for_the_scientist() {
        let config =
            UepConfig::parse("engine: {type: ThreadPoolEngine}\nidle_heartbeats_soft: 3\n")
                .unwrap();
        assert_eq!(config.idle_heartbeats_soft, 3);
        assert_eq!(config.idle_heartbeats_hard, 5760);
        assert_eq!(config.heartbeat_period, 30.0);
        let err = UepConfig::parse("heartbeat_period: 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine") && err.contains("required"), "{err}");
        let err = UepConfig::parse("engine: {type: X}\nidle_heartbeat_soft: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("idle_heartbeat_soft") && err.contains("idle_heartbeats_soft"),
            "{err}"
        );
        let err = UepConfig::parse("engine: {}\nallowed_functions: [nope]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_functions"), "{err}");
    }
}
