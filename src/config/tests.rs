use super::*;

const EXAMPLE: &str = include_str!("../../accessgov.example.toml");

fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

const EXAMPLE_ENV: &[(&str, &str)] =
    &[("JSM_WEBHOOK_SECRET", "whsec"), ("JSM_AUTOMATION_TOKEN", "autotoken"), ("ACCESSGOV_ADMIN_TOKEN", "admintoken")];

#[test]
fn the_example_file_is_valid_and_names_every_section() {
    let config = Config::parse(EXAMPLE).expect("example parses");
    assert_eq!(config.validate(), vec![]);
    assert_eq!(config.check_secrets(&env_with(EXAMPLE_ENV)), vec![]);
    assert_eq!(config.broker.retry_delays.len(), 4);
    assert_eq!(config.applications["Confluence"].kind.as_str(), "confluence");
    assert_eq!(config.jsm.statuses["Approved by Manager"], AppStatus::Approved);
    let rule = config.rule_for("Confluence", "write").expect("case-insensitive level");
    assert_eq!(rule.targets(), vec!["confluence-developers".to_owned()]);
    assert_eq!(rule.max_duration, Some(Duration::from_secs(90 * 86_400)));
}

#[test]
fn every_key_of_the_example_has_a_comment_above_or_beside_it() {
    // A key line is documented when it carries a trailing comment or the
    // nearest non-blank line above it (within its block) is a comment.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('[') || !t.contains('=') {
            continue;
        }
        let key = t.split('=').next().unwrap().trim().trim_matches('"');
        let trailing = t.contains(" # ");
        let above =
            lines[..i].iter().rev().map(|l| l.trim()).find(|l| !l.is_empty()).is_some_and(|l| l.starts_with('#'));
        // Repeated blocks (second rule, request type / status maps) are documented once by their table.
        let in_documented_map = lines[..i]
            .iter()
            .rev()
            .find(|l| l.trim().starts_with('['))
            .is_some_and(|h| matches!(h.trim(), "[jsm.request_types]" | "[jsm.statuses]" | "[jsm.fields]"));
        // Or an earlier comment already explained this key (the common application keys, repeated blocks).
        let documented_earlier = lines[..i]
            .iter()
            .filter(|l| l.trim().starts_with('#'))
            .any(|c| c.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).any(|w| w == key));
        if !(trailing || above || in_documented_map || documented_earlier) {
            undocumented.push(format!("line {}: {key}", i + 1));
        }
    }
    assert!(undocumented.is_empty(), "undocumented keys: {undocumented:?}");
}

#[test]
fn a_misspelled_key_is_rejected_and_named() {
    let text = EXAMPLE.replacen("prefix = \"accessgov\"", "prefx = \"accessgov\"", 1);
    let err = Config::parse(&text).unwrap_err();
    assert!(err.contains("prefx"), "{err}");
}

#[test]
fn a_rule_naming_an_unknown_application_names_both() {
    let text = EXAMPLE.replacen("application = \"Confluence\"", "application = \"Confluense\"", 1);
    let problems = Config::parse(&text).unwrap().validate();
    let p = problems.iter().find(|p| p.key == "rules[0].application").expect("problem on the rule");
    assert!(p.message.contains("Confluense") && p.message.contains("Confluence"), "{p}");
}

#[test]
fn ingress_without_any_authentication_method_is_refused() {
    let text = EXAMPLE
        .replace("hmac_secret_env = \"JSM_WEBHOOK_SECRET\"", "")
        .replace("bearer_token_env = \"JSM_AUTOMATION_TOKEN\"", "");
    let problems = Config::parse(&text).unwrap().validate();
    assert!(problems.iter().any(|p| p.key == "ingress" && p.message.contains("no authentication")));
}

#[test]
fn an_unknown_provider_key_is_rejected_with_the_accepted_list() {
    let text = EXAMPLE.replacen("token_env = \"OKTA_API_TOKEN\"", "tokn_env = \"OKTA_API_TOKEN\"", 1);
    let problems = Config::parse(&text).unwrap().validate();
    let p = problems.iter().find(|p| p.key.ends_with(".tokn_env")).expect("named");
    assert!(p.message.contains("token_env"), "{p}");
}

#[test]
fn an_unknown_kind_is_refused_with_the_registered_kinds() {
    let text = EXAMPLE.replacen("kind = \"okta\"", "kind = \"oktaa\"", 1);
    let err = Config::parse(&text).unwrap_err();
    assert!(err.contains("unknown kind `oktaa`, expected one of `okta`, `entra`, `aws`"), "{err}");
    for k in crate::connectors::KINDS {
        assert!(err.contains(&format!("`{}`", k.name)), "{err}");
    }
    let err = Config::parse(&EXAMPLE.replacen("kind = \"okta\"", "kind = \"Okta\"", 1)).unwrap_err();
    assert!(err.contains("unknown kind `Okta`"), "names are lowercase, as before: {err}");
}

#[test]
fn every_registered_kind_parses_from_its_name_and_prints_back_the_same() {
    for k in crate::connectors::KINDS {
        let app: ApplicationConfig = toml::from_str(&format!("kind = \"{}\"", k.name)).unwrap();
        assert_eq!(app.kind.as_str(), k.name);
        assert_eq!(app.kind, AppKind::named(k.name).unwrap());
        assert_eq!(toml::Value::try_from(app.kind).unwrap().as_str(), Some(k.name));
    }
}

#[test]
fn a_missing_secret_is_named_by_key_and_variable() {
    let config = Config::parse(EXAMPLE).unwrap();
    let problems = config.check_secrets(&env_with(&[("JSM_AUTOMATION_TOKEN", "x"), ("ACCESSGOV_ADMIN_TOKEN", "y")]));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "ingress.hmac_secret");
    assert!(problems[0].message.contains("JSM_WEBHOOK_SECRET"));
}

#[test]
fn a_live_application_whose_secret_is_missing_cannot_be_built_and_the_key_is_named() {
    let text = EXAMPLE
        .replacen("owner = \"it-admins@example.com\"\ndry_run = true", "owner = \"x\"\ndry_run = false", 1)
        .replacen("token_env = \"OKTA_API_TOKEN\"", "token_env = \"ACCESSGOV_TEST_UNSET_OKTA_TOKEN\"", 1);
    assert_ne!(text, EXAMPLE);
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.validate(), vec![], "structurally fine");
    let problems = crate::connectors::build(&config).err().expect("a live application without its token");
    assert!(
        problems
            .iter()
            .any(|p| p.key == "applications.\"Okta\"" && p.message.contains("ACCESSGOV_TEST_UNSET_OKTA_TOKEN")),
        "{problems:?}"
    );
}

#[test]
fn a_rule_without_approvers_or_targets_is_refused() {
    let text = EXAMPLE.replacen("groups = [\"okta-everyone\"]", "", 1).replacen(
        "approvers = [\"5f8e1b2c3d4a5b6c7d8e9f01\"]\n",
        "",
        1,
    );
    let problems = Config::parse(&text).unwrap().validate();
    assert!(problems.iter().any(|p| p.key == "rules[1]" && p.message.contains("grants nothing")));
    // Routing falls back to the application's owner: a rule without approvers
    // is refused only when its application has none.
    assert!(!problems.iter().any(|p| p.key == "rules[1].approvers"), "{problems:?}");
    let ownerless = text.replacen("owner = \"it-admins@example.com\"\ndry_run = true", "dry_run = true", 1);
    assert_ne!(ownerless, text);
    let problems = Config::parse(&ownerless).unwrap().validate();
    assert!(problems.iter().any(|p| p.key == "rules[1].approvers" && p.message.contains("no owner")), "{problems:?}");
}

#[test]
fn stages_and_routing_entries_are_checked() {
    let text = format!(
        "{EXAMPLE}\n{}",
        r#"[[rules]]
application = "Okta"
access_level = "Admin"
groups = ["okta-admins"]
requesters = ["field:"]
stages = [
  { status = "Approved by Manager", approvers = ["group:"] },
  { status = "Security", approvers = [], min_approvals = 0 },
]
"#
    );
    let mut config = Config::parse(&text).unwrap();
    let problems = config.validate();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "rules[2].requesters",
        "rules[2].stages[0].approvers",
        "rules[2].stages[0].status",
        "rules[2].stages[1].approvers",
        "rules[2].stages[1].min_approvals",
    ] {
        assert!(keys.contains(&key), "{key} not in {problems:?}");
    }
    assert_eq!(config.jsm.stage_statuses, vec!["Approved by Manager".to_owned(), "Security".to_owned()]);
    config.jsm.statuses.insert("Routed".into(), AppStatus::Created);
    config.jsm.verify_approval = Some(false);
    let problems = config.validate();
    assert!(problems.iter().any(|p| p.key == "jsm.statuses.\"Routed\""), "{problems:?}");
    assert!(problems.iter().any(|p| p.key == "rules[2].stages" && p.message.contains("verify_approval")));
}

#[test]
fn env_overrides_replace_urls_and_listeners() {
    let mut config = Config::parse(EXAMPLE).unwrap();
    config.apply_env_overrides(&env_with(&[
        ("ACCESSGOV_BROKER_URL", "amqp://u:p@mq:5672/%2f"),
        ("ACCESSGOV_BROKER_PREFIX", "tenant1"),
        ("ACCESSGOV_DATABASE_URL", "postgres://db/x"),
        ("ACCESSGOV_INGRESS_LISTEN", "127.0.0.1:18080"),
    ]));
    assert_eq!(config.broker.url, "amqp://u:p@mq:5672/%2f");
    assert_eq!(config.broker.prefix, "tenant1");
    assert_eq!(config.database.url, "postgres://db/x");
    assert_eq!(config.ingress.listen.port(), 18080);
}

#[test]
fn migrations_use_migrate_url_which_defaults_to_url_and_has_an_env_override() {
    let mut config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(config.database.migrate_url(), config.database.url, "default: url");
    config.apply_env_overrides(&env_with(&[
        ("ACCESSGOV_DATABASE_URL", "postgres://accessgov_app@db/x"),
        ("ACCESSGOV_DATABASE_MIGRATE_URL", "postgres://owner:s3cret@db/x"),
    ]));
    assert_eq!(config.database.url, "postgres://accessgov_app@db/x");
    assert_eq!(config.database.migrate_url(), "postgres://owner:s3cret@db/x");
    let summary = config.summary();
    assert!(summary.contains("migrations as postgres://owner:***@db/x"), "{summary}");
    assert!(!summary.contains("s3cret"), "{summary}");
}

#[test]
fn the_runtime_role_password_is_a_secret_reference_checked_like_the_others() {
    let text = EXAMPLE.replacen(
        "[database]\n",
        "[database]\napp_password_env = \"ACCESSGOV_TEST_APP_PW\"\napp_password_file = \"/run/x\"\n",
        1,
    );
    let both = Config::parse(&text).unwrap().validate();
    assert!(both.iter().any(|p| p.key == "database.app_password_file"), "{both:?}");

    let text = EXAMPLE.replacen("[database]\n", "[database]\napp_password_env = \"ACCESSGOV_TEST_APP_PW\"\n", 1);
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.validate(), vec![]);
    let missing = config.check_secrets(&env_with(&[]));
    assert!(
        missing.iter().any(|p| p.key == "database.app_password" && p.message.contains("ACCESSGOV_TEST_APP_PW")),
        "{missing:?}"
    );
    assert!(config.summary().contains("sets the accessgov_app password from env ACCESSGOV_TEST_APP_PW"));
    assert!(Config::parse(&EXAMPLE.replacen("[database]\n", "[database]\napp_password = \"x\"\n", 1)).is_err());
}

#[test]
fn the_summary_never_shows_passwords() {
    let mut config = Config::parse(EXAMPLE).unwrap();
    config.broker.url = "amqp://guest:hunter2@mq:5672/%2f".into();
    let summary = config.summary();
    assert!(!summary.contains("hunter2"));
    assert!(summary.contains("guest:***@mq"));
    assert!(summary.contains("Confluence"));
}

#[test]
fn the_shipped_demo_and_kubernetes_configs_are_valid() {
    for (name, text) in [
        ("deploy/compose/accessgov.toml", include_str!("../../deploy/compose/accessgov.toml")),
        ("deploy/k8s/accessgov.toml", include_str!("../../deploy/k8s/accessgov.toml")),
    ] {
        let config = Config::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.validate(), vec![], "{name}");
        assert!(config.applications.values().all(|a| a.dry_run), "{name}: demo configs stay dry-run");
        assert_eq!(config.jsm.statuses.get("Approved by Manager"), Some(&AppStatus::Approved), "{name}");
    }
}

#[test]
fn verify_approval_is_on_with_credentials_unless_turned_off_and_off_is_warned_about() {
    let mut c = Config::parse(EXAMPLE).unwrap();
    c.jsm.verify_approval = None;
    assert!(c.verify_approval_in_effect(true));
    assert_eq!(c.verify_approval_warning(true), None);
    assert!(!c.verify_approval_in_effect(false));
    assert!(c.verify_approval_warning(false).unwrap().contains("NOT VERIFIED"));
    c.jsm.verify_approval = Some(false);
    assert!(!c.verify_approval_in_effect(true));
    assert!(c.verify_approval_warning(true).unwrap().contains("verify_approval = false"));
    c.jsm.verify_approval = Some(true);
    assert!(c.verify_approval_in_effect(false), "explicitly on stays on (and refuses without credentials)");
}

#[test]
fn max_event_age_defaults_to_seven_days_and_an_hour_is_the_least() {
    let config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(config.jsm.max_event_age, Duration::from_secs(7 * 86_400));
    let without = EXAMPLE.replacen("max_event_age = \"7d\"", "", 1);
    assert_eq!(Config::parse(&without).unwrap().jsm.max_event_age, Duration::from_secs(7 * 86_400), "the default");
    let short = EXAMPLE.replacen("max_event_age = \"7d\"", "max_event_age = \"10m\"", 1);
    let problems = Config::parse(&short).unwrap().validate();
    let p = problems.iter().find(|p| p.key == "jsm.max_event_age").expect("a problem on the key");
    assert!(p.message.contains("7 days"), "{p}");
    let bad = EXAMPLE.replacen("max_event_age = \"7d\"", "max_event_age = \"7\"", 1);
    assert!(Config::parse(&bad).unwrap_err().contains("no unit"));
}

#[test]
fn ingress_read_timeouts_default_to_ten_seconds_and_zero_is_refused() {
    let config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(config.ingress.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.ingress.body_read_timeout, Duration::from_secs(10));
    let without =
        EXAMPLE.replacen("header_read_timeout = \"10s\"", "", 1).replacen("body_read_timeout = \"10s\"", "", 1);
    let defaults = Config::parse(&without).unwrap().ingress;
    assert_eq!(
        (defaults.header_read_timeout, defaults.body_read_timeout),
        (Duration::from_secs(10), Duration::from_secs(10))
    );
    let zero = EXAMPLE.replacen("body_read_timeout = \"10s\"", "body_read_timeout = \"0s\"", 1);
    let problems = Config::parse(&zero).unwrap().validate();
    assert!(problems.iter().any(|p| p.key == "ingress.body_read_timeout"), "{problems:?}");
}

#[test]
fn database_timeouts_parse_as_durations_and_default_when_absent() {
    let config = Config::parse(EXAMPLE).unwrap();
    let t = config.database.timeouts();
    assert_eq!(
        (t.statement, t.lock, t.idle_in_transaction),
        (Duration::from_secs(30), Duration::from_secs(10), Duration::from_secs(60))
    );
    assert_eq!(
        t.options().map(|(k, v)| format!("{k}={v}")),
        ["statement_timeout=30000", "lock_timeout=10000", "idle_in_transaction_session_timeout=60000"]
    );

    let text = EXAMPLE
        .replace("statement_timeout = \"30s\"", "statement_timeout = \"1500ms\"")
        .replace("idle_in_transaction_timeout = \"60s\"", "idle_in_transaction_timeout = \"0s\"");
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.database.statement_timeout, Duration::from_millis(1500));
    assert_eq!(config.database.idle_in_transaction_timeout, Duration::ZERO);

    // Absent keys take the defaults; a bad value names the key.
    let text: String = EXAMPLE.lines().filter(|l| !l.contains("_timeout = ")).collect::<Vec<_>>().join("\n");
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.database.timeouts(), DatabaseConfig::default().timeouts());
    let err = Config::parse(&EXAMPLE.replace("lock_timeout = \"10s\"", "lock_timeout = \"10\"")).unwrap_err();
    assert!(err.contains("lock_timeout") && err.contains("no unit"), "{err}");
}
