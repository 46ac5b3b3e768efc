//! RabbitMQ: one reconnecting handle per process role.
//!
//! [`Broker`] owns a connection and a confirm-mode publishing channel. When the
//! broker goes away, the next use reconnects (and re-declares the topology);
//! callers see errors meanwhile (ingress answers 503, readiness is false),
//! never a crash.

pub mod envelope;
pub mod publisher;
pub mod topology;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
pub use topology::Names;

/// Time allowed for a TCP + AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a polite close before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

async fn close_quietly(connection: Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "reconnecting".into())).await;
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "RabbitMQ refused the topology under prefix {prefix:?}: {source} (a queue declared earlier with other arguments must be deleted first)"
    )]
    Topology { prefix: String, source: lapin::Error },
    #[error("RabbitMQ channel error: {0}")]
    Channel(#[from] lapin::Error),
}

struct Live {
    connection: Connection,
    publish: Channel,
}

/// A lazily (re)connecting broker handle. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    url: String,
    names: Arc<Names>,
    live: Arc<Mutex<Option<Live>>>,
}

impl Broker {
    /// A handle that connects on first use.
    pub fn new(url: &str, names: Names) -> Self {
        Self { url: url.to_owned(), names: Arc::new(names), live: Arc::new(Mutex::new(None)) }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Opens a new connection (workers use their own for consuming).
    pub async fn connect_raw(&self) -> Result<Connection, BrokerError> {
        let props = ConnectionProperties::default().with_connection_name("accessgov".into());
        let uri = match self.url.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => with_default_frame_max(uri),
            Err(reason) => return Err(BrokerError::Connect { url: crate::config::redact_url(&self.url), reason }),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                Err(BrokerError::Connect { url: crate::config::redact_url(&self.url), reason: e.to_string() })
            }
            Err(_) => {
                Err(BrokerError::Connect { url: crate::config::redact_url(&self.url), reason: "timed out".into() })
            }
        }
    }

    /// Declares the topology on a channel.
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        topology::declare(channel, &self.names)
            .await
            .map_err(|source| BrokerError::Topology { prefix: self.names.prefix.clone(), source })
    }

    /// The confirm-mode publishing channel, reconnecting if needed.
    pub async fn publish_channel(&self) -> Result<Channel, BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.connection.status().connected()
            && l.publish.status().connected()
        {
            return Ok(l.publish.clone());
        }
        if let Some(old) = live.take() {
            close_quietly(old.connection).await;
        }
        let connection = self.connect_raw().await?;
        let publish = connection.create_channel().await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
        self.declare(&publish).await?;
        tracing::info!(prefix = %self.names.prefix, "connected to RabbitMQ, topology declared");
        *live = Some(Live { connection, publish: publish.clone() });
        Ok(publish)
    }

    /// Forgets the current connection so that the next use reconnects. The
    /// lock is not held while closing, and closing a connection to a broker
    /// that went silent is bounded, so a dead peer never blocks publishers.
    pub async fn invalidate(&self) {
        let old = self.live.lock().await.take();
        if let Some(old) = old {
            close_quietly(old.connection).await;
        }
    }

    /// True when connected (or a reconnect succeeds now).
    pub async fn ready(&self) -> bool {
        self.publish_channel().await.is_ok()
    }

    /// Messages ready in `queue` (a passive declare: nothing is created). Uses
    /// a short-lived channel of the shared connection, so that a missing queue
    /// (which closes the channel) does not affect publishing.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        self.publish_channel().await?;
        let channel = match self.live.lock().await.as_ref() {
            Some(l) => l.connection.create_channel().await?,
            // Invalidated in between: the next scrape reconnects.
            None => {
                return Err(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                ))
                .into());
            }
        };
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                lapin::types::FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        Ok(declared?.message_count())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.invalidate().await;
    }
}

/// The AMQP frame size accessgov asks for unless the broker URL sets one
/// (`?frame_max=`). lapin gives each connection a receive and a send buffer of
/// 32 frames, zero-filled: at RabbitMQ's default 128 KiB frames that is 8 MiB of
/// resident memory per connection, for events of a few KiB. A larger message is
/// sent in several frames.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// `uri` with [`DEFAULT_FRAME_MAX`] when it names no frame size of its own.
pub fn with_default_frame_max(mut uri: lapin::uri::AMQPUri) -> lapin::uri::AMQPUri {
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
    }
    uri
}
