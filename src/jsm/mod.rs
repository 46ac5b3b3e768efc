//! JSM / Jira Cloud REST client: the calls accessgov makes *to* Jira.
//!
//! - [`JsmClient::user_groups`]: a user's Jira groups, for `group:<name>` approvers, cached per account id.
//! - [`JsmClient::approval_state`]: the live status and JSM approvals of a request, for
//!   `[jsm] verify_approval`; [`confirms`] is the pure check of an event against it.
//! - [`JsmClient::comment`] and [`JsmClient::transition`]: write-back.
//! - [`setup`]: the reads and option writes of `accessgov jsm check` and `accessgov jsm sync-options`.
//!
//! Authentication is `Authorization: Basic base64(email:api_token)` on every call (Atlassian API tokens;
//! scoped tokens need `https://api.atlassian.com/ex/jira/{cloudId}` as the base URL, which works because
//! paths are appended to the base URL's own path).
//!
//! Errors are classified for the worker's retry logic ([`JsmError`]): connection errors, timeouts and 5xx
//! are transient, 429 is transient with the server's `Retry-After` / `X-RateLimit-Reset` hint, 401/403
//! are an authorization problem, 404 is not found, any other 4xx is permanent. No message ever contains
//! the API token, the email or the `Authorization` header.

mod routing;
pub mod setup;

use crate::config::AppStatus;
use crate::event::AccessEvent;
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-request timeout (connect + response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait a rate-limit hint may ask for; longer hints are capped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Page size asked of `GET /rest/servicedeskapi/request/{key}/approval`.
const APPROVAL_PAGE_LIMIT: u32 = 50;
/// Upper bound on approval pages followed (a server that never says `isLastPage` cannot loop us forever).
const MAX_APPROVAL_PAGES: usize = 100;
/// Above this many cached accounts, expired entries are swept on insert.
const GROUP_CACHE_SWEEP_AT: usize = 1024;
/// Longest excerpt of an error response body kept in a message.
const MAX_BODY_EXCERPT: usize = 300;

const AUTH_HINT: &str = "check the JSM email/API token (jsm.email_*, jsm.api_token_*) and that the account can \
                         browse the project";

/// A JSM call failed. Messages name the call and the HTTP status, never credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsmError {
    /// Worth retrying: connection error, timeout, 5xx, or 429 (rate limited). `retry_after` is the
    /// server's hint (`Retry-After` or `X-RateLimit-Reset`), capped at [`MAX_RETRY_AFTER`].
    #[error("JSM temporarily unavailable: {reason}{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    Transient { reason: String, retry_after: Option<Duration> },
    /// 401/403: the credentials are wrong or the account lacks a permission.
    #[error("JSM refused the credentials: {0}")]
    Unauthorized(String),
    /// 404: the issue, request or user does not exist (or is not visible to the account).
    #[error("not found in JSM: {0}")]
    NotFound(String),
    /// Any other failure that retrying will not fix.
    #[error("JSM call failed: {0}")]
    Permanent(String),
}

impl JsmError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// The server's rate-limit hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short class name for audit rows and dead letters.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// The live state of a JSM request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalState {
    /// Current status name (`fields.status.name`).
    pub status: String,
    /// Every approval of the request, in the order JSM lists them.
    pub approvals: Vec<Approval>,
}

/// One JSM approval (servicedeskapi `ApprovalDTO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    /// The approval step's name (its JSM status), which names a rule's stage.
    pub name: String,
    /// `approved`, `declined` or `pending`.
    pub final_decision: String,
    /// `(accountId, approverDecision)` per approver; `approverDecision` is `approved`, `declined` or `pending`.
    pub approvers: Vec<(String, String)>,
    /// `completedDate.epochMillis`, once decided.
    pub completed_epoch_ms: Option<i64>,
}

/// Client of the Jira platform and JSM REST APIs. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct JsmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The parsed base URL, or why it could not be used (reported by every call).
    base: Result<Url, String>,
    email: SecretString,
    api_token: SecretString,
    group_cache_ttl: Duration,
    timeout: Duration,
    group_cache: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl fmt::Debug for JsmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match &self.inner.base {
            Ok(u) => u.as_str(),
            Err(_) => "<invalid>",
        };
        f.debug_struct("JsmClient")
            .field("base_url", &base)
            .field("group_cache_ttl", &self.inner.group_cache_ttl)
            .finish_non_exhaustive()
    }
}

impl JsmClient {
    /// Basic auth `email:api_token` against `base_url` (e.g. `https://example.atlassian.net`).
    ///
    /// An unusable `base_url` does not panic: every call then fails with [`JsmError::Permanent`] naming it.
    ///
    /// # Panics
    /// Only if the TLS backend cannot be initialised (as `reqwest::Client::new`).
    pub fn new(base_url: &str, email: SecretString, api_token: SecretString, group_cache_ttl: Duration) -> Self {
        Self::with_timeout(base_url, email, api_token, group_cache_ttl, REQUEST_TIMEOUT)
    }

    fn with_timeout(
        base_url: &str,
        email: SecretString,
        api_token: SecretString,
        group_cache_ttl: Duration,
        timeout: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("accessgov/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client (TLS backend) initialises");
        Self {
            inner: Arc::new(Inner {
                http,
                base: parse_base_url(base_url),
                email,
                api_token,
                group_cache_ttl,
                timeout,
                group_cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The Jira group names of a user (`GET /rest/api/3/user/groups?accountId=…`), cached per account id
    /// for the configured TTL. Errors are not cached.
    pub async fn user_groups(&self, account_id: &str) -> Result<Vec<String>, JsmError> {
        let ttl = self.inner.group_cache_ttl;
        if let Some((at, groups)) = self.cache().get(account_id)
            && at.elapsed() < ttl
        {
            return Ok(groups.clone());
        }

        #[derive(Deserialize)]
        struct GroupName {
            name: String,
        }
        let what = "GET /rest/api/3/user/groups";
        let url = self.url(&["rest", "api", "3", "user", "groups"])?;
        let req = self.request(Method::GET, url).query(&[("accountId", account_id)]);
        let groups: Vec<GroupName> = self.json(req, what).await?;
        let names: Vec<String> = groups.into_iter().map(|g| g.name).collect();

        let mut cache = self.cache();
        if cache.len() >= GROUP_CACHE_SWEEP_AT {
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        cache.insert(account_id.to_owned(), (Instant::now(), names.clone()));
        Ok(names)
    }

    /// Whether a user is in a Jira group (case-insensitive name, as Jira treats group names).
    pub async fn in_group(&self, account_id: &str, group: &str) -> Result<bool, JsmError> {
        Ok(self.user_groups(account_id).await?.iter().any(|g| g.eq_ignore_ascii_case(group)))
    }

    /// The current status name and the JSM approvals of a request:
    /// `GET /rest/api/3/issue/{key}?fields=status` and `GET /rest/servicedeskapi/request/{key}/approval`
    /// (every page).
    pub async fn approval_state(&self, issue_key: &str) -> Result<ApprovalState, JsmError> {
        let what = format!("GET /rest/api/3/issue/{issue_key}");
        let url = self.url(&["rest", "api", "3", "issue", issue_key])?;
        let issue: Value = self.json(self.request(Method::GET, url).query(&[("fields", "status")]), &what).await?;
        let status = issue
            .pointer("/fields/status/name")
            .and_then(Value::as_str)
            .ok_or_else(|| JsmError::Permanent(format!("{what}: the response has no fields.status.name")))?
            .to_owned();

        let what = format!("GET /rest/servicedeskapi/request/{issue_key}/approval");
        let url = self.url(&["rest", "servicedeskapi", "request", issue_key, "approval"])?;
        let mut approvals = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_APPROVAL_PAGES {
            let req = self
                .request(Method::GET, url.clone())
                .query(&[("start", start.to_string()), ("limit", APPROVAL_PAGE_LIMIT.to_string())]);
            let page: Value = self.json(req, &what).await?;
            let values = page.get("values").and_then(Value::as_array).ok_or_else(|| {
                JsmError::Permanent(format!("{what}: the response is not a page of approvals (no values[])"))
            })?;
            for v in values {
                approvals.push(parse_approval(v).map_err(|e| JsmError::Permanent(format!("{what}: {e}")))?);
            }
            let last = page.get("isLastPage").and_then(Value::as_bool).unwrap_or(true);
            if last || values.is_empty() {
                return Ok(ApprovalState { status, approvals });
            }
            let page_start = page.get("start").and_then(Value::as_u64).unwrap_or(start);
            start = page_start + values.len() as u64;
        }
        Err(JsmError::Permanent(format!("{what}: more than {MAX_APPROVAL_PAGES} pages of approvals; giving up")))
    }

    /// Comments on the ticket: `POST /rest/servicedeskapi/request/{key}/comment {"body", "public"}` (201).
    /// `public = false` is an internal note, visible to agents only.
    pub async fn comment(&self, issue_key: &str, text: &str, public: bool) -> Result<(), JsmError> {
        let what = format!("POST /rest/servicedeskapi/request/{issue_key}/comment");
        let url = self.url(&["rest", "servicedeskapi", "request", issue_key, "comment"])?;
        let req = self.request(Method::POST, url).json(&json!({ "body": text, "public": public }));
        self.send(req, &what).await.map(drop)
    }

    /// Transitions the ticket by transition name or target status name (both case-insensitive; a
    /// transition name wins over a status name): `GET /rest/api/3/issue/{key}/transitions`, then `POST` the
    /// same path `{"transition":{"id":…}}` (204). No matching transition is [`JsmError::Permanent`],
    /// naming the available ones.
    pub async fn transition(&self, issue_key: &str, name: &str) -> Result<(), JsmError> {
        #[derive(Deserialize)]
        struct Transitions {
            #[serde(default)]
            transitions: Vec<Transition>,
        }
        #[derive(Deserialize)]
        struct Transition {
            id: Value,
            #[serde(default)]
            name: String,
            to: Option<Target>,
        }
        #[derive(Deserialize)]
        struct Target {
            #[serde(default)]
            name: String,
        }

        let path = format!("/rest/api/3/issue/{issue_key}/transitions");
        let url = self.url(&["rest", "api", "3", "issue", issue_key, "transitions"])?;
        let list: Transitions = self.json(self.request(Method::GET, url.clone()), &format!("GET {path}")).await?;
        let wanted = name.trim();
        let chosen = list.transitions.iter().find(|t| t.name.trim().eq_ignore_ascii_case(wanted)).or_else(|| {
            list.transitions
                .iter()
                .find(|t| t.to.as_ref().is_some_and(|to| to.name.trim().eq_ignore_ascii_case(wanted)))
        });
        let Some(chosen) = chosen else {
            let available: Vec<String> = list
                .transitions
                .iter()
                .map(|t| match &t.to {
                    Some(to) => format!("{:?} (to {:?})", t.name, to.name),
                    None => format!("{:?}", t.name),
                })
                .collect();
            return Err(JsmError::Permanent(format!(
                "{issue_key} has no transition named or leading to {wanted:?}; available: {}",
                if available.is_empty() {
                    "none (the ticket may be in a final status, or the account lacks Transition issues)".into()
                } else {
                    available.join(", ")
                }
            )));
        };
        let id = match &chosen.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let req = self.request(Method::POST, url).json(&json!({ "transition": { "id": id } }));
        self.send(req, &format!("POST {path}")).await.map(drop)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<String>)>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts), so ignore poison.
        self.inner.group_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, JsmError> {
        let mut url = self.inner.base.clone().map_err(JsmError::Permanent)?;
        url.path_segments_mut()
            .map_err(|()| JsmError::Permanent("jsm.base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner
            .http
            .request(method, url)
            .basic_auth(self.inner.email.expose_secret(), Some(self.inner.api_token.expose_secret()))
            .header(ACCEPT, "application/json")
    }

    /// Sends and classifies: `Ok` only for a 2xx response.
    /// Traced as a `jsm.request` span (its status only: paths name
    /// tickets and users), whose context goes out as `traceparent`.
    pub(crate) async fn send(&self, req: RequestBuilder, what: &str) -> Result<Response, JsmError> {
        let span = tracing::info_span!(
            "jsm.request",
            otel.kind = "client",
            http.response.status_code = tracing::field::Empty,
        );
        let req = crate::telemetry::inject(&span).into_iter().fold(req, |req, (k, v)| req.header(k, v));
        let sent = tracing::Instrument::instrument(req.send(), span.clone()).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(what, &e)),
        };
        let status = resp.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = rate_limit_hint(resp.headers(), Utc::now());
        let body = resp.text().await.unwrap_or_default();
        let detail = self.redact(&format!("{what}: HTTP {}{}", status_line(status), error_excerpt(&body)));
        Err(classify(status, detail, retry_after))
    }

    pub(crate) async fn json<T: DeserializeOwned>(&self, req: RequestBuilder, what: &str) -> Result<T, JsmError> {
        let resp = self.send(req, what).await?;
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport_error(what, &e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| JsmError::Permanent(format!("{what}: unexpected response body ({e})")))
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> JsmError {
        let kind = if e.is_timeout() {
            format!("timed out (limit {:?})", self.inner.timeout)
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else {
            "request failed".to_owned()
        };
        // The chain without the URL: reqwest's outer message repeats the URL, inner ones say why.
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        let why = if causes.is_empty() { String::new() } else { format!(": {}", causes.join(": ")) };
        let reason = self.redact(&format!("{what}: {kind}{why}"));
        if e.is_decode() { JsmError::Permanent(reason) } else { JsmError::Transient { reason, retry_after: None } }
    }

    /// Belt and braces: a server or proxy echoing the credentials back must not put them in a log line.
    fn redact(&self, msg: &str) -> String {
        let mut out = msg.to_owned();
        for secret in [self.inner.api_token.expose_secret(), self.inner.email.expose_secret()] {
            if !secret.is_empty() {
                out = out.replace(secret, "[REDACTED]");
            }
        }
        out
    }
}

fn parse_base_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("jsm.base_url {raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("jsm.base_url {raw:?} must be an https:// URL"));
    }
    if url.cannot_be_a_base() {
        return Err(format!("jsm.base_url {raw:?} cannot take a path"));
    }
    Ok(url)
}

fn classify(status: StatusCode, detail: String, retry_after: Option<Duration>) -> JsmError {
    match status.as_u16() {
        429 => JsmError::Transient { reason: format!("{detail} (rate limited)"), retry_after },
        401 | 403 => JsmError::Unauthorized(format!("{detail}; {AUTH_HINT}")),
        404 => JsmError::NotFound(detail),
        s if s >= 500 => JsmError::Transient { reason: detail, retry_after },
        _ => JsmError::Permanent(detail),
    }
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `": <messages>"` from a Jira error body (`{"errorMessages":[…],"errors":{…}}`, or servicedeskapi's
/// `{"errorMessage":…}`), else a short excerpt of the text; empty for an empty body.
fn error_excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(msgs) = v.get("errorMessages").and_then(Value::as_array) {
            parts.extend(msgs.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        if let Some(errs) = v.get("errors").and_then(Value::as_object) {
            parts.extend(
                errs.iter().map(|(k, v)| format!("{k}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))),
            );
        }
        if let Some(msg) = v.get("errorMessage").and_then(Value::as_str) {
            parts.push(msg.to_owned());
        }
    }
    let text = if parts.is_empty() { body.to_owned() } else { parts.join("; ") };
    let mut excerpt: String = text.chars().take(MAX_BODY_EXCERPT).collect();
    if excerpt.len() < text.len() {
        excerpt.push('…');
    }
    format!(": {excerpt}")
}

/// The server's wait hint: `Retry-After` (seconds or an HTTP date) first, else `X-RateLimit-Reset`
/// (an ISO-8601 instant, e.g. `2024-05-01T10:15Z`), as a duration from `now`, capped at [`MAX_RETRY_AFTER`].
/// An instant in the past gives zero.
pub fn rate_limit_hint(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty());
    let until = |t: DateTime<Utc>| (t - now).to_std().unwrap_or(Duration::ZERO);
    let hint = text(RETRY_AFTER.as_str())
        .and_then(|v| match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => DateTime::parse_from_rfc2822(v).ok().map(|t| until(t.with_timezone(&Utc))),
        })
        .or_else(|| text("x-ratelimit-reset").and_then(parse_iso_instant).map(until))?;
    Some(hint.min(MAX_RETRY_AFTER))
}

/// RFC 3339, or Atlassian's minute-precision `yyyy-MM-ddTHH:mmZ` (UTC when no offset is given).
fn parse_iso_instant(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
        .map(|n| n.and_utc())
}

fn parse_approval(v: &Value) -> Result<Approval, String> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let id = text(v.get("id")).ok_or("an approval has no id")?;
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let final_decision = v.get("finalDecision").and_then(Value::as_str).unwrap_or("pending").to_owned();
    let approvers = v
        .get("approvers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|a| {
                    let account = a.pointer("/approver/accountId").and_then(Value::as_str)?;
                    let decision = a.get("approverDecision").and_then(Value::as_str).unwrap_or("pending");
                    Some((account.to_owned(), decision.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let completed_epoch_ms = v.pointer("/completedDate/epochMillis").and_then(Value::as_i64);
    Ok(Approval { id, name, final_decision, approvers, completed_epoch_ms })
}

/// Does the live state confirm the event? `Ok` when the live status maps (through `statuses`, exact name
/// first, then case-insensitively, as ingress does) to the event's `app_status`, and, for an approved
/// event, the event's approver has `approverDecision == "approved"` on an approval whose
/// `finalDecision == "approved"`. `Err` carries a sentence for the audit row and the ticket.
pub fn confirms(
    event: &AccessEvent,
    approver: &crate::event::Person,
    not_before: Option<chrono::DateTime<chrono::Utc>>,
    live: &ApprovalState,
    statuses: &BTreeMap<String, AppStatus>,
) -> Result<(), String> {
    let key = &event.ticket.key;
    let mapped = statuses
        .get(&live.status)
        .copied()
        .or_else(|| statuses.iter().find(|(k, _)| k.eq_ignore_ascii_case(&live.status)).map(|(_, v)| *v));
    match mapped {
        Some(s) if s == event.app_status => {}
        Some(s) => {
            return Err(format!(
                "{key} is now in status {:?} ({}), not {} as the event says; the payload is stale or forged",
                live.status,
                app_status_name(s),
                app_status_name(event.app_status)
            ));
        }
        None => {
            return Err(format!(
                "{key} is now in status {:?}, which [jsm.statuses] does not map, not {} as the event says; \
                 the payload is stale or forged",
                live.status,
                app_status_name(event.app_status)
            ));
        }
    }
    if event.app_status != AppStatus::Approved {
        return Ok(());
    }

    let account = approver.account_id.as_str();
    let not_before_ms = not_before.map(|t| t.timestamp_millis());
    let approving = |a: &&Approval| {
        a.final_decision.eq_ignore_ascii_case("approved")
            && a.approvers.iter().any(|(id, d)| id == account && d.eq_ignore_ascii_case("approved"))
    };
    // The latest approval decides: an approved one followed by a declined or pending one does not grant.
    let latest = live.approvals.iter().max_by_key(|a| a.completed_epoch_ms.unwrap_or(i64::MAX));
    if let Some(latest) = latest
        && !latest.final_decision.eq_ignore_ascii_case("approved")
    {
        return Err(format!("the latest approval of {key} ({}) is {}, not approved", latest.id, latest.final_decision));
    }
    let fresh = |a: &&Approval| match (not_before_ms, a.completed_epoch_ms) {
        (None, _) => true,
        (Some(nb), Some(done)) => done > nb,
        (Some(_), None) => false,
    };
    match live.approvals.iter().filter(approving).find(fresh) {
        Some(_) => return Ok(()),
        None if live.approvals.iter().any(|a| approving(&a)) => {
            return Err(format!(
                "{account}'s approval of {key} was given before the ticket's access was revoked; a new approval \
                 is needed"
            ));
        }
        None => {}
    }
    let who = approver.display_name.as_deref().map_or_else(|| account.to_owned(), |n| format!("{n} ({account})"));
    let seen: Vec<String> = live
        .approvals
        .iter()
        .map(|a| {
            let approvers: Vec<String> = a.approvers.iter().map(|(id, d)| format!("{id} {d}")).collect();
            format!("approval {} {} [{}]", a.id, a.final_decision, approvers.join(", "))
        })
        .collect();
    let source_hint = match event.approver.as_ref().map(|a| a.source) {
        Some(crate::event::ApproverSource::ApproverField) => {
            " (the event's approver came from the approver field; verify_approval checks JSM approvals)"
        }
        _ => "",
    };
    Err(format!(
        "JSM does not confirm that {who} approved {key}: no approved approval has them as an approving \
         approver{source_hint}; live approvals: {}",
        if seen.is_empty() { "none".to_owned() } else { seen.join("; ") }
    ))
}

fn app_status_name(s: AppStatus) -> &'static str {
    match s {
        AppStatus::Approved => "approved",
        AppStatus::Denied => "denied",
        AppStatus::Revoked => "revoked",
        AppStatus::Declined => "declined",
        AppStatus::Created => "created",
        AppStatus::Stage => "an approval stage",
    }
}

#[cfg(test)]
mod tests;
