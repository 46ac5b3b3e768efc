//! The public listener: `POST /webhooks/jsm`, `GET /healthz`, `GET /readyz`.
//!
//! Order of work per request: size limit -> authenticity (on the raw bytes) ->
//! JSON -> normalize -> publish with confirm -> 202. Nothing is answered 202
//! unless the broker confirmed it; anything that might be retried by Jira gets
//! a retryable status (503).

pub mod auth;
pub mod handlers;
pub mod normalize;

use crate::broker::Broker;
use crate::config::Config;
use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the handlers share.
#[derive(Clone)]
pub struct IngressState {
    pub config: Arc<Config>,
    pub verifier: Arc<auth::Verifier>,
    pub broker: Broker,
    pub pool: PgPool,
    /// Bounds requests in flight.
    pub slots: Arc<Semaphore>,
}

impl IngressState {
    pub fn new(config: Arc<Config>, verifier: auth::Verifier, broker: Broker, pool: PgPool) -> Self {
        let slots = Arc::new(Semaphore::new(config.ingress.max_concurrent_requests.max(1)));
        Self { config, verifier: Arc::new(verifier), broker, pool, slots }
    }
}

pub fn router(state: IngressState) -> Router {
    Router::new()
        .route("/webhooks/jsm", post(handlers::webhook))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .with_state(state)
}

/// Serves until the token is cancelled, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, state: IngressState, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
