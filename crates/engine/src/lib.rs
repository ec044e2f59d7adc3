//! The user endpoint's (UEP's) engine: where its tasks run.
//!
//! One design serves every engine type and provider. A **block** is one worker-pool
//! process (`gantry-pool`, see [`pool_main`]) that connects back to its UEP over TCP,
//! proves it holds the UEP's secret (HMAC-SHA256 challenge-response, both ways; see the
//! `auth` module), and runs Python workers — Gantry's own `gantry_worker.py`, shipped
//! inside this crate, which needs nothing in the user's environment but
//! `globus-compute-sdk`. A **provider** ([`Provider`]) only launches, cancels and watches
//! blocks: [`LocalProvider`] runs them as child processes today, and a batch-scheduler
//! provider will run the very same pool command inside jobs.
//!
//! The engine types are the ones Globus Compute administrators know (see [`config`]):
//! `ThreadPoolEngine` (one pool, one worker running tasks in threads),
//! `ProcessPoolEngine` (one pool of worker processes) and `GlobusComputeEngine` (blocks
//! from a provider, scaled with the load, with retries of tasks whose worker was lost).
//!
//! The UEP drives any engine through an [`EngineHandle`]:
//!
//! ```no_run
//! # async fn demo(run_dir: std::path::PathBuf, uep_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
//! use gantry_engine::{EngineConfig, EngineEnv, EngineEvent, EngineTask, start_engine};
//!
//! let config = EngineConfig::from_value(&serde_json::json!({
//!     "type": "GlobusComputeEngine",
//!     "max_workers_per_node": 2,
//!     "provider": {"type": "LocalProvider", "max_blocks": 4, "worker_init": "source ~/venv/bin/activate"},
//! }))?;
//! let env = EngineEnv {
//!     run_dir,
//!     pool_program: "/usr/libexec/gantry/gantry-pool".into(),
//!     expected_python: Some("3.11".into()),
//!     uep_id,
//! };
//! let mut engine = start_engine(&config, env).await?;
//! # let (task_id, task_buffer) = (uuid::Uuid::new_v4(), String::new());
//! engine.submit(EngineTask {
//!     task_id,
//!     task_buffer,
//!     resource_specification: None,
//!     result_serializers: None,
//! })?;
//! while let Some(event) = engine.next_event().await {
//!     if let EngineEvent::Finished(result) = event {
//!         println!("{} finished: error {:?}", result.task_id, result.error);
//!         break;
//!     }
//! }
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every pool and worker dies with its UEP: pools exit when their connection closes (and
//! locally also get the parent-death signal), workers when their pool's pipe closes (and
//! get the parent-death signal too); each block and each worker has its own process
//! group, so stopping one reaches everything it started.

mod auth;
pub mod codes;
pub mod config;
mod handle;
pub mod limits;
mod pool;
pub mod provider;
mod scaling;
mod uep;
mod wire;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{ConfigError, EngineConfig};
pub use handle::{
    EngineError, EngineEvent, EngineHandle, EngineResult, EngineSide, EngineStatus, EngineTask,
};
pub use pool::{PoolArgs, pool_main};
pub use provider::{LocalProvider, Provider};
use uuid::Uuid;

use crate::config::{ProviderConfig, ScalingStrategy};
use crate::pool::sizing::{Node, slots};
use crate::scaling::Policy;
use crate::uep::engine::{Engine, Settings};
use crate::uep::listener::Identity;
use crate::wire::{PoolConfig, WorkerLayout};

/// What the UEP tells its engine about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEnv {
    /// The UEP's private directory (mode 0700). The engine keeps its secret, its pools'
    /// logs (`engine/blocks/block-N.log`) and the worker script under `engine/`, and runs
    /// tasks in `tasks_working_dir/` (or the configured `working_dir`).
    pub run_dir: PathBuf,
    /// The `gantry-pool` program (installed next to `gantry-endpoint`).
    pub pool_program: PathBuf,
    /// The submitters' Python `major.minor` (e.g. `"3.11"`); workers with another
    /// Python fail their tasks with a message saying so.
    pub expected_python: Option<String>,
    /// The UEP's id; pools prove they belong to it.
    pub uep_id: Uuid,
}

/// The Python workers run with unless `worker_python` says otherwise: whatever `python3`
/// is on `PATH` once `worker_init` has run.
pub const DEFAULT_WORKER_PYTHON: &str = "python3";

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io { what, path, source }
}

fn check_pool_program(path: &Path) -> Result<(), EngineError> {
    let usable =
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if usable {
        Ok(())
    } else {
        Err(EngineError::PoolProgramMissing {
            path: path.to_path_buf(),
        })
    }
}

/// Makes `engine/` (0700) with a fresh `blocks/` for this run's pool logs, keeping the
/// previous run's as `blocks.previous/` for whoever investigates why it stopped.
fn prepare_dirs(run_dir: &Path) -> Result<(PathBuf, PathBuf), EngineError> {
    let engine_dir = run_dir.join("engine");
    std::fs::create_dir_all(&engine_dir).map_err(io_error("the engine directory", &engine_dir))?;
    std::fs::set_permissions(&engine_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("the engine directory", &engine_dir))?;
    let logs = engine_dir.join("blocks");
    let previous = engine_dir.join("blocks.previous");
    if logs.exists() {
        let _ = std::fs::remove_dir_all(&previous);
        std::fs::rename(&logs, &previous).map_err(io_error("the pool logs", &logs))?;
    }
    std::fs::create_dir_all(&logs).map_err(io_error("the pool logs", &logs))?;
    Ok((engine_dir, logs))
}

/// Starts a pooled engine for `config` and returns its handle. The first blocks are
/// launched at once; tasks can be submitted straight away and wait for them.
pub async fn start_engine(
    config: &EngineConfig,
    env: EngineEnv,
) -> Result<EngineHandle, EngineError> {
    check_pool_program(&env.pool_program)?;
    let (engine_dir, logs_dir) = prepare_dirs(&env.run_dir)?;
    let secret_file = engine_dir.join("pool-secret");
    let secret =
        auth::Secret::create(&secret_file).map_err(io_error("the pool secret", &secret_file))?;
    // Local pools only: a batch-scheduler provider will listen where compute nodes can
    // reach (the `address` key).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(io_error("the pool listener", Path::new("127.0.0.1")))?;
    let address = listener
        .local_addr()
        .map_err(io_error("the pool listener", Path::new("127.0.0.1")))?;

    let worker = config.worker();
    let working_dir = env.run_dir.join(&worker.working_dir);
    let fixed = |slots: usize| Policy {
        strategy: ScalingStrategy::None,
        init_blocks: 1,
        min_blocks: 1,
        max_blocks: 1,
        parallelism: 1.0,
        max_idletime: std::time::Duration::MAX,
        slots_per_block: slots,
    };
    let (layout, policy, strategy_period, max_retries, worker_init, takes_priority) = match config {
        EngineConfig::ThreadPool { max_workers, .. } => (
            WorkerLayout::Threads {
                threads: *max_workers,
            },
            fixed(*max_workers),
            limits::PROVIDER_POLL,
            0,
            String::new(),
            false,
        ),
        EngineConfig::ProcessPool { max_workers, .. } => (
            WorkerLayout::Processes {
                processes: *max_workers,
            },
            fixed(*max_workers),
            limits::PROVIDER_POLL,
            0,
            String::new(),
            false,
        ),
        EngineConfig::GlobusCompute {
            provider: ProviderConfig::Local(local),
            layout,
            max_retries_on_system_failure,
            scaling,
            ..
        } => {
            let layout = WorkerLayout::PerNode {
                max_workers: layout.max_workers_per_node,
                cores_per_worker: layout.cores_per_worker,
                mem_per_worker: layout.mem_per_worker,
                accelerators: layout.available_accelerators.clone(),
            };
            // Local blocks run on this machine, so their size is known here.
            let per_block = slots(&layout, Node::detect()).max(1);
            let policy = Policy {
                strategy: scaling.strategy,
                init_blocks: local.init_blocks,
                min_blocks: local.min_blocks,
                max_blocks: local.max_blocks,
                parallelism: local.parallelism,
                max_idletime: scaling.max_idletime,
                slots_per_block: per_block,
            };
            (
                layout,
                policy,
                scaling.strategy_period,
                *max_retries_on_system_failure,
                local.worker_init.clone(),
                true,
            )
        }
    };
    let settings = Settings {
        label: config.label().to_owned(),
        engine_type: config.type_name(),
        uep_id: env.uep_id,
        pool_config: PoolConfig {
            layout,
            worker_python: worker
                .worker_python
                .clone()
                .unwrap_or_else(|| DEFAULT_WORKER_PYTHON.to_owned()),
            expected_python: env.expected_python.clone(),
            working_dir,
            run_in_sandbox: worker.run_in_sandbox,
            allowed_serializers: worker.allowed_serializers.clone(),
            result_size_limit: limits::RESULT_SIZE_LIMIT,
        },
        policy,
        strategy_period,
        max_retries,
        takes_priority,
        pool_program: env.pool_program.clone(),
        worker_init,
        address: address.to_string(),
        secret_file,
        pool_dir: engine_dir,
        logs_dir,
    };
    tracing::info!(
        label = settings.label,
        engine = settings.engine_type,
        %address,
        "engine starting"
    );
    let identity = Arc::new(Identity {
        uep_id: env.uep_id,
        secret,
    });
    let (handle, side) = EngineHandle::channel();
    let engine = Engine::new(settings, LocalProvider::new());
    let task = tokio::spawn(uep::engine::run(engine, side, listener, identity));
    Ok(handle.with_task(task).with_pool_address(address))
}
