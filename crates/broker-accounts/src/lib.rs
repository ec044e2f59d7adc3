//! Broker accounts, which only the service provisions: RabbitMQ's management API
//! ([`management`]) and the passwords derived from the service's secret
//! ([`credentials`]). Kept apart from `gantry-broker` so that endpoints, which only
//! speak AMQP, do not link an HTTP client for an API they must never call.

pub mod credentials;
pub mod management;

pub use management::Management;
