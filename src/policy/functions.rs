//! Matcher functions where casbin-rs differs from reference Casbin (Go), or
//! can panic on request data, replaced in every enforcer tollgate builds.
//!
//! What must stay true: no request can make a matcher function panic; where
//! implementations disagree, Go casbin's answer.

use casbin::function_map::{OperatorFunction, dynamic_to_str};
use casbin::rhai::Dynamic;
use casbin::{CoreApi, Enforcer};

/// `keyMatch(key1, key2)`: key2 may end in `*`. Go compares the bytes up to
/// the `*`; casbin-rs slices the request at that byte offset and panics
/// when it falls inside a multi-byte character (`/x数据` against `/data/*`).
pub fn key_match(key1: &str, key2: &str) -> bool {
    let (k1, k2) = (key1.as_bytes(), key2.as_bytes());
    match key2.find('*') {
        Some(i) if k1.len() > i => k1[..i] == k2[..i],
        Some(i) => k1 == &k2[..i],
        None => key1 == key2,
    }
}

/// The policy effects casbin-rs evaluates; it panics on any other.
const EFFECTS: [&str; 4] = [
    "some(where (p_eft == allow))",
    "!some(where (p_eft == deny))",
    "some(where (p_eft == allow)) && !some(where (p_eft == deny))",
    "priority(p_eft) || deny",
];

/// Refuses, at load, a `[policy_effect]` casbin-rs would panic on at the
/// first request (`subjectPriority(p.eft) || deny`, a typo, other spacing).
pub fn check_effects(model: &str) -> Result<(), String> {
    let mut section = "";
    for line in model.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((_, value)) = line.split_once('=').filter(|_| section == "[policy_effect]") else { continue };
        let expr = value.trim().replace("p.eft", "p_eft");
        if !EFFECTS.contains(&expr.as_str()) {
            let supported = EFFECTS.map(|e| e.replace("p_eft", "p.eft")).join(" | ");
            return Err(format!("policy_effect `{}` is not supported; use one of: {supported}", value.trim()));
        }
    }
    Ok(())
}

/// Registers the replacements on `enforcer`.
pub fn install(enforcer: &mut Enforcer) {
    enforcer.add_function(
        "keyMatch",
        OperatorFunction::Arg2(|a: Dynamic, b: Dynamic| key_match(&dynamic_to_str(&a), &dynamic_to_str(&b)).into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_casbin_rs_cannot_evaluate_is_refused_at_load() {
        let model =
            |e: &str| format!("[request_definition]\nr = sub\n[policy_effect]\ne = {e}\n[matchers]\nm = true\n");
        assert!(check_effects(&model("priority(p.eft) || deny")).is_ok());
        assert!(check_effects(&model("some(where (p.eft == allow))")).is_ok());
        let refused = check_effects(&model("subjectPriority(p.eft) || deny")).unwrap_err();
        assert!(refused.contains("is not supported; use one of"), "{refused}");
        assert!(check_effects(&model("some(where(p.eft==allow))")).is_err());
    }

    #[test]
    fn key_match_compares_bytes_as_go_does_and_never_panics() {
        assert!(key_match("/foo/bar", "/foo/*"));
        assert!(key_match("/foo", "/foo*"));
        assert!(!key_match("/fo", "/foo/*"));
        assert!(!key_match("/x数据", "/data/*"));
        assert!(key_match("/数据/1", "/数据/*"));
        assert!(!key_match("/数", "/数据/*"));
        assert!(key_match("a", "a"));
    }
}
