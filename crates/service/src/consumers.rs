//! The service's two consumers: results (store, then forward to the submitter's queue)
//! and heartbeats (endpoint status; a failed UEP start fails its waiting tasks so the
//! user sees why). A delivery is acknowledged only after its effect is in the database,
//! so a crash means a redelivery, never a lost result.

use std::collections::HashMap;

use futures_lite::StreamExt;
use gantry_broker::lapin::message::Delivery;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_broker::layout::{HEARTBEATS_QUEUE, RESULTS_QUEUE, sender_of, task_queue};
use gantry_protocol::messagepack::{Message, TaskState, UnpackError};
use gantry_store::{StoredResult, announces_stop};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::dispatch::{forward_failures, forward_result};
use crate::state::AppState;
use crate::uep_start;

/// The code of results the service makes for tasks whose UEP could not start.
pub const START_FAILED_CODE: &str = "ENDPOINT_START_FAILED";
/// The code of results the service makes for a result it cannot store.
pub const INVALID_RESULT_CODE: &str = "INVALID_RESULT";

/// What to do with a delivery once handled.
enum Outcome {
    /// Done (or worthless): acknowledge.
    Ack,
    /// A dependency failed: try again after a pause.
    Retry,
}

/// How many times a heartbeat is tried (over about a minute) before it is dropped.
const HEARTBEAT_ATTEMPTS: u32 = 6;

/// How many results are handled at once. Each waits on a database commit and then a
/// broker confirm; one at a time, the consumer would leave both idle most of the time.
/// Results are independent (one per task), so their order does not matter.
const RESULTS_IN_FLIGHT: usize = 32;

/// How many heartbeats are handled at once: those of one sender in order (each
/// overwrites its endpoint's state), those of different senders side by side, so that
/// one endpoint's large or slow heartbeat does not hold back everyone else's status.
const HEARTBEATS_IN_FLIGHT: usize = 8;

/// How many deliveries the broker hands each consumer ahead of time. Heartbeats get
/// fewer: each may be up to [`MAX_HEARTBEAT_BYTES`].
const RESULTS_PREFETCH: u16 = 100;
const HEARTBEATS_PREFETCH: u16 = 16;

/// The largest heartbeat read, in bytes. A heartbeat carries the endpoint's state and
/// the transitions of the tasks that moved since the last one (about 120 bytes each, so
/// this allows some 35,000); a larger one is dropped unread, with a warning.
pub const MAX_HEARTBEAT_BYTES: usize = 4 * 1024 * 1024;

/// Consumes `queue` until shutdown, reconnecting after broker failures. Results are
/// handled concurrently (up to [`RESULTS_IN_FLIGHT`]); heartbeats up to
/// [`HEARTBEATS_IN_FLIGHT`] at once, but each sender's one at a time, in order.
pub async fn run_consumer(
    state: AppState,
    queue: &'static str,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (limit, prefetch) = if queue == RESULTS_QUEUE {
        (RESULTS_IN_FLIGHT, RESULTS_PREFETCH)
    } else {
        (HEARTBEATS_IN_FLIGHT, HEARTBEATS_PREFETCH)
    };
    loop {
        let consumer = match state.broker().await {
            Ok(broker) => {
                broker
                    .consume(queue, &format!("gantry-service-{queue}"), prefetch)
                    .await
            }
            Err(e) => Err(e),
        };
        match consumer {
            Ok(mut consumer) => {
                let mut in_flight = tokio::task::JoinSet::new();
                let mut in_order = SenderOrder::default();
                let stop = loop {
                    if in_flight.len() >= limit {
                        if !settled_cleanly(queue, in_flight.join_next().await) {
                            break false;
                        }
                        continue;
                    }
                    let delivery = tokio::select! {
                        next = consumer.next() => next,
                        done = in_flight.join_next(), if !in_flight.is_empty() => {
                            if settled_cleanly(queue, done) {
                                continue;
                            }
                            break false;
                        }
                        _ = shutdown.changed() => break true,
                    };
                    let Some(Ok(delivery)) = delivery else {
                        tracing::warn!(queue, "the consumer stopped; reconnecting");
                        break false;
                    };
                    let turn = (queue == HEARTBEATS_QUEUE)
                        .then(|| in_order.next_turn(delivery.routing_key.as_str()));
                    let handling =
                        handle_and_settle(state.clone(), queue, delivery, shutdown.clone());
                    in_flight.spawn(async move {
                        match turn {
                            Some(turn) => turn.run(handling).await,
                            None => handling.await,
                        }
                    });
                };
                // Let what is in hand finish: its effects are in the database, and an
                // unsettled delivery would only be redelivered.
                while let Some(done) = in_flight.join_next().await {
                    settled_cleanly(queue, Some(done));
                }
                if stop {
                    return;
                }
            }
            Err(error) => tracing::warn!(
                %error, queue, retry_in_s = crate::timings::CONSUMER_RETRY.as_secs(),
                "cannot consume; retrying"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::timings::CONSUMER_RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps the deliveries of each sender (routing key) in order while different senders'
/// run side by side: each delivery waits for the one before it from the same sender.
#[derive(Default)]
struct SenderOrder {
    /// The signal the latest delivery of each sender gives when it is done.
    latest: HashMap<String, oneshot::Receiver<()>>,
}

/// A delivery's place in its sender's line.
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

impl SenderOrder {
    /// The turn of the next delivery from `sender`.
    fn next_turn(&mut self, sender: &str) -> Turn {
        if self.latest.len() >= 1024 {
            // Forget senders with nothing in flight (done, or their handler is gone).
            self.latest.retain(|_, done| {
                matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
        }
        let (done, signal) = oneshot::channel();
        Turn {
            after: self.latest.insert(sender.to_owned(), signal),
            done,
        }
    }
}

impl Turn {
    /// Runs `work` once the sender's previous delivery is done (or its handler died).
    async fn run<T>(self, work: impl std::future::Future<Output = T>) -> T {
        if let Some(previous) = self.after {
            let _ = previous.await;
        }
        let outcome = work.await;
        let _ = self.done.send(());
        outcome
    }
}

/// Handles one delivery and acknowledges it. When a dependency (database, broker)
/// fails, it tries again in place, backing off up to 30 s, rather than requeueing:
/// a requeued heartbeat would be applied after newer ones from the same endpoint.
/// Results are tried until they are stored (a result is never dropped); heartbeats
/// [`HEARTBEAT_ATTEMPTS`] times. On shutdown it leaves the delivery unsettled, and
/// the broker redelivers it later.
async fn handle_and_settle(
    state: AppState,
    queue: &'static str,
    delivery: Delivery,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), gantry_broker::lapin::Error> {
    let mut pause = crate::timings::DELIVERY_RETRY_FIRST;
    let mut attempts = 0;
    loop {
        let outcome = match queue {
            RESULTS_QUEUE => handle_result(&state, &delivery).await,
            _ => handle_heartbeat(&state, &delivery).await,
        };
        attempts += 1;
        // Heartbeats go one at a time: one that keeps failing must not hold back every
        // endpoint's status. The next heartbeat carries the state again (and a failed
        // start is reported again when the MEP is asked again).
        let give_up = queue != RESULTS_QUEUE && attempts >= HEARTBEAT_ATTEMPTS;
        if give_up && matches!(outcome, Outcome::Retry) {
            tracing::error!(
                queue,
                attempts,
                "dropping a heartbeat that could not be handled"
            );
        }
        match outcome {
            Outcome::Retry if !give_up => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                pause = (pause * 2).min(crate::timings::DELIVERY_RETRY_MAX);
            }
            Outcome::Ack | Outcome::Retry => {
                return delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map(drop);
            }
        }
    }
}

/// Whether a finished handler settled its delivery; if not, the channel is broken and
/// the consumer reconnects (the broker redelivers whatever was not acknowledged).
fn settled_cleanly(
    queue: &'static str,
    done: Option<Result<Result<(), gantry_broker::lapin::Error>, tokio::task::JoinError>>,
) -> bool {
    match done {
        None | Some(Ok(Ok(()))) => true,
        Some(Ok(Err(error))) => {
            tracing::warn!(%error, queue, "could not settle a delivery; reconnecting");
            false
        }
        Some(Err(error)) => {
            tracing::error!(%error, queue, "a delivery handler panicked; reconnecting");
            false
        }
    }
}

async fn handle_result(state: &AppState, delivery: &Delivery) -> Outcome {
    let Some(sender) = sender_of(delivery.routing_key.as_str()) else {
        tracing::warn!(routing_key = %delivery.routing_key, "dropping a result with a malformed routing key");
        return Outcome::Ack;
    };
    let result = match Message::unpack_result(&delivery.data) {
        Ok(result) => result,
        Err(error) => {
            let error = unreadable(&error);
            tracing::warn!(%error, endpoint_id = %sender, "dropping an unreadable result message");
            return Outcome::Ack;
        }
    };
    let error = result.error_details.map(|e| (e.code, e.user_message));
    let has_nul = result.data.contains('\0')
        || error
            .as_ref()
            .is_some_and(|(code, message)| code.contains('\0') || message.contains('\0'));
    let stored = if has_nul {
        // PostgreSQL cannot store it, and retrying would loop forever: the task fails
        // with the reason instead. (The official serializers never write a NUL.)
        let message = format!(
            "the endpoint {sender} sent a result with a NUL character, which cannot be stored"
        );
        tracing::warn!(task_id = %result.task_id, endpoint_id = %sender, "result with a NUL character");
        StoredResult {
            data: message.clone(),
            error: Some((INVALID_RESULT_CODE.to_owned(), message)),
            details: None,
            task_statuses: None,
        }
    } else {
        StoredResult {
            data: result.data,
            error,
            details: result.details,
            task_statuses: result
                .task_statuses
                .map(|t| serde_json::to_value(t).unwrap_or_default()),
        }
    };
    let task = match state
        .store
        .store_result(result.task_id, sender, &stored)
        .await
    {
        Ok(Some(task)) => task,
        Ok(None) => {
            tracing::warn!(task_id = %result.task_id, endpoint_id = %sender,
                "dropping a result for a task this endpoint does not run");
            return Outcome::Ack;
        }
        Err(error) => {
            tracing::error!(%error, task_id = %result.task_id, "cannot store a result; will retry");
            return Outcome::Retry;
        }
    };
    match forward_result(state, &task).await {
        Ok(()) => {
            tracing::debug!(task_id = %task.task_id, status = task.status.as_str(), "result stored and forwarded");
            Outcome::Ack
        }
        Err(error) => {
            tracing::warn!(%error, task_id = %task.task_id, "result stored; forwarding will be retried");
            Outcome::Retry
        }
    }
}

async fn handle_heartbeat(state: &AppState, delivery: &Delivery) -> Outcome {
    let Some(sender) = sender_of(delivery.routing_key.as_str()) else {
        tracing::warn!(routing_key = %delivery.routing_key, "dropping a heartbeat with a malformed routing key");
        return Outcome::Ack;
    };
    if delivery.data.len() > MAX_HEARTBEAT_BYTES {
        tracing::warn!(
            endpoint_id = %sender,
            bytes = delivery.data.len(),
            limit = MAX_HEARTBEAT_BYTES,
            "dropping an oversized heartbeat unread"
        );
        return Outcome::Ack;
    }
    let report = match Message::unpack(&delivery.data) {
        Ok(Message::EpStatusReport(report)) => report,
        Ok(other) => {
            tracing::warn!(endpoint_id = %sender, message_type = other.message_type(), "dropping a non-heartbeat on the heartbeat queue");
            return Outcome::Ack;
        }
        Err(error) => {
            let error = unreadable(&error);
            tracing::warn!(%error, endpoint_id = %sender, "dropping an unreadable heartbeat");
            return Outcome::Ack;
        }
    };
    // An endpoint speaks for itself; a MEP also for its own UEPs (e.g. a failed start).
    let subject = report.endpoint_id;
    let before = match state.store.endpoint(subject).await {
        Ok(Some(ep)) => ep,
        Ok(None) => {
            tracing::debug!(endpoint_id = %subject, "dropping a heartbeat of an unknown endpoint");
            return Outcome::Ack;
        }
        Err(error) => {
            tracing::error!(%error, "cannot look a heartbeat's endpoint up; will retry");
            return Outcome::Retry;
        }
    };
    if subject != sender && before.uep.as_ref().is_none_or(|u| u.mep_id != sender) {
        tracing::warn!(endpoint_id = %sender, subject = %subject, "dropping a heartbeat about an endpoint the sender does not own");
        return Outcome::Ack;
    }
    if let Err(error) = state
        .store
        .record_heartbeat(subject, report.heartbeat_period(), &report.global_state)
        .await
    {
        tracing::error!(%error, endpoint_id = %subject, "cannot store a heartbeat; will retry");
        return Outcome::Retry;
    }
    let running: Vec<Uuid> = report
        .task_statuses
        .iter()
        .filter(|(_, transitions)| {
            transitions.iter().any(|t| {
                matches!(
                    t.state,
                    TaskState::Running
                        | TaskState::ExecStart
                        | TaskState::WaitingForLaunch
                        | TaskState::WaitingForNodes
                )
            })
        })
        .filter_map(|(id, _)| Uuid::parse_str(id).ok())
        .collect();
    if !running.is_empty()
        && let Err(error) = state.store.mark_running(subject, &running).await
    {
        tracing::warn!(%error, "cannot mark tasks running");
    }
    if let Some(error_text) = report.error() {
        let message = format!("the endpoint {subject} could not start: {error_text}");
        tracing::warn!(endpoint_id = %subject, error = error_text, "endpoint reported a failed start");
        // Drop the waiting task messages first, then fail what is pending: a task
        // reported failed must not run later when a retry of the start succeeds.
        // The gate keeps publishers out in between: a task they had in hand is either
        // on the queue before the purge or failed before they look again.
        let gate = state.endpoint_gate(subject);
        let _held = gate.lock().await;
        if let Err(error) = purge_task_queue(state, subject).await {
            tracing::error!(%error, endpoint_id = %subject, "cannot purge the failed endpoint's tasks; will retry");
            return Outcome::Retry;
        }
        match state
            .store
            .fail_pending_tasks(subject, START_FAILED_CODE, &message)
            .await
        {
            Ok(failed) => forward_failures(state, &failed).await,
            Err(error) => {
                tracing::error!(%error, "cannot fail the tasks of a failed endpoint; will retry");
                return Outcome::Retry;
            }
        }
    } else if announces_stop(report.heartbeat_period(), &report.global_state) {
        // Not retried here: the outbox asks again for tasks that keep waiting.
        if let Err(error) = uep_start::restart_if_tasks_wait(state, &before).await {
            tracing::warn!(%error, uep_id = %subject, "could not ask the MEP to start a stopped UEP whose tasks wait");
        }
    }
    Outcome::Ack
}

/// Why a message could not be read, without quoting it: serde's messages quote the
/// offending value (`invalid type: string "..."`), which may be a user's result, and an
/// unknown message type is whatever the sender wrote.
fn unreadable(error: &UnpackError) -> String {
    let at = |source: &serde_json::Error| {
        format!(
            "{:?} error at line {} column {}",
            source.classify(),
            source.line(),
            source.column()
        )
    };
    match error {
        UnpackError::Envelope(source) => format!("the envelope is not valid ({})", at(source)),
        UnpackError::Data {
            message_type,
            source,
        } => format!(
            "the {message_type} message has invalid data ({})",
            at(source)
        ),
        UnpackError::UnknownMessageType(name) => {
            format!("unknown message type ({} characters)", name.chars().count())
        }
        other => other.to_string(),
    }
}

/// Empties the task queue of a (non-multi-user) endpoint; a MEP has none.
async fn purge_task_queue(
    state: &AppState,
    endpoint_id: Uuid,
) -> Result<(), crate::dispatch::DispatchError> {
    let Some(endpoint) = state.store.endpoint(endpoint_id).await? else {
        return Ok(());
    };
    if endpoint.multi_user {
        return Ok(());
    }
    let broker = state.broker().await?;
    // Declared first (a no-op when it exists): purging a missing queue would fail, and
    // fail again on every retry.
    broker.declare_endpoint_queue(endpoint_id, false).await?;
    let dropped = broker.purge_queue(&task_queue(endpoint_id)).await?;
    if dropped > 0 {
        tracing::info!(endpoint_id = %endpoint_id, dropped, "dropped the tasks of an endpoint that failed to start");
    }
    Ok(())
}

/// The queues the service consumes.
pub const CONSUMED_QUEUES: [&str; 2] = [RESULTS_QUEUE, HEARTBEATS_QUEUE];
