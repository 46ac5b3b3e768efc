//! Google Workspace: group membership through the Admin SDK Directory API v1.
//!
//! Authentication is a service account with domain-wide delegation: `gcp_auth`
//! signs the RS256 assertion (`iss` = the service account, `sub` =
//! `admin_subject`, the scopes below, `aud` = the key's `token_uri`) and trades
//! it for an access token, which it caches until shortly before expiry. The
//! token endpoint is the key JSON's `token_uri`; `token_url` overrides it (tests,
//! private endpoints). On a 401 from the API the cached token is dropped once (by
//! rebuilding the credentials, since `gcp_auth` has no invalidate) and the call
//! is repeated.
//!
//! Grant: `users.get` (the subject must be a user of this Workspace: an outside
//! address would otherwise become an external member), then `members.insert`
//! with the role from the rule (MEMBER by default); 409 `duplicate` is
//! "already granted" (a lower existing role is raised with `members.patch`).
//! Revoke: `members.delete`; a 404 is "already absent" only after `groups.get`
//! and `users.get` confirm that both still exist.
//!
//! Read-back: `identity` is the address grant adds (subject_field or email), lowercased.
//! `members`: `members.list` (`maxResults=200`, `pageToken` from `nextPageToken`), USER
//! members holding at least the target's role, keyed by their lowercased email (the
//! primary address: a subject known by an alias does not match). `memberships`:
//! `users.get`, then `groups.list?userKey=` (direct memberships, paged) matched by group
//! email, alias or id (`members.get` for a role above MEMBER). `user_state`: `users.get`;
//! `suspended` or `archived` is inactive.

use super::http::Failure;
use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use gcp_auth::{CustomServiceAccount, TokenProvider};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Production API host.
pub const DEFAULT_BASE_URL: &str = "https://admin.googleapis.com";
/// Google's OAuth token endpoint (the `token_uri` of every service-account key).
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The scopes requested, exactly as they must be allow-listed for domain-wide delegation.
pub const SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/admin.directory.group.member",
    "https://www.googleapis.com/auth/admin.directory.group.readonly",
    "https://www.googleapis.com/auth/admin.directory.user.readonly",
];
/// Error reasons Google uses for rate limits and quota (403 or 429): retry later.
const RATE_LIMIT_REASONS: [&str; 3] = ["userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded"];
const ROLES: [&str; 3] = ["MEMBER", "MANAGER", "OWNER"];
/// Page size of the read-back lists (the Directory API's maximum for members and groups).
const PAGE_SIZE: &str = "200";
/// Pages followed at most (200 a page).
const MAX_PAGES: usize = 2000;

/// A Workspace user as `users.get` shows it.
struct DirUser {
    primary: String,
    suspended: bool,
    archived: bool,
}

/// One page of `members.list`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MembersPage {
    #[serde(default)]
    members: Vec<GroupMember>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GroupMember {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// One page of `groups.list`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupsPage {
    #[serde(default)]
    groups: Vec<GroupEntry>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupEntry {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    non_editable_aliases: Vec<String>,
}

impl GroupEntry {
    /// Whether `key` (a group email, alias or id, as rules name groups) names this group.
    fn is(&self, key: &str) -> bool {
        self.id.as_deref() == Some(key)
            || [&self.email]
                .into_iter()
                .flatten()
                .chain(&self.aliases)
                .chain(&self.non_editable_aliases)
                .any(|e| e.eq_ignore_ascii_case(key))
    }
}

/// The Google Workspace connector.
pub struct Google {
    http: Http,
    base: Url,
    admin_subject: String,
    subject_field: Option<String>,
    /// `customer=` of the test-connection call (`my_customer` unless configured).
    customer: Option<String>,
    domain: Option<String>,
    client_email: String,
    client_id: Option<String>,
    token_uri: String,
    token_timeout: Duration,
    /// The key JSON (with `token_uri` already overridden), kept to rebuild `auth` after a 401.
    key_json: SecretString,
    auth: RwLock<Arc<CustomServiceAccount>>,
}

impl std::fmt::Debug for Google {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Google")
            .field("base", &self.base.as_str())
            .field("admin_subject", &self.admin_subject)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Google's error body: `{"error": {"code", "message", "errors": [{"reason", ...}]}}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
}

// Provider-specific readings of a failed answer (the type is `http::Failure`).
impl Failure {
    fn parsed(&self) -> ErrorDetail {
        serde_json::from_str::<ErrorBody>(&self.body).map(|b| b.error).unwrap_or_default()
    }

    fn has_reason(&self, reason: &str) -> bool {
        self.parsed().errors.iter().any(|e| e.reason == reason)
    }
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] =
    &["domain", "customer_id", "admin_subject", "service_account_key_env", "service_account_key_file", "token_url"];

impl Google {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        let admin_subject = http::setting(app, "admin_subject").ok_or_else(|| {
            format!(
                "application {name:?}: admin_subject is required: the email of the Workspace admin the \
                 service account acts as (domain-wide delegation)"
            )
        })?;
        let key = http::secret(app, "service_account_key")?.ok_or_else(|| {
            format!(
                "application {name:?}: service_account_key_env or service_account_key_file is required: the \
                 service account's JSON key"
            )
        })?;
        let mut parsed: serde_json::Map<String, Value> = serde_json::from_str(key.expose_secret())
            .map_err(|_| "service_account_key: not a JSON object (expected a service-account key JSON)".to_owned())?;
        let text = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(t) = text("type")
            && t != "service_account"
        {
            return Err(format!(
                "service_account_key: the JSON is of type {t:?}; domain-wide delegation needs a service-account \
                 key (type \"service_account\")"
            ));
        }
        let client_email = text("client_email").ok_or_else(|| {
            "service_account_key: the JSON has no client_email (not a service-account key)".to_owned()
        })?;
        if text("private_key").is_none() {
            return Err("service_account_key: the JSON has no private_key (not a service-account key)".into());
        }
        let client_id = text("client_id");
        let token_uri =
            http::setting(app, "token_url").or_else(|| text("token_uri")).unwrap_or_else(|| DEFAULT_TOKEN_URL.into());
        Url::parse(&token_uri).map_err(|e| format!("token_url {token_uri:?} is not a URL: {e}"))?;
        parsed.insert("token_uri".into(), Value::String(token_uri.clone()));
        let key_json = SecretString::from(Value::Object(parsed).to_string());
        let auth = Arc::new(build_auth(&key_json, &admin_subject)?);

        let base_text = common.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let base = Url::parse(&base_text).map_err(|e| format!("base_url {base_text:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() {
            return Err(format!("base_url {base_text:?} cannot be a base URL"));
        }
        Ok(Self {
            http: Http::new("google", &common)?,
            base,
            admin_subject,
            subject_field: common.subject_field.clone(),
            customer: http::setting(app, "customer_id"),
            domain: http::setting(app, "domain"),
            client_email,
            client_id,
            token_uri,
            token_timeout: common.timeout,
            key_json,
            auth: RwLock::new(auth),
        })
    }

    /// `{base}/admin/directory/v1/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in from_config")
            .pop_if_empty()
            .extend(["admin", "directory", "v1"])
            .extend(segments);
        url
    }

    fn dwd_fix(&self) -> String {
        format!(
            "in the Admin console (Security > Access and data control > API controls > Domain-wide delegation) \
             allow-list client id {} with exactly these scopes: {}; and make sure admin_subject {} is an admin \
             allowed to manage groups",
            self.client_id.as_deref().unwrap_or("(the key's client_id)"),
            SCOPES.join(","),
            self.admin_subject
        )
    }

    async fn token(&self) -> Result<SecretString, ConnectorError> {
        let auth = self.auth.read().unwrap_or_else(|p| p.into_inner()).clone();
        match tokio::time::timeout(self.token_timeout, auth.token(&SCOPES)).await {
            Err(_) => Err(ConnectorError::Transient {
                reason: format!("google: the token request to {} timed out", self.token_uri),
                retry_after: None,
            }),
            Ok(Ok(token)) => Ok(SecretString::from(token.as_str().to_owned())),
            Ok(Err(e)) => Err(self.token_error(&e)),
        }
    }

    /// Classifies a `gcp_auth` failure. It does not return Google's status or
    /// body (it logs them at WARN as "token request failed"), so a refused token
    /// request is reported with every usual cause and its fix.
    fn token_error(&self, e: &gcp_auth::Error) -> ConnectorError {
        use gcp_auth::Error as E;
        match e {
            E::Other(what, _) | E::Http(what, _) => ConnectorError::Transient {
                reason: format!("google: token request to {} failed ({what})", self.token_uri),
                retry_after: None,
            },
            E::Json(what, _) => ConnectorError::Transient {
                reason: format!("google: unreadable answer from the token endpoint {} ({what})", self.token_uri),
                retry_after: None,
            },
            // gcp_auth's words for a non-2xx answer from the token endpoint (after its 5 tries).
            E::Str(what) if *what == "token request failed" => ConnectorError::Unauthorized(format!(
                "google: the token endpoint {} refused service account {} acting as {} ({what}; Google's answer is \
                 logged by gcp_auth at WARN). Fix: unauthorized_client means domain-wide delegation is not set up: {}. \
                 invalid_grant means admin_subject is not an existing user, the key was deleted or disabled, or the \
                 clock is off",
                self.token_uri,
                self.client_email,
                self.admin_subject,
                self.dwd_fix()
            )),
            E::Str(what) | E::Io(what, _) => ConnectorError::Permanent { reason: format!("google: {what}") },
            E::NoAuthMethod(..) => ConnectorError::Permanent { reason: format!("google: {e}") },
        }
    }

    /// Drops the cached token, so that the next call fetches a new one.
    fn refresh(&self) -> Result<(), ConnectorError> {
        let fresh = build_auth(&self.key_json, &self.admin_subject)
            .map_err(|reason| ConnectorError::Permanent { reason: format!("google: {reason}") })?;
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Sends an authenticated request; a 401 refreshes the token once and repeats it.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Response, ConnectorError> {
        let url = self.url(segments);
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut req = self.http.client().request(method.clone(), url.clone()).bearer_auth(token.expose_secret());
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                tracing::info!(provider = "google", "401 from the Directory API; fetching a new token once");
                self.refresh()?;
                continue;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The classified error for a failed answer.
    fn error(&self, f: &Failure) -> ConnectorError {
        let detail = f.parsed();
        let rate_limited = f.status == StatusCode::TOO_MANY_REQUESTS
            || (f.status == StatusCode::FORBIDDEN
                && detail.errors.iter().any(|e| RATE_LIMIT_REASONS.contains(&e.reason.as_str())));
        if rate_limited {
            let reasons: Vec<&str> = detail.errors.iter().map(|e| e.reason.as_str()).collect();
            return ConnectorError::Transient {
                reason: format!("google: rate limited ({} {})", f.status.as_u16(), reasons.join(",")),
                retry_after: http::retry_hint(&f.headers),
            };
        }
        match f.status {
            StatusCode::UNAUTHORIZED => ConnectorError::Unauthorized(format!(
                "google answered 401 twice (a fresh token was refused): {}. Fix: {}",
                http::snippet(&f.body),
                self.dwd_fix()
            )),
            StatusCode::FORBIDDEN => ConnectorError::Unauthorized(format!(
                "google answered 403: {}. Fix: {}",
                if detail.message.is_empty() { http::snippet(&f.body) } else { detail.message },
                self.dwd_fix()
            )),
            _ => http::classify("google", f.status, &f.headers, &f.body),
        }
    }

    fn subject_email<'a>(&self, subject: &'a Subject) -> Result<&'a str, ConnectorError> {
        let found = match &self.subject_field {
            Some(field) => subject.field(field),
            None => subject.email.as_deref(),
        };
        match found.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) if e.contains('@') => Ok(e),
            Some(e) => Err(ConnectorError::Permanent {
                reason: format!("google: {e:?} is not an email address, so it cannot name a Workspace user"),
            }),
            None => Err(ConnectorError::Permanent {
                reason: match &self.subject_field {
                    Some(field) => format!(
                        "google: the ticket has no value in field {field} (the application's subject_field), \
                         which must hold the requester's Google Workspace email"
                    ),
                    None => format!(
                        "google: the requester (account {}) has no email address in the event; JSM hides emails \
                         the integration user may not see: grant it that visibility, or set subject_field to a \
                         ticket field holding the Google Workspace email",
                        subject.account_id
                    ),
                },
            }),
        }
    }

    /// `users.get`: the user's primary email and whether it is suspended or archived; `None` if it does not exist.
    async fn user(&self, key: &str) -> Result<Option<DirUser>, ConnectorError> {
        let resp = self.send(Method::GET, &["users", key], &[], None).await?;
        match resp.status() {
            s if s.is_success() => {
                let v: Value = resp.json().await.map_err(|e| ConnectorError::Transient {
                    reason: format!("google: unreadable users.get answer: {e}"),
                    retry_after: None,
                })?;
                let primary = v.get("primaryEmail").and_then(Value::as_str).unwrap_or(key).to_owned();
                let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
                Ok(Some(DirUser { primary, suspended: flag("suspended"), archived: flag("archived") }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => match self.error(&Failure::read(resp).await) {
                // Google also answers 403 for an address in a domain this Workspace does not own.
                ConnectorError::Unauthorized(m) => Err(ConnectorError::Unauthorized(format!(
                    "{m}. If {key} is not an address of this Workspace's domains, the requester has no account here"
                ))),
                e => Err(e),
            },
        }
    }

    /// `groups.get`: whether the group exists.
    async fn group_exists(&self, group: &str) -> Result<bool, ConnectorError> {
        let resp = self.send(Method::GET, &["groups", group], &[], None).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(&Failure::read(resp).await)),
        }
    }

    /// After a duplicate insert: raises the member's role if the rule asks for more.
    async fn ensure_role(&self, group: &str, member: &str, wanted: &str) -> Result<GrantOutcome, ConnectorError> {
        if wanted == "MEMBER" {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let resp = self.send(Method::GET, &["groups", group, "members", member], &[], None).await?;
        if !resp.status().is_success() {
            return Err(self.error(&Failure::read(resp).await));
        }
        let v: Value = resp.json().await.map_err(|e| ConnectorError::Transient {
            reason: format!("google: unreadable members.get answer: {e}"),
            retry_after: None,
        })?;
        let current = v.get("role").and_then(Value::as_str).unwrap_or("MEMBER").to_ascii_uppercase();
        if rank(&current) >= rank(wanted) {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let resp = self
            .send(Method::PATCH, &["groups", group, "members", member], &[], Some(&json!({ "role": wanted })))
            .await?;
        if resp.status().is_success() { Ok(GrantOutcome::Granted) } else { Err(self.error(&Failure::read(resp).await)) }
    }

    async fn do_grant(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        let email = self.subject_email(subject)?;
        let group = group_key(target)?;
        let role = role(target)?;
        let Some(DirUser { primary, suspended, .. }) = self.user(email).await? else {
            return Err(ConnectorError::NotFound {
                what: format!("google: user {email} is not a user of this Workspace"),
            });
        };
        if suspended {
            return Err(ConnectorError::Permanent {
                reason: format!("google: user {primary} is suspended; unsuspend the account before granting access"),
            });
        }
        let body = json!({ "email": primary, "role": role });
        let resp = self.send(Method::POST, &["groups", group, "members"], &[], Some(&body)).await?;
        if resp.status().is_success() {
            return Ok(GrantOutcome::Granted);
        }
        let f = Failure::read(resp).await;
        match f.status {
            StatusCode::CONFLICT if f.has_reason("duplicate") || f.body.contains("already exists") => {
                self.ensure_role(group, &primary, role).await
            }
            StatusCode::NOT_FOUND => Err(ConnectorError::NotFound { what: format!("google: group {group}") }),
            _ => Err(self.error(&f)),
        }
    }

    async fn do_revoke(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        let email = self.subject_email(subject)?;
        let group = group_key(target)?;
        let resp = self.send(Method::DELETE, &["groups", group, "members", email], &[], None).await?;
        if resp.status().is_success() {
            return Ok(RevokeOutcome::Revoked);
        }
        let f = Failure::read(resp).await;
        if f.status != StatusCode::NOT_FOUND {
            return Err(self.error(&f));
        }
        // "Not a member" only counts once the group and the user are known to exist.
        if !self.group_exists(group).await? {
            return Err(ConnectorError::NotFound { what: format!("google: group {group}") });
        }
        if self.user(email).await?.is_none() {
            return Err(ConnectorError::NotFound {
                what: format!("google: user {email} is not a user of this Workspace"),
            });
        }
        Ok(RevokeOutcome::AlreadyAbsent)
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &str) -> Result<T, ConnectorError> {
        resp.json().await.map_err(|e| ConnectorError::Transient {
            reason: format!("google: unreadable {what} answer: {e}"),
            retry_after: None,
        })
    }

    /// The address `grant` adds: the `subject_field` value or the requester's email,
    /// lowercased (Workspace addresses are case-insensitive).
    fn do_identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        self.subject_email(subject).map(str::to_lowercase)
    }

    /// `members.list` (`GET groups/{groupKey}/members?maxResults=200`, then `pageToken` =
    /// the answer's `nextPageToken`): the group's user members holding at least the
    /// target's role, keyed by their (lowercased) email.
    async fn do_members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let group = group_key(target)?;
        let wanted = role(target)?;
        let mut token: Option<String> = None;
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut query = vec![("maxResults", PAGE_SIZE)];
            if let Some(t) = &token {
                query.push(("pageToken", t));
            }
            let resp = self.send(Method::GET, &["groups", group, "members"], &query, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound { what: format!("google: group {group}") });
            }
            if !resp.status().is_success() {
                return Err(self.error(&Failure::read(resp).await));
            }
            let page: MembersPage = Self::json(resp, "members.list").await?;
            for m in page.members {
                // Nested groups and the whole-customer member are not users.
                if m.kind.as_deref().is_some_and(|k| k != "USER") {
                    continue;
                }
                let role = m.role.as_deref().unwrap_or("MEMBER").to_ascii_uppercase();
                let Some(email) = m.email.map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty()) else { continue };
                if rank(&role) < rank(wanted) {
                    continue;
                }
                out.push(Member {
                    id: m.id.unwrap_or_else(|| email.clone()),
                    keys: vec![email.clone()],
                    display: Some(email),
                });
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(ConnectorError::Permanent {
            reason: format!("google: the members of {group} span more than {MAX_PAGES} pages; giving up the read"),
        })
    }

    /// The targets among the user's groups: `users.get` (an unknown user is in none), then
    /// `groups.list?userKey=` (direct memberships, every page), matched by group email, alias
    /// or id; a target with a role above MEMBER is also checked with `members.get`.
    async fn do_memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let email = self.subject_email(subject)?;
        let Some(user) = self.user(email).await? else { return Ok(Vec::new()) };
        let mut groups: Vec<GroupEntry> = Vec::new();
        let mut token: Option<String> = None;
        for page_no in 0.. {
            if page_no == MAX_PAGES {
                return Err(ConnectorError::Permanent {
                    reason: format!(
                        "google: the groups of {} span more than {MAX_PAGES} pages; giving up",
                        user.primary
                    ),
                });
            }
            let mut query = vec![("userKey", user.primary.as_str()), ("maxResults", PAGE_SIZE)];
            if let Some(t) = &token {
                query.push(("pageToken", t));
            }
            let resp = self.send(Method::GET, &["groups"], &query, None).await?;
            if !resp.status().is_success() {
                return Err(self.error(&Failure::read(resp).await));
            }
            let page: GroupsPage = Self::json(resp, "groups.list").await?;
            groups.extend(page.groups);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let mut held = Vec::new();
        for t in targets {
            let Ok(key) = group_key(t) else { continue };
            if !groups.iter().any(|g| g.is(key)) {
                continue;
            }
            let wanted = role(t)?;
            if wanted != "MEMBER" && rank(&self.member_role(key, &user.primary).await?) < rank(wanted) {
                continue;
            }
            held.push(t.name.clone());
        }
        Ok(held)
    }

    /// `members.get`: the member's role (MEMBER if the answer names none).
    async fn member_role(&self, group: &str, member: &str) -> Result<String, ConnectorError> {
        let resp = self.send(Method::GET, &["groups", group, "members", member], &[], None).await?;
        if !resp.status().is_success() {
            return Err(self.error(&Failure::read(resp).await));
        }
        let v: Value = Self::json(resp, "members.get").await?;
        Ok(v.get("role").and_then(Value::as_str).unwrap_or("MEMBER").to_ascii_uppercase())
    }

    /// `users.get`: suspended or archived users are inactive.
    async fn do_user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        let email = self.subject_email(subject)?;
        Ok(match self.user(email).await? {
            None => UserState::NotFound,
            Some(u) if u.suspended || u.archived => UserState::Inactive,
            Some(_) => UserState::Active,
        })
    }

    async fn do_test(&self) -> Result<(), ConnectorError> {
        let mut query = vec![("maxResults", "1")];
        match (&self.customer, &self.domain) {
            (Some(c), _) => query.push(("customer", c)),
            (None, Some(d)) => query.push(("domain", d)),
            (None, None) => query.push(("customer", "my_customer")),
        }
        let resp = self.send(Method::GET, &["groups"], &query, None).await?;
        if resp.status().is_success() { Ok(()) } else { Err(self.error(&Failure::read(resp).await)) }
    }
}

fn build_auth(key_json: &SecretString, admin: &str) -> Result<CustomServiceAccount, String> {
    CustomServiceAccount::from_json(key_json.expose_secret()).map(|sa| sa.with_subject(admin.to_owned())).map_err(|e| {
        // Only the library's fixed description: the source error could quote the key.
        let what = match &e {
            gcp_auth::Error::Other(w, _)
            | gcp_auth::Error::Http(w, _)
            | gcp_auth::Error::Io(w, _)
            | gcp_auth::Error::Json(w, _)
            | gcp_auth::Error::Str(w) => *w,
            gcp_auth::Error::NoAuthMethod(..) => "no authentication method",
        };
        format!("service_account_key: unusable service-account key ({what})")
    })
}

fn group_key(target: &Target) -> Result<&str, ConnectorError> {
    let g = target.name.trim();
    if g.is_empty() {
        return Err(ConnectorError::Permanent { reason: "google: the rule names an empty group".into() });
    }
    Ok(g)
}

fn role(target: &Target) -> Result<&'static str, ConnectorError> {
    match target.role.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok("MEMBER"),
        Some(r) => ROLES.iter().copied().find(|k| k.eq_ignore_ascii_case(r)).ok_or_else(|| ConnectorError::Permanent {
            reason: format!("google: role {r:?} is not a Google group role; use MEMBER, MANAGER or OWNER"),
        }),
    }
}

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap_or(0)
}

super::connector_impl!(
    Google, "google", grant: do_grant, revoke: do_revoke, test: do_test,
    identity: do_identity, members: do_members, memberships: do_memberships, user_state: do_user_state
);
