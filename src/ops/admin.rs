//! The admin API under `/admin` on the ops listener: the operations of
//! `accessgov dlq | audit | grants` over HTTP, in JSON.
//!
//! - Enabled iff `[ops] admin_token_env` or `admin_token_file` is set (the
//!   process refuses to start when it is set but cannot be read); otherwise
//!   every `/admin` path answers 404 `admin_api_disabled`.
//! - `Authorization: Bearer <admin token>`, compared in constant time
//!   ([`token_matches`]); anything else is 401 `{"error": "unauthorized"}`,
//!   counted in `accessgov_admin_auth_failures_total{reason}` and audited as
//!   `admin_auth_failed` at most once per [`AUTH_FAILURE_AUDIT_INTERVAL`] per
//!   reason ([`AuthFailureAudit`]), so that a flood cannot fill the table.
//! - The caller names themself in `X-Accessgov-Operator` (required for writes:
//!   400 `operator_required` without it; reads without it are recorded as
//!   `admin-token`).
//! - Every authenticated call is audited (`admin_call`, actor = the caller,
//!   detail = method, path, query, status); replays and discards also write
//!   their own `replayed` / `discarded` rows.

use super::OpsState;
use crate::audit::{self, AuditEntry, query as audit_query, verify};
use crate::dead_letters::{self, DiscardError, ReplayError, StateFilter};
use crate::grants::list as grants_list;
pub use crate::ingress::auth::token_matches;
use crate::operator::{Operator, Via, parse_time};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Header naming the operator behind an admin call.
pub const OPERATOR_HEADER: &str = "x-accessgov-operator";
/// The actor recorded for reads that name no operator.
pub const ANONYMOUS_CALLER: &str = "admin-token";
/// Largest page of a listing.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;
/// At most one `admin_auth_failed` audit row per reason in this interval.
pub const AUTH_FAILURE_AUDIT_INTERVAL: Duration = Duration::from_secs(10);
/// Longest request path recorded in an `admin_auth_failed` row (the path is the caller's text).
const MAX_AUDITED_PATH_CHARS: usize = 256;

/// The routes; `ops::router` nests them under `/admin` behind [`guard`].
pub fn router(state: &OpsState) -> Router<OpsState> {
    Router::new()
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/{id}", get(show_dead_letter))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/dead-letters/{id}/discard", post(discard))
        .route("/audit", get(list_audit))
        .route("/audit/verify", get(verify_audit))
        .route("/grants", get(list_grants))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
}

/// A JSON error: `{"error": code, "detail": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into() }
    }
    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "admin API call failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the call failed; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({"error": self.code, "detail": self.detail}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The authenticated caller, put into the request by [`guard`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// Named by `X-Accessgov-Operator`.
    pub operator: Option<Operator>,
}

impl Caller {
    fn name(&self) -> &str {
        self.operator.as_ref().map_or(ANONYMOUS_CALLER, |o| o.name.as_str())
    }
    fn required(&self) -> Result<&Operator, ApiError> {
        self.operator.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "operator_required",
                "admin writes must name the operator: set the X-Accessgov-Operator header",
            )
        })
    }
}

/// Why an `/admin` call was refused (the metric label and the audit row's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminAuthFailure {
    /// No `Authorization` header.
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that is not the admin token.
    WrongToken,
}

impl AdminAuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::NotBearer => "not_bearer",
            Self::WrongToken => "wrong_token",
        }
    }
}

/// The presented bearer token, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, AdminAuthFailure> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AdminAuthFailure::MissingToken)?;
    let value = value.to_str().map_err(|_| AdminAuthFailure::NotBearer)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AdminAuthFailure::NotBearer)?;
    if scheme.eq_ignore_ascii_case("bearer") { Ok(token.trim()) } else { Err(AdminAuthFailure::NotBearer) }
}

/// Rate-limits the `admin_auth_failed` audit rows. Every refused call is a
/// security fact worth keeping, but each row is a write to an append-only
/// table that nobody may prune: an unauthenticated flood must not be able to
/// grow it (or hold the audit lock) at its own pace. So per reason, one row per
/// [`AUTH_FAILURE_AUDIT_INTERVAL`]; the attempts in between are only counted,
/// and the count travels in the next row's `suppressed`. The metric counts all.
///
/// Generic over the reason type: the console's failed logins use it too.
#[derive(Debug)]
pub struct AuthFailureAudit<K = AdminAuthFailure> {
    windows: Mutex<HashMap<K, Window>>,
}

impl<K> Default for AuthFailureAudit<K> {
    fn default() -> Self {
        Self { windows: Mutex::new(HashMap::new()) }
    }
}

#[derive(Debug)]
struct Window {
    written_at: Instant,
    suppressed: u64,
}

impl<K: std::hash::Hash + Eq> AuthFailureAudit<K> {
    /// Takes one failure seen at `now`. `Some(suppressed)`: write a row now,
    /// carrying the number of failures of this reason not written since the
    /// last row. `None`: only counted, for the next row.
    pub fn admit(&self, reason: K, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get_mut(&reason) {
            Some(w) if now.saturating_duration_since(w.written_at) < AUTH_FAILURE_AUDIT_INTERVAL => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let suppressed = std::mem::take(&mut w.suppressed);
                w.written_at = now;
                Some(suppressed)
            }
            None => {
                windows.insert(reason, Window { written_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

/// `s` cut to at most `max` characters.
fn truncated(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// The `admin_auth_failed` row: what was asked and why it was refused, never
/// the presented token (nor the query, which is the caller's free text).
fn auth_failure_entry(
    reason: AdminAuthFailure,
    method: &str,
    path: &str,
    client: Option<SocketAddr>,
    suppressed: u64,
) -> AuditEntry {
    let mut e = AuditEntry::new("admin_auth_failed", "refused");
    e.detail = json!({
        "method": method,
        "path": truncated(path, MAX_AUDITED_PATH_CHARS),
        "reason": reason.as_str(),
        "client": client.map(|a| a.ip().to_string()),
        "suppressed": suppressed,
        "interval_secs": AUTH_FAILURE_AUDIT_INTERVAL.as_secs(),
    });
    e
}

/// Counts, logs and (rate-limited) audits a refused call, then answers 401.
/// An audit write that fails is logged; the caller gets the same 401 either way.
async fn refuse(
    state: &OpsState,
    reason: AdminAuthFailure,
    method: &str,
    path: &str,
    client: Option<SocketAddr>,
) -> Response {
    crate::metrics::admin_auth_failure(reason.as_str());
    tracing::warn!(
        path = truncated(path, MAX_AUDITED_PATH_CHARS),
        reason = reason.as_str(),
        "admin API call without a valid token refused"
    );
    if let Some(suppressed) = state.auth_failures.admit(reason, Instant::now()) {
        let entry = auth_failure_entry(reason, method, path, client, suppressed);
        let recorded = async {
            let mut tx = state.pool.begin().await?;
            audit::append(&mut tx, &[entry]).await?;
            tx.commit().await
        };
        if let Err(err) = recorded.await {
            tracing::error!(error = %err, suppressed, "could not audit a refused admin API call");
        }
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authorization: Bearer <admin token> is required")
        .into_response()
}

/// Authenticates, names the caller, runs the call, audits it.
async fn guard(State(state): State<OpsState>, mut req: Request, next: Next) -> Response {
    let Some(token) = state.admin_token.as_deref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "admin_api_disabled",
            "the admin API is off: set [ops] admin_token_env (or admin_token_file) and restart",
        )
        .into_response();
    };
    let authenticated = bearer(req.headers())
        .and_then(|p| if token_matches(p, token) { Ok(()) } else { Err(AdminAuthFailure::WrongToken) });
    if let Err(reason) = authenticated {
        let path = format!("/admin{}", req.uri().path());
        let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        return refuse(&state, reason, req.method().as_str(), &path, client).await;
    }
    let operator = match req.headers().get(OPERATOR_HEADER) {
        None => None,
        Some(v) => match v
            .to_str()
            .map_err(|_| "it is not visible ASCII".to_owned())
            .and_then(|v| Operator::new(v, Via::AdminApi))
        {
            Ok(o) => Some(o),
            Err(e) => return ApiError::bad_request(format!("X-Accessgov-Operator: {e}")).into_response(),
        },
    };
    let caller = Caller { operator };
    let method = req.method().clone();
    let path = format!("/admin{}", req.uri().path());
    let query = req.uri().query().map(str::to_owned);
    req.extensions_mut().insert(caller.clone());

    let resp = next.run(req).await;

    let status = resp.status();
    let mut e = AuditEntry::new("admin_call", if status.is_success() { "ok" } else { "failed" });
    e.actor = Some(caller.name().to_owned());
    e.detail = json!({
        "method": method.as_str(),
        "path": path,
        "query": query,
        "status": status.as_u16(),
        "operator_named": caller.operator.is_some(),
    });
    let recorded = async {
        let mut tx = state.pool.begin().await?;
        audit::append(&mut tx, &[e]).await?;
        tx.commit().await
    };
    if let Err(err) = recorded.await {
        tracing::error!(error = %err, %path, "could not audit an admin API call");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the call could not be audited (database unavailable); retry later",
        )
        .into_response();
    }
    resp
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| ApiError::bad_request(e.body_text()))
}

fn time(name: &str, v: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    v.map(|s| parse_time(s).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))).transpose()
}

fn limit(v: Option<i64>) -> i64 {
    v.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    application: Option<String>,
    error_class: Option<String>,
    since: Option<String>,
    #[serde(default)]
    state: StateFilter,
    limit: Option<i64>,
}

/// `GET /admin/dead-letters?application=&error_class=&since=&state=open|replayed|discarded|all&limit=`
async fn list_dead_letters(
    State(state): State<OpsState>,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let filter = dead_letters::Filter {
        application: q.application,
        error_class: q.error_class,
        since: time("since", q.since.as_deref())?,
        state: q.state,
        limit: Some(limit(q.limit)),
    };
    let rows = dead_letters::list(&state.pool, &filter).await.map_err(ApiError::internal)?;
    let items: Vec<_> = rows.iter().map(|r| r.view()).collect();
    Ok(Json(json!({"count": items.len(), "dead_letters": items})))
}

/// `GET /admin/dead-letters/{id}`
async fn show_dead_letter(State(state): State<OpsState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    match dead_letters::get(&state.pool, id).await.map_err(ApiError::internal)? {
        Some(row) => Ok(Json(serde_json::to_value(row.view()).map_err(ApiError::internal)?)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("dead letter {id} does not exist"))),
    }
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/dead-letters/{id}/replay?force=true&dry_run=true`
async fn replay(
    State(state): State<OpsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    q: Result<Query<ReplayQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let operator = caller.required()?;
    if q.dry_run {
        let row = dead_letters::get(&state.pool, id).await.map_err(ApiError::internal)?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("dead letter {id} does not exist"))
        })?;
        let preview =
            dead_letters::preview(&state.pool, &state.config, &row, None).await.map_err(ApiError::internal)?;
        return Ok(Json(json!({"dry_run": true, "preview": preview})));
    }
    let timeout = state.config.broker.confirm_timeout;
    match dead_letters::replay(&state.pool, &state.broker, id, operator, q.force, timeout).await {
        Ok(r) => Ok(Json(json!({"replayed": r}))),
        Err(e @ ReplayError::NotFound(_)) => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())),
        Err(e @ ReplayError::NotReplayable { .. }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_replayable", e.to_string()))
        }
        Err(e @ ReplayError::Closed { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "closed", e.to_string())),
        Err(e @ ReplayError::Publish { .. }) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", e.to_string()))
        }
        Err(ReplayError::Db(e)) => Err(ApiError::internal(e)),
    }
}

#[derive(Debug, Deserialize)]
struct DiscardBody {
    reason: String,
}

/// `POST /admin/dead-letters/{id}/discard` with `{"reason": "..."}`
async fn discard(
    State(state): State<OpsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let operator = caller.required()?;
    let body: DiscardBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be {{\"reason\": \"...\"}}: {e}")))?;
    match dead_letters::discard(&state.pool, id, operator, &body.reason).await {
        Ok(row) => Ok(Json(json!({"discarded": row.view()}))),
        Err(e @ DiscardError::NotFound(_)) => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())),
        Err(e @ DiscardError::NoReason) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ DiscardError::Closed { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "closed", e.to_string())),
        Err(DiscardError::Db(e)) => Err(ApiError::internal(e)),
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    ticket: Option<String>,
    #[serde(alias = "user")]
    subject: Option<String>,
    application: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    since_seq: Option<i64>,
    before_seq: Option<i64>,
    limit: Option<i64>,
}

/// `GET /admin/audit?ticket=&subject=|user=&application=&action=&since=&until=&since_seq=&before_seq=&limit=`
/// (the newest `limit` matching rows, oldest first; `before_seq` = the oldest
/// seq of the previous answer pages back, keyset-wise).
async fn list_audit(
    State(state): State<OpsState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let filter = audit_query::Filter {
        ticket: q.ticket,
        subject: q.subject,
        application: q.application,
        action: q.action,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
        since_seq: q.since_seq,
        before_seq: q.before_seq,
    };
    let rows = audit_query::list(&state.pool, &filter, Some(limit(q.limit))).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"count": rows.len(), "rows": rows})))
}

#[derive(Debug, Deserialize)]
struct VerifyQuery {
    since_seq: Option<i64>,
}

/// `GET /admin/audit/verify?since_seq=N`: the verification report (200 either
/// way; `ok` says whether the chain is intact).
async fn verify_audit(
    State(state): State<OpsState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let since_seq = q.since_seq.unwrap_or(1);
    let report = verify::verify(&state.pool, since_seq, 0, |_| {}).await.map_err(ApiError::internal)?;
    verify::record_run(&state.pool, caller.name(), since_seq, &report).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"ok": report.first_broken.is_none(), "report": report})))
}

#[derive(Debug, Deserialize)]
struct GrantsQuery {
    #[serde(alias = "user")]
    subject: Option<String>,
    application: Option<String>,
    target: Option<String>,
    expiring_within: Option<String>,
    #[serde(default)]
    state: grants_list::StateFilter,
}

/// `GET /admin/grants?subject=|user=&application=&target=&expiring_within=7d&state=active|revoked|all`
async fn list_grants(
    State(state): State<OpsState>,
    q: Result<Query<GrantsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let expiring_before = match q.expiring_within.as_deref() {
        None => None,
        Some(d) => {
            let d = crate::config::duration::parse(d)
                .map_err(|e| ApiError::bad_request(format!("expiring_within: {e}")))?;
            Some(
                grants_list::expiring_before(d)
                    .ok_or_else(|| ApiError::bad_request("expiring_within is too large (at most 3650d)"))?,
            )
        }
    };
    let filter = grants_list::Filter {
        subject: q.subject,
        application: q.application,
        target: q.target,
        expiring_before,
        state: q.state,
    };
    let grants = grants_list::list(&state.pool, &filter).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"count": grants.len(), "grants": grants})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly_and_the_scheme_is_bearer() {
        let token = secrecy::SecretString::from("s3cret-admin-token");
        assert!(token_matches("s3cret-admin-token", &token));
        assert!(!token_matches("s3cret-admin-toke", &token));
        assert!(!token_matches("", &token));
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(AdminAuthFailure::MissingToken));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(AdminAuthFailure::NotBearer));
        h.insert(header::AUTHORIZATION, "abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(AdminAuthFailure::NotBearer));
    }

    #[test]
    fn refused_calls_are_audited_once_per_interval_per_reason_with_the_count_in_between() {
        let audit = AuthFailureAudit::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        // The first failure of a reason is written at once.
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, t0), Some(0));
        // Within the interval: only counted, for this reason only.
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, s(1)), None);
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, s(9)), None);
        assert_eq!(audit.admit(AdminAuthFailure::MissingToken, s(9)), Some(0));
        // After the interval: the next row carries the two suppressed ones, and the count restarts.
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, s(10)), Some(2));
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, s(11)), None);
        assert_eq!(audit.admit(AdminAuthFailure::WrongToken, s(25)), Some(1));
        // A flood of 10 000 within one interval is one row.
        let written = (0..10_000).filter(|_| audit.admit(AdminAuthFailure::NotBearer, s(30)).is_some()).count();
        assert_eq!(written, 1);
    }

    #[test]
    fn the_refusal_row_names_the_call_and_the_reason_but_never_the_token() {
        let long_path = format!("/admin/{}", "x".repeat(1000));
        let client: SocketAddr = "10.1.2.3:45678".parse().unwrap();
        let e = auth_failure_entry(AdminAuthFailure::WrongToken, "POST", &long_path, Some(client), 7);
        assert_eq!((e.action.as_str(), e.outcome.as_str(), e.actor.as_deref()), ("admin_auth_failed", "refused", None));
        assert_eq!(e.detail["reason"], "wrong_token");
        assert_eq!(e.detail["method"], "POST");
        assert_eq!(e.detail["client"], "10.1.2.3");
        assert_eq!(e.detail["suppressed"], 7);
        assert_eq!(e.detail["path"].as_str().unwrap().chars().count(), MAX_AUDITED_PATH_CHARS);
        let keys: Vec<&String> = e.detail.as_object().unwrap().keys().collect();
        assert!(!keys.iter().any(|k| k.contains("token") || k.contains("authorization")), "{keys:?}");
    }

    #[test]
    fn writes_need_a_named_operator() {
        let anonymous = Caller { operator: None };
        assert_eq!(anonymous.name(), ANONYMOUS_CALLER);
        assert_eq!(anonymous.required().unwrap_err().code, "operator_required");
        let named = Caller { operator: Some(Operator::new("alice", Via::AdminApi).unwrap()) };
        assert_eq!(named.required().unwrap().name, "alice");
    }
}
