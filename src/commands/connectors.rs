//! `accessgov connectors test [APP]`: the "Test Connection" button. For each
//! configured application (or the one named), build its connector, authenticate
//! and make the provider's cheapest read call, and print a table with the
//! result, the latency and the usual fix for the error class. Dry-run
//! applications are skipped (they never call their provider). Exits 1 when any
//! live application fails, 2 for an unknown application name.

use super::output::Table;
use crate::cli::ConnectorsCommand;
use crate::config::{ApplicationConfig, Config};
use crate::connectors::ConnectorError;
use crate::operator::{Operator, Via};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Longest a single application's test may take (its requests have their own timeouts too).
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(config: &Config, cmd: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectorsCommand::Test { app, operator } => {
            let rows = match test(config, app.as_deref()).await {
                Ok(rows) => rows,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(super::EXIT_CONFIG));
                }
            };
            print!("{}", render(&rows));
            record(config, &rows, operator.operator.as_deref()).await;
            let failed = rows.iter().filter(|r| r.failed()).count();
            let live = rows.iter().filter(|r| !matches!(r.result, Outcome::Skipped)).count();
            if failed > 0 {
                eprintln!("{failed} of {live} live application(s) failed the connection test");
                Ok(ExitCode::FAILURE)
            } else {
                eprintln!("ok: {live} live application(s) connected");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Records the live applications' results for the console's overview
/// ([`crate::connection_tests`]). A database that cannot be reached is reported,
/// not fatal: the test itself is what the exit code tells.
async fn record(config: &Config, rows: &[Row], operator: Option<&str>) {
    if rows.iter().all(|r| matches!(r.result, Outcome::Skipped)) {
        return;
    }
    let operator = Operator::from_cli(operator, &crate::config::process_env)
        .unwrap_or_else(|_| Operator { name: "unknown".into(), via: Via::Cli });
    let recorded = async {
        let pool = crate::db::pool(&config.database.url, 1, &config.database.timeouts())?;
        let result = crate::connection_tests::record(&pool, rows, &operator).await;
        pool.close().await;
        result.map_err(anyhow::Error::from)
    };
    if let Err(e) = recorded.await {
        eprintln!("warning: the results were not recorded for the console ({e:#})");
    }
}

/// What happened to one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `dry_run = true`: no provider is ever called.
    Skipped,
    /// The connector could not be built from the config (missing secret, bad key, ...).
    Config(String),
    /// The provider call failed.
    Failed(ConnectorError),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub application: String,
    pub kind: &'static str,
    pub result: Outcome,
    pub latency: Option<Duration>,
}

impl Row {
    pub fn failed(&self) -> bool {
        matches!(self.result, Outcome::Config(_) | Outcome::Failed(_))
    }

    fn result_text(&self) -> String {
        match &self.result {
            Outcome::Ok => "ok".into(),
            Outcome::Skipped => "skipped (dry_run)".into(),
            Outcome::Config(_) => "FAILED config".into(),
            Outcome::Failed(e) => format!("FAILED {}", e.class()),
        }
    }

    /// The usual fix for the failure's class.
    pub fn fix(&self) -> &'static str {
        match &self.result {
            Outcome::Ok | Outcome::Skipped => "-",
            Outcome::Config(_) => "fix the application's keys or secrets (see `accessgov config check`)",
            Outcome::Failed(e) => match e {
                ConnectorError::Unauthorized(_) => "check the token/secret and its scopes/permissions",
                ConnectorError::NotFound { .. } => "check base_url/tenant/org",
                ConnectorError::Transient { .. } => "provider or network down (or rate-limited), retry",
                ConnectorError::Permanent { .. } => "see the error below",
            },
        }
    }

    fn detail(&self) -> Option<String> {
        match &self.result {
            Outcome::Config(m) => Some(m.clone()),
            Outcome::Failed(e) => Some(e.to_string()),
            Outcome::Ok | Outcome::Skipped => None,
        }
    }
}

/// Tests every configured application, or only `only`. `Err` names the
/// configured applications when `only` is not one of them.
pub async fn test(config: &Config, only: Option<&str>) -> Result<Vec<Row>, String> {
    let apps: Vec<(&String, &ApplicationConfig)> = match only {
        Some(name) => match config.applications.get_key_value(name) {
            Some(pair) => vec![pair],
            None => {
                let names: Vec<&str> = config.applications.keys().map(String::as_str).collect();
                return Err(format!(
                    "no application named {name:?} is configured (configured: {})",
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                ));
            }
        },
        None => config.applications.iter().collect(),
    };
    Ok(futures_util::future::join_all(apps.into_iter().map(|(name, app)| test_one(name, app))).await)
}

async fn test_one(name: &str, app: &ApplicationConfig) -> Row {
    let row = |result, latency| Row { application: name.to_owned(), kind: app.kind.as_str(), result, latency };
    if app.dry_run {
        return row(Outcome::Skipped, None);
    }
    let connector = match crate::connectors::build_one(name, app) {
        Ok(c) => c,
        Err(message) => return row(Outcome::Config(message), None),
    };
    let start = Instant::now();
    let test = crate::metrics::provider_scope(name, "test", connector.test_connection());
    let result = match tokio::time::timeout(TEST_TIMEOUT, test).await {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(ConnectorError::Transient {
            reason: format!("no answer within {}s", TEST_TIMEOUT.as_secs()),
            retry_after: None,
        }),
    };
    row(result, Some(start.elapsed()))
}

/// The table, then one line per failure with the provider's own message.
pub fn render(rows: &[Row]) -> String {
    let mut table = Table::new(&["APPLICATION", "KIND", "RESULT", "LATENCY", "FIX"]);
    for r in rows {
        table.row(vec![
            r.application.clone(),
            r.kind.to_owned(),
            r.result_text(),
            r.latency.map_or_else(|| "-".into(), latency),
            r.fix().to_owned(),
        ]);
    }
    let mut out = table.render();
    let details: Vec<String> =
        rows.iter().filter_map(|r| r.detail().map(|d| format!("  {}: {}", r.application, d))).collect();
    if !details.is_empty() {
        out.push_str("\nerrors:\n");
        for d in details {
            out.push_str(&d);
            out.push('\n');
        }
    }
    out
}

fn latency(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", d.as_millis()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn config(apps: &[(&str, String)]) -> Config {
        let mut config = Config::parse(include_str!("../../accessgov.example.toml")).unwrap();
        config.applications.clear();
        for (name, text) in apps {
            config.applications.insert((*name).to_owned(), toml::from_str(text).unwrap());
        }
        config
    }

    #[tokio::test]
    async fn live_applications_are_tested_and_dry_run_ones_skipped() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/users/me"))
            .and(header("authorization", "SSWS good-token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "00u1"})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/users/me"))
            .and(header("authorization", "SSWS bad-token"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(
                    serde_json::json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided"}),
                ),
            )
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good"), "good-token").unwrap();
        std::fs::write(dir.path().join("bad"), "bad-token").unwrap();
        let okta = |file: &str| {
            format!(
                "kind = \"okta\"\nbase_url = \"{}\"\ntoken_file = \"{}/{file}\"",
                server.uri(),
                dir.path().display()
            )
        };
        let config = config(&[
            ("Okta good", okta("good")),
            ("Okta revoked", okta("bad")),
            ("Okta no secret", okta("missing")),
            ("Jira", "kind = \"jira\"\ndry_run = true".into()),
        ]);

        let rows = test(&config, None).await.unwrap();
        let by_name = |n: &str| rows.iter().find(|r| r.application == n).unwrap();
        assert_eq!(by_name("Okta good").result, Outcome::Ok);
        assert!(by_name("Okta good").latency.is_some());
        assert_eq!(by_name("Jira").result, Outcome::Skipped);
        assert!(!by_name("Jira").failed());
        let revoked = by_name("Okta revoked");
        assert!(matches!(&revoked.result, Outcome::Failed(ConnectorError::Unauthorized(_))), "{revoked:?}");
        assert_eq!(revoked.fix(), "check the token/secret and its scopes/permissions");
        assert!(matches!(&by_name("Okta no secret").result, Outcome::Config(m) if m.contains("token")));

        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("APPLICATION") && lines[0].contains("KIND  RESULT") && lines[0].ends_with("FIX"),
            "{text}"
        );
        assert!(lines.iter().any(|l| l.starts_with("Jira ") && l.contains("skipped (dry_run)")), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("Okta revoked") && l.contains("FAILED unauthorized")), "{text}");
        assert!(
            text.contains("errors:\n") && text.contains("Okta revoked: provider refused the credentials"),
            "{text}"
        );
        assert!(!text.contains("bad-token") && !text.contains("good-token"), "{text}");

        // One application by name.
        let rows = test(&config, Some("Jira")).await.unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[tokio::test]
    async fn an_unknown_name_lists_the_configured_applications() {
        let config = config(&[
            ("Jira", "kind = \"jira\"\ndry_run = true".into()),
            ("Okta", "kind = \"okta\"\ndry_run = true".into()),
        ]);
        let err = test(&config, Some("Oktaa")).await.unwrap_err();
        assert_eq!(err, "no application named \"Oktaa\" is configured (configured: Jira, Okta)");
    }

    #[test]
    fn each_error_class_has_a_fix() {
        let row =
            |result| Row { application: "a".into(), kind: "okta", result, latency: Some(Duration::from_millis(1500)) };
        assert_eq!(
            row(Outcome::Failed(ConnectorError::NotFound { what: "x".into() })).fix(),
            "check base_url/tenant/org"
        );
        assert!(
            row(Outcome::Failed(ConnectorError::Transient { reason: "x".into(), retry_after: None }))
                .fix()
                .contains("retry")
        );
        assert_eq!(row(Outcome::Ok).fix(), "-");
        assert!(render(&[row(Outcome::Ok)]).contains("1.5 s"));
        assert_eq!(latency(Duration::from_millis(42)), "42 ms");
    }
}
