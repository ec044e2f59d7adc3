//! Per-user quotas: what one user may make the service, the broker and a multi-user
//! endpoint's host hold at once, so that one user (a buggy script, or a hostile one)
//! cannot crowd out the others. A submit past a quota gets 429 with a code, a message
//! that names the limit, what counts against it and what to do, and a `Retry-After`
//! where waiting helps; it is refused before anything is created (no user endpoint, no
//! broker account, no queue, no start command, no task).
//!
//! The counts are checked once, in the store's write transaction, with the user's row
//! locked, where the tasks and a new user endpoint are written together (the task and
//! task-group counts in one statement). So concurrent submits of one user never pass a
//! limit together.
//! Nothing is made on the broker (the result queue, a new user endpoint's account and
//! queue) until that transaction has committed, so a submit refused in the store, in
//! such a race, leaves nothing behind either: a loop of racing submits cannot pile up
//! idle queues on the broker.
//!
//! Result queues also expire: a task group's queue that nobody consumes for
//! [`Quotas::result_queue_expiry`] goes away (its results stay in the database, where
//! the SDK reads them over REST), by a policy the service sets on the broker at start
//! (see [`gantry_broker_accounts::management::Management::set_queue_expiry`]).

use std::time::Duration;

use axum::http::StatusCode;
use gantry_broker::BrokerError;
use gantry_broker::layout::task_group_queue_pattern;
use gantry_broker_accounts::management::Management;
use gantry_store::{LimitReached, SubmitLimits};

use crate::error::ApiError;

/// The default of [`Quotas::max_user_endpoint_configs`].
pub const DEFAULT_MAX_USER_ENDPOINT_CONFIGS: u64 = 100;
/// The default of [`Quotas::max_live_task_groups`].
pub const DEFAULT_MAX_LIVE_TASK_GROUPS: u64 = 1_000;
/// The default of [`Quotas::max_tasks_in_flight`].
pub const DEFAULT_MAX_TASKS_IN_FLIGHT: u64 = 100_000;
/// The default of [`Quotas::result_queue_expiry`], in seconds (three days: an SDK whose
/// machine slept over a weekend still finds its queue).
pub const DEFAULT_RESULT_QUEUE_EXPIRY_S: u64 = 3 * 24 * 3600;

/// The name of the broker policy that expires result queues.
pub const RESULT_QUEUE_POLICY: &str = "gantry-result-queue-expiry";

/// What a refused submit is told to wait before trying again, where waiting helps
/// (tasks finish, queues expire). The SDK retries a 429 a few times on its own, at
/// most 10 s apart, before it raises the error.
const RETRY_AFTER_S: u64 = 30;

/// The per-user quotas and the result-queue expiry (`gantry-service serve` flags);
/// `None` turns one off. The defaults never get in a scientist's way: a benchmark
/// submits 10,000 tasks at once, and the SDK's `Executor` makes one task group per
/// process and one user endpoint per `user_endpoint_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// The most user endpoints one user may have under one multi-user endpoint
    /// (`--max-user-endpoint-configs`). Each distinct `user_endpoint_config` (with the
    /// submitter's Python version) makes a user endpoint of its own, for good: a row, a
    /// broker account, a durable queue, and a start command that has the MEP fork a
    /// process as the user on its host. Without a limit, a loop over configurations
    /// makes thousands of each in seconds. A configuration used before is never refused.
    pub max_user_endpoint_configs: Option<u64>,
    /// The most live task groups one user may have (`--max-live-task-groups`). A group
    /// is live while it has an unfinished task, or while its result queue may still
    /// exist (it was declared within [`Quotas::result_queue_expiry`]); each result queue
    /// is a broker process holding results. A submit into a live group is never refused
    /// by this.
    pub max_live_task_groups: Option<u64>,
    /// The most tasks one user may have in flight (submitted, not yet finished)
    /// (`--max-tasks-in-flight`). Each one holds its payload in the database until sent
    /// and then a message on the broker until an endpoint takes it.
    pub max_tasks_in_flight: Option<u64>,
    /// How long a task group's result queue may go unconsumed before the broker
    /// deletes it (`--result-queue-expiry-s`); `None`: never (queues then count against
    /// [`Quotas::max_live_task_groups`] for good).
    pub result_queue_expiry: Option<Duration>,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_user_endpoint_configs: Some(DEFAULT_MAX_USER_ENDPOINT_CONFIGS),
            max_live_task_groups: Some(DEFAULT_MAX_LIVE_TASK_GROUPS),
            max_tasks_in_flight: Some(DEFAULT_MAX_TASKS_IN_FLIGHT),
            result_queue_expiry: Some(Duration::from_secs(DEFAULT_RESULT_QUEUE_EXPIRY_S)),
        }
    }
}

impl Quotas {
    /// No quotas and no expiry.
    pub const NONE: Quotas = Quotas {
        max_user_endpoint_configs: None,
        max_live_task_groups: None,
        max_tasks_in_flight: None,
        result_queue_expiry: None,
    };

    /// The limits the store checks a submit against.
    pub fn submit_limits(&self) -> SubmitLimits {
        SubmitLimits {
            max_live_task_groups: self.max_live_task_groups,
            max_tasks_in_flight: self.max_tasks_in_flight,
            result_queue_window_ms: self
                .result_queue_expiry
                .map(|expiry| i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX)),
            max_user_endpoint_configs: self.max_user_endpoint_configs,
        }
    }
}

/// The 429 for a limit the store reported.
pub fn refusal(limit: &LimitReached) -> ApiError {
    match *limit {
        LimitReached::UserEndpointConfigs { mep_id, max } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_USER_ENDPOINT_CONFIGS",
            format!(
                "you have {max} user endpoint configurations on the multi-user endpoint \
                 {mep_id} already, the most this service allows one user \
                 (gantry-service serve --max-user-endpoint-configs). Each distinct \
                 user_endpoint_config (with your Python version) makes a user endpoint \
                 of its own, with its own broker account, queue and process on the \
                 endpoint's host. Submit with a user_endpoint_config you used before (it \
                 reaches the same user endpoint), or ask the service's administrator to \
                 raise the limit"
            ),
        ),
        LimitReached::LiveTaskGroups {
            max,
            result_queue_window_ms,
        } => {
            let queues = match result_queue_window_ms {
                Some(window) => format!(
                    "or whose result queue (create_queue) may still exist: for {} after \
                     the last submit that asked for it, or longer while it is consumed",
                    duration_words(window)
                ),
                None => "or that has a result queue (create_queue; on this service \
                         result queues never expire)"
                    .to_owned(),
            };
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_LIVE_TASK_GROUPS",
                format!(
                    "you have {max} live task groups, the most this service allows one \
                     user (gantry-service serve --max-live-task-groups); this submit \
                     would start another. A task group is live while it has unfinished \
                     tasks, {queues}. Submit into one of your live task groups (one \
                     Executor for many tasks, or the same task_group_id), or try again \
                     once tasks finish or result queues expire"
                ),
            )
            .with_retry_after(RETRY_AFTER_S)
        }
        LimitReached::TasksInFlight {
            in_flight,
            submitted,
            max,
        } if submitted > max => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_TASKS_IN_FLIGHT",
            format!(
                "this submit has {submitted} tasks, more than the {max} tasks one user \
                 may have in flight (submitted and not yet finished) on this service \
                 (gantry-service serve --max-tasks-in-flight; you have {in_flight} now); \
                 submit at most {max} at a time"
            ),
        ),
        LimitReached::TasksInFlight {
            in_flight,
            submitted,
            max,
        } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_TASKS_IN_FLIGHT",
            format!(
                "you have {in_flight} tasks in flight (submitted and not yet finished), \
                 and these {submitted} would pass {max}, the most this service allows \
                 one user (gantry-service serve --max-tasks-in-flight). Try again once \
                 some of your tasks finish, or submit fewer at a time"
            ),
        )
        .with_retry_after(RETRY_AFTER_S),
    }
}

/// `ms` for people: "3 days", "2 hours", "90 s".
fn duration_words(ms: i64) -> String {
    const UNITS: [(i64, &str); 3] = [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute")];
    for (unit, name) in UNITS {
        if ms >= unit && ms % unit == 0 {
            let count = ms / unit;
            return format!("{count} {name}{}", if count == 1 { "" } else { "s" });
        }
    }
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Sets the broker policy that deletes result queues unused for `expiry` (or removes
/// it, for `None`), over every result queue of the vhost, those declared before too.
pub async fn apply_result_queue_expiry(
    management: &Management,
    vhost: &str,
    expiry: Option<Duration>,
) -> Result<(), BrokerError> {
    let applied = management
        .set_queue_expiry(
            vhost,
            RESULT_QUEUE_POLICY,
            &task_group_queue_pattern(),
            expiry,
        )
        .await;
    match (applied, expiry) {
        // Nothing to set: a policy left by an earlier start that cannot be removed
        // (an account without the administrator tag) is the operator's to remove.
        (Err(error), None) => {
            tracing::warn!(%error, policy = RESULT_QUEUE_POLICY, "could not remove the result-queue expiry policy; remove it with rabbitmqctl clear_operator_policy if it is set");
            Ok(())
        }
        (applied, _) => applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn windows_are_said_in_words() {
        assert_eq!(duration_words(3 * 86_400_000), "3 days");
        assert_eq!(duration_words(3_600_000), "1 hour");
        assert_eq!(duration_words(90_000), "90 s");
        assert_eq!(duration_words(120_000), "2 minutes");
        assert_eq!(duration_words(1_500), "1500 ms");
    }

    #[test]
    fn refusals_are_429_and_say_when_waiting_helps() {
        let configs = refusal(&LimitReached::UserEndpointConfigs {
            mep_id: Uuid::nil(),
            max: 2,
        });
        assert_eq!(configs.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            configs.retry_after(),
            None,
            "waiting frees no configuration"
        );
        let groups = refusal(&LimitReached::LiveTaskGroups {
            max: 2,
            result_queue_window_ms: Some(2_000),
        });
        assert_eq!(groups.retry_after(), Some(RETRY_AFTER_S));
        let too_big = refusal(&LimitReached::TasksInFlight {
            in_flight: 0,
            submitted: 5,
            max: 3,
        });
        assert_eq!(
            too_big.retry_after(),
            None,
            "waiting does not shrink a submit"
        );
        let busy = refusal(&LimitReached::TasksInFlight {
            in_flight: 3,
            submitted: 1,
            max: 3,
        });
        assert_eq!(busy.retry_after(), Some(RETRY_AFTER_S));
    }
}
