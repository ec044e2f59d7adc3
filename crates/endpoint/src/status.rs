//! An endpoint's status reports (`ep_status_report`, SPEC §3): the MEP's and the UEP's
//! heartbeats, a UEP's last one, and the reports a MEP sends on a UEP's behalf. One
//! builder and one confirmed publish for all of them.

use std::collections::BTreeMap;

use anyhow::Context;
use gantry_broker::lapin::BasicProperties;
use gantry_broker::{Broker, Outgoing};
use gantry_protocol::messagepack::{EpStatusReport, Message, TaskTransition};
use gantry_protocol::rest::QueueInfo;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A report's `global_state`: `heartbeat_period` (0 says "stopped"), `active` (false
/// once stopped, as the official endpoint's last report says), then `extra`.
pub fn global_state<'a>(
    period: f64,
    extra: impl IntoIterator<Item = (&'a str, Value)>,
) -> Map<String, Value> {
    let mut state = Map::new();
    state.insert("heartbeat_period".into(), json!(period));
    state.insert("active".into(), json!(period > 0.0));
    for (key, value) in extra {
        state.insert(key.into(), value);
    }
    state
}

/// Publishes one report for `endpoint_id` where `heartbeat` says, and waits for the
/// broker's confirm.
pub async fn publish(
    broker: &Broker,
    heartbeat: &QueueInfo,
    endpoint_id: Uuid,
    global_state: Map<String, Value>,
    task_statuses: BTreeMap<String, Vec<TaskTransition>>,
) -> anyhow::Result<()> {
    let kwargs = heartbeat
        .queue_publish_kwargs
        .as_ref()
        .context("heartbeat queue info without queue_publish_kwargs")?;
    let body = Message::EpStatusReport(EpStatusReport {
        endpoint_id,
        global_state,
        task_statuses,
    })
    .pack();
    broker
        .publish_confirmed(&[Outgoing {
            exchange: &kwargs.exchange,
            routing_key: &kwargs.routing_key,
            body: &body,
            properties: BasicProperties::default(),
        }])
        .await?;
    Ok(())
}
