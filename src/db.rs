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

/// Per-connection server-side limits, set on every pooled connection at
/// connect time (`-c` startup options). Zero turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `statement_timeout`: a statement running longer is cancelled (SQLSTATE 57014).
    pub statement: Duration,
    /// `lock_timeout`: waiting longer for any lock, advisory locks included, fails (55P03).
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`: a session idle this long inside a
    /// transaction is terminated, releasing its locks (25P03).
    pub idle_in_transaction: Duration,
}

impl Timeouts {
    /// The startup options that set these limits, in milliseconds.
    pub fn options(&self) -> [(&'static str, String); 3] {
        let ms = |d: Duration| d.as_millis().to_string();
        [
            ("statement_timeout", ms(self.statement)),
            ("lock_timeout", ms(self.lock)),
            ("idle_in_transaction_session_timeout", ms(self.idle_in_transaction)),
        ]
    }
}

impl From<&crate::config::DatabaseConfig> for Timeouts {
    fn from(c: &crate::config::DatabaseConfig) -> Self {
        Self {
            statement: c.statement_timeout,
            lock: c.lock_timeout,
            idle_in_transaction: c.idle_in_transaction_timeout,
        }
    }
}

/// A pool; connects lazily so that a service can start (and report not-ready)
/// while the database is down. Every connection carries `timeouts` (they take
/// precedence over the same settings in the URL's `options`).
pub fn pool(url: &str, max_connections: u32, timeouts: &Timeouts) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::Url)?
        .application_name("accessgov")
        .options(timeouts.options());
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// A transaction whose statements are not subject to `statement_timeout`, for
/// reads that stream a whole table (`audit verify`, `audit export`): one such
/// statement may rightly run for minutes. Lock and idle limits still apply.
pub async fn begin_unbounded(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
    Ok(tx)
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
    // Migrations run without the pool's limits: a migration may rewrite a large
    // table, and a second runner must wait for sqlx's migration lock rather than
    // fail after `lock_timeout`. The connection is closed afterwards, not
    // returned to the pool with those settings.
    let mut conn =
        pool.acquire().await.map_err(|source| DbError::Connect { url: crate::config::redact_url(url), source })?;
    conn.close_on_drop();
    sqlx::query(
        "SELECT set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false), \
         set_config('idle_in_transaction_session_timeout', '0', false)",
    )
    .execute(&mut *conn)
    .await
    .map_err(|source| DbError::Connect { url: crate::config::redact_url(url), source })?;
    MIGRATOR.run(&mut *conn).await?;
    drop(conn);
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
