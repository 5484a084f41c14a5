//! Explicit rule priority as reference Casbin (Go, Python) applies it: a
//! policy type whose definition has a `priority` field
//! (`p = priority, sub, obj, act, eft`) has its rules sorted by that field
//! when the policy is loaded — lower values first, non-numeric values
//! after every numeric one, equal values in file order — so
//! `priority(p.eft) || deny` decides by priority, not by where a rule is
//! written. casbin-rs keeps file order; tollgate sorts before handing the
//! rules to it (and to the index built from it).

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

/// Lower first; every number before any non-number (whose order among
/// themselves, like ties, stays the file's).
fn key(field: &str) -> (u8, i64) {
    match field.trim().parse::<i64>() {
        Ok(n) => (0, n),
        Err(_) => (1, 0),
    }
}

/// `rules` with the rules of each priority-carrying policy type sorted by
/// priority, each in the line slots those rules held; borrowed unchanged
/// when the model has no priority field.
pub fn sorted_by_priority<'r>(model: &str, rules: &'r str) -> Cow<'r, str> {
    let fields = priority_fields(model);
    if fields.is_empty() {
        return Cow::Borrowed(rules);
    }
    let mut lines: Vec<&str> = rules.lines().collect();
    for (ptype, at) in fields {
        let slots: Vec<usize> =
            (0..lines.len()).filter(|&i| lines[i].split(',').next().is_some_and(|t| t.trim() == ptype)).collect();
        let mut ours: Vec<&str> = slots.iter().map(|&i| lines[i]).collect();
        ours.sort_by_key(|l| key(l.split(',').nth(at).unwrap_or("")));
        for (slot, line) in slots.into_iter().zip(ours) {
            lines[slot] = line;
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = priority, sub, obj, act, eft\n\
                         [role_definition]\ng = _, _\n[policy_effect]\ne = priority(p.eft) || deny\n";

    #[test]
    fn rules_are_sorted_by_priority_lower_first_ties_and_non_numbers_in_file_order() {
        let rules = "p, 39, admin, data1, read, deny\ng, alice, admin\np, 4, alice, data1, read, allow\n\
                     p, x, bob, d, read, allow\np, 4, carol, d, read, deny\np, -1, dave, d, read, allow\np, y, erin, d, read, allow\n";
        let sorted = sorted_by_priority(MODEL, rules);
        let order: Vec<&str> = sorted.lines().map(|l| l.split(',').nth(2).unwrap_or("").trim()).collect();
        // Line 2 is the `g` line (its third field is `admin`).
        assert_eq!(order, ["dave", "admin", "alice", "carol", "admin", "bob", "erin"]);
        assert!(sorted.lines().nth(1).unwrap().starts_with("g, alice"), "other lines keep their place");
    }

    #[test]
    fn a_model_without_a_priority_field_keeps_file_order() {
        let model = MODEL.replace("p = priority, sub", "p = sub");
        assert!(matches!(sorted_by_priority(&model, "p, b\np, a\n"), Cow::Borrowed(_)));
    }
}
