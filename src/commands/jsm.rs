//! `accessgov jsm check` and `accessgov jsm sync-options`: the JSM site against the config.
//! The reads, writes and decisions live in [`crate::jsm::setup`]; here are the credentials, the
//! output (table or JSON) and the exit codes.

use super::output::Table;
use crate::cli::JsmCommand;
use crate::config::Config;
use crate::config::secret::SecretRef;
use crate::jsm::JsmClient;
use crate::jsm::setup::{self, ChangeKind, ContextPlan, Level, Report};
use std::process::ExitCode;
use std::time::Duration;

/// The client never resolves groups here; any TTL will do.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(60);

pub async fn run(config: &Config, cmd: JsmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JsmCommand::Check { json } => Ok(check(config, json).await),
        JsmCommand::SyncOptions { dry_run, json } => Ok(sync_options(config, dry_run, json).await),
    }
}

/// A client from `[jsm]` credentials; `Err` names the missing or unreadable key (never a value).
fn client(config: &Config) -> Result<JsmClient, String> {
    let jsm = &config.jsm;
    let email = SecretRef::from_pair(jsm.email_env.as_deref(), jsm.email_file.as_deref());
    let token = config.jsm_api_token();
    let (email, token) = match (email, token) {
        (Some(e), Some(t)) => (e, t),
        (e, t) => {
            let missing: Vec<&str> = [
                e.is_none().then_some("jsm.email_env (or email_file)"),
                t.is_none().then_some("jsm.api_token_env (or api_token_file)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            return Err(format!("JSM credentials are not configured: {} not set", missing.join(" and ")));
        }
    };
    let email = email.resolve().map_err(|e| format!("jsm.email: {e}"))?;
    let token = token.resolve().map_err(|e| format!("jsm.api_token: {e}"))?;
    Ok(JsmClient::new(&jsm.base_url, email, token, GROUP_CACHE_TTL))
}

async fn check(config: &Config, json: bool) -> ExitCode {
    let report = match client(config) {
        Ok(client) => {
            eprintln!("reading {} …", config.jsm.base_url);
            let facts = setup::collect_facts(&client, config).await;
            setup::check(config, &facts)
        }
        Err(message) => setup::credentials_problem(&message),
    };
    if json {
        let v = serde_json::json!({
            "ok": report.problems() == 0,
            "problems": report.problems(),
            "warnings": report.warnings(),
            "rows": report.rows,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", render_report(&report));
    }
    let (problems, warnings) = (report.problems(), report.warnings());
    if problems > 0 {
        eprintln!("{problems} problem(s), {warnings} warning(s): fix the rows marked PROBLEM and run the check again");
        ExitCode::FAILURE
    } else {
        eprintln!("ok: {} check(s) passed, {warnings} warning(s)", report.rows.len() - warnings);
        ExitCode::SUCCESS
    }
}

/// The checklist as a table: CHECK, SUBJECT, RESULT, FIX.
pub fn render_report(report: &Report) -> String {
    let mut table = Table::new(&["CHECK", "SUBJECT", "RESULT", "FIX"]);
    for r in &report.rows {
        let result = match r.level {
            Level::Ok => format!("ok: {}", r.result),
            Level::Warning => format!("WARNING: {}", r.result),
            Level::Problem => format!("PROBLEM: {}", r.result),
        };
        table.row(vec![r.check.to_owned(), r.subject.clone(), result, r.fix.clone().unwrap_or_else(|| "-".into())]);
    }
    table.render()
}

async fn sync_options(config: &Config, dry_run: bool, json: bool) -> ExitCode {
    let client = match client(config) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let plans = match setup::plan_sync(&client, config, &mut |line| eprintln!("{line}")).await {
        Ok(p) => p,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let total: usize = plans.iter().map(|p| p.changes.len()).sum();
    if !json {
        print!("{}", render_plans(&plans));
    }
    let mut applied = 0;
    let mut failure = None;
    if !dry_run {
        for plan in plans.iter().filter(|p| !p.changes.is_empty()) {
            eprintln!("{} context {}: making {} change(s)…", plan.field_id, plan.context.id, plan.changes.len());
            match setup::apply_plan(&client, plan).await {
                Ok(n) => applied += n,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
    }
    if json {
        let v = serde_json::json!({
            "dry_run": dry_run,
            "changes": total,
            "applied": applied,
            "error": failure,
            "contexts": plans,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    if let Some(e) = failure {
        eprintln!(
            "error: {e}\n{applied} of {total} change(s) made; run `accessgov jsm sync-options` again to make the rest"
        );
        return ExitCode::FAILURE;
    }
    if total == 0 {
        eprintln!("ok: the select lists already match the config");
    } else if dry_run {
        eprintln!("dry run: {total} change(s) would be made; nothing was changed");
    } else {
        eprintln!("ok: {applied} change(s) made");
    }
    ExitCode::SUCCESS
}

/// The diff as a table: FIELD, CONTEXT, OPTION, CHANGE (cascading children as `parent -> child`).
pub fn render_plans(plans: &[ContextPlan]) -> String {
    let mut table = Table::new(&["FIELD", "CONTEXT", "OPTION", "CHANGE"]);
    for p in plans {
        for c in &p.changes {
            let option = match &c.parent {
                Some(parent) => format!("{parent} -> {}", c.value),
                None => c.value.clone(),
            };
            let change = match &c.change {
                ChangeKind::Add => "add".to_owned(),
                ChangeKind::Disable => "disable".to_owned(),
                ChangeKind::Enable => "enable".to_owned(),
                ChangeKind::Rename { from } => format!("rename from {from:?}"),
            };
            table.row(vec![
                format!("{} ({})", p.field, p.field_id),
                format!("{} ({})", p.context.name, p.context.id),
                option,
                change,
            ]);
        }
    }
    if table.is_empty() { String::new() } else { table.render() }
}
