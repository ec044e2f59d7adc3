//! `gantry-service`: serve the API, or administer users and endpoint clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gantry_service::http_server::HttpLimits;
use gantry_service::logging;
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
    /// Manage users, tokens and endpoint clients (prints JSON).
    Admin {
        #[command(flatten)]
        database: DatabaseArg,
        #[command(subcommand)]
        action: AdminAction,
    },
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
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set; pass --database-url")?;
        let dir = home.join(".gantry");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(format!("sqlite://{}", dir.join("service.db").display()))
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    #[command(flatten)]
    database: DatabaseArg,
    /// The service's AMQP URL (an account that may configure the vhost); the path names
    /// the vhost (%2f for "/").
    #[arg(
        long,
        env = "GANTRY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// RabbitMQ's management API, used to create per-endpoint and per-user accounts.
    #[arg(
        long,
        env = "GANTRY_AMQP_ADMIN_URL",
        default_value = "http://guest:guest@127.0.0.1:15672"
    )]
    amqp_admin_url: String,
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
    /// How long endpoint access tokens stay valid, in seconds.
    #[arg(long, default_value_t = 172_800)]
    client_token_lifetime_s: i64,
    /// How long a user endpoint's tasks may wait, its start unanswered, before the
    /// service asks its multi-user endpoint again to start it, in seconds.
    #[arg(long, default_value_t = 60)]
    start_retry_after_s: u64,
    #[command(flatten)]
    http: HttpArgs,
}

/// How many HTTP connections the service holds, and for how long (see "Limits and
/// timeouts" in the README).
#[derive(Args)]
struct HttpArgs {
    /// The most HTTP connections served at once; further clients wait in the kernel's
    /// listen queue until one closes. Lowered to what the open-files limit allows: the
    /// service raises its soft limit to the hard one at start and keeps 64 descriptors
    /// for the database, the broker and the management API (for more, raise the hard
    /// limit: `ulimit -Hn`, or systemd's LimitNOFILE=).
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
}

impl HttpArgs {
    fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(self.http_header_timeout_s),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_s),
            body_timeout: Duration::from_secs(self.http_body_timeout_s),
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
    /// Create a confidential client for an endpoint; prints {"client_id","client_secret"}.
    /// Give these to the endpoint as GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET.
    AddEndpointClient {
        /// A name for the client, e.g. the site's name.
        name: String,
    },
    /// List users and their number of active tokens.
    ListUsers,
    /// Revoke one token, or every token of a user or client with --user.
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

async fn admin(database: &DatabaseArg, action: AdminAction) -> anyhow::Result<serde_json::Value> {
    let url = database.url()?;
    let store = Store::connect(&url)
        .await
        .context("cannot open the database")?;
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
            if !store.revoke_token(&token).await? {
                anyhow::bail!("no active token matches; it may be revoked already");
            }
            json!({"revoked": 1})
        }
        AdminAction::RevokeToken {
            user: Some(user), ..
        } => {
            json!({"revoked": store.revoke_tokens_of(&user).await?})
        }
        AdminAction::RevokeToken { .. } => anyhow::bail!("give a token or --user"),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin { database, action } => admin(&database, action).await.map(|value| {
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
        amqp_url: args.amqp_url,
        amqp_admin_url: args.amqp_admin_url,
        public_amqp_url: args.public_amqp_url,
        max_body_bytes: args.max_body_mb.saturating_mul(1024 * 1024),
        client_token_lifetime_s: args.client_token_lifetime_s,
        start_retry_after: std::time::Duration::from_secs(args.start_retry_after_s.max(1)),
    };
    let limits = Limits {
        max_submit_expanded_bytes: args.max_submit_expanded_mb.saturating_mul(1024 * 1024),
        http: args.http.limits(),
    };
    start_with_limits(config, limits)
        .await?
        .run_until_signalled()
        .await;
    Ok(())
}
