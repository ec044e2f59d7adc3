//! Benchmark: submit → result latency and throughput of no-op tasks through the service
//! and RabbitMQ, with the Rust test endpoint answering without Python (so the figures
//! are the service's and the broker's, not a worker's).
//!
//! Run with `cargo bench -p gantry-service` (needs RabbitMQ and, for the PostgreSQL
//! rows, PostgreSQL, as the tests do). The client side does what the SDK's Executor
//! does: POST /v3/endpoints/{id}/submit, then read results from the task group's queue.

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use gantry_broker::Broker;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_protocol::messagepack::Message;
use gantry_protocol::packed::pack_buffers;
use gantry_service::server::{ServeConfig, start};
use gantry_test_endpoint::{Executor, creds_of, register, run_uep};
use serde_json::{Value, json};

struct Setup {
    http: reqwest::Client,
    token: String,
    submit_url: String,
    function: String,
    group: String,
}

async fn setup(
    service: &gantry_service::server::RunningService,
) -> (
    Setup,
    gantry_broker::lapin::Consumer,
    Broker,
    gantry_test_endpoint::RunningUep,
) {
    let store = &service.state.store;
    let (_, token) = store.add_user("bench").await.unwrap();
    let (client, _) = store.add_endpoint_client("bench-site").await.unwrap();
    let client_token = store
        .issue_client_token(client.client_id, "funcx_service", 3_600_000)
        .await
        .unwrap();
    let registration =
        serde_json::from_value(json!({"endpoint_name": "bench", "public": true})).unwrap();
    let registered = register(&service.url(), &client_token, &registration)
        .await
        .unwrap();
    let uep = run_uep(creds_of(&registered).unwrap(), Executor::Echo, 30.0)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = service.url();
    let function: Value = http
        .post(format!("{base}/v3/functions"))
        .bearer_auth(&token)
        .json(&json!({"function_name": "noop", "function_code": pack_buffers(&["01\nbm9vcA==\n"])}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let submit_url = format!("{base}/v3/endpoints/{}/submit", registered.endpoint_id);
    let group = uuid::Uuid::new_v4().to_string();
    let function = function["function_uuid"].as_str().unwrap().to_owned();
    // An empty submit creates the task group and its queue, as the Executor's first does.
    http.post(&submit_url)
        .bearer_auth(&token)
        .json(&json!({"create_queue": true, "task_group_id": group, "tasks": {}}))
        .send()
        .await
        .unwrap();
    let amqp: Value = http
        .get(format!("{base}/v2/get_amqp_result_connection_url"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broker = Broker::connect(amqp["connection_url"].as_str().unwrap())
        .await
        .unwrap();
    let queue = format!("{}{group}", amqp["queue_prefix"].as_str().unwrap());
    let results = broker.consume(&queue, "bench", 1000).await.unwrap();
    (
        Setup {
            http,
            token,
            submit_url,
            function,
            group,
        },
        results,
        broker,
        uep,
    )
}

async fn submit(setup: &Setup, tasks: usize) {
    let payload = pack_buffers(&["00\ngAUpLg==\n", "00\ngAR9lC4=\n"]);
    let response = setup
        .http
        .post(&setup.submit_url)
        .bearer_auth(&setup.token)
        .json(&json!({"create_queue": true, "task_group_id": setup.group, "tasks": {&setup.function: vec![payload; tasks]}}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

async fn receive(results: &mut gantry_broker::lapin::Consumer, count: usize) {
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(60), results.next())
            .await
            .expect("a result within 60 s")
            .unwrap()
            .unwrap();
        Message::unpack_result(&delivery.data).unwrap();
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn run(backend: &str, database_url: String) -> Vec<String> {
    let vhost = format!("gantry-bench-{}", uuid::Uuid::new_v4().simple());
    let service = start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        amqp_url: format!("amqp://guest:guest@{}/{vhost}", gantry_testkit::amqp_host()),
        amqp_admin_url: gantry_testkit::amqp_admin_url(),
        public_amqp_url: None,
        max_body_bytes: 64 * 1024 * 1024,
        client_token_lifetime_s: 3600,
        start_retry_after: std::time::Duration::from_secs(3),
    })
    .await
    .unwrap();
    let (setup, mut results, broker, uep) = setup(&service).await;

    // Warm up, then one task at a time: submit → result at the client's queue.
    for _ in 0..20 {
        submit(&setup, 1).await;
        receive(&mut results, 1).await;
    }
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        submit(&setup, 1).await;
        receive(&mut results, 1).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let mut rows = vec![format!(
        "| {backend} | latency, 1 task at a time (n=200) | p50 {:.1} ms | p90 {:.1} ms | p99 {:.1} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99)
    )];

    // Throughput: batches submitted back to back while results are read, as an
    // Executor does (its default batch is 128 tasks).
    for (batches, size) in [(20, 100), (5, 1000)] {
        let total = batches * size;
        let started = Instant::now();
        let submitting = async {
            for _ in 0..batches {
                submit(&setup, size).await;
            }
            started.elapsed()
        };
        let (submit_time, ()) = tokio::join!(submitting, receive(&mut results, total));
        let elapsed = started.elapsed();
        rows.push(format!(
            "| {backend} | throughput, {batches} submits of {size} | {total} tasks in {:.2} s | {:.0} tasks/s end to end | submits took {:.2} s |",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            submit_time.as_secs_f64()
        ));
    }
    broker.close().await;
    uep.stop().await.unwrap();
    service.stop().await;
    let management =
        gantry_broker_accounts::management::Management::new(&gantry_testkit::amqp_admin_url())
            .unwrap();
    management.delete_vhost_and_accounts(&vhost).await.unwrap();
    rows
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs benches with --bench absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sqlite_dir = gantry_testkit::fresh_temp_dir("bench");
    let mut rows = run(
        "SQLite",
        format!("sqlite://{}", sqlite_dir.join("service.db").display()),
    )
    .await;
    rows.extend(
        run(
            "PostgreSQL",
            gantry_testkit::fresh_postgres_database().await,
        )
        .await,
    );
    println!(
        "\nsubmit → result through gantry-service + RabbitMQ, no-op tasks, Rust test endpoint (Echo)\n"
    );
    println!("| database | measure | | | |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if let Some(peak) = peak_resident_kib() {
        println!(
            "\npeak resident memory of this process (service, test endpoint and load, both runs): {:.1} MiB",
            peak as f64 / 1024.0
        );
    }
}

/// `VmHWM` of this process, in KiB (Linux).
fn peak_resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
