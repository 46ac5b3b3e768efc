use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::BTreeMap;
use tempfile::TempDir;
use wiremock::matchers::{body_json, body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
const ADMIN: &str = "admin@example.com";
const SA: &str = "accessgov@acme-prod.iam.gserviceaccount.com";
const EMAIL: &str = "alice@example.com";
const GROUP: &str = "eng@example.com";
const DIR: &str = "/admin/directory/v1";
const BEARER_1: &str = "Bearer ya29.test-token-1";

struct Fixture {
    api: MockServer,
    tokens: MockServer,
    google: Google,
    _dir: TempDir,
}

impl Fixture {
    async fn new(extra: &str) -> Self {
        Self::with_key_token_uri("https://oauth2.googleapis.com/token", extra, true).await
    }

    /// `key_token_uri` goes into the key JSON; `override_url` adds `token_url` pointing at the mock.
    async fn with_key_token_uri(key_token_uri: &str, extra: &str, override_url: bool) -> Self {
        let api = MockServer::start().await;
        let tokens = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let pem = std::fs::read_to_string(format!("{KEYS}/test-rsa.pkcs8.pem")).unwrap();
        let key = json!({
            "type": "service_account",
            "project_id": "acme-prod",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": SA,
            "client_id": "112233445566778899",
            "token_uri": key_token_uri.replace("{tokens}", &tokens.uri()),
        });
        std::fs::write(dir.path().join("key.json"), key.to_string()).unwrap();
        let token_url = if override_url { format!("token_url = \"{}/token\"\n", tokens.uri()) } else { String::new() };
        let text = format!(
            "kind = \"google\"\nbase_url = \"{}\"\nadmin_subject = \"{ADMIN}\"\n\
             service_account_key_file = \"{}/key.json\"\n{token_url}{extra}",
            api.uri(),
            dir.path().display()
        );
        let google = Google::from_config("google", &app(&text)).unwrap();
        Self { api, tokens, google, _dir: dir }
    }

    /// The token endpoint hands out `token` (up to `times` times, if given).
    async fn token(&self, token: &str, times: Option<u64>) {
        let mut m = Mock::given(method("POST"))
            .and(path("/token"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(body_string_contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"))
            .and(body_string_contains("assertion="))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})),
            );
        if let Some(n) = times {
            m = m.up_to_n_times(n);
        }
        m.mount(&self.tokens).await;
    }

    /// Every request sent must be a documented Directory API operation (or the token exchange).
    async fn conforms(&self) {
        spec_check::assert_conforms("google", "", &self.api.received_requests().await.unwrap());
        self.token_requests_conform().await;
    }

    async fn token_requests_conform(&self) {
        spec_check::assert_conforms("google", "", &self.tokens.received_requests().await.unwrap());
        for r in self.tokens.received_requests().await.unwrap() {
            check_assertion(&r, &format!("{}/token", self.tokens.uri()));
        }
    }

    async fn user_exists(&self) {
        Mock::given(method("GET"))
            .and(path(format!("{DIR}/users/{EMAIL}")))
            .and(header("authorization", BEARER_1))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": "1001", "primaryEmail": EMAIL, "suspended": false})),
            )
            .expect(1)
            .mount(&self.api)
            .await;
    }
}

fn app(text: &str) -> ApplicationConfig {
    toml::from_str(text).unwrap()
}

/// The token request's JWT: RS256 by the service account's key, `sub` = the admin, the three scopes,
/// `aud` = the token endpoint. (gcp_auth pads its base64url parts with `=`, which Google accepts but
/// `jsonwebtoken::decode` does not, so the signature and the claims are checked separately.)
fn check_assertion(r: &wiremock::Request, token_endpoint: &str) {
    let body = String::from_utf8(r.body.clone()).unwrap();
    let form: BTreeMap<String, String> =
        Url::parse(&format!("http://form/?{body}")).unwrap().query_pairs().into_owned().collect();
    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let jwt = &form["assertion"];
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    let public = DecodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/test-rsa.pub.pem")).unwrap()).unwrap();
    let valid =
        jsonwebtoken::crypto::verify(signature.trim_end_matches('='), signed.as_bytes(), &public, Algorithm::RS256);
    assert!(valid.unwrap(), "the assertion is signed with the service account's key");
    let unpadded: Vec<&str> = jwt.split('.').map(|p| p.trim_end_matches('=')).collect();
    let data = jsonwebtoken::dangerous::insecure_decode::<Value>(unpadded.join(".")).unwrap();
    assert_eq!(data.header.alg, Algorithm::RS256);
    let c = data.claims;
    assert_eq!(c["iss"], SA);
    assert_eq!(c["sub"], ADMIN);
    assert_eq!(c["aud"], token_endpoint);
    assert_eq!(c["scope"], SCOPES.join(" "));
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp > iat && exp - iat <= 3600, "lifetime {}", exp - iat);
}

fn subject() -> Subject {
    Subject {
        account_id: "5b10ac8d82e05b22cc7d4ef5".into(),
        email: Some(EMAIL.into()),
        display_name: None,
        fields: Default::default(),
    }
}

fn target(role: Option<&str>) -> Target {
    Target { name: GROUP.into(), role: role.map(str::to_owned) }
}

fn error(code: u16, reason: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(code).set_body_json(json!({
        "error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}
    }))
}

#[tokio::test]
async fn grant_checks_the_user_then_inserts_the_member_with_role_member() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .and(header("authorization", BEARER_1))
        .and(body_json(json!({"email": EMAIL, "role": "MEMBER"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"kind": "admin#directory#member", "id": "1001", "email": EMAIL, "role": "MEMBER", "type": "USER", "status": "ACTIVE"}),
        ))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.grant(&subject(), &target(None)).await, Ok(GrantOutcome::Granted));
    assert_eq!(f.tokens.received_requests().await.unwrap().len(), 1);
    f.conforms().await;
}

#[tokio::test]
async fn the_token_is_cached_across_calls() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .and(header("authorization", BEARER_1))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&f.api)
        .await;
    for _ in 0..2 {
        assert_eq!(f.google.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::Revoked));
    }
    assert_eq!(f.tokens.received_requests().await.unwrap().len(), 1, "one token for both calls");
    f.conforms().await;
}

#[tokio::test]
async fn a_duplicate_member_is_already_granted() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .and(body_json(json!({"email": EMAIL, "role": "MEMBER"})))
        .respond_with(error(409, "duplicate", "Member already exists."))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.grant(&subject(), &target(None)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_duplicate_with_a_lower_role_is_raised_to_the_rules_role() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .and(body_json(json!({"email": EMAIL, "role": "OWNER"})))
        .respond_with(error(409, "duplicate", "Member already exists."))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"email": EMAIL, "role": "MEMBER"})))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .and(header("authorization", BEARER_1))
        .and(body_json(json!({"role": "OWNER"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"email": EMAIL, "role": "OWNER"})))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.grant(&subject(), &target(Some("owner"))).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn a_duplicate_with_the_same_or_a_higher_role_is_left_alone() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .and(body_json(json!({"email": EMAIL, "role": "MANAGER"})))
        .respond_with(error(409, "duplicate", "Member already exists."))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"email": EMAIL, "role": "OWNER"})))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("PATCH")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.api).await;
    assert_eq!(f.google.grant(&subject(), &target(Some("MANAGER"))).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_deletes_the_member() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .and(header("authorization", BEARER_1))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn a_missing_member_is_already_absent_once_group_and_user_are_confirmed() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .respond_with(error(404, "notFound", "Resource Not Found: memberKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups/{GROUP}")))
        .and(header("authorization", BEARER_1))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "03abc", "email": GROUP, "name": "Eng"})))
        .expect(1)
        .mount(&f.api)
        .await;
    f.user_exists().await;
    assert_eq!(f.google.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_from_a_missing_group_is_not_found() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .respond_with(error(404, "notFound", "Resource Not Found: groupKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups/{GROUP}")))
        .respond_with(error(404, "notFound", "Resource Not Found: groupKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.revoke(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("google: group {GROUP}") });
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_user_is_not_found_and_nothing_is_inserted() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/users/{EMAIL}")))
        .respond_with(error(404, "notFound", "Resource Not Found: userKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.api).await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    assert!(err.to_string().contains("alice@example.com is not a user of this Workspace"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_suspended_user_is_refused() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/users/{EMAIL}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"primaryEmail": EMAIL, "suspended": true})))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.api).await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("suspended"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_group_is_not_found() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .respond_with(error(404, "notFound", "Resource Not Found: groupKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("google: group {GROUP}") });
    f.conforms().await;
}

#[tokio::test]
async fn a_forbidden_group_is_unauthorized_with_the_delegation_fix() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .respond_with(error(403, "forbidden", "Not Authorized to access this resource/api"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    let text = err.to_string();
    assert!(text.contains("Not Authorized to access this resource/api"), "{text}");
    assert!(text.contains("Domain-wide delegation") && text.contains("112233445566778899"), "{text}");
    assert!(text.contains("admin.directory.group.member"), "{text}");
    f.conforms().await;
}

#[tokio::test]
async fn a_403_rate_limit_is_transient() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .respond_with(error(403, "userRateLimitExceeded", "User Rate Limit Exceeded"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("userRateLimitExceeded"), "{err}");
    assert_eq!(err.retry_after(), None, "Google sends no hint: the worker's backoff applies");
    f.conforms().await;
}

#[tokio::test]
async fn a_403_quota_exceeded_is_transient() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .respond_with(error(403, "quotaExceeded", "Quota exceeded for quota metric"))
        .expect(1)
        .mount(&f.api)
        .await;
    assert!(f.google.revoke(&subject(), &target(None)).await.unwrap_err().is_transient());
    f.conforms().await;
}

#[tokio::test]
async fn a_429_honours_retry_after() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .respond_with(error(429, "rateLimitExceeded", "Rate Limit Exceeded").insert_header("retry-after", "7"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.revoke(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    f.conforms().await;
}

#[tokio::test]
async fn a_503_backend_error_is_transient() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    Mock::given(method("POST"))
        .and(path(format!("{DIR}/groups/{GROUP}/members")))
        .respond_with(error(503, "backendError", "Backend Error"))
        .expect(1)
        .mount(&f.api)
        .await;
    let err = f.google.grant(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_401_fetches_a_new_token_once() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", Some(1)).await;
    f.token("ya29.test-token-2", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .and(header("authorization", BEARER_1))
        .respond_with(error(401, "authError", "Invalid Credentials"))
        .expect(1)
        .mount(&f.api)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/{EMAIL}")))
        .and(header("authorization", "Bearer ya29.test-token-2"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::Revoked));
    assert_eq!(f.tokens.received_requests().await.unwrap().len(), 2);
    f.conforms().await;
}

#[tokio::test]
async fn a_second_401_is_unauthorized() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .respond_with(error(401, "authError", "Invalid Credentials"))
        .expect(2)
        .mount(&f.api)
        .await;
    let err = f.google.revoke(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert_eq!(f.tokens.received_requests().await.unwrap().len(), 2);
    f.conforms().await;
}

#[tokio::test]
async fn a_refused_token_request_explains_domain_wide_delegation() {
    let f = Fixture::new("").await;
    // gcp_auth tries the token endpoint 5 times (50..400 ms apart) before giving up.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "unauthorized_client",
            "error_description": "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested."
        })))
        .expect(5)
        .mount(&f.tokens)
        .await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.api).await;
    let err = f.google.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    let text = err.to_string();
    assert!(text.contains("unauthorized_client") && text.contains("Domain-wide delegation"), "{text}");
    assert!(text.contains(SA) && text.contains(ADMIN) && text.contains("112233445566778899"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    f.token_requests_conform().await;
}

#[tokio::test]
async fn test_connection_lists_one_group_of_the_customer() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups")))
        .and(query_param("customer", "my_customer"))
        .and(query_param("maxResults", "1"))
        .and(header("authorization", BEARER_1))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"kind": "admin#directory#groups", "groups": []})))
        .expect(1)
        .mount(&f.api)
        .await;
    f.google.test_connection().await.unwrap();
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_uses_the_configured_customer_id() {
    let f = Fixture::new("customer_id = \"C03az79cb\"\n").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups")))
        .and(query_param("customer", "C03az79cb"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"groups": []})))
        .expect(1)
        .mount(&f.api)
        .await;
    f.google.test_connection().await.unwrap();
    f.conforms().await;
}

#[tokio::test]
async fn the_keys_token_uri_is_used_without_token_url() {
    let f = Fixture::with_key_token_uri("{tokens}/token", "", false).await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DIR}/groups")))
        .and(header("authorization", BEARER_1))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"groups": []})))
        .expect(1)
        .mount(&f.api)
        .await;
    f.google.test_connection().await.unwrap();
    f.conforms().await;
}

#[tokio::test]
async fn the_subject_field_replaces_the_email() {
    let f = Fixture::new("subject_field = \"customfield_10200\"\n").await;
    f.token("ya29.test-token-1", None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DIR}/groups/{GROUP}/members/alice.smith@example.com")))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.api)
        .await;
    let mut s = subject();
    s.fields.insert("customfield_10200".into(), "alice.smith@example.com".into());
    assert_eq!(f.google.revoke(&s, &target(None)).await, Ok(RevokeOutcome::Revoked));
    s.fields.clear();
    let err = f.google.revoke(&s, &target(None)).await.unwrap_err();
    assert!(err.to_string().contains("customfield_10200"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn subjects_and_roles_that_cannot_work_are_permanent_before_any_call() {
    let f = Fixture::new("").await;
    let mut s = subject();
    s.email = None;
    let err = f.google.grant(&s, &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("no email address"), "{err}");
    let err = f.google.grant(&subject(), &target(Some("admin"))).await.unwrap_err();
    assert!(err.to_string().contains("MEMBER, MANAGER or OWNER"), "{err}");
    assert!(f.api.received_requests().await.unwrap().is_empty());
    assert!(f.tokens.received_requests().await.unwrap().is_empty());
}

#[test]
fn config_errors_name_the_missing_key_and_debug_hides_the_key() {
    let err =
        Google::from_config("g", &app("kind = \"google\"\nservice_account_key_file = \"/nonexistent\"\n")).unwrap_err();
    assert!(err.contains("admin_subject"), "{err}");
    let err = Google::from_config("g", &app("kind = \"google\"\nadmin_subject = \"a@example.com\"\n")).unwrap_err();
    assert!(err.contains("service_account_key_env or service_account_key_file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.json"), r#"{"type": "authorized_user", "client_id": "x"}"#).unwrap();
    let text = format!(
        "kind = \"google\"\nadmin_subject = \"a@example.com\"\nservice_account_key_file = \"{}/k.json\"\n",
        dir.path().display()
    );
    let err = Google::from_config("g", &app(&text)).unwrap_err();
    assert!(err.contains("authorized_user"), "{err}");
    std::fs::write(
        dir.path().join("k.json"),
        json!({"type": "service_account", "client_email": SA, "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"}).to_string(),
    )
    .unwrap();
    let err = Google::from_config("g", &app(&text)).unwrap_err();
    assert!(err.contains("unusable service-account key") && !err.contains("bm90IGEga2V5"), "{err}");
}

#[tokio::test]
async fn debug_output_never_shows_the_key() {
    let f = Fixture::new("").await;
    let shown = format!("{:?}", f.google);
    assert!(shown.contains(ADMIN) && shown.contains("[REDACTED]"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn build_one_makes_a_google_connector() {
    let dir = tempfile::tempdir().unwrap();
    let pem = std::fs::read_to_string(format!("{KEYS}/test-rsa.pkcs8.pem")).unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        json!({"type": "service_account", "client_email": SA, "private_key": pem}).to_string(),
    )
    .unwrap();
    let text = format!(
        "kind = \"google\"\nadmin_subject = \"{ADMIN}\"\nservice_account_key_file = \"{}/k.json\"\n",
        dir.path().display()
    );
    let c = crate::connectors::build_one("g", &app(&text)).unwrap();
    assert_eq!(c.kind(), "google");
}

// --- Read-back ---------------------------------------------------------------------------

/// A Directory API GET with the bearer token.
fn api_get(p: &str) -> wiremock::MockBuilder {
    Mock::given(method("GET")).and(path(format!("{DIR}{p}"))).and(header("authorization", BEARER_1))
}

fn named(name: &str, role: Option<&str>) -> Target {
    Target { name: name.into(), role: role.map(str::to_owned) }
}

#[tokio::test]
async fn members_follow_next_page_token_and_keep_users_with_the_role() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    let members = format!("/groups/{GROUP}/members");
    api_get(&members)
        .and(query_param("maxResults", "200"))
        .and(wiremock::matchers::query_param_is_missing("pageToken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "admin#directory#members",
            "members": [
                {"kind": "admin#directory#member", "id": "1001", "email": "Alice@Example.com", "role": "OWNER", "type": "USER", "status": "ACTIVE"},
                {"kind": "admin#directory#member", "id": "2002", "email": "sub-team@example.com", "role": "MEMBER", "type": "GROUP"},
                {"kind": "admin#directory#member", "id": "C01abc", "role": "MEMBER", "type": "CUSTOMER"}
            ],
            "nextPageToken": "tok/2+=="
        })))
        .expect(2)
        .mount(&f.api)
        .await;
    api_get(&members)
        .and(query_param("maxResults", "200"))
        .and(query_param("pageToken", "tok/2+=="))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "admin#directory#members",
            "members": [{"id": "1003", "email": "bob@example.com", "role": "MEMBER", "type": "USER"}]
        })))
        .expect(2)
        .mount(&f.api)
        .await;
    let alice =
        Member { id: "1001".into(), keys: vec!["alice@example.com".into()], display: Some("alice@example.com".into()) };
    let bob =
        Member { id: "1003".into(), keys: vec!["bob@example.com".into()], display: Some("bob@example.com".into()) };
    assert_eq!(f.google.members(&target(None)).await, Ok(vec![alice.clone(), bob]));
    // A MANAGER target is held by managers and owners only.
    assert_eq!(f.google.members(&target(Some("manager"))).await, Ok(vec![alice]));
    f.conforms().await;
}

#[tokio::test]
async fn members_of_an_empty_group_are_none_and_of_a_missing_group_not_found() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    api_get(&format!("/groups/{GROUP}/members"))
        .and(query_param("maxResults", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"kind": "admin#directory#members"})))
        .expect(1)
        .mount(&f.api)
        .await;
    api_get("/groups/nope@example.com/members")
        .respond_with(error(404, "notFound", "Resource Not Found: groupKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.members(&target(None)).await, Ok(vec![]));
    assert!(matches!(f.google.members(&named("nope@example.com", None)).await, Err(ConnectorError::NotFound { .. })));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_are_the_targets_among_the_users_groups_on_every_page() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    f.user_exists().await;
    api_get("/groups")
        .and(query_param("userKey", EMAIL))
        .and(query_param("maxResults", "200"))
        .and(wiremock::matchers::query_param_is_missing("pageToken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "admin#directory#groups",
            "groups": [{"id": "03x1", "email": GROUP, "aliases": ["engineering@example.com"], "name": "Eng"}],
            "nextPageToken": "p2"
        })))
        .expect(1)
        .mount(&f.api)
        .await;
    api_get("/groups")
        .and(query_param("userKey", EMAIL))
        .and(query_param("pageToken", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "groups": [{"id": "03x2", "email": "ops@example.com", "name": "Ops"}]
        })))
        .expect(1)
        .mount(&f.api)
        .await;
    // The OWNER target is checked with members.get: alice is a MEMBER of ops only.
    api_get("/groups/ops@example.com/members/alice@example.com")
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"email": EMAIL, "role": "MEMBER", "type": "USER"})),
        )
        .expect(1)
        .mount(&f.api)
        .await;
    let targets = [
        named("Engineering@example.com", None),
        named("finance@example.com", None),
        named("03x2", None),
        named("ops@example.com", Some("OWNER")),
    ];
    assert_eq!(
        f.google.memberships(&subject(), &targets).await,
        Ok(vec!["Engineering@example.com".to_owned(), "03x2".to_owned()])
    );
    f.conforms().await;
}

#[tokio::test]
async fn memberships_of_an_unknown_user_are_none() {
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    api_get(&format!("/users/{EMAIL}"))
        .respond_with(error(404, "notFound", "Resource Not Found: userKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.memberships(&subject(), &[target(None)]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_reads_suspended_and_archived() {
    for (user, want) in [
        (json!({"suspended": false, "archived": false}), UserState::Active),
        (json!({"suspended": true}), UserState::Inactive),
        (json!({"suspended": false, "archived": true}), UserState::Inactive),
    ] {
        let f = Fixture::new("").await;
        f.token("ya29.test-token-1", None).await;
        let mut body = json!({"id": "1001", "primaryEmail": EMAIL});
        body.as_object_mut().unwrap().extend(user.as_object().unwrap().clone());
        api_get(&format!("/users/{EMAIL}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&f.api)
            .await;
        assert_eq!(f.google.user_state(&subject()).await, Ok(want), "{user}");
        f.conforms().await;
    }
    let f = Fixture::new("").await;
    f.token("ya29.test-token-1", None).await;
    api_get(&format!("/users/{EMAIL}"))
        .respond_with(error(404, "notFound", "Resource Not Found: userKey"))
        .expect(1)
        .mount(&f.api)
        .await;
    assert_eq!(f.google.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_lowercased_address_grant_adds() {
    let f = Fixture::new("").await;
    let mut s = subject();
    s.email = Some("Alice@Example.COM".into());
    assert_eq!(f.google.identity(&s), Ok("alice@example.com".to_owned()));
    s.email = None;
    assert!(matches!(f.google.identity(&s), Err(ConnectorError::Permanent { .. })));
    let f = Fixture::new("subject_field = \"customfield_10050\"").await;
    s.fields.insert("customfield_10050".into(), "not-an-address".into());
    assert!(matches!(f.google.identity(&s), Err(ConnectorError::Permanent { .. })));
    s.fields.insert("customfield_10050".into(), "A.Smith@Example.com".into());
    assert_eq!(f.google.identity(&s), Ok("a.smith@example.com".to_owned()));
}
