//! Bearer-token authentication: every route but the version check needs a valid token,
//! which names a user (admin-issued) or an endpoint client (client-credentials grant).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use gantry_store::{IdentityKind, Principal};

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

    /// Refuses callers that are not users (endpoint clients cannot submit tasks).
    pub fn require_user(&self) -> Result<(), ApiError> {
        match self.0.identity.kind {
            IdentityKind::User => Ok(()),
            IdentityKind::Client => Err(ApiError::forbidden(
                "USER_TOKEN_REQUIRED",
                "this route is for users; endpoint client tokens cannot use it",
            )),
        }
    }
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>' (an admin issues \
                 tokens with 'gantry-service admin add-user')",
            )
        })?;
        let principal =
            state.store.authenticate(token).await?.ok_or_else(|| {
                ApiError::unauthorized("the token is unknown, revoked or expired")
            })?;
        Ok(Caller(principal))
    }
}
