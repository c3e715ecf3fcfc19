//! Parse throughput on the mixed corpus (plain, sampled, tagged, v1.1 packed values, 10%
//! invalid; multi-line datagrams of up to 1432 bytes), against two baselines run in the same
//! process: memchr line splitting only, and splitting plus field splitting plus f64 parsing.
//!
//! `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::parse::{self, ParseOptions};

fn parse(c: &mut Criterion) {
    let lines = common::mixed_lines(1000, 100_000);
    let datagrams = common::pack(&lines, 1432);
    let n = common::count_lines(&datagrams);
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("parse/mixed");
    g.throughput(Throughput::Elements(n));
    common::baselines(&mut g, &datagrams);
    g.bench_function("tallyd_parse_line", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            let mut errors = 0u32;
            for d in &datagrams {
                for line in parse::lines(black_box(d)) {
                    if parse::parse_line(line, &opts, &mut |s| sum += s.value).is_err() {
                        errors += 1;
                    }
                }
            }
            (sum, errors)
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
