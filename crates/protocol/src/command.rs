//! What the service tells a multi-user endpoint (MEP), and what a MEP hands the user
//! endpoint (UEP) it starts.
//!
//! The service publishes commands as JSON (not proto1) on the MEP's command queue, with
//! AMQP `content_type=application/json` and a `timestamp` the MEP checks for freshness.
//! The one command today is `cmd_start_endpoint`: start (or refresh) the UEP that runs
//! one user's tasks with one configuration.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::rest::QueueInfo;

/// The name of the start command.
pub const CMD_START_ENDPOINT: &str = "cmd_start_endpoint";

/// Whether `name` is a well-formed command name: `^cmd_[A-Za-z][0-9A-Za-z_]{0,99}$`.
/// Anything else is refused before it is looked up.
pub fn is_valid_command_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("cmd_") else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && rest.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One identity of the submitting user, as an identity provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// The identity id.
    pub id: Uuid,
    /// The same id, under the OpenID name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<Uuid>,
    /// The username, e.g. `alice@example.org`.
    pub username: String,
    /// Email, if known.
    #[serde(default)]
    pub email: Option<String>,
    /// Display name, if known.
    #[serde(default)]
    pub name: Option<String>,
    /// Organization, if known.
    #[serde(default)]
    pub organization: Option<String>,
    /// The provider that vouches for it.
    #[serde(default)]
    pub identity_provider: Option<String>,
    /// `used` or `private` identities count for mapping; others are ignored.
    #[serde(default)]
    pub status: Option<String>,
}

/// The broker accounts and queues a UEP uses, chosen by the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpCreds {
    /// The UEP's id.
    pub endpoint_id: Uuid,
    /// Where its tasks are.
    pub task_queue_info: QueueInfo,
    /// Where it publishes results.
    pub result_queue_info: QueueInfo,
    /// Where it publishes heartbeats.
    pub heartbeat_queue_info: QueueInfo,
}

/// The arguments of `cmd_start_endpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartEndpointKwargs {
    /// The UEP's name, `uep.<mep id>.<uep id>`.
    pub name: String,
    /// The user's template variables (`user_endpoint_config`).
    #[serde(default)]
    pub user_opts: Map<String, Value>,
    /// The submitter's runtime facts, for the template.
    #[serde(default)]
    pub user_runtime: Value,
    /// The UEP's broker credentials and queues.
    pub amqp_creds: AmqpCreds,
}

/// `cmd_start_endpoint`: start or refresh the UEP for this user and configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartEndpointCommand {
    /// Always [`CMD_START_ENDPOINT`].
    pub command: String,
    /// The submitter's username.
    pub globus_username: String,
    /// The identity that submitted.
    pub globus_effective_identity: Uuid,
    /// Every identity linked to the submitter.
    pub globus_identity_set: Vec<IdentityInfo>,
    /// Unused; kept for the protocol's shape.
    #[serde(default)]
    pub args: Vec<Value>,
    /// The UEP to start.
    pub kwargs: StartEndpointKwargs,
}

/// Why a command document was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not JSON, or missing a field.
    #[error("command is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The `command` field is not a well-formed command name.
    #[error("command name {0:?} is not of the form cmd_<name>")]
    BadName(String),
    /// A well-formed name this side does not know.
    #[error("unknown command {0:?}")]
    Unknown(String),
}

impl StartEndpointCommand {
    /// Reads a command document, refusing malformed names and commands other than
    /// `cmd_start_endpoint`.
    pub fn from_json(bytes: &[u8]) -> Result<StartEndpointCommand, CommandError> {
        let value: Value = serde_json::from_slice(bytes)?;
        let name = value
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_valid_command_name(name) {
            return Err(CommandError::BadName(name.chars().take(120).collect()));
        }
        if name != CMD_START_ENDPOINT {
            return Err(CommandError::Unknown(name.to_owned()));
        }
        Ok(serde_json::from_value(value)?)
    }
}

/// The JSON a MEP writes on a starting UEP's stdin: everything it needs and nothing it
/// must find on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UepStdin {
    /// The UEP's broker credentials and queues.
    pub amqp_creds: AmqpCreds,
    /// The rendered user endpoint configuration (the template's output, as YAML text).
    pub config: String,
    /// Facts about the UEP for its logs and heartbeats (MEP id, user, name).
    #[serde(default)]
    pub ep_info: Map<String, Value>,
    /// Functions the MEP restricts its UEPs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_functions: Option<Vec<Uuid>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_follow_the_pattern() {
        assert!(is_valid_command_name("cmd_start_endpoint"));
        assert!(is_valid_command_name("cmd_a"));
        assert!(is_valid_command_name(&format!("cmd_a{}", "b".repeat(99))));
        assert!(!is_valid_command_name(&format!("cmd_a{}", "b".repeat(100))));
        for bad in ["cmd_", "cmd_1abc", "start", "cmd_a-b", "cmd_é", "CMD_a", ""] {
            assert!(!is_valid_command_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn unknown_and_malformed_commands_are_refused() {
        assert!(matches!(
            StartEndpointCommand::from_json(br#"{"command":"cmd_shutdown"}"#),
            Err(CommandError::Unknown(_))
        ));
        assert!(matches!(
            StartEndpointCommand::from_json(br#"{"command":"rm -rf"}"#),
            Err(CommandError::BadName(_))
        ));
        assert!(matches!(
            StartEndpointCommand::from_json(br#"{"command":"cmd_start_endpoint"}"#),
            Err(CommandError::Malformed(_))
        ));
        assert!(matches!(
            StartEndpointCommand::from_json(b"\x00"),
            Err(CommandError::Malformed(_))
        ));
    }
}
