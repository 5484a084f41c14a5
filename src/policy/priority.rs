//! Explicit rule priority as reference Casbin (Go, Python) applies it: a
//! policy type whose definition has a `priority` field
//! (`p = priority, sub, obj, act, eft`) has its rules sorted by that field
//! when the policy is loaded — lower values first, equal values in file
//! order — so
//! `priority(p.eft) || deny` decides by priority, not by where a rule is
//! written. casbin-rs keeps file order; tollgate sorts before handing the
//! rules to it (and to the index built from it).
//!
//! A priority that is not an integer is refused: pycasbin fails to load
//! such a policy and Go casbin orders it unpredictably (its comparator
//! says "less" whenever either side is not a number), so there is no
//! reference answer to give.

use std::borrow::Cow;

/// `(policy type, field position in a rule line)` of every policy type
/// with a `priority` field; position 0 is the type itself.
fn priority_fields(model: &str) -> Vec<(String, usize)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in model.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[policy_definition]" {
            continue;
        }
        let Some((ptype, fields)) = line.split_once('=') else { continue };
        if let Some(i) = fields.split(',').position(|f| f.trim() == "priority") {
            out.push((ptype.trim().to_owned(), i + 1));
        }
    }
    out
}

/// `rules` with the rules of each priority-carrying policy type sorted by
/// priority, each in the line slots those rules held; borrowed unchanged
/// when the model has no priority field. Err names the first rule whose
/// priority is not an integer.
pub fn sorted_by_priority<'r>(model: &str, rules: &'r str) -> Result<Cow<'r, str>, String> {
    let fields = priority_fields(model);
    if fields.is_empty() {
        return Ok(Cow::Borrowed(rules));
    }
    let mut lines: Vec<&str> = rules.lines().collect();
    for (ptype, at) in fields {
        let slots: Vec<usize> =
            (0..lines.len()).filter(|&i| lines[i].split(',').next().is_some_and(|t| t.trim() == ptype)).collect();
        let mut ours = Vec::with_capacity(slots.len());
        for &i in &slots {
            let field = lines[i].split(',').nth(at).unwrap_or("").trim();
            let priority = field.parse::<i64>().map_err(|_| {
                format!("line {}: priority `{field}` is not an integer (reference Casbin has no order for it)", i + 1)
            })?;
            ours.push((priority, lines[i]));
        }
        // Stable: equal priorities keep file order.
        ours.sort_by_key(|&(priority, _)| priority);
        for (slot, (_, line)) in slots.into_iter().zip(ours) {
            lines[slot] = line;
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(Cow::Owned(out))
}

/// A group of rules with one priority and more than one effect: which of
/// them decides a request they all match depends on where they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tie {
    pub priority: i64,
    /// 1-based lines in the policy file, in file order.
    pub lines: Vec<usize>,
}

/// Priority ties whose rules disagree (an `allow` and a `deny` at the same
/// priority), per priority-carrying policy type; the model's `eft` field
/// decides which rules count. Rules that agree may tie harmlessly.
pub fn ties(model: &str, rules: &str) -> Vec<Tie> {
    let eft_of = |ptype: &str| {
        model_fields(model, ptype).and_then(|fields| fields.iter().position(|f| f == "eft")).map(|i| i + 1)
    };
    let mut out = Vec::new();
    for (ptype, at) in priority_fields(model) {
        let Some(eft) = eft_of(&ptype) else { continue };
        let mut groups: std::collections::BTreeMap<i64, Vec<(usize, String)>> = Default::default();
        for (i, line) in rules.lines().enumerate() {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.first() != Some(&ptype.as_str()) {
                continue;
            }
            if let (Some(Ok(priority)), Some(effect)) = (fields.get(at).map(|f| f.parse::<i64>()), fields.get(eft)) {
                groups.entry(priority).or_default().push((i + 1, (*effect).to_owned()));
            }
        }
        for (priority, group) in groups {
            if group.iter().any(|(_, e)| e != &group[0].1) {
                out.push(Tie { priority, lines: group.into_iter().map(|(line, _)| line).collect() });
            }
        }
    }
    out
}

/// The fields of `ptype` in `[policy_definition]`.
fn model_fields(model: &str, ptype: &str) -> Option<Vec<String>> {
    let mut section = "";
    for line in model.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[policy_definition]"
            && let Some((name, fields)) = line.split_once('=')
            && name.trim() == ptype
        {
            return Some(fields.split(',').map(|f| f.trim().to_owned()).collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = priority, sub, obj, act, eft\n\
                         [role_definition]\ng = _, _\n[policy_effect]\ne = priority(p.eft) || deny\n";

    #[test]
    fn rules_are_sorted_by_priority_lower_first_ties_in_file_order() {
        let rules = "p, 39, admin, data1, read, deny\ng, alice, admin\np, 4, alice, data1, read, allow\n\
                     p, 4, carol, d, read, deny\np, -1, dave, d, read, allow\n";
        let sorted = sorted_by_priority(MODEL, rules).unwrap();
        let order: Vec<&str> = sorted.lines().map(|l| l.split(',').nth(2).unwrap_or("").trim()).collect();
        // Line 2 is the `g` line (its third field is `admin`).
        assert_eq!(order, ["dave", "admin", "alice", "carol", "admin"]);
        assert!(sorted.lines().nth(1).unwrap().starts_with("g, alice"), "other lines keep their place");
    }

    #[test]
    fn a_model_without_a_priority_field_keeps_file_order() {
        let model = MODEL.replace("p = priority, sub", "p = sub");
        assert!(matches!(sorted_by_priority(&model, "p, b\np, a\n"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn ties_are_groups_of_one_priority_with_both_effects() {
        let rules = "p, 10, a, d, read, allow\np, 10, b, d, read, allow\np, 5, c, d, read, deny\n\
                     g, x, y\np, 5, e, d, read, allow\np, 1, f, d, read, deny\np, 5, h, d, read, deny\n";
        assert_eq!(ties(MODEL, rules), [Tie { priority: 5, lines: vec![3, 5, 7] }]);
        assert!(ties(&MODEL.replace("p = priority, sub", "p = sub"), rules).is_empty());
    }

    #[test]
    fn a_priority_that_is_not_an_integer_is_refused() {
        let refused = sorted_by_priority(MODEL, "p, 1, a, d, read, allow\np, high, b, d, read, allow\n").unwrap_err();
        assert!(refused.starts_with("line 2: priority `high` is not an integer"), "{refused}");
    }
}
