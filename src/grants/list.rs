//! The ledger for operators (`grants list`, `GET /admin/grants`): who holds
//! what, through which tickets, since when, until when.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// Which grants a listing shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StateFilter {
    /// Access currently held (at least one ticket holds it).
    #[default]
    Active,
    /// Access that was held and has been removed.
    Revoked,
    All,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub subject: Option<String>,
    pub application: Option<String>,
    /// The group or permission.
    pub target: Option<String>,
    /// Only holds that expire before this time.
    pub expiring_before: Option<DateTime<Utc>>,
    pub state: StateFilter,
}

/// The bound of "expiring within `within`" (now + `within`); `None` when that
/// is too far to be a time. Shared by `grants list`, the admin API and the console.
pub fn expiring_before(within: std::time::Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(within).ok().and_then(|d| Utc::now().checked_add_signed(d))
}

/// One ticket's hold on a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldRow {
    pub ticket: String,
    pub access_level: String,
    pub event_id: Uuid,
    pub held_since: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Who approved the ticket's event that took the hold: the actor of its
    /// latest `decided` (or `onboarded`) audit row, when there is one.
    pub approved_by: Option<String>,
}

/// One (application, subject, target) of the ledger with its holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRow {
    pub application: String,
    pub subject: String,
    pub target: String,
    pub state: String,
    pub granted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When the access ends by itself: the latest expiry of all its holds, or
    /// `None` when a hold has no expiry (or nothing is held).
    pub until: Option<DateTime<Utc>>,
    pub holds: Vec<HoldRow>,
}

#[derive(sqlx::FromRow)]
struct Flat {
    id: i64,
    application: String,
    subject: String,
    target: String,
    state: String,
    granted_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    ticket: Option<String>,
    access_level: Option<String>,
    event_id: Option<Uuid>,
    held_since: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    approved_by: Option<String>,
    until: Option<DateTime<Utc>>,
}

/// The matching grants, ordered by application, subject, target. With
/// `expiring_before`, only active grants with a hold expiring before it, and
/// only those holds.
pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<GrantRow>, sqlx::Error> {
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT g.id, g.application, g.subject, g.target, g.state, g.granted_at, g.revoked_at, g.updated_at, \
         h.ticket, h.access_level, h.event_id, h.held_since, h.expires_at, \
         (SELECT a.actor FROM audit_log a WHERE a.event_id = h.event_id \
            AND a.action IN ('decided', 'onboarded') ORDER BY a.seq DESC LIMIT 1) AS approved_by, \
         (SELECT CASE WHEN bool_and(x.expires_at IS NOT NULL) THEN max(x.expires_at) END \
            FROM grant_holds x WHERE x.grant_id = g.id) AS until \
         FROM access_grants g LEFT JOIN grant_holds h ON h.grant_id = g.id WHERE true",
    );
    if let Some(s) = &f.subject {
        qb.push(" AND g.subject = ").push_bind(s.clone());
    }
    if let Some(a) = &f.application {
        qb.push(" AND g.application = ").push_bind(a.clone());
    }
    if let Some(t) = &f.target {
        qb.push(" AND g.target = ").push_bind(t.clone());
    }
    match f.state {
        StateFilter::Active => qb.push(" AND g.state = 'active'"),
        StateFilter::Revoked => qb.push(" AND g.state = 'revoked'"),
        StateFilter::All => qb.push(""),
    };
    if let Some(t) = f.expiring_before {
        qb.push(" AND h.expires_at IS NOT NULL AND h.expires_at <= ").push_bind(t);
    }
    qb.push(" ORDER BY g.application, g.subject, g.target, h.held_since, h.ticket");
    let flat: Vec<Flat> = qb.build_query_as().fetch_all(pool).await?;

    let mut out: Vec<GrantRow> = Vec::new();
    let mut last_id = None;
    for r in flat {
        if last_id != Some(r.id) {
            last_id = Some(r.id);
            out.push(GrantRow {
                application: r.application,
                subject: r.subject,
                target: r.target,
                state: r.state,
                granted_at: r.granted_at,
                revoked_at: r.revoked_at,
                updated_at: r.updated_at,
                until: r.until,
                holds: Vec::new(),
            });
        }
        let g = out.last_mut().expect("pushed above");
        if let (Some(ticket), Some(access_level), Some(event_id), Some(held_since)) =
            (r.ticket, r.access_level, r.event_id, r.held_since)
        {
            g.holds.push(HoldRow {
                ticket,
                access_level,
                event_id,
                held_since,
                expires_at: r.expires_at,
                approved_by: r.approved_by,
            });
        }
    }
    Ok(out)
}

/// The ledger's headline numbers at `now` (the console's overview).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Counts {
    /// Holds of active grants (one per ticket holding an access).
    pub active_holds: i64,
    /// Of those, holds expiring before `soon`.
    pub expiring_soon: i64,
}

pub async fn counts(pool: &PgPool, soon: DateTime<Utc>) -> Result<Counts, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS active_holds, \
                count(*) FILTER (WHERE h.expires_at IS NOT NULL AND h.expires_at <= $1) AS expiring_soon \
         FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id WHERE g.state = 'active'",
    )
    .bind(soon)
    .fetch_one(pool)
    .await
}
