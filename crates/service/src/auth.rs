//! Bearer-token authentication: every route but the version check needs a valid token,
//! which names a user (admin-issued) or an endpoint client (client-credentials grant).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use gantry_store::{Principal, TokenKind};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a route.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// The caller's identity id.
    pub fn identity_id(&self) -> uuid::Uuid {
        self.0.identity.identity_id
    }

    // What a caller may do is decided in `crate::access`.
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller behind a valid token, whatever resource server it was issued for.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let token = bearer_token(parts).ok_or_else(|| {
        ApiError::unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' (an admin issues \
             tokens with 'gantry-service admin add-user')",
        )
    })?;
    let principal = state
        .store
        .authenticate(token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))?;
    Ok(Caller(principal))
}

/// The compute API's routes take user tokens and client tokens issued for the compute
/// resource server, not a client's token for the auth API (which only `userinfo` takes).
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticate(parts, state).await?;
        let principal = &caller.0;
        if principal.token_kind == TokenKind::Client
            && !principal.scope.is_empty()
            && crate::routes::oauth::resource_server_of(&principal.scope)
                != crate::routes::oauth::COMPUTE_RESOURCE_SERVER
        {
            return Err(ApiError::forbidden(
                "WRONG_RESOURCE_SERVER",
                "this token was issued for the auth API (userinfo); request a token for the \
                 compute API's scope to call this route",
            ));
        }
        Ok(caller)
    }
}

/// A caller with a token for any resource server: what `userinfo` accepts.
#[derive(Debug, Clone)]
pub struct AnyResourceCaller(pub Caller);

impl FromRequestParts<AppState> for AnyResourceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(AnyResourceCaller(authenticate(parts, state).await?))
    }
}
