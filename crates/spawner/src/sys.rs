//! Each libc call the helper makes, wrapped once in a small safe function with the
//! reason it is sound. Nothing here allocates between a fork and an exec: the helper
//! is a fresh single-threaded process, so it may allocate freely, and it never forks.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Closes every descriptor from `first` up, so nothing the MEP had open (its broker
/// sockets, its logs) reaches a user's process.
pub fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors of this process; the helper holds no
    // Rust object owning a descriptor >= first at this point (it runs first thing).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9 lack close_range: close what /proc/self/fd lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above; EBADF for the directory's own (now closed) fd is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Closes one descriptor this process owns through no Rust object (an inherited one).
pub fn close_one(fd: RawFd) {
    // SAFETY: the caller names a descriptor that no Rust object owns; EBADF is harmless.
    unsafe { libc::close(fd) };
}

/// A close-on-exec duplicate of `fd` at 10 or above: the status pipe survives the
/// helper's own rearranging of 0–2 but closes by itself when the UEP is exec'd.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that nothing else owns.
    // At 10 or above, clear of the audit pipe's fixed place (3).
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })?;
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Makes `target` (0, 1 or 2) refer to `source`; the copy is not close-on-exec.
pub fn dup_onto(source: &impl AsRawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a standard descriptor; the old one (a pipe end or /dev/null) is
    // closed by the kernel and owned by no Rust object.
    check(unsafe { libc::dup2(source.as_raw_fd(), target) }).map(|_| ())
}

/// An anonymous in-memory file, for the UEP's stdin.
pub fn memfd(name: &str) -> io::Result<std::fs::File> {
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in memfd name"))?;
    // SAFETY: memfd_create with a valid C string; the returned fd is owned by the File.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: `fd` is new and owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Sets the signal this process gets when the thread that forked it exits.
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches nothing else.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })
        .map(|_| ())
}

/// No exec from here on can gain privileges (setuid binaries, file capabilities).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) is irreversible and affects only this process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(|_| ())
}

/// The parent's pid.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

/// Sets all three gids, then the supplementary groups of `user`. The first half of the
/// drop: it comes before the uids change (a process that gave up its uid can no longer
/// change groups), and before PAM's `pam_setcred`, which may add groups that
/// `initgroups` would otherwise wipe.
pub fn set_groups(user: &str, gid: libc::gid_t) -> io::Result<()> {
    let name = CString::new(user).map_err(|_| io::Error::other("NUL in user name"))?;
    // SAFETY: plain syscalls on this process's credentials with valid arguments.
    unsafe {
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::initgroups(name.as_ptr(), gid))?;
    }
    Ok(())
}

/// Sets all three uids: the second half of the drop, after which root is gone.
pub fn set_uids(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: a plain syscall on this process's credentials.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(|_| ())
}

/// Marks every descriptor from `first` up close-on-exec, so whatever a PAM module opened
/// and left open (as root) does not reach the user's process, while the module can still
/// use it until the exec.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on this process's
    // descriptors; it closes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.11 lack the flag: mark what /proc/self/fd lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; EBADF for the listing's own (now
        // closed) descriptor is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Checks that the drop is complete and for good: every uid and gid is the user's, and
/// becoming root again fails.
pub fn verify_dropped(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids into valid pointers.
    unsafe { check(libc::getresuid(&mut r, &mut e, &mut s))? };
    if (r, e, s) != (uid, uid, uid) {
        return Err(io::Error::other(format!("uids are {r}/{e}/{s}, not {uid}")));
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: as above.
    unsafe { check(libc::getresgid(&mut r, &mut e, &mut s))? };
    if (r, e, s) != (gid, gid, gid) {
        return Err(io::Error::other(format!("gids are {r}/{e}/{s}, not {gid}")));
    }
    if uid != 0 {
        // SAFETY: an attempt to regain root; it must fail, and if it works we exit anyway.
        if unsafe { libc::setuid(0) } == 0 || unsafe { libc::seteuid(0) } == 0 {
            return Err(io::Error::other("root could be regained after the drop"));
        }
    }
    Ok(())
}

/// Starts a new session, so the UEP and everything it starts form one process group
/// and session the MEP can stop together, detached from the MEP's terminal.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid on this process; fails only if already a group leader.
    check(unsafe { libc::setsid() }).map(|_| ())
}

/// Sets the file mode creation mask.
pub fn set_umask(mask: libc::mode_t) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// The supplementary groups of `user` with primary group `gid`.
pub fn groups_of(user: &str, gid: libc::gid_t) -> io::Result<Vec<u32>> {
    let name = CString::new(user).map_err(|_| io::Error::other("NUL in user name"))?;
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let before = count;
        // SAFETY: the buffer holds `count` gids; getgrouplist updates `count` to the
        // number it needs when the buffer is too small (and returns -1).
        let ret =
            unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if ret >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if count <= before {
            count = before * 2;
        }
        if count > 65536 {
            return Err(io::Error::other("too many groups"));
        }
    }
}
