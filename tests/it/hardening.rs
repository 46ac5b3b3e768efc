//! Approval integrity, identity binding, hostile values and the worker's edges,
//! on the real broker and database with a fake provider. Each test reproduces a
//! way the earlier build granted or lost access, with a positive control.

use crate::helpers::provider::FakeProvider;
use crate::helpers::{LIVE_APP, TestApp, eventually, fixture, spawn_live_app};
use accessgov::config::Config;
use accessgov::connectors::ConnectorError;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const GROUP: &str = "confluence-developers";
const LOGIN_FIELD: &str = "customfield_10090";
const DURATION_FIELD: &str = "customfield_10070";
/// After the fixture's approval (completed at 1764086399000).
const T0: i64 = 1_764_090_000_000;

/// The approved Confluence Write webhook for `ticket`, at `T0 + ts` seconds, moving to `status`.
fn body(ticket: u32, changelog: u32, ts: i64, status: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["timestamp"] = json!(T0 + ts * 1000);
    v["issue"]["id"] = json!(format!("{}", 30_000 + ticket));
    v["issue"]["key"] = json!(format!("ACC-{ticket}"));
    v["changelog"]["id"] = json!(format!("{changelog}"));
    let items = v["changelog"]["items"].as_array_mut().unwrap();
    items.iter_mut().find(|i| i["fieldId"] == "status").unwrap()["toString"] = json!(status);
    v
}

fn approved(ticket: u32, changelog: u32, ts: i64) -> Value {
    body(ticket, changelog, ts, "Approved by Manager")
}

fn revoked(ticket: u32, changelog: u32, ts: i64) -> Value {
    body(ticket, changelog, ts, "Access Revoked")
}

async fn post(app: &TestApp, v: &Value) -> uuid::Uuid {
    let resp = app.post_signed(&serde_json::to_vec(v).unwrap(), None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

/// The event's audit actions once it is processed.
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

/// The refusal code of an event that was denied by policy.
async fn refusal(app: &TestApp, id: uuid::Uuid) -> String {
    let detail: Value = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE event_id = $1 AND action = 'denied_by_policy' ORDER BY seq LIMIT 1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("a denied_by_policy row");
    detail["code"].as_str().unwrap().to_owned()
}

fn ops(p: &FakeProvider) -> Vec<(&'static str, String)> {
    p.calls().into_iter().map(|c| (c.op, c.target)).collect()
}

/// Confluence takes the provider login from a ticket field.
fn with_login_field(c: &mut Config) {
    c.applications.get_mut(LIVE_APP).unwrap().settings.insert("subject_field".into(), LOGIN_FIELD.into());
    c.jsm.fields.subject_fields = vec![LOGIN_FIELD.to_owned()];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_or_pending_approval_never_grants_even_when_the_ticket_moved_to_approved() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    for (ticket, decision) in [(1, "declined"), (2, "pending")] {
        let mut v = approved(ticket, ticket * 10, 0);
        v["issue"]["fields"]["customfield_10027"][0]["finalDecision"] = json!(decision);
        v["issue"]["fields"]["customfield_10027"][0]["approvers"][0]["approverDecision"] = json!(decision);
        let id = post(&app, &v).await;
        assert_eq!(settled(&app, id).await, vec!["received", "decided", "denied_by_policy"], "{decision}");
        assert_eq!(refusal(&app, id).await, "approval_not_approved");
    }
    assert!(provider.calls().is_empty(), "nothing was called at the provider");
    // Positive control: the same ticket shape with the approval approved grants.
    let id = post(&app, &approved(3, 30, 0)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_field_grant_needs_the_approver_to_have_made_the_transition() {
    let (app, provider) = spawn_live_app(|c| c.jsm.fields.approvals = None).await;
    let field = |actor: &str, ticket: u32| {
        let mut v = approved(ticket, ticket * 10, 0);
        v["issue"]["fields"]["customfield_10060"] = json!({"accountId": "5f8e1b2c3d4a5b6c7d8e9f01"});
        v["user"]["accountId"] = json!(actor);
        v
    };
    // Someone else (an app user, an agent) moved the ticket: the field only names who was asked.
    let id = post(&app, &field("557058:automation", 1)).await;
    settled(&app, id).await;
    assert_eq!(refusal(&app, id).await, "approver_unconfirmed");
    assert!(provider.calls().is_empty());
    // The named approver moved it themselves: granted.
    let id = post(&app, &field("5f8e1b2c3d4a5b6c7d8e9f01", 2)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reapproval_needs_a_new_approval_after_a_revoke() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let id = post(&app, &approved(1, 11, 0)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    let id = post(&app, &revoked(1, 12, 10)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "revoked"]);
    // Moved back to "Approved" with the same, old approval.
    let id = post(&app, &approved(1, 13, 20)).await;
    settled(&app, id).await;
    assert_eq!(refusal(&app, id).await, "approval_reused");
    assert_eq!(ops(&provider), vec![("grant", GROUP.into()), ("revoke", GROUP.into())]);
    // A new approval, completed after the revoke, grants again.
    let mut v = approved(1, 14, 40);
    v["issue"]["fields"]["customfield_10027"][0]["id"] = json!("8");
    v["issue"]["fields"]["customfield_10027"][0]["completedDate"]["epochMillis"] = json!(T0 + 30_000);
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    assert_eq!(provider.members().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_acts_on_the_identity_that_was_granted_whatever_the_ticket_says_later() {
    let (app, provider) = spawn_live_app(with_login_field).await;
    let mut v = approved(1, 11, 0);
    v["issue"]["fields"][LOGIN_FIELD] = json!("alice-gh");
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    // The requester edits the login field before the ticket is revoked.
    let mut v = revoked(1, 12, 10);
    v["issue"]["fields"][LOGIN_FIELD] = json!("mallory-gh");
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "revoked"]);
    let logins: Vec<(&str, Option<String>)> =
        provider.calls().iter().map(|c| (c.op, c.fields.get(LOGIN_FIELD).cloned())).collect();
    assert_eq!(logins, vec![("grant", Some("alice-gh".into())), ("revoke", Some("alice-gh".into()))]);
    // The identity is in the chained audit rows of both effects.
    let rows: Vec<(String, Value)> =
        sqlx::query_as("SELECT action, detail FROM audit_log WHERE action IN ('granted', 'revoked') ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    for (action, detail) in rows {
        assert_eq!(detail["identity"]["fields"][LOGIN_FIELD], "alice-gh", "{action}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ticket_for_another_identity_is_refused_and_unusable_identities_never_reach_the_provider() {
    let (app, provider) = spawn_live_app(with_login_field).await;
    let mut v = approved(1, 11, 0);
    v["issue"]["fields"][LOGIN_FIELD] = json!("alice-gh");
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    // Same requester, same group, another login: adding a hold would grant nothing to that login.
    let mut v = approved(2, 21, 5);
    v["issue"]["fields"][LOGIN_FIELD] = json!("mallory-gh");
    let id = post(&app, &v).await;
    settled(&app, id).await;
    assert_eq!(refusal(&app, id).await, "identity_mismatch");
    for (ticket, login) in [(3, "me"), (4, ".."), (5, "alice\u{7}")] {
        let mut v = approved(ticket, ticket * 10 + 1, 5);
        v["issue"]["fields"][LOGIN_FIELD] = json!(login);
        let id = post(&app, &v).await;
        settled(&app, id).await;
        assert_eq!(refusal(&app, id).await, "invalid_identity", "{login:?}");
    }
    assert_eq!(provider.calls().len(), 1, "only the first grant reached the provider");
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM grant_holds").fetch_one(&app.pool).await.unwrap();
    assert_eq!(holds, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requesters_huge_duration_is_capped_and_an_overflowing_one_refused_without_a_panic() {
    let (app, provider) = spawn_live_app(|c| {
        c.jsm.fields.duration = Some(DURATION_FIELD.into());
        c.rules[0].max_duration = None;
    })
    .await;
    // The earlier build granted, then panicked computing `now + duration`, and redelivered forever.
    let mut v = approved(1, 11, 0);
    v["issue"]["fields"][DURATION_FIELD] = json!("99999999999d");
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    let years: f64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM expires_at - now()) / 86400 / 365)::float8 FROM grant_holds")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!((9.9..10.1).contains(&years), "capped at 3650 days, got {years} years");
    let mut v = approved(2, 21, 0);
    v["issue"]["fields"]["reporter"]["accountId"] = json!("another-requester");
    v["issue"]["fields"][DURATION_FIELD] = json!("18446744073709551615d");
    let id = post(&app, &v).await;
    settled(&app, id).await;
    assert_eq!(refusal(&app, id).await, "invalid_duration");
    assert_eq!(provider.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_dead_lettered_as_poison_and_never_stalls_the_queue() {
    let (app, _provider) = spawn_live_app(|c| {
        c.worker.concurrency = 1;
        c.broker.prefetch = 1;
    })
    .await;
    // Published past the ingress (which refuses NULs): a NUL in the ticket key, which text columns refuse.
    let mut event: accessgov::event::AccessEvent = {
        let v = approved(1, 11, 0);
        let meta = accessgov::ingress::normalize::Meta {
            delivery_id: None,
            authenticity: Some(accessgov::event::Authenticity::Signature),
        };
        match accessgov::ingress::normalize::normalize(&v, &meta, &app.config.jsm, chrono::Utc::now()) {
            accessgov::ingress::normalize::Normalized::Accepted(e) => *e,
            other => panic!("{other:?}"),
        }
    };
    event.ticket.key = "ACC-\u{0}1".into();
    event.event_id = uuid::Uuid::new_v4();
    let broker = accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone());
    broker.publish_event(&event, 0, Duration::from_secs(5)).await.expect("published");
    // One delivery at a time: the next event is processed only if the poisoned one let go.
    let id = post(&app, &approved(2, 21, 0)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    let poisoned: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE event_id = $1")
        .bind(event.event_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(poisoned, 0, "nothing of the poisoned message was recorded");
    let dead: (String, String) = eventually("the poison message in dead_letters", WAIT, || async {
        sqlx::query_as("SELECT error_class, last_error FROM dead_letters WHERE event_id = $1")
            .bind(event.event_id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(dead.0, "poison", "{}", dead.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_releases_only_expired_holds_of_a_subject_that_also_holds_lasting_access() {
    let (app, provider) = spawn_live_app(|c| {
        c.rules[0].max_duration = Some(Duration::from_millis(1));
        let mut read = c.rules[0].clone();
        read.access_level = "Read".into();
        read.groups = vec!["confluence-readers".into()];
        read.max_duration = None;
        c.rules.push(read);
        c.worker.expiry_interval = Duration::from_millis(100);
    })
    .await;
    // Lasting access first (the earlier sweeper failed on any subject with a NULL expiry).
    let mut v = approved(1, 11, 0);
    v["issue"]["fields"]["customfield_10051"]["value"] = json!("Read");
    let id = post(&app, &v).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    let id = post(&app, &approved(2, 21, 0)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    let expired: Value = eventually("the expiry", WAIT, || async {
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'expired'")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(expired["provider_result"], "revoked");
    assert_eq!(
        provider.members().into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        vec!["confluence-readers".to_owned()]
    );
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT target, state FROM access_grants ORDER BY target").fetch_all(&app.pool).await.unwrap();
    assert_eq!(
        states,
        vec![("confluence-developers".into(), "revoked".into()), ("confluence-readers".into(), "active".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_expiry_revoke_follows_the_retry_ladder_into_dead_letters_instead_of_failing_forever() {
    let (app, provider) = spawn_live_app(|c| {
        c.rules[0].max_duration = Some(Duration::from_secs(3));
        c.worker.expiry_interval = Duration::from_millis(50);
    })
    .await;
    let id = post(&app, &approved(1, 11, 0)).await;
    assert_eq!(settled(&app, id).await, vec!["received", "decided", "granted"]);
    // The provider goes down before the access expires.
    *provider.always.lock().unwrap() = Some(ConnectorError::Transient { reason: "down".into(), retry_after: None });
    let dead: (String, String) = eventually("the expiry in dead_letters", WAIT, || async {
        sqlx::query_as("SELECT ticket, error_class FROM dead_letters").fetch_optional(&app.pool).await.unwrap()
    })
    .await;
    assert_eq!(dead, ("ACC-1".to_owned(), "transient".to_owned()));
    // Many sweep intervals later, no new attempt was made: the dead letter is the operator's now.
    let revokes = provider.calls().iter().filter(|c| c.op == "revoke").count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.calls().iter().filter(|c| c.op == "revoke").count(), revokes);
    // In-process retries (3) per delivery, times (1 + the 2-step ladder): bounded.
    assert!(revokes <= 9, "{revokes} revoke attempts");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM grant_holds").fetch_one(&app.pool).await.unwrap();
    assert_eq!(held, 1, "the ledger keeps the hold while the provider still has the access");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_application_never_changes_the_ledger_on_expiry() {
    let app = crate::helpers::spawn_app_with(|c| c.worker.expiry_interval = Duration::from_secs(3600)).await;
    // A hold from when the application was live, expired since.
    sqlx::query(
        "WITH g AS (INSERT INTO access_grants (application, subject, target, state) \
                    VALUES ($1, 'u1', $2, 'active') RETURNING id) \
         INSERT INTO grant_holds (grant_id, ticket, access_level, event_id, event_at, expires_at) \
         SELECT id, 'ACC-1', 'Write', gen_random_uuid(), now() - interval '2 days', now() - interval '1 day' FROM g",
    )
    .bind(LIVE_APP)
    .bind(GROUP)
    .execute(&app.pool)
    .await
    .unwrap();
    let ctx = accessgov::worker::WorkerContext::new(
        app.config.clone(),
        app.pool.clone(),
        accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone()),
        Default::default(),
    );
    assert!(app.config.applications[LIVE_APP].dry_run);
    assert_eq!(accessgov::worker::expiry::sweep_once(&ctx).await.unwrap(), 0);
    let left: (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT count(*), max(expiry_enqueued_at) FROM grant_holds").fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, (1, None));
}
