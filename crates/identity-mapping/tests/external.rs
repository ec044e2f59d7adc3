//! External mapping programs: real scripts, run the way the official endpoint runs them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{external_doc, identity, script, temp_dir, used};
use gantry_identity_mapping::{
    DocumentError, IdentityMapper, MappingError, POSIX_CONNECTOR_ID, STDOUT_LIMIT,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// A program that prints `output` (a JSON document, or anything) and exits with `code`.
fn printing(dir: &Path, output: &str, code: i32) -> IdentityMapper {
    std::fs::write(dir.join("out"), output).unwrap();
    let body = format!(
        "#!/bin/sh\ncat > /dev/null\ncat '{}'\necho 'oops' >&2\nexit {code}\n",
        dir.join("out").display()
    );
    IdentityMapper::from_json(&external_doc(&script(dir, "prog.sh", &body))).unwrap()
}

fn result_for(id: Uuid, output: &str) -> String {
    json!({"DATA_TYPE": "identity_mapping_output#1.0.0", "result": [{"id": id, "output": output}]})
        .to_string()
}

fn failure(err: &MappingError) -> &DocumentError {
    let MappingError::Failed(failures) = err else {
        panic!("not a document failure: {err}")
    };
    &failures[0].error
}

const PYTHON_MAPPER: &str = r#"#!/usr/bin/env python3
# Maps every identity at example.org to its local part, logging what it was given.
import json, sys
log_dir = sys.argv[1]
data = json.load(sys.stdin)
with open(log_dir + "/args.json", "w") as f:
    json.dump(sys.argv[2:], f)
with open(log_dir + "/input.json", "w") as f:
    json.dump(data, f)
assert data["DATA_TYPE"] == "identity_mapping_input#1.0.0"
result = [
    {"id": i["id"], "output": i["username"].split("@")[0]}
    for i in data["identities"]
    if i["username"].endswith("@example.org")
]
print(json.dumps({"DATA_TYPE": "identity_mapping_output#1.0.0", "result": result}))
"#;

#[test]
fn a_program_maps_with_the_official_arguments_and_input() {
    let dir = temp_dir("ext-maps");
    let program = script(&dir, "mapper.py", PYTHON_MAPPER);
    let doc = json!([{
        "DATA_TYPE": "external_identity_mapping#1.0.0",
        "command": [program, dir],
    }]);
    let mapper = IdentityMapper::from_json(&doc.to_string()).unwrap();
    let mep = Uuid::new_v4();
    // Every identity goes to the program, whatever its status.
    let set = [
        identity("x@other.org", None),
        identity("alice@example.org", Some("unused")),
    ];
    assert_eq!(mapper.map(&set, mep).unwrap().as_deref(), Some("alice"));

    let args: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("args.json")).unwrap()).unwrap();
    assert_eq!(
        args,
        ["-c", POSIX_CONNECTOR_ID, "-s", &mep.to_string(), "-a"]
    );
    let input: Value =
        serde_json::from_slice(&std::fs::read(dir.join("input.json")).unwrap()).unwrap();
    assert_eq!(input["DATA_TYPE"], "identity_mapping_input#1.0.0");
    assert_eq!(input["identities"], serde_json::to_value(&set).unwrap());

    assert_eq!(mapper.map(&[used("bob@other.org")], mep).unwrap(), None);
}

#[test]
fn the_first_result_wins_and_empty_output_maps_nothing() {
    let dir = temp_dir("ext-first");
    let (a, b) = (used("a"), used("b"));
    let out = json!({"result": [{"id": b.id, "output": "bee"}, {"id": a.id, "output": "ay"}]});
    let mapper = printing(&dir, &out.to_string(), 0);
    assert_eq!(
        mapper
            .map(&[a.clone(), b.clone()], Uuid::nil())
            .unwrap()
            .as_deref(),
        Some("bee")
    );
    let mapper = printing(&dir, "", 0);
    assert_eq!(
        mapper.map(std::slice::from_ref(&a), Uuid::nil()).unwrap(),
        None
    );
    let mapper = printing(&dir, &json!({"result": []}).to_string(), 0);
    assert_eq!(mapper.map(&[a], Uuid::nil()).unwrap(), None);
}

#[test]
fn a_program_that_exits_non_zero_fails_its_document_only() {
    let dir = temp_dir("ext-exit");
    let alice = used("alice@example.org");
    let program = script(
        &dir,
        "fail.sh",
        "#!/bin/sh\necho 'ldap is down' >&2\nexit 3\n",
    );
    let alone = IdentityMapper::from_json(&external_doc(&program)).unwrap();
    let err = alone
        .map(std::slice::from_ref(&alice), Uuid::nil())
        .unwrap_err();
    assert!(
        matches!(failure(&err), DocumentError::Exit { status, stderr, .. }
        if status.contains('3') && stderr.contains("ldap is down")),
        "{err}"
    );
    assert!(err.to_string().contains("ldap is down"), "{err}");

    // A failing document is skipped, as in the official endpoint, so a later one decides.
    let doc = json!([
        {"DATA_TYPE": "external_identity_mapping#1.0.0", "command": [program]},
        {"DATA_TYPE": "expression_identity_mapping#1.0.0",
         "mappings": [{"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}]},
    ]);
    let with_fallback = IdentityMapper::from_json(&doc.to_string()).unwrap();
    assert_eq!(
        with_fallback.map(&[alice], Uuid::nil()).unwrap().as_deref(),
        Some("alice")
    );
}

#[test]
fn a_program_that_prints_junk_fails_with_what_it_printed() {
    let dir = temp_dir("ext-junk");
    let alice = used("alice");
    for (out, expected) in [
        ("alice\n", "expected value"),
        (
            r#"{"DATA_TYPE": "identity_mapping_input#1.0.0", "result": []}"#,
            "its DATA_TYPE is",
        ),
        (
            r#"{"result": [{"id": "not-a-uuid", "output": "x"}]}"#,
            "UUID",
        ),
        (r#"{"result": [], "extra": 1}"#, "unknown field"),
        (
            r#"{"DATA_TYPE": "identity_mapping_output#1.0.0"}"#,
            "missing field `result`",
        ),
    ] {
        let err = printing(&dir, out, 0)
            .map(std::slice::from_ref(&alice), Uuid::nil())
            .unwrap_err();
        assert!(
            matches!(failure(&err), DocumentError::BadOutput { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(expected), "{out}: {err}");
    }
    let stranger = Uuid::new_v4();
    let err = printing(&dir, &result_for(stranger, "x"), 0)
        .map(&[alice], Uuid::nil())
        .unwrap_err();
    assert!(
        matches!(failure(&err), DocumentError::UnknownId { id, .. } if *id == stranger),
        "{err}"
    );
}

#[test]
fn a_program_that_prints_too_much_is_stopped() {
    let dir = temp_dir("ext-flood");
    let program = script(&dir, "flood.sh", "#!/bin/sh\nexec yes\n");
    let err = IdentityMapper::from_json(&external_doc(&program))
        .unwrap()
        .map(&[used("a")], Uuid::nil())
        .unwrap_err();
    assert!(
        matches!(failure(&err), DocumentError::TooMuchOutput { limit, .. } if *limit == STDOUT_LIMIT),
        "{err}"
    );
}

#[test]
fn a_program_that_does_not_read_its_input_still_counts() {
    let dir = temp_dir("ext-noread");
    let a = used(&"a".repeat(30));
    // Far more input than a pipe holds, and the program never reads it.
    let set: Vec<_> = std::iter::repeat_with(|| a.clone()).take(5000).collect();
    let mapper = printing_without_reading(&dir, &result_for(a.id, "ay"));
    assert_eq!(
        mapper.map(&set, Uuid::nil()).unwrap().as_deref(),
        Some("ay")
    );
}

fn printing_without_reading(dir: &Path, output: &str) -> IdentityMapper {
    std::fs::write(dir.join("out"), output).unwrap();
    let body = format!("#!/bin/sh\nexec cat '{}'\n", dir.join("out").display());
    IdentityMapper::from_json(&external_doc(&script(dir, "noread.sh", &body))).unwrap()
}

fn running(pid: u32) -> bool {
    // A zombie is dead; only a process that can still run counts.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").unwrap().1.starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_program_that_hangs_is_killed_with_what_it_started() {
    let dir = temp_dir("ext-hang");
    let body = format!(
        "#!/bin/sh\necho $$ > '{d}/pid'\nsleep 10 &\necho $! > '{d}/child'\nwait\ntouch '{d}/finished'\n",
        d = dir.display()
    );
    let program = script(&dir, "hang.sh", &body);
    let err = IdentityMapper::from_json(&external_doc(&program))
        .unwrap()
        .map(&[used("a")], Uuid::nil())
        .unwrap_err();
    assert!(
        matches!(failure(&err), DocumentError::TimedOut { seconds: 5, .. }),
        "{err}"
    );
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let child: u32 = std::fs::read_to_string(dir.join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The program was reaped (no zombie left), and the sleep it started was killed.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the program {pid} is still there"
    );
    // SIGKILL to the group is sent before `map` returns, but a grandchild (not ours to
    // wait for) dies when the kernel next schedules it: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while running(child) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!running(child), "the program's child {child} still runs");
    assert!(!dir.join("finished").exists(), "the program ran to its end");
}

#[test]
fn a_program_may_map_to_root_but_not_to_a_path_or_an_option() {
    let dir = temp_dir("ext-names");
    let alice = used("alice");
    let mapper = printing(&dir, &result_for(alice.id, "root"), 0);
    assert_eq!(
        mapper
            .map(std::slice::from_ref(&alice), Uuid::nil())
            .unwrap()
            .as_deref(),
        Some("root")
    );
    for hostile in ["../x", "-rf", "/etc", "a\nb", ""] {
        let err = printing(&dir, &result_for(alice.id, hostile), 0)
            .map(std::slice::from_ref(&alice), Uuid::nil())
            .unwrap_err();
        assert!(
            matches!(&err, MappingError::UnsafeUsername { index: 0, name, .. } if name == hostile),
            "{err}"
        );
    }
}

#[test]
fn a_program_that_cannot_start_fails_naming_it() {
    let dir = temp_dir("ext-missing");
    let missing = dir.join("no-such-program");
    let err = IdentityMapper::from_json(&external_doc(&missing))
        .unwrap()
        .map(&[used("a")], Uuid::nil())
        .unwrap_err();
    assert!(
        matches!(failure(&err), DocumentError::Spawn { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-program"), "{err}");
}
