//! Every wait and period of the service, in one place, so that they can be read (and
//! reasoned about) together. Settings an operator chooses (`--start-retry-after-s`,
//! token lifetimes, HTTP timeouts, the result-queue expiry) are flags of `serve`; these
//! are the fixed ones behind them.
//!
//! | what | how long | why |
//! |---|---|---|
//! | [`STOP_DEADLINE`] | 30 s | `RunningService::stop` as a whole: consumers, outbox and HTTP server finish what they hold, then the database pool closes; whatever is not done by then is aborted (the broker redelivers it, the outbox sends it after the next start) |
//! | [`SUBMIT_PUBLISH_WAIT`] | 10 s | a submit waits this long for the broker's confirms of its tasks; after that its tasks are stored and the outbox sends them |
//! | [`COMMAND_PUBLISH_WAIT`] | 10 s | a start command's confirm; one that does not come is sent again after the retry delay |
//! | [`OUTBOX_PERIOD`] | 5 s | how often the outbox looks for unsent tasks, unforwarded failures and UEPs to start again, and prunes expired tokens |
//! | [`OUTBOX_GRACE`] | 15 s | how old an unsent task must be before the outbox sends it (a younger one is still being published by its submit) |
//! | [`OUTBOX_PUBLISH_WAIT`] | 30 s | one outbox pass's wait for confirms (it holds endpoint gates meanwhile) |
//! | [`START_COMMAND_GAP`] | 5 s | the least time between two start commands for one UEP |
//! | [`CONSUMER_RETRY`] | 2 s | a results or heartbeats consumer that cannot consume tries again after this |
//! | [`DELIVERY_RETRY_FIRST`] .. [`DELIVERY_RETRY_MAX`] | 1 s doubling to 30 s | a delivery whose effect could not be stored is tried again in place |
//! | `gantry_broker::BROKER_WAIT` | 30 s | every single broker step (connect, declare, publish, confirm) |

use std::time::Duration;

/// How long [`crate::server::RunningService::stop`] takes at most, all parts together.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How long a submit waits for the broker's confirms of its tasks.
pub const SUBMIT_PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// How long a start command may wait for the broker's confirm.
pub const COMMAND_PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// How often the outbox runs.
pub const OUTBOX_PERIOD: Duration = Duration::from_secs(5);

/// How old an unsent task must be before the outbox sends it.
pub const OUTBOX_GRACE: Duration = Duration::from_secs(15);

/// How long one outbox pass waits for the broker's confirms.
pub const OUTBOX_PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// The least time between two start commands for one user endpoint.
pub const START_COMMAND_GAP: Duration = Duration::from_secs(5);

/// How long a consumer that cannot consume waits before it tries again.
pub const CONSUMER_RETRY: Duration = Duration::from_secs(2);

/// The first pause before a delivery is handled again.
pub const DELIVERY_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest pause before a delivery is handled again.
pub const DELIVERY_RETRY_MAX: Duration = Duration::from_secs(30);
