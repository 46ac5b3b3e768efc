use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use jsonwebtoken::{DecodingKey, Validation};
use tempfile::TempDir;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SECRET: &str = "Xy7Q~entra-test-client-secret";
const USER_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const GROUP_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const EMAIL: &str = "alice@example.com";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
/// `openssl x509 -in test-rsa.cert.pem -outform der | openssl dgst -sha256 -binary | base64url`
const CERT_X5T_S256: &str = "l1ZFsN_XAF8TT57My-VVMFChrdp2zKkGW36y2VZ7hKA";

struct Fixture {
    graph: MockServer,
    login: MockServer,
    entra: Entra,
    _dir: TempDir,
}

impl Fixture {
    /// Every request sent to Graph must be a documented Graph v1.0 operation.
    async fn conforms(&self) {
        spec_check::assert_conforms("entra", "/v1.0", &self.graph.received_requests().await.unwrap());
    }

    fn token_path() -> String {
        format!("/{TENANT}/oauth2/v2.0/token")
    }

    /// The token endpoint hands out `token` once.
    async fn token(&self, token: &str) {
        Mock::given(method("POST"))
            .and(path(Self::token_path()))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
            ))
            .up_to_n_times(1)
            .expect(1)
            .mount(&self.login)
            .await;
    }
}

fn app(text: &str) -> ApplicationConfig {
    toml::from_str(text).unwrap()
}

async fn fixture_with(credential: &str, extra: &str) -> Fixture {
    let graph = MockServer::start().await;
    let login = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let cert = std::fs::read_to_string(format!("{KEYS}/test-rsa.cert.pem")).unwrap();
    let key = std::fs::read_to_string(format!("{KEYS}/test-rsa.pkcs8.pem")).unwrap();
    std::fs::write(dir.path().join("cert.pem"), format!("{key}{cert}")).unwrap();
    let credential = credential.replace("{dir}", &dir.path().display().to_string());
    let text = format!(
        "kind = \"entra\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n{credential}\n\
         base_url = \"{}/v1.0\"\nlogin_url = \"{}\"\n{extra}",
        graph.uri(),
        login.uri()
    );
    let entra = Entra::from_config("entra", &app(&text)).unwrap();
    Fixture { graph, login, entra, _dir: dir }
}

async fn fixture(extra: &str) -> Fixture {
    let f = fixture_with("client_secret_file = \"{dir}/secret\"", extra).await;
    f.token("token-1").await;
    f
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

fn user_json() -> Value {
    json!({"id": USER_ID, "userPrincipalName": EMAIL, "mail": EMAIL, "accountEnabled": true})
}

fn group_json(extra: Value) -> Value {
    let mut g = json!({
        "id": GROUP_ID, "displayName": "Engineering", "groupTypes": [], "securityEnabled": true,
        "mailEnabled": false, "onPremisesSyncEnabled": null, "isAssignableToRole": false
    });
    g.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    g
}

/// A Graph request with the bearer token and `Accept: application/json`.
fn graph_call(m: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(m))
        .and(path(format!("/v1.0{p}")))
        .and(header("authorization", "Bearer token-1"))
        .and(header("accept", "application/json"))
}

async fn user_found(f: &Fixture) {
    graph_call("GET", "/users/alice@example.com")
        .and(query_param("$select", USER_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.graph)
        .await;
}

async fn group_by_name(f: &Fixture, group: Value) {
    graph_call("GET", "/groups")
        .and(query_param("$filter", "displayName eq 'Engineering'"))
        .and(query_param("$select", GROUP_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [group]})))
        .expect(1)
        .mount(&f.graph)
        .await;
}

fn add_body() -> Value {
    json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{USER_ID}")})
}

fn add_member() -> wiremock::MockBuilder {
    graph_call("POST", &format!("/groups/{GROUP_ID}/members/$ref"))
        .and(header("content-type", "application/json"))
        .and(body_json(add_body()))
}

fn remove_member() -> wiremock::MockBuilder {
    graph_call("DELETE", &format!("/groups/{GROUP_ID}/members/{USER_ID}/$ref"))
}

/// The form fields of a token request.
fn form(r: &Request) -> std::collections::HashMap<String, String> {
    Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&r.body))).unwrap().query_pairs().into_owned().collect()
}

#[tokio::test]
async fn grant_adds_a_member_ref_with_a_client_secret_token() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member().respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.graph).await;
    assert_eq!(f.entra.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));

    let tokens = f.login.received_requests().await.unwrap();
    let form = form(&tokens[0]);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert!(!form.contains_key("client_assertion"));
    // Filters are percent-encoded as Graph documents them (%20, not +).
    let requests = f.graph.received_requests().await.unwrap();
    let search = requests.iter().find(|r| r.url.path() == "/v1.0/groups").unwrap();
    assert!(search.url.query().unwrap().starts_with("$filter=displayName%20eq%20%27Engineering%27&"), "{}", search.url);
    f.conforms().await;
}

#[tokio::test]
async fn the_already_exist_400_is_already_granted() {
    let f = fixture("").await;
    user_found(&f).await;
    graph_call("GET", &format!("/groups/{GROUP_ID}"))
        .and(query_param("$select", GROUP_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json(json!({}))))
        .expect(1)
        .mount(&f.graph)
        .await;
    add_member()
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "code": "Request_BadRequest",
            "message": "One or more added object references already exist for the following modified properties: 'members'.",
            "innerError": {"date": "2026-11-25T10:00:00", "request-id": "r1", "client-request-id": "r1"}
        }})))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.grant(&subject(), &target(GROUP_ID)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn another_400_is_permanent() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member()
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": {"code": "Request_BadRequest", "message": "Invalid object identifier"}}),
            ),
        )
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent", "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_404_on_add_is_transient_replication_lag() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member()
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist."}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(REPLICATION_WAIT));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_deletes_the_member_ref_and_never_the_user() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    remove_member().respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.graph).await;
    // The forms without `/$ref` delete objects: they must never be sent.
    Mock::given(method("DELETE"))
        .and(path(format!("/v1.0/groups/{GROUP_ID}/members/{USER_ID}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.graph)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1.0/users/{USER_ID}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

async fn remove_not_found(f: &Fixture) {
    remove_member()
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
            "code": "Request_ResourceNotFound",
            "message": format!("Resource '{USER_ID}' does not exist or one of its queried reference-property objects are not present.")
        }})))
        .expect(1)
        .mount(&f.graph)
        .await;
}

#[tokio::test]
async fn a_404_on_remove_is_already_absent_after_group_and_user_are_confirmed() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    remove_not_found(&f).await;
    graph_call("GET", &format!("/groups/{GROUP_ID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json(json!({}))))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", &format!("/users/{USER_ID}"))
        .and(query_param("$select", USER_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_404_on_remove_with_the_group_gone_is_not_found() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    remove_not_found(&f).await;
    graph_call("GET", &format!("/groups/{GROUP_ID}"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": {"code": "Request_ResourceNotFound", "message": "gone"}})),
        )
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.revoke(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: format!("Entra group {GROUP_ID}") });
    f.conforms().await;
}

#[tokio::test]
async fn a_user_missing_by_upn_and_by_mail_is_not_found() {
    let f = fixture("").await;
    graph_call("GET", "/users/alice@example.com")
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": {"code": "Request_ResourceNotFound", "message": "no"}})),
        )
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", "/users")
        .and(query_param("$filter", "mail eq 'alice@example.com'"))
        .and(query_param("$select", USER_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(
        err,
        ConnectorError::NotFound { what: "Entra user with userPrincipalName or mail \"alice@example.com\"".into() }
    );
    f.conforms().await;
}

#[tokio::test]
async fn a_user_whose_upn_differs_is_found_by_mail() {
    let f = fixture("").await;
    graph_call("GET", "/users/alice@example.com")
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", "/users")
        .and(query_param("$filter", "mail eq 'alice@example.com'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"value": [{"id": USER_ID, "userPrincipalName": "alice_example.com#EXT#@contoso.onmicrosoft.com", "mail": EMAIL}]}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member().respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.graph).await;
    assert_eq!(f.entra.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn subject_field_names_the_user() {
    let f = fixture("subject_field = \"customfield_10200\"").await;
    graph_call("GET", "/users/alice.w@contoso.com")
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json()))
        .expect(1)
        .mount(&f.graph)
        .await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member().respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.graph).await;
    let mut s = subject();
    s.fields.insert("customfield_10200".into(), "alice.w@contoso.com".into());
    assert_eq!(f.entra.grant(&s, &target("Engineering")).await, Ok(GrantOutcome::Granted));
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("customfield_10200"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn groups_graph_cannot_change_are_refused() {
    let cases = [
        (json!({"groupTypes": ["DynamicMembership"]}), "dynamic membership"),
        (json!({"onPremisesSyncEnabled": true}), "synced from on-premises"),
        (json!({"mailEnabled": true, "securityEnabled": false}), "distribution list"),
    ];
    for (extra, expected) in cases {
        let f = fixture("").await;
        user_found(&f).await;
        graph_call("GET", &format!("/groups/{GROUP_ID}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(group_json(extra)))
            .expect(1)
            .mount(&f.graph)
            .await;
        add_member().respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.graph).await;
        let err = f.entra.grant(&subject(), &target(GROUP_ID)).await.unwrap_err();
        assert_eq!(err.class(), "permanent");
        assert!(err.to_string().contains(expected), "{err}");
        f.conforms().await;
    }
    // A mail-enabled Microsoft 365 group is fine.
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({"groupTypes": ["Unified"], "mailEnabled": true, "securityEnabled": false})))
        .await;
    add_member().respond_with(ResponseTemplate::new(204)).expect(1).mount(&f.graph).await;
    assert_eq!(f.entra.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
}

#[tokio::test]
async fn a_missing_group_is_not_found_and_an_ambiguous_name_is_refused() {
    let f = fixture("").await;
    user_found(&f).await;
    graph_call("GET", "/groups")
        .and(query_param("$filter", "displayName eq 'Engineering'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "Entra group named \"Engineering\"".into() });
    f.conforms().await;

    let f = fixture("").await;
    user_found(&f).await;
    let mut second = group_json(json!({}));
    second["id"] = json!("00000000-0000-0000-0000-000000000001");
    graph_call("GET", "/groups")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [group_json(json!({})), second]})))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("object id"), "{err}");
}

#[tokio::test]
async fn a_401_fetches_a_new_token_once() {
    let f = fixture_with("client_secret_file = \"{dir}/secret\"", "").await;
    f.token("token-1").await;
    f.token("token-2").await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .and(header("authorization", "Bearer token-1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "Lifetime validation failed, the token is expired."}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .and(query_param("$top", "1"))
        .and(query_param("$select", "id"))
        .and(header("authorization", "Bearer token-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [{"id": GROUP_ID}]})))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.test_connection().await, Ok(()));
    f.conforms().await;
}

#[tokio::test]
async fn a_second_401_is_unauthorized() {
    let f = fixture_with("client_secret_file = \"{dir}/secret\"", "").await;
    f.token("token-1").await;
    f.token("token-2").await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&f.graph)
        .await;
    let err = f.entra.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_429_honours_retry_after() {
    let f = fixture("").await;
    graph_call("GET", "/users/alice@example.com")
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(json!({"error": {"code": "TooManyRequests", "message": "Too many requests"}})),
        )
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    f.conforms().await;
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({}))).await;
    add_member()
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "30"))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    f.conforms().await;
}

#[tokio::test]
async fn a_403_names_the_missing_permission() {
    let f = fixture("").await;
    user_found(&f).await;
    group_by_name(&f, group_json(json!({"isAssignableToRole": true}))).await;
    add_member()
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("RoleManagement.ReadWrite.Directory"), "{err}");
    f.conforms().await;

    let f = fixture("").await;
    graph_call("GET", "/groups")
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    let err = f.entra.test_connection().await.unwrap_err();
    assert!(err.to_string().contains("GroupMember.ReadWrite.All"), "{err}");
}

#[tokio::test]
async fn token_endpoint_refusals_say_what_to_fix() {
    let f = fixture_with("client_secret_file = \"{dir}/secret\"", "").await;
    Mock::given(method("POST"))
        .and(path(Fixture::token_path()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2026-11-25 10:00:00Z",
            "error_codes": [7000215]
        })))
        .up_to_n_times(1)
        .expect(1)
        .mount(&f.login)
        .await;
    Mock::given(method("POST"))
        .and(path(Fixture::token_path()))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_request",
            "error_description": "AADSTS90002: Tenant '11111111-2222-3333-4444-555555555555' not found.\r\nTrace ID: 1",
            "error_codes": [90002]
        })))
        .expect(1)
        .mount(&f.login)
        .await;
    let err = f.entra.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    let text = err.to_string();
    assert!(
        text.contains("AADSTS7000215") && text.contains("Certificates & secrets") && !text.contains("Trace ID"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    let err = f.entra.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    assert!(err.to_string().contains("check tenant_id"), "{err}");
    assert!(f.graph.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_certificate_signs_a_ps256_assertion_with_the_sha256_thumbprint() {
    let f = fixture_with("certificate_file = \"{dir}/cert.pem\"", "").await;
    f.token("token-1").await;
    graph_call("GET", "/groups")
        .and(query_param("$top", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.test_connection().await, Ok(()));

    let tokens = f.login.received_requests().await.unwrap();
    let form = form(&tokens[0]);
    let token_url = format!("{}{}", f.login.uri(), Fixture::token_path());
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert_eq!(form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert!(!form.contains_key("client_secret"));
    let public = std::fs::read(format!("{KEYS}/test-rsa.pub.pem")).unwrap();
    let mut v = Validation::new(Algorithm::PS256);
    v.set_audience(&[token_url.as_str()]);
    v.set_issuer(&[CLIENT_ID]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    let data =
        jsonwebtoken::decode::<Value>(&form["client_assertion"], &DecodingKey::from_rsa_pem(&public).unwrap(), &v)
            .unwrap();
    assert_eq!(data.header.alg, Algorithm::PS256);
    assert_eq!(data.header.x5t_s256.as_deref(), Some(CERT_X5T_S256));
    assert_eq!(data.claims["sub"], CLIENT_ID);
    assert!(data.claims["jti"].as_str().is_some_and(|j| j.len() == 36));
    f.conforms().await;
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("cert-only.pem"), std::fs::read(format!("{KEYS}/test-rsa.cert.pem")).unwrap())
        .unwrap();
    let d = dir.path().display();
    let err = |extra: &str| Entra::from_config("entra", &app(&format!("kind = \"entra\"\n{extra}"))).unwrap_err();
    let ids = format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"");
    assert!(
        err(&format!("client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{d}/secret\""))
            .contains("tenant_id is required")
    );
    assert!(
        err(&format!("tenant_id = \"{TENANT}\"\nclient_secret_file = \"{d}/secret\""))
            .contains("client_id is required")
    );
    assert!(err(&ids).contains("no credentials"));
    assert!(
        err(&format!("{ids}\nclient_secret_file = \"{d}/secret\"\ncertificate_file = \"{d}/secret\""))
            .contains("not both")
    );
    assert!(err(&format!("{ids}\ncertificate_file = \"{d}/cert-only.pem\"")).contains("no BEGIN PRIVATE KEY"));
    assert!(err(&format!("{ids}\ncertificate_file = \"{KEYS}/test-rsa.pkcs8.pem\"")).contains("no BEGIN CERTIFICATE"));
    assert!(
        err(&format!("tenant_id = \"a/b\"\nclient_id = \"x\"\nclient_secret_file = \"{d}/secret\""))
            .contains("tenant_id")
    );
    assert!(
        err(&format!("{ids}\nclient_secret_env = \"ACCESSGOV_TEST_UNSET_ENTRA_SECRET\""))
            .contains("ACCESSGOV_TEST_UNSET_ENTRA_SECRET")
    );
}

#[test]
fn defaults_national_clouds_and_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let base = format!(
        "kind = \"entra\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}/secret\"",
        dir.path().display()
    );
    let e = Entra::from_config("entra", &app(&base)).unwrap();
    assert_eq!(e.token_url.as_str(), format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(e.base.as_str(), "https://graph.microsoft.com/v1.0");
    assert_eq!(
        e.url(&["groups", GROUP_ID, "members", USER_ID, "$ref"], &[]).as_str(),
        format!("https://graph.microsoft.com/v1.0/groups/{GROUP_ID}/members/{USER_ID}/$ref")
    );
    assert_eq!(e.scope, "https://graph.microsoft.com/.default");
    let shown = format!("{e:?}");
    assert!(!shown.contains(SECRET) && shown.contains("REDACTED"), "{shown}");

    let us = Entra::from_config(
        "entra",
        &app(&format!(
            "{base}\nbase_url = \"https://graph.microsoft.us/v1.0/\"\nlogin_url = \"https://login.microsoftonline.us/\""
        )),
    )
    .unwrap();
    assert_eq!(us.token_url.as_str(), format!("https://login.microsoftonline.us/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(us.scope, "https://graph.microsoft.us/.default");
    assert_eq!(us.odata_base, "https://graph.microsoft.us/v1.0");
}

#[test]
fn guids_are_recognised() {
    assert!(is_guid(GROUP_ID));
    assert!(!is_guid("Engineering"));
    assert!(!is_guid("7c9e6679-7425-40de-944b-e07fc1f90ae"));
}

// --- Read-back ---------------------------------------------------------------------------

/// The query `members` and `memberships` send on their first page.
fn first_page(select: &'static str) -> impl Fn(wiremock::MockBuilder) -> wiremock::MockBuilder {
    move |m| {
        m.and(query_param("$select", select))
            .and(query_param("$top", "999"))
            .and(wiremock::matchers::query_param_is_missing("$skiptoken"))
    }
}

async fn group_by_id(f: &Fixture) {
    graph_call("GET", &format!("/groups/{GROUP_ID}"))
        .and(query_param("$select", GROUP_FIELDS))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_json(json!({}))))
        .expect(1)
        .mount(&f.graph)
        .await;
}

fn graph_user(id: &str, upn: &str, mail: Option<&str>) -> Value {
    json!({"@odata.type": "#microsoft.graph.user", "id": id, "userPrincipalName": upn, "mail": mail, "displayName": "Some One"})
}

#[tokio::test]
async fn members_follow_the_next_link_and_keep_only_users() {
    let f = fixture("").await;
    group_by_name(&f, group_json(json!({}))).await;
    let members = format!("/groups/{GROUP_ID}/members");
    // Graph's continuation: an opaque $skiptoken in a full URL, followed verbatim.
    let next = format!("{}/v1.0{members}?$select={MEMBER_FIELDS}&$top=999&$skiptoken=RFNwdAIAAQAAAD", f.graph.uri());
    first_page(MEMBER_FIELDS)(graph_call("GET", &members))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id,userPrincipalName,mail,displayName)",
            "value": [
                graph_user("u-1", "Alice@Contoso.com", Some("Alice.Smith@Example.com")),
                {"@odata.type": "#microsoft.graph.device", "id": "d-1", "displayName": "laptop"},
                {"@odata.type": "#microsoft.graph.group", "id": "g-1", "displayName": "Nested"}
            ],
            "@odata.nextLink": next
        })))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", &members)
        .and(query_param("$skiptoken", "RFNwdAIAAQAAAD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [graph_user("u-2", "bob@contoso.com", None)]
        })))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(
        f.entra.members(&target("Engineering")).await,
        Ok(vec![
            Member {
                id: "u-1".into(),
                keys: vec!["u-1".into(), "alice@contoso.com".into(), "alice.smith@example.com".into()],
                display: Some("Some One".into())
            },
            Member {
                id: "u-2".into(),
                keys: vec!["u-2".into(), "bob@contoso.com".into()],
                display: Some("Some One".into())
            },
        ])
    );
    let requests = f.graph.received_requests().await.unwrap();
    let (follow, own): (Vec<Request>, Vec<Request>) =
        requests.into_iter().partition(|r| r.url.query().is_some_and(|q| q.contains("skiptoken")));
    // The continuation is the server's URL, sent back exactly (its $skiptoken is not a documented parameter).
    assert_eq!(follow.len(), 1);
    let sent = follow[0].url.path().to_owned() + "?" + follow[0].url.query().unwrap_or("");
    assert_eq!(format!("{}{sent}", f.graph.uri()), next);
    spec_check::assert_conforms("entra", "/v1.0", &own);
}

#[tokio::test]
async fn members_of_an_empty_group_are_none_and_of_a_missing_group_not_found() {
    let f = fixture("").await;
    group_by_id(&f).await;
    first_page(MEMBER_FIELDS)(graph_call("GET", &format!("/groups/{GROUP_ID}/members")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert_eq!(f.entra.members(&target(GROUP_ID)).await, Ok(vec![]));
    let missing = "00000000-0000-0000-0000-00000000dead";
    graph_call("GET", &format!("/groups/{missing}"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist"}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", "/groups")
        .and(query_param("$filter", "displayName eq 'Nope'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
    assert!(matches!(f.entra.members(&target(missing)).await, Err(ConnectorError::NotFound { .. })));
    assert!(matches!(f.entra.members(&target("Nope")).await, Err(ConnectorError::NotFound { .. })));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_are_the_targets_among_the_users_direct_groups_on_every_page() {
    let f = fixture("").await;
    user_found(&f).await;
    let member_of = format!("/users/{USER_ID}/memberOf");
    let next = format!("{}/v1.0{member_of}?$select=id,displayName&$top=999&$skiptoken=X2", f.graph.uri());
    first_page(MEMBER_OF_FIELDS)(graph_call("GET", &member_of))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [
                {"@odata.type": "#microsoft.graph.group", "id": GROUP_ID, "displayName": "Engineering"},
                {"@odata.type": "#microsoft.graph.directoryRole", "id": "r-1", "displayName": "Sales"}
            ],
            "@odata.nextLink": next
        })))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", &member_of)
        .and(query_param("$skiptoken", "X2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [{"@odata.type": "#microsoft.graph.group", "id": "g-ops", "displayName": "Ops"}]
        })))
        .expect(1)
        .mount(&f.graph)
        .await;
    let targets = [target(GROUP_ID), target("Finance"), target("ops"), target("Sales")];
    assert_eq!(f.entra.memberships(&subject(), &targets).await, Ok(vec![GROUP_ID.to_owned(), "ops".to_owned()]));
    let own: Vec<Request> = f
        .graph
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.url.query().is_some_and(|q| q.contains("skiptoken")))
        .collect();
    spec_check::assert_conforms("entra", "/v1.0", &own);
}

async fn user_missing(f: &Fixture) {
    graph_call("GET", "/users/alice@example.com")
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist"}}),
        ))
        .expect(1)
        .mount(&f.graph)
        .await;
    graph_call("GET", "/users")
        .and(query_param("$filter", "mail eq 'alice@example.com'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(1)
        .mount(&f.graph)
        .await;
}

#[tokio::test]
async fn memberships_of_an_unknown_user_are_none() {
    let f = fixture("").await;
    user_missing(&f).await;
    assert_eq!(f.entra.memberships(&subject(), &[target("Engineering")]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_reads_account_enabled() {
    for (enabled, want) in [(json!(true), UserState::Active), (json!(false), UserState::Inactive)] {
        let f = fixture("").await;
        graph_call("GET", "/users/alice@example.com")
            .and(query_param("$select", USER_FIELDS))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"id": USER_ID, "userPrincipalName": EMAIL, "mail": EMAIL, "accountEnabled": enabled}),
            ))
            .expect(1)
            .mount(&f.graph)
            .await;
        assert_eq!(f.entra.user_state(&subject()).await, Ok(want), "{enabled}");
        f.conforms().await;
    }
    let f = fixture("").await;
    user_missing(&f).await;
    assert_eq!(f.entra.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_lowercased_email_or_subject_field() {
    let secret = "client_secret_file = \"{dir}/secret\"";
    let f = fixture_with(secret, "").await;
    let mut s = subject();
    s.email = Some("Alice@Example.COM".into());
    assert_eq!(f.entra.identity(&s), Ok("alice@example.com".to_owned()));
    s.email = None;
    assert!(matches!(f.entra.identity(&s), Err(ConnectorError::Permanent { .. })));
    let f = fixture_with(secret, "subject_field = \"customfield_10050\"").await;
    assert!(matches!(f.entra.identity(&subject()), Err(ConnectorError::Permanent { .. })), "field empty");
    s.fields.insert("customfield_10050".into(), "A.Smith@Contoso.onmicrosoft.com".into());
    assert_eq!(f.entra.identity(&s), Ok("a.smith@contoso.onmicrosoft.com".to_owned()));
}
