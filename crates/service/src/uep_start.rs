//! Starting user endpoints: the one place that decides when a MEP is asked to start one
//! of its UEPs, and sends the `cmd_start_endpoint`.
//!
//! Three things ask: a submit routed to a UEP that is not online; the heartbeat
//! consumer, when a UEP that still has tasks waiting says it stopped (an idle shutdown
//! racing a submit); and the outbox, for UEPs whose tasks have waited unanswered (a
//! lost command, a MEP that dropped it, a UEP that died without a word). Every request
//! is throttled per UEP in the store ([`gantry_store::Store::claim_start_request`]), so
//! the three never pile commands up; a UEP that reports a stop or a failed start has
//! its throttle cleared, so the next request goes out at once.

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_broker::lapin::BasicProperties;
use gantry_broker::layout::command_queue;
use gantry_broker::{BrokerError, Outgoing};
use gantry_protocol::command::{
    AmqpCreds, CMD_START_ENDPOINT, IdentityInfo, StartEndpointCommand, StartEndpointKwargs,
};
use gantry_store::{EndpointRecord, Identity, StoreError, UepBinding};
use uuid::Uuid;

use crate::queues::provision_uep;
use crate::state::AppState;

/// The shortest time between two start commands for the same UEP (ms): a burst of
/// submits to a UEP that is starting sends one command, not one each
/// ([`crate::timings::START_COMMAND_GAP`]).
pub const START_COMMAND_GAP_MS: i64 = crate::timings::START_COMMAND_GAP.as_millis() as i64;

// How long a start command may wait for the broker's confirm. A command that does not
// go out in time is sent again by the outbox once the retry delay has passed.
use crate::timings::COMMAND_PUBLISH_WAIT;

/// Why a start request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed (publishing).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The UEP's queue or account could not be set up.
    #[error(transparent)]
    Provision(#[from] crate::accounts::ProvisionError),
    /// The broker did not confirm the command in time.
    #[error("RabbitMQ did not confirm the start command within {} s", COMMAND_PUBLISH_WAIT.as_secs())]
    Timeout,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `cmd_start_endpoint` that asks a MEP to start the UEP `uep_name` (bound by
/// `binding`) for `identity`, its user, with the broker credentials the UEP will use.
pub fn start_command(
    identity: &Identity,
    uep_name: &str,
    binding: &UepBinding,
    amqp_creds: AmqpCreds,
) -> StartEndpointCommand {
    StartEndpointCommand {
        command: CMD_START_ENDPOINT.to_owned(),
        globus_username: identity.username.clone(),
        globus_effective_identity: identity.identity_id,
        globus_identity_set: vec![IdentityInfo {
            id: identity.identity_id,
            sub: Some(identity.identity_id),
            username: identity.username.clone(),
            email: None,
            name: Some(identity.username.clone()),
            organization: None,
            identity_provider: Some(crate::routes::oauth::IDENTITY_PROVIDER.to_owned()),
            status: Some("used".to_owned()),
        }],
        args: Vec::new(),
        kwargs: StartEndpointKwargs {
            name: uep_name.to_owned(),
            user_opts: binding.user_config.clone(),
            user_runtime: binding.user_runtime.clone(),
            amqp_creds,
        },
    }
}

/// Asks the UEP's MEP to start it for `identity` (its user), unless a request for it
/// went out less than `min_gap_ms` ago. Returns whether a command went out. The
/// request is recorded before the command is sent: if sending fails, the outbox asks
/// again after the retry delay.
pub async fn request_start(
    state: &AppState,
    uep: &EndpointRecord,
    identity: &Identity,
    min_gap_ms: i64,
) -> Result<bool, StartError> {
    let Some(binding) = &uep.uep else {
        return Ok(false);
    };
    if !state
        .store
        .claim_start_request(uep.endpoint_id, min_gap_ms)
        .await?
    {
        return Ok(false);
    }
    let creds = provision_uep(state, uep).await?;
    let command = start_command(identity, &uep.name, binding, creds);
    tokio::time::timeout(
        COMMAND_PUBLISH_WAIT,
        publish_start_command(state, binding.mep_id, &command),
    )
    .await
    .map_err(|_| StartError::Timeout)??;
    tracing::info!(uep_id = %uep.endpoint_id, mep_id = %binding.mep_id, "asked the MEP to start a UEP");
    Ok(true)
}

/// The UEP's user, and whether its MEP is online: what a request made by the service
/// itself (not by a submit) needs. `None` when the request should wait: the MEP is
/// offline (it is asked once it is back, so commands do not pile up in its queue), or
/// the user is gone.
async fn unprompted_request(
    state: &AppState,
    uep: &EndpointRecord,
) -> Result<Option<Identity>, StartError> {
    let Some(binding) = &uep.uep else {
        return Ok(None);
    };
    let now = gantry_store::now_ms();
    let mep_online = state
        .store
        .endpoint(binding.mep_id)
        .await?
        .is_some_and(|mep| mep.is_online(now));
    if !mep_online {
        return Ok(None);
    }
    Ok(state.store.identity(binding.user_identity_id).await?)
}

/// A UEP said it stopped (`before` is its record from before that heartbeat): if tasks
/// still wait for it (submitted while it was shutting down, or left on its queue), asks
/// its MEP at once to start it again rather than leaving them for the outbox's retry.
/// A UEP that stops again within [`START_COMMAND_GAP_MS`] of being asked to start is
/// left to the outbox, so a UEP that dies on every start is not restarted in a loop.
pub async fn restart_if_tasks_wait(
    state: &AppState,
    before: &EndpointRecord,
) -> Result<bool, StartError> {
    let now = gantry_store::now_ms();
    if before.uep.is_none()
        || before
            .start_requested_at
            .is_some_and(|at| now - at < START_COMMAND_GAP_MS)
    {
        return Ok(false);
    }
    if state
        .store
        .unfinished_task_count(before.endpoint_id)
        .await?
        == 0
    {
        return Ok(false);
    }
    let Some(identity) = unprompted_request(state, before).await? else {
        return Ok(false);
    };
    tracing::info!(uep_id = %before.endpoint_id, "a UEP stopped with tasks waiting; starting it again");
    request_start(state, before, &identity, START_COMMAND_GAP_MS).await
}

/// Asks MEPs again to start UEPs whose tasks have waited longer than the retry delay
/// with no start request since: the command was lost (a crash between storing the
/// tasks and sending it, a broker failure), the MEP dropped it, or the UEP died
/// without saying so. Only MEPs that are online are asked, so commands do not pile up
/// in the queue of one that is down; once it is back, it is asked.
pub async fn resend_start_commands(state: &AppState) -> Result<(), StartError> {
    let now = gantry_store::now_ms();
    let retry_after = state.settings.start_retry_after_ms;
    let candidates = state.store.ueps_awaiting_start(now - retry_after).await?;
    for uep in candidates {
        if uep.is_online(now) {
            continue;
        }
        let Some(identity) = unprompted_request(state, &uep).await? else {
            continue;
        };
        if request_start(state, &uep, &identity, retry_after).await? {
            tracing::info!(uep_id = %uep.endpoint_id, "asked again: the UEP's tasks waited unanswered");
        }
    }
    Ok(())
}

/// Publishes a start command on a MEP's command queue.
pub async fn publish_start_command(
    state: &AppState,
    mep_id: Uuid,
    command: &StartEndpointCommand,
) -> Result<(), BrokerError> {
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
