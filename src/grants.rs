//! The reference-counted grants ledger: who holds what, through which tickets.
//!
//! [`plan`] is pure: given the ledger rows of one (application, subject) and a
//! decision, it says which provider calls to make and how the ledger changes.
//! A provider write happens only when the first hold on a target is taken or
//! the last one released; two tickets holding the same group never lead to a
//! revoke that takes away access the other still grants.
//!
//! Ordering: a removal request records `revoked_through`; a grant older than
//! that is superseded, so an old grant never overtakes a newer removal.

pub mod list;

use crate::event::Person;
use crate::rules::{Decision, RevokeScope};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// One ticket's hold on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub ticket: String,
    pub access_level: String,
    pub event_at: DateTime<Utc>,
}

/// The ledger state of one target for the subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    pub holds: Vec<Hold>,
    pub revoked_through: Option<DateTime<Utc>>,
    /// The provider identity the membership was granted to (a [`crate::connectors::Subject`]).
    pub identity: Option<crate::connectors::Subject>,
}

/// The ledger of one (application, subject): target -> state.
pub type Ledger = BTreeMap<String, TargetState>;

/// What the event asks of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Take this ticket's hold on `targets` (grant).
    Grant { targets: &'a [String], access_level: &'a str },
    /// Take holds on the new level's targets and release earlier tickets' holds at other levels.
    Change { targets: &'a [String], access_level: &'a str },
    /// Release holds.
    Revoke { targets: &'a [String], scope: RevokeScope },
    /// Call the provider again for targets the ledger holds (a repair), changing no hold.
    Repair { targets: &'a [String] },
    /// Remove memberships the ledger does not hold (a leaver's unmanaged ones), changing no hold.
    Remove { targets: &'a [String] },
}

/// A call to make at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", content = "target", rename_all = "snake_case")]
pub enum ProviderOp {
    Grant(String),
    Revoke(String),
}

/// A change to write once the provider calls succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddHold { target: String, access_level: String },
    RemoveHold { target: String, ticket: String },
    RevokedThrough { target: String },
}

/// Something worth an audit row beside the provider calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// Another ticket already holds the access: hold added, no provider write.
    HoldAdded { target: String, other_holders: Vec<String> },
    /// A hold was released but others remain: no provider write.
    HoldReleased { target: String, ticket: String, remaining: Vec<String> },
    /// This ticket already holds it (a replay of the same grant).
    AlreadyHeld { target: String },
    /// A newer removal request already covers this target.
    Superseded { target: String, reason: String },
    /// Nothing held by this ticket on this target.
    NothingHeld { target: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<ProviderOp>,
    pub changes: Vec<Change>,
    pub notes: Vec<Note>,
}

/// Plans an event for `ticket` that happened at `event_at`.
pub fn plan(ledger: &Ledger, request: &Request<'_>, ticket: &str, event_at: DateTime<Utc>) -> Plan {
    let mut p = Plan::default();
    let empty = TargetState::default();
    let take = |p: &mut Plan, targets: &[String], level: &str| {
        for t in targets {
            let st = ledger.get(t).unwrap_or(&empty);
            if st.revoked_through.is_some_and(|r| event_at < r) {
                p.notes.push(Note::Superseded {
                    target: t.clone(),
                    reason: "a newer removal request already revoked this access".into(),
                });
                continue;
            }
            if st.holds.iter().any(|h| h.ticket == ticket) {
                p.notes.push(Note::AlreadyHeld { target: t.clone() });
                continue;
            }
            p.changes.push(Change::AddHold { target: t.clone(), access_level: level.to_owned() });
            if st.holds.is_empty() {
                p.ops.push(ProviderOp::Grant(t.clone()));
            } else {
                p.notes.push(Note::HoldAdded {
                    target: t.clone(),
                    other_holders: st.holds.iter().map(|h| h.ticket.clone()).collect(),
                });
            }
        }
    };
    match request {
        Request::Grant { targets, access_level } => take(&mut p, targets, access_level),
        Request::Remove { targets } => {
            // Only what no ticket holds: a held target is released by its tickets' own revokes.
            for t in targets.iter() {
                match ledger.get(t).filter(|st| !st.holds.is_empty()) {
                    None => p.ops.push(ProviderOp::Revoke(t.clone())),
                    Some(st) => p.notes.push(Note::HoldReleased {
                        target: t.clone(),
                        ticket: ticket.to_owned(),
                        remaining: st.holds.iter().map(|h| h.ticket.clone()).collect(),
                    }),
                }
            }
        }
        Request::Repair { targets } => {
            // Only what is still held: a target released since the drift was read needs nothing.
            for t in targets.iter() {
                if ledger.get(t).is_some_and(|st| !st.holds.is_empty()) {
                    p.ops.push(ProviderOp::Grant(t.clone()));
                } else {
                    p.notes.push(Note::NothingHeld { target: t.clone() });
                }
            }
        }
        Request::Change { targets, access_level } => {
            take(&mut p, targets, access_level);
            for (t, st) in ledger {
                let (release, keep): (Vec<&Hold>, Vec<&Hold>) = st.holds.iter().partition(|h| {
                    h.ticket != ticket && h.event_at < event_at && !h.access_level.eq_ignore_ascii_case(access_level)
                });
                if release.is_empty() {
                    continue;
                }
                for h in &release {
                    p.changes.push(Change::RemoveHold { target: t.clone(), ticket: h.ticket.clone() });
                }
                // The new level keeps a target it also grants; otherwise the last release revokes.
                let kept_by_change = targets.contains(t);
                if keep.is_empty() && !kept_by_change {
                    p.ops.push(ProviderOp::Revoke(t.clone()));
                } else {
                    let remaining: Vec<String> = keep
                        .iter()
                        .map(|k| k.ticket.clone())
                        .chain(kept_by_change.then(|| ticket.to_owned()))
                        .collect();
                    for h in &release {
                        p.notes.push(Note::HoldReleased {
                            target: t.clone(),
                            ticket: h.ticket.clone(),
                            remaining: remaining.clone(),
                        });
                    }
                }
            }
        }
        Request::Revoke { targets, scope: RevokeScope::Ticket } => {
            // What this ticket granted, wherever the ledger says it holds something
            // (the rule may have changed since), plus the rule's targets for the record.
            let mut any = false;
            for (t, st) in ledger {
                let Some(h) = st.holds.iter().find(|h| h.ticket == ticket && h.event_at <= event_at) else {
                    continue;
                };
                any = true;
                p.changes.push(Change::RemoveHold { target: t.clone(), ticket: h.ticket.clone() });
                let remaining: Vec<String> =
                    st.holds.iter().filter(|o| o.ticket != ticket).map(|o| o.ticket.clone()).collect();
                if remaining.is_empty() {
                    p.ops.push(ProviderOp::Revoke(t.clone()));
                } else {
                    p.notes.push(Note::HoldReleased { target: t.clone(), ticket: ticket.to_owned(), remaining });
                }
            }
            if !any {
                for t in targets.iter() {
                    p.notes.push(Note::NothingHeld { target: t.clone() });
                }
            }
        }
        Request::Revoke { targets, scope: RevokeScope::Subject } => {
            for t in targets.iter() {
                let st = ledger.get(t).unwrap_or(&empty);
                let (release, keep): (Vec<&Hold>, Vec<&Hold>) = st.holds.iter().partition(|h| h.event_at < event_at);
                for h in &release {
                    p.changes.push(Change::RemoveHold { target: t.clone(), ticket: h.ticket.clone() });
                }
                p.changes.push(Change::RevokedThrough { target: t.clone() });
                if keep.is_empty() {
                    // Also when the ledger held nothing: the membership may predate
                    // accessgov, and a removal request means "take it away".
                    p.ops.push(ProviderOp::Revoke(t.clone()));
                } else {
                    p.notes.push(Note::HoldReleased {
                        target: t.clone(),
                        ticket: release.iter().map(|h| h.ticket.as_str()).collect::<Vec<_>>().join(","),
                        remaining: keep.iter().map(|k| k.ticket.clone()).collect(),
                    });
                }
            }
        }
    }
    p
}

/// A grant for `subject` on a target that is already held for a *different*
/// provider identity (another `subject_field` value, e.g. another GitHub login)
/// would add a hold without provisioning the new identity. Returns the first such
/// target with the identity held there; the caller refuses the request.
pub fn identity_conflict<'a>(
    ledger: &'a Ledger,
    targets: &[String],
    subject: &crate::connectors::Subject,
) -> Option<(&'a str, &'a crate::connectors::Subject)> {
    targets.iter().find_map(|t| {
        let (name, st) = ledger.get_key_value(t)?;
        let held = st.identity.as_ref()?;
        (!st.holds.is_empty() && held.fields != subject.fields).then_some((name.as_str(), held))
    })
}

/// Who a revoke of `target` must address: the identity the membership was
/// granted to, when the ledger recorded one; else the event's subject.
pub fn revoke_identity<'a>(
    ledger: &'a Ledger,
    target: &str,
    fallback: &'a crate::connectors::Subject,
) -> &'a crate::connectors::Subject {
    ledger.get(target).and_then(|st| st.identity.as_ref()).unwrap_or(fallback)
}

/// The (target, access level) of every change when all of them take a hold on
/// distinct targets and nothing is revoked: a grant's usual shape.
fn only_new_holds<'c>(changes: &'c [Change], revoked: &[String]) -> Option<Vec<(&'c str, &'c str)>> {
    if !revoked.is_empty() || changes.is_empty() {
        return None;
    }
    let mut adds = Vec::with_capacity(changes.len());
    for c in changes {
        match c {
            Change::AddHold { target, access_level } if !adds.iter().any(|(t, _)| *t == target.as_str()) => {
                adds.push((target.as_str(), access_level.as_str()))
            }
            _ => return None,
        }
    }
    Some(adds)
}

/// [`apply`] for holds taken on distinct targets, in one statement: each
/// target's row is made active (granted now if it was not; the identity it is
/// granted to is recorded when no hold existed before), then the holds are added.
async fn add_holds(tx: &mut PgConnection, a: &Applied<'_>, adds: &[(&str, &str)]) -> Result<(), sqlx::Error> {
    let targets: Vec<&str> = adds.iter().map(|(t, _)| *t).collect();
    let levels: Vec<&str> = adds.iter().map(|(_, l)| *l).collect();
    sqlx::query(
        "WITH k AS (SELECT * FROM UNNEST($3::text[], $8::text[]) AS k(target, access_level)), \
              g AS (INSERT INTO access_grants AS g (application, subject, target, state, granted_at, last_event_id, \
                                                      last_event_at, subject_info) \
                    SELECT $1, $2, k.target, 'active', now(), $4, $5, $6 FROM k ORDER BY k.target \
                    ON CONFLICT (application, subject, target) DO UPDATE SET \
                      last_event_id = $4, last_event_at = $5, updated_at = now(), state = 'active', \
                      granted_at = CASE WHEN g.state = 'revoked' THEN now() ELSE g.granted_at END, \
                      subject_info = CASE WHEN EXISTS (SELECT 1 FROM grant_holds h WHERE h.grant_id = g.id) \
                                          THEN g.subject_info ELSE excluded.subject_info END \
                    RETURNING g.id, g.target) \
         INSERT INTO grant_holds (grant_id, ticket, access_level, event_id, event_at, expires_at, identity) \
         SELECT g.id, $7, k.access_level, $4, $5, $9, $6 FROM g JOIN k USING (target) \
         ON CONFLICT (grant_id, ticket) DO NOTHING",
    )
    .bind(a.application)
    .bind(a.subject)
    .bind(&targets)
    .bind(a.event_id)
    .bind(a.event_at)
    .bind(a.subject_info)
    .bind(a.ticket)
    .bind(&levels)
    .bind(a.expires_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Advisory lock key for one (application, subject): serializes their effects across replicas.
pub fn lock_key(application: &str, subject: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("accessgov-grant\0{application}\0{subject}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Takes the subject locks of `keys` ([`lock_key`]) for the rest of the
/// transaction, in ascending order, in one statement. Every writer of the
/// ledger takes its subject locks this way, and before the audit-chain lock,
/// so two writers never wait on each other in a cycle.
pub async fn lock_all(tx: &mut PgConnection, mut keys: Vec<i64>) -> Result<(), sqlx::Error> {
    keys.sort_unstable();
    keys.dedup();
    if !keys.is_empty() {
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS ordered")
            .bind(&keys)
            .execute(tx)
            .await?;
    }
    Ok(())
}

/// Loads the ledger of one (application, subject).
pub async fn load(tx: &mut PgConnection, application: &str, subject: &str) -> Result<Ledger, sqlx::Error> {
    let mut all = load_many(tx, &[(application, subject)]).await?;
    Ok(all.remove(&(application.to_owned(), subject.to_owned())).unwrap_or_default())
}

/// Loads the ledgers of several (application, subject) pairs in one query. A
/// pair with nothing recorded is absent from the map (its ledger is empty).
pub async fn load_many(
    tx: &mut PgConnection,
    keys: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), Ledger>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        application: String,
        subject: String,
        target: String,
        revoked_through: Option<DateTime<Utc>>,
        subject_info: Option<serde_json::Value>,
        ticket: Option<String>,
        access_level: Option<String>,
        event_at: Option<DateTime<Utc>>,
    }
    let mut out: std::collections::HashMap<(String, String), Ledger> = Default::default();
    if keys.is_empty() {
        return Ok(out);
    }
    let apps: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let subjects: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.application, g.subject, g.target, g.revoked_through, g.subject_info, h.ticket, h.access_level, h.event_at \
         FROM access_grants g LEFT JOIN grant_holds h ON h.grant_id = g.id \
         WHERE (g.application, g.subject) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) \
         ORDER BY g.application, g.subject, g.target, h.event_at",
    )
    .bind(&apps)
    .bind(&subjects)
    .fetch_all(tx)
    .await?;
    for Row { application, subject, target, revoked_through, subject_info, ticket, access_level, event_at } in rows {
        let st = out.entry((application, subject)).or_default().entry(target).or_default();
        st.revoked_through = revoked_through;
        st.identity = subject_info.and_then(|v| serde_json::from_value(v).ok());
        if let (Some(ticket), Some(access_level), Some(event_at)) = (ticket, access_level, event_at) {
            st.holds.push(Hold { ticket, access_level, event_at });
        }
    }
    Ok(out)
}

/// What the applier needs to know about the event.
pub struct Applied<'a> {
    pub application: &'a str,
    pub subject: &'a str,
    pub subject_info: Option<&'a serde_json::Value>,
    pub ticket: &'a str,
    pub event_id: Uuid,
    pub event_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Writes the plan's changes (after the provider calls succeeded), then
/// recomputes each touched row's state from its remaining holds.
pub async fn apply(
    tx: &mut PgConnection,
    a: &Applied<'_>,
    changes: &[Change],
    revoked: &[String],
) -> Result<(), sqlx::Error> {
    if let Some(adds) = only_new_holds(changes, revoked) {
        return add_holds(tx, a, &adds).await;
    }
    let mut touched: Vec<&str> = Vec::new();
    for c in changes {
        let target = match c {
            Change::AddHold { target, .. } | Change::RemoveHold { target, .. } | Change::RevokedThrough { target } => {
                target
            }
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO access_grants (application, subject, target, state, last_event_id, last_event_at, subject_info) \
             VALUES ($1, $2, $3, 'revoked', $4, $5, $6) \
             ON CONFLICT (application, subject, target) DO UPDATE SET last_event_id = $4, last_event_at = $5, \
               updated_at = now() \
             RETURNING id",
        )
        .bind(a.application)
        .bind(a.subject)
        .bind(target)
        .bind(a.event_id)
        .bind(a.event_at)
        .bind(a.subject_info)
        .fetch_one(&mut *tx)
        .await?;
        match c {
            Change::AddHold { access_level, .. } => {
                // The first hold provisions the membership: it is now granted to this identity.
                sqlx::query(
                    "UPDATE access_grants g SET subject_info = $2 WHERE id = $1 \
                     AND NOT EXISTS (SELECT 1 FROM grant_holds h WHERE h.grant_id = g.id)",
                )
                .bind(id)
                .bind(a.subject_info)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO grant_holds (grant_id, ticket, access_level, event_id, event_at, expires_at, identity) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (grant_id, ticket) DO NOTHING",
                )
                .bind(id)
                .bind(a.ticket)
                .bind(access_level)
                .bind(a.event_id)
                .bind(a.event_at)
                .bind(a.expires_at)
                .bind(a.subject_info)
                .execute(&mut *tx)
                .await?;
            }
            Change::RemoveHold { ticket, .. } => {
                sqlx::query("DELETE FROM grant_holds WHERE grant_id = $1 AND ticket = $2")
                    .bind(id)
                    .bind(ticket)
                    .execute(&mut *tx)
                    .await?;
            }
            Change::RevokedThrough { .. } => {
                sqlx::query("UPDATE access_grants SET revoked_through = GREATEST(revoked_through, $2) WHERE id = $1")
                    .bind(id)
                    .bind(a.event_at)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !touched.contains(&target.as_str()) {
            touched.push(target);
        }
    }
    for target in touched {
        let was_revoked = revoked.iter().any(|r| r == target);
        sqlx::query(
            "UPDATE access_grants g SET \
               state = CASE WHEN EXISTS (SELECT 1 FROM grant_holds h WHERE h.grant_id = g.id) THEN 'active' ELSE 'revoked' END, \
               granted_at = CASE WHEN g.state = 'revoked' AND EXISTS (SELECT 1 FROM grant_holds h WHERE h.grant_id = g.id) THEN now() ELSE g.granted_at END, \
               revoked_at = CASE WHEN $4 THEN now() ELSE g.revoked_at END \
             WHERE application = $1 AND subject = $2 AND target = $3",
        )
        .bind(a.application)
        .bind(a.subject)
        .bind(target)
        .bind(was_revoked)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// What a decision asks of the ledger, when it changes access (the worker and
/// the replay preview share this mapping).
pub struct Effect<'a> {
    pub application: &'a str,
    pub subject: &'a Person,
    pub access_level: &'a str,
    pub request: Request<'a>,
    pub max_duration: Option<Duration>,
    /// How long a grant lasts (the decision's `lasts`).
    pub lasts: Option<Duration>,
}

pub fn effect(decision: &Decision) -> Option<Effect<'_>> {
    match decision {
        Decision::Grant { application, access_level, targets, subject, max_duration, lasts, .. } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Grant { targets, access_level },
            max_duration: *max_duration,
            lasts: *lasts,
        }),
        Decision::Change { application, access_level, targets, subject, max_duration, lasts, .. } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Change { targets, access_level },
            max_duration: *max_duration,
            lasts: *lasts,
        }),
        Decision::Revoke { application, access_level, targets, subject, scope } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Revoke { targets, scope: *scope },
            max_duration: None,
            lasts: None,
        }),
        Decision::Repair { application, access_level, targets, subject } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Repair { targets },
            max_duration: None,
            lasts: None,
        }),
        Decision::Remove { application, access_level, targets, subject } => Some(Effect {
            application,
            subject,
            access_level,
            request: Request::Remove { targets },
            max_duration: None,
            lasts: None,
        }),
        Decision::NoAction { .. } | Decision::Refused { .. } => None,
    }
}

/// How long a grant lasts: the ticket's requested duration (`7d`), capped by the
/// rule's `max_duration`, and always by [`crate::config::duration::MAX`]; either
/// alone when only one is set. A requested value that cannot be read (not a
/// duration, an overflowing number) is an error: the request is refused rather
/// than silently given the rule's maximum or no end at all.
pub fn effective_duration(requested: Option<&str>, max: Option<Duration>) -> Result<Option<Duration>, String> {
    let requested = match requested.map(str::trim).filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(crate::config::duration::parse_capped(r)?).filter(|d| !d.is_zero()),
    };
    let lasts = match (requested, max) {
        (Some(r), Some(m)) => Some(r.min(m)),
        (r, m) => r.or(m),
    };
    Ok(lasts.map(|d| d.min(crate::config::duration::MAX)))
}

/// When a grant made at `now` that lasts `lasts` expires; `None` when it does not
/// (or, impossibly after the cap, when the date would overflow).
pub fn expires_at(now: DateTime<Utc>, lasts: Option<Duration>) -> Option<DateTime<Utc>> {
    let lasts = chrono::Duration::from_std(lasts?.min(crate::config::duration::MAX)).ok()?;
    now.checked_add_signed(lasts)
}

/// One ticket's expired holds on one (application, subject).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub ticket: String,
    pub application: String,
    pub subject: String,
    pub subject_info: Option<serde_json::Value>,
    pub access_level: String,
    pub expires_at: DateTime<Utc>,
}

/// Due (ticket, application, subject) groups, oldest expiry first.
pub async fn due_expiries(
    pool: &sqlx::PgPool,
    live_applications: &[String],
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.ticket, g.application, g.subject, \
                (array_agg(g.subject_info))[1] AS subject_info, \
                min(h.access_level) AS access_level, max(h.expires_at) AS expires_at \
         FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
         WHERE h.expires_at <= now() AND h.expiry_enqueued_at IS NULL AND g.application = ANY($1) \
         GROUP BY h.ticket, g.application, g.subject \
         ORDER BY min(h.expires_at), h.ticket \
         LIMIT $2",
    )
    .bind(live_applications)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A ticket whose time-bound holds expire soon, to be told once.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Notice {
    pub ticket: String,
    pub application: String,
    pub targets: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// Claims the (ticket, application) groups of live applications with a hold
/// that expires within `within` and was not noticed yet: marks them noticed and
/// returns them, so that concurrent sweepers never tell a ticket twice. A
/// notice that could not be posted is given back with [`unclaim_notice`].
pub async fn claim_notices(
    pool: &sqlx::PgPool,
    live_applications: &[String],
    within: std::time::Duration,
    limit: i64,
) -> Result<Vec<Notice>, sqlx::Error> {
    let within = chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
    let until = Utc::now().checked_add_signed(within).unwrap_or(DateTime::<Utc>::MAX_UTC);
    sqlx::query_as(
        "WITH due AS ( \
           SELECT h.grant_id, h.ticket FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
           WHERE h.expires_at > now() AND h.expires_at <= $2 AND h.expiry_notice_at IS NULL \
             AND g.application = ANY($1) \
           ORDER BY h.expires_at LIMIT $3 FOR UPDATE OF h SKIP LOCKED), \
         marked AS ( \
           UPDATE grant_holds h SET expiry_notice_at = now() FROM due \
           WHERE h.grant_id = due.grant_id AND h.ticket = due.ticket \
           RETURNING h.ticket, h.grant_id, h.expires_at) \
         SELECT m.ticket, g.application, array_agg(g.target ORDER BY g.target) AS targets, \
                min(m.expires_at) AS expires_at \
         FROM marked m JOIN access_grants g ON g.id = m.grant_id \
         GROUP BY m.ticket, g.application ORDER BY min(m.expires_at), m.ticket",
    )
    .bind(live_applications)
    .bind(until)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Gives a claimed notice back (its comment could not be posted): the next sweep tries again.
pub async fn unclaim_notice(pool: &sqlx::PgPool, n: &Notice) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE grant_holds h SET expiry_notice_at = NULL FROM access_grants g \
         WHERE h.grant_id = g.id AND h.ticket = $1 AND g.application = $2 AND g.target = ANY($3)",
    )
    .bind(&n.ticket)
    .bind(&n.application)
    .bind(&n.targets)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the expired holds of `d` as handed to the pipeline (its expiry event
/// is published), so that the next sweep does not publish it again.
pub async fn mark_expiry_enqueued(pool: &sqlx::PgPool, d: &Due) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE grant_holds h SET expiry_enqueued_at = now() FROM access_grants g \
         WHERE h.grant_id = g.id AND h.ticket = $1 AND g.application = $2 AND g.subject = $3 \
           AND h.expires_at <= $4 AND h.expiry_enqueued_at IS NULL",
    )
    .bind(&d.ticket)
    .bind(&d.application)
    .bind(&d.subject)
    .bind(d.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
