//! The wire types of the event contract (v1). Field names here are the
//! contract: the README documents them, and consumers outside this repository
//! parse them. Add fields only as optional; a breaking change needs a new
//! `schema` version.

use serde::{Deserialize, Serialize};

pub const REQUEST_SCHEMA: &str = "tollgate.access_request/v1";
pub const DECISION_SCHEMA: &str = "tollgate.decision/v1";
pub const AUDIT_SCHEMA: &str = "tollgate.audit/v1";
pub const USAGE_SCHEMA: &str = "tollgate.usage/v1";
pub const DEAD_LETTER_SCHEMA: &str = "tollgate.dead_letter/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Query,
    Download,
    ApiCall,
    ModelTraining,
    PrivacyCompute,
    Verification,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Query,
        Operation::Download,
        Operation::ApiCall,
        Operation::ModelTraining,
        Operation::PrivacyCompute,
        Operation::Verification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Query => "query",
            Operation::Download => "download",
            Operation::ApiCall => "api_call",
            Operation::ModelTraining => "model_training",
            Operation::PrivacyCompute => "privacy_compute",
            Operation::Verification => "verification",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurposeClass {
    PublicGovernance,
    PublicWelfare,
    Industry,
}

impl PurposeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            PurposeClass::PublicGovernance => "public_governance",
            PurposeClass::PublicWelfare => "public_welfare",
            PurposeClass::Industry => "industry",
        }
    }

    /// NDRC 2025: public governance and public-welfare use is free of charge.
    pub fn is_fee_exempt(self) -> bool {
        !matches!(self, PurposeClass::Industry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    pub class: PurposeClass,
    pub statement: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    #[serde(default)]
    pub records: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// An enterprise's request for access. Identity is *not* part of the body: it
/// comes from the verified token only, so there is deliberately no subject
/// field here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub schema: String,
    pub request_id: String,
    /// The requester's JWT; may instead come in an `authorization: Bearer`
    /// Kafka header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub dataset: String,
    pub operation: Operation,
    pub scenario: String,
    pub purpose: Purpose,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Denied,
    PendingReview,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::PendingReview => "pending_review",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

impl Reason {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Reason { code: code.to_owned(), message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// An EdDSA-signed JWT the enterprise shows the data host.
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub schema: String,
    pub decision_id: String,
    pub request_id: String,
    /// Empty when the token could not be verified: an unverified subject is
    /// never echoed as if it were an identity.
    pub subject: String,
    pub dataset: String,
    pub operation: Operation,
    pub scenario: String,
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub matched_rules: Vec<String>,
    pub obligations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    pub policy_version: String,
    pub decided_at: chrono::DateTime<chrono::Utc>,
    pub trace_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub schema: String,
    pub chain: String,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event_type: String,
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
    pub fn draft(chain: String, occurred_at: chrono::DateTime<chrono::Utc>, trace_id: String) -> AuditEvent {
        AuditEvent {
            schema: AUDIT_SCHEMA.into(),
            chain,
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            event_type: String::new(),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub schema: String,
    pub usage_id: String,
    pub request_id: String,
    pub decision_id: String,
    pub subject: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: Operation,
    pub purpose_class: PurposeClass,
    pub unit: crate::metering::Unit,
    pub quantity: u64,
    pub price_item: String,
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    pub fee_waived: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver_reason: Option<String>,
    /// Billing period, `YYYY-MM` in UTC.
    pub period: String,
    pub quota: Quota,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterError {
    pub code: String,
    pub message: String,
}

/// A dead letter carries the input it stands for, cut to a bounded size
/// (`service.dead_letter_max_bytes`): a letter must never be larger than
/// what the broker accepts, or the input it reports would be lost with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub schema: String,
    /// The original payload, base64 (it may not be UTF-8); its first bytes
    /// only when `truncated`.
    pub payload_base64: String,
    /// The original payload's length in bytes and sha256 (hex), whatever was
    /// cut from `payload_base64`.
    #[serde(default)]
    pub payload_bytes: u64,
    #[serde(default)]
    pub payload_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Original headers; values base64.
    pub headers: Vec<(String, String)>,
    /// Whether payload, key or headers were cut to fit the size limit.
    #[serde(default)]
    pub truncated: bool,
    pub error: DeadLetterError,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `output.refused`: the output the broker would not take, which this
    /// letter stands in for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_output: Option<RefusedOutput>,
    pub rejected_at: chrono::DateTime<chrono::Utc>,
}

/// An output the broker refused for good (too large, invalid, not
/// authorized): where it was going and what it was, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedOutput {
    pub topic: String,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}
