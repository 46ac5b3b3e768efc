//! The operator listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, the
//! admin API under `/admin` ([`admin`]) and the web console under `/console`
//! ([`console`]). Routes are listed in one place; adding one is one line.

pub mod admin;
pub mod console;

use crate::broker::Broker;
use crate::config::Config;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct OpsState {
    pub broker: Broker,
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    pub config: Arc<Config>,
    /// The admin API token; `None` turns `/admin` off.
    pub admin_token: Option<Arc<SecretString>>,
    /// Rate limit of the `admin_auth_failed` audit rows.
    pub auth_failures: Arc<admin::AuthFailureAudit>,
    /// The web console; `None` turns `/console` off (no console token configured).
    pub console: Option<Arc<console::Console>>,
    /// The backlog gauges (dead letters, intents, queues, audit verification),
    /// read when `/metrics` is scraped; `None` in a process without a worker.
    pub backlog: Option<Arc<BacklogGauges>>,
}

/// Reads the backlog gauges at most every [`BacklogGauges::EVERY`], however
/// often `/metrics` is scraped (several Prometheus replicas, say).
#[derive(Default)]
pub struct BacklogGauges {
    last: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl BacklogGauges {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    /// A scrape never waits longer than this for the database and the broker.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

    async fn refresh(&self, pool: &PgPool, broker: &Broker) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        match tokio::time::timeout(Self::TIMEOUT, read_backlog(pool, broker)).await {
            Ok(Ok(b)) => crate::metrics::set_backlog(&b),
            // The previous values stay; the next scrape tries again.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the backlog gauges"),
            Err(_) => tracing::warn!("reading the backlog gauges timed out"),
        }
        *last = Some(std::time::Instant::now());
    }
}

/// The backlog, through the same store functions as the CLI.
pub async fn read_backlog(pool: &PgPool, broker: &Broker) -> Result<crate::metrics::Backlog, sqlx::Error> {
    let (open, oldest) = crate::dead_letters::open_summary(pool).await?;
    let intents_pending = crate::intents::pending_count(pool).await?;
    let verify = crate::audit::verify::latest_run(pool).await?;
    let names = broker.names();
    // A broker outage leaves the queue gauges as they were (and /readyz says why).
    let requests_ready = broker.queue_depth(&names.requests).await.ok();
    let dead_ready = broker.queue_depth(&names.dead).await.ok();
    Ok(crate::metrics::Backlog {
        dead_letters_open: open,
        oldest_dead_letter_age: oldest
            .map_or(std::time::Duration::ZERO, |at| (chrono::Utc::now() - at).to_std().unwrap_or_default()),
        intents_pending,
        requests_ready,
        dead_ready,
        audit_verify: verify.map(|v| (v.ok, v.at)),
    })
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(crate::ingress::handlers::healthz))
        .route("/readyz", get(readyz))
        .nest("/admin", admin::router(&state))
        .nest("/console", console::router(&state))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    if let Some(backlog) = &state.backlog {
        backlog.refresh(&state.pool, &state.broker).await;
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn readyz(State(state): State<OpsState>) -> axum::response::Response {
    crate::ingress::handlers::readiness(&state.broker, &state.pool).await
}

pub async fn serve(listener: TcpListener, state: OpsState, shutdown: CancellationToken) -> std::io::Result<()> {
    let admin = if state.admin_token.is_some() { "enabled" } else { "disabled (no [ops] admin token)" };
    let console = if state.console.is_some() { "enabled" } else { "disabled (no [ops] console token)" };
    tracing::info!(addr = %listener.local_addr()?, admin_api = admin, console, "ops listener (metrics, health, admin, console) listening");
    // Slow headers are cut off as on the ingress (`[ingress] header_read_timeout`),
    // and handlers see the peer address, which a refused admin call's audit row names.
    let header_read_timeout = state.config.ingress.header_read_timeout;
    crate::ingress::serve_http1(
        listener,
        router(state),
        header_read_timeout,
        crate::metrics::ops_header_timeout,
        shutdown,
    )
    .await;
    Ok(())
}
