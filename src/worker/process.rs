//! One delivery, start to finish: decode -> dedupe -> decide -> record.
//!
//! The dedupe row and the audit rows are written in one transaction, so either
//! the event is fully recorded (and a redelivery finds it) or nothing is.

use super::WorkerContext;
use crate::audit::{self, AuditEntry};
use crate::event::AccessEvent;
use crate::rules::{self, Decision};
use serde_json::json;

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded for the first time; the label says how it was decided.
    Recorded(&'static str),
    /// Already processed; nothing done again.
    Duplicate,
    /// Not an access event we can read.
    Poison(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Recorded(l) => l,
            Self::Duplicate => "duplicate",
            Self::Poison(_) => "poison",
        }
    }
}

/// Processes one message body. `Err` means infrastructure trouble (retry later).
pub async fn process_one(ctx: &WorkerContext, body: &[u8]) -> Result<Outcome, sqlx::Error> {
    let event = match AccessEvent::decode(body) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Poison(e.to_string())),
    };
    // `group:` approver entries need the approver's Jira groups; resolving them
    // through the Jira API is not built yet, so they match nobody for now.
    let decision = rules::decide(&event, &ctx.config, &[]);
    let label = match &decision {
        Decision::Grant { .. } | Decision::Change { .. } | Decision::Revoke { .. } => "decided",
        Decision::NoAction { .. } => "no_action",
        Decision::Refused { .. } => "denied_by_policy",
    };

    let mut tx = ctx.pool.begin().await?;
    let first = sqlx::query(
        "INSERT INTO processed_events (event_id, dedupe_key, ticket, outcome) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(&event.dedupe_key)
    .bind(&event.ticket.key)
    .bind(label)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;

    if !first {
        let first_duplicate = sqlx::query(
            "UPDATE processed_events SET duplicate_seen_at = now() WHERE event_id = $1 AND duplicate_seen_at IS NULL",
        )
        .bind(event.event_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if first_duplicate {
            let mut e = base_entry(&event, "duplicate", "skipped");
            e.detail = json!({"dedupe_key": event.dedupe_key, "delivery_id": event.delivery_id});
            audit::append(&mut tx, &[e]).await?;
        }
        tx.commit().await?;
        tracing::info!(event_id = %event.event_id, ticket = %event.ticket.key, "duplicate event; nothing done again");
        return Ok(Outcome::Duplicate);
    }

    let entries = entries_for(ctx, &event, &decision);
    audit::append(&mut tx, &entries).await?;
    tx.commit().await?;
    tracing::info!(event_id = %event.event_id, ticket = %event.ticket.key, outcome = label, "event recorded");
    Ok(Outcome::Recorded(label))
}

fn base_entry(event: &AccessEvent, action: &str, outcome: &str) -> AuditEntry {
    let mut e = AuditEntry::new(action, outcome);
    e.event_id = Some(event.event_id);
    e.ticket = Some(event.ticket.key.clone());
    e.actor = event.actor.as_ref().map(|p| p.account_id.clone());
    e.application = event.application.clone();
    e.subject = event.requester.as_ref().map(|p| p.account_id.clone());
    e
}

/// The audit rows for a first-time event (pure given the config).
pub fn entries_for(ctx: &WorkerContext, event: &AccessEvent, decision: &Decision) -> Vec<AuditEntry> {
    let mut received = base_entry(event, "received", "ok");
    received.detail = json!({
        "source": event.source,
        "action": event.action,
        "app_status": event.app_status,
        "status": event.status,
        "access_level": event.access_level,
        "approver": event.approver.as_ref().map(|a| json!({"account_id": a.person.account_id, "source": a.source})),
        "delivery_id": event.delivery_id,
        "changelog_id": event.changelog_id,
        "dedupe_key": event.dedupe_key,
        "errors": event.errors,
    });
    let mut decided = base_entry(event, "decided", "ok");
    decided.actor = event.approver.as_ref().map(|a| a.person.account_id.clone());
    decided.detail = serde_json::to_value(decision).unwrap_or_default();
    let mut out = vec![received];

    match decision {
        Decision::Refused { reason } => {
            decided.outcome = "refused".into();
            out.push(decided);
            let mut refused = base_entry(event, "denied_by_policy", "refused");
            refused.detail = json!({"code": reason.code(), "reason": reason.message()});
            out.push(refused);
        }
        Decision::NoAction { .. } => out.push(decided),
        Decision::Grant { application, targets, .. }
        | Decision::Change { application, targets, .. }
        | Decision::Revoke { application, targets, .. } => {
            out.push(decided);
            let effect = match decision {
                Decision::Revoke { .. } => "revoke",
                Decision::Change { .. } => "change",
                _ => "grant",
            };
            let dry_run = ctx.config.applications.get(application).is_some_and(|a| a.dry_run);
            for target in targets {
                let mut e = base_entry(event, if dry_run { "dry_run" } else { "not_applied" }, "skipped");
                e.target = Some(target.clone());
                e.detail = if dry_run {
                    json!({"would": effect, "reason": "application is in dry_run mode; no provider call made"})
                } else {
                    json!({"would": effect, "reason": "no connector for this application kind in this build"})
                };
                out.push(e);
            }
        }
    }
    out
}
