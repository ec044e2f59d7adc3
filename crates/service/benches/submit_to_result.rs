//! Benchmark: submit → result latency and throughput of no-op tasks through the service
//! and RabbitMQ, with the Rust test endpoint answering without Python (so the figures
//! are the service's and the broker's, not a worker's).
//!
//! Run with `cargo bench -p gantry-service` (needs RabbitMQ and, for the PostgreSQL
//! rows, PostgreSQL, as the tests do). The client side does what the SDK's Executor
//! does: POST /v3/endpoints/{id}/submit, then read results from the task group's queue.
//! Then it measures how much the process's memory grows while the service takes one
//! submit of 10,000 tasks of a 64 KiB function (`-- memory` runs only that).

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use gantry_broker::Broker;
use gantry_broker::lapin::options::BasicAckOptions;
use gantry_protocol::messagepack::Message;
use gantry_protocol::packed::pack_buffers;
use gantry_service::master_secret::MasterSecretSource;
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
        .issue_client_token(&client, "funcx_service", 3_600_000)
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

/// The service as both measurements run it: on `database_url` and its own `vhost`.
fn bench_config(database_url: String, vhost: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        amqp_url: format!("amqp://guest:guest@{}/{vhost}", gantry_testkit::amqp_host()),
        amqp_admin_url: gantry_testkit::amqp_admin_url(),
        public_amqp_url: None,
        max_body_bytes: 64 * 1024 * 1024,
        client_token_lifetime_s: 3600,
        start_retry_after: std::time::Duration::from_secs(3),
        master_secret: MasterSecretSource::File(
            gantry_testkit::fresh_temp_dir("bench-key").join("broker.key"),
        ),
    }
}

async fn run(backend: &str, database_url: String) -> Vec<String> {
    let vhost = format!("gantry-bench-{}", uuid::Uuid::new_v4().simple());
    let service = start(bench_config(database_url, &vhost)).await.unwrap();
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

/// How much this process's resident memory grows while the service takes one submit of
/// 10,000 tasks of a 64 KiB function (640 MiB of task messages), until every message is
/// on the broker. No endpoint consumes them; they go with the vhost.
async fn submit_memory(backend: &str, database_url: String) -> String {
    const TASKS: usize = 10_000;
    let vhost = format!("gantry-bench-{}", uuid::Uuid::new_v4().simple());
    let service = start(bench_config(database_url, &vhost)).await.unwrap();
    let store = &service.state.store;
    let (_, token) = store.add_user("bench").await.unwrap();
    let (client, _) = store.add_endpoint_client("bench-site").await.unwrap();
    let client_token = store
        .issue_client_token(&client, "funcx_service", 3_600_000)
        .await
        .unwrap();
    let registration =
        serde_json::from_value(json!({"endpoint_name": "bench", "public": true})).unwrap();
    let registered = register(&service.url(), &client_token, &registration)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let code = pack_buffers(&[&format!("01\n{}\n", "A".repeat(64 * 1024))]);
    let function: Value = http
        .post(format!("{}/v3/functions", service.url()))
        .bearer_auth(&token)
        .json(&json!({"function_name": "big", "function_code": code}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let function = function["function_uuid"].as_str().unwrap().to_owned();
    let payload = pack_buffers(&["00\ngAUpLg==\n", "00\ngAR9lC4=\n"]);
    let body = json!({"tasks": {&function: vec![payload; TASKS]}}).to_string();

    let before = resident_kib("VmRSS:").unwrap_or(0);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let response = http
        .post(format!(
            "{}/v3/endpoints/{}/submit",
            service.url(),
            registered.endpoint_id
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    // What the submit could not publish in time, the outbox sends: wait for all of it.
    while !store.unsent_tasks(i64::MAX, 1).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    let peak = resident_kib("VmHWM:").unwrap_or(0);
    service.stop().await;
    let management =
        gantry_broker_accounts::management::Management::new(&gantry_testkit::amqp_admin_url())
            .unwrap();
    management.delete_vhost_and_accounts(&vhost).await.unwrap();
    let growth = if reset {
        format!("+{:.0} MiB", peak.saturating_sub(before) as f64 / 1024.0)
    } else {
        "not measured (no /proc/self/clear_refs)".to_owned()
    };
    format!(
        "| {backend} | memory, one submit of {TASKS} tasks of a 64 KiB function | peak resident {growth} | all on the broker after {:.1} s | |",
        elapsed.as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs benches with --bench absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `-- memory` runs only the memory rows; `-- memory-of <database>` is one of them,
    // run in a process of its own so that no earlier run's memory hides its growth.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "memory-of") {
        let row = match args.get(at + 1).map(String::as_str) {
            Some("PostgreSQL") => {
                submit_memory(
                    "PostgreSQL",
                    gantry_testkit::fresh_postgres_database().await,
                )
                .await
            }
            _ => {
                let dir = gantry_testkit::fresh_temp_dir("bench-submit");
                submit_memory(
                    "SQLite",
                    format!("sqlite://{}", dir.join("service.db").display()),
                )
                .await
            }
        };
        println!("{row}");
        return;
    }
    let only_memory = args.iter().any(|a| a == "memory");
    let mut rows = Vec::new();
    if !only_memory {
        let sqlite_dir = gantry_testkit::fresh_temp_dir("bench");
        rows.extend(
            run(
                "SQLite",
                format!("sqlite://{}", sqlite_dir.join("service.db").display()),
            )
            .await,
        );
        rows.extend(
            run(
                "PostgreSQL",
                gantry_testkit::fresh_postgres_database().await,
            )
            .await,
        );
    }
    let process_peak = resident_kib("VmHWM:");
    for database in ["SQLite", "PostgreSQL"] {
        let me = std::env::current_exe().unwrap();
        let output = std::process::Command::new(me)
            .args(["--bench", "memory-of", database])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the memory run on {database} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        rows.push(String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }
    println!(
        "\nsubmit → result through gantry-service + RabbitMQ, no-op tasks, Rust test endpoint (Echo)\n"
    );
    println!("| database | measure | | | |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if let (Some(peak), false) = (process_peak, only_memory) {
        println!(
            "\npeak resident memory of this process (service, test endpoint and load, both runs): {:.1} MiB",
            peak as f64 / 1024.0
        );
    }
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM:` the peak
/// resident set, `VmRSS:` the current one), in KiB (Linux).
fn resident_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
