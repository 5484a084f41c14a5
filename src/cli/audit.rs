//! `tollgate audit verify`: every hash chain re-verified, from the
//! database (with the columns events are stored under) or from the audit
//! topic; every chain held to its signed checkpoints; the database's
//! decisions and usage records held to the trail. Names the first changed,
//! dropped, reordered or cut record. `audit query` and `audit tail`: the
//! events auditors ask about.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};

use anyhow::Context;
use futures_util::TryStreamExt;
use tollgate::audit::{Audited, Certified, ChainError, ChainVerifier, CheckpointReport, Recorded, VerifyReport};
use tollgate::auth::PublicKey;
use tollgate::config::Settings;
use tollgate::contract::{AuditEvent, Checkpoint};
use tollgate::store::{AuditFilter, Store, TrailSnapshot};

/// Events read per page by `audit query`.
const PAGE: i64 = 5_000;

/// Where `audit verify` reads, and which keys it trusts.
pub struct VerifyFrom<'a> {
    /// The audit and checkpoint topics instead of the database.
    pub kafka: bool,
    /// A JWKS file of trusted audit keys (default: those the database
    /// recorded).
    pub keys: Option<&'a std::path::Path>,
}

pub async fn verify(settings: &Settings, from: VerifyFrom<'_>) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database.url, 1).await?;
    let outcome = verify_with(&store, settings, &from).await;
    // Recorded either way, so the console shows when the trail was last
    // verified and whether it held.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let source = if from.kafka { "kafka" } else { "database" };
    let summary = match &outcome {
        Ok(line) => line.clone(),
        Err(e) => format!("{e:#}"),
    };
    if let Err(error) = store.record_verification(&now, source, outcome.is_ok(), &summary).await {
        eprintln!("note: this verification could not be recorded in the database: {error}");
    }
    println!("{}", outcome?);
    Ok(())
}

const CHAINS_FAILED: &str = "audit chain verification failed";
const CHECKPOINTS_FAILED: &str = "audit checkpoint verification failed";

/// The verification itself; its summary line when the trail holds.
async fn verify_with(store: &Store, settings: &Settings, from: &VerifyFrom<'_>) -> anyhow::Result<String> {
    // Keys and checkpoints first: SQLite's one connection is then held by
    // the trail's snapshot, and a checkpoint read before the events
    // certifies events already stored (one made meanwhile is not read).
    let keys = match from.keys {
        Some(path) => keys_from_file(path)?,
        None => keys_from_store(store).await?,
    };
    let checkpoints =
        if from.kafka { checkpoints_from_topic(settings).await? } else { store.checkpoints(false).await? };
    // A chain may start at a signed checkpoint (what `audit prune` leaves).
    let anchors = checkpoints.iter().map(|c| (c.chain.clone(), c.seq)).collect();
    let (report, signed, read) = if from.kafka {
        let events = from_topic(settings).await?;
        let report = tollgate::audit::verify_anchored(&events, &anchors).context(CHAINS_FAILED)?;
        let signed =
            tollgate::audit::verify_checkpoints(&events, &report, &checkpoints, &keys).context(CHECKPOINTS_FAILED)?;
        (report, signed, events.len() as u64)
    } else {
        let progress = std::io::stderr().is_terminal();
        from_database(store, (&anchors, &checkpoints, &keys), progress).await?
    };
    for (chain, (seq, head)) in &report.chains {
        let checkpoint =
            signed.latest.get(chain).map_or_else(|| "no checkpoint yet".into(), |s| format!("checkpoint at {s}"));
        println!("{chain}: {seq} events, head {head}, {checkpoint}");
    }
    // Distinct events; identical re-publications (at-least-once) apart.
    let distinct = read - report.duplicates;
    let copies = match report.duplicates {
        0 => String::new(),
        n => format!("; {n} identical re-published copies skipped"),
    };
    Ok(format!(
        "ok: {distinct} events on {} chain(s) verified, {} signed checkpoint(s) hold{copies}",
        report.chains.len(),
        signed.verified
    ))
}

/// The audit topic read to its end, in partition order.
async fn from_topic(settings: &Settings) -> anyhow::Result<Vec<AuditEvent>> {
    read_topic(settings, &settings.topics.audit, "an audit event").await
}

async fn checkpoints_from_topic(settings: &Settings) -> anyhow::Result<Vec<Checkpoint>> {
    read_topic(settings, &settings.topics.checkpoints, "an audit checkpoint").await
}

async fn read_topic<T: serde::de::DeserializeOwned>(
    settings: &Settings,
    topic: &str,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let bootstrap = settings.kafka.bootstrap_servers.as_deref().context("--kafka needs kafka.bootstrap_servers")?;
    let client = tollgate::kafka::Client::new(&settings.kafka, bootstrap)?;
    let messages = client.read_to_end(topic).await?;
    messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<T>(&m.payload)
                .with_context(|| format!("{}/{}@{} is not {what}", m.topic, m.partition, m.offset))
        })
        .collect()
}

/// What a chain may start at, which checkpoints hold, and the keys that
/// signed them.
type Trust<'a> = (&'a BTreeSet<(String, u64)>, &'a [Checkpoint], &'a BTreeMap<String, PublicKey>);

/// The database's trail, read in one snapshot and row by row: each event's
/// columns held to its fields, its chain verified, the event held to the
/// checkpoint certifying its position; then the checkpoints, and the
/// decisions and usage records held to the trail. Holds each chain's head
/// and 16 bytes per event, not the events. Returns what was verified and
/// how many events were read.
async fn from_database(
    store: &Store,
    (anchors, checkpoints, keys): Trust<'_>,
    progress: bool,
) -> anyhow::Result<(VerifyReport, CheckpointReport, u64)> {
    let certified = Certified::new(checkpoints);
    let mut chains = ChainVerifier::for_database(anchors);
    let (mut audited, mut fork, mut read) = (Audited::default(), None, 0u64);
    let mut trail = store.trail_snapshot().await?;
    {
        // The rows borrow the snapshot until this block ends.
        let mut rows = std::pin::pin!(trail.audit_rows());
        while let Some(r) = rows.try_next().await? {
            tollgate::audit::check_columns(&r.event, &r.chain, r.seq, &r.hash, &r.prev_hash).context(CHAINS_FAILED)?;
            chains.push(&r.event).context(CHAINS_FAILED)?;
            // Reported after the checkpoints' own checks, as for the topic.
            fork = fork.or_else(|| certified.check(&r.event).err());
            audited.add(&r.event);
            read += 1;
            if progress && read.is_multiple_of(PROGRESS_EVERY) {
                eprint!("\rverified {read} events");
            }
        }
    }
    if progress && read >= PROGRESS_EVERY {
        eprintln!("\rverified {read} events");
    }
    let report = chains.finish();
    let signed = tollgate::audit::hold_checkpoints(&report, checkpoints, keys).context(CHECKPOINTS_FAILED)?;
    if let Some(fork) = fork {
        return Err(fork).context(CHECKPOINTS_FAILED);
    }
    cross_check(&mut trail, &audited.sorted()).await.context("audit cross-check of the database failed")?;
    Ok((report, signed, read))
}

/// Events verified between two progress lines on a terminal.
const PROGRESS_EVERY: u64 = 10_000;

/// Every decision and accepted usage report must have its audit event, and
/// every usage record its decision.
async fn cross_check(trail: &mut TrailSnapshot, audited: &Recorded) -> anyhow::Result<()> {
    {
        let mut decisions = std::pin::pin!(trail.decision_digests());
        while let Some((request_id, digest)) = decisions.try_next().await? {
            audited.decision(&request_id, &digest)?;
        }
    }
    {
        let mut reports = std::pin::pin!(trail.report_digests());
        while let Some((report_id, digest)) = reports.try_next().await? {
            audited.report(&report_id, &digest)?;
        }
    }
    match trail.usage_without_decision().await? {
        Some(request_id) => Err(ChainError::usage_without_decision(&request_id).into()),
        None => Ok(()),
    }
}

async fn keys_from_store(store: &Store) -> anyhow::Result<BTreeMap<String, PublicKey>> {
    let mut keys = BTreeMap::new();
    for (kid, jwk) in store.audit_keys().await? {
        let key = PublicKey::from_jwk(&serde_json::from_str(&jwk)?).map_err(anyhow::Error::msg)?;
        keys.insert(kid, key);
    }
    Ok(keys)
}

/// A JWKS file (`{"keys": [...]}`), e.g. saved from
/// `/.well-known/audit-keys.json` and kept apart from the database.
fn keys_from_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, PublicKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let set: serde_json::Value = serde_json::from_str(&text)?;
    let mut keys = BTreeMap::new();
    for jwk in set["keys"].as_array().context("a JWKS has a keys array")? {
        let key = PublicKey::from_jwk(jwk).map_err(anyhow::Error::msg)?;
        keys.insert(key.kid.clone(), key);
    }
    Ok(keys)
}

/// `tollgate audit query`: stored events matching `filter`, oldest first,
/// as a table or (with `json`) one event per line as stored.
pub async fn query(settings: &Settings, filter: &AuditFilter, limit: i64, json: bool) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database.url, 1).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(
            out,
            "{:<30} {:<15} {:<20} {:<24} {:<16} {:<15} {:<26} chain#seq",
            "occurred_at", "event", "subject", "resource", "action", "outcome", "reason"
        )?;
    }
    let (mut after, mut shown) = (None, 0i64);
    while shown < limit {
        let page = store.query_audit(filter, after.as_ref(), (limit - shown).min(PAGE)).await?;
        let Some((_, last)) = page.last() else { break };
        after = Some(last.clone());
        shown += page.len() as i64;
        for (e, _) in &page {
            if json {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            } else {
                let reason = e.reasons.first().map_or("", |r| r.code.as_str());
                writeln!(
                    out,
                    "{:<30} {:<15} {:<20} {:<24} {:<16} {:<15} {:<26} {}#{}",
                    e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    e.event_type.as_str(),
                    e.subject,
                    e.resource,
                    e.action,
                    e.outcome,
                    reason,
                    e.chain,
                    e.seq
                )?;
            }
        }
    }
    if !json && shown == 0 {
        writeln!(out, "no audit event matches")?;
    }
    Ok(())
}

/// Whether `e` passes `filter` (scenario aside: the topic's events do not
/// carry it).
fn matches(filter: &AuditFilter, e: &AuditEvent) -> bool {
    let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let at = |t: &Option<String>| t.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let time = e.occurred_at.fixed_offset();
    is(&filter.enterprise, &e.subject)
        && is(&filter.dataset, &e.resource)
        && is(&filter.event_type, e.event_type.as_str())
        && is(&filter.outcome, &e.outcome)
        && is(&filter.reason, e.reasons.first().map_or("", |r| r.code.as_str()))
        && at(&filter.from).is_none_or(|f| time >= f)
        && at(&filter.to).is_none_or(|t| time < t)
}

/// `tollgate audit tail`: follows the audit topic from its end, printing
/// each new event that passes `filter` (one JSON line each) until stopped.
pub async fn tail(
    settings: &Settings,
    filter: &AuditFilter,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        filter.scenario.is_none(),
        "audit tail cannot filter by scenario (audit events on the topic do not carry it); use audit query"
    );
    let bootstrap = settings.kafka.bootstrap_servers.as_deref().context("audit tail needs kafka.bootstrap_servers")?;
    let client = tollgate::kafka::Client::new(&settings.kafka, bootstrap)?;
    let group = format!("tollgate-audit-tail-{}", uuid::Uuid::new_v4().simple());
    let reader = client.reader_from_end(&[&settings.topics.audit], &group)?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = reader.next(std::time::Duration::from_millis(500)) => next?,
        };
        let Some(m) = next else { continue };
        let Ok(e) = serde_json::from_slice::<AuditEvent>(&m.payload) else { continue };
        if matches(filter, &e) {
            println!("{}", serde_json::to_string(&e)?);
        }
    }
}

/// `tollgate audit prune --before T`: never anything the law still requires
/// (the audit trail of personal-information processing: 3 years).
pub async fn prune(settings: &Settings, before: chrono::DateTime<chrono::Utc>, json: bool) -> anyhow::Result<()> {
    let floor = chrono::Utc::now() - chrono::Duration::days(i64::from(tollgate::config::RECORDS_MIN_DAYS));
    anyhow::ensure!(
        before <= floor,
        "--before {} would remove events younger than {} days, the legal minimum (PIPL art. 56); the latest allowed is {}",
        before.to_rfc3339(),
        tollgate::config::RECORDS_MIN_DAYS,
        floor.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let store = Store::connect(&settings.database.url, 1).await?;
    let pruned = store.prune_audit(&before.to_rfc3339()).await?;
    if json {
        println!("{}", serde_json::to_string(&pruned)?);
    } else {
        println!(
            "pruned {} events on {} chain(s) and {} decision(s) with their outcomes, usage, grants and reviews; \
             each chain now starts at a signed checkpoint",
            pruned.events, pruned.chains, pruned.decisions
        );
    }
    Ok(())
}
