//! `tollgate policy impact DIR`: the decisions tollgate made, decided again
//! under the proposed policy in DIR; every one that would change, counted
//! by kind, by the rule responsible and by enterprise.

use std::io::{IsTerminal, Write};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};

use tollgate::decide::impact::{Change, ReplayInputs, Side, Summary, compare};
use tollgate::policy::Policy;
use tollgate::store::{Store, StoredDecision};

use super::policy::CommandOutput;

/// Decisions read per page.
const PAGE: i64 = 5_000;

/// `30d`, `12h`, `2w`, `90m` before `now`, or an RFC 3339 time.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = n.parse().map_err(|_| format!("--since {text}: expected e.g. 30d, 12h, 2w or an RFC 3339 time"))?;
    let span = match unit {
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        "w" => Duration::weeks(n),
        _ => return Err(format!("--since {text}: the unit is one of m, h, d, w")),
    };
    Ok(now - span)
}

/// What to replay and how to report it.
pub struct Options {
    pub since: DateTime<Utc>,
    /// Exit non-zero above this many changed decisions.
    pub max_changes: Option<u64>,
    /// Changes listed one by one (all are counted).
    pub list: usize,
    /// Progress on standard error (a terminal, not `--json`).
    pub progress: bool,
}

/// Replays every decision since `options.since` under the policy in `dir`.
pub async fn impact(dir: &Path, store: &Store, options: &Options) -> anyhow::Result<CommandOutput> {
    let policy = Policy::load(dir).await?;
    let since = options.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (mut summary, mut listed) = (Summary::default(), Vec::new());
    let mut after: Option<(String, String)> = None;
    let progress = options.progress && std::io::stderr().is_terminal();
    loop {
        let page = store.decisions_since(&since, after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.decided_at.clone(), last.request_id.clone()));
        for stored in &page {
            match replay(&policy, stored)? {
                None => summary.not_replayable += 1,
                Some(change) => {
                    summary.replayed += 1;
                    if let Some(change) = change {
                        summary.count(&change);
                        if listed.len() < options.list {
                            listed.push(change);
                        }
                    }
                }
            }
        }
        if progress {
            eprint!("\rreplayed {} decisions, {} would change", summary.replayed, summary.changed);
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    Ok(report(&policy, options, summary, listed))
}

/// None when the decision has no inputs to replay; Some(None) when the
/// proposed policy decides it the same way.
fn replay(policy: &Policy, stored: &StoredDecision) -> anyhow::Result<Option<Option<Change>>> {
    let Some(inputs) = &stored.inputs else { return Ok(None) };
    let inputs: ReplayInputs = serde_json::from_str(inputs)?;
    let decided_at = DateTime::parse_from_rfc3339(&stored.decided_at)?.with_timezone(&Utc);
    let before = Side {
        outcome: stored.outcome.clone(),
        reason: stored.reason_code.clone(),
        effects: stored.effects.as_deref().map(serde_json::from_str).transpose()?.unwrap_or_default(),
    };
    let replayed = inputs.replay(policy, decided_at);
    Ok(Some(compare(&stored.request_id, &inputs, before, &replayed)))
}

fn report(policy: &Policy, options: &Options, summary: Summary, listed: Vec<Change>) -> CommandOutput {
    let ok = options.max_changes.is_none_or(|max| summary.changed <= max);
    let json = serde_json::json!({
        "ok": ok,
        "policy_version": policy.version(),
        "since": options.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "max_changes": options.max_changes,
        "summary": &summary,
        "changes": &listed,
    });
    let mut human = format!(
        "{} decisions since {} replayed under {} ({} not replayable): {} would change\n",
        summary.replayed,
        options.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        policy.version(),
        summary.not_replayable,
        summary.changed
    );
    let counts = |m: &std::collections::BTreeMap<tollgate::decide::impact::ChangeKind, u64>| {
        m.iter().map(|(k, n)| format!("{} {n}", kind_name(*k))).collect::<Vec<_>>().join(", ")
    };
    for (title, groups) in [("by rule", &summary.by_rule), ("by enterprise", &summary.by_enterprise)] {
        if !groups.is_empty() {
            human.push_str(&format!("{title}:\n"));
        }
        for (key, kinds) in groups {
            human.push_str(&format!("  {key}: {}\n", counts(kinds)));
        }
    }
    for c in &listed {
        human.push_str(&format!(
            "{} {} {} {} {}: {} {} → {} {} ({})\n",
            kind_name(c.kind),
            c.request_id,
            c.subject,
            c.dataset,
            c.operation,
            c.before.outcome,
            c.before.reason.as_deref().unwrap_or(""),
            c.after.outcome,
            c.after.reason.as_deref().unwrap_or(""),
            c.responsible
        ));
    }
    if let (false, Some(max)) = (ok, options.max_changes) {
        human.push_str(&format!("✗ {} changes exceed --max-changes {max}\n", summary.changed));
    }
    CommandOutput { ok, human, json }
}

fn kind_name(kind: tollgate::decide::impact::ChangeKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
