//! Reading the trail for operators: filtered listings and the streaming export
//! (JSON Lines or CSV) that carries the chain hashes, so that an auditor can
//! re-verify the chain offline (see the README: `hash = sha256(prev_hash ||
//! "\n" || canonical)`, where `canonical` is rebuilt from the exported columns).

use super::AuditRow;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::io::Write;

/// Filters of `audit list` / `audit export` / `GET /admin/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ticket: Option<String>,
    pub subject: Option<String>,
    pub application: Option<String>,
    pub action: Option<String>,
    /// `at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `at < until`.
    pub until: Option<DateTime<Utc>>,
    /// `seq >= since_seq`.
    pub since_seq: Option<i64>,
    /// `seq < before_seq`: with [`list`]'s limit, the page of rows just older
    /// than a seq (keyset paging, as the console's [`page`] does).
    pub before_seq: Option<i64>,
}

fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &Filter) {
    qb.push(" WHERE true");
    for (column, value) in
        [("ticket", &f.ticket), ("subject", &f.subject), ("application", &f.application), ("action", &f.action)]
    {
        if let Some(v) = value {
            qb.push(format_args!(" AND {column} = ")).push_bind(v.clone());
        }
    }
    if let Some(t) = f.since {
        qb.push(" AND at >= ").push_bind(t);
    }
    if let Some(t) = f.until {
        qb.push(" AND at < ").push_bind(t);
    }
    if let Some(s) = f.since_seq {
        qb.push(" AND seq >= ").push_bind(s);
    }
    if let Some(s) = f.before_seq {
        qb.push(" AND seq < ").push_bind(s);
    }
}

/// The newest `limit` matching rows (all when `None`), oldest first.
pub async fn list(pool: &PgPool, filter: &Filter, limit: Option<i64>) -> Result<Vec<AuditRow>, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT * FROM audit_log");
    push_filter(&mut qb, filter);
    qb.push(" ORDER BY seq DESC");
    if let Some(n) = limit {
        qb.push(" LIMIT ").push_bind(n.max(0));
    }
    let mut rows: Vec<AuditRow> = qb.build_query_as().fetch_all(pool).await?;
    rows.reverse();
    Ok(rows)
}

/// Where a page of [`page`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest matching rows.
    Newest,
    /// The rows just older than this seq (the "older" link).
    Before(i64),
    /// The rows just newer than this seq (the "newer" link).
    After(i64),
}

/// One page of matching rows, newest first, with the cursors of its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<AuditRow>,
    /// `Cursor::After(n)` leads to the newer page; `None` when this is the newest.
    pub newer: Option<i64>,
    /// `Cursor::Before(n)` leads to the older page; `None` when this is the oldest.
    pub older: Option<i64>,
}

/// Keyset pagination: one page of `limit` matching rows at `cursor`, newest
/// first. Each page is one index range scan from its cursor (`seq < n ORDER BY
/// seq DESC LIMIT limit + 1`, or `seq > n ORDER BY seq LIMIT limit + 1` for a
/// newer page) plus an `EXISTS` probe the other way, so the thousandth page costs
/// what the first does, and rows appended meanwhile never shift a page (no row
/// is shown twice or skipped when following the links). With a filter, the
/// `(column, seq)` indexes keep it so.
pub async fn page(pool: &PgPool, filter: &Filter, cursor: Cursor, limit: i64) -> Result<Page, sqlx::Error> {
    let limit = limit.max(1);
    let mut qb = QueryBuilder::new("SELECT * FROM audit_log");
    push_filter(&mut qb, filter);
    match cursor {
        Cursor::Newest => qb.push(" ORDER BY seq DESC"),
        Cursor::Before(s) => qb.push(" AND seq < ").push_bind(s).push(" ORDER BY seq DESC"),
        Cursor::After(s) => qb.push(" AND seq > ").push_bind(s).push(" ORDER BY seq ASC"),
    };
    qb.push(" LIMIT ").push_bind(limit + 1);
    let mut rows: Vec<AuditRow> = qb.build_query_as().fetch_all(pool).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if matches!(cursor, Cursor::After(_)) {
        rows.reverse();
    }
    let (Some(newest), Some(oldest)) = (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq)) else {
        // An empty page (a filter that matches nothing, or a stale cursor): lead back to its edge.
        return Ok(match cursor {
            Cursor::Newest => Page { rows, newer: None, older: None },
            Cursor::Before(s) => {
                Page { rows, newer: exists(pool, filter, Cursor::After(s - 1)).await?.then_some(s - 1), older: None }
            }
            Cursor::After(s) => {
                Page { rows, newer: None, older: exists(pool, filter, Cursor::Before(s + 1)).await?.then_some(s + 1) }
            }
        });
    };
    let (newer, older) = match cursor {
        Cursor::Newest => (false, more),
        Cursor::Before(_) => (exists(pool, filter, Cursor::After(newest)).await?, more),
        Cursor::After(_) => (more, exists(pool, filter, Cursor::Before(oldest)).await?),
    };
    Ok(Page { rows, newer: newer.then_some(newest), older: older.then_some(oldest) })
}

/// Whether a matching row lies beyond `cursor` (`Before`: older, `After`: newer).
async fn exists(pool: &PgPool, filter: &Filter, cursor: Cursor) -> Result<bool, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT EXISTS (SELECT 1 FROM audit_log");
    push_filter(&mut qb, filter);
    match cursor {
        Cursor::Newest => qb.push(""),
        Cursor::Before(s) => qb.push(" AND seq < ").push_bind(s),
        Cursor::After(s) => qb.push(" AND seq > ").push_bind(s),
    };
    qb.push(")");
    qb.build_query_scalar().fetch_one(pool).await
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row; NULL is an empty unquoted field, text is always quoted.
    Csv,
}

/// The exported columns, in order.
pub const COLUMNS: [&str; 13] = [
    "seq",
    "at",
    "event_id",
    "ticket",
    "actor",
    "action",
    "application",
    "subject",
    "target",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
];

/// One exported row: `at` exactly as the hash covers it (RFC 3339, microseconds, `Z`).
#[derive(Debug, Serialize)]
struct Record<'a> {
    seq: i64,
    at: String,
    event_id: Option<String>,
    ticket: Option<&'a str>,
    actor: Option<&'a str>,
    action: &'a str,
    application: Option<&'a str>,
    subject: Option<&'a str>,
    target: Option<&'a str>,
    outcome: &'a str,
    detail: &'a serde_json::Value,
    prev_hash: &'a str,
    hash: &'a str,
}

impl<'a> Record<'a> {
    fn of(r: &'a AuditRow) -> Self {
        Self {
            seq: r.seq,
            at: r.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            event_id: r.event_id.map(|u| u.to_string()),
            ticket: r.ticket.as_deref(),
            actor: r.actor.as_deref(),
            action: &r.action,
            application: r.application.as_deref(),
            subject: r.subject.as_deref(),
            target: r.target.as_deref(),
            outcome: &r.outcome,
            detail: &r.detail,
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        }
    }
}

/// A CSV field: `None` is empty and unquoted, text is quoted with `"` doubled.
pub fn csv_field(out: &mut impl Write, value: Option<&str>) -> std::io::Result<()> {
    match value {
        None => Ok(()),
        Some(v) => write!(out, "\"{}\"", v.replace('"', "\"\"")),
    }
}

fn write_csv_row(out: &mut impl Write, r: &AuditRow) -> std::io::Result<()> {
    let rec = Record::of(r);
    write!(out, "{},", rec.seq)?;
    let detail = rec.detail.to_string();
    let text: [Option<&str>; 12] = [
        Some(&rec.at),
        rec.event_id.as_deref(),
        rec.ticket,
        rec.actor,
        Some(rec.action),
        rec.application,
        rec.subject,
        rec.target,
        Some(rec.outcome),
        Some(&detail),
        Some(rec.prev_hash),
        Some(rec.hash),
    ];
    for (i, v) in text.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        csv_field(out, v)?;
    }
    out.write_all(b"\r\n")
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading audit_log: {0}")]
    Db(#[from] sqlx::Error),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Streams the matching rows, in `seq` order, to `out` (rows are fetched one
/// at a time: memory stays flat whatever the table size). `progress` is called
/// after every row with the count so far. Returns the number of rows written.
/// The one streaming statement runs without the pool's `statement_timeout`
/// (see [`crate::db::begin_unbounded`]). The CLI's `audit export`; the
/// console streams the same bytes over HTTP with [`export_chunks`].
pub async fn export(
    pool: &PgPool,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
    progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    // Chunks are handed over as they fill; writing one to `out` is synchronous.
    let n = export_chunks(pool, filter, format, 64 * 1024, progress, |chunk| std::future::ready(out.write_all(&chunk)))
        .await?;
    out.flush()?;
    Ok(n)
}

/// [`export`]'s rows, encoded exactly as it encodes them, handed to `emit` in
/// chunks of about `chunk_bytes` (and a last, shorter one). `emit` may wait
/// (an HTTP body whose reader is slow): the next rows are read only once it
/// returns, so memory stays flat. An `emit` error stops the export.
pub async fn export_chunks<Fut>(
    pool: &PgPool,
    filter: &Filter,
    format: Format,
    chunk_bytes: usize,
    mut progress: impl FnMut(u64),
    mut emit: impl FnMut(Vec<u8>) -> Fut,
) -> Result<u64, ExportError>
where
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut qb = QueryBuilder::new("SELECT * FROM audit_log");
    push_filter(&mut qb, filter);
    qb.push(" ORDER BY seq");
    let mut tx = crate::db::begin_unbounded(pool).await?;
    let mut rows = qb.build_query_as::<AuditRow>().fetch(&mut *tx);
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_bytes + 4096);
    if format == Format::Csv {
        write!(buf, "{}\r\n", COLUMNS.join(","))?;
    }
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await? {
        match format {
            Format::Jsonl => {
                serde_json::to_writer(&mut buf, &Record::of(&row)).map_err(std::io::Error::from)?;
                buf.push(b'\n');
            }
            Format::Csv => write_csv_row(&mut buf, &row)?,
        }
        n += 1;
        progress(n);
        if buf.len() >= chunk_bytes {
            emit(std::mem::replace(&mut buf, Vec::with_capacity(chunk_bytes + 4096))).await?;
        }
    }
    drop(rows);
    tx.rollback().await?;
    if !buf.is_empty() {
        emit(buf).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, GENESIS, canonical, chain_hash};
    use serde_json::json;

    fn row() -> AuditRow {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z").unwrap().with_timezone(&Utc);
        let mut e = AuditEntry::new("discarded", "ok");
        e.ticket = Some(String::new());
        e.actor = Some("o'brien, \"ops\"".into());
        e.detail = json!({"reason": "line1\nline2", "b": 1, "a": [1, 2]});
        let hash = chain_hash(GENESIS, &canonical(7, at, &e));
        AuditRow {
            seq: 7,
            at,
            event_id: None,
            ticket: e.ticket.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            application: None,
            subject: None,
            target: None,
            outcome: e.outcome.clone(),
            detail: e.detail.clone(),
            prev_hash: GENESIS.into(),
            hash,
        }
    }

    #[test]
    fn a_jsonl_record_carries_what_the_hash_covers() {
        let r = row();
        let line = serde_json::to_string(&Record::of(&r)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // Rebuild the canonical array from the exported fields alone, as an auditor would.
        let canonical = json!([
            v["seq"],
            v["at"],
            v["event_id"],
            v["ticket"],
            v["actor"],
            v["action"],
            v["application"],
            v["subject"],
            v["target"],
            v["outcome"],
            v["detail"]
        ])
        .to_string();
        assert_eq!(chain_hash(v["prev_hash"].as_str().unwrap(), &canonical), r.hash);
        assert_eq!(v["at"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn csv_quotes_text_and_leaves_null_unquoted() {
        let mut out = Vec::new();
        write_csv_row(&mut out, &row()).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.starts_with(
                "7,\"2026-01-02T03:04:05.123456Z\",,\"\",\"o'brien, \"\"ops\"\"\",\"discarded\",,,,\"ok\","
            )
        );
        assert!(line.contains(r#""{""a"":[1,2],""b"":1,""reason"":""line1\nline2""}""#), "{line}");
        assert!(line.ends_with("\"\r\n"));
    }
}
