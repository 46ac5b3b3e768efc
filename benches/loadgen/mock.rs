//! The mock provider: an HTTP server in this process that answers after a set
//! latency and records when each call arrived (the provider's view, which is
//! what a rate limit is about), plus the most calls it held at once.
//!
//! It answers two dialects:
//! - `POST /grant`, `POST /revoke`: the one-call provider of [`MockConnector`]
//!   (the in-process live scenarios) and of the baseline;
//! - the three Jira Cloud calls of accessgov's `jira` connector (group lookup,
//!   the user's groups, add to group), for the worker child process of the
//!   memory scenario, which can only build the connectors of its config.
//!
//! [`MockConnector`] is a connector on accessgov's own HTTP layer
//! (`connectors::http::{Common, Http}`: the application's `timeout` and
//! `rate_limit_per_second`, error classification), making exactly one HTTP
//! call per grant or revoke, as the baseline does.

use accessgov::config::ApplicationConfig;
use accessgov::connectors::http::{Common, Http};
use accessgov::connectors::{
    Connector, ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState,
};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct MockProvider {
    latency: Duration,
    arrivals: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl MockProvider {
    /// Listens on 127.0.0.1:0 and answers every call after `latency`.
    pub async fn start(latency: Duration) -> anyhow::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mock = Arc::new(Self {
            latency,
            arrivals: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            addr: listener.local_addr()?,
            stop: CancellationToken::new(),
        });
        let router = axum::Router::new().fallback(answer).with_state(mock.clone());
        let stop = mock.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(mock)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn calls(&self) -> usize {
        self.arrivals.lock().expect("arrivals").len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// The most calls that arrived within any sliding 1-second window
    /// (`[t, t + 1 s)` for every arrival `t`).
    pub fn max_sliding_second(&self) -> usize {
        let mut t = self.arrivals.lock().expect("arrivals").clone();
        t.sort();
        let (mut best, mut j) = (0, 0);
        for i in 0..t.len() {
            while j < t.len() && t[j] < t[i] + Duration::from_secs(1) {
                j += 1;
            }
            best = best.max(j - i);
        }
        best
    }

    /// The most calls in one fixed 1-second bucket counted from the first call.
    pub fn max_fixed_second(&self) -> usize {
        let t = self.arrivals.lock().expect("arrivals").clone();
        let Some(first) = t.iter().min().copied() else { return 0 };
        let mut buckets = std::collections::HashMap::<u64, usize>::new();
        for a in t {
            *buckets.entry(a.duration_since(first).as_secs()).or_default() += 1;
        }
        buckets.into_values().max().unwrap_or(0)
    }
}

async fn answer(State(mock): State<Arc<MockProvider>>, req: Request) -> Response {
    mock.arrivals.lock().expect("arrivals").push(Instant::now());
    let _held = Held::new(&mock);
    if !mock.latency.is_zero() {
        tokio::time::sleep(mock.latency).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/grant" | "/revoke") => (StatusCode::OK, "{\"ok\":true}").into_response(),
        (&Method::GET, "/rest/api/3/group/bulk") => {
            let name = query_value(req.uri().query(), "groupName").unwrap_or_default();
            let body = serde_json::json!({"values": [{"groupId": null, "name": name}]});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        (&Method::GET, "/rest/api/3/user/groups") => {
            (StatusCode::OK, axum::Json(serde_json::json!([]))).into_response()
        }
        (&Method::POST, "/rest/api/3/group/user") => {
            (StatusCode::CREATED, axum::Json(serde_json::json!({}))).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "{}").into_response(),
    }
}

/// Counts a call as held from its arrival until its answer (or its cancellation).
struct Held<'a>(&'a MockProvider);

impl<'a> Held<'a> {
    fn new(mock: &'a MockProvider) -> Self {
        let now = mock.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        mock.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(mock)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", query?)).ok()?;
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// A one-call connector on accessgov's HTTP layer, talking to the mock.
pub struct MockConnector {
    http: Http,
    base: String,
}

impl MockConnector {
    /// Built from the application's settings (`timeout`, `rate_limit_per_second`).
    pub fn new(app: &ApplicationConfig, base: String) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        Ok(Self { http: Http::new("mock", &common)?, base })
    }

    async fn call(&self, op: &str, subject: &Subject, target: &Target) -> Result<(), ConnectorError> {
        let req = self
            .http
            .client()
            .post(format!("{}/{op}", self.base))
            .json(&serde_json::json!({"subject": subject.account_id, "target": target.name}));
        let resp = self.http.send(req).await?;
        if resp.status().is_success() {
            // Read the body, as a real connector does.
            let _ = resp.bytes().await;
            Ok(())
        } else {
            Err(self.http.error_for(resp).await)
        }
    }
}

impl Connector for MockConnector {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn grant<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<GrantOutcome, ConnectorError>> {
        Box::pin(async move { self.call("grant", subject, target).await.map(|()| GrantOutcome::Granted) })
    }

    fn revoke<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ConnectorError>> {
        Box::pin(async move { self.call("revoke", subject, target).await.map(|()| RevokeOutcome::Revoked) })
    }

    fn test_connection(&self) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async { Ok(()) })
    }

    // The load generator's provider answers calls and keeps no memberships:
    // it has nothing to read back, and no scenario reads back.
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        Ok(subject.account_id.clone())
    }

    fn members<'a>(&'a self, _target: &'a Target) -> BoxFuture<'a, Result<Vec<Member>, ConnectorError>> {
        Box::pin(async { Err(no_state()) })
    }

    fn memberships<'a>(
        &'a self,
        _subject: &'a Subject,
        _targets: &'a [Target],
    ) -> BoxFuture<'a, Result<Vec<String>, ConnectorError>> {
        Box::pin(async { Err(no_state()) })
    }

    fn user_state<'a>(&'a self, _subject: &'a Subject) -> BoxFuture<'a, Result<UserState, ConnectorError>> {
        Box::pin(async { Err(no_state()) })
    }
}

fn no_state() -> ConnectorError {
    ConnectorError::Permanent { reason: "the load generator's mock provider keeps no memberships to read back".into() }
}
