//! "messagepack proto1": the envelope the endpoints and the service exchange over AMQP.
//!
//! Despite the name there is no MessagePack here. A message is one version byte
//! (`0x01`) followed by compact UTF-8 JSON `{"message_type": T, "data": {...}}`. The
//! reader ignores unknown fields (in the envelope and in `data`) so that either side may
//! grow new optional fields, and reports every malformed, truncated or unknown message
//! as an [`UnpackError`]; nothing here panics on input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The only protocol version there is.
pub const PROTO1_VERSION_BYTE: u8 = 0x01;

/// Why bytes could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Zero bytes: not even a version byte.
    #[error("empty message: no protocol version byte")]
    Empty,
    /// The first byte named a protocol this side does not speak.
    #[error("unsupported messagepack protocol version {0} (only 1 is known)")]
    UnsupportedVersion(u8),
    /// The body after the version byte is not a JSON envelope.
    #[error("message envelope is not valid: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The envelope named a message type this side does not know.
    #[error("unknown message type {0:?}")]
    UnknownMessageType(String),
    /// The envelope was fine but `data` does not fit its message type.
    #[error("{message_type} message has invalid data: {source}")]
    Data {
        /// The type named in the envelope.
        message_type: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The message was valid but not of the type the caller needs.
    #[error("expected a {expected} message, got {found}")]
    WrongType {
        /// The type the caller asked for.
        expected: &'static str,
        /// The type that arrived.
        found: &'static str,
    },
}

/// Where a task is in its life, as the Globus Compute components name the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)] // the names are the protocol's own
pub enum TaskState {
    Received,
    WaitingForEp,
    WaitingForNodes,
    WaitingForLaunch,
    #[serde(rename = "execution-start")]
    ExecStart,
    #[serde(rename = "execution-end")]
    ExecEnd,
    Running,
    Success,
    Failed,
    ResultReceived,
    ResultEnqueued,
    #[serde(rename = "action-provider-received")]
    ApReceived,
    #[serde(rename = "action-provider-task-submitted")]
    ApTaskSubmitted,
    #[serde(rename = "action-provider-task-group-in-progress")]
    ApTaskgroupRunning,
    #[serde(rename = "action-provider-task-group-completed")]
    ApTaskgroupCompleted,
    #[serde(rename = "action-provider-task-group-error")]
    ApTaskgroupError,
}

/// Which component recorded a task transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)] // the names are the protocol's own
pub enum ActorName {
    Worker,
    Manager,
    Interchange,
    Endpoint,
    ResultProcessor,
    WebService,
    ActionProvider,
}

/// `task`: one function call for an endpoint to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task's id, as the SDK knows it.
    pub task_id: Uuid,
    /// Kept for old endpoints; Gantry does not run containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Uuid>,
    /// A container description, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Value>,
    /// `function_code + payload`: three packed buffers (function, args, kwargs).
    pub task_buffer: String,
}

/// Machine-readable reason for a failed task, and the sentence the user sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultErrorDetails {
    /// A short code, e.g. `FUNCTION_NOT_ALLOWED` or `RemoteExecutionError`.
    pub code: String,
    /// What went wrong, for the person who submitted the task.
    pub user_message: String,
}

/// `result`: the outcome of one task; the only message an SDK queue may carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task this is the result of.
    pub task_id: Uuid,
    /// The serialized return value, or the formatted traceback when the task failed.
    pub data: String,
    /// Free-form facts about the run (executor, timings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
    /// Present exactly when the task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ResultErrorDetails>,
    /// The transitions the endpoint recorded for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_statuses: Option<Vec<TaskTransition>>,
}

impl TaskResult {
    /// Whether the task failed.
    pub fn is_error(&self) -> bool {
        self.error_details.is_some()
    }
}

/// `task_transition`: one step in a task's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTransition {
    /// When it happened; the endpoints write nanoseconds since the epoch.
    pub timestamp: i64,
    /// The state entered.
    pub state: TaskState,
    /// Who saw it happen.
    pub actor: ActorName,
}

/// `ep_status_report`: an endpoint's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpStatusReport {
    /// The endpoint reporting.
    pub endpoint_id: Uuid,
    /// Endpoint-wide facts. `heartbeat_period` (seconds) says when to expect the next
    /// report; `0` means the endpoint is shutting down; `error` reports a failed start.
    /// Older senders name this field `ep_status_report`; both names are read.
    #[serde(alias = "ep_status_report")]
    pub global_state: Map<String, Value>,
    /// Transitions of tasks since the last report, by task id.
    #[serde(default)]
    pub task_statuses: BTreeMap<String, Vec<TaskTransition>>,
}

impl EpStatusReport {
    /// The announced heartbeat period in seconds, if the report carries a usable one.
    pub fn heartbeat_period(&self) -> Option<f64> {
        self.global_state
            .get("heartbeat_period")
            .and_then(Value::as_f64)
            .filter(|p| p.is_finite() && *p >= 0.0)
    }

    /// The start failure an endpoint (or the MEP on a UEP's behalf) reports, if any.
    pub fn error(&self) -> Option<&str> {
        self.global_state.get("error").and_then(Value::as_str)
    }
}

/// `manager_status_report`: a worker pool telling its endpoint which tasks started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerStatusReport {
    /// Transitions by task id.
    pub task_statuses: BTreeMap<String, Vec<TaskTransition>>,
}

/// `task_cancel`: a request to drop one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancel {
    /// The task to cancel.
    pub task_id: Uuid,
}

/// Every message type Gantry reads or writes.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // each variant is documented on its payload type
pub enum Message {
    Task(Task),
    Result(TaskResult),
    EpStatusReport(EpStatusReport),
    TaskTransition(TaskTransition),
    ManagerStatusReport(ManagerStatusReport),
    TaskCancel(TaskCancel),
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T: Serialize> {
    message_type: &'static str,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    message_type: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Message {
    /// The `message_type` string of this message.
    pub fn message_type(&self) -> &'static str {
        match self {
            Message::Task(_) => "task",
            Message::Result(_) => "result",
            Message::EpStatusReport(_) => "ep_status_report",
            Message::TaskTransition(_) => "task_transition",
            Message::ManagerStatusReport(_) => "manager_status_report",
            Message::TaskCancel(_) => "task_cancel",
        }
    }

    /// Encodes the message as proto1: the version byte, then compact JSON.
    pub fn pack(&self) -> Vec<u8> {
        fn envelope<T: Serialize>(message_type: &'static str, data: &T) -> Vec<u8> {
            let mut out = vec![PROTO1_VERSION_BYTE];
            // Writing plain data structures into a Vec cannot fail.
            serde_json::to_writer(&mut out, &EnvelopeOut { message_type, data })
                .expect("message types serialize infallibly");
            out
        }
        let kind = self.message_type();
        match self {
            Message::Task(m) => envelope(kind, m),
            Message::Result(m) => envelope(kind, m),
            Message::EpStatusReport(m) => envelope(kind, m),
            Message::TaskTransition(m) => envelope(kind, m),
            Message::ManagerStatusReport(m) => envelope(kind, m),
            Message::TaskCancel(m) => envelope(kind, m),
        }
    }

    /// Decodes a proto1 message; any defect is an error, never a panic.
    pub fn unpack(bytes: &[u8]) -> Result<Message, UnpackError> {
        let (&version, body) = bytes.split_first().ok_or(UnpackError::Empty)?;
        if version != PROTO1_VERSION_BYTE {
            return Err(UnpackError::UnsupportedVersion(version));
        }
        let envelope: EnvelopeIn<'_> =
            serde_json::from_slice(body).map_err(UnpackError::Envelope)?;
        fn data<'a, T: Deserialize<'a>>(
            message_type: &'static str,
            raw: &'a RawValue,
        ) -> Result<T, UnpackError> {
            serde_json::from_str(raw.get()).map_err(|source| UnpackError::Data {
                message_type,
                source,
            })
        }
        let raw = envelope.data;
        Ok(match envelope.message_type.as_str() {
            "task" => Message::Task(data("task", raw)?),
            "result" => Message::Result(data("result", raw)?),
            "ep_status_report" => Message::EpStatusReport(data("ep_status_report", raw)?),
            "task_transition" => Message::TaskTransition(data("task_transition", raw)?),
            "manager_status_report" => {
                Message::ManagerStatusReport(data("manager_status_report", raw)?)
            }
            "task_cancel" => Message::TaskCancel(data("task_cancel", raw)?),
            _ => return Err(UnpackError::UnknownMessageType(envelope.message_type)),
        })
    }

    /// Decodes a message that must be a `result`.
    pub fn unpack_result(bytes: &[u8]) -> Result<TaskResult, UnpackError> {
        match Message::unpack(bytes)? {
            Message::Result(result) => Ok(result),
            other => Err(UnpackError::WrongType {
                expected: "result",
                found: other.message_type(),
            }),
        }
    }
}

impl From<Task> for Message {
    fn from(m: Task) -> Self {
        Message::Task(m)
    }
}

impl From<TaskResult> for Message {
    fn from(m: TaskResult) -> Self {
        Message::Result(m)
    }
}

impl From<EpStatusReport> for Message {
    fn from(m: EpStatusReport) -> Self {
        Message::EpStatusReport(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task_id() -> Uuid {
        Uuid::parse_str("359e2ec3-caef-4258-a149-a67767af0ee8").unwrap()
    }

    #[test]
    fn a_task_packs_as_version_byte_and_compact_json() {
        let message = Message::Task(Task {
            task_id: task_id(),
            container_id: None,
            container: None,
            task_buffer: "3\nabc".into(),
        });
        let bytes = message.pack();
        assert_eq!(bytes[0], 1);
        assert_eq!(
            std::str::from_utf8(&bytes[1..]).unwrap(),
            r#"{"message_type":"task","data":{"task_id":"359e2ec3-caef-4258-a149-a67767af0ee8","task_buffer":"3\nabc"}}"#
        );
        assert_eq!(Message::unpack(&bytes).unwrap(), message);
    }

    #[test]
    fn unknown_fields_are_ignored_and_aliases_read() {
        let body = json!({
            "message_type": "ep_status_report",
            "extra_envelope_field": 1,
            "data": {
                "endpoint_id": task_id(),
                "ep_status_report": {"heartbeat_period": 30, "active": true},
                "task_statuses": {},
                "future_field": [1, 2],
            }
        });
        let mut bytes = vec![1];
        bytes.extend(body.to_string().into_bytes());
        let Message::EpStatusReport(report) = Message::unpack(&bytes).unwrap() else {
            panic!("wrong type");
        };
        assert_eq!(report.heartbeat_period(), Some(30.0));
        assert_eq!(report.error(), None);
        assert!(
            String::from_utf8(Message::from(report).pack())
                .unwrap()
                .contains("\"global_state\"")
        );
    }

    #[test]
    fn defects_are_errors() {
        assert!(matches!(Message::unpack(b""), Err(UnpackError::Empty)));
        assert!(matches!(
            Message::unpack(b"\x02{}"),
            Err(UnpackError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Message::unpack(b"\x01{\"message_type\":\"task\""),
            Err(UnpackError::Envelope(_))
        ));
        assert!(matches!(
            Message::unpack(br#"{"message_type":"task","data":{}}"#),
            Err(UnpackError::UnsupportedVersion(b'{'))
        ));
        assert!(matches!(
            Message::unpack(b"\x01{\"message_type\":\"nope\",\"data\":{}}"),
            Err(UnpackError::UnknownMessageType(t)) if t == "nope"
        ));
        assert!(matches!(
            Message::unpack(
                b"\x01{\"message_type\":\"result\",\"data\":{\"task_id\":\"x\",\"data\":\"\"}}"
            ),
            Err(UnpackError::Data {
                message_type: "result",
                ..
            })
        ));
        assert!(matches!(
            Message::unpack(b"\x01{\"message_type\":\"result\",\"data\":[]}"),
            Err(UnpackError::Data { .. })
        ));
        let task = Message::Task(Task {
            task_id: task_id(),
            container_id: None,
            container: None,
            task_buffer: String::new(),
        });
        assert!(matches!(
            Message::unpack_result(&task.pack()),
            Err(UnpackError::WrongType {
                expected: "result",
                found: "task"
            })
        ));
    }
}
