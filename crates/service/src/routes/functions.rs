//! Function registration and lookup.

use axum::Json;
use axum::extract::{Path, State};
use gantry_protocol::packed::{Strategy, pack_buffers, unpack_buffers};
use gantry_protocol::rest::{
    FunctionDeleteResponse, FunctionRegistrationRequest, FunctionRegistrationResponse,
    FunctionResponse,
};
use gantry_store::NewFunction;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::state::AppState;

/// `POST /v3/functions`. Serialized code must be exactly one packed buffer with a
/// strategy header; plain source (`serialized: false`) is wrapped as the SDK's
/// `PureSourceTextInspect` strategy (`st`), `"<name>:<source>"`.
pub async fn register_function(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<FunctionRegistrationRequest>,
) -> ApiResult<Json<FunctionRegistrationResponse>> {
    caller.require_user()?;
    if request.function_name.is_empty() {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            "function_name must not be empty",
        ));
    }
    let function_code = if request.serialized {
        match unpack_buffers(&request.function_code) {
            Ok(buffers) if buffers.len() == 1 && Strategy::of_serialized(buffers[0]).is_some() => {
                request.function_code
            }
            Ok(buffers) => {
                return Err(ApiError::bad_request(
                    "INVALID_FUNCTION_CODE",
                    format!(
                        "function_code must pack exactly one serialized function, found {} \
                         buffer(s){}",
                        buffers.len(),
                        if buffers.len() == 1 {
                            " without a serialization header"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "INVALID_FUNCTION_CODE",
                    format!("function_code is not packed buffers: {e}"),
                ));
            }
        }
    } else {
        let source = format!("{}:{}", request.function_name, request.function_code);
        pack_buffers(&[Strategy::PureSourceTextInspect.serialize_raw(&source)])
    };
    let function_id = Uuid::new_v4();
    state
        .store
        .insert_function(&NewFunction {
            function_id,
            owner_identity_id: caller.identity_id(),
            function_name: request.function_name,
            function_code,
            description: request.description,
            public: request.public,
            group_id: request.group.map(|g| g.to_string()),
            meta: request.meta,
        })
        .await?;
    Ok(Json(FunctionRegistrationResponse {
        function_uuid: function_id,
    }))
}

/// `GET /v2/functions/{id}`: the caller's own functions and public ones.
pub async fn get_function(
    State(state): State<AppState>,
    caller: Caller,
    Path(function_id): Path<String>,
) -> ApiResult<Json<FunctionResponse>> {
    let function_id = parse_id(&function_id, "function id")?;
    let function = state
        .store
        .function(function_id)
        .await?
        .filter(|f| crate::access::can_use_function(&caller, f))
        .ok_or_else(|| {
            ApiError::not_found(
                "FUNCTION_NOT_FOUND",
                format!("function {function_id} not found"),
            )
        })?;
    Ok(Json(FunctionResponse {
        function_uuid: function.function_id,
        function_name: function.function_name,
        function_code: function.function_code,
        description: function.description,
        public: function.public,
        meta: function.meta,
    }))
}

/// `DELETE /v2/functions/{id}`: only the function's owner may delete it; to anyone else
/// it is not found, as an unknown id is. Tasks already submitted keep running.
pub async fn delete_function(
    State(state): State<AppState>,
    caller: Caller,
    Path(function_id): Path<String>,
) -> ApiResult<Json<FunctionDeleteResponse>> {
    let function_id = parse_id(&function_id, "function id")?;
    if !state
        .store
        .delete_function(function_id, caller.identity_id())
        .await?
    {
        return Err(ApiError::not_found(
            "FUNCTION_NOT_FOUND",
            format!("function {function_id} not found (only its owner may delete it)"),
        ));
    }
    tracing::info!(%function_id, user = %caller.0.identity.username, "function deleted");
    Ok(Json(FunctionDeleteResponse {
        function_uuid: function_id,
        deleted: true,
    }))
}
