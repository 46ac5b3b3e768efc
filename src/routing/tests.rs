use super::*;
use crate::config::{AppStatus, Config, RequestAction};
use crate::event::{AccessEvent, Person, SCHEMA_V1, Source, StatusChange, Ticket};
use crate::grants::{Hold, Ledger, TargetState};
use serde_json::json;

const REQUESTER: &str = "712020:requester";

fn config(extra: &str) -> Config {
    let text = format!("{}\n{extra}", include_str!("../../accessgov.example.toml"));
    let c = Config::parse(&text).expect("the config parses");
    assert_eq!(c.validate(), vec![], "the test config is valid");
    c
}

fn person(id: &str) -> Person {
    Person { account_id: id.into(), email: None, display_name: Some("Rita Requester".into()) }
}

fn created(application: &str, level: &str) -> AccessEvent {
    AccessEvent {
        schema: SCHEMA_V1.into(),
        event_id: crate::event::event_id_for("c"),
        dedupe_key: "c".into(),
        source: Source::JiraWebhook,
        delivery_id: None,
        ticket: Ticket {
            key: "ACC-7".into(),
            id: "7".into(),
            project_key: Some("ACC".into()),
            request_type: "x".into(),
        },
        action: RequestAction::Grant,
        app_status: AppStatus::Created,
        status: StatusChange { from: None, to: "Waiting for support".into(), from_id: None, to_id: None },
        application: Some(application.into()),
        access_level: Some(level.into()),
        requester: Some(person(REQUESTER)),
        approver: None,
        approval: None,
        authenticity: None,
        actor: None,
        changelog_id: None,
        occurred_at: chrono::Utc::now(),
        duration: None,
        department: None,
        errors: vec![],
        raw_fields: Default::default(),
        targets: None,
    }
}

fn invalid(r: Routing<'_>) -> Refusal {
    match r {
        Routing::Invalid(refusal) => refusal,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

fn routed(r: Routing<'_>) -> Route<'_> {
    match r {
        Routing::Route(route) => route,
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn a_valid_request_is_routed_to_its_rules_approvers() {
    let c = config("");
    let e = created("Confluence", "write");
    let route = routed(route(&e, &c, &[]));
    assert_eq!(route.step, "created");
    assert_eq!(route.stage, None);
    assert_eq!(route.approvers, vec!["group:confluence-admins".to_owned(), "5f8e1b2c3d4a5b6c7d8e9f01".to_owned()]);
    assert_eq!(route.lasts, Some(std::time::Duration::from_secs(90 * 86_400)));
}

#[test]
fn a_rule_without_approvers_routes_to_the_applications_owner() {
    let c = config(
        r#"[[rules]]
application = "Okta"
access_level = "Admin"
groups = ["okta-admins"]
"#,
    );
    let e = created("Okta", "Admin");
    assert_eq!(routed(route(&e, &c, &[])).approvers, vec!["it-admins@example.com".to_owned()]);
}

#[test]
fn every_invalid_request_is_answered_with_its_reason_at_creation() {
    let c = config(
        r#"[[rules]]
application = "Okta"
access_level = "Admin"
groups = ["okta-admins"]
approvers = ["5f8e1b2c3d4a5b6c7d8e9f01"]
requesters = ["group:okta-admins-eligible", "712020:someone-else"]
"#,
    );
    let unknown_app = created("Salesforce", "Write");
    assert_eq!(invalid(route(&unknown_app, &c, &[])).code(), "unknown_application");
    let unknown_level = created("Okta", "Superuser");
    assert_eq!(invalid(route(&unknown_level, &c, &[])).code(), "no_rule_for_access_level");
    let mut missing = created("Okta", "Admin");
    missing.errors = vec!["missing_required:access_level".into()];
    assert_eq!(invalid(route(&missing, &c, &[])).code(), "missing_fields");
    let not_allowed = created("Okta", "Admin");
    assert_eq!(invalid(route(&not_allowed, &c, &["jira-users".into()])).code(), "requester_not_allowed");
    // In the allowed group, the same request is routed.
    routed(route(&not_allowed, &c, &["OKTA-ADMINS-ELIGIBLE".into()]));
    let mut bad_duration = created("Confluence", "Write");
    bad_duration.duration = Some("forever".into());
    assert_eq!(invalid(route(&bad_duration, &c, &[])).code(), "invalid_duration");
}

#[test]
fn an_empty_github_login_field_is_an_invalid_request() {
    let c = config(
        r#"[applications."GitHub"]
kind = "github"
org = "example"
token_env = "GITHUB_TOKEN"
subject_field = "customfield_10090"
[[rules]]
application = "GitHub"
access_level = "Write"
groups = ["developers"]
approvers = ["5f8e1b2c3d4a5b6c7d8e9f01"]
"#,
    );
    let mut e = created("GitHub", "Write");
    e.raw_fields.insert("customfield_10090".into(), json!(""));
    let refusal = invalid(route(&e, &c, &[]));
    assert_eq!(refusal.code(), "invalid_identity", "{refusal:?}");
    assert!(invalid_comment(&refusal).contains("[accessgov:invalid:created]"));
}

const STAGED: &str = r#"[[rules]]
application = "Okta"
access_level = "Admin"
groups = ["okta-admins"]
stages = [
  { status = "Manager approval", approvers = ["field:customfield_10200"] },
  { status = "Security approval", approvers = ["group:security"], min_approvals = 2 },
]
"#;

#[test]
fn a_staged_rule_routes_its_first_stage_on_creation_and_each_stage_when_entered() {
    let c = config(STAGED);
    let e = created("Okta", "Admin");
    let first = routed(route(&e, &c, &[]));
    assert_eq!((first.step.as_str(), first.stage), ("created", Some(0)));
    assert_eq!(first.approvers, vec!["field:customfield_10200".to_owned()]);

    let mut entered = created("Okta", "Admin");
    entered.app_status = AppStatus::Stage;
    entered.status.to = "security APPROVAL".into();
    let second = routed(route(&entered, &c, &[]));
    assert_eq!((second.step.as_str(), second.stage), ("stage:security approval", Some(1)));
    assert_eq!(second.approvers, vec!["group:security".to_owned()]);

    entered.status.to = "Legal approval".into();
    assert!(matches!(route(&entered, &c, &[]), Routing::Skip(_)));
}

#[test]
fn the_plan_lists_provider_changes_overlaps_expiry_and_approvers() {
    let c = config(
        r#"[[rules]]
application = "Okta"
access_level = "Admin"
groups = ["okta-admins", "okta-users"]
approvers = ["5f8e1b2c3d4a5b6c7d8e9f01"]
max_duration = "30d"
"#,
    );
    let e = created("Okta", "Admin");
    let route = routed(route(&e, &c, &[]));
    let mut ledger = Ledger::default();
    let hold = Hold { ticket: "ACC-12".into(), access_level: "User".into(), event_at: chrono::Utc::now() };
    ledger.insert("okta-users".into(), TargetState { holds: vec![hold], ..TargetState::default() });
    let targets = route.rule.targets();
    let plan = crate::grants::plan(&ledger, &request(&e, route.rule, &targets), "ACC-7", e.occurred_at);
    let resolved =
        Resolved { users: vec!["acc-1".into()], groups: vec![], unresolved: vec!["group:big (too big)".into()] };
    let text = plan_comment(&e, &route, &plan, &resolved);
    for expected in [
        "accessgov plan for ACC-7 (Okta, access level \"Admin\", dry run: nothing will be called):",
        "- add Rita Requester to okta-admins in Okta (okta)",
        "- okta-users: already held through ACC-12; nothing to add",
        "The access expires 30d after it is granted",
        "Must be approved by: acc-1 (not by the requester).",
        "Could not route to: group:big (too big).",
        "[accessgov:plan:created]",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let record = PlanRecord::of(&plan, route.lasts);
    assert_eq!(record.ops, vec!["grant:okta-admins".to_owned()]);
    assert_eq!(record.overlaps, vec!["okta-users".to_owned()]);
}

#[test]
fn changes_since_the_plan_name_added_and_dropped_calls_and_a_new_expiry() {
    let planned =
        PlanRecord { ops: vec!["grant:a".into(), "grant:b".into()], overlaps: vec![], lasts: Some("30d".into()) };
    assert!(planned.changes_since(&planned).is_empty());
    let now = PlanRecord { ops: vec!["grant:a".into(), "grant:c".into()], overlaps: vec![], lasts: None };
    assert_eq!(
        now.changes_since(&planned),
        vec![
            "not in the plan: grant:c".to_owned(),
            "planned but no longer needed or configured: grant:b".to_owned(),
            "the access now lasts until revoked (planned: 30d)".to_owned(),
        ]
    );
}
