//! The `error_details.code` values of the failures the engine itself reports, next to
//! the codes a task's own failure carries (`RemoteExecutionError`,
//! `MaxResultSizeExceeded`, as the official worker sends them).

/// The task raised; `data` is its traceback.
pub const REMOTE_EXECUTION_ERROR: &str = "RemoteExecutionError";
/// The task's serialized result was over the 10 MiB limit.
pub const MAX_RESULT_SIZE_EXCEEDED: &str = "MaxResultSizeExceeded";
/// The task ran longer than `GC_TASK_TIMEOUT`; its worker was stopped.
pub const TASK_TIMEOUT: &str = "AppTimeout";
/// The worker (or the whole pool) running the task died, as many times as
/// `max_retries_on_system_failure` allows plus one.
pub const WORKER_LOST: &str = "WorkerLost";
/// No worker could be started to run the task (no Python, no SDK, the wrong Python, a
/// failing `worker_init`).
pub const WORKER_START_FAILED: &str = "WorkerStartFailed";
/// The task's `resource_specification` asks for something this engine cannot give.
pub const INVALID_RESOURCE_SPECIFICATION: &str = "InvalidResourceSpecification";
/// The task buffer is too large to send to a worker pool.
pub const TASK_TOO_LARGE: &str = "TaskTooLarge";
/// The task's `result_serializers` header is not a list of import paths.
pub const INVALID_RESULT_SERIALIZERS: &str = "InvalidResultSerializers";
