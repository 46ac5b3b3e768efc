//! The worker against the real broker and database, with a fake provider:
//! grants, revokes, duplicates, overlapping tickets, ordering across replicas,
//! retries, dead-lettering.

use crate::helpers::provider::FakeProvider;
use crate::helpers::{TestApp, eventually, fake_connectors, fixture, spawn_live_app};
use accessgov::connectors::ConnectorError;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const GROUP: &str = "confluence-developers";

/// A webhook body: `ticket` moved to `status` at `ts` (seconds), for `requester`.
fn body(ticket: u32, changelog: u32, ts: i64, status: &str, request_type: &str, requester: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(1_764_000_000_000_i64 + ts * 1000);
    v["issue"]["id"] = json!(format!("{}", 20_000 + ticket));
    v["issue"]["key"] = json!(format!("ACC-{ticket}"));
    v["issue"]["fields"]["reporter"]["accountId"] = json!(requester);
    v["issue"]["fields"]["customfield_10010"]["requestType"]["name"] = json!(request_type);
    v["changelog"]["id"] = json!(format!("{changelog}"));
    let items = v["changelog"]["items"].as_array_mut().unwrap();
    let status_item = items.iter_mut().find(|i| i["fieldId"] == "status").unwrap();
    status_item["toString"] = json!(status);
    serde_json::to_vec(&v).unwrap()
}

fn grant(ticket: u32, ts: i64, requester: &str) -> Vec<u8> {
    body(ticket, ticket * 10 + 1, ts, "Approved by Manager", "Request Application Access", requester)
}

fn revoke_ticket(ticket: u32, ts: i64, requester: &str) -> Vec<u8> {
    body(ticket, ticket * 10 + 2, ts, "Access Revoked", "Request Application Access", requester)
}

async fn post(app: &TestApp, body: &[u8]) -> uuid::Uuid {
    let resp = app.post_signed(body, None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

/// Waits until the event's processing finished (its last audit row has one of `actions`).
async fn settled(app: &TestApp, id: uuid::Uuid) -> Vec<String> {
    eventually("the event to be processed", WAIT, || async {
        let done: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let rows = app.audit_actions(id).await;
        done.then(|| rows.into_iter().map(|r| r.0).collect())
    })
    .await
}

fn ops(p: &FakeProvider) -> Vec<(&'static str, String)> {
    p.calls().into_iter().map(|c| (c.op, c.target)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_grants_once_and_a_revoked_ticket_revokes() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let id = post(&app, &grant(1, 0, "u1")).await;
    let actions = settled(&app, id).await;
    assert_eq!(actions, vec!["received", "decided", "granted"]);
    assert!(provider.members().contains(&("u1".into(), GROUP.into())));
    let state: String = sqlx::query_scalar("SELECT state FROM access_grants WHERE subject = 'u1' AND target = $1")
        .bind(GROUP)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "active");

    let id = post(&app, &revoke_ticket(1, 10, "u1")).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "revoked"]);
    assert_eq!(ops(&provider), vec![("grant", GROUP.into()), ("revoke", GROUP.into())]);
    assert!(provider.members().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_makes_one_provider_call() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let b = grant(1, 0, "u1");
    let id = post(&app, &b).await;
    assert_eq!(post(&app, &b).await, id);
    eventually("the duplicate to be recorded", WAIT, || async {
        app.audit_actions(id).await.iter().any(|r| r.0 == "duplicate").then_some(())
    })
    .await;
    assert_eq!(ops(&provider), vec![("grant", GROUP.into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tickets_for_one_group_keep_the_access_until_both_are_revoked() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    settled(&app, post(&app, &grant(1, 0, "u1")).await).await;
    let second = settled(&app, post(&app, &grant(2, 5, "u1")).await).await;
    assert_eq!(second, vec!["received", "decided", "hold_added"], "no provider write for the second hold");
    let first_revoked = settled(&app, post(&app, &revoke_ticket(1, 10, "u1")).await).await;
    assert_eq!(first_revoked, vec!["received", "decided", "hold_released"]);
    assert!(provider.members().contains(&("u1".into(), GROUP.into())), "ticket 2 still grants it");
    settled(&app, post(&app, &revoke_ticket(2, 20, "u1")).await).await;
    assert!(provider.members().is_empty());
    assert_eq!(ops(&provider), vec![("grant", GROUP.into()), ("revoke", GROUP.into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_grant_arriving_after_the_revoke_is_superseded() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    settled(&app, post(&app, &revoke_ticket(1, 10, "u1")).await).await;
    let late = settled(&app, post(&app, &grant(1, 0, "u1")).await).await;
    assert_eq!(late, vec!["received", "decided", "superseded"]);
    assert!(provider.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_grants_and_revokes_on_four_workers_end_in_the_serial_state() {
    let (app, provider) = spawn_live_app(|c| c.worker.concurrency = 4).await;
    *provider.latency.lock().unwrap() = Duration::from_millis(5);
    let mut extra = Vec::new();
    for _ in 0..3 {
        extra.push(app.extra_worker(fake_connectors(&provider)).await);
    }
    // 6 subjects x 4 tickets; every ticket is granted, every other ticket later revoked.
    let mut bodies = Vec::new();
    let mut expected = std::collections::BTreeSet::new();
    let mut seed: u64 = 0x5eed;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for s in 0..6u32 {
        let subject = format!("subject-{s}");
        let mut held = false;
        for t in 0..4u32 {
            let ticket = 100 + s * 10 + t;
            let ts = i64::from(t) * 100;
            bodies.push(grant(ticket, ts, &subject));
            if rand() % 2 == 0 {
                bodies.push(revoke_ticket(ticket, ts + 50, &subject));
            } else {
                held = true;
            }
        }
        if held {
            expected.insert((subject, GROUP.to_owned()));
        }
    }
    for i in (1..bodies.len()).rev() {
        let j = (rand() as usize) % (i + 1);
        bodies.swap(i, j);
    }
    let mut ids = Vec::new();
    for b in &bodies {
        ids.push(post(&app, b).await);
    }
    for id in ids {
        settled(&app, id).await;
    }
    assert_eq!(provider.members(), expected);
    let active: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM access_grants WHERE state = 'active' ORDER BY subject")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(active, expected.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    let report = accessgov::audit::verify::verify(&app.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!(report.first_broken, None);
    for (w, token) in extra {
        token.cancel();
        w.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_in_process_then_succeeds() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    provider.fail_next([
        ConnectorError::Transient { reason: "503".into(), retry_after: None },
        ConnectorError::Transient { reason: "timeout".into(), retry_after: None },
    ]);
    let actions = settled(&app, post(&app, &grant(1, 0, "u1")).await).await;
    assert_eq!(actions, vec!["received", "decided", "granted"]);
    assert_eq!(provider.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_hint_is_waited_out() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    provider
        .fail_next([ConnectorError::Transient { reason: "429".into(), retry_after: Some(Duration::from_millis(400)) }]);
    settled(&app, post(&app, &grant(1, 0, "u1")).await).await;
    let calls = provider.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(400), "waited {:?}", calls[1].at - calls[0].at);
}

async fn dead_letter(app: &TestApp, id: uuid::Uuid) -> (String, i32, Value) {
    eventually("a dead letter", WAIT, || async {
        sqlx::query_as("SELECT error_class, attempts, attempt_history FROM dead_letters WHERE event_id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_outlasts_the_retry_ladder_ends_in_dead_letters() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    *provider.always.lock().unwrap() =
        Some(ConnectorError::Transient { reason: "provider down".into(), retry_after: None });
    let id = post(&app, &grant(1, 0, "u1")).await;
    let (class, attempts, history) = dead_letter(&app, id).await;
    assert_eq!((class.as_str(), attempts), ("transient", 3), "two ladder steps, then dead");
    assert_eq!(history.as_array().unwrap().len(), 3);
    let actions: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
    assert_eq!(actions.iter().filter(|a| *a == "retry_scheduled").count(), 2, "{actions:?}");
    assert_eq!(actions.last().map(String::as_str), Some("dead_lettered"));
    assert_eq!(actions.iter().filter(|a| *a == "received").count(), 1);
    // 3 attempts x (1 call + 2 in-process retries)
    assert_eq!(provider.calls().len(), 9);
    let processed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!processed, "a dead letter can be replayed later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_dead_lettered_at_once() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    provider.fail_next([ConnectorError::NotFound { what: "group confluence-developers".into() }]);
    let id = post(&app, &grant(1, 0, "u1")).await;
    let (class, attempts, _) = dead_letter(&app, id).await;
    assert_eq!((class.as_str(), attempts), ("not_found", 1));
    assert_eq!(provider.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_recorded_in_dead_letters() {
    let (app, _provider) = spawn_live_app(|_| {}).await;
    let conn = lapin::Connection::connect(&app.config.broker.url, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        app.names.events.as_str().into(),
        "access.grant".into(),
        Default::default(),
        b"\x00garbage",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let class: String = eventually("the poison dead letter", WAIT, || async {
        sqlx::query_scalar("SELECT error_class FROM dead_letters").fetch_optional(&app.pool).await.unwrap()
    })
    .await;
    assert_eq!(class, "poison");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'dead_lettered'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_call_loses_nothing() {
    let (mut app, provider) = spawn_live_app(|c| c.worker.shutdown_grace = Duration::from_millis(50)).await;
    *provider.latency.lock().unwrap() = Duration::from_millis(800);
    let id = post(&app, &grant(1, 0, "u1")).await;
    eventually("the provider call to start", WAIT, || async { (!provider.calls().is_empty()).then_some(()) }).await;
    app.stop().await;
    *provider.latency.lock().unwrap() = Duration::ZERO;
    // A new worker on the same queue and database picks the message up again.
    let (worker, token) = app.extra_worker(fake_connectors(&provider)).await;
    settled(&app, id).await;
    assert!(provider.members().contains(&("u1".into(), GROUP.into())));
    let granted: i64 = sqlx::query_scalar("SELECT count(*) FROM grant_holds").fetch_one(&app.pool).await.unwrap();
    assert_eq!(granted, 1);
    token.cancel();
    worker.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_request_replaces_the_old_level_with_the_new_one() {
    let (app, provider) = spawn_live_app(|c| {
        let mut read = c.rules[0].clone();
        read.access_level = "Read".into();
        read.groups = vec!["confluence-readers".into()];
        c.rules.push(read);
    })
    .await;
    let read = String::from_utf8(grant(1, 0, "u1")).unwrap().replace("\"value\":\"Write\"", "\"value\":\"Read\"");
    assert!(read.contains("\"Read\""), "the fixture names the level as expected");
    settled(&app, post(&app, read.as_bytes()).await).await;
    assert!(provider.members().contains(&("u1".into(), "confluence-readers".into())));
    let change = body(2, 21, 10, "Approved by Manager", "Request Access Change", "u1");
    let actions = settled(&app, post(&app, &change).await).await;
    assert_eq!(actions, vec!["received", "decided", "granted", "revoked"]);
    assert_eq!(provider.members(), [("u1".to_owned(), GROUP.to_owned())].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_ask_for_small_frames_unless_the_url_names_a_frame_size() {
    use accessgov::broker::{Broker, DEFAULT_FRAME_MAX, topology::Names};
    let names = || Names::new("agframes", &[Duration::from_secs(1)]);
    // lapin sizes each connection's two buffers at 32 frames: 128 KiB frames cost 8 MiB per connection.
    let conn = Broker::new(&crate::helpers::amqp_url(), names()).connect_raw().await.expect("connects");
    assert_eq!(conn.configuration().frame_max(), DEFAULT_FRAME_MAX);
    let _ = conn.close(200, "done".into()).await;
    let url = crate::helpers::amqp_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let conn = Broker::new(&format!("{url}{sep}frame_max=65536"), names()).connect_raw().await.expect("connects");
    assert_eq!(conn.configuration().frame_max(), 65536, "the URL's own frame size wins");
    let _ = conn.close(200, "done".into()).await;
}
