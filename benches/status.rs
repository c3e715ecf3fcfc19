//! The status page (`GET /`) at 1M series, against a `/metrics` scrape of the same store in
//! the same run. Three shapes of one million counter series, two worker shards:
//!
//! - `1k_families`: 1000 families of 1000 series each (one `id` label);
//! - `1m_families`: a million families of one series each (names that embed ids);
//! - `1_family`: one family of a million series (`id` and `shard` labels).
//!
//! Per shape:
//! - `scrape`: `export::render_chunks`, what `/metrics` runs (the baseline);
//! - `status_build`: `Status::build`, the census and the top families' label counts;
//! - `status_html` / `status_json`: the build plus the rendered page / JSON body.
//!
//! Before measuring, each shape prints the peak heap growth of one build (a counting
//! allocator): the census keeps bounded heaps, not a list of every family.
//!
//! `cargo bench --bench status -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tallyd::export::{self, status};
use tallyd::pipeline::Writer;
use tallyd::telemetry::Telemetry;

#[global_allocator]
static GLOBAL: common::Peak = common::Peak;

/// The line that creates series `i` of a shape.
type LineOf = fn(u64) -> String;

fn shapes(c: &mut Criterion) {
    let n = 1_000_000u64;
    let shapes: [(&str, LineOf); 3] = [
        ("1k_families", |i| {
            format!("app.metric.{}:1|c|#id:{}", i % 1000, i / 1000)
        }),
        ("1m_families", |i| format!("app.metric.{i}:1|c")),
        ("1_family", |i| {
            format!("app.metric:1|c|#id:{},shard:{}", i, i % 16)
        }),
    ];
    for (label, line) in shapes {
        let (store, live) = common::store(2_000_000);
        let mut w1 = Writer::new(&store, live.clone());
        let mut w2 = Writer::new(&store, live.clone());
        let lines: Vec<String> = (0..n).map(line).collect();
        let datagrams = common::pack(&lines, 1432);
        drop(lines);
        common::feed(&mut w1, &datagrams);
        common::feed(&mut w2, &datagrams);
        drop(datagrams);
        assert_eq!(store.series_count(), n);
        let telemetry = Telemetry::new();
        let config = live.load().config.clone();
        let window = Duration::from_secs(60);
        let (s, peak, _) =
            common::measured(|| status::Status::build(&store, &telemetry, &config, Vec::new()));
        let page = status::html(&s);
        eprintln!(
            "status {label}: {} families, top family {} series, {} label names; page {} bytes; \
             peak heap growth of a build {peak} B",
            s.series.families,
            s.top_families.by_series[0].series,
            s.top_families.by_series[0].labels.len(),
            page.len(),
        );
        let mut g = c.benchmark_group(format!("status/{label}"));
        g.sample_size(10);
        g.bench_function("scrape", |b| {
            b.iter(|| {
                let mut bytes = 0usize;
                export::render_chunks(
                    &store,
                    &telemetry,
                    window,
                    tallyd::export::Format::Text,
                    |chunk| {
                        bytes += black_box(chunk).len();
                        true
                    },
                );
                bytes
            })
        });
        g.bench_function("status_build", |b| {
            b.iter(|| {
                black_box(status::Status::build(
                    &store,
                    &telemetry,
                    &config,
                    Vec::new(),
                ))
            })
        });
        g.bench_function("status_html", |b| {
            b.iter(|| {
                let s = status::Status::build(&store, &telemetry, &config, Vec::new());
                black_box(status::html(&s).len())
            })
        });
        g.bench_function("status_json", |b| {
            b.iter(|| {
                let s = status::Status::build(&store, &telemetry, &config, Vec::new());
                black_box(serde_json::to_string(&s).map_or(0, |j| j.len()))
            })
        });
        g.finish();
    }
}

criterion_group!(benches, shapes);
criterion_main!(benches);
