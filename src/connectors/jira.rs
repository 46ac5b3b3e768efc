//! Jira Cloud (platform REST v3): site group membership.
//!
//! Auth is HTTP Basic `email:api_token` against the site (`base_url =
//! "https://your-site.atlassian.net"`), or, for scoped API tokens, against
//! `https://api.atlassian.com/ex/jira/{cloud_id}` (set `cloud_id`). The
//! subject is the requester's Atlassian accountId from the ticket (JSM and
//! Jira share the Atlassian account), so no email lookup is needed. A target
//! is a group name, or a group id (a UUID).
//!
//! Jira does not document what adding a member twice or removing a non-member
//! answers, so both operations check membership first
//! (`GET /rest/api/3/user/groups`) and re-check on a 400/404 before failing.

use super::atlassian::{account_id, checked_base, json, looks_like_uuid};
use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;

const PROVIDER: &str = "jira";
/// The API gateway scoped tokens must use (`/ex/jira/{cloudId}`).
pub const API_GATEWAY: &str = "https://api.atlassian.com";

pub struct Jira {
    base: String,
    email: SecretString,
    token: SecretString,
    http: Http,
}

impl fmt::Debug for Jira {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jira").field("base", &self.base).field("credentials", &"[REDACTED]").finish()
    }
}

/// A resolved group: Jira answers with both its id and its name.
#[derive(Debug, Clone, Deserialize)]
struct Group {
    #[serde(rename = "groupId")]
    group_id: Option<String>,
    name: String,
}

impl Group {
    /// The query parameter naming this group (`groupId` when known, else `groupname`).
    fn query(&self) -> (&'static str, &str) {
        match &self.group_id {
            Some(id) => ("groupId", id.as_str()),
            None => ("groupname", self.name.as_str()),
        }
    }

    fn is(&self, other: &Group) -> bool {
        match (&self.group_id, &other.group_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.name.eq_ignore_ascii_case(&other.name),
        }
    }
}

#[derive(Deserialize)]
struct GroupPage {
    #[serde(default)]
    values: Vec<Group>,
}

/// A user as `group/member` and `user` answer (`UserDetails` / `User`).
#[derive(Deserialize)]
struct UserDetails {
    #[serde(rename = "accountId")]
    account_id: Option<String>,
    #[serde(rename = "emailAddress")]
    email: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    active: Option<bool>,
}

/// One page of `GET /rest/api/3/group/member` (`PageBeanUserDetails`).
#[derive(Deserialize)]
struct MemberPage {
    #[serde(default)]
    values: Vec<UserDetails>,
    #[serde(rename = "isLast")]
    is_last: Option<bool>,
}

/// Page size asked of `group/member` (Jira's maximum is 50).
const MEMBER_PAGE: usize = 50;
/// Most `group/member` pages read (a runaway guard: 50,000 members).
const MAX_MEMBER_PAGES: usize = 1000;

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] = &["email_env", "email_file", "api_token_env", "api_token_file", "cloud_id"];

impl Jira {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        if common.subject_field.is_some() {
            return Err(format!(
                "application {name:?}: jira identifies the requester by the Atlassian accountId on the ticket; \
                 remove subject_field"
            ));
        }
        let base = match http::setting(app, "cloud_id") {
            Some(cloud_id) => {
                let gateway = common.base_url.as_deref().unwrap_or(API_GATEWAY).trim_end_matches('/');
                format!("{gateway}/ex/jira/{cloud_id}")
            }
            None => common.base_url.clone().ok_or_else(|| {
                format!(
                    "application {name:?}: set base_url to the Jira site (https://your-site.atlassian.net), \
                     or cloud_id when the API token is a scoped token"
                )
            })?,
        };
        let base = checked_base(name, "base_url", &base)?;
        let email = http::secret(app, "email")?.ok_or_else(|| {
            format!("application {name:?}: set email_env or email_file (the Atlassian account email)")
        })?;
        let token = http::secret(app, "api_token")?.ok_or_else(|| {
            format!("application {name:?}: set api_token_env or api_token_file (an Atlassian API token)")
        })?;
        Ok(Self { base, email, token, http: Http::new(PROVIDER, &common)? })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .client()
            .request(method, format!("{}{path}", self.base))
            .basic_auth(self.email.expose_secret(), Some(self.token.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// The classified error for a failed answer, with the fix for credential problems.
    async fn fail(&self, resp: Response) -> ConnectorError {
        let status = resp.status();
        match self.http.error_for(resp).await {
            ConnectorError::Unauthorized(reason) if status == StatusCode::UNAUTHORIZED => {
                ConnectorError::Unauthorized(format!(
                    "{reason} (the email or API token is wrong or expired; a scoped API token must be used with \
                     cloud_id, through api.atlassian.com)"
                ))
            }
            ConnectorError::Unauthorized(reason) => ConnectorError::Unauthorized(format!(
                "{reason} (the account lacks a permission: group changes need site administration, lookups need \
                 Browse users and groups; a scoped token needs read:group:jira, read:user:jira and write:group:jira)"
            )),
            other => other,
        }
    }

    async fn group(&self, target: &Target) -> Result<Group, ConnectorError> {
        let wanted = target.name.trim();
        if wanted.is_empty() {
            return Err(ConnectorError::Permanent { reason: "the rule names an empty jira group".into() });
        }
        let by = if looks_like_uuid(wanted) { "groupId" } else { "groupName" };
        let resp = self.http.send(self.request(Method::GET, "/rest/api/3/group/bulk").query(&[(by, wanted)])).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let page: GroupPage = json(resp).await?;
        page.values
            .into_iter()
            .find(|g| g.group_id.as_deref() == Some(wanted) || g.name.eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ConnectorError::NotFound { what: format!("jira group {wanted:?}") })
    }

    /// Whether the account is in the group; `NotFound` when the account does not exist.
    async fn is_member(&self, account_id: &str, group: &Group) -> Result<bool, ConnectorError> {
        let resp = self
            .http
            .send(self.request(Method::GET, "/rest/api/3/user/groups").query(&[("accountId", account_id)]))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ConnectorError::NotFound { what: format!("jira user with accountId {account_id}") });
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let groups: Vec<Group> = json(resp).await?;
        Ok(groups.iter().any(|g| g.is(group)))
    }

    async fn add(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        let account = account_id(subject)?;
        let group = self.group(target).await?;
        if self.is_member(account, &group).await? {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let req = self
            .request(Method::POST, "/rest/api/3/group/user")
            .query(&[group.query()])
            .json(&serde_json::json!({ "accountId": account }));
        let resp = self.http.send(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(GrantOutcome::Granted);
        }
        let err = self.fail(resp).await;
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND) && self.is_member(account, &group).await? {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        Err(err)
    }

    async fn remove(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        let account = account_id(subject)?;
        let group = self.group(target).await?;
        if !self.is_member(account, &group).await? {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        let req =
            self.request(Method::DELETE, "/rest/api/3/group/user").query(&[group.query(), ("accountId", account)]);
        let resp = self.http.send(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(RevokeOutcome::Revoked);
        }
        let err = self.fail(resp).await;
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND) && !self.is_member(account, &group).await?
        {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        Err(err)
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        let resp = self.http.send(self.request(Method::GET, "/rest/api/3/myself")).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        // Resolving groups needs Browse users and groups; check it too.
        let resp =
            self.http.send(self.request(Method::GET, "/rest/api/3/group/bulk").query(&[("maxResults", "1")])).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Ok(())
    }

    // ---- read-back ----

    /// The accountId `grant` adds (Atlassian account ids are compared exactly).
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        account_id(subject).map(str::to_owned)
    }

    /// Every member of the group (active and inactive accounts), through
    /// `GET /rest/api/3/group/member`, paged with `startAt`/`maxResults` until `isLast`.
    async fn members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let group = self.group(target).await?;
        let max = MEMBER_PAGE.to_string();
        let mut out = Vec::new();
        let mut start = 0usize;
        for _ in 0..MAX_MEMBER_PAGES {
            let start_at = start.to_string();
            let req = self.request(Method::GET, "/rest/api/3/group/member").query(&[
                group.query(),
                ("includeInactiveUsers", "true"),
                ("startAt", &start_at),
                ("maxResults", &max),
            ]);
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound { what: format!("jira group {:?}", group.name) });
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: MemberPage = json(resp).await?;
            let n = page.values.len();
            out.extend(page.values.into_iter().filter_map(member));
            // `isLast` is the documented end; an empty page also ends (no progress possible).
            if page.is_last.unwrap_or(n == 0) || n == 0 {
                return Ok(out);
            }
            start += n;
        }
        Err(ConnectorError::Permanent {
            reason: format!(
                "jira group/member: group {:?} has more than {} members (gave up paging)",
                group.name,
                MAX_MEMBER_PAGES * MEMBER_PAGE
            ),
        })
    }

    /// The names of `targets` the account is in, from one `GET /rest/api/3/user/groups`.
    async fn memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let account = account_id(subject)?;
        let resp = self
            .http
            .send(self.request(Method::GET, "/rest/api/3/user/groups").query(&[("accountId", account)]))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new()); // an unknown account holds nothing
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let groups: Vec<Group> = json(resp).await?;
        Ok(targets
            .iter()
            .filter(|t| {
                let wanted = t.name.trim();
                groups.iter().any(|g| g.group_id.as_deref() == Some(wanted) || g.name.eq_ignore_ascii_case(wanted))
            })
            .map(|t| t.name.clone())
            .collect())
    }

    /// `GET /rest/api/3/user?accountId=`: `active` decides; a 404 is `NotFound`.
    async fn user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        let account = account_id(subject)?;
        let resp =
            self.http.send(self.request(Method::GET, "/rest/api/3/user").query(&[("accountId", account)])).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(UserState::NotFound);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let user: UserDetails = json(resp).await?;
        Ok(match user.active {
            Some(true) => UserState::Active,
            Some(false) => UserState::Inactive,
            None => {
                return Err(ConnectorError::Permanent {
                    reason: format!("jira GET /rest/api/3/user answered for accountId {account} without \"active\""),
                });
            }
        })
    }
}

/// A `group/member` entry as a [`Member`]: keyed by accountId (and the email when
/// the user's privacy settings show it, lowercased). Entries without an accountId are skipped.
fn member(u: UserDetails) -> Option<Member> {
    let id = u.account_id.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty())?;
    let mut keys = vec![id.clone()];
    if let Some(e) = u.email.map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()) {
        keys.push(e);
    }
    Some(Member { id, keys, display: u.display_name })
}

super::connector_impl!(
    Jira, PROVIDER, grant: add, revoke: remove, test: check,
    identity: identity, members: members, memberships: memberships, user_state: user_state
);

#[cfg(test)]
mod tests;
