//! Dead letter — out, `tollgate.dlq`.

use serde::{Deserialize, Serialize};

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
