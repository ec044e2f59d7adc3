//! `external_identity_mapping#1.0.0`: an administrator's program maps the identities.
//!
//! The program is run as `command... -c <connector> -s <mep id> -a`, as the official
//! endpoint runs it: `-c` names the connector (always the POSIX connector for a compute
//! endpoint), `-s` the endpoint doing the mapping (in Globus Connect Server, the storage
//! gateway), and `-a` asks for every mapping of the whole identity set rather than one
//! identity's. It reads `{"DATA_TYPE": "identity_mapping_input#1.0.0", "identities":
//! [...]}` (every identity, whatever its status) on stdin and prints `{"DATA_TYPE":
//! "identity_mapping_output#1.0.0", "result": [{"id", "output"}]}`; the first result
//! wins, and empty output means no mapping.
//!
//! It must exit 0 within [`TIMEOUT`] and print at most [`STDOUT_LIMIT`] bytes; otherwise
//! its whole process group is killed and reaped, so neither it nor anything it started
//! (in its group) outlives the mapping. Everything runs on the calling thread, with
//! `poll(2)` over non-blocking pipes, because the caller is a single-threaded helper.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::DocumentError;

/// The document type this module reads.
pub(crate) const DATA_TYPE: &str = "external_identity_mapping#1.0.0";

/// The connector id passed with `-c`: Globus's id for the POSIX connector, which the
/// official compute endpoint passes too.
pub const POSIX_CONNECTOR_ID: &str = "145812c8-decc-41f1-83cf-bb2a85a2a70b";

/// How long the program may run, as in the official package.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The most standard output read from the program; more is an error.
pub const STDOUT_LIMIT: usize = 1 << 20;

/// How much of the program's standard error is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// How much of a bad standard output is quoted in an error message.
const STDOUT_QUOTE: usize = 200;

const INPUT_TYPE: &str = "identity_mapping_input#1.0.0";
const OUTPUT_TYPE: &str = "identity_mapping_output#1.0.0";

/// A parsed external-program document.
#[derive(Debug, Clone)]
pub(crate) struct ExternalDocument {
    command: Vec<String>,
}

/// The program's answer. Unknown fields are refused, as the official package's schema
/// refuses them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    #[serde(rename = "DATA_TYPE")]
    data_type: Option<String>,
    result: Vec<OutputEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputEntry {
    id: Uuid,
    output: String,
}

/// Why talking to the program stopped early; the command line is added by the caller.
enum Problem {
    TimedOut,
    TooMuchOutput,
    Io(std::io::Error),
}

impl ExternalDocument {
    /// Reads `command`: a non-empty list whose items are strings (numbers are accepted
    /// and written as JSON writes them, as the official package accepts them).
    pub(crate) fn parse(doc: &Map<String, Value>) -> Result<ExternalDocument, String> {
        let usage = "\"command\" must be a non-empty list: [\"/path/to/program\", \"arg\", ...]";
        let Some(Value::Array(items)) = doc.get("command") else {
            return Err(format!("{DATA_TYPE} needs {usage}"));
        };
        let command = items
            .iter()
            .enumerate()
            .map(|(n, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(x) => Ok(x.to_string()),
                _ => Err(format!("command item {n} is not a string; {usage}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        match command.first() {
            None => Err(usage.into()),
            Some(program) if program.is_empty() => Err(format!("the program is empty; {usage}")),
            Some(_) => Ok(ExternalDocument { command }),
        }
    }

    /// Runs the program on `identities` (already encoded as the input document's
    /// `identities` list) and returns the first result's output.
    pub(crate) fn map(
        &self,
        identities: &Value,
        ids: &[Uuid],
        mep_id: Uuid,
    ) -> Result<Option<String>, DocumentError> {
        let mut argv = self.command.clone();
        let mep = mep_id.to_string();
        argv.extend(["-c", POSIX_CONNECTOR_ID, "-s", &mep, "-a"].map(String::from));
        let command = format!("{argv:?}");
        let input = serde_json::json!({"DATA_TYPE": INPUT_TYPE, "identities": identities});
        let stdout = run(&argv, input.to_string().as_bytes()).map_err(|e| e.name(&command))?;
        if stdout.is_empty() {
            return Ok(None);
        }
        let bad = |reason: String| DocumentError::BadOutput {
            command: command.clone(),
            reason,
            stdout: quote(&stdout, STDOUT_QUOTE),
        };
        let output: Output = serde_json::from_slice(&stdout).map_err(|e| bad(e.to_string()))?;
        if let Some(other) = output.data_type.filter(|t| t != OUTPUT_TYPE) {
            return Err(bad(format!("its DATA_TYPE is {other:?}")));
        }
        if let Some(entry) = output.result.iter().find(|e| !ids.contains(&e.id)) {
            return Err(DocumentError::UnknownId {
                command,
                id: entry.id,
            });
        }
        Ok(output.result.into_iter().next().map(|e| e.output))
    }
}

/// Runs `argv` with `input` on stdin and returns its stdout if it exited 0 in time.
/// Whatever happens, the child's process group is killed and the child reaped before
/// this returns.
fn run(argv: &[String], input: &[u8]) -> Result<Vec<u8>, Failure> {
    let (program, args) = argv.split_first().ok_or(Failure::Empty)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what it started as well.
        .process_group(0);
    // SAFETY: the hook runs between fork and exec and makes one async-signal-safe call.
    // If the process that runs the mapping dies (a MEP's spawn helper killed with its
    // MEP), the program dies with it instead of running on as root with no deadline.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(Failure::Spawn)?;
    let deadline = Instant::now() + TIMEOUT;
    let outcome = exchange(&mut child, input, deadline)
        .and_then(|output| wait_for_exit(&child, deadline).map(|()| output));
    // The child is not reaped yet, so its pid (the group's id) cannot have been reused:
    // this signals only the child, if it still runs, and whatever it left in its group.
    kill_group(&child);
    let status = child.wait();
    let (stdout, stderr) = outcome.map_err(Failure::Problem)?;
    let status = status.map_err(|e| Failure::Problem(Problem::Io(e)))?;
    if !status.success() {
        return Err(Failure::Exit {
            status: status.to_string(),
            stderr: quote(&stderr, STDERR_KEEP),
        });
    }
    Ok(stdout)
}

/// How [`run`] failed, before the command line is known to the message.
enum Failure {
    Empty,
    Spawn(std::io::Error),
    Problem(Problem),
    Exit { status: String, stderr: String },
}

impl Failure {
    fn name(self, command: &str) -> DocumentError {
        let command = command.to_owned();
        match self {
            Failure::Empty => DocumentError::Spawn {
                command,
                source: std::io::Error::new(ErrorKind::InvalidInput, "empty command"),
            },
            Failure::Spawn(source) => DocumentError::Spawn { command, source },
            Failure::Problem(Problem::TimedOut) => DocumentError::TimedOut {
                command,
                seconds: TIMEOUT.as_secs(),
            },
            Failure::Problem(Problem::TooMuchOutput) => DocumentError::TooMuchOutput {
                command,
                limit: STDOUT_LIMIT,
            },
            Failure::Problem(Problem::Io(source)) => DocumentError::Io { command, source },
            Failure::Exit { status, stderr } => DocumentError::Exit {
                command,
                status,
                stderr,
            },
        }
    }
}

/// Writes `input` to the child's stdin while reading its stdout and stderr, until all
/// three pipes are done or the deadline passes. A child that stops reading its input
/// early (a broken pipe) is not an error: its exit status and output decide.
fn exchange(
    child: &mut Child,
    input: &[u8],
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>), Problem> {
    let mut stdin = child.stdin.take().filter(|_| !input.is_empty());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(AsFd::as_fd),
        stdout.as_ref().map(AsFd::as_fd),
        stderr.as_ref().map(AsFd::as_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(Problem::Io)?;
    }
    let (mut out, mut err, mut written) = (Vec::new(), Vec::new(), 0);
    let mut buf = vec![0u8; 64 * 1024];
    while stdin.is_some() || stdout.is_some() || stderr.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Problem::TimedOut);
        }
        let ready = wait_ready(
            [
                stdin.as_ref().map(AsFd::as_fd),
                stdout.as_ref().map(AsFd::as_fd),
                stderr.as_ref().map(AsFd::as_fd),
            ],
            left,
        )?;
        if let (true, Some(pipe)) = (ready[0], stdin.as_mut()) {
            match pipe.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => written = input.len(),
                Err(e) if retry(&e) => {}
                Err(e) => return Err(Problem::Io(e)),
            }
            if written == input.len() {
                stdin = None; // closing it tells the child the input is complete
            }
        }
        if let (true, Some(pipe)) = (ready[1], stdout.as_mut()) {
            match pipe.read(&mut buf) {
                Ok(0) => stdout = None,
                Ok(n) if out.len() + n > STDOUT_LIMIT => return Err(Problem::TooMuchOutput),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if retry(&e) => {}
                Err(e) => return Err(Problem::Io(e)),
            }
        }
        if let (true, Some(pipe)) = (ready[2], stderr.as_mut()) {
            match pipe.read(&mut buf) {
                Ok(0) => stderr = None,
                // Keep the start for messages; drain the rest so the child never blocks.
                Ok(n) => {
                    err.extend_from_slice(&buf[..n.min(STDERR_KEEP.saturating_sub(err.len()))])
                }
                Err(e) if retry(&e) => {}
                Err(e) => return Err(Problem::Io(e)),
            }
        }
    }
    Ok((out, err))
}

/// Which of stdin (writable), stdout and stderr (readable, or closed) are ready.
fn wait_ready(fds: [Option<BorrowedFd<'_>>; 3], left: Duration) -> Result<[bool; 3], Problem> {
    let mut which = Vec::with_capacity(3);
    let mut polled = Vec::with_capacity(3);
    for (n, fd) in fds.into_iter().enumerate() {
        if let Some(fd) = fd {
            let events = if n == 0 {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            which.push(n);
            polled.push(PollFd::new(fd, events));
        }
    }
    let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
    let mut ready = [false; 3];
    match poll(&mut polled, timeout) {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(ready),
        Err(e) => return Err(Problem::Io(e.into())),
    }
    for (n, fd) in which.into_iter().zip(&polled) {
        ready[n] = fd.revents().is_some_and(|r| !r.is_empty());
    }
    Ok(ready)
}

/// Waits, without reaping, until the child has exited or the deadline passed.
fn wait_for_exit(child: &Child, deadline: Instant) -> Result<(), Problem> {
    let pid = child_pid(child).ok_or_else(|| Problem::Io(ErrorKind::InvalidData.into()))?;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(Problem::Io(e.into())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Problem::TimedOut);
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

fn kill_group(child: &Child) {
    if let Some(pid) = child_pid(child) {
        // ESRCH cannot happen while the leader is unreaped; anything else leaves nothing
        // more to do than reap the child.
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

fn child_pid(child: &Child) -> Option<Pid> {
    i32::try_from(child.id()).ok().map(Pid::from_raw)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn retry(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// The start of `bytes` as text, for error messages.
fn quote(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned()
}
