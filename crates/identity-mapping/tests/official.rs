//! The same files and identities through the official endpoint's mapper (the real
//! `globus-compute-endpoint` and `globus-identity-mapping` in the test venv) and through
//! this crate: the same user, except where Gantry is stricter on purpose, which each such
//! case states.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{script, temp_dir};
use gantry_identity_mapping::{IdentityMapper, POSIX_CONNECTOR_ID};
use gantry_protocol::command::IdentityInfo;
use serde_json::{Value, json};
use uuid::Uuid;

/// The test venv's Python: `$GANTRY_TEST_VENV`, else the workspace's `.venv`.
fn venv_python() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap();
    let venv = std::env::var_os("GANTRY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the test venv is missing: {} does not exist. Run scripts/test (it creates the venv \
         with globus-compute-endpoint), or point GANTRY_TEST_VENV at one.",
        python.display()
    );
    python
}

fn official_users(cases: &Value) -> Vec<Option<String>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/official_mapper.py");
    let mut child = Command::new(venv_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "official_mapper.py failed: {}",
        output.status
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    results
        .iter()
        .map(|r| r["user"].as_str().map(String::from))
        .collect()
}

fn identity(username: &str, status: Option<&str>) -> Value {
    let id = Uuid::new_v4();
    let mut value = json!({
        "id": id, "sub": id, "username": username, "email": null, "name": "A Person",
        "organization": "Example Lab", "identity_provider": Uuid::new_v4(),
    });
    if let Some(status) = status {
        value["status"] = json!(status);
    }
    value
}

fn used(username: &str) -> Value {
    identity(username, Some("used"))
}

fn rules(rules: Value) -> Value {
    json!({"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": rules})
}

fn by_username(pattern: &str, output: &str) -> Value {
    json!({"source": "{username}", "match": pattern, "output": output})
}

const SAME: bool = false;
const DIFFERS: bool = true;

#[test]
fn gantry_maps_as_the_official_endpoint_does() {
    let dir = temp_dir("official");
    let mep_id = Uuid::new_v4();
    let fixed = Uuid::new_v4();
    // Answers "argsok" only when run with the official endpoint's extra arguments.
    let args_check = script(
        &dir,
        "args.sh",
        &format!(
            "#!/bin/sh\ncat > /dev/null\nif [ \"$1 $2 $3 $4 $5 $6\" = \"x -c {POSIX_CONNECTOR_ID} -s {mep_id} -a\" ]; \
             then out=argsok; else out=argsbad; fi\n\
             printf '{{\"DATA_TYPE\": \"identity_mapping_output#1.0.0\", \"result\": [{{\"id\": \"{fixed}\", \"output\": \"%s\"}}]}}' $out\n"
        ),
    );
    let failing = script(&dir, "fail.sh", "#!/bin/sh\nexit 1\n");
    let mut fixed_identity = used("someone@example.org");
    fixed_identity["id"] = json!(fixed);

    let spec = rules(
        json!([{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}", "ignore_case": false, "literal": false}]),
    );
    // (name, mapping, identities, the user Gantry maps to, whether the official mapper
    // differs on purpose)
    let cases: Vec<(&str, Value, Value, Option<&str>, bool)> = vec![
        (
            "spec example",
            json!([spec]),
            json!([used("alice@example.org")]),
            Some("alice"),
            SAME,
        ),
        (
            "spec example, other domain",
            json!([spec]),
            json!([used("alice@example.com")]),
            None,
            SAME,
        ),
        (
            "partial match",
            json!([spec]),
            json!([used("alice@example.org.evil.net")]),
            None,
            SAME,
        ),
        (
            "status absent",
            json!([spec]),
            json!([identity("alice@example.org", None)]),
            None,
            SAME,
        ),
        (
            "status unused, then private",
            json!([spec]),
            json!([
                identity("a@example.org", Some("unused")),
                identity("p@example.org", Some("private"))
            ]),
            Some("p"),
            SAME,
        ),
        (
            "ignore_case",
            json!([rules(
                json!([{"source": "{username}", "match": "(.*)@EXAMPLE\\.ORG", "output": "{0}", "ignore_case": true}])
            )]),
            json!([used("Alice@Example.org")]),
            Some("Alice"),
            SAME,
        ),
        (
            "case differs",
            json!([rules(json!([by_username("(.*)@EXAMPLE\\.ORG", "{0}")]))]),
            json!([used("alice@example.org")]),
            None,
            SAME,
        ),
        (
            "literal",
            json!([rules(
                json!([{"source": "{username}", "match": "a.b*c|d", "output": "lit", "literal": true}])
            )]),
            json!([used("aXbbc|d"), used("a.b*c|d")]),
            Some("lit"),
            SAME,
        ),
        (
            "plus and brackets are literal",
            json!([rules(json!([by_username("a+b[1]", "plus")]))]),
            json!([used("a+b[1]")]),
            Some("plus"),
            SAME,
        ),
        (
            "groups and fields",
            json!([rules(
                json!([{"source": "{organization}:{username}", "match": "Example (.*):(.*)@(.*)", "output": "{2}-{1}-{0}"}])
            )]),
            json!([used("alice@uni")]),
            Some("uni-alice-Lab"),
            SAME,
        ),
        (
            "rule order before identity order",
            json!([rules(json!([
                by_username("(.*)@lab", "{0}"),
                by_username("(.*)@uni", "{0}")
            ]))]),
            json!([used("u@uni"), used("l@lab")]),
            Some("l"),
            SAME,
        ),
        (
            "document order",
            json!([
                rules(json!([by_username("nobody", "x")])),
                rules(json!([by_username(".*", "second")])),
                rules(json!([by_username(".*", "third")]))
            ]),
            json!([used("a")]),
            Some("second"),
            SAME,
        ),
        (
            "a missing field fails the whole document",
            json!([rules(
                json!([by_username("(.*)", "{0}"), {"source": "{email}", "match": ".*", "output": "e"}])
            )]),
            json!([used("alice")]),
            None,
            SAME,
        ),
        (
            "a failed document falls through",
            json!([
                rules(json!([{"source": "{email}", "match": ".*", "output": "e"}])),
                rules(json!([by_username(".*", "next")]))
            ]),
            json!([used("alice")]),
            Some("next"),
            SAME,
        ),
        (
            "an optional group that did not match",
            json!([rules(json!([by_username("(a)|(b)", "{1}")]))]),
            json!([used("a")]),
            None,
            SAME,
        ),
        (
            "escaped brace",
            json!([rules(
                json!([{"source": "\\{username}", "match": "\\{username}", "literal": true, "output": "esc"}])
            )]),
            json!([used("a")]),
            Some("esc"),
            SAME,
        ),
        (
            "external program gets the official arguments",
            json!([{"DATA_TYPE": "external_identity_mapping#1.0.0", "command": [args_check, "x"]}]),
            json!([fixed_identity]),
            Some("argsok"),
            SAME,
        ),
        (
            "a failing program falls through",
            json!([{"DATA_TYPE": "external_identity_mapping#1.0.0", "command": [failing]}, spec]),
            json!([used("bob@example.org")]),
            Some("bob"),
            SAME,
        ),
        // The official package writes `^alice|bob$`, so only the last branch's end is
        // anchored and `alicex` maps; Gantry anchors each branch.
        (
            "top-level alternation",
            json!([rules(json!([by_username("alice|bob", "staff")]))]),
            json!([used("alicex")]),
            None,
            DIFFERS,
        ),
    ];

    let input: Value = cases
        .iter()
        .map(|(_, mapping, identities, ..)| json!({"mapping": mapping, "identities": identities, "mep_id": mep_id}))
        .collect();
    let official = official_users(&input);
    assert_eq!(official.len(), cases.len());
    for ((name, mapping, identities, expected, differs), official) in cases.iter().zip(official) {
        let mapper = IdentityMapper::from_json(&mapping.to_string()).unwrap();
        let identities: Vec<IdentityInfo> = serde_json::from_value(identities.clone()).unwrap();
        // No name is no name, whether or not a document failed on the way.
        let gantry = mapper.map(&identities, mep_id).ok().flatten();
        assert_eq!(gantry.as_deref(), *expected, "{name}: Gantry");
        if *differs {
            assert_ne!(
                official.as_deref(),
                *expected,
                "{name}: the official mapper no longer differs"
            );
        } else {
            assert_eq!(
                official.as_deref(),
                *expected,
                "{name}: the official mapper"
            );
        }
    }
}
