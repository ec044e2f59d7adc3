//! Rendering from memory: the seed's template, Gantry's limits, and hostile variables.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use gantry_user_config::{
    DEFAULT_SCHEMA, DEFAULT_TEMPLATE, MappedIdentity, RenderError, RenderInputs, TemplateBundle,
    limits, render,
};
use serde_json::{Value, json};

const MAIN: &str = "user_config_template.yaml.j2";

fn identity() -> MappedIdentity {
    MappedIdentity {
        uname: "alice".to_owned(),
        uid: 1234,
        gid: 5678,
        dir: "/home/alice".to_owned(),
        shell: "/bin/bash".to_owned(),
        groups: vec![5678, 27],
    }
}

fn bundle(template: &str) -> TemplateBundle {
    TemplateBundle::from_strings(
        MAIN,
        BTreeMap::from([(MAIN.to_owned(), template.to_owned())]),
    )
}

fn render_with(
    bundle: &TemplateBundle,
    schema: Option<&Value>,
    opts: &Value,
    runtime: &Value,
) -> Result<String, RenderError> {
    render(
        bundle,
        schema,
        &RenderInputs {
            user_opts: opts.as_object().unwrap(),
            user_runtime: runtime,
            parent_config: &json!({"display_name": "MEP"}),
            mapped_identity: &identity(),
        },
    )
}

fn run(template: &str, opts: Value) -> Result<String, RenderError> {
    render_with(&bundle(template), None, &opts, &json!({}))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

fn seed_template() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/seed_user_config_template.yaml.j2"),
    )
    .unwrap()
}

#[test]
fn seed_template_renders_with_account_and_walltime() {
    let text = run(
        &seed_template(),
        json!({"ACCOUNT_ID": "314159265", "walltime": "00:02:00"}),
    )
    .unwrap();
    assert_eq!(
        text,
        "engine:\n  type: GlobusComputeEngine\n  provider:\n    type: SlurmProvider\n    \
         partition: cpu\n    account: \"314159265\"\n    launcher:\n      type: SrunLauncher\n    \
         walltime: \"00:02:00\""
    );
    let config = yaml(&text);
    assert_eq!(config["engine"]["provider"]["account"], "314159265");
    assert_eq!(config["engine"]["provider"]["walltime"], "00:02:00");
}

#[test]
fn seed_template_walltime_defaults_when_omitted() {
    let text = run(&seed_template(), json!({"ACCOUNT_ID": "314159265"})).unwrap();
    assert!(text.ends_with("\n    walltime: 00:30:00"), "{text}");
    assert!(text.contains("    account: \"314159265\"\n"), "{text}");
}

#[test]
fn newline_injection_stays_one_string() {
    let hostile = "x\nengine: evil";
    let text = run(
        "engine:\n  type: GlobusComputeEngine\n  provider:\n    worker_init: {{ x }}\nendpoint_setup: {{ x }}",
        json!({"x": hostile}),
    )
    .unwrap();
    let config = yaml(&text);
    assert_eq!(config["endpoint_setup"], hostile);
    assert_eq!(config["engine"]["provider"]["worker_init"], hostile);
    assert_eq!(config["engine"]["type"], "GlobusComputeEngine");
    assert_eq!(config.as_object().unwrap().len(), 2, "{config}");
}

#[test]
fn quote_injection_stays_one_string() {
    let hostile = "a' : b";
    let text = run(
        "engine:\n  type: GlobusComputeEngine\naccount: {{ x }}\nlist: [{{ x }}]",
        json!({"x": hostile}),
    )
    .unwrap();
    let config = yaml(&text);
    assert_eq!(config["account"], hostile);
    assert_eq!(config["list"], json!([hostile]));
    assert_eq!(config.as_object().unwrap().len(), 3, "{config}");
}

#[test]
fn ten_megabyte_string_is_refused() {
    let error = run("a: {{ x }}", json!({"x": "y".repeat(10 * 1024 * 1024)})).unwrap_err();
    assert!(
        matches!(error, RenderError::VariablesTooLarge { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("65536 bytes allowed"), "{error}");
}

#[test]
fn thousand_deep_nesting_is_refused() {
    let mut value = json!("leaf");
    for _ in 0..1000 {
        value = json!([value]);
    }
    let error = run("a: 1", json!({ "x": value })).unwrap_err();
    assert!(
        matches!(error, RenderError::VariablesTooDeep { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("more than 16 levels"), "{message}");
    assert!(message.contains("/x/0/0"), "{message}");
}

#[test]
fn oversized_runtime_description_is_refused() {
    let runtime = json!({"python": {"version": "3".repeat(100_000)}});
    let error = render_with(&bundle("a: 1"), None, &json!({}), &runtime).unwrap_err();
    assert!(
        matches!(error, RenderError::VariablesTooLarge { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("user_runtime"), "{error}");
}

fn assert_reserved(name: &str) {
    let error = run("a: 1", json!({ name: "x" })).unwrap_err();
    assert!(
        matches!(&error, RenderError::ReservedName { name: n } if n == name),
        "{error}"
    );
    assert!(error.to_string().contains("reserved"), "{error}");
}

#[test]
fn reserved_name_gc_is_refused() {
    assert_reserved("_GC");
}

#[test]
fn reserved_name_parent_config_is_refused() {
    assert_reserved("parent_config");
}

#[test]
fn reserved_name_user_runtime_is_refused() {
    assert_reserved("user_runtime");
}

#[test]
fn reserved_name_mapped_identity_is_refused() {
    assert_reserved("mapped_identity");
}

#[test]
fn endless_loop_stops_on_fuel() {
    let error = run(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}a: 1",
        json!({}),
    )
    .unwrap_err();
    assert!(matches!(error, RenderError::OutOfFuel { .. }), "{error}");
    assert!(error.to_string().contains("work budget"), "{error}");
}

#[test]
fn doubling_a_string_stops_on_fuel() {
    // 40 doublings would be a terabyte; fuel pays for data too.
    let error = run(
        "{% set ns = namespace(v='x') %}{% for i in range(40) %}{% set ns.v = ns.v ~ ns.v %}\
         {% endfor %}a: 1",
        json!({}),
    )
    .unwrap_err();
    assert!(matches!(error, RenderError::OutOfFuel { .. }), "{error}");
}

#[test]
fn output_over_the_limit_is_refused() {
    let line = "x".repeat(200);
    let template = format!("{{% for i in range(10000) %}}{line}\n{{% endfor %}}");
    let error = run(&template, json!({})).unwrap_err();
    assert!(
        matches!(error, RenderError::OutputTooLarge { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&limits::MAX_OUTPUT_BYTES.to_string()),
        "{error}"
    );
}

#[test]
fn undefined_variable_is_named() {
    let error = run(&seed_template(), json!({"walltime": "00:02:00"})).unwrap_err();
    assert!(
        matches!(error, RenderError::UndefinedVariable { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("ACCOUNT_ID"), "{message}");
    assert!(message.contains("user_endpoint_config"), "{message}");
}

#[test]
fn undefined_attribute_is_an_error() {
    let error = run("a: {{ _GC.mapped_identity.local.nope }}", json!({})).unwrap_err();
    assert!(
        matches!(error, RenderError::UndefinedVariable { .. }),
        "{error}"
    );
}

#[test]
fn undefined_in_a_condition_is_an_error() {
    let error = run("a: {% if flag %}1{% endif %}", json!({})).unwrap_err();
    assert!(
        matches!(error, RenderError::UndefinedVariable { .. }),
        "{error}"
    );
}

#[test]
fn template_syntax_error_is_reported() {
    let error = run("a: {% if x %}", json!({"x": 1})).unwrap_err();
    assert!(
        matches!(error, RenderError::TemplateSyntax { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("administrator"), "{error}");
}

#[test]
fn output_that_is_not_a_mapping_is_refused() {
    let error = run("- {{ x }}\n- b", json!({"x": "a"})).unwrap_err();
    assert!(matches!(error, RenderError::NotAMapping { .. }), "{error}");
    assert!(error.to_string().contains("a list"), "{error}");
}

#[test]
fn invalid_yaml_output_quotes_the_yaml_error() {
    let error = run("a: [{{ x }}\nb: 1", json!({"x": "a"})).unwrap_err();
    let RenderError::NotAMapping { detail, excerpt } = &error else {
        panic!("{error}")
    };
    assert!(detail.contains("line"), "{detail}");
    assert!(excerpt.contains("a: [\"a\""), "{excerpt}");
}

#[test]
fn shell_escape_quotes_for_the_shell() {
    let text = run("worker_init: {{ x|shell_escape }}", json!({"x": "a b'c"})).unwrap();
    assert_eq!(yaml(&text)["worker_init"], r#"'a b'"'"'c'"#);
}

#[test]
fn schema_violation_names_the_path_and_rule() {
    let schema = json!({
        "type": "object",
        "properties": {
            "resources": {
                "type": "object",
                "properties": {"nodes": {"type": "integer", "minimum": 1}},
            },
        },
    });
    let opts = json!({"resources": {"nodes": "many"}});
    let error = render_with(&bundle("a: 1"), Some(&schema), &opts, &json!({})).unwrap_err();
    let RenderError::SchemaViolation { violations } = &error else {
        panic!("{error}")
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("'/resources/nodes'"), "{error}");
    assert!(
        violations[0].contains("/properties/resources/properties/nodes/type"),
        "{error}"
    );
    assert!(violations[0].contains("integer"), "{error}");
}

#[test]
fn schema_with_a_remote_ref_is_refused_not_fetched() {
    // TEST-NET-1: nothing answers there, so a fetch would hang rather than succeed.
    let schema = json!({
        "type": "object",
        "properties": {"x": {"$ref": "http://192.0.2.1/schema.json"}},
    });
    let error =
        render_with(&bundle("a: 1"), Some(&schema), &json!({"x": 1}), &json!({})).unwrap_err();
    assert!(matches!(error, RenderError::BadSchema { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("http://192.0.2.1/schema.json"),
        "{message}"
    );
    assert!(message.contains("never fetched"), "{message}");
}

#[test]
fn invalid_schema_is_refused() {
    let schema = json!({"type": "no-such-type"});
    let error = render_with(&bundle("a: 1"), Some(&schema), &json!({}), &json!({})).unwrap_err();
    assert!(matches!(error, RenderError::BadSchema { .. }), "{error}");
}

#[test]
fn missing_main_template_in_a_bundle_is_reported() {
    let bundle = TemplateBundle::from_strings("main.j2", BTreeMap::new());
    let error = render_with(&bundle, None, &json!({}), &json!({})).unwrap_err();
    assert!(
        matches!(error, RenderError::TemplateNotAvailable { .. }),
        "{error}"
    );
}

#[test]
fn include_outside_the_bundle_is_refused_in_memory() {
    let error = run("{% include '../x.j2' %}", json!({})).unwrap_err();
    let RenderError::TemplateNotAvailable { name, reason } = &error else {
        panic!("{error}")
    };
    assert_eq!(name, "../x.j2");
    assert!(reason.contains(".."), "{reason}");
}

#[test]
fn environment_is_under_gc_env() {
    let path = std::env::var("PATH").unwrap();
    let text = run("path: {{ _GC.env.PATH | tojson }}", json!({})).unwrap();
    assert_eq!(yaml(&text)["path"], path.as_str());
}

#[test]
fn identity_is_under_gc_mapped_identity_local() {
    let text = run(
        "u: {{ _GC.mapped_identity.local.uname }}\ng: {{ _GC.mapped_identity.local.groups }}",
        json!({}),
    )
    .unwrap();
    assert_eq!(text, "u: alice\ng: [5678, 27]");
}

#[test]
fn default_template_renders_without_variables() {
    let schema: Value = serde_json::from_str(DEFAULT_SCHEMA).unwrap();
    let text = render_with(
        &bundle(DEFAULT_TEMPLATE),
        Some(&schema),
        &json!({}),
        &json!({}),
    )
    .unwrap();
    let config = yaml(&text);
    assert_eq!(config["engine"]["type"], "GlobusComputeEngine");
    assert_eq!(config["engine"]["provider"]["type"], "LocalProvider");
    assert_eq!(config["idle_heartbeats_soft"], 10);
    assert_eq!(config["idle_heartbeats_hard"], 5760);
    assert!(config["endpoint_setup"].is_null(), "{config}");
}

#[test]
fn default_template_takes_worker_init_and_endpoint_setup() {
    let schema: Value = serde_json::from_str(DEFAULT_SCHEMA).unwrap();
    let opts = json!({"worker_init": "source ~/env/bin/activate\nexport X=1", "endpoint_setup": "echo hi"});
    let text = render_with(&bundle(DEFAULT_TEMPLATE), Some(&schema), &opts, &json!({})).unwrap();
    let config = yaml(&text);
    assert_eq!(
        config["engine"]["provider"]["worker_init"],
        opts["worker_init"]
    );
    assert_eq!(config["endpoint_setup"], "echo hi");
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    for key in keys {
        assert!(
            [
                "engine",
                "idle_heartbeats_soft",
                "idle_heartbeats_hard",
                "heartbeat_period",
                "allowed_functions",
                "endpoint_setup"
            ]
            .contains(&key.as_str()),
            "{key} is not a UEP config key"
        );
    }
}

#[test]
fn default_schema_refuses_unknown_variables() {
    let schema: Value = serde_json::from_str(DEFAULT_SCHEMA).unwrap();
    let opts = json!({"worker_int": "typo"});
    let error =
        render_with(&bundle(DEFAULT_TEMPLATE), Some(&schema), &opts, &json!({})).unwrap_err();
    assert!(
        matches!(error, RenderError::SchemaViolation { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("worker_int"), "{error}");
}
