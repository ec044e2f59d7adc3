//! `LocalProvider`: blocks are child processes of the UEP on the same machine.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{BlockId, LaunchCommand, Provider, ProviderError};
use crate::limits;

enum LocalBlock {
    Running(Child),
    /// Being stopped; the task reports how it ended.
    Stopping(JoinHandle<String>),
}

/// Runs each block as a child process in its own process group, so that stopping a block
/// reaches everything its `worker_init` started as well as the pool. Each child also gets
/// the kernel's parent-death signal, so a UEP that is killed outright does not leave
/// pools behind (the pools also exit when their connection to the UEP closes).
#[derive(Default)]
pub struct LocalProvider {
    blocks: HashMap<BlockId, LocalBlock>,
}

impl LocalProvider {
    /// A provider with no blocks.
    pub fn new() -> LocalProvider {
        LocalProvider::default()
    }
}

/// How a process ended, in words.
pub(crate) fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| "unknown".into());
            format!("was killed by signal {signal} ({name})")
        }
        None => format!("ended ({status})"),
    }
}

/// Sends `signal` to a process group, ignoring a group that is already gone.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    if raw <= 1 {
        // Never signal "every process" or init by accident.
        return;
    }
    let _ = killpg(Pid::from_raw(raw), signal);
}

/// SIGTERM to the group, then SIGKILL if the leader has not exited after `grace`. The
/// leader is only reaped after the last signal, so its group id cannot have been reused.
pub(crate) async fn stop_group(mut child: Child, grace: std::time::Duration) -> String {
    let Some(pgid) = child.id() else {
        return match child.wait().await {
            Ok(status) => describe_exit(&status),
            Err(e) => format!("could not be waited for: {e}"),
        };
    };
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => describe_exit(&status),
        Ok(Err(e)) => format!("could not be waited for: {e}"),
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            match child.wait().await {
                Ok(status) => describe_exit(&status),
                Err(e) => format!("could not be waited for: {e}"),
            }
        }
    }
}

/// Makes a child die with the thread that spawned it and, if this process is already
/// gone by the time the child runs, not start at all.
///
/// # Safety
/// Runs between fork and exec: only async-signal-safe calls (two syscalls, no
/// allocation).
pub(crate) unsafe fn die_with_parent(command: &mut Command, signal: Signal) -> &mut Command {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes the prctl and getppid syscalls and builds an
    // io::Error from an errno, none of which allocate or take locks.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(signal))?;
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        })
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "LocalProvider"
    }

    async fn start(
        &mut self,
        block: BlockId,
        command: &LaunchCommand,
    ) -> Result<(), ProviderError> {
        let failed = |reason: String| ProviderError::Start { block, reason };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&command.log)
            .map_err(|e| {
                failed(format!(
                    "cannot open its log {}: {e}",
                    command.log.display()
                ))
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| failed(format!("cannot share its log: {e}")))?;
        let argv = command.argv();
        let mut process = Command::new(&argv[0]);
        process
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        // SIGTERM rather than SIGKILL: the pool then stops its workers' process groups
        // (and with them whatever the tasks started) before it exits.
        // SAFETY: see `die_with_parent`.
        unsafe { die_with_parent(&mut process, Signal::SIGTERM) };
        let child = process
            .spawn()
            .map_err(|e| failed(format!("cannot run /bin/sh: {e}")))?;
        tracing::info!(block, pid = child.id(), log = %command.log.display(), "started a local block");
        self.blocks.insert(block, LocalBlock::Running(child));
        Ok(())
    }

    fn cancel(&mut self, block: BlockId) {
        let Some(LocalBlock::Running(child)) = self.blocks.remove(&block) else {
            return;
        };
        let stopping = tokio::spawn(stop_group(child, limits::BLOCK_STOP));
        self.blocks.insert(block, LocalBlock::Stopping(stopping));
    }

    async fn poll_ended(&mut self) -> Vec<(BlockId, String)> {
        let mut ended = Vec::new();
        for (block, state) in self.blocks.iter_mut() {
            match state {
                LocalBlock::Running(child) => match child.try_wait() {
                    Ok(Some(status)) => ended.push((*block, describe_exit(&status))),
                    Ok(None) => {}
                    Err(e) => ended.push((*block, format!("could not be waited for: {e}"))),
                },
                LocalBlock::Stopping(task) if task.is_finished() => {
                    let how = match task.await {
                        Ok(how) => how,
                        Err(e) => format!("could not be stopped: {e}"),
                    };
                    ended.push((*block, how));
                }
                LocalBlock::Stopping(_) => {}
            }
        }
        for (block, _) in &ended {
            self.blocks.remove(block);
        }
        ended
    }

    async fn shutdown(&mut self) {
        let blocks: Vec<BlockId> = self.blocks.keys().copied().collect();
        for block in blocks {
            self.cancel(block);
        }
        for (block, state) in self.blocks.drain() {
            if let LocalBlock::Stopping(task) = state {
                match task.await {
                    Ok(how) => tracing::info!(block, how, "block stopped"),
                    Err(e) => tracing::error!(block, error = %e, "block could not be stopped"),
                }
            }
        }
    }
}
