//! The audit table refuses changes; verification finds tampering and gaps;
//! concurrent batch writers keep one gapless chain; a rollback leaves no hole;
//! the services' runtime role can append but not change history or switch the
//! protection off.

use crate::helpers::{self, db::TestDb, pg_server_url, spawn_app};
use accessgov::audit::{self, AuditEntry, verify::verify};
use accessgov::db::{RUNTIME_ROLE, scram_verifier};
use chrono::SubsecRound;
use serde_json::json;
use sqlx::PgPool;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_appends_and_reads_audit_rows_but_cannot_change_them_or_lift_the_protection() {
    let app = spawn_app().await;
    append_n(&app.pool, 1, "owner").await;
    let owner: String = sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'audit_log'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(owner, RUNTIME_ROLE);

    // What the services connect with (the harness default): the runtime role.
    assert!(app.config.database.url.contains(&format!("://{RUNTIME_ROLE}@")), "{}", app.config.database.url);
    let runtime = PgPool::connect(&app.config.database.url).await.expect("the runtime role logs in");
    let me: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&runtime).await.unwrap();
    assert_eq!(me, RUNTIME_ROLE);

    // It appends through the normal path (chain lock, sequence, insert) and reads.
    append_n(&runtime, 2, "runtime").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&runtime).await.unwrap();
    assert_eq!(count, 3);
    assert_eq!(verify(&runtime, 1, 0, |_| {}).await.unwrap().first_broken, None);

    // Refused by the privilege system itself, before any trigger runs (the
    // trigger's own error says "append-only" and would not count here).
    let set_role = format!("SET ROLE \"{owner}\"");
    for (sql, expected) in [
        ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner of table audit_log"),
        ("ALTER TABLE audit_log DISABLE TRIGGER USER", "must be owner of table audit_log"),
        ("TRUNCATE audit_log", "permission denied for table audit_log"),
        ("UPDATE audit_log SET outcome = 'failed'", "permission denied for table audit_log"),
        ("DELETE FROM audit_log", "permission denied for table audit_log"),
        ("DROP TRIGGER audit_log_refuse_update_delete ON audit_log", "must be owner of relation audit_log"),
        ("DROP TRIGGER audit_log_refuse_truncate ON audit_log", "must be owner of relation audit_log"),
        ("DROP FUNCTION audit_log_refuse_change() CASCADE", "must be owner of function audit_log_refuse_change"),
        ("ALTER TABLE audit_log OWNER TO accessgov_app", "must be owner of table audit_log"),
        ("DROP TABLE audit_log", "must be owner of table audit_log"),
        ("SELECT setval('audit_log_seq_seq', 1)", "permission denied for sequence audit_log_seq_seq"),
        (set_role.as_str(), "permission denied to set role"),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&runtime).await.expect_err(sql);
        let db = err.as_database_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().as_deref(), Some("42501"), "{sql}: {err}");
        assert!(db.message().contains(expected), "{sql}: {err}");
    }

    // Nothing changed: the rows, the chain, the owner and both triggers, enabled.
    assert_eq!(verify(&app.pool, 1, 0, |_| {}).await.unwrap().rows_checked, 3);
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT tgname::text, tgenabled::text FROM pg_trigger \
         WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal ORDER BY tgname",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        triggers,
        [("audit_log_refuse_truncate".into(), "O".into()), ("audit_log_refuse_update_delete".into(), "O".into())]
    );
    // The role owns nothing here and is a plain login role.
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relowner = $1::regrole")
        .bind(RUNTIME_ROLE)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owned, 0);
    let attrs: (bool, bool, bool, bool, bool) = sqlx::query_as(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = $1",
    )
    .bind(RUNTIME_ROLE)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attrs, (true, false, false, false, false));
    runtime.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_scram_verifier_equals_the_one_postgres_computes_for_the_same_password_and_salt() {
    let admin = PgPool::connect(&format!("{}/postgres", pg_server_url())).await.unwrap();
    let role = crate::helpers::unique("accessgov_scram_probe");
    let password = "correct horse battery staple 'quoted' \\ and $igns";
    let mut conn = admin.acquire().await.unwrap();
    sqlx::query("SET password_encryption = 'scram-sha-256'").execute(&mut *conn).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" NOLOGIN PASSWORD {}",
        accessgov::db::quote_literal(password)
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\""))).execute(&mut *conn).await.unwrap();
    drop(conn);
    admin.close().await;
    let (iterations, salt) = scram_salt(&stored);
    assert_eq!(scram_verifier(password, &salt, iterations), stored);
}

/// The iterations and salt of a stored `SCRAM-SHA-256$<i>:<salt>$...` verifier.
pub fn scram_salt(stored: &str) -> (u32, Vec<u8>) {
    use base64::Engine;
    let params = stored.strip_prefix("SCRAM-SHA-256$").and_then(|r| r.split('$').next()).expect("a SCRAM verifier");
    let (iterations, salt) = params.split_once(':').unwrap();
    (iterations.parse().unwrap(), base64::engine::general_purpose::STANDARD.decode(salt).unwrap())
}
