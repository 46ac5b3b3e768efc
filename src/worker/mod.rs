//! The consume loop: prefetch + a semaphore bound the work in flight; each
//! delivery runs on a task tracked for graceful shutdown; acks come last.
//!
//! Connection loss is not fatal: the loop reconnects with capped exponential
//! backoff. On shutdown the consumer is cancelled first, in-flight deliveries
//! get `shutdown_grace` to finish, and whatever is left unacked returns to the
//! queue when the connection closes.

pub mod process;

use crate::broker::Broker;
use crate::config::Config;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use process::Outcome;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every delivery task needs.
pub struct WorkerContext {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub broker: Broker,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until the token is cancelled.
pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    while !shutdown.is_cancelled() {
        match consume(&ctx, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "worker lost its broker session; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!("worker stopped");
}

async fn consume(ctx: &Arc<WorkerContext>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let names = ctx.broker.names().clone();
    let conn = ctx.broker.connect_raw().await?;
    let channel = conn.create_channel().await?;
    ctx.broker.declare(&channel).await?;
    channel.basic_qos(ctx.config.broker.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("accessgov-worker-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(names.requests.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tracing::info!(queue = %names.requests, prefetch = ctx.config.broker.prefetch, concurrency = ctx.config.worker.concurrency, "worker consuming");

    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(ctx.config.worker.concurrency.max(1)));
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("the broker closed the consumer")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    let permit = slots.clone().acquire_owned().await?;
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        handle_delivery(&ctx, delivery, &shutdown).await;
                        drop(permit);
                    });
                }
            }
        }
    };

    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
    tracker.close();
    if !tracker.is_empty() {
        tracing::info!(in_flight = tracker.len(), "waiting for in-flight deliveries");
    }
    if tokio::time::timeout(ctx.config.worker.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(left = tracker.len(), "grace period over; unfinished deliveries stay unacked for redelivery");
    }
    let _ = conn.close(200, "worker stopping".into()).await;
    result
}

async fn handle_delivery(ctx: &WorkerContext, delivery: lapin::message::Delivery, shutdown: &CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let outcome = loop {
        match process::process_one(ctx, &delivery.data).await {
            Ok(outcome) => break outcome,
            Err(e) => {
                // Infrastructure (database) trouble: keep the message, unacked,
                // and try again; a shutdown leaves it for redelivery.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot record the event; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    crate::metrics::worker_event(outcome.label());
    let acked = match &outcome {
        Outcome::Poison(reason) => {
            crate::metrics::worker_poison();
            tracing::error!(reason = %reason, "undecodable message; dead-lettering it as poison");
            // No requeue: the queue's dead-letter exchange takes it to the dead queue.
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await
        }
        _ => delivery.ack(BasicAckOptions::default()).await,
    };
    if let Err(e) = acked {
        // The effects are committed and idempotent: the redelivery will be recorded as a duplicate.
        tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
    }
}
