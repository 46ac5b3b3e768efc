//! The event store: which events are processed (`processed_events`, the dedupe
//! rows) and how far each ticket got (`ticket_progress`: its last applied event,
//! for ordering, and its last revoke, which spends its approval). Runs and
//! intents live in [`crate::intents`], holds in [`crate::grants`].
//!
//! Every function takes the caller's connection or transaction: the worker
//! reads and writes these rows in its batch transaction, under the subject lock.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Whether the event completed once already.
pub async fn is_processed<'c>(db: impl PgExecutor<'c>, event_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
        .bind(event_id)
        .fetch_one(db)
        .await
}

/// Completes every event of `ends` (id, dedupe key, ticket) whose run is still
/// open, in one statement: closes the run and writes the dedupe row. Returns the
/// ids it completed; the others were completed, or abandoned, by another delivery.
pub async fn complete_all(tx: &mut PgConnection, ends: &[(Uuid, &str, &str)]) -> Result<Vec<Uuid>, sqlx::Error> {
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ends.iter().map(|e| e.0).collect();
    let keys: Vec<&str> = ends.iter().map(|e| e.1).collect();
    let tickets: Vec<&str> = ends.iter().map(|e| e.2).collect();
    sqlx::query_scalar(
        "WITH ended AS (DELETE FROM event_runs WHERE event_id = ANY($1) RETURNING event_id) \
         INSERT INTO processed_events (event_id, dedupe_key, ticket, outcome) \
         SELECT k.event_id, k.dedupe_key, k.ticket, 'processed' \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS k(event_id, dedupe_key, ticket) \
         JOIN ended USING (event_id) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&tickets)
    .fetch_all(tx)
    .await
}

/// Whether the event's run is open (decided, not complete), and when its
/// ticket's access was last taken away: what deciding it needs, in one query.
pub async fn run_and_last_revoke<'c>(
    db: impl PgExecutor<'c>,
    event: &crate::event::AccessEvent,
) -> Result<(bool, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM event_runs WHERE event_id = $1), \
                (SELECT last_revoke_at FROM ticket_progress WHERE ticket = $2)",
    )
    .bind(event.event_id)
    .bind(&event.ticket.key)
    .fetch_one(db)
    .await
}

/// [`run_and_last_revoke`] for a batch, in one query, in the order given.
pub async fn runs_and_last_revokes<'c>(
    db: impl PgExecutor<'c>,
    events: &[(Uuid, &str)],
) -> Result<Vec<(bool, Option<DateTime<Utc>>)>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
    let tickets: Vec<&str> = events.iter().map(|e| e.1).collect();
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM event_runs r WHERE r.event_id = k.event_id), \
                (SELECT p.last_revoke_at FROM ticket_progress p WHERE p.ticket = k.ticket) \
         FROM UNNEST($1::uuid[], $2::text[]) WITH ORDINALITY AS k(event_id, ticket, n) ORDER BY k.n",
    )
    .bind(&ids)
    .bind(&tickets)
    .fetch_all(db)
    .await
}

/// [`last_event_at`] of several tickets, in one query: the tickets that have one.
pub async fn last_events_at(
    tx: &mut PgConnection,
    tickets: &[&str],
) -> Result<std::collections::HashMap<String, DateTime<Utc>>, sqlx::Error> {
    if tickets.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT ticket, last_event_at FROM ticket_progress WHERE ticket = ANY($1) AND last_event_at IS NOT NULL",
    )
    .bind(tickets)
    .fetch_all(tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Notes that a processed event came again. True the first time only (one
/// `duplicate` audit row per event, however often it is redelivered).
pub async fn note_duplicate(tx: &mut PgConnection, event_id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE processed_events SET duplicate_seen_at = now() WHERE event_id = $1 AND duplicate_seen_at IS NULL",
    )
    .bind(event_id)
    .execute(tx)
    .await?
    .rows_affected()
        == 1)
}

/// When the newest applied event of the ticket happened, if any.
pub async fn last_event_at<'c>(db: impl PgExecutor<'c>, ticket: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT last_event_at FROM ticket_progress WHERE ticket = $1")
        .bind(ticket)
        .fetch_optional(db)
        .await
}

/// When the ticket's access was last taken away (revoke or expiry), if ever.
pub async fn last_revoke_at<'c>(db: impl PgExecutor<'c>, ticket: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let at: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT last_revoke_at FROM ticket_progress WHERE ticket = $1")
            .bind(ticket)
            .fetch_optional(db)
            .await?;
    Ok(at.flatten())
}

/// Records the event as the ticket's newest applied one (an older one changes nothing).
pub async fn advance(
    tx: &mut PgConnection,
    ticket: &str,
    event_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ticket_progress (ticket, last_event_id, last_event_at) VALUES ($1, $2, $3) \
         ON CONFLICT (ticket) DO UPDATE SET last_event_id = $2, last_event_at = $3, updated_at = now() \
         WHERE ticket_progress.last_event_at <= $3",
    )
    .bind(ticket)
    .bind(event_id)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

/// [`advance`] for several events in one statement. A ticket named twice keeps
/// its newest event.
pub async fn advance_all(tx: &mut PgConnection, events: &[(&str, Uuid, DateTime<Utc>)]) -> Result<(), sqlx::Error> {
    let mut newest: std::collections::BTreeMap<&str, (Uuid, DateTime<Utc>)> = Default::default();
    for &(ticket, id, at) in events {
        let e = newest.entry(ticket).or_insert((id, at));
        if at >= e.1 {
            *e = (id, at);
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let tickets: Vec<&str> = newest.keys().copied().collect();
    let ids: Vec<Uuid> = newest.values().map(|v| v.0).collect();
    let ats: Vec<DateTime<Utc>> = newest.values().map(|v| v.1).collect();
    sqlx::query(
        "INSERT INTO ticket_progress AS t (ticket, last_event_id, last_event_at) \
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::timestamptz[]) \
         ON CONFLICT (ticket) DO UPDATE SET last_event_id = excluded.last_event_id, \
             last_event_at = excluded.last_event_at, updated_at = now() \
         WHERE t.last_event_at <= excluded.last_event_at",
    )
    .bind(&tickets)
    .bind(&ids)
    .bind(&ats)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records that the ticket's access was taken away at `at` (its approval is spent).
pub async fn mark_revoked(tx: &mut PgConnection, ticket: &str, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ticket_progress SET last_revoke_at = GREATEST(last_revoke_at, $2), updated_at = now() WHERE ticket = $1",
    )
    .bind(ticket)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Events processed at or after `since` (the console's "events today").
pub async fn processed_since(pool: &sqlx::PgPool, since: chrono::DateTime<chrono::Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE processed_at >= $1")
        .bind(since)
        .fetch_one(pool)
        .await
}
