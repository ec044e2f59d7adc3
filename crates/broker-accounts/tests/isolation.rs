//! Against the real RabbitMQ: accounts provisioned through the management API reach only
//! their own queues and routing keys.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use futures_lite::StreamExt;
use gantry_broker::lapin::BasicProperties;
use gantry_broker::layout::{
    Deployment, RESULTS_EXCHANGE, RESULTS_QUEUE, TASKS_EXCHANGE, endpoint_permissions,
    result_routing_key, task_queue, task_routing_key,
};
use gantry_broker::{Broker, BrokerError, Outgoing};
use gantry_broker_accounts::credentials::account_password;
use gantry_broker_accounts::management::Management;
use uuid::Uuid;

struct Vhost {
    management: Management,
    name: String,
    deployment: Deployment,
}

fn fresh_deployment() -> Deployment {
    Deployment::parse(&Uuid::new_v4().simple().to_string()[..12]).unwrap()
}

impl Vhost {
    async fn new() -> Vhost {
        gantry_testkit::require_service("RabbitMQ management", "127.0.0.1:15672");
        let management = Management::new(&gantry_testkit::amqp_admin_url()).unwrap();
        let name = gantry_testkit::fresh_vhost_name();
        let deployment = fresh_deployment();
        management.claim_vhost(&name, &deployment).await.unwrap();
        Vhost {
            management,
            name,
            deployment,
        }
    }

    fn account(&self, ep: Uuid) -> String {
        self.deployment.endpoint_account(ep)
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!(
            "amqp://{user}:{password}@{}/{}",
            gantry_testkit::amqp_host(),
            self.name
        )
    }

    async fn endpoint(&self, admin: &Broker, ep: Uuid) -> Broker {
        admin.declare_endpoint_queue(ep, false).await.unwrap();
        let account = self.account(ep);
        let password = account_password("test-secret", &account, "salt");
        self.management
            .put_account(
                &self.deployment,
                &self.name,
                &account,
                &password,
                &endpoint_permissions(ep, false),
            )
            .await
            .unwrap();
        self.connect_as(ep).await
    }

    /// A new connection as endpoint `ep` (a refused operation closes the old one's channel).
    async fn connect_as(&self, ep: Uuid) -> Broker {
        let account = self.account(ep);
        let password = account_password("test-secret", &account, "salt");
        Broker::connect(&self.url(&account, &password))
            .await
            .unwrap()
    }

    /// Deletes the vhost and, with it, the endpoints' accounts (checked).
    async fn drop_all(self, accounts: &[Uuid]) {
        self.management
            .delete_vhost_and_accounts(&self.name)
            .await
            .unwrap();
        for ep in accounts {
            assert!(
                !self
                    .management
                    .account_exists(&self.account(*ep))
                    .await
                    .unwrap(),
                "the account of {ep} went with its vhost"
            );
        }
    }
}

fn is_access_refused(error: &BrokerError) -> bool {
    error.to_string().contains("ACCESS_REFUSED") || error.to_string().contains("403")
}

#[tokio::test]
async fn an_endpoint_reaches_only_its_own_queue_and_routing_keys() {
    let vhost = Vhost::new().await;
    let admin = Broker::connect(&gantry_testkit::amqp_admin_amqp_url(&vhost.name))
        .await
        .unwrap();
    admin.declare_base_topology().await.unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ep_a = vhost.endpoint(&admin, a).await;
    let _ep_b = vhost.endpoint(&admin, b).await;

    // The service puts a task for A on the tasks exchange; A consumes it.
    admin
        .publish_confirmed(&[Outgoing {
            exchange: TASKS_EXCHANGE,
            routing_key: &task_routing_key(a),
            body: b"task for a",
            properties: BasicProperties::default(),
        }])
        .await
        .unwrap();
    let mut consumer = ep_a.consume(&task_queue(a), "a", 1).await.unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert_eq!(delivery.data, b"task for a");

    // A may not consume B's queue, declare queues, or speak for B.
    let refused = ep_a
        .consume(&task_queue(b), "a-steals", 1)
        .await
        .unwrap_err();
    assert!(
        is_access_refused(&refused),
        "consuming B's queue: {refused}"
    );
    let ep_a = vhost.connect_as(a).await;
    let refused = ep_a.declare_queue("anything").await.unwrap_err();
    assert!(is_access_refused(&refused), "declaring: {refused}");

    let ep_a = vhost.connect_as(a).await;
    ep_a.publish_confirmed(&[Outgoing {
        exchange: RESULTS_EXCHANGE,
        routing_key: &result_routing_key(a),
        body: b"a's result",
        properties: BasicProperties::default(),
    }])
    .await
    .expect("A publishes results under its own key");
    let refused = ep_a
        .publish_confirmed(&[Outgoing {
            exchange: RESULTS_EXCHANGE,
            routing_key: &result_routing_key(b),
            body: b"forged",
            properties: BasicProperties::default(),
        }])
        .await
        .unwrap_err();
    assert!(is_access_refused(&refused), "publishing as B: {refused}");

    // Only A's real result reached the service's results queue.
    let mut results = admin.consume(RESULTS_QUEUE, "service", 10).await.unwrap();
    let delivery = results.next().await.unwrap().unwrap();
    assert_eq!(delivery.data, b"a's result");
    assert_eq!(delivery.routing_key.as_str(), result_routing_key(a));

    // A wrong password is refused outright.
    let wrong = Broker::connect(&vhost.url(&vhost.account(a), "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(wrong, BrokerError::Connect { .. }));

    admin.close().await;
    vhost.drop_all(&[a, b]).await;
}

/// Account names are global to a RabbitMQ: an account this deployment did not make (an
/// operator's, or another deployment's that happens to share the name) is never changed.
#[tokio::test]
async fn an_account_that_is_not_this_deployments_is_left_alone() {
    let vhost = Vhost::new().await;
    let ep = Uuid::new_v4();
    let account = vhost.account(ep);
    // Someone else's account of that name, without this deployment's tag.
    let other = Management::new(&gantry_testkit::amqp_admin_url()).unwrap();
    other
        .put_account(
            &fresh_deployment(),
            &vhost.name,
            &account,
            "theirs",
            &endpoint_permissions(ep, false),
        )
        .await
        .unwrap();
    let refused = vhost
        .management
        .put_account(
            &vhost.deployment,
            &vhost.name,
            &account,
            "mine",
            &endpoint_permissions(ep, false),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::NotOurs(message) if message.contains(&account)),
        "{refused}"
    );
    // Its password is still theirs.
    Broker::connect(&vhost.url(&account, "theirs"))
        .await
        .expect("the other account's password is unchanged");
    assert!(Broker::connect(&vhost.url(&account, "mine")).await.is_err());
    vhost.management.delete_account(&account).await.unwrap();
    vhost.drop_all(&[]).await;
}

/// Two deployments in one virtual host would consume each other's results: the second
/// is refused, and says what to do; the first may claim it again (a restart).
#[tokio::test]
async fn a_virtual_host_serves_one_deployment() {
    let vhost = Vhost::new().await;
    vhost
        .management
        .claim_vhost(&vhost.name, &vhost.deployment)
        .await
        .expect("the same deployment claims its virtual host again");
    let refused = vhost
        .management
        .claim_vhost(&vhost.name, &fresh_deployment())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BrokerError::NotOurs(message)
            if message.contains(&vhost.name) && message.contains(&vhost.deployment.tag())
                && message.contains("--amqp-url")),
        "{refused}"
    );
    vhost.drop_all(&[]).await;
}
