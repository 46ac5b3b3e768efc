//! Bitbucket Cloud (REST 2.0): explicit user permissions on one repository
//! (`repository = "slug"`) or one project (`project_key = "KEY"`) of a workspace.
//!
//! Targets are permission levels, not groups: the rule's `permission`
//! (`read`, `write`, `admin`; projects also `create-repo`) arrives as
//! `Target.name`. Auth is an Atlassian API token with scopes, sent as HTTP
//! Basic `email:api_token` (app passwords are gone; access tokens cannot call
//! the permission endpoints). The user is the requester's Atlassian accountId
//! (Bitbucket's `selected_user_id` accepts it) when that account is a workspace
//! member, else the workspace member with the ticket's email
//! (`GET /workspaces/{ws}/members?q=user.email IN ("...")`).
//!
//! A user holds one explicit permission per repository or project, so grant
//! and revoke compare with the current one (`GET …/permissions-config/users/{id}`):
//! a grant never lowers a higher permission (that is `AlreadyGranted`), and a
//! revoke only deletes the permission it granted (another level is left alone
//! and is `AlreadyAbsent`). Bitbucket sends no `Retry-After` on 429, so a 429
//! without a hint is transient with a [`DEFAULT_BACKOFF`] wait.

use super::atlassian::{checked_base, json, seg};
use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

const PROVIDER: &str = "bitbucket";
/// Bitbucket's API root (the spec's server URL).
pub const API: &str = "https://api.bitbucket.org/2.0";
/// The wait after a 429, which carries no hint (the limit is a rolling hour).
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);

pub struct Bitbucket {
    base: String,
    workspace: String,
    scope: Scope,
    email: SecretString,
    token: SecretString,
    http: Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Repository(String),
    Project(String),
}

impl Scope {
    /// The levels this scope accepts, lowest first.
    fn levels(&self) -> &'static [&'static str] {
        match self {
            Self::Repository(_) => &["read", "write", "admin"],
            Self::Project(_) => &["read", "write", "create-repo", "admin"],
        }
    }

    fn describe(&self, workspace: &str) -> String {
        match self {
            Self::Repository(r) => format!("repository {workspace}/{r}"),
            Self::Project(p) => format!("project {p} of workspace {workspace}"),
        }
    }
}

impl fmt::Debug for Bitbucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitbucket")
            .field("base", &self.base)
            .field("workspace", &self.workspace)
            .field("scope", &self.scope)
            .field("credentials", &"[REDACTED]")
            .finish()
    }
}

#[derive(Deserialize)]
struct Permission {
    permission: Option<String>,
}

#[derive(Deserialize)]
struct Membership {
    user: Option<User>,
}

#[derive(Deserialize)]
struct User {
    account_id: Option<String>,
    uuid: Option<String>,
    display_name: Option<String>,
}

/// One entry of `…/permissions-config/users` (repository or project user permission).
#[derive(Deserialize)]
struct UserPermission {
    permission: Option<String>,
    user: Option<User>,
}

/// A page of `…/permissions-config/users`; `next` is the opaque link to the next page.
#[derive(Deserialize)]
struct PermissionPage {
    #[serde(default)]
    values: Vec<UserPermission>,
    next: Option<String>,
}

/// Most permission pages read (a runaway guard).
const MAX_PAGES: usize = 1000;

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    values: Vec<Membership>,
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] =
    &["workspace", "repository", "project_key", "email_env", "email_file", "api_token_env", "api_token_file"];

impl Bitbucket {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        if common.subject_field.is_some() {
            return Err(format!(
                "application {name:?}: bitbucket finds the requester by Atlassian accountId, then by email; \
                 remove subject_field"
            ));
        }
        let base = checked_base(name, "base_url", common.base_url.as_deref().unwrap_or(API))?;
        let workspace = http::setting(app, "workspace")
            .ok_or_else(|| format!("application {name:?}: set workspace (the workspace slug or {{UUID}})"))?;
        let scope = match (http::setting(app, "repository"), http::setting(app, "project_key")) {
            (Some(r), None) => Scope::Repository(r),
            (None, Some(p)) => Scope::Project(p),
            _ => {
                return Err(format!(
                    "application {name:?}: set exactly one of repository (a repository slug) and project_key \
                     (a project key)"
                ));
            }
        };
        let email = http::secret(app, "email")?.ok_or_else(|| {
            format!("application {name:?}: set email_env or email_file (the Atlassian email of the token's owner)")
        })?;
        let token = http::secret(app, "api_token")?.ok_or_else(|| {
            format!("application {name:?}: set api_token_env or api_token_file (an Atlassian API token with scopes)")
        })?;
        Ok(Self { base, workspace, scope, email, token, http: Http::new(PROVIDER, &common)? })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_to(method, format!("{}{path}", self.base))
    }

    fn request_to(&self, method: Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.http
            .client()
            .request(method, url)
            .basic_auth(self.email.expose_secret(), Some(self.token.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// The repository's or project's path (`/repositories/{ws}/{repo}`, `/workspaces/{ws}/projects/{key}`).
    fn scope_path(&self) -> String {
        match &self.scope {
            Scope::Repository(r) => format!("/repositories/{}/{}", seg(&self.workspace), seg(r)),
            Scope::Project(p) => format!("/workspaces/{}/projects/{}", seg(&self.workspace), seg(p)),
        }
    }

    fn permission_path(&self, user: &str) -> String {
        format!("{}/permissions-config/users/{}", self.scope_path(), seg(user))
    }

    async fn fail(&self, resp: Response) -> ConnectorError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let scope = self.scope.describe(&self.workspace);
        match http::classify(PROVIDER, status, &headers, &body) {
            ConnectorError::Transient { reason, retry_after: _ }
                if status == StatusCode::TOO_MANY_REQUESTS && http::retry_hint(&headers).is_none() =>
            {
                ConnectorError::Transient { reason, retry_after: Some(DEFAULT_BACKOFF) }
            }
            ConnectorError::Unauthorized(reason) if status == StatusCode::UNAUTHORIZED => {
                ConnectorError::Unauthorized(format!(
                    "{reason} (the email or API token is wrong or expired; use an Atlassian API token with scopes, \
                     app passwords no longer work)"
                ))
            }
            ConnectorError::Unauthorized(reason) => ConnectorError::Unauthorized(format!(
                "{reason} (the token's owner must be an admin of {scope}, and the token needs the scopes \
                 read:workspace:bitbucket, {} and write:permission:bitbucket, delete:permission:bitbucket)",
                match self.scope {
                    Scope::Repository(_) => "read:repository:bitbucket, admin:repository:bitbucket",
                    Scope::Project(_) => "read:project:bitbucket, admin:project:bitbucket",
                }
            )),
            ConnectorError::Permanent { reason } if status == StatusCode::PAYMENT_REQUIRED => {
                ConnectorError::Permanent { reason: format!("{reason} (the workspace plan's user limit is reached)") }
            }
            other => other,
        }
    }

    fn level(&self, target: &Target) -> Result<&'static str, ConnectorError> {
        let wanted = target.name.trim();
        self.scope.levels().iter().copied().find(|l| l.eq_ignore_ascii_case(wanted)).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: format!(
                    "bitbucket permission {wanted:?} is not one of {} for {}",
                    self.scope.levels().join(", "),
                    self.scope.describe(&self.workspace)
                ),
            }
        })
    }

    fn rank(&self, level: &str) -> Option<usize> {
        self.scope.levels().iter().position(|l| *l == level)
    }

    /// The workspace member's account id: the ticket's accountId if that account is a member, else by email.
    async fn user(&self, subject: &Subject) -> Result<String, ConnectorError> {
        let account = subject.account_id.trim();
        if !account.is_empty() {
            let path = format!("/workspaces/{}/members/{}", seg(&self.workspace), seg(account));
            let resp = self.http.send(self.request(Method::GET, &path)).await?;
            match resp.status() {
                s if s.is_success() => return Ok(account.to_owned()),
                StatusCode::NOT_FOUND => {}
                _ => return Err(self.fail(resp).await),
            }
        }
        let email = subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
        let Some(email) = email else {
            return Err(if account.is_empty() {
                ConnectorError::Permanent {
                    reason: "the ticket names neither the requester's accountId nor their email".into(),
                }
            } else {
                ConnectorError::NotFound {
                    what: format!(
                        "accountId {account} in workspace {} (and the ticket has no email to look up)",
                        self.workspace
                    ),
                }
            });
        };
        if email.contains(['"', '\\']) {
            return Err(ConnectorError::Permanent { reason: format!("cannot look up the email {email:?}") });
        }
        let url = format!("{}/workspaces/{}/members", self.base, seg(&self.workspace));
        let mut url = reqwest::Url::parse(&url)
            .map_err(|e| ConnectorError::Permanent { reason: format!("bad bitbucket URL {url}: {e}") })?;
        // Escaped as Bitbucket documents it (%20, %22), never with +.
        http::set_query(&mut url, &[("q", &format!("user.email IN (\"{email}\")"))]);
        let resp = self.http.send(self.request_to(Method::GET, url)).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let members: Members = json(resp).await?;
        members.values.into_iter().find_map(|m| m.user.and_then(|u| u.account_id)).ok_or_else(|| {
            ConnectorError::NotFound {
                what: format!(
                    "workspace member with email {email} in workspace {} (invite them to the workspace first)",
                    self.workspace
                ),
            }
        })
    }

    /// The user's explicit permission (`None` when they have none).
    async fn current(&self, user: &str) -> Result<Option<String>, ConnectorError> {
        let resp = self.http.send(self.request(Method::GET, &self.permission_path(user))).await?;
        match resp.status() {
            s if s.is_success() => {
                let p: Permission = json(resp).await?;
                Ok(p.permission.filter(|p| p != "none"))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(resp).await),
        }
    }

    /// Confirms the repository or project exists (a 404 on the permission is ambiguous).
    async fn confirm_scope(&self) -> Result<(), ConnectorError> {
        let resp = self.http.send(self.request(Method::GET, &self.scope_path())).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => {
                Err(ConnectorError::NotFound { what: format!("bitbucket {}", self.scope.describe(&self.workspace)) })
            }
            _ => Err(self.fail(resp).await),
        }
    }

    async fn add(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        let level = self.level(target)?;
        let user = self.user(subject).await?;
        if let Some(held) = self.current(&user).await? {
            // Never lower a permission the user already holds.
            if self.rank(&held).is_some_and(|h| Some(h) >= self.rank(level)) {
                return Ok(GrantOutcome::AlreadyGranted);
            }
        }
        let req =
            self.request(Method::PUT, &self.permission_path(&user)).json(&serde_json::json!({ "permission": level }));
        let resp = self.http.send(req).await?;
        if resp.status().is_success() {
            return Ok(GrantOutcome::Granted);
        }
        Err(self.fail(resp).await)
    }

    async fn remove(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        let level = self.level(target)?;
        let user = self.user(subject).await?;
        match self.current(&user).await? {
            Some(held) if held == level => {}
            Some(_) => return Ok(RevokeOutcome::AlreadyAbsent), // another level, not ours to remove
            None => {
                self.confirm_scope().await?;
                return Ok(RevokeOutcome::AlreadyAbsent);
            }
        }
        let resp = self.http.send(self.request(Method::DELETE, &self.permission_path(&user))).await?;
        match resp.status() {
            s if s.is_success() => Ok(RevokeOutcome::Revoked),
            StatusCode::NOT_FOUND => {
                self.confirm_scope().await?;
                Ok(RevokeOutcome::AlreadyAbsent)
            }
            _ => Err(self.fail(resp).await),
        }
    }

    /// Lists the explicit user permissions, which needs admin on the repository or project.
    async fn check(&self) -> Result<(), ConnectorError> {
        let path = format!("{}/permissions-config/users", self.scope_path());
        let resp = self.http.send(self.request(Method::GET, &path)).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(ConnectorError::NotFound {
                what: format!(
                    "bitbucket {} (check workspace and {})",
                    self.scope.describe(&self.workspace),
                    match self.scope {
                        Scope::Repository(_) => "repository",
                        Scope::Project(_) => "project_key",
                    }
                ),
            }),
            _ => Err(self.fail(resp).await),
        }
    }
}

impl Bitbucket {
    // ---- read-back ----

    /// The Atlassian accountId `grant` uses for the requester (`selected_user_id`).
    /// When the ticket's accountId is not a workspace member, `grant` falls back to the
    /// workspace member with the ticket's email; that account id is only known after a
    /// lookup, so it is not this (pure) identity.
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        let account = subject.account_id.trim();
        if account.is_empty() {
            return Err(ConnectorError::Permanent {
                reason: "the ticket names no requester accountId, which Bitbucket identifies users by".into(),
            });
        }
        Ok(account.to_owned())
    }

    /// Every user whose explicit permission on the repository or project is exactly the
    /// target's level: `GET {scope}/permissions-config/users`, following each page's `next`.
    async fn members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let level = self.level(target)?;
        let first = format!("{}{}/permissions-config/users", self.base, self.scope_path());
        let mut url = self.same_origin(&first)?;
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.http.send(self.request_to(Method::GET, url)).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound {
                    what: format!("bitbucket {}", self.scope.describe(&self.workspace)),
                });
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: PermissionPage = json(resp).await?;
            for p in page.values {
                if p.permission.as_deref() != Some(level) {
                    continue;
                }
                let Some(user) = p.user else { continue };
                let account = user.account_id.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
                let uuid = user.uuid.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
                let Some(id) = account.clone().or_else(|| uuid.clone()) else {
                    return Err(ConnectorError::Permanent {
                        reason: format!(
                            "bitbucket listed a {level} permission on {} without a user id",
                            self.scope.describe(&self.workspace)
                        ),
                    });
                };
                let keys = account.into_iter().chain(uuid).collect();
                out.push(Member { id, keys, display: user.display_name });
            }
            match page.next {
                None => return Ok(out),
                Some(next) => url = self.same_origin(&next)?,
            }
        }
        Err(ConnectorError::Permanent {
            reason: format!(
                "bitbucket permissions-config/users of {}: more than {MAX_PAGES} pages (gave up paging)",
                self.scope.describe(&self.workspace)
            ),
        })
    }

    /// A URL on the configured API host (credentials are never sent elsewhere).
    fn same_origin(&self, link: &str) -> Result<reqwest::Url, ConnectorError> {
        let base = reqwest::Url::parse(&self.base)
            .map_err(|e| ConnectorError::Permanent { reason: format!("bad bitbucket URL {}: {e}", self.base) })?;
        match reqwest::Url::parse(link) {
            Ok(u) if u.origin() == base.origin() => Ok(u),
            _ => Err(ConnectorError::Permanent {
                reason: format!(
                    "bitbucket: the next-page link {link:?} is not on {}",
                    base.origin().ascii_serialization()
                ),
            }),
        }
    }

    /// The targets whose level is exactly the user's explicit permission, from one
    /// `GET {scope}/permissions-config/users/{selected_user_id}`. The user is found as
    /// `grant` finds them; one unknown to the workspace holds nothing.
    async fn memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let user = match self.user(subject).await {
            Ok(u) => u,
            Err(ConnectorError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let Some(held) = self.current(&user).await? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for t in targets {
            if self.level(t)? == held {
                out.push(t.name.clone());
            }
        }
        Ok(out)
    }

    /// Active when the requester is a member of the workspace (found as `grant` finds
    /// them: `GET /workspaces/{workspace}/members/{accountId}`, then by email), else
    /// `NotFound`. Bitbucket shows no deactivated state, so `Inactive` is never returned.
    async fn user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        match self.user(subject).await {
            Ok(_) => Ok(UserState::Active),
            Err(ConnectorError::NotFound { .. }) => Ok(UserState::NotFound),
            Err(e) => Err(e),
        }
    }
}

super::connector_impl!(
    Bitbucket, PROVIDER, grant: add, revoke: remove, test: check,
    identity: identity, members: members, memberships: memberships, user_state: user_state
);

#[cfg(test)]
mod tests;
