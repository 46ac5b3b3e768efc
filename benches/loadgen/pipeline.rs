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
    if let Some(ms) = env.batch_wait_ms {
        config.worker.batch_wait = Duration::from_millis(ms);
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

/// The offboarding scenario's figures.
pub struct Offboard {
    pub holds: usize,
    pub applications: usize,
    /// From the offboarding webhook's 202 to the last revoke event completed.
    pub end_to_end: Duration,
    pub calls: usize,
    pub max_in_flight: usize,
    pub cpu: CpuUse,
}

/// A leaver with `holds` holds (one granting ticket each) spread over
/// `applications` live applications behind the mock provider at `latency`:
/// one approved offboarding webhook, timed until every revoke has completed.
pub async fn offboard(env: &Env, holds: usize, applications: usize, latency: Duration) -> anyhow::Result<Offboard> {
    let tag = common::tag();
    let mut config = config(env, &tag)?;
    let mock = MockProvider::start(latency).await?;
    let template = config.applications.get(LIVE_APP).expect("the example configures Confluence").clone();
    let names: Vec<String> = (0..applications).map(|i| format!("App{i}")).collect();
    let mut connectors = Connectors::new();
    for name in &names {
        let mut app = template.clone();
        app.dry_run = false;
        connectors.insert(
            name.clone(),
            Arc::new(MockConnector::new(&app, mock.base_url()).map_err(anyhow::Error::msg)?)
                as Arc<dyn accessgov::connectors::Connector>,
        );
        config.applications.insert(name.clone(), app);
    }
    config.jsm.request_types.insert("Offboard User".into(), accessgov::config::RequestAction::Offboard);
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let started = App::start(config.clone(), Role::All, Some(verifier()), connectors, true, token.clone()).await;
    let result = match started {
        Ok(app) => {
            let measured = measure_offboard(&app, &config, &names, holds, &mock).await;
            token.cancel();
            let stopped = app.wait().await;
            measured.and_then(|m| stopped.map(|()| m))
        }
        Err(e) => Err(e),
    };
    mock.stop();
    cleanup(env, &config, &tag).await?;
    result
}

const LEAVER: &str = "leaver-0001";

async fn measure_offboard(
    app: &App,
    config: &Config,
    apps: &[String],
    holds: usize,
    mock: &MockProvider,
) -> anyhow::Result<Offboard> {
    // The ledger as grants would have left it: one hold per ticket, round robin over the applications.
    let pool = sqlx::PgPool::connect(config.database.migrate_url()).await?;
    let identity =
        serde_json::json!({"account_id": LEAVER, "email": "leaver@example.com", "display_name": null, "fields": {}});
    for i in 0..holds {
        let application = &apps[i % apps.len()];
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO access_grants (application, subject, subject_info, target, state, granted_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'active', now(), now()) RETURNING id",
        )
        .bind(application)
        .bind(LEAVER)
        .bind(&identity)
        .bind(format!("group-{i}"))
        .fetch_one(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO grant_holds (grant_id, ticket, access_level, event_id, event_at, identity) \
             VALUES ($1, $2, 'Write', $3, now() - interval '1 day', $4)",
        )
        .bind(id)
        .bind(format!("OLD-{i}"))
        .bind(uuid::Uuid::new_v4())
        .bind(&identity)
        .execute(&pool)
        .await?;
    }
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/jsm/webhook-approved-confluence-write.json"))?;
    v["issue"]["key"] = serde_json::json!("OFF-1");
    v["issue"]["id"] = serde_json::json!("700001");
    v["issue"]["fields"]["reporter"]["accountId"] = serde_json::json!(LEAVER);
    v["issue"]["fields"]["customfield_10010"]["requestType"]["name"] = serde_json::json!("Offboard User");
    v["issue"]["fields"]["customfield_10050"] = serde_json::Value::Null;
    v["issue"]["fields"]["customfield_10051"] = serde_json::Value::Null;
    v["timestamp"] = serde_json::json!(chrono::Utc::now().timestamp_millis());
    let body = serde_json::to_vec(&v)?;
    let url = format!("http://{}/webhooks/jsm", app.ingress_addr.expect("ingress runs"));
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Hub-Signature", accessgov::ingress::auth::sign(SECRET, &body))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "the offboarding webhook was answered {}", resp.status());
    // The offboarding itself and one revoke event per granting ticket.
    let end_to_end = common::wait_for_count(&pool, "processed_events", holds + 1, start).await?;
    let cpu = cpu.since();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id WHERE g.subject = $1",
    )
    .bind(LEAVER)
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(left == 0, "{left} hold(s) of the leaver left");
    pool.close().await;
    Ok(Offboard {
        holds,
        applications: apps.len(),
        end_to_end,
        calls: mock.calls(),
        max_in_flight: mock.max_in_flight(),
        cpu,
    })
}
