//! What endpoints report over the broker and what the service makes of it: user
//! endpoints that stop and must be started again, tasks that start running, and the
//! task messages endpoints receive. The service runs against the real RabbitMQ and each
//! database; the endpoints are the Rust test endpoint (`run_mep`, `run_uep`), and where
//! an endpoint reports something the test endpoint does not, the test publishes it with
//! that endpoint's own broker credentials, as an endpoint process would.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{
    Backend, Rest, TestService, publish_heartbeat, register_site, stop_uep, wait_for_active,
    wait_until,
};
use gantry_test_endpoint::{Executor, StartBehaviour, run_mep};
use serde_json::json;
use uuid::Uuid;

/// A UEP that says it stopped is offline at once, and the next submit starts it again
/// at once: the outbox's retry is set to ten minutes here, so only an immediate start
/// command lets a task finish within the minute `wait_finished` allows.
async fn a_uep_that_says_it_stopped_is_started_again_at_once(backend: Backend) {
    let service = TestService::start_with(backend, false, |config| {
        config.start_retry_after = Duration::from_secs(600);
    })
    .await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let mep_id = registered.endpoint_id;
    let mep = run_mep(&registered, StartBehaviour::Start(Executor::Echo), 30.0)
        .await
        .unwrap();
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let config = json!({"user_endpoint_config": {"ACCOUNT_ID": "1"}});
    let commands = || mep.commands.lock().unwrap().len();

    // The first submit starts the UEP.
    let task = alice.submit_one(mep_id, function, config.clone()).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    assert_eq!(commands(), 1);
    let creds = mep.commands.lock().unwrap()[0].kwargs.amqp_creds.clone();
    let uep_id = creds.endpoint_id;

    // It stops the way Gantry's endpoints do (period 0), moments after it started:
    // the next submit asks the MEP again at once.
    stop_uep(&service, &mep, uep_id).await;
    let (_, status) = alice.get(&format!("/v2/endpoints/{uep_id}/status")).await;
    assert_eq!(status["status"], "offline", "{status}");
    let task = alice.submit_one(mep_id, function, config.clone()).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    assert_eq!(commands(), 2);

    // It stops the way the official UEP does: its last heartbeat keeps its period and
    // says `active: false`. Offline at once, and started again by the next submit.
    stop_uep(&service, &mep, uep_id).await;
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "active": false}),
        json!({}),
    )
    .await;
    wait_for_active(&service, uep_id, false).await;
    let (_, status) = alice.get(&format!("/v2/endpoints/{uep_id}/status")).await;
    assert_eq!(status["status"], "offline", "{status}");
    let task = alice.submit_one(mep_id, function, config.clone()).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    assert_eq!(commands(), 3);

    // A task that reached the UEP's queue while it was shutting down (the service
    // still saw it online): when its stop is reported, the MEP is asked at once.
    stop_uep(&service, &mep, uep_id).await;
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "active": true}),
        json!({}),
    )
    .await;
    wait_for_active(&service, uep_id, true).await;
    let task = alice.submit_one(mep_id, function, config.clone()).await;
    assert_eq!(commands(), 3, "an online UEP is not started again");
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "active": false}),
        json!({}),
    )
    .await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    assert_eq!(commands(), 4);

    mep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uep_that_says_it_stopped_is_started_again_at_once_sqlite() {
    a_uep_that_says_it_stopped_is_started_again_at_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uep_that_says_it_stopped_is_started_again_at_once_postgres() {
    a_uep_that_says_it_stopped_is_started_again_at_once(Backend::Postgres).await;
}

/// The first task message on a plain endpoint's queue, read with the endpoint's own
/// broker account, as the endpoint reads it.
async fn next_task_message(
    registered: &gantry_protocol::rest::EndpointRegistrationResponse,
) -> gantry_broker::lapin::message::Delivery {
    use futures_lite::StreamExt;
    let creds = gantry_test_endpoint::creds_of(registered).unwrap();
    let broker = gantry_broker::Broker::connect(&creds.task_queue_info.connection_url)
        .await
        .unwrap();
    let mut consumer = broker
        .consume(&creds.task_queue_info.queue, "test-reader", 1)
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a task message within 30 s")
        .unwrap()
        .unwrap();
    broker.close().await;
    delivery
}

/// `Executor(result_serializers=[JSONData()])` sends import paths; the endpoint gets
/// them as an AMQP array of strings, which the official endpoint iterates (a string
/// there is tried one character at a time, and every task fails).
async fn result_serializers_reach_the_endpoint_as_an_array(backend: Backend) {
    use gantry_broker::lapin::types::AMQPValue;
    let service = TestService::start(backend, false).await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let serializers = [
        "globus_compute_sdk.serialize.concretes.JSONData",
        "globus_compute_sdk.serialize.concretes.DillDataBase64",
    ];
    let task = alice
        .submit_one(
            registered.endpoint_id,
            function,
            json!({"result_serializers": serializers, "resource_specification": {"num_nodes": 2}}),
        )
        .await;

    let delivery = next_task_message(&registered).await;
    let headers = delivery.properties.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("result_serializers"),
        Some(&AMQPValue::FieldArray(
            serializers
                .iter()
                .map(|s| AMQPValue::LongString((*s).into()))
                .collect::<Vec<_>>()
                .into()
        )),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("task_uuid"),
        Some(&AMQPValue::LongString(task.to_string().as_str().into()))
    );
    // The resource specification stays a JSON string: the endpoint parses it.
    let Some(AMQPValue::LongString(spec)) = headers.get("resource_specification") else {
        panic!("no resource_specification header: {headers:?}");
    };
    let spec: serde_json::Value = serde_json::from_slice(spec.as_bytes()).unwrap();
    assert_eq!(spec, json!({"num_nodes": 2}));

    // What is not an import path is refused before anything is stored.
    let payload = gantry_protocol::packed::pack_buffers(&["00\nx\n", "00\ny\n"]);
    let (status, body) = alice
        .post(
            &format!("/v3/endpoints/{}/submit", registered.endpoint_id),
            json!({"tasks": {function.to_string(): [payload]}, "result_serializers": ["JSONData()"]}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_RESULT_SERIALIZERS", "{body}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_serializers_reach_the_endpoint_as_an_array_sqlite() {
    result_serializers_reach_the_endpoint_as_an_array(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_serializers_reach_the_endpoint_as_an_array_postgres() {
    result_serializers_reach_the_endpoint_as_an_array(Backend::Postgres).await;
}

/// Nanoseconds since the epoch, as endpoints stamp task transitions.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A task shows `running` once its endpoint reports an `execution-start` transition
/// for it in a heartbeat, and a report about another endpoint's task changes nothing.
async fn a_task_shows_running_once_its_endpoint_reports_its_start(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let (_, other) = register_site(&service, "other", false).await;
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let task = alice
        .submit_one(registered.endpoint_id, function, json!({}))
        .await;
    let status = || async { alice.get(&format!("/v2/tasks/{task}")).await.1["status"].clone() };
    assert_eq!(status().await, "waiting-for-ep");

    let started = json!({task.to_string(): [
        {"timestamp": now_ns(), "state": "execution-start", "actor": "interchange"}
    ]});
    // Another endpoint cannot move this task.
    publish_heartbeat(
        &gantry_test_endpoint::creds_of(&other).unwrap(),
        json!({"heartbeat_period": 30}),
        started.clone(),
    )
    .await;
    let creds = gantry_test_endpoint::creds_of(&registered).unwrap();
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "marker": 1}),
        json!({}),
    )
    .await;
    wait_until("the service stored the heartbeat", || async {
        let ep = service
            .store()
            .endpoint(registered.endpoint_id)
            .await
            .unwrap()
            .unwrap();
        ep.global_state
            .is_some_and(|s| s.get("marker") == Some(&json!(1)))
    })
    .await;
    assert_eq!(
        status().await,
        "waiting-for-ep",
        "another endpoint's report moved it"
    );

    publish_heartbeat(&creds, json!({"heartbeat_period": 30}), started).await;
    wait_until("the task shows running", || async {
        status().await == "running"
    })
    .await;
    let (_, batch) = alice
        .post("/v2/batch_status", json!({"task_ids": [task]}))
        .await;
    assert_eq!(batch["results"][task.to_string()]["status"], "running");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_shows_running_once_its_endpoint_reports_its_start_sqlite() {
    a_task_shows_running_once_its_endpoint_reports_its_start(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_shows_running_once_its_endpoint_reports_its_start_postgres() {
    a_task_shows_running_once_its_endpoint_reports_its_start(Backend::Postgres).await;
}

/// A heartbeat may name thousands of tasks that started: all are marked running. One
/// larger than the service reads (`MAX_HEARTBEAT_BYTES`) is dropped unread: its
/// transitions change nothing, and the endpoint's next heartbeat is read as usual.
async fn heartbeats_are_bounded_and_their_task_statuses_applied(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let payload = gantry_protocol::packed::pack_buffers(&["00\na\n", "00\nk\n"]);
    let (status, submitted) = alice
        .post(
            &format!("/v3/endpoints/{}/submit", registered.endpoint_id),
            json!({"tasks": {function.to_string(): vec![payload; 2001]}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{submitted}");
    let mut tasks: Vec<String> = submitted["tasks"][function.to_string()]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let spared = tasks.pop().unwrap();
    let started = |ids: &[String]| {
        let transition =
            json!([{"timestamp": now_ns(), "state": "execution-start", "actor": "worker"}]);
        serde_json::Value::Object(
            ids.iter()
                .map(|id| (id.clone(), transition.clone()))
                .collect(),
        )
    };
    let statuses = || async {
        let mut ids = tasks.clone();
        ids.push(spared.clone());
        let (_, batch) = alice
            .post("/v2/batch_status", json!({"task_ids": ids}))
            .await;
        batch["results"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, view)| (id.clone(), view["status"].as_str().unwrap().to_owned()))
            .collect::<std::collections::BTreeMap<String, String>>()
    };
    let creds = gantry_test_endpoint::creds_of(&registered).unwrap();

    publish_heartbeat(&creds, json!({"heartbeat_period": 30}), started(&tasks)).await;
    wait_until("2,000 tasks show running", || async {
        statuses()
            .await
            .values()
            .filter(|s| *s == "running")
            .count()
            == tasks.len()
    })
    .await;

    // Over the limit: dropped unread, though it names the spared task.
    let filler = "x".repeat(gantry_service::consumers::MAX_HEARTBEAT_BYTES);
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "filler": filler}),
        started(std::slice::from_ref(&spared)),
    )
    .await;
    publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 30, "after": true}),
        json!({}),
    )
    .await;
    wait_until("the next heartbeat is read", || async {
        let ep = service
            .store()
            .endpoint(registered.endpoint_id)
            .await
            .unwrap()
            .unwrap();
        ep.global_state
            .is_some_and(|s| s.get("after") == Some(&json!(true)))
    })
    .await;
    let (_, view) = alice.get(&format!("/v2/tasks/{spared}")).await;
    assert_eq!(view["status"], "waiting-for-ep", "{view}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_bounded_and_their_task_statuses_applied_sqlite() {
    heartbeats_are_bounded_and_their_task_statuses_applied(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_bounded_and_their_task_statuses_applied_postgres() {
    heartbeats_are_bounded_and_their_task_statuses_applied(Backend::Postgres).await;
}

/// A submit keeps each task's payload once and its function's code once (not a copy of
/// the code per task); the message the endpoint receives is still the code followed by
/// the payload, also when the outbox sends it after the function was deleted. A submit
/// whose messages would pass the configured limit gets 413 naming it, and stores
/// nothing.
async fn a_submit_keeps_its_function_once_and_is_bounded(backend: Backend) {
    let limits = gantry_service::server::Limits {
        max_submit_expanded_bytes: 4 * 1024 * 1024,
        ..Default::default()
    };
    let service = TestService::start_with_limits(
        backend,
        false,
        |config| config.max_body_bytes = 16 * 1024 * 1024,
        limits,
    )
    .await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let alice = Rest::new(&service, &token);
    let code =
        gantry_protocol::packed::pack_buffers(&[&format!("01\n{}\n", "A".repeat(256 * 1024))]);
    let (status, body) = alice
        .post(
            "/v3/functions",
            json!({"function_name": "big", "function_code": code}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let function = body["function_uuid"].as_str().unwrap().to_owned();
    let payloads = |count: usize| -> Vec<String> {
        (0..count)
            .map(|i| {
                gantry_protocol::packed::pack_buffers(&[&format!("00\nargs-{i}\n"), "00\nkw\n"])
            })
            .collect()
    };
    let submit = format!("/v3/endpoints/{}/submit", registered.endpoint_id);

    // 20 tasks of a 256 KiB function: 5 MiB of messages, past the 4 MiB limit.
    let group = Uuid::new_v4();
    let (status, body) = alice
        .post(
            &submit,
            json!({"task_group_id": group, "tasks": {&function: payloads(20)}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "SUBMIT_TOO_LARGE");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("4 MiB") && message.contains("--max-submit-expanded-mb"),
        "{message}"
    );
    assert_eq!(service.store().task_group_owner(group).await.unwrap(), None);

    // 10 tasks fit. Their queue is gone, so they stay in the outbox: as payloads alone.
    let admin = gantry_broker::Broker::connect(&service.config.amqp_url)
        .await
        .unwrap();
    admin
        .delete_queue(&gantry_broker::layout::task_queue(registered.endpoint_id))
        .await
        .unwrap();
    admin.close().await;
    let sent = payloads(10);
    let (status, body) = alice
        .post(&submit, json!({"tasks": {&function: sent}}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let ids: Vec<Uuid> = body["tasks"][&function]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect();
    for (id, payload) in ids.iter().zip(&sent) {
        let task = service.store().task(*id).await.unwrap().unwrap();
        assert_eq!(task.task_buffer.as_deref(), Some(payload.as_str()), "{id}");
        assert!(task.buffer_is_payload);
    }

    // The function is deleted; the outbox still sends each task whole.
    let (status, body) = alice.delete(&format!("/v2/functions/{function}")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let creds = gantry_test_endpoint::creds_of(&registered).unwrap();
    let reader = gantry_broker::Broker::connect(&creds.task_queue_info.connection_url)
        .await
        .unwrap();
    let mut messages = reader
        .consume(&creds.task_queue_info.queue, "test-reader", 10)
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < ids.len() {
        use futures_lite::StreamExt;
        // The outbox waits 15 s before it sends what a submit could not.
        let delivery = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .expect("the outbox sends the tasks within a minute")
            .unwrap()
            .unwrap();
        let gantry_protocol::messagepack::Message::Task(task) =
            gantry_protocol::messagepack::Message::unpack(&delivery.data).unwrap()
        else {
            panic!("not a task message");
        };
        let at = ids.iter().position(|id| *id == task.task_id).unwrap();
        assert_eq!(task.task_buffer, format!("{code}{}", sent[at]), "task {at}");
        seen.insert(task.task_id);
        delivery
            .acker
            .ack(gantry_broker::lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    reader.close().await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_keeps_its_function_once_and_is_bounded_sqlite() {
    a_submit_keeps_its_function_once_and_is_bounded(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_keeps_its_function_once_and_is_bounded_postgres() {
    a_submit_keeps_its_function_once_and_is_bounded(Backend::Postgres).await;
}
