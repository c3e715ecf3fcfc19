//! Shared corpora and baselines for the benches: deterministic StatsD traffic (no RNG crate,
//! a fixed LCG, so every run sees the same bytes) and the naive baselines each bench compares
//! tallyd against in the same run.
#![allow(dead_code)]
#![allow(unsafe_code)] // the heap-tracking global allocator; each block says why it holds

use std::fmt::Write as _;
use std::sync::Arc;

use tallyd::clock::MonotonicClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::pipeline::Writer;
use tallyd::store::Store;

/// A tiny deterministic generator (Knuth's MMIX LCG), good enough to pick series.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The mixed corpus: plain counters and gauges, sampled timers, tagged histograms, v1.1 value
/// packs, and 10% invalid lines, over about `series` distinct series (a fifth per kind), `n`
/// lines.
pub fn mixed_lines(series: u64, n: usize) -> Vec<String> {
    let mut r = Lcg::new(42);
    let per_kind = (series / 5).max(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let k = r.below(per_kind);
        let v = r.below(1000);
        let mut l = String::with_capacity(64);
        if i % 10 == 9 {
            // 10% invalid, each a different reason.
            match (i / 10) % 4 {
                0 => write!(l, "app.bad{k}:abc|c"),
                1 => write!(l, "app.nocolon{k}"),
                2 => write!(l, "app.badtype{k}:{v}|zz"),
                _ => write!(l, "app.neg{k}:-{v}|c"),
            }
            .unwrap();
        } else {
            match r.below(5) {
                0 => write!(l, "app.svc.requests.{k}:{v}|c"),
                1 => write!(l, "app.svc.queue.{k}:{v}|g"),
                2 => write!(l, "app.svc.latency.{k}:{v}.5|ms|@0.1"),
                3 => write!(l, "app.svc.bytes:{v}|h|#env:prod,host:web{k},region:eu"),
                _ => write!(l, "app.svc.dist.{k}:1.5:2.25:{v}|d|#env:prod"),
            }
            .unwrap();
        }
        out.push(l);
    }
    out
}

/// What `tallyd blast` sends: counter increments `<prefix>.<k>:1|c`, optionally with tags,
/// over `series` names picked at random.
pub fn counter_lines(series: u64, n: usize, tags: u32) -> Vec<String> {
    let mut r = Lcg::new(7);
    (0..n)
        .map(|_| {
            let k = r.below(series);
            let mut l = format!("blast.{k}:1|c");
            if tags > 0 {
                l.push_str("|#");
                for t in 0..tags {
                    if t > 0 {
                        l.push(',');
                    }
                    write!(l, "k{t}:v{}", k % 4).unwrap();
                }
            }
            l
        })
        .collect()
}

/// Packs lines into datagrams of at most `max` bytes (0 = one line per datagram).
pub fn pack(lines: &[String], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for l in lines {
        if max == 0 {
            out.push(l.as_bytes().to_vec());
            continue;
        }
        if !cur.is_empty() && cur.len() + 1 + l.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(b'\n');
        }
        cur.extend_from_slice(l.as_bytes());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Lines in a set of datagrams.
pub fn count_lines(datagrams: &[Vec<u8>]) -> u64 {
    datagrams
        .iter()
        .map(|d| tallyd::parse::lines(d).count() as u64)
        .sum()
}

/// Baseline 1: split lines with memchr and nothing else.
#[inline]
pub fn split_only(datagram: &[u8]) -> u64 {
    let mut n = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', datagram) {
        n += u64::from(nl > start);
        start = nl + 1;
    }
    n + u64::from(start < datagram.len())
}

/// Baseline 2: split lines, split each into name / value / `|`-fields, parse the value as an
/// f64. No validation beyond that, no types, no tags, no store: the floor any StatsD parser
/// pays per line.
#[inline]
pub fn split_f64(datagram: &[u8]) -> f64 {
    let mut sum = 0.0;
    for line in datagram.split(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let rest = &line[colon + 1..];
        let Some(pipe) = memchr::memchr(b'|', rest) else {
            continue;
        };
        let mut fields = 0u32;
        for f in rest[pipe + 1..].split(|&b| b == b'|') {
            fields += u32::from(f.first().copied().unwrap_or(0));
        }
        if let Some(v) = std::str::from_utf8(&rest[..pipe])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            sum += v + f64::from(fields);
        }
    }
    sum
}

/// A store and live config for benches: defaults, with room for `max_series` series.
pub fn store(max_series: usize) -> (Arc<Store>, Arc<Live>) {
    store_with(&format!("[limits]\nmax_series = {max_series}\n"))
}

/// A store and a live config from `toml`.
pub fn store_with(toml: &str) -> (Arc<Store>, Arc<Live>) {
    let snap = Snapshot::from_toml(toml).expect("valid bench config");
    let live = Live::new(snap, None, None);
    let store = Store::new(Arc::new(MonotonicClock::default()), Vec::new());
    (store, live)
}

/// Feeds datagrams to a writer the way an ingest worker does: `begin_batch` every 32.
pub fn feed(w: &mut Writer, datagrams: &[Vec<u8>]) {
    for chunk in datagrams.chunks(32) {
        w.begin_batch();
        for d in chunk {
            w.ingest(d, false);
        }
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The two same-run baselines every line-throughput bench compares against: splitting lines
/// with memchr only, and splitting fields plus parsing the f64 value.
pub fn baselines(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    datagrams: &[Vec<u8>],
) {
    use std::hint::black_box;
    g.bench_function("baseline_memchr_split", |b| {
        b.iter(|| {
            datagrams
                .iter()
                .map(|d| split_only(black_box(d)))
                .sum::<u64>()
        })
    });
    g.bench_function("baseline_split_f64", |b| {
        b.iter(|| {
            datagrams
                .iter()
                .map(|d| split_f64(black_box(d)))
                .sum::<f64>()
        })
    });
}

/// A mapping config of `globs` glob rules and `regexes` regex rules, interleaved (a regex
/// every `globs / regexes` globs), shaped like a statsd_exporter mapping file grown over
/// years: one service per rule, a wildcard segment or two, regexes with `\w` captures. Each
/// rule has its own literal first segment, so no rule shadows another.
pub fn mapping_rules(globs: usize, regexes: usize) -> String {
    let mut out = String::with_capacity((globs + regexes) * 120);
    let every = globs.checked_div(regexes).unwrap_or(usize::MAX).max(1);
    let (mut g, mut r) = (0, 0);
    while g < globs || r < regexes {
        if r < regexes && (g == globs || (g > 0 && g % every == 0 && r < g / every)) {
            let _ = write!(
                out,
                "[[mapping]]\nregex = 'rsvc{r}\\.(\\w+)\\.latency_(\\w+)'\n\
                 name = \"rsvc{r}_latency\"\nlabels = {{ endpoint = \"$1\", unit = \"$2\" }}\n\n"
            );
            r += 1;
        } else {
            let _ = write!(
                out,
                "[[mapping]]\nmatch = \"svc{g}.*.requests.*\"\nname = \"svc{g}_requests\"\n\
                 labels = {{ endpoint = \"$1\", code = \"$2\" }}\n\n"
            );
            g += 1;
        }
    }
    out
}

/// A global allocator that tracks live heap bytes and their peak, for [`measured`]. A bench or
/// test binary installs it with `#[global_allocator] static GLOBAL: Peak = Peak;`.
pub struct Peak;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
static PEAK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Allocations (and reallocations) made so far through [`Peak`].
pub fn allocations() -> u64 {
    ALLOCS.load(std::sync::atomic::Ordering::Relaxed)
}

fn grew(by: i64) {
    use std::sync::atomic::Ordering::Relaxed;
    ALLOCS.fetch_add(1, Relaxed);
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes in atomics
// (which allocate nothing).
unsafe impl std::alloc::GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        grew(l.size() as i64);
        // SAFETY: our caller upholds `alloc`'s contract, passed on unchanged.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        grew(l.size() as i64);
        // SAFETY: our caller upholds `alloc_zeroed`'s contract, passed on unchanged.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `p` came from `System` with this layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        grew(new as i64 - l.size() as i64);
        // SAFETY: `p` came from `System` with `l`; `new` is valid by our caller's contract.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

/// Runs `f` (with [`Peak`] installed); its result, the peak heap growth while it ran, and the
/// growth it left behind.
pub fn measured<T>(f: impl FnOnce() -> T) -> (T, i64, i64) {
    use std::sync::atomic::Ordering::Relaxed;
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = f();
    (t, PEAK.load(Relaxed) - base, LIVE.load(Relaxed) - base)
}
