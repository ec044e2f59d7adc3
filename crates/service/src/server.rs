//! Starting and stopping the service: connect the database and the broker, declare the
//! topology, start the consumers and the outbox, serve HTTP, and on shutdown stop all of
//! them through one watch channel and wait for each.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use gantry_broker::{BrokerError, SharedBroker};
use gantry_broker_accounts::management::Management;
use gantry_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumers::{CONSUMED_QUEUES, run_consumer};
use crate::dispatch::run_outbox;
use crate::http_server::HttpLimits;
use crate::routes::router;
use crate::state::{AppState, ServiceSettings};

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// The service's own AMQP URL (an administrator account), vhost included.
    pub amqp_url: String,
    /// RabbitMQ's management API, for per-endpoint accounts.
    pub amqp_admin_url: String,
    /// The broker as clients reach it (`amqp://host:port`); defaults to `amqp_url`'s host.
    pub public_amqp_url: Option<String>,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of endpoint access tokens, in seconds.
    pub client_token_lifetime_s: i64,
    /// How long a UEP's tasks may wait unanswered before its MEP is asked again to
    /// start it.
    pub start_retry_after: std::time::Duration,
    /// Where the broker master secret comes from (see [`crate::master_secret`]).
    pub master_secret: crate::master_secret::MasterSecretSource,
}

/// Limits on what one request may make the service and the broker hold, beyond
/// [`ServeConfig::max_body_bytes`]; [`start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes of task messages one submit may make. Every task's message carries
    /// its function's code and its payload, so a large function submitted many times
    /// multiplies (a 64 MiB function in 10,000 tasks would be 640 GiB); a submit past
    /// this gets 413 (`--max-submit-expanded-mb`, 1024 MiB by default).
    pub max_submit_expanded_bytes: usize,
    /// What one user may have at once (user endpoints per MEP, live task groups, tasks
    /// in flight), and how long an unused result queue lives.
    pub quotas: crate::quotas::Quotas,
    /// Limits and timeouts of HTTP connections (see [`HttpLimits`]).
    pub http: HttpLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_submit_expanded_bytes: 1024 * 1024 * 1024,
            quotas: crate::quotas::Quotas::default(),
            http: HttpLimits::default(),
        }
    }
}

/// A service running in this process (the binary and the tests use it).
pub struct RunningService {
    /// The address it listens on (with the real port when asked for port 0).
    pub addr: SocketAddr,
    /// Its shared state.
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl RunningService {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the consumers, the outbox and the server to finish
    /// what they have in hand, all within one deadline
    /// ([`crate::timings::STOP_DEADLINE`]); a part still running then is named in the
    /// log and aborted: what it had not settled, the broker redelivers or the outbox
    /// sends after the next start.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + crate::timings::STOP_DEADLINE;
        let _ = self.shutdown.send(true);
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::error!(part = name, "did not stop in time; aborting it");
                task.abort();
            }
        }
        self.state.shared_broker.close().await;
        if tokio::time::timeout_at(deadline, self.state.store.pool().close())
            .await
            .is_err()
        {
            tracing::error!("database connections were not returned in time");
        }
    }

    /// Waits until a shutdown signal (SIGINT/SIGTERM) arrives, then stops.
    pub async fn run_until_signalled(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Why the service could not start. The message never shows a password of the
/// configured URLs, whoever wrote it: the caller prints it, and the service's output is
/// its log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// What failed while starting, before the configured passwords are scrubbed from its
/// message.
#[derive(Debug, thiserror::Error)]
enum StartFailure {
    /// A setting is malformed.
    #[error("{0}")]
    Setting(String),
    /// The database could not be opened.
    #[error("cannot open the database {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: gantry_store::StoreError,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] gantry_store::StoreError),
    /// The broker master secret could not be had.
    #[error(transparent)]
    Secret(#[from] crate::master_secret::MasterSecretError),
    /// A step on the broker failed.
    #[error("{doing}: {source}")]
    Broker {
        doing: &'static str,
        #[source]
        source: BrokerError,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn on_broker(doing: &'static str) -> impl FnOnce(BrokerError) -> StartFailure {
    move |source| StartFailure::Broker { doing, source }
}

/// The vhost named by an AMQP URL's path (`/` when absent).
pub fn vhost_of(amqp_url: &str) -> Result<String, StartError> {
    let parsed = url::Url::parse(amqp_url)
        .map_err(|e| StartError(format!("bad --amqp-url {:?}: {e}", redact_url(amqp_url))))?;
    let path = parsed.path().trim_start_matches('/');
    Ok(if path.is_empty() {
        "/".to_owned()
    } else {
        url::form_urlencoded::parse(format!("v={path}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| path.to_owned())
    })
}

fn public_amqp(config: &ServeConfig) -> Result<(String, String), StartFailure> {
    let source = config
        .public_amqp_url
        .as_deref()
        .unwrap_or(&config.amqp_url);
    let parsed = url::Url::parse(source).map_err(|e| {
        StartFailure::Setting(format!("bad AMQP URL {:?}: {e}", redact_url(source)))
    })?;
    let scheme = parsed.scheme().to_owned();
    let host = parsed
        .host_str()
        .ok_or_else(|| StartFailure::Setting("the AMQP URL has no host".into()))?;
    let port = parsed
        .port()
        .unwrap_or(if scheme == "amqps" { 5671 } else { 5672 });
    Ok((scheme, format!("{host}:{port}")))
}

/// Connects everything and starts serving; returns once the listener is bound. An
/// error never shows a password of the configured URLs (the caller prints it, and the
/// service's output is its log), whoever wrote the message.
pub async fn start(config: ServeConfig) -> Result<RunningService, StartError> {
    start_with_limits(config, Limits::default()).await
}

/// [`start`] with other [`Limits`] than the defaults.
pub async fn start_with_limits(
    config: ServeConfig,
    limits: Limits,
) -> Result<RunningService, StartError> {
    let urls = [
        config.database_url.clone(),
        config.amqp_url.clone(),
        config.amqp_admin_url.clone(),
    ];
    start_configured(config, limits)
        .await
        .map_err(|error| StartError(scrub(error.to_string(), &urls)))
}

async fn start_configured(
    config: ServeConfig,
    limits: Limits,
) -> Result<RunningService, StartFailure> {
    let store = Store::connect(&config.database_url)
        .await
        .map_err(|source| StartFailure::Database {
            url: redact_url(&config.database_url),
            source,
        })?;
    let broker_secret = crate::master_secret::load(&store, &config.master_secret).await?;
    let deployment = deployment_of(&store).await?;
    let vhost = vhost_of(&config.amqp_url).map_err(|e| StartFailure::Setting(e.0))?;
    let management = Management::new(&config.amqp_admin_url)
        .map_err(on_broker("the RabbitMQ management URL"))?;
    management.claim_vhost(&vhost, &deployment).await.map_err(on_broker(
        "cannot set up RabbitMQ through its management API (is the rabbitmq_management plugin enabled?)",
    ))?;
    let unscoped = management
        .delete_unscoped_accounts(&vhost)
        .await
        .map_err(on_broker(
            "cannot remove the broker accounts of an older version",
        ))?;
    if unscoped > 0 {
        tracing::warn!(
            accounts = unscoped,
            "deleted broker accounts an older Gantry made without a deployment id (their \
             passwords could not be revoked); restart the endpoints so that they register \
             again and get new ones"
        );
    }
    crate::quotas::apply_result_queue_expiry(&management, &vhost, limits.quotas.result_queue_expiry)
        .await
        .map_err(on_broker("cannot set the broker policy that expires unused result queues (the management account needs the administrator tag; --result-queue-expiry-s 0 sets none)"))?;
    let shared_broker = SharedBroker::connect(&config.amqp_url)
        .await
        .map_err(on_broker("cannot connect to RabbitMQ"))?;
    let (public_amqp_scheme, public_amqp_authority) = public_amqp(&config)?;
    let state = AppState {
        store,
        shared_broker,
        management,
        settings: Arc::new(ServiceSettings {
            public_amqp_authority,
            public_amqp_scheme,
            vhost,
            broker_secret,
            deployment,
            max_body_bytes: config.max_body_bytes,
            max_submit_expanded_bytes: limits.max_submit_expanded_bytes,
            client_token_lifetime_s: config.client_token_lifetime_s,
            start_retry_after_ms: i64::try_from(config.start_retry_after.as_millis())
                .unwrap_or(i64::MAX),
            quotas: limits.quotas.clone(),
        }),
        provisioned: Arc::new(Mutex::new(Default::default())),
        undeclared_result_queues: Arc::new(Mutex::new(Default::default())),
        endpoint_gates: Arc::new(Mutex::new(Default::default())),
    };

    let listen = |source| StartFailure::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    let (shutdown, _) = watch::channel(false);
    let mut tasks = Vec::new();
    for queue in CONSUMED_QUEUES {
        tasks.push((
            queue,
            tokio::spawn(run_consumer(state.clone(), queue, shutdown.subscribe())),
        ));
    }
    tasks.push((
        "outbox",
        tokio::spawn(run_outbox(state.clone(), shutdown.subscribe())),
    ));
    let app = router(state.clone());
    tasks.push((
        "http",
        tokio::spawn(crate::http_server::serve(
            listener,
            app,
            crate::http_server::fit_to_descriptors(limits.http),
            shutdown.subscribe(),
        )),
    ));
    tracing::info!(%addr, "gantry-service listening");
    Ok(RunningService {
        addr,
        state,
        shutdown,
        tasks,
    })
}

/// This database's deployment id, made at random the first time (see
/// [`gantry_broker::layout::Deployment`]).
async fn deployment_of(store: &Store) -> Result<gantry_broker::layout::Deployment, StartFailure> {
    let text = store
        .setting_or_init("deployment_id", || {
            gantry_store::secret::new_salt()[..12].to_owned()
        })
        .await?;
    gantry_broker::layout::Deployment::parse(&text).ok_or_else(|| {
        StartFailure::Setting(format!(
            "the database's deployment_id setting {text:?} is not 12 hex digits"
        ))
    })
}

/// `url` with its password replaced by `***`, for messages; also when it does not
/// parse, where everything between `://` and the authority's last `@` goes.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            return parsed.to_string();
        }
        return url.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "***".to_owned()
        } else {
            url.to_owned()
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// `message` with every configured URL, and every password in them, replaced: another
/// crate's error may quote a URL whole, or its password alone.
fn scrub(mut message: String, urls: &[String]) -> String {
    for url in urls {
        message = message.replace(url.as_str(), &redact_url(url));
        let password = url
            .split_once("://")
            .map(|(_, rest)| &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())])
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password)
            .unwrap_or_default();
        // Short ones would blank ordinary words; they are no secret anyway.
        if password.len() >= 6 {
            message = message.replace(password, "***");
            let decoded = url::form_urlencoded::parse(format!("p={password}").as_bytes())
                .next()
                .map(|(_, p)| p.into_owned())
                .unwrap_or_default();
            if decoded.len() >= 6 {
                message = message.replace(&decoded, "***");
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_in_messages() {
        assert_eq!(
            redact_url("amqp://gantry:s3cret-pw@broker:5672/v"),
            "amqp://gantry:***@broker:5672/v"
        );
        // Unparseable (the port), yet still redacted.
        assert_eq!(
            redact_url("amqp://gantry:s3cret-pw@broker:99999999/v"),
            "amqp://***@broker:99999999/v"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/gantry.db"),
            "sqlite:///var/lib/gantry.db"
        );
        let error = vhost_of("amqp://gantry:s3cret-pw@broker:99999999/v").unwrap_err();
        assert!(!format!("{error:#}").contains("s3cret"), "{error:#}");
    }

    #[tokio::test]
    async fn startup_errors_never_show_passwords() {
        let dir = std::env::temp_dir().join(format!("gantry-start-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.join("service.db").display()),
            amqp_url: "amqp://gantry:amqp-s3cret@127.0.0.1:5672/%2f".into(),
            // Not http(s): the management client refuses it, quoting the URL.
            amqp_admin_url: "ftp://admin:admin-s3cret@127.0.0.1:15672".into(),
            public_amqp_url: None,
            max_body_bytes: 1024,
            client_token_lifetime_s: 60,
            start_retry_after: std::time::Duration::from_secs(60),
            master_secret: crate::master_secret::MasterSecretSource::File(dir.join("broker.key")),
        };
        let error = match start(config).await {
            Ok(_) => panic!("a management URL that is not http(s) must be refused"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("ftp://admin:***@"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn vhosts_are_read_from_the_url_path() {
        assert_eq!(vhost_of("amqp://g:g@h:5672").unwrap(), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672/").unwrap(), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672/%2f").unwrap(), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672/gantry").unwrap(), "gantry");
    }
}
