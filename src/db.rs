//! PostgreSQL: the pool and the embedded migrations.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot reach PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool; connects lazily so that a service can start (and report not-ready)
/// while the database is down.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(DbError::Url)?.application_name("accessgov");
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Creates the database named in the URL when it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    use sqlx::migrate::MigrateDatabase;
    let shown = crate::config::redact_url(url);
    let exists =
        sqlx::Postgres::database_exists(url).await.map_err(|source| DbError::Connect { url: shown.clone(), source })?;
    if !exists {
        sqlx::Postgres::create_database(url).await.map_err(|source| DbError::Connect { url: shown, source })?;
    }
    Ok(!exists)
}

/// Creates the database if needed, then applies pending migrations
/// (idempotent; concurrent runners are serialized by sqlx's lock).
pub async fn migrate(pool: &PgPool, url: &str) -> Result<Vec<i64>, DbError> {
    if ensure_database(url).await? {
        tracing::info!(url = %crate::config::redact_url(url), "created the database");
    }
    let before: std::collections::HashSet<i64> = applied(pool, url).await?;
    MIGRATOR.run(pool).await?;
    let after = applied(pool, url).await?;
    let mut new: Vec<i64> = after.difference(&before).copied().collect();
    new.sort_unstable();
    Ok(new)
}

async fn applied(pool: &PgPool, url: &str) -> Result<std::collections::HashSet<i64>, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url(url), source })?;
    if !exists {
        return Ok(Default::default());
    }
    let rows: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url(url), source })?;
    Ok(rows.into_iter().collect())
}

/// True when a trivial query answers.
pub async fn ready(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await.is_ok()
}
