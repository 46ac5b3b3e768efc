//! The worker talking to JSM (mocked with wiremock, as Atlassian documents the
//! calls): group approvers, approval verification, write-back; and expiry.

use crate::helpers::{TestApp, eventually, fixture, spawn_live_app};
use accessgov::config::Config;
use serde_json::{Value, json};
use std::time::Duration;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(20);
const EMAIL: &str = "accessgov-bot@example.com";
const TOKEN: &str = "jsm-api-token";

/// Points `[jsm]` at the mock with file-based credentials (no process env needed).
pub(crate) fn use_jsm(c: &mut Config, server: &MockServer, dir: &tempfile::TempDir) {
    let email = dir.path().join("email");
    let token = dir.path().join("token");
    std::fs::write(&email, EMAIL).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    c.jsm.base_url = server.uri();
    c.jsm.email_env = None;
    c.jsm.api_token_env = None;
    c.jsm.email_file = Some(email.display().to_string());
    c.jsm.api_token_file = Some(token.display().to_string());
    c.jsm.write_back.transition_on_failure = None;
    // With credentials, verification is on by default; these tests are about the
    // other JSM calls, and verification has tests of its own.
    c.jsm.verify_approval = Some(false);
}

pub(crate) fn basic() -> String {
    use std::io::Write;
    // base64 of "email:token", written out to avoid a dependency for one header.
    let raw = format!("{EMAIL}:{TOKEN}");
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for chunk in raw.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.write_all(&[table[((n >> (18 - 6 * i)) & 63) as usize]]).unwrap();
            } else {
                out.write_all(b"=").unwrap();
            }
        }
    }
    format!("Basic {}", String::from_utf8(out).unwrap())
}

fn approval_by(approver: &str) -> Vec<u8> {
    String::from_utf8(fixture("webhook-approved-confluence-write.json"))
        .unwrap()
        .replace("5f8e1b2c3d4a5b6c7d8e9f01", approver)
        .into_bytes()
}

pub(crate) async fn post(app: &TestApp, body: &[u8]) -> uuid::Uuid {
    let resp = app.post_signed(body, None).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap()
}

pub(crate) async fn actions_when(app: &TestApp, id: uuid::Uuid, last: &str) -> Vec<String> {
    eventually(last, WAIT, || async {
        let rows: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        rows.iter().any(|a| a == last).then_some(rows)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_approver_is_resolved_through_jira_and_the_ticket_is_told() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .and(query_param("accountId", "member-of-admins"))
        .and(header("authorization", basic().as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([{"name": "confluence-admins", "groupId": "g-1"}])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-42/transitions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"transitions": [{"id": "31", "name": "Done", "to": {"name": "Done"}}]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/ACC-42/transitions"))
        .and(body_json(json!({"transition": {"id": "31"}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| use_jsm(c, &server, &dir)).await;
    let id = post(&app, &approval_by("member-of-admins")).await;
    let actions = actions_when(&app, id, "written_back").await;
    assert_eq!(actions, vec!["received", "decided", "granted", "written_back"]);
    assert_eq!(provider.calls().len(), 1);
    let comment: Value = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path().ends_with("/comment"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .unwrap();
    assert_eq!(comment["public"], true);
    assert!(comment["body"].as_str().unwrap().contains("added to confluence-developers"), "{comment}");
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_approval_a_payload_the_live_ticket_does_not_confirm_is_refused() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The rule lists a group: approver, so the approver's groups are looked up first.
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"key": "ACC-42", "fields": {"status": {"name": "Rejected"}}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-42/approval"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"size": 0, "start": 0, "limit": 50, "isLastPage": true, "values": []})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| {
        use_jsm(c, &server, &dir);
        c.jsm.verify_approval = Some(true);
    })
    .await;
    let id = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    let actions = actions_when(&app, id, "denied_by_policy").await;
    assert!(!actions.contains(&"granted".to_owned()), "{actions:?}");
    let code: Value = sqlx::query_scalar(
        "SELECT detail -> 'code' FROM audit_log WHERE event_id = $1 AND action = 'denied_by_policy'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(code, "approval_not_confirmed");
    assert!(provider.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_is_revoked_by_the_sweeper() {
    let (app, provider) = spawn_live_app(|c| {
        c.rules[0].max_duration = Some(Duration::from_secs(1));
        c.worker.expiry_interval = Duration::from_millis(100);
    })
    .await;
    let id = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    actions_when(&app, id, "granted").await;
    let expired: (String, Value) = eventually("the expiry", WAIT, || async {
        sqlx::query_as("SELECT outcome, detail FROM audit_log WHERE action = 'expired'")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(expired.0, "ok");
    assert_eq!(expired.1["provider_result"], "revoked");
    assert!(provider.members().is_empty());
    let ops: Vec<&str> = provider.calls().iter().map(|c| c.op).collect();
    assert_eq!(ops, vec!["grant", "revoke"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_application_writes_nothing_back_to_jsm() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).expect(0).mount(&server).await;
    // One delivery at a time, so that once the second event is recorded the first
    // one's processing, write-back included, is over.
    let app = crate::helpers::spawn_app_with(|c| {
        use_jsm(c, &server, &dir);
        c.worker.concurrency = 1;
        c.broker.prefetch = 1;
    })
    .await;
    let first = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    let other =
        String::from_utf8(fixture("webhook-approved-confluence-write.json")).unwrap().replace("ACC-42", "ACC-43");
    let second = post(&app, other.replace("\"20077\"", "\"20078\"").as_bytes()).await;
    actions_when(&app, second, "dry_run").await;
    let actions: Vec<String> = app.audit_actions(first).await.into_iter().map(|r| r.0).collect();
    assert_eq!(actions, vec!["received", "decided", "dry_run"]);
    server.verify().await;
}

/// JSM answering for ACC-118: the status, and one approval by Morgan with `decision`.
async fn live_ticket(server: &MockServer, decision: &str) {
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-118"))
        .and(header("authorization", basic().as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"key": "ACC-118", "fields": {"status": {"name": "Approved by Manager"}}})),
        )
        .mount(server)
        .await;
    let approval = json!({
        "id": "9", "name": "Manager approval", "finalDecision": decision, "canAnswerApproval": false,
        "approvers": [{"approver": {"accountId": "5f8e1b2c3d4a5b6c7d8e9f01", "displayName": "Morgan Manager"},
                       "approverDecision": decision}],
        "createdDate": {"epochMillis": 1_764_591_000_000_i64},
        "completedDate": {"epochMillis": 1_764_591_400_000_i64}
    });
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-118/approval"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"size": 1, "start": 0, "limit": 50, "isLastPage": true, "values": [approval]})),
        )
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jsm_credentials_verification_is_on_by_default_and_only_a_confirmed_approval_grants() {
    for (decision, granted) in [("declined", false), ("approved", true)] {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        live_ticket(&server, decision).await;
        let (app, provider) = spawn_live_app(|c| {
            use_jsm(c, &server, &dir);
            c.jsm.verify_approval = None;
        })
        .await;
        // The approver field names Morgan; an app user moved the ticket. Only JSM can confirm it.
        let id = post(&app, &fixture("webhook-approver-field-fallback.json")).await;
        let last = if granted { "granted" } else { "denied_by_policy" };
        let actions = actions_when(&app, id, last).await;
        assert_eq!(actions.contains(&"granted".to_owned()), granted, "{decision}: {actions:?}");
        assert_eq!(provider.calls().len(), usize::from(granted), "{decision}");
        let asked = server.received_requests().await.unwrap_or_default();
        assert!(asked.iter().any(|r| r.url.path() == "/rest/servicedeskapi/request/ACC-118/approval"), "{decision}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_can_mark_an_expiry_enqueued_so_a_sweep_never_stops_at_its_first_due_hold() {
    // The sweeper runs once at start (before the grant) and then not for an hour:
    // this test drives the sweep's two statements itself, as the services' role.
    let (app, _provider) = spawn_live_app(|c| {
        c.rules[0].max_duration = Some(Duration::from_secs(1));
        c.worker.expiry_interval = Duration::from_secs(3600);
    })
    .await;
    let id = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    actions_when(&app, id, "granted").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let runtime = sqlx::PgPool::connect(&app.config.database.url).await.unwrap();
    let live = vec![crate::helpers::LIVE_APP.to_owned()];
    let due = accessgov::grants::due_expiries(&runtime, &live, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    accessgov::grants::mark_expiry_enqueued(&runtime, &due[0]).await.expect("the services' role marks it");
    assert!(accessgov::grants::due_expiries(&runtime, &live, 10).await.unwrap().is_empty());
    runtime.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_told_once_before_its_time_bound_access_expires() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    // The first notice fails (JSM down): it is tried again on the next sweep, and posted once.
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .and(wiremock::matchers::body_string_contains("expires at"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| {
        use_jsm(c, &server, &dir);
        // The rule grants for 90 days; a 100-day notice window makes it due at once.
        c.jsm.write_back.expiry_notice = Some(Duration::from_secs(100 * 86_400));
        c.worker.expiry_interval = Duration::from_millis(100);
    })
    .await;
    let id = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    actions_when(&app, id, "granted").await;
    let notice: Value = eventually("the notice", WAIT, || async {
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'expiry_notice'")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(notice["targets"], json!(["confluence-developers"]));
    // Several more sweeps: no second notice.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let all = server.received_requests().await.unwrap();
    let notices: Vec<String> = all
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/comment"))
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["body"].as_str().unwrap().to_owned())
        .filter(|b| b.contains("expires at"))
        .collect();
    assert_eq!(notices.len(), 2, "one refused by JSM, then one posted: {notices:?}");
    assert!(notices[1].contains("confluence-developers in Confluence"), "{}", notices[1]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'expiry_notice'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(provider.members().len(), 1, "a notice revokes nothing");
}
