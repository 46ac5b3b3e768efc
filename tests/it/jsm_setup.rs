//! `accessgov jsm check` and `accessgov jsm sync-options` against a mocked Jira site (wiremock, shapes as
//! Atlassian documents them): the binary is run as an operator would run it.

use crate::helpers::EXAMPLE_CONFIG;
use base64::Engine;
use serde_json::{Value, json};
use std::process::{Command, Output};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

const EMAIL: &str = "accessgov-bot@example.com";
const TOKEN: &str = "jsm-setup-s3cret-token";

fn basic() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{EMAIL}:{TOKEN}")))
}

/// A mock of `verb path` that insists on the Basic credentials.
fn given(verb: &str, p: &str) -> MockBuilder {
    Mock::given(method(verb)).and(path(p)).and(header("authorization", basic().as_str()))
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// The example config (serving project ACC) pointed at the mock, with `edit` applied to the text.
fn write_config(dir: &tempfile::TempDir, server: &MockServer, edit: impl FnOnce(String) -> String) -> String {
    assert!(EXAMPLE_CONFIG.contains("\nprojects = [\"ACC\"]\n"), "the example serves project ACC");
    let text = EXAMPLE_CONFIG.replacen(
        "base_url = \"https://example.atlassian.net\"",
        &format!("base_url = \"{}\"", server.uri()),
        1,
    );
    let path = dir.path().join("accessgov.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path.display().to_string()
}

/// Runs the binary (off the async runtime) with the JSM credentials in the environment, or without.
async fn accessgov(args: &[&str], credentials: bool) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accessgov"));
        cmd.args(&args)
            .env_remove("ACCESSGOV_CONFIG")
            .env_remove("JSM_EMAIL")
            .env_remove("JSM_API_TOKEN")
            .env("RUST_LOG", "warn");
        if credentials {
            cmd.env("JSM_EMAIL", EMAIL).env("JSM_API_TOKEN", TOKEN);
        }
        cmd.output().expect("binary runs")
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn field(id: &str, name: &str, custom: &str, schema_type: &str) -> Value {
    json!({"id": id, "key": id, "name": name, "custom": true, "orderable": true, "navigable": true,
           "searchable": true, "clauseNames": [format!("cf[{}]", id.trim_start_matches("customfield_")), name],
           "schema": {"type": schema_type, "custom": custom,
                      "customId": id.trim_start_matches("customfield_").parse::<u64>().unwrap_or(0)}})
}

fn fields(access_type: &str) -> Value {
    json!([
        {"id": "reporter", "key": "reporter", "name": "Reporter", "custom": false, "orderable": true,
         "navigable": true, "searchable": true, "clauseNames": ["reporter"],
         "schema": {"type": "user", "system": "reporter"}},
        field("customfield_10010", "Request Type", "com.atlassian.servicedesk:vp-origin", "sd-customerrequesttype"),
        field("customfield_10050", "Application", "com.atlassian.jira.plugin.system.customfieldtypes:select", "option"),
        field("customfield_10051", "Access Type", access_type, if access_type.ends_with(":select") { "option" } else { "array" }),
        field("customfield_10060", "Approver", "com.atlassian.jira.plugin.system.customfieldtypes:userpicker", "user"),
        field("customfield_10027", "Approvals", "com.atlassian.servicedesk.approvals-plugin:sd-approvals", "sd-approvals"),
    ])
}

fn request_type(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "description": "", "helpText": "", "issueTypeId": "10005", "serviceDeskId": "1",
           "portalId": "1", "groupIds": ["1"], "icon": {"id": "10500", "_links": {}}, "_links": {"self": "x"}})
}

/// Every read `jsm check` makes of a site whose fields are `fields`, each asserted and expected `runs` times.
async fn mount_site(server: &MockServer, fields: Value, runs: u64) {
    given("GET", "/rest/api/3/field").respond_with(ok(fields)).expect(runs).mount(server).await;
    given("GET", "/rest/api/3/project/ACC")
        .respond_with(ok(
            json!({"id": "10000", "key": "ACC", "name": "Access Requests", "projectTypeKey": "service_desk"}),
        ))
        .expect(runs)
        .mount(server)
        .await;
    given("GET", "/rest/servicedeskapi/servicedesk")
        .and(query_param("start", "0"))
        .and(query_param("limit", "50"))
        .respond_with(ok(json!({"size": 2, "start": 0, "limit": 50, "isLastPage": true, "values": [
            {"id": "2", "projectId": "10001", "projectName": "IT Help", "projectKey": "IT", "_links": {"self": "x"}},
            {"id": "1", "projectId": "10000", "projectName": "Access Requests", "projectKey": "ACC", "_links": {"self": "x"}},
        ], "_links": {}})))
        .expect(runs)
        .mount(server)
        .await;
    // Two pages of request types.
    given("GET", "/rest/servicedeskapi/servicedesk/1/requesttype")
        .and(query_param("start", "0"))
        .and(query_param("limit", "50"))
        .respond_with(ok(json!({"size": 2, "start": 0, "limit": 2, "isLastPage": false, "values": [
            request_type("11", "Request Application Access"), request_type("12", "Ask a question")]})))
        .expect(runs)
        .mount(server)
        .await;
    given("GET", "/rest/servicedeskapi/servicedesk/1/requesttype")
        .and(query_param("start", "2"))
        .and(query_param("limit", "50"))
        .respond_with(ok(json!({"size": 2, "start": 2, "limit": 2, "isLastPage": true, "values": [
            request_type("13", "Request Access Removal"), request_type("14", "Request Access Change")]})))
        .expect(runs)
        .mount(server)
        .await;
    let status = |id: &str, name: &str| json!({"id": id, "name": name, "description": "", "iconUrl": "x", "self": "x"});
    given("GET", "/rest/api/3/project/ACC/statuses")
        .respond_with(ok(json!([
            {"id": "10005", "name": "Service Request with Approvals", "self": "x", "subtask": false, "statuses": [
                status("10010", "Waiting for approval"), status("10011", "Approved by Manager"),
                status("10012", "Rejected"), status("10013", "Done"), status("10014", "Provisioning failed")]},
            {"id": "10006", "name": "Access Removal", "self": "x", "subtask": false, "statuses": [
                status("10013", "Done"), status("10015", "Access Revoked"), status("10016", "Declined by User")]},
        ])))
        .expect(runs)
        .mount(server)
        .await;
    let perm = |key: &str, id: &str| json!({"id": id, "key": key, "name": key, "type": "PROJECT", "description": "", "havePermission": true});
    given("GET", "/rest/api/3/mypermissions")
        .and(query_param("projectKey", "ACC"))
        .and(query_param("permissions", "BROWSE_PROJECTS,EDIT_ISSUES,ADD_COMMENTS,TRANSITION_ISSUES"))
        .respond_with(ok(json!({"permissions": {
            "BROWSE_PROJECTS": perm("BROWSE_PROJECTS", "10"), "EDIT_ISSUES": perm("EDIT_ISSUES", "12"),
            "ADD_COMMENTS": perm("ADD_COMMENTS", "15"), "TRANSITION_ISSUES": perm("TRANSITION_ISSUES", "46")}})))
        .expect(runs)
        .mount(server)
        .await;
}

const SELECT: &str = "com.atlassian.jira.plugin.system.customfieldtypes:select";
const MULTI_SELECT: &str = "com.atlassian.jira.plugin.system.customfieldtypes:multiselect";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsm_check_passes_on_a_site_that_has_everything_the_config_names() {
    let server = MockServer::start().await;
    mount_site(&server, fields(SELECT), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &server, |t| t);

    let out = accessgov(&["jsm", "check", "--config", &config], true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("CHECK ") && stdout.lines().next().unwrap().ends_with("FIX"), "{stdout}");
    assert!(!stdout.contains("PROBLEM") && !stdout.contains("WARNING"), "{stdout}");
    assert!(stdout.contains("ACC: \"Request Access Change\""), "the second page was read: {stdout}");
    assert!(stderr.contains("ok: "), "{stderr}");

    let out = accessgov(&["jsm", "check", "--json", "--config", &config], true).await;
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["problems"].as_u64()), (Some(true), Some(0)));
    assert!(v["rows"].as_array().unwrap().iter().all(|r| r["level"] == "ok"), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsm_check_names_a_misspelled_status_and_a_wrong_field_type_with_their_fixes() {
    let server = MockServer::start().await;
    mount_site(&server, fields(MULTI_SELECT), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(&dir, &server, |t| t.replacen("\"Approved by Manager\" = ", "\"Aproved by Manger\" = ", 1));

    let out = accessgov(&["jsm", "check", "--config", &config], true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let status = stdout.lines().find(|l| l.contains("\"Aproved by Manger\"")).expect("a row names the status");
    assert!(status.starts_with("status "), "{status}");
    assert!(status.contains("PROBLEM: no workflow status of this name in the project"), "{status}");
    assert!(
        status.ends_with("change [jsm.statuses] to a status of the workflow; closest: \"Approved by Manager\""),
        "{status}"
    );
    let field = stdout.lines().find(|l| l.contains("jsm.fields.access_level = customfield_10051")).unwrap();
    assert!(
        field.contains(&format!("PROBLEM: wrong type: expected select ({SELECT}), found multiselect ({MULTI_SELECT})")),
        "{field}"
    );
    assert!(field.contains("point jsm.fields.access_level at a field of the expected type"), "{field}");
    assert_eq!(stdout.matches("PROBLEM").count(), 2, "{stdout}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains(TOKEN) && !shown.contains(EMAIL), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsm_check_without_credentials_is_one_problem_and_calls_nothing() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any()).respond_with(ResponseTemplate::new(500)).expect(0).mount(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &server, |t| t);
    let out = accessgov(&["jsm", "check", "--config", &config], false).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("credentials") && stdout.contains("environment variable JSM_EMAIL is not set"), "{stdout}");
}

/// The three select fields' reads: application (two pages of options), access level, and the
/// cascading Application -> Access Type field.
async fn mount_option_reads(server: &MockServer) {
    let contexts = |id: &str, name: &str| {
        ok(json!({"isLast": true, "maxResults": 50, "startAt": 0, "total": 1,
                  "values": [{"id": id, "name": name, "description": "", "isGlobalContext": true, "isAnyIssueType": true}]}))
    };
    for (field, ctx) in [("customfield_10050", "10100"), ("customfield_10051", "10200"), ("customfield_10052", "10300")]
    {
        given("GET", &format!("/rest/api/3/field/{field}/context"))
            .and(query_param("startAt", "0"))
            .and(query_param("maxResults", "50"))
            .respond_with(contexts(ctx, "Default Configuration Scheme"))
            .expect(1)
            .mount(server)
            .await;
    }
    let options = |path: &str| given("GET", path).and(query_param("maxResults", "100"));
    let app = "/rest/api/3/field/customfield_10050/context/10100/option";
    options(app)
        .and(query_param("startAt", "0"))
        .respond_with(ok(json!({"isLast": false, "maxResults": 1, "startAt": 0, "total": 2,
                                "values": [{"id": "1", "value": "Okta", "disabled": false}]})))
        .expect(1)
        .mount(server)
        .await;
    options(app)
        .and(query_param("startAt", "1"))
        .respond_with(ok(json!({"isLast": true, "maxResults": 1, "startAt": 1, "total": 2,
                                "values": [{"id": "2", "value": "Jira", "disabled": false}]})))
        .expect(1)
        .mount(server)
        .await;
    options("/rest/api/3/field/customfield_10051/context/10200/option")
        .and(query_param("startAt", "0"))
        .respond_with(ok(json!({"isLast": true, "maxResults": 100, "startAt": 0, "total": 2, "values": [
            {"id": "5", "value": "Write", "disabled": true}, {"id": "6", "value": "Admin", "disabled": false}]})))
        .expect(1)
        .mount(server)
        .await;
    options("/rest/api/3/field/customfield_10052/context/10300/option")
        .and(query_param("startAt", "0"))
        .respond_with(ok(json!({"isLast": true, "maxResults": 100, "startAt": 0, "total": 3, "values": [
            {"id": "20", "value": "Okta", "disabled": false},
            {"id": "21", "value": "User", "disabled": false, "optionId": "20"},
            {"id": "22", "value": "Admin", "disabled": false, "optionId": "20"}]})))
        .expect(1)
        .mount(server)
        .await;
}

fn with_cascading_field(text: String) -> String {
    text.replacen(
        "access_level = \"customfield_10051\"",
        "access_level = \"customfield_10051\"\napplication_access = \"customfield_10052\"",
        1,
    )
}

/// A write of `body` to `verb path`, as JSON with the credentials, answered `answer`, expected `times`.
async fn mount_write(server: &MockServer, verb: &str, p: &str, body: Value, answer: Value, times: u64) {
    given(verb, p)
        .and(header("content-type", "application/json"))
        .and(body_json(body))
        .respond_with(ok(answer))
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_options_adds_disables_and_enables_options_with_exactly_the_documented_bodies() {
    let server = MockServer::start().await;
    mount_option_reads(&server).await;
    let app = "/rest/api/3/field/customfield_10050/context/10100/option";
    let level = "/rest/api/3/field/customfield_10051/context/10200/option";
    let cascade = "/rest/api/3/field/customfield_10052/context/10300/option";
    // Application: add Confluence, disable Jira (never delete).
    let created = json!({"options": [{"id": "3", "value": "Confluence", "disabled": false}]});
    mount_write(&server, "POST", app, json!({"options": [{"value": "Confluence", "disabled": false}]}), created, 1)
        .await;
    mount_write(&server, "PUT", app, json!({"options": [{"id": "2", "disabled": true}]}), json!({"options": []}), 1)
        .await;
    // Access Type: enable Write, add User, disable Admin.
    let created = json!({"options": [{"id": "7", "value": "User", "disabled": false}]});
    mount_write(&server, "POST", level, json!({"options": [{"value": "User", "disabled": false}]}), created, 1).await;
    let put = json!({"options": [{"id": "5", "disabled": false}, {"id": "6", "disabled": true}]});
    mount_write(&server, "PUT", level, put, json!({"options": []}), 1).await;
    // Cascading: add the Confluence parent, then its Write child under the new parent's id; disable Okta's Admin.
    let created = json!({"options": [{"id": "30", "value": "Confluence", "disabled": false}]});
    mount_write(&server, "POST", cascade, json!({"options": [{"value": "Confluence", "disabled": false}]}), created, 1)
        .await;
    mount_write(
        &server,
        "PUT",
        cascade,
        json!({"options": [{"id": "22", "disabled": true}]}),
        json!({"options": []}),
        1,
    )
    .await;
    let created = json!({"options": [{"id": "31", "value": "Write", "optionId": "30", "disabled": false}]});
    let body = json!({"options": [{"value": "Write", "optionId": "30", "disabled": false}]});
    mount_write(&server, "POST", cascade, body, created, 1).await;
    Mock::given(method("DELETE")).respond_with(ResponseTemplate::new(204)).expect(0).mount(&server).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &server, with_cascading_field);
    let out = accessgov(&["jsm", "sync-options", "--config", &config], true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let expected_rows = [
        ("application (customfield_10050)", "Confluence", "add"),
        ("application (customfield_10050)", "Jira", "disable"),
        ("access_level (customfield_10051)", "Write", "enable"),
        ("access_level (customfield_10051)", "User", "add"),
        ("access_level (customfield_10051)", "Admin", "disable"),
        ("application_access (customfield_10052)", "Confluence", "add"),
        ("application_access (customfield_10052)", "Okta -> Admin", "disable"),
        ("application_access (customfield_10052)", "Confluence -> Write", "add"),
    ];
    assert_eq!(stdout.lines().count(), expected_rows.len() + 1, "{stdout}");
    for (field, option, change) in expected_rows {
        assert!(
            stdout.lines().any(|l| l.starts_with(field) && l.contains(&format!("  {option}  ")) && l.ends_with(change)),
            "no row {field} {option} {change}:\n{stdout}"
        );
    }
    assert!(stderr.contains("ok: 8 change(s) made"), "{stderr}");
    assert!(stderr.contains("customfield_10051 context 10200"), "progress on stderr: {stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_options_dry_run_prints_the_diff_and_writes_nothing() {
    let server = MockServer::start().await;
    mount_option_reads(&server).await;
    for verb in ["POST", "PUT", "DELETE"] {
        Mock::given(method(verb)).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &server, with_cascading_field);

    let out = accessgov(&["jsm", "sync-options", "--dry-run", "--json", "--config", &config], true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((v["dry_run"].as_bool(), v["changes"].as_u64(), v["applied"].as_u64()), (Some(true), Some(8), Some(0)));
    let app = &v["contexts"][0];
    assert_eq!((app["field_id"].as_str(), app["context"]["id"].as_str()), (Some("customfield_10050"), Some("10100")));
    assert_eq!(
        app["changes"],
        json!([
            {"value": "Confluence", "parent": null, "parent_id": null, "option_id": null, "change": {"kind": "add"}},
            {"value": "Jira", "parent": null, "parent_id": null, "option_id": "2", "change": {"kind": "disable"}},
        ])
    );
    assert!(stderr.contains("dry run: 8 change(s) would be made; nothing was changed"), "{stderr}");
}
