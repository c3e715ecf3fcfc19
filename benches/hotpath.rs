//! The full hot path on one core: `Writer::ingest` (split, parse, look the series up in the
//! worker's cache, add to the worker's shard) on prepared datagrams, for 1k and 100k distinct
//! series, against the split-plus-f64 and memchr-split baselines on the same datagrams in the
//! same run. Two corpora: `counters` (what `tallyd blast --tags 2` sends) and `mixed` (the parse
//! bench's corpus: five types, sample rates, tags, value packs, 10% invalid). Datagrams are
//! packed to 1432 bytes; `counters_oneline` repeats the 1k case one line per datagram.
//!
//! Before measuring, the corpus is ingested once (so every series exists) and then once more
//! under a counting allocator: the bench prints the allocations per line of that second pass,
//! which must be zero ("no allocation per line once a series exists").
//!
//! `mixed_1k_classic`, `mixed_100k_classic`: the mixed cases with `[defaults] histograms = "classic"`, to show what the
//! default native histograms cost that corpus.
//!
//! `histograms_1k`: 1k timer series observed at values over four decades, into a classic, a
//! native and a both histogram (`[defaults] histograms`), in the same run: what a native
//! observation costs over a classic one.
//!
//! `cargo bench --bench hotpath -- --warm-up-time 1 --measurement-time 3`
#![allow(unsafe_code)] // a counting global allocator; each block says why it holds

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::pipeline::Writer;

/// Counts allocations, so the bench can show the hit path makes none.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// True if the command-line filter (a regex, as criterion takes it) matches none of this
/// case's benches, so a profiling run of one case does not pay for building the others.
fn skipped(name: &str) -> bool {
    let Some(filter) = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
    else {
        return false;
    };
    let Ok(re) = regex::Regex::new(&filter) else {
        return false;
    };
    ![
        "baseline_memchr_split",
        "baseline_split_f64",
        "tallyd_ingest",
        "classic",
        "native",
        "both",
    ]
    .iter()
    .any(|b| re.is_match(&format!("hotpath/{name}/{b}")))
}

fn case(c: &mut Criterion, name: &str, lines: &[String], packed: usize) {
    case_with(c, name, lines, packed, "");
}

/// [`case`] on a config with `extra` TOML.
fn case_with(c: &mut Criterion, name: &str, lines: &[String], packed: usize, extra: &str) {
    if skipped(name) {
        return;
    }
    let datagrams = common::pack(lines, packed);
    let n = common::count_lines(&datagrams);
    let (store, live) = common::store_with(&format!("[limits]\nmax_series = 2000000\n{extra}"));
    let mut w = Writer::new(&store, live);
    common::feed(&mut w, &datagrams);
    let before = ALLOCS.load(Ordering::Relaxed);
    common::feed(&mut w, &datagrams);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!(
        "{name}: {n} lines in {} datagrams, {} series in the store, {allocs} allocations in a \
         warm pass ({:.4} per line)",
        datagrams.len(),
        store.series_count(),
        allocs as f64 / n as f64
    );
    let mut g = c.benchmark_group(format!("hotpath/{name}"));
    g.throughput(Throughput::Elements(n));
    common::baselines(&mut g, &datagrams);
    g.bench_function("tallyd_ingest", |b| {
        b.iter(|| common::feed(&mut w, black_box(&datagrams)))
    });
    g.finish();
}

/// The same timer lines into classic, native and both histograms.
fn histograms(c: &mut Criterion) {
    let name = "histograms_1k";
    if skipped(name) {
        return;
    }
    // Values 1 ms to 10 s, spread log-uniformly, so native buckets move and fill.
    let lines: Vec<String> = (0..200_000u64)
        .map(|i| {
            let v = 10f64.powf((i * 7919 % 4000) as f64 / 1000.0);
            format!("app.timer.{}:{v:.3}|ms", i % 1000)
        })
        .collect();
    let datagrams = common::pack(&lines, 1432);
    let n = common::count_lines(&datagrams);
    let mut g = c.benchmark_group(format!("hotpath/{name}"));
    g.throughput(Throughput::Elements(n));
    for kind in ["classic", "native", "both"] {
        let (store, live) = common::store_with(&format!("[defaults]\nhistograms = \"{kind}\"\n"));
        let mut w = Writer::new(&store, live);
        common::feed(&mut w, &datagrams);
        g.bench_function(kind, |b| {
            b.iter(|| common::feed(&mut w, black_box(&datagrams)))
        });
    }
    g.finish();
}

fn hotpath(c: &mut Criterion) {
    histograms(c);
    let counters_1k = common::counter_lines(1_000, 200_000, 2);
    case(c, "counters_1k", &counters_1k, 1432);
    case(c, "counters_oneline_1k", &counters_1k, 0);
    drop(counters_1k);
    case(
        c,
        "counters_100k",
        &common::counter_lines(100_000, 1_000_000, 2),
        1432,
    );
    let mixed_1k = common::mixed_lines(1_000, 200_000);
    case(c, "mixed_1k", &mixed_1k, 1432);
    // The same corpus with classic histograms only, in the same run.
    case_with(
        c,
        "mixed_1k_classic",
        &mixed_1k,
        1432,
        "[defaults]\nhistograms = \"classic\"\n",
    );
    drop(mixed_1k);
    let mixed_100k = common::mixed_lines(100_000, 1_000_000);
    case(c, "mixed_100k", &mixed_100k, 1432);
    case_with(
        c,
        "mixed_100k_classic",
        &mixed_100k,
        1432,
        "[defaults]\nhistograms = \"classic\"\n",
    );
}

criterion_group!(benches, hotpath);
criterion_main!(benches);
