//! Phase 2, the same whatever else the batch holds (so on two threads for a
//! large batch): the grant signed, the decision, usage record and audit
//! event built.

use chrono::{DateTime, Utc};

use super::draft::{Draft, Step};
use super::review::ReviewContext;
use super::{DecisionService, Tally, on_two_threads, rfc3339};
use crate::audit;
use crate::auth::Principal;
use crate::contract::GrantClaims;
use crate::contract::{
    AccessRequest, AuditEvent, Basis, DECISION_SCHEMA, Decision, EventType, Grant, Outcome, USAGE_SCHEMA, UsageRecord,
};
use crate::decide::impact::{Effects, ReplayInputs};
use crate::decide::{ChargeDraft, Evaluation};
use crate::policy::Policy;
use crate::store::{Commit, DecisionRow, GrantRow, Output, ReviewRow, Stream};

/// A decision's audit event type: a verdict's is `review`.
fn event_type_of(after_review: bool, reason_code: Option<&str>) -> EventType {
    match (after_review, reason_code) {
        (true, _) => EventType::Review,
        (false, Some("quota.exceeded")) => EventType::QuotaExceeded,
        (false, _) => EventType::Decision,
    }
}

/// A grant signed ahead of its decision (`DecisionService::presign`): the
/// claims and the token. Ed25519 signatures are deterministic, so when the
/// decision asks for the same claims this is exactly the token signing them
/// again would give.
pub(super) struct Presigned {
    claims: GrantClaims,
    token: String,
}

/// The subject, or `unauthenticated` when the token failed.
fn or_unauthenticated(subject: &str) -> String {
    if subject.is_empty() { "unauthenticated".into() } else { subject.to_owned() }
}

/// A grant's row, but for its expiry.
fn grant_row(policy: &Policy, request: &AccessRequest, principal: &Principal, decision_id: &str) -> GrantRow {
    GrantRow {
        decision_id: decision_id.to_owned(),
        request_id: request.request_id.clone(),
        subject: principal.subject.clone(),
        holder: policy.catalogue().datasets.get(&request.dataset).map(|d| d.holder.clone()).unwrap_or_default(),
        dataset: request.dataset.clone(),
        scenario: request.scenario.clone(),
        operation: request.operation.as_str().into(),
        policy_version: policy.version().to_owned(),
        expires_at: 0,
        probe: probe_of(principal, request),
    }
}

/// What a decision row takes from the request and the policy.
pub(super) fn decision_row(policy: &Policy, request: &AccessRequest) -> DecisionRow {
    DecisionRow {
        request_id: request.request_id.clone(),
        decision_id: String::new(),
        subject: String::new(),
        dataset: request.dataset.clone(),
        scenario: request.scenario.clone(),
        operation: request.operation.as_str().into(),
        outcome: String::new(),
        reason_code: None,
        policy_version: policy.version().to_owned(),
        request_digest: String::new(),
        decided_at: String::new(),
        inputs: None,
        effects: None,
    }
}

/// What a policy decision was decided from (None when no policy decided
/// or the token did not verify): `tollgate policy impact` replays it.
fn replay_inputs(
    principal: Option<&Principal>,
    request: &AccessRequest,
    replay: Option<(u64, bool)>,
) -> Option<String> {
    let ((used, reviewed), principal) = replay.zip(principal)?;
    Some(serde_json::to_string(&ReplayInputs::of(principal, request, used, reviewed)).expect("inputs serialise"))
}

/// What a grant's request is decided again with when the policy changes:
/// the verified principal and the request without its token.
pub(super) fn probe_of(principal: &Principal, request: &AccessRequest) -> String {
    let request = AccessRequest { token: None, ..request.clone() };
    serde_json::json!({ "principal": principal, "request": request }).to_string()
}

impl DecisionService {
    /// Phase 2: finishes every draft, on two threads for a large batch
    /// (signing a grant is the largest cost of a decision after the token
    /// check).
    pub(super) fn finish_drafts<'m>(&self, policy: &Policy, steps: Vec<Step<'m>>) -> Vec<Step<'m>> {
        let finish = |step: Step<'m>| match step {
            Step::Draft(d) => {
                let traceparent = d.origin.traceparent.clone();
                let (commit, tally) = self.finish_draft(policy, *d);
                Step::Commit(Box::new(commit), tally, traceparent)
            }
            other => other,
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            // The worker hands its other tasks over first, so acknowledgements
            // and the HTTP endpoint are not held up meanwhile.
            tokio::task::block_in_place(|| on_two_threads(steps, finish))
        } else {
            on_two_threads(steps, finish)
        }
    }

    /// A final decision after review has its id from the verdict
    /// (`review.rs`); an access request the one drawn while it was prepared;
    /// anything else a new one.
    fn decision_id_of(&self, review: Option<&ReviewContext>, drawn: Option<String>) -> String {
        review.map(|r| r.decision_id.clone()).or(drawn).unwrap_or_else(|| self.source.id().to_string())
    }

    /// The rest of a decision (phase 2), the same whatever else the batch
    /// holds, so drafts are finished on two threads: signs the grant and
    /// builds the decision, usage record and audit event.
    fn finish_draft(&self, policy: &Policy, d: Draft<'_>) -> (Commit, Tally) {
        let reply = d.review.as_ref().map(|r| self.verdict_reply(&d, &r.decision_id));
        let Draft { mut origin, request, subject, principal, eval, period, replayed, replay, review } = d;
        let (presigned, drawn) = (origin.presigned.take(), origin.decision_id.take());
        let (msg, now, trace_id) = (origin.msg, origin.now, origin.trace_id.as_str());
        let request = &request;
        let decision_id = self.decision_id_of(review.as_deref(), drawn);
        let grant = self.grant_for(policy, &eval, request, (&subject, &decision_id), now, presigned);
        let grant_row = grant.as_ref().zip(principal.as_ref()).map(|(g, p)| GrantRow {
            expires_at: g.expires_at.timestamp(),
            ..grant_row(policy, request, p, &decision_id)
        });
        let decision = Decision {
            schema: DECISION_SCHEMA.into(),
            decision_id: decision_id.clone(),
            request_id: request.request_id.clone(),
            subject: subject.clone(),
            dataset: request.dataset.clone(),
            operation: request.operation,
            scenario: request.scenario.clone(),
            outcome: eval.outcome,
            reasons: eval.reasons.clone(),
            matched_rules: eval.matched_rules.clone(),
            obligations: eval.obligations.clone(),
            grant,
            policy_version: policy.version().to_owned(),
            decided_at: now,
            trace_id: trace_id.to_owned(),
            supersedes: review.as_ref().map(|r| r.pending_decision_id.clone()),
            review: review.as_ref().map(|r| r.note.clone()),
        };
        let pending = (principal.as_ref().filter(|_| eval.outcome == Outcome::PendingReview))
            .map(|p| self.review_row(policy, request, p, &subject, &decision_id, now));
        let request_digest = audit::digest(&msg.payload);
        let reason_code = eval.reasons.first().map(|r| r.code.clone());
        let usage = eval.charge.as_ref().map(|c| self.usage_record(request, &subject, &decision_id, c, &period, now));
        let event_type = event_type_of(review.is_some(), reason_code.as_deref());
        let commit = Commit {
            idem_key: origin.idem_key.clone(),
            kind: "decision",
            decision: Some(DecisionRow {
                decision_id,
                subject: subject.clone(),
                outcome: eval.outcome.as_str().into(),
                reason_code,
                request_digest: request_digest.clone(),
                decided_at: rfc3339(now),
                inputs: replay_inputs(principal.as_ref(), request, replay),
                effects: Some(serde_json::to_string(&Effects::of(&eval)).expect("effects serialise")),
                ..decision_row(policy, request)
            }),
            messages: reply
                .flatten()
                .into_iter()
                .chain([Output {
                    stream: Stream::Decisions,
                    key: or_unauthenticated(&subject),
                    payload: serde_json::to_string(&decision).expect("decisions serialise"),
                }])
                .collect(),
            audit: AuditEvent {
                actor: review.as_ref().map_or_else(|| self.actor.clone(), |r| r.note.organisation.clone()),
                subject,
                resource: request.dataset.clone(),
                action: request.operation.as_str().into(),
                outcome: eval.outcome.as_str().into(),
                reasons: eval.reasons.clone(),
                policy_version: policy.version().to_owned(),
                request_digest,
                ..AuditEvent::draft(origin.chain.clone(), event_type, now, trace_id.to_owned())
            },
            usage,
            grant: grant_row,
            review: pending,
            supersedes: review.map(|_| request.request_id.clone()),
            created_at: rfc3339(now),
        };
        // Only drafted when this transaction found no outcome for the request.
        (commit, if replayed { Tally::Replayed } else { Tally::Decided(eval.outcome) })
    }

    /// The review a pending decision opens: who may close it and until when.
    fn review_row(
        &self,
        policy: &Policy,
        request: &AccessRequest,
        principal: &Principal,
        subject: &str,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> ReviewRow {
        ReviewRow {
            request_id: request.request_id.clone(),
            pending_decision_id: decision_id.to_owned(),
            subject: subject.to_owned(),
            holder: policy.catalogue().datasets.get(&request.dataset).map(|d| d.holder.clone()).unwrap_or_default(),
            dataset: request.dataset.clone(),
            scenario: request.scenario.clone(),
            operation: request.operation.as_str().into(),
            probe: probe_of(principal, request),
            created_at: now.timestamp(),
            deadline: now.timestamp().saturating_add(self.review_timeout_secs),
            state: "pending".into(),
            final_decision_id: None,
            reviewer: None,
            closed_at: None,
        }
    }

    /// The usage record of an approval: what it is charged, and the quota
    /// it leaves.
    fn usage_record(
        &self,
        request: &AccessRequest,
        subject: &str,
        decision_id: &str,
        c: &ChargeDraft,
        period: &str,
        now: DateTime<Utc>,
    ) -> UsageRecord {
        UsageRecord {
            schema: USAGE_SCHEMA.into(),
            usage_id: self.source.id().to_string(),
            request_id: request.request_id.clone(),
            decision_id: decision_id.to_owned(),
            subject: subject.to_owned(),
            dataset: request.dataset.clone(),
            scenario: request.scenario.clone(),
            operation: request.operation,
            purpose_class: request.purpose.class,
            unit: c.unit,
            quantity: c.quantity,
            price_item: c.price_item.clone(),
            unit_price_fen: c.unit_price_fen,
            amount_fen: c.amount_fen,
            fee_waived: c.fee_waived,
            waiver_reason: c.waiver_reason.clone(),
            period: period.to_owned(),
            quota: c.quota,
            recorded_at: now,
            basis: Basis::Approval,
            report: None,
            flags: Vec::new(),
        }
    }

    /// The grant of an approval: `presigned` when it signed exactly these
    /// claims, else signed now.
    fn grant_for(
        &self,
        policy: &Policy,
        eval: &Evaluation,
        r: &AccessRequest,
        (subject, decision_id): (&str, &str),
        now: DateTime<Utc>,
        presigned: Option<Presigned>,
    ) -> Option<Grant> {
        let claims = self.claims_for(policy, eval, r, subject, decision_id, now)?;
        let expires_at = eval.grant_expires_at?;
        let token = match presigned {
            Some(p) if p.claims == claims => p.token,
            _ => self.grant_keys.active().sign(&claims),
        };
        self.grant_keys.signed(claims.exp);
        Some(Grant { token, expires_at, quota: eval.charge.as_ref().map(|c| c.quota) })
    }

    /// What an approval's grant says (None unless approved).
    fn claims_for(
        &self,
        policy: &Policy,
        eval: &Evaluation,
        r: &AccessRequest,
        subject: &str,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> Option<GrantClaims> {
        if eval.outcome != Outcome::Approved {
            return None;
        }
        let expires_at = eval.grant_expires_at?;
        let holder = policy.catalogue().datasets.get(&r.dataset).map(|d| d.holder.clone()).unwrap_or_default();
        let nbf = r.window.as_ref().map_or(now, |w| w.not_before.max(now));
        Some(GrantClaims {
            iss: self.grant.issuer.clone(),
            sub: subject.to_owned(),
            aud: holder,
            jti: decision_id.to_owned(),
            iat: now.timestamp(),
            nbf: nbf.timestamp(),
            exp: expires_at.timestamp(),
            request_id: r.request_id.clone(),
            dataset: r.dataset.clone(),
            scenario: r.scenario.clone(),
            operation: r.operation.as_str().into(),
            obligations: eval.obligations.clone(),
            policy_version: policy.version().to_owned(),
        })
    }

    /// Signs, while the input is prepared (off the loop, overlapping the
    /// batch before), the grant its decision would carry if the token is
    /// fresh and no quota is used yet — what most requests find. Nothing
    /// signed here is published unless the decision, made later in its
    /// batch with the quota and token ids in the store and the policy then
    /// in force (after `GrantKeys::cover`), asks for exactly these claims.
    pub(super) fn presign(
        &self,
        request: &AccessRequest,
        principal: &Principal,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> Option<Presigned> {
        let policy = self.policy.load();
        let eval = crate::decide::evaluate(&crate::decide::DecisionInput {
            request,
            identity: Ok(principal),
            policy: &policy,
            used: 0,
            now,
            grant_ttl_secs: self.grant.ttl_secs,
            reviewed: false,
        });
        let claims = self.claims_for(&policy, &eval, request, &principal.subject, decision_id, now)?;
        let token = self.grant_keys.active().sign(&claims);
        Some(Presigned { claims, token })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use arc_swap::ArcSwap;

    use super::*;
    use crate::auth::{Claims, SigningKey, Verifier};
    use crate::broker::grant_keys::GrantKeys;
    use crate::config::Settings;
    use crate::kafka::{ConsumedMessage, Processor};
    use crate::ops::Health;

    const SUBJECT: &str = "91610131MA6TG1L5X1";

    async fn service(policy: Policy) -> (DecisionService, Arc<ArcSwap<Policy>>, SigningKey) {
        let idp = SigningKey::generate("idp");
        let settings = Settings::default();
        let store = crate::store::Store::connect("sqlite::memory:", 1).await.unwrap();
        let keys = GrantKeys::from_settings(&settings.grant, "test", store.clone()).unwrap();
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let verifier = Verifier::for_ed25519(&idp.public(), "https://idp.test", "tollgate");
        let service = DecisionService::new(&settings, policy.clone(), verifier, store, Arc::new(keys), Health::new());
        (service, policy, idp)
    }

    async fn shipped_policy(extra: &str) -> Policy {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let rules = format!("{}{extra}", read("policy.csv"));
        Policy::from_texts(&read("model.conf"), &rules, &read("catalogue.toml")).await.unwrap()
    }

    /// An access request the shipped policy approves.
    fn approvable(idp: &SigningKey, request_id: &str) -> ConsumedMessage {
        let token = idp.sign(&Claims {
            roles: vec!["data_user".into()],
            ..Claims::new(SUBJECT, "https://idp.test", "tollgate", 600)
        });
        let payload = serde_json::json!({
            "schema": crate::contract::REQUEST_SCHEMA, "request_id": request_id, "token": token,
            "dataset": "GX-610100-TOUR-0001", "operation": "query", "scenario": "smart-tourism",
            "purpose": {"class": "industry", "statement": "unit test"},
        });
        ConsumedMessage {
            topic: "tollgate.requests".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.to_string().into_bytes(),
            headers: vec![],
        }
    }

    fn grant_token(outputs: &[Vec<crate::kafka::OutgoingMessage>]) -> String {
        let decision: serde_json::Value = serde_json::from_str(&outputs[0][0].payload).unwrap();
        decision["grant"]["token"].as_str().expect("an approval carries a grant").to_owned()
    }

    #[tokio::test]
    async fn a_grant_signed_while_its_input_was_prepared_is_the_one_published_when_its_claims_hold() {
        let (service, _, idp) = service(shipped_policy("").await).await;
        let msgs = vec![approvable(&idp, "presigned-1")];
        let mut ready = service.prepare(&msgs);
        let presigned = ready[0].presigned.as_mut().expect("an approvable request is signed ahead");
        // Marked, to tell it from a token signed again with the same claims
        // (Ed25519 is deterministic: the two would be the same bytes).
        presigned.token = "signed-ahead".into();
        let outputs = service.process_batch(&msgs, ready).await.unwrap();
        assert_eq!(grant_token(&outputs), "signed-ahead");
    }

    #[tokio::test]
    async fn a_grant_signed_ahead_under_a_policy_since_replaced_is_signed_again_for_the_policy_in_force() {
        let (service, policy, idp) = service(shipped_policy("").await).await;
        let msgs = vec![approvable(&idp, "presigned-2")];
        let mut ready = service.prepare(&msgs);
        ready[0].presigned.as_mut().expect("signed ahead").token = "signed-ahead".into();
        let changed = shipped_policy("\n# a new version\n").await;
        let version = changed.version().to_owned();
        policy.store(Arc::new(changed));
        let outputs = service.process_batch(&msgs, ready).await.unwrap();
        let token = grant_token(&outputs);
        assert_ne!(token, "signed-ahead");
        let jwks =
            serde_json::from_value(serde_json::json!({"keys": [service.grant_keys().active().public().to_jwk()]}));
        let check = crate::auth::grant::GrantCheck::default();
        let claims = crate::auth::grant::verify_grant(&token, &jwks.unwrap(), &check, chrono::Utc::now().timestamp());
        assert_eq!(claims.expect("signed by the grant key").policy_version, version);
    }
}
