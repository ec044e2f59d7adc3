//! The counts behind the service's per-user quotas, and the check that runs inside the
//! write transaction of what it guards, so that concurrent submits cannot pass a limit.
//!
//! Each count reads an index of migration 0008 and stops at the limit, so a check costs
//! at most what the limit allows the user to hold, whatever the tables' size. Inside a
//! write transaction the user's identity row is locked first ([`lock_user`]): SQLite's
//! `BEGIN IMMEDIATE` already serializes writers, and on PostgreSQL the row lock makes a
//! second submit of the same user wait until the first has committed, so its count
//! includes the first one's rows.

use sqlx::AnyConnection;
use uuid::Uuid;

use crate::{StoreError, StoreResult};

/// The per-user limits a submit is checked against; `None` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubmitLimits {
    /// The most task groups a user may have live at once (see [`LimitReached`]).
    pub max_live_task_groups: Option<u64>,
    /// The most unfinished tasks a user may have at once.
    pub max_tasks_in_flight: Option<u64>,
    /// How long a result queue may outlive its last declaration unused (ms), so how
    /// long a group with a result queue counts as live after it; `None` when result
    /// queues never expire, so that every group that made one counts.
    pub result_queue_window_ms: Option<i64>,
    /// The most user endpoints a user may have under one multi-user endpoint: checked
    /// when a submit makes a new one ([`crate::NewSubmit::uep`]).
    pub max_user_endpoint_configs: Option<u64>,
}

impl SubmitLimits {
    /// No limits: what [`crate::Store::insert_submit`] uses.
    pub const NONE: SubmitLimits = SubmitLimits {
        max_live_task_groups: None,
        max_tasks_in_flight: None,
        result_queue_window_ms: None,
        max_user_endpoint_configs: None,
    };

    /// Whether a limit on tasks or task groups is on; with none, a submit's tasks are
    /// not counted.
    pub(crate) fn any(&self) -> bool {
        self.max_live_task_groups.is_some() || self.max_tasks_in_flight.is_some()
    }
}

/// A per-user limit that a write would have passed; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReached {
    /// The user has `max` user endpoints (one per distinct `user_endpoint_config` and
    /// Python version) under the multi-user endpoint `mep_id`, and this one is new.
    UserEndpointConfigs {
        /// The multi-user endpoint.
        mep_id: Uuid,
        /// The limit.
        max: u64,
    },
    /// The user has `max` live task groups, and this submit's group is not one of them.
    /// A group is live while it has an unfinished task, or while its result queue may
    /// still exist (declared within `result_queue_window_ms`, or ever when `None`).
    LiveTaskGroups {
        /// The limit.
        max: u64,
        /// See [`SubmitLimits::result_queue_window_ms`].
        result_queue_window_ms: Option<i64>,
    },
    /// The user's unfinished tasks (`in_flight`, counted up to `max`) and this submit's
    /// `submitted` tasks would pass `max`.
    TasksInFlight {
        /// Unfinished tasks the user has (at most `max`: the count stops there).
        in_flight: u64,
        /// Tasks in the refused submit.
        submitted: u64,
        /// The limit.
        max: u64,
    },
}

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitReached::UserEndpointConfigs { mep_id, max } => write!(
                f,
                "the user has {max} user endpoint configurations on {mep_id} already"
            ),
            LimitReached::LiveTaskGroups { max, .. } => {
                write!(f, "the user has {max} live task groups already")
            }
            LimitReached::TasksInFlight {
                in_flight,
                submitted,
                max,
            } => write!(
                f,
                "{in_flight} unfinished tasks and {submitted} more would pass {max}"
            ),
        }
    }
}

/// Locks the user's identity row until the transaction ends (a no-op update: portable,
/// where `SELECT ... FOR UPDATE` is not), so that one user's quota checks and the writes
/// they guard take turns.
pub(crate) async fn lock_user(conn: &mut AnyConnection, user: Uuid) -> StoreResult<()> {
    sqlx::query("UPDATE identities SET kind = kind WHERE identity_id = $1")
        .bind(user.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// A count that stops at `cap`, as the `i64` SQL returns it.
fn cap_of(max: u64) -> i64 {
    i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX)
}

fn count_of(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// The user's user endpoints under `mep_id`, other than `uep_id`.
pub(crate) async fn user_endpoint_configs(
    conn: &mut AnyConnection,
    mep_id: Uuid,
    user: Uuid,
    uep_id: Uuid,
) -> StoreResult<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM endpoints WHERE parent_endpoint_id = $1 \
           AND user_identity_id = $2 AND endpoint_id <> $3",
    )
    .bind(mep_id.to_string())
    .bind(user.to_string())
    .bind(uep_id.to_string())
    .fetch_one(conn)
    .await?;
    Ok(count_of(count))
}

/// Refuses a submit of `submitted` tasks by `owner` into `task_group_id` that would pass
/// `limits` at `now` (ms), with [`StoreError::LimitReached`].
pub(crate) async fn check_submit(
    conn: &mut AnyConnection,
    owner: Uuid,
    task_group_id: Uuid,
    submitted: u64,
    limits: &SubmitLimits,
    now: i64,
) -> StoreResult<()> {
    if !limits.any() {
        return Ok(());
    }
    let owner_text = owner.to_string();
    let group_text = task_group_id.to_string();
    // A queue declared at or after `since` may still exist; 0 when queues never expire
    // (every group that declared one counts).
    let since = limits
        .result_queue_window_ms
        .map_or(0, |window| now.saturating_sub(window));
    // Both counts in one statement: a submit pays one round trip for its quotas.
    let (in_flight, others): (i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM (SELECT 1 AS one FROM tasks WHERE owner_identity_id = $1 \
              AND status IN ('waiting-for-ep', 'running') LIMIT $4) capped), \
           (SELECT COUNT(*) FROM ( \
              SELECT task_group_id FROM tasks WHERE owner_identity_id = $1 \
                AND status IN ('waiting-for-ep', 'running') AND task_group_id <> $2 \
              UNION \
              SELECT task_group_id FROM task_groups WHERE owner_identity_id = $1 \
                AND queue_declared_at >= $3 AND task_group_id <> $2 \
            ) live)",
    )
    .bind(&owner_text)
    .bind(&group_text)
    .bind(since)
    .bind(limits.max_tasks_in_flight.map_or(i64::MAX, cap_of))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(max) = limits.max_tasks_in_flight {
        let in_flight = count_of(in_flight);
        if in_flight.saturating_add(submitted) > max {
            return Err(StoreError::LimitReached(LimitReached::TasksInFlight {
                in_flight: in_flight.min(max),
                submitted,
                max,
            }));
        }
    }
    if let Some(max) = limits.max_live_task_groups
        && count_of(others) >= max
        && !group_is_live(conn, &owner_text, &group_text, since).await?
    {
        return Err(StoreError::LimitReached(LimitReached::LiveTaskGroups {
            max,
            result_queue_window_ms: limits.result_queue_window_ms,
        }));
    }
    Ok(())
}

/// Whether a group is live already (a submit into it makes no new live group).
async fn group_is_live(
    conn: &mut AnyConnection,
    owner: &str,
    group: &str,
    since: i64,
) -> StoreResult<bool> {
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 AS one FROM tasks WHERE owner_identity_id = $1 \
           AND task_group_id = $2 AND status IN ('waiting-for-ep', 'running') LIMIT 1) capped",
    )
    .bind(owner)
    .bind(group)
    .fetch_one(&mut *conn)
    .await?;
    if unfinished > 0 {
        return Ok(true);
    }
    let queued: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM task_groups WHERE task_group_id = $1 AND owner_identity_id = $2 \
           AND queue_declared_at >= $3",
    )
    .bind(group)
    .bind(owner)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?;
    Ok(queued > 0)
}
