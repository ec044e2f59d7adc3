//! Endpoints: the ones endpoint clients register (plain or multi-user), and the user
//! endpoints the service names when a user submits to a multi-user endpoint.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::{Store, StoreError, StoreResult, now_ms, parse_json, parse_uuid};

/// What an endpoint client sends to register (or re-register) an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRegistration {
    /// The short name (`endpoint_name`).
    pub name: String,
    /// A name for people.
    pub display_name: Option<String>,
    /// Whether it is a multi-user endpoint (runs no tasks itself).
    pub multi_user: bool,
    /// Whether any user may submit to it.
    pub public: bool,
    /// Whether it promises high-assurance handling.
    pub high_assurance: bool,
    /// Functions it restricts itself to, if any.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// Free-form facts the endpoint reports about itself.
    pub metadata: Map<String, Value>,
}

/// What makes a user endpoint: whose it is, for which MEP, with which configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct UepBinding {
    /// The MEP that starts it.
    pub mep_id: Uuid,
    /// The user whose tasks it runs.
    pub user_identity_id: Uuid,
    /// The `user_endpoint_config` it was derived from.
    pub user_config: Map<String, Value>,
    /// The submitter's `user_runtime`, passed to the template.
    pub user_runtime: Value,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    /// Its id.
    pub endpoint_id: Uuid,
    /// The endpoint client that registered it, or for a UEP the user it runs for.
    pub owner_identity_id: Uuid,
    /// Short name.
    pub name: String,
    /// Name for people.
    pub display_name: Option<String>,
    /// Multi-user endpoint?
    pub multi_user: bool,
    /// Open to every user?
    pub public: bool,
    /// High assurance?
    pub high_assurance: bool,
    /// Allowed functions, if restricted.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// Reported metadata.
    pub metadata: Map<String, Value>,
    /// For a UEP: what it was made from.
    pub uep: Option<UepBinding>,
    /// Locked endpoints accept no new tasks.
    pub locked: bool,
    /// The period the last heartbeat announced, in seconds.
    pub heartbeat_period: Option<f64>,
    /// When the last heartbeat arrived (ms).
    pub last_heartbeat_at: Option<i64>,
    /// The `global_state` of the last heartbeat.
    pub global_state: Option<Map<String, Value>>,
    /// When the service last asked the MEP to start this UEP (ms).
    pub start_requested_at: Option<i64>,
    /// When it was created (ms).
    pub created_at: i64,
    /// Mixed into the password of its broker account; new for every new row (so an id
    /// deleted and registered again gets a new password) and changed on revocation.
    pub broker_salt: String,
}

impl EndpointRecord {
    /// Online means a heartbeat younger than twice its announced period, no start error
    /// in the last report, and a last report that did not announce a stop (see
    /// [`announces_stop`]): an endpoint that says it is gone is offline at once.
    pub fn is_online(&self, now_ms: i64) -> bool {
        if self.start_error().is_some() || self.has_stopped() {
            return false;
        }
        match (self.heartbeat_period, self.last_heartbeat_at) {
            (Some(period), Some(at)) if period > 0.0 => {
                ((now_ms - at) as f64) < 2.0 * period * 1000.0
            }
            _ => false,
        }
    }

    /// The start failure the last heartbeat reported (`global_state.error`), if any.
    pub fn start_error(&self) -> Option<&str> {
        start_error_of(self.global_state.as_ref()?)
    }

    /// Whether the last heartbeat announced that the endpoint stopped.
    pub fn has_stopped(&self) -> bool {
        self.global_state
            .as_ref()
            .is_some_and(|state| announces_stop(self.heartbeat_period, state))
    }
}

/// Whether a heartbeat says its endpoint is gone: a `heartbeat_period` of zero (what
/// Gantry's endpoints send last) or `active: false` (the official UEP's last heartbeat
/// keeps its period and says `{"heartbeat_period": 5, "active": false}`).
pub fn announces_stop(heartbeat_period: Option<f64>, global_state: &Map<String, Value>) -> bool {
    heartbeat_period == Some(0.0) || global_state.get("active") == Some(&Value::Bool(false))
}

/// The start failure a heartbeat's `global_state` reports, if any.
fn start_error_of(global_state: &Map<String, Value>) -> Option<&str> {
    global_state.get("error")?.as_str()
}

fn bool_of(row: &AnyRow, column: &str) -> StoreResult<bool> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

fn object_of(text: Option<String>, what: &str) -> StoreResult<Option<Map<String, Value>>> {
    match parse_json(text, what)? {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(StoreError::Corrupt(format!("{what} is not a JSON object"))),
    }
}

fn uuids_of(text: Option<String>, what: &str) -> StoreResult<Option<Vec<Uuid>>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))))
        .transpose()
}

fn endpoint_from_row(row: &AnyRow) -> StoreResult<EndpointRecord> {
    let parent: Option<String> = row.try_get("parent_endpoint_id")?;
    let uep = match parent {
        None => None,
        Some(parent) => Some(UepBinding {
            mep_id: parse_uuid(&parent, "parent endpoint id")?,
            user_identity_id: parse_uuid(
                &row.try_get::<Option<String>, _>("user_identity_id")?
                    .unwrap_or_default(),
                "UEP user identity",
            )?,
            user_config: object_of(row.try_get("user_config")?, "UEP user config")?
                .unwrap_or_default(),
            user_runtime: parse_json(row.try_get("user_runtime")?, "UEP user runtime")?
                .unwrap_or(Value::Null),
        }),
    };
    Ok(EndpointRecord {
        endpoint_id: parse_uuid(&row.try_get::<String, _>("endpoint_id")?, "endpoint id")?,
        owner_identity_id: parse_uuid(&row.try_get::<String, _>("owner_identity_id")?, "owner")?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        multi_user: bool_of(row, "multi_user")?,
        public: bool_of(row, "public")?,
        high_assurance: bool_of(row, "high_assurance")?,
        allowed_functions: uuids_of(row.try_get("allowed_functions")?, "allowed functions")?,
        metadata: object_of(Some(row.try_get("metadata")?), "metadata")?.unwrap_or_default(),
        uep,
        locked: bool_of(row, "locked")?,
        heartbeat_period: row.try_get("heartbeat_period")?,
        last_heartbeat_at: row.try_get("last_heartbeat_at")?,
        global_state: object_of(row.try_get("global_state")?, "global state")?,
        start_requested_at: row.try_get("start_requested_at")?,
        created_at: row.try_get("created_at")?,
        broker_salt: row.try_get("broker_salt")?,
    })
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

impl Store {
    /// Looks an endpoint up.
    pub async fn endpoint(&self, endpoint_id: Uuid) -> StoreResult<Option<EndpointRecord>> {
        sqlx::query("SELECT * FROM endpoints WHERE endpoint_id = $1")
            .bind(endpoint_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(endpoint_from_row)
            .transpose()
    }

    /// Registers a new endpoint, or updates one the same client registered before.
    /// Refuses (as a conflict) an id that belongs to someone else or to a user endpoint.
    pub async fn register_endpoint(
        &self,
        endpoint_id: Uuid,
        owner: Uuid,
        registration: &EndpointRegistration,
    ) -> StoreResult<EndpointRecord> {
        let allowed = registration.allowed_functions.as_ref().map(json_text);
        let metadata = json_text(&registration.metadata);
        let flag = |b: bool| i64::from(b);
        let mut tx = self.begin_write().await?;
        // A request authenticated just before its client was revoked must not register
        // anything after: the no-op update locks the client's row (PostgreSQL; SQLite's
        // write lock is whole-database) until the revocation, if one runs, commits.
        sqlx::query("UPDATE endpoint_clients SET revoked_at = revoked_at WHERE client_id = $1")
            .bind(owner.to_string())
            .execute(&mut *tx)
            .await?;
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM endpoint_clients WHERE client_id = $1")
                .bind(owner.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if matches!(revoked, Some(Some(_))) {
            return Err(StoreError::Revoked(
                "this endpoint client was revoked by the administrator".into(),
            ));
        }
        let existing: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT owner_identity_id, parent_endpoint_id FROM endpoints WHERE endpoint_id = $1",
        )
        .bind(endpoint_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some((existing_owner, parent)) => {
                if existing_owner != owner.to_string() || parent.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "endpoint {endpoint_id} belongs to another client"
                    )));
                }
                sqlx::query(
                    "UPDATE endpoints SET name = $1, display_name = $2, multi_user = $3, \
                       public = $4, high_assurance = $5, allowed_functions = $6, metadata = $7 \
                     WHERE endpoint_id = $8",
                )
                .bind(&registration.name)
                .bind(&registration.display_name)
                .bind(flag(registration.multi_user))
                .bind(flag(registration.public))
                .bind(flag(registration.high_assurance))
                .bind(allowed)
                .bind(metadata)
                .bind(endpoint_id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO endpoints (endpoint_id, owner_identity_id, name, display_name, \
                       multi_user, public, high_assurance, allowed_functions, metadata, locked, \
                       created_at, broker_salt) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11)",
                )
                .bind(endpoint_id.to_string())
                .bind(owner.to_string())
                .bind(&registration.name)
                .bind(&registration.display_name)
                .bind(flag(registration.multi_user))
                .bind(flag(registration.public))
                .bind(flag(registration.high_assurance))
                .bind(allowed)
                .bind(metadata)
                .bind(now_ms())
                .bind(crate::secret::new_salt())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.endpoint(endpoint_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("endpoint {endpoint_id} vanished")))
    }

    /// The user endpoint with this id, created from `binding` if it is new. Refuses
    /// (as a conflict) an id held by anything but this user's UEP under this MEP, so a
    /// user's tasks can only ever reach the UEP made for them.
    pub async fn ensure_uep(
        &self,
        uep_id: Uuid,
        binding: &UepBinding,
    ) -> StoreResult<EndpointRecord> {
        self.ensure_uep_within(uep_id, binding, None).await
    }

    /// [`Store::ensure_uep`], but a new UEP is refused with
    /// [`StoreError::LimitReached`] (and nothing written) when the user has
    /// `max_configs` UEPs under this MEP already. A UEP that exists is never refused.
    /// The count and the insert share one transaction, after the user's row is locked,
    /// so concurrent calls for new configurations cannot pass the limit together. (The
    /// service makes a submit's UEP in the transaction that stores its tasks instead:
    /// [`crate::NewSubmit::uep`].)
    pub async fn ensure_uep_within(
        &self,
        uep_id: Uuid,
        binding: &UepBinding,
        max_configs: Option<u64>,
    ) -> StoreResult<EndpointRecord> {
        let mut tx = self.begin_write().await?;
        if max_configs.is_some() {
            crate::limits::lock_user(&mut tx, binding.user_identity_id).await?;
        }
        let uep = ensure_uep_in(&mut tx, uep_id, binding, max_configs).await?;
        tx.commit().await?;
        Ok(uep)
    }

    /// The salt of an endpoint's broker password as it stands now, or `None` when the
    /// endpoint should have no broker account at all: it was deleted, or the client
    /// that registered it (the MEP's, for a user endpoint) was revoked. What the
    /// service reads again right after it set an endpoint's account up, to find out
    /// whether a revocation or deletion overtook it (see `gantry-service`'s
    /// `accounts`). A lock alone does not count: an endpoint its owner locked takes no
    /// new tasks but may still connect, to finish the ones it has.
    pub async fn endpoint_account_salt(&self, endpoint_id: Uuid) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT e.broker_salt FROM endpoints e \
               LEFT JOIN endpoints p ON p.endpoint_id = e.parent_endpoint_id \
               LEFT JOIN endpoint_clients c \
                 ON c.client_id = COALESCE(p.owner_identity_id, e.owner_identity_id) \
             WHERE e.endpoint_id = $1 AND c.revoked_at IS NULL",
        )
        .bind(endpoint_id.to_string())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// User endpoints with an unfinished task submitted before `cutoff` (ms) and no
    /// start request since then: candidates for asking their MEP again (the first
    /// command was lost, the MEP dropped it, or the UEP died, its running tasks back on
    /// its queue). The caller decides with [`EndpointRecord::is_online`] and the MEP's
    /// own state.
    pub async fn ueps_awaiting_start(&self, cutoff: i64) -> StoreResult<Vec<EndpointRecord>> {
        sqlx::query(
            "SELECT * FROM endpoints e WHERE e.parent_endpoint_id IS NOT NULL \
               AND (e.start_requested_at IS NULL OR e.start_requested_at < $1) \
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.endpoint_id = e.endpoint_id \
                 AND t.status IN ('waiting-for-ep', 'running') AND t.created_at < $1)",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    /// Records that a start command went out for this UEP, unless one went out less
    /// than `min_gap_ms` ago; returns whether the caller should send it.
    pub async fn claim_start_request(&self, uep_id: Uuid, min_gap_ms: i64) -> StoreResult<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE endpoints SET start_requested_at = $1 WHERE endpoint_id = $2 \
               AND (start_requested_at IS NULL OR start_requested_at < $3)",
        )
        .bind(now)
        .bind(uep_id.to_string())
        .bind(now - min_gap_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a heartbeat. Returns false when the endpoint is unknown.
    ///
    /// A report of a failed start (`global_state.error`) or of a stop
    /// ([`announces_stop`]) also forgets the last start request, so that the next submit
    /// asks the MEP again at once instead of waiting out the throttle with nobody left
    /// to run its tasks.
    pub async fn record_heartbeat(
        &self,
        endpoint_id: Uuid,
        heartbeat_period: Option<f64>,
        global_state: &Map<String, Value>,
    ) -> StoreResult<bool> {
        let forget_start = start_error_of(global_state).is_some()
            || announces_stop(heartbeat_period, global_state);
        let done = sqlx::query(
            "UPDATE endpoints SET heartbeat_period = $1, last_heartbeat_at = $2, \
               global_state = $3, \
               start_requested_at = CASE WHEN $4 = 1 THEN NULL ELSE start_requested_at END \
             WHERE endpoint_id = $5",
        )
        .bind(heartbeat_period)
        .bind(now_ms())
        .bind(json_text(global_state))
        .bind(i64::from(forget_start))
        .bind(endpoint_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Locks an endpoint so it takes no new tasks.
    pub async fn lock_endpoint(&self, endpoint_id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE endpoints SET locked = 1 WHERE endpoint_id = $1")
            .bind(endpoint_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes an endpoint and its user endpoints, and in the same transaction fails
    /// their unfinished tasks with `message` (marked to be forwarded, as
    /// [`Store::fail_pending_tasks`] does). Returns the removed ids and the failed
    /// tasks. Finished tasks and results stay readable.
    pub async fn delete_endpoint(
        &self,
        endpoint_id: Uuid,
        code: &str,
        message: &str,
    ) -> StoreResult<(Vec<Uuid>, Vec<crate::TaskRecord>)> {
        let mut tx = self.begin_write().await?;
        // The endpoint's own row first, as a submit and a revocation take it (see
        // `lock_open_endpoint`): on PostgreSQL a submit and this take turns instead of
        // deadlocking, and a user endpoint a submit made meanwhile is listed below.
        sqlx::query("UPDATE endpoints SET locked = locked WHERE endpoint_id = $1")
            .bind(endpoint_id.to_string())
            .execute(&mut *tx)
            .await?;
        let children: Vec<String> =
            sqlx::query_scalar("SELECT endpoint_id FROM endpoints WHERE parent_endpoint_id = $1")
                .bind(endpoint_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM endpoints WHERE parent_endpoint_id = $1")
            .bind(endpoint_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM endpoints WHERE endpoint_id = $1")
            .bind(endpoint_id.to_string())
            .execute(&mut *tx)
            .await?;
        let mut removed: Vec<Uuid> = children
            .iter()
            .map(|c| parse_uuid(c, "endpoint id"))
            .collect::<StoreResult<_>>()?;
        removed.push(endpoint_id);
        let mut failed = Vec::new();
        for id in &removed {
            failed.extend(crate::tasks::fail_endpoint_tasks(&mut *tx, *id, code, message).await?);
        }
        tx.commit().await?;
        Ok((removed, failed))
    }

    /// The endpoints an identity registered, and the user endpoints that run its tasks.
    pub async fn endpoints_of(&self, identity_id: Uuid) -> StoreResult<Vec<EndpointRecord>> {
        sqlx::query(
            "SELECT * FROM endpoints WHERE owner_identity_id = $1 OR user_identity_id = $1 \
             ORDER BY created_at",
        )
        .bind(identity_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    /// Every endpoint an identity may use: its own (as [`Store::endpoints_of`]), every
    /// multi-user endpoint (whose identity mapping decides who gets a UEP), and every
    /// public endpoint; never another user's UEP.
    pub async fn endpoints_usable_by(&self, identity_id: Uuid) -> StoreResult<Vec<EndpointRecord>> {
        sqlx::query(
            "SELECT * FROM endpoints WHERE owner_identity_id = $1 OR user_identity_id = $1 \
               OR (parent_endpoint_id IS NULL AND (multi_user = 1 OR public = 1)) \
             ORDER BY created_at",
        )
        .bind(identity_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    /// The user endpoints of a MEP.
    pub async fn ueps_of(&self, mep_id: Uuid) -> StoreResult<Vec<EndpointRecord>> {
        sqlx::query("SELECT * FROM endpoints WHERE parent_endpoint_id = $1 ORDER BY created_at")
            .bind(mep_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(endpoint_from_row)
            .collect()
    }
}

/// The user endpoint with this id in the caller's transaction, made from `binding` if
/// it is new, unless the user has `max_configs` under this MEP already
/// ([`StoreError::LimitReached`]); see [`Store::ensure_uep`]. With a limit, the caller
/// has locked the user's row (`limits::lock_user`), so that the count holds until the
/// transaction ends.
pub(crate) async fn ensure_uep_in(
    conn: &mut sqlx::AnyConnection,
    uep_id: Uuid,
    binding: &UepBinding,
    max_configs: Option<u64>,
) -> StoreResult<EndpointRecord> {
    if let Some(max) = max_configs {
        let exists = sqlx::query_scalar::<_, String>(
            "SELECT endpoint_id FROM endpoints WHERE endpoint_id = $1",
        )
        .bind(uep_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
        if !exists {
            let others = crate::limits::user_endpoint_configs(
                &mut *conn,
                binding.mep_id,
                binding.user_identity_id,
                uep_id,
            )
            .await?;
            if others >= max {
                return Err(StoreError::LimitReached(
                    crate::LimitReached::UserEndpointConfigs {
                        mep_id: binding.mep_id,
                        max,
                    },
                ));
            }
        }
    }
    upsert_uep(&mut *conn, uep_id, binding).await?;
    let uep = sqlx::query("SELECT * FROM endpoints WHERE endpoint_id = $1")
        .bind(uep_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("user endpoint {uep_id} vanished")))?;
    let bound_here = uep.uep.as_ref().is_some_and(|u| {
        u.mep_id == binding.mep_id && u.user_identity_id == binding.user_identity_id
    });
    if !bound_here {
        return Err(StoreError::Conflict(format!(
            "endpoint id {uep_id} is held by another endpoint"
        )));
    }
    Ok(uep)
}

/// Takes a shared lock on an endpoint's row for the rest of the caller's transaction,
/// and refuses ([`StoreError::EndpointLocked`]) an endpoint that is locked. A
/// revocation ([`Store::revoke_client`]) and a deletion update that row first, so on
/// PostgreSQL a submit and either of them take turns: the submit's tasks are in before
/// the revocation or deletion fails the endpoint's tasks (and lists its user
/// endpoints), or the submit waits and then sees the lock. Submits share the lock, so
/// they do not wait for each other. SQLite has no row locks and needs none: its
/// `BEGIN IMMEDIATE` serializes writers. An endpoint that does not exist is no error
/// here: deleted since the caller read it, its tasks fail when they are sent.
///
/// With `user`, on PostgreSQL, the user's identity row is taken too, in the same
/// statement (as `crate::limits::lock_user` does): one round trip for both.
pub(crate) async fn lock_open_endpoint(
    conn: &mut sqlx::AnyConnection,
    endpoint_id: Uuid,
    is_sqlite: bool,
    user: Option<Uuid>,
) -> StoreResult<()> {
    let sql = match (is_sqlite, user) {
        (true, _) => "SELECT locked FROM endpoints WHERE endpoint_id = $1",
        (false, None) => "SELECT locked FROM endpoints WHERE endpoint_id = $1 FOR SHARE",
        (false, Some(_)) => {
            "WITH taken AS (UPDATE identities SET kind = kind WHERE identity_id = $2 \
               RETURNING identity_id) \
             SELECT locked FROM endpoints WHERE endpoint_id = $1 FOR SHARE"
        }
    };
    let mut query = sqlx::query_scalar(sql).bind(endpoint_id.to_string());
    if let (false, Some(user)) = (is_sqlite, user) {
        query = query.bind(user.to_string());
    }
    let locked: Option<i64> = query.fetch_optional(conn).await?;
    if locked.is_some_and(|locked| locked != 0) {
        return Err(StoreError::EndpointLocked(endpoint_id));
    }
    Ok(())
}

/// Inserts a UEP row from `binding`, or updates the runtime of the same user's UEP under
/// the same MEP; an id held by anything else is left as it is (the caller checks).
async fn upsert_uep<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    uep_id: Uuid,
    binding: &UepBinding,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO endpoints (endpoint_id, owner_identity_id, name, multi_user, public, \
           high_assurance, metadata, parent_endpoint_id, user_identity_id, user_config, \
           user_runtime, locked, created_at, broker_salt) \
         VALUES ($1, $2, $3, 0, 0, 0, '{}', $4, $2, $5, $6, 0, $7, $8) \
         ON CONFLICT (endpoint_id) DO UPDATE SET user_runtime = $6 \
           WHERE endpoints.parent_endpoint_id = $4 AND endpoints.user_identity_id = $2",
    )
    .bind(uep_id.to_string())
    .bind(binding.user_identity_id.to_string())
    .bind(format!("uep.{}.{}", binding.mep_id, uep_id))
    .bind(binding.mep_id.to_string())
    .bind(json_text(&binding.user_config))
    .bind(json_text(&binding.user_runtime))
    .bind(now_ms())
    .bind(crate::secret::new_salt())
    .execute(executor)
    .await?;
    Ok(())
}
