//! The hash-chained audit trail.
//!
//! `hash` = hex sha256 of the canonical encoding of every other field of the
//! event: JSON with object keys sorted by byte order at every level, no
//! insignificant white space, strings escaped as serde_json escapes them.
//! Anyone holding the events (from the topic or the database) can re-verify a
//! chain without tollgate; docs/contract.md shows how in a few lines of Python.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::auth::{PublicKey, SigningKey};
use crate::contract::{AuditEvent, CHECKPOINT_SCHEMA, Checkpoint};

/// `prev_hash` of the first event of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical bytes of a JSON value: sorted keys, compact.
pub fn canonical(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out).expect("writing to a Vec does not fail");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// The canonical encoding of `value` written straight into `out` (a
/// hasher, when sealing: no intermediate string, no allocation per key).
/// Keys are sorted here whatever order the map keeps them in, so enabling
/// serde_json's `preserve_order` anywhere in the build cannot change a hash.
fn write_canonical(value: &serde_json::Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.write_all(b"{")?;
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_canonical(&map[k], out)?;
            }
            out.write_all(b"}")
        }
        serde_json::Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(v, out)?;
            }
            out.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(out, scalar)?),
    }
}

/// The hash an event must carry, computed from all its other fields.
pub fn compute_hash(event: &AuditEvent) -> String {
    let mut value = serde_json::to_value(event).expect("audit events serialise");
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("hash");
    }
    let mut hasher = Sha256::new();
    write_canonical(&value, &mut hasher).expect("hashing does not fail");
    hex::encode(hasher.finalize())
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
    #[error("checkpoint {chain} seq {seq}: {why} (forged or altered checkpoint)")]
    ForgedCheckpoint { chain: String, seq: u64, why: String },
    #[error(
        "chain {chain}: a signed checkpoint says it reached seq {checkpoint}, but it ends at seq {reached} (cut tail)"
    )]
    CutTail { chain: String, checkpoint: u64, reached: u64 },
    #[error(
        "chain {chain}: a signed checkpoint says it reached seq {checkpoint}, but the chain is missing (removed chain)"
    )]
    ChainRemoved { chain: String, checkpoint: u64 },
    #[error("chain {chain} seq {seq}: the event differs from the one a signed checkpoint certified (forked chain)")]
    Forked { chain: String, seq: u64 },
    #[error(
        "checkpoint {chain} seq {seq}: the chain's previous checkpoint, at seq {previous}, is missing (dropped checkpoint)"
    )]
    DroppedCheckpoint { chain: String, seq: u64, previous: u64 },
    #[error("{record}: no audit event records it (dropped record)")]
    Unaudited { record: String },
}

/// What the trail records, as the store's records are held to it: a
/// decision's or usage report's input digest must be some event's. Built
/// one event at a time, holding 16 bytes per event (the first half of a
/// sha256 of the digest: finding two inputs that share it takes ~2^64
/// tries), so a trail of years fits in memory where its events would not.
#[derive(Debug, Default)]
pub struct Audited {
    keys: Vec<[u8; 16]>,
}

fn digest_key(digest: &str) -> [u8; 16] {
    let full = Sha256::digest(digest.as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&full[..16]);
    key
}

impl Audited {
    pub fn add(&mut self, event: &AuditEvent) {
        self.keys.push(digest_key(&event.request_digest));
    }

    /// Every event added: now the records can be held to it.
    pub fn sorted(mut self) -> Recorded {
        self.keys.sort_unstable();
        self.keys.dedup();
        Recorded { keys: self.keys }
    }
}

/// [`Audited`] once every event was added, sorted for lookups.
#[derive(Debug)]
pub struct Recorded {
    keys: Vec<[u8; 16]>,
}

impl Recorded {
    fn records(&self, digest: &str) -> bool {
        self.keys.binary_search(&digest_key(digest)).is_ok()
    }

    /// The decision on `request_id`, whose input had `digest`.
    pub fn decision(&self, request_id: &str, digest: &str) -> Result<(), ChainError> {
        match self.records(digest) {
            true => Ok(()),
            false => Err(ChainError::Unaudited { record: format!("the decision on request {request_id}") }),
        }
    }

    /// The usage report `report_id`, whose input had `digest`.
    pub fn report(&self, report_id: &str, digest: &str) -> Result<(), ChainError> {
        match self.records(digest) {
            true => Ok(()),
            false => Err(ChainError::Unaudited { record: format!("the usage report {report_id}") }),
        }
    }
}

impl ChainError {
    /// A usage record of `request_id`, whose decision (and so its audit
    /// event) is missing.
    pub fn usage_without_decision(request_id: &str) -> Self {
        ChainError::Unaudited { record: format!("the usage record of request {request_id} (its decision is missing)") }
    }
}

/// The bytes a checkpoint's signature covers: the canonical JSON of every
/// other field.
pub fn checkpoint_signing_bytes(c: &Checkpoint) -> String {
    let mut value = serde_json::to_value(c).expect("checkpoints serialise");
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("signature");
    }
    canonical(&value)
}

/// A checkpoint of `chain` at (`seq`, `hash`), after the chain's previous
/// checkpoint at `previous_seq`, signed with `key`.
pub fn sign_checkpoint(
    key: &SigningKey,
    instance: &str,
    (chain, seq, hash): (&str, u64, &str),
    previous_seq: u64,
    created_at: chrono::DateTime<chrono::Utc>,
) -> Checkpoint {
    let mut c = Checkpoint {
        schema: CHECKPOINT_SCHEMA.into(),
        chain: chain.to_owned(),
        seq,
        hash: hash.to_owned(),
        previous_seq,
        created_at,
        instance: instance.to_owned(),
        kid: key.kid.clone(),
        signature: String::new(),
    };
    c.signature = key.sign_raw(checkpoint_signing_bytes(&c).as_bytes());
    c
}

/// What the checkpoints showed, per chain: the latest checkpointed seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    pub verified: usize,
    pub latest: BTreeMap<String, u64>,
}

/// Holds verified chains to their signed checkpoints: each signature must
/// be a known audit key's, each chain must reach its latest checkpoint with
/// the certified event at every checkpointed position, and a chain's
/// checkpoints must follow one another without one missing. `events` are
/// the events `report` came from.
pub fn verify_checkpoints<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
    report: &VerifyReport,
    checkpoints: &[Checkpoint],
    keys: &BTreeMap<String, PublicKey>,
) -> Result<CheckpointReport, ChainError> {
    let out = hold_checkpoints(report, checkpoints, keys)?;
    let certified = Certified::new(checkpoints);
    events.into_iter().try_for_each(|e| certified.check(e))?;
    Ok(out)
}

/// [`verify_checkpoints`] but for the events themselves, which
/// [`Certified`] checks as they are read: signatures, order, and that each
/// checkpointed chain reached its checkpoint.
pub fn hold_checkpoints(
    report: &VerifyReport,
    checkpoints: &[Checkpoint],
    keys: &BTreeMap<String, PublicKey>,
) -> Result<CheckpointReport, ChainError> {
    let mut sorted: Vec<&Checkpoint> = checkpoints.iter().collect();
    sorted.sort_by(|a, b| (&a.chain, a.seq).cmp(&(&b.chain, b.seq)));
    sorted.dedup_by(|a, b| a.chain == b.chain && a.seq == b.seq && a.signature == b.signature);
    let mut out = CheckpointReport::default();
    for c in &sorted {
        check_signature(c, keys)?;
        let forged = |why: &str| ChainError::ForgedCheckpoint { chain: c.chain.clone(), seq: c.seq, why: why.into() };
        let previous = out.latest.get(&c.chain).copied().unwrap_or(0);
        if previous == c.seq {
            return Err(forged("two different checkpoints of one position"));
        }
        if c.previous_seq != previous {
            return Err(ChainError::DroppedCheckpoint { chain: c.chain.clone(), seq: c.seq, previous: c.previous_seq });
        }
        match report.chains.get(&c.chain) {
            None => return Err(ChainError::ChainRemoved { chain: c.chain.clone(), checkpoint: c.seq }),
            Some((reached, _)) if *reached < c.seq => {
                return Err(ChainError::CutTail { chain: c.chain.clone(), checkpoint: c.seq, reached: *reached });
            }
            Some(_) => {}
        }
        out.latest.insert(c.chain.clone(), c.seq);
        out.verified += 1;
    }
    Ok(out)
}

/// The positions signed checkpoints certify, and the hash each certified:
/// an event read at one of them must carry that hash. (Two checkpoints of
/// one position with different hashes are refused by [`hold_checkpoints`].)
pub struct Certified(BTreeMap<String, BTreeMap<u64, String>>);

impl Certified {
    pub fn new(checkpoints: &[Checkpoint]) -> Self {
        let mut by_chain: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for c in checkpoints {
            by_chain.entry(c.chain.clone()).or_default().insert(c.seq, c.hash.clone());
        }
        Certified(by_chain)
    }

    pub fn check(&self, e: &AuditEvent) -> Result<(), ChainError> {
        match self.0.get(&e.chain).and_then(|chain| chain.get(&e.seq)) {
            Some(hash) if *hash != e.hash => Err(ChainError::Forked { chain: e.chain.clone(), seq: e.seq }),
            _ => Ok(()),
        }
    }
}

fn check_signature(c: &Checkpoint, keys: &BTreeMap<String, PublicKey>) -> Result<(), ChainError> {
    let forged = |why: String| ChainError::ForgedCheckpoint { chain: c.chain.clone(), seq: c.seq, why };
    let key = keys.get(&c.kid).ok_or_else(|| forged(format!("signed with unknown audit key {}", c.kid)))?;
    if key.verify_raw(checkpoint_signing_bytes(c).as_bytes(), &c.signature) {
        Ok(())
    } else {
        Err(forged("the signature does not verify".into()))
    }
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
    verify_anchored(events, &std::collections::BTreeSet::new())
}

/// [`verify`], where a chain may also start at a position in `anchors`
/// (`(chain, seq)` of signed checkpoints): what `audit prune` leaves. The
/// event there must then be the one its checkpoint certified, which
/// [`verify_checkpoints`] holds it to.
pub fn verify_anchored<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
    anchors: &std::collections::BTreeSet<(String, u64)>,
) -> Result<VerifyReport, ChainError> {
    let mut chains = ChainVerifier::for_topic(anchors);
    events.into_iter().try_for_each(|e| chains.push(e))?;
    Ok(chains.finish())
}

/// Verifies a trail one event at a time, in the order it is read (each
/// chain in sequence order), holding each chain's head — and, read from a
/// topic, where identical re-publications appear behind a chain's head, the
/// hash of every position seen.
pub struct ChainVerifier<'a> {
    anchors: &'a std::collections::BTreeSet<(String, u64)>,
    report: VerifyReport,
    /// `None` where a position cannot appear twice (the database's primary
    /// key): a repeated one is then out of order, as any other.
    seen: Option<BTreeMap<(String, u64), String>>,
}

impl<'a> ChainVerifier<'a> {
    /// For events read from the audit topic (at-least-once: identical
    /// copies are counted and skipped).
    pub fn for_topic(anchors: &'a std::collections::BTreeSet<(String, u64)>) -> Self {
        ChainVerifier { anchors, report: VerifyReport::default(), seen: Some(BTreeMap::new()) }
    }

    /// For events read from the database, chain by chain in order: memory
    /// does not grow with the chains' length.
    pub fn for_database(anchors: &'a std::collections::BTreeSet<(String, u64)>) -> Self {
        ChainVerifier { anchors, report: VerifyReport::default(), seen: None }
    }

    pub fn push(&mut self, e: &AuditEvent) -> Result<(), ChainError> {
        if compute_hash(e) != e.hash {
            return Err(ChainError::Tampered { chain: e.chain.clone(), seq: e.seq });
        }
        if let Some(h) = self.seen.as_ref().and_then(|seen| seen.get(&(e.chain.clone(), e.seq))) {
            if *h == e.hash {
                self.report.duplicates += 1;
                return Ok(());
            }
            return Err(ChainError::Conflict { chain: e.chain.clone(), seq: e.seq });
        }
        let (expected, prev_hash) = match self.report.chains.get(&e.chain) {
            Some((n, h)) => (n + 1, h.as_str()),
            // A pruned chain: its first event is a checkpointed one.
            None if e.seq > 1 && self.anchors.contains(&(e.chain.clone(), e.seq)) => (e.seq, e.prev_hash.as_str()),
            None => (1, GENESIS),
        };
        if e.seq != expected {
            return Err(ChainError::Gap { chain: e.chain.clone(), expected, found: e.seq });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { chain: e.chain.clone(), seq: e.seq });
        }
        if let Some(seen) = self.seen.as_mut() {
            seen.insert((e.chain.clone(), e.seq), e.hash.clone());
        }
        match self.report.chains.get_mut(&e.chain) {
            Some(head) => *head = (e.seq, e.hash.clone()),
            None => drop(self.report.chains.insert(e.chain.clone(), (e.seq, e.hash.clone()))),
        }
        Ok(())
    }

    /// Events checked per chain, each chain's head, and copies skipped.
    pub fn finish(self) -> VerifyReport {
        self.report
    }
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
    fn a_decision_or_usage_report_without_its_audit_event_is_named() {
        let mut audited = Audited::default();
        chain(3).iter().for_each(|e| audited.add(e));
        let audited = audited.sorted();
        let digest = |n: u32| format!("{n:064}");
        audited.decision("r-1", &digest(1)).expect("audited");
        audited.report("rep-1", &digest(0)).expect("audited");
        let err = audited.report("rep-9", &digest(9)).unwrap_err().to_string();
        assert!(err.contains("the usage report rep-9") && err.contains("dropped record"), "{err}");
        let err = audited.decision("r-8", &digest(8)).unwrap_err().to_string();
        assert!(err.contains("the decision on request r-8"), "{err}");
        // Held by digest, not by request id.
        assert!(audited.decision("r-1", &digest(7)).is_err());
    }

    #[test]
    fn the_database_verifier_holds_only_chain_heads_and_refuses_a_repeated_position() {
        let events = chain(4);
        let anchors = std::collections::BTreeSet::new();
        let mut chains = ChainVerifier::for_database(&anchors);
        events.iter().try_for_each(|e| chains.push(e)).unwrap();
        assert!(chains.seen.is_none());
        // What the topic's verifier skips as a re-publication cannot come
        // from the database, whose rows are unique by position.
        let err = chains.push(&events[1]).unwrap_err();
        assert_eq!(err, ChainError::Gap { chain: events[1].chain.clone(), expected: 5, found: 2 });
        assert_eq!(chains.finish().chains[&events[0].chain], (4, events[3].hash.clone()));
        let mut repeated = events.clone();
        repeated.insert(3, events[1].clone());
        assert_eq!(verify(&repeated).unwrap().duplicates, 1);
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

    fn checkpointed(events: &[AuditEvent], at: &[u64], key: &SigningKey) -> Vec<Checkpoint> {
        let mut previous = 0;
        at.iter()
            .map(|&seq| {
                let e = &events[seq as usize - 1];
                let c = sign_checkpoint(key, "i1", (&e.chain, e.seq, &e.hash), previous, e.occurred_at);
                previous = seq;
                c
            })
            .collect()
    }

    fn check(
        events: &[AuditEvent],
        checkpoints: &[Checkpoint],
        key: &SigningKey,
    ) -> Result<CheckpointReport, ChainError> {
        let report = verify(events)?;
        let keys = BTreeMap::from([(key.kid.clone(), key.public())]);
        verify_checkpoints(events, &report, checkpoints, &keys)
    }

    #[test]
    fn checkpoints_name_a_cut_tail_a_removed_chain_a_fork_a_forgery_and_a_dropped_checkpoint() {
        let key = SigningKey::generate("audit-1");
        let events = chain(6);
        let cps = checkpointed(&events, &[2, 5], &key);
        let ok = check(&events, &cps, &key).unwrap();
        assert_eq!((ok.verified, ok.latest["tollgate.requests/0"]), (2, 5));

        // The last two events deleted: the chain alone still verifies.
        let cut = &events[..4];
        assert!(verify(cut).is_ok());
        assert_eq!(
            check(cut, &cps, &key).unwrap_err(),
            ChainError::CutTail { chain: "tollgate.requests/0".into(), checkpoint: 5, reached: 4 }
        );
        assert!(matches!(check(&[], &cps, &key).unwrap_err(), ChainError::ChainRemoved { checkpoint: 2, .. }));

        // The whole chain rewritten from seq 3 on, every hash recomputed.
        let mut forked = events[..2].to_vec();
        for n in 2..6 {
            let prev = forked.last().map(|e| (e.seq, e.hash.clone()));
            let mut d = draft(n + 100);
            d.chain = "tollgate.requests/0".into();
            forked.push(seal(d, prev.as_ref().map(|(s, h)| (*s, h.as_str()))));
        }
        assert_eq!(
            check(&forked, &cps, &key).unwrap_err(),
            ChainError::Forked { chain: "tollgate.requests/0".into(), seq: 5 }
        );

        let mut forged = cps.clone();
        forged[1].seq = 6;
        assert!(matches!(check(&events, &forged, &key).unwrap_err(), ChainError::ForgedCheckpoint { seq: 6, .. }));
        let stranger = SigningKey::generate("audit-1");
        let by_stranger = checkpointed(&events, &[2, 5], &stranger);
        assert!(matches!(check(&events, &by_stranger, &key).unwrap_err(), ChainError::ForgedCheckpoint { .. }));

        assert_eq!(
            check(&events, &cps[1..], &key).unwrap_err(),
            ChainError::DroppedCheckpoint { chain: "tollgate.requests/0".into(), seq: 5, previous: 2 }
        );
    }

    #[test]
    fn a_chain_may_start_at_a_signed_checkpoint_and_nowhere_else() {
        let key = SigningKey::generate("audit-1");
        let events = chain(6);
        let cps = checkpointed(&events, &[2, 4], &key);
        let anchors = cps.iter().map(|c| (c.chain.clone(), c.seq)).collect();
        let pruned = &events[3..];
        let report = verify_anchored(pruned, &anchors).unwrap();
        let keys = BTreeMap::from([(key.kid.clone(), key.public())]);
        assert_eq!(verify_checkpoints(pruned, &report, &cps, &keys).unwrap().verified, 2);
        // Cut anywhere else, the gap shows.
        assert!(matches!(
            verify_anchored(&events[2..], &anchors).unwrap_err(),
            ChainError::Gap { expected: 1, found: 3, .. }
        ));
        // The anchor event replaced: the checkpoint names it.
        let mut forged = pruned.to_vec();
        forged[0].outcome = "changed".into();
        forged[0].hash = compute_hash(&forged[0]);
        forged[1].prev_hash = forged[0].hash.clone();
        forged[1].hash = compute_hash(&forged[1]);
        forged[2].prev_hash = forged[1].hash.clone();
        forged[2].hash = compute_hash(&forged[2]);
        let report = verify_anchored(&forged, &anchors).unwrap();
        assert!(matches!(
            verify_checkpoints(&forged, &report, &cps, &keys).unwrap_err(),
            ChainError::Forked { seq: 4, .. }
        ));
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
