//! The decision: what an event asks of which provider, and whether policy
//! allows it. Pure: the caller supplies everything (config, the approver's Jira
//! groups), so every branch is a unit test.
//!
//! Security rule: a grant is decided only for a mapped approval, a matching
//! rule, and an approver that the rule allows and who (when the rule says so)
//! is not the requester. Everything else is a refusal *outcome*, audited with
//! its reason, never an error.

use crate::config::{AppStatus, Config, RequestAction};
use crate::event::{AccessEvent, Person};
use serde::Serialize;
use std::time::Duration;

/// What the worker should do with an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Add the requester to the rule's targets.
    Grant {
        application: String,
        access_level: String,
        targets: Vec<String>,
        subject: Person,
        approver: Person,
        #[serde(with = "opt_duration")]
        max_duration: Option<Duration>,
    },
    /// Replace the subject's earlier access to this application with this level.
    Change {
        application: String,
        access_level: String,
        targets: Vec<String>,
        subject: Person,
        approver: Person,
        #[serde(with = "opt_duration")]
        max_duration: Option<Duration>,
    },
    /// Remove access: what this ticket granted (`scope: ticket`, the ticket was
    /// revoked) or the subject's access to the rule's targets (`scope: subject`,
    /// an approved removal request).
    Revoke { application: String, access_level: String, targets: Vec<String>, subject: Person, scope: RevokeScope },
    /// Denied or declined: nothing to call; audited and told to the requester.
    NoAction { reason: String },
    /// Policy says no.
    Refused { reason: Refusal },
}

/// What a revoke releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeScope {
    /// The holds this ticket took (status `revoked`).
    Ticket,
    /// Every hold on the rule's targets older than the request (removal request).
    Subject,
}

/// Why policy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    MissingFields {
        errors: Vec<String>,
    },
    UnknownApplication {
        application: String,
    },
    NoRuleForAccessLevel {
        application: String,
        access_level: String,
    },
    NoRequester,
    NoApprover,
    ApproverNotAllowed {
        approver: String,
    },
    ApproverIsRequester {
        account_id: String,
    },
    /// `[jsm] verify_approval`: the live ticket does not confirm the payload.
    ApprovalNotConfirmed {
        reason: String,
    },
}

impl Refusal {
    /// A sentence for the audit row and the ticket.
    pub fn message(&self) -> String {
        match self {
            Self::MissingFields { errors } => {
                format!("the request is missing or has malformed fields: {}", errors.join(", "))
            }
            Self::UnknownApplication { application } => {
                format!("application {application:?} is not integrated with accessgov")
            }
            Self::NoRuleForAccessLevel { application, access_level } => {
                format!("no rule grants access level {access_level:?} for {application:?}")
            }
            Self::NoRequester => "the ticket names no requester".into(),
            Self::NoApprover => "the ticket carries no approver".into(),
            Self::ApproverNotAllowed { approver } => {
                format!("approver {approver} is not allowed to approve this access")
            }
            Self::ApproverIsRequester { account_id } => {
                format!("approver {account_id} is the requester; this access needs a different approver")
            }
            Self::ApprovalNotConfirmed { reason } => {
                format!("the ticket's live approval state does not confirm this request: {reason}")
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingFields { .. } => "missing_fields",
            Self::UnknownApplication { .. } => "unknown_application",
            Self::NoRuleForAccessLevel { .. } => "no_rule_for_access_level",
            Self::NoRequester => "no_requester",
            Self::NoApprover => "no_approver",
            Self::ApproverNotAllowed { .. } => "approver_not_allowed",
            Self::ApproverIsRequester { .. } => "approver_is_requester",
            Self::ApprovalNotConfirmed { .. } => "approval_not_confirmed",
        }
    }
}

mod opt_duration {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::config::duration::format(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Decides. `approver_groups` are the approver's Jira groups (for `group:` entries).
pub fn decide(event: &AccessEvent, config: &Config, approver_groups: &[String]) -> Decision {
    let refuse = |reason| Decision::Refused { reason };
    match event.app_status {
        AppStatus::Denied | AppStatus::Declined => {
            return Decision::NoAction {
                reason: format!("ticket {} reached status {:?}", event.ticket.key, event.status.to),
            };
        }
        AppStatus::Approved | AppStatus::Revoked => {}
    }
    if !event.errors.is_empty() {
        return refuse(Refusal::MissingFields { errors: event.errors.clone() });
    }
    let (Some(application), Some(access_level)) = (&event.application, &event.access_level) else {
        return refuse(Refusal::MissingFields { errors: vec!["missing_required:application".into()] });
    };
    if !config.applications.contains_key(application) {
        return refuse(Refusal::UnknownApplication { application: application.clone() });
    }
    let Some(rule) = config.rule_for(application, access_level) else {
        return refuse(Refusal::NoRuleForAccessLevel {
            application: application.clone(),
            access_level: access_level.clone(),
        });
    };
    let Some(subject) = event.requester.clone() else {
        return refuse(Refusal::NoRequester);
    };
    let application = application.clone();
    let access_level = rule.access_level.clone();
    let targets = rule.targets();

    // Removing access is never gated on an approver: it only reduces access.
    if event.app_status == AppStatus::Revoked {
        return Decision::Revoke { application, access_level, targets, subject, scope: RevokeScope::Ticket };
    }
    if event.action == RequestAction::Revoke {
        return Decision::Revoke { application, access_level, targets, subject, scope: RevokeScope::Subject };
    }

    let Some(approver) = event.approver.as_ref().map(|a| a.person.clone()) else {
        return refuse(Refusal::NoApprover);
    };
    if !approver_allowed(&rule.approvers, &approver, approver_groups) {
        return refuse(Refusal::ApproverNotAllowed { approver: approver.account_id.clone() });
    }
    if rule.require_distinct_approver && approver.account_id == subject.account_id {
        return refuse(Refusal::ApproverIsRequester { account_id: approver.account_id.clone() });
    }
    let max_duration = rule.max_duration;
    match event.action {
        RequestAction::Change => {
            Decision::Change { application, access_level, targets, subject, approver, max_duration }
        }
        _ => Decision::Grant { application, access_level, targets, subject, approver, max_duration },
    }
}

/// An approver matches an entry by account id, by email (case-insensitive), or
/// by membership of `group:<name>`.
pub fn approver_allowed(entries: &[String], approver: &Person, approver_groups: &[String]) -> bool {
    entries.iter().any(|entry| {
        if let Some(group) = entry.strip_prefix("group:") {
            approver_groups.iter().any(|g| g.eq_ignore_ascii_case(group))
        } else if entry.contains('@') {
            approver.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(entry))
        } else {
            entry == &approver.account_id
        }
    })
}

#[cfg(test)]
mod tests;
