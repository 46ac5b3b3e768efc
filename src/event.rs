//! `AccessEvent` v1: the one message ingress publishes and workers consume.
//!
//! The schema string travels in every body; a worker refuses (dead-letters as
//! poison) a body whose schema it does not know. Ids are strings, an empty email
//! is `null`, and the event id is derived from the dedupe key so that duplicate
//! deliveries of the same JSM change carry the same event id.

use crate::config::{AppStatus, RequestAction};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema identifier carried by every v1 body.
pub const SCHEMA_V1: &str = "accessgov.access-event/v1";

/// Namespace for deriving event ids from dedupe keys (UUID v5).
const EVENT_ID_NAMESPACE: Uuid =
    Uuid::from_bytes([0x6b, 0x1f, 0x0e, 0x52, 0x9a, 0x4d, 0x4c, 0x1b, 0x8e, 0x37, 0x2f, 0x61, 0x0a, 0x9c, 0x55, 0xd3]);

/// Derives the event id from a dedupe key: same key, same id.
pub fn event_id_for(dedupe_key: &str) -> Uuid {
    Uuid::new_v5(&EVENT_ID_NAMESPACE, dedupe_key.as_bytes())
}

/// Where the payload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A Jira admin webhook (`webhookEvent`).
    JiraWebhook,
    /// Automation "Issue data (Jira format)": `{"issue": {...}}`.
    AutomationJira,
    /// Automation "Issue data (Automation format)": the bare issue.
    AutomationIssue,
    /// Automation "Custom data": the documented `accessgov.automation/v1` body
    /// (see the README, "Automation rule (custom body)").
    AutomationCustom,
    /// The worker's own expiry sweeper: the ticket's time-bound holds ran out.
    Expiry,
    /// An approved offboarding: one event per (granting ticket, application) of
    /// the leaver's holds, each revoking that ticket's holds.
    Offboard,
    /// An approved onboarding: one event per item of the role's bundle to grant,
    /// under the onboarding ticket, approved by the approver the role allowed.
    Onboard,
    /// `grants reconcile --fix`: provision again a membership the ledger holds
    /// and the provider lost (`repair` names the targets).
    Reconcile,
}

impl Source {
    /// Whether accessgov made the event itself (expiry, an onboarding's items, an
    /// offboarding's revokes, a reconcile repair or removal), rather than JSM.
    pub fn made_here(self) -> bool {
        matches!(self, Self::Expiry | Self::Offboard | Self::Onboard | Self::Reconcile)
    }
}

/// A person, as JSM identifies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub account_id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

/// Where the approver was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApproverSource {
    JsmApprovals,
    ApproverField,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    #[serde(flatten)]
    pub person: Person,
    pub source: ApproverSource,
}

/// The JSM approval the ticket's approvals field shows as deciding: the latest
/// one (by completion, else creation). Only `final_decision == "approved"` can
/// ever grant, and within it only the approvers whose own decision is `approved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: Option<String>,
    /// `approved`, `declined` or `pending`, as JSM says.
    pub final_decision: String,
    pub completed_at: Option<DateTime<Utc>>,
    /// The approvers whose own `approverDecision` is `approved`.
    pub approved_by: Vec<Person>,
}

/// How the ingress authenticated the body the event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authenticity {
    /// A Jira admin webhook's `X-Hub-Signature`: Jira vouches for the body, its `user` included.
    Signature,
    /// A bearer token (Automation): whoever holds the token wrote the body.
    Bearer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub key: String,
    pub id: String,
    pub project_key: Option<String>,
    pub request_type: String,
}

/// The status change that made this an event. Automation issue bodies carry only
/// the current status (`from` is `null`): a snapshot, not a transition. A custom
/// Automation body may carry the from-status (then it is a transition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: Option<String>,
    pub to: String,
    pub from_id: Option<String>,
    pub to_id: Option<String>,
}

/// The normalized access request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessEvent {
    pub schema: String,
    pub event_id: Uuid,
    pub dedupe_key: String,
    pub source: Source,
    /// `X-Atlassian-Webhook-Identifier`, when the sender gave one.
    pub delivery_id: Option<String>,
    pub ticket: Ticket,
    pub action: RequestAction,
    pub app_status: AppStatus,
    pub status: StatusChange,
    pub application: Option<String>,
    pub access_level: Option<String>,
    pub requester: Option<Person>,
    pub approver: Option<Approver>,
    /// The deciding approval of the JSM approvals field, when the ticket has one.
    #[serde(default)]
    pub approval: Option<Approval>,
    /// How the body was authenticated (`None` from `simulate` without headers, or an older event).
    #[serde(default)]
    pub authenticity: Option<Authenticity>,
    /// Who moved the ticket (may be an app user); never taken as the approver.
    pub actor: Option<Person>,
    pub changelog_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// Optional duration value from the ticket (`7d`).
    pub duration: Option<String>,
    /// Optional department value from the ticket.
    pub department: Option<String>,
    /// Missing or malformed required values (`missing_required:<field>`, `unexpected_shape:<field>:<shape>`).
    pub errors: Vec<String>,
    /// The raw values of the configured fields this event was built from.
    pub raw_fields: serde_json::Map<String, serde_json::Value>,
    /// The explicit targets of an event accessgov made itself: for
    /// `Source::Reconcile`, the targets to provision again (still held in the
    /// ledger); for `Source::Offboard`, memberships the leaver has that accessgov
    /// did not grant, to remove (`[offboard] include_unmanaged`). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

/// Why a body could not be read as an event (a poison message).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON or not an access event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown schema {0:?} (this worker reads {SCHEMA_V1})")]
    Schema(String),
}

impl AccessEvent {
    /// Decodes a message body, checking the schema first.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(body)?;
        match probe.schema.as_deref() {
            Some(SCHEMA_V1) => Ok(serde_json::from_slice(body)?),
            other => Err(DecodeError::Schema(other.unwrap_or("<none>").to_owned())),
        }
    }

    /// The routing key used on the events exchange.
    pub fn routing_key(&self) -> String {
        let action = match self.action {
            RequestAction::Grant => "grant",
            RequestAction::Revoke => "revoke",
            RequestAction::Change => "change",
            RequestAction::Offboard => "offboard",
            RequestAction::Onboard => "onboard",
        };
        format!("access.{action}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_dedupe_key_always_gives_the_same_event_id() {
        assert_eq!(event_id_for("jira:10001:20002"), event_id_for("jira:10001:20002"));
        assert_ne!(event_id_for("jira:10001:20002"), event_id_for("jira:10001:20003"));
    }

    #[test]
    fn a_body_with_another_schema_is_refused_by_name() {
        let err = AccessEvent::decode(br#"{"schema":"accessgov.access-event/v9"}"#).unwrap_err();
        assert!(err.to_string().contains("v9"));
        assert!(matches!(AccessEvent::decode(b"not json"), Err(DecodeError::Json(_))));
    }
}
