//! The operator console over HTTP, on the real broker and database: off
//! without tokens; login, refused logins (audited at a bounded rate, limited
//! per client); cookie flags; the security headers; viewers cannot act; CSRF;
//! idle expiry and token rotation; keyset pagination of the audit page with
//! filters; the streamed exports; holds with their ticket and approver; dead
//! letters previewed, replayed and discarded; "Test connection" recorded. The
//! real-browser walk-through is in [`browser`].

mod browser;

use crate::helpers::provider::FakeProvider;
use crate::helpers::{LIVE_APP, TestApp, eventually, fixture, spawn_app_with, spawn_live_app};
use accessgov::audit::{self, AuditEntry, chain_hash};
use accessgov::config::Config;
use accessgov::connectors::ConnectorError;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;

pub const VIEWER_TOKEN: &str = "console-viewer-token-0123456789";
pub const OPERATOR_TOKEN: &str = "console-operator-token-0123456789";
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const WAIT: Duration = Duration::from_secs(30);
pub const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";

/// Token files for both roles, kept alive by the returned dir.
pub struct Tokens {
    pub dir: tempfile::TempDir,
}

impl Tokens {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("viewer"), format!("{VIEWER_TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("operator"), OPERATOR_TOKEN).unwrap();
        Self { dir }
    }

    pub fn configure(&self, c: &mut Config) {
        c.ops.console_viewer_token_file = Some(self.dir.path().join("viewer").display().to_string());
        c.ops.console_operator_token_file = Some(self.dir.path().join("operator").display().to_string());
    }

    pub fn rotate_viewer(&self, token: &str) {
        std::fs::write(self.dir.path().join("viewer"), token).unwrap();
    }
}

/// A browser without JavaScript: one cookie jar of our own, redirects not followed.
pub struct Client {
    http: reqwest::Client,
    base: String,
    pub session: Option<String>,
    pub csrf: Option<String>,
}

/// The value of `name="<field>" value="..."` in a page.
pub fn hidden(html: &str, field: &str) -> Option<String> {
    let marker = format!("name=\"{field}\" value=\"");
    let at = html.find(&marker)? + marker.len();
    Some(html[at..].split('"').next()?.to_owned())
}

/// The value of cookie `name` in a response's `Set-Cookie` headers, and the whole header.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let (kv, _) = v.split_once(';').unwrap_or((v, ""));
        let (k, val) = kv.split_once('=')?;
        (k.trim() == name).then(|| (val.to_owned(), v.to_owned()))
    })
}

impl Client {
    pub fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            base: format!("http://{}", app.ops_addr),
            session: None,
            csrf: None,
        }
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.session {
            Some(s) => req.header("cookie", format!("accessgov_console={s}")),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.with_cookie(self.http.get(format!("{}{path}", self.base))).send().await.unwrap()
    }

    /// GET, expecting 200; the body.
    pub async fn page(&self, path: &str) -> String {
        let resp = self.get(path).await;
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POSTs a form with the session's CSRF token (unless `csrf` overrides it).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)], csrf: Option<&str>) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        if let Some(t) = csrf.or(self.csrf.as_deref()) {
            form.push(("csrf", t));
        }
        self.with_cookie(self.http.post(format!("{}{path}", self.base))).form(&form).send().await.unwrap()
    }

    /// The login exchange: the form (its CSRF cookie and field), then the POST.
    pub async fn try_login(&self, token: &str, operator: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let form = self.http.get(format!("{}/console/login", self.base)).send().await.unwrap();
        assert_eq!(form.status(), 200);
        let (login_cookie, _) =
            set_cookie(form.headers(), "accessgov_console_login").expect("the login form sets its cookie");
        let html = form.text().await.unwrap();
        let csrf = hidden(&html, "csrf").expect("the login form has a CSRF field");
        assert_eq!(csrf, login_cookie);
        let mut req = self
            .http
            .post(format!("{}/console/login", self.base))
            .header("cookie", format!("accessgov_console_login={login_cookie}"))
            .form(&[("csrf", csrf.as_str()), ("operator", operator), ("token", token), ("next", "/console")]);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// Logs in (must succeed) and keeps the session and its CSRF token.
    pub async fn login(&mut self, token: &str, operator: &str) {
        let resp = self.try_login(token, operator, &[]).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "login: {}", resp.text().await.unwrap());
        let (session, _) = set_cookie(resp.headers(), "accessgov_console").expect("a session cookie");
        self.session = Some(session);
        let html = self.page("/console").await;
        self.csrf = Some(hidden(&html, "csrf").expect("the page carries the session's CSRF token"));
    }
}

async fn console_app(tokens: &Tokens, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|c| {
        tokens.configure(c);
        tweak(c);
    })
    .await
}

/// Audit rows of `action`: (actor, detail).
async fn audit_rows(app: &TestApp, action: &str) -> Vec<(Option<String>, Value)> {
    sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = $1 ORDER BY seq")
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// A webhook body: `ticket` approved for `requester` (Confluence / Write).
pub fn grant(ticket: u32, requester: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(1_764_000_000_000_i64 + i64::from(ticket) * 1000);
    v["issue"]["id"] = json!(format!("{}", 40_000 + ticket));
    v["issue"]["key"] = json!(format!("CON-{ticket}"));
    v["issue"]["fields"]["reporter"]["accountId"] = json!(requester);
    v["changelog"]["id"] = json!(format!("{}", ticket * 10 + 1));
    serde_json::to_vec(&v).unwrap()
}

async fn post_event(app: &TestApp, body: &[u8]) -> uuid::Uuid {
    let resp = app.post_signed(body, None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

/// A granted hold for `requester` through ticket CON-`ticket`: the hold recorded
/// and the provider call made (holds are recorded before the call, which a
/// provider outage afterwards could still fail).
pub async fn granted(app: &TestApp, provider: &FakeProvider, ticket: u32, requester: &str) {
    post_event(app, &grant(ticket, requester)).await;
    eventually("the hold and the provider membership", WAIT, || async {
        let holds: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
             WHERE g.subject = $1 AND g.state = 'active'",
        )
        .bind(requester)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let member = provider.members().iter().any(|(s, _)| s == requester);
        (holds == 1 && member).then_some(())
    })
    .await;
}

/// Takes the provider down, posts a grant for `requester` and waits for its dead letter.
pub async fn dead_letter(app: &TestApp, provider: &FakeProvider, ticket: u32, requester: &str) -> i64 {
    *provider.always.lock().unwrap() =
        Some(ConnectorError::Transient { reason: "503 provider down".into(), retry_after: None });
    let id = post_event(app, &grant(ticket, requester)).await;
    let dl = eventually("a dead letter", WAIT, || async {
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE event_id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    *provider.always.lock().unwrap() = None;
    dl
}

/// An open dead letter whose message is not an event (enough for refusals and discards).
async fn plain_dead_letter(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (dead_key, ticket, message, error_class, last_error) \
         VALUES ($1, 'CON-9', '{\"raw\": \"x\"}', 'poison', 'undecodable') RETURNING id",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn dead_letter_state(app: &TestApp, id: i64) -> (Option<String>, Option<String>) {
    sqlx::query_as("SELECT replayed_by, discarded_by FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_off_without_tokens_and_a_configured_but_missing_token_stops_the_start() {
    let app = spawn_app_with(|_| {}).await;
    let c = Client::new(&app);
    for path in ["/console", "/console/login", "/console/audit", "/console/static/console.css"] {
        let resp = c.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.text().await.unwrap().contains("console is off"));
    }
    let resp = c.post("/console/login", &[("token", VIEWER_TOKEN), ("operator", "x")], None).await;
    assert_eq!(resp.status(), 404);

    let mut config = (*app.config).clone();
    config.ops.console_operator_token_env = Some("ACCESSGOV_TEST_CONSOLE_TOKEN_THAT_IS_NOT_SET".into());
    let err = accessgov::app::App::start(
        std::sync::Arc::new(config),
        accessgov::app::Role::Worker,
        None,
        Default::default(),
        false,
        Default::default(),
    )
    .await
    .err()
    .expect("the start is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("ACCESSGOV_TEST_CONSOLE_TOKEN_THAT_IS_NOT_SET") && msg.contains("console"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_gives_a_strict_session_cookie_and_is_audited_with_the_name() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let mut c = Client::new(&app);

    // Not logged in: pages send the browser to the login form, naming the page.
    let resp = c.get("/console/audit?ticket=CON-1").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[LOCATION].to_str().unwrap();
    assert!(to.starts_with("/console/login?") && to.contains("next=%2Fconsole%2Faudit%3Fticket%3DCON-1"), "{to}");

    let resp = c.try_login(OPERATOR_TOKEN, "  olga ", &[]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/console");
    let (session, header) = set_cookie(resp.headers(), "accessgov_console").unwrap();
    assert!(session.len() >= 64, "{session}");
    assert_eq!(header, format!("accessgov_console={session}; Path=/console; HttpOnly; SameSite=Strict"));
    // The login form's cookie is cleared.
    let (_, cleared) = set_cookie(resp.headers(), "accessgov_console_login").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // Behind a TLS proxy the cookie is Secure.
    let resp = c.try_login(VIEWER_TOKEN, "vera", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, header) = set_cookie(resp.headers(), "accessgov_console").unwrap();
    assert!(header.ends_with("; HttpOnly; SameSite=Strict; Secure"), "{header}");

    c.session = Some(session);
    let html = c.page("/console").await;
    assert!(html.contains("<h1>Overview</h1>") && html.contains("olga") && html.contains("operator"), "{html}");
    let logins = audit_rows(&app, "console_login").await;
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0].0.as_deref(), Some("olga"));
    assert_eq!((logins[0].1["role"].as_str(), logins[1].1["role"].as_str()), (Some("operator"), Some("viewer")));
    assert_eq!(logins[0].1["client"], "127.0.0.1");

    // A login form posted without its cookie (a forged cross-site login) is refused.
    let resp = c
        .http
        .post(format!("{}/console/login", c.base))
        .form(&[("csrf", "abc"), ("operator", "mallory"), ("token", OPERATOR_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(resp.headers(), "accessgov_console").is_none());

    // Logout ends the session (a POST with the session's CSRF token).
    c.csrf = hidden(&html, "csrf");
    let resp = c.post("/console/logout", &[], None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.get("/console").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(audit_rows(&app, "console_logout").await[0].0.as_deref(), Some("olga"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refused_logins_are_audited_at_a_bounded_rate_and_limited_per_client() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let c = Client::new(&app);
    const GUESS: &str = "guessed-console-token-never-stored";
    let burst = accessgov::ops::console::auth::PER_CLIENT_BURST;
    for i in 0..burst {
        let resp = c.try_login(GUESS, "mallory", &[]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
        assert!(set_cookie(resp.headers(), "accessgov_console").is_none());
        assert!(resp.text().await.unwrap().contains("not a console token"));
    }
    // The client's budget is spent: refused before the token is looked at, even the right one.
    for token in [GUESS, VIEWER_TOKEN] {
        let resp = c.try_login(token, "mallory", &[]).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "60");
    }
    let rows = audit_rows(&app, "console_login_failed").await;
    let reasons: Vec<&str> = rows.iter().map(|(_, d)| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["wrong_token", "rate_limited"], "one row per reason per 10 s: {rows:?}");
    assert_eq!(rows[0].1["claimed_operator"], "mallory");
    assert_eq!(rows[0].1["client"], "127.0.0.1");
    let all: String =
        sqlx::query_scalar("SELECT string_agg(detail::text, ' ') FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert!(!all.contains(GUESS) && !all.contains(VIEWER_TOKEN), "a token reached the audit trail");
    let metrics = reqwest::get(format!("http://{}/metrics", app.ops_addr)).await.unwrap().text().await.unwrap();
    let series = |reason: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("accessgov_console_login_failures_total{{reason=\"{reason}\"}} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The metric is process-wide (other tests add to it): at least ours.
    assert!(series("wrong_token") >= u64::from(burst) && series("rate_limited") >= 2, "{metrics}");
    assert!(audit_rows(&app, "console_login").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_answers_carry_the_security_headers() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let mut c = Client::new(&app);
    let check = |path: &str, headers: &HeaderMap, cache: &str| {
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["cache-control"], cache, "{path}");
    };
    let resp = c.get("/console/login").await;
    check("/console/login", resp.headers(), "no-store");
    let resp = c.get("/console").await;
    check("/console (redirect)", resp.headers(), "no-store");
    c.login(VIEWER_TOKEN, "vera").await;
    for path in ["/console", "/console/access", "/console/audit", "/console/dead-letters", "/console/applications"] {
        let resp = c.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        check(path, resp.headers(), "no-store");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let html = resp.text().await.unwrap();
        // No inline script or style for the CSP to block; tables have captions.
        for inline in ["<script>", "<style", " style=", " onclick=", " onsubmit=", " onchange=", " onload="] {
            assert!(!html.contains(inline), "{path} has {inline}");
        }
        assert!(html.contains("<caption>") && html.contains("<th scope=\"col\">"), "{path}");
    }
    let resp = c.get("/console/static/console.css").await;
    assert_eq!(resp.headers()["content-type"], "text/css; charset=utf-8");
    check("css", resp.headers(), "public, max-age=300");
    let resp = c.get("/console/static/console.js").await;
    assert_eq!(resp.headers()["content-type"], "text/javascript; charset=utf-8");
    let resp = c.get("/console/nope").await;
    assert_eq!(resp.status(), 404);
    check("404", resp.headers(), "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_viewers_read_but_cannot_replay_discard_or_test_connections() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let id = plain_dead_letter(&app).await;
    let mut viewer = Client::new(&app);
    viewer.login(VIEWER_TOKEN, "vera").await;
    let html = viewer.page(&format!("/console/dead-letters/{id}")).await;
    assert!(!html.contains("/discard") && html.contains("need the operator role"), "{html}");
    for path in [
        format!("/console/dead-letters/{id}/replay"),
        format!("/console/dead-letters/{id}/discard"),
        "/console/applications/Okta/test".to_owned(),
    ] {
        let resp = viewer.post(&path, &[("reason", "viewer tries")], None).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(resp.text().await.unwrap().contains("needs the operator role"), "{path}");
    }
    assert_eq!(dead_letter_state(&app, id).await, (None, None));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connection_tests").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_posts_without_the_session_csrf_token_are_refused() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let id = plain_dead_letter(&app).await;
    let mut op = Client::new(&app);
    op.login(OPERATOR_TOKEN, "olga").await;
    let mut other = Client::new(&app);
    other.login(OPERATOR_TOKEN, "oscar").await;
    let path = format!("/console/dead-letters/{id}/discard");
    // Missing, wrong, and another session's token.
    let no_token =
        op.with_cookie(op.http.post(format!("{}{path}", op.base))).form(&[("reason", "forged")]).send().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    assert!(no_token.text().await.unwrap().contains("CSRF token is missing or wrong"));
    for wrong in ["0000", other.csrf.as_deref().unwrap()] {
        let resp = op.post(&path, &[("reason", "forged")], Some(wrong)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    // A cross-site post is refused even with the token.
    let resp = op
        .with_cookie(op.http.post(format!("{}{path}", op.base)))
        .header("sec-fetch-site", "cross-site")
        .form(&[("reason", "forged"), ("csrf", op.csrf.as_deref().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(dead_letter_state(&app, id).await, (None, None));

    // The right token: discarded, audited with the operator and `via: console`.
    let resp = op.post(&path, &[("reason", "")], None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "a reason is required");
    let resp = op.post(&path, &[("reason", "known bad payload")], None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(dead_letter_state(&app, id).await, (None, Some("olga".into())));
    let rows = audit_rows(&app, "discarded").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0.as_deref(), Some("olga"));
    assert_eq!((rows[0].1["via"].as_str(), rows[0].1["reason"].as_str()), (Some("console"), Some("known bad payload")));
    let html = op.page(&format!("/console/dead-letters/{id}?done=discarded")).await;
    assert!(html.contains("discarded") && html.contains("olga"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_end_when_idle_and_when_the_token_file_changes() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |c| c.ops.console_session_idle = Duration::from_secs(2)).await;
    let mut c = Client::new(&app);
    c.login(VIEWER_TOKEN, "vera").await;
    // Used within the idle time: the session lives on.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.page("/console/audit").await;
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let resp = c.get("/console/audit").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers()[LOCATION].to_str().unwrap().starts_with("/console/login?ended=idle"));
    let html = c.page(resp.headers()[LOCATION].to_str().unwrap()).await;
    assert!(html.contains("period without activity"), "{html}");
    // An ended session stays ended.
    assert_eq!(c.get("/console").await.status(), StatusCode::SEE_OTHER);

    // Rotating the viewer token revokes the viewer sessions, not the operators'.
    c.login(VIEWER_TOKEN, "vera").await;
    let mut op = Client::new(&app);
    op.login(OPERATOR_TOKEN, "olga").await;
    tokens.rotate_viewer("rotated-viewer-token-0123456789");
    let resp = c.get("/console").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers()[LOCATION].to_str().unwrap().starts_with("/console/login?ended=token_rotated"));
    op.page("/console").await;
    assert_eq!(c.try_login(VIEWER_TOKEN, "vera", &[]).await.status(), StatusCode::UNAUTHORIZED);
    c.login("rotated-viewer-token-0123456789", "vera").await;
    c.page("/console").await;
}

/// Seqs of the rows on an audit page, and its older/newer links.
fn audit_page(html: &str) -> (Vec<i64>, Option<String>, Option<String>) {
    let seqs = html
        .match_indices("data-seq=\"")
        .map(|(i, m)| html[i + m.len()..].split('"').next().unwrap().parse().unwrap())
        .collect();
    let link = |rel: &str| {
        let marker = format!("rel=\"{rel}\" href=\"");
        html.find(&marker).map(|i| html[i + marker.len()..].split('"').next().unwrap().replace("&amp;", "&"))
    };
    (seqs, link("next"), link("prev"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_audit_pages_follow_keyset_links_without_overlap_or_gap_and_filter() {
    let tokens = Tokens::new();
    let admin_token = tokens.dir.path().join("admin");
    std::fs::write(&admin_token, "console-test-admin-token-0123456789").unwrap();
    let app = console_app(&tokens, |c| c.ops.admin_token_file = Some(admin_token.display().to_string())).await;
    // 130 rows of our own (plus the logins), every third for one user.
    let mut tx = app.pool.begin().await.unwrap();
    let entries: Vec<AuditEntry> = (0..130)
        .map(|i| {
            let mut e = AuditEntry::new(if i % 2 == 0 { "step_even" } else { "step_odd" }, "ok");
            e.subject = Some(if i % 3 == 0 { "u-third".into() } else { format!("u-{i}") });
            e.ticket = Some(format!("PAG-{i}"));
            e.detail = json!({"i": i, "note": "<b>escaped</b>"});
            e
        })
        .collect();
    audit::append(&mut tx, &entries).await.unwrap();
    tx.commit().await.unwrap();
    let mut c = Client::new(&app);
    c.login(VIEWER_TOKEN, "vera").await;

    let all: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_log ORDER BY seq DESC").fetch_all(&app.pool).await.unwrap();
    let (first, next, prev) = audit_page(&c.page("/console/audit?limit=20").await);
    assert_eq!(prev, None, "the newest page has no newer link");
    // Rows appended while paging (the walk's own login did one) never shift the pages.
    let mut seen = first.clone();
    let mut pages = vec![first];
    let mut next = next;
    while let Some(link) = next {
        let (seqs, n, p) = audit_page(&c.page(&link).await);
        assert!(p.is_some(), "an older page links back");
        seen.extend(&seqs);
        pages.push(seqs);
        next = n;
    }
    let newest = seen[0];
    let expected: Vec<i64> = all.iter().copied().filter(|s| *s <= newest).collect();
    assert_eq!(seen, expected, "no row twice, none skipped, newest first");
    assert!(pages.len() >= 7 && pages[..pages.len() - 1].iter().all(|p| p.len() == 20), "{pages:?}");
    // And back from the oldest page through the newer links: the same rows.
    let oldest_link = format!("/console/audit?limit=20&before={}", pages[pages.len() - 2].last().unwrap());
    let (oldest, _, mut prev) = audit_page(&c.page(&oldest_link).await);
    assert_eq!(&oldest, pages.last().unwrap());
    let mut back = vec![oldest];
    while let Some(link) = prev {
        let (seqs, _, p) = audit_page(&c.page(&link).await);
        back.push(seqs);
        prev = p;
    }
    let back_seen: Vec<i64> = back.iter().rev().flatten().copied().filter(|s| *s <= newest).collect();
    assert_eq!(back_seen, expected);

    // Filters: user and action together, paged, every row matching.
    let html = c.page("/console/audit?user=u-third&action=step_even&limit=5").await;
    let (seqs, next, _) = audit_page(&html);
    assert_eq!(seqs.len(), 5);
    let mut filtered = seqs;
    let mut next = next;
    while let Some(link) = next {
        assert!(link.contains("user=u-third") && link.contains("action=step_even"), "{link}");
        let (seqs, n, _) = audit_page(&c.page(&link).await);
        filtered.extend(seqs);
        next = n;
    }
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE subject = 'u-third' AND action = 'step_even' ORDER BY seq DESC",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(filtered, expected);
    assert_eq!(expected.len(), 22);
    let html = c.page("/console/audit?ticket=PAG-7").await;
    let (seqs, next, prev) = audit_page(&html);
    assert_eq!((seqs.len(), next, prev), (1, None, None));
    // Detail and hashes expand without script; HTML in the detail is escaped.
    assert!(html.contains("<details><summary>Show</summary>") && html.contains("&lt;b&gt;escaped&lt;/b&gt;"));
    assert!(!html.contains("<b>escaped</b>"));
    let bad = c.get("/console/audit?since=yesterday-ish").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The admin API pages back the same way (`before_seq`: the rows just older, oldest first).
    let page: Value = reqwest::Client::new()
        .get(format!("http://{}/admin/audit?user=u-third&before_seq={}&limit=5", app.ops_addr, expected[4]))
        .bearer_auth("console-test-admin-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = page["rows"].as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    let mut want: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE subject = 'u-third' AND seq < $1 ORDER BY seq DESC LIMIT 5",
    )
    .bind(expected[4])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    want.reverse();
    assert_eq!(seqs, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_exports_stream_jsonl_and_csv_through_the_cli_code() {
    let tokens = Tokens::new();
    let app = console_app(&tokens, |_| {}).await;
    let mut tx = app.pool.begin().await.unwrap();
    let entries: Vec<AuditEntry> = (0..3000)
        .map(|i| {
            let mut e = AuditEntry::new(if i % 10 == 0 { "exported" } else { "other" }, "ok");
            e.actor = Some("o'brien, \"ops\"".into());
            e.detail = json!({"i": i, "text": "line1\nline2"});
            e
        })
        .collect();
    audit::append(&mut tx, &entries).await.unwrap();
    tx.commit().await.unwrap();
    let mut c = Client::new(&app);
    c.login(VIEWER_TOKEN, "vera").await;

    let resp = c.get("/console/audit/export?format=jsonl&action=exported").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson; charset=utf-8");
    assert!(
        resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"accessgov-audit-")
    );
    assert!(resp.headers().get("content-length").is_none(), "streamed, not buffered");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = resp.text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 300);
    assert!(lines.iter().all(|l| l["action"] == "exported"));
    // What the hash covers travels with the row (as the CLI's export).
    let v = &lines[0];
    let canon = json!([
        v["seq"],
        v["at"],
        v["event_id"],
        v["ticket"],
        v["actor"],
        v["action"],
        v["application"],
        v["subject"],
        v["target"],
        v["outcome"],
        v["detail"]
    ])
    .to_string();
    assert_eq!(chain_hash(v["prev_hash"].as_str().unwrap(), &canon), v["hash"].as_str().unwrap());

    let resp = c.get("/console/audit/export?format=csv").await;
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with(
        "seq,at,event_id,ticket,actor,action,application,subject,target,outcome,detail,prev_hash,hash\r\n"
    ));
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    // One line per row (the detail's newline is JSON-escaped), its own export row included.
    assert_eq!(body.lines().count() as i64, total + 1);
    assert!(body.contains(r#""o'brien, ""ops""""#));
    let first_seq: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert!(body.lines().nth(1).unwrap().starts_with(&format!("{first_seq},\"")));
    assert_eq!(first_seq, 1);

    let exports = audit_rows(&app, "console_export").await;
    assert_eq!(exports.len(), 2);
    assert_eq!(exports[0].0.as_deref(), Some("vera"));
    assert_eq!(
        (exports[0].1["format"].as_str(), exports[0].1["filter"]["action"].as_str()),
        (Some("jsonl"), Some("exported"))
    );
    assert_eq!(c.get("/console/audit/export?format=xml").await.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_page_finds_holds_with_ticket_approver_rule_and_exports_csv() {
    let tokens = Tokens::new();
    let (app, provider) = spawn_live_app(|c| tokens.configure(c)).await;
    granted(&app, &provider, 1, "u-alice").await;
    granted(&app, &provider, 2, "u-bob").await;
    // Alice's hold expires in 3 days.
    sqlx::query("UPDATE grant_holds SET expires_at = now() + interval '3 days' WHERE ticket = 'CON-1'")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut c = Client::new(&app);
    c.login(VIEWER_TOKEN, "vera").await;

    let html = c.page("/console/access?user=u-alice").await;
    assert!(html.contains("href=\"https://example.atlassian.net/browse/CON-1\""), "{html}");
    assert!(html.contains(APPROVER), "approver shown: {html}");
    assert!(html.contains("Confluence / Write") && html.contains("confluence-developers"));
    assert!(!html.contains("u-bob"));
    let html = c.page(&format!("/console/access?application={LIVE_APP}&target=confluence-developers")).await;
    assert!(html.contains("u-alice") && html.contains("u-bob"));
    let html = c.page("/console/access?expiring=7d").await;
    assert!(html.contains("u-alice") && !html.contains("u-bob"), "only the hold expiring soon");
    let html = c.page("/console/access?target=nobody-group").await;
    assert!(html.contains("No access matches."));
    let html = c.page("/console").await;
    assert!(html.contains("Active holds") && html.contains("href=\"/console/access\">2</a>"), "{html}");
    assert!(html.contains("href=\"/console/access?expiring=7d\">1</a>"), "{html}");

    let resp = c.get("/console/access.csv?state=active").await;
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "application,subject,target,state,ticket,access_level,rule,approved_by,held_since,expires_at,granted_at,revoked_at"
    );
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("\"Confluence\",\"u-alice\",\"confluence-developers\",\"active\",\"CON-1\",\"Write\",\"Confluence / Write\",\"5f8e1b2c3d4a5b6c7d8e9f01\","), "{csv}");
    assert_eq!(audit_rows(&app, "console_export").await[0].1["what"], "access");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_operator_previews_and_replays_a_dead_letter_and_the_audit_names_them() {
    let tokens = Tokens::new();
    let (app, provider) = spawn_live_app(|c| tokens.configure(c)).await;
    let id = dead_letter(&app, &provider, 5, "u-dead").await;
    let mut op = Client::new(&app);
    op.login(OPERATOR_TOKEN, "olga").await;

    let html = op.page("/console/dead-letters?error_class=transient").await;
    assert!(html.contains(&format!("href=\"/console/dead-letters/{id}\"")), "{html}");
    assert!(op.page("/console/dead-letters?error_class=permanent").await.contains("No dead letter matches."));
    let html = op.page(&format!("/console/dead-letters/{id}")).await;
    assert!(html.contains("503 provider down") && html.contains("Every attempt") && html.contains("u-dead"));
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    let html = op.page(&format!("/console/dead-letters/{id}/preview")).await;
    assert!(
        html.contains("<strong class=\"would\">apply</strong>") && html.contains("confluence-developers"),
        "{html}"
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert_eq!(before, after, "a preview changes nothing");

    let resp = op.post(&format!("/console/dead-letters/{id}/replay"), &[], None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION].to_str().unwrap(), format!("/console/dead-letters/{id}?done=replayed"));
    assert_eq!(dead_letter_state(&app, id).await.0.as_deref(), Some("olga"));
    let rows = audit_rows(&app, "replayed").await;
    assert_eq!((rows[0].0.as_deref(), rows[0].1["via"].as_str()), (Some("olga"), Some("console")));
    // A second replay is refused (closed), as on the CLI.
    let resp = op.post(&format!("/console/dead-letters/{id}/replay"), &[], None).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    eventually("the replay granted", WAIT, || async {
        provider.members().iter().any(|(subject, _)| subject == "u-dead").then_some(())
    })
    .await;
    let html = op.page("/console/audit?action=replayed").await;
    assert!(html.contains("olga"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_test_connection_is_recorded_audited_and_shown() {
    let tokens = Tokens::new();
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/api/v1/users/me"))
        .and(wiremock::matchers::header("authorization", "SSWS okta-test-token"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"id": "00u1"})))
        .expect(2)
        .mount(&server)
        .await;
    let okta_token = tokens.dir.path().join("okta");
    std::fs::write(&okta_token, "okta-test-token").unwrap();
    let provider = std::sync::Arc::new(FakeProvider::default());
    let app = crate::helpers::spawn_app_full(
        |c| {
            tokens.configure(c);
            let okta = c.applications.get_mut("Okta").unwrap();
            okta.dry_run = false;
            okta.settings.remove("token_env");
            okta.settings.insert("token_file".into(), okta_token.display().to_string().into());
            okta.settings.insert("base_url".into(), server.uri().into());
        },
        crate::helpers::fake_connectors_for(&provider, &["Okta"]),
    )
    .await;
    let mut op = Client::new(&app);
    op.login(OPERATOR_TOKEN, "olga").await;
    assert!(op.page("/console").await.contains("never tested"));
    let resp = op.post("/console/applications/Okta/test", &[], None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with("/console/applications?tested=Okta"));
    let html = op.page(&to).await;
    assert!(html.contains("Connection test of Okta: ok"), "{html}");
    let (actor, via, ok, result): (String, String, bool, String) =
        sqlx::query_as("SELECT actor, via, ok, result FROM connection_tests").fetch_one(&app.pool).await.unwrap();
    assert_eq!((actor.as_str(), via.as_str(), ok, result.as_str()), ("olga", "console", true, "ok"));
    let rows = audit_rows(&app, "connection_tested").await;
    assert_eq!((rows[0].0.as_deref(), rows[0].1["via"].as_str()), (Some("olga"), Some("console")));
    let html = op.page("/console").await;
    assert!(!html.contains("never tested") && html.contains("olga (console)"), "{html}");
    // A dry-run application is not tested, and an unknown one is 404.
    let resp = op.post("/console/applications/Confluence/test", &[], None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(op.post("/console/applications/Nope/test", &[], None).await.status(), StatusCode::NOT_FOUND);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connection_tests").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 1);

    // `accessgov connectors test` records its result the same way, with its operator.
    let mut text = crate::helpers::EXAMPLE_CONFIG.to_owned();
    for (from, to) in [
        (
            r#"url = "postgres://postgres@127.0.0.1:5432/accessgov""#.to_owned(),
            format!("url = {:?}", app.config.database.url),
        ),
        (r#"base_url = "https://example.okta.com""#.to_owned(), format!("base_url = {:?}", server.uri())),
        (r#"token_env = "OKTA_API_TOKEN""#.to_owned(), format!("token_file = {:?}", okta_token.display().to_string())),
        (
            "owner = \"it-admins@example.com\"\ndry_run = true".to_owned(),
            "owner = \"it-admins@example.com\"\ndry_run = false".to_owned(),
        ),
    ] {
        assert!(text.contains(&from), "the example config has {from}");
        text = text.replacen(&from, &to, 1);
    }
    let config = tokens.dir.path().join("accessgov.toml");
    std::fs::write(&config, text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_accessgov"));
    cmd.args(["connectors", "test", "Okta", "--operator", "carla", "--config"]).arg(&config).env("RUST_LOG", "warn");
    cmd.env_remove("ACCESSGOV_CONFIG").env_remove("ACCESSGOV_DATABASE_URL").env_remove("ACCESSGOV_OPERATOR");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let latest: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT actor, via, ok FROM connection_tests ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(latest[1], ("carla".to_owned(), "cli".to_owned(), true));
    assert_eq!(audit_rows(&app, "connection_tested").await[1].0.as_deref(), Some("carla"));
    assert!(op.page("/console").await.contains("carla (cli)"));
}
