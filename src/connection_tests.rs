//! Recorded connection tests: each run of "Test connection" (`accessgov
//! connectors test` and the console's button) writes one `connection_tests` row
//! per live application tested and one chained `connection_tested` audit row
//! with the operator, in one transaction. The console's overview shows each
//! application's latest ([`latest`]). Dry-run applications are never tested, so
//! never recorded.

use crate::audit::{self, AuditEntry};
use crate::commands::connectors::{Outcome, Row};
use crate::operator::Operator;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

/// One recorded test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Recorded {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub application: String,
    pub kind: String,
    /// Who pressed the button (the operator).
    pub actor: String,
    /// `cli` or `console`.
    pub via: String,
    pub ok: bool,
    /// `ok`, `config`, or the provider error's class.
    pub result: String,
    pub latency_ms: Option<i64>,
    /// The error (never a secret: connector errors name the call, not the credentials).
    pub error: Option<String>,
}

/// (result, error) of a row.
fn result_of(row: &Row) -> (&'static str, Option<String>) {
    match &row.result {
        Outcome::Ok => ("ok", None),
        Outcome::Skipped => ("skipped", None),
        Outcome::Config(m) => ("config", Some(m.clone())),
        Outcome::Failed(e) => (e.class(), Some(e.to_string())),
    }
}

/// Records the rows of one run (skipped ones are left out) and audits each.
pub async fn record(pool: &PgPool, rows: &[Row], operator: &Operator) -> Result<(), sqlx::Error> {
    let tested: Vec<&Row> = rows.iter().filter(|r| !matches!(r.result, Outcome::Skipped)).collect();
    if tested.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let mut entries = Vec::with_capacity(tested.len());
    for row in tested {
        let (result, error) = result_of(row);
        let latency_ms = row.latency.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO connection_tests (application, kind, actor, via, ok, result, latency_ms, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.application)
        .bind(row.kind)
        .bind(&operator.name)
        .bind(operator.via.as_str())
        .bind(!row.failed())
        .bind(result)
        .bind(latency_ms)
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        let mut e = AuditEntry::new("connection_tested", if row.failed() { "failed" } else { "ok" });
        e.actor = Some(operator.name.clone());
        e.application = Some(row.application.clone());
        e.detail = json!({
            "via": operator.via.as_str(),
            "kind": row.kind,
            "result": result,
            "latency_ms": latency_ms,
            "error": error,
        });
        entries.push(e);
    }
    audit::append(&mut tx, &entries).await?;
    tx.commit().await
}

/// The latest recorded test of each application, by application name.
pub async fn latest(pool: &PgPool) -> Result<Vec<Recorded>, sqlx::Error> {
    sqlx::query_as("SELECT DISTINCT ON (application) * FROM connection_tests ORDER BY application, id DESC")
        .fetch_all(pool)
        .await
}
