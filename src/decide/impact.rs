//! The impact of a policy change on real traffic: a stored decision's
//! inputs decided again under a proposed policy, and what would change.
//! Pure: the store reads the decisions, the CLI reports.
//!
//! What must stay true: a replay decides with exactly what the original
//! decision saw — the verified principal, the request (without its token),
//! the quota already used, whether a reviewer approved it, its time — so
//! an unchanged policy changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DecisionInput, Evaluation, evaluate};
use crate::auth::Principal;
use crate::contract::{AccessRequest, Outcome};
use crate::policy::Policy;

/// What a decision was decided from (stored with it as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayInputs {
    pub principal: Principal,
    /// The request without its token.
    pub request: AccessRequest,
    pub used: u64,
    #[serde(default)]
    pub reviewed: bool,
}

impl ReplayInputs {
    /// The inputs of a decision, the token dropped.
    pub fn of(principal: &Principal, request: &AccessRequest, used: u64, reviewed: bool) -> ReplayInputs {
        let request = AccessRequest { token: None, ..request.clone() };
        ReplayInputs { principal: principal.clone(), request, used, reviewed }
    }

    /// Decides again under `policy` at the original decision time.
    pub fn replay(&self, policy: &Policy, decided_at: DateTime<Utc>) -> Evaluation {
        evaluate(&DecisionInput {
            request: &self.request,
            identity: Ok(&self.principal),
            policy,
            used: self.used,
            now: decided_at,
            grant_ttl_secs: 3600,
            reviewed: self.reviewed,
        })
    }
}

/// What a decision attached besides its outcome (stored with it as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    pub obligations: Vec<String>,
    pub unit_price_fen: Option<i64>,
    pub amount_fen: Option<i64>,
}

impl Effects {
    pub fn of(eval: &Evaluation) -> Effects {
        Effects {
            obligations: eval.obligations.clone(),
            unit_price_fen: eval.charge.as_ref().map(|c| c.unit_price_fen),
            amount_fen: eval.charge.as_ref().map(|c| c.amount_fen),
        }
    }
}

/// How a decision would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Approved before, denied now.
    ApprovedToDenied,
    /// Denied before, approved now.
    DeniedToApproved,
    /// Any other change of outcome (to or from pending review).
    Outcome,
    Obligations,
    Price,
}

/// One decision that the proposed policy would decide differently.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub request_id: String,
    pub subject: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub kind: ChangeKind,
    pub before: Side,
    pub after: Side,
    /// The rule of the proposed policy that decides the new outcome, else
    /// its reason code (`policy.no_matching_rule` when nothing allows).
    pub responsible: String,
}

/// A decision's outcome and effects, before or after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub outcome: String,
    pub reason: Option<String>,
    #[serde(flatten)]
    pub effects: Effects,
}

/// Compares a stored decision with its replay; None when nothing changes.
pub fn compare(request_id: &str, inputs: &ReplayInputs, before: Side, replayed: &Evaluation) -> Option<Change> {
    let after = Side {
        outcome: replayed.outcome.as_str().to_owned(),
        reason: replayed.reasons.first().map(|r| r.code.clone()),
        effects: Effects::of(replayed),
    };
    let kind = match (before.outcome.as_str(), replayed.outcome) {
        ("approved", Outcome::Denied) => ChangeKind::ApprovedToDenied,
        ("denied", Outcome::Approved) => ChangeKind::DeniedToApproved,
        (was, now) if was != now.as_str() => ChangeKind::Outcome,
        _ if before.effects.obligations != after.effects.obligations => ChangeKind::Obligations,
        _ if before.effects.amount_fen != after.effects.amount_fen
            || before.effects.unit_price_fen != after.effects.unit_price_fen =>
        {
            ChangeKind::Price
        }
        _ => return None,
    };
    let rules = &replayed.matched_rules;
    let responsible = match (kind, replayed.outcome) {
        (ChangeKind::Obligations, _) => rules.iter().find(|r| r.starts_with("p2,")).cloned(),
        // Deny overrides allow: the deny rule decided, whatever allowed.
        (_, Outcome::Denied) => rules.iter().find(|r| r.ends_with(", deny")).or(rules.first()).cloned(),
        _ => rules.iter().find(|r| r.starts_with("p,")).cloned(),
    }
    .or_else(|| after.reason.clone())
    .unwrap_or_else(|| "(price table)".into());
    let r = &inputs.request;
    Some(Change {
        request_id: request_id.to_owned(),
        subject: inputs.principal.subject.clone(),
        dataset: r.dataset.clone(),
        scenario: r.scenario.clone(),
        operation: r.operation.as_str().to_owned(),
        kind,
        before,
        after,
        responsible,
    })
}

/// Counts of changes per kind, per responsible rule and per enterprise.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub replayed: u64,
    /// Decisions with no inputs to replay (the token failed, a review
    /// timed out, or decided before inputs were stored).
    pub not_replayable: u64,
    pub changed: u64,
    pub by_kind: BTreeMap<ChangeKind, u64>,
    pub by_rule: BTreeMap<String, BTreeMap<ChangeKind, u64>>,
    pub by_enterprise: BTreeMap<String, BTreeMap<ChangeKind, u64>>,
}

impl Summary {
    pub fn count(&mut self, change: &Change) {
        self.changed += 1;
        *self.by_kind.entry(change.kind).or_default() += 1;
        *self.by_rule.entry(change.responsible.clone()).or_default().entry(change.kind).or_default() += 1;
        *self.by_enterprise.entry(change.subject.clone()).or_default().entry(change.kind).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::contract::{Operation, Purpose, PurposeClass, REQUEST_SCHEMA};

    const TRAVEL: &str = "91610131MA6TG1L5X1";

    fn inputs(used: u64) -> ReplayInputs {
        let principal = Principal {
            subject: TRAVEL.into(),
            issuer: "https://idp".into(),
            roles: BTreeSet::new(),
            qualifications: BTreeSet::new(),
            token_id: Some("jti-1".into()),
            expires_at: 0,
            organisation: TRAVEL.into(),
            name: None,
        };
        let request = AccessRequest {
            schema: REQUEST_SCHEMA.into(),
            request_id: "r-1".into(),
            token: Some("eyJ.secret.token".into()),
            dataset: "GX-610100-TOUR-0001".into(),
            operation: Operation::Query,
            scenario: "smart-tourism".into(),
            purpose: Purpose { class: PurposeClass::Industry, statement: "s".into() },
            fields: vec![],
            volume: None,
            window: None,
            submitted_at: None,
        };
        ReplayInputs::of(&principal, &request, used, false)
    }

    async fn shipped() -> Policy {
        Policy::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).await.unwrap()
    }

    fn side(eval: &Evaluation) -> Side {
        Side {
            outcome: eval.outcome.as_str().into(),
            reason: eval.reasons.first().map(|r| r.code.clone()),
            effects: Effects::of(eval),
        }
    }

    #[tokio::test]
    async fn the_same_policy_changes_nothing_and_the_token_is_never_kept() {
        let policy = shipped().await;
        let inputs = inputs(0);
        assert!(!serde_json::to_string(&inputs).unwrap().contains("eyJ"));
        let now = Utc::now();
        let eval = inputs.replay(&policy, now);
        assert_eq!(eval.outcome, Outcome::Approved, "{:?}", eval.reasons);
        assert!(compare("r-1", &inputs, side(&eval), &inputs.replay(&policy, now)).is_none());
    }

    #[tokio::test]
    async fn obligations_and_price_changes_are_told_apart_from_outcome_changes() {
        let policy = shipped().await;
        let inputs = inputs(0);
        let eval = inputs.replay(&policy, Utc::now());
        let mut before = side(&eval);
        before.effects.obligations.push("aggregate_only".into());
        assert_eq!(compare("r-1", &inputs, before, &eval).unwrap().kind, ChangeKind::Obligations);
        let mut before = side(&eval);
        before.effects.amount_fen = before.effects.amount_fen.map(|a| a + 1);
        let change = compare("r-1", &inputs, before, &eval).unwrap();
        assert_eq!((change.kind, change.subject.as_str()), (ChangeKind::Price, TRAVEL));
        let before = Side { outcome: "denied".into(), reason: Some("policy.no_matching_rule".into()), ..side(&eval) };
        let change = compare("r-1", &inputs, before, &eval).unwrap();
        assert_eq!(change.kind, ChangeKind::DeniedToApproved);
        assert!(change.responsible.starts_with("p, tourism-developer, smart-tourism"), "{}", change.responsible);
    }
}
