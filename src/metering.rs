//! Pricing and quotas. Money is integer fen throughout; a float never touches
//! an amount.

use serde::{Deserialize, Serialize};

use crate::contract::{Basis, Unit, UsageRecord, Volume};

/// One step of a progressive price: units up to `up_to` (cumulative within
/// the billing period) cost `unit_price_fen` each; the last tier has no bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(default)]
    pub up_to: Option<u64>,
    pub unit_price_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceItem {
    /// Identifies the item in the operator's published fee list.
    pub item: String,
    pub unit: Unit,
    /// Progressive tiers, cheapest last by convention; at least one.
    pub tiers: Vec<Tier>,
    /// The government-guided cap per unit; no tier may exceed it.
    pub cap_fen: i64,
    /// Units a subject may use per dataset per calendar month (UTC).
    pub monthly_quota: u64,
    /// When the item is charged: at approval (the requested quantity) or
    /// on report (what the data host says it served).
    #[serde(default)]
    pub charge_at: ChargeAt,
}

/// When a price item is charged. Every usage record carries its amount,
/// so finance sums `amount_fen` over all of them: an approval of an
/// on-report item and a report on an at-approval item carry 0 fen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeAt {
    /// Per call, as requested: the approval's usage record is the charge.
    #[default]
    Approval,
    /// Per record or volume served: each accepted usage report is priced
    /// at the tier the enterprise has reached in the period.
    Report,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price item {0} has no tiers")]
    NoTiers(String),
    #[error("price item {item}: tier price {price} fen exceeds the cap of {cap} fen")]
    AboveCap { item: String, price: i64, cap: i64 },
    #[error("price item {0}: negative price")]
    Negative(String),
    #[error("price item {0}: tier bounds must increase and only the last tier may be unbounded")]
    BadTiers(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Price of the first unit of this request (its tier's price).
    pub unit_price_fen: i64,
    pub amount_fen: i64,
}

impl PriceItem {
    pub fn validate(&self) -> Result<(), PriceError> {
        if self.tiers.is_empty() {
            return Err(PriceError::NoTiers(self.item.clone()));
        }
        let mut prev = 0u64;
        for (i, t) in self.tiers.iter().enumerate() {
            if t.unit_price_fen < 0 || self.cap_fen < 0 {
                return Err(PriceError::Negative(self.item.clone()));
            }
            if t.unit_price_fen > self.cap_fen {
                return Err(PriceError::AboveCap {
                    item: self.item.clone(),
                    price: t.unit_price_fen,
                    cap: self.cap_fen,
                });
            }
            match t.up_to {
                Some(b) if b > prev => prev = b,
                None if i == self.tiers.len() - 1 => {}
                _ => return Err(PriceError::BadTiers(self.item.clone())),
            }
        }
        Ok(())
    }

    /// Units this request consumes.
    pub fn quantity(&self, volume: Option<&Volume>) -> Option<u64> {
        match self.unit {
            Unit::Call => Some(1),
            Unit::Record => volume.and_then(|v| v.records).filter(|&r| r > 0),
            Unit::Megabyte => volume.and_then(|v| v.bytes).filter(|&b| b > 0).map(|b| b.div_ceil(1 << 20)),
        }
    }

    /// Progressive price of `quantity` units when `used` were already billed
    /// this period. Saturating: an absurd quantity cannot wrap to a credit.
    pub fn charge(&self, used: u64, quantity: u64) -> Charge {
        let mut amount: i64 = 0;
        let mut first_price = None;
        let mut lower = 0u64;
        let start = used;
        let end = used.saturating_add(quantity);
        for t in &self.tiers {
            let upper = t.up_to.unwrap_or(u64::MAX);
            let from = start.max(lower);
            let to = end.min(upper);
            if to > from {
                first_price.get_or_insert(t.unit_price_fen);
                let units = i64::try_from(to - from).unwrap_or(i64::MAX);
                amount = amount.saturating_add(units.saturating_mul(t.unit_price_fen));
            }
            lower = upper;
            if lower >= end {
                break;
            }
        }
        Charge {
            unit_price_fen: first_price.unwrap_or_else(|| self.tiers.last().map_or(0, |t| t.unit_price_fen)),
            amount_fen: amount,
        }
    }
}

/// One grant's approval beside what its data host reported: the line
/// `usage reconcile` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantUsage {
    pub decision_id: String,
    pub subject: String,
    pub dataset: String,
    pub unit: Unit,
    /// The approval: quantity and its charge.
    pub approved: u64,
    pub approved_fen: i64,
    /// Accepted reports under the grant, whenever received.
    pub reports: u64,
    pub reported: u64,
    pub reported_fen: i64,
    /// Reports flagged `usage.exceeds_grant`.
    pub flagged: u64,
}

/// How a grant's reports compare with its approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconciled {
    /// No report yet: nothing known to be served.
    NoReport,
    /// Reported up to what was approved.
    Within,
    /// Reported beyond it (or beyond the quota): flagged.
    Over,
}

impl GrantUsage {
    pub fn status(&self) -> Reconciled {
        match self.reports {
            0 => Reconciled::NoReport,
            _ if self.reported > self.approved || self.flagged > 0 => Reconciled::Over,
            _ => Reconciled::Within,
        }
    }

    /// What the grant cost in all: its approval's charge and its reports'.
    pub fn charged_fen(&self) -> i64 {
        self.approved_fen.saturating_add(self.reported_fen)
    }
}

/// One line of `usage report`: an enterprise's use of a dataset in a
/// scenario under a price item, in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    pub subject: String,
    pub dataset: String,
    pub scenario: String,
    pub price_item: String,
    /// Approvals' records, and the units they requested.
    pub approvals: u64,
    pub approved_units: u64,
    /// Accepted reports' records, and the units hosts served.
    pub reports: u64,
    pub reported_units: u64,
    /// Fen charged (approvals' and reports' alike).
    pub charged_fen: i64,
    /// Of the records above, those free of charge (public use), apart.
    pub waived_records: u64,
    pub waived_units: u64,
}

/// Usage records per scenario per day of a billing period (`YYYY-MM`),
/// for the charts of `usage report --chart` and the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    pub days: usize,
    /// Per scenario, records per day (index 0 = the 1st).
    pub series: std::collections::BTreeMap<String, Vec<u64>>,
}

impl DailyUsage {
    pub fn new(period: &str) -> Self {
        let first = chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d").unwrap_or_default();
        let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
        let days = usize::try_from((next - first).num_days()).unwrap_or(31).max(1);
        DailyUsage { days, series: Default::default() }
    }

    pub fn add(&mut self, u: &UsageRecord) {
        let day = chrono::Datelike::day(&u.recorded_at) as usize;
        let days = self.days;
        self.series.entry(u.scenario.clone()).or_insert_with(|| vec![0; days])[day.clamp(1, days) - 1] += 1;
    }
}

/// Usage records summed into lines by (subject, dataset, scenario, price
/// item), in that order.
#[derive(Debug, Default)]
pub struct UsageSummary(std::collections::BTreeMap<(String, String, String, String), UsageLine>);

impl UsageSummary {
    pub fn add(&mut self, u: &UsageRecord) {
        let key = (u.subject.clone(), u.dataset.clone(), u.scenario.clone(), u.price_item.clone());
        let line = self.0.entry(key).or_insert_with(|| UsageLine {
            subject: u.subject.clone(),
            dataset: u.dataset.clone(),
            scenario: u.scenario.clone(),
            price_item: u.price_item.clone(),
            ..UsageLine::default()
        });
        match u.basis {
            Basis::Approval => (line.approvals += 1, line.approved_units += u.quantity),
            Basis::Report => (line.reports += 1, line.reported_units += u.quantity),
        };
        line.charged_fen = line.charged_fen.saturating_add(u.amount_fen);
        if u.fee_waived {
            line.waived_records += 1;
            line.waived_units += u.quantity;
        }
    }

    pub fn lines(self) -> Vec<UsageLine> {
        self.0.into_values().collect()
    }
}

/// The operator's revenue in a year against its permitted cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RevenueAgainstCap {
    pub revenue_fen: i64,
    pub cap_fen: i64,
    /// Beyond the cap: to be deducted in the next period.
    pub excess_fen: i64,
}

impl RevenueAgainstCap {
    pub fn new(revenue_fen: i64, cap_fen: i64) -> Self {
        RevenueAgainstCap { revenue_fen, cap_fen, excess_fen: revenue_fen.saturating_sub(cap_fen).max(0) }
    }

    pub fn exceeded(&self) -> bool {
        self.excess_fen > 0
    }
}

/// `YYYY-MM` billing period of `at`.
pub fn period_of(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiered() -> PriceItem {
        PriceItem {
            item: "tour-flow-api".into(),
            unit: Unit::Call,
            tiers: vec![
                Tier { up_to: Some(100), unit_price_fen: 50 },
                Tier { up_to: Some(1000), unit_price_fen: 30 },
                Tier { up_to: None, unit_price_fen: 10 },
            ],
            cap_fen: 80,
            monthly_quota: 10_000,
            charge_at: ChargeAt::Approval,
        }
    }

    #[test]
    fn progressive_price_spans_tiers() {
        let p = tiered();
        assert_eq!(p.charge(0, 1), Charge { unit_price_fen: 50, amount_fen: 50 });
        // 10 units at 50, then 5 at 30.
        assert_eq!(p.charge(90, 15), Charge { unit_price_fen: 50, amount_fen: 10 * 50 + 5 * 30 });
        // From 999: one at 30, then 9 at 10.
        assert_eq!(p.charge(999, 10), Charge { unit_price_fen: 30, amount_fen: 30 + 90 });
        assert_eq!(p.charge(5000, 3).amount_fen, 30);
    }

    #[test]
    fn quantity_follows_the_unit() {
        let mut p = tiered();
        assert_eq!(p.quantity(None), Some(1));
        p.unit = Unit::Record;
        assert_eq!(p.quantity(None), None);
        assert_eq!(p.quantity(Some(&Volume { records: Some(250), bytes: None })), Some(250));
        p.unit = Unit::Megabyte;
        assert_eq!(p.quantity(Some(&Volume { records: None, bytes: Some((1 << 20) + 1) })), Some(2));
    }

    #[test]
    fn prices_above_the_cap_are_rejected() {
        let mut p = tiered();
        assert!(p.validate().is_ok());
        p.cap_fen = 40;
        assert!(matches!(p.validate(), Err(PriceError::AboveCap { .. })));
        let mut p = tiered();
        p.tiers[0].up_to = None;
        assert!(matches!(p.validate(), Err(PriceError::BadTiers(_))));
    }

    #[test]
    fn huge_quantities_saturate_instead_of_wrapping() {
        let p = tiered();
        assert!(p.charge(0, u64::MAX).amount_fen > 0);
    }

    #[test]
    fn a_usage_summary_sums_approvals_and_reports_per_line_with_free_use_apart() {
        let record = |subject: &str, basis: Basis, quantity: u64, amount_fen: i64, fee_waived: bool| UsageRecord {
            schema: "tollgate.usage/v1".into(),
            usage_id: format!("{subject}-{quantity}-{amount_fen}"),
            request_id: "r".into(),
            decision_id: "d".into(),
            subject: subject.into(),
            dataset: "GX-610100-TRAN-0002".into(),
            scenario: "smart-tourism".into(),
            operation: crate::contract::Operation::Query,
            purpose_class: crate::contract::PurposeClass::Industry,
            unit: Unit::Record,
            quantity,
            price_item: "transit-records".into(),
            unit_price_fen: 1,
            amount_fen,
            fee_waived,
            waiver_reason: None,
            period: "2026-12".into(),
            quota: crate::contract::Quota { limit: 10, used: 0, remaining: 10 },
            recorded_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            basis,
            report: None,
            flags: Vec::new(),
        };
        let mut s = UsageSummary::default();
        for r in [
            record("B", Basis::Approval, 1500, 0, false),
            record("B", Basis::Report, 1000, 1000, false),
            record("B", Basis::Report, 700, 700, false),
            record("A", Basis::Approval, 300, 0, true),
            record("A", Basis::Report, 300, 0, true),
        ] {
            s.add(&r);
        }
        let lines = s.lines();
        assert_eq!(lines.iter().map(|l| l.subject.as_str()).collect::<Vec<_>>(), ["A", "B"], "in key order");
        let b = &lines[1];
        assert_eq!(
            (b.approvals, b.approved_units, b.reports, b.reported_units, b.charged_fen, b.waived_records),
            (1, 1500, 2, 1700, 1700, 0)
        );
        let a = &lines[0];
        assert_eq!((a.charged_fen, a.waived_records, a.waived_units), (0, 2, 600));
        let r = RevenueAgainstCap::new(1700, 1500);
        assert_eq!((r.excess_fen, r.exceeded()), (200, true));
        assert!(!RevenueAgainstCap::new(1500, 1500).exceeded());
    }
}
