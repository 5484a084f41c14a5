//! `tollgate usage reconcile`: per grant, what was approved beside what its
//! data host reported and what was charged.

use tollgate::config::Settings;
use tollgate::metering::{GrantUsage, Reconciled};
use tollgate::store::Store;

/// A `YYYY-MM` period, or why not.
fn check_period(period: &str) -> anyhow::Result<()> {
    chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| period.len() == 7)
        .map(|_| ())
        .ok_or_else(|| anyhow::anyhow!("--period {period}: expected YYYY-MM, e.g. 2026-11"))
}

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
