//! The yearly disclosure the pricing rules ask of authorized bodies and
//! operators (by the end of March, for the previous year): grants issued
//! per scenario and enterprise, each product's price ceiling and tiers
//! beside the price actually charged, and revenue against the permitted
//! cap. Built from usage records one at a time (a year of them is never
//! held at once) and the catalogue in force; pure, so its figures are
//! tested without a database.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::contract::{Basis, UsageRecord};
use crate::metering::{ChargeAt, RevenueAgainstCap, Tier};
use crate::policy::{Catalogue, Operator};

/// Grants issued in a scenario to one enterprise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantsIssued {
    pub scenario: String,
    pub scenario_name: String,
    pub subject: String,
    pub grants: u64,
    /// Of them, free of charge (public use).
    pub free_of_charge: u64,
}

/// A product (a dataset's price item): its published terms and what was
/// actually charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub dataset: String,
    pub dataset_name: String,
    pub holder: String,
    pub price_item: String,
    pub unit: crate::contract::Unit,
    pub charge_at: ChargeAt,
    /// The government-guided ceiling per unit.
    pub ceiling_fen: i64,
    pub tiers: Vec<Tier>,
    /// Units charged for (free use apart) and what they were charged.
    pub charged_units: u64,
    pub charged_fen: i64,
    /// `charged_fen / charged_units`, in fen with two decimals; absent when
    /// nothing was charged.
    pub actual_price_fen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    pub year: String,
    pub operator: Option<Operator>,
    pub grants: Vec<GrantsIssued>,
    pub products: Vec<Product>,
    /// Against the operator's cap, when the catalogue names one.
    pub revenue: Option<RevenueAgainstCap>,
    pub revenue_fen: i64,
}

/// Sums a year's usage records into a [`Disclosure`].
pub struct DisclosureBuilder<'c> {
    catalogue: &'c Catalogue,
    year: String,
    grants: BTreeMap<(String, String), (u64, u64)>,
    charged: BTreeMap<String, (u64, i64)>,
    revenue_fen: i64,
}

impl<'c> DisclosureBuilder<'c> {
    pub fn new(catalogue: &'c Catalogue, year: &str) -> Self {
        DisclosureBuilder {
            catalogue,
            year: year.to_owned(),
            grants: BTreeMap::new(),
            charged: BTreeMap::new(),
            revenue_fen: 0,
        }
    }

    pub fn add(&mut self, u: &UsageRecord) {
        self.revenue_fen = self.revenue_fen.saturating_add(u.amount_fen);
        if u.basis == Basis::Approval {
            let g = self.grants.entry((u.scenario.clone(), u.subject.clone())).or_default();
            g.0 += 1;
            g.1 += u64::from(u.fee_waived);
        }
        // The record that carries the item's charge, unless free.
        let charge_at = self.catalogue.datasets.get(&u.dataset).map_or(ChargeAt::Approval, |d| d.price.charge_at);
        let carries =
            matches!((u.basis, charge_at), (Basis::Approval, ChargeAt::Approval) | (Basis::Report, ChargeAt::Report));
        if carries && !u.fee_waived {
            let c = self.charged.entry(u.dataset.clone()).or_default();
            c.0 += u.quantity;
            c.1 = c.1.saturating_add(u.amount_fen);
        }
    }

    pub fn finish(self) -> Disclosure {
        let cat = self.catalogue;
        let grants = (self.grants.into_iter())
            .map(|((scenario, subject), (grants, free_of_charge))| GrantsIssued {
                scenario_name: cat.scenarios.get(&scenario).map_or_else(String::new, |s| s.name.clone()),
                scenario,
                subject,
                grants,
                free_of_charge,
            })
            .collect();
        let products = (cat.datasets.values())
            .map(|d| {
                let (charged_units, charged_fen) = self.charged.get(&d.code).copied().unwrap_or_default();
                Product {
                    dataset: d.code.clone(),
                    dataset_name: d.name.clone(),
                    holder: d.holder_name.clone(),
                    price_item: d.price.item.clone(),
                    unit: d.price.unit,
                    charge_at: d.price.charge_at,
                    ceiling_fen: d.price.cap_fen,
                    tiers: d.price.tiers.clone(),
                    charged_units,
                    charged_fen,
                    actual_price_fen: average_fen(charged_fen, charged_units),
                }
            })
            .collect();
        let revenue = cat.operator.as_ref().map(|o| RevenueAgainstCap::new(self.revenue_fen, o.yearly_revenue_cap_fen));
        Disclosure {
            year: self.year,
            operator: cat.operator.clone(),
            grants,
            products,
            revenue,
            revenue_fen: self.revenue_fen,
        }
    }
}

/// `fen / units` with two decimals, rounded half up, in integer arithmetic.
fn average_fen(fen: i64, units: u64) -> Option<String> {
    if units == 0 {
        return None;
    }
    let (fen, units) = (i128::from(fen), i128::from(units));
    let hundredths = (fen * 100 + units / 2) / units;
    Some(format!("{}.{:02}", hundredths / 100, hundredths % 100))
}

/// `¥1234.56` of a fen amount.
fn yuan(fen: i64) -> String {
    format!("¥{}.{:02}", fen / 100, (fen % 100).abs())
}

impl Disclosure {
    /// The disclosure as a Markdown document for publication.
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# Public data authorized operation: disclosure for {}\n\n", self.year);
        if let Some(o) = &self.operator {
            md.push_str(&format!("Operator: {} ({})\n\n", o.name, o.uscc));
        }
        md.push_str(
            "## Grants issued\n\n| scenario | enterprise | grants | of which free of charge |\n|---|---|---:|---:|\n",
        );
        for g in &self.grants {
            md.push_str(&format!(
                "| {} ({}) | {} | {} | {} |\n",
                g.scenario_name, g.scenario, g.subject, g.grants, g.free_of_charge
            ));
        }
        md.push_str("\n## Products, price ceilings and actual prices\n\n");
        md.push_str("| dataset | product | unit | charged | ceiling (fen) | tiers (fen per unit) | units charged | charged | actual price (fen per unit) |\n|---|---|---|---|---:|---|---:|---:|---:|\n");
        for p in &self.products {
            let tiers: Vec<String> = (p.tiers.iter())
                .map(|t| match t.up_to {
                    Some(b) => format!("{} up to {b}", t.unit_price_fen),
                    None => format!("{} beyond", t.unit_price_fen),
                })
                .collect();
            let unit =
                serde_json::to_value(p.unit).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let at =
                serde_json::to_value(p.charge_at).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            md.push_str(&format!(
                "| {} ({}) | {} | {unit} | at {at} | {} | {} | {} | {} | {} |\n",
                p.dataset_name,
                p.dataset,
                p.price_item,
                p.ceiling_fen,
                tiers.join("; "),
                p.charged_units,
                yuan(p.charged_fen),
                p.actual_price_fen.as_deref().unwrap_or("–")
            ));
        }
        md.push_str(&format!("\n## Revenue\n\nRevenue in {}: {}", self.year, yuan(self.revenue_fen)));
        if let Some(r) = &self.revenue {
            md.push_str(&format!(" of a permitted {}", yuan(r.cap_fen)));
            if r.exceeded() {
                md.push_str(&format!("; {} beyond it, to be deducted in the next period", yuan(r.excess_fen)));
            }
        }
        md.push_str(".\n");
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Operation, PurposeClass, Quota, Unit};

    const CATALOGUE: &str = r#"
[operator]
name = "Shaanxi Public Data Operations Co."
uscc = "91610000MA6TGP0D8K"
yearly_revenue_cap_fen = 1000

[[scenarios]]
code = "smart-tourism"
name = "Smart tourism"
purposes = ["industry", "public_welfare"]
authorized_until = "2030-06-30"

[[datasets]]
code = "GX-610100-TOUR-0001"
name = "Scenic-spot visitor flows"
holder = "11610100MB00014076"
holder_name = "Tourism Bureau"
grade = "general"
registered_until = "2028-03-01"
price = { item = "tour-flow-api", unit = "call", cap_fen = 80, monthly_quota = 100, tiers = [{ up_to = 2, unit_price_fen = 50 }, { unit_price_fen = 30 }] }

[[datasets]]
code = "GX-610100-TRAN-0002"
name = "Public transport ridership"
holder = "11610100MB00014441"
holder_name = "Transport Bureau"
grade = "general"
registered_until = "2028-03-01"
price = { item = "transit-records", unit = "record", cap_fen = 2, monthly_quota = 5000, charge_at = "report", tiers = [{ unit_price_fen = 2 }] }
"#;

    fn record(
        subject: &str,
        dataset: &str,
        basis: Basis,
        quantity: u64,
        amount_fen: i64,
        fee_waived: bool,
    ) -> UsageRecord {
        UsageRecord {
            schema: "tollgate.usage/v1".into(),
            usage_id: "u".into(),
            request_id: "r".into(),
            decision_id: "d".into(),
            subject: subject.into(),
            dataset: dataset.into(),
            scenario: "smart-tourism".into(),
            operation: Operation::Query,
            purpose_class: if fee_waived { PurposeClass::PublicWelfare } else { PurposeClass::Industry },
            unit: Unit::Call,
            quantity,
            price_item: String::new(),
            unit_price_fen: 0,
            amount_fen,
            fee_waived,
            waiver_reason: None,
            period: "2026-03".into(),
            quota: Quota { limit: 0, used: 0, remaining: 0 },
            recorded_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            basis,
            report: None,
            flags: Vec::new(),
        }
    }

    #[test]
    fn the_disclosure_counts_grants_publishes_ceilings_and_the_price_actually_charged() {
        let catalogue = Catalogue::parse(CATALOGUE).unwrap();
        let mut b = DisclosureBuilder::new(&catalogue, "2026");
        let (tour, transit) = ("GX-610100-TOUR-0001", "GX-610100-TRAN-0002");
        // Three tour calls: 50 + 50 + 30 fen; one free.
        for (amount, free) in [(50, false), (50, false), (30, false), (0, true)] {
            b.add(&record("A", tour, Basis::Approval, 1, amount, free));
        }
        // Transit: approved 1000 records (0 fen, charged on report), served 700 at 2 fen.
        b.add(&record("B", transit, Basis::Approval, 1000, 0, false));
        b.add(&record("B", transit, Basis::Report, 400, 800, false));
        b.add(&record("B", transit, Basis::Report, 300, 600, false));
        let d = b.finish();
        assert_eq!(d.grants.len(), 2);
        assert_eq!((d.grants[0].subject.as_str(), d.grants[0].grants, d.grants[0].free_of_charge), ("A", 4, 1));
        assert_eq!((d.grants[1].subject.as_str(), d.grants[1].grants), ("B", 1));
        let p = |code: &str| d.products.iter().find(|p| p.dataset == code).unwrap().clone();
        let t = p(tour);
        assert_eq!(
            (t.ceiling_fen, t.charged_units, t.charged_fen, t.actual_price_fen.as_deref()),
            (80, 3, 130, Some("43.33"))
        );
        let r = p(transit);
        assert_eq!((r.charged_units, r.charged_fen, r.actual_price_fen.as_deref()), (700, 1400, Some("2.00")));
        assert_eq!(d.revenue_fen, 1530);
        let revenue = d.revenue.unwrap();
        assert_eq!((revenue.cap_fen, revenue.excess_fen), (1000, 530));
        let md = d.to_markdown();
        assert!(md.contains("| Smart tourism (smart-tourism) | A | 4 | 1 |"), "{md}");
        assert!(
            md.contains("| tour-flow-api | call | at approval | 80 | 50 up to 2; 30 beyond | 3 | ¥1.30 | 43.33 |"),
            "{md}"
        );
        assert!(md.contains("Revenue in 2026: ¥15.30 of a permitted ¥10.00; ¥5.30 beyond it"), "{md}");
    }
}
