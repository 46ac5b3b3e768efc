//! Persistent, mandatory publishes that count only once the broker confirmed them.

use super::{Broker, BrokerError};
use crate::event::AccessEvent;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};
use std::time::Duration;

/// Header carrying the retry count.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

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

/// A W3C `traceparent` for an event: the trace id is the event id, so that all
/// spans of one event line up across ingress and workers.
pub fn traceparent(event: &AccessEvent) -> String {
    let span: [u8; 8] = rand_span();
    format!("00-{}-{}-01", event.event_id.simple(), hex::encode(span))
}

fn rand_span() -> [u8; 8] {
    let b = uuid::Uuid::new_v4().into_bytes();
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    s
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
        mut headers: FieldTable,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("an AccessEvent always serializes");
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt));
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(LongString::from(traceparent(event).into_bytes())),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.event_id.to_string().into())
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0))
            .with_headers(headers);
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
