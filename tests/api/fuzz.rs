//! Fuzzing the two parsers that face the outside — message decoding and
//! token verification — and the decision on whatever decodes. Random bytes
//! and mutations of valid inputs must never panic, hang or be accepted by
//! accident: decoding gives a request or a stable dead-letter code, a
//! mutated token either fails or (a mutation base64 cannot see) verifies to
//! the same principal, and every decodable request gets a decision.
//!
//! `cargo test` runs a few hundred cases per property; `tests/fuzz/run
//! SECONDS` runs them for as long as it is given, with fresh seeds. A failure
//! prints the minimal input and is replayed first on later runs (proptest's
//! regression file next to this one).

use std::sync::OnceLock;

use proptest::prelude::*;
use tollgate::auth::{AuthError, Claims, SigningKey, Verifier};
use tollgate::decide::{self, DecisionInput};
use tollgate::policy::Policy;

use crate::helpers::{ISSUER, TRAVEL, repo_policies};

const MAX_BYTES: usize = 64 * 1024;

/// Dead-letter codes decoding may give; anything else is a bug.
const DECODE_CODES: [&str; 6] = [
    "input.too_large",
    "input.invalid_utf8",
    "input.invalid_json",
    "input.missing_schema",
    "input.unsupported_schema",
    "input.invalid_request",
];

fn valid_request() -> String {
    serde_json::json!({
        "schema": "tollgate.access_request/v1",
        "request_id": "fz-1",
        "dataset": "GX-610100-TOUR-0001",
        "operation": "query",
        "scenario": "smart-tourism",
        "purpose": {"class": "industry", "statement": "fuzz"},
        "volume": {"records": 10},
        "window": {"not_before": "2026-01-01T00:00:00Z", "not_after": "2036-01-01T00:00:00Z"},
        "fields": ["name", "phone"]
    })
    .to_string()
}

struct Keys {
    verifier: Verifier,
    token: String,
    policy: Policy,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let idp = SigningKey::generate("fuzz-idp");
        let verifier = Verifier::for_ed25519(&idp.public(), ISSUER, "tollgate");
        let token = idp.sign(&Claims::new(TRAVEL, ISSUER, "tollgate", 3600).with_roles(&["data_user"]));
        let policy = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Policy::load(&repo_policies()))
            .expect("shipped policy loads");
        Keys { verifier, token, policy }
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Flip(i, b) if !bytes.is_empty() => bytes[i % len] ^= b.max(1),
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            Mutation::Duplicate(i, n) if !bytes.is_empty() => {
                let start = i % len;
                let chunk: Vec<u8> = bytes[start..(start + n).min(bytes.len())].to_vec();
                bytes.splice(start..start, chunk);
            }
            _ => {}
        }
    }
    bytes
}

/// Decodes, and decides what decodes: nothing may panic, and a failure must
/// carry a known code.
fn decode_and_decide(payload: &[u8], header: Option<&[u8]>) {
    let k = keys();
    match decide::decode(payload, header, MAX_BYTES) {
        Err(rejection) => assert!(DECODE_CODES.contains(&rejection.code), "unknown code {}", rejection.code),
        Ok(decoded) => {
            let identity = match decoded.token.as_deref() {
                Some(t) => k.verifier.verify(t),
                None => Err(AuthError::Missing),
            };
            let eval = decide::evaluate(&DecisionInput {
                request: &decoded.request,
                identity: identity.as_ref(),
                policy: &k.policy,
                used: 0,
                now: chrono::Utc::now(),
                grant_ttl_secs: 3600,
                reviewed: false,
            });
            // A denial always says why.
            if eval.outcome == tollgate::contract::Outcome::Denied {
                assert!(!eval.reasons.is_empty());
            }
        }
    }
}

/// 256 per property under `cargo test`; tests/fuzz/run sets PROPTEST_CASES.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_decoder(payload in proptest::collection::vec(any::<u8>(), 0..512),
                                             header in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..128))) {
        decode_and_decide(&payload, header.as_deref());
    }

    #[test]
    fn mutated_requests_decode_to_a_request_or_a_stable_code(mutations in proptest::collection::vec(mutation(), 1..8),
                                                              with_token in any::<bool>()) {
        let mut v: serde_json::Value = serde_json::from_str(&valid_request()).unwrap();
        if with_token {
            v["token"] = keys().token.clone().into();
        }
        let bytes = mutate(v.to_string().into_bytes(), &mutations);
        decode_and_decide(&bytes, None);
    }

    #[test]
    fn arbitrary_text_is_never_a_valid_token(text in "\\PC{0,400}", dotted in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}") {
        let k = keys();
        prop_assert!(k.verifier.verify(&text).is_err());
        prop_assert!(k.verifier.verify(&dotted).is_err());
        let header = format!("Bearer {dotted}");
        decode_and_decide(valid_request().as_bytes(), Some(header.as_bytes()));
    }

    #[test]
    fn a_mutated_token_fails_or_names_the_same_principal(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let k = keys();
        let original = k.verifier.verify(&k.token).expect("the unmutated token verifies");
        let bytes = mutate(k.token.clone().into_bytes(), &mutations);
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        if let Ok(p) = k.verifier.verify(&text) {
            // Only a change base64 cannot see (padding bits) may pass.
            prop_assert_eq!(p, original);
        }
    }
}
