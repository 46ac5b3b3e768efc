//! JSM / Automation JSON -> [`AccessEvent`] or an ignore reason. Pure: no I/O,
//! no clock (the caller passes `now`), never panics on any JSON.
//!
//! The facts this follows are in `shared/jsm.md`:
//! - a *transition* is only a changelog item with `fieldId == "status"`; the
//!   issue's current status is never taken as one (comment events and field
//!   edits arrive while a ticket already sits in "Approved");
//! - `jira:issue_created` is a creation, not a transition;
//! - Automation issue bodies carry no changelog: their current status is a
//!   snapshot; the custom Automation body (`accessgov.automation/v1`, see the
//!   README) may carry the from-status, and is a transition only when it does;
//! - people are identified by `accountId`; emails are often hidden;
//! - the approver is the latest final decision of the JSM approvals field, else
//!   the configured approver field; the actor (`user`) is never the approver.

use crate::config::{AppStatus, JsmConfig};
use crate::event::{
    AccessEvent, Approval, Approver, ApproverSource, Authenticity, Person, SCHEMA_V1, Source, StatusChange, Ticket,
    event_id_for,
};
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// The `schema` of the custom Automation body (README, "Automation rule (custom body)").
pub const AUTOMATION_SCHEMA_V1: &str = "accessgov.automation/v1";

/// Transport facts about the request, beside the body.
#[derive(Debug, Default, Clone)]
pub struct Meta {
    /// `X-Atlassian-Webhook-Identifier`: unsigned, so carried for the audit and
    /// never part of a dedupe key.
    pub delivery_id: Option<String>,
    /// How the body was authenticated (the worker trusts a webhook's `user` only when signed).
    pub authenticity: Option<Authenticity>,
}

/// Why a well-authenticated body is not an access event. Answered 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// No mapped JSM request type.
    NotAnAccessRequest,
    /// An update without a status changelog item (comment, field edit).
    NoStatusChange,
    /// The status (or creation) is not in `[jsm.statuses]`.
    StatusNotActionable,
    /// A webhook event other than issue created/updated.
    UnsupportedEvent,
    /// JSON, but neither a Jira webhook nor an Automation body (including a custom
    /// body of an unknown schema version, or one without an issue id and key).
    UnrecognizedFormat,
    /// An access event whose own time is older than `[jsm] max_event_age`: a late
    /// retry or a replayed capture, not acted on long after the fact.
    Stale,
    /// A mapped request type in a project that `[jsm] projects` does not list.
    OtherProject,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnAccessRequest => "not_an_access_request",
            Self::NoStatusChange => "no_status_change",
            Self::StatusNotActionable => "status_not_actionable",
            Self::UnsupportedEvent => "unsupported_event",
            Self::UnrecognizedFormat => "unrecognized_format",
            Self::Stale => "stale",
            Self::OtherProject => "other_project",
        }
    }
}

/// What the normalizer made of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    Accepted(Box<AccessEvent>),
    Ignored(IgnoreReason),
}

/// Normalizes one authenticated body.
pub fn normalize(body: &Value, meta: &Meta, jsm: &JsmConfig, now: DateTime<Utc>) -> Normalized {
    let normalized = match detect(body) {
        Some(Format::Webhook { event, issue }) => webhook(body, event, issue, meta, jsm, now),
        Some(Format::Automation { source, issue }) => automation(issue, source, meta, jsm, now),
        Some(Format::AutomationCustom(body)) => automation_custom(body, meta, jsm, now),
        None => Normalized::Ignored(IgnoreReason::UnrecognizedFormat),
    };
    // Checked last, so that a body that is no access event keeps its own reason.
    match normalized {
        Normalized::Accepted(event) if is_stale(event.occurred_at, now, jsm.max_event_age) => {
            Normalized::Ignored(IgnoreReason::Stale)
        }
        other => other,
    }
}

/// Whether an event that happened at `occurred_at` is older than `max_age` at
/// `now`. A time in the future (clock skew) is never stale, nor is anything when
/// `max_age` reaches beyond the calendar.
pub fn is_stale(occurred_at: DateTime<Utc>, now: DateTime<Utc>, max_age: std::time::Duration) -> bool {
    chrono::TimeDelta::from_std(max_age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .is_some_and(|oldest| occurred_at < oldest)
}

enum Format<'a> {
    Webhook { event: &'a str, issue: &'a Value },
    Automation { source: Source, issue: &'a Value },
    AutomationCustom(&'a Map<String, Value>),
}

fn detect(body: &Value) -> Option<Format<'_>> {
    let obj = body.as_object()?;
    // Our own body names itself; another version of it is not guessed at.
    if let Some(schema) = obj.get("schema").and_then(Value::as_str).map(str::trim)
        && schema.starts_with("accessgov.automation/")
    {
        return (schema == AUTOMATION_SCHEMA_V1).then_some(Format::AutomationCustom(obj));
    }
    if let Some(event) = obj.get("webhookEvent") {
        return Some(Format::Webhook {
            event: event.as_str().unwrap_or(""),
            issue: obj.get("issue").unwrap_or(&Value::Null),
        });
    }
    if let Some(issue) = obj.get("issue").filter(|i| i.get("fields").is_some_and(Value::is_object)) {
        return Some(Format::Automation { source: Source::AutomationJira, issue });
    }
    if obj.get("fields").is_some_and(Value::is_object) && obj.contains_key("key") {
        return Some(Format::Automation { source: Source::AutomationIssue, issue: body });
    }
    None
}

/// The parts common to both formats, read from the issue.
struct IssueParts<'a> {
    key: String,
    id: String,
    fields: &'a Map<String, Value>,
    request_type: String,
    action: crate::config::RequestAction,
}

fn issue_parts<'a>(issue: &'a Value, jsm: &JsmConfig) -> Result<IssueParts<'a>, IgnoreReason> {
    let fields = issue.get("fields").and_then(Value::as_object).ok_or(IgnoreReason::UnrecognizedFormat)?;
    let key = issue.get("key").and_then(non_empty_str).ok_or(IgnoreReason::UnrecognizedFormat)?;
    let id = issue.get("id").and_then(id_string).ok_or(IgnoreReason::UnrecognizedFormat)?;
    let request_type =
        fields.get(&jsm.fields.request_type).and_then(request_type_name).ok_or(IgnoreReason::NotAnAccessRequest)?;
    let action = *jsm.request_types.get(&request_type).ok_or(IgnoreReason::NotAnAccessRequest)?;
    let project = fields.get("project").and_then(|p| p.get("key")).and_then(non_empty_str);
    in_scope(jsm, project.as_deref())?;
    Ok(IssueParts { key, id, fields, request_type, action })
}

/// `[jsm] projects`: a ticket of another project (or of none the body names) is
/// not ours, whatever its request type is called.
fn in_scope(jsm: &JsmConfig, project: Option<&str>) -> Result<(), IgnoreReason> {
    if jsm.projects.is_empty() || project.is_some_and(|p| jsm.projects.iter().any(|k| k.trim().eq_ignore_ascii_case(p)))
    {
        Ok(())
    } else {
        Err(IgnoreReason::OtherProject)
    }
}

/// Whether `name` is the status of one of the rules' approval stages.
fn is_stage(jsm: &JsmConfig, name: &str) -> bool {
    jsm.stage_statuses.iter().any(|s| s.eq_ignore_ascii_case(name))
}

fn webhook(body: &Value, event: &str, issue: &Value, meta: &Meta, jsm: &JsmConfig, now: DateTime<Utc>) -> Normalized {
    if !matches!(event, "jira:issue_created" | "jira:issue_updated") {
        return Normalized::Ignored(IgnoreReason::UnsupportedEvent);
    }
    let parts = match issue_parts(issue, jsm) {
        Ok(p) => p,
        Err(r) => return Normalized::Ignored(r),
    };
    if event == "jira:issue_created" {
        // A creation carries a Status item "from null" in its changelog: still
        // not a transition, whatever its status. It is routed, once per ticket.
        return created(body, parts, Source::JiraWebhook, meta, jsm, now);
    }
    let changelog = body.get("changelog");
    let Some(item) = changelog
        .and_then(|c| c.get("items"))
        .and_then(Value::as_array)
        .and_then(|items| items.iter().find(|i| i.get("fieldId").and_then(Value::as_str) == Some("status")))
    else {
        return Normalized::Ignored(IgnoreReason::NoStatusChange);
    };
    let Some(to) = item.get("toString").and_then(non_empty_str) else {
        return Normalized::Ignored(IgnoreReason::NoStatusChange);
    };
    let Some(app_status) = map_status(jsm, &to).or_else(|| is_stage(jsm, &to).then_some(AppStatus::Stage)) else {
        return Normalized::Ignored(IgnoreReason::StatusNotActionable);
    };
    let status = StatusChange {
        from: item.get("fromString").and_then(non_empty_str),
        to,
        from_id: item.get("from").and_then(id_string),
        to_id: item.get("to").and_then(id_string),
    };
    let changelog_id = changelog.and_then(|c| c.get("id")).and_then(id_string);
    // Only signed bytes make the key: `X-Atlassian-Webhook-Identifier` is a header
    // the signature does not cover, so a key built from it would let anyone replay a
    // captured body as a new event by changing it (it stays in the event as
    // `delivery_id`, for the audit). The same change delivered to two registered
    // webhooks has two identifiers but one changelog id and one body.
    let dedupe_key = match &changelog_id {
        Some(cl) => format!("jira:{}:{cl}", parts.id),
        None => format!(
            "jira:{}:{}:{}",
            parts.id,
            status.to_id.as_deref().unwrap_or(&status.to),
            body.get("timestamp").map(Value::to_string).unwrap_or_default()
        ),
    };
    let occurred_at = body
        .get("timestamp")
        .and_then(Value::as_i64)
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or(now);
    let actor = body.get("user").and_then(person);
    Normalized::Accepted(Box::new(build(
        parts,
        Source::JiraWebhook,
        meta,
        jsm,
        app_status,
        status,
        actor,
        changelog_id,
        dedupe_key,
        occurred_at,
    )))
}

fn automation(issue: &Value, source: Source, meta: &Meta, jsm: &JsmConfig, now: DateTime<Utc>) -> Normalized {
    let parts = match issue_parts(issue, jsm) {
        Ok(p) => p,
        Err(r) => return Normalized::Ignored(r),
    };
    let status_value = parts.fields.get("status");
    let Some(to) = status_value.and_then(|s| s.get("name")).and_then(non_empty_str) else {
        return Normalized::Ignored(IgnoreReason::NoStatusChange);
    };
    let updated = parts.fields.get("updated").and_then(Value::as_str).unwrap_or("");
    // Automation's "Issue created" trigger sends the new issue: created and
    // last updated at the same instant, in a status that decides nothing yet.
    let just_created = !updated.is_empty() && parts.fields.get("created").and_then(Value::as_str) == Some(updated);
    let app_status = match map_status(jsm, &to) {
        Some(s) => s,
        None if just_created => return created(issue, parts, source, meta, jsm, now),
        None if is_stage(jsm, &to) => AppStatus::Stage,
        None => return Normalized::Ignored(IgnoreReason::StatusNotActionable),
    };
    let to_id = status_value.and_then(|s| s.get("id")).and_then(id_string);
    let dedupe_key = format!("automation:{}:{}:{updated}", parts.id, to_id.as_deref().unwrap_or(&to));
    let occurred_at = parse_jira_time(updated).unwrap_or(now);
    let status = StatusChange { from: None, to, from_id: None, to_id };
    Normalized::Accepted(Box::new(build(
        parts,
        source,
        meta,
        jsm,
        app_status,
        status,
        None,
        None,
        dedupe_key,
        occurred_at,
    )))
}

/// A new ticket of a mapped request type: a `created` event, to be routed.
/// Its dedupe key is the issue's own (a ticket is created once), per source.
fn created(
    body: &Value,
    parts: IssueParts<'_>,
    source: Source,
    meta: &Meta,
    jsm: &JsmConfig,
    now: DateTime<Utc>,
) -> Normalized {
    let status_value = parts.fields.get("status");
    let to = status_value.and_then(|s| s.get("name")).and_then(non_empty_str).unwrap_or_default();
    let status = StatusChange {
        from: None,
        to,
        from_id: None,
        to_id: status_value.and_then(|s| s.get("id")).and_then(id_string),
    };
    let prefix = match source {
        Source::JiraWebhook => "jira",
        _ => "automation",
    };
    let dedupe_key = format!("{prefix}:{}:created", parts.id);
    let occurred_at = body
        .get("timestamp")
        .and_then(Value::as_i64)
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .or_else(|| parts.fields.get("created").and_then(Value::as_str).and_then(parse_jira_time))
        .unwrap_or(now);
    let actor = if source == Source::JiraWebhook { body.get("user").and_then(person) } else { None };
    let changelog_id = if source == Source::JiraWebhook {
        body.get("changelog").and_then(|c| c.get("id")).and_then(id_string)
    } else {
        None
    };
    Normalized::Accepted(Box::new(build(
        parts,
        source,
        meta,
        jsm,
        AppStatus::Created,
        status,
        actor,
        changelog_id,
        dedupe_key,
        occurred_at,
    )))
}

#[expect(clippy::too_many_arguments, reason = "one private assembly step shared by both formats")]
fn build(
    parts: IssueParts<'_>,
    source: Source,
    meta: &Meta,
    jsm: &JsmConfig,
    app_status: AppStatus,
    status: StatusChange,
    actor: Option<Person>,
    changelog_id: Option<String>,
    dedupe_key: String,
    occurred_at: DateTime<Utc>,
) -> AccessEvent {
    let f = &jsm.fields;
    let fields = parts.fields;
    let mut errors = Vec::new();
    // An offboarding or onboarding names a person (and a department), not an application.
    let needs_app =
        !matches!(parts.action, crate::config::RequestAction::Offboard | crate::config::RequestAction::Onboard);
    let mut ignored = Vec::new();
    let sink = if needs_app { &mut errors } else { &mut ignored };
    let application = required("application", fields.get(&f.application), sink);
    let access_level = required("access_level", fields.get(&f.access_level), sink);
    let optional = |id: &Option<String>| id.as_ref().and_then(|id| single_value(fields.get(id)).ok());

    let requester_field = if f.requester == "reporter" { "reporter" } else { f.requester.as_str() };
    let requester = fields.get(requester_field).and_then(person);
    let approval = f.approvals.as_ref().and_then(|id| fields.get(id)).and_then(latest_approval);
    let approver = approval
        .as_ref()
        .filter(|a| a.final_decision == "approved")
        .and_then(|a| a.approved_by.first().cloned())
        .map(|person| Approver { person, source: ApproverSource::JsmApprovals })
        .or_else(|| {
            f.approver
                .as_ref()
                .and_then(|id| fields.get(id))
                .and_then(person)
                .map(|person| Approver { person, source: ApproverSource::ApproverField })
        });

    let mut raw_fields = Map::new();
    for id in [
        Some(&f.request_type),
        Some(&f.application),
        Some(&f.access_level),
        f.approver.as_ref(),
        f.approvals.as_ref(),
        f.duration.as_ref(),
        f.department.as_ref(),
        Some(&f.requester),
    ]
    .into_iter()
    .flatten()
    .chain(f.subject_fields.iter())
    .chain(f.person_fields.iter())
    {
        if let Some(v) = fields.get(id) {
            raw_fields.insert(id.clone(), v.clone());
        }
    }

    AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source,
        delivery_id: meta.delivery_id.clone(),
        ticket: Ticket {
            key: parts.key,
            id: parts.id,
            project_key: fields.get("project").and_then(|p| p.get("key")).and_then(non_empty_str),
            request_type: parts.request_type,
        },
        action: parts.action,
        app_status,
        status,
        application,
        access_level,
        requester,
        approver,
        approval,
        authenticity: meta.authenticity,
        actor,
        changelog_id,
        occurred_at,
        duration: optional(&f.duration),
        department: optional(&f.department),
        errors,
        raw_fields,
        targets: None,
    }
}

/// The custom Automation body (`accessgov.automation/v1`, documented in the README):
///
/// ```json
/// {"schema": "accessgov.automation/v1",
///  "issue": {"id": "10131", "key": "ACC-131"}, "project_key": "ACC",
///  "request_type": "Request Application Access",
///  "status": {"from": "Waiting for approval", "from_id": "10100", "to": "Approved by Manager", "to_id": "10101"},
///  "application": "Confluence", "access_level": "Write",
///  "requester": {"account_id": "...", "email": "...", "display_name": "..."},
///  "approver": {...}, "actor": {...},
///  "updated": "2025-12-01T12:20:00.0+0000"}
/// ```
///
/// Smart values that have nothing to render come out as `""`: every empty string
/// is read as missing. A non-empty `status.from` makes the body a transition; an
/// empty one a snapshot of the current status, like the other Automation bodies.
/// The approver is the one the rule sends (from the approver field: `approver_field`);
/// the actor (the rule's initiator) is never taken as the approver.
fn automation_custom(body: &Map<String, Value>, meta: &Meta, jsm: &JsmConfig, now: DateTime<Utc>) -> Normalized {
    let issue = body.get("issue");
    let id = issue.and_then(|i| i.get("id")).and_then(id_string);
    let key = issue.and_then(|i| i.get("key")).and_then(non_empty_str);
    let (Some(id), Some(key)) = (id, key) else {
        return Normalized::Ignored(IgnoreReason::UnrecognizedFormat);
    };
    let Some(request_type) = body.get("request_type").and_then(request_type_name) else {
        return Normalized::Ignored(IgnoreReason::NotAnAccessRequest);
    };
    let Some(action) = jsm.request_types.get(&request_type).copied() else {
        return Normalized::Ignored(IgnoreReason::NotAnAccessRequest);
    };
    let status_part = |name: &str| body.get("status").and_then(|s| s.get(name));
    let Some(to) = status_part("to").and_then(non_empty_str) else {
        return Normalized::Ignored(IgnoreReason::NoStatusChange);
    };
    let project_key = body.get("project_key").and_then(non_empty_str);
    if let Err(reason) = in_scope(jsm, project_key.as_deref()) {
        return Normalized::Ignored(reason);
    }
    let status = StatusChange {
        from: status_part("from").and_then(non_empty_str),
        to,
        from_id: status_part("from_id").and_then(id_string),
        to_id: status_part("to_id").and_then(id_string),
    };
    // A mapped status decides (a transition, or a snapshot without `from`); an
    // unmapped one without `from` is the "Issue created" rule's body.
    let app_status = match map_status(jsm, &status.to) {
        Some(s) => s,
        None if status.from.is_none() => AppStatus::Created,
        None if is_stage(jsm, &status.to) => AppStatus::Stage,
        None => return Normalized::Ignored(IgnoreReason::StatusNotActionable),
    };
    let updated = body.get("updated").and_then(id_string).unwrap_or_default();
    let dedupe_key = if app_status == AppStatus::Created {
        format!("automation-custom:{id}:created")
    } else {
        format!("automation-custom:{id}:{}:{updated}", status.to_id.as_deref().unwrap_or(&status.to))
    };
    let occurred_at = parse_jira_time(&updated)
        .or_else(|| updated.parse::<i64>().ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single()))
        .unwrap_or(now);

    let mut errors = Vec::new();
    let needs_app = !matches!(action, crate::config::RequestAction::Offboard | crate::config::RequestAction::Onboard);
    let mut ignored = Vec::new();
    let sink = if needs_app { &mut errors } else { &mut ignored };
    let application = required("application", body.get("application"), sink);
    let access_level = required("access_level", body.get("access_level"), sink);
    let optional = |name: &str| single_value(body.get(name)).ok();
    let raw_fields: Map<String, Value> = ["request_type", "application", "access_level", "duration", "department"]
        .into_iter()
        .filter_map(|k| body.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();

    Normalized::Accepted(Box::new(AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::AutomationCustom,
        delivery_id: meta.delivery_id.clone(),
        ticket: Ticket { key, id, project_key, request_type },
        action,
        app_status,
        status,
        application,
        access_level,
        requester: body.get("requester").and_then(custom_person),
        approver: body
            .get("approver")
            .and_then(custom_person)
            .map(|person| Approver { person, source: ApproverSource::ApproverField }),
        approval: None,
        authenticity: meta.authenticity,
        actor: body.get("actor").and_then(custom_person),
        changelog_id: None,
        occurred_at,
        duration: optional("duration"),
        department: optional("department"),
        errors,
        raw_fields,
        targets: None,
    }))
}

/// Where the event holds a value PostgreSQL cannot store, as a JSON path
/// (`application`, `requester.display_name`, `raw_fields.customfield_10027[0].name`):
/// a NUL character (`\u0000`), in a string or an object key, which neither `text`
/// nor `jsonb` accepts. Such an event would be published and then fail in the
/// worker on every delivery; the ingress refuses it with 400 instead, naming the
/// field. The event's own fields are searched before `raw_fields`, so that the
/// answer names the field as the event calls it, not the raw copy it was read from.
pub fn unstorable_value(event: &AccessEvent) -> Option<String> {
    // The common case first, without copying the event into a `Value` tree: JSON
    // writes a NUL as `\u0000`, so a serialization without that text has none.
    if let Ok(bytes) = serde_json::to_vec(event)
        && !bytes.windows(6).any(|w| w == b"\\u0000")
    {
        return None;
    }
    let Ok(Value::Object(fields)) = serde_json::to_value(event) else { return None };
    let (raw, own): (Vec<_>, Vec<_>) = fields.iter().partition(|(k, _)| k.as_str() == "raw_fields");
    own.into_iter().chain(raw).find_map(|(k, v)| if k.contains('\0') { Some(k.clone()) } else { nul_path(v, k) })
}

/// The path of the first string or object key under `v` (at `path`) holding a NUL.
pub fn nul_path(v: &Value, path: &str) -> Option<String> {
    // The common case, no NUL anywhere, without building a path per node.
    if !has_nul(v) {
        return None;
    }
    let child = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match v {
        Value::String(s) => s.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| nul_path(item, &format!("{path}[{i}]"))),
        Value::Object(map) => {
            map.iter().find_map(|(k, v)| if k.contains('\0') { Some(child(k)) } else { nul_path(v, &child(k)) })
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A person of the custom body: `{"account_id", "email", "display_name"}`; none without an account id.
fn custom_person(v: &Value) -> Option<Person> {
    Some(Person {
        account_id: v.get("account_id").and_then(id_string)?,
        email: v.get("email").and_then(non_empty_str),
        display_name: v.get("display_name").and_then(non_empty_str),
    })
}

/// A required single value; a missing or malformed one is recorded in `errors`.
fn required(name: &str, v: Option<&Value>, errors: &mut Vec<String>) -> Option<String> {
    match single_value(v) {
        Ok(v) => Some(v),
        Err(Shape::Missing) => {
            errors.push(format!("missing_required:{name}"));
            None
        }
        Err(Shape::Unexpected(shape)) => {
            errors.push(format!("unexpected_shape:{name}:{shape}"));
            None
        }
    }
}

fn map_status(jsm: &JsmConfig, name: &str) -> Option<AppStatus> {
    jsm.statuses
        .get(name)
        .copied()
        .or_else(|| jsm.statuses.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v))
}

enum Shape {
    Missing,
    Unexpected(&'static str),
}

/// A single-select value (`{"value": ...}`), or a plain string. Arrays are an error, not a guess.
fn single_value(v: Option<&Value>) -> Result<String, Shape> {
    match v {
        None | Some(Value::Null) => Err(Shape::Missing),
        Some(Value::String(s)) if s.trim().is_empty() => Err(Shape::Missing),
        Some(Value::String(s)) => Ok(s.trim().to_owned()),
        Some(Value::Object(o)) => match o.get("value") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            None | Some(Value::Null) => Err(Shape::Missing),
            Some(Value::String(_)) => Err(Shape::Missing),
            Some(_) => Err(Shape::Unexpected("object")),
        },
        Some(Value::Array(_)) => Err(Shape::Unexpected("array")),
        Some(Value::Number(_)) => Err(Shape::Unexpected("number")),
        Some(Value::Bool(_)) => Err(Shape::Unexpected("boolean")),
    }
}

/// The JSM request type's name (`{"requestType": {"name": ...}}`), or a plain string.
fn request_type_name(v: &Value) -> Option<String> {
    v.get("requestType").and_then(|rt| rt.get("name")).and_then(non_empty_str).or_else(|| non_empty_str(v))
}

/// The deciding approval of a JSM approvals field: the latest one by completion
/// time (a pending approval, not completed, counts from its creation, so a new
/// pending approval after an old approved one is what the ticket waits on).
/// Its `approved_by` lists only approvers whose own decision is `approved`.
fn latest_approval(v: &Value) -> Option<Approval> {
    let millis = |a: &Value, key: &str| a.get(key).and_then(|d| d.get("epochMillis")).and_then(Value::as_i64);
    let approval = v
        .as_array()?
        .iter()
        .filter(|a| a.is_object())
        .max_by_key(|a| millis(a, "completedDate").or_else(|| millis(a, "createdDate")).unwrap_or(i64::MIN))?;
    let final_decision = approval
        .get("finalDecision")
        .and_then(Value::as_str)
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "pending".to_owned());
    let approved_by = approval
        .get("approvers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|a| {
                    a.get("approverDecision")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.eq_ignore_ascii_case("approved"))
                })
                .filter_map(|a| a.get("approver").and_then(person))
                .collect()
        })
        .unwrap_or_default();
    Some(Approval {
        id: approval.get("id").and_then(id_string),
        final_decision,
        completed_at: millis(approval, "completedDate").and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        approved_by,
    })
}

fn person(v: &Value) -> Option<Person> {
    let account_id = v.get("accountId").and_then(id_string)?;
    Some(Person {
        account_id,
        email: v.get("emailAddress").and_then(non_empty_str),
        display_name: v.get("displayName").and_then(non_empty_str),
    })
}

fn non_empty_str(v: &Value) -> Option<String> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Ids arrive as strings or numbers; both become strings.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        other => non_empty_str(other),
    }
}

/// Jira's `2024-03-01T10:15:30.000+0000` (offset without a colon) or RFC 3339.
fn parse_jira_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
