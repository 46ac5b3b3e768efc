//! Routing on the real broker and database, JSM mocked as Atlassian documents
//! it: a created ticket gets its approvers and one plan comment (however often
//! it is delivered, and whatever the ticket already shows), an invalid request
//! is told at once, and a two-stage rule grants only after both stages.

use crate::helpers::{LIVE_APP, eventually, fixture, spawn_live_app};
use crate::jsm_flow::{actions_when, basic, post, use_jsm};
use accessgov::config::{Config, StageConfig};
use serde_json::{Value, json};
use std::time::Duration;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(20);
const APPROVERS_FIELD: &str = "customfield_10003";
const RULE_APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";

/// The approved Confluence/Write fixture (ACC-42) as its ticket's creation.
fn creation() -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    body["webhookEvent"] = json!("jira:issue_created");
    body["issue"]["fields"]["status"] = json!({"id": "10001", "name": "Waiting for support"});
    serde_json::to_vec(&body).unwrap()
}

fn routing_config(c: &mut Config, server: &MockServer, dir: &tempfile::TempDir) {
    use_jsm(c, server, dir);
    c.jsm.fields.approvers = Some(APPROVERS_FIELD.into());
}

fn requests_to<'a>(all: &'a [Request], verb: &str, p: &str) -> Vec<&'a Request> {
    all.iter().filter(|r| r.method.as_str() == verb && r.url.path() == p).collect()
}

async fn mount_group(server: &MockServer, members: &[&str]) {
    Mock::given(method("GET"))
        .and(path("/rest/api/3/group/member"))
        .and(query_param("groupname", "confluence-admins"))
        .and(query_param("includeInactiveUsers", "false"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "isLast": true, "maxResults": 50, "startAt": 0, "total": members.len(),
            "values": members.iter().map(|m| json!({"accountId": m, "active": true, "displayName": m})).collect::<Vec<_>>(),
        })))
        .mount(server)
        .await;
}

async fn mount_issue(server: &MockServer, approvers: &[&str]) {
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .and(query_param("fields", APPROVERS_FIELD))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "10042", "key": "ACC-42",
            "fields": {APPROVERS_FIELD: approvers.iter().map(|a| json!({"accountId": a})).collect::<Vec<_>>()},
        })))
        .mount(server)
        .await;
}

async fn mount_comments(server: &MockServer, bodies: &[&str]) {
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .and(query_param("start", "0"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "size": bodies.len(), "start": 0, "limit": 50, "isLastPage": true,
            "values": bodies.iter().enumerate().map(|(i, b)| json!({"id": i.to_string(), "body": b, "public": false})).collect::<Vec<_>>(),
        })))
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_ticket_gets_its_approvers_and_one_plan_comment_even_when_delivered_three_times() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_group(&server, &["admin-1", "admin-2"]).await;
    mount_issue(&server, &[]).await;
    mount_comments(&server, &[]).await;
    Mock::given(method("PUT"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .and(header("authorization", basic().as_str()))
        .and(body_json(json!({"fields": {APPROVERS_FIELD: [
            {"accountId": "admin-1"}, {"accountId": "admin-2"}, {"accountId": RULE_APPROVER}
        ]}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "9"})))
        .expect(1)
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| routing_config(c, &server, &dir)).await;

    let body = creation();
    let id = post(&app, &body).await;
    assert_eq!(post(&app, &body).await, id, "the same creation is the same event");
    assert_eq!(post(&app, &body).await, id);
    eventually("three deliveries handled", WAIT, || async {
        let actions: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        (actions == ["received", "routed", "duplicate"]).then_some(())
    })
    .await;
    // The third delivery is recorded without a second duplicate row; give it time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rows = app.audit_actions(id).await;
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["received", "routed", "duplicate"]);
    assert_eq!(rows[1].1, "ok");
    assert!(provider.calls().is_empty(), "routing calls no provider");
    let all = server.received_requests().await.unwrap();
    let comments = requests_to(&all, "POST", "/rest/servicedeskapi/request/ACC-42/comment");
    assert_eq!(comments.len(), 1);
    let comment: Value = serde_json::from_slice(&comments[0].body).unwrap();
    assert_eq!(comment["public"], false, "the plan is an internal note");
    let text = comment["body"].as_str().unwrap();
    for expected in [
        format!("accessgov plan for ACC-42 ({LIVE_APP}, access level \"Write\")"),
        "- add Dana Requester to confluence-developers in Confluence (confluence)".into(),
        "The access expires 90d after it is granted".into(),
        format!("Must be approved by: admin-1, admin-2, {RULE_APPROVER} (not by the requester)."),
        "[accessgov:plan:created]".into(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    let stored: Value = sqlx::query_scalar("SELECT plan FROM routings WHERE ticket = 'ACC-42' AND step = 'created'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored["ops"], json!(["grant:confluence-developers"]));
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_writes_nothing_the_ticket_already_shows() {
    // A crash after writing to the ticket and before recording it: the ticket
    // shows the approvers and the plan comment, the database does not.
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_group(&server, &["admin-1"]).await;
    mount_issue(&server, &[RULE_APPROVER, "admin-1"]).await;
    mount_comments(&server, &["accessgov plan for ACC-42 ...\n[accessgov:plan:created]"]).await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(204)).expect(0).mount(&server).await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).expect(0).mount(&server).await;
    let (app, _provider) = spawn_live_app(|c| routing_config(c, &server, &dir)).await;

    let id = post(&app, &creation()).await;
    let actions = actions_when(&app, id, "routed").await;
    assert_eq!(actions, ["received", "routed"]);
    let written: Value =
        sqlx::query_scalar("SELECT detail->'written' FROM audit_log WHERE event_id = $1 AND action = 'routed'")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(written["fields"], false);
    assert_eq!(written["plan_comment"], false);
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_is_told_at_once_and_transitioned() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The creation fixture asks for GitHub, which this config does not integrate.
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-102/comment"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"size": 0, "start": 0, "limit": 50, "isLastPage": true, "values": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-102/comment"))
        .and(header("authorization", basic().as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-102/transitions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"transitions": [{"id": "41", "name": "Decline", "to": {"name": "Declined"}}]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/ACC-102/transitions"))
        .and(body_json(json!({"transition": {"id": "41"}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (app, _provider) = spawn_live_app(|c| {
        routing_config(c, &server, &dir);
        c.jsm.write_back.transition_on_invalid = Some("Declined".into());
    })
    .await;

    let body = fixture("webhook-created-status-from-null.json");
    let id = post(&app, &body).await;
    let actions = actions_when(&app, id, "invalid_request").await;
    assert_eq!(actions, ["received", "invalid_request"]);
    let all = server.received_requests().await.unwrap();
    let posted = requests_to(&all, "POST", "/rest/servicedeskapi/request/ACC-102/comment");
    let comment: Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(comment["public"], true, "the requester is told");
    let text = comment["body"].as_str().unwrap();
    assert!(text.contains("application \"GitHub\" is not integrated with accessgov"), "{text}");
    assert!(text.contains("choose an application and access type from the lists"), "{text}");
    // Delivered again: recorded as a duplicate, nothing written twice.
    assert_eq!(post(&app, &body).await, id);
    actions_when(&app, id, "duplicate").await;
    server.verify().await;
}

/// A JSM approval named as a stage, approved by `who`, completed at `ms`.
fn stage_approval(id: &str, stage: &str, who: &str, ms: i64) -> Value {
    json!({
        "id": id, "name": stage, "finalDecision": "approved", "canAnswerApproval": false,
        "approvers": [{"approver": {"accountId": who, "displayName": who, "active": true}, "approverDecision": "approved"}],
        "createdDate": {"epochMillis": ms - 60_000}, "completedDate": {"epochMillis": ms},
    })
}

fn approvals_page(values: Vec<Value>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "size": values.len(), "start": 0, "limit": 50, "isLastPage": true, "values": values,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_rule_grants_only_after_both_stages() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .and(query_param("fields", "status"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"key": "ACC-42", "fields": {"status": {"name": "Approved by Manager"}}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .and(query_param("accountId", "sec-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"name": "security", "groupId": "g-s"}])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    // The first approval: only the manager's stage is approved.
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-42/approval"))
        .respond_with(approvals_page(vec![stage_approval("1", "Manager approval", "mgr-1", 1_764_086_000_000)]))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    // Then both stages.
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-42/approval"))
        .respond_with(approvals_page(vec![
            stage_approval("1", "Manager approval", "mgr-1", 1_764_086_000_000),
            stage_approval("2", "Security approval", "sec-1", 1_764_086_300_000),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    // Entering the security stage sets that stage's approvers: its group, in the groups field.
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .and(query_param("fields", "customfield_10003,customfield_10004"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"key": "ACC-42", "fields": {"customfield_10003": [{"accountId": "mgr-1"}], "customfield_10004": null}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .and(header("authorization", basic().as_str()))
        .and(body_json(json!({"fields": {"customfield_10003": [], "customfield_10004": [{"name": "security"}]}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| {
        use_jsm(c, &server, &dir);
        c.jsm.fields.approvers = Some("customfield_10003".into());
        c.jsm.fields.approver_groups = Some("customfield_10004".into());
        c.jsm.stage_statuses = vec!["Manager approval".into(), "Security approval".into()];
        c.jsm.verify_approval = Some(true);
        let rule = c.rules.iter_mut().find(|r| r.application == LIVE_APP).unwrap();
        rule.approvers.clear();
        rule.stages = vec![
            StageConfig { status: "Manager approval".into(), approvers: vec!["mgr-1".into()], min_approvals: 1 },
            StageConfig {
                status: "Security approval".into(),
                approvers: vec!["group:security".into()],
                min_approvals: 1,
            },
        ];
    })
    .await;

    let first = fixture("webhook-approved-confluence-write.json");
    let mut entered: Value = serde_json::from_slice(&first).unwrap();
    entered["changelog"]["id"] = json!("20070");
    let status_item =
        entered["changelog"]["items"].as_array_mut().unwrap().iter_mut().find(|i| i["fieldId"] == "status").unwrap();
    status_item["toString"] = json!("Security approval");
    let stage = post(&app, &serde_json::to_vec(&entered).unwrap()).await;
    let actions = actions_when(&app, stage, "routed").await;
    assert_eq!(actions, ["received", "routed"]);
    assert!(provider.calls().is_empty(), "entering a stage grants nothing");

    let id = post(&app, &first).await;
    actions_when(&app, id, "denied_by_policy").await;
    let reason: String =
        sqlx::query_scalar("SELECT detail->>'code' FROM audit_log WHERE event_id = $1 AND action = 'denied_by_policy'")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reason, "stage_not_approved");
    assert!(provider.calls().is_empty(), "one stage approved grants nothing");

    // The ticket comes back to the approved status after the second stage.
    let mut second: Value = serde_json::from_slice(&first).unwrap();
    second["changelog"]["id"] = json!("20078");
    second["timestamp"] = json!(1_764_086_400_999_i64);
    let id2 = post(&app, &serde_json::to_vec(&second).unwrap()).await;
    let actions = actions_when(&app, id2, "granted").await;
    assert_eq!(actions[..3], ["received", "decided", "granted"]);
    assert_eq!(provider.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_jira_refuses_is_dead_lettered_and_its_replay_preview_routes_without_provider_calls() {
    use accessgov::dead_letters::{self, Filter, StateFilter};
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_group(&server, &["admin-1"]).await;
    mount_issue(&server, &[]).await;
    // The Approvers field is not on the edit screen: a permanent error.
    Mock::given(method("PUT"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"errorMessages": [], "errors": {APPROVERS_FIELD: "Field cannot be set. It is not on the appropriate screen"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/servicedeskapi/request/ACC-42/comment"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| routing_config(c, &server, &dir)).await;

    let id = post(&app, &creation()).await;
    let actions = actions_when(&app, id, "dead_lettered").await;
    assert!(actions.starts_with(&["received".to_owned(), "provider_error".to_owned()]), "{actions:?}");
    assert!(!actions.contains(&"routed".to_owned()), "nothing was recorded as routed: {actions:?}");
    let routed: i64 = sqlx::query_scalar("SELECT count(*) FROM routings").fetch_one(&app.pool).await.unwrap();
    assert_eq!(routed, 0, "a failed routing is not marked done, so a replay routes it");

    let open = Filter { state: StateFilter::Open, ..Default::default() };
    let letter = eventually("the dead letter", WAIT, || async {
        dead_letters::list(&app.pool, &open).await.unwrap().into_iter().find(|d| d.event_id == Some(id))
    })
    .await;
    let preview = dead_letters::preview(&app.pool, &app.config, &letter, None).await.unwrap();
    assert_eq!(preview.would, "route");
    assert!(preview.provider_calls.is_empty());
    assert!(preview.remarks.iter().any(|r| r.contains("approvers group:confluence-admins")), "{:?}", preview.remarks);
    assert!(provider.calls().is_empty());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applied_comment_says_what_changed_since_the_plan() {
    use wiremock::matchers::path_regex;
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_group(&server, &["admin-1"]).await;
    mount_issue(&server, &[]).await;
    mount_comments(&server, &[]).await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/rest/api/3/issue/ACC-42"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/servicedeskapi/request/ACC-4[23]/comment$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let (app, provider) = spawn_live_app(|c| routing_config(c, &server, &dir)).await;

    // ACC-42 is created: the plan adds Dana to confluence-developers.
    let created = post(&app, &creation()).await;
    actions_when(&app, created, "routed").await;
    // Before it is approved, another ticket of Dana's gets the same group.
    let mut other: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    other["issue"]["id"] = json!("10043");
    other["issue"]["key"] = json!("ACC-43");
    other["changelog"]["id"] = json!("20099");
    let other = post(&app, &serde_json::to_vec(&other).unwrap()).await;
    actions_when(&app, other, "written_back").await;
    assert_eq!(provider.calls().len(), 1);
    // ACC-42 is approved: nothing left to add, and its comment says the plan changed.
    let approved = post(&app, &fixture("webhook-approved-confluence-write.json")).await;
    let actions = actions_when(&app, approved, "written_back").await;
    assert!(actions.contains(&"hold_added".to_owned()), "{actions:?}");
    assert_eq!(provider.calls().len(), 1, "no second provider call");
    let all = server.received_requests().await.unwrap();
    let bodies: Vec<String> = requests_to(&all, "POST", "/rest/servicedeskapi/request/ACC-42/comment")
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "the plan, then the outcome: {bodies:?}");
    assert!(
        bodies[1].contains(
            "Changed since the plan posted when this request was routed: planned but no longer needed or \
             configured: grant:confluence-developers."
        ),
        "{}",
        bodies[1]
    );
    // ACC-43 was never routed: its comment has no such line.
    let other_bodies = requests_to(&all, "POST", "/rest/servicedeskapi/request/ACC-43/comment");
    let text: Value = serde_json::from_slice(&other_bodies[0].body).unwrap();
    assert!(!text["body"].as_str().unwrap().contains("Changed since the plan"), "{text}");
}
