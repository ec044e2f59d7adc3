//! Cross-implementation tests: the real `globus-compute-common`, `globus-compute-sdk` and
//! `globus-compute-endpoint` (in the test venv) make messages and packed payloads; this
//! side decodes them, checks every field against what Python decoded, re-encodes them,
//! and Python checks that it reads Rust's bytes back equal to its own.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gantry_protocol::messagepack::Message;
use gantry_protocol::packed::{Strategy, pack_buffers, unpack_buffers};
use gantry_protocol::uep_id::{derive_uep_id, python_major_minor};
use serde_json::{Value, json};
use uuid::Uuid;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/wire_cases.py")
}

fn generated_cases() -> Value {
    let output = gantry_testkit::run_python(&script(), &["generate"], b"");
    serde_json::from_slice(&output.stdout).expect("the generator prints JSON")
}

/// Python's `model_dump` writes absent optional fields as `null`; Rust leaves them out.
fn without_top_level_nulls(value: &Value) -> Value {
    let mut map = value
        .as_object()
        .expect("message data is an object")
        .clone();
    map.retain(|_, v| !v.is_null());
    Value::Object(map)
}

fn message_data(message: &Message) -> Value {
    match message {
        Message::Task(m) => serde_json::to_value(m),
        Message::Result(m) => serde_json::to_value(m),
        Message::EpStatusReport(m) => serde_json::to_value(m),
        Message::TaskTransition(m) => serde_json::to_value(m),
        Message::ManagerStatusReport(m) => serde_json::to_value(m),
        Message::TaskCancel(m) => serde_json::to_value(m),
    }
    .expect("serializable")
}

#[test]
fn python_and_rust_read_each_others_wire_formats() {
    let cases = generated_cases();
    let mut to_verify = json!({"messages": [], "packed": []});

    let messages = cases["messages"].as_array().expect("messages");
    assert!(messages.len() >= 10, "the generator made too few messages");
    for case in messages {
        let name = case["name"].as_str().expect("name");
        let original = B64
            .decode(case["bytes_b64"].as_str().expect("bytes"))
            .expect("base64");
        let decoded = Message::unpack(&original)
            .unwrap_or_else(|e| panic!("{name}: Rust cannot read Python's message: {e}"));
        assert_eq!(
            decoded.message_type(),
            case["message_type"],
            "{name}: message type"
        );
        assert_eq!(
            message_data(&decoded),
            without_top_level_nulls(&case["data"]),
            "{name}: Rust decoded different field values than Python"
        );
        let repacked = decoded.pack();
        assert_eq!(
            Message::unpack(&repacked).expect("own output reads back"),
            decoded,
            "{name}: Rust round trip"
        );
        to_verify["messages"]
            .as_array_mut()
            .expect("array")
            .push(json!({
                "name": name,
                "original_b64": case["bytes_b64"],
                "rust_b64": B64.encode(&repacked),
            }));
    }

    for case in cases["packed"].as_array().expect("packed") {
        let name = case["name"].as_str().expect("name");
        let original = case["packed"].as_str().expect("packed text");
        let buffers = unpack_buffers(original)
            .unwrap_or_else(|e| panic!("{name}: Rust cannot unpack Python's buffers: {e}"));
        let python_buffers: Vec<&str> = case["buffers"]
            .as_array()
            .expect("buffers")
            .iter()
            .map(|b| b.as_str().expect("buffer text"))
            .collect();
        assert_eq!(buffers, python_buffers, "{name}: buffers differ");
        let strategies: Vec<Value> = buffers
            .iter()
            .map(|b| Strategy::of_serialized(b).map_or(Value::Null, |s| json!(s.identifier())))
            .collect();
        assert_eq!(
            Value::from(strategies),
            case["strategies"],
            "{name}: strategies"
        );
        let repacked = pack_buffers(&buffers);
        assert_eq!(
            repacked, original,
            "{name}: Rust packs differently from the SDK"
        );
        to_verify["packed"]
            .as_array_mut()
            .expect("array")
            .push(json!({
                "name": name, "original": original, "rust": repacked,
            }));
    }

    let request = serde_json::to_vec(&to_verify).expect("json");
    let output = gantry_testkit::run_python(&script(), &["verify"], &request);
    let report: Value = serde_json::from_slice(&output.stdout).expect("verify prints JSON");
    assert_eq!(
        report["failures"],
        json!([]),
        "Python could not read Rust's encodings back"
    );
    let expected = to_verify["messages"].as_array().map_or(0, Vec::len)
        + to_verify["packed"].as_array().map_or(0, Vec::len);
    assert_eq!(
        report["checked"],
        json!(expected),
        "Python checked every case"
    );
}

#[test]
fn uep_ids_match_an_independent_python_implementation_of_the_layout() {
    let cases = generated_cases();
    let uep_cases = cases["uep_ids"].as_array().expect("uep ids");
    assert!(uep_cases.len() >= 12);
    for case in uep_cases {
        let uuid = |key: &str| Uuid::parse_str(case[key].as_str().expect(key)).expect("uuid");
        let derived = derive_uep_id(
            uuid("mep_id"),
            uuid("identity_id"),
            case["config"].as_object().expect("config object"),
            case["python"].as_str().expect("python"),
        );
        assert_eq!(derived, uuid("uep_id"), "case {case}");
    }
    assert_eq!(
        python_major_minor(&cases["user_runtime"]),
        cases["python_major_minor"].as_str().map(str::to_owned),
        "the SDK's real user_runtime names the Python it runs on"
    );
}
