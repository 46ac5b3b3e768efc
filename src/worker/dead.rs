//! Dead letters: publishing a request that cannot succeed to the dead-letter
//! exchange, and draining the dead queue into the `dead_letters` table (the
//! operator's inbox), one row per dead request, every death audited as
//! `dead_lettered`. A replayed dead letter that dies again reopens its row
//! (`deaths` counts; `dead_letter_deaths` keeps each death's key), and a
//! redelivery of a death already recorded records nothing.
//!
//! Three ways into the dead queue, one drain for all: the worker gives up
//! (headers carry the error class, message and attempt history), a message is
//! undecodable (rejected without requeue: `poison`), or the quorum queue's
//! delivery limit is hit (`delivery_limit`).

use crate::audit::{self, AuditEntry};
use crate::broker::Broker;
use crate::broker::envelope::{self, ATTEMPT_HEADER, dead_key, header_int, header_str};
use crate::broker::publisher::PublishError;
use crate::dead_letters;
use crate::event::AccessEvent;
use lapin::BasicProperties;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

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

/// Records one message from the dead queue: a new dead letter, or, for a replay
/// that died again, the replayed dead letter reopened with this death's error,
/// attempts and history added. Every recorded death is audited `dead_lettered`.
/// Idempotent per death ([`dead_key`]): a redelivery of the same dead message
/// records nothing.
pub async fn record(pool: &PgPool, body: &[u8], props: &BasicProperties) -> Result<(), sqlx::Error> {
    let decoded = AccessEvent::decode(body).ok();
    let event_id = decoded.as_ref().map(|e| e.event_id);
    // A body with a NUL character (raw, or escaped as \u0000) cannot be stored
    // as text or jsonb: it is kept as raw text (hex if need be), like poison.
    let event = decoded.filter(|_| !has_nul(body));
    let death_reason = header_str(props, envelope::FIRST_DEATH_REASON_HEADER);
    let (class, error) = match (header_str(props, envelope::ERROR_CLASS_HEADER), &event) {
        (Some(class), _) => (class, header_str(props, envelope::ERROR_HEADER).unwrap_or_default()),
        (None, None) if event_id.is_some() => (
            "poison".to_owned(),
            "the message holds a value the database refuses (a NUL character); it can never be processed".to_owned(),
        ),
        (None, None) => ("poison".to_owned(), "the message is not a readable access event".to_owned()),
        (None, Some(_)) if death_reason.as_deref() == Some("delivery_limit") => {
            ("delivery_limit".to_owned(), "the message was delivered too many times without being acked".to_owned())
        }
        (None, Some(_)) => {
            ("rejected".to_owned(), format!("dead-lettered by the broker ({})", death_reason.unwrap_or_default()))
        }
    };
    let dead_key = dead_key(body, props);
    let history = envelope::history(props);
    let history_json = serde_json::to_value(&history).unwrap_or_default();
    let attempts = header_int(props, ATTEMPT_HEADER).unwrap_or(0) as i32 + 1;
    let traceparent = header_str(props, envelope::TRACEPARENT_HEADER);

    let mut tx = pool.begin().await?;
    // A replay that died again: its dead letter, locked (a replay in progress
    // holds the lock until it has committed the `replayed` mark).
    let replayed = match header_int(props, envelope::REPLAY_OF_HEADER) {
        Some(id) => dead_letters::lock(&mut tx, id).await?,
        None => None,
    };
    let (id, deaths, reopened_from) = match replayed {
        Some(row) => {
            if !dead_letters::insert_death(&mut tx, &dead_key, row.id, &class, &error, attempts).await? {
                tx.rollback().await?;
                tracing::debug!(dead_letter_id = row.id, "this death is recorded already (a redelivery)");
                return Ok(());
            }
            let deaths = dead_letters::reopen(&mut tx, row.id, &class, &error, attempts, &history_json).await?;
            (row.id, deaths, Some(row.state()))
        }
        None => {
            let message = match &event {
                Some(e) => serde_json::to_value(e).unwrap_or_default(),
                // jsonb cannot hold NUL characters or invalid UTF-8: keep such bodies as hex.
                None => match std::str::from_utf8(body) {
                    Ok(text) if !text.contains('\0') => json!({"raw": text}),
                    _ => json!({"raw_hex": hex::encode(body)}),
                },
            };
            let action = event
                .as_ref()
                .and_then(|e| serde_json::to_value(e.action).ok().and_then(|v| v.as_str().map(str::to_owned)));
            let new = dead_letters::NewDeadLetter {
                dead_key: &dead_key,
                event_id,
                ticket: event.as_ref().map(|e| e.ticket.key.as_str()),
                application: event.as_ref().and_then(|e| e.application.as_deref()),
                action: action.as_deref(),
                subject: event.as_ref().and_then(|e| e.requester.as_ref().map(|p| p.account_id.as_str())),
                message: &message,
                error_class: &class,
                error: &error,
                attempts,
                history: &history_json,
                first_failed_at: history.first().map(|h| h.at),
                traceparent: traceparent.as_deref(),
            };
            let Some(id) = dead_letters::insert(&mut tx, &new).await? else {
                tx.rollback().await?;
                tracing::debug!("this dead message is recorded already (a redelivery)");
                return Ok(());
            };
            if !dead_letters::insert_death(&mut tx, &dead_key, id, &class, &error, attempts).await? {
                tx.rollback().await?;
                return Ok(());
            }
            (id, 1, None)
        }
    };
    let mut e = AuditEntry::new("dead_lettered", "failed");
    e.event_id = event_id;
    if let Some(ev) = &event {
        e.event_id = Some(ev.event_id);
        e.ticket = Some(ev.ticket.key.clone());
        e.application = ev.application.clone();
        e.subject = ev.requester.as_ref().map(|p| p.account_id.clone());
    }
    e.detail = json!({"dead_letter_id": id, "class": class, "error": error, "attempts": attempts, "death": deaths});
    if let Some(state) = reopened_from {
        e.detail["reopened_from"] = json!(state.as_str());
    }
    let application = event.as_ref().and_then(|e| e.application.clone());
    audit::append(&mut tx, &[e]).await?;
    tx.commit().await?;
    crate::metrics::dead_letter_recorded(application.as_deref().unwrap_or("none"));
    tracing::warn!(class = %class, dead_letter_id = id, death = deaths, "request dead-lettered; see dead_letters");
    Ok(())
}

fn has_nul(body: &[u8]) -> bool {
    body.contains(&0) || body.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000"))
}
