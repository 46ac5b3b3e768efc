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
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One ticket's expired holds on one (application, subject).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub ticket: String,
    pub application: String,
    pub subject: String,
    pub subject_info: Option<serde_json::Value>,
    pub access_level: String,
    pub expires_at: DateTime<Utc>,
}

/// Publishes an expiry event for every due (ticket, application, subject) of a
/// live application; returns how many were enqueued.
pub async fn sweep_once(ctx: &WorkerContext) -> anyhow::Result<usize> {
    let live: Vec<String> =
        ctx.config.applications.iter().filter(|(_, a)| !a.dry_run).map(|(name, _)| name.clone()).collect();
    if live.is_empty() {
        return Ok(0);
    }
    let due = due(&ctx.pool, &live).await?;
    let mut enqueued = 0;
    for d in &due {
        let event = expiry_event(d, Utc::now());
        ctx.broker.publish_event(&event, 0, ctx.config.broker.confirm_timeout).await?;
        sqlx::query(
            "UPDATE grant_holds h SET expiry_enqueued_at = now() FROM access_grants g \
             WHERE h.grant_id = g.id AND h.ticket = $1 AND g.application = $2 AND g.subject = $3 \
               AND h.expires_at <= $4 AND h.expiry_enqueued_at IS NULL",
        )
        .bind(&d.ticket)
        .bind(&d.application)
        .bind(&d.subject)
        .bind(d.expires_at)
        .execute(&ctx.pool)
        .await?;
        enqueued += 1;
    }
    Ok(enqueued)
}

/// Due (ticket, application, subject) groups, oldest expiry first.
pub async fn due(pool: &sqlx::PgPool, live_applications: &[String]) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.ticket, g.application, g.subject, \
                (array_agg(g.subject_info))[1] AS subject_info, \
                min(h.access_level) AS access_level, max(h.expires_at) AS expires_at \
         FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
         WHERE h.expires_at <= now() AND h.expiry_enqueued_at IS NULL AND g.application = ANY($1) \
         GROUP BY h.ticket, g.application, g.subject \
         ORDER BY min(h.expires_at), h.ticket \
         LIMIT $2",
    )
    .bind(live_applications)
    .bind(BATCH)
    .fetch_all(pool)
    .await
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
    }
}
