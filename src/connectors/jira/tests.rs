use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use crate::connectors::{Member, UserState};
use std::time::Duration;
use tempfile::TempDir;
use wiremock::matchers::{basic_auth, body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

const EMAIL: &str = "automation@example.com";
const TOKEN: &str = "ATATT3xFfGF0-jira-test-token";
const ACCOUNT: &str = "5b10ac8d82e05b22cc7d4ef5";
const GROUP_ID: &str = "276f955c-63d7-42c8-9520-92d01dca0625";

struct Fixture {
    server: MockServer,
    jira: Jira,
    _dir: TempDir,
}

fn app(toml_text: &str) -> ApplicationConfig {
    toml::from_str(toml_text).unwrap()
}

fn secrets() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("email"), format!("{EMAIL}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    dir
}

fn config(base: &str, dir: &TempDir, extra: &str) -> ApplicationConfig {
    let d = dir.path().display();
    app(&format!(
        "kind = \"jira\"\nbase_url = \"{base}\"\nemail_file = \"{d}/email\"\napi_token_file = \"{d}/token\"\n{extra}"
    ))
}

async fn fixture() -> Fixture {
    let server = MockServer::start().await;
    let dir = secrets();
    let jira = Jira::from_config("jira", &config(&server.uri(), &dir, "")).unwrap();
    Fixture { server, jira, _dir: dir }
}

impl Fixture {
    /// Every request the test sent must be a documented Jira operation.
    async fn conforms(&self) {
        spec_check::assert_conforms("jira", "", &self.server.received_requests().await.unwrap());
    }
}

fn subject() -> Subject {
    Subject {
        account_id: ACCOUNT.into(),
        email: Some("ada@example.com".into()),
        display_name: None,
        fields: Default::default(),
    }
}

fn target(name: &str) -> Target {
    Target { name: name.into(), role: None }
}

fn authed(m: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(m)).and(path(p)).and(basic_auth(EMAIL, TOKEN)).and(header("accept", "application/json"))
}

fn group_json() -> serde_json::Value {
    serde_json::json!({"groupId": GROUP_ID, "name": "jira-developers", "self": "https://x/rest/api/3/group?groupId=1"})
}

async fn group_by_name(server: &MockServer) {
    authed("GET", "/rest/api/3/group/bulk")
        .and(query_param("groupName", "jira-developers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "isLast": true, "maxResults": 50, "startAt": 0, "total": 1, "values": [group_json()]
        })))
        .expect(1)
        .mount(server)
        .await;
}

async fn user_groups(server: &MockServer, member: bool, times: u64) {
    let groups = if member { vec![group_json()] } else { vec![serde_json::json!({"groupId": "other", "name": "x"})] };
    authed("GET", "/rest/api/3/user/groups")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(200).set_body_json(groups))
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn grant_checks_membership_then_adds_by_group_id() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, false, 1).await;
    authed("POST", "/rest/api/3/group/user")
        .and(query_param("groupId", GROUP_ID))
        .and(query_param_is_missing("groupname"))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({"accountId": ACCOUNT})))
        .respond_with(ResponseTemplate::new(201).set_body_json(group_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.grant(&subject(), &target("jira-developers")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn a_target_written_as_a_uuid_is_looked_up_by_group_id() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/group/bulk")
        .and(query_param("groupId", GROUP_ID))
        .and(query_param_is_missing("groupName"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": [group_json()]})))
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, true, 1).await;
    assert_eq!(f.jira.grant(&subject(), &target(GROUP_ID)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn an_existing_member_is_already_granted_without_a_write() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, true, 1).await;
    authed("POST", "/rest/api/3/group/user").respond_with(ResponseTemplate::new(201)).expect(0).mount(&f.server).await;
    assert_eq!(f.jira.grant(&subject(), &target("jira-developers")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_400_on_add_is_success_when_the_recheck_finds_the_member() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    // Not a member at the first check, a member at the re-check (a concurrent add).
    authed("GET", "/rest/api/3/user/groups")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(200).set_body_json(Vec::<serde_json::Value>::new()))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, true, 1).await;
    authed("POST", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "errorMessages": ["Cannot add user. User is already a member of 'jira-developers'"], "errors": {}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.grant(&subject(), &target("jira-developers")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_400_on_add_fails_permanently_when_the_recheck_finds_no_member() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, false, 2).await;
    authed("POST", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "errorMessages": ["You cannot add users to groups which are managed by an identity provider"], "errors": {}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    assert_eq!(err.class(), "permanent", "{err}");
    assert!(err.to_string().contains("managed by an identity provider"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn revoke_removes_a_member_by_group_id_and_account_id() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, true, 1).await;
    authed("DELETE", "/rest/api/3/group/user")
        .and(query_param("groupId", GROUP_ID))
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.revoke(&subject(), &target("jira-developers")).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn a_non_member_is_already_absent_once_user_and_group_are_confirmed() {
    let f = fixture().await;
    group_by_name(&f.server).await; // the group exists
    user_groups(&f.server, false, 1).await; // the user exists (200), without the group
    authed("DELETE", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.revoke(&subject(), &target("jira-developers")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_404_on_remove_is_success_when_the_recheck_finds_no_member() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    authed("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(vec![group_json()]))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, false, 1).await;
    authed("DELETE", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({"errorMessages": ["not a member"]})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.revoke(&subject(), &target("jira-developers")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_account_is_not_found_and_nothing_is_written() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    authed("GET", "/rest/api/3/user/groups")
        .respond_with(
            ResponseTemplate::new(404).set_body_json(serde_json::json!({"errorMessages": ["User not found"]})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.revoke(&subject(), &target("jira-developers")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("jira user with accountId {ACCOUNT}") });
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_group_is_not_found() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/group/bulk")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("no-such-group")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "jira group \"no-such-group\"".into() });
    f.conforms().await;
}

#[tokio::test]
async fn a_ticket_without_an_account_id_is_permanent() {
    let f = fixture().await;
    let mut s = subject();
    s.account_id = " ".into();
    let err = f.jira.grant(&s, &target("jira-developers")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("accountId"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_429_honours_retry_after() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/group/bulk")
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "7")
                .insert_header("X-RateLimit-Reset", "2099-01-01T00:00Z")
                .insert_header("RateLimit-Reason", "jira-quota-tenant-based"),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_429_without_retry_after_honours_the_iso8601_reset() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, false, 1).await;
    let reset = (chrono::Utc::now() + chrono::Duration::seconds(150)).format("%Y-%m-%dT%H:%MZ").to_string();
    authed("POST", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(429).insert_header("X-RateLimit-Reset", reset.as_str()))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    let wait = err.retry_after().unwrap();
    assert!(err.is_transient());
    // The header has minute precision: 150 s from now, truncated to the minute.
    assert!(wait >= Duration::from_secs(85) && wait <= Duration::from_secs(150), "{wait:?} for {reset}");
    f.conforms().await;
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    authed("GET", "/rest/api/3/user/groups")
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "3"))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    f.conforms().await;
}

#[tokio::test]
async fn a_401_is_unauthorized_with_the_fix_and_without_the_token() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/group/bulk")
        .respond_with(
            ResponseTemplate::new(401).set_body_string("Client must be authenticated to access this resource."),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    let text = err.to_string();
    assert!(text.contains("API token is wrong or expired"), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains(EMAIL), "{text}");
    f.conforms().await;
}

#[tokio::test]
async fn a_403_names_the_missing_permission() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    user_groups(&f.server, false, 1).await;
    authed("POST", "/rest/api/3/group/user")
        .respond_with(ResponseTemplate::new(403).set_body_json(serde_json::json!({"errorMessages": ["forbidden"]})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.jira.grant(&subject(), &target("jira-developers")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("site administration"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_reads_myself_and_the_group_list() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/myself")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"accountId": "svc", "active": true})))
        .expect(1)
        .mount(&f.server)
        .await;
    authed("GET", "/rest/api/3/group/bulk")
        .and(query_param("maxResults", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": [group_json()]})))
        .expect(1)
        .mount(&f.server)
        .await;
    f.jira.test_connection().await.unwrap();
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_reports_a_bad_token() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/myself").respond_with(ResponseTemplate::new(401)).expect(1).mount(&f.server).await;
    let err = f.jira.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("scoped API token must be used with cloud_id"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_cloud_id_routes_through_the_api_gateway_path() {
    let server = MockServer::start().await;
    let dir = secrets();
    let jira = Jira::from_config("jira", &config(&server.uri(), &dir, "cloud_id = \"c0ffee\"")).unwrap();
    authed("GET", "/ex/jira/c0ffee/rest/api/3/myself")
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    authed("GET", "/ex/jira/c0ffee/rest/api/3/group/bulk")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": []})))
        .expect(1)
        .mount(&server)
        .await;
    jira.test_connection().await.unwrap();
    spec_check::assert_conforms("jira", "/ex/jira/c0ffee", &server.received_requests().await.unwrap());
}

#[test]
fn config_errors_name_the_missing_key_and_debug_hides_secrets() {
    let dir = secrets();
    let d = dir.path().display();
    let err = Jira::from_config(
        "j",
        &app(&format!("kind = \"jira\"\nemail_file = \"{d}/email\"\napi_token_file = \"{d}/token\"")),
    )
    .unwrap_err();
    assert!(err.contains("base_url") && err.contains("cloud_id"), "{err}");
    let err = Jira::from_config(
        "j",
        &app(&format!("kind = \"jira\"\nbase_url = \"https://x.atlassian.net\"\nemail_file = \"{d}/email\"")),
    )
    .unwrap_err();
    assert!(err.contains("api_token_env or api_token_file"), "{err}");
    let err = Jira::from_config("j", &config("https://x.atlassian.net", &dir, "subject_field = \"customfield_1\""))
        .unwrap_err();
    assert!(err.contains("remove subject_field"), "{err}");
    let err = Jira::from_config("j", &config("x.atlassian.net", &dir, "")).unwrap_err();
    assert!(err.contains("http(s) URL"), "{err}");
    let jira = Jira::from_config("j", &config("https://x.atlassian.net/", &dir, "")).unwrap();
    let shown = format!("{jira:?}");
    assert!(shown.contains("https://x.atlassian.net\"") && !shown.contains(TOKEN) && !shown.contains(EMAIL), "{shown}");
}

#[test]
fn uuids_are_told_from_names() {
    assert!(looks_like_uuid(GROUP_ID));
    assert!(!looks_like_uuid("jira-developers"));
    assert!(!looks_like_uuid("276f955c-63d7-42c8-9520-92d01dca062"));
    assert!(!looks_like_uuid("276f955c-63d7-42c8-9520-92d01dca062z"));
}

// ---- read-back ----

fn user_json(account: &str, email: Option<&str>, name: &str) -> serde_json::Value {
    let mut u =
        serde_json::json!({"accountId": account, "accountType": "atlassian", "active": true, "displayName": name});
    if let Some(e) = email {
        u["emailAddress"] = e.into();
    }
    u
}

async fn member_page(server: &MockServer, start: &str, values: Vec<serde_json::Value>, is_last: bool) {
    authed("GET", "/rest/api/3/group/member")
        .and(query_param("groupId", GROUP_ID))
        .and(query_param_is_missing("groupname"))
        .and(query_param("includeInactiveUsers", "true"))
        .and(query_param("startAt", start))
        .and(query_param("maxResults", "50"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "isLast": is_last, "maxResults": 50, "startAt": start.parse::<u64>().unwrap(), "total": 3, "values": values
        })))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn members_follow_start_at_until_is_last() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    member_page(
        &f.server,
        "0",
        vec![user_json("acc-1", Some("Ada@Example.com"), "Ada"), user_json("acc-2", None, "Bob")],
        false,
    )
    .await;
    member_page(&f.server, "2", vec![user_json("acc-3", None, "Cy")], true).await;
    let members = f.jira.members(&target("jira-developers")).await.unwrap();
    assert_eq!(
        members,
        vec![
            Member {
                id: "acc-1".into(),
                keys: vec!["acc-1".into(), "ada@example.com".into()],
                display: Some("Ada".into())
            },
            Member { id: "acc-2".into(), keys: vec!["acc-2".into()], display: Some("Bob".into()) },
            Member { id: "acc-3".into(), keys: vec!["acc-3".into()], display: Some("Cy".into()) },
        ]
    );
    f.conforms().await;
}

#[tokio::test]
async fn members_of_an_empty_group_are_none() {
    let f = fixture().await;
    group_by_name(&f.server).await;
    member_page(&f.server, "0", vec![], true).await;
    assert_eq!(f.jira.members(&target("jira-developers")).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn members_of_a_missing_group_are_not_found() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/group/bulk")
        .and(query_param("groupName", "no-such-group"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"isLast": true, "values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    authed("GET", "/rest/api/3/group/member").respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
    let err = f.jira.members(&target("no-such-group")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "jira group \"no-such-group\"".into() });
    f.conforms().await;
}

#[tokio::test]
async fn memberships_name_the_targets_the_account_is_in() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/user/groups")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            group_json(),
            {"groupId": "0f0e0d0c-0000-4000-8000-000000000001", "name": "jira-admins"},
            {"groupId": "0f0e0d0c-0000-4000-8000-000000000002", "name": "not-managed"}
        ])))
        .expect(1)
        .mount(&f.server)
        .await;
    let targets = [target("jira-developers"), target("0f0e0d0c-0000-4000-8000-000000000001"), target("jira-auditors")];
    let held = f.jira.memberships(&subject(), &targets).await.unwrap();
    assert_eq!(held, vec!["jira-developers".to_owned(), "0f0e0d0c-0000-4000-8000-000000000001".to_owned()]);
    f.conforms().await;
}

#[tokio::test]
async fn memberships_of_an_unknown_account_are_none() {
    let f = fixture().await;
    authed("GET", "/rest/api/3/user/groups")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({"errorMessages": ["not found"]})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.jira.memberships(&subject(), &[target("jira-developers")]).await, Ok(vec![]));
    f.conforms().await;
}

async fn user_answer(server: &MockServer, status: u16, body: serde_json::Value) {
    authed("GET", "/rest/api/3/user")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn user_state_reads_active() {
    let f = fixture().await;
    user_answer(&f.server, 200, user_json(ACCOUNT, None, "Ada")).await;
    assert_eq!(f.jira.user_state(&subject()).await, Ok(UserState::Active));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_of_a_deactivated_account_is_inactive() {
    let f = fixture().await;
    let mut u = user_json(ACCOUNT, None, "Ada");
    u["active"] = false.into();
    user_answer(&f.server, 200, u).await;
    assert_eq!(f.jira.user_state(&subject()).await, Ok(UserState::Inactive));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_of_an_unknown_account_is_not_found() {
    let f = fixture().await;
    user_answer(&f.server, 404, serde_json::json!({"errorMessages": ["User does not exist"]})).await;
    assert_eq!(f.jira.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_account_id_and_needs_one() {
    let f = fixture().await;
    assert_eq!(f.jira.identity(&subject()), Ok(ACCOUNT.to_owned()));
    let mut s = subject();
    s.account_id = "  ".into();
    let err = f.jira.identity(&s).unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("accountId"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}
