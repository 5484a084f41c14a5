//! Policy tests and what-if probes: a principal and a request, decided by
//! the same pure pipeline the service uses, without tokens, Kafka or a
//! database. Test files live beside the policy (`policies/tests/*.toml`).

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::contract::{AccessRequest, Operation, Outcome, Purpose, PurposeClass, REQUEST_SCHEMA, Volume, Window};
use crate::decide::{DecisionInput, Evaluation, evaluate};

use super::Policy;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbePrincipal {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub qualifications: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    pub scenario: String,
    pub dataset: String,
    pub operation: Operation,
    pub purpose: PurposeClass,
    #[serde(default)]
    pub statement: Option<String>,
    #[serde(default)]
    pub volume: Option<Volume>,
    #[serde(default)]
    pub window: Option<Window>,
}

/// One question to the policy: "what would it decide for this principal
/// asking this, with this much quota used, at this time?"
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub principal: ProbePrincipal,
    pub request: ProbeRequest,
    /// Units already used this period (quota and tier position).
    #[serde(default)]
    pub used: u64,
    /// Decision time; default now (tests default to their file's `now`).
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
}

impl Probe {
    pub fn evaluate(&self, policy: &Policy, default_now: DateTime<Utc>) -> Evaluation {
        let principal = Principal {
            subject: self.principal.sub.clone(),
            issuer: "probe".into(),
            roles: self.principal.roles.iter().cloned().collect(),
            qualifications: self.principal.qualifications.iter().cloned().collect(),
            token_id: None,
            expires_at: i64::MAX,
            organisation: self.principal.sub.clone(),
            name: None,
        };
        let r = &self.request;
        let request = AccessRequest {
            schema: REQUEST_SCHEMA.into(),
            request_id: "probe".into(),
            token: None,
            dataset: r.dataset.clone(),
            operation: r.operation,
            scenario: r.scenario.clone(),
            purpose: Purpose {
                class: r.purpose,
                statement: r.statement.clone().unwrap_or_else(|| "policy probe".into()),
            },
            fields: vec![],
            volume: r.volume.clone(),
            window: r.window.clone(),
            submitted_at: None,
        };
        evaluate(&DecisionInput {
            request: &request,
            identity: Ok(&principal),
            policy,
            used: self.used,
            now: self.now.unwrap_or(default_now),
            grant_ttl_secs: 3600,
            reviewed: false,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub outcome: Outcome,
    /// The first reason's code.
    #[serde(default)]
    pub reason: Option<String>,
    /// Exactly these obligations, in order.
    #[serde(default)]
    pub obligations: Option<Vec<String>>,
    /// A rule that must be among the matched rules.
    #[serde(default)]
    pub matched_rule: Option<String>,
    #[serde(default)]
    pub amount_fen: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub principal: ProbePrincipal,
    pub request: ProbeRequest,
    #[serde(default)]
    pub used: u64,
    /// Overrides the file's `now` for this case.
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    now: Option<DateTime<Utc>>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    /// What differed, when it failed.
    pub failures: Vec<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("reading {file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
}

/// Test files in `dir/tests`, sorted; none is not an error.
pub fn test_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, TestFileError> {
    let tests = dir.join("tests");
    if !tests.is_dir() {
        return Ok(vec![]);
    }
    let io = |source| TestFileError::Io { file: tests.display().to_string(), source };
    let mut files: Vec<_> = std::fs::read_dir(&tests)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs every test case beside the policy in `dir`.
pub fn run_tests(policy: &Policy, dir: &Path) -> Result<Vec<CaseResult>, TestFileError> {
    let mut results = Vec::new();
    for path in test_files(dir)? {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|source| TestFileError::Io { file: file.clone(), source })?;
        let parsed: CaseFile =
            toml::from_str(&text).map_err(|e| TestFileError::Parse { file: file.clone(), message: e.to_string() })?;
        let now = parsed.now.unwrap_or_else(Utc::now);
        let mut names = BTreeSet::new();
        for case in parsed.cases {
            if !names.insert(case.name.clone()) {
                return Err(TestFileError::Parse { file, message: format!("two cases are named {:?}", case.name) });
            }
            results.push(check(&file, case, policy, now));
        }
    }
    Ok(results)
}

fn check(file: &str, case: Case, policy: &Policy, now: DateTime<Utc>) -> CaseResult {
    let probe = Probe { principal: case.principal, request: case.request, used: case.used, now: case.now };
    let eval = probe.evaluate(policy, now);
    let reason = eval.reasons.first().map(|r| r.code.clone());
    let e = &case.expect;
    let mut failures = Vec::new();
    if eval.outcome != e.outcome {
        failures.push(format!("outcome: expected {}, got {} {:?}", e.outcome.as_str(), eval.outcome.as_str(), reason));
    }
    if let Some(want) = &e.reason
        && reason.as_ref() != Some(want)
    {
        failures.push(format!("reason: expected {want}, got {}", reason.as_deref().unwrap_or("none")));
    }
    if let Some(want) = &e.obligations
        && *want != eval.obligations
    {
        failures.push(format!("obligations: expected {want:?}, got {:?}", eval.obligations));
    }
    if let Some(want) = &e.matched_rule
        && !eval.matched_rules.contains(want)
    {
        failures.push(format!("matched rules: {want:?} not among {:?}", eval.matched_rules));
    }
    if let Some(want) = e.amount_fen {
        let got = eval.charge.as_ref().map(|c| c.amount_fen);
        if got != Some(want) {
            failures.push(format!("amount_fen: expected {want}, got {got:?}"));
        }
    }
    CaseResult {
        file: file.to_owned(),
        name: case.name,
        passed: failures.is_empty(),
        failures,
        outcome: eval.outcome,
        reason,
    }
}
