//! People, endpoint clients, and the bearer tokens that stand for them.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::secret::{hash_secret, new_salt, new_secret};
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
    /// Mixed into the password of the identity's broker account (a user's result
    /// login); changed when the identity's credentials are revoked.
    pub broker_salt: String,
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

/// A confidential client: an endpoint's (registers and runs endpoints), or a user's
/// (signs a script in without a person at the keyboard, and acts as that user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointClient {
    /// The client id, which is also its identity id.
    pub client_id: Uuid,
    /// A name for people.
    pub name: String,
    /// For a user client, the user its tokens act as; `None` for an endpoint client.
    pub acts_as: Option<Uuid>,
    /// When it was created (ms).
    pub created_at: i64,
    /// When an administrator revoked it (ms); a revoked client mints no tokens.
    pub revoked_at: Option<i64>,
}

impl EndpointClient {
    /// The identity its tokens stand for: the user it acts as, or the client itself.
    pub fn token_identity(&self) -> Uuid {
        self.acts_as.unwrap_or(self.client_id)
    }
}

/// A client as `admin list-clients` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// The client.
    pub client: EndpointClient,
    /// For a user client, the user's name.
    pub acts_as_username: Option<String>,
    /// Tokens its grants issued that still work.
    pub active_tokens: i64,
    /// Endpoints it registered (user endpoints under them not counted).
    pub endpoints: i64,
}

/// What revoking credentials changed, so that the caller can remove the broker
/// accounts whose passwords they revealed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocation {
    /// Tokens revoked.
    pub tokens: u64,
    /// Identities whose broker password changed (a user's result login).
    pub identities: Vec<Uuid>,
    /// Endpoints whose broker password changed (a client's endpoints and their user
    /// endpoints).
    pub endpoints: Vec<Uuid>,
    /// Endpoints locked for good (a revoked client's): their unfinished tasks failed.
    pub locked: Vec<Uuid>,
    /// Tasks failed because their endpoint's client was revoked (marked to be
    /// forwarded to their submitters).
    pub failed_tasks: u64,
}

/// The error code of a task failed because its endpoint's client was revoked.
pub const CLIENT_REVOKED_CODE: &str = "ENDPOINT_CLIENT_REVOKED";

fn client_from_row(row: &AnyRow) -> StoreResult<EndpointClient> {
    Ok(EndpointClient {
        client_id: parse_uuid(&row.try_get::<String, _>("client_id")?, "client id")?,
        name: row.try_get("name")?,
        acts_as: row
            .try_get::<Option<String>, _>("acts_as_identity_id")?
            .map(|id| parse_uuid(&id, "acted-as identity"))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn identity_from_row(row: &AnyRow) -> StoreResult<Identity> {
    Ok(Identity {
        identity_id: parse_uuid(&row.try_get::<String, _>("identity_id")?, "identity id")?,
        username: row.try_get("username")?,
        kind: IdentityKind::parse(&row.try_get::<String, _>("kind")?)?,
        created_at: row.try_get("created_at")?,
        broker_salt: row.try_get("broker_salt")?,
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
            broker_salt: new_salt(),
        };
        sqlx::query(
            "INSERT INTO identities (identity_id, username, kind, created_at, broker_salt) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(identity.identity_id.to_string())
        .bind(username)
        .bind(kind.as_str())
        .bind(identity.created_at)
        .bind(&identity.broker_salt)
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
        client_id: Option<Uuid>,
    ) -> StoreResult<String> {
        let token = new_secret(match kind {
            TokenKind::User => "gtu_",
            TokenKind::Client => "gtc_",
        });
        sqlx::query(
            "INSERT INTO tokens (token_hash, identity_id, kind, scope, created_at, expires_at, \
               client_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash_secret(&token))
        .bind(identity_id.to_string())
        .bind(kind.as_str())
        .bind(scope)
        .bind(now_ms())
        .bind(expires_at)
        .bind(client_id.map(|id| id.to_string()))
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
        let token = Store::insert_token(
            &mut tx,
            identity.identity_id,
            TokenKind::User,
            "",
            None,
            None,
        )
        .await?;
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
        let token = Store::insert_token(
            &mut conn,
            identity.identity_id,
            TokenKind::User,
            "",
            None,
            None,
        )
        .await?;
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
            "SELECT i.identity_id, i.username, i.kind, i.created_at, i.broker_salt, \
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

    /// Revokes one token, and gives the broker logins it could have fetched new
    /// passwords: a user's token, the user's result login
    /// (`get_amqp_result_connection_url`); an endpoint client's, the logins of the
    /// client's endpoints and their user endpoints (a registration hands them out; the
    /// real endpoint registers again with its secret and gets the new ones). Returns
    /// `None` when no active token matches.
    pub async fn revoke_token(&self, token: &str) -> StoreResult<Option<Revocation>> {
        let mut tx = self.begin_write().await?;
        let holder: Option<(String, String)> = sqlx::query_as(
            "SELECT t.identity_id, i.kind FROM tokens t \
               JOIN identities i ON i.identity_id = t.identity_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        )
        .bind(hash_secret(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((identity_id, kind)) = holder else {
            return Ok(None);
        };
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2")
            .bind(now_ms())
            .bind(hash_secret(token))
            .execute(&mut *tx)
            .await?;
        let mut revocation = Revocation {
            tokens: 1,
            ..Revocation::default()
        };
        let identity_id = parse_uuid(&identity_id, "identity id")?;
        rotate_what_a_token_revealed(
            &mut tx,
            identity_id,
            IdentityKind::parse(&kind)?,
            &mut revocation,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(revocation))
    }

    /// Revokes every token of the named user or client: a user's own and those its user
    /// clients were issued; a client's, including, for a user client, the tokens it was
    /// issued to act as its user. The broker logins they could have fetched get new
    /// passwords, as [`Store::revoke_token`] says.
    pub async fn revoke_tokens_of(&self, username: &str) -> StoreResult<Revocation> {
        let identity = self
            .identity_by_username(username)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no user or client named {username:?}")))?;
        let acts_as = match identity.kind {
            IdentityKind::Client => self
                .client(&identity.identity_id.to_string())
                .await?
                .and_then(|client| client.acts_as),
            IdentityKind::User => None,
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 \
             WHERE (identity_id = $2 OR client_id = $2) AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(identity.identity_id.to_string())
        .execute(&mut *tx)
        .await?;
        let mut revocation = Revocation {
            tokens: done.rows_affected(),
            ..Revocation::default()
        };
        match acts_as {
            // A user client's tokens stood for its user.
            Some(user) => {
                rotate_what_a_token_revealed(&mut tx, user, IdentityKind::User, &mut revocation)
                    .await?
            }
            None => {
                rotate_what_a_token_revealed(
                    &mut tx,
                    identity.identity_id,
                    identity.kind,
                    &mut revocation,
                )
                .await?
            }
        }
        tx.commit().await?;
        Ok(revocation)
    }

    /// The identity a bearer token stands for, if the token is known, unrevoked and
    /// unexpired.
    pub async fn authenticate(&self, token: &str) -> StoreResult<Option<Principal>> {
        let row = sqlx::query(
            "SELECT i.identity_id, i.username, i.kind, i.created_at, i.broker_salt, \
               t.kind AS token_kind, \
               t.scope FROM tokens t JOIN identities i ON i.identity_id = t.identity_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
               AND (t.expires_at IS NULL OR t.expires_at > $2) \
               AND NOT EXISTS (SELECT 1 FROM endpoint_clients c \
                 WHERE c.revoked_at IS NOT NULL \
                   AND (c.client_id = t.client_id OR c.client_id = t.identity_id))",
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
        self.insert_client(name, None).await
    }

    /// Creates a user client: credentials for `username`'s scripts (the SDK's
    /// `GLOBUS_COMPUTE_CLIENT_ID`/`_SECRET`), whose tokens act as that user. Its own
    /// name is `<username>/client-<8 hex digits>`. The secret is returned once.
    pub async fn add_user_client(&self, username: &str) -> StoreResult<(EndpointClient, String)> {
        let user = self
            .identity_by_username(username)
            .await?
            .filter(|i| i.kind == IdentityKind::User)
            .ok_or_else(|| StoreError::NotFound(format!("no user named {username:?}")))?;
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).expect("the operating system's random source works");
        let name = format!("{username}/client-{}", hex::encode(tag));
        self.insert_client(&name, Some(user.identity_id)).await
    }

    async fn insert_client(
        &self,
        name: &str,
        acts_as: Option<Uuid>,
    ) -> StoreResult<(EndpointClient, String)> {
        let mut tx = self.begin_write().await?;
        let identity = self
            .insert_identity(&mut tx, name, IdentityKind::Client)
            .await?;
        let secret = new_secret("gts_");
        sqlx::query(
            "INSERT INTO endpoint_clients (client_id, name, secret_hash, created_at, \
               acts_as_identity_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(identity.identity_id.to_string())
        .bind(name)
        .bind(hash_secret(&secret))
        .bind(identity.created_at)
        .bind(acts_as.map(|id| id.to_string()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            EndpointClient {
                client_id: identity.identity_id,
                name: name.to_owned(),
                acts_as,
                created_at: identity.created_at,
                revoked_at: None,
            },
            secret,
        ))
    }

    /// Checks a client id and secret (the client-credentials grant); a revoked client
    /// does not pass.
    pub async fn verify_client(
        &self,
        client_id: Uuid,
        secret: &str,
    ) -> StoreResult<Option<EndpointClient>> {
        sqlx::query(
            "SELECT * FROM endpoint_clients WHERE client_id = $1 AND secret_hash = $2 \
               AND revoked_at IS NULL",
        )
        .bind(client_id.to_string())
        .bind(hash_secret(secret))
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(client_from_row)
        .transpose()
    }

    /// Issues an expiring access token for `scope` to a client: it stands for the user
    /// a user client acts as, or for the endpoint client itself.
    pub async fn issue_client_token(
        &self,
        client: &EndpointClient,
        scope: &str,
        lifetime_ms: i64,
    ) -> StoreResult<String> {
        let mut conn = self.pool.acquire().await?;
        Store::insert_token(
            &mut conn,
            client.token_identity(),
            TokenKind::Client,
            scope,
            Some(now_ms() + lifetime_ms),
            Some(client.client_id),
        )
        .await
    }

    /// Every client, endpoint and user clients alike, by name.
    pub async fn list_clients(&self) -> StoreResult<Vec<ClientSummary>> {
        let rows = sqlx::query(
            "SELECT c.*, u.username AS acts_as_username, \
               (SELECT COUNT(*) FROM tokens t WHERE t.client_id = c.client_id \
                  AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $1)) \
                 AS active_tokens, \
               (SELECT COUNT(*) FROM endpoints e WHERE e.owner_identity_id = c.client_id \
                  AND e.parent_endpoint_id IS NULL) AS endpoint_count \
             FROM endpoint_clients c \
               LEFT JOIN identities u ON u.identity_id = c.acts_as_identity_id \
             ORDER BY c.name",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClientSummary {
                    client: client_from_row(row)?,
                    acts_as_username: row.try_get("acts_as_username")?,
                    active_tokens: row.try_get("active_tokens")?,
                    endpoints: row.try_get("endpoint_count")?,
                })
            })
            .collect()
    }

    /// A client by id or by name.
    pub async fn client(&self, id_or_name: &str) -> StoreResult<Option<EndpointClient>> {
        let key = Uuid::parse_str(id_or_name)
            .map(|id| id.to_string())
            .unwrap_or_else(|_| id_or_name.to_owned());
        sqlx::query("SELECT * FROM endpoint_clients WHERE client_id = $1 OR name = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(client_from_row)
            .transpose()
    }

    /// Revokes a client (by id or name) in one transaction: its secret mints no more
    /// tokens, every token it was issued stops working, and the broker passwords its
    /// credentials revealed change: its endpoints' and their user endpoints' (which are
    /// also locked, their unfinished tasks failed and marked to be forwarded), and for
    /// a user client the user's result login. Revoking a revoked client again changes
    /// the passwords again and reports the same endpoints, so that an administrator
    /// can repeat a revocation whose broker clean-up failed.
    pub async fn revoke_client(
        &self,
        id_or_name: &str,
    ) -> StoreResult<(EndpointClient, Revocation)> {
        let client = self
            .client(id_or_name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no client {id_or_name:?}")))?;
        let now = now_ms();
        let id = client.client_id.to_string();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE endpoint_clients SET revoked_at = $1 WHERE client_id = $2 \
               AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        let tokens = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE (client_id = $2 OR identity_id = $2) \
               AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Its own endpoints' rows first, before their user endpoints are listed: a
        // submit takes the row of the endpoint it names first too (`insert_submit_within`),
        // so on PostgreSQL the two take turns, and a user endpoint that such a submit
        // made meanwhile is in the list below.
        sqlx::query(
            "UPDATE endpoints SET locked = 1 WHERE owner_identity_id = $1 \
               AND parent_endpoint_id IS NULL",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        let endpoints = endpoints_of_client(&mut tx, client.client_id).await?;
        let mut revocation = Revocation {
            tokens,
            ..Revocation::default()
        };
        let message = format!(
            "the endpoint's client {} was revoked by the administrator before the task ran",
            client.name
        );
        for endpoint in endpoints {
            sqlx::query("UPDATE endpoints SET locked = 1, broker_salt = $1 WHERE endpoint_id = $2")
                .bind(new_salt())
                .bind(endpoint.to_string())
                .execute(&mut *tx)
                .await?;
            revocation.failed_tasks += crate::tasks::fail_endpoint_tasks(
                &mut *tx,
                endpoint,
                CLIENT_REVOKED_CODE,
                &message,
            )
            .await?
            .len() as u64;
            revocation.endpoints.push(endpoint);
            revocation.locked.push(endpoint);
        }
        if let Some(user) = client.acts_as {
            rotate_identity_salt(&mut tx, user).await?;
            revocation.identities.push(user);
        }
        tx.commit().await?;
        let client = self
            .client(&id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("client {id} vanished")))?;
        Ok((client, revocation))
    }
}

/// Gives new broker passwords to what a token of `identity` could have fetched: a user's
/// result login, or an endpoint client's endpoints and their user endpoints.
async fn rotate_what_a_token_revealed(
    conn: &mut sqlx::AnyConnection,
    identity: Uuid,
    kind: IdentityKind,
    revocation: &mut Revocation,
) -> StoreResult<()> {
    match kind {
        IdentityKind::User => {
            rotate_identity_salt(&mut *conn, identity).await?;
            revocation.identities.push(identity);
        }
        IdentityKind::Client => {
            for endpoint in endpoints_of_client(&mut *conn, identity).await? {
                sqlx::query("UPDATE endpoints SET broker_salt = $1 WHERE endpoint_id = $2")
                    .bind(new_salt())
                    .bind(endpoint.to_string())
                    .execute(&mut *conn)
                    .await?;
                revocation.endpoints.push(endpoint);
            }
        }
    }
    Ok(())
}

/// The endpoints a client registered, and their user endpoints.
async fn endpoints_of_client(
    conn: &mut sqlx::AnyConnection,
    client: Uuid,
) -> StoreResult<Vec<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT endpoint_id FROM endpoints WHERE owner_identity_id = $1 \
           AND parent_endpoint_id IS NULL \
         UNION SELECT c.endpoint_id FROM endpoints c JOIN endpoints p \
           ON c.parent_endpoint_id = p.endpoint_id WHERE p.owner_identity_id = $1",
    )
    .bind(client.to_string())
    .fetch_all(&mut *conn)
    .await?;
    ids.iter().map(|id| parse_uuid(id, "endpoint id")).collect()
}

/// Gives an identity's broker account a new password (see `broker_salt`).
async fn rotate_identity_salt(
    conn: &mut sqlx::AnyConnection,
    identity_id: Uuid,
) -> StoreResult<()> {
    sqlx::query("UPDATE identities SET broker_salt = $1 WHERE identity_id = $2")
        .bind(new_salt())
        .bind(identity_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
