//! Broker accounts of users and endpoints, set up when a credential asks for them, and
//! why a revocation that races a set-up cannot bring a revoked password back.
//!
//! A broker password derives from the master secret and a salt in the database (see
//! `gantry-broker-accounts`' `credentials`). A request reads the salt (a user's with
//! the token it authenticated, an endpoint's with its row), then sets the account up
//! with the password of that salt through the management API. An administrator's
//! revocation (`gantry-service admin revoke-*`, another process) does the reverse:
//! it commits a new salt, then deletes the account. Were nothing checked, a request
//! that read the old salt just before the revocation and reached the management API
//! just after the deletion would make the account again, with the old password: a
//! login the administrator revoked, working again.
//!
//! So a set-up reads the holder's salt again right after it set the account up
//! ([`AppState::provision_account`]). Both sides write before they read: the
//! revocation commits, then deletes; the set-up puts, then reads. If the set-up's read
//! still finds the old salt, the revocation had not committed yet, so its deletion
//! comes after the put and removes the account. If the read finds another salt (or a
//! deleted endpoint, or a revoked client), the set-up deletes the account itself and
//! fails the request with [`ProvisionError::Revoked`]; the client asks again, and then
//! authenticates afresh (a revoked credential gets 401; a valid one, the new password).
//! (Reading the salt before the put as well would not close the window, which lies
//! between that read and the put; the read after it does.)
//!
//! Set-ups of one account take turns within this process (one lock per account), so a
//! stale request's deletion cannot remove an account that a valid request is setting
//! up at the same moment behind its back: the valid one either finishes first (and the
//! stale one's deletion also forgets it, so the next request sets it up again) or
//! starts after the deletion.

use std::collections::HashSet;
use std::sync::Arc;

use gantry_broker::BrokerError;
use gantry_broker::layout::{Deployment, Permissions, endpoint_permissions, user_permissions};
use gantry_store::StoreError;
use uuid::Uuid;

use crate::state::AppState;

/// Whose broker account: it names the account and its permissions, and says where the
/// salt of its password is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountHolder {
    /// A user's result login (`GET /v2/get_amqp_result_connection_url`): it reads the
    /// queues of the user's task groups. Its salt is the identity's.
    User(Uuid),
    /// An endpoint's login (a plain endpoint, a multi-user one, or a user endpoint).
    /// Its salt is the endpoint's, and it has none once the endpoint is deleted or its
    /// client (the MEP's, for a user endpoint) is revoked.
    Endpoint {
        /// The endpoint.
        endpoint_id: Uuid,
        /// Whether it is a multi-user endpoint (it reads its command queue, not a task
        /// queue).
        multi_user: bool,
    },
}

impl AccountHolder {
    /// The account's name in `deployment`.
    pub fn account(&self, deployment: &Deployment) -> String {
        match *self {
            AccountHolder::User(identity) => deployment.user_account(identity),
            AccountHolder::Endpoint { endpoint_id, .. } => deployment.endpoint_account(endpoint_id),
        }
    }

    /// What the account may do.
    pub fn permissions(&self) -> Permissions {
        match *self {
            AccountHolder::User(identity) => user_permissions(identity),
            AccountHolder::Endpoint {
                endpoint_id,
                multi_user,
            } => endpoint_permissions(endpoint_id, multi_user),
        }
    }

    /// The salt the holder's password has now, or `None` when it should have no
    /// account (a deleted identity or endpoint, an endpoint of a revoked client).
    async fn current_salt(&self, state: &AppState) -> Result<Option<String>, StoreError> {
        match *self {
            AccountHolder::User(identity) => Ok(state
                .store
                .identity(identity)
                .await?
                .map(|identity| identity.broker_salt)),
            AccountHolder::Endpoint { endpoint_id, .. } => {
                state.store.endpoint_account_salt(endpoint_id).await
            }
        }
    }
}

/// Why a broker account could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The management API or the broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The credentials changed while the request ran: the salt it read is no longer
    /// the holder's (a revocation), or the holder should have no account (a deleted
    /// endpoint, a revoked client). Nothing is left set up with the old password.
    #[error(
        "the broker credentials of {account} were revoked or replaced while this request \
         ran"
    )]
    Revoked {
        /// The account.
        account: String,
    },
}

/// The salts one account was set up with since this process started, behind the lock
/// that its set-ups take turns on.
pub type AccountSalts = Arc<tokio::sync::Mutex<HashSet<String>>>;

impl AppState {
    fn account_salts(&self, account: &str) -> AccountSalts {
        self.provisioned
            .lock()
            .expect("the account map is never poisoned: no code panics holding it")
            .entry(account.to_owned())
            .or_default()
            .clone()
    }

    /// Sets up `holder`'s broker account with exactly its permissions and the password
    /// of `salt`, the salt the caller read with the credential that asked (once per
    /// process and salt: passwords derive from the salt, so an account once set up
    /// stays valid until its salt changes). Fails with [`ProvisionError::Revoked`],
    /// leaving no account with that password, when the salt is no longer the holder's
    /// by the time the account is made (see the module's documentation).
    pub async fn provision_account(
        &self,
        holder: AccountHolder,
        salt: &str,
    ) -> Result<(), ProvisionError> {
        let account = holder.account(&self.settings.deployment);
        let salts = self.account_salts(&account);
        let mut salts = salts.lock().await;
        if salts.contains(salt) {
            return Ok(());
        }
        let password = gantry_broker_accounts::credentials::account_password(
            &self.settings.broker_secret,
            &account,
            salt,
        );
        self.management
            .put_account(
                &self.settings.deployment,
                &self.settings.vhost,
                &account,
                &password,
                &holder.permissions(),
            )
            .await?;
        // Read again, after the put: a revocation not yet committed by this read
        // deletes the account after it (it deletes once it has committed); one
        // committed by then shows here, and this deletes the account itself.
        let current = holder.current_salt(self).await;
        if matches!(&current, Ok(Some(current)) if current == salt) {
            salts.insert(salt.to_owned());
            return Ok(());
        }
        // Changed, or unknown (the database failed): no password that may be revoked
        // is left working.
        salts.clear();
        if let Err(error) = self.management.delete_account(&account).await {
            tracing::error!(
                %error, %account,
                "a broker account was set up with a password that was revoked meanwhile, \
                 and could not be deleted again; delete it (rabbitmqctl delete_user), or \
                 run the administrator's revoke command again"
            );
            return Err(error.into());
        }
        tracing::warn!(%account, "credentials changed while their broker account was set up; it was deleted again");
        current?;
        Err(ProvisionError::Revoked { account })
    }

    /// Forgets that an account was set up, whatever its salt (it was deleted).
    pub fn forget_account(&self, account: &str) {
        self.provisioned
            .lock()
            .expect("the account map is never poisoned: no code panics holding it")
            .remove(account);
    }
}
