//! The HTTP routes, by audience: the SDK's (functions, tasks), the endpoints'
//! (registration, OAuth2), and both (endpoint metadata and status).

pub mod endpoints;
pub mod functions;
pub mod oauth;
pub mod tasks;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use gantry_protocol::rest::VersionResponse;

use crate::error::ApiError;
use crate::state::AppState;

/// The oldest SDK and endpoint versions the service accepts.
pub const MIN_CLIENT_VERSION: &str = "2.0.0";

/// `GET /v2/version`: public, so clients can check compatibility before they log in.
async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        api: env!("CARGO_PKG_VERSION").to_owned(),
        min_sdk_version: MIN_CLIENT_VERSION.to_owned(),
        min_ep_version: MIN_CLIENT_VERSION.to_owned(),
    })
}

async fn fallback() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no such route")
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    Router::new()
        .route("/v2/version", get(version))
        .route("/v3/functions", post(functions::register_function))
        .route(
            "/v2/functions/{id}",
            get(functions::get_function).delete(functions::delete_function),
        )
        .route("/v3/endpoints/{id}/submit", post(tasks::submit))
        .route("/v2/tasks/{id}", get(tasks::get_task))
        .route("/v2/batch_status", post(tasks::batch_status))
        .route("/v2/taskgroup/{id}", get(tasks::get_task_group))
        .route(
            "/v2/get_amqp_result_connection_url",
            get(tasks::amqp_result_url),
        )
        .route("/v3/endpoints", post(endpoints::register_new))
        .route("/v3/endpoints/{id}", put(endpoints::register_existing))
        .route("/v2/endpoints", get(endpoints::list_endpoints))
        .route(
            "/v2/endpoints/{id}",
            get(endpoints::get_endpoint).delete(endpoints::delete_endpoint),
        )
        .route("/v2/endpoints/{id}/status", get(endpoints::endpoint_status))
        .route("/v3/endpoints/{id}/lock", post(endpoints::lock_endpoint))
        .route(
            "/v3/endpoints/{id}/allowed_functions",
            get(endpoints::allowed_functions),
        )
        .route("/v2/oauth2/token", post(oauth::token))
        .route(
            "/v2/oauth2/userinfo",
            get(oauth::userinfo).post(oauth::userinfo),
        )
        .fallback(fallback)
        .layer(axum::middleware::from_fn(crate::error::json_error_bodies))
        .layer(DefaultBodyLimit::max(max_body))
        // Failures are logged once, by `ApiError` with their cause; the trace layer's
        // own failure line would repeat each without it.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}
