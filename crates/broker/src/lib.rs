//! Gantry's RabbitMQ client, shared by the service and the endpoints. Account
//! provisioning, which only the service does, lives in `gantry-broker-accounts`, so an
//! endpoint links the AMQP client alone.
//!
//! - [`layout`]: the names of every exchange, queue and account, and what each account
//!   may do;
//! - [`amqp`]: connecting, declaring, publishing with confirms, consuming;
//! - [`shared`]: a connection that reconnects when the broker comes back.

pub mod amqp;
pub mod layout;
pub mod shared;

pub use amqp::{Broker, Outgoing};
pub use lapin;
pub use shared::SharedBroker;

/// What can go wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A setting (URL) is malformed.
    #[error("{0}")]
    Config(String),
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// A mandatory message matched no queue.
    #[error(
        "the broker could not route a message to exchange {exchange:?} with key {routing_key:?}"
    )]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker refused to take a message.
    #[error("the broker refused a message for exchange {exchange:?} with key {routing_key:?}")]
    Refused {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker did not answer in time (a connection that stalls, a confirm that
    /// never comes); what was sent may or may not have arrived.
    #[error("RabbitMQ did not answer within {seconds} s while {doing}")]
    Timeout {
        /// What was waited for.
        doing: &'static str,
        /// How long.
        seconds: u64,
    },
    /// The management API refused or failed a request.
    #[error("RabbitMQ management API: {action} failed: {detail}")]
    Management {
        /// The request.
        action: String,
        /// What came back.
        detail: String,
    },
    /// An account or virtual host that this deployment would change belongs to someone
    /// else (another Gantry deployment, or an operator); it was left as it is.
    #[error("{0}")]
    NotOurs(String),
}
