//! Tests of the normalizer.
//!
//! 1. The fixture corpus: every `tests/fixtures/jsm/<case>.json` (with an optional
//!    `<case>.meta.json` carrying the delivery id) is normalized with the example
//!    config at a fixed `now` and compared with `<case>.expected.json`. To write the
//!    expected files after a deliberate change, run
//!    `ACCESSGOV_BLESS=1 cargo test --lib ingress::normalize::tests::every_fixture`,
//!    then review every changed file against the rules in issue 3.
//! 2. Focused tests, one per rule, named as the rule.
//! 3. Property tests: no JSON body panics the normalizer.

use super::*;
use crate::config::Config;
use proptest::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};

const EXAMPLE: &str = include_str!("../../../accessgov.example.toml");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jsm");
const BLESS_ENV: &str = "ACCESSGOV_BLESS";

fn jsm() -> JsmConfig {
    Config::parse(EXAMPLE).expect("the example config parses").jsm
}

/// The fixed clock of every test: 2025-12-02T00:00:00Z, the day after the corpus
/// was recorded (its bodies are from 2025-11-25 to 2025-12-01), so that they are
/// within the example's `max_event_age` (7 days) unless a case says otherwise.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, 2, 0, 0, 0).single().expect("valid date")
}

fn delivery(id: &str) -> Meta {
    Meta { delivery_id: Some(id.to_owned()), ..Meta::default() }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A fixture body by case name.
fn fixture(case: &str) -> Value {
    read_json(&Path::new(FIXTURES).join(format!("{case}.json")))
}

/// The optional `<case>.meta.json` beside a fixture body.
fn fixture_meta(body_path: &Path) -> Meta {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct MetaFile {
        delivery_id: Option<String>,
    }
    let path = body_path.with_extension("meta.json");
    if !path.exists() {
        return Meta::default();
    }
    let meta: MetaFile = serde_json::from_value(read_json(&path))
        .unwrap_or_else(|e| panic!("{}: expected {{\"delivery_id\": ...}}: {e}", path.display()));
    Meta { delivery_id: meta.delivery_id, ..Meta::default() }
}

/// Every fixture body, sorted: `*.json` minus `*.expected.json` and `*.meta.json`.
fn fixture_bodies() -> Vec<PathBuf> {
    let mut bodies: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("listing {FIXTURES}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && !name.ends_with(".expected.json") && !name.ends_with(".meta.json")
        })
        .collect();
    bodies.sort();
    bodies
}

/// The outcome as the corpus (and `accessgov simulate`) shows it.
fn outcome_json(n: &Normalized) -> Value {
    match n {
        Normalized::Accepted(event) => json!({
            "outcome": "accepted",
            "ignore_reason": null,
            "event": serde_json::to_value(event).expect("an event serializes"),
        }),
        Normalized::Ignored(reason) => json!({"outcome": "ignored", "ignore_reason": reason.as_str(), "event": null}),
    }
}

fn accepted(n: Normalized) -> AccessEvent {
    match n {
        Normalized::Accepted(event) => *event,
        Normalized::Ignored(reason) => panic!("expected an accepted event, got ignored: {}", reason.as_str()),
    }
}

/// Sets `path` (dot-separated keys, numeric segments index arrays) in `v`; creates the last key of an object.
fn set(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        cur = match cur {
            Value::Array(items) => match seg.parse::<usize>().ok().and_then(|n| items.get_mut(n)) {
                Some(item) => item,
                None => panic!("no index {seg} in {path}"),
            },
            Value::Object(map) if last => {
                map.insert((*seg).to_owned(), new);
                return;
            }
            Value::Object(map) => map.get_mut(*seg).unwrap_or_else(|| panic!("no key {seg} in {path}")),
            _ => panic!("cannot descend into {seg} of {path}"),
        };
        if last {
            *cur = new;
            return;
        }
    }
}

fn remove(v: &mut Value, path: &str) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let target = if parent.is_empty() { Some(v) } else { v.pointer_mut(&format!("/{}", parent.replace('.', "/"))) };
    if let Some(Value::Object(map)) = target {
        map.remove(key);
    }
}

// ---------------------------------------------------------------------------
// 1. The fixture corpus

/// Lists where `actual` departs from `expected`, one line per JSON path.
fn differences(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    fn short(v: &Value) -> String {
        let s = v.to_string();
        if s.chars().count() > 160 { format!("{}…", s.chars().take(160).collect::<String>()) } else { s }
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => differences(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: expected {}, but it is absent", short(ev))),
                }
            }
            for (k, av) in a.iter().filter(|(k, _)| !e.contains_key(*k)) {
                out.push(format!("{path}.{k}: not expected, got {}", short(av)));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                differences(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(format!("{path}: expected {}, got {}", short(expected), short(actual))),
    }
}

#[test]
fn every_fixture_normalizes_to_its_expected_result() {
    let jsm = jsm();
    let bless = std::env::var(BLESS_ENV).is_ok_and(|v| v == "1");
    let bodies = fixture_bodies();
    assert!(bodies.len() >= 20, "the corpus holds {} bodies, expected at least 20", bodies.len());

    let mut failures = Vec::new();
    for body_path in &bodies {
        let name = body_path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let actual = outcome_json(&normalize(&read_json(body_path), &fixture_meta(body_path), &jsm, now()));
        let expected_path = body_path.with_extension("expected.json");
        if bless {
            let text = serde_json::to_string_pretty(&actual).expect("serializes") + "\n";
            std::fs::write(&expected_path, text).unwrap_or_else(|e| panic!("writing {}: {e}", expected_path.display()));
            continue;
        }
        if !expected_path.exists() {
            failures.push(format!(
                "fixture {name}: no expected file {} (write it with {BLESS_ENV}=1, then review it)",
                expected_path.display()
            ));
            continue;
        }
        let expected = read_json(&expected_path);
        let mut diffs = Vec::new();
        differences("$", &expected, &actual, &mut diffs);
        if !diffs.is_empty() {
            failures.push(format!(
                "fixture {name}: {} difference(s) from {}:\n    {}\n  actual result:\n{}",
                diffs.len(),
                expected_path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                diffs.join("\n    "),
                serde_json::to_string_pretty(&actual).expect("serializes")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        bodies.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_expected_and_meta_file_belongs_to_a_fixture_body() {
    for entry in std::fs::read_dir(FIXTURES).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        for suffix in [".expected.json", ".meta.json"] {
            if let Some(case) = name.strip_suffix(suffix) {
                assert!(Path::new(FIXTURES).join(format!("{case}.json")).exists(), "{name} has no body {case}.json");
            }
        }
    }
}

#[test]
fn a_200_kb_description_is_read_and_never_carried_into_the_event() {
    // Arrange: an approved transition whose description is ~200 KB of wiki markup.
    let base = fixture("webhook-approved-confluence-write");
    let paragraph = "h2. Justification ✓\n\nI need *write* access to {{platform}} because \"reasons\" \\ and {code:json}{\"a\": [1, 2]}{code}.\n\
                     || Space || Pages ||\n| PLAT | 1 200 |\nZoë – 山田 – Ольга\n\n";
    let description = paragraph.repeat(200_000 / paragraph.len() + 1);
    let mut big = base.clone();
    set(&mut big, "issue.fields.description", Value::String(description));
    let raw = serde_json::to_vec(&big).expect("serializes");
    assert!((200_000..1_048_576).contains(&raw.len()), "body is {} bytes", raw.len());

    // Act: parse the raw bytes as ingress does, then normalize.
    let body: Value = serde_json::from_slice(&raw).expect("parses");
    let event = accepted(normalize(&body, &Meta::default(), &jsm(), now()));

    // Assert: the same event as without the description, and a small one.
    assert_eq!(event, accepted(normalize(&base, &Meta::default(), &jsm(), now())));
    let published = serde_json::to_vec(&event).expect("serializes");
    assert!(published.len() < 16 * 1024, "event is {} bytes", published.len());
    assert!(!String::from_utf8_lossy(&published).contains("Justification"));
}

// ---------------------------------------------------------------------------
// 2. The rules

#[test]
fn a_transition_is_only_a_changelog_item_whose_field_id_is_status() {
    let jsm = jsm();
    let base = fixture("webhook-updated-approved-okta-user");
    assert!(matches!(normalize(&base, &Meta::default(), &jsm, now()), Normalized::Accepted(_)));

    // The same item under another field id (a custom field named "status") is no transition.
    let mut other_field = base.clone();
    set(&mut other_field, "changelog.items.0.fieldId", json!("customfield_10099"));
    assert_eq!(
        normalize(&other_field, &Meta::default(), &jsm, now()),
        Normalized::Ignored(IgnoreReason::NoStatusChange)
    );

    // The field name is not the key: "Status" (as on creations) with fieldId "status" still is one.
    let mut capital = base.clone();
    set(&mut capital, "changelog.items.0.field", json!("Status"));
    assert!(matches!(normalize(&capital, &Meta::default(), &jsm, now()), Normalized::Accepted(_)));
}

#[test]
fn the_current_issue_status_is_never_taken_as_a_transition() {
    let jsm = jsm();
    // The ticket sits in "Approved by Manager"; the update has no status item, or no changelog at all.
    let mut no_changelog = fixture("webhook-updated-approved-okta-user");
    assert_eq!(no_changelog["issue"]["fields"]["status"]["name"], "Approved by Manager");
    remove(&mut no_changelog, "changelog");
    assert_eq!(
        normalize(&no_changelog, &Meta::default(), &jsm, now()),
        Normalized::Ignored(IgnoreReason::NoStatusChange)
    );

    let mut empty_items = fixture("webhook-updated-approved-okta-user");
    set(&mut empty_items, "changelog.items", json!([]));
    assert_eq!(
        normalize(&empty_items, &Meta::default(), &jsm, now()),
        Normalized::Ignored(IgnoreReason::NoStatusChange)
    );
}

#[test]
fn a_creation_is_never_a_transition_even_into_a_mapped_status() {
    let jsm = jsm();
    let created = fixture("webhook-created-in-mapped-status");
    // A creation is routed, never decided: `created`, keyed by the issue alone.
    let event = accepted(normalize(&created, &Meta::default(), &jsm, now()));
    assert_eq!(event.app_status, AppStatus::Created);
    assert_eq!(event.status.from, None);
    assert_eq!(event.dedupe_key, format!("jira:{}:created", event.ticket.id));

    // The very same body as an update is a transition: only the event kind differs.
    let mut updated = created.clone();
    set(&mut updated, "webhookEvent", json!("jira:issue_updated"));
    let event = accepted(normalize(&updated, &Meta::default(), &jsm, now()));
    assert_eq!(event.status.from, None);
    assert_eq!(event.app_status, AppStatus::Approved);
}

#[test]
fn automation_bodies_are_a_status_snapshot_without_a_from_status_or_actor() {
    let jsm = jsm();
    for (case, source) in [
        ("automation-jira-format-approved", Source::AutomationJira),
        ("automation-issue-format-revoked", Source::AutomationIssue),
    ] {
        let event = accepted(normalize(&fixture(case), &Meta::default(), &jsm, now()));
        assert_eq!(event.source, source, "{case}");
        assert_eq!((event.status.from, event.status.from_id), (None, None), "{case}");
        assert_eq!(event.actor, None, "{case}");
        assert_eq!(event.changelog_id, None, "{case}");
        // Numeric ids arrive as strings.
        assert!(event.ticket.id.parse::<u64>().is_ok(), "{case}: {}", event.ticket.id);
    }
}

#[test]
fn a_custom_automation_body_is_a_transition_with_a_from_status_and_a_snapshot_without() {
    let jsm = jsm();
    let transition =
        accepted(normalize(&fixture("automation-custom-approved-transition"), &Meta::default(), &jsm, now()));
    assert_eq!(transition.source, Source::AutomationCustom);
    assert_eq!(
        transition.status,
        StatusChange {
            from: Some("Waiting for approval".into()),
            to: "Approved by Manager".into(),
            from_id: Some("10100".into()),
            to_id: Some("10101".into()),
        }
    );
    assert_eq!((transition.app_status, transition.action), (AppStatus::Approved, crate::config::RequestAction::Grant));
    assert_eq!(transition.approver.expect("approver").source, ApproverSource::ApproverField);

    // The same rule fired by a trigger without a status change: the changelog smart values render empty.
    let mut body = fixture("automation-custom-approved-transition");
    set(&mut body, "status.from", json!(""));
    set(&mut body, "status.from_id", json!(""));
    let snapshot = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    assert_eq!((snapshot.status.from, snapshot.status.from_id), (None, None));
    // Same issue, status and update: the same event either way.
    assert_eq!(snapshot.event_id, transition.event_id);

    let revoked = accepted(normalize(&fixture("automation-custom-revoked-snapshot"), &Meta::default(), &jsm, now()));
    assert_eq!((revoked.status.from, revoked.app_status), (None, AppStatus::Revoked));
}

#[test]
fn empty_smart_values_in_a_custom_body_are_missing_values() {
    let jsm = jsm();
    let event = accepted(normalize(&fixture("automation-custom-revoked-snapshot"), &Meta::default(), &jsm, now()));
    // An unset approver renders as empty strings: no approver, and never the actor instead.
    assert_eq!(event.approver, None);
    assert_eq!(event.actor.expect("actor").display_name.as_deref(), Some("Automation for Jira"));
    // Hidden emails render empty.
    assert_eq!(event.requester.expect("requester").email, None);
    assert_eq!((event.duration, event.department), (None, None));

    let event = accepted(normalize(&fixture("automation-custom-empty-application"), &Meta::default(), &jsm, now()));
    assert_eq!(event.application, None);
    assert_eq!(event.errors, vec!["missing_required:application".to_owned()]);

    // Whitespace, null or an absent key are missing as well; several selected values are an error, not a guess.
    let base = fixture("automation-custom-approved-transition");
    for (value, error) in [
        (json!("  "), "missing_required:access_level"),
        (json!(null), "missing_required:access_level"),
        (json!(["Read", "Write"]), "unexpected_shape:access_level:array"),
    ] {
        let mut body = base.clone();
        set(&mut body, "access_level", value);
        assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).errors, vec![error.to_owned()]);
    }
    let mut body = base.clone();
    remove(&mut body, "access_level");
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).errors, vec!["missing_required:access_level"]);

    // An empty status, request type or issue id cannot be an access event.
    for (path, reason) in [
        ("status.to", IgnoreReason::NoStatusChange),
        ("request_type", IgnoreReason::NotAnAccessRequest),
        ("issue.id", IgnoreReason::UnrecognizedFormat),
        ("issue.key", IgnoreReason::UnrecognizedFormat),
    ] {
        let mut body = base.clone();
        set(&mut body, path, json!(""));
        assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(reason), "{path}");
    }
}

#[test]
fn a_custom_body_maps_request_types_and_statuses_through_the_same_config() {
    let jsm = jsm();
    let base = fixture("automation-custom-approved-transition");
    let mut body = base.clone();
    set(&mut body, "status.to", json!("approved by manager"));
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).app_status, AppStatus::Approved);
    set(&mut body, "status.to", json!("In Progress"));
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::StatusNotActionable));
    let mut body = base.clone();
    set(&mut body, "request_type", json!("Report a bug"));
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::NotAnAccessRequest));
    let mut body = base.clone();
    set(&mut body, "request_type", json!("Request Access Change"));
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).action, crate::config::RequestAction::Change);
    // Numbers where the template quotes ids are read as ids.
    let mut body = base.clone();
    set(&mut body, "issue.id", json!(10131));
    set(&mut body, "status.to_id", json!(10101));
    assert_eq!(
        accepted(normalize(&body, &Meta::default(), &jsm, now())),
        accepted(normalize(&base, &Meta::default(), &jsm, now()))
    );
    // Another version of the body is not guessed at.
    let mut body = base.clone();
    set(&mut body, "schema", json!("accessgov.automation/v2"));
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::UnrecognizedFormat));
}

/// The "Custom data" template in the README, rendered as Automation would: `{{x.asJsonString}}`
/// becomes a JSON string, `{{x}}` its text (inside the template's quotes), unset values nothing.
fn render_readme_template(values: &[(&str, &str)]) -> Value {
    let readme = include_str!("../../../README.md");
    let section = readme.split("## Automation rule (custom body)").nth(1).expect("the README has the section");
    let template = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section has a json block");
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed smart value") + start;
        let expr = &rest[start + 2..end];
        let (path, as_json) = match expr.strip_suffix(".asJsonString") {
            Some(path) => (path, true),
            None => (expr, false),
        };
        let value = values.iter().find(|(p, _)| *p == path).map_or("", |(_, v)| *v);
        if as_json {
            out.push_str(&Value::String(value.to_owned()).to_string());
        } else {
            assert!(!value.contains(['"', '\\']), "{path}: a quoted smart value must not need escaping");
            out.push_str(value);
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("the rendered template is not JSON: {e}\n{out}"))
}

#[test]
fn the_readme_template_renders_to_the_documented_custom_body() {
    let jsm = jsm();
    let full = [
        ("issue.id", "10131"),
        ("issue.key", "ACC-131"),
        ("issue.project.key", "ACC"),
        ("issue.customfield_10010.requestType.name", "Request Application Access"),
        ("changelog.status.fromString", "Waiting for approval"),
        ("changelog.status.from", "10100"),
        ("issue.status.name", "Approved by Manager"),
        ("issue.status.id", "10101"),
        ("issue.customfield_10050.value", "Confluence"),
        ("issue.customfield_10051.value", "Write"),
        ("issue.reporter.accountId", "712020:0e4b6a43-1f7c-4d5e-9a3b-2c1d0e9f8a7b"),
        ("issue.reporter.emailAddress", "dana.requester@example.com"),
        ("issue.reporter.displayName", "Dana Requester"),
        ("issue.customfield_10060.accountId", "5f8e1b2c3d4a5b6c7d8e9f01"),
        ("issue.customfield_10060.emailAddress", "morgan.manager@example.com"),
        ("issue.customfield_10060.displayName", "Morgan Manager"),
        ("initiator.accountId", "5f8e1b2c3d4a5b6c7d8e9f01"),
        ("initiator.emailAddress", "morgan.manager@example.com"),
        ("initiator.displayName", "Morgan Manager"),
        ("issue.updated.jiraDateTime", "2025-12-01T12:20:00.0+0000"),
    ];
    // Rendered with every value, the template is the transition fixture, key for key (minus its optional keys).
    let rendered = render_readme_template(&full);
    let mut fixture_body = fixture("automation-custom-approved-transition");
    remove(&mut fixture_body, "duration");
    remove(&mut fixture_body, "department");
    assert_eq!(rendered, fixture_body);
    let event = accepted(normalize(&rendered, &Meta::default(), &jsm, now()));
    assert_eq!(event.dedupe_key, "automation-custom:10131:10101:2025-12-01T12:20:00.0+0000");
    assert_eq!(event.occurred_at, Utc.with_ymd_and_hms(2025, 12, 1, 12, 20, 0).single().expect("date"));

    // A trigger without a status change, no approver, hidden emails, no application:
    // still JSON, and read as a snapshot with the missing value reported.
    let unset = ["changelog.", "issue.customfield_10060.", "emailAddress", "issue.customfield_10050."];
    let sparse: Vec<(&str, &str)> =
        full.iter().copied().filter(|(path, _)| !unset.iter().any(|u| path.contains(u))).collect();
    let event = accepted(normalize(&render_readme_template(&sparse), &Meta::default(), &jsm, now()));
    assert_eq!((event.status.from.as_deref(), event.approver.as_ref()), (None, None));
    assert_eq!(event.requester.expect("requester").email, None);
    assert_eq!(event.errors, vec!["missing_required:application".to_owned()]);
}

#[test]
fn the_actor_never_becomes_the_approver() {
    let jsm = jsm();
    // No approvals, no approver field: the agent who moved the ticket is the actor, not the approver.
    let event = accepted(normalize(&fixture("webhook-no-approver-actor-not-taken"), &Meta::default(), &jsm, now()));
    assert_eq!(event.approver, None);
    assert_eq!(event.actor.expect("actor").display_name.as_deref(), Some("Alex Agent"));

    // With approvals, the approver is the decider even when an app moved the ticket.
    let event = accepted(normalize(&fixture("webhook-approved-confluence-write"), &Meta::default(), &jsm, now()));
    let approver = event.approver.expect("approver");
    assert_eq!(
        (approver.person.display_name.as_deref(), approver.source),
        (Some("Morgan Manager"), ApproverSource::JsmApprovals)
    );
    assert_eq!(event.actor.expect("actor").display_name.as_deref(), Some("Automation for Jira"));
}

#[test]
fn the_latest_final_decision_names_the_approver_who_made_it() {
    // Two decided approvals (the newer listed first) and, in the newer one, a pending co-approver listed first.
    let event = accepted(normalize(&fixture("webhook-two-approvals-latest-wins"), &Meta::default(), &jsm(), now()));
    let approver = event.approver.expect("approver");
    assert_eq!(approver.person.account_id, "6123abcd0987ef6543210fed");
    assert_eq!(approver.source, ApproverSource::JsmApprovals);
}

#[test]
fn an_approval_nobody_decided_names_no_approver_and_falls_back_to_the_approver_field() {
    let jsm = jsm();
    let mut body = fixture("webhook-updated-approved-okta-user");
    // A final decision whose only listed approver is still "pending" (e.g. decided by a rule or an admin).
    set(&mut body, "issue.fields.customfield_10027.0.approvers.0.approverDecision", json!("pending"));
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).approver, None);

    set(
        &mut body,
        "issue.fields.customfield_10060",
        json!({"accountId": "5d4c3b2a19f8e7d6c5b4a392", "displayName": "Tarō Yamada"}),
    );
    let approver = accepted(normalize(&body, &Meta::default(), &jsm, now())).approver.expect("approver");
    assert_eq!(
        (approver.person.account_id.as_str(), approver.source),
        ("5d4c3b2a19f8e7d6c5b4a392", ApproverSource::ApproverField)
    );
}

#[test]
fn the_approver_field_may_be_the_assignee() {
    let mut jsm = jsm();
    jsm.fields.approver = Some("assignee".to_owned());
    let mut body = fixture("webhook-approver-field-fallback");
    let morgan = body["issue"]["fields"]["customfield_10060"].clone();
    set(&mut body, "issue.fields.customfield_10060", Value::Null);
    set(&mut body, "issue.fields.assignee", morgan);

    let event = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    let approver = event.approver.expect("approver");
    assert_eq!(
        (approver.person.display_name.as_deref(), approver.source),
        (Some("Morgan Manager"), ApproverSource::ApproverField)
    );
    assert!(event.raw_fields.contains_key("assignee"));
}

#[test]
fn the_same_delivery_always_gives_the_same_event_id() {
    let jsm = jsm();
    let body = fixture("webhook-updated-approved-okta-user");
    let first = accepted(normalize(&body, &delivery("3c5a8f3e"), &jsm, now()));
    // A retry of the delivery, processed at another time.
    let retry = accepted(normalize(&body, &delivery("3c5a8f3e"), &jsm, now() + chrono::Duration::minutes(30)));
    assert_eq!(first, retry);
    // The same change delivered to a second registered webhook: another identifier, one event.
    let twin = accepted(normalize(&body, &delivery("77aa0c1e"), &jsm, now()));
    assert_eq!(twin.event_id, first.event_id);
    // Another change of the same issue is another event.
    let mut next = body.clone();
    set(&mut next, "changelog.id", json!("30999"));
    assert_ne!(accepted(normalize(&next, &delivery("3c5a8f3e"), &jsm, now())).event_id, first.event_id);
}

#[test]
fn without_a_changelog_id_the_unsigned_delivery_header_never_makes_a_new_event() {
    let jsm = jsm();
    // A signed body without a changelog id, captured and replayed with a fresh
    // X-Atlassian-Webhook-Identifier (a header the signature does not cover).
    let mut body = fixture("webhook-updated-approved-okta-user");
    remove(&mut body, "changelog.id");
    let original = accepted(normalize(&body, &delivery("3c5a8f3e"), &jsm, now()));
    let replayed = accepted(normalize(&body, &delivery("attacker-chosen-1"), &jsm, now()));
    assert_eq!(replayed.event_id, original.event_id);
    assert_eq!(replayed.dedupe_key, original.dedupe_key);
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).event_id, original.event_id);
    // The identifier is still carried for the audit.
    assert_eq!(replayed.delivery_id.as_deref(), Some("attacker-chosen-1"));
    // Another change of the issue (another body time) is another event.
    let mut later = body.clone();
    set(&mut later, "timestamp", json!(1_764_590_999_000_i64));
    assert_ne!(accepted(normalize(&later, &delivery("3c5a8f3e"), &jsm, now())).event_id, original.event_id);
}

#[test]
fn dedupe_keys_have_one_format_per_source() {
    let jsm = jsm();
    let key = |case: &str, meta: &Meta, edit: &dyn Fn(&mut Value)| {
        let mut body = fixture(case);
        edit(&mut body);
        let event = accepted(normalize(&body, meta, &jsm, now()));
        assert_eq!(event.event_id, event_id_for(&event.dedupe_key), "{case}");
        event.dedupe_key
    };
    let keep = |_: &mut Value| {};
    let drop_changelog_id = |b: &mut Value| remove(b, "changelog.id");

    // Webhook: issue id and changelog id, whatever the delivery id.
    assert_eq!(key("webhook-updated-approved-okta-user", &delivery("d-1"), &keep), "jira:10101:30101");
    // Webhook without a changelog id: issue id, target status id and the body's
    // timestamp, whatever the (unsigned) delivery identifier.
    assert_eq!(
        key("webhook-updated-approved-okta-user", &delivery("d-1"), &drop_changelog_id),
        "jira:10101:10101:1764590401234"
    );
    assert_eq!(key("webhook-no-changelog-id-no-delivery", &Meta::default(), &keep), "jira:10126:10101:1764591900000");
    assert_eq!(key("webhook-no-changelog-id-no-delivery", &delivery("d-2"), &keep), "jira:10126:10101:1764591900000");
    // Automation: issue id, status id and update time.
    assert_eq!(
        key("automation-jira-format-approved", &Meta::default(), &keep),
        "automation:10114:10101:2025-12-01T12:13:00.000+0000"
    );
    assert_eq!(
        key("automation-issue-format-revoked", &delivery("ignored-for-the-key"), &keep),
        "automation:10115:10103:2025-12-01T12:14:00.000+0000"
    );
    // Custom Automation body: issue id, status id (else name) and update time.
    assert_eq!(
        key("automation-custom-approved-transition", &delivery("ignored-for-the-key"), &keep),
        "automation-custom:10131:10101:2025-12-01T12:20:00.0+0000"
    );
    let no_status_id = |b: &mut Value| set(b, "status.to_id", json!(""));
    assert_eq!(
        key("automation-custom-approved-transition", &Meta::default(), &no_status_id),
        "automation-custom:10131:Approved by Manager:2025-12-01T12:20:00.0+0000"
    );
}

#[test]
fn an_automation_resend_of_the_same_update_is_the_same_event_and_a_new_update_is_not() {
    let jsm = jsm();
    let body = fixture("automation-jira-format-approved");
    let first = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).event_id, first.event_id);

    let mut later = body.clone();
    set(&mut later, "issue.fields.updated", json!("2025-12-02T09:00:00.000+0000"));
    let second = accepted(normalize(&later, &Meta::default(), &jsm, now()));
    assert_ne!(second.event_id, first.event_id);
    assert_eq!(second.occurred_at, Utc.with_ymd_and_hms(2025, 12, 2, 9, 0, 0).single().expect("date"));
}

#[test]
fn occurred_at_comes_from_the_body_and_from_the_clock_only_when_the_body_has_no_time() {
    let jsm = jsm();
    let mut body = fixture("webhook-updated-approved-okta-user");
    let event = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    assert_eq!(event.occurred_at.timestamp_millis(), 1_764_590_401_234);

    remove(&mut body, "timestamp");
    assert_eq!(accepted(normalize(&body, &Meta::default(), &jsm, now())).occurred_at, now());
}

#[test]
fn an_event_older_than_max_event_age_is_ignored_as_stale() {
    let jsm = jsm();
    assert_eq!(jsm.max_event_age, std::time::Duration::from_secs(7 * 86_400), "the default");
    let body = fixture("webhook-updated-approved-okta-user");
    let occurred = accepted(normalize(&body, &Meta::default(), &jsm, now())).occurred_at;
    let at = |after: chrono::Duration| normalize(&body, &Meta::default(), &jsm, occurred + after);
    // Exactly max_event_age old is still accepted; a millisecond more is stale.
    assert!(matches!(at(chrono::Duration::days(7)), Normalized::Accepted(_)));
    assert_eq!(
        at(chrono::Duration::days(7) + chrono::Duration::milliseconds(1)),
        Normalized::Ignored(IgnoreReason::Stale)
    );
    // Every format's own time counts: the Automation bodies' `updated`.
    for case in
        ["automation-jira-format-approved", "automation-issue-format-revoked", "automation-custom-approved-transition"]
    {
        let body = fixture(case);
        let occurred = accepted(normalize(&body, &Meta::default(), &jsm, now())).occurred_at;
        let later = occurred + chrono::Duration::days(8);
        assert_eq!(normalize(&body, &Meta::default(), &jsm, later), Normalized::Ignored(IgnoreReason::Stale), "{case}");
    }
    // The setting is read from the config.
    let mut short = jsm.clone();
    short.max_event_age = std::time::Duration::from_secs(3600);
    let two_hours_later = occurred + chrono::Duration::hours(2);
    assert_eq!(normalize(&body, &Meta::default(), &short, two_hours_later), Normalized::Ignored(IgnoreReason::Stale));
    // A body that is no access event keeps its own reason, however old.
    let mut comment = body.clone();
    remove(&mut comment, "changelog");
    let much_later = occurred + chrono::Duration::days(400);
    assert_eq!(
        normalize(&comment, &Meta::default(), &jsm, much_later),
        Normalized::Ignored(IgnoreReason::NoStatusChange)
    );
    // Without a time of its own the event happens now, so it is never stale.
    let mut timeless = body.clone();
    remove(&mut timeless, "timestamp");
    assert!(matches!(normalize(&timeless, &Meta::default(), &jsm, much_later), Normalized::Accepted(_)));
}

#[test]
fn is_stale_never_calls_the_future_stale_nor_panics_on_huge_ages() {
    let max = std::time::Duration::from_secs(7 * 86_400);
    assert!(!is_stale(now() + chrono::Duration::days(30), now(), max), "clock skew");
    assert!(!is_stale(now(), now(), max));
    assert!(is_stale(now() - chrono::Duration::days(8), now(), max));
    assert!(!is_stale(DateTime::<Utc>::MIN_UTC, now(), std::time::Duration::MAX));
    assert!(is_stale(DateTime::<Utc>::MIN_UTC, now(), max));
}

#[test]
fn a_nul_anywhere_in_the_event_is_found_and_named_by_its_path() {
    let jsm = jsm();
    let event = |edit: &dyn Fn(&mut Value)| {
        let mut body = fixture("webhook-approved-confluence-write");
        edit(&mut body);
        accepted(normalize(&body, &Meta::default(), &jsm, now()))
    };
    assert_eq!(unstorable_value(&event(&|_| {})), None);
    // Values the event carries as its own fields are named as the event calls them.
    let cases: [(&str, Value, &str); 5] = [
        ("issue.fields.customfield_10050.value", json!("Conf\u{0}luence"), "application"),
        ("issue.fields.reporter.displayName", json!("Dana\u{0}"), "requester.display_name"),
        ("issue.key", json!("ACC-\u{0}42"), "ticket.key"),
        ("changelog.items.1.fromString", json!("\u{0}"), "status.from"),
        // Only in the raw copy of a configured field: the path into it.
        (
            "issue.fields.customfield_10027.0.name",
            json!("Manager\u{0}approval"),
            "raw_fields.customfield_10027[0].name",
        ),
    ];
    for (path, value, expected) in cases {
        assert_eq!(unstorable_value(&event(&|b| set(b, path, value.clone()))).as_deref(), Some(expected), "{path}");
    }
    // An object key is a string too (jsonb keys are text).
    let key = event(&|b| set(b, "issue.fields.customfield_10050.a\u{0}b", json!(1)));
    assert_eq!(unstorable_value(&key).as_deref(), Some("raw_fields.customfield_10050.a\u{0}b"));
    // Where the event carries nothing (the description), a NUL does no harm.
    assert_eq!(unstorable_value(&event(&|b| set(b, "issue.fields.description", json!("a\u{0}b")))), None);
}

#[test]
fn nul_path_walks_strings_arrays_and_keys_in_order() {
    assert_eq!(nul_path(&json!({"a": [1, "x", {"b": "\u{0}"}], "c": "\u{0}"}), ""), Some("a[2].b".to_owned()));
    assert_eq!(nul_path(&json!("\u{0}"), "root"), Some("root".to_owned()));
    assert_eq!(nul_path(&json!({"k\u{0}": null}), ""), Some("k\u{0}".to_owned()));
    assert_eq!(nul_path(&json!({"a": ["x", 1, null, true, {"b": "Zoë 山田 \u{1F600}"}]}), ""), None);
}

#[test]
fn a_multi_select_where_one_value_is_expected_is_an_error_not_a_guess() {
    let event = accepted(normalize(&fixture("webhook-multiselect-application"), &Meta::default(), &jsm(), now()));
    assert_eq!(event.application, None);
    assert_eq!(event.errors, vec!["unexpected_shape:application:array".to_owned()]);
    assert_eq!(event.access_level.as_deref(), Some("User"));
}

#[test]
fn hidden_or_empty_emails_are_null_and_people_keep_their_account_ids() {
    let event = accepted(normalize(&fixture("webhook-hidden-emails"), &Meta::default(), &jsm(), now()));
    let requester = event.requester.expect("requester");
    assert!(requester.account_id.starts_with("qm:"));
    assert_eq!(requester.email, None);
    assert_eq!(event.approver.expect("approver").person.email, None);
    assert_eq!(event.actor.expect("actor").email, None);
}

#[test]
fn status_names_match_the_config_case_insensitively() {
    let mut body = fixture("webhook-updated-approved-okta-user");
    set(&mut body, "changelog.items.0.toString", json!("APPROVED BY MANAGER"));
    let event = accepted(normalize(&body, &Meta::default(), &jsm(), now()));
    assert_eq!(event.app_status, AppStatus::Approved);
    assert_eq!(event.status.to, "APPROVED BY MANAGER");
}

#[test]
fn bodies_that_are_no_issue_at_all_are_unrecognized() {
    let jsm = jsm();
    for body in
        [json!(null), json!([]), json!("jira:issue_updated"), json!({}), json!({"issue": 3}), json!({"key": "ACC-1"})]
    {
        assert_eq!(
            normalize(&body, &Meta::default(), &jsm, now()),
            Normalized::Ignored(IgnoreReason::UnrecognizedFormat),
            "{body}"
        );
    }
}

#[test]
fn ignore_reasons_serialize_as_their_metric_names() {
    for reason in [
        IgnoreReason::NotAnAccessRequest,
        IgnoreReason::NoStatusChange,
        IgnoreReason::StatusNotActionable,
        IgnoreReason::UnsupportedEvent,
        IgnoreReason::UnrecognizedFormat,
        IgnoreReason::Stale,
    ] {
        assert_eq!(serde_json::to_value(reason).expect("serializes"), json!(reason.as_str()));
    }
}

// ---------------------------------------------------------------------------
// 3. Properties

/// Keys that the normalizer looks for, so that random objects reach deep paths.
const KEYS: &[&str] = &[
    "webhookEvent",
    "timestamp",
    "user",
    "issue",
    "id",
    "key",
    "fields",
    "changelog",
    "items",
    "field",
    "fieldId",
    "from",
    "fromString",
    "to",
    "toString",
    "status",
    "name",
    "updated",
    "project",
    "reporter",
    "assignee",
    "accountId",
    "emailAddress",
    "displayName",
    "value",
    "requestType",
    "customfield_10010",
    "customfield_10050",
    "customfield_10051",
    "customfield_10060",
    "customfield_10027",
    "approvers",
    "approver",
    "approverDecision",
    "finalDecision",
    "completedDate",
    "epochMillis",
    "schema",
    "request_type",
    "application",
    "access_level",
    "account_id",
    "email",
    "display_name",
    "project_key",
    "from_id",
    "to_id",
];

/// Strings that mean something to the normalizer or the example config.
const STRINGS: &[&str] = &[
    "",
    " ",
    "jira:issue_updated",
    "jira:issue_created",
    "jira:issue_deleted",
    "status",
    "Status",
    "Approved by Manager",
    "approved by manager",
    "Rejected",
    "Access Revoked",
    "Declined by User",
    "Request Application Access",
    "Request Access Removal",
    "Request Access Change",
    "approved",
    "declined",
    "pending",
    "reporter",
    "assignee",
    "2025-12-01T12:00:00.000+0000",
    "2025-12-01T12:00:00Z",
    "not a date",
    "ACC-1",
    "10101",
    "Zoë 山田",
    "\u{0}",
    "-1",
    "accessgov.automation/v1",
    "accessgov.automation/v2",
];

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_owned())),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-zA-Z_]{0,10}"]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(6, 128, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths into real bodies that the normalizer reads (for bare Automation issues the `issue.` prefix is dropped).
const PATHS: &[&str] = &[
    "webhookEvent",
    "timestamp",
    "user",
    "user.accountId",
    "changelog",
    "changelog.id",
    "changelog.items",
    "changelog.items.0",
    "changelog.items.1",
    "changelog.items.1.fieldId",
    "changelog.items.1.toString",
    "changelog.items.1.to",
    "changelog.items.1.from",
    "issue",
    "issue.id",
    "issue.key",
    "issue.fields",
    "issue.fields.status",
    "issue.fields.status.name",
    "issue.fields.status.id",
    "issue.fields.updated",
    "issue.fields.project",
    "issue.fields.reporter",
    "issue.fields.reporter.accountId",
    "issue.fields.reporter.emailAddress",
    "issue.fields.customfield_10010",
    "issue.fields.customfield_10010.requestType",
    "issue.fields.customfield_10010.requestType.name",
    "issue.fields.customfield_10050",
    "issue.fields.customfield_10050.value",
    "issue.fields.customfield_10051",
    "issue.fields.customfield_10060",
    "issue.fields.customfield_10027",
    "issue.fields.customfield_10027.0",
    "issue.fields.customfield_10027.0.finalDecision",
    "issue.fields.customfield_10027.0.approvers",
    "issue.fields.customfield_10027.0.approvers.0.approver",
    "issue.fields.customfield_10027.0.approvers.0.approverDecision",
    "issue.fields.customfield_10027.0.completedDate.epochMillis",
    // The custom Automation body.
    "schema",
    "request_type",
    "status.from",
    "status.to",
    "status.to_id",
    "application",
    "access_level",
    "requester",
    "requester.account_id",
    "approver",
    "approver.account_id",
    "actor",
    "updated",
];

const BASES: &[&str] = &[
    "webhook-approved-confluence-write",
    "webhook-two-approvals-latest-wins",
    "automation-jira-format-approved",
    "automation-issue-format-revoked",
    "automation-custom-approved-transition",
];

/// Sets `path` where its parent exists; silently does nothing elsewhere.
fn try_set(v: &mut Value, path: &str, new: Value) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let target = if parent.is_empty() { Some(v) } else { v.pointer_mut(&format!("/{}", parent.replace('.', "/"))) };
    match target {
        Some(Value::Object(map)) => {
            map.insert(key.to_owned(), new);
        }
        Some(Value::Array(items)) => {
            if let Some(item) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = new;
            }
        }
        _ => {}
    }
}

/// The invariants of any normalization.
fn check(body: &Value, meta: &Meta, jsm: &JsmConfig) -> Result<(), TestCaseError> {
    let first = normalize(body, meta, jsm, now());
    prop_assert_eq!(&first, &normalize(body, meta, jsm, now()), "normalize is deterministic");
    match first {
        Normalized::Ignored(reason) => prop_assert!(!reason.as_str().is_empty()),
        Normalized::Accepted(event) => {
            prop_assert_eq!(event.event_id, event_id_for(&event.dedupe_key));
            prop_assert!(!event.ticket.key.is_empty() && !event.ticket.id.is_empty());
            prop_assert!(jsm.request_types.contains_key(&event.ticket.request_type));
            prop_assert!(serde_json::to_vec(&event).is_ok());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics_the_normalizer(body in arb_json(), delivery_id in proptest::option::of("[a-f0-9-]{0,12}")) {
        check(&body, &Meta { delivery_id, ..Meta::default() }, &jsm())?;
    }

    #[test]
    fn real_bodies_with_arbitrary_values_at_the_paths_read_never_panic_the_normalizer(
        base in prop::sample::select(BASES),
        edits in prop::collection::vec((prop::sample::select(PATHS), arb_json()), 1..4),
    ) {
        let mut body = fixture(base);
        let bare = body.get("issue").is_none();
        for (path, value) in edits {
            let path = if bare { path.strip_prefix("issue.").unwrap_or(path) } else { path };
            try_set(&mut body, path, value);
        }
        check(&body, &Meta::default(), &jsm())?;
    }
}

#[test]
fn an_applications_subject_field_travels_in_the_event_for_its_connector() {
    let text = EXAMPLE.replacen(
        "token_env = \"OKTA_API_TOKEN\"",
        "token_env = \"OKTA_API_TOKEN\"\nsubject_field = \"customfield_10099\"",
        1,
    );
    let config = crate::config::Config::parse(&text).unwrap();
    assert_eq!(config.jsm.fields.subject_fields, vec!["customfield_10099".to_owned()]);
    let mut body = fixture("webhook-approved-confluence-write");
    set(&mut body, "issue.fields.customfield_10099", json!("octocat"));
    let event = accepted(normalize(&body, &Meta::default(), &config.jsm, now()));
    assert_eq!(event.raw_fields["customfield_10099"], json!("octocat"));
    let plain = accepted(normalize(&body, &Meta::default(), &jsm(), now()));
    assert!(!plain.raw_fields.contains_key("customfield_10099"), "only configured fields are carried");
}

/// The README's custom body of a new ticket in ACC (no from-status, an initial status).
fn custom_created() -> Value {
    render_readme_template(&[
        ("issue.id", "10131"),
        ("issue.key", "ACC-131"),
        ("issue.project.key", "ACC"),
        ("issue.customfield_10010.requestType.name", "Request Application Access"),
        ("issue.status.name", "Waiting for support"),
        ("issue.status.id", "10001"),
        ("issue.customfield_10050.value", "Confluence"),
        ("issue.customfield_10051.value", "Write"),
        ("issue.reporter.accountId", "712020:0e4b6a43-1f7c-4d5e-9a3b-2c1d0e9f8a7b"),
        ("issue.updated.jiraDateTime", "2025-12-01T12:20:00.0+0000"),
    ])
}

#[test]
fn events_of_a_project_that_projects_does_not_list_are_ignored_as_other_project() {
    let mut jsm = jsm();
    let body = fixture("webhook-created-status-from-null");
    let project = body.pointer("/issue/fields/project/key").and_then(Value::as_str).expect("a project key").to_owned();
    jsm.projects = vec!["OPS".into()];
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::OtherProject));
    // Keys match case-insensitively; any listed project will do.
    jsm.projects = vec!["OPS".into(), project.to_lowercase()];
    accepted(normalize(&body, &Meta::default(), &jsm, now()));
    // A body that names no project is not shown to be ours.
    let mut anonymous = body.clone();
    remove(&mut anonymous, "issue.fields.project");
    assert_eq!(normalize(&anonymous, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::OtherProject));
    // The custom Automation body is scoped by its project_key.
    let mut custom = custom_created();
    jsm.projects = vec!["ACC".into()];
    accepted(normalize(&custom, &Meta::default(), &jsm, now()));
    set(&mut custom, "project_key", json!("OPS"));
    assert_eq!(normalize(&custom, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::OtherProject));
    assert_eq!(IgnoreReason::OtherProject.as_str(), "other_project");
}

#[test]
fn automation_and_custom_bodies_of_a_new_ticket_are_created_events() {
    let jsm = jsm();
    let mut body = fixture("automation-jira-format-approved");
    set(&mut body, "issue.fields.status.name", json!("Waiting for support"));
    let updated = body.pointer("/issue/fields/updated").cloned().expect("an updated time");
    // Updated after creation, in a status that decides nothing: not ours.
    set(&mut body, "issue.fields.created", json!("2025-11-01T00:00:00.000+0000"));
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::StatusNotActionable));
    // Created and updated at the same instant: Automation's "Issue created".
    set(&mut body, "issue.fields.created", updated);
    let event = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    assert_eq!(event.app_status, AppStatus::Created);
    assert_eq!(event.dedupe_key, format!("automation:{}:created", event.ticket.id));

    let mut custom = custom_created();
    let event = accepted(normalize(&custom, &Meta::default(), &jsm, now()));
    assert_eq!(event.app_status, AppStatus::Created);
    assert_eq!(event.dedupe_key, format!("automation-custom:{}:created", event.ticket.id));
    // With a from-status, the same unmapped status is a transition that decides nothing.
    set(&mut custom, "status.from", json!("Open"));
    assert_eq!(
        normalize(&custom, &Meta::default(), &jsm, now()),
        Normalized::Ignored(IgnoreReason::StatusNotActionable)
    );
}

#[test]
fn a_transition_into_a_rules_approval_stage_is_a_stage_event() {
    let mut jsm = jsm();
    let mut body = fixture("webhook-created-in-mapped-status");
    set(&mut body, "webhookEvent", json!("jira:issue_updated"));
    let item = body
        .pointer("/changelog/items")
        .and_then(Value::as_array)
        .and_then(|items| items.iter().position(|i| i.get("fieldId").and_then(Value::as_str) == Some("status")))
        .expect("a status item");
    set(&mut body, &format!("changelog.items.{item}.toString"), json!("Security approval"));
    assert_eq!(normalize(&body, &Meta::default(), &jsm, now()), Normalized::Ignored(IgnoreReason::StatusNotActionable));
    jsm.stage_statuses = vec!["Security Approval".into()];
    let event = accepted(normalize(&body, &Meta::default(), &jsm, now()));
    assert_eq!(event.app_status, AppStatus::Stage);
    assert_eq!(event.status.to, "Security approval");
}
