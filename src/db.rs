//! PostgreSQL: the pool, the embedded migrations, and the runtime role.
//!
//! Two roles (README, "Database roles"): the owner of the tables runs the
//! migrations (`[database] migrate_url`); the services connect as the
//! least-privilege [`RUNTIME_ROLE`] the migrations create (`[database] url`),
//! which may read and append audit rows but never change them.

use crate::config::DatabaseConfig;
use crate::config::secret::SecretError;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The least-privilege role the services connect as (created by the migration
/// `20261126000001_runtime_role.sql`; cluster-wide, like every PostgreSQL role).
pub const RUNTIME_ROLE: &str = "accessgov_app";

/// Iterations of the SCRAM-SHA-256 verifiers we compute (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot reach PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error(
        "migration failed: {0} (migrations run as the owner of the tables: [database] migrate_url, \
         or url when migrate_url is not set)"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("[database] app_password: {0}")]
    Password(SecretError),
    #[error(
        "the password of role {RUNTIME_ROLE} must be printable ASCII (PostgreSQL would normalize other \
         characters); generate one with e.g. `openssl rand -base64 32`"
    )]
    PasswordNotAscii,
    #[error(
        "cannot set the password of role {RUNTIME_ROLE}: {0} (the migrating role needs CREATEROLE and, \
         on PostgreSQL 16+, ADMIN OPTION on {RUNTIME_ROLE}; or remove app_password_env/app_password_file \
         and set the password yourself)"
    )]
    SetPassword(sqlx::Error),
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Versions of the migrations applied now.
    pub applied: Vec<i64>,
    /// Whether the runtime role's password was set.
    pub password_set: bool,
}

/// `accessgov migrate` and `--migrate`: as the owner (`migrate_url`), create the
/// database if needed and apply pending migrations; then, when
/// `app_password_env`/`_file` is configured, set the runtime role's password.
/// The secret is read before anything changes, so a missing one changes nothing.
pub async fn prepare(config: &DatabaseConfig) -> Result<Prepared, DbError> {
    let password = config.app_password().map(|r| r.resolve()).transpose().map_err(DbError::Password)?;
    let url = config.migrate_url();
    let pool = pool(url, 2, &config.timeouts())?;
    let applied = migrate(&pool, url).await;
    pool.close().await;
    let applied = applied?;
    let password_set = match password {
        Some(password) => {
            set_runtime_password(url, &password).await?;
            tracing::info!(role = RUNTIME_ROLE, "set the runtime role's password");
            true
        }
        None => false,
    };
    Ok(Prepared { applied, password_set })
}

/// `ALTER ROLE accessgov_app PASSWORD '<SCRAM-SHA-256 verifier>'` on a connection
/// of its own whose statements sqlx does not log. Only the verifier (salted,
/// iterated hashes) travels, so the password reaches neither the server nor its
/// statement log; the verifier is not logged by us either.
pub async fn set_runtime_password(url: &str, password: &SecretString) -> Result<(), DbError> {
    set_role_password(url, RUNTIME_ROLE, password).await
}

async fn set_role_password(url: &str, role: &str, password: &SecretString) -> Result<(), DbError> {
    let password = password.expose_secret();
    if !password.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(DbError::PasswordNotAscii);
    }
    let salt = uuid::Uuid::new_v4().into_bytes();
    let statement = format!(
        "ALTER ROLE {} PASSWORD {}",
        quote_ident(role),
        quote_literal(&scram_verifier(password, &salt, SCRAM_ITERATIONS))
    );
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::Url)?
        .application_name("accessgov migrate")
        .disable_statement_logging();
    let mut conn =
        options.connect().await.map_err(|source| DbError::Connect { url: crate::config::redact_url(url), source })?;
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await;
    let _ = sqlx::Connection::close(conn).await;
    result.map(|_| ()).map_err(DbError::SetPassword)
}

/// PostgreSQL's SCRAM-SHA-256 verifier of `password` (RFC 5802 / RFC 7677), in the
/// form `ALTER ROLE ... PASSWORD` stores as given:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). For an
/// ASCII password SASLprep changes nothing, so this equals the server's own.
pub fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let hmac = |key: &[u8], parts: &[&[u8]]| -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    };
    // Hi(password, salt, i): PBKDF2-HMAC-SHA-256, one 32-byte block.
    let mut u = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = hmac(password.as_bytes(), &[&u]);
        salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, &[b"Server Key"]);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// A string literal for SQL text, as PostgreSQL's `quote_literal` writes it.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') { format!("E'{}'", body.replace('\\', "\\\\")) } else { format!("'{body}'") }
}

/// An identifier for SQL text, always double-quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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
/// (idempotent; concurrent runners are serialized by sqlx's lock). `url` must
/// be the owner's ([`prepare`] takes it from the config).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted_like_postgres_does() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_ident("accessgov_app"), "\"accessgov_app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_scram_verifier_matches_an_independent_computation() {
        // Python: hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096), then
        // HMAC "Client Key" / "Server Key" and sha256(ClientKey), base64.
        assert_eq!(
            scram_verifier("pencil", b"0123456789abcdef", 4096),
            "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:\
             jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20="
        );
        assert_ne!(
            scram_verifier("pencil", b"0123456789abcdef", 4096),
            scram_verifier("pencil", b"0123456789abcdeg", 4096)
        );
    }
}
