//! Decision — out, `tollgate.decisions`.

use serde::{Deserialize, Serialize};

use super::Operation;

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
    /// A final decision after review: the pending decision it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// A final decision after review: the reviewer's verdict (absent when
    /// the review timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<super::ReviewNote>,
}
