//! The command line: one binary, one subcommand per job.

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "accessgov",
    version,
    about = "Access governance for Jira Service Management: approved JSM access requests in, audited grants and revokes out.",
    long_about = "accessgov turns approved Jira Service Management access requests into group memberships \
                  and permissions in your applications, with an append-only, hash-chained audit trail.\n\n\
                  Run `accessgov all` for a single-process install, or `ingress` and `worker` separately \
                  (workers scale horizontally). Every command reads one TOML config file.",
    propagate_version = true
)]
pub struct Cli {
    /// Config file.
    #[arg(long, short = 'c', global = true, env = "ACCESSGOV_CONFIG", default_value = "accessgov.toml")]
    pub config: PathBuf,

    /// Log format on stderr (level via RUST_LOG, default info).
    #[arg(long, global = true, value_enum, env = "ACCESSGOV_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve POST /webhooks/jsm: verify, normalize, publish to RabbitMQ (plus the ops listener).
    Ingress(RunArgs),
    /// Consume access events: decide, apply (or dry-run), audit, ack (plus the ops listener).
    Worker(RunArgs),
    /// Ingress and worker in one process, for small installs.
    All(RunArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Normalize and evaluate a webhook body offline and print the outcome as JSON; touches nothing.
    Simulate(SimulateArgs),
    /// Audit trail commands.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Apply pending database migrations before starting.
    #[arg(long)]
    pub migrate: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file and the secrets it references; print a summary.
    /// Exits non-zero and names the offending key when something is wrong.
    Check,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The webhook body (JSON) as JSM or Automation would send it.
    #[arg(long)]
    pub event: PathBuf,
    /// A request header, e.g. 'X-Hub-Signature: sha256=...'. When any header is
    /// given, authentication is checked exactly as the ingress does.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit hash chain; report rows checked and the first broken row.
    /// Exits 1 when the chain is broken.
    Verify {
        /// Start at this sequence number (its prev_hash is taken as given).
        #[arg(long, default_value_t = 1)]
        since_seq: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_well_formed() {
        Cli::command().debug_assert();
    }
}
