//! Audit chains: each request partition has its own (written only by the
//! partition's owner), and each instance has one for its policy events.

use std::fmt;

/// The chain an audit event joins. Its text (`tollgate.requests/3`,
/// `policy/<instance>`) is the `chain` field of the event and its key on
/// the audit topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChainId {
    /// A request partition's chain: `<topic>/<partition>`.
    Partition { topic: String, partition: i32 },
    /// An instance's policy chain: `policy/<instance>`.
    Policy { instance: String },
}

/// What every policy chain's text starts with.
const POLICY_PREFIX: &str = "policy/";

impl ChainId {
    /// Reads a chain's text back (a policy chain, else a partition's).
    pub fn parse(text: &str) -> ChainId {
        if let Some(instance) = text.strip_prefix(POLICY_PREFIX) {
            return ChainId::Policy { instance: instance.to_owned() };
        }
        match text.rsplit_once('/').and_then(|(t, p)| Some((t, p.parse().ok()?))) {
            Some((topic, partition)) => ChainId::Partition { topic: topic.to_owned(), partition },
            None => ChainId::Policy { instance: text.to_owned() },
        }
    }

    pub fn is_policy(&self) -> bool {
        matches!(self, ChainId::Policy { .. })
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainId::Partition { topic, partition } => write!(f, "{topic}/{partition}"),
            ChainId::Policy { instance } => write!(f, "{POLICY_PREFIX}{instance}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_read_back_what_they_write() {
        for id in [
            ChainId::Partition { topic: "tollgate.requests".into(), partition: 3 },
            ChainId::Policy { instance: "node-1".into() },
        ] {
            assert_eq!(ChainId::parse(&id.to_string()), id);
        }
        assert!(ChainId::parse("policy/a/b").is_policy());
    }
}
