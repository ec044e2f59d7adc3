//! Per-user quotas and result-queue expiry, through the real service, RabbitMQ and each
//! database: a submit past a limit gets 429 with a code that names it and creates
//! nothing (no user endpoint row, broker account, queue, start command or task), other
//! users are unaffected, and the user can go on once tasks finish; a result queue that
//! nobody consumes goes away, its results still readable over REST. The endpoints are
//! the Rust test endpoint (`run_mep`, `run_uep` with the echo engine).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, Rest, TestService, register_site, wait_until};
use futures_lite::StreamExt;
use gantry_broker::layout::{task_group_queue, task_queue};
use gantry_protocol::messagepack::Message;
use gantry_protocol::uep_id::{derive_uep_id, python_major_minor};
use gantry_service::quotas::Quotas;
use gantry_service::server::Limits;
use gantry_test_endpoint::{Executor, StartBehaviour, creds_of, run_mep, run_uep};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A service with these quotas. It asks a MEP again to start a UEP only after ten
/// minutes, so every start command a test sees was sent by a submit.
async fn start(backend: Backend, quotas: Quotas) -> TestService {
    let limits = Limits {
        quotas,
        ..Limits::default()
    };
    TestService::start_with_limits(
        backend,
        false,
        |config| config.start_retry_after = Duration::from_secs(600),
        limits,
    )
    .await
}

/// What the broker holds in the test's vhost, read through the management API: the
/// queues, and the accounts that may use the vhost.
struct BrokerView {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    vhost: String,
}

impl BrokerView {
    fn new(service: &TestService) -> BrokerView {
        let url = url::Url::parse(&gantry_testkit::amqp_admin_url()).unwrap();
        BrokerView {
            http: reqwest::Client::new(),
            base: format!(
                "{}://{}:{}/api",
                url.scheme(),
                url.host_str().unwrap(),
                url.port_or_known_default().unwrap()
            ),
            user: url.username().to_owned(),
            password: url.password().unwrap_or_default().to_owned(),
            vhost: service.vhost.clone(),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }

    fn names(list: Value, field: &str) -> BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|entry| entry[field].as_str().unwrap().to_owned())
            .collect()
    }

    async fn queues(&self) -> BTreeSet<String> {
        let list = self
            .get(&format!("/queues/{}?columns=name", self.vhost))
            .await;
        BrokerView::names(list, "name")
    }

    async fn accounts(&self) -> BTreeSet<String> {
        let list = self
            .get(&format!("/vhosts/{}/permissions", self.vhost))
            .await;
        BrokerView::names(list, "user")
    }

    async fn has_queue(&self, queue: &str) -> bool {
        self.queues().await.contains(queue)
    }
}

/// A submit's answer: status, `Retry-After` (seconds) and body.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    /// Asserts a 429 with `code`, a message naming `flag`, and `Retry-After` as given.
    fn assert_refused(&self, code: &str, flag: &str, retry_after: bool) {
        assert_eq!(self.status, StatusCode::TOO_MANY_REQUESTS, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        let message = self.body["message"].as_str().unwrap();
        assert!(message.contains(flag), "{message}");
        assert_eq!(self.retry_after.is_some(), retry_after, "{message}");
    }

    fn task_ids(&self) -> Vec<Uuid> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self.body["tasks"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|ids| ids.as_array().unwrap().clone())
            .map(|id| id.as_str().unwrap().parse().unwrap())
            .collect()
    }
}

/// Submits `count` tasks of `function` to `endpoint` as the holder of `token`, with
/// `extra` fields in the body.
async fn submit(
    service: &TestService,
    token: &str,
    endpoint: Uuid,
    function: Uuid,
    count: usize,
    extra: Value,
) -> Answer {
    let payload = gantry_protocol::packed::pack_buffers(&[
        "00\ngASVBQAAAAAAAABLAYWULg==\n",
        "00\ngAR9lC4=\n",
    ]);
    let mut body = json!({"tasks": {function.to_string(): vec![payload; count]}});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v3/endpoints/{endpoint}/submit", service.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    Answer {
        status,
        retry_after,
        body: response.json().await.unwrap(),
    }
}

async fn wait_all_finished(rest: &Rest, tasks: &[Uuid]) {
    for task in tasks {
        assert_eq!(rest.wait_finished(*task).await["status"], "success");
    }
}

/// Past `--max-user-endpoint-configs`, a new configuration for the same MEP is refused
/// before anything is made for it; another user, and a configuration used before, are
/// not refused.
async fn user_endpoint_configs_are_limited_per_mep(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_user_endpoint_configs: Some(2),
            ..Quotas::NONE
        },
    )
    .await;
    let view = BrokerView::new(&service);
    let (alice_id, alice_token) = service.user("alice@example.org").await;
    let (_, bob_token) = service.user("bob@example.org").await;
    let (_, registered) = register_site(&service, "mep", true).await;
    let mep_id = registered.endpoint_id;
    let mep = run_mep(&registered, StartBehaviour::Start(Executor::Echo), 30.0)
        .await
        .unwrap();
    let alice = Rest::new(&service, &alice_token);
    let bob = Rest::new(&service, &bob_token);
    let alice_function = alice.register_function().await;
    let bob_function = bob.register_function().await;
    let config = |account: &str| json!({"user_endpoint_config": {"ACCOUNT_ID": account}});

    for account in ["1", "2"] {
        let task = alice
            .submit_one(mep_id, alice_function, config(account))
            .await;
        assert_eq!(alice.wait_finished(task).await["status"], "success");
    }
    let ueps_of_alice = || async {
        service
            .store()
            .ueps_of(mep_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|uep| uep.uep.as_ref().unwrap().user_identity_id == alice_id)
            .count()
    };
    assert_eq!(ueps_of_alice().await, 2);
    let queues = view.queues().await;
    let accounts = view.accounts().await;

    // A third configuration: refused, with a result queue asked for, and nothing made.
    let group = Uuid::new_v4();
    let mut third = config("3");
    third["task_group_id"] = json!(group);
    third["create_queue"] = json!(true);
    submit(&service, &alice_token, mep_id, alice_function, 1, third)
        .await
        .assert_refused(
            "TOO_MANY_USER_ENDPOINT_CONFIGS",
            "--max-user-endpoint-configs",
            false,
        );
    assert_eq!(ueps_of_alice().await, 2, "no user endpoint row");
    assert_eq!(
        view.queues().await,
        queues,
        "no task queue, no result queue"
    );
    assert_eq!(view.accounts().await, accounts, "no broker account");
    assert_eq!(service.store().task_group_owner(group).await.unwrap(), None);
    let refused_uep = derive_uep_id(
        mep_id,
        alice_id,
        config("3")["user_endpoint_config"].as_object().unwrap(),
        &python_major_minor(&json!({})).unwrap_or_default(),
    );
    assert!(
        service
            .store()
            .endpoint(refused_uep)
            .await
            .unwrap()
            .is_none()
    );
    let refused_account = service
        .running()
        .state
        .settings
        .deployment
        .endpoint_account(refused_uep);
    assert!(!accounts.contains(&refused_account));

    // Another user is not refused: bob's third configuration runs. His start command
    // went out after alice's refused submit, so once his task ran, any command that
    // submit had sent would have reached the MEP first.
    let task = bob.submit_one(mep_id, bob_function, config("3")).await;
    assert_eq!(bob.wait_finished(task).await["status"], "success");
    let commanded: Vec<Uuid> = mep
        .commands
        .lock()
        .unwrap()
        .iter()
        .map(|command| command.kwargs.amqp_creds.endpoint_id)
        .collect();
    assert_eq!(commanded.len(), 3, "{commanded:?}");
    assert!(!commanded.contains(&refused_uep), "no start command");

    // A configuration alice used before still works.
    let task = alice.submit_one(mep_id, alice_function, config("1")).await;
    assert_eq!(alice.wait_finished(task).await["status"], "success");
    assert_eq!(ueps_of_alice().await, 2);

    mep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_endpoint_configs_are_limited_per_mep_sqlite() {
    user_endpoint_configs_are_limited_per_mep(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_endpoint_configs_are_limited_per_mep_postgres() {
    user_endpoint_configs_are_limited_per_mep(Backend::Postgres).await;
}

/// Past `--max-live-task-groups`, a submit that would start another live group is
/// refused (a submit into a live group is not); a group is live while it has
/// unfinished tasks, or while its result queue may still exist.
async fn live_task_groups_are_limited(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_live_task_groups: Some(2),
            result_queue_expiry: Some(Duration::from_secs(3600)),
            ..Quotas::NONE
        },
    )
    .await;
    let view = BrokerView::new(&service);
    let (alice_id, alice_token) = service.user("alice@example.org").await;
    let (_, bob_token) = service.user("bob@example.org").await;
    // A plain endpoint whose tasks wait until the test starts it.
    let (_, registered) = register_site(&service, "plain", false).await;
    let ep = registered.endpoint_id;
    let alice = Rest::new(&service, &alice_token);
    let function = alice.register_function().await;
    let bob_function = Rest::new(&service, &bob_token).register_function().await;
    let group = |id: Uuid, queue: bool| json!({"task_group_id": id, "create_queue": queue});
    let [g1, g2, g3, g4, g5, g6] = [(); 6].map(|_| Uuid::new_v4());

    let mut waiting = submit(&service, &alice_token, ep, function, 1, group(g1, false))
        .await
        .task_ids();
    waiting.extend(
        submit(&service, &alice_token, ep, function, 1, group(g2, false))
            .await
            .task_ids(),
    );
    // A third group: refused, and neither it nor its result queue is made.
    submit(&service, &alice_token, ep, function, 1, group(g3, true))
        .await
        .assert_refused("TOO_MANY_LIVE_TASK_GROUPS", "--max-live-task-groups", true);
    assert_eq!(service.store().task_group_owner(g3).await.unwrap(), None);
    assert!(!view.has_queue(&task_group_queue(alice_id, g3)).await);
    // More tasks in a live group are welcome; another user is not refused.
    waiting.extend(
        submit(&service, &alice_token, ep, function, 1, group(g1, false))
            .await
            .task_ids(),
    );
    let bob_tasks = submit(&service, &bob_token, ep, bob_function, 1, json!({}))
        .await
        .task_ids();

    // Once the tasks finish, their groups are no longer live.
    let uep = run_uep(creds_of(&registered).unwrap(), Executor::Echo, 30.0)
        .await
        .unwrap();
    wait_all_finished(&alice, &waiting).await;
    wait_all_finished(&Rest::new(&service, &bob_token), &bob_tasks).await;
    let tasks = submit(&service, &alice_token, ep, function, 1, group(g3, false))
        .await
        .task_ids();
    wait_all_finished(&alice, &tasks).await;

    // A group whose result queue may still exist stays live after its tasks finish.
    for g in [g4, g5] {
        let tasks = submit(&service, &alice_token, ep, function, 1, group(g, true))
            .await
            .task_ids();
        wait_all_finished(&alice, &tasks).await;
        assert!(view.has_queue(&task_group_queue(alice_id, g)).await);
    }
    let refused = submit(&service, &alice_token, ep, function, 1, group(g6, false)).await;
    refused.assert_refused("TOO_MANY_LIVE_TASK_GROUPS", "--max-live-task-groups", true);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("result queue"),
        "{}",
        refused.body
    );
    assert_eq!(service.store().task_group_owner(g6).await.unwrap(), None);

    uep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_task_groups_are_limited_sqlite() {
    live_task_groups_are_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_task_groups_are_limited_postgres() {
    live_task_groups_are_limited(Backend::Postgres).await;
}

/// Past `--max-tasks-in-flight`, a submit is refused and stores nothing; once tasks
/// finish, the user submits again.
async fn tasks_in_flight_are_limited(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_tasks_in_flight: Some(3),
            ..Quotas::NONE
        },
    )
    .await;
    let (_, alice_token) = service.user("alice@example.org").await;
    let (_, bob_token) = service.user("bob@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    let ep = registered.endpoint_id;
    let alice = Rest::new(&service, &alice_token);
    let function = alice.register_function().await;
    let bob_function = Rest::new(&service, &bob_token).register_function().await;
    let in_group = |id: Uuid| json!({"task_group_id": id});

    let mut waiting = submit(&service, &alice_token, ep, function, 2, json!({}))
        .await
        .task_ids();
    // Two more would make four: refused, and nothing stored.
    let refused_group = Uuid::new_v4();
    submit(
        &service,
        &alice_token,
        ep,
        function,
        2,
        in_group(refused_group),
    )
    .await
    .assert_refused("TOO_MANY_TASKS_IN_FLIGHT", "--max-tasks-in-flight", true);
    assert_eq!(
        service
            .store()
            .task_group_owner(refused_group)
            .await
            .unwrap(),
        None
    );
    waiting.extend(
        submit(&service, &alice_token, ep, function, 1, json!({}))
            .await
            .task_ids(),
    );
    submit(
        &service,
        &alice_token,
        ep,
        function,
        1,
        in_group(refused_group),
    )
    .await
    .assert_refused("TOO_MANY_TASKS_IN_FLIGHT", "--max-tasks-in-flight", true);
    // A submit larger than the limit itself: waiting would not help.
    submit(
        &service,
        &alice_token,
        ep,
        function,
        4,
        in_group(refused_group),
    )
    .await
    .assert_refused("TOO_MANY_TASKS_IN_FLIGHT", "--max-tasks-in-flight", false);
    assert_eq!(
        service
            .store()
            .task_group_owner(refused_group)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        service.store().unfinished_task_count(ep).await.unwrap(),
        3,
        "only the accepted tasks are stored"
    );
    // Another user is not refused.
    let bob_tasks = submit(&service, &bob_token, ep, bob_function, 3, json!({}))
        .await
        .task_ids();

    // Once the tasks finish, alice submits again.
    let uep = run_uep(creds_of(&registered).unwrap(), Executor::Echo, 30.0)
        .await
        .unwrap();
    wait_all_finished(&alice, &waiting).await;
    wait_all_finished(&Rest::new(&service, &bob_token), &bob_tasks).await;
    let tasks = submit(&service, &alice_token, ep, function, 3, json!({}))
        .await
        .task_ids();
    wait_all_finished(&alice, &tasks).await;

    uep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_in_flight_are_limited_sqlite() {
    tasks_in_flight_are_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_in_flight_are_limited_postgres() {
    tasks_in_flight_are_limited(Backend::Postgres).await;
}

/// A result queue nobody consumes is deleted after `--result-queue-expiry-s` (also one
/// declared before the service set the expiry), its results still readable over REST;
/// the endpoints' queues never expire; and an SDK that comes back for a group's
/// unfinished tasks (`Executor.reload_tasks`: the task group, then its queue) finds the
/// queue again and gets their results there.
async fn unused_result_queues_expire_and_results_stay(backend: Backend) {
    let mut service = start(backend, Quotas::NONE).await;
    let view = BrokerView::new(&service);
    let (alice_id, alice_token) = service.user("alice@example.org").await;
    let (_, registered) = register_site(&service, "plain", false).await;
    // An endpoint nobody consumes from: its task queue must outlive every result queue.
    let (_, idle) = register_site(&service, "idle", false).await;
    let idle_queue = task_queue(idle.endpoint_id);
    let ep = registered.endpoint_id;
    let alice = Rest::new(&service, &alice_token);
    let function = alice.register_function().await;
    let with_queue = |id: Uuid| json!({"task_group_id": id, "create_queue": true});
    let (g1, g2) = (Uuid::new_v4(), Uuid::new_v4());

    // A result lands in a queue that nobody reads, before any expiry is set.
    let uep = run_uep(creds_of(&registered).unwrap(), Executor::Echo, 30.0)
        .await
        .unwrap();
    let first = submit(&service, &alice_token, ep, function, 1, with_queue(g1))
        .await
        .task_ids();
    wait_all_finished(&alice, &first).await;
    uep.stop().await.unwrap();
    let q1 = task_group_queue(alice_id, g1);
    assert!(view.has_queue(&q1).await);

    // The service now starts with an expiry: it reaches the queue declared before.
    service.limits.quotas.result_queue_expiry = Some(Duration::from_secs(3));
    service.restart().await;
    wait_until("the unused result queue expires", || async {
        !view.has_queue(&q1).await
    })
    .await;
    let (status, view_of_first) = alice.get(&format!("/v2/tasks/{}", first[0])).await;
    assert_eq!(status, StatusCode::OK, "{view_of_first}");
    assert_eq!(view_of_first["status"], "success", "{view_of_first}");
    assert!(view_of_first["result"].is_string(), "{view_of_first}");

    // A group whose task is still waiting: its queue expires unused too...
    let second = submit(&service, &alice_token, ep, function, 1, with_queue(g2))
        .await
        .task_ids();
    let q2 = task_group_queue(alice_id, g2);
    wait_until("the second unused result queue expires", || async {
        !view.has_queue(&q2).await
    })
    .await;
    // (declared after the expiry was set, and gone: an endpoint queue it matched would
    // have gone before it)
    assert!(view.has_queue(&idle_queue).await, "{idle_queue} expired");

    // ...and the SDK coming back for the task finds it again and gets the result there.
    let (status, group_view) = alice.get(&format!("/v2/taskgroup/{g2}")).await;
    assert_eq!(status, StatusCode::OK, "{group_view}");
    let (status, amqp) = alice.get("/v2/get_amqp_result_connection_url").await;
    assert_eq!(status, StatusCode::OK, "{amqp}");
    let reader = gantry_broker::Broker::connect(amqp["connection_url"].as_str().unwrap())
        .await
        .unwrap();
    let queue = format!("{}{g2}", amqp["queue_prefix"].as_str().unwrap());
    assert_eq!(queue, q2);
    let mut results = reader.consume(&queue, "sdk", 8).await.unwrap();
    let uep = run_uep(creds_of(&registered).unwrap(), Executor::Echo, 30.0)
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await
        .expect("the result within a minute")
        .unwrap()
        .unwrap();
    let Message::Result(result) = Message::unpack(&delivery.data).unwrap() else {
        panic!("not a result message");
    };
    assert_eq!(result.task_id, second[0]);
    wait_all_finished(&alice, &second).await;

    reader.close().await;
    uep.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_result_queues_expire_and_results_stay_sqlite() {
    unused_result_queues_expire_and_results_stay(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_result_queues_expire_and_results_stay_postgres() {
    unused_result_queues_expire_and_results_stay(Backend::Postgres).await;
}

/// Submits that race for a user's last places never pass the limit together: the
/// store checks again in the transaction that writes, with the user's row locked.
async fn concurrent_submits_never_pass_a_limit(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_user_endpoint_configs: Some(2),
            max_tasks_in_flight: Some(3),
            ..Quotas::NONE
        },
    )
    .await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, plain) = register_site(&service, "plain", false).await;
    let (_, mep) = register_site(&service, "mep", true).await;
    let function = Rest::new(&service, &token).register_function().await;

    // Twelve one-task submits at once, with room for three.
    let mut racing = Vec::new();
    for _ in 0..12 {
        let (url, token) = (service.url(), token.clone());
        let endpoint = plain.endpoint_id;
        racing.push(tokio::spawn(async move {
            submit_to(&url, &token, endpoint, function, json!({})).await
        }));
    }
    let mut accepted = 0;
    for submit in racing {
        match submit.await.unwrap() {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("a racing submit got {other}"),
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(
        service
            .store()
            .unfinished_task_count(plain.endpoint_id)
            .await
            .unwrap(),
        3
    );

    // Eight new configurations at once (bob's: alice has no room for tasks left),
    // with room for two.
    let (bob_id, bob_token) = service.user("bob@example.org").await;
    let function = Rest::new(&service, &bob_token).register_function().await;
    let mut racing = Vec::new();
    for account in 0..8 {
        let (url, token) = (service.url(), bob_token.clone());
        let endpoint = mep.endpoint_id;
        let config = json!({"user_endpoint_config": {"ACCOUNT_ID": account.to_string()}});
        racing.push(tokio::spawn(async move {
            submit_to(&url, &token, endpoint, function, config).await
        }));
    }
    let mut accepted = 0;
    for submit in racing {
        match submit.await.unwrap() {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("a racing submit got {other}"),
        }
    }
    assert_eq!(accepted, 2);
    let ueps = service.store().ueps_of(mep.endpoint_id).await.unwrap();
    assert_eq!(ueps.len(), 2, "{ueps:?}");
    assert!(
        ueps.iter()
            .all(|uep| uep.uep.as_ref().unwrap().user_identity_id == bob_id)
    );
    service.stop().await;
}

/// One submit of one task; its status.
async fn submit_to(
    url: &str,
    token: &str,
    endpoint: Uuid,
    function: Uuid,
    extra: Value,
) -> StatusCode {
    let payload = gantry_protocol::packed::pack_buffers(&[
        "00\ngASVBQAAAAAAAABLAYWULg==\n",
        "00\ngAR9lC4=\n",
    ]);
    let mut body = json!({"tasks": {function.to_string(): [payload]}});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    reqwest::Client::new()
        .post(format!("{url}/v3/endpoints/{endpoint}/submit"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_never_pass_a_limit_sqlite() {
    concurrent_submits_never_pass_a_limit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_never_pass_a_limit_postgres() {
    concurrent_submits_never_pass_a_limit(Backend::Postgres).await;
}

/// How many one-task submits race for the last place in flight.
const RACERS: usize = 12;

/// Sends `bodies` as one-task submits to `endpoint` all at once; how many were
/// accepted (every other one must be refused with 429).
async fn race_submits(
    service: &TestService,
    token: &str,
    endpoint: Uuid,
    function: Uuid,
    bodies: Vec<Value>,
) -> usize {
    let racing: Vec<_> = bodies
        .into_iter()
        .map(|extra| {
            let (url, token) = (service.url(), token.to_owned());
            tokio::spawn(async move { submit_to(&url, &token, endpoint, function, extra).await })
        })
        .collect();
    let mut accepted = 0;
    for submit in racing {
        match submit.await.unwrap() {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("a racing submit got {other}"),
        }
    }
    accepted
}

/// Submits racing for a user's last task in flight, each asking for the result queue
/// of a task group of its own: the broker holds exactly the queues of the accepted
/// ones. A refused submit creates nothing on the broker, so a loop of such submits
/// cannot pile up idle queues (each a process on the broker) until they expire.
async fn refused_racing_submits_declare_no_result_queue(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_tasks_in_flight: Some(3),
            ..Quotas::NONE
        },
    )
    .await;
    let view = BrokerView::new(&service);
    let (alice_id, token) = service.user("alice@example.org").await;
    let (_, plain) = register_site(&service, "plain", false).await;
    let function = Rest::new(&service, &token).register_function().await;
    // Two tasks wait (nobody runs the endpoint): room for one more.
    submit(&service, &token, plain.endpoint_id, function, 2, json!({}))
        .await
        .task_ids();

    let bodies = (0..RACERS)
        .map(|_| json!({"task_group_id": Uuid::new_v4(), "create_queue": true}))
        .collect();
    let accepted = race_submits(&service, &token, plain.endpoint_id, function, bodies).await;
    assert_eq!(accepted, 1);
    let prefix = gantry_broker::layout::user_queue_prefix(alice_id);
    let result_queues: Vec<String> = view
        .queues()
        .await
        .into_iter()
        .filter(|queue| queue.starts_with(&prefix))
        .collect();
    assert_eq!(
        result_queues.len(),
        accepted,
        "result queues of refused submits: {result_queues:?}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_racing_submits_declare_no_result_queue_sqlite() {
    refused_racing_submits_declare_no_result_queue(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_racing_submits_declare_no_result_queue_postgres() {
    refused_racing_submits_declare_no_result_queue(Backend::Postgres).await;
}

/// Submits racing for a user's last task in flight, each with a new
/// `user_endpoint_config` for a multi-user endpoint: only the accepted submit's user
/// endpoint exists afterwards, as a row, a broker account and a queue; the refused ones
/// made none of the three.
async fn refused_racing_submits_make_no_user_endpoint(backend: Backend) {
    let service = start(
        backend,
        Quotas {
            max_tasks_in_flight: Some(3),
            ..Quotas::NONE
        },
    )
    .await;
    let view = BrokerView::new(&service);
    let (_, token) = service.user("alice@example.org").await;
    let (_, plain) = register_site(&service, "plain", false).await;
    let (_, mep) = register_site(&service, "mep", true).await;
    let function = Rest::new(&service, &token).register_function().await;
    submit(&service, &token, plain.endpoint_id, function, 2, json!({}))
        .await
        .task_ids();
    let (queues, accounts) = (view.queues().await, view.accounts().await);

    let bodies = (0..RACERS)
        .map(|n| json!({"user_endpoint_config": {"ACCOUNT_ID": n.to_string()}}))
        .collect();
    let accepted = race_submits(&service, &token, mep.endpoint_id, function, bodies).await;
    assert_eq!(accepted, 1);
    let ueps = service.store().ueps_of(mep.endpoint_id).await.unwrap();
    assert_eq!(ueps.len(), accepted, "user endpoint rows: {ueps:?}");
    let new_queues: Vec<String> = view.queues().await.difference(&queues).cloned().collect();
    assert_eq!(
        new_queues,
        [task_queue(ueps[0].endpoint_id)],
        "queues made by the racing submits"
    );
    let new_accounts: Vec<String> = view
        .accounts()
        .await
        .difference(&accounts)
        .cloned()
        .collect();
    let deployment = &service.running().state.settings.deployment;
    assert_eq!(
        new_accounts,
        [deployment.endpoint_account(ueps[0].endpoint_id)],
        "broker accounts made by the racing submits"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_racing_submits_make_no_user_endpoint_sqlite() {
    refused_racing_submits_make_no_user_endpoint(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_racing_submits_make_no_user_endpoint_postgres() {
    refused_racing_submits_make_no_user_endpoint(Backend::Postgres).await;
}
