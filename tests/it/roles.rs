//! Birthright roles on the real broker and database: an approved onboarding
//! grants its role's bundle; a mover keeps the shared item and swaps the others.

use crate::helpers::provider::FakeProvider;
use crate::helpers::{LIVE_APP, eventually, fixture, live_config, spawn_app_full};
use crate::jsm_flow::{actions_when, post, use_jsm};
use accessgov::config::{RequestAction, RoleConfig, RoleGrant, RuleConfig};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(30);
const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";

fn onboarding(key: &str, id: &str, department: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["issue"]["key"] = json!(key);
    v["issue"]["id"] = json!(id);
    v["changelog"]["id"] = json!(format!("9{id}"));
    v["issue"]["fields"]["customfield_10010"]["requestType"]["name"] = json!("Onboard User");
    v["issue"]["fields"]["customfield_10050"] = Value::Null;
    v["issue"]["fields"]["customfield_10051"] = Value::Null;
    v["issue"]["fields"]["customfield_10080"] = json!({"value": department});
    serde_json::to_vec(&v).unwrap()
}

fn rule(application: &str, level: &str, group: &str) -> RuleConfig {
    let text = format!(
        "application = {application:?}\naccess_level = {level:?}\ngroups = [{group:?}]\napprovers = [{APPROVER:?}]\n"
    );
    toml::from_str(&text).unwrap()
}

fn role(department: &str, items: &[(&str, &str)]) -> RoleConfig {
    RoleConfig {
        department: department.into(),
        grants: items.iter().map(|(a, l)| RoleGrant { application: (*a).into(), access_level: (*l).into() }).collect(),
        approvers: vec![APPROVER.into()],
    }
}

fn held(provider: &FakeProvider) -> BTreeSet<String> {
    provider.members().into_iter().map(|(_, t)| t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_grants_the_bundle_and_a_mover_keeps_the_shared_item_and_swaps_the_others() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/servicedeskapi/request/ACC-\d+/comment$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let provider = Arc::new(FakeProvider::default());
    let connectors = crate::helpers::fake_connectors_for(&provider, &[LIVE_APP, "Okta", "Wiki"]);
    let app = spawn_app_full(
        |c| {
            live_config(c);
            use_jsm(c, &server, &dir);
            c.applications.get_mut("Okta").unwrap().dry_run = false;
            let wiki = c.applications[LIVE_APP].clone();
            c.applications.insert("Wiki".into(), wiki);
            c.rules.push(rule(LIVE_APP, "Read", "confluence-readers"));
            c.rules.push(rule("Wiki", "Write", "wiki-editors"));
            c.jsm.fields.department = Some("customfield_10080".into());
            c.jsm.request_types.insert("Onboard User".into(), RequestAction::Onboard);
            c.roles = vec![
                role("Engineering", &[("Okta", "User"), (LIVE_APP, "Write"), ("Wiki", "Write")]),
                role("Sales", &[("Okta", "User"), (LIVE_APP, "Read")]),
            ];
            assert_eq!(c.validate(), vec![]);
        },
        connectors,
    )
    .await;

    let joined = post(&app, &onboarding("ACC-1", "20001", "Engineering")).await;
    actions_when(&app, joined, "onboarded").await;
    let bundle: BTreeSet<String> = ["okta-everyone", "confluence-developers", "wiki-editors"].map(String::from).into();
    eventually("the bundle granted", WAIT, || async { (held(&provider) == bundle).then_some(()) }).await;
    // One hold per item, all held by the onboarding ticket.
    let tickets: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT ticket FROM grant_holds").fetch_all(&app.pool).await.unwrap();
    assert_eq!(tickets, ["ACC-1"]);

    let moved = post(&app, &onboarding("ACC-2", "20002", "Sales")).await;
    actions_when(&app, moved, "onboarded").await;
    let sales: BTreeSet<String> = ["okta-everyone", "confluence-readers"].map(String::from).into();
    eventually("the role swapped", WAIT, || async { (held(&provider) == sales).then_some(()) }).await;
    // The shared item was never touched: one grant call for okta-everyone, no revoke.
    let okta: Vec<&'static str> =
        provider.calls().iter().filter(|c| c.target == "okta-everyone").map(|c| c.op).collect();
    assert_eq!(okta, ["grant"]);
    let diff: Value =
        sqlx::query_scalar("SELECT detail->'diff' FROM audit_log WHERE action = 'onboarded' AND ticket = 'ACC-2'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(diff["keep"], json!([["Okta", "User", "ACC-1"]]));
    assert_eq!(diff["grant"], json!([[LIVE_APP, "Read"]]));
    assert_eq!(diff["revoke"], json!([[LIVE_APP, "Write", "ACC-1"], ["Wiki", "Write", "ACC-1"]]));
    let all = server.received_requests().await.unwrap();
    let comment = all
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/ACC-2/comment"))
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["body"].as_str().unwrap().to_owned())
        .next()
        .unwrap();
    assert!(comment.contains("from role \"Engineering\" (ACC-1) to \"Sales\""), "{comment}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onboarding_approved_by_someone_the_role_does_not_allow_grants_nothing() {
    let provider = Arc::new(FakeProvider::default());
    let connectors = crate::helpers::fake_connectors_for(&provider, &[LIVE_APP, "Okta"]);
    let app = spawn_app_full(
        |c| {
            live_config(c);
            c.applications.get_mut("Okta").unwrap().dry_run = false;
            c.jsm.fields.department = Some("customfield_10080".into());
            c.jsm.request_types.insert("Onboard User".into(), RequestAction::Onboard);
            let mut r = role("Engineering", &[("Okta", "User")]);
            r.approvers = vec!["someone-else".into()];
            c.roles = vec![r];
        },
        connectors,
    )
    .await;
    let id = post(&app, &onboarding("ACC-1", "20001", "Engineering")).await;
    let actions = actions_when(&app, id, "denied_by_policy").await;
    assert_eq!(actions, ["received", "denied_by_policy"]);
    let unknown = post(&app, &onboarding("ACC-3", "20003", "Astronauts")).await;
    actions_when(&app, unknown, "denied_by_policy").await;
    let code: String = sqlx::query_scalar(
        "SELECT detail->>'code' FROM audit_log WHERE action = 'denied_by_policy' AND ticket = 'ACC-3'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(code, "unknown_role");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(provider.calls().is_empty(), "nothing granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_approval_an_onboarding_is_confirmed_once_not_again_for_each_item() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The live ticket confirms the approval once; by the time the items are
    // decided it has moved on to a status that decides nothing.
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"key": "ACC-1", "fields": {"status": {"name": "Approved by Manager"}}})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACC-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"key": "ACC-1", "fields": {"status": {"name": "Done"}}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACC-1/approval"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "size": 1, "start": 0, "limit": 50, "isLastPage": true,
            "values": [{"id": "7", "name": "Waiting for approval", "finalDecision": "approved",
                        "approvers": [{"approver": {"accountId": APPROVER}, "approverDecision": "approved"}],
                        "completedDate": {"epochMillis": 1_764_086_000_000_i64}}],
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/servicedeskapi/request/ACC-\d+/comment$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    let provider = Arc::new(FakeProvider::default());
    let connectors = crate::helpers::fake_connectors_for(&provider, &[LIVE_APP, "Okta"]);
    let app = spawn_app_full(
        |c| {
            live_config(c);
            use_jsm(c, &server, &dir);
            c.jsm.verify_approval = Some(true);
            c.applications.get_mut("Okta").unwrap().dry_run = false;
            c.jsm.fields.department = Some("customfield_10080".into());
            c.jsm.request_types.insert("Onboard User".into(), RequestAction::Onboard);
            c.roles = vec![role("Engineering", &[("Okta", "User"), (LIVE_APP, "Write")])];
        },
        connectors,
    )
    .await;
    let id = post(&app, &onboarding("ACC-1", "20001", "Engineering")).await;
    actions_when(&app, id, "onboarded").await;
    let both: BTreeSet<String> = ["okta-everyone", "confluence-developers"].map(String::from).into();
    eventually("both items granted", WAIT, || async { (held(&provider) == both).then_some(()) }).await;
    let reads = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.url.path() == "/rest/api/3/issue/ACC-1")
        .count();
    assert_eq!(reads, 1, "the onboarding's approval is confirmed once");
}
