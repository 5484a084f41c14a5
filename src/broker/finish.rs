//! Phase 2, the same whatever else the batch holds (so on two threads for a
//! large batch): the grant signed, the decision, usage record and audit
//! event built.

use chrono::{DateTime, Utc};

use super::draft::{Draft, Step};
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

    /// The rest of a decision (phase 2), the same whatever else the batch
    /// holds, so drafts are finished on two threads: signs the grant and
    /// builds the decision, usage record and audit event.
    fn finish_draft(&self, policy: &Policy, d: Draft<'_>) -> (Commit, Tally) {
        let reply = d.review.as_ref().map(|r| self.verdict_reply(&d, &r.decision_id));
        let Draft { origin, request, subject, principal, eval, period, replayed, replay, review } = d;
        let (msg, now, trace_id) = (origin.msg, origin.now, origin.trace_id.as_str());
        let request = &request;
        let decision_id = review.as_ref().map_or_else(|| self.source.id().to_string(), |r| r.decision_id.clone());
        let grant = self.grant_for(policy, &eval, request, &subject, &decision_id, now);
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

    fn grant_for(
        &self,
        policy: &Policy,
        eval: &Evaluation,
        r: &AccessRequest,
        subject: &str,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> Option<Grant> {
        if eval.outcome != Outcome::Approved {
            return None;
        }
        let expires_at = eval.grant_expires_at?;
        let holder = policy.catalogue().datasets.get(&r.dataset).map(|d| d.holder.clone()).unwrap_or_default();
        let nbf = r.window.as_ref().map_or(now, |w| w.not_before.max(now));
        let claims = GrantClaims {
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
        };
        let token = self.grant_keys.active().sign(&claims);
        self.grant_keys.signed(claims.exp);
        Some(Grant { token, expires_at, quota: eval.charge.as_ref().map(|c| c.quota) })
    }
}
