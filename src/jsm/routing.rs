//! The JSM calls of routing: read a ticket's fields back, set its approvers,
//! expand a group to its members, find a user by email, and look for a comment
//! accessgov already posted. Each names its call in errors, never credentials.

use super::{JsmClient, JsmError};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// Page size asked of the group-member and comment lists.
const PAGE: usize = 50;
/// Upper bound on pages followed, whatever the server says.
const MAX_PAGES: usize = 200;

impl JsmClient {
    /// The named fields of an issue: `GET /rest/api/3/issue/{key}?fields=a,b` -> its `fields` object.
    pub async fn issue_fields(&self, issue_key: &str, fields: &[&str]) -> Result<Map<String, Value>, JsmError> {
        let what = format!("GET /rest/api/3/issue/{issue_key}");
        let url = self.url(&["rest", "api", "3", "issue", issue_key])?;
        let req = self.request(Method::GET, url).query(&[("fields", fields.join(","))]);
        let issue: Value = self.json(req, &what).await?;
        match issue.get("fields") {
            Some(Value::Object(map)) => Ok(map.clone()),
            _ => Err(JsmError::Permanent(format!("{what}: the response has no fields object"))),
        }
    }

    /// Sets fields of an issue: `PUT /rest/api/3/issue/{key}` `{"fields": {...}}` (204).
    pub async fn set_fields(&self, issue_key: &str, fields: Map<String, Value>) -> Result<(), JsmError> {
        let what = format!("PUT /rest/api/3/issue/{issue_key}");
        let url = self.url(&["rest", "api", "3", "issue", issue_key])?;
        let req = self.request(Method::PUT, url).json(&json!({ "fields": fields }));
        self.send(req, &what).await.map(drop)
    }

    /// The active members' account ids of a Jira group, or `None` when it has
    /// more than `cap` (`GET /rest/api/3/group/member?groupname=…`, every page).
    pub async fn group_members(&self, group: &str, cap: usize) -> Result<Option<Vec<String>>, JsmError> {
        let what = "GET /rest/api/3/group/member";
        let url = self.url(&["rest", "api", "3", "group", "member"])?;
        let mut members = Vec::new();
        let mut start = 0usize;
        for _ in 0..MAX_PAGES {
            let req = self.request(Method::GET, url.clone()).query(&[
                ("groupname", group.to_owned()),
                ("includeInactiveUsers", "false".to_owned()),
                ("startAt", start.to_string()),
                ("maxResults", PAGE.to_string()),
            ]);
            let page: Value = self.json(req, what).await?;
            if page.get("total").and_then(Value::as_u64).is_some_and(|t| t > cap as u64) {
                return Ok(None);
            }
            let values = page
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| JsmError::Permanent(format!("{what}: the response is not a page of users")))?;
            members.extend(
                values
                    .iter()
                    .filter(|u| u.get("active").and_then(Value::as_bool) != Some(false))
                    .filter_map(|u| u.get("accountId").and_then(Value::as_str).map(str::to_owned)),
            );
            if members.len() > cap {
                return Ok(None);
            }
            if page.get("isLast").and_then(Value::as_bool).unwrap_or(true) || values.is_empty() {
                return Ok(Some(members));
            }
            start += values.len();
        }
        Err(JsmError::Permanent(format!("{what}: more than {MAX_PAGES} pages; giving up")))
    }

    /// The account id of the user whose email is exactly `email`
    /// (`GET /rest/api/3/user/search?query=…`); `None` when no visible email matches.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<String>, JsmError> {
        let what = "GET /rest/api/3/user/search";
        let url = self.url(&["rest", "api", "3", "user", "search"])?;
        let req = self.request(Method::GET, url).query(&[("query", email), ("maxResults", "20")]);
        let users: Vec<Value> = self.json(req, what).await?;
        Ok(users.iter().find_map(|u| {
            let mail = u.get("emailAddress").and_then(Value::as_str)?;
            if mail.eq_ignore_ascii_case(email.trim()) {
                u.get("accountId").and_then(Value::as_str).map(str::to_owned)
            } else {
                None
            }
        }))
    }

    /// Whether a comment of the request contains `marker`
    /// (`GET /rest/servicedeskapi/request/{key}/comment`, public and internal, every page).
    pub async fn has_comment_with(&self, issue_key: &str, marker: &str) -> Result<bool, JsmError> {
        let what = format!("GET /rest/servicedeskapi/request/{issue_key}/comment");
        let url = self.url(&["rest", "servicedeskapi", "request", issue_key, "comment"])?;
        let mut start = 0usize;
        for _ in 0..MAX_PAGES {
            let req = self.request(Method::GET, url.clone()).query(&[
                ("public", "true".to_owned()),
                ("internal", "true".to_owned()),
                ("start", start.to_string()),
                ("limit", PAGE.to_string()),
            ]);
            let page: Value = self.json(req, &what).await?;
            let values = page
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| JsmError::Permanent(format!("{what}: the response is not a page of comments")))?;
            if values.iter().any(|c| c.get("body").and_then(Value::as_str).is_some_and(|b| b.contains(marker))) {
                return Ok(true);
            }
            if page.get("isLastPage").and_then(Value::as_bool).unwrap_or(true) || values.is_empty() {
                return Ok(false);
            }
            start += values.len();
        }
        Err(JsmError::Permanent(format!("{what}: more than {MAX_PAGES} pages of comments; giving up")))
    }
}
