//! The fault suite: a worker killed with SIGKILL at the three points that matter,
//! provider storms, and duplicated, reordered deliveries across four workers,
//! against a stateful mock of the Jira group API (loopback only, bounded).
//!
//! Every case ends with the same four checks: every accepted webhook reached a
//! final state (processed, or a dead letter); no provider effect happened twice
//! (the mock counts the memberships it really added or removed); the ledger
//! equals the mock's memberships; `audit verify` passes. Each prints its counts.

use crate::helpers::{self, TestApp, WEBHOOK_SECRET, eventually, fixture};
use accessgov::config::Config;
use accessgov::ingress::auth::sign;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const APP: &str = "Jira";
const GROUP: &str = "jira-devs";
const GROUP_ID: &str = "0d9a2b1c-0000-4000-8000-00000000d3f5";
const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";
const WAIT: Duration = Duration::from_secs(60);

// --- the mock provider --------------------------------------------------------------------------

/// Where a gated mutation stops: before applying its effect, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateAt {
    Before,
    After,
}

#[derive(Default)]
struct Mock {
    members: BTreeSet<String>,
    adds: BTreeMap<String, u32>,
    removes: BTreeMap<String, u32>,
    mutations: usize,
    gate: Option<GateAt>,
    /// Chaos for mutations: 5xx, 429 with Retry-After, and a slow answer after the effect (a client timeout).
    storm: bool,
    rolls: u64,
    latency: Duration,
}

#[derive(Clone, Default)]
struct MockJira {
    state: Arc<Mutex<Mock>>,
    reached: Arc<Notify>,
}

impl MockJira {
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/rest/api/3/group/bulk", get(bulk))
            .route("/rest/api/3/user/groups", get(user_groups))
            .route("/rest/api/3/group/user", axum::routing::post(add).delete(remove))
            .route("/rest/api/3/myself", get(|| async { Json(json!({"accountId": "bot"})) }))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        format!("http://{addr}")
    }

    fn members(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().members.clone()
    }

    /// Pairs (account) the mock added, or removed, more than once in a row.
    fn doubled(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.adds.iter().chain(s.removes.iter()).filter(|(_, n)| **n > 1).map(|(a, _)| a.clone()).collect()
    }
}

async fn bulk() -> Json<Value> {
    Json(json!({"isLast": true, "values": [{"groupId": GROUP_ID, "name": GROUP}]}))
}

async fn user_groups(State(m): State<MockJira>, Query(q): Query<HashMap<String, String>>) -> Response {
    let account = q.get("accountId").cloned().unwrap_or_default();
    if m.state.lock().unwrap().members.contains(&account) {
        Json(json!([{"groupId": GROUP_ID, "name": GROUP}])).into_response()
    } else {
        Json(json!([])).into_response()
    }
}

/// A mutation's chaos roll: `None` to go on normally.
fn storm(m: &mut Mock) -> Option<Response> {
    if !m.storm {
        return None;
    }
    m.rolls += 1;
    match m.rolls % 10 {
        0..=2 => Some((StatusCode::SERVICE_UNAVAILABLE, "storm").into_response()),
        3 => Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response()),
        _ => None,
    }
}

async fn mutate(m: MockJira, account: String, add: bool) -> Response {
    let (gate, slow, latency) = {
        let mut s = m.state.lock().unwrap();
        if let Some(r) = storm(&mut s) {
            return r;
        }
        s.mutations += 1;
        let slow = s.storm && s.rolls % 10 == 4;
        (s.gate.take(), slow, s.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if gate == Some(GateAt::Before) {
        m.reached.notify_one();
        std::future::pending::<()>().await;
    }
    let changed = {
        let mut s = m.state.lock().unwrap();
        let changed = if add { s.members.insert(account.clone()) } else { s.members.remove(&account) };
        if changed {
            *(if add { &mut s.adds } else { &mut s.removes }).entry(account.clone()).or_default() += 1;
            // A later opposite change starts a new epoch for "twice".
            if add {
                s.removes.remove(&account)
            } else {
                s.adds.remove(&account)
            };
        }
        changed
    };
    if gate == Some(GateAt::After) {
        m.reached.notify_one();
        std::future::pending::<()>().await;
    }
    if slow {
        // The effect took place; the client times out before hearing it.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    match (add, changed) {
        (true, true) => StatusCode::CREATED.into_response(),
        (false, true) => StatusCode::OK.into_response(),
        _ => (StatusCode::BAD_REQUEST, Json(json!({"errorMessages": ["no change"]}))).into_response(),
    }
}

async fn add(State(m): State<MockJira>, Json(body): Json<Value>) -> Response {
    let account = body["accountId"].as_str().unwrap_or_default().to_owned();
    mutate(m, account, true).await
}

async fn remove(State(m): State<MockJira>, Query(q): Query<HashMap<String, String>>) -> Response {
    let account = q.get("accountId").cloned().unwrap_or_default();
    mutate(m, account, false).await
}

// --- configuration and load ---------------------------------------------------------------------

/// "Jira" live against the mock, with one rule, fast retries and a short lease.
fn use_mock(c: &mut Config, base: &str, dir: &tempfile::TempDir) {
    std::fs::write(dir.path().join("email"), "bot@example.com").unwrap();
    std::fs::write(dir.path().join("token"), "mock-token").unwrap();
    let app: accessgov::config::ApplicationConfig = toml::from_str(&format!(
        "kind = \"jira\"\nbase_url = \"{base}\"\ntimeout = \"500ms\"\nemail_file = \"{}\"\napi_token_file = \"{}\"\n",
        dir.path().join("email").display(),
        dir.path().join("token").display()
    ))
    .unwrap();
    c.applications.insert(APP.into(), app);
    let mut rule = c.rules[0].clone();
    rule.application = APP.into();
    rule.groups = vec![GROUP.into()];
    rule.max_duration = None;
    c.rules.push(rule);
    c.broker.retry_delays = vec![Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)];
    c.worker.inline_backoff = vec![Duration::from_millis(20), Duration::from_millis(40)];
    c.worker.max_inline_wait = Duration::from_millis(1500);
    c.worker.intent_lease = Duration::from_secs(2);
}

/// A signed webhook: `ticket` approved (or revoked) at `at` for `user`, on Jira.
fn webhook(ticket: u32, user: &str, revoke: bool, at: i64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(at);
    v["issue"]["id"] = json!(format!("{}", 50_000 + ticket));
    v["issue"]["key"] = json!(format!("FLT-{ticket}"));
    v["issue"]["fields"]["customfield_10050"]["value"] = json!(APP);
    v["issue"]["fields"]["reporter"]["accountId"] = json!(user);
    v["issue"]["fields"]["customfield_10027"][0]["completedDate"]["epochMillis"] = json!(at - 60_000);
    v["changelog"]["id"] = json!(format!("{}", ticket * 10 + u32::from(revoke)));
    let status = if revoke { "Access Revoked" } else { "Approved by Manager" };
    let items = v["changelog"]["items"].as_array_mut().unwrap();
    items.iter_mut().find(|i| i["fieldId"] == "status").unwrap()["toString"] = json!(status);
    serde_json::to_vec(&v).unwrap()
}

/// Posts a body; the event id when accepted (202).
async fn post(http: &reqwest::Client, addr: std::net::SocketAddr, body: &[u8]) -> Option<uuid::Uuid> {
    let resp = http
        .post(format!("http://{addr}/webhooks/jsm"))
        .header("content-type", "application/json")
        .header("X-Hub-Signature", sign(WEBHOOK_SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    if resp.status() != 202 {
        return None;
    }
    resp.json::<Value>().await.ok()?["event_id"].as_str()?.parse().ok()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The four end checks, with the counts printed.
async fn check_end_state(case: &str, pool: &sqlx::PgPool, mock: &MockJira, sent: usize, accepted: &[uuid::Uuid]) {
    let ids: Vec<uuid::Uuid> = accepted.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let finals = eventually(&format!("{case}: every accepted event to be final"), WAIT, || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::uuid[]) AS e(id) WHERE EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = e.id) \
             OR EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = e.id)",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await
        .unwrap();
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM intents WHERE state IN ('pending', 'running')")
            .fetch_one(pool)
            .await
            .unwrap();
        (done as usize == ids.len() && open == 0).then_some(done)
    })
    .await;
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let (duplicates, retries, dead) = (
        count("SELECT count(*) FROM audit_log WHERE action = 'duplicate'").await,
        count("SELECT count(*) FROM audit_log WHERE action = 'retry_scheduled'").await,
        count("SELECT count(*) FROM dead_letters").await,
    );
    println!(
        "fault case {case}: sent {sent}, accepted {} ({} distinct events), final {finals}, duplicates suppressed \
         {duplicates}, retries {retries}, dead letters {dead}, provider mutations {}",
        accepted.len(),
        ids.len(),
        mock.state.lock().unwrap().mutations
    );
    assert_eq!(mock.doubled(), Vec::<String>::new(), "{case}: a provider effect happened twice");
    let ledger: BTreeSet<String> = sqlx::query_scalar(
        "SELECT subject FROM access_grants WHERE application = $1 AND target = $2 AND state = 'active'",
    )
    .bind(APP)
    .bind(GROUP)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(ledger, mock.members(), "{case}: the ledger equals the provider");
    let report = accessgov::audit::verify::verify(pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!(report.first_broken, None, "{case}: audit verify");
}

// --- SIGKILL of a worker process ---------------------------------------------------------------

struct Worker {
    child: Child,
}

impl Worker {
    fn spawn(config_path: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_accessgov"))
            .args(["worker", "--config", config_path])
            .env_remove("ACCESSGOV_DATABASE_URL")
            .envs([
                ("JSM_WEBHOOK_SECRET", WEBHOOK_SECRET),
                ("JSM_AUTOMATION_TOKEN", "tok"),
                ("ACCESSGOV_ADMIN_TOKEN", "adm"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("worker starts");
        Self { child }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker's config file: the app's config as TOML text for the child.
fn worker_config(app: &TestApp, base: &str, dir: &tempfile::TempDir) -> String {
    let c = &app.config;
    let text = helpers::EXAMPLE_CONFIG
        .replace("postgres://postgres@127.0.0.1:5432/accessgov", &c.database.url)
        .replace("amqp://guest:guest@127.0.0.1:5672/%2f", &c.broker.url)
        .replace("prefix = \"accessgov\"", &format!("prefix = \"{}\"", c.broker.prefix))
        .replace(
            "retry_delays = [\"30s\", \"5m\", \"30m\", \"2h\"]",
            "retry_delays = [\"100ms\", \"200ms\", \"400ms\"]",
        )
        .replace("intent_lease = \"120s\"", "intent_lease = \"2s\"")
        .replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:0\"")
        .replace("max_event_age = \"7d\"", "max_event_age = \"3650d\"");
    let extra = format!(
        "\n[applications.\"{APP}\"]\nkind = \"jira\"\nbase_url = \"{base}\"\ntimeout = \"500ms\"\nowner = \"it@example.com\"\n\
         email_file = \"{}\"\napi_token_file = \"{}\"\n\n[[rules]]\napplication = \"{APP}\"\naccess_level = \"Write\"\n\
         groups = [\"{GROUP}\"]\napprovers = [\"{APPROVER}\"]\n",
        dir.path().join("email").display(),
        dir.path().join("token").display()
    );
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, text + &extra).unwrap();
    path.display().to_string()
}

/// An ingress (and migrations) in this process, the worker as a child process.
async fn ingress_with_child_workers(mock_base: &str, dir: &tempfile::TempDir) -> (TestApp, String) {
    let built = {
        let mut c = helpers::test_config("unused", "unused");
        use_mock(&mut c, mock_base, dir);
        accessgov::connectors::build(&c).expect("connectors build")
    };
    let app = helpers::spawn_app_role(|c| use_mock(c, mock_base, dir), built, accessgov::app::Role::Ingress).await;
    let path = worker_config(&app, mock_base, dir);
    (app, path)
}

async fn sigkill_case(case: &str, gate: Option<GateAt>, users: u32, kill_after_mutations: usize) {
    let mock = MockJira::default();
    let base = mock.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (app, path) = ingress_with_child_workers(&base, &dir).await;
    mock.state.lock().unwrap().gate = gate;
    mock.state.lock().unwrap().latency = Duration::from_millis(if gate.is_none() { 20 } else { 0 });
    let worker = Worker::spawn(&path);
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let at = now_ms();
    for u in 0..users {
        if let Some(id) = post(&http, app.addr, &webhook(u, &format!("user-{u}"), false, at + i64::from(u))).await {
            accepted.push(id);
        }
    }
    match gate {
        Some(_) => {
            tokio::time::timeout(WAIT, mock.reached.notified()).await.expect("the gated call is reached");
        }
        None => {
            eventually("mid-batch", WAIT, || async {
                (mock.state.lock().unwrap().mutations >= kill_after_mutations).then_some(())
            })
            .await;
        }
    }
    worker.kill();
    mock.state.lock().unwrap().latency = Duration::ZERO;
    let _restarted = Worker::spawn(&path);
    check_end_state(case, &app.pool, &mock, users as usize, &accepted).await;
    assert_eq!(mock.members().len(), users as usize, "{case}: every grant took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigkill_between_the_intent_commit_and_the_provider_call() {
    sigkill_case("sigkill-before-call", Some(GateAt::Before), 3, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigkill_between_the_provider_call_and_the_result_commit() {
    sigkill_case("sigkill-after-call", Some(GateAt::After), 3, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigkill_mid_batch() {
    sigkill_case("sigkill-mid-batch", None, 40, 10).await;
}

// --- provider storms and duplicated, reordered deliveries ---------------------------------------

async fn in_process(mock_base: &str, dir: &tempfile::TempDir) -> TestApp {
    let built = {
        let mut c = helpers::test_config("unused", "unused");
        use_mock(&mut c, mock_base, dir);
        accessgov::connectors::build(&c).expect("connectors build")
    };
    helpers::spawn_app_full(|c| use_mock(c, mock_base, dir), built).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_provider_storm_of_5xx_429_and_timeouts_that_took_effect() {
    let mock = MockJira::default();
    let base = mock.start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = in_process(&base, &dir).await;
    mock.state.lock().unwrap().storm = true;
    let http = reqwest::Client::new();
    let at = now_ms();
    let mut accepted = Vec::new();
    for u in 0..12u32 {
        accepted.extend(post(&http, app.addr, &webhook(u, &format!("user-{u}"), false, at + i64::from(u))).await);
    }
    for u in 0..6u32 {
        let body = webhook(u, &format!("user-{u}"), true, at + 10_000 + i64::from(u));
        accepted.extend(post(&http, app.addr, &body).await);
    }
    check_end_state("provider-storm", &app.pool, &mock, 18, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_duplicates_and_reorders_across_four_workers() {
    let mock = MockJira::default();
    let base = mock.start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = in_process(&base, &dir).await;
    let mut extra = Vec::new();
    for _ in 0..3 {
        let connectors = accessgov::connectors::build(&app.config).expect("connectors build");
        extra.push(app.extra_worker(connectors).await);
    }
    // Each user: a grant and the ticket's later revoke; a third of the users keep their access.
    let at = now_ms();
    let mut bodies = Vec::new();
    for u in 0..9u32 {
        let user = format!("user-{u}");
        bodies.push(webhook(u, &user, false, at + i64::from(u)));
        if u % 3 != 0 {
            bodies.push(webhook(u, &user, true, at + 20_000 + i64::from(u)));
        }
    }
    // Three deliveries each, in a scrambled (deterministic) order.
    let mut order: Vec<usize> = (0..bodies.len() * 3).map(|i| i % bodies.len()).collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    for i in &order {
        accepted.extend(post(&http, app.addr, &bodies[*i]).await);
    }
    check_end_state("duplicates-reorders", &app.pool, &mock, order.len(), &accepted).await;
    let expected: BTreeSet<String> = (0..9u32).filter(|u| u % 3 == 0).map(|u| format!("user-{u}")).collect();
    assert_eq!(mock.members(), expected, "the newest event of each ticket wins");
    drop(extra);
}

// --- broker and database cuts -------------------------------------------------------------------

use crate::helpers::chaos_proxy::{ChaosProxy, redirect_url, target_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_broker_cut_during_publish_and_consume() {
    let mock = MockJira::default();
    let base = mock.start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ChaosProxy::start(target_of(&helpers::amqp_url()).await).await;
    let amqp = redirect_url(&helpers::amqp_url(), proxy.addr());
    let built = {
        let mut c = helpers::test_config("unused", "unused");
        use_mock(&mut c, &base, &dir);
        accessgov::connectors::build(&c).expect("connectors build")
    };
    let app = helpers::spawn_app_full(
        |c| {
            use_mock(c, &base, &dir);
            c.broker.url = amqp.clone();
            c.broker.confirm_timeout = Duration::from_secs(2);
        },
        built,
    )
    .await;
    mock.state.lock().unwrap().latency = Duration::from_millis(30);
    let http = reqwest::Client::new();
    let at = now_ms();
    let mut accepted = Vec::new();
    let mut sent = 0;
    for u in 0..10u32 {
        sent += 1;
        accepted.extend(post(&http, app.addr, &webhook(u, &format!("user-{u}"), false, at + i64::from(u))).await);
    }
    // Cut while the worker consumes: webhooks are refused (503), none is lost.
    proxy.cut();
    let mut refused = 0;
    for u in 10..13u32 {
        sent += 1;
        let body = webhook(u, &format!("user-{u}"), false, at + i64::from(u));
        let status = http
            .post(format!("http://{}/webhooks/jsm", app.addr))
            .header("content-type", "application/json")
            .header("X-Hub-Signature", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 503, "the ingress answers 503 while the broker is away");
        refused += 1;
    }
    proxy.restore();
    // The sender retries the refused ones; they are accepted now.
    for u in 10..13u32 {
        let body = webhook(u, &format!("user-{u}"), false, at + i64::from(u));
        let id =
            eventually("a 202 after the broker is back", WAIT, || async { post(&http, app.addr, &body).await }).await;
        accepted.push(id);
    }
    check_end_state("broker-cut", &app.pool, &mock, sent + refused, &accepted).await;
    assert_eq!(mock.members().len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_database_cut_while_workers_process() {
    let mock = MockJira::default();
    let base = mock.start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ChaosProxy::start(target_of(&helpers::pg_server_url()).await).await;
    let built = {
        let mut c = helpers::test_config("unused", "unused");
        use_mock(&mut c, &base, &dir);
        accessgov::connectors::build(&c).expect("connectors build")
    };
    let app = helpers::spawn_app_full(
        |c| {
            use_mock(c, &base, &dir);
            // The services reach PostgreSQL through the proxy; migrations and the test's pool do not.
            c.database.migrate_url = Some(c.database.migrate_url().to_owned());
            c.database.url = redirect_url(&c.database.url, proxy.addr());
        },
        built,
    )
    .await;
    mock.state.lock().unwrap().latency = Duration::from_millis(40);
    let http = reqwest::Client::new();
    let at = now_ms();
    let mut accepted = Vec::new();
    for u in 0..20u32 {
        accepted.extend(post(&http, app.addr, &webhook(u, &format!("user-{u}"), false, at + i64::from(u))).await);
    }
    eventually("processing under way", WAIT, || async { (mock.state.lock().unwrap().mutations >= 3).then_some(()) })
        .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore();
    check_end_state("database-cut", &app.pool, &mock, 20, &accepted).await;
    assert_eq!(mock.members().len(), 20);
}
