use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use aws_sdk_identitystore::config::Credentials;
use serde_json::json;
use wiremock::matchers::{body_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockBuilder, MockServer, Request, ResponseTemplate};

const STORE: &str = "d-1234567890";
const USER_ID: &str = "1234567890-11111111-2222-3333-4444-555555555555";
const GROUP_ID: &str = "1234567890-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const MEMBERSHIP_ID: &str = "1234567890-99999999-8888-7777-6666-555555555555";
const EMAIL: &str = "alice@example.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/accessgov";

struct Fixture {
    server: MockServer,
    aws: Aws,
}

impl Fixture {
    /// Every Identity Store request the test sent must be a documented operation
    /// (matched on `X-Amz-Target`, with the model's required body members).
    async fn conforms(&self) {
        let requests: Vec<Request> = self
            .server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.headers.contains_key("x-amz-target"))
            .collect();
        spec_check::assert_conforms("aws", "", &requests);
    }
}

fn app(text: &str) -> ApplicationConfig {
    toml::from_str(text).unwrap()
}

/// The SDK config a test starts from: host environment and profile files
/// ignored, static test credentials. Everything else (region, endpoint
/// override, role, no retries, timeouts) is the connector's own `connect`.
fn test_loader() -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .empty_test_environment()
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
}

/// A connector whose `base_url` is a fresh mock server.
async fn fixture(extra: &str) -> Fixture {
    let server = MockServer::start().await;
    let text = format!(
        "kind = \"aws\"\nidentity_store_id = \"{STORE}\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\n{extra}",
        server.uri()
    );
    let aws = Aws::from_config("aws", &app(&text)).unwrap();
    aws.client.set(aws.connect(test_loader()).await.unwrap()).unwrap();
    Fixture { server, aws }
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

/// `Authorization: AWS4-HMAC-SHA256 Credential=<key>/<date>/us-east-1/identitystore/aws4_request, ...`
fn signed_by(key: &'static str) -> impl Fn(&Request) -> bool {
    move |r: &Request| {
        let Some(auth) = r.headers.get("authorization").and_then(|v| v.to_str().ok()) else { return false };
        let Some(rest) = auth.strip_prefix(&format!("AWS4-HMAC-SHA256 Credential={key}/")) else { return false };
        let scope_ok = rest.split(',').next().is_some_and(|c| c.ends_with("/us-east-1/identitystore/aws4_request"));
        scope_ok
            && auth.contains("SignedHeaders=")
            && auth.contains("x-amz-target")
            && auth.contains("Signature=")
            && r.headers.contains_key("x-amz-date")
    }
}

/// An awsJson1.1 call: `POST /`, the operation in `X-Amz-Target`, the JSON
/// content type, SigV4 with the test key, and exactly this body.
fn call(op: &str, body: serde_json::Value) -> MockBuilder {
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header("x-amz-target", format!("AWSIdentityStore.{op}").as_str()))
        .and(header("content-type", "application/x-amz-json-1.1"))
        .and(signed_by("AKIDTEST"))
        .and(body_json(body))
}

fn ok(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .insert_header("x-amzn-requestid", "11111111-2222-3333-4444-555555555555")
        .set_body_json(body)
}

/// An error answer as the service sends it (`__type` names the exception).
fn fault(status: u16, kind: &str, extra: serde_json::Value) -> ResponseTemplate {
    let mut body =
        json!({"__type": format!("com.amazonaws.identitystore#{kind}"), "Message": format!("{kind} (test)")});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .insert_header("x-amzn-requestid", "11111111-2222-3333-4444-555555555555")
        .set_body_json(body)
}

fn user_lookup(path: &str, value: &str) -> serde_json::Value {
    json!({"IdentityStoreId": STORE, "AlternateIdentifier": {"UniqueAttribute": {"AttributePath": path, "AttributeValue": value}}})
}

fn membership_body() -> serde_json::Value {
    json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID, "MemberId": {"UserId": USER_ID}})
}

async fn user_found(server: &MockServer) {
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(ok(json!({"UserId": USER_ID, "IdentityStoreId": STORE})))
        .expect(1)
        .mount(server)
        .await;
}

async fn group_found(server: &MockServer) {
    call("GetGroupId", user_lookup("displayName", "Engineering"))
        .respond_with(ok(json!({"GroupId": GROUP_ID, "IdentityStoreId": STORE})))
        .expect(1)
        .mount(server)
        .await;
}

async fn create(server: &MockServer, answer: ResponseTemplate, times: u64) {
    call("CreateGroupMembership", membership_body()).respond_with(answer).expect(times).mount(server).await;
}

async fn membership_lookup(server: &MockServer, answer: ResponseTemplate) {
    call("GetGroupMembershipId", membership_body()).respond_with(answer).expect(1).mount(server).await;
}

async fn delete(server: &MockServer, answer: ResponseTemplate, times: u64) {
    call("DeleteGroupMembership", json!({"IdentityStoreId": STORE, "MembershipId": MEMBERSHIP_ID}))
        .respond_with(answer)
        .expect(times)
        .mount(server)
        .await;
}

fn created() -> ResponseTemplate {
    ok(json!({"MembershipId": MEMBERSHIP_ID, "IdentityStoreId": STORE}))
}

#[tokio::test]
async fn grant_creates_the_membership_by_email_and_group_name() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, created(), 1).await;
    assert_eq!(f.aws.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::Granted));
    // The wire format, byte for byte where the protocol fixes it.
    let requests = f.server.received_requests().await.unwrap();
    let first = &requests[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&first.body).unwrap(),
        json!({"IdentityStoreId": STORE, "AlternateIdentifier": {"UniqueAttribute": {"AttributePath": "emails.value", "AttributeValue": EMAIL}}})
    );
    assert!(first.headers.get("x-amz-security-token").is_none(), "static keys carry no session token");
    f.conforms().await;
}

#[tokio::test]
async fn grant_of_a_member_is_already_granted_on_a_uniqueness_conflict() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(409, "ConflictException", json!({"Reason": "UNIQUENESS_CONSTRAINT_VIOLATION"})), 1).await;
    assert_eq!(f.aws.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_conflict_without_a_reason_is_decided_on_the_membership() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(409, "ConflictException", json!({})), 1).await;
    membership_lookup(&f.server, ok(json!({"MembershipId": MEMBERSHIP_ID, "IdentityStoreId": STORE}))).await;
    assert_eq!(f.aws.grant(&subject(), &target("Engineering")).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_concurrent_modification_is_transient() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(409, "ConflictException", json!({"Reason": "CONCURRENT_MODIFICATION"})), 1).await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("CONCURRENT_MODIFICATION"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_group_id_target_and_a_user_name_field_are_used_as_given() {
    let f = fixture("subject_field = \"customfield_10050\"\n").await;
    call("GetUserId", user_lookup("userName", "alice"))
        .respond_with(ok(json!({"UserId": USER_ID, "IdentityStoreId": STORE})))
        .expect(1)
        .mount(&f.server)
        .await;
    call("DescribeGroup", json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID}))
        .respond_with(ok(json!({"GroupId": GROUP_ID, "DisplayName": "Engineering", "IdentityStoreId": STORE})))
        .expect(1)
        .mount(&f.server)
        .await;
    create(&f.server, created(), 1).await;
    let mut s = subject();
    s.email = None;
    s.fields.insert("customfield_10050".into(), "alice".into());
    assert_eq!(f.aws.grant(&s, &target(GROUP_ID)).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_deletes_the_membership() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    membership_lookup(&f.server, ok(json!({"MembershipId": MEMBERSHIP_ID, "IdentityStoreId": STORE}))).await;
    delete(&f.server, ok(json!({})), 1).await;
    assert_eq!(f.aws.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_of_a_non_member_is_already_absent_after_user_and_group_resolve() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    membership_lookup(&f.server, fault(404, "ResourceNotFoundException", json!({"ResourceType": "GROUP_MEMBERSHIP"})))
        .await;
    delete(&f.server, ok(json!({})), 0).await;
    assert_eq!(f.aws.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn a_membership_gone_before_the_delete_is_already_absent() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    membership_lookup(&f.server, ok(json!({"MembershipId": MEMBERSHIP_ID, "IdentityStoreId": STORE}))).await;
    delete(&f.server, fault(404, "ResourceNotFoundException", json!({"ResourceType": "GROUP_MEMBERSHIP"})), 1).await;
    assert_eq!(f.aws.revoke(&subject(), &target("Engineering")).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_user_is_not_found_and_nothing_else_is_called() {
    let f = fixture("").await;
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(fault(404, "ResourceNotFoundException", json!({"ResourceType": "USER"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.revoke(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "not_found", "{err:?}");
    assert!(err.to_string().contains("emails.value = \"alice@example.com\""), "{err}");
    assert_eq!(f.server.received_requests().await.unwrap().len(), 1, "no group or membership call");
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_group_is_not_found() {
    let f = fixture("").await;
    user_found(&f.server).await;
    call("GetGroupId", user_lookup("displayName", "Nope"))
        .respond_with(fault(404, "ResourceNotFoundException", json!({"ResourceType": "GROUP"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.revoke(&subject(), &target("Nope")).await.unwrap_err();
    assert_eq!(err.class(), "not_found", "{err:?}");
    assert!(err.to_string().contains("displayName \"Nope\""), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_requester_without_email_is_permanent_and_names_subject_field() {
    let f = fixture("").await;
    let mut s = subject();
    s.email = None;
    let err = f.aws.grant(&s, &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("set subject_field") && err.to_string().contains("userName"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_subject_field_value_is_permanent() {
    let f = fixture("subject_field = \"customfield_10050\"\n").await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("customfield_10050"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_role_on_the_rule_is_refused() {
    let f = fixture("").await;
    let t = Target { name: "Engineering".into(), role: Some("admin".into()) };
    let err = f.aws.grant(&subject(), &t).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn throttling_is_transient_with_retry_after_seconds_and_not_retried_by_the_sdk() {
    let f = fixture("").await;
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(fault(429, "ThrottlingException", json!({"RetryAfterSeconds": 7})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    f.conforms().await;
}

#[tokio::test]
async fn throttling_falls_back_to_the_retry_after_header() {
    let f = fixture("").await;
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(fault(429, "ThrottlingException", json!({})).insert_header("retry-after", "12"))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12)), "{err:?}");
}

#[tokio::test]
async fn server_errors_are_transient_and_not_retried_by_the_sdk() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(500, "InternalServerException", json!({"RetryAfterSeconds": 3})), 1).await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    // A gateway error without an AWS error body is transient too.
    let f = fixture("").await;
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html>Service Unavailable</html>"))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn access_denied_is_unauthorized_and_names_the_permissions() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(403, "AccessDeniedException", json!({})), 1).await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err:?}");
    let text = err.to_string();
    assert!(text.contains("identitystore:CreateGroupMembership") && text.contains(STORE), "{text}");
    f.conforms().await;
}

#[tokio::test]
async fn bad_keys_are_unauthorized() {
    let f = fixture("").await;
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(fault(400, "UnrecognizedClientException", json!({})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.grant(&subject(), &target("Engineering")).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err:?}");
    assert!(err.to_string().contains("invalid or expired"), "{err}");
}

/// What the default chain yields when nothing provides credentials.
#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ),
        ))
    }
}

#[tokio::test]
async fn missing_credentials_are_unauthorized_and_say_how_to_provide_them() {
    let server = MockServer::start().await;
    let text = format!(
        "kind = \"aws\"\nidentity_store_id = \"{STORE}\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\n",
        server.uri()
    );
    let aws = Aws::from_config("aws", &app(&text)).unwrap();
    let loader =
        aws_config::defaults(BehaviorVersion::latest()).empty_test_environment().credentials_provider(NoCredentials);
    aws.client.set(aws.connect(loader).await.unwrap()).unwrap();
    let err = aws.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no providers in chain provided credentials") && text.contains("AWS_ACCESS_KEY_ID"),
        "{text}"
    );
    assert!(server.received_requests().await.unwrap().is_empty(), "nothing is sent unsigned");
}

#[tokio::test]
async fn test_connection_lists_one_group() {
    let f = fixture("").await;
    call("ListGroups", json!({"IdentityStoreId": STORE, "MaxResults": 1}))
        .respond_with(ok(json!({"Groups": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.aws.test_connection().await, Ok(()));
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_names_identity_store_and_region_when_the_store_is_unknown() {
    let f = fixture("").await;
    call("ListGroups", json!({"IdentityStoreId": STORE, "MaxResults": 1}))
        .respond_with(fault(404, "ResourceNotFoundException", json!({"ResourceType": "IDENTITY_STORE"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "permanent", "{err:?}");
    assert!(err.to_string().contains("identity_store_id and region") && err.to_string().contains("us-east-1"), "{err}");
}

#[tokio::test]
async fn test_connection_access_denied_names_the_permissions() {
    let f = fixture("").await;
    call("ListGroups", json!({"IdentityStoreId": STORE, "MaxResults": 1}))
        .respond_with(fault(403, "AccessDeniedException", json!({})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.aws.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("identitystore:ListGroups"), "{err}");
}

/// With `role_arn`, the chain's credentials assume the role through STS and
/// the Identity Store calls are signed with the temporary credentials.
#[tokio::test]
async fn role_arn_assumes_the_role_and_signs_with_its_credentials() {
    let server = MockServer::start().await;
    let text = format!(
        "kind = \"aws\"\nidentity_store_id = \"{STORE}\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\nrole_arn = \"{ROLE}\"\n",
        server.uri()
    );
    let aws = Aws::from_config("aws", &app(&text)).unwrap();
    // STS goes to the mock server too (the endpoint override of the base config).
    aws.client.set(aws.connect(test_loader().endpoint_url(server.uri())).await.unwrap()).unwrap();
    let sts = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <AssumedRoleId>AROATEST:accessgov</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/accessgov/accessgov</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIATEST</AccessKeyId>
      <SecretAccessKey>assumed-secret</SecretAccessKey>
      <SessionToken>assumed-session-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(body_string_contains("Action=AssumeRole"))
        .and(body_string_contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Faccessgov"))
        .and(body_string_contains("RoleSessionName=accessgov"))
        .and(|r: &Request| {
            r.headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|a| {
                a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/") && a.contains("/us-east-1/sts/aws4_request")
            })
        })
        .respond_with(ResponseTemplate::new(200).insert_header("content-type", "text/xml").set_body_string(sts))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header("x-amz-target", "AWSIdentityStore.ListGroups"))
        .and(header("x-amz-security-token", "assumed-session-token"))
        .and(signed_by("ASIATEST"))
        .and(body_json(json!({"IdentityStoreId": STORE, "MaxResults": 1})))
        .respond_with(ok(json!({"Groups": []})))
        .expect(2)
        .mount(&server)
        .await;
    assert_eq!(aws.test_connection().await, Ok(()));
    // The assumed credentials are cached: no second AssumeRole.
    assert_eq!(aws.test_connection().await, Ok(()));
    let f = Fixture { server, aws };
    f.conforms().await;
}

#[tokio::test]
async fn a_role_that_cannot_be_assumed_is_unauthorized() {
    let server = MockServer::start().await;
    let text = format!(
        "kind = \"aws\"\nidentity_store_id = \"{STORE}\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\nrole_arn = \"{ROLE}\"\n",
        server.uri()
    );
    let aws = Aws::from_config("aws", &app(&text)).unwrap();
    aws.client.set(aws.connect(test_loader().endpoint_url(server.uri())).await.unwrap()).unwrap();
    let denied = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>AccessDenied</Code>
    <Message>User: arn:aws:iam::123456789012:user/ci is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/accessgov</Message>
  </Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(body_string_contains("Action=AssumeRole"))
        .respond_with(ResponseTemplate::new(403).insert_header("content-type", "text/xml").set_body_string(denied))
        .expect(1)
        .mount(&server)
        .await;
    let err = aws.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized", "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("not authorized to perform: sts:AssumeRole") && text.contains("sts:AssumeRole on it"),
        "{text}"
    );
    let sent = server.received_requests().await.unwrap();
    assert!(sent.iter().all(|r| !r.headers.contains_key("x-amz-target")), "no Identity Store call without credentials");
}

#[test]
fn a_request_the_model_does_not_document_fails_the_conformance_check() {
    let ops = spec_check::load("aws");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
    let mut request = |target: &str, body: serde_json::Value| {
        headers.insert("x-amz-target", target.parse().unwrap());
        Request {
            url: "http://h/".parse().unwrap(),
            method: "POST".parse().unwrap(),
            headers: headers.clone(),
            body: body.to_string().into_bytes(),
        }
    };
    let good = request("AWSIdentityStore.GetGroupMembershipId", membership_body());
    // Not used by the connector, so not in the extract; and a body without a required member.
    // (IsMemberInGroups was the example here until read-back started using it.)
    let unused = request("AWSIdentityStore.DeleteUser", json!({"IdentityStoreId": STORE, "UserId": USER_ID}));
    let missing =
        request("AWSIdentityStore.CreateGroupMembership", json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID}));
    assert!(spec_check::violations(&ops, "", &[good]).is_empty());
    let v = spec_check::violations(&ops, "", &[unused, missing]);
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(v[0].contains("DeleteUser") && v[0].contains("no operation"), "{}", v[0]);
    assert!(v[1].contains("\"MemberId\" is missing"), "{}", v[1]);
}

#[test]
fn from_config_checks_the_keys() {
    let err = |text: &str| Aws::from_config("aws", &app(&format!("kind = \"aws\"\n{text}"))).unwrap_err();
    assert!(err("region = \"us-east-1\"").contains("identity_store_id is required"));
    assert!(err("identity_store_id = \"1234567890\"").contains("not an Identity Store id"));
    assert!(err(&format!("identity_store_id = \"{STORE}\"\nrole_arn = \"accessgov\"")).contains("not an IAM role ARN"));
    assert!(err(&format!("identity_store_id = \"{STORE}\"\nregion = \"US East\"")).contains("not an AWS region"));
    assert!(err(&format!("identity_store_id = \"{STORE}\"\nbase_url = \"localhost:4566\"")).contains("http(s) URL"));
    for id in [
        STORE,
        "arn:aws:identitystore::123456789012:identitystore/d-1234567890",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ] {
        let text =
            format!("kind = \"aws\"\nidentity_store_id = \"{id}\"\nregion = \"eu-west-1\"\nrole_arn = \"{ROLE}\"\n");
        let aws = Aws::from_config("aws", &app(&text)).unwrap();
        let shown = format!("{aws:?}");
        assert!(shown.contains(id) && shown.contains(ROLE), "{shown}");
    }
    // Built from its kind in the one place.
    let text = format!("kind = \"aws\"\nidentity_store_id = \"{STORE}\"\n");
    assert_eq!(crate::connectors::build_one("aws", &app(&text)).unwrap().kind(), "aws");
}

#[test]
fn group_ids_are_told_from_names() {
    assert!(looks_like_group_id(GROUP_ID));
    assert!(looks_like_group_id("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"));
    assert!(!looks_like_group_id("Engineering"));
    assert!(!looks_like_group_id("eng-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"));
    assert!(!looks_like_group_id("1234567890-aaaaaaaa-bbbb-cccc-dddd"));
}

// --- Read-back ---------------------------------------------------------------------------

fn user_json(id: &str, name: &str, emails: &[&str], status: Option<&str>) -> serde_json::Value {
    let mut u = json!({
        "IdentityStoreId": STORE, "UserId": id, "UserArn": format!("arn:aws:identitystore::123456789012:user/{id}"),
        "Revision": "3", "UserName": name, "DisplayName": format!("{name} (display)"),
        "Emails": emails.iter().enumerate().map(|(i, e)| json!({"Value": e, "Type": "work", "Primary": i == 0})).collect::<Vec<_>>()
    });
    if let Some(s) = status {
        u["UserStatus"] = json!(s);
    }
    u
}

fn membership_of(user: &str) -> serde_json::Value {
    json!({"IdentityStoreId": STORE, "MembershipId": format!("m-{user}"), "GroupId": GROUP_ID, "MemberId": {"UserId": user}})
}

async fn describe(server: &MockServer, id: &str, answer: ResponseTemplate) {
    call("DescribeUser", json!({"IdentityStoreId": STORE, "UserId": id}))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn members_follow_next_token_and_are_keyed_by_user_name_and_emails() {
    let f = fixture("").await;
    group_found(&f.server).await;
    call("ListGroupMemberships", json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID, "MaxResults": 100}))
        .respond_with(ok(json!({"GroupMemberships": [membership_of("u-1")], "NextToken": "page-2-token"})))
        .expect(1)
        .mount(&f.server)
        .await;
    call(
        "ListGroupMemberships",
        json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID, "MaxResults": 100, "NextToken": "page-2-token"}),
    )
    .respond_with(ok(json!({"GroupMemberships": [membership_of("u-2")]})))
    .expect(1)
    .mount(&f.server)
    .await;
    describe(&f.server, "u-1", ok(user_json("u-1", "Alice", &["Alice@Example.com", "a.smith@example.com"], None)))
        .await;
    describe(&f.server, "u-2", ok(user_json("u-2", "bob", &[], Some("ENABLED")))).await;
    assert_eq!(
        f.aws.members(&target("Engineering")).await,
        Ok(vec![
            Member {
                id: "u-1".into(),
                keys: vec!["u-1".into(), "alice".into(), "alice@example.com".into(), "a.smith@example.com".into()],
                display: Some("Alice (display)".into())
            },
            Member { id: "u-2".into(), keys: vec!["u-2".into(), "bob".into()], display: Some("bob (display)".into()) },
        ])
    );
    f.conforms().await;
}

#[tokio::test]
async fn members_of_an_empty_group_are_none_and_of_a_missing_group_not_found() {
    let f = fixture("").await;
    group_found(&f.server).await;
    call("ListGroupMemberships", json!({"IdentityStoreId": STORE, "GroupId": GROUP_ID, "MaxResults": 100}))
        .respond_with(ok(json!({"GroupMemberships": []})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.aws.members(&target("Engineering")).await, Ok(vec![]));
    call("GetGroupId", user_lookup("displayName", "Nope"))
        .respond_with(fault(400, "ResourceNotFoundException", json!({"ResourceType": "GROUP"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let missing = "1234567890-00000000-0000-0000-0000-00000000dead";
    call("DescribeGroup", json!({"IdentityStoreId": STORE, "GroupId": missing}))
        .respond_with(fault(400, "ResourceNotFoundException", json!({"ResourceType": "GROUP"})))
        .expect(1)
        .mount(&f.server)
        .await;
    assert!(matches!(f.aws.members(&target("Nope")).await, Err(ConnectorError::NotFound { .. })));
    assert!(matches!(f.aws.members(&target(missing)).await, Err(ConnectorError::NotFound { .. })));
    f.conforms().await;
}

#[tokio::test]
async fn memberships_ask_is_member_in_groups_for_the_existing_targets() {
    let f = fixture("").await;
    user_found(&f.server).await;
    group_found(&f.server).await;
    let ops = "1234567890-0000aaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    call("GetGroupId", user_lookup("displayName", "Ops"))
        .respond_with(ok(json!({"GroupId": ops, "IdentityStoreId": STORE})))
        .expect(1)
        .mount(&f.server)
        .await;
    call("GetGroupId", user_lookup("displayName", "Gone"))
        .respond_with(fault(400, "ResourceNotFoundException", json!({"ResourceType": "GROUP"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let mut ids = vec![GROUP_ID, ops];
    ids.sort_unstable();
    call("IsMemberInGroups", json!({"IdentityStoreId": STORE, "MemberId": {"UserId": USER_ID}, "GroupIds": ids}))
        .respond_with(ok(json!({"Results": [
            {"GroupId": GROUP_ID, "MemberId": {"UserId": USER_ID}, "MembershipExists": true},
            {"GroupId": ops, "MemberId": {"UserId": USER_ID}, "MembershipExists": false}
        ]})))
        .expect(1)
        .mount(&f.server)
        .await;
    let targets = [target("Engineering"), target("Ops"), target("Gone")];
    assert_eq!(f.aws.memberships(&subject(), &targets).await, Ok(vec!["Engineering".to_owned()]));
    f.conforms().await;
}

async fn user_missing(server: &MockServer) {
    call("GetUserId", user_lookup("emails.value", EMAIL))
        .respond_with(fault(400, "ResourceNotFoundException", json!({"ResourceType": "USER"})))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn memberships_of_an_unknown_user_are_none() {
    let f = fixture("").await;
    user_missing(&f.server).await;
    assert_eq!(f.aws.memberships(&subject(), &[target("Engineering")]).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_reads_user_status() {
    for (status, want) in
        [(None, UserState::Active), (Some("ENABLED"), UserState::Active), (Some("DISABLED"), UserState::Inactive)]
    {
        let f = fixture("").await;
        user_found(&f.server).await;
        describe(&f.server, USER_ID, ok(user_json(USER_ID, "alice", &[EMAIL], status))).await;
        assert_eq!(f.aws.user_state(&subject()).await, Ok(want), "{status:?}");
        f.conforms().await;
    }
    let f = fixture("").await;
    user_missing(&f.server).await;
    assert_eq!(f.aws.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_lowercased_email_or_user_name() {
    let f = fixture("").await;
    let mut s = subject();
    s.email = Some("Alice@Example.COM".into());
    assert_eq!(f.aws.identity(&s), Ok("alice@example.com".to_owned()));
    s.email = None;
    assert!(matches!(f.aws.identity(&s), Err(ConnectorError::Permanent { .. })));
    let f = fixture("subject_field = \"customfield_10050\"").await;
    assert!(matches!(f.aws.identity(&subject()), Err(ConnectorError::Permanent { .. })), "field empty");
    s.fields.insert("customfield_10050".into(), "ASmith".into());
    assert_eq!(f.aws.identity(&s), Ok("asmith".to_owned()));
}

#[tokio::test]
async fn every_identity_store_request_is_counted_with_its_status_class() {
    let f = fixture("").await;
    let metrics = crate::metrics::handle();
    user_found(&f.server).await;
    group_found(&f.server).await;
    create(&f.server, fault(409, "ConflictException", json!({"Reason": "UNIQUENESS_CONSTRAINT_VIOLATION"})), 1).await;
    let (who, what) = (subject(), target("Engineering"));
    let granted = crate::metrics::provider_scope("aws-metrics-test", "grant", f.aws.grant(&who, &what));
    assert_eq!(granted.await, Ok(GrantOutcome::AlreadyGranted));
    let text = metrics.render();
    let count = |status: &str| {
        let series = format!(
            "accessgov_provider_requests_total{{application=\"aws-metrics-test\",operation=\"grant\",status=\"{status}\"}} "
        );
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.trim().to_owned())
    };
    // GetUserId and GetGroupId answered 200, CreateGroupMembership 409.
    assert_eq!(count("2xx").as_deref(), Some("2"), "{text}");
    assert_eq!(count("4xx").as_deref(), Some("1"), "{text}");
    assert!(
        text.contains(
            "accessgov_provider_request_duration_seconds_count{application=\"aws-metrics-test\",operation=\"grant\"} 3"
        ),
        "{text}"
    );
}
