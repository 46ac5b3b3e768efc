//! Dead letters: publishing a request that cannot succeed to the dead-letter
//! exchange, and draining the dead queue into the `dead_letters` table (the
//! operator's inbox), one row per message, audited as `dead_lettered`.
//!
//! Three ways into the dead queue, one drain for all: the worker gives up
//! (headers carry the error class, message and attempt history), a message is
//! undecodable (rejected without requeue: `poison`), or the quorum queue's
//! delivery limit is hit (`delivery_limit`).

use crate::audit::{self, AuditEntry};
use crate::broker::Broker;
use crate::broker::publisher::PublishError;
use crate::event::AccessEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;

pub const ERROR_CLASS_HEADER: &str = "x-error-class";
pub const ERROR_HEADER: &str = "x-error";
pub const HISTORY_HEADER: &str = "x-attempt-history";
pub const DEAD_ID_HEADER: &str = "x-dead-letter-id";

/// One failed attempt, carried with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at: chrono::DateTime<chrono::Utc>,
    pub error_class: String,
    pub error: String,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Reads a header as text.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a header as an integer (RabbitMQ and clients use several widths).
pub fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

pub fn history(props: &BasicProperties) -> Vec<AttemptRecord> {
    header_str(props, HISTORY_HEADER).and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default()
}

/// Properties for a republished request: same id and body, new attempt count and history.
pub fn republish_props(
    original: &BasicProperties,
    attempt: u32,
    history: &[AttemptRecord],
    dead: Option<(&str, &str)>,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    let mut fresh = FieldTable::default();
    for (k, v) in headers.inner() {
        if !k.as_str().starts_with("x-death")
            && !k.as_str().starts_with("x-first-death")
            && !k.as_str().starts_with("x-last-death")
        {
            fresh.insert(k.clone(), v.clone());
        }
    }
    headers = fresh;
    headers.insert(crate::broker::publisher::ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    headers.insert(HISTORY_HEADER.into(), long(&serde_json::to_string(history).unwrap_or_else(|_| "[]".into())));
    if let Some((class, error)) = dead {
        headers.insert(ERROR_CLASS_HEADER.into(), long(class));
        headers.insert(ERROR_HEADER.into(), long(error));
        headers.insert(DEAD_ID_HEADER.into(), long(&uuid::Uuid::new_v4().to_string()));
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = original.message_id() {
        props = props.with_message_id(id.clone());
    }
    props
}

/// Publishes to the retry queue of a ladder step.
pub async fn publish_retry(
    broker: &Broker,
    step: usize,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let queue = broker.names().retry[step].1.clone();
    broker.publish("", &queue, body, props, timeout).await
}

/// Publishes to the dead-letter exchange.
pub async fn publish_dead(
    broker: &Broker,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let dlx = broker.names().dlx.clone();
    broker.publish(&dlx, "dead", body, props, timeout).await
}

/// Records one message from the dead queue. Idempotent per message.
pub async fn record(pool: &PgPool, body: &[u8], props: &BasicProperties) -> Result<(), sqlx::Error> {
    let event = AccessEvent::decode(body).ok();
    let death_reason =
        props.headers().as_ref().and_then(|h| h.inner().get("x-first-death-reason").cloned()).and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        });
    let (class, error) = match (header_str(props, ERROR_CLASS_HEADER), &event) {
        (Some(class), _) => (class, header_str(props, ERROR_HEADER).unwrap_or_default()),
        (None, None) => ("poison".to_owned(), "the message is not a readable access event".to_owned()),
        (None, Some(_)) if death_reason.as_deref() == Some("delivery_limit") => {
            ("delivery_limit".to_owned(), "the message was delivered too many times without being acked".to_owned())
        }
        (None, Some(_)) => {
            ("rejected".to_owned(), format!("dead-lettered by the broker ({})", death_reason.unwrap_or_default()))
        }
    };
    let dead_key =
        header_str(props, DEAD_ID_HEADER).unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))));
    let history = history(props);
    let attempts = header_int(props, crate::broker::publisher::ATTEMPT_HEADER).unwrap_or(0) as i32 + 1;
    let message = match &event {
        Some(e) => serde_json::to_value(e).unwrap_or_default(),
        // jsonb cannot hold NUL characters or invalid UTF-8: keep such bodies as hex.
        None => match std::str::from_utf8(body) {
            Ok(text) if !text.contains('\0') => json!({"raw": text}),
            _ => json!({"raw_hex": hex::encode(body)}),
        },
    };
    let first_failed = history.first().map(|h| h.at);

    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (dead_key, event_id, ticket, application, action, subject, message, error_class, last_error, attempts, attempt_history, first_failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (dead_key) DO NOTHING RETURNING id",
    )
    .bind(&dead_key)
    .bind(event.as_ref().map(|e| e.event_id))
    .bind(event.as_ref().map(|e| e.ticket.key.clone()))
    .bind(event.as_ref().and_then(|e| e.application.clone()))
    .bind(event.as_ref().map(|e| serde_json::to_value(e.action).ok().and_then(|v| v.as_str().map(str::to_owned))).unwrap_or_default())
    .bind(event.as_ref().and_then(|e| e.requester.as_ref().map(|p| p.account_id.clone())))
    .bind(&message)
    .bind(&class)
    .bind(&error)
    .bind(attempts)
    .bind(serde_json::to_value(&history).unwrap_or_default())
    .bind(first_failed)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        let mut e = AuditEntry::new("dead_lettered", "failed");
        if let Some(ev) = &event {
            e.event_id = Some(ev.event_id);
            e.ticket = Some(ev.ticket.key.clone());
            e.application = ev.application.clone();
            e.subject = ev.requester.as_ref().map(|p| p.account_id.clone());
        }
        e.detail = json!({"dead_letter_id": id, "class": class, "error": error, "attempts": attempts});
        audit::append(&mut tx, &[e]).await?;
    }
    tx.commit().await?;
    tracing::warn!(class = %class, "request dead-lettered; see dead_letters");
    Ok(())
}
