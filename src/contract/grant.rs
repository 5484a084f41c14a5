//! The claims of a grant token (EdDSA JWT): what data hosts check before
//! serving data. Part of the contract like the messages.

use serde::{Deserialize, Serialize};

/// Claims of a grant: what the data host checks before serving data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    pub iss: String,
    pub sub: String,
    /// The dataset holder that serves the data.
    pub aud: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub request_id: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub obligations: Vec<String>,
    pub policy_version: String,
}
