//! Helpers the Atlassian connectors (Jira, Confluence, Bitbucket) share.

use super::{ConnectorError, Subject};
use reqwest::Response;

/// The requester's Atlassian accountId, or a permanent error saying it is missing.
pub(crate) fn account_id(subject: &Subject) -> Result<&str, ConnectorError> {
    let id = subject.account_id.trim();
    if id.is_empty() {
        return Err(ConnectorError::Permanent {
            reason: "the ticket names no requester accountId, which Atlassian products identify users by".into(),
        });
    }
    Ok(id)
}

/// Whether a target is written as an id (a UUID) rather than a name.
pub(crate) fn looks_like_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A base URL without its trailing slash, refused unless it is http(s).
pub(crate) fn checked_base(app: &str, key: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => Ok(trimmed.to_owned()),
        _ => Err(format!("application {app:?}: {key} must be an http(s) URL, got {trimmed:?}")),
    }
}

/// Parses a success body; a body that does not parse is a permanent error.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, ConnectorError> {
    let url = resp.url().path().to_owned();
    resp.json::<T>()
        .await
        .map_err(|e| ConnectorError::Permanent { reason: format!("unexpected answer from {url}: {e}") })
}

/// One path segment, percent-encoded (ids are UUIDs and `557058:…` account ids).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
