//! Leavers: an approved `offboard` request revokes every active hold of its
//! subject, in every live application, whatever ticket took it.
//!
//! The offboarding ticket itself calls no provider. Its worker publishes one
//! revoke event per (granting ticket, application) of the subject's holds into
//! the normal pipeline (`Source::Offboard`, decided like an expiry: that
//! ticket's holds are released through the reference-counted ledger, on the
//! identity they were granted to). So the revokes run in parallel across
//! applications within each application's rate limit, with the same intents,
//! retries, dead letters and audit rows (`revoked`, `hold_released`) as any
//! other, and a granting ticket's last revoke is recorded, so its old approval
//! can never grant again. The offboarding ticket gets one internal comment with
//! the complete list, and one `offboarded` audit row with it; a second
//! offboarding of the same person finds nothing held and says so.

use super::WorkerContext;
use super::process::{Outcome, entry, received_row};
use crate::config::{AppStatus, RequestAction};
use crate::connectors::ConnectorError;
use crate::event::{AccessEvent, Person, SCHEMA_V1, Source, StatusChange, Ticket, event_id_for};
use chrono::Utc;
use serde_json::json;

/// One granting ticket's holds of the leaver in one application.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Held {
    pub ticket: String,
    pub application: String,
    pub access_level: String,
    pub targets: Vec<String>,
    pub subject_info: Option<serde_json::Value>,
}

/// The subject's active holds in the live applications, per (ticket, application).
pub async fn holds_of(pool: &sqlx::PgPool, subject: &str, live: &[String]) -> Result<Vec<Held>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.ticket, g.application, min(h.access_level) AS access_level, \
                array_agg(g.target ORDER BY g.target) AS targets, (array_agg(g.subject_info))[1] AS subject_info \
         FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
         WHERE g.subject = $1 AND g.state = 'active' AND g.application = ANY($2) \
         GROUP BY h.ticket, g.application ORDER BY g.application, h.ticket",
    )
    .bind(subject)
    .bind(live)
    .fetch_all(pool)
    .await
}

/// The revoke event of one granting ticket's holds, for offboarding ticket `by`.
pub fn revoke_event(by: &AccessEvent, subject: &Person, h: &Held) -> AccessEvent {
    let dedupe_key = format!("offboard:{}:{}:{}:{}", by.ticket.key, h.ticket, h.application, subject.account_id);
    let known: Option<crate::connectors::Subject> = h.subject_info.clone().and_then(|v| serde_json::from_value(v).ok());
    AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::Offboard,
        delivery_id: None,
        ticket: Ticket { key: h.ticket.clone(), id: String::new(), project_key: None, request_type: String::new() },
        action: RequestAction::Offboard,
        app_status: AppStatus::Revoked,
        status: StatusChange { from: None, to: format!("offboarded by {}", by.ticket.key), from_id: None, to_id: None },
        application: Some(h.application.clone()),
        access_level: Some(h.access_level.clone()),
        requester: Some(Person {
            account_id: subject.account_id.clone(),
            email: known.as_ref().and_then(|s| s.email.clone()).or_else(|| subject.email.clone()),
            display_name: known.as_ref().and_then(|s| s.display_name.clone()),
        }),
        approver: None,
        approval: None,
        authenticity: None,
        actor: by.actor.clone(),
        changelog_id: None,
        // Now, not the offboarding's time: nothing applied since may supersede it.
        occurred_at: Utc::now().max(by.occurred_at),
        duration: None,
        department: None,
        errors: Vec::new(),
        raw_fields: Default::default(),
        targets: None,
    }
}

/// `[offboard] include_unmanaged`: the leaver's memberships of each live
/// application's managed targets that no hold of theirs accounts for, read back
/// through the connectors (application -> targets). An application that cannot
/// be read is named in `unreadable` with why.
pub async fn unmanaged(
    ctx: &WorkerContext,
    subject: &Person,
    holds: &[Held],
) -> (Vec<(String, Vec<String>)>, Vec<(String, String)>) {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let identity = crate::connectors::Subject::from_person(subject);
    let mut apps: Vec<(&String, &std::sync::Arc<dyn crate::connectors::Connector>)> = ctx.connectors.iter().collect();
    apps.sort_by(|a, b| a.0.cmp(b.0));
    for (app, connector) in apps {
        let mut managed: Vec<crate::connectors::Target> = Vec::new();
        for rule in ctx.config.rules.iter().filter(|r| &r.application == app) {
            for name in rule.targets() {
                if !managed.iter().any(|t| t.name == name) {
                    managed.push(crate::connectors::Target { name, role: rule.role.clone() });
                }
            }
        }
        if managed.is_empty() {
            continue;
        }
        match crate::metrics::provider_scope(app, "memberships", connector.memberships(&identity, &managed)).await {
            Ok(held_there) => {
                let ours: Vec<&String> =
                    holds.iter().filter(|h| &h.application == app).flat_map(|h| h.targets.iter()).collect();
                let extra: Vec<String> = held_there.into_iter().filter(|t| !ours.contains(&t)).collect();
                if !extra.is_empty() {
                    found.push((app.clone(), extra));
                }
            }
            Err(e) => unreadable.push((app.clone(), e.to_string())),
        }
    }
    (found, unreadable)
}

/// The event that removes a leaver's unmanaged memberships of one application.
pub fn remove_event(by: &AccessEvent, subject: &Person, application: &str, targets: &[String]) -> AccessEvent {
    let held = Held {
        ticket: by.ticket.key.clone(),
        application: application.to_owned(),
        access_level: "unmanaged".into(),
        targets: targets.to_vec(),
        subject_info: None,
    };
    let mut e = revoke_event(by, subject, &held);
    e.dedupe_key = format!("offboard-unmanaged:{}:{application}:{}", by.ticket.key, subject.account_id);
    e.event_id = event_id_for(&e.dedupe_key);
    e.targets = Some(targets.to_vec());
    e
}

/// The comment that lists what the offboarding revokes.
pub fn list_comment(by: &AccessEvent, subject: &Person, holds: &[Held], extra: &[String]) -> String {
    let who = subject.display_name.clone().unwrap_or_else(|| subject.account_id.clone());
    let mut lines = if holds.is_empty() && !extra.is_empty() {
        vec![format!("accessgov offboarding of {who}: nothing is held through accessgov.")]
    } else if holds.is_empty() {
        vec![format!("accessgov offboarding of {who}: nothing is held through accessgov; nothing to revoke.")]
    } else {
        let mut l = vec![format!(
            "accessgov offboarding of {who}: revoking {} hold(s) in {} application(s):",
            holds.iter().map(|h| h.targets.len()).sum::<usize>(),
            holds.iter().map(|h| h.application.as_str()).collect::<std::collections::BTreeSet<_>>().len()
        )];
        l.extend(
            holds
                .iter()
                .map(|h| format!("- {}: {} (granted through {})", h.application, h.targets.join(", "), h.ticket)),
        );
        l
    };
    lines.extend(extra.iter().cloned());
    lines.push(crate::routing::marker("offboard", &by.ticket.key));
    lines.join("\n")
}

/// Offboards the subject of an approved `offboard` event delivered for the `attempt`-th time.
pub async fn start(ctx: &WorkerContext, event: &AccessEvent, attempt: u32) -> Result<Outcome, sqlx::Error> {
    let Some(tx) = super::process::begin_alone(ctx, event, attempt, "offboard", &event.ticket.key).await? else {
        return Ok(Outcome::Duplicate);
    };
    let mut rows = if attempt == 0 { vec![received_row(event)] } else { Vec::new() };
    let Some(subject) = event.requester.clone() else {
        let mut e = entry(event, "denied_by_policy", "refused");
        e.detail = json!({"code": "no_requester", "reason": "the offboarding ticket names nobody"});
        rows.push(e);
        return super::process::record_alone(tx, event, rows, "denied_by_policy").await;
    };
    let live: Vec<String> =
        ctx.config.applications.iter().filter(|(_, a)| !a.dry_run).map(|(n, _)| n.clone()).collect();
    let holds = holds_of(&ctx.pool, &subject.account_id, &live).await?;
    let (unmanaged, unreadable) = if ctx.config.offboard.include_unmanaged {
        unmanaged(ctx, &subject, &holds).await
    } else {
        (Vec::new(), Vec::new())
    };
    let removes = unmanaged.iter().map(|(app, targets)| remove_event(event, &subject, app, targets));
    for revoke in holds.iter().map(|h| revoke_event(event, &subject, h)).chain(removes) {
        if let Err(e) = ctx.broker.publish_event(&revoke, 0, ctx.config.broker.confirm_timeout).await {
            drop(tx);
            let error = ConnectorError::Transient { reason: format!("broker: {e}"), retry_after: None };
            let what = json!({"op": "publish_offboard_revokes"});
            return super::process::record_failure(ctx, event, rows, attempt, error, what, None).await;
        }
    }
    let mut extra: Vec<String> = unmanaged
        .iter()
        .map(|(app, targets)| format!("- {app}: {} (not granted through accessgov; removed too)", targets.join(", ")))
        .collect();
    extra.extend(unreadable.iter().map(|(app, why)| format!("- {app}: could not be read back ({why})")));
    let text = list_comment(event, &subject, &holds, &extra);
    let commented = match &ctx.jsm {
        Some(jsm) => {
            let marker = crate::routing::marker("offboard", &event.ticket.key);
            match jsm.has_comment_with(&event.ticket.key, &marker).await {
                Ok(true) => Ok(false),
                Ok(false) => jsm.comment(&event.ticket.key, &text, false).await.map(|()| true),
                Err(e) => Err(e),
            }
        }
        None => Ok(false),
    };
    if let Err(e) = &commented {
        tracing::warn!(ticket = %event.ticket.key, error = %e, "could not comment the offboarding list");
    }
    let nothing = holds.is_empty() && unmanaged.is_empty();
    let mut e = entry(event, "offboarded", if nothing { "skipped" } else { "ok" });
    e.subject = Some(subject.account_id.clone());
    e.detail = json!({
        "revokes": holds.iter().map(|h| json!({"application": h.application, "ticket": h.ticket, "targets": h.targets})).collect::<Vec<_>>(),
        "holds": holds.iter().map(|h| h.targets.len()).sum::<usize>(),
        "unmanaged": unmanaged.iter().map(|(app, targets)| json!({"application": app, "targets": targets})).collect::<Vec<_>>(),
        "unreadable": unreadable.iter().map(|(app, why)| json!({"application": app, "error": why})).collect::<Vec<_>>(),
        "commented": commented.as_ref().ok(),
        "comment_error": commented.as_ref().err().map(ToString::to_string),
    });
    rows.push(e);
    super::process::record_alone(tx, event, rows, if nothing { "nothing_held" } else { "offboarding" }).await
}
