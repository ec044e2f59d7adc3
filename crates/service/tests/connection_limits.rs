//! Connections that hold the service without using it: a client that sends nothing, half
//! a request head or half a body, or keeps an idle connection, is disconnected after its
//! timeout; past `max_connections` clients wait in the kernel's queue rather than take
//! more descriptors, yet idle connections cannot keep them out; a client that stops
//! reading its answer is cut off; and a service short of descriptors keeps answering. Raw sockets
//! against the real service (in this process, or the `gantry-service` binary with a low
//! `RLIMIT_NOFILE`), the real broker and both databases.
//!
//! The timeouts here are a second or two; each wait below is bounded by [`HANG_LIMIT`]
//! only so that a service that never closes fails the test instead of hanging it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Rest, TestService};
use gantry_broker_accounts::management::Management;
use gantry_service::http_server::HttpLimits;
use gantry_service::server::Limits;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// How long any one wait may take before the test calls it a hang.
const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Limits whose timeouts all outlast [`HANG_LIMIT`] but those `shorten` sets, so that a
/// connection closed in time was closed by the timeout under test.
fn limits(max_connections: usize, shorten: impl FnOnce(&mut HttpLimits)) -> Limits {
    let mut http = HttpLimits {
        max_connections,
        header_timeout: 2 * HANG_LIMIT,
        idle_timeout: 2 * HANG_LIMIT,
        body_timeout: 2 * HANG_LIMIT,
        answer_timeout: 2 * HANG_LIMIT,
    };
    shorten(&mut http);
    Limits {
        http,
        ..Limits::default()
    }
}

/// The timeout under test.
const SHORT: Duration = Duration::from_secs(1);

async fn start(backend: Backend, limits: Limits) -> TestService {
    TestService::start_with_limits(backend, false, |_| {}, limits).await
}

async fn connect(service: &TestService) -> TcpStream {
    TcpStream::connect(service.running().addr).await.unwrap()
}

/// Everything the service sends on `stream` until it closes the connection (end of
/// stream, or a reset); fails the test when it is still open after [`HANG_LIMIT`].
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(HANG_LIMIT, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(error) => panic!("reading from the service failed: {error}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the service kept the connection open for {HANG_LIMIT:?}; it sent {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

/// Reads one whole response (head and `Content-Length` body); its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map(|value| value.trim().parse().unwrap())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + length]);
                    return (status, body.into_owned());
                }
            }
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the service closed the connection mid-response");
            seen.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(HANG_LIMIT, read)
        .await
        .expect("the service answers")
}

/// Runs `$scenario(Backend)` once per database, as the tests `<scenario>::sqlite` and
/// `<scenario>::postgres`.
macro_rules! per_backend {
    ($scenario:ident) => {
        mod $scenario {
            use super::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(Backend::Postgres).await;
            }
        }
    };
}

/// (1) A client that connects and sends nothing is disconnected after the header
/// timeout.
async fn a_silent_connection_is_closed(backend: Backend) {
    let service = start(backend, limits(16, |http| http.header_timeout = SHORT)).await;
    let mut stream = connect(&service).await;
    let sent = read_until_closed(&mut stream).await;
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "{sent:?}"
    );
    service.stop().await;
}

/// (2) Half a request head, then nothing: closed after the header timeout, unanswered.
async fn half_a_request_head_is_closed(backend: Backend) {
    let service = start(backend, limits(16, |http| http.header_timeout = SHORT)).await;
    let mut stream = connect(&service).await;
    stream
        .write_all(b"GET /v2/version HTTP/1.1\r\nHost: gantry\r\nAccept: app")
        .await
        .unwrap();
    let sent = read_until_closed(&mut stream).await;
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "{sent:?}"
    );
    service.stop().await;
}

/// (3) A whole head announcing a body, then half of it: 408 once the body timeout
/// passes, the connection closed, and nothing registered.
async fn half_a_body_gets_408_and_nothing_is_stored(backend: Backend) {
    let service = start(backend, limits(16, |http| http.body_timeout = SHORT)).await;
    let (_, token) = service.endpoint_client("site").await;
    let endpoint_id = Uuid::new_v4();
    let body = serde_json::json!({"endpoint_name": "half", "multi_user": false}).to_string();
    let head = format!(
        "PUT /v3/endpoints/{endpoint_id} HTTP/1.1\r\nHost: gantry\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = connect(&service).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let sent = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"REQUEST_TIMEOUT\""), "{text}");
    assert!(
        service
            .store()
            .endpoint(endpoint_id)
            .await
            .unwrap()
            .is_none(),
        "an endpoint was registered from half a body"
    );
    // The same request whole succeeds on a new connection.
    let rest = Rest::new(&service, &token);
    let (status, answer) = rest
        .call(
            reqwest::Method::PUT,
            &format!("/v3/endpoints/{endpoint_id}"),
            Some(serde_json::from_str(&body).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    service.stop().await;
}

/// (4) A kept-alive connection, answered once and then left idle, is closed after the
/// idle timeout.
async fn an_idle_keep_alive_connection_is_closed(backend: Backend) {
    let service = start(backend, limits(16, |http| http.idle_timeout = SHORT)).await;
    let mut stream = connect(&service).await;
    stream
        .write_all(b"GET /v2/version HTTP/1.1\r\nHost: gantry\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    let sent = read_until_closed(&mut stream).await;
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    service.stop().await;
}

/// The number of connections waiting in the kernel's accept queue of the IPv4 listener
/// on `port` (`rx_queue` of a LISTEN socket in /proc/net/tcp).
fn accept_queue(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(1)?.ends_with(&local) && *fields.get(3)? == "0A";
            let queues = fields.get(4)?;
            listening.then(|| u64::from_str_radix(queues.split(':').nth(1)?, 16).ok())?
        })
        .sum()
}

/// (5) More silent connections than `max_connections` (1): the service serves one at a
/// time (and holds one more, for which no idle connection can make room), the others
/// wait in the kernel's accept queue, and an authenticated request behind them is
/// answered once header timeouts have freed the way.
async fn past_the_cap_clients_wait_and_are_answered(backend: Backend) {
    // Long enough for the look at the accept queue below to fall inside it.
    let limits = limits(1, |http| http.header_timeout = 3 * SHORT);
    let service = start(backend, limits).await;
    let (_, token) = service.user("alice@example.org").await;
    let port = service.running().addr.port();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(&service).await);
    }
    // The first is served at once and the second held; once the first is closed after
    // its header timeout, the second is served and the third held, while the fourth
    // still waits (uncapped, all four were taken at once).
    read_until_closed(&mut silent[0]).await;
    assert!(
        accept_queue(port) > 0,
        "no connection waits in the accept queue: the service took more than its cap"
    );
    let rest = Rest::new(&service, &token);
    let (status, body) = tokio::time::timeout(HANG_LIMIT, rest.get("/v2/endpoints"))
        .await
        .expect("a request behind silent connections is answered");
    assert_eq!(status, StatusCode::OK, "{body}");
    for stream in &mut silent[1..] {
        read_until_closed(stream).await;
    }
    service.stop().await;
}

/// (8) The cap reached by kept-alive connections that were each answered once and are
/// now idle (as clients that send a request now and then, under the idle timeout, keep
/// them): a new client is answered at once, long before the idle timeout, because the
/// connection idle the longest is closed to make room for it.
async fn idle_connections_make_room_for_a_new_client(backend: Backend) {
    const CAP: usize = 4;
    let service = start(backend, limits(CAP, |_| {})).await;
    let (_, token) = service.user("alice@example.org").await;
    let mut idle = Vec::new();
    for _ in 0..CAP {
        let mut stream = connect(&service).await;
        // No token: a 401, with no work for the database.
        stream
            .write_all(b"GET /v2/endpoints HTTP/1.1\r\nHost: gantry\r\n\r\n")
            .await
            .unwrap();
        let (status, body) = read_response(&mut stream).await;
        assert_eq!(status, 401, "{body}");
        idle.push(stream);
    }
    let rest = Rest::new(&service, &token);
    let (status, body) = tokio::time::timeout(HANG_LIMIT, rest.get("/v2/endpoints"))
        .await
        .expect("a new client is answered while idle connections fill the cap");
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = read_until_closed(&mut idle[0]).await;
    assert!(
        sent.is_empty(),
        "the connection idle the longest was closed, not answered: {}",
        String::from_utf8_lossy(&sent)
    );
    service.stop().await;
}

/// The state of the service's side of the connection from `client_port` to its
/// `service_port`, as /proc/net/tcp gives it (1: established), or `None` once it is gone.
fn service_side_state(service_port: u16, client_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{service_port:04X}");
    let remote = format!(":{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = fields.get(1)?.ends_with(&local) && fields.get(2)?.ends_with(&remote);
        ours.then(|| u8::from_str_radix(fields.get(3)?, 16).ok())?
    })
}

/// (9) A client that asks for a large answer, takes its first bytes and then stops
/// reading: the service closes the connection once the answer timeout has passed, with
/// the idle timeout still far off, and the client gets less than the whole answer.
async fn a_client_that_stops_reading_is_cut_off(backend: Backend) {
    // Larger than what the kernels hold for the connection (the client's receive buffer
    // is made small below; the service's send buffer grows to 4 MiB at most).
    const LARGE: usize = 16 * 1024 * 1024;
    let service = start(backend, limits(16, |http| http.answer_timeout = SHORT)).await;
    let (alice, token) = service.user("alice@example.org").await;
    let function_id = Uuid::new_v4();
    service
        .store()
        .insert_function(&gantry_store::NewFunction {
            function_id,
            owner_identity_id: alice,
            function_name: "large".to_owned(),
            function_code: "x".repeat(LARGE),
            description: None,
            public: false,
            group_id: None,
            meta: serde_json::Map::new(),
        })
        .await
        .unwrap();
    // Taken at once, the answer arrives whole.
    let path = format!("/v2/functions/{function_id}");
    let (status, whole) = Rest::new(&service, &token).get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(whole["function_code"].as_str().map(str::len), Some(LARGE));

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(service.running().addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: gantry\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(HANG_LIMIT, stream.read_exact(&mut status))
        .await
        .expect("the service answers")
        .unwrap();
    assert_eq!(
        &status,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&status)
    );

    // Read no more; the service's side must close (or start to) by itself.
    let service_port = service.running().addr.port();
    let client_port = stream.local_addr().unwrap().port();
    let closed = tokio::time::timeout(HANG_LIMIT, async {
        while service_side_state(service_port, client_port) == Some(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the service kept a connection whose client stopped reading open for {HANG_LIMIT:?}"
    );
    // What the kernels held still arrives, then the end.
    let rest = read_until_closed(&mut stream).await;
    assert!(
        status.len() + rest.len() < LARGE,
        "the whole answer arrived ({} bytes)",
        status.len() + rest.len()
    );
    service.stop().await;
}

/// What a `gantry-service serve` child process printed to stderr, kept whole.
#[derive(Clone, Default)]
struct Printed(Arc<Mutex<String>>);

impl Printed {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// (6) The binary under a descriptor limit of 128 (soft and hard), asked for 1000
/// connections: it lowers its cap to what the limit allows, and with more silent
/// connections than descriptors it keeps answering and stops cleanly on SIGTERM.
async fn a_service_short_of_descriptors_keeps_answering(backend: Backend) {
    const DESCRIPTORS: u64 = 128;
    common::install_test_logging();
    gantry_testkit::require_service("RabbitMQ", &gantry_testkit::amqp_host());
    let database_url = match backend {
        Backend::Sqlite => {
            let dir = gantry_testkit::fresh_temp_dir("limits");
            format!("sqlite://{}", dir.join("service.db").display())
        }
        Backend::Postgres => gantry_testkit::fresh_postgres_database().await,
    };
    let store = gantry_store::Store::connect(&database_url).await.unwrap();
    let (_, token) = store.add_user("alice@example.org").await.unwrap();
    store.pool().close().await;
    let vhost = gantry_testkit::fresh_vhost_name();

    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry-service"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1000",
        ])
        .args(["--http-header-timeout-s", "1", "--http-idle-timeout-s", "1"])
        .env("GANTRY_DATABASE_URL", &database_url)
        .env(
            "GANTRY_AMQP_URL",
            format!("amqp://guest:guest@{}/{vhost}", gantry_testkit::amqp_host()),
        )
        .env("GANTRY_AMQP_ADMIN_URL", gantry_testkit::amqp_admin_url())
        .env("GANTRY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child calls only setrlimit, a system call that
    // is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                DESCRIPTORS,
                DESCRIPTORS,
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().unwrap();
    let printed = Printed::default();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gantry-service listening")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                let mut text = printed.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        })
    };
    let addr: std::net::SocketAddr = match addr_rx.recv_timeout(HANG_LIMIT) {
        Ok(addr) => addr.parse().unwrap(),
        Err(_) => {
            let _ = child.kill();
            panic!("the service did not start:\n{}", printed.text());
        }
    };

    let mut silent = Vec::new();
    for _ in 0..2 * DESCRIPTORS {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let http = reqwest::Client::new();
    let answer = tokio::time::timeout(
        HANG_LIMIT,
        http.get(format!("http://{addr}/v2/endpoints"))
            .bearer_auth(&token)
            .send(),
    )
    .await;
    let alive = child.try_wait().unwrap().is_none();
    let response = match answer {
        Ok(Ok(response)) => response,
        other => {
            let _ = child.kill();
            panic!(
                "no answer from a service short of descriptors ({other:?}; running: {alive}):\n{}",
                printed.text()
            );
        }
    };
    assert_eq!(response.status(), StatusCode::OK, "{}", printed.text());
    assert!(alive, "the service died:\n{}", printed.text());
    drop(silent);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(
        HANG_LIMIT,
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the service stops on SIGTERM")
    .unwrap()
    .unwrap();
    reader.join().unwrap();
    let log = printed.text();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("lowered to what the open-files limit allows"),
        "the log does not say the connection cap was lowered:\n{log}"
    );
    Management::new(&gantry_testkit::amqp_admin_url())
        .unwrap()
        .delete_vhost_and_accounts(&vhost)
        .await
        .unwrap();
}

per_backend!(a_silent_connection_is_closed);
per_backend!(half_a_request_head_is_closed);
per_backend!(half_a_body_gets_408_and_nothing_is_stored);
per_backend!(an_idle_keep_alive_connection_is_closed);
per_backend!(past_the_cap_clients_wait_and_are_answered);
per_backend!(a_service_short_of_descriptors_keeps_answering);
per_backend!(idle_connections_make_room_for_a_new_client);
per_backend!(a_client_that_stops_reading_is_cut_off);

/// Set by [`accept_errors_back_off_and_serving_resumes`] for its child process.
const ACCEPT_CHILD: &str = "GANTRY_TEST_ACCEPT_CHILD";

/// (7) The HTTP server alone, uncapped (1000 connections) in a process of 64
/// descriptors, so that accepting fails with EMFILE: it backs off, says so once per
/// burst, answers a request once the header timeout frees descriptors, and stops when
/// told. The server runs in a child process ([`accept_loop_child`], this test binary run
/// again) because the limit applies to a whole process.
#[test]
fn accept_errors_back_off_and_serving_resumes() {
    use std::io::{Read, Write};
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "accept_loop_child", "--ignored", "--nocapture"])
        .env(ACCEPT_CHILD, "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child calls only setrlimit, a system call that
    // is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 64)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().unwrap();
    let printed = Printed::default();
    let mut readers = Vec::new();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for (output, addr_tx) in [
        (
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Some(addr_tx),
        ),
        (Box::new(stderr), None),
    ] {
        let printed = printed.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if let (Some(tx), Some(addr)) = (&addr_tx, line.strip_prefix("LISTENING ")) {
                    let _ = tx.send(addr.to_owned());
                }
                let mut text = printed.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        }));
    }
    let addr: std::net::SocketAddr = match addr_rx.recv_timeout(HANG_LIMIT) {
        Ok(addr) => addr.parse().unwrap(),
        Err(_) => {
            let _ = child.kill();
            panic!("the child did not start:\n{}", printed.text());
        }
    };

    let silent: Vec<_> = (0..128)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gantry\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let alive = child.try_wait().unwrap().is_none();
    if !(read.is_ok() && answer.starts_with(b"HTTP/1.1 200")) {
        let _ = child.kill();
        panic!(
            "no answer from a server out of descriptors ({read:?}, {:?}; running: {alive}):\n{}",
            String::from_utf8_lossy(&answer),
            printed.text()
        );
    }
    assert!(alive, "the server died:\n{}", printed.text());
    drop(silent);

    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop when told:\n{}", printed.text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for reader in readers {
        reader.join().unwrap();
    }
    let log = printed.text();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("cannot accept connections"), "{log}");
    assert!(log.contains("accepting connections again"), "{log}");
}

/// The child half of [`accept_errors_back_off_and_serving_resumes`]: serves `GET /` with
/// [`gantry_service::http_server::serve`] until its stdin closes. Does nothing unless
/// that test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child half of accept_errors_back_off_and_serving_resumes, which runs it"]
async fn accept_loop_child() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if std::env::var_os(ACCEPT_CHILD).is_none() {
        return;
    }
    let layer = gantry_service::logging::layer(Some("info"), std::io::stderr).unwrap();
    tracing_subscriber::registry().with(layer).init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTENING {}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop.send(true);
    });
    let limits = limits(1000, |http| http.header_timeout = SHORT).http;
    gantry_service::http_server::serve(listener, app, limits, stopped).await;
}
