//! The pool's loop: keep the workers running, give them tasks, enforce
//! `GC_TASK_TIMEOUT`, and tell the UEP everything that happens.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use gantry_protocol::messagepack::ResultErrorDetails;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::PoolArgs;
use super::connect::{Link, establish};
use super::sizing::{Node, slots};
use super::workers::{
    Hello, WorkerCommand, WorkerEvent, WorkerEventKind, WorkerMessage, WorkerProcess,
    install_script, spawn,
};
use crate::auth::Secret;
use crate::codes;
use crate::handle::unix_ms;
use crate::limits;
use crate::wire::{FromPool, PoolConfig, ToPool, WorkerLayout};

/// Why the loop ended early.
enum Stop {
    /// The workers cannot run tasks; the UEP is told why.
    WorkersFailed(String),
    /// The UEP is gone; there is nobody to tell.
    UepGone(String),
}

/// Runs a pool until it is told to stop or cannot go on.
pub(super) async fn run(args: PoolArgs) -> Result<(), String> {
    // Watch for SIGTERM from the start, so that one arriving while workers start is
    // handled by stopping them rather than by dying and leaving them to the death signal.
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    let secret = Secret::read(&args.secret_file).map_err(|e| e.to_string())?;
    let link = establish(&args, &secret).await?;
    tracing::info!(block = args.block, uep = %args.uep, "authenticated with the UEP");
    let Link {
        config,
        incoming,
        outgoing,
        writer,
    } = link;
    let outcome = match Pool::prepare(&args, config, incoming, outgoing.clone()) {
        Ok(mut pool) => {
            let outcome = pool.serve(&mut terminate).await;
            pool.stop_workers().await;
            outcome
        }
        Err(message) => Err(Stop::WorkersFailed(message)),
    };
    let result = match outcome {
        Ok(()) => Ok(()),
        Err(Stop::WorkersFailed(message)) => {
            let _ = outgoing
                .send(FromPool::Failed {
                    message: message.clone(),
                })
                .await;
            Err(message)
        }
        Err(Stop::UepGone(message)) => Err(message),
    };
    // Let the writer flush what is queued (a final `failed`, results) before exiting.
    drop(outgoing);
    let _ = tokio::time::timeout(limits::WORKER_STOP, writer).await;
    result
}

enum SlotState {
    /// Started; waiting for its hello until the deadline.
    Starting {
        deadline: Instant,
    },
    Ready(Hello),
    /// Stopped for a timeout; its exit is expected.
    Dying,
}

/// A task from the UEP waiting for a worker.
struct QueuedTask {
    task_id: Uuid,
    task_buffer: String,
    result_serializers: Option<Vec<String>>,
}

struct RunningTask {
    started: SystemTime,
    deadline: Option<Instant>,
}

/// One worker position; its process is replaced when it dies.
struct Slot {
    index: usize,
    generation: u64,
    process: WorkerProcess,
    state: SlotState,
    running: HashMap<Uuid, RunningTask>,
}

struct Pool {
    block: u64,
    host: String,
    config: PoolConfig,
    command: WorkerCommand,
    /// Tasks one worker runs at once.
    per_worker: usize,
    accelerators: Vec<String>,
    task_timeout: Option<Duration>,
    slots: Vec<Slot>,
    next_generation: u64,
    queue: VecDeque<QueuedTask>,
    announced: bool,
    events_tx: mpsc::Sender<WorkerEvent>,
    events: mpsc::Receiver<WorkerEvent>,
    incoming: mpsc::Receiver<ToPool>,
    outgoing: mpsc::Sender<FromPool>,
}

/// `GC_TASK_TIMEOUT` from the pool's environment (which `worker_init` may have set), in
/// seconds; 0, negative or unreadable means none, as in Globus Compute.
fn task_timeout() -> Option<Duration> {
    let seconds: f64 = std::env::var("GC_TASK_TIMEOUT").ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this node".into())
}

impl Pool {
    fn prepare(
        args: &PoolArgs,
        config: PoolConfig,
        incoming: mpsc::Receiver<ToPool>,
        outgoing: mpsc::Sender<FromPool>,
    ) -> Result<Pool, String> {
        let host = host_name();
        let total = slots(&config.layout, Node::detect());
        let (workers, per_worker, accelerators) = match &config.layout {
            WorkerLayout::Threads { threads } => (1, (*threads).max(1), Vec::new()),
            WorkerLayout::Processes { processes } => ((*processes).max(1), 1, Vec::new()),
            WorkerLayout::PerNode {
                cores_per_worker,
                accelerators,
                ..
            } => {
                if total == 0 {
                    return Err(format!(
                        "no worker fits on {host}: check max_workers_per_node, \
                         cores_per_worker ({cores_per_worker}), mem_per_worker and \
                         available_accelerators against the node's resources"
                    ));
                }
                (total, 1, accelerators.clone())
            }
        };
        std::fs::create_dir_all(&config.working_dir).map_err(|e| {
            format!(
                "cannot create the tasks' working directory {} on {host}: {e}",
                config.working_dir.display()
            )
        })?;
        let script = install_script(&args.run_dir).map_err(|e| {
            format!(
                "cannot write the worker script into {} on {host}: {e}",
                args.run_dir.display()
            )
        })?;
        let worker_config = json!({
            "threads": per_worker,
            "working_dir": config.working_dir,
            "run_in_sandbox": config.run_in_sandbox,
            "allowed_serializers": config.allowed_serializers,
            "result_size_limit": config.result_size_limit,
            "traceback_limit": limits::TRACEBACK_LIMIT,
        });
        let command = WorkerCommand {
            python: config.worker_python.clone(),
            script,
            config_json: worker_config.to_string(),
            working_dir: config.working_dir.clone(),
        };
        let (events_tx, events) = mpsc::channel(limits::EVENT_QUEUE);
        let mut pool = Pool {
            block: args.block,
            host,
            config,
            command,
            per_worker,
            accelerators,
            task_timeout: task_timeout(),
            slots: Vec::with_capacity(workers),
            next_generation: 0,
            queue: VecDeque::new(),
            announced: false,
            events_tx,
            events,
            incoming,
            outgoing,
        };
        for index in 0..workers {
            let (generation, process) = pool.start_worker(index, workers)?;
            pool.slots.push(Slot {
                index,
                generation,
                process,
                state: SlotState::Starting {
                    deadline: Instant::now() + limits::WORKER_HELLO,
                },
                running: HashMap::new(),
            });
        }
        tracing::info!(
            block = pool.block,
            workers,
            per_worker,
            timeout_s = pool.task_timeout.map(|t| t.as_secs_f64()),
            "starting workers"
        );
        Ok(pool)
    }

    /// Starts the worker for slot `index`, with Parsl's worker variables and its share of
    /// the accelerators.
    fn start_worker(&mut self, index: usize, count: usize) -> Result<(u64, WorkerProcess), String> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let mut env = vec![
            ("PARSL_WORKER_RANK".to_owned(), index.to_string()),
            ("PARSL_WORKER_COUNT".to_owned(), count.to_string()),
            ("PARSL_WORKER_BLOCK_ID".to_owned(), self.block.to_string()),
            (
                "PARSL_WORKER_POOL_ID".to_owned(),
                format!("{}-{}", self.host, self.block),
            ),
        ];
        if let Some(accelerator) = self.accelerators.get(index) {
            for name in [
                "CUDA_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES",
                "ZE_AFFINITY_MASK",
            ] {
                env.push((name.to_owned(), accelerator.clone()));
            }
        }
        let process = spawn(
            &self.command,
            &env,
            index,
            generation,
            self.events_tx.clone(),
        )
        .map_err(|e| self.spawn_failure(&e))?;
        Ok((generation, process))
    }

    fn spawn_failure(&self, error: &std::io::Error) -> String {
        let python = &self.command.python;
        if error.kind() == std::io::ErrorKind::NotFound {
            let place = if python.contains('/') {
                String::new()
            } else {
                format!(
                    " on PATH ({})",
                    std::env::var("PATH").unwrap_or_else(|_| "unset".into())
                )
            };
            format!(
                "cannot start the Python worker on {}: the Python executable {python:?} was \
                 not found{place}. Set the engine's worker_python to a Python that has \
                 globus-compute-sdk, or make the provider's worker_init put one on PATH.",
                self.host
            )
        } else {
            format!(
                "cannot start the Python worker {python:?} on {}: {error}",
                self.host
            )
        }
    }

    /// Whether a worker's Python can run the tasks; why not, for the scientist.
    fn check_hello(&self, hello: &Hello) -> Result<(), String> {
        if let Some(error) = &hello.sdk_error {
            return Err(format!(
                "the workers' Python {} (Python {}) on {} cannot import globus_compute_sdk \
                 ({error}). Install globus-compute-sdk into that environment, or set the \
                 engine's worker_python (or the provider's worker_init) to a Python that has it.",
                hello.executable, hello.python, self.host
            ));
        }
        if let Some(error) = &hello.config_error {
            return Err(format!(
                "the workers cannot start on {}: {error}",
                self.host
            ));
        }
        if let Some(expected) = &self.config.expected_python {
            let actual: Vec<&str> = hello.python.split('.').take(2).collect();
            let wanted: Vec<&str> = expected.split('.').take(2).collect();
            if actual != wanted {
                return Err(format!(
                    "the workers' Python {} on {} is Python {}, but the tasks were submitted \
                     from Python {expected}; Globus Compute serializes functions with dill, \
                     which needs the same Python major.minor on both sides. Set the engine's \
                     worker_python (or the provider's worker_init) to a Python {expected} \
                     with globus-compute-sdk.",
                    hello.executable, self.host, hello.python
                ));
            }
        }
        Ok(())
    }

    async fn send(&self, message: FromPool) -> Result<(), Stop> {
        self.outgoing
            .send(message)
            .await
            .map_err(|_| Stop::UepGone("the connection to the UEP is closed".into()))
    }

    async fn serve(&mut self, terminate: &mut tokio::signal::unix::Signal) -> Result<(), Stop> {
        let mut heartbeat = tokio::time::interval(limits::HEARTBEAT_PERIOD);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                message = self.incoming.recv() => match message {
                    None => return Err(Stop::UepGone("the connection to the UEP ended".into())),
                    Some(ToPool::Task { task_id, task_buffer, result_serializers }) => {
                        self.queue.push_back(QueuedTask { task_id, task_buffer, result_serializers });
                        self.assign().await?;
                    }
                    Some(ToPool::Shutdown) => {
                        tracing::info!("the UEP asked this pool to stop");
                        return Ok(());
                    }
                    Some(ToPool::Heartbeat) => {}
                    Some(other) => tracing::warn!(?other, "unexpected message from the UEP"),
                },
                Some(event) = self.events.recv() => self.on_worker_event(event).await?,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_deadlines().await?;
                }
                _ = heartbeat.tick() => {
                    // Skipped when the queue is full: the UEP then has fresher news anyway.
                    let _ = self.outgoing.try_send(FromPool::Heartbeat);
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    return Ok(());
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|slot| {
                let hello = match slot.state {
                    SlotState::Starting { deadline } => Some(deadline),
                    _ => None,
                };
                slot.running
                    .values()
                    .filter_map(|t| t.deadline)
                    .chain(hello)
            })
            .min()
    }

    /// Gives queued tasks to ready workers with room.
    async fn assign(&mut self) -> Result<(), Stop> {
        while !self.queue.is_empty() {
            let per_worker = self.per_worker;
            let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| matches!(s.state, SlotState::Ready(_)) && s.running.len() < per_worker)
            else {
                return Ok(());
            };
            let Some(QueuedTask {
                task_id,
                task_buffer,
                result_serializers,
            }) = self.queue.pop_front()
            else {
                return Ok(());
            };
            let mut line = json!({
                "task_id": task_id,
                "task_buffer": task_buffer,
                "result_serializers": result_serializers,
            })
            .to_string()
            .into_bytes();
            line.push(b'\n');
            let started = SystemTime::now();
            slot.running.insert(
                task_id,
                RunningTask {
                    started,
                    deadline: self.task_timeout.map(|t| Instant::now() + t),
                },
            );
            // A worker that died meanwhile is reported by its reader; its task is then
            // lost like any other it was running.
            let _ = slot.process.input.send(line).await;
            self.send(FromPool::Started {
                task_id,
                at_ms: unix_ms(started),
            })
            .await?;
        }
        Ok(())
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) -> Result<(), Stop> {
        let Some(position) = self
            .slots
            .iter()
            .position(|s| s.index == event.slot && s.generation == event.generation)
        else {
            return Ok(()); // news from a worker already replaced
        };
        match event.kind {
            WorkerEventKind::Line(line) => self.on_worker_line(position, &line).await,
            WorkerEventKind::Exited(how) => self.on_worker_exit(position, how).await,
        }
    }

    async fn on_worker_line(&mut self, position: usize, line: &[u8]) -> Result<(), Stop> {
        let message = match serde_json::from_slice::<WorkerMessage>(line) {
            Ok(message) => message,
            Err(e) => {
                // Its protocol is broken, so an answer it owes may never come: stop it,
                // and the tasks it holds are lost (and retried) instead of hanging.
                let slot = &mut self.slots[position];
                tracing::error!(slot = slot.index, error = %e, "a worker wrote something that is not a message; stopping it");
                slot.process.signal(Signal::SIGKILL);
                return Ok(());
            }
        };
        match message {
            WorkerMessage::Hello(hello) => {
                if !matches!(self.slots[position].state, SlotState::Starting { .. }) {
                    return Ok(());
                }
                self.check_hello(&hello).map_err(Stop::WorkersFailed)?;
                tracing::info!(
                    slot = self.slots[position].index,
                    pid = self.slots[position].process.pid,
                    python = hello.python,
                    sdk = hello.sdk.as_deref().unwrap_or(""),
                    "worker ready"
                );
                self.slots[position].state = SlotState::Ready(hello);
                self.announce_if_ready().await?;
                self.assign().await
            }
            WorkerMessage::Result {
                task_id,
                data,
                error,
            } => {
                let Some(task) = self.slots[position].running.remove(&task_id) else {
                    return Ok(()); // already answered (it timed out just now)
                };
                self.send(FromPool::Result {
                    task_id,
                    data,
                    error,
                    started_ms: Some(unix_ms(task.started)),
                    finished_ms: unix_ms(SystemTime::now()),
                })
                .await?;
                self.assign().await
            }
        }
    }

    /// Tells the UEP the pool is ready once every first worker has said hello.
    async fn announce_if_ready(&mut self) -> Result<(), Stop> {
        if self.announced {
            return Ok(());
        }
        let hellos: Vec<&Hello> = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Ready(hello) => Some(hello),
                _ => None,
            })
            .collect();
        if hellos.len() < self.slots.len() {
            return Ok(());
        }
        let Some(first) = hellos.first() else {
            return Ok(());
        };
        let ready = FromPool::Ready {
            workers: self.slots.len() * self.per_worker,
            python: first.python.clone(),
            python_executable: first.executable.clone(),
            sdk: first.sdk.clone().unwrap_or_default(),
            host: self.host.clone(),
            pid: std::process::id(),
            details: first.details.clone(),
        };
        self.announced = true;
        self.send(ready).await
    }

    async fn on_worker_exit(&mut self, position: usize, how: String) -> Result<(), Stop> {
        let slot = &mut self.slots[position];
        if let SlotState::Starting { .. } = slot.state {
            let tail = slot.process.stderr_tail();
            return Err(Stop::WorkersFailed(format!(
                "the Python worker {:?} on {} {how} before reporting its version{}",
                self.command.python,
                self.host,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its last output:\n{tail}")
                }
            )));
        }
        let (index, pid) = (slot.index, slot.process.pid);
        tracing::warn!(
            slot = index,
            pid,
            how,
            lost = slot.running.len(),
            "worker ended"
        );
        let lost: Vec<Uuid> = slot.running.drain().map(|(id, _)| id).collect();
        for task_id in lost {
            self.send(FromPool::Lost {
                task_id,
                reason: format!(
                    "worker {index} (pid {pid}) of block {} on {} {how} while running this task",
                    self.block, self.host
                ),
            })
            .await?;
        }
        let count = self.slots.len();
        let (generation, process) = self
            .start_worker(index, count)
            .map_err(Stop::WorkersFailed)?;
        let slot = &mut self.slots[position];
        slot.generation = generation;
        slot.process = process;
        slot.state = SlotState::Starting {
            deadline: Instant::now() + limits::WORKER_HELLO,
        };
        Ok(())
    }

    async fn on_deadlines(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let mut timed_out = Vec::new();
        for slot in &mut self.slots {
            if let SlotState::Starting { deadline } = slot.state
                && deadline <= now
            {
                slot.process.signal(Signal::SIGKILL);
                return Err(Stop::WorkersFailed(format!(
                    "the Python worker {:?} on {} did not report its version within {} s",
                    self.command.python,
                    self.host,
                    limits::WORKER_HELLO.as_secs()
                )));
            }
            let expired: Vec<Uuid> = slot
                .running
                .iter()
                .filter(|(_, t)| t.deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            if expired.is_empty() {
                continue;
            }
            // A running Python function cannot be interrupted safely (an injected
            // exception waits for the next bytecode, never for a sleep or a C call), so
            // the whole worker is stopped; other tasks it ran are lost and may be retried.
            slot.process.signal(Signal::SIGKILL);
            slot.state = SlotState::Dying;
            for task_id in expired {
                if let Some(task) = slot.running.remove(&task_id) {
                    timed_out.push((task_id, task.started));
                }
            }
        }
        let seconds = self.task_timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
        for (task_id, started) in timed_out {
            tracing::warn!(%task_id, seconds, "task timed out; its worker was stopped");
            self.send(FromPool::Result {
                task_id,
                data: format!(
                    "AppTimeout: the task ran longer than GC_TASK_TIMEOUT ({seconds} s), so \
                     Gantry stopped the worker process running it"
                ),
                error: Some(ResultErrorDetails {
                    code: codes::TASK_TIMEOUT.into(),
                    user_message: format!(
                        "remote error: the task exceeded GC_TASK_TIMEOUT of {seconds} s"
                    ),
                }),
                started_ms: Some(unix_ms(started)),
                finished_ms: unix_ms(SystemTime::now()),
            })
            .await?;
        }
        Ok(())
    }

    /// SIGTERM to every worker's process group, then SIGKILL to those still there after
    /// [`limits::WORKER_STOP`].
    async fn stop_workers(&mut self) {
        let mut alive: HashSet<(usize, u64)> = HashSet::new();
        for slot in &self.slots {
            slot.process.signal(Signal::SIGTERM);
            alive.insert((slot.index, slot.generation));
        }
        let deadline = Instant::now() + limits::WORKER_STOP;
        while !alive.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(WorkerEvent {
                    slot,
                    generation,
                    kind: WorkerEventKind::Exited(_),
                })) => {
                    alive.remove(&(slot, generation));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for slot in &self.slots {
            if alive.contains(&(slot.index, slot.generation)) {
                slot.process.signal(Signal::SIGKILL);
            }
        }
    }
}
