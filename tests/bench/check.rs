//! `policy check` at scale: loading (parse, validate against the
//! catalogue, build casbin-rs and the index) and linting tollgate's model
//! with synthetic rules and a catalogue registering every dataset, at 1k /
//! 10k / 100k lines. What a reload runs before swapping a policy in, and
//! what a policy author waits for.
//!
//!   cargo bench --bench check

use std::time::Instant;

use tollgate::policy::{Policy, lint, synth};

const MODEL: &str = include_str!("../../policies/model.conf");

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    println!("{:>8} {:>9} {:>10} {:>10} {:>10}", "lines", "datasets", "load", "lint", "findings");
    for lines in [1_000, 10_000, 100_000] {
        let s = synth::generate(lines, 42);
        let catalogue = s.catalogue();
        let started = Instant::now();
        let policy = rt.block_on(Policy::from_texts(MODEL, &s.policy, &catalogue)).expect("the synthetic policy loads");
        let loaded = started.elapsed();
        let started = Instant::now();
        let findings = lint::lint(&policy).len();
        let linted = started.elapsed();
        println!(
            "{lines:>8} {:>9} {:>9.2}s {:>9.3}s {findings:>10}",
            s.objects.len(),
            loaded.as_secs_f64(),
            linted.as_secs_f64()
        );
    }
}
