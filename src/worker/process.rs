//! One delivery, start to finish:
//! decode -> dedupe -> decide -> (per application+subject lock) order check ->
//! plan against the ledger -> provider calls -> ledger + audit -> commit.
//!
//! Everything an attempt changes in PostgreSQL (the dedupe row, the ledger, the
//! ticket's progress, the audit rows) commits in one transaction after the
//! provider calls succeeded; a failure rolls it back and records the failure
//! in a transaction of its own, so a retry starts from a clean ledger and the
//! provider's idempotent answers ("already a member") absorb any repeat.

use super::WorkerContext;
use super::retry::{self, Next};
use crate::audit::{self, AuditEntry};
use crate::connectors::{ConnectorError, Target};
use crate::event::{AccessEvent, Person};
use crate::grants::{self, Note, ProviderOp, Request};
use crate::rules::{self, Decision};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use std::time::Duration;

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded for the first time; the label says how it ended.
    Recorded(&'static str),
    /// Already processed; nothing done again.
    Duplicate,
    /// Not an access event we can read.
    Poison(String),
    /// A provider call failed; the failure is audited and `next` says where the message goes.
    Failed { error: ConnectorError, next: Next },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Recorded(l) => l,
            Self::Duplicate => "duplicate",
            Self::Poison(_) => "poison",
            Self::Failed { next: Next::DeadLetter, .. } => "dead_lettered",
            Self::Failed { .. } => "retry_scheduled",
        }
    }
}

/// The decision's effect, when it has one.
struct Effect<'a> {
    application: &'a str,
    subject: &'a Person,
    access_level: &'a str,
    request: Request<'a>,
    max_duration: Option<Duration>,
}

fn effect(decision: &Decision) -> Option<Effect<'_>> {
    match decision {
        Decision::Grant { application, access_level, targets, subject, max_duration, .. } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Grant { targets, access_level },
            max_duration: *max_duration,
        }),
        Decision::Change { application, access_level, targets, subject, max_duration, .. } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Change { targets, access_level },
            max_duration: *max_duration,
        }),
        Decision::Revoke { application, access_level, targets, subject, scope } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Revoke { targets, scope: *scope },
            max_duration: None,
        }),
        Decision::NoAction { .. } | Decision::Refused { .. } => None,
    }
}

/// Processes one message body delivered for the `attempt`-th time (0 = first).
/// `Err` means infrastructure trouble (the database): the caller retries later.
pub async fn process_one(ctx: &WorkerContext, body: &[u8], attempt: u32) -> Result<Outcome, sqlx::Error> {
    let event = match AccessEvent::decode(body) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Poison(e.to_string())),
    };
    let approver_groups = ctx.approver_groups(&event).await;
    let decision = rules::decide(&event, &ctx.config, &approver_groups);

    let mut tx = ctx.pool.begin().await?;
    if !claim(&mut tx, &event, attempt).await? {
        tx.commit().await?;
        tracing::info!(event_id = %event.event_id, ticket = %event.ticket.key, "duplicate event; nothing done again");
        return Ok(Outcome::Duplicate);
    }
    let mut rows = if attempt == 0 { first_rows(&event, &decision) } else { Vec::new() };

    let Some(eff) = effect(&decision) else {
        let label = if matches!(decision, Decision::Refused { .. }) { "denied_by_policy" } else { "no_action" };
        audit::append(&mut tx, &rows).await?;
        tx.commit().await?;
        return Ok(Outcome::Recorded(label));
    };

    // Serialize effects for this (application, subject) across every worker.
    grants::lock(&mut tx, eff.application, &eff.subject.account_id).await?;
    if let Some(last) = ticket_progress(&mut tx, &event.ticket.key).await?
        && event.occurred_at < last
    {
        let mut e = entry(&event, "superseded", "skipped");
        e.detail = json!({"reason": "a newer event of this ticket was already applied", "newer_event_at": last, "event_at": event.occurred_at});
        rows.push(e);
        audit::append(&mut tx, &rows).await?;
        tx.commit().await?;
        return Ok(Outcome::Recorded("superseded"));
    }

    let ledger = grants::load(&mut tx, eff.application, &eff.subject.account_id).await?;
    let plan = grants::plan(&ledger, &eff.request, &event.ticket.key, event.occurred_at);
    let dry_run = ctx.config.applications.get(eff.application).is_none_or(|a| a.dry_run);

    let mut done: Vec<(ProviderOp, &'static str)> = Vec::new();
    let mut failure: Option<(ProviderOp, ConnectorError)> = None;
    if !dry_run {
        for op in &plan.ops {
            match ctx.call(eff.application, eff.subject, op, eff.access_level).await {
                Ok(result) => done.push((op.clone(), result)),
                Err(e) => {
                    failure = Some((op.clone(), e));
                    break;
                }
            }
        }
    }

    if let Some((op, error)) = failure {
        // Nothing of this attempt's ledger changes is kept; the provider calls
        // that did succeed are recorded (they are idempotent on the next try).
        tx.rollback().await?;
        let next = if error.is_transient() {
            retry::next(&ctx.config.broker.retry_delays, attempt, error.retry_after())
        } else {
            Next::DeadLetter
        };
        let mut tx = ctx.pool.begin().await?;
        rows.extend(done.iter().map(|(op, r)| op_entry(&event, op, r, eff.application)));
        let mut e = entry(&event, "provider_error", "failed");
        e.application = Some(eff.application.to_owned());
        e.target = Some(op_target(&op).to_owned());
        e.detail = json!({"op": op, "class": error.class(), "error": error.to_string(), "attempt": attempt});
        rows.push(e);
        if let Next::Retry { delay, attempt: next_attempt, .. } = &next {
            let mut e = entry(&event, "retry_scheduled", "pending");
            e.detail = json!({"attempt": next_attempt, "delay": crate::config::duration::format(*delay)});
            rows.push(e);
        }
        audit::append(&mut tx, &rows).await?;
        tx.commit().await?;
        return Ok(Outcome::Failed { error, next });
    }

    let expires_at = eff.max_duration.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() + d);
    let revoked: Vec<String> =
        plan.ops.iter().filter(|o| matches!(o, ProviderOp::Revoke(_))).map(|o| op_target(o).to_owned()).collect();
    grants::apply(
        &mut tx,
        &grants::Applied {
            application: eff.application,
            subject: &eff.subject.account_id,
            ticket: &event.ticket.key,
            event_id: event.event_id,
            event_at: event.occurred_at,
            expires_at,
        },
        &plan.changes,
        &revoked,
    )
    .await?;
    set_ticket_progress(&mut tx, &event).await?;
    if dry_run {
        for op in &plan.ops {
            let mut e = entry(&event, "dry_run", "skipped");
            e.target = Some(op_target(op).to_owned());
            e.detail = json!({"would": op, "reason": "application is in dry_run mode; no provider call made"});
            rows.push(e);
        }
    } else {
        rows.extend(done.iter().map(|(op, r)| op_entry(&event, op, r, eff.application)));
    }
    rows.extend(plan.notes.iter().map(|n| note_entry(&event, n)));
    audit::append(&mut tx, &rows).await?;
    tx.commit().await?;
    tracing::info!(event_id = %event.event_id, ticket = %event.ticket.key, ops = plan.ops.len(), dry_run, "event applied");
    Ok(Outcome::Recorded(if dry_run { "dry_run" } else { "applied" }))
}

/// Inserts the dedupe row. False when the event was already processed (and then
/// records one `duplicate` audit row the first time that happens). A retry
/// (attempt > 0) finds no row: failed attempts roll theirs back.
async fn claim(tx: &mut PgConnection, event: &AccessEvent, attempt: u32) -> Result<bool, sqlx::Error> {
    let first = sqlx::query(
        "INSERT INTO processed_events (event_id, dedupe_key, ticket, outcome) VALUES ($1, $2, $3, 'processed') \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(&event.dedupe_key)
    .bind(&event.ticket.key)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if first {
        return Ok(true);
    }
    let first_duplicate = sqlx::query(
        "UPDATE processed_events SET duplicate_seen_at = now() WHERE event_id = $1 AND duplicate_seen_at IS NULL",
    )
    .bind(event.event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if first_duplicate {
        let mut e = entry(event, "duplicate", "skipped");
        e.detail = json!({"dedupe_key": event.dedupe_key, "delivery_id": event.delivery_id, "attempt": attempt});
        audit::append(tx, &[e]).await?;
    }
    Ok(false)
}

async fn ticket_progress(tx: &mut PgConnection, ticket: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT last_event_at FROM ticket_progress WHERE ticket = $1")
        .bind(ticket)
        .fetch_optional(tx)
        .await
}

async fn set_ticket_progress(tx: &mut PgConnection, event: &AccessEvent) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ticket_progress (ticket, last_event_id, last_event_at) VALUES ($1, $2, $3) \
         ON CONFLICT (ticket) DO UPDATE SET last_event_id = $2, last_event_at = $3, updated_at = now() \
         WHERE ticket_progress.last_event_at <= $3",
    )
    .bind(&event.ticket.key)
    .bind(event.event_id)
    .bind(event.occurred_at)
    .execute(tx)
    .await?;
    Ok(())
}

fn op_target(op: &ProviderOp) -> &str {
    match op {
        ProviderOp::Grant(t) | ProviderOp::Revoke(t) => t,
    }
}

fn entry(event: &AccessEvent, action: &str, outcome: &str) -> AuditEntry {
    let mut e = AuditEntry::new(action, outcome);
    e.event_id = Some(event.event_id);
    e.ticket = Some(event.ticket.key.clone());
    e.actor = event.actor.as_ref().map(|p| p.account_id.clone());
    e.application = event.application.clone();
    e.subject = event.requester.as_ref().map(|p| p.account_id.clone());
    e
}

fn op_entry(event: &AccessEvent, op: &ProviderOp, result: &str, application: &str) -> AuditEntry {
    let action = match op {
        ProviderOp::Grant(_) => "granted",
        ProviderOp::Revoke(_) => "revoked",
    };
    let mut e = entry(event, action, "ok");
    e.application = Some(application.to_owned());
    e.target = Some(op_target(op).to_owned());
    e.detail = json!({"provider_result": result});
    e
}

fn note_entry(event: &AccessEvent, note: &Note) -> AuditEntry {
    let (action, outcome, target) = match note {
        Note::HoldAdded { target, .. } => ("hold_added", "ok", target),
        Note::HoldReleased { target, .. } => ("hold_released", "ok", target),
        Note::AlreadyHeld { target } => ("already_held", "skipped", target),
        Note::Superseded { target, .. } => ("superseded", "skipped", target),
        Note::NothingHeld { target } => ("nothing_held", "skipped", target),
    };
    let mut e = entry(event, action, outcome);
    e.target = Some(target.clone());
    e.detail = serde_json::to_value(note).unwrap_or_default();
    e
}

/// The rows every first attempt starts with: `received`, `decided`, and the refusal if any.
fn first_rows(event: &AccessEvent, decision: &Decision) -> Vec<AuditEntry> {
    let mut received = entry(event, "received", "ok");
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
        "occurred_at": event.occurred_at,
        "errors": event.errors,
    });
    let mut decided = entry(event, "decided", "ok");
    decided.actor = event.approver.as_ref().map(|a| a.person.account_id.clone());
    decided.detail = serde_json::to_value(decision).unwrap_or_default();
    let mut rows = vec![received];
    if let Decision::Refused { reason } = decision {
        decided.outcome = "refused".into();
        rows.push(decided);
        let mut refused = entry(event, "denied_by_policy", "refused");
        refused.detail = json!({"code": reason.code(), "reason": reason.message()});
        rows.push(refused);
    } else {
        rows.push(decided);
    }
    rows
}

impl WorkerContext {
    /// One provider call with short in-process retries for transient failures.
    async fn call(
        &self,
        application: &str,
        subject: &Person,
        op: &ProviderOp,
        access_level: &str,
    ) -> Result<&'static str, ConnectorError> {
        let Some(connector) = self.connectors.get(application) else {
            return Err(ConnectorError::Permanent {
                reason: format!("no connector is configured for application {application:?}"),
            });
        };
        let role = self.config.rule_for(application, access_level).and_then(|r| r.role.clone());
        let target = Target { name: op_target(op).to_owned(), role };
        let mut waits = self.config.worker.inline_backoff.iter();
        loop {
            let result = match op {
                ProviderOp::Grant(_) => connector.grant(subject, &target).await.map(|r| match r {
                    crate::connectors::GrantOutcome::Granted => "granted",
                    crate::connectors::GrantOutcome::AlreadyGranted => "already_granted",
                }),
                ProviderOp::Revoke(_) => connector.revoke(subject, &target).await.map(|r| match r {
                    crate::connectors::RevokeOutcome::Revoked => "revoked",
                    crate::connectors::RevokeOutcome::AlreadyAbsent => "already_absent",
                }),
            };
            match result {
                Err(e) if e.is_transient() => {
                    let Some(base) = waits.next() else { return Err(e) };
                    let wait = e.retry_after().map_or(*base, |hint| hint.max(*base));
                    if wait > self.config.worker.max_inline_wait {
                        return Err(e);
                    }
                    tracing::info!(application, error = %e, wait_ms = wait.as_millis() as u64, "transient provider error; retrying in process");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// The approver's Jira groups, for `group:` approver entries. Not resolved
    /// yet (no Jira client wired in): an empty list, so group entries match nobody.
    async fn approver_groups(&self, _event: &AccessEvent) -> Vec<String> {
        Vec::new()
    }
}
