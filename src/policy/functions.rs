//! Matcher functions where casbin-rs differs from reference Casbin (Go), or
//! can panic on request data, replaced in every enforcer tollgate builds;
//! plus Go casbin's `ipMatch` and `globMatch`, which casbin-rs offers only
//! behind features with their own differences.
//!
//! What must stay true: no request and no rule can make a matcher function
//! panic (a pattern Go would reject matches nothing); where implementations
//! disagree, Go casbin's answer.

use std::net::IpAddr;
use std::sync::LazyLock;

use casbin::function_map::{OperatorFunction, dynamic_to_str};
use casbin::rhai::Dynamic;
use casbin::{CoreApi, Enforcer};
use regex::Regex;

use super::glob::glob_match;

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

static KEY_MATCH2_VAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r":[^/]+").expect("valid"));
static KEY_MATCH3_VAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\{[^/]+?\}").expect("valid"));

/// `keyMatch2`: `/:id` is a path segment. A bare `:` is a literal in Go
/// (`:[^/]+` needs a name); casbin-rs reads it as a variable.
pub fn key_match2(key1: &str, key2: &str) -> bool {
    let key2 = key2.replace("/*", "/.*");
    regex_match(key1, &format!("^{}$", KEY_MATCH2_VAR.replace_all(&key2, "[^/]+")))
}

/// `keyMatch3`: `/{id}` is a path segment; `{}` is a literal, as in Go.
pub fn key_match3(key1: &str, key2: &str) -> bool {
    let key2 = key2.replace("/*", "/.*");
    regex_match(key1, &format!("^{}$", KEY_MATCH3_VAR.replace_all(&key2, "[^/]+")))
}

/// `keyMatch5`: keyMatch3 on the path without its query string.
pub fn key_match5(key1: &str, key2: &str) -> bool {
    let key1 = key1.split_once('?').map_or(key1, |(path, _)| path);
    key_match3(key1, key2)
}

/// `regexMatch(key1, pattern)`: unanchored, as Go's `regexp.MatchString`
/// (pycasbin anchors at the start). Go reads a `{` that does not open a
/// repetition as a literal, the regex crate refuses it: such braces are
/// escaped first. A pattern Go would reject matches nothing.
pub fn regex_match(key1: &str, pattern: &str) -> bool {
    let compiled = Regex::new(pattern).or_else(|_| Regex::new(&literal_braces(pattern)));
    compiled.is_ok_and(|re| re.is_match(key1))
}

/// `pattern` with every brace that is not part of `{n}`, `{n,}` or `{n,m}`
/// escaped (outside an escape or a class).
fn literal_braces(pattern: &str) -> String {
    static REPETITION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\{[0-9]+(,[0-9]*)?\}").expect("valid"));
    let mut out = String::with_capacity(pattern.len() + 8);
    let (mut escaped, mut in_class, mut closer) = (false, false, None);
    for (i, c) in pattern.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => in_class = true,
            ']' => in_class = false,
            '{' if !in_class => match REPETITION.find(&pattern[i..]) {
                Some(m) => closer = Some(i + m.end() - 1),
                None => out.push('\\'),
            },
            '}' if !in_class && closer != Some(i) => out.push('\\'),
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `ipMatch(ip, pattern)`: pattern is an address or a CIDR network. IPv4
/// written as IPv6 (`::ffff:10.0.0.1`) is the same address, as in Go's
/// `net.IP`. Anything that is not an address matches nothing (Go errors).
pub fn ip_match(ip: &str, pattern: &str) -> bool {
    let canonical = |a: IpAddr| a.to_canonical();
    let Ok(ip) = ip.parse::<IpAddr>().map(canonical) else { return false };
    let Some((net, bits)) = pattern.split_once('/') else {
        return pattern.parse::<IpAddr>().is_ok_and(|p| canonical(p) == ip);
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>().map(canonical), bits.parse::<u8>()) else { return false };
    let masked = |a: u128, width: u8| if bits == 0 { 0 } else { a >> (width - bits) };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            masked(a.to_bits().into(), 32) == masked(n.to_bits().into(), 32)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => masked(a.to_bits(), 128) == masked(n.to_bits(), 128),
        _ => false,
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
    type Matcher = fn(&str, &str) -> bool;
    // A fn item per name: OperatorFunction takes plain fn pointers.
    macro_rules! arg2 {
        ($f:path) => {
            OperatorFunction::Arg2(|a: Dynamic, b: Dynamic| {
                let f: Matcher = $f;
                f(&dynamic_to_str(&a), &dynamic_to_str(&b)).into()
            })
        };
    }
    for (name, f) in [
        ("keyMatch", arg2!(key_match)),
        ("keyMatch2", arg2!(key_match2)),
        ("keyMatch3", arg2!(key_match3)),
        ("keyMatch5", arg2!(key_match5)),
        ("regexMatch", arg2!(regex_match)),
        ("ipMatch", arg2!(ip_match)),
        ("globMatch", arg2!(glob_match)),
    ] {
        enforcer.add_function(name, f);
    }
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
