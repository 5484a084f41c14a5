//! `tollgate usage reconcile`: per grant, what was approved beside what its
//! data host reported and what was charged.

use tollgate::config::Settings;
use tollgate::metering::{DailyUsage, GrantUsage, Reconciled, RevenueAgainstCap, UsageLine, UsageSummary};
use tollgate::store::Store;

/// A `YYYY-MM` period, or why not.
fn check_period(period: &str) -> anyhow::Result<()> {
    chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| period.len() == 7)
        .map(|_| ())
        .ok_or_else(|| anyhow::anyhow!("--period {period}: expected YYYY-MM, e.g. 2026-11"))
}

/// Days in a `YYYY-MM` period (checked).
/// Grants by status, and fen charged in all.
fn totals(lines: &[GrantUsage]) -> serde_json::Value {
    let count = |s: Reconciled| lines.iter().filter(|l| l.status() == s).count();
    serde_json::json!({
        "grants": lines.len(),
        "no_report": count(Reconciled::NoReport),
        "within": count(Reconciled::Within),
        "over": count(Reconciled::Over),
        "approved_fen": lines.iter().map(|l| l.approved_fen).sum::<i64>(),
        "reported_fen": lines.iter().map(|l| l.reported_fen).sum::<i64>(),
        "charged_fen": lines.iter().map(GrantUsage::charged_fen).sum::<i64>(),
    })
}

pub async fn reconcile(settings: &Settings, period: &str, json: bool) -> anyhow::Result<()> {
    check_period(period)?;
    let store = Store::connect(&settings.database.url, 1).await?;
    let lines = store.reconcile(period).await?;
    let totals = totals(&lines);
    if json {
        let grants: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                let mut v = serde_json::to_value(l).expect("lines serialise");
                v["status"] = serde_json::to_value(l.status()).expect("statuses serialise");
                v["charged_fen"] = l.charged_fen().into();
                v
            })
            .collect();
        println!("{}", serde_json::json!({"period": period, "grants": grants, "totals": totals}));
        return Ok(());
    }
    println!(
        "{:<38} {:<20} {:<22} {:<9} {:>10} {:>10} {:>7} {:>12}  status",
        "grant", "enterprise", "dataset", "unit", "approved", "reported", "reports", "charged fen"
    );
    for l in &lines {
        let unit = serde_json::to_value(l.unit)?.as_str().unwrap_or_default().to_owned();
        let status = serde_json::to_value(l.status())?.as_str().unwrap_or_default().to_owned();
        println!(
            "{:<38} {:<20} {:<22} {:<9} {:>10} {:>10} {:>7} {:>12}  {status}",
            l.decision_id,
            l.subject,
            l.dataset,
            unit,
            l.approved,
            l.reported,
            l.reports,
            l.charged_fen()
        );
    }
    println!(
        "{period}: {} grant(s): {} with no report, {} within, {} over; {} fen charged ({} at approval, {} on report)",
        totals["grants"],
        totals["no_report"],
        totals["within"],
        totals["over"],
        totals["charged_fen"],
        totals["approved_fen"],
        totals["reported_fen"]
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

const COLUMNS: [&str; 11] = [
    "subject",
    "dataset",
    "scenario",
    "price_item",
    "approvals",
    "approved_units",
    "reports",
    "reported_units",
    "charged_fen",
    "waived_records",
    "waived_units",
];

fn cells(l: &UsageLine) -> [String; 11] {
    [
        l.subject.clone(),
        l.dataset.clone(),
        l.scenario.clone(),
        l.price_item.clone(),
        l.approvals.to_string(),
        l.approved_units.to_string(),
        l.reports.to_string(),
        l.reported_units.to_string(),
        l.charged_fen.to_string(),
        l.waived_records.to_string(),
        l.waived_units.to_string(),
    ]
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or newline.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// `tollgate usage report`: the period's lines, then the year's revenue
/// (January through the period) against the operator's cap.
pub async fn report(
    settings: &Settings,
    period: &str,
    subject: Option<&str>,
    format: Format,
    chart: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    check_period(period)?;
    let store = Store::connect(&settings.database.url, 1).await?;
    let mut summary = UsageSummary::default();
    let mut daily = DailyUsage::new(period);
    store
        .each_usage(period, subject, |u| {
            daily.add(&u);
            summary.add(&u);
        })
        .await?;
    if let Some(file) = chart {
        let title = format!("Usage records per scenario per day, {period} (UTC)");
        std::fs::write(file, tollgate::ops::chart::svg(&title, &daily.series, daily.days))?;
    }
    let lines = summary.lines();
    let year = &period[..4];
    let policy = tollgate::policy::Policy::load(&settings.policy.dir).await?;
    let revenue = match &policy.catalogue().operator {
        Some(o) => {
            Some(RevenueAgainstCap::new(store.revenue(&format!("{year}-01"), period).await?, o.yearly_revenue_cap_fen))
        }
        None => None,
    };
    let charged: i64 = lines.iter().map(|l| l.charged_fen).sum();
    match format {
        Format::Json => {
            let doc = serde_json::json!({"period": period, "subject": subject, "lines": lines, "charged_fen": charged,
                "revenue": revenue.map(|r| serde_json::json!({"from": format!("{year}-01"), "through": period, "revenue_fen": r.revenue_fen, "cap_fen": r.cap_fen, "excess_fen": r.excess_fen}))});
            println!("{doc}");
        }
        Format::Csv => {
            println!("{}", COLUMNS.join(","));
            for l in &lines {
                println!("{}", cells(l).iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            }
        }
        Format::Table => print_table(period, &lines, charged, revenue),
    }
    Ok(())
}

fn print_table(period: &str, lines: &[UsageLine], charged: i64, revenue: Option<RevenueAgainstCap>) {
    println!(
        "{:<20} {:<22} {:<22} {:<22} {:>9} {:>10} {:>8} {:>10} {:>12} {:>7}",
        "enterprise",
        "dataset",
        "scenario",
        "price item",
        "approvals",
        "units",
        "reports",
        "served",
        "charged fen",
        "waived"
    );
    for l in lines {
        println!(
            "{:<20} {:<22} {:<22} {:<22} {:>9} {:>10} {:>8} {:>10} {:>12} {:>7}",
            l.subject,
            l.dataset,
            l.scenario,
            l.price_item,
            l.approvals,
            l.approved_units,
            l.reports,
            l.reported_units,
            l.charged_fen,
            l.waived_records
        );
    }
    println!("{period}: {} line(s), {charged} fen charged (free use metered, not charged)", lines.len());
    if let Some(r) = revenue {
        let excess = if r.exceeded() {
            format!("; EXCEEDED by {} fen, to be deducted next period", r.excess_fen)
        } else {
            String::new()
        };
        println!(
            "revenue {}-01..{period}: {} fen of a permitted {} fen a year{excess}",
            &period[..4],
            r.revenue_fen,
            r.cap_fen
        );
    }
}

/// `tollgate disclosure --year Y`: the year's usage read period by period
/// (progress on a terminal, quiet when piped or with --json).
pub async fn disclosure(
    settings: &Settings,
    year: i32,
    out: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    anyhow::ensure!((2000..=9999).contains(&year), "--year {year}: expected a four-digit year");
    let store = Store::connect(&settings.database.url, 1).await?;
    let policy = tollgate::policy::Policy::load(&settings.policy.dir).await?;
    let year = year.to_string();
    let mut builder = tollgate::disclosure::DisclosureBuilder::new(policy.catalogue(), &year);
    let progress = !json && std::io::stderr().is_terminal();
    for month in 1..=12 {
        let period = format!("{year}-{month:02}");
        if progress {
            eprint!("\rreading {period}…");
        }
        store.each_usage(&period, None, |u| builder.add(&u)).await?;
    }
    if progress {
        eprintln!("\r{:<20}", "");
    }
    let d = builder.finish();
    let as_json = serde_json::to_string_pretty(&d)?;
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let (md, js) = (dir.join(format!("disclosure-{year}.md")), dir.join(format!("disclosure-{year}.json")));
            std::fs::write(&md, d.to_markdown())?;
            std::fs::write(&js, format!("{as_json}\n"))?;
            println!("wrote {} and {}", md.display(), js.display());
        }
        None if json => println!("{as_json}"),
        None => print!("{}", d.to_markdown()),
    }
    Ok(())
}
