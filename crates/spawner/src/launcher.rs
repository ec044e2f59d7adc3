//! The MEP's side of spawning: one dedicated, long-lived thread that execs the helper.
//!
//! The MEP is multi-threaded, so it never does privileged work between a fork and an
//! exec; `std::process::Command` execs the helper straight away. The only code that
//! runs in the forked child before that exec is the `pre_exec` hook below, which makes
//! one async-signal-safe call (`prctl`). Doing the spawns from one thread that lives as
//! long as the MEP matters because the death signal is tied to the forking *thread*.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::request::SpawnRequest;

/// A started helper: its pid (which the UEP keeps after the exec) and the read end of
/// its status pipe.
#[derive(Debug)]
pub struct Launched {
    /// The helper's, later the UEP's, pid. The MEP reaps it (it is the MEP's child).
    pub pid: i32,
    /// One `HelperEvent` JSON a line; closes when the UEP was exec'd or the helper exited.
    pub status: OwnedFd,
}

struct Job {
    request: Vec<u8>,
    audit: Option<OwnedFd>,
    reply: mpsc::SyncSender<io::Result<Launched>>,
}

/// Starts helpers from one dedicated thread.
#[derive(Debug)]
pub struct Launcher {
    jobs: mpsc::Sender<Job>,
}

impl Launcher {
    /// Starts the spawning thread. `program` and `args` run the helper (for Gantry:
    /// `gantry-endpoint __spawn-uep`).
    pub fn new(program: PathBuf, args: Vec<OsString>) -> io::Result<Launcher> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("gantry-spawner".into())
            .spawn(move || {
                // Lives as long as the MEP holds the Launcher; helpers started here get
                // their death signal when this thread ends.
                for job in queue {
                    let _ = job
                        .reply
                        .send(launch(&program, &args, &job.request, job.audit));
                }
            })?;
        Ok(Launcher { jobs })
    }

    /// Starts a helper for `request` and hands it the request. Blocks for as long as the
    /// fork, exec and the write of the request take (milliseconds).
    pub fn launch(&self, request: &SpawnRequest) -> io::Result<Launched> {
        self.launch_with_audit(request, None)
    }

    /// [`Launcher::launch`], handing the helper (and the UEP it becomes) `audit` as its
    /// descriptor 3: the write end of the high-assurance audit pipe (SPEC §5).
    pub fn launch_with_audit(
        &self,
        request: &SpawnRequest,
        audit: Option<OwnedFd>,
    ) -> io::Result<Launched> {
        let bytes = serde_json::to_vec(request).map_err(io::Error::other)?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                request: bytes,
                audit,
                reply,
            })
            .map_err(|_| io::Error::other("the spawning thread has stopped"))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("the spawning thread has stopped"))?
    }
}

fn launch(
    program: &PathBuf,
    args: &[OsString],
    request: &[u8],
    audit: Option<OwnedFd>,
) -> io::Result<Launched> {
    use std::os::fd::AsRawFd;
    let audit_fd = audit.as_ref().map(|fd| fd.as_raw_fd());
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the hook runs in the forked child of a multi-threaded process, where only
    // async-signal-safe calls are allowed: it makes at most two, prctl and dup2, and
    // allocates nothing. Until the helper drops privileges (and sets SIGTERM for the
    // UEP), a MEP that dies takes the root helper with it at once. dup2 puts the audit
    // pipe (opened close-on-exec) at descriptor 3 without that flag, so it alone of the
    // MEP's descriptors survives the exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = audit_fd
                && libc::dup2(fd, crate::request::AUDIT_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    let status: OwnedFd = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no status pipe"))?
        .into();
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that died early closes its stdin; its exit status says why, so a
        // broken pipe here is not an error of its own.
        let _ = stdin.write_all(request);
    }
    // The Child is dropped without waiting: the MEP's reaper owns every child's exit.
    drop(child);
    // The child has its copy; the MEP keeps only the read end.
    drop(audit);
    Ok(Launched { pid, status })
}
