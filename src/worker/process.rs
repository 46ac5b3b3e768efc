//! One delivery, start to finish, in three steps with no transaction open
//! across a provider call:
//!
//! 1. [`prepare`]: decode and decide (with the JSM reads the decision needs),
//!    no transaction open.
//! 2. [`record_batch`]: one transaction per batch of deliveries. Subject locks
//!    in one sorted order, then per event: dedupe claim, the pure
//!    [`crate::pipeline::plan`] against the ledger, the ledger change (holds),
//!    one committed intent per provider call; then the audit rows of the whole
//!    batch under one chain lock, one COMMIT.
//! 3. [`finish`] / `execute`: each intent is claimed under a lease, its call
//!    made with no transaction open, its result and audit row committed; then
//!    the event completes (its dedupe row) and the ticket is told.
//!
//! A failed call releases its intent and records the failure in a transaction
//! of its own; the message goes to the retry ladder and a redelivery resumes the
//! event's intents instead of deciding again. An event that goes to the dead
//! letters has its open intents abandoned and their ledger changes undone.
//! A crash anywhere leaves committed intents that the next delivery (or, after
//! the lease, another worker) resumes; provider calls are idempotent.

use super::WorkerContext;
use super::retry::{self, Next};
use crate::audit::{self, AuditEntry};
use crate::connectors::{ConnectorError, Subject, Target};
use crate::event::{AccessEvent, Person};
use crate::grants::{self, Note, ProviderOp, effect};
use crate::pipeline::Step;
use crate::rules::{self, Decision};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded for the first time; the label says how it ended.
    Recorded(&'static str),
    /// Already processed; nothing done again.
    Duplicate,
    /// Not an access event we can read.
    Poison(String),
    /// A provider call failed; the failure is audited and `next` says where the message goes.
    Failed { error: ConnectorError, next: Next },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Recorded(l) => l,
            Self::Duplicate => "duplicate",
            Self::Poison(_) => "poison",
            Self::Failed { next: Next::DeadLetter, .. } => "dead_lettered",
            Self::Failed { .. } => "retry_scheduled",
        }
    }
}

/// Processes one message body delivered for the `attempt`-th time (0 = first),
/// in a batch of its own. `Err` means infrastructure trouble (the database):
/// the caller retries later.
pub async fn process_one(ctx: &WorkerContext, body: &[u8], attempt: u32) -> Result<Outcome, sqlx::Error> {
    let p = match prepare(ctx, body, attempt).await? {
        Staged::Done(outcome) => return Ok(outcome),
        Staged::Ready(p) => p,
    };
    let after = record_batch(ctx, std::slice::from_ref(&p)).await?.remove(0);
    finish(ctx, &p, after).await
}

/// A delivery decided outside any transaction, ready to be recorded.
#[derive(Clone)]
pub struct Prepared {
    event: AccessEvent,
    attempt: u32,
    decision: Decision,
}

impl Prepared {
    pub fn event(&self) -> &AccessEvent {
        &self.event
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// What preparing a delivery gave.
pub enum Staged {
    /// Finished without a batch: poison, a resumed run, a recorded failure.
    Done(Outcome),
    Ready(Box<Prepared>),
}

/// What the batch transaction made of one event, finished after COMMIT.
#[derive(Clone)]
pub enum After {
    /// Nothing left but telling the ticket.
    Done {
        label: &'static str,
        note: Option<WriteBack>,
    },
    Duplicate,
    /// Its intents are committed: run them.
    Execute,
}

/// Decodes and decides a delivery, with the I/O the decision needs (approver
/// groups and approval verification through JSM, the ticket's last revoke), and
/// no transaction open.
pub async fn prepare(ctx: &WorkerContext, body: &[u8], attempt: u32) -> Result<Staged, sqlx::Error> {
    let event = match AccessEvent::decode(body) {
        Ok(e) => e,
        Err(e) => return Ok(Staged::Done(Outcome::Poison(e.to_string()))),
    };
    let (running, last_revoke_at) = crate::progress::run_and_last_revoke(&ctx.pool, &event).await?;
    prepare_decoded(ctx, event, attempt, running, last_revoke_at).await
}

/// [`prepare`] for a decoded event, given whether its run is open and when its
/// ticket's access was last taken away (read for the whole batch at once by
/// [`crate::progress::runs_and_last_revokes`]).
pub async fn prepare_decoded(
    ctx: &WorkerContext,
    event: AccessEvent,
    attempt: u32,
    running: bool,
    last_revoke_at: Option<DateTime<Utc>>,
) -> Result<Staged, sqlx::Error> {
    // A new ticket or an approval stage is routed, not decided.
    if event.app_status.is_routing() {
        return Ok(Staged::Done(super::route::route(ctx, &event, attempt).await?));
    }
    // An approved onboarding fans out into one grant event per item of its role.
    if event.action == crate::config::RequestAction::Onboard
        && event.source != crate::event::Source::Onboard
        && event.app_status == crate::config::AppStatus::Approved
    {
        return Ok(Staged::Done(super::onboard::start(ctx, &event, attempt).await?));
    }
    // An approved offboarding fans out into one revoke event per granting ticket and application.
    if event.action == crate::config::RequestAction::Offboard
        && event.source != crate::event::Source::Offboard
        && event.app_status == crate::config::AppStatus::Approved
    {
        return Ok(Staged::Done(super::offboard::start(ctx, &event, attempt).await?));
    }
    // Its decision is committed already (a crash, a retry): finish its intents.
    if running {
        return Ok(Staged::Done(execute(ctx, &event, attempt).await?));
    }
    // A multi-stage rule is decided on the live JSM approvals of every stage.
    let live_approvals = match ctx.stage_approvals(&event).await {
        Ok(live) => live,
        Err(e) => {
            let rows = if attempt == 0 { vec![received_row(&event)] } else { Vec::new() };
            let what = json!({"op": "jsm_approvals", "why": "check the rule's approval stages"});
            let failed = record_failure(ctx, &event, rows, attempt, jsm_error(e), what, event.application.as_deref());
            return Ok(Staged::Done(failed.await?));
        }
    };
    let approver_groups = match ctx.approver_groups(&event, live_approvals.as_deref()).await {
        Ok(groups) => groups,
        Err(e) => {
            let rows = if attempt == 0 { vec![received_row(&event)] } else { Vec::new() };
            let what = json!({"op": "jsm_user_groups", "why": "resolve group: approvers"});
            let failed = record_failure(ctx, &event, rows, attempt, jsm_error(e), what, event.application.as_deref());
            return Ok(Staged::Done(failed.await?));
        }
    };
    let last_revoke_at = match event.app_status {
        crate::config::AppStatus::Approved => last_revoke_at,
        _ => None,
    };
    let facts = rules::Facts { approver_groups, verify_approval: ctx.verify_approval, last_revoke_at, live_approvals };
    let mut decision = rules::decide(&event, &ctx.config, &facts);
    // An onboarding's items were confirmed once, as the onboarding, before they
    // were published: the ticket may have moved on since, which must not refuse them.
    if ctx.verify_approval
        && event.source != crate::event::Source::Onboard
        && let Decision::Grant { approver, .. } | Decision::Change { approver, .. } = &decision
    {
        match ctx.verify_approval(&event, approver, last_revoke_at).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => decision = Decision::Refused { reason: rules::Refusal::ApprovalNotConfirmed { reason } },
            Err(e) => {
                let mut rows = if attempt == 0 { vec![received_row(&event)] } else { Vec::new() };
                rows.extend(decided_rows(&event, &decision));
                let what = json!({"op": "jsm_verify_approval"});
                let app = event.application.as_deref();
                return Ok(Staged::Done(record_failure(ctx, &event, rows, attempt, jsm_error(e), what, app).await?));
            }
        }
    }
    Ok(Staged::Ready(Box::new(Prepared { event, attempt, decision })))
}

/// Records a batch of decided deliveries in ONE transaction: the subject locks
/// taken up front in one global order (so batches never deadlock), the audit
/// chain lock taken once, at the end, for every row of the batch; one COMMIT,
/// one WAL flush. Nothing here waits on a provider.
///
/// The statements are set-based: one claim, one read of the tickets' progress
/// and one of the subjects' ledgers, one progress write and one completion for
/// the events that share nothing with an earlier event of the batch. An event
/// that shares its id, its ticket or its (application, subject) with an earlier
/// one is recorded after it, on its own, so it sees what that one changed.
pub async fn record_batch(ctx: &WorkerContext, items: &[Box<Prepared>]) -> Result<Vec<After>, sqlx::Error> {
    use std::collections::HashSet;
    let mut tx = ctx.pool.begin().await?;
    let keys = items
        .iter()
        .filter_map(|p| effect(&p.decision).map(|e| grants::lock_key(e.application, &e.subject.account_id)))
        .collect();
    grants::lock_all(&mut tx, keys).await?;

    // Which events go together: the first to name an id, a ticket and a subject.
    let (mut ids, mut tickets, mut subjects) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut together = Vec::new();
    let mut alone = Vec::new();
    for (i, p) in items.iter().enumerate() {
        let subject = effect(&p.decision).map(|e| (e.application, e.subject.account_id.as_str()));
        let fresh = !ids.contains(&p.event.event_id)
            && !tickets.contains(p.event.ticket.key.as_str())
            && subject.is_none_or(|s| !subjects.contains(&s));
        ids.insert(p.event.event_id);
        tickets.insert(p.event.ticket.key.as_str());
        subjects.extend(subject);
        if fresh { together.push(i) } else { alone.push(i) }
    }

    let mut rows = Vec::new();
    let mut writes = Writes::default();
    let mut afters: Vec<Option<After>> = vec![None; items.len()];
    let claims: Vec<(Uuid, &str)> =
        together.iter().map(|&i| (items[i].event.event_id, items[i].event.ticket.key.as_str())).collect();
    let begun = crate::intents::begin_all(&mut tx, &claims).await?;
    // The facts of the new ones with an effect, read once for all of them.
    let acting: Vec<usize> = together
        .iter()
        .zip(&begun)
        .filter(|(i, b)| **b == crate::intents::Begin::New && effect(&items[**i].decision).is_some())
        .map(|(i, _)| *i)
        .collect();
    let ticket_keys: Vec<&str> = acting.iter().map(|&i| items[i].event.ticket.key.as_str()).collect();
    let mut last_at = crate::progress::last_events_at(&mut tx, &ticket_keys).await?;
    let ledger_keys: Vec<(&str, &str)> = acting
        .iter()
        .filter_map(|&i| effect(&items[i].decision).map(|e| (e.application, e.subject.account_id.as_str())))
        .collect();
    let mut ledgers = grants::load_many(&mut tx, &ledger_keys).await?;
    for (&i, begin) in together.iter().zip(begun) {
        let p = &items[i];
        let claim = note_claim(&mut tx, &p.event, p.attempt, begin, &mut rows).await?;
        let facts = match effect(&p.decision) {
            Some(eff) if claim == Claim::New => {
                let ledger = ledgers.remove(&(eff.application.to_owned(), eff.subject.account_id.clone()));
                let facts = crate::pipeline::Facts {
                    last_event_at: last_at.remove(&p.event.ticket.key),
                    ledger: ledger.unwrap_or_default(),
                    ..Default::default()
                };
                crate::pipeline::with_config_facts(&ctx.config, &p.event, &p.decision, facts)
            }
            _ => Default::default(),
        };
        afters[i] = Some(record(&mut tx, p, claim, facts, &mut rows, &mut writes).await?);
    }
    writes.flush(&mut tx).await?;
    for i in alone {
        let p = &items[i];
        let claim = claim(&mut tx, &p.event, p.attempt, &mut rows).await?;
        let facts = if claim == Claim::New {
            crate::pipeline::read_plan_facts(&mut tx, &ctx.config, &p.event, &p.decision, Default::default()).await?
        } else {
            Default::default()
        };
        afters[i] = Some(record(&mut tx, p, claim, facts, &mut rows, &mut writes).await?);
        writes.flush(&mut tx).await?;
    }
    audit::append(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(afters.into_iter().map(|a| a.expect("every item is recorded")).collect())
}

/// The progress writes of a batch's events, made together in [`Writes::flush`]
/// (before anything reads them again).
#[derive(Default)]
struct Writes {
    advances: Vec<(String, Uuid, DateTime<Utc>)>,
    revoked: Vec<(String, DateTime<Utc>)>,
    completes: Vec<(Uuid, String, String)>,
}

impl Writes {
    fn complete(&mut self, event: &AccessEvent) {
        self.completes.push((event.event_id, event.dedupe_key.clone(), event.ticket.key.clone()));
    }

    async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let advances: Vec<(&str, Uuid, DateTime<Utc>)> =
            self.advances.iter().map(|(t, id, at)| (t.as_str(), *id, *at)).collect();
        crate::progress::advance_all(&mut *tx, &advances).await?;
        for (ticket, at) in &self.revoked {
            crate::progress::mark_revoked(&mut *tx, ticket, *at).await?;
        }
        let ends: Vec<(Uuid, &str, &str)> =
            self.completes.iter().map(|(id, k, t)| (*id, k.as_str(), t.as_str())).collect();
        crate::progress::complete_all(&mut *tx, &ends).await?;
        *self = Self::default();
        Ok(())
    }
}

/// After COMMIT: tell the ticket, or run the event's intents.
pub async fn finish(ctx: &WorkerContext, p: &Prepared, after: After) -> Result<Outcome, sqlx::Error> {
    match after {
        After::Done { label, note } => {
            if let Some(note) = note {
                ctx.write_back(&p.event, note).await;
            }
            Ok(Outcome::Recorded(label))
        }
        After::Duplicate => {
            tracing::info!(event_id = %p.event.event_id, ticket = %p.event.ticket.key, "duplicate event; nothing done again");
            Ok(Outcome::Duplicate)
        }
        After::Execute => execute(ctx, &p.event, p.attempt).await,
    }
}

/// One event's share of the batch transaction (the caller holds its subject
/// lock, has claimed it and read its facts). Its progress writes go to `writes`.
async fn record(
    tx: &mut PgConnection,
    p: &Prepared,
    claim: Claim,
    facts: crate::pipeline::Facts,
    rows: &mut Vec<AuditEntry>,
    writes: &mut Writes,
) -> Result<After, sqlx::Error> {
    let (event, attempt, decision) = (&p.event, p.attempt, &p.decision);
    match claim {
        Claim::New => {}
        Claim::Duplicate => return Ok(After::Duplicate),
        Claim::Resume => return Ok(After::Execute),
    }
    if attempt == 0 {
        rows.push(received_row(event));
    }
    rows.extend(decided_rows(event, decision));

    // Effects for this (application, subject) are serialized across every worker
    // by the subject lock [`record_batch`] took. The claim took the event: it is
    // neither processed nor running for us.
    let (plan, dry_run) = match crate::pipeline::plan(event, decision, &facts) {
        Step::Duplicate | Step::Resume => unreachable!("cleared above"),
        Step::NoEffect { label } => {
            writes.complete(event);
            let note = match decision {
                Decision::Refused { reason } => {
                    WriteBack::Failure(format!("accessgov did not grant this request: {}.", reason.message()))
                }
                _ => WriteBack::Info(format!(
                    "accessgov recorded that this request was {:?}; nothing was changed.",
                    event.status.to
                )),
            };
            return Ok(After::Done { label, note: Some(note) });
        }
        Step::Superseded { newer_event_at } => {
            let mut e = entry(event, "superseded", "skipped");
            e.detail = json!({"reason": "a newer event of this ticket was already applied", "newer_event_at": newer_event_at, "event_at": event.occurred_at});
            rows.push(e);
            writes.complete(event);
            return Ok(After::Done { label: "superseded", note: None });
        }
        Step::Refused(reason) => {
            let mut e = entry(event, "denied_by_policy", "refused");
            if let rules::Refusal::IdentityMismatch { target, .. } = &reason {
                e.target = Some(target.clone());
            }
            e.detail = json!({"code": reason.code(), "reason": reason.message()});
            rows.push(e);
            writes.complete(event);
            let note = WriteBack::Failure(format!("accessgov refused this request: {}.", reason.message()));
            return Ok(After::Done { label: "denied_by_policy", note: Some(note) });
        }
        Step::Apply { plan, dry_run } => (plan, dry_run),
    };
    let eff = effect(decision).expect("an Apply step has an effect");
    let ledger = &facts.ledger;
    let subject = facts.subject.clone().unwrap_or_else(|| Subject::from_person(eff.subject));
    let subject_info = serde_json::to_value(&subject).ok();

    // The ledger mirrors what the providers really hold: a dry run records its
    // would-be calls in the audit trail but never takes or releases a hold, so
    // switching an application live later starts from the true state.
    let mut pending = 0;
    if dry_run {
        for op in &plan.ops {
            let mut e = entry(event, "dry_run", "skipped");
            e.target = Some(op_target(op).to_owned());
            e.detail = json!({"would": op, "reason": "application is in dry_run mode; no provider call made"});
            rows.push(e);
        }
    } else {
        // What to undo for each call's target if it can never be made: read before the change.
        let mut undo = std::collections::BTreeMap::new();
        let repair = matches!(eff.request, grants::Request::Repair { .. });
        for op in &plan.ops {
            let steps = match op {
                // A repair changed no hold: nothing to undo.
                ProviderOp::Grant(_) if repair => Vec::new(),
                ProviderOp::Grant(_) => vec![json!({"kind": "remove_hold", "ticket": event.ticket.key})],
                ProviderOp::Revoke(t) => {
                    let released: Vec<String> = plan
                        .changes
                        .iter()
                        .filter_map(|c| match c {
                            grants::Change::RemoveHold { target, ticket } if target == t => Some(ticket.clone()),
                            _ => None,
                        })
                        .collect();
                    crate::intents::holds_json(&mut *tx, eff.application, &eff.subject.account_id, t, &released)
                        .await?
                        .into_iter()
                        .map(|hold| json!({"kind": "restore_hold", "hold": hold}))
                        .collect()
                }
            };
            undo.insert(op_target(op).to_owned(), steps);
        }
        let expires_at = grants::expires_at(Utc::now(), eff.lasts);
        let revoked: Vec<String> =
            plan.ops.iter().filter(|o| matches!(o, ProviderOp::Revoke(_))).map(|o| op_target(o).to_owned()).collect();
        grants::apply(
            &mut *tx,
            &grants::Applied {
                application: eff.application,
                subject: &eff.subject.account_id,
                subject_info: subject_info.as_ref(),
                ticket: &event.ticket.key,
                event_id: event.event_id,
                event_at: event.occurred_at,
                expires_at,
            },
            &plan.changes,
            &revoked,
        )
        .await?;
        // One committed intent per provider call; the calls happen after COMMIT.
        let source = if event.source == crate::event::Source::Expiry { "expiry" } else { "event" };
        for op in &plan.ops {
            // A revoke (and a repair) addresses the identity the membership was granted to.
            let who = match op {
                ProviderOp::Grant(t) if repair => grants::revoke_identity(ledger, t, &subject),
                ProviderOp::Grant(_) => &subject,
                ProviderOp::Revoke(t) => grants::revoke_identity(ledger, t, &subject),
            };
            let intent = crate::intents::NewIntent {
                event_id: event.event_id,
                ticket: &event.ticket.key,
                application: eff.application,
                subject: &eff.subject.account_id,
                identity: who,
                access_level: eff.access_level,
                op,
                undo: json!(undo.remove(op_target(op)).unwrap_or_default()),
                source,
            };
            match crate::intents::record(&mut *tx, &intent).await? {
                crate::intents::Recorded::Pending(_) => pending += 1,
                crate::intents::Recorded::Cancelled(other) => {
                    let reason = "a still-pending opposite call on the same access was cancelled; neither is needed";
                    rows.push(other.audit(
                        "cancelled",
                        "skipped",
                        json!({"intent": other.id, "op": other.op, "cancelled_by": event.event_id, "reason": reason}),
                    ));
                    let mut e = entry(event, "cancelled", "skipped");
                    e.application = Some(eff.application.to_owned());
                    e.target = Some(op_target(op).to_owned());
                    e.detail =
                        json!({"op": op, "cancels_intent": other.id, "of_ticket": other.ticket, "reason": reason});
                    rows.push(e);
                }
            }
        }
    }
    // A repair is no event of its ticket: it must not make the ticket's own later events look old.
    if event.source != crate::event::Source::Reconcile {
        writes.advances.push((event.ticket.key.clone(), event.event_id, event.occurred_at));
    }
    if !dry_run && matches!(eff.request, grants::Request::Revoke { scope: rules::RevokeScope::Ticket, .. }) {
        writes.revoked.push((event.ticket.key.clone(), event.occurred_at));
    }
    rows.extend(plan.notes.iter().map(|n| note_entry(event, n)));
    if pending > 0 {
        return Ok(After::Execute);
    }
    writes.complete(event);
    // (write_back itself stays silent for dry-run applications.)
    let note = done_note(event, &plan.ops, &plan.notes);
    Ok(After::Done { label: if dry_run { "dry_run" } else { "applied" }, note: Some(note) })
}

/// Runs one event's open intents and completes it (a resumed run).
async fn execute(ctx: &WorkerContext, event: &AccessEvent, attempt: u32) -> Result<Outcome, sqlx::Error> {
    Ok(execute_batch(ctx, &[(event, attempt)], &[]).await?.remove(0))
}

/// One event of [`execute_batch`].
struct Run<'a> {
    event: &'a AccessEvent,
    attempt: u32,
    /// Its open intents, oldest first; the front one runs next.
    queue: std::collections::VecDeque<crate::intents::Intent>,
    outcome: Option<Outcome>,
}

/// Runs the open intents of a batch of decided events and completes them, with
/// no transaction open during a provider call. In rounds: each round claims the
/// next intent of every event (one per key: the older one first), makes the
/// calls concurrently, then records every success of the round, and completes
/// every event left with nothing to run, in ONE transaction (one audit-chain
/// lock, one COMMIT). An event whose call failed records its failure on its own
/// and leaves the others running. An intent that another worker holds is waited
/// for, at most `[worker] intent_lease`.
///
/// The same event delivered twice in one batch runs once: the other deliveries
/// are recorded as duplicates once it is settled.
///
/// `spans` (one per event, or none) are the events' `consume` spans: each
/// provider call is traced as an `apply` span under its event's, and the
/// recording of its results as an `audit` span.
pub async fn execute_batch(
    ctx: &WorkerContext,
    events: &[(&AccessEvent, u32)],
    spans: &[tracing::Span],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut first: std::collections::HashMap<uuid::Uuid, usize> = std::collections::HashMap::new();
    let mut unique = Vec::new();
    let mut unique_spans = Vec::new();
    let mut slot = Vec::with_capacity(events.len());
    for (n, &(event, attempt)) in events.iter().enumerate() {
        slot.push(*first.entry(event.event_id).or_insert_with(|| {
            unique.push((event, attempt));
            unique_spans.push(spans.get(n).cloned().unwrap_or_else(tracing::Span::current));
            unique.len() - 1
        }));
    }
    let outcomes = execute_unique(ctx, &unique, &unique_spans).await?;
    let mut used = vec![false; unique.len()];
    let mut out = Vec::with_capacity(events.len());
    for (&(event, attempt), u) in events.iter().zip(slot) {
        if !std::mem::replace(&mut used[u], true) {
            out.push(outcomes[u].clone());
            continue;
        }
        let mut tx = ctx.pool.begin().await?;
        let mut rows = Vec::new();
        note_duplicate(&mut tx, event, attempt, &mut rows).await?;
        audit::append(&mut tx, &rows).await?;
        tx.commit().await?;
        out.push(Outcome::Duplicate);
    }
    Ok(out)
}

/// [`execute_batch`] for distinct events.
async fn execute_unique(
    ctx: &WorkerContext,
    events: &[(&AccessEvent, u32)],
    spans: &[tracing::Span],
) -> Result<Vec<Outcome>, sqlx::Error> {
    use std::collections::{BTreeMap, HashSet};
    let lease = ctx.config.worker.intent_lease;
    let ids: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.event_id).collect();
    let mut open: BTreeMap<uuid::Uuid, Vec<crate::intents::Intent>> = BTreeMap::new();
    for intent in crate::intents::open_for_events(&ctx.pool, &ids).await? {
        open.entry(intent.event_id).or_default().push(intent);
    }
    let mut runs: Vec<Run<'_>> = events
        .iter()
        .map(|(event, attempt)| Run {
            event,
            attempt: *attempt,
            queue: open.remove(&event.event_id).unwrap_or_default().into(),
            outcome: None,
        })
        .collect();
    let mut waited = std::time::Duration::ZERO;
    loop {
        // This round: the front intent of every running event, one per key.
        let mut keys = HashSet::new();
        let mut round: Vec<usize> = Vec::new();
        let mut order: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].outcome.is_none()).collect();
        order.sort_by_key(|&i| runs[i].queue.front().map_or(i64::MIN, |f| f.id));
        for i in order {
            match runs[i].queue.front() {
                Some(front)
                    if keys.insert((front.application.clone(), front.identity_key.clone(), front.target.clone())) =>
                {
                    round.push(i);
                }
                Some(_) => {}
                None => round.push(i), // nothing left to run: completes in this round
            }
        }
        if round.is_empty() {
            break;
        }
        let fronts: Vec<&crate::intents::Intent> = round.iter().filter_map(|&i| runs[i].queue.front()).collect();
        let mut claimed: std::collections::HashMap<(String, String, String), crate::intents::Intent> =
            crate::intents::claim_all(&ctx.pool, &fronts, lease)
                .await?
                .into_iter()
                .map(|c| ((c.application.clone(), c.identity_key.clone(), c.target.clone()), c))
                .collect();
        let mut calls = Vec::new();
        let mut blocked = Vec::new();
        for &i in &round {
            let Some(front) = runs[i].queue.front() else { continue };
            match claimed.remove(&(front.application.clone(), front.identity_key.clone(), front.target.clone())) {
                Some(c) => calls.push((i, c)),
                None => blocked.push(i),
            }
        }
        // Not claimable: resolved meanwhile (cancelled, done or abandoned by another
        // delivery), or held by another worker's lease.
        let mut progressed = !calls.is_empty();
        for &i in &blocked {
            let front = runs[i].queue.front().expect("blocked on its front intent");
            if !matches!(crate::intents::state(&ctx.pool, front.id).await?.as_str(), "pending" | "running") {
                runs[i].queue.pop_front();
                progressed = true;
            }
        }
        let results = futures_util::future::join_all(calls.iter().map(|(i, claimed)| {
            let span = tracing::info_span!(
                parent: &spans[*i],
                "apply",
                application = %claimed.application,
                op = %claimed.op,
                intent = claimed.id,
                outcome = tracing::field::Empty,
            );
            async move {
                let result = ctx
                    .call(&claimed.application, &claimed.subject(), &claimed.provider_op(), &claimed.access_level)
                    .await;
                tracing::Span::current().record("outcome", result.as_ref().map_or_else(|e| e.class(), |r| *r));
                result
            }
            .instrument(span)
        }))
        .await;
        let mut done = Vec::new();
        for ((i, claimed), result) in calls.into_iter().zip(results) {
            match result {
                Ok(result) => {
                    let action = match (claimed.op.as_str(), claimed.source.as_str()) {
                        ("grant", _) => "granted",
                        (_, "expiry") => "expired",
                        _ => "revoked",
                    };
                    let detail = json!({"provider_result": result, "identity": identity_detail(&claimed.subject()), "intent": claimed.id});
                    let row = claimed.audit(action, "ok", detail);
                    if runs[i].queue.front().is_some_and(|f| f.id == claimed.id) {
                        runs[i].queue.pop_front();
                    }
                    done.push((claimed, result, row));
                }
                Err(error) => {
                    crate::intents::release(&ctx.pool, &claimed, &error.to_string()).await?;
                    let run = &runs[i];
                    let what = json!({"op": claimed.provider_op(), "target": claimed.target, "intent": claimed.id});
                    let error = if run.queue.front().is_some_and(|f| f.id == claimed.id) {
                        error
                    } else {
                        // Another event's call failed before ours could run; ours waits for it.
                        ConnectorError::Transient {
                            reason: format!("waiting behind ticket {}'s call, which failed: {error}", claimed.ticket),
                            retry_after: None,
                        }
                    };
                    let app = Some(claimed.application.as_str());
                    let outcome = record_failure(ctx, run.event, Vec::new(), run.attempt, error, what, app).await?;
                    runs[i].outcome = Some(outcome);
                }
            }
        }
        // Record the round's results, and complete the events that have nothing left.
        let finished: Vec<usize> =
            round.iter().copied().filter(|&i| runs[i].outcome.is_none() && runs[i].queue.is_empty()).collect();
        if !done.is_empty() || !finished.is_empty() {
            let _audit: Vec<tracing::Span> =
                round.iter().map(|&i| tracing::info_span!(parent: &spans[i], "audit")).collect();
            let mut tx = ctx.pool.begin().await?;
            let mut rows = crate::intents::succeed_all(&mut tx, done).await?;
            // Complete the events still running (another delivery may have completed
            // one, or given up on it: it is in the dead letters, its ledger change
            // undone); nothing is left for those but a duplicate row.
            let ends: Vec<(uuid::Uuid, &str, &str)> = finished
                .iter()
                .map(|&i| {
                    (runs[i].event.event_id, runs[i].event.dedupe_key.as_str(), runs[i].event.ticket.key.as_str())
                })
                .collect();
            let mut completed_ids: HashSet<uuid::Uuid> =
                crate::progress::complete_all(&mut tx, &ends).await?.into_iter().collect();
            let mut completed = Vec::new();
            for &i in &finished {
                if completed_ids.remove(&runs[i].event.event_id) {
                    completed.push(i);
                } else {
                    note_duplicate(&mut tx, runs[i].event, runs[i].attempt, &mut rows).await?;
                    runs[i].outcome = Some(Outcome::Duplicate);
                }
            }
            audit::append(&mut tx, &rows).await?;
            tx.commit().await?;
            let ids: Vec<uuid::Uuid> = completed.iter().map(|&i| runs[i].event.event_id).collect();
            let mut intents_of: BTreeMap<uuid::Uuid, Vec<crate::intents::Intent>> = BTreeMap::new();
            for intent in crate::intents::of_current_runs(&ctx.pool, &ids).await? {
                intents_of.entry(intent.event_id).or_default().push(intent);
            }
            for i in completed {
                let event = runs[i].event;
                let all = intents_of.remove(&event.event_id).unwrap_or_default();
                let ops: Vec<ProviderOp> = all.iter().filter(|i| i.state == "done").map(|i| i.provider_op()).collect();
                let notes: Vec<Note> = all
                    .iter()
                    .filter(|i| i.state == "cancelled")
                    .map(|i| Note::Superseded {
                        target: i.target.clone(),
                        reason: "cancelled by a later request before it ran".into(),
                    })
                    .collect();
                tracing::info!(parent: &spans[i], event_id = %event.event_id, ticket = %event.ticket.key, ops = ops.len(), "event applied");
                ctx.write_back(event, done_note(event, &ops, &notes)).await;
                runs[i].outcome = Some(Outcome::Recorded("applied"));
            }
        }
        if progressed {
            continue;
        }
        // Everything left waits on another worker's call: wait for it, boundedly.
        if waited >= lease {
            for i in blocked {
                let run = &runs[i];
                let front = run.queue.front().expect("blocked on its front intent");
                let error = ConnectorError::Transient {
                    reason: format!("waited {waited:?} behind another worker's call on {}", front.target),
                    retry_after: None,
                };
                let what = json!({"op": front.provider_op(), "target": front.target, "intent": front.id});
                let app = Some(front.application.as_str());
                let outcome = record_failure(ctx, run.event, Vec::new(), run.attempt, error, what, app).await?;
                runs[i].outcome = Some(outcome);
            }
            continue;
        }
        let step = std::time::Duration::from_millis(50);
        tokio::time::sleep(step).await;
        waited += step;
    }
    Ok(runs.into_iter().map(|r| r.outcome.expect("every run ends with an outcome")).collect())
}

/// Starts the transaction of an event handled outside the batch pipeline (a
/// routing, an offboarding, an onboarding): takes the advisory lock `kind:key`,
/// so that concurrent deliveries wait, then, when the event was processed
/// already, records the duplicate (once per event) and commits: `None`.
pub(super) async fn begin_alone<'c>(
    ctx: &'c WorkerContext,
    event: &AccessEvent,
    attempt: u32,
    kind: &str,
    key: &str,
) -> Result<Option<sqlx::Transaction<'c, sqlx::Postgres>>, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("accessgov.{kind}:{key}"))
        .execute(&mut *tx)
        .await?;
    if !crate::progress::is_processed(&mut *tx, event.event_id).await? {
        return Ok(Some(tx));
    }
    let mut rows = Vec::new();
    note_duplicate(&mut tx, event, attempt, &mut rows).await?;
    audit::append(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(None)
}

/// Completes an event handled outside the batch pipeline (a routing, an
/// offboarding) in its own transaction: its dedupe row, its audit rows, COMMIT.
pub(super) async fn record_alone(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    event: &AccessEvent,
    rows: Vec<AuditEntry>,
    label: &'static str,
) -> Result<Outcome, sqlx::Error> {
    sqlx::query(
        "INSERT INTO processed_events (event_id, dedupe_key, ticket, outcome) VALUES ($1, $2, $3, 'processed') \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(&event.dedupe_key)
    .bind(&event.ticket.key)
    .execute(&mut *tx)
    .await?;
    audit::append(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(Outcome::Recorded(label))
}

/// The write-back of a completed event.
fn done_note(event: &AccessEvent, ops: &[ProviderOp], notes: &[Note]) -> WriteBack {
    let summary = summary(ops, notes);
    if event.source == crate::event::Source::Expiry {
        WriteBack::Info(format!("The time-bound access of this request expired: {summary}."))
    } else {
        WriteBack::Success(format!("accessgov applied this request: {summary}."), Some(executed(ops, notes)))
    }
}

/// What was executed, in the form of the plan posted at routing (its `lasts`
/// is filled in from the rule when compared).
fn executed(ops: &[ProviderOp], notes: &[Note]) -> crate::routing::PlanRecord {
    let plan = grants::Plan { ops: ops.to_vec(), changes: Vec::new(), notes: notes.to_vec() };
    crate::routing::PlanRecord::of(&plan, None)
}

fn summary(ops: &[ProviderOp], notes: &[Note]) -> String {
    let mut parts: Vec<String> = ops
        .iter()
        .map(|op| match op {
            ProviderOp::Grant(t) => format!("added to {t}"),
            ProviderOp::Revoke(t) => format!("removed from {t}"),
        })
        .collect();
    parts.extend(notes.iter().map(|n| match n {
        Note::HoldAdded { target, .. } => format!("{target} was already granted through another ticket"),
        Note::HoldReleased { target, .. } => format!("{target} stays: another ticket still grants it"),
        Note::AlreadyHeld { target } => format!("{target} was already granted by this ticket"),
        Note::Superseded { target, .. } => format!("{target}: a newer removal request applies"),
        Note::NothingHeld { target } => format!("{target}: nothing was granted through this ticket"),
    }));
    if parts.is_empty() { "no change was needed".into() } else { parts.join("; ") }
}

/// Records a failed attempt in its own transaction and says where the message goes next.
pub(super) async fn record_failure(
    ctx: &WorkerContext,
    event: &AccessEvent,
    mut rows: Vec<AuditEntry>,
    attempt: u32,
    error: ConnectorError,
    what: serde_json::Value,
    application: Option<&str>,
) -> Result<Outcome, sqlx::Error> {
    let next = if error.is_transient() {
        retry::next(&ctx.config.broker.retry_delays, attempt, error.retry_after())
    } else {
        Next::DeadLetter
    };
    let mut e = entry(event, "provider_error", "failed");
    e.application = application.map(str::to_owned).or(e.application);
    e.target = what.get("target").and_then(|t| t.as_str()).map(str::to_owned);
    e.detail = json!({"call": what, "class": error.class(), "error": error.to_string(), "attempt": attempt});
    rows.push(e);
    if let Next::Retry { delay, attempt: next_attempt, .. } = &next {
        let mut e = entry(event, "retry_scheduled", "pending");
        e.detail = json!({"attempt": next_attempt, "delay": crate::config::duration::format(*delay)});
        rows.push(e);
    }
    let mut tx = ctx.pool.begin().await?;
    if next == Next::DeadLetter {
        // It goes to the operators: its calls will not be made, so the ledger
        // changes they stood for are undone, and a replay decides it afresh.
        rows.extend(crate::intents::abandon(&mut tx, event.event_id).await?);
    }
    audit::append(&mut tx, &rows).await?;
    tx.commit().await?;
    if next == Next::DeadLetter {
        ctx.write_back(
            event,
            WriteBack::Failure(format!(
                "accessgov could not complete this request ({}); it is in the operators' dead-letter inbox.",
                error.class()
            )),
        )
        .await;
    }
    Ok(Outcome::Failed { error, next })
}

pub(super) fn jsm_error(e: crate::jsm::JsmError) -> ConnectorError {
    use crate::jsm::JsmError;
    match e {
        JsmError::Transient { reason, retry_after } => {
            ConnectorError::Transient { reason: format!("JSM: {reason}"), retry_after }
        }
        JsmError::Unauthorized(m) => ConnectorError::Unauthorized(format!("JSM: {m}")),
        JsmError::NotFound(m) => ConnectorError::NotFound { what: format!("JSM: {m}") },
        JsmError::Permanent(m) => ConnectorError::Permanent { reason: format!("JSM: {m}") },
    }
}

/// What to tell the ticket.
#[derive(Debug, Clone)]
pub enum WriteBack {
    /// Provisioned: comment, then `transition_on_success`. With what was
    /// executed, to compare with the plan posted when the ticket was routed.
    Success(String, Option<crate::routing::PlanRecord>),
    /// Refused or failed for good: comment, then `transition_on_failure`.
    Failure(String),
    /// Nothing changed at a provider (denied, declined, dry run): comment only.
    Info(String),
}

/// How the decision's transaction starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Decide and record it (this transaction holds its run).
    New,
    /// Already processed: nothing is done again.
    Duplicate,
    /// Another delivery committed its decision meanwhile: resume its intents.
    Resume,
}

/// Checks the dedupe row (recording one `duplicate` audit row the first time a
/// processed event comes again), then takes the event's run. A failed attempt
/// leaves no dedupe row: it is written when everything the event caused is
/// committed.
async fn claim(
    tx: &mut PgConnection,
    event: &AccessEvent,
    attempt: u32,
    rows: &mut Vec<AuditEntry>,
) -> Result<Claim, sqlx::Error> {
    let begin = crate::intents::begin(&mut *tx, event.event_id, &event.ticket.key).await?;
    note_claim(tx, event, attempt, begin, rows).await
}

/// What a run's beginning means for the event (a processed one is noted as a duplicate).
async fn note_claim(
    tx: &mut PgConnection,
    event: &AccessEvent,
    attempt: u32,
    begin: crate::intents::Begin,
    rows: &mut Vec<AuditEntry>,
) -> Result<Claim, sqlx::Error> {
    match begin {
        crate::intents::Begin::New => return Ok(Claim::New),
        crate::intents::Begin::Resume => return Ok(Claim::Resume),
        crate::intents::Begin::Processed => {}
    }
    note_duplicate(tx, event, attempt, rows).await?;
    Ok(Claim::Duplicate)
}

/// Records one `duplicate` audit row the first time a processed event comes again.
async fn note_duplicate(
    tx: &mut PgConnection,
    event: &AccessEvent,
    attempt: u32,
    rows: &mut Vec<AuditEntry>,
) -> Result<(), sqlx::Error> {
    let first_duplicate = crate::progress::note_duplicate(&mut *tx, event.event_id).await?;
    if first_duplicate {
        let mut e = entry(event, "duplicate", "skipped");
        e.detail = json!({"dedupe_key": event.dedupe_key, "delivery_id": event.delivery_id, "attempt": attempt});
        rows.push(e);
    }
    Ok(())
}

fn op_target(op: &ProviderOp) -> &str {
    match op {
        ProviderOp::Grant(t) | ProviderOp::Revoke(t) => t,
    }
}

pub(super) fn entry(event: &AccessEvent, action: &str, outcome: &str) -> AuditEntry {
    let mut e = AuditEntry::new(action, outcome);
    e.event_id = Some(event.event_id);
    e.ticket = Some(event.ticket.key.clone());
    e.actor = event.actor.as_ref().map(|p| p.account_id.clone());
    e.application = event.application.clone();
    e.subject = event.requester.as_ref().map(|p| p.account_id.clone());
    e
}

/// The provider identity an effect addressed, for the chained audit row: the
/// account id, the email and the `subject_field` values (never a display name).
pub fn identity_detail(who: &Subject) -> serde_json::Value {
    json!({"account_id": who.account_id, "email": who.email, "fields": who.fields})
}

fn note_entry(event: &AccessEvent, note: &Note) -> AuditEntry {
    let (action, outcome, target) = match note {
        Note::HoldAdded { target, .. } => ("hold_added", "ok", target),
        Note::HoldReleased { target, .. } => ("hold_released", "ok", target),
        Note::AlreadyHeld { target } => ("already_held", "skipped", target),
        Note::Superseded { target, .. } => ("superseded", "skipped", target),
        Note::NothingHeld { target } => ("nothing_held", "skipped", target),
    };
    let mut e = entry(event, action, outcome);
    e.target = Some(target.clone());
    e.detail = serde_json::to_value(note).unwrap_or_default();
    e
}

/// `received`: what arrived.
pub(super) fn received_row(event: &AccessEvent) -> AuditEntry {
    let mut received = entry(event, "received", "ok");
    received.detail = json!({
        "source": event.source,
        "action": event.action,
        "app_status": event.app_status,
        "status": event.status,
        "access_level": event.access_level,
        "approver": event.approver.as_ref().map(|a| json!({"account_id": a.person.account_id, "source": a.source})),
        "delivery_id": event.delivery_id,
        "changelog_id": event.changelog_id,
        "dedupe_key": event.dedupe_key,
        "occurred_at": event.occurred_at,
        "errors": event.errors,
    });
    received
}

/// `decided` (each attempt decides anew under the current config), and the refusal if any.
fn decided_rows(event: &AccessEvent, decision: &Decision) -> Vec<AuditEntry> {
    let mut decided = entry(event, "decided", "ok");
    decided.actor = event.approver.as_ref().map(|a| a.person.account_id.clone());
    decided.detail = serde_json::to_value(decision).unwrap_or_default();
    if let Decision::Refused { reason } = decision {
        decided.outcome = "refused".into();
        let mut refused = entry(event, "denied_by_policy", "refused");
        refused.detail = json!({"code": reason.code(), "reason": reason.message()});
        vec![decided, refused]
    } else {
        vec![decided]
    }
}

impl WorkerContext {
    /// One provider call with short in-process retries for transient failures.
    async fn call(
        &self,
        application: &str,
        subject: &Subject,
        op: &ProviderOp,
        access_level: &str,
    ) -> Result<&'static str, ConnectorError> {
        let Some(connector) = self.connectors.get(application) else {
            return Err(ConnectorError::Permanent {
                reason: format!("no connector is configured for application {application:?}"),
            });
        };
        let role = self.config.rule_for(application, access_level).and_then(|r| r.role.clone());
        let target = Target { name: op_target(op).to_owned(), role };
        let operation = match op {
            ProviderOp::Grant(_) => "grant",
            ProviderOp::Revoke(_) => "revoke",
        };
        let (connector, target) = (connector.as_ref(), &target);
        let worker = &self.config.worker;
        let calls = retry::inline(
            &worker.inline_backoff,
            worker.max_inline_wait,
            || async move {
                // A call slot for the request itself, never across a retry's sleep.
                let _slot = self.calls.acquire().await.expect("the call semaphore is never closed");
                match op {
                    ProviderOp::Grant(_) => connector.grant(subject, target).await.map(|r| match r {
                        crate::connectors::GrantOutcome::Granted => "granted",
                        crate::connectors::GrantOutcome::AlreadyGranted => "already_granted",
                    }),
                    ProviderOp::Revoke(_) => connector.revoke(subject, target).await.map(|r| match r {
                        crate::connectors::RevokeOutcome::Revoked => "revoked",
                        crate::connectors::RevokeOutcome::AlreadyAbsent => "already_absent",
                    }),
                }
            },
            |e, wait| {
                tracing::info!(application, error = %e, wait_ms = wait.as_millis() as u64, "transient provider error; retrying in process");
            },
        );
        crate::metrics::provider_scope(application, operation, calls).await
    }

    /// The candidate approvers' Jira groups, needed only when the event's rule
    /// lists `group:` approvers. Without JSM credentials they cannot be resolved
    /// and match nobody (startup and `config check` warn about it).
    async fn approver_groups(
        &self,
        event: &AccessEvent,
        live_approvals: Option<&[crate::jsm::Approval]>,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, crate::jsm::JsmError> {
        let mut out = std::collections::BTreeMap::new();
        // Events accessgov made itself are never decided on an approver's groups.
        let (Some(app), Some(level), false) = (&event.application, &event.access_level, event.source.made_here())
        else {
            return Ok(out);
        };
        let Some(rule) = self.config.rule_for(app, level) else { return Ok(out) };
        let groups = |entries: &[String]| entries.iter().any(|a| a.starts_with("group:"));
        let approver_groups = groups(&rule.approvers) || rule.stages.iter().any(|s| groups(&s.approvers));
        let requester_groups = groups(&rule.requesters);
        let Some(jsm) = self.jsm.as_ref().filter(|_| approver_groups || requester_groups) else {
            return Ok(out);
        };
        let mut accounts: Vec<&str> = Vec::new();
        if approver_groups {
            accounts.extend(rules::approver_candidates(event).iter().map(|p| p.account_id.as_str()));
            for approval in live_approvals.unwrap_or_default() {
                accounts.extend(approval.approvers.iter().map(|(id, _)| id.as_str()));
            }
        }
        // Only a grant or change is gated on who asks.
        let asks = matches!(event.action, crate::config::RequestAction::Grant | crate::config::RequestAction::Change)
            && !matches!(event.source, crate::event::Source::Expiry | crate::event::Source::Offboard);
        if requester_groups && asks {
            accounts.extend(event.requester.as_ref().map(|p| p.account_id.as_str()));
        }
        for account in accounts {
            if !out.contains_key(account) {
                out.insert(account.to_owned(), jsm.user_groups(account).await?);
            }
        }
        Ok(out)
    }

    /// The live JSM approvals, for an approved grant or change under a rule
    /// with approval stages (`None` otherwise, or without JSM credentials).
    async fn stage_approvals(
        &self,
        event: &AccessEvent,
    ) -> Result<Option<Vec<crate::jsm::Approval>>, crate::jsm::JsmError> {
        let (Some(app), Some(level)) = (&event.application, &event.access_level) else {
            return Ok(None);
        };
        let staged = self.config.rule_for(app, level).is_some_and(|r| !r.stages.is_empty());
        // Only a request's own approval is decided on the stages, never an event accessgov made.
        let deciding = event.app_status == crate::config::AppStatus::Approved
            && event.action != crate::config::RequestAction::Revoke
            && !event.source.made_here();
        match &self.jsm {
            Some(jsm) if staged && deciding => Ok(Some(jsm.approval_state(&event.ticket.key).await?.approvals)),
            _ => Ok(None),
        }
    }

    /// `[jsm] verify_approval`: the live ticket must confirm the payload, with
    /// `approver`'s own approval in an approved approval completed after `not_before`.
    async fn verify_approval(
        &self,
        event: &AccessEvent,
        approver: &Person,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<Result<(), String>, crate::jsm::JsmError> {
        let Some(jsm) = &self.jsm else {
            return Ok(Err("verify_approval is on but no JSM credentials are configured".into()));
        };
        let live = jsm.approval_state(&event.ticket.key).await?;
        Ok(crate::jsm::confirms(event, approver, not_before, &live, &self.config.jsm.statuses))
    }

    /// How what was executed differs from the plan posted at routing (`None`:
    /// no plan was posted, or nothing changed).
    async fn plan_changes(
        &self,
        event: &AccessEvent,
        now: &crate::routing::PlanRecord,
    ) -> Result<Option<String>, sqlx::Error> {
        let planned: Option<sqlx::types::Json<crate::routing::PlanRecord>> = sqlx::query_scalar(
            "SELECT plan FROM routings WHERE ticket = $1 AND step = 'created' AND outcome IN ('routed', 'incomplete')",
        )
        .bind(&event.ticket.key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(planned) = planned else { return Ok(None) };
        let mut now = now.clone();
        if event.action != crate::config::RequestAction::Revoke {
            let rule = event.application.as_deref().zip(event.access_level.as_deref());
            let max = rule.and_then(|(a, l)| self.config.rule_for(a, l)).and_then(|r| r.max_duration);
            now.lasts = grants::effective_duration(event.duration.as_deref(), max)
                .ok()
                .flatten()
                .map(crate::config::duration::format);
        }
        let changes = now.changes_since(&planned.0);
        Ok((!changes.is_empty()).then(|| changes.join("; ")))
    }

    /// Tells the ticket, best effort: a failure is logged and audited, never retried
    /// (the effect it reports is already committed).
    pub async fn write_back(&self, event: &AccessEvent, note: WriteBack) {
        let Some(jsm) = &self.jsm else { return };
        // An offboarding's revokes are listed on the offboarding ticket, not on each
        // granting ticket; a reconcile repair is reported by the reconcile run.
        if matches!(
            event.source,
            crate::event::Source::Offboard | crate::event::Source::Onboard | crate::event::Source::Reconcile
        ) {
            return;
        }
        // A dry-run application calls nothing outside accessgov, JSM included.
        let dry_run =
            event.application.as_ref().and_then(|a| self.config.applications.get(a)).is_some_and(|a| a.dry_run);
        if dry_run {
            return;
        }
        let wb = &self.config.jsm.write_back;
        let mut changed = None;
        if let WriteBack::Success(_, Some(now)) = &note
            && wb.comment
        {
            changed = match self.plan_changes(event, now).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(ticket = %event.ticket.key, error = %e, "could not read the routing plan");
                    None
                }
            };
        }
        let (text, transition) = match &note {
            WriteBack::Success(t, _) => (t, wb.transition_on_success.as_deref()),
            WriteBack::Failure(t) => (t, wb.transition_on_failure.as_deref()),
            WriteBack::Info(t) => (t, None),
        };
        let text = match changed {
            Some(c) => format!("{text}\nChanged since the plan posted when this request was routed: {c}."),
            None => text.clone(),
        };
        let mut results = Vec::new();
        if wb.comment {
            results.push(("comment", jsm.comment(&event.ticket.key, &text, true).await));
        }
        if let Some(name) = transition {
            results.push(("transition", jsm.transition(&event.ticket.key, name).await));
        }
        if results.is_empty() {
            return;
        }
        let failed: Vec<String> =
            results.iter().filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}"))).collect();
        let mut e = entry(event, "written_back", if failed.is_empty() { "ok" } else { "failed" });
        e.detail = json!({"steps": results.iter().map(|(w, _)| *w).collect::<Vec<_>>(), "transition": transition, "errors": failed});
        if !failed.is_empty() {
            tracing::warn!(ticket = %event.ticket.key, errors = ?failed, "write-back to the ticket failed");
        }
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            audit::append(&mut tx, &[e]).await?;
            tx.commit().await
        };
        if let Err(err) = recorded.await {
            tracing::warn!(error = %err, "could not audit the write-back");
        }
    }
}
