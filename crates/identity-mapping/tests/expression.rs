//! Expression documents: matching, interpolation, order, and what a file may not say.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{identity, used};
use gantry_identity_mapping::{DocumentError, IdentityMapper, MappingError};
use gantry_protocol::command::IdentityInfo;
use serde_json::{Value, json};
use uuid::Uuid;

fn expression(mappings: Value) -> Value {
    json!({"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": mappings})
}

fn mapper(documents: Value) -> IdentityMapper {
    IdentityMapper::from_json(&documents.to_string()).unwrap()
}

fn map(mapper: &IdentityMapper, identities: &[IdentityInfo]) -> Option<String> {
    mapper.map(identities, Uuid::nil()).unwrap()
}

/// One rule, as a one-document file.
fn rule(rule: Value) -> IdentityMapper {
    mapper(json!([expression(json!([rule]))]))
}

fn load_error(documents: Value) -> String {
    IdentityMapper::from_json(&documents.to_string())
        .unwrap_err()
        .to_string()
}

#[test]
fn the_spec_example_maps_the_local_part_of_an_example_org_username() {
    let text = r#"[{"DATA_TYPE":"expression_identity_mapping#1.0.0","mappings":[{"source":"{username}","match":"(.*)@example\\.org","output":"{0}","ignore_case":false,"literal":false}]}]"#;
    let mapper = IdentityMapper::from_json(text).unwrap();
    assert_eq!(
        map(&mapper, &[used("alice@example.org")]).as_deref(),
        Some("alice")
    );
    assert_eq!(map(&mapper, &[used("alice@example.com")]), None);
    assert_eq!(map(&mapper, &[]), None);
}

#[test]
fn the_match_must_cover_the_whole_source() {
    let m = rule(json!({"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}));
    assert_eq!(map(&m, &[used("alice@example.org.evil.net")]), None);
    let m = rule(json!({"source": "{username}", "match": "alice", "output": "alice"}));
    assert_eq!(map(&m, &[used("alice2")]), None);
    assert_eq!(map(&m, &[used("xalice")]), None);
    assert_eq!(map(&m, &[used("alice")]).as_deref(), Some("alice"));
    // Every branch of a top-level alternation is anchored too.
    let m = rule(json!({"source": "{username}", "match": "alice|bob", "output": "staff"}));
    assert_eq!(map(&m, &[used("alicex")]), None);
    assert_eq!(map(&m, &[used("xbob")]), None);
    assert_eq!(map(&m, &[used("bob")]).as_deref(), Some("staff"));
}

#[test]
fn ignore_case_matches_regardless_of_case_and_keeps_the_source_case() {
    let strict = json!({"source": "{username}", "match": "(.*)@EXAMPLE\\.org", "output": "{0}"});
    assert_eq!(
        map(&rule(strict.clone()), &[used("Alice@example.ORG")]),
        None
    );
    let mut loose = strict;
    loose["ignore_case"] = json!(true);
    assert_eq!(
        map(&rule(loose), &[used("Alice@example.ORG")]).as_deref(),
        Some("Alice")
    );
}

#[test]
fn literal_matches_take_every_character_literally() {
    let m = rule(json!({
        "source": "{username}", "match": "a.b*(c)|d\\x", "literal": true, "output": "lit"
    }));
    assert_eq!(map(&m, &[used("a.b*(c)|d\\x")]).as_deref(), Some("lit"));
    assert_eq!(map(&m, &[used("aXb*(c)|d\\x")]), None);
    assert_eq!(map(&m, &[used("d\\x")]), None);
}

#[test]
fn the_match_language_is_the_reduced_one() {
    // `+ ^ $ { } [ ]` are literal; `.` `?` `*` `|` `()` are special; `\` escapes.
    let m = rule(json!({"source": "{username}", "match": "a+[b]{1}^$", "output": "x"}));
    assert_eq!(map(&m, &[used("a+[b]{1}^$")]).as_deref(), Some("x"));
    assert_eq!(map(&m, &[used("aab1")]), None);
    let m = rule(json!({"source": "{username}", "match": "a\\.b?c*", "output": "y"}));
    assert_eq!(map(&m, &[used("a.ccc")]).as_deref(), Some("y"));
    assert_eq!(map(&m, &[used("a.b")]).as_deref(), Some("y"));
    assert_eq!(map(&m, &[used("axb")]), None);
}

#[test]
fn groups_and_fields_are_interpolated_in_source_and_output() {
    let m = rule(json!({
        "source": "{organization}/{username}",
        "match": "(.*)/(.*)@(uni|lab)\\.example\\.edu",
        "output": "{2}_{1}_{organization}",
    }));
    let mut alice = used("alice@lab.example.edu");
    alice.organization = Some("physics".into());
    assert_eq!(map(&m, &[alice]).as_deref(), Some("lab_alice_physics"));

    // Matching on the id, as the official documentation's example does.
    let mut bob = used("bob@example.org");
    bob.id = "b34bb069-3b68-4d38-b4e6-bc1e4fc95332".parse().unwrap();
    let m = rule(json!({
        "source": "{id}", "match": "b34bb069-3b68-4d38-b4e6-bc1e4fc95332", "output": "app"
    }));
    assert_eq!(map(&m, &[bob]).as_deref(), Some("app"));
}

#[test]
fn an_escaped_brace_is_text_and_an_inserted_value_is_not_scanned_again() {
    let m = rule(json!({"source": "{username}", "match": "(.*)", "output": "{0}"}));
    assert_eq!(map(&m, &[used("{id}")]).as_deref(), Some("{id}"));
    let m = rule(json!({"source": "\\{username}", "match": "\\\\{username}", "output": "esc"}));
    assert_eq!(map(&m, &[used("alice")]).as_deref(), Some("esc"));
}

#[test]
fn only_used_and_private_identities_count() {
    let m = rule(json!({"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}));
    for status in [None, Some("unused"), Some("closed"), Some("USED")] {
        assert_eq!(
            map(&m, &[identity("alice@example.org", status)]),
            None,
            "{status:?}"
        );
    }
    let private = identity("carol@example.org", Some("private"));
    assert_eq!(map(&m, &[private]).as_deref(), Some("carol"));
    let set = [identity("alice@example.org", None), used("bob@example.org")];
    assert_eq!(map(&m, &set).as_deref(), Some("bob"));
}

#[test]
fn the_first_rule_that_matches_wins_then_the_first_identity() {
    let m = mapper(json!([expression(json!([
        {"source": "{username}", "match": "(.*)@lab\\.org", "output": "{0}"},
        {"source": "{username}", "match": "(.*)@uni\\.org", "output": "{0}"},
    ]))]));
    // Rule order decides before identity order, as in the official endpoint.
    let set = [used("u@uni.org"), used("l@lab.org"), used("l2@lab.org")];
    assert_eq!(map(&m, &set).as_deref(), Some("l"));
}

#[test]
fn the_first_document_that_maps_wins() {
    let m = mapper(json!([
        expression(json!([{"source": "{username}", "match": "nobody", "output": "x"}])),
        expression(json!([{"source": "{username}", "match": "(.*)@b\\.org", "output": "second"}])),
        expression(json!([{"source": "{username}", "match": "(.*)", "output": "third"}])),
    ]));
    assert_eq!(map(&m, &[used("a@b.org")]).as_deref(), Some("second"));
    assert_eq!(map(&m, &[used("a@c.org")]).as_deref(), Some("third"));
    assert_eq!(map(&mapper(json!([])), &[used("a@c.org")]), None);
}

#[test]
fn a_missing_field_fails_the_document_and_the_next_one_is_tried() {
    let needs_email = expression(json!([
        {"source": "{username}", "match": "(.*)", "output": "{0}"},
        {"source": "{email}", "match": "(.*)@example\\.org", "output": "{0}"},
    ]));
    // Like the official endpoint, the document fails as a whole even though its first
    // rule matched, because a rule needed a value the identity lacks.
    let only = mapper(json!([needs_email.clone()]));
    let err = only.map(&[used("alice")], Uuid::nil()).unwrap_err();
    let MappingError::Failed(failures) = &err else {
        panic!("{err}")
    };
    assert_eq!(failures[0].index, 0);
    assert!(
        matches!(&failures[0].error, DocumentError::MissingValue { rule: 1, what, .. } if what == "field \"email\"")
    );
    assert!(err.to_string().contains("email"), "{err}");

    let with_fallback = mapper(json!([
        needs_email,
        expression(json!([{"source": "{username}", "match": "(.*)", "output": "fallback"}])),
    ]));
    assert_eq!(
        map(&with_fallback, &[used("alice")]).as_deref(),
        Some("fallback")
    );
}

#[test]
fn an_optional_group_that_did_not_match_fails_the_document() {
    let m = rule(json!({"source": "{username}", "match": "(a)|(b)", "output": "{1}"}));
    assert_eq!(map(&m, &[used("b")]).as_deref(), Some("b"));
    let err = m.map(&[used("a")], Uuid::nil()).unwrap_err();
    assert!(err.to_string().contains("match group {1}"), "{err}");
}

#[test]
fn unsafe_names_are_refused_but_root_is_returned() {
    let m = rule(json!({"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}));
    assert_eq!(
        map(&m, &[used("root@example.org")]).as_deref(),
        Some("root")
    );
    for hostile in ["../x", "-rf", "a/b", "a b", "", ".."] {
        let err = m
            .map(&[used(&format!("{hostile}@example.org"))], Uuid::nil())
            .unwrap_err();
        let MappingError::UnsafeUsername { index, name, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((*index, name.as_str()), (0, hostile));
    }
    let long = "a".repeat(33);
    let err = m
        .map(&[used(&format!("{long}@example.org"))], Uuid::nil())
        .unwrap_err();
    assert!(err.to_string().contains("longer than 32"), "{err}");
}

#[test]
fn files_that_cannot_work_are_refused_when_loaded_naming_the_document() {
    let ok = expression(json!([{"source": "{username}", "match": "(.*)", "output": "{0}"}]));
    let cases = [
        (json!({"DATA_TYPE": "x"}), "must be a JSON list"),
        (
            json!([ok, {"DATA_TYPE": "magic_identity_mapping#1.0.0"}]),
            "index 1: unknown DATA_TYPE \"magic_identity_mapping#1.0.0\"",
        ),
        (
            json!([{"DATA_TYPE": "expression_identity_mapping#2.0.0", "mappings": []}]),
            "index 0: unknown DATA_TYPE",
        ),
        (json!([{"mappings": []}]), "index 0: missing DATA_TYPE"),
        (
            json!(["text"]),
            "index 0: a mapping document must be a JSON object",
        ),
        (
            json!([{"DATA_TYPE": "expression_identity_mapping#1.0.0"}]),
            "needs \"mappings\"",
        ),
        (
            json!([
                ok,
                ok,
                expression(json!([{"source": "{username}", "match": "(.*"}]))
            ]),
            "index 2: mapping 0: missing field `output`",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "(.*", "output": "x"}])
            )]),
            "index 0: mapping 0: match \"(.*\"",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "\\d+", "output": "x"}])
            )]),
            "\\d is not a valid escape",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "*a", "output": "x"}])
            )]),
            "nothing to repeat",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "a*?", "output": "x"}])
            )]),
            "lazy repetition",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "(a)\\1", "output": "x"}])
            )]),
            "backreferences",
        ),
        (
            json!([expression(
                json!([{"source": "{usrname}", "match": "a", "output": "x"}])
            )]),
            "source: {usrname} is not an identity field",
        ),
        (
            json!([expression(
                json!([{"source": "{0}", "match": "a", "output": "x"}])
            )]),
            "groups exist only in output",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "(a)", "output": "{1}"}])
            )]),
            "output: {1} refers to a match group, but match has 1 group",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "(a)", "literal": true, "output": "{0}"}])
            )]),
            "has 0 group",
        ),
        (
            json!([expression(
                json!([{"source": "{username}", "match": "a", "output": "x", "literal": "yes"}])
            )]),
            "invalid type",
        ),
        (
            json!([{"DATA_TYPE": "external_identity_mapping#1.0.0", "command": []}]),
            "index 0: \"command\" must be a non-empty list",
        ),
        (
            json!([{"DATA_TYPE": "external_identity_mapping#1.0.0"}]),
            "index 0: external_identity_mapping#1.0.0 needs \"command\"",
        ),
        (
            json!([{"DATA_TYPE": "external_identity_mapping#1.0.0", "command": ["/bin/x", null]}]),
            "command item 1 is not a string",
        ),
    ];
    for (documents, expected) in cases {
        let message = load_error(documents.clone());
        assert!(
            message.contains(expected),
            "{documents}\n  gave: {message}\n  wanted: {expected}"
        );
    }
    let not_json = IdentityMapper::from_json("[{").unwrap_err();
    assert!(matches!(not_json, MappingError::Json(_)), "{not_json}");
}
