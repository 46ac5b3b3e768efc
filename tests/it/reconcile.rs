//! `grants reconcile` on the real database: the ledger against what the provider
//! (a fake behind the connector contract) really lists.

use crate::helpers::{LIVE_APP, eventually, fake_connectors, fixture, spawn_live_app};
use accessgov::operator::{Operator, Via};
use accessgov::reconcile::{self, Finding};
use std::time::Duration;

const REQUESTER: &str = "712020:0e4b6a43-1f7c-4d5e-9a3b-2c1d0e9f8a7b";
const GROUP: &str = "confluence-developers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_a_membership_removed_behind_our_back_and_a_member_no_ticket_accounts_for() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let resp = app.post_signed(&fixture("webhook-approved-confluence-write.json"), None).await;
    assert_eq!(resp.status(), 202);
    eventually("the grant", Duration::from_secs(20), || async {
        provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())).then_some(())
    })
    .await;
    let connectors = fake_connectors(&provider);
    let operator = Operator::new("auditor", Via::Cli).unwrap();
    let mut seen = Vec::new();
    let reports = reconcile::run(&app.pool, &app.config, &connectors, None, &operator, None, &mut |i, n, a, t| {
        seen.push(format!("{i}/{n} {a}/{t}"));
    })
    .await
    .unwrap();
    let developers = reports.iter().find(|r| r.target == GROUP).expect("the rule's group is read back");
    assert_eq!((developers.in_sync, developers.findings.len()), (1, 0), "{developers:?}");
    assert!(seen.iter().any(|s| s.ends_with(&format!("{LIVE_APP}/{GROUP}"))), "{seen:?}");

    // Behind our back: the requester is removed at the provider, someone else is added.
    {
        let mut members = provider.members.lock().unwrap();
        members.remove(&(REQUESTER.to_owned(), GROUP.to_owned()));
        members.insert(("intruder".to_owned(), GROUP.to_owned()));
    }
    let reports =
        reconcile::run(&app.pool, &app.config, &connectors, Some(LIVE_APP), &operator, None, &mut |_, _, _, _| {})
            .await
            .unwrap();
    let developers = reports.iter().find(|r| r.target == GROUP).unwrap();
    assert_eq!(developers.in_sync, 0);
    assert_eq!(
        developers.findings,
        vec![
            Finding::Missing {
                subject: REQUESTER.into(),
                identity: REQUESTER.into(),
                tickets: vec!["ACC-42".into()],
                access_level: "Write".into(),
                identity_of: accessgov::connectors::Subject {
                    account_id: REQUESTER.into(),
                    email: Some("dana.requester@example.com".into()),
                    display_name: Some("Dana Requester".into()),
                    fields: Default::default(),
                },
            },
            Finding::Unmanaged { member: "intruder".into(), keys: vec!["intruder".into()], display: None },
        ]
    );
    // Read only: nothing was granted or removed.
    assert!(provider.members().contains(&("intruder".to_owned(), GROUP.to_owned())));
    assert_eq!(provider.calls().len(), 1, "only the original grant");

    // Each run is audited with its counts and the operator.
    let rows: Vec<(Option<String>, serde_json::Value)> =
        sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = 'reconciled' ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0.as_deref(), Some("auditor"));
    assert_eq!((rows[0].1["missing"].as_u64(), rows[0].1["unmanaged"].as_u64()), (Some(0), Some(0)));
    assert_eq!((rows[1].1["missing"].as_u64(), rows[1].1["unmanaged"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_fix_grants_a_lost_membership_again_through_the_workers_and_leaves_unmanaged_members() {
    let (app, provider) = spawn_live_app(|_| {}).await;
    let resp = app.post_signed(&fixture("webhook-approved-confluence-write.json"), None).await;
    assert_eq!(resp.status(), 202);
    eventually("the grant", Duration::from_secs(20), || async {
        provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())).then_some(())
    })
    .await;
    {
        let mut members = provider.members.lock().unwrap();
        members.remove(&(REQUESTER.to_owned(), GROUP.to_owned()));
        members.insert(("intruder".to_owned(), GROUP.to_owned()));
    }
    let connectors = fake_connectors(&provider);
    let operator = Operator::new("auditor", Via::Cli).unwrap();
    let broker = accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone());
    let reports =
        reconcile::run(&app.pool, &app.config, &connectors, None, &operator, Some(&broker), &mut |_, _, _, _| {})
            .await
            .unwrap();
    assert_eq!(reconcile::count(&reports, |f| matches!(f, Finding::Missing { .. })), 1);
    // The worker provisions it again: one more grant call, for the identity the ledger recorded.
    eventually("the repair", Duration::from_secs(20), || async {
        provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())).then_some(())
    })
    .await;
    let grants: Vec<_> = provider.calls().into_iter().filter(|c| c.op == "grant").collect();
    assert_eq!(grants.len(), 2, "the first grant and the repair");
    assert!(provider.members().contains(&("intruder".to_owned(), GROUP.to_owned())), "unmanaged members stay");
    // The ledger is unchanged: still one hold, by ACC-42.
    let holds: Vec<String> = sqlx::query_scalar(
        "SELECT h.ticket FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id WHERE g.subject = $1",
    )
    .bind(REQUESTER)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(holds, ["ACC-42"]);
    // The worker commits the repair's audit row just after the provider call.
    eventually("the repair audited like a grant", Duration::from_secs(20), || async {
        let granted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'granted' AND ticket = 'ACC-42'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert!(granted <= 2, "{granted} granted rows");
        (granted == 2).then_some(())
    })
    .await;
    let detail: serde_json::Value = sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'reconciled'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(detail["repairs_queued"], 1);
    // Read back again: in sync, apart from the unmanaged member.
    let reports =
        reconcile::run(&app.pool, &app.config, &connectors, None, &operator, None, &mut |_, _, _, _| {}).await.unwrap();
    assert_eq!(reconcile::count(&reports, |f| matches!(f, Finding::Missing { .. })), 0);
    assert_eq!(reconcile::count(&reports, |f| matches!(f, Finding::Unmanaged { .. })), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_reconcile_on_a_schedule_one_replica_at_a_time() {
    use sqlx::Connection;
    let (app, provider) = spawn_live_app(|c| {
        c.reconcile.interval = Some(Duration::from_millis(200));
        c.reconcile.fix = true;
    })
    .await;
    // Another replica holds the reconcile lock.
    let mut other = sqlx::PgConnection::connect(app.config.database.migrate_url()).await.unwrap();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('accessgov.reconcile', 0))")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(got);
    let resp = app.post_signed(&fixture("webhook-approved-confluence-write.json"), None).await;
    assert_eq!(resp.status(), 202);
    eventually("the grant", Duration::from_secs(20), || async {
        provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())).then_some(())
    })
    .await;
    provider.members.lock().unwrap().remove(&(REQUESTER.to_owned(), GROUP.to_owned()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'reconciled'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0, "the lock is held by another replica");
    assert!(!provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())));

    other.close().await.unwrap();
    eventually("a scheduled run repairs it", Duration::from_secs(20), || async {
        provider.members().contains(&(REQUESTER.to_owned(), GROUP.to_owned())).then_some(())
    })
    .await;
    // The run commits its `reconciled` row after publishing the repair, which a
    // worker may apply first.
    let (actor, detail): (Option<String>, serde_json::Value) =
        eventually("the scheduled run's audit row", Duration::from_secs(20), || async {
            sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = 'reconciled' ORDER BY seq LIMIT 1")
                .fetch_optional(&app.pool)
                .await
                .unwrap()
        })
        .await;
    assert_eq!(actor.as_deref(), Some("accessgov-worker"));
    assert_eq!((detail["via"].as_str(), detail["repairs_queued"].as_u64()), (Some("schedule"), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_member_is_reported_and_kept_then_removed_once_the_rule_is_exclusive() {
    let (app, provider) = spawn_live_app(|c| {
        c.rules.iter_mut().find(|r| r.application == LIVE_APP).unwrap().exclusive = true;
    })
    .await;
    provider.members.lock().unwrap().insert(("intruder".to_owned(), GROUP.to_owned()));
    let connectors = fake_connectors(&provider);
    let operator = Operator::new("auditor", Via::Cli).unwrap();
    // Reported, not removed, without --fix.
    let reports =
        reconcile::run(&app.pool, &app.config, &connectors, None, &operator, None, &mut |_, _, _, _| {}).await.unwrap();
    assert_eq!(reconcile::count(&reports, |f| matches!(f, Finding::Unmanaged { .. })), 1);
    assert!(provider.members().contains(&("intruder".to_owned(), GROUP.to_owned())));
    // With --fix, removed through the workers.
    let broker = accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone());
    reconcile::run(&app.pool, &app.config, &connectors, None, &operator, Some(&broker), &mut |_, _, _, _| {})
        .await
        .unwrap();
    eventually("the removal", Duration::from_secs(20), || async {
        (!provider.members().contains(&("intruder".to_owned(), GROUP.to_owned()))).then_some(())
    })
    .await;
    let revokes: Vec<String> = provider.calls().into_iter().filter(|c| c.op == "revoke").map(|c| c.subject).collect();
    assert_eq!(revokes, ["intruder"]);
    let decided: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'decided' AND detail->>'decision' = 'remove'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(decided["targets"], serde_json::json!([GROUP]));
    let detail: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'reconciled' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(detail["removals_queued"], 1);
}
