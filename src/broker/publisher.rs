//! Persistent, mandatory publishes that count only once the broker confirmed them.

use super::{Broker, BrokerError};
use crate::event::AccessEvent;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use std::time::Duration;

/// Why a publish is not known to be safe in the broker. Every variant means
/// "not accepted": ingress answers 503 so that the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (no queue bound for {0})")]
    Unroutable(String),
}

impl PublishError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
        }
    }
}

impl Broker {
    /// Publishes an event to the events exchange and waits for the confirm.
    pub async fn publish_event(
        &self,
        event: &AccessEvent,
        attempt: i64,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        self.publish_event_with_headers(event, attempt, FieldTable::default(), timeout).await
    }

    /// [`Broker::publish_event`] with more headers (a replay's, say).
    pub async fn publish_event_with_headers(
        &self,
        event: &AccessEvent,
        attempt: i64,
        headers: FieldTable,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("an AccessEvent always serializes");
        let props = super::envelope::event_props(event, attempt, headers);
        let exchange = self.names().events.clone();
        self.publish(&exchange, &event.routing_key(), &body, props, timeout).await
    }

    /// Publishes bytes and waits for the broker's confirm, with `mandatory` set
    /// so that an unroutable message is reported rather than silently dropped.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let channel = self.publish_channel().await?;
        let outcome = tokio::time::timeout(timeout, async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    body,
                    props,
                )
                .await?
                .await
        })
        .await;
        match outcome {
            Err(_) => {
                // The channel may be wedged; start afresh next time.
                self.invalidate().await;
                Err(PublishError::Timeout(timeout))
            }
            Ok(Err(e)) => {
                self.invalidate().await;
                Err(PublishError::Unavailable(BrokerError::Channel(e)))
            }
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable(routing_key.to_owned())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // Cannot happen on a confirm-mode channel; never count it as safe.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        }
    }
}
