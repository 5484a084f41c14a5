//! Synthetic RBAC-with-domains policies of any size, for differential tests,
//! benchmarks and load generation. Deterministic for a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::contract::Operation;

pub struct Synthetic {
    /// policy.csv text for tollgate's model (`p, sub, dom, obj, act, eft`).
    pub policy: String,
    pub subjects: Vec<String>,
    pub domains: Vec<String>,
    pub objects: Vec<String>,
    /// (subject, domain) admissions, to bias requests toward granted ones.
    admissions: Vec<(usize, usize)>,
    seed: u64,
}

/// About `rules` policy rules (p and g lines together), shaped like a large
/// deployment: many enterprises, roles per scenario, dataset groups and
/// hierarchies, wildcard rules, and some deny rules.
pub fn generate(rules: usize, seed: u64) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rules.max(50);
    let domains: Vec<String> = (0..(n / 500).clamp(4, 200)).map(|i| format!("scenario-{i}")).collect();
    let roles_per_domain = (n / 200).clamp(3, 100);
    let subjects: Vec<String> = (0..(n / 8).max(10)).map(|i| format!("ent-{i:06}")).collect();
    // Unified registration codes, so the policy also loads with `catalogue()`.
    let objects: Vec<String> =
        (0..(n / 6).max(10)).map(|i| format!("GX-{:06}-DATA-{:04}", 610_000 + i / 10_000, i % 10_000)).collect();
    let groups: Vec<String> = (0..(n / 60).max(4)).map(|i| format!("grp-{i:04}")).collect();
    let role = |d: usize, r: usize| format!("role-{d}-{r}");
    let mut out = String::with_capacity(n * 48);

    // Dataset groups, with a shallow hierarchy.
    for (i, o) in objects.iter().enumerate() {
        out.push_str(&format!("g2, {o}, {}\n", groups[i % groups.len()]));
    }
    for (i, g) in groups.iter().enumerate().skip(1) {
        if i % 5 == 0 {
            out.push_str(&format!("g2, {g}, {}\n", groups[i / 5 - 1]));
        }
    }
    // Role hierarchy inside each domain.
    for (d, domain) in domains.iter().enumerate() {
        for r in 1..roles_per_domain {
            if r % 4 == 0 {
                out.push_str(&format!("g, {}, {}, {domain}\n", role(d, r), role(d, r / 4)));
            }
        }
    }
    let mut lines = out.lines().count();
    // Enterprises admitted to scenarios.
    let mut admissions = Vec::new();
    for (si, s) in subjects.iter().enumerate() {
        for _ in 0..rng.gen_range(1..=2) {
            let d = rng.gen_range(0..domains.len());
            admissions.push((si, d));
            out.push_str(&format!("g, {s}, {}, {}\n", role(d, rng.gen_range(0..roles_per_domain)), domains[d]));
            lines += 1;
        }
    }
    // Grants and denials.
    while lines < n {
        let d = rng.gen_range(0..domains.len());
        let sub = if rng.gen_bool(0.02) { "*".to_owned() } else { role(d, rng.gen_range(0..roles_per_domain)) };
        let dom = if rng.gen_bool(0.02) { "*" } else { domains[d].as_str() };
        let obj = if rng.gen_bool(0.6) {
            groups[rng.gen_range(0..groups.len())].clone()
        } else {
            objects[rng.gen_range(0..objects.len())].clone()
        };
        let act =
            if rng.gen_bool(0.03) { "*" } else { Operation::ALL[rng.gen_range(0..Operation::ALL.len())].as_str() };
        let eft = if rng.gen_bool(0.06) { "deny" } else { "allow" };
        out.push_str(&format!("p, {sub}, {dom}, {obj}, {act}, {eft}\n"));
        lines += 1;
    }
    Synthetic { policy: out, subjects, domains, objects, admissions, seed }
}

impl Synthetic {
    /// A catalogue.toml registering every scenario and dataset the rules
    /// name, so the synthetic policy loads as tollgate's own would
    /// (`policy check` at scale).
    pub fn catalogue(&self) -> String {
        let mut out = String::with_capacity(self.objects.len() * 320);
        for d in &self.domains {
            out.push_str(&format!(
                "[[scenarios]]\ncode = \"{d}\"\nname = \"{d}\"\npurposes = [\"industry\", \"public_welfare\"]\n\
                 authorized_until = \"2030-06-30\"\n\n"
            ));
        }
        for o in &self.objects {
            out.push_str(&format!(
                "[[datasets]]\ncode = \"{o}\"\nname = \"{o}\"\nholder = \"11610100MB00014076\"\n\
                 holder_name = \"Synthetic holder\"\ngrade = \"general\"\nregistered_until = \"2030-01-01\"\n\
                 price = {{ item = \"api\", unit = \"call\", cap_fen = 80, monthly_quota = 100000, tiers = [{{ unit_price_fen = 50 }}] }}\n\n"
            ));
        }
        out
    }

    /// `count` requests `[sub, dom, obj, act]`, including unknown names.
    pub fn requests(&self, count: usize) -> Vec<[String; 4]> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed);
        (0..count)
            .map(|_| {
                let pick = |rng: &mut StdRng, v: &[String], unknown: &str| {
                    if rng.gen_bool(0.02) { unknown.to_owned() } else { v[rng.gen_range(0..v.len())].clone() }
                };
                let (sub, dom) = if rng.gen_bool(0.6) {
                    let (s, d) = self.admissions[rng.gen_range(0..self.admissions.len())];
                    (self.subjects[s].clone(), self.domains[d].clone())
                } else {
                    (pick(&mut rng, &self.subjects, "ent-unknown"), pick(&mut rng, &self.domains, "scenario-unknown"))
                };
                [
                    sub,
                    dom,
                    pick(&mut rng, &self.objects, "ds-unknown"),
                    Operation::ALL[rng.gen_range(0..Operation::ALL.len())].as_str().to_owned(),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_policy_loads_with_its_catalogue_as_tollgates_own_would() {
        let s = generate(2_000, 7);
        let model = include_str!("../../policies/model.conf");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let policy = rt.block_on(crate::policy::Policy::from_texts(model, &s.policy, &s.catalogue())).unwrap();
        assert!(policy.is_indexed() && policy.rule_count() > 1_000);
    }
}
