//! The pooled engine's loop, on the UEP side: it holds the tasks, starts and stops blocks
//! through a [`Provider`], welcomes their pools, gives tasks to pools with free slots,
//! and turns what pools report into [`EngineEvent`]s.
//!
//! Every task the engine holds ends in exactly one `Finished` event: its result; a
//! failure to start any worker for it; or, once its worker has been lost more often than
//! `max_retries_on_system_failure` allows, a `WorkerLost` failure. Nothing waits forever
//! on a pool that is gone: a closed or silent connection, or a pool process that ended,
//! loses its tasks at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gantry_protocol::messagepack::ResultErrorDetails;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use super::listener::{Identity, PoolEvent, serve_connection};
use crate::codes;
use crate::handle::{
    EngineEvent, EngineResult, EngineSide, EngineStatus, EngineTask, from_unix_ms,
};
use crate::limits;
use crate::pool::PoolArgs;
use crate::provider::{BlockId, LaunchCommand, Provider, log_tail};
use crate::scaling::{BlockLoad, Plan, Policy};
use crate::wire::{FromPool, PoolConfig, ToPool};

/// Everything about an engine that does not change while it runs.
pub(crate) struct Settings {
    pub label: String,
    pub engine_type: &'static str,
    pub uep_id: Uuid,
    pub pool_config: PoolConfig,
    pub policy: Policy,
    pub strategy_period: Duration,
    pub max_retries: u32,
    /// Whether `resource_specification: {priority: N}` is understood (as Parsl's
    /// HighThroughputExecutor does); other engines take no resource specification.
    pub takes_priority: bool,
    pub pool_program: PathBuf,
    pub worker_init: String,
    /// Where pools connect.
    pub address: String,
    pub secret_file: PathBuf,
    /// The pools' run directory (they write the worker script there).
    pub pool_dir: PathBuf,
    pub logs_dir: PathBuf,
}

enum Link {
    /// Started; its pool has not connected yet.
    Launching,
    /// Authenticated; its workers are starting.
    Connected(mpsc::Sender<ToPool>),
    /// Running tasks on this many slots.
    Ready {
        sender: mpsc::Sender<ToPool>,
        workers: usize,
        /// Its workers' environment, for the `details` of the results it sends.
        details: Arc<Map<String, Value>>,
    },
    /// Stopped or failed; waiting for the provider to report its end.
    Gone,
}

struct Block {
    link: Link,
    running: HashSet<Uuid>,
    idle_since: Option<Instant>,
    log: PathBuf,
}

impl Block {
    fn sender(&self) -> Option<&mpsc::Sender<ToPool>> {
        match &self.link {
            Link::Connected(sender) | Link::Ready { sender, .. } => Some(sender),
            Link::Launching | Link::Gone => None,
        }
    }

    fn free_slots(&self) -> usize {
        match self.link {
            Link::Ready { workers, .. } => workers.saturating_sub(self.running.len()),
            _ => 0,
        }
    }
}

/// A task the engine holds.
struct Held {
    task: EngineTask,
    /// Its place in the queue: priority, then arrival.
    key: (i64, u64),
    /// Where it runs, if it does.
    block: Option<BlockId>,
    started: Option<SystemTime>,
    /// Why its workers were lost, one line per attempt.
    losses: Vec<String>,
    /// The environment of the workers of the block it was last given to.
    details: Option<Arc<Map<String, Value>>>,
}

pub(crate) struct Engine<P: Provider> {
    settings: Settings,
    provider: P,
    blocks: BTreeMap<BlockId, Block>,
    next_block: BlockId,
    tasks: HashMap<Uuid, Held>,
    pending: BTreeSet<(i64, u64, Uuid)>,
    next_seq: u64,
    outbox: VecDeque<EngineEvent>,
    start_failures: u32,
    next_start_at: Option<Instant>,
}

/// Runs the engine until the UEP stops it or drops its handle, then stops every block.
pub(crate) async fn run<P: Provider>(
    mut engine: Engine<P>,
    mut side: EngineSide,
    listener: TcpListener,
    identity: Arc<Identity>,
) {
    let (pool_tx, mut pool_rx) = mpsc::channel(limits::EVENT_QUEUE);
    let handshakes = Arc::new(Semaphore::new(limits::MAX_PENDING_HANDSHAKES));
    let initial = engine
        .settings
        .policy
        .init_blocks
        .min(engine.settings.policy.max_blocks);
    for _ in 0..initial {
        engine.start_block().await;
    }
    let mut poll = tokio::time::interval(limits::PROVIDER_POLL);
    let mut strategy = tokio::time::interval(engine.settings.strategy_period);
    let mut heartbeat = tokio::time::interval(limits::HEARTBEAT_PERIOD);
    for timer in [&mut poll, &mut strategy, &mut heartbeat] {
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    loop {
        // With this many events unread by the UEP, stop taking in more work.
        let room = engine.outbox.len() < limits::EVENT_QUEUE;
        tokio::select! {
            _ = async { drop(side.stop.wait_for(|stop| *stop).await) } => break,
            permit = side.events.reserve(), if !engine.outbox.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(event) = engine.outbox.pop_front() {
                        permit.send(event);
                    }
                }
                Err(_) => break, // the UEP dropped its handle
            },
            task = side.tasks.recv(), if room => match task {
                Some(task) => engine.accept(task),
                None => break,
            },
            Some(event) = pool_rx.recv(), if room => engine.on_pool_event(event),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match handshakes.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_connection(stream, peer, identity.clone(), pool_tx.clone(), permit));
                    }
                    Err(_) => tracing::warn!(%peer, "too many pool handshakes at once; connection dropped"),
                },
                Err(e) => {
                    // Out of file descriptors, typically; do not spin on it.
                    tracing::error!(error = %e, "cannot accept pool connections");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = poll.tick() => engine.poll_provider().await,
            _ = strategy.tick() => {}
            _ = heartbeat.tick() => engine.heartbeat_pools(),
        }
        engine.scale().await;
        engine.dispatch();
        engine.publish(&side.status);
    }
    engine.shutdown().await;
    engine.publish(&side.status);
    // Dropping `side` (its event sender) tells the handle the engine has stopped.
}

/// The bytes `text` takes as a JSON string, as serde_json writes it.
fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

impl<P: Provider> Engine<P> {
    pub(crate) fn new(settings: Settings, provider: P) -> Engine<P> {
        Engine {
            settings,
            provider,
            blocks: BTreeMap::new(),
            next_block: 1,
            tasks: HashMap::new(),
            pending: BTreeSet::new(),
            next_seq: 0,
            outbox: VecDeque::new(),
            start_failures: 0,
            next_start_at: None,
        }
    }

    fn finish(&mut self, task_id: Uuid, data: String, error: Option<ResultErrorDetails>) {
        let (started, details) = match self.tasks.remove(&task_id) {
            Some(held) => {
                self.pending.remove(&(held.key.0, held.key.1, task_id));
                (held.started, held.details)
            }
            None => (None, None),
        };
        self.outbox.push_back(EngineEvent::Finished(EngineResult {
            task_id,
            data,
            error,
            started,
            finished: SystemTime::now(),
            details: details.map(|d| (*d).clone()).unwrap_or_default(),
        }));
    }

    /// Fails a task the engine has not taken in.
    fn refuse(&mut self, task_id: Uuid, code: &str, message: String) {
        tracing::warn!(%task_id, code, message, "task refused");
        self.outbox.push_back(EngineEvent::Finished(EngineResult {
            task_id,
            data: message.clone(),
            error: Some(ResultErrorDetails {
                code: code.into(),
                user_message: message,
            }),
            started: None,
            finished: SystemTime::now(),
            details: Map::new(),
        }));
    }

    /// Takes in a submitted task.
    fn accept(&mut self, task: EngineTask) {
        let task_id = task.task_id;
        if self.tasks.contains_key(&task_id) {
            // A redelivery of a task already held: its one result is on the way.
            tracing::warn!(%task_id, "task submitted twice; keeping the first");
            return;
        }
        let priority = match self.priority(task.resource_specification.as_ref()) {
            Ok(priority) => priority,
            Err(message) => {
                return self.refuse(task_id, codes::INVALID_RESOURCE_SPECIFICATION, message);
            }
        };
        // As JSON in a frame, with room for the frame's other fields.
        let room = limits::MAX_FRAME - 64 * 1024;
        let serializers: usize = task
            .result_serializers
            .iter()
            .flatten()
            .map(|path| json_string_len(path) + 1)
            .sum();
        if json_string_len(&task.task_buffer) + serializers > room {
            return self.refuse(
                task_id,
                codes::TASK_TOO_LARGE,
                format!(
                    "the task's payload is {} bytes, more than a worker pool accepts \
                     ({room} bytes once encoded)",
                    task.task_buffer.len(),
                ),
            );
        }
        self.next_seq += 1;
        let key = (priority, self.next_seq);
        self.pending.insert((key.0, key.1, task_id));
        self.tasks.insert(
            task_id,
            Held {
                task,
                key,
                block: None,
                started: None,
                losses: Vec::new(),
                details: None,
            },
        );
    }

    /// The queue priority a resource specification asks for (lower runs first).
    fn priority(&self, spec: Option<&Value>) -> Result<i64, String> {
        let Some(spec) = spec.filter(|s| !s.is_null()) else {
            return Ok(0);
        };
        let Some(map) = spec.as_object() else {
            return Err(format!(
                "resource_specification must be a mapping, not {spec}"
            ));
        };
        if map.is_empty() {
            return Ok(0);
        }
        if !self.settings.takes_priority {
            return Err(format!(
                "resource_specification is not supported on {}; submit without one (Gantry \
                 has no MPI engine yet)",
                self.settings.engine_type
            ));
        }
        if let Some(key) = map.keys().find(|k| k.as_str() != "priority") {
            return Err(format!(
                "resource_specification key {key:?} is not supported on {}; it only accepts: \
                 priority",
                self.settings.engine_type
            ));
        }
        match map.get("priority").and_then(Value::as_f64) {
            Some(p) if p.is_finite() => Ok(p.round() as i64),
            _ => Err("resource_specification.priority must be a number (lower runs first)".into()),
        }
    }

    async fn start_block(&mut self) {
        let block = self.next_block;
        self.next_block += 1;
        let log = self.settings.logs_dir.join(format!("block-{block}.log"));
        let args = PoolArgs {
            uep: self.settings.address.clone(),
            uep_id: self.settings.uep_id,
            block,
            secret_file: self.settings.secret_file.clone(),
            run_dir: self.settings.pool_dir.clone(),
        };
        let command = LaunchCommand {
            program: self.settings.pool_program.clone(),
            args: args.to_args(),
            worker_init: self.settings.worker_init.clone(),
            log: log.clone(),
        };
        self.blocks.insert(
            block,
            Block {
                link: Link::Launching,
                running: HashSet::new(),
                idle_since: None,
                log,
            },
        );
        tracing::info!(
            label = self.settings.label,
            provider = self.provider.name(),
            block,
            "starting a block"
        );
        if let Err(e) = self.provider.start(block, &command).await {
            self.on_start_failure(block, e.to_string());
            // The provider never had it, so it will never report its end.
            self.blocks.remove(&block);
        }
    }

    /// Stops a block: its pool is told, then the provider stops its processes. Its
    /// running tasks (none, when scaling in) are lost.
    fn stop_block(&mut self, block: BlockId, why: &str) {
        let Some(entry) = self.blocks.get_mut(&block) else {
            return;
        };
        if let Some(sender) = entry.sender() {
            let _ = sender.try_send(ToPool::Shutdown);
        }
        entry.link = Link::Gone;
        let running: Vec<Uuid> = entry.running.drain().collect();
        tracing::info!(block, why, "stopping a block");
        self.provider.cancel(block);
        for task_id in running {
            self.on_lost(task_id, format!("block {block} was stopped ({why})"));
        }
    }

    /// A block could not start (or its workers could not): back off before the next try
    /// and, while no pool is running tasks, fail the waiting tasks with the reason, so
    /// that a missing Python or a broken `worker_init` is an answer, not a hang.
    fn on_start_failure(&mut self, block: BlockId, message: String) {
        tracing::error!(
            label = self.settings.label,
            block,
            message,
            "a worker pool failed to start"
        );
        self.start_failures = self.start_failures.saturating_add(1);
        let backoff = limits::START_BACKOFF
            .saturating_mul(1u32 << self.start_failures.saturating_sub(1).min(16))
            .min(limits::START_BACKOFF_MAX);
        self.next_start_at = Some(Instant::now() + backoff);
        if self.blocks.contains_key(&block) {
            self.stop_block(block, "its workers could not start");
        }
        let any_ready = self
            .blocks
            .values()
            .any(|b| matches!(b.link, Link::Ready { .. }));
        if any_ready {
            return;
        }
        let waiting: Vec<Uuid> = self.pending.iter().map(|(_, _, id)| *id).collect();
        let text = format!("Gantry could not start a worker to run this task: {message}");
        for task_id in waiting {
            self.finish(
                task_id,
                text.clone(),
                Some(ResultErrorDetails {
                    code: codes::WORKER_START_FAILED.into(),
                    user_message: text.clone(),
                }),
            );
        }
    }

    /// A task's worker died: run it again if retries remain, else fail it.
    fn on_lost(&mut self, task_id: Uuid, reason: String) {
        let max_retries = self.settings.max_retries;
        let Some(held) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if let Some(block) = held.block.take()
            && let Some(entry) = self.blocks.get_mut(&block)
        {
            entry.running.remove(&task_id);
        }
        held.losses.push(reason);
        let attempts = held.losses.len();
        if attempts <= max_retries as usize {
            tracing::warn!(%task_id, attempts, max_retries, "worker lost; running the task again");
            self.pending.insert((held.key.0, held.key.1, task_id));
            return;
        }
        let data = if attempts == 1 {
            format!(
                "WorkerLost: Task failure due to loss of worker: {}",
                held.losses[0]
            )
        } else {
            let mut text = format!(
                "WorkerLost: the task ran {attempts} times (max_retries_on_system_failure is \
                 {max_retries}) and its worker was lost each time:"
            );
            for (attempt, loss) in held.losses.iter().enumerate() {
                text.push_str(&format!("\n  attempt {}: {loss}", attempt + 1));
            }
            text
        };
        tracing::warn!(%task_id, attempts, "worker lost; the task fails");
        self.finish(
            task_id,
            data,
            Some(ResultErrorDetails {
                code: codes::WORKER_LOST.into(),
                user_message: "the worker running this task was lost (it died or was killed)"
                    .into(),
            }),
        );
    }

    fn on_pool_event(&mut self, event: PoolEvent) {
        match event {
            PoolEvent::Authenticated {
                block,
                peer,
                sender,
                decision,
            } => {
                let answer = match self.blocks.get_mut(&block) {
                    Some(entry) if matches!(entry.link, Link::Launching) => {
                        tracing::info!(block, %peer, "worker pool connected");
                        entry.link = Link::Connected(sender);
                        Ok(self.settings.pool_config.clone())
                    }
                    _ => Err(format!(
                        "block {block} is not one this UEP is waiting for (stopped, or already \
                         connected)"
                    )),
                };
                let _ = decision.send(answer);
            }
            PoolEvent::Message { block, message } => self.on_pool_message(block, message),
            PoolEvent::Disconnected { block, reason } => {
                let Some(entry) = self.blocks.get(&block) else {
                    return;
                };
                match entry.link {
                    Link::Gone => {}
                    Link::Launching | Link::Connected(_) => {
                        let tail = log_tail(&entry.log, limits::LOG_TAIL_LINES);
                        self.on_start_failure(
                            block,
                            format!(
                                "the worker pool of block {block} disconnected before its \
                                 workers were ready ({reason}); the end of its log:\n{tail}"
                            ),
                        );
                    }
                    Link::Ready { .. } => {
                        self.stop_block(block, &format!("its worker pool disconnected: {reason}"))
                    }
                }
            }
        }
    }

    fn on_pool_message(&mut self, block: BlockId, message: FromPool) {
        match message {
            FromPool::Ready {
                workers,
                python,
                python_executable,
                sdk,
                host,
                pid,
                details,
            } => {
                let Some(entry) = self.blocks.get_mut(&block) else {
                    return;
                };
                let Link::Connected(sender) = &entry.link else {
                    return;
                };
                tracing::info!(
                    block,
                    workers,
                    python,
                    python_executable,
                    sdk,
                    host,
                    pid,
                    "worker pool ready"
                );
                entry.link = Link::Ready {
                    sender: sender.clone(),
                    workers,
                    details: Arc::new(details),
                };
                entry.idle_since = Some(Instant::now());
                self.start_failures = 0;
                self.next_start_at = None;
            }
            FromPool::Failed { message } => self.on_start_failure(block, message),
            FromPool::Started { task_id, at_ms } => {
                let Some(held) = self.tasks.get_mut(&task_id) else {
                    return;
                };
                if held.block != Some(block) {
                    return;
                }
                let at = from_unix_ms(at_ms);
                held.started = Some(at);
                self.outbox.push_back(EngineEvent::Started { task_id, at });
            }
            FromPool::Result {
                task_id,
                data,
                error,
                started_ms,
                finished_ms,
            } => {
                let Some(held) = self.tasks.get(&task_id) else {
                    return;
                };
                if held.block != Some(block) {
                    return; // from a block the task was already taken from
                }
                if let Some(entry) = self.blocks.get_mut(&block) {
                    entry.running.remove(&task_id);
                    if entry.running.is_empty() {
                        entry.idle_since = Some(Instant::now());
                    }
                }
                if let Some(held) = self.tasks.remove(&task_id) {
                    self.outbox.push_back(EngineEvent::Finished(EngineResult {
                        task_id,
                        data,
                        error,
                        started: started_ms.map(from_unix_ms).or(held.started),
                        finished: from_unix_ms(finished_ms),
                        details: held.details.map(|d| (*d).clone()).unwrap_or_default(),
                    }));
                }
            }
            FromPool::Lost { task_id, reason } => {
                if self.tasks.get(&task_id).and_then(|h| h.block) == Some(block) {
                    self.on_lost(task_id, reason);
                    if let Some(entry) = self.blocks.get_mut(&block)
                        && entry.running.is_empty()
                    {
                        entry.idle_since = Some(Instant::now());
                    }
                }
            }
            FromPool::Heartbeat | FromPool::Hello { .. } => {}
        }
    }

    /// Learns which blocks ended; a block that ended before its pool was ready failed
    /// to start, one that was running loses its tasks.
    async fn poll_provider(&mut self) {
        for (block, how) in self.provider.poll_ended().await {
            let Some(entry) = self.blocks.get(&block) else {
                continue;
            };
            match entry.link {
                Link::Gone => {}
                Link::Launching | Link::Connected(_) => {
                    let tail = log_tail(&entry.log, limits::LOG_TAIL_LINES);
                    self.on_start_failure(
                        block,
                        format!(
                            "the worker pool of block {block} {how} before its workers were \
                             ready; the end of its log:\n{tail}"
                        ),
                    );
                }
                Link::Ready { .. } => {
                    self.stop_block(block, &format!("its worker pool process {how}"));
                }
            }
            self.blocks.remove(&block);
        }
    }

    fn heartbeat_pools(&self) {
        for entry in self.blocks.values() {
            if let Some(sender) = entry.sender() {
                let _ = sender.try_send(ToPool::Heartbeat);
            }
        }
    }

    /// Adds or removes blocks as the policy says.
    async fn scale(&mut self) {
        let loads: Vec<BlockLoad> = self
            .blocks
            .iter()
            .filter(|(_, b)| !matches!(b.link, Link::Gone))
            .map(|(id, b)| BlockLoad {
                id: *id,
                running: b.running.len(),
                idle_since: match b.link {
                    Link::Ready { .. } if b.running.is_empty() => b.idle_since,
                    _ => None,
                },
            })
            .collect();
        let running = self.tasks.len() - self.pending.len();
        let now = Instant::now();
        match self
            .settings
            .policy
            .plan(self.pending.len(), running, &loads, now)
        {
            Plan::Hold => {}
            Plan::Start(count) => {
                if self.next_start_at.is_some_and(|at| now < at) {
                    return; // backing off after a failed start
                }
                for _ in 0..count {
                    self.start_block().await;
                }
            }
            Plan::Stop(blocks) => {
                for block in blocks {
                    self.stop_block(block, "idle for longer than max_idletime");
                }
            }
        }
    }

    /// Gives waiting tasks to ready pools, filling the oldest blocks first so that the
    /// newest fall idle and can be scaled in.
    fn dispatch(&mut self) {
        while let Some(&(priority, seq, task_id)) = self.pending.first() {
            let Some((&block, entry)) = self.blocks.iter_mut().find(|(_, b)| b.free_slots() > 0)
            else {
                return;
            };
            let Some(held) = self.tasks.get_mut(&task_id) else {
                self.pending.remove(&(priority, seq, task_id));
                continue;
            };
            let Link::Ready {
                sender, details, ..
            } = &entry.link
            else {
                return;
            };
            let frame = ToPool::Task {
                task_id,
                task_buffer: held.task.task_buffer.clone(),
                result_serializers: held.task.result_serializers.clone(),
            };
            if sender.try_send(frame).is_err() {
                // Full or closed: the connection is in trouble; its end is reported soon.
                return;
            }
            held.details = Some(details.clone());
            self.pending.remove(&(priority, seq, task_id));
            held.block = Some(block);
            entry.running.insert(task_id);
            entry.idle_since = None;
        }
    }

    fn status(&self) -> EngineStatus {
        let (mut workers, mut idle_workers) = (0, 0);
        for entry in self.blocks.values() {
            if let Link::Ready { workers: slots, .. } = entry.link {
                workers += slots;
                idle_workers += slots.saturating_sub(entry.running.len());
            }
        }
        EngineStatus {
            workers,
            idle_workers,
            outstanding: self.tasks.len(),
            pending: self.pending.len(),
            blocks: self
                .blocks
                .values()
                .filter(|b| !matches!(b.link, Link::Gone))
                .count(),
        }
    }

    fn publish(&self, status: &watch::Sender<EngineStatus>) {
        let now = self.status();
        status.send_if_modified(|current| {
            if *current == now {
                false
            } else {
                *current = now;
                true
            }
        });
    }

    async fn shutdown(&mut self) {
        tracing::info!(
            label = self.settings.label,
            blocks = self.blocks.len(),
            "stopping the engine"
        );
        for entry in self.blocks.values() {
            if let Some(sender) = entry.sender() {
                let _ = sender.try_send(ToPool::Shutdown);
            }
        }
        self.provider.shutdown().await;
        self.blocks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::json_string_len;

    #[test]
    fn json_string_len_matches_serde_json() {
        for text in [
            "",
            "plain",
            "quote\" back\\ nl\n tab\t bell\u{7} ff\u{c}",
            "naïve ☃ 𝄞",
        ] {
            let encoded = serde_json::to_string(text).unwrap_or_default();
            assert_eq!(json_string_len(text), encoded.len(), "{text:?}");
        }
    }
}
