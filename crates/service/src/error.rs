//! Every error a route returns: a status and a JSON body with a stable `code`, a
//! `message` that says what went wrong and what to do, and the same text as `reason`.
//! Internal failures are logged in full and reported without internals.

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
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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

    /// 503: a dependency (database, broker) is failing; logged with the cause.
    pub fn unavailable(context: &str, cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "{context}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            format!("{context}; the service logged the cause. Try again shortly."),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.status.as_u16(), self.code, self.message);
        (self.status, Json(body)).into_response()
    }
}

impl From<gantry_store::StoreError> for ApiError {
    fn from(error: gantry_store::StoreError) -> ApiError {
        match error {
            gantry_store::StoreError::Conflict(message) => ApiError::conflict("CONFLICT", message),
            gantry_store::StoreError::NotFound(message) => {
                ApiError::not_found("NOT_FOUND", message)
            }
            other => ApiError::unavailable("the database failed", other),
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
