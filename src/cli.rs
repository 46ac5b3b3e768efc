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
                  (workers scale horizontally). Every command reads one TOML config file.\n\n\
                  Each of them also runs the ops listener ([ops] listen, default 127.0.0.1:9090): /metrics, \
                  /healthz, /readyz, and the admin API under /admin (dead letters, audit, grants; JSON, \
                  Authorization: Bearer <admin token>). The admin API is enabled exactly when [ops] \
                  admin_token_env or admin_token_file is set; a process whose admin token is configured but \
                  cannot be read refuses to start. The operator web console under /console is enabled exactly \
                  when [ops] console_viewer_token_env / console_operator_token_env (or their _file forms) is \
                  set (README: Operator console). Operators use `dlq`, `audit` and `grants` on the command line.",
    propagate_version = true
)]
pub struct Cli {
    /// Config file.
    #[arg(long, short = 'c', global = true, env = "ACCESSGOV_CONFIG", default_value = "accessgov.toml")]
    pub config: PathBuf,

    /// Log format on stderr (level via RUST_LOG, default info). The container
    /// image sets `json`: one object per line, with trace and span ids.
    #[arg(long, global = true, value_enum, env = "ACCESSGOV_LOG_FORMAT", default_value = "pretty")]
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
    /// Dead letters (requests that could not be completed): list, show, replay, discard.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Audit trail: list, verify the hash chain, export.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The grants ledger: who holds what, through which tickets.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Provider connections: test that each application's credentials work.
    #[command(subcommand)]
    Connectors(ConnectorsCommand),
    /// Birthright roles ([[roles]]): what onboarding someone into a role would change.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Jira Service Management setup: check the site against the config, keep the select lists in step.
    #[command(subcommand)]
    Jsm(JsmCommand),
}

impl Command {
    /// The service name of this process in traces (unless `OTEL_SERVICE_NAME` is set).
    pub fn service_name(&self) -> &'static str {
        match self {
            Self::Ingress(_) => "accessgov-ingress",
            Self::Worker(_) => "accessgov-worker",
            Self::All(_) => "accessgov",
            _ => "accessgov-cli",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JsmCommand {
    /// Check the JSM site against everything the config names (the troubleshooting checklist)
    ///
    /// Reads the site with the [jsm] credentials; changes nothing.
    ///
    /// One table row per check (check, subject, result, fix):
    ///   - credentials: jsm.email_* and jsm.api_token_* are set and the site accepts them
    ///     (when they are missing, that is the only row);
    ///   - project: each [jsm] projects key exists (empty: a warning, and only fields are checked);
    ///   - request type: each [jsm.request_types] name exists in the project's service desk,
    ///     exactly (the ingress matches it exactly);
    ///   - field: each [jsm.fields] id exists and has the expected type: request_type JSM Request
    ///     Type (vp-origin); application, access_level single select; approvals JSM Approvals;
    ///     approvers multi-user picker; approver_groups multi-group picker; application_access
    ///     cascading select; approver, requester and every rule's field:<id> a user picker (or
    ///     assignee/reporter); duration, department and each application's subject_field exist
    ///     (type shown);
    ///   - status: each [jsm.statuses] name and rule stage status is a workflow status of the
    ///     project, ignoring case as the ingress does; a misspelled one lists the closest names;
    ///   - write-back: [jsm.write_back] transition_on_success/failure/invalid name a status of the
    ///     project (a transition name can only be checked on a ticket: not found is a warning);
    ///   - permission: the account's BROWSE_PROJECTS, EDIT_ISSUES, ADD_COMMENTS and
    ///     TRANSITION_ISSUES in each project (missing but unneeded by the config: a warning).
    ///
    /// Exits 0 when every check passes (warnings allowed), 1 on any problem, 2 when the config
    /// is invalid.
    #[command(verbatim_doc_comment)]
    Check {
        /// Print the rows as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the Application and Access Type select lists offer exactly the configured
    /// values, in every context of each field.
    ///
    /// Application ([jsm.fields] application) gets the [applications] keys; Access Type
    /// (access_level) gets every rule's access_level; when [jsm.fields] application_access
    /// is set, that cascading select gets each application as a parent option and that
    /// application's rules' access levels as its children. Missing options are added,
    /// options no longer configured are disabled, configured options that are disabled
    /// are enabled again, and an application option that differs only in case is
    /// renamed. Options are never deleted: old tickets keep their value.
    ///
    /// Prints the diff (field, context, option, change) and then makes it, with progress
    /// on stderr. Needs the Administer Jira global permission. Running it again after a
    /// failure makes only the remaining changes. Exits 0 when the lists are in sync
    /// (or, with --dry-run, after printing the diff), 1 when a read or write failed,
    /// 2 when the config is invalid or the JSM credentials are missing.
    SyncOptions {
        /// Print the changes and make none.
        #[arg(long)]
        dry_run: bool,
        /// Print the changes as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// What an onboarding of USER into ROLE would do, touching nothing: the role's
    /// items to grant, and for someone onboarded before (a mover) the items kept,
    /// the items only the old role gave (revoked) and those left in place.
    Plan {
        /// The person (JSM account id).
        #[arg(long)]
        user: String,
        /// The role: a [[roles]] department value.
        #[arg(long)]
        role: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// The "Test Connection" button: for each configured application (or APP),
    /// authenticate and make the provider's cheapest read call; print a table of
    /// application, kind, result, latency and the usual fix. Dry-run applications
    /// are skipped. Exits 1 when any live application fails. Each live
    /// application's result is recorded (the `connection_tests` table and a
    /// `connection_tested` audit row with the operator) for the console's
    /// overview; when the database cannot be reached it says so and still exits
    /// by the test's result.
    Test {
        /// Only this application (a key of [applications]).
        app: Option<String>,
        #[command(flatten)]
        operator: OperatorArg,
    },
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

/// The acting operator, recorded as the audit actor of replays and discards.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArg {
    /// Who is acting (recorded in the audit trail). Default: the OS user ($USER, $LOGNAME).
    #[arg(long, env = "ACCESSGOV_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (open ones unless --state says otherwise) as a table, or JSON.
    List(DlqListArgs),
    /// Show one dead letter: the event, the full attempt history and the last error.
    Show {
        /// Dead letter id (see `dlq list`).
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters' original events (fresh attempt count) for the workers
    /// to process again, mark them replayed and audit each replay with the operator.
    ///
    /// A dead letter already replayed (or discarded) is refused unless --force; the
    /// worker deduplicates by event id either way, so nothing is provisioned twice.
    /// Unreadable (poison) messages cannot be replayed. Publishing is paced by --rate
    /// and by each application's rate_limit_per_second. On a terminal a progress bar
    /// shows progress; otherwise a line every --progress-every dead letters.
    /// Exits 1 when any replay was refused or failed.
    Replay(DlqReplayArgs),
    /// Close a dead letter without replaying it; the reason is audited.
    Discard {
        /// Dead letter id.
        id: i64,
        /// Why it is closed (kept in the dead letter and the audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        operator: OperatorArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct DlqListArgs {
    /// Only this application.
    #[arg(long)]
    pub application: Option<String>,
    /// Only this error class (transient, permanent, not_found, unauthorized, poison, ...).
    #[arg(long)]
    pub error_class: Option<String>,
    /// Died at or after T: RFC 3339, a date (2026-01-31) or a duration ago (24h, 7d).
    #[arg(long, value_name = "T", value_parser = crate::operator::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Which dead letters.
    #[arg(long, value_enum, default_value = "open")]
    pub state: crate::dead_letters::StateFilter,
    /// At most N rows (oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct DlqReplayArgs {
    /// Dead letter ids.
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,
    /// Every open dead letter (narrow with --application, --error-class, --since).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// With --all: only this application.
    #[arg(long, requires = "all")]
    pub application: Option<String>,
    /// With --all: only this error class.
    #[arg(long, requires = "all")]
    pub error_class: Option<String>,
    /// With --all: only dead letters that died at or after T (RFC 3339, date, or 24h / 7d ago).
    #[arg(long, value_name = "T", requires = "all", value_parser = crate::operator::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Print, for each, what the worker would do now under the current config and
    /// ledger (the decision and the provider calls); publish, mark and audit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay even a dead letter that was already replayed or discarded.
    #[arg(long)]
    pub force: bool,
    /// At most N replays per second (each application's rate_limit_per_second also applies).
    #[arg(long, value_name = "N", default_value_t = 50.0, value_parser = positive_rate)]
    pub rate: f64,
    /// On a non-terminal, print a progress line every N dead letters.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub progress_every: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub operator: OperatorArg,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number of replays per second")),
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit rows (the newest --limit matching rows, oldest first) as a table, or JSON.
    List(AuditListArgs),
    /// Recompute the audit hash chain; report rows checked and the first broken row.
    /// On a terminal a spinner counts the rows checked; otherwise a line every 100000.
    /// Exits 1 when the chain is broken.
    Verify {
        /// Start at this sequence number (its prev_hash is taken as given).
        #[arg(long, default_value_t = 1)]
        since_seq: i64,
    },
    /// Stream audit rows, with their chain hashes (prev_hash, hash), as JSON Lines or CSV,
    /// in sequence order; memory stays flat at any size. The README shows how to
    /// re-verify an export offline. Rows exported are counted on stderr (a spinner on a
    /// terminal, otherwise a line every 100000), unless the rows go to the terminal.
    Export(AuditExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct AuditListArgs {
    /// Only rows of this ticket (e.g. ACC-42).
    #[arg(long, value_name = "KEY")]
    pub ticket: Option<String>,
    /// Only rows about this user (account id).
    #[arg(long, visible_alias = "user", value_name = "U")]
    pub subject: Option<String>,
    /// Only this application.
    #[arg(long)]
    pub application: Option<String>,
    /// Only this action (received, decided, granted, replayed, discarded, admin_call, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// At or after T: RFC 3339, a date (2026-01-31) or a duration ago (24h, 7d).
    #[arg(long, value_name = "T", value_parser = crate::operator::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before T (same forms as --since).
    #[arg(long, value_name = "T", value_parser = crate::operator::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// At most N rows, the newest ones (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: i64,
    /// Only rows older than this sequence number: the next page back (keyset
    /// paging: pass the oldest SEQ of the page shown).
    #[arg(long, value_name = "SEQ")]
    pub before_seq: Option<i64>,
    /// Print JSON (with the chain hashes) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AuditExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub format: crate::audit::query::Format,
    /// At or after T: RFC 3339, a date (2026-01-31) or a duration ago (24h, 7d).
    #[arg(long, value_name = "T", value_parser = crate::operator::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before T (same forms as --since).
    #[arg(long, value_name = "T", value_parser = crate::operator::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Start at this sequence number.
    #[arg(long, value_name = "N")]
    pub since_seq: Option<i64>,
    /// Write to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// The ledger: who holds what, through which tickets, since when, until when
    /// (one table line per ticket hold), or JSON.
    List(GrantsListArgs),
    /// Drift: read back every managed target of every live application (its rules'
    /// groups or permission levels, and anything the ledger holds) and compare it
    /// with the ledger. `missing`: a ticket holds the access but the provider does
    /// not list the user (removed by hand, undone by an IdP sync); `unmanaged`: a
    /// member no ticket accounts for. Without --fix it only reads. Prints a table (or
    /// --json), with progress on stderr (a bar on a terminal, otherwise a line per
    /// target read), and audits the run (`reconciled`, with its
    /// counts and the operator). Exits 0 when everything is in sync, 1 when drift was
    /// found or a target could not be read.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Only this application (a key of [applications]; dry-run applications are never read).
    #[arg(long)]
    pub application: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Provision every missing membership again, through the workers (one repair
    /// event each on the request queue: intents, retries, dead letters, audit rows),
    /// and remove unmanaged members from the targets of rules with `exclusive = true`
    /// the same way. Other unmanaged members are only reported.
    #[arg(long)]
    pub fix: bool,
    #[command(flatten)]
    pub operator: OperatorArg,
}

#[derive(Debug, clap::Args)]
pub struct GrantsListArgs {
    /// Only this user (account id).
    #[arg(long, visible_alias = "user", value_name = "U")]
    pub subject: Option<String>,
    /// Only this application.
    #[arg(long)]
    pub application: Option<String>,
    /// Only holds that expire within D (e.g. 7d, 12h).
    #[arg(long, value_name = "D", value_parser = crate::config::duration::parse)]
    pub expiring_within: Option<std::time::Duration>,
    /// Which grants.
    #[arg(long, value_enum, default_value = "active")]
    pub state: crate::grants::list::StateFilter,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
