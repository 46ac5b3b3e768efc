//! loadgen: throughput and latency of the whole path on the real broker and
//! database. Speed and memory targets live here, never in timed unit tests.
//!
//!   cargo bench --bench loadgen                       # release build
//!   LOADGEN_EVENTS=5000 LOADGEN_CONCURRENCY=64 cargo bench --bench loadgen
//!
//! It starts ingress + worker in this process (every application dry-run) on a
//! fresh database and broker prefix, posts N distinct signed approvals with C
//! concurrent clients, waits until the worker recorded all of them, prints the
//! figures, removes what it created, and exits 1 if a target is missed.
//! Needs PostgreSQL and RabbitMQ as the tests do (ACCESSGOV_TEST_DATABASE_URL,
//! ACCESSGOV_TEST_AMQP_URL).

use accessgov::app::{App, Role};
use accessgov::config::Config;
use accessgov::ingress::auth::{Verifier, sign};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Targets on the reference machine (2 cores, release build, local services).
const TARGET_ACCEPTED_PER_SEC: f64 = 150.0;
const TARGET_P99_MS: f64 = 250.0;
const TARGET_PROCESSED_PER_SEC: f64 = 100.0;
const TARGET_PEAK_RSS_MIB: f64 = 256.0;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks harness-less benches to list; nothing to list.
    }
    let n = env_or("LOADGEN_EVENTS", 2000);
    let c = env_or("LOADGEN_CONCURRENCY", 32);
    let pg =
        std::env::var("ACCESSGOV_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let amqp =
        std::env::var("ACCESSGOV_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let db = format!("accessgov_loadgen_{tag}");
    let mut config = Config::parse(include_str!("../accessgov.example.toml")).map_err(anyhow::Error::msg)?;
    config.database.url = format!("{pg}/{db}");
    config.database.max_connections = 20;
    config.broker.url = amqp.clone();
    config.broker.prefix = format!("agload_{tag}");
    config.ingress.listen = "127.0.0.1:0".parse()?;
    config.ops.listen = "127.0.0.1:0".parse()?;
    config.ops.admin_token_env = None; // no admin API in the benchmark
    let config = Arc::new(config);
    let secret = "loadgen-secret";
    let verifier = Verifier { hmac_secret: Some(SecretString::from(secret)), bearer_token: None };
    let token = CancellationToken::new();
    let app = App::start(config.clone(), Role::All, Some(verifier), Default::default(), true, token.clone()).await?;
    let url = format!("http://{}/webhooks/jsm", app.ingress_addr.expect("ingress"));

    let template: Value =
        serde_json::from_str(include_str!("../tests/fixtures/jsm/webhook-approved-confluence-write.json"))?;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = template.clone();
            v["issue"]["id"] = json!(format!("{}", 500_000 + i));
            v["issue"]["key"] = json!(format!("LOAD-{i}"));
            v["issue"]["fields"]["reporter"]["accountId"] = json!(format!("load-user-{}", i % 500));
            v["changelog"]["id"] = json!(format!("{}", 900_000 + i));
            // A fresh body time: the fixture's own is older than `[jsm] max_event_age`.
            v["timestamp"] = json!(chrono::Utc::now().timestamp_millis());
            serde_json::to_vec(&v).expect("serializes")
        })
        .collect();
    let rss_before = peak_rss_mib();
    println!("loadgen: {n} events, {c} concurrent clients, baseline peak RSS {rss_before:.1} MiB");

    let http = reqwest::Client::new();
    let queue = Arc::new(tokio::sync::Mutex::new(bodies.into_iter()));
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..c {
        let (http, url, queue) = (http.clone(), url.clone(), queue.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let Some(body) = queue.lock().await.next() else { break };
                let t = Instant::now();
                let resp = http.post(&url).header("X-Hub-Signature", sign(secret, &body)).body(body).send().await;
                latencies.push(t.elapsed());
                if !resp.is_ok_and(|r| r.status() == 202) {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut failures = 0;
    for client in clients {
        let (l, f) = client.await?;
        latencies.extend(l);
        failures += f;
    }
    let ingest = start.elapsed();
    let pool = sqlx::PgPool::connect(&config.database.url).await?;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&pool).await?;
        if done as usize >= n - failures || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end_to_end = start.elapsed();
    let audit_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await?;
    latencies.sort();
    let accepted_per_sec = (n - failures) as f64 / ingest.as_secs_f64();
    let processed_per_sec = (n - failures) as f64 / end_to_end.as_secs_f64();
    let (p50, p95, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.95), percentile(&latencies, 0.99));
    let rss = peak_rss_mib();
    println!(
        "ingress: {accepted_per_sec:.0} accepted/s over {:.2}s; 202 latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms; {failures} failed",
        ingest.as_secs_f64()
    );
    println!(
        "worker:  all {} processed in {:.2}s => {processed_per_sec:.0} events/s end to end; {audit_rows} audit rows",
        n - failures,
        end_to_end.as_secs_f64()
    );
    println!("memory:  peak RSS {rss:.1} MiB (ingress + worker + load clients in one process)");

    token.cancel();
    app.wait().await?;
    pool.close().await;
    let conn = lapin::Connection::connect(&amqp, Default::default()).await?;
    let ch = conn.create_channel().await?;
    accessgov::broker::topology::delete(
        &ch,
        &accessgov::broker::Names::new(&config.broker.prefix, &config.broker.retry_delays),
    )
    .await?;
    let admin = sqlx::PgPool::connect(&format!("{pg}/postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))).execute(&admin).await?;

    let mut missed = Vec::new();
    if failures > 0 {
        missed.push(format!("{failures} requests were not accepted"));
    }
    if accepted_per_sec < TARGET_ACCEPTED_PER_SEC {
        missed.push(format!("accepted/s {accepted_per_sec:.0} < {TARGET_ACCEPTED_PER_SEC}"));
    }
    if p99 > TARGET_P99_MS {
        missed.push(format!("p99 {p99:.1} ms > {TARGET_P99_MS} ms"));
    }
    if processed_per_sec < TARGET_PROCESSED_PER_SEC {
        missed.push(format!("processed/s {processed_per_sec:.0} < {TARGET_PROCESSED_PER_SEC}"));
    }
    if rss > TARGET_PEAK_RSS_MIB {
        missed.push(format!("peak RSS {rss:.0} MiB > {TARGET_PEAK_RSS_MIB} MiB"));
    }
    if missed.is_empty() {
        println!("targets: all met");
        Ok(())
    } else {
        println!("targets MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}
