//! Access request — in, `tollgate.requests`.

use serde::{Deserialize, Serialize};

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
