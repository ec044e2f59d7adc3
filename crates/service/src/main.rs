//! `gantry-service`: serve the API, or administer users and endpoint clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gantry_broker_accounts::management::Management;
use gantry_service::admin::BrokerCleanup;
use gantry_service::http_server::HttpLimits;
use gantry_service::logging;
use gantry_service::master_secret::MasterSecretSource;
use gantry_service::quotas::{self, Quotas};
use gantry_service::server::{Limits, ServeConfig, start_with_limits};
use gantry_store::Store;
use serde_json::json;

/// Gantry's web service: the Globus Compute REST API over RabbitMQ, with SQLite or
/// PostgreSQL for durable state.
#[derive(Parser)]
#[command(name = "gantry-service", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and route tasks (the default SDK environment "local" expects
    /// http://localhost:5000).
    Serve(ServeArgs),
    /// Manage users, tokens, clients and endpoints (prints JSON). Commands that revoke
    /// or delete also remove the RabbitMQ accounts the credentials could open, through
    /// the management API (--amqp-url, --amqp-admin-url as for serve).
    Admin {
        #[command(flatten)]
        database: DatabaseArg,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Args)]
struct BrokerArgs {
    /// The service's AMQP URL (an account that may configure the vhost); the path names
    /// the vhost (%2f for "/").
    #[arg(
        long,
        env = "GANTRY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    amqp_url: String,
    /// RabbitMQ's management API, used to create (and on revocation remove)
    /// per-endpoint and per-user accounts.
    #[arg(
        long,
        env = "GANTRY_AMQP_ADMIN_URL",
        default_value = "http://guest:guest@127.0.0.1:15672",
        global = true
    )]
    amqp_admin_url: String,
}

#[derive(Args)]
struct DatabaseArg {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    /// [default: sqlite://~/.gantry/service.db]
    #[arg(long, env = "GANTRY_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

impl DatabaseArg {
    fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        Ok(format!(
            "sqlite://{}",
            private_gantry_dir()?.join("service.db").display()
        ))
    }
}

/// `~/.gantry`, made 0700 if missing, and made private if it was not: it holds the
/// database and the broker key file.
fn private_gantry_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; pass --database-url and --broker-key-file")?;
    let dir = home.join(".gantry");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        tracing::warn!(dir = %dir.display(), "made the folder private (it was {mode:04o}, now 0700)");
    }
    Ok(dir)
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    #[command(flatten)]
    database: DatabaseArg,
    #[command(flatten)]
    broker: BrokerArgs,
    /// The file holding the secret every broker password is derived from. It is made
    /// (0600, with a random secret) for a new database; if it is missing for a database
    /// already set up with a secret, the service refuses to start (see
    /// --new-broker-secret). Back it up with the database. GANTRY_BROKER_SECRET, when
    /// set, is used instead of any file. [default: ~/.gantry/broker.key]
    #[arg(long, env = "GANTRY_BROKER_KEY_FILE")]
    broker_key_file: Option<PathBuf>,
    /// Make a new key file with a new secret although the database was set up with
    /// another: for a key file that was lost. Every endpoint and user then gets a new
    /// broker password (restart the endpoints). Refused when the key file exists.
    #[arg(long)]
    new_broker_secret: bool,
    /// The broker's address as endpoints and SDKs reach it, e.g. amqp://broker.example.org:5672
    /// [default: the host and port of --amqp-url]
    #[arg(long, env = "GANTRY_PUBLIC_AMQP_URL")]
    public_amqp_url: Option<String>,
    /// The largest request body accepted, in MiB.
    #[arg(long, default_value_t = 64)]
    max_body_mb: usize,
    /// The most task messages one submit may make, in MiB: each task carries its
    /// function's code and its payload, so a large function times many tasks multiplies.
    #[arg(long, default_value_t = 1024)]
    max_submit_expanded_mb: usize,
    /// How long client-credentials access tokens (of endpoint and user clients) stay
    /// valid, in seconds.
    #[arg(long, default_value_t = 172_800)]
    client_token_lifetime_s: i64,
    /// How long a user endpoint's tasks may wait, its start unanswered, before the
    /// service asks its multi-user endpoint again to start it, in seconds.
    #[arg(long, default_value_t = 60)]
    start_retry_after_s: u64,
    /// The most user endpoint configurations one user may have on one multi-user
    /// endpoint. Each distinct user_endpoint_config (with the user's Python version)
    /// makes a user endpoint for good: a broker account, a queue, and a process the
    /// endpoint starts as the user. Past it, a submit with a new configuration gets 429
    /// TOO_MANY_USER_ENDPOINT_CONFIGS; configurations used before still work. 0: no limit.
    #[arg(long, env = "GANTRY_MAX_USER_ENDPOINT_CONFIGS", default_value_t = quotas::DEFAULT_MAX_USER_ENDPOINT_CONFIGS)]
    max_user_endpoint_configs: u64,
    /// The most live task groups one user may have: groups with unfinished tasks, or
    /// whose result queue may still exist (see --result-queue-expiry-s). Past it, a
    /// submit that starts another gets 429 TOO_MANY_LIVE_TASK_GROUPS. 0: no limit.
    #[arg(long, env = "GANTRY_MAX_LIVE_TASK_GROUPS", default_value_t = quotas::DEFAULT_MAX_LIVE_TASK_GROUPS)]
    max_live_task_groups: u64,
    /// The most tasks one user may have in flight (submitted, not yet finished). Past
    /// it, a submit gets 429 TOO_MANY_TASKS_IN_FLIGHT. 0: no limit.
    #[arg(long, env = "GANTRY_MAX_TASKS_IN_FLIGHT", default_value_t = quotas::DEFAULT_MAX_TASKS_IN_FLIGHT)]
    max_tasks_in_flight: u64,
    /// How long a task group's result queue may go unconsumed before RabbitMQ deletes
    /// it, in seconds (a policy the service sets at start, so it covers existing queues
    /// too). Results stay in the database: the SDK fetches them over REST. 0: never.
    #[arg(long, env = "GANTRY_RESULT_QUEUE_EXPIRY_S", default_value_t = quotas::DEFAULT_RESULT_QUEUE_EXPIRY_S)]
    result_queue_expiry_s: u64,
    #[command(flatten)]
    http: HttpArgs,
}

/// How many HTTP connections the service holds, and for how long (see "Limits and
/// timeouts" in the README).
#[derive(Args)]
struct HttpArgs {
    /// The most HTTP connections served at once. At the cap the service takes one more
    /// client and makes room for it by closing the connection idle the longest (HTTP
    /// clients open it again); further clients wait in the kernel's listen queue.
    /// Lowered to what the open-files limit allows: the service raises its soft limit
    /// to the hard one at start and keeps 64 descriptors for the database, the broker
    /// and the management API (for more, raise the hard limit: `ulimit -Hn`, or
    /// systemd's LimitNOFILE=).
    #[arg(long, env = "GANTRY_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds a client has to send a whole request head (request line and headers),
    /// counted from connecting, or from its first byte after a pause; a connection
    /// that is slower is closed.
    #[arg(long, env = "GANTRY_HTTP_HEADER_TIMEOUT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout_s: u64,
    /// Seconds a kept-alive connection may sit with no request in flight, or a client
    /// may leave its answer unread, before the service closes it.
    #[arg(long, env = "GANTRY_HTTP_IDLE_TIMEOUT_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    http_idle_timeout_s: u64,
    /// Seconds a request body has to arrive whole, counted from the end of its head; a
    /// slower one gets 408 and its connection is closed. Keep it long enough for
    /// --max-body-mb over your clients' slowest link (64 MiB in 120 s is 4.5 Mbit/s).
    #[arg(long, env = "GANTRY_HTTP_BODY_TIMEOUT_S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    http_body_timeout_s: u64,
    /// Seconds a client has to take one whole answer, counted from when it is ready; a
    /// client still reading then is disconnected mid-answer (a slow reader cannot hold
    /// its connection for ever). Keep it long enough for your largest results over your
    /// clients' slowest link (10 MiB in 300 s is 280 kbit/s).
    #[arg(long, env = "GANTRY_HTTP_ANSWER_TIMEOUT_S", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    http_answer_timeout_s: u64,
}

impl HttpArgs {
    fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(self.http_header_timeout_s),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_s),
            body_timeout: Duration::from_secs(self.http_body_timeout_s),
            answer_timeout: Duration::from_secs(self.http_answer_timeout_s),
        }
    }
}

#[derive(Subcommand)]
enum AdminAction {
    /// Create a user; prints {"identity_id","username","token"}. The token is shown once.
    AddUser {
        /// The username, e.g. alice@example.org (what the MEP's identity mapping sees).
        username: String,
    },
    /// Issue another token for an existing user; prints {"identity_id","username","token"}.
    IssueToken {
        /// The user's name.
        username: String,
    },
    /// Create a confidential client for an endpoint; prints
    /// {"client_id","client_secret","name"}. Give these to the endpoint as
    /// GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET.
    AddEndpointClient {
        /// A name for the client, e.g. the site's name.
        name: String,
    },
    /// Create a client whose tokens act as a user, for scripts that sign in on their own
    /// (the SDK reads GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET);
    /// prints {"client_id","client_secret","name","acts_as"}. The secret is shown once.
    AddUserClient {
        /// The user the client acts as.
        username: String,
    },
    /// List endpoint and user clients: id, name, whom a user client acts as, whether
    /// revoked, working tokens, endpoints registered.
    ListClients,
    /// Revoke a client (by id or name): its secret mints no more tokens, its tokens stop
    /// working, its endpoints are locked (their waiting tasks fail with a message that
    /// says so) and their RabbitMQ accounts are removed, which closes their connections.
    /// For a user client, the user's result login gets a new password too. Safe to run
    /// again.
    RevokeClient {
        /// The client's id or name.
        client: String,
    },
    /// Delete an endpoint (and, for a multi-user endpoint, its user endpoints): their
    /// waiting tasks fail with a message that says so, their queues and RabbitMQ
    /// accounts go. Finished tasks and results stay readable.
    DeleteEndpoint {
        /// The endpoint's id.
        endpoint_id: uuid::Uuid,
    },
    /// List users and their number of active tokens.
    ListUsers,
    /// Revoke one token, or every token of a user or client with --user. Revoking a
    /// user's token also gives the user's RabbitMQ result login a new password (the
    /// token could have fetched it); the user's other sessions reconnect with their own
    /// tokens. Revoking an endpoint client's token gives its endpoints (and their user
    /// endpoints) new broker passwords; the endpoint registers again with its secret.
    RevokeToken {
        /// The token to revoke.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        token: Option<String>,
        /// Revoke every token of this user (or client).
        #[arg(long)]
        user: Option<String>,
    },
}

/// Logs to stderr as `GANTRY_LOG` selects (see `gantry_service::logging`); a filter that
/// does not parse falls back to the default, and says so.
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("GANTRY_LOG").ok();
    let (layer, refused) = match logging::layer(spec.as_deref(), std::io::stderr) {
        Ok(layer) => (layer, None),
        Err(error) => (
            logging::layer(None, std::io::stderr).expect("the default filter parses"),
            Some(error),
        ),
    };
    tracing_subscriber::registry().with(layer).init();
    if let Some(error) = refused {
        tracing::warn!(%error, "GANTRY_LOG does not parse; logging with the default filter");
    }
}

async fn admin(
    database: &DatabaseArg,
    broker: &BrokerArgs,
    action: AdminAction,
) -> anyhow::Result<serde_json::Value> {
    let url = database.url()?;
    let store = Store::connect(&url)
        .await
        .context("cannot open the database")?;
    let cleanup = || async {
        let management = Management::new(&broker.amqp_admin_url)?;
        let vhost = gantry_service::server::vhost_of(&broker.amqp_url)?;
        anyhow::Ok(BrokerCleanup::for_store(&store, management, vhost).await?)
    };
    Ok(match action {
        AdminAction::AddUser { username } => {
            if username.trim().is_empty() {
                anyhow::bail!("the username must not be empty");
            }
            let (identity, token) = store.add_user(&username).await?;
            json!({"identity_id": identity.identity_id, "username": identity.username, "token": token})
        }
        AdminAction::IssueToken { username } => {
            let (identity, token) = store.issue_user_token(&username).await?;
            json!({"identity_id": identity.identity_id, "username": identity.username, "token": token})
        }
        AdminAction::AddEndpointClient { name } => {
            if name.trim().is_empty() {
                anyhow::bail!("the client name must not be empty");
            }
            let (client, secret) = store.add_endpoint_client(&name).await?;
            json!({"client_id": client.client_id, "client_secret": secret, "name": client.name})
        }
        AdminAction::AddUserClient { username } => {
            let (client, secret) = store.add_user_client(&username).await?;
            json!({
                "client_id": client.client_id,
                "client_secret": secret,
                "name": client.name,
                "acts_as": username,
            })
        }
        AdminAction::ListClients => json!(
            store
                .list_clients()
                .await?
                .iter()
                .map(|summary| json!({
                    "client_id": summary.client.client_id,
                    "name": summary.client.name,
                    "kind": if summary.client.acts_as.is_some() { "user" } else { "endpoint" },
                    "acts_as": summary.acts_as_username,
                    "revoked": summary.client.revoked_at.is_some(),
                    "active_tokens": summary.active_tokens,
                    "endpoints": summary.endpoints,
                }))
                .collect::<Vec<_>>()
        ),
        AdminAction::RevokeClient { client } => {
            // The broker is checked first, so that a wrong --amqp-url changes nothing.
            let cleanup = cleanup().await?;
            let (client, revocation) = store.revoke_client(&client).await?;
            let accounts = cleanup.remove_revoked(&revocation).await?;
            json!({
                "client_id": client.client_id,
                "name": client.name,
                "revoked_tokens": revocation.tokens,
                "locked_endpoints": revocation.endpoints,
                "failed_tasks": revocation.failed_tasks,
                "removed_broker_accounts": accounts,
            })
        }
        AdminAction::DeleteEndpoint { endpoint_id } => {
            let endpoint = store
                .endpoint(endpoint_id)
                .await?
                .with_context(|| format!("no endpoint {endpoint_id}"))?;
            if endpoint.uep.is_some() {
                anyhow::bail!(
                    "{endpoint_id} is a user endpoint; delete its multi-user endpoint, or \
                     let it stop by itself when idle"
                );
            }
            let cleanup = cleanup().await?;
            let (removed, failed) = cleanup.delete_endpoint(&store, &endpoint).await?;
            json!({"removed": removed, "failed_tasks": failed})
        }
        AdminAction::ListUsers => {
            let users = store.list_users().await?;
            json!(
                users
                    .iter()
                    .map(|(identity, tokens)| json!({
                        "identity_id": identity.identity_id,
                        "username": identity.username,
                        "active_tokens": tokens,
                    }))
                    .collect::<Vec<_>>()
            )
        }
        AdminAction::RevokeToken {
            token: Some(token), ..
        } => {
            let cleanup = cleanup().await?;
            let revocation = store
                .revoke_token(&token)
                .await?
                .context("no active token matches; it may be revoked already")?;
            cleanup.remove_revoked(&revocation).await?;
            json!({"revoked": revocation.tokens})
        }
        AdminAction::RevokeToken {
            user: Some(user), ..
        } => {
            let cleanup = cleanup().await?;
            let revocation = store.revoke_tokens_of(&user).await?;
            cleanup.remove_revoked(&revocation).await?;
            json!({"revoked": revocation.tokens})
        }
        AdminAction::RevokeToken { .. } => anyhow::bail!("give a token or --user"),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Whatever the caller's umask, what the service creates (the SQLite database and
    // its journals, the broker key file) is its account's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin {
            database,
            broker,
            action,
        } => admin(&database, &broker, action).await.map(|value| {
            println!("{value:#}");
        }),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gantry-service: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        listen: args.listen,
        database_url: args.database.url()?,
        amqp_url: args.broker.amqp_url,
        amqp_admin_url: args.broker.amqp_admin_url,
        public_amqp_url: args.public_amqp_url,
        max_body_bytes: args.max_body_mb.saturating_mul(1024 * 1024),
        client_token_lifetime_s: args.client_token_lifetime_s,
        start_retry_after: std::time::Duration::from_secs(args.start_retry_after_s.max(1)),
        master_secret: match std::env::var("GANTRY_BROKER_SECRET") {
            Ok(value) if !value.is_empty() => {
                if args.new_broker_secret {
                    anyhow::bail!(
                        "--new-broker-secret makes a new key file, but GANTRY_BROKER_SECRET \
                         is set: change that secret instead"
                    );
                }
                MasterSecretSource::Value(value)
            }
            _ => {
                let path = match args.broker_key_file {
                    Some(path) => path,
                    None => private_gantry_dir()?.join("broker.key"),
                };
                if args.new_broker_secret {
                    MasterSecretSource::NewFile(path)
                } else {
                    MasterSecretSource::File(path)
                }
            }
        },
    };
    let limit = |max: u64| (max > 0).then_some(max);
    let limits = Limits {
        max_submit_expanded_bytes: args.max_submit_expanded_mb.saturating_mul(1024 * 1024),
        quotas: Quotas {
            max_user_endpoint_configs: limit(args.max_user_endpoint_configs),
            max_live_task_groups: limit(args.max_live_task_groups),
            max_tasks_in_flight: limit(args.max_tasks_in_flight),
            result_queue_expiry: limit(args.result_queue_expiry_s)
                .map(std::time::Duration::from_secs),
        },
        http: args.http.limits(),
    };
    start_with_limits(config, limits)
        .await?
        .run_until_signalled()
        .await;
    Ok(())
}
