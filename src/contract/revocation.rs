//! Revocation: operators' revoke commands (in, `tollgate.revocations`), the
//! answer to each command (out, `tollgate.replies`) and grant events data
//! hosts consume (out, `tollgate.grants`).

use serde::{Deserialize, Serialize};

use super::Reason;

pub const REVOKE_SCHEMA: &str = "tollgate.revoke/v1";
pub const REPLY_SCHEMA: &str = "tollgate.reply/v1";
pub const GRANT_EVENT_SCHEMA: &str = "tollgate.grant_event/v1";

/// Which live grants a revoke command withdraws.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RevokeTarget {
    /// One grant, by its decision id (the grant's `jti`).
    Grant(String),
    /// Every live grant of an enterprise (USCC).
    Enterprise(String),
    /// Every live grant on a dataset.
    Dataset(String),
    /// Every live grant in a scenario.
    Scenario(String),
}

impl RevokeTarget {
    /// `grant:…`, `enterprise:…`: the audit event's resource.
    pub fn describe(&self) -> String {
        match self {
            RevokeTarget::Grant(v) => format!("grant:{v}"),
            RevokeTarget::Enterprise(v) => format!("enterprise:{v}"),
            RevokeTarget::Dataset(v) => format!("dataset:{v}"),
            RevokeTarget::Scenario(v) => format!("scenario:{v}"),
        }
    }
}

/// `tollgate.revoke/v1`: an operator withdraws grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeCommand {
    pub schema: String,
    /// The operator's idempotency key: the same command again gets the same reply.
    pub command_id: String,
    /// The operator's JWT (`operator` role); or an `authorization: Bearer` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub target: RevokeTarget,
    /// Why, in words: recorded, audited and sent to data hosts.
    pub reason: String,
}

/// The answer to a command, keyed by `command_id` (a verdict's: its
/// `request_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub schema: String,
    /// The revoke command's id, or the verdict's request id.
    pub command_id: String,
    /// `revoke` or `review` (the command's kind).
    pub command: String,
    /// `accepted` or `refused`.
    pub outcome: String,
    /// Why it was refused (stable codes), empty when accepted.
    pub reasons: Vec<Reason>,
    /// Grants withdrawn by this command (decision ids), when accepted.
    pub revoked: Vec<String>,
    /// An accepted verdict: the request's final decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    pub replied_at: chrono::DateTime<chrono::Utc>,
    pub trace_id: String,
}

/// A change to a grant that data hosts act on, keyed by the grant's
/// decision id. `event` is `revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEvent {
    pub schema: String,
    pub event: String,
    pub decision_id: String,
    pub request_id: String,
    pub subject: String,
    /// The data holder department (the grant's `aud`).
    pub holder: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    /// Why: `revoke.command` (an operator's command; the message is its
    /// reason) or the policy's denial code when the policy no longer allows it.
    pub reason: Reason,
    /// Who: the operator's subject, or `policy`.
    pub by: String,
    /// The policy the grant was issued under and the one in force when revoked.
    pub granted_under: String,
    pub revoked_under: String,
    /// When the grant would have expired.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: chrono::DateTime<chrono::Utc>,
}
