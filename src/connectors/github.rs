//! GitHub: team membership in one organization (REST API version 2022-11-28).
//!
//! Authentication is a GitHub App (an RS256 JWT signed with the App's private
//! key, traded for an installation token that is cached until shortly before it
//! expires and minted again after a 401) or a fine-grained personal access token.
//!
//! GitHub has no email -> login lookup, so the login comes from the ticket field
//! named by the application's `subject_field`. A PUT on the team membership of
//! someone who is not an organization member makes GitHub email them an
//! organization invitation (`state: pending`); `invite_non_members` (default
//! false) decides whether accessgov may do that: when false it checks the
//! organization membership first and refuses with a permanent error.
//!
//! Grant: check the team membership, then PUT it with the rule's role (member
//! by default, or maintainer). An existing active membership with the same or a
//! higher role is "already granted". Revoke: check, then DELETE; "not a member"
//! counts only after the team and the user are confirmed to exist.

use super::http::Failure;
use super::http::{self, Common, Http, TokenCache};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Production API root.
pub const DEFAULT_BASE_URL: &str = "https://api.github.com";
/// The REST API version every request pins.
pub const API_VERSION: &str = "2022-11-28";
/// The media type GitHub recommends.
pub const ACCEPT: &str = "application/vnd.github+json";
/// Wait after a secondary rate limit that gave no hint (GitHub: "at least one minute").
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
const ROLES: [&str; 2] = ["member", "maintainer"];
/// Page size for team members (GitHub's maximum).
const PER_PAGE: &str = "100";
/// Most team-member pages read (a runaway guard: 100,000 members).
const MAX_PAGES: usize = 1000;

/// GitHub App credentials and the installation token they yield.
struct AppAuth {
    app_id: String,
    key: EncodingKey,
    /// Configured, or discovered once with `GET /orgs/{org}/installation`.
    installation_id: tokio::sync::OnceCell<String>,
    tokens: TokenCache,
    /// `permissions` of the last installation token, for test_connection.
    permissions: std::sync::Mutex<Option<Value>>,
}

enum Auth {
    App(Box<AppAuth>),
    Token(SecretString),
}

/// The GitHub connector.
pub struct Github {
    http: Http,
    base: Url,
    org: String,
    subject_field: String,
    invite_non_members: bool,
    auth: Auth,
}

impl std::fmt::Debug for Github {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::App(a) => {
                format!(
                    "app {}, installation {}",
                    a.app_id,
                    a.installation_id.get().map_or("(discovered)", String::as_str)
                )
            }
            Auth::Token(_) => "token [REDACTED]".into(),
        };
        f.debug_struct("Github")
            .field("base", &self.base.as_str())
            .field("org", &self.org)
            .field("subject_field", &self.subject_field)
            .field("invite_non_members", &self.invite_non_members)
            .field("auth", &auth)
            .finish()
    }
}

/// A string or integer setting (`app_id = 123` and `app_id = "123"` both work).
fn id_setting(app: &ApplicationConfig, key: &str) -> Option<String> {
    match app.settings.get(key) {
        Some(toml::Value::Integer(i)) => Some(i.to_string()),
        _ => http::setting(app, key),
    }
}

// Provider-specific readings of a failed answer (the type is `http::Failure`).
impl Failure {
    fn message(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| http::snippet(&self.body))
    }

    /// GitHub's rate-limit answers (403 or 429): primary (`x-ratelimit-remaining: 0`,
    /// wait until `x-ratelimit-reset`) or secondary (`retry-after`, else at least a minute).
    fn rate_limit(&self) -> Option<ConnectorError> {
        if self.status != StatusCode::FORBIDDEN && self.status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let header = |n: &str| self.headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let exhausted = header("x-ratelimit-remaining") == Some("0");
        let secondary = self.message().to_ascii_lowercase().contains("rate limit");
        let hinted = header("retry-after").is_some();
        if !(hinted || exhausted || secondary || self.status == StatusCode::TOO_MANY_REQUESTS) {
            return None;
        }
        let retry_after =
            if hinted || exhausted { http::retry_hint(&self.headers) } else { Some(SECONDARY_LIMIT_WAIT) };
        let kind = if exhausted { "primary" } else { "secondary" };
        Some(ConnectorError::Transient {
            reason: format!("github: {kind} rate limit ({}): {}", self.status.as_u16(), self.message()),
            retry_after,
        })
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn unreadable(what: &str, e: &reqwest::Error) -> ConnectorError {
    ConnectorError::Transient { reason: format!("github: unreadable {what} answer: {e}"), retry_after: None }
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] = &[
    "org",
    "app_id",
    "installation_id",
    "private_key_env",
    "private_key_file",
    "token_env",
    "token_file",
    "invite_non_members",
];

impl Github {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        let org = http::setting(app, "org")
            .ok_or_else(|| format!("application {name:?}: org is required: the GitHub organization's login"))?;
        let subject_field = common.subject_field.clone().ok_or_else(|| {
            format!(
                "application {name:?}: subject_field is required for GitHub: the id of the ticket field holding \
                 the requester's GitHub login (GitHub cannot look users up by email)"
            )
        })?;
        let token = http::secret(app, "token")?;
        let private_key = http::secret(app, "private_key")?;
        let app_id = id_setting(app, "app_id");
        let auth = match (token, private_key, app_id) {
            (Some(_), Some(_), _) => {
                return Err(format!(
                    "application {name:?}: set either token_env/token_file (a fine-grained token) or app_id + \
                     private_key_env/private_key_file (a GitHub App), not both"
                ));
            }
            (Some(t), None, _) => Auth::Token(t),
            (None, Some(pem), Some(app_id)) => {
                let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|_| {
                    "private_key: not an RSA private key in PEM form (use the .pem file GitHub generated for the App)"
                        .to_owned()
                })?;
                let installation_id = tokio::sync::OnceCell::new();
                if let Some(id) = id_setting(app, "installation_id") {
                    let _ = installation_id.set(id);
                }
                Auth::App(Box::new(AppAuth {
                    app_id,
                    key,
                    installation_id,
                    tokens: TokenCache::default(),
                    permissions: std::sync::Mutex::new(None),
                }))
            }
            (None, Some(_), None) => {
                return Err(format!("application {name:?}: app_id is required with private_key_env/private_key_file"));
            }
            (None, None, _) => {
                return Err(format!(
                    "application {name:?}: credentials are required: app_id + private_key_env/private_key_file \
                     (+ installation_id) for a GitHub App, or token_env/token_file for a fine-grained token"
                ));
            }
        };
        if app.settings.get("invite_non_members").is_some_and(|v| !v.is_bool()) {
            return Err(format!("application {name:?}: invite_non_members must be true or false (no quotes)"));
        }
        let base_text = common.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let base = Url::parse(&base_text).map_err(|e| format!("base_url {base_text:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() {
            return Err(format!("base_url {base_text:?} cannot be a base URL"));
        }
        Ok(Self {
            http: Http::new("github", &common)?,
            base,
            org,
            subject_field,
            invite_non_members: http::flag(app, "invite_non_members").unwrap_or(false),
            auth,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in from_config").pop_if_empty().extend(segments);
        url
    }

    fn request(&self, method: Method, url: Url, bearer: &str) -> RequestBuilder {
        self.http
            .client()
            .request(method, url)
            .header("accept", ACCEPT)
            .header("x-github-api-version", API_VERSION)
            .bearer_auth(bearer)
    }

    /// The App's JWT: `iat` a minute back (clock drift), `exp` 9 minutes ahead (GitHub's cap is 10).
    fn app_jwt(app: &AppAuth) -> Result<SecretString, ConnectorError> {
        let now = now_secs();
        // `iss` is the App id or its client id ("Iv1..."), as a string (RFC 7519 StringOrURI).
        let claims = json!({ "iat": now - 60, "exp": now + 540, "iss": app.app_id });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &app.key)
            .map(SecretString::from)
            .map_err(|e| ConnectorError::Permanent { reason: format!("github: cannot sign the App JWT: {e}") })
    }

    fn jwt_refused(app: &AppAuth, f: &Failure) -> ConnectorError {
        ConnectorError::Unauthorized(format!(
            "github refused the App JWT ({}: {}). Fix: app_id {} must be the App whose private key is \
             configured (App settings > General > Private keys), the key must not be revoked, and this host's \
             clock must be right",
            f.status.as_u16(),
            f.message(),
            app.app_id
        ))
    }

    async fn installation_id(&self, app: &AppAuth) -> Result<String, ConnectorError> {
        app.installation_id
            .get_or_try_init(|| async {
                let jwt = Self::app_jwt(app)?;
                let url = self.url(&["orgs", &self.org, "installation"]);
                let resp = self.http.send(self.request(Method::GET, url, jwt.expose_secret())).await?;
                if !resp.status().is_success() {
                    let f = Failure::read(resp).await;
                    return Err(match f.status {
                        StatusCode::NOT_FOUND => ConnectorError::Unauthorized(format!(
                            "github: the App is not installed on organization {}. Fix: install it (App settings > \
                             Install App) with Organization > Members: Read and write, or set installation_id",
                            self.org
                        )),
                        StatusCode::UNAUTHORIZED => Self::jwt_refused(app, &f),
                        _ => f.rate_limit().unwrap_or_else(|| http::classify("github", f.status, &f.headers, &f.body)),
                    });
                }
                let v: Value = resp.json().await.map_err(|e| unreadable("installation", &e))?;
                match v.get("id") {
                    Some(Value::Number(n)) => Ok(n.to_string()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => Err(ConnectorError::Transient {
                        reason: "github: the installation answer has no id".into(),
                        retry_after: None,
                    }),
                }
            })
            .await
            .cloned()
    }

    /// `POST /app/installations/{id}/access_tokens` with the App JWT -> `(token, lifetime)`.
    async fn mint_installation_token(&self, app: &AppAuth) -> Result<(SecretString, Duration), ConnectorError> {
        let id = self.installation_id(app).await?;
        let jwt = Self::app_jwt(app)?;
        let url = self.url(&["app", "installations", &id, "access_tokens"]);
        let resp = self.http.send(self.request(Method::POST, url, jwt.expose_secret())).await?;
        if !resp.status().is_success() {
            let f = Failure::read(resp).await;
            return Err(match f.status {
                StatusCode::UNAUTHORIZED => Self::jwt_refused(app, &f),
                StatusCode::NOT_FOUND => ConnectorError::Unauthorized(format!(
                    "github: installation {id} was not found for this App. Fix: set installation_id to the number in \
                     the URL of Organization settings > GitHub Apps > Configure (or remove it to discover it), and \
                     make sure the App is installed on {}",
                    self.org
                )),
                _ => f.rate_limit().unwrap_or_else(|| http::classify("github", f.status, &f.headers, &f.body)),
            });
        }
        let v: Value = resp.json().await.map_err(|e| unreadable("access token", &e))?;
        let token = v.get("token").and_then(Value::as_str).ok_or_else(|| ConnectorError::Transient {
            reason: "github: the access-token answer has no token".into(),
            retry_after: None,
        })?;
        let lifetime = v
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|at| Duration::from_secs(u64::try_from(at.timestamp() - now_secs()).unwrap_or(0)))
            .unwrap_or(Duration::from_secs(3600));
        *app.permissions.lock().unwrap_or_else(|p| p.into_inner()) = v.get("permissions").cloned();
        Ok((SecretString::from(token.to_owned()), lifetime))
    }

    async fn bearer(&self) -> Result<SecretString, ConnectorError> {
        match &self.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::App(app) => app.tokens.get(|| self.mint_installation_token(app)).await,
        }
    }

    /// Sends an authenticated request; with an App a 401 mints a new installation token once.
    async fn send(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Result<Response, ConnectorError> {
        self.send_url(method, self.url(segments), body).await
    }

    async fn send_url(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Response, ConnectorError> {
        for attempt in 0..2 {
            let token = self.bearer().await?;
            let mut req = self.request(method.clone(), url.clone(), token.expose_secret());
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = self.http.send(req).await?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && let Auth::App(app) = &self.auth
            {
                tracing::info!(provider = "github", "401 with the installation token; minting a new one once");
                app.tokens.invalidate().await;
                continue;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The classified error for a failed API answer.
    fn error(&self, f: &Failure) -> ConnectorError {
        if let Some(e) = f.rate_limit() {
            return e;
        }
        let message = f.message();
        match f.status {
            StatusCode::UNAUTHORIZED => ConnectorError::Unauthorized(match &self.auth {
                Auth::Token(_) => format!(
                    "github answered 401: {message}. Fix: the token is expired or revoked; create a fine-grained \
                     token with resource owner {} and Organization > Members: Read and write",
                    self.org
                ),
                Auth::App(_) => {
                    format!("github answered 401 twice (a new installation token was refused): {message}")
                }
            }),
            StatusCode::FORBIDDEN if message.to_ascii_lowercase().contains("synchroniz") => ConnectorError::Permanent {
                reason: format!(
                    "github: the team is synchronized with an identity provider group, so its members are \
                         managed there ({message})"
                ),
            },
            StatusCode::FORBIDDEN => ConnectorError::Unauthorized(format!(
                "github answered 403: {message}. Fix: the {} needs Organization > Members: Read and write on {} \
                 (and, on a SAML SSO organization, a token authorized for SSO)",
                match self.auth {
                    Auth::App(_) => "App installation",
                    Auth::Token(_) => "token",
                },
                self.org
            )),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ConnectorError::Permanent { reason: format!("github refused the change (422): {message}") }
            }
            _ => http::classify("github", f.status, &f.headers, &f.body),
        }
    }

    fn login<'a>(&self, subject: &'a Subject) -> Result<&'a str, ConnectorError> {
        let raw = subject.field(&self.subject_field).map(str::trim).filter(|s| !s.is_empty()).ok_or_else(|| {
            ConnectorError::Permanent {
                reason: format!(
                    "github: the ticket has no GitHub login in field {} (the application's subject_field); the \
                     requester must fill it in",
                    self.subject_field
                ),
            }
        })?;
        let login = raw.strip_prefix('@').unwrap_or(raw);
        if login.is_empty() || !login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "github: {raw:?} in field {} is not a GitHub login (letters, digits, hyphens)",
                    self.subject_field
                ),
            });
        }
        Ok(login)
    }

    fn team<'a>(&self, target: &'a Target) -> Result<&'a str, ConnectorError> {
        let name = target.name.trim();
        // `org/team` is accepted when the org is this application's.
        let slug = match name.split_once('/') {
            Some((org, slug)) if org.eq_ignore_ascii_case(&self.org) => slug,
            Some(_) => {
                return Err(ConnectorError::Permanent {
                    reason: format!("github: team {name:?} is not in organization {}", self.org),
                });
            }
            None => name,
        };
        if slug.is_empty() || !slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "github: {name:?} is not a team slug; write the slug from the team's URL (e.g. platform-eng for \
                     \"Platform Eng\")"
                ),
            });
        }
        Ok(slug)
    }

    /// `GET .../teams/{slug}/memberships/{login}` -> `(role, state)`, `None` on 404.
    async fn membership(&self, team: &str, login: &str) -> Result<Option<(String, String)>, ConnectorError> {
        let resp = self.send(Method::GET, &["orgs", &self.org, "teams", team, "memberships", login], None).await?;
        match resp.status() {
            StatusCode::OK => {
                let v: Value = resp.json().await.map_err(|e| unreadable("team membership", &e))?;
                let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
                Ok(Some((field("role"), field("state"))))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.error(&Failure::read(resp).await)),
        }
    }

    /// A GET that answers 2xx when the thing exists and 404 when not.
    async fn exists(&self, segments: &[&str]) -> Result<bool, ConnectorError> {
        let resp = self.send(Method::GET, segments, None).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(&Failure::read(resp).await)),
        }
    }

    /// Names which of the team and the user is missing, if either is.
    async fn missing(&self, team: &str, login: &str) -> Result<Option<ConnectorError>, ConnectorError> {
        if !self.exists(&["orgs", &self.org, "teams", team]).await? {
            return Ok(Some(ConnectorError::NotFound {
                what: format!("github: team {team} in organization {}", self.org),
            }));
        }
        if !self.exists(&["users", login]).await? {
            return Ok(Some(ConnectorError::NotFound { what: format!("github: user {login}") }));
        }
        Ok(None)
    }

    async fn do_grant(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        let login = self.login(subject)?;
        let team = self.team(target)?;
        let role = role(target)?;
        let existing = self.membership(team, login).await?;
        let active = matches!(&existing, Some((_, state)) if state == "active");
        match existing {
            Some((current, state)) if state == "active" && rank(&current) >= rank(role) => {
                return Ok(GrantOutcome::AlreadyGranted);
            }
            Some((_, state)) if state == "pending" && !self.invite_non_members => {
                return Err(self.not_org_member(login, "has a pending invitation to"));
            }
            Some((current, state)) if state == "pending" && rank(&current) >= rank(role) => {
                return Ok(GrantOutcome::AlreadyGranted);
            }
            _ => {}
        }
        if !self.invite_non_members && !active {
            let resp = self.send(Method::GET, &["orgs", &self.org, "members", login], None).await?;
            match resp.status() {
                StatusCode::NO_CONTENT => {}
                StatusCode::NOT_FOUND => {
                    if !self.exists(&["users", login]).await? {
                        return Err(ConnectorError::NotFound { what: format!("github: user {login}") });
                    }
                    return Err(self.not_org_member(login, "is not a member of"));
                }
                _ => return Err(self.error(&Failure::read(resp).await)),
            }
        }
        let body = json!({ "role": role });
        let resp =
            self.send(Method::PUT, &["orgs", &self.org, "teams", team, "memberships", login], Some(&body)).await?;
        if resp.status().is_success() {
            let state =
                resp.json::<Value>().await.ok().and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned));
            if state.as_deref() == Some("pending") {
                tracing::info!(provider = "github", org = %self.org, team, login, "GitHub sent an organization invitation");
            }
            return Ok(GrantOutcome::Granted);
        }
        let f = Failure::read(resp).await;
        if f.status == StatusCode::NOT_FOUND
            && let Some(e) = self.missing(team, login).await?
        {
            return Err(e);
        }
        Err(self.error(&f))
    }

    fn not_org_member(&self, login: &str, what: &str) -> ConnectorError {
        ConnectorError::Permanent {
            reason: format!(
                "github: {login} {what} organization {}, and invite_non_members is false, so accessgov does not add \
                 them to teams (GitHub would email an organization invitation). Fix: have them join the \
                 organization first, or set invite_non_members = true for this application",
                self.org
            ),
        }
    }

    async fn do_revoke(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        let login = self.login(subject)?;
        let team = self.team(target)?;
        if self.membership(team, login).await?.is_some() {
            let resp =
                self.send(Method::DELETE, &["orgs", &self.org, "teams", team, "memberships", login], None).await?;
            if resp.status().is_success() {
                return Ok(RevokeOutcome::Revoked);
            }
            let f = Failure::read(resp).await;
            if f.status != StatusCode::NOT_FOUND {
                return Err(self.error(&f));
            }
        }
        // "Not a member" only counts once the team and the user are known to exist.
        match self.missing(team, login).await? {
            Some(e) => Err(e),
            None => Ok(RevokeOutcome::AlreadyAbsent),
        }
    }

    async fn do_test(&self) -> Result<(), ConnectorError> {
        if let Auth::App(app) = &self.auth {
            // The JWT alone: proves app_id and the private key belong together.
            let jwt = Self::app_jwt(app)?;
            let resp = self.http.send(self.request(Method::GET, self.url(&["app"]), jwt.expose_secret())).await?;
            if !resp.status().is_success() {
                let f = Failure::read(resp).await;
                return Err(match f.status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Self::jwt_refused(app, &f),
                    _ => f.rate_limit().unwrap_or_else(|| http::classify("github", f.status, &f.headers, &f.body)),
                });
            }
            self.bearer().await?;
            let members = app
                .permissions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|p| p.get("members").and_then(Value::as_str).unwrap_or("none").to_owned());
            if let Some(level) = members
                && level != "write"
            {
                return Err(ConnectorError::Unauthorized(format!(
                    "github: the App's installation on {} has Members permission {level:?}, and team changes need \
                     \"write\". Fix: App settings > Permissions > Organization permissions > Members: Read and write, \
                     then accept the new permissions in the organization's installation settings",
                    self.org
                )));
            }
        }
        let mut url = self.url(&["orgs", &self.org, "teams"]);
        url.query_pairs_mut().append_pair("per_page", "1");
        let resp = self.send_url(Method::GET, url, None).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(ConnectorError::Unauthorized(format!(
                "github: organization {} is not visible with these credentials. Fix: check org, and that the App \
                 is installed on it (or the token's resource owner is that organization)",
                self.org
            ))),
            _ => Err(self.error(&Failure::read(resp).await)),
        }
    }
}

impl Github {
    // ---- read-back ----

    /// The login `grant` addresses, lowercased (GitHub logins are case-insensitive).
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        self.login(subject).map(str::to_ascii_lowercase)
    }

    /// Every member of the team: `GET /orgs/{org}/teams/{team_slug}/members?per_page=100&role=all`,
    /// following `Link: <...>; rel="next"`. As GitHub documents, this includes the
    /// members of child teams (as does the per-user membership read). A 404 is a missing team.
    async fn members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let team = self.team(target)?;
        let mut url = self.url(&["orgs", &self.org, "teams", team, "members"]);
        url.query_pairs_mut().append_pair("per_page", PER_PAGE).append_pair("role", "all");
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.send_url(Method::GET, url.clone(), None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ConnectorError::NotFound {
                    what: format!("github: team {team} in organization {}", self.org),
                });
            }
            if !resp.status().is_success() {
                return Err(self.error(&Failure::read(resp).await));
            }
            let next = next_link(resp.headers());
            let page: Vec<Value> = resp.json().await.map_err(|e| unreadable("team members", &e))?;
            for m in &page {
                let Some(login) = m.get("login").and_then(Value::as_str).filter(|l| !l.is_empty()) else {
                    return Err(ConnectorError::Permanent {
                        reason: format!("github: a member of team {team} was listed without a login"),
                    });
                };
                out.push(Member {
                    id: login.to_owned(),
                    keys: vec![login.to_ascii_lowercase()],
                    display: Some(login.to_owned()),
                });
            }
            match next {
                None => return Ok(out),
                Some(link) => url = self.same_origin(&link)?,
            }
        }
        Err(ConnectorError::Permanent {
            reason: format!("github: team {team} lists more than {MAX_PAGES} pages of members (gave up paging)"),
        })
    }

    /// A `Link` URL, refused unless it points at the configured API host (the
    /// bearer token is never sent anywhere else).
    fn same_origin(&self, link: &str) -> Result<Url, ConnectorError> {
        match Url::parse(link) {
            Ok(u) if u.origin() == self.base.origin() => Ok(u),
            _ => Err(ConnectorError::Permanent {
                reason: format!(
                    "github: the next-page link {link:?} is not on {}",
                    self.base.origin().ascii_serialization()
                ),
            }),
        }
    }

    /// The targets whose team membership (`GET .../teams/{slug}/memberships/{login}`)
    /// is `active`; a pending invitation or a 404 (no membership, unknown user or team) is not held.
    async fn memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let login = self.login(subject)?;
        let mut held = Vec::new();
        for t in targets {
            let team = self.team(t)?;
            if matches!(self.membership(team, login).await?, Some((_, state)) if state == "active") {
                held.push(t.name.clone());
            }
        }
        Ok(held)
    }

    /// Active when the login is a member of the organization (`GET /orgs/{org}/members/{username}`
    /// answers 204), else `NotFound` (404: unknown login, or not in this organization,
    /// which is all this connector can grant to). GitHub has no "suspended" state for
    /// organization members, so `Inactive` is never returned.
    async fn user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        let login = self.login(subject)?;
        let resp = self.send(Method::GET, &["orgs", &self.org, "members", login], None).await?;
        // A 302 (to public_members) means the credentials are not an org member; reqwest
        // follows it, and a public-membership answer would hide private members.
        if resp.url().path_segments().is_some_and(|mut s| s.any(|x| x == "public_members")) {
            return Err(ConnectorError::Unauthorized(format!(
                "github: GET /orgs/{}/members/{login} was redirected to public_members: the credentials are not \
                 a member of the organization, so private memberships cannot be read",
                self.org
            )));
        }
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(UserState::Active),
            StatusCode::NOT_FOUND => Ok(UserState::NotFound),
            _ => Err(self.error(&Failure::read(resp).await)),
        }
    }
}

/// The `rel="next"` URL of a `Link` header (RFC 8288, as GitHub sends it).
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers.get_all(reqwest::header::LINK).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(
        |part| {
            let (target, params) = part.trim().split_once(';')?;
            let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    p.trim()
                        .strip_prefix("rel=")
                        .is_some_and(|r| r.trim_matches('"').split_whitespace().any(|r| r == "next"))
                })
                .then(|| url.to_owned())
        },
    )
}

fn role(target: &Target) -> Result<&'static str, ConnectorError> {
    match target.role.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok("member"),
        Some(r) => ROLES.iter().copied().find(|k| k.eq_ignore_ascii_case(r)).ok_or_else(|| ConnectorError::Permanent {
            reason: format!("github: role {r:?} is not a team role; use member or maintainer"),
        }),
    }
}

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap_or(0)
}

super::connector_impl!(
    Github, "github", grant: do_grant, revoke: do_revoke, test: do_test,
    identity: identity, members: members, memberships: memberships, user_state: user_state
);
