//! The Globus Compute wire protocol, as Gantry speaks it.
//!
//! Everything that crosses a process boundary between the SDK, the service, the
//! multi-user endpoint (MEP), a user endpoint (UEP) and its workers is a typed value
//! here, so that each program agrees on it by construction:
//!
//! - [`messagepack`]: the AMQP messages (`task`, `result`, `ep_status_report`, ...);
//! - [`packed`]: the packed buffers inside a task and the serialization headers;
//! - [`command`]: the MEP's start command and the stdin document a UEP is started with;
//! - [`rest`]: the bodies of the REST routes the SDK and the endpoints call;
//! - [`uep_id`] and [`canonical_json`]: how a submit names the UEP that runs it.
//!
//! Decoding never panics: malformed input is an error value.
//!
//! ```
//! use gantry_protocol::messagepack::{Message, TaskResult};
//! let result = TaskResult {
//!     task_id: uuid::Uuid::new_v4(),
//!     data: gantry_protocol::packed::serialize_json(&serde_json::json!(42)),
//!     details: None,
//!     error_details: None,
//!     task_statuses: None,
//! };
//! let bytes = Message::from(result.clone()).pack();
//! assert_eq!(bytes[0], 0x01);
//! assert_eq!(Message::unpack_result(&bytes).unwrap(), result);
//! ```

pub mod canonical_json;
pub mod command;
pub mod messagepack;
pub mod packed;
pub mod rest;
pub mod uep_id;
