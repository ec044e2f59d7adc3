//! Every error a route returns: a status and a JSON body with a stable `code`, a
//! `message` that says what went wrong and what to do, and the same text as `reason`.
//! Internal failures are reported without internals and logged in full exactly once,
//! when the response is made (the HTTP trace layer logs no failures of its own).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_protocol::rest::ErrorBody;

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds after which trying again may succeed (`Retry-After`).
    retry_after: Option<u64>,
    /// For a failure of the service's own (5xx): what failed, for the log only.
    cause: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// The same error, telling the client that trying again after `seconds` may
    /// succeed (a `Retry-After` header): for refusals that waiting resolves.
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The `Retry-After` seconds, if trying again later may succeed.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no valid token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 403: valid token, not allowed.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404: unknown, or not the caller's to see (the two are not told apart).
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: conflicts with what exists.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 503: a dependency (database, broker) is failing. The cause is logged (once,
    /// with the response), never sent.
    pub fn unavailable(context: &str, cause: impl std::fmt::Display) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            format!("{context}; the service logged the cause. Try again shortly."),
        );
        error.cause = Some(cause.to_string());
        error
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause = self.cause.as_deref().unwrap_or("-"),
                "{}",
                self.message
            );
        }
        let body = ErrorBody::new(self.status.as_u16(), self.code, self.message);
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<gantry_store::StoreError> for ApiError {
    fn from(error: gantry_store::StoreError) -> ApiError {
        match error {
            gantry_store::StoreError::Conflict(message) => ApiError::conflict("CONFLICT", message),
            gantry_store::StoreError::NotFound(message) => {
                ApiError::not_found("NOT_FOUND", message)
            }
            gantry_store::StoreError::LimitReached(limit) => crate::quotas::refusal(&limit),
            gantry_store::StoreError::Revoked(message) => ApiError::unauthorized(message),
            gantry_store::StoreError::EndpointLocked(endpoint_id) => {
                crate::routes::tasks::endpoint_locked(endpoint_id)
            }
            other => ApiError::unavailable("the database failed", other),
        }
    }
}

impl From<crate::accounts::ProvisionError> for ApiError {
    fn from(error: crate::accounts::ProvisionError) -> ApiError {
        match error {
            crate::accounts::ProvisionError::Broker(error) => error.into(),
            crate::accounts::ProvisionError::Store(error) => error.into(),
            revoked @ crate::accounts::ProvisionError::Revoked { .. } => ApiError::conflict(
                "CREDENTIALS_CHANGED",
                format!(
                    "{revoked}, so this request set up nothing; try again (a revoked \
                     credential is refused, a valid one gets the new broker password)"
                ),
            ),
        }
    }
}

impl From<gantry_broker::BrokerError> for ApiError {
    fn from(error: gantry_broker::BrokerError) -> ApiError {
        ApiError::unavailable("the message broker failed", error)
    }
}

/// Result alias for route handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Gives every error response the JSON body clients parse. The service's own errors
/// have it already; axum's rejections (a path that does not decode, a malformed form,
/// a wrong method) come as plain text or empty, and get it here. On the OAuth token
/// route a malformed form is OAuth's `invalid_request`.
pub async fn json_error_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_token_route = request.uri().path() == "/v2/oauth2/token";
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let error = if is_token_route && status.is_client_error() {
        ApiError::bad_request("invalid_request", message)
    } else {
        let code = match status {
            StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
            s if s.is_client_error() => "INVALID_REQUEST",
            _ => "INTERNAL_ERROR",
        };
        ApiError::new(status, code, message)
    };
    let mut converted = error.into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        converted
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    converted
}
