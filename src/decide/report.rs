//! A data host's usage report, judged as a pure function: who reports
//! (a `data_host` of the dataset's holder), on which grant (known, covering
//! what was served, live throughout the time served), and what it costs
//! (priced at the tier the enterprise has reached in the period, when the
//! price item charges on report). A report beyond what the grant allowed
//! is accepted and flagged, never dropped: the host did serve it.

use chrono::{DateTime, Utc};

use crate::auth::{AuthError, Principal};
use crate::contract::{Quota, Reason, UsageReport};
use crate::metering::{ChargeAt, PriceItem};

/// The role a token must carry to report usage.
pub const DATA_HOST_ROLE: &str = "data_host";

/// What a report is checked against of a grant, as tollgate recorded it
/// when it approved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantFacts {
    pub decision_id: String,
    /// The data holder department (the grant's `aud`).
    pub holder: String,
    pub dataset: String,
    pub operation: String,
    pub fee_waived: bool,
    /// The quantity approved (the request's volume in the item's unit).
    pub approved: u64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Everything a report is judged on.
pub struct ReportInput<'a> {
    pub report: &'a UsageReport,
    pub host: Result<&'a Principal, &'a AuthError>,
    /// The grant, when one was issued with the report's decision id.
    pub grant: Option<&'a GrantFacts>,
    /// The dataset's price item in the catalogue in force.
    pub price: Option<&'a PriceItem>,
    /// Units reported under this grant before.
    pub reported_for_grant: u64,
    /// Units reported for the grant's subject and dataset this period
    /// before (the tier position of an on-report item).
    pub reported_in_period: u64,
    pub now: DateTime<Utc>,
    /// How far in the future `served_to` may be (clock skew).
    pub leeway_secs: i64,
}

/// An accepted report's charge and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportCharge {
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    pub fee_waived: bool,
    pub quota: Quota,
    /// `usage.exceeds_grant` when the grant's volume or the quota was
    /// exceeded; empty otherwise.
    pub flags: Vec<Reason>,
}

/// Accepted with its charge, or refused with one stable reason.
pub fn evaluate_report(input: &ReportInput<'_>) -> Result<ReportCharge, Reason> {
    let r = input.report;
    let refuse = |code: &str, message: String| Err(Reason::new(code, message));
    let host = input.host.map_err(|e| Reason::new(e.code(), e.to_string()))?;
    if !host.roles.contains(DATA_HOST_ROLE) {
        return refuse("report.not_data_host", format!("{} lacks the {DATA_HOST_ROLE} role", host.subject));
    }
    let Some(grant) = input.grant else {
        return refuse("report.unknown_grant", format!("no grant was issued with decision id {}", r.decision_id));
    };
    if host.organisation != grant.holder {
        return refuse(
            "report.not_holder",
            format!("{} does not hold {}; its holder {} hosts it", host.organisation, grant.dataset, grant.holder),
        );
    }
    if r.dataset != grant.dataset || r.operation.as_str() != grant.operation {
        return refuse(
            "report.scope_mismatch",
            format!(
                "grant {} covers {} {}, not {} {}",
                grant.decision_id,
                grant.operation,
                grant.dataset,
                r.operation.as_str(),
                r.dataset
            ),
        );
    }
    let Some(price) = input.price else {
        return refuse("report.unknown_grant", format!("dataset {} is no longer in the catalogue", grant.dataset));
    };
    if r.unit != price.unit {
        return refuse(
            "report.unit_mismatch",
            format!("{} is priced per {:?}, not per {:?}", grant.dataset, price.unit, r.unit),
        );
    }
    check_served(input, grant)?;
    Ok(charge(input, grant, price))
}

/// The time served must be a real span, not in the future, and inside the
/// grant's life: issued before, not expired, not revoked.
fn check_served(input: &ReportInput<'_>, grant: &GrantFacts) -> Result<(), Reason> {
    let (from, to) = (input.report.served_from, input.report.served_to);
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if to < from || to > input.now + chrono::Duration::seconds(input.leeway_secs) {
        return Err(Reason::new(
            "report.invalid_period",
            format!("served {} to {} is no span up to now", at(from), at(to)),
        ));
    }
    if from < grant.issued_at - chrono::Duration::seconds(input.leeway_secs) {
        return Err(Reason::new(
            "report.before_grant",
            format!(
                "served from {}, before grant {} was issued at {}",
                at(from),
                grant.decision_id,
                at(grant.issued_at)
            ),
        ));
    }
    if let Some(revoked) = grant.revoked_at.filter(|r| to > *r) {
        return Err(Reason::new(
            "report.grant_revoked",
            format!("served until {}, after grant {} was revoked at {}", at(to), grant.decision_id, at(revoked)),
        ));
    }
    if to > grant.expires_at {
        return Err(Reason::new(
            "report.grant_expired",
            format!("served until {}, after grant {} expired at {}", at(to), grant.decision_id, at(grant.expires_at)),
        ));
    }
    Ok(())
}

/// Priced at the period's tier position when the item charges on report
/// (free for public use); flagged when beyond the grant or the quota.
fn charge(input: &ReportInput<'_>, grant: &GrantFacts, price: &PriceItem) -> ReportCharge {
    let units = input.report.units;
    let (used, for_grant) = (input.reported_in_period, input.reported_for_grant);
    let mut flags = Vec::new();
    if for_grant.saturating_add(units) > grant.approved {
        flags.push(Reason::new(
            "usage.exceeds_grant",
            format!(
                "{} units reported under grant {} which allowed {}",
                for_grant.saturating_add(units),
                grant.decision_id,
                grant.approved
            ),
        ));
    }
    let after = used.saturating_add(units);
    if after > price.monthly_quota {
        flags.push(Reason::new(
            "usage.exceeds_grant",
            format!("{after} units reported this period against a monthly quota of {}", price.monthly_quota),
        ));
    }
    let priced = (price.charge_at == ChargeAt::Report && !grant.fee_waived).then(|| price.charge(used, units));
    ReportCharge {
        unit_price_fen: priced.map_or(0, |c| c.unit_price_fen),
        amount_fen: priced.map_or(0, |c| c.amount_fen),
        fee_waived: grant.fee_waived,
        quota: Quota { limit: price.monthly_quota, used: after, remaining: price.monthly_quota.saturating_sub(after) },
        flags,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::TimeZone;

    use super::*;
    use crate::contract::{Operation, USAGE_REPORT_SCHEMA, Unit};
    use crate::metering::Tier;

    const HOLDER: &str = "11610100MB00014441";

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    fn host(org: &str, roles: &[&str]) -> Principal {
        Principal {
            subject: org.into(),
            issuer: "idp".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            qualifications: BTreeSet::new(),
            token_id: None,
            expires_at: 0,
            organisation: org.into(),
            name: None,
        }
    }

    fn grant() -> GrantFacts {
        GrantFacts {
            decision_id: "d-1".into(),
            holder: HOLDER.into(),
            dataset: "GX-610100-TRAN-0002".into(),
            operation: "query".into(),
            fee_waived: false,
            approved: 1500,
            issued_at: t(8),
            expires_at: t(12),
            revoked_at: None,
        }
    }

    /// 2 fen up to 1000 records a period, 1 fen beyond; charged on report.
    fn price() -> PriceItem {
        PriceItem {
            item: "transit-records".into(),
            unit: Unit::Record,
            tiers: vec![Tier { up_to: Some(1000), unit_price_fen: 2 }, Tier { up_to: None, unit_price_fen: 1 }],
            cap_fen: 2,
            monthly_quota: 5000,
            charge_at: ChargeAt::Report,
        }
    }

    fn report(units: u64) -> UsageReport {
        UsageReport {
            schema: USAGE_REPORT_SCHEMA.into(),
            report_id: "rep-1".into(),
            decision_id: "d-1".into(),
            dataset: "GX-610100-TRAN-0002".into(),
            operation: Operation::Query,
            units,
            unit: Unit::Record,
            served_from: t(9),
            served_to: t(10),
            token: None,
        }
    }

    fn judge(
        r: &UsageReport,
        h: &Principal,
        g: &GrantFacts,
        p: &PriceItem,
        before: (u64, u64),
    ) -> Result<ReportCharge, Reason> {
        judge_as(r, Ok(h), Some(g), p, before)
    }

    /// As [`judge`], for a token that failed or a grant that is unknown.
    fn judge_as(
        r: &UsageReport,
        host: Result<&Principal, &AuthError>,
        grant: Option<&GrantFacts>,
        p: &PriceItem,
        before: (u64, u64),
    ) -> Result<ReportCharge, Reason> {
        evaluate_report(&ReportInput {
            report: r,
            host,
            grant,
            price: Some(p),
            reported_for_grant: before.0,
            reported_in_period: before.1,
            now: t(11),
            leeway_secs: 60,
        })
    }

    #[test]
    fn a_report_is_priced_at_the_tier_the_enterprise_reached_in_the_period() {
        let h = host(HOLDER, &[DATA_HOST_ROLE]);
        // 900 reported this period before: 100 at 2 fen, 300 at 1 fen.
        let c = judge(&report(400), &h, &grant(), &price(), (0, 900)).unwrap();
        assert_eq!((c.unit_price_fen, c.amount_fen, c.quota.used, c.quota.remaining), (2, 500, 1300, 3700));
        assert!(c.flags.is_empty());
        // Wholly in the second tier.
        let c = judge(&report(400), &h, &grant(), &price(), (0, 1000)).unwrap();
        assert_eq!((c.unit_price_fen, c.amount_fen), (1, 400));
        // Free use is metered, not charged; an at-approval item is charged at approval.
        let waived = GrantFacts { fee_waived: true, ..grant() };
        let c = judge(&report(400), &h, &waived, &price(), (0, 0)).unwrap();
        assert_eq!((c.amount_fen, c.fee_waived), (0, true));
        let at_approval = PriceItem { charge_at: ChargeAt::Approval, ..price() };
        assert_eq!(judge(&report(400), &h, &grant(), &at_approval, (0, 0)).unwrap().amount_fen, 0);
    }

    #[test]
    fn a_report_beyond_the_grant_or_the_quota_is_accepted_charged_and_flagged() {
        let h = host(HOLDER, &[DATA_HOST_ROLE]);
        // The grant allowed 1500; 1200 reported before, 400 now.
        let c = judge(&report(400), &h, &grant(), &price(), (1200, 1200)).unwrap();
        assert_eq!(c.flags.len(), 1, "{:?}", c.flags);
        assert_eq!(c.flags[0].code, "usage.exceeds_grant");
        assert!(c.flags[0].message.contains("1600 units reported under grant d-1 which allowed 1500"));
        assert_eq!(c.amount_fen, 400);
        // The period's quota of 5000 passed too.
        let c = judge(&report(400), &h, &grant(), &price(), (1200, 4800)).unwrap();
        assert_eq!(c.flags.iter().filter(|f| f.code == "usage.exceeds_grant").count(), 2);
        assert_eq!(c.quota.remaining, 0);
    }

    #[test]
    fn each_kind_of_refused_report_has_its_stable_reason_code() {
        let ok = host(HOLDER, &[DATA_HOST_ROLE]);
        let code = |r: UsageReport, h: &Principal, g: GrantFacts| judge(&r, h, &g, &price(), (0, 0)).unwrap_err().code;
        assert_eq!(code(report(1), &host(HOLDER, &["data_user"]), grant()), "report.not_data_host");
        assert_eq!(code(report(1), &host("11610000MB00011852", &[DATA_HOST_ROLE]), grant()), "report.not_holder");
        let other = UsageReport { dataset: "GX-610100-TOUR-0001".into(), ..report(1) };
        assert_eq!(code(other, &ok, grant()), "report.scope_mismatch");
        let download = UsageReport { operation: Operation::Download, ..report(1) };
        assert_eq!(code(download, &ok, grant()), "report.scope_mismatch");
        let bytes = UsageReport { unit: Unit::Megabyte, ..report(1) };
        assert_eq!(code(bytes, &ok, grant()), "report.unit_mismatch");
        let backwards = UsageReport { served_from: t(10), served_to: t(9), ..report(1) };
        assert_eq!(code(backwards, &ok, grant()), "report.invalid_period");
        let future = UsageReport { served_to: t(13), ..report(1) };
        assert_eq!(code(future, &ok, grant()), "report.invalid_period");
        let early = UsageReport { served_from: t(7), ..report(1) };
        assert_eq!(code(early, &ok, grant()), "report.before_grant");
        let revoked = GrantFacts { revoked_at: Some(t(9)), ..grant() };
        assert_eq!(code(report(1), &ok, revoked), "report.grant_revoked");
        let expired = GrantFacts { expires_at: t(9), ..grant() };
        assert_eq!(code(report(1), &ok, expired), "report.grant_expired");
        let unknown = judge_as(&report(1), Ok(&ok), None, &price(), (0, 0));
        assert_eq!(unknown.unwrap_err().code, "report.unknown_grant");
        let failed = judge_as(&report(1), Err(&AuthError::Missing), Some(&grant()), &price(), (0, 0));
        assert_eq!(failed.unwrap_err().code, AuthError::Missing.code());
    }
}
