//! Submitting tasks and reading their state: the routes the SDK's `Executor` and
//! `Client` use.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use gantry_broker::layout::{task_group_queue, user_queue_prefix};
use gantry_protocol::packed::unpack_buffers;
use gantry_protocol::rest::{
    AmqpResultUrlResponse, BatchStatusRequest, BatchStatusResponse, SubmitRequest, SubmitResponse,
    TaskGroupResponse, TaskGroupTask, TaskStatusResponse,
};
use gantry_protocol::uep_id::{derive_uep_id, python_major_minor};
use gantry_store::{EndpointRecord, NewSubmit, NewTask, TaskRecord, UepBinding};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::access::{can_use_endpoint, can_use_function, may_use_task_group, owns_task};
use crate::accounts::AccountHolder;
use crate::auth::Caller;
use crate::dispatch;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::queues::provision_uep;
use crate::state::AppState;
use crate::uep_start;

/// The most tasks one submit may carry.
const MAX_TASKS_PER_SUBMIT: usize = 10_000;
/// How long a submit waits for the broker to confirm its tasks before leaving them to
/// the outbox (which waits longer than this before it sends).
const PUBLISH_WAIT: std::time::Duration = crate::timings::SUBMIT_PUBLISH_WAIT;

/// `POST /v3/endpoints/{id}/submit`.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
    ApiJson(mut request): ApiJson<SubmitRequest>,
) -> ApiResult<Json<SubmitResponse>> {
    caller.require_user()?;
    let endpoint_id = parse_id(&endpoint_id, "endpoint id")?;
    let endpoint = state
        .store
        .endpoint(endpoint_id)
        .await?
        .filter(|ep| can_use_endpoint(&caller, ep))
        .ok_or_else(|| endpoint_not_found(endpoint_id))?;
    if let Some(uep) = &endpoint.uep {
        // Its MEP decides: its lock, its allowed functions, and starting the UEP.
        return Err(ApiError::bad_request(
            "SUBMIT_TO_MEP",
            format!(
                "endpoint {endpoint_id} is a user endpoint of the multi-user endpoint {}; \
                 submit to {} with this user_endpoint_config instead",
                uep.mep_id, uep.mep_id
            ),
        ));
    }
    if endpoint.locked {
        // (Checked again where the tasks are stored: a revocation may lock it meanwhile.)
        return Err(endpoint_locked(endpoint_id));
    }
    // The payloads move out of the request: each is kept once, as the task's payload.
    let submitted = std::mem::take(&mut request.tasks);
    let total: usize = submitted.values().map(Vec::len).sum();
    if total > MAX_TASKS_PER_SUBMIT {
        return Err(ApiError::bad_request(
            "TOO_MANY_TASKS",
            format!("{total} tasks in one submit; send at most {MAX_TASKS_PER_SUBMIT} per request"),
        ));
    }

    if let Some(serializers) = &request.result_serializers {
        check_result_serializers(serializers)?;
    }
    // Stored with, and sent in a header of, every task of the submit.
    if let Some(spec) = &request.resource_specification {
        let size = Value::Object(spec.clone()).to_string().len();
        if size > MAX_RESOURCE_SPECIFICATION_BYTES {
            return Err(ApiError::bad_request(
                "INVALID_RESOURCE_SPECIFICATION",
                format!(
                    "resource_specification is {size} bytes as JSON; it may be at most \
                     {MAX_RESOURCE_SPECIFICATION_BYTES} (it goes with every task)"
                ),
            ));
        }
    }

    // Check every function and payload before anything is written. Nothing is built
    // here: a task's message (the function's code, then its payload) is made only when
    // it is published, a few at a time, so a large function times many tasks costs the
    // broker, not this process, and the broker only up to the expansion limit.
    let limit = state.settings.max_submit_expanded_bytes;
    let mut expanded: usize = 0;
    let mut new_tasks = Vec::with_capacity(total);
    let mut task_ids: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    let mut codes = Vec::with_capacity(submitted.len());
    for (function_id, payloads) in submitted {
        let function = state
            .store
            .function(function_id)
            .await?
            .filter(|f| can_use_function(&caller, f))
            .ok_or_else(|| {
                ApiError::not_found(
                    "FUNCTION_NOT_FOUND",
                    format!("function {function_id} not found"),
                )
            })?;
        if let Some(allowed) = &endpoint.allowed_functions
            && !allowed.contains(&function_id)
        {
            return Err(ApiError::forbidden(
                "FUNCTION_NOT_ALLOWED",
                format!("function {function_id} is not allowed on endpoint {endpoint_id}"),
            ));
        }
        let code = function.function_code.len();
        expanded = payloads.iter().fold(expanded, |sum, payload| {
            sum.saturating_add(code).saturating_add(payload.len())
        });
        if expanded > limit {
            return Err(submit_too_large(total, limit));
        }
        let ids = task_ids.entry(function_id).or_default();
        for (index, payload) in payloads.into_iter().enumerate() {
            check_payload(&payload, index, function_id)?;
            let task_id = Uuid::new_v4();
            ids.push(task_id);
            new_tasks.push(NewTask {
                task_id,
                function_id,
                payload,
            });
        }
        codes.push((function_id, function.function_code));
    }

    let task_group_id = request.task_group_id.unwrap_or_else(Uuid::new_v4);
    if !may_use_task_group(&caller, state.store.task_group_owner(task_group_id).await?) {
        return Err(ApiError::not_found(
            "TASK_GROUP_NOT_FOUND",
            format!("task group {task_group_id} not found"),
        ));
    }

    // The user's quotas are checked where the tasks are written, in the same
    // transaction (a check before it would cost every submit its queries again, and
    // nothing is created before that transaction anyway).

    // Route: a MEP's tasks go to the user's own UEP for this configuration, which the
    // store makes (if new) with the tasks.
    let route = route_submit(&caller, &endpoint, &request)?;
    // A result queue needs the broker: without one the submit is refused (the SDK
    // retries a 503) before anything is stored, rather than leaving the SDK's result
    // reader without a queue.
    let result_broker = if request.create_queue {
        Some(state.broker().await?)
    } else {
        None
    };
    let spec = request.resource_specification.clone().map(Value::Object);
    let serializers = request
        .result_serializers
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| Value::from(s.clone()));
    let batch = state
        .store
        .insert_submit_within(
            &NewSubmit {
                owner: caller.identity_id(),
                task_group_id,
                endpoint_id: route.target,
                submitted_endpoint_id: endpoint_id,
                tasks: &new_tasks,
                resource_specification: spec.as_ref(),
                result_serializers: serializers.as_ref(),
                result_queue: request.create_queue,
                uep: route.uep.as_ref(),
            },
            &state.settings.quotas.submit_limits(),
        )
        .await?;

    // The tasks are stored; from here on a broker failure delays them (the outbox
    // re-sends) but does not fail the submit, so the SDK never resubmits stored tasks.
    // Only now is anything made on the broker: a submit the store refused (a quota, a
    // lock) made nothing there, so refused submits cannot pile up queues and accounts.
    if let Some(broker) = result_broker {
        declare_result_queue(&state, &broker, caller.identity_id(), task_group_id).await;
    }
    let start = match &batch.uep {
        Some(uep) => {
            // Its queue exists before its tasks are published, whether or not it runs.
            // If this fails, the tasks wait: a task the broker cannot route makes the
            // publisher declare the queue again and leaves the task to the outbox, and
            // asking the MEP to start the UEP sets up its account again (below, or from
            // the outbox once `--start-retry-after-s` has passed).
            if let Err(error) = provision_uep(&state, uep).await {
                tracing::warn!(%error, uep_id = %uep.endpoint_id, "tasks stored; could not set up the UEP's queue and account yet");
            }
            (!uep.is_online(gantry_store::now_ms())).then_some(uep)
        }
        None => None,
    };
    let stored: Vec<TaskRecord> = new_tasks
        .into_iter()
        .map(|t| TaskRecord {
            task_id: t.task_id,
            task_group_id,
            function_id: t.function_id,
            owner_identity_id: caller.identity_id(),
            endpoint_id: route.target,
            submitted_endpoint_id: endpoint_id,
            status: gantry_store::TaskStatus::WaitingForEp,
            task_buffer: Some(t.payload),
            buffer_is_payload: true,
            resource_specification: spec.clone(),
            result_serializers: serializers.clone(),
            result: None,
            exception: None,
            error_code: None,
            details: None,
            task_statuses: None,
            created_at: 0,
            completed_at: None,
            result_queue: request.create_queue,
        })
        .collect();
    // The tasks are safe in the database; a broker that is slow to confirm (a memory
    // alarm, a reconnect) must not hold the submit, or the SDK retries it. The outbox
    // sends what this did not.
    let mut codes = dispatch::FunctionCodes::known(codes);
    let publishing = dispatch::publish_tasks(&state, &stored, &mut codes);
    match tokio::time::timeout(PUBLISH_WAIT, publishing).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, tasks = stored.len(), "tasks stored; the outbox will send them");
        }
        Err(_) => {
            tracing::warn!(
                tasks = stored.len(),
                "the broker is slow to confirm; the outbox will send the tasks"
            );
        }
    }
    if let Some(uep) = start {
        match uep_start::request_start(
            &state,
            uep,
            &caller.0.identity,
            uep_start::START_COMMAND_GAP_MS,
        )
        .await
        {
            Ok(_) => {}
            // The outbox asks again once the retry delay has passed.
            Err(error) => {
                tracing::warn!(%error, uep_id = %route.target, "could not ask the MEP to start the UEP");
            }
        }
    }
    tracing::info!(
        request_id = %batch.request_id, task_group_id = %task_group_id,
        endpoint_id = %endpoint_id, target = %route.target, tasks = total,
        user = %caller.0.identity.username, "submitted"
    );
    Ok(Json(SubmitResponse {
        request_id: batch.request_id,
        task_group_id,
        endpoint_id,
        tasks: task_ids,
    }))
}

/// Declares a task group's result queue for a submit whose tasks are stored. A failure
/// does not fail the submit (its tasks are in): the group is left to the outbox, which
/// declares its queue again within seconds ([`dispatch::declare_result_queues_again`]);
/// after a restart in between, the next submit into the group or `GET /v2/taskgroup`
/// (the SDK's `Executor.reload_tasks`) declares it. Its results stay readable over REST
/// meanwhile.
async fn declare_result_queue(
    state: &AppState,
    broker: &gantry_broker::Broker,
    owner: Uuid,
    task_group_id: Uuid,
) {
    if let Err(error) = broker
        .declare_queue(&task_group_queue(owner, task_group_id))
        .await
    {
        tracing::warn!(%error, %task_group_id, "tasks stored; could not declare the task group's result queue yet");
        state
            .undeclared_result_queues
            .lock()
            .expect("the set is never poisoned: no code panics holding it")
            .insert((owner, task_group_id));
    }
}

/// Where a submit's tasks go, and for a MEP, the user endpoint they go to.
struct Route {
    target: Uuid,
    uep: Option<UepBinding>,
}

fn route_submit(
    caller: &Caller,
    endpoint: &EndpointRecord,
    request: &SubmitRequest,
) -> ApiResult<Route> {
    if !endpoint.multi_user {
        if request
            .user_endpoint_config
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        {
            return Err(ApiError::bad_request(
                "NOT_A_MULTI_USER_ENDPOINT",
                format!(
                    "endpoint {} is not a multi-user endpoint, so it takes no \
                     user_endpoint_config; submit without one",
                    endpoint.endpoint_id
                ),
            ));
        }
        return Ok(Route {
            target: endpoint.endpoint_id,
            uep: None,
        });
    }
    let user_config: Map<String, Value> = request.user_endpoint_config.clone().unwrap_or_default();
    if user_config.values().any(has_indistinct_number) {
        return Err(ApiError::bad_request(
            "INVALID_USER_ENDPOINT_CONFIG",
            "user_endpoint_config holds a number beyond 64-bit integers (or a float of \
             magnitude 2^53 or more), which cannot be told apart from its neighbours, so \
             two configurations could name the same user endpoint; send it as a string",
        ));
    }
    // The official MEP reads `user_runtime` as an object; an SDK that sends none gets {}.
    let user_runtime = match &request.user_runtime {
        Some(Value::Object(runtime)) => Value::Object(runtime.clone()),
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                "user_runtime must be an object such as {\"python\": {\"version\": ...}}",
            ));
        }
    };
    let python = python_major_minor(&user_runtime).unwrap_or_default();
    let uep_id = derive_uep_id(
        endpoint.endpoint_id,
        caller.identity_id(),
        &user_config,
        &python,
    );
    // A new configuration counts against the user's quota, checked where the store
    // makes the UEP, with the tasks.
    Ok(Route {
        target: uep_id,
        uep: Some(UepBinding {
            mep_id: endpoint.endpoint_id,
            user_identity_id: caller.identity_id(),
            user_config,
            user_runtime,
        }),
    })
}

/// 423 for a submit to a locked endpoint.
pub(crate) fn endpoint_locked(endpoint_id: Uuid) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::LOCKED,
        "ENDPOINT_LOCKED",
        format!("endpoint {endpoint_id} is locked and takes no new tasks"),
    )
}

fn endpoint_not_found(endpoint_id: Uuid) -> ApiError {
    ApiError::not_found(
        "ENDPOINT_NOT_FOUND",
        format!("endpoint {endpoint_id} not found"),
    )
}

/// The REST view of a task.
pub fn task_status(task: &TaskRecord) -> TaskStatusResponse {
    let completion_t = task
        .completed_at
        .map(|ms| format!("{:.3}", ms as f64 / 1000.0));
    TaskStatusResponse {
        task_id: task.task_id,
        status: task.status.as_str().to_owned(),
        result: task.result.clone(),
        exception: task.exception.clone(),
        completion_t,
        details: task.details.clone(),
    }
}

/// A payload must pack exactly two buffers (args, kwargs).
fn check_payload(payload: &str, index: usize, function_id: Uuid) -> ApiResult<()> {
    match unpack_buffers(payload) {
        Ok(buffers) if buffers.len() == 2 => Ok(()),
        Ok(buffers) => Err(ApiError::bad_request(
            "INVALID_PAYLOAD",
            format!(
                "payload {index} of function {function_id} packs {} buffers; \
                 a task payload packs exactly two (args, kwargs)",
                buffers.len()
            ),
        )),
        Err(e) => Err(ApiError::bad_request(
            "INVALID_PAYLOAD",
            format!("payload {index} of function {function_id} is not packed buffers: {e}"),
        )),
    }
}

/// 413 for a submit whose task messages would pass the configured limit.
fn submit_too_large(tasks: usize, limit: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "SUBMIT_TOO_LARGE",
        format!(
            "these {tasks} tasks would make more than {} MiB of task messages (each carries \
             its function's code and its payload), the most this service takes in one \
             submit (gantry-service serve --max-submit-expanded-mb); submit fewer tasks \
             at a time, or pass large data other than in every task",
            limit / (1024 * 1024)
        ),
    )
}

/// The largest `resource_specification` a submit may carry, as JSON.
const MAX_RESOURCE_SPECIFICATION_BYTES: usize = 16 * 1024;

/// The most result serializers one submit may name, and the longest name.
const MAX_RESULT_SERIALIZERS: usize = 16;
const MAX_SERIALIZER_PATH: usize = 256;

/// Result serializers are Python import paths of serialization strategies (the SDK
/// sends e.g. `globus_compute_sdk.serialize.concretes.JSONData`); the endpoint imports
/// each, so anything else is refused here rather than failing every task there.
fn check_result_serializers(serializers: &[String]) -> ApiResult<()> {
    if serializers.len() > MAX_RESULT_SERIALIZERS {
        return Err(ApiError::bad_request(
            "INVALID_RESULT_SERIALIZERS",
            format!(
                "{} result_serializers; name at most {MAX_RESULT_SERIALIZERS}",
                serializers.len()
            ),
        ));
    }
    let is_identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for path in serializers {
        if path.len() > MAX_SERIALIZER_PATH || !path.split('.').all(is_identifier) {
            let shown: String = path.chars().take(80).collect();
            return Err(ApiError::bad_request(
                "INVALID_RESULT_SERIALIZERS",
                format!(
                    "result serializer {shown:?} is not a Python import path such as \
                     \"globus_compute_sdk.serialize.concretes.JSONData\" (at most \
                     {MAX_SERIALIZER_PATH} characters)"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a config value holds a number that was read as a double at or beyond 2^53,
/// where doubles skip integers (integers that fit 64 bits are kept exactly).
fn has_indistinct_number(value: &Value) -> bool {
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(n) => n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= EXACT_LIMIT),
        Value::Array(items) => items.iter().any(has_indistinct_number),
        Value::Object(map) => map.values().any(has_indistinct_number),
        _ => false,
    }
}

/// `GET /v2/tasks/{id}`.
pub async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> ApiResult<Json<TaskStatusResponse>> {
    let task_id = parse_id(&task_id, "task id")?;
    let task = state
        .store
        .task(task_id)
        .await?
        .filter(|t| owns_task(&caller, t))
        .ok_or_else(|| {
            ApiError::not_found("TASK_NOT_FOUND", format!("task {task_id} not found"))
        })?;
    Ok(Json(task_status(&task)))
}

/// `POST /v2/batch_status`: unknown tasks, and other users' tasks, are left out.
pub async fn batch_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<BatchStatusRequest>,
) -> ApiResult<Json<BatchStatusResponse>> {
    if request.task_ids.len() > MAX_TASKS_PER_SUBMIT {
        return Err(ApiError::bad_request(
            "TOO_MANY_TASKS",
            format!("ask for at most {MAX_TASKS_PER_SUBMIT} tasks at a time"),
        ));
    }
    let mut results = BTreeMap::new();
    for task_id in request.task_ids {
        if let Some(task) = state
            .store
            .task(task_id)
            .await?
            .filter(|t| owns_task(&caller, t))
        {
            results.insert(task_id, task_status(&task));
        }
    }
    Ok(Json(BatchStatusResponse {
        response: "batch".into(),
        results,
    }))
}

/// `GET /v2/taskgroup/{id}`.
pub async fn get_task_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_group_id): Path<String>,
) -> ApiResult<Json<TaskGroupResponse>> {
    let task_group_id = parse_id(&task_group_id, "task group id")?;
    let owner = state.store.task_group_owner(task_group_id).await?;
    if owner.is_none() || !may_use_task_group(&caller, owner) {
        return Err(ApiError::not_found(
            "TASK_GROUP_NOT_FOUND",
            format!("task group {task_group_id} not found"),
        ));
    }
    // `Executor.reload_tasks` starts here, reads the finished tasks over REST and waits
    // on the group's result queue for the rest: a queue that expired unused while they
    // ran is declared again for them.
    if state
        .store
        .redeclare_result_queue(caller.identity_id(), task_group_id)
        .await?
    {
        let queue = task_group_queue(caller.identity_id(), task_group_id);
        let declared = match state.broker().await {
            Ok(broker) => broker.declare_queue(&queue).await,
            Err(error) => Err(error),
        };
        if let Err(error) = declared {
            tracing::warn!(%error, %task_group_id, "could not declare the task group's result queue again");
        }
    }
    let tasks = state.store.tasks_of_group(task_group_id).await?;
    Ok(Json(TaskGroupResponse {
        taskgroup_id: task_group_id,
        tasks: tasks
            .iter()
            .map(|t| TaskGroupTask { id: t.task_id })
            .collect(),
    }))
}

/// `GET /v2/get_amqp_result_connection_url`: an account that reads only the caller's
/// own task-group queues.
pub async fn amqp_result_url(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AmqpResultUrlResponse>> {
    caller.require_user()?;
    let holder = AccountHolder::User(caller.identity_id());
    // The salt read with the token: if a revocation changed it since, this fails
    // rather than set up (and hand out) the old password.
    let salt = &caller.0.identity.broker_salt;
    state.provision_account(holder, salt).await?;
    let account = holder.account(&state.settings.deployment);
    Ok(Json(AmqpResultUrlResponse {
        connection_url: state.client_amqp_url(&account, salt),
        queue_prefix: user_queue_prefix(caller.identity_id()),
    }))
}
