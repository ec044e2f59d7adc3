//! A MEP stand-in: it consumes a MEP's command queue and starts each commanded UEP in
//! this process with [`run_uep`], or reports the start as failed. (Gantry's real MEP
//! needs root to fork and exec UEPs as local users; it has its own end-to-end tests.)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use gantry_broker::Broker;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_endpoint::uep::report_failed_start;
use gantry_protocol::command::StartEndpointCommand;
use gantry_protocol::rest::{EndpointRegistrationResponse, QueueInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::uep::{Executor, RunningUep, run_uep};
use crate::{STOP_WAIT, engines};

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

/// The MEP's own heartbeat: the service keeps a MEP online by it, as for any endpoint.
async fn heartbeat(
    broker: &Broker,
    info: &QueueInfo,
    endpoint_id: Uuid,
    period: f64,
) -> anyhow::Result<()> {
    gantry_endpoint::status::publish(
        broker,
        info,
        endpoint_id,
        gantry_endpoint::status::global_state(period, []),
        Default::default(),
    )
    .await
}

/// Starts a MEP stand-in on a multi-user registration. It heartbeats every
/// `heartbeat_period` seconds, and the UEPs it starts use the same period.
pub async fn run_mep(
    registration: &EndpointRegistrationResponse,
    behaviour: StartBehaviour,
    heartbeat_period: f64,
) -> anyhow::Result<RunningMep> {
    let command_info = registration
        .command_queue_info
        .clone()
        .context("not a multi-user registration")?;
    if let StartBehaviour::Start(Executor::Python(_)) = &behaviour {
        // Build the worker pool program now, so the first start command does not wait
        // for cargo while the submitter waits for its result.
        engines::pool_program().await?;
    }
    let heartbeat_info = registration.heartbeat_queue_info.clone();
    let broker = Broker::connect(&command_info.connection_url).await?;
    let mut consumer = broker.consume(&command_info.queue, "test-mep", 8).await?;
    let mep_id = registration.endpoint_id;
    heartbeat(&broker, &heartbeat_info, mep_id, heartbeat_period).await?;
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
                    heartbeat(&broker, &heartbeat_info, mep_id, heartbeat_period).await?;
                    continue;
                }
                _ = stopped.changed() => break,
            };
            let Some(delivery) = delivery else {
                bail!("the command queue consumer ended")
            };
            let delivery = delivery?;
            let command = StartEndpointCommand::from_json(&delivery.data)?;
            seen.lock()
                .map_err(|_| anyhow::anyhow!("the command list's lock is poisoned"))?
                .push(command.clone());
            let uep_id = command.kwargs.amqp_creds.endpoint_id;
            match &behaviour {
                StartBehaviour::Start(executor) => {
                    let mut running = started.lock().await;
                    if let Entry::Vacant(slot) = running.entry(uep_id) {
                        let creds = command.kwargs.amqp_creds.clone();
                        slot.insert(run_uep(creds, executor.clone(), heartbeat_period).await?);
                    }
                }
                StartBehaviour::Fail(message) => {
                    // A MEP reports a UEP's failed start on the UEP's behalf, with the
                    // shipped endpoint's own report.
                    report_failed_start(&broker, &heartbeat_info, uep_id, message).await?;
                }
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        heartbeat(&broker, &heartbeat_info, mep_id, 0.0).await?;
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
