//! `TestDb`: a fresh, migrated database without the rest of the app (no broker),
//! for tests of the storage layer; dropped with the value.

use super::{pg_server_url, unique};
use accessgov::db::{self, Timeouts};
use sqlx::PgPool;
use std::time::Duration;

pub struct TestDb {
    pub url: String,
    /// A pool built by `db::pool`, so it carries `timeouts`.
    pub pool: PgPool,
    db_name: String,
}

/// The `[database]` defaults.
pub fn default_timeouts() -> Timeouts {
    accessgov::config::DatabaseConfig::default().timeouts()
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with(5, default_timeouts()).await
    }

    /// Creates and migrates a database; `max_connections` and `timeouts` shape its pool.
    pub async fn with(max_connections: u32, timeouts: Timeouts) -> Self {
        let db_name = unique("accessgov_test");
        let url = format!("{}/{db_name}", pg_server_url());
        let pool = db::pool(&url, max_connections, &timeouts).expect("pool");
        db::migrate(&pool, &url).await.expect("migrations apply");
        Self { url, pool, db_name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_server_url())).await {
                    let drop = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"));
                    let _ = tokio::time::timeout(Duration::from_secs(10), sqlx::query(drop).execute(&admin)).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}
