//! Phase 1, in batch order (each input may read what an earlier one of the
//! batch claimed): the token id claimed, the quota counter read with the
//! batch's own reservations, the pure decision evaluated.

use std::collections::{HashMap, HashSet};

use tracing::{debug, info, warn};

use super::prepare::{Input, Origin, Prepared, position};
use super::review::ReviewContext;
use super::{DecisionService, Tally};
use crate::audit;
use crate::auth::{AuthError, Principal};
use crate::contract::AccessRequest;
use crate::decide::{self, DecisionInput, Evaluation};
use crate::metering::period_of;
use crate::policy::Policy;
use crate::store::{Batch, Commit, Committed, StoreError, TokenUse};

/// A decision drafted in phase 1 (see `process_batch`).
pub(super) struct Draft<'m> {
    pub(super) origin: Origin<'m>,
    pub(super) request: AccessRequest,
    pub(super) subject: String,
    /// Who asked, when the token verified: kept with a grant so the request
    /// can be decided again when the policy changes.
    pub(super) principal: Option<Principal>,
    pub(super) eval: Evaluation,
    pub(super) period: String,
    pub(super) replayed: bool,
    /// `(used, reviewed)`: the quota used and review state the policy
    /// decided with, stored for replay; None when no policy decided (a
    /// reviewer's rejection).
    pub(super) replay: Option<(u64, bool)>,
    /// A final decision after review: what it supersedes and records.
    pub(super) review: Option<Box<ReviewContext>>,
}

/// A request to decide in phase 1: as asked, by whom, and whether a
/// reviewer approved it.
pub(super) struct Ask {
    pub(super) request: AccessRequest,
    pub(super) identity: Result<Principal, AuthError>,
    pub(super) reviewed: bool,
}

/// What becomes of one input of a batch, phase by phase.
pub(super) enum Step<'m> {
    /// Phase 1 made a decision's order-dependent part; phase 2 finishes it.
    Draft(Box<Draft<'m>>),
    /// To be stored in phase 3 (a finished draft or a dead letter), with
    /// its `traceparent`.
    Commit(Box<Commit>, Tally, String),
    /// Decided before this batch: published again.
    Done(Committed, String),
    /// The same request as an earlier input of this batch (by its key).
    Repeat(String, String),
}

impl DecisionService {
    /// Phase 1 for one input: in batch order, since it reads and claims
    /// what earlier inputs of the batch may have claimed.
    pub(super) async fn step<'m>(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        reserved: &mut HashMap<(String, String, String), u64>,
        drafted: &mut HashSet<String>,
        p: Prepared<'m>,
    ) -> Result<Step<'m>, StoreError> {
        let Prepared { origin, input } = p;
        let msg = origin.msg;
        match input {
            Err(rejection) => {
                info!(message = "input rejected", code = rejection.code, topic = %msg.topic, partition = msg.partition, offset = msg.offset);
                let commit = self.dead_letter(policy, &origin, rejection);
                Ok(Step::Commit(Box::new(commit), Tally::DeadLetter, origin.traceparent))
            }
            Ok(input) => {
                let key = &origin.idem_key;
                if let Some(outputs) = batch.find_outcome(key).await? {
                    debug!(message = "re-publishing stored outcome", idem_key = %key, position = %position(msg));
                    return Ok(Step::Done(Committed::Existing(outputs), origin.traceparent));
                }
                // Decided earlier in this batch: its outcome is stored by
                // the time this input's turn comes in phase 3.
                if !drafted.insert(key.clone()) {
                    debug!(message = "repeated within the batch; publishing the first's outcome", idem_key = %key, position = %position(msg));
                    return Ok(Step::Repeat(origin.idem_key, origin.traceparent));
                }
                match input {
                    Input::Access(request, identity) => {
                        let ask = Ask { request, identity, reviewed: false };
                        Ok(Step::Draft(Box::new(self.draft(batch, policy, reserved, origin, ask).await?)))
                    }
                    Input::Verdict(verdict, identity) => {
                        self.verdict(batch, policy, reserved, origin, verdict, identity).await
                    }
                    Input::Revoke(command, identity) => {
                        let traceparent = origin.traceparent.clone();
                        let commit = self.revoke(batch, policy, &origin, command, identity).await?;
                        Ok(Step::Commit(Box::new(commit), Tally::Command, traceparent))
                    }
                    Input::Report(report, identity) => {
                        let traceparent = origin.traceparent.clone();
                        let commit = self.report(batch, policy, &origin, report, identity).await?;
                        Ok(Step::Commit(Box::new(commit), Tally::Command, traceparent))
                    }
                }
            }
        }
    }

    /// The order-dependent part of a decision (phase 1): claims the token
    /// id, reads the quota counter (with what earlier inputs of the batch
    /// reserved) and evaluates.
    pub(super) async fn draft<'m>(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        reserved: &mut HashMap<(String, String, String), u64>,
        origin: Origin<'m>,
        ask: Ask,
    ) -> Result<Draft<'m>, StoreError> {
        let Ask { request, identity, reviewed } = ask;
        // A token id authorizes one request; the same request again (a
        // client retry) was answered from its stored outcome before this.
        let identity = match identity {
            Ok(p) if self.single_use_jti && p.token_id.is_some() => {
                let jti = p.token_id.as_deref().unwrap_or_default();
                match batch.use_token(&p.issuer, jti, &request.request_id, p.expires_at).await? {
                    TokenUse::Fresh => Ok(p),
                    TokenUse::UsedBy(other) => {
                        warn!(message = "replayed token refused", request_id = %request.request_id, first_request = %other,
                              subject = %p.subject, token_digest = %audit::digest(jti.as_bytes()));
                        Err(AuthError::Replayed(other))
                    }
                }
            }
            other => other,
        };
        let replayed = matches!(identity, Err(AuthError::Replayed(_)));
        let period = period_of(origin.now);
        let counter = match &identity {
            Ok(p) if policy.catalogue().datasets.contains_key(&request.dataset) => {
                let key = (p.subject.clone(), request.dataset.clone(), period.clone());
                let stored = batch.usage_in_period(&key.0, &key.1, &key.2).await?;
                Some((stored + reserved.get(&key).copied().unwrap_or(0), key))
            }
            _ => None,
        };
        let used = counter.as_ref().map_or(0, |(used, _)| *used);
        let eval = decide::evaluate(&DecisionInput {
            request: &request,
            identity: identity.as_ref(),
            policy,
            used,
            now: origin.now,
            grant_ttl_secs: self.grant.ttl_secs,
            reviewed,
        });
        if let (Some(charge), Some((_, key))) = (&eval.charge, counter) {
            *reserved.entry(key).or_default() += charge.quantity;
        }
        let subject = identity.as_ref().map(|p| p.subject.clone()).unwrap_or_default();
        let principal = identity.ok();
        let replay = Some((used, reviewed));
        Ok(Draft { origin, request, subject, principal, eval, period, replayed, replay, review: None })
    }
}
