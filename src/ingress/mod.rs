//! The public listener: `POST /webhooks/jsm`, `GET /healthz`, `GET /readyz`.
//!
//! Order of work per request: headers within `header_read_timeout` -> size
//! limit -> the whole body within `body_read_timeout` (408 otherwise) -> a
//! processing slot -> authenticity (on the raw bytes) -> JSON -> normalize ->
//! publish with confirm -> 202. Nothing is answered 202 unless the broker
//! confirmed it; anything that might be retried by Jira gets a retryable status
//! (503, or 408 for a body that did not arrive in time).
//!
//! Slow senders are bounded twice: hyper closes a connection whose headers do not
//! arrive in time, and a body is read before a slot is taken, so the slots
//! (`max_concurrent_requests`) bound processing only and a sender that trickles
//! its body holds none of them.

pub mod auth;
pub mod handlers;
pub mod normalize;

use crate::broker::Broker;
use crate::config::Config;
use axum::Router;
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the handlers share.
#[derive(Clone)]
pub struct IngressState {
    pub config: Arc<Config>,
    pub verifier: Arc<auth::Verifier>,
    pub broker: Broker,
    pub pool: PgPool,
    /// Bounds requests in processing (taken once the body is read).
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
    let header_read_timeout = state.config.ingress.header_read_timeout;
    serve_http1(listener, router(state), header_read_timeout, crate::metrics::ingress_header_timeout, shutdown).await;
    Ok(())
}

/// `axum::serve`, but with hyper's HTTP/1 header read timeout, which
/// `axum::serve` does not expose (without a timer hyper applies none at all):
/// each connection is served by `http1::Builder` with a Tokio timer, and its
/// peer address is available to handlers as `ConnectInfo<SocketAddr>`. A
/// connection closed for slow headers calls `on_timeout` (a metric). On
/// cancellation the listener closes, every connection finishes the request it
/// is in (then closes), and this returns when all have. Both listeners (ingress
/// and ops) are served this way.
pub async fn serve_http1(
    mut listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    on_timeout: fn(),
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        // `axum::serve::Listener::accept` retries accept errors (e.g. too many open files) after a pause.
        let (io, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let app = app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = TowerToHyperService::new(app);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            match result {
                Err(e) if e.is_timeout() => on_timeout(),
                Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
                Ok(()) => {}
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
