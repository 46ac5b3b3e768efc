//! Confluence Cloud group membership, through one of two APIs chosen per
//! application with `api`:
//!
//! - `api = "site"` (default): the Confluence REST v1 group API
//!   (`/wiki/rest/api/group/userByGroupId`) with HTTP Basic
//!   `admin_email:api_token` against `site_url` (`https://your-site.atlassian.net`,
//!   or `https://api.atlassian.com/ex/confluence/{cloudId}` for a scoped token).
//!   Users are the requester's Atlassian accountId (Confluence cannot search by
//!   email). Adding twice is undocumented, so membership is checked first
//!   (`/wiki/rest/api/user/memberof`); removing a non-member answers 204.
//! - `api = "admin"`: the Atlassian organization Admin API v2 (Bearer
//!   `admin_api_key`) against `https://api.atlassian.com` (`admin_base_url`
//!   overrides), for directory groups of organization `org_id`. The directory is
//!   `directory_id`, or, when unset, the organization's only directory (looked up
//!   once; several directories make `directory_id` required). Users are found in
//!   the directory by accountId, then by the ticket's email. Groups synced from
//!   an identity provider are refused. This API has no vendor spec offline: its
//!   contract is `providers.md` §6.
//!
//! A target is a group name, or a group id (a UUID).

use super::atlassian::{account_id, checked_base, json, looks_like_uuid, seg};
use super::http::{self, Common, Http};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::fmt;
use tokio::sync::OnceCell;

const PROVIDER: &str = "confluence";
/// Where the organization Admin API lives.
pub const ADMIN_API: &str = "https://api.atlassian.com";
/// Page size for `user/memberof`.
const MEMBEROF_LIMIT: usize = 200;
/// Most `user/memberof` pages read (a runaway guard).
const MAX_PAGES: usize = 50;

pub struct Confluence {
    api: Api,
    http: Http,
}

enum Api {
    Site(Site),
    Admin(Admin),
}

struct Site {
    base: String,
    email: SecretString,
    token: SecretString,
}

struct Admin {
    base: String,
    key: SecretString,
    org_id: String,
    /// The configured `directory_id`, if any.
    configured_directory: Option<String>,
    /// The directory in use (configured, or looked up once).
    directory: OnceCell<String>,
}

impl fmt::Debug for Confluence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Confluence");
        match &self.api {
            Api::Site(s) => d.field("api", &"site").field("site_url", &s.base),
            Api::Admin(a) => d
                .field("api", &"admin")
                .field("admin_base_url", &a.base)
                .field("org_id", &a.org_id)
                .field("directory_id", &a.configured_directory),
        };
        d.field("credentials", &"[REDACTED]").finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct SiteGroup {
    id: Option<String>,
    name: String,
}

#[derive(Deserialize)]
struct SiteGroupList {
    #[serde(default)]
    results: Vec<SiteGroup>,
}

#[derive(Debug, Clone, Deserialize)]
struct AdminGroup {
    id: String,
    name: Option<String>,
    #[serde(rename = "externalSynced", default)]
    external_synced: bool,
    #[serde(rename = "managedBy")]
    managed_by: Option<String>,
}

#[derive(Deserialize)]
struct AdminUser {
    #[serde(rename = "accountId")]
    account_id: String,
    email: Option<String>,
    name: Option<String>,
    nickname: Option<String>,
    #[serde(rename = "accountStatus")]
    account_status: Option<String>,
    #[serde(rename = "membershipStatus")]
    membership_status: Option<String>,
}

/// A user as the site API lists it (`User`).
#[derive(Deserialize)]
struct SiteUser {
    #[serde(rename = "accountId")]
    account_id: Option<String>,
    email: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    #[serde(rename = "publicName")]
    public_name: Option<String>,
}

/// A page of `membersByGroupId` / `user/memberof`: more follow while `_links.next` is set.
#[derive(Deserialize)]
struct SitePage<T> {
    #[serde(default = "Vec::new")]
    results: Vec<T>,
    #[serde(rename = "_links", default)]
    links: serde_json::Map<String, serde_json::Value>,
}

/// An Admin API page with its cursor (`links.next`).
#[derive(Deserialize)]
struct CursorPage<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    links: Option<CursorLinks>,
}

#[derive(Deserialize)]
struct CursorLinks {
    next: Option<String>,
}

/// Page size of read-back lists (site API `limit`, Admin API `limit`).
const READ_LIMIT: usize = 100;

#[derive(Deserialize)]
struct Directory {
    #[serde(rename = "directoryId")]
    directory_id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

/// A failed answer: its status, its classification, and whether Confluence
/// named the licence-pool failure (500 `HystrixRuntimeException`, CONFCLOUD-84635).
struct Failure {
    status: StatusCode,
    error: ConnectorError,
    licence_pool: bool,
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] = &[
    "site_url",
    "admin_email_env",
    "admin_email_file",
    "api_token_env",
    "api_token_file",
    "admin_api_key_env",
    "admin_api_key_file",
    "org_id",
    "directory_id",
    "api",
    "admin_base_url",
];

impl Confluence {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        if common.subject_field.is_some() {
            return Err(format!(
                "application {name:?}: confluence identifies the requester by the Atlassian accountId on the \
                 ticket (and, with api = \"admin\", the ticket's email); remove subject_field"
            ));
        }
        let api = match http::setting(app, "api").as_deref().unwrap_or("site") {
            "site" => {
                let url = http::setting(app, "site_url").or(common.base_url.clone()).ok_or_else(|| {
                    format!(
                        "application {name:?}: set site_url to the Confluence site (https://your-site.atlassian.net)"
                    )
                })?;
                let base = checked_base(name, "site_url", &url)?;
                let base = base.strip_suffix("/wiki").unwrap_or(&base).to_owned();
                let email = http::secret(app, "admin_email")?.ok_or_else(|| {
                    format!("application {name:?}: set admin_email_env or admin_email_file (the site admin's email)")
                })?;
                let token = http::secret(app, "api_token")?.ok_or_else(|| {
                    format!("application {name:?}: set api_token_env or api_token_file (the site admin's API token)")
                })?;
                Api::Site(Site { base, email, token })
            }
            "admin" => {
                let url = http::setting(app, "admin_base_url")
                    .or(common.base_url.clone())
                    .unwrap_or_else(|| ADMIN_API.to_owned());
                let base = checked_base(name, "admin_base_url", &url)?;
                let key = http::secret(app, "admin_api_key")?.ok_or_else(|| {
                    format!(
                        "application {name:?}: api = \"admin\" needs admin_api_key_env or admin_api_key_file \
                         (an organization Admin API key)"
                    )
                })?;
                let org_id = http::setting(app, "org_id").ok_or_else(|| {
                    format!(
                        "application {name:?}: api = \"admin\" needs org_id (admin.atlassian.com › Settings › API keys)"
                    )
                })?;
                let configured_directory = http::setting(app, "directory_id");
                let directory = match &configured_directory {
                    Some(d) => OnceCell::from(d.clone()),
                    None => OnceCell::new(),
                };
                Api::Admin(Admin { base, key, org_id, configured_directory, directory })
            }
            other => return Err(format!("application {name:?}: api must be \"site\" or \"admin\", not {other:?}")),
        };
        Ok(Self { api, http: Http::new(PROVIDER, &common)? })
    }

    async fn failure(&self, resp: Response) -> Failure {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let licence_pool = status == StatusCode::INTERNAL_SERVER_ERROR && body.contains("HystrixRuntimeException");
        let error = match http::classify(PROVIDER, status, &headers, &body) {
            ConnectorError::Unauthorized(reason) => {
                ConnectorError::Unauthorized(format!("{reason} ({})", self.fix(status)))
            }
            ConnectorError::Permanent { reason } if status == StatusCode::CONFLICT => ConnectorError::Permanent {
                reason: format!("{reason} (a product the group grants has reached its user limit)"),
            },
            other => other,
        };
        Failure { status, error, licence_pool }
    }

    async fn fail(&self, resp: Response) -> ConnectorError {
        self.failure(resp).await.error
    }

    /// What to do about a 401/403.
    fn fix(&self, status: StatusCode) -> String {
        match (&self.api, status) {
            (Api::Site(_), StatusCode::UNAUTHORIZED) => {
                "the admin email or API token is wrong or expired; a scoped API token needs site_url = \
                 https://api.atlassian.com/ex/confluence/{cloudId}"
                    .into()
            }
            (Api::Site(_), _) => "the account must be a site admin (group changes need site administration)".into(),
            (Api::Admin(_), StatusCode::UNAUTHORIZED) => {
                "the Admin API key is wrong, revoked or expired; create one at admin.atlassian.com › Settings › \
                 API keys (an API key, not an API token)"
                    .into()
            }
            (Api::Admin(a), _) => format!(
                "the Admin API key has no access to organization {} or lacks a scope (it needs read and write \
                 access to directories, users and groups)",
                a.org_id
            ),
        }
    }

    async fn add(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        match &self.api {
            Api::Site(site) => self.site_add(site, subject, target).await,
            Api::Admin(admin) => self.admin_add(admin, subject, target).await,
        }
    }

    async fn remove(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        match &self.api {
            Api::Site(site) => self.site_remove(site, subject, target).await,
            Api::Admin(admin) => self.admin_remove(admin, subject, target).await,
        }
    }

    async fn check(&self) -> Result<(), ConnectorError> {
        match &self.api {
            Api::Site(site) => {
                let resp = self.http.send(site.request(&self.http, Method::GET, "/wiki/rest/api/user/current")).await?;
                if !resp.status().is_success() {
                    return Err(self.fail(resp).await);
                }
                #[derive(Deserialize)]
                struct Current {
                    #[serde(rename = "type")]
                    kind: Option<String>,
                }
                let me: Current = json(resp).await?;
                if me.kind.as_deref() == Some("anonymous") {
                    return Err(ConnectorError::Unauthorized(format!(
                        "confluence treated the request as anonymous ({})",
                        self.fix(StatusCode::UNAUTHORIZED)
                    )));
                }
                Ok(())
            }
            Api::Admin(admin) => {
                let directories = self.directories(admin).await?;
                match &admin.configured_directory {
                    Some(d) if !directories.iter().any(|x| &x.directory_id == d) => Err(ConnectorError::Permanent {
                        reason: format!(
                            "directory_id {d} is not a directory of organization {} (its directories: {})",
                            admin.org_id,
                            describe(&directories)
                        ),
                    }),
                    Some(_) => Ok(()),
                    None => {
                        let _ = admin.directory.set(only_directory(admin, directories)?);
                        Ok(())
                    }
                }
            }
        }
    }

    // ---- site API (Confluence REST v1) ----

    async fn site_group(&self, site: &Site, target: &Target) -> Result<SiteGroup, ConnectorError> {
        let wanted = target.name.trim();
        if wanted.is_empty() {
            return Err(ConnectorError::Permanent { reason: "the rule names an empty confluence group".into() });
        }
        let req = if looks_like_uuid(wanted) {
            site.request(&self.http, Method::GET, "/wiki/rest/api/group/by-id").query(&[("id", wanted)])
        } else {
            site.request(&self.http, Method::GET, "/wiki/rest/api/group/by-name").query(&[("name", wanted)])
        };
        let resp = self.http.send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ConnectorError::NotFound { what: format!("confluence group {wanted:?}") });
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let group: SiteGroup = json(resp).await?;
        if group.id.is_none() {
            return Err(ConnectorError::Permanent {
                reason: format!("confluence answered group {:?} without an id", group.name),
            });
        }
        Ok(group)
    }

    async fn site_is_member(&self, site: &Site, account: &str, group: &SiteGroup) -> Result<bool, ConnectorError> {
        let limit = MEMBEROF_LIMIT.to_string();
        let mut start = 0usize;
        for _ in 0..MAX_PAGES {
            let req = site.request(&self.http, Method::GET, "/wiki/rest/api/user/memberof").query(&[
                ("accountId", account),
                ("start", &start.to_string()),
                ("limit", &limit),
            ]);
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound { what: format!("confluence user with accountId {account}") });
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: SiteGroupList = json(resp).await?;
            if page.results.iter().any(|g| g.id == group.id || g.name.eq_ignore_ascii_case(&group.name)) {
                return Ok(true);
            }
            if page.results.len() < MEMBEROF_LIMIT {
                return Ok(false);
            }
            start += page.results.len();
        }
        Err(ConnectorError::Permanent {
            reason: format!("user {account} is in more than {} confluence groups", MAX_PAGES * MEMBEROF_LIMIT),
        })
    }

    async fn site_add(&self, site: &Site, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        let account = account_id(subject)?;
        let group = self.site_group(site, target).await?;
        let group_id = group.id.as_deref().unwrap_or_default();
        if self.site_is_member(site, account, &group).await? {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let mut licence_retry = true;
        loop {
            let req = site
                .request(&self.http, Method::POST, "/wiki/rest/api/group/userByGroupId")
                .query(&[("groupId", group_id)])
                .json(&json!({ "accountId": account }));
            let resp = self.http.send(req).await?;
            if resp.status().is_success() {
                return Ok(GrantOutcome::Granted);
            }
            let f = self.failure(resp).await;
            let ambiguous = matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::CONFLICT);
            if (ambiguous || f.licence_pool) && self.site_is_member(site, account, &group).await? {
                return Ok(GrantOutcome::AlreadyGranted);
            }
            if f.licence_pool {
                // Retried once; a second HystrixRuntimeException is the licence pool, not an outage.
                if std::mem::take(&mut licence_retry) {
                    continue;
                }
                return Err(ConnectorError::Permanent {
                    reason: format!(
                        "{} (Confluence answers this when the product's licence pool is exhausted: free a seat or \
                         raise the user limit)",
                        f.error
                    ),
                });
            }
            return Err(f.error);
        }
    }

    async fn site_remove(
        &self,
        site: &Site,
        subject: &Subject,
        target: &Target,
    ) -> Result<RevokeOutcome, ConnectorError> {
        let account = account_id(subject)?;
        let group = self.site_group(site, target).await?;
        if !self.site_is_member(site, account, &group).await? {
            // Only absent if the user exists at all.
            let req = site.request(&self.http, Method::GET, "/wiki/rest/api/user").query(&[("accountId", account)]);
            let resp = self.http.send(req).await?;
            return match resp.status() {
                s if s.is_success() => Ok(RevokeOutcome::AlreadyAbsent),
                StatusCode::NOT_FOUND => {
                    Err(ConnectorError::NotFound { what: format!("confluence user with accountId {account}") })
                }
                _ => Err(self.fail(resp).await),
            };
        }
        let req = site
            .request(&self.http, Method::DELETE, "/wiki/rest/api/group/userByGroupId")
            .query(&[("groupId", group.id.as_deref().unwrap_or_default()), ("accountId", account)]);
        let resp = self.http.send(req).await?;
        if resp.status().is_success() {
            return Ok(RevokeOutcome::Revoked);
        }
        let f = self.failure(resp).await;
        if matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND)
            && !self.site_is_member(site, account, &group).await?
        {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        Err(f.error)
    }

    // ---- organization Admin API v2 ----

    async fn directories(&self, admin: &Admin) -> Result<Vec<Directory>, ConnectorError> {
        let path = format!("/admin/v2/orgs/{}/directories", seg(&admin.org_id));
        let resp = self.http.send(admin.request(&self.http, Method::GET, &path)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ConnectorError::NotFound {
                what: format!("organization {} (check org_id; the Admin API key must belong to it)", admin.org_id),
            });
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Ok(json::<Page<Directory>>(resp).await?.data)
    }

    /// The directory in use: `directory_id`, or the organization's only one.
    async fn directory<'a>(&self, admin: &'a Admin) -> Result<&'a str, ConnectorError> {
        admin
            .directory
            .get_or_try_init(|| async { only_directory(admin, self.directories(admin).await?) })
            .await
            .map(String::as_str)
    }

    fn admin_path(admin: &Admin, directory: &str, rest: &str) -> String {
        format!("/admin/v2/orgs/{}/directories/{}{rest}", seg(&admin.org_id), seg(directory))
    }

    async fn admin_search<T: serde::de::DeserializeOwned>(
        &self,
        admin: &Admin,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Vec<T>, ConnectorError> {
        let resp = self.http.send(admin.request(&self.http, Method::POST, path).json(&body)).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Ok(json::<Page<T>>(resp).await?.data)
    }

    /// The directory group a target names (by id or name), synced or not.
    async fn admin_find_group(
        &self,
        admin: &Admin,
        directory: &str,
        target: &Target,
    ) -> Result<AdminGroup, ConnectorError> {
        let wanted = target.name.trim();
        if wanted.is_empty() {
            return Err(ConnectorError::Permanent { reason: "the rule names an empty group".into() });
        }
        let body =
            if looks_like_uuid(wanted) { json!({ "groupIds": [wanted] }) } else { json!({ "groupNames": [wanted] }) };
        let groups: Vec<AdminGroup> =
            self.admin_search(admin, &Self::admin_path(admin, directory, "/groups/search"), body).await?;
        let group = groups
            .into_iter()
            .find(|g| g.id == wanted || g.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(wanted)))
            .ok_or_else(|| ConnectorError::NotFound { what: format!("group {wanted:?} in directory {directory}") })?;
        Ok(group)
    }

    /// [`Self::admin_find_group`], refusing groups an identity provider manages (for writes).
    async fn admin_group(&self, admin: &Admin, directory: &str, target: &Target) -> Result<AdminGroup, ConnectorError> {
        let wanted = target.name.trim();
        let group = self.admin_find_group(admin, directory, target).await?;
        if group.external_synced || group.managed_by.as_deref() == Some("external") {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "group {wanted:?} is synced from an identity provider, so the Admin API cannot change its \
                     members; manage it in the identity provider or point the rule at a local group"
                ),
            });
        }
        Ok(group)
    }

    /// The subject's accountId in the directory: by the ticket's accountId, then by its email.
    async fn admin_user(&self, admin: &Admin, directory: &str, subject: &Subject) -> Result<String, ConnectorError> {
        let path = Self::admin_path(admin, directory, "/users/search");
        let by_id = subject.account_id.trim();
        if !by_id.is_empty() {
            let users: Vec<AdminUser> =
                self.admin_search(admin, &path, json!({ "accountIds": [by_id], "limit": 1 })).await?;
            if let Some(u) = users.into_iter().find(|u| u.account_id == by_id) {
                return Ok(u.account_id);
            }
        }
        let email = subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
        if let Some(email) = email {
            let users: Vec<AdminUser> =
                self.admin_search(admin, &path, json!({ "emails": [email], "limit": 1 })).await?;
            if let Some(u) =
                users.into_iter().find(|u| u.email.as_deref().is_none_or(|e| e.eq_ignore_ascii_case(email)))
            {
                return Ok(u.account_id);
            }
        }
        if by_id.is_empty() && email.is_none() {
            return Err(ConnectorError::Permanent {
                reason: "the ticket names neither the requester's accountId nor their email".into(),
            });
        }
        Err(ConnectorError::NotFound {
            what: format!(
                "user (accountId {by_id:?}, email {:?}) in directory {directory} of organization {}; invite them \
                 to the organization first",
                email.unwrap_or(""),
                admin.org_id
            ),
        })
    }

    async fn admin_is_member(
        &self,
        admin: &Admin,
        directory: &str,
        account: &str,
        group: &AdminGroup,
    ) -> Result<bool, ConnectorError> {
        let body = json!({ "groupIds": [group.id], "accountIds": [account] });
        let groups: Vec<AdminGroup> =
            self.admin_search(admin, &Self::admin_path(admin, directory, "/groups/search"), body).await?;
        Ok(groups.iter().any(|g| g.id == group.id))
    }

    async fn admin_add(
        &self,
        admin: &Admin,
        subject: &Subject,
        target: &Target,
    ) -> Result<GrantOutcome, ConnectorError> {
        let directory = self.directory(admin).await?;
        let group = self.admin_group(admin, directory, target).await?;
        let account = self.admin_user(admin, directory, subject).await?;
        if self.admin_is_member(admin, directory, &account, &group).await? {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        let path = Self::admin_path(admin, directory, &format!("/groups/{}/memberships", seg(&group.id)));
        let req = admin.request(&self.http, Method::POST, &path).json(&json!({ "accountId": account }));
        let resp = self.http.send(req).await?;
        if resp.status().is_success() {
            return Ok(GrantOutcome::Granted);
        }
        let f = self.failure(resp).await;
        if matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::CONFLICT)
            && self.admin_is_member(admin, directory, &account, &group).await?
        {
            return Ok(GrantOutcome::AlreadyGranted);
        }
        Err(f.error)
    }

    async fn admin_remove(
        &self,
        admin: &Admin,
        subject: &Subject,
        target: &Target,
    ) -> Result<RevokeOutcome, ConnectorError> {
        let directory = self.directory(admin).await?;
        let group = self.admin_group(admin, directory, target).await?;
        let account = self.admin_user(admin, directory, subject).await?;
        if !self.admin_is_member(admin, directory, &account, &group).await? {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        let rest = format!("/groups/{}/memberships/{}", seg(&group.id), seg(&account));
        let resp = self
            .http
            .send(admin.request(&self.http, Method::DELETE, &Self::admin_path(admin, directory, &rest)))
            .await?;
        if resp.status().is_success() {
            return Ok(RevokeOutcome::Revoked);
        }
        let f = self.failure(resp).await;
        if matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND)
            && !self.admin_is_member(admin, directory, &account, &group).await?
        {
            return Ok(RevokeOutcome::AlreadyAbsent);
        }
        Err(f.error)
    }
}

impl Confluence {
    // ---- read-back ----

    /// The accountId `grant` adds (with `api = "admin"`, grant falls back to the
    /// ticket's email when the accountId is not in the directory; that needs a lookup).
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        account_id(subject).map(str::to_owned)
    }

    async fn members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        match &self.api {
            Api::Site(site) => self.site_members(site, target).await,
            Api::Admin(admin) => self.admin_members(admin, target).await,
        }
    }

    async fn memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        match &self.api {
            Api::Site(site) => self.site_memberships(site, subject, targets).await,
            Api::Admin(admin) => self.admin_memberships(admin, subject, targets).await,
        }
    }

    async fn user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        match &self.api {
            Api::Site(site) => self.site_user_state(site, subject).await,
            Api::Admin(admin) => self.admin_user_state(admin, subject).await,
        }
    }

    /// `GET /wiki/rest/api/group/{groupId}/membersByGroupId?start=&limit=`, while `_links.next` is set.
    async fn site_members(&self, site: &Site, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let group = self.site_group(site, target).await?;
        let id = group.id.as_deref().unwrap_or_default();
        let path = format!("/wiki/rest/api/group/{}/membersByGroupId", seg(id));
        let limit = READ_LIMIT.to_string();
        let mut out = Vec::new();
        let mut start = 0usize;
        for _ in 0..MAX_PAGES * 20 {
            let req = site
                .request(&self.http, Method::GET, &path)
                .query(&[("start", start.to_string().as_str()), ("limit", limit.as_str())]);
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound { what: format!("confluence group {:?}", group.name) });
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: SitePage<SiteUser> = json(resp).await?;
            let n = page.results.len();
            for u in page.results {
                let Some(id) = u.account_id.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()) else { continue };
                let mut keys = vec![id.clone()];
                keys.extend(u.email.map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()));
                out.push(Member { id, keys, display: u.display_name.or(u.public_name) });
            }
            if !page.links.contains_key("next") || n == 0 {
                return Ok(out);
            }
            start += n;
        }
        Err(ConnectorError::Permanent {
            reason: format!(
                "confluence membersByGroupId: group {:?} has too many members (gave up paging)",
                group.name
            ),
        })
    }

    /// Every group of the account (`GET /wiki/rest/api/user/memberof`, paged), matched to `targets`.
    async fn site_memberships(
        &self,
        site: &Site,
        subject: &Subject,
        targets: &[Target],
    ) -> Result<Vec<String>, ConnectorError> {
        let account = account_id(subject)?;
        let limit = MEMBEROF_LIMIT.to_string();
        let mut groups: Vec<SiteGroup> = Vec::new();
        let mut start = 0usize;
        let mut done = false;
        for _ in 0..MAX_PAGES {
            let req = site.request(&self.http, Method::GET, "/wiki/rest/api/user/memberof").query(&[
                ("accountId", account),
                ("start", &start.to_string()),
                ("limit", &limit),
            ]);
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(Vec::new()); // an unknown account holds nothing
            }
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: SitePage<SiteGroup> = json(resp).await?;
            let n = page.results.len();
            groups.extend(page.results);
            if !page.links.contains_key("next") || n == 0 {
                done = true;
                break;
            }
            start += n;
        }
        if !done {
            return Err(ConnectorError::Permanent {
                reason: format!("user {account} is in more than {} confluence groups", MAX_PAGES * MEMBEROF_LIMIT),
            });
        }
        Ok(held(targets, groups.iter().map(|g| (g.id.as_deref(), g.name.as_str()))))
    }

    /// `GET /wiki/rest/api/user?accountId=`: 200 is Active (the site API shows no deactivated state), 404 NotFound.
    async fn site_user_state(&self, site: &Site, subject: &Subject) -> Result<UserState, ConnectorError> {
        let account = account_id(subject)?;
        let req = site.request(&self.http, Method::GET, "/wiki/rest/api/user").query(&[("accountId", account)]);
        let resp = self.http.send(req).await?;
        match resp.status() {
            s if s.is_success() => Ok(UserState::Active),
            StatusCode::NOT_FOUND => Ok(UserState::NotFound),
            _ => Err(self.fail(resp).await),
        }
    }

    /// An Admin API search, every page (the body's `cursor` from `links.next`).
    async fn admin_search_all<T: serde::de::DeserializeOwned>(
        &self,
        admin: &Admin,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Vec<T>, ConnectorError> {
        let mut out = Vec::new();
        let mut body = body;
        for _ in 0..MAX_PAGES * 20 {
            let resp = self.http.send(admin.request(&self.http, Method::POST, path).json(&body)).await?;
            if !resp.status().is_success() {
                return Err(self.fail(resp).await);
            }
            let page: CursorPage<T> = json(resp).await?;
            let n = page.data.len();
            out.extend(page.data);
            match page.links.and_then(|l| l.next).filter(|c| !c.is_empty()) {
                Some(cursor) if n > 0 => body["cursor"] = cursor.into(),
                _ => return Ok(out),
            }
        }
        Err(ConnectorError::Permanent { reason: format!("confluence admin {path}: too many pages (gave up paging)") })
    }

    /// `POST …/directories/{directoryId}/users/search` `{"groupIds": [id]}`, every page.
    async fn admin_members(&self, admin: &Admin, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let directory = self.directory(admin).await?;
        let group = self.admin_find_group(admin, directory, target).await?;
        let path = Self::admin_path(admin, directory, "/users/search");
        let users: Vec<AdminUser> =
            self.admin_search_all(admin, &path, json!({ "groupIds": [group.id], "limit": READ_LIMIT })).await?;
        Ok(users
            .into_iter()
            .map(|u| {
                let mut keys = vec![u.account_id.clone()];
                keys.extend(u.email.map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()));
                Member { id: u.account_id, keys, display: u.name.or(u.nickname) }
            })
            .collect())
    }

    /// The user found as `grant` finds them; their groups from
    /// `POST …/groups/search` `{"accountIds": [id]}`, every page.
    async fn admin_memberships(
        &self,
        admin: &Admin,
        subject: &Subject,
        targets: &[Target],
    ) -> Result<Vec<String>, ConnectorError> {
        let directory = self.directory(admin).await?;
        let account = match self.admin_user(admin, directory, subject).await {
            Ok(a) => a,
            Err(ConnectorError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let path = Self::admin_path(admin, directory, "/groups/search");
        let groups: Vec<AdminGroup> =
            self.admin_search_all(admin, &path, json!({ "accountIds": [account], "limit": READ_LIMIT })).await?;
        Ok(held(targets, groups.iter().map(|g| (Some(g.id.as_str()), g.name.as_deref().unwrap_or_default()))))
    }

    /// The directory user's `accountStatus` and `membershipStatus`: both active is Active,
    /// otherwise (deactivated, closed, suspended) Inactive; not in the directory is NotFound.
    async fn admin_user_state(&self, admin: &Admin, subject: &Subject) -> Result<UserState, ConnectorError> {
        let account = account_id(subject)?;
        let directory = self.directory(admin).await?;
        let path = Self::admin_path(admin, directory, "/users/search");
        let users: Vec<AdminUser> =
            self.admin_search(admin, &path, json!({ "accountIds": [account], "limit": 1 })).await?;
        let Some(u) = users.into_iter().find(|u| u.account_id == account) else { return Ok(UserState::NotFound) };
        let active = |s: &Option<String>| s.as_deref().is_none_or(|s| s.eq_ignore_ascii_case("active"));
        Ok(if active(&u.account_status) && active(&u.membership_status) {
            UserState::Active
        } else {
            UserState::Inactive
        })
    }
}

/// The names of `targets` among `groups` (`(id, name)`): by id, or by name case-insensitively.
fn held<'a>(targets: &[Target], groups: impl Iterator<Item = (Option<&'a str>, &'a str)>) -> Vec<String> {
    let groups: Vec<(Option<&str>, &str)> = groups.collect();
    targets
        .iter()
        .filter(|t| {
            let wanted = t.name.trim();
            groups.iter().any(|(id, name)| *id == Some(wanted) || name.eq_ignore_ascii_case(wanted))
        })
        .map(|t| t.name.clone())
        .collect()
}

impl Site {
    fn request(&self, http: &Http, method: Method, path: &str) -> RequestBuilder {
        http.client()
            .request(method, format!("{}{path}", self.base))
            .basic_auth(self.email.expose_secret(), Some(self.token.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
    }
}

impl Admin {
    fn request(&self, http: &Http, method: Method, path: &str) -> RequestBuilder {
        http.client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.key.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
    }
}

super::connector_impl!(
    Confluence, PROVIDER, grant: add, revoke: remove, test: check,
    identity: identity, members: members, memberships: memberships, user_state: user_state
);

/// The organization's only directory (several make `directory_id` required).
fn only_directory(admin: &Admin, mut all: Vec<Directory>) -> Result<String, ConnectorError> {
    match all.len() {
        1 => Ok(all.remove(0).directory_id),
        0 => Err(ConnectorError::Permanent {
            reason: format!("organization {} has no directory visible to the Admin API key", admin.org_id),
        }),
        _ => Err(ConnectorError::Permanent {
            reason: format!(
                "organization {} has several directories ({}); set directory_id",
                admin.org_id,
                describe(&all)
            ),
        }),
    }
}

fn describe(directories: &[Directory]) -> String {
    if directories.is_empty() {
        return "none".into();
    }
    directories
        .iter()
        .map(|d| match &d.name {
            Some(n) => format!("{} ({n})", d.directory_id),
            None => d.directory_id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
