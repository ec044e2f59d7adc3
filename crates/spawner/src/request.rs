//! What the MEP tells the helper, and what the helper tells the MEP back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gantry_protocol::command::StartEndpointCommand;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::exit::Step;
use crate::pam::{PamMessage, PamSettings};

/// The most bytes of instructions the helper reads: a start command is small, and a
/// bound keeps a confused MEP from making a root process allocate without limit.
pub const MAX_REQUEST_BYTES: u64 = 8 * 1024 * 1024;

/// The descriptor at which the helper, and the UEP after it, find the write end of the
/// high-assurance audit pipe.
pub const AUDIT_FD: i32 = 3;

/// Who the user endpoint runs as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum IdentityRule {
    /// A root MEP: map the identities with this mapping (the JSON text of the mapping
    /// file in force, which the MEP validated) and run as the account it names.
    Map {
        /// The identity mapping document list.
        mapping_json: String,
    },
    /// A non-root MEP: the identities must map (with this mapping) to the MEP's own
    /// account, `expected_user`; no privileges change.
    SameUser {
        /// The identity mapping document list.
        mapping_json: String,
        /// The MEP's own account name.
        expected_user: String,
    },
}

/// Everything the helper needs to start one user endpoint, and nothing it must find
/// on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The start command as the service sent it.
    pub command: StartEndpointCommand,
    /// The MEP's id (passed to external identity mappers, shown in titles).
    pub mep_id: Uuid,
    /// How the user is found.
    pub identity: IdentityRule,
    /// The accounts below this uid never run user endpoints (default 1000).
    pub min_uid: u32,
    /// The MEP's own uid, which a root MEP never hands to a user.
    pub mep_uid: u32,
    /// The admin's template (`user_config_template.yaml.j2`).
    pub template_path: PathBuf,
    /// The admin's schema (`user_config_schema.json`), if any.
    pub schema_path: Option<PathBuf>,
    /// Variables from `user_environment.yaml`, set on top of the defaults.
    pub user_environment: BTreeMap<String, String>,
    /// The program to exec as the UEP (`gantry-endpoint`), run as `<title> uep`.
    pub uep_program: PathBuf,
    /// The MEP's config, as the template sees it in `_GC.parent_config`.
    pub parent_config: Value,
    /// Functions the MEP restricts its UEPs to.
    pub allowed_functions: Option<Vec<Uuid>>,
    /// Facts the UEP reports (MEP id and name, user).
    pub ep_info: Map<String, Value>,
    /// PAM (config.yaml's `pam.enable`): run the service's account and session stacks
    /// for the user before the drop, and do not set no_new_privs (setuid schedulers
    /// need it). `None`: no PAM, and no_new_privs is set.
    #[serde(default)]
    pub pam: Option<PamSettings>,
    /// High assurance: the MEP's audit pipe is at [`AUDIT_FD`]; the helper keeps it open
    /// for the UEP, which writes a record for each step of each task.
    #[serde(default)]
    pub audit: bool,
}

impl SpawnRequest {
    /// The UEP's id.
    pub fn uep_id(&self) -> Uuid {
        self.command.kwargs.amqp_creds.endpoint_id
    }

    /// The UEP's name, `uep.<mep id>.<uep id>`, used for its directory under the user's
    /// `~/.gantry`. Anything but that exact shape is replaced, so a hostile name cannot
    /// make a path.
    pub fn uep_dir_name(&self) -> String {
        format!("uep.{}.{}", self.mep_id, self.uep_id())
    }
}

/// One line the helper writes on its status pipe (JSON, one object a line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum HelperEvent {
    /// The identity mapped to this local account.
    Mapped {
        /// Account name.
        user: String,
        /// Its uid.
        uid: u32,
    },
    /// A PAM module said something through the conversation (information or an
    /// error, such as "Your account has expired"); the MEP logs it.
    Pam {
        /// The message.
        message: PamMessage,
    },
    /// All steps passed; the helper is about to exec the UEP. If the exec works the pipe
    /// closes with no further line (it is close-on-exec).
    Exec,
    /// A step failed; the helper exits with `step`'s code.
    Failed {
        /// Which step.
        step: Step,
        /// What went wrong, for the user and the admin.
        message: String,
    },
}
