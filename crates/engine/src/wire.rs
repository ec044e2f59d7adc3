//! The pool protocol: what a UEP and its worker pools say to each other over TCP.
//!
//! Each frame is a 4-byte big-endian length and then that many bytes of JSON, one
//! message, tagged by `"type"`. Before a peer has authenticated (see [`crate::auth`])
//! frames may be at most [`crate::limits::MAX_HANDSHAKE_FRAME`] bytes, afterwards
//! [`crate::limits::MAX_FRAME`]; a longer announced length ends the connection before anything
//! is allocated for it.
//!
//! A connection goes:
//! 1. UEP → pool `challenge {protocol, uep_id, nonce}`;
//! 2. pool → UEP `hello {protocol, block, nonce, proof}` (its own nonce, and its proof of
//!    the secret over both nonces);
//! 3. UEP → pool `welcome {proof, config}` (the UEP's proof, so the pool knows it is not
//!    talking to an impostor on a reused port, and how to run workers) or
//!    `refused {reason}`;
//! 4. pool → UEP `ready {workers, python, ..., details}` once its workers reported in, or
//!    `failed {message}` if they cannot start (then it exits);
//! 5. then `task` from the UEP, `started` / `result` / `lost` from the pool, `heartbeat`
//!    both ways every [`crate::limits::HEARTBEAT_PERIOD`], and finally `shutdown`.

use std::path::PathBuf;

use gantry_protocol::messagepack::ResultErrorDetails;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

/// The protocol's version; a pool of another version is refused with a clear reason.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// Messages from the UEP to a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToPool {
    /// The first frame on every connection.
    Challenge {
        protocol: u32,
        uep_id: Uuid,
        nonce: String,
    },
    /// The pool proved itself; here is the UEP's proof and the pool's configuration.
    Welcome { proof: String, config: PoolConfig },
    /// The pool is not welcome (bad proof, unknown block, other version).
    Refused { reason: String },
    /// Run this task; its result is serialized with the first of `result_serializers`
    /// (import paths of SDK strategies) that can, or with the SDK's defaults.
    Task {
        task_id: Uuid,
        task_buffer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result_serializers: Option<Vec<String>>,
    },
    /// The UEP is alive.
    Heartbeat,
    /// Stop the workers and exit.
    Shutdown,
}

/// Messages from a pool to the UEP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum FromPool {
    /// The answer to the challenge.
    Hello {
        protocol: u32,
        block: u64,
        nonce: String,
        proof: String,
    },
    /// Every worker started and reported a usable Python.
    Ready {
        workers: usize,
        python: String,
        python_executable: String,
        sdk: String,
        host: String,
        pid: u32,
        /// The workers' environment as a result's `details` reports it (`os`,
        /// `python_version`, `dill_version`, `globus_compute_sdk_version`).
        #[serde(default)]
        details: serde_json::Map<String, serde_json::Value>,
    },
    /// The pool cannot run tasks (no Python, no SDK, wrong Python); it exits next.
    Failed { message: String },
    /// A worker took the task.
    Started { task_id: Uuid, at_ms: u64 },
    /// The task's outcome, from the worker or (timeout) from the pool.
    Result {
        task_id: Uuid,
        data: String,
        error: Option<ResultErrorDetails>,
        started_ms: Option<u64>,
        finished_ms: u64,
    },
    /// The worker running the task died; the UEP decides whether to try again.
    Lost { task_id: Uuid, reason: String },
    /// The pool is alive.
    Heartbeat,
}

/// How a pool runs its workers: sent in `welcome`, so that the pool's command line
/// stays short and the same for every provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PoolConfig {
    pub layout: WorkerLayout,
    /// The Python to run; a bare name is looked up on the pool's `PATH`.
    pub worker_python: String,
    /// The submitters' Python `major.minor`, which the workers' must match.
    pub expected_python: Option<String>,
    /// Absolute.
    pub working_dir: PathBuf,
    pub run_in_sandbox: bool,
    pub allowed_serializers: Vec<String>,
    pub result_size_limit: usize,
}

/// How many workers, and of what kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum WorkerLayout {
    /// One worker process running up to `threads` tasks at once (`ThreadPoolEngine`).
    Threads { threads: usize },
    /// Exactly this many worker processes, one task each (`ProcessPoolEngine`).
    Processes { processes: usize },
    /// Worker processes, one task each, as many as fit the pool's node by Parsl's rules
    /// (`GlobusComputeEngine`); worked out where the pool runs.
    PerNode {
        max_workers: Option<usize>,
        cores_per_worker: f64,
        mem_per_worker: Option<f64>,
        accelerators: Vec<String>,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer announced a {length}-byte frame; at most {max} are accepted here")]
    TooLarge { length: usize, max: usize },
    #[error("the peer sent a frame that is not a valid message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message as a frame.
pub(crate) async fn write_frame<W, T>(writer: &mut W, message: &T) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    // Length placeholder first, so the body is serialized once, in place.
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message)?;
    let length = u32::try_from(frame.len() - 4)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one message, or `None` at a clean end of stream between frames.
pub(crate) async fn read_frame<R, T>(reader: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; 4];
    // A clean close comes before the first byte of a header; anything else is a tear.
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[1..]).await?;
    let length = u32::from_be_bytes(header) as usize;
    if length > max {
        return Err(FrameError::TooLarge { length, max });
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let message = FromPool::Lost {
            task_id: Uuid::new_v4(),
            reason: "worker 0 exited".into(),
        };
        write_frame(&mut a, &message).await.unwrap();
        let read: FromPool = read_frame(&mut b, 1024).await.unwrap().unwrap();
        assert_eq!(read, message);

        // A hostile header announcing 4 GiB is refused without reading further.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let error = read_frame::<_, FromPool>(&mut b, 1024).await.unwrap_err();
        assert!(
            matches!(error, FrameError::TooLarge { length, max: 1024 } if length == u32::MAX as usize)
        );

        drop(a);
        assert!(
            read_frame::<_, FromPool>(&mut b, 1024)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_frame_that_is_not_a_message_is_malformed() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        let error = read_frame::<_, ToPool>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(error, FrameError::Malformed(_)), "{error}");
    }
}
