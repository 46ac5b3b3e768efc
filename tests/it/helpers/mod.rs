//! `spawn_app()`: a whole accessgov (ingress + worker + ops) on port 0, with its
//! own database and its own broker prefix, torn down when dropped.

pub mod chaos_proxy;
pub mod db;
pub mod provider;

use accessgov::app::{App, Role};
use accessgov::broker::{Names, topology};
use accessgov::config::Config;
use accessgov::connectors::Connectors;
use accessgov::ingress::auth::{Verifier, sign};
use provider::{FakeConnector, FakeProvider};
use secrecy::SecretString;
use sqlx::PgPool;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";
pub const BEARER_TOKEN: &str = "test-automation-token";
pub const EXAMPLE_CONFIG: &str = include_str!("../../../accessgov.example.toml");

pub fn amqp_url() -> String {
    std::env::var("ACCESSGOV_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The server URL without a database name, as a role that may create databases
/// and roles: tests migrate with it and use it for their own checks.
pub fn pg_server_url() -> String {
    std::env::var("ACCESSGOV_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The server URL without a database name, as the least-privilege runtime role the
/// migrations create: what the services under test connect as.
/// `ACCESSGOV_TEST_APP_DATABASE_URL`, else [`pg_server_url`] with its user
/// replaced (no password: trust authentication on the test server).
pub fn app_server_url() -> String {
    std::env::var("ACCESSGOV_TEST_APP_DATABASE_URL")
        .unwrap_or_else(|_| with_user(&pg_server_url(), accessgov::db::RUNTIME_ROLE))
}

/// `scheme://user[:password]@host...` -> `scheme://<user>@host...`.
pub fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/jsm/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture exists")
}

/// A test config: the example file, with this test's database, prefix and port-0
/// listeners. The services connect as the runtime role; migrations run as the owner.
pub fn test_config(db_name: &str, prefix: &str) -> Config {
    let mut c = Config::parse(EXAMPLE_CONFIG).expect("example config parses");
    c.database.url = format!("{}/{db_name}", app_server_url());
    c.database.migrate_url = Some(format!("{}/{db_name}", pg_server_url()));
    c.database.max_connections = 5;
    c.broker.url = amqp_url();
    c.broker.prefix = prefix.to_owned();
    c.broker.retry_delays = vec![Duration::from_millis(50), Duration::from_millis(100)];
    c.broker.prefetch = 16;
    c.ingress.listen = "127.0.0.1:0".parse().unwrap();
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c.worker.shutdown_grace = Duration::from_secs(5);
    // The fixture corpus was recorded in late 2025 and the tests post it as it is:
    // far older than the default 7 days. The stale check has its own tests.
    c.jsm.max_event_age = Duration::from_secs(100 * 365 * 86_400);
    // The admin API is off unless a test turns it on (with `admin_token_file`).
    c.ops.admin_token_env = None;
    assert_eq!(c.validate(), vec![], "test config must be valid");
    c
}

pub fn verifier() -> Verifier {
    Verifier {
        hmac_secret: Some(SecretString::from(WEBHOOK_SECRET)),
        bearer_token: Some(SecretString::from(BEARER_TOKEN)),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub names: Names,
    pub http: reqwest::Client,
    db_name: String,
    token: CancellationToken,
    app: Option<App>,
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns with a tweak applied to the config first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_full(tweak, Connectors::new()).await
}

/// The application name the fake provider serves in [`spawn_live_app`].
pub const LIVE_APP: &str = "Confluence";

/// Spawns with "Confluence" live (not dry-run) behind a fake provider.
pub async fn spawn_live_app(tweak: impl FnOnce(&mut Config)) -> (TestApp, Arc<FakeProvider>) {
    let provider = Arc::new(FakeProvider::default());
    let app = spawn_app_full(
        |c| {
            live_config(c);
            tweak(c);
        },
        fake_connectors(&provider),
    )
    .await;
    (app, provider)
}

/// Test settings for a live application: fast retries.
pub fn live_config(c: &mut Config) {
    c.applications.get_mut(LIVE_APP).unwrap().dry_run = false;
    c.worker.inline_backoff = vec![Duration::from_millis(10), Duration::from_millis(20)];
    c.worker.max_inline_wait = Duration::from_secs(1);
}

/// The fake provider behind each of `applications`.
pub fn fake_connectors_for(provider: &Arc<FakeProvider>, applications: &[&str]) -> Connectors {
    applications
        .iter()
        .map(|app| {
            ((*app).to_owned(), Arc::new(FakeConnector(provider.clone())) as Arc<dyn accessgov::connectors::Connector>)
        })
        .collect()
}

pub fn fake_connectors(provider: &Arc<FakeProvider>) -> Connectors {
    fake_connectors_for(provider, &[LIVE_APP])
}

pub async fn spawn_app_full(tweak: impl FnOnce(&mut Config), connectors: Connectors) -> TestApp {
    spawn_app_role(tweak, connectors, Role::All).await
}

/// Spawns the given role (the ingress, for tests that run workers as child processes).
pub async fn spawn_app_role(tweak: impl FnOnce(&mut Config), connectors: Connectors, role: Role) -> TestApp {
    let db_name = unique("accessgov_test");
    let prefix = unique("agtest");
    let mut config = test_config(&db_name, &prefix);
    tweak(&mut config);
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let app =
        App::start(config.clone(), role, Some(verifier()), connectors, true, token.clone()).await.expect("app starts");
    TestApp {
        addr: app.ingress_addr.expect("ingress runs"),
        ops_addr: app.ops_addr,
        // The test's own pool, as the owner (tests read and tamper with tables
        // directly); it outlives the app (tests stop and restart roles).
        pool: PgPool::connect(config.database.migrate_url()).await.expect("test pool"),
        names: Names::new(&config.broker.prefix, &config.broker.retry_delays),
        config,
        http: reqwest::Client::new(),
        db_name,
        token,
        app: Some(app),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts a body signed as a Jira admin webhook.
    pub async fn post_signed(&self, body: &[u8], delivery_id: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/webhooks/jsm"))
            .header("content-type", "application/json")
            .header("X-Hub-Signature", sign(WEBHOOK_SECRET, body))
            .body(body.to_vec());
        if let Some(d) = delivery_id {
            req = req.header("X-Atlassian-Webhook-Identifier", d);
        }
        req.send().await.expect("request sent")
    }

    /// Audit rows (action, outcome, target) of one event, in order.
    pub async fn audit_actions(&self, event_id: uuid::Uuid) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as("SELECT action, outcome, target FROM audit_log WHERE event_id = $1 ORDER BY seq")
            .bind(event_id)
            .fetch_all(&self.pool)
            .await
            .expect("audit query")
    }

    /// Starts one more worker process on the same database and broker prefix.
    pub async fn extra_worker(&self, connectors: Connectors) -> (App, CancellationToken) {
        let token = self.token.child_token();
        let mut config = (*self.config).clone();
        config.ops.listen = "127.0.0.1:0".parse().unwrap();
        let app = App::start(Arc::new(config), Role::Worker, None, connectors, false, token.clone())
            .await
            .expect("worker starts");
        (app, token)
    }

    /// Stops the app and waits for it. Later [`TestApp::extra_worker`]s run
    /// (a child of a cancelled token would stop at once) and stop on drop.
    pub async fn stop(&mut self) {
        self.token.cancel();
        if let Some(app) = self.app.take() {
            tokio::time::timeout(Duration::from_secs(15), app.wait())
                .await
                .expect("app stops within 15s")
                .expect("app stops cleanly");
        }
        self.token = CancellationToken::new();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
        let db_name = self.db_name.clone();
        let names = self.names.clone();
        let app = self.app.take();
        // Teardown on its own runtime: Drop cannot await, and the test's runtime may be ending.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                // Let the app stop first, or its worker could re-declare the queues deleted below.
                if let Some(app) = app {
                    let _ = tokio::time::timeout(Duration::from_secs(10), app.wait()).await;
                }
                if let Ok(conn) = lapin::Connection::connect(&amqp_url(), Default::default()).await {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = topology::delete(&ch, &names).await;
                    }
                    let _ = conn.close(200, "test teardown".into()).await;
                }
                if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_server_url())).await {
                    let _ =
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)")))
                            .execute(&admin)
                            .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Polls `f` every 25 ms until it yields `Some`, or panics after `timeout`
/// naming what it waited for. Use instead of sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
