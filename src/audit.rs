//! The hash-chained audit trail.
//!
//! `hash` = hex sha256 of the canonical encoding of every other field of the
//! event: JSON with object keys sorted by byte order at every level, no
//! insignificant white space, strings escaped as serde_json escapes them.
//! Anyone holding the events (from the topic or the database) can re-verify a
//! chain without tollgate; the README shows how in a few lines of Python.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::contract::AuditEvent;

/// `prev_hash` of the first event of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical bytes of a JSON value: sorted keys, compact.
pub fn canonical(value: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The hash an event must carry, computed from all its other fields.
pub fn compute_hash(event: &AuditEvent) -> String {
    let mut value = serde_json::to_value(event).expect("audit events serialise");
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("hash");
    }
    hex::encode(Sha256::digest(canonical(&value).as_bytes()))
}

/// Places `event` after (`prev_seq`, `prev_hash`) and seals it.
pub fn seal(mut event: AuditEvent, prev: Option<(u64, &str)>) -> AuditEvent {
    let (seq, prev_hash) = match prev {
        Some((s, h)) => (s + 1, h.to_owned()),
        None => (1, GENESIS.to_owned()),
    };
    event.seq = seq;
    event.prev_hash = prev_hash;
    event.hash = compute_hash(&event);
    event
}

/// sha256 of raw input bytes, hex: audit events and logs carry this instead
/// of the input (which holds a bearer token).
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("chain {chain} seq {seq}: hash does not match the event's content (changed record)")]
    Tampered { chain: String, seq: u64 },
    #[error("chain {chain}: expected seq {expected} but found {found} (dropped or reordered record)")]
    Gap { chain: String, expected: u64, found: u64 },
    #[error("chain {chain} seq {seq}: prev_hash does not match the previous event's hash")]
    BrokenLink { chain: String, seq: u64 },
    #[error("chain {chain} seq {seq}: two different events with the same position")]
    Conflict { chain: String, seq: u64 },
    #[error("chain {chain} seq {seq}: the stored {column} column does not match the event (changed record)")]
    Column { chain: String, seq: u64, column: &'static str },
}

/// The columns an event is stored under (its chain position and hashes,
/// which new events are chained onto) must be the event's own.
pub fn check_columns(event: &AuditEvent, chain: &str, seq: i64, hash: &str, prev_hash: &str) -> Result<(), ChainError> {
    let column = if chain != event.chain {
        "chain"
    } else if u64::try_from(seq).ok() != Some(event.seq) {
        "seq"
    } else if hash != event.hash {
        "hash"
    } else if prev_hash != event.prev_hash {
        "prev_hash"
    } else {
        return Ok(());
    };
    Err(ChainError::Column { chain: event.chain.clone(), seq: event.seq, column })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked per chain, and its head hash.
    pub chains: BTreeMap<String, (u64, String)>,
    /// Exact re-publications skipped (at-least-once delivery repeats them).
    pub duplicates: u64,
}

/// Verifies events in the order they were read. Each chain must start at
/// seq 1 and continue without gaps; an event identical to one already seen
/// is a harmless re-publication.
pub fn verify<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> Result<VerifyReport, ChainError> {
    let mut report = VerifyReport::default();
    let mut seen: BTreeMap<(String, u64), String> = BTreeMap::new();
    for e in events {
        if compute_hash(e) != e.hash {
            return Err(ChainError::Tampered { chain: e.chain.clone(), seq: e.seq });
        }
        if let Some(h) = seen.get(&(e.chain.clone(), e.seq)) {
            if *h == e.hash {
                report.duplicates += 1;
                continue;
            }
            return Err(ChainError::Conflict { chain: e.chain.clone(), seq: e.seq });
        }
        let (expected, prev_hash) = match report.chains.get(&e.chain) {
            Some((n, h)) => (n + 1, h.as_str()),
            None => (1, GENESIS),
        };
        if e.seq != expected {
            return Err(ChainError::Gap { chain: e.chain.clone(), expected, found: e.seq });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { chain: e.chain.clone(), seq: e.seq });
        }
        seen.insert((e.chain.clone(), e.seq), e.hash.clone());
        report.chains.insert(e.chain.clone(), (e.seq, e.hash.clone()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{AUDIT_SCHEMA, Reason};

    fn draft(n: u32) -> AuditEvent {
        AuditEvent {
            schema: AUDIT_SCHEMA.into(),
            chain: "tollgate.requests/0".into(),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            event_type: crate::contract::EventType::Decision,
            actor: "91610131MA6TG1L5X1".into(),
            subject: "91610131MA6TG1L5X1".into(),
            resource: "GX-610100-TOUR-0001".into(),
            action: "query".into(),
            outcome: if n.is_multiple_of(2) { "approved" } else { "denied" }.into(),
            reasons: vec![Reason::new("policy.no_matching_rule", "none")],
            policy_version: "sha256:abc".into(),
            request_digest: format!("{n:064}"),
            occurred_at: chrono::DateTime::from_timestamp(1_760_000_000 + i64::from(n), 0).unwrap(),
            trace_id: "t".into(),
        }
    }

    fn chain(n: u32) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|e| (e.seq, e.hash.as_str()));
            let sealed = seal(draft(i), prev);
            out.push(sealed);
        }
        out
    }

    #[test]
    fn canonical_encoding_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"d": [3, {"z": 1, "y": "é"}], "c": null}});
        assert_eq!(canonical(&v), r#"{"a":{"c":null,"d":[3,{"y":"é","z":1}]},"b":1}"#);
    }

    #[test]
    fn intact_chain_verifies_and_duplicates_are_tolerated() {
        let mut events = chain(5);
        events.push(events[2].clone());
        let report = verify(&events).unwrap();
        assert_eq!(report.chains["tollgate.requests/0"].0, 5);
        assert_eq!(report.duplicates, 1);
    }

    #[test]
    fn changed_record_is_named() {
        let mut events = chain(5);
        events[3].outcome = "tampered".into();
        assert_eq!(verify(&events).unwrap_err(), ChainError::Tampered { chain: "tollgate.requests/0".into(), seq: 4 });
    }

    #[test]
    fn dropped_and_reordered_records_are_named() {
        let mut events = chain(5);
        events.remove(2);
        assert_eq!(
            verify(&events).unwrap_err(),
            ChainError::Gap { chain: "tollgate.requests/0".into(), expected: 3, found: 4 }
        );
        let mut events = chain(5);
        events.swap(1, 2);
        assert!(matches!(verify(&events).unwrap_err(), ChainError::Gap { expected: 2, found: 3, .. }));
    }

    #[test]
    fn rehashed_record_with_stale_link_is_found() {
        let mut events = chain(4);
        events[2].outcome = "changed".into();
        events[2].hash = compute_hash(&events[2]);
        assert_eq!(
            verify(&events).unwrap_err(),
            ChainError::BrokenLink { chain: "tollgate.requests/0".into(), seq: 4 }
        );
    }
}
