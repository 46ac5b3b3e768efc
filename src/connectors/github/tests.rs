use super::*;
use crate::connectors::Connector;
use crate::connectors::spec_check;
use crate::connectors::{Member, UserState};
use jsonwebtoken::{DecodingKey, Validation};
use tempfile::TempDir;
use wiremock::matchers::{body_json, header, header_exists, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
const FIELD: &str = "customfield_10300";
const LOGIN: &str = "octo-alice";
const TEAM: &str = "platform-eng";
const MEMBERSHIP: &str = "/orgs/acme/teams/platform-eng/memberships/octo-alice";
const TOKEN_1: &str = "Bearer ghs_installation_token_1";
const PAT: &str = "github_pat_11AAAAAAA0test";

struct Fixture {
    server: MockServer,
    github: Github,
    _dir: TempDir,
}

impl Fixture {
    /// A GitHub App application (app 12345, installation 678 unless `extra` says otherwise).
    async fn app(extra: &str) -> Self {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "kind = \"github\"\nbase_url = \"{}\"\norg = \"acme\"\nsubject_field = \"{FIELD}\"\napp_id = 12345\n\
             private_key_file = \"{KEYS}/test-rsa.pkcs1.pem\"\n{extra}",
            server.uri()
        );
        let github = Github::from_config("github", &app(&text)).unwrap();
        Self { server, github, _dir: dir }
    }

    async fn installed(extra: &str) -> Self {
        let f = Self::app(&format!("installation_id = 678\n{extra}")).await;
        f.mint("ghs_installation_token_1", json!({"members": "write", "metadata": "read"}), None).await;
        f
    }

    /// A fine-grained token application.
    async fn pat(extra: &str) -> Self {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{PAT}\n")).unwrap();
        let text = format!(
            "kind = \"github\"\nbase_url = \"{}\"\norg = \"acme\"\nsubject_field = \"{FIELD}\"\n\
             token_file = \"{}/token\"\n{extra}",
            server.uri(),
            dir.path().display()
        );
        let github = Github::from_config("github", &app(&text)).unwrap();
        Self { server, github, _dir: dir }
    }

    /// `POST /app/installations/678/access_tokens` with a valid App JWT hands out `token`.
    async fn mint(&self, token: &str, permissions: Value, times: Option<u64>) {
        let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let mut m = Mock::given(method("POST"))
            .and(path("/app/installations/678/access_tokens"))
            .and(AppJwt)
            .and(header("accept", ACCEPT))
            .and(header("x-github-api-version", API_VERSION))
            .respond_with(ResponseTemplate::new(201).set_body_json(
                json!({"token": token, "expires_at": expires, "permissions": permissions, "repository_selection": "all"}),
            ));
        if let Some(n) = times {
            m = m.up_to_n_times(n);
        }
        m.mount(&self.server).await;
    }

    /// An API call with the documented headers and `auth`.
    fn api(&self, verb: &str, p: &str, auth: &str) -> wiremock::MockBuilder {
        Mock::given(method(verb))
            .and(path(p.to_owned()))
            .and(header("authorization", auth))
            .and(header("accept", ACCEPT))
            .and(header("x-github-api-version", API_VERSION))
            .and(header_exists("user-agent"))
    }

    async fn conforms(&self) {
        spec_check::assert_conforms("github", "", &self.server.received_requests().await.unwrap());
    }

    async fn respond(&self, verb: &str, p: &str, resp: ResponseTemplate, times: u64) {
        self.api(verb, p, TOKEN_1).respond_with(resp).expect(times).mount(&self.server).await;
    }
}

/// The App JWT: RS256 with the App's key, `iss` = the App id, at most 10 minutes long.
struct AppJwt;

impl Match for AppJwt {
    fn matches(&self, r: &Request) -> bool {
        let Some(jwt) =
            r.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let public = std::fs::read(format!("{KEYS}/test-rsa.pub.pem")).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.required_spec_claims = ["exp", "iat", "iss"].iter().map(|s| s.to_string()).collect();
        v.set_issuer(&["12345"]);
        v.validate_aud = false;
        let Ok(data) = jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_rsa_pem(&public).unwrap(), &v) else {
            return false;
        };
        let c = data.claims;
        let (iat, exp) = (c["iat"].as_i64().unwrap_or(0), c["exp"].as_i64().unwrap_or(0));
        iat <= now_secs() - 30 && exp - iat <= 600 && exp > now_secs()
    }
}

fn app(text: &str) -> ApplicationConfig {
    toml::from_str(text).unwrap()
}

fn subject() -> Subject {
    let mut s = Subject {
        account_id: "5b10ac8d82e05b22cc7d4ef5".into(),
        email: Some("alice@example.com".into()),
        display_name: None,
        fields: Default::default(),
    };
    s.fields.insert(FIELD.into(), LOGIN.into());
    s
}

fn target(role: Option<&str>) -> Target {
    Target { name: TEAM.into(), role: role.map(str::to_owned) }
}

fn membership(role: &str, state: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "url": format!("https://api.github.com/organizations/1/team/2/memberships/{LOGIN}"),
        "role": role,
        "state": state
    }))
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
    )
}

#[tokio::test]
async fn grant_checks_org_membership_then_puts_the_team_membership() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/members/octo-alice", ResponseTemplate::new(204), 1).await;
    f.api("PUT", MEMBERSHIP, TOKEN_1)
        .and(body_json(json!({"role": "member"})))
        .respond_with(membership("member", "active"))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.github.grant(&subject(), &target(None)).await, Ok(GrantOutcome::Granted));
    // Cached installation token: one mint for all three calls.
    let mints = f.server.received_requests().await.unwrap().iter().filter(|r| r.method.as_str() == "POST").count();
    assert_eq!(mints, 1);
    f.conforms().await;
}

#[tokio::test]
async fn an_active_member_with_the_same_or_a_higher_role_is_already_granted() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("maintainer", "active"), 1).await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
    assert_eq!(f.github.grant(&subject(), &target(Some("member"))).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[tokio::test]
async fn a_member_is_raised_to_maintainer_without_an_org_check() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 1).await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/members/octo-alice"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    f.api("PUT", MEMBERSHIP, TOKEN_1)
        .and(body_json(json!({"role": "maintainer"})))
        .respond_with(membership("maintainer", "active"))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.github.grant(&subject(), &target(Some("Maintainer"))).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn a_non_member_of_the_org_is_refused_by_default() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/members/octo-alice", not_found(), 1).await;
    f.respond(
        "GET",
        "/users/octo-alice",
        ResponseTemplate::new(200).set_body_json(json!({"login": LOGIN, "id": 42})),
        1,
    )
    .await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
    let err = f.github.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    let text = err.to_string();
    assert!(text.contains("is not a member of organization acme") && text.contains("invite_non_members"), "{text}");
    f.conforms().await;
}

#[tokio::test]
async fn a_pending_invitation_is_refused_by_default() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "pending"), 1).await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&f.server).await;
    let err = f.github.grant(&subject(), &target(None)).await.unwrap_err();
    assert!(err.to_string().contains("has a pending invitation to organization acme"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn invite_non_members_lets_github_send_the_invitation() {
    let f = Fixture::installed("invite_non_members = true\n").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/members/octo-alice"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&f.server)
        .await;
    f.api("PUT", MEMBERSHIP, TOKEN_1)
        .and(body_json(json!({"role": "member"})))
        .respond_with(membership("member", "pending"))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.github.grant(&subject(), &target(None)).await, Ok(GrantOutcome::Granted));
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_login_is_not_found() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/members/octo-alice", not_found(), 1).await;
    f.respond("GET", "/users/octo-alice", not_found(), 1).await;
    let err = f.github.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "github: user octo-alice".into() });
    f.conforms().await;
}

#[tokio::test]
async fn an_unknown_team_is_not_found() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/members/octo-alice", ResponseTemplate::new(204), 1).await;
    f.respond("PUT", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/teams/platform-eng", not_found(), 1).await;
    let err = f.github.grant(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "github: team platform-eng in organization acme".into() });
    f.conforms().await;
}

#[tokio::test]
async fn a_team_without_write_access_is_unauthorized_with_the_fix() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 1).await;
    f.respond(
        "PUT",
        MEMBERSHIP,
        ResponseTemplate::new(403).set_body_json(json!({"message": "Resource not accessible by integration"})),
        1,
    )
    .await;
    let err = f.github.grant(&subject(), &target(Some("maintainer"))).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("Members: Read and write"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn an_idp_synchronized_team_is_permanent() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 1).await;
    f.respond(
        "DELETE",
        MEMBERSHIP,
        ResponseTemplate::new(403)
            .set_body_json(json!({"message": "This team is externally managed by team synchronization."})),
        1,
    )
    .await;
    let err = f.github.revoke(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains("identity provider"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn revoke_deletes_the_team_membership() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 1).await;
    f.respond("DELETE", MEMBERSHIP, ResponseTemplate::new(204), 1).await;
    assert_eq!(f.github.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::Revoked));
    f.conforms().await;
}

#[tokio::test]
async fn a_non_member_is_already_absent_once_team_and_user_are_confirmed() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond(
        "GET",
        "/orgs/acme/teams/platform-eng",
        ResponseTemplate::new(200).set_body_json(json!({"id": 2, "slug": TEAM})),
        1,
    )
    .await;
    f.respond("GET", "/users/octo-alice", ResponseTemplate::new(200).set_body_json(json!({"login": LOGIN})), 1).await;
    Mock::given(method("DELETE")).respond_with(ResponseTemplate::new(204)).expect(0).mount(&f.server).await;
    assert_eq!(f.github.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::AlreadyAbsent));
    f.conforms().await;
}

#[tokio::test]
async fn revoke_from_an_unknown_team_is_not_found() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/teams/platform-eng", not_found(), 1).await;
    let err = f.github.revoke(&subject(), &target(Some("acme/platform-eng"))).await.unwrap_err();
    assert_eq!(err.class(), "not_found");
    f.conforms().await;
}

#[tokio::test]
async fn a_401_mints_a_new_installation_token_once() {
    let f = Fixture::app("installation_id = \"678\"\n").await;
    f.mint("ghs_installation_token_1", json!({"members": "write"}), Some(1)).await;
    f.mint("ghs_installation_token_2", json!({"members": "write"}), None).await;
    f.respond("GET", MEMBERSHIP, ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})), 1)
        .await;
    f.api("GET", MEMBERSHIP, "Bearer ghs_installation_token_2")
        .respond_with(membership("member", "active"))
        .expect(1)
        .mount(&f.server)
        .await;
    f.api("DELETE", MEMBERSHIP, "Bearer ghs_installation_token_2")
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.github.revoke(&subject(), &target(None)).await, Ok(RevokeOutcome::Revoked));
    let mints = f.server.received_requests().await.unwrap().iter().filter(|r| r.method.as_str() == "POST").count();
    assert_eq!(mints, 2);
    f.conforms().await;
}

#[tokio::test]
async fn a_primary_rate_limit_waits_until_the_reset() {
    let f = Fixture::installed("").await;
    let reset = now_secs() + 30;
    f.respond(
        "GET",
        MEMBERSHIP,
        ResponseTemplate::new(403)
            .insert_header("x-ratelimit-limit", "5000")
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-used", "5000")
            .insert_header("x-ratelimit-reset", reset.to_string().as_str())
            .set_body_json(json!({"message": "API rate limit exceeded for installation ID 678."})),
        1,
    )
    .await;
    let err = f.github.grant(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let wait = err.retry_after().unwrap().as_secs();
    assert!((28..=30).contains(&wait), "{wait}");
    f.conforms().await;
}

#[tokio::test]
async fn a_secondary_rate_limit_honours_retry_after() {
    let f = Fixture::installed("").await;
    f.respond(
        "GET",
        MEMBERSHIP,
        ResponseTemplate::new(429)
            .insert_header("retry-after", "17")
            .set_body_json(json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."})),
        1,
    )
    .await;
    let err = f.github.revoke(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(17)));
    f.conforms().await;
}

#[tokio::test]
async fn a_secondary_rate_limit_without_a_hint_waits_a_minute() {
    let f = Fixture::installed("").await;
    f.respond(
        "GET",
        MEMBERSHIP,
        ResponseTemplate::new(403).set_body_json(json!({"message": "You have exceeded a secondary rate limit."})),
        1,
    )
    .await;
    let err = f.github.revoke(&subject(), &target(None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    f.conforms().await;
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, ResponseTemplate::new(502), 1).await;
    assert!(f.github.revoke(&subject(), &target(None)).await.unwrap_err().is_transient());
    f.conforms().await;
}

#[tokio::test]
async fn the_installation_is_discovered_when_not_configured() {
    let f = Fixture::app("").await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/installation"))
        .and(AppJwt)
        .and(header("x-github-api-version", API_VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 678, "account": {"login": "acme"}})))
        .expect(1)
        .mount(&f.server)
        .await;
    f.mint("ghs_installation_token_1", json!({"members": "write"}), None).await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 2).await;
    for _ in 0..2 {
        assert_eq!(f.github.grant(&subject(), &target(None)).await, Ok(GrantOutcome::AlreadyGranted));
    }
    f.conforms().await;
}

#[tokio::test]
async fn a_refused_app_jwt_explains_the_fix() {
    let f = Fixture::app("installation_id = 678\n").await;
    Mock::given(method("POST"))
        .and(path("/app/installations/678/access_tokens"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "A JSON web token could not be decoded"})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.github.revoke(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("app_id 12345") && err.to_string().contains("clock"), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_checks_the_app_the_token_and_the_org() {
    let f = Fixture::installed("").await;
    Mock::given(method("GET"))
        .and(path("/app"))
        .and(AppJwt)
        .and(header("accept", ACCEPT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 12345, "slug": "accessgov"})))
        .expect(1)
        .mount(&f.server)
        .await;
    f.api("GET", "/orgs/acme/teams", TOKEN_1)
        .and(query_param("per_page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    f.github.test_connection().await.unwrap();
    f.conforms().await;
}

#[tokio::test]
async fn test_connection_names_a_missing_members_permission() {
    let f = Fixture::app("installation_id = 678\n").await;
    f.mint("ghs_installation_token_1", json!({"members": "read"}), None).await;
    Mock::given(method("GET"))
        .and(path("/app"))
        .and(AppJwt)
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 12345})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.github.test_connection().await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("Members: Read and write") && err.to_string().contains("\"read\""), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn a_fine_grained_token_is_used_as_is_and_a_401_is_not_retried() {
    let f = Fixture::pat("").await;
    let bearer = format!("Bearer {PAT}");
    f.api("GET", "/orgs/acme/teams", &bearer)
        .and(query_param("per_page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    f.github.test_connection().await.unwrap();
    f.api("GET", MEMBERSHIP, &bearer)
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})))
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.github.revoke(&subject(), &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "unauthorized");
    assert!(err.to_string().contains("fine-grained") && !err.to_string().contains(PAT), "{err}");
    f.conforms().await;
}

#[tokio::test]
async fn logins_and_teams_that_cannot_work_are_permanent_before_any_call() {
    let f = Fixture::pat("").await;
    let mut s = subject();
    s.fields.clear();
    let err = f.github.grant(&s, &target(None)).await.unwrap_err();
    assert_eq!(err.class(), "permanent");
    assert!(err.to_string().contains(FIELD), "{err}");
    s.fields.insert(FIELD.into(), "alice@example.com".into());
    assert!(f.github.grant(&s, &target(None)).await.unwrap_err().to_string().contains("not a GitHub login"));
    let err = f.github.grant(&subject(), &Target { name: "Platform Eng".into(), role: None }).await.unwrap_err();
    assert!(err.to_string().contains("team slug"), "{err}");
    let err = f.github.grant(&subject(), &Target { name: "other/platform-eng".into(), role: None }).await.unwrap_err();
    assert!(err.to_string().contains("not in organization acme"), "{err}");
    let err = f.github.grant(&subject(), &target(Some("owner"))).await.unwrap_err();
    assert!(err.to_string().contains("member or maintainer"), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_at_sign_before_the_login_is_ignored() {
    let f = Fixture::pat("").await;
    f.api("GET", MEMBERSHIP, &format!("Bearer {PAT}"))
        .respond_with(membership("member", "active"))
        .expect(1)
        .mount(&f.server)
        .await;
    let mut s = subject();
    s.fields.insert(FIELD.into(), "@octo-alice".into());
    assert_eq!(f.github.grant(&s, &target(None)).await, Ok(GrantOutcome::AlreadyGranted));
    f.conforms().await;
}

#[test]
fn config_errors_name_the_missing_key_and_debug_hides_secrets() {
    let err = Github::from_config("gh", &app("kind = \"github\"\norg = \"acme\"\ntoken_file = \"/x\"\n")).unwrap_err();
    assert!(err.contains("subject_field"), "{err}");
    let err = Github::from_config("gh", &app("kind = \"github\"\nsubject_field = \"f\"\n")).unwrap_err();
    assert!(err.contains("org is required"), "{err}");
    let err =
        Github::from_config("gh", &app("kind = \"github\"\norg = \"acme\"\nsubject_field = \"f\"\n")).unwrap_err();
    assert!(err.contains("app_id + private_key_env/private_key_file") && err.contains("token_env/token_file"), "{err}");
    let key = format!("private_key_file = \"{KEYS}/test-rsa.pkcs1.pem\"\n");
    let err =
        Github::from_config("gh", &app(&format!("kind = \"github\"\norg = \"acme\"\nsubject_field = \"f\"\n{key}")))
            .unwrap_err();
    assert!(err.contains("app_id is required"), "{err}");
    let text = format!("kind = \"github\"\norg = \"acme\"\nsubject_field = \"f\"\napp_id = \"12345\"\n{key}");
    let gh = Github::from_config("gh", &app(&text)).unwrap();
    let shown = format!("{gh:?}");
    assert!(shown.contains("app 12345") && !shown.contains("PRIVATE KEY"), "{shown}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t"), PAT).unwrap();
    let text = format!(
        "kind = \"github\"\norg = \"acme\"\nsubject_field = \"f\"\ntoken_file = \"{}/t\"\n",
        dir.path().display()
    );
    let shown = format!("{:?}", Github::from_config("gh", &app(&text)).unwrap());
    assert!(shown.contains("[REDACTED]") && !shown.contains(PAT), "{shown}");
    let err = Github::from_config("gh", &app(&format!("{text}invite_non_members = \"yes\"\n"))).unwrap_err();
    assert!(err.contains("invite_non_members must be true or false"), "{err}");
    let c = crate::connectors::build_one("gh", &app(&text)).unwrap();
    assert_eq!(c.kind(), "github");
}

// ---- read-back ----

const MEMBERS: &str = "/orgs/acme/teams/platform-eng/members";

fn team_member(login: &str) -> Value {
    json!({"login": login, "id": 1, "type": "User", "site_admin": false, "role": "member", "inherited": false})
}

#[tokio::test]
async fn members_follow_the_link_next_page() {
    let f = Fixture::installed("").await;
    let next = format!("{}{MEMBERS}?per_page=100&role=all&page=2", f.server.uri());
    let last = format!("{}{MEMBERS}?per_page=100&role=all&page=2", f.server.uri());
    f.api("GET", MEMBERS, TOKEN_1)
        .and(query_param("per_page", "100"))
        .and(query_param("role", "all"))
        .and(wiremock::matchers::query_param_is_missing("page"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", format!("<{next}>; rel=\"next\", <{last}>; rel=\"last\"").as_str())
                .set_body_json(json!([team_member("Octo-Alice"), team_member("bob")])),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    f.api("GET", MEMBERS, TOKEN_1)
        .and(query_param("per_page", "100"))
        .and(query_param("role", "all"))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    format!("<{}{MEMBERS}?per_page=100&role=all&page=1>; rel=\"prev\"", f.server.uri()).as_str(),
                )
                .set_body_json(json!([team_member("carol")])),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let members = f.github.members(&target(None)).await.unwrap();
    let m = |id: &str| Member { id: id.into(), keys: vec![id.to_ascii_lowercase()], display: Some(id.into()) };
    assert_eq!(members, vec![m("Octo-Alice"), m("bob"), m("carol")]);
    f.conforms().await;
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused() {
    let f = Fixture::installed("").await;
    f.api("GET", MEMBERS, TOKEN_1)
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    "<https://evil.example/orgs/acme/teams/platform-eng/members?page=2>; rel=\"next\"",
                )
                .set_body_json(json!([team_member("bob")])),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let err = f.github.members(&target(None)).await.unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains("evil.example"), "{err}");
}

#[tokio::test]
async fn members_of_an_empty_team_are_none() {
    let f = Fixture::installed("").await;
    f.api("GET", MEMBERS, TOKEN_1)
        .and(query_param("per_page", "100"))
        .and(query_param("role", "all"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.github.members(&target(None)).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn members_of_a_missing_team_are_not_found() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERS, not_found(), 1).await;
    let err = f.github.members(&target(None)).await.unwrap_err();
    assert_eq!(err, ConnectorError::NotFound { what: "github: team platform-eng in organization acme".into() });
    f.conforms().await;
}

#[tokio::test]
async fn memberships_count_active_team_memberships_only() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, membership("member", "active"), 1).await;
    f.respond("GET", "/orgs/acme/teams/sre/memberships/octo-alice", membership("member", "pending"), 1).await;
    f.respond("GET", "/orgs/acme/teams/auditors/memberships/octo-alice", not_found(), 1).await;
    f.respond("GET", "/orgs/acme/teams/admins/memberships/octo-alice", membership("maintainer", "active"), 1).await;
    let targets: Vec<Target> =
        [TEAM, "sre", "auditors", "acme/admins"].iter().map(|n| Target { name: (*n).into(), role: None }).collect();
    let held = f.github.memberships(&subject(), &targets).await.unwrap();
    assert_eq!(held, vec![TEAM.to_owned(), "acme/admins".to_owned()]);
    f.conforms().await;
}

#[tokio::test]
async fn memberships_of_an_unknown_login_are_none() {
    let f = Fixture::installed("").await;
    f.respond("GET", MEMBERSHIP, not_found(), 1).await;
    f.respond("GET", "/orgs/acme/teams/sre/memberships/octo-alice", not_found(), 1).await;
    let targets = [target(None), Target { name: "sre".into(), role: None }];
    assert_eq!(f.github.memberships(&subject(), &targets).await, Ok(vec![]));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_is_active_for_an_org_member() {
    let f = Fixture::installed("").await;
    f.respond("GET", "/orgs/acme/members/octo-alice", ResponseTemplate::new(204), 1).await;
    assert_eq!(f.github.user_state(&subject()).await, Ok(UserState::Active));
    f.conforms().await;
}

#[tokio::test]
async fn user_state_is_not_found_outside_the_org() {
    let f = Fixture::installed("").await;
    f.respond("GET", "/orgs/acme/members/octo-alice", not_found(), 1).await;
    assert_eq!(f.github.user_state(&subject()).await, Ok(UserState::NotFound));
    f.conforms().await;
}

#[tokio::test]
async fn identity_is_the_lowercased_login_and_needs_one() {
    let f = Fixture::installed("").await;
    let mut s = subject();
    s.fields.insert(FIELD.into(), "@Octo-Alice".into());
    assert_eq!(f.github.identity(&s), Ok("octo-alice".to_owned()));
    s.fields.clear();
    let err = f.github.identity(&s).unwrap_err();
    assert!(err.class() == "permanent" && err.to_string().contains(FIELD), "{err}");
    assert!(f.server.received_requests().await.unwrap().is_empty());
}

#[test]
fn next_links_are_read_from_any_position() {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "link",
        "<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\""
            .parse()
            .unwrap(),
    );
    assert_eq!(next_link(&h).as_deref(), Some("https://api.github.com/x?page=3"));
    h.insert("link", "<https://api.github.com/x?page=1>; rel=\"first\"".parse().unwrap());
    assert_eq!(next_link(&h), None);
}
