//! Request extractors that turn malformed input into the service's JSON errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::error::Category;
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON body; a malformed one is a 400 (413 when too large, 415 when not JSON)
/// naming the problem. Text with NUL characters is refused too: PostgreSQL cannot
/// store it, and no Globus Compute client sends it.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the body as JSON with 'Content-Type: application/json'",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is larger than this service accepts (see --max-body-mb)",
                ),
                _ => ApiError::bad_request("INVALID_BODY", rejection.body_text()),
            }
        })?;
        // A NUL can only arrive escaped; look closer only when the escape is there.
        if contains(&body, b"\\u0000")
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| has_nul(&v))
        {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                "the request body holds text with a NUL character (\\u0000), which is not accepted",
            ));
        }
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| match e.classify() {
                Category::Data => ApiError::bad_request(
                    "INVALID_BODY",
                    format!("the request body has the wrong shape: {e}"),
                ),
                Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                    "INVALID_JSON",
                    format!("the request body is not valid JSON: {e}"),
                ),
            })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any string (or key) in the document holds a NUL character.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Parses an id from a path segment; `what` names it in the error.
pub fn parse_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::bad_request("INVALID_ID", format!("{what} {text:?} is not a UUID")))
}
