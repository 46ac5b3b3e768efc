//! The audit trail: append-only rows, each hash-chained to the one before.
//!
//! `hash = sha256(prev_hash || "\n" || canonical(row))`, where `canonical` is a
//! JSON array of the row's content in a fixed order (object keys sorted), and
//! the first row's `prev_hash` is 64 zeros. Writers take one transaction-scoped
//! advisory lock before reading the chain head, so concurrent workers append in
//! a single line and never fork the chain. The database refuses UPDATE, DELETE
//! and TRUNCATE (see the migration); [`verify`] recomputes the chain.

pub mod query;
pub mod verify;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// Advisory lock key serializing appends (ASCII "agaudit!").
const CHAIN_LOCK: i64 = 0x6167_6175_6469_7421;
/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One step to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub event_id: Option<Uuid>,
    pub ticket: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub application: Option<String>,
    pub subject: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Value,
}

impl AuditEntry {
    pub fn new(action: &str, outcome: &str) -> Self {
        Self {
            event_id: None,
            ticket: None,
            actor: None,
            action: action.to_owned(),
            application: None,
            subject: None,
            target: None,
            outcome: outcome.to_owned(),
            detail: json!({}),
        }
    }
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event_id: Option<Uuid>,
    pub ticket: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub application: Option<String>,
    pub subject: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The canonical bytes a row's hash covers (everything but the hashes).
pub fn canonical(seq: i64, at: DateTime<Utc>, e: &AuditEntry) -> String {
    json!([
        seq,
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.event_id.map(|u| u.to_string()),
        e.ticket,
        e.actor,
        e.action,
        e.application,
        e.subject,
        e.target,
        e.outcome,
        e.detail,
    ])
    .to_string()
}

/// `sha256(prev_hash || "\n" || canonical)`, lowercase hex.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

impl AuditRow {
    pub fn entry(&self) -> AuditEntry {
        AuditEntry {
            event_id: self.event_id,
            ticket: self.ticket.clone(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            application: self.application.clone(),
            subject: self.subject.clone(),
            target: self.target.clone(),
            outcome: self.outcome.clone(),
            detail: self.detail.clone(),
        }
    }

    /// The hash this row should have given its `prev_hash`.
    pub fn expected_hash(&self) -> String {
        chain_hash(&self.prev_hash, &canonical(self.seq, self.at, &self.entry()))
    }
}

/// Appends entries, in order, inside the caller's transaction (commit makes
/// them visible together with whatever else the transaction did).
pub async fn append(tx: &mut PgConnection, entries: &[AuditEntry]) -> Result<Vec<i64>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *tx).await?;
    let mut prev: String = sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_else(|| GENESIS.to_owned());
    let at = Utc::now().trunc_subsecs(6);
    let mut seqs = Vec::with_capacity(entries.len());
    for e in entries {
        let seq: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('audit_log', 'seq'))")
            .fetch_one(&mut *tx)
            .await?;
        let hash = chain_hash(&prev, &canonical(seq, at, e));
        sqlx::query(
            "INSERT INTO audit_log (seq, at, event_id, ticket, actor, action, application, subject, target, outcome, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(seq)
        .bind(at)
        .bind(e.event_id)
        .bind(&e.ticket)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.application)
        .bind(&e.subject)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(&e.detail)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        prev = hash;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Rows of one event, in order.
pub async fn rows_for_event(pool: &sqlx::PgPool, event_id: Uuid) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit_log WHERE event_id = $1 ORDER BY seq").bind(event_id).fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_content_and_the_previous_hash() {
        let at = Utc::now().trunc_subsecs(6);
        let e = AuditEntry::new("received", "ok");
        let h = chain_hash(GENESIS, &canonical(1, at, &e));
        assert_eq!(h.len(), 64);
        let mut changed = e.clone();
        changed.outcome = "failed".into();
        assert_ne!(h, chain_hash(GENESIS, &canonical(1, at, &changed)));
        assert_ne!(h, chain_hash(&"1".repeat(64), &canonical(1, at, &e)));
        assert_ne!(h, chain_hash(GENESIS, &canonical(2, at, &e)));
    }

    #[test]
    fn canonical_form_does_not_depend_on_detail_key_order() {
        let at = Utc::now().trunc_subsecs(6);
        let mut a = AuditEntry::new("decided", "ok");
        a.detail = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let mut b = a.clone();
        b.detail = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(canonical(7, at, &a), canonical(7, at, &b));
    }
}
