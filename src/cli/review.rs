//! `tollgate review list|show`: the review queue as reviewers see it
//! (verdicts go on `tollgate.reviews`).

use serde_json::json;
use tollgate::config::Settings;
use tollgate::store::Store;

/// The pending requests, oldest first (one department's with `holder`).
pub async fn list(settings: &Settings, holder: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database.url, 1).await?;
    let queue = tollgate::broker::grant_keys::review_queue(&store, holder, chrono::Utc::now().timestamp()).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&queue)?);
        return Ok(());
    }
    let pending = queue["pending"].as_array().cloned().unwrap_or_default();
    println!("{} request(s) pending review", pending.len());
    if !pending.is_empty() {
        println!(
            "{:<24} {:<20} {:<22} {:<16} {:<20} {:>8}  deadline",
            "request", "enterprise", "dataset", "operation", "holder", "age"
        );
    }
    for p in &pending {
        let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
        println!(
            "{:<24} {:<20} {:<22} {:<16} {:<20} {:>7}s  {}",
            s("request_id"),
            s("subject"),
            s("dataset"),
            s("operation"),
            s("holder"),
            p["age_secs"],
            s("deadline")
        );
    }
    Ok(())
}

/// One request's review, whatever its state.
pub async fn show(settings: &Settings, request_id: &str, as_json: bool) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database.url, 1).await?;
    let Some(r) = store.review(request_id).await? else {
        anyhow::bail!("{request_id} was not sent to review");
    };
    let probe: serde_json::Value = serde_json::from_str(&r.probe).unwrap_or_default();
    let rfc3339 = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().to_rfc3339();
    let view = json!({
        "request_id": r.request_id, "state": r.state, "subject": r.subject, "holder": r.holder,
        "dataset": r.dataset, "scenario": r.scenario, "operation": r.operation,
        "pending_decision_id": r.pending_decision_id, "final_decision_id": r.final_decision_id,
        "reviewer": r.reviewer, "pending_since": rfc3339(r.created_at), "deadline": rfc3339(r.deadline),
        "closed_at": r.closed_at.map(rfc3339), "request": probe["request"], "principal": probe["principal"],
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "{} {} — {} {} on {} in {}",
            r.request_id,
            r.state.to_uppercase(),
            r.subject,
            r.operation,
            r.dataset,
            r.scenario
        );
        println!("  holder {}   pending since {}   deadline {}", r.holder, rfc3339(r.created_at), rfc3339(r.deadline));
        if let Some(d) = &r.final_decision_id {
            println!("  final decision {d} by {}", r.reviewer.as_deref().unwrap_or("the review timeout"));
        }
        println!("  purpose: {}", probe["request"]["purpose"]);
    }
    Ok(())
}
