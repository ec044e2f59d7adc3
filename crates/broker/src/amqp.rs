//! AMQP with lapin: one connection, a confirming publisher, topology declarations and
//! consumers. Every publish is `mandatory` and awaits the broker's confirm, so a message
//! is either on a durable queue or the caller gets an error; nothing is dropped silently.

use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use uuid::Uuid;

use crate::BrokerError;
use crate::layout::{
    HEARTBEATS_EXCHANGE, HEARTBEATS_QUEUE, RESULTS_EXCHANGE, RESULTS_QUEUE, TASKS_EXCHANGE,
    command_queue, task_queue, task_routing_key,
};

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The exchange (`""` for the default exchange, which routes by queue name).
    pub exchange: &'a str,
    /// The routing key (the queue name on the default exchange).
    pub routing_key: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// AMQP properties; delivery mode 2 (persistent) is always set.
    pub properties: BasicProperties,
}

/// The longest Gantry waits on RabbitMQ for one step (a connection, a batch of publish
/// confirms): a broker that stalls (a memory alarm blocks publishers) must not hold a
/// caller forever.
pub const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest AMQP frame Gantry asks for. The AMQP client keeps two buffers of 32
/// frames per connection, so RabbitMQ's default of 128 KiB costs 8 MiB of memory for each
/// connection (most of a MEP's and a UEP's memory); messages larger than a frame are
/// split into several, so only very large results pay a little in throughput.
pub const CLIENT_FRAME_MAX: u32 = 16 * 1024;

/// `url` with `frame_max=CLIENT_FRAME_MAX` added unless it names one.
fn with_frame_max(url: &str) -> String {
    if url.contains("frame_max=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}frame_max={CLIENT_FRAME_MAX}")
}

/// A connection with a confirming publisher channel.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<Connection>,
    publisher: Channel,
    /// Set when a step on this connection timed out: it is not trusted again, and
    /// [`crate::SharedBroker`] replaces it.
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

fn s(text: &str) -> ShortString {
    text.into()
}

impl Broker {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`). Unless the URL sets
    /// `frame_max`, Gantry asks for [`CLIENT_FRAME_MAX`].
    pub async fn connect(url: &str) -> Result<Broker, BrokerError> {
        let url = with_frame_max(url);
        let url = url.as_str();
        let connecting = Connection::connect(url, ConnectionProperties::default());
        let connection = tokio::time::timeout(BROKER_WAIT, connecting)
            .await
            .map_err(|_| BrokerError::Timeout {
                doing: "connecting",
                seconds: BROKER_WAIT.as_secs(),
            })?
            .map_err(|e| BrokerError::Connect {
                url: redact(url),
                source: e,
            })?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            connection: std::sync::Arc::new(connection),
            publisher,
            stalled: Default::default(),
        })
    }

    /// A new channel, e.g. for a consumer.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.bounded("opening a channel", async {
            Ok(self.connection.create_channel().await?)
        })
        .await
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Whether the publishing channel is still open (a refused operation closes it)
    /// and no step on this connection has timed out.
    pub fn publisher_open(&self) -> bool {
        self.publisher.status().connected()
            && !self.stalled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one broker step, failing it after [`BROKER_WAIT`]: an RPC on a channel the
    /// broker is closing, or on a blocked connection, may otherwise never return. A
    /// step that times out marks the connection stalled.
    async fn bounded<T>(
        &self,
        doing: &'static str,
        work: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        tokio::time::timeout(BROKER_WAIT, work)
            .await
            .unwrap_or_else(|_| Err(self.stall(doing)))
    }

    /// Marks this connection stalled and says what timed out.
    fn stall(&self, doing: &'static str) -> BrokerError {
        self.stalled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        BrokerError::Timeout {
            doing,
            seconds: BROKER_WAIT.as_secs(),
        }
    }

    /// Declares the shared exchanges and queues (idempotent).
    pub async fn declare_base_topology(&self) -> Result<(), BrokerError> {
        self.bounded("declaring the base topology", async {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let ch = &self.publisher;
            ch.exchange_declare(
                s(TASKS_EXCHANGE),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
            for (exchange, queue, pattern) in [
                (RESULTS_EXCHANGE, RESULTS_QUEUE, "*.results"),
                (HEARTBEATS_EXCHANGE, HEARTBEATS_QUEUE, "*.heartbeats"),
            ] {
                ch.exchange_declare(
                    s(exchange),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
                self.declare_queue(queue).await?;
                ch.queue_bind(
                    s(queue),
                    s(exchange),
                    s(pattern),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// Declares a durable queue (idempotent).
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.bounded("declaring a queue", async {
            self.publisher
                .queue_declare(
                    s(queue),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Declares an endpoint's own queue: the task queue (bound to `tasks`) of a UEP or
    /// plain endpoint, or the command queue of a MEP.
    pub async fn declare_endpoint_queue(
        &self,
        ep: Uuid,
        multi_user: bool,
    ) -> Result<(), BrokerError> {
        self.bounded("declaring an endpoint's queue", async {
            if multi_user {
                return self.declare_queue(&command_queue(ep)).await;
            }
            let queue = task_queue(ep);
            self.declare_queue(&queue).await?;
            self.publisher
                .queue_bind(
                    s(&queue),
                    s(TASKS_EXCHANGE),
                    s(&task_routing_key(ep)),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Drops every message waiting in a queue; returns how many there were.
    pub async fn purge_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        self.bounded("purging a queue", async {
            Ok(self
                .publisher
                .queue_purge(s(queue), lapin::options::QueuePurgeOptions::default())
                .await?)
        })
        .await
    }

    /// Deletes a queue (when its endpoint is deleted).
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.bounded("deleting a queue", async {
            self.publisher
                .queue_delete(s(queue), QueueDeleteOptions::default())
                .await?;
            Ok(())
        })
        .await
    }

    /// Publishes every message (persistent, mandatory) and waits for the broker's
    /// confirms; fails with the first message that was refused or could not be routed.
    pub async fn publish_confirmed(&self, messages: &[Outgoing<'_>]) -> Result<(), BrokerError> {
        self.publish_confirmed_each(messages)
            .await?
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Like [`Broker::publish_confirmed`], but says what became of each message, in
    /// order, so that one unroutable message does not hold back the others. The outer
    /// error means the connection failed and nothing is known of any message.
    pub async fn publish_confirmed_each(
        &self,
        messages: &[Outgoing<'_>],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        let deadline = tokio::time::Instant::now() + BROKER_WAIT;
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let properties = message.properties.clone().with_delivery_mode(2);
            let publishing = self.publisher.basic_publish(
                s(message.exchange),
                s(message.routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                message.body,
                properties,
            );
            let confirm = tokio::time::timeout_at(deadline, publishing)
                .await
                .map_err(|_| self.stall("publishing"))??;
            pending.push((confirm, message.exchange, message.routing_key));
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for (confirm, exchange, routing_key) in pending {
            let confirmation = tokio::time::timeout_at(deadline, confirm)
                .await
                .map_err(|_| self.stall("waiting for publish confirms"))??;
            outcomes.push(match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }),
                Confirmation::Nack(_) => Err(BrokerError::Refused {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }),
            });
        }
        Ok(outcomes)
    }

    /// Starts consuming `queue` on a channel of its own with at most `prefetch`
    /// unacknowledged deliveries.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Consumer, BrokerError> {
        self.bounded("starting a consumer", async {
            let channel = self.channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            Ok(channel
                .basic_consume(
                    s(queue),
                    s(tag),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?)
        })
        .await
    }

    /// Closes the connection, waiting a few seconds at most for the broker to agree
    /// (a connection with a channel the broker is closing may never get its close-ok;
    /// dropping it then is enough).
    pub async fn close(&self) {
        let closing = self.connection.close(200, s("bye"));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
    }
}

/// AMQP headers from string pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(s(key), AMQPValue::LongString(value.into()));
    }
    table
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        // An unparseable URL may still hold a password: show none of it.
        Err(_) => "<an unparseable AMQP URL>".to_owned(),
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn the_frame_size_is_asked_for_unless_the_url_names_one() {
        assert_eq!(
            with_frame_max("amqp://u:p@h:5672/v"),
            "amqp://u:p@h:5672/v?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/v?heartbeat=10"),
            "amqp://h/v?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/v?frame_max=4096"),
            "amqp://h/v?frame_max=4096"
        );
    }
}
