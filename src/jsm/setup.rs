//! Site setup: `accessgov jsm check` (does the JSM site have what the config names?) and
//! `accessgov jsm sync-options` (keep the Application / Access Type select lists in step with the config).
//!
//! The HTTP reads and writes are [`JsmClient`] methods; the decisions are pure functions over what was
//! read, so they are unit-tested without a server:
//! - [`check`]: config + [`SiteFacts`] -> a [`Report`] of rows (check, subject, level, result, fix);
//! - [`diff_options`]: one field context's options + the [`Wanted`] values -> the [`OptionChange`]s.
//!
//! Options are never deleted: an option no longer configured is disabled (old tickets keep their value),
//! a configured option that is disabled is enabled again, a missing one is added.

use super::{JsmClient, JsmError};
use crate::config::Config;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Upper bound on pages followed for any paged list (a server that never says "last" cannot loop us).
const MAX_PAGES: usize = 200;
/// Page size asked of servicedeskapi lists (`limit`).
const SD_PAGE_LIMIT: u64 = 50;
/// Page size asked of the field-context lists (`maxResults`).
const CONTEXT_PAGE_SIZE: u64 = 50;
/// Page size asked of the field-context option lists (`maxResults`).
const OPTION_PAGE_SIZE: u64 = 100;
/// Jira accepts at most 1000 options per create or update request.
const MAX_OPTIONS_PER_REQUEST: usize = 1000;

/// The project permissions `jsm check` asks about.
pub const PERMISSIONS: [&str; 4] = ["BROWSE_PROJECTS", "EDIT_ISSUES", "ADD_COMMENTS", "TRANSITION_ISSUES"];

/// Custom field type keys (`schema.custom` of `GET /rest/api/3/field`).
pub mod types {
    pub const REQUEST_TYPE: &str = "com.atlassian.servicedesk:vp-origin";
    pub const APPROVALS: &str = "com.atlassian.servicedesk.approvals-plugin:sd-approvals";
    pub const SELECT: &str = "com.atlassian.jira.plugin.system.customfieldtypes:select";
    pub const CASCADING_SELECT: &str = "com.atlassian.jira.plugin.system.customfieldtypes:cascadingselect";
    pub const USER_PICKER: &str = "com.atlassian.jira.plugin.system.customfieldtypes:userpicker";
    pub const MULTI_USER_PICKER: &str = "com.atlassian.jira.plugin.system.customfieldtypes:multiuserpicker";
    pub const MULTI_GROUP_PICKER: &str = "com.atlassian.jira.plugin.system.customfieldtypes:multigrouppicker";
}

// ---------------------------------------------------------------------------------------------------
// Facts read from the site
// ---------------------------------------------------------------------------------------------------

/// One field of `GET /rest/api/3/field`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldInfo {
    pub id: String,
    pub name: String,
    /// `schema.custom`: the custom field type key (absent on system fields).
    pub custom: Option<String>,
    /// `schema.type` (`option`, `user`, `array`, `string`, ...).
    pub schema_type: Option<String>,
    /// `schema.system`: the system field name (absent on custom fields).
    pub system: Option<String>,
}

impl FieldInfo {
    /// The type as shown to the operator: the custom type key's last part (`select`), or
    /// `system <type>` for a system field.
    pub fn type_label(&self) -> String {
        match (&self.custom, &self.schema_type) {
            (Some(c), _) => short_type(c).to_owned(),
            (None, Some(t)) => format!("system {t}"),
            (None, None) => "unknown".to_owned(),
        }
    }

    /// A single-user field: a user picker, or a system user field (`assignee`, `reporter`).
    fn is_single_user(&self) -> bool {
        match &self.custom {
            Some(c) => c == types::USER_PICKER,
            None => self.schema_type.as_deref() == Some("user"),
        }
    }
}

fn short_type(key: &str) -> &str {
    key.rsplit(':').next().unwrap_or(key)
}

/// What was read about one `[jsm] projects` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFacts {
    pub key: String,
    /// `Err` when `GET /rest/api/3/project/{key}` failed (404: no such project, or not visible).
    pub details: Result<ProjectDetails, JsmError>,
}

/// What was read about an existing project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectDetails {
    /// The request type names of the project's service desk; `Ok(None)`: the project has no service desk.
    pub request_types: Result<Option<Vec<String>>, JsmError>,
    /// Every workflow status name of the project (all issue types), deduplicated.
    pub statuses: Result<Vec<String>, JsmError>,
    /// `permissions.{KEY}.havePermission` of the credentials' account.
    pub permissions: Result<BTreeMap<String, bool>, JsmError>,
}

/// Everything `jsm check` compares the config against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFacts {
    pub fields: Result<Vec<FieldInfo>, JsmError>,
    pub projects: Vec<ProjectFacts>,
}

/// A service desk of `GET /rest/servicedeskapi/servicedesk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDesk {
    pub id: String,
    pub project_key: String,
}

/// A custom field context (`GET /rest/api/3/field/{fieldId}/context`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldContext {
    pub id: String,
    pub name: String,
}

/// A select option of a field context. `parent` is the `optionId` of a cascading child option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectOption {
    pub id: String,
    pub value: String,
    pub disabled: bool,
    pub parent: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------

impl JsmClient {
    /// `GET /rest/api/3/project/{key}`: `Ok` when the project exists and the account can browse it.
    pub async fn project_exists(&self, key: &str) -> Result<(), JsmError> {
        let url = self.url(&["rest", "api", "3", "project", key])?;
        let _: Value = self.json(self.request(Method::GET, url), &format!("GET /rest/api/3/project/{key}")).await?;
        Ok(())
    }

    /// `GET /rest/api/3/field`: every system and custom field of the site.
    pub async fn fields(&self) -> Result<Vec<FieldInfo>, JsmError> {
        let what = "GET /rest/api/3/field";
        let url = self.url(&["rest", "api", "3", "field"])?;
        let list: Vec<Value> = self.json(self.request(Method::GET, url), what).await?;
        Ok(list
            .iter()
            .filter_map(|f| {
                let text = |p: &str| f.pointer(p).and_then(Value::as_str).map(str::to_owned);
                Some(FieldInfo {
                    id: text("/id")?,
                    name: text("/name").unwrap_or_default(),
                    custom: text("/schema/custom"),
                    schema_type: text("/schema/type"),
                    system: text("/schema/system"),
                })
            })
            .collect())
    }

    /// `GET /rest/servicedeskapi/servicedesk` (every page).
    pub async fn service_desks(&self) -> Result<Vec<ServiceDesk>, JsmError> {
        let url = self.url(&["rest", "servicedeskapi", "servicedesk"])?;
        let values = self.sd_pages(url, "GET /rest/servicedeskapi/servicedesk").await?;
        Ok(values
            .iter()
            .filter_map(|v| Some(ServiceDesk { id: id_text(v.get("id"))?, project_key: str_at(v, "projectKey")? }))
            .collect())
    }

    /// The request type names of a service desk:
    /// `GET /rest/servicedeskapi/servicedesk/{id}/requesttype` (every page).
    pub async fn request_type_names(&self, service_desk_id: &str) -> Result<Vec<String>, JsmError> {
        let url = self.url(&["rest", "servicedeskapi", "servicedesk", service_desk_id, "requesttype"])?;
        let what = format!("GET /rest/servicedeskapi/servicedesk/{service_desk_id}/requesttype");
        let values = self.sd_pages(url, &what).await?;
        Ok(values.iter().filter_map(|v| str_at(v, "name")).collect())
    }

    /// Every status name of a project's workflows: `GET /rest/api/3/project/{key}/statuses`, the
    /// `statuses[].name` of every issue type, deduplicated in order of first appearance.
    pub async fn project_statuses(&self, key: &str) -> Result<Vec<String>, JsmError> {
        let what = format!("GET /rest/api/3/project/{key}/statuses");
        let url = self.url(&["rest", "api", "3", "project", key, "statuses"])?;
        let issue_types: Vec<Value> = self.json(self.request(Method::GET, url), &what).await?;
        let mut names: Vec<String> = Vec::new();
        for it in &issue_types {
            for s in it.get("statuses").and_then(Value::as_array).into_iter().flatten() {
                if let Some(name) = str_at(s, "name")
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    /// `GET /rest/api/3/mypermissions?projectKey={key}&permissions=A,B`: `havePermission` per key asked
    /// (a key the answer leaves out is absent from the map).
    pub async fn my_permissions(&self, key: &str, permissions: &[&str]) -> Result<BTreeMap<String, bool>, JsmError> {
        let url = self.url(&["rest", "api", "3", "mypermissions"])?;
        let req = self.request(Method::GET, url).query(&[("projectKey", key), ("permissions", &permissions.join(","))]);
        let v: Value = self.json(req, "GET /rest/api/3/mypermissions").await?;
        Ok(permissions
            .iter()
            .filter_map(|p| {
                let have = v.pointer(&format!("/permissions/{p}/havePermission")).and_then(Value::as_bool)?;
                Some(((*p).to_owned(), have))
            })
            .collect())
    }

    /// `GET /rest/api/3/field/{fieldId}/context` (every page).
    pub async fn field_contexts(&self, field_id: &str) -> Result<Vec<FieldContext>, JsmError> {
        let url = self.url(&["rest", "api", "3", "field", field_id, "context"])?;
        let what = format!("GET /rest/api/3/field/{field_id}/context");
        let values = self.platform_pages(url, &what, CONTEXT_PAGE_SIZE).await?;
        Ok(values
            .iter()
            .filter_map(|v| {
                Some(FieldContext { id: id_text(v.get("id"))?, name: str_at(v, "name").unwrap_or_default() })
            })
            .collect())
    }

    /// `GET /rest/api/3/field/{fieldId}/context/{contextId}/option` (every page): options, then
    /// cascading options (with `optionId`).
    pub async fn context_options(&self, field_id: &str, context_id: &str) -> Result<Vec<SelectOption>, JsmError> {
        let url = self.url(&["rest", "api", "3", "field", field_id, "context", context_id, "option"])?;
        let what = format!("GET /rest/api/3/field/{field_id}/context/{context_id}/option");
        let values = self.platform_pages(url, &what, OPTION_PAGE_SIZE).await?;
        Ok(values.iter().filter_map(parse_option).collect())
    }

    /// `POST /rest/api/3/field/{fieldId}/context/{contextId}/option`
    /// `{"options":[{"value","disabled":false[,"optionId"]}]}`: creates options (children of a cascading
    /// option when `parent_id` is set); returns the created options (with their ids).
    pub async fn create_options(
        &self,
        field_id: &str,
        context_id: &str,
        options: &[(Option<String>, String)],
    ) -> Result<Vec<SelectOption>, JsmError> {
        let url = self.url(&["rest", "api", "3", "field", field_id, "context", context_id, "option"])?;
        let what = format!("POST /rest/api/3/field/{field_id}/context/{context_id}/option");
        let mut created = Vec::new();
        for chunk in options.chunks(MAX_OPTIONS_PER_REQUEST) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|(parent, value)| match parent {
                    Some(p) => json!({ "value": value, "optionId": p, "disabled": false }),
                    None => json!({ "value": value, "disabled": false }),
                })
                .collect();
            let req = self.request(Method::POST, url.clone()).json(&json!({ "options": body }));
            let resp: Value = self.json(req, &what).await?;
            created
                .extend(resp.get("options").and_then(Value::as_array).into_iter().flatten().filter_map(parse_option));
        }
        Ok(created)
    }

    /// `PUT /rest/api/3/field/{fieldId}/context/{contextId}/option` `{"options":[…]}`: each update is
    /// `{"id","disabled"}`, plus `"value"` when it renames.
    pub async fn update_options(
        &self,
        field_id: &str,
        context_id: &str,
        updates: &[OptionUpdate],
    ) -> Result<(), JsmError> {
        let url = self.url(&["rest", "api", "3", "field", field_id, "context", context_id, "option"])?;
        let what = format!("PUT /rest/api/3/field/{field_id}/context/{context_id}/option");
        for chunk in updates.chunks(MAX_OPTIONS_PER_REQUEST) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|u| match &u.rename_to {
                    Some(v) => json!({ "id": u.id, "value": v, "disabled": u.disabled }),
                    None => json!({ "id": u.id, "disabled": u.disabled }),
                })
                .collect();
            let req = self.request(Method::PUT, url.clone()).json(&json!({ "options": body }));
            self.send(req, &what).await?;
        }
        Ok(())
    }

    /// Every `values[]` of a servicedeskapi paged list (`start`, `limit`, `isLastPage`).
    async fn sd_pages(&self, url: reqwest::Url, what: &str) -> Result<Vec<Value>, JsmError> {
        let mut all = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_PAGES {
            let req = self
                .request(Method::GET, url.clone())
                .query(&[("start", start.to_string()), ("limit", SD_PAGE_LIMIT.to_string())]);
            let page: Value = self.json(req, what).await?;
            let values = page_values(&page, what)?;
            let n = values.len() as u64;
            all.extend(values);
            if page.get("isLastPage").and_then(Value::as_bool).unwrap_or(true) || n == 0 {
                return Ok(all);
            }
            start = page.get("start").and_then(Value::as_u64).unwrap_or(start) + n;
        }
        Err(JsmError::Permanent(format!("{what}: more than {MAX_PAGES} pages; giving up")))
    }

    /// Every `values[]` of a platform paged list (`startAt`, `maxResults`, `isLast`).
    async fn platform_pages(&self, url: reqwest::Url, what: &str, page_size: u64) -> Result<Vec<Value>, JsmError> {
        let mut all = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_PAGES {
            let req = self
                .request(Method::GET, url.clone())
                .query(&[("startAt", start.to_string()), ("maxResults", page_size.to_string())]);
            let page: Value = self.json(req, what).await?;
            let values = page_values(&page, what)?;
            let n = values.len() as u64;
            all.extend(values);
            if page.get("isLast").and_then(Value::as_bool).unwrap_or(true) || n == 0 {
                return Ok(all);
            }
            start = page.get("startAt").and_then(Value::as_u64).unwrap_or(start) + n;
        }
        Err(JsmError::Permanent(format!("{what}: more than {MAX_PAGES} pages; giving up")))
    }
}

fn page_values(page: &Value, what: &str) -> Result<Vec<Value>, JsmError> {
    page.get("values")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| JsmError::Permanent(format!("{what}: the response is not a page (no values[])")))
}

fn str_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// An id given as a string or a number.
fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_option(v: &Value) -> Option<SelectOption> {
    Some(SelectOption {
        id: id_text(v.get("id"))?,
        value: str_at(v, "value")?,
        disabled: v.get("disabled").and_then(Value::as_bool).unwrap_or(false),
        parent: id_text(v.get("optionId")),
    })
}

/// Reads everything [`check`] needs. Stops early (no project reads) when the first call shows that
/// the site refuses the credentials or cannot be reached.
pub async fn collect_facts(client: &JsmClient, config: &Config) -> SiteFacts {
    let fields = client.fields().await;
    if matches!(fields, Err(JsmError::Unauthorized(_) | JsmError::Transient { .. })) {
        return SiteFacts { fields, projects: Vec::new() };
    }
    let mut desks: Option<Result<Vec<ServiceDesk>, JsmError>> = None;
    let mut projects = Vec::new();
    for key in &config.jsm.projects {
        let key = key.trim();
        if let Err(e) = client.project_exists(key).await {
            projects.push(ProjectFacts { key: key.to_owned(), details: Err(e) });
            continue;
        }
        if desks.is_none() {
            desks = Some(client.service_desks().await);
        }
        let request_types = match desks.as_ref() {
            Some(Ok(list)) => match list.iter().find(|d| d.project_key.eq_ignore_ascii_case(key)) {
                Some(desk) => client.request_type_names(&desk.id).await.map(Some),
                None => Ok(None),
            },
            Some(Err(e)) => Err(e.clone()),
            None => Ok(None),
        };
        let statuses = client.project_statuses(key).await;
        let permissions = client.my_permissions(key, &PERMISSIONS).await;
        projects.push(ProjectFacts {
            key: key.to_owned(),
            details: Ok(ProjectDetails { request_types, statuses, permissions }),
        });
    }
    SiteFacts { fields, projects }
}

// ---------------------------------------------------------------------------------------------------
// jsm check: the pure comparison
// ---------------------------------------------------------------------------------------------------

/// How a check came out. `Warning` does not fail the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Problem,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRow {
    /// What kind of check (`credentials`, `project`, `request type`, `field`, `status`, `write-back`,
    /// `permission`).
    pub check: &'static str,
    /// What was checked, naming the config key or the project.
    pub subject: String,
    pub level: Level,
    /// What was found.
    pub result: String,
    /// What to do about it (problems and warnings only).
    pub fix: Option<String>,
}

/// The checklist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub rows: Vec<CheckRow>,
}

impl Report {
    pub fn problems(&self) -> usize {
        self.rows.iter().filter(|r| r.level == Level::Problem).count()
    }

    pub fn warnings(&self) -> usize {
        self.rows.iter().filter(|r| r.level == Level::Warning).count()
    }

    fn ok(&mut self, check: &'static str, subject: String, result: String) {
        self.rows.push(CheckRow { check, subject, level: Level::Ok, result, fix: None });
    }

    fn warn(&mut self, check: &'static str, subject: String, result: String, fix: String) {
        self.rows.push(CheckRow { check, subject, level: Level::Warning, result, fix: Some(fix) });
    }

    fn problem(&mut self, check: &'static str, subject: String, result: String, fix: String) {
        self.rows.push(CheckRow { check, subject, level: Level::Problem, result, fix: Some(fix) });
    }

    /// A failed read, with the usual fix for its class.
    fn failed_read(&mut self, check: &'static str, subject: String, e: &JsmError) {
        let fix = match e {
            JsmError::Unauthorized(_) => "check the JSM email/API token (jsm.email_*, jsm.api_token_*) and the \
                                          account's permissions in the project"
                .to_owned(),
            JsmError::NotFound(_) => "check jsm.base_url and the project key".to_owned(),
            JsmError::Transient { .. } => "the site did not answer properly; run the check again".to_owned(),
            JsmError::Permanent(_) => "see the message; check jsm.base_url".to_owned(),
        };
        self.problem(check, subject, format!("could not read: {e}"), fix);
    }
}

/// The report of a config whose JSM credentials are missing or unreadable: one problem, nothing read.
pub fn credentials_problem(message: &str) -> Report {
    let mut r = Report::default();
    r.problem(
        "credentials",
        "jsm.email_* / jsm.api_token_*".into(),
        message.to_owned(),
        "set jsm.email_env (or email_file) and jsm.api_token_env (or api_token_file) to the Jira account \
         accessgov acts as, with an API token from id.atlassian.com/manage-profile/security/api-tokens"
            .into(),
    );
    r
}

/// What a configured field must be.
enum Expect {
    /// One of these custom field types.
    Custom(&'static [&'static str]),
    /// A user picker or a system user field (`assignee`, `reporter`).
    SingleUser,
    /// Any type (the type is shown).
    Any,
}

impl Expect {
    fn accepts(&self, f: &FieldInfo) -> bool {
        match self {
            Self::Custom(list) => f.custom.as_deref().is_some_and(|c| list.contains(&c)),
            Self::SingleUser => f.is_single_user(),
            Self::Any => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Custom(list) => {
                list.iter().map(|t| format!("{} ({t})", short_type(t))).collect::<Vec<_>>().join(" or ")
            }
            Self::SingleUser => {
                format!("userpicker ({}) or a system user field (assignee, reporter)", types::USER_PICKER)
            }
            Self::Any => "any".to_owned(),
        }
    }
}

/// Compares the config with what was read from the site. Pure.
pub fn check(config: &Config, facts: &SiteFacts) -> Report {
    let mut r = Report::default();
    if let Err(e @ JsmError::Unauthorized(_)) = &facts.fields {
        r.problem(
            "credentials",
            "jsm.email_* / jsm.api_token_*".into(),
            format!("{e}"),
            "the site refused the email/API token: check that the token belongs to that email's account, \
             has not been revoked, and that jsm.base_url is the right site"
                .into(),
        );
        return r;
    }
    if let Err(e @ JsmError::Transient { .. }) = &facts.fields {
        r.problem(
            "credentials",
            format!("jsm.base_url = {}", config.jsm.base_url),
            format!("{e}"),
            "check jsm.base_url (https://<site>.atlassian.net) and that this host can reach it; run the check \
             again"
                .into(),
        );
        return r;
    }
    r.ok("credentials", "jsm.email_* / jsm.api_token_*".into(), "the site accepts them".into());

    if config.jsm.projects.is_empty() {
        r.warn(
            "project",
            "[jsm] projects".into(),
            "empty: events from every project are accepted; request types, statuses and permissions are not \
             checked"
                .into(),
            "set [jsm] projects = [\"KEY\"] to the service project(s) accessgov serves".into(),
        );
    }
    for p in &facts.projects {
        project_rows(&mut r, config, p);
    }
    match &facts.fields {
        Ok(fields) => field_rows(&mut r, config, fields),
        Err(e) => r.failed_read("field", "GET /rest/api/3/field".into(), e),
    }
    r
}

fn project_rows(r: &mut Report, config: &Config, p: &ProjectFacts) {
    let key = &p.key;
    let d = match &p.details {
        Ok(d) => d,
        Err(JsmError::NotFound(_)) => {
            r.problem(
                "project",
                key.clone(),
                "not found (or the account cannot browse it)".into(),
                format!(
                    "check the key {key:?} in [jsm] projects (it is the prefix of ticket keys, e.g. {key}-1), \
                     and give the account Browse projects"
                ),
            );
            return;
        }
        Err(e) => {
            r.failed_read("project", key.clone(), e);
            return;
        }
    };
    r.ok("project", key.clone(), "exists".into());

    // Request types: the ingress matches names exactly.
    match &d.request_types {
        Err(e) => r.failed_read("request type", format!("{key}: service desk"), e),
        Ok(None) => r.problem(
            "request type",
            format!("{key}: service desk"),
            "the project is not a service project (no service desk)".into(),
            "list the JSM service project in [jsm] projects".into(),
        ),
        Ok(Some(names)) => {
            for wanted in config.jsm.request_types.keys() {
                let subject = format!("{key}: {wanted:?}");
                if names.iter().any(|n| n == wanted) {
                    r.ok("request type", subject, "exists".into());
                } else if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(wanted)) {
                    r.problem(
                        "request type",
                        subject,
                        format!("only {n:?} exists, which differs in case (request types match exactly)"),
                        format!("rename the key in [jsm.request_types] to {n:?}"),
                    );
                } else {
                    r.problem(
                        "request type",
                        subject,
                        "no request type of this name in the project's service desk".into(),
                        format!(
                            "rename the key in [jsm.request_types] to the name the portal shows{}",
                            closest_hint(wanted, names)
                        ),
                    );
                }
            }
        }
    }

    // Statuses: the ingress matches exactly, then case-insensitively, so a case difference is fine.
    match &d.statuses {
        Err(e) => r.failed_read("status", format!("{key}: workflow statuses"), e),
        Ok(statuses) => {
            let mut wanted: Vec<(String, &str)> =
                config.jsm.statuses.keys().map(|s| ("[jsm.statuses]".to_owned(), s.as_str())).collect();
            for (i, rule) in config.rules.iter().enumerate() {
                for (j, stage) in rule.stages.iter().enumerate() {
                    wanted.push((format!("rules[{i}].stages[{j}].status"), stage.status.as_str()));
                }
            }
            for (source, name) in wanted {
                let subject = format!("{key}: {name:?} ({source})");
                match find_name(name, statuses) {
                    Some(found) if found == name => r.ok("status", subject, "exists".into()),
                    Some(found) => r.ok(
                        "status",
                        subject,
                        format!("exists as {found:?} (matched ignoring case, as the ingress does)"),
                    ),
                    None => r.problem(
                        "status",
                        subject,
                        "no workflow status of this name in the project".into(),
                        format!("change {source} to a status of the workflow{}", closest_hint(name, statuses)),
                    ),
                }
            }
            let wb = &config.jsm.write_back;
            for (k, v) in [
                ("transition_on_success", &wb.transition_on_success),
                ("transition_on_failure", &wb.transition_on_failure),
                ("transition_on_invalid", &wb.transition_on_invalid),
            ] {
                let Some(name) = v.as_deref() else { continue };
                let subject = format!("{key}: [jsm.write_back] {k} = {name:?}");
                match find_name(name, statuses) {
                    Some(found) => r.ok(
                        "write-back",
                        subject,
                        format!(
                            "status {found:?} exists (checked against status names; transitions can only be \
                             listed on a ticket)"
                        ),
                    ),
                    None => r.warn(
                        "write-back",
                        subject,
                        "not a status of the project; fine only if it is a transition name (transitions can \
                         only be listed on a ticket, so this cannot be checked here)"
                            .into(),
                        format!(
                            "use the target status name, or make sure the workflow has a transition of this \
                             name{}",
                            closest_hint(name, statuses)
                        ),
                    ),
                }
            }
        }
    }

    // Permissions of the credentials' account.
    match &d.permissions {
        Err(e) => r.failed_read("permission", format!("{key}: mypermissions"), e),
        Ok(have) => {
            let wb = &config.jsm.write_back;
            let comments = wb.comment || config.rules.iter().any(|rule| rule.plan);
            let transitions = wb.transition_on_success.is_some()
                || wb.transition_on_failure.is_some()
                || wb.transition_on_invalid.is_some();
            let edits = config.jsm.fields.approvers.is_some() || config.jsm.fields.approver_groups.is_some();
            for perm in PERMISSIONS {
                let (needed, why) = match perm {
                    "BROWSE_PROJECTS" => (true, "to read tickets and approvals"),
                    "EDIT_ISSUES" => (edits, "to set the Approvers / Approver groups fields when routing"),
                    "ADD_COMMENTS" => (comments, "to comment outcomes and plans"),
                    _ => (transitions, "to transition tickets ([jsm.write_back] transition_on_*)"),
                };
                let subject = format!("{key}: {perm}");
                match have.get(perm) {
                    Some(true) => r.ok("permission", subject, format!("granted ({why})")),
                    got => {
                        let result = if got.is_none() { "not reported by the site" } else { "missing" };
                        let fix = format!(
                            "grant the account {perm} in the project's permission scheme (Project settings > \
                             Permissions), e.g. through a project role it has"
                        );
                        if needed {
                            r.problem("permission", subject, format!("{result}; needed {why}"), fix);
                        } else {
                            r.warn("permission", subject, format!("{result}; not needed by this config yet"), fix);
                        }
                    }
                }
            }
        }
    }
}

fn field_rows(r: &mut Report, config: &Config, fields: &[FieldInfo]) {
    let f = &config.jsm.fields;
    let mut wanted: Vec<(String, &str, Expect)> = vec![
        ("jsm.fields.request_type".into(), f.request_type.as_str(), Expect::Custom(&[types::REQUEST_TYPE])),
        ("jsm.fields.application".into(), f.application.as_str(), Expect::Custom(&[types::SELECT])),
        ("jsm.fields.access_level".into(), f.access_level.as_str(), Expect::Custom(&[types::SELECT])),
        ("jsm.fields.requester".into(), f.requester.as_str(), Expect::SingleUser),
    ];
    let optional = [
        ("approvals", &f.approvals, Expect::Custom(&[types::APPROVALS])),
        ("approver", &f.approver, Expect::SingleUser),
        ("approvers", &f.approvers, Expect::Custom(&[types::MULTI_USER_PICKER])),
        ("approver_groups", &f.approver_groups, Expect::Custom(&[types::MULTI_GROUP_PICKER])),
        ("application_access", &f.application_access, Expect::Custom(&[types::CASCADING_SELECT])),
        ("duration", &f.duration, Expect::Any),
        ("department", &f.department, Expect::Any),
    ];
    for (k, v, e) in optional {
        if let Some(id) = v.as_deref() {
            wanted.push((format!("jsm.fields.{k}"), id, e));
        }
    }
    for (name, app) in &config.applications {
        if let Some(id) = app.settings.get("subject_field").and_then(|v| v.as_str()) {
            wanted.push((format!("applications.{name:?}.subject_field"), id, Expect::Any));
        }
    }
    for id in &f.person_fields {
        wanted.push((format!("[[rules]] field:{id}"), id.as_str(), Expect::SingleUser));
    }

    for (key, id, expect) in wanted {
        let id = id.trim();
        let subject = if key.ends_with(id) { key.clone() } else { format!("{key} = {id}") };
        let Some(field) = fields.iter().find(|x| x.id == id) else {
            let candidates: Vec<String> = fields
                .iter()
                .filter(|x| !matches!(expect, Expect::Any) && expect.accepts(x))
                .take(5)
                .map(|x| format!("{:?} ({})", x.name, x.id))
                .collect();
            let hint = if candidates.is_empty() {
                String::new()
            } else {
                format!("; fields of the right type: {}", candidates.join(", "))
            };
            r.problem(
                "field",
                subject,
                "no field with this id on the site".into(),
                format!("set {key} to the field's id (GET /rest/api/3/field lists them){hint}"),
            );
            continue;
        };
        if expect.accepts(field) {
            r.ok("field", subject, format!("{:?} ({})", field.name, field.type_label()));
        } else {
            let actual = match &field.custom {
                Some(c) => format!("{} ({c})", short_type(c)),
                None => field.type_label(),
            };
            r.problem(
                "field",
                subject,
                format!("wrong type: expected {}, found {actual} ({:?})", expect.describe(), field.name),
                format!("point {key} at a field of the expected type, or create one (Jira settings > Issues > Custom fields)"),
            );
        }
    }
}

/// `name` among `names`: exactly, else ignoring case.
fn find_name<'a>(name: &str, names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .find(|n| *n == name)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(name)))
        .map(String::as_str)
}

/// `"; closest: \"A\", \"B\""`: the (at most 3) names within a few edits of `name` (ignoring case);
/// when none is that near, the first names of the list, so that the fix still shows what exists.
fn closest_hint(name: &str, names: &[String]) -> String {
    let quoted = |list: Vec<&str>| list.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    if names.is_empty() {
        return "; the project has none".to_owned();
    }
    let near_enough = (name.chars().count() / 3).max(2);
    let target = name.to_lowercase();
    let near: Vec<&str> = closest(name, names, 3)
        .into_iter()
        .filter(|n| edit_distance(&target, &n.to_lowercase()) <= near_enough)
        .collect();
    if near.is_empty() {
        let some: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
        let more = if names.len() > some.len() { ", …" } else { "" };
        format!("; none is close; the project has: {}{more}", quoted(some))
    } else {
        format!("; closest: {}", quoted(near))
    }
}

/// The `n` names nearest to `name` (edit distance, ignoring case; ties by name).
pub fn closest<'a>(name: &str, names: &'a [String], n: usize) -> Vec<&'a str> {
    let target = name.to_lowercase();
    let mut scored: Vec<(usize, &str)> =
        names.iter().map(|c| (edit_distance(&target, &c.to_lowercase()), c.as_str())).collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------------
// jsm sync-options: the pure diff
// ---------------------------------------------------------------------------------------------------

/// The options a field should offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A single select. `exact`: the ingress matches the value exactly (applications), so an option that
    /// differs only in case is renamed; otherwise (access levels) a case difference is left alone.
    Flat { values: Vec<String>, exact: bool },
    /// A cascading select: parents (applications, matched exactly) and each parent's children
    /// (access levels, matched ignoring case).
    Cascading(Vec<(String, Vec<String>)>),
}

impl Wanted {
    /// The Application field: the `[applications]` keys.
    pub fn applications(config: &Config) -> Self {
        Self::Flat { values: config.applications.keys().cloned().collect(), exact: true }
    }

    /// The Access Type field: every rule's access level (first spelling kept, case-insensitively unique).
    pub fn access_levels(config: &Config) -> Self {
        Self::Flat { values: unique_ci(config.rules.iter().map(|r| r.access_level.as_str())), exact: false }
    }

    /// The Application -> Access Type cascading field: each application and its rules' access levels.
    pub fn application_access(config: &Config) -> Self {
        Self::Cascading(
            config
                .applications
                .keys()
                .map(|app| {
                    let levels = config.rules.iter().filter(|r| &r.application == app).map(|r| r.access_level.as_str());
                    (app.clone(), unique_ci(levels))
                })
                .collect(),
        )
    }

    /// Whether nothing is wanted at the top level (syncing would disable every option).
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Flat { values, .. } => values.is_empty(),
            Self::Cascading(parents) => parents.is_empty(),
        }
    }
}

fn unique_ci<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let v = v.trim();
        if !v.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(v)) {
            out.push(v.to_owned());
        }
    }
    out
}

/// What to do to one option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ChangeKind {
    /// Create the option.
    Add,
    /// Disable an option no longer configured (never deleted: old tickets keep their value).
    Disable,
    /// Enable again a configured option that is disabled.
    Enable,
    /// Rename an option that differs from the configured value only in case (and enable it).
    Rename { from: String },
}

/// One change to one option of one field context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptionChange {
    /// The option's value (after the change).
    pub value: String,
    /// For a cascading child: the parent's value.
    pub parent: Option<String>,
    /// For a cascading child: the parent's option id, when the parent exists already.
    pub parent_id: Option<String>,
    /// The existing option's id (`None` for an add).
    pub option_id: Option<String>,
    pub change: ChangeKind,
}

/// One option update for [`JsmClient::update_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionUpdate {
    pub id: String,
    pub disabled: bool,
    pub rename_to: Option<String>,
}

impl OptionChange {
    /// The update for a disable, enable or rename; `None` for an add.
    pub fn update(&self) -> Option<OptionUpdate> {
        let id = self.option_id.clone()?;
        match &self.change {
            ChangeKind::Add => None,
            ChangeKind::Disable => Some(OptionUpdate { id, disabled: true, rename_to: None }),
            ChangeKind::Enable => Some(OptionUpdate { id, disabled: false, rename_to: None }),
            ChangeKind::Rename { .. } => {
                Some(OptionUpdate { id, disabled: false, rename_to: Some(self.value.clone()) })
            }
        }
    }
}

/// The changes that make one context's `existing` options offer exactly `wanted` (enabled), in order:
/// parents (in wanted order: add / enable / rename), then disables of unwanted parents, then each wanted
/// parent's children the same way. Options are never deleted; children of an unwanted parent are left
/// alone (disabling the parent hides them). Pure.
pub fn diff_options(existing: &[SelectOption], wanted: &Wanted) -> Vec<OptionChange> {
    let top: Vec<&SelectOption> = existing.iter().filter(|o| o.parent.is_none()).collect();
    match wanted {
        Wanted::Flat { values, exact } => diff_level(&top, values, *exact, None).0,
        Wanted::Cascading(parents) => {
            let names: Vec<String> = parents.iter().map(|(p, _)| p.clone()).collect();
            let (mut changes, claimed) = diff_level(&top, &names, true, None);
            for ((parent, children), claim) in parents.iter().zip(claimed) {
                let existing_children: Vec<&SelectOption> = match claim {
                    Some(p) => existing.iter().filter(|o| o.parent.as_deref() == Some(p.id.as_str())).collect(),
                    None => Vec::new(),
                };
                let parent_ref = Some((parent.as_str(), claim.map(|p| p.id.as_str())));
                changes.extend(diff_level(&existing_children, children, false, parent_ref).0);
            }
            changes
        }
    }
}

/// One level of options against the wanted values. Each wanted value claims one option (an exact
/// match first, else one differing in case); unclaimed enabled options are disabled. Returns the
/// changes and, per wanted value, the claimed option.
fn diff_level<'a>(
    existing: &[&'a SelectOption],
    wanted: &[String],
    exact: bool,
    parent: Option<(&str, Option<&str>)>,
) -> (Vec<OptionChange>, Vec<Option<&'a SelectOption>>) {
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut claims: Vec<Option<&'a SelectOption>> = Vec::new();
    // Exact claims first, so that "okta" cannot steal the option a later "Okta" matches exactly.
    for w in wanted {
        let c = existing.iter().copied().find(|o| o.value == *w && !taken.contains(o.id.as_str()));
        if let Some(o) = c {
            taken.insert(o.id.as_str());
        }
        claims.push(c);
    }
    for (w, claim) in wanted.iter().zip(claims.iter_mut()) {
        if claim.is_none() {
            let c =
                existing.iter().copied().find(|o| o.value.eq_ignore_ascii_case(w) && !taken.contains(o.id.as_str()));
            if let Some(o) = c {
                taken.insert(o.id.as_str());
            }
            *claim = c;
        }
    }

    let change = |value: &str, option_id: Option<&str>, change: ChangeKind| OptionChange {
        value: value.to_owned(),
        parent: parent.map(|(p, _)| p.to_owned()),
        parent_id: parent.and_then(|(_, id)| id.map(str::to_owned)),
        option_id: option_id.map(str::to_owned),
        change,
    };
    let mut changes = Vec::new();
    for (w, claim) in wanted.iter().zip(&claims) {
        match claim {
            None => changes.push(change(w, None, ChangeKind::Add)),
            Some(o) if exact && o.value != *w => {
                changes.push(change(w, Some(&o.id), ChangeKind::Rename { from: o.value.clone() }));
            }
            Some(o) if o.disabled => changes.push(change(&o.value, Some(&o.id), ChangeKind::Enable)),
            Some(_) => {}
        }
    }
    for o in existing {
        if !o.disabled && !taken.contains(o.id.as_str()) {
            changes.push(change(&o.value, Some(&o.id), ChangeKind::Disable));
        }
    }
    (changes, claims)
}

/// The fields `sync-options` keeps in step: (config key, field id, wanted options).
pub fn sync_targets(config: &Config) -> Vec<(&'static str, String, Wanted)> {
    let f = &config.jsm.fields;
    let mut out = vec![
        ("application", f.application.trim().to_owned(), Wanted::applications(config)),
        ("access_level", f.access_level.trim().to_owned(), Wanted::access_levels(config)),
    ];
    if let Some(id) = f.application_access.as_deref() {
        out.push(("application_access", id.trim().to_owned(), Wanted::application_access(config)));
    }
    out
}

/// The planned changes of one field context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextPlan {
    /// The `[jsm.fields]` key.
    pub field: &'static str,
    pub field_id: String,
    pub context: FieldContext,
    pub changes: Vec<OptionChange>,
}

/// Reads every context of every synced field and diffs it. `progress` gets a line per step.
pub async fn plan_sync(
    client: &JsmClient,
    config: &Config,
    progress: &mut dyn FnMut(String),
) -> Result<Vec<ContextPlan>, String> {
    let mut plans = Vec::new();
    for (field, field_id, wanted) in sync_targets(config) {
        if wanted.is_empty() {
            return Err(format!(
                "jsm.fields.{field}: the config names no {} (refusing to disable every option of {field_id}); \
                 configure [applications] and [[rules]] first",
                if field == "access_level" { "access level" } else { "application" }
            ));
        }
        progress(format!("reading the contexts of {field_id} (jsm.fields.{field})…"));
        let contexts = client.field_contexts(&field_id).await.map_err(|e| with_admin_hint(&e))?;
        if contexts.is_empty() {
            progress(format!("{field_id} has no context: nothing to sync (add a context in the field's settings)"));
        }
        for context in contexts {
            let existing = client.context_options(&field_id, &context.id).await.map_err(|e| with_admin_hint(&e))?;
            let changes = diff_options(&existing, &wanted);
            progress(format!(
                "{field_id} context {} ({:?}): {} option(s), {} change(s)",
                context.id,
                context.name,
                existing.len(),
                changes.len()
            ));
            plans.push(ContextPlan { field, field_id: field_id.clone(), context, changes });
        }
    }
    Ok(plans)
}

fn with_admin_hint(e: &JsmError) -> String {
    match e {
        JsmError::Unauthorized(_) => {
            format!("{e}; managing field contexts and options needs the Administer Jira global permission")
        }
        _ => e.to_string(),
    }
}

/// Applies one context's plan: one `POST` of the adds whose parent exists, one `PUT` of the updates,
/// then one `POST` of the children of parents created by the first. Returns how many changes were made.
pub async fn apply_plan(client: &JsmClient, plan: &ContextPlan) -> Result<usize, JsmError> {
    let (field, ctx) = (plan.field_id.as_str(), plan.context.id.as_str());
    let adds = |ready: bool| {
        plan.changes
            .iter()
            .filter(|c| c.change == ChangeKind::Add && (c.parent.is_none() || c.parent_id.is_some()) == ready)
            .collect::<Vec<_>>()
    };
    let first: Vec<(Option<String>, String)> =
        adds(true).iter().map(|c| (c.parent_id.clone(), c.value.clone())).collect();
    let mut created = Vec::new();
    if !first.is_empty() {
        created = client.create_options(field, ctx, &first).await?;
    }
    let updates: Vec<OptionUpdate> = plan.changes.iter().filter_map(OptionChange::update).collect();
    if !updates.is_empty() {
        client.update_options(field, ctx, &updates).await?;
    }
    let later = adds(false);
    if !later.is_empty() {
        let mut second = Vec::new();
        for c in &later {
            let parent = c.parent.as_deref().unwrap_or_default();
            let id = created.iter().find(|o| o.parent.is_none() && o.value == parent).map(|o| o.id.clone());
            let Some(id) = id else {
                return Err(JsmError::Permanent(format!(
                    "POST /rest/api/3/field/{field}/context/{ctx}/option: the answer does not list the created \
                     option {parent:?}, so its access levels cannot be added; run sync-options again"
                )));
            };
            second.push((Some(id), c.value.clone()));
        }
        client.create_options(field, ctx, &second).await?;
    }
    Ok(plan.changes.len())
}

#[cfg(test)]
mod tests;
