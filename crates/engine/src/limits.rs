//! Every size limit and timeout of the engine, in one place, each with its reason.

use std::time::Duration;

/// The largest serialized result a task may return, as in Globus Compute (10 MiB);
/// bigger ones become a `MaxResultSizeExceeded` error result.
pub const RESULT_SIZE_LIMIT: usize = 10 * 1024 * 1024;

/// The most text of a traceback kept in an error result (its tail, where the exception
/// is), so that a huge exception message cannot make a result that no queue takes.
pub const TRACEBACK_LIMIT: usize = 1024 * 1024;

/// The largest frame either side of the pool protocol reads once authenticated. A
/// result is at most [`RESULT_SIZE_LIMIT`] characters, and JSON escaping can make a
/// character six bytes; anything beyond this is a broken or hostile peer.
pub const MAX_FRAME: usize = 6 * RESULT_SIZE_LIMIT + 4 * 1024 * 1024;

/// The largest frame read before the peer has proven it holds the secret (the pool's
/// `hello`, the UEP's `welcome` with the pool's configuration): a stranger must not make
/// either side allocate more than this.
pub const MAX_HANDSHAKE_FRAME: usize = 64 * 1024;

/// The longest line a pool reads from one of its Python workers (same reasoning as
/// [`MAX_FRAME`]).
pub const MAX_WORKER_LINE: usize = MAX_FRAME;

/// How long a connecting peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many handshakes may be in progress at once; more connections wait in the
/// kernel's backlog, so a flood of strangers cannot exhaust the UEP.
pub const MAX_PENDING_HANDSHAKES: usize = 32;

/// How often each side of a pool connection says it is alive.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);

/// A pool connection with no frame for this long is dead (a node that vanished without
/// closing its sockets); its tasks are lost and retried.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// How long a pool keeps trying to reach its UEP before it gives up and exits.
pub const POOL_CONNECT: Duration = Duration::from_secs(30);

/// How long a Python worker has to import the SDK and report its version. Imports on a
/// shared file system can be slow; a hung interpreter must still not hang the pool.
pub const WORKER_HELLO: Duration = Duration::from_secs(120);

/// How long a stopping pool gives its workers after SIGTERM before SIGKILL.
pub const WORKER_STOP: Duration = Duration::from_secs(2);

/// How long a stopping engine gives a pool's process group after SIGTERM before SIGKILL.
pub const BLOCK_STOP: Duration = Duration::from_secs(5);

/// The most [`crate::EngineHandle::shutdown`] waits for the engine to finish.
pub const ENGINE_STOP: Duration = Duration::from_secs(30);

/// How often the local provider is asked which blocks are still alive.
pub const PROVIDER_POLL: Duration = Duration::from_millis(500);

/// The first wait before starting a block again after one failed to start; it doubles
/// with each further failure up to [`START_BACKOFF_MAX`], so a broken `worker_init`
/// does not spin.
pub const START_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between attempts to start a block.
pub const START_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Tasks the UEP may have submitted but the engine not yet taken in.
pub const SUBMIT_QUEUE: usize = 65_536;

/// Events the engine may have ready before the UEP reads them; once reached, the engine
/// stops reading from its pools, which in turn stop reading from their workers.
pub const EVENT_QUEUE: usize = 256;

/// Frames queued towards one pool connection: the engine sends a pool no more tasks than
/// it has slots, so this only needs to exceed the largest pool, plus heartbeats.
pub const CONNECTION_QUEUE: usize = 4096;

/// Messages queued inside a pool (towards the UEP, from the UEP, towards one worker).
pub const CONNECTION_QUEUE_SPARE: usize = 16;

/// Lines of a block's log quoted in the error when it fails to start.
pub const LOG_TAIL_LINES: usize = 20;

/// Lines of a worker's stderr a pool keeps to explain a worker that died at start.
pub const STDERR_TAIL_LINES: usize = 20;
