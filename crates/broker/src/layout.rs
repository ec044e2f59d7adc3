//! The queue layout: which exchanges and queues exist, what they are called, and which
//! account may touch which. The service declares all of it; endpoints and the SDK
//! declare nothing (at most passively) and get accounts that reach only their own part.
//!
//! | name | kind | who writes | who reads |
//! |---|---|---|---|
//! | exchange `tasks` (direct) → queue `<ep>.tasks` (key `<ep>`) | tasks for a UEP or plain endpoint | service | that endpoint |
//! | queue `<mep>.commands` (default exchange) | `cmd_start_endpoint` | service | that MEP |
//! | exchange `results` (topic) → queue `results` (`*.results`) | `result` messages | endpoints, key `<ep>.results` | service |
//! | exchange `heartbeats` (topic) → queue `heartbeats` (`*.heartbeats`) | `ep_status_report` | endpoints, key `<ep>.heartbeats` | service |
//! | queue `<prefix><task group>` (default exchange) | results for the SDK | service | the user who owns the group |
//!
//! Topic permissions pin each endpoint's routing keys to its own id, so the routing
//! key of a result or heartbeat names its sender, and the service trusts nothing else.

use uuid::Uuid;

/// What a broker account may do, as RabbitMQ's regular expressions over resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Queues and exchanges it may declare or delete (`^$`: none).
    pub configure: String,
    /// Exchanges it may publish to and queues it may bind.
    pub write: String,
    /// Queues it may consume from and exchanges it may bind from.
    pub read: String,
    /// Per topic exchange: which routing keys it may publish with.
    pub topic_write: Vec<(String, String)>,
}

/// The direct exchange tasks are published to.
pub const TASKS_EXCHANGE: &str = "tasks";
/// The topic exchange endpoints publish results to.
pub const RESULTS_EXCHANGE: &str = "results";
/// The topic exchange endpoints publish heartbeats to.
pub const HEARTBEATS_EXCHANGE: &str = "heartbeats";
/// The queue the service consumes results from.
pub const RESULTS_QUEUE: &str = "results";
/// The queue the service consumes heartbeats from.
pub const HEARTBEATS_QUEUE: &str = "heartbeats";

/// The queue of tasks for endpoint `ep`.
pub fn task_queue(ep: Uuid) -> String {
    format!("{ep}.tasks")
}

/// The routing key on [`TASKS_EXCHANGE`] that reaches [`task_queue`].
pub fn task_routing_key(ep: Uuid) -> String {
    ep.to_string()
}

/// The queue of commands for multi-user endpoint `mep`.
pub fn command_queue(mep: Uuid) -> String {
    format!("{mep}.commands")
}

/// The routing key endpoint `ep` publishes its results with.
pub fn result_routing_key(ep: Uuid) -> String {
    format!("{ep}.results")
}

/// The routing key endpoint `ep` publishes its heartbeats with.
pub fn heartbeat_routing_key(ep: Uuid) -> String {
    format!("{ep}.heartbeats")
}

/// The endpoint a result or heartbeat routing key names (`<ep>.results` → `ep`).
pub fn sender_of(routing_key: &str) -> Option<Uuid> {
    let (id, kind) = routing_key.split_once('.')?;
    matches!(kind, "results" | "heartbeats")
        .then(|| Uuid::parse_str(id).ok())
        .flatten()
}

/// The queue prefix of a user's task-group queues; only that user's account reads them.
pub fn user_queue_prefix(identity: Uuid) -> String {
    format!("gantry.{identity}.")
}

/// The queue the SDK reads a task group's results from.
pub fn task_group_queue(identity: Uuid, task_group: Uuid) -> String {
    format!("{}{task_group}", user_queue_prefix(identity))
}

/// A RabbitMQ regular expression that matches every task group's result queue
/// ([`task_group_queue`]) of every user, and no other queue: the service's expiry
/// policy applies to these alone, never to an endpoint's task or command queue.
pub fn task_group_queue_pattern() -> String {
    const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
    format!("^gantry\\.{UUID}\\.{UUID}$")
}

/// One Gantry deployment (one service database): 12 lowercase hex digits, made at
/// random when the database is new. Broker account names carry it, because account
/// names are global to a RabbitMQ while endpoint ids are chosen by clients: without it,
/// a client of one deployment registering another deployment's endpoint id would name
/// (and could take over) that deployment's account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Deployment(String);

impl Deployment {
    /// Reads a deployment id; `None` unless it is 12 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Deployment> {
        (text.len() == 12 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Deployment(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag this deployment puts on its broker accounts and its virtual host, by
    /// which it tells its own from anyone else's.
    pub fn tag(&self) -> String {
        format!("{DEPLOYMENT_TAG_PREFIX}{}", self.0)
    }

    /// The broker account name of an endpoint of this deployment.
    pub fn endpoint_account(&self, ep: Uuid) -> String {
        format!("gantry-{}-ep-{ep}", self.0)
    }

    /// The broker account name of a user of this deployment (for reading results).
    pub fn user_account(&self, identity: Uuid) -> String {
        format!("gantry-{}-user-{identity}", self.0)
    }
}

impl std::fmt::Display for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every deployment tag starts with (see [`Deployment::tag`]).
pub const DEPLOYMENT_TAG_PREFIX: &str = "gantry-deployment-";

/// Whether an account name is one a Gantry service provisions (an endpoint's or a
/// user's, of any deployment, or in the unscoped form of Gantry versions before
/// deployments had ids), as opposed to an operator's account such as the service's own.
pub fn is_provisioned_account(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("gantry-") else {
        return false;
    };
    let rest = match rest.split_once('-') {
        Some((deployment, tail)) if Deployment::parse(deployment).is_some() => tail,
        _ => rest,
    };
    ["ep-", "user-"].iter().any(|kind| {
        rest.strip_prefix(kind)
            .is_some_and(|id| Uuid::parse_str(id).is_ok())
    })
}

/// Whether an account name is in the unscoped form of Gantry versions before
/// deployments had ids (`gantry-ep-<uuid>`, `gantry-user-<uuid>`). Their passwords came
/// from the master secret and the name alone, so no revocation could change them; a
/// service deletes the ones on its virtual host when it starts.
pub fn is_unscoped_account(name: &str) -> bool {
    ["gantry-ep-", "gantry-user-"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|id| Uuid::parse_str(id).is_ok())
    })
}

fn escape(text: &str) -> String {
    text.replace('.', "\\.")
}

/// What an endpoint's account may do: read its own task (or command) queue, publish
/// results and heartbeats under its own routing keys, declare nothing.
pub fn endpoint_permissions(ep: Uuid, multi_user: bool) -> Permissions {
    let own_queue = if multi_user {
        command_queue(ep)
    } else {
        task_queue(ep)
    };
    Permissions {
        configure: "^$".into(),
        write: format!("^({RESULTS_EXCHANGE}|{HEARTBEATS_EXCHANGE})$"),
        read: format!("^{}$", escape(&own_queue)),
        topic_write: vec![
            (
                RESULTS_EXCHANGE.into(),
                format!("^{}$", escape(&result_routing_key(ep))),
            ),
            (
                HEARTBEATS_EXCHANGE.into(),
                format!("^{}$", escape(&heartbeat_routing_key(ep))),
            ),
        ],
    }
}

/// What a user's account may do: read the queues of their own task groups, nothing else.
pub fn user_permissions(identity: Uuid) -> Permissions {
    Permissions {
        configure: "^$".into(),
        write: "^$".into(),
        read: format!("^{}.*", escape(&user_queue_prefix(identity))),
        topic_write: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_name_their_sender() {
        let ep = Uuid::new_v4();
        assert_eq!(sender_of(&result_routing_key(ep)), Some(ep));
        assert_eq!(sender_of(&heartbeat_routing_key(ep)), Some(ep));
        assert_eq!(sender_of(&format!("{ep}.tasks")), None);
        assert_eq!(sender_of("nonsense.results"), None);
        assert_eq!(sender_of("results"), None);
    }

    #[test]
    fn provisioned_accounts_are_told_from_operator_accounts() {
        let id = Uuid::new_v4();
        let deployment = Deployment::parse("0123456789ab").unwrap();
        assert!(is_provisioned_account(&deployment.endpoint_account(id)));
        assert!(is_provisioned_account(&deployment.user_account(id)));
        assert!(is_provisioned_account(&format!("gantry-ep-{id}")));
        assert!(is_provisioned_account(&format!("gantry-user-{id}")));
        assert!(!is_provisioned_account("guest"));
        assert!(!is_provisioned_account("gantry-ep-admin"));
        assert!(!is_provisioned_account("gantry-0123456789ab-ep-admin"));
        assert!(!is_provisioned_account(&format!("x-gantry-ep-{id}")));
        assert!(is_unscoped_account(&format!("gantry-ep-{id}")));
        assert!(is_unscoped_account(&format!("gantry-user-{id}")));
        assert!(!is_unscoped_account(&deployment.endpoint_account(id)));
        assert!(!is_unscoped_account(&deployment.user_account(id)));
        assert!(!is_unscoped_account("gantry-ep-admin"));
    }

    #[test]
    fn deployments_name_their_accounts_apart() {
        let id = Uuid::new_v4();
        let a = Deployment::parse("0123456789ab").unwrap();
        let b = Deployment::parse("ba9876543210").unwrap();
        assert_ne!(a.endpoint_account(id), b.endpoint_account(id));
        assert_ne!(a.endpoint_account(id), a.user_account(id));
        assert_eq!(a.tag(), "gantry-deployment-0123456789ab");
        for bad in [
            "",
            "0123456789a",
            "0123456789abc",
            "0123456789AB",
            "../../etc/xx",
        ] {
            assert!(Deployment::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_result_queue_pattern_names_result_queues_only() {
        let (user, group) = (Uuid::new_v4(), Uuid::new_v4());
        let pattern = task_group_queue_pattern();
        // Spelled out: the pattern is RabbitMQ's (Erlang re), not a crate's.
        assert_eq!(
            pattern,
            "^gantry\\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\.\
             [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        );
        // The names it must match are two lowercase hyphenated UUIDs after `gantry.`.
        let queue = task_group_queue(user, group);
        assert_eq!(queue, format!("gantry.{user}.{group}"));
        assert_eq!(
            user.to_string(),
            user.hyphenated().to_string().to_lowercase()
        );
        // The endpoints' queues start otherwise.
        for other in [
            task_queue(user),
            command_queue(user),
            RESULTS_QUEUE.to_owned(),
        ] {
            assert!(!other.starts_with("gantry."), "{other}");
        }
    }

    #[test]
    fn permissions_pin_each_account_to_its_own_names() {
        let ep = Uuid::parse_str("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
        let p = endpoint_permissions(ep, false);
        assert_eq!(p.read, "^6ba7b810-9dad-11d1-80b4-00c04fd430c8\\.tasks$");
        assert_eq!(
            endpoint_permissions(ep, true).read,
            "^6ba7b810-9dad-11d1-80b4-00c04fd430c8\\.commands$"
        );
        assert_eq!(p.configure, "^$");
        assert_eq!(
            p.topic_write[0].1,
            "^6ba7b810-9dad-11d1-80b4-00c04fd430c8\\.results$"
        );
        assert_eq!(
            user_permissions(ep).read,
            "^gantry\\.6ba7b810-9dad-11d1-80b4-00c04fd430c8\\..*"
        );
    }
}
