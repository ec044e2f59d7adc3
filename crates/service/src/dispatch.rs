//! Putting work on the broker: task messages for endpoints, start commands for
//! multi-user endpoints, results for the SDK. Tasks go through the database first (the
//! outbox): a task is stored with its message, published with a confirm, and only then
//! forgotten, so a broker outage or a crash delays tasks but never loses them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use gantry_broker::Outgoing;
use gantry_broker::amqp::headers;
use gantry_broker::lapin::BasicProperties;
use gantry_broker::lapin::types::AMQPValue;
use gantry_broker::layout::{TASKS_EXCHANGE, task_group_queue, task_routing_key};
use gantry_protocol::messagepack::{Message, ResultErrorDetails, Task, TaskResult};
use gantry_store::{TaskRecord, error_details_of};
use serde_json::Value;
use uuid::Uuid;

use crate::state::AppState;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Function codes by id, read from the store at most once per publish: an unsent task
/// keeps only its payload, and its message is the function's code followed by it.
#[derive(Debug, Default)]
pub struct FunctionCodes(HashMap<Uuid, Option<String>>);

impl FunctionCodes {
    /// Codes the caller has at hand already (a submit read its functions).
    pub fn known(codes: impl IntoIterator<Item = (Uuid, String)>) -> FunctionCodes {
        FunctionCodes(
            codes
                .into_iter()
                .map(|(id, code)| (id, Some(code)))
                .collect(),
        )
    }

    /// The code of a function (deleted or not); `None` when it is gone from the store.
    async fn get(
        &mut self,
        state: &AppState,
        function_id: Uuid,
    ) -> Result<Option<&str>, gantry_store::StoreError> {
        let code = match self.0.entry(function_id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(state.store.function_code(function_id).await?)
            }
        };
        Ok(code.as_deref())
    }
}

/// Why tasks could not be settled now; the outbox tries again.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] gantry_store::StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] gantry_broker::BrokerError),
}

/// Publishes stored tasks whose messages are still in the outbox, then clears them.
/// Endpoint by endpoint, each under its gate, and only the tasks still unsent once the
/// gate is held: a failed start may have failed some meanwhile, and those must not
/// reach a queue that a later, successful start would consume.
///
/// Returns how many tasks it settled (sent and cleared, or failed); an error when any
/// could not be settled, which the outbox then retries.
pub async fn publish_tasks(
    state: &AppState,
    tasks: &[TaskRecord],
    codes: &mut FunctionCodes,
) -> Result<usize, DispatchError> {
    let mut by_endpoint: BTreeMap<Uuid, Vec<&TaskRecord>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| t.task_buffer.is_some()) {
        by_endpoint.entry(task.endpoint_id).or_default().push(task);
    }
    let mut settled = 0;
    let mut first_error = None;
    for (endpoint_id, tasks) in by_endpoint {
        let gate = state.endpoint_gate(endpoint_id);
        let _held = gate.lock().await;
        let ids: Vec<Uuid> = tasks.iter().map(|t| t.task_id).collect();
        let unsent: HashSet<Uuid> = match state.store.still_unsent(&ids).await {
            Ok(unsent) => unsent.into_iter().collect(),
            Err(error) => {
                first_error.get_or_insert(DispatchError::from(error));
                continue;
            }
        };
        let tasks: Vec<&TaskRecord> = tasks
            .into_iter()
            .filter(|t| unsent.contains(&t.task_id))
            .collect();
        for chunk in tasks.chunks(PUBLISH_CHUNK_TASKS) {
            match publish_endpoint_tasks(state, endpoint_id, chunk, codes).await {
                Ok(count) => settled += count,
                Err(error) => {
                    first_error.get_or_insert(error);
                    break;
                }
            }
        }
    }
    first_error.map_or(Ok(settled), Err)
}

/// The most task messages built and published in one round of confirms, and the most
/// bytes of them: a submit of 10,000 tasks of a large function is sent in pieces, so the
/// messages in memory at once stay bounded whatever the submit expands to.
const PUBLISH_CHUNK_TASKS: usize = 500;
const PUBLISH_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Publishes some of one endpoint's tasks (its gate held) in rounds of at most
/// [`PUBLISH_CHUNK_BYTES`], and settles each by its confirm; returns how many it
/// settled. A task whose function is gone from the store fails with that reason.
async fn publish_endpoint_tasks(
    state: &AppState,
    endpoint_id: Uuid,
    tasks: &[&TaskRecord],
    codes: &mut FunctionCodes,
) -> Result<usize, DispatchError> {
    let mut settled = 0;
    let mut rest = tasks;
    while !rest.is_empty() {
        let mut bodies = Vec::new();
        let mut sent = Vec::new();
        let mut orphans = Vec::new();
        let mut bytes = 0;
        let mut taken = 0;
        for task in rest {
            if bytes >= PUBLISH_CHUNK_BYTES {
                break;
            }
            taken += 1;
            let Some(buffer) = &task.task_buffer else {
                continue;
            };
            let task_buffer = if task.buffer_is_payload {
                match codes.get(state, task.function_id).await? {
                    Some(code) => format!("{code}{buffer}"),
                    None => {
                        orphans.push(task.task_id);
                        continue;
                    }
                }
            } else {
                buffer.clone()
            };
            let body = Message::Task(Task {
                task_id: task.task_id,
                container_id: None,
                container: None,
                task_buffer,
            })
            .pack();
            bytes += body.len();
            bodies.push((body, task_properties(task)));
            sent.push(task.task_id);
        }
        rest = &rest[taken..];
        if !orphans.is_empty() {
            let failed = state
                .store
                .fail_unfinished_tasks(
                    &orphans,
                    FUNCTION_GONE_CODE,
                    "the task's function is no longer stored, so the task cannot be sent",
                )
                .await?;
            forward_failures(state, &failed).await;
            settled += orphans.len();
        }
        if sent.is_empty() {
            continue;
        }
        let routing_key = task_routing_key(endpoint_id);
        let outgoing: Vec<Outgoing<'_>> = bodies
            .iter()
            .map(|(body, properties)| Outgoing {
                exchange: TASKS_EXCHANGE,
                routing_key: &routing_key,
                body,
                properties: properties.clone(),
            })
            .collect();
        let outcomes = state
            .broker()
            .await?
            .publish_confirmed_each(&outgoing)
            .await?;
        drop(outgoing);
        drop(bodies);
        settled += settle_published(state, endpoint_id, sent, outcomes).await?;
    }
    Ok(settled)
}

/// The AMQP properties of a task message: the headers the official endpoint reads.
fn task_properties(task: &TaskRecord) -> BasicProperties {
    let mut pairs = vec![
        ("function_uuid", task.function_id.to_string()),
        ("task_uuid", task.task_id.to_string()),
    ];
    if let Some(spec) = &task.resource_specification {
        pairs.push(("resource_specification", spec.to_string()));
    }
    let mut headers = headers(pairs);
    if let Some(serializers) = &task.result_serializers {
        headers.insert("result_serializers".into(), string_array(serializers));
    }
    BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_headers(headers)
}

/// Settles published tasks by their confirms: confirmed ones leave the outbox,
/// unroutable ones are settled by [`settle_unroutable`], and the rest stay for the
/// outbox (the first such error is returned once the others are settled).
async fn settle_published(
    state: &AppState,
    endpoint_id: Uuid,
    sent: Vec<Uuid>,
    outcomes: Vec<Result<(), gantry_broker::BrokerError>>,
) -> Result<usize, DispatchError> {
    let mut confirmed = Vec::with_capacity(sent.len());
    let mut unroutable = Vec::new();
    let mut first_error: Option<DispatchError> = None;
    for (task_id, outcome) in sent.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => confirmed.push(task_id),
            Err(gantry_broker::BrokerError::Unroutable { .. }) => unroutable.push(task_id),
            Err(error) => {
                first_error.get_or_insert(error.into());
            }
        }
    }
    // If this fails the tasks are on the broker but still in the outbox, which sends
    // them again later: a duplicate, never a loss.
    state.store.mark_enqueued(&confirmed).await?;
    let mut settled = confirmed.len();
    if !unroutable.is_empty() {
        settled += settle_unroutable(state, endpoint_id, &unroutable).await?;
    }
    first_error.map_or(Ok(settled), Err)
}

/// The error code of tasks whose function was no longer stored when they were sent.
pub const FUNCTION_GONE_CODE: &str = "FUNCTION_NOT_FOUND";

/// The `result_serializers` header: an AMQP array of strings, which the endpoint
/// iterates (a string there would be tried one character at a time). The stored value
/// is the submit's JSON list of import paths; anything else in it is left out.
fn string_array(serializers: &Value) -> AMQPValue {
    let items: Vec<AMQPValue> = serializers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|path| AMQPValue::LongString(path.into()))
        .collect();
    AMQPValue::FieldArray(items.into())
}

/// Tasks the broker could not route: no queue is bound for their endpoint. When the
/// endpoint is gone, sending them again would never succeed, so they fail and their
/// submitters hear why; when it still exists, its queue was lost (a broker reset), so
/// it is declared again and the tasks stay for the outbox.
async fn settle_unroutable(
    state: &AppState,
    endpoint_id: uuid::Uuid,
    task_ids: &[uuid::Uuid],
) -> Result<usize, DispatchError> {
    if let Some(endpoint) = state.store.endpoint(endpoint_id).await? {
        tracing::warn!(%endpoint_id, tasks = task_ids.len(), "the endpoint's task queue is gone; declaring it again");
        state
            .broker()
            .await?
            .declare_endpoint_queue(endpoint_id, endpoint.multi_user)
            .await?;
        return Ok(0);
    }
    tracing::warn!(%endpoint_id, tasks = task_ids.len(), "tasks for a deleted endpoint; failing them");
    let failed = state
        .store
        .fail_unfinished_tasks(
            task_ids,
            ENDPOINT_DELETED_CODE,
            &format!("the endpoint {endpoint_id} no longer exists (it was deleted)"),
        )
        .await?;
    forward_failures(state, &failed).await;
    Ok(task_ids.len())
}

/// The error code of tasks whose endpoint was deleted before they ran.
pub const ENDPOINT_DELETED_CODE: &str = "ENDPOINT_DELETED";

/// Forwards failures the service itself decided (see `Store::fail_pending_tasks`) and
/// records which arrived; the outbox retries the rest.
pub async fn forward_failures(state: &AppState, tasks: &[TaskRecord]) {
    let mut forwarded = Vec::with_capacity(tasks.len());
    for task in tasks {
        match forward_result(state, task).await {
            Ok(()) => forwarded.push(task.task_id),
            Err(error) => {
                tracing::warn!(%error, task_id = %task.task_id, "could not forward a failure; will retry");
                break;
            }
        }
    }
    if let Err(error) = state.store.mark_forwarded(&forwarded).await {
        tracing::warn!(%error, "could not record forwarded failures; they may be sent twice");
    }
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
/// queue (submitted with `create_queue: false`, the default of the SDK's `Client.run`)
/// gets nothing: its results are read over REST, and a message sent to a queue that
/// does not exist only comes back from the broker, body and all.
pub async fn forward_result(
    state: &AppState,
    task: &TaskRecord,
) -> Result<(), gantry_broker::BrokerError> {
    if !task.result_queue {
        return Ok(());
    }
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
const OUTBOX_GRACE_MS: i64 = crate::timings::OUTBOX_GRACE.as_millis() as i64;

// How long one outbox pass waits for the broker's confirms (it holds endpoint gates
// meanwhile, which a failed start's purge waits for).
use crate::timings::OUTBOX_PUBLISH_WAIT;

/// The most unsent tasks the outbox reads and sends in one pass.
const OUTBOX_BATCH: usize = 500;

/// Declares the result queues that submits could not declare after they stored their
/// tasks ([`AppState::undeclared_result_queues`]); those that fail again stay for the
/// next pass.
pub async fn declare_result_queues_again(state: &AppState) {
    let pending: Vec<(Uuid, Uuid)> = state
        .undeclared_result_queues
        .lock()
        .expect("the set is never poisoned: no code panics holding it")
        .iter()
        .copied()
        .collect();
    if pending.is_empty() {
        return;
    }
    let broker = match state.broker().await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::warn!(%error, groups = pending.len(), "outbox: result queues wait for the broker");
            return;
        }
    };
    for (owner, task_group_id) in pending {
        match broker
            .declare_queue(&task_group_queue(owner, task_group_id))
            .await
        {
            Ok(()) => {
                state
                    .undeclared_result_queues
                    .lock()
                    .expect("the set is never poisoned: no code panics holding it")
                    .remove(&(owner, task_group_id));
                tracing::info!(%task_group_id, "outbox: declared a task group's result queue");
            }
            Err(error) => {
                tracing::warn!(%error, %task_group_id, "outbox: cannot declare a result queue yet");
                return;
            }
        }
    }
}

/// Re-sends the outbox every few seconds until the service stops: tasks stored while
/// the broker was away, or before a crash, reach their endpoints once it is back, and
/// failures the service decided reach their submitters. Each pass also prunes expired
/// tokens, declares result queues that submits could not, and asks MEPs again to
/// start UEPs whose tasks wait.
pub async fn run_outbox(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match state
            .store
            .unforwarded_failures(gantry_store::now_ms() - OUTBOX_GRACE_MS, OUTBOX_BATCH)
            .await
        {
            Ok(failures) if !failures.is_empty() => forward_failures(&state, &failures).await,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "outbox: cannot read unforwarded failures"),
        }
        match state.store.prune_expired_tokens().await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "outbox: pruned expired tokens"),
            Err(error) => tracing::warn!(%error, "outbox: cannot prune expired tokens"),
        }
        declare_result_queues_again(&state).await;
        if let Err(error) = crate::uep_start::resend_start_commands(&state).await {
            tracing::warn!(%error, "outbox: cannot ask MEPs again to start waiting UEPs");
        }
        match state
            .store
            .unsent_tasks(gantry_store::now_ms() - OUTBOX_GRACE_MS, OUTBOX_BATCH)
            .await
        {
            Ok(tasks) if !tasks.is_empty() => {
                match tokio::time::timeout(
                    OUTBOX_PUBLISH_WAIT,
                    publish_tasks(&state, &tasks, &mut FunctionCodes::default()),
                )
                .await
                {
                    // A full batch all settled: more may be waiting, send them now.
                    Ok(Ok(settled)) if settled == OUTBOX_BATCH => continue,
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, tasks = tasks.len(), "outbox: tasks wait for the broker");
                    }
                    Err(_) => {
                        tracing::warn!(
                            tasks = tasks.len(),
                            "outbox: the broker is slow to confirm; trying again later"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "outbox: cannot read unsent tasks"),
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::timings::OUTBOX_PERIOD) => {}
            _ = shutdown.changed() => return,
        }
    }
}
