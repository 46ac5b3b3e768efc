//! The binary's commands: exit codes and what they print.

use crate::helpers::{EXAMPLE_CONFIG, WEBHOOK_SECRET, fixture};
use std::process::{Command, Output};

fn accessgov(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accessgov"));
    cmd.args(args).env_remove("ACCESSGOV_CONFIG").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("accessgov.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const SECRETS: &[(&str, &str)] =
    &[("JSM_WEBHOOK_SECRET", WEBHOOK_SECRET), ("JSM_AUTOMATION_TOKEN", "tok"), ("ACCESSGOV_ADMIN_TOKEN", "adm")];

#[test]
fn every_command_has_help_that_describes_it() {
    let top = accessgov(&["--help"], &[]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    for sub in ["ingress", "worker", "all", "migrate", "config", "simulate", "audit"] {
        assert!(text.contains(sub), "top-level help lists {sub}");
    }
    for args in [
        &["ingress", "--help"][..],
        &["worker", "--help"],
        &["all", "--help"],
        &["migrate", "--help"],
        &["config", "check", "--help"],
        &["simulate", "--help"],
        &["audit", "verify", "--help"],
    ] {
        let out = accessgov(args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("--config"), "{args:?} documents --config");
    }
}

#[test]
fn config_check_accepts_the_example_and_prints_a_summary_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, EXAMPLE_CONFIG);
    let out = accessgov(&["config", "check", "--config", &path], SECRETS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Confluence") && stdout.contains("dry-run"));
    assert!(!stdout.contains(WEBHOOK_SECRET));
}

#[test]
fn config_check_names_a_misspelled_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &EXAMPLE_CONFIG.replacen("max_body_bytes", "max_body_byte", 1));
    let out = accessgov(&["config", "check", "--config", &path], SECRETS);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_byte"));
}

#[test]
fn config_check_names_the_rule_and_the_unknown_application() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &EXAMPLE_CONFIG.replacen("application = \"Okta\"", "application = \"Okat\"", 1));
    let out = accessgov(&["config", "check", "--config", &path], SECRETS);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rules[1].application") && stderr.contains("Okat"), "{stderr}");
}

#[test]
fn config_check_names_a_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, EXAMPLE_CONFIG);
    let out = accessgov(&["config", "check", "--config", &path], &SECRETS[1..]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSM_WEBHOOK_SECRET"));
}

#[test]
fn a_missing_config_file_says_how_to_point_at_one() {
    let out = accessgov(&["config", "check", "--config", "/nonexistent/accessgov.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn simulate_prints_the_event_and_decision_and_checks_given_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, EXAMPLE_CONFIG);
    // The fixture's body time is 2025-11-25, older than the example's max_event_age:
    // simulate tells so, as the ingress would answer.
    let stale = dir.path().join("stale.json");
    std::fs::write(&stale, fixture("webhook-approved-confluence-write.json")).unwrap();
    let out = accessgov(&["simulate", "--config", &path, "--event", &stale.display().to_string()], SECRETS);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["outcome"].as_str(), v["ignore_reason"].as_str()), (Some("ignored"), Some("stale")));

    // The same change, sent now.
    let mut body: serde_json::Value =
        serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    body["timestamp"] = chrono::Utc::now().timestamp_millis().into();
    let body = serde_json::to_vec(&body).unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, &body).unwrap();
    let event = event.display().to_string();

    let out = accessgov(&["simulate", "--config", &path, "--event", &event], SECRETS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "accepted");
    assert_eq!(v["event"]["schema"], "accessgov.access-event/v1");
    assert_eq!(v["event"]["ticket"]["key"], "ACC-42");
    assert_eq!(v["decision"]["decision"], "grant");

    let sig = accessgov::ingress::auth::sign(WEBHOOK_SECRET, &body);
    let good = accessgov(
        &["simulate", "--config", &path, "--event", &event, "--header", &format!("X-Hub-Signature: {sig}")],
        SECRETS,
    );
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&good.stdout).unwrap()["outcome"], "accepted");
    let bad = accessgov(
        &["simulate", "--config", &path, "--event", &event, "--header", "X-Hub-Signature: sha256=00"],
        SECRETS,
    );
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!((v["outcome"].as_str(), v["event"].is_null()), (Some("unauthorized"), true));

    // A value PostgreSQL cannot store: simulate answers what the ingress would (400 invalid_value).
    let mut nul: serde_json::Value = serde_json::from_slice(&body).unwrap();
    nul["issue"]["fields"]["reporter"]["displayName"] = "Eve\u{0}".into();
    let nul_path = dir.path().join("nul.json");
    std::fs::write(&nul_path, serde_json::to_vec(&nul).unwrap()).unwrap();
    let out = accessgov(&["simulate", "--config", &path, "--event", &nul_path.display().to_string()], SECRETS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["outcome"].as_str(), v["field"].as_str()), (Some("invalid_value"), Some("requester.display_name")));
    assert!(v["event"].is_null() && v["decision"].is_null(), "{v}");
}

#[test]
fn simulate_shows_how_a_new_ticket_would_be_routed_or_why_it_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, EXAMPLE_CONFIG);
    let mut body: serde_json::Value =
        serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    body["webhookEvent"] = "jira:issue_created".into();
    body["timestamp"] = chrono::Utc::now().timestamp_millis().into();
    let event = dir.path().join("created.json");
    std::fs::write(&event, serde_json::to_vec(&body).unwrap()).unwrap();
    let out = accessgov(&["simulate", "--config", &path, "--event", &event.display().to_string()], SECRETS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event"]["app_status"], "created");
    assert_eq!(v["decision"]["decision"], "no_action", "a creation never grants");
    assert_eq!(v["routing"]["route"], "created");
    assert_eq!(v["routing"]["approvers"], serde_json::json!(["group:confluence-admins", "5f8e1b2c3d4a5b6c7d8e9f01"]));

    body["issue"]["fields"]["customfield_10051"]["value"] = "Superuser".into();
    std::fs::write(&event, serde_json::to_vec(&body).unwrap()).unwrap();
    let out = accessgov(&["simulate", "--config", &path, "--event", &event.display().to_string()], SECRETS);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["routing"]["invalid"], "no_rule_for_access_level", "{v}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_cleanly_with_exit_code_zero() {
    let db = crate::helpers::unique("accessgov_test");
    let prefix = crate::helpers::unique("agtest");
    let (ingress, ops) = (free_port(), free_port());
    // The service connects as the runtime role; `--migrate` runs as the owner,
    // named by the environment override.
    let text = EXAMPLE_CONFIG
        .replace("postgres://postgres@127.0.0.1:5432/accessgov", &format!("{}/{db}", crate::helpers::app_server_url()))
        .replace("amqp://guest:guest@127.0.0.1:5672/%2f", &crate::helpers::amqp_url())
        .replace("prefix = \"accessgov\"", &format!("prefix = \"{prefix}\""))
        .replace("listen = \"0.0.0.0:8080\"", &format!("listen = \"127.0.0.1:{ingress}\""))
        .replace("listen = \"127.0.0.1:9090\"", &format!("listen = \"127.0.0.1:{ops}\""));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &text);
    let mut child = Command::new(env!("CARGO_BIN_EXE_accessgov"))
        .args(["all", "--migrate", "--config", &path])
        .envs(SECRETS.iter().copied())
        .env("ACCESSGOV_DATABASE_MIGRATE_URL", format!("{}/{db}", crate::helpers::pg_server_url()))
        .env_remove("ACCESSGOV_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    crate::helpers::eventually("the service to answer /readyz", std::time::Duration::from_secs(30), || async {
        let r = http.get(format!("http://127.0.0.1:{ingress}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = crate::helpers::eventually("the process to exit", std::time::Duration::from_secs(20), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("shutdown signal received") && stderr.contains("worker stopped"), "{stderr}");

    // Teardown of what the service declared and created.
    let names = accessgov::broker::Names::new(&prefix, &[30, 300, 1800, 7200].map(std::time::Duration::from_secs));
    let conn = lapin::Connection::connect(&crate::helpers::amqp_url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    accessgov::broker::topology::delete(&ch, &names).await.unwrap();
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", crate::helpers::pg_server_url())).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_as_the_owner_and_sets_the_runtime_role_password_without_showing_it() {
    use crate::helpers::{app_server_url, pg_server_url, unique};
    let db = unique("accessgov_test");
    let owner_url = format!("{}/{db}", pg_server_url());
    let text = EXAMPLE_CONFIG
        .replace("postgres://postgres@127.0.0.1:5432/accessgov", &format!("{}/{db}", app_server_url()))
        .replacen("[database]\n", "[database]\napp_password_env = \"ACCESSGOV_TEST_DB_APP_PASSWORD\"\n", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &text);
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let migrate = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accessgov"));
        cmd.args(["migrate", "--config", &path])
            .env_remove("ACCESSGOV_CONFIG")
            .env_remove("ACCESSGOV_DATABASE_URL")
            .env_remove("ACCESSGOV_TEST_DB_APP_PASSWORD")
            .env("ACCESSGOV_DATABASE_MIGRATE_URL", &owner_url)
            // Even at debug level nothing prints the password or its verifier.
            .env("RUST_LOG", "debug");
        cmd.envs(env.iter().copied());
        cmd.output().expect("binary runs")
    };

    // A configured but missing password fails first, naming the variable, and changes nothing.
    let missing = migrate(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ACCESSGOV_TEST_DB_APP_PASSWORD"));

    let out = migrate(&[("ACCESSGOV_TEST_DB_APP_PASSWORD", &password)]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("set the password of role accessgov_app (from env ACCESSGOV_TEST_DB_APP_PASSWORD)"),
        "{stdout}"
    );
    for shown in [stdout.as_ref(), stderr.as_ref()] {
        assert!(!shown.contains(&password) && !shown.contains("SCRAM-SHA-256$"), "{shown}");
    }

    let admin = sqlx::PgPool::connect(&owner_url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'accessgov_app'")
        .fetch_one(&admin)
        .await
        .unwrap();
    let (iterations, salt) = crate::audit::scram_salt(&stored);
    assert_eq!(accessgov::db::scram_verifier(&password, &salt, iterations), stored, "a login with it succeeds");
    // The owner of the URL owns the tables; the runtime role owns nothing.
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            .fetch_all(&admin)
            .await
            .unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&admin).await.unwrap();
    assert_eq!(owners, [me]);
    admin.close().await;

    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_server_url())).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
}
