//! The privileged part of Gantry's multi-user endpoint (MEP), kept small so it can be
//! read line by line.
//!
//! The MEP is a multi-threaded tokio process; between `fork` and `exec` of such a
//! process only async-signal-safe calls are allowed (no allocation, no template
//! rendering). So the MEP never does privileged work after a fork of its own: from one
//! dedicated, long-lived thread ([`launcher::Launcher`]) it execs a fresh,
//! single-threaded helper (`gantry-endpoint __spawn-uep`, which calls
//! [`helper::run`]) as root and hands it a [`request::SpawnRequest`] on stdin. The
//! helper runs SPEC §5's steps in order — close inherited descriptors, map the
//! identity, look up and vet the account, read the template and schema while still
//! root, optionally run PAM's account and session stacks ([`pam`]), drop privileges
//! for good, render the template *as the user*, open the user's
//! log, exec the user endpoint (UEP) — and each failing step exits with its own code
//! ([`exit::Step`]) after telling the MEP why on a status pipe, so the user's tasks
//! fail with a message instead of waiting.
//!
//! Why the dedicated thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked
//! exits, so the helper (and the UEP it becomes) is signalled exactly when the MEP
//! dies, not when some short-lived worker thread does.

pub mod exit;
pub mod helper;
pub mod launcher;
pub mod pam;
pub mod request;
mod sys;

pub use exit::Step;
pub use launcher::{Launched, Launcher};
pub use pam::PamSettings;
pub use request::{HelperEvent, IdentityRule, SpawnRequest};
