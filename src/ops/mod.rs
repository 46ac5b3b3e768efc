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
