//! Usage report — in, `tollgate.usage_reports` (key: the grant's decision
//! id): what a data host actually served under a grant. tollgate answers
//! each on `tollgate.replies` and, when accepted, publishes a usage record
//! with `basis: report`.

use serde::{Deserialize, Serialize};

use super::{Operation, Unit};

pub const USAGE_REPORT_SCHEMA: &str = "tollgate.usage_report/v1";

/// `tollgate.usage_report/v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub schema: String,
    /// The host's idempotency key: the same report again changes nothing
    /// and gets the same reply.
    pub report_id: String,
    /// The grant served (its `jti`, the approval's decision id).
    pub decision_id: String,
    /// What was served; must be what the grant covers.
    pub dataset: String,
    pub operation: Operation,
    /// How much, in the unit of the dataset's price item.
    pub units: u64,
    pub unit: Unit,
    /// When it was served (UTC); the grant must have been live throughout.
    pub served_from: chrono::DateTime<chrono::Utc>,
    pub served_to: chrono::DateTime<chrono::Utc>,
    /// The host's JWT (`data_host` role, organisation = the dataset's
    /// holder, the grant's `aud`); or an `authorization: Bearer` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// On what a usage record charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Written at approval: the requested quantity, counted against the
    /// quota; charged when the price item charges at approval, else 0 fen.
    #[default]
    Approval,
    /// A data host's report of what it served: charged when the price item
    /// charges on report, else 0 fen (charged at approval already).
    Report,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Approval => "approval",
            Basis::Report => "report",
        }
    }
}

/// A reported record's report: which one and the time it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub report_id: String,
    /// The data host's organisation (USCC).
    pub host: String,
    pub served_from: chrono::DateTime<chrono::Utc>,
    pub served_to: chrono::DateTime<chrono::Utc>,
}
