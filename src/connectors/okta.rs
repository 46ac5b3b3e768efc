//! Okta: group membership through the Admin Management API.
//!
//! Authentication is either an API token (`Authorization: SSWS <token>`, the
//! token acts with its creating admin's permissions) or an OAuth 2.0 service app
//! using `private_key_jwt`: an RS256 client assertion (`iss` = `sub` =
//! `client_id`, `aud` = the token URL, `kid` = `key_id`, five minutes, a `jti`)
//! is traded at the org authorization server (`POST /oauth2/v1/token`) for a
//! Bearer token with the configured scopes, cached until shortly before expiry
//! and fetched again once after a 401.
//!
//! Subject: by email (`GET /api/v1/users/{email}`, Okta looks the login up;
//! falls back to `search=profile.email eq "..."`), or the value of the ticket
//! field `subject_field` (an Okta user id or login). Target: a group id
//! (`00g...`) or the exact group name. Only `OKTA_GROUP` groups are changed;
//! `APP_GROUP` memberships are owned by their directory import and `BUILT_IN`
//! groups by Okta, so both are refused.
//!
//! Grant: check the user's groups, then `PUT /api/v1/groups/{gid}/users/{uid}`.
//! Revoke: check, then `DELETE` the same path; a 404 is "already absent" only
//! after the user and the group are read again and both still exist.
//! A 429 carries `X-Rate-Limit-Reset` (epoch seconds), surfaced as the retry hint.
//!
//! Read-back: `identity` is the `subject_field` value or the email, lowercased.
//! `members`: `GET /api/v1/groups/{groupId}/users?limit=200`, following `Link: rel="next"`;
//! keys are the user id, `profile.login` and `profile.email`, lowercased.
//! `memberships`: the user's groups (`GET /api/v1/users/{id}/groups`, paged), matched
//! against the targets by group id or exact OKTA_GROUP name. `user_state`: the user's
//! `status`; SUSPENDED and DEPROVISIONED are inactive, every other status (STAGED,
//! PROVISIONED, ACTIVE, RECOVERY, PASSWORD_EXPIRED, LOCKED_OUT) is a live account.

use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(test)]
mod tests;

/// Scopes requested by an OAuth service app unless `scopes` says otherwise.
pub const DEFAULT_SCOPES: &str = "okta.users.read okta.groups.manage";
/// The only group type whose memberships the API may change.
const WRITABLE_TYPE: &str = "OKTA_GROUP";
/// Lifetime of a client assertion (Okta accepts at most one hour).
const ASSERTION_LIFETIME: u64 = 300;
/// Pages of a user's groups followed at most (200 groups a page).
const MAX_PAGES: usize = 50;
/// Members asked for per page of a group's users (Okta recommends `limit=200`).
const MEMBER_PAGE: &str = "200";
/// Pages of a group's users followed at most (200 users a page: 400,000 members).
const MAX_MEMBER_PAGES: usize = 2000;
/// User statuses of an account an admin has taken away; every other status
/// (ACTIVE, STAGED, PROVISIONED, RECOVERY, PASSWORD_EXPIRED, LOCKED_OUT) is a live account.
const INACTIVE_STATUSES: [&str; 2] = ["SUSPENDED", "DEPROVISIONED"];

/// The Okta connector.
pub struct Okta {
    app: String,
    base: Url,
    http: Http,
    auth: Auth,
    subject_field: Option<String>,
}

enum Auth {
    /// An API token (`SSWS`).
    Ssws(SecretString),
    /// An OAuth service app with a private-key client assertion.
    OAuth { client_id: String, key: Box<EncodingKey>, key_id: Option<String>, scopes: String, cache: http::TokenCache },
}

impl std::fmt::Debug for Okta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Okta");
        d.field("app", &self.app).field("base", &self.base.as_str());
        match &self.auth {
            Auth::Ssws(_) => d.field("auth", &"SSWS [REDACTED]"),
            Auth::OAuth { client_id, key_id, scopes, .. } => d
                .field("client_id", client_id)
                .field("key_id", key_id)
                .field("scopes", scopes)
                .field("private_key", &"[REDACTED]"),
        };
        d.field("subject_field", &self.subject_field).finish()
    }
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    profile: UserProfile,
}

#[derive(Debug, Default, Deserialize)]
struct UserProfile {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default, rename = "firstName")]
    first_name: Option<String>,
    #[serde(default, rename = "lastName")]
    last_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Group {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    profile: GroupProfile,
}

#[derive(Debug, Default, Deserialize)]
struct GroupProfile {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct OktaErrorBody {
    #[serde(default, rename = "errorCode")]
    error_code: String,
    /// OAuth endpoint errors.
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] =
    &["token_env", "token_file", "client_id", "private_key_env", "private_key_file", "key_id", "scopes"];

impl Okta {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        let base_text = common.base_url.clone().ok_or_else(|| {
            "base_url is required: your Okta org URL, e.g. https://acme.okta.com (not the -admin URL)".to_owned()
        })?;
        let base = Url::parse(base_text.trim_end_matches('/'))
            .map_err(|e| format!("base_url {base_text:?} is not a URL: {e}"))?;
        if !matches!(base.scheme(), "https" | "http") || base.cannot_be_a_base() {
            return Err(format!("base_url {base_text:?} must be an https:// URL such as https://acme.okta.com"));
        }
        let token = http::secret(app, "token")?;
        let client_id = http::setting(app, "client_id");
        let auth = match (token, client_id) {
            (Some(_), Some(_)) => {
                return Err("set either token_env/token_file (an API token) or client_id with \
                            private_key_env/private_key_file (an OAuth service app), not both"
                    .into());
            }
            (Some(token), None) => Auth::Ssws(token),
            (None, Some(client_id)) => {
                let pem = http::secret(app, "private_key")?.ok_or_else(|| {
                    "private_key_env or private_key_file is required with client_id: the PEM private key \
                     whose public key is registered on the service app"
                        .to_owned()
                })?;
                let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|_| {
                    "private_key: not an RSA private key in PEM form (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                        .to_owned()
                })?;
                Auth::OAuth {
                    client_id,
                    key: Box::new(key),
                    key_id: http::setting(app, "key_id"),
                    scopes: scopes(app)?,
                    cache: http::TokenCache::default(),
                }
            }
            (None, None) => {
                return Err("no credentials: set token_env or token_file (an Okta API token), or client_id \
                            with private_key_env/private_key_file (an OAuth service app)"
                    .into());
            }
        };
        Ok(Self {
            app: name.to_owned(),
            base,
            http: Http::new("okta", &common)?,
            auth,
            subject_field: common.subject_field,
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in from_config").pop_if_empty().extend(segments);
        http::set_query(&mut url, query);
        url
    }

    fn token_url(&self) -> Url {
        self.url(&["oauth2", "v1", "token"], &[])
    }

    /// The `Authorization` header value.
    async fn authorization(&self) -> Result<HeaderValue, ConnectorError> {
        let text = match &self.auth {
            Auth::Ssws(token) => format!("SSWS {}", token.expose_secret()),
            Auth::OAuth { cache, .. } => {
                let token = cache.get(|| self.fetch_token()).await?;
                format!("Bearer {}", token.expose_secret())
            }
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| ConnectorError::Permanent {
            reason: "the Okta credential holds characters not allowed in an HTTP header".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Trades a fresh client assertion for an access token.
    async fn fetch_token(&self) -> Result<(SecretString, Duration), ConnectorError> {
        let Auth::OAuth { client_id, key, key_id, scopes, .. } = &self.auth else {
            unreachable!("only OAuth apps fetch tokens")
        };
        let token_url = self.token_url();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: token_url.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| ConnectorError::Permanent { reason: format!("cannot sign the Okta client assertion: {e}") })?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", scopes.as_str()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
        ];
        let req = self.http.client().post(token_url).header(ACCEPT, "application/json").form(&form);
        let resp = self.http.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.token_error(resp).await);
        }
        let answer: TokenAnswer = resp.json().await.map_err(|e| ConnectorError::Transient {
            reason: format!("okta: unreadable token answer: {e}"),
            retry_after: None,
        })?;
        if answer.token_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("DPoP")) {
            return Err(dpop_error());
        }
        Ok((SecretString::from(answer.access_token), Duration::from_secs(answer.expires_in.unwrap_or(3600))))
    }

    async fn token_error(&self, resp: Response) -> ConnectorError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return http::classify("okta", status, &headers, &body);
        }
        let e: OktaErrorBody = serde_json::from_str(&body).unwrap_or_default();
        let detail = http::snippet(&format!("{}: {}", e.error, e.error_description));
        match e.error.as_str() {
            "invalid_dpop_proof" | "use_dpop_nonce" => dpop_error(),
            "invalid_scope" => ConnectorError::Unauthorized(format!(
                "okta token endpoint refused the scopes ({detail}): grant them to the service app \
                 (Okta API Scopes tab) or change `scopes`"
            )),
            "invalid_client" | "unauthorized_client" | "invalid_grant" => ConnectorError::Unauthorized(format!(
                "okta token endpoint refused the service app ({detail}): check client_id, that the app uses \
                 public key / private key client authentication, and that key_id and private_key match a key \
                 registered on it"
            )),
            _ if status == StatusCode::NOT_FOUND => ConnectorError::NotFound {
                what: format!("okta token endpoint {} (check base_url: the org URL)", self.token_url()),
            },
            _ => ConnectorError::Unauthorized(format!(
                "okta token endpoint answered {}: {}",
                status.as_u16(),
                if detail.trim() == ":" { http::snippet(&body) } else { detail }
            )),
        }
    }

    /// Sends an authenticated request; with OAuth, a 401 drops the cached token and
    /// the call is made once more with a fresh one. Returns any HTTP answer.
    async fn call(&self, method: Method, url: Url) -> Result<Response, ConnectorError> {
        let mut refreshed = false;
        loop {
            let mut req = self
                .http
                .client()
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json")
                .header(AUTHORIZATION, self.authorization().await?);
            if method == Method::PUT {
                req = req.header(CONTENT_TYPE, "application/json").body(Vec::new());
            }
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && !refreshed
                && let Auth::OAuth { cache, .. } = &self.auth
            {
                cache.invalidate().await;
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The classified error of a failed answer, with the fix for credential problems.
    async fn fail(&self, resp: Response) -> ConnectorError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let code = serde_json::from_str::<OktaErrorBody>(&body).unwrap_or_default().error_code;
        match http::classify("okta", status, &headers, &body) {
            ConnectorError::Unauthorized(reason) => ConnectorError::Unauthorized(format!(
                "{reason} — {}",
                match (&self.auth, status, code.as_str()) {
                    (Auth::Ssws(_), StatusCode::UNAUTHORIZED, _) | (_, _, "E0000011") =>
                        "the API token is invalid, revoked or expired (unused for 30 days): create a new one \
                         (Security > API > Tokens) and update token_env/token_file",
                    (Auth::Ssws(_), _, _) =>
                        "the token's admin lacks a permission: give it the Group Membership Administrator \
                         role (or a custom role that can manage these groups' members) and read access to users",
                    (Auth::OAuth { .. }, StatusCode::UNAUTHORIZED, _) =>
                        "Okta refused a fresh access token: check that the service app is active",
                    (Auth::OAuth { .. }, _, _) =>
                        "the service app lacks a scope or an admin role: grant okta.users.read and \
                         okta.groups.manage and assign it the Group Membership Administrator role",
                },
            )),
            other => other,
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &str) -> Result<T, ConnectorError> {
        resp.json()
            .await
            .map_err(|e| ConnectorError::Permanent { reason: format!("okta: unexpected {what} answer: {e}") })
    }

    /// GET of one object; 404 -> `Ok(None)`.
    async fn get_one<T: serde::de::DeserializeOwned>(&self, url: Url, what: &str) -> Result<Option<T>, ConnectorError> {
        let resp = self.call(Method::GET, url).await?;
        match resp.status() {
            s if s.is_success() => Self::json(resp, what).await.map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(resp).await),
        }
    }

    async fn get_list<T: serde::de::DeserializeOwned>(&self, url: Url, what: &str) -> Result<Vec<T>, ConnectorError> {
        let resp = self.call(Method::GET, url).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Self::json(resp, what).await
    }

    async fn user(&self, subject: &Subject) -> Result<User, ConnectorError> {
        if let Some(field) = &self.subject_field {
            let key = subject.field(field).ok_or_else(|| ConnectorError::Permanent {
                reason: format!(
                    "the ticket has no value in field {field} (the application's subject_field), so the \
                     Okta user cannot be identified"
                ),
            })?;
            return self
                .get_one(self.url(&["api", "v1", "users", key], &[]), "user")
                .await?
                .ok_or_else(|| ConnectorError::NotFound { what: format!("Okta user with id or login {key:?}") });
        }
        let email = subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty()).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: "the requester has no email address in the ticket (hidden by their Atlassian profile \
                         settings?); set the application's subject_field to a ticket field holding the Okta login"
                    .into(),
            }
        })?;
        if let Some(user) = self.get_one(self.url(&["api", "v1", "users", email], &[]), "user").await? {
            return Ok(user);
        }
        let search = format!("profile.email eq \"{}\"", email.replace('\\', "\\\\").replace('"', "\\\""));
        let found: Vec<User> =
            self.get_list(self.url(&["api", "v1", "users"], &[("search", &search)]), "user search").await?;
        let mut live: Vec<User> = found
            .into_iter()
            .filter(|u| u.profile.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
            .collect();
        if live.len() > 1 {
            live.retain(|u| u.status.as_deref() != Some("DEPROVISIONED"));
        }
        match live.len() {
            0 => Err(ConnectorError::NotFound { what: format!("Okta user with login or email {email:?}") }),
            1 => Ok(live.remove(0)),
            n => Err(ConnectorError::Permanent {
                reason: format!(
                    "{n} Okta users have the email {email:?} ({}); set subject_field to a ticket field holding \
                     the Okta login",
                    live.iter().filter_map(|u| u.profile.login.as_deref()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// The group by id (`00g...`) or exact name; only `OKTA_GROUP` is accepted.
    async fn group(&self, target: &Target) -> Result<Group, ConnectorError> {
        let name = target.name.trim();
        let group = if looks_like_group_id(name) {
            self.get_one(self.url(&["api", "v1", "groups", name], &[]), "group")
                .await?
                .ok_or_else(|| ConnectorError::NotFound { what: format!("Okta group with id {name}") })?
        } else {
            let search = format!("profile.name eq \"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""));
            let found: Vec<Group> =
                self.get_list(self.url(&["api", "v1", "groups"], &[("search", &search)]), "group search").await?;
            let mut exact: Vec<Group> = found.into_iter().filter(|g| g.profile.name == name).collect();
            match exact.len() {
                0 => return Err(ConnectorError::NotFound { what: format!("Okta group named {name:?}") }),
                1 => exact.remove(0),
                n => {
                    return Err(ConnectorError::Permanent {
                        reason: format!(
                            "{n} Okta groups are named {name:?} ({}); write the group id in the rule instead",
                            exact
                                .iter()
                                .map(|g| format!("{} {}", g.id, g.kind.as_deref().unwrap_or("?")))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        };
        match group.kind.as_deref() {
            Some(WRITABLE_TYPE) => Ok(group),
            other => Err(ConnectorError::Permanent {
                reason: format!(
                    "Okta group {:?} ({}) is of type {}: only OKTA_GROUP memberships can be changed through the \
                     API ({}); use an Okta-mastered group",
                    group.profile.name,
                    group.id,
                    other.unwrap_or("unknown"),
                    match other {
                        Some("APP_GROUP") =>
                            "APP_GROUP memberships are imported from their directory or app, e.g. Active Directory",
                        Some("BUILT_IN") => "BUILT_IN groups such as Everyone are managed by Okta",
                        _ => "other types are not Okta-mastered",
                    }
                ),
            }),
        }
    }

    /// Whether the user is a direct member of the group (the user's groups, paged).
    async fn is_member(&self, user: &User, group: &Group) -> Result<bool, ConnectorError> {
        let mut found = false;
        self.user_groups(user, |groups| {
            found = groups.iter().any(|g| g.id == group.id);
            found
        })
        .await?;
        Ok(found)
    }

    /// Walks the user's groups (`GET /api/v1/users/{id}/groups`, following `Link: rel="next"`),
    /// handing each page to `page` until it returns `true` or the pages end.
    async fn user_groups(&self, user: &User, mut page: impl FnMut(Vec<Group>) -> bool) -> Result<(), ConnectorError> {
        let mut url = self.url(&["api", "v1", "users", &user.id, "groups"], &[]);
        for _ in 0..MAX_PAGES {
            let resp = self.call(Method::GET, url).await?;
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let next = next_link(resp.headers()).filter(|n| n.origin() == self.base.origin());
            let groups: Vec<Group> = Self::json(resp, "user groups").await?;
            if page(groups) {
                return Ok(());
            }
            match next {
                Some(n) => url = n,
                None => return Ok(()),
            }
        }
        Err(ConnectorError::Permanent {
            reason: format!("okta: the user's groups span more than {MAX_PAGES} pages; giving up the membership check"),
        })
    }

    /// The identifier `grant` looks the user up by: the `subject_field` value (an Okta
    /// user id or login) when the application has one, else the requester's email;
    /// lowercased, as Okta compares logins and emails case-insensitively.
    fn do_identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        if let Some(field) = &self.subject_field {
            return subject.field(field).map(|v| v.trim().to_lowercase()).ok_or_else(|| ConnectorError::Permanent {
                reason: format!(
                    "the ticket has no value in field {field} (the application's subject_field), so the \
                     Okta user cannot be identified"
                ),
            });
        }
        subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty()).map(str::to_lowercase).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: "the requester has no email address in the ticket; set the application's subject_field \
                         to a ticket field holding the Okta login"
                    .into(),
            }
        })
    }

    /// Every user of the group: `GET /api/v1/groups/{groupId}/users?limit=200`, following
    /// `Link: rel="next"` (same origin only).
    async fn do_members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        Self::check_role(target)?;
        let group = self.group(target).await?;
        let mut url = self.url(&["api", "v1", "groups", &group.id, "users"], &[("limit", MEMBER_PAGE)]);
        let mut members = Vec::new();
        for _ in 0..MAX_MEMBER_PAGES {
            let resp = self.call(Method::GET, url).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound { what: format!("Okta group {}", group.id) });
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let next = next_link(resp.headers()).filter(|n| n.origin() == self.base.origin());
            let users: Vec<User> = Self::json(resp, "group users").await?;
            members.extend(users.into_iter().map(member));
            match next {
                Some(n) => url = n,
                None => return Ok(members),
            }
        }
        Err(ConnectorError::Permanent {
            reason: format!(
                "okta: the members of group {} span more than {MAX_MEMBER_PAGES} pages; giving up the read",
                group.id
            ),
        })
    }

    /// The targets (group ids, or exact names of OKTA_GROUP groups) among the user's
    /// groups (`GET /api/v1/users/{id}/groups`, paged). An unknown user is in none.
    async fn do_memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let user = match self.user(subject).await {
            Ok(user) => user,
            Err(ConnectorError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut held = vec![false; targets.len()];
        self.user_groups(&user, |groups| {
            for (i, t) in targets.iter().enumerate() {
                let name = t.name.trim();
                held[i] |= groups.iter().any(|g| {
                    if looks_like_group_id(name) {
                        g.id == name
                    } else {
                        g.profile.name == name && g.kind.as_deref() == Some(WRITABLE_TYPE)
                    }
                });
            }
            held.iter().all(|h| *h)
        })
        .await?;
        Ok(targets.iter().zip(held).filter(|(_, h)| *h).map(|(t, _)| t.name.clone()).collect())
    }

    /// The user's `status`: SUSPENDED and DEPROVISIONED are inactive, every other status a live account.
    async fn do_user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        match self.user(subject).await {
            Ok(user) if user.status.as_deref().is_some_and(|s| INACTIVE_STATUSES.contains(&s)) => {
                Ok(UserState::Inactive)
            }
            Ok(_) => Ok(UserState::Active),
            Err(ConnectorError::NotFound { .. }) => Ok(UserState::NotFound),
            Err(e) => Err(e),
        }
    }

    fn check_role(target: &Target) -> Result<(), ConnectorError> {
        match target.role.as_deref() {
            None => Ok(()),
            Some(r) if r.eq_ignore_ascii_case("member") => Ok(()),
            Some(r) => Err(ConnectorError::Permanent {
                reason: format!("Okta group memberships have no roles, but the rule sets role = {r:?}; remove it"),
            }),
        }
    }

    async fn do_grant(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        Self::check_role(target)?;
        let user = self.user(subject).await?;
        let group = self.group(target).await?;
        if self.is_member(&user, &group).await? {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let resp =
            self.call(Method::PUT, self.url(&["api", "v1", "groups", &group.id, "users", &user.id], &[])).await?;
        if resp.status().is_success() {
            return Ok(GrantOutcome::Granted);
        }
        Err(self.fail(resp).await)
    }

    async fn do_revoke(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        Self::check_role(target)?;
        let user = self.user(subject).await?;
        let group = self.group(target).await?;
        if !self.is_member(&user, &group).await? {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        let resp =
            self.call(Method::DELETE, self.url(&["api", "v1", "groups", &group.id, "users", &user.id], &[])).await?;
        match resp.status() {
            s if s.is_success() => Ok(RevokeOutcome::Revoked),
            StatusCode::NOT_FOUND => {
                // Gone between the check and the call, or the user/group vanished: decide by re-reading both.
                let user_ok =
                    self.get_one::<User>(self.url(&["api", "v1", "users", &user.id], &[]), "user").await?.is_some();
                let group_ok =
                    self.get_one::<Group>(self.url(&["api", "v1", "groups", &group.id], &[]), "group").await?.is_some();
                match (user_ok, group_ok) {
                    (true, true) => Ok(RevokeOutcome::AlreadyAbsent),
                    (false, _) => Err(ConnectorError::NotFound { what: format!("Okta user {}", user.id) }),
                    (_, false) => Err(ConnectorError::NotFound { what: format!("Okta group {}", group.id) }),
                }
            }
            _ => Err(self.fail(resp).await),
        }
    }

    async fn do_test(&self) -> Result<(), ConnectorError> {
        let url = match self.auth {
            // Returns the token's own admin user: proves the token without needing any other permission.
            Auth::Ssws(_) => self.url(&["api", "v1", "users", "me"], &[]),
            // A service app has no user; the cheapest read it is scoped for.
            Auth::OAuth { .. } => self.url(&["api", "v1", "groups"], &[("limit", "1")]),
        };
        let resp = self.call(Method::GET, url).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ConnectorError::NotFound {
                what: format!("okta API at {} (check base_url: the org URL, e.g. https://acme.okta.com)", self.base),
            });
        }
        Err(self.fail(resp).await)
    }
}

super::connector_impl!(
    Okta, "okta", grant: do_grant, revoke: do_revoke, test: do_test,
    identity: do_identity, members: do_members, memberships: do_memberships, user_state: do_user_state
);

/// A group member as read back: its id, login and email (lowercased: Okta compares them
/// case-insensitively), and its name for people.
fn member(user: User) -> Member {
    let mut keys = vec![user.id.to_lowercase()];
    for k in [&user.profile.login, &user.profile.email].into_iter().flatten() {
        let k = k.trim().to_lowercase();
        if !k.is_empty() && !keys.contains(&k) {
            keys.push(k);
        }
    }
    let name = [&user.profile.first_name, &user.profile.last_name]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let display = if name.is_empty() { user.profile.login.clone() } else { Some(name) };
    Member { id: user.id, keys, display }
}

fn dpop_error() -> ConnectorError {
    ConnectorError::Permanent {
        reason: "the Okta service app requires DPoP-bound tokens, which this connector does not send: turn off \
                 \"Require Demonstrating Proof of Possession (DPoP) header in token requests\" on the app"
            .into(),
    }
}

/// `scopes` as a space-separated string or an array of strings; default [`DEFAULT_SCOPES`].
fn scopes(app: &ApplicationConfig) -> Result<String, String> {
    match app.settings.get("scopes") {
        None => Ok(DEFAULT_SCOPES.into()),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => {
            Ok(s.split([' ', ',']).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
        }
        Some(toml::Value::Array(a)) if !a.is_empty() && a.iter().all(toml::Value::is_str) => {
            Ok(a.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(" "))
        }
        Some(_) => Err(format!(
            "scopes must be a list of Okta scopes, e.g. [\"okta.users.read\", \"okta.groups.manage\"] (default \"{DEFAULT_SCOPES}\")"
        )),
    }
}

/// Okta object ids: 20 characters, groups start with `00g`.
fn looks_like_group_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("00g") && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<Url> {
    headers.get_all(reqwest::header::LINK).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(
        |part| {
            let (url, params) = part.trim().split_once(';')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            is_next.then(|| Url::parse(url.trim().trim_start_matches('<').trim_end_matches('>')).ok()).flatten()
        },
    )
}
