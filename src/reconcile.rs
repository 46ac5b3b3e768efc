//! Drift: what the providers really hold, against the ledger (`accessgov grants
//! reconcile`). Every managed target of every live application is read back
//! ([`Connector::members`]) and compared with the ledger's active memberships:
//!
//! - `missing`: the ledger says the subject holds the target (a ticket holds it),
//!   the provider does not list them: removed by hand, or undone by an IdP sync;
//! - `unmanaged`: the provider lists a member that no hold accounts for.
//!
//! A membership is matched by the identifier the connector addresses the
//! subject by ([`Connector::identity`], from the identity the hold recorded)
//! against the keys the provider lists for each member. [`compare`] is pure;
//! [`run`] reads and records one `reconciled` audit row with the counts.
//!
//! With `--fix`, each `missing` membership is provisioned again through the
//! pipeline: one repair event (`Source::Reconcile`) per finding, published to
//! the request queue and decided like any event (intents, retries, dead letters,
//! audit rows), which calls the provider for targets the ledger still holds and
//! changes no hold. Unmanaged members are removed (the same way, as `remove`
//! decisions) only from the targets of rules with `exclusive = true`, and only
//! when the connector addresses them by one of their own keys; otherwise they
//! are reported.

use crate::audit::{self, AuditEntry};
use crate::config::Config;
use crate::connectors::{Connector, Connectors, Member, Subject, Target};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};

/// One active membership of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The JSM account id.
    pub subject: String,
    /// The identity the membership was granted to.
    pub identity: Subject,
    /// The tickets that hold it.
    pub tickets: Vec<String>,
    /// The access level of its first hold.
    pub access_level: String,
}

/// A difference between the ledger and a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Held in the ledger, absent at the provider.
    Missing { subject: String, identity: String, tickets: Vec<String>, access_level: String, identity_of: Subject },
    /// A member at the provider that no hold accounts for.
    Unmanaged { member: String, keys: Vec<String>, display: Option<String> },
    /// The ledger's identity cannot be addressed by this connector.
    Unaddressable { subject: String, reason: String },
}

/// One target read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub application: String,
    pub target: String,
    /// Memberships both sides agree on.
    pub in_sync: usize,
    pub findings: Vec<Finding>,
    /// The target could not be read (the error); nothing is concluded about it.
    pub error: Option<String>,
}

/// Compares one target's ledger memberships with its members at the provider.
/// Pure. `identity` is the connector's [`Connector::identity`].
pub fn compare(
    held: &[Held],
    members: &[Member],
    identity: impl Fn(&Subject) -> Result<String, String>,
) -> (usize, Vec<Finding>) {
    let listed: BTreeSet<&str> = members.iter().flat_map(|m| m.keys.iter().map(String::as_str)).collect();
    let mut accounted: BTreeSet<String> = BTreeSet::new();
    let mut in_sync = 0;
    let mut findings = Vec::new();
    for h in held {
        match identity(&h.identity) {
            Ok(key) if listed.contains(key.as_str()) => {
                in_sync += 1;
                accounted.insert(key);
            }
            Ok(key) => findings.push(Finding::Missing {
                subject: h.subject.clone(),
                identity: key,
                tickets: h.tickets.clone(),
                access_level: h.access_level.clone(),
                identity_of: h.identity.clone(),
            }),
            Err(reason) => findings.push(Finding::Unaddressable { subject: h.subject.clone(), reason }),
        }
    }
    for m in members {
        if !m.keys.iter().any(|k| accounted.contains(k)) {
            findings.push(Finding::Unmanaged {
                member: m.id.clone(),
                keys: m.keys.clone(),
                display: m.display.clone(),
            });
        }
    }
    (in_sync, findings)
}

/// The managed targets of each live application: its rules' targets and any
/// target its ledger holds.
pub async fn targets(
    pool: &PgPool,
    config: &Config,
    connectors: &Connectors,
    only: Option<&str>,
) -> Result<BTreeMap<String, BTreeSet<String>>, sqlx::Error> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in connectors.keys().filter(|n| only.is_none_or(|o| o == n.as_str())) {
        let entry = out.entry(name.clone()).or_default();
        entry.extend(config.rules.iter().filter(|r| &r.application == name).flat_map(|r| r.targets()));
    }
    let apps: Vec<String> = out.keys().cloned().collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT application, target FROM access_grants WHERE state = 'active' AND application = ANY($1)",
    )
    .bind(&apps)
    .fetch_all(pool)
    .await?;
    for (app, target) in rows {
        out.entry(app).or_default().insert(target);
    }
    Ok(out)
}

/// The ledger's active memberships of one target.
pub async fn held(pool: &PgPool, application: &str, target: &str) -> Result<Vec<Held>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        subject: String,
        subject_info: Option<serde_json::Value>,
        tickets: Vec<String>,
        access_level: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.subject, g.subject_info, \
                COALESCE(array_agg(h.ticket ORDER BY h.ticket) FILTER (WHERE h.ticket IS NOT NULL), '{}') AS tickets, \
                min(h.access_level) AS access_level \
         FROM access_grants g LEFT JOIN grant_holds h ON h.grant_id = g.id \
         WHERE g.application = $1 AND g.target = $2 AND g.state = 'active' \
         GROUP BY g.id ORDER BY g.subject",
    )
    .bind(application)
    .bind(target)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Held {
            identity: r.subject_info.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_else(|| Subject {
                account_id: r.subject.clone(),
                email: None,
                display_name: None,
                fields: BTreeMap::new(),
            }),
            subject: r.subject,
            tickets: r.tickets,
            access_level: r.access_level.unwrap_or_default(),
        })
        .collect())
}

/// Reads back every managed target (of `only`, or of every live application),
/// compares, and audits one `reconciled` row with the counts. `progress` is
/// told each target as it is read.
pub async fn run(
    pool: &PgPool,
    config: &Config,
    connectors: &Connectors,
    only: Option<&str>,
    operator: &crate::operator::Operator,
    fix: Option<&crate::broker::Broker>,
    progress: &mut (dyn FnMut(usize, usize, &str, &str) + Send),
) -> Result<Vec<TargetReport>, RunError> {
    let all = targets(pool, config, connectors, only).await?;
    let total: usize = all.values().map(BTreeSet::len).sum();
    let mut reports = Vec::new();
    for (app, targets) in &all {
        let Some(connector) = connectors.get(app) else { continue };
        for target in targets {
            progress(reports.len() + 1, total, app, target);
            reports.push(one(pool, config, connector.as_ref(), app, target).await?);
        }
    }
    let run_id = uuid::Uuid::new_v4();
    let mut repairs = 0;
    let mut removals = 0;
    let mut unremovable: Vec<String> = Vec::new();
    let mut repair_error = None;
    if let Some(broker) = fix {
        'publish: for r in &reports {
            let exclusive = config
                .rules
                .iter()
                .any(|rule| rule.exclusive && rule.application == r.application && rule.targets().contains(&r.target));
            for f in &r.findings {
                let event = match f {
                    Finding::Missing { .. } => repair_event(run_id, &r.application, &r.target, f),
                    Finding::Unmanaged { .. } if exclusive => {
                        let Some(connector) = connectors.get(&r.application) else { continue };
                        match removal_event(run_id, config, connector.as_ref(), &r.application, &r.target, f) {
                            Ok(e) => Some(e),
                            Err(why) => {
                                unremovable.push(why);
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let Some(event) = event else { continue };
                let removal = event.action == crate::config::RequestAction::Revoke;
                if let Err(e) = broker.publish_event(&event, 0, config.broker.confirm_timeout).await {
                    repair_error = Some(e.to_string());
                    break 'publish;
                }
                if removal {
                    removals += 1;
                } else {
                    repairs += 1;
                }
            }
        }
    }
    let ok = reports.iter().all(|r| r.error.is_none()) && repair_error.is_none();
    let mut row = AuditEntry::new("reconciled", if ok { "ok" } else { "failed" });
    row.actor = Some(operator.name.clone());
    row.application = only.map(str::to_owned);
    row.detail = serde_json::json!({
        "via": operator.via.as_str(),
        "targets": reports.len(),
        "in_sync": reports.iter().map(|r| r.in_sync).sum::<usize>(),
        "missing": count(&reports, |f| matches!(f, Finding::Missing { .. })),
        "unmanaged": count(&reports, |f| matches!(f, Finding::Unmanaged { .. })),
        "unaddressable": count(&reports, |f| matches!(f, Finding::Unaddressable { .. })),
        "unreadable": reports.iter().filter(|r| r.error.is_some()).map(|r| format!("{}/{}", r.application, r.target)).collect::<Vec<_>>(),
        "fix": fix.is_some(),
        "repairs_queued": repairs,
        "removals_queued": removals,
        "unremovable": unremovable,
        "repair_error": repair_error,
        "run": run_id,
    });
    let mut tx = pool.begin().await?;
    audit::append(&mut tx, &[row]).await?;
    tx.commit().await?;
    if let Some(reason) = repair_error {
        return Err(RunError::Publish { queued: repairs, reason });
    }
    Ok(reports)
}

/// Why a reconcile run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the broker refused a repair after {queued} were queued: {reason}; run `grants reconcile --fix` again")]
    Publish { queued: usize, reason: String },
}

/// The removal event of an `unmanaged` member of an exclusive target: the
/// subject is built from the member's keys (its id as the account id, an email
/// key as the email, the first key as the application's `subject_field`), and is
/// used only when the connector addresses it by one of the member's own keys, so
/// that the revoke can only reach that member. `Err` says why not.
pub fn removal_event(
    run: uuid::Uuid,
    config: &Config,
    connector: &dyn Connector,
    application: &str,
    target: &str,
    f: &Finding,
) -> Result<crate::event::AccessEvent, String> {
    use crate::event::{AccessEvent, Person, SCHEMA_V1, Source, StatusChange, Ticket, event_id_for};
    let Finding::Unmanaged { member, keys, .. } = f else { return Err("not an unmanaged member".into()) };
    let email = keys.iter().find(|k| k.contains('@')).cloned();
    let field = config.applications.get(application).and_then(|a| crate::connectors::http::setting(a, "subject_field"));
    let mut raw_fields = serde_json::Map::new();
    if let (Some(id), Some(first)) = (&field, keys.first()) {
        raw_fields.insert(id.clone(), serde_json::Value::String(first.clone()));
    }
    let person = Person { account_id: member.clone(), email, display_name: None };
    let subject = crate::connectors::subject_of(config, application, &person, &raw_fields)
        .map_err(|e| format!("{application}/{target}: {member}: {e}"))?;
    match connector.identity(&subject) {
        Ok(key) if keys.contains(&key) => {}
        Ok(key) => {
            return Err(format!("{application}/{target}: {member} would be addressed as {key}, not one of its keys"));
        }
        Err(e) => return Err(format!("{application}/{target}: {member}: {e}")),
    }
    let dedupe_key = format!("reconcile-remove:{run}:{application}:{target}:{member}");
    let access_level = config
        .rules
        .iter()
        .find(|r| r.application == application && r.targets().iter().any(|t| t == target))
        .map(|r| r.access_level.clone())
        .unwrap_or_default();
    Ok(AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::Reconcile,
        delivery_id: None,
        ticket: Ticket {
            key: format!("reconcile-{}", &run.simple().to_string()[..12]),
            id: String::new(),
            project_key: None,
            request_type: String::new(),
        },
        action: crate::config::RequestAction::Revoke,
        app_status: crate::config::AppStatus::Approved,
        status: StatusChange { from: None, to: "reconciled".into(), from_id: None, to_id: None },
        application: Some(application.to_owned()),
        access_level: Some(access_level),
        requester: Some(person),
        approver: None,
        approval: None,
        authenticity: None,
        actor: None,
        changelog_id: None,
        occurred_at: chrono::Utc::now(),
        duration: None,
        department: None,
        errors: Vec::new(),
        raw_fields,
        targets: Some(vec![target.to_owned()]),
    })
}

/// The repair event of a `missing` finding: provision `target` again for the
/// identity the ledger recorded, under the first ticket that holds it.
pub fn repair_event(
    run: uuid::Uuid,
    application: &str,
    target: &str,
    f: &Finding,
) -> Option<crate::event::AccessEvent> {
    use crate::event::{AccessEvent, Person, SCHEMA_V1, Source, StatusChange, Ticket, event_id_for};
    let Finding::Missing { subject, tickets, access_level, identity_of, .. } = f else { return None };
    let ticket = tickets.first()?;
    let dedupe_key = format!("reconcile:{run}:{application}:{target}:{subject}");
    Some(AccessEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: event_id_for(&dedupe_key),
        dedupe_key,
        source: Source::Reconcile,
        delivery_id: None,
        ticket: Ticket { key: ticket.clone(), id: String::new(), project_key: None, request_type: String::new() },
        action: crate::config::RequestAction::Grant,
        app_status: crate::config::AppStatus::Approved,
        status: StatusChange { from: None, to: "reconciled".into(), from_id: None, to_id: None },
        application: Some(application.to_owned()),
        access_level: Some(access_level.clone()),
        requester: Some(Person {
            account_id: subject.clone(),
            email: identity_of.email.clone(),
            display_name: identity_of.display_name.clone(),
        }),
        approver: None,
        approval: None,
        authenticity: None,
        actor: None,
        changelog_id: None,
        occurred_at: chrono::Utc::now(),
        duration: None,
        department: None,
        errors: Vec::new(),
        raw_fields: identity_of.fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        targets: Some(vec![target.to_owned()]),
    })
}

async fn one(
    pool: &PgPool,
    config: &Config,
    connector: &dyn Connector,
    app: &str,
    target: &str,
) -> Result<TargetReport, sqlx::Error> {
    let held = held(pool, app, target).await?;
    let role = config.rules.iter().find(|r| r.application == app && r.targets().iter().any(|t| t == target));
    let t = Target { name: target.to_owned(), role: role.and_then(|r| r.role.clone()) };
    let mut report = TargetReport {
        application: app.to_owned(),
        target: target.to_owned(),
        in_sync: 0,
        findings: vec![],
        error: None,
    };
    match crate::metrics::provider_scope(app, "members", connector.members(&t)).await {
        Ok(members) => {
            let (in_sync, findings) = compare(&held, &members, |s| connector.identity(s).map_err(|e| e.to_string()));
            report.in_sync = in_sync;
            report.findings = findings;
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    Ok(report)
}

/// How many findings of all reports match.
pub fn count(reports: &[TargetReport], f: impl Fn(&Finding) -> bool) -> usize {
    reports.iter().flat_map(|r| &r.findings).filter(|x| f(x)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str, email: &str) -> Subject {
        Subject { account_id: id.into(), email: Some(email.into()), display_name: None, fields: BTreeMap::new() }
    }

    fn member(id: &str, keys: &[&str]) -> Member {
        Member { id: id.into(), keys: keys.iter().map(|k| (*k).to_owned()).collect(), display: None }
    }

    fn by_email(s: &Subject) -> Result<String, String> {
        s.email.as_deref().map(str::to_lowercase).ok_or_else(|| format!("{} has no email", s.account_id))
    }

    #[test]
    fn held_and_listed_memberships_are_in_sync_and_each_side_alone_is_a_finding() {
        let held = vec![
            Held {
                subject: "a".into(),
                identity: subject("a", "Ann@example.com"),
                tickets: vec!["ACC-1".into()],
                access_level: "Write".into(),
            },
            Held {
                subject: "b".into(),
                identity: subject("b", "bob@example.com"),
                tickets: vec!["ACC-2".into()],
                access_level: "Write".into(),
            },
            Held {
                subject: "c".into(),
                identity: Subject { email: None, ..subject("c", "") },
                tickets: vec!["ACC-3".into()],
                access_level: "Write".into(),
            },
        ];
        let members = vec![member("u1", &["ann@example.com", "ann"]), member("u9", &["mallory@example.com"])];
        let (in_sync, findings) = compare(&held, &members, by_email);
        assert_eq!(in_sync, 1);
        assert_eq!(
            findings,
            vec![
                Finding::Missing {
                    subject: "b".into(),
                    identity: "bob@example.com".into(),
                    tickets: vec!["ACC-2".into()],
                    access_level: "Write".into(),
                    identity_of: subject("b", "bob@example.com"),
                },
                Finding::Unaddressable { subject: "c".into(), reason: "c has no email".into() },
                Finding::Unmanaged { member: "u9".into(), keys: vec!["mallory@example.com".into()], display: None },
            ]
        );
    }

    #[test]
    fn an_empty_target_with_an_empty_ledger_is_in_sync() {
        assert_eq!(compare(&[], &[], by_email), (0, vec![]));
    }
}
