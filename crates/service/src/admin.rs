//! What `gantry-service admin` does beyond the database: removing the broker accounts
//! (and queues) that revoked or deleted credentials could still open. It runs in the
//! administrator's command, not in the service, so that a revocation takes effect at
//! once whether or not a service is running; a running service sets an account up
//! again, with a new password, only when a still-valid credential asks for it.

use gantry_broker::BrokerError;
use gantry_broker::layout::{Deployment, command_queue, task_queue};
use gantry_broker_accounts::management::Management;
use gantry_store::{EndpointRecord, Revocation, Store, StoreError};
use uuid::Uuid;

/// What went wrong in an administrator's broker clean-up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The database failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker clean-up failed after the database change was made.
    #[error(
        "the database change is made, but RabbitMQ could not be cleaned up ({0}); once its \
         management API answers, run revoke-client or revoke-token --user again to finish \
         (after delete-endpoint or revoke-token TOKEN, delete the accounts left with \
         rabbitmqctl delete_user)"
    )]
    Broker(#[from] BrokerError),
    /// The database has no deployment id yet (no service ever started on it).
    #[error("the database has no deployment id yet: start gantry-service serve on it once")]
    NoDeployment,
    /// The virtual host named is not this deployment's.
    #[error(
        "the RabbitMQ virtual host {vhost:?} is not this database's deployment's ({deployment}); \
         give the --amqp-url (or GANTRY_AMQP_URL) that gantry-service serve uses"
    )]
    WrongVhost {
        /// The vhost of the URL given.
        vhost: String,
        /// This database's deployment.
        deployment: Deployment,
    },
}

/// The broker side of an administrator's command: the management API, the virtual
/// host and the deployment whose accounts these are.
#[derive(Debug, Clone)]
pub struct BrokerCleanup {
    /// RabbitMQ's management API.
    pub management: Management,
    /// The deployment's virtual host.
    pub vhost: String,
    /// The deployment (from the database).
    pub deployment: Deployment,
}

impl BrokerCleanup {
    /// The clean-up for the deployment `store` belongs to.
    pub async fn for_store(
        store: &Store,
        management: Management,
        vhost: String,
    ) -> Result<BrokerCleanup, AdminError> {
        let deployment = store
            .setting("deployment_id")
            .await?
            .and_then(|text| Deployment::parse(&text))
            .ok_or(AdminError::NoDeployment)?;
        if !management.vhost_is(&vhost, &deployment).await? {
            return Err(AdminError::WrongVhost { vhost, deployment });
        }
        Ok(BrokerCleanup {
            management,
            vhost,
            deployment,
        })
    }

    /// Deletes the broker accounts whose passwords `revocation` changed, and the queues
    /// of the endpoints it locked (their waiting tasks failed; what is left on them is
    /// users' code and arguments that will never run). RabbitMQ closes the accounts' open
    /// connections with them; the service makes them again, with the new passwords,
    /// when a valid credential next asks.
    pub async fn remove_revoked(&self, revocation: &Revocation) -> Result<usize, AdminError> {
        for endpoint in &revocation.locked {
            for queue in [task_queue(*endpoint), command_queue(*endpoint)] {
                self.management.delete_queue(&self.vhost, &queue).await?;
            }
        }
        let accounts = revocation
            .identities
            .iter()
            .map(|id| self.deployment.user_account(*id))
            .chain(
                revocation
                    .endpoints
                    .iter()
                    .map(|id| self.deployment.endpoint_account(*id)),
            )
            .collect::<Vec<_>>();
        for account in &accounts {
            self.management.delete_account(account).await?;
        }
        Ok(accounts.len())
    }

    /// The clean-up of a running service's own deployment (for `DELETE
    /// /v2/endpoints/{id}`), whose virtual host it claimed at start.
    pub fn for_service(state: &crate::state::AppState) -> BrokerCleanup {
        BrokerCleanup {
            management: state.management.clone(),
            vhost: state.settings.vhost.clone(),
            deployment: state.settings.deployment.clone(),
        }
    }

    /// Deletes what an endpoint had on the broker: its queue (a multi-user endpoint's
    /// command queue, any other's task queue) and its account, which closes the
    /// account's connections. Either may be gone already.
    pub async fn remove_endpoint(
        &self,
        endpoint_id: Uuid,
        multi_user: bool,
    ) -> Result<(), BrokerError> {
        let queue = if multi_user {
            command_queue(endpoint_id)
        } else {
            task_queue(endpoint_id)
        };
        self.management.delete_queue(&self.vhost, &queue).await?;
        self.management
            .delete_account(&self.deployment.endpoint_account(endpoint_id))
            .await
    }

    /// Deletes an endpoint (and its user endpoints) from the database, failing their
    /// unfinished tasks (a running service forwards those failures to the submitters),
    /// then their queues and broker accounts. Returns the removed endpoint ids.
    pub async fn delete_endpoint(
        &self,
        store: &Store,
        endpoint: &EndpointRecord,
    ) -> Result<(Vec<Uuid>, usize), AdminError> {
        let (removed, failed) = store
            .delete_endpoint(
                endpoint.endpoint_id,
                crate::dispatch::ENDPOINT_DELETED_CODE,
                &format!(
                    "the endpoint {} was deleted by the administrator before the task ran",
                    endpoint.endpoint_id
                ),
            )
            .await?;
        // The removed ids come from the deletion's own transaction: the endpoint and
        // every user endpoint it had then.
        for id in &removed {
            let multi_user = *id == endpoint.endpoint_id && endpoint.multi_user;
            self.remove_endpoint(*id, multi_user).await?;
        }
        Ok((removed, failed.len()))
    }
}
