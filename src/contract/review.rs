//! Review: a data holder department's verdict on a request the policy sent
//! to review (in, `tollgate.reviews`), and what the final decision says
//! about it.

use serde::{Deserialize, Serialize};

pub const REVIEW_SCHEMA: &str = "tollgate.review/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

/// `tollgate.review/v1`: a reviewer's verdict on a pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewVerdict {
    pub schema: String,
    /// The pending request (its `request_id`).
    pub request_id: String,
    pub verdict: Verdict,
    /// Why; required to reject, and sent to the requester.
    #[serde(default)]
    pub comment: String,
    /// The reviewer's JWT (`reviewer` role, organisation = the dataset's
    /// holder); or an `authorization: Bearer` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The review a final decision records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewNote {
    /// The reviewer (the token's `name`, else its subject) and organisation.
    pub reviewer: String,
    pub organisation: String,
    pub verdict: Verdict,
    pub comment: String,
    pub reviewed_at: chrono::DateTime<chrono::Utc>,
}
