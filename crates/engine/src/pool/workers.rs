//! The pool's Python worker processes: starting one, reading what it says, stopping it.
//!
//! Each worker is `python gantry_worker.py '<config json>'` with pipes for stdin, stdout
//! and stderr, in its own process group (so that stopping it also stops what its task
//! started, such as a `ShellFunction`'s shell) and with the parent-death signal (so that
//! it dies with the pool even if the pool is killed outright). A reader task owns the
//! child: it forwards each stdout line to the pool's loop and, at end of file, reaps the
//! child and reports how it ended. Stderr is copied into the pool's log, and its last
//! lines are kept to explain a worker that dies while starting.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use gantry_protocol::messagepack::ResultErrorDetails;
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::limits;
use crate::provider::local::{describe_exit, die_with_parent, signal_group};

/// Gantry's Python worker, shipped inside the binary.
pub(crate) const WORKER_SCRIPT: &str = include_str!("../../python/gantry_worker.py");

/// Writes the worker script into `dir` (atomically: pools of several blocks may share
/// the directory) and returns its path.
pub(crate) fn install_script(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("gantry_worker.py");
    let temporary = dir.join(format!(".gantry_worker.py.{}", std::process::id()));
    std::fs::write(&temporary, WORKER_SCRIPT)?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// Something a worker did, tagged with its slot and generation so that news from a
/// replaced worker is recognised as stale.
#[derive(Debug)]
pub(crate) struct WorkerEvent {
    pub slot: usize,
    pub generation: u64,
    pub kind: WorkerEventKind,
}

#[derive(Debug)]
pub(crate) enum WorkerEventKind {
    /// One line from its stdout.
    Line(Vec<u8>),
    /// It ended; how.
    Exited(String),
}

/// What a worker says.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WorkerMessage {
    Hello(Hello),
    Result {
        task_id: Uuid,
        data: String,
        error: Option<ResultErrorDetails>,
    },
}

/// The first thing a worker says: which Python it is and whether it has the SDK.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Hello {
    pub python: String,
    pub executable: String,
    pub sdk: Option<String>,
    pub sdk_error: Option<String>,
    pub config_error: Option<String>,
    /// Its environment, for results' `details` (see [`crate::EngineResult::details`]).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// How to start workers; the same for every worker of a pool except the environment.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCommand {
    pub python: String,
    pub script: PathBuf,
    pub config_json: String,
    pub working_dir: PathBuf,
}

/// A started worker process.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pub pid: u32,
    /// Lines to its stdin.
    pub input: mpsc::Sender<Vec<u8>>,
    /// The last lines it wrote to stderr.
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl WorkerProcess {
    /// Signals its whole process group.
    pub(crate) fn signal(&self, signal: Signal) {
        signal_group(self.pid, signal);
    }

    /// Its last stderr lines, for an error message.
    pub(crate) fn stderr_tail(&self) -> String {
        match self.stderr_tail.lock() {
            Ok(tail) => tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }
}

/// Starts a worker; its news arrives on `events`.
pub(crate) fn spawn(
    command: &WorkerCommand,
    env: &[(String, String)],
    slot: usize,
    generation: u64,
    events: mpsc::Sender<WorkerEvent>,
) -> std::io::Result<WorkerProcess> {
    let mut process = Command::new(&command.python);
    process
        .arg(&command.script)
        .arg(&command.config_json)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&command.working_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: see `die_with_parent`; the pool spawns from its only runtime thread, which
    // lives as long as the pool.
    unsafe { die_with_parent(&mut process, Signal::SIGKILL) };
    let mut child = process.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (stdin, stdout, stderr) =
        match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(i), Some(o), Some(e)) => (i, o, e),
            _ => return Err(std::io::Error::other("the worker's pipes were not set up")),
        };

    let (input, mut lines) = mpsc::channel::<Vec<u8>>(limits::CONNECTION_QUEUE_SPARE);
    tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(line) = lines.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break; // it died; the reader reports how
            }
        }
        // Dropping stdin closes the pipe, which tells the worker to exit.
    });

    let tail = Arc::new(Mutex::new(VecDeque::new()));
    tokio::spawn(copy_stderr(BufReader::new(stderr), slot, pid, tail.clone()));

    tokio::spawn(async move {
        let mut stdout = BufReader::new(stdout);
        let ending = loop {
            match read_line_bounded(&mut stdout, limits::MAX_WORKER_LINE).await {
                Ok(Some(line)) => {
                    let event = WorkerEvent {
                        slot,
                        generation,
                        kind: WorkerEventKind::Line(line),
                    };
                    if events.send(event).await.is_err() {
                        break None; // the pool is stopping
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    signal_group(pid, Signal::SIGKILL);
                    break Some(format!("broke the worker protocol ({e}) and was stopped"));
                }
            }
        };
        let how = match child.wait().await {
            Ok(status) => describe_exit(&status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let how = match ending {
            Some(reason) => format!("{reason}; it {how}"),
            None => how,
        };
        let _ = events
            .send(WorkerEvent {
                slot,
                generation,
                kind: WorkerEventKind::Exited(how),
            })
            .await;
    });

    Ok(WorkerProcess {
        pid,
        input,
        stderr_tail: tail,
    })
}

/// Copies a worker's stderr into the pool's log, keeping the last lines.
async fn copy_stderr<R: AsyncBufRead + Unpin>(
    mut stderr: R,
    slot: usize,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    use std::io::Write;
    loop {
        let line = match read_line_bounded(&mut stderr, 64 * 1024).await {
            Ok(Some(line)) => String::from_utf8_lossy(&line).into_owned(),
            // A very long line is cut, not fatal: this is only a log.
            Err(_) => "[a line longer than 64 KiB was dropped]".to_owned(),
            Ok(None) => return,
        };
        let _ = writeln!(std::io::stderr(), "[worker {slot} pid {pid}] {line}");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == limits::STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// Reads one line without its newline, refusing lines longer than `max` bytes; `None`
/// at end of input. (After an over-long line the reader is left mid-line.)
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buffer[..end]);
            reader.consume(end + 1);
            if line.len() > max {
                break;
            }
            return Ok(Some(line));
        }
        let taken = buffer.len();
        line.extend_from_slice(buffer);
        reader.consume(taken);
        if line.len() > max {
            break;
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a line longer than {max} bytes"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut input: &[u8] = b"short\nmuch too long\nlast";
        assert_eq!(
            read_line_bounded(&mut input, 8).await.unwrap().unwrap(),
            b"short"
        );
        assert!(read_line_bounded(&mut input, 8).await.is_err());
        let mut input: &[u8] = b"a\nlast";
        read_line_bounded(&mut input, 8).await.unwrap();
        assert_eq!(
            read_line_bounded(&mut input, 8).await.unwrap().unwrap(),
            b"last"
        );
        assert_eq!(read_line_bounded(&mut input, 8).await.unwrap(), None);
    }
}
