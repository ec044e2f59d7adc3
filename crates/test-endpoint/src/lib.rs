//! Gantry's endpoint, in-process, for tests and benchmarks of the service: the service
//! is tested end to end against the UEP code that ships, with the real SDK on the
//! other side, and without root or fork/exec.
//!
//! - [`run_uep`] runs the shipped UEP loop, [`gantry_endpoint::uep::serve`], on a
//!   UEP's queues: it consumes tasks, hands them to an engine, publishes results with
//!   confirms and heartbeats with the engine's figures, and stops with a last heartbeat
//!   of period 0. Its engine is chosen by [`Executor`]: the real `ThreadPoolEngine` of
//!   `gantry-engine` running Gantry's Python worker ([`Executor::Python`]), or an echo
//!   engine that answers every task with JSON `null` at once ([`Executor::Echo`]), so
//!   that benchmarks measure the service and the broker rather than Python.
//! - [`run_mep`] is a stand-in MEP: it consumes a MEP's command queue and, for each
//!   `cmd_start_endpoint`, starts a UEP with [`run_uep`] on the credentials the command
//!   carries (or, told to fail, reports the failed start as a real MEP must).
//! - [`register`] and [`creds_of`] register an endpoint over REST and pick a plain
//!   endpoint's UEP credentials out of the answer.
//!
//! ```no_run
//! # async fn demo(registered: gantry_protocol::rest::EndpointRegistrationResponse) -> anyhow::Result<()> {
//! use gantry_test_endpoint::{Executor, creds_of, run_uep};
//!
//! let uep = run_uep(creds_of(&registered)?, Executor::Echo, 30.0).await?;
//! // ... submit tasks to `registered.endpoint_id` and read their results ...
//! uep.stop().await?;
//! # Ok(()) }
//! ```

mod engines;
mod mep;
mod uep;

use std::time::Duration;

use anyhow::{Context, bail};
use gantry_protocol::command::AmqpCreds;
use gantry_protocol::rest::{EndpointRegistrationRequest, EndpointRegistrationResponse};

pub use mep::{RunningMep, StartBehaviour, run_mep};
pub use uep::{Executor, RunningUep, run_uep};

/// How long stopping a test UEP or MEP may take before it is reported as hung.
const STOP_WAIT: Duration = Duration::from_secs(60);

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
