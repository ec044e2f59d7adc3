//! Property tests: the decoders take arbitrary input without panicking, and what the
//! encoders write always reads back equal.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use gantry_protocol::messagepack::{
    ActorName, EpStatusReport, Message, ResultErrorDetails, Task, TaskResult, TaskState,
    TaskTransition,
};
use gantry_protocol::packed::{
    Strategy as SerializationStrategy, pack_buffers, split_serialized, unpack_buffers,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn transition() -> impl Strategy<Value = TaskTransition> {
    let states = prop_oneof![
        Just(TaskState::Received),
        Just(TaskState::WaitingForEp),
        Just(TaskState::Running),
        Just(TaskState::ExecStart),
        Just(TaskState::Success),
        Just(TaskState::Failed),
    ];
    let actors = prop_oneof![
        Just(ActorName::Worker),
        Just(ActorName::Endpoint),
        Just(ActorName::WebService)
    ];
    (any::<i64>(), states, actors).prop_map(|(timestamp, state, actor)| TaskTransition {
        timestamp,
        state,
        actor,
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    let value = json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(any::<String>(), value, 0..4).prop_map(|m| m.into_iter().collect())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (uuid(), prop::option::of(uuid()), any::<String>()).prop_map(
            |(task_id, container_id, task_buffer)| {
                Message::Task(Task {
                    task_id,
                    container_id,
                    container: None,
                    task_buffer,
                })
            }
        ),
        (
            uuid(),
            any::<String>(),
            prop::option::of(json_object()),
            prop::option::of((any::<String>(), any::<String>())),
            prop::option::of(prop::collection::vec(transition(), 0..3)),
        )
            .prop_map(|(task_id, data, details, error, task_statuses)| {
                Message::Result(TaskResult {
                    task_id,
                    data,
                    details,
                    error_details: error
                        .map(|(code, user_message)| ResultErrorDetails { code, user_message }),
                    task_statuses,
                })
            }),
        (
            uuid(),
            json_object(),
            prop::collection::btree_map(
                any::<String>(),
                prop::collection::vec(transition(), 0..2),
                0..3
            )
        )
            .prop_map(|(endpoint_id, global_state, task_statuses)| {
                Message::EpStatusReport(EpStatusReport {
                    endpoint_id,
                    global_state,
                    task_statuses,
                })
            }),
        transition().prop_map(Message::TaskTransition),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn unpack_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::unpack(&bytes);
    }

    #[test]
    fn unpack_never_panics_on_near_valid_envelopes(
        message_type in prop_oneof![
            Just("task".to_owned()),
            Just("result".to_owned()),
            Just("ep_status_report".to_owned()),
            Just("task_transition".to_owned()),
            any::<String>(),
        ],
        data in json_object(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = vec![1u8];
        bytes.extend(json!({"message_type": message_type, "data": data}).to_string().into_bytes());
        let _ = Message::unpack(&bytes);
        // Every proper prefix of a message is a truncated message, hence an error.
        let at = cut.index(bytes.len());
        prop_assert!(Message::unpack(&bytes[..at]).is_err());
    }

    #[test]
    fn unpack_buffers_never_panics(text in any::<String>()) {
        let _ = unpack_buffers(&text);
        let _ = split_serialized(&text);
        let _ = SerializationStrategy::of_serialized(&text);
    }

    #[test]
    fn unpack_buffers_never_panics_on_length_like_input(
        parts in prop::collection::vec((0usize..40, "[a-zé€\n]{0,30}"), 0..5)
    ) {
        let text: String = parts.iter().map(|(n, s)| format!("{n}\n{s}")).collect();
        let _ = unpack_buffers(&text);
    }

    #[test]
    fn packed_buffers_round_trip(buffers in prop::collection::vec(any::<String>(), 0..6)) {
        let packed = pack_buffers(&buffers);
        prop_assert_eq!(unpack_buffers(&packed).unwrap(), buffers);
    }

    #[test]
    fn messages_round_trip(message in message()) {
        let bytes = message.pack();
        prop_assert_eq!(bytes[0], 1);
        prop_assert_eq!(Message::unpack(&bytes).unwrap(), message);
    }
}
