//! casbin-rs, built so that it decides as reference Casbin (Go) does. Every
//! enforcer tollgate builds — the service's, `policy eval --raw`'s — comes
//! from [`Reference::build`]; the index ([`super::engine`]) is built from it.
//!
//! What casbin-rs does differently, and what is done about it here:
//! - explicit `priority` fields are not sorted: the rules are sorted first
//!   ([`super::priority`]);
//! - effects it cannot evaluate panic at the first request: refused at build
//!   ([`super::functions::check_effects`]);
//! - matcher functions that differ or can panic are replaced
//!   ([`super::functions::install`]);
//! - **every role definition (`g`, `g2`, …) shares one role manager**, so a
//!   `g` link between two datasets also answers `g2`. Here each definition
//!   gets its own role manager: the matcher's `g2(…)` calls are renamed to
//!   functions that ask that definition's links only.
//!
//! What must stay true: a model is either decided as Go casbin decides it
//! or refused here with a message.

use std::cell::RefCell;
use std::sync::Arc;

use casbin::function_map::{OperatorFunction, dynamic_to_str};
use casbin::rhai::Dynamic;
use casbin::{CoreApi, DefaultModel, DefaultRoleManager, Enforcer, RoleManager, StringAdapter};

use super::{functions, priority};

/// Prefix of the function a role definition's calls are renamed to:
/// `g2(r.obj, p.obj)` becomes `tollgateRole_g2(r.obj, p.obj)`.
pub const ROLE_FN_PREFIX: &str = "tollgateRole_";

/// Role definitions one model may have (`g` … `g8`).
const MAX_ROLE_DEFINITIONS: usize = 8;

/// casbin-rs's and Go's default role hierarchy depth.
const MAX_HIERARCHY: usize = 10;

/// One role manager per role definition, in the order of [`ROLE_FNS2`].
struct RoleLinks(Vec<DefaultRoleManager>);

thread_local! {
    /// The links of the enforcer deciding on this thread right now; set by
    /// [`Reference::enforce_ex`] around the (synchronous) casbin call.
    static LINKS: RefCell<Option<Arc<RoleLinks>>> = const { RefCell::new(None) };
}

fn has_link<const N: usize>(a: &Dynamic, b: &Dynamic, domain: Option<&Dynamic>) -> Dynamic {
    LINKS
        .with_borrow(|links| {
            let domain = domain.map(dynamic_to_str);
            links.as_ref().is_some_and(|l| l.0[N].has_link(&dynamic_to_str(a), &dynamic_to_str(b), domain.as_deref()))
        })
        .into()
}

fn link2<const N: usize>(a: Dynamic, b: Dynamic) -> Dynamic {
    has_link::<N>(&a, &b, None)
}

fn link3<const N: usize>(a: Dynamic, b: Dynamic, d: Dynamic) -> Dynamic {
    has_link::<N>(&a, &b, Some(&d))
}

type Fn2 = fn(Dynamic, Dynamic) -> Dynamic;
type Fn3 = fn(Dynamic, Dynamic, Dynamic) -> Dynamic;
const ROLE_FNS2: [Fn2; MAX_ROLE_DEFINITIONS] =
    [link2::<0>, link2::<1>, link2::<2>, link2::<3>, link2::<4>, link2::<5>, link2::<6>, link2::<7>];
const ROLE_FNS3: [Fn3; MAX_ROLE_DEFINITIONS] =
    [link3::<0>, link3::<1>, link3::<2>, link3::<3>, link3::<4>, link3::<5>, link3::<6>, link3::<7>];

/// A casbin-rs enforcer that decides as reference Casbin does.
pub struct Reference {
    enforcer: Enforcer,
    links: Arc<RoleLinks>,
}

impl Reference {
    /// Builds the enforcer for `model` and `rules` (policy lines as Casbin
    /// reads them); Err with a message for a model decided differently.
    pub async fn build(model: &str, rules: &str) -> Result<Reference, String> {
        functions::check_effects(model)?;
        let rules = priority::sorted_by_priority(model, rules)?.into_owned();
        let model = DefaultModel::from_str(&rename_role_calls(model)).await.map_err(|e| e.to_string())?;
        let mut enforcer = Enforcer::new(model, StringAdapter::new(rules)).await.map_err(|e| e.to_string())?;
        functions::install(&mut enforcer);
        let links = role_links(&mut enforcer)?;
        Ok(Reference { enforcer, links: Arc::new(links) })
    }

    /// The model and rules as loaded (for the index).
    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// casbin-rs `enforce_ex` with this policy's role links.
    pub fn enforce_ex(&self, request: Vec<&str>) -> casbin::Result<(bool, Vec<Vec<String>>)> {
        let previous = LINKS.replace(Some(Arc::clone(&self.links)));
        let decided = self.enforcer.enforce_ex(request);
        LINKS.set(previous);
        decided
    }
}

/// Each role definition's links in a role manager of its own, and its
/// renamed function registered over them.
fn role_links(enforcer: &mut Enforcer) -> Result<RoleLinks, String> {
    let mut definitions: Vec<(String, usize, Vec<Vec<String>>)> = enforcer
        .get_model()
        .get_model()
        .get("g")
        .map(|gs| {
            gs.iter()
                .map(|(name, a)| (name.clone(), a.value.matches('_').count(), a.policy.iter().cloned().collect()))
                .collect()
        })
        .unwrap_or_default();
    definitions.sort();
    if definitions.len() > MAX_ROLE_DEFINITIONS {
        return Err(format!("at most {MAX_ROLE_DEFINITIONS} role definitions are supported"));
    }
    let mut links = Vec::new();
    for (i, (name, arity, rules)) in definitions.into_iter().enumerate() {
        let mut rm = DefaultRoleManager::new(MAX_HIERARCHY);
        for rule in &rules {
            rm.add_link(&rule[0], &rule[1], rule.get(2).filter(|_| arity == 3).map(String::as_str));
        }
        let f = match arity {
            2 => OperatorFunction::Arg2(ROLE_FNS2[i]),
            3 => OperatorFunction::Arg3(ROLE_FNS3[i]),
            _ => return Err(format!("role definition {name}: only `_, _` and `_, _, _` are supported")),
        };
        enforcer.add_function(&format!("{ROLE_FN_PREFIX}{name}"), f);
        links.push(rm);
    }
    Ok(RoleLinks(links))
}

/// `model` with every call of a role definition in `[matchers]` (`g(`,
/// `g2(`, outside string literals) renamed to [`ROLE_FN_PREFIX`]`g(`.
fn rename_role_calls(model: &str) -> String {
    let mut section = "";
    let mut out = String::with_capacity(model.len() + 64);
    for line in model.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed;
        }
        if section == "[matchers]" && !trimmed.starts_with('[') {
            out.push_str(&rename_in(line));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn rename_in(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len() + 32);
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'_' | b'.'));
        if !quoted && c == 'g' && starts_word {
            let digits = line[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
            if line[i + 1 + digits..].trim_start().starts_with('(') {
                out.push_str(ROLE_FN_PREFIX);
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_calls_are_renamed_in_matchers_only() {
        let model = "[role_definition]\ng = _, _\n[matchers]\nm = g(r.sub, p.sub) && g2 (r.obj, p.obj) && \
                     keyMatch2(r.x, \"g(\") && r.g == p.g && sg(r.a, p.a)\n";
        let renamed = rename_role_calls(model);
        assert!(renamed.contains("g = _, _\n"), "{renamed}");
        assert!(
            renamed.contains(
                "m = tollgateRole_g(r.sub, p.sub) && tollgateRole_g2 (r.obj, p.obj) && keyMatch2(r.x, \"g(\") \
                 && r.g == p.g && sg(r.a, p.a)"
            ),
            "{renamed}"
        );
    }

    const TWO_DEFINITIONS: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n\
        [role_definition]\ng = _, _\ng2 = _, _\n[policy_effect]\ne = some(where (p.eft == allow))\n\
        [matchers]\nm = g(r.sub, p.sub) && g2(r.obj, p.obj) && r.act == p.act\n";

    #[tokio::test]
    async fn each_role_definition_has_its_own_links() {
        // `g, ds28, role0` is a subject link: it must not put ds28 in the
        // object group role0 (casbin-rs's shared role manager does).
        let rules = "p, alice, role0, read\ng, ds28, role0\ng2, ds1, role0\n";
        let reference = Reference::build(TWO_DEFINITIONS, rules).await.unwrap();
        assert!(reference.enforce_ex(vec!["alice", "ds1", "read"]).unwrap().0);
        assert!(!reference.enforce_ex(vec!["alice", "ds28", "read"]).unwrap().0);
        let shared =
            Enforcer::new(DefaultModel::from_str(TWO_DEFINITIONS).await.unwrap(), StringAdapter::new(rules.to_owned()))
                .await
                .unwrap();
        assert!(shared.enforce(vec!["alice", "ds28", "read"]).unwrap(), "casbin-rs alone shares the links");
    }
}
