//! The console's handlers: each reads through the store functions the CLI and
//! the admin API use, and renders a page of [`super::views`].

use super::auth::{LoginFailure, Role, Session};
use super::views::{self, Flash};
use super::{Console, LOGIN_COOKIE, SESSION_COOKIE, error_page, is_https, set_cookie};
use crate::audit::{self, AuditEntry, query as audit_query, verify};
use crate::dead_letters::{self, DiscardError, ReplayError, StateFilter};
use crate::grants::list as grants_list;
use crate::operator::{Operator, Via, parse_time};
use crate::ops::OpsState;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows of an audit page: by default, and at most.
const AUDIT_PAGE: i64 = 50;
const MAX_AUDIT_PAGE: i64 = 200;
/// Holds and dead letters shown on one page at most (the CSV export has all holds).
const MAX_LIST_ROWS: usize = 500;
/// Longest operator name shown in a refused login's audit row.
const MAX_AUDITED_NAME_CHARS: usize = 128;
/// How long the overview waits for the broker's queue depth.
const QUEUE_DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

fn console(state: &OpsState) -> &Arc<Console> {
    state.console.as_ref().expect("the guard answers 404 when the console is off")
}

/// An empty query value is no filter.
fn opt(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn bad_request(session: &Session, message: impl Into<String>) -> Response {
    error_page(StatusCode::BAD_REQUEST, Some(session), "Bad request", &message.into())
}

fn internal(session: Option<&Session>, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console page failed");
    error_page(StatusCode::INTERNAL_SERVER_ERROR, session, "Error", "The page could not be made; see the server log.")
}

/// Appends one audit row in its own transaction.
async fn audit_one(state: &OpsState, entry: AuditEntry) -> Result<(), sqlx::Error> {
    let mut tx = state.pool.begin().await?;
    audit::append(&mut tx, &[entry]).await?;
    tx.commit().await
}

fn operator_of(session: &Session) -> Operator {
    Operator { name: session.operator.name.clone(), via: Via::Console }
}

pub async fn not_found(session: Option<Extension<Session>>) -> Response {
    error_page(StatusCode::NOT_FOUND, session.as_ref().map(|s| &s.0), "Not found", "No such console page.")
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../../../static/console.css")).into_response()
}

pub async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], include_str!("../../../static/favicon.svg")).into_response()
}

pub async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../../../static/console.js"))
        .into_response()
}

// ---------------------------------------------------------------- login

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    ended: Option<String>,
}

/// Where to go after login: a console path only (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/console".to_owned(),
    }
}

fn login_page(
    state: &OpsState,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    message: Option<&str>,
    operator: &str,
) -> Response {
    let csrf = super::auth::random_hex(2);
    let roles = console(state).tokens.roles();
    let mut resp = (status, views::login(&csrf, next, message, operator, &roles)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &csrf, "/console/login", Some(600), is_https(headers)));
    resp
}

/// `GET /console/login`
pub async fn login_form(State(state): State<OpsState>, headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let c = console(&state);
    if let Some(cookie) = super::cookie(&headers, SESSION_COOKIE)
        && c.sessions.check(cookie, &c.tokens, Instant::now()).is_ok()
    {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    let message = match q.ended.as_deref() {
        Some("idle") => Some(super::auth::Ended::Idle.message()),
        Some("too_old") => Some(super::auth::Ended::TooOld.message()),
        Some("token_rotated") => Some(super::auth::Ended::TokenRotated.message()),
        _ => None,
    };
    login_page(&state, &headers, StatusCode::OK, &safe_next(q.next.as_deref()), message, "")
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// `POST /console/login`: token + operator name -> session cookie.
pub async fn login(
    State(state): State<OpsState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let c = console(&state);
    let next = safe_next(form.next.as_deref());
    let client = connect.map(|Extension(ConnectInfo(a))| a.ip());
    let expected = super::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !super::auth::csrf_matches(&form.csrf, expected) {
        return login_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            Some("The login form expired (its CSRF token is missing or wrong). Please try again."),
            &form.operator,
        );
    }
    let now = Instant::now();
    if !c.limiter.allows(client, now) {
        refused(&state, LoginFailure::RateLimited, client, &form.operator).await;
        let mut resp = login_page(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many failed logins. Wait a minute and try again."),
            &form.operator,
        );
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return resp;
    }
    let operator = match Operator::new(&form.operator, Via::Console) {
        Ok(o) => o,
        Err(e) => {
            return login_page(
                &state,
                &headers,
                StatusCode::BAD_REQUEST,
                &next,
                Some(&format!("Your name: {e}. Give the name the audit trail should record.")),
                "",
            );
        }
    };
    let token = form.token.trim();
    let authenticated = if token.is_empty() {
        Err(LoginFailure::MissingToken)
    } else {
        c.tokens.authenticate(token).ok_or(LoginFailure::WrongToken)
    };
    let (role, digest) = match authenticated {
        Ok(found) => found,
        Err(reason) => {
            c.limiter.failed(client, now);
            refused(&state, reason, client, &operator.name).await;
            return login_page(
                &state,
                &headers,
                StatusCode::UNAUTHORIZED,
                &next,
                Some("That token is not a console token."),
                &operator.name,
            );
        }
    };
    let mut e = AuditEntry::new("console_login", "ok");
    e.actor = Some(operator.name.clone());
    e.detail = json!({"role": role.as_str(), "client": client.map(|a| a.to_string()), "via": "console"});
    if let Err(err) = audit_one(&state, e).await {
        tracing::error!(error = %err, "could not audit a console login; refusing it");
        return login_page(
            &state,
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            &next,
            Some("The login could not be recorded in the audit trail (database unavailable). Try again later."),
            &operator.name,
        );
    }
    tracing::info!(operator = %operator, role = role.as_str(), "console login");
    let (cookie, _) = c.sessions.open(operator, role, digest, now);
    let https = is_https(&headers);
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &cookie, "/console", None, https));
    h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "/console/login", Some(0), https));
    resp
}

/// Counts, logs and (rate-limited) audits a refused login. Never the token.
async fn refused(state: &OpsState, reason: LoginFailure, client: Option<std::net::IpAddr>, claimed: &str) {
    crate::metrics::console_login_failure(reason.as_str());
    tracing::warn!(reason = reason.as_str(), "console login refused");
    if let Some(suppressed) = console(state).failures.admit(reason, Instant::now()) {
        let mut e = AuditEntry::new("console_login_failed", "refused");
        let claimed: String = claimed.chars().take(MAX_AUDITED_NAME_CHARS).collect();
        e.detail = json!({
            "reason": reason.as_str(),
            "claimed_operator": claimed,
            "client": client.map(|a| a.to_string()),
            "suppressed": suppressed,
            "interval_secs": crate::ops::admin::AUTH_FAILURE_AUDIT_INTERVAL.as_secs(),
        });
        if let Err(err) = audit_one(state, e).await {
            tracing::error!(error = %err, suppressed, "could not audit a refused console login");
        }
    }
}

/// `POST /console/logout`
pub async fn logout(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
) -> Response {
    if let Some(cookie) = super::cookie(&headers, SESSION_COOKIE) {
        console(&state).sessions.close(cookie);
    }
    let mut e = AuditEntry::new("console_logout", "ok");
    e.actor = Some(session.operator.name.clone());
    e.detail = json!({"role": session.role.as_str(), "via": "console"});
    if let Err(err) = audit_one(&state, e).await {
        tracing::error!(error = %err, "could not audit a console logout");
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/console", Some(0), is_https(&headers)));
    resp
}

// ---------------------------------------------------------------- overview

/// What the overview shows.
pub struct Overview {
    pub events_today: i64,
    pub counts: grants_list::Counts,
    pub open_dead_letters: i64,
    pub oldest_dead_letter: Option<DateTime<Utc>>,
    pub verify: Option<verify::VerifyRun>,
    pub tests: Vec<crate::connection_tests::Recorded>,
    pub queue_depth: Result<u32, String>,
    pub now: DateTime<Utc>,
}

/// `GET /console`
pub async fn overview(State(state): State<OpsState>, Extension(session): Extension<Session>) -> Response {
    let now = Utc::now();
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now);
    let queue = state.broker.names().requests.clone();
    let (events, counts, dead, verify_run, tests, depth) = tokio::join!(
        crate::progress::processed_since(&state.pool, midnight),
        grants_list::counts(&state.pool, now + chrono::Duration::days(7)),
        dead_letters::open_summary(&state.pool),
        verify::latest_run(&state.pool),
        crate::connection_tests::latest(&state.pool),
        tokio::time::timeout(QUEUE_DEPTH_TIMEOUT, state.broker.queue_depth(&queue)),
    );
    let result = (|| {
        let (open_dead_letters, oldest_dead_letter) = dead?;
        Ok::<_, sqlx::Error>(Overview {
            events_today: events?,
            counts: counts?,
            open_dead_letters,
            oldest_dead_letter,
            verify: verify_run?,
            tests: tests?,
            queue_depth: match depth {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", QUEUE_DEPTH_TIMEOUT.as_secs())),
            },
            now,
        })
    })();
    match result {
        Ok(o) => views::overview(&session, &state.config, &o).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

// ---------------------------------------------------------------- access

#[derive(Debug, Default, Deserialize)]
pub struct AccessQuery {
    pub user: Option<String>,
    pub application: Option<String>,
    pub target: Option<String>,
    /// e.g. `7d`: only holds expiring within it.
    pub expiring: Option<String>,
    pub state: Option<String>,
}

impl AccessQuery {
    fn filter(&self) -> Result<grants_list::Filter, String> {
        let state = match self.state.as_deref().unwrap_or("active") {
            "" | "active" => grants_list::StateFilter::Active,
            "revoked" => grants_list::StateFilter::Revoked,
            "all" => grants_list::StateFilter::All,
            other => return Err(format!("state {other:?}: use active, revoked or all")),
        };
        let expiring_before = match opt(self.expiring.clone()) {
            None => None,
            Some(d) => {
                let d = crate::config::duration::parse(&d).map_err(|e| format!("expiring within: {e}"))?;
                Some(grants_list::expiring_before(d).ok_or_else(|| "expiring within: too large".to_owned())?)
            }
        };
        Ok(grants_list::Filter {
            subject: opt(self.user.clone()),
            application: opt(self.application.clone()),
            target: opt(self.target.clone()),
            expiring_before,
            state,
        })
    }
}

/// `GET /console/access?user=&application=&target=&expiring=7d&state=`
pub async fn access(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AccessQuery>,
) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return bad_request(&session, e),
    };
    let searched = filter.subject.is_some()
        || filter.application.is_some()
        || filter.target.is_some()
        || filter.expiring_before.is_some();
    match grants_list::list(&state.pool, &filter).await {
        Ok(grants) => views::access(&session, &state.config, &q, &grants, searched, MAX_LIST_ROWS).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

/// `GET /console/access.csv?...`: every matching hold, one line each (grants
/// without a hold, i.e. revoked ones, as one line with empty hold columns).
pub async fn access_csv(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AccessQuery>,
) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return bad_request(&session, e),
    };
    let grants = match grants_list::list(&state.pool, &filter).await {
        Ok(g) => g,
        Err(e) => return internal(Some(&session), e),
    };
    let mut e = AuditEntry::new("console_export", "ok");
    e.actor = Some(session.operator.name.clone());
    e.detail = json!({"what": "access", "format": "csv", "rows": grants.len(), "filter": {
        "user": filter.subject, "application": filter.application, "target": filter.target,
        "expiring": opt(q.expiring.clone()), "state": q.state,
    }, "via": "console"});
    if let Err(err) = audit_one(&state, e).await {
        return internal(Some(&session), err);
    }
    let body = views::access_csv(&state.config, &grants);
    let name = format!("accessgov-access-{}.csv", Utc::now().format("%Y%m%dT%H%M%SZ"));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------- audit

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    pub ticket: Option<String>,
    pub user: Option<String>,
    pub application: Option<String>,
    pub action: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Keyset cursors: the page older than `before`, or newer than `after`.
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub limit: Option<i64>,
    /// Export format (`jsonl` or `csv`).
    pub format: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> Result<audit_query::Filter, String> {
        let time = |name: &str, v: &Option<String>| {
            opt(v.clone()).map(|s| parse_time(&s).map_err(|e| format!("{name}: {e}"))).transpose()
        };
        Ok(audit_query::Filter {
            ticket: opt(self.ticket.clone()),
            subject: opt(self.user.clone()),
            application: opt(self.application.clone()),
            action: opt(self.action.clone()),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            since_seq: None,
            before_seq: None,
        })
    }

    fn cursor(&self) -> audit_query::Cursor {
        match (self.before, self.after) {
            (Some(b), _) => audit_query::Cursor::Before(b),
            (None, Some(a)) => audit_query::Cursor::After(a),
            (None, None) => audit_query::Cursor::Newest,
        }
    }
}

/// `GET /console/audit?ticket=&user=&application=&action=&since=&until=&before=|after=&limit=`
pub async fn audit(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return bad_request(&session, e),
    };
    let limit = q.limit.unwrap_or(AUDIT_PAGE).clamp(1, MAX_AUDIT_PAGE);
    let (page, run) =
        tokio::join!(audit_query::page(&state.pool, &filter, q.cursor(), limit), verify::latest_run(&state.pool));
    match (page, run) {
        (Ok(page), Ok(run)) => views::audit(&session, &q, limit, &page, run.as_ref()).into_response(),
        (Err(e), _) | (_, Err(e)) => internal(Some(&session), e),
    }
}

/// `GET /console/audit/export?format=jsonl|csv&<the audit page's filters>`:
/// streamed through [`audit_query::export_chunks`], the CLI's export.
pub async fn audit_export(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return bad_request(&session, e),
    };
    let (format, content_type, ext) = match q.format.as_deref() {
        Some("jsonl") => (audit_query::Format::Jsonl, "application/x-ndjson; charset=utf-8", "jsonl"),
        Some("csv") => (audit_query::Format::Csv, "text/csv; charset=utf-8", "csv"),
        _ => return bad_request(&session, "format: use jsonl or csv"),
    };
    let Ok(permit) = console(&state).exports.clone().try_acquire_owned() else {
        return error_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&session),
            "Busy",
            "Other exports are running; try again when they have finished.",
        );
    };
    let mut e = AuditEntry::new("console_export", "ok");
    e.actor = Some(session.operator.name.clone());
    e.detail = json!({"what": "audit", "format": ext, "filter": {
        "ticket": filter.ticket, "user": filter.subject, "application": filter.application, "action": filter.action,
        "since": filter.since, "until": filter.until,
    }, "via": "console"});
    if let Err(err) = audit_one(&state, e).await {
        return internal(Some(&session), err);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let sender = tx.clone();
        let result = audit_query::export_chunks(
            &pool,
            &filter,
            format,
            64 * 1024,
            |_| {},
            move |chunk| {
                let tx = sender.clone();
                async move {
                    tx.send(Ok(Bytes::from(chunk)))
                        .await
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
                }
            },
        )
        .await;
        match result {
            Ok(n) => tracing::info!(rows = n, "console audit export streamed"),
            Err(audit_query::ExportError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::info!("console audit export stopped: the client went away");
            }
            Err(e) => {
                tracing::error!(error = %e, "console audit export failed midway");
                // Aborts the response: the client sees a broken transfer, never a short file that looks whole.
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let name = format!("accessgov-audit-{}.{ext}", Utc::now().format("%Y%m%dT%H%M%SZ"));
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------- dead letters

#[derive(Debug, Default, Deserialize)]
pub struct DeadLetterQuery {
    pub application: Option<String>,
    pub error_class: Option<String>,
    pub state: Option<String>,
    pub since: Option<String>,
}

/// `GET /console/dead-letters?application=&error_class=&state=&since=`
pub async fn dead_letters(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<DeadLetterQuery>,
) -> Response {
    let state_filter = match q.state.as_deref().unwrap_or("open") {
        "" | "open" => StateFilter::Open,
        "replayed" => StateFilter::Replayed,
        "discarded" => StateFilter::Discarded,
        "all" => StateFilter::All,
        other => return bad_request(&session, format!("state {other:?}: use open, replayed, discarded or all")),
    };
    let since = match opt(q.since.clone()).map(|s| parse_time(&s)).transpose() {
        Ok(t) => t,
        Err(e) => return bad_request(&session, format!("since: {e}")),
    };
    let filter = dead_letters::Filter {
        application: opt(q.application.clone()),
        error_class: opt(q.error_class.clone()),
        since,
        state: state_filter,
        limit: Some(MAX_LIST_ROWS as i64 + 1),
    };
    match dead_letters::list(&state.pool, &filter).await {
        Ok(rows) => views::dead_letters(&session, &q, &rows, MAX_LIST_ROWS).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    pub done: Option<String>,
}

async fn load(state: &OpsState, session: &Session, id: i64) -> Result<dead_letters::DeadLetter, Response> {
    match dead_letters::get(&state.pool, id).await {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            Some(session),
            "Not found",
            &format!("Dead letter {id} does not exist."),
        )),
        Err(e) => Err(internal(Some(session), e)),
    }
}

/// `GET /console/dead-letters/{id}`
pub async fn dead_letter(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    Query(q): Query<DoneQuery>,
) -> Response {
    match load(&state, &session, id).await {
        Ok(row) => {
            let flash = match q.done.as_deref() {
                Some("replayed") => Some(Flash::Ok("Replayed: the event is back in the requests queue.".into())),
                Some("discarded") => Some(Flash::Ok("Discarded.".into())),
                _ => None,
            };
            views::dead_letter(&session, &state.config, &row, flash.as_ref()).into_response()
        }
        Err(resp) => resp,
    }
}

/// `GET /console/dead-letters/{id}/preview`: the dry-run plan of a replay
/// (read-only, for viewers too), with the replay button for operators.
pub async fn preview(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
) -> Response {
    let row = match load(&state, &session, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match dead_letters::preview(&state.pool, &state.config, &row, None).await {
        Ok(p) => views::preview(&session, &row, &p).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    force: Option<String>,
}

/// `POST /console/dead-letters/{id}/replay` (operators; CSRF checked by the guard).
pub async fn replay(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let force = form.force.is_some_and(|v| v == "on" || v == "true" || v == "1");
    let timeout = state.config.broker.confirm_timeout;
    let operator = operator_of(&session);
    let (status, message) = match dead_letters::replay(&state.pool, &state.broker, id, &operator, force, timeout).await
    {
        Ok(_) => return Redirect::to(&format!("/console/dead-letters/{id}?done=replayed")).into_response(),
        Err(e @ ReplayError::NotFound(_)) => (StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ReplayError::NotReplayable { .. }) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e @ ReplayError::Closed { .. }) => (StatusCode::CONFLICT, e.to_string()),
        Err(e @ ReplayError::Publish { .. }) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(ReplayError::Db(e)) => return internal(Some(&session), e),
    };
    error_page(status, Some(&session), "Not replayed", &message)
}

#[derive(Debug, Default, Deserialize)]
pub struct DiscardForm {
    #[serde(default)]
    reason: String,
}

/// `POST /console/dead-letters/{id}/discard` with a reason (operators).
pub async fn discard(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    Form(form): Form<DiscardForm>,
) -> Response {
    let operator = operator_of(&session);
    let (status, message) = match dead_letters::discard(&state.pool, id, &operator, &form.reason).await {
        Ok(_) => return Redirect::to(&format!("/console/dead-letters/{id}?done=discarded")).into_response(),
        Err(e @ DiscardError::NotFound(_)) => (StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ DiscardError::NoReason) => (StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ DiscardError::Closed { .. }) => (StatusCode::CONFLICT, e.to_string()),
        Err(DiscardError::Db(e)) => return internal(Some(&session), e),
    };
    error_page(status, Some(&session), "Not discarded", &message)
}

// ---------------------------------------------------------------- applications

#[derive(Debug, Default, Deserialize)]
pub struct TestedQuery {
    pub tested: Option<String>,
}

/// `GET /console/applications`
pub async fn applications(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Query(q): Query<TestedQuery>,
) -> Response {
    match crate::connection_tests::latest(&state.pool).await {
        Ok(tests) => views::applications(&session, &state.config, &tests, q.tested.as_deref()).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

/// `POST /console/applications/{name}/test` (operators): the CLI's
/// `connectors test APP`, recorded with the operator.
pub async fn test_connection(
    State(state): State<OpsState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    let rows = match crate::commands::connectors::test(&state.config, Some(&name)).await {
        Ok(rows) => rows,
        Err(message) => return error_page(StatusCode::NOT_FOUND, Some(&session), "Not found", &message),
    };
    if let Err(e) = crate::connection_tests::record(&state.pool, &rows, &operator_of(&session)).await {
        return internal(Some(&session), e);
    }
    let failed = rows.iter().any(|r| r.failed());
    tracing::info!(application = %name, operator = %session.operator, failed, "console connection test");
    Redirect::to(&format!("/console/applications?tested={}#app-{}", views::urlencode(&name), views::slug(&name)))
        .into_response()
}

/// Whether a session may act (the guard enforces it; pages use it to show buttons).
pub fn can_act(session: &Session) -> bool {
    session.role == Role::Operator
}
