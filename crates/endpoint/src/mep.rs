//! The multi-user endpoint (MEP): a root daemon that never runs a task. It registers
//! with the service, consumes its command queue, and for each `cmd_start_endpoint`
//! starts one user endpoint (UEP) per (user, configuration) through the spawn helper
//! (`gantry-spawner`); it reaps them, reports failed starts to the service, heartbeats,
//! and stops them all when it stops.
//!
//! No orphans, by four means together: the helper sets a death signal after the
//! privilege drop; the UEP watches its parent pid; the MEP is a child subreaper, so
//! anything a dead UEP left behind is re-parented to it and killed; and a UEP (a
//! session leader) kills its own session when it stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_lite::StreamExt;
use gantry_broker::Broker;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_endpoint_client::{ClientCredentials, EndpointClient};
use gantry_identity_mapping::MappingFile;
use gantry_protocol::command::StartEndpointCommand;
use gantry_protocol::rest::{EndpointRegistrationRequest, EndpointRegistrationResponse, QueueInfo};
use gantry_spawner::{HelperEvent, IdentityRule, Launcher, SpawnRequest, Step};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::EndpointConfig;
use crate::dirs::EndpointDir;

/// A start command older (or newer) than this is refused: it was delayed so long that
/// the service has asked again or given up.
pub const COMMAND_MAX_SKEW: Duration = Duration::from_secs(180);
/// How long a stopping MEP waits for its UEPs after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest wait between attempts to reach the service or the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the MEP waits for the service when it asks again for its credentials after
/// the broker refused it.
const REREGISTER_WAIT: Duration = Duration::from_secs(10);

/// What a MEP needs to run.
#[derive(Debug, Clone)]
pub struct MepOptions {
    /// Its folder.
    pub dir: EndpointDir,
    /// Its config.
    pub config: EndpointConfig,
    /// The endpoint client it authenticates as.
    pub credentials: ClientCredentials,
    /// The program run as the spawn helper (`<program> __spawn-uep`) and as the UEP
    /// (`<program> uep`): `gantry-endpoint` itself.
    pub program: PathBuf,
    /// The id it registers with.
    pub endpoint_id: Uuid,
}

/// The state of one UEP the MEP started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UepPhase {
    /// The helper runs (mapping, dropping, rendering).
    Starting,
    /// The UEP program was exec'd.
    Running,
    /// The MEP asked it to stop.
    Stopping,
}

#[derive(Debug)]
struct UepRecord {
    uep_id: Uuid,
    pid: i32,
    user: Option<String>,
    uid: Option<u32>,
    started: SystemTime,
    phase: UepPhase,
    failure: Option<(Step, String)>,
    exit: Option<WaitStatus>,
    pipe_closed: bool,
    /// A start command that came while this one ran: it revives the UEP if it exits
    /// within the grace period.
    revive: Option<(StartEndpointCommand, Instant)>,
}

/// A row of `ueps.json`, which `gantry-endpoint list` reads.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UepRow {
    /// The UEP's id.
    pub uep_id: Uuid,
    /// Its pid.
    pub pid: i32,
    /// The local account.
    pub user: Option<String>,
    /// Its uid.
    pub uid: Option<u32>,
    /// When it started, seconds since the epoch.
    pub started_s: u64,
    /// starting / running / stopping.
    pub phase: String,
}

enum PipeEvent {
    Line(i32, HelperEvent),
    Closed(i32),
    /// A line from the audit pipe of a UEP (pid, id).
    Audit(i32, Uuid, String),
}

struct Mep {
    options: MepOptions,
    launcher: Arc<Launcher>,
    mapping: MappingFile,
    root: bool,
    my_user: String,
    ueps: HashMap<Uuid, UepRecord>,
    by_pid: HashMap<i32, Uuid>,
    pipe_tx: mpsc::UnboundedSender<PipeEvent>,
    heartbeat_info: QueueInfo,
    /// High assurance: `audit.log`, appended to by this process alone.
    audit_log: Option<std::fs::File>,
    /// The account each audited UEP runs as (kept after it exits, for late records).
    audit_uids: HashMap<Uuid, u32>,
}

/// Becomes the parent of every orphan among our descendants.
fn become_subreaper() -> anyhow::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes how this process's orphaned
    // descendants are re-parented.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if ret != 0 {
        anyhow::bail!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Refuses a file that decides who runs what as whom (config, identity mapping and the
/// programs it runs, template and its siblings, schema, environment) when someone other
/// than the MEP's owner or root could change it or any folder above it: for a root MEP
/// such a file is as good as root.
pub fn check_admin_file(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let path = match std::fs::canonicalize(path) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for component in path.ancestors() {
        let meta = std::fs::metadata(component)
            .with_context(|| format!("reading {}", component.display()))?;
        let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
        if meta.uid() != me && meta.uid() != 0 {
            anyhow::bail!(
                "{} belongs to uid {}, not to this endpoint's user or root, and {} depends on it; \
                 it decides which account users run as",
                component.display(),
                meta.uid(),
                path.display()
            );
        }
        if meta.mode() & 0o022 != 0 && !sticky_dir {
            anyhow::bail!(
                "{} can be changed by other users (mode {:o}), and {} depends on it; run `chmod go-w {}`",
                component.display(),
                meta.mode() & 0o7777,
                path.display(),
                component.display()
            );
        }
    }
    Ok(())
}

/// The programs an identity mapping runs (its external documents' commands).
fn mapping_programs(mapping_json: &str) -> Vec<PathBuf> {
    let Ok(Value::Array(documents)) = serde_json::from_str::<Value>(mapping_json) else {
        return Vec::new();
    };
    documents
        .iter()
        .filter_map(|d| {
            d.get("command")?
                .as_array()?
                .first()?
                .as_str()
                .map(PathBuf::from)
        })
        .collect()
}

/// Every admin file a spawn depends on, checked at each spawn (they may change while
/// the MEP runs).
fn check_spawn_inputs(
    config: &EndpointConfig,
    mapping_path: &std::path::Path,
    mapping_json: &str,
) -> anyhow::Result<()> {
    check_admin_file(mapping_path)?;
    for program in mapping_programs(mapping_json) {
        check_admin_file(&program)?;
    }
    check_admin_file(&config.user_config_template_path)?;
    if let Some(dir) = config.user_config_template_path.parent()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if [".j2", ".jinja", ".jinja2"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                check_admin_file(&entry.path())?;
            }
        }
    }
    if let Some(schema) = &config.user_config_schema_path {
        check_admin_file(schema)?;
    }
    check_admin_file(&config.user_environment_path)
}

/// What the MEP registers with (the same every time: the same id, so the service
/// answers with its queues and current broker credentials).
fn registration_request(options: &MepOptions) -> EndpointRegistrationRequest {
    let config = &options.config;
    let mut metadata = Map::new();
    metadata.insert("endpoint_software".into(), json!("gantry-endpoint"));
    metadata.insert("endpoint_version".into(), json!(env!("CARGO_PKG_VERSION")));
    metadata.insert(
        "hostname".into(),
        json!(
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        ),
    );
    EndpointRegistrationRequest {
        endpoint_name: options.dir.name.clone(),
        display_name: config.display_name.clone(),
        endpoint_id: Some(options.endpoint_id),
        multi_user: true,
        public: Some(config.public),
        high_assurance: Some(config.high_assurance),
        allowed_functions: config.allowed_functions.clone(),
        metadata: Some(metadata),
        authentication_policy: None,
        subscription_uuid: None,
        admins: (!config.admins.is_empty()).then(|| config.admins.clone()),
    }
}

async fn register(
    client: &EndpointClient,
    options: &MepOptions,
) -> anyhow::Result<EndpointRegistrationResponse> {
    let request = registration_request(options);
    let mut backoff = Duration::from_secs(1);
    loop {
        match client.register(&request).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "cannot register yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e).context("the service refused the registration"),
        }
    }
}

/// Runs the MEP until SIGTERM or SIGINT.
pub async fn run(options: MepOptions) -> anyhow::Result<()> {
    let config = &options.config;
    if config.pam.enable {
        let service = &config.pam.service_name;
        let file = gantry_spawner::pam::preflight(service)?;
        tracing::info!(service, file = %file.display(), "PAM enabled for user endpoints");
    }
    let root = nix::unistd::geteuid().is_root();
    let my_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .context("the MEP's own account has no name")?;
    let mapping_path = config.identity_mapping_config_path.clone().context(
        "identity_mapping_config_path is required for a multi-user endpoint: it says which local account each user runs as",
    )?;
    let mapping = MappingFile::load(&mapping_path)
        .with_context(|| format!("loading the identity mapping {}", mapping_path.display()))?;
    if !config.user_config_template_path.is_file() {
        anyhow::bail!(
            "the user endpoint template {} does not exist",
            config.user_config_template_path.display()
        );
    }
    if let Some(schema) = &config.user_config_schema_path
        && !schema.is_file()
    {
        anyhow::bail!(
            "the schema {} named in config.yaml does not exist; without it users' variables would go unchecked",
            schema.display()
        );
    }
    let mut admin_files = vec![
        options.dir.config(),
        mapping_path.clone(),
        config.user_config_template_path.clone(),
    ];
    admin_files.extend(config.user_config_schema_path.clone());
    admin_files.push(config.user_environment_path.clone());
    for path in &admin_files {
        check_admin_file(path)?;
    }
    become_subreaper()?;
    let client = EndpointClient::new(&config.service_url, options.credentials.clone())?;
    let registration = register(&client, &options).await?;
    let mep_id = registration.endpoint_id;
    options.dir.save_id(mep_id)?;
    let mut command_info = registration
        .command_queue_info
        .clone()
        .context("the service registered this endpoint without a command queue")?;
    tracing::info!(mep_id = %mep_id, service = config.service_url, "multi-user endpoint registered");
    let launcher = Arc::new(Launcher::new(
        options.program.clone(),
        vec!["__spawn-uep".into()],
    )?);
    let (pipe_tx, mut pipe_rx) = mpsc::unbounded_channel();
    let audit_log = if config.high_assurance {
        use std::os::unix::fs::OpenOptionsExt;
        let path = config
            .audit_log_path
            .clone()
            .unwrap_or_else(|| options.dir.path.join("audit.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        tracing::info!(path = %path.display(), "high assurance: auditing every task");
        Some(file)
    } else {
        None
    };
    let mut mep = Mep {
        options: options.clone(),
        launcher,
        mapping,
        root,
        my_user,
        ueps: HashMap::new(),
        by_pid: HashMap::new(),
        pipe_tx,
        heartbeat_info: registration.heartbeat_queue_info.clone(),
        audit_log,
        audit_uids: HashMap::new(),
    };
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let period = Duration::from_secs_f64(config.heartbeat_period);
    let mut backoff = Duration::from_secs(1);
    let mut broker: Option<Broker> = None;
    'outer: loop {
        let connected = async {
            let b = Broker::connect(&command_info.connection_url).await?;
            let consumer = b.consume(&command_info.queue, "gantry-mep", 16).await?;
            anyhow::Ok((b, consumer))
        };
        let (b, mut consumer) = tokio::select! {
            c = connected => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "cannot reach the broker; the running user endpoints keep running");
                    // The broker may refuse a login whose password changed (an
                    // administrator revoked a token, the service's secret was
                    // rotated): ask the service again for this endpoint's queues and
                    // credentials, briefly; if it does not answer, retry as before.
                    if let Ok(Ok(fresh)) = tokio::time::timeout(
                        REREGISTER_WAIT,
                        client.register(&registration_request(&options)),
                    )
                    .await
                    {
                        if let Some(info) = fresh.command_queue_info {
                            command_info = info;
                        }
                        mep.heartbeat_info = fresh.heartbeat_queue_info;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sigterm.recv() => break 'outer,
                        _ = sigint.recv() => break 'outer,
                        _ = sigchld.recv() => mep.reap(None).await,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
            _ = sigterm.recv() => break 'outer,
            _ = sigint.recv() => break 'outer,
        };
        backoff = Duration::from_secs(1);
        broker = Some(b.clone());
        mep.heartbeat(&b, config.heartbeat_period).await;
        let mut beat = tokio::time::interval(period);
        beat.tick().await;
        loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(Ok(delivery)) = delivery else {
                        tracing::warn!("the command queue consumer ended; reconnecting");
                        break;
                    };
                    mep.command(&b, &delivery.data, delivery.properties.timestamp().as_ref().copied()).await;
                    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                        tracing::warn!(error = %e, "ack failed; reconnecting");
                        break;
                    }
                }
                event = pipe_rx.recv() => {
                    if let Some(event) = event { mep.pipe_event(event, Some(&b)).await; }
                }
                _ = sigchld.recv() => mep.reap(Some(&b)).await,
                _ = beat.tick() => {
                    mep.mapping.current();
                    if !mep.heartbeat(&b, config.heartbeat_period).await { break; }
                }
                _ = sigterm.recv() => break 'outer,
                _ = sigint.recv() => break 'outer,
            }
        }
        b.close().await;
        broker = None;
    }
    tracing::info!(ueps = mep.ueps.len(), "stopping every user endpoint");
    mep.stop_all(broker.as_ref(), &mut sigchld, &mut pipe_rx)
        .await;
    if let Some(b) = &broker {
        mep.heartbeat(b, 0.0).await;
        b.close().await;
    } else if let Ok(b) = tokio::time::timeout(
        Duration::from_secs(5),
        Broker::connect(&command_info.connection_url),
    )
    .await
    .unwrap_or_else(|_| {
        Err(gantry_broker::BrokerError::Timeout {
            doing: "connecting",
            seconds: 5,
        })
    }) {
        mep.heartbeat(&b, 0.0).await;
        b.close().await;
    }
    let _ = std::fs::remove_file(mep.options.dir.ueps());
    tracing::info!("multi-user endpoint stopped");
    Ok(())
}

impl Mep {
    async fn heartbeat(&self, broker: &Broker, period: f64) -> bool {
        let state =
            crate::status::global_state(period, [("user_endpoints", json!(self.ueps.len()))]);
        self.publish_status(broker, self.options.endpoint_id, state)
            .await
    }

    /// Publishes a status report on the MEP's heartbeat route; false when it failed.
    async fn publish_status(
        &self,
        broker: &Broker,
        endpoint_id: Uuid,
        state: Map<String, Value>,
    ) -> bool {
        let published = crate::status::publish(
            broker,
            &self.heartbeat_info,
            endpoint_id,
            state,
            Default::default(),
        )
        .await;
        if let Err(e) = &published {
            tracing::warn!(error = %e, "status report failed");
        }
        published.is_ok()
    }

    /// Tells the service a UEP is gone (and why, when its start failed).
    async fn report_gone(&self, broker: Option<&Broker>, uep_id: Uuid, error: Option<String>) {
        let Some(broker) = broker else {
            tracing::warn!(%uep_id, "cannot tell the service about this user endpoint: no broker connection");
            return;
        };
        let state = crate::status::global_state(0.0, error.map(|e| ("error", json!(e))));
        self.publish_status(broker, uep_id, state).await;
    }

    async fn command(&mut self, broker: &Broker, data: &[u8], timestamp: Option<u64>) {
        if let Some(ts) = timestamp {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            if now.abs_diff(ts) > COMMAND_MAX_SKEW.as_secs() {
                tracing::warn!(
                    skew_s = now.abs_diff(ts),
                    "refusing a start command more than 180 s old or ahead"
                );
                return;
            }
        }
        let command = match StartEndpointCommand::from_json(data) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refusing a command");
                return;
            }
        };
        let uep_id = command.kwargs.amqp_creds.endpoint_id;
        if let Some(record) = self.ueps.get_mut(&uep_id) {
            tracing::info!(%uep_id, pid = record.pid, "user endpoint already running; no second one");
            record.revive = Some((command, Instant::now()));
            return;
        }
        self.start(broker, command).await;
    }

    async fn start(&mut self, broker: &Broker, command: StartEndpointCommand) {
        let uep_id = command.kwargs.amqp_creds.endpoint_id;
        let config = &self.options.config;
        let user_environment =
            match crate::config::load_user_environment(&config.user_environment_path) {
                Ok(vars) => vars,
                Err(e) => {
                    tracing::error!(error = %e, "user_environment.yaml is invalid");
                    self.report_gone(Some(broker), uep_id, Some(format!(
                    "the endpoint's user_environment.yaml is invalid; tell its administrator: {e}"
                ))).await;
                    return;
                }
            };
        let mapping_json = self.mapping.current_text().to_owned();
        if let Some(mapping_path) = &config.identity_mapping_config_path
            && let Err(e) = check_spawn_inputs(config, mapping_path, &mapping_json)
        {
            tracing::error!(error = %e, "refusing to start a user endpoint");
            self.report_gone(Some(broker), uep_id, Some(format!(
                "the endpoint's configuration is unsafe, so it starts no user endpoints; tell its administrator: {e:#}"
            ))).await;
            return;
        }
        let identity = if self.root {
            IdentityRule::Map { mapping_json }
        } else {
            IdentityRule::SameUser {
                mapping_json,
                expected_user: self.my_user.clone(),
            }
        };
        let mut ep_info = Map::new();
        ep_info.insert("mep_name".into(), json!(self.options.dir.name));
        let request = SpawnRequest {
            command,
            mep_id: self.options.endpoint_id,
            identity,
            min_uid: config.min_uid,
            mep_uid: nix::unistd::geteuid().as_raw(),
            template_path: config.user_config_template_path.clone(),
            schema_path: config.user_config_schema_path.clone(),
            user_environment,
            uep_program: self.options.program.clone(),
            parent_config: Value::Object(config.raw.clone()),
            allowed_functions: config.allowed_functions.clone(),
            ep_info,
            pam: config.pam.enable.then(|| gantry_spawner::PamSettings {
                service_name: config.pam.service_name.clone(),
            }),
            audit: self.audit_log.is_some(),
        };
        // High assurance: a pipe per UEP, the write end handed to it at descriptor 3.
        let (audit_read, audit_write) = if self.audit_log.is_some() {
            match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
                Ok((read, write)) => (Some(read), Some(write)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make an audit pipe");
                    self.report_gone(
                        Some(broker),
                        uep_id,
                        Some(format!(
                            "the endpoint could not start a user endpoint (audit pipe: {e})"
                        )),
                    )
                    .await;
                    return;
                }
            }
        } else {
            (None, None)
        };
        let launcher = self.launcher.clone();
        let launched =
            tokio::task::spawn_blocking(move || launcher.launch_with_audit(&request, audit_write))
                .await;
        let launched = match launched {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot start the spawn helper");
                self.report_gone(
                    Some(broker),
                    uep_id,
                    Some(format!("the endpoint could not start a user endpoint: {e}")),
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the spawning task failed");
                return;
            }
        };
        let pid = launched.pid;
        tracing::info!(%uep_id, pid, "starting a user endpoint");
        self.ueps.insert(
            uep_id,
            UepRecord {
                uep_id,
                pid,
                user: None,
                uid: None,
                started: SystemTime::now(),
                phase: UepPhase::Starting,
                failure: None,
                exit: None,
                pipe_closed: false,
                revive: None,
            },
        );
        self.by_pid.insert(pid, uep_id);
        if let Some(read) = audit_read {
            let tx = self.pipe_tx.clone();
            match tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
                Ok(pipe) => {
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(pipe).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let _ = tx.send(PipeEvent::Audit(pid, uep_id, line));
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, pid, "cannot read the audit pipe"),
            }
        }
        let tx = self.pipe_tx.clone();
        match tokio::net::unix::pipe::Receiver::from_owned_fd(launched.status) {
            Ok(pipe) => {
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        match serde_json::from_str::<HelperEvent>(&line) {
                            Ok(event) => {
                                let _ = tx.send(PipeEvent::Line(pid, event));
                            }
                            Err(_) => tracing::warn!(pid, "unreadable line from the spawn helper"),
                        }
                    }
                    let _ = tx.send(PipeEvent::Closed(pid));
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the spawn helper's status");
                let _ = self.pipe_tx.send(PipeEvent::Closed(pid));
            }
        }
        self.write_table();
    }

    async fn pipe_event(&mut self, event: PipeEvent, broker: Option<&Broker>) {
        // Audit records may still come after the UEP was reaped: they are stamped with
        // what the MEP knew of it, never dropped.
        if let PipeEvent::Audit(pid, uep_id, line) = &event {
            let uid = self.audit_uids.get(uep_id).copied();
            if let Some(log) = self.audit_log.as_mut() {
                use std::io::Write;
                match crate::audit::stamp(line, uid, *pid, *uep_id) {
                    Some(stamped) => {
                        if let Err(e) = writeln!(log, "{stamped}").and_then(|()| log.sync_data()) {
                            tracing::error!(error = %e, "cannot write the audit log");
                        }
                    }
                    None => {
                        tracing::warn!(%uep_id, pid, "a user endpoint wrote a malformed audit record")
                    }
                }
            }
            return;
        }
        let pid = match &event {
            PipeEvent::Line(pid, _) | PipeEvent::Closed(pid) | PipeEvent::Audit(pid, ..) => *pid,
        };
        let Some(uep_id) = self.by_pid.get(&pid).copied() else {
            return;
        };
        let Some(record) = self.ueps.get_mut(&uep_id) else {
            return;
        };
        match event {
            PipeEvent::Line(_, HelperEvent::Mapped { user, uid }) => {
                tracing::info!(%uep_id, user, uid, "identity mapped");
                record.user = Some(user);
                record.uid = Some(uid);
                if self.audit_log.is_some() {
                    self.audit_uids.insert(uep_id, uid);
                }
            }
            PipeEvent::Line(_, HelperEvent::Pam { message }) => {
                tracing::info!(%uep_id, ?message, "PAM message");
            }
            PipeEvent::Line(_, HelperEvent::Exec) => {
                record.phase = UepPhase::Running;
            }
            PipeEvent::Line(_, HelperEvent::Failed { step, message }) => {
                tracing::warn!(%uep_id, ?step, exit_code = step.exit_code(), %message, "user endpoint start failed");
                record.failure = Some((step, message));
            }
            PipeEvent::Closed(_) => record.pipe_closed = true,
            PipeEvent::Audit(..) => {}
        }
        self.write_table();
        self.finish_if_done(uep_id, broker).await;
    }

    /// Reaps every child that exited: UEPs (and their helpers), and orphans that were
    /// re-parented here.
    async fn reap(&mut self, broker: Option<&Broker>) {
        use nix::sys::wait::{Id, waitid};
        loop {
            // Peek first (WNOWAIT): while the exited child is a zombie its pid, and so its
            // session id, cannot be taken by a new process, so killing the session cannot
            // hit a stranger that reused the pid.
            let peeked = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peeked {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => break,
                },
            };
            if let Some(uep_id) = self.by_pid.get(&pid.as_raw()).copied()
                && let Some(record) = self.ueps.get(&uep_id)
                && record.phase != UepPhase::Starting
                && let Some(uid) = record.uid
            {
                // The UEP was a session leader: whatever it left in its session, as its
                // user, goes with it.
                for member in crate::process::session_members(pid.as_raw()) {
                    if crate::process::owner(member) == Some(uid) {
                        let _ = kill(Pid::from_raw(member), Signal::SIGKILL);
                    }
                }
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => continue,
                Ok(status) => status,
            };
            if let Some(uep_id) = self.by_pid.get(&pid.as_raw()).copied() {
                if let Some(record) = self.ueps.get_mut(&uep_id) {
                    record.exit = Some(status);
                }
                self.finish_if_done(uep_id, broker).await;
            } else {
                tracing::debug!(pid = pid.as_raw(), "reaped an orphan");
            }
        }
        self.kill_orphans();
    }

    /// Kills children that are not UEPs: descendants of UEPs that died, re-parented to
    /// the MEP because it is a subreaper.
    fn kill_orphans(&self) {
        let me = std::process::id() as i32;
        for proc in crate::process::all() {
            if proc.ppid == me && !self.by_pid.contains_key(&proc.pid) {
                tracing::warn!(
                    pid = proc.pid,
                    "killing a process a user endpoint left behind"
                );
                let _ = kill(Pid::from_raw(proc.pid), Signal::SIGKILL);
            }
        }
    }

    async fn finish_if_done(&mut self, uep_id: Uuid, broker: Option<&Broker>) {
        let Some(record) = self.ueps.get(&uep_id) else {
            return;
        };
        let (Some(exit), true) = (record.exit, record.pipe_closed) else {
            return;
        };
        let Some(record) = self.ueps.remove(&uep_id) else {
            return;
        };
        self.by_pid.remove(&record.pid);
        let described = match exit {
            WaitStatus::Exited(_, code) => format!("exit status {code}"),
            WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
            other => format!("{other:?}"),
        };
        if let Some((step, message)) = &record.failure {
            let error = format!(
                "{}: {message} (exit code {})",
                step.describe(),
                step.exit_code()
            );
            self.report_gone(broker, uep_id, Some(error)).await;
        } else if record.phase == UepPhase::Starting {
            let error = format!(
                "the endpoint's spawn helper ended unexpectedly ({described}); tell the endpoint's administrator"
            );
            tracing::error!(%uep_id, %described, "spawn helper ended without a report");
            self.report_gone(broker, uep_id, Some(error)).await;
        } else {
            tracing::info!(%uep_id, pid = record.pid, %described, "user endpoint exited");
            let clean = matches!(exit, WaitStatus::Exited(_, 0));
            if !clean {
                self.report_gone(broker, uep_id, None).await;
            }
        }
        self.write_table();
        if let (Some((command, at)), Some(broker)) = (record.revive, broker)
            && at.elapsed().as_secs_f64() <= self.options.config.grace_period_s
            && record.failure.is_none()
        {
            tracing::info!(%uep_id, "a start command came while it was exiting; starting it again");
            self.start(broker, command).await;
        }
    }

    async fn stop_all(
        &mut self,
        broker: Option<&Broker>,
        sigchld: &mut tokio::signal::unix::Signal,
        pipe_rx: &mut mpsc::UnboundedReceiver<PipeEvent>,
    ) {
        for record in self.ueps.values_mut() {
            if record.exit.is_none() {
                record.phase = UepPhase::Stopping;
                record.revive = None;
                // The pid is still our unreaped child, so it cannot have been reused.
                let _ = kill(Pid::from_raw(record.pid), Signal::SIGTERM);
            }
        }
        self.write_table();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.ueps.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = sigchld.recv() => self.reap(broker).await,
                event = pipe_rx.recv() => if let Some(e) = event { self.pipe_event(e, broker).await },
            }
        }
        let left: Vec<i32> = self
            .ueps
            .values()
            .filter(|r| r.exit.is_none())
            .map(|r| r.pid)
            .collect();
        for pid in left {
            tracing::warn!(
                pid,
                "user endpoint did not stop within 10 s; killing its process group"
            );
            // Still our unreaped child: its pid, process group and session are its own.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let uid = crate::process::owner(pid);
            for member in crate::process::session_members(pid) {
                if uid.is_some() && crate::process::owner(member) == uid {
                    let _ = kill(Pid::from_raw(member), Signal::SIGKILL);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.ueps.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = sigchld.recv() => self.reap(broker).await,
                event = pipe_rx.recv() => if let Some(e) = event { self.pipe_event(e, broker).await },
            }
        }
        self.reap(broker).await;
    }

    fn write_table(&self) {
        let rows: Vec<UepRow> = self
            .ueps
            .values()
            .map(|r| UepRow {
                uep_id: r.uep_id,
                pid: r.pid,
                user: r.user.clone(),
                uid: r.uid,
                started_s: r
                    .started
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                phase: serde_json::to_value(r.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            })
            .collect();
        if let Ok(text) = serde_json::to_vec_pretty(&rows) {
            let _ = crate::dirs::write_private(&self.options.dir.ueps(), &text);
        }
    }
}
