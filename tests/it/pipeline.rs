//! The worker pipeline's guarantees: intents committed before provider calls,
//! no transaction or lock held during a call, partial success recorded, a revoke
//! that catches its grant in the retry ladder leaves no access behind, and a
//! claim whose worker died is run again.

use crate::helpers::{LIVE_APP, TestApp, eventually, fixture, spawn_live_app};
use accessgov::connectors::ConnectorError;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const T0: i64 = 1_764_090_000_000;

fn body(ticket: u32, changelog: u32, ts: i64, status: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(T0 + ts * 1000);
    v["issue"]["id"] = json!(format!("{}", 40_000 + ticket));
    v["issue"]["key"] = json!(format!("ACC-{ticket}"));
    v["changelog"]["id"] = json!(format!("{changelog}"));
    let items = v["changelog"]["items"].as_array_mut().unwrap();
    items.iter_mut().find(|i| i["fieldId"] == "status").unwrap()["toString"] = json!(status);
    serde_json::to_vec(&v).unwrap()
}

/// `body` with the requester (the subject of the access) replaced by `user`.
fn for_user(body: Vec<u8>, user: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["issue"]["fields"]["reporter"]["accountId"] = json!(user);
    serde_json::to_vec(&v).unwrap()
}

/// In how many audit appends the events' `action` rows were written (rows of one append share `at`).
async fn appends(app: &TestApp, action: &str, ids: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT at) FROM audit_log WHERE action = $1 AND event_id = ANY($2)")
        .bind(action)
        .bind(ids)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn post(app: &TestApp, body: &[u8]) -> uuid::Uuid {
    let resp = app.post_signed(body, None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

async fn processed(app: &TestApp, id: uuid::Uuid) -> Vec<String> {
    eventually("the event to be processed", WAIT, || async {
        let done: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let rows: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        done.then_some(rows)
    })
    .await
}

async fn ledger(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("SELECT target, state FROM access_grants ORDER BY target").fetch_all(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_arriving_while_its_grant_sits_in_the_retry_ladder_leaves_no_access_behind() {
    let (app, provider) = spawn_live_app(|c| {
        // A long ladder: the grant waits in it while the revoke arrives.
        c.broker.retry_delays = vec![Duration::from_secs(2), Duration::from_secs(2)];
    })
    .await;
    // The provider is down for the grant's first delivery (3 in-process tries).
    provider.fail_next((0..3).map(|_| ConnectorError::Transient { reason: "503".into(), retry_after: None }));
    let grant = post(&app, &body(1, 11, 0, "Approved by Manager")).await;
    eventually("the grant to reach the retry ladder", WAIT, || async {
        app.audit_actions(grant).await.iter().any(|r| r.0 == "retry_scheduled").then_some(())
    })
    .await;
    // The ticket is revoked while the grant waits; then the provider recovers.
    let revoke = post(&app, &body(1, 12, 10, "Access Revoked")).await;
    let actions = processed(&app, revoke).await;
    assert!(actions.contains(&"cancelled".to_owned()), "{actions:?}");
    // The grant's retry comes back and finds its call cancelled.
    let actions = processed(&app, grant).await;
    assert!(actions.contains(&"cancelled".to_owned()), "{actions:?}");
    assert!(provider.members().is_empty(), "no access left behind");
    let granted = provider.calls().iter().filter(|c| c.op == "grant").count();
    assert_eq!(granted, 3, "only the three failed tries; the cancelled grant never ran");
    assert_eq!(ledger(&app).await, vec![("confluence-developers".to_owned(), "revoked".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_or_lock_is_held_while_a_provider_call_is_in_flight() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    *provider.latency.lock().unwrap() = Duration::from_millis(1500);
    let id = post(&app, &body(1, 11, 0, "Approved by Manager")).await;
    eventually("the call to be in flight", WAIT, || async {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM intents WHERE state = 'running'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (running == 1 && provider.calls().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(provider.calls().is_empty(), "still in the provider call");
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.pool).await.unwrap();
    let open: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT state, query FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
         AND (state LIKE 'idle in transaction%' OR xact_start IS NOT NULL AND state = 'active')",
    )
    .bind(&db)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, vec![], "no transaction is open during the call");
    let advisory: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND a.datname = $1",
    )
    .bind(&db)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(advisory, 0, "no advisory lock is held during the call");
    assert_eq!(processed(&app, id).await, vec!["received", "decided", "granted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_of_a_multi_target_grant_keeps_what_succeeded_and_undoes_the_rest() {
    let (app, provider) = spawn_live_app(|c| {
        c.rules[0].groups = vec!["confluence-developers".into(), "confluence-reviewers".into()];
    })
    .await;
    // The first group is granted; the second fails for good.
    provider
        .fail_targets
        .lock()
        .unwrap()
        .insert("confluence-reviewers".into(), ConnectorError::Permanent { reason: "group is read-only".into() });
    let id = post(&app, &body(1, 11, 0, "Approved by Manager")).await;
    let dead: String = eventually("the dead letter", WAIT, || async {
        sqlx::query_scalar("SELECT error_class FROM dead_letters WHERE event_id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(dead, "permanent");
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT action, target FROM audit_log WHERE event_id = $1 AND action IN ('granted', 'intent_abandoned') ORDER BY seq")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("granted".to_owned(), Some("confluence-developers".to_owned())),
            ("intent_abandoned".to_owned(), Some("confluence-reviewers".to_owned())),
        ]
    );
    // The ledger equals the provider: the first group held, the second not.
    assert_eq!(
        provider.members().into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        vec!["confluence-developers".to_owned()]
    );
    assert_eq!(
        ledger(&app).await,
        vec![
            ("confluence-developers".to_owned(), "active".to_owned()),
            ("confluence-reviewers".to_owned(), "revoked".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_worker_died_is_run_again_once_its_lease_runs_out() {
    let (app, provider) = spawn_live_app(|c| c.worker.intent_lease = Duration::from_millis(500)).await;
    // A worker committed the decision and claimed the call, then died (no result, no ack):
    // reproduce its rows, then deliver the message again as the broker would.
    let grant = body(1, 11, 0, "Approved by Manager");
    let event = {
        let v: Value = serde_json::from_slice(&grant).unwrap();
        let meta = accessgov::ingress::normalize::Meta {
            delivery_id: None,
            authenticity: Some(accessgov::event::Authenticity::Signature),
        };
        match accessgov::ingress::normalize::normalize(&v, &meta, &app.config.jsm, chrono::Utc::now()) {
            accessgov::ingress::normalize::Normalized::Accepted(e) => *e,
            other => panic!("{other:?}"),
        }
    };
    let subject = json!({"account_id": event.requester.as_ref().unwrap().account_id, "email": null,
                         "display_name": null, "fields": {}});
    let key = format!("{}\u{1f}{{}}", event.requester.as_ref().unwrap().account_id);
    sqlx::query("INSERT INTO event_runs (event_id, ticket) VALUES ($1, 'ACC-1')")
        .bind(event.event_id)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO intents (event_id, ticket, application, subject, identity, identity_key, target, access_level, \
                              op, state, attempts, lease_until, source) \
         VALUES ($1, 'ACC-1', $2, $3, $4, $5, 'confluence-developers', 'Write', 'grant', 'running', 1, \
                 now() + interval '300 milliseconds', 'event')",
    )
    .bind(event.event_id)
    .bind(LIVE_APP)
    .bind(&event.requester.as_ref().unwrap().account_id)
    .bind(&subject)
    .bind(&key)
    .execute(&app.pool)
    .await
    .unwrap();
    let broker = accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone());
    broker.publish_event(&event, 0, Duration::from_secs(5)).await.unwrap();
    let actions = processed(&app, event.event_id).await;
    assert_eq!(actions, vec!["granted"], "resumed: not decided again, the call made once");
    assert_eq!(provider.calls().len(), 1);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM intents").fetch_one(&app.pool).await.unwrap();
    assert_eq!((state.as_str(), attempts), ("done", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_decided_and_its_results_recorded_in_batches_not_one_transaction_per_event() {
    use crate::helpers::{fake_connectors, live_config, spawn_app_role};
    use accessgov::app::Role;
    let provider = std::sync::Arc::new(crate::helpers::provider::FakeProvider::default());
    let tweak = |c: &mut accessgov::config::Config| {
        live_config(c);
        c.worker.concurrency = 32;
        c.worker.batch_max = 64;
        c.worker.batch_wait = Duration::from_millis(20);
    };
    // Only the ingress at first: the backlog waits in the queue.
    let app = spawn_app_role(tweak, fake_connectors(&provider), Role::Ingress).await;
    const N: u32 = 24;
    let mut ids = Vec::new();
    for i in 0..N {
        let b = for_user(body(500 + i, 500 + i, i64::from(i), "Approved by Manager"), &format!("batch-user-{i}"));
        ids.push(post(&app, &b).await);
    }
    let (_worker, _stop) = app.extra_worker(fake_connectors(&provider)).await;
    for id in &ids {
        assert_eq!(processed(&app, *id).await, ["received", "decided", "granted"]);
    }
    assert_eq!(provider.calls().len(), N as usize, "one call per event");
    // Rows appended together share their `at` (one chain lock, one statement):
    // the decisions of the backlog and the results of its calls each took a few
    // transactions, not one per event.
    let (decided, granted) = (appends(&app, "decided", &ids).await, appends(&app, "granted", &ids).await);
    println!("{N} events: decisions in {decided} appends, results in {granted} appends");
    assert!(decided <= i64::from(N) / 4, "decisions took {decided} appends for {N} events");
    assert!(granted <= i64::from(N) / 4, "results took {granted} appends for {N} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_in_one_batch_calls_once_and_records_the_second_as_a_duplicate() {
    use crate::helpers::{fake_connectors, live_config, spawn_app_role};
    use accessgov::app::Role;
    let provider = std::sync::Arc::new(crate::helpers::provider::FakeProvider::default());
    let tweak = |c: &mut accessgov::config::Config| {
        live_config(c);
        c.worker.batch_wait = Duration::from_millis(50);
    };
    // Both deliveries wait in the queue, so that the worker takes them in one batch.
    let app = spawn_app_role(tweak, fake_connectors(&provider), Role::Ingress).await;
    let b = body(700, 700, 0, "Approved by Manager");
    let id = post(&app, &b).await;
    assert_eq!(post(&app, &b).await, id);
    let (_worker, _stop) = app.extra_worker(fake_connectors(&provider)).await;
    let actions = eventually("both deliveries to be settled", WAIT, || async {
        let actions: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        actions.iter().any(|a| a == "duplicate").then_some(actions)
    })
    .await;
    assert_eq!(actions, ["received", "decided", "granted", "duplicate"]);
    assert_eq!(provider.calls().len(), 1, "one provider call");
    let open_runs: i64 = sqlx::query_scalar("SELECT count(*) FROM event_runs").fetch_one(&app.pool).await.unwrap();
    assert_eq!(open_runs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_batch_that_share_a_ticket_or_a_subject_see_each_others_changes() {
    use crate::helpers::{fake_connectors, live_config, spawn_app_role};
    use accessgov::app::Role;
    let provider = std::sync::Arc::new(crate::helpers::provider::FakeProvider::default());
    let tweak = |c: &mut accessgov::config::Config| {
        live_config(c);
        c.worker.concurrency = 32;
        c.worker.batch_max = 64;
        c.worker.batch_wait = Duration::from_millis(100);
    };
    let app = spawn_app_role(tweak, fake_connectors(&provider), Role::Ingress).await;
    // Ticket 801: approved, then revoked, in one batch: the revoke must see the grant.
    let a_grant = post(&app, &for_user(body(801, 1, 0, "Approved by Manager"), "user-a")).await;
    let a_revoke = post(&app, &for_user(body(801, 2, 1, "Access Revoked"), "user-a")).await;
    // Tickets 802 and 803 grant the same access to the same user: one provider call, two holds.
    let b = post(&app, &for_user(body(802, 3, 2, "Approved by Manager"), "user-b")).await;
    let c = post(&app, &for_user(body(803, 4, 3, "Approved by Manager"), "user-b")).await;
    // Ticket 804: its revoke is delivered before its older approval, which must not overtake it.
    let d_revoke = post(&app, &for_user(body(804, 6, 5, "Access Revoked"), "user-d")).await;
    let d_grant = post(&app, &for_user(body(804, 5, 4, "Approved by Manager"), "user-d")).await;
    // A lone event, so the batch also holds events recorded together.
    let e = post(&app, &for_user(body(805, 7, 6, "Approved by Manager"), "user-e")).await;
    let ids = [a_grant, a_revoke, b, c, d_revoke, d_grant, e];
    let (_worker, _stop) = app.extra_worker(fake_connectors(&provider)).await;
    for id in ids {
        processed(&app, id).await;
    }
    let batches = appends(&app, "decided", &ids).await;
    assert_eq!(batches, 1, "all seven were decided in one batch");
    assert!(processed(&app, a_revoke).await.contains(&"cancelled".to_owned()), "the revoke cancelled the grant");
    assert!(processed(&app, d_grant).await.contains(&"superseded".to_owned()), "the older approval was superseded");
    assert!(processed(&app, c).await.contains(&"hold_added".to_owned()), "the second ticket took a hold");
    let mut calls: Vec<(String, String)> =
        provider.calls().into_iter().map(|c| (c.op.to_owned(), c.subject.clone())).collect();
    calls.sort();
    assert_eq!(calls, [("grant".to_owned(), "user-b".to_owned()), ("grant".to_owned(), "user-e".to_owned())]);
    let holds: Vec<(String, String)> = sqlx::query_as(
        "SELECT g.subject, h.ticket FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expect = [("user-b", "ACC-802"), ("user-b", "ACC-803"), ("user-e", "ACC-805")];
    assert_eq!(holds, expect.map(|(s, t)| (s.to_owned(), t.to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_concurrency_bounds_provider_calls_while_more_deliveries_are_decided_meanwhile() {
    use crate::helpers::{fake_connectors, live_config, spawn_app_role};
    use accessgov::app::Role;
    use std::sync::atomic::Ordering::SeqCst;
    let provider = std::sync::Arc::new(crate::helpers::provider::FakeProvider::default());
    *provider.latency.lock().unwrap() = Duration::from_millis(150);
    let tweak = |c: &mut accessgov::config::Config| {
        live_config(c);
        c.worker.concurrency = 2;
        c.broker.prefetch = 32;
        c.worker.batch_wait = Duration::from_millis(50);
    };
    let app = spawn_app_role(tweak, fake_connectors(&provider), Role::Ingress).await;
    const N: u32 = 12;
    let mut ids = Vec::new();
    for i in 0..N {
        let b = for_user(body(900 + i, 900 + i, i64::from(i), "Approved by Manager"), &format!("calls-user-{i}"));
        ids.push(post(&app, &b).await);
    }
    let (_worker, _stop) = app.extra_worker(fake_connectors(&provider)).await;
    for id in &ids {
        assert_eq!(processed(&app, *id).await, ["received", "decided", "granted"]);
    }
    assert_eq!(provider.calls().len(), N as usize);
    assert_eq!(provider.max_in_flight.load(SeqCst), 2, "calls in flight are bounded by [worker] concurrency, and used");
    // The backlog was decided in a few batches, not two deliveries at a time.
    let decided = appends(&app, "decided", &ids).await;
    assert!(decided <= 2, "the {N} decisions took {decided} appends");
}
