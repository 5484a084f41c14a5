//! Usage record — out, `tollgate.usage`, one per approval.

use serde::{Deserialize, Serialize};

use super::{Basis, Operation, PurposeClass, Quota, Reason, Reported};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One per approved request.
    Call,
    /// Per record in `volume.records`.
    Record,
    /// Per started MiB of `volume.bytes`.
    Megabyte,
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
    pub unit: Unit,
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
    /// `approval` (written when the request was approved) or `report` (a
    /// data host's report of what it served); absent in records written
    /// before reports existed: approval.
    #[serde(default)]
    pub basis: Basis,
    /// A reported record's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Reported>,
    /// What a report exceeded (`usage.exceeds_grant`): recorded and
    /// charged all the same, flagged for operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Reason>,
}
