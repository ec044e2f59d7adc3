//! What the endpoint reads from `/proc` and the few signals it sends: parents,
//! sessions and process trees, so that nothing a user endpoint started outlives it.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// This process's parent.
pub fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// One line of `/proc/<pid>/stat`, the fields Gantry uses.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// The process.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its session.
    pub session: i32,
    /// Resident pages.
    pub rss_pages: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    Some(ProcStat {
        pid,
        ppid: field(4)? as i32,
        session: field(6)? as i32,
        start_ticks: field(22)? as u64,
        rss_pages: field(24)?.max(0) as u64,
    })
}

/// The uid that owns process `pid` (its effective uid), if it still exists.
pub fn owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Every process now running.
pub fn all() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// The processes of session `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|p| p.session == sid)
        .map(|p| p.pid)
        .collect()
}

/// `pid` and all its descendants.
pub fn tree(pid: i32) -> Vec<ProcStat> {
    let procs = all();
    let mut out: Vec<ProcStat> = procs.iter().filter(|p| p.pid == pid).copied().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        out.extend(procs.iter().filter(|p| p.ppid == parent).copied());
        i += 1;
    }
    out
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// Resident memory of `pid` alone, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    stat(pid)
        .map(|p| p.rss_pages * page_size())
        .unwrap_or_default()
}

/// Resident memory of `pid` and its descendants, in bytes.
pub fn tree_rss_bytes(pid: i32) -> u64 {
    tree(pid).iter().map(|p| p.rss_pages * page_size()).sum()
}

/// Sends `signal` to every other process in this process's session: the workers,
/// pools and whatever they started, which a UEP (a session leader) takes with it.
pub fn kill_own_session(signal: i32) {
    let me = std::process::id() as i32;
    let Ok(sid) = nix::unistd::getsid(None) else {
        return;
    };
    let Ok(signal) = Signal::try_from(signal) else {
        return;
    };
    for pid in session_members(sid.as_raw()) {
        if pid != me {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}
