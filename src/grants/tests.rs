use super::*;
use chrono::TimeZone;

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn hold(ticket: &str, level: &str, t: i64) -> Hold {
    Hold { ticket: ticket.into(), access_level: level.into(), event_at: at(t) }
}

fn ledger(entries: &[(&str, Vec<Hold>, Option<i64>)]) -> Ledger {
    entries
        .iter()
        .map(|(t, holds, rt)| {
            (t.to_string(), TargetState { holds: holds.clone(), revoked_through: rt.map(at), identity: None })
        })
        .collect()
}

fn targets(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_first_hold_on_a_target_grants_at_the_provider() {
    let t = targets(&["devs"]);
    let p = plan(&Ledger::new(), &Request::Grant { targets: &t, access_level: "Write" }, "A-1", at(10));
    assert_eq!(p.ops, vec![ProviderOp::Grant("devs".into())]);
    assert_eq!(p.changes, vec![Change::AddHold { target: "devs".into(), access_level: "Write".into() }]);
}

#[test]
fn a_second_ticket_for_the_same_group_adds_a_hold_without_a_provider_write() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![hold("A-1", "Write", 1)], None)]);
    let p = plan(&l, &Request::Grant { targets: &t, access_level: "Write" }, "A-2", at(10));
    assert_eq!(p.ops, vec![]);
    assert_eq!(p.notes, vec![Note::HoldAdded { target: "devs".into(), other_holders: vec!["A-1".into()] }]);
}

#[test]
fn revoking_one_of_two_tickets_keeps_the_access() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![hold("A-1", "Write", 1), hold("A-2", "Write", 2)], None)]);
    let p = plan(&l, &Request::Revoke { targets: &t, scope: RevokeScope::Ticket }, "A-1", at(10));
    assert_eq!(p.ops, vec![]);
    assert_eq!(p.changes, vec![Change::RemoveHold { target: "devs".into(), ticket: "A-1".into() }]);
    let p = plan(
        &ledger(&[("devs", vec![hold("A-2", "Write", 2)], None)]),
        &Request::Revoke { targets: &t, scope: RevokeScope::Ticket },
        "A-2",
        at(11),
    );
    assert_eq!(p.ops, vec![ProviderOp::Revoke("devs".into())]);
}

#[test]
fn revoking_a_ticket_that_holds_nothing_calls_nobody() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![hold("A-2", "Write", 2)], None)]);
    let p = plan(&l, &Request::Revoke { targets: &t, scope: RevokeScope::Ticket }, "A-9", at(10));
    assert_eq!((p.ops, p.changes), (vec![], vec![]));
    assert_eq!(p.notes, vec![Note::NothingHeld { target: "devs".into() }]);
}

#[test]
fn replaying_the_same_grant_is_a_no_op() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![hold("A-1", "Write", 1)], None)]);
    let p = plan(&l, &Request::Grant { targets: &t, access_level: "Write" }, "A-1", at(1));
    assert_eq!((p.ops, p.changes), (vec![], vec![]));
}

#[test]
fn a_removal_request_releases_older_holds_and_revokes_even_when_the_ledger_held_nothing() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![hold("A-1", "Write", 1), hold("A-3", "Write", 30)], None)]);
    let p = plan(&l, &Request::Revoke { targets: &t, scope: RevokeScope::Subject }, "R-1", at(10));
    assert_eq!(p.ops, vec![], "A-3 is newer than the removal and keeps the access");
    assert!(p.changes.contains(&Change::RemoveHold { target: "devs".into(), ticket: "A-1".into() }));
    let p = plan(&Ledger::new(), &Request::Revoke { targets: &t, scope: RevokeScope::Subject }, "R-1", at(10));
    assert_eq!(p.ops, vec![ProviderOp::Revoke("devs".into())]);
    assert!(p.changes.contains(&Change::RevokedThrough { target: "devs".into() }));
}

#[test]
fn a_grant_older_than_a_removal_already_applied_is_superseded() {
    let t = targets(&["devs"]);
    let l = ledger(&[("devs", vec![], Some(20))]);
    let p = plan(&l, &Request::Grant { targets: &t, access_level: "Write" }, "A-1", at(10));
    assert_eq!((p.ops.len(), p.changes.len()), (0, 0));
    assert!(matches!(p.notes[0], Note::Superseded { .. }));
    let p = plan(&l, &Request::Grant { targets: &t, access_level: "Write" }, "A-1", at(30));
    assert_eq!(p.ops, vec![ProviderOp::Grant("devs".into())]);
}

#[test]
fn a_change_grants_the_new_level_and_revokes_earlier_tickets_other_levels() {
    let new = targets(&["admins"]);
    let l = ledger(&[
        ("readers", vec![hold("A-1", "Read", 1)], None),
        ("shared", vec![hold("A-1", "Read", 1), hold("B-1", "Admin", 2)], None),
    ]);
    let p = plan(&l, &Request::Change { targets: &new, access_level: "Admin" }, "C-1", at(10));
    assert!(p.ops.contains(&ProviderOp::Grant("admins".into())));
    assert!(p.ops.contains(&ProviderOp::Revoke("readers".into())));
    assert!(!p.ops.contains(&ProviderOp::Revoke("shared".into())), "B-1 still holds it");
    assert!(p.changes.contains(&Change::RemoveHold { target: "shared".into(), ticket: "A-1".into() }));
}

#[test]
fn lock_keys_differ_per_application_and_subject() {
    assert_eq!(lock_key("Okta", "u1"), lock_key("Okta", "u1"));
    assert_ne!(lock_key("Okta", "u1"), lock_key("Okta", "u2"));
    assert_ne!(lock_key("Okta", "u1"), lock_key("Jira", "u1"));
}

#[test]
fn the_requested_duration_is_capped_by_the_rule() {
    let d = |s: u64| Some(std::time::Duration::from_secs(s));
    assert_eq!(effective_duration(Some("7d"), d(90 * 86_400)), Ok(d(7 * 86_400)));
    assert_eq!(effective_duration(Some("365d"), d(90 * 86_400)), Ok(d(90 * 86_400)));
    assert_eq!(effective_duration(Some("2h"), None), Ok(d(7200)));
    assert_eq!(effective_duration(None, d(60)), Ok(d(60)));
    assert!(effective_duration(Some("soon"), d(60)).is_err(), "unreadable is refused, not guessed");
    assert_eq!(effective_duration(None, None), Ok(None));
    assert_eq!(effective_duration(Some(""), None), Ok(None), "an empty field asks for nothing");
}

#[test]
fn a_huge_requested_duration_is_capped_and_its_expiry_never_overflows() {
    // Before the bound, "99999999999d" passed parse and `now + d` panicked the worker after the grant.
    let lasts = effective_duration(Some("99999999999d"), None).expect("well-formed: capped");
    assert_eq!(lasts, Some(crate::config::duration::MAX));
    let now = chrono::Utc::now();
    let at = expires_at(now, lasts).expect("ten years from now is a date");
    assert!(at > now + chrono::Duration::days(3649));
    assert!(effective_duration(Some("18446744073709551615d"), None).is_err(), "overflow is refused");
    assert_eq!(expires_at(chrono::DateTime::<chrono::Utc>::MAX_UTC, Some(std::time::Duration::from_secs(1))), None);
}

fn subject_with_login(login: &str) -> crate::connectors::Subject {
    let mut s = crate::connectors::Subject {
        account_id: "u1".into(),
        email: None,
        display_name: None,
        fields: Default::default(),
    };
    s.fields.insert("customfield_10090".into(), login.into());
    s
}

#[test]
fn a_grant_for_another_identity_of_a_held_target_is_a_conflict_and_revokes_address_the_held_identity() {
    let mut l = ledger(&[("devs", vec![hold("A-1", "Write", 0)], None), ("ops", vec![], None)]);
    l.get_mut("devs").unwrap().identity = Some(subject_with_login("alice-gh"));
    l.get_mut("ops").unwrap().identity = Some(subject_with_login("old-login"));
    let t = targets(&["devs"]);
    let (target, held) = identity_conflict(&l, &t, &subject_with_login("mallory-gh")).expect("conflict");
    assert_eq!((target, held.field("customfield_10090")), ("devs", Some("alice-gh")));
    assert_eq!(identity_conflict(&l, &t, &subject_with_login("alice-gh")), None, "same identity: no conflict");
    // A target nobody holds any more may be granted to a new identity.
    assert_eq!(identity_conflict(&l, &targets(&["ops"]), &subject_with_login("new-login")), None);
    let now = subject_with_login("mallory-gh");
    assert_eq!(revoke_identity(&l, "devs", &now).field("customfield_10090"), Some("alice-gh"));
    assert_eq!(revoke_identity(&l, "unknown", &now).field("customfield_10090"), Some("mallory-gh"));
}
