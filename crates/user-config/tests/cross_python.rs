//! Gantry's renderer against the official one: each test renders the same template with
//! the same variables through `globus_compute_endpoint` 4.19 (its own
//! `render_config_user_template`, from the test venv) and through this crate, and
//! requires the same text, or a failure from both.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_user_config::{MappedIdentity, RenderError, RenderInputs, TemplateBundle, render};
use serde_json::{Value, json};

const MAIN: &str = "user_config_template.yaml.j2";

struct Case {
    files: BTreeMap<String, String>,
    user_opts: Value,
    user_runtime: Value,
    schema: Option<Value>,
}

impl Case {
    fn new(template: &str, user_opts: Value) -> Case {
        Case {
            files: BTreeMap::from([(MAIN.to_owned(), template.to_owned())]),
            user_opts,
            user_runtime: json!({}),
            schema: None,
        }
    }

    fn file(mut self, name: &str, text: &str) -> Case {
        self.files.insert(name.to_owned(), text.to_owned());
        self
    }

    fn runtime(mut self, runtime: Value) -> Case {
        self.user_runtime = runtime;
        self
    }

    fn schema(mut self, schema: Value) -> Case {
        self.schema = Some(schema);
        self
    }
}

fn identity() -> MappedIdentity {
    MappedIdentity {
        uname: "alice".to_owned(),
        uid: 1234,
        gid: 5678,
        dir: "/home/alice".to_owned(),
        shell: "/bin/bash".to_owned(),
        groups: vec![5678, 27, 100],
    }
}

fn parent_config() -> Value {
    json!({"display_name": "Cluster MEP", "heartbeat_period": 30, "public": false})
}

/// The official renderer's answer: the text, or the exception's type name.
fn globus(case: &Case) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/globus_render.py");
    let input = json!({
        "main": MAIN,
        "files": case.files,
        "user_opts": case.user_opts,
        "user_runtime": case.user_runtime,
        "parent_config": parent_config(),
        "schema": case.schema,
        "identity": identity(),
    });
    let out = gantry_testkit::run_python(&script, &[], input.to_string().as_bytes());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    match answer.get("ok") {
        Some(text) => Ok(text.as_str().unwrap().to_owned()),
        None => Err(format!("{}: {}", answer["error"], answer["message"])),
    }
}

fn gantry(case: &Case) -> Result<String, RenderError> {
    let bundle = TemplateBundle::from_strings(MAIN, case.files.clone());
    render(
        &bundle,
        case.schema.as_ref(),
        &RenderInputs {
            user_opts: case.user_opts.as_object().unwrap(),
            user_runtime: &case.user_runtime,
            parent_config: &parent_config(),
            mapped_identity: &identity(),
        },
    )
}

/// Both render, to the same text; returns it.
fn same(case: &Case) -> String {
    let official = globus(case).unwrap_or_else(|e| panic!("Globus Compute failed: {e}"));
    let ours = gantry(case).unwrap_or_else(|e| panic!("Gantry failed: {e}"));
    assert_eq!(
        ours, official,
        "Gantry's text (left) differs from Globus Compute's (right)"
    );
    ours
}

/// Both refuse; returns Gantry's error.
fn both_fail(case: &Case) -> RenderError {
    let official = globus(case);
    assert!(official.is_err(), "Globus Compute rendered {official:?}");
    gantry(case).expect_err("Gantry rendered what Globus Compute refuses")
}

/// The design's example template (`examples/user_config_template.yaml.j2` of the seed),
/// kept verbatim as a fixture.
fn seed_template() -> String {
    fixture("seed_user_config_template.yaml.j2")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// A file of the installed `globus_compute_endpoint` package.
fn globus_package_file(relative: &str) -> PathBuf {
    let lib = gantry_testkit::venv_dir().join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python3")
        })
        .unwrap_or_else(|| panic!("no python3.* under {}", lib.display()));
    python
        .join("site-packages/globus_compute_endpoint")
        .join(relative)
}

#[test]
fn seed_template_with_both_variables() {
    let text = same(&Case::new(
        &seed_template(),
        json!({"ACCOUNT_ID": "314159265", "walltime": "00:02:00"}),
    ));
    assert!(text.contains("account: \"314159265\""), "{text}");
}

#[test]
fn seed_template_with_walltime_left_to_its_default() {
    let text = same(&Case::new(
        &seed_template(),
        json!({"ACCOUNT_ID": "314159265"}),
    ));
    assert!(text.contains("walltime: 00:30:00"), "{text}");
}

#[test]
fn quickstart_template_and_schema() {
    let folder = gantry_testkit::workspace_root().join("examples/quickstart");
    let template = std::fs::read_to_string(folder.join("user_config_template.yaml.j2")).unwrap();
    let schema: Value =
        serde_json::from_slice(&std::fs::read(folder.join("user_config_schema.json")).unwrap())
            .unwrap();
    same(&Case::new(&template, json!({"ACCOUNT_ID": "314159265"})).schema(schema));
}

#[test]
fn quoted_comparison_sees_the_quotes() {
    let template = "a: {% if x == '\"test\"' %}quoted{% else %}bare{% endif %}\n\
                    b: {{ x|length }}\nc: {{ x[1:-1] }}\nd: {{ n is none }}";
    let text = same(&Case::new(template, json!({"x": "test", "n": null})));
    assert!(
        text.starts_with("a: quoted\nb: 6\nc: test\nd: False"),
        "{text}"
    );
}

#[test]
fn lists_dicts_numbers_booleans_and_null_print_as_python() {
    let template = "l: {{ l }}\nd: {{ d }}\ni: {{ i }}\nf: {{ f }}\nbig: {{ big }}\n\
                    small: {{ small }}\nt: {{ t }}\nfl: {{ fl }}\nn: {{ n }}\n\
                    item: {{ l[0] }}\nkey: {{ d['k\"ey'] }}\nnested: {{ d.n.z }}\n\
                    tl: {{ none }}\ns: {{ t|string }}";
    let opts = json!({
        "l": ["a", 1, true, null, 1.5, {"x": "y"}],
        // Keys in sorted order: serde_json's map (without `preserve_order`) sorts them,
        // Python keeps the order they were sent in.
        "d": {"it's": "v", "k\"ey": "v", "n": {"z": "q"}},
        "i": -42, "f": 1.0, "big": 1e20, "small": 3e-7, "t": true, "fl": false, "n": null,
    });
    same(&Case::new(template, opts));
}

#[test]
fn tojson_matches_jinja2() {
    same(&Case::new(
        "a: {{ x|tojson }}\nb: {{ d|tojson }}\nc: {{ d|tojson(indent=2) }}\n\
         e: {{ 1.0|tojson }} {{ none|tojson }} {{ t|tojson }}",
        json!({"x": "a<b'&>é", "d": {"a": {"q": true}, "z": [1, 2.5, null]}, "t": false}),
    ));
}

#[test]
fn expressions_and_filters_print_as_python() {
    same(&Case::new(
        "x: {{ [1,2]|join(',') }} {{ [true, none]|join(',') }} {{ 'a' ~ 1.0 ~ true ~ none }} \
         {{ '%s %s'|format(true, 1e20) }} {{ 3/2 }} {{ 4/2 }} {{ 7//2 }} {{ 2**10 }} \
         {{ 10 % 3 }} {{ '5'|int + 1 }} {{ 2.0|round }} {{ 2.567|round(2) }} \
         {{ [3,1,2]|sort }} {{ range(3)|list }} {{ x|items|list }} {{ x|dictsort }}",
        json!({"x": {"a": 1}}),
    ));
}

#[test]
fn non_ascii_and_control_characters_are_escaped_as_python_does() {
    same(&Case::new(
        "a: {{ a }}\nb: {{ b }}",
        json!({"a": "é😀\u{7f}\u{1}\t\\", "b": ["ü\u{2028}"]}),
    ));
}

#[test]
fn injection_attempts_render_identically() {
    same(&Case::new(
        "a: {{ a }}\nb: {{ b }}\nc: {{ c }}\nd: {{ d }}",
        json!({"a": "x\nengine: evil", "b": "a' : b", "c": "\"}}{{", "d": "{% raw %}"}),
    ));
}

#[test]
fn shell_escape_filter_matches() {
    same(&Case::new(
        "a: {{ a|shell_escape }}\nb: {{ b|shell_escape }}\nc: {{ c|shell_escape }}\n\
         d: {{ d|shell_escape }}\ne: {{ e|shell_escape }}\nf: {{ '\"x y\"'|shell_escape }}",
        json!({"a": "a b'c", "b": "plain/safe-1.0", "c": "123", "d": 7, "e": ""}),
    ));
}

#[test]
fn shell_escape_of_a_template_literal_fails_in_both() {
    let error = both_fail(&Case::new("a: {{ 'abc'|shell_escape }}", json!({})));
    assert!(error.to_string().contains("shell_escape"), "{error}");
}

#[test]
fn gc_namespace_holds_identity_runtime_and_parent_config() {
    let template = "uname: {{ _GC.mapped_identity.local.uname }}\n\
                    uid: {{ _GC.mapped_identity.local.uid }}\n\
                    gid: {{ _GC.mapped_identity.local.gid }}\n\
                    dir: {{ _GC.mapped_identity.local.dir }}\n\
                    shell: {{ _GC.mapped_identity.local.shell }}\n\
                    groups: {{ _GC.mapped_identity.local.groups }}\n\
                    py: {{ _GC.user_runtime.python.version }}\n\
                    tuple: {{ _GC.user_runtime.python.version_tuple | join('.') }}\n\
                    sdk: {{ _GC.user_runtime.globus_compute_sdk_version[1:-1] }}\n\
                    name: {{ _GC.parent_config.display_name }}\n\
                    hb: {{ _GC.parent_config.heartbeat_period }}";
    let runtime = json!({
        "globus_compute_sdk_version": "4.19.0",
        "python": {"version": "3.11.7", "version_tuple": [3, 11, 7]},
    });
    same(&Case::new(template, json!({})).runtime(runtime));
}

#[test]
fn deprecated_top_level_aliases_still_work() {
    same(
        &Case::new(
            "u: {{ mapped_identity.local.uname }}\nr: {{ user_runtime.python_version }}\n\
             p: {{ parent_config.display_name }}\nt: {% if user_runtime %}yes{% endif %}",
            json!({}),
        )
        .runtime(json!({"python_version": "3.11"})),
    );
}

#[test]
fn defaults_and_definedness() {
    same(&Case::new(
        "a: {{ a|default('fallback') }}\nb: {{ b|default('fallback') }}\n\
         c: {{ 'set' if c is defined else 'unset' }}\nd: {{ d|default() }}",
        json!({"b": "given"}),
    ));
}

#[test]
fn python_methods_in_templates() {
    same(&Case::new(
        "a: {{ a.upper() }}\nb: {{ d.get('k') }}\nc: {{ d.items()|list|length }}\n\
         e: {{ a.startswith('\"x') }}\nf: {{ a.replace('x', 'y') }}",
        json!({"a": "xy", "d": {"k": "v"}}),
    ));
}

#[test]
fn include_import_and_extends_of_sibling_files() {
    let case = Case::new(
        "{% extends 'base.j2' %}{% block body %}{% import 'macros.j2' as m %}\
         {{ m.pair('k', x) }}\n{% include 'part.j2' %}{% endblock %}",
        json!({"x": "value"}),
    )
    .file(
        "base.j2",
        "top: 1\n{% block body %}{% endblock %}\nbottom: 2\n",
    )
    .file(
        "macros.j2",
        "{% macro pair(k, v) %}{{ k }}: {{ v }}{% endmacro %}",
    )
    .file("part.j2", "part: {{ x }}\n");
    same(&case);
}

#[test]
fn undefined_variable_fails_in_both() {
    let error = both_fail(&Case::new("a: {{ ACCOUNT_ID }}", json!({})));
    assert!(
        matches!(error, RenderError::UndefinedVariable { .. }),
        "{error}"
    );
}

#[test]
fn reserved_name_fails_in_both() {
    let error = both_fail(&Case::new("a: 1", json!({"user_runtime": "x"})));
    assert!(matches!(error, RenderError::ReservedName { .. }), "{error}");
}

#[test]
fn schema_violation_fails_in_both() {
    let schema = json!({
        "type": "object",
        "properties": {"walltime": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}:[0-9]{2}$"}},
    });
    let error = both_fail(&Case::new("a: 1", json!({"walltime": "soon"})).schema(schema));
    assert!(
        matches!(error, RenderError::SchemaViolation { .. }),
        "{error}"
    );
}

#[test]
fn schema_sees_the_values_before_quoting() {
    let schema = json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 3}},
    });
    same(&Case::new("n: {{ n }}\ns: {{ s }}", json!({"n": 3, "s": "abc"})).schema(schema));
}

#[test]
fn globus_default_template_renders_the_same() {
    let template = std::fs::read_to_string(globus_package_file(
        "endpoint/config/user_config_template.yaml.j2",
    ))
    .unwrap();
    let runtime = json!({
        "globus_compute_sdk_version": "4.19.0",
        "globus_sdk_version": "3.60.0",
        "python_version": "3.11.7",
        "python": {"version": "3.11.7", "version_tuple": [3, 11, 7], "implementation": "CPython"},
    });
    same(
        &Case::new(
            &template,
            json!({"worker_init": "module load gcc", "requirements": "numpy\nscipy==1.13", "endpoint_setup": "echo hi"}),
        )
        .runtime(runtime),
    );
}

#[test]
fn gantry_default_template_renders_the_same() {
    same(&Case::new(
        gantry_user_config::DEFAULT_TEMPLATE,
        json!({"worker_init": "source ~/env/bin/activate", "endpoint_setup": "echo 'ready'"}),
    ));
}
