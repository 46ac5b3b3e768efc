//! Recomputes the hash chain, checks that `seq` has no gap, and names the first
//! broken row.

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

/// The rules of one pass, fed row by row in `seq` order (pure, unit-tested).
///
/// A row breaks the chain when its `seq` is not the previous row's + 1 (rows
/// are numbered without gaps, see [`super::append`]), when its `prev_hash` is
/// not the previous row's `hash`, or when its content does not match its own
/// hash. The first row must be seq 1 with the genesis `prev_hash` when the
/// pass starts from the beginning (`since_seq <= 1`), and seq `since_seq` when
/// it starts from the middle (whose `prev_hash` is then taken as given).
#[derive(Debug, Clone)]
pub struct Checker {
    since_seq: i64,
    /// (seq, hash) of the last row accepted.
    prev: Option<(i64, String)>,
}

impl Checker {
    pub fn new(since_seq: i64) -> Self {
        Self { since_seq, prev: None }
    }

    /// Why `row` breaks the chain, or `None` (and `row` becomes the previous row).
    pub fn check(&mut self, row: &AuditRow) -> Option<String> {
        let from_start = self.since_seq <= 1;
        let (expected_seq, expected_prev) = match &self.prev {
            Some((seq, hash)) => (seq + 1, Some(hash.as_str())),
            None if from_start => (1, Some(GENESIS)),
            None => (self.since_seq, None),
        };
        let reason = if row.seq != expected_seq {
            Some(match &self.prev {
                Some((prev_seq, _)) => {
                    format!("seq jumps from {prev_seq} to {}: {}", row.seq, missing(row.seq - expected_seq))
                }
                None if from_start => {
                    format!("the chain starts at seq {} instead of 1: {}", row.seq, missing(row.seq - expected_seq))
                }
                None => format!(
                    "the first row from seq {expected_seq} on is seq {}: {}",
                    row.seq,
                    missing(row.seq - expected_seq)
                ),
            })
        } else if expected_prev.is_some_and(|p| p != row.prev_hash) {
            Some("prev_hash does not match the previous row's hash (a row was removed or reordered)".to_owned())
        } else if row.expected_hash() != row.hash {
            Some("content does not match its hash (the row was changed)".to_owned())
        } else {
            None
        };
        if reason.is_none() {
            self.prev = Some((row.seq, row.hash.clone()));
        }
        reason
    }
}

fn missing(n: i64) -> String {
    match n {
        1 => "a row is missing".to_owned(),
        n if n > 1 => format!("{n} rows are missing"),
        // Not reachable with rows in `seq` order under a primary key.
        _ => "rows are out of order".to_owned(),
    }
}

/// Streams rows with `seq >= since_seq` in order through a [`Checker`].
/// `progress` is called every `every` rows with the count so far.
///
/// The pass reads in one transaction with `statement_timeout` off: one
/// statement streams the whole table, which may take longer than the pool's
/// `[database] statement_timeout`.
pub async fn verify(
    pool: &PgPool,
    since_seq: i64,
    every: u64,
    mut progress: impl FnMut(u64),
) -> Result<Report, sqlx::Error> {
    let mut tx = crate::db::begin_unbounded(pool).await?;
    let mut report = Report { rows_checked: 0, first_seq: None, last_seq: None, first_broken: None };
    {
        let mut rows = sqlx::query_as::<_, AuditRow>("SELECT * FROM audit_log WHERE seq >= $1 ORDER BY seq")
            .bind(since_seq)
            .fetch(&mut *tx);
        let mut checker = Checker::new(since_seq);
        while let Some(row) = rows.try_next().await? {
            report.rows_checked += 1;
            report.first_seq.get_or_insert(row.seq);
            report.last_seq = Some(row.seq);
            if let Some(reason) = checker.check(&row) {
                report.first_broken = Some(Broken { seq: row.seq, reason });
                break;
            }
            if every > 0 && report.rows_checked.is_multiple_of(every) {
                progress(report.rows_checked);
            }
        }
    }
    tx.rollback().await?;
    Ok(report)
}

/// One recorded verification (`audit_verify_runs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct VerifyRun {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who ran it: the operator, or `accessgov-worker` for the scheduled check.
    pub actor: String,
    pub since_seq: i64,
    pub rows_checked: i64,
    pub last_seq: Option<i64>,
    pub ok: bool,
    pub broken_seq: Option<i64>,
    pub broken_reason: Option<String>,
}

/// Records the outcome of a pass that started at `since_seq`.
pub async fn record_run(pool: &PgPool, actor: &str, since_seq: i64, report: &Report) -> Result<VerifyRun, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO audit_verify_runs (actor, since_seq, rows_checked, last_seq, ok, broken_seq, broken_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(actor)
    .bind(since_seq)
    .bind(i64::try_from(report.rows_checked).unwrap_or(i64::MAX))
    .bind(report.last_seq)
    .bind(report.first_broken.is_none())
    .bind(report.first_broken.as_ref().map(|b| b.seq))
    .bind(report.first_broken.as_ref().map(|b| b.reason.as_str()))
    .fetch_one(pool)
    .await
}

/// The most recent verification, if any.
pub async fn latest_run(pool: &PgPool) -> Result<Option<VerifyRun>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit_verify_runs ORDER BY id DESC LIMIT 1").fetch_optional(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, link};
    use chrono::{SubsecRound, Utc};

    /// A correctly hashed chain of `n` rows starting after (`last_seq`, `last_hash`).
    fn chain(last_seq: i64, last_hash: &str, n: usize) -> Vec<AuditRow> {
        let at = Utc::now().trunc_subsecs(6);
        let entries: Vec<AuditEntry> = (0..n).map(|i| AuditEntry::new(&format!("step{i}"), "ok")).collect();
        link(last_seq, last_hash, at, &entries)
            .into_iter()
            .zip(&entries)
            .map(|((seq, prev_hash, hash), e)| row(seq, at, e, prev_hash, hash))
            .collect()
    }

    fn row(seq: i64, at: chrono::DateTime<Utc>, e: &AuditEntry, prev_hash: String, hash: String) -> AuditRow {
        AuditRow {
            seq,
            at,
            event_id: e.event_id,
            ticket: e.ticket.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            application: e.application.clone(),
            subject: e.subject.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            detail: e.detail.clone(),
            prev_hash,
            hash,
        }
    }

    /// The first (seq, reason) the checker reports.
    fn first_broken(since_seq: i64, rows: &[AuditRow]) -> Option<(i64, String)> {
        let mut c = Checker::new(since_seq);
        rows.iter().find_map(|r| c.check(r).map(|reason| (r.seq, reason)))
    }

    #[test]
    fn an_intact_chain_passes_from_the_start_and_from_the_middle() {
        let rows = chain(0, GENESIS, 10);
        assert_eq!(first_broken(1, &rows), None);
        assert_eq!(first_broken(0, &rows), None);
        assert_eq!(first_broken(5, &rows[4..]), None);
    }

    #[test]
    fn a_correctly_hashed_row_that_skips_a_number_is_a_missing_row() {
        let mut rows = chain(0, GENESIS, 41);
        let last = rows.last().unwrap().hash.clone();
        // Row 43 links to row 41's hash and is hashed as seq 43: only the number tells.
        rows.extend(chain(42, &last, 3));
        assert_eq!(first_broken(1, &rows), Some((43, "seq jumps from 41 to 43: a row is missing".to_owned())));
        let mut wide = chain(0, GENESIS, 2);
        let last = wide.last().unwrap().hash.clone();
        wide.extend(chain(5, &last, 1));
        assert_eq!(first_broken(1, &wide), Some((6, "seq jumps from 2 to 6: 3 rows are missing".to_owned())));
    }

    #[test]
    fn from_the_start_the_chain_must_begin_at_seq_1() {
        let rows = chain(3, GENESIS, 2);
        let (seq, reason) = first_broken(1, &rows).unwrap();
        assert_eq!(seq, 4);
        assert_eq!(reason, "the chain starts at seq 4 instead of 1: 3 rows are missing");
    }

    #[test]
    fn from_the_middle_the_first_row_must_be_the_one_asked_for() {
        let rows = chain(0, GENESIS, 10);
        let (seq, reason) = first_broken(5, &rows[6..]).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(reason, "the first row from seq 5 on is seq 7: 2 rows are missing");
    }

    #[test]
    fn a_removed_row_whose_successors_were_renumbered_breaks_the_link() {
        let mut rows = chain(0, GENESIS, 5);
        rows.remove(2);
        for (i, r) in rows.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        let (seq, reason) = first_broken(1, &rows).unwrap();
        assert_eq!(seq, 3);
        assert!(reason.contains("prev_hash"), "{reason}");
    }

    #[test]
    fn a_changed_row_fails_its_hash() {
        let mut rows = chain(0, GENESIS, 5);
        rows[3].outcome = "failed".into();
        let (seq, reason) = first_broken(1, &rows).unwrap();
        assert_eq!(seq, 4);
        assert!(reason.contains("changed"), "{reason}");
    }
}
