//! Leavers on the real broker and database: an approved offboarding revokes
//! every hold of its subject across applications, whatever ticket took it, and
//! lists them on the ticket; a second offboarding finds nothing and says so.

use crate::helpers::provider::FakeProvider;
use crate::helpers::{LIVE_APP, eventually, fixture, live_config, spawn_app_full};
use crate::jsm_flow::{actions_when, post, use_jsm};
use accessgov::config::RequestAction;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(30);
const LEAVER: &str = "712020:0e4b6a43-1f7c-4d5e-9a3b-2c1d0e9f8a7b";

/// The approved fixture as ticket `key` (issue `id`, changelog `cl`), for `application` / `level`.
fn ticket(
    key: &str,
    id: &str,
    cl: &str,
    application: Option<&str>,
    level: Option<&str>,
    request_type: &str,
) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    v["issue"]["key"] = json!(key);
    v["issue"]["id"] = json!(id);
    v["changelog"]["id"] = json!(cl);
    v["issue"]["fields"]["customfield_10010"]["requestType"]["name"] = json!(request_type);
    v["issue"]["fields"]["customfield_10050"] = application.map_or(Value::Null, |a| json!({"value": a}));
    v["issue"]["fields"]["customfield_10051"] = level.map_or(Value::Null, |l| json!({"value": l}));
    serde_json::to_vec(&v).unwrap()
}

fn comments_on(all: &[wiremock::Request], key: &str) -> Vec<String> {
    all.iter()
        .filter(|r| {
            r.method.as_str() == "POST" && r.url.path() == format!("/rest/servicedeskapi/request/{key}/comment")
        })
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["body"].as_str().unwrap().to_owned())
        .collect()
}

/// Confluence and Okta live behind one fake provider, JSM mocked (comments accepted),
/// "Offboard User" mapped to offboard.
async fn two_live_applications(
    include_unmanaged: bool,
) -> (MockServer, tempfile::TempDir, crate::helpers::TestApp, Arc<FakeProvider>) {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/rest/servicedeskapi/request/ACC-\d+/comment$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"size": 0, "start": 0, "limit": 50, "isLastPage": true, "values": []})),
        )
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
            c.applications.get_mut("Okta").unwrap().dry_run = false;
            c.jsm.request_types.insert("Offboard User".into(), RequestAction::Offboard);
            c.offboard.include_unmanaged = include_unmanaged;
        },
        connectors,
    )
    .await;
    (server, dir, app, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_revokes_holds_from_three_tickets_across_two_applications_and_lists_them() {
    let (server, _dir, app, provider) = two_live_applications(false).await;

    // Three tickets of the leaver: two for the same Confluence group, one for Okta.
    let grant = "Request Application Access";
    for body in [
        ticket("ACC-42", "10042", "1", Some(LIVE_APP), Some("Write"), grant),
        ticket("ACC-43", "10043", "2", Some(LIVE_APP), Some("Write"), grant),
        ticket("ACC-44", "10044", "3", Some("Okta"), Some("User"), grant),
    ] {
        let id = post(&app, &body).await;
        actions_when(&app, id, "written_back").await;
    }
    assert_eq!(
        provider.members().into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        ["confluence-developers", "okta-everyone"]
    );

    let offboarding = post(&app, &ticket("ACC-99", "10099", "9", None, None, "Offboard User")).await;
    let actions = actions_when(&app, offboarding, "offboarded").await;
    assert_eq!(actions, ["received", "offboarded"]);
    eventually("every hold revoked", WAIT, || async { provider.members().is_empty().then_some(()) }).await;
    // One provider revoke per membership: the Confluence group is released by two tickets, removed once.
    let revokes: Vec<String> = provider.calls().into_iter().filter(|c| c.op == "revoke").map(|c| c.target).collect();
    assert_eq!(revokes.len(), 2, "{revokes:?}");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id WHERE g.subject = $1",
    )
    .bind(LEAVER)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(held, 0);
    let summary: Value = sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'offboarded'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(summary["holds"], 3);
    let all = server.received_requests().await.unwrap();
    let listed = comments_on(&all, "ACC-99");
    assert_eq!(listed.len(), 1);
    for line in [
        "revoking 3 hold(s) in 2 application(s):",
        "- Confluence: confluence-developers (granted through ACC-42)",
        "- Confluence: confluence-developers (granted through ACC-43)",
        "- Okta: okta-everyone (granted through ACC-44)",
    ] {
        assert!(listed[0].contains(line), "missing {line:?} in:\n{}", listed[0]);
    }
    // The granting tickets are not told one by one.
    eventually("the revokes recorded", WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action IN ('revoked', 'hold_released')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (n >= 3).then_some(())
    })
    .await;
    let all = server.received_requests().await.unwrap();
    assert_eq!(comments_on(&all, "ACC-42").len(), 1, "only its grant's comment");

    // A second offboarding of the same person: nothing held, and it says so.
    let again = post(&app, &ticket("ACC-100", "10100", "10", None, None, "Offboard User")).await;
    actions_when(&app, again, "offboarded").await;
    let all = server.received_requests().await.unwrap();
    let said = comments_on(&all, "ACC-100");
    assert_eq!(said.len(), 1);
    assert!(said[0].contains("nothing to revoke"), "{}", said[0]);
    assert_eq!(provider.calls().iter().filter(|c| c.op == "revoke").count(), 2, "nothing revoked twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_include_unmanaged_memberships_accessgov_did_not_grant_are_read_back_and_removed_too() {
    let (server, _dir, app, provider) = two_live_applications(true).await;
    let id =
        post(&app, &ticket("ACC-42", "10042", "1", Some(LIVE_APP), Some("Write"), "Request Application Access")).await;
    actions_when(&app, id, "written_back").await;
    // Added by hand at Okta (a managed target), and to a group no rule manages.
    provider.members.lock().unwrap().insert((LEAVER.to_owned(), "okta-everyone".to_owned()));
    provider.members.lock().unwrap().insert((LEAVER.to_owned(), "some-team-group".to_owned()));

    let offboarding = post(&app, &ticket("ACC-99", "10099", "9", None, None, "Offboard User")).await;
    actions_when(&app, offboarding, "offboarded").await;
    eventually("both memberships removed", WAIT, || async {
        let left: Vec<String> = provider.members().into_iter().map(|(_, t)| t).collect();
        (left == ["some-team-group"]).then_some(())
    })
    .await;
    let summary: Value = sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'offboarded'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(summary["unmanaged"], json!([{"application": "Okta", "targets": ["okta-everyone"]}]));
    // The removal is decided and audited as what it is.
    let decided: Vec<Value> =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'decided' AND detail->>'decision' = 'remove'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["targets"], json!(["okta-everyone"]));
    let all = server.received_requests().await.unwrap();
    let listed = comments_on(&all, "ACC-99");
    assert!(listed[0].contains("- Okta: okta-everyone (not granted through accessgov; removed too)"), "{}", listed[0]);
    assert!(listed[0].contains("- Confluence: confluence-developers (granted through ACC-42)"), "{}", listed[0]);
}
