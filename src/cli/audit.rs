//! `tollgate audit verify`: every hash chain re-verified, from the
//! database (with the columns events are stored under) or from the audit
//! topic; names the first changed, dropped or reordered record.

use anyhow::Context;
use tollgate::config::Settings;
use tollgate::contract::AuditEvent;

pub async fn verify(settings: &Settings, from_kafka: bool) -> anyhow::Result<()> {
    let events = if from_kafka { from_topic(settings).await? } else { from_database(settings).await? };
    let report = tollgate::audit::verify(&events).context("audit chain verification failed")?;
    for (chain, (seq, head)) in &report.chains {
        println!("{chain}: {seq} events, head {head}");
    }
    // Distinct events; identical re-publications (at-least-once) apart.
    let distinct = events.len() as u64 - report.duplicates;
    match report.duplicates {
        0 => println!("ok: {distinct} events on {} chain(s) verified", report.chains.len()),
        n => println!(
            "ok: {distinct} events on {} chain(s) verified; {n} identical re-published copies skipped",
            report.chains.len()
        ),
    }
    Ok(())
}

/// The audit topic read to its end, in partition order.
async fn from_topic(settings: &Settings) -> anyhow::Result<Vec<AuditEvent>> {
    let bootstrap = settings.kafka.bootstrap_servers.as_deref().context("--kafka needs kafka.bootstrap_servers")?;
    let client = tollgate::kafka::Client::new(&settings.kafka, bootstrap)?;
    let messages = client.read_to_end(&settings.topics.audit).await?;
    messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<AuditEvent>(&m.payload)
                .with_context(|| format!("{}/{}@{} is not an audit event", m.topic, m.partition, m.offset))
        })
        .collect()
}

/// Every stored event, its columns held to its fields first.
async fn from_database(settings: &Settings) -> anyhow::Result<Vec<AuditEvent>> {
    let rows = tollgate::store::Store::connect(&settings.database.url, 1).await?.audit_rows().await?;
    for r in &rows {
        tollgate::audit::check_columns(&r.event, &r.chain, r.seq, &r.hash, &r.prev_hash)
            .context("audit chain verification failed")?;
    }
    Ok(rows.into_iter().map(|r| r.event).collect())
}
