//! Gantry's endpoint: the multi-user endpoint (MEP) daemon and the user endpoint (UEP)
//! it starts, as library modules behind a thin `gantry-endpoint` binary.
//!
//! - [`config`]: an endpoint's `config.yaml` and `user_environment.yaml`;
//! - [`dirs`]: `~/.gantry/<name>/` and the files in it, with safe modes;
//! - [`mep`]: the MEP daemon (registration, command queue, spawning through
//!   `gantry-spawner`, reaping, heartbeats, stopping every UEP);
//! - [`uep`]: the UEP (task queue → engine → results, heartbeats, idle shutdown);
//! - [`audit`]: the high-assurance audit records (UEP side and MEP stamp);
//! - [`commands`]: what each CLI verb does (`configure`, `start`, `stop`, `list`, …);
//! - [`status`]: every status report (heartbeats, a stop, a failed start), built and
//!   published in one place;
//! - [`process`] and [`proctitle`]: `/proc` reading, session kills, process titles.
//!
//! The privileged code is not here: it is the spawn helper in `gantry-spawner`, which
//! the MEP runs as a separate process for every UEP it starts.

pub mod audit;
pub mod commands;
pub mod config;
pub mod dirs;
pub mod mep;
pub mod process;
pub mod proctitle;
pub mod status;
pub mod uep;
