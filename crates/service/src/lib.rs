//! Gantry's web service: the REST API the official Globus Compute SDK and endpoint speak,
//! task routing over RabbitMQ, and durable task state.
//!
//! A submit is checked, stored (task, message and all) in one transaction, then
//! published to the endpoint's durable queue with a broker confirm; for a multi-user
//! endpoint it goes to the user's own UEP, whose id the submit derives, and the MEP is
//! asked to start that UEP when it is not online. Results flow back the other way: the
//! results consumer stores each one, then forwards it to the task group's queue, where
//! the SDK's `Executor` reads it.
//!
//! The binary `gantry-service` is a thin CLI over [`server::start`] and the store.

pub mod access;
pub mod accounts;
pub mod admin;
pub mod auth;
pub mod consumers;
pub mod dispatch;
pub mod error;
pub mod extract;
pub mod http_server;
pub mod logging;
pub mod master_secret;
pub mod queues;
pub mod quotas;
pub mod routes;
pub mod server;
pub mod state;
pub mod timings;
pub mod uep_start;
