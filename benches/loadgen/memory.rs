//! Worker memory, measured for the worker process alone.
//!
//! The in-process ingress queues EVENTS requests first; then `accessgov worker
//! --config <tmp toml>` starts as a child process with `prefetch` and
//! `concurrency` both EVENTS, so that every event is delivered to it and in
//! process at once. Its application is live: accessgov's `jira` connector
//! (three calls per grant) against the mock provider, which answers after
//! LATENCY, so the events stay in flight. Peak RSS is the child's `VmHWM`
//! from /proc once every event is processed.

use crate::common::{self, Env, SECRET};
use crate::mock::MockProvider;
use accessgov::app::{App, Role};
use accessgov::config::Config;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Events in flight at once.
pub const EVENTS: usize = 1000;
/// Each provider call's latency.
pub const LATENCY: Duration = Duration::from_millis(500);
/// Pool size of the worker (the `[database]` default).
const WORKER_POOL: i64 = 10;

/// Secrets the child reads from its environment, never from the file.
const ENV_WEBHOOK_SECRET: &str = "LOADGEN_WEBHOOK_SECRET";
const ENV_JIRA_EMAIL: &str = "LOADGEN_JIRA_EMAIL";
const ENV_JIRA_TOKEN: &str = "LOADGEN_JIRA_TOKEN";

/// The worker's `[worker] concurrency`: EVENTS, unless LOADGEN_MEMORY_CONCURRENCY
/// says otherwise (to see what the in-process share costs; the events stay
/// delivered to the worker through `prefetch`).
pub fn concurrency() -> usize {
    common::env_or("LOADGEN_MEMORY_CONCURRENCY", EVENTS)
}

pub struct Memory {
    pub bin: PathBuf,
    pub events: usize,
    /// `VmHWM` of the worker once everything is processed.
    pub peak_rss_mib: f64,
    pub elapsed: Duration,
    pub calls: usize,
    /// The most provider calls the mock held at once.
    pub max_in_flight: usize,
}

/// The accessgov binary: `LOADGEN_ACCESSGOV_BIN`, else the one cargo built for
/// this bench, else `<bench exe dir>/../accessgov` (`target/release/accessgov`).
pub fn accessgov_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("LOADGEN_ACCESSGOV_BIN") {
        return Ok(p.into());
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_accessgov").map(PathBuf::from).filter(|p| p.exists()) {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let candidate = exe.parent().and_then(Path::parent).map(|d| d.join("accessgov"));
    candidate.filter(|p| p.exists()).ok_or_else(|| {
        anyhow::anyhow!(
            "accessgov binary not found: build it with `cargo build --release` or set LOADGEN_ACCESSGOV_BIN"
        )
    })
}

/// The worker's config file: the example with this scenario's database,
/// prefix, listeners and in-flight settings, and Confluence live as a `jira`
/// application on the mock. Secrets are named, never written.
fn worker_toml(env: &Env, tag: &str, mock_url: &str) -> anyhow::Result<String> {
    let mut t: toml::Table = toml::from_str(include_str!("../../accessgov.example.toml"))?;
    let mut set = |path: &str, value: Option<toml::Value>| -> anyhow::Result<()> {
        let (section, key) = path.split_once('.').expect("section.key");
        let table = t
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| anyhow::anyhow!("no [{section}] in the example"))?;
        match value {
            Some(v) => table.insert(key.to_owned(), v),
            None => table.remove(key),
        };
        Ok(())
    };
    let s = |v: &str| Some(toml::Value::String(v.to_owned()));
    let i = |v: i64| Some(toml::Value::Integer(v));
    set("broker.url", s(&env.amqp))?;
    set("broker.prefix", s(&common::prefix(tag)))?;
    set("broker.prefetch", i(EVENTS as i64))?;
    set("database.url", s(&env.db_url(&common::db_name(tag))))?;
    set("database.max_connections", i(WORKER_POOL))?;
    set("ingress.listen", s("127.0.0.1:0"))?;
    set("ingress.hmac_secret_env", s(ENV_WEBHOOK_SECRET))?;
    set("ingress.bearer_token_env", None)?;
    set("ops.listen", s("127.0.0.1:0"))?;
    set("ops.admin_token_env", None)?;
    set("worker.concurrency", i(concurrency() as i64))?;
    set("worker.shutdown_grace", s("5s"))?;
    set("jsm.email_env", None)?;
    set("jsm.api_token_env", None)?;
    let app: toml::Table = toml::from_str(&format!(
        "kind = \"jira\"\nbase_url = \"{mock_url}\"\nemail_env = \"{ENV_JIRA_EMAIL}\"\n\
         api_token_env = \"{ENV_JIRA_TOKEN}\"\nowner = \"loadgen\"\ndry_run = false\n"
    ))?;
    set("applications.Confluence", Some(toml::Value::Table(app)))?;
    Ok(toml::to_string(&t)?)
}

pub async fn run(env: &Env) -> anyhow::Result<Memory> {
    let bin = accessgov_bin()?;
    let tag = common::tag();
    let mock = MockProvider::start(LATENCY).await?;
    let text = worker_toml(env, &tag, &mock.base_url())?;
    let config = Config::parse(&text).map_err(anyhow::Error::msg)?;
    let problems = config.validate();
    anyhow::ensure!(problems.is_empty(), "the worker config is invalid: {problems:?}");
    let config = Arc::new(config);
    let result = measure(env, bin, &text, config.clone(), &mock).await;
    mock.stop();
    crate::pipeline::cleanup(env, &config, &tag).await?;
    result
}

async fn measure(
    env: &Env,
    bin: PathBuf,
    text: &str,
    config: Arc<Config>,
    mock: &MockProvider,
) -> anyhow::Result<Memory> {
    // Queue every event first (ingress in this process, migrations with it).
    // The ingress calls no provider: its copy keeps every application dry-run,
    // as `App::start` wants a connector for each live one.
    let mut ingress_config = (*config).clone();
    ingress_config.applications.values_mut().for_each(|a| a.dry_run = true);
    let token = CancellationToken::new();
    let app = App::start(
        Arc::new(ingress_config),
        Role::Ingress,
        Some(crate::pipeline::verifier()),
        Default::default(),
        true,
        token.clone(),
    )
    .await?;
    let url = format!("http://{}/webhooks/jsm", app.ingress_addr.expect("ingress runs"));
    let posted = common::post_closed_loop(&url, common::bodies(EVENTS)?, env.concurrency).await;
    token.cancel();
    app.wait().await?;
    let posted = posted?;
    anyhow::ensure!(posted.failures == 0, "{} of {EVENTS} webhooks were not accepted", posted.failures);

    let mut file = tempfile::Builder::new().prefix("loadgen-worker-").suffix(".toml").tempfile()?;
    file.write_all(text.as_bytes())?;
    let mut log = tempfile::tempfile()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("worker")
        .arg("--config")
        .arg(file.path())
        .env(ENV_WEBHOOK_SECRET, SECRET)
        .env(ENV_JIRA_EMAIL, "loadgen@example.com")
        .env(ENV_JIRA_TOKEN, "loadgen-token")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone()?);
    for var in [
        "ACCESSGOV_CONFIG",
        "ACCESSGOV_BROKER_URL",
        "ACCESSGOV_BROKER_PREFIX",
        "ACCESSGOV_DATABASE_URL",
        "ACCESSGOV_DATABASE_MIGRATE_URL",
        "ACCESSGOV_INGRESS_LISTEN",
        "ACCESSGOV_OPS_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    let watched = watch(&mut child, &config.database.url).await;
    let peak_rss_mib = common::proc_mem_mib(pid, "VmHWM:").unwrap_or(f64::NAN);
    stop(&mut child).await;
    let elapsed = watched.map_err(|e| {
        let mut tail = String::new();
        let _ = log.rewind();
        let _ = log.read_to_string(&mut tail);
        let tail: String =
            tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        e.context(format!("worker log tail:\n{tail}"))
    })?;
    Ok(Memory { bin, events: EVENTS, peak_rss_mib, elapsed, calls: mock.calls(), max_in_flight: mock.max_in_flight() })
}

/// Waits until the worker processed every event; the time it took.
async fn watch(child: &mut Child, db_url: &str) -> anyhow::Result<Duration> {
    let pool = sqlx::PgPool::connect(db_url).await?;
    let start = Instant::now();
    let result = loop {
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("the worker exited early: {status}"));
        }
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&pool).await?;
        if done as usize >= EVENTS {
            break Ok(start.elapsed());
        }
        if start.elapsed() > common::DRAIN_TIMEOUT {
            break Err(anyhow::anyhow!("only {done} of {EVENTS} events processed"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pool.close().await;
    result
}

/// SIGTERM, a few seconds to stop, then SIGKILL.
async fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    for _ in 0..150 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
