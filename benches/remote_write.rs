//! Remote write: what a push costs, and whether it slows ingest.
//!
//! - `remote_write/100k`: one push of 100,000 counter series (1000 families x 100 `id`
//!   values, two shards) made into snappy-compressed protobuf requests of 2000 samples
//!   (`push`), against a `/metrics` scrape of the same store in the same run (`scrape`). The
//!   preamble prints allocations and bytes per pushed series for one push.
//! - Ingest during a push: one thread ingests known series from packed datagrams as fast as
//!   it can while another pushes 1,000,000 series over and over; its lines per second against
//!   the same thread alone, alternated three times in one run (printed; the median ratio).
//!
//! `cargo bench --bench remote_write -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::export;
use tallyd::pipeline::Writer;
use tallyd::remote::encode::Batcher;
use tallyd::store::Store;
use tallyd::telemetry::Telemetry;

#[global_allocator]
static GLOBAL: common::Peak = common::Peak;

const WINDOW: Duration = Duration::from_secs(60);

/// A store of `n` counter series (`n / 1000` ids of 1000 families) in two shards.
fn filled(n: u64) -> (Arc<Store>, Arc<tallyd::config::live::Live>) {
    let (store, live) = common::store(2_000_000);
    let mut w1 = Writer::new(&store, live.clone());
    let mut w2 = Writer::new(&store, live.clone());
    let lines: Vec<String> = (0..n)
        .map(|i| format!("app.metric.{}:1|c|#id:{}", i % 1000, i / 1000))
        .collect();
    let datagrams = common::pack(&lines, 1432);
    common::feed(&mut w1, &datagrams);
    common::feed(&mut w2, &datagrams);
    assert_eq!(store.series_count(), n);
    (store, live)
}

fn push(store: &Store) -> (usize, u64) {
    let mut b = Batcher::new(1, &[], 2000);
    b.store(store, WINDOW);
    let out = b.finish();
    (out.len(), out.iter().map(|r| r.body.len() as u64).sum())
}

/// Lines per second one thread ingests for `d` (known series, packed datagrams).
fn ingest_rate(w: &mut Writer, datagrams: &[Vec<u8>], lines_per_pass: u64, d: Duration) -> f64 {
    let start = Instant::now();
    let mut lines = 0u64;
    while start.elapsed() < d {
        common::feed(w, datagrams);
        lines += lines_per_pass;
    }
    lines as f64 / start.elapsed().as_secs_f64()
}

fn bench(c: &mut Criterion) {
    let n = 100_000u64;
    let (store, _live) = filled(n);
    let telemetry = Telemetry::new();
    let before = common::allocations();
    let ((requests, bytes), peak, _) = common::measured(|| push(&store));
    let allocs = common::allocations() - before;
    eprintln!(
        "push of {n} series: {requests} requests, {bytes} bytes compressed ({:.1} B/series); \
         {allocs} allocations ({:.2}/series); peak heap growth {peak} B",
        bytes as f64 / n as f64,
        allocs as f64 / n as f64,
    );
    let mut g = c.benchmark_group("remote_write/100k");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("scrape", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            export::render_chunks(
                &store,
                &telemetry,
                WINDOW,
                tallyd::export::Format::Text,
                |chunk| {
                    bytes += black_box(chunk).len();
                    true
                },
            );
            bytes
        })
    });
    g.bench_function("push", |b| b.iter(|| black_box(push(&store))));
    g.finish();
    drop(store);

    // Ingest while 1M series are pushed over and over.
    let (big, live) = filled(1_000_000);
    let mut w = Writer::new(&big, live);
    let lines: Vec<String> = (0..100_000u64)
        .map(|i| format!("app.metric.{}:1|c|#id:{}", i % 1000, i / 1000))
        .collect();
    let datagrams = common::pack(&lines, 1432);
    common::feed(&mut w, &datagrams);
    let d = Duration::from_secs(3);
    let mut ratios = Vec::new();
    for round in 0..3 {
        let alone = ingest_rate(&mut w, &datagrams, lines.len() as u64, d);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stop.clone(), big.clone());
        let pusher = std::thread::spawn(move || {
            let mut pushes = 0u32;
            while !s.load(Ordering::Relaxed) {
                black_box(push(&st));
                pushes += 1;
            }
            pushes
        });
        let during = ingest_rate(&mut w, &datagrams, lines.len() as u64, d);
        stop.store(true, Ordering::Relaxed);
        let pushes = pusher.join().unwrap();
        eprintln!(
            "round {round}: ingest alone {:.2} M lines/s, during pushes of 1M series {:.2} M \
             lines/s ({pushes} pushes in {d:?}): {:.1}%",
            alone / 1e6,
            during / 1e6,
            during / alone * 100.0
        );
        ratios.push(during / alone);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "ingest during pushes / alone, median of 3: {:.1}%",
        ratios[1] * 100.0
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
