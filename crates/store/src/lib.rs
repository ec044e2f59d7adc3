//! The Gantry service's durable state.
//!
//! Everything the service must still know after a restart lives here: identities and
//! their hashed tokens, endpoint clients, endpoints (with their last heartbeat), the
//! functions users registered, and every task with its state and result. The broker
//! holds messages in flight; this holds the truth.
//!
//! One set of portable SQL queries runs on SQLite (the default, a file) and PostgreSQL
//! (by URL) through sqlx's `Any` driver, so both backends are tested by the same tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gantry_store::StoreError> {
//! let store = gantry_store::Store::connect("sqlite:///tmp/gantry.db").await?;
//! let (alice, token) = store.add_user("alice").await?;
//! let principal = store.authenticate(&token).await?.expect("a fresh token is valid");
//! assert_eq!(principal.identity.identity_id, alice.identity_id);
//! # Ok(()) }
//! ```

mod endpoints;
mod identities;
mod limits;
pub mod secret;
mod tasks;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use uuid::Uuid;

pub use endpoints::{EndpointRecord, EndpointRegistration, UepBinding, announces_stop};
pub use identities::{
    CLIENT_REVOKED_CODE, ClientSummary, EndpointClient, Identity, IdentityKind, Principal,
    Revocation, TokenKind,
};
pub use limits::{LimitReached, SubmitLimits};
pub use tasks::{
    FunctionRecord, NewFunction, NewSubmit, NewTask, StoredResult, SubmittedBatch, TaskRecord,
    TaskStatus, error_details_of,
};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The write would break a uniqueness rule (e.g. a username that exists).
    #[error("{0}")]
    Conflict(String),
    /// A referenced row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored value is not what this version of Gantry wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The write would pass one of the user's limits; nothing was written.
    #[error("limit reached: {0}")]
    LimitReached(LimitReached),
    /// The credentials behind the request were revoked (perhaps while it ran).
    #[error("{0}")]
    Revoked(String),
    /// The endpoint is locked (by its owner, or by a revocation of its client) and
    /// takes no new tasks; nothing was written.
    #[error("endpoint {0} is locked and takes no new tasks")]
    EndpointLocked(Uuid),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    is_sqlite: bool,
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`) and
    /// brings the schema up to date. A SQLite file is created when missing.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        // An in-memory database is named so (`sqlite::memory:`); a file whose path merely
        // contains the word must still be created.
        let in_memory = url.contains(":memory:");
        if is_sqlite && !in_memory {
            private_sqlite_files(url)?;
        }
        let url = if is_sqlite && !in_memory && !url.contains("mode=") {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}mode=rwc")
        } else {
            url.to_owned()
        };
        // SQLite allows one writer at a time; a small pool avoids busy errors while the
        // WAL journal keeps readers concurrent with it.
        // An in-memory database lives as long as its one connection: every connection
        // would open a database of its own, so there is exactly one, kept for good.
        let max_connections = match (is_sqlite, in_memory) {
            (true, true) => 1,
            (true, false) => 4,
            (false, _) => 16,
        };
        let mut options = AnyPoolOptions::new().max_connections(max_connections);
        if is_sqlite && in_memory {
            options = options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        // FULL: a commit is on disk before the broker delivery that
                        // caused it is acknowledged, even across a power loss.
                        conn.execute("PRAGMA synchronous = FULL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, is_sqlite })
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then writes
    /// fails with SQLITE_BUSY when another writer committed in between, and no busy
    /// timeout helps with that.
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Any>> {
        let begin = if self.is_sqlite {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        };
        Ok(self.pool.begin_with(begin).await?)
    }

    /// The underlying pool, for health checks.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A value from the settings table, if set.
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sets a setting, replacing its value.
    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = $2",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a setting so that its value is gone from the file too: SQLite leaves a
    /// deleted row's bytes in free pages and the write-ahead log until they are reused,
    /// so the file is rebuilt (`VACUUM`) and the log emptied. For a value that must not
    /// outlive its deletion (an old secret); slow on a large database, so rare.
    /// PostgreSQL's dead rows go with its own vacuuming.
    pub async fn forget_setting(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        if self.is_sqlite {
            sqlx::query("VACUUM").execute(&self.pool).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The setting `key`, set to `make()` first if it had no value. Safe when several
    /// service processes start at once: the first writer wins and all read its value.
    pub async fn setting_or_init(
        &self,
        key: &str,
        make: impl FnOnce() -> String,
    ) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(make())
        .execute(&self.pool)
        .await?;
        self.setting(key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {key} vanished")))
    }
}

/// Creates a SQLite database file readable by its owner alone (0600, whatever the umask),
/// or takes group and other access away from an existing one and from its `-wal` and
/// `-shm` companions: the file holds everyone's tasks and results. SQLite gives the
/// companions it creates the main file's mode, so new ones are private too.
fn private_sqlite_files(url: &str) -> StoreResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() {
        return Ok(());
    }
    let io = |what: &str, e: std::io::Error| {
        StoreError::Database(sqlx::Error::Configuration(
            format!("cannot {what} the database file {path}: {e}").into(),
        ))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create", e))?;
    for file in [
        path.to_owned(),
        format!("{path}-wal"),
        format!("{path}-shm"),
    ] {
        let Ok(metadata) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| io("restrict", e))?;
        }
    }
    Ok(())
}

/// Milliseconds since the epoch, the store's unit of time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_uuid(text: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("{what} {text:?} is not a UUID")))
}

fn parse_json(text: Option<String>, what: &str) -> StoreResult<Option<serde_json::Value>> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("{what} is not JSON: {e}")))
    })
    .transpose()
}

/// Whether a database error is a uniqueness violation, in either backend's words.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db
                    .code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}
