//! The audit trail: append-only rows, each hash-chained to the one before.
//!
//! `hash = sha256(prev_hash || "\n" || canonical(row))`, where `canonical` is a
//! JSON array of the row's content in a fixed order (object keys sorted), and
//! the first row's `prev_hash` is 64 zeros. Writers take one transaction-scoped
//! advisory lock before reading the chain head, so concurrent workers append in
//! a single line and never fork the chain; `seq` is numbered 1, 2, 3, ... with
//! no gap ([`append`] assigns it under that lock; the column's bigserial
//! default is left in place but never used). The database refuses UPDATE,
//! DELETE and TRUNCATE (see the migration); [`verify`] recomputes the chain and
//! checks that no number is missing.

pub mod query;
pub mod verify;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// Advisory lock key serializing appends (ASCII "agaudit!"). Public so that an
/// operator (or a test) can see who waits on it in `pg_locks`.
pub const CHAIN_LOCK: i64 = 0x6167_6175_6469_7421;
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

/// The canonical bytes a row's hash covers (everything but the hashes): the
/// compact JSON array `[seq, at, event_id, ticket, actor, action, application,
/// subject, target, outcome, detail]`, object keys sorted.
pub fn canonical(seq: i64, at: DateTime<Utc>, e: &AuditEntry) -> String {
    with_head(seq, at, &canonical_tail(e))
}

/// The canonical form after `seq` and `at` (from `event_id` on), as an array
/// `[event_id, ...]`. It is made before the chain lock is taken; only `seq` and
/// `at` are added under it ([`with_head`]).
fn canonical_tail(e: &AuditEntry) -> String {
    let fields = (
        e.event_id.map(|u| u.to_string()),
        &e.ticket,
        &e.actor,
        &e.action,
        &e.application,
        &e.subject,
        &e.target,
        &e.outcome,
        &e.detail,
    );
    // Strings, options and a `Value` always serialize.
    serde_json::to_string(&fields).unwrap_or_else(|_| json!(fields).to_string())
}

fn with_head(seq: i64, at: DateTime<Utc>, tail: &str) -> String {
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    format!("[{seq},\"{at}\",{}", tail.strip_prefix('[').unwrap_or(tail))
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

/// Links `entries` onto a chain whose last row is (`last_seq`, `last_hash`)
/// (`(0, GENESIS)` for an empty chain): row i gets `seq = last_seq + 1 + i`,
/// its `prev_hash` and its `hash`. Pure; [`append`] writes what it returns.
pub fn link(last_seq: i64, last_hash: &str, at: DateTime<Utc>, entries: &[AuditEntry]) -> Vec<(i64, String, String)> {
    let tails: Vec<String> = entries.iter().map(canonical_tail).collect();
    link_tails(last_seq, last_hash, at, &tails)
}

/// [`link`] from the rows' [`canonical_tail`]s.
fn link_tails(last_seq: i64, last_hash: &str, at: DateTime<Utc>, tails: &[String]) -> Vec<(i64, String, String)> {
    let mut prev = last_hash.to_owned();
    let mut out = Vec::with_capacity(tails.len());
    for (seq, tail) in (last_seq + 1..).zip(tails) {
        let hash = chain_hash(&prev, &with_head(seq, at, tail));
        out.push((seq, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    out
}

/// Appends entries, in order, inside the caller's transaction (commit makes
/// them visible together with whatever else the transaction did). Callers
/// should pass every row of a batch in one call: the chain lock is taken once,
/// the chain head read once, and all rows written by one statement.
///
/// `seq` is assigned here, under the lock, as the head's `seq` + 1, + 2, ...:
/// the column's bigserial default (and its sequence) is never used, so a
/// rolled-back batch leaves no gap and the next batch reuses its numbers;
/// `audit verify` treats any gap as a missing row. The transaction must be
/// READ COMMITTED (PostgreSQL's default and what `pool.begin()` gives): the
/// head is read by a statement that starts after the lock is granted, so it
/// sees the previous holder's committed rows. Under a snapshot taken before
/// the lock (REPEATABLE READ) two writers could pick the same `seq`, and the
/// primary key would refuse the second.
pub async fn append(tx: &mut PgConnection, entries: &[AuditEntry]) -> Result<Vec<i64>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // Everything but `seq` and `at` is serialized before the lock.
    let tails: Vec<String> = entries.iter().map(canonical_tail).collect();
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *tx).await?;
    let (last_seq, last_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_else(|| (0, GENESIS.to_owned()));
    let at = Utc::now().trunc_subsecs(6);
    let links = link_tails(last_seq, &last_hash, at, &tails);

    // Several statements when the rows are large: a statement over one TLS record
    // (16 KiB) is written to the socket in pieces, and with Nagle on (sqlx does
    // not set TCP_NODELAY) the second piece waits for the server's delayed ACK,
    // about 40 ms, all under the chain lock.
    let mut start = 0;
    for end in chunk_ends(entries, &tails) {
        insert_rows(&mut *tx, at, &entries[start..end], &links[start..end]).await?;
        start = end;
    }
    Ok(links.iter().map(|(seq, _, _)| *seq).collect())
}

/// About how many bytes a statement of rows may carry: one TLS record.
const CHUNK_BYTES: usize = 12 * 1024;

/// Where each statement's rows end: consecutive rows up to about [`CHUNK_BYTES`]
/// (a single larger row goes alone).
fn chunk_ends(entries: &[AuditEntry], tails: &[String]) -> Vec<usize> {
    // a row's variable parts are about its canonical tail (text columns and
    // detail); plus uuid, two hashes, seq and per-array overheads
    let size = |i: usize| 256 + tails[i].len();
    let mut ends = Vec::new();
    let mut bytes = 0;
    for i in 0..entries.len() {
        let n = size(i);
        if bytes > 0 && bytes + n > CHUNK_BYTES {
            ends.push(i);
            bytes = 0;
        }
        bytes += n;
    }
    if !entries.is_empty() {
        ends.push(entries.len());
    }
    ends
}

async fn insert_rows(
    tx: &mut PgConnection,
    at: DateTime<Utc>,
    entries: &[AuditEntry],
    links: &[(i64, String, String)],
) -> Result<(), sqlx::Error> {
    let column = |f: fn(&AuditEntry) -> Option<&str>| entries.iter().map(f).collect::<Vec<_>>();
    let seqs: Vec<i64> = links.iter().map(|(seq, _, _)| *seq).collect();
    let (prevs, hashes): (Vec<&str>, Vec<&str>) = links.iter().map(|(_, p, h)| (p.as_str(), h.as_str())).unzip();
    sqlx::query(
        "INSERT INTO audit_log (seq, at, event_id, ticket, actor, action, application, subject, target, outcome, detail, prev_hash, hash) \
         SELECT r.seq, $2, r.event_id, r.ticket, r.actor, r.action, r.application, r.subject, r.target, r.outcome, r.detail, r.prev_hash, r.hash \
         FROM UNNEST($1::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::text[], $11::jsonb[], $12::text[], $13::text[]) \
              AS r(seq, event_id, ticket, actor, action, application, subject, target, outcome, detail, prev_hash, hash) \
         ORDER BY r.seq",
    )
    .bind(&seqs)
    .bind(at)
    .bind(entries.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(column(|e| e.ticket.as_deref()))
    .bind(column(|e| e.actor.as_deref()))
    .bind(column(|e| Some(e.action.as_str())))
    .bind(column(|e| e.application.as_deref()))
    .bind(column(|e| e.subject.as_deref()))
    .bind(column(|e| e.target.as_deref()))
    .bind(column(|e| Some(e.outcome.as_str())))
    .bind(entries.iter().map(|e| &e.detail).collect::<Vec<_>>())
    .bind(prevs)
    .bind(hashes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Rows of one event, in order.
pub async fn rows_for_event(pool: &sqlx::PgPool, event_id: Uuid) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit_log WHERE event_id = $1 ORDER BY seq").bind(event_id).fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_appends_are_split_into_statements_of_about_one_tls_record() {
        let mut big = AuditEntry::new("decided", "ok");
        big.detail = serde_json::json!({"pad": "x".repeat(5000)});
        let small = AuditEntry::new("received", "ok");
        let ends = |rows: &[AuditEntry]| chunk_ends(rows, &rows.iter().map(canonical_tail).collect::<Vec<_>>());
        assert_eq!(ends(&[]), Vec::<usize>::new());
        assert_eq!(ends(&vec![small.clone(); 3]), [3]);
        // Two 5 kB rows fit in 12 KiB, a third does not.
        assert_eq!(ends(&vec![big.clone(); 5]), [2, 4, 5]);
        let mut huge = big.clone();
        huge.detail = serde_json::json!({"pad": "x".repeat(40_000)});
        assert_eq!(ends(&[small.clone(), huge, small]), [1, 2, 3], "an oversized row goes alone");
    }

    #[test]
    fn the_canonical_form_is_the_compact_json_array_of_the_row_that_earlier_rows_were_hashed_with() {
        // The form every existing chain was hashed with; changing it would break `audit verify`.
        let at = Utc::now().trunc_subsecs(6);
        let mut e = AuditEntry::new("granted", "ok");
        e.event_id = Some(uuid::Uuid::new_v4());
        e.ticket = Some("ACC-1".into());
        e.target = Some("grp \"q\" \u{7}".into());
        e.detail = serde_json::json!({"z": [1, {"b": null, "a": "\n"}], "a": 1.5});
        let expected = json!([
            7,
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
        .to_string();
        assert_eq!(canonical(7, at, &e), expected);
    }

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
    fn link_numbers_rows_after_the_head_and_chains_each_to_the_one_before() {
        let at = Utc::now().trunc_subsecs(6);
        let entries: Vec<AuditEntry> = ["a", "b", "c"].iter().map(|a| AuditEntry::new(a, "ok")).collect();
        let links = link(41, &"f".repeat(64), at, &entries);
        assert_eq!(links.iter().map(|l| l.0).collect::<Vec<_>>(), [42, 43, 44]);
        assert_eq!(links[0].1, "f".repeat(64));
        for (i, (seq, prev, hash)) in links.iter().enumerate() {
            assert_eq!(*hash, chain_hash(prev, &canonical(*seq, at, &entries[i])));
            if i > 0 {
                assert_eq!(*prev, links[i - 1].2);
            }
        }
        // One batch of three is the same chain as three batches of one.
        let mut head = (41, "f".repeat(64));
        for (i, e) in entries.iter().enumerate() {
            let one = link(head.0, &head.1, at, std::slice::from_ref(e));
            assert_eq!(one[0], links[i]);
            head = (one[0].0, one[0].2.clone());
        }
        // An empty chain starts at 1 from the genesis hash.
        assert_eq!(link(0, GENESIS, at, &entries[..1])[0].0, 1);
        assert_eq!(link(0, GENESIS, at, &entries[..1])[0].1, GENESIS);
        assert!(link(0, GENESIS, at, &[]).is_empty());
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
