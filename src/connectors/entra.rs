//! Microsoft Entra ID: group membership through Microsoft Graph v1.0.
//!
//! Authentication is the OAuth 2.0 client-credentials grant at
//! `{login_url}/{tenant_id}/oauth2/v2.0/token` with scope
//! `https://graph.microsoft.com/.default`, the client proving itself with a
//! client secret or with a certificate: a PS256 client assertion (`iss` = `sub`
//! = `client_id`, `aud` = the token URL, a `jti`, ten minutes) whose header
//! carries the certificate's SHA-256 thumbprint as `x5t#S256`. The token is
//! cached until shortly before expiry and fetched again once after a 401.
//!
//! Subject: by email (`GET /users/{email}`, which matches the
//! userPrincipalName; falls back to `$filter=mail eq '...'`), or the value of the
//! ticket field `subject_field` (an object id or userPrincipalName). Target: a
//! group object id or its exact displayName. Dynamic groups (their members come
//! from a rule), groups synced from on-premises AD and mail-enabled security
//! groups / distribution lists (Exchange owns those) are refused.
//!
//! Grant: `POST /groups/{id}/members/$ref` with the user's directoryObject URL;
//! Graph's 400 "One or more added object references already exist" is "already
//! granted" (the user and the group were read just before). Revoke:
//! `DELETE /groups/{id}/members/{uid}/$ref` (never without `/$ref`: that form
//! deletes the user object itself); a 404 is "already absent" only after the
//! group and the user are read again and both exist.
//!
//! Read-back: `identity` is the `subject_field` value or the email, lowercased.
//! `members`: `GET /groups/{id}/members?$select=id,userPrincipalName,mail,displayName&$top=999`,
//! following `@odata.nextLink`; only `#microsoft.graph.user` objects, keyed by object id,
//! userPrincipalName and mail (lowercased). `memberships`: `GET /users/{id}/memberOf`
//! (direct memberships, paged) matched against the targets by group id or displayName.
//! `user_state`: `accountEnabled` (false is inactive).

use super::http::Failure;
use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(test)]
mod tests;

/// The Microsoft identity platform (global cloud).
pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";
/// Microsoft Graph v1.0 (global cloud).
pub const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
/// Graph hosts of the national clouds: a `base_url` on one of them also sets the
/// token scope and the `@odata.id` host.
const GRAPH_HOSTS: [&str; 4] =
    ["graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"];
const USER_FIELDS: &str = "id,userPrincipalName,mail,accountEnabled";
const GROUP_FIELDS: &str =
    "id,displayName,groupTypes,securityEnabled,mailEnabled,onPremisesSyncEnabled,isAssignableToRole";
/// What `members` reads of each member (`@odata.type` comes with every directoryObject).
const MEMBER_FIELDS: &str = "id,userPrincipalName,mail,displayName";
/// What `memberships` reads of each group the user is in.
const MEMBER_OF_FIELDS: &str = "id,displayName";
/// Page size of the read-back lists (Graph's maximum for directory objects).
const PAGE_SIZE: &str = "999";
/// Pages followed at most (999 objects a page).
const MAX_PAGES: usize = 1000;
/// Lifetime of a certificate client assertion (Microsoft: 5-10 minutes).
const ASSERTION_LIFETIME: u64 = 600;
/// The wait suggested when Graph has not yet replicated a just-created user or group.
const REPLICATION_WAIT: Duration = Duration::from_secs(10);
const PERMISSIONS_FIX: &str = "grant the app the Microsoft Graph application permissions GroupMember.ReadWrite.All \
                               and User.Read.All with admin consent (role-assignable groups also need \
                               RoleManagement.ReadWrite.Directory)";

/// The Entra ID connector.
pub struct Entra {
    app: String,
    base: Url,
    http: Http,
    token_url: Url,
    tenant_id: String,
    client_id: String,
    credential: Credential,
    scope: String,
    /// `https://graph.microsoft.com/v1.0` (or the national cloud's), for `@odata.id`.
    odata_base: String,
    cache: http::TokenCache,
    subject_field: Option<String>,
}

enum Credential {
    Secret(SecretString),
    Certificate { key: Box<EncodingKey>, thumbprint_s256: String },
}

impl std::fmt::Debug for Entra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entra")
            .field("app", &self.app)
            .field("base", &self.base.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field(
                "credential",
                &match &self.credential {
                    Credential::Secret(_) => "client secret [REDACTED]".to_owned(),
                    Credential::Certificate { thumbprint_s256, .. } => {
                        format!("certificate x5t#S256={thumbprint_s256}, key [REDACTED]")
                    }
                },
            )
            .field("subject_field", &self.subject_field)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default, rename = "userPrincipalName")]
    upn: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default, rename = "accountEnabled")]
    account_enabled: Option<bool>,
}

/// A directoryObject of a members / memberOf list (users, groups, devices, service principals...).
#[derive(Debug, Deserialize)]
struct DirectoryObject {
    #[serde(default, rename = "@odata.type")]
    odata_type: Option<String>,
    id: String,
    #[serde(default, rename = "userPrincipalName")]
    upn: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default, rename = "displayName")]
    display_name: Option<String>,
}

/// One page of a Graph collection.
#[derive(Debug, Deserialize)]
struct Page<T> {
    value: Vec<T>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    group_types: Vec<String>,
    #[serde(default)]
    mail_enabled: Option<bool>,
    #[serde(default)]
    on_premises_sync_enabled: Option<bool>,
    #[serde(default)]
    is_assignable_to_role: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    value: Vec<T>,
}

/// Graph's error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Default, Deserialize)]
struct GraphError {
    #[serde(default)]
    error: GraphErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct GraphErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The token endpoint's error body.
#[derive(Debug, Default, Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

// Provider-specific readings of a failed answer (the type is `http::Failure`).
impl Failure {
    fn detail(&self) -> GraphErrorDetail {
        serde_json::from_str::<GraphError>(&self.body).map(|e| e.error).unwrap_or_default()
    }

    fn classify(&self) -> ConnectorError {
        http::classify("entra", self.status, &self.headers, &self.body)
    }
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] = &[
    "tenant_id",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "certificate_env",
    "certificate_file",
    "login_url",
];

impl Entra {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        let tenant_id = http::setting(app, "tenant_id").ok_or_else(|| {
            "tenant_id is required: the directory (tenant) id or a verified domain of your Entra tenant".to_owned()
        })?;
        if !tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')) {
            return Err(format!("tenant_id {tenant_id:?} must be a tenant id (GUID) or a domain name"));
        }
        let client_id = http::setting(app, "client_id")
            .ok_or_else(|| "client_id is required: the application (client) id of the app registration".to_owned())?;
        let credential = match (http::secret(app, "client_secret")?, http::secret(app, "certificate")?) {
            (Some(_), Some(_)) => {
                return Err("set either client_secret_env/client_secret_file or certificate_env/certificate_file, \
                            not both"
                    .into());
            }
            (Some(secret), None) => Credential::Secret(secret),
            (None, Some(pem)) => {
                let (key, thumbprint_s256) = parse_certificate(pem.expose_secret())?;
                Credential::Certificate { key: Box::new(key), thumbprint_s256 }
            }
            (None, None) => {
                return Err("no credentials: set client_secret_env/client_secret_file (a client secret) or \
                            certificate_env/certificate_file (a PEM holding the certificate and its private key)"
                    .into());
            }
        };
        let base_text = common.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let base = Url::parse(base_text.trim_end_matches('/'))
            .map_err(|e| format!("base_url {base_text:?} is not a URL: {e}"))?;
        if !matches!(base.scheme(), "https" | "http") || base.cannot_be_a_base() {
            return Err(format!("base_url {base_text:?} must be an https:// URL such as {DEFAULT_BASE_URL}"));
        }
        let login_text = http::setting(app, "login_url").unwrap_or_else(|| DEFAULT_LOGIN_URL.to_owned());
        let mut token_url = Url::parse(login_text.trim_end_matches('/'))
            .map_err(|e| format!("login_url {login_text:?} is not a URL: {e}"))?;
        if token_url.cannot_be_a_base() {
            return Err(format!("login_url {login_text:?} must be an https:// URL such as {DEFAULT_LOGIN_URL}"));
        }
        token_url
            .path_segments_mut()
            .map_err(|_| format!("login_url {login_text:?} cannot take a path"))?
            .pop_if_empty()
            .extend([tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        let graph_host = base.host_str().filter(|h| GRAPH_HOSTS.contains(h)).unwrap_or(GRAPH_HOSTS[0]).to_owned();
        Ok(Self {
            app: name.to_owned(),
            http: Http::new("entra", &common)?,
            base,
            token_url,
            tenant_id,
            client_id,
            credential,
            scope: format!("https://{graph_host}/.default"),
            odata_base: format!("https://{graph_host}/v1.0"),
            cache: http::TokenCache::default(),
            subject_field: common.subject_field,
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in from_config").pop_if_empty().extend(segments);
        http::set_query(&mut url, query);
        url
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration), ConnectorError> {
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
            ("grant_type", "client_credentials".into()),
        ];
        match &self.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose_secret().to_owned())),
            Credential::Certificate { key, thumbprint_s256 } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let claims = AssertionClaims {
                    aud: self.token_url.as_str(),
                    iss: &self.client_id,
                    sub: &self.client_id,
                    jti: uuid::Uuid::new_v4().to_string(),
                    nbf: now,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME,
                };
                let mut header = Header::new(Algorithm::PS256);
                header.x5t_s256 = Some(thumbprint_s256.clone());
                let assertion = jsonwebtoken::encode(&header, &claims, key).map_err(|e| ConnectorError::Permanent {
                    reason: format!("cannot sign the Entra client assertion: {e}"),
                })?;
                form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push(("client_assertion", assertion));
            }
        }
        let req = self.http.client().post(self.token_url.clone()).header(ACCEPT, "application/json").form(&form);
        let resp = self.http.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.token_error(Failure::read(resp).await));
        }
        let answer: TokenAnswer = resp.json().await.map_err(|e| ConnectorError::Transient {
            reason: format!("entra: unreadable token answer: {e}"),
            retry_after: None,
        })?;
        Ok((SecretString::from(answer.access_token), Duration::from_secs(answer.expires_in.unwrap_or(3600))))
    }

    fn token_error(&self, f: Failure) -> ConnectorError {
        if f.status == StatusCode::TOO_MANY_REQUESTS || f.status.is_server_error() {
            return f.classify();
        }
        let e: TokenError = serde_json::from_str(&f.body).unwrap_or_default();
        // "AADSTS7000215: Invalid client secret provided. ...\r\nTrace ID: ..." -> the first line.
        let first = e.error_description.lines().next().unwrap_or_default();
        let detail = http::snippet(&format!("{}: {first}", if e.error.is_empty() { "error" } else { &e.error }));
        let has = |codes: &[u64]| e.error_codes.iter().any(|c| codes.contains(c));
        let tenant = &self.tenant_id;
        if has(&[90002, 900023, 90013]) {
            return ConnectorError::NotFound {
                what: format!(
                    "Entra tenant {tenant:?} ({detail}): check tenant_id (the directory id or a verified domain)"
                ),
            };
        }
        let fix = if has(&[700016]) {
            "the client_id is not an application in this tenant: check client_id and tenant_id"
        } else if has(&[7000215, 7000222, 7000216]) {
            "the client secret is wrong or expired: create a new one under Certificates & secrets and store its \
             Value (not its Secret ID) in client_secret_env/client_secret_file"
        } else if has(&[700027, 700024, 7000274, 7000277, 50027]) {
            "the certificate assertion was refused: upload this certificate (public part) to the app registration \
             under Certificates & secrets and check the machine clock"
        } else if has(&[1002012, 70011]) || e.error == "invalid_scope" {
            "the scope was refused: check base_url/login_url name the same cloud"
        } else if has(&[7000112, 700025]) || e.error == "unauthorized_client" {
            "the app or its service principal is disabled or not allowed to use client credentials in this tenant"
        } else {
            "check tenant_id, client_id and the client secret or certificate"
        };
        ConnectorError::Unauthorized(format!("entra token endpoint answered {}: {detail} — {fix}", f.status.as_u16()))
    }

    /// Sends an authenticated Graph request; a 401 drops the cached token and the
    /// call is made once more with a fresh one. Returns any HTTP answer.
    async fn call(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Response, ConnectorError> {
        let mut refreshed = false;
        loop {
            let token = self.cache.get(|| self.fetch_token()).await?;
            let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
                ConnectorError::Permanent { reason: "the Entra token endpoint returned an unusable token".into() }
            })?;
            auth.set_sensitive(true);
            let mut req = self
                .http
                .client()
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json")
                .header(AUTHORIZATION, auth);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !refreshed {
                self.cache.invalidate().await;
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The classified error of a failed Graph answer, with the fix for permission problems.
    fn fail(&self, f: &Failure, group: Option<&Group>) -> ConnectorError {
        match f.classify() {
            ConnectorError::Unauthorized(reason) => {
                let fix = if f.status == StatusCode::UNAUTHORIZED {
                    "Graph refused a fresh token: check that the app registration and its service principal are enabled"
                        .to_owned()
                } else if group.and_then(|g| g.is_assignable_to_role) == Some(true) {
                    "this group is role-assignable: the app also needs RoleManagement.ReadWrite.Directory (or the \
                     Privileged Role Administrator role)"
                        .to_owned()
                } else {
                    PERMISSIONS_FIX.to_owned()
                };
                ConnectorError::Unauthorized(format!("{reason} — {fix}"))
            }
            other => other,
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &str) -> Result<T, ConnectorError> {
        resp.json()
            .await
            .map_err(|e| ConnectorError::Permanent { reason: format!("entra: unexpected {what} answer: {e}") })
    }

    /// GET of one object; 404 -> `Ok(None)`.
    async fn get_one<T: serde::de::DeserializeOwned>(&self, url: Url, what: &str) -> Result<Option<T>, ConnectorError> {
        let resp = self.call(Method::GET, url, None).await?;
        match resp.status() {
            s if s.is_success() => Self::json(resp, what).await.map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(&Failure::read(resp).await, None)),
        }
    }

    async fn get_list<T: serde::de::DeserializeOwned>(&self, url: Url, what: &str) -> Result<Vec<T>, ConnectorError> {
        let resp = self.call(Method::GET, url, None).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&Failure::read(resp).await, None));
        }
        Ok(Self::json::<List<T>>(resp, what).await?.value)
    }

    fn user_url(&self, key: &str) -> Url {
        self.url(&["users", key], &[("$select", USER_FIELDS)])
    }

    fn group_url(&self, id: &str) -> Url {
        self.url(&["groups", id], &[("$select", GROUP_FIELDS)])
    }

    async fn user(&self, subject: &Subject) -> Result<User, ConnectorError> {
        if let Some(field) = &self.subject_field {
            let key = subject.field(field).ok_or_else(|| ConnectorError::Permanent {
                reason: format!(
                    "the ticket has no value in field {field} (the application's subject_field), so the \
                     Entra user cannot be identified"
                ),
            })?;
            return self.get_one(self.user_url(key), "user").await?.ok_or_else(|| ConnectorError::NotFound {
                what: format!("Entra user with object id or userPrincipalName {key:?}"),
            });
        }
        let email = subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty()).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: "the requester has no email address in the ticket (hidden by their Atlassian profile \
                         settings?); set the application's subject_field to a ticket field holding the \
                         userPrincipalName"
                    .into(),
            }
        })?;
        if let Some(user) = self.get_one(self.user_url(email), "user").await? {
            return Ok(user);
        }
        // The userPrincipalName can differ from the mail address.
        let filter = format!("mail eq '{}'", email.replace('\'', "''"));
        let mut found: Vec<User> = self
            .get_list(self.url(&["users"], &[("$filter", &filter), ("$select", USER_FIELDS)]), "user search")
            .await?;
        match found.len() {
            0 => Err(ConnectorError::NotFound { what: format!("Entra user with userPrincipalName or mail {email:?}") }),
            1 => Ok(found.remove(0)),
            n => Err(ConnectorError::Permanent {
                reason: format!(
                    "{n} Entra users have the mail {email:?} ({}); set subject_field to a ticket field holding \
                     the userPrincipalName",
                    found.iter().filter_map(|u| u.upn.as_deref()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// The group by object id or exact displayName; refuses groups Graph cannot change.
    async fn group(&self, target: &Target) -> Result<Group, ConnectorError> {
        let name = target.name.trim();
        let group = if is_guid(name) {
            self.get_one(self.group_url(name), "group")
                .await?
                .ok_or_else(|| ConnectorError::NotFound { what: format!("Entra group with id {name}") })?
        } else {
            let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
            let found: Vec<Group> = self
                .get_list(self.url(&["groups"], &[("$filter", &filter), ("$select", GROUP_FIELDS)]), "group search")
                .await?;
            // Graph compares case-insensitively; prefer the exact spelling when several match.
            let (mut exact, other): (Vec<Group>, Vec<Group>) =
                found.into_iter().partition(|g| g.display_name.as_deref() == Some(name));
            if exact.is_empty() {
                exact = other;
            }
            match exact.len() {
                0 => return Err(ConnectorError::NotFound { what: format!("Entra group named {name:?}") }),
                1 => exact.remove(0),
                n => {
                    return Err(ConnectorError::Permanent {
                        reason: format!(
                            "{n} Entra groups are named {name:?} ({}); write the group's object id in the rule instead",
                            exact.iter().map(|g| g.id.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
        };
        let shown = format!("Entra group {:?} ({})", group.display_name.as_deref().unwrap_or(""), group.id);
        if group.group_types.iter().any(|t| t == "DynamicMembership") {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "{shown} has dynamic membership: its members come from its membership rule and cannot be added \
                     or removed; use an assigned group"
                ),
            });
        }
        if group.on_premises_sync_enabled == Some(true) {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "{shown} is synced from on-premises Active Directory: change its membership in AD (or use a \
                     cloud group)"
                ),
            });
        }
        if group.mail_enabled == Some(true) && !group.group_types.iter().any(|t| t == "Unified") {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "{shown} is a mail-enabled security group or distribution list: Graph cannot change its \
                     membership (Exchange Online owns it); use a security or Microsoft 365 group"
                ),
            });
        }
        Ok(group)
    }

    fn check_role(target: &Target) -> Result<(), ConnectorError> {
        match target.role.as_deref() {
            None => Ok(()),
            Some(r) if r.eq_ignore_ascii_case("member") => Ok(()),
            Some(r) => Err(ConnectorError::Permanent {
                reason: format!(
                    "this connector adds group members only, but the rule sets role = {r:?}; remove it (or use \"member\")"
                ),
            }),
        }
    }

    async fn do_grant(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        Self::check_role(target)?;
        let user = self.user(subject).await?;
        let group = self.group(target).await?;
        let body = json!({ "@odata.id": format!("{}/directoryObjects/{}", self.odata_base, user.id) });
        let resp =
            self.call(Method::POST, self.url(&["groups", &group.id, "members", "$ref"], &[]), Some(&body)).await?;
        if resp.status().is_success() {
            return Ok(GrantOutcome::Granted);
        }
        let f = Failure::read(resp).await;
        let detail = f.detail();
        match f.status {
            // Both objects were read just above, so "already exist" can only mean the membership.
            StatusCode::BAD_REQUEST if detail.message.contains("already exist") => Ok(GrantOutcome::AlreadyGranted),
            StatusCode::NOT_FOUND => Err(ConnectorError::Transient {
                reason: format!(
                    "entra answered 404 ({}: {}) adding a member to a group that was just read: a newly created \
                     user or group may not have replicated yet",
                    detail.code,
                    http::snippet(&detail.message)
                ),
                retry_after: Some(REPLICATION_WAIT),
            }),
            _ => Err(self.fail(&f, Some(&group))),
        }
    }

    async fn do_revoke(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        Self::check_role(target)?;
        let user = self.user(subject).await?;
        let group = self.group(target).await?;
        // Never without the trailing `$ref`: DELETE /groups/{id}/members/{uid} would delete the user.
        let url = self.url(&["groups", &group.id, "members", &user.id, "$ref"], &[]);
        let resp = self.call(Method::DELETE, url, None).await?;
        if resp.status().is_success() {
            return Ok(RevokeOutcome::Revoked);
        }
        let f = Failure::read(resp).await;
        if f.status != StatusCode::NOT_FOUND {
            return Err(self.fail(&f, Some(&group)));
        }
        // "Resource does not exist or one of its queried reference-property objects are not present":
        // not a member, unless the group or the user is gone.
        if self.get_one::<Group>(self.group_url(&group.id), "group").await?.is_none() {
            return Err(ConnectorError::NotFound { what: format!("Entra group {}", group.id) });
        }
        if self.get_one::<User>(self.user_url(&user.id), "user").await?.is_none() {
            return Err(ConnectorError::NotFound {
                what: format!("Entra user {}", user.mail.as_deref().unwrap_or(&user.id)),
            });
        }
        Ok(RevokeOutcome::AlreadyAbsent)
    }

    /// Every object of a Graph collection, following `@odata.nextLink` verbatim (only to
    /// the Graph origin of `base_url`, which gets the bearer token). A 404 is `Ok(None)`.
    async fn collection(&self, first: Url, what: &str) -> Result<Option<Vec<DirectoryObject>>, ConnectorError> {
        let mut url = first;
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.call(Method::GET, url, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.fail(&Failure::read(resp).await, None));
            }
            let page: Page<DirectoryObject> = Self::json(resp, what).await?;
            all.extend(page.value);
            let Some(next) = page.next_link else { return Ok(Some(all)) };
            let next = Url::parse(&next).map_err(|e| ConnectorError::Permanent {
                reason: format!("entra: the {what} answer's @odata.nextLink is not a URL: {e}"),
            })?;
            if next.origin() != self.base.origin() {
                return Err(ConnectorError::Permanent {
                    reason: format!(
                        "entra: the {what} answer's @odata.nextLink points to {}, not to Graph at {}; not following it",
                        next.origin().ascii_serialization(),
                        self.base.origin().ascii_serialization()
                    ),
                });
            }
            url = next;
        }
        Err(ConnectorError::Permanent {
            reason: format!("entra: the {what} span more than {MAX_PAGES} pages; giving up"),
        })
    }

    /// The identifier `grant` looks the user up by: the `subject_field` value (object id
    /// or userPrincipalName) when the application has one, else the requester's email
    /// (a userPrincipalName or mail); lowercased, as Entra compares them case-insensitively.
    fn do_identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        if let Some(field) = &self.subject_field {
            return subject.field(field).map(|v| v.trim().to_lowercase()).ok_or_else(|| ConnectorError::Permanent {
                reason: format!(
                    "the ticket has no value in field {field} (the application's subject_field), so the \
                     Entra user cannot be identified"
                ),
            });
        }
        subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty()).map(str::to_lowercase).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: "the requester has no email address in the ticket; set the application's subject_field \
                         to a ticket field holding the userPrincipalName"
                    .into(),
            }
        })
    }

    /// The group's user members: `GET /groups/{id}/members?$select=...&$top=999`, every
    /// page; devices, service principals and nested groups are left out.
    async fn do_members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        Self::check_role(target)?;
        let group = self.group(target).await?;
        let url = self.url(&["groups", &group.id, "members"], &[("$select", MEMBER_FIELDS), ("$top", PAGE_SIZE)]);
        let objects = self
            .collection(url, "group members")
            .await?
            .ok_or_else(|| ConnectorError::NotFound { what: format!("Entra group {}", group.id) })?;
        Ok(objects.into_iter().filter(is_user).map(member).collect())
    }

    /// The targets (group object ids or displayNames) among the groups the user is a
    /// direct member of: `GET /users/{id}/memberOf?$select=id,displayName&$top=999`, every
    /// page. An unknown user is in none.
    async fn do_memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let user = match self.user(subject).await {
            Ok(user) => user,
            Err(ConnectorError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let url = self.url(&["users", &user.id, "memberOf"], &[("$select", MEMBER_OF_FIELDS), ("$top", PAGE_SIZE)]);
        let Some(objects) = self.collection(url, "user's groups").await? else { return Ok(Vec::new()) };
        let groups: Vec<&DirectoryObject> =
            objects.iter().filter(|o| o.odata_type.as_deref() == Some("#microsoft.graph.group")).collect();
        Ok(targets
            .iter()
            .filter(|t| {
                let name = t.name.trim();
                if is_guid(name) {
                    groups.iter().any(|g| g.id.eq_ignore_ascii_case(name))
                } else {
                    // As the group lookup: displayName compared case-insensitively.
                    groups.iter().any(|g| g.display_name.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(name)))
                }
            })
            .map(|t| t.name.clone())
            .collect())
    }

    /// `accountEnabled` of the user: false is inactive (sign-in blocked).
    async fn do_user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        match self.user(subject).await {
            Ok(User { account_enabled: Some(false), .. }) => Ok(UserState::Inactive),
            Ok(_) => Ok(UserState::Active),
            Err(ConnectorError::NotFound { .. }) => Ok(UserState::NotFound),
            Err(e) => Err(e),
        }
    }

    async fn do_test(&self) -> Result<(), ConnectorError> {
        let resp = self.call(Method::GET, self.url(&["groups"], &[("$top", "1"), ("$select", "id")]), None).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let f = Failure::read(resp).await;
        if f.status == StatusCode::NOT_FOUND {
            return Err(ConnectorError::NotFound {
                what: format!("Microsoft Graph at {} (check base_url, e.g. {DEFAULT_BASE_URL})", self.base),
            });
        }
        Err(self.fail(&f, None))
    }
}

super::connector_impl!(
    Entra, "entra", grant: do_grant, revoke: do_revoke, test: do_test,
    identity: do_identity, members: do_members, memberships: do_memberships, user_state: do_user_state
);

/// A user among a collection's directoryObjects (Graph tags each with `@odata.type`;
/// one without it counts as a user only if it has a userPrincipalName).
fn is_user(o: &DirectoryObject) -> bool {
    match o.odata_type.as_deref() {
        Some(t) => t == "#microsoft.graph.user",
        None => o.upn.is_some(),
    }
}

/// A group member as read back: object id, userPrincipalName and mail, lowercased.
fn member(o: DirectoryObject) -> Member {
    let mut keys = vec![o.id.to_lowercase()];
    for k in [&o.upn, &o.mail].into_iter().flatten() {
        let k = k.trim().to_lowercase();
        if !k.is_empty() && !keys.contains(&k) {
            keys.push(k);
        }
    }
    Member { id: o.id, keys, display: o.display_name.or(o.upn) }
}

/// Object ids are GUIDs: 8-4-4-4-12 hex digits.
fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The RSA private key and the certificate's SHA-256 thumbprint (base64url) from
/// a PEM holding both (as `openssl req -x509 -newkey ... -nodes` output or
/// `az ad sp create-for-rbac --create-cert` produce).
fn parse_certificate(pem: &str) -> Result<(EncodingKey, String), String> {
    let mut cert_der = None;
    let mut key = None;
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after.find("-----").ok_or("certificate: malformed PEM (unterminated BEGIN line)")?;
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = after.find(&end_marker).ok_or_else(|| format!("certificate: PEM block {label} has no END line"))?;
        let block = &rest[start..start + 11 + end + end_marker.len()];
        let body = &after[label_end + 5..end];
        match label {
            "CERTIFICATE" if cert_der.is_none() => {
                let b64: String = body.split_whitespace().collect();
                cert_der = Some(STANDARD.decode(b64).map_err(|_| "certificate: the CERTIFICATE block is not base64")?);
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" if key.is_none() => {
                key = Some(EncodingKey::from_rsa_pem(block.as_bytes()).map_err(
                    |_| "certificate: the private key is not an RSA key (Entra certificate credentials are RSA)",
                )?);
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err("certificate: the private key is encrypted; export it without a passphrase (the file is \
                            the secret, protect it as such)"
                    .into());
            }
            _ => {}
        }
        rest = &after[end + end_marker.len()..];
    }
    let der = cert_der
        .ok_or("certificate: no BEGIN CERTIFICATE block; the PEM must hold the certificate and its private key")?;
    let key =
        key.ok_or("certificate: no BEGIN PRIVATE KEY block; the PEM must hold the certificate and its private key")?;
    Ok((key, URL_SAFE_NO_PAD.encode(Sha256::digest(&der).as_slice())))
}
