//! The connector contract: how the worker asks a provider to grant or revoke.
//!
//! One implementation per provider (Okta, Entra ID, AWS, Google, Jira,
//! Confluence, Bitbucket, GitHub), each in its own file, built from the
//! application's `kind` through the registry [`KINDS`]. Every call is idempotent from the
//! worker's point of view: "already a member" is [`GrantOutcome::AlreadyGranted`]
//! and "not a member" is [`RevokeOutcome::AlreadyAbsent`], both successes.
//! Errors are classified so that the worker knows whether to retry.
//!
//! Adding a connector (say `kind = "acme"`) takes three steps:
//! 1. `src/connectors/acme.rs`: `pub const KEYS: &[&str]` (its provider-specific
//!    `[applications]` keys), a type with `from_config(name, app) -> Result<Self, String>`
//!    and `connector_impl!(Acme, "acme", grant: .., revoke: .., test: .., identity: .., members: ..,
//!    memberships: .., user_state: ..)` (the read-back that `grants reconcile` uses);
//! 2. here: `pub mod acme;` and one line in [`KINDS`] (`name`, `keys`, `build`); config
//!    parsing, key validation, `build` and `connectors test` all read that table;
//! 3. `src/connectors/acme/tests.rs`: its tests (`#[cfg(test)] mod tests;` in acme.rs).

pub(crate) mod atlassian;
pub mod aws;
pub mod bitbucket;
pub mod confluence;
pub mod entra;
pub mod github;
pub mod google;
pub mod http;
pub mod jira;
pub mod okta;
#[cfg(test)]
pub mod spec_check;

use crate::config::{ApplicationConfig, Config};
use crate::event::Person;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Who the access is for: the requester as JSM identifies them, plus the
/// ticket fields a connector may need to find them at the provider (the
/// application's `subject_field`, e.g. a GitHub login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub account_id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Ticket field id -> value.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl Subject {
    pub fn from_person(p: &Person) -> Self {
        Self {
            account_id: p.account_id.clone(),
            email: p.email.clone(),
            display_name: p.display_name.clone(),
            fields: BTreeMap::new(),
        }
    }

    /// The value of the application's `subject_field`, if it has one.
    pub fn field(&self, id: &str) -> Option<&str> {
        self.fields.get(id).map(String::as_str)
    }
}

/// The subject as the connectors of `application` see it: the requester plus the
/// value of the application's `subject_field` (a provider login) from the ticket.
/// Every identity that will reach a provider URL or body is checked here, before
/// any call: see [`check_identity`].
pub fn subject_of(
    config: &Config,
    application: &str,
    person: &Person,
    raw_fields: &serde_json::Map<String, serde_json::Value>,
) -> Result<Subject, String> {
    let mut subject = Subject::from_person(person);
    check_identity("the requester's account id", &subject.account_id)?;
    if let Some(email) = &subject.email {
        check_identity("the requester's email", email)?;
    }
    let field = config.applications.get(application).and_then(|a| http::setting(a, "subject_field"));
    if let Some(id) = field
        && let Some(v) = raw_fields.get(&id)
    {
        let value = v.as_str().or_else(|| v.get("value").and_then(|x| x.as_str()));
        // An empty field is "not given" (connectors fall back to the email); anything else must be usable.
        if let Some(value) = value.filter(|s| !s.trim().is_empty()) {
            check_identity(&format!("ticket field {id}"), value)?;
            subject.fields.insert(id, value.trim().to_owned());
        }
    }
    Ok(subject)
}

/// For a kind that knows users only by the ticket's `subject_field`
/// ([`Kind::needs_subject_field`]): `Err` says which field is empty.
pub fn require_subject_field(config: &Config, application: &str, subject: &Subject) -> Result<(), String> {
    let Some(app) = config.applications.get(application).filter(|a| a.kind.entry().needs_subject_field) else {
        return Ok(());
    };
    let Some(id) = http::setting(app, "subject_field") else { return Ok(()) };
    if subject.field(&id).is_some() {
        return Ok(());
    }
    Err(format!(
        "the ticket's field {id} ({application}'s subject_field, the user's {} login) is empty",
        app.kind.as_str()
    ))
}

/// Refuses identities that would address someone other than the person meant:
/// provider aliases for the caller (`me`, `self`), path segments (`.`, `..`,
/// anything with `/`, `\`, `?`, `#` or `%`), control characters, blank or
/// over-long values.
pub fn check_identity(what: &str, value: &str) -> Result<(), String> {
    let v = value.trim();
    let bad = |why: &str| Err(format!("{what} {value:?} {why}"));
    if v.is_empty() {
        return bad("is empty");
    }
    if v.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    if v.len() > 256 {
        return bad("is longer than 256 bytes");
    }
    if matches!(v.to_ascii_lowercase().as_str(), "me" | "self" | "." | "..") {
        return bad("is a provider alias or a path segment, not a user");
    }
    if v.contains(['/', '\\', '?', '#', '%']) || v.chars().any(char::is_whitespace) {
        return bad("contains a character that is never part of a user name (/ \\ ? # % or a space)");
    }
    Ok(())
}

/// What to grant: a group/team name or a permission level, with an optional role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub name: String,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantOutcome {
    Granted,
    AlreadyGranted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeOutcome {
    Revoked,
    AlreadyAbsent,
}

/// A classified provider failure. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Timeouts, connection errors, 5xx, rate limits: worth retrying.
    #[error("transient provider error: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The request can never succeed as is (4xx, refused group type, ...).
    #[error("permanent provider error: {reason}")]
    Permanent { reason: String },
    /// The user or the group does not exist at the provider.
    #[error("not found at the provider: {what}")]
    NotFound { what: String },
    /// The credentials are wrong, expired or lack a permission.
    #[error("provider refused the credentials: {0}")]
    Unauthorized(String),
}

impl ConnectorError {
    /// The error class recorded in audit rows and dead letters.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
            Self::NotFound { .. } => "not_found",
            Self::Unauthorized(_) => "unauthorized",
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A member of a managed target, as the provider lists it (read-back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The provider's own id of the user (Okta user id, Entra object id, GitHub
    /// login, Atlassian account id, Identity Center user id, ...).
    pub id: String,
    /// Every identifier the provider shows for the user that a subject could be
    /// addressed by (email, login, user name, account id), lowercased where the
    /// provider compares them case-insensitively. Reconcile matches a hold's
    /// [`Connector::identity`] against these.
    pub keys: Vec<String>,
    /// A name for people (display name or login), never used for matching.
    pub display: Option<String>,
}

/// Whether a user exists at the provider and may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    Active,
    /// Exists but suspended, deactivated, blocked or disabled.
    Inactive,
    NotFound,
}

/// One provider integration.
pub trait Connector: Send + Sync {
    /// The provider kind (`okta`, `entra`, ...), for logs and audit rows.
    fn kind(&self) -> &'static str;
    /// Adds the subject to the target. "Already a member" is success.
    fn grant<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<GrantOutcome, ConnectorError>>;
    /// Removes the subject from the target. "Not a member" is success.
    fn revoke<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ConnectorError>>;
    /// Authenticates and makes the provider's cheapest read call.
    fn test_connection(&self) -> BoxFuture<'_, Result<(), ConnectorError>>;

    // --- Read-back (drift, offboarding) ---------------------------------------------------

    /// The identifier this connector addresses `subject` by (what `grant` looks the
    /// user up with: email, login, user name or account id), in the form
    /// [`Member::keys`] uses. Pure: no I/O. `Err` when the subject lacks it.
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError>;

    /// Every member of `target` (every page, within the application's rate limit
    /// and concurrency). For a permission-level target, every user holding exactly
    /// that level. A target that does not exist is [`ConnectorError::NotFound`].
    fn members<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<Member>, ConnectorError>>;

    /// The names of the `targets` the subject is a member of (holds, for
    /// permission-level targets), through the provider's per-user read where it
    /// has one. A subject unknown to the provider holds none.
    fn memberships<'a>(
        &'a self,
        subject: &'a Subject,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<Vec<String>, ConnectorError>>;

    /// Whether the subject exists at the provider and is active.
    fn user_state<'a>(&'a self, subject: &'a Subject) -> BoxFuture<'a, Result<UserState, ConnectorError>>;
}

/// Implements [`Connector`] for a provider type from its inherent async
/// methods, so that each provider file holds only its logic.
macro_rules! connector_impl {
    (
        $ty:ty, $kind:expr, grant: $grant:ident, revoke: $revoke:ident, test: $test:ident,
        identity: $identity:ident, members: $members:ident, memberships: $memberships:ident, user_state: $state:ident
    ) => {
        $crate::connectors::connector_impl!(@impl $ty, $kind, $grant, $revoke, $test, {
            fn identity(
                &self,
                subject: &$crate::connectors::Subject,
            ) -> Result<String, $crate::connectors::ConnectorError> {
                self.$identity(subject)
            }

            fn members<'a>(
                &'a self,
                target: &'a $crate::connectors::Target,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<Vec<$crate::connectors::Member>, $crate::connectors::ConnectorError>,
            > {
                Box::pin(self.$members(target))
            }

            fn memberships<'a>(
                &'a self,
                subject: &'a $crate::connectors::Subject,
                targets: &'a [$crate::connectors::Target],
            ) -> futures_util::future::BoxFuture<'a, Result<Vec<String>, $crate::connectors::ConnectorError>> {
                Box::pin(self.$memberships(subject, targets))
            }

            fn user_state<'a>(
                &'a self,
                subject: &'a $crate::connectors::Subject,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<$crate::connectors::UserState, $crate::connectors::ConnectorError>,
            > {
                Box::pin(self.$state(subject))
            }
        });
    };
    (@impl $ty:ty, $kind:expr, $grant:ident, $revoke:ident, $test:ident, { $($read:tt)* }) => {
        impl $crate::connectors::Connector for $ty {
            $($read)*

            fn kind(&self) -> &'static str {
                $kind
            }

            fn grant<'a>(
                &'a self,
                subject: &'a $crate::connectors::Subject,
                target: &'a $crate::connectors::Target,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<$crate::connectors::GrantOutcome, $crate::connectors::ConnectorError>,
            > {
                Box::pin(self.$grant(subject, target))
            }

            fn revoke<'a>(
                &'a self,
                subject: &'a $crate::connectors::Subject,
                target: &'a $crate::connectors::Target,
            ) -> futures_util::future::BoxFuture<
                'a,
                Result<$crate::connectors::RevokeOutcome, $crate::connectors::ConnectorError>,
            > {
                Box::pin(self.$revoke(subject, target))
            }

            fn test_connection(
                &self,
            ) -> futures_util::future::BoxFuture<'_, Result<(), $crate::connectors::ConnectorError>> {
                Box::pin(self.$test())
            }
        }
    };
}
use connector_impl;

/// Connectors by application name (the keys of `[applications]`).
pub type Connectors = HashMap<String, Arc<dyn Connector>>;

/// Builds the connectors of every live (not dry-run) application, from its
/// `kind`, in this one place.
pub fn build(config: &Config) -> Result<Connectors, Vec<crate::config::Problem>> {
    let mut connectors = Connectors::new();
    let mut problems = Vec::new();
    for (name, app) in config.applications.iter().filter(|(_, app)| !app.dry_run) {
        match build_one(name, app) {
            Ok(c) => {
                connectors.insert(name.clone(), c);
            }
            Err(message) => problems.push(crate::config::Problem { key: format!("applications.{name:?}"), message }),
        }
    }
    if problems.is_empty() { Ok(connectors) } else { Err(problems) }
}

/// One application's connector, built by its kind's registry entry.
pub fn build_one(name: &str, app: &ApplicationConfig) -> Result<Arc<dyn Connector>, String> {
    (app.kind.entry().build)(name, app)
}

/// One connector kind: what `kind = "..."` names in `[applications]`.
pub struct Kind {
    /// The value of `kind` (lowercase); the connector's [`Connector::kind`] returns the same.
    pub name: &'static str,
    /// The provider-specific keys the kind accepts, besides the common ones.
    pub keys: &'static [&'static str],
    /// The provider knows users only by the ticket's `subject_field` value (a
    /// GitHub login): a request that leaves it empty cannot be granted.
    pub needs_subject_field: bool,
    /// Builds the connector of one live application.
    pub build: Build,
}

/// A kind's builder: the application's name and table in, its connector out (`Err`
/// names the key or secret at fault).
pub type Build = fn(&str, &ApplicationConfig) -> Result<Arc<dyn Connector>, String>;

/// Every connector kind; the order is the one unknown-kind errors list them in.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "okta",
        keys: okta::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(okta::Okta::from_config(n, a)),
    },
    Kind {
        name: "entra",
        keys: entra::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(entra::Entra::from_config(n, a)),
    },
    Kind { name: "aws", keys: aws::KEYS, needs_subject_field: false, build: |n, a| arc(aws::Aws::from_config(n, a)) },
    Kind {
        name: "google",
        keys: google::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(google::Google::from_config(n, a)),
    },
    Kind {
        name: "jira",
        keys: jira::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(jira::Jira::from_config(n, a)),
    },
    Kind {
        name: "confluence",
        keys: confluence::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(confluence::Confluence::from_config(n, a)),
    },
    Kind {
        name: "bitbucket",
        keys: bitbucket::KEYS,
        needs_subject_field: false,
        build: |n, a| arc(bitbucket::Bitbucket::from_config(n, a)),
    },
    Kind {
        name: "github",
        keys: github::KEYS,
        needs_subject_field: true,
        build: |n, a| arc(github::Github::from_config(n, a)),
    },
];

/// The registry entry named `name` (exact, lowercase match).
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

fn arc<C: Connector + 'static>(built: Result<C, String>) -> Result<Arc<dyn Connector>, String> {
    Ok(Arc::new(built?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_unique_lowercase_name_and_keys_apart_from_the_common_ones() {
        let mut names = std::collections::BTreeSet::new();
        for k in KINDS {
            assert!(names.insert(k.name), "kind {} is registered twice", k.name);
            assert!(
                !k.name.is_empty() && k.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "kind {:?} is not a lowercase name",
                k.name
            );
            let mut keys = std::collections::BTreeSet::new();
            for key in k.keys {
                assert!(keys.insert(key), "kind {} lists key {key} twice", k.name);
                assert!(
                    !crate::config::COMMON_APP_KEYS.contains(key) && !["kind", "owner", "dry_run"].contains(key),
                    "kind {} lists the common application key {key}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn a_kind_is_found_by_its_exact_name_only() {
        assert_eq!(kind("okta").map(|k| k.name), Some("okta"));
        assert!(kind("Okta").is_none() && kind("oktaa").is_none());
    }
}
