use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::json;
use tempfile::TempDir;
use wiremock::matchers::{body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "00Abc-okta-test-api-token";
const USER_ID: &str = "00u1abcdEFGHijklMN0x";
const GROUP_ID: &str = "00g1abcdEFGHijklMN0x";
const EMAIL: &str = "alice@example.com";
const CLIENT_ID: &str = "0oa1serviceappclient";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

struct Fixture {
    server: MockServer,
    okta: Okta,
    _dir: TempDir,
}

impl Fixture {
    /// Every request the test sent must be a documented Okta operation.
    async fn conforms(&self) {
        spec_check::assert_conforms("okta", "", &self.server.received_requests().await.unwrap());
    }
}

fn app(text: &str) -> ApplicationConfig {
    toml::from_str(text).unwrap()
}

/// An SSWS application against a fresh mock server.
async fn ssws(extra: &str) -> Fixture {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let text = format!(
        "kind = \"okta\"\nbase_url = \"{}/\"\ntoken_file = \"{}/token\"\n{extra}",
        server.uri(),
        dir.path().display()
    );
    let okta = Okta::from_config("okta", &app(&text)).unwrap();
    Fixture { server, okta, _dir: dir }
}

/// An OAuth service-app application against a fresh mock server.
async fn oauth() -> Fixture {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "kind = \"okta\"\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nkey_id = \"kid-1\"\n\
         private_key_file = \"{KEYS}/test-rsa.pkcs8.pem\"\nscopes = [\"okta.users.read\", \"okta.groups.manage\"]\n",
        server.uri()
    );
    let okta = Okta::from_config("okta", &app(&text)).unwrap();
    Fixture { server, okta, _dir: dir }
}

fn subject() -> Subject {
    Subject {
        account_id: "5b10ac8d82e05b22cc7d4ef5".into(),
        email: Some(EMAIL.into()),
        display_name: None,
        fields: Default::default(),
    }
}

fn target(name: &str) -> Target {
    Target { name: name.into(), role: None }
}

fn user_json() -> serde_json::Value {
    json!({"id": USER_ID, "status": "ACTIVE", "profile": {"login": EMAIL, "email": EMAIL}})
}

fn group_json(kind: &str) -> serde_json::Value {
    json!({"id": GROUP_ID, "type": kind, "profile": {"name": "Engineering"}})
}

/// A request with the SSWS token and `Accept: application/json`.
fn ssws_call(m: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(m))
        .and(path(p))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
}

async fn user_found(server: &MockServer) {
    ssws_call("GET", "/api/v1/users/alice@example.com")
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(server)
        .await;
}

async fn group_by_name(server: &MockServer, kind: &str) {
    ssws_call("GET", "/api/v1/groups")
        .and(query_param("search", "profile.name eq \"Engineering\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([group_json(kind)])))
        .expect(1)
        .mount(server)
        .await;
}

async fn user_groups(server: &MockServer, member: bool) {
    let groups = if member { json!([group_json("OKTA_GROUP")]) } else { json!([]) };
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(groups))
        .expect(1)
        .mount(server)
        .await;
}

fn membership() -> String {
    format!("/api/v1/groups/{GROUP_ID}/users/{USER_ID}")
}

#[tokio::test]
async fn grant_puts_the_membership_with_the_api_token() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, false).await;
    ssws_call("PUT", &membership())
        .and(body_string(""))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
    // The search filter is percent-encoded as Okta documents it (%20, not +).
    let requests = f.server.received_requests().await.unwrap();
    let search = requests.iter().find(|r| r.url.path() == "/api/v1/groups").unwrap();
    assert_eq!(search.url.query(), Some("search=profile.name%20eq%20%22Engineering%22"));
    f.conforms().await;
}

#[tokio::test]
async fn grant_of_a_member_is_already_granted_without_a_put() {
    let f = ssws("").await;
    user_found(&f.server).await;
    ssws_call("GET", &format!("/api/v1/groups/{GROUP_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json("OKTA_GROUP")))
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, true).await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    assert_eq!(f.okta.grant(&subject(), &target(GROUP_ID)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn the_membership_check_follows_the_next_link() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    let other = json!({"id": "00g9zzzzzzzzzzzzzzzz", "type": "OKTA_GROUP", "profile": {"name": "Other"}});
    let next = format!("<{}/api/v1/users/{USER_ID}/groups?page=2>; rel=\"next\"", f.server.uri());
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}/groups"))
        .and(wiremock::matchers::query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([other])).insert_header("link", next.as_str()))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}/groups"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([group_json("OKTA_GROUP")])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::AlreadyGranted));
    // No conformance check here: the spec documents no query parameters for
    // listUserGroups, so the cursor Okta puts in its Link header is not in the extract.
}

#[tokio::test]
async fn revoke_deletes_the_membership() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, true).await;
    ssws_call("DELETE", &membership()).respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.server).await;
    assert_eq!(f.okta.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_of_a_non_member_is_already_absent_without_a_delete() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, false).await;
    ssws_call("DELETE", &membership()).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    assert_eq!(f.okta.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_404_on_delete_is_already_absent_only_after_user_and_group_are_confirmed() {
    let f = ssws("").await;
    // The user is read twice: the lookup by login, then the confirmation by id.
    user_found(&f.server).await;
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    ssws_call("GET", &format!("/api/v1/groups/{GROUP_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json("OKTA_GROUP")))
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, true).await;
    ssws_call("DELETE", &membership())
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"errorCode": "E0000007", "errorSummary": "Not found: Resource not found"})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_404_on_delete_with_the_group_gone_is_not_found() {
    let f = ssws("").await;
    user_found(&f.server).await;
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .mount(&f.server)
        .await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    ssws_call("GET", &format!("/api/v1/groups/{GROUP_ID}"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "E0000007"})))
        .expect(1)
        .mount(&f.server)
        .await;
    user_groups(&f.server, true).await;
    ssws_call("DELETE", &membership()).respond_with(ResponseTemplate::new(404)).expect(1).mount(&f.server).await;
    let err = f.okta.revoke(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "not_found", "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_user_missing_by_login_and_by_email_is_not_found() {
    let f = ssws("").await;
    ssws_call("GET", "/api/v1/users/alice@example.com")
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "E0000007"})))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", "/api/v1/users")
        .and(query_param("search", "profile.email eq \"alice@example.com\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "Okta user with login or email \"alice@example.com\"".into() });
    f.conforms().await;
}

#[tokio::test]
async fn a_user_whose_login_differs_is_found_by_email() {
    let f = ssws("").await;
    ssws_call("GET", "/api/v1/users/alice@example.com")
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.server)
        .await;
    let found =
        json!([{"id": USER_ID, "status": "ACTIVE", "profile": {"login": "alice", "email": "Alice@Example.com"}}]);
    ssws_call("GET", "/api/v1/users")
        .and(query_param("search", "profile.email eq \"alice@example.com\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(found))
        .expect(1)
        .mount(&f.server)
        .await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, false).await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.server).await;
    assert_eq!(f.okta.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn subject_field_names_the_okta_login() {
    let f = ssws("subject_field = \"customfield_10100\"").await;
    ssws_call("GET", "/api/v1/users/alice.w")
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, false).await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.server).await;
    let mut s = subject();
    s.fields.insert("customfield_10100".into(), "alice.w".into());
    assert_eq!(f.okta.grant(&s, &target("Engineering")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;

    // Without the field's value the subject cannot be identified: a permanent error naming the field.
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("customfield_10100"), "{err}");
}

#[tokio::test]
async fn a_requester_without_email_is_a_permanent_error() {
    let f = ssws("").await;
    let mut s = subject();
    s.email = None;
    let err = f.okta.grant(&s, &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("no email address") && err.to_string().contains("subject_field"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_app_group_is_refused_with_the_reason() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "APP_GROUP").await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    let text = err.to_string();
    assert!(text.contains("APP_GROUP") && text.contains("only OKTA_GROUP"), "{text}");
    f.conforms().await;
}

#[tokio::test]
async fn a_missing_group_is_not_found() {
    let f = ssws("").await;
    user_found(&f.server).await;
    // Okta's search may return near matches; only the exact name counts.
    ssws_call("GET", "/api/v1/groups")
        .and(query_param("search", "profile.name eq \"Engineering\""))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": GROUP_ID, "type": "OKTA_GROUP", "profile": {"name": "engineering"}}])),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "Okta group named \"Engineering\"".into() });
    f.conforms().await;
}

#[tokio::test]
async fn a_429_surfaces_x_rate_limit_reset_as_the_retry_hint() {
    let f = ssws("").await;
    let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 30;
    ssws_call("GET", "/api/v1/users/alice@example.com")
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-rate-limit-limit", "600")
                .insert_header("x-rate-limit-remaining", "0")
                .insert_header("x-rate-limit-reset", reset.to_string().as_str())
                .set_body_json(json!({"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests."})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    let wait = err.retry_after().expect("a retry hint");
    assert!(err.is_transient(), "{err}");
    assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "{wait:?}");
    f.conforms().await;
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let f = ssws("").await;
    user_found(&f.server).await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    user_groups(&f.server, false).await;
    ssws_call("PUT", &membership()).respond_with(ResponseTemplate::new(503)).expect(1).mount(&f.server).await;
    let err = f.okta.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_rejected_api_token_is_unauthorized_with_the_fix_and_no_retry() {
    let f = ssws("").await;
    ssws_call("GET", "/api/v1/users/me")
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided"})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.okta.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("create a new one"), "{err}");
    assert!(!err.to_string().contains(TOKEN) && !format!("{:?}", f.okta).contains(TOKEN));
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_reads_the_tokens_own_user() {
    let f = ssws("").await;
    ssws_call("GET", "/api/v1/users/me")
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.test_connection().await, Ok(()));
    f.conforms().await;
}

/// The form fields of a token request.
fn form(r: &Request) -> std::collections::HashMap<String, String> {
    Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&r.body))).unwrap().query_pairs().into_owned().collect()
}

async fn token_endpoint(server: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token, "scope": "okta.users.read okta.groups.manage"}),
        ))
        .up_to_n_times(1)
        .expect(1)
        .mount(server)
        .await;
}

/// Asserts a token request is a client-credentials grant with a valid private_key_jwt assertion.
fn assert_client_assertion(r: &Request, token_url: &str) {
    let f = form(r);
    assert_eq!(f["grant_type"], "client_credentials");
    assert_eq!(f["scope"], "okta.users.read okta.groups.manage");
    assert_eq!(f["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert!(!f.contains_key("client_secret") && !f.contains_key("client_id"));
    let public = std::fs::read(format!("{KEYS}/test-rsa.pub.pem")).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[token_url]);
    v.set_issuer(&[CLIENT_ID]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &f["client_assertion"],
        &DecodingKey::from_rsa_pem(&public).unwrap(),
        &v,
    )
    .unwrap();
    assert_eq!(data.header.kid.as_deref(), Some("kid-1"));
    assert_eq!(data.claims["sub"], CLIENT_ID);
    let (iat, exp) = (data.claims["iat"].as_u64().unwrap(), data.claims["exp"].as_u64().unwrap());
    assert!(exp > iat && exp - iat <= 3600, "iat {iat} exp {exp}");
    assert!(data.claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
}

#[tokio::test]
async fn oauth_signs_a_client_assertion_and_refreshes_the_token_once_on_401() {
    let f = oauth().await;
    token_endpoint(&f.server, "access-1").await;
    token_endpoint(&f.server, "access-2").await;
    let bearer = |t: &str| header("authorization", format!("Bearer {t}").as_str());
    Mock::given(method("GET"))
        .and(path("/api/v1/users/alice@example.com"))
        .and(bearer("access-1"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided"})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/alice@example.com"))
        .and(bearer("access-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .and(bearer("access-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([group_json("OKTA_GROUP")])))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/users/{USER_ID}/groups")))
        .and(bearer("access-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("PUT"))
        .and(path(membership()))
        .and(bearer("access-2"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
    let requests = f.server.received_requests().await.unwrap();
    let token_url = format!("{}/oauth2/v1/token", f.server.uri());
    let tokens: Vec<&Request> = requests.iter().filter(|r| r.url.path() == "/oauth2/v1/token").collect();
    assert_eq!(tokens.len(), 2);
    for r in tokens {
        assert_client_assertion(r, &token_url);
    }
    f.conforms().await;
}

#[tokio::test]
async fn a_second_401_is_unauthorized() {
    let f = oauth().await;
    token_endpoint(&f.server, "access-1").await;
    token_endpoint(&f.server, "access-2").await;
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .and(query_param("limit", "1"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&f.server)
        .await;
    let err = f.okta.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn oauth_test_connection_lists_one_group() {
    let f = oauth().await;
    token_endpoint(&f.server, "access-1").await;
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .and(query_param("limit", "1"))
        .and(header("authorization", "Bearer access-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([group_json("OKTA_GROUP")])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.test_connection().await, Ok(()));
    f.conforms().await;
}

#[tokio::test]
async fn token_endpoint_refusals_say_what_to_fix() {
    let f = oauth().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_scope", "error_description": "The following scopes are not allowed: okta.groups.manage"}),
        ))
        .up_to_n_times(1)
        .expect(1)
        .mount(&f.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_dpop_proof", "error_description": "The DPoP proof JWT header is missing."}),
        ))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.okta.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("Okta API Scopes"), "{err}");
    let err = f.okta.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("DPoP"), "{err}");
    f.conforms().await;
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let d = dir.path().display();
    let err = |text: &str| Okta::from_config("okta", &app(text)).unwrap_err();
    assert!(err(&format!("kind = \"okta\"\ntoken_file = \"{d}/token\"")).contains("base_url is required"));
    assert!(err("kind = \"okta\"\nbase_url = \"https://acme.okta.com\"").contains("no credentials"));
    assert!(
        err(&format!(
            "kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\ntoken_file = \"{d}/token\"\nclient_id = \"x\""
        ))
        .contains("not both")
    );
    assert!(
        err("kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\nclient_id = \"x\"").contains("private_key_env")
    );
    assert!(
        err(&format!(
            "kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\nclient_id = \"x\"\nprivate_key_file = \"{d}/token\""
        ))
        .contains("not an RSA private key")
    );
    assert!(
        err("kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\ntoken_env = \"ACCESSGOV_TEST_UNSET_OKTA_TOKEN\"")
            .contains("ACCESSGOV_TEST_UNSET_OKTA_TOKEN")
    );
    assert!(
        err(&format!("kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\nclient_id = \"x\"\nscopes = 3\nprivate_key_file = \"{KEYS}/test-rsa.pkcs1.pem\""))
            .contains("scopes must be")
    );
    // A PKCS#1 key works as well as PKCS#8.
    Okta::from_config(
        "okta",
        &app(&format!("kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\nclient_id = \"x\"\nprivate_key_file = \"{KEYS}/test-rsa.pkcs1.pem\"")),
    )
    .unwrap();
}

#[test]
fn debug_output_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let okta = Okta::from_config(
        "okta",
        &app(&format!(
            "kind = \"okta\"\nbase_url = \"https://acme.okta.com\"\ntoken_file = \"{}/token\"",
            dir.path().display()
        )),
    )
    .unwrap();
    let shown = format!("{okta:?}");
    assert!(!shown.contains(TOKEN) && shown.contains("REDACTED"), "{shown}");
}

#[test]
fn link_headers_and_group_ids_parse() {
    let mut h = reqwest::header::HeaderMap::new();
    h.append("link", "<https://acme.okta.com/api/v1/users/x/groups?limit=200>; rel=\"self\"".parse().unwrap());
    h.append(
        "link",
        "<https://acme.okta.com/api/v1/users/x/groups?after=00g2&limit=200>; rel=\"next\"".parse().unwrap(),
    );
    assert_eq!(next_link(&h).unwrap().as_str(), "https://acme.okta.com/api/v1/users/x/groups?after=00g2&limit=200");
    assert!(looks_like_group_id(GROUP_ID));
    assert!(!looks_like_group_id("Engineering"));
    assert!(!looks_like_group_id(USER_ID));
}

// --- Read-back ---------------------------------------------------------------------------

fn member_json(id: &str, login: &str, email: &str) -> serde_json::Value {
    json!({"id": id, "status": "ACTIVE", "profile": {"login": login, "email": email, "firstName": "A", "lastName": "B"}})
}

#[tokio::test]
async fn members_follow_the_link_header_to_every_page_with_login_email_and_id_as_keys() {
    let f = ssws("").await;
    group_by_name(&f.server, "OKTA_GROUP").await;
    let users = format!("/api/v1/groups/{GROUP_ID}/users");
    let next = format!("<{}{users}?after=00u2&limit=200>; rel=\"next\"", f.server.uri());
    ssws_call("GET", &users)
        .and(query_param("limit", "200"))
        .and(wiremock::matchers::query_param_is_missing("after"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([member_json("00uA", "Alice@Example.com", "alice@example.com")]))
                .insert_header("link", format!("<{}{users}?limit=200>; rel=\"self\"", f.server.uri()).as_str())
                .append_header("link", next.as_str()),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", &users)
        .and(query_param("limit", "200"))
        .and(query_param("after", "00u2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([member_json("00uB", "bob", "Bob@Example.com")]))
                .insert_header(
                    "link",
                    format!("<{}{users}?after=00u2&limit=200>; rel=\"self\"", f.server.uri()).as_str(),
                ),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let members = f.okta.members(&target("Engineering")).await.unwrap();
    assert_eq!(
        members,
        vec![
            Member {
                id: "00uA".into(),
                keys: vec!["00ua".into(), "alice@example.com".into()],
                display: Some("A B".into())
            },
            Member {
                id: "00uB".into(),
                keys: vec!["00ub".into(), "bob".into(), "bob@example.com".into()],
                display: Some("A B".into())
            },
        ]
    );
    f.conforms().await;
}

#[tokio::test]
async fn members_of_an_empty_group_are_none_and_of_a_missing_group_not_found() {
    let f = ssws("").await;
    ssws_call("GET", &format!("/api/v1/groups/{GROUP_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json("OKTA_GROUP")))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", &format!("/api/v1/groups/{GROUP_ID}/users"))
        .and(query_param("limit", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.members(&target(GROUP_ID)).await, Ok(vec![]));
    let missing = "00g9missingmissing00";
    ssws_call("GET", &format!("/api/v1/groups/{missing}"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "E0000007"})))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", "/api/v1/groups")
        .and(query_param("search", "profile.name eq \"Nope\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert!(matches!(f.okta.members(&target(missing)).await, Err(ConnectorError::NotFound { .. })));
    assert!(matches!(f.okta.members(&target("Nope")).await, Err(ConnectorError::NotFound { .. })));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_are_the_targets_among_the_users_groups() {
    let f = ssws("").await;
    user_found(&f.server).await;
    let ops = json!({"id": "00g2opsopsopsopsops0", "type": "OKTA_GROUP", "profile": {"name": "Ops"}});
    let app = json!({"id": "00g3appappappappapp0", "type": "APP_GROUP", "profile": {"name": "Sales"}});
    ssws_call("GET", &format!("/api/v1/users/{USER_ID}/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([group_json("OKTA_GROUP"), ops, app])))
        .expect(1)
        .mount(&f.server)
        .await;
    let targets = [target("Engineering"), target("Finance"), target("00g2opsopsopsopsops0"), target("Sales")];
    assert_eq!(
        f.okta.memberships(&subject(), &targets).await,
        Ok(vec!["Engineering".to_owned(), "00g2opsopsopsopsops0".to_owned()])
    );
    f.conforms().await;
}

#[tokio::test]
async fn memberships_of_an_unknown_user_are_none() {
    let f = ssws("").await;
    ssws_call("GET", "/api/v1/users/alice@example.com")
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "E0000007"})))
        .expect(1)
        .mount(&f.server)
        .await;
    ssws_call("GET", "/api/v1/users")
        .and(query_param("search", "profile.email eq \"alice@example.com\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.okta.memberships(&subject(), &[target("Engineering")]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_reads_the_status() {
    for (status, want) in [
        ("ACTIVE", UserState::Active),
        ("PASSWORD_EXPIRED", UserState::Active),
        ("SUSPENDED", UserState::Inactive),
        ("DEPROVISIONED", UserState::Inactive),
    ] {
        let f = ssws("").await;
        ssws_call("GET", "/api/v1/users/alice@example.com")
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    json!({"id": USER_ID, "status": status, "profile": {"login": EMAIL, "email": EMAIL}}),
                ),
            )
            .expect(1)
            .mount(&f.server)
            .await;
        assert_eq!(f.okta.user_state(&subject()).await, Ok(want), "{status}");
        f.conforms().await;
    }
}

#[tokio::test]
async fn user_state_of_an_unknown_user_is_not_found() {
    let f = ssws("subject_field = \"customfield_10050\"").await;
    ssws_call("GET", "/api/v1/users/nobody")
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errorCode": "E0000007"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let mut s = subject();
    s.fields.insert("customfield_10050".into(), "nobody".into());
    assert_eq!(f.okta.user_state(&s).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_lowercased_email_or_subject_field() {
    let f = ssws("").await;
    let mut s = subject();
    s.email = Some("Alice@Example.COM".into());
    assert_eq!(f.okta.identity(&s), Ok("alice@example.com".to_owned()));
    s.email = None;
    assert!(matches!(f.okta.identity(&s), Err(ConnectorError::Permanent { .. })));
    let f = ssws("subject_field = \"customfield_10050\"").await;
    assert!(matches!(f.okta.identity(&subject()), Err(ConnectorError::Permanent { .. })), "field empty");
    s.fields.insert("customfield_10050".into(), "A.Smith".into());
    assert_eq!(f.okta.identity(&s), Ok("a.smith".to_owned()));
}
