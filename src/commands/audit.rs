//! `accessgov audit list | verify | export`.

use super::output::{self, Progress, Table};
use crate::audit::{self, query};
use crate::cli::{AuditCommand, AuditExportArgs, AuditListArgs};
use crate::config::Config;
use crate::db;
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

pub async fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let pool = db::pool(&config.database.url, 2, &config.database.timeouts())?;
    let result = match cmd {
        AuditCommand::List(args) => list(&pool, &args).await,
        AuditCommand::Verify { since_seq } => verify(&pool, since_seq).await,
        AuditCommand::Export(args) => export(&pool, &args).await,
    };
    pool.close().await;
    result
}

async fn list(pool: &sqlx::PgPool, args: &AuditListArgs) -> anyhow::Result<ExitCode> {
    let filter = query::Filter {
        ticket: args.ticket.clone(),
        subject: args.subject.clone(),
        application: args.application.clone(),
        action: args.action.clone(),
        since: args.since,
        until: args.until,
        since_seq: None,
        before_seq: args.before_seq,
    };
    let limit = (args.limit > 0).then_some(args.limit);
    let rows = query::list(pool, &filter, limit).await.context("reading audit_log")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["SEQ", "AT", "TICKET", "ACTION", "OUTCOME", "APPLICATION", "SUBJECT", "TARGET", "ACTOR"]);
    for r in &rows {
        t.row(vec![
            r.seq.to_string(),
            output::time(r.at),
            output::opt(r.ticket.as_deref()),
            r.action.clone(),
            r.outcome.clone(),
            output::opt(r.application.as_deref()),
            output::opt(r.subject.as_deref()),
            output::opt(r.target.as_deref()),
            output::opt(r.actor.as_deref()),
        ]);
    }
    print!("{}", t.render());
    let more = limit.is_some_and(|l| rows.len() as i64 == l);
    eprintln!(
        "{} row(s){}",
        rows.len(),
        if more { " (the newest; raise --limit, or page back with --before-seq)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn verify(pool: &sqlx::PgPool, since_seq: i64) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new("rows checked", None, 100_000);
    let report =
        audit::verify::verify(pool, since_seq, 10_000, |n| progress.set(n)).await.context("reading audit_log")?;
    progress.finish();
    // Recorded for /metrics (accessgov_audit_verify_ok) and the console, by whoever ran it.
    let env = |k: &str| std::env::var(k).ok();
    let actor = crate::operator::Operator::from_cli(env("ACCESSGOV_OPERATOR").as_deref(), &env)
        .map_or_else(|_| "cli".to_owned(), |o| o.name);
    if let Err(e) = audit::verify::record_run(pool, &actor, since_seq, &report).await {
        eprintln!("warning: the verification could not be recorded in audit_verify_runs: {e}");
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(match report.first_broken {
        None => {
            eprintln!("ok: {} row(s) checked, chain intact", report.rows_checked);
            ExitCode::SUCCESS
        }
        Some(b) => {
            eprintln!("BROKEN at seq {}: {}", b.seq, b.reason);
            ExitCode::FAILURE
        }
    })
}

async fn export(pool: &sqlx::PgPool, args: &AuditExportArgs) -> anyhow::Result<ExitCode> {
    let filter =
        query::Filter { since: args.since, until: args.until, since_seq: args.since_seq, ..Default::default() };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            256 * 1024,
            std::fs::File::create(path).with_context(|| format!("cannot create -o {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout())),
    };
    // No counter when the rows themselves go to the terminal.
    let show = args.output.is_some() || !std::io::stdout().is_terminal();
    let mut progress = Progress::new("rows exported", None, 100_000);
    let n = query::export(pool, &filter, args.format, &mut out, |n| {
        if show && n.is_multiple_of(1000) {
            progress.set(n);
        }
    })
    .await?;
    drop(out);
    if show {
        progress.finish();
    }
    eprintln!(
        "exported {n} row(s){}",
        args.output.as_ref().map(|p| format!(" to {}", p.display())).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
