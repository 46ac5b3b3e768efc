//! `accessgov`: parse the command line, set up logging, dispatch. No logic here.

use accessgov::cli::Cli;
use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = accessgov::telemetry::init(cli.log_format, cli.command.service_name());
    let code = match accessgov::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(telemetry); // flushes the spans still batched
    code
}
