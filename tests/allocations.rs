//! "No allocation per line once a series exists", as a test that fails when it stops holding
//! (`benches/hotpath.rs` prints the same count, but asserts nothing).
//!
//! A counting global allocator counts the allocations (and reallocations) made by the thread
//! that runs the measurement, and only while it measures. A [`Writer`] is fed a corpus the way
//! an ingest worker feeds it (`begin_batch` every 32 datagrams) until every series exists and
//! every buffer has grown; then more passes of the same datagrams must allocate nothing at all.
//!
//! The corpus covers every kind of line a worker meets on its hot path: counters (plain,
//! sampled, tagged), gauges (set, signed deltas, tagged), timers (sampled, tagged), histograms
//! and distributions (tagged, v1.1 value packs), sets (members seen before), and invalid lines
//! (each counted by reason, with no series). Datagrams are packed to 1432 bytes, and the
//! packed corpus is fed again one line per datagram.
//!
//! One `#[test]` function, and only its own thread counted: the harness's and other tests'
//! threads cannot change the count.
#![allow(unsafe_code)] // a counting global allocator; each block says why it holds

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tallyd::pipeline::Writer;

/// The benches' corpus harness: packing, a store, feeding as a worker does.
#[path = "../benches/common/mod.rs"]
mod bench;

/// Forwards to the system allocator; counts calls made by a thread that set [`COUNTING`].
struct Counting;

/// Allocations and reallocations counted so far.
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set by the measuring thread around the measured passes. A `const` thread local without
    /// a destructor: reading it never allocates, so the allocator may read it.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; counting touches only an atomic and a const thread local, neither of
// which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `alloc`'s contract (a non-zero-size layout), passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `alloc_zeroed`'s contract, passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`; `new_size` is our caller's, valid
        // by `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The corpus: `n` lines over about `series` distinct series per kind, deterministic (a fixed
/// LCG), every line kind of the hot path, 1 line in 20 invalid.
fn corpus(series: u64, n: usize) -> Vec<String> {
    let mut state = 42u64;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let k = next(series);
        let v = next(1000);
        let mut l = String::with_capacity(80);
        if i % 20 == 19 {
            match (i / 20) % 4 {
                0 => write!(l, "app.bad{k}:abc|c"),
                1 => write!(l, "app.nocolon{k}"),
                2 => write!(l, "app.badtype{k}:{v}|zz"),
                _ => write!(l, "app.neg{k}:-{v}|c"),
            }
        } else {
            match next(12) {
                0 => write!(l, "app.requests.{k}:{v}|c"),
                1 => write!(l, "app.sampled.{k}:1|c|@0.5"),
                2 => write!(l, "app.hits:{v}|c|#env:prod,host:web{k},region:eu"),
                3 => write!(l, "app.queue.{k}:{v}|g"),
                4 => write!(l, "app.level.{k}:-{v}|g"),
                5 => write!(l, "app.temp:{v}.25|g|#room:r{k}"),
                6 => write!(l, "app.latency.{k}:{v}.5|ms|@0.1"),
                7 => write!(l, "app.rpc:{v}|ms|#svc:s{k},method:get"),
                8 => write!(l, "app.bytes:{v}|h|#env:prod,host:web{k}"),
                9 => write!(l, "app.dist.{k}:1.5:2.25:{v}|d|#env:prod"),
                10 => write!(l, "app.users.{k}:u{}|s", v % 8),
                _ => write!(l, "app.size.{k}:{v}|h"),
            }
        }
        .unwrap();
        out.push(l);
    }
    out
}

/// Allocations made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn known_series_take_no_allocation_per_line() {
    // A sanity check of the counter itself: an allocation in the window is seen.
    assert!(
        allocations(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1,
        "the counting allocator counts nothing"
    );

    let lines = corpus(500, 40_000);
    let (store, live) = bench::store(1_000_000);
    let mut w = Writer::new(&store, live);
    for (name, max) in [("packed to 1432 bytes", 1432), ("one line per datagram", 0)] {
        let datagrams = bench::pack(&lines, max);
        // Warm: every series exists, every cache entry and buffer has grown. The first pass
        // creates the series, which allocates: the count does see the writer's work.
        let cold = allocations(|| bench::feed(&mut w, &datagrams));
        if max != 0 {
            assert!(cold > 0, "{name}: creating the series allocated nothing?");
        }
        bench::feed(&mut w, &datagrams);
        let series = store.series_count();
        const PASSES: usize = 5;
        let allocs = allocations(|| {
            for _ in 0..PASSES {
                bench::feed(&mut w, &datagrams);
            }
        });
        let n = (lines.len() * PASSES) as f64;
        assert_eq!(
            allocs,
            0,
            "{name}: {allocs} allocations in {PASSES} warm passes of {} lines ({:.4} per \
             line) over {series} known series",
            lines.len(),
            allocs as f64 / n
        );
        assert_eq!(store.series_count(), series, "{name}: no series was added");
    }
    // The corpus really went through: every kind made series, and the invalid lines were
    // counted, not stored.
    assert!(store.series_count() > 1000, "{}", store.series_count());
    let errors: u64 = w.stats.parse_errors.iter().sum();
    assert!(errors > 0, "the invalid lines were counted as parse errors");
}
