//! Decisions that change with time, without an input. Review timeouts: a
//! request pending review past `review.timeout_secs` gets its final
//! decision, denied `review.timeout`. Policy-driven revocation: every live grant's request decided again
//! under the policy in force; a grant it would no longer approve is revoked
//! with the denial's reason, announced to data hosts (`grant_revoked`) and
//! audited on the instance's policy chain. Run after a reload that changed
//! the policy, at start-up and every `grant.recheck_secs` (a scenario's
//! authorization or a registration can lapse with no edit). The revenue
//! cap: with each sweep, the operator's revenue this year is summed; the
//! first time it passes the catalogue's `yearly_revenue_cap_fen`, that is
//! audited once (whichever instance sees it first) and
//! `tollgate_revenue_year_fen` shows it; charges go on.
//!
//! What must stay true: each revocation is stored with its messages in one
//! transaction and published through the outbox (it has no input whose
//! redelivery would publish it); a grant two instances find at once is
//! revoked and announced once (the store marks it only if unmarked).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::outbox::Outbox;
use super::revoke::revoked_event;
use crate::audit;
use crate::contract::{AccessRequest, AuditEvent, DECISION_SCHEMA, Decision, EventType, Outcome, Reason};
use crate::decide::recheck::{Granted, denial};
use crate::domain::ChainId;
use std::sync::atomic::Ordering;

use crate::metering::RevenueAgainstCap;
use crate::ops::Health;
use crate::policy::Policy;
use crate::store::{Closing, Commit, DecisionRow, GrantRow, Output, ReviewRow, Revocation, Store, StoreError, Stream};

/// The final decision of a review that timed out.
fn timeout_decision(
    policy: &Policy,
    review: &ReviewRow,
    r: &AccessRequest,
    decision_id: &str,
    reason: &Reason,
    now: DateTime<Utc>,
    trace_id: &str,
) -> Decision {
    Decision {
        schema: DECISION_SCHEMA.into(),
        decision_id: decision_id.to_owned(),
        request_id: r.request_id.clone(),
        subject: review.subject.clone(),
        dataset: r.dataset.clone(),
        operation: r.operation,
        scenario: r.scenario.clone(),
        outcome: Outcome::Denied,
        reasons: vec![reason.clone()],
        matched_rules: Vec::new(),
        obligations: Vec::new(),
        grant: None,
        policy_version: policy.version().to_owned(),
        decided_at: now,
        trace_id: trace_id.to_owned(),
        supersedes: Some(review.pending_decision_id.clone()),
        review: None,
    }
}

pub struct Recheck {
    store: Store,
    outbox: Arc<Outbox>,
    instance_id: String,
    health: Arc<Health>,
}

impl Recheck {
    pub fn new(store: Store, outbox: Arc<Outbox>, instance_id: &str, health: Arc<Health>) -> Self {
        Recheck { store, outbox, instance_id: instance_id.to_owned(), health }
    }

    /// Revokes every live grant `policy` would deny at `now`; returns how
    /// many this instance revoked.
    pub async fn sweep(&self, policy: &Policy, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let live = self.store.live_grants(now.timestamp()).await?;
        let checked = live.len();
        let denied: Vec<(GrantRow, Reason)> = live
            .into_iter()
            .filter_map(|g| match serde_json::from_str::<Granted>(&g.probe) {
                Ok(granted) => denial(&granted, policy, now).map(|reason| (g, reason)),
                Err(error) => {
                    warn!(message = "a stored grant's request does not decode; it is not re-checked", decision_id = %g.decision_id, %error);
                    None
                }
            })
            .collect();
        let mut revoked = 0;
        for (grant, reason) in denied {
            if self.revoke(policy, grant, reason, now).await? {
                revoked += 1;
            }
        }
        if revoked > 0 {
            Health::add(&self.health.counters.revoked_by_policy, revoked as u64);
            info!(message = "grants the policy no longer allows were revoked", revoked, checked, policy_version = %policy.version());
            self.outbox.drain_logged().await;
        }
        Ok(revoked)
    }

    /// Revokes one grant unless another instance or command did first.
    async fn revoke(
        &self,
        policy: &Policy,
        g: GrantRow,
        reason: Reason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = Revocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            at: now.timestamp(),
            code: reason.code.clone(),
            reason: reason.message.clone(),
        };
        let mut batch = self.store.begin().await?;
        if !batch.revoke_grant(&g.decision_id, &r).await? {
            return Ok(false);
        }
        let chain = ChainId::Policy { instance: self.instance_id.clone() }.to_string();
        let trace_id = opentelemetry::trace::TraceId::from_bytes(rand::random()).to_string();
        let commit = Commit {
            idem_key: format!("revocation:{}", g.decision_id),
            kind: "policy_revocation",
            decision: None,
            messages: vec![revoked_event(&g, &r, "policy", policy.version())],
            audit: AuditEvent {
                actor: format!("tollgate/{}", self.instance_id),
                subject: g.subject.clone(),
                resource: g.dataset.clone(),
                action: g.operation.clone(),
                outcome: "revoked".into(),
                reasons: vec![reason],
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(g.probe.as_bytes()),
                ..AuditEvent::draft(chain, EventType::PolicyRevocation, now, trace_id)
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: super::rfc3339(now),
        };
        batch.add(commit).await?;
        batch.queue_in_outbox();
        batch.finish().await?;
        Ok(true)
    }

    /// Denies every review pending past its deadline at `now`, refreshing
    /// the pending-review gauges; returns how many this instance closed.
    pub async fn expire_reviews(&self, policy: &Policy, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut closed = 0;
        for review in self.store.overdue_reviews(now.timestamp()).await? {
            if self.time_out(policy, review, now).await? {
                closed += 1;
            }
        }
        if closed > 0 {
            info!(message = "reviews past their deadline were denied review.timeout", closed);
            self.outbox.drain_logged().await;
        }
        let pending = self.store.pending_reviews(None).await?;
        let oldest = pending.iter().map(|r| r.created_at).min();
        self.health.set_reviews(pending.len() as u64, oldest.map_or(0, |t| (now.timestamp() - t).max(0) as u64));
        Ok(closed)
    }

    /// The final decision of one review past its deadline, unless a verdict
    /// closed it first.
    async fn time_out(&self, policy: &Policy, review: ReviewRow, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let granted: Granted = serde_json::from_str(&review.probe)
            .map_err(|e| StoreError::Fatal(format!("review of {}: stored request: {e}", review.request_id)))?;
        let decision_id = uuid::Uuid::now_v7().to_string();
        let closing = Closing {
            request_id: &review.request_id,
            state: "timed_out",
            final_decision_id: &decision_id,
            reviewer: None,
            at: now.timestamp(),
        };
        let mut batch = self.store.begin().await?;
        if !batch.close_review(&closing).await? {
            return Ok(false);
        }
        let reason = Reason::new(
            "review.timeout",
            format!("no reviewer of {} decided within the review timeout", review.holder),
        );
        let trace_id = opentelemetry::trace::TraceId::from_bytes(rand::random()).to_string();
        let r = &granted.request;
        let decision = timeout_decision(policy, &review, r, &decision_id, &reason, now, &trace_id);
        let commit = Commit {
            idem_key: format!("review-timeout:{}", review.request_id),
            kind: "review_timeout",
            decision: Some(DecisionRow {
                decision_id,
                subject: review.subject.clone(),
                outcome: Outcome::Denied.as_str().into(),
                reason_code: Some(reason.code.clone()),
                request_digest: audit::digest(review.probe.as_bytes()),
                decided_at: super::rfc3339(now),
                ..super::finish::decision_row(policy, r)
            }),
            messages: vec![Output {
                stream: Stream::Decisions,
                key: review.subject.clone(),
                payload: serde_json::to_string(&decision).expect("decisions serialise"),
            }],
            audit: AuditEvent {
                actor: format!("tollgate/{}", self.instance_id),
                subject: review.subject.clone(),
                resource: format!("request:{}", review.request_id),
                action: "review:timeout".into(),
                outcome: Outcome::Denied.as_str().into(),
                reasons: vec![reason],
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(review.probe.as_bytes()),
                ..AuditEvent::draft(
                    ChainId::Policy { instance: self.instance_id.clone() }.to_string(),
                    EventType::Review,
                    now,
                    trace_id,
                )
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: Some(review.request_id.clone()),
            created_at: super::rfc3339(now),
        };
        batch.add(commit).await?;
        batch.queue_in_outbox();
        batch.finish().await?;
        Ok(true)
    }

    /// [`Recheck::expire_reviews`] with the failure logged.
    pub async fn expire_reviews_logged(&self, policy: &Policy) {
        if let Err(error) = self.expire_reviews(policy, Utc::now()).await {
            warn!(message = "reviews past their deadline could not be closed; will retry", %error);
        }
    }

    /// [`Recheck::sweep`] and [`Recheck::revenue`] with failures logged:
    /// the next sweep tries again.
    pub async fn sweep_logged(&self, policy: &Policy) {
        if let Err(error) = self.sweep(policy, Utc::now()).await {
            warn!(message = "live grants could not be re-checked against the policy; will retry", %error);
        }
        if let Err(error) = self.revenue(policy, Utc::now()).await {
            warn!(message = "the operator's revenue could not be checked against its cap; will retry", %error);
        }
    }

    /// The operator's revenue this year against its cap; audits the first
    /// crossing (stored once under `revenue_cap:<year>`). True when this
    /// call audited it.
    pub async fn revenue(&self, policy: &Policy, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let Some(operator) = &policy.catalogue().operator else { return Ok(false) };
        let year = now.format("%Y").to_string();
        let revenue = self.store.revenue(&format!("{year}-01"), &format!("{year}-12")).await?;
        let against = RevenueAgainstCap::new(revenue, operator.yearly_revenue_cap_fen);
        let gauge =
            |a: &std::sync::atomic::AtomicU64, v: i64| a.store(u64::try_from(v).unwrap_or(0), Ordering::Relaxed);
        gauge(&self.health.counters.revenue_year_fen, revenue);
        gauge(&self.health.counters.revenue_cap_fen, operator.yearly_revenue_cap_fen);
        if !against.exceeded() {
            return Ok(false);
        }
        let message = format!(
            "{} earned {revenue} fen in {year}, past its permitted {} fen: the excess of {} fen (as of now) is to be deducted next period",
            operator.name, operator.yearly_revenue_cap_fen, against.excess_fen
        );
        let trace_id = opentelemetry::trace::TraceId::from_bytes(rand::random()).to_string();
        let chain = ChainId::Policy { instance: self.instance_id.clone() }.to_string();
        let commit = Commit {
            idem_key: format!("revenue_cap:{year}"),
            kind: "revenue_cap",
            decision: None,
            messages: Vec::new(),
            audit: AuditEvent {
                actor: format!("tollgate/{}", self.instance_id),
                subject: operator.uscc.clone(),
                resource: format!("revenue:{year}"),
                action: "charge".into(),
                outcome: "exceeded".into(),
                reasons: vec![Reason::new("usage.revenue_cap_exceeded", message.clone())],
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(message.as_bytes()),
                ..AuditEvent::draft(chain, EventType::RevenueCapExceeded, now, trace_id)
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: super::rfc3339(now),
        };
        let first = matches!(self.store.commit(commit).await?, crate::store::Committed::New(_));
        if first {
            warn!(message = "REVENUE CAP EXCEEDED", detail = %message);
            self.outbox.drain_logged().await;
        }
        Ok(first)
    }
}
