use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
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
