//! Revoking and deleting, through `gantry-service admin` (the shipped binary), the real
//! service, RabbitMQ and both databases: a revoked client's secret, tokens and broker
//! logins stop at once; a user's revoked token takes the user's result login with it; a
//! deleted endpoint id registered again gets a new password; and two deployments on one
//! RabbitMQ neither share a virtual host nor take over each other's accounts.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{Backend, Rest, TestService, registration, wait_until};
use gantry_broker::lapin;
use gantry_service::accounts::{AccountHolder, ProvisionError};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// The client-credentials grant, as the SDK and the endpoint make it.
async fn grant(service: &TestService, client_id: &str, secret: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v2/oauth2/token", service.url()))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "scope",
                "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all",
            ),
        ])
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn connects(url: &str) -> bool {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .is_ok()
}

/// Waits until an open connection is closed by the broker.
async fn closed_by_the_broker(connection: &lapin::Connection) {
    wait_until("the broker closes the connection", || async {
        !connection.status().connected()
    })
    .await;
}

async fn register(service: &TestService, token: &str, id: Option<Uuid>) -> (StatusCode, Value) {
    let mut body = serde_json::to_value(registration("site", false)).unwrap();
    if let Some(id) = id {
        body["endpoint_id"] = json!(id);
    }
    Rest::new(service, token).post("/v3/endpoints", body).await
}

async fn revoking_a_client_ends_its_secret_tokens_and_broker_logins(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let client = service.admin_ok(&["add-endpoint-client", "site-a"]);
    let (client_id, secret) = (
        client["client_id"].as_str().unwrap().to_owned(),
        client["client_secret"].as_str().unwrap().to_owned(),
    );
    let (status, tokens) = grant(&service, &client_id, &secret).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, registered) = register(&service, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    let endpoint: Uuid = registered["endpoint_id"].as_str().unwrap().parse().unwrap();
    let url = registered["task_queue_info"]["connection_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let open = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("the endpoint's broker login works");

    // A user's task waits for the endpoint.
    let (_, user_token) = service.user("alice").await;
    let alice = Rest::new(&service, &user_token);
    let function = alice.register_function().await;
    let waiting = alice.submit_one(endpoint, function, json!({})).await;

    let listed = service.admin_ok(&["list-clients"]);
    let entry = |listed: &Value| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == client_id.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(entry(&listed)["revoked"], false, "{listed}");
    assert_eq!(entry(&listed)["kind"], "endpoint", "{listed}");
    assert_eq!(entry(&listed)["endpoints"], 1, "{listed}");
    assert_eq!(entry(&listed)["active_tokens"], 1, "{listed}");

    let revoked = service.admin_ok(&["revoke-client", "site-a"]);
    assert_eq!(revoked["revoked_tokens"], 1, "{revoked}");
    assert_eq!(revoked["failed_tasks"], 1, "{revoked}");
    assert_eq!(revoked["locked_endpoints"], json!([endpoint]), "{revoked}");

    // The secret mints nothing, the token opens nothing, the broker login is gone and
    // its open connection was closed.
    let (status, answer) = grant(&service, &client_id, &secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, answer) = register(&service, &token, Some(endpoint)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    closed_by_the_broker(&open).await;
    assert!(!connects(&url).await, "the revoked endpoint still logs in");
    // The waiting task failed, saying why, and the endpoint takes no more.
    let failed = alice.wait_finished(waiting).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["exception"].as_str().unwrap().contains("revoked"),
        "{failed}"
    );
    let (status, answer) = alice
        .post(
            &format!("/v3/endpoints/{endpoint}/submit"),
            json!({"tasks": {function.to_string(): ["x"]}}),
        )
        .await;
    assert!(status.is_client_error(), "{status} {answer}");
    let listed = service.admin_ok(&["list-clients"]);
    assert_eq!(entry(&listed)["revoked"], true, "{listed}");
    assert_eq!(entry(&listed)["active_tokens"], 0, "{listed}");
    // Its queue, with what waited on it, is gone too.
    assert!(
        !queue_exists(&service, &format!("{endpoint}.tasks")).await,
        "the revoked endpoint's queue is left"
    );
    // A token minted while the revocation committed (the grant checked the client just
    // before) is refused all the same.
    let client_record = service.store().client(&client_id).await.unwrap().unwrap();
    let late = service
        .store()
        .issue_client_token(&client_record, "funcx_service", 3_600_000)
        .await
        .unwrap();
    let (status, answer) = Rest::new(&service, &late).get("/v2/endpoints").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // And a registration that was authenticated before the revocation committed is
    // refused where it writes.
    let owner = client_record.client_id;
    let refused = service
        .store()
        .register_endpoint(
            Uuid::new_v4(),
            owner,
            &gantry_store::EndpointRegistration {
                name: "late".into(),
                display_name: None,
                multi_user: false,
                public: true,
                high_assurance: false,
                allowed_functions: None,
                metadata: Default::default(),
            },
        )
        .await;
    assert!(
        matches!(refused, Err(gantry_store::StoreError::Revoked(_))),
        "{refused:?}"
    );
    // Again: safe, and it says the same.
    let again = service.admin_ok(&["revoke-client", &client_id]);
    assert_eq!(again["locked_endpoints"], json!([endpoint]), "{again}");
    let (ok, answer) = service.admin(&["revoke-client", "no-such-client"]);
    assert!(
        !ok && answer.to_string().contains("no-such-client"),
        "{answer}"
    );
    service.stop().await;
}

#[tokio::test]
async fn revoking_a_client_ends_its_secret_tokens_and_broker_logins_sqlite() {
    revoking_a_client_ends_its_secret_tokens_and_broker_logins(Backend::Sqlite).await;
}

#[tokio::test]
async fn revoking_a_client_ends_its_secret_tokens_and_broker_logins_postgres() {
    revoking_a_client_ends_its_secret_tokens_and_broker_logins(Backend::Postgres).await;
}

/// Whether a queue of the test's vhost exists, asked of the management API.
async fn queue_exists(service: &TestService, queue: &str) -> bool {
    let admin = url::Url::parse(&service.config.amqp_admin_url).unwrap();
    let base = format!(
        "{}://{}:{}",
        admin.scheme(),
        admin.host_str().unwrap(),
        admin.port_or_known_default().unwrap()
    );
    let response = reqwest::Client::new()
        .get(format!("{base}/api/queues/{}/{queue}", service.vhost))
        .basic_auth(admin.username(), admin.password())
        .send()
        .await
        .unwrap();
    match response.status() {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("the management API answered {other}"),
    }
}

async fn result_url(service: &TestService, token: &str) -> String {
    let (status, answer) = Rest::new(service, token)
        .get("/v2/get_amqp_result_connection_url")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["connection_url"].as_str().unwrap().to_owned()
}

async fn a_revoked_users_result_login_stops(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, token) = service.user("alice").await;
    let before = result_url(&service, &token).await;
    let open = lapin::Connection::connect(&before, lapin::ConnectionProperties::default())
        .await
        .expect("the result login works");
    let revoked = service.admin_ok(&["revoke-token", "--user", "alice"]);
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    closed_by_the_broker(&open).await;
    assert!(!connects(&before).await, "the revoked user's login works");
    // A new token gets a login with a new password, which works.
    let issued = service.admin_ok(&["issue-token", "alice"]);
    let after = result_url(&service, issued["token"].as_str().unwrap()).await;
    assert_ne!(before, after);
    assert!(connects(&after).await);
    // Revoking that one token also changes the password.
    service.admin_ok(&["revoke-token", issued["token"].as_str().unwrap()]);
    assert!(!connects(&after).await, "the login outlived its token");
    service.stop().await;
}

#[tokio::test]
async fn a_revoked_users_result_login_stops_sqlite() {
    a_revoked_users_result_login_stops(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_revoked_users_result_login_stops_postgres() {
    a_revoked_users_result_login_stops(Backend::Postgres).await;
}

async fn a_deleted_endpoint_id_registered_again_gets_a_new_password(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, first_client) = service.endpoint_client("site-1").await;
    let (status, registered) = register(&service, &first_client, None).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    let endpoint: Uuid = registered["endpoint_id"].as_str().unwrap().parse().unwrap();
    let old_url = registered["task_queue_info"]["connection_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(connects(&old_url).await);

    let deleted = service.admin_ok(&["delete-endpoint", &endpoint.to_string()]);
    assert_eq!(deleted["removed"], json!([endpoint]), "{deleted}");
    assert!(
        !connects(&old_url).await,
        "a deleted endpoint's login works"
    );
    assert!(service.store().endpoint(endpoint).await.unwrap().is_none());

    // Another client takes the id: a new password, and the old one stays dead.
    let (_, second_client) = service.endpoint_client("site-2").await;
    let (status, again) = register(&service, &second_client, Some(endpoint)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let new_url = again["task_queue_info"]["connection_url"].as_str().unwrap();
    assert_ne!(new_url, old_url);
    assert!(connects(new_url).await);
    assert!(!connects(&old_url).await);
    let (ok, answer) = service.admin(&["delete-endpoint", &Uuid::new_v4().to_string()]);
    assert!(
        !ok && answer.to_string().contains("no endpoint"),
        "{answer}"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_deleted_endpoint_id_registered_again_gets_a_new_password_sqlite() {
    a_deleted_endpoint_id_registered_again_gets_a_new_password(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_deleted_endpoint_id_registered_again_gets_a_new_password_postgres() {
    a_deleted_endpoint_id_registered_again_gets_a_new_password(Backend::Postgres).await;
}

/// The hostile finding: a client of deployment Y registering X's multi-user endpoint id
/// reset X's account password and read X's start commands. Now Y cannot even share X's
/// virtual host, and in its own it gets an account of its own name.
async fn deployments_keep_to_their_own_accounts(backend: Backend) {
    let x = TestService::start(backend, false).await;
    let (_, x_client) = x.endpoint_client("site-x").await;
    let mut body = serde_json::to_value(registration("mep", true)).unwrap();
    body["public"] = json!(false);
    let (status, x_mep) = Rest::new(&x, &x_client)
        .post("/v3/endpoints", body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{x_mep}");
    let x_mep_id = x_mep["endpoint_id"].as_str().unwrap().to_owned();
    let x_url = x_mep["command_queue_info"]["connection_url"]
        .as_str()
        .unwrap()
        .to_owned();

    // Y, a deployment with its own database, on X's virtual host: refused.
    let refused = gantry_service::server::start({
        let mut config = x.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = format!(
            "sqlite://{}",
            gantry_testkit::fresh_temp_dir("deployment-y")
                .join("service.db")
                .display()
        );
        config
    })
    .await;
    let message = match refused {
        Ok(_) => panic!("a second deployment started on another's virtual host"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        message.contains(&x.vhost) && message.contains("another Gantry deployment"),
        "{message}"
    );

    // Y on its own virtual host registers X's MEP id.
    let y = TestService::start(backend, false).await;
    let (_, y_client) = y.endpoint_client("site-y").await;
    body["endpoint_id"] = json!(x_mep_id);
    let (status, y_mep) = Rest::new(&y, &y_client).post("/v3/endpoints", body).await;
    assert_eq!(status, StatusCode::OK, "{y_mep}");
    let y_url = y_mep["command_queue_info"]["connection_url"]
        .as_str()
        .unwrap();
    let account = |url: &str| url::Url::parse(url).unwrap().username().to_owned();
    assert_ne!(account(&x_url), account(y_url));
    // X's password is untouched, and Y's login cannot reach X's virtual host.
    assert!(connects(&x_url).await, "X's MEP login was taken over");
    let mut into_x = url::Url::parse(y_url).unwrap();
    into_x.set_path(&format!("/{}", x.vhost));
    assert!(
        !connects(into_x.as_str()).await,
        "Y's login reaches X's vhost"
    );
    y.stop().await;
    x.stop().await;
}

#[tokio::test]
async fn deployments_keep_to_their_own_accounts_sqlite() {
    deployments_keep_to_their_own_accounts(Backend::Sqlite).await;
}

#[tokio::test]
async fn deployments_keep_to_their_own_accounts_postgres() {
    deployments_keep_to_their_own_accounts(Backend::Postgres).await;
}

/// A revoked endpoint client's token could have fetched its endpoints' broker logins
/// (a registration hands them out): those get new passwords; the real endpoint
/// registers again with its secret and gets them.
async fn revoking_an_endpoint_token_changes_its_endpoints_passwords(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let client = service.admin_ok(&["add-endpoint-client", "site-t"]);
    let (client_id, secret) = (
        client["client_id"].as_str().unwrap().to_owned(),
        client["client_secret"].as_str().unwrap().to_owned(),
    );
    let token = |tokens: &Value| tokens["access_token"].as_str().unwrap().to_owned();
    let stolen = token(&grant(&service, &client_id, &secret).await.1);
    let (status, registered) = register(&service, &stolen, None).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    let endpoint: Uuid = registered["endpoint_id"].as_str().unwrap().parse().unwrap();
    let url = |r: &Value| {
        r["task_queue_info"]["connection_url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old = url(&registered);
    assert!(connects(&old).await);
    let revoked = service.admin_ok(&["revoke-token", &stolen]);
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    assert!(
        !connects(&old).await,
        "the stolen token's broker login still works"
    );
    let fresh = token(&grant(&service, &client_id, &secret).await.1);
    let (status, again) = register(&service, &fresh, Some(endpoint)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_ne!(url(&again), old);
    assert!(connects(&url(&again)).await);

    // A user client's tokens go with `revoke-token --user <its name>` too.
    service.user("erin").await;
    let user_client = service.admin_ok(&["add-user-client", "erin"]);
    let (status, tokens) = grant(
        &service,
        user_client["client_id"].as_str().unwrap(),
        user_client["client_secret"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let erin = token(&tokens);
    assert_eq!(result_url_status(&service, &erin).await, StatusCode::OK);
    let revoked = service.admin_ok(&[
        "revoke-token",
        "--user",
        user_client["name"].as_str().unwrap(),
    ]);
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    assert_eq!(
        result_url_status(&service, &erin).await,
        StatusCode::UNAUTHORIZED
    );
    service.stop().await;
}

async fn result_url_status(service: &TestService, token: &str) -> StatusCode {
    Rest::new(service, token)
        .get("/v2/get_amqp_result_connection_url")
        .await
        .0
}

#[tokio::test]
async fn revoking_an_endpoint_token_changes_its_endpoints_passwords_sqlite() {
    revoking_an_endpoint_token_changes_its_endpoints_passwords(Backend::Sqlite).await;
}

#[tokio::test]
async fn revoking_an_endpoint_token_changes_its_endpoints_passwords_postgres() {
    revoking_an_endpoint_token_changes_its_endpoints_passwords(Backend::Postgres).await;
}

/// Accounts an older Gantry made without a deployment id had passwords no revocation
/// could change: the service deletes the ones on its vhost when it starts. And the
/// admin commands refuse a vhost that is not the deployment's, rather than cleaning up
/// nothing and saying it is done.
#[tokio::test]
async fn unscoped_accounts_go_at_start_and_admin_checks_its_vhost() {
    let vhost = gantry_testkit::fresh_vhost_name();
    let management =
        gantry_broker_accounts::management::Management::new(&gantry_testkit::amqp_admin_url())
            .unwrap();
    management.ensure_vhost(&vhost).await.unwrap();
    let legacy = format!("gantry-ep-{}", Uuid::new_v4());
    let admin_url = url::Url::parse(&gantry_testkit::amqp_admin_url()).unwrap();
    let http = reqwest::Client::new();
    let api = format!(
        "http://{}:{}/api",
        admin_url.host_str().unwrap(),
        admin_url.port_or_known_default().unwrap()
    );
    let auth = (
        admin_url.username().to_owned(),
        admin_url.password().map(str::to_owned),
    );
    for (path, body) in [
        (
            format!("{api}/users/{legacy}"),
            json!({"password": "old", "tags": ""}),
        ),
        (
            format!("{api}/permissions/{vhost}/{legacy}"),
            json!({"configure": "^$", "write": "^$", "read": ".*"}),
        ),
    ] {
        let response = http
            .put(path)
            .basic_auth(&auth.0, auth.1.as_deref())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }
    let url = format!(
        "amqp://{legacy}:old@{}/{vhost}",
        gantry_testkit::amqp_host()
    );
    assert!(connects(&url).await);
    let service = TestService::start_with(Backend::Sqlite, false, |config| {
        config.amqp_url = format!("amqp://guest:guest@{}/{vhost}", gantry_testkit::amqp_host());
    })
    .await;
    assert!(!management.account_exists(&legacy).await.unwrap());
    assert!(!connects(&url).await);

    let output = Command::new(gantry_testkit::workspace_binary(
        "gantry-service",
        "gantry-service",
    ))
    .args(["admin", "revoke-token", "--user", "nobody-at-all"])
    .env("GANTRY_DATABASE_URL", &service.config.database_url)
    .env(
        "GANTRY_AMQP_URL",
        format!(
            "amqp://guest:guest@{}/not-this-one",
            gantry_testkit::amqp_host()
        ),
    )
    .output()
    .unwrap();
    // Refused (the broker's vhost is checked first, so nothing changed).
    assert!(!output.status.success());
    service.user("frank").await;
    let output = Command::new(gantry_testkit::workspace_binary(
        "gantry-service",
        "gantry-service",
    ))
    .args(["admin", "revoke-token", "--user", "frank"])
    .env("GANTRY_DATABASE_URL", &service.config.database_url)
    .env(
        "GANTRY_AMQP_URL",
        format!(
            "amqp://guest:guest@{}/not-this-one",
            gantry_testkit::amqp_host()
        ),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not-this-one") && stderr.contains("--amqp-url"),
        "{stderr}"
    );
    // Nothing was revoked: frank's token still works.
    assert_eq!(
        service.store().list_users().await.unwrap()[0].1,
        1,
        "a refused command revoked frank's token"
    );
    let mut service = service;
    service.vhost = vhost;
    service.stop().await;
}

/// A request that read a broker password's salt just before an administrator's
/// revocation, and sets the account up only after the administrator's command deleted
/// it, must not bring the revoked password back. The race is made step by step: the
/// test reads the salts as such a request would, runs the revocation, then lets the
/// service set the accounts up with what it read.
async fn provisioning_that_raced_a_revocation_restores_no_login(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let state = &service.running().state;

    // A user's result login, revoked with the user's tokens.
    let (alice, _) = service.user("alice").await;
    let stale = service
        .store()
        .identity(alice)
        .await
        .unwrap()
        .unwrap()
        .broker_salt;
    let account = state.settings.deployment.user_account(alice);
    let old_url = state.client_amqp_url(&account, &stale);
    service.admin_ok(&["revoke-token", "--user", "alice"]);
    let outcome = state
        .provision_account(AccountHolder::User(alice), &stale)
        .await;
    assert!(
        matches!(outcome, Err(ProvisionError::Revoked { .. })),
        "the service set up a login with a revoked password: {outcome:?}"
    );
    assert!(
        !connects(&old_url).await,
        "the revoked result login works again"
    );

    // An endpoint's login, revoked with its client: read before the revocation (the
    // old password), and read after it by a request that authenticated before.
    let (_, client_token) = service.endpoint_client("site-a").await;
    let (status, registered) = register(&service, &client_token, None).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    let endpoint: Uuid = registered["endpoint_id"].as_str().unwrap().parse().unwrap();
    let before = service.store().endpoint(endpoint).await.unwrap().unwrap();
    service.admin_ok(&["revoke-client", "site-a"]);
    let after = service.store().endpoint(endpoint).await.unwrap().unwrap();
    assert_ne!(before.broker_salt, after.broker_salt);
    let endpoint_account = state.settings.deployment.endpoint_account(endpoint);
    for record in [&before, &after] {
        state.forget_account(&endpoint_account);
        let outcome = gantry_service::queues::provision_endpoint(state, record).await;
        assert!(
            matches!(outcome, Err(ProvisionError::Revoked { .. })),
            "the service set up the login of a revoked client's endpoint: {outcome:?}"
        );
        let url = state.client_amqp_url(&endpoint_account, &record.broker_salt);
        assert!(
            !connects(&url).await,
            "the revoked client's endpoint logs in"
        );
    }
    service.stop().await;
}

#[tokio::test]
async fn provisioning_that_raced_a_revocation_restores_no_login_sqlite() {
    provisioning_that_raced_a_revocation_restores_no_login(Backend::Sqlite).await;
}

#[tokio::test]
async fn provisioning_that_raced_a_revocation_restores_no_login_postgres() {
    provisioning_that_raced_a_revocation_restores_no_login(Backend::Postgres).await;
}
