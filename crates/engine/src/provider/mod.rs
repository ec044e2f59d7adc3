//! Providers: how a block (one worker-pool process) is launched, stopped and watched.
//!
//! A provider knows nothing about tasks or the pool protocol. Its whole job is "start
//! block N with this command line", "cancel block N", "tell me which blocks ended", so
//! that the same pool command runs as a local child process today ([`LocalProvider`])
//! and inside a Slurm or PBS job later, with the engine unchanged.

pub(crate) mod local;

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;

pub use local::LocalProvider;

/// A block's number, unique for the engine's life (never reused, so a late message
/// from an old block cannot be mistaken for a new one's).
pub type BlockId = u64;

/// What a block runs: the pool program with its arguments, after `worker_init`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchCommand {
    /// The `gantry-pool` program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// A shell snippet run first, in the same shell, so that what it exports (a venv's
    /// `PATH`, modules) reaches the pool and its workers.
    pub worker_init: String,
    /// Where the block's output (the pool's log and its workers' stderr) goes.
    pub log: PathBuf,
}

impl LaunchCommand {
    /// The full command line: `/bin/sh -c '<worker_init>\nexec "$0" "$@"' <program> <args>`.
    ///
    /// The program and its arguments are passed as the shell's positional parameters, never
    /// pasted into the script, so no quoting can go wrong.
    pub fn argv(&self) -> Vec<OsString> {
        let mut script = self.worker_init.clone();
        if !script.is_empty() && !script.ends_with('\n') {
            script.push('\n');
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut argv: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), script.into()];
        argv.push(self.program.clone().into_os_string());
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// Why a provider could not start a block.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Starting the process (or submitting the job) failed.
    #[error("cannot start block {block}: {reason}")]
    Start {
        /// The block.
        block: BlockId,
        /// What failed.
        reason: String,
    },
}

/// A way to run blocks.
pub trait Provider: Send + 'static {
    /// The provider's name, for logs (`LocalProvider`).
    fn name(&self) -> &'static str;

    /// Starts `block` running `command`.
    fn start(
        &mut self,
        block: BlockId,
        command: &LaunchCommand,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Begins stopping `block` (and everything it started); returns at once. The block is
    /// reported by [`Provider::poll_ended`] once it is gone.
    fn cancel(&mut self, block: BlockId);

    /// The blocks that ended since the last call, each with how it ended. Blocks not
    /// listed are still alive (or queued, for a batch scheduler).
    fn poll_ended(&mut self) -> impl Future<Output = Vec<(BlockId, String)>> + Send;

    /// Stops every block and waits until all are gone.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// The last lines of a block's log, to explain a block that failed to start.
pub(crate) fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    // Only the end matters; a runaway log must not be read whole into an error.
    let start = text.len().saturating_sub(16 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_init_runs_before_the_pool_in_the_same_shell() {
        let command = LaunchCommand {
            program: "/opt/gantry pool".into(),
            args: vec!["--block".into(), "it's 1".into()],
            worker_init: "export A=1".into(),
            log: "/dev/null".into(),
        };
        let argv = command.argv();
        assert_eq!(argv[2], "export A=1\nexec \"$0\" \"$@\"");
        assert_eq!(&argv[3..], &["/opt/gantry pool", "--block", "it's 1"]);
        // And the shell really passes them through unmangled.
        let output = std::process::Command::new(&argv[0])
            .args(&argv[1..3])
            .arg("/bin/echo")
            .arg("$A")
            .arg("it's 1")
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "$A it's 1\n");
    }
}
