//! Endpoint routes: registration by endpoint clients, and what users may see and do.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gantry_protocol::rest::{
    AllowedFunctionsResponse, EndpointDeleteResponse, EndpointLockResponse,
    EndpointRegistrationRequest, EndpointRegistrationResponse, EndpointStatusResponse,
    EndpointView,
};
use gantry_store::{EndpointRecord, EndpointRegistration};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::admin::BrokerCleanup;
use crate::auth::Caller;
use crate::dispatch;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::queues::provision_endpoint;
use crate::state::AppState;

use crate::access::can_manage_endpoint;
use crate::access::can_use_endpoint;

fn not_found(endpoint_id: Uuid) -> ApiError {
    ApiError::not_found(
        "ENDPOINT_NOT_FOUND",
        format!("endpoint {endpoint_id} not found"),
    )
}

/// The endpoint named by a path segment, if the caller may see it; otherwise the same
/// 404 as for an unknown id, so ids of others' endpoints are not confirmed.
async fn visible_endpoint(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> ApiResult<EndpointRecord> {
    let endpoint_id = parse_id(raw_id, "endpoint id")?;
    state
        .store
        .endpoint(endpoint_id)
        .await?
        .filter(|ep| can_use_endpoint(caller, ep))
        .ok_or_else(|| not_found(endpoint_id))
}

async fn register(
    state: &AppState,
    caller: &Caller,
    endpoint_id: Uuid,
    request: EndpointRegistrationRequest,
) -> ApiResult<Json<EndpointRegistrationResponse>> {
    caller.require_client()?;
    if endpoint_id.get_version_num() == 5 {
        // The service names user endpoints with version-5 ids derived from public
        // inputs; letting anyone register such an id would let them claim a user's
        // future UEP, and with it that user's tasks.
        return Err(ApiError::bad_request(
            "INVALID_ENDPOINT_ID",
            format!(
                "endpoint id {endpoint_id} is a version-5 UUID, which is reserved for user \
                 endpoints the service names; register with a random (version 4) id or none"
            ),
        ));
    }
    if request.endpoint_name.trim().is_empty() {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            "endpoint_name must not be empty",
        ));
    }
    let registration = EndpointRegistration {
        name: request.endpoint_name,
        display_name: request.display_name,
        multi_user: request.multi_user,
        public: request.public.unwrap_or(false),
        high_assurance: request.high_assurance.unwrap_or(false),
        allowed_functions: request.allowed_functions,
        metadata: request.metadata.unwrap_or_default(),
    };
    let existing = state.store.endpoint(endpoint_id).await?;
    if let Some(existing) = &existing
        && !can_manage_endpoint(caller, existing)
    {
        // As for a GET: an id the caller may not see is not found (a conflict would
        // confirm that it exists); one it may see belongs to another client.
        return Err(not_yours(caller, existing));
    }
    if let Some(existing) = &existing
        && existing.multi_user != registration.multi_user
    {
        return Err(ApiError::conflict(
            "ENDPOINT_KIND_CHANGED",
            format!(
                "endpoint {endpoint_id} was registered as {} and cannot become {}; \
                 configure a new endpoint instead",
                kind(existing.multi_user),
                kind(registration.multi_user)
            ),
        ));
    }
    let stored = state
        .store
        .register_endpoint(endpoint_id, caller.identity_id(), &registration)
        .await
        .map_err(|e| match e {
            // Registered by another client since the check above.
            gantry_store::StoreError::Conflict(_) => not_found(endpoint_id),
            other => other.into(),
        })?;
    let response = provision_endpoint(state, &stored).await?;
    tracing::info!(
        endpoint_id = %endpoint_id, multi_user = stored.multi_user,
        client = %caller.0.identity.username, "endpoint registered"
    );
    Ok(Json(response))
}

fn kind(multi_user: bool) -> &'static str {
    if multi_user {
        "a multi-user endpoint"
    } else {
        "a single-user endpoint"
    }
}

/// `POST /v3/endpoints`: registers a new endpoint (with a new or a chosen id).
pub async fn register_new(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<EndpointRegistrationRequest>,
) -> ApiResult<Json<EndpointRegistrationResponse>> {
    let endpoint_id = request.endpoint_id.unwrap_or_else(Uuid::new_v4);
    register(&state, &caller, endpoint_id, request).await
}

/// `PUT /v3/endpoints/{id}`: registers again, or for the first time with this id.
pub async fn register_existing(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
    ApiJson(request): ApiJson<EndpointRegistrationRequest>,
) -> ApiResult<Json<EndpointRegistrationResponse>> {
    let endpoint_id = parse_id(&endpoint_id, "endpoint id")?;
    if request.endpoint_id.is_some_and(|id| id != endpoint_id) {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            "the endpoint_id in the body differs from the one in the path",
        ));
    }
    register(&state, &caller, endpoint_id, request).await
}

fn metadata_view(endpoint: &EndpointRecord) -> EndpointView {
    EndpointView {
        uuid: endpoint.endpoint_id,
        endpoint_id: endpoint.endpoint_id,
        name: endpoint.name.clone(),
        display_name: endpoint.display_name.clone(),
        multi_user: endpoint.multi_user,
        public: endpoint.public,
        high_assurance: endpoint.high_assurance,
        locked: endpoint.locked,
        owner: endpoint.owner_identity_id,
        allowed_functions: endpoint.allowed_functions.clone(),
        metadata: endpoint.metadata.clone(),
        parent_endpoint_id: endpoint.uep.as_ref().map(|uep| uep.mep_id),
        user_endpoint_config: endpoint.uep.as_ref().map(|uep| uep.user_config.clone()),
    }
}

/// `GET /v2/endpoints/{id}`.
pub async fn get_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
) -> ApiResult<Json<EndpointView>> {
    let endpoint = visible_endpoint(&state, &caller, &endpoint_id).await?;
    Ok(Json(metadata_view(&endpoint)))
}

/// The query of `GET /v2/endpoints` (the SDK's `Client.get_endpoints(role=...)`).
#[derive(Debug, Deserialize)]
pub struct ListEndpointsQuery {
    /// `owner` (the default) or `any`.
    #[serde(default)]
    role: Option<String>,
}

/// `GET /v2/endpoints`. `role=owner` (the default, as in Globus Compute): the endpoints
/// the caller registered, or for a user the UEPs that run their tasks. `role=any`:
/// also every endpoint the caller may submit to, which is how a user discovers the
/// multi-user endpoints of their sites (and public endpoints).
pub async fn list_endpoints(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListEndpointsQuery>,
) -> ApiResult<Json<Vec<EndpointView>>> {
    let endpoints = match query.role.as_deref() {
        None | Some("owner") => state.store.endpoints_of(caller.identity_id()).await?,
        Some("any") => {
            state
                .store
                .endpoints_usable_by(caller.identity_id())
                .await?
        }
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(ApiError::bad_request(
                "INVALID_ROLE",
                format!(
                    "role {shown:?} is not known; ask for role=owner (the endpoints you own) \
                     or role=any (every endpoint you may use)"
                ),
            ));
        }
    };
    Ok(Json(endpoints.iter().map(metadata_view).collect()))
}

/// `GET /v2/endpoints/{id}/status`.
pub async fn endpoint_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
) -> ApiResult<Json<EndpointStatusResponse>> {
    let endpoint = visible_endpoint(&state, &caller, &endpoint_id).await?;
    let online = endpoint.is_online(gantry_store::now_ms());
    let mut details: Map<String, Value> = endpoint.global_state.clone().unwrap_or_default();
    details.insert(
        "last_heartbeat".into(),
        json!(endpoint.last_heartbeat_at.map(|ms| ms as f64 / 1000.0)),
    );
    Ok(Json(EndpointStatusResponse {
        status: if online { "online" } else { "offline" }.into(),
        details,
    }))
}

/// `GET /v3/endpoints/{id}/allowed_functions`.
pub async fn allowed_functions(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
) -> ApiResult<Json<AllowedFunctionsResponse>> {
    let endpoint = visible_endpoint(&state, &caller, &endpoint_id).await?;
    Ok(Json(AllowedFunctionsResponse {
        endpoint_id: endpoint.endpoint_id,
        functions: endpoint.allowed_functions.unwrap_or_default(),
    }))
}

async fn managed_endpoint(
    state: &AppState,
    caller: &Caller,
    endpoint_id: &str,
) -> ApiResult<EndpointRecord> {
    let endpoint_id = parse_id(endpoint_id, "endpoint id")?;
    let endpoint = state
        .store
        .endpoint(endpoint_id)
        .await?
        .ok_or_else(|| not_found(endpoint_id))?;
    if !can_manage_endpoint(caller, &endpoint) {
        return Err(not_yours(caller, &endpoint));
    }
    Ok(endpoint)
}

/// The refusal of a change to an endpoint the caller did not register: 403 when the
/// caller may see it anyway (a GET shows it), otherwise the 404 of an unknown id.
fn not_yours(caller: &Caller, endpoint: &EndpointRecord) -> ApiError {
    if can_use_endpoint(caller, endpoint) {
        ApiError::forbidden(
            "NOT_ENDPOINT_OWNER",
            format!(
                "only the client that registered endpoint {} may change it",
                endpoint.endpoint_id
            ),
        )
    } else {
        not_found(endpoint.endpoint_id)
    }
}

/// `POST /v3/endpoints/{id}/lock`: the endpoint takes no new tasks.
pub async fn lock_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
) -> ApiResult<Json<EndpointLockResponse>> {
    let endpoint = managed_endpoint(&state, &caller, &endpoint_id).await?;
    state.store.lock_endpoint(endpoint.endpoint_id).await?;
    Ok(Json(EndpointLockResponse {
        endpoint_id: endpoint.endpoint_id,
        locked: true,
    }))
}

/// `DELETE /v2/endpoints/{id}`: removes it, its UEPs, their queues and accounts.
/// Tasks and results stay readable by their owners.
pub async fn delete_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(endpoint_id): Path<String>,
) -> ApiResult<(StatusCode, Json<EndpointDeleteResponse>)> {
    let endpoint = managed_endpoint(&state, &caller, &endpoint_id).await?;
    // Tasks still waiting would wait forever: they fail with the deletion, and their
    // submitters hear why (the outbox retries what cannot be forwarded now).
    let (removed, failed) = state
        .store
        .delete_endpoint(
            endpoint.endpoint_id,
            dispatch::ENDPOINT_DELETED_CODE,
            &format!(
                "the endpoint {} was deleted before the task ran",
                endpoint.endpoint_id
            ),
        )
        .await?;
    // The database change is made: a broker that fails now leaves a queue or an account
    // behind (logged), never a failed request.
    let cleanup = BrokerCleanup::for_service(&state);
    for id in &removed {
        let multi_user = *id == endpoint.endpoint_id && endpoint.multi_user;
        if let Err(error) = cleanup.remove_endpoint(*id, multi_user).await {
            tracing::warn!(%error, endpoint_id = %id, "could not delete the endpoint's queue or broker account");
        }
        state.forget_account(&state.settings.deployment.endpoint_account(*id));
    }
    dispatch::forward_failures(&state, &failed).await;
    Ok((
        StatusCode::OK,
        Json(EndpointDeleteResponse {
            result: 302,
            removed,
        }),
    ))
}
