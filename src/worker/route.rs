//! Routing a `created` or `stage` event: the JSM side of [`crate::routing`].
//!
//! Once per (ticket, step), under a per-ticket advisory lock held in one
//! transaction (routing is rare and off the grant path, so the transaction
//! may span its few JSM calls; a duplicate delivery waits, then finds the
//! step done):
//! 1. an invalid request gets one public comment saying why (and the
//!    `transition_on_invalid` transition);
//! 2. a valid one gets its approvers: individuals (and `field:` users, and
//!    `group:` members when no groups field is configured) in the Approvers
//!    field, groups in the Approver groups field, written only when the ticket
//!    does not show them already;
//! 3. and, on creation when the rule says `plan`, one internal plan comment.
//!
//! Comments carry a reference line ([`crate::routing::marker`]); before posting,
//! the ticket's comments are searched for it, so a crash between the post and
//! the COMMIT does not post twice. JSM errors go to the retry ladder like a
//! provider's, and every step is audited.

use super::WorkerContext;
use super::process::{Outcome, received_row};
use crate::audit::AuditEntry;
use crate::event::AccessEvent;
use crate::routing::{self, PlanRecord, Resolved, Route, Routing};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

/// Routes one `created` or `stage` event delivered for the `attempt`-th time.
pub async fn route(ctx: &WorkerContext, event: &AccessEvent, attempt: u32) -> Result<Outcome, sqlx::Error> {
    let step = routing::step_of(event);
    let Some(mut tx) = super::process::begin_alone(ctx, event, attempt, "routing", &event.ticket.key).await? else {
        return Ok(Outcome::Duplicate);
    };
    let mut rows = if attempt == 0 { vec![received_row(event)] } else { Vec::new() };
    let done: Option<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT event_id, outcome FROM routings WHERE ticket = $1 AND step = $2")
            .bind(&event.ticket.key)
            .bind(&step)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((by, outcome)) = done {
        // Another delivery of this creation (the webhook and an Automation rule, say) routed it.
        let mut e = super::process::entry(event, "already_routed", "skipped");
        e.detail = json!({"step": step, "routed_by_event": by, "outcome": outcome});
        rows.push(e);
        return super::process::record_alone(tx, event, rows, "already_routed").await;
    }

    let requester_groups = match requester_groups(ctx, event).await {
        Ok(groups) => groups,
        Err(e) => return failed(ctx, tx, event, rows, attempt, e, "jsm_user_groups").await,
    };
    let outcome = match routing::route(event, &ctx.config, &requester_groups) {
        Routing::Skip(reason) => {
            let mut e = super::process::entry(event, "routing_skipped", "skipped");
            e.detail = json!({"step": step, "reason": reason});
            rows.push(e);
            insert(&mut tx, event, &step, "skipped", &Value::Null).await?;
            "not_routed"
        }
        Routing::Invalid(refusal) => match answer_invalid(ctx, event, &refusal).await {
            Ok(wrote) => {
                let mut e = super::process::entry(event, "invalid_request", "refused");
                e.detail = json!({"code": refusal.code(), "reason": refusal.message(), "written": wrote});
                rows.push(e);
                insert(&mut tx, event, &step, "invalid", &Value::Null).await?;
                "invalid_request"
            }
            Err(e) => return failed(ctx, tx, event, rows, attempt, e, "jsm_answer_invalid").await,
        },
        Routing::Route(route) => {
            let plan = ledger_plan(&mut tx, event, &route).await?;
            match write_route(ctx, event, &route, &plan).await {
                Ok((resolved, wrote)) => {
                    let record = PlanRecord::of(&plan, route.lasts);
                    let complete = !resolved.users.is_empty() || !resolved.groups.is_empty();
                    let mut e = super::process::entry(
                        event,
                        "routed",
                        if route.app.dry_run {
                            "dry_run"
                        } else if complete {
                            "ok"
                        } else {
                            "incomplete"
                        },
                    );
                    e.application = Some(route.application.to_owned());
                    e.detail = json!({
                        "step": step,
                        "stage": route.stage.map(|i| route.rule.stages[i].status.clone()),
                        "approvers": resolved,
                        "plan": record,
                        "written": wrote,
                        "note": if route.app.dry_run {
                            Some("dry-run application: nothing read from or written to JSM")
                        } else if ctx.jsm.is_none() {
                            Some("no JSM credentials ([jsm] email_env, api_token_env): nothing written to the ticket")
                        } else {
                            None
                        },
                    });
                    rows.push(e);
                    let plan_json = serde_json::to_value(&record).unwrap_or_default();
                    insert(&mut tx, event, &step, if complete { "routed" } else { "incomplete" }, &plan_json).await?;
                    "routed"
                }
                Err(e) => return failed(ctx, tx, event, rows, attempt, e, "jsm_route").await,
            }
        }
    };
    super::process::record_alone(tx, event, rows, outcome).await
}

async fn insert(
    tx: &mut PgConnection,
    event: &AccessEvent,
    step: &str,
    outcome: &str,
    plan: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO routings (ticket, step, event_id, outcome, plan) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ticket, step) DO NOTHING",
    )
    .bind(&event.ticket.key)
    .bind(step)
    .bind(event.event_id)
    .bind(outcome)
    .bind(if plan.is_null() { json!({}) } else { plan.clone() })
    .execute(tx)
    .await?;
    Ok(())
}

/// A JSM call failed: the routing's transaction is dropped (nothing recorded
/// but the failure), and the message goes to the retry ladder or the dead letters.
async fn failed(
    ctx: &WorkerContext,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    event: &AccessEvent,
    rows: Vec<AuditEntry>,
    attempt: u32,
    error: crate::jsm::JsmError,
    op: &str,
) -> Result<Outcome, sqlx::Error> {
    tx.rollback().await?;
    let what = json!({"op": op, "why": "route the request"});
    super::process::record_failure(
        ctx,
        event,
        rows,
        attempt,
        super::process::jsm_error(error),
        what,
        event.application.as_deref(),
    )
    .await
}

async fn requester_groups(ctx: &WorkerContext, event: &AccessEvent) -> Result<Vec<String>, crate::jsm::JsmError> {
    match (&ctx.jsm, &event.requester) {
        (Some(jsm), Some(requester)) if routing::needs_requester_groups(event, &ctx.config) => {
            jsm.user_groups(&requester.account_id).await
        }
        _ => Ok(Vec::new()),
    }
}

/// The ledger plan of what approval would change, read now.
async fn ledger_plan(
    tx: &mut PgConnection,
    event: &AccessEvent,
    route: &Route<'_>,
) -> Result<crate::grants::Plan, sqlx::Error> {
    let ledger = crate::grants::load(tx, route.application, &route.subject.account_id).await?;
    let targets = route.rule.targets();
    let request = routing::request(event, route.rule, &targets);
    Ok(crate::grants::plan(&ledger, &request, &event.ticket.key, event.occurred_at))
}

/// What a routing wrote to the ticket.
#[derive(Debug, Default, serde::Serialize)]
struct Wrote {
    fields: bool,
    plan_comment: bool,
    comment: bool,
    transition: Option<String>,
}

/// Tells the requester why the request is invalid: one public comment, and the
/// `transition_on_invalid` transition; both skipped when the comment is there already.
async fn answer_invalid(
    ctx: &WorkerContext,
    event: &AccessEvent,
    refusal: &crate::rules::Refusal,
) -> Result<Wrote, crate::jsm::JsmError> {
    let mut wrote = Wrote::default();
    let Some(jsm) = writable(ctx, event) else { return Ok(wrote) };
    let text = routing::invalid_comment(refusal);
    if jsm.has_comment_with(&event.ticket.key, &routing::marker("invalid", "created")).await? {
        return Ok(wrote);
    }
    jsm.comment(&event.ticket.key, &text, true).await?;
    wrote.comment = true;
    if let Some(name) = &ctx.config.jsm.write_back.transition_on_invalid {
        jsm.transition(&event.ticket.key, name).await?;
        wrote.transition = Some(name.clone());
    }
    Ok(wrote)
}

/// The JSM client, unless the application is dry-run (which calls nothing outside accessgov).
fn writable<'c>(ctx: &'c WorkerContext, event: &AccessEvent) -> Option<&'c crate::jsm::JsmClient> {
    let dry_run = event.application.as_ref().and_then(|a| ctx.config.applications.get(a)).is_some_and(|a| a.dry_run);
    ctx.jsm.as_ref().filter(|_| !dry_run)
}

/// Resolves the approvers, writes them where the ticket does not show them yet,
/// and posts the plan (once).
async fn write_route(
    ctx: &WorkerContext,
    event: &AccessEvent,
    route: &Route<'_>,
    plan: &crate::grants::Plan,
) -> Result<(Resolved, Wrote), crate::jsm::JsmError> {
    let mut wrote = Wrote::default();
    let fields = &ctx.config.jsm.fields;
    let Some(jsm) = writable(ctx, event) else {
        // Dry run, or no JSM credentials: nothing is read or written; the entries are audited as they are.
        let resolved = Resolved { unresolved: route.approvers.clone(), ..Resolved::default() };
        return Ok((resolved, wrote));
    };
    // The ticket as it is now: the fields routing writes, and the `field:` users.
    let person_fields: Vec<&str> =
        route.approvers.iter().filter_map(|e| e.strip_prefix("field:")).map(str::trim).collect();
    let mut wanted: Vec<&str> = person_fields.clone();
    wanted.extend(fields.approvers.as_deref());
    wanted.extend(fields.approver_groups.as_deref());
    let current = if wanted.is_empty() { Map::new() } else { jsm.issue_fields(&event.ticket.key, &wanted).await? };

    let resolved = resolve(ctx, jsm, &route.approvers, &current).await?;
    let mut set = Map::new();
    if let Some(id) = &fields.approvers {
        let have = crate::rules::field_accounts(current.get(id));
        if !same_set(&have, &resolved.users) {
            set.insert(id.clone(), json!(resolved.users.iter().map(|a| json!({"accountId": a})).collect::<Vec<_>>()));
        }
    }
    if let Some(id) = &fields.approver_groups {
        let have = group_names(current.get(id));
        if !same_set(&have, &resolved.groups) {
            set.insert(id.clone(), json!(resolved.groups.iter().map(|g| json!({"name": g})).collect::<Vec<_>>()));
        }
    }
    if !set.is_empty() {
        jsm.set_fields(&event.ticket.key, set).await?;
        wrote.fields = true;
    }
    if route.step == "created" && route.rule.plan {
        let marker = routing::marker("plan", &route.step);
        if !jsm.has_comment_with(&event.ticket.key, &marker).await? {
            let text = routing::plan_comment(event, route, plan, &resolved);
            jsm.comment(&event.ticket.key, &text, false).await?;
            wrote.plan_comment = true;
        }
    }
    Ok((resolved, wrote))
}

/// The approver entries as account ids and group names.
async fn resolve(
    ctx: &WorkerContext,
    jsm: &crate::jsm::JsmClient,
    entries: &[String],
    current: &Map<String, Value>,
) -> Result<Resolved, crate::jsm::JsmError> {
    let mut r = Resolved::default();
    let cap = ctx.config.jsm.max_group_members;
    let add_user = |r: &mut Resolved, id: String| {
        if !r.users.contains(&id) {
            r.users.push(id);
        }
    };
    for entry in entries {
        let entry = entry.trim();
        if let Some(group) = entry.strip_prefix("group:").map(str::trim) {
            if ctx.config.jsm.fields.approver_groups.is_some() {
                if !r.groups.iter().any(|g| g.eq_ignore_ascii_case(group)) {
                    r.groups.push(group.to_owned());
                }
                continue;
            }
            match jsm.group_members(group, cap).await? {
                Some(members) if !members.is_empty() => members.into_iter().for_each(|m| add_user(&mut r, m)),
                Some(_) => r.unresolved.push(format!("group:{group} (no active members)")),
                None => r.unresolved.push(format!(
                    "group:{group} (more than {cap} members; set [jsm.fields] approver_groups or raise [jsm] \
                     max_group_members)"
                )),
            }
        } else if let Some(field) = entry.strip_prefix("field:").map(str::trim) {
            let users = crate::rules::field_accounts(current.get(field));
            if users.is_empty() {
                r.unresolved.push(format!("field:{field} (empty on this ticket)"));
            }
            users.into_iter().for_each(|u| add_user(&mut r, u));
        } else if entry.contains('@') {
            match jsm.user_by_email(entry).await? {
                Some(id) => add_user(&mut r, id),
                None => r.unresolved.push(format!("{entry} (no Jira user with this visible email)")),
            }
        } else if !entry.is_empty() {
            add_user(&mut r, entry.to_owned());
        }
    }
    Ok(r)
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// The group names of a multi-group picker value (`[{"name": ...}]`).
fn group_names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|g| g.get("name").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default()
}
