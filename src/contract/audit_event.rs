//! Audit event — out, `tollgate.audit` (key: chain).

use serde::{Deserialize, Serialize};

use super::{AUDIT_SCHEMA, Reason};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub schema: String,
    pub chain: String,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event_type: EventType,
    pub actor: String,
    pub subject: String,
    pub resource: String,
    pub action: String,
    pub outcome: String,
    pub reasons: Vec<Reason>,
    pub policy_version: String,
    pub request_digest: String,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub trace_id: String,
}

impl AuditEvent {
    /// An event for `chain`, not yet sealed: the store assigns `seq`,
    /// `prev_hash` and `hash` when it appends the event. The caller fills in
    /// what happened (struct update syntax).
    pub fn draft(
        chain: String,
        event_type: EventType,
        occurred_at: chrono::DateTime<chrono::Utc>,
        trace_id: String,
    ) -> AuditEvent {
        AuditEvent {
            schema: AUDIT_SCHEMA.into(),
            chain,
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            event_type,
            actor: String::new(),
            subject: String::new(),
            resource: String::new(),
            action: String::new(),
            outcome: String::new(),
            reasons: Vec::new(),
            policy_version: String::new(),
            request_digest: String::new(),
            occurred_at,
            trace_id,
        }
    }
}

/// What an audit event records. Written by the broker and the reloader,
/// read by `policy status` and auditors: one spelling, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A request decided (approved, denied or pending review).
    Decision,
    /// A request denied because it would exceed the monthly quota.
    QuotaExceeded,
    /// An input that is no request: its dead letter.
    InputRejected,
    /// A policy put in force (at start-up or on reload).
    PolicyLoaded,
    /// A policy edit refused; the last good one stays in force.
    PolicyRejected,
    /// Files back at the version in force: the rejected edit withdrawn.
    PolicyRestored,
    /// A reviewer's verdict: accepted (the request's final decision) or
    /// refused; or a review that timed out.
    Review,
    /// A revoke command: accepted (grants withdrawn) or refused.
    Revocation,
    /// A grant withdrawn because the policy in force no longer allows it.
    PolicyRevocation,
    /// A data host's usage report: accepted (flagged when beyond its
    /// grant) or refused.
    UsageReport,
    /// The operator's revenue this year passed its permitted cap (once a
    /// year): charges go on, the excess is to be deducted next period.
    RevenueCapExceeded,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Decision => "decision",
            EventType::QuotaExceeded => "quota_exceeded",
            EventType::InputRejected => "input_rejected",
            EventType::PolicyLoaded => "policy_loaded",
            EventType::PolicyRejected => "policy_rejected",
            EventType::PolicyRestored => "policy_restored",
            EventType::Review => "review",
            EventType::Revocation => "revocation",
            EventType::PolicyRevocation => "policy_revocation",
            EventType::UsageReport => "usage_report",
            EventType::RevenueCapExceeded => "revenue_cap_exceeded",
        }
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
