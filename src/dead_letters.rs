//! The dead-letter inbox (`dead_letters`, filled by the worker's dead-queue
//! drain): list, show, replay, discard, and the dry-run preview of a replay.
//! Shared by `accessgov dlq` and the admin API; every change is audited
//! (`replayed`, `discarded`) with the operator as the actor.
//!
//! Replay re-publishes the original event to the events exchange with a fresh
//! attempt count. A dead letter's event id has no `processed_events` row (failed
//! attempts roll theirs back), so a worker processes the replay like a new
//! delivery; if it was processed meanwhile (say, a second dead letter of the
//! same event was replayed first), the worker records a `duplicate` and calls
//! nothing. A row is marked replayed in the same transaction as its audit row,
//! under a row lock, and only after the broker confirmed the publish; a second
//! replay of the same row is refused unless forced.
//!
//! The replayed message names the dead letter it replays (and carries an id of
//! its own): if it dies again, the drain reopens that dead letter, adds the new
//! attempts, error and history to it and audits the death (see
//! [`crate::worker::dead::record`]), so a replay never disappears silently.

use crate::audit::{self, AuditEntry};
use crate::broker::Broker;
use crate::broker::publisher::PublishError;
use crate::config::Config;
use crate::event::AccessEvent;
use crate::grants::{Note, ProviderOp};
use crate::operator::Operator;
use crate::rules::{self, Decision};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::time::Duration;
use uuid::Uuid;

/// One row of `dead_letters`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub dead_key: String,
    pub event_id: Option<Uuid>,
    pub ticket: Option<String>,
    pub application: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    /// The `AccessEvent` as JSON, or `{"raw": ...}` / `{"raw_hex": ...}` for an unreadable body.
    pub message: Value,
    pub error_class: String,
    pub last_error: String,
    /// Attempts over every life of the message (each replay starts at 0 again).
    pub attempts: i32,
    /// Every attempt, oldest first, across deaths.
    pub attempt_history: Value,
    /// How often it died: a replay that dies again reopens the row and counts here.
    pub deaths: i32,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub died_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
    pub discarded_at: Option<DateTime<Utc>>,
    pub discarded_by: Option<String>,
    pub discard_reason: Option<String>,
    /// The message's W3C `traceparent` when it died (a replay continues that trace).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Replayed,
    Discarded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }
}

impl DeadLetter {
    /// The latest of replayed / discarded, else open.
    pub fn state(&self) -> State {
        match (self.replayed_at, self.discarded_at) {
            (None, None) => State::Open,
            (Some(_), None) => State::Replayed,
            (None, Some(_)) => State::Discarded,
            (Some(r), Some(d)) if r >= d => State::Replayed,
            _ => State::Discarded,
        }
    }

    /// The row with its state, for JSON output.
    pub fn view(&self) -> View<'_> {
        View { state: self.state(), row: self }
    }

    /// The original event, when the message is one.
    pub fn event(&self) -> Result<AccessEvent, String> {
        if self.message.get("raw").is_some() || self.message.get("raw_hex").is_some() {
            return Err("its message is not a readable access event (it is kept as raw bytes)".into());
        }
        let bytes = serde_json::to_vec(&self.message).map_err(|e| e.to_string())?;
        AccessEvent::decode(&bytes).map_err(|e| e.to_string())
    }
}

/// A row as JSON: its columns plus `state`.
#[derive(Debug, Serialize)]
pub struct View<'a> {
    pub state: State,
    #[serde(flatten)]
    pub row: &'a DeadLetter,
}

/// Which rows a listing shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StateFilter {
    /// Neither replayed nor discarded.
    #[default]
    Open,
    Replayed,
    Discarded,
    All,
}

/// Filters of `dlq list` / `dlq replay --all` / `GET /admin/dead-letters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub application: Option<String>,
    pub error_class: Option<String>,
    /// Died at or after.
    pub since: Option<DateTime<Utc>>,
    pub state: StateFilter,
    pub limit: Option<i64>,
}

fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &Filter) {
    qb.push(" WHERE true");
    if let Some(a) = &f.application {
        qb.push(" AND application = ").push_bind(a.clone());
    }
    if let Some(c) = &f.error_class {
        qb.push(" AND error_class = ").push_bind(c.clone());
    }
    if let Some(t) = f.since {
        qb.push(" AND died_at >= ").push_bind(t);
    }
    qb.push(match f.state {
        StateFilter::Open => " AND replayed_at IS NULL AND discarded_at IS NULL",
        StateFilter::Replayed => " AND replayed_at IS NOT NULL",
        StateFilter::Discarded => " AND discarded_at IS NOT NULL",
        StateFilter::All => "",
    });
    qb.push(" ORDER BY id");
    if let Some(n) = f.limit {
        qb.push(" LIMIT ").push_bind(n.max(0));
    }
}

/// Rows matching the filter, oldest first.
pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT * FROM dead_letters");
    push_filter(&mut qb, filter);
    qb.build_query_as().fetch_all(pool).await
}

/// Ids of the rows matching the filter, oldest first (for `replay --all`).
pub async fn ids(pool: &PgPool, filter: &Filter) -> Result<Vec<i64>, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT id FROM dead_letters");
    push_filter(&mut qb, filter);
    qb.build_query_scalar().fetch_all(pool).await
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1").bind(id).fetch_optional(pool).await
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} does not exist")]
    NotFound(i64),
    #[error(
        "dead letter {id} (class {class}) cannot be replayed: {reason}; inspect it with `accessgov dlq show {id}` \
         and close it with `accessgov dlq discard {id} --reason TEXT`"
    )]
    NotReplayable { id: i64, class: String, reason: String },
    #[error(
        "dead letter {id} was already {state} at {at} by {by}; not replaying it again \
         (force it with --force, or ?force=true on the admin API; the worker still deduplicates)"
    )]
    Closed { id: i64, state: &'static str, at: DateTime<Utc>, by: String },
    #[error("publishing the event of dead letter {id} failed: {source}; it was not marked replayed, retry later")]
    Publish { id: i64, source: PublishError },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// A successful replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    pub dead_letter_id: i64,
    pub event_id: Uuid,
    pub ticket: String,
    pub application: Option<String>,
    pub forced: bool,
}

fn row_entry(row: &DeadLetter, action: &str, outcome: &str, operator: &Operator) -> AuditEntry {
    let mut e = AuditEntry::new(action, outcome);
    e.event_id = row.event_id;
    e.ticket = row.ticket.clone();
    e.actor = Some(operator.name.clone());
    e.application = row.application.clone();
    e.subject = row.subject.clone();
    e
}

/// Replays one dead letter: publish its event (attempt 0), mark it replayed,
/// audit `replayed` with the operator.
///
/// Locks, in the order every writer takes them: the dead letter's row (held
/// through the publish, so two operators cannot replay one letter at once),
/// then, after the broker confirmed, the audit chain for the `replayed` row.
/// The chain lock is never held across the publish. A crash after the publish
/// and before the commit leaves the letter open with its event published: a
/// second replay is then deduplicated by the worker, never lost. The chain is
/// commit order, so the worker's rows for the replay may precede `replayed`.
pub async fn replay(
    pool: &PgPool,
    broker: &Broker,
    id: i64,
    operator: &Operator,
    force: bool,
    confirm_timeout: Duration,
) -> Result<Replayed, ReplayError> {
    let mut tx = pool.begin().await?;
    let row: DeadLetter = sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    let event =
        row.event().map_err(|reason| ReplayError::NotReplayable { id, class: row.error_class.clone(), reason })?;
    let state = row.state();
    if !force && state != State::Open {
        let (at, by) = match state {
            State::Replayed => (row.replayed_at, row.replayed_by.clone()),
            _ => (row.discarded_at, row.discarded_by.clone()),
        };
        return Err(ReplayError::Closed {
            id,
            state: state.as_str(),
            at: at.unwrap_or_default(),
            by: by.unwrap_or_default(),
        });
    }
    let mut e = row_entry(&row, "replayed", "ok", operator);
    e.event_id = Some(event.event_id);
    e.detail = json!({
        "dead_letter_id": id,
        "via": operator.via.as_str(),
        "forced": force && state != State::Open,
        "previous_state": state.as_str(),
        "error_class": row.error_class,
        "attempts": row.attempts,
    });
    let headers = crate::broker::envelope::replay_headers(id);
    // The replay continues the request's trace: its publish is a child of the
    // dead message's context, so the replayed provider call joins the same trace.
    let span = tracing::info_span!("replay", otel.kind = "producer", dead_letter_id = id, event_id = %event.event_id, operator = %operator.name);
    if let Some(tp) = row.traceparent.as_deref() {
        crate::telemetry::extract(&span, |k| (k == "traceparent").then_some(tp));
    }
    let published =
        tracing::Instrument::instrument(broker.publish_event_with_headers(&event, 0, headers, confirm_timeout), span);
    if let Err(source) = published.await {
        tx.rollback().await?;
        // The failure is worth a row of its own.
        let mut tx = pool.begin().await?;
        let mut e = row_entry(&row, "replayed", "failed", operator);
        e.detail = json!({"dead_letter_id": id, "via": operator.via.as_str(), "error": source.to_string()});
        audit::append(&mut tx, &[e]).await?;
        tx.commit().await?;
        return Err(ReplayError::Publish { id, source });
    }
    sqlx::query("UPDATE dead_letters SET replayed_at = now(), replayed_by = $2 WHERE id = $1")
        .bind(id)
        .bind(&operator.name)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, &[e]).await?;
    tx.commit().await?;
    tracing::info!(dead_letter_id = id, event_id = %event.event_id, operator = %operator, "dead letter replayed");
    Ok(Replayed {
        dead_letter_id: id,
        event_id: event.event_id,
        ticket: event.ticket.key.clone(),
        application: event.application.clone(),
        forced: force && state != State::Open,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("dead letter {0} does not exist")]
    NotFound(i64),
    #[error("a reason is required to discard a dead letter (it is kept in the audit trail)")]
    NoReason,
    #[error("dead letter {id} is already {state} (at {at} by {by}); nothing to discard")]
    Closed { id: i64, state: &'static str, at: DateTime<Utc>, by: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Closes an open dead letter without replaying it; audited as `discarded`.
pub async fn discard(pool: &PgPool, id: i64, operator: &Operator, reason: &str) -> Result<DeadLetter, DiscardError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(DiscardError::NoReason);
    }
    let mut tx = pool.begin().await?;
    let row: DeadLetter = sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(DiscardError::NotFound(id))?;
    match row.state() {
        State::Open => {}
        state => {
            let (at, by) = match state {
                State::Replayed => (row.replayed_at, row.replayed_by.clone()),
                _ => (row.discarded_at, row.discarded_by.clone()),
            };
            return Err(DiscardError::Closed {
                id,
                state: state.as_str(),
                at: at.unwrap_or_default(),
                by: by.unwrap_or_default(),
            });
        }
    }
    let updated: DeadLetter = sqlx::query_as(
        "UPDATE dead_letters SET discarded_at = now(), discarded_by = $2, discard_reason = $3 WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&operator.name)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    let mut e = row_entry(&row, "discarded", "ok", operator);
    e.detail = json!({
        "dead_letter_id": id,
        "via": operator.via.as_str(),
        "reason": reason,
        "error_class": row.error_class,
    });
    audit::append(&mut tx, &[e]).await?;
    tx.commit().await?;
    tracing::info!(dead_letter_id = id, operator = %operator, "dead letter discarded");
    Ok(updated)
}

/// What a replay would do now, computed without changing anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub dead_letter_id: i64,
    pub state: State,
    pub event_id: Option<Uuid>,
    pub ticket: Option<String>,
    /// `not_replayable`, `closed` (needs --force), `duplicate`, `no_action`,
    /// `denied_by_policy`, `superseded`, `dry_run` (application in dry-run
    /// mode: audited, no provider call), `route` (a new ticket or an approval
    /// stage: approvers and plan, no provider call) or `apply`.
    pub would: &'static str,
    pub decision: Option<Decision>,
    /// The provider calls the worker would make (or, in dry-run mode, record).
    pub provider_calls: Vec<ProviderOp>,
    pub notes: Vec<Note>,
    /// Anything else worth knowing.
    pub remarks: Vec<String>,
}

impl Preview {
    fn new(row: &DeadLetter, would: &'static str) -> Self {
        Self {
            dead_letter_id: row.id,
            state: row.state(),
            event_id: row.event_id,
            ticket: row.ticket.clone(),
            would,
            decision: None,
            provider_calls: Vec::new(),
            notes: Vec::new(),
            remarks: Vec::new(),
        }
    }
}

/// The worker's path for the event under the current config and ledger, read
/// in a read-only transaction: dedupe, decision, ticket ordering, ledger plan.
/// `approver_groups` are the approver's Jira groups when the caller could
/// resolve them (the worker asks JSM when the rule has `group:` approvers).
pub async fn preview(
    pool: &PgPool,
    config: &Config,
    row: &DeadLetter,
    approver_groups: Option<&std::collections::BTreeMap<String, Vec<String>>>,
) -> Result<Preview, sqlx::Error> {
    let event = match row.event() {
        Ok(e) => e,
        Err(reason) => {
            let mut p = Preview::new(row, "not_replayable");
            p.remarks.push(reason);
            return Ok(p);
        }
    };
    let mut p = Preview::new(row, "apply");
    p.event_id = Some(event.event_id);
    p.ticket = Some(event.ticket.key.clone());
    if row.state() != State::Open {
        p.would = "closed";
        p.remarks.push(format!("the dead letter is {}; a replay needs --force", row.state().as_str()));
    }
    let last_revoke_at = crate::progress::last_revoke_at(pool, &event.ticket.key).await?;
    let verify_approval = config.verify_approval_in_effect(crate::worker::jsm_client(config).is_some());
    let facts = rules::Facts {
        approver_groups: approver_groups.cloned().unwrap_or_default(),
        verify_approval,
        last_revoke_at,
        live_approvals: None,
    };
    let decision = rules::decide(&event, config, &facts);
    if approver_groups.is_none()
        && let (Some(app), Some(level)) = (&event.application, &event.access_level)
        && config.rule_for(app, level).is_some_and(|r| r.approvers.iter().any(|a| a.starts_with("group:")))
    {
        p.remarks.push(
            "the rule lists group: approvers, which could not be resolved here; the worker resolves them through JSM"
                .into(),
        );
    }
    if let (Some(app), Some(level)) = (&event.application, &event.access_level)
        && config.rule_for(app, level).is_some_and(|r| !r.stages.is_empty())
    {
        p.remarks.push(
            "the rule has approval stages, checked against the live JSM approvals: the worker reads them; \
             this preview does not"
                .into(),
        );
    }
    if verify_approval && matches!(decision, Decision::Grant { .. } | Decision::Change { .. }) {
        p.remarks.push("verify_approval is on: the worker will first confirm the approval on the live ticket".into());
    }
    if event.app_status.is_routing() {
        // A routing event grants nothing: the replay routes the ticket (approvers, plan), once.
        p.would = if p.would == "apply" { "route" } else { p.would };
        p.remarks.push(format!(
            "a {} event: the worker would route the ticket ({}), writing only what the ticket does not show yet",
            if event.app_status == crate::config::AppStatus::Created { "created" } else { "stage" },
            match crate::routing::route(&event, config, &[]) {
                crate::routing::Routing::Route(r) => format!("approvers {}", r.approvers.join(", ")),
                crate::routing::Routing::Invalid(refusal) => format!("invalid: {}", refusal.message()),
                crate::routing::Routing::Skip(reason) => format!("skipped: {reason}"),
            }
        ));
        p.decision = Some(decision);
        return Ok(p);
    }

    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    let facts = crate::pipeline::read_facts(&mut tx, config, &event, &decision).await?;
    let step = crate::pipeline::plan(&event, &decision, &facts);
    match &step {
        crate::pipeline::Step::Duplicate => {
            p.remarks.push("the event was processed since it died; the worker would record a duplicate".into())
        }
        crate::pipeline::Step::Resume => {
            p.remarks.push("its decision is recorded; the worker would finish its pending provider calls".into())
        }
        crate::pipeline::Step::Superseded { .. } => {
            p.remarks.push("a newer event of this ticket was applied since; the worker would skip it".into())
        }
        crate::pipeline::Step::Refused(reason) => p.remarks.push(reason.message()),
        crate::pipeline::Step::Apply { plan, .. } => {
            p.provider_calls = plan.ops.clone();
            p.notes = plan.notes.clone();
        }
        crate::pipeline::Step::NoEffect { .. } => {}
    }
    if p.would == "apply" {
        p.would = step.would();
    }
    tx.rollback().await?;
    p.decision = Some(decision);
    Ok(p)
}

/// A dead letter to record (the dead-queue drain).
pub struct NewDeadLetter<'a> {
    pub dead_key: &'a str,
    pub event_id: Option<uuid::Uuid>,
    pub ticket: Option<&'a str>,
    pub application: Option<&'a str>,
    pub action: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub message: &'a serde_json::Value,
    pub error_class: &'a str,
    pub error: &'a str,
    pub attempts: i32,
    pub history: &'a serde_json::Value,
    pub first_failed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub traceparent: Option<&'a str>,
}

/// How many dead letters are open, and when the oldest of them died (the
/// backlog gauges and the console's overview).
pub async fn open_summary(pool: &sqlx::PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*), min(died_at) FROM dead_letters WHERE replayed_at IS NULL AND discarded_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Inserts a new dead letter; `None` when one with its key exists (a redelivery).
pub async fn insert(tx: &mut sqlx::PgConnection, d: &NewDeadLetter<'_>) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (dead_key, event_id, ticket, application, action, subject, message, error_class, \
                                   last_error, attempts, attempt_history, first_failed_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (dead_key) DO NOTHING RETURNING id",
    )
    .bind(d.dead_key)
    .bind(d.event_id)
    .bind(d.ticket)
    .bind(d.application)
    .bind(d.action)
    .bind(d.subject)
    .bind(d.message)
    .bind(d.error_class)
    .bind(d.error)
    .bind(d.attempts)
    .bind(d.history)
    .bind(d.first_failed_at)
    .bind(d.traceparent)
    .fetch_optional(tx)
    .await
}

/// The dead letter, locked for the rest of the transaction (a replay in
/// progress holds the lock until it has committed its `replayed` mark).
pub async fn lock(tx: &mut sqlx::PgConnection, id: i64) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(tx).await
}

/// Reopens a replayed dead letter that died again, with this death's error,
/// attempts and history added. Returns its number of deaths.
pub async fn reopen(
    tx: &mut sqlx::PgConnection,
    id: i64,
    error_class: &str,
    error: &str,
    attempts: i32,
    history: &serde_json::Value,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE dead_letters SET deaths = deaths + 1, error_class = $2, last_error = $3, \
         attempts = attempts + $4, attempt_history = attempt_history || $5, died_at = now(), \
         replayed_at = NULL, replayed_by = NULL, discarded_at = NULL, discarded_by = NULL, \
         discard_reason = NULL \
         WHERE id = $1 RETURNING deaths",
    )
    .bind(id)
    .bind(error_class)
    .bind(error)
    .bind(attempts)
    .bind(history)
    .fetch_one(tx)
    .await
}

/// Records one death of dead letter `id`; false when this death (its key) is recorded already.
pub async fn insert_death(
    tx: &mut sqlx::PgConnection,
    dead_key: &str,
    id: i64,
    error_class: &str,
    error: &str,
    attempts: i32,
) -> Result<bool, sqlx::Error> {
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO dead_letter_deaths (dead_key, dead_letter_id, error_class, error, attempts) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dead_key) DO NOTHING RETURNING dead_key",
    )
    .bind(dead_key)
    .bind(id)
    .bind(error_class)
    .bind(error)
    .bind(attempts)
    .fetch_optional(tx)
    .await?;
    Ok(inserted.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(message: Value) -> DeadLetter {
        DeadLetter {
            id: 1,
            dead_key: "k".into(),
            event_id: None,
            ticket: None,
            application: None,
            action: None,
            subject: None,
            message,
            error_class: "poison".into(),
            last_error: "x".into(),
            attempts: 1,
            attempt_history: json!([]),
            deaths: 1,
            first_failed_at: None,
            died_at: Utc::now(),
            replayed_at: None,
            replayed_by: None,
            discarded_at: None,
            discarded_by: None,
            discard_reason: None,
            traceparent: None,
        }
    }

    #[test]
    fn a_raw_message_is_not_an_event() {
        assert!(row(json!({"raw": "garbage"})).event().unwrap_err().contains("raw bytes"));
        assert!(row(json!({"raw_hex": "00ff"})).event().is_err());
        assert!(row(json!({"schema": "accessgov.access-event/v9"})).event().unwrap_err().contains("v9"));
    }

    #[test]
    fn the_state_follows_the_latest_close() {
        let mut r = row(json!({}));
        assert_eq!(r.state(), State::Open);
        r.discarded_at = Some(Utc::now() - chrono::Duration::seconds(10));
        assert_eq!(r.state(), State::Discarded);
        r.replayed_at = Some(Utc::now());
        assert_eq!(r.state(), State::Replayed);
    }
}
