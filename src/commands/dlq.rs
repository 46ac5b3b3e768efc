//! `accessgov dlq list | show | replay | discard`: the dead-letter inbox.

use super::output::{self, Progress, Table};
use crate::broker::{Broker, Names};
use crate::cli::{DlqCommand, DlqListArgs, DlqReplayArgs};
use crate::config::{self, Config};
use crate::db;
use crate::dead_letters::{self, DeadLetter, Filter, Preview, ReplayError, StateFilter};
use crate::grants::ProviderOp;
use crate::operator::Operator;
use crate::rules::Decision;
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn run(config: &Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let pool = db::pool(&config.database.url, 2, &config.database.timeouts())?;
    let result = match cmd {
        DlqCommand::List(args) => list(&pool, &args).await,
        DlqCommand::Show { id, json } => show(&pool, id, json).await,
        DlqCommand::Replay(args) => replay(config, &pool, &args).await,
        DlqCommand::Discard { id, reason, operator } => {
            let operator =
                Operator::from_cli(operator.operator.as_deref(), &config::process_env).map_err(anyhow::Error::msg)?;
            let row = dead_letters::discard(&pool, id, &operator, &reason).await?;
            println!(
                "discarded dead letter {id} ({}) as {operator}: {}",
                output::opt(row.ticket.as_deref()),
                reason.trim()
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    pool.close().await;
    result
}

async fn list(pool: &sqlx::PgPool, args: &DlqListArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        application: args.application.clone(),
        error_class: args.error_class.clone(),
        since: args.since,
        state: args.state,
        limit: args.limit,
    };
    let rows = dead_letters::list(pool, &filter).await.context("reading dead_letters")?;
    if args.json {
        let items: Vec<_> = rows.iter().map(DeadLetter::view).collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    let with_state = args.state != StateFilter::Open;
    let mut headers = vec!["ID", "TICKET", "APPLICATION", "ACTION", "SUBJECT", "ERROR CLASS", "ATTEMPTS", "DIED AT"];
    if with_state {
        headers.push("STATE");
    }
    let mut table = Table::new(&headers);
    for r in &rows {
        let mut cells = vec![
            r.id.to_string(),
            output::opt(r.ticket.as_deref()),
            output::opt(r.application.as_deref()),
            output::opt(r.action.as_deref()),
            output::opt(r.subject.as_deref()),
            r.error_class.clone(),
            r.attempts.to_string(),
            output::time(r.died_at),
        ];
        if with_state {
            cells.push(r.state().as_str().to_owned());
        }
        table.row(cells);
    }
    print!("{}", table.render());
    eprintln!("{} dead letter(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}

async fn show(pool: &sqlx::PgPool, id: i64, json: bool) -> anyhow::Result<ExitCode> {
    let Some(r) = dead_letters::get(pool, id).await.context("reading dead_letters")? else {
        anyhow::bail!("dead letter {id} does not exist (see `accessgov dlq list --state all`)");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r.view())?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("dead letter {} ({})", r.id, r.state().as_str());
    let mut t = Table::new(&["", ""]);
    let mut field = |k: &str, v: String| t.row(vec![k.to_owned(), v]);
    field("ticket", output::opt(r.ticket.as_deref()));
    field("event", r.event_id.map_or_else(|| "-".into(), |e| e.to_string()));
    field("application", output::opt(r.application.as_deref()));
    field("action", output::opt(r.action.as_deref()));
    field("subject", output::opt(r.subject.as_deref()));
    field("error class", r.error_class.clone());
    field("attempts", r.attempts.to_string());
    field("deaths", r.deaths.to_string());
    field("first failed", output::opt_time(r.first_failed_at));
    field("died at", output::time(r.died_at));
    if let Some(at) = r.replayed_at {
        field("replayed", format!("{} by {}", output::time(at), output::opt(r.replayed_by.as_deref())));
    }
    if let Some(at) = r.discarded_at {
        field(
            "discarded",
            format!(
                "{} by {}: {}",
                output::time(at),
                output::opt(r.discarded_by.as_deref()),
                output::opt(r.discard_reason.as_deref())
            ),
        );
    }
    for line in t.render().lines().skip(1) {
        println!("  {line}");
    }
    println!("last error:\n  {}", r.last_error);
    println!("attempt history:");
    let mut h = Table::new(&["ATTEMPT", "AT", "CLASS", "ERROR"]);
    for a in r.attempt_history.as_array().into_iter().flatten() {
        let s =
            |k: &str| a.get(k).map_or_else(|| "-".into(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        h.row(vec![s("attempt"), s("at"), s("error_class"), s("error")]);
    }
    if h.is_empty() {
        println!("  (none recorded)");
    } else {
        for line in h.render().lines() {
            println!("  {line}");
        }
    }
    println!("message:");
    for line in serde_json::to_string_pretty(&r.message)?.lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Spaces publishes: at most `rate` per second overall, and at most an
/// application's `rate_limit_per_second` for its dead letters.
struct Pacer {
    every: Duration,
    next: Option<Instant>,
    apps: HashMap<String, (Duration, Option<Instant>)>,
}

fn interval(per_second: f64) -> Duration {
    Duration::from_secs_f64(1.0 / per_second)
}

impl Pacer {
    fn new(rate: f64, config: &Config) -> Self {
        let apps = config
            .applications
            .iter()
            .filter_map(|(name, app)| {
                let v = app.settings.get("rate_limit_per_second")?;
                let r = v.as_float().or_else(|| v.as_integer().map(|i| i as f64))?;
                (r.is_finite() && r > 0.0).then(|| (name.clone(), (interval(r), None)))
            })
            .collect();
        Self { every: interval(rate), next: None, apps }
    }

    /// When the next publish for `application` may go (and books it).
    fn reserve(&mut self, application: Option<&str>, now: Instant) -> Instant {
        let mut at = self.next.map_or(now, |n| n.max(now));
        let app = application.and_then(|a| self.apps.get_mut(a));
        if let Some((_, Some(n))) = &app {
            at = at.max(*n);
        }
        if let Some((every, next)) = app {
            *next = Some(at + *every);
        }
        self.next = Some(at + self.every);
        at
    }
}

async fn replay(config: &Config, pool: &sqlx::PgPool, args: &DlqReplayArgs) -> anyhow::Result<ExitCode> {
    let ids = if args.all {
        let filter = Filter {
            application: args.application.clone(),
            error_class: args.error_class.clone(),
            since: args.since,
            state: StateFilter::Open,
            limit: None,
        };
        dead_letters::ids(pool, &filter).await.context("reading dead_letters")?
    } else {
        args.ids.clone()
    };
    if args.dry_run {
        return dry_run(config, pool, &ids, args.json).await;
    }
    let operator =
        Operator::from_cli(args.operator.operator.as_deref(), &config::process_env).map_err(anyhow::Error::msg)?;
    if ids.is_empty() {
        eprintln!("no open dead letters match; nothing to replay");
        if args.json {
            println!("{}", json!({"replayed": [], "refused": [], "failed": null, "not_attempted": []}));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let broker = Broker::new(&config.broker.url, Names::new(&config.broker.prefix, &config.broker.retry_delays));
    let mut pacer = Pacer::new(args.rate, config);
    let mut progress = Progress::new("replayed", Some(ids.len() as u64), args.progress_every);
    let show_progress = args.all || ids.len() > 1;
    let mut replayed = Vec::new();
    let mut refused = Vec::new();
    let mut failed = None;
    let started = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        let application = match dead_letters::get(pool, id).await.context("reading dead_letters")? {
            Some(r) => r.application,
            None => None,
        };
        let at = pacer.reserve(application.as_deref(), Instant::now());
        tokio::time::sleep_until(at.into()).await;
        match dead_letters::replay(pool, &broker, id, &operator, args.force, config.broker.confirm_timeout).await {
            Ok(r) => {
                if !args.all && !args.json {
                    println!("replayed dead letter {id} ({}, event {})", r.ticket, r.event_id);
                }
                replayed.push(r);
            }
            Err(e @ (ReplayError::Publish { .. } | ReplayError::Db(_))) => {
                // The broker or the database is gone: the rest would fail the same way.
                progress.note(&format!("error: {e}"));
                failed = Some((id, e.to_string()));
                break;
            }
            Err(e) => {
                progress.note(&format!("refused: {e}"));
                refused.push((id, e.to_string()));
            }
        }
        if show_progress {
            progress.set(i as u64 + 1);
        }
    }
    if show_progress {
        progress.finish();
    }
    broker.close().await;
    let elapsed = started.elapsed();
    let attempted = replayed.len() + refused.len() + usize::from(failed.is_some());
    let not_attempted = &ids[attempted.min(ids.len())..];

    if args.json {
        let out = json!({
            "operator": operator.name,
            "replayed": replayed,
            "refused": refused.iter().map(|(id, e)| json!({"id": id, "error": e})).collect::<Vec<_>>(),
            "failed": failed.as_ref().map(|(id, e)| json!({"id": id, "error": e})),
            "not_attempted": not_attempted,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    eprintln!(
        "replayed {} of {} dead letter(s) as {operator} in {:.1}s{}{}",
        replayed.len(),
        ids.len(),
        elapsed.as_secs_f64(),
        if refused.is_empty() { String::new() } else { format!("; {} refused", refused.len()) },
        if not_attempted.is_empty() {
            String::new()
        } else {
            format!(
                "; stopped early, {} not attempted: run the same command again once the broker/database is back",
                not_attempted.len()
            )
        },
    );
    Ok(if refused.is_empty() && failed.is_none() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn describe(decision: &Decision) -> String {
    let targets = |t: &[String]| t.join(", ");
    match decision {
        Decision::Grant { application, access_level, targets: t, subject, approver, .. } => format!(
            "grant {application} {access_level:?} ({}) to {}, approved by {}",
            targets(t),
            subject.account_id,
            approver.account_id
        ),
        Decision::Change { application, access_level, targets: t, subject, approver, .. } => format!(
            "change {}'s {application} access to {access_level:?} ({}), approved by {}",
            subject.account_id,
            targets(t),
            approver.account_id
        ),
        Decision::Remove { application, access_level, targets: t, subject } => format!(
            "remove {} from {application} {access_level:?} ({}): memberships accessgov did not grant",
            subject.account_id,
            targets(t)
        ),
        Decision::Repair { application, access_level, targets: t, subject } => format!(
            "provision {application} {access_level:?} ({}) for {} again (a reconcile repair)",
            targets(t),
            subject.account_id
        ),
        Decision::Revoke { application, access_level, targets: t, subject, scope } => format!(
            "revoke {application} {access_level:?} ({}) from {} (scope: {})",
            targets(t),
            subject.account_id,
            serde_json::to_value(scope).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ),
        Decision::NoAction { reason } => format!("no action: {reason}"),
        Decision::Refused { reason } => format!("refused: {}", reason.message()),
    }
}

fn print_preview(p: &Preview) {
    println!(
        "dead letter {} ({}) {} event {}: would {}",
        p.dead_letter_id,
        p.state.as_str(),
        output::opt(p.ticket.as_deref()),
        p.event_id.map_or_else(|| "-".into(), |e| e.to_string()),
        p.would
    );
    if let Some(d) = &p.decision {
        println!("  decision: {}", describe(d));
    }
    if p.decision
        .as_ref()
        .is_some_and(|d| matches!(d, Decision::Grant { .. } | Decision::Change { .. } | Decision::Revoke { .. }))
    {
        let calls: Vec<String> = p
            .provider_calls
            .iter()
            .map(|op| match op {
                ProviderOp::Grant(t) => format!("grant {t}"),
                ProviderOp::Revoke(t) => format!("revoke {t}"),
            })
            .collect();
        let mode = if p.would == "dry_run" { " (recorded as dry_run; the application calls nothing)" } else { "" };
        println!("  provider calls: {}{mode}", if calls.is_empty() { "none".into() } else { calls.join("; ") });
    }
    for n in &p.notes {
        println!("  note: {}", serde_json::to_string(n).unwrap_or_default());
    }
    for r in &p.remarks {
        println!("  remark: {r}");
    }
}

async fn dry_run(config: &Config, pool: &sqlx::PgPool, ids: &[i64], json_out: bool) -> anyhow::Result<ExitCode> {
    let jsm = crate::worker::jsm_client(config);
    let mut previews = Vec::new();
    for &id in ids {
        let Some(row) = dead_letters::get(pool, id).await.context("reading dead_letters")? else {
            anyhow::bail!("dead letter {id} does not exist (see `accessgov dlq list --state all`)");
        };
        let groups = approver_groups(config, jsm.as_ref(), &row).await;
        let p = dead_letters::preview(pool, config, &row, groups.as_ref()).await.context("previewing a replay")?;
        if !json_out {
            print_preview(&p);
        }
        previews.push(p);
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&previews)?);
    }
    eprintln!("dry run: {} dead letter(s) previewed; nothing was published, marked or audited", previews.len());
    Ok(ExitCode::SUCCESS)
}

/// The approver's Jira groups when the rule needs them and JSM credentials are
/// configured (a read-only call, as the worker makes); `None` otherwise.
async fn approver_groups(
    config: &Config,
    jsm: Option<&crate::jsm::JsmClient>,
    row: &DeadLetter,
) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    let event = row.event().ok()?;
    let (app, level) = (event.application.as_ref()?, event.access_level.as_ref()?);
    let rule = config.rule_for(app, level)?;
    let mut out = std::collections::BTreeMap::new();
    if !rule.approvers.iter().any(|a| a.starts_with("group:")) {
        return Some(out);
    }
    for person in crate::rules::approver_candidates(&event) {
        out.insert(person.account_id.clone(), jsm?.user_groups(&person.account_id).await.ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spaces_publishes_globally_and_per_application() {
        let mut config = Config::parse(include_str!("../../accessgov.example.toml")).unwrap();
        config
            .applications
            .get_mut("Okta")
            .unwrap()
            .settings
            .insert("rate_limit_per_second".into(), toml::Value::Integer(2));
        let mut p = Pacer::new(10.0, &config);
        let t0 = Instant::now();
        assert_eq!(p.reserve(Some("Okta"), t0), t0);
        // Confluence has no own limit: the global 10/s applies.
        assert_eq!(p.reserve(Some("Confluence"), t0), t0 + Duration::from_millis(100));
        // Okta's 2/s: 500 ms after its previous slot.
        assert_eq!(p.reserve(Some("Okta"), t0), t0 + Duration::from_millis(500));
        assert_eq!(p.reserve(None, t0), t0 + Duration::from_millis(600));
        // Time that passed is not made up for with a burst.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.reserve(None, later), later);
        assert_eq!(p.reserve(None, later), later + Duration::from_millis(100));
    }
}
