//! The store's behaviour, run against both backends: a SQLite file and a fresh
//! PostgreSQL database on the real server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use gantry_store::{
    EndpointRegistration, NewFunction, NewSubmit, NewTask, Store, StoreError, StoredResult,
    TaskStatus, UepBinding, error_details_of,
};
use serde_json::{Map, json};
use uuid::Uuid;

/// A SQLite file in a fresh folder of its own; the PostgreSQL tests take a fresh
/// database from `gantry_testkit::fresh_postgres_database`.
fn sqlite_url() -> String {
    let dir = gantry_testkit::fresh_temp_dir("store");
    format!("sqlite://{}", dir.join("service.db").display())
}

fn registration(multi_user: bool) -> EndpointRegistration {
    EndpointRegistration {
        name: "site-mep".into(),
        display_name: Some("Site MEP ☃".into()),
        multi_user,
        public: false,
        high_assurance: false,
        allowed_functions: None,
        metadata: json!({"hostname": "login01"})
            .as_object()
            .expect("object")
            .clone(),
    }
}

async fn tokens_authenticate_until_revoked(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (alice, token) = store.add_user("alice").await.unwrap();
    let principal = store
        .authenticate(&token)
        .await
        .unwrap()
        .expect("a fresh token authenticates");
    assert_eq!(principal.identity, alice);
    assert!(store.authenticate("gtu_wrong").await.unwrap().is_none());
    assert!(matches!(
        store.add_user("alice").await,
        Err(StoreError::Conflict(_))
    ));

    let (_, second) = store.issue_user_token("alice").await.unwrap();
    assert!(store.revoke_token(&token).await.unwrap().is_some());
    assert!(
        store.revoke_token(&token).await.unwrap().is_none(),
        "revoking twice"
    );
    assert!(store.authenticate(&token).await.unwrap().is_none());
    assert!(store.authenticate(&second).await.unwrap().is_some());
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].1, 1, "one active token left");
    assert_eq!(store.revoke_tokens_of("alice").await.unwrap().tokens, 1);
    assert!(store.authenticate(&second).await.unwrap().is_none());

    let (client, secret) = store.add_endpoint_client("site").await.unwrap();
    assert!(
        store
            .verify_client(client.client_id, &secret)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .verify_client(client.client_id, "gts_nope")
            .await
            .unwrap()
            .is_none()
    );
    let live = store
        .issue_client_token(&client, "funcx_service", 60_000)
        .await
        .unwrap();
    let expired = store
        .issue_client_token(&client, "funcx_service", -1)
        .await
        .unwrap();
    let principal = store
        .authenticate(&live)
        .await
        .unwrap()
        .expect("live client token");
    assert_eq!(principal.scope, "funcx_service");
    assert!(
        store.authenticate(&expired).await.unwrap().is_none(),
        "expired"
    );
}

#[tokio::test]
async fn tokens_authenticate_until_revoked_sqlite() {
    tokens_authenticate_until_revoked(sqlite_url()).await;
}

#[tokio::test]
async fn tokens_authenticate_until_revoked_postgres() {
    tokens_authenticate_until_revoked(gantry_testkit::fresh_postgres_database().await).await;
}

async fn endpoints_belong_to_their_client_and_ueps_to_their_mep(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (client, _) = store.add_endpoint_client("site").await.unwrap();
    let (other, _) = store.add_endpoint_client("other").await.unwrap();
    let (alice, _) = store.add_user("alice").await.unwrap();
    let mep_id = Uuid::new_v4();
    let mep = store
        .register_endpoint(mep_id, client.client_id, &registration(true))
        .await
        .unwrap();
    assert!(mep.multi_user && !mep.is_online(gantry_store::now_ms()));
    assert_eq!(mep.display_name.as_deref(), Some("Site MEP ☃"));
    assert!(matches!(
        store
            .register_endpoint(mep_id, other.client_id, &registration(true))
            .await,
        Err(StoreError::Conflict(_))
    ));

    let binding = UepBinding {
        mep_id,
        user_identity_id: alice.identity_id,
        user_config: json!({"ACCOUNT_ID": "314159265"})
            .as_object()
            .unwrap()
            .clone(),
        user_runtime: json!({"python": {"version": "3.11.7"}}),
    };
    let uep_id = Uuid::new_v4();
    let uep = store.ensure_uep(uep_id, &binding).await.unwrap();
    assert_eq!(uep.uep.as_ref(), Some(&binding));
    assert_eq!(
        store.ensure_uep(uep_id, &binding).await.unwrap().uep,
        Some(binding.clone())
    );
    assert_eq!(store.ueps_of(mep_id).await.unwrap().len(), 1);
    assert!(
        matches!(
            store
                .register_endpoint(uep_id, client.client_id, &registration(false))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a UEP id cannot be taken over by registering it"
    );
    // Nor can an id held by another endpoint, or by another user's UEP, become one.
    let taken = Uuid::new_v4();
    store
        .register_endpoint(taken, other.client_id, &registration(false))
        .await
        .unwrap();
    assert!(
        matches!(
            store.ensure_uep(taken, &binding).await,
            Err(StoreError::Conflict(_))
        ),
        "a registered endpoint's id is not a UEP"
    );
    let someone_else = UepBinding {
        user_identity_id: other.client_id,
        ..binding.clone()
    };
    assert!(
        matches!(
            store.ensure_uep(uep_id, &someone_else).await,
            Err(StoreError::Conflict(_))
        ),
        "alice's UEP is not bob's"
    );
    assert_eq!(
        store.endpoint(uep_id).await.unwrap().unwrap().uep,
        Some(binding.clone())
    );

    assert!(store.claim_start_request(uep_id, 60_000).await.unwrap());
    assert!(
        !store.claim_start_request(uep_id, 60_000).await.unwrap(),
        "throttled"
    );

    assert!(
        store
            .record_heartbeat(uep_id, Some(30.0), &Map::new())
            .await
            .unwrap()
    );
    let online = store.endpoint(uep_id).await.unwrap().unwrap();
    assert!(online.is_online(gantry_store::now_ms()));
    assert!(!online.is_online(gantry_store::now_ms() + 61_000), "stale");
    // A reported start failure: not online, and the next submit may ask again.
    let mut failed = Map::new();
    failed.insert("error".into(), "no such local user".into());
    assert!(
        !store.claim_start_request(uep_id, 60_000).await.unwrap(),
        "throttled before the failure"
    );
    store
        .record_heartbeat(uep_id, Some(30.0), &failed)
        .await
        .unwrap();
    let failed = store.endpoint(uep_id).await.unwrap().unwrap();
    assert_eq!(failed.start_error(), Some("no such local user"));
    assert!(!failed.is_online(gantry_store::now_ms()));
    assert!(
        store.claim_start_request(uep_id, 60_000).await.unwrap(),
        "a failed start lifts the throttle"
    );

    store
        .record_heartbeat(uep_id, Some(0.0), &Map::new())
        .await
        .unwrap();
    assert!(
        !store
            .endpoint(uep_id)
            .await
            .unwrap()
            .unwrap()
            .is_online(gantry_store::now_ms())
    );

    assert_eq!(
        store
            .delete_endpoint(mep_id, "ENDPOINT_DELETED", "gone")
            .await
            .unwrap()
            .0
            .len(),
        2
    );
    assert!(store.endpoint(uep_id).await.unwrap().is_none());
}

#[tokio::test]
async fn endpoints_belong_to_their_client_and_ueps_to_their_mep_sqlite() {
    endpoints_belong_to_their_client_and_ueps_to_their_mep(sqlite_url()).await;
}

#[tokio::test]
async fn endpoints_belong_to_their_client_and_ueps_to_their_mep_postgres() {
    endpoints_belong_to_their_client_and_ueps_to_their_mep(
        gantry_testkit::fresh_postgres_database().await,
    )
    .await;
}

async fn submits_results_and_failures_persist_across_reconnects(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (alice, _) = store.add_user("alice").await.unwrap();
    let (bob, _) = store.add_user("bob").await.unwrap();
    let function_id = Uuid::new_v4();
    store
        .insert_function(&NewFunction {
            function_id,
            owner_identity_id: alice.identity_id,
            function_name: "add".into(),
            function_code: "2\n01".into(),
            description: None,
            public: false,
            group_id: None,
            meta: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .function(function_id)
            .await
            .unwrap()
            .unwrap()
            .function_name,
        "add"
    );

    let endpoint_id = Uuid::new_v4();
    let group = Uuid::new_v4();
    // Task 8 is large and incompressible, as dill-serialized arguments are: 2 MB
    // of pseudo-random hex (an index over the buffer would refuse it on PostgreSQL).
    let large: String = (0..65_536u64)
        .map(|i| {
            format!(
                "{:032x}",
                u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            )
        })
        .collect();
    let tasks: Vec<NewTask> = (0..450)
        .map(|i| NewTask {
            task_id: Uuid::new_v4(),
            function_id,
            payload: if i == 8 {
                large.clone()
            } else {
                format!("payload-{i}-é")
            },
        })
        .collect();
    let spec = json!({"num_nodes": 2});
    let batch = store
        .insert_submit(&NewSubmit {
            owner: alice.identity_id,
            task_group_id: group,
            endpoint_id,
            submitted_endpoint_id: endpoint_id,
            tasks: &tasks,
            resource_specification: Some(&spec),
            result_serializers: None,
            result_queue: true,
            uep: None,
        })
        .await
        .unwrap();
    assert!(batch.task_group_created);
    assert!(
        matches!(
            store
                .insert_submit(&NewSubmit {
                    owner: bob.identity_id,
                    task_group_id: group,
                    endpoint_id,
                    submitted_endpoint_id: endpoint_id,
                    tasks: &tasks[..0],
                    resource_specification: None,
                    result_serializers: None,
                    result_queue: true,
                    uep: None,
                })
                .await,
            Err(StoreError::NotFound(_))
        ),
        "bob cannot join alice's task group"
    );

    // Reconnect, as after a restart: everything is still there, in order.
    drop(store);
    let store = Store::connect(&url).await.unwrap();
    let stored = store.tasks_of_group(group).await.unwrap();
    let ids: Vec<Uuid> = stored.iter().map(|t| t.task_id).collect();
    assert_eq!(
        ids,
        tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        "order"
    );
    assert_eq!(stored[7].task_buffer.as_deref(), Some("payload-7-é"));
    assert_eq!(stored[8].task_buffer.as_deref(), Some(large.as_str()));
    assert!(stored.iter().all(|t| t.buffer_is_payload));
    assert_eq!(stored[0].resource_specification, Some(spec.clone()));
    assert_eq!(store.unsent_tasks(i64::MAX, 1000).await.unwrap().len(), 450);
    let first_100: Vec<Uuid> = store
        .unsent_tasks(i64::MAX, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(first_100, ids[..100], "oldest first, bounded");
    assert!(
        store.unsent_tasks(0, 1000).await.unwrap().is_empty(),
        "too young"
    );
    store.mark_enqueued(&ids[..400]).await.unwrap();
    assert_eq!(store.unsent_tasks(i64::MAX, 1000).await.unwrap().len(), 50);

    let ok = StoredResult {
        data: "11\n42".into(),
        error: None,
        details: Some(json!({"os": "Linux"}).as_object().unwrap().clone()),
        task_statuses: Some(
            json!([{"timestamp": 1, "state": "execution-start", "actor": "worker"}]),
        ),
    };
    assert!(
        store
            .store_result(ids[0], Uuid::new_v4(), &ok)
            .await
            .unwrap()
            .is_none(),
        "a result from the wrong endpoint is not stored"
    );
    assert_eq!(
        store.task(ids[0]).await.unwrap().unwrap().status,
        TaskStatus::WaitingForEp
    );
    let done = store
        .store_result(ids[0], endpoint_id, &ok)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.status, done.result.as_deref()),
        (TaskStatus::Success, Some("11\n42"))
    );
    assert!(done.completed_at.is_some());

    store.mark_running(endpoint_id, &ids[1..2]).await.unwrap();
    assert_eq!(
        store.task(ids[1]).await.unwrap().unwrap().status,
        TaskStatus::Running
    );

    let failed = store
        .fail_pending_tasks(endpoint_id, "EndpointStartFailed", "no such account")
        .await
        .unwrap();
    assert_eq!(failed.len(), 449);
    assert!(
        failed
            .iter()
            .all(|t| t.status == TaskStatus::Failed && t.task_buffer.is_none())
    );
    assert_eq!(
        error_details_of(&failed[0]),
        Some(("EndpointStartFailed".into(), "no such account".into()))
    );
    assert!(store.unsent_tasks(i64::MAX, 1000).await.unwrap().is_empty());
    // The service's own failures wait to be forwarded until marked.
    let unforwarded = store.unforwarded_failures(i64::MAX, 1000).await.unwrap();
    assert_eq!(unforwarded.len(), 449);
    assert!(
        store
            .unforwarded_failures(0, 1000)
            .await
            .unwrap()
            .is_empty()
    );
    let forwarded: Vec<Uuid> = unforwarded[..400].iter().map(|t| t.task_id).collect();
    store.mark_forwarded(&forwarded).await.unwrap();
    assert_eq!(
        store
            .unforwarded_failures(i64::MAX, 1000)
            .await
            .unwrap()
            .len(),
        49
    );
    assert!(
        store
            .fail_unfinished_tasks(&ids[..10], "ENDPOINT_DELETED", "gone")
            .await
            .unwrap()
            .is_empty(),
        "finished tasks stay as they are"
    );
    // A late result does not overwrite a finished task.
    store.store_result(ids[1], endpoint_id, &ok).await.unwrap();
    assert_eq!(
        store.task(ids[1]).await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
    assert_eq!(
        store.task(ids[0]).await.unwrap().unwrap().status,
        TaskStatus::Success
    );
}

#[tokio::test]
async fn submits_results_and_failures_persist_across_reconnects_sqlite() {
    submits_results_and_failures_persist_across_reconnects(sqlite_url()).await;
}

#[tokio::test]
async fn submits_results_and_failures_persist_across_reconnects_postgres() {
    submits_results_and_failures_persist_across_reconnects(
        gantry_testkit::fresh_postgres_database().await,
    )
    .await;
}

async fn settings_initialise_once(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let first = store
        .setting_or_init("broker_secret", || "a".into())
        .await
        .unwrap();
    let second = store
        .setting_or_init("broker_secret", || "b".into())
        .await
        .unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("a", "a"));
}

#[tokio::test]
async fn settings_initialise_once_sqlite() {
    settings_initialise_once(sqlite_url()).await;
}

#[tokio::test]
async fn settings_initialise_once_postgres() {
    settings_initialise_once(gantry_testkit::fresh_postgres_database().await).await;
}

/// A SQLite file is created wherever it is asked for, also under a path that happens
/// to contain the word "memory" (only `sqlite::memory:` is an in-memory database).
#[tokio::test]
async fn a_sqlite_file_is_created_whatever_its_path_says() {
    let dir = gantry_testkit::fresh_temp_dir("memory-of-things");
    let path = dir.join("service.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.add_user("alice").await.unwrap();
    assert!(path.exists(), "{} was created", path.display());
    let in_memory = Store::connect("sqlite::memory:").await.unwrap();
    in_memory.add_user("alice").await.unwrap();
}

/// A task's result goes to its group's queue once the group has one: from the submit
/// that asked for it on, earlier tasks of the group included, and later submits into
/// the group too, whether they ask again or not.
async fn results_go_to_a_group_once_it_has_a_queue(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (alice, _) = store.add_user("alice").await.unwrap();
    let group = Uuid::new_v4();
    let endpoint_id = Uuid::new_v4();
    let submit = |result_queue: bool, group: Uuid| {
        let store = store.clone();
        let task = NewTask {
            task_id: Uuid::new_v4(),
            function_id: Uuid::new_v4(),
            payload: "payload".into(),
        };
        async move {
            store
                .insert_submit(&NewSubmit {
                    owner: alice.identity_id,
                    task_group_id: group,
                    endpoint_id,
                    submitted_endpoint_id: endpoint_id,
                    tasks: std::slice::from_ref(&task),
                    resource_specification: None,
                    result_serializers: None,
                    result_queue,
                    uep: None,
                })
                .await
                .unwrap();
            task.task_id
        }
    };
    let forwarded = |task: Uuid| {
        let store = store.clone();
        async move { store.task(task).await.unwrap().unwrap().result_queue }
    };
    let first = submit(false, group).await;
    let second = submit(false, group).await;
    assert!(!forwarded(first).await && !forwarded(second).await);
    let third = submit(true, group).await;
    let fourth = submit(false, group).await;
    for task in [first, second, third, fourth] {
        assert!(forwarded(task).await, "{task}");
    }
    let other = submit(false, Uuid::new_v4()).await;
    assert!(!forwarded(other).await);
}

#[tokio::test]
async fn results_go_to_a_group_once_it_has_a_queue_sqlite() {
    results_go_to_a_group_once_it_has_a_queue(sqlite_url()).await;
}

#[tokio::test]
async fn results_go_to_a_group_once_it_has_a_queue_postgres() {
    results_go_to_a_group_once_it_has_a_queue(gantry_testkit::fresh_postgres_database().await)
        .await;
}

/// A submit to a multi-user endpoint makes its user endpoint in the transaction that
/// stores its tasks: one refused by a limit leaves no user endpoint, and one to an
/// endpoint locked meanwhile (a revocation) is refused and stores nothing.
async fn a_refused_submit_writes_nothing(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (client, _) = store.add_endpoint_client("site").await.unwrap();
    let (alice, _) = store.add_user("alice").await.unwrap();
    let mep_id = Uuid::new_v4();
    store
        .register_endpoint(mep_id, client.client_id, &registration(true))
        .await
        .unwrap();
    let binding = |account: &str| UepBinding {
        mep_id,
        user_identity_id: alice.identity_id,
        user_config: json!({"ACCOUNT_ID": account}).as_object().unwrap().clone(),
        user_runtime: json!({}),
    };
    let task = || NewTask {
        task_id: Uuid::new_v4(),
        function_id: Uuid::new_v4(),
        payload: "payload".into(),
    };
    let submit = |uep_id: Uuid, binding: UepBinding, limits: gantry_store::SubmitLimits| {
        let store = store.clone();
        let task = task();
        async move {
            store
                .insert_submit_within(
                    &NewSubmit {
                        owner: alice.identity_id,
                        task_group_id: Uuid::new_v4(),
                        endpoint_id: uep_id,
                        submitted_endpoint_id: mep_id,
                        tasks: std::slice::from_ref(&task),
                        resource_specification: None,
                        result_serializers: None,
                        result_queue: true,
                        uep: Some(&binding),
                    },
                    &limits,
                )
                .await
        }
    };
    let one_task = gantry_store::SubmitLimits {
        max_tasks_in_flight: Some(1),
        max_user_endpoint_configs: Some(1),
        ..gantry_store::SubmitLimits::NONE
    };

    let first = Uuid::new_v4();
    let batch = submit(first, binding("1"), one_task).await.unwrap();
    let uep = batch.uep.expect("the submit made its user endpoint");
    assert_eq!((uep.endpoint_id, uep.uep), (first, Some(binding("1"))));
    // Past the tasks in flight (the user endpoint made, then undone), and past the
    // configurations: no user endpoint either way.
    let second = Uuid::new_v4();
    let unlimited_configs = gantry_store::SubmitLimits {
        max_user_endpoint_configs: None,
        ..one_task
    };
    let unlimited_tasks = gantry_store::SubmitLimits {
        max_tasks_in_flight: None,
        ..one_task
    };
    for limits in [unlimited_configs, unlimited_tasks] {
        assert!(matches!(
            submit(second, binding("2"), limits).await,
            Err(StoreError::LimitReached(_))
        ));
        assert!(store.endpoint(second).await.unwrap().is_none());
    }
    assert_eq!(store.unfinished_task_count(first).await.unwrap(), 1);

    // Locked: refused, whichever of the two is locked.
    store.lock_endpoint(first).await.unwrap();
    assert!(matches!(
        submit(first, binding("1"), gantry_store::SubmitLimits::NONE).await,
        Err(StoreError::EndpointLocked(id)) if id == first
    ));
    store.lock_endpoint(mep_id).await.unwrap();
    let third = Uuid::new_v4();
    assert!(matches!(
        submit(third, binding("3"), gantry_store::SubmitLimits::NONE).await,
        Err(StoreError::EndpointLocked(id)) if id == mep_id
    ));
    assert!(store.endpoint(third).await.unwrap().is_none());
    assert_eq!(store.unfinished_task_count(first).await.unwrap(), 1);
}

#[tokio::test]
async fn a_refused_submit_writes_nothing_sqlite() {
    a_refused_submit_writes_nothing(sqlite_url()).await;
}

#[tokio::test]
async fn a_refused_submit_writes_nothing_postgres() {
    a_refused_submit_writes_nothing(gantry_testkit::fresh_postgres_database().await).await;
}

/// The salt an endpoint's broker account should have now: none once the endpoint is
/// deleted or the client that registered it (the MEP's, for a user endpoint) revoked.
async fn endpoint_account_salts_end_with_their_client(url: String) {
    let store = Store::connect(&url).await.unwrap();
    let (client, _) = store.add_endpoint_client("site").await.unwrap();
    let (alice, _) = store.add_user("alice").await.unwrap();
    let mep_id = Uuid::new_v4();
    let mep = store
        .register_endpoint(mep_id, client.client_id, &registration(true))
        .await
        .unwrap();
    let uep_id = Uuid::new_v4();
    let uep = store
        .ensure_uep(
            uep_id,
            &UepBinding {
                mep_id,
                user_identity_id: alice.identity_id,
                user_config: Map::new(),
                user_runtime: json!({}),
            },
        )
        .await
        .unwrap();
    let salt = |id: Uuid| {
        let store = store.clone();
        async move { store.endpoint_account_salt(id).await.unwrap() }
    };
    assert_eq!(salt(mep_id).await, Some(mep.broker_salt));
    assert_eq!(salt(uep_id).await, Some(uep.broker_salt));
    assert_eq!(salt(Uuid::new_v4()).await, None);
    // A lock alone keeps the account: the endpoint may finish its tasks.
    store.lock_endpoint(mep_id).await.unwrap();
    assert!(salt(mep_id).await.is_some());
    store.revoke_client("site").await.unwrap();
    assert_eq!(salt(mep_id).await, None);
    assert_eq!(salt(uep_id).await, None);
}

#[tokio::test]
async fn endpoint_account_salts_end_with_their_client_sqlite() {
    endpoint_account_salts_end_with_their_client(sqlite_url()).await;
}

#[tokio::test]
async fn endpoint_account_salts_end_with_their_client_postgres() {
    endpoint_account_salts_end_with_their_client(gantry_testkit::fresh_postgres_database().await)
        .await;
}
