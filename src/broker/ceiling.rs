//! The crypto ceiling: `tollgate loadgen`'s second baseline. The same loop,
//! consumer and producer as the pass-through, plus exactly the
//! cryptography no design of tollgate can skip — each request's token
//! verified (signature and claims, as `auth::Verifier` does for tollgate,
//! without its cache: every token in a load is new) and one grant signed
//! per input — and nothing else: no policy, quota, store or audit.
//!
//! What must stay true: it really does that cryptography (a unit test
//! checks that forged tokens are counted as refused and every output grant
//! verifies), or tollgate would be measured against a second pass-through.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::{SigningKey, Verifier};
use crate::contract::GrantClaims;
use crate::kafka::{ConsumedMessage, OutgoingMessage, ProcessError, Processor};

/// What a ceiling run did, counted, so a report can show it did the work.
#[derive(Debug, Default)]
pub struct CeilingCounts {
    pub verified: AtomicU64,
    pub refused: AtomicU64,
    pub signed: AtomicU64,
}

pub struct CryptoCeiling {
    verifier: Verifier,
    signer: SigningKey,
    /// The topics tollgate writes per input: decision, audit event, usage
    /// (what loadgen reads first, the decision, is the input copied).
    outputs: [String; 3],
    pub counts: CeilingCounts,
}

/// Only the token of a request; the rest of the JSON is skipped unread.
#[derive(serde::Deserialize)]
struct TokenOnly<'a> {
    #[serde(borrow)]
    token: Option<&'a str>,
}

impl CryptoCeiling {
    /// `verifier`: the identity provider's key, as tollgate trusts it (build
    /// it without a token cache); `signer`: a grant key of the same type.
    pub fn new(verifier: Verifier, signer: SigningKey, outputs: [String; 3]) -> Self {
        CryptoCeiling { verifier, signer, outputs, counts: CeilingCounts::default() }
    }

    /// The subject of a request whose token verifies.
    fn verify(&self, msg: &ConsumedMessage) -> Option<String> {
        let token = serde_json::from_slice::<TokenOnly<'_>>(&msg.payload).ok()?.token?;
        match self.verifier.verify(token) {
            Ok(p) => {
                self.counts.verified.fetch_add(1, Ordering::Relaxed);
                Some(p.subject)
            }
            Err(_) => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A grant the size tollgate signs, for `subject`.
    fn grant(&self, subject: &str, n: u64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = GrantClaims {
            iss: "tollgate".into(),
            sub: subject.to_owned(),
            aud: "11610100MB00014076".into(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            request_id: format!("ceiling-{n}"),
            dataset: "GX-610100-TOUR-0001".into(),
            scenario: "smart-tourism".into(),
            operation: "query".into(),
            obligations: vec!["log_access".into()],
            policy_version: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        };
        self.counts.signed.fetch_add(1, Ordering::Relaxed);
        self.signer.sign(&claims)
    }
}

impl Processor for CryptoCeiling {
    /// Each input's verified subject (None: no token, or it did not verify).
    type Prepared = Vec<Option<String>>;

    /// On the loop's blocking thread and a second one, as tollgate
    /// verifies its tokens (`prepare.rs`).
    fn prepare(&self, msgs: &[ConsumedMessage]) -> Self::Prepared {
        super::on_two_threads(msgs.iter().collect(), |m| self.verify(m))
    }

    async fn process_batch(
        &self,
        msgs: &[ConsumedMessage],
        subjects: Self::Prepared,
    ) -> Result<Vec<Vec<OutgoingMessage>>, ProcessError> {
        // Signed on two threads, as tollgate signs a large batch's grants (`finish.rs`).
        Ok(super::on_two_threads(msgs.iter().zip(subjects).collect(), |(msg, subject)| {
            let key = msg.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            let grant = self.grant(subject.as_deref().unwrap_or("unauthenticated"), msg.offset as u64);
            let copy = String::from_utf8_lossy(&msg.payload).into_owned();
            // The decision topic carries the input (loadgen times each
            // request by its id there); the grant goes on the third.
            let payloads = [copy.clone(), copy, grant];
            (self.outputs.iter().zip(payloads))
                .map(|(topic, payload)| OutgoingMessage {
                    topic: topic.clone(),
                    key: key.clone(),
                    payload,
                    headers: vec![],
                })
                .collect()
        }))
    }

    fn refused(&self, _: &ConsumedMessage, output: &OutgoingMessage, _: &str, _: bool) -> OutgoingMessage {
        emptied(output)
    }
}

/// A baseline has no dead-letter topic: an output the broker refuses
/// becomes an empty message on its topic, so a measured run still ends.
pub fn emptied(output: &OutgoingMessage) -> OutgoingMessage {
    OutgoingMessage { topic: output.topic.clone(), key: output.key.clone(), payload: String::new(), headers: vec![] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;

    fn input(offset: i64, payload: serde_json::Value) -> ConsumedMessage {
        ConsumedMessage {
            topic: "requests".into(),
            partition: 0,
            offset,
            key: Some(b"k".to_vec()),
            payload: payload.to_string().into_bytes(),
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn the_ceiling_verifies_every_token_and_signs_a_grant_that_verifies_for_each_input() {
        let (idp, forger, grants) =
            (SigningKey::generate("idp"), SigningKey::generate("idp"), SigningKey::generate("g"));
        let verifier = Verifier::for_ed25519(&idp.public(), "iss", "tollgate").without_cache();
        let ceiling = CryptoCeiling::new(verifier, grants.clone(), ["d".into(), "a".into(), "u".into()]);
        let token = |key: &SigningKey| key.sign(&Claims::new("91610131MA6TG1L5X1", "iss", "tollgate", 600));
        let msgs = vec![
            input(0, serde_json::json!({"token": token(&idp)})),
            input(1, serde_json::json!({"token": token(&forger)})),
        ];
        let prepared = ceiling.prepare(&msgs);
        assert_eq!(prepared, [Some("91610131MA6TG1L5X1".to_owned()), None], "a forged token does not verify");
        let out = ceiling.process_batch(&msgs, prepared).await.unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(serde_json::json!({"keys": [grants.public().to_jwk()]})).unwrap();
        let now = chrono::Utc::now().timestamp();
        for outputs in &out {
            assert_eq!(outputs.len(), 3);
            let check = crate::auth::grant::GrantCheck::default();
            assert!(crate::auth::grant::verify_grant(&outputs[2].payload, &jwks, &check, now).is_ok(), "signed");
        }
        let c = &ceiling.counts;
        let counts = [&c.verified, &c.refused, &c.signed].map(|a| a.load(Ordering::Relaxed));
        assert_eq!(counts, [1, 1, 2]);
    }
}
