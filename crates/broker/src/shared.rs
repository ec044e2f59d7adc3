//! A broker connection that heals: callers ask for the current connection and get a new
//! one when the old one has died (a broker restart, a network blip), with the shared
//! topology declared again.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::{Broker, BrokerError};

/// A connection to one URL, replaced when it drops; cheap to clone.
#[derive(Clone)]
pub struct SharedBroker {
    url: Arc<str>,
    current: Arc<Mutex<Broker>>,
}

impl std::fmt::Debug for SharedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBroker")
            .field("url", &crate::amqp::redact(&self.url))
            .finish()
    }
}

impl SharedBroker {
    /// Connects and declares the shared topology.
    pub async fn connect(url: &str) -> Result<SharedBroker, BrokerError> {
        let broker = Broker::connect(url).await?;
        broker.declare_base_topology().await?;
        Ok(SharedBroker {
            url: url.into(),
            current: Arc::new(Mutex::new(broker)),
        })
    }

    /// The live connection, reconnecting first if the last one died.
    pub async fn get(&self) -> Result<Broker, BrokerError> {
        let mut current = self.current.lock().await;
        if !current.is_connected() || !current.publisher_open() {
            tracing::warn!("the broker connection was lost; reconnecting");
            let broker = Broker::connect(&self.url).await?;
            broker.declare_base_topology().await?;
            let old = std::mem::replace(&mut *current, broker);
            // A stalled connection may still be open: close it (bounded) in the background.
            tokio::spawn(async move { old.close().await });
            tracing::info!("reconnected to the broker");
        }
        Ok(current.clone())
    }

    /// Closes the current connection.
    pub async fn close(&self) {
        self.current.lock().await.close().await;
    }
}
