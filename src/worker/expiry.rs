//! Time-bound access: when a ticket's holds pass their `expires_at`, the sweeper
//! publishes one `expiry` event per (ticket, application, subject) into the
//! normal request pipeline. The worker then revokes that ticket's holds like a
//! revoked ticket: under the per-subject lock, through the reference-counted
//! ledger (another ticket's hold keeps the membership), on the identity the
//! membership was granted to, with in-process retries, the retry ladder and, at
//! the end, `dead_letters`, where an operator can replay it. A failing expiry is
//! therefore never retried forever by the sweeper itself.
//!
//! - Due holds are taken in `expires_at` order, one event per ticket and subject,
//!   so one subject with many holds cannot starve the others.
//! - A hold is marked `expiry_enqueued_at` once its event is confirmed by the
//!   broker; a crash in between publishes again, and the event id (derived from
//!   ticket, application, subject and expiry time) makes that a duplicate.
//! - Dry-run applications are left alone: their ledger mirrors the provider,
//!   which a dry run never changes.

use super::WorkerContext;
use crate::config::{AppStatus, RequestAction};
use crate::event::{AccessEvent, Person, SCHEMA_V1, Source, StatusChange, Ticket, event_id_for};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Expiry events published per sweep at most.
const BATCH: i64 = 500;

pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken, every: Duration) {
    loop {
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(enqueued = n, "expired access enqueued for revocation"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; trying again next round"),
        }
        match notify_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tickets = n, "told tickets of access expiring soon"),
            Err(e) => tracing::warn!(error = %e, "expiry notices failed; trying again next round"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

pub use crate::grants::Due;

/// Publishes an expiry event for every due (ticket, application, subject) of a
/// live application; returns how many were enqueued.
pub async fn sweep_once(ctx: &WorkerContext) -> anyhow::Result<usize> {
    let live: Vec<String> =
        ctx.config.applications.iter().filter(|(_, a)| !a.dry_run).map(|(name, _)| name.clone()).collect();
    if live.is_empty() {
        return Ok(0);
    }
    let due = crate::grants::due_expiries(&ctx.pool, &live, BATCH).await?;
    let mut enqueued = 0;
    for d in &due {
        let event = expiry_event(d, Utc::now());
        ctx.broker.publish_event(&event, 0, ctx.config.broker.confirm_timeout).await?;
        crate::grants::mark_expiry_enqueued(&ctx.pool, d).await?;
        enqueued += 1;
    }
    Ok(enqueued)
}

/// `[jsm.write_back] expiry_notice`: tells each granting ticket, once, that
/// its time-bound access expires soon (one public comment per ticket and
/// application), and audits it (`expiry_notice`). Returns how many were told.
pub async fn notify_once(ctx: &WorkerContext) -> anyhow::Result<usize> {
    let (Some(within), Some(jsm)) = (ctx.config.jsm.write_back.expiry_notice, ctx.jsm.as_ref()) else {
        return Ok(0);
    };
    let live: Vec<String> =
        ctx.config.applications.iter().filter(|(_, a)| !a.dry_run).map(|(name, _)| name.clone()).collect();
    if live.is_empty() {
        return Ok(0);
    }
    let mut told = 0;
    for n in crate::grants::claim_notices(&ctx.pool, &live, within, BATCH).await? {
        let left = (n.expires_at - Utc::now()).to_std().unwrap_or_default();
        let text = format!(
            "The access granted through this request expires at {} (in about {}): {} in {}. accessgov will \
             remove it then; raise a new request to keep it.",
            n.expires_at.format("%Y-%m-%d %H:%M UTC"),
            crate::config::duration::format(Duration::from_secs(left.as_secs().max(60) / 60 * 60)),
            n.targets.join(", "),
            n.application
        );
        if let Err(e) = jsm.comment(&n.ticket, &text, true).await {
            // Not audited per attempt (a JSM outage would add a row every sweep): logged, and tried again.
            tracing::warn!(ticket = %n.ticket, error = %e, "could not post the expiry notice; trying again next round");
            crate::grants::unclaim_notice(&ctx.pool, &n).await?;
            continue;
        }
        let mut row = crate::audit::AuditEntry::new("expiry_notice", "ok");
        row.ticket = Some(n.ticket.clone());
        row.application = Some(n.application.clone());
        row.detail = serde_json::json!({"targets": n.targets, "expires_at": n.expires_at});
        let mut tx = ctx.pool.begin().await?;
        crate::audit::append(&mut tx, &[row]).await?;
        tx.commit().await?;
        told += 1;
    }
    Ok(told)
}

/// The event that revokes a ticket's expired holds through the normal pipeline.
/// `now` is when the sweeper saw it due: holds the ticket took before then are released.
pub fn expiry_event(d: &Due, now: DateTime<Utc>) -> AccessEvent {
    let dedupe_key = format!("expiry:{}:{}:{}:{}", d.ticket, d.application, d.subject, d.expires_at.timestamp_millis());
    let known: Option<crate::connectors::Subject> = d.subject_info.clone().and_then(|v| serde_json::from_value(v).ok());
    AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::Expiry,
        delivery_id: None,
        ticket: Ticket { key: d.ticket.clone(), id: String::new(), project_key: None, request_type: String::new() },
        action: RequestAction::Grant,
        app_status: AppStatus::Revoked,
        status: StatusChange { from: None, to: "expired".into(), from_id: None, to_id: None },
        application: Some(d.application.clone()),
        access_level: Some(d.access_level.clone()),
        requester: Some(Person {
            account_id: d.subject.clone(),
            email: known.as_ref().and_then(|s| s.email.clone()),
            display_name: known.as_ref().and_then(|s| s.display_name.clone()),
        }),
        approver: None,
        approval: None,
        authenticity: None,
        actor: None,
        changelog_id: None,
        // Not the expiry time: an event of the ticket applied since then must not
        // supersede the expiry and leave the access in place.
        occurred_at: now.max(d.expires_at),
        duration: None,
        department: None,
        errors: Vec::new(),
        raw_fields: Default::default(),
        targets: None,
    }
}
