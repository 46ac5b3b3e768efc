//! The baseline: the least a pipeline like accessgov's can do on the same
//! broker and database, measured in the same run.
//!
//! Publish N events into its own queue with lapin publisher confirms (C
//! publishers, each waiting for its confirm, as C webhook senders wait for the
//! ingress's 202), while a lapin consumer (same prefetch, C at once) does per
//! delivery: one HTTP call to a 0 ms local mock, one sqlx INSERT + COMMIT, ack.
//! End to end is measured as for accessgov: from the first publish until N
//! rows are committed. The queue is the same kind as accessgov's (durable
//! quorum queue, persistent messages); so is the pool size.
//!
//! Then, with the consumer gone, the same confirmed publish on the ingress
//! scenario's open-loop schedule: the broker's share of a webhook's latency.

use crate::common::{self, CpuSnapshot, CpuUse, Env, OpenLoop, Signed};
use crate::mock::MockProvider;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Baseline {
    pub events: usize,
    pub end_to_end: Duration,
    pub publish: Duration,
    /// Closed-loop confirm latencies (sorted).
    pub confirms: Vec<Duration>,
    pub cpu: CpuUse,
    /// Confirmed publishes on the ingress scenario's open-loop schedule.
    pub open_loop: Option<OpenLoop>,
}

impl Baseline {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.end_to_end.as_secs_f64()
    }
}

pub async fn run(env: &Env, bodies: Vec<Signed>, prefetch: u16, pool_size: u32) -> anyhow::Result<Baseline> {
    let tag = common::tag();
    let db = common::db_name(&tag);
    let queue = format!("{}.baseline", common::prefix(&tag));
    common::create_db(env, &db).await?;
    let result = measure(env, &db, &queue, bodies, prefetch, pool_size).await;
    // Cleanup whatever happened.
    if let Ok(conn) = Connection::connect(&env.amqp, Default::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let _ = conn.close(200, "loadgen cleanup".into()).await;
    }
    common::drop_db(env, &db).await?;
    result
}

async fn declare(ch: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(b"quorum".to_vec())));
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    Ok(())
}

fn props(id: uuid::Uuid) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into())
}

async fn measure(
    env: &Env,
    db: &str,
    queue: &str,
    bodies: Vec<Signed>,
    prefetch: u16,
    pool_size: u32,
) -> anyhow::Result<Baseline> {
    let n = bodies.len();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(pool_size).connect(&env.db_url(db)).await?;
    sqlx::query("CREATE TABLE baseline_events (id uuid PRIMARY KEY, body jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        .execute(&pool)
        .await?;
    let mock = MockProvider::start(Duration::ZERO).await?;
    let grant_url = format!("{}/grant", mock.base_url());

    // The consumer, on a connection of its own (as a worker has).
    let consumer_conn = Connection::connect(&env.amqp, Default::default()).await?;
    let cch = consumer_conn.create_channel().await?;
    declare(&cch, queue).await?;
    cch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = cch
        .basic_consume(queue.into(), "loadgen-baseline".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let errors = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(env.concurrency));
    let consuming = {
        let (pool, errors, http) = (pool.clone(), errors.clone(), reqwest::Client::new());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (pool, errors, http, url) = (pool.clone(), errors.clone(), http.clone(), grant_url.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(&pool, &http, &url, &delivery).await {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("baseline: a delivery failed: {e:#}");
                        }
                        return;
                    }
                    drop(permit);
                });
            }
        })
    };

    // The publishers: one confirm-mode channel, C publishers (as the ingress has).
    let publisher_conn = Connection::connect(&env.amqp, Default::default()).await?;
    let pch = publisher_conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue_name = queue.to_owned();
    let work = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..env.concurrency {
        let (pch, work, queue) = (pch.clone(), work.clone(), queue_name.clone());
        publishers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(s) = work.lock().expect("work").next() else { break };
                let t = Instant::now();
                let confirm = pch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        &s.body,
                        props(uuid::Uuid::new_v4()),
                    )
                    .await?
                    .await?;
                anyhow::ensure!(matches!(confirm, Confirmation::Ack(None)), "baseline publish not confirmed");
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut confirms = Vec::with_capacity(n);
    for p in publishers {
        confirms.extend(p.await??);
    }
    let publish = start.elapsed();
    confirms.sort();
    let end_to_end = common::wait_for_count(&pool, "baseline_events", n, start).await;
    let cpu = cpu.since();
    consuming.abort();
    let _ = consumer_conn.close(200, "baseline done".into()).await;
    let _ = publisher_conn.close(200, "baseline done".into()).await;
    mock.stop();
    pool.close().await;
    let end_to_end = end_to_end?;
    anyhow::ensure!(errors.load(Ordering::Relaxed) == 0, "baseline deliveries failed");

    // The broker's share of a webhook: confirmed publishes on the ingress schedule.
    let (rps, warmup, total) = ingress_schedule(env);
    let body = bytes_of_a_body()?;
    let (amqp, queue) = (env.amqp.clone(), queue.to_owned());
    let open_loop = common::open_loop(rps, warmup, total, move || {
        Box::pin(async move {
            let conn = Connection::connect(&amqp, Default::default()).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let (body, queue) = (Arc::new(body), Arc::new(queue));
            // `conn` lives as long as the maker.
            let make = move |_i: usize| -> common::Request {
                let _conn = &conn;
                let (ch, body, queue) = (ch.clone(), body.clone(), queue.clone());
                Box::pin(async move {
                    let publish = ch.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        &body,
                        props(uuid::Uuid::new_v4()),
                    );
                    match publish.await {
                        Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
                        Err(_) => false,
                    }
                })
            };
            Ok(make)
        })
    })
    .await?;
    Ok(Baseline { events: n, end_to_end, publish, confirms, cpu, open_loop: Some(open_loop) })
}

/// One delivery of the minimal pipeline.
async fn handle(
    pool: &PgPool,
    http: &reqwest::Client,
    url: &str,
    delivery: &lapin::message::Delivery,
) -> anyhow::Result<()> {
    let id: uuid::Uuid = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|m| m.as_str().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no message id"))?;
    let resp = http.post(url).json(&serde_json::json!({"subject": id, "target": "baseline"})).send().await?;
    anyhow::ensure!(resp.status().is_success(), "mock answered {}", resp.status());
    let _ = resp.bytes().await?;
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO baseline_events (id, body) VALUES ($1, $2::jsonb)")
        .bind(id)
        .bind(std::str::from_utf8(&delivery.data)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// (rate, warm-up requests, total requests) of the ingress scenario's schedule.
pub fn ingress_schedule(env: &Env) -> (usize, usize, usize) {
    let rps = env.ingress_rps;
    let warmup = rps; // one second
    (rps, warmup, warmup + rps * env.ingress_secs as usize)
}

fn bytes_of_a_body() -> anyhow::Result<Vec<u8>> {
    Ok(common::bodies(1)?.remove(0).body)
}
