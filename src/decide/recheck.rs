//! A granted request decided again under another policy: what
//! policy-driven revocation asks of every live grant.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{DecisionInput, evaluate};
use crate::auth::Principal;
use crate::contract::{AccessRequest, Outcome, Reason};
use crate::policy::Policy;

/// What a grant keeps of its request (see `grants.probe`).
#[derive(Debug, Clone, Deserialize)]
pub struct Granted {
    pub principal: Principal,
    pub request: AccessRequest,
}

/// Why `policy` would deny the granted request at `now`; None while it
/// would still be approved (or sent to review: a person may still say yes).
///
/// Quota is not asked again (the units were consumed when the grant was
/// issued, and counting them twice would deny every grant at its limit),
/// nor is the token (it proved who asked when the grant was issued).
pub fn denial(granted: &Granted, policy: &Policy, now: DateTime<Utc>) -> Option<Reason> {
    let eval = evaluate(&DecisionInput {
        request: &granted.request,
        identity: Ok(&granted.principal),
        policy,
        used: 0,
        now,
        grant_ttl_secs: 0,
        reviewed: false,
    });
    match eval.outcome {
        Outcome::Denied => eval.reasons.into_iter().find(|r| !r.code.starts_with("quota.")),
        Outcome::Approved | Outcome::PendingReview => None,
    }
}
