//! What every scenario shares: the environment, fresh databases, signed
//! bodies, closed-loop posting, waiting for a count, percentiles.

use accessgov::ingress::auth::sign;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The webhook secret the bench's ingress verifies.
pub const SECRET: &str = "loadgen-secret";
/// The longest a scenario waits for its events to be processed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of one run, from the environment.
#[derive(Debug, Clone)]
pub struct Env {
    /// Server URL without a database name (a role that may create databases),
    /// optionally with connection parameters (`?sslmode=disable`).
    pub pg: String,
    pub amqp: String,
    /// Events per throughput scenario (`LOADGEN_EVENTS`).
    pub events: usize,
    /// C: worker concurrency, baseline consumer concurrency, and the number of
    /// closed-loop posting clients / baseline publishers (`LOADGEN_CONCURRENCY`).
    pub concurrency: usize,
    /// Ingress open-loop rate and measured duration.
    pub ingress_rps: usize,
    pub ingress_secs: u64,
    /// `rate_limit_per_second` of the rate-limited live100 run.
    pub rate_limit: usize,
    /// `[worker] batch_max` of the in-process worker (`LOADGEN_BATCH_MAX`), for
    /// experiments; the config default otherwise.
    pub batch_max: Option<usize>,
    /// `[worker] batch_wait` in milliseconds (`LOADGEN_BATCH_WAIT_MS`), for
    /// experiments; the config default otherwise.
    pub batch_wait_ms: Option<u64>,
}

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(default)
}

impl Env {
    /// The URL of database `db` on the server: `<server>/<db>[?<params>]`
    /// (ACCESSGOV_TEST_DATABASE_URL may carry parameters, e.g. `?sslmode=disable`).
    pub fn db_url(&self, db: &str) -> String {
        match self.pg.split_once('?') {
            Some((server, params)) => format!("{}/{db}?{params}", server.trim_end_matches('/')),
            None => format!("{}/{db}", self.pg.trim_end_matches('/')),
        }
    }

    pub fn from_env() -> Self {
        Self {
            pg: std::env::var("ACCESSGOV_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            amqp: std::env::var("ACCESSGOV_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            events: env_or("LOADGEN_EVENTS", 2000),
            concurrency: env_or("LOADGEN_CONCURRENCY", 16),
            ingress_rps: env_or("LOADGEN_INGRESS_RPS", 1000),
            ingress_secs: env_or("LOADGEN_INGRESS_SECONDS", 10) as u64,
            rate_limit: env_or("LOADGEN_RATE_LIMIT", 10),
            batch_max: std::env::var("LOADGEN_BATCH_MAX").ok().and_then(|v| v.parse().ok()),
            batch_wait_ms: std::env::var("LOADGEN_BATCH_WAIT_MS").ok().and_then(|v| v.parse().ok()),
        }
    }
}

/// A fresh name part: `accessgov_loadgen_<tag>` and `agload_<tag>`.
pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub fn db_name(tag: &str) -> String {
    format!("accessgov_loadgen_{tag}")
}

pub fn prefix(tag: &str) -> String {
    format!("agload_{tag}")
}

pub async fn create_db(env: &Env, name: &str) -> anyhow::Result<()> {
    let admin = PgPool::connect(&env.db_url("postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&admin).await?;
    admin.close().await;
    Ok(())
}

pub async fn drop_db(env: &Env, name: &str) -> anyhow::Result<()> {
    let admin = PgPool::connect(&env.db_url("postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Removes a scenario's broker topology (`accessgov::broker::topology::delete`).
pub async fn drop_topology(env: &Env, names: &accessgov::broker::Names) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(&env.amqp, Default::default()).await?;
    let ch = conn.create_channel().await?;
    let deleted = accessgov::broker::topology::delete(&ch, names).await;
    let _ = conn.close(200, "loadgen cleanup".into()).await;
    deleted.map_err(Into::into)
}

/// A signed webhook body.
pub struct Signed {
    pub body: Vec<u8>,
    pub signature: String,
}

/// `n` distinct approved grant requests (Confluence / Write), each for its own
/// requester, so that every event is a new grant and, when the application is
/// live, exactly one provider call.
pub fn bodies(n: usize) -> anyhow::Result<Vec<Signed>> {
    let template: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/jsm/webhook-approved-confluence-write.json"))?;
    // A fresh body time: the fixture's own is older than `[jsm] max_event_age`.
    let now = chrono::Utc::now().timestamp_millis();
    Ok((0..n)
        .map(|i| {
            let mut v = template.clone();
            v["issue"]["id"] = json!(format!("{}", 500_000 + i));
            v["issue"]["key"] = json!(format!("LOAD-{i}"));
            v["issue"]["fields"]["reporter"]["accountId"] = json!(format!("load-user-{i}"));
            v["changelog"]["id"] = json!(format!("{}", 900_000 + i));
            v["timestamp"] = json!(now);
            let body = serde_json::to_vec(&v).expect("serializes");
            Signed { signature: sign(SECRET, &body), body }
        })
        .collect())
}

/// What closed-loop posting gave.
pub struct Posted {
    pub elapsed: Duration,
    pub failures: usize,
    /// Sorted request latencies (send to answer).
    pub latencies: Vec<Duration>,
}

/// Posts every body with `clients` closed-loop clients (each sends its next
/// body when the previous one is answered).
pub async fn post_closed_loop(url: &str, bodies: Vec<Signed>, clients: usize) -> anyhow::Result<Posted> {
    let http = reqwest::Client::new();
    let n = bodies.len();
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (http, url, queue) = (http.clone(), url.to_owned(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let Some(s) = queue.lock().expect("queue lock").next() else { break };
                let t = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-Hub-Signature", s.signature)
                    .body(s.body)
                    .send()
                    .await;
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
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failures += f;
    }
    latencies.sort();
    Ok(Posted { elapsed: start.elapsed(), failures, latencies })
}

/// Polls `SELECT count(*) FROM <table>` every 10 ms until it reaches `n`; the
/// time it did, measured from `start`.
pub async fn wait_for_count(pool: &PgPool, table: &str, n: usize, start: Instant) -> anyhow::Result<Duration> {
    let query = format!("SELECT count(*) FROM {table}");
    loop {
        let done: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone())).fetch_one(pool).await?;
        if done as usize >= n {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < DRAIN_TIMEOUT,
            "only {done} of {n} rows in {table} after {}s",
            DRAIN_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `p`-quantile of sorted durations, in milliseconds (NaN when empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `VmHWM` / `VmRSS` of a process, in MiB.
pub fn proc_mem_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What an open-loop run gave (the warm-up excluded).
pub struct OpenLoop {
    pub rps: usize,
    /// Requests measured (after the warm-up).
    pub measured: usize,
    pub failures: usize,
    /// Sorted latencies, each from the request's scheduled send time to its answer.
    pub latencies: Vec<Duration>,
    /// How late the generator sent, at worst (its own lag, counted in the latencies).
    pub max_send_lag: Duration,
    pub elapsed: Duration,
}

/// A request of an open-loop run: `true` when it was accepted.
pub type Request = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// Sends `total` requests on a fixed schedule (request `i` at `start + i / rps`,
/// whatever happened to the earlier ones), each on a task of its own, and
/// measures each from its scheduled time, so a stall is charged to every
/// request it delayed (no coordinated omission). The first `warmup` are not
/// measured. Runs on its own thread and current-thread runtime, apart from the
/// system under test; `setup` builds the request maker there.
pub async fn open_loop<S, M>(rps: usize, warmup: usize, total: usize, setup: S) -> anyhow::Result<OpenLoop>
where
    S: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<M>>>> + Send + 'static,
    M: FnMut(usize) -> Request + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let result = rt.block_on(async move {
            let mut make = setup().await?;
            let interval = Duration::from_secs_f64(1.0 / rps as f64);
            let start = Instant::now() + Duration::from_millis(20);
            let mut tasks = Vec::with_capacity(total);
            let mut max_send_lag = Duration::ZERO;
            for i in 0..total {
                let at = start + interval * i as u32;
                tokio::time::sleep_until(at.into()).await;
                max_send_lag = max_send_lag.max(at.elapsed());
                let request = make(i);
                tasks.push(tokio::spawn(async move {
                    let ok = request.await;
                    (ok, at.elapsed())
                }));
            }
            let mut latencies = Vec::with_capacity(total.saturating_sub(warmup));
            let mut failures = 0;
            for (i, t) in tasks.into_iter().enumerate() {
                let (ok, latency) = t.await?;
                if i >= warmup {
                    latencies.push(latency);
                    failures += usize::from(!ok);
                }
            }
            latencies.sort();
            Ok(OpenLoop { rps, measured: latencies.len(), failures, latencies, max_send_lag, elapsed: start.elapsed() })
        });
        let _ = tx.send(result);
    });
    rx.await?
}

/// CPU time used per process group, from two /proc snapshots.
pub struct CpuSnapshot {
    at: Instant,
    /// (this process, PostgreSQL, RabbitMQ) in clock ticks.
    ticks: [u64; 3],
    machine_busy: u64,
}

/// CPU seconds per group over a window.
pub struct CpuUse {
    pub wall: f64,
    pub this: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub others: f64,
    pub machine_busy: f64,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let me = std::process::id();
        let mut ticks = [0u64; 3];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
                let comm = &stat[open + 1..close];
                let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
                let used = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                    + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                let group = if pid == me {
                    0
                } else if comm == "postgres" {
                    1
                } else if comm.starts_with("beam") || comm.starts_with("erl") || comm == "epmd" {
                    2
                } else {
                    continue;
                };
                ticks[group] += used;
            }
        }
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let v: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                let idle = v.get(3)? + v.get(4)?;
                Some(v.iter().take(8).sum::<u64>() - idle)
            })
            .unwrap_or(0);
        Self { at: Instant::now(), ticks, machine_busy }
    }

    /// What was used since `self` (processes that ended meanwhile are not counted).
    pub fn since(&self) -> CpuUse {
        let now = Self::take();
        // USER_HZ is 100 on every Linux this runs on.
        let s = |a: u64, b: u64| a.saturating_sub(b) as f64 / 100.0;
        let (this, postgres, rabbitmq) =
            (s(now.ticks[0], self.ticks[0]), s(now.ticks[1], self.ticks[1]), s(now.ticks[2], self.ticks[2]));
        let machine_busy = s(now.machine_busy, self.machine_busy);
        CpuUse {
            wall: self.at.elapsed().as_secs_f64(),
            this,
            postgres,
            rabbitmq,
            // Everything else: other processes (ended ones too) and the kernel.
            others: (machine_busy - this - postgres - rabbitmq).max(0.0),
            machine_busy,
        }
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let pct = |s: f64| 100.0 * s / self.wall;
        write!(
            f,
            "cpu over {:.1}s: loadgen process {:.1}s ({:.0}% of a core), postgres {:.1}s ({:.0}%), rabbitmq {:.1}s ({:.0}%), everything else {:.1}s ({:.0}%); machine {:.0}% busy of {cores} cores",
            self.wall,
            self.this,
            pct(self.this),
            self.postgres,
            pct(self.postgres),
            self.rabbitmq,
            pct(self.rabbitmq),
            self.others,
            pct(self.others),
            100.0 * self.machine_busy / (self.wall * cores)
        )
    }
}
