//! Putting work on the broker: task messages for endpoints, start commands for
//! multi-user endpoints, results for the SDK. Tasks go through the database first (the
//! outbox): a task is stored with its message, published with a confirm, and only then
//! forgotten, so a broker outage or a crash delays tasks but never loses them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_broker::Outgoing;
use gantry_broker::amqp::headers;
use gantry_broker::lapin::BasicProperties;
use gantry_broker::layout::{TASKS_EXCHANGE, command_queue, task_group_queue, task_routing_key};
use gantry_protocol::command::StartEndpointCommand;
use gantry_protocol::messagepack::{Message, ResultErrorDetails, Task, TaskResult};
use gantry_store::{TaskRecord, error_details_of};
use serde_json::Value;

use crate::state::AppState;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Publishes stored tasks whose messages are still in the outbox, then clears them.
pub async fn publish_tasks(
    state: &AppState,
    tasks: &[TaskRecord],
) -> Result<(), gantry_broker::BrokerError> {
    let mut bodies = Vec::with_capacity(tasks.len());
    let mut routing = Vec::with_capacity(tasks.len());
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        let Some(buffer) = &task.task_buffer else {
            continue;
        };
        let body = Message::Task(Task {
            task_id: task.task_id,
            container_id: None,
            container: None,
            task_buffer: buffer.clone(),
        })
        .pack();
        let mut pairs = vec![
            ("function_uuid", task.function_id.to_string()),
            ("task_uuid", task.task_id.to_string()),
        ];
        if let Some(spec) = &task.resource_specification {
            pairs.push(("resource_specification", spec.to_string()));
        }
        if let Some(serializers) = &task.result_serializers {
            pairs.push(("result_serializers", serializers.to_string()));
        }
        let properties = BasicProperties::default()
            .with_content_type("application/octet-stream".into())
            .with_headers(headers(pairs));
        bodies.push((body, properties));
        routing.push(task_routing_key(task.endpoint_id));
        sent.push(task.task_id);
    }
    if sent.is_empty() {
        return Ok(());
    }
    let outgoing: Vec<Outgoing<'_>> = bodies
        .iter()
        .zip(&routing)
        .map(|((body, properties), key)| Outgoing {
            exchange: TASKS_EXCHANGE,
            routing_key: key,
            body,
            properties: properties.clone(),
        })
        .collect();
    state.broker().await?.publish_confirmed(&outgoing).await?;
    if let Err(error) = state.store.mark_enqueued(&sent).await {
        // The tasks are on the broker; the worst case is that they are sent again.
        tracing::warn!(%error, tasks = sent.len(), "could not clear the outbox after publishing");
    }
    Ok(())
}

/// Publishes a start command on a MEP's command queue.
pub async fn publish_start_command(
    state: &AppState,
    mep_id: uuid::Uuid,
    command: &StartEndpointCommand,
) -> Result<(), gantry_broker::BrokerError> {
    let body = serde_json::to_vec(command).expect("commands serialize");
    let queue = command_queue(mep_id);
    state
        .broker()
        .await?
        .publish_confirmed(&[Outgoing {
            exchange: "",
            routing_key: &queue,
            body: &body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_timestamp(now_secs()),
        }])
        .await
}

/// The `result` message of a finished task, as the SDK receives it.
pub fn result_message(task: &TaskRecord) -> Option<TaskResult> {
    let details = match &task.details {
        Some(Value::Object(map)) => Some(map.clone()),
        _ => None,
    };
    let task_statuses = task
        .task_statuses
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let (data, error_details) = match (&task.result, &task.exception) {
        (Some(result), _) => (result.clone(), None),
        (None, Some(exception)) => {
            let (code, user_message) = error_details_of(task)
                .unwrap_or_else(|| ("RemoteExecutionError".into(), "the task failed".into()));
            (
                exception.clone(),
                Some(ResultErrorDetails { code, user_message }),
            )
        }
        (None, None) => return None,
    };
    Some(TaskResult {
        task_id: task.task_id,
        data,
        details,
        error_details,
        task_statuses,
    })
}

/// Forwards a finished task's result to its task group's queue. A group without a
/// queue (submitted with `create_queue: false`) is not an error: its results are read
/// over REST.
pub async fn forward_result(
    state: &AppState,
    task: &TaskRecord,
) -> Result<(), gantry_broker::BrokerError> {
    let Some(result) = result_message(task) else {
        return Ok(());
    };
    let body = Message::Result(result).pack();
    let queue = task_group_queue(task.owner_identity_id, task.task_group_id);
    let completed = task
        .completed_at
        .map_or_else(now_secs, |ms| (ms / 1000) as u64);
    let outcome = state
        .broker()
        .await?
        .publish_confirmed(&[Outgoing {
            exchange: "",
            routing_key: &queue,
            body: &body,
            properties: BasicProperties::default()
                .with_content_type("application/octet-stream".into())
                .with_timestamp(completed),
        }])
        .await;
    match outcome {
        Err(gantry_broker::BrokerError::Unroutable { .. }) => {
            tracing::debug!(task_id = %task.task_id, "no result queue for this task group");
            Ok(())
        }
        other => other,
    }
}

/// How old an unsent task must be before the outbox sends it: younger ones are still
/// being published by the submit that stored them.
const OUTBOX_GRACE_MS: i64 = 15_000;

/// Re-sends the outbox every few seconds until the service stops: tasks stored while
/// the broker was away, or before a crash, reach their endpoints once it is back.
pub async fn run_outbox(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        match state
            .store
            .unsent_tasks(gantry_store::now_ms() - OUTBOX_GRACE_MS)
            .await
        {
            Ok(tasks) if !tasks.is_empty() => {
                for chunk in tasks.chunks(500) {
                    if let Err(error) = publish_tasks(&state, chunk).await {
                        tracing::warn!(%error, pending = tasks.len(), "outbox: tasks wait for the broker");
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "outbox: cannot read unsent tasks"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
