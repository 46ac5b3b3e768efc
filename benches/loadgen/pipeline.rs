//! accessgov in this process (`App::start`, ingress + worker, or the ingress
//! alone), on a fresh database and broker prefix per scenario.

use crate::common::{self, CpuSnapshot, CpuUse, Env, OpenLoop, Posted, SECRET};
use crate::mock::{MockConnector, MockProvider};
use accessgov::app::{App, Role};
use accessgov::config::Config;
use accessgov::connectors::Connectors;
use accessgov::ingress::auth::Verifier;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The application the fixture's requests name.
pub const LIVE_APP: &str = "Confluence";

/// How the application is run.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Every application dry-run: evaluate and audit, call nothing.
    DryRun,
    /// Confluence live behind the mock provider, answering after `latency`.
    Live { latency: Duration, rate_limit: Option<usize> },
}

/// The bench's config: the example file with this scenario's database, prefix,
/// port-0 listeners, C as worker concurrency, and no JSM credentials (nothing
/// leaves the machine; approvals rest on the signed payload).
pub fn config(env: &Env, tag: &str) -> anyhow::Result<Config> {
    let mut config = Config::parse(include_str!("../../accessgov.example.toml")).map_err(anyhow::Error::msg)?;
    config.database.url = env.db_url(&common::db_name(tag));
    config.database.max_connections = POOL_SIZE;
    config.broker.url = env.amqp.clone();
    config.broker.prefix = common::prefix(tag);
    config.ingress.listen = "127.0.0.1:0".parse()?;
    config.ops.listen = "127.0.0.1:0".parse()?;
    config.ops.admin_token_env = None;
    config.jsm.email_env = None;
    config.jsm.api_token_env = None;
    config.worker.concurrency = env.concurrency;
    if let Some(b) = env.batch_max {
        config.worker.batch_max = b;
    }
    config.worker.shutdown_grace = Duration::from_secs(5);
    Ok(config)
}

/// The pool size of the in-process app (and of the baseline).
pub const POOL_SIZE: u32 = 20;

pub fn verifier() -> Verifier {
    Verifier { hmac_secret: Some(SecretString::from(SECRET)), bearer_token: None }
}

/// A throughput scenario's figures.
pub struct Throughput {
    pub events: usize,
    pub posted: Posted,
    pub end_to_end: Duration,
    /// Audit rows by action.
    pub actions: Vec<(String, i64)>,
    /// Transactions that recorded decisions (`record_batch` commits): N / this
    /// is the mean batch size.
    pub batches: i64,
    pub cpu: CpuUse,
    /// The mock's view (live scenarios).
    pub calls: usize,
    pub max_in_flight: usize,
    pub max_sliding_second: usize,
    pub max_fixed_second: usize,
}

impl Throughput {
    pub fn accepted(&self) -> usize {
        self.events - self.posted.failures
    }
    pub fn events_per_sec(&self) -> f64 {
        self.accepted() as f64 / self.end_to_end.as_secs_f64()
    }
}

/// Posts `n` events with C closed-loop clients to a whole accessgov, and waits
/// until `processed_events` holds all accepted ones.
pub async fn throughput(env: &Env, mode: Mode, n: usize) -> anyhow::Result<Throughput> {
    let tag = common::tag();
    let mut config = config(env, &tag)?;
    let mut connectors = Connectors::new();
    let mut mock = None;
    if let Mode::Live { latency, rate_limit } = mode {
        let m = MockProvider::start(latency).await?;
        let app = config.applications.get_mut(LIVE_APP).expect("the example configures Confluence");
        app.dry_run = false;
        if let Some(limit) = rate_limit {
            app.settings.insert("rate_limit_per_second".into(), toml::Value::Integer(limit as i64));
        }
        connectors.insert(
            LIVE_APP.to_owned(),
            Arc::new(MockConnector::new(app, m.base_url()).map_err(anyhow::Error::msg)?)
                as Arc<dyn accessgov::connectors::Connector>,
        );
        mock = Some(m);
    }
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let started = App::start(config.clone(), Role::All, Some(verifier()), connectors, true, token.clone()).await;
    let result = match started {
        Ok(app) => {
            let measured = measure_throughput(&app, &config, n, env.concurrency, mock.as_deref()).await;
            token.cancel();
            let stopped = app.wait().await;
            measured.and_then(|m| stopped.map(|()| m))
        }
        Err(e) => Err(e),
    };
    if let Some(m) = &mock {
        m.stop();
    }
    cleanup(env, &config, &tag).await?;
    result
}

async fn measure_throughput(
    app: &App,
    config: &Config,
    n: usize,
    clients: usize,
    mock: Option<&MockProvider>,
) -> anyhow::Result<Throughput> {
    let url = format!("http://{}/webhooks/jsm", app.ingress_addr.expect("ingress runs"));
    let bodies = common::bodies(n)?;
    let pool = sqlx::PgPool::connect(&config.database.url).await?;
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let posted = common::post_closed_loop(&url, bodies, clients).await?;
    let end_to_end = common::wait_for_count(&pool, "processed_events", n - posted.failures, start).await?;
    let cpu = cpu.since();
    // Rows a transaction inserted share its xmin: one per batch commit.
    let batches: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM audit_log WHERE action = 'decided'")
        .fetch_one(&pool)
        .await?;
    let actions: Vec<(String, i64)> =
        sqlx::query_as("SELECT action, count(*) FROM audit_log GROUP BY action ORDER BY action")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    Ok(Throughput {
        events: n,
        posted,
        end_to_end,
        actions,
        batches,
        cpu,
        calls: mock.map_or(0, MockProvider::calls),
        max_in_flight: mock.map_or(0, MockProvider::max_in_flight),
        max_sliding_second: mock.map_or(0, MockProvider::max_sliding_second),
        max_fixed_second: mock.map_or(0, MockProvider::max_fixed_second),
    })
}

/// Removes the scenario's broker topology and database.
pub async fn cleanup(env: &Env, config: &Config, tag: &str) -> anyhow::Result<()> {
    let names = accessgov::broker::Names::new(&config.broker.prefix, &config.broker.retry_delays);
    let topology = common::drop_topology(env, &names).await;
    common::drop_db(env, &common::db_name(tag)).await?;
    topology
}

/// The ingress scenario's figures.
pub struct Ingress {
    pub open_loop: OpenLoop,
    pub cpu: CpuUse,
    /// Messages in the requests queue afterwards (each 202 is one message).
    pub queued: u32,
}

/// The ingress alone (no worker in the process), webhooks sent open loop.
pub async fn ingress(env: &Env) -> anyhow::Result<Ingress> {
    let tag = common::tag();
    let config = Arc::new(config(env, &tag)?);
    let token = CancellationToken::new();
    let started =
        App::start(config.clone(), Role::Ingress, Some(verifier()), Connectors::new(), true, token.clone()).await;
    let result = match started {
        Ok(app) => {
            let measured = measure_ingress(env, &app, &config).await;
            token.cancel();
            let stopped = app.wait().await;
            measured.and_then(|m| stopped.map(|()| m))
        }
        Err(e) => Err(e),
    };
    cleanup(env, &config, &tag).await?;
    result
}

async fn measure_ingress(env: &Env, app: &App, config: &Config) -> anyhow::Result<Ingress> {
    let url = format!("http://{}/webhooks/jsm", app.ingress_addr.expect("ingress runs"));
    let (rps, warmup, total) = crate::baseline::ingress_schedule(env);
    let bodies = common::bodies(total)?;
    let cpu = CpuSnapshot::take();
    let open_loop = common::open_loop(rps, warmup, total, move || {
        Box::pin(async move {
            let http = reqwest::Client::new();
            let mut bodies = bodies.into_iter();
            let make = move |_i: usize| -> common::Request {
                let s = bodies.next().expect("a body per request");
                let req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-Hub-Signature", s.signature)
                    .body(s.body)
                    .send();
                Box::pin(async move { req.await.is_ok_and(|r| r.status() == 202) })
            };
            Ok(make)
        })
    })
    .await?;
    let cpu = cpu.since();
    let ch = app.broker.publish_channel().await?;
    let names = accessgov::broker::Names::new(&config.broker.prefix, &config.broker.retry_delays);
    let queue = ch
        .queue_declare(
            names.requests.as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await?;
    Ok(Ingress { open_loop, cpu, queued: queue.message_count() })
}
