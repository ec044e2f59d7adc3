//! An endpoint's `config.yaml`, as a Globus Compute admin writes it (SPEC §5), plus
//! Gantry's own `service_url` and `min_uid`. Unknown keys are kept out of the way with
//! a warning rather than refused, so a config written for the official endpoint loads.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use uuid::Uuid;

/// The service a config names when it names none: the SDK's "local" environment.
pub const DEFAULT_SERVICE_URL: &str = "http://localhost:5000";
/// Seconds between heartbeats when the config says nothing.
pub const DEFAULT_HEARTBEAT_PERIOD: f64 = 30.0;
/// The shortest heartbeat period a config may ask for.
pub const MIN_HEARTBEAT_PERIOD: f64 = 5.0;
/// Accounts below this uid never run user endpoints unless the config says otherwise.
pub const DEFAULT_MIN_UID: u32 = 1000;
/// How long after a UEP exits a start command for it still revives it.
pub const DEFAULT_GRACE_PERIOD_S: f64 = 30.0;

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not a mapping.
    #[error("{path} is not a YAML mapping: {reason}")]
    Yaml {
        /// Which file.
        path: PathBuf,
        /// The parser's words.
        reason: String,
    },
    /// A key has a value of the wrong kind.
    #[error("{path}: `{key}` {expected}")]
    Value {
        /// Which file.
        path: PathBuf,
        /// Which key.
        key: String,
        /// What it should be.
        expected: String,
    },
}

/// PAM settings (`pam: {enable, service_name}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PamConfig {
    /// Whether the MEP runs PAM's account and session stacks for each UEP.
    pub enable: bool,
    /// The PAM service name (default `gantry-endpoint`).
    pub service_name: String,
}

/// A loaded `config.yaml`.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// The whole document, for `_GC.parent_config` and for a plain endpoint's engine.
    pub raw: Map<String, Value>,
    /// Whether this is a multi-user endpoint.
    pub multi_user: bool,
    /// A name for people.
    pub display_name: Option<String>,
    /// Where the service is.
    pub service_url: String,
    /// Seconds between heartbeats.
    pub heartbeat_period: f64,
    /// Functions the endpoint (and its UEPs) may run; `None`: any.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// The identity mapping file.
    pub identity_mapping_config_path: Option<PathBuf>,
    /// The user endpoint template.
    pub user_config_template_path: PathBuf,
    /// The JSON schema for users' variables.
    pub user_config_schema_path: Option<PathBuf>,
    /// The environment file for UEPs.
    pub user_environment_path: PathBuf,
    /// The audit log (high assurance).
    pub audit_log_path: Option<PathBuf>,
    /// PAM.
    pub pam: PamConfig,
    /// How long a start command may revive an exiting UEP.
    pub grace_period_s: f64,
    /// High assurance endpoint.
    pub high_assurance: bool,
    /// Whether any user may submit.
    pub public: bool,
    /// Identities that may manage it.
    pub admins: Vec<Uuid>,
    /// Verbose logs.
    pub debug: bool,
    /// The smallest uid a UEP may run as.
    pub min_uid: u32,
}

/// Keys this version knows; anything else gets a warning.
const KNOWN_KEYS: &[&str] = &[
    "display_name",
    "multi_user",
    "service_url",
    "heartbeat_period",
    "allowed_functions",
    "identity_mapping_config_path",
    "user_config_template_path",
    "user_config_schema_path",
    "user_environment_path",
    "audit_log_path",
    "pam",
    "mu_child_ep_grace_period_s",
    "high_assurance",
    "public",
    "admins",
    "debug",
    "min_uid",
    "engine",
    "idle_heartbeats_soft",
    "idle_heartbeats_hard",
    "endpoint_setup",
    "endpoint_teardown",
    // Accepted from official configs; they mean nothing to Gantry.
    "local_compute_services",
    "amqp_port",
    "environment",
    "email",
    "log_dir",
    "stdout",
    "stderr",
    "authentication_policy",
    "subscription_id",
    "force_mu_allow_same_user",
];

/// Reads a YAML document into a JSON mapping (the project's one YAML parser).
pub fn yaml_mapping(path: &Path, text: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigError::Yaml {
            path: path.to_owned(),
            reason: format!("the top level is {}, not a mapping", kind(&other)),
        }),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

struct Reader<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn bad(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::Value {
            path: self.path.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(key, "must be true or false")),
        }
    }

    fn number(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| self.bad(key, "must be a number of seconds, 0 or more")),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "must be a string")),
        }
    }

    /// A path; relative paths are taken from the config's own folder.
    fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                self.path.parent().unwrap_or(Path::new("/")).join(p)
            }
        }))
    }

    fn uuids(&self, key: &str) -> Result<Option<Vec<Uuid>>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be a list of UUIDs")),
            Some(_) => Err(self.bad(key, "must be a list of UUIDs")),
        }
    }
}

impl EndpointConfig {
    /// Loads `config.yaml` from an endpoint's directory.
    pub fn load(path: &Path) -> Result<EndpointConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        EndpointConfig::parse(path, &text)
    }

    /// Parses a config's text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<EndpointConfig, ConfigError> {
        let raw = yaml_mapping(path, text)?;
        for key in raw.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                tracing::warn!(file = %path.display(), key, "unknown key in config.yaml, ignored");
            }
        }
        let r = Reader { path, map: &raw };
        let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
        let heartbeat_period = r.number("heartbeat_period", DEFAULT_HEARTBEAT_PERIOD)?;
        if heartbeat_period < MIN_HEARTBEAT_PERIOD {
            return Err(r.bad("heartbeat_period", "must be at least 5 seconds"));
        }
        let pam = match raw.get("pam") {
            None | Some(Value::Null) => PamConfig::default(),
            Some(Value::Object(pam)) => {
                let p = Reader { path, map: pam };
                PamConfig {
                    enable: p.bool("enable", false)?,
                    service_name: p
                        .string("service_name")?
                        .unwrap_or_else(|| "gantry-endpoint".into()),
                }
            }
            Some(_) => return Err(r.bad("pam", "must be a mapping {enable, service_name}")),
        };
        let min_uid = match raw.get("min_uid") {
            None | Some(Value::Null) => DEFAULT_MIN_UID,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| r.bad("min_uid", "must be a uid of 1 or more"))?,
        };
        let admins = r.uuids("admins")?.unwrap_or_default();
        Ok(EndpointConfig {
            path: path.to_owned(),
            multi_user: r.bool("multi_user", false)?,
            display_name: r.string("display_name")?,
            service_url: r
                .string("service_url")?
                .unwrap_or_else(|| DEFAULT_SERVICE_URL.into()),
            heartbeat_period,
            allowed_functions: r.uuids("allowed_functions")?,
            identity_mapping_config_path: r.path("identity_mapping_config_path")?,
            user_config_template_path: r
                .path("user_config_template_path")?
                .unwrap_or_else(|| dir.join("user_config_template.yaml.j2")),
            // A schema named in config.yaml must exist (a missing one would leave users'
            // variables unchecked); the default one is used when it is there.
            user_config_schema_path: r
                .path("user_config_schema_path")?
                .or_else(|| Some(dir.join("user_config_schema.json")).filter(|p| p.exists())),
            user_environment_path: r
                .path("user_environment_path")?
                .unwrap_or_else(|| dir.join("user_environment.yaml")),
            audit_log_path: r.path("audit_log_path")?,
            pam,
            grace_period_s: r.number("mu_child_ep_grace_period_s", DEFAULT_GRACE_PERIOD_S)?,
            high_assurance: r.bool("high_assurance", false)?,
            public: r.bool("public", false)?,
            admins,
            debug: r.bool("debug", false)?,
            min_uid,
            raw,
        })
    }
}

/// Reads `user_environment.yaml`: a mapping of variable names to scalar values. A
/// missing file is an empty environment.
pub fn load_user_environment(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let map = yaml_mapping(path, &text)?;
    let mut vars = std::collections::BTreeMap::new();
    for (key, value) in map {
        let valid_name = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(ConfigError::Value {
                path: path.to_owned(),
                key,
                expected: "is not a valid environment variable name".into(),
            });
        }
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ConfigError::Value {
                    path: path.to_owned(),
                    key,
                    expected: "must be a string, number or boolean".into(),
                });
            }
        };
        if text.contains('\0') {
            return Err(ConfigError::Value {
                path: path.to_owned(),
                key,
                expected: "must not contain NUL".into(),
            });
        }
        vars.insert(key, text);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_official_multi_user_config_loads_with_defaults() {
        let path = Path::new("/etc/gantry/mep/config.yaml");
        let config = EndpointConfig::parse(
            path,
            "display_name: Site MEP\nmulti_user: true\nlocal_compute_services: true\n\
             identity_mapping_config_path: /etc/gantry/mep/identity_mapping.json\n\
             heartbeat_period: 10\nsomething_new: 1\n",
        )
        .unwrap();
        assert!(config.multi_user);
        assert_eq!(config.service_url, DEFAULT_SERVICE_URL);
        assert_eq!(config.heartbeat_period, 10.0);
        assert_eq!(
            config.user_config_template_path,
            Path::new("/etc/gantry/mep/user_config_template.yaml.j2")
        );
        assert_eq!(config.min_uid, DEFAULT_MIN_UID);
        assert_eq!(config.grace_period_s, DEFAULT_GRACE_PERIOD_S);
    }

    #[test]
    fn bad_values_name_the_key() {
        let path = Path::new("/x/config.yaml");
        let err = EndpointConfig::parse(path, "heartbeat_period: 1\n").unwrap_err();
        assert!(err.to_string().contains("heartbeat_period"), "{err}");
        let err = EndpointConfig::parse(path, "public: maybe\n").unwrap_err();
        assert!(err.to_string().contains("`public`"), "{err}");
        let err = EndpointConfig::parse(path, "- a list\n").unwrap_err();
        assert!(err.to_string().contains("not a mapping"), "{err}");
        let err = EndpointConfig::parse(path, "min_uid: 0\n").unwrap_err();
        assert!(err.to_string().contains("min_uid"), "{err}");
    }

    #[test]
    fn user_environment_is_checked() {
        let dir = std::env::temp_dir().join(format!("gantry-env-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("user_environment.yaml");
        std::fs::write(&file, "PATH: /opt/x/bin:/usr/bin\nOMP_NUM_THREADS: 4\n").unwrap();
        let vars = load_user_environment(&file).unwrap();
        assert_eq!(vars["OMP_NUM_THREADS"], "4");
        std::fs::write(&file, "BAD-NAME: 1\n").unwrap();
        assert!(load_user_environment(&file).is_err());
        assert!(
            load_user_environment(&dir.join("missing.yaml"))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
