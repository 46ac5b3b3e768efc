//! Operator tooling end to end on the real broker and database: a provider
//! outage fills `dead_letters`, `dlq replay` (through the binary) provisions
//! each request once and audits the operator, `--dry-run` touches nothing,
//! discard, `audit verify` on clean and tampered chains, a 100k-row export in
//! flat memory that re-verifies offline, `grants list`, and the admin API.

use crate::helpers::provider::FakeProvider;
use crate::helpers::{
    EXAMPLE_CONFIG, TestApp, eventually, fake_connectors, fixture, spawn_app, spawn_live_app, test_config,
};
use accessgov::audit::{GENESIS, canonical, chain_hash};
use accessgov::broker::Broker;
use accessgov::connectors::ConnectorError;
use accessgov::dead_letters::{self, DeadLetter, Filter, ReplayError, StateFilter};
use accessgov::operator::{Operator, Via};
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const GROUP: &str = "confluence-developers";
const ADMIN_TOKEN: &str = "operator-test-admin-token-0123456789";

/// A webhook body: `ticket` approved for `requester`.
fn grant(ticket: u32, requester: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(1_764_000_000_000_i64 + i64::from(ticket) * 1000);
    v["issue"]["id"] = json!(format!("{}", 30_000 + ticket));
    v["issue"]["key"] = json!(format!("OPS-{ticket}"));
    v["issue"]["fields"]["reporter"]["accountId"] = json!(requester);
    v["changelog"]["id"] = json!(format!("{}", ticket * 10 + 1));
    serde_json::to_vec(&v).unwrap()
}

async fn post(app: &TestApp, body: &[u8]) -> uuid::Uuid {
    let resp = app.post_signed(body, None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

/// Takes the provider down, posts one grant per subject and waits until each
/// is in `dead_letters`; returns (event id, dead letter id) per subject.
async fn outage(app: &TestApp, provider: &FakeProvider, subjects: &[&str]) -> Vec<(uuid::Uuid, i64)> {
    *provider.always.lock().unwrap() =
        Some(ConnectorError::Transient { reason: "503 provider down".into(), retry_after: None });
    let mut events = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        events.push(post(app, &grant(100 + i as u32, s)).await);
    }
    let mut out = Vec::new();
    for id in events {
        let dl: i64 = eventually("a dead letter", WAIT, || async {
            sqlx::query_scalar("SELECT id FROM dead_letters WHERE event_id = $1")
                .bind(id)
                .fetch_optional(&app.pool)
                .await
                .unwrap()
        })
        .await;
        out.push((id, dl));
    }
    out
}

async fn processed(app: &TestApp, id: uuid::Uuid) {
    eventually("the replayed event to be processed", WAIT, || async {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
}

/// The binary, with a config file for this test's database and broker prefix.
struct Cli {
    _dir: tempfile::TempDir,
    config: String,
}

impl Cli {
    fn new(app: &TestApp) -> Self {
        let live = app.config.applications.get("Confluence").is_some_and(|a| !a.dry_run);
        let mut text = EXAMPLE_CONFIG.to_owned();
        for (from, to) in [
            (
                r#"url = "postgres://postgres@127.0.0.1:5432/accessgov""#.to_owned(),
                format!("url = {:?}", app.config.database.url),
            ),
            (
                r#"url = "amqp://guest:guest@127.0.0.1:5672/%2f""#.to_owned(),
                format!("url = {:?}", app.config.broker.url),
            ),
            (r#"prefix = "accessgov""#.to_owned(), format!("prefix = {:?}", app.config.broker.prefix)),
            // The same ladder as the app: the topology (retry queue names) must match.
            (
                r#"retry_delays = ["30s", "5m", "30m", "2h"]"#.to_owned(),
                r#"retry_delays = ["50ms", "100ms"]"#.to_owned(),
            ),
        ] {
            assert!(text.contains(&from), "the example config has {from}");
            text = text.replacen(&from, &to, 1);
        }
        if live {
            let at = text.find("[applications.\"Confluence\"]").unwrap();
            let rest = text[at..].replacen("dry_run = true", "dry_run = false", 1);
            text.truncate(at);
            text.push_str(&rest);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accessgov.toml");
        std::fs::write(&path, text).unwrap();
        Self { config: path.display().to_string(), _dir: dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accessgov"));
        cmd.args(args).arg("--config").arg(&self.config).env("RUST_LOG", "warn");
        for k in [
            "ACCESSGOV_CONFIG",
            "ACCESSGOV_DATABASE_URL",
            "ACCESSGOV_BROKER_URL",
            "ACCESSGOV_BROKER_PREFIX",
            "ACCESSGOV_OPERATOR",
        ] {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Runs the binary off the runtime's threads (the app under test shares them).
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("binary runs")).await.unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout_json(o: &Output) -> Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A fingerprint of every table a replay could touch.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for (table, order) in [
        ("audit_log", "seq"),
        ("dead_letters", "id"),
        ("access_grants", "id"),
        ("grant_holds", "grant_id, ticket"),
        ("processed_events", "event_id"),
        ("ticket_progress", "ticket"),
    ] {
        let q = format!("SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY {order})), '') FROM {table} t");
        let fp: String = sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(&app.pool).await.unwrap();
        out.push(format!("{table}:{fp}"));
    }
    out
}

fn grant_calls(p: &FakeProvider, from: usize) -> Vec<(&'static str, String, String)> {
    let mut calls: Vec<_> = p.calls()[from..].iter().map(|c| (c.op, c.subject.clone(), c.target.clone())).collect();
    calls.sort();
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_replay_all_grants_each_request_once_paced_and_audited_with_the_operator() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let subjects: Vec<String> = (0..12).map(|i| format!("user-{i:02}")).collect();
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let dead = outage(&app, &provider, &refs).await;
    *provider.always.lock().unwrap() = None;
    let cli = Cli::new(&app);

    let listed = stdout_json(&cli.run(&["dlq", "list", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 12);
    assert_eq!(listed[0]["error_class"], "transient");
    assert_eq!(listed[0]["state"], "open");
    let table = cli.run(&["dlq", "list", "--error-class", "transient"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "TICKET", "APPLICATION", "ACTION", "SUBJECT", "ERROR", "CLASS", "ATTEMPTS", "DIED", "AT"]
    );
    assert_eq!(text.lines().count(), 13);

    let before = provider.calls().len();
    let started = Instant::now();
    let out = cli
        .run(&["dlq", "replay", "--all", "--operator", "alice", "--rate", "10", "--progress-every", "5", "--json"])
        .await;
    let elapsed = started.elapsed();
    let report = stdout_json(&out);
    assert_eq!(report["replayed"].as_array().unwrap().len(), 12);
    assert_eq!(report["operator"], "alice");
    // 12 publishes at 10/s: the last one goes at least 1.1 s after the first.
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(seconds >= 1.05, "replay took {seconds:.2}s, faster than --rate 10 allows");
    let progress = stderr(&out);
    assert!(progress.contains("replayed: 5/12") && progress.contains("replayed: 10/12"), "{progress}");
    eprintln!("replayed 12 dead letters at --rate 10 in {seconds:.2}s (process {:.2}s)", elapsed.as_secs_f64());

    for (event, _) in &dead {
        processed(&app, *event).await;
    }
    let expected: Vec<_> = subjects.iter().map(|s| ("grant", s.clone(), GROUP.to_owned())).collect();
    assert_eq!(grant_calls(&provider, before), expected, "one provider call per request");
    assert_eq!(provider.members().len(), 12);

    let marked: Vec<(Option<String>, bool)> =
        sqlx::query_as("SELECT replayed_by, replayed_at IS NOT NULL FROM dead_letters ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(marked, vec![(Some("alice".to_owned()), true); 12]);

    // The audit shows each replay, by whom, and the worker's rows for it. The
    // `replayed` row commits after the broker confirmed the publish (never under
    // the chain lock), so the chain may hold it before or after the worker's rows.
    let audited = stdout_json(&cli.run(&["audit", "list", "--action", "replayed", "--json"]).await);
    let audited = audited.as_array().unwrap();
    assert_eq!(audited.len(), 12);
    assert!(audited.iter().all(|r| r["actor"] == "alice" && r["outcome"] == "ok" && r["detail"]["via"] == "cli"));
    for (event, dl) in &dead {
        let actions: Vec<String> = app.audit_actions(*event).await.into_iter().map(|r| r.0).collect();
        let died = actions.iter().position(|a| a == "dead_lettered").expect("a dead_lettered row");
        let after: Vec<&str> = actions[died + 1..].iter().map(String::as_str).collect();
        let worker: Vec<&str> = after.iter().copied().filter(|a| *a != "replayed").collect();
        assert_eq!(worker, ["received", "decided", "granted"], "dead letter {dl}: {after:?}");
        assert_eq!(after.len(), 4, "one replayed row for dead letter {dl}: {after:?}");
    }
    let verify = cli.run(&["audit", "verify"]).await;
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replay_prints_the_decision_and_provider_calls_and_changes_nothing() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let dead = outage(&app, &provider, &["u1", "u2"]).await;
    *provider.always.lock().unwrap() = None;
    let cli = Cli::new(&app);
    let calls = provider.calls().len();
    let before = snapshot(&app).await;

    let previews = stdout_json(&cli.run(&["dlq", "replay", "--all", "--dry-run", "--json"]).await);
    let previews = previews.as_array().unwrap();
    assert_eq!(previews.len(), 2);
    for p in previews {
        assert_eq!(p["would"], "apply", "{p}");
        assert_eq!(p["decision"]["decision"], "grant");
        assert_eq!(p["provider_calls"], json!([{"op": "grant", "target": GROUP}]));
    }
    let text = cli.run(&["dlq", "replay", &dead[0].1.to_string(), "--dry-run"]).await;
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("would apply"), "{text}");
    assert!(text.contains("decision: grant Confluence \"Write\" (confluence-developers) to u1"), "{text}");
    assert!(text.contains("provider calls: grant confluence-developers"), "{text}");

    // Nothing was published (a published event would reach the provider), marked or audited.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(provider.calls().len(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replay_is_refused_and_a_forced_one_provisions_nothing_twice() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let dead = outage(&app, &provider, &["u1"]).await;
    let (event, dl) = dead[0];
    *provider.always.lock().unwrap() = None;
    let cli = Cli::new(&app);
    let before = provider.calls().len();

    let first = cli.run(&["dlq", "replay", &dl.to_string(), "--operator", "alice"]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains(&format!("replayed dead letter {dl}")));
    processed(&app, event).await;

    let again = cli.run(&["dlq", "replay", &dl.to_string(), "--operator", "bob"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already replayed"), "{}", stderr(&again));

    // Forced, through the library: published again, and the worker deduplicates.
    let broker = Broker::new(&app.config.broker.url, app.names.clone());
    let bob = Operator::new("bob", Via::Cli).unwrap();
    let forced = dead_letters::replay(&app.pool, &broker, dl, &bob, true, Duration::from_secs(5)).await.unwrap();
    assert!(forced.forced);
    eventually("the duplicate to be recorded", WAIT, || async {
        app.audit_actions(event).await.iter().any(|r| r.0 == "duplicate").then_some(())
    })
    .await;
    assert_eq!(grant_calls(&provider, before), vec![("grant", "u1".to_owned(), GROUP.to_owned())]);
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_log WHERE action = 'replayed' ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(actors, ["alice", "bob"]);
    let missing = dead_letters::replay(&app.pool, &broker, 999_999, &bob, false, Duration::from_secs(5)).await;
    assert!(matches!(missing, Err(ReplayError::NotFound(999_999))));
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_publishes_before_it_takes_the_audit_chain_lock() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let (event, dl) = outage(&app, &provider, &["u1"]).await[0];
    *provider.always.lock().unwrap() = None;

    use sqlx::Connection;
    // Someone holds the chain lock (a long audit append, say).
    let mut holder = sqlx::PgConnection::connect(&app.config.database.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(accessgov::audit::CHAIN_LOCK).execute(&mut holder).await.unwrap();

    let broker = Broker::new(&app.config.broker.url, app.names.clone());
    let alice = Operator::new("alice", Via::Cli).unwrap();
    let replay = {
        let (pool, alice) = (app.pool.clone(), alice.clone());
        tokio::spawn(async move { dead_letters::replay(&pool, &broker, dl, &alice, false, WAIT).await })
    };
    // The replay published already: the worker took the message and waits for
    // the chain lock too, beside the replay's own `replayed` row. (Were the lock
    // taken before the publish, the replay alone would wait and the worker
    // would never see the message.)
    let waiting_on_chain = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                            WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database()";
    eventually("the replay and the worker to both wait for the chain lock", WAIT, || async {
        let n: i64 = sqlx::query_scalar(waiting_on_chain).fetch_one(&app.pool).await.unwrap();
        (n >= 2).then_some(())
    })
    .await;
    assert!(!replay.is_finished(), "the replay's row waits for the chain");

    sqlx::query("SELECT pg_advisory_unlock($1)").bind(accessgov::audit::CHAIN_LOCK).execute(&mut holder).await.unwrap();
    let replayed = replay.await.unwrap().unwrap();
    assert_eq!(replayed.dead_letter_id, dl);
    processed(&app, event).await;
    let marked: Option<String> = sqlx::query_scalar("SELECT replayed_by FROM dead_letters WHERE id = $1")
        .bind(dl)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(marked.as_deref(), Some("alice"));
    assert_eq!(
        deaths_and_replays(&app, event).await,
        [("dead_lettered".into(), Some(dl)), ("replayed".into(), Some(dl))]
    );
}

/// The open dead letter of an event, if any.
async fn open_dead_letter(app: &TestApp, event: uuid::Uuid) -> Option<DeadLetter> {
    let open = Filter { state: StateFilter::Open, ..Default::default() };
    dead_letters::list(&app.pool, &open).await.unwrap().into_iter().find(|d| d.event_id == Some(event))
}

/// `(action, dead_letter_id)` of the event's `dead_lettered` and `replayed` audit rows, in order.
async fn deaths_and_replays(app: &TestApp, event: uuid::Uuid) -> Vec<(String, Option<i64>)> {
    sqlx::query_as(
        "SELECT action, (detail->>'dead_letter_id')::bigint FROM audit_log \
         WHERE event_id = $1 AND action IN ('dead_lettered', 'replayed') ORDER BY seq",
    )
    .bind(event)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_that_dies_again_is_reopened_with_the_new_error_and_both_deaths_audited() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let (event, dl) = outage(&app, &provider, &["u1"]).await[0];
    let first = dead_letters::get(&app.pool, dl).await.unwrap().unwrap();
    assert_eq!((first.error_class.as_str(), first.attempts), ("transient", 3));

    // The provider now refuses for good: the replay dies at its first attempt.
    *provider.always.lock().unwrap() = Some(ConnectorError::Permanent { reason: "403 group is read-only".into() });
    let broker = Broker::new(&app.config.broker.url, app.names.clone());
    let alice = Operator::new("alice", Via::Cli).unwrap();
    dead_letters::replay(&app.pool, &broker, dl, &alice, false, Duration::from_secs(5)).await.unwrap();
    let again = eventually("an open dead letter after the second death", WAIT, || open_dead_letter(&app, event)).await;
    assert_eq!(again.id, dl, "the replayed dead letter reopens (not a second inbox entry)");
    assert_eq!(again.error_class, "permanent");
    assert!(again.last_error.contains("403 group is read-only"), "{}", again.last_error);
    assert_eq!((again.attempts, again.deaths), (first.attempts + 1, 2), "attempts and deaths add up");
    let history = again.attempt_history.as_array().unwrap();
    assert_eq!(history.len(), 4, "the first death's history is kept: {history:?}");
    assert_eq!(
        (history[0]["error_class"].as_str(), history[3]["error_class"].as_str()),
        (Some("transient"), Some("permanent"))
    );
    assert_eq!((again.replayed_at, again.replayed_by), (None, None));
    assert_eq!(
        deaths_and_replays(&app, event).await,
        [("dead_lettered".into(), Some(dl)), ("replayed".into(), Some(dl)), ("dead_lettered".into(), Some(dl))]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE event_id = $1")
        .bind(event)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // Open again, it replays without --force once the cause is fixed.
    *provider.always.lock().unwrap() = None;
    let before = provider.calls().len();
    dead_letters::replay(&app.pool, &broker, dl, &alice, false, Duration::from_secs(5)).await.unwrap();
    processed(&app, event).await;
    assert_eq!(grant_calls(&provider, before), vec![("grant", "u1".to_owned(), GROUP.to_owned())]);
    broker.close().await;
}

/// Takes the next message off `queue` (unacked), as a consumer outside accessgov.
async fn take(ch: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    eventually(&format!("a message on {queue}"), WAIT, || async {
        ch.basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: false }).await.unwrap()
    })
    .await
}

/// Rejects the next request without requeue: the broker dead-letters it (`rejected`).
async fn broker_kills_next_request(ch: &lapin::Channel, app: &TestApp) {
    let m = take(ch, &app.names.requests).await;
    m.nack(lapin::options::BasicNackOptions { requeue: false, ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_broker_dead_letters_again_is_recorded_once_per_death_even_if_redelivered() {
    let (mut app, provider) = spawn_live_app(|_| {}).await;
    // No worker consumes while the test plays the broker killing requests (the
    // quorum queue dead-letters a rejected message; so it does at the delivery limit).
    app.stop().await;
    let body: Value = serde_json::from_slice(&grant(7, "u1")).unwrap();
    let normalized =
        accessgov::ingress::normalize::normalize(&body, &Default::default(), &app.config.jsm, chrono::Utc::now());
    let accessgov::ingress::normalize::Normalized::Accepted(event) = normalized else { panic!("{normalized:?}") };
    let broker = Broker::new(&app.config.broker.url, app.names.clone());
    broker.publish_event(&event, 0, Duration::from_secs(5)).await.unwrap();
    let conn = lapin::Connection::connect(&app.config.broker.url, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();

    broker_kills_next_request(&ch, &app).await;
    let (worker, stop) = app.extra_worker(fake_connectors(&provider)).await;
    let first = eventually("the first death", WAIT, || open_dead_letter(&app, event.event_id)).await;
    assert_eq!(first.error_class, "rejected");
    stop.cancel();
    worker.wait().await.unwrap();

    let alice = Operator::new("alice", Via::Cli).unwrap();
    dead_letters::replay(&app.pool, &broker, first.id, &alice, false, Duration::from_secs(5)).await.unwrap();
    broker_kills_next_request(&ch, &app).await;
    // The drain gets this death twice, as when it stopped before its ack: the
    // same dead message (body and headers) is in the dead queue two times.
    let dead = take(&ch, &app.names.dead).await;
    for _ in 0..2 {
        ch.basic_publish(
            "".into(),
            app.names.dead.as_str().into(),
            Default::default(),
            &dead.data,
            dead.properties.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    dead.ack(lapin::options::BasicAckOptions::default()).await.unwrap();

    let (worker, stop) = app.extra_worker(fake_connectors(&provider)).await;
    let again =
        eventually("an open dead letter after the second death", WAIT, || open_dead_letter(&app, event.event_id)).await;
    assert_eq!(again.id, first.id, "the replayed dead letter reopens");
    // Both copies drained: the dead queue empties, then the worker finishes in-flight work.
    let dead_queue_len = || async {
        ch.queue_declare(
            app.names.dead.as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count()
    };
    eventually("the dead queue to drain", WAIT, || async { (dead_queue_len().await == 0).then_some(()) }).await;
    stop.cancel();
    worker.wait().await.unwrap();
    assert_eq!(dead_queue_len().await, 0);

    assert_eq!(
        deaths_and_replays(&app, event.event_id).await,
        [
            ("dead_lettered".into(), Some(first.id)),
            ("replayed".into(), Some(first.id)),
            ("dead_lettered".into(), Some(first.id))
        ],
        "each death audited once; the redelivered copy is not a third"
    );
    let again = dead_letters::get(&app.pool, first.id).await.unwrap().unwrap();
    assert_eq!((again.deaths, again.attempts, again.state()), (2, 2, dead_letters::State::Open));
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter_deaths WHERE dead_letter_id = $1")
        .bind(first.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 2);
    assert!(provider.calls().is_empty(), "the request never reached the provider");
    let _ = conn.close(200, "done".into()).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_dead_letter_cannot_be_replayed_and_can_be_discarded() {
    let (app, _provider) = spawn_live_app(|_| {}).await;
    let conn = lapin::Connection::connect(&app.config.broker.url, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        app.names.events.as_str().into(),
        "access.grant".into(),
        Default::default(),
        b"{\"not\": \"an event\"}",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let dl: i64 = eventually("the poison dead letter", WAIT, || async {
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE error_class = 'poison'")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    let cli = Cli::new(&app);

    let out = cli.run(&["dlq", "replay", &dl.to_string(), "--operator", "alice"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot be replayed") && stderr(&out).contains("discard"), "{}", stderr(&out));
    let show = cli.run(&["dlq", "show", &dl.to_string()]).await;
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("error class") && text.contains("poison") && text.contains("\"raw\""), "{text}");

    let id = dl.to_string();
    let discard = cli.run(&["dlq", "discard", &id, "--reason", "garbage from a test", "--operator", "carol"]).await;
    assert!(discard.status.success(), "{}", stderr(&discard));
    let again = cli.run(&["dlq", "discard", &dl.to_string(), "--reason", "twice", "--operator", "carol"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already discarded"), "{}", stderr(&again));

    let open = stdout_json(&cli.run(&["dlq", "list", "--json"]).await);
    assert_eq!(open, json!([]));
    let closed = stdout_json(&cli.run(&["dlq", "list", "--state", "discarded", "--json"]).await);
    assert_eq!(closed[0]["discarded_by"], "carol");
    assert_eq!(closed[0]["discard_reason"], "garbage from a test");
    let (actor, reason): (String, String) = sqlx::query_as(
        "SELECT actor, detail->>'reason' FROM audit_log WHERE action = 'discarded' AND (detail->>'dead_letter_id')::bigint = $1",
    )
    .bind(dl)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((actor.as_str(), reason.as_str()), ("carol", "garbage from a test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_on_a_clean_chain_and_names_the_tampered_row() {
    let app = spawn_app().await;
    let id = post(&app, &grant(1, "u1")).await;
    eventually("the dry-run rows", WAIT, || async { (app.audit_actions(id).await.len() >= 3).then_some(()) }).await;
    let cli = Cli::new(&app);
    let clean = cli.run(&["audit", "verify"]).await;
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(stderr(&clean).contains("chain intact"));

    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'failed' WHERE seq = (SELECT min(seq) + 1 FROM audit_log)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT min(seq) + 1 FROM audit_log").fetch_one(&app.pool).await.unwrap();
    let broken = cli.run(&["audit", "verify"]).await;
    assert_eq!(broken.status.code(), Some(1));
    assert!(stderr(&broken).contains(&format!("BROKEN at seq {seq}")), "{}", stderr(&broken));
    let report: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(report["first_broken"]["seq"], seq);
}

/// A minimal RFC 4180 reader that keeps NULL (empty, unquoted) apart from "".
fn parse_csv_line(line: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        s.push('"');
                    } else {
                        break;
                    }
                } else {
                    s.push(c);
                }
            }
            out.push(Some(s));
        } else {
            let s: String = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            out.push((!s.is_empty()).then_some(s));
        }
        match chars.next() {
            Some(',') => continue,
            _ => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_carries_the_chain_and_re_verifies_offline_in_both_formats() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let dead = outage(&app, &provider, &["u1", "u2"]).await;
    *provider.always.lock().unwrap() = None;
    let cli = Cli::new(&app);
    let replay = cli.run(&["dlq", "replay", "--all", "--operator", "o'brien, \"ops\""]).await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    for (event, _) in &dead {
        processed(&app, *event).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    let csv = dir.path().join("audit.csv");
    for (format, path) in [("jsonl", &jsonl), ("csv", &csv)] {
        let out = cli.run(&["audit", "export", "--format", format, "-o", path.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();

    // JSON Lines: rebuild each row's canonical form from the line alone and chain it.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let mut prev = GENESIS.to_owned();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let keys = [
            "seq",
            "at",
            "event_id",
            "ticket",
            "actor",
            "action",
            "application",
            "subject",
            "target",
            "outcome",
            "detail",
        ];
        let canonical = Value::Array(keys.iter().map(|k| v[*k].clone()).collect()).to_string();
        assert_eq!(v["prev_hash"], prev.as_str(), "line {n} links to the previous one");
        assert_eq!(chain_hash(&prev, &canonical), v["hash"].as_str().unwrap(), "line {n}: {line}");
        prev = v["hash"].as_str().unwrap().to_owned();
        n += 1;
    }
    assert_eq!(n, rows, "the export has every row");
    assert!(text.contains("o'brien, \\\"ops\\\""));

    // CSV: the same check through a CSV reader.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(lines.next().unwrap(), accessgov::audit::query::COLUMNS.join(","));
    let mut prev = GENESIS.to_owned();
    for line in lines {
        let f = parse_csv_line(line);
        assert_eq!(f.len(), 13, "{line}");
        let text = |i: usize| f[i].clone().map_or(Value::Null, Value::String);
        let seq: i64 = f[0].as_deref().unwrap().parse().unwrap();
        let detail: Value = serde_json::from_str(f[10].as_deref().unwrap()).unwrap();
        let canonical =
            json!([seq, text(1), text(2), text(3), text(4), text(5), text(6), text(7), text(8), text(9), detail]);
        assert_eq!(f[11].as_deref(), Some(prev.as_str()));
        assert_eq!(chain_hash(&prev, &canonical.to_string()), f[12].clone().unwrap(), "{line}");
        prev = f[12].clone().unwrap();
    }
}

/// Peak resident set size (KiB) of a run of the binary: GNU time's `%M` when
/// /usr/bin/time exists, else the last VmHWM read from /proc while it runs.
fn peak_rss_kib(mut cmd: Command) -> (Output, u64) {
    if std::path::Path::new("/usr/bin/time").exists() {
        let mut timed = Command::new("/usr/bin/time");
        timed.arg("-f").arg("peak_rss_kib=%M").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => timed.env(k, v),
                None => timed.env_remove(k),
            };
        }
        let out = timed.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        let kib = text.lines().rev().find_map(|l| l.strip_prefix("peak_rss_kib=")).expect("time's output");
        let kib = kib.trim().parse().unwrap();
        return (out, kib);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if let Ok(s) = std::fs::read_to_string(&status)
            && let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))
        {
            peak = peak.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (waiter.join().unwrap(), peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_100k_rows_streams_in_flat_memory() {
    const ROWS: i64 = 100_000;
    const BATCH: i64 = 5_000;
    let app = spawn_app().await;
    let started = Instant::now();
    // Valid chained rows, inserted directly in batches of 5,000 (each row with its own `at`).
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let mut prev = GENESIS.to_owned();
    let note = "x".repeat(300);
    for start in (1..=ROWS).step_by(BATCH as usize) {
        let (mut seqs, mut ats, mut tickets, mut subjects, mut details, mut prevs, mut hashes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for seq in start..start + BATCH {
            let at = base + chrono::Duration::microseconds(seq * 1_000);
            let mut e = accessgov::audit::AuditEntry::new("received", "ok");
            e.ticket = Some(format!("BULK-{seq}"));
            e.application = Some("Confluence".into());
            e.subject = Some(format!("user-{}", seq % 100));
            e.detail = json!({"i": seq, "note": note, "tag": "bulk"});
            let hash = chain_hash(&prev, &canonical(seq, at, &e));
            seqs.push(seq);
            ats.push(at);
            tickets.push(e.ticket.unwrap());
            subjects.push(e.subject.unwrap());
            details.push(e.detail.to_string());
            prevs.push(std::mem::replace(&mut prev, hash.clone()));
            hashes.push(hash);
        }
        sqlx::query(
            "INSERT INTO audit_log (seq, at, ticket, action, application, subject, outcome, detail, prev_hash, hash) \
             SELECT s, a, t, 'received', 'Confluence', u, 'ok', d::jsonb, p, h \
             FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
               AS x(s, a, t, u, d, p, h)",
        )
        .bind(&seqs)
        .bind(&ats)
        .bind(&tickets)
        .bind(&subjects)
        .bind(&details)
        .bind(&prevs)
        .bind(&hashes)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let inserted = started.elapsed();
    let cli = Cli::new(&app);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let file_arg = file.to_str().unwrap().to_owned();

    let (baseline, full) = tokio::task::spawn_blocking({
        let empty =
            cli.command(&["audit", "export", "--format", "jsonl", "--since-seq", "999999999", "-o", "/dev/null"]);
        let full = cli.command(&["audit", "export", "--format", "jsonl", "-o", &file_arg]);
        move || (peak_rss_kib(empty), peak_rss_kib(full))
    })
    .await
    .unwrap();
    assert!(baseline.0.status.success(), "{}", stderr(&baseline.0));
    assert!(full.0.status.success(), "{}", stderr(&full.0));
    let growth_kib = full.1.saturating_sub(baseline.1);
    eprintln!(
        "inserted {ROWS} rows in {:.1}s; export peak RSS {} KiB vs {} KiB for an empty export: growth {} KiB; total {:.1}s",
        inserted.as_secs_f64(),
        full.1,
        baseline.1,
        growth_kib,
        started.elapsed().as_secs_f64()
    );
    assert!(growth_kib < 64 * 1024, "exporting {ROWS} rows grew the peak RSS by {growth_kib} KiB");

    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count() as i64, ROWS);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let head: String =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_one(&app.pool).await.unwrap();
    assert_eq!(last["hash"], head.as_str());
    assert_eq!(last["seq"], ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_list_shows_the_ledger_filtered_by_user_and_application() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    for (ticket, subject) in [(1, "u1"), (2, "u2"), (3, "u1")] {
        let id = post(&app, &grant(ticket, subject)).await;
        processed(&app, id).await;
    }
    assert_eq!(provider.calls().len(), 2, "u1's second ticket adds a hold, no provider call");
    let cli = Cli::new(&app);
    let all = stdout_json(&cli.run(&["grants", "list", "--json"]).await);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let u1 = stdout_json(&cli.run(&["grants", "list", "--user", "u1", "--application", "Confluence", "--json"]).await);
    assert_eq!(u1.as_array().unwrap().len(), 1);
    assert_eq!(u1[0]["target"], GROUP);
    assert_eq!(u1[0]["state"], "active");
    let tickets: Vec<&str> = u1[0]["holds"].as_array().unwrap().iter().map(|h| h["ticket"].as_str().unwrap()).collect();
    assert_eq!(tickets, ["OPS-1", "OPS-3"]);
    let none = stdout_json(&cli.run(&["grants", "list", "--subject", "u1", "--application", "Okta", "--json"]).await);
    assert_eq!(none, json!([]));
    // The example's Confluence rule has max_duration = "90d".
    let soon = stdout_json(&cli.run(&["grants", "list", "--expiring-within", "7d", "--json"]).await);
    assert_eq!(soon, json!([]));
    let within_100d = stdout_json(&cli.run(&["grants", "list", "--expiring-within", "100d", "--json"]).await);
    assert_eq!(within_100d.as_array().unwrap().len(), 2);
    assert!(within_100d[0]["until"].is_string());
    let table = cli.run(&["grants", "list", "--subject", "u1"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..4], ["APPLICATION", "SUBJECT", "TARGET", "STATE"], "{text}");
    assert_eq!(text.lines().count(), 3, "a line per hold: {text}");

    let rows = stdout_json(&cli.run(&["audit", "list", "--user", "u2", "--json"]).await);
    assert!(rows.as_array().unwrap().iter().all(|r| r["subject"] == "u2"));
    assert!(rows.as_array().unwrap().iter().any(|r| r["action"] == "granted"));
    let ticket = stdout_json(&cli.run(&["audit", "list", "--ticket", "OPS-3", "--json"]).await);
    let actions: Vec<&str> = ticket.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["received", "decided", "hold_added"]);
    let future = stdout_json(&cli.run(&["audit", "list", "--since", "2999-01-01", "--json"]).await);
    assert_eq!(future, json!([]));
}

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    operator: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, format!("http://{}/admin{path}", app.ops_addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(o) = operator {
        req = req.header("X-Accessgov-Operator", o);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_names_the_operator_and_audits_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let (app, provider) = spawn_live_app(|c| c.ops.admin_token_file = Some(token_file.display().to_string())).await;
    let dead = outage(&app, &provider, &["u1", "u2"]).await;
    *provider.always.lock().unwrap() = None;
    let get = reqwest::Method::GET;
    let post_m = reqwest::Method::POST;

    for token in [None, Some("wrong-token"), Some("")] {
        let (status, body) = admin(&app, get.clone(), "/dead-letters", token, None, None).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "token {token:?}");
    }
    let (status, _) =
        admin(&app, post_m.clone(), &format!("/dead-letters/{}/replay", dead[0].1), None, Some("eve"), None).await;
    assert_eq!(status, 401);
    let audited_401: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'admin_call'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited_401, 0, "unauthenticated calls are never admin calls (they are admin_auth_failed rows)");

    let (status, list) =
        admin(&app, get.clone(), "/dead-letters?error_class=transient", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 2);
    let (status, one) =
        admin(&app, get.clone(), &format!("/dead-letters/{}", dead[0].1), Some(ADMIN_TOKEN), None, None).await;
    assert_eq!((status, one["state"].as_str(), one["attempts"].as_i64()), (200, Some("open"), Some(3)));
    let (status, _) = admin(&app, get.clone(), "/dead-letters/999999", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!(status, 404);

    // Writes need the operator.
    let replay_path = format!("/dead-letters/{}/replay", dead[0].1);
    let (status, body) = admin(&app, post_m.clone(), &replay_path, Some(ADMIN_TOKEN), None, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("operator_required")));
    let (status, preview) =
        admin(&app, post_m.clone(), &format!("{replay_path}?dry_run=true"), Some(ADMIN_TOKEN), Some("dana"), None)
            .await;
    assert_eq!((status, preview["preview"]["would"].as_str()), (200, Some("apply")));
    let before = provider.calls().len();
    let (status, body) = admin(&app, post_m.clone(), &replay_path, Some(ADMIN_TOKEN), Some("dana"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"]["dead_letter_id"], dead[0].1);
    processed(&app, dead[0].0).await;
    assert_eq!(grant_calls(&provider, before), vec![("grant", "u1".to_owned(), GROUP.to_owned())]);
    let (status, body) = admin(&app, post_m.clone(), &replay_path, Some(ADMIN_TOKEN), Some("dana"), None).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("closed")));

    let discard_path = format!("/dead-letters/{}/discard", dead[1].1);
    let (status, _) =
        admin(&app, post_m.clone(), &discard_path, Some(ADMIN_TOKEN), Some("dana"), Some(json!({}))).await;
    assert_eq!(status, 400);
    let (status, body) = admin(
        &app,
        post_m.clone(),
        &discard_path,
        Some(ADMIN_TOKEN),
        Some("dana"),
        Some(json!({"reason": "user left"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["discarded"]["state"], "discarded");

    let (status, grants) = admin(&app, get.clone(), "/grants?user=u1", Some(ADMIN_TOKEN), Some("dana"), None).await;
    assert_eq!((status, grants["count"].as_i64()), (200, Some(1)));
    let (status, verify) = admin(&app, get.clone(), "/audit/verify", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!((status, verify["ok"].as_bool()), (200, Some(true)), "{verify}");
    let (status, _) = admin(&app, get.clone(), "/audit?since=not-a-time", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!(status, 400);

    let (status, audit) =
        admin(&app, get.clone(), "/audit?action=replayed", Some(ADMIN_TOKEN), Some("dana"), None).await;
    assert_eq!(status, 200);
    assert_eq!(audit["rows"][0]["actor"], "dana");
    assert_eq!(audit["rows"][0]["detail"]["via"], "admin_api");
    let (_, discarded) = admin(&app, get.clone(), "/audit?action=discarded", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!(discarded["rows"][0]["actor"], "dana");

    // Every authenticated call is in the trail, with the caller (or the token, for unnamed reads).
    let calls: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT actor, detail->>'path', (detail->>'status')::int FROM audit_log WHERE action = 'admin_call' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(calls.len(), 14, "{calls:?}");
    assert_eq!(calls[0], ("admin-token".to_owned(), "/admin/dead-letters".to_owned(), 200));
    assert!(calls.contains(&("dana".to_owned(), format!("/admin{replay_path}"), 200)), "{calls:?}");
    assert!(calls.contains(&("admin-token".to_owned(), format!("/admin{replay_path}"), 400)), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_admin_calls_are_audited_at_a_bounded_rate_without_the_presented_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let app = crate::helpers::spawn_app_with(|c| c.ops.admin_token_file = Some(token_file.display().to_string())).await;
    const GUESS: &str = "guessed-admin-token-that-must-never-be-stored";

    // A flood: 25 wrong tokens and 25 calls without any, well within one audit interval.
    for i in 0..25 {
        let (status, _) =
            admin(&app, reqwest::Method::GET, &format!("/dead-letters?n={i}"), Some(GUESS), None, None).await;
        assert_eq!(status, 401);
        let (status, _) = admin(&app, reqwest::Method::POST, "/dead-letters/1/replay", None, Some("eve"), None).await;
        assert_eq!(status, 401);
    }

    // One row per reason, each naming the call, the reason and the client, never the token.
    let rows: Vec<(String, Option<String>, Value, String)> = sqlx::query_as(
        "SELECT outcome, actor, detail, row_to_json(a)::text FROM audit_log a \
         WHERE action = 'admin_auth_failed' ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "one row per reason per interval, not one per attempt: {rows:?}");
    let mut reasons: Vec<&str> = rows.iter().map(|r| r.2["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(reasons, ["missing_token", "wrong_token"]);
    for (outcome, actor, detail, text) in &rows {
        assert_eq!((outcome.as_str(), actor.as_deref()), ("refused", None));
        assert_eq!(detail["client"], "127.0.0.1");
        assert_eq!(detail["suppressed"], 0);
        assert!(!text.contains(GUESS) && !text.contains("guessed"), "the presented token is never stored: {text}");
    }
    let wrong = rows.iter().find(|r| r.2["reason"] == "wrong_token").unwrap();
    assert_eq!((wrong.2["method"].as_str(), wrong.2["path"].as_str()), (Some("GET"), Some("/admin/dead-letters")));

    // Every attempt is counted in the metric (one recorder per test process: other tests add to it).
    let metrics = app.http.get(format!("http://{}/metrics", app.ops_addr)).send().await.unwrap().text().await.unwrap();
    for reason in ["wrong_token", "missing_token"] {
        let series = format!("accessgov_admin_auth_failures_total{{reason=\"{reason}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"));
        assert!(count >= 25.0, "{series}{count}");
    }

    // The right token still works (and is audited as an admin call, as before).
    let (status, list) = admin(&app, reqwest::Method::GET, "/dead-letters", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!((status, list["count"].as_i64()), (200, Some(0)));
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'admin_call'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(calls, 1);
    let (status, verify) = admin(&app, reqwest::Method::GET, "/audit/verify", Some(ADMIN_TOKEN), None, None).await;
    assert_eq!((status, verify["ok"].as_bool()), (200, Some(true)), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_is_off_and_a_configured_but_missing_token_stops_the_start() {
    let app = spawn_app().await;
    let (status, body) = admin(&app, reqwest::Method::GET, "/dead-letters", Some("anything"), None, None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("admin_api_disabled")));
    let metrics = app.http.get(format!("http://{}/metrics", app.ops_addr)).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    let mut config = test_config("accessgov_never_created", "agtest_never_declared");
    config.ops.admin_token_env = Some("ACCESSGOV_TEST_ADMIN_TOKEN_THAT_IS_NOT_SET".into());
    let err = accessgov::app::App::start(
        Arc::new(config),
        accessgov::app::Role::Worker,
        None,
        Default::default(),
        false,
        Default::default(),
    )
    .await
    .err()
    .expect("refuses to start");
    let msg = format!("{err:#}");
    assert!(msg.contains("ACCESSGOV_TEST_ADMIN_TOKEN_THAT_IS_NOT_SET") && msg.contains("admin"), "{msg}");
}

#[test]
fn the_operator_commands_have_help() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_accessgov")).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&[]);
    for sub in ["dlq", "audit", "grants", "admin_token_env"] {
        assert!(top.contains(sub), "top-level help mentions {sub}");
    }
    for args in [
        &["dlq", "list"][..],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["dlq", "discard"],
        &["audit", "list"],
        &["audit", "verify"],
        &["audit", "export"],
        &["grants", "list"],
    ] {
        assert!(help(args).contains("--config"), "{args:?} documents --config");
    }
    assert!(help(&["dlq", "replay"]).contains("--dry-run"));
    assert!(help(&["audit", "list"]).contains("--user"));
    assert!(help(&["grants", "list"]).contains("--expiring-within"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_plan_prints_what_onboarding_into_a_role_would_change_and_changes_nothing() {
    let app = spawn_app().await;
    let cli = Cli::new(&app);
    // A joiner: the whole bundle (the example's Engineering role: Okta User).
    let plan = stdout_json(&cli.run(&["roles", "plan", "--user", "new-hire", "--role", "engineering", "--json"]).await);
    assert_eq!(plan["diff"]["grant"], json!([["Okta", "User"]]));
    assert!(plan["previous"].is_null());
    // A mover from a role that gave Okta User and Confluence Write through ACC-9.
    sqlx::query(
        "INSERT INTO role_assignments (subject, role, ticket, event_id, items) VALUES ('mover', 'Sales', 'ACC-9', $1, $2)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(json!([["Okta", "User", "ACC-9"], ["Confluence", "Write", "ACC-9"]]))
    .execute(&app.pool)
    .await
    .unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    let plan = stdout_json(&cli.run(&["roles", "plan", "--user", "mover", "--role", "Engineering", "--json"]).await);
    assert_eq!(plan["previous"], json!({"role": "Sales", "ticket": "ACC-9"}));
    assert_eq!(plan["diff"]["keep"], json!([["Okta", "User", "ACC-9"]]));
    assert_eq!(plan["diff"]["revoke"], json!([["Confluence", "Write", "ACC-9"]]));
    assert_eq!(plan["diff"]["grant"], json!([]));
    let table = cli.run(&["roles", "plan", "--user", "mover", "--role", "Engineering"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("revoke") && text.contains("ACC-9"), "{text}");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert_eq!(before, after, "a plan touches nothing");
    let unknown = cli.run(&["roles", "plan", "--user", "mover", "--role", "Astronauts"]).await;
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("configured: Engineering"), "{}", stderr(&unknown));
}
