//! The one owner of "what happens to this event": a pure [`plan`] from the
//! decision and one read of the facts ([`read_facts`]). The worker records what
//! it says; `accessgov dlq replay --dry-run` and the admin API's replay preview
//! show it. There is no second copy of the pipeline.

use crate::connectors::Subject;
use crate::event::AccessEvent;
use crate::grants::{self, Ledger, effect};
use crate::rules::{Decision, Refusal};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// What the plan needs to know, read in one place.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The event was processed already.
    pub processed: bool,
    /// Its decision is committed and its provider calls are still running.
    pub running: bool,
    /// The newest event applied for the ticket.
    pub last_event_at: Option<DateTime<Utc>>,
    /// The ledger of the decision's (application, subject).
    pub ledger: Ledger,
    /// The application calls nothing (`dry_run`).
    pub dry_run: bool,
    /// The provider identity the event names (its `subject_field` values).
    pub subject: Option<Subject>,
}

/// What to do with the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Already processed: record a duplicate, nothing else.
    Duplicate,
    /// Decided already: finish its provider calls.
    Resume,
    /// Refused by policy or nothing to do (denied, declined).
    NoEffect { label: &'static str },
    /// An older event of the ticket than one already applied.
    Superseded { newer_event_at: DateTime<Utc> },
    /// Refused once the ledger is known (another identity holds the access).
    Refused(Refusal),
    /// Change the ledger, and call providers unless `dry_run`.
    Apply { plan: grants::Plan, dry_run: bool },
}

impl Step {
    /// The preview's one-word summary.
    pub fn would(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Resume => "resume",
            Self::NoEffect { label } => label,
            Self::Superseded { .. } => "superseded",
            Self::Refused(_) => "denied_by_policy",
            Self::Apply { dry_run: true, .. } => "dry_run",
            Self::Apply { dry_run: false, .. } => "apply",
        }
    }
}

/// Plans the event. Pure.
pub fn plan(event: &AccessEvent, decision: &Decision, facts: &Facts) -> Step {
    if facts.processed {
        return Step::Duplicate;
    }
    if facts.running {
        return Step::Resume;
    }
    let Some(eff) = effect(decision) else {
        let label = if matches!(decision, Decision::Refused { .. }) { "denied_by_policy" } else { "no_action" };
        return Step::NoEffect { label };
    };
    if let Some(last) = facts.last_event_at
        && event.occurred_at < last
    {
        return Step::Superseded { newer_event_at: last };
    }
    if let (grants::Request::Grant { targets, .. } | grants::Request::Change { targets, .. }, Some(subject)) =
        (&eff.request, &facts.subject)
        && let Some((target, held)) = grants::identity_conflict(&facts.ledger, targets, subject)
    {
        return Step::Refused(Refusal::IdentityMismatch {
            target: target.to_owned(),
            held: held.fields.clone(),
            requested: subject.fields.clone(),
        });
    }
    let plan = grants::plan(&facts.ledger, &eff.request, &event.ticket.key, event.occurred_at);
    Step::Apply { plan, dry_run: facts.dry_run }
}

/// Reads the facts of the event's plan (the caller holds the subject lock when
/// it is going to act on them). `processed` and `running` are read too; the
/// worker, which learns them by claiming the event, overrides them.
pub async fn read_facts(
    tx: &mut PgConnection,
    config: &crate::config::Config,
    event: &AccessEvent,
    decision: &Decision,
) -> Result<Facts, sqlx::Error> {
    let processed = crate::progress::is_processed(&mut *tx, event.event_id).await?;
    let running = crate::intents::running(&mut *tx, event.event_id).await?;
    let facts = Facts { processed, running, ..Facts::default() };
    read_plan_facts(tx, config, event, decision, facts).await
}

/// The facts of the plan itself (ticket progress, ledger, dry run, identity),
/// added to `facts`: for a caller that knows `processed` and `running` already
/// (the worker learns them by claiming the event).
pub async fn read_plan_facts(
    tx: &mut PgConnection,
    config: &crate::config::Config,
    event: &AccessEvent,
    decision: &Decision,
    mut facts: Facts,
) -> Result<Facts, sqlx::Error> {
    let Some(eff) = effect(decision) else { return Ok(facts) };
    facts.last_event_at = crate::progress::last_event_at(&mut *tx, &event.ticket.key).await?;
    facts.ledger = grants::load(&mut *tx, eff.application, &eff.subject.account_id).await?;
    Ok(with_config_facts(config, event, decision, facts))
}

/// The facts that come from the configuration, not the database: whether the
/// application is dry-run, and the provider identity the event names.
pub fn with_config_facts(
    config: &crate::config::Config,
    event: &AccessEvent,
    decision: &Decision,
    mut facts: Facts,
) -> Facts {
    let Some(eff) = effect(decision) else { return facts };
    facts.dry_run = config.applications.get(eff.application).is_none_or(|a| a.dry_run);
    // Grants were checked by the decision; a ticket's revoke acts on the held
    // identity, so an unusable field there only loses its fallback role.
    facts.subject = Some(
        crate::connectors::subject_of(config, eff.application, eff.subject, &event.raw_fields)
            .unwrap_or_else(|_| Subject::from_person(eff.subject)),
    );
    facts
}
