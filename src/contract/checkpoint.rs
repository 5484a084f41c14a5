//! Audit checkpoint — out, `tollgate.audit.checkpoints` (key: chain).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A signed statement that `chain` had reached `seq` with head `hash` at
/// `created_at`. A hash chain alone cannot show its tail was cut or the
/// whole chain removed; a checkpoint can: the chain must reach it.
///
/// `signature` is base64url (no padding) of the Ed25519 signature, by the
/// audit key `kid`, over the canonical JSON (the audit hash's encoding:
/// keys sorted, compact) of every other field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema: String,
    pub chain: String,
    pub seq: u64,
    pub hash: String,
    /// `seq` of the chain's previous checkpoint (0 for its first): a
    /// checkpoint dropped between two others leaves a gap.
    pub previous_seq: u64,
    pub created_at: DateTime<Utc>,
    /// The instance that signed it.
    pub instance: String,
    pub kid: String,
    pub signature: String,
}
