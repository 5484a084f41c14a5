//! Reviewers' verdicts, in batch order inside the batch's transaction.
//! A verdict is checked (token, `reviewer` role, the reviewer's
//! organisation holds the dataset, not the requesting enterprise itself,
//! the request pending, a comment to reject); a refused verdict gets a
//! reply and an audit event and changes nothing. An accepted one closes
//! the review (once: the store closes only a pending review) and becomes
//! the request's final decision, drafted like any decision: a rejection is
//! denied `review.rejected`; an approval is decided again under the policy
//! and quota in force now, with the review obligation met, and gets its
//! grant and usage record if it is still allowed.

use std::collections::HashMap;

use super::DecisionService;
use super::Tally;
use super::draft::{Ask, Draft, Step};
use super::prepare::Origin;
use crate::audit;
use crate::auth::{AuthError, Principal};
use crate::contract::{
    AuditEvent, EventType, Outcome, REPLY_SCHEMA, Reason, Reply, ReviewNote, ReviewVerdict, Verdict,
};
use crate::decide::Evaluation;
use crate::decide::recheck::Granted;
use crate::metering::period_of;
use crate::policy::Policy;
use crate::store::{Batch, Closing, Commit, Output, ReviewRow, StoreError, Stream};

/// The role a token must carry to review.
pub const REVIEWER_ROLE: &str = "reviewer";

/// What a final decision after review carries beyond a decision.
pub(super) struct ReviewContext {
    /// The final decision's id (the review is closed with it in phase 1).
    pub(super) decision_id: String,
    pub(super) pending_decision_id: String,
    pub(super) note: ReviewNote,
}

/// The review `verdict` may close, or why it is refused.
fn check_verdict<'r>(
    verdict: &ReviewVerdict,
    identity: &Result<Principal, AuthError>,
    review: Option<&'r ReviewRow>,
) -> Result<(&'r ReviewRow, Principal), Reason> {
    let reviewer = identity.as_ref().map_err(|e| Reason::new(e.code(), e.to_string()))?;
    if !reviewer.roles.contains(REVIEWER_ROLE) {
        return Err(Reason::new("review.not_reviewer", format!("{} lacks the {REVIEWER_ROLE} role", reviewer.subject)));
    }
    let review = review.ok_or_else(|| {
        Reason::new("review.unknown_request", format!("{} was not sent to review", verdict.request_id))
    })?;
    if review.state != "pending" {
        return Err(Reason::new(
            "review.already_decided",
            format!("{} was decided: {}", review.request_id, review.state),
        ));
    }
    if reviewer.organisation != review.holder {
        let message = format!(
            "{} does not hold {}; its holder {} reviews it",
            reviewer.organisation, review.dataset, review.holder
        );
        return Err(Reason::new("review.out_of_scope", message));
    }
    if reviewer.organisation == review.subject || reviewer.subject == review.subject {
        return Err(Reason::new("review.self_review", "the requesting enterprise cannot review its own request"));
    }
    if verdict.verdict == Verdict::Reject && verdict.comment.trim().is_empty() {
        return Err(Reason::new("review.comment_required", "a rejection must say why (comment)"));
    }
    Ok((review, reviewer.clone()))
}

fn reply(verdict: &ReviewVerdict, origin: &Origin<'_>, reasons: Vec<Reason>, decision_id: Option<String>) -> Output {
    let reply = Reply {
        schema: REPLY_SCHEMA.into(),
        command_id: verdict.request_id.clone(),
        command: "review".into(),
        outcome: if reasons.is_empty() { "accepted" } else { "refused" }.into(),
        reasons,
        revoked: Vec::new(),
        decision_id,
        replied_at: origin.now,
        trace_id: origin.trace_id.clone(),
    };
    Output {
        stream: Stream::Replies,
        key: verdict.request_id.clone(),
        payload: serde_json::to_string(&reply).expect("replies serialise"),
    }
}

impl DecisionService {
    /// Phase 1 for a verdict (see the module documentation).
    pub(super) async fn verdict<'m>(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        reserved: &mut HashMap<(String, String, String), u64>,
        origin: Origin<'m>,
        verdict: ReviewVerdict,
        identity: Result<Principal, AuthError>,
    ) -> Result<Step<'m>, StoreError> {
        let review = batch.review(&verdict.request_id).await?;
        let (review, reviewer) = match check_verdict(&verdict, &identity, review.as_ref()) {
            Ok((review, reviewer)) => (review.clone(), reviewer),
            Err(reason) => return Ok(self.refused_verdict(policy, origin, &verdict, &identity, reason)),
        };
        let granted: Granted = serde_json::from_str(&review.probe)
            .map_err(|e| StoreError::Fatal(format!("review of {}: stored request: {e}", review.request_id)))?;
        let note = ReviewNote {
            reviewer: reviewer.name.clone().unwrap_or_else(|| reviewer.subject.clone()),
            organisation: reviewer.organisation.clone(),
            verdict: verdict.verdict,
            comment: verdict.comment.clone(),
            reviewed_at: origin.now,
        };
        let context = ReviewContext {
            decision_id: self.source.id().to_string(),
            pending_decision_id: review.pending_decision_id.clone(),
            note,
        };
        let mut draft = match verdict.verdict {
            Verdict::Approve => {
                let ask = Ask { request: granted.request, identity: Ok(granted.principal), reviewed: true };
                self.draft(batch, policy, reserved, origin, ask).await?
            }
            Verdict::Reject => rejected_draft(origin, granted, &verdict.comment),
        };
        let state = match (verdict.verdict, draft.eval.outcome) {
            (Verdict::Reject, _) => "rejected",
            (Verdict::Approve, Outcome::Approved) => "approved",
            (Verdict::Approve, _) => "denied",
        };
        let closing = Closing {
            request_id: &review.request_id,
            state,
            final_decision_id: &context.decision_id,
            reviewer: Some(&context.note.reviewer),
            at: draft.origin.now.timestamp(),
        };
        if !batch.close_review(&closing).await? {
            let reason = Reason::new("review.already_decided", format!("{} was decided meanwhile", review.request_id));
            return Ok(self.refused_verdict(policy, draft.origin, &verdict, &identity, reason));
        }
        draft.review = Some(Box::new(context));
        Ok(Step::Draft(Box::new(draft)))
    }

    /// A refused verdict: its reply and audit event, nothing else.
    fn refused_verdict<'m>(
        &self,
        policy: &Policy,
        origin: Origin<'m>,
        verdict: &ReviewVerdict,
        identity: &Result<Principal, AuthError>,
        reason: Reason,
    ) -> Step<'m> {
        let actor = identity.as_ref().map_or("unauthenticated".to_owned(), |p| p.organisation.clone());
        let commit = Commit {
            idem_key: origin.idem_key.clone(),
            kind: "verdict",
            decision: None,
            messages: vec![reply(verdict, &origin, vec![reason.clone()], None)],
            audit: AuditEvent {
                actor,
                subject: String::new(),
                resource: format!("request:{}", verdict.request_id),
                action: format!("review:{}", verdict.verdict.as_str()),
                outcome: "refused".into(),
                reasons: vec![reason],
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(&origin.msg.payload),
                ..AuditEvent::draft(origin.chain.clone(), EventType::Review, origin.now, origin.trace_id.clone())
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: super::rfc3339(origin.now),
        };
        Step::Commit(Box::new(commit), Tally::Command, origin.traceparent)
    }

    /// The reply that goes with an accepted verdict's final decision.
    pub(super) fn verdict_reply(&self, d: &Draft<'_>, decision_id: &str) -> Option<Output> {
        let note = &d.review.as_ref()?.note;
        let verdict = ReviewVerdict {
            schema: String::new(),
            request_id: d.request.request_id.clone(),
            verdict: note.verdict,
            comment: String::new(),
            token: None,
        };
        Some(reply(&verdict, &d.origin, Vec::new(), Some(decision_id.to_owned())))
    }
}

/// A rejection: denied `review.rejected` with the reviewer's comment.
fn rejected_draft<'m>(origin: Origin<'m>, granted: Granted, comment: &str) -> Draft<'m> {
    let period = period_of(origin.now);
    Draft {
        origin,
        subject: granted.principal.subject.clone(),
        request: granted.request,
        principal: Some(granted.principal),
        eval: Evaluation::deny("review.rejected", comment),
        period,
        replayed: false,
        replay: None,
        review: None,
    }
}
