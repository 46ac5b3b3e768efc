//! Joiners and movers: an approved `onboard` request grants the `[[roles]]`
//! bundle its department field selects.
//!
//! The onboarding ticket itself calls no provider. Once its approver is shown to
//! be one the role allows (the same evidence as any grant: the approvals field,
//! a signed transition, or the live JSM approvals with `verify_approval`), its
//! worker publishes one grant event per item into the normal pipeline
//! (`Source::Onboard`, under the onboarding ticket: one hold per item, all held
//! by that ticket), each decided against its rule's targets with the intents,
//! retries, dead letters and audit rows of any grant.
//!
//! A subject onboarded before (`role_assignments`) is a mover: [`diff`] keeps
//! the items both roles have (their holds stay with the old ticket), grants the
//! new role's others and revokes the items only the old role gave (one
//! ticket-scoped revoke per application of the old ticket; an application
//! where the old ticket also holds a kept item is left alone and said so, as
//! its revoke would take the kept item too). Holds other tickets keep survive,
//! through the reference-counted ledger.

use super::WorkerContext;
use super::process::{Outcome, entry, received_row};
use crate::config::{AppStatus, RequestAction};
use crate::connectors::ConnectorError;
use crate::event::{AccessEvent, Approver, ApproverSource, Person, Source, StatusChange, event_id_for};
use serde::Serialize;
use serde_json::json;

/// (application, access level).
pub type Item = (String, String);

/// An item of a role as held: (application, access level, the ticket that holds it).
pub type HeldItem = (String, String, String);

/// What a role change does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// In both roles: nothing to do (held by the ticket that granted it).
    pub keep: Vec<HeldItem>,
    /// Only in the new role: granted under the new ticket.
    pub grant: Vec<Item>,
    /// Only in the old role: revoked (its ticket's holds in its application).
    pub revoke: Vec<HeldItem>,
    /// Only in the old role, but its ticket also holds a kept item in the same
    /// application: left in place (a ticket-scoped revoke would take both).
    pub left: Vec<HeldItem>,
}

impl Diff {
    /// The role's items as held after the change (under `ticket` for new grants).
    pub fn held_after(&self, ticket: &str) -> Vec<HeldItem> {
        let mut out = self.keep.clone();
        out.extend(self.grant.iter().map(|(a, l)| (a.clone(), l.clone(), ticket.to_owned())));
        out
    }
}

/// The change from `old` (the items of the subject's current role as held, if
/// any) to `new`. Pure.
pub fn diff(old: &[HeldItem], new: &[Item]) -> Diff {
    let same = |a: &HeldItem, b: &Item| a.0 == b.0 && a.1.eq_ignore_ascii_case(&b.1);
    let mut d = Diff::default();
    for item in new {
        match old.iter().find(|o| same(o, item)) {
            Some(held) => d.keep.push(held.clone()),
            None => d.grant.push(item.clone()),
        }
    }
    for item in old.iter().filter(|o| !new.iter().any(|n| same(o, n))) {
        if d.keep.iter().any(|k| k.0 == item.0 && k.2 == item.2) {
            d.left.push(item.clone());
        } else {
            d.revoke.push(item.clone());
        }
    }
    d
}

/// The subject's current role: (role, ticket of that onboarding, items as held).
pub async fn current_role<'c>(
    db: impl sqlx::PgExecutor<'c>,
    subject: &str,
) -> Result<Option<(String, String, Vec<HeldItem>)>, sqlx::Error> {
    let row: Option<(String, String, sqlx::types::Json<Vec<HeldItem>>)> = sqlx::query_as(
        "SELECT role, ticket, items FROM role_assignments WHERE subject = $1 ORDER BY assigned_at DESC LIMIT 1",
    )
    .bind(subject)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(role, ticket, items)| (role, ticket, items.0)))
}

/// The grant event of one item of the role, for the onboarding `by`.
pub fn grant_event(by: &AccessEvent, subject: &Person, approver: &Person, item: &Item) -> AccessEvent {
    let dedupe_key = format!("onboard:{}:{}:{}:{}", by.event_id, item.0, item.1, subject.account_id);
    let mut e = by.clone();
    e.event_id = event_id_for(&dedupe_key);
    e.dedupe_key = dedupe_key;
    e.source = Source::Onboard;
    e.action = RequestAction::Grant;
    e.app_status = AppStatus::Approved;
    e.status = StatusChange { from: None, to: format!("onboarded by {}", by.ticket.key), from_id: None, to_id: None };
    e.application = Some(item.0.clone());
    e.access_level = Some(item.1.clone());
    e.requester = Some(subject.clone());
    e.approver = Some(Approver { person: approver.clone(), source: ApproverSource::JsmApprovals });
    e.errors = Vec::new();
    e.targets = None;
    e
}

/// Onboards the subject of an approved `onboard` event delivered for the `attempt`-th time.
pub async fn start(ctx: &WorkerContext, event: &AccessEvent, attempt: u32) -> Result<Outcome, sqlx::Error> {
    // The decision first, with no transaction open: it may ask JSM.
    let decided = match decide(ctx, event).await {
        Ok(d) => d,
        Err(e) => {
            let rows = if attempt == 0 { vec![received_row(event)] } else { Vec::new() };
            let what = json!({"op": "jsm_onboarding_approval"});
            let error = super::process::jsm_error(e);
            return super::process::record_failure(ctx, event, rows, attempt, error, what, None).await;
        }
    };
    let subject_key = event.requester.as_ref().map_or("", |p| p.account_id.as_str());
    let Some(mut tx) = super::process::begin_alone(ctx, event, attempt, "onboard", subject_key).await? else {
        return Ok(Outcome::Duplicate);
    };
    let mut rows = if attempt == 0 { vec![received_row(event)] } else { Vec::new() };
    let (index, approver) = match decided {
        Ok(d) => d,
        Err(refusal) => {
            let mut e = entry(event, "denied_by_policy", "refused");
            e.detail = json!({"code": refusal.code(), "reason": refusal.message()});
            rows.push(e);
            let outcome = super::process::record_alone(tx, event, rows, "denied_by_policy").await;
            let text = format!("accessgov did not onboard this request: {}.", refusal.message());
            ctx.write_back(event, super::process::WriteBack::Failure(text)).await;
            return outcome;
        }
    };
    let role = &ctx.config.roles[index];
    let subject = event.requester.clone().expect("decide_onboard checked the requester");
    let previous = current_role(&mut *tx, &subject.account_id).await?;
    let old = match &previous {
        Some((_, ticket, items)) if ticket != &event.ticket.key => items.clone(),
        _ => Vec::new(),
    };
    let change = diff(&old, &role.items());
    let grants = change.grant.iter().map(|item| grant_event(event, &subject, &approver, item));
    let mut pairs: Vec<(&String, &String)> = change.revoke.iter().map(|(app, _, ticket)| (ticket, app)).collect();
    pairs.sort();
    pairs.dedup();
    let revokes = pairs.into_iter().map(|(ticket, app)| {
        let held = super::offboard::Held {
            ticket: ticket.clone(),
            application: app.clone(),
            access_level: String::new(),
            targets: Vec::new(),
            subject_info: None,
        };
        let mut e = super::offboard::revoke_event(event, &subject, &held);
        e.dedupe_key = format!("onboard-revoke:{}:{ticket}:{app}:{}", event.event_id, subject.account_id);
        e.event_id = event_id_for(&e.dedupe_key);
        e.status.to = format!("role changed by {}", event.ticket.key);
        e
    });
    for published in grants.chain(revokes).collect::<Vec<_>>() {
        if let Err(e) = ctx.broker.publish_event(&published, 0, ctx.config.broker.confirm_timeout).await {
            drop(tx);
            let error = ConnectorError::Transient { reason: format!("broker: {e}"), retry_after: None };
            let what = json!({"op": "publish_onboarding_items"});
            return super::process::record_failure(ctx, event, rows, attempt, error, what, None).await;
        }
    }
    sqlx::query(
        "INSERT INTO role_assignments (subject, role, ticket, event_id, items) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (subject, ticket) DO NOTHING",
    )
    .bind(&subject.account_id)
    .bind(&role.department)
    .bind(&event.ticket.key)
    .bind(event.event_id)
    .bind(sqlx::types::Json(change.held_after(&event.ticket.key)))
    .execute(&mut *tx)
    .await?;
    let mut e = entry(event, "onboarded", "ok");
    e.actor = Some(approver.account_id.clone());
    e.subject = Some(subject.account_id.clone());
    e.detail = json!({
        "role": role.department,
        "previous_role": previous.as_ref().map(|(r, t, _)| json!({"role": r, "ticket": t})),
        "diff": change,
    });
    rows.push(e);
    let outcome = super::process::record_alone(tx, event, rows, "onboarding").await;
    ctx.write_back(event, super::process::WriteBack::Info(list_comment(&role.department, previous.as_ref(), &change)))
        .await;
    outcome
}

/// The roles decision, with the JSM reads it needs (the approvers' groups for
/// `group:` entries, the live approval with `verify_approval`). `Err` is JSM
/// trouble (retried); `Ok(Err)` a refusal.
async fn decide(
    ctx: &WorkerContext,
    event: &AccessEvent,
) -> Result<Result<(usize, Person), crate::rules::Refusal>, crate::jsm::JsmError> {
    let mut facts = crate::rules::Facts { verify_approval: ctx.verify_approval, ..Default::default() };
    let role = event
        .department
        .as_deref()
        .and_then(|d| ctx.config.roles.iter().find(|r| r.department.trim().eq_ignore_ascii_case(d.trim())));
    if let (Some(jsm), Some(role)) = (&ctx.jsm, role)
        && role.approvers.iter().any(|a| a.starts_with("group:"))
    {
        for person in crate::rules::approver_candidates(event) {
            facts.approver_groups.insert(person.account_id.clone(), jsm.user_groups(&person.account_id).await?);
        }
    }
    let decided = crate::rules::decide_onboard(event, &ctx.config, &facts);
    if let (Ok((_, approver)), true) = (&decided, ctx.verify_approval) {
        let Some(jsm) = &ctx.jsm else {
            return Ok(Err(crate::rules::Refusal::ApprovalNotConfirmed {
                reason: "verify_approval is on but no JSM credentials are configured".into(),
            }));
        };
        let live = jsm.approval_state(&event.ticket.key).await?;
        if let Err(reason) = crate::jsm::confirms(event, approver, None, &live, &ctx.config.jsm.statuses) {
            return Ok(Err(crate::rules::Refusal::ApprovalNotConfirmed { reason }));
        }
    }
    Ok(decided)
}

/// The onboarding's comment: the role, and what changes.
pub fn list_comment(role: &str, previous: Option<&(String, String, Vec<HeldItem>)>, d: &Diff) -> String {
    let item = |(app, level): &Item| format!("{app} {level}");
    let held = |(app, level, ticket): &HeldItem| format!("{app} {level} ({ticket})");
    let mut lines = vec![match previous {
        Some((old, ticket, _)) => format!("accessgov is moving this person from role {old:?} ({ticket}) to {role:?}:"),
        None => format!("accessgov is granting role {role:?}:"),
    }];
    lines.extend(d.grant.iter().map(|i| format!("- grant {}", item(i))));
    lines.extend(d.keep.iter().map(|i| format!("- keep {} (already granted)", held(i))));
    lines.extend(d.revoke.iter().map(|i| format!("- revoke {} (only the old role gave it)", held(i))));
    lines.extend(d.left.iter().map(|i| format!("- leave {} in place (its ticket keeps another item there)", held(i))));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[(&str, &str)]) -> Vec<Item> {
        v.iter().map(|(a, l)| ((*a).to_owned(), (*l).to_owned())).collect()
    }

    fn held(v: &[(&str, &str, &str)]) -> Vec<HeldItem> {
        v.iter().map(|(a, l, t)| ((*a).to_owned(), (*l).to_owned(), (*t).to_owned())).collect()
    }

    #[test]
    fn a_joiner_gets_the_whole_bundle() {
        let d = diff(&[], &items(&[("Okta", "User"), ("GitHub", "Write")]));
        assert_eq!(d.grant, items(&[("Okta", "User"), ("GitHub", "Write")]));
        assert!(d.keep.is_empty() && d.revoke.is_empty() && d.left.is_empty());
        assert_eq!(d.held_after("ACC-1"), held(&[("Okta", "User", "ACC-1"), ("GitHub", "Write", "ACC-1")]));
    }

    #[test]
    fn a_mover_keeps_the_shared_item_with_its_ticket_and_swaps_the_others() {
        let old = held(&[("Okta", "User", "ACC-1"), ("Confluence", "Write", "ACC-1"), ("AWS", "Admin", "ACC-1")]);
        let new = items(&[("Okta", "user"), ("GitHub", "Write"), ("AWS", "Read")]);
        let d = diff(&old, &new);
        assert_eq!(d.keep, held(&[("Okta", "User", "ACC-1")]));
        assert_eq!(d.grant, items(&[("GitHub", "Write"), ("AWS", "Read")]));
        assert_eq!(d.revoke, held(&[("Confluence", "Write", "ACC-1"), ("AWS", "Admin", "ACC-1")]));
        assert!(d.left.is_empty());
        assert_eq!(
            d.held_after("ACC-2"),
            held(&[("Okta", "User", "ACC-1"), ("GitHub", "Write", "ACC-2"), ("AWS", "Read", "ACC-2")])
        );
    }

    #[test]
    fn an_old_only_item_whose_ticket_keeps_another_item_in_its_application_is_left_in_place() {
        let old = held(&[("Okta", "User", "ACC-1"), ("Okta", "Admin", "ACC-1"), ("Okta", "Audit", "ACC-0")]);
        let d = diff(&old, &items(&[("Okta", "User")]));
        assert_eq!(d.left, held(&[("Okta", "Admin", "ACC-1")]));
        // Held through another ticket, it can be revoked on its own.
        assert_eq!(d.revoke, held(&[("Okta", "Audit", "ACC-0")]));
    }
}
