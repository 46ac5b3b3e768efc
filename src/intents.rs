//! The intents store: committed provider calls to make, claimed under a lease,
//! executed with no transaction open, resolved in a transaction of their own.
//! See `migrations/20261203200000_intents.sql` for the model.
//!
//! Order: per key (application, identity, target) only the oldest open intent
//! can be claimed, so effects run in the order their events were decided, on
//! every replica. Crash safety: a claim is a lease; a worker that dies with an
//! intent `running` leaves it to be claimed again once the lease ran out, and
//! grants and revokes are idempotent at the provider ("already a member").

use crate::audit::AuditEntry;
use crate::connectors::Subject;
use crate::grants::ProviderOp;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// One intent as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Intent {
    pub id: i64,
    pub event_id: Uuid,
    pub ticket: String,
    pub application: String,
    pub subject: String,
    pub identity: Value,
    pub identity_key: String,
    pub target: String,
    pub access_level: String,
    pub op: String,
    pub state: String,
    pub attempts: i32,
    pub source: String,
}

impl Intent {
    /// The identity the call addresses.
    pub fn subject(&self) -> Subject {
        serde_json::from_value(self.identity.clone()).unwrap_or_else(|_| Subject {
            account_id: self.subject.clone(),
            email: None,
            display_name: None,
            fields: Default::default(),
        })
    }

    pub fn provider_op(&self) -> ProviderOp {
        if self.op == "grant" {
            ProviderOp::Grant(self.target.clone())
        } else {
            ProviderOp::Revoke(self.target.clone())
        }
    }

    /// An audit row about this intent, attributed to its event.
    pub fn audit(&self, action: &str, outcome: &str, detail: Value) -> AuditEntry {
        let mut e = AuditEntry::new(action, outcome);
        e.event_id = Some(self.event_id);
        e.ticket = Some(self.ticket.clone());
        e.application = Some(self.application.clone());
        e.subject = Some(self.subject.clone());
        e.target = Some(self.target.clone());
        e.detail = detail;
        e
    }
}

/// The ordering key of a provider identity: the JSM account plus the
/// `subject_field` values (two logins of one person are two identities).
pub fn identity_key(s: &Subject) -> String {
    format!("{}\u{1f}{}", s.account_id, serde_json::to_string(&s.fields).unwrap_or_default())
}

/// What the decision asks for one provider call.
pub struct NewIntent<'a> {
    pub event_id: Uuid,
    pub ticket: &'a str,
    pub application: &'a str,
    pub subject: &'a str,
    pub identity: &'a Subject,
    pub access_level: &'a str,
    pub op: &'a ProviderOp,
    pub undo: Value,
    pub source: &'a str,
}

/// What recording an intent did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A new pending intent.
    Pending(i64),
    /// It met a still-pending opposite intent on the same key (a revoke catching
    /// its grant before it ran, or the reverse): that one is cancelled and no
    /// call is needed for either. The cancelled intent is returned for its audit row.
    Cancelled(Box<Intent>),
}

/// Records an intent in the decision's transaction (which holds the subject lock).
pub async fn record(tx: &mut PgConnection, n: &NewIntent<'_>) -> Result<Recorded, sqlx::Error> {
    let (op, target) = match n.op {
        ProviderOp::Grant(t) => ("grant", t),
        ProviderOp::Revoke(t) => ("revoke", t),
    };
    let key = identity_key(n.identity);
    // Usually nothing opposite is pending on the key: insert in one statement.
    // (Only this transaction records on the key: it holds the subject lock.)
    if let Some(id) = insert(&mut *tx, n, op, target, &key, true).await? {
        return Ok(Recorded::Pending(id));
    }
    let last: Option<Intent> = sqlx::query_as(
        "SELECT id, event_id, ticket, application, subject, identity, identity_key, target, access_level, op, state, \
                attempts, source \
         FROM intents WHERE application = $1 AND identity_key = $2 AND target = $3 AND state IN ('pending', 'running') \
         ORDER BY id DESC LIMIT 1 FOR UPDATE",
    )
    .bind(n.application)
    .bind(&key)
    .bind(target)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(last) = last
        && last.state == "pending"
        && last.op != op
    {
        sqlx::query(
            "UPDATE intents SET state = 'cancelled', result = $2, updated_at = now() WHERE id = $1 AND state = 'pending'",
        )
        .bind(last.id)
        .bind(format!("cancelled before it ran by the {op} of event {}", n.event_id))
        .execute(&mut *tx)
        .await?;
        return Ok(Recorded::Cancelled(Box::new(last)));
    }
    // The opposite intent was claimed meanwhile (it runs first): ours queues behind it.
    let id = insert(&mut *tx, n, op, target, &key, false).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(Recorded::Pending(id))
}

/// Inserts a pending intent; with `unless_opposite_pending`, only when no
/// opposite intent is pending on its key (`None` then).
async fn insert(
    tx: &mut PgConnection,
    n: &NewIntent<'_>,
    op: &str,
    target: &str,
    key: &str,
    unless_opposite_pending: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let identity = serde_json::to_value(n.identity).unwrap_or(Value::Null);
    sqlx::query_scalar(
        "INSERT INTO intents (event_id, ticket, application, subject, identity, identity_key, target, access_level, \
                              op, state, undo, source) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11 \
         WHERE NOT $12 OR NOT EXISTS (SELECT 1 FROM intents WHERE application = $3 AND identity_key = $6 \
                                      AND target = $7 AND state = 'pending' AND op <> $9) \
         RETURNING id",
    )
    .bind(n.event_id)
    .bind(n.ticket)
    .bind(n.application)
    .bind(n.subject)
    .bind(&identity)
    .bind(key)
    .bind(target)
    .bind(n.access_level)
    .bind(op)
    .bind(&n.undo)
    .bind(n.source)
    .bind(unless_opposite_pending)
    .fetch_optional(tx)
    .await
}

const COLUMNS: &str = "id, event_id, ticket, application, subject, identity, identity_key, target, access_level, op, \
                       state, attempts, source";

/// Provider calls decided and not yet done (`pending` or `running`).
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM intents WHERE state IN ('pending', 'running')").fetch_one(pool).await
}

/// The open intents of the events, oldest first.
pub async fn open_for_events(pool: &PgPool, event_ids: &[Uuid]) -> Result<Vec<Intent>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM intents WHERE event_id = ANY($1) AND state IN ('pending', 'running') ORDER BY id"
    )))
    .bind(event_ids)
    .fetch_all(pool)
    .await
}

/// The intents of each event's current run, in order (for its summary): a
/// replayed event is decided afresh, and the intents of the run that died
/// before it (all `dead`, every open one abandoned at once) are not its own.
pub async fn of_current_runs(pool: &PgPool, event_ids: &[Uuid]) -> Result<Vec<Intent>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM intents i WHERE event_id = ANY($1) \
           AND id > COALESCE((SELECT max(d.id) FROM intents d WHERE d.event_id = i.event_id AND d.state = 'dead'), 0) \
         ORDER BY id"
    )))
    .bind(event_ids)
    .fetch_all(pool)
    .await
}

/// The state of one intent.
pub async fn state(pool: &PgPool, id: i64) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM intents WHERE id = $1").bind(id).fetch_one(pool).await
}

/// Claims, for each intent given, the oldest open intent of its key (application,
/// identity, target) when it is claimable: pending, or running under a lease
/// that ran out (its worker died). A key whose intent another worker's lease
/// holds gets nothing. One statement; the keys must be distinct. Returns the
/// claimed intents (in no particular order).
pub async fn claim_all(pool: &PgPool, of: &[&Intent], lease: Duration) -> Result<Vec<Intent>, sqlx::Error> {
    if of.is_empty() {
        return Ok(Vec::new());
    }
    let apps: Vec<&str> = of.iter().map(|i| i.application.as_str()).collect();
    let keys: Vec<&str> = of.iter().map(|i| i.identity_key.as_str()).collect();
    let targets: Vec<&str> = of.iter().map(|i| i.target.as_str()).collect();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE intents SET state = 'running', lease_until = now() + $4 * interval '1 millisecond', \
                attempts = attempts + 1, updated_at = now() \
         WHERE id IN (SELECT o.id FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(application, identity_key, target) \
                      CROSS JOIN LATERAL (SELECT id FROM intents i \
                          WHERE i.application = k.application AND i.identity_key = k.identity_key \
                            AND i.target = k.target AND i.state IN ('pending', 'running') \
                          ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) AS o) \
           AND (state = 'pending' OR lease_until < now()) \
         RETURNING {COLUMNS}"
    )))
    .bind(&apps)
    .bind(&keys)
    .bind(&targets)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// Records successful calls in the caller's transaction: each intent is done,
/// and its audit row is returned for the caller to chain with the rest. A call
/// whose lease ran out and was taken over is left to the other worker, which
/// records the result (its row is dropped here).
pub async fn succeed_all(
    tx: &mut PgConnection,
    done: Vec<(Intent, &'static str, AuditEntry)>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = done.iter().map(|(i, _, _)| i.id).collect();
    let results: Vec<&str> = done.iter().map(|(_, r, _)| *r).collect();
    let ours: Vec<i64> = sqlx::query_scalar(
        "UPDATE intents i SET state = 'done', result = r.result, lease_until = NULL, updated_at = now() \
         FROM UNNEST($1::bigint[], $2::text[]) AS r(id, result) \
         WHERE i.id = r.id AND i.state = 'running' RETURNING i.id",
    )
    .bind(&ids)
    .bind(&results)
    .fetch_all(&mut *tx)
    .await?;
    Ok(done.into_iter().filter(|(i, _, _)| ours.contains(&i.id)).map(|(_, _, row)| row).collect())
}

/// Gives a failed claim back (pending again) with the error, for a later try.
pub async fn release(pool: &PgPool, intent: &Intent, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE intents SET state = 'pending', lease_until = NULL, last_error = $2, updated_at = now() \
         WHERE id = $1 AND state = 'running'",
    )
    .bind(intent.id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The event cannot complete (dead-lettered): its open intents are `dead` and
/// the ledger changes they carried are undone, so that the ledger keeps saying
/// what the provider holds. Returns the audit rows (one per abandoned intent).
pub async fn abandon(tx: &mut PgConnection, event_id: Uuid) -> Result<Vec<AuditEntry>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Dead {
        id: i64,
        application: String,
        subject: String,
        target: String,
        op: String,
        undo: Value,
    }
    // The ledger is changed under its subject locks, taken in the batch's order
    // (sorted keys) before the audit-chain lock the caller takes next.
    let subjects: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT application, subject FROM intents WHERE event_id = $1 AND state IN ('pending', 'running')",
    )
    .bind(event_id)
    .fetch_all(&mut *tx)
    .await?;
    crate::grants::lock_all(&mut *tx, subjects.iter().map(|(a, s)| crate::grants::lock_key(a, s)).collect()).await?;
    let dead: Vec<Dead> = sqlx::query_as(
        "UPDATE intents SET state = 'dead', lease_until = NULL, updated_at = now() \
         WHERE event_id = $1 AND state IN ('pending', 'running') \
         RETURNING id, application, subject, target, op, undo",
    )
    .bind(event_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows = Vec::new();
    for d in dead {
        for step in d.undo.as_array().into_iter().flatten() {
            undo_step(tx, &d.application, &d.subject, &d.target, step).await?;
        }
        sqlx::query(
            "UPDATE access_grants g SET \
               state = CASE WHEN EXISTS (SELECT 1 FROM grant_holds h WHERE h.grant_id = g.id) THEN 'active' ELSE 'revoked' END, \
               updated_at = now() \
             WHERE application = $1 AND subject = $2 AND target = $3",
        )
        .bind(&d.application)
        .bind(&d.subject)
        .bind(&d.target)
        .execute(&mut *tx)
        .await?;
        let mut e = AuditEntry::new("intent_abandoned", "failed");
        e.event_id = Some(event_id);
        e.application = Some(d.application);
        e.subject = Some(d.subject);
        e.target = Some(d.target);
        e.detail = json!({"intent": d.id, "op": d.op, "ledger_undone": d.undo});
        rows.push(e);
    }
    end_run(&mut *tx, event_id).await?;
    Ok(rows)
}

async fn undo_step(
    tx: &mut PgConnection,
    application: &str,
    subject: &str,
    target: &str,
    step: &Value,
) -> Result<(), sqlx::Error> {
    match step.get("kind").and_then(Value::as_str) {
        Some("remove_hold") => {
            sqlx::query(
                "DELETE FROM grant_holds h USING access_grants g WHERE h.grant_id = g.id \
                 AND g.application = $1 AND g.subject = $2 AND g.target = $3 AND h.ticket = $4",
            )
            .bind(application)
            .bind(subject)
            .bind(target)
            .bind(step.get("ticket").and_then(Value::as_str).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        }
        // An expired hold comes back marked as enqueued: its dead letter, not the
        // sweeper, decides what happens next.
        Some("restore_hold") => {
            sqlx::query(
                "INSERT INTO grant_holds (grant_id, ticket, access_level, event_id, event_at, held_since, expires_at, \
                                          identity, expiry_enqueued_at) \
                 SELECT g.id, r.ticket, r.access_level, r.event_id, r.event_at, r.held_since, r.expires_at, r.identity, \
                        CASE WHEN r.expires_at <= now() THEN now() ELSE r.expiry_enqueued_at END \
                 FROM access_grants g, jsonb_populate_record(NULL::grant_holds, $4) r \
                 WHERE g.application = $1 AND g.subject = $2 AND g.target = $3 \
                 ON CONFLICT (grant_id, ticket) DO NOTHING",
            )
            .bind(application)
            .bind(subject)
            .bind(target)
            .bind(step.get("hold"))
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The holds of `tickets` on one target as JSON rows, to restore if a revoke dies.
pub async fn holds_json(
    tx: &mut PgConnection,
    application: &str,
    subject: &str,
    target: &str,
    tickets: &[String],
) -> Result<Vec<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT to_jsonb(h) FROM grant_holds h JOIN access_grants g ON g.id = h.grant_id \
         WHERE g.application = $1 AND g.subject = $2 AND g.target = $3 AND h.ticket = ANY($4)",
    )
    .bind(application)
    .bind(subject)
    .bind(target)
    .bind(tickets)
    .fetch_all(tx)
    .await
}

/// How an event's run begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Decide it now (the caller's transaction now holds its run).
    New,
    /// Its decision is committed; resume its intents.
    Resume,
    /// It completed already (a duplicate): no run is taken.
    Processed,
}

/// Takes the event's run in the decision's transaction, unless the event is
/// processed or a run exists; one statement. A concurrent delivery of the same
/// event waits on the run's key until this transaction ends, then resumes.
pub async fn begin(tx: &mut PgConnection, event_id: Uuid, ticket: &str) -> Result<Begin, sqlx::Error> {
    let (processed, new): (bool, bool) = sqlx::query_as(
        "WITH p AS (SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1) AS done), \
              ins AS (INSERT INTO event_runs (event_id, ticket) SELECT $1, $2 FROM p WHERE NOT p.done \
                      ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT (SELECT done FROM p), EXISTS (SELECT 1 FROM ins)",
    )
    .bind(event_id)
    .bind(ticket)
    .fetch_one(tx)
    .await?;
    Ok(match (processed, new) {
        (true, _) => Begin::Processed,
        (false, true) => Begin::New,
        (false, false) => Begin::Resume,
    })
}

/// [`begin`] for a batch of distinct events, in one statement: what each one's
/// run is, in the order given. The caller passes each event id once.
pub async fn begin_all(tx: &mut PgConnection, events: &[(Uuid, &str)]) -> Result<Vec<Begin>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
    let tickets: Vec<&str> = events.iter().map(|e| e.1).collect();
    let rows: Vec<(Uuid, bool, bool)> = sqlx::query_as(
        "WITH k AS (SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS k(event_id, ticket)), \
              p AS (SELECT k.event_id, k.ticket, \
                           EXISTS (SELECT 1 FROM processed_events e WHERE e.event_id = k.event_id) AS done FROM k), \
              ins AS (INSERT INTO event_runs (event_id, ticket) SELECT event_id, ticket FROM p WHERE NOT done \
                      ORDER BY event_id ON CONFLICT DO NOTHING RETURNING event_id) \
         SELECT p.event_id, p.done, EXISTS (SELECT 1 FROM ins WHERE ins.event_id = p.event_id) FROM p",
    )
    .bind(&ids)
    .bind(&tickets)
    .fetch_all(tx)
    .await?;
    let by_id: std::collections::HashMap<Uuid, (bool, bool)> =
        rows.into_iter().map(|(id, p, n)| (id, (p, n))).collect();
    Ok(ids
        .iter()
        .map(|id| match by_id.get(id).copied().unwrap_or((false, false)) {
            (true, _) => Begin::Processed,
            (false, true) => Begin::New,
            (false, false) => Begin::Resume,
        })
        .collect())
}

/// Closes the event's run (completed, or abandoned to the dead letters).
pub async fn end_run(tx: &mut PgConnection, event_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM event_runs WHERE event_id = $1").bind(event_id).execute(tx).await?;
    Ok(())
}

/// Whether the event's decision is committed and its run not finished.
pub async fn running<'c, E: sqlx::PgExecutor<'c>>(db: E, event_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM event_runs WHERE event_id = $1)")
        .bind(event_id)
        .fetch_one(db)
        .await
}
