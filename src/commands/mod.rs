//! One function per CLI command. Errors here are `anyhow` and end up on stderr
//! with their context chain; exit codes are non-zero on failure.

mod audit;
pub mod connectors;
mod dlq;
mod grants;
mod jsm;
mod output;
mod roles;
mod simulate;

use crate::app::{self, App, Role};
use crate::cli::{Cli, Command, ConfigCommand};
use crate::config::{self, Config};
use crate::db;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&cli.config, &config::process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    match cli.command {
        Command::Config(ConfigCommand::Check) => Ok(config_check(&cli.config, &config)),
        Command::Migrate => migrate(&config).await,
        Command::Ingress(args) => serve(config, Role::Ingress, args.migrate).await,
        Command::Worker(args) => serve(config, Role::Worker, args.migrate).await,
        Command::All(args) => serve(config, Role::All, args.migrate).await,
        Command::Simulate(args) => simulate::run(&config, &args),
        Command::Dlq(cmd) => dlq::run(&config, cmd).await,
        Command::Audit(cmd) => audit::run(&config, cmd).await,
        Command::Grants(cmd) => grants::run(&config, cmd).await,
        Command::Connectors(cmd) => connectors::run(&config, cmd).await,
        Command::Roles(cmd) => roles::run(&config, cmd).await,
        Command::Jsm(cmd) => jsm::run(&config, cmd).await,
    }
}

fn config_check(path: &std::path::Path, config: &Config) -> ExitCode {
    let mut problems = config.check_secrets(&config::process_env);
    if let Err(more) = crate::connectors::build(config) {
        problems.extend(more);
    }
    if !problems.is_empty() {
        eprintln!("error: {} has {} problem(s):", path.display(), problems.len());
        for p in problems {
            eprintln!("  - {p}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    let jsm_credentials = crate::worker::jsm_client(config).is_some();
    if let Some(warning) = config.verify_approval_warning(jsm_credentials) {
        eprintln!("WARNING: {warning}");
    }
    if !jsm_credentials {
        let groups = config.rules.iter().any(|r| r.approvers.iter().any(|a| a.starts_with("group:")));
        let wb = &config.jsm.write_back;
        if groups {
            eprintln!(
                "warning: rules name group: approvers but JSM credentials (jsm.email_env, jsm.api_token_env) are not set: such entries match nobody"
            );
        }
        if config.rules.iter().any(|r| !r.stages.is_empty()) {
            eprintln!(
                "warning: rules have approval stages but JSM credentials are not set: stages are checked against the live JSM approvals, so such rules grant nothing"
            );
        }
        if wb.comment || wb.transition_on_success.is_some() || wb.transition_on_failure.is_some() {
            eprintln!(
                "warning: [jsm.write_back] is configured but JSM credentials are not set: nothing will be written back to tickets"
            );
        }
    }
    if config.jsm.projects.is_empty() {
        eprintln!(
            "warning: [jsm] projects is empty: events from every project whose request type has a mapped name are acted on; list your access project's key (projects = [\"ACC\"])"
        );
    }
    print!("{}", config.summary());
    println!("ok: {} is valid", path.display());
    ExitCode::SUCCESS
}

async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    let prepared = db::prepare(&config.database).await?;
    if prepared.applied.is_empty() {
        println!("database is up to date ({} migrations)", db::MIGRATOR.iter().count());
    } else {
        println!("applied {} migration(s): {:?}", prepared.applied.len(), prepared.applied);
    }
    if let (true, Some(from)) = (prepared.password_set, config.database.app_password()) {
        println!("set the password of role {} (from {})", db::RUNTIME_ROLE, from.describe());
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, role: Role, migrate: bool) -> anyhow::Result<ExitCode> {
    let verifier = match role {
        Role::Worker => None,
        Role::Ingress | Role::All => Some(app::verifier_from_env(&config)?),
    };
    let connectors = match crate::connectors::build(&config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let shutdown = crate::shutdown::on_signals();
    let app = App::start(Arc::new(config), role, verifier, connectors, migrate, shutdown).await?;
    app.wait().await?;
    Ok(ExitCode::SUCCESS)
}
