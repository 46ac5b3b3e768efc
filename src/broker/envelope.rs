//! The broker envelope: every header accessgov puts on or reads from a message,
//! in one place. The body is always an [`AccessEvent`] (or what the drain keeps
//! of an unreadable one); the headers carry the delivery's life: its attempt
//! count, its trace context, the attempts that failed, why it died, and which
//! dead letter a replay replays.

use crate::event::AccessEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Header carrying the retry count (0 = first delivery).
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// W3C vendor trace state, passed on with the traceparent when a caller sent one.
pub const TRACESTATE_HEADER: &str = "tracestate";
/// When the ingress received the webhook (milliseconds since the epoch): the
/// start of `accessgov_event_end_to_end_seconds`. Kept through the retry ladder;
/// never on a replay or an event accessgov made itself.
pub const RECEIVED_AT_HEADER: &str = "x-received-at";
/// Set by RabbitMQ on a message it dead-lettered (`rejected`, `delivery_limit`, ...).
pub const FIRST_DEATH_REASON_HEADER: &str = "x-first-death-reason";
pub const ERROR_CLASS_HEADER: &str = "x-error-class";
pub const ERROR_HEADER: &str = "x-error";
pub const HISTORY_HEADER: &str = "x-attempt-history";
pub const DEAD_ID_HEADER: &str = "x-dead-letter-id";
/// On a replayed message: the id of the dead letter it replays.
pub const REPLAY_OF_HEADER: &str = "x-replay-of";
/// On a replayed message: an id of this replay, so that each replay's death has
/// a key of its own even when the broker dead-letters it (no [`DEAD_ID_HEADER`]).
pub const REPLAY_ID_HEADER: &str = "x-replay-id";

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
    trace_headers(&mut headers);
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
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

/// The headers of a replay of dead letter `dead_letter_id` (kept through the
/// retry ladder and into the dead queue, like every header but `x-death*`).
pub fn replay_headers(dead_letter_id: i64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(REPLAY_OF_HEADER.into(), AMQPValue::LongLongInt(dead_letter_id));
    headers.insert(REPLAY_ID_HEADER.into(), long(&uuid::Uuid::new_v4().to_string()));
    headers
}

/// The identity of one death of one message, the same on every redelivery of it
/// from the dead queue: the worker's [`DEAD_ID_HEADER`] when it gave up; else
/// (poison, rejected, delivery limit: dead-lettered by the broker) the body's
/// digest, plus the replay id for a replay, whose body is the original's.
pub fn dead_key(body: &[u8], props: &BasicProperties) -> String {
    if let Some(id) = header_str(props, DEAD_ID_HEADER) {
        return id;
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(body)));
    match header_str(props, REPLAY_ID_HEADER) {
        Some(replay) => format!("{digest}/replay:{replay}"),
        None => digest,
    }
}

/// The properties of an event published to the events exchange: persistent,
/// its event id as the message id, its attempt count and a fresh trace span
/// (plus `extra`, a replay's headers say).
pub fn event_props(event: &AccessEvent, attempt: i64, mut extra: FieldTable) -> BasicProperties {
    extra.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt));
    if !trace_headers(&mut extra) {
        extra.insert(TRACEPARENT_HEADER.into(), long(&traceparent(event)));
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.event_id.to_string().into())
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0))
        .with_headers(extra)
}

/// The delivery's attempt count (0 = first), bounded.
pub fn attempt(props: &BasicProperties) -> u32 {
    header_int(props, ATTEMPT_HEADER).unwrap_or(0).clamp(0, 1000) as u32
}

/// Sets the trace headers that make the consumer a child of the current span
/// (the ingress's `publish`, the worker's `consume` for a retry, a replay);
/// false when there is no span to continue (no subscriber installed).
fn trace_headers(headers: &mut FieldTable) -> bool {
    let trace = crate::telemetry::inject(&tracing::Span::current());
    for (name, value) in &trace {
        headers.insert((*name).into(), long(value));
    }
    !trace.is_empty()
}

/// The headers of an event the ingress publishes: when it received the webhook.
pub fn received_headers(at: chrono::DateTime<chrono::Utc>) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(RECEIVED_AT_HEADER.into(), AMQPValue::LongLongInt(at.timestamp_millis()));
    headers
}

/// When the ingress received the webhook this delivery comes from, if it says.
pub fn received_at(props: &BasicProperties) -> Option<chrono::DateTime<chrono::Utc>> {
    header_int(props, RECEIVED_AT_HEADER).and_then(chrono::DateTime::from_timestamp_millis)
}

/// A W3C `traceparent` for an event published outside any span (no tracing
/// subscriber: tests, library use): the trace id is the event id.
pub fn traceparent(event: &AccessEvent) -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("00-{}-{}-01", event.event_id.simple(), hex::encode(&b[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` under a subscriber with the OpenTelemetry layer (ids, no export).
    fn traced<T>(f: impl FnOnce() -> T) -> T {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_retry_continues_the_failed_deliverys_trace_as_its_child() {
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let original = BasicProperties::default().with_headers({
            let mut h = FieldTable::default();
            h.insert(TRACEPARENT_HEADER.into(), long(incoming));
            h
        });
        let (retry, consume_span) = traced(|| {
            let consume = tracing::info_span!("consume");
            crate::telemetry::extract(&consume, |k| (k == "traceparent").then_some(incoming));
            let _in = consume.enter();
            let tp = crate::telemetry::inject(&consume).into_iter().find(|(k, _)| *k == "traceparent");
            let tp = tp.expect("a traceparent").1;
            (republish_props(&original, 1, &[], None), tp)
        });
        let sent = header_str(&retry, TRACEPARENT_HEADER).expect("a traceparent on the retry");
        assert_eq!(sent, consume_span, "the consume span is the retry's parent");
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "same trace: {sent}");
        assert!(!sent.contains("b7ad6b7169203331"), "not the original publish span: {sent}");
    }

    fn with(headers: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_death_keeps_its_key_on_redelivery_and_each_replay_dies_under_a_key_of_its_own() {
        let body = br#"{"schema":"accessgov.access-event/v1"}"#;
        // Dead-lettered by the broker: the body decides, so a redelivery is the same death...
        let plain = dead_key(body, &BasicProperties::default());
        assert_eq!(plain, dead_key(body, &BasicProperties::default()));
        assert!(plain.starts_with("sha256:"));
        // ...but each replay of that body is a life (and a death) of its own.
        let (r1, r2) = (replay_headers(7), replay_headers(7));
        assert_ne!(dead_key(body, &with(r1.clone())), plain);
        assert_ne!(dead_key(body, &with(r1.clone())), dead_key(body, &with(r2)));
        assert_eq!(dead_key(body, &with(r1.clone())), dead_key(body, &with(r1.clone())));
        assert_eq!(header_int(&with(r1.clone()), REPLAY_OF_HEADER), Some(7));
        // The worker's give-up carries the replay headers along and names the death itself.
        let gave_up = republish_props(&with(r1), 1, &[], Some(("permanent", "403")));
        assert_eq!(dead_key(body, &gave_up), header_str(&gave_up, DEAD_ID_HEADER).unwrap());
        assert_eq!(header_int(&gave_up, REPLAY_OF_HEADER), Some(7));
    }
}
