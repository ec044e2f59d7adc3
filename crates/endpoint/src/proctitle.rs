//! Process titles, as `ps` and htop show them: `Gantry Endpoint *(<mep id>, <name>)` for
//! a MEP, `Gantry Endpoint (<uep id>, uep.<mep>.<uep>)` for each UEP process, with its
//! state in front when it is idle (`[idle; shut down in 50s] …`).
//!
//! Linux shows a process's argument area (`/proc/<pid>/cmdline`). The MEP's spawn
//! helper execs the UEP with its title as `argv[0]` and spare room after it, so the UEP
//! can rewrite the title in place; the MEP rewrites its own argument area the same way,
//! within what it has.

use std::sync::Mutex;

/// The argument area of this process: start address and length, from
/// `/proc/self/stat` (fields 48 and 49, `arg_start` and `arg_end`).
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); arg_start is field 48, arg_end field 49.
    let start: usize = fields.get(48 - 3)?.parse().ok()?;
    let end: usize = fields.get(49 - 3)?.parse().ok()?;
    (end > start).then_some((start, end - start))
}

static AREA: Mutex<Option<(usize, usize)>> = Mutex::new(None);

/// Sets the title, truncated to the room the process started with. Returns whether it
/// could be set.
pub fn set(title: &str) -> bool {
    let mut area = AREA.lock().unwrap_or_else(|e| e.into_inner());
    if area.is_none() {
        *area = argument_area();
    }
    let Some((start, len)) = *area else {
        return false;
    };
    let bytes = title.as_bytes();
    let n = bytes.len().min(len.saturating_sub(1));
    // SAFETY: [start, start+len) is this process's own argument area, mapped writable
    // by the kernel for the life of the process (it is on the initial stack). std's
    // `env::args()` reads the argv strings that live there, so after this call it
    // returns the title instead of the original arguments: the endpoint parses its
    // arguments once, at start-up, before any title is set. Bytes are only overwritten
    // within the area, never past it, and the lock above serialises writers.
    unsafe {
        let dest = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dest, n);
        std::ptr::write_bytes(dest.add(n), 0, len - n);
    }
    // The short name (comm) too, for top and pgrep: at most 15 bytes.
    let _ = nix::sys::prctl::set_name(
        &std::ffi::CString::new(title.chars().take(15).collect::<String>()).unwrap_or_default(),
    );
    true
}

/// This process's title as others see it.
pub fn current() -> String {
    std::fs::read("/proc/self/cmdline")
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}
