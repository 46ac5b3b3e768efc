use super::*;
use crate::config::{AppStatus, Config, RequestAction};
use crate::event::{AccessEvent, Approver, ApproverSource, Person, SCHEMA_V1, Source, StatusChange, Ticket};

const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";
const REQUESTER: &str = "712020:requester";

fn config() -> Config {
    Config::parse(include_str!("../../accessgov.example.toml")).unwrap()
}

fn person(id: &str, email: Option<&str>) -> Person {
    Person { account_id: id.into(), email: email.map(Into::into), display_name: None }
}

fn event(action: RequestAction, status: AppStatus) -> AccessEvent {
    AccessEvent {
        schema: SCHEMA_V1.into(),
        event_id: crate::event::event_id_for("k"),
        dedupe_key: "k".into(),
        source: Source::JiraWebhook,
        delivery_id: None,
        ticket: Ticket { key: "ACC-1".into(), id: "1".into(), project_key: None, request_type: "x".into() },
        action,
        app_status: status,
        status: StatusChange { from: None, to: "Approved by Manager".into(), from_id: None, to_id: None },
        application: Some("Confluence".into()),
        access_level: Some("Write".into()),
        requester: Some(person(REQUESTER, None)),
        approver: Some(Approver { person: person(APPROVER, None), source: ApproverSource::JsmApprovals }),
        actor: None,
        changelog_id: None,
        occurred_at: chrono::Utc::now(),
        duration: None,
        department: None,
        errors: vec![],
        raw_fields: Default::default(),
    }
}

fn refusal(d: Decision) -> Refusal {
    match d {
        Decision::Refused { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_approved_grant_with_an_allowed_distinct_approver_grants_the_rule_targets() {
    match decide(&event(RequestAction::Grant, AppStatus::Approved), &config(), &[]) {
        Decision::Grant { targets, subject, approver, max_duration, .. } => {
            assert_eq!(targets, vec!["confluence-developers".to_owned()]);
            assert_eq!(subject.account_id, REQUESTER);
            assert_eq!(approver.account_id, APPROVER);
            assert_eq!(max_duration, Some(std::time::Duration::from_secs(90 * 86_400)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn denied_and_declined_never_call_a_provider() {
    for status in [AppStatus::Denied, AppStatus::Declined] {
        assert!(matches!(decide(&event(RequestAction::Grant, status), &config(), &[]), Decision::NoAction { .. }));
    }
}

#[test]
fn a_removal_request_or_a_revoked_ticket_revokes_without_an_approver() {
    let mut e = event(RequestAction::Revoke, AppStatus::Approved);
    e.approver = None;
    assert!(matches!(decide(&e, &config(), &[]), Decision::Revoke { scope: RevokeScope::Subject, .. }));
    let mut e = event(RequestAction::Grant, AppStatus::Revoked);
    e.approver = None;
    assert!(matches!(decide(&e, &config(), &[]), Decision::Revoke { scope: RevokeScope::Ticket, .. }));
}

#[test]
fn a_change_request_is_its_own_decision() {
    assert!(matches!(
        decide(&event(RequestAction::Change, AppStatus::Approved), &config(), &[]),
        Decision::Change { .. }
    ));
}

#[test]
fn missing_fields_are_refused_before_anything_else() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.errors = vec!["missing_required:access_level".into()];
    e.access_level = None;
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "missing_fields");
}

#[test]
fn an_unknown_application_or_level_is_refused() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.application = Some("Salesforce".into());
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "unknown_application");
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.access_level = Some("Admin".into());
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "no_rule_for_access_level");
}

#[test]
fn no_approver_or_a_disallowed_approver_is_refused() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approver = None;
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "no_approver");
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approver = Some(Approver { person: person("someone-else", None), source: ApproverSource::ApproverField });
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "approver_not_allowed");
}

#[test]
fn an_approver_in_an_allowed_jira_group_is_allowed() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approver = Some(Approver { person: person("group-member", None), source: ApproverSource::JsmApprovals });
    assert!(matches!(decide(&e, &config(), &["Confluence-Admins".into()]), Decision::Grant { .. }));
    assert_eq!(refusal(decide(&e, &config(), &["other".into()])).code(), "approver_not_allowed");
}

#[test]
fn the_requester_cannot_approve_their_own_request_when_the_rule_says_so() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.requester = Some(person(APPROVER, None));
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "approver_is_requester");
    let mut c = config();
    c.rules[0].require_distinct_approver = false;
    assert!(matches!(decide(&e, &c, &[]), Decision::Grant { .. }));
}

#[test]
fn no_requester_means_no_grant() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.requester = None;
    assert_eq!(refusal(decide(&e, &config(), &[])).code(), "no_requester");
}

#[test]
fn approvers_match_by_account_id_email_case_insensitively_or_group() {
    let entries = vec!["abc".to_owned(), "Boss@Example.com".to_owned(), "group:admins".to_owned()];
    assert!(approver_allowed(&entries, &person("abc", None), &[]));
    assert!(!approver_allowed(&entries, &person("ABC", None), &[]));
    assert!(approver_allowed(&entries, &person("x", Some("boss@example.com")), &[]));
    assert!(!approver_allowed(&entries, &person("x", None), &[]));
    assert!(approver_allowed(&entries, &person("x", None), &["admins".into()]));
}
