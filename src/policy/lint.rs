//! Findings about rules that load but cannot be what the author meant:
//! duplicates, rules that can never match, roles granted to no one or
//! granting nothing, dataset groups no rule uses.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Grade, Policy, RuleLines};
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
    let rules = policy.rule_lines();
    let lines = rules.lines();
    let p_rules: Vec<&Line> = lines.iter().filter(|(_, f)| f[0] == "p" && f.len() == 6).collect();
    let mut out = duplicates(lines);
    out.extend(rules_that_never_match(policy, &rules, lines, &p_rules));
    out.extend(roles_granting_nothing(lines, &p_rules));
    out.extend(unused_groups(lines, &p_rules));
    out.sort_by_key(|f| f.line);
    out
}

/// A policy.csv line: its number and its fields.
type Line = (usize, Vec<String>);

fn duplicates(lines: &[Line]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (line, f) in lines {
        let key = f.join(", ");
        if let Some(first) = seen.get(&key) {
            out.push(Finding {
                line: *line,
                code: "duplicate_rule",
                message: format!("same rule as line {first}: {key}"),
            });
        } else {
            seen.insert(key, *line);
        }
    }
    out
}

/// `p` rules for a role no `g` line grants, and allows of core data only.
fn rules_that_never_match(policy: &Policy, rules: &RuleLines<'_>, lines: &[Line], p_rules: &[&Line]) -> Vec<Finding> {
    let mut out = Vec::new();
    let granted: BTreeSet<(&str, &str)> = lines
        .iter()
        .filter(|(_, f)| f[0] == "g" && f.len() == 4)
        .map(|(_, f)| (f[2].as_str(), f[3].as_str()))
        .collect();
    for (line, f) in p_rules {
        let (sub, dom) = (f[1].as_str(), f[2].as_str());
        let is_role = sub != "*" && !is_uscc(sub);
        let granted_here = granted.iter().any(|(role, d)| *role == sub && (dom == "*" || *d == dom));
        if is_role && !granted_here {
            out.push(Finding {
                line: *line,
                code: "role_never_granted",
                message: format!("no g line grants role {sub} in {dom}: this rule can never match"),
            });
        }
        if f[5] == "allow" && f[3] != "*" {
            let datasets: Vec<&super::Dataset> = policy
                .catalogue()
                .datasets
                .values()
                .filter(|d| d.code == f[3] || rules.groups_of(&d.code).contains(&f[3]))
                .collect();
            if !datasets.is_empty() && datasets.iter().all(|d| d.grade == Grade::Core) {
                let message =
                    format!("{} holds only core data, which is never authorized: this allow has no effect", f[3]);
                out.push(Finding { line: *line, code: "never_effective", message });
            }
        }
    }
    out
}

fn roles_granting_nothing(lines: &[Line], p_rules: &[&Line]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (line, f) in lines.iter().filter(|(_, f)| f[0] == "g" && f.len() == 4) {
        let (role, dom) = (f[2].as_str(), f[3].as_str());
        let used = p_rules.iter().any(|(_, p)| p[1] == role && (p[2] == dom || p[2] == "*"))
            || lines.iter().any(|(_, g)| g[0] == "g" && g.len() == 4 && g[1] == role && g[3] == dom);
        if !used {
            out.push(Finding {
                line: *line,
                code: "role_grants_nothing",
                message: format!("role {role} has no rules in {dom}: granting it changes nothing"),
            });
        }
    }
    out
}

fn unused_groups(lines: &[Line], p_rules: &[&Line]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for (line, f) in lines.iter().filter(|(_, f)| f[0] == "g2" && f.len() == 3) {
        let group = f[2].as_str();
        let used = p_rules.iter().any(|(_, p)| p[3] == group)
            || lines.iter().any(|(_, g)| g[0] == "g2" && g.len() == 3 && g[1] == group);
        if !used && reported.insert(group.to_owned()) {
            out.push(Finding {
                line: *line,
                code: "unused_group",
                message: format!("no rule names dataset group {group}"),
            });
        }
    }
    out
}
