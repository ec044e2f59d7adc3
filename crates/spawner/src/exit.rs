//! The helper's exit codes: one per step of SPEC §5, so an admin who sees only an exit
//! status in a log still knows which step failed (`docs/admin.md` lists them).

use serde::{Deserialize, Serialize};

/// A step of starting a user endpoint that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The helper could not read or parse its instructions from the MEP.
    Request,
    /// The identity mapping failed (bad mapping, external program failed or timed out).
    IdentityMapping,
    /// No mapping rule matched any of the user's identities.
    NoMapping,
    /// The mapped name has no local account.
    NoAccount,
    /// The account may not run user endpoints (root, below the minimum uid, the MEP's
    /// own account).
    RefusedAccount,
    /// The template or schema could not be read.
    ReadTemplate,
    /// PAM (when enabled) refused the account, or could not establish its credentials
    /// or open its session, or libpam or the service is missing.
    Pam,
    /// Dropping privileges failed, or root could be regained afterwards.
    DropPrivileges,
    /// The template did not render, or the user's variables broke the schema.
    Render,
    /// The user's endpoint directory, log or stdin could not be prepared.
    Prepare,
    /// The user endpoint program could not be executed.
    Exec,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Step; 11] = [
        Step::Request,
        Step::IdentityMapping,
        Step::NoMapping,
        Step::NoAccount,
        Step::RefusedAccount,
        Step::ReadTemplate,
        Step::Pam,
        Step::DropPrivileges,
        Step::Render,
        Step::Prepare,
        Step::Exec,
    ];

    /// The helper's exit status when this step fails. Chosen above the shell's and
    /// sysexits' common codes so they cannot be confused with a UEP's own exit.
    pub fn exit_code(self) -> i32 {
        match self {
            Step::Request => 80,
            Step::IdentityMapping => 81,
            Step::NoMapping => 82,
            Step::NoAccount => 83,
            Step::RefusedAccount => 84,
            Step::ReadTemplate => 85,
            Step::DropPrivileges => 86,
            Step::Render => 87,
            Step::Prepare => 88,
            Step::Exec => 89,
            // Added after the others, so it takes the next free code.
            Step::Pam => 90,
        }
    }

    /// The step an exit status names, if any.
    pub fn from_exit_code(code: i32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.exit_code() == code)
    }

    /// What failed, in words for the user and the admin.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Request => "the MEP's spawn helper could not read its instructions",
            Step::IdentityMapping => "mapping your identity to a local account failed",
            Step::NoMapping => "your identity maps to no local account on this endpoint",
            Step::NoAccount => "the local account your identity maps to does not exist",
            Step::RefusedAccount => {
                "the local account your identity maps to may not run user endpoints"
            }
            Step::ReadTemplate => "the endpoint's user configuration template could not be read",
            Step::Pam => "PAM stopped your user endpoint from starting",
            Step::DropPrivileges => "switching to your local account failed",
            Step::Render => {
                "your user_endpoint_config was refused by the endpoint's template or schema"
            }
            Step::Prepare => "your user endpoint's directory or log could not be prepared",
            Step::Exec => "the user endpoint program could not be started",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for step in Step::ALL {
            assert!(seen.insert(step.exit_code()), "{step:?} reuses a code");
            assert_eq!(Step::from_exit_code(step.exit_code()), Some(step));
        }
        assert_eq!(Step::from_exit_code(0), None);
        assert_eq!(Step::from_exit_code(1), None);
    }
}
