//! One authorization check at 1k / 10k / 100k rules: tollgate's indexed
//! evaluator against a plain casbin-rs Enforcer on the same model and rules
//! (tollgate's shipped model.conf, synthetic RBAC-with-domains rules).
//!
//!   cargo bench --bench policy

use std::time::{Duration, Instant};

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate::policy::engine::IndexedEngine;
use tollgate::policy::synth;

const MODEL: &str = include_str!("../../policies/model.conf");

fn build(rules: usize, rt: &tokio::runtime::Runtime) -> (Enforcer, IndexedEngine, Vec<[String; 4]>) {
    let s = synth::generate(rules, 42);
    let started = Instant::now();
    let enforcer = rt.block_on(async {
        Enforcer::new(DefaultModel::from_str(MODEL).await.unwrap(), StringAdapter::new(s.policy.clone())).await.unwrap()
    });
    let loaded = started.elapsed();
    let started = Instant::now();
    let engine = IndexedEngine::build(&enforcer).expect("indexable");
    eprintln!("{rules} rules: casbin-rs load {loaded:?}, index build {:?}", started.elapsed());
    (enforcer, engine, s.requests(1000))
}

fn checks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("policy_check");
    for rules in [1_000, 10_000, 100_000] {
        let (enforcer, engine, requests) = build(rules, &rt);
        let args: Vec<Vec<&str>> = requests.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("tollgate", rules), |b| {
            b.iter(|| {
                i = (i + 1) % args.len();
                engine.enforce(&args[i])
            })
        });
        if rules >= 100_000 {
            group.sample_size(10).measurement_time(Duration::from_secs(10));
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("casbin-rs", rules), |b| {
            b.iter(|| {
                i = (i + 1) % args.len();
                enforcer.enforce_ex(args[i].clone()).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
