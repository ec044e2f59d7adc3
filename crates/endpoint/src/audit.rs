//! The audit log of a high-assurance MEP (SPEC §5): one pipe per UEP. The UEP writes a
//! record for each step of each task on the pipe it inherited at descriptor 3; the MEP
//! reads it, stamps each record with what the UEP cannot forge (time, uid, pid, UEP id)
//! and appends it to `audit.log`. A UEP whose audit write fails stops: with high
//! assurance, no task runs unrecorded.

use std::io::Write;
use std::os::fd::FromRawFd;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// The most bytes of one record: below PIPE_BUF, so each write is atomic and records
/// from one UEP never interleave.
pub const MAX_RECORD: usize = 1024;

/// The steps of a task that are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditEvent {
    /// The UEP took the task from its queue.
    Received,
    /// The UEP handed it to its engine.
    ExecStart,
    /// A worker started it.
    Running,
    /// It finished with a result.
    ExecEnd,
    /// It failed (an exception, a lost worker, or refused by the endpoint).
    Failed,
}

/// A record as the UEP writes it: only what the UEP knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UepRecord {
    event: AuditEvent,
    task_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function_id: Option<Uuid>,
}

/// The UEP's end: the inherited write end of its audit pipe.
#[derive(Debug)]
pub struct AuditWriter {
    pipe: std::fs::File,
}

impl AuditWriter {
    /// Takes ownership of descriptor `fd`, which the MEP's helper left open.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process owns.
    pub unsafe fn from_fd(fd: i32) -> AuditWriter {
        // SAFETY: the caller guarantees `fd` is open and owned by nobody else.
        AuditWriter {
            pipe: unsafe { std::fs::File::from_raw_fd(fd) },
        }
    }

    /// Writes one record; an error means the record is lost and the UEP must stop.
    pub fn record(
        &mut self,
        event: AuditEvent,
        task_id: Uuid,
        function_id: Option<Uuid>,
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&UepRecord {
            event,
            task_id,
            function_id,
        })?;
        line.push(b'\n');
        self.pipe.write_all(&line)
    }
}

/// The MEP's stamp on a record from a UEP: the record's own fields only if they parse
/// as a record (a UEP runs as its user, who may write anything on the pipe), and the
/// trusted fields from the MEP's own knowledge. `None` for a line that is not a record.
pub fn stamp(line: &str, uid: Option<u32>, pid: i32, uep_id: Uuid) -> Option<String> {
    if line.len() > MAX_RECORD {
        return None;
    }
    let record: UepRecord = serde_json::from_str(line).ok()?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(
        json!({
            "time": format!("{}.{:09}", time.as_secs(), time.subsec_nanos()),
            "event": record.event,
            "uep_id": uep_id,
            "uid": uid,
            "pid": pid,
            "task_id": record.task_id,
            "function_id": record.function_id,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_mep_keeps_only_well_formed_records_and_stamps_its_own_facts() {
        let task = Uuid::new_v4();
        let uep = Uuid::new_v4();
        let line = format!(r#"{{"event":"EXEC_END","task_id":"{task}"}}"#);
        let stamped: serde_json::Value =
            serde_json::from_str(&stamp(&line, Some(1001), 42, uep).unwrap()).unwrap();
        assert_eq!(stamped["event"], "EXEC_END");
        assert_eq!(stamped["uid"], 1001);
        assert_eq!(stamped["pid"], 42);
        assert_eq!(stamped["uep_id"], uep.to_string());
        // A UEP cannot claim another uid or pid: unknown fields are not copied.
        let forged = format!(r#"{{"event":"RUNNING","task_id":"{task}","uid":0,"pid":1}}"#);
        let stamped: serde_json::Value =
            serde_json::from_str(&stamp(&forged, Some(1001), 42, uep).unwrap()).unwrap();
        assert_eq!(stamped["uid"], 1001);
        assert_eq!(stamped["pid"], 42);
        for junk in ["", "{}", "not json", r#"{"event":"DELETED","task_id":"x"}"#] {
            assert!(stamp(junk, Some(1), 1, uep).is_none(), "{junk}");
        }
        assert!(stamp(&"x".repeat(MAX_RECORD + 1), Some(1), 1, uep).is_none());
    }
}
