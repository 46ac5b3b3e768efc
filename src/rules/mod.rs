//! The decision: what an event asks of which provider, and whether policy
//! allows it. Pure: the caller supplies everything (config, the approver's Jira
//! groups), so every branch is a unit test.
//!
//! Security rule: a grant is decided only for a mapped approval, a matching
//! rule, and an approver that the rule allows and who (when the rule says so)
//! is not the requester. Everything else is a refusal *outcome*, audited with
//! its reason, never an error.

use crate::config::{AppStatus, Config, RequestAction, RuleConfig};
use crate::event::{AccessEvent, ApproverSource, Authenticity, Person, Source};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the decision needs beyond the event and the config; the caller reads it
/// (the worker from JSM and the ledger, `simulate` leaves it empty).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Jira groups of the candidate approvers (account id -> groups), for `group:` entries.
    pub approver_groups: BTreeMap<String, Vec<String>>,
    /// `[jsm] verify_approval` is in effect: the worker confirms the approval on the
    /// live ticket before any grant, so an approver the payload alone cannot prove
    /// (the approver field, an Automation body's declared approver) may be accepted
    /// pending that confirmation.
    pub verify_approval: bool,
    /// When this ticket's access was last taken away (revoked or expired): an
    /// approval completed before then is spent and never grants again.
    pub last_revoke_at: Option<DateTime<Utc>>,
    /// The ticket's live JSM approvals, read for a rule with approval stages
    /// (`None`: not read, so a multi-stage rule cannot grant).
    pub live_approvals: Option<Vec<crate::jsm::Approval>>,
}

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
        /// How long this grant lasts: the ticket's duration capped by `max_duration` (`None`: until revoked).
        #[serde(with = "opt_duration")]
        lasts: Option<Duration>,
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
        #[serde(with = "opt_duration")]
        lasts: Option<Duration>,
    },
    /// Remove access: what this ticket granted (`scope: ticket`, the ticket was
    /// revoked) or the subject's access to the rule's targets (`scope: subject`,
    /// an approved removal request).
    Revoke { application: String, access_level: String, targets: Vec<String>, subject: Person, scope: RevokeScope },
    /// Provision again what the ledger holds and the provider lost (`grants
    /// reconcile --fix`): no ledger change, only the provider calls.
    Repair { application: String, access_level: String, targets: Vec<String>, subject: Person },
    /// Remove memberships accessgov did not grant (a leaver's, `[offboard]
    /// include_unmanaged`): no ledger change, only the provider calls.
    Remove { application: String, access_level: String, targets: Vec<String>, subject: Person },
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
    /// The deciding JSM approval is not `approved` (declined or pending), or no
    /// approver's own decision in it is `approved`.
    ApprovalNotApproved {
        approval: Option<String>,
        decision: String,
    },
    /// The approver is only named (approver field, or declared by an Automation
    /// body), not shown to have decided, and nothing confirms it.
    ApproverUnconfirmed {
        approver: String,
        reason: String,
    },
    /// The approval was completed before this ticket's access was last taken away.
    ApprovalReused {
        approval: Option<String>,
        revoked_at: DateTime<Utc>,
    },
    /// The ticket's requested duration cannot be read (or overflows).
    InvalidDuration {
        value: String,
        reason: String,
    },
    /// The provider identity from the ticket cannot be used safely.
    InvalidIdentity {
        reason: String,
    },
    /// An onboarding's department names no `[[roles]]` bundle.
    UnknownRole {
        department: String,
    },
    /// The rule's `requesters` allow-list does not include the requester.
    RequesterNotAllowed {
        requester: String,
    },
    /// A multi-stage rule: a stage lacks enough approvals by its allowed approvers.
    StageNotApproved {
        stage: String,
        needed: usize,
        approved_by: Vec<String>,
    },
    /// The target is already held for this requester under another provider
    /// identity (another `subject_field` value); granting would add a hold
    /// without provisioning the new identity.
    IdentityMismatch {
        target: String,
        held: BTreeMap<String, String>,
        requested: BTreeMap<String, String>,
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
            Self::ApprovalNotApproved { approval, decision } => format!(
                "the ticket's approval{} is {decision}, not approved by an approver; access is granted only \
                 for an approved approval",
                approval.as_deref().map(|a| format!(" {a}")).unwrap_or_default()
            ),
            Self::ApproverUnconfirmed { approver, reason } => {
                format!("approver {approver} is named but not shown to have approved: {reason}")
            }
            Self::ApprovalReused { approval, revoked_at } => format!(
                "the approval{} was given before this ticket's access was revoked at {revoked_at}; \
                 a new approval is needed",
                approval.as_deref().map(|a| format!(" {a}")).unwrap_or_default()
            ),
            Self::InvalidDuration { value, reason } => {
                format!("the requested duration {value:?} cannot be used: {reason}")
            }
            Self::InvalidIdentity { reason } => format!("the provider identity cannot be used: {reason}"),
            Self::UnknownRole { department } => {
                format!("no [[roles]] bundle is configured for department {department:?}")
            }
            Self::RequesterNotAllowed { requester } => {
                format!("{requester} may not request this access level; ask the application's owner")
            }
            Self::StageNotApproved { stage, needed, approved_by } => format!(
                "approval stage {stage:?} needs {needed} approval(s) by its allowed approvers, and has {}{}",
                approved_by.len(),
                if approved_by.is_empty() { String::new() } else { format!(" ({})", approved_by.join(", ")) }
            ),
            Self::IdentityMismatch { target, held, requested } => format!(
                "{target} is already held for this requester as {} but this ticket names {}; revoke the \
                 existing access first, or correct the ticket",
                identity_text(held),
                identity_text(requested)
            ),
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
            Self::ApprovalNotApproved { .. } => "approval_not_approved",
            Self::ApproverUnconfirmed { .. } => "approver_unconfirmed",
            Self::ApprovalReused { .. } => "approval_reused",
            Self::InvalidDuration { .. } => "invalid_duration",
            Self::InvalidIdentity { .. } => "invalid_identity",
            Self::UnknownRole { .. } => "unknown_role",
            Self::RequesterNotAllowed { .. } => "requester_not_allowed",
            Self::StageNotApproved { .. } => "stage_not_approved",
            Self::IdentityMismatch { .. } => "identity_mismatch",
        }
    }
}

fn identity_text(fields: &BTreeMap<String, String>) -> String {
    if fields.is_empty() {
        return "the JSM account alone".into();
    }
    fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ")
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

/// Decides.
pub fn decide(event: &AccessEvent, config: &Config, facts: &Facts) -> Decision {
    let refuse = |reason| Decision::Refused { reason };
    match event.app_status {
        AppStatus::Denied | AppStatus::Declined => {
            return Decision::NoAction {
                reason: format!("ticket {} reached status {:?}", event.ticket.key, event.status.to),
            };
        }
        AppStatus::Created | AppStatus::Stage => {
            return Decision::NoAction {
                reason: format!("ticket {} is routed, not decided, at {:?}", event.ticket.key, event.status.to),
            };
        }
        AppStatus::Approved | AppStatus::Revoked => {}
    }
    if event.action == RequestAction::Offboard && event.source != Source::Offboard {
        return Decision::NoAction {
            reason: format!(
                "ticket {} is an offboarding: its subject's holds are revoked one by one",
                event.ticket.key
            ),
        };
    }
    if event.action == RequestAction::Onboard && event.source != Source::Onboard {
        return Decision::NoAction {
            reason: format!("ticket {} is an onboarding: its role's items are granted one by one", event.ticket.key),
        };
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
    // A repair restores what the ledger holds, whatever the rules say now; a
    // reconcile removal takes an unmanaged member out of an exclusive target.
    if event.source == Source::Reconcile
        && let (Some(subject), Some(targets)) = (event.requester.clone(), event.targets.clone())
    {
        if event.action == RequestAction::Revoke {
            return Decision::Remove {
                application: application.clone(),
                access_level: access_level.clone(),
                targets,
                subject,
            };
        }
        return Decision::Repair {
            application: application.clone(),
            access_level: access_level.clone(),
            targets,
            subject,
        };
    }
    // A leaver's memberships that no ticket granted are removed as well, when configured.
    if event.source == Source::Offboard
        && let (Some(subject), Some(targets)) = (event.requester.clone(), event.targets.clone())
    {
        return Decision::Remove {
            application: application.clone(),
            access_level: access_level.clone(),
            targets,
            subject,
        };
    }
    // Expired access, and a leaver's, is taken back whatever the rules say now:
    // the holds it releases are in the ledger, not in the config.
    if matches!(event.source, Source::Expiry | Source::Offboard)
        && let Some(subject) = event.requester.clone()
    {
        return Decision::Revoke {
            application: application.clone(),
            access_level: access_level.clone(),
            targets: Vec::new(),
            subject,
            scope: RevokeScope::Ticket,
        };
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

    // Removing access is never gated on an approver: it only reduces access. A
    // ticket's revoke acts on the identity its holds recorded, whatever the
    // ticket's fields say now, so only a removal request's identity is checked.
    if event.app_status == AppStatus::Revoked {
        return Decision::Revoke { application, access_level, targets, subject, scope: RevokeScope::Ticket };
    }
    let identity = match crate::connectors::subject_of(config, &application, &subject, &event.raw_fields) {
        Ok(identity) => identity,
        Err(reason) => return refuse(Refusal::InvalidIdentity { reason }),
    };
    if event.action == RequestAction::Revoke {
        return Decision::Revoke { application, access_level, targets, subject, scope: RevokeScope::Subject };
    }
    if let Err(reason) = crate::connectors::require_subject_field(config, &application, &identity) {
        return refuse(Refusal::InvalidIdentity { reason });
    }

    // An item of an approved onboarding: the role's approver was checked (and, with
    // verify_approval, confirmed on the live ticket) before the item was published.
    if event.source == Source::Onboard {
        let Some(approver) = event.approver.as_ref().map(|a| a.person.clone()) else {
            return refuse(Refusal::NoApprover);
        };
        let max_duration = rule.max_duration;
        return Decision::Grant {
            application,
            access_level,
            targets,
            subject,
            approver,
            max_duration,
            lasts: max_duration,
        };
    }
    let requester_groups = facts.approver_groups.get(&subject.account_id).map_or(&[][..], Vec::as_slice);
    if !requester_allowed(rule, &subject, requester_groups, &event.raw_fields) {
        return refuse(Refusal::RequesterNotAllowed { requester: subject.account_id.clone() });
    }
    let approved = if rule.stages.is_empty() {
        approved_by(event, config, rule, &subject, facts)
    } else {
        stages_approved(event, rule, &subject, facts)
    };
    let approver = match approved {
        Ok(approver) => approver,
        Err(reason) => return refuse(reason),
    };
    let max_duration = rule.max_duration;
    let lasts = match crate::grants::effective_duration(event.duration.as_deref(), max_duration) {
        Ok(lasts) => lasts,
        Err(reason) => {
            return refuse(Refusal::InvalidDuration { value: event.duration.clone().unwrap_or_default(), reason });
        }
    };
    match event.action {
        RequestAction::Change => {
            Decision::Change { application, access_level, targets, subject, approver, max_duration, lasts }
        }
        _ => Decision::Grant { application, access_level, targets, subject, approver, max_duration, lasts },
    }
}

/// An approved onboarding: the role its department field selects (its index in
/// `[[roles]]`) and the approver, who must be one the role allows and not the
/// subject, shown by the same evidence as any grant's approver.
pub fn decide_onboard(event: &AccessEvent, config: &Config, facts: &Facts) -> Result<(usize, Person), Refusal> {
    let Some(department) = event.department.as_deref().map(str::trim).filter(|d| !d.is_empty()) else {
        return Err(Refusal::MissingFields { errors: vec!["missing_required:department".into()] });
    };
    let Some(index) = config.roles.iter().position(|r| r.department.trim().eq_ignore_ascii_case(department)) else {
        return Err(Refusal::UnknownRole { department: department.to_owned() });
    };
    let Some(subject) = &event.requester else {
        return Err(Refusal::NoRequester);
    };
    let role = &config.roles[index];
    if role.approvers.is_empty() {
        return Err(Refusal::ApproverNotAllowed { approver: "anyone: the role lists no approver".into() });
    }
    let as_rule = RuleConfig {
        application: String::new(),
        access_level: role.department.clone(),
        groups: Vec::new(),
        permission: None,
        role: None,
        approvers: role.approvers.clone(),
        requesters: Vec::new(),
        plan: false,
        stages: Vec::new(),
        require_distinct_approver: true,
        max_duration: None,
        exclusive: false,
    };
    approved_by(event, config, &as_rule, subject, facts).map(|approver| (index, approver))
}

/// Who approved, if the event shows an approval that the rule accepts.
///
/// - The JSM approvals field is the evidence when the ticket has approvals: its
///   deciding approval must be `approved`, completed after the ticket's last
///   revoke, and one of the approvers whose own decision is `approved` must be
///   allowed by the rule (and not the requester, when the rule says so).
/// - The approver field names who was *asked*. It counts only when a signed Jira
///   webhook shows that person making the transition (the actor), never the
///   requester; or, with `verify_approval`, pending the JSM API's confirmation.
/// - An Automation body's declared approver counts only with `verify_approval`
///   or the explicit `[jsm] trust_automation_approver = true`.
fn approved_by(
    event: &AccessEvent,
    config: &Config,
    rule: &RuleConfig,
    subject: &Person,
    facts: &Facts,
) -> Result<Person, Refusal> {
    let no_groups = Vec::new();
    let groups = |p: &Person| facts.approver_groups.get(&p.account_id).unwrap_or(&no_groups);
    let distinct = |p: &Person| !rule.require_distinct_approver || p.account_id != subject.account_id;
    let approvers = rule.effective_approvers(event.application.as_ref().and_then(|a| config.applications.get(a)));
    let spent = |at: Option<DateTime<Utc>>| facts.last_revoke_at.filter(|r| at.is_none_or(|a| a <= *r));

    if let Some(approval) = &event.approval {
        if approval.final_decision != "approved" || approval.approved_by.is_empty() {
            let decision = if approval.final_decision == "approved" {
                "approved without any approver's own approval".to_owned()
            } else {
                approval.final_decision.clone()
            };
            return Err(Refusal::ApprovalNotApproved { approval: approval.id.clone(), decision });
        }
        if let Some(revoked_at) = spent(approval.completed_at) {
            return Err(Refusal::ApprovalReused { approval: approval.id.clone(), revoked_at });
        }
        let allowed: Vec<&Person> =
            approval.approved_by.iter().filter(|p| allowed_by(&approvers, p, groups(p), &event.raw_fields)).collect();
        return match allowed.iter().find(|p| distinct(p)) {
            Some(p) => Ok((*p).clone()),
            None => match allowed.first() {
                Some(p) => Err(Refusal::ApproverIsRequester { account_id: p.account_id.clone() }),
                None => Err(Refusal::ApproverNotAllowed { approver: approval.approved_by[0].account_id.clone() }),
            },
        };
    }

    let Some(named) = &event.approver else {
        return Err(Refusal::NoApprover);
    };
    // An approvals-field approver without the approval itself comes from an event
    // queued by an earlier version, which did not tell declined from approved:
    // only the JSM API can vouch for it.
    let legacy = named.source == ApproverSource::JsmApprovals;
    let named = &named.person;
    let unconfirmed = |reason: String| Refusal::ApproverUnconfirmed { approver: named.account_id.clone(), reason };
    let actor = event.actor.as_ref().map(|a| a.account_id.as_str());
    if actor == Some(subject.account_id.as_str()) {
        return Err(unconfirmed("the requester made the transition themselves".into()));
    }
    let signed_webhook = event.source == Source::JiraWebhook && event.authenticity == Some(Authenticity::Signature);
    let automation =
        matches!(event.source, Source::AutomationCustom | Source::AutomationJira | Source::AutomationIssue);
    // With verify_approval the worker confirms the approver against the live JSM approvals before granting.
    let shown = facts.verify_approval
        || (!legacy && signed_webhook && actor == Some(named.account_id.as_str()))
        || (!legacy && automation && config.jsm.trust_automation_approver);
    if !shown {
        let why = if signed_webhook {
            match actor {
                Some(a) => format!("the transition was made by {a}, not by the approver"),
                None => "the webhook does not say who made the transition".into(),
            }
        } else {
            "an Automation body's approver is only declared; turn on [jsm] verify_approval (or, knowingly, \
             trust_automation_approver)"
                .into()
        };
        return Err(unconfirmed(why));
    }
    if let Some(revoked_at) = spent(Some(event.occurred_at)) {
        return Err(Refusal::ApprovalReused { approval: None, revoked_at });
    }
    if !allowed_by(&approvers, named, groups(named), &event.raw_fields) {
        return Err(Refusal::ApproverNotAllowed { approver: named.account_id.clone() });
    }
    if !distinct(named) {
        return Err(Refusal::ApproverIsRequester { account_id: named.account_id.clone() });
    }
    Ok(named.clone())
}

/// A multi-stage rule: every stage needs an approved JSM approval named as its
/// status, with at least `min_approvals` approving approvers that the stage
/// allows (and who are not the requester, when the rule says so), completed
/// after the ticket's last revoke. The live approvals are the evidence; the
/// approver of the decision is the last stage's first such approver.
fn stages_approved(event: &AccessEvent, rule: &RuleConfig, subject: &Person, facts: &Facts) -> Result<Person, Refusal> {
    let Some(live) = &facts.live_approvals else {
        return Err(Refusal::ApprovalNotConfirmed {
            reason: "this rule has approval stages, which are checked against the live JSM approvals; JSM \
                     credentials are needed"
                .into(),
        });
    };
    let not_before = facts.last_revoke_at.map(|t| t.timestamp_millis());
    let no_groups = Vec::new();
    let mut last = None;
    for stage in &rule.stages {
        let mut approvers: Vec<String> = Vec::new();
        for approval in live.iter().filter(|a| {
            a.name.trim().eq_ignore_ascii_case(stage.status.trim())
                && a.final_decision.eq_ignore_ascii_case("approved")
                && not_before.is_none_or(|nb| a.completed_epoch_ms.is_some_and(|done| done > nb))
        }) {
            for (account, decision) in &approval.approvers {
                let person = Person { account_id: account.clone(), email: None, display_name: None };
                let groups = facts.approver_groups.get(account).unwrap_or(&no_groups);
                if decision.eq_ignore_ascii_case("approved")
                    && allowed_by(&stage.approvers, &person, groups, &event.raw_fields)
                    && (!rule.require_distinct_approver || account != &subject.account_id)
                    && !approvers.contains(account)
                {
                    approvers.push(account.clone());
                }
            }
        }
        if approvers.len() < stage.min_approvals {
            return Err(Refusal::StageNotApproved {
                stage: stage.status.clone(),
                needed: stage.min_approvals,
                approved_by: approvers,
            });
        }
        last = approvers.into_iter().next();
    }
    let account_id = last.ok_or(Refusal::NoApprover)?;
    Ok(Person { account_id, email: None, display_name: None })
}

/// Whether the rule lets `requester` ask for its access level (`requesters`; empty: anyone).
pub fn requester_allowed(
    rule: &RuleConfig,
    requester: &Person,
    groups: &[String],
    fields: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    rule.requesters.is_empty() || allowed_by(&rule.requesters, requester, groups, fields)
}

/// The people whose Jira groups the decision may need (for `group:` approver entries).
pub fn approver_candidates(event: &AccessEvent) -> Vec<&Person> {
    match &event.approval {
        Some(a) => a.approved_by.iter().collect(),
        None => event.approver.iter().map(|a| &a.person).collect(),
    }
}

/// An approver matches an entry by account id, by email (case-insensitive), or
/// by membership of `group:<name>`.
pub fn approver_allowed(entries: &[String], approver: &Person, approver_groups: &[String]) -> bool {
    allowed_by(entries, approver, approver_groups, &serde_json::Map::new())
}

/// [`approver_allowed`], and `field:<id>` entries: the user (or one of the
/// users) the ticket's field `<id>` names, read from `fields` (the event's raw fields).
pub fn allowed_by(
    entries: &[String],
    person: &Person,
    groups: &[String],
    fields: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    entries.iter().any(|entry| {
        if let Some(group) = entry.strip_prefix("group:") {
            groups.iter().any(|g| g.eq_ignore_ascii_case(group.trim()))
        } else if let Some(field) = entry.strip_prefix("field:") {
            field_accounts(fields.get(field.trim())).iter().any(|a| a == &person.account_id)
        } else if entry.contains('@') {
            person.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(entry))
        } else {
            entry == &person.account_id
        }
    })
}

/// The account ids a user-picker value names: `{"accountId"}` or an array of them.
pub fn field_accounts(v: Option<&serde_json::Value>) -> Vec<String> {
    let one = |v: &serde_json::Value| v.get("accountId").and_then(|a| a.as_str()).map(str::to_owned);
    match v {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
