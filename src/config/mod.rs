//! Configuration: one TOML file, then `ACCESSGOV_*` environment overrides for
//! URLs and listeners, then one [`Config::validate`] pass that `accessgov config
//! check` and every service start share.
//!
//! Rules of the house:
//! - every table is `deny_unknown_fields`, so a misspelled key is an error that
//!   names the key, never a silently ignored setting;
//! - secrets are never values in the file, only `*_env` / `*_file` references
//!   ([`secret::SecretRef`]), resolved once at start into types that do not print;
//! - cross-field rules (a rule names a configured application, ingress has an
//!   authentication method, referenced secrets exist) live in `validate`, each
//!   error carrying the dotted path of the offending key.

pub mod duration;
pub mod secret;

use secret::{SecretError, SecretRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "ACCESSGOV_CONFIG";
/// Default config path.
pub const DEFAULT_CONFIG_PATH: &str = "accessgov.toml";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ connection and topology.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// PostgreSQL connection.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The public webhook listener.
    #[serde(default)]
    pub ingress: IngressConfig,
    /// The operator listener (`/metrics`, health, later `/admin`).
    #[serde(default)]
    pub ops: OpsConfig,
    /// Worker concurrency and shutdown.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// How JSM tickets map onto access requests.
    pub jsm: JsmConfig,
    /// One entry per integrated application; keys are JSM "Application" values.
    #[serde(default)]
    pub applications: BTreeMap<String, ApplicationConfig>,
    /// (application, access level) -> targets and approval policy.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Birthright bundles: department -> (application, access level) list.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// Drift checks run by the workers (`grants reconcile` on a schedule).
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Leavers (`offboard` request types).
    #[serde(default)]
    pub offboard: OffboardConfig,
    /// The workers' own check of the audit chain.
    #[serde(default)]
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Verify the audit chain's tail (the rows since the last intact
    /// verification) this often, in one worker replica at a time; each run is
    /// recorded in `audit_verify_runs` and exported as `accessgov_audit_verify_ok`.
    /// The first run is at start. `"0s"` turns it off. Default `"1h"`.
    #[serde(deserialize_with = "duration::de")]
    pub verify_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { verify_interval: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffboardConfig {
    /// Also remove the leaver's memberships of managed targets (the rules'
    /// groups and permission levels) that accessgov did not grant: read back
    /// through each live application's connector first, and audited as such.
    #[serde(default)]
    pub include_unmanaged: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Run `grants reconcile` in the workers this often, one replica at a time
    /// (a PostgreSQL advisory lock). Unset: never.
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub interval: Option<Duration>,
    /// Also provision missing memberships again, as `grants reconcile --fix`.
    /// Default: report only (the `reconciled` audit row and a log line).
    #[serde(default)]
    pub fix: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL. Override: `ACCESSGOV_BROKER_URL`.
    pub url: String,
    /// Prefix of every exchange and queue name. Override: `ACCESSGOV_BROKER_PREFIX`.
    pub prefix: String,
    /// Deliveries the broker may push to one worker before acks.
    pub prefetch: u16,
    /// Retry ladder for transient failures; after the last step a request is dead-lettered.
    #[serde(deserialize_with = "duration::de_vec")]
    pub retry_delays: Vec<Duration>,
    /// How long ingress waits for the broker's publisher confirm before answering 503.
    #[serde(deserialize_with = "duration::de")]
    pub confirm_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "accessgov".into(),
            prefetch: 64,
            retry_delays: ["30s", "5m", "30m", "2h"].iter().map(|s| duration::parse(s).expect("static")).collect(),
            confirm_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL the services and operator commands connect with; in
    /// production the least-privilege runtime role [`crate::db::RUNTIME_ROLE`].
    /// Override: `ACCESSGOV_DATABASE_URL`.
    pub url: String,
    /// URL of the tables' owner, used only by `accessgov migrate` and `--migrate`
    /// (default: `url`). Override: `ACCESSGOV_DATABASE_MIGRATE_URL`.
    pub migrate_url: Option<String>,
    /// Env var holding the runtime role's password; `accessgov migrate` sets it.
    pub app_password_env: Option<String>,
    /// File holding the runtime role's password; `accessgov migrate` sets it.
    pub app_password_file: Option<String>,
    /// Connection pool size.
    pub max_connections: u32,
    /// PostgreSQL `statement_timeout` of every pooled connection: a statement
    /// running longer is cancelled (SQLSTATE 57014). `"0s"` turns it off. Reads
    /// that stream a whole table (`audit verify`, `audit export`) and
    /// migrations are exempt.
    #[serde(deserialize_with = "duration::de")]
    pub statement_timeout: Duration,
    /// PostgreSQL `lock_timeout`: waiting longer for a lock (row, table or
    /// advisory lock, such as the audit-chain lock) fails the statement (55P03).
    /// `"0s"` turns it off. Migrations are exempt.
    #[serde(deserialize_with = "duration::de")]
    pub lock_timeout: Duration,
    /// PostgreSQL `idle_in_transaction_session_timeout`: a session idle inside
    /// an open transaction this long is terminated, releasing its locks.
    /// `"0s"` turns it off.
    #[serde(deserialize_with = "duration::de")]
    pub idle_in_transaction_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/accessgov".into(),
            migrate_url: None,
            app_password_env: None,
            app_password_file: None,
            max_connections: 10,
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

impl DatabaseConfig {
    /// Where migrations run: `migrate_url`, else `url`.
    pub fn migrate_url(&self) -> &str {
        self.migrate_url.as_deref().unwrap_or(&self.url)
    }

    /// The runtime role's password, when `accessgov migrate` is to set it.
    pub fn app_password(&self) -> Option<SecretRef> {
        SecretRef::from_pair(self.app_password_env.as_deref(), self.app_password_file.as_deref())
    }

    /// The server-side limits every pooled connection carries.
    pub fn timeouts(&self) -> crate::db::Timeouts {
        crate::db::Timeouts::from(self)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Listen address. Override: `ACCESSGOV_INGRESS_LISTEN`.
    pub listen: SocketAddr,
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Env var holding the Jira admin webhook secret (`X-Hub-Signature`).
    pub hmac_secret_env: Option<String>,
    /// File holding the Jira admin webhook secret.
    pub hmac_secret_file: Option<String>,
    /// Env var holding the Automation bearer token (`Authorization: Bearer`).
    pub bearer_token_env: Option<String>,
    /// File holding the Automation bearer token.
    pub bearer_token_file: Option<String>,
    /// A connection must deliver a request's complete headers within this long,
    /// or it is closed without an answer (also closes idle keep-alive
    /// connections after this long). Bounds slowloris-style senders, which hold
    /// a connection without ever making a request.
    #[serde(deserialize_with = "duration::de")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this long, or it is answered
    /// 408 (which Jira retries). The body is read before a processing slot is
    /// taken, so a slow sender holds no slot.
    #[serde(deserialize_with = "duration::de")]
    pub body_read_timeout: Duration,
    /// Once the body is read: waiting for a slot, verifying, normalizing and
    /// publishing taking longer than this is answered 503 (so the sender retries).
    #[serde(deserialize_with = "duration::de")]
    pub request_timeout: Duration,
    /// Requests processed at once (verify, normalize, publish); more wait for a
    /// slot. Reading bodies takes no slot.
    pub max_concurrent_requests: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("static"),
            max_body_bytes: 1024 * 1024,
            hmac_secret_env: None,
            hmac_secret_file: None,
            bearer_token_env: None,
            bearer_token_file: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            max_concurrent_requests: 256,
        }
    }
}

impl IngressConfig {
    pub fn hmac_secret(&self) -> Option<SecretRef> {
        SecretRef::from_pair(self.hmac_secret_env.as_deref(), self.hmac_secret_file.as_deref())
    }
    pub fn bearer_token(&self) -> Option<SecretRef> {
        SecretRef::from_pair(self.bearer_token_env.as_deref(), self.bearer_token_file.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`. Override: `ACCESSGOV_OPS_LISTEN`.
    pub listen: SocketAddr,
    /// Env var holding the admin API bearer token.
    pub admin_token_env: Option<String>,
    /// File holding the admin API bearer token.
    pub admin_token_file: Option<String>,
    /// Env var holding the operator console's `viewer` token (read-only pages).
    /// The console (`/console`) is enabled exactly when a viewer or an operator
    /// token is configured; one that is configured but cannot be read stops the start.
    pub console_viewer_token_env: Option<String>,
    /// File holding the console's `viewer` token. A file is read again on every
    /// login and page: replacing its content revokes the sessions made with the
    /// old token, without a restart.
    pub console_viewer_token_file: Option<String>,
    /// Env var holding the console's `operator` token (read, plus replay,
    /// discard and "Test connection").
    pub console_operator_token_env: Option<String>,
    /// File holding the console's `operator` token (read again on every request,
    /// like `console_viewer_token_file`).
    pub console_operator_token_file: Option<String>,
    /// A console session unused this long ends (the next page asks to log in again).
    #[serde(deserialize_with = "duration::de")]
    pub console_session_idle: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".parse().expect("static"),
            admin_token_env: None,
            admin_token_file: None,
            console_viewer_token_env: None,
            console_viewer_token_file: None,
            console_operator_token_env: None,
            console_operator_token_file: None,
            console_session_idle: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Provider calls one worker process makes at once (bounded by a semaphore).
    /// Deliveries in flight are bounded by `broker.prefetch`, so that deciding
    /// and recording the next ones overlap the calls.
    pub concurrency: usize,
    /// On SIGTERM, how long in-flight deliveries may take before the rest is left for redelivery.
    #[serde(deserialize_with = "duration::de")]
    pub shutdown_grace: Duration,
    /// In-process retries of a transient provider failure before the message
    /// goes to the retry ladder (`broker.retry_delays`).
    #[serde(deserialize_with = "duration::de_vec")]
    pub inline_backoff: Vec<Duration>,
    /// A provider's Retry-After hint up to this long is waited out in process;
    /// longer hints go to the retry ladder.
    #[serde(deserialize_with = "duration::de")]
    pub max_inline_wait: Duration,
    /// How often expired time-bound access (`max_duration`) is looked for and revoked.
    #[serde(deserialize_with = "duration::de")]
    pub expiry_interval: Duration,
    /// How long a worker's claim on a provider call (an intent) lasts; a worker
    /// that dies mid-call leaves it to be re-run by another after this. Longer
    /// than a provider call with its in-process retries.
    #[serde(deserialize_with = "duration::de")]
    pub intent_lease: Duration,
    /// Deliveries recorded together in one transaction (group commit): one
    /// audit-chain lock and one WAL flush per batch instead of per event. At
    /// most half of `broker.prefetch`, so that a second batch forms meanwhile.
    pub batch_max: usize,
    /// How long a batch waits for deliveries the broker has not pushed yet.
    #[serde(deserialize_with = "duration::de")]
    pub batch_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            shutdown_grace: Duration::from_secs(30),
            inline_backoff: vec![Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(3)],
            max_inline_wait: Duration::from_secs(5),
            expiry_interval: Duration::from_secs(60),
            intent_lease: Duration::from_secs(120),
            batch_max: 64,
            batch_wait: Duration::from_millis(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsmConfig {
    /// Site URL, e.g. `https://example.atlassian.net` (used for write-back and verification).
    pub base_url: String,
    pub email_env: Option<String>,
    pub email_file: Option<String>,
    pub api_token_env: Option<String>,
    pub api_token_file: Option<String>,
    /// Re-read approvals and status through the JSM API before a grant. Unset, it
    /// is on exactly when JSM credentials resolve ([`Config::verify_approval_in_effect`]);
    /// `false` is allowed but warned about loudly by `config check` and the worker.
    #[serde(default)]
    pub verify_approval: Option<bool>,
    /// Accept the approver that an Automation body declares (custom body `approver`,
    /// the approver field of an Automation issue body) without `verify_approval`.
    /// Off by default: whoever holds the Automation bearer token could name anyone.
    #[serde(default)]
    pub trust_automation_approver: bool,
    /// An event whose own time (a webhook's `timestamp`, an Automation body's
    /// `updated`) is older than this when it arrives is ignored as `stale` (200):
    /// a late retry or a replayed capture must not act on a ticket long after the
    /// fact. Jira retries a delivery for about 30 minutes, Automation a rule for
    /// up to 7 days (the default), so shorter values drop legitimate retries.
    #[serde(default = "default_max_event_age", deserialize_with = "duration::de")]
    pub max_event_age: Duration,
    /// Keys of the JSM projects accessgov serves (the product's "Portal Settings"
    /// project). Events from any other project are ignored as `other_project`,
    /// whatever their request type. Empty: every project (`config check` warns).
    #[serde(default)]
    pub projects: Vec<String>,
    /// A `group:` approver expanded into the Approvers field (when
    /// `[jsm.fields] approver_groups` is not set) may have at most this many
    /// members; a larger group is not expanded and the routing says so.
    #[serde(default = "default_max_group_members")]
    pub max_group_members: usize,
    pub fields: FieldsConfig,
    /// The statuses of the rules' approval stages (derived, not a key): the
    /// ingress accepts a transition into one as a `stage` event.
    #[serde(skip)]
    pub stage_statuses: Vec<String>,
    /// Request type name -> action (`grant`, `revoke`, `change`, `offboard`).
    pub request_types: BTreeMap<String, RequestAction>,
    /// Status name -> meaning. Statuses not listed are ignored.
    pub statuses: BTreeMap<String, AppStatus>,
    #[serde(default)]
    pub write_back: WriteBackConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// JSM "Request Type" field id (vp-origin), e.g. `customfield_10010`.
    pub request_type: String,
    /// Single-select "Application" field id.
    pub application: String,
    /// Single-select "Access Type" field id.
    pub access_level: String,
    /// User-picker field id of the approver, or `assignee`.
    pub approver: Option<String>,
    /// JSM approvals field id (preferred source of the approver).
    pub approvals: Option<String>,
    /// Who access is for: `reporter` (default) or a user-picker field id.
    #[serde(default = "default_requester")]
    pub requester: String,
    /// Optional duration field (`7d`).
    pub duration: Option<String>,
    /// Optional department field (for `[[roles]]`).
    pub department: Option<String>,
    /// JSM "Approvers" multi-user picker: routing writes each rule's individual
    /// approvers (and expanded `group:` entries) into it on creation.
    pub approvers: Option<String>,
    /// JSM "Approver groups" multi-group picker: routing writes `group:` entries
    /// into it; unset, they are expanded to their members (`[jsm] max_group_members`).
    pub approver_groups: Option<String>,
    /// Optional cascading select "Application -> Access Type" kept in step with
    /// the rules by `accessgov jsm sync-options`.
    pub application_access: Option<String>,
    /// Ticket fields named by `field:<id>` approvers and requesters (derived,
    /// not a key): the ingress carries their values so the worker can read them.
    #[serde(skip)]
    pub person_fields: Vec<String>,
    /// The applications' `subject_field` ids (derived, not a key): the ingress
    /// carries their values in the event so connectors can find the user.
    #[serde(skip)]
    pub subject_fields: Vec<String>,
}

/// Automation retries a rule for up to 7 days.
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Below this, Jira's own retries (about 30 minutes) would be dropped as stale.
const MIN_MAX_EVENT_AGE: Duration = Duration::from_secs(3600);

fn default_max_event_age() -> Duration {
    DEFAULT_MAX_EVENT_AGE
}

/// Default of `[jsm] max_group_members`.
pub const DEFAULT_MAX_GROUP_MEMBERS: usize = 50;

fn default_max_group_members() -> usize {
    DEFAULT_MAX_GROUP_MEMBERS
}

fn default_requester() -> String {
    "reporter".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBackConfig {
    #[serde(default)]
    pub comment: bool,
    pub transition_on_success: Option<String>,
    pub transition_on_failure: Option<String>,
    /// Transition a ticket found invalid when it is created (unknown application
    /// or access level, missing field, requester not allowed), after telling the
    /// requester why (by transition or status name).
    pub transition_on_invalid: Option<String>,
    /// Comment on the granting ticket this long before a time-bound hold expires,
    /// once (e.g. `"3d"`); the expiry itself comments when it revokes.
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub expiry_notice: Option<Duration>,
}

/// What a request type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestAction {
    Grant,
    Revoke,
    Change,
    /// A leaver: once approved, every active hold of the subject, in every live
    /// application and whatever ticket took it, is revoked.
    Offboard,
    /// A joiner (or a mover): once approved by an approver the role allows, every
    /// item of the `[[roles]]` bundle the department field names is granted; for
    /// someone who holds an earlier role, only the difference changes.
    Onboard,
}

impl RequestAction {
    /// The lowercase name (as in config and events): a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Change => "change",
            Self::Offboard => "offboard",
            Self::Onboard => "onboard",
        }
    }
}

/// What a ticket status means to accessgov. `[jsm.statuses]` maps status names
/// to the first four; the ingress sets `created` (a new ticket, to route) and
/// `stage` (the ticket entered a rule's approval stage) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppStatus {
    Approved,
    Denied,
    Revoked,
    Declined,
    /// The ticket was created: route it (approvers, plan) or tell the requester why it is invalid.
    Created,
    /// The ticket entered the status of one of its rule's approval stages: set that stage's approvers.
    Stage,
}

impl AppStatus {
    /// Whether the event asks for routing (approvers, plan), not for a decision.
    pub fn is_routing(self) -> bool {
        matches!(self, Self::Created | Self::Stage)
    }
}

/// The provider behind an application: an entry of the connector registry
/// [`crate::connectors::KINDS`], read from `kind = "okta"` (an unknown name is a
/// parse error that lists the known ones).
#[derive(Clone, Copy)]
pub struct AppKind(&'static crate::connectors::Kind);

impl AppKind {
    /// The kind named `name`, if a connector of that kind is registered.
    pub fn named(name: &str) -> Option<Self> {
        crate::connectors::kind(name).map(Self)
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    /// Its registry entry (provider keys, builder).
    pub fn entry(self) -> &'static crate::connectors::Kind {
        self.0
    }

    /// Provider-specific keys this kind accepts (beyond the common ones).
    fn provider_keys(self) -> &'static [&'static str] {
        self.0.keys
    }
}

impl PartialEq for AppKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for AppKind {}

impl std::fmt::Debug for AppKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AppKind").field(&self.as_str()).finish()
    }
}

impl Serialize for AppKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AppKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::named(&name).ok_or_else(|| {
            let known: Vec<String> = crate::connectors::KINDS.iter().map(|k| format!("`{}`", k.name)).collect();
            serde::de::Error::custom(format!("unknown kind `{name}`, expected one of {}", known.join(", ")))
        })
    }
}

/// Keys every application accepts besides `kind`, `owner` and `dry_run`.
pub(crate) const COMMON_APP_KEYS: &[&str] =
    &["base_url", "subject_field", "rate_limit_per_second", "max_concurrent_calls", "timeout"];

/// One integrated application. Provider keys are kept as a table and checked
/// against the kind's key list in [`Config::validate`] (the connector issues
/// turn them into typed per-provider settings).
#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationConfig {
    pub kind: AppKind,
    /// Who owns this integration (shown in summaries and write-back).
    pub owner: Option<String>,
    /// Evaluate and audit everything, call nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Provider-specific settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl ApplicationConfig {
    /// The secret references this application names (`<name>_env` / `<name>_file`).
    pub fn secret_refs(&self) -> Vec<(String, SecretRef)> {
        let mut out = Vec::new();
        for (key, value) in &self.settings {
            if let Some(v) = value.as_str() {
                if key.ends_with("_env") {
                    out.push((key.clone(), SecretRef::Env(v.to_owned())));
                } else if key.ends_with("_file") {
                    out.push((key.clone(), SecretRef::File(v.into())));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A key of `[applications]`.
    pub application: String,
    /// The JSM "Access Type" value this rule covers.
    pub access_level: String,
    /// Groups/teams to add the subject to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Or a provider permission level (Bitbucket `read|write|admin`).
    pub permission: Option<String>,
    /// Membership role where the provider has one (GitHub `maintainer`, Google `MANAGER`).
    pub role: Option<String>,
    /// Allowed approvers: account ids, emails, `group:<jira group>`, or
    /// `field:<customfield id>` (the user in that ticket field, e.g. the
    /// requester's manager). Empty: the application's `owner`.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Who may request this access level: account ids, emails, `group:` or
    /// `field:` entries. Empty: anyone who can raise the request.
    #[serde(default)]
    pub requesters: Vec<String>,
    /// Post the plan (what approval will change) as an internal comment when
    /// the ticket is routed.
    #[serde(default = "yes")]
    pub plan: bool,
    /// Multi-stage approval, in order: each stage's JSM status, approvers and
    /// `min_approvals`. A grant needs every stage approved (checked against the
    /// live JSM approvals). Empty: one stage, with `approvers`.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Refuse when the approver is the requester.
    #[serde(default = "yes")]
    pub require_distinct_approver: bool,
    /// Longest time the access may be held; expiry revokes it.
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub max_duration: Option<Duration>,
    /// Only accessgov grants these targets: `grants reconcile --fix` (and a
    /// scheduled reconcile with `fix = true`) removes members no ticket accounts for.
    #[serde(default)]
    pub exclusive: bool,
}

fn yes() -> bool {
    true
}

/// One approval stage of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The JSM status of this approval step (the approval's `name`).
    pub status: String,
    /// Who may approve this stage (as a rule's `approvers`).
    pub approvers: Vec<String>,
    /// Approving approvers this stage needs (default 1).
    #[serde(default = "one")]
    pub min_approvals: usize,
}

fn one() -> usize {
    1
}

impl RuleConfig {
    /// Who may approve (single-stage rules): the rule's approvers, else the
    /// application's owner.
    pub fn effective_approvers(&self, app: Option<&ApplicationConfig>) -> std::borrow::Cow<'_, [String]> {
        if !self.approvers.is_empty() {
            return std::borrow::Cow::Borrowed(&self.approvers);
        }
        std::borrow::Cow::Owned(app.and_then(|a| a.owner.clone()).into_iter().collect())
    }

    /// Targets this rule grants: the groups, or the permission level.
    pub fn targets(&self) -> Vec<String> {
        match &self.permission {
            Some(p) => vec![p.clone()],
            None => self.groups.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The value of the department (or job role) field that selects this bundle.
    pub department: String,
    pub grants: Vec<RoleGrant>,
    /// Who may approve onboarding into this role (account ids, emails, `group:`,
    /// `field:`); never the subject.
    #[serde(default)]
    pub approvers: Vec<String>,
}

impl RoleConfig {
    /// The bundle as (application, access level) pairs.
    pub fn items(&self) -> Vec<(String, String)> {
        self.grants.iter().map(|g| (g.application.clone(), g.access_level.clone())).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    pub application: String,
    pub access_level: String,
}

/// One problem found in a config, with the dotted path of the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass --config FILE or set ACCESSGOV_CONFIG")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path} has {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<Problem> },
}

/// Looks up an environment variable; injected so tests need not mutate the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads, overrides from the environment and validates the structure.
    /// Secrets are checked where they are used ([`Config::check_secrets`] for
    /// `config check`; each role resolves its own at start).
    pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse { path: shown.clone(), message })?;
        config.apply_env_overrides(env);
        let problems = config.validate();
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: shown, problems }) }
    }

    /// Parses TOML text; the error names the key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: Self = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let mut ids: Vec<String> = config
            .applications
            .values()
            .filter_map(|a| a.settings.get("subject_field")?.as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        config.jsm.fields.subject_fields = ids;
        let mut persons: Vec<String> = config
            .rules
            .iter()
            .flat_map(|r| r.approvers.iter().chain(&r.requesters).chain(r.stages.iter().flat_map(|s| &s.approvers)))
            .filter_map(|e| e.strip_prefix("field:").map(|f| f.trim().to_owned()))
            .collect();
        persons.sort();
        persons.dedup();
        config.jsm.fields.person_fields = persons;
        let mut stages: Vec<String> =
            config.rules.iter().flat_map(|r| r.stages.iter().map(|s| s.status.clone())).collect();
        stages.sort();
        stages.dedup();
        config.jsm.stage_statuses = stages;
        Ok(config)
    }

    /// `ACCESSGOV_*` overrides for URLs and listeners.
    pub fn apply_env_overrides(&mut self, env: EnvLookup<'_>) {
        if let Some(v) = env("ACCESSGOV_BROKER_URL") {
            self.broker.url = v;
        }
        if let Some(v) = env("ACCESSGOV_BROKER_PREFIX") {
            self.broker.prefix = v;
        }
        if let Some(v) = env("ACCESSGOV_DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = env("ACCESSGOV_DATABASE_MIGRATE_URL") {
            self.database.migrate_url = Some(v);
        }
        if let Some(v) = env("ACCESSGOV_INGRESS_LISTEN").and_then(|v| v.parse().ok()) {
            self.ingress.listen = v;
        }
        if let Some(v) = env("ACCESSGOV_OPS_LISTEN").and_then(|v| v.parse().ok()) {
            self.ops.listen = v;
        }
    }

    /// Cross-field rules that need no environment. Empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut add = |key: String, message: String| p.push(Problem { key, message });

        let prefix_ok = !self.broker.prefix.is_empty()
            && self.broker.prefix.len() <= 100
            && self.broker.prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !prefix_ok {
            add("broker.prefix".into(), "must be 1-100 characters of letters, digits, '_', '-' or '.'".into());
        }
        if self.broker.retry_delays.is_empty() || self.broker.retry_delays.iter().any(|d| d.is_zero()) {
            add("broker.retry_delays".into(), "needs at least one non-zero delay, e.g. [\"30s\", \"5m\"]".into());
        }
        if self.broker.prefetch == 0 {
            add("broker.prefetch".into(), "must be at least 1".into());
        }
        for (key, d) in [
            ("ingress.header_read_timeout", self.ingress.header_read_timeout),
            ("ingress.body_read_timeout", self.ingress.body_read_timeout),
            ("ingress.request_timeout", self.ingress.request_timeout),
        ] {
            if d.is_zero() {
                add(key.into(), "must be longer than zero, e.g. \"10s\"".into());
            }
        }
        if self.worker.concurrency == 0 {
            add("worker.concurrency".into(), "must be at least 1".into());
        }
        if self.ops.console_session_idle.is_zero() || self.ops.console_session_idle > Duration::from_secs(86_400) {
            add("ops.console_session_idle".into(), "must be between 1s and 24h, e.g. \"30m\"".into());
        }
        if self.ingress.hmac_secret().is_none() && self.ingress.bearer_token().is_none() {
            add(
                "ingress".into(),
                "no authentication method: set hmac_secret_env (Jira webhook secret) and/or \
                 bearer_token_env (Automation token)"
                    .into(),
            );
        }
        for (section, env, file) in [
            ("ingress.hmac_secret", &self.ingress.hmac_secret_env, &self.ingress.hmac_secret_file),
            ("ingress.bearer_token", &self.ingress.bearer_token_env, &self.ingress.bearer_token_file),
            ("ops.admin_token", &self.ops.admin_token_env, &self.ops.admin_token_file),
            ("ops.console_viewer_token", &self.ops.console_viewer_token_env, &self.ops.console_viewer_token_file),
            ("ops.console_operator_token", &self.ops.console_operator_token_env, &self.ops.console_operator_token_file),
            ("jsm.api_token", &self.jsm.api_token_env, &self.jsm.api_token_file),
            ("jsm.email", &self.jsm.email_env, &self.jsm.email_file),
            ("database.app_password", &self.database.app_password_env, &self.database.app_password_file),
        ] {
            if env.is_some() && file.is_some() {
                add(format!("{section}_file"), format!("set either {section}_env or {section}_file, not both"));
            }
        }
        if self.jsm.request_types.is_empty() {
            add("jsm.request_types".into(), "map at least one request type name to grant, revoke or change".into());
        }
        if self.jsm.max_event_age < MIN_MAX_EVENT_AGE {
            add(
                "jsm.max_event_age".into(),
                "must be at least 1h: Jira retries a delivery for about 30 minutes and Automation a rule \
                 for up to 7 days (the default, \"7d\")"
                    .into(),
            );
        }
        for (name, status) in &self.jsm.statuses {
            if status.is_routing() {
                add(
                    format!("jsm.statuses.{name:?}"),
                    "created and stage are set by accessgov itself; map statuses to approved, denied, \
                     revoked or declined"
                        .into(),
                );
            }
        }
        for (i, key) in self.jsm.projects.iter().enumerate() {
            if key.trim().is_empty() {
                add(format!("jsm.projects[{i}]"), "is empty; give a project key such as \"ACC\"".into());
            }
        }
        if self.jsm.statuses.is_empty() {
            add("jsm.statuses".into(), "map at least one status name to approved, denied, revoked or declined".into());
        }

        let configured: Vec<&str> = self.applications.keys().map(String::as_str).collect();
        for (name, app) in &self.applications {
            let allowed: BTreeSet<&str> = COMMON_APP_KEYS.iter().chain(app.kind.provider_keys()).copied().collect();
            for key in app.settings.keys() {
                if !allowed.contains(key.as_str()) {
                    add(
                        format!("applications.{name:?}.{key}"),
                        format!(
                            "unknown key for kind {}; accepted keys: kind, owner, dry_run, {}",
                            app.kind.as_str(),
                            allowed.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
            for (key, value) in &app.settings {
                if (key.ends_with("_env") || key.ends_with("_file")) && !value.is_str() {
                    add(
                        format!("applications.{name:?}.{key}"),
                        "must be a string naming an environment variable or a file".into(),
                    );
                }
            }
        }

        let mut seen = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !self.applications.contains_key(&rule.application) {
                add(
                    format!("rules[{i}].application"),
                    format!(
                        "names application {:?}, which is not configured under [applications] \
                         (configured: {})",
                        rule.application,
                        if configured.is_empty() { "none".into() } else { configured.join(", ") }
                    ),
                );
            }
            if rule.groups.is_empty() && rule.permission.is_none() {
                add(format!("rules[{i}]"), "grants nothing: set groups = [...] or permission = \"...\"".into());
            }
            if !rule.groups.is_empty() && rule.permission.is_some() {
                add(format!("rules[{i}]"), "set groups or permission, not both".into());
            }
            let owner = self.applications.get(&rule.application).and_then(|a| a.owner.as_ref());
            if rule.approvers.is_empty() && rule.stages.is_empty() && owner.is_none() {
                add(
                    format!("rules[{i}].approvers"),
                    "lists no approver and the application has no owner, so no request could ever be \
                     granted; add account ids, emails, group:<jira group> or field:<customfield id>"
                        .into(),
                );
            }
            let entries = rule.approvers.iter().map(|e| (format!("rules[{i}].approvers"), e));
            let entries = entries.chain(rule.requesters.iter().map(|e| (format!("rules[{i}].requesters"), e)));
            let stage_entries =
                rule.stages.iter().enumerate().flat_map(|(j, s)| {
                    s.approvers.iter().map(move |e| (format!("rules[{i}].stages[{j}].approvers"), e))
                });
            for (key, entry) in entries.chain(stage_entries) {
                for prefix in ["field:", "group:"] {
                    if entry.strip_prefix(prefix).is_some_and(|rest| rest.trim().is_empty()) {
                        add(key.clone(), format!("{entry:?} names no {}", prefix.trim_end_matches(':')));
                    }
                }
            }
            if !rule.stages.is_empty() && self.jsm.verify_approval == Some(false) {
                add(
                    format!("rules[{i}].stages"),
                    "multi-stage approval is checked against the live JSM approvals: it needs \
                     [jsm] verify_approval (unset or true) and JSM credentials"
                        .into(),
                );
            }
            let mut stage_names = BTreeSet::new();
            for (j, stage) in rule.stages.iter().enumerate() {
                if stage.approvers.is_empty() {
                    add(format!("rules[{i}].stages[{j}].approvers"), "lists no approver".into());
                }
                if stage.min_approvals == 0 {
                    add(format!("rules[{i}].stages[{j}].min_approvals"), "must be at least 1".into());
                }
                if !stage_names.insert(stage.status.to_ascii_lowercase()) {
                    add(format!("rules[{i}].stages[{j}].status"), "a second stage with this status".into());
                }
                if self.jsm.statuses.keys().any(|k| k.eq_ignore_ascii_case(&stage.status)) {
                    add(
                        format!("rules[{i}].stages[{j}].status"),
                        format!(
                            "{:?} is also in [jsm.statuses]; an approval stage's status must not be a \
                             deciding status (map the status the last stage leads to instead)",
                            stage.status
                        ),
                    );
                }
            }
            if !seen.insert((rule.application.as_str(), rule.access_level.as_str())) {
                add(
                    format!("rules[{i}]"),
                    format!(
                        "a second rule for application {:?} and access level {:?}; merge them",
                        rule.application, rule.access_level
                    ),
                );
            }
        }
        let onboarding = self.jsm.request_types.values().any(|a| *a == RequestAction::Onboard);
        if onboarding && self.jsm.fields.department.is_none() {
            add(
                "jsm.fields.department".into(),
                "an onboard request type selects its [[roles]] bundle by the department field; set its id".into(),
            );
        }
        for (i, role) in self.roles.iter().enumerate() {
            if onboarding && role.approvers.is_empty() {
                add(
                    format!("roles[{i}].approvers"),
                    "lists no approver, so no onboarding into this role could ever be granted".into(),
                );
            }
            for (j, g) in role.grants.iter().enumerate() {
                if !seen.contains(&(g.application.as_str(), g.access_level.as_str())) {
                    add(
                        format!("roles[{i}].grants[{j}]"),
                        format!(
                            "no rule covers application {:?} with access level {:?}",
                            g.application, g.access_level
                        ),
                    );
                }
            }
        }
        p
    }

    /// Checks that every secret this config will use can be read now.
    /// Application secrets are only needed when the application is live (not dry-run).
    pub fn check_secrets(&self, env: EnvLookup<'_>) -> Vec<Problem> {
        let mut refs: Vec<(String, SecretRef)> = Vec::new();
        if let Some(r) = self.ingress.hmac_secret() {
            refs.push(("ingress.hmac_secret".into(), r));
        }
        if let Some(r) = self.ingress.bearer_token() {
            refs.push(("ingress.bearer_token".into(), r));
        }
        if let Some(r) = self.ops_admin_token() {
            refs.push(("ops.admin_token".into(), r));
        }
        if let Some(r) = self.console_viewer_token() {
            refs.push(("ops.console_viewer_token".into(), r));
        }
        if let Some(r) = self.console_operator_token() {
            refs.push(("ops.console_operator_token".into(), r));
        }
        if let Some(r) = self.database.app_password() {
            refs.push(("database.app_password".into(), r));
        }
        if self.jsm.verify_approval == Some(true) {
            match self.jsm_api_token() {
                Some(r) => refs.push(("jsm.api_token".into(), r)),
                None => {
                    return vec![Problem {
                        key: "jsm.api_token_env".into(),
                        message: "verify_approval = true needs JSM API credentials".into(),
                    }];
                }
            }
        }
        for (name, app) in &self.applications {
            if !app.dry_run {
                for (key, r) in app.secret_refs() {
                    refs.push((format!("applications.{name:?}.{key}"), r));
                }
            }
        }
        refs.into_iter()
            .filter_map(|(key, r)| {
                r.resolve_with(env).err().map(|e: SecretError| Problem { key, message: e.to_string() })
            })
            .collect()
    }

    pub fn ops_admin_token(&self) -> Option<SecretRef> {
        SecretRef::from_pair(self.ops.admin_token_env.as_deref(), self.ops.admin_token_file.as_deref())
    }

    /// The console's `viewer` token (`[ops] console_viewer_token_env` / `_file`).
    pub fn console_viewer_token(&self) -> Option<SecretRef> {
        SecretRef::from_pair(
            self.ops.console_viewer_token_env.as_deref(),
            self.ops.console_viewer_token_file.as_deref(),
        )
    }

    /// The console's `operator` token (`[ops] console_operator_token_env` / `_file`).
    pub fn console_operator_token(&self) -> Option<SecretRef> {
        SecretRef::from_pair(
            self.ops.console_operator_token_env.as_deref(),
            self.ops.console_operator_token_file.as_deref(),
        )
    }

    /// Whether the worker re-reads approvals through the JSM API before a grant:
    /// as configured, else on whenever JSM credentials are available.
    pub fn verify_approval_in_effect(&self, jsm_credentials: bool) -> bool {
        self.jsm.verify_approval.unwrap_or(jsm_credentials)
    }

    /// A loud warning when grants rest on the payload alone, `None` when verification is on.
    pub fn verify_approval_warning(&self, jsm_credentials: bool) -> Option<String> {
        if self.verify_approval_in_effect(jsm_credentials) {
            return None;
        }
        let why = if self.jsm.verify_approval == Some(false) {
            "[jsm] verify_approval = false"
        } else {
            "no JSM credentials are available (jsm.email_env / jsm.api_token_env)"
        };
        Some(format!(
            "APPROVALS ARE NOT VERIFIED: {why}. Grants rest on the webhook payload alone: an \
             approver-field approval counts only when a signed webhook shows the approver making the \
             transition, and an Automation body's approver is refused{}. Configure JSM credentials \
             and leave verify_approval unset (or true).",
            if self.jsm.trust_automation_approver {
                ", except Automation-declared approvers (trust_automation_approver = true)"
            } else {
                ""
            }
        ))
    }

    pub fn jsm_api_token(&self) -> Option<SecretRef> {
        SecretRef::from_pair(self.jsm.api_token_env.as_deref(), self.jsm.api_token_file.as_deref())
    }

    /// The rule for an (application, access level), if any. Access levels match case-insensitively.
    pub fn rule_for(&self, application: &str, access_level: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| r.application == application && r.access_level.eq_ignore_ascii_case(access_level))
    }

    /// A summary for `config check`, safe to print (names of secrets, never values).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "broker     {} (prefix {:?}, prefetch {})",
            redact_url(&self.broker.url),
            self.broker.prefix,
            self.broker.prefetch
        );
        let _ = writeln!(
            s,
            "           retry ladder {}",
            self.broker.retry_delays.iter().map(|d| duration::format(*d)).collect::<Vec<_>>().join(" -> ")
        );
        let _ = writeln!(s, "database   {} (pool {})", redact_url(&self.database.url), self.database.max_connections);
        let _ = writeln!(
            s,
            "           migrations as {}{}",
            redact_url(self.database.migrate_url()),
            self.database
                .app_password()
                .map(|r| format!(", sets the {} password from {}", crate::db::RUNTIME_ROLE, r.describe()))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "           statement_timeout {}, lock_timeout {}, idle_in_transaction_timeout {}",
            duration::format(self.database.statement_timeout),
            duration::format(self.database.lock_timeout),
            duration::format(self.database.idle_in_transaction_timeout)
        );
        let auth: Vec<String> = [
            self.ingress.hmac_secret().map(|r| format!("HMAC signature ({})", r.describe())),
            self.ingress.bearer_token().map(|r| format!("bearer token ({})", r.describe())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(s, "ingress    {} , auth: {}", self.ingress.listen, auth.join(" + "));
        let _ = writeln!(
            s,
            "ops        {} , admin API {}",
            self.ops.listen,
            self.ops_admin_token()
                .map_or("disabled (no admin token)".into(), |r| format!("token from {}", r.describe()))
        );
        let console: Vec<String> = [
            self.console_viewer_token().map(|r| format!("viewer token from {}", r.describe())),
            self.console_operator_token().map(|r| format!("operator token from {}", r.describe())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(
            s,
            "           console {}",
            if console.is_empty() {
                "disabled (no console token)".to_owned()
            } else {
                format!(
                    "/console, {}, idle logout {}",
                    console.join(", "),
                    duration::format(self.ops.console_session_idle)
                )
            }
        );
        let _ = writeln!(
            s,
            "jsm        {} ; {} request type(s), {} status(es)",
            self.jsm.base_url,
            self.jsm.request_types.len(),
            self.jsm.statuses.len()
        );
        let _ = writeln!(s, "applications ({}):", self.applications.len());
        for (name, app) in &self.applications {
            let rules = self.rules.iter().filter(|r| &r.application == name).count();
            let _ = writeln!(
                s,
                "  {name:<20} kind {:<10} {:<8} {rules} rule(s){}",
                app.kind.as_str(),
                if app.dry_run { "dry-run" } else { "live" },
                app.owner.as_deref().map(|o| format!(", owner {o}")).unwrap_or_default()
            );
        }
        let _ = writeln!(s, "rules {} , roles {}", self.rules.len(), self.roles.len());
        s
    }
}

/// Hides the password of a URL for display.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &creds[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
