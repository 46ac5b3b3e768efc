//! Every pooled connection carries the `[database]` timeouts; migrations and
//! whole-table reads are exempt from the statement limit.

use crate::helpers::db::TestDb;
use accessgov::db::{self, Timeouts};
use std::time::Duration;

async fn show(conn: &mut sqlx::PgConnection, setting: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}"))).fetch_one(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_report_the_configured_timeouts() {
    let timeouts = Timeouts {
        statement: Duration::from_millis(1500),
        lock: Duration::from_secs(7),
        idle_in_transaction: Duration::from_secs(90),
    };
    // One connection: the one that ran the migrations (with the limits off) must not come back.
    let db = TestDb::with(1, timeouts).await;
    for _ in 0..2 {
        let mut conn = db.pool.acquire().await.unwrap();
        assert_eq!(show(&mut conn, "statement_timeout").await, "1500ms");
        assert_eq!(show(&mut conn, "lock_timeout").await, "7s");
        assert_eq!(show(&mut conn, "idle_in_transaction_session_timeout").await, "90s");
    }
    // The defaults (30s, 10s, 60s).
    let defaults = db::pool(&db.url, 1, &crate::helpers::db::default_timeouts()).unwrap();
    let mut conn = defaults.acquire().await.unwrap();
    assert_eq!(show(&mut conn, "statement_timeout").await, "30s");
    assert_eq!(show(&mut conn, "lock_timeout").await, "10s");
    assert_eq!(show(&mut conn, "idle_in_transaction_session_timeout").await, "1min");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_longer_than_statement_timeout_is_cancelled_with_57014() {
    let timeouts = Timeouts { statement: Duration::from_millis(100), ..crate::helpers::db::default_timeouts() };
    let db = TestDb::with(2, timeouts).await;
    let err = sqlx::query("SELECT pg_sleep(2)").execute(&db.pool).await.expect_err("cancelled");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");

    // A whole-table read runs in a transaction without the statement limit.
    let mut tx = db::begin_unbounded(&db.pool).await.unwrap();
    assert_eq!(show(&mut tx, "statement_timeout").await, "0");
    sqlx::query("SELECT pg_sleep(0.3)").execute(&mut *tx).await.expect("not cancelled");
    tx.rollback().await.unwrap();
    // ... and only that transaction: the connection is back to the limit.
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(show(&mut conn, "statement_timeout").await, "100ms");
}
