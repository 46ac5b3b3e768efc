//! The RabbitMQ topology, declared in code, idempotently, every name under the
//! configured prefix (so tenants and tests isolate):
//!
//! ```text
//! <p>.events (topic) --access.#--> <p>.requests (quorum) --> workers
//! <p>.retry.<delay> (quorum, TTL) --expired--> <p>.events        (retry ladder)
//! <p>.dlx (topic) --#--> <p>.dead (quorum)                        (dead letters)
//! ```

use crate::config::duration;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// Routing key pattern the requests queue listens to.
pub const REQUEST_BINDING: &str = "access.#";
/// Routing key a retried message comes back with (it was published to the
/// retry queue by name, so its own routing key would not reach the requests queue).
pub const RETRY_ROUTING_KEY: &str = "access.retry";

/// Quorum queue redelivery limit: a message that crashes workers this many
/// times goes to the dead queue instead of looping forever.
pub const DELIVERY_LIMIT: i64 = 20;

/// Every exchange and queue name, derived from the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub prefix: String,
    pub events: String,
    pub requests: String,
    pub dlx: String,
    pub dead: String,
    /// (delay, queue name), in ladder order.
    pub retry: Vec<(Duration, String)>,
}

impl Names {
    pub fn new(prefix: &str, retry_delays: &[Duration]) -> Self {
        Self {
            prefix: prefix.to_owned(),
            events: format!("{prefix}.events"),
            requests: format!("{prefix}.requests"),
            dlx: format!("{prefix}.dlx"),
            dead: format!("{prefix}.dead"),
            retry: retry_delays.iter().map(|d| (*d, format!("{prefix}.retry.{}", duration::format(*d)))).collect(),
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Arguments shared by every queue we own.
fn quorum_args(dead_letter_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    // Quorum: replicated and durable (Raft); survives a broker node loss, and is
    // the queue type that supports delivery limits and at-least-once dead-lettering.
    args.insert("x-queue-type".into(), long("quorum"));
    // Where rejected, expired or over-delivered messages go instead of being dropped.
    args.insert("x-dead-letter-exchange".into(), long(dead_letter_exchange));
    // Dead-lettering itself is confirmed by the target queue, so nothing is lost
    // on the way to it; RabbitMQ requires reject-publish overflow for this.
    args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
    args.insert("x-overflow".into(), long("reject-publish"));
    args
}

/// Declares the whole topology. Safe to call on every start: declarations with
/// identical arguments are no-ops. A queue that exists with other arguments
/// fails with PRECONDITION_FAILED; the error says which.
pub async fn declare(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };

    // Topic: ingress publishes `access.<action>`; other consumers may bind later.
    channel
        .exchange_declare(names.events.as_str().into(), ExchangeKind::Topic, durable_exchange, FieldTable::default())
        .await?;
    channel
        .exchange_declare(names.dlx.as_str().into(), ExchangeKind::Topic, durable_exchange, FieldTable::default())
        .await?;

    let mut requests = quorum_args(&names.dlx);
    // Poison guard: the last line of defence against a message that crashes workers.
    requests.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    channel.queue_declare(names.requests.as_str().into(), durable_queue, requests).await?;
    channel
        .queue_bind(
            names.requests.as_str().into(),
            names.events.as_str().into(),
            REQUEST_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for (delay, queue) in &names.retry {
        // Nobody consumes a retry queue: a message waits out its TTL, then is
        // dead-lettered back to the events exchange with its original routing
        // key, i.e. back into the requests queue.
        let mut args = quorum_args(&names.events);
        args.insert("x-dead-letter-routing-key".into(), long(RETRY_ROUTING_KEY));
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        channel.queue_declare(queue.as_str().into(), durable_queue, args).await?;
    }

    // The dead queue only receives; it dead-letters nowhere (empty exchange name
    // is not allowed, so it simply has no DLX) and is drained into `dead_letters`.
    let mut dead = FieldTable::default();
    dead.insert("x-queue-type".into(), long("quorum"));
    channel.queue_declare(names.dead.as_str().into(), durable_queue, dead).await?;
    channel
        .queue_bind(
            names.dead.as_str().into(),
            names.dlx.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes everything [`declare`] created (tests and tenant removal).
pub async fn delete(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let mut queues = vec![names.requests.clone(), names.dead.clone()];
    queues.extend(names.retry.iter().map(|(_, q)| q.clone()));
    for q in queues {
        channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for x in [&names.events, &names.dlx] {
        channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_the_prefix() {
        let n = Names::new("t1", &[Duration::from_secs(30), Duration::from_secs(300)]);
        assert_eq!(n.events, "t1.events");
        assert_eq!(n.requests, "t1.requests");
        assert_eq!(n.dead, "t1.dead");
        assert_eq!(n.retry[1].1, "t1.retry.5m");
    }
}
