//! The `engine` section of a UEP's configuration, in the vocabulary Globus Compute
//! administrators already write (Parsl-style `type:` keys).
//!
//! The UEP parses its YAML elsewhere and hands this module the `engine` value. Keys that
//! Globus Compute accepts but that mean nothing for Gantry's pools (ports, encryption,
//! interchange tuning) are accepted and logged as ignored, so an existing configuration
//! starts; unknown keys and types are refused with an error that names the valid ones,
//! because that error is what the scientist sees when the endpoint fails to start. As in
//! Globus Compute, a key whose value is `null` counts as absent.
//!
//! Defaults follow globus-compute-endpoint 4.19 and Parsl: `LocalProvider` has
//! `init_blocks: 1`, `min_blocks: 0`, `max_blocks: 1`; `job_status_kwargs` has
//! `max_idletime: 120`, `strategy: simple`, `strategy_period: 5`;
//! `max_retries_on_system_failure` is 0; `max_workers_per_node` is as many workers as
//! the node has cores (divided by `cores_per_worker`, and by `mem_per_worker` if given).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// What is wrong with an `engine` section, said for the person who wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The section is not a mapping with a `type:` string.
    #[error("{section} must be a mapping with a `type:` key (one of: {valid}); found {found}")]
    NotTyped {
        /// Where, e.g. `engine.provider`.
        section: String,
        /// What was there instead.
        found: String,
        /// The types that would do.
        valid: String,
    },
    /// A `type:` this engine does not know.
    #[error("{section}: unknown type {found:?}; valid types are: {valid}")]
    UnknownType {
        /// Where.
        section: String,
        /// The type given.
        found: String,
        /// The types that would do.
        valid: String,
    },
    /// A key the given type does not take (often a typo).
    #[error("{section}: unknown key {key:?} for {kind}; valid keys are: {valid}")]
    UnknownKey {
        /// Where.
        section: String,
        /// The key given.
        key: String,
        /// The type it was given for.
        kind: String,
        /// The keys that type takes.
        valid: String,
    },
    /// A known key with a value that cannot be used.
    #[error("{section}.{key}: {problem}")]
    InvalidValue {
        /// Where.
        section: String,
        /// The key.
        key: String,
        /// What is wrong and what would do.
        problem: String,
    },
}

/// How Python workers are run, for every engine type.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// The Python to run workers with (Gantry's `worker_python` key); `None` means
    /// `python3` as found on `PATH` after `worker_init`.
    pub worker_python: Option<String>,
    /// Where tasks run (`working_dir`); relative paths are under the UEP's run
    /// directory. Globus Compute's default is `tasks_working_dir`.
    pub working_dir: PathBuf,
    /// Whether each task runs in its own directory `<working_dir>/<task id>`
    /// (`run_in_sandbox`), named to it in `GC_TASK_SANDBOX_DIR`.
    pub run_in_sandbox: bool,
    /// Deserializers tasks may use (`allowed_serializers`), as import paths such as
    /// `globus_compute_sdk.serialize.DillCodeSource`; empty means any.
    pub allowed_serializers: Vec<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            worker_python: None,
            working_dir: PathBuf::from("tasks_working_dir"),
            run_in_sandbox: false,
            allowed_serializers: Vec::new(),
        }
    }
}

/// How many workers a `GlobusComputeEngine` pool runs on its node (Parsl's rules).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLayout {
    /// At most this many workers (`max_workers_per_node`); `None` means no cap.
    pub max_workers_per_node: Option<usize>,
    /// Cores each worker counts for (`cores_per_worker`, default 1).
    pub cores_per_worker: f64,
    /// GiB of memory each worker counts for (`mem_per_worker`), if given.
    pub mem_per_worker: Option<f64>,
    /// Accelerators to share out, one per worker (`available_accelerators`); when
    /// given, there are at most this many workers and each sees only its own through
    /// `CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES` and `ZE_AFFINITY_MASK`.
    pub available_accelerators: Vec<String>,
}

impl Default for NodeLayout {
    fn default() -> Self {
        NodeLayout {
            max_workers_per_node: None,
            cores_per_worker: 1.0,
            mem_per_worker: None,
            available_accelerators: Vec::new(),
        }
    }
}

/// Where a `GlobusComputeEngine` gets its blocks (one pool process each).
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    /// Pools run as child processes of the UEP on the same machine.
    Local(LocalProviderConfig),
}

/// `provider: {type: LocalProvider, ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalProviderConfig {
    /// Blocks started with the engine.
    pub init_blocks: usize,
    /// Blocks kept even when idle.
    pub min_blocks: usize,
    /// Blocks never exceeded.
    pub max_blocks: usize,
    /// A shell snippet run before each pool starts (`/bin/sh`), e.g. to activate a venv.
    pub worker_init: String,
    /// How eagerly to scale out: the fraction of waiting tasks to give a slot of their
    /// own (1 = one slot per task, 0 = only as much as `min_blocks`).
    pub parallelism: f64,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        LocalProviderConfig {
            init_blocks: 1,
            min_blocks: 0,
            max_blocks: 1,
            worker_init: String::new(),
            parallelism: 1.0,
        }
    }
}

/// How blocks follow the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingStrategy {
    /// Parsl's `simple` (and `htex_auto_scale`): add blocks while tasks wait, remove
    /// blocks idle longer than `max_idletime`, within `min_blocks..=max_blocks`.
    Simple,
    /// Parsl's `none`: keep `max(init_blocks, min_blocks)` blocks, replacing any that
    /// die; never scale with the load.
    None,
}

/// `job_status_kwargs` (and the deprecated top-level `strategy`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// The strategy.
    pub strategy: ScalingStrategy,
    /// How long a block may sit idle before it is stopped.
    pub max_idletime: Duration,
    /// How often the strategy looks at the load.
    pub strategy_period: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            strategy: ScalingStrategy::Simple,
            max_idletime: Duration::from_secs(120),
            strategy_period: Duration::from_secs(5),
        }
    }
}

/// A parsed `engine` section.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineConfig {
    /// `ThreadPoolEngine`: one local pool whose single Python worker runs up to
    /// `max_workers` tasks at once in threads. Tasks running at once share that process:
    /// its working directory and environment (`GC_TASK_UUID`) as in Globus Compute, and
    /// a task past `GC_TASK_TIMEOUT` stops the whole worker, losing the others with it.
    ThreadPool {
        /// `label`, for logs.
        label: String,
        /// Threads (default: `min(32, cores + 4)`, as Python's `ThreadPoolExecutor`).
        max_workers: usize,
        /// How workers run.
        worker: WorkerOptions,
    },
    /// `ProcessPoolEngine`: one local pool with `max_workers` Python worker processes.
    ProcessPool {
        /// `label`, for logs.
        label: String,
        /// Worker processes (default: the machine's cores, as `ProcessPoolExecutor`).
        max_workers: usize,
        /// How workers run.
        worker: WorkerOptions,
    },
    /// `GlobusComputeEngine`: blocks of pools from a provider, scaled with the load.
    GlobusCompute {
        /// `label`, for logs.
        label: String,
        /// Where blocks come from.
        provider: ProviderConfig,
        /// Workers per pool.
        layout: NodeLayout,
        /// How often a task whose worker was lost is tried again.
        max_retries_on_system_failure: u32,
        /// How blocks follow the load.
        scaling: ScalingConfig,
        /// How workers run.
        worker: WorkerOptions,
    },
}

const ENGINE_TYPES: &[&str] = &[
    "GlobusComputeEngine",
    "ProcessPoolEngine",
    "ThreadPoolEngine",
];
const PROVIDER_TYPES: &[&str] = &["LocalProvider"];

/// Keys every engine type takes.
const WORKER_KEYS: &[&str] = &[
    "label",
    "working_dir",
    "allowed_serializers",
    "worker_python",
];

/// `GlobusComputeEngine` keys from Parsl's HighThroughputExecutor and Globus Compute
/// that tune machinery Gantry does not have (ZeroMQ ports, encryption, the interchange):
/// taken, logged, and otherwise ignored.
const GCE_IGNORED: &[&str] = &[
    "address",
    "address_probe_timeout",
    "block_error_handler",
    "cpu_affinity",
    "drain_period",
    "encrypted",
    "heartbeat_period",
    "heartbeat_threshold",
    "interchange_launch_cmd",
    "interchange_port_range",
    "launch_cmd",
    "loopback_address",
    "manager_selector",
    "poll_period",
    "prefetch_capacity",
    "remote_monitoring_radio",
    "storage_access",
    "worker_debug",
    "worker_logdir_root",
    "worker_port",
    "worker_port_range",
];

/// `GlobusComputeEngine` keys Gantry acts on.
const GCE_USED: &[&str] = &[
    "provider",
    "max_workers_per_node",
    "cores_per_worker",
    "mem_per_worker",
    "available_accelerators",
    "max_retries_on_system_failure",
    "job_status_kwargs",
    "strategy",
    "run_in_sandbox",
];

/// Keys that ask for something Gantry cannot do yet; ignoring them would run tasks
/// somewhere other than the administrator intended.
const GCE_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "container_type",
        "Gantry does not run workers in containers yet; remove the container_* keys and \
         prepare the environment in the provider's worker_init instead",
    ),
    (
        "container_uri",
        "Gantry does not run workers in containers yet; remove the container_* keys",
    ),
    (
        "container_cmd_options",
        "Gantry does not run workers in containers yet; remove the container_* keys",
    ),
    (
        "executor",
        "a ready-made Parsl executor cannot be given to Gantry; configure the engine's \
         keys instead",
    ),
];

const THREAD_KEYS: &[&str] = &["max_workers"];
const THREAD_IGNORED: &[&str] = &["thread_name_prefix"];
const PROCESS_KEYS: &[&str] = &["max_workers"];
const PROCESS_IGNORED: &[&str] = &["mp_context", "max_tasks_per_child"];

const LOCAL_USED: &[&str] = &[
    "init_blocks",
    "min_blocks",
    "max_blocks",
    "worker_init",
    "parallelism",
    "nodes_per_block",
];
const LOCAL_IGNORED: &[&str] = &["launcher", "cmd_timeout"];

const JOB_STATUS_KEYS: &[&str] = &["max_idletime", "strategy", "strategy_period"];
const STRATEGIES: &[&str] = &["simple", "htex_auto_scale", "none"];

impl EngineConfig {
    /// Parses the `engine` section of a UEP configuration.
    pub fn from_value(engine: &Value) -> Result<EngineConfig, ConfigError> {
        let (kind, map) = typed(engine, "engine", ENGINE_TYPES)?;
        let mut section = Section::new("engine", kind, map);
        let config = match kind {
            "ThreadPoolEngine" => {
                section.allow(THREAD_KEYS);
                section.ignore(THREAD_IGNORED);
                let worker = worker_options(&mut section)?;
                let max_workers = section
                    .count("max_workers", 1)?
                    .unwrap_or_else(|| (cores() + 4).min(32));
                EngineConfig::ThreadPool {
                    label: section.string("label")?.unwrap_or_else(|| kind.to_owned()),
                    max_workers,
                    worker,
                }
            }
            "ProcessPoolEngine" => {
                section.allow(PROCESS_KEYS);
                section.ignore(PROCESS_IGNORED);
                let worker = worker_options(&mut section)?;
                let max_workers = section.count("max_workers", 1)?.unwrap_or_else(cores);
                EngineConfig::ProcessPool {
                    label: section.string("label")?.unwrap_or_else(|| kind.to_owned()),
                    max_workers,
                    worker,
                }
            }
            "GlobusComputeEngine" => globus_compute(&mut section)?,
            other => {
                return Err(ConfigError::UnknownType {
                    section: "engine".into(),
                    found: other.into(),
                    valid: ENGINE_TYPES.join(", "),
                });
            }
        };
        section.finish()?;
        Ok(config)
    }

    /// The engine's `label`.
    pub fn label(&self) -> &str {
        match self {
            EngineConfig::ThreadPool { label, .. }
            | EngineConfig::ProcessPool { label, .. }
            | EngineConfig::GlobusCompute { label, .. } => label,
        }
    }

    /// The engine's worker options.
    pub fn worker(&self) -> &WorkerOptions {
        match self {
            EngineConfig::ThreadPool { worker, .. }
            | EngineConfig::ProcessPool { worker, .. }
            | EngineConfig::GlobusCompute { worker, .. } => worker,
        }
    }

    /// The `type:` this came from.
    pub fn type_name(&self) -> &'static str {
        match self {
            EngineConfig::ThreadPool { .. } => "ThreadPoolEngine",
            EngineConfig::ProcessPool { .. } => "ProcessPoolEngine",
            EngineConfig::GlobusCompute { .. } => "GlobusComputeEngine",
        }
    }
}

fn globus_compute(section: &mut Section) -> Result<EngineConfig, ConfigError> {
    section.allow(GCE_USED);
    section.ignore(GCE_IGNORED);
    for (key, reason) in GCE_UNSUPPORTED {
        if section.present(key) {
            return Err(section.invalid(key, reason));
        }
        section.allow(&[*key]);
    }
    let worker = worker_options(section)?;
    let label = section
        .string("label")?
        .unwrap_or_else(|| "GlobusComputeEngine".to_owned());
    let provider = match section.get("provider") {
        Some(value) => provider(value)?,
        None => ProviderConfig::Local(LocalProviderConfig::default()),
    };
    let layout = NodeLayout {
        max_workers_per_node: section.count("max_workers_per_node", 1)?,
        cores_per_worker: section.positive_number("cores_per_worker")?.unwrap_or(1.0),
        mem_per_worker: section.positive_number("mem_per_worker")?,
        available_accelerators: accelerators(section)?,
    };
    let max_retries_on_system_failure = section
        .count("max_retries_on_system_failure", 0)?
        .unwrap_or(0)
        .try_into()
        .map_err(|_| section.invalid("max_retries_on_system_failure", "is too large"))?;
    let mut scaling = ScalingConfig::default();
    if let Some(strategy) = section.string("strategy")? {
        tracing::warn!(
            "engine.strategy is deprecated in Globus Compute; use job_status_kwargs.strategy"
        );
        scaling.strategy = parse_strategy(&strategy)
            .ok_or_else(|| section.invalid("strategy", &strategy_problem(&strategy)))?;
    }
    if let Some(value) = section.get("job_status_kwargs") {
        job_status(value, &mut scaling)?;
    }
    Ok(EngineConfig::GlobusCompute {
        label,
        provider,
        layout,
        max_retries_on_system_failure,
        scaling,
        worker,
    })
}

fn worker_options(section: &mut Section) -> Result<WorkerOptions, ConfigError> {
    section.allow(WORKER_KEYS);
    let mut options = WorkerOptions::default();
    if let Some(python) = section.string("worker_python")? {
        if python.trim().is_empty() {
            return Err(section.invalid("worker_python", "must name a Python executable"));
        }
        options.worker_python = Some(python);
    }
    if let Some(dir) = section.string("working_dir")? {
        options.working_dir = PathBuf::from(dir);
    }
    if section.kind != "ThreadPoolEngine" && section.kind != "ProcessPoolEngine" {
        options.run_in_sandbox = section.boolean("run_in_sandbox")?.unwrap_or(false);
    }
    if let Some(list) = section.get("allowed_serializers") {
        options.allowed_serializers = string_list(list)
            .ok_or_else(|| section.invalid("allowed_serializers", "must be a list of strings"))?;
    }
    Ok(options)
}

fn accelerators(section: &Section) -> Result<Vec<String>, ConfigError> {
    match section.get("available_accelerators") {
        None => Ok(Vec::new()),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(count) => Ok((0..count).map(|i| i.to_string()).collect()),
            None => Err(section.invalid(
                "available_accelerators",
                "must be a count of accelerators or a list of their names",
            )),
        },
        Some(list) => string_list(list).ok_or_else(|| {
            section.invalid(
                "available_accelerators",
                "must be a count of accelerators or a list of their names",
            )
        }),
    }
}

fn provider(value: &Value) -> Result<ProviderConfig, ConfigError> {
    let (kind, map) = typed(value, "engine.provider", PROVIDER_TYPES)?;
    if kind != "LocalProvider" {
        return Err(ConfigError::UnknownType {
            section: "engine.provider".into(),
            found: kind.into(),
            valid: format!(
                "{} (batch-scheduler providers are not supported by Gantry yet)",
                PROVIDER_TYPES.join(", ")
            ),
        });
    }
    let mut section = Section::new("engine.provider", kind, map);
    section.allow(LOCAL_USED);
    section.ignore(LOCAL_IGNORED);
    let defaults = LocalProviderConfig::default();
    let config = LocalProviderConfig {
        init_blocks: section
            .count("init_blocks", 0)?
            .unwrap_or(defaults.init_blocks),
        min_blocks: section
            .count("min_blocks", 0)?
            .unwrap_or(defaults.min_blocks),
        max_blocks: section
            .count("max_blocks", 1)?
            .unwrap_or(defaults.max_blocks),
        worker_init: section.string("worker_init")?.unwrap_or_default(),
        parallelism: match section.get("parallelism") {
            None => defaults.parallelism,
            Some(v) => match v.as_f64() {
                Some(p) if (0.0..=1.0).contains(&p) => p,
                _ => return Err(section.invalid("parallelism", "must be a number from 0 to 1")),
            },
        },
    };
    if let Some(nodes) = section.count("nodes_per_block", 1)?
        && nodes != 1
    {
        return Err(section.invalid(
            "nodes_per_block",
            "must be 1 for LocalProvider: a local block is one process on this machine",
        ));
    }
    if config.min_blocks > config.max_blocks {
        return Err(section.invalid(
            "min_blocks",
            &format!(
                "is {} but max_blocks is {}; min_blocks cannot exceed max_blocks",
                config.min_blocks, config.max_blocks
            ),
        ));
    }
    if config.init_blocks > config.max_blocks {
        return Err(section.invalid(
            "init_blocks",
            &format!(
                "is {} but max_blocks is {}; init_blocks cannot exceed max_blocks",
                config.init_blocks, config.max_blocks
            ),
        ));
    }
    section.finish()?;
    Ok(ProviderConfig::Local(config))
}

fn job_status(value: &Value, scaling: &mut ScalingConfig) -> Result<(), ConfigError> {
    let Some(map) = value.as_object() else {
        return Err(ConfigError::InvalidValue {
            section: "engine".into(),
            key: "job_status_kwargs".into(),
            problem: format!(
                "must be a mapping with any of the keys {}",
                JOB_STATUS_KEYS.join(", ")
            ),
        });
    };
    let mut section = Section::new("engine.job_status_kwargs", "job_status_kwargs", map);
    section.allow(JOB_STATUS_KEYS);
    if let Some(seconds) = section.seconds("max_idletime")? {
        scaling.max_idletime = seconds;
    }
    if let Some(seconds) = section.seconds("strategy_period")? {
        if seconds.is_zero() {
            return Err(section.invalid("strategy_period", "must be more than 0 seconds"));
        }
        scaling.strategy_period = seconds;
    }
    if let Some(strategy) = section.string("strategy")? {
        scaling.strategy = parse_strategy(&strategy)
            .ok_or_else(|| section.invalid("strategy", &strategy_problem(&strategy)))?;
    }
    section.finish()
}

fn parse_strategy(name: &str) -> Option<ScalingStrategy> {
    match name {
        "simple" | "htex_auto_scale" => Some(ScalingStrategy::Simple),
        "none" => Some(ScalingStrategy::None),
        _ => None,
    }
}

fn strategy_problem(found: &str) -> String {
    format!(
        "unknown strategy {found:?}; valid strategies are: {}",
        STRATEGIES.join(", ")
    )
}

/// The machine's cores, the default size of local pools.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping without a `type:` string".into(),
    }
}

/// The `type:` of a tagged mapping, and the mapping.
fn typed<'a>(
    value: &'a Value,
    section: &str,
    valid: &[&str],
) -> Result<(&'a str, &'a Map<String, Value>), ConfigError> {
    let not_typed = || ConfigError::NotTyped {
        section: section.into(),
        found: describe(value),
        valid: valid.join(", "),
    };
    let map = value.as_object().ok_or_else(not_typed)?;
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(not_typed)?;
    Ok((kind, map))
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// One mapping being read: tracks which keys are known so that the rest can be
/// reported as unknown, naming the valid ones.
struct Section<'a> {
    name: &'static str,
    kind: &'a str,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(name: &'static str, kind: &'a str, map: &'a Map<String, Value>) -> Section<'a> {
        Section {
            name,
            kind,
            map,
            known: vec!["type"],
        }
    }

    fn allow(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    /// Keys that are accepted for compatibility and logged when set.
    fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
        for key in keys {
            if self.present(key) {
                tracing::warn!(
                    section = self.name,
                    kind = self.kind,
                    key,
                    "configuration key has no meaning for Gantry's engine and is ignored"
                );
            }
        }
    }

    /// The value of a key; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn present(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn invalid(&self, key: &str, problem: &str) -> ConfigError {
        ConfigError::InvalidValue {
            section: self.name.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.invalid(key, &format!("must be a string, not {}", describe(other))))
            }
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                key,
                &format!("must be true or false, not {}", describe(other)),
            )),
        }
    }

    /// A whole number of at least `min`; YAML writers sometimes write `4.0`.
    fn count(&self, key: &str, min: usize) -> Result<Option<usize>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let problem = || {
            self.invalid(
                key,
                &format!(
                    "must be a whole number of at least {min}, not {}",
                    describe(value)
                ),
            )
        };
        let n = match value.as_u64() {
            Some(n) => n,
            None => match value.as_f64() {
                Some(f) if f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64 => f as u64,
                _ => return Err(problem()),
            },
        };
        let n = usize::try_from(n).map_err(|_| problem())?;
        if n < min {
            return Err(problem());
        }
        Ok(Some(n))
    }

    fn positive_number(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
                _ => Err(self.invalid(
                    key,
                    &format!("must be a number above 0, not {}", describe(value)),
                )),
            },
        }
    }

    fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.as_f64() {
                Some(f) if f.is_finite() && (0.0..=1e9).contains(&f) => {
                    Ok(Some(Duration::from_secs_f64(f)))
                }
                _ => Err(self.invalid(
                    key,
                    &format!("must be a number of seconds, not {}", describe(value)),
                )),
            },
        }
    }

    /// Refuses any key not declared known.
    fn finish(self) -> Result<(), ConfigError> {
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort();
        for key in keys {
            if !self.known.contains(&key.as_str()) {
                let mut valid = self.known.clone();
                valid.sort_unstable();
                valid.dedup();
                return Err(ConfigError::UnknownKey {
                    section: self.name.into(),
                    key: key.clone(),
                    kind: self.kind.into(),
                    valid: valid.join(", "),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_user_template_parses_with_globus_defaults() {
        let config = EngineConfig::from_value(&json!({
            "type": "GlobusComputeEngine",
            "max_workers_per_node": 1,
            "provider": {"type": "LocalProvider", "min_blocks": 0, "max_blocks": 1,
                         "init_blocks": 1, "worker_init": "true\n"}
        }))
        .unwrap();
        let EngineConfig::GlobusCompute {
            provider: ProviderConfig::Local(local),
            layout,
            max_retries_on_system_failure,
            scaling,
            worker,
            label,
        } = config
        else {
            panic!("not a GlobusComputeEngine: {config:?}")
        };
        assert_eq!(label, "GlobusComputeEngine");
        assert_eq!(layout.max_workers_per_node, Some(1));
        assert_eq!(
            (local.init_blocks, local.min_blocks, local.max_blocks),
            (1, 0, 1)
        );
        assert_eq!(local.worker_init, "true\n");
        assert_eq!(max_retries_on_system_failure, 0);
        assert_eq!(scaling, ScalingConfig::default());
        assert_eq!(scaling.max_idletime, Duration::from_secs(120));
        assert_eq!(worker, WorkerOptions::default());
    }

    #[test]
    fn keys_globus_admins_write_are_accepted_and_ignored() {
        let config = EngineConfig::from_value(&json!({
            "type": "GlobusComputeEngine", "label": "cluster", "encrypted": true,
            "address": {"type": "address_by_hostname"}, "heartbeat_period": 30,
            "heartbeat_threshold": 120, "worker_debug": false, "prefetch_capacity": 0,
            "max_retries_on_system_failure": 2,
            "job_status_kwargs": {"max_idletime": 30.5, "strategy_period": 0.25},
            "provider": {"type": "LocalProvider", "launcher": {"type": "SingleNodeLauncher"},
                         "cmd_timeout": 60, "max_blocks": 4.0, "nodes_per_block": 1},
            "container_uri": null
        }))
        .unwrap();
        let EngineConfig::GlobusCompute {
            label,
            max_retries_on_system_failure,
            scaling,
            provider: ProviderConfig::Local(local),
            ..
        } = config
        else {
            panic!("wrong engine")
        };
        assert_eq!(label, "cluster");
        assert_eq!(max_retries_on_system_failure, 2);
        assert_eq!(scaling.max_idletime, Duration::from_secs_f64(30.5));
        assert_eq!(scaling.strategy_period, Duration::from_millis(250));
        assert_eq!(local.max_blocks, 4);
    }

    #[test]
    fn thread_and_process_pools_take_max_workers_and_worker_python() {
        let threads = EngineConfig::from_value(
            &json!({"type": "ThreadPoolEngine", "max_workers": 3, "worker_python": "/opt/py"}),
        )
        .unwrap();
        assert_eq!(
            threads,
            EngineConfig::ThreadPool {
                label: "ThreadPoolEngine".into(),
                max_workers: 3,
                worker: WorkerOptions {
                    worker_python: Some("/opt/py".into()),
                    ..WorkerOptions::default()
                }
            }
        );
        let processes = EngineConfig::from_value(&json!({"type": "ProcessPoolEngine"})).unwrap();
        assert!(matches!(
            processes,
            EngineConfig::ProcessPool { max_workers, .. } if max_workers == cores()
        ));
    }

    #[test]
    fn an_unknown_type_names_the_valid_ones() {
        let error = EngineConfig::from_value(&json!({"type": "HighThroughputEngine"}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"HighThroughputEngine\""), "{error}");
        assert!(
            error.contains("GlobusComputeEngine, ProcessPoolEngine, ThreadPoolEngine"),
            "{error}"
        );
        let error = EngineConfig::from_value(&json!({"max_workers": 2}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`type:`"), "{error}");
    }

    #[test]
    fn an_unknown_key_names_the_valid_ones() {
        let error = EngineConfig::from_value(&json!({"type": "ThreadPoolEngine", "max_worker": 2}))
            .unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(&error, ConfigError::UnknownKey { key, .. } if key == "max_worker"),
            "{text}"
        );
        assert!(text.contains("max_workers"), "{text}");
        assert!(text.contains("worker_python"), "{text}");
    }

    #[test]
    fn an_unknown_provider_key_or_type_is_refused() {
        let error = EngineConfig::from_value(&json!({
            "type": "GlobusComputeEngine",
            "provider": {"type": "LocalProvider", "max_block": 2}
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("engine.provider"), "{error}");
        assert!(error.contains("\"max_block\""), "{error}");
        assert!(error.contains("max_blocks"), "{error}");
        let error = EngineConfig::from_value(&json!({
            "type": "GlobusComputeEngine",
            "provider": {"type": "SlurmProvider", "partition": "cpu"}
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("SlurmProvider"), "{error}");
        assert!(error.contains("LocalProvider"), "{error}");
    }

    #[test]
    fn bad_values_say_what_would_do() {
        for (engine, needle) in [
            (
                json!({"type": "ThreadPoolEngine", "max_workers": 0}),
                "at least 1",
            ),
            (
                json!({"type": "ThreadPoolEngine", "max_workers": "four"}),
                "whole number",
            ),
            (
                json!({"type": "GlobusComputeEngine",
                       "provider": {"type": "LocalProvider", "min_blocks": 3, "max_blocks": 2}}),
                "cannot exceed max_blocks",
            ),
            (
                json!({"type": "GlobusComputeEngine", "job_status_kwargs": {"strategy": "fast"}}),
                "simple, htex_auto_scale, none",
            ),
            (
                json!({"type": "GlobusComputeEngine", "container_type": "docker"}),
                "containers",
            ),
            (
                json!({"type": "GlobusComputeEngine", "job_status_kwargs": {"max_idle": 3}}),
                "max_idletime",
            ),
        ] {
            let error = EngineConfig::from_value(&engine).unwrap_err().to_string();
            assert!(error.contains(needle), "{engine}: {error}");
        }
    }

    #[test]
    fn accelerators_are_a_count_or_names() {
        let config = EngineConfig::from_value(&json!({
            "type": "GlobusComputeEngine", "available_accelerators": 2
        }))
        .unwrap();
        let EngineConfig::GlobusCompute { layout, .. } = config else {
            panic!("wrong engine")
        };
        assert_eq!(layout.available_accelerators, vec!["0", "1"]);
    }
}
