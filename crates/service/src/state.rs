//! The state every route and background task shares.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use gantry_broker::layout::Deployment;
use gantry_broker::{Broker, BrokerError, SharedBroker};
use gantry_broker_accounts::management::Management;
use gantry_store::Store;

/// Settings that shape what the service tells clients.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `host:port` of RabbitMQ as clients (SDK, endpoints) reach it.
    pub public_amqp_authority: String,
    /// The AMQP scheme clients use (`amqp` or `amqps`).
    pub public_amqp_scheme: String,
    /// The virtual host everything lives in.
    pub vhost: String,
    /// The secret broker passwords are derived from (kept outside the database, see
    /// [`crate::master_secret`]).
    pub broker_secret: String,
    /// This deployment's id, which its broker account names carry.
    pub deployment: Deployment,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most bytes of task messages one submit may make (see
    /// [`crate::server::Limits`]).
    pub max_submit_expanded_bytes: usize,
    /// How long client-credentials access tokens live, in seconds.
    pub client_token_lifetime_s: i64,
    /// How long a UEP's tasks may wait, with no start request answered, before the
    /// service asks its MEP again (ms).
    pub start_retry_after_ms: i64,
    /// The per-user quotas and the result-queue expiry.
    pub quotas: crate::quotas::Quotas,
}

/// Shared state: the database, the broker and the settings; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Durable state.
    pub store: Store,
    /// The AMQP connection (publisher with confirms), reconnecting when it drops.
    pub shared_broker: SharedBroker,
    /// RabbitMQ's management API, for accounts.
    pub management: Management,
    /// Settings.
    pub settings: Arc<ServiceSettings>,
    /// Broker accounts set up since this process started: per account, the salts it
    /// was set up with, behind a lock that its set-ups take turns on (see
    /// [`crate::accounts`]). Passwords derive from the secret and the salt, so an
    /// account once set up stays valid until its salt changes (a revocation, perhaps by
    /// an administrator's command in another process: the new salt is then not in
    /// here, and the account is set up again with its new password); this saves the
    /// management API calls on every submit. (One entry per account that was set up.)
    pub provisioned: Arc<Mutex<HashMap<String, crate::accounts::AccountSalts>>>,
    /// Task groups whose result queue a submit could not declare after it stored the
    /// tasks (owner, group): the outbox declares them again
    /// ([`crate::dispatch::declare_result_queues_again`]).
    pub undeclared_result_queues: Arc<Mutex<HashSet<(Uuid, Uuid)>>>,
    /// One gate per endpoint, held while its tasks are published and while a failed
    /// start purges and fails them, so that no task is both reported failed and left
    /// on its queue to run later. (One entry per endpoint that received tasks since
    /// this process started.)
    pub endpoint_gates: Arc<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>>,
}

impl AppState {
    /// The gate of an endpoint's task queue (see [`AppState::endpoint_gates`]).
    pub fn endpoint_gate(&self, endpoint_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.endpoint_gates
            .lock()
            .expect("the gate map is never poisoned: no code panics holding it")
            .entry(endpoint_id)
            .or_default()
            .clone()
    }

    /// The live broker connection.
    pub async fn broker(&self) -> Result<Broker, BrokerError> {
        self.shared_broker.get().await
    }

    /// The AMQP URL of `account` (with its current `salt`) as clients reach the broker.
    pub fn client_amqp_url(&self, account: &str, salt: &str) -> String {
        let password = gantry_broker_accounts::credentials::account_password(
            &self.settings.broker_secret,
            account,
            salt,
        );
        let vhost = url_escape(&self.settings.vhost);
        format!(
            "{}://{account}:{password}@{}/{vhost}",
            self.settings.public_amqp_scheme, self.settings.public_amqp_authority
        )
    }
}

/// Percent-escapes a URL path segment (a vhost of `/` becomes `%2F`).
pub fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
