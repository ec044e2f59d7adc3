//! The slice of an OAuth2 provider the official endpoint needs: the client-credentials
//! grant (one access token per requested resource server) and `userinfo`.
//!
//! Endpoints cannot take a static token; they authenticate as a confidential client
//! (`GLOBUS_COMPUTE_CLIENT_ID`/`_SECRET`, created with
//! `gantry-service admin add-endpoint-client`) against this route, which they find
//! through `GLOBUS_SDK_SERVICE_URL_AUTH`.

use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use gantry_protocol::rest::{IdentityDocument, TokenResponse, UserInfo};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{AnyResourceCaller, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The identity provider Gantry names in identity documents.
pub const IDENTITY_PROVIDER: &str = "gantry";

/// The resource server of the compute API.
pub const COMPUTE_RESOURCE_SERVER: &str = "funcx_service";
/// The compute API's scope client id, which appears in its scope URLs.
const COMPUTE_SCOPE_CLIENT_ID: &str = "facd7ccc-c5f4-42aa-916b-a0e270e2c2a9";
/// The resource server of the auth API (userinfo).
pub const AUTH_RESOURCE_SERVER: &str = "auth.globus.org";

/// The form of a token request.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// The resource server a requested scope belongs to.
pub(crate) fn resource_server_of(scope: &str) -> &'static str {
    if scope.contains(COMPUTE_SCOPE_CLIENT_ID) || scope.contains(COMPUTE_RESOURCE_SERVER) {
        COMPUTE_RESOURCE_SERVER
    } else {
        AUTH_RESOURCE_SERVER
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> ApiError {
    ApiError::new(status, error, description.to_owned())
}

/// `POST /v2/oauth2/token`: the client-credentials grant.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(request): Form<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if request.grant_type != "client_credentials" {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        ));
    }
    let (client_id, secret) = basic_credentials(&headers)
        .or_else(|| Some((request.client_id.clone()?, request.client_secret.clone()?)))
        .ok_or_else(|| {
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "send the client id and secret with HTTP Basic",
            )
        })?;
    let client_id = Uuid::parse_str(&client_id)
        .map_err(|_| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client"))?;
    let client = state
        .store
        .verify_client(client_id, &secret)
        .await?
        .ok_or_else(|| {
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            )
        })?;

    // Group the requested scopes by resource server; one token each.
    let requested = request.scope.unwrap_or_default();
    let mut groups: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for scope in checked_scopes(&requested)? {
        let server = resource_server_of(scope);
        match groups.iter_mut().find(|(s, _)| *s == server) {
            Some((_, scopes)) if scopes.contains(&scope) => {}
            Some((_, scopes)) => scopes.push(scope),
            None => groups.push((server, vec![scope])),
        }
    }
    if groups.is_empty() {
        groups.push((COMPUTE_RESOURCE_SERVER, vec![]));
    }
    let lifetime = state.settings.client_token_lifetime_s;
    let mut tokens = Vec::with_capacity(groups.len());
    for (server, scopes) in &groups {
        let scope = scopes.join(" ");
        let token = state
            .store
            .issue_client_token(&client, &scope, lifetime * 1000)
            .await?;
        tokens.push(TokenResponse {
            access_token: token,
            expires_in: Some(u64::try_from(lifetime).unwrap_or(0)),
            resource_server: (*server).to_owned(),
            scope,
            token_type: "Bearer".to_owned(),
            other_tokens: Vec::new(),
        });
    }
    let mut first = tokens.remove(0);
    first.other_tokens = tokens;
    tracing::info!(client = %client.name, "issued client-credentials tokens");
    Ok(Json(first))
}

/// The most scopes one token request may name.
const MAX_SCOPES: usize = 16;

/// The scopes of a token request, each one Gantry issues tokens for: the compute API's
/// (`https://auth.globus.org/scopes/<compute client id>/<name>`) and the auth API's
/// (`openid`, `email`, `profile`, `urn:globus:auth:scope:auth.globus.org:<name>`).
/// Anything else is refused with OAuth's `invalid_scope`, as Globus Auth does, rather
/// than stored with the token.
fn checked_scopes(requested: &str) -> ApiResult<Vec<&str>> {
    let scopes: Vec<&str> = requested.split_whitespace().collect();
    if scopes.len() > MAX_SCOPES {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "{} scopes requested; ask for at most {MAX_SCOPES}",
                scopes.len()
            ),
        ));
    }
    let is_name = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let compute_prefix = format!("https://auth.globus.org/scopes/{COMPUTE_SCOPE_CLIENT_ID}/");
    for scope in &scopes {
        let known = matches!(*scope, "openid" | "email" | "profile")
            || scope.strip_prefix(&compute_prefix).is_some_and(is_name)
            || scope
                .strip_prefix("urn:globus:auth:scope:auth.globus.org:")
                .is_some_and(is_name);
        if !known {
            let shown: String = scope.chars().take(80).collect();
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!(
                    "this service issues no tokens for the scope {shown:?}; ask for \
                     {compute_prefix}all (the compute API) and openid or \
                     urn:globus:auth:scope:auth.globus.org:manage_projects (the auth API)"
                ),
            ));
        }
    }
    Ok(scopes)
}

/// The identity provider's name for people.
const IDENTITY_PROVIDER_DISPLAY_NAME: &str = "Gantry";

/// The identity document of a caller, as `userinfo` and identity lookups show it.
pub fn identity_document(caller: &Caller) -> IdentityDocument {
    let identity = &caller.0.identity;
    let username = match identity.kind {
        gantry_store::IdentityKind::Client => {
            format!("{}@clients.auth.globus.org", identity.identity_id)
        }
        gantry_store::IdentityKind::User => identity.username.clone(),
    };
    IdentityDocument {
        sub: identity.identity_id,
        id: identity.identity_id,
        username,
        name: identity.username.clone(),
        email: None,
        organization: None,
        identity_provider: IDENTITY_PROVIDER.to_owned(),
        identity_provider_display_name: IDENTITY_PROVIDER_DISPLAY_NAME.to_owned(),
        status: "used".to_owned(),
    }
}

/// `GET /v2/oauth2/userinfo`.
pub async fn userinfo(AnyResourceCaller(caller): AnyResourceCaller) -> Json<UserInfo> {
    let document = identity_document(&caller);
    Json(UserInfo {
        sub: document.sub,
        preferred_username: document.username.clone(),
        name: document.name.clone(),
        email: None,
        identity_provider: IDENTITY_PROVIDER.to_owned(),
        identity_provider_display_name: IDENTITY_PROVIDER_DISPLAY_NAME.to_owned(),
        organization: None,
        last_authentication: None,
        identity_set: vec![document],
    })
}
