//! Recomputes the hash chain and names the first broken row.

use super::{AuditRow, GENESIS};
use futures_util::TryStreamExt;
use sqlx::PgPool;

/// The result of a verification pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub rows_checked: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Streams rows with `seq >= since_seq` in order, checking each row's hash and
/// its link to the row before. From the start of the table the first
/// `prev_hash` must be the genesis value; from the middle it is taken as given.
/// `progress` is called every `every` rows with the count so far.
pub async fn verify(
    pool: &PgPool,
    since_seq: i64,
    every: u64,
    mut progress: impl FnMut(u64),
) -> Result<Report, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, AuditRow>("SELECT * FROM audit_log WHERE seq >= $1 ORDER BY seq")
        .bind(since_seq)
        .fetch(pool);
    let mut report = Report { rows_checked: 0, first_seq: None, last_seq: None, first_broken: None };
    let mut prev: Option<String> = None;
    while let Some(row) = rows.try_next().await? {
        report.rows_checked += 1;
        report.first_seq.get_or_insert(row.seq);
        report.last_seq = Some(row.seq);
        let expected_prev = match &prev {
            Some(p) => Some(p.as_str()),
            None if since_seq <= 1 => Some(GENESIS),
            None => None,
        };
        let broken = if expected_prev.is_some_and(|p| p != row.prev_hash) {
            Some("prev_hash does not match the previous row's hash (a row was removed or reordered)".to_owned())
        } else if row.expected_hash() != row.hash {
            Some("content does not match its hash (the row was changed)".to_owned())
        } else {
            None
        };
        if let Some(reason) = broken {
            report.first_broken = Some(Broken { seq: row.seq, reason });
            return Ok(report);
        }
        prev = Some(row.hash);
        if every > 0 && report.rows_checked.is_multiple_of(every) {
            progress(report.rows_checked);
        }
    }
    Ok(report)
}
