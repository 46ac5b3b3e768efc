//! Routing: the front half of a request's life. When a ticket is created (or
//! enters one of its rule's approval stages) the worker asks [`route`] whether
//! the request is valid at all, whose approval it needs, and what approval
//! would change ([`plan_lines`]). Pure: the worker does the JSM reads and
//! writes around it (`worker::route`).
//!
//! An invalid request is answered at once, not after someone approved it: the
//! same checks that would refuse it at approval time (unknown application or
//! access level, missing fields, a requester the rule does not allow, an unusable
//! provider identity, a malformed duration), in the same words.

use crate::config::{AppStatus, ApplicationConfig, Config, RequestAction, RuleConfig};
use crate::event::{AccessEvent, Person};
use crate::grants::{self, Note, ProviderOp};
use crate::rules::{self, Refusal};
use serde::Serialize;
use std::time::Duration;

/// What to do with a `created` or `stage` event.
#[derive(Debug, Clone)]
pub enum Routing<'a> {
    /// Set these approvers on the ticket, and post the plan when the rule says so.
    Route(Route<'a>),
    /// Tell the requester at once why the request cannot be granted.
    Invalid(Refusal),
    /// Nothing to route (a stage the rule does not have, an invalid request at a later stage).
    Skip(String),
}

/// A valid request, ready to be routed.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub application: &'a str,
    pub app: &'a ApplicationConfig,
    pub rule: &'a RuleConfig,
    pub subject: &'a Person,
    /// The routing's step: `created`, or `stage:<status>`.
    pub step: String,
    /// The stage whose approvers are set (its index), for a rule with stages.
    pub stage: Option<usize>,
    /// The approver entries to resolve and write (account ids, emails, `group:`, `field:`).
    pub approvers: Vec<String>,
    /// How long a grant would last (`None`: until revoked).
    pub lasts: Option<Duration>,
}

/// The routing step of an event: `created`, or `stage:<status>`.
pub fn step_of(event: &AccessEvent) -> String {
    match event.app_status {
        AppStatus::Stage => format!("stage:{}", event.status.to.trim().to_lowercase()),
        _ => "created".into(),
    }
}

/// Routes a `created` or `stage` event. `requester_groups` are the requester's
/// Jira groups, needed when the rule's `requesters` lists `group:` entries.
pub fn route<'a>(event: &'a AccessEvent, config: &'a Config, requester_groups: &[String]) -> Routing<'a> {
    let step = step_of(event);
    if matches!(event.action, RequestAction::Offboard | RequestAction::Onboard) {
        return Routing::Skip("an offboarding or onboarding names no application or rule to route by".into());
    }
    let checked = validate(event, config, requester_groups);
    let (application, app, rule, subject, lasts) = match checked {
        Ok(parts) => parts,
        Err(refusal) if event.app_status == AppStatus::Created => return Routing::Invalid(refusal),
        Err(refusal) => {
            return Routing::Skip(format!("the request is invalid ({}); it was answered when created", refusal.code()));
        }
    };
    let (stage, approvers) = if event.app_status == AppStatus::Stage {
        let wanted = event.status.to.trim();
        match rule.stages.iter().position(|s| s.status.trim().eq_ignore_ascii_case(wanted)) {
            Some(i) => (Some(i), rule.stages[i].approvers.clone()),
            None => {
                return Routing::Skip(format!(
                    "the rule for {application:?} / {:?} has no approval stage {wanted:?}",
                    rule.access_level
                ));
            }
        }
    } else if let Some(first) = rule.stages.first() {
        (Some(0), first.approvers.clone())
    } else {
        (None, rule.effective_approvers(Some(app)).into_owned())
    };
    Routing::Route(Route { application, app, rule, subject, step, stage, approvers, lasts })
}

type Checked<'a> = (&'a str, &'a ApplicationConfig, &'a RuleConfig, &'a Person, Option<Duration>);

/// The request's own validity, before anyone approves it.
fn validate<'a>(
    event: &'a AccessEvent,
    config: &'a Config,
    requester_groups: &[String],
) -> Result<Checked<'a>, Refusal> {
    if !event.errors.is_empty() {
        return Err(Refusal::MissingFields { errors: event.errors.clone() });
    }
    let (Some(application), Some(access_level)) = (&event.application, &event.access_level) else {
        return Err(Refusal::MissingFields { errors: vec!["missing_required:application".into()] });
    };
    let Some((application, app)) = config.applications.get_key_value(application) else {
        return Err(Refusal::UnknownApplication { application: application.clone() });
    };
    let Some(rule) = config.rule_for(application, access_level) else {
        return Err(Refusal::NoRuleForAccessLevel {
            application: application.clone(),
            access_level: access_level.clone(),
        });
    };
    let Some(subject) = &event.requester else {
        return Err(Refusal::NoRequester);
    };
    let identity = crate::connectors::subject_of(config, application, subject, &event.raw_fields)
        .map_err(|reason| Refusal::InvalidIdentity { reason })?;
    if event.action == RequestAction::Revoke {
        return Ok((application, app, rule, subject, None));
    }
    crate::connectors::require_subject_field(config, application, &identity)
        .map_err(|reason| Refusal::InvalidIdentity { reason })?;
    if !rules::requester_allowed(rule, subject, requester_groups, &event.raw_fields) {
        return Err(Refusal::RequesterNotAllowed { requester: subject.account_id.clone() });
    }
    let lasts = grants::effective_duration(event.duration.as_deref(), rule.max_duration)
        .map_err(|reason| Refusal::InvalidDuration { value: event.duration.clone().unwrap_or_default(), reason })?;
    Ok((application, app, rule, subject, lasts))
}

/// The routing as `simulate` shows it (offline: no groups read, so a rule whose
/// `requesters` are only groups shows as refusing the requester).
pub fn summary(event: &AccessEvent, config: &Config) -> serde_json::Value {
    match route(event, config, &[]) {
        Routing::Route(r) => serde_json::json!({
            "route": r.step,
            "application": r.application,
            "access_level": r.rule.access_level,
            "stage": r.stage.map(|i| r.rule.stages[i].status.clone()),
            "approvers": r.approvers,
            "plan": r.rule.plan,
            "lasts": r.lasts.map(crate::config::duration::format),
        }),
        Routing::Invalid(refusal) => serde_json::json!({
            "invalid": refusal.code(),
            "reason": refusal.message(),
            "comment": invalid_comment(&refusal),
        }),
        Routing::Skip(reason) => serde_json::json!({"skip": reason}),
    }
}

/// Whether the rule lists `group:` requesters (the worker then reads the requester's groups).
pub fn needs_requester_groups(event: &AccessEvent, config: &Config) -> bool {
    let (Some(app), Some(level)) = (&event.application, &event.access_level) else { return false };
    config.rule_for(app, level).is_some_and(|r| r.requesters.iter().any(|e| e.starts_with("group:")))
}

/// The ledger request approval would make.
pub fn request<'r>(event: &AccessEvent, rule: &'r RuleConfig, targets: &'r [String]) -> grants::Request<'r> {
    match event.action {
        RequestAction::Grant | RequestAction::Onboard => {
            grants::Request::Grant { targets, access_level: &rule.access_level }
        }
        RequestAction::Change => grants::Request::Change { targets, access_level: &rule.access_level },
        RequestAction::Revoke | RequestAction::Offboard => {
            grants::Request::Revoke { targets, scope: rules::RevokeScope::Subject }
        }
    }
}

/// The approvers a routing resolved, as written to the ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Account ids for the Approvers field.
    pub users: Vec<String>,
    /// Group names for the Approver groups field.
    pub groups: Vec<String>,
    /// Entries that named nobody, each with why (`group:big (more than 50 members)`).
    pub unresolved: Vec<String>,
}

/// The plan of what approval will do, as stored and compared at execution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PlanRecord {
    /// `grant:<target>` / `revoke:<target>`: the provider changes planned.
    pub ops: Vec<String>,
    /// The targets already held through other tickets (nothing to add).
    pub overlaps: Vec<String>,
    /// `max_duration` / the requested duration, formatted (`None`: until revoked).
    pub lasts: Option<String>,
}

impl PlanRecord {
    pub fn of(plan: &grants::Plan, lasts: Option<Duration>) -> Self {
        Self {
            ops: plan.ops.iter().map(op_key).collect(),
            overlaps: plan
                .notes
                .iter()
                .filter_map(|n| match n {
                    Note::HoldAdded { target, .. } => Some(target.clone()),
                    _ => None,
                })
                .collect(),
            lasts: lasts.map(crate::config::duration::format),
        }
    }

    /// What differs from `planned` (this is what happens now), one sentence per
    /// change; empty when nothing changed.
    pub fn changes_since(&self, planned: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let added: Vec<&String> = self.ops.iter().filter(|o| !planned.ops.contains(o)).collect();
        let dropped: Vec<&String> = planned.ops.iter().filter(|o| !self.ops.contains(o)).collect();
        if !added.is_empty() {
            out.push(format!("not in the plan: {}", join(&added)));
        }
        if !dropped.is_empty() {
            out.push(format!("planned but no longer needed or configured: {}", join(&dropped)));
        }
        if self.lasts != planned.lasts {
            out.push(format!(
                "the access now lasts {} (planned: {})",
                self.lasts.as_deref().unwrap_or("until revoked"),
                planned.lasts.as_deref().unwrap_or("until revoked")
            ));
        }
        out
    }
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn op_key(op: &ProviderOp) -> String {
    match op {
        ProviderOp::Grant(t) => format!("grant:{t}"),
        ProviderOp::Revoke(t) => format!("revoke:{t}"),
    }
}

/// The reference line that marks a comment accessgov posted for a routing step,
/// so that a redelivery finds it instead of posting it again.
pub fn marker(kind: &str, step: &str) -> String {
    format!("[accessgov:{kind}:{step}]")
}

/// The plan comment: what approval will change, what is already held, the
/// expiry, and who must approve.
pub fn plan_comment(event: &AccessEvent, route: &Route<'_>, plan: &grants::Plan, resolved: &Resolved) -> String {
    let app = route.application;
    let kind = route.app.kind.as_str();
    let who = route.subject.display_name.clone().unwrap_or_else(|| route.subject.account_id.clone());
    let mut lines = vec![format!(
        "accessgov plan for {} ({app}, access level {:?}{}):",
        event.ticket.key,
        route.rule.access_level,
        if route.app.dry_run { ", dry run: nothing will be called" } else { "" }
    )];
    lines.push("If this request is approved, accessgov will:".into());
    lines.extend(plan_lines(plan, &who, app, kind).into_iter().map(|l| format!("- {l}")));
    if event.action != RequestAction::Revoke {
        lines.push(match route.lasts {
            Some(d) => format!(
                "The access expires {} after it is granted; accessgov then removes it.",
                crate::config::duration::format(d)
            ),
            None => "The access lasts until it is revoked.".into(),
        });
    }
    lines.push(approval_line(route, resolved));
    if !resolved.unresolved.is_empty() {
        lines.push(format!("Could not route to: {}.", resolved.unresolved.join("; ")));
    }
    lines.push(marker("plan", &route.step));
    lines.join("\n")
}

/// One line per provider change and per overlap with existing holds.
pub fn plan_lines(plan: &grants::Plan, who: &str, app: &str, kind: &str) -> Vec<String> {
    let mut lines: Vec<String> = plan
        .ops
        .iter()
        .map(|op| match op {
            ProviderOp::Grant(t) => format!("add {who} to {t} in {app} ({kind})"),
            ProviderOp::Revoke(t) => format!("remove {who} from {t} in {app} ({kind})"),
        })
        .collect();
    lines.extend(plan.notes.iter().map(|n| match n {
        Note::HoldAdded { target, other_holders } => {
            format!("{target}: already held through {}; nothing to add", other_holders.join(", "))
        }
        Note::HoldReleased { target, remaining, .. } => {
            format!("{target}: stays, still granted through {}", remaining.join(", "))
        }
        Note::AlreadyHeld { target } => format!("{target}: already granted by this ticket; nothing to add"),
        Note::Superseded { target, reason } => format!("{target}: nothing to do ({reason})"),
        Note::NothingHeld { target } => format!("{target}: not held; nothing to remove"),
    }));
    if lines.is_empty() {
        lines.push("change nothing (the rule grants nothing new)".into());
    }
    lines
}

fn approval_line(route: &Route<'_>, resolved: &Resolved) -> String {
    let mut names: Vec<String> = resolved.users.clone();
    names.extend(resolved.groups.iter().map(|g| format!("group {g}")));
    let who = if names.is_empty() { "nobody could be resolved".to_owned() } else { names.join(", ") };
    match route.stage {
        Some(i) => {
            let stages: Vec<String> = route
                .rule
                .stages
                .iter()
                .map(|s| {
                    format!(
                        "{:?} ({} approval{})",
                        s.status,
                        s.min_approvals,
                        if s.min_approvals == 1 { "" } else { "s" }
                    )
                })
                .collect();
            format!(
                "Approval stages, in order: {}. Stage {} of {} must be approved by: {who}.",
                stages.join(" -> "),
                i + 1,
                route.rule.stages.len()
            )
        }
        None => format!(
            "Must be approved by: {who}{}.",
            if route.rule.require_distinct_approver { " (not by the requester)" } else { "" }
        ),
    }
}

/// The comment that tells the requester at once why the request cannot go on.
pub fn invalid_comment(refusal: &Refusal) -> String {
    let fix = match refusal {
        Refusal::UnknownApplication { .. } | Refusal::NoRuleForAccessLevel { .. } => {
            "Please raise a new request and choose an application and access type from the lists."
        }
        Refusal::MissingFields { .. } | Refusal::InvalidIdentity { .. } | Refusal::InvalidDuration { .. } => {
            "Please raise a new request with every required field filled in."
        }
        Refusal::RequesterNotAllowed { .. } => {
            "Ask the application's owner, or request an access type that is open to you."
        }
        _ => "Please contact the service desk.",
    };
    format!("This request cannot be processed: {}. {fix}\n{}", refusal.message(), marker("invalid", "created"))
}

#[cfg(test)]
mod tests;
