use super::*;
use crate::config::RequestAction;
use crate::event::{Approver, ApproverSource, Person, SCHEMA_V1, Source, StatusChange, Ticket, event_id_for};
use chrono::TimeZone;
use reqwest::header::HeaderValue;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const EMAIL: &str = "bot@example.com";
const TOKEN: &str = "tok-s3cret-XYZ";
/// `base64("bot@example.com:tok-s3cret-XYZ")`, computed outside Rust so the test does not trust our encoder.
const BASIC: &str = "Basic Ym90QGV4YW1wbGUuY29tOnRvay1zM2NyZXQtWFla";

fn client(server: &MockServer) -> JsmClient {
    JsmClient::new(&server.uri(), SecretString::from(EMAIL), SecretString::from(TOKEN), Duration::from_secs(300))
}

/// A mock that also insists on the Basic credentials and `Accept: application/json`.
fn given(verb: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb)).and(path(p)).and(header("authorization", BASIC)).and(header("accept", "application/json"))
}

fn approval(id: &str, final_decision: &str, approvers: &[(&str, &str)]) -> Value {
    json!({
        "id": id,
        "name": "Manager approval",
        "finalDecision": final_decision,
        "canAnswerApproval": false,
        "approvers": approvers.iter().map(|(acc, d)| json!({
            "approver": {"accountId": acc, "displayName": format!("User {acc}"), "active": true,
                         "timeZone": "Europe/Berlin", "_links": {}},
            "approverDecision": d,
        })).collect::<Vec<_>>(),
        "createdDate": {"iso8601": "2024-05-01T10:00:00+0000", "jira": "2024-05-01T10:00:00.000+0000",
                        "friendly": "Today 10:00 AM", "epochMillis": 1_714_557_600_000_i64},
        "completedDate": {"iso8601": "2024-05-01T10:05:00+0000", "jira": "2024-05-01T10:05:00.000+0000",
                          "friendly": "Today 10:05 AM", "epochMillis": 1_714_557_900_000_i64},
        "_links": {"self": format!("https://example.atlassian.net/rest/servicedeskapi/request/10001/approval/{id}")},
    })
}

async fn error_for(status: u16, headers: &[(&str, &str)]) -> JsmError {
    let server = MockServer::start().await;
    let mut resp =
        ResponseTemplate::new(status).set_body_json(json!({"errorMessages": ["Something about ACC-1"], "errors": {}}));
    for (k, v) in headers {
        resp = resp.insert_header(*k, *v);
    }
    given("GET", "/rest/api/3/user/groups").respond_with(resp).expect(1).mount(&server).await;
    client(&server).user_groups("acc-1").await.unwrap_err()
}

// --- user_groups -----------------------------------------------------------------------------------

#[tokio::test]
async fn user_groups_returns_the_group_names_and_a_second_call_within_the_ttl_makes_no_http_call() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/user/groups")
        .and(query_param("accountId", "5b10ac8d82e05b22cc7d4ef5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"name": "jira-admins", "groupId": "276f955c-63d7-42c8-9520-92d01dca0625",
             "self": "https://example.atlassian.net/rest/api/3/group?groupId=276f955c-63d7-42c8-9520-92d01dca0625"},
            {"name": "okta-approvers", "groupId": "9a1b2c3d-0000-4000-8000-000000000001"}
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let jsm = client(&server);

    let first = jsm.user_groups("5b10ac8d82e05b22cc7d4ef5").await.unwrap();
    let second = jsm.clone().user_groups("5b10ac8d82e05b22cc7d4ef5").await.unwrap();

    assert_eq!(first, vec!["jira-admins".to_owned(), "okta-approvers".to_owned()]);
    assert_eq!(second, first);
    assert!(jsm.in_group("5b10ac8d82e05b22cc7d4ef5", "JIRA-Admins").await.unwrap());
    assert!(!jsm.in_group("5b10ac8d82e05b22cc7d4ef5", "finance").await.unwrap());
}

#[tokio::test]
async fn user_groups_are_fetched_again_once_the_ttl_has_passed() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"name": "jira-admins", "groupId": "g1"}])))
        .expect(2)
        .mount(&server)
        .await;
    let jsm = JsmClient::new(&server.uri(), SecretString::from(EMAIL), SecretString::from(TOKEN), Duration::ZERO);

    jsm.user_groups("acc-1").await.unwrap();
    jsm.user_groups("acc-1").await.unwrap();
}

#[tokio::test]
async fn user_groups_errors_are_not_cached() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    given("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"name": "jira-admins", "groupId": "g1"}])))
        .expect(1)
        .mount(&server)
        .await;
    let jsm = client(&server);

    assert!(jsm.user_groups("acc-1").await.unwrap_err().is_transient());
    assert_eq!(jsm.user_groups("acc-1").await.unwrap(), vec!["jira-admins".to_owned()]);
}

// --- approval_state ------------------------------------------------------------------------------

#[tokio::test]
async fn approval_state_reads_the_status_and_follows_every_approval_page() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/issue/ACC-42")
        .and(query_param("fields", "status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "10042", "key": "ACC-42", "self": "https://example.atlassian.net/rest/api/3/issue/10042",
            "fields": {"status": {"id": "10009", "name": "Approved",
                                  "statusCategory": {"id": 3, "key": "done", "name": "Done"}}}
        })))
        .expect(1)
        .mount(&server)
        .await;
    given("GET", "/rest/servicedeskapi/request/ACC-42/approval")
        .and(query_param("start", "0"))
        .and(query_param("limit", "50"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "size": 2, "start": 0, "limit": 2, "isLastPage": false,
            "values": [approval("1", "declined", &[("acc-a", "declined")]),
                       approval("2", "pending", &[("acc-a", "pending"), ("acc-b", "pending")])],
            "_links": {}
        })))
        .expect(1)
        .mount(&server)
        .await;
    given("GET", "/rest/servicedeskapi/request/ACC-42/approval")
        .and(query_param("start", "2"))
        .and(query_param("limit", "50"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "size": 1, "start": 2, "limit": 2, "isLastPage": true,
            "values": [approval("3", "approved", &[("acc-a", "pending"), ("acc-b", "approved")])],
            "_links": {}
        })))
        .expect(1)
        .mount(&server)
        .await;

    let state = client(&server).approval_state("ACC-42").await.unwrap();

    assert_eq!(state.status, "Approved");
    let ids: Vec<&str> = state.approvals.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(
        state.approvals[2],
        Approval {
            id: "3".into(),
            name: "Manager approval".into(),
            final_decision: "approved".into(),
            approvers: vec![("acc-a".into(), "pending".into()), ("acc-b".into(), "approved".into())],
            completed_epoch_ms: Some(1_714_557_900_000),
        }
    );
}

#[tokio::test]
async fn approval_state_of_a_missing_issue_is_not_found() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/issue/ACC-404")
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}),
        ))
        .expect(1)
        .mount(&server)
        .await;

    let err = client(&server).approval_state("ACC-404").await.unwrap_err();

    let JsmError::NotFound(msg) = &err else { panic!("expected NotFound, got {err:?}") };
    assert!(msg.contains("ACC-404") && msg.contains("Issue does not exist"), "{msg}");
}

// --- comment -----------------------------------------------------------------------------------------

#[tokio::test]
async fn comment_posts_the_plain_text_body_and_the_public_flag_as_json() {
    let server = MockServer::start().await;
    given("POST", "/rest/servicedeskapi/request/ACC-7/comment")
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"body": "Access granted: okta group Salesforce-Users.", "public": false})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "1000", "body": "Access granted: okta group Salesforce-Users.", "public": false
        })))
        .expect(1)
        .mount(&server)
        .await;

    client(&server).comment("ACC-7", "Access granted: okta group Salesforce-Users.", false).await.unwrap();
}

#[tokio::test]
async fn comment_refused_with_400_is_permanent_and_carries_jiras_message() {
    let server = MockServer::start().await;
    given("POST", "/rest/servicedeskapi/request/ACC-7/comment")
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"errorMessage": "Customers can only add public comments"})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let err = client(&server).comment("ACC-7", "x", false).await.unwrap_err();

    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("Customers can only add public comments"), "{err}");
}

// --- transition --------------------------------------------------------------------------------------

async fn mount_transitions(server: &MockServer) {
    given("GET", "/rest/api/3/issue/ACC-9/transitions")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "expand": "transitions",
            "transitions": [
                {"id": "21", "name": "Start work", "hasScreen": false, "isGlobal": false, "isInitial": false,
                 "isAvailable": true, "isConditional": false, "isLooped": false,
                 "to": {"id": "3", "name": "In Progress", "statusCategory": {"id": 4, "key": "indeterminate"}}},
                {"id": "31", "name": "Resolve this issue", "hasScreen": false,
                 "to": {"id": "10011", "name": "Done", "statusCategory": {"id": 3, "key": "done"}}}
            ]
        })))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn transition_resolves_a_transition_name_case_insensitively_and_posts_its_id() {
    let server = MockServer::start().await;
    mount_transitions(&server).await;
    given("POST", "/rest/api/3/issue/ACC-9/transitions")
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"transition": {"id": "31"}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;

    client(&server).transition("ACC-9", "resolve THIS issue").await.unwrap();
}

#[tokio::test]
async fn transition_resolves_a_target_status_name_through_to_name() {
    let server = MockServer::start().await;
    mount_transitions(&server).await;
    given("POST", "/rest/api/3/issue/ACC-9/transitions")
        .and(body_json(json!({"transition": {"id": "21"}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;

    client(&server).transition("ACC-9", "in progress").await.unwrap();
}

#[tokio::test]
async fn transition_without_a_match_is_permanent_lists_the_available_ones_and_posts_nothing() {
    let server = MockServer::start().await;
    mount_transitions(&server).await;
    given("POST", "/rest/api/3/issue/ACC-9/transitions")
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;

    let err = client(&server).transition("ACC-9", "Granted").await.unwrap_err();

    let JsmError::Permanent(msg) = &err else { panic!("expected Permanent, got {err:?}") };
    for needle in ["\"Granted\"", "\"Start work\"", "\"In Progress\"", "\"Resolve this issue\"", "\"Done\""] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
}

// --- error classification ------------------------------------------------------------------------------

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_transient_with_that_delay() {
    let err = error_for(429, &[("Retry-After", "7")]).await;
    assert!(matches!(err, JsmError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)), "{err:?}");
}

#[tokio::test]
async fn a_429_with_only_x_ratelimit_reset_waits_until_that_instant() {
    let reset = (Utc::now() + chrono::Duration::seconds(120)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let err = error_for(429, &[("X-RateLimit-Reset", reset.as_str()), ("RateLimit-Reason", "jira-quota-based")]).await;
    let wait = err.retry_after().expect("a hint");
    assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_401_is_unauthorized_with_a_hint_and_never_shows_the_credentials() {
    let err = error_for(401, &[]).await;
    let JsmError::Unauthorized(msg) = &err else { panic!("expected Unauthorized, got {err:?}") };
    assert!(msg.contains("check the JSM email/API token") && msg.contains("browse the project"), "{msg}");
    let shown = format!("{err} {err:?}");
    for secret in [TOKEN, EMAIL, BASIC, "Ym90QGV4YW1wbGUuY29t", "Basic"] {
        assert!(!shown.contains(secret), "{secret} leaked into: {shown}");
    }
}

#[tokio::test]
async fn a_403_is_unauthorized_too() {
    assert_eq!(error_for(403, &[]).await.class(), "unauthorized");
}

#[tokio::test]
async fn a_503_is_transient_and_keeps_a_retry_after_if_sent() {
    let err = error_for(503, &[]).await;
    assert!(matches!(err, JsmError::Transient { retry_after: None, .. }), "{err:?}");
    let err = error_for(503, &[("Retry-After", "30")]).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn a_server_echoing_the_token_back_does_not_put_it_in_the_message() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(400).set_body_string(format!("bad token {TOKEN} for {EMAIL}")))
        .mount(&server)
        .await;
    let err = client(&server).user_groups("acc-1").await.unwrap_err();
    let shown = err.to_string();
    assert!(!shown.contains(TOKEN) && !shown.contains(EMAIL) && shown.contains("[REDACTED]"), "{shown}");
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let jsm =
        JsmClient::new(&format!("http://{addr}"), SecretString::from(EMAIL), SecretString::from(TOKEN), Duration::ZERO);
    let err = jsm.comment("ACC-1", "x", true).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_transient() {
    let server = MockServer::start().await;
    given("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let jsm = JsmClient::with_timeout(
        &server.uri(),
        SecretString::from(EMAIL),
        SecretString::from(TOKEN),
        Duration::ZERO,
        Duration::from_millis(200),
    );
    let err = jsm.user_groups("acc-1").await.unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("timed out"), "{err:?}");
}

#[tokio::test]
async fn a_base_url_under_a_path_keeps_its_path_for_scoped_tokens() {
    let server = MockServer::start().await;
    given("GET", "/ex/jira/cloud-123/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&server)
        .await;
    let base = format!("{}/ex/jira/cloud-123/", server.uri());
    let jsm = JsmClient::new(&base, SecretString::from(EMAIL), SecretString::from(TOKEN), Duration::ZERO);
    assert_eq!(jsm.user_groups("acc-1").await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn an_unusable_base_url_fails_every_call_permanently_without_panicking() {
    let jsm = JsmClient::new("not a url", SecretString::from(EMAIL), SecretString::from(TOKEN), Duration::ZERO);
    let err = jsm.user_groups("acc-1").await.unwrap_err();
    assert!(matches!(&err, JsmError::Permanent(m) if m.contains("jsm.base_url")), "{err:?}");
}

#[test]
fn debug_output_shows_the_base_url_but_not_the_credentials() {
    let jsm = JsmClient::new(
        "https://example.atlassian.net",
        SecretString::from(EMAIL),
        SecretString::from(TOKEN),
        Duration::ZERO,
    );
    let shown = format!("{jsm:?}");
    assert!(shown.contains("example.atlassian.net"), "{shown}");
    assert!(!shown.contains(TOKEN) && !shown.contains(EMAIL), "{shown}");
}

// --- rate-limit hints (pure) ---------------------------------------------------------------------------

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn retry_after_as_an_http_date_is_the_time_until_that_date() {
    let h = headers(&[("retry-after", "Wed, 01 May 2024 10:00:45 GMT")]);
    assert_eq!(rate_limit_hint(&h, at("2024-05-01T10:00:00Z")), Some(Duration::from_secs(45)));
}

#[test]
fn x_ratelimit_reset_in_atlassians_minute_format_is_read_as_utc() {
    let h = headers(&[("x-ratelimit-reset", "2024-05-01T10:15Z")]);
    assert_eq!(rate_limit_hint(&h, at("2024-05-01T10:12:30Z")), Some(Duration::from_secs(150)));
}

#[test]
fn retry_after_wins_over_x_ratelimit_reset() {
    let h = headers(&[("retry-after", "5"), ("x-ratelimit-reset", "2024-05-01T10:15Z")]);
    assert_eq!(rate_limit_hint(&h, at("2024-05-01T10:00:00Z")), Some(Duration::from_secs(5)));
}

#[test]
fn a_rate_limit_hint_is_capped_at_one_hour_and_a_past_reset_means_now() {
    let now = at("2024-05-01T10:00:00Z");
    assert_eq!(rate_limit_hint(&headers(&[("x-ratelimit-reset", "2024-05-01T13:00Z")]), now), Some(MAX_RETRY_AFTER));
    assert_eq!(rate_limit_hint(&headers(&[("retry-after", "86400")]), now), Some(MAX_RETRY_AFTER));
    assert_eq!(rate_limit_hint(&headers(&[("x-ratelimit-reset", "2024-05-01T09:59Z")]), now), Some(Duration::ZERO));
}

#[test]
fn unreadable_rate_limit_headers_give_no_hint() {
    let now = at("2024-05-01T10:00:00Z");
    assert_eq!(rate_limit_hint(&headers(&[("retry-after", "soon")]), now), None);
    assert_eq!(rate_limit_hint(&headers(&[("x-ratelimit-reset", "tomorrow")]), now), None);
    assert_eq!(rate_limit_hint(&HeaderMap::new(), now), None);
}

// --- confirms (pure) -------------------------------------------------------------------------------

fn statuses() -> BTreeMap<String, AppStatus> {
    [("Approved", AppStatus::Approved), ("Rejected", AppStatus::Denied), ("Access Revoked", AppStatus::Revoked)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn event(app_status: AppStatus, approver: Option<&str>) -> AccessEvent {
    let dedupe_key = "jira:10042:20001".to_owned();
    AccessEvent {
        schema: SCHEMA_V1.into(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::JiraWebhook,
        delivery_id: None,
        ticket: Ticket {
            key: "ACC-42".into(),
            id: "10042".into(),
            project_key: Some("ACC".into()),
            request_type: "Request access".into(),
        },
        action: RequestAction::Grant,
        app_status,
        status: StatusChange {
            from: Some("Waiting for approval".into()),
            to: "Approved".into(),
            from_id: None,
            to_id: None,
        },
        application: Some("Salesforce".into()),
        access_level: Some("Read".into()),
        requester: Some(Person { account_id: "acc-req".into(), email: None, display_name: Some("Rita".into()) }),
        approver: approver.map(|id| Approver {
            person: Person { account_id: id.into(), email: None, display_name: Some("Alice".into()) },
            source: ApproverSource::JsmApprovals,
        }),
        approval: None,
        authenticity: None,
        actor: None,
        changelog_id: Some("20001".into()),
        occurred_at: Utc::now(),
        duration: None,
        department: None,
        errors: vec![],
        raw_fields: serde_json::Map::new(),
        targets: None,
    }
}

/// `confirms` for the event's approver (or someone who approved nothing).
fn confirms_as(status: AppStatus, approver: Option<&str>, state: &ApprovalState) -> Result<(), String> {
    let who =
        Person { account_id: approver.unwrap_or("acc-nobody").into(), email: None, display_name: Some("Alice".into()) };
    confirms(&event(status, approver), &who, None, state, &statuses())
}

fn live(status: &str, approvals: Vec<Approval>) -> ApprovalState {
    ApprovalState { status: status.into(), approvals }
}

fn appr(id: &str, final_decision: &str, approvers: &[(&str, &str)]) -> Approval {
    Approval {
        id: id.into(),
        name: "Waiting for approval".into(),
        final_decision: final_decision.into(),
        approvers: approvers.iter().map(|(a, d)| ((*a).to_owned(), (*d).to_owned())).collect(),
        completed_epoch_ms: None,
    }
}

#[test]
fn an_approved_event_is_confirmed_by_the_live_status_and_the_approvers_own_approval() {
    let state = live(
        "approved", // mapped case-insensitively, as ingress does
        vec![
            appr("1", "declined", &[("acc-bob", "declined")]),
            appr("2", "approved", &[("acc-bob", "pending"), ("acc-alice", "approved")]),
        ],
    );
    assert_eq!(confirms_as(AppStatus::Approved, Some("acc-alice"), &state), Ok(()));
}

#[test]
fn an_approved_event_is_refused_when_the_ticket_has_since_moved_to_rejected() {
    let state = live("Rejected", vec![appr("1", "approved", &[("acc-alice", "approved")])]);
    let reason = confirms_as(AppStatus::Approved, Some("acc-alice"), &state).unwrap_err();
    assert!(
        reason.contains("\"Rejected\"") && reason.contains("denied") && reason.contains("stale or forged"),
        "{reason}"
    );
}

#[test]
fn an_event_is_refused_when_the_live_status_is_not_mapped_at_all() {
    let state = live("In Progress", vec![appr("1", "approved", &[("acc-alice", "approved")])]);
    let reason = confirms_as(AppStatus::Approved, Some("acc-alice"), &state).unwrap_err();
    assert!(reason.contains("\"In Progress\"") && reason.contains("does not map"), "{reason}");
}

#[test]
fn an_approved_event_is_refused_when_someone_else_gave_the_approval() {
    let state = live("Approved", vec![appr("1", "approved", &[("acc-mallory", "pending"), ("acc-bob", "approved")])]);
    let reason = confirms_as(AppStatus::Approved, Some("acc-mallory"), &state).unwrap_err();
    assert!(reason.contains("Alice (acc-mallory)") && reason.contains("acc-bob approved"), "{reason}");
}

#[test]
fn an_approved_event_is_refused_while_the_approval_is_still_pending() {
    let state = live("Approved", vec![appr("1", "pending", &[("acc-alice", "approved"), ("acc-bob", "pending")])]);
    let reason = confirms_as(AppStatus::Approved, Some("acc-alice"), &state).unwrap_err();
    assert!(reason.contains("(1) is pending"), "{reason}");
}

#[test]
fn a_later_declined_approval_overrides_an_earlier_approved_one() {
    let mut first = appr("1", "approved", &[("acc-alice", "approved")]);
    first.completed_epoch_ms = Some(1_000);
    let mut second = appr("2", "declined", &[("acc-alice", "declined")]);
    second.completed_epoch_ms = Some(2_000);
    let reason =
        confirms_as(AppStatus::Approved, Some("acc-alice"), &live("Approved", vec![first, second])).unwrap_err();
    assert!(reason.contains("(2) is declined"), "{reason}");
}

#[test]
fn an_approval_completed_before_the_tickets_last_revoke_is_spent() {
    let mut old = appr("1", "approved", &[("acc-alice", "approved")]);
    old.completed_epoch_ms = Some(1_000);
    let state = live("Approved", vec![old.clone()]);
    let alice = Person { account_id: "acc-alice".into(), email: None, display_name: None };
    let e = event(AppStatus::Approved, Some("acc-alice"));
    let revoked = Utc.timestamp_millis_opt(5_000).single();
    let reason = confirms(&e, &alice, revoked, &state, &statuses()).unwrap_err();
    assert!(reason.contains("before the ticket's access was revoked"), "{reason}");
    // Positive control: a new approval after the revoke confirms.
    let mut new = appr("2", "approved", &[("acc-alice", "approved")]);
    new.completed_epoch_ms = Some(9_000);
    assert_eq!(confirms(&e, &alice, revoked, &live("Approved", vec![old, new]), &statuses()), Ok(()));
}

#[test]
fn a_revoked_event_needs_only_the_live_status_to_match() {
    let state = live("Access Revoked", vec![]);
    assert_eq!(confirms_as(AppStatus::Revoked, None, &state), Ok(()));
}
