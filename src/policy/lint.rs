//! Findings about rules that load but cannot be what the author meant:
//! duplicates, rules that can never match, roles granted to no one or
//! granting nothing, dataset groups no rule uses.
//!
//! What must stay true: every check is a pass over the rules with sets and
//! maps (n log n at most), so a lint of 100k rules takes a second, not the
//! minutes a rule-against-every-rule comparison took.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::{Effect, Grade, Policy, Rule, RuleLine, Target};
use crate::domain::is_uscc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Line in policy.csv.
    pub line: usize,
    /// Stable code: `duplicate_rule`, `role_never_granted`, `role_grants_nothing`,
    /// `never_effective`, `unused_group`.
    pub code: &'static str,
    pub message: String,
}

pub fn lint(policy: &Policy) -> Vec<Finding> {
    let rules = policy.rules();
    let lines = rules.lines();
    let index = Index::of(lines);
    let mut out = duplicates(lines);
    out.extend(roles_never_granted(&index, lines));
    out.extend(allows_of_core_data_only(policy, lines));
    out.extend(roles_granting_nothing(&index, lines));
    out.extend(unused_groups(&index, lines));
    out.sort_by_key(|f| f.line);
    out
}

/// Who is named where, built once so each check is one pass.
#[derive(Default)]
struct Index<'a> {
    /// `(role, scenario)` of every `g` line.
    granted: HashSet<(&'a str, &'a str)>,
    /// Roles some `g` line grants, in any scenario.
    granted_anywhere: HashSet<&'a str>,
    /// `(subject, scenario)` of every `p` rule; `*` scenarios in `any_scenario`.
    permitted: HashSet<(&'a str, &'a str)>,
    any_scenario: HashSet<&'a str>,
    /// `(member, scenario)` of every `g` line (a role that is itself granted a role).
    members: HashSet<(&'a str, &'a str)>,
    /// Objects `p` rules name, and groups that are members of other groups.
    objects: HashSet<&'a str>,
    group_members: HashSet<&'a str>,
}

impl<'a> Index<'a> {
    fn of(lines: &'a [RuleLine]) -> Index<'a> {
        let mut ix = Index::default();
        for r in lines {
            match &r.rule {
                Rule::Permission { target, .. } => {
                    ix.permitted.insert((&target.subject, &target.scenario));
                    if target.scenario == "*" {
                        ix.any_scenario.insert(&target.subject);
                    }
                    ix.objects.insert(&target.object);
                }
                Rule::Role { member, role, scenario } => {
                    ix.granted.insert((role, scenario));
                    ix.granted_anywhere.insert(role);
                    ix.members.insert((member, scenario));
                }
                Rule::Group { member, .. } => {
                    ix.group_members.insert(member);
                }
                Rule::Obligation { .. } => {}
            }
        }
        ix
    }
}

fn finding(line: usize, code: &'static str, message: String) -> Finding {
    Finding { line, code, message }
}

fn duplicates(lines: &[RuleLine]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: HashMap<&Rule, usize> = HashMap::new();
    for r in lines {
        match seen.get(&r.rule) {
            Some(first) => {
                out.push(finding(r.line, "duplicate_rule", format!("same rule as line {first}: {}", r.rule)))
            }
            None => {
                seen.insert(&r.rule, r.line);
            }
        }
    }
    out
}

/// `p` rules for a role no `g` line grants (in their scenario, or in any
/// scenario for a `*` rule).
fn roles_never_granted(ix: &Index<'_>, lines: &[RuleLine]) -> Vec<Finding> {
    let permissions = lines.iter().filter_map(|r| r.rule.permission().map(|(t, _)| (r.line, t)));
    permissions
        .filter(|(_, t)| t.subject != "*" && !is_uscc(&t.subject))
        .filter(|(_, t)| match t.scenario.as_str() {
            "*" => !ix.granted_anywhere.contains(t.subject.as_str()),
            dom => !ix.granted.contains(&(t.subject.as_str(), dom)),
        })
        .map(|(line, t)| {
            let message = format!("no g line grants role {} in {}: this rule can never match", t.subject, t.scenario);
            finding(line, "role_never_granted", message)
        })
        .collect()
}

/// Allows whose datasets are all core data, which is never authorized.
fn allows_of_core_data_only(policy: &Policy, lines: &[RuleLine]) -> Vec<Finding> {
    let members = DatasetsIn::new(policy, lines);
    let mut verdicts: HashMap<&str, bool> = HashMap::new();
    let mut out = Vec::new();
    for r in lines {
        let Some((Target { object, .. }, Effect::Allow)) = r.rule.permission() else { continue };
        if object == "*" {
            continue;
        }
        let core_only = *verdicts.entry(object).or_insert_with(|| members.all_core(object));
        if core_only {
            let message = format!("{object} holds only core data, which is never authorized: this allow has no effect");
            out.push(finding(r.line, "never_effective", message));
        }
    }
    out
}

/// The datasets in a group, through `g2` lines and the catalogue's derived
/// groups, walked from the group down (each group's members once).
struct DatasetsIn<'a> {
    policy: &'a Policy,
    members_of: HashMap<String, Vec<String>>,
}

impl<'a> DatasetsIn<'a> {
    fn new(policy: &'a Policy, lines: &[RuleLine]) -> DatasetsIn<'a> {
        let mut members_of: HashMap<String, Vec<String>> = HashMap::new();
        let derived = policy.catalogue().derived_groups();
        for rule in lines.iter().map(|r| &r.rule).chain(derived.iter()) {
            if let Rule::Group { member, group } = rule {
                members_of.entry(group.clone()).or_default().push(member.clone());
            }
        }
        DatasetsIn { policy, members_of }
    }

    /// Whether `object` names at least one dataset, and only core ones.
    fn all_core(&self, object: &str) -> bool {
        let datasets = &self.policy.catalogue().datasets;
        let (mut seen, mut todo) = (BTreeSet::from([object.to_owned()]), vec![object.to_owned()]);
        let (mut any, mut all_core) = (false, true);
        while let Some(x) = todo.pop() {
            if let Some(d) = datasets.get(&x) {
                any = true;
                all_core &= d.grade == Grade::Core;
            }
            for m in self.members_of.get(&x).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        any && all_core
    }
}

fn roles_granting_nothing(ix: &Index<'_>, lines: &[RuleLine]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in lines {
        let Rule::Role { role, scenario, .. } = &r.rule else { continue };
        let (role, dom) = (role.as_str(), scenario.as_str());
        let used =
            ix.permitted.contains(&(role, dom)) || ix.any_scenario.contains(role) || ix.members.contains(&(role, dom));
        if !used {
            let message = format!("role {role} has no rules in {dom}: granting it changes nothing");
            out.push(finding(r.line, "role_grants_nothing", message));
        }
    }
    out
}

fn unused_groups(ix: &Index<'_>, lines: &[RuleLine]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for r in lines {
        let Rule::Group { group, .. } = &r.rule else { continue };
        let used = ix.objects.contains(group.as_str()) || ix.group_members.contains(group.as_str());
        if !used && reported.insert(group.as_str()) {
            out.push(finding(r.line, "unused_group", format!("no rule names dataset group {group}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_with(rules: &str) -> Policy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let model = std::fs::read_to_string(dir.join("model.conf")).unwrap();
        let catalogue = std::fs::read_to_string(dir.join("catalogue.toml")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(Policy::from_texts(&model, rules, &catalogue)).unwrap()
    }

    #[test]
    fn each_finding_names_the_line_it_is_about() {
        let policy = shipped_with(
            "p, role:a, smart-tourism, tour, query, allow\n\
             g, 91350100MA2XXXXXX1, role:a, smart-tourism\n\
             p, role:a, smart-tourism, tour, query, allow\n\
             p, role:ghost, smart-tourism, *, query, allow\n\
             g, 91350100MA2XXXXXX1, role:idle, smart-tourism\n\
             g2, GX-610100-TOUR-0001, tour\n\
             g2, GX-610100-TOUR-0001, nobody-uses-this\n\
             p, *, *, grade:core, query, allow\n",
        );
        let found: Vec<(usize, &str)> = lint(&policy).iter().map(|f| (f.line, f.code)).collect();
        assert_eq!(
            found,
            [
                (3, "duplicate_rule"),
                (4, "role_never_granted"),
                (5, "role_grants_nothing"),
                (7, "unused_group"),
                (8, "never_effective"),
            ]
        );
    }

    #[test]
    fn lint_of_thirty_thousand_rules_is_a_pass_not_a_comparison_of_every_pair() {
        // Not a timing assertion: with a check per rule against every rule
        // or every dataset's group closure (the lint before), this took
        // minutes; as passes it is a fraction of the policy's load.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let model = std::fs::read_to_string(dir.join("model.conf")).unwrap();
        let catalogue = std::fs::read_to_string(dir.join("catalogue.toml")).unwrap();
        let mut rules = String::new();
        for i in 0..10_000 {
            rules.push_str(&format!("p, role:r{i}, smart-tourism, group:g{i}, query, allow\n"));
            rules.push_str(&format!("g, 91350100MA2XXXXXX1, role:r{i}, smart-tourism\n"));
            rules.push_str(&format!("g2, GX-610100-TOUR-0001, group:g{i}\n"));
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let policy = rt.block_on(Policy::from_texts(&model, &rules, &catalogue)).unwrap();
        assert!(lint(&policy).is_empty());
    }
}
