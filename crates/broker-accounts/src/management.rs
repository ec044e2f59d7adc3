//! RabbitMQ's management HTTP API: the real mechanism by which the service gives every
//! endpoint and user broker credentials that reach only their own queues.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use gantry_broker::BrokerError;
pub use gantry_broker::layout::Permissions;
use gantry_broker::layout::{DEPLOYMENT_TAG_PREFIX, Deployment};

/// A client for the management API at a base URL such as `http://guest:guest@127.0.0.1:15672`.
#[derive(Debug, Clone)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

fn segment(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

impl Management {
    /// Parses `http://user:password@host:port`; credentials default to guest/guest.
    pub fn new(url: &str) -> Result<Management, BrokerError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| BrokerError::Config(format!("bad management URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BrokerError::Config(format!(
                "the management URL {url:?} must be http:// or https://"
            )));
        }
        let user = match parsed.username() {
            "" => "guest".to_owned(),
            u => percent_encoding::percent_decode_str(u)
                .decode_utf8_lossy()
                .into_owned(),
        };
        let password = parsed
            .password()
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_else(|| "guest".to_owned());
        let host = parsed
            .host_str()
            .ok_or_else(|| BrokerError::Config(format!("no host in {url:?}")))?;
        let port = parsed.port_or_known_default().unwrap_or(15672);
        Ok(Management {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(15))
                .build()
                .map_err(|e| BrokerError::Config(format!("HTTP client: {e}")))?,
            base: format!("{}://{host}:{port}/api", parsed.scheme()),
            user,
            password,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, BrokerError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| BrokerError::Management {
            action: format!("{method} {path}"),
            detail: format!(
                "cannot reach RabbitMQ's management API at {}: {e}",
                self.base
            ),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && method == reqwest::Method::DELETE {
            return Ok(None);
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(BrokerError::Management {
                action: format!("{method} {path}"),
                detail: format!("{status}: {}", text.chars().take(300).collect::<String>()),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BrokerError::Management {
                action: format!("{method} {path}"),
                detail: e.to_string(),
            })?;
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Creates the virtual host if missing and gives the management user full rights on it.
    pub async fn ensure_vhost(&self, vhost: &str) -> Result<(), BrokerError> {
        self.send(
            reqwest::Method::PUT,
            &format!("/vhosts/{}", segment(vhost)),
            None,
        )
        .await?;
        self.grant_vhost(vhost).await
    }

    /// Creates the virtual host if missing and marks it as `deployment`'s, unless it is
    /// another Gantry deployment's: two deployments in one virtual host would consume
    /// each other's results and heartbeats (the queue names are the protocol's), so the
    /// second is refused with a message that says to give it its own virtual host.
    /// Checked again after marking, so that of two deployments starting at once on a
    /// fresh virtual host only one goes on.
    pub async fn claim_vhost(
        &self,
        vhost: &str,
        deployment: &Deployment,
    ) -> Result<(), BrokerError> {
        let path = format!("/vhosts/{}", segment(vhost));
        let (description, mut tags) = match self.get(&path).await? {
            Some(existing) => (
                existing
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                tags_of(&existing),
            ),
            None => (String::new(), Vec::new()),
        };
        let foreign = |tags: &[String]| {
            tags.iter()
                .find(|t| t.starts_with(DEPLOYMENT_TAG_PREFIX) && **t != deployment.tag())
                .cloned()
        };
        if let Some(other) = foreign(&tags) {
            return Err(foreign_vhost(vhost, &other));
        }
        if !tags.contains(&deployment.tag()) {
            tags.push(deployment.tag());
            let description = if description.is_empty() {
                format!("Gantry deployment {deployment}")
            } else {
                description
            };
            self.send(
                reqwest::Method::PUT,
                &path,
                Some(json!({"description": description, "tags": tags.join(",")})),
            )
            .await?;
            let marked = self
                .get(&path)
                .await?
                .map(|v| tags_of(&v))
                .unwrap_or_default();
            if let Some(other) = foreign(&marked) {
                return Err(foreign_vhost(vhost, &other));
            }
        }
        self.grant_vhost(vhost).await
    }

    /// Gives the management user full rights on the virtual host.
    async fn grant_vhost(&self, vhost: &str) -> Result<(), BrokerError> {
        self.send(
            reqwest::Method::PUT,
            &format!("/permissions/{}/{}", segment(vhost), segment(&self.user)),
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await?;
        Ok(())
    }

    /// Deletes a virtual host and everything in it (tests use one each).
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), BrokerError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/vhosts/{}", segment(vhost)),
            None,
        )
        .await?;
        Ok(())
    }

    /// The accounts that hold permissions on `vhost`.
    async fn accounts_on(&self, vhost: &str) -> Result<Vec<String>, BrokerError> {
        let permissions = self
            .get(&format!("/vhosts/{}/permissions", segment(vhost)))
            .await?;
        Ok(match permissions {
            Some(serde_json::Value::Array(entries)) => entries
                .iter()
                .filter_map(|entry| entry.get("user")?.as_str())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Deletes the accounts in the unscoped form of Gantry versions before deployments
    /// had ids ([`gantry_broker::layout::is_unscoped_account`]) that hold permissions on
    /// `vhost`, which closes their connections; returns how many went. Their passwords
    /// never changed, so whoever once saw one would keep it through any revocation.
    pub async fn delete_unscoped_accounts(&self, vhost: &str) -> Result<usize, BrokerError> {
        let unscoped: Vec<String> = self
            .accounts_on(vhost)
            .await?
            .into_iter()
            .filter(|user| gantry_broker::layout::is_unscoped_account(user))
            .collect();
        for account in &unscoped {
            self.delete_account(account).await?;
        }
        Ok(unscoped.len())
    }

    /// Whether `vhost` exists and carries `deployment`'s tag (see
    /// [`Management::claim_vhost`]): what an administrator's command checks before it
    /// cleans up, so that a wrong `--amqp-url` is an error rather than a clean-up of
    /// nothing that reports success.
    pub async fn vhost_is(
        &self,
        vhost: &str,
        deployment: &Deployment,
    ) -> Result<bool, BrokerError> {
        Ok(self
            .get(&format!("/vhosts/{}", segment(vhost)))
            .await?
            .is_some_and(|v| tags_of(&v).contains(&deployment.tag())))
    }

    /// Deletes a virtual host together with the endpoint and user accounts the service
    /// provisioned in it (the accounts live outside the vhost, so deleting the vhost
    /// alone would leave them behind). Operator accounts are left alone.
    pub async fn delete_vhost_and_accounts(&self, vhost: &str) -> Result<(), BrokerError> {
        for account in self.accounts_on(vhost).await? {
            if gantry_broker::layout::is_provisioned_account(&account) {
                self.delete_account(&account).await?;
            }
        }
        self.delete_vhost(vhost).await
    }

    /// Makes the queues of `vhost` whose names match `pattern` expire once unused for
    /// `expires` (no consumer, no declaration, no `basic.get`), through the operator
    /// policy `name`; `None` removes the policy, so they never expire.
    ///
    /// A policy, rather than an `x-expires` argument at declaration: it applies to
    /// queues declared before it (by an earlier version, or under another expiry), and
    /// changing it changes them all, whereas redeclaring a queue with other arguments
    /// fails with `PRECONDITION_FAILED` and closes the channel. An operator policy,
    /// rather than a plain one, so that it adds to an operator's own policies on those
    /// queues instead of replacing them (RabbitMQ applies one plain policy per queue;
    /// for `expires` set by both, the lower wins). Needs the `administrator` tag, which
    /// creating accounts needs too.
    pub async fn set_queue_expiry(
        &self,
        vhost: &str,
        name: &str,
        pattern: &str,
        expires: Option<std::time::Duration>,
    ) -> Result<(), BrokerError> {
        let path = format!("/operator-policies/{}/{}", segment(vhost), segment(name));
        let Some(expires) = expires else {
            self.send(reqwest::Method::DELETE, &path, None).await?;
            return Ok(());
        };
        // RabbitMQ takes a whole number of milliseconds, at least 1.
        let expires_ms = u64::try_from(expires.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.send(
            reqwest::Method::PUT,
            &path,
            Some(json!({
                "pattern": pattern,
                "apply-to": "queues",
                "priority": 0,
                "definition": {"expires": expires_ms},
            })),
        )
        .await?;
        Ok(())
    }

    /// Creates or updates an account of `deployment` (tagged with its tag, which grants
    /// nothing: the account can only speak AMQP) and sets exactly `permissions` on
    /// `vhost`. An existing account without the tag is someone else's: it is left as it
    /// is and the call fails, so that no client-chosen id can ever make this service
    /// reset a password it did not set.
    pub async fn put_account(
        &self,
        deployment: &Deployment,
        vhost: &str,
        user: &str,
        password: &str,
        permissions: &Permissions,
    ) -> Result<(), BrokerError> {
        let path = format!("/users/{}", segment(user));
        if let Some(existing) = self.get(&path).await?
            && !tags_of(&existing).contains(&deployment.tag())
        {
            return Err(BrokerError::NotOurs(format!(
                "the RabbitMQ account {user:?} exists and is not Gantry deployment \
                 {deployment}'s (it lacks the tag {}); it was left unchanged",
                deployment.tag()
            )));
        }
        self.send(
            reqwest::Method::PUT,
            &path,
            Some(json!({"password": password, "tags": deployment.tag()})),
        )
        .await?;
        self.send(
            reqwest::Method::PUT,
            &format!("/permissions/{}/{}", segment(vhost), segment(user)),
            Some(json!({
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            })),
        )
        .await?;
        for (exchange, write) in &permissions.topic_write {
            self.send(
                reqwest::Method::PUT,
                &format!("/topic-permissions/{}/{}", segment(vhost), segment(user)),
                Some(json!({"exchange": exchange, "write": write, "read": "^$"})),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes an account; a missing one is not an error. RabbitMQ closes the
    /// account's open connections with it (`CONNECTION_FORCED`), so a revoked login
    /// stops at once, not at its next reconnect.
    pub async fn delete_account(&self, user: &str) -> Result<(), BrokerError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/users/{}", segment(user)),
            None,
        )
        .await?;
        Ok(())
    }

    /// Deletes a queue of `vhost`; a missing one is not an error.
    pub async fn delete_queue(&self, vhost: &str, queue: &str) -> Result<(), BrokerError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/queues/{}/{}", segment(vhost), segment(queue)),
            None,
        )
        .await?;
        Ok(())
    }

    /// A resource's JSON, or `None` when it does not exist.
    async fn get(&self, path: &str) -> Result<Option<serde_json::Value>, BrokerError> {
        match self.send(reqwest::Method::GET, path, None).await {
            Ok(value) => Ok(value),
            Err(BrokerError::Management { detail, .. }) if detail.starts_with("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the account exists.
    pub async fn account_exists(&self, user: &str) -> Result<bool, BrokerError> {
        Ok(self
            .get(&format!("/users/{}", segment(user)))
            .await?
            .is_some())
    }
}

/// The tags of a user or virtual host as the management API shows them (a list, or a
/// comma-separated string in older versions).
fn tags_of(resource: &serde_json::Value) -> Vec<String> {
    match resource.get("tags") {
        Some(serde_json::Value::Array(tags)) => tags
            .iter()
            .filter_map(|t| t.as_str())
            .map(str::to_owned)
            .collect(),
        Some(serde_json::Value::String(tags)) => tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn foreign_vhost(vhost: &str, tag: &str) -> BrokerError {
    BrokerError::NotOurs(format!(
        "the RabbitMQ virtual host {vhost:?} belongs to another Gantry deployment ({tag}); \
         two deployments cannot share one (they would consume each other's results): give \
         this one its own, e.g. --amqp-url amqp://USER:PASSWORD@HOST:5672/gantry-2"
    ))
}
