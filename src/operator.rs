//! What the operator tooling (the `dlq`/`audit`/`grants` commands and the admin
//! API) shares: who is acting ([`Operator`], recorded as the audit `actor`) and
//! how a point in time is written on the command line or in a query string
//! ([`parse_time`]).

use chrono::{DateTime, NaiveDate, Utc};
use std::fmt;

/// Longest operator name accepted.
const MAX_OPERATOR_LEN: usize = 128;

/// Where an operator action came from (recorded in the audit row's detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Cli,
    AdminApi,
    /// The workers' own schedule (`[reconcile] interval`).
    Schedule,
    /// The operator web console (`/console`).
    Console,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::AdminApi => "admin_api",
            Self::Schedule => "schedule",
            Self::Console => "console",
        }
    }
}

/// A named operator: the `--operator` flag (default: the OS user) or the
/// `X-Accessgov-Operator` header of an admin API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub via: Via,
}

impl Operator {
    /// Validates a name: 1-128 characters, no control characters.
    pub fn new(name: &str, via: Via) -> Result<Self, String> {
        let name = name.trim();
        if name.is_empty() {
            return Err("the operator name is empty".into());
        }
        if name.chars().count() > MAX_OPERATOR_LEN {
            return Err(format!("the operator name is longer than {MAX_OPERATOR_LEN} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("the operator name contains control characters".into());
        }
        Ok(Self { name: name.to_owned(), via })
    }

    /// The CLI operator: `--operator` (or `ACCESSGOV_OPERATOR`), else the OS user
    /// (`USER`, then `LOGNAME`).
    pub fn from_cli(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let name = flag
            .map(str::to_owned)
            .or_else(|| env("USER").filter(|u| !u.trim().is_empty()))
            .or_else(|| env("LOGNAME").filter(|u| !u.trim().is_empty()))
            .ok_or_else(|| {
                "cannot tell who is acting: pass --operator NAME (or set ACCESSGOV_OPERATOR); \
                 USER and LOGNAME are not set"
                    .to_owned()
            })?;
        Self::new(&name, Via::Cli).map_err(|e| format!("--operator: {e}"))
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A point in time: RFC 3339 (`2026-01-31T08:00:00Z`), a UTC date
/// (`2026-01-31`, midnight), or a duration back from `now` (`90m`, `24h`, `7d`).
pub fn parse_time_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(ago) = crate::config::duration::parse(s) {
        let ago = chrono::Duration::from_std(ago).map_err(|_| format!("{s:?} is too far back"))?;
        return now.checked_sub_signed(ago).ok_or_else(|| format!("{s:?} is too far back"));
    }
    Err(format!(
        "{s:?} is not a time: write an RFC 3339 time (2026-01-31T08:00:00Z), a date (2026-01-31) \
         or a duration back from now (24h, 7d)"
    ))
}

/// [`parse_time_at`] relative to the current time (a clap value parser).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(s, Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_durations_back_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_time_at("2026-01-31T08:00:00+01:00", now).unwrap().to_rfc3339(), "2026-01-31T07:00:00+00:00");
        assert_eq!(parse_time_at("2026-01-31", now).unwrap().to_rfc3339(), "2026-01-31T00:00:00+00:00");
        assert_eq!(parse_time_at("24h", now).unwrap().to_rfc3339(), "2026-03-09T12:00:00+00:00");
        assert_eq!(parse_time_at("7d", now).unwrap().to_rfc3339(), "2026-03-03T12:00:00+00:00");
        assert!(parse_time_at("yesterday", now).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn operator_names_are_validated_and_default_to_the_os_user() {
        let env = |k: &str| (k == "USER").then(|| "alice".to_owned());
        assert_eq!(Operator::from_cli(None, &env).unwrap().name, "alice");
        assert_eq!(Operator::from_cli(Some(" bob "), &env).unwrap().name, "bob");
        assert!(Operator::from_cli(None, &|_| None).unwrap_err().contains("--operator"));
        assert!(Operator::new("", Via::AdminApi).is_err());
        assert!(Operator::new("a\nb", Via::AdminApi).is_err());
        assert!(Operator::new(&"x".repeat(129), Via::AdminApi).is_err());
    }
}
