//! The policy author's commands: check, test, explain, eval. Each returns a
//! report that prints for people or serialises as JSON, and says whether it
//! passed (the process exits non-zero when not).

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use tollgate::contract::{Outcome, Reason};
use tollgate::decide::policy_tests::{CaseResult, Probe, run_tests};
use tollgate::policy::lint::{Finding, lint};
use tollgate::policy::{Policy, PolicyError};

pub struct CommandOutput {
    pub ok: bool,
    pub human: String,
    pub json: serde_json::Value,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    ok: bool,
    version: Option<&'a str>,
    rules: usize,
    datasets: usize,
    scenarios: usize,
    error: Option<String>,
    findings: &'a [Finding],
}

pub async fn check(dir: &Path) -> CommandOutput {
    match Policy::load(dir).await {
        Err(e) => CommandOutput {
            ok: false,
            human: format!("✗ {}: {e}\n", dir.display()),
            json: serde_json::to_value(CheckJson {
                ok: false,
                version: None,
                rules: 0,
                datasets: 0,
                scenarios: 0,
                error: Some(e.to_string()),
                findings: &[],
            })
            .expect("serialises"),
        },
        Ok(policy) => {
            let findings = lint(&policy);
            let mut human = String::new();
            for f in &findings {
                human.push_str(&format!("policy.csv:{}: {}: {}\n", f.line, f.code, f.message));
            }
            let ok = findings.is_empty();
            human.push_str(&format!(
                "{} {}: {} rules, {} datasets, {} scenarios, version {}{}\n",
                if ok { "✓" } else { "✗" },
                dir.display(),
                policy.rule_count(),
                policy.catalogue().datasets.len(),
                policy.catalogue().scenarios.len(),
                policy.version(),
                if ok { String::new() } else { format!(", {} finding(s)", findings.len()) }
            ));
            let json = serde_json::to_value(CheckJson {
                ok,
                version: Some(policy.version()),
                rules: policy.rule_count(),
                datasets: policy.catalogue().datasets.len(),
                scenarios: policy.catalogue().scenarios.len(),
                error: None,
                findings: &findings,
            })
            .expect("serialises");
            CommandOutput { ok, human, json }
        }
    }
}

/// Raw Casbin: whether tollgate decides `model` + `rules` as reference
/// Casbin does (else the refusal), and priority ties whose outcome depends
/// on file order (`priority_tie`).
pub async fn check_raw(model: &Path, rules: &Path) -> CommandOutput {
    let texts = std::fs::read_to_string(model).and_then(|m| Ok((m, std::fs::read_to_string(rules)?)));
    let loaded = match texts {
        Ok((m, r)) => tollgate::policy::enforcer::Reference::build(&m, &r).await.map(|_| (m, r)),
        Err(e) => Err(e.to_string()),
    };
    let (model_text, rules_text) = match loaded {
        Ok(texts) => texts,
        Err(error) => {
            return CommandOutput {
                ok: false,
                human: format!("✗ {}: {error}\n", model.display()),
                json: serde_json::json!({"ok": false, "error": error, "findings": []}),
            };
        }
    };
    let findings: Vec<Finding> = tollgate::policy::priority::ties(&model_text, &rules_text)
        .into_iter()
        .map(|tie| Finding {
            line: tie.lines[0],
            code: "priority_tie",
            message: format!(
                "lines {} share priority {} with different effects: which decides a request they all match \
                 depends on their order in the file",
                tie.lines.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
                tie.priority
            ),
        })
        .collect();
    let mut human: String =
        findings.iter().map(|f| format!("{}:{}: {}: {}\n", rules.display(), f.line, f.code, f.message)).collect();
    let ok = findings.is_empty();
    human.push_str(&format!(
        "{} {}: decided as reference Casbin{}\n",
        if ok { "✓" } else { "✗" },
        model.display(),
        if ok { String::new() } else { format!(", {} finding(s)", findings.len()) }
    ));
    CommandOutput { ok, human, json: serde_json::json!({"ok": ok, "error": null, "findings": findings}) }
}

pub async fn test(dir: &Path) -> CommandOutput {
    let failed = |message: String| CommandOutput {
        ok: false,
        human: format!("✗ {message}\n"),
        json: serde_json::json!({"ok": false, "error": message}),
    };
    let policy = match Policy::load(dir).await {
        Ok(p) => p,
        Err(e) => return failed(format!("{}: {e}", dir.display())),
    };
    let results: Vec<CaseResult> = match run_tests(&policy, dir) {
        Ok(r) => r,
        Err(e) => return failed(e.to_string()),
    };
    let passed = results.iter().filter(|r| r.passed).count();
    let mut human = String::new();
    for r in &results {
        if r.passed {
            human.push_str(&format!("PASS {}: {}\n", r.file, r.name));
        } else {
            human.push_str(&format!("FAIL {}: {}\n", r.file, r.name));
            for f in &r.failures {
                human.push_str(&format!("     {f}\n"));
            }
        }
    }
    let ok = passed == results.len() && !results.is_empty();
    if results.is_empty() {
        human.push_str(&format!("no test cases in {}\n", dir.join("tests").display()));
    }
    human.push_str(&format!("{passed} passed, {} failed\n", results.len() - passed));
    CommandOutput {
        ok,
        human,
        json: serde_json::json!({"ok": ok, "passed": passed, "failed": results.len() - passed, "results": results}),
    }
}

#[derive(Serialize)]
struct Explanation {
    outcome: Outcome,
    reasons: Vec<Reason>,
    matched_rules: Vec<String>,
    obligations: Vec<String>,
    amount_fen: Option<i64>,
    subject_roles: Vec<String>,
    dataset_groups: Vec<String>,
    candidate_rules: Vec<String>,
    policy_version: String,
}

/// The decision for one probe, with the rules that matched, or the rules
/// that could have and why they did not.
pub async fn explain(dir: &Path, probe: &Probe) -> Result<CommandOutput, PolicyError> {
    let policy = Policy::load(dir).await?;
    let eval = probe.evaluate(&policy, chrono::Utc::now());
    let r = &probe.request;
    let rules = policy.rules();
    let roles = rules.roles_of(&probe.principal.sub, &r.scenario);
    let groups = rules.groups_of(&r.dataset);
    let mut subjects: Vec<&str> = vec!["*", probe.principal.sub.as_str()];
    subjects.extend(roles.iter().map(String::as_str));
    let candidates: Vec<String> = rules
        .lines()
        .iter()
        .filter_map(|l| l.rule.permission().map(|(t, _)| (l, t)))
        .filter(|(_, t)| subjects.contains(&t.subject.as_str()) && t.covers_scenario(&r.scenario))
        .map(|(l, t)| {
            let mut why = Vec::new();
            if t.object != "*" && t.object != r.dataset && !groups.contains(&t.object) {
                why.push(format!("{} is not in {}", r.dataset, t.object));
            }
            if !t.covers_operation(r.operation) {
                why.push(format!("operation is {}, not {}", r.operation.as_str(), t.action));
            }
            let why = if why.is_empty() { String::new() } else { format!("   ({})", why.join("; ")) };
            format!("policy.csv:{}: {}{why}", l.line, l.rule)
        })
        .collect();
    let ex = Explanation {
        outcome: eval.outcome,
        reasons: eval.reasons.clone(),
        matched_rules: eval.matched_rules.clone(),
        obligations: eval.obligations.clone(),
        amount_fen: eval.charge.as_ref().map(|c| c.amount_fen),
        subject_roles: roles.iter().cloned().collect(),
        dataset_groups: groups.iter().cloned().collect(),
        candidate_rules: candidates,
        policy_version: policy.version().to_owned(),
    };
    let mut h = String::new();
    h.push_str(&format!(
        "{} {} {} on {} in {} ({})\n",
        ex.outcome.as_str().to_uppercase(),
        probe.principal.sub,
        r.operation.as_str(),
        r.dataset,
        r.scenario,
        r.purpose.as_str()
    ));
    for reason in &ex.reasons {
        h.push_str(&format!("  reason   {}: {}\n", reason.code, reason.message));
    }
    for m in &ex.matched_rules {
        h.push_str(&format!("  matched  {m}\n"));
    }
    if !ex.obligations.is_empty() {
        h.push_str(&format!("  obliged  {}\n", ex.obligations.join(", ")));
    }
    if let Some(a) = ex.amount_fen {
        h.push_str(&format!("  charge   {a} fen\n"));
    }
    h.push_str(&format!(
        "  subject roles in {}: {}\n",
        r.scenario,
        if roles.is_empty() { "none (not admitted to this scenario)".into() } else { ex.subject_roles.join(", ") }
    ));
    h.push_str(&format!("  dataset groups: {}\n", ex.dataset_groups.join(", ")));
    if ex.matched_rules.is_empty() {
        h.push_str("  rules for this subject, its roles and everyone in this scenario (none matched):\n");
        for c in &ex.candidate_rules {
            h.push_str(&format!("    {c}\n"));
        }
    }
    let json = serde_json::to_value(&ex).expect("serialises");
    Ok(CommandOutput { ok: true, human: h, json })
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("reading requests: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("casbin: {0}")]
    Casbin(String),
}

/// One decision per probe line (JSON), written as one JSON object per line.
pub async fn eval(dir: &Path, input: impl BufRead, out: &mut impl std::io::Write) -> Result<usize, EvalError> {
    let policy = Policy::load(dir).await?;
    let now = chrono::Utc::now();
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let probe: Probe =
            serde_json::from_str(&line).map_err(|e| EvalError::Line { line: i + 1, message: e.to_string() })?;
        let e = probe.evaluate(&policy, now);
        let v = serde_json::json!({
            "outcome": e.outcome,
            "reasons": e.reasons,
            "matched_rules": e.matched_rules,
            "obligations": e.obligations,
            "amount_fen": e.charge.as_ref().map(|c| c.amount_fen),
        });
        writeln!(out, "{v}")?;
        n += 1;
    }
    Ok(n)
}

/// Raw Casbin: any model and policy file, requests as JSON arrays of strings
/// in the model's request order; prints `true`/`false` per line. No
/// catalogue, no tollgate rules: tollgate's engine alone (the index where the
/// model allows it, casbin-rs otherwise), for comparison with other Casbin
/// implementations.
pub async fn eval_raw(
    model: &Path,
    rules: &Path,
    input: impl BufRead,
    out: &mut impl std::io::Write,
) -> Result<usize, EvalError> {
    let model_text = std::fs::read_to_string(model)?;
    // As the service decides: the same reference enforcer, the index where
    // the model allows it.
    let reference = tollgate::policy::enforcer::Reference::build(&model_text, &std::fs::read_to_string(rules)?)
        .await
        .map_err(EvalError::Casbin)?;
    let engine = tollgate::policy::engine::IndexedEngine::build(reference.enforcer());
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let args: Vec<String> =
            serde_json::from_str(&line).map_err(|e| EvalError::Line { line: i + 1, message: e.to_string() })?;
        let request: Vec<&str> = args.iter().map(String::as_str).collect();
        let allowed = match engine.as_ref().and_then(|e| e.enforce(&request)) {
            Some((allowed, _)) => allowed,
            None => {
                reference.enforce_ex(request).map_err(|e| EvalError::Line { line: i + 1, message: e.to_string() })?.0
            }
        };
        writeln!(out, "{allowed}")?;
        n += 1;
    }
    Ok(n)
}

/// Per instance, from its policy chain: the version in force since when,
/// and any rejected edit since.
pub fn status(events: &[tollgate::contract::AuditEvent]) -> CommandOutput {
    let instances = tollgate::broker::reload::policy_status(events);
    let mut human = String::new();
    for s in &instances {
        human.push_str(&format!(
            "{}: {} since {}\n",
            s.chain.trim_start_matches("policy/"),
            s.version.as_deref().unwrap_or("no policy loaded"),
            s.loaded_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
        if let (Some(r), Some(at)) = (&s.pending_rejection, s.rejected_at) {
            human.push_str(&format!("  REJECTED EDIT at {}: {r}\n", at.to_rfc3339()));
        }
    }
    if instances.is_empty() {
        human.push_str("no instance has recorded a policy yet\n");
    }
    CommandOutput { ok: true, human, json: serde_json::json!({"instances": instances}) }
}
