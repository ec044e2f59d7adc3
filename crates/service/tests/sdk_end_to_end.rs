//! The real `globus-compute-sdk` (Executor and Client) against the service, with the
//! Rust test endpoint over the real broker running the tasks in Python.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{Backend, TestService, register_site, sdk};
use gantry_protocol::uep_id::derive_uep_id;
use gantry_store::TaskStatus;
use gantry_test_endpoint::{Executor, StartBehaviour, creds_of, run_mep, run_uep};
use serde_json::{Value, json};
use uuid::Uuid;

fn python() -> Executor {
    Executor::Python(gantry_testkit::venv_python())
}

async fn the_sdk_executor_gets_results_through_a_plain_endpoint(backend: Backend) {
    let service = TestService::start(backend, true).await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let uep = run_uep(creds_of(&registered).unwrap(), python(), 2.0)
        .await
        .unwrap();

    let env = vec![
        ("GANTRY_TOKEN", token.clone()),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
    ];
    let out = sdk("executor", env.clone()).await;
    assert_eq!(out["results"]["add"], json!(42), "{out}");
    assert_eq!(
        out["results"]["shout"],
        json!({"upper": "NAÏVE CAFÉ ☃ 𝄞 日本語", "len": 18, "nested": ["naïve café ☃ 𝄞 日本語", {"again": "naïve café ☃ 𝄞 日本語"}]})
    );
    assert_eq!(
        out["results"]["who"]["task_uuid"], out["task_ids"]["who"],
        "GC_TASK_UUID is the task id"
    );
    assert_eq!(
        out["results"]["many"],
        Value::from((0..20).map(|i| i * 2).collect::<Vec<i64>>())
    );
    assert_eq!(
        out["errors"]["fails"]["type"], "TaskExecutionFailed",
        "{out}"
    );
    let text = out["errors"]["fails"]["text"].as_str().unwrap();
    assert!(
        text.contains("ValueError") && text.contains("refused 'naïve café ☃ 𝄞 日本語' ☃"),
        "{text}"
    );

    // The service stored every outcome.
    let group: Uuid = out["task_group_id"].as_str().unwrap().parse().unwrap();
    let tasks = service.store().tasks_of_group(group).await.unwrap();
    assert_eq!(tasks.len(), 24);
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Success)
            .count(),
        23
    );
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .count(),
        1
    );
    assert!(
        tasks.iter().all(|t| t.task_buffer.is_none()),
        "the outbox is empty"
    );

    // The Client's REST path: run, then poll (no result queue).
    let polled = sdk("client_poll", env).await;
    assert_eq!(
        (polled["result"].clone(), polled["status"].clone()),
        (json!(11), json!("success"))
    );

    uep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_executor_gets_results_through_a_plain_endpoint_sqlite() {
    the_sdk_executor_gets_results_through_a_plain_endpoint(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_executor_gets_results_through_a_plain_endpoint_postgres() {
    the_sdk_executor_gets_results_through_a_plain_endpoint(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mep_gets_one_start_command_per_user_configuration() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (alice, token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    assert!(registered.command_queue_info.is_some() && registered.task_queue_info.is_none());
    let mep = run_mep(&registered, StartBehaviour::Start(python()), 2.0)
        .await
        .unwrap();
    let mep_id = registered.endpoint_id.to_string();
    let config_a = json!({"ACCOUNT_ID": "314159265", "walltime": "00:02:00"});
    let config_b = json!({"ACCOUNT_ID": "543126688"});
    let with_config = |config: &Value| {
        vec![
            ("GANTRY_TOKEN", token.clone()),
            ("ENDPOINT_ID", mep_id.clone()),
            ("USER_ENDPOINT_CONFIG", config.to_string()),
        ]
    };

    let first = sdk("single", with_config(&config_a)).await;
    assert_eq!(first["result"], json!(3), "{first}");
    let commands = mep.commands.lock().unwrap().clone();
    assert_eq!(commands.len(), 1);
    let command = &commands[0];
    assert_eq!(command.command, "cmd_start_endpoint");
    assert_eq!(command.globus_username, "alice@example.org");
    assert_eq!(command.globus_effective_identity, alice);
    assert_eq!(command.globus_identity_set.len(), 1);
    assert_eq!(command.globus_identity_set[0].id, alice);
    assert_eq!(
        command.globus_identity_set[0].status.as_deref(),
        Some("used")
    );
    assert_eq!(Value::Object(command.kwargs.user_opts.clone()), config_a);
    assert_eq!(
        command.kwargs.user_runtime["globus_compute_sdk_version"],
        "4.19.0"
    );
    let python_mm =
        gantry_protocol::uep_id::python_major_minor(&command.kwargs.user_runtime).unwrap();
    let uep_a = derive_uep_id(
        registered.endpoint_id,
        alice,
        config_a.as_object().unwrap(),
        &python_mm,
    );
    assert_eq!(command.kwargs.amqp_creds.endpoint_id, uep_a);
    assert_eq!(command.kwargs.name, format!("uep.{mep_id}.{uep_a}"));
    let task: Uuid = first["task_id"].as_str().unwrap().parse().unwrap();
    let stored = service.store().task(task).await.unwrap().unwrap();
    assert_eq!(
        (stored.endpoint_id, stored.submitted_endpoint_id),
        (uep_a, registered.endpoint_id)
    );

    // Same user, another configuration: a second UEP.
    let second = sdk("single", with_config(&config_b)).await;
    assert_eq!(second["result"], json!(3), "{second}");
    let commands = mep.commands.lock().unwrap().clone();
    assert_eq!(commands.len(), 2);
    let uep_b = commands[1].kwargs.amqp_creds.endpoint_id;
    assert_ne!(uep_b, uep_a);
    assert_eq!(mep.ueps.lock().await.len(), 2);

    // The first configuration again: its UEP is online, so no new command.
    let third = sdk("single", with_config(&config_a)).await;
    assert_eq!(third["result"], json!(3));
    assert_eq!(
        mep.commands.lock().unwrap().len(),
        2,
        "an online UEP is not started again"
    );
    assert_eq!(
        service
            .store()
            .ueps_of(registered.endpoint_id)
            .await
            .unwrap()
            .len(),
        2
    );

    mep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_uep_start_fails_the_waiting_tasks_with_its_reason() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("bob@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let reason = "identity bob@example.org maps to no local user";
    let mep = run_mep(&registered, StartBehaviour::Fail(reason.into()), 2.0)
        .await
        .unwrap();
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
        (
            "USER_ENDPOINT_CONFIG",
            json!({"ACCOUNT_ID": "1"}).to_string(),
        ),
        ("RESULT_TIMEOUT", "30".to_owned()),
    ];
    // Both tasks fail with the MEP's reason, whichever side of the failure report each
    // submit lands on; a second run right after (inside the start-command throttle)
    // asks the MEP again and fails the same way instead of waiting forever.
    let first = sdk("single", env.clone()).await;
    let second = sdk("single", env).await;
    for out in [&first, &second] {
        for key in ["result", "who"] {
            let error = &out["errors"][key];
            assert_eq!(error["type"], "TaskExecutionFailed", "{key}: {out}");
            assert!(
                error["text"].as_str().unwrap().contains(reason),
                "{key}: {out}"
            );
        }
    }
    let asked = mep.commands.lock().unwrap().len();
    assert!(
        asked >= 2,
        "the second run asked the MEP again ({asked} commands)"
    );
    let out = first;
    let task: Uuid = out["task_id"].as_str().unwrap().parse().unwrap();
    let stored = service.store().task(task).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Failed);
    // The failed task's message is gone too: it must not run if a later start succeeds.
    let admin = gantry_broker::Broker::connect(&service.config.amqp_url)
        .await
        .unwrap();
    let channel = admin.channel().await.unwrap();
    let queue = gantry_broker::layout::task_queue(stored.endpoint_id);
    let left = channel
        .basic_get(
            queue.as_str().into(),
            gantry_broker::lapin::options::BasicGetOptions::default(),
        )
        .await
        .unwrap();
    assert!(left.is_none(), "the failed UEP's task queue was purged");
    admin.close().await;
    mep.stop().await.unwrap();
    service.stop().await;
}

async fn tasks_and_results_survive_a_service_restart(backend: Backend) {
    let mut service = TestService::start(backend, true).await;
    let (_, token) = service.user("carol@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let env = vec![
        ("GANTRY_TOKEN", token.clone()),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
    ];

    // Submitted while no endpoint runs; then the service restarts.
    let submitted = sdk("submit_only", env.clone()).await;
    service.restart().await;
    let uep = run_uep(creds_of(&registered).unwrap(), python(), 2.0)
        .await
        .unwrap();

    // A new SDK process picks the task group up again and gets every result.
    let mut reload_env = env.clone();
    reload_env.push((
        "TASK_GROUP_ID",
        submitted["task_group_id"].as_str().unwrap().to_owned(),
    ));
    let reloaded = sdk("reload", reload_env).await;
    assert_eq!(reloaded["results"], json!([100, 101, 102, 103, 104]));

    // Restarted again, the results are still there.
    service.restart().await;
    for task_id in submitted["task_ids"].as_array().unwrap() {
        let task = service
            .store()
            .task(task_id.as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.status, TaskStatus::Success);
    }
    uep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_results_survive_a_service_restart_sqlite() {
    tasks_and_results_survive_a_service_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_results_survive_a_service_restart_postgres() {
    tasks_and_results_survive_a_service_restart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_fails_its_waiting_tasks() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("dave@example.org").await;
    // A plain endpoint that never comes online: its tasks wait in its queue.
    let (client_token, registered) = register_site(&service, "idle", false).await;
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
        ("RESULT_TIMEOUT", "60".to_owned()),
    ];
    let submitter = tokio::spawn(sdk("single", env));
    // Wait until both tasks wait on the endpoint's queue (stored, and confirmed by the
    // broker), then delete the endpoint.
    loop {
        let unfinished = service
            .store()
            .unfinished_task_count(registered.endpoint_id)
            .await
            .unwrap();
        let unsent = service.store().unsent_tasks(i64::MAX, 10).await.unwrap();
        if unfinished == 2 && unsent.is_empty() {
            break;
        }
        assert!(
            unfinished <= 2,
            "{unfinished} tasks for the idle endpoint; the SDK submits two"
        );
        assert!(
            !submitter.is_finished(),
            "the SDK gave up before submitting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/v2/endpoints/{}",
            service.url(),
            registered.endpoint_id
        ))
        .bearer_auth(&client_token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");

    let out = submitter.await.unwrap();
    for key in ["result", "who"] {
        let error = &out["errors"][key];
        assert_eq!(error["type"], "TaskExecutionFailed", "{key}: {out}");
        assert!(
            error["text"].as_str().unwrap().contains("was deleted"),
            "{key}: {out}"
        );
    }
    let task: Uuid = out["task_id"].as_str().unwrap().parse().unwrap();
    let stored = service.store().task(task).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Failed);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_start_command_is_sent_again_once_the_mep_is_online() {
    let service = TestService::start(Backend::Postgres, true).await;
    let (_, token) = service.user("erin@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    // The MEP is down when erin submits, and its start command is lost.
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
        (
            "USER_ENDPOINT_CONFIG",
            json!({"ACCOUNT_ID": "7"}).to_string(),
        ),
        ("RESULT_TIMEOUT", "90".to_owned()),
    ];
    let submitter = tokio::spawn(sdk("single", env));
    let admin = gantry_broker::Broker::connect(&service.config.amqp_url)
        .await
        .unwrap();
    let commands = gantry_broker::layout::command_queue(registered.endpoint_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin.purge_queue(&commands).await.unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no start command was sent"
        );
        assert!(
            !submitter.is_finished(),
            "the SDK gave up before submitting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin.close().await;

    // The MEP comes up; the service notices the waiting tasks and asks again.
    let mep = run_mep(&registered, StartBehaviour::Start(python()), 1.0)
        .await
        .unwrap();
    let out = submitter.await.unwrap();
    assert_eq!(out["result"], json!(3), "{out}");
    assert_eq!(
        mep.commands.lock().unwrap().len(),
        1,
        "one command reached the MEP: the repeat, once"
    );
    mep.stop().await.unwrap();
    service.stop().await;
}

/// The official SDK after an idle shutdown: the UEP's last heartbeat says it stopped
/// (`active: false`, period kept, as the official UEP sends it), and the next run gets
/// its result at once. The outbox's retry is set to ten minutes, so only a start command
/// sent by the submit itself lets the second run finish within its minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_runs_again_at_once_after_its_uep_stopped() {
    let service = TestService::start_with(Backend::Postgres, true, |config| {
        config.start_retry_after = std::time::Duration::from_secs(600);
    })
    .await;
    let (_, token) = service.user("frank@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let mep = run_mep(&registered, StartBehaviour::Start(python()), 5.0)
        .await
        .unwrap();
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
        (
            "USER_ENDPOINT_CONFIG",
            json!({"ACCOUNT_ID": "42"}).to_string(),
        ),
        ("RESULT_TIMEOUT", "60".to_owned()),
    ];
    let first = sdk("single", env.clone()).await;
    assert_eq!(first["result"], json!(3), "{first}");
    let creds = mep.commands.lock().unwrap()[0].kwargs.amqp_creds.clone();

    common::stop_uep(&service, &mep, creds.endpoint_id).await;
    common::publish_heartbeat(
        &creds,
        json!({"heartbeat_period": 5, "active": false}),
        json!({}),
    )
    .await;
    common::wait_for_active(&service, creds.endpoint_id, false).await;

    let second = sdk("single", env).await;
    assert_eq!(second["result"], json!(3), "{second}");
    assert_eq!(mep.commands.lock().unwrap().len(), 2);
    mep.stop().await.unwrap();
    service.stop().await;
}

/// The official SDK's `Client.get_endpoints(role="any")` finds the MEP a user may
/// submit to (the default role, `owner`, lists only their own), and `delete_function`
/// deletes the user's function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_finds_its_meps_by_role_and_deletes_its_functions() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("grace@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let out = sdk("discovery", vec![("GANTRY_TOKEN", token)]).await;
    assert_eq!(out["owned"], json!([]), "{out}");
    assert_eq!(
        out["any"],
        json!([registered.endpoint_id.to_string()]),
        "{out}"
    );
    assert_eq!(out["after_delete"], json!(404), "{out}");
    service.stop().await;
}

/// `Executor(result_serializers=[JSONData()])`: the endpoint serializes the result as
/// the submitter asked (a tuple comes back a list, where dill would keep it a tuple),
/// through Gantry's own UEP loop and thread-pool engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_gets_results_serialized_as_it_asked() {
    let service = TestService::start(Backend::Sqlite, true).await;
    let (_, token) = service.user("heidi@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let uep = run_uep(creds_of(&registered).unwrap(), python(), 2.0)
        .await
        .unwrap();
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
    ];
    let out = sdk("serializers", env).await;
    assert_eq!(
        (&out["type"], &out["value"]),
        (&json!("list"), &json!([1, "two"])),
        "{out}"
    );
    uep.stop().await.unwrap();
    service.stop().await;
}

/// The official SDK's `get_task` shows a task `running` once the endpoint reported its
/// start (an `execution-start` transition in a heartbeat): the task waits to be released
/// until the SDK has seen it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_a_task_running() {
    let service = TestService::start(Backend::Postgres, true).await;
    let (_, token) = service.user("ivan@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let uep = run_uep(creds_of(&registered).unwrap(), python(), 1.0)
        .await
        .unwrap();
    let env = vec![
        ("GANTRY_TOKEN", token),
        ("ENDPOINT_ID", registered.endpoint_id.to_string()),
        ("RESULT_TIMEOUT", "60".to_owned()),
    ];
    let out = sdk("running", env).await;
    assert_eq!(out["result"], json!("released"), "{out}");
    assert_eq!(
        out["statuses"].as_array().unwrap().last(),
        Some(&json!("running")),
        "{out}"
    );
    uep.stop().await.unwrap();
    service.stop().await;
}
