//! Criterion benchmark of the per-connection rate limiter (`MessageRate::check`), which runs
//! once per client frame: the allowed path (a quota never reached) and the limited path.
//!
//! Run with `cargo bench --bench limits`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roomcast::config::LimitsConfig;
use roomcast::limits::{MessageRate, RateDecision};

fn check(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    g.throughput(Throughput::Elements(1));
    let mut allowed = MessageRate::new(&LimitsConfig {
        rate_per_sec: u32::MAX,
        rate_burst: u32::MAX,
        ..LimitsConfig::default()
    });
    g.bench_function("check_allowed", |b| {
        b.iter(|| {
            let d = black_box(&mut allowed).check();
            debug_assert_eq!(d, RateDecision::Allowed);
            d
        })
    });
    let mut limited = MessageRate::new(&LimitsConfig {
        rate_per_sec: 1,
        rate_burst: 1,
        rate_limit_strikes: u32::MAX,
        ..LimitsConfig::default()
    });
    g.bench_function("check_limited", |b| {
        b.iter(|| black_box(&mut limited).check())
    });
    g.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
