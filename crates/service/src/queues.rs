//! What the service tells an endpoint about its queues, and the broker accounts behind
//! those answers. Every answer carries a connection URL for the endpoint's own account,
//! which [`gantry_broker::layout`] limits to that endpoint's queues and routing keys.

use gantry_broker::layout::{
    HEARTBEATS_EXCHANGE, HEARTBEATS_QUEUE, RESULTS_EXCHANGE, RESULTS_QUEUE, command_queue,
    heartbeat_routing_key, result_routing_key, task_queue,
};
use gantry_protocol::command::AmqpCreds;
use gantry_protocol::rest::{EndpointRegistrationResponse, QueueInfo, QueuePublishKwargs};
use gantry_store::EndpointRecord;
use serde_json::json;
use uuid::Uuid;

use crate::accounts::{AccountHolder, ProvisionError};
use crate::state::AppState;

fn publish_info(url: &str, exchange: &str, queue: &str, routing_key: String) -> QueueInfo {
    QueueInfo {
        connection_url: url.to_owned(),
        queue: queue.to_owned(),
        exchange: Some(exchange.to_owned()),
        queue_publish_kwargs: Some(QueuePublishKwargs {
            exchange: exchange.to_owned(),
            routing_key,
            mandatory: true,
            properties: json!({"delivery_mode": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }),
    }
}

/// Where endpoint `ep` publishes its heartbeats.
pub fn heartbeat_info(url: &str, ep: Uuid) -> QueueInfo {
    publish_info(
        url,
        HEARTBEATS_EXCHANGE,
        HEARTBEATS_QUEUE,
        heartbeat_routing_key(ep),
    )
}

/// Where endpoint `ep` publishes its results.
pub fn result_info(url: &str, ep: Uuid) -> QueueInfo {
    publish_info(url, RESULTS_EXCHANGE, RESULTS_QUEUE, result_routing_key(ep))
}

/// Where endpoint `ep` consumes its tasks.
pub fn task_info(url: &str, ep: Uuid) -> QueueInfo {
    QueueInfo {
        connection_url: url.to_owned(),
        queue: task_queue(ep),
        exchange: None,
        queue_publish_kwargs: None,
    }
}

/// Declares an endpoint's queue, provisions its account (with the salt of `endpoint`,
/// as the caller read it: see [`crate::accounts`]), and describes both.
pub async fn provision_endpoint(
    state: &AppState,
    endpoint: &EndpointRecord,
) -> Result<EndpointRegistrationResponse, ProvisionError> {
    let (ep, multi_user) = (endpoint.endpoint_id, endpoint.multi_user);
    state
        .broker()
        .await?
        .declare_endpoint_queue(ep, multi_user)
        .await?;
    let holder = AccountHolder::Endpoint {
        endpoint_id: ep,
        multi_user,
    };
    state
        .provision_account(holder, &endpoint.broker_salt)
        .await?;
    let account = holder.account(&state.settings.deployment);
    let url = state.client_amqp_url(&account, &endpoint.broker_salt);
    Ok(if multi_user {
        EndpointRegistrationResponse {
            endpoint_id: ep,
            task_queue_info: None,
            result_queue_info: None,
            command_queue_info: Some(QueueInfo {
                connection_url: url.clone(),
                queue: command_queue(ep),
                exchange: None,
                queue_publish_kwargs: None,
            }),
            heartbeat_queue_info: heartbeat_info(&url, ep),
        }
    } else {
        EndpointRegistrationResponse {
            endpoint_id: ep,
            task_queue_info: Some(task_info(&url, ep)),
            result_queue_info: Some(result_info(&url, ep)),
            command_queue_info: None,
            heartbeat_queue_info: heartbeat_info(&url, ep),
        }
    })
}

/// Provisions a user endpoint's queue and account, for the start command.
pub async fn provision_uep(
    state: &AppState,
    uep_record: &EndpointRecord,
) -> Result<AmqpCreds, ProvisionError> {
    let uep = uep_record.endpoint_id;
    let registration = provision_endpoint(state, uep_record).await?;
    let url = registration.heartbeat_queue_info.connection_url.clone();
    Ok(AmqpCreds {
        endpoint_id: uep,
        task_queue_info: task_info(&url, uep),
        result_queue_info: result_info(&url, uep),
        heartbeat_queue_info: registration.heartbeat_queue_info,
    })
}
