//! Shared set-up for the service's end-to-end tests: a service in this process against
//! the real RabbitMQ (a fresh vhost per test) and a real database (SQLite file or a
//! fresh PostgreSQL database), plus the real SDK in the test venv.

#![allow(dead_code)] // each test binary uses a different part

pub mod local;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use gantry_broker_accounts::management::Management;
use gantry_service::master_secret::MasterSecretSource;
use gantry_service::server::{Limits, RunningService, ServeConfig, start_with_limits};
use serde_json::Value;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A test's service and everything it needs to be started again (same database).
pub struct TestService {
    pub service: Option<RunningService>,
    pub config: ServeConfig,
    pub limits: Limits,
    pub vhost: String,
    _port_lock: Option<File>,
}

/// Holds the SDK's fixed port (the SDK's "local" environment is http://localhost:5000)
/// for one test at a time, across test processes and with `scripts/quickstart`
/// (`lock_port_5000` in scripts/lib/setup.sh): the same fixed path, writable by every
/// user, opened read-only (flock does not need write access).
fn lock_port_5000() -> File {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new("/tmp/gantry-port-5000.lock");
    if !path.exists()
        && let Ok(created) = File::options().create(true).append(true).open(path)
    {
        let _ = created.set_permissions(std::fs::Permissions::from_mode(0o666));
    }
    let file = File::open(path).expect("open the port lock /tmp/gantry-port-5000.lock");
    file.lock().expect("lock port 5000 for this test");
    file
}

/// Logs as the service does (its own layer, see `gantry_service::logging`) to the test's
/// output, at `GANTRY_LOG` or `warn`; once per process, and not at all when the test
/// installed its own subscriber first.
pub fn install_test_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("GANTRY_LOG").unwrap_or_else(|_| "warn".to_owned());
    let layer =
        gantry_service::logging::layer(Some(&spec), tracing_subscriber::fmt::TestWriter::new)
            .expect("GANTRY_LOG parses");
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

impl TestService {
    /// Starts a service; `sdk_port` makes it listen on 127.0.0.1:5000 where the SDK looks.
    pub async fn start(backend: Backend, sdk_port: bool) -> TestService {
        TestService::start_with(backend, sdk_port, |_| {}).await
    }

    /// Starts a service with settings changed by `configure`.
    pub async fn start_with(
        backend: Backend,
        sdk_port: bool,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> TestService {
        TestService::start_with_limits(backend, sdk_port, configure, Limits::default()).await
    }

    /// Starts a service with settings changed by `configure`, and these limits.
    pub async fn start_with_limits(
        backend: Backend,
        sdk_port: bool,
        configure: impl FnOnce(&mut ServeConfig),
        limits: Limits,
    ) -> TestService {
        install_test_logging();
        gantry_testkit::require_service("RabbitMQ", &gantry_testkit::amqp_host());
        let dir = gantry_testkit::fresh_temp_dir("service");
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.join("service.db").display()),
            Backend::Postgres => gantry_testkit::fresh_postgres_database().await,
        };
        let vhost = gantry_testkit::fresh_vhost_name();
        let port_lock = sdk_port.then(lock_port_5000);
        let listen = if sdk_port {
            "127.0.0.1:5000"
        } else {
            "127.0.0.1:0"
        };
        let mut config = ServeConfig {
            listen: listen.parse().expect("address"),
            database_url,
            amqp_url: format!("amqp://guest:guest@{}/{vhost}", gantry_testkit::amqp_host()),
            amqp_admin_url: gantry_testkit::amqp_admin_url(),
            public_amqp_url: None,
            max_body_bytes: 1024 * 1024,
            client_token_lifetime_s: 3600,
            start_retry_after: std::time::Duration::from_secs(3),
            master_secret: MasterSecretSource::File(dir.join("broker.key")),
        };
        configure(&mut config);
        let service = start_with_limits(config.clone(), limits.clone())
            .await
            .expect("the service starts");
        TestService {
            service: Some(service),
            config,
            limits,
            vhost,
            _port_lock: port_lock,
        }
    }

    pub fn running(&self) -> &RunningService {
        self.service.as_ref().expect("the service is running")
    }

    pub fn url(&self) -> String {
        self.running().url()
    }

    pub fn store(&self) -> &gantry_store::Store {
        &self.running().state.store
    }

    /// Stops the service and starts it again on the same database, broker and port.
    pub async fn restart(&mut self) {
        let running = self.service.take().expect("running");
        let addr = running.addr;
        running.stop().await;
        let mut config = self.config.clone();
        config.listen = addr;
        self.service = Some(
            start_with_limits(config, self.limits.clone())
                .await
                .expect("the service starts again"),
        );
    }

    /// Stops the service and removes the test's vhost and its accounts.
    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
        let management =
            Management::new(&gantry_testkit::amqp_admin_url()).expect("management URL");
        management
            .delete_vhost_and_accounts(&self.vhost)
            .await
            .expect("delete the test vhost and its accounts");
    }

    /// Runs `gantry-service admin ARGS` (the shipped binary) on this service's database
    /// and broker; the exit status and the JSON it printed (or its error output).
    pub fn admin(&self, args: &[&str]) -> (bool, Value) {
        let output = Command::new(gantry_testkit::workspace_binary(
            "gantry-service",
            "gantry-service",
        ))
        .arg("admin")
        .args(args)
        .env("GANTRY_DATABASE_URL", &self.config.database_url)
        .env("GANTRY_AMQP_URL", &self.config.amqp_url)
        .env("GANTRY_AMQP_ADMIN_URL", &self.config.amqp_admin_url)
        .output()
        .expect("run gantry-service admin");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let value = serde_json::from_str(&stdout)
            .unwrap_or_else(|_| Value::String(format!("{stdout}{stderr}")));
        (output.status.success(), value)
    }

    /// [`TestService::admin`], which must succeed; the JSON it printed.
    pub fn admin_ok(&self, args: &[&str]) -> Value {
        let (ok, value) = self.admin(args);
        assert!(ok, "gantry-service admin {args:?} failed: {value}");
        value
    }

    /// A user and their token.
    pub async fn user(&self, name: &str) -> (uuid::Uuid, String) {
        let (identity, token) = self.store().add_user(name).await.expect("add user");
        (identity.identity_id, token)
    }

    /// An endpoint client and an access token for it (as the OAuth route would issue).
    pub async fn endpoint_client(&self, name: &str) -> (uuid::Uuid, String) {
        let (client, _) = self
            .store()
            .add_endpoint_client(name)
            .await
            .expect("add client");
        let token = self
            .store()
            .issue_client_token(&client, "funcx_service", 3_600_000)
            .await
            .expect("client token");
        (client.client_id, token)
    }
}

/// The longest an SDK scenario may run: a lost result must fail the test, not hang it.
const SDK_SCENARIO_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `command` to completion, or kills it after `limit` and fails the test with
/// what it printed.
fn output_within(
    mut command: Command,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    use std::io::Read;
    let mut child = command.spawn().expect("run the SDK script");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the SDK script") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "SDK scenario {what} ran past {} s and was killed:\n{}",
                limit.as_secs(),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs a scenario of `python/sdk_client.py` with the real SDK; returns its JSON.
pub fn run_sdk(scenario: &str, env: &[(&str, String)]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_client.py");
    let mut command = Command::new(gantry_testkit::venv_python());
    command
        .arg(&script)
        .arg(scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.env(
        "GLOBUS_COMPUTE_USER_DIR",
        gantry_testkit::fresh_temp_dir("sdk-home"),
    );
    for (key, value) in env {
        command.env(key, value);
    }
    let output = output_within(command, SDK_SCENARIO_LIMIT, scenario);
    assert!(
        output.status.success(),
        "SDK scenario {scenario} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "SDK scenario {scenario} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// An async wrapper for [`run_sdk`], so the service keeps running meanwhile.
pub async fn sdk(scenario: &str, env: Vec<(&'static str, String)>) -> Value {
    let scenario = scenario.to_owned();
    tokio::task::spawn_blocking(move || run_sdk(&scenario, &env))
        .await
        .expect("SDK thread")
}

/// A user's (or client's) plain HTTP calls to the service, answered as JSON.
pub struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Rest {
    pub fn new(service: &TestService, token: &str) -> Rest {
        Rest {
            http: reqwest::Client::new(),
            base: service.url(),
            token: token.to_owned(),
        }
    }

    /// One call; the status and the body (as a JSON string when it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Registers a function (packed like the SDK's; never run by the echo endpoint).
    pub async fn register_function(&self) -> uuid::Uuid {
        let code = gantry_protocol::packed::pack_buffers(&["01\ngASVBQAAAAAAAAB9lC4=\n"]);
        let (status, body) = self
            .post(
                "/v3/functions",
                serde_json::json!({"function_name": "f", "function_code": code}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        body["function_uuid"].as_str().unwrap().parse().unwrap()
    }

    /// Submits one task of `function` to `endpoint` with `extra` fields in the body
    /// (`user_endpoint_config`, `result_serializers`, ...); returns its id.
    pub async fn submit_one(
        &self,
        endpoint: uuid::Uuid,
        function: uuid::Uuid,
        extra: Value,
    ) -> uuid::Uuid {
        let payload = gantry_protocol::packed::pack_buffers(&[
            "00\ngASVBQAAAAAAAABLAYWULg==\n",
            "00\ngAR9lC4=\n",
        ]);
        let mut body = serde_json::json!({"tasks": {function.to_string(): [payload]}});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let (status, answer) = self
            .post(&format!("/v3/endpoints/{endpoint}/submit"), body)
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
        answer["tasks"][function.to_string()][0]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Polls a task until it is finished (at most a minute); returns its view.
    pub async fn wait_finished(&self, task: uuid::Uuid) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, view) = self.get(&format!("/v2/tasks/{task}")).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{view}");
            if view["status"] == "success" || view["status"] == "failed" {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {task} did not finish within a minute: {view}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Waits (at most 30 s) until `check` holds; `what` names it in the failure.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An endpoint registration body.
pub fn registration(
    name: &str,
    multi_user: bool,
) -> gantry_protocol::rest::EndpointRegistrationRequest {
    serde_json::from_value(serde_json::json!({
        "endpoint_name": name,
        "multi_user": multi_user,
        "public": !multi_user,
        "metadata": {"hostname": "test"},
    }))
    .unwrap()
}

/// An endpoint client "site" on `service` and the endpoint it registered.
pub async fn register_site(
    service: &TestService,
    name: &str,
    multi_user: bool,
) -> (String, gantry_protocol::rest::EndpointRegistrationResponse) {
    let (_, client_token) = service.endpoint_client(&format!("site-{name}")).await;
    let registered = gantry_test_endpoint::register(
        &service.url(),
        &client_token,
        &registration(name, multi_user),
    )
    .await
    .unwrap();
    (client_token, registered)
}

/// Publishes a heartbeat as the endpoint `creds` belong to, as an endpoint process does.
pub async fn publish_heartbeat(
    creds: &gantry_protocol::command::AmqpCreds,
    global_state: Value,
    task_statuses: Value,
) {
    use gantry_protocol::messagepack::{EpStatusReport, Message};
    let info = &creds.heartbeat_queue_info;
    let kwargs = info.queue_publish_kwargs.as_ref().unwrap();
    let report: EpStatusReport = serde_json::from_value(serde_json::json!({
        "endpoint_id": creds.endpoint_id,
        "global_state": global_state,
        "task_statuses": task_statuses,
    }))
    .unwrap();
    let body = Message::EpStatusReport(report).pack();
    let broker = gantry_broker::Broker::connect(&info.connection_url)
        .await
        .unwrap();
    broker
        .publish_confirmed(&[gantry_broker::Outgoing {
            exchange: &kwargs.exchange,
            routing_key: &kwargs.routing_key,
            body: &body,
            properties: Default::default(),
        }])
        .await
        .unwrap();
    broker.close().await;
}

/// Stops one of the test MEP's UEPs the way Gantry's endpoints stop: the last heartbeat
/// announces `heartbeat_period: 0`. The MEP forgets it, so a new command starts it anew.
pub async fn stop_uep(
    service: &TestService,
    mep: &gantry_test_endpoint::RunningMep,
    uep_id: uuid::Uuid,
) {
    let uep = mep.ueps.lock().await.remove(&uep_id).expect("the UEP runs");
    uep.stop().await.unwrap();
    wait_until("the service has the UEP's last heartbeat", || async {
        let uep = service.store().endpoint(uep_id).await.unwrap().unwrap();
        uep.heartbeat_period == Some(0.0)
    })
    .await;
}

/// Waits until the service stored a heartbeat whose `active` is `active`.
pub async fn wait_for_active(service: &TestService, uep_id: uuid::Uuid, active: bool) {
    wait_until("the service has the UEP's heartbeat", || async {
        let uep = service.store().endpoint(uep_id).await.unwrap().unwrap();
        uep.global_state
            .is_some_and(|s| s.get("active") == Some(&serde_json::json!(active)))
    })
    .await;
}
