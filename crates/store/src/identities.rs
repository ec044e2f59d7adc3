//! People, endpoint clients, and the bearer tokens that stand for them.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::secret::{hash_secret, new_secret};
use crate::{Store, StoreError, StoreResult, is_unique_violation, now_ms, parse_uuid};

/// Whether an identity is a person or an endpoint client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// A scientist who submits functions.
    User,
    /// An endpoint's confidential client, which registers and runs endpoints.
    Client,
}

impl IdentityKind {
    fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Client => "client",
        }
    }

    fn parse(text: &str) -> StoreResult<IdentityKind> {
        match text {
            "user" => Ok(IdentityKind::User),
            "client" => Ok(IdentityKind::Client),
            other => Err(StoreError::Corrupt(format!(
                "unknown identity kind {other:?}"
            ))),
        }
    }
}

/// Someone the service knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The id the protocol carries (`sub`, `globus_effective_identity`).
    pub identity_id: Uuid,
    /// The username (`alice`, or the client's name).
    pub username: String,
    /// Person or client.
    pub kind: IdentityKind,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
}

/// How a token came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Issued by an admin for a user; valid until revoked.
    User,
    /// Issued by the client-credentials grant to an endpoint client; expires.
    Client,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Client => "client",
        }
    }
}

/// The identity behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub identity: Identity,
    /// What kind of token they used.
    pub token_kind: TokenKind,
    /// The scope string the token was issued for (empty for user tokens).
    pub scope: String,
}

/// An endpoint's confidential client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointClient {
    /// The client id, which is also its identity id.
    pub client_id: Uuid,
    /// A name for people.
    pub name: String,
}

fn identity_from_row(row: &AnyRow) -> StoreResult<Identity> {
    Ok(Identity {
        identity_id: parse_uuid(&row.try_get::<String, _>("identity_id")?, "identity id")?,
        username: row.try_get("username")?,
        kind: IdentityKind::parse(&row.try_get::<String, _>("kind")?)?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    async fn insert_identity(
        &self,
        conn: &mut sqlx::AnyConnection,
        username: &str,
        kind: IdentityKind,
    ) -> StoreResult<Identity> {
        let identity = Identity {
            identity_id: Uuid::new_v4(),
            username: username.to_owned(),
            kind,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO identities (identity_id, username, kind, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(identity.identity_id.to_string())
        .bind(username)
        .bind(kind.as_str())
        .bind(identity.created_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("the name {username:?} is already taken"))
            } else {
                e.into()
            }
        })?;
        Ok(identity)
    }

    async fn insert_token(
        conn: &mut sqlx::AnyConnection,
        identity_id: Uuid,
        kind: TokenKind,
        scope: &str,
        expires_at: Option<i64>,
    ) -> StoreResult<String> {
        let token = new_secret(match kind {
            TokenKind::User => "gtu_",
            TokenKind::Client => "gtc_",
        });
        sqlx::query(
            "INSERT INTO tokens (token_hash, identity_id, kind, scope, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash_secret(&token))
        .bind(identity_id.to_string())
        .bind(kind.as_str())
        .bind(scope)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&mut *conn)
        .await?;
        Ok(token)
    }

    /// Creates a user and a first token for them; the token is returned once, never stored.
    pub async fn add_user(&self, username: &str) -> StoreResult<(Identity, String)> {
        let mut tx = self.begin_write().await?;
        let identity = self
            .insert_identity(&mut tx, username, IdentityKind::User)
            .await?;
        let token =
            Store::insert_token(&mut tx, identity.identity_id, TokenKind::User, "", None).await?;
        tx.commit().await?;
        Ok((identity, token))
    }

    /// Issues another token for an existing user.
    pub async fn issue_user_token(&self, username: &str) -> StoreResult<(Identity, String)> {
        let identity = self
            .identity_by_username(username)
            .await?
            .filter(|i| i.kind == IdentityKind::User)
            .ok_or_else(|| StoreError::NotFound(format!("no user named {username:?}")))?;
        let mut conn = self.pool.acquire().await?;
        let token =
            Store::insert_token(&mut conn, identity.identity_id, TokenKind::User, "", None).await?;
        Ok((identity, token))
    }

    /// Looks an identity up by name.
    pub async fn identity_by_username(&self, username: &str) -> StoreResult<Option<Identity>> {
        sqlx::query("SELECT * FROM identities WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(identity_from_row)
            .transpose()
    }

    /// Looks an identity up by id.
    pub async fn identity(&self, identity_id: Uuid) -> StoreResult<Option<Identity>> {
        sqlx::query("SELECT * FROM identities WHERE identity_id = $1")
            .bind(identity_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(identity_from_row)
            .transpose()
    }

    /// Every user, with the number of tokens that still work, by name.
    pub async fn list_users(&self) -> StoreResult<Vec<(Identity, i64)>> {
        let rows = sqlx::query(
            "SELECT i.identity_id, i.username, i.kind, i.created_at, \
               (SELECT COUNT(*) FROM tokens t WHERE t.identity_id = i.identity_id \
                  AND t.revoked_at IS NULL) AS active_tokens \
             FROM identities i WHERE i.kind = 'user' ORDER BY i.username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((identity_from_row(row)?, row.try_get("active_tokens")?)))
            .collect()
    }

    /// Revokes one token; returns whether it existed and was still active.
    pub async fn revoke_token(&self, token: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(hash_secret(token))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every token of the named identity; returns how many were active.
    pub async fn revoke_tokens_of(&self, username: &str) -> StoreResult<u64> {
        let identity = self
            .identity_by_username(username)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no user or client named {username:?}")))?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE identity_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(identity.identity_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The identity a bearer token stands for, if the token is known, unrevoked and
    /// unexpired.
    pub async fn authenticate(&self, token: &str) -> StoreResult<Option<Principal>> {
        let row = sqlx::query(
            "SELECT i.identity_id, i.username, i.kind, i.created_at, t.kind AS token_kind, \
               t.scope FROM tokens t JOIN identities i ON i.identity_id = t.identity_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
               AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(hash_secret(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token_kind = match row.try_get::<String, _>("token_kind")?.as_str() {
            "user" => TokenKind::User,
            "client" => TokenKind::Client,
            other => return Err(StoreError::Corrupt(format!("unknown token kind {other:?}"))),
        };
        Ok(Some(Principal {
            identity: identity_from_row(&row)?,
            token_kind,
            scope: row.try_get("scope")?,
        }))
    }

    /// Deletes every token that expired before now (revoked ones without an expiry
    /// stay, as a record); returns how many went. Client tokens expire, and every
    /// client-credentials grant makes new ones, so without this the table only grows.
    pub async fn prune_expired_tokens(&self) -> StoreResult<u64> {
        let done =
            sqlx::query("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= $1")
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// How many tokens of an identity are on record, expired and revoked ones included:
    /// what [`Store::prune_expired_tokens`] keeps bounded.
    pub async fn token_count(&self, identity_id: Uuid) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE identity_id = $1")
                .bind(identity_id.to_string())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Creates an endpoint client; the secret is returned once, never stored.
    pub async fn add_endpoint_client(&self, name: &str) -> StoreResult<(EndpointClient, String)> {
        let mut tx = self.begin_write().await?;
        let identity = self
            .insert_identity(&mut tx, name, IdentityKind::Client)
            .await?;
        let secret = new_secret("gts_");
        sqlx::query(
            "INSERT INTO endpoint_clients (client_id, name, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(identity.identity_id.to_string())
        .bind(name)
        .bind(hash_secret(&secret))
        .bind(identity.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            EndpointClient {
                client_id: identity.identity_id,
                name: name.to_owned(),
            },
            secret,
        ))
    }

    /// Checks a client id and secret (the client-credentials grant).
    pub async fn verify_client(
        &self,
        client_id: Uuid,
        secret: &str,
    ) -> StoreResult<Option<EndpointClient>> {
        let row = sqlx::query(
            "SELECT name FROM endpoint_clients WHERE client_id = $1 AND secret_hash = $2",
        )
        .bind(client_id.to_string())
        .bind(hash_secret(secret))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(EndpointClient {
                client_id,
                name: row.try_get("name")?,
            })
        })
        .transpose()
    }

    /// Issues an expiring access token to an endpoint client for `scope`.
    pub async fn issue_client_token(
        &self,
        client_id: Uuid,
        scope: &str,
        lifetime_ms: i64,
    ) -> StoreResult<String> {
        let mut conn = self.pool.acquire().await?;
        Store::insert_token(
            &mut conn,
            client_id,
            TokenKind::Client,
            scope,
            Some(now_ms() + lifetime_ms),
        )
        .await
    }
}
