//! Bad input, wrong callers and other people's ids: each gets a clear JSON error with
//! the right status, and nothing is half-written. Plain HTTP against the real service.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{Backend, Rest, TestService};
use futures_lite::StreamExt;
use gantry_broker::Broker;
use gantry_protocol::packed::pack_buffers;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

struct Api {
    http: Client,
    base: String,
}

impl Api {
    fn new(service: &TestService) -> Api {
        Api {
            http: Client::new(),
            base: service.url(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }
}

/// Asserts an error response: status, code, and a message in both text fields.
fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["code"], code, "{}", response.1);
    let message = response.1["message"].as_str().unwrap();
    assert!(!message.is_empty());
    assert_eq!(response.1["reason"], message);
}

fn function_code() -> String {
    pack_buffers(&["01\ngASVBQAAAAAAAAB9lC4=\n"])
}

fn payload() -> String {
    pack_buffers(&["00\ngASVBQAAAAAAAABLAYWULg==\n", "00\ngAR9lC4=\n"])
}

async fn register_function(api: &Api, token: &str) -> String {
    let (status, body) = api
        .post("/v3/functions", token, json!({"function_name": "f", "function_code": function_code(), "meta": {"python_version": "3.11.7"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["function_uuid"].as_str().unwrap().to_owned()
}

async fn register_endpoint(api: &Api, token: &str, multi_user: bool, public: bool) -> Value {
    let (status, body) = api
        .post(
            "/v3/endpoints",
            token,
            json!({"endpoint_name": "ep", "multi_user": multi_user, "public": public}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_are_401_and_version_is_public() {
    let service = TestService::start(Backend::Sqlite, false).await;
    let api = Api::new(&service);
    let (status, version) = api
        .call(reqwest::Method::GET, "/v2/version?service=all", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(version["min_sdk_version"].is_string() && version["min_ep_version"].is_string());

    assert_error(
        &api.call(reqwest::Method::GET, "/v2/tasks/x", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    assert_error(
        &api.get("/v2/endpoints", "gtu_forged").await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    let (_, token) = service.user("alice").await;
    assert_eq!(api.get("/v2/endpoints", &token).await.0, StatusCode::OK);
    assert!(
        service
            .store()
            .revoke_token(&token)
            .await
            .unwrap()
            .is_some()
    );
    assert_error(
        &api.get("/v2/endpoints", &token).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    assert_error(
        &api.get("/v9/nothing", &token).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    service.stop().await;
}

async fn malformed_submits_are_refused_and_write_nothing(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let api = Api::new(&service);
    let (_, alice) = service.user("alice").await;
    let (_, client) = service.endpoint_client("site").await;
    let endpoint = register_endpoint(&api, &client, false, true).await;
    let ep = endpoint["endpoint_id"].as_str().unwrap();
    let submit = format!("/v3/endpoints/{ep}/submit");
    let function = register_function(&api, &alice).await;

    // Not JSON, wrong types, no content type, too big.
    let raw = api
        .http
        .post(format!("{}{submit}", api.base))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"tasks\": {")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert_eq!(raw.json::<Value>().await.unwrap()["code"], "INVALID_JSON");
    assert_error(
        &api.post(
            &submit,
            &alice,
            json!({"tasks": {function.clone(): "not a list"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_BODY",
    );
    assert_error(
        &api.post(&submit, &alice, json!({"tasks": {"not-a-uuid": []}}))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_BODY",
    );
    assert_error(
        &api.post(&submit, &alice, json!({"create_queue": "yes", "tasks": {}}))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_BODY",
    );
    let no_type = api
        .http
        .post(format!("{}{submit}", api.base))
        .bearer_auth(&alice)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The service answers 413 without reading the rest, so the client may see the
    // connection close mid-upload; what it must never see is another answer.
    let huge = json!({"tasks": {function.clone(): ["x".repeat(2 * 1024 * 1024)]}});
    let mut too_large = None;
    for _ in 0..10 {
        // A client of its own, so no half-closed connection returns to the shared pool.
        let sent = Client::new()
            .post(format!("{}{submit}", api.base))
            .bearer_auth(&alice)
            .json(&huge)
            .send()
            .await;
        if let Ok(response) = sent {
            too_large = Some(response.status());
            break;
        }
    }
    assert_eq!(too_large, Some(StatusCode::PAYLOAD_TOO_LARGE));

    // One bad payload among good ones: nothing is stored, not even the task group.
    let group = Uuid::new_v4();
    let mixed = json!({"task_group_id": group, "tasks": {function.clone(): [payload(), "7\nshort", payload()]}});
    assert_error(
        &api.post(&submit, &alice, mixed).await,
        StatusCode::BAD_REQUEST,
        "INVALID_PAYLOAD",
    );
    let three = json!({"task_group_id": group, "tasks": {function.clone(): [pack_buffers(&["00\na", "00\nb", "00\nc"])]}});
    assert_error(
        &api.post(&submit, &alice, three).await,
        StatusCode::BAD_REQUEST,
        "INVALID_PAYLOAD",
    );
    assert!(
        service
            .store()
            .tasks_of_group(group)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(service.store().task_group_owner(group).await.unwrap(), None);

    // Unknown ids.
    let unknown = Uuid::new_v4();
    assert_error(
        &api.post(
            &format!("/v3/endpoints/{unknown}/submit"),
            &alice,
            json!({"tasks": {}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
    );
    assert_error(
        &api.post("/v3/endpoints/nope/submit", &alice, json!({"tasks": {}}))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_ID",
    );
    assert_error(
        &api.post(
            &submit,
            &alice,
            json!({"tasks": {unknown.to_string(): [payload()]}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    assert_error(
        &api.get(&format!("/v2/tasks/{unknown}"), &alice).await,
        StatusCode::NOT_FOUND,
        "TASK_NOT_FOUND",
    );
    assert_error(
        &api.get(&format!("/v2/taskgroup/{unknown}"), &alice).await,
        StatusCode::NOT_FOUND,
        "TASK_GROUP_NOT_FOUND",
    );
    assert_error(
        &api.get(&format!("/v2/functions/{unknown}"), &alice).await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    assert_error(
        &api.post(
            "/v3/functions",
            &alice,
            json!({"function_name": "f", "function_code": "12\nshort"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_FUNCTION_CODE",
    );
    assert_error(
        &api.post(
            "/v3/functions",
            &alice,
            json!({"function_name": "f", "function_code": pack_buffers(&["no header"])}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_FUNCTION_CODE",
    );

    // A plain endpoint takes no user_endpoint_config; endpoint clients cannot submit.
    assert_error(
        &api.post(
            &submit,
            &alice,
            json!({"tasks": {}, "user_endpoint_config": {"a": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "NOT_A_MULTI_USER_ENDPOINT",
    );
    assert_error(
        &api.post(&submit, &client, json!({"tasks": {}})).await,
        StatusCode::FORBIDDEN,
        "USER_TOKEN_REQUIRED",
    );

    // A valid submit still works, and an empty one too (the SDK sends those).
    let (status, body) = api
        .post(
            &submit,
            &alice,
            json!({"tasks": {function.clone(): [payload(), payload()]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tasks"][&function].as_array().unwrap().len(), 2);
    assert_eq!(body["endpoint_id"], ep);
    let (status, _) = api.post(&submit, &alice, json!({"tasks": {}})).await;
    assert_eq!(status, StatusCode::OK);
    let task_id = body["tasks"][&function][0].as_str().unwrap();
    let (status, task) = api.get(&format!("/v2/tasks/{task_id}"), &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        task,
        json!({"task_id": task_id, "status": "waiting-for-ep"}),
        "a pending task has no result fields"
    );

    // Locked endpoints take no tasks.
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v3/endpoints/{ep}/lock"),
            Some(&client),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &api.post(
            &submit,
            &alice,
            json!({"tasks": {function.clone(): [payload()]}}),
        )
        .await,
        StatusCode::LOCKED,
        "ENDPOINT_LOCKED",
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submits_are_refused_and_write_nothing_sqlite() {
    malformed_submits_are_refused_and_write_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submits_are_refused_and_write_nothing_postgres() {
    malformed_submits_are_refused_and_write_nothing(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_own_things_and_clients_only_their_endpoints() {
    let service = TestService::start(Backend::Postgres, false).await;
    let api = Api::new(&service);
    let (_, alice) = service.user("alice").await;
    let (_, bob) = service.user("bob").await;
    let (_, site_a) = service.endpoint_client("site-a").await;
    let (_, site_b) = service.endpoint_client("site-b").await;
    let endpoint = register_endpoint(&api, &site_a, false, true).await;
    let ep = endpoint["endpoint_id"].as_str().unwrap().to_owned();
    let function = register_function(&api, &alice).await;
    let (_, body) = api
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &alice,
            json!({"create_queue": true, "tasks": {function.clone(): [payload()]}}),
        )
        .await;
    let task = body["tasks"][&function][0].as_str().unwrap().to_owned();
    let group = body["task_group_id"].as_str().unwrap().to_owned();

    // Bob cannot see or use Alice's task, group or private function.
    assert_error(
        &api.get(&format!("/v2/tasks/{task}"), &bob).await,
        StatusCode::NOT_FOUND,
        "TASK_NOT_FOUND",
    );
    assert_error(
        &api.get(&format!("/v2/taskgroup/{group}"), &bob).await,
        StatusCode::NOT_FOUND,
        "TASK_GROUP_NOT_FOUND",
    );
    assert_error(
        &api.get(&format!("/v2/functions/{function}"), &bob).await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    let bob_function = register_function(&api, &bob).await;
    let join = json!({"task_group_id": group, "tasks": {bob_function.clone(): [payload()]}});
    assert_error(
        &api.post(&format!("/v3/endpoints/{ep}/submit"), &bob, join)
            .await,
        StatusCode::NOT_FOUND,
        "TASK_GROUP_NOT_FOUND",
    );
    let steal = json!({"tasks": {function.clone(): [payload()]}});
    assert_error(
        &api.post(&format!("/v3/endpoints/{ep}/submit"), &bob, steal)
            .await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    let (status, batch) = api
        .post("/v2/batch_status", &bob, json!({"task_ids": [task]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch, json!({"response": "batch", "results": {}}));
    let (_, batch) = api
        .post("/v2/batch_status", &alice, json!({"task_ids": [task]}))
        .await;
    assert_eq!(batch["results"][&task]["status"], "waiting-for-ep");
    let (_, group_view) = api.get(&format!("/v2/taskgroup/{group}"), &alice).await;
    assert_eq!(
        group_view,
        json!({"taskgroup_id": group, "tasks": [{"id": task}]})
    );

    // Site B cannot take over, lock or delete site A's (public) endpoint.
    assert_error(
        &api.call(
            reqwest::Method::PUT,
            &format!("/v3/endpoints/{ep}"),
            Some(&site_b),
            Some(json!({"endpoint_name": "mine"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "NOT_ENDPOINT_OWNER",
    );
    assert_error(
        &api.call(
            reqwest::Method::POST,
            &format!("/v3/endpoints/{ep}/lock"),
            Some(&site_b),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "NOT_ENDPOINT_OWNER",
    );
    assert_error(
        &api.call(
            reqwest::Method::DELETE,
            &format!("/v2/endpoints/{ep}"),
            Some(&alice),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "NOT_ENDPOINT_OWNER",
    );
    let (_, listed) = api.get("/v2/endpoints", &site_b).await;
    assert_eq!(listed, json!([]));
    let (_, listed) = api.get("/v2/endpoints", &site_a).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // The broker agrees: Bob's result account cannot read Alice's task-group queue,
    // and site B's endpoint account cannot read site A's task queue.
    let (_, bob_url) = api.get("/v2/get_amqp_result_connection_url", &bob).await;
    let (_, alice_url) = api.get("/v2/get_amqp_result_connection_url", &alice).await;
    let alice_queue = format!("{}{group}", alice_url["queue_prefix"].as_str().unwrap());
    let bob_broker = Broker::connect(bob_url["connection_url"].as_str().unwrap())
        .await
        .unwrap();
    let refused = bob_broker
        .consume(&alice_queue, "steal", 1)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    let alice_broker = Broker::connect(alice_url["connection_url"].as_str().unwrap())
        .await
        .unwrap();
    alice_broker
        .consume(&alice_queue, "mine", 1)
        .await
        .expect("Alice reads her own queue");
    let other = register_endpoint(&api, &site_b, false, false).await;
    let b_broker = Broker::connect(other["task_queue_info"]["connection_url"].as_str().unwrap())
        .await
        .unwrap();
    let a_queue = endpoint["task_queue_info"]["queue"].as_str().unwrap();
    let refused = b_broker.consume(a_queue, "steal", 1).await.unwrap_err();
    assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    let a_broker = Broker::connect(
        endpoint["task_queue_info"]["connection_url"]
            .as_str()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut tasks = a_broker.consume(a_queue, "mine", 1).await.unwrap();
    let delivery = tasks.next().await.unwrap().unwrap();
    let headers = delivery.properties.headers().as_ref().unwrap().inner();
    let header = |name: &str| match headers.get(name) {
        Some(gantry_broker::lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("task_uuid"), task);
    assert_eq!(header("function_uuid"), function);

    // Deleting removes the endpoint, but Alice's task stays readable.
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/endpoints/{ep}"),
            Some(&site_a),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &api.get(&format!("/v2/endpoints/{ep}"), &site_a).await,
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
    );
    assert_eq!(
        api.get(&format!("/v2/tasks/{task}"), &alice).await.0,
        StatusCode::OK
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_credentials_grant_issues_one_token_per_resource_server() {
    let service = TestService::start(Backend::Sqlite, false).await;
    let (client, secret) = service.store().add_endpoint_client("site").await.unwrap();
    let http = Client::new();
    let token_url = format!("{}/v2/oauth2/token", service.url());
    let scopes = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all openid urn:globus:auth:scope:auth.globus.org:manage_projects";
    let response = http
        .post(&token_url)
        .basic_auth(client.client_id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("scope", scopes)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["resource_server"], "funcx_service");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(
        tokens["other_tokens"][0]["resource_server"],
        "auth.globus.org"
    );
    assert!(
        tokens["other_tokens"][0]["scope"]
            .as_str()
            .unwrap()
            .contains("openid")
    );
    let access = tokens["access_token"].as_str().unwrap();
    let info: Value = http
        .get(format!("{}/v2/oauth2/userinfo", service.url()))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], client.client_id.to_string());
    assert_eq!(info["identity_set"][0]["sub"], client.client_id.to_string());

    // The auth API's token reads userinfo, but the compute API refuses it.
    let auth_token = tokens["other_tokens"][0]["access_token"].as_str().unwrap();
    let auth_info = http
        .get(format!("{}/v2/oauth2/userinfo", service.url()))
        .bearer_auth(auth_token)
        .send()
        .await
        .unwrap();
    assert_eq!(auth_info.status(), StatusCode::OK);
    let api = Api::new(&service);
    assert_error(
        &api.post(
            "/v3/endpoints",
            auth_token,
            json!({"endpoint_name": "ep", "multi_user": false}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "WRONG_RESOURCE_SERVER",
    );
    register_endpoint(&api, access, false, false).await;

    let wrong = http
        .post(&token_url)
        .basic_auth(client.client_id, Some("gts_wrong"))
        .form(&[("grant_type", "client_credentials"), ("scope", scopes)])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let grant = http
        .post(&token_url)
        .basic_auth(client.client_id, Some(&secret))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), StatusCode::BAD_REQUEST);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_take_over_a_users_uep() {
    let service = TestService::start(Backend::Sqlite, false).await;
    let api = Api::new(&service);
    let (alice_id, alice) = service.user("alice@example.org").await;
    let (_, bob) = service.user("bob@example.org").await;
    let (_, site) = service.endpoint_client("site").await;
    let (_, rogue) = service.endpoint_client("rogue").await;
    let mep = register_endpoint(&api, &site, true, false).await;
    let mep_id: Uuid = mep["endpoint_id"].as_str().unwrap().parse().unwrap();

    // Users do not register endpoints (and get no broker credentials that way).
    assert_error(
        &api.post(
            "/v3/endpoints",
            &alice,
            json!({"endpoint_name": "mine", "multi_user": false}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "CLIENT_TOKEN_REQUIRED",
    );
    // A client cannot claim the id that alice's UEP will have.
    let config = json!({"ACCOUNT_ID": "1"});
    let predicted = gantry_protocol::uep_id::derive_uep_id(
        mep_id,
        alice_id,
        config.as_object().unwrap(),
        "3.11",
    );
    for (method, path) in [
        (reqwest::Method::POST, "/v3/endpoints".to_owned()),
        (reqwest::Method::PUT, format!("/v3/endpoints/{predicted}")),
    ] {
        assert_error(
            &api.call(
                method,
                &path,
                Some(&rogue),
                Some(
                    json!({"endpoint_name": "trap", "endpoint_id": predicted, "multi_user": false}),
                ),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "INVALID_ENDPOINT_ID",
        );
    }
    assert!(service.store().endpoint(predicted).await.unwrap().is_none());

    // Alice's submit makes her UEP, under her MEP.
    let function = register_function(&api, &alice).await;
    let submit = json!({
        "tasks": {function.clone(): [payload()]},
        "user_endpoint_config": config,
        "user_runtime": {"python": {"version": "3.11.7", "version_tuple": [3, 11, 7]}},
    });
    let (status, body) = api
        .post(&format!("/v3/endpoints/{mep_id}/submit"), &alice, submit)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let uep = service.store().endpoint(predicted).await.unwrap().unwrap();
    assert_eq!(uep.uep.as_ref().unwrap().user_identity_id, alice_id);

    // Submitting straight to the UEP would skip its MEP's lock and allowed functions.
    assert_error(
        &api.post(
            &format!("/v3/endpoints/{predicted}/submit"),
            &alice,
            json!({"tasks": {function.clone(): [payload()]}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "SUBMIT_TO_MEP",
    );

    // A refused submit creates nothing: bob naming alice's task group gets no UEP.
    let group = body["task_group_id"].as_str().unwrap();
    let bob_function = register_function(&api, &bob).await;
    assert_error(
        &api.post(
            &format!("/v3/endpoints/{mep_id}/submit"),
            &bob,
            json!({"task_group_id": group, "tasks": {bob_function: [payload()]}, "user_endpoint_config": {"ACCOUNT_ID": "2"}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "TASK_GROUP_NOT_FOUND",
    );
    assert_eq!(
        service.store().ueps_of(mep_id).await.unwrap().len(),
        1,
        "only alice's UEP exists"
    );

    // Numbers that JSON cannot keep apart are refused in a config.
    assert_error(
        &api.post(
            &format!("/v3/endpoints/{mep_id}/submit"),
            &alice,
            json!({"tasks": {function.clone(): [payload()]}, "user_endpoint_config": {"ACCOUNT_ID": 1e300}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_USER_ENDPOINT_CONFIG",
    );
    // Text with NUL characters is refused before anything is stored.
    assert_error(
        &api.post(
            "/v3/functions",
            &alice,
            json!({"function_name": "a\u{0}b", "function_code": function_code()}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_BODY",
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frameworks_own_rejections_are_json_errors_too() {
    let service = TestService::start(Backend::Sqlite, false).await;
    let api = Api::new(&service);
    let (_, alice) = service.user("alice").await;
    // A path segment that does not decode as UTF-8.
    assert_error(
        &api.get("/v2/tasks/%FF", &alice).await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    );
    // A method the route does not take; the Allow header survives.
    let response = Client::new()
        .put(format!("{}/v2/tasks/x", service.url()))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("allow"));
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(
        &(status, body),
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    );
    // A token request whose form lacks grant_type: OAuth's invalid_request.
    let response = Client::new()
        .post(format!("{}/v2/oauth2/token", service.url()))
        .form(&[("scope", "openid")])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "invalid_request");
    service.stop().await;
}

fn ids_of(listed: &Value) -> std::collections::BTreeSet<String> {
    listed
        .as_array()
        .unwrap_or_else(|| panic!("a list: {listed}"))
        .iter()
        .map(|ep| ep["endpoint_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `get_endpoints(role=...)` as the SDK sends it: `owner` (the default) lists what the
/// caller owns, `any` also what they may use (multi-user and public endpoints), never
/// another user's UEP or another site's private endpoint.
async fn endpoints_are_listed_by_role(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, alice_token) = service.user("alice@example.org").await;
    let (_, bob_token) = service.user("bob@example.org").await;
    let (_, site_a_token) = service.endpoint_client("site-a").await;
    let (_, site_b_token) = service.endpoint_client("site-b").await;
    let api = Api::new(&service);
    let id = |registered: Value| registered["endpoint_id"].as_str().unwrap().to_owned();
    let mep = id(register_endpoint(&api, &site_a_token, true, false).await);
    let private = id(register_endpoint(&api, &site_a_token, false, false).await);
    let public = id(register_endpoint(&api, &site_b_token, false, true).await);
    let alice = Rest::new(&service, &alice_token);
    let bob = Rest::new(&service, &bob_token);
    let site_a = Rest::new(&service, &site_a_token);
    let set = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect();

    assert_eq!(ids_of(&alice.get("/v2/endpoints").await.1), set(&[]));
    assert_eq!(
        ids_of(&alice.get("/v2/endpoints?role=any").await.1),
        set(&[&mep, &public])
    );
    // Alice's submit to the MEP makes her a UEP: hers to list, nobody else's.
    let function = alice.register_function().await;
    alice
        .submit_one(
            mep.parse().unwrap(),
            function,
            json!({"user_endpoint_config": {"ACCOUNT_ID": "1"}}),
        )
        .await;
    let owned = ids_of(&alice.get("/v2/endpoints?role=owner").await.1);
    assert_eq!(owned.len(), 1, "{owned:?}");
    let uep = owned.iter().next().unwrap().clone();
    assert_eq!(ids_of(&alice.get("/v2/endpoints").await.1), owned);
    assert_eq!(
        ids_of(&alice.get("/v2/endpoints?role=any").await.1),
        set(&[&mep, &public, &uep])
    );
    assert_eq!(
        ids_of(&bob.get("/v2/endpoints?role=any").await.1),
        set(&[&mep, &public])
    );
    assert_eq!(
        ids_of(&site_a.get("/v2/endpoints?role=owner").await.1),
        set(&[&mep, &private])
    );
    assert_eq!(
        ids_of(&site_a.get("/v2/endpoints?role=any").await.1),
        set(&[&mep, &private, &public])
    );
    let refused = alice.get("/v2/endpoints?role=admin").await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "INVALID_ROLE");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_listed_by_role_sqlite() {
    endpoints_are_listed_by_role(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_listed_by_role_postgres() {
    endpoints_are_listed_by_role(Backend::Postgres).await;
}

/// `delete_function`: its owner deletes it (then it is gone for reading and
/// submitting); to anyone else, even for a public function, it is not found.
async fn only_its_owner_deletes_a_function(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, alice_token) = service.user("alice@example.org").await;
    let (_, bob_token) = service.user("bob@example.org").await;
    let (_, site_token) = service.endpoint_client("site").await;
    let api = Api::new(&service);
    let endpoint = register_endpoint(&api, &site_token, false, true).await;
    let endpoint = endpoint["endpoint_id"].as_str().unwrap().to_owned();
    let alice = Rest::new(&service, &alice_token);
    let bob = Rest::new(&service, &bob_token);
    let (status, body) = alice
        .post(
            "/v3/functions",
            json!({"function_name": "shared", "function_code": function_code(), "public": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let function = body["function_uuid"].as_str().unwrap().to_owned();

    assert_error(
        &bob.delete(&format!("/v2/functions/{function}")).await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    assert_eq!(
        bob.get(&format!("/v2/functions/{function}")).await.0,
        StatusCode::OK,
        "bob's attempt changed nothing"
    );
    assert_error(
        &bob.delete(&format!("/v2/functions/{}", Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );

    let (status, body) = alice.delete(&format!("/v2/functions/{function}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(
        &alice.get(&format!("/v2/functions/{function}")).await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    let submit = json!({"tasks": {function.clone(): [payload()]}});
    assert_error(
        &alice
            .post(&format!("/v3/endpoints/{endpoint}/submit"), submit)
            .await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    assert_error(
        &alice.delete(&format!("/v2/functions/{function}")).await,
        StatusCode::NOT_FOUND,
        "FUNCTION_NOT_FOUND",
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_owner_deletes_a_function_sqlite() {
    only_its_owner_deletes_a_function(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_owner_deletes_a_function_postgres() {
    only_its_owner_deletes_a_function(Backend::Postgres).await;
}

/// A function id sent twice in one submit (in another letter case, as JSON allows) is
/// refused, and nothing is stored; before, one of the two payload lists vanished.
async fn a_function_named_twice_in_a_submit_is_refused(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, token) = service.user("alice@example.org").await;
    let (_, site) = service.endpoint_client("site").await;
    let api = Api::new(&service);
    let endpoint = register_endpoint(&api, &site, false, true).await;
    let endpoint: Uuid = endpoint["endpoint_id"].as_str().unwrap().parse().unwrap();
    let alice = Rest::new(&service, &token);
    let function = alice.register_function().await;
    let group = Uuid::new_v4();
    // A JSON object with two keys that name the same function.
    let body = format!(
        r#"{{"task_group_id": "{group}", "tasks": {{"{upper}": [{p}], "{lower}": [{p}, {p}]}}}}"#,
        upper = function.to_string().to_uppercase(),
        lower = function,
        p = serde_json::to_string(&payload()).unwrap(),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v3/endpoints/{endpoint}/submit", service.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let refused = (response.status(), response.json::<Value>().await.unwrap());
    assert_error(&refused, StatusCode::BAD_REQUEST, "INVALID_BODY");
    assert!(
        refused.1["message"]
            .as_str()
            .unwrap()
            .contains("appears more than once"),
        "{}",
        refused.1
    );
    assert_eq!(service.store().task_group_owner(group).await.unwrap(), None);
    assert_eq!(
        service
            .store()
            .unfinished_task_count(endpoint)
            .await
            .unwrap(),
        0
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_named_twice_in_a_submit_is_refused_sqlite() {
    a_function_named_twice_in_a_submit_is_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_named_twice_in_a_submit_is_refused_postgres() {
    a_function_named_twice_in_a_submit_is_refused(Backend::Postgres).await;
}

/// The token route issues tokens only for the scopes Gantry knows, a bounded number of
/// them, and expired tokens leave the database.
async fn token_scopes_are_checked_and_expired_tokens_pruned(backend: Backend) {
    let service = TestService::start_with(backend, false, |config| {
        config.client_token_lifetime_s = 1;
    })
    .await;
    let (client, secret) = service.store().add_endpoint_client("site").await.unwrap();
    let http = Client::new();
    let grant = |scope: String| {
        http.post(format!("{}/v2/oauth2/token", service.url()))
            .basic_auth(client.client_id, Some(&secret))
            .form(&[
                ("grant_type", "client_credentials".to_owned()),
                ("scope", scope),
            ])
            .send()
    };
    let compute = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all";
    for junk in [
        "x".repeat(100_000),
        format!("{compute} javascript:alert(1)"),
        format!(
            "{compute} https://auth.globus.org/scopes/{}/all",
            Uuid::new_v4()
        ),
        vec!["openid"; 17].join(" "),
    ] {
        let response = grant(junk.clone()).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["code"], "invalid_scope", "{body}");
    }
    assert_eq!(
        service.store().token_count(client.client_id).await.unwrap(),
        0
    );

    let response = grant(format!("{compute} openid {compute}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["scope"], compute, "asked twice, stored once");
    assert_eq!(
        service.store().token_count(client.client_id).await.unwrap(),
        2
    );

    // A second later they have expired, and the outbox's next pass prunes them.
    common::wait_until("the expired tokens are pruned", || async {
        service.store().token_count(client.client_id).await.unwrap() == 0
    })
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_error(
        &Api::new(&service).get("/v2/endpoints", access).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_are_checked_and_expired_tokens_pruned_sqlite() {
    token_scopes_are_checked_and_expired_tokens_pruned(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_are_checked_and_expired_tokens_pruned_postgres() {
    token_scopes_are_checked_and_expired_tokens_pruned(Backend::Postgres).await;
}

/// Registering (PUT, or POST with an id) over another client's endpoint answers as a
/// GET does: 404 for a private one, which must not be confirmed to exist; 403 for one
/// the caller can see anyway. Nothing changes.
async fn registering_over_another_clients_endpoint_answers_as_a_get(backend: Backend) {
    let service = TestService::start(backend, false).await;
    let (_, site_a) = service.endpoint_client("site-a").await;
    let (_, site_b) = service.endpoint_client("site-b").await;
    let api = Api::new(&service);
    let private = register_endpoint(&api, &site_a, false, false).await;
    let private = private["endpoint_id"].as_str().unwrap().to_owned();
    let public = register_endpoint(&api, &site_a, false, true).await;
    let public = public["endpoint_id"].as_str().unwrap().to_owned();
    let mine = json!({"endpoint_name": "mine", "multi_user": false});
    let get = api.get(&format!("/v2/endpoints/{private}"), &site_b).await;
    assert_error(&get, StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND");
    let put = api
        .put(&format!("/v3/endpoints/{private}"), &site_b, mine.clone())
        .await;
    assert_error(&put, StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND");
    let mut post = mine.clone();
    post["endpoint_id"] = json!(private);
    assert_error(
        &api.post("/v3/endpoints", &site_b, post).await,
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
    );
    // An id nobody holds is free to register.
    let free = Uuid::new_v4();
    let (status, body) = api
        .put(&format!("/v3/endpoints/{free}"), &site_b, mine.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One the caller can see is another client's.
    assert_error(
        &api.put(&format!("/v3/endpoints/{public}"), &site_b, mine)
            .await,
        StatusCode::FORBIDDEN,
        "NOT_ENDPOINT_OWNER",
    );
    for id in [&private, &public] {
        let (_, view) = api.get(&format!("/v2/endpoints/{id}"), &site_a).await;
        assert_eq!(view["name"], "ep", "site A's endpoint is unchanged: {view}");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_over_another_clients_endpoint_answers_as_a_get_sqlite() {
    registering_over_another_clients_endpoint_answers_as_a_get(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_over_another_clients_endpoint_answers_as_a_get_postgres() {
    registering_over_another_clients_endpoint_answers_as_a_get(Backend::Postgres).await;
}
