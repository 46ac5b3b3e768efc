//! The operator listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! Routes are listed in one place; the admin API will be one more `.nest`.

use crate::broker::Broker;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct OpsState {
    pub broker: Broker,
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(crate::ingress::handlers::healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn readyz(State(state): State<OpsState>) -> axum::response::Response {
    crate::ingress::handlers::readiness(&state.broker, &state.pool).await
}

pub async fn serve(listener: TcpListener, state: OpsState, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "ops listener (metrics, health) listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
