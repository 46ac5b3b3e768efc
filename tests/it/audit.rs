//! The audit table refuses changes; verification finds tampering; concurrent
//! writers keep one chain.

use crate::helpers::spawn_app;
use accessgov::audit::{self, AuditEntry, verify::verify};
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
    assert!(broken.reason.contains("removed"), "{}", broken.reason);
}
