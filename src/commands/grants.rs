//! `accessgov grants list`: the ledger.

use super::output::{self, Table};
use crate::cli::{GrantsCommand, GrantsListArgs};
use crate::config::Config;
use crate::db;
use crate::grants::list::{self, Filter};
use anyhow::Context;
use std::process::ExitCode;

pub async fn run(config: &Config, cmd: GrantsCommand) -> anyhow::Result<ExitCode> {
    let pool = db::pool(&config.database.url, 2, &config.database.timeouts())?;
    let result = match cmd {
        GrantsCommand::List(args) => list(&pool, &args).await,
    };
    pool.close().await;
    result
}

async fn list(pool: &sqlx::PgPool, args: &GrantsListArgs) -> anyhow::Result<ExitCode> {
    let expiring_before = match args.expiring_within {
        None => None,
        Some(d) => Some(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .context("--expiring-within is too large (at most 3650d)")?,
        ),
    };
    let filter = Filter {
        subject: args.subject.clone(),
        application: args.application.clone(),
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
