//! Who may do what: every access rule of the API in one place, as small functions of the
//! caller and the record, so that they can be read (and reviewed) together. Routes ask
//! these and turn a refusal into their error: usually the 404 of an unknown id, so that
//! other people's ids are never confirmed.
//!
//! | who | may |
//! |---|---|
//! | a user (or a user client, whose tokens act as the user) | submit, register and read functions, read their own tasks and task groups, fetch their result login |
//! | an endpoint client | register endpoints and change or delete its own |
//! | anyone | use (submit to, read) a multi-user or public endpoint; a MEP's identity mapping decides who gets a UEP |
//! | the user a UEP runs for | see that UEP; never register over it |

use gantry_store::{EndpointRecord, FunctionRecord, IdentityKind, TaskRecord};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;

impl Caller {
    /// Refuses callers that are not endpoint clients: only a client the admin created
    /// (`gantry-service admin add-endpoint-client`) registers endpoints and receives
    /// broker credentials for them.
    pub fn require_client(&self) -> Result<(), ApiError> {
        match self.0.identity.kind {
            IdentityKind::Client => Ok(()),
            IdentityKind::User => Err(ApiError::forbidden(
                "CLIENT_TOKEN_REQUIRED",
                "endpoints register with an endpoint client's credentials \
                 (GLOBUS_COMPUTE_CLIENT_ID/SECRET from 'gantry-service admin \
                 add-endpoint-client'), not with a user's token",
            )),
        }
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

/// Whether the caller may submit to (and read the state of) an endpoint: its owner, the
/// user a UEP runs for, anyone for a multi-user endpoint (the MEP's identity mapping
/// decides who gets a UEP), and anyone for a public endpoint.
pub fn can_use_endpoint(caller: &Caller, endpoint: &EndpointRecord) -> bool {
    let me = caller.identity_id();
    endpoint.owner_identity_id == me
        || endpoint
            .uep
            .as_ref()
            .is_some_and(|u| u.user_identity_id == me)
        || endpoint.multi_user
        || endpoint.public
}

/// Whether the caller may change or delete an endpoint: only the client that registered
/// it (a UEP is the service's, not its user's).
pub fn can_manage_endpoint(caller: &Caller, endpoint: &EndpointRecord) -> bool {
    endpoint.uep.is_none() && endpoint.owner_identity_id == caller.identity_id()
}

/// Whether the caller may read or run a function: its owner, or anyone for a public one.
pub fn can_use_function(caller: &Caller, function: &FunctionRecord) -> bool {
    function.public || function.owner_identity_id == caller.identity_id()
}

/// Whether the caller may read a task: only its submitter.
pub fn owns_task(caller: &Caller, task: &TaskRecord) -> bool {
    task.owner_identity_id == caller.identity_id()
}

/// Whether the caller may read, or submit into, a task group with this owner (`None`: a
/// group that does not exist yet, which a submit creates for its caller).
pub fn may_use_task_group(caller: &Caller, owner: Option<Uuid>) -> bool {
    owner.is_none_or(|owner| owner == caller.identity_id())
}
