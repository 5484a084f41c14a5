//! Operators' revoke commands, in batch order inside the batch's
//! transaction: the operator checked, the grants the command names marked
//! revoked (once: a grant already revoked by another command or instance
//! is not announced again), and the reply, one `grant_revoked` event per
//! grant and the audit event stored as the command's outcome, so a
//! redelivered command publishes the same bytes again.
//!
//! What must stay true: a command changes grants only when it is accepted,
//! and every change is announced to data hosts and audited.

use super::DecisionService;
use super::prepare::Origin;
use crate::audit;
use crate::auth::{AuthError, Principal};
use crate::contract::{
    AuditEvent, EventType, GRANT_EVENT_SCHEMA, GrantEvent, REPLY_SCHEMA, Reason, Reply, RevokeCommand, RevokeTarget,
};
use crate::policy::Policy;
use crate::store::{Batch, Commit, GrantRow, GrantState, Output, Revocation, StoreError, Stream};

/// The role a token must carry to revoke grants.
pub const OPERATOR_ROLE: &str = "operator";

/// Why a revoke command is refused, or the grants it names.
async fn grants_named(
    batch: &mut Batch,
    command: &RevokeCommand,
    identity: &Result<Principal, AuthError>,
    now: i64,
) -> Result<Result<Vec<GrantRow>, Reason>, StoreError> {
    let refuse = |code: &str, message: String| Ok(Err(Reason { code: code.into(), message }));
    let operator = match identity {
        Err(e) => return refuse(e.code(), e.to_string()),
        Ok(p) => p,
    };
    if !operator.roles.contains(OPERATOR_ROLE) {
        return refuse("revoke.not_operator", format!("{} lacks the {OPERATOR_ROLE} role", operator.subject));
    }
    if command.reason.trim().is_empty() {
        return refuse("revoke.reason_missing", "a revocation must state its reason".into());
    }
    let RevokeTarget::Grant(id) = &command.target else {
        return Ok(Ok(batch.live_grants(&command.target, now).await?));
    };
    match batch.grant_state(id, now).await? {
        GrantState::Live(grant) => Ok(Ok(vec![*grant])),
        GrantState::Unknown => refuse("revoke.unknown_grant", format!("no grant was issued with decision id {id}")),
        GrantState::Expired => refuse("revoke.grant_expired", format!("grant {id} has expired already")),
        GrantState::Revoked => refuse("revoke.already_revoked", format!("grant {id} was revoked before")),
    }
}

fn timestamp(t: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default()
}

/// The `grant_revoked` event for `g`.
pub(super) fn revoked_event(g: &GrantRow, r: &Revocation, by: &str, revoked_under: &str) -> Output {
    let event = GrantEvent {
        schema: GRANT_EVENT_SCHEMA.into(),
        event: "revoked".into(),
        decision_id: g.decision_id.clone(),
        request_id: g.request_id.clone(),
        subject: g.subject.clone(),
        holder: g.holder.clone(),
        dataset: g.dataset.clone(),
        scenario: g.scenario.clone(),
        operation: g.operation.clone(),
        reason: Reason { code: r.code.clone(), message: r.reason.clone() },
        by: by.to_owned(),
        granted_under: g.policy_version.clone(),
        revoked_under: revoked_under.to_owned(),
        expires_at: timestamp(g.expires_at),
        revoked_at: timestamp(r.at),
    };
    let payload = serde_json::to_string(&event).expect("grant events serialise");
    Output { stream: Stream::Grants, key: g.decision_id.clone(), payload }
}

impl DecisionService {
    /// Answers one revoke command (see the module documentation).
    pub(super) async fn revoke(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        origin: &Origin<'_>,
        command: RevokeCommand,
        identity: Result<Principal, AuthError>,
    ) -> Result<Commit, StoreError> {
        let now = origin.now;
        let named = grants_named(batch, &command, &identity, now.timestamp()).await?;
        let operator = identity.as_ref().map_or("unauthenticated", |p| p.subject.as_str()).to_owned();
        let mut messages = Vec::new();
        let mut revoked = Vec::new();
        let reasons = match named {
            Err(refusal) => vec![refusal],
            Ok(grants) => {
                let r = Revocation {
                    revocation_id: self.source.id().to_string(),
                    at: now.timestamp(),
                    code: "revoke.command".into(),
                    reason: command.reason.clone(),
                };
                for g in grants {
                    if batch.revoke_grant(&g.decision_id, &r).await? {
                        messages.push(revoked_event(&g, &r, &operator, policy.version()));
                        revoked.push(g.decision_id);
                    }
                }
                crate::ops::Health::add(&self.health.counters.revoked_by_command, revoked.len() as u64);
                Vec::new()
            }
        };
        let outcome = if reasons.is_empty() { "accepted" } else { "refused" };
        let reply = Reply {
            schema: REPLY_SCHEMA.into(),
            command_id: command.command_id.clone(),
            command: "revoke".into(),
            outcome: outcome.into(),
            reasons: reasons.clone(),
            revoked,
            decision_id: None,
            replied_at: now,
            trace_id: origin.trace_id.clone(),
        };
        let payload = serde_json::to_string(&reply).expect("replies serialise");
        messages.insert(0, Output { stream: Stream::Replies, key: command.command_id.clone(), payload });
        let audit_reasons = if reasons.is_empty() {
            vec![Reason { code: "revoke.command".into(), message: command.reason }]
        } else {
            reasons
        };
        Ok(Commit {
            idem_key: origin.idem_key.clone(),
            kind: "command",
            decision: None,
            messages,
            audit: AuditEvent {
                actor: operator,
                subject: match &command.target {
                    RevokeTarget::Enterprise(s) => s.clone(),
                    _ => String::new(),
                },
                resource: command.target.describe(),
                action: "revoke".into(),
                outcome: outcome.into(),
                reasons: audit_reasons,
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(&origin.msg.payload),
                ..AuditEvent::draft(origin.chain.clone(), EventType::Revocation, now, origin.trace_id.clone())
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: super::rfc3339(now),
        })
    }
}
