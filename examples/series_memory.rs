//! Memory per series: creates N counter series through two writers on two threads (as the
//! default 2 UDP workers on a 2-core host would), then reports the growth of the resident set
//! (from /proc/self/statm) and of live heap bytes (a counting allocator) per series, and how
//! much of it the two writers' caches hold (measured by dropping them).
//!
//! Lines are what `tallyd blast --names N` sends (`blast.<n>:1|c`: every series its own metric
//! name, so its own family), generated on the fly so the corpus itself is not counted; with
//! `families` > 0, series are instead `app.metric.<n % families>:1|c|#id:<n / families>` (few
//! names, one label). `seen_by` is `both` (every series reaches both
//! workers: many senders, the worst case) or `one` (each sender, so each series, sticks to
//! one worker, which is what SO_REUSEPORT does for a given sender address).
//!
//! `cargo run --release --example series_memory -- 1000000 both [families]`
#![allow(unsafe_code)] // a counting global allocator; each block says why it holds

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tallyd::clock::MonotonicClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::pipeline::Writer;
use tallyd::store::Store;

struct Counting;
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss() -> i64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(0)
        * 4096
}

fn trim() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let both = args.get(2).is_none_or(|a| a != "one");
    let families: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let toml = format!("[limits]\nmax_series = {}\n", n + 10);
    let live = Live::new(Snapshot::from_toml(&toml).expect("config"), None, None);
    let store = Store::new(Arc::new(MonotonicClock::default()), Vec::new());
    let mut writers = vec![Writer::new(&store, live.clone()), Writer::new(&store, live)];
    trim();
    let (rss0, heap0) = (rss(), LIVE_BYTES.load(Ordering::Relaxed));
    std::thread::scope(|s| {
        for (t, w) in writers.iter_mut().enumerate() {
            s.spawn(move || {
                let mut line = Vec::with_capacity(128);
                for i in 0..n {
                    if !both && i % 2 != t as u64 {
                        continue;
                    }
                    if i % 1024 == 0 {
                        w.begin_batch();
                    }
                    line.clear();
                    if families == 0 {
                        write!(line, "blast.{i}:1|c").unwrap();
                    } else {
                        write!(line, "app.metric.{}:1|c|#id:{}", i % families, i / families)
                            .unwrap();
                    }
                    w.line(&line);
                }
            });
        }
    });
    assert_eq!(store.series_count(), n, "every series created");
    trim();
    let (rss1, heap1) = (rss(), LIVE_BYTES.load(Ordering::Relaxed));
    drop(writers);
    trim();
    let (rss2, heap2) = (rss(), LIVE_BYTES.load(Ordering::Relaxed));
    let per = |b: i64| b as f64 / n as f64;
    println!(
        "series={n} seen_by={} families={}: rss_growth={} B ({:.0} B/series) \
         heap_growth={} B ({:.0} B/series); writer caches: rss {:.0} B/series, heap {:.0} B/series; \
         without caches: rss {:.0} B/series, heap {:.0} B/series",
        if both { "both" } else { "one" },
        if families == 0 {
            "n".to_string()
        } else {
            families.to_string()
        },
        rss1 - rss0,
        per(rss1 - rss0),
        heap1 - heap0,
        per(heap1 - heap0),
        per(rss1 - rss2),
        per(heap1 - heap2),
        per(rss2 - rss0),
        per(heap2 - heap0),
    );
    drop(store);
}
