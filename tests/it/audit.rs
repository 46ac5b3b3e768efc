//! The audit table refuses changes; verification finds tampering and gaps;
//! concurrent batch writers keep one gapless chain; a rollback leaves no hole.

use crate::helpers::{self, db::TestDb, spawn_app};
use accessgov::audit::{self, AuditEntry, verify::verify};
use chrono::SubsecRound;
use serde_json::json;

async fn append_n(pool: &sqlx::PgPool, n: usize, tag: &str) {
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        let mut e = AuditEntry::new("received", "ok");
        e.ticket = Some(format!("{tag}-{i}"));
        e.detail = json!({"i": i, "tag": tag, "nested": {"b": 1, "a": [1, 2]}});
        audit::append(&mut tx, &[e]).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_update_delete_and_truncate_of_audit_rows() {
    let app = spawn_app().await;
    append_n(&app.pool, 1, "t").await;
    for sql in ["UPDATE audit_log SET outcome = 'failed'", "DELETE FROM audit_log", "TRUNCATE audit_log"] {
        let err = sqlx::query(sql).execute(&app.pool).await.expect_err(sql);
        assert!(err.to_string().contains("audit_log is append-only"), "{sql}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_a_single_unbroken_chain() {
    let app = spawn_app().await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let pool = app.pool.clone();
            tokio::spawn(async move { append_n(&pool, 25, &format!("w{w}")).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let report = verify(&app.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!(report.rows_checked, 200);
    assert_eq!(report.first_broken, None);
    let distinct_prev: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT prev_hash) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    assert_eq!(distinct_prev, 200, "no two rows share a predecessor (no fork)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_changed_or_removed_row() {
    let app = spawn_app().await;
    append_n(&app.pool, 10, "t").await;
    let clean = verify(&app.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!((clean.rows_checked, clean.first_broken.is_none()), (10, true));

    // A superuser can switch the trigger off; the chain still tells.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'failed' WHERE seq = (SELECT min(seq) + 4 FROM audit_log)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let min: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit_log").fetch_one(&app.pool).await.unwrap();
    let report = verify(&app.pool, 1, 0, |_| {}).await.unwrap();
    let broken = report.first_broken.expect("tampering detected");
    assert_eq!(broken.seq, min + 4);
    assert!(broken.reason.contains("changed"), "{}", broken.reason);

    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = $1").bind(min + 1).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let broken = verify(&app.pool, 1, 0, |_| {}).await.unwrap().first_broken.expect("removal detected");
    assert_eq!(broken.seq, min + 2);
    assert_eq!(broken.reason, format!("seq jumps from {min} to {}: a row is missing", min + 2));
}

fn batch(tag: &str, n: usize) -> Vec<AuditEntry> {
    (0..n)
        .map(|i| {
            let mut e = AuditEntry::new("received", "ok");
            e.event_id = Some(uuid::Uuid::new_v4());
            e.ticket = Some(format!("{tag}-{i}"));
            e.subject = (i % 2 == 0).then(|| "alice@example.com".to_owned());
            e.detail = json!({"batch": tag, "i": i, "nested": {"b": 1, "a": [1, 2]}});
            e
        })
        .collect()
}

async fn seqs(pool: &sqlx::PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM audit_log ORDER BY seq").fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_appended_in_one_call_numbered_from_1_and_verifies() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let first = batch("a", 7);
    assert_eq!(audit::append(&mut tx, &first).await.unwrap(), (1..=7).collect::<Vec<i64>>());
    assert_eq!(audit::append(&mut tx, &[]).await.unwrap(), Vec::<i64>::new());
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, &batch("b", 3)).await.unwrap(), vec![8, 9, 10]);
    tx.commit().await.unwrap();

    // What was written is what was passed, in order, with NULLs and jsonb intact.
    let stored: Vec<audit::AuditRow> =
        sqlx::query_as("SELECT * FROM audit_log ORDER BY seq LIMIT 7").fetch_all(&db.pool).await.unwrap();
    assert_eq!(stored.iter().map(audit::AuditRow::entry).collect::<Vec<_>>(), first);
    assert!(stored.iter().all(|r| r.at == stored[0].at), "one call, one timestamp");
    assert_eq!(stored[0].prev_hash, audit::GENESIS);

    let report = verify(&db.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!((report.rows_checked, report.first_seq, report.last_seq), (10, Some(1), Some(10)));
    assert_eq!(report.first_broken, None);
    let from_middle = verify(&db.pool, 4, 0, |_| {}).await.unwrap();
    assert_eq!((from_middle.rows_checked, from_middle.first_broken), (7, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_correctly_hashed_row_that_skips_a_seq_number() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    audit::append(&mut tx, &batch("a", 41)).await.unwrap();
    tx.commit().await.unwrap();

    // The table owner bypasses append: row 43 links to row 41 and is hashed as seq 43,
    // so links and hashes hold; only the numbering shows that a row is missing.
    let last: String =
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 41").fetch_one(&db.pool).await.unwrap();
    let at = chrono::Utc::now().trunc_subsecs(6);
    let e = AuditEntry::new("granted", "ok");
    let hash = audit::chain_hash(&last, &audit::canonical(43, at, &e));
    sqlx::query(
        "INSERT INTO audit_log (seq, at, action, outcome, detail, prev_hash, hash) VALUES (43, $1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(&e.action)
    .bind(&e.outcome)
    .bind(&e.detail)
    .bind(&last)
    .bind(&hash)
    .execute(&db.pool)
    .await
    .unwrap();

    let report = verify(&db.pool, 1, 0, |_| {}).await.unwrap();
    let broken = report.first_broken.expect("the gap is reported");
    assert_eq!(broken.seq, 43);
    assert_eq!(broken.reason, "seq jumps from 41 to 43: a row is missing");
    // Verifying from the missing number names it too.
    let broken = verify(&db.pool, 42, 0, |_| {}).await.unwrap().first_broken.expect("gap from the middle");
    assert_eq!((broken.seq, broken.reason.as_str()), (43, "the first row from seq 42 on is seq 43: a row is missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_leaves_no_gap() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, &batch("kept", 4)).await.unwrap(), vec![1, 2, 3, 4]);
    tx.commit().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, &batch("lost", 5)).await.unwrap(), vec![5, 6, 7, 8, 9]);
    tx.rollback().await.unwrap();

    // The next batch reuses the rolled-back numbers.
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, &batch("next", 3)).await.unwrap(), vec![5, 6, 7]);
    tx.commit().await.unwrap();

    assert_eq!(seqs(&db.pool).await, (1..=7).collect::<Vec<i64>>());
    let lost: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE detail->>'batch' = 'lost'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(lost, 0);
    let report = verify(&db.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!((report.rows_checked, report.first_broken), (7, None));
}

/// A correctness test of the chain lock under contention, not a timing test:
/// 1,000 rows in ten batches of 100, four tasks, one transaction per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_batch_writers_keep_one_gapless_line() {
    let db = TestDb::with(8, helpers::db::default_timeouts()).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for b in (w..10).step_by(4) {
                    let mut tx = pool.begin().await.unwrap();
                    let seqs = audit::append(&mut tx, &batch(&format!("b{b}"), 100)).await.unwrap();
                    tx.commit().await.unwrap();
                    written.push((b, seqs));
                }
                written
            })
        })
        .collect();
    let mut returned = Vec::new();
    for w in writers {
        returned.extend(w.await.unwrap());
    }
    assert_eq!(returned.len(), 10);
    for (b, seqs) in &returned {
        assert_eq!(seqs.len(), 100, "batch {b}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "batch {b} is not one run: {seqs:?}");
    }
    let mut all: Vec<i64> = returned.into_iter().flat_map(|(_, s)| s).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<i64>>(), "append returned each number once");

    assert_eq!(seqs(&db.pool).await, (1..=1000).collect::<Vec<i64>>());
    let report = verify(&db.pool, 1, 0, |_| {}).await.unwrap();
    assert_eq!((report.rows_checked, report.last_seq, report.first_broken), (1000, Some(1000), None));
    let distinct_prev: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT prev_hash) FROM audit_log").fetch_one(&db.pool).await.unwrap();
    assert_eq!(distinct_prev, 1000, "no two rows share a predecessor (no fork)");
    // Each batch landed as one contiguous run: no interleaving under the lock.
    let runs: Vec<(String, i64, i64, i64)> =
        sqlx::query_as("SELECT detail->>'batch', min(seq), max(seq), count(*) FROM audit_log GROUP BY 1 ORDER BY 2")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(runs.len(), 10);
    for (b, min, max, n) in runs {
        assert_eq!((max - min + 1, n), (100, 100), "batch {b}");
    }
}
