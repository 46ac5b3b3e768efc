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

/// Seconds a sender should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "30";

/// Every answer of `POST /webhooks/jsm` except success carries `{"error": ...}`.
#[derive(Debug)]
pub enum IngressError {
    Unauthorized(&'static str),
    TooLarge(usize),
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
pub async fn webhook(State(state): State<IngressState>, headers: HeaderMap, body: Body) -> Response {
    let Ok(_slot) = state.slots.clone().acquire_owned().await else {
        return IngressError::Unavailable("shutting down".into()).into_response();
    };
    let timeout = state.config.ingress.request_timeout;
    match tokio::time::timeout(timeout, handle(&state, &headers, body)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            metrics::ingress_request(e.outcome());
            e.into_response()
        }
        Err(_) => {
            metrics::ingress_request("unavailable");
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "webhook request timed out");
            IngressError::Unavailable("timeout".into()).into_response()
        }
    }
}

async fn handle(state: &IngressState, headers: &HeaderMap, body: Body) -> Result<Response, IngressError> {
    let limit = state.config.ingress.max_body_bytes;
    let declared_too_large =
        header_str(headers, "content-length").and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > limit);
    if declared_too_large {
        return Err(IngressError::TooLarge(limit));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| IngressError::TooLarge(limit))?;

    if let Err(failure) =
        state.verifier.verify(header_str(headers, "x-hub-signature"), header_str(headers, "authorization"), &bytes)
    {
        metrics::ingress_auth_failure(failure.as_str());
        tracing::warn!(reason = failure.as_str(), "webhook refused: not authenticated");
        return Err(IngressError::Unauthorized(failure.as_str()));
    }

    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message names line and column, never the content.
        IngressError::BadRequest(format!("body is not valid JSON: {e}"))
    })?;
    let meta = Meta { delivery_id: header_str(headers, "x-atlassian-webhook-identifier").map(str::to_owned) };
    match normalize::normalize(&value, &meta, &state.config.jsm, chrono::Utc::now()) {
        Normalized::Ignored(reason) => {
            metrics::ingress_request("ignored");
            metrics::ingress_ignored(reason.as_str());
            tracing::info!(reason = reason.as_str(), "webhook ignored");
            Ok((StatusCode::OK, Json(json!({"ignored": reason.as_str()}))).into_response())
        }
        Normalized::Accepted(event) => {
            if let Some(field) = normalize::unstorable_value(&event) {
                tracing::warn!(ticket = %event.ticket.key.escape_debug(), %field, "webhook refused: a value PostgreSQL cannot store");
                return Err(IngressError::InvalidValue(field));
            }
            let timeout = state.config.broker.confirm_timeout;
            if let Err(e) = state.broker.publish_event(&event, 0, timeout).await {
                metrics::ingress_publish_failure(e.label());
                tracing::error!(event_id = %event.event_id, ticket = %event.ticket.key, error = %e, "publish failed; answering 503");
                return Err(IngressError::Unavailable(e.to_string()));
            }
            metrics::ingress_request("accepted");
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
