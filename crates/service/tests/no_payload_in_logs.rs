//! No task payload or result reaches the service's log, even at `debug`: the service
//! runs here with its own log layer (`gantry_service::logging`) writing into a buffer,
//! and the test looks for marker strings it put into a payload and a result, as text
//! and as the decimal byte list a `Debug` of a message body prints.
//!
//! Its own binary: the log subscriber is global to the process.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Backend, Rest, TestService, register_site, wait_until};
use futures_lite::StreamExt;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_broker::{Broker, Outgoing};
use gantry_protocol::messagepack::{Message, TaskResult};
use gantry_protocol::packed::pack_buffers;
use gantry_protocol::rest::EndpointRegistrationResponse;
use serde_json::json;
use uuid::Uuid;

/// Everything the service logged in this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The service's log layer at `debug`, into one buffer for the whole process.
fn captured_log() -> Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let log = Captured::default();
        let writer = log.clone();
        let layer = gantry_service::logging::layer(Some("debug"), move || writer.clone()).unwrap();
        tracing_subscriber::registry().with(layer).init();
        log
    })
    .clone()
}

/// The ways `text` could show in a log: itself, and the decimal byte list that a
/// `Debug` of a message body (`Vec<u8>`) prints.
fn traces_of(text: &str) -> [String; 2] {
    let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
    [text.to_owned(), bytes.join(", ")]
}

/// Takes the next task off a plain endpoint's queue and answers it with `data`, as the
/// endpoint would: result published with a confirm, then the task acknowledged.
async fn answer_next_task(registered: &EndpointRegistrationResponse, data: &str) {
    let creds = gantry_test_endpoint::creds_of(registered).unwrap();
    let broker = Broker::connect(&creds.task_queue_info.connection_url)
        .await
        .unwrap();
    let mut tasks = broker
        .consume(&creds.task_queue_info.queue, "log-test", 1)
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), tasks.next())
        .await
        .expect("a task within 30 s")
        .unwrap()
        .unwrap();
    let Message::Task(task) = Message::unpack(&delivery.data).unwrap() else {
        panic!("not a task message");
    };
    let body = Message::Result(TaskResult {
        task_id: task.task_id,
        data: data.to_owned(),
        details: None,
        error_details: None,
        task_statuses: None,
    })
    .pack();
    let publish = creds.result_queue_info.queue_publish_kwargs.unwrap();
    broker
        .publish_confirmed(&[Outgoing {
            exchange: &publish.exchange,
            routing_key: &publish.routing_key,
            body: &body,
            properties: Default::default(),
        }])
        .await
        .unwrap();
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    broker.close().await;
}

/// Waits until the service has stored `task`'s result and tried to forward it.
async fn wait_until_forwarded(log: &Captured, task: Uuid) {
    let task = task.to_string();
    wait_until("the service handled the result", || async {
        log.text()
            .lines()
            .any(|line| line.contains("result stored and forwarded") && line.contains(&task))
    })
    .await;
}

/// A result whose task group has no queue (`create_queue: false`, the SDK's
/// `Client.run`), one whose queue is gone, and a malformed one: no body reaches the log.
async fn results_without_a_queue_leave_no_payload_in_the_log(backend: Backend) {
    let log = captured_log();
    let service = TestService::start(backend, false).await;
    let (alice_id, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let marker = format!("PAYLOAD-MARKER-{}", Uuid::new_v4().simple());
    let args = format!("00\n{marker}-args\n");
    let payload = pack_buffers(&[args.as_str(), "00\nkwargs\n"]);
    let result = format!("00\n{}", format!("{marker}-result ").repeat(2000));

    // No queue was asked for: nothing is forwarded.
    let task = alice
        .submit_one(
            registered.endpoint_id,
            function,
            json!({"create_queue": false, "tasks": {function.to_string(): [payload.clone()]}}),
        )
        .await;
    answer_next_task(&registered, &result).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    wait_until_forwarded(&log, task).await;

    // A queue was asked for, but it is gone when the result comes: the broker returns
    // the forwarded result, body and all.
    let (status, submitted) = alice
        .post(
            &format!("/v3/endpoints/{}/submit", registered.endpoint_id),
            json!({"create_queue": true, "tasks": {function.to_string(): [payload]}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{submitted}");
    let task: Uuid = submitted["tasks"][function.to_string()][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let group: Uuid = submitted["task_group_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin = Broker::connect(&service.config.amqp_url).await.unwrap();
    admin
        .delete_queue(&gantry_broker::layout::task_group_queue(alice_id, group))
        .await
        .unwrap();
    admin.close().await;
    answer_next_task(&registered, &result).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    wait_until_forwarded(&log, task).await;

    // An endpoint's malformed result (the payload where an object belongs) is dropped,
    // and the reason logged without the payload.
    let creds = gantry_test_endpoint::creds_of(&registered).unwrap();
    let publish = creds.result_queue_info.queue_publish_kwargs.unwrap();
    let mut malformed = vec![1u8];
    malformed.extend(
        json!({"message_type": "result", "data": {"task_id": task, "data": "x", "details": result}})
            .to_string()
            .bytes(),
    );
    let broker = Broker::connect(&creds.result_queue_info.connection_url)
        .await
        .unwrap();
    broker
        .publish_confirmed(&[Outgoing {
            exchange: &publish.exchange,
            routing_key: &publish.routing_key,
            body: &malformed,
            properties: Default::default(),
        }])
        .await
        .unwrap();
    broker.close().await;
    wait_until("the service dropped the malformed result", || async {
        log.text().contains("dropping an unreadable result message")
    })
    .await;

    let text = log.text();
    for trace in traces_of(&marker) {
        assert!(
            !text.contains(&trace),
            "the log holds a payload ({} bytes of log):\n{}",
            text.len(),
            text.chars().take(2000).collect::<String>()
        );
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_without_a_queue_leave_no_payload_in_the_log_sqlite() {
    results_without_a_queue_leave_no_payload_in_the_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_without_a_queue_leave_no_payload_in_the_log_postgres() {
    results_without_a_queue_leave_no_payload_in_the_log(Backend::Postgres).await;
}

/// A request that fails on a dependency (the broker's vhost is gone) is logged once,
/// with its cause: not once more by the HTTP trace layer without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_logged_once() {
    let log = captured_log();
    let service = TestService::start(Backend::Sqlite, false).await;
    let (_, token) = service.user("grace@example.org").await;
    gantry_broker_accounts::management::Management::new(&gantry_testkit::amqp_admin_url())
        .unwrap()
        .delete_vhost(&service.vhost)
        .await
        .unwrap();
    let before = log.text().len();
    let (status, body) = Rest::new(&service, &token)
        .get("/v2/get_amqp_result_connection_url")
        .await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let text = log.text()[before..].to_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.contains("ERROR") && line.contains("/v2/get_amqp_result_connection_url")
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("vhost_or_user_not_found"), "{}", lines[0]);
    service.stop().await;
}
