//! The walking skeleton, end to end on the real broker and database.

use crate::helpers::{eventually, fixture, spawn_app};
use accessgov::worker::WorkerContext;
use accessgov::worker::process::{Outcome, process_one};
use std::time::Duration;

const APPROVED: &str = "webhook-approved-confluence-write.json";

fn event_id(v: &serde_json::Value) -> uuid::Uuid {
    v["event_id"].as_str().expect("event_id in the answer").parse().expect("a uuid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_approval_is_published_consumed_and_audited_as_a_dry_run() {
    let app = spawn_app().await;
    let resp = app.post_signed(&fixture(APPROVED), Some("delivery-1")).await;
    assert_eq!(resp.status(), 202);
    let id = event_id(&resp.json().await.unwrap());

    let rows = eventually("three audit rows", Duration::from_secs(15), || async {
        let rows = app.audit_actions(id).await;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        vec![
            ("received".into(), "ok".into(), None),
            ("decided".into(), "ok".into(), None),
            ("dry_run".into(), "skipped".into(), Some("confluence-developers".into())),
        ]
    );
    let (ticket, subject, application): (String, String, String) =
        sqlx::query_as("SELECT ticket, subject, application FROM audit_log WHERE event_id = $1 AND action = 'decided'")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((ticket.as_str(), application.as_str()), ("ACC-42", "Confluence"));
    assert_eq!(subject, "712020:0e4b6a43-1f7c-4d5e-9a3b-2c1d0e9f8a7b");
    let report = accessgov::audit::verify::verify(&app.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!((report.rows_checked, report.first_broken), (3, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_carries_the_same_event_id_and_is_recorded_once_as_duplicate() {
    let app = spawn_app().await;
    let first = event_id(&app.post_signed(&fixture(APPROVED), Some("delivery-1")).await.json().await.unwrap());
    let again = event_id(&app.post_signed(&fixture(APPROVED), Some("delivery-1")).await.json().await.unwrap());
    assert_eq!(first, again);
    let rows = eventually("the duplicate row", Duration::from_secs(15), || async {
        let rows = app.audit_actions(first).await;
        rows.iter().any(|r| r.0 == "duplicate").then_some(rows)
    })
    .await;
    let received = rows.iter().filter(|r| r.0 == "received").count();
    let dry_runs = rows.iter().filter(|r| r.0 == "dry_run").count();
    assert_eq!((received, dry_runs), (1, 1), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_the_same_body_again_does_nothing_but_one_duplicate_row() {
    let app = spawn_app().await;
    let ctx = WorkerContext::new(
        app.config.clone(),
        app.pool.clone(),
        accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone()),
        Default::default(),
    );
    let body = {
        let v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
        let meta = accessgov::ingress::normalize::Meta::default();
        match accessgov::ingress::normalize::normalize(&v, &meta, &app.config.jsm, chrono::Utc::now()) {
            accessgov::ingress::normalize::Normalized::Accepted(e) => serde_json::to_vec(&e).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(process_one(&ctx, &body, 0).await.unwrap(), Outcome::Recorded("dry_run"));
    assert_eq!(process_one(&ctx, &body, 0).await.unwrap(), Outcome::Duplicate);
    assert_eq!(process_one(&ctx, &body, 0).await.unwrap(), Outcome::Duplicate);
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT action, count(*) FROM audit_log GROUP BY action ORDER BY action")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        counts,
        vec![("decided".into(), 1), ("dry_run".into(), 1), ("duplicate".into(), 1), ("received".into(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_the_rule_does_not_allow_is_refused_and_audited() {
    let app = spawn_app().await;
    let body = String::from_utf8(fixture(APPROVED)).unwrap().replace("5f8e1b2c3d4a5b6c7d8e9f01", "someone-not-allowed");
    let resp = app.post_signed(body.as_bytes(), None).await;
    assert_eq!(resp.status(), 202);
    let id = event_id(&resp.json().await.unwrap());
    let rows = eventually("the refusal", Duration::from_secs(15), || async {
        let rows = app.audit_actions(id).await;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    assert_eq!(rows[1], ("decided".into(), "refused".into(), None));
    assert_eq!(rows[2], ("denied_by_policy".into(), "refused".into(), None));
    let detail: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE event_id = $1 AND action = 'denied_by_policy'")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(detail["code"], "approver_not_allowed");
    assert!(!rows.iter().any(|r| r.0 == "dry_run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_role_cleanly() {
    let mut app = spawn_app().await;
    app.stop().await;
    assert!(app.http.get(app.url("/healthz")).send().await.is_err(), "the listener is closed after stop");
}
