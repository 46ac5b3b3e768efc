use super::*;

fn config() -> Config {
    let mut c = Config::parse(include_str!("../../../accessgov.example.toml")).unwrap();
    c.jsm.projects = vec!["ACC".into()];
    c
}

fn field(id: &str, name: &str, custom: Option<&str>, schema_type: &str) -> FieldInfo {
    FieldInfo {
        id: id.into(),
        name: name.into(),
        custom: custom.map(str::to_owned),
        schema_type: Some(schema_type.into()),
        system: custom.is_none().then(|| id.to_owned()),
    }
}

/// A site that has everything the example config names.
fn good_site() -> SiteFacts {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    SiteFacts {
        fields: Ok(vec![
            field("reporter", "Reporter", None, "user"),
            field("assignee", "Assignee", None, "user"),
            field("customfield_10010", "Request Type", Some(types::REQUEST_TYPE), "sd-customerrequesttype"),
            field("customfield_10050", "Application", Some(types::SELECT), "option"),
            field("customfield_10051", "Access Type", Some(types::SELECT), "option"),
            field("customfield_10060", "Approver", Some(types::USER_PICKER), "user"),
            field("customfield_10027", "Approvals", Some(types::APPROVALS), "sd-approvals"),
            field("customfield_10099", "Watchers", Some(types::MULTI_USER_PICKER), "array"),
        ]),
        projects: vec![ProjectFacts {
            key: "ACC".into(),
            details: Ok(ProjectDetails {
                request_types: Ok(Some(strings(&[
                    "Request Application Access",
                    "Request Access Removal",
                    "Request Access Change",
                    "Ask a question",
                ]))),
                statuses: Ok(strings(&[
                    "Waiting for approval",
                    "Approved by Manager",
                    "Rejected",
                    "Access Revoked",
                    "Declined by User",
                    "Done",
                    "Provisioning failed",
                ])),
                permissions: Ok(PERMISSIONS.iter().map(|p| ((*p).to_owned(), true)).collect()),
            }),
        }],
    }
}

fn details(site: &mut SiteFacts) -> &mut ProjectDetails {
    site.projects[0].details.as_mut().unwrap()
}

fn problems(r: &Report) -> Vec<&CheckRow> {
    r.rows.iter().filter(|r| r.level == Level::Problem).collect()
}

#[test]
fn a_site_that_has_everything_the_config_names_passes_every_check() {
    let report = check(&config(), &good_site());
    assert_eq!(report.problems(), 0, "{:#?}", report.rows);
    assert_eq!(report.warnings(), 0, "{:#?}", report.rows);
    // Each kind of check ran.
    for kind in ["credentials", "project", "request type", "field", "status", "write-back", "permission"] {
        assert!(report.rows.iter().any(|r| r.check == kind), "no {kind} row: {:#?}", report.rows);
    }
    let field = report.rows.iter().find(|r| r.subject == "jsm.fields.application = customfield_10050").unwrap();
    assert_eq!(field.result, "\"Application\" (select)");
}

#[test]
fn a_misspelled_status_is_a_problem_whose_fix_names_the_closest_statuses() {
    let mut c = config();
    let meaning = c.jsm.statuses.remove("Approved by Manager").unwrap();
    c.jsm.statuses.insert("Aproved by Manger".into(), meaning);
    // A case difference is matched as the ingress matches it: not a problem.
    let meaning = c.jsm.statuses.remove("Rejected").unwrap();
    c.jsm.statuses.insert("REJECTED".into(), meaning);

    let report = check(&c, &good_site());
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].check, "status");
    assert_eq!(p[0].subject, "ACC: \"Aproved by Manger\" ([jsm.statuses])");
    let fix = p[0].fix.as_deref().unwrap();
    assert!(
        fix.starts_with("change [jsm.statuses] to a status of the workflow; closest: \"Approved by Manager\""),
        "{fix}"
    );
    let case = report.rows.iter().find(|r| r.subject.contains("\"REJECTED\"")).unwrap();
    assert_eq!(case.level, Level::Ok);
    assert!(case.result.contains("exists as \"Rejected\""), "{}", case.result);
}

#[test]
fn a_misspelled_stage_status_names_the_stage_key() {
    let mut c = Config::parse(&format!(
        "{}\n[[rules.stages]]\nstatus = \"Waiting for aproval\"\napprovers = [\"a\"]\n",
        include_str!("../../../accessgov.example.toml")
    ))
    .unwrap();
    c.jsm.projects = vec!["ACC".into()];
    let report = check(&c, &good_site());
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].subject.contains("rules[1].stages[0].status"), "{}", p[0].subject);
    assert!(p[0].fix.as_deref().unwrap().contains("closest: \"Waiting for approval\""), "{:?}", p[0].fix);
}

#[test]
fn a_field_of_the_wrong_type_names_the_expected_and_the_actual_type() {
    let mut c = config();
    c.jsm.fields.approver = Some("customfield_10099".into()); // a multi-user picker
    c.jsm.fields.access_level = "customfield_10060".into(); // a user picker
    let report = check(&c, &good_site());
    let p = problems(&report);
    assert_eq!(p.len(), 2, "{p:#?}");
    let approver = p.iter().find(|r| r.subject == "jsm.fields.approver = customfield_10099").unwrap();
    assert_eq!(
        approver.result,
        format!(
            "wrong type: expected userpicker ({}) or a system user field (assignee, reporter), found \
             multiuserpicker ({}) (\"Watchers\")",
            types::USER_PICKER,
            types::MULTI_USER_PICKER
        )
    );
    let level = p.iter().find(|r| r.subject == "jsm.fields.access_level = customfield_10060").unwrap();
    assert!(
        level.result.starts_with(&format!(
            "wrong type: expected select ({}), found userpicker ({})",
            types::SELECT,
            types::USER_PICKER
        )),
        "{}",
        level.result
    );
    assert!(level.fix.as_deref().unwrap().starts_with("point jsm.fields.access_level at a field"), "{:?}", level.fix);
}

#[test]
fn a_missing_field_says_so_and_suggests_fields_of_the_right_type() {
    let mut c = config();
    c.jsm.fields.application = "customfield_19999".into();
    c.jsm.fields.department = Some("customfield_10080".into());
    let report = check(&c, &good_site());
    let p = problems(&report);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().all(|r| r.result == "no field with this id on the site"), "{p:#?}");
    let app = p.iter().find(|r| r.subject == "jsm.fields.application = customfield_19999").unwrap();
    let fix = app.fix.as_deref().unwrap();
    assert!(fix.contains("\"Application\" (customfield_10050)") && fix.contains("\"Access Type\""), "{fix}");
}

#[test]
fn person_fields_named_by_rules_must_be_user_pickers() {
    let mut c = config();
    c.rules[0].approvers.push("field:customfield_10099".into());
    c.jsm.fields.person_fields = vec!["customfield_10099".into(), "customfield_10060".into()];
    let report = check(&c, &good_site());
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].subject, "[[rules]] field:customfield_10099");
    assert!(p[0].result.contains("found multiuserpicker"), "{}", p[0].result);
}

#[test]
fn request_types_match_exactly_and_a_missing_one_names_the_closest() {
    let mut site = good_site();
    details(&mut site).request_types =
        Ok(Some(vec!["request application access".into(), "Request Access Removals".into()]));
    let report = check(&config(), &site);
    let p = problems(&report);
    assert_eq!(p.len(), 3, "{p:#?}");
    let case = p.iter().find(|r| r.subject == "ACC: \"Request Application Access\"").unwrap();
    assert!(case.result.contains("differs in case"), "{}", case.result);
    assert_eq!(case.fix.as_deref(), Some("rename the key in [jsm.request_types] to \"request application access\""));
    let removal = p.iter().find(|r| r.subject == "ACC: \"Request Access Removal\"").unwrap();
    assert!(removal.fix.as_deref().unwrap().contains("closest: \"Request Access Removals\""), "{:?}", removal.fix);
}

#[test]
fn a_write_back_name_that_is_no_status_is_a_warning_and_a_missing_permission_a_problem() {
    let mut c = config();
    c.jsm.write_back.transition_on_success = Some("Resolve".into());
    let mut site = good_site();
    details(&mut site).permissions =
        Ok(PERMISSIONS.iter().map(|p| ((*p).to_owned(), !matches!(*p, "TRANSITION_ISSUES" | "EDIT_ISSUES"))).collect());
    let report = check(&c, &site);
    let w: Vec<&CheckRow> = report.rows.iter().filter(|r| r.level == Level::Warning).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w.iter().any(|r| r.subject.contains("transition_on_success = \"Resolve\"")), "{w:#?}");
    // EDIT_ISSUES is not needed: no Approvers / Approver groups field is configured.
    assert!(w.iter().any(|r| r.subject == "ACC: EDIT_ISSUES"), "{w:#?}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].subject, "ACC: TRANSITION_ISSUES");
    assert!(p[0].fix.as_deref().unwrap().contains("permission scheme"), "{:?}", p[0].fix);
}

#[test]
fn without_projects_only_fields_are_checked_and_a_warning_says_so() {
    let mut c = config();
    c.jsm.projects.clear();
    let mut site = good_site();
    site.projects.clear();
    let report = check(&c, &site);
    assert_eq!((report.problems(), report.warnings()), (0, 1), "{:#?}", report.rows);
    assert!(report.rows.iter().any(|r| r.check == "field"));
    assert!(!report.rows.iter().any(|r| matches!(r.check, "status" | "permission" | "request type")));
}

#[test]
fn refused_credentials_are_one_problem_and_a_missing_project_stops_its_checks() {
    let site = SiteFacts { fields: Err(JsmError::Unauthorized("HTTP 401".into())), projects: vec![] };
    let report = check(&config(), &site);
    assert_eq!(report.rows.len(), 1);
    assert_eq!((report.rows[0].check, report.rows[0].level), ("credentials", Level::Problem));
    let site = SiteFacts {
        fields: Err(JsmError::Transient { reason: "could not connect".into(), retry_after: None }),
        projects: vec![],
    };
    let report = check(&config(), &site);
    assert_eq!(report.rows.len(), 1);
    assert!(report.rows[0].subject.starts_with("jsm.base_url = "), "{:?}", report.rows[0]);

    let mut site = good_site();
    site.projects[0].details = Err(JsmError::NotFound("HTTP 404".into()));
    let report = check(&config(), &site);
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].check, p[0].subject.as_str()), ("project", "ACC"));
    assert!(!report.rows.iter().any(|r| r.check == "status"));
}

#[test]
fn closest_ranks_by_edit_distance_ignoring_case() {
    let names: Vec<String> = ["Done", "Approved", "Approved by Manager", "Declined"].map(String::from).to_vec();
    assert_eq!(closest("aproved", &names, 2), ["Approved", "Done"]);
    assert_eq!(closest("APPROVED BY MANAGR", &names, 1), ["Approved by Manager"]);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    // Only near names are offered; with none near, the fix lists what exists.
    assert_eq!(closest_hint("Aproved by Manger", &names), "; closest: \"Approved by Manager\"");
    assert_eq!(
        closest_hint("Closed", &names),
        "; none is close; the project has: \"Done\", \"Approved\", \"Approved by Manager\", \"Declined\""
    );
}

// ------------------------------------------------------------------------------------------------
// Option diff
// ------------------------------------------------------------------------------------------------

fn opt(id: &str, value: &str, disabled: bool) -> SelectOption {
    SelectOption { id: id.into(), value: value.into(), disabled, parent: None }
}

fn child(id: &str, value: &str, disabled: bool, parent: &str) -> SelectOption {
    SelectOption { id: id.into(), value: value.into(), disabled, parent: Some(parent.into()) }
}

fn flat(values: &[&str], exact: bool) -> Wanted {
    Wanted::Flat { values: values.iter().map(|s| (*s).to_owned()).collect(), exact }
}

fn change(value: &str, option_id: Option<&str>, change: ChangeKind) -> OptionChange {
    OptionChange { value: value.into(), parent: None, parent_id: None, option_id: option_id.map(str::to_owned), change }
}

#[test]
fn missing_options_are_added_unconfigured_ones_disabled_and_disabled_configured_ones_enabled() {
    let existing = [
        opt("1", "Okta", false),
        opt("2", "Jira", false),      // no longer configured
        opt("3", "Confluence", true), // configured again
        opt("4", "Old thing", true),  // unconfigured and already disabled: untouched
    ];
    let changes = diff_options(&existing, &flat(&["Okta", "Confluence", "GitHub"], true));
    assert_eq!(
        changes,
        vec![
            change("Confluence", Some("3"), ChangeKind::Enable),
            change("GitHub", None, ChangeKind::Add),
            change("Jira", Some("2"), ChangeKind::Disable),
        ]
    );
    // Never a delete: only disables, and their updates keep the option.
    let updates: Vec<OptionUpdate> = changes.iter().filter_map(OptionChange::update).collect();
    assert_eq!(
        updates,
        vec![
            OptionUpdate { id: "3".into(), disabled: false, rename_to: None },
            OptionUpdate { id: "2".into(), disabled: true, rename_to: None },
        ]
    );
    // In sync: nothing to do.
    let synced =
        [opt("1", "Okta", false), opt("3", "Confluence", false), opt("5", "GitHub", false), opt("2", "Jira", true)];
    assert_eq!(diff_options(&synced, &flat(&["Okta", "Confluence", "GitHub"], true)), vec![]);
}

#[test]
fn a_case_difference_is_renamed_for_applications_and_left_alone_for_access_levels() {
    let existing = [opt("1", "okta", false), opt("2", "write", true), opt("3", "Okta", false)];
    // The only option differs in case from the application: renamed (the ingress matches exactly).
    assert_eq!(
        diff_options(&existing[..1], &flat(&["Okta"], true)),
        vec![change("Okta", Some("1"), ChangeKind::Rename { from: "okta".into() })]
    );
    // "Okta" claims the exact option 3; "okta" is then an unconfigured value and is disabled.
    assert_eq!(diff_options(&existing, &flat(&["Okta"], true)), vec![change("okta", Some("1"), ChangeKind::Disable)]);
    // Access levels match ignoring case: the option keeps its spelling and is only enabled.
    assert_eq!(
        diff_options(&existing[1..2], &flat(&["Write"], false)),
        vec![change("write", Some("2"), ChangeKind::Enable)]
    );
}

#[test]
fn a_cascading_field_gets_applications_as_parents_and_their_access_levels_as_children() {
    let existing = [
        opt("10", "Okta", false),
        child("11", "User", false, "10"),
        child("12", "Admin", false, "10"), // no rule any more: disabled
        opt("20", "Jira", false),          // no longer an application: disabled, its children left alone
        child("21", "Browse", false, "20"),
        child("13", "Read", true, "10"), // configured again: enabled
    ];
    let wanted = Wanted::Cascading(vec![
        ("Okta".into(), vec!["User".into(), "Read".into(), "Super".into()]),
        ("GitHub".into(), vec!["Member".into(), "Maintainer".into()]),
    ]);
    let changes = diff_options(&existing, &wanted);
    let under =
        |parent: &str, parent_id: Option<&str>, value: &str, option_id: Option<&str>, kind: ChangeKind| OptionChange {
            value: value.into(),
            parent: Some(parent.into()),
            parent_id: parent_id.map(str::to_owned),
            option_id: option_id.map(str::to_owned),
            change: kind,
        };
    assert_eq!(
        changes,
        vec![
            change("GitHub", None, ChangeKind::Add),
            change("Jira", Some("20"), ChangeKind::Disable),
            under("Okta", Some("10"), "Read", Some("13"), ChangeKind::Enable),
            under("Okta", Some("10"), "Super", None, ChangeKind::Add),
            under("Okta", Some("10"), "Admin", Some("12"), ChangeKind::Disable),
            // The new parent's children: added once the parent exists (no parent id yet).
            under("GitHub", None, "Member", None, ChangeKind::Add),
            under("GitHub", None, "Maintainer", None, ChangeKind::Add),
        ]
    );
    assert!(
        !changes.iter().any(|c| c.option_id.as_deref() == Some("21")),
        "children of a dropped parent are untouched"
    );
}

#[test]
fn wanted_values_come_from_applications_and_rules() {
    let mut c = config();
    c.rules[1].access_level = "write".into(); // Okta "write": same level as Confluence "Write", ignoring case
    assert_eq!(Wanted::applications(&c), flat(&["Confluence", "Okta"], true));
    assert_eq!(Wanted::access_levels(&c), flat(&["Write"], false));
    assert_eq!(
        Wanted::application_access(&c),
        Wanted::Cascading(vec![("Confluence".into(), vec!["Write".into()]), ("Okta".into(), vec!["write".into()])])
    );
    c.applications.clear();
    assert!(Wanted::applications(&c).is_empty());
}
