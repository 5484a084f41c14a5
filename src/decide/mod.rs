//! The decision, as pure functions: bytes → request (`decode`), and
//! (request, identity, policy, usage so far, now) → evaluation, the checks
//! in their contract order. No I/O happens here, so every rule is
//! unit-tested without Kafka or a database.

mod decode;
pub mod impact;
pub mod policy_tests;
pub mod recheck;
pub mod report;

use decode::truncate;
pub use decode::{DecodedRequest, Rejection, decode, decode_report, decode_revoke, decode_verdict};

use chrono::{DateTime, Utc};

use crate::auth::{AuthError, Principal};
use crate::contract::Unit;
use crate::contract::{AccessRequest, Outcome, Quota, Reason};
use crate::metering::ChargeAt;
use crate::policy::{Dataset, Grade, Policy, Scenario};

/// What the policy says about a request, before ids, signatures and chain
/// positions are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub matched_rules: Vec<String>,
    pub obligations: Vec<String>,
    /// Present exactly when approved.
    pub charge: Option<ChargeDraft>,
    /// Present exactly when approved: when the grant stops being valid.
    pub grant_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChargeDraft {
    pub unit: Unit,
    pub quantity: u64,
    pub price_item: String,
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    pub fee_waived: bool,
    pub waiver_reason: Option<String>,
    pub quota: Quota,
}

impl Evaluation {
    pub fn deny(code: &str, message: impl Into<String>) -> Self {
        Evaluation {
            outcome: Outcome::Denied,
            reasons: vec![Reason::new(code, message)],
            matched_rules: Vec::new(),
            obligations: Vec::new(),
            charge: None,
            grant_expires_at: None,
        }
    }
}

/// Everything the decision depends on. `used` is the quantity this subject
/// has already consumed of the dataset in the current billing period.
pub struct DecisionInput<'a> {
    pub request: &'a AccessRequest,
    pub identity: Result<&'a Principal, &'a AuthError>,
    pub policy: &'a Policy,
    pub used: u64,
    pub now: DateTime<Utc>,
    pub grant_ttl_secs: i64,
    /// A reviewer of the dataset's holder approved this request: the
    /// policy's `pending_review` obligation is met (every other check
    /// still applies, with the policy and quota in force now).
    pub reviewed: bool,
}

fn end_of_day(d: chrono::NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(23, 59, 59).expect("valid time").and_utc()
}

/// Decides one request. The checks run in a fixed order and the first that
/// fails names the reason, so the same input always gets the same code; the
/// order is part of the contract (README, Reason codes).
pub fn evaluate(input: &DecisionInput<'_>) -> Evaluation {
    match decide(input) {
        Ok(eval) => eval,
        Err(denial) => denial.into(),
    }
}

/// A failed check: its stable code, why, and the rules that matched.
struct Denial {
    code: &'static str,
    message: String,
    matched_rules: Vec<String>,
}

impl Denial {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Denial { code, message: message.into(), matched_rules: Vec::new() }
    }
}

impl From<Denial> for Evaluation {
    fn from(d: Denial) -> Self {
        Evaluation { matched_rules: d.matched_rules, ..Evaluation::deny(d.code, d.message) }
    }
}

/// The checks, in their order.
fn decide(input: &DecisionInput<'_>) -> Result<Evaluation, Denial> {
    let principal = input.identity.map_err(|e| Denial::new(e.code(), e.to_string()))?;
    check_window(input.request, input.now)?;
    let (scenario, dataset) = check_catalogue(input)?;
    check_purpose(input.request, scenario, dataset)?;
    check_qualifications(principal, dataset)?;
    let matched_rules = check_rules(input, principal, scenario, dataset)?;
    let quantity = check_quota(input, dataset, &matched_rules)?;
    let held = obligations(input, principal, dataset, matched_rules);
    if !held.review_rules.is_empty() && !input.reviewed {
        return Ok(held.pending_review(dataset));
    }
    Ok(approve(input, scenario, dataset, quantity, held))
}

fn check_window(r: &AccessRequest, now: DateTime<Utc>) -> Result<(), Denial> {
    let Some(w) = &r.window else { return Ok(()) };
    if w.not_after <= w.not_before {
        return Err(Denial::new("request.invalid_window", "window.not_after must be later than window.not_before"));
    }
    if w.not_after < now {
        let message = format!("the requested window ended at {}", w.not_after.to_rfc3339());
        return Err(Denial::new("request.window_lapsed", message));
    }
    Ok(())
}

/// The scenario and dataset, each known and still authorized.
fn check_catalogue<'p>(input: &DecisionInput<'p>) -> Result<(&'p Scenario, &'p Dataset), Denial> {
    let (r, now, catalogue) = (input.request, input.now, input.policy.catalogue());
    let scenario = catalogue.scenarios.get(&r.scenario).ok_or_else(|| {
        let message = format!("scenario {:?} is not an approved scenario", truncate(&r.scenario, 64));
        Denial::new("catalog.unknown_scenario", message)
    })?;
    if end_of_day(scenario.authorized_until) < now {
        let message = format!("authorization of scenario {} ended on {}", scenario.code, scenario.authorized_until);
        return Err(Denial::new("catalog.scenario_lapsed", message));
    }
    let dataset = catalogue.datasets.get(&r.dataset).ok_or_else(|| {
        let message = format!("no registered dataset has code {:?}", truncate(&r.dataset, 64));
        Denial::new("catalog.unknown_dataset", message)
    })?;
    if end_of_day(dataset.registered_until) < now {
        let message = format!("registration of {} expired on {}", dataset.code, dataset.registered_until);
        return Err(Denial::new("catalog.registration_expired", message));
    }
    Ok((scenario, dataset))
}

fn check_purpose(r: &AccessRequest, scenario: &Scenario, dataset: &Dataset) -> Result<(), Denial> {
    if dataset.grade == Grade::Core {
        let message = format!("{} is core data, which is never authorized for operation", dataset.code);
        return Err(Denial::new("policy.core_data", message));
    }
    if !scenario.purposes.contains(&r.purpose.class) {
        let message = format!("purpose class {} does not fit scenario {}", r.purpose.class.as_str(), scenario.code);
        return Err(Denial::new("policy.purpose_not_allowed", message));
    }
    if r.purpose.statement.trim().is_empty() {
        return Err(Denial::new("policy.purpose_not_stated", "purpose.statement must say what the data is for"));
    }
    Ok(())
}

fn check_qualifications(principal: &Principal, dataset: &Dataset) -> Result<(), Denial> {
    let missing: Vec<&str> = dataset
        .requires_qualifications
        .iter()
        .filter(|q| !principal.qualifications.contains(*q))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let message = format!("{} requires qualification(s): {}", dataset.code, missing.join(", "));
    Err(Denial::new("policy.qualification_missing", message))
}

/// Casbin's verdict: the rules that allow the request, or the denial.
fn check_rules(
    input: &DecisionInput<'_>,
    principal: &Principal,
    scenario: &Scenario,
    dataset: &Dataset,
) -> Result<Vec<String>, Denial> {
    let r = input.request;
    let verdict = input
        .policy
        .authorize(&principal.subject, &r.scenario, &r.dataset, r.operation)
        .map_err(|e| Denial::new("policy.evaluation_error", e.to_string()))?;
    if verdict.allowed {
        return Ok(verdict.matched_rules);
    }
    let op = r.operation.as_str();
    let mut denial = if verdict.denied_by_rule {
        Denial::new("policy.denied_by_rule", format!("{op} on {} in {} is denied by rule", dataset.code, scenario.code))
    } else {
        let message = format!("no rule lets {} {op} {} in {}", principal.subject, dataset.code, scenario.code);
        Denial::new("policy.no_matching_rule", message)
    };
    denial.matched_rules = verdict.matched_rules;
    Err(denial)
}

/// How much the request uses, within what is left of the monthly quota.
fn check_quota(input: &DecisionInput<'_>, dataset: &Dataset, matched_rules: &[String]) -> Result<u64, Denial> {
    let price = &dataset.price;
    let Some(quantity) = price.quantity(input.request.volume.as_ref()) else {
        let message = format!("{} is metered per {:?}; volume must say how much", dataset.code, price.unit);
        return Err(Denial::new("request.volume_required", message.to_lowercase()));
    };
    let limit = price.monthly_quota;
    if input.used.saturating_add(quantity) > limit {
        let message = format!("{quantity} more would exceed the monthly quota of {limit} (used {})", input.used);
        return Err(Denial { matched_rules: matched_rules.to_vec(), ..Denial::new("quota.exceeded", message) });
    }
    Ok(quantity)
}

/// What an allowed request carries: the rules that matched (allow rules,
/// then `p2` rules in rule order), obligations (from `p2` rules, then the
/// catalogue's masked fields), and the `p2` rules that hold it for review.
struct Held {
    matched_rules: Vec<String>,
    obligations: Vec<String>,
    review_rules: Vec<String>,
}

fn obligations(
    input: &DecisionInput<'_>,
    principal: &Principal,
    dataset: &Dataset,
    matched_rules: Vec<String>,
) -> Held {
    let r = input.request;
    let mut held = Held { matched_rules, obligations: Vec::new(), review_rules: Vec::new() };
    for (rule, obligation) in input.policy.obligations(&principal.subject, &r.scenario, &r.dataset, r.operation) {
        if obligation == "pending_review" {
            held.review_rules.push(rule.clone());
        } else if !held.obligations.contains(&obligation) {
            held.obligations.push(obligation);
        }
        held.matched_rules.push(rule);
    }
    for field in &dataset.masked_fields {
        let mask = format!("mask:{field}");
        if !held.obligations.contains(&mask) {
            held.obligations.push(mask);
        }
    }
    held
}

impl Held {
    /// A `p2` rule holds the request for a person: no grant, no charge.
    fn pending_review(self, dataset: &Dataset) -> Evaluation {
        let message = format!(
            "a reviewer of {} must approve this request ({})",
            dataset.holder_name,
            self.review_rules.join("; ")
        );
        Evaluation {
            outcome: Outcome::PendingReview,
            reasons: vec![Reason::new("review.required", message)],
            matched_rules: self.matched_rules,
            obligations: self.obligations,
            charge: None,
            grant_expires_at: None,
        }
    }
}

/// Approved: charged progressively (free for public use, metered all the
/// same), with a grant that ends at the earliest of its TTL, the request
/// window, the dataset's registration and the scenario's authorization.
fn approve(input: &DecisionInput<'_>, scenario: &Scenario, dataset: &Dataset, quantity: u64, held: Held) -> Evaluation {
    let (r, price) = (input.request, &dataset.price);
    let charge = price.charge(input.used, quantity);
    let fee_waived = r.purpose.class.is_fee_exempt();
    let (limit, used_after) = (price.monthly_quota, input.used + quantity);
    let charge = ChargeDraft {
        unit: price.unit,
        quantity,
        price_item: price.item.clone(),
        unit_price_fen: charge.unit_price_fen,
        // An on-report item is charged by the host's reports instead.
        amount_fen: if fee_waived || price.charge_at == ChargeAt::Report { 0 } else { charge.amount_fen },
        fee_waived,
        waiver_reason: fee_waived
            .then(|| format!("{} use is free of charge (NDRC 2025 pricing notice)", r.purpose.class.as_str())),
        quota: Quota { limit, used: used_after, remaining: limit - used_after },
    };
    let mut expires_at = (input.now + chrono::Duration::seconds(input.grant_ttl_secs))
        .min(end_of_day(dataset.registered_until))
        .min(end_of_day(scenario.authorized_until));
    if let Some(w) = &r.window {
        expires_at = expires_at.min(w.not_after);
    }
    Evaluation {
        outcome: Outcome::Approved,
        reasons: Vec::new(),
        matched_rules: held.matched_rules,
        obligations: held.obligations,
        charge: Some(charge),
        grant_expires_at: Some(expires_at),
    }
}

#[cfg(test)]
mod tests {
    use crate::contract::REQUEST_SCHEMA;
    use std::collections::BTreeSet;

    use super::*;
    use crate::contract::{Operation, Purpose, PurposeClass, Volume, Window};

    const TRAVEL: &str = "91610131MA6TG1L5X1";
    const MEDICINE: &str = "91110108MA01RX7C4G";
    const RESCUE: &str = "91610000MA6W2QK30C";

    async fn shipped() -> Policy {
        Policy::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .await
            .expect("shipped policies load")
    }

    fn principal(sub: &str, quals: &[&str]) -> Principal {
        Principal {
            subject: sub.into(),
            issuer: "https://idp".into(),
            roles: BTreeSet::from(["data_user".to_owned()]),
            qualifications: quals.iter().map(|q| (*q).to_owned()).collect(),
            token_id: None,
            expires_at: 0,
            organisation: sub.into(),
            name: None,
        }
    }

    fn request(scenario: &str, dataset: &str, op: Operation, class: PurposeClass) -> AccessRequest {
        AccessRequest {
            schema: REQUEST_SCHEMA.into(),
            request_id: "r-1".into(),
            token: None,
            dataset: dataset.into(),
            operation: op,
            scenario: scenario.into(),
            purpose: Purpose { class, statement: "a stated purpose".into() },
            fields: vec![],
            volume: None,
            window: None,
            submitted_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T10:00:00Z".parse().unwrap()
    }

    fn eval(policy: &Policy, p: &Principal, r: &AccessRequest, used: u64) -> Evaluation {
        evaluate(&DecisionInput {
            request: r,
            identity: Ok(p),
            policy,
            used,
            now: now(),
            grant_ttl_secs: 3600,
            reviewed: false,
        })
    }

    fn code(e: &Evaluation) -> &str {
        e.reasons.first().map_or("", |r| r.code.as_str())
    }

    #[tokio::test]
    async fn a_model_that_cannot_judge_the_request_denies_it_as_an_evaluation_error() {
        // A matcher that fails at run time for one scenario only (a division
        // by zero when the scenario code has 13 characters): the load-time
        // probe passes, the live request cannot be judged.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let model = "[request_definition]\nr = sub, dom, obj, act\n[policy_definition]\np = sub, dom, obj, act, eft\n\
                     [role_definition]\ng = _, _, _\ng2 = _, _\n[policy_effect]\ne = some(where (p.eft == allow))\n\
                     [matchers]\nm = g(r.sub, p.sub, r.dom) && 100 / (r.dom.len() - 13) > 0 && r.act == p.act\n";
        let rules: String = read("policy.csv").lines().filter(|l| !l.starts_with("p2")).collect::<Vec<_>>().join("\n");
        let policy = Policy::from_texts(model, &rules, &read("catalogue.toml")).await.unwrap();
        let r = request("smart-tourism", "GX-610100-TOUR-0001", Operation::Query, PurposeClass::Industry);
        let e = eval(&policy, &principal(TRAVEL, &[]), &r, 0);
        assert_eq!((e.outcome, code(&e)), (Outcome::Denied, "policy.evaluation_error"), "{:?}", e.reasons);
    }

    #[tokio::test]
    async fn admitted_enterprise_is_approved_and_charged_progressively() {
        let policy = shipped().await;
        assert!(policy.is_indexed(), "the shipped model is decided through the index");
        let r = request("smart-tourism", "GX-610100-TOUR-0001", Operation::Query, PurposeClass::Industry);
        let e = eval(&policy, &principal(TRAVEL, &[]), &r, 9_999);
        assert_eq!(e.outcome, Outcome::Approved, "{:?}", e.reasons);
        assert_eq!(e.matched_rules, vec!["p, tourism-developer, smart-tourism, tourism-data, query, allow"]);
        let c = e.charge.unwrap();
        assert_eq!((c.quantity, c.unit_price_fen, c.amount_fen, c.fee_waived), (1, 50, 50, false));
        assert_eq!(c.quota.remaining, 100_000 - 10_000);
        // The 10 001st call of the month is in the second tier.
        let e = eval(&policy, &principal(TRAVEL, &[]), &r, 10_000);
        assert_eq!(e.charge.unwrap().amount_fen, 30);
        assert_eq!(e.grant_expires_at, Some(now() + chrono::Duration::hours(1)));
    }

    #[tokio::test]
    async fn public_governance_use_is_free_but_metered() {
        let policy = shipped().await;
        let r = request("highway-rescue", "GX-610000-HWAY-0004", Operation::Query, PurposeClass::PublicGovernance);
        let e = eval(&policy, &principal(RESCUE, &[]), &r, 0);
        assert_eq!(e.outcome, Outcome::Approved, "{:?}", e.reasons);
        let c = e.charge.unwrap();
        assert!(c.fee_waived);
        assert_eq!((c.amount_fen, c.unit_price_fen, c.quantity), (0, 100, 1));
        assert!(c.waiver_reason.unwrap().contains("public_governance"));
        // Important data queried: aggregates only, no raw export.
        assert_eq!(e.obligations, vec!["aggregate_only", "no_raw_export"]);
    }

    #[tokio::test]
    async fn each_domain_rule_denies_with_its_own_code() {
        let policy = shipped().await;
        let travel = principal(TRAVEL, &[]);
        let doctor = principal(MEDICINE, &["medical_research"]);
        let rescue = principal(RESCUE, &[]);
        let unqualified = principal(MEDICINE, &[]);
        use Operation::*;
        use PurposeClass::*;
        let cases: Vec<(&Principal, AccessRequest, &str)> = vec![
            (&travel, request("smart-tourism", "GX-610000-POPU-0015", Query, Industry), "policy.core_data"),
            (
                &travel,
                request("smart-tourism", "GX-610100-TOUR-0001", Query, PublicWelfare),
                "policy.purpose_not_allowed",
            ),
            (&travel, request("mars-colony", "GX-610100-TOUR-0001", Query, Industry), "catalog.unknown_scenario"),
            (&travel, request("smart-tourism", "GX-000000-NONE-0000", Query, Industry), "catalog.unknown_dataset"),
            (&travel, request("smart-tourism", "GX-610100-TOUR-0001", Download, Industry), "policy.no_matching_rule"),
            (
                &travel,
                request("highway-rescue", "GX-610000-HWAY-0004", Query, PublicGovernance),
                "policy.no_matching_rule",
            ),
            // Important data: the scenario grant allows api_call, the grade rule denies it.
            (
                &rescue,
                request("highway-rescue", "GX-610000-HWAY-0004", ApiCall, PublicGovernance),
                "policy.denied_by_rule",
            ),
            // Sensitive personal information: privacy computing only.
            (&doctor, request("precision-medicine", "GX-110000-HLTH-0007", Query, Industry), "policy.denied_by_rule"),
            (
                &unqualified,
                request("precision-medicine", "GX-110000-HLTH-0007", PrivacyCompute, Industry),
                "policy.qualification_missing",
            ),
            // Metered per record, but no volume given.
            (&travel, request("smart-tourism", "GX-610100-TRAN-0002", Query, Industry), "request.volume_required"),
        ];
        for (p, r, want) in cases {
            let e = eval(&policy, p, &r, 0);
            assert_eq!(e.outcome, Outcome::Denied, "{} {} {:?}", r.scenario, r.dataset, r.operation);
            assert_eq!(code(&e), want, "{} {} {:?}: {:?}", r.scenario, r.dataset, r.operation, e.reasons);
            assert!(e.charge.is_none() && e.grant_expires_at.is_none());
        }
    }

    #[tokio::test]
    async fn deny_rule_is_reported_among_matched_rules() {
        let policy = shipped().await;
        let r = request("highway-rescue", "GX-610000-HWAY-0004", Operation::ApiCall, PurposeClass::PublicGovernance);
        let e = eval(&policy, &principal(RESCUE, &[]), &r, 0);
        assert!(
            e.matched_rules.iter().any(|m| m == "p, *, *, grade:important, api_call, deny"),
            "{:?}",
            e.matched_rules
        );
    }

    #[tokio::test]
    async fn a_review_obligation_holds_the_request_without_grant_or_charge() {
        let policy = shipped().await;
        let r = request("smart-tourism", "GX-610100-TOUR-0001", Operation::ModelTraining, PurposeClass::Industry);
        let e = eval(&policy, &principal(TRAVEL, &[]), &r, 0);
        assert_eq!(e.outcome, Outcome::PendingReview);
        assert_eq!(code(&e), "review.required");
        assert!(e.matched_rules.contains(&"p2, *, smart-tourism, *, model_training, pending_review".to_owned()));
        assert!(e.charge.is_none() && e.grant_expires_at.is_none());
    }

    #[tokio::test]
    async fn quota_is_enforced_per_period() {
        let policy = shipped().await;
        let r = request("precision-medicine", "GX-110000-HLTH-0007", Operation::PrivacyCompute, PurposeClass::Industry);
        let p = principal(MEDICINE, &["medical_research"]);
        assert_eq!(eval(&policy, &p, &r, 999).outcome, Outcome::Approved);
        let e = eval(&policy, &p, &r, 1000);
        assert_eq!(code(&e), "quota.exceeded");
    }

    #[tokio::test]
    async fn auth_failure_and_bad_windows_are_denied_first() {
        let policy = shipped().await;
        let r = request("smart-tourism", "GX-610100-TOUR-0001", Operation::Query, PurposeClass::Industry);
        let err = AuthError::Expired;
        let e = evaluate(&DecisionInput {
            request: &r,
            identity: Err(&err),
            policy: &policy,
            used: 0,
            now: now(),
            grant_ttl_secs: 60,
            reviewed: false,
        });
        assert_eq!(code(&e), "auth.token_expired");

        let p = principal(TRAVEL, &[]);
        let mut r2 = r.clone();
        r2.window = Some(Window {
            not_before: now() - chrono::Duration::days(2),
            not_after: now() - chrono::Duration::days(1),
        });
        assert_eq!(code(&eval(&policy, &p, &r2, 0)), "request.window_lapsed");
        r2.window = Some(Window { not_before: now(), not_after: now() });
        assert_eq!(code(&eval(&policy, &p, &r2, 0)), "request.invalid_window");
        // A window shorter than the TTL bounds the grant.
        r2.window = Some(Window { not_before: now(), not_after: now() + chrono::Duration::minutes(5) });
        let e = eval(&policy, &p, &r2, 0);
        assert_eq!(e.grant_expires_at, Some(now() + chrono::Duration::minutes(5)));
    }

    #[tokio::test]
    async fn record_metering_uses_the_requested_volume() {
        let policy = shipped().await;
        let mut r = request("smart-tourism", "GX-610100-TRAN-0002", Operation::Query, PurposeClass::Industry);
        r.volume = Some(Volume { records: Some(1200), bytes: None });
        let e = eval(&policy, &principal(TRAVEL, &[]), &r, 0);
        let c = e.charge.expect("approved");
        // Counted against the quota; charged by the host's reports (on report).
        assert_eq!((c.quantity, c.amount_fen, c.quota.used), (1200, 0, 1200));
    }

    #[test]
    fn decode_sorts_bad_input_into_stable_codes() {
        let ok = r#"{"schema":"tollgate.access_request/v1","request_id":"r1","dataset":"d","operation":"query","scenario":"s","purpose":{"class":"industry","statement":"x"}}"#;
        let d = decode(ok.as_bytes(), Some(b"Bearer abc"), 1024).unwrap();
        assert_eq!(d.token.as_deref(), Some("abc"));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\xff\xfe", "input.invalid_utf8"),
            (b"{\"schema\":", "input.invalid_json"),
            (b"{}", "input.missing_schema"),
            (br#"{"schema":"tollgate.access_request/v9"}"#, "input.unsupported_schema"),
            (br#"{"schema":"tollgate.access_request/v1","request_id":"r1"}"#, "input.invalid_request"),
            (br#"{"schema":"tollgate.access_request/v1","request_id":"","dataset":"d","operation":"query","scenario":"s","purpose":{"class":"industry","statement":"x"}}"#, "input.invalid_request"),
            (br#"{"schema":"tollgate.access_request/v1","request_id":"r1","dataset":"d","operation":"steal","scenario":"s","purpose":{"class":"industry","statement":"x"}}"#, "input.invalid_request"),
            (br#"{"schema":"tollgate.access_request/v1","request_id":"r1","request_id":"r2","dataset":"d","operation":"query","scenario":"s","purpose":{"class":"industry","statement":"x"}}"#, "input.invalid_request"),
            (br#"{"schema":"tollgate.access_request/v1","request_id":"r1","subject":"91610131MA6TG1L5X1","dataset":"d","operation":"query","scenario":"s","purpose":{"class":"industry","statement":"x"}}"#, "input.invalid_request"),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input, None, 1024).unwrap_err().code, want, "{}", String::from_utf8_lossy(input));
        }
        assert_eq!(decode(ok.as_bytes(), None, 10).unwrap_err().code, "input.too_large");
    }
}
