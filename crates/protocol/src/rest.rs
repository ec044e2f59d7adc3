//! The bodies of the REST routes the SDK and the endpoints call (SPEC §2), with the
//! field names the real clients send and read.
//!
//! Requests are lenient where the clients vary (optional fields default) and strict
//! where a mistake would lose data (ids must be UUIDs, `tasks` must map function ids
//! to lists of strings). Responses carry exactly what the clients read: for instance
//! the SDK's `Executor` needs `request_id`, `task_group_id` and `endpoint_id` as UUID
//! strings and one task id per payload, in order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// `GET /v2/version?service=all`. The SDK checks its own version against
/// `min_sdk_version` at every `Client()`; the endpoint does the same with `min_ep_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResponse {
    /// The service's API version.
    pub api: String,
    /// The oldest SDK this service works with (PEP 440).
    pub min_sdk_version: String,
    /// The oldest endpoint this service works with (PEP 440).
    pub min_ep_version: String,
}

/// `POST /v3/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRegistrationRequest {
    /// The function's `__name__`.
    pub function_name: String,
    /// One packed buffer holding the serialized function; or, with `serialized: false`,
    /// the plain source text.
    pub function_code: String,
    /// Whether `function_code` is packed and serialized (the default) or plain source.
    #[serde(default = "default_true")]
    pub serialized: bool,
    /// `python_version`, `sdk_version`, `serde_identifier`.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether any user may run it.
    #[serde(default)]
    pub public: bool,
    /// A group that may run it.
    #[serde(default)]
    pub group: Option<Uuid>,
    /// Restricts the function to one high-assurance endpoint.
    #[serde(default)]
    pub ha_endpoint_id: Option<Uuid>,
}

fn default_true() -> bool {
    true
}

/// The answer to a function registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRegistrationResponse {
    /// The new function's id.
    pub function_uuid: Uuid,
}

/// `GET /v2/functions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionResponse {
    /// Its id.
    pub function_uuid: Uuid,
    /// Its name.
    pub function_name: String,
    /// The packed, serialized function.
    pub function_code: String,
    /// Free text.
    pub description: Option<String>,
    /// Open to all users?
    pub public: bool,
    /// What the SDK sent as `meta`.
    pub meta: Map<String, Value>,
}

/// `POST /v3/endpoints/{id}/submit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// Whether to create the task group's result queue (the `Executor` always asks).
    #[serde(default)]
    pub create_queue: bool,
    /// Payloads (packed args and kwargs) by function id, in submission order. A function
    /// named twice (the same id in another letter case, or a repeated key) is refused:
    /// one of the lists would otherwise be dropped without a word.
    #[serde(deserialize_with = "unique_function_ids")]
    pub tasks: BTreeMap<Uuid, Vec<String>>,
    /// The task group to join; a new one is made when absent.
    #[serde(default)]
    pub task_group_id: Option<Uuid>,
    /// Resources for the tasks (an opaque object passed to the endpoint).
    #[serde(default)]
    pub resource_specification: Option<Map<String, Value>>,
    /// For a multi-user endpoint: the variables of the user's endpoint template.
    #[serde(default)]
    pub user_endpoint_config: Option<Map<String, Value>>,
    /// Facts about the submitter's Python and SDK.
    #[serde(default)]
    pub user_runtime: Option<Value>,
    /// Import paths of the serializers the results should use.
    #[serde(default)]
    pub result_serializers: Option<Vec<String>>,
}

/// Reads `tasks`, refusing a function id that appears twice once parsed.
fn unique_function_ids<'de, D>(deserializer: D) -> Result<BTreeMap<Uuid, Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<Uuid, Vec<String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of function ids to lists of payloads")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut tasks = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let function_id = Uuid::parse_str(&key).map_err(|_| {
                    let shown: String = key.chars().take(40).collect();
                    serde::de::Error::custom(format_args!(
                        "the function id {shown:?} in tasks is not a UUID"
                    ))
                })?;
                let payloads: Vec<String> = map.next_value()?;
                if tasks.insert(function_id, payloads).is_some() {
                    return Err(serde::de::Error::custom(format_args!(
                        "the function {function_id} appears more than once in tasks \
                         (ids are compared whatever their letter case); send all its \
                         payloads in one list"
                    )));
                }
            }
            Ok(tasks)
        }
    }
    deserializer.deserialize_map(Visitor)
}

/// The answer to a submit: one task id per payload, in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// This submit's id.
    pub request_id: Uuid,
    /// The task group the tasks joined.
    pub task_group_id: Uuid,
    /// The endpoint the user named.
    pub endpoint_id: Uuid,
    /// Task ids by function id, in payload order.
    pub tasks: BTreeMap<Uuid, Vec<Uuid>>,
}

/// `GET /v2/get_amqp_result_connection_url`: where the SDK reads results; the queue of
/// a task group is `queue_prefix + task_group_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpResultUrlResponse {
    /// `amqp://user:password@host:port/vhost`, for an account that can only read the
    /// caller's own task-group queues.
    pub connection_url: String,
    /// The prefix of the caller's task-group queues.
    pub queue_prefix: String,
}

/// `GET /v2/tasks/{id}`, and each entry of a batch status.
///
/// A finished task carries `completion_t` and exactly one of `result` (the serialized
/// value) or `exception` (the traceback text); a pending one carries neither.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusResponse {
    /// The task's id, as the SDK knows it.
    pub task_id: Uuid,
    /// `waiting-for-ep`, `running`, `success` or `failed`.
    pub status: String,
    /// The serialized result of a successful task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The traceback of a failed task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// When the result arrived, as seconds since the epoch in a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_t: Option<String>,
    /// The endpoint's details about the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `POST /v2/batch_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStatusRequest {
    /// The tasks to report on.
    pub task_ids: Vec<Uuid>,
}

/// The answer to a batch status: one entry per known task the caller may see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStatusResponse {
    /// Always `"batch"`.
    pub response: String,
    /// Status by task id.
    pub results: BTreeMap<Uuid, TaskStatusResponse>,
}

/// One task of a task group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroupTask {
    /// The task's id.
    pub id: Uuid,
}

/// `GET /v2/taskgroup/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroupResponse {
    /// The group's id (the SDK compares it with the one it asked for).
    pub taskgroup_id: Uuid,
    /// Its tasks, in submission order.
    pub tasks: Vec<TaskGroupTask>,
}

/// `GET /v2/endpoints/{id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatusResponse {
    /// `online` or `offline`.
    pub status: String,
    /// The last heartbeat's `global_state`, and when it came.
    pub details: Map<String, Value>,
}

/// `POST /v3/endpoints` and `PUT /v3/endpoints/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRegistrationRequest {
    /// The endpoint's short name.
    pub endpoint_name: String,
    /// A name for people.
    #[serde(default)]
    pub display_name: Option<String>,
    /// For `POST`: the id the endpoint wants (it keeps it across re-registrations).
    #[serde(default)]
    pub endpoint_id: Option<Uuid>,
    /// A multi-user endpoint starts user endpoints and runs no tasks itself.
    #[serde(default)]
    pub multi_user: bool,
    /// Whether any user may submit to it.
    #[serde(default)]
    pub public: Option<bool>,
    /// High-assurance endpoint?
    #[serde(default)]
    pub high_assurance: Option<bool>,
    /// Functions it restricts itself to.
    #[serde(default)]
    pub allowed_functions: Option<Vec<Uuid>>,
    /// Facts the endpoint reports (hostname, versions, config).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Accepted for compatibility; Gantry has no authentication policies.
    #[serde(default)]
    pub authentication_policy: Option<Uuid>,
    /// Accepted for compatibility; Gantry has no subscriptions.
    #[serde(default)]
    pub subscription_uuid: Option<Uuid>,
    /// Identities that may manage the endpoint.
    #[serde(default)]
    pub admins: Option<Vec<Uuid>>,
}

/// A queue an endpoint consumes, or an exchange it publishes to, with the URL (and
/// credentials) of the broker account that may do so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// `amqp://user:password@host:port/vhost`.
    pub connection_url: String,
    /// The queue to consume (tasks, commands) or the service's queue behind an exchange.
    pub queue: String,
    /// The exchange to publish to, for results and heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// How to publish (exchange, routing key, mandatory, persistent delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_publish_kwargs: Option<QueuePublishKwargs>,
}

/// The arguments an endpoint passes to its AMQP publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePublishKwargs {
    /// The exchange.
    pub exchange: String,
    /// The routing key, which names the endpoint.
    pub routing_key: String,
    /// Always true: an unroutable message must come back, not vanish.
    pub mandatory: bool,
    /// AMQP properties; `delivery_mode: 2` makes messages persistent.
    pub properties: Map<String, Value>,
}

/// The answer to an endpoint registration: its id and the queues it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRegistrationResponse {
    /// The endpoint's id.
    pub endpoint_id: Uuid,
    /// A plain endpoint's task queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_queue_info: Option<QueueInfo>,
    /// Where a plain endpoint publishes results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_queue_info: Option<QueueInfo>,
    /// A multi-user endpoint's command queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_queue_info: Option<QueueInfo>,
    /// Where the endpoint publishes heartbeats.
    pub heartbeat_queue_info: QueueInfo,
}

/// A token from `POST /v2/oauth2/token` (the client-credentials grant), as Globus Auth
/// answers: the first resource server's token, with one more per other resource server
/// the requested scopes named. The SDK and the official endpoint read `other_tokens`
/// whether or not it is empty, so it is always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Its lifetime in seconds.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// The resource server it is for (`funcx_service`, `auth.globus.org`).
    #[serde(default)]
    pub resource_server: String,
    /// The scopes it carries, space-separated.
    #[serde(default)]
    pub scope: String,
    /// Always `Bearer`.
    #[serde(default)]
    pub token_type: String,
    /// The tokens for the other resource servers.
    #[serde(default)]
    pub other_tokens: Vec<TokenResponse>,
}

/// Someone as Globus Auth describes an identity (in `userinfo`'s `identity_set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityDocument {
    /// The identity id.
    pub sub: Uuid,
    /// The identity id again, under the name identity lookups use.
    pub id: Uuid,
    /// The username (`<client id>@clients.auth.globus.org` for a client).
    pub username: String,
    /// A name for people.
    pub name: String,
    /// Gantry knows no e-mail addresses.
    pub email: Option<String>,
    /// Gantry knows no organizations.
    pub organization: Option<String>,
    /// The identity provider's name.
    pub identity_provider: String,
    /// The identity provider's name for people.
    pub identity_provider_display_name: String,
    /// `used`: the identity has signed in.
    pub status: String,
}

/// `GET /v2/oauth2/userinfo`, which the official endpoint calls to learn its own
/// identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The identity id.
    pub sub: Uuid,
    /// The username.
    pub preferred_username: String,
    /// A name for people.
    pub name: String,
    /// Gantry knows no e-mail addresses.
    pub email: Option<String>,
    /// The identity provider's name.
    pub identity_provider: String,
    /// The identity provider's name for people.
    pub identity_provider_display_name: String,
    /// Gantry knows no organizations.
    pub organization: Option<String>,
    /// Gantry does not record sign-ins.
    pub last_authentication: Option<i64>,
    /// The caller's identities: exactly one.
    pub identity_set: Vec<IdentityDocument>,
}

/// An endpoint as `GET /v2/endpoints[/{id}]` shows it (the SDK's `get_endpoint_metadata`
/// and `get_endpoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Its id, under the name `get_endpoints` reads.
    pub uuid: Uuid,
    /// Its id.
    pub endpoint_id: Uuid,
    /// Short name.
    pub name: String,
    /// A name for people.
    pub display_name: Option<String>,
    /// Multi-user endpoint?
    pub multi_user: bool,
    /// Open to every user?
    pub public: bool,
    /// High assurance?
    pub high_assurance: bool,
    /// A locked endpoint takes no new tasks.
    pub locked: bool,
    /// Who registered it (for a user endpoint: the user it runs for).
    pub owner: Uuid,
    /// The functions it restricts itself to, if it does.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// What the endpoint reported about itself.
    pub metadata: Map<String, Value>,
    /// For a user endpoint: its multi-user endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_endpoint_id: Option<Uuid>,
    /// For a user endpoint: the configuration it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_endpoint_config: Option<Map<String, Value>>,
}

/// `GET /v3/endpoints/{id}/allowed_functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedFunctionsResponse {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The functions it runs (empty: any).
    pub functions: Vec<Uuid>,
}

/// `POST /v3/endpoints/{id}/lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointLockResponse {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Always true.
    pub locked: bool,
}

/// `DELETE /v2/endpoints/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDeleteResponse {
    /// 302, as Globus Compute answers (the SDK ignores it).
    pub result: u16,
    /// The endpoint and its user endpoints.
    pub removed: Vec<Uuid>,
}

/// `DELETE /v2/functions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionDeleteResponse {
    /// The function.
    pub function_uuid: Uuid,
    /// Always true.
    pub deleted: bool,
}

/// Every error the service returns. The SDK reads `code` (a string) and `message`; the
/// endpoint CLI prints `reason`; so all three are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `TASK_NOT_FOUND`.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The same text, under the name older clients read.
    pub reason: String,
    /// The HTTP status, repeated for clients that only see the body.
    pub http_status_code: u16,
}

impl ErrorBody {
    /// An error body with `message` in both text fields.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ErrorBody {
        let message = message.into();
        ErrorBody {
            code: code.to_owned(),
            reason: message.clone(),
            message,
            http_status_code: status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_submit_as_the_executor_sends_it_is_read() {
        let body = json!({
            "create_queue": true,
            "tasks": {"a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["28\n00\ngASVBQAAAAAAAABLAoWULg==\n12\n00\ngAR9lC4=\n"]},
            "task_group_id": "0e4dd0e2-8252-4b0d-9e0e-438ec82bcb5f",
            "user_runtime": {"python": {"version_tuple": [3, 11, 7]}},
            "unknown_future_field": 1
        });
        let submit: SubmitRequest = serde_json::from_value(body).unwrap();
        assert!(submit.create_queue);
        assert_eq!(submit.tasks.values().next().unwrap().len(), 1);
        assert!(submit.user_endpoint_config.is_none());
        let bad = json!({"tasks": {"not-a-uuid": ["x"]}});
        assert!(serde_json::from_value::<SubmitRequest>(bad).is_err());
        let bad = json!({"tasks": {"a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": [1]}});
        assert!(serde_json::from_value::<SubmitRequest>(bad).is_err());
    }

    #[test]
    fn a_function_named_twice_in_a_submit_is_refused() {
        let twice = r#"{"tasks": {"A99B0D5B-6A1B-4853-BDD8-3988FA201DD4": ["1"],
                                  "a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["2"]}}"#;
        let error = serde_json::from_str::<SubmitRequest>(twice).unwrap_err();
        assert!(
            error.to_string().contains("appears more than once"),
            "{error}"
        );
        let repeated = r#"{"tasks": {"a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["1"],
                                     "a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["2"]}}"#;
        assert!(serde_json::from_str::<SubmitRequest>(repeated).is_err());
        let two = r#"{"tasks": {"a99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["1"],
                                "b99b0d5b-6a1b-4853-bdd8-3988fa201dd4": ["2", "3"]}}"#;
        let submit: SubmitRequest = serde_json::from_str(two).unwrap();
        assert_eq!(submit.tasks.values().map(Vec::len).sum::<usize>(), 3);
    }

    #[test]
    fn a_pending_task_has_no_result_fields() {
        let pending = TaskStatusResponse {
            task_id: Uuid::nil(),
            status: "waiting-for-ep".into(),
            result: None,
            exception: None,
            completion_t: None,
            details: None,
        };
        assert_eq!(
            serde_json::to_value(&pending).unwrap(),
            json!({"task_id": "00000000-0000-0000-0000-000000000000", "status": "waiting-for-ep"})
        );
    }

    #[test]
    fn source_registrations_default_to_serialized() {
        let f: FunctionRegistrationRequest =
            serde_json::from_value(json!({"function_name": "f", "function_code": "1\nx"})).unwrap();
        assert!(f.serialized && !f.public && f.meta.is_empty());
    }
}
