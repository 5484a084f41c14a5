//! policy.csv rules as typed values, parsed once: validation, lint, explain
//! and diffs read fields by name instead of by position in a `Vec<String>`.
//!
//! What must stay true: `Display` writes a rule exactly as Casbin reads it
//! (`p, sub, dom, obj, act, eft`), so a rule's text in a decision's
//! `matched_rules`, a lint finding and a diff is one and the same.

use std::fmt;

use crate::contract::Operation;

/// Whether a `p` rule allows or denies (deny overrides allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Who may do what, where, on which data: the four fields `p` and `p2`
/// rules share. `*` matches anything in its place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// A USCC, a role, or `*`.
    pub subject: String,
    /// A scenario code (the RBAC domain), or `*`.
    pub scenario: String,
    /// A dataset code, a dataset group, `grade:*`/`pi:*`, or `*`.
    pub object: String,
    /// An operation, or `*`.
    pub action: String,
}

impl Target {
    /// Whether the rule names `op` (itself or `*`).
    pub fn covers_operation(&self, op: Operation) -> bool {
        self.action == "*" || self.action == op.as_str()
    }

    /// Whether the rule's scenario is `scenario` or `*`.
    pub fn covers_scenario(&self, scenario: &str) -> bool {
        self.scenario == "*" || self.scenario == scenario
    }
}

/// One line of policy.csv.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// `p, sub, dom, obj, act, eft`
    Permission { target: Target, effect: Effect },
    /// `p2, sub, dom, obj, act, obligation`
    Obligation { target: Target, obligation: String },
    /// `g, member, role, scenario`: member holds role in scenario.
    Role { member: String, role: String, scenario: String },
    /// `g2, dataset, group`: dataset (or group) belongs to group.
    Group { member: String, group: String },
}

/// A rule and the policy.csv line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLine {
    pub line: usize,
    pub rule: Rule,
}

fn target(f: &[&str]) -> Target {
    Target { subject: f[1].into(), scenario: f[2].into(), object: f[3].into(), action: f[4].into() }
}

fn is_obligation_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
}

impl Rule {
    /// Parses one line's fields (already split on commas and trimmed); the
    /// error says what shape the rule type needs.
    pub fn parse(f: &[&str]) -> Result<Rule, String> {
        match f.first().copied() {
            Some("p") if f.len() == 6 => {
                let effect = match f[5] {
                    "allow" => Effect::Allow,
                    "deny" => Effect::Deny,
                    other => return Err(format!("effect must be allow or deny, not {other}")),
                };
                Ok(Rule::Permission { target: target(f), effect })
            }
            Some("p") => Err(format!("expected 6 fields (p, sub, dom, obj, act, eft), found {}", f.len())),
            Some("p2") if f.len() == 6 => {
                if !is_obligation_word(f[5]) {
                    return Err(format!("obligation {:?} must be a word like aggregate_only or mask:field", f[5]));
                }
                Ok(Rule::Obligation { target: target(f), obligation: f[5].into() })
            }
            Some("p2") => Err(format!("expected 6 fields (p2, sub, dom, obj, act, obligation), found {}", f.len())),
            Some("g") if f.len() == 4 => {
                Ok(Rule::Role { member: f[1].into(), role: f[2].into(), scenario: f[3].into() })
            }
            Some("g") => Err("expected g, member, role, scenario".into()),
            Some("g2") if f.len() == 3 => Ok(Rule::Group { member: f[1].into(), group: f[2].into() }),
            Some("g2") => Err("expected g2, dataset, group".into()),
            other => Err(format!("unknown rule type {}", other.unwrap_or(""))),
        }
    }

    /// The `p` rule's target and effect, if this is one.
    pub fn permission(&self) -> Option<(&Target, Effect)> {
        match self {
            Rule::Permission { target, effect } => Some((target, *effect)),
            _ => None,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |f: &mut fmt::Formatter<'_>, kind: &str, t: &Target, last: &str| {
            write!(f, "{kind}, {}, {}, {}, {}, {last}", t.subject, t.scenario, t.object, t.action)
        };
        match self {
            Rule::Permission { target, effect } => t(f, "p", target, effect.as_str()),
            Rule::Obligation { target, obligation } => t(f, "p2", target, obligation),
            Rule::Role { member, role, scenario } => write!(f, "g, {member}, {role}, {scenario}"),
            Rule::Group { member, group } => write!(f, "g2, {member}, {group}"),
        }
    }
}

/// policy.csv's lines that hold a rule: `(line number, fields)`, blank
/// lines and `#` comments dropped.
pub(crate) fn split_lines(rules: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    rules.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (i + 1, line.split(',').map(str::trim).collect()))
    })
}

/// Every rule of `rules`, or the first line that is not one.
pub fn parse_rules(rules: &str) -> Result<Vec<RuleLine>, (usize, String)> {
    split_lines(rules)
        .map(|(line, f)| Rule::parse(&f).map(|rule| RuleLine { line, rule }).map_err(|e| (line, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_written_back_exactly_as_casbin_reads_it() {
        for text in [
            "p, role:analyst, smart_tourism, GX-610100-TOUR-0001, query, allow",
            "p2, *, *, pi:personal, *, mask:id_number",
            "g, 91350100MA2XXXXXX1, role:analyst, smart_tourism",
            "g2, GX-610100-TOUR-0001, tourism",
        ] {
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            assert_eq!(Rule::parse(&fields).unwrap().to_string(), text);
        }
    }

    #[test]
    fn a_malformed_rule_is_refused_with_the_shape_it_needs() {
        let parse = |s: &str| Rule::parse(&s.split(',').map(str::trim).collect::<Vec<_>>());
        assert!(parse("p, a, b, c, d").unwrap_err().contains("expected 6 fields"));
        assert!(parse("p, a, b, c, d, maybe").unwrap_err().contains("allow or deny"));
        assert!(parse("p2, a, b, c, d, two words").unwrap_err().contains("obligation"));
        assert!(parse("g, a, b").unwrap_err().contains("g, member, role, scenario"));
        assert!(parse("g3, a, b").unwrap_err().contains("unknown rule type g3"));
    }

    #[test]
    fn comments_and_blank_lines_keep_the_line_numbers_of_the_rules() {
        let rules = parse_rules("# header\n\np, *, *, *, query, allow\n  # note\ng2, a, b\n").unwrap();
        assert_eq!(rules.iter().map(|r| r.line).collect::<Vec<_>>(), vec![3, 5]);
    }
}
