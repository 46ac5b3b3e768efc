//! Time-bound access: holds past their `expires_at` are released, and the
//! provider membership is removed when no other ticket still holds it.
//! Runs in every worker; the per-(application, subject) advisory lock and the
//! re-read under it make concurrent sweepers harmless.

use super::WorkerContext;
use crate::audit::{self, AuditEntry};
use crate::connectors::{Subject, Target};
use crate::grants;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken, every: Duration) {
    loop {
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "expired holds released"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; trying again next round"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Releases every expired hold; returns how many were released.
pub async fn sweep_once(ctx: &WorkerContext) -> Result<usize, sqlx::Error> {
    let due: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT g.application, g.subject FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
         WHERE h.expires_at <= now() LIMIT 500",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let mut released = 0;
    for (application, subject) in due {
        released += expire_subject(ctx, &application, &subject).await?;
    }
    Ok(released)
}

async fn expire_subject(ctx: &WorkerContext, application: &str, subject: &str) -> Result<usize, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    grants::lock(&mut tx, application, subject).await?;
    let rows: Vec<(i64, String, Option<serde_json::Value>, String, bool)> = sqlx::query_as(
        "SELECT g.id, g.target, g.subject_info, h.ticket, (h.expires_at <= now()) AS expired \
         FROM access_grants g JOIN grant_holds h ON h.grant_id = g.id \
         WHERE g.application = $1 AND g.subject = $2 ORDER BY g.target",
    )
    .bind(application)
    .bind(subject)
    .fetch_all(&mut *tx)
    .await?;
    let dry_run = ctx.config.applications.get(application).is_none_or(|a| a.dry_run);
    /// One target of the subject: which holds expired, how many remain.
    struct Due {
        id: i64,
        target: String,
        info: Option<serde_json::Value>,
        expired_tickets: Vec<String>,
        remaining: usize,
    }
    let mut targets: Vec<Due> = Vec::new();
    for (id, target, info, ticket, expired) in rows {
        if targets.last().is_none_or(|t| t.id != id) {
            targets.push(Due { id, target, info, expired_tickets: Vec::new(), remaining: 0 });
        }
        let t = targets.last_mut().expect("just pushed");
        if expired { t.expired_tickets.push(ticket) } else { t.remaining += 1 }
    }
    let mut entries = Vec::new();
    let mut released = 0;
    for Due { id, target, info, expired_tickets, remaining } in targets {
        if expired_tickets.is_empty() {
            continue;
        }
        let person = info.and_then(|v| serde_json::from_value::<Subject>(v).ok()).unwrap_or_else(|| Subject {
            account_id: subject.to_owned(),
            email: None,
            display_name: None,
            fields: Default::default(),
        });
        let provider_result = if remaining > 0 {
            "kept: another ticket still holds it"
        } else if dry_run {
            "dry_run: no provider call made"
        } else {
            match call_revoke(ctx, application, &person, &target).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(application, target = %target, error = %e, "expiry revoke failed; will retry next sweep");
                    let mut a = AuditEntry::new("provider_error", "failed");
                    a.application = Some(application.to_owned());
                    a.subject = Some(subject.to_owned());
                    a.target = Some(target.clone());
                    a.detail = json!({"call": "revoke on expiry", "class": e.class(), "error": e.to_string()});
                    entries.push(a);
                    continue;
                }
            }
        };
        sqlx::query("DELETE FROM grant_holds WHERE grant_id = $1 AND expires_at <= now()")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if remaining == 0 {
            sqlx::query(
                "UPDATE access_grants SET state = 'revoked', revoked_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        released += expired_tickets.len();
        let mut a = AuditEntry::new(if remaining == 0 { "expired" } else { "hold_released" }, "ok");
        a.application = Some(application.to_owned());
        a.subject = Some(subject.to_owned());
        a.target = Some(target.clone());
        a.ticket = expired_tickets.first().cloned();
        a.detail =
            json!({"reason": "max_duration reached", "tickets": expired_tickets, "provider_result": provider_result});
        entries.push(a);
    }
    audit::append(&mut tx, &entries).await?;
    tx.commit().await?;
    Ok(released)
}

async fn call_revoke(
    ctx: &WorkerContext,
    application: &str,
    person: &Subject,
    target: &str,
) -> Result<&'static str, crate::connectors::ConnectorError> {
    let Some(connector) = ctx.connectors.get(application) else {
        return Err(crate::connectors::ConnectorError::Permanent {
            reason: format!("no connector for {application:?}"),
        });
    };
    let target = Target { name: target.to_owned(), role: None };
    connector.revoke(person, &target).await.map(|r| match r {
        crate::connectors::RevokeOutcome::Revoked => "revoked",
        crate::connectors::RevokeOutcome::AlreadyAbsent => "already_absent",
    })
}
