//! An indexed evaluator for the common Casbin matcher shapes, deciding
//! exactly as casbin-rs does but without scanning every rule.
//!
//! casbin-rs evaluates the matcher (a Rhai expression) once per rule per
//! request: ~32 ms at 110k rules. Most real matchers are a conjunction of
//! clauses that each pin one policy field: `r.x == p.y`, `g(r.x, p.y[, r.z])`,
//! optionally `p.y == "*" || …`. For such a matcher the set of values each
//! pinned field may take is known from the request alone (the value itself,
//! its roles or groups, "*"), so an index from field value to rules yields
//! the few candidate rules, which are then checked against every clause and
//! fed, in policy order, through the same effect semantics as casbin-rs.
//!
//! What must stay true: for any model this module accepts, decisions and
//! explain output are identical to casbin-rs on the same files (the
//! differential tests check this); anything it cannot express exactly is
//! refused at build time and the policy falls back to casbin-rs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use casbin::{CoreApi, Enforcer};

/// casbin-rs's default role manager stops its breadth-first search at this
/// depth; deeper hierarchies are left to casbin-rs itself.
const MAX_ROLE_DEPTH: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// some(where (p.eft == allow))
    AllowOverride,
    /// !some(where (p.eft == deny))
    DenyOverride,
    /// some(where (p.eft == allow)) && !some(where (p.eft == deny))
    AllowAndDeny,
    /// priority(p.eft) || deny: the first matching rule decides
    Priority,
}

#[derive(Debug, Clone)]
enum Term {
    /// r[r] == p[p]
    Eq { r: usize, p: usize },
    /// g(r[r], p[p]) or g(r[r], p[p], r[dom])
    Role { g: String, r: usize, p: usize, dom: Option<usize> },
}

#[derive(Debug, Clone)]
struct Clause {
    term: Term,
    /// `p.f == "*" || term`
    wildcard: bool,
}

impl Clause {
    fn p_field(&self) -> usize {
        match self.term {
            Term::Eq { p, .. } | Term::Role { p, .. } => p,
        }
    }
}

const DEFAULT_DOMAIN: &str = "DEFAULT";

/// Transitive roles per grouping, domain and member, within casbin's
/// depth. Compact because a policy may assign roles to 100k members: each
/// member's name is held once, its roles as indexes into `names` (a
/// handful of distinct role names), and a lookup borrows the request's
/// strings instead of building a key.
#[derive(Default)]
struct Closures {
    names: Vec<Box<str>>,
    /// grouping → domain → members.
    by: HashMap<String, HashMap<String, Members>>,
}

/// Member → its roles, as indexes into [`Closures::names`].
type Members = HashMap<Box<str>, Box<[u32]>>;

impl Closures {
    /// The roles `member` holds in `domain` through grouping `g`.
    fn roles<'a>(&'a self, g: &str, domain: &str, member: &str) -> impl Iterator<Item = &'a str> + 'a {
        let ids = self.by.get(g).and_then(|d| d.get(domain)).and_then(|m| m.get(member));
        ids.into_iter().flat_map(|ids| ids.iter().map(|&i| &*self.names[i as usize]))
    }
}

pub struct IndexedEngine {
    r_len: usize,
    eft: Option<usize>,
    /// None: a section evaluated for all its matching rules (obligations).
    effect: Option<Effect>,
    clauses: Vec<Clause>,
    rules: Vec<Vec<String>>,
    /// Per policy field: value → rule ids, ascending.
    index: HashMap<usize, HashMap<String, Vec<u32>>>,
    /// Shared by the sections of one policy (they read the same `g` rules):
    /// with 100k role assignments each copy is tens of MB.
    closures: Arc<Closures>,
}

fn strip_parens(s: &str) -> &str {
    let mut s = s.trim();
    while s.starts_with('(') && s.ends_with(')') && balanced_inner(&s[1..s.len() - 1]) {
        s = s[1..s.len() - 1].trim();
    }
    s
}

fn balanced_inner(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Splits on `sep` outside parentheses and string literals.
fn split_top(s: &str, sep: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            if c == '(' {
                depth += 1;
            } else if c == ')' {
                depth -= 1;
            } else if depth == 0 && s[i..].starts_with(sep) {
                out.push(std::mem::take(&mut cur));
                i += sep.len();
                continue;
            }
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

fn token_index(tokens: &[String], name: &str) -> Option<usize> {
    let name = name.trim().replace('.', "_");
    tokens.iter().position(|t| *t == name)
}

fn parse_term(s: &str, r: &[String], p: &[String]) -> Option<Term> {
    let s = strip_parens(s);
    if let Some((a, b)) = s.split_once("==") {
        let (a, b) = (a.trim(), b.trim());
        return match (token_index(r, a), token_index(p, b), token_index(p, a), token_index(r, b)) {
            (Some(ri), Some(pi), _, _) | (_, _, Some(pi), Some(ri)) => Some(Term::Eq { r: ri, p: pi }),
            _ => None,
        };
    }
    let open = s.find('(')?;
    // Role calls are renamed so each definition has its own links.
    let name = s[..open].trim();
    let name = name.strip_prefix(super::enforcer::ROLE_FN_PREFIX).unwrap_or(name);
    if !(name == "g" || (name.starts_with('g') && name[1..].bytes().all(|b| b.is_ascii_digit()))) || !s.ends_with(')') {
        return None;
    }
    let args: Vec<&str> = s[open + 1..s.len() - 1].split(',').map(str::trim).collect();
    match args.as_slice() {
        [a, b] => Some(Term::Role { g: name.into(), r: token_index(r, a)?, p: token_index(p, b)?, dom: None }),
        [a, b, d] => Some(Term::Role {
            g: name.into(),
            r: token_index(r, a)?,
            p: token_index(p, b)?,
            dom: Some(token_index(r, d)?),
        }),
        _ => None,
    }
}

fn is_wildcard_test(s: &str, p: &[String]) -> Option<usize> {
    let s = strip_parens(s);
    let (a, b) = s.split_once("==")?;
    let (a, b) = (a.trim(), b.trim());
    if b == "\"*\"" {
        token_index(p, a)
    } else if a == "\"*\"" {
        token_index(p, b)
    } else {
        None
    }
}

fn parse_clause(s: &str, r: &[String], p: &[String]) -> Option<Clause> {
    let s = strip_parens(s);
    let alternatives = split_top(s, "||");
    match alternatives.as_slice() {
        [one] => Some(Clause { term: parse_term(one, r, p)?, wildcard: false }),
        [a, b] => {
            let (w, t) = match (is_wildcard_test(a, p), is_wildcard_test(b, p)) {
                (Some(w), _) => (w, b),
                (_, Some(w)) => (w, a),
                _ => return None,
            };
            let term = parse_term(t, r, p)?;
            let clause = Clause { term, wildcard: true };
            (clause.p_field() == w).then_some(clause)
        }
        _ => None,
    }
}

fn effect_of(expr: &str) -> Option<Effect> {
    let e: String = expr.split_whitespace().collect::<Vec<_>>().join(" ").replace("p.eft", "p_eft");
    match e.as_str() {
        "some(where (p_eft == allow))" => Some(Effect::AllowOverride),
        "!some(where (p_eft == deny))" => Some(Effect::DenyOverride),
        "some(where (p_eft == allow)) && !some(where (p_eft == deny))" => Some(Effect::AllowAndDeny),
        "priority(p_eft) || deny" => Some(Effect::Priority),
        _ => None,
    }
}

/// Role assignments as casbin-rs holds them: per role definition (`g`,
/// `g2`, …), the fields of each of its rules after the type.
pub type Groupings = HashMap<String, Vec<Vec<String>>>;

/// Where an engine finds the role assignments of its policy.
pub enum Roles<'a> {
    /// In the enforcer it is built from.
    Held,
    /// Here: the enforcer was loaded without them, so casbin-rs never holds
    /// 100k assignments (and two role managers over them) only for the
    /// index to be built and the enforcer dropped.
    Given(&'a Groupings),
    /// In an engine of the same policy (another section): its closures are
    /// shared, not computed again.
    Shared(&'a IndexedEngine),
}

fn held_groupings(enforcer: &Enforcer) -> Groupings {
    let model = enforcer.get_model().get_model();
    let defined = model.get("g").into_iter().flatten();
    defined.map(|(name, a)| (name.clone(), a.policy.iter().cloned().collect())).collect()
}

/// Roles of every member of every grouping, per domain, transitively.
/// None when a hierarchy is deeper than casbin-rs searches.
fn closures(groupings: &Groupings) -> Option<Closures> {
    let mut out = Closures::default();
    let mut interned: HashMap<&str, u32> = HashMap::new();
    for (g, rules) in groupings {
        let mut edges: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for rule in rules {
            if rule.len() < 2 {
                return None;
            }
            let dom = rule.get(2).map_or(DEFAULT_DOMAIN, String::as_str);
            edges.entry((dom, rule[0].as_str())).or_default().push(rule[1].as_str());
        }
        let by_domain = out.by.entry(g.clone()).or_default();
        for &(dom, member) in edges.keys() {
            let mut seen: HashSet<&str> = HashSet::from([member]);
            let mut queue = VecDeque::from([(member, 0usize)]);
            let mut roles = Vec::new();
            while let Some((node, depth)) = queue.pop_front() {
                for &next in edges.get(&(dom, node)).map(Vec::as_slice).unwrap_or_default() {
                    if seen.insert(next) {
                        if depth + 1 >= MAX_ROLE_DEPTH - 1 {
                            return None;
                        }
                        let id = *interned.entry(next).or_insert_with(|| {
                            out.names.push(next.into());
                            (out.names.len() - 1) as u32
                        });
                        roles.push(id);
                        queue.push_back((next, depth + 1));
                    }
                }
            }
            by_domain.entry(dom.to_owned()).or_default().insert(member.into(), roles.into_boxed_slice());
        }
    }
    Some(out)
}

impl IndexedEngine {
    /// Builds the index for `enforcer`'s model and rules, or None when the
    /// model is outside what this engine reproduces exactly.
    pub fn build(enforcer: &Enforcer) -> Option<IndexedEngine> {
        Self::build_section(enforcer, "", true)
    }

    /// The index of one section of a multi-section model: `suffix` "" for
    /// r/p/e/m, "2" for r2/p2/e2/m2. With `decide` false the effect is not
    /// used and [`IndexedEngine::matches`] lists every matching rule.
    pub fn build_section(enforcer: &Enforcer, suffix: &str, decide: bool) -> Option<IndexedEngine> {
        Self::build_section_with(enforcer, suffix, decide, Roles::Held)
    }

    /// [`IndexedEngine::build_section`], with the role assignments `roles`
    /// says where to find.
    pub fn build_section_with(
        enforcer: &Enforcer,
        suffix: &str,
        decide: bool,
        roles: Roles<'_>,
    ) -> Option<IndexedEngine> {
        let model = enforcer.get_model().get_model();
        let key = |k: &str| format!("{k}{suffix}");
        let r = model.get("r")?.get(&key("r"))?;
        let p = model.get("p")?.get(&key("p"))?;
        let m = model.get("m")?.get(&key("m"))?;
        let effect = if decide { Some(effect_of(&model.get("e")?.get(&key("e"))?.value)?) } else { None };
        let (r_tokens, p_tokens) = (&r.tokens, &p.tokens);
        let matcher = strip_parens(&m.value);
        // `a && b || c` is `(a && b) || c`: a top-level `||` is not a
        // conjunction of clauses, whatever the `&&` around it.
        if split_top(matcher, "||").len() > 1 {
            return None;
        }
        let mut clauses = Vec::new();
        for part in split_top(matcher, "&&") {
            clauses.push(parse_clause(&part, r_tokens, p_tokens)?);
        }
        // Every role definition is in the model, with or without rules.
        let defined = model.get("g");
        for c in &clauses {
            if let Term::Role { g, .. } = &c.term
                && !defined.is_some_and(|d| d.contains_key(g))
            {
                return None;
            }
        }
        let rules: Vec<Vec<String>> = p.policy.iter().cloned().collect();
        // casbin-rs evaluates an empty policy against empty strings; leave
        // that corner to it.
        if rules.is_empty() || rules.iter().any(|r| r.len() != p_tokens.len()) {
            return None;
        }
        let mut index: HashMap<usize, HashMap<String, Vec<u32>>> = HashMap::new();
        for c in &clauses {
            let f = c.p_field();
            if index.contains_key(&f) {
                continue;
            }
            let mut by_value: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, rule) in rules.iter().enumerate() {
                by_value.entry(rule[f].clone()).or_default().push(i as u32);
            }
            index.insert(f, by_value);
        }
        Some(IndexedEngine {
            r_len: r_tokens.len(),
            eft: p_tokens.iter().position(|t| *t == format!("{}_eft", key("p"))),
            effect,
            clauses,
            rules,
            index,
            closures: match roles {
                Roles::Shared(other) => Arc::clone(&other.closures),
                Roles::Given(groupings) => Arc::new(closures(groupings)?),
                Roles::Held => Arc::new(closures(&held_groupings(enforcer))?),
            },
        })
    }

    fn acceptable<'a>(&'a self, clause: &Clause, request: &'a [&'a str]) -> Vec<&'a str> {
        let mut values: Vec<&str> = Vec::with_capacity(4);
        match &clause.term {
            Term::Eq { r, .. } => values.push(request[*r]),
            Term::Role { g, r, dom, .. } => {
                let member = request[*r];
                values.push(member);
                let domain = dom.map_or(DEFAULT_DOMAIN, |d| request[d]);
                values.extend(self.closures.roles(g, domain, member));
            }
        }
        if clause.wildcard {
            values.push("*");
        }
        values
    }

    /// Every rule whose matcher holds for `request`, in policy order.
    pub fn matches(&self, request: &[&str]) -> Option<Vec<Vec<String>>> {
        if request.len() != self.r_len {
            return None;
        }
        let sets: Vec<Vec<&str>> = self.clauses.iter().map(|c| self.acceptable(c, request)).collect();
        Some(
            self.candidates(&sets)
                .into_iter()
                .map(|id| &self.rules[id as usize])
                .filter(|rule| self.clauses.iter().zip(&sets).all(|(c, v)| v.contains(&rule[c.p_field()].as_str())))
                .cloned()
                .collect(),
        )
    }

    /// Rule ids from the most selective indexed field, ascending.
    fn candidates(&self, sets: &[Vec<&str>]) -> Vec<u32> {
        let mut best: Option<Vec<u32>> = None;
        for (c, values) in self.clauses.iter().zip(sets) {
            let by_value = &self.index[&c.p_field()];
            let size: usize = values.iter().filter_map(|v| by_value.get(*v)).map(Vec::len).sum();
            if best.as_ref().is_none_or(|b| size < b.len()) {
                let mut ids: Vec<u32> = values.iter().filter_map(|v| by_value.get(*v)).flatten().copied().collect();
                ids.sort_unstable();
                ids.dedup();
                best = Some(ids);
            }
        }
        best.unwrap_or_else(|| (0..self.rules.len() as u32).collect())
    }

    /// Decides like casbin-rs `enforce_ex`: whether allowed, and the rules
    /// its explain would report.
    pub fn enforce(&self, request: &[&str]) -> Option<(bool, Vec<Vec<String>>)> {
        if request.len() != self.r_len {
            return None;
        }
        let effect = self.effect?;
        let sets: Vec<Vec<&str>> = self.clauses.iter().map(|c| self.acceptable(c, request)).collect();
        let candidates = self.candidates(&sets);

        let mut res = matches!(effect, Effect::DenyOverride);
        let mut explain: Vec<Vec<String>> = Vec::new();
        for id in candidates {
            let rule = &self.rules[id as usize];
            let matched =
                self.clauses.iter().zip(&sets).all(|(c, values)| values.contains(&rule[c.p_field()].as_str()));
            if !matched {
                continue;
            }
            let eft = match self.eft {
                None => "allow",
                Some(i) => rule[i].as_str(),
            };
            match (effect, eft) {
                (Effect::AllowOverride, "allow") => {
                    explain.push(rule.clone());
                    return Some((true, explain));
                }
                (Effect::DenyOverride, "deny") => {
                    explain.push(rule.clone());
                    return Some((false, explain));
                }
                (Effect::AllowAndDeny, "allow") => {
                    res = true;
                    explain.push(rule.clone());
                }
                (Effect::AllowAndDeny, "deny") => {
                    explain.push(rule.clone());
                    return Some((false, explain));
                }
                (Effect::Priority, "allow" | "deny") => {
                    explain.push(rule.clone());
                    return Some((eft == "allow", explain));
                }
                _ => {}
            }
        }
        Some((res, explain))
    }
}

#[cfg(test)]
mod tests {
    use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};

    use super::*;
    use crate::policy::synth;

    const TOLLGATE_MODEL: &str = include_str!("../../policies/model.conf");

    async fn enforcer(model: &str, policy: &str) -> Enforcer {
        Enforcer::new(DefaultModel::from_str(model).await.unwrap(), StringAdapter::new(policy.to_owned()))
            .await
            .unwrap()
    }

    /// Every request decided by both; returns (allowed, denied) counts.
    fn compare(e: &Enforcer, engine: &IndexedEngine, requests: &[Vec<String>]) -> (usize, usize) {
        let (mut allowed, mut denied) = (0, 0);
        for r in requests {
            let args: Vec<&str> = r.iter().map(String::as_str).collect();
            let want = e.enforce_ex(args.clone()).unwrap();
            let got = engine.enforce(&args).expect("indexable request");
            assert_eq!(got, want, "request {r:?}");
            if want.0 { allowed += 1 } else { denied += 1 }
        }
        (allowed, denied)
    }

    #[tokio::test]
    async fn the_obligations_section_shares_the_role_closures_instead_of_a_second_copy() {
        let policy = "p, admin, d1, data1, read, allow\np2, admin, d1, data1, *, watermark\n\
                      g, alice, admin, d1\ng, bob, alice, d1\ng2, data1, data1\n";
        let e = enforcer(TOLLGATE_MODEL, policy).await;
        let main = IndexedEngine::build(&e).expect("indexable");
        let obligations =
            IndexedEngine::build_section_with(&e, "2", false, Roles::Shared(&main)).expect("indexable m2");
        assert!(Arc::ptr_eq(&main.closures, &obligations.closures));
        // And it decides with them: bob is admin through alice in d1.
        let rules = obligations.matches(&["bob", "d1", "data1", "read"]).expect("arity");
        assert_eq!(rules, [vec!["admin", "d1", "data1", "*", "watermark"]]);
        let alone = IndexedEngine::build_section(&e, "2", false).expect("indexable m2");
        assert_eq!(alone.matches(&["bob", "d1", "data1", "read"]), Some(rules));
    }

    #[tokio::test]
    async fn indexed_decisions_equal_casbin_on_generated_rbac_with_domains() {
        for (rules, requests, seed) in [(120, 60_000, 1), (400, 30_000, 2), (1500, 10_000, 3)] {
            let s = synth::generate(rules, seed);
            let e = enforcer(TOLLGATE_MODEL, &s.policy).await;
            let engine = IndexedEngine::build(&e).expect("tollgate's model is indexable");
            let reqs: Vec<Vec<String>> = s.requests(requests).into_iter().map(|r| r.to_vec()).collect();
            let (allowed, denied) = compare(&e, &engine, &reqs);
            assert!(
                allowed > requests / 20 && denied > requests / 20,
                "a real mix: {allowed} allowed, {denied} denied"
            );
        }
    }

    const ACL: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";
    const RBAC: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n[role_definition]\ng = _, _\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act\n";
    const RBAC_DENY: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act, eft\n[role_definition]\ng = _, _\n[policy_effect]\ne = some(where (p.eft == allow)) && !some(where (p.eft == deny))\n[matchers]\nm = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act\n";
    const DENY_ONLY: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act, eft\n[policy_effect]\ne = !some(where (p.eft == deny))\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";
    const DOMAINS: &str = "[request_definition]\nr = sub, dom, obj, act\n[policy_definition]\np = sub, dom, obj, act\n[role_definition]\ng = _, _, _\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = g(r.sub, p.sub, r.dom) && r.dom == p.dom && r.obj == p.obj && r.act == p.act\n";

    #[tokio::test]
    async fn indexed_decisions_equal_casbin_on_standard_models() {
        let policy3 = "p, alice, data1, read\np, bob, data2, write\np, data2_admin, data2, read\np, data2_admin, data2, write\ng, alice, data2_admin\ng, carol, alice\n";
        let deny3 = "p, alice, data1, read, allow\np, data2_admin, data2, read, allow\np, data2_admin, data2, write, allow\np, alice, data2, write, deny\ng, alice, data2_admin\n";
        let doms = "p, admin, domain1, data1, read\np, admin, domain1, data1, write\np, admin, domain2, data2, read\ng, alice, admin, domain1\ng, bob, admin, domain2\n";
        let names = ["alice", "bob", "carol", "data2_admin", "admin", "nobody"];
        let objs = ["data1", "data2", "data3"];
        let acts = ["read", "write"];
        let mut three = Vec::new();
        for s in names {
            for o in objs {
                for a in acts {
                    three.push(vec![s.to_owned(), o.to_owned(), a.to_owned()]);
                }
            }
        }
        let four: Vec<Vec<String>> = three
            .iter()
            .flat_map(|r| ["domain1", "domain2"].map(|d| vec![r[0].clone(), d.to_owned(), r[1].clone(), r[2].clone()]))
            .collect();
        for (model, policy, reqs) in [
            (ACL, policy3, &three),
            (RBAC, policy3, &three),
            (RBAC_DENY, deny3, &three),
            (DENY_ONLY, deny3.replace(", allow", ", deny").as_str(), &three),
            (DOMAINS, doms, &four),
        ] {
            let e = enforcer(model, policy).await;
            let engine = IndexedEngine::build(&e).unwrap_or_else(|| panic!("indexable: {model}"));
            compare(&e, &engine, reqs);
        }
    }

    #[tokio::test]
    async fn matchers_it_cannot_express_fall_back_to_casbin() {
        let keymatch = ACL.replace("r.obj == p.obj", "keyMatch(r.obj, p.obj)");
        let e = enforcer(&keymatch, "p, alice, /data/*, read\n").await;
        assert!(IndexedEngine::build(&e).is_none());
        let ordered = ACL.replace("r.sub == p.sub && ", "r.sub == p.sub || ");
        let e = enforcer(&ordered, "p, alice, data1, read\n").await;
        assert!(IndexedEngine::build(&e).is_none());
        // Read by Casbin as `(sub && obj) || p.act == "*"`, which is not a
        // wildcard clause on act.
        let precedence = ACL.replace("r.act == p.act", "r.act == p.act || p.act == \"*\"");
        let e = enforcer(&precedence, "p, alice, data1, *\n").await;
        assert!(IndexedEngine::build(&e).is_none());
    }
}
