//! `accessgov grants list`: the ledger.

use super::output::{self, Table};
use crate::cli::{GrantsCommand, GrantsListArgs, ReconcileArgs};
use crate::config::Config;
use crate::db;
use crate::grants::list::{self, Filter};
use anyhow::Context;
use std::process::ExitCode;

pub async fn run(config: &Config, cmd: GrantsCommand) -> anyhow::Result<ExitCode> {
    let pool = db::pool(&config.database.url, 2, &config.database.timeouts())?;
    let result = match cmd {
        GrantsCommand::List(args) => list(&pool, &args).await,
        GrantsCommand::Reconcile(args) => reconcile(&pool, config, &args).await,
    };
    pool.close().await;
    result
}

async fn list(pool: &sqlx::PgPool, args: &GrantsListArgs) -> anyhow::Result<ExitCode> {
    let expiring_before = match args.expiring_within {
        None => None,
        Some(d) => Some(list::expiring_before(d).context("--expiring-within is too large (at most 3650d)")?),
    };
    let filter = Filter {
        subject: args.subject.clone(),
        application: args.application.clone(),
        target: None,
        expiring_before,
        state: args.state,
    };
    let grants = list::list(pool, &filter).await.context("reading access_grants")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&grants)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "APPLICATION",
        "SUBJECT",
        "TARGET",
        "STATE",
        "TICKET",
        "ACCESS LEVEL",
        "HELD SINCE",
        "EXPIRES",
        "UNTIL",
    ]);
    for g in &grants {
        // Active: when it ends by itself (the last hold's expiry), if ever; revoked: when it was removed.
        let until = match (g.state.as_str(), g.until) {
            ("active", None) => "no expiry".to_owned(),
            ("active", Some(t)) => output::time(t),
            _ => output::opt_time(g.revoked_at),
        };
        if g.holds.is_empty() {
            t.row(vec![
                g.application.clone(),
                g.subject.clone(),
                g.target.clone(),
                g.state.clone(),
                "-".into(),
                "-".into(),
                output::opt_time(g.granted_at),
                "-".into(),
                until.clone(),
            ]);
        }
        for h in &g.holds {
            t.row(vec![
                g.application.clone(),
                g.subject.clone(),
                g.target.clone(),
                g.state.clone(),
                h.ticket.clone(),
                h.access_level.clone(),
                output::time(h.held_since),
                output::opt_time(h.expires_at),
                until.clone(),
            ]);
        }
    }
    print!("{}", t.render());
    eprintln!("{} grant(s)", grants.len());
    Ok(ExitCode::SUCCESS)
}

async fn reconcile(pool: &sqlx::PgPool, config: &Config, args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    use crate::reconcile::{self, Finding};
    let operator = crate::operator::Operator::from_cli(args.operator.operator.as_deref(), &crate::config::process_env)
        .map_err(anyhow::Error::msg)?;
    if let Some(app) = &args.application {
        match config.applications.get(app) {
            None => anyhow::bail!("--application {app:?} is not configured under [applications]"),
            Some(a) if a.dry_run => anyhow::bail!("--application {app:?} is dry_run: accessgov never reads it"),
            Some(_) => {}
        }
    }
    let connectors = match crate::connectors::build(config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return Ok(ExitCode::from(super::EXIT_CONFIG));
        }
    };
    if connectors.is_empty() {
        eprintln!("no live application: every application is dry_run, so there is nothing to read back");
        return Ok(ExitCode::SUCCESS);
    }
    // A bar on a terminal; otherwise a line per target read.
    let mut shown = super::output::Progress::new("reading", None, 1);
    let mut progress = |i: usize, n: usize, app: &str, target: &str| {
        if shown.on_terminal() {
            shown.set_total(n as u64);
            shown.set_message(format!("{app} / {target}"));
            shown.set(i.saturating_sub(1) as u64);
        } else {
            eprintln!("reading {i}/{n}: {app} / {target}");
        }
    };
    let broker = args.fix.then(|| {
        crate::broker::Broker::new(
            &config.broker.url,
            crate::broker::Names::new(&config.broker.prefix, &config.broker.retry_delays),
        )
    });
    let only = args.application.as_deref();
    let reports = reconcile::run(pool, config, &connectors, only, &operator, broker.as_ref(), &mut progress).await?;
    if shown.on_terminal() {
        shown.set(reports.len() as u64);
        shown.finish();
    }
    let missing = reconcile::count(&reports, |f| matches!(f, Finding::Missing { .. }));
    let unmanaged = reconcile::count(&reports, |f| matches!(f, Finding::Unmanaged { .. }));
    let unaddressable = reconcile::count(&reports, |f| matches!(f, Finding::Unaddressable { .. }));
    let unreadable = reports.iter().filter(|r| r.error.is_some()).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let mut t = Table::new(&["APPLICATION", "TARGET", "STATE", "USER", "DETAIL"]);
        for r in &reports {
            if let Some(e) = &r.error {
                t.row(vec![r.application.clone(), r.target.clone(), "unreadable".into(), "-".into(), e.clone()]);
                continue;
            }
            if r.findings.is_empty() {
                t.row(vec![
                    r.application.clone(),
                    r.target.clone(),
                    "in sync".into(),
                    "-".into(),
                    format!("{} member(s)", r.in_sync),
                ]);
            }
            for f in &r.findings {
                let (state, user, detail) = match f {
                    Finding::Missing { subject, identity, tickets, .. } => (
                        "missing",
                        subject.clone(),
                        format!("{identity} is held through {} but not a member", tickets.join(", ")),
                    ),
                    Finding::Unmanaged { member, keys, display } => (
                        "unmanaged",
                        display.clone().unwrap_or_else(|| member.clone()),
                        format!("a member no ticket accounts for ({})", keys.join(", ")),
                    ),
                    Finding::Unaddressable { subject, reason } => ("unaddressable", subject.clone(), reason.clone()),
                };
                t.row(vec![r.application.clone(), r.target.clone(), state.into(), user, detail]);
            }
        }
        print!("{}", t.render());
    }
    eprintln!(
        "{} target(s): {missing} missing, {unmanaged} unmanaged, {unaddressable} unaddressable, {unreadable} unreadable",
        reports.len()
    );
    if args.fix && missing > 0 {
        eprintln!(
            "{missing} repair(s) queued: the workers provision each missing membership again (audited `granted`); \
             run reconcile again to see the result"
        );
    }
    Ok(if missing + unmanaged + unaddressable + unreadable == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
