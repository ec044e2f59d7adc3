//! Functions, task groups, tasks and their results.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::endpoints::{ensure_uep_in, lock_open_endpoint};
use crate::limits::{SubmitLimits, check_submit};
use crate::{Store, StoreError, StoreResult, now_ms, parse_json, parse_uuid};

/// A function as a user registers it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFunction {
    /// Its new id.
    pub function_id: Uuid,
    /// Who registered it.
    pub owner_identity_id: Uuid,
    /// `function_name`.
    pub function_name: String,
    /// `function_code`: the packed, serialized function (never decoded here).
    pub function_code: String,
    /// Optional description.
    pub description: Option<String>,
    /// Whether other users may run it.
    pub public: bool,
    /// Optional group id.
    pub group_id: Option<String>,
    /// The SDK's `meta` document.
    pub meta: Map<String, Value>,
}

/// A stored function.
pub type FunctionRecord = NewFunction;

/// Where a task is; the four states the SDK shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Queued for an endpoint that has not taken it yet.
    WaitingForEp,
    /// An endpoint reported it running.
    Running,
    /// Finished with a result.
    Success,
    /// Finished with an error.
    Failed,
}

impl TaskStatus {
    /// The protocol's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::WaitingForEp => "waiting-for-ep",
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> StoreResult<TaskStatus> {
        Ok(match text {
            "waiting-for-ep" => TaskStatus::WaitingForEp,
            "running" => TaskStatus::Running,
            "success" => TaskStatus::Success,
            "failed" => TaskStatus::Failed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown task status {other:?}"
                )));
            }
        })
    }

    /// Whether the task is finished.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Failed)
    }
}

/// One task of a submit, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Its new id.
    pub task_id: Uuid,
    /// The function it calls.
    pub function_id: Uuid,
    /// Its payload: the packed args and kwargs. The endpoint receives the function's
    /// code followed by this; the code is stored once, with the function.
    pub payload: String,
}

/// A submit, checked and routed, as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubmit<'a> {
    /// Who submits.
    pub owner: Uuid,
    /// The task group the tasks join (made when new).
    pub task_group_id: Uuid,
    /// Where the tasks run (a UEP or a plain endpoint).
    pub endpoint_id: Uuid,
    /// The endpoint the user named (the MEP, for a UEP's tasks).
    pub submitted_endpoint_id: Uuid,
    /// The tasks, in submit order.
    pub tasks: &'a [NewTask],
    /// `resource_specification` of the submit.
    pub resource_specification: Option<&'a Value>,
    /// `result_serializers` of the submit.
    pub result_serializers: Option<&'a Value>,
    /// Whether this submit made the task group's result queue (`create_queue`): from
    /// then on the group's results, earlier tasks' included, are forwarded there.
    pub result_queue: bool,
    /// For a submit to a multi-user endpoint: the user endpoint `endpoint_id` is, made
    /// from this binding in the same transaction as the tasks if it is new (within
    /// [`SubmitLimits::max_user_endpoint_configs`]), so that a submit refused by any
    /// limit leaves no user endpoint behind.
    pub uep: Option<&'a crate::UepBinding>,
}

/// A submit after it was stored: what the service answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmittedBatch {
    /// This submit's id.
    pub request_id: Uuid,
    /// The task group the tasks joined.
    pub task_group_id: Uuid,
    /// Whether the task group was made by this submit.
    pub task_group_created: bool,
    /// The user endpoint the tasks went to ([`NewSubmit::uep`]), as committed.
    pub uep: Option<crate::EndpointRecord>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Its id.
    pub task_id: Uuid,
    /// Its task group.
    pub task_group_id: Uuid,
    /// The function it calls.
    pub function_id: Uuid,
    /// Who submitted it.
    pub owner_identity_id: Uuid,
    /// Where it runs (a UEP or a plain endpoint).
    pub endpoint_id: Uuid,
    /// The endpoint the user named (the MEP, for a UEP's task).
    pub submitted_endpoint_id: Uuid,
    /// Its state.
    pub status: TaskStatus,
    /// The task message's buffer, while it is not yet confirmed on the broker: the
    /// payload alone when [`TaskRecord::buffer_is_payload`] (the function's code goes
    /// before it), else the whole buffer (tasks stored by earlier versions).
    pub task_buffer: Option<String>,
    /// Whether `task_buffer` holds only the payload.
    pub buffer_is_payload: bool,
    /// `resource_specification` of the submit.
    pub resource_specification: Option<Value>,
    /// `result_serializers` of the submit.
    pub result_serializers: Option<Value>,
    /// The result, when it succeeded.
    pub result: Option<String>,
    /// The error text (a traceback), when it failed.
    pub exception: Option<String>,
    /// The failure's code and user message, when it failed.
    pub error_code: Option<String>,
    /// The endpoint's details about the run.
    pub details: Option<Value>,
    /// The transitions the endpoint recorded.
    pub task_statuses: Option<Value>,
    /// When it was submitted (ms).
    pub created_at: i64,
    /// When its result arrived (ms).
    pub completed_at: Option<i64>,
    /// Whether its task group has a result queue, so its result is forwarded there.
    pub result_queue: bool,
}

/// A finished task's outcome as it arrives from an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// The serialized value, or the traceback of a failure.
    pub data: String,
    /// `Some((code, user_message))` for a failure.
    pub error: Option<(String, String)>,
    /// The endpoint's details.
    pub details: Option<Map<String, Value>>,
    /// The endpoint's transitions, as JSON.
    pub task_statuses: Option<Value>,
}

fn task_from_row(row: &AnyRow) -> StoreResult<TaskRecord> {
    let uuid = |column: &str| -> StoreResult<Uuid> {
        parse_uuid(&row.try_get::<String, _>(column)?, column)
    };
    Ok(TaskRecord {
        task_id: uuid("task_id")?,
        task_group_id: uuid("task_group_id")?,
        function_id: uuid("function_id")?,
        owner_identity_id: uuid("owner_identity_id")?,
        endpoint_id: uuid("endpoint_id")?,
        submitted_endpoint_id: uuid("submitted_endpoint_id")?,
        status: TaskStatus::parse(&row.try_get::<String, _>("status")?)?,
        task_buffer: row.try_get("task_buffer")?,
        buffer_is_payload: row.try_get::<i64, _>("buffer_is_payload")? != 0,
        resource_specification: parse_json(
            row.try_get("resource_specification")?,
            "resource specification",
        )?,
        result_serializers: parse_json(row.try_get("result_serializers")?, "result serializers")?,
        result: row.try_get("result")?,
        exception: row.try_get("exception")?,
        error_code: row.try_get("error_code")?,
        details: parse_json(row.try_get("details")?, "details")?,
        task_statuses: parse_json(row.try_get("task_statuses")?, "task statuses")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        result_queue: row.try_get::<i64, _>("result_queue")? != 0,
    })
}

fn function_from_row(row: &AnyRow) -> StoreResult<FunctionRecord> {
    let meta = match parse_json(Some(row.try_get("meta")?), "function meta")? {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(FunctionRecord {
        function_id: parse_uuid(&row.try_get::<String, _>("function_id")?, "function id")?,
        owner_identity_id: parse_uuid(&row.try_get::<String, _>("owner_identity_id")?, "owner")?,
        function_name: row.try_get("function_name")?,
        function_code: row.try_get("function_code")?,
        description: row.try_get("description")?,
        public: row.try_get::<i64, _>("public")? != 0,
        group_id: row.try_get("group_id")?,
        meta,
    })
}

/// Rows per multi-row INSERT: well under SQLite's and PostgreSQL's parameter limits.
const INSERT_CHUNK: usize = 200;

impl Store {
    /// Stores a newly registered function.
    pub async fn insert_function(&self, function: &NewFunction) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO functions (function_id, owner_identity_id, function_name, \
               function_code, description, public, group_id, meta, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(function.function_id.to_string())
        .bind(function.owner_identity_id.to_string())
        .bind(&function.function_name)
        .bind(&function.function_code)
        .bind(&function.description)
        .bind(i64::from(function.public))
        .bind(&function.group_id)
        .bind(Value::Object(function.meta.clone()).to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The code of a function, deleted or not: what the outbox puts before the payload of
    /// a task submitted before its function was deleted.
    pub async fn function_code(&self, function_id: Uuid) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT function_code FROM functions WHERE function_id = $1")
                .bind(function_id.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Looks a function up (a deleted one is gone).
    pub async fn function(&self, function_id: Uuid) -> StoreResult<Option<FunctionRecord>> {
        sqlx::query("SELECT * FROM functions WHERE function_id = $1 AND deleted_at IS NULL")
            .bind(function_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(function_from_row)
            .transpose()
    }

    /// Deletes a function of `owner`; returns false when `owner` has no such function.
    /// Its row stays for the tasks that name it, but it cannot be read or run again.
    pub async fn delete_function(&self, function_id: Uuid, owner: Uuid) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE functions SET deleted_at = $1 \
             WHERE function_id = $2 AND owner_identity_id = $3 AND deleted_at IS NULL",
        )
        .bind(now_ms())
        .bind(function_id.to_string())
        .bind(owner.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The owner of a task group, if it exists.
    pub async fn task_group_owner(&self, task_group_id: Uuid) -> StoreResult<Option<Uuid>> {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT owner_identity_id FROM task_groups WHERE task_group_id = $1",
        )
        .bind(task_group_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        owner
            .map(|o| parse_uuid(&o, "task group owner"))
            .transpose()
    }

    /// Stores a submit in one transaction: the task group (made when new) and every
    /// task with its message, all `waiting-for-ep`. The caller then puts the messages
    /// on the broker and calls [`Store::mark_enqueued`]; until then the messages stay
    /// here, so a crash in between loses nothing ([`Store::unsent_tasks`]).
    pub async fn insert_submit(&self, submit: &NewSubmit<'_>) -> StoreResult<SubmittedBatch> {
        self.insert_submit_within(submit, &SubmitLimits::NONE).await
    }

    /// [`Store::insert_submit`], refused with [`StoreError::LimitReached`] (and nothing
    /// written) when it would pass the submitter's `limits`, and with
    /// [`StoreError::EndpointLocked`] when the endpoint it names, or the one it goes to,
    /// is locked. The checks run in the same transaction, after the endpoint's row
    /// (shared) and then the submitter's are locked, so concurrent submits of one user
    /// cannot pass a limit together, and a revocation that locks the endpoint either
    /// comes before (the submit is refused) or after (it fails these tasks too). A submit that asks
    /// for a result queue records when (`queue_declared_at`): the group counts as live
    /// while the queue may exist. The caller declares that queue, and sets up a new
    /// user endpoint's broker account and queue, only once this has committed.
    pub async fn insert_submit_within(
        &self,
        submit: &NewSubmit<'_>,
        limits: &SubmitLimits,
    ) -> StoreResult<SubmittedBatch> {
        let NewSubmit {
            owner,
            task_group_id,
            endpoint_id,
            submitted_endpoint_id,
            tasks,
            resource_specification,
            result_serializers,
            result_queue,
            uep,
        } = *submit;
        let request_id = Uuid::new_v4();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let counts_configs = uep.is_some() && limits.max_user_endpoint_configs.is_some();
        // SQLite's `BEGIN IMMEDIATE` already lets one writer in at a time; PostgreSQL
        // needs the user's row taken so that one user's counts and writes take turns
        // (taken with the endpoint's, in one statement).
        let user_lock = (limits.any() || counts_configs).then_some(owner);
        lock_open_endpoint(&mut tx, submitted_endpoint_id, self.is_sqlite, user_lock).await?;
        let uep = match uep {
            Some(binding) => Some(
                ensure_uep_in(
                    &mut tx,
                    endpoint_id,
                    binding,
                    limits.max_user_endpoint_configs,
                )
                .await?,
            ),
            None => None,
        };
        if endpoint_id != submitted_endpoint_id {
            lock_open_endpoint(&mut tx, endpoint_id, self.is_sqlite, None).await?;
        }
        if limits.any() {
            let submitted = u64::try_from(tasks.len()).unwrap_or(u64::MAX);
            check_submit(&mut tx, owner, task_group_id, submitted, limits, now).await?;
        }
        let declared_at = result_queue.then_some(now);
        let created = sqlx::query(
            "INSERT INTO task_groups (task_group_id, owner_identity_id, created_at, result_queue, \
               queue_declared_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (task_group_id) DO NOTHING",
        )
        .bind(task_group_id.to_string())
        .bind(owner.to_string())
        .bind(now)
        .bind(i64::from(result_queue))
        .bind(declared_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        // Whether the group has a result queue once this submit is in: the tasks'
        // results are forwarded there.
        let mut group_has_queue = result_queue;
        if !created {
            let (existing, had_queue): (String, i64) = sqlx::query_as(
                "SELECT owner_identity_id, result_queue FROM task_groups WHERE task_group_id = $1",
            )
            .bind(task_group_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            if existing != owner.to_string() {
                return Err(StoreError::NotFound(format!(
                    "task group {task_group_id} not found"
                )));
            }
            if result_queue {
                sqlx::query(
                    "UPDATE task_groups SET queue_declared_at = $1 WHERE task_group_id = $2",
                )
                .bind(now)
                .bind(task_group_id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            if result_queue && had_queue == 0 {
                // The group has a queue now: the results of its earlier tasks go there too.
                sqlx::query("UPDATE task_groups SET result_queue = 1 WHERE task_group_id = $1")
                    .bind(task_group_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE tasks SET result_queue = 1 WHERE task_group_id = $1")
                    .bind(task_group_id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            group_has_queue |= had_queue != 0;
        }
        let spec = resource_specification.map(Value::to_string);
        let serializers = result_serializers.map(Value::to_string);
        let queue_flag = i64::from(group_has_queue);
        const COLUMNS: usize = 11;
        for (chunk_index, chunk) in tasks.chunks(INSERT_CHUNK).enumerate() {
            let mut sql = String::from(
                "INSERT INTO tasks (task_id, seq, task_group_id, request_id, function_id, \
                   owner_identity_id, endpoint_id, submitted_endpoint_id, status, task_buffer, \
                   resource_specification, result_serializers, created_at, result_queue, \
                   buffer_is_payload) VALUES ",
            );
            for row in 0..chunk.len() {
                let p = row * COLUMNS;
                if row > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, 'waiting-for-ep', ${}, ${}, ${}, {now}, {queue_flag}, 1)",
                    p + 1, p + 2, p + 3, p + 4, p + 5, p + 6, p + 7, p + 8, p + 9, p + 10, p + 11
                ));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (row, task) in chunk.iter().enumerate() {
                query = query
                    .bind(task.task_id.to_string())
                    .bind((chunk_index * INSERT_CHUNK + row) as i64)
                    .bind(task_group_id.to_string())
                    .bind(request_id.to_string())
                    .bind(task.function_id.to_string())
                    .bind(owner.to_string())
                    .bind(endpoint_id.to_string())
                    .bind(submitted_endpoint_id.to_string())
                    .bind(task.payload.as_str())
                    .bind(spec.clone())
                    .bind(serializers.clone());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(SubmittedBatch {
            request_id,
            task_group_id,
            task_group_created: created,
            uep,
        })
    }

    /// Records that `owner`'s task group declares its result queue again now, if it has
    /// one and still has unfinished tasks (whose results are still to come); returns
    /// whether it does, and the caller then declares the queue. A queue that nobody
    /// consumed expires, and an SDK that comes back for the rest of the results
    /// (`Executor.reload_tasks`) must find it.
    pub async fn redeclare_result_queue(
        &self,
        owner: Uuid,
        task_group_id: Uuid,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE task_groups SET queue_declared_at = $1 WHERE task_group_id = $2 \
               AND owner_identity_id = $3 AND result_queue = 1 \
               AND EXISTS (SELECT 1 FROM tasks WHERE owner_identity_id = $3 \
                 AND task_group_id = $2 AND status IN ('waiting-for-ep', 'running'))",
        )
        .bind(now_ms())
        .bind(task_group_id.to_string())
        .bind(owner.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Those of `task_ids` still waiting with their message unsent: what a publisher
    /// may still send once it holds the endpoint's gate.
    pub async fn still_unsent(&self, task_ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        let mut unsent = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(INSERT_CHUNK) {
            // Looked up by id alone, the state worked out per row, so that the primary
            // key is the only index that fits: an index on the state (a partial one over
            // unfinished tasks made publishing a 10,000-task submit seconds slower on
            // PostgreSQL, which scanned it whole as well) cannot be picked here.
            let sql = format!(
                "SELECT task_id, CAST(CASE WHEN status = 'waiting-for-ep' \
                   AND task_buffer IS NOT NULL THEN 1 ELSE 0 END AS BIGINT) AS unsent \
                 FROM tasks WHERE task_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
            for task_id in chunk {
                query = query.bind(task_id.to_string());
            }
            for (id, still) in query.fetch_all(&self.pool).await? {
                if still == 1 {
                    unsent.push(parse_uuid(&id, "task id")?);
                }
            }
        }
        Ok(unsent)
    }

    /// Forgets the messages of tasks the broker has confirmed.
    pub async fn mark_enqueued(&self, task_ids: &[Uuid]) -> StoreResult<()> {
        self.update_tasks(task_ids, "task_buffer = NULL").await
    }

    /// Sets `assignment` (fixed SQL) on the given tasks, in chunks.
    async fn update_tasks(&self, task_ids: &[Uuid], assignment: &'static str) -> StoreResult<()> {
        for chunk in task_ids.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE tasks SET {assignment} WHERE task_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for task_id in chunk {
                query = query.bind(task_id.to_string());
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Up to `limit` unfinished tasks submitted before `created_before` (ms) whose
    /// message never reached the broker (a broker outage, or a crash between store and
    /// publish), oldest first. Bounded, so a long outage's backlog is sent in pieces
    /// rather than read into memory at once.
    pub async fn unsent_tasks(
        &self,
        created_before: i64,
        limit: usize,
    ) -> StoreResult<Vec<TaskRecord>> {
        sqlx::query(
            "SELECT * FROM tasks WHERE task_buffer IS NOT NULL AND status = 'waiting-for-ep' \
               AND created_at < $1 ORDER BY created_at, seq LIMIT $2",
        )
        .bind(created_before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
    }

    /// Looks a task up.
    pub async fn task(&self, task_id: Uuid) -> StoreResult<Option<TaskRecord>> {
        sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    /// The tasks of a group, in submit order.
    pub async fn tasks_of_group(&self, task_group_id: Uuid) -> StoreResult<Vec<TaskRecord>> {
        sqlx::query("SELECT * FROM tasks WHERE task_group_id = $1 ORDER BY created_at, seq")
            .bind(task_group_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(task_from_row)
            .collect()
    }

    /// Stores a task's result, if `endpoint_id` is where the task runs and the task is
    /// not finished yet. Returns the task when the result belongs to it: the caller
    /// forwards it (again, on a redelivery after a crash) to the task group's queue.
    pub async fn store_result(
        &self,
        task_id: Uuid,
        endpoint_id: Uuid,
        result: &StoredResult,
    ) -> StoreResult<Option<TaskRecord>> {
        let status = if result.error.is_some() {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        };
        let (value, exception) = match result.error {
            Some(_) => (None, Some(&result.data)),
            None => (Some(&result.data), None),
        };
        let error_code = result
            .error
            .as_ref()
            .map(|(code, message)| error_code_text(code, message));
        sqlx::query(
            "UPDATE tasks SET status = $1, result = $2, exception = $3, error_code = $4, \
               details = $5, task_statuses = $6, completed_at = $7, task_buffer = NULL \
             WHERE task_id = $8 AND endpoint_id = $9 AND status IN ('waiting-for-ep', 'running')",
        )
        .bind(status.as_str())
        .bind(value)
        .bind(exception)
        .bind(error_code)
        .bind(
            result
                .details
                .as_ref()
                .map(|d| Value::Object(d.clone()).to_string()),
        )
        .bind(result.task_statuses.as_ref().map(Value::to_string))
        .bind(now_ms())
        .bind(task_id.to_string())
        .bind(endpoint_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(self
            .task(task_id)
            .await?
            .filter(|t| t.endpoint_id == endpoint_id))
    }

    /// How many of an endpoint's tasks are unfinished (waiting or running).
    pub async fn unfinished_task_count(&self, endpoint_id: Uuid) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE endpoint_id = $1 \
               AND status IN ('waiting-for-ep', 'running')",
        )
        .bind(endpoint_id.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Marks tasks an endpoint reported running (those of `task_ids` that run there and
    /// still wait), a few hundred per statement in one transaction: a heartbeat may name
    /// thousands.
    pub async fn mark_running(&self, endpoint_id: Uuid, task_ids: &[Uuid]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        for chunk in task_ids.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE tasks SET status = 'running' WHERE endpoint_id = $1 \
                   AND status = 'waiting-for-ep' AND task_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(endpoint_id.to_string());
            for task_id in chunk {
                query = query.bind(task_id.to_string());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fails every unfinished task of an endpoint with `message` (its start failed, or
    /// it was deleted), and returns them so the caller can tell their submitters. One
    /// statement, so a task whose real result lands meanwhile is either failed here or
    /// completed there, never both. The failures stay marked until
    /// [`Store::mark_forwarded`] says they reached their submitters.
    pub async fn fail_pending_tasks(
        &self,
        endpoint_id: Uuid,
        code: &str,
        message: &str,
    ) -> StoreResult<Vec<TaskRecord>> {
        fail_endpoint_tasks(&self.pool, endpoint_id, code, message).await
    }

    /// Fails those of `task_ids` that are unfinished, as [`Store::fail_pending_tasks`]
    /// does for a whole endpoint, and returns them.
    pub async fn fail_unfinished_tasks(
        &self,
        task_ids: &[Uuid],
        code: &str,
        message: &str,
    ) -> StoreResult<Vec<TaskRecord>> {
        let error = error_code_text(code, message);
        let mut failed = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(INSERT_CHUNK) {
            let sql = format!(
                "{FAIL_UNFINISHED} AND task_id IN ({}) RETURNING *",
                placeholders(4, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(message)
                .bind(&error)
                .bind(now_ms());
            for task_id in chunk {
                query = query.bind(task_id.to_string());
            }
            for row in query.fetch_all(&self.pool).await? {
                failed.push(task_from_row(&row)?);
            }
        }
        Ok(failed)
    }

    /// Records that these tasks' failures reached their submitters' queues.
    pub async fn mark_forwarded(&self, task_ids: &[Uuid]) -> StoreResult<()> {
        self.update_tasks(task_ids, "forward_pending = 0").await
    }

    /// Up to `limit` failures the service made that completed before `completed_before`
    /// (ms) and have not reached their submitters yet (the broker was away, or the
    /// service stopped in between), oldest first.
    pub async fn unforwarded_failures(
        &self,
        completed_before: i64,
        limit: usize,
    ) -> StoreResult<Vec<TaskRecord>> {
        sqlx::query(
            "SELECT * FROM tasks WHERE forward_pending = 1 AND completed_at < $1 \
             ORDER BY completed_at LIMIT $2",
        )
        .bind(completed_before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
    }
}

/// Fails an endpoint's unfinished tasks with `message`, marked to be forwarded; on the
/// pool or inside a caller's transaction.
pub(crate) async fn fail_endpoint_tasks<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    endpoint_id: Uuid,
    code: &str,
    message: &str,
) -> StoreResult<Vec<TaskRecord>> {
    let sql = format!("{FAIL_UNFINISHED} AND endpoint_id = $4 RETURNING *");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(message)
        .bind(error_code_text(code, message))
        .bind(now_ms())
        .bind(endpoint_id.to_string())
        .fetch_all(executor)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// Fails unfinished tasks with `$1` (message), `$2` (error code JSON) at `$3` (ms),
/// marked to be forwarded; the caller adds which tasks (`AND ...`) and `RETURNING`.
const FAIL_UNFINISHED: &str = "UPDATE tasks SET status = 'failed', exception = $1, \
    error_code = $2, completed_at = $3, task_buffer = NULL, forward_pending = 1 \
    WHERE status IN ('waiting-for-ep', 'running')";

/// `$first, $first+1, ...`: `count` numbered placeholders for an `IN (...)` list.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `error_code` column of a failed task; [`error_details_of`] reads it back.
fn error_code_text(code: &str, message: &str) -> String {
    serde_json::json!({"code": code, "user_message": message}).to_string()
}

/// The code and user message of a failed task's `error_code` column.
pub fn error_details_of(task: &TaskRecord) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(task.error_code.as_deref()?).ok()?;
    Some((
        value.get("code")?.as_str()?.to_owned(),
        value.get("user_message")?.as_str()?.to_owned(),
    ))
}
