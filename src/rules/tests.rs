use super::*;
use crate::config::{AppStatus, Config, RequestAction};
use crate::event::{
    AccessEvent, Approval, Approver, ApproverSource, Authenticity, Person, SCHEMA_V1, Source, StatusChange, Ticket,
};
use crate::ingress::normalize::{self, Meta, Normalized};

const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";
const REQUESTER: &str = "712020:requester";

fn config() -> Config {
    let mut c = Config::parse(include_str!("../../accessgov.example.toml")).unwrap();
    // The fixtures are from 2025: none is stale for these tests.
    c.jsm.max_event_age = std::time::Duration::from_secs(100 * 365 * 86_400);
    c
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
        approval: Some(approved_by(&[APPROVER])),
        authenticity: Some(Authenticity::Signature),
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

/// An approved JSM approval completed an hour ago by `who`.
fn approved_by(who: &[&str]) -> Approval {
    Approval {
        id: Some("7".into()),
        final_decision: "approved".into(),
        completed_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        approved_by: who.iter().map(|id| person(id, None)).collect(),
    }
}

fn none() -> Facts {
    Facts::default()
}

fn groups(account: &str, g: &[&str]) -> Facts {
    Facts {
        approver_groups: [(account.to_owned(), g.iter().map(|s| s.to_string()).collect())].into_iter().collect(),
        ..Facts::default()
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
    match decide(&event(RequestAction::Grant, AppStatus::Approved), &config(), &none()) {
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
        assert!(matches!(decide(&event(RequestAction::Grant, status), &config(), &none()), Decision::NoAction { .. }));
    }
}

#[test]
fn a_removal_request_or_a_revoked_ticket_revokes_without_an_approver() {
    let mut e = event(RequestAction::Revoke, AppStatus::Approved);
    e.approver = None;
    assert!(matches!(decide(&e, &config(), &none()), Decision::Revoke { scope: RevokeScope::Subject, .. }));
    let mut e = event(RequestAction::Grant, AppStatus::Revoked);
    e.approver = None;
    assert!(matches!(decide(&e, &config(), &none()), Decision::Revoke { scope: RevokeScope::Ticket, .. }));
}

#[test]
fn a_change_request_is_its_own_decision() {
    assert!(matches!(
        decide(&event(RequestAction::Change, AppStatus::Approved), &config(), &none()),
        Decision::Change { .. }
    ));
}

#[test]
fn missing_fields_are_refused_before_anything_else() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.errors = vec!["missing_required:access_level".into()];
    e.access_level = None;
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "missing_fields");
}

#[test]
fn an_unknown_application_or_level_is_refused() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.application = Some("Salesforce".into());
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "unknown_application");
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.access_level = Some("Admin".into());
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "no_rule_for_access_level");
}

#[test]
fn no_approver_or_a_disallowed_approver_is_refused() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approver = None;
    e.approval = None;
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "no_approver");
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approval = Some(approved_by(&["someone-else"]));
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "approver_not_allowed");
}

#[test]
fn an_approver_in_an_allowed_jira_group_is_allowed() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approval = Some(approved_by(&["group-member"]));
    assert!(matches!(decide(&e, &config(), &groups("group-member", &["Confluence-Admins"])), Decision::Grant { .. }));
    let refused = decide(&e, &config(), &groups("group-member", &["other"]));
    assert_eq!(refusal(refused).code(), "approver_not_allowed");
}

#[test]
fn the_requester_cannot_approve_their_own_request_when_the_rule_says_so() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.requester = Some(person(APPROVER, None));
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "approver_is_requester");
    // Another approving approver who is allowed (and not the requester) carries it.
    let mut c = config();
    c.rules[0].approvers.push("second-approver".into());
    e.approval = Some(approved_by(&[APPROVER, "second-approver"]));
    match decide(&e, &c, &none()) {
        Decision::Grant { approver, .. } => assert_eq!(approver.account_id, "second-approver"),
        other => panic!("{other:?}"),
    }
    e.approval = Some(approved_by(&[APPROVER]));
    let mut c = config();
    c.rules[0].require_distinct_approver = false;
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }));
}

#[test]
fn no_requester_means_no_grant() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.requester = None;
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "no_requester");
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

// --- approval integrity ------------------------------------------------------------------------

#[test]
fn only_an_approved_approval_grants_never_a_declined_or_pending_one() {
    let c = config();
    for decision in ["declined", "pending"] {
        let mut e = event(RequestAction::Grant, AppStatus::Approved);
        e.approval = Some(Approval { final_decision: decision.into(), ..approved_by(&[APPROVER]) });
        let r = refusal(decide(&e, &c, &none()));
        assert_eq!(r.code(), "approval_not_approved", "{decision}");
        assert!(r.message().contains(decision), "{}", r.message());
        // Not even with verification on: the payload already says no.
        let verify = Facts { verify_approval: true, ..Facts::default() };
        assert_eq!(refusal(decide(&e, &c, &verify)).code(), "approval_not_approved");
    }
    // An "approved" approval in which no approver's own decision is approved (an admin override) grants nothing.
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approval = Some(approved_by(&[]));
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approval_not_approved");
    // Positive control.
    assert!(matches!(decide(&event(RequestAction::Grant, AppStatus::Approved), &c, &none()), Decision::Grant { .. }));
}

#[test]
fn an_approval_completed_before_the_tickets_last_revoke_never_grants_again() {
    let e = event(RequestAction::Grant, AppStatus::Approved);
    let completed = e.approval.as_ref().unwrap().completed_at.unwrap();
    let after = Facts { last_revoke_at: Some(completed + chrono::Duration::minutes(5)), ..Facts::default() };
    assert_eq!(refusal(decide(&e, &config(), &after)).code(), "approval_reused");
    let before = Facts { last_revoke_at: Some(completed - chrono::Duration::minutes(5)), ..Facts::default() };
    assert!(matches!(decide(&e, &config(), &before), Decision::Grant { .. }), "a newer approval grants");
}

/// An event whose approver comes from the approver field, made by `actor`.
fn field_event(actor: Option<&str>, authenticity: Option<Authenticity>, source: Source) -> AccessEvent {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.approval = None;
    e.approver = Some(Approver { person: person(APPROVER, None), source: ApproverSource::ApproverField });
    e.actor = actor.map(|a| person(a, None));
    e.authenticity = authenticity;
    e.source = source;
    e
}

#[test]
fn the_approver_field_counts_only_when_that_approver_made_the_signed_transition() {
    let c = config();
    let signed = Some(Authenticity::Signature);
    let ok = field_event(Some(APPROVER), signed, Source::JiraWebhook);
    assert!(matches!(decide(&ok, &c, &none()), Decision::Grant { .. }), "positive control");
    for (actor, auth, why) in [
        (Some("agent-who-clicked"), signed, "someone else moved the ticket"),
        (None, signed, "the webhook names no actor"),
        (Some(REQUESTER), signed, "the requester moved it"),
        (Some(APPROVER), Some(Authenticity::Bearer), "a bearer body is not Jira's word"),
        (Some(APPROVER), None, "unknown authenticity"),
    ] {
        let e = field_event(actor, auth, Source::JiraWebhook);
        assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_unconfirmed", "{why}");
    }
    // With verify_approval the worker confirms the named approver through the JSM API.
    let verify = Facts { verify_approval: true, ..Facts::default() };
    let e = field_event(Some("agent-who-clicked"), signed, Source::JiraWebhook);
    assert!(matches!(decide(&e, &c, &verify), Decision::Grant { .. }));
    // ... but never when the requester moved the ticket.
    let e = field_event(Some(REQUESTER), signed, Source::JiraWebhook);
    assert_eq!(refusal(decide(&e, &c, &verify)).code(), "approver_unconfirmed");
}

#[test]
fn an_automation_declared_approver_needs_verification_or_explicit_trust() {
    let mut c = config();
    let bearer = Some(Authenticity::Bearer);
    for source in [Source::AutomationCustom, Source::AutomationJira, Source::AutomationIssue] {
        let e = field_event(Some(APPROVER), bearer, source);
        assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_unconfirmed", "{source:?}");
        let verify = Facts { verify_approval: true, ..Facts::default() };
        assert!(matches!(decide(&e, &c, &verify), Decision::Grant { .. }), "{source:?} verified");
    }
    c.jsm.trust_automation_approver = true;
    let e = field_event(Some(APPROVER), bearer, Source::AutomationCustom);
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }), "trusted by configuration");
    // Trust never extends to a webhook body, nor to a requester's own transition.
    let e = field_event(Some("agent"), bearer, Source::JiraWebhook);
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_unconfirmed");
    let e = field_event(Some(REQUESTER), bearer, Source::AutomationCustom);
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_unconfirmed");
}

/// Normalizes a fixture as the ingress would (authenticated as given) and decides.
fn decide_fixture(name: &str, auth: Authenticity, c: &Config, facts: &Facts) -> Decision {
    let path = format!("{}/tests/fixtures/jsm/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let meta = Meta { delivery_id: None, authenticity: Some(auth) };
    match normalize::normalize(&body, &meta, &c.jsm, chrono::Utc::now()) {
        Normalized::Accepted(e) => decide(&e, c, facts),
        Normalized::Ignored(r) => panic!("{name} was ignored: {}", r.as_str()),
    }
}

fn set(v: &mut serde_json::Value, pointer: &str, to: serde_json::Value) {
    *v.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = to;
}

#[test]
fn real_payload_shapes_of_every_source_grant_only_on_a_real_approval() {
    let c = config();
    let (sig, bearer) = (Authenticity::Signature, Authenticity::Bearer);
    // Approvals field (webhook and Automation "Jira format"): approved grants ...
    let d = decide_fixture("webhook-approved-confluence-write", sig, &c, &none());
    assert!(matches!(d, Decision::Grant { .. }), "{d:?}");
    let d = decide_fixture("automation-jira-format-approved", bearer, &c, &none());
    assert!(matches!(d, Decision::Grant { .. }), "{d:?}");
    // ... the same payload with the approval declined (the ticket still moved to "Approved") does not.
    let path = format!("{}/tests/fixtures/jsm/webhook-approved-confluence-write.json", env!("CARGO_MANIFEST_DIR"));
    let mut body: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    set(&mut body, "/issue/fields/customfield_10027/0/finalDecision", "declined".into());
    set(&mut body, "/issue/fields/customfield_10027/0/approvers/0/approverDecision", "declined".into());
    let meta = Meta { delivery_id: None, authenticity: Some(sig) };
    let Normalized::Accepted(e) = normalize::normalize(&body, &meta, &c.jsm, chrono::Utc::now()) else { panic!() };
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approval_not_approved");
    // Approver field, ticket moved by someone else (an app user): refused; verified: granted.
    let d = decide_fixture("webhook-approver-field-fallback", sig, &c, &none());
    assert_eq!(refusal(d).code(), "approver_unconfirmed");
    let verify = Facts { verify_approval: true, ..Facts::default() };
    let d = decide_fixture("webhook-approver-field-fallback", sig, &c, &verify);
    assert!(matches!(d, Decision::Grant { .. }), "{d:?}");
    // The custom Automation body declares its approver: refused unless verified or trusted.
    let d = decide_fixture("automation-custom-approved-transition", bearer, &c, &none());
    assert_eq!(refusal(d).code(), "approver_unconfirmed");
    let d = decide_fixture("automation-custom-approved-transition", bearer, &c, &verify);
    assert!(matches!(d, Decision::Grant { .. }), "{d:?}");
    let mut trusting = config();
    trusting.jsm.trust_automation_approver = true;
    let d = decide_fixture("automation-custom-approved-transition", bearer, &trusting, &none());
    assert!(matches!(d, Decision::Grant { .. }), "{d:?}");
}

// --- hostile values ----------------------------------------------------------------------------

#[test]
fn an_unreadable_requested_duration_is_refused_and_a_huge_one_is_capped() {
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.duration = Some("18446744073709551615d".into());
    assert_eq!(refusal(decide(&e, &config(), &none())).code(), "invalid_duration");
    e.duration = Some("99999999d".into());
    match decide(&e, &config(), &none()) {
        Decision::Grant { lasts, .. } => assert_eq!(lasts, Some(std::time::Duration::from_secs(90 * 86_400))),
        other => panic!("{other:?}"),
    }
    let mut c = config();
    c.rules[0].max_duration = None;
    match decide(&e, &c, &none()) {
        Decision::Grant { lasts, .. } => assert_eq!(lasts, Some(crate::config::duration::MAX)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn identities_that_address_someone_else_are_refused_before_any_provider_call() {
    let mut c = config();
    c.applications.get_mut("Confluence").unwrap().settings.insert("subject_field".into(), "customfield_10090".into());
    for bad in ["me", "ME", ".", "..", "a/b", "x\u{7}y", "../admin", "alice?x=1", "bob#frag", "a b"] {
        let mut e = event(RequestAction::Grant, AppStatus::Approved);
        e.raw_fields.insert("customfield_10090".into(), bad.into());
        assert_eq!(refusal(decide(&e, &c, &none())).code(), "invalid_identity", "{bad:?}");
        // A removal request names the identity to remove: checked too.
        let mut e = event(RequestAction::Revoke, AppStatus::Approved);
        e.raw_fields.insert("customfield_10090".into(), bad.into());
        assert_eq!(refusal(decide(&e, &c, &none())).code(), "invalid_identity", "{bad:?}");
    }
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.requester = Some(person("acc\u{0}x", None));
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "invalid_identity");
    // Positive control: a real login passes, an empty field is "not given".
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    e.raw_fields.insert("customfield_10090".into(), "alice-gh".into());
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }));
    e.raw_fields.insert("customfield_10090".into(), "".into());
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }));
}

// --- no panic from any requester-controlled value ------------------------------------------------

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            "[0-9]{1,25}[a-z]{0,2}".prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            Just(serde_json::Value::Null),
            Just(serde_json::json!({"value": "Write"})),
            any::<String>().prop_map(|s| serde_json::json!({"value": s})),
            Just(serde_json::json!(["Write", "Admin"])),
        ]
    }

    fn millis() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![any::<i64>().prop_map(serde_json::Value::from), text()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn normalize_decide_and_plan_never_panic(
            application in text(), access_level in text(), duration in text(), login in text(),
            requester in text(), approver in text(), decision in text(), approver_decision in text(),
            completed in millis(), timestamp in millis(), actor in text(), verify in any::<bool>(),
            revoked_at in any::<i64>(),
        ) {
            let mut c = config();
            c.jsm.fields.duration = Some("customfield_10070".into());
            c.applications.get_mut("Confluence").unwrap().settings
                .insert("subject_field".into(), "customfield_10090".into());
            c.jsm.fields.subject_fields = vec!["customfield_10090".into()];
            let path = format!("{}/tests/fixtures/jsm/webhook-approved-confluence-write.json", env!("CARGO_MANIFEST_DIR"));
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let f = &mut v["issue"]["fields"];
            f["customfield_10050"] = application;
            f["customfield_10051"] = access_level;
            f["customfield_10070"] = duration;
            f["customfield_10090"] = login;
            f["reporter"]["accountId"] = requester;
            f["customfield_10027"][0]["finalDecision"] = decision;
            f["customfield_10027"][0]["approvers"][0]["approverDecision"] = approver_decision;
            f["customfield_10027"][0]["approvers"][0]["approver"]["accountId"] = approver;
            f["customfield_10027"][0]["completedDate"]["epochMillis"] = completed;
            v["timestamp"] = timestamp;
            v["user"]["accountId"] = actor;
            let meta = Meta { delivery_id: None, authenticity: Some(Authenticity::Signature) };
            if let Normalized::Accepted(e) = normalize::normalize(&v, &meta, &c.jsm, chrono::Utc::now()) {
                use chrono::TimeZone;
                let facts = Facts {
                    verify_approval: verify,
                    last_revoke_at: chrono::Utc.timestamp_millis_opt(revoked_at).single(),
                    ..Facts::default()
                };
                let decision = decide(&e, &c, &facts);
                if let Some(eff) = crate::grants::effect(&decision) {
                    let _ = crate::grants::plan(&crate::grants::Ledger::new(), &eff.request, &e.ticket.key, e.occurred_at);
                    let _ = crate::grants::expires_at(chrono::Utc::now(), eff.lasts);
                    let subject = crate::connectors::subject_of(&c, eff.application, eff.subject, &e.raw_fields);
                    if matches!(decision, Decision::Grant { .. }) {
                        prop_assert!(subject.is_ok(), "a grant was decided for an unusable identity");
                    }
                }
            }
        }
    }
}

/// The example config with the Confluence/Write rule changed by `edit`.
fn with_rule(edit: impl FnOnce(&mut crate::config::RuleConfig)) -> Config {
    let mut c = config();
    edit(c.rules.iter_mut().find(|r| r.application == "Confluence").expect("the Confluence rule"));
    c
}

#[test]
fn a_requester_the_rule_does_not_list_is_refused_even_when_approved() {
    let c = with_rule(|r| r.requesters = vec!["group:engineering".into(), "field:customfield_10200".into()]);
    let e = event(RequestAction::Grant, AppStatus::Approved);
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "requester_not_allowed");
    // By group membership...
    assert!(matches!(decide(&e, &c, &groups(REQUESTER, &["Engineering"])), Decision::Grant { .. }));
    // ...or named by the ticket field the rule points at.
    let mut named = e.clone();
    named.raw_fields.insert("customfield_10200".into(), serde_json::json!({"accountId": REQUESTER}));
    assert!(matches!(decide(&named, &c, &none()), Decision::Grant { .. }));
    // Removing access is never gated on who asks.
    let removal = event(RequestAction::Revoke, AppStatus::Approved);
    assert!(matches!(decide(&removal, &c, &none()), Decision::Revoke { .. }));
}

#[test]
fn a_field_approver_is_the_user_in_that_ticket_field() {
    let c = with_rule(|r| r.approvers = vec!["field:customfield_10200".into()]);
    let mut e = event(RequestAction::Grant, AppStatus::Approved);
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_not_allowed");
    e.raw_fields.insert("customfield_10200".into(), serde_json::json!({"accountId": APPROVER}));
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }));
}

#[test]
fn without_rule_approvers_the_applications_owner_approves() {
    let mut c = with_rule(|r| r.approvers.clear());
    c.applications.get_mut("Confluence").unwrap().owner = Some(APPROVER.into());
    let e = event(RequestAction::Grant, AppStatus::Approved);
    assert!(matches!(decide(&e, &c, &none()), Decision::Grant { .. }));
    c.applications.get_mut("Confluence").unwrap().owner = Some("someone-else".into());
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approver_not_allowed");
}

fn live(name: &str, decision: &str, approvers: &[(&str, &str)], done_ms: i64) -> crate::jsm::Approval {
    crate::jsm::Approval {
        id: name.into(),
        name: name.into(),
        final_decision: decision.into(),
        approvers: approvers.iter().map(|(a, d)| ((*a).to_owned(), (*d).to_owned())).collect(),
        completed_epoch_ms: Some(done_ms),
    }
}

#[test]
fn a_staged_rule_grants_only_when_every_stage_has_enough_allowed_approvals() {
    use crate::config::StageConfig;
    let c = with_rule(|r| {
        r.approvers.clear();
        r.stages = vec![
            StageConfig { status: "Manager approval".into(), approvers: vec!["mgr".into()], min_approvals: 1 },
            StageConfig {
                status: "Security approval".into(),
                approvers: vec!["group:security".into(), REQUESTER.into()],
                min_approvals: 2,
            },
        ];
    });
    let e = event(RequestAction::Grant, AppStatus::Approved);
    let facts = |approvals: Vec<crate::jsm::Approval>| Facts {
        approver_groups: [("sec-1".to_owned(), vec!["security".to_owned()]), ("sec-2".into(), vec!["security".into()])]
            .into_iter()
            .collect(),
        live_approvals: Some(approvals),
        ..Facts::default()
    };
    // Not read (no JSM credentials): never granted.
    assert_eq!(refusal(decide(&e, &c, &none())).code(), "approval_not_confirmed");
    let manager = live("Manager approval", "approved", &[("mgr", "approved")], 1_000);
    // The first stage alone.
    match refusal(decide(&e, &c, &facts(vec![manager.clone()]))) {
        Refusal::StageNotApproved { stage, needed, approved_by } => {
            assert_eq!((stage.as_str(), needed, approved_by.len()), ("Security approval", 2, 0));
        }
        other => panic!("{other:?}"),
    }
    // Two approvers, but one is the requester (distinct approvers required): one short.
    let with_requester =
        live("Security approval", "approved", &[("sec-1", "approved"), (REQUESTER, "approved")], 2_000);
    assert_eq!(refusal(decide(&e, &c, &facts(vec![manager.clone(), with_requester]))).code(), "stage_not_approved");
    // A declined approval of the stage does not count, whoever approved in it.
    let declined = live("Security approval", "declined", &[("sec-1", "approved"), ("sec-2", "approved")], 2_000);
    assert_eq!(refusal(decide(&e, &c, &facts(vec![manager.clone(), declined]))).code(), "stage_not_approved");
    let both = live("Security approval", "approved", &[("sec-1", "approved"), ("sec-2", "approved")], 2_000);
    match decide(&e, &c, &facts(vec![manager.clone(), both.clone()])) {
        Decision::Grant { approver, .. } => assert_eq!(approver.account_id, "sec-1"),
        other => panic!("{other:?}"),
    }
    // Approvals completed before the ticket's last revoke are spent.
    let mut spent = facts(vec![manager, both]);
    spent.last_revoke_at = Some(chrono::DateTime::from_timestamp_millis(1_500).unwrap());
    assert_eq!(refusal(decide(&e, &c, &spent)).code(), "stage_not_approved");
}
