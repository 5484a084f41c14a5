//! The policy in force: Casbin model + rules + catalogue, loaded together and
//! identified by one content hash (the `policy_version` in every decision).

pub mod catalogue;
pub mod enforcer;
pub mod engine;
pub mod functions;
mod glob;
pub mod lint;
pub mod priority;
pub mod rule;
pub mod synth;

use std::collections::BTreeSet;
use std::path::Path;

use casbin::CoreApi;
use sha2::{Digest, Sha256};

pub use catalogue::{Catalogue, CatalogueError, Dataset, Grade, Operator, PersonalInfo, Scenario};
pub use rule::{Effect, Rule, RuleLine, Target};

use crate::contract::Operation;
use engine::{Groupings, Roles};

pub const MODEL_FILE: &str = "model.conf";
pub const POLICY_FILE: &str = "policy.csv";
pub const CATALOGUE_FILE: &str = "catalogue.toml";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{0}")]
    Catalogue(#[from] CatalogueError),
    #[error("policy.csv line {line}: {message}")]
    Rule { line: usize, message: String },
    #[error("casbin evaluation failed: {0}")]
    Eval(String),
}

/// What Casbin said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasbinVerdict {
    pub allowed: bool,
    /// The rules that decided, as written in policy.csv (`p, sub, dom, …`).
    pub matched_rules: Vec<String>,
    /// True when an explicit deny rule matched (deny overrides allow).
    pub denied_by_rule: bool,
}

/// What must stay true: the rules are held once. With the index, casbin-rs
/// is loaded with the permission rules only (never the role assignments,
/// which the index takes from tollgate's parse) and dropped once the index
/// is built from it, and policy.csv is kept as text, parsed only by
/// the tools that read rules as written ([`Policy::rules`]); with 100k
/// rules each extra copy costs tens of MB of a service's memory. The
/// service keeps not even the text ([`Policy::without_rules_text`]): what
/// it compares across versions are the rules' fingerprints.
pub struct Policy {
    version: String,
    catalogue: Catalogue,
    /// casbin-rs itself, kept only when the index cannot decide this model.
    enforcer: Option<enforcer::Reference>,
    /// The indexed evaluator when the model allows it; else casbin-rs decides.
    engine: Option<engine::IndexedEngine>,
    /// The obligations section (`p2`/`m2`), when the model has one.
    obligations: Option<engine::IndexedEngine>,
    rule_count: usize,
    /// policy.csv as read; None in the service (see [`Policy::without_rules_text`]).
    rules_text: Option<String>,
    /// Each distinct rule as Casbin reads it (`p, a, b, …`), hashed, sorted:
    /// what changed between two versions, in 16 bytes a rule instead of
    /// its text (5.6 MB for 100k rules).
    fingerprints: Vec<u128>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("version", &self.version).field("rules", &self.rule_count).finish()
    }
}

fn read(dir: &Path, file: &str) -> Result<String, PolicyError> {
    std::fs::read_to_string(dir.join(file)).map_err(|source| PolicyError::Io { file: file.into(), source })
}

/// sha256 over each file's name, length and bytes, so moving text from one
/// file to another changes the version too.
pub fn version_of(files: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    for (name, text) in files {
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The role assignments of `rules` (policy.csv's and the catalogue's
/// derived ones), as casbin-rs would hold them.
fn groupings_of<'r>(rules: impl Iterator<Item = &'r Rule>) -> Groupings {
    let mut out = Groupings::new();
    for rule in rules {
        match rule {
            Rule::Role { member, role, scenario } => {
                out.entry("g".into()).or_default().push(vec![member.clone(), role.clone(), scenario.clone()])
            }
            Rule::Group { member, group } => {
                out.entry("g2".into()).or_default().push(vec![member.clone(), group.clone()])
            }
            Rule::Permission { .. } | Rule::Obligation { .. } => {}
        }
    }
    out
}

/// The index, and the casbin-rs enforcer it was built from: loaded with
/// the permission rules only when the index decides (it takes the role
/// assignments from `groupings`), else with every rule, for casbin-rs to
/// decide. What must stay true: the index is given exactly the
/// assignments casbin-rs would have held, so it decides the same.
async fn indexed(
    model: &str,
    rules: &str,
    derived: &[Rule],
    groupings: &Groupings,
) -> Result<(Option<engine::IndexedEngine>, enforcer::Reference), PolicyError> {
    let invalid = |message| PolicyError::Invalid { file: MODEL_FILE.into(), message };
    // The lines as written, but those of a role definition (casbin's
    // section is a rule type's first letter).
    let is_grouping = |line: &&str| line.split(',').next().is_some_and(|t| t.trim().starts_with('g'));
    let permissions: String = rules.lines().filter(|l| !is_grouping(l)).flat_map(|l| [l, "\n"]).collect();
    let light = enforcer::Reference::build(model, &permissions).await.map_err(invalid)?;
    let defined = light.enforcer().get_model().get_model().get("g");
    let all_defined = groupings.keys().all(|g| defined.is_some_and(|d| d.contains_key(g)));
    if all_defined
        && let Some(engine) =
            engine::IndexedEngine::build_section_with(light.enforcer(), "", true, Roles::Given(groupings))
    {
        return Ok((Some(engine), light));
    }
    drop(light);
    let mut all_rules = rules.to_owned();
    all_rules.push('\n');
    for rule in derived {
        all_rules.push_str(&format!("{rule}\n"));
    }
    let reference = enforcer::Reference::build(model, &all_rules).await.map_err(invalid)?;
    Ok((engine::IndexedEngine::build(reference.enforcer()), reference))
}

impl Policy {
    /// Loads and validates `dir`. Nothing is in force until this returns Ok,
    /// so a bad edit can never replace a good policy half-way.
    pub async fn load(dir: &Path) -> Result<Policy, PolicyError> {
        let model = read(dir, MODEL_FILE)?;
        let rules = read(dir, POLICY_FILE)?;
        let catalogue_text = read(dir, CATALOGUE_FILE)?;
        Self::from_texts(&model, &rules, &catalogue_text).await
    }

    pub async fn from_texts(model: &str, rules: &str, catalogue_text: &str) -> Result<Policy, PolicyError> {
        let version = version_of(&[(MODEL_FILE, model), (POLICY_FILE, rules), (CATALOGUE_FILE, catalogue_text)]);
        let catalogue = Catalogue::parse(catalogue_text)?;
        let lines = rule::parse_rules(rules).map_err(|(line, message)| PolicyError::Rule { line, message })?;
        let rule_count = validate_rules(&lines, &catalogue)?;
        let has_obligations = lines.iter().any(|r| matches!(r.rule, Rule::Obligation { .. }));
        let derived = catalogue.derived_groups();
        let groupings = groupings_of(lines.iter().map(|l| &l.rule).chain(&derived));
        let fingerprints = fingerprints_of(&lines);
        drop(lines);
        let (engine, enforcer) = indexed(model, rules, &derived, &groupings).await?;
        drop(groupings);
        let has_p2 = enforcer.enforcer().get_model().get_model().get("p").is_some_and(|p| p.contains_key("p2"));
        let obligations = if has_p2 && has_obligations {
            let roles = engine.as_ref().map_or(Roles::Held, Roles::Shared);
            let section = engine::IndexedEngine::build_section_with(enforcer.enforcer(), "2", false, roles);
            Some(section.ok_or_else(|| {
                PolicyError::Invalid {
                    file: MODEL_FILE.into(),
                    message:
                        "the obligations matcher m2 must be a conjunction of r2.x == p2.y / g(r2.x, p2.y[, r2.z]) \
                          clauses, each optionally p2.y == \"*\" || …"
                            .into(),
                }
            })?)
        } else {
            None
        };
        let enforcer = if engine.is_some() { None } else { Some(enforcer) };
        let rules_text = Some(rules.to_owned());
        let policy = Policy { version, catalogue, enforcer, engine, obligations, rule_count, rules_text, fingerprints };
        // Evaluate once so a matcher that only fails at run time (an unknown
        // function, a type error) is rejected at load, not on live traffic.
        policy.authorize("000000000000000000", "probe", "probe", Operation::Query)?;
        Ok(policy)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// policy.csv as typed rules, for linting and explanations.
    ///
    /// Panics on a policy built for the service
    /// ([`Policy::without_rules_text`]): what must stay true is that the
    /// service never reads rules as written, only their fingerprints.
    pub fn rules(&self) -> Rules<'_> {
        let text = self.rules_text.as_deref().expect("a service's policy keeps no rules text");
        // The same text passed `parse_rules` in `from_texts`, or this
        // policy would not exist.
        let lines = rule::parse_rules(text).expect("policy.csv was parsed when the policy was loaded");
        Rules { policy: self, lines }
    }

    /// The policy without policy.csv's text, as the service holds it: it
    /// decides from the index (or casbin-rs) and compares versions by
    /// fingerprints ([`Policy::rule_changes`]).
    pub fn without_rules_text(self) -> Policy {
        Policy { rules_text: None, ..self }
    }

    /// How many distinct rules (as Casbin reads them) `newer` adds to this
    /// version and removes from it.
    pub fn rule_changes(&self, newer: &Policy) -> (usize, usize) {
        let (old, new) = (&self.fingerprints, &newer.fingerprints);
        let common = common_count(old, new);
        (new.len() - common, old.len() - common)
    }

    /// Asks Casbin whether `subject` may perform `op` on `dataset` within
    /// `scenario` (the RBAC domain): through the index when the model allows
    /// it, else casbin-rs itself.
    pub fn authorize(
        &self,
        subject: &str,
        scenario: &str,
        dataset: &str,
        op: Operation,
    ) -> Result<CasbinVerdict, PolicyError> {
        let request = [subject, scenario, dataset, op.as_str()];
        let (allowed, rules) = match (self.engine.as_ref().and_then(|e| e.enforce(&request)), &self.enforcer) {
            (Some(decided), _) => decided,
            (None, Some(enforcer)) => {
                enforcer.enforce_ex(request.to_vec()).map_err(|e| PolicyError::Eval(e.to_string()))?
            }
            // The index declines only a request of another arity than the
            // model's `r`, which casbin-rs refuses as well.
            (None, None) => {
                return Err(PolicyError::Eval("the request does not fit the model's request_definition".into()));
            }
        };
        Ok(verdict(allowed, rules))
    }

    /// Obligations the matching `p2` rules attach, in policy order, each with
    /// its rule as written (`p2, sub, dom, obj, act, obligation`).
    pub fn obligations(&self, subject: &str, scenario: &str, dataset: &str, op: Operation) -> Vec<(String, String)> {
        let Some(engine) = &self.obligations else { return Vec::new() };
        engine
            .matches(&[subject, scenario, dataset, op.as_str()])
            .unwrap_or_default()
            .into_iter()
            .map(|rule| (format!("p2, {}", rule.join(", ")), rule.last().cloned().unwrap_or_default()))
            .collect()
    }

    /// Whether decisions use the index (else casbin-rs evaluates every rule).
    pub fn is_indexed(&self) -> bool {
        self.engine.is_some()
    }
}

/// Each distinct rule's fingerprint, sorted: the first 16 bytes of the
/// sha256 of the rule as Casbin reads it (so spacing and comments do not
/// count as changes; a collision among a few hundred thousand rules is
/// out of reach).
fn fingerprints_of(lines: &[RuleLine]) -> Vec<u128> {
    let mut out: Vec<u128> = lines
        .iter()
        .map(|l| {
            let digest = Sha256::digest(l.rule.to_string().as_bytes());
            u128::from_be_bytes(digest[..16].try_into().expect("sha256 has 32 bytes"))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// How many values two sorted, distinct lists share.
fn common_count(a: &[u128], b: &[u128]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (i, j, n) = (i + 1, j + 1, n + 1),
        }
    }
    n
}

/// policy.csv's rules with their line numbers, comments dropped.
pub struct Rules<'p> {
    policy: &'p Policy,
    lines: Vec<RuleLine>,
}

impl Rules<'_> {
    pub fn lines(&self) -> &[RuleLine] {
        &self.lines
    }

    /// Roles `subject` holds in `scenario`, transitively, from `g` lines.
    pub fn roles_of(&self, subject: &str, scenario: &str) -> BTreeSet<String> {
        let edges = self.lines.iter().filter_map(|r| match &r.rule {
            Rule::Role { member, role, scenario: s } if s == scenario => Some((member, role)),
            _ => None,
        });
        closure(subject, edges)
    }

    /// Groups `dataset` belongs to, transitively: `g2` lines plus the grade
    /// and personal-information groups derived from the catalogue.
    pub fn groups_of(&self, dataset: &str) -> BTreeSet<String> {
        let derived = self.policy.catalogue.derived_groups();
        let edges = self.lines.iter().map(|r| &r.rule).chain(derived.iter()).filter_map(|r| match r {
            Rule::Group { member, group } => Some((member, group)),
            _ => None,
        });
        closure(dataset, edges)
    }
}

fn verdict(allowed: bool, rules: Vec<Vec<String>>) -> CasbinVerdict {
    let denied_by_rule = !allowed && rules.iter().any(|r| r.last().is_some_and(|e| e == "deny"));
    let matched_rules = rules.into_iter().map(|r| format!("p, {}", r.join(", "))).collect();
    CasbinVerdict { allowed, matched_rules, denied_by_rule }
}

/// Everything reachable from `start` along `edges` (member → group), each
/// edge looked at once.
fn closure<'a>(start: &str, edges: impl Iterator<Item = (&'a String, &'a String)>) -> BTreeSet<String> {
    let mut next: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for (from, to) in edges {
        next.entry(from.as_str()).or_default().push(to.as_str());
    }
    let mut found = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(x) = todo.pop() {
        for to in next.get(x).into_iter().flatten() {
            if found.insert((*to).to_owned()) {
                todo.push(to);
            }
        }
    }
    found
}

/// A rule's scenario, dataset (or group) and operation must exist.
fn check_target(t: &Target, catalogue: &Catalogue, groups: &BTreeSet<&str>) -> Result<(), String> {
    if t.scenario != "*" && !catalogue.scenarios.contains_key(&t.scenario) {
        return Err(format!("unknown scenario {}", t.scenario));
    }
    let obj = t.object.as_str();
    let builtin = obj.starts_with("grade:") || obj.starts_with("pi:");
    if obj != "*" && !builtin && !groups.contains(obj) && !catalogue.datasets.contains_key(obj) {
        return Err(format!("unknown dataset or dataset group {obj}"));
    }
    if t.action != "*" && !Operation::ALL.iter().any(|o| o.as_str() == t.action) {
        return Err(format!("unknown operation {}", t.action));
    }
    Ok(())
}

/// Rules must name things that exist: a scenario (domain) or dataset that is
/// not in the catalogue is almost always a typo that would silently never
/// match. Returns the number of `p` rules.
fn validate_rules(rules: &[RuleLine], catalogue: &Catalogue) -> Result<usize, PolicyError> {
    let groups: BTreeSet<&str> = rules
        .iter()
        .filter_map(|r| match &r.rule {
            Rule::Group { group, .. } => Some(group.as_str()),
            _ => None,
        })
        .collect();
    for RuleLine { line, rule } in rules {
        let checked = match rule {
            Rule::Permission { target, .. } | Rule::Obligation { target, .. } => {
                check_target(target, catalogue, &groups)
            }
            Rule::Role { scenario, .. } if !catalogue.scenarios.contains_key(scenario) => {
                Err(format!("unknown scenario {scenario}"))
            }
            Rule::Group { member, .. }
                if !catalogue.datasets.contains_key(member) && !groups.contains(member.as_str()) =>
            {
                Err(format!("unknown dataset {member}"))
            }
            Rule::Role { .. } | Rule::Group { .. } => Ok(()),
        };
        checked.map_err(|message| PolicyError::Rule { line: *line, message })?;
    }
    Ok(rules.iter().filter(|r| r.rule.permission().is_some()).count())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;

    use super::*;

    #[tokio::test]
    async fn a_new_version_counts_the_rules_it_adds_and_removes_not_their_order_spacing_or_repeats() {
        let (model, catalogue) =
            (include_str!("../../policies/model.conf"), include_str!("../../policies/catalogue.toml"));
        let shipped = include_str!("../../policies/policy.csv");
        let old = Policy::from_texts(model, shipped, catalogue).await.unwrap();
        let rules: Vec<&str> = shipped.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
        // The same rules backwards, with other spacing, one written twice.
        let mut same: Vec<String> = rules.iter().rev().map(|l| l.replace(", ", ",  ")).collect();
        same.push(rules[0].to_owned());
        let same = Policy::from_texts(model, &same.join("\n"), catalogue).await.unwrap();
        assert_eq!(old.rule_changes(&same), (0, 0));
        // One rule gone, one new; compared as the service holds policies.
        let mut edited: Vec<&str> = rules[..rules.len() - 1].to_vec();
        edited.push("g, 91350100MA2XXXXXX1, tourism-developer, smart-tourism");
        let edited = Policy::from_texts(model, &edited.join("\n"), catalogue).await.unwrap().without_rules_text();
        assert_eq!(old.rule_changes(&edited), (1, 1));
        assert_eq!(edited.rule_changes(&same), (1, 1));
    }

    /// The index takes its role assignments from tollgate's own parse of
    /// the rules, which casbin-rs never loads when the index decides: it
    /// must decide, explain and attach obligations exactly as casbin-rs
    /// with every rule loaded, whatever the order of the lines.
    #[tokio::test]
    async fn roles_parsed_by_tollgate_decide_as_casbin_with_every_rule_loaded_in_any_order() {
        let model = include_str!("../../policies/model.conf");
        for seed in 1..=3 {
            let s = synth::generate(1_500, seed);
            // Obligations, and a rule that holds only through the catalogue's
            // derived groupings (every synthetic dataset is graded general).
            let extra = format!(
                "p2, *, {}, *, query, aggregate_only\np2, *, *, {}, *, watermark\np, *, *, grade:general, download, deny",
                s.domains[0], s.objects[0]
            );
            let mut lines: Vec<&str> = s.policy.lines().chain(extra.lines()).collect();
            lines.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let text = lines.join("\n");
            let catalogue_text = s.catalogue();
            let policy = Policy::from_texts(model, &text, &catalogue_text).await.unwrap();
            assert!(policy.is_indexed() && policy.enforcer.is_none());
            let derived: String = Catalogue::parse(&catalogue_text)
                .unwrap()
                .derived_groupings()
                .iter()
                .map(|l| format!("{l}\n"))
                .collect();
            let reference = enforcer::Reference::build(model, &format!("{text}\n{derived}")).await.unwrap();
            let obligations = engine::IndexedEngine::build_section(reference.enforcer(), "2", false).unwrap();
            let (mut allowed, mut obliged) = (0, 0);
            for [sub, dom, obj, act] in s.requests(3_000) {
                let op = *Operation::ALL.iter().find(|o| o.as_str() == act).unwrap();
                let got = policy.authorize(&sub, &dom, &obj, op).unwrap();
                let want = reference.enforce_ex(vec![&sub, &dom, &obj, &act]).unwrap();
                assert_eq!(got, verdict(want.0, want.1), "{sub} {dom} {obj} {act}");
                let want: Vec<(String, String)> = obligations
                    .matches(&[&sub, &dom, &obj, &act])
                    .unwrap()
                    .into_iter()
                    .map(|r| (format!("p2, {}", r.join(", ")), r.last().cloned().unwrap()))
                    .collect();
                assert_eq!(policy.obligations(&sub, &dom, &obj, op), want);
                allowed += usize::from(got.allowed);
                obliged += usize::from(!want.is_empty());
            }
            assert!(
                allowed > 300 && allowed < 2_700 && obliged > 50,
                "a real mix: {allowed} allowed, {obliged} obliged"
            );
        }
    }
}
