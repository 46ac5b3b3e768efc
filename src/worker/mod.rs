//! The consume loop: prefetch + a semaphore bound the work in flight; each
//! delivery runs on a task tracked for graceful shutdown; acks come last.
//!
//! Connection loss is not fatal: the loop reconnects with capped, jittered
//! exponential backoff ([`retry::backoff`]). On shutdown the consumer is
//! cancelled first, in-flight deliveries get `shutdown_grace` to finish, and
//! whatever is left unacked returns to the queue when the connection closes.

pub mod dead;
pub mod expiry;
pub mod offboard;
pub mod onboard;
pub mod process;
pub mod retry;
pub mod route;

use crate::broker::{Broker, envelope};
use crate::config::Config;
use crate::connectors::Connectors;
use crate::metrics;
use backon::BackoffBuilder;
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
use tracing::Instrument;

/// What every delivery task needs.
pub struct WorkerContext {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub broker: Broker,
    /// Connectors of the live applications, by application name.
    pub connectors: Connectors,
    /// The JSM REST client (group approvers, approval verification, write-back),
    /// when JSM credentials are configured.
    pub jsm: Option<crate::jsm::JsmClient>,
    /// `[jsm] verify_approval` in effect (on by default when JSM credentials resolve).
    pub verify_approval: bool,
    /// `[worker] concurrency`: provider calls this process makes at once. More
    /// deliveries than that are in flight (up to `[broker] prefetch`), so that
    /// deciding and recording overlap the calls instead of waiting for slots.
    pub calls: Arc<Semaphore>,
}

impl WorkerContext {
    pub fn new(config: Arc<Config>, pool: PgPool, broker: Broker, connectors: Connectors) -> Self {
        let jsm = jsm_client(&config);
        let verify_approval = config.verify_approval_in_effect(jsm.is_some());
        if let Some(warning) = config.verify_approval_warning(jsm.is_some()) {
            tracing::warn!("{warning}");
        }
        let calls = Arc::new(Semaphore::new(config.worker.concurrency.max(1)));
        Self { config, pool, broker, connectors, jsm, verify_approval, calls }
    }
}

/// How long a user's Jira groups are cached.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(300);

/// A JSM client when both the email and the API token resolve.
pub fn jsm_client(config: &Config) -> Option<crate::jsm::JsmClient> {
    let email =
        crate::config::secret::SecretRef::from_pair(config.jsm.email_env.as_deref(), config.jsm.email_file.as_deref())?;
    let token = config.jsm_api_token()?;
    match (email.resolve(), token.resolve()) {
        (Ok(email), Ok(token)) => Some(crate::jsm::JsmClient::new(&config.jsm.base_url, email, token, GROUP_CACHE_TTL)),
        _ => None,
    }
}

/// Which queue a consume loop serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Access requests: process, then ack / retry / dead-letter.
    Requests,
    /// The dead queue: record into `dead_letters`, then ack.
    Dead,
}

/// Runs the request consumer, the dead-queue drain, the expiry sweeper and the
/// scheduled jobs (reconcile, audit verification) until the token is cancelled.
pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let requests = tokio::spawn(lane(ctx.clone(), Lane::Requests, shutdown.clone()));
    let dead = tokio::spawn(lane(ctx.clone(), Lane::Dead, shutdown.clone()));
    let every = ctx.config.worker.expiry_interval;
    let expiry = tokio::spawn(expiry::run(ctx.clone(), shutdown.clone(), every));
    let drift = tokio::spawn(scheduled_reconcile(ctx.clone(), shutdown.clone()));
    let verify = tokio::spawn(scheduled_verify(ctx, shutdown));
    let _ = tokio::join!(requests, dead, expiry, drift, verify);
    tracing::info!("worker stopped");
}

/// `[reconcile] interval`: reads back every managed target on a schedule, in one
/// replica at a time, reporting (and with `fix`, repairing) drift.
async fn scheduled_reconcile(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let Some(every) = ctx.config.reconcile.interval else { return };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match reconcile_once(&ctx).await {
            Ok(None) => tracing::debug!("another replica is reconciling"),
            Ok(Some(reports)) => {
                use crate::reconcile::{Finding, count};
                let missing = count(&reports, |f| matches!(f, Finding::Missing { .. }));
                let unmanaged = count(&reports, |f| matches!(f, Finding::Unmanaged { .. }));
                let unreadable = reports.iter().filter(|r| r.error.is_some()).count();
                if missing + unmanaged + unreadable > 0 {
                    tracing::warn!(
                        targets = reports.len(),
                        missing,
                        unmanaged,
                        unreadable,
                        fix = ctx.config.reconcile.fix,
                        "drift found"
                    );
                } else {
                    tracing::info!(targets = reports.len(), "reconciled: every managed target is in sync");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduled reconcile failed; trying again next round"),
        }
    }
}

/// The lock of a scheduled job (`accessgov.<name>`), held by one replica at a
/// time: a session lock on a connection of its own (close it when done), so
/// that it can never outlive the run in a pooled connection. `None` when
/// another replica holds it.
async fn schedule_lock(ctx: &WorkerContext, name: &str) -> Result<Option<sqlx::PgConnection>, sqlx::Error> {
    use sqlx::Connection;
    let mut lock = sqlx::PgConnection::connect(&ctx.config.database.url).await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("accessgov.{name}"))
        .fetch_one(&mut lock)
        .await?;
    if got {
        Ok(Some(lock))
    } else {
        let _ = lock.close().await;
        Ok(None)
    }
}

/// `[audit] verify_interval`: verifies the chain's tail at start and then on a
/// schedule, in one replica at a time; every run is recorded.
async fn scheduled_verify(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let every = ctx.config.audit.verify_interval;
    if every.is_zero() {
        return;
    }
    loop {
        match verify_once(&ctx).await {
            Ok(Some(run)) if run.ok => {
                tracing::info!(rows = run.rows_checked, since_seq = run.since_seq, "audit chain verified: intact");
            }
            Ok(Some(run)) => tracing::error!(
                seq = run.broken_seq,
                reason = run.broken_reason.as_deref().unwrap_or_default(),
                "AUDIT CHAIN BROKEN; run `accessgov audit verify` and see README \"Operating accessgov in production\""
            ),
            Ok(None) => tracing::debug!("another replica is verifying the audit chain"),
            Err(e) => tracing::warn!(error = %e, "scheduled audit verification failed; trying again next round"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One scheduled verification of the rows since the last intact one (from
/// the start when there is none, or the last one found the chain broken).
pub async fn verify_once(ctx: &WorkerContext) -> Result<Option<crate::audit::verify::VerifyRun>, sqlx::Error> {
    use crate::audit::verify;
    use sqlx::Connection;
    let Some(lock) = schedule_lock(ctx, "audit-verify").await? else { return Ok(None) };
    let result = async {
        let since_seq = match verify::latest_run(&ctx.pool).await? {
            Some(last) if last.ok => last.last_seq.unwrap_or(last.since_seq).max(1),
            _ => 1,
        };
        let report = verify::verify(&ctx.pool, since_seq, 0, |_| {}).await?;
        verify::record_run(&ctx.pool, "accessgov-worker", since_seq, &report).await
    }
    .await;
    let _ = lock.close().await;
    result.map(Some)
}

/// One scheduled run, unless another replica holds the reconcile lock.
pub async fn reconcile_once(
    ctx: &WorkerContext,
) -> Result<Option<Vec<crate::reconcile::TargetReport>>, crate::reconcile::RunError> {
    use sqlx::Connection;
    let Some(lock) = schedule_lock(ctx, "reconcile").await? else { return Ok(None) };
    let operator = crate::operator::Operator { name: "accessgov-worker".into(), via: crate::operator::Via::Schedule };
    let fix = ctx.config.reconcile.fix.then_some(&ctx.broker);
    let result =
        crate::reconcile::run(&ctx.pool, &ctx.config, &ctx.connectors, None, &operator, fix, &mut |_, _, _, _| {})
            .await;
    let _ = lock.close().await;
    result.map(Some)
}

async fn lane(ctx: Arc<WorkerContext>, lane: Lane, shutdown: CancellationToken) {
    let mut delays = retry::backoff().build();
    // One limit on deliveries in flight for the lane's lifetime (the broker's
    // prefetch bounds one session; after a reconnect, deliveries of the lost
    // session still being finished keep counting against this one).
    let slots = Arc::new(Semaphore::new(usize::from(ctx.config.broker.prefetch).max(1)));
    while !shutdown.is_cancelled() {
        let mut consumed = false;
        match consume(&ctx, lane, &shutdown, &mut consumed, &slots).await {
            Ok(()) => break,
            Err(e) => {
                // A session that got as far as consuming was a recovery: a later outage
                // starts from the minimum again, not from where the last one left off.
                if consumed {
                    delays = retry::backoff().build();
                }
                let wait = delays.next().unwrap_or(retry::MAX_BACKOFF);
                tracing::warn!(?lane, error = %e, retry_in_ms = wait.as_millis() as u64, "worker lost its broker session; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Consumes until shutdown (`Ok`) or a broker error; sets `consumed` once the consumer is registered.
async fn consume(
    ctx: &Arc<WorkerContext>,
    lane: Lane,
    shutdown: &CancellationToken,
    consumed: &mut bool,
    slots: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    let names = ctx.broker.names().clone();
    let queue = match lane {
        Lane::Requests => names.requests.clone(),
        Lane::Dead => names.dead.clone(),
    };
    let conn = ctx.broker.connect_raw().await?;
    let channel = conn.create_channel().await?;
    ctx.broker.declare(&channel).await?;
    channel.basic_qos(ctx.config.broker.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("accessgov-{lane:?}-{}", uuid::Uuid::new_v4().simple()).to_lowercase();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *consumed = true;
    tracing::info!(queue = %queue, prefetch = ctx.config.broker.prefetch, concurrency = ctx.config.worker.concurrency, "worker consuming");

    let tracker = TaskTracker::new();
    // A batch takes at most half the deliveries in flight, so that one batch is
    // always free to form and be decided while another is being recorded or is
    // waiting on its provider calls.
    let half = (usize::from(ctx.config.broker.prefetch) / 2).max(1);
    let (batch_max, batch_wait) = (ctx.config.worker.batch_max.clamp(1, half), ctx.config.worker.batch_wait);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("the broker closed the consumer")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    let mut permits = slots.clone().acquire_owned().await?;
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    if lane == Lane::Dead {
                        tracker.spawn(async move {
                            handle_dead(&ctx, delivery, &shutdown).await;
                            drop(permits);
                        });
                        continue;
                    }
                    // Group commit: what the broker has already pushed joins this
                    // delivery's batch (bounded by size, a short wait and free slots).
                    let mut batch = vec![delivery];
                    let mut lost: Option<anyhow::Error> = None;
                    while batch.len() < batch_max {
                        let Ok(more) = slots.clone().try_acquire_owned() else { break };
                        match tokio::time::timeout(batch_wait, consumer.next()).await {
                            Ok(Some(Ok(d))) => {
                                permits.merge(more);
                                batch.push(d);
                            }
                            Ok(Some(Err(e))) => {
                                lost = Some(e.into());
                                break;
                            }
                            Ok(None) => {
                                lost = Some(anyhow::anyhow!("the broker closed the consumer"));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    tracker.spawn(async move {
                        handle_batch(&ctx, batch, &shutdown).await;
                        drop(permits);
                    });
                    if let Some(e) = lost {
                        break Err(e);
                    }
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

/// Retries `f` with capped, jittered backoff until it succeeds or shutdown; `None` on shutdown.
async fn persist<T, E: std::fmt::Display, F, Fut>(what: &str, shutdown: &CancellationToken, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    retry::until_shutdown(shutdown, f, |e: &E, wait| match wait {
        Some(wait) => tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying"),
        None => tracing::warn!(error = %e, "{what} failed; not retried: shutting down"),
    })
    .await
}

async fn handle_dead(ctx: &WorkerContext, delivery: lapin::message::Delivery, shutdown: &CancellationToken) {
    let recorded =
        persist("recording a dead letter", shutdown, || dead::record(&ctx.pool, &delivery.data, &delivery.properties))
            .await;
    if recorded.is_some()
        && let Err(e) = delivery.ack(BasicAckOptions::default()).await
    {
        tracing::warn!(error = %e, "ack of a dead letter failed; it will be redelivered and deduplicated");
    }
}

fn attempt_of(delivery: &lapin::message::Delivery) -> u32 {
    crate::broker::envelope::attempt(&delivery.properties)
}

/// What the worker knows of a delivery besides its body: its `consume` span
/// (a child of the trace in its headers) and its metric labels.
struct Traced {
    span: tracing::Span,
    action: &'static str,
    application: String,
    /// When the ingress received the webhook (absent on replays and events
    /// accessgov made itself).
    received_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Traced {
    fn new(delivery: &lapin::message::Delivery, event: Option<&crate::event::AccessEvent>) -> Self {
        let props = &delivery.properties;
        let action = event.map_or("unknown", |e| e.action.as_str());
        let application = event.and_then(|e| e.application.clone()).unwrap_or_else(|| "none".into());
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            event_id = tracing::field::Empty,
            ticket = tracing::field::Empty,
            application = %application,
            action,
            attempt = attempt_of(delivery),
            outcome = tracing::field::Empty,
        );
        if let Some(e) = event {
            span.record("event_id", tracing::field::display(e.event_id));
            span.record("ticket", e.ticket.key.as_str());
        }
        crate::telemetry::extract(&span, |name| {
            props.headers().as_ref()?.inner().get(name).and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                _ => None,
            })
        });
        let replay = envelope::header_int(props, envelope::REPLAY_OF_HEADER).is_some();
        let received_at = envelope::received_at(props).filter(|_| !replay);
        Self { span, action, application, received_at }
    }

    /// A step of this delivery, as a child span.
    fn step(&self, name: &'static str) -> tracing::Span {
        match name {
            "decide" => tracing::info_span!(parent: &self.span, "decide"),
            "intent" => tracing::info_span!(parent: &self.span, "intent"),
            "apply" => tracing::info_span!(parent: &self.span, "apply"),
            _ => tracing::info_span!(parent: &self.span, "audit"),
        }
    }
}

/// Database trouble keeps a message unacked and is retried; a data error (the
/// message's own values) makes it poison instead.
fn data_error_is_poison<T>(r: Result<T, sqlx::Error>, poison: impl FnOnce() -> T) -> Result<T, sqlx::Error> {
    match r {
        Err(e) if retry::is_data_error(&e) => {
            tracing::error!(error = %e, "the database refused a value of this message");
            Ok(poison())
        }
        other => other,
    }
}

/// Decides every delivery of the batch (no transaction open), records the
/// decided ones in one transaction, then finishes and settles each.
async fn handle_batch(ctx: &WorkerContext, batch: Vec<lapin::message::Delivery>, shutdown: &CancellationToken) {
    let decoded: Vec<Result<crate::event::AccessEvent, String>> =
        batch.iter().map(|d| crate::event::AccessEvent::decode(&d.data).map_err(|e| e.to_string())).collect();
    metrics::in_flight(batch.len() as i64);
    let traced: std::collections::HashMap<u64, Traced> =
        batch.iter().zip(&decoded).map(|(d, e)| (d.delivery_tag, Traced::new(d, e.as_ref().ok()))).collect();
    let traced = &traced;
    handle_decoded(ctx, batch, decoded, traced, shutdown).await;
    metrics::in_flight(-(traced.len() as i64));
}

async fn handle_decoded(
    ctx: &WorkerContext,
    batch: Vec<lapin::message::Delivery>,
    decoded: Vec<Result<crate::event::AccessEvent, String>>,
    traced: &std::collections::HashMap<u64, Traced>,
    shutdown: &CancellationToken,
) {
    let poison = |e: &sqlx::Error| Outcome::Poison(format!("the database refused a value of this message: {e}"));
    // What deciding needs from the database, read once for the batch (a value the
    // database refuses makes each event read its own, so only that one is poison).
    let keys: Vec<(uuid::Uuid, &str)> =
        decoded.iter().filter_map(|e| e.as_ref().ok()).map(|e| (e.event_id, e.ticket.key.as_str())).collect();
    let read = persist("reading the batch's progress", shutdown, || async {
        match crate::progress::runs_and_last_revokes(&ctx.pool, &keys).await {
            Err(e) if retry::is_data_error(&e) => Ok(None),
            other => other.map(Some),
        }
    })
    .await;
    let Some(read) = read else { return };
    let mut read = read.map(|r| r.into_iter());
    let staged = futures_util::future::join_all(batch.iter().zip(decoded).map(|(d, event)| {
        let known = match (&event, read.as_mut()) {
            (Ok(_), Some(r)) => r.next(),
            _ => None,
        };
        let span = traced[&d.delivery_tag].step("decide");
        async move {
            let attempt = attempt_of(d);
            let event = match event {
                Ok(event) => event,
                Err(reason) => return Some(process::Staged::Done(Outcome::Poison(reason))),
            };
            persist("deciding the event", shutdown, || async {
                let (running, last_revoke_at) = match known {
                    Some(k) => k,
                    None => match crate::progress::run_and_last_revoke(&ctx.pool, &event).await {
                        Err(e) if retry::is_data_error(&e) => return Ok(process::Staged::Done(poison(&e))),
                        other => other?,
                    },
                };
                match process::prepare_decoded(ctx, event.clone(), attempt, running, last_revoke_at).await {
                    Err(e) if retry::is_data_error(&e) => Ok(process::Staged::Done(poison(&e))),
                    other => other,
                }
            })
            .await
        }
        .instrument(span)
    }))
    .await;
    let mut ready_deliveries = Vec::new();
    let mut prepared: Vec<Box<process::Prepared>> = Vec::new();
    let mut settled = Vec::new();
    for (delivery, staged) in batch.into_iter().zip(staged) {
        match staged {
            // Shutdown: left unacked for redelivery.
            None => {}
            Some(process::Staged::Done(outcome)) => settled.push((delivery, outcome)),
            Some(process::Staged::Ready(p)) => {
                ready_deliveries.push(delivery);
                prepared.push(p);
            }
        }
    }
    // One transaction for the batch; each event's `intent` span covers it.
    let intents: Vec<tracing::Span> = ready_deliveries.iter().map(|d| traced[&d.delivery_tag].step("intent")).collect();
    let Some(afters) = persist("recording the batch", shutdown, || record(ctx, &prepared)).await else {
        return;
    };
    drop(intents);
    let ready = ready_deliveries.into_iter().zip(prepared);
    // Refused, denied, dry run, duplicates: nothing to call; the rest run their
    // intents together (results recorded per round, one transaction each).
    let mut to_run = Vec::new();
    let mut finishing = Vec::new();
    for ((delivery, p), after) in ready.zip(afters) {
        match after {
            Err(outcome) => settled.push((delivery, outcome)),
            Ok(process::After::Execute) => to_run.push((delivery, p)),
            Ok(after) => finishing.push((delivery, p, after)),
        }
    }
    let finishing = finishing.into_iter().map(|(delivery, p, after)| async move {
        let t = &traced[&delivery.delivery_tag];
        let outcome = persist("finishing the event", shutdown, || async {
            data_error_is_poison(process::finish(ctx, &p, after.clone()).await, || {
                Outcome::Poison("the database refused a value of this message".into())
            })
        })
        .instrument(t.step("audit"))
        .await;
        if let Some(outcome) = outcome {
            settle(ctx, delivery, outcome, t, shutdown).await;
        }
    });
    let running = async {
        if to_run.is_empty() {
            return;
        }
        let events: Vec<(&crate::event::AccessEvent, u32)> =
            to_run.iter().map(|(_, p)| (p.event(), p.attempt())).collect();
        let spans: Vec<tracing::Span> = to_run.iter().map(|(d, _)| traced[&d.delivery_tag].span.clone()).collect();
        let Some(outcomes) = persist("running the provider calls", shutdown, || execute(ctx, &events, &spans)).await
        else {
            return;
        };
        let settling = to_run.into_iter().zip(outcomes).map(|((delivery, _), outcome)| {
            let t = &traced[&delivery.delivery_tag];
            settle(ctx, delivery, outcome, t, shutdown)
        });
        futures_util::future::join_all(settling).await;
    };
    let settling = settled.into_iter().map(|(delivery, outcome)| {
        let t = &traced[&delivery.delivery_tag];
        settle(ctx, delivery, outcome, t, shutdown)
    });
    futures_util::future::join3(
        futures_util::future::join_all(finishing),
        futures_util::future::join_all(settling),
        running,
    )
    .await;
}

/// Runs the batch's intents; when the database refuses one message's values,
/// runs each on its own so that only that one becomes poison.
async fn execute(
    ctx: &WorkerContext,
    events: &[(&crate::event::AccessEvent, u32)],
    spans: &[tracing::Span],
) -> Result<Vec<Outcome>, sqlx::Error> {
    match process::execute_batch(ctx, events, spans).await {
        Err(e) if retry::is_data_error(&e) && events.len() > 1 => {
            tracing::warn!(error = %e, size = events.len(), "running a batch met a data error; running its events one by one");
        }
        other => return data_error_is_poison(other, || vec![poison_outcome()]),
    }
    let mut out = Vec::with_capacity(events.len());
    for (i, one) in events.iter().enumerate() {
        let span = spans.get(i..=i).unwrap_or_default();
        out.push(data_error_is_poison(
            process::execute_batch(ctx, std::slice::from_ref(one), span).await.map(|mut o| o.remove(0)),
            poison_outcome,
        )?);
    }
    Ok(out)
}

fn poison_outcome() -> Outcome {
    Outcome::Poison("the database refused a value of this message".into())
}

/// Records the batch; when the database refuses one message's values, records
/// each on its own so that only that one becomes poison.
async fn record(
    ctx: &WorkerContext,
    prepared: &[Box<process::Prepared>],
) -> Result<Vec<Result<process::After, Outcome>>, sqlx::Error> {
    match process::record_batch(ctx, prepared).await {
        Ok(afters) => return Ok(afters.into_iter().map(Ok).collect()),
        Err(e) if retry::is_data_error(&e) && prepared.len() > 1 => {
            tracing::warn!(error = %e, size = prepared.len(), "a batch met a data error; recording its events one by one");
        }
        Err(e) if retry::is_data_error(&e) => {
            return Ok(vec![Err(Outcome::Poison(format!("the database refused a value of this message: {e}")))]);
        }
        Err(e) => return Err(e),
    }
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        out.push(match process::record_batch(ctx, std::slice::from_ref(p)).await {
            Ok(mut a) => Ok(a.remove(0)),
            Err(e) if retry::is_data_error(&e) => {
                Err(Outcome::Poison(format!("the database refused a value of this message: {e}")))
            }
            Err(e) => return Err(e),
        });
    }
    Ok(out)
}

/// Acks, retries or dead-letters a delivery according to its outcome.
async fn settle(
    ctx: &WorkerContext,
    delivery: lapin::message::Delivery,
    outcome: Outcome,
    traced: &Traced,
    shutdown: &CancellationToken,
) {
    traced.span.record("outcome", outcome.label());
    metrics::worker_event(traced.action, &traced.application, outcome.label());
    match &outcome {
        Outcome::Failed { next: retry::Next::Retry { .. }, .. } => metrics::retry_scheduled(&traced.application),
        Outcome::Recorded(_) | Outcome::Failed { next: retry::Next::DeadLetter, .. } => {
            if let Some(at) = traced.received_at {
                metrics::end_to_end(traced.action, (chrono::Utc::now() - at).to_std().unwrap_or_default());
            }
        }
        Outcome::Duplicate | Outcome::Poison(_) => {}
    }
    // Inside the span: a retry's or dead letter's headers continue this trace.
    settle_delivery(ctx, delivery, outcome, shutdown).instrument(traced.span.clone()).await;
}

async fn settle_delivery(
    ctx: &WorkerContext,
    delivery: lapin::message::Delivery,
    outcome: Outcome,
    shutdown: &CancellationToken,
) {
    let attempt = attempt_of(&delivery);
    let timeout = ctx.config.broker.confirm_timeout;
    let settled = match &outcome {
        Outcome::Poison(reason) => {
            metrics::worker_poison();
            tracing::error!(reason = %reason, "undecodable message; dead-lettering it as poison");
            // No requeue: the queue's dead-letter exchange takes it to the dead queue.
            delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await
        }
        Outcome::Failed { error, next } => {
            let mut history = envelope::history(&delivery.properties);
            history.push(envelope::AttemptRecord {
                attempt,
                at: chrono::Utc::now(),
                error_class: error.class().to_owned(),
                error: error.to_string(),
            });
            let published = match next {
                retry::Next::Retry { step, attempt: next_attempt, .. } => {
                    let props = envelope::republish_props(&delivery.properties, *next_attempt, &history, None);
                    persist("publishing a retry", shutdown, || {
                        dead::publish_retry(&ctx.broker, *step, &delivery.data, props.clone(), timeout)
                    })
                    .await
                }
                retry::Next::DeadLetter => {
                    let props = envelope::republish_props(
                        &delivery.properties,
                        attempt,
                        &history,
                        Some((error.class(), &error.to_string())),
                    );
                    persist("dead-lettering", shutdown, || {
                        dead::publish_dead(&ctx.broker, &delivery.data, props.clone(), timeout)
                    })
                    .await
                }
            };
            if published.is_none() {
                return;
            }
            delivery.ack(BasicAckOptions::default()).await
        }
        Outcome::Recorded(_) | Outcome::Duplicate => delivery.ack(BasicAckOptions::default()).await,
    };
    if let Err(e) = settled {
        // Effects are committed and idempotent: a redelivery is recorded as a duplicate.
        tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
    }
}
