//! The operator web console under `/console` on the ops listener: server-rendered
//! HTML pages over the same store functions as the CLI and the admin API
//! (`grants::list`, `audit::query`, `dead_letters`, `connection_tests`), for
//! auditors, application owners and the security lead.
//!
//! - **Enabled exactly when** `[ops] console_viewer_token_*` or
//!   `console_operator_token_*` is configured; otherwise every `/console` path
//!   answers 404. A token that is configured but unreadable stops the start.
//! - **Roles** ([`auth`]): `viewer` reads every page; `operator` also replays
//!   and discards dead letters and tests connections. Login exchanges a token
//!   and an operator name for a session cookie (HttpOnly, SameSite=Strict,
//!   Secure when the request came over HTTPS: `X-Forwarded-Proto: https`).
//! - **Every change is a POST carrying the session's CSRF token**, checked here
//!   in [`guard`] before any handler runs, as is the role: a handler never sees
//!   a forged or a viewer's POST.
//! - **Headers on every answer**: a strict Content-Security-Policy ([`CSP`]: our
//!   own CSS and script only, no inline code, no framing), `X-Frame-Options:
//!   DENY`, `nosniff`, `Referrer-Policy: no-referrer`, and `Cache-Control:
//!   no-store` on everything but the two static files.
//! - **Audited**: logins (`console_login`, and refused ones as
//!   `console_login_failed` at a bounded rate), logouts, exports
//!   (`console_export`), and each action through the same functions as the CLI,
//!   whose rows carry the operator and `via: console` (`replayed`, `discarded`,
//!   `connection_tested`). Page views are not audited one by one: the session's
//!   login row says who could see what.
//! - Metric: `accessgov_console_login_failures_total{reason}` counts every
//!   refused login, including those the audit's rate limit does not write.

pub mod auth;
mod pages;
mod views;

use super::OpsState;
use super::admin::AuthFailureAudit;
use auth::{LoginFailure, LoginLimiter, Role, Session, Sessions, Tokens};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The session cookie.
pub const SESSION_COOKIE: &str = "accessgov_console";
/// The login form's double-submit CSRF cookie.
pub const LOGIN_COOKIE: &str = "accessgov_console_login";
/// Largest form body accepted (the forms are a few fields).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Audit exports streaming at once (each holds a database connection while it streams).
const MAX_CONCURRENT_EXPORTS: usize = 2;

/// The console's state: tokens, sessions, login limits.
#[derive(Debug)]
pub struct Console {
    pub tokens: Tokens,
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    /// Rate limit of the `console_login_failed` audit rows (as the admin API's).
    pub failures: AuthFailureAudit<LoginFailure>,
    pub exports: Arc<tokio::sync::Semaphore>,
}

impl Console {
    /// The console of this config, `None` when no console token is configured.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Option<Self>> {
        Ok(Tokens::from_config(config)?.map(|tokens| Self::new(tokens, config.ops.console_session_idle)))
    }

    pub fn new(tokens: Tokens, idle: Duration) -> Self {
        Self {
            tokens,
            sessions: Sessions::new(idle),
            limiter: LoginLimiter::new(Instant::now()),
            failures: AuthFailureAudit::default(),
            exports: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS)),
        }
    }
}

/// The routes; `ops::router` nests them under `/console` behind [`guard`].
pub fn router(state: &OpsState) -> Router<OpsState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/access", get(pages::access))
        .route("/access.csv", get(pages::access_csv))
        .route("/audit", get(pages::audit))
        .route("/audit/export", get(pages::audit_export))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/{id}", get(pages::dead_letter))
        .route("/dead-letters/{id}/preview", get(pages::preview))
        .route("/dead-letters/{id}/replay", post(pages::replay))
        .route("/dead-letters/{id}/discard", post(pages::discard))
        .route("/applications", get(pages::applications))
        .route("/applications/{name}/test", post(pages::test_connection))
        .route("/static/console.css", get(pages::css))
        .route("/static/console.js", get(pages::js))
        .route("/static/favicon.svg", get(pages::favicon))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the browser reached us over HTTPS (the ops listener itself speaks
/// plain HTTP; a TLS-terminating proxy says so in `X-Forwarded-Proto` or `Forwarded`).
pub fn is_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.split(';').any(|p| p.trim().eq_ignore_ascii_case("proto=https")));
    forwarded_proto || forwarded
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure over HTTPS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<u64>, https: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if https {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The security headers every console answer carries.
fn secure_headers(resp: &mut Response, cacheable: bool) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if cacheable { "public, max-age=300" } else { "no-store" }),
    );
}

/// An HTML error page with `status`.
pub fn error_page(status: StatusCode, session: Option<&Session>, title: &str, message: &str) -> Response {
    (status, views::message_page(session, title, message)).into_response()
}

/// The first value of field `name` in an urlencoded form body, undecoded (the
/// CSRF token is hex, so an honest form sends it as it is).
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        (k == name.as_bytes()).then_some(v)
    })
}

/// Turns the console off when unconfigured, authenticates, checks CSRF and the
/// role of every POST, and sets the security headers on every answer.
async fn guard(State(state): State<OpsState>, req: Request, next: Next) -> Response {
    let Some(console) = state.console.clone() else {
        let mut resp = (
            StatusCode::NOT_FOUND,
            "the console is off: set [ops] console_viewer_token_env or console_operator_token_env \
             (or their _file forms) and restart",
        )
            .into_response();
        secure_headers(&mut resp, false);
        return resp;
    };
    let path = req.uri().path().to_owned();
    let is_static = path.starts_with("/static/");
    let mut resp = if is_static || path == "/login" {
        if req.method() == Method::POST && cross_site(req.headers()) {
            error_page(StatusCode::FORBIDDEN, None, "Forbidden", "Cross-site form posts are refused.")
        } else {
            next.run(req).await
        }
    } else {
        authenticated(&console, req, next).await
    };
    let cacheable = is_static && resp.status().is_success();
    secure_headers(&mut resp, cacheable);
    resp
}

/// `Sec-Fetch-Site: cross-site` (a browser says a form came from another site).
fn cross_site(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

async fn authenticated(console: &Console, req: Request, next: Next) -> Response {
    let session = match cookie(req.headers(), SESSION_COOKIE) {
        Some(c) => console.sessions.check(c, &console.tokens, Instant::now()),
        None => Err(auth::Ended::Unknown),
    };
    let session = match session {
        Ok(s) => s,
        Err(ended) => {
            if req.method() == Method::GET || req.method() == Method::HEAD {
                // Back to the page after login (a path of ours only).
                // The nested router sees the path without its `/console` prefix.
                let original = match (req.uri().path(), req.uri().query()) {
                    ("/", None) => "/console".to_owned(),
                    ("/", Some(q)) => format!("/console?{q}"),
                    (p, None) => format!("/console{p}"),
                    (p, Some(q)) => format!("/console{p}?{q}"),
                };
                let target = format!("/console/login?ended={}&next={}", ended.code(), views::urlencode(&original));
                return Redirect::to(&target).into_response();
            }
            return error_page(StatusCode::UNAUTHORIZED, None, "Logged out", ended.message());
        }
    };
    let mut req = req;
    if req.method() == Method::POST {
        if cross_site(req.headers()) {
            return error_page(
                StatusCode::FORBIDDEN,
                Some(&session),
                "Forbidden",
                "Cross-site form posts are refused.",
            );
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return error_page(StatusCode::PAYLOAD_TOO_LARGE, Some(&session), "Too large", "The form is too large.");
        };
        let presented = form_field(&bytes, "csrf").and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("");
        if !auth::csrf_matches(presented, &session.csrf) {
            tracing::warn!(path = %parts.uri.path(), operator = %session.operator, "console POST without a valid CSRF token refused");
            return error_page(
                StatusCode::FORBIDDEN,
                Some(&session),
                "Forbidden",
                "The form's CSRF token is missing or wrong. Reload the page and try again.",
            );
        }
        if parts.uri.path() != "/logout" && session.role != Role::Operator {
            tracing::warn!(path = %parts.uri.path(), operator = %session.operator, "console action refused to a viewer");
            return error_page(
                StatusCode::FORBIDDEN,
                Some(&session),
                "Forbidden",
                "This action needs the operator role; you are logged in as a viewer.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_form_fields_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; accessgov_console_login=zz; accessgov_console=abc".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("zz"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(form_field(b"reason=x&csrf=abc&csrfx=1", "csrf"), Some(&b"abc"[..]));
        assert_eq!(form_field(b"xcsrf=abc", "csrf"), None);
        assert_eq!(form_field(b"csrf", "csrf"), Some(&b""[..]));
    }

    #[test]
    fn the_cookie_is_secure_only_over_https() {
        let plain = set_cookie(SESSION_COOKIE, "v", "/console", None, false);
        assert_eq!(plain, "accessgov_console=v; Path=/console; HttpOnly; SameSite=Strict");
        let tls = set_cookie(SESSION_COOKIE, "v", "/console", Some(0), true);
        assert!(tls.to_str().unwrap().ends_with("; Max-Age=0; Secure"));
        let mut h = HeaderMap::new();
        assert!(!is_https(&h));
        h.insert("x-forwarded-proto", "HTTPS, http".parse().unwrap());
        assert!(is_https(&h));
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, "for=1.2.3.4;proto=https".parse().unwrap());
        assert!(is_https(&h));
    }
}
