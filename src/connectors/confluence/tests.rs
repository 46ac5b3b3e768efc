use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use crate::connectors::{Member, UserState};
use serde_json::Value;
use std::time::Duration;
use tempfile::TempDir;
use wiremock::matchers::{
    basic_auth, bearer_token, body_json, header, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

const EMAIL: &str = "site-admin@example.com";
const TOKEN: &str = "ATATT3xFfGF0-confluence-test-token";
const KEY: &str = "ATCTT3xFfGN0-admin-api-key";
const ACCOUNT: &str = "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077";
const GROUP_ID: &str = "0c2b1a5e-1f7d-4c8e-9a3b-2d4e6f8a0b1c";
const ORG: &str = "9a1b2c3d-org";
const DIR: &str = "d1d2d3d4-0000-4000-8000-000000000001";

fn app(toml_text: &str) -> ApplicationConfig {
    toml::from_str(toml_text).unwrap()
}

fn secrets() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("email"), format!("{EMAIL}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("key"), format!("{KEY}\n")).unwrap();
    dir
}

fn site_config(site: &str, dir: &TempDir, extra: &str) -> ApplicationConfig {
    let d = dir.path().display();
    app(&format!(
        "kind = \"confluence\"\nsite_url = \"{site}\"\nadmin_email_file = \"{d}/email\"\n\
         api_token_file = \"{d}/token\"\n{extra}"
    ))
}

fn admin_config(base: &str, dir: &TempDir, extra: &str) -> ApplicationConfig {
    let d = dir.path().display();
    app(&format!(
        "kind = \"confluence\"\napi = \"admin\"\nadmin_base_url = \"{base}\"\nadmin_api_key_file = \"{d}/key\"\n\
         org_id = \"{ORG}\"\n{extra}"
    ))
}

struct Fixture {
    server: MockServer,
    confluence: Confluence,
    _dir: TempDir,
}

async fn site() -> Fixture {
    let server = MockServer::start().await;
    let dir = secrets();
    // A site URL written with /wiki works too.
    let confluence =
        Confluence::from_config("wiki", &site_config(&format!("{}/wiki/", server.uri()), &dir, "")).unwrap();
    Fixture { server, confluence, _dir: dir }
}

async fn admin(extra: &str) -> Fixture {
    let server = MockServer::start().await;
    let dir = secrets();
    let confluence = Confluence::from_config("wiki", &admin_config(&server.uri(), &dir, extra)).unwrap();
    Fixture { server, confluence, _dir: dir }
}

impl Fixture {
    async fn conforms(&self, extract: &str) {
        spec_check::assert_conforms(extract, "", &self.server.received_requests().await.unwrap());
    }
}

fn subject() -> Subject {
    Subject {
        account_id: ACCOUNT.into(),
        email: Some("Ada@Example.com".into()),
        display_name: None,
        fields: Default::default(),
    }
}

fn target(name: &str) -> Target {
    Target { name: name.into(), role: None }
}

// ---- site API ----

fn site_call(m: &str, p: &str) -> MockBuilder {
    Mock::given(method(m)).and(path(p)).and(basic_auth(EMAIL, TOKEN)).and(header("accept", "application/json"))
}

fn group_json() -> Value {
    serde_json::json!({"type": "group", "name": "confluence-editors", "id": GROUP_ID, "_links": {"self": "x"}})
}

async fn group_by_name(server: &MockServer) {
    site_call("GET", "/wiki/rest/api/group/by-name")
        .and(query_param("name", "confluence-editors"))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json()))
        .expect(1)
        .mount(server)
        .await;
}

fn memberof_page(groups: Vec<Value>) -> Value {
    let n = groups.len();
    serde_json::json!({"results": groups, "start": 0, "limit": 200, "size": n, "_links": {}})
}

async fn memberof(server: &MockServer, member: bool, times: u64) {
    let groups =
        if member { vec![group_json()] } else { vec![serde_json::json!({"type": "group", "name": "x", "id": "y"})] };
    site_call("GET", "/wiki/rest/api/user/memberof")
        .and(query_param("accountId", ACCOUNT))
        .and(query_param("start", "0"))
        .and(query_param("limit", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(memberof_page(groups)))
        .expect(times)
        .mount(server)
        .await;
}

fn add_call() -> MockBuilder {
    site_call("POST", "/wiki/rest/api/group/userByGroupId")
        .and(query_param("groupId", GROUP_ID))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({"accountId": ACCOUNT})))
}

#[tokio::test]
async fn site_grant_checks_memberof_then_adds_by_group_id() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, false, 1).await;
    add_call().respond_with(ResponseTemplate::new(201).set_body_json(group_json())).expect(1).mount(&f.server).await;
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::Granted));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_target_written_as_a_uuid_is_looked_up_by_id() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/group/by-id")
        .and(query_param("id", GROUP_ID))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    memberof(&f.server, true, 1).await;
    add_call().respond_with(ResponseTemplate::new(201)).expect(0).mount(&f.server).await;
    assert_eq!(f.confluence.grant(&subject(), &target(GROUP_ID)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_membership_is_read_across_memberof_pages() {
    let f = site().await;
    group_by_name(&f.server).await;
    let filler: Vec<Value> = (0..200)
        .map(|i| serde_json::json!({"type": "group", "name": format!("g{i}"), "id": format!("id{i}")}))
        .collect();
    memberof(&f.server, false, 0).await; // not used: the first page is the filler
    site_call("GET", "/wiki/rest/api/user/memberof")
        .and(query_param("start", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(memberof_page(filler)))
        .with_priority(1)
        .expect(1)
        .mount(&f.server)
        .await;
    site_call("GET", "/wiki/rest/api/user/memberof")
        .and(query_param("accountId", ACCOUNT))
        .and(query_param("start", "200"))
        .and(query_param("limit", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(memberof_page(vec![group_json()])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_revoke_deletes_by_group_id_and_account_id() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, true, 1).await;
    site_call("DELETE", "/wiki/rest/api/group/userByGroupId")
        .and(query_param("groupId", GROUP_ID))
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.revoke(&subject(), &target("confluence-editors")).await, Ok(RevokeOutcome::Revoked));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_non_member_is_already_absent_once_the_user_is_confirmed() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, false, 1).await;
    site_call("GET", "/wiki/rest/api/user")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"type": "known", "accountId": ACCOUNT})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    site_call("DELETE", "/wiki/rest/api/group/userByGroupId")
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.revoke(&subject(), &target("confluence-editors")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_unknown_user_is_not_found_on_revoke() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, false, 1).await;
    site_call("GET", "/wiki/rest/api/user").respond_with(ResponseTemplate::new(404)).expect(1).mount(&f.server).await;
    let err = f.confluence.revoke(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("confluence user with accountId {ACCOUNT}") });
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_unknown_group_is_not_found() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/group/by-name")
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("nope")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "confluence group \"nope\"".into() });
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_licence_pool_failure_is_retried_once_then_permanent() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, false, 3).await; // the check, and a re-check after each failure
    add_call()
        .respond_with(ResponseTemplate::new(500).set_body_string(
            "{\"statusCode\":500,\"message\":\"com.netflix.hystrix.exception.HystrixRuntimeException: failed\"}",
        ))
        .expect(2)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "permanent", "{err}");
    assert!(err.to_string().contains("licence pool"), "{err}");
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_other_5xx_is_transient() {
    let f = site().await;
    group_by_name(&f.server).await;
    memberof(&f.server, false, 1).await;
    add_call().respond_with(ResponseTemplate::new(502)).expect(1).mount(&f.server).await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_429_honours_retry_after() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/group/by-name")
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "12"))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12)), "{err}");
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_401_is_unauthorized_with_the_fix_and_without_secrets() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/group/by-name")
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    let text = err.to_string();
    assert!(text.contains("admin email or API token is wrong"), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains(EMAIL), "{text}");
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_test_connection_reads_the_current_user() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/user/current")
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"type": "known", "accountId": "svc"})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&f.server)
        .await;
    f.confluence.test_connection().await.unwrap();
    site_call("GET", "/wiki/rest/api/user/current")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"type": "anonymous"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("anonymous"), "{err}");
    f.conforms("confluence").await;
}

// ---- organization Admin API ----

fn admin_call(m: &str, p: &str) -> MockBuilder {
    Mock::given(method(m)).and(path(p)).and(bearer_token(KEY)).and(header("accept", "application/json"))
}

fn dir_path(rest: &str) -> String {
    format!("/admin/v2/orgs/{ORG}/directories/{DIR}{rest}")
}

fn admin_group_json(synced: bool) -> Value {
    serde_json::json!({
        "id": GROUP_ID, "name": "confluence-editors", "directoryId": DIR,
        "externalSynced": synced, "managedBy": if synced { "external" } else { "admins" }
    })
}

async fn directories(server: &MockServer, dirs: Value, times: u64) {
    admin_call("GET", &format!("/admin/v2/orgs/{ORG}/directories"))
        .and(query_param_is_missing("cursor"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": dirs, "links": {}})))
        .expect(times)
        .mount(server)
        .await;
}

async fn admin_group(server: &MockServer, synced: bool) {
    admin_group_n(server, synced, 1).await;
}

async fn admin_group_n(server: &MockServer, synced: bool, times: u64) {
    admin_call("POST", &dir_path("/groups/search"))
        .and(body_json(serde_json::json!({"groupNames": ["confluence-editors"]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": [admin_group_json(synced)]})))
        .expect(times)
        .mount(server)
        .await;
}

async fn admin_user_by_id(server: &MockServer, found: bool) {
    admin_user_by_id_n(server, found, 1).await;
}

async fn admin_user_by_id_n(server: &MockServer, found: bool, times: u64) {
    let data = if found { vec![serde_json::json!({"accountId": ACCOUNT, "email": "ada@example.com"})] } else { vec![] };
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"accountIds": [ACCOUNT], "limit": 1})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": data, "links": {}})))
        .expect(times)
        .mount(server)
        .await;
}

async fn admin_membership(server: &MockServer, account: &str, member: bool, times: u64) {
    let data = if member { vec![admin_group_json(false)] } else { vec![] };
    admin_call("POST", &dir_path("/groups/search"))
        .and(body_json(serde_json::json!({"groupIds": [GROUP_ID], "accountIds": [account]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": data})))
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn admin_grant_finds_the_only_directory_once_and_adds_the_member() {
    let f = admin("").await;
    directories(&f.server, serde_json::json!([{"directoryId": DIR, "name": "Example"}]), 1).await;
    admin_group_n(&f.server, false, 2).await;
    admin_user_by_id_n(&f.server, true, 2).await;
    admin_membership(&f.server, ACCOUNT, false, 2).await;
    admin_call("POST", &dir_path(&format!("/groups/{GROUP_ID}/memberships")))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({"accountId": ACCOUNT})))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::Granted));
    // The directory is looked up once: the second grant does not list directories again.
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::Granted));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_existing_member_is_already_granted() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    directories(&f.server, serde_json::json!([]), 0).await;
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, true).await;
    admin_membership(&f.server, ACCOUNT, true, 1).await;
    admin_call("POST", &dir_path(&format!("/groups/{GROUP_ID}/memberships")))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_revoke_deletes_the_membership() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, true).await;
    admin_membership(&f.server, ACCOUNT, true, 1).await;
    admin_call("DELETE", &dir_path(&format!("/groups/{GROUP_ID}/memberships/{ACCOUNT}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.revoke(&subject(), &target("confluence-editors")).await, Ok(RevokeOutcome::Revoked));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_non_member_is_already_absent_after_user_and_group_are_found() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, true).await;
    admin_membership(&f.server, ACCOUNT, false, 1).await;
    admin_call("DELETE", &dir_path(&format!("/groups/{GROUP_ID}/memberships/{ACCOUNT}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.revoke(&subject(), &target("confluence-editors")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_user_not_in_the_directory_by_id_is_found_by_email() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    let other = "712020:0e9b3c1a-other";
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, false).await;
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"emails": ["Ada@Example.com"], "limit": 1})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"data": [{"accountId": other, "email": "ada@example.com"}]})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    admin_membership(&f.server, other, false, 1).await;
    admin_call("POST", &dir_path(&format!("/groups/{GROUP_ID}/memberships")))
        .and(body_json(serde_json::json!({"accountId": other})))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.grant(&subject(), &target("confluence-editors")).await, Ok(GrantOutcome::Granted));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_user_in_neither_form_is_not_found() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, false).await;
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"emails": ["Ada@Example.com"], "limit": 1})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    assert!(err.to_string().contains("invite them"), "{err}");
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_refuses_a_group_synced_from_an_identity_provider() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_group(&f.server, true).await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("synced from an identity provider"), "{err}");
    assert_eq!(f.server.received_requests().await.unwrap().len(), 1, "nothing after the group lookup");
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_several_directories_need_directory_id() {
    let f = admin("").await;
    directories(&f.server, serde_json::json!([{"directoryId": "a", "name": "One"}, {"directoryId": "b"}]), 1).await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("(a (One), b); set directory_id"), "{err}");
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_licence_limit_is_permanent() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_group(&f.server, false).await;
    admin_user_by_id(&f.server, true).await;
    admin_membership(&f.server, ACCOUNT, false, 2).await;
    admin_call("POST", &dir_path(&format!("/groups/{GROUP_ID}/memberships")))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(serde_json::json!({"code": "409", "title": "Product License Limit Exceeded"})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("user limit"), "{err}");
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_429_and_401_are_classified() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    admin_call("POST", &dir_path("/groups/search"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "20"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)), "{err}");
    admin_call("POST", &dir_path("/groups/search"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.grant(&subject(), &target("confluence-editors")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("Admin API key is wrong, revoked or expired") && !err.to_string().contains(KEY));
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_test_connection_checks_the_configured_directory() {
    let f = admin(&format!("directory_id = \"{DIR}\"")).await;
    directories(&f.server, serde_json::json!([{"directoryId": DIR}]), 1).await;
    f.confluence.test_connection().await.unwrap();
    let g = admin("directory_id = \"elsewhere\"").await;
    directories(&g.server, serde_json::json!([{"directoryId": DIR, "name": "Example"}]), 1).await;
    let err = g.confluence.test_connection().await.unwrap_err();
    assert!(err.to_string().contains("directory_id elsewhere is not a directory"), "{err}");
    f.conforms("confluence-admin").await;
    g.conforms("confluence-admin").await;
}

#[test]
fn config_errors_name_the_missing_key_and_debug_hides_secrets() {
    let dir = secrets();
    let d = dir.path().display();
    let err =
        Confluence::from_config("w", &site_config("https://x.atlassian.net", &dir, "api = \"cloud\"")).unwrap_err();
    assert!(err.contains("\"site\" or \"admin\""), "{err}");
    let err = Confluence::from_config(
        "w",
        &app(&format!("kind = \"confluence\"\nsite_url = \"https://x.atlassian.net\"\napi_token_file = \"{d}/token\"")),
    )
    .unwrap_err();
    assert!(err.contains("admin_email_env or admin_email_file"), "{err}");
    let err = Confluence::from_config(
        "w",
        &app(&format!("kind = \"confluence\"\napi = \"admin\"\nadmin_api_key_file = \"{d}/key\"")),
    )
    .unwrap_err();
    assert!(err.contains("org_id"), "{err}");
    let err = Confluence::from_config("w", &app("kind = \"confluence\"\napi = \"admin\"\norg_id = \"o\"\nadmin_api_key_env = \"ACCESSGOV_TEST_UNSET_VARIABLE_XYZ\""))
        .unwrap_err();
    assert!(err.contains("admin_api_key") && err.contains("ACCESSGOV_TEST_UNSET_VARIABLE_XYZ"), "{err}");
    let c = Confluence::from_config("w", &admin_config("https://api.atlassian.com", &dir, "")).unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("org_id") && !shown.contains(KEY), "{shown}");
    let c = Confluence::from_config("w", &site_config("https://x.atlassian.net/wiki", &dir, "")).unwrap();
    let shown = format!("{c:?}");
    assert!(
        shown.contains("\"https://x.atlassian.net\"") && !shown.contains(TOKEN) && !shown.contains(EMAIL),
        "{shown}"
    );
}

// ---- read-back ----

const MEMBERS: &str = "/wiki/rest/api/group/0c2b1a5e-1f7d-4c8e-9a3b-2d4e6f8a0b1c/membersByGroupId";

fn site_user(account: &str, name: &str) -> Value {
    serde_json::json!({"type": "known", "accountId": account, "accountType": "atlassian", "displayName": name})
}

async fn members_page(server: &MockServer, start: &str, users: Vec<Value>, next: bool) {
    let links = if next {
        serde_json::json!({"base": "https://x.atlassian.net/wiki", "next": format!("/rest/api/group/{GROUP_ID}/membersByGroupId?start=2&limit=100")})
    } else {
        serde_json::json!({"base": "https://x.atlassian.net/wiki"})
    };
    site_call("GET", MEMBERS)
        .and(query_param("start", start))
        .and(query_param("limit", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"results": users, "start": start.parse::<u64>().unwrap(), "limit": 100, "size": 2, "_links": links}),
        ))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn site_members_follow_links_next() {
    let f = site().await;
    group_by_name(&f.server).await;
    let mut ada = site_user("acc-1", "Ada");
    ada["email"] = "Ada@Example.com".into();
    members_page(&f.server, "0", vec![ada, site_user("acc-2", "Bob")], true).await;
    members_page(&f.server, "2", vec![site_user("acc-3", "Cy")], false).await;
    let members = f.confluence.members(&target("confluence-editors")).await.unwrap();
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
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_members_of_an_empty_group_are_none() {
    let f = site().await;
    group_by_name(&f.server).await;
    members_page(&f.server, "0", vec![], false).await;
    assert_eq!(f.confluence.members(&target("confluence-editors")).await, Ok(vec![]));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_members_of_a_missing_group_are_not_found() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/group/by-name")
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.confluence.members(&target("nope")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "confluence group \"nope\"".into() });
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_memberships_read_every_memberof_page() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/user/memberof")
        .and(query_param("accountId", ACCOUNT))
        .and(query_param("start", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "results": [{"type": "group", "name": "other", "id": "x"}], "start": 0, "limit": 200, "size": 1,
            "_links": {"next": "/rest/api/user/memberof?accountId=a&start=1"}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    site_call("GET", "/wiki/rest/api/user/memberof")
        .and(query_param("accountId", ACCOUNT))
        .and(query_param("start", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(memberof_page(vec![group_json()])))
        .expect(1)
        .mount(&f.server)
        .await;
    let held = f.confluence.memberships(&subject(), &[target("confluence-editors"), target("wiki-admins")]).await;
    assert_eq!(held, Ok(vec!["confluence-editors".to_owned()]));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_memberships_of_an_unknown_user_are_none() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/user/memberof")
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.memberships(&subject(), &[target("confluence-editors")]).await, Ok(vec![]));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn site_user_state_is_active_or_not_found() {
    let f = site().await;
    site_call("GET", "/wiki/rest/api/user")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(200).set_body_json(site_user(ACCOUNT, "Ada")))
        .up_to_n_times(1)
        .expect(1)
        .mount(&f.server)
        .await;
    site_call("GET", "/wiki/rest/api/user")
        .and(query_param("accountId", ACCOUNT))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.user_state(&subject()).await, Ok(UserState::Active));
    assert_eq!(f.confluence.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms("confluence").await;
}

#[tokio::test]
async fn identity_is_the_account_id_and_needs_one() {
    let f = site().await;
    assert_eq!(f.confluence.identity(&subject()), Ok(ACCOUNT.to_owned()));
    let mut s = subject();
    s.account_id = String::new();
    assert_eq!(f.confluence.identity(&s).unwrap_err().class(), "permanent");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

fn admin_fixed() -> String {
    format!("directory_id = \"{DIR}\"")
}

#[tokio::test]
async fn admin_members_follow_the_cursor() {
    let f = admin(&admin_fixed()).await;
    admin_group(&f.server, true).await; // a synced group can still be read
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"groupIds": [GROUP_ID], "limit": 100})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"accountId": "acc-1", "email": "Ada@Example.com", "name": "Ada", "accountStatus": "active"}],
            "links": {"self": "c0", "next": "c1"}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"groupIds": [GROUP_ID], "limit": 100, "cursor": "c1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"accountId": "acc-2", "nickname": "bob"}], "links": {"self": "c1"}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let members = f.confluence.members(&target("confluence-editors")).await.unwrap();
    assert_eq!(
        members,
        vec![
            Member {
                id: "acc-1".into(),
                keys: vec!["acc-1".into(), "ada@example.com".into()],
                display: Some("Ada".into())
            },
            Member { id: "acc-2".into(), keys: vec!["acc-2".into()], display: Some("bob".into()) },
        ]
    );
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_members_of_a_missing_group_are_not_found() {
    let f = admin(&admin_fixed()).await;
    admin_call("POST", &dir_path("/groups/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.confluence.members(&target("nope")).await.unwrap_err().class(), "not_found");
    f.conforms("confluence-admin").await;
}

#[tokio::test]
async fn admin_memberships_match_the_users_groups() {
    let f = admin(&admin_fixed()).await;
    admin_user_by_id(&f.server, true).await;
    admin_call("POST", &dir_path("/groups/search"))
        .and(body_json(serde_json::json!({"accountIds": [ACCOUNT], "limit": 100})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [admin_group_json(false), {"id": "g2", "name": "other"}], "links": {}
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let held = f.confluence.memberships(&subject(), &[target(GROUP_ID), target("wiki-admins")]).await;
    assert_eq!(held, Ok(vec![GROUP_ID.to_owned()]));
    f.conforms("confluence-admin").await;
}

async fn admin_status(server: &MockServer, data: Value) {
    admin_call("POST", &dir_path("/users/search"))
        .and(body_json(serde_json::json!({"accountIds": [ACCOUNT], "limit": 1})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": data, "links": {}})))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn admin_user_state_reads_account_and_membership_status() {
    for (data, want) in [
        (
            serde_json::json!([{"accountId": ACCOUNT, "accountStatus": "active", "membershipStatus": "active"}]),
            UserState::Active,
        ),
        (
            serde_json::json!([{"accountId": ACCOUNT, "accountStatus": "inactive", "membershipStatus": "active"}]),
            UserState::Inactive,
        ),
        (
            serde_json::json!([{"accountId": ACCOUNT, "accountStatus": "active", "membershipStatus": "suspended"}]),
            UserState::Inactive,
        ),
        (serde_json::json!([]), UserState::NotFound),
    ] {
        let f = admin(&admin_fixed()).await;
        admin_status(&f.server, data).await;
        assert_eq!(f.confluence.user_state(&subject()).await, Ok(want));
        f.conforms("confluence-admin").await;
    }
}
