//! Request handlers and their JSON answers.

use super::IngressState;
use super::normalize::{self, Meta, Normalized};
use crate::metrics;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;
use tracing::Instrument;

/// Seconds a sender should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "30";

/// Every answer of `POST /webhooks/jsm` except success carries `{"error": ...}`.
#[derive(Debug)]
pub enum IngressError {
    Unauthorized(&'static str),
    TooLarge(usize),
    /// The body did not arrive within `body_read_timeout`.
    BodyTimeout(Duration),
    BadRequest(String),
    /// A value the event would carry but PostgreSQL cannot store; the JSON path of the field.
    InvalidValue(String),
    Unavailable(String),
}

impl IngressError {
    /// The `outcome` label of `accessgov_ingress_requests_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge(_) => "too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidValue(_) => "invalid_value",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "detail": "a valid X-Hub-Signature (sha256) or Authorization: Bearer token is required"}),
            ),
            Self::TooLarge(limit) => {
                (StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "payload_too_large", "limit_bytes": limit}))
            }
            Self::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                json!({
                    "error": "body_timeout",
                    "detail": format!("the body did not arrive within {}; retry", crate::config::duration::format(*limit)),
                }),
            ),
            Self::BadRequest(detail) => (StatusCode::BAD_REQUEST, json!({"error": "invalid_json", "detail": detail})),
            Self::InvalidValue(field) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "invalid_value",
                    "field": field,
                    "detail": "the value contains a NUL character (\\u0000), which PostgreSQL cannot store; \
                               remove it from the ticket field",
                }),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "detail": "the request was not accepted; retry later"}),
            ),
        };
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, Self::Unavailable(_)) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        resp
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/jsm`.
///
/// One `webhook` span per request, a child of the caller's trace when it sent a
/// `traceparent`; the event's `publish` span is its child, and the worker's
/// spans continue from there (the trace context travels in the AMQP headers).
pub async fn webhook(State(state): State<IngressState>, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        otel.name = "POST /webhooks/jsm",
        http.request.method = "POST",
        http.route = "/webhooks/jsm",
        http.response.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
        event_id = tracing::field::Empty,
        ticket = tracing::field::Empty,
        application = tracing::field::Empty,
        action = tracing::field::Empty,
    );
    crate::telemetry::extract(&span, |name| header_str(&headers, name));
    let received = chrono::Utc::now();
    let response = async {
        match receive_and_handle(&state, &headers, body, received).await {
            Ok(resp) => resp,
            Err(e) => {
                count(e.outcome());
                e.into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Counts a webhook's outcome, and says it on its span.
fn count(outcome: &'static str) {
    metrics::ingress_request(outcome);
    tracing::Span::current().record("outcome", outcome);
}

/// Reads the body (no slot held: a slow sender costs a connection and a buffer,
/// not processing capacity), then processes it holding a slot.
async fn receive_and_handle(
    state: &IngressState,
    headers: &HeaderMap,
    body: Body,
    received: chrono::DateTime<chrono::Utc>,
) -> Result<Response, IngressError> {
    let bytes = read_body(&state.config.ingress, headers, body).await?;
    let timeout = state.config.ingress.request_timeout;
    let processed = tokio::time::timeout(timeout, async {
        let Ok(_slot) = state.slots.clone().acquire_owned().await else {
            return Err(IngressError::Unavailable("shutting down".into()));
        };
        handle(state, headers, &bytes, received).await
    });
    processed.await.unwrap_or_else(|_| {
        tracing::warn!(timeout_ms = timeout.as_millis() as u64, "webhook request timed out");
        Err(IngressError::Unavailable("timeout".into()))
    })
}

/// The whole body, at most `max_body_bytes`, within `body_read_timeout`.
async fn read_body(
    config: &crate::config::IngressConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, IngressError> {
    let limit = config.max_body_bytes;
    let declared_too_large =
        header_str(headers, "content-length").and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > limit);
    if declared_too_large {
        return Err(IngressError::TooLarge(limit));
    }
    match tokio::time::timeout(config.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(IngressError::TooLarge(limit)),
        Err(_) => {
            tracing::warn!(
                timeout_ms = config.body_read_timeout.as_millis() as u64,
                "webhook body not received in time; answering 408"
            );
            Err(IngressError::BodyTimeout(config.body_read_timeout))
        }
    }
}

/// Verifies, parses, normalizes and publishes one received body.
async fn handle(
    state: &IngressState,
    headers: &HeaderMap,
    bytes: &[u8],
    received: chrono::DateTime<chrono::Utc>,
) -> Result<Response, IngressError> {
    let method = match state.verifier.verify(
        header_str(headers, "x-hub-signature"),
        header_str(headers, "authorization"),
        bytes,
    ) {
        Ok(method) => method,
        Err(failure) => {
            metrics::ingress_auth_failure(failure.as_str());
            tracing::warn!(reason = failure.as_str(), "webhook refused: not authenticated");
            return Err(IngressError::Unauthorized(failure.as_str()));
        }
    };

    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names line and column, never the content.
        IngressError::BadRequest(format!("body is not valid JSON: {e}"))
    })?;
    let meta = Meta {
        delivery_id: header_str(headers, "x-atlassian-webhook-identifier").map(str::to_owned),
        authenticity: Some(method.into()),
    };
    match normalize::normalize(&value, &meta, &state.config.jsm, received) {
        Normalized::Ignored(reason) => {
            count("ignored");
            metrics::ingress_ignored(reason.as_str());
            tracing::info!(reason = reason.as_str(), "webhook ignored");
            Ok((StatusCode::OK, Json(json!({"ignored": reason.as_str()}))).into_response())
        }
        Normalized::Accepted(event) => {
            if let Some(field) = normalize::unstorable_value(&event) {
                tracing::warn!(ticket = %event.ticket.key.escape_debug(), %field, "webhook refused: a value PostgreSQL cannot store");
                return Err(IngressError::InvalidValue(field));
            }
            let span = tracing::Span::current();
            span.record("event_id", tracing::field::display(event.event_id));
            span.record("ticket", event.ticket.key.as_str());
            span.record("action", event.action.as_str());
            if let Some(app) = &event.application {
                span.record("application", app.as_str());
            }
            let timeout = state.config.broker.confirm_timeout;
            let publish = tracing::info_span!(
                "publish",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.destination.name = %state.broker.names().events,
                event_id = %event.event_id,
            );
            let headers = crate::broker::envelope::received_headers(received);
            let published =
                state.broker.publish_event_with_headers(&event, 0, headers, timeout).instrument(publish).await;
            if let Err(e) = published {
                metrics::ingress_publish_failure(e.label());
                tracing::error!(event_id = %event.event_id, ticket = %event.ticket.key, error = %e, "publish failed; answering 503");
                return Err(IngressError::Unavailable(e.to_string()));
            }
            count("accepted");
            tracing::info!(
                event_id = %event.event_id,
                ticket = %event.ticket.key,
                app_status = ?event.app_status,
                errors = event.errors.len(),
                "access event accepted"
            );
            Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event.event_id}))).into_response())
        }
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: broker and database reachable.
pub async fn readyz(State(state): State<IngressState>) -> Response {
    readiness(&state.broker, &state.pool).await
}

/// Shared by the ingress and ops listeners.
pub async fn readiness(broker: &crate::broker::Broker, pool: &sqlx::PgPool) -> Response {
    let check = Duration::from_secs(3);
    let (b, d) =
        tokio::join!(tokio::time::timeout(check, broker.ready()), tokio::time::timeout(check, crate::db::ready(pool)));
    let (b, d) = (b.unwrap_or(false), d.unwrap_or(false));
    let status = if b && d { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"broker": b, "database": d}))).into_response()
}
