use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use crate::connectors::{Member, UserState};
use tempfile::TempDir;
use wiremock::matchers::{basic_auth, body_json, header, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

const EMAIL: &str = "bb-admin@example.com";
const TOKEN: &str = "ATATT3xFfGF0-bitbucket-test-token";
const ACCOUNT: &str = "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077";
const WS: &str = "acme";
const REPO: &str = "payments-api";

fn app(toml_text: &str) -> ApplicationConfig {
    toml::from_str(toml_text).unwrap()
}

fn secrets() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("email"), format!("{EMAIL}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    dir
}

fn config(base: &str, dir: &TempDir, scope: &str) -> ApplicationConfig {
    let d = dir.path().display();
    app(&format!(
        "kind = \"bitbucket\"\nbase_url = \"{base}\"\nworkspace = \"{WS}\"\n{scope}\nemail_file = \"{d}/email\"\n\
         api_token_file = \"{d}/token\"\n"
    ))
}

struct Fixture {
    server: MockServer,
    bitbucket: Bitbucket,
    _dir: TempDir,
}

async fn fixture_with(scope: &str) -> Fixture {
    let server = MockServer::start().await;
    let dir = secrets();
    let bitbucket = Bitbucket::from_config("bb", &config(&format!("{}/2.0", server.uri()), &dir, scope)).unwrap();
    Fixture { server, bitbucket, _dir: dir }
}

async fn fixture() -> Fixture {
    fixture_with(&format!("repository = \"{REPO}\"")).await
}

impl Fixture {
    /// Every request the test sent must be a documented Bitbucket 2.0 operation (the spec's server is `/2.0`).
    async fn conforms(&self) {
        spec_check::assert_conforms("bitbucket", "/2.0", &self.server.received_requests().await.unwrap());
    }
}

fn subject() -> Subject {
    Subject {
        account_id: ACCOUNT.into(),
        email: Some("ada+git@example.com".into()),
        display_name: None,
        fields: Default::default(),
    }
}

fn target(level: &str) -> Target {
    Target { name: level.into(), role: None }
}

fn call(m: &str, p: &str) -> MockBuilder {
    Mock::given(method(m)).and(path(p)).and(basic_auth(EMAIL, TOKEN)).and(header("accept", "application/json"))
}

fn perm_path(user: &str) -> String {
    format!("/2.0/repositories/{WS}/{REPO}/permissions-config/users/{user}")
}

async fn member(server: &MockServer, status: u16) {
    call("GET", &format!("/2.0/workspaces/{WS}/members/{ACCOUNT}"))
        .respond_with(ResponseTemplate::new(status).set_body_json(serde_json::json!({
            "type": "workspace_membership", "user": {"account_id": ACCOUNT, "uuid": "{u}"}, "workspace": {"slug": WS}
        })))
        .expect(1)
        .mount(server)
        .await;
}

async fn current(server: &MockServer, user: &str, held: Option<&str>) {
    let resp = match held {
        Some(p) => ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "type": "repository_user_permission", "permission": p, "user": {"account_id": user}
        })),
        None => ResponseTemplate::new(404)
            .set_body_json(serde_json::json!({"type": "error", "error": {"message": "No permission"}})),
    };
    call("GET", &perm_path(user)).respond_with(resp).expect(1).mount(server).await;
}

fn put(user: &str, level: &str) -> MockBuilder {
    call("PUT", &perm_path(user))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({"permission": level})))
}

#[tokio::test]
async fn grant_puts_the_permission_for_a_workspace_member() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    put(ACCOUNT, "write")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"permission": "write"})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.bitbucket.grant(&subject(), &target("write")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn grant_raises_a_lower_permission() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, Some("read")).await;
    put(ACCOUNT, "admin").respond_with(ResponseTemplate::new(200)).expect(1).mount(&f.server).await;
    assert_eq!(f.bitbucket.grant(&subject(), &target("Admin")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn the_same_or_a_higher_permission_is_already_granted_and_never_lowered() {
    for held in ["write", "admin"] {
        let f = fixture().await;
        member(&f.server, 200).await;
        current(&f.server, ACCOUNT, Some(held)).await;
        call("PUT", &perm_path(ACCOUNT)).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
        assert_eq!(f.bitbucket.grant(&subject(), &target("write")).await, Ok(GrantOutcome::AlreadyGranted), "{held}");
        f.conforms().await;
    }
}

#[tokio::test]
async fn revoke_deletes_the_permission_it_granted() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, Some("write")).await;
    call("DELETE", &perm_path(ACCOUNT)).respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.server).await;
    assert_eq!(f.bitbucket.revoke(&subject(), &target("write")).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_leaves_another_level_alone() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, Some("admin")).await;
    call("DELETE", &perm_path(ACCOUNT)).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    assert_eq!(f.bitbucket.revoke(&subject(), &target("write")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn no_permission_is_already_absent_once_the_repository_is_confirmed() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    call("GET", &format!("/2.0/repositories/{WS}/{REPO}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"type": "repository", "slug": REPO})))
        .expect(1)
        .mount(&f.server)
        .await;
    call("DELETE", &perm_path(ACCOUNT)).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    assert_eq!(f.bitbucket.revoke(&subject(), &target("write")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_missing_repository_is_not_found_rather_than_absent() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    call("GET", &format!("/2.0/repositories/{WS}/{REPO}"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.revoke(&subject(), &target("write")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("bitbucket repository {WS}/{REPO}") });
    f.conforms().await;
}

#[tokio::test]
async fn a_non_member_account_is_looked_up_by_email() {
    let f = fixture().await;
    let other = "712020:5ac7c1e2-other";
    member(&f.server, 404).await;
    call("GET", &format!("/2.0/workspaces/{WS}/members"))
        .and(query_param("q", "user.email IN (\"ada+git@example.com\")"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "pagelen": 50, "values": [{"type": "workspace_membership", "user": {"account_id": other, "uuid": "{x}"}}]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    current(&f.server, other, None).await;
    put(other, "read").respond_with(ResponseTemplate::new(200)).expect(1).mount(&f.server).await;
    assert_eq!(f.bitbucket.grant(&subject(), &target("read")).await, Ok(GrantOutcome::Granted));
    // Escaped as Bitbucket documents it: %20 and %22 (never +), and the + of the address kept literal (%2B).
    let requests = f.server.received_requests().await.unwrap();
    let search = requests.iter().find(|r| r.url.path() == format!("/2.0/workspaces/{WS}/members")).unwrap();
    assert_eq!(search.url.query(), Some("q=user.email%20IN%20%28%22ada%2Bgit%40example.com%22%29"));
    f.conforms().await;
}

#[tokio::test]
async fn a_user_in_neither_form_is_not_found() {
    let f = fixture().await;
    member(&f.server, 404).await;
    call("GET", &format!("/2.0/workspaces/{WS}/members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.grant(&subject(), &target("read")).await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    assert!(err.to_string().contains("invite them to the workspace"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_project_scope_uses_the_project_endpoints_and_levels() {
    let f = fixture_with("project_key = \"PAY\"").await;
    let p = format!("/2.0/workspaces/{WS}/projects/PAY/permissions-config/users/{ACCOUNT}");
    member(&f.server, 200).await;
    call("GET", &p)
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"permission": "write"})))
        .expect(1)
        .mount(&f.server)
        .await;
    call("PUT", &p)
        .and(body_json(serde_json::json!({"permission": "create-repo"})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.bitbucket.grant(&subject(), &target("create-repo")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_level_is_permanent_before_any_call() {
    let f = fixture().await;
    let err = f.bitbucket.grant(&subject(), &target("create-repo")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("not one of read, write, admin"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_429_without_a_hint_backs_off_by_default() {
    let f = fixture().await;
    call("GET", &format!("/2.0/workspaces/{WS}/members/{ACCOUNT}"))
        .respond_with(ResponseTemplate::new(429).set_body_string("Rate limit for this resource has been exceeded"))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.grant(&subject(), &target("read")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(DEFAULT_BACKOFF), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    put(ACCOUNT, "read").respond_with(ResponseTemplate::new(503)).expect(1).mount(&f.server).await;
    let err = f.bitbucket.grant(&subject(), &target("read")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_402_plan_limit_is_permanent() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    put(ACCOUNT, "read").respond_with(ResponseTemplate::new(402)).expect(1).mount(&f.server).await;
    let err = f.bitbucket.grant(&subject(), &target("read")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("user limit"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_401_and_a_403_say_the_fix_without_secrets() {
    let f = fixture().await;
    call("GET", &format!("/2.0/workspaces/{WS}/members/{ACCOUNT}"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.grant(&subject(), &target("read")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("app passwords no longer work"), "{err}");
    assert!(!err.to_string().contains(TOKEN) && !err.to_string().contains(EMAIL));
    call("GET", &format!("/2.0/repositories/{WS}/{REPO}/permissions-config/users"))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("admin:repository:bitbucket"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_lists_the_permissions_it_administers() {
    let f = fixture().await;
    call("GET", &format!("/2.0/repositories/{WS}/{REPO}/permissions-config/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"pagelen": 10, "values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    f.bitbucket.test_connection().await.unwrap();
    f.conforms().await;
}

#[test]
fn config_needs_exactly_one_scope_and_debug_hides_secrets() {
    let dir = secrets();
    for scope in ["", "repository = \"r\"\nproject_key = \"P\""] {
        let err = Bitbucket::from_config("bb", &config("https://api.bitbucket.org/2.0", &dir, scope)).unwrap_err();
        assert!(err.contains("exactly one of repository"), "{err}");
    }
    let d = dir.path().display();
    let err = Bitbucket::from_config(
        "bb",
        &app(&format!(
            "kind = \"bitbucket\"\nrepository = \"r\"\nemail_file = \"{d}/email\"\napi_token_file = \"{d}/token\""
        )),
    )
    .unwrap_err();
    assert!(err.contains("set workspace"), "{err}");
    let bb = Bitbucket::from_config(
        "bb",
        &app(&format!("kind = \"bitbucket\"\nworkspace = \"w\"\nrepository = \"r\"\nemail_file = \"{d}/email\"\napi_token_file = \"{d}/token\"")),
    )
    .unwrap();
    let shown = format!("{bb:?}");
    assert!(shown.contains(API) && !shown.contains(TOKEN) && !shown.contains(EMAIL), "{shown}");
}

// ---- read-back ----

const LIST: &str = "/2.0/repositories/acme/payments-api/permissions-config/users";

fn perm(level: &str, account: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "repository_user_permission", "permission": level,
        "user": {"type": "user", "account_id": account, "uuid": format!("{{{name}-uuid}}"), "display_name": name,
                 "nickname": name}
    })
}

#[tokio::test]
async fn members_hold_exactly_the_level_across_next_pages() {
    let f = fixture().await;
    let next = format!("{}{LIST}?page=2", f.server.uri());
    call("GET", LIST)
        .and(wiremock::matchers::query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "pagelen": 3, "page": 1, "size": 4, "next": next,
            "values": [perm("write", "acc-a", "Ada"), perm("read", "acc-b", "Bob"), perm("admin", "acc-c", "Cy")]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    call("GET", LIST)
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "pagelen": 3, "page": 2, "size": 4, "values": [perm("write", "acc-d", "Di")]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let members = f.bitbucket.members(&target("write")).await.unwrap();
    assert_eq!(
        members,
        vec![
            Member { id: "acc-a".into(), keys: vec!["acc-a".into(), "{Ada-uuid}".into()], display: Some("Ada".into()) },
            Member { id: "acc-d".into(), keys: vec!["acc-d".into(), "{Di-uuid}".into()], display: Some("Di".into()) },
        ]
    );
    f.conforms().await;
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused() {
    let f = fixture().await;
    call("GET", LIST)
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "next": "https://evil.example/2.0/x?page=2", "values": [perm("write", "acc-a", "Ada")]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.members(&target("write")).await.unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("evil.example"), "{err}");
}

#[tokio::test]
async fn members_of_a_level_nobody_holds_are_none() {
    let f = fixture().await;
    call("GET", LIST)
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "pagelen": 10, "values": [perm("read", "acc-b", "Bob")]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.bitbucket.members(&target("admin")).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn members_of_a_missing_repository_are_not_found() {
    let f = fixture().await;
    call("GET", LIST)
        .respond_with(ResponseTemplate::new(404).set_body_json(
            serde_json::json!({"type": "error", "error": {"message": "Repository acme/payments-api not found"}}),
        ))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.bitbucket.members(&target("write")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "bitbucket repository acme/payments-api".into() });
    f.conforms().await;
}

#[tokio::test]
async fn members_of_a_project_level_read_the_project_list() {
    let f = fixture_with("project_key = \"PAY\"").await;
    call("GET", "/2.0/workspaces/acme/projects/PAY/permissions-config/users")
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "values": [{"type": "project_user_permission", "permission": "create-repo",
                        "user": {"account_id": "acc-e", "display_name": "Eve"}}]
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let members = f.bitbucket.members(&target("create-repo")).await.unwrap();
    assert_eq!(members, vec![Member { id: "acc-e".into(), keys: vec!["acc-e".into()], display: Some("Eve".into()) }]);
    f.conforms().await;
}

#[tokio::test]
async fn memberships_name_the_targets_matching_the_held_level() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, Some("write")).await;
    let held = f.bitbucket.memberships(&subject(), &[target("read"), target("write"), target("admin")]).await;
    assert_eq!(held, Ok(vec!["write".to_owned()]));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_without_a_permission_are_none() {
    let f = fixture().await;
    member(&f.server, 200).await;
    current(&f.server, ACCOUNT, None).await;
    assert_eq!(f.bitbucket.memberships(&subject(), &[target("read"), target("write")]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_of_an_unknown_user_are_none() {
    let f = fixture().await;
    member(&f.server, 404).await;
    call("GET", &format!("/2.0/workspaces/{WS}/members"))
        .and(query_param("q", "user.email IN (\"ada+git@example.com\")"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    call("GET", &perm_path(ACCOUNT)).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
    assert_eq!(f.bitbucket.memberships(&subject(), &[target("read")]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_is_active_for_a_workspace_member() {
    let f = fixture().await;
    member(&f.server, 200).await;
    assert_eq!(f.bitbucket.user_state(&subject()).await, Ok(UserState::Active));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_of_someone_outside_the_workspace_is_not_found() {
    let f = fixture().await;
    member(&f.server, 404).await;
    call("GET", &format!("/2.0/workspaces/{WS}/members"))
        .and(query_param("q", "user.email IN (\"ada+git@example.com\")"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"values": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.bitbucket.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_account_id_and_needs_one() {
    let f = fixture().await;
    assert_eq!(f.bitbucket.identity(&subject()), Ok(ACCOUNT.to_owned()));
    let mut s = subject();
    s.account_id = String::new();
    let err = f.bitbucket.identity(&s).unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("accountId"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}
