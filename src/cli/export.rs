//! `tollgate audit export --from --to DIR`: a self-contained extract for a
//! regulator — the events of the period (each chain's run whole, from its
//! first event in the period to its last), the checkpoints among them, the
//! audit keys, a manifest and a verification script that needs nothing
//! from tollgate (Python and its `cryptography` library).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tollgate::config::Settings;
use tollgate::contract::AuditEvent;
use tollgate::store::Store;

/// The stand-alone verifier written into every export.
const VERIFY_PY: &str = include_str!("export_verify.py");

/// Events read per page.
const PAGE: i64 = 5_000;

/// Where one chain's exported run starts and ends.
#[derive(serde::Serialize)]
struct ChainRun {
    first_seq: u64,
    first_prev_hash: String,
    last_seq: u64,
    last_hash: String,
}

/// Writes the export of [`from`, `to`) into `dir` (created; must not hold
/// an export already). Progress on a terminal unless `quiet`.
pub async fn export(
    settings: &Settings,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(from < to, "--from must be before --to");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    anyhow::ensure!(!dir.join("MANIFEST.json").exists(), "{} already holds an export", dir.display());
    let store = Store::connect(&settings.database.url, 1).await?;
    let progress = !quiet && std::io::stderr().is_terminal();
    let ranges = store.audit_ranges(&from.to_rfc3339(), &to.to_rfc3339()).await?;
    let mut events = std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl"))?);
    let (mut chains, mut written) = (BTreeMap::new(), 0u64);
    for (chain, first, last) in &ranges {
        let mut next = *first;
        let mut run: Option<ChainRun> = None;
        while next <= *last {
            let page = store.audit_bodies(chain, next, *last, PAGE).await?;
            let Some(tail) = page.last() else { break };
            let tail: AuditEvent = serde_json::from_str(tail)?;
            if run.is_none() {
                let head: AuditEvent = serde_json::from_str(&page[0])?;
                run = Some(ChainRun {
                    first_seq: head.seq,
                    first_prev_hash: head.prev_hash,
                    last_seq: 0,
                    last_hash: String::new(),
                });
            }
            for body in &page {
                writeln!(events, "{body}")?;
            }
            written += page.len() as u64;
            next = tail.seq + 1;
            if let Some(r) = run.as_mut() {
                (r.last_seq, r.last_hash) = (tail.seq, tail.hash);
            }
            if progress {
                eprint!("\rexported {written} events");
            }
        }
        if let Some(run) = run {
            chains.insert(chain.clone(), run);
        }
    }
    events.flush()?;
    if progress {
        eprintln!();
    }
    let checkpoints: Vec<String> = store
        .checkpoints(false)
        .await?
        .iter()
        .filter(|c| chains.get(&c.chain).is_some_and(|r| (r.first_seq..=r.last_seq).contains(&c.seq)))
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(dir.join("checkpoints.jsonl"), checkpoints.iter().map(|c| format!("{c}\n")).collect::<String>())?;
    let keys: Vec<serde_json::Value> =
        store.audit_keys().await?.iter().map(|(_, jwk)| serde_json::from_str(jwk)).collect::<Result<_, _>>()?;
    std::fs::write(dir.join("audit-keys.json"), serde_json::to_string_pretty(&serde_json::json!({ "keys": keys }))?)?;
    std::fs::write(dir.join("verify.py"), VERIFY_PY)?;
    std::fs::write(dir.join("README.txt"), readme(from, to))?;
    write_manifest(dir, from, to, &chains)?;
    println!(
        "exported {written} events on {} chain(s) and {} checkpoint(s) to {}; verify with: python3 {}",
        chains.len(),
        checkpoints.len(),
        dir.display(),
        dir.join("verify.py").display()
    );
    Ok(())
}

fn write_manifest(
    dir: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    chains: &BTreeMap<String, ChainRun>,
) -> anyhow::Result<()> {
    let mut files = BTreeMap::new();
    for name in ["events.jsonl", "checkpoints.jsonl", "audit-keys.json", "verify.py", "README.txt"] {
        files.insert(name, hex::encode(Sha256::digest(std::fs::read(dir.join(name))?)));
    }
    let manifest = serde_json::json!({
        "schema": "tollgate.audit_export/v1",
        "from": from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "to": to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "exported_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "chains": chains,
        "files": files,
    });
    std::fs::write(dir.join("MANIFEST.json"), serde_json::to_string_pretty(&manifest)?)?;
    Ok(())
}

fn readme(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!(
        "tollgate audit export, {} to {} (UTC)\n\n\
         events.jsonl       the audit events, chain by chain in order; each chain from its first\n\
         \u{20}                  event in the period to its last (its first prev_hash links it to\n\
         \u{20}                  the events before the period)\n\
         checkpoints.jsonl  the signed checkpoints among those events\n\
         audit-keys.json    the Ed25519 keys (JWKS) that signed them\n\
         MANIFEST.json      the period, each chain's first and last event, each file's sha256\n\
         verify.py          checks all of it: python3 verify.py   (needs: pip install cryptography)\n\n\
         An event's hash is the sha256 of the canonical JSON (keys sorted, compact) of its other\n\
         fields; a checkpoint's signature covers the canonical JSON of its other fields.\n",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}
