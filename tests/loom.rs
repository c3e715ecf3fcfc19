//! Loom models of tallyd's concurrent core: the store's shard protocol (single-writer words,
//! the per-series seqlock, segment publication through `OnceBox`, series creation under the
//! registry mutex, the epoch-based expiry with resurrection), the config swap, and readiness.
//!
//! Each model drives the real code (`Store`, `Writer`, `Shard`, `Live`, `Readiness`), built
//! on loom's atomics, `Arc`, `Mutex` and `RwLock` through `tallyd::sync`. Run with
//!
//! ```text
//! CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" cargo test --release --test loom
//! ```
//!
//! Every model is small (two or three threads, one to three operations each) and explored
//! exhaustively: no model sets a preemption bound (`LOOM_MAX_PREEMPTIONS`, if set, imposes
//! one). The whole file runs in seconds. The `broken_*` models copy one piece of the real
//! protocol with one ordering weakened and must fail: they show that the models catch the bug
//! they exist for.
//!
//! Two loom 0.7 limitations shape the models. Its partial-order reduction forgets a load by
//! one thread when another thread loads and then stores the same atomic (tokio-rs/loom#166,
//! #392), so the shard writer's loads of its own words go through `tallyd::sync::load_own`
//! (an `unsync_load` under loom, which also checks the single-writer claim), and a model whose
//! race is a plain load against a load-then-publish runs the publisher first. And loom's
//! threads have 32 KiB stacks, so model threads are spawned with more (`spawn`) and configs
//! with mapping rules are parsed on a thread of their own (`parse`).
#![cfg(loom)]
#![allow(unsafe_code)] // a loom model of the lock-free box; each block says why it holds

use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicU64, Ordering, fence};
use loom::thread;

use tallyd::clock::ManualClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::naming::FamilyKind;
use tallyd::pipeline::Writer;
use tallyd::ready::Readiness;
use tallyd::store::Store;
use tallyd::store::arena::Shard;
use tallyd::store::read::{Values, Visitor};

/// Runs `f` under every interleaving loom finds (exhaustive: no preemption bound unless
/// `LOOM_MAX_PREEMPTIONS` sets one), logging like `loom::model` when `LOOM_LOG` is set, and
/// prints how many executions it explored (shown with `--nocapture`).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let executions = StdArc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let log = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LOOM_LOG"))
        .with_test_writer()
        .without_time()
        .finish();
    tracing::subscriber::with_default(log, || {
        loom::model::Builder::new().check(move || {
            counter.fetch_add(1, StdOrdering::Relaxed);
            f();
        });
    });
    eprintln!("{} executions", executions.load(StdOrdering::Relaxed));
}

/// Spawns a model thread with room for tallyd's real code (loom's default stack is 32 KiB, too
/// small to drop a config snapshot).
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .stack_size(1 << 16)
        .spawn(f)
        .expect("spawn")
}

/// Parses a config on a model thread of its own: compiling mapping rules (regexes) needs more
/// stack than the model's main thread has. The thread does no loom operation, so it adds no
/// interleavings.
fn parse(toml: &'static str) -> Snapshot {
    spawn(move || Snapshot::from_toml(toml).expect("valid config"))
        .join()
        .unwrap()
}

/// A store on a manual clock at time zero, with a live config parsed from `toml`.
fn setup(toml: &str) -> (StdArc<Store>, StdArc<ManualClock>, loom::sync::Arc<Live>) {
    let clock = StdArc::new(ManualClock::default());
    let store = Store::new(clock.clone(), Vec::new());
    let live = Live::new(Snapshot::from_toml(toml).expect("valid config"), None, None);
    (store, clock, live)
}

/// One series of a scrape, owned.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Counter(f64),
    Gauge(f64),
    Histogram {
        buckets: Vec<f64>,
        count: f64,
        sum: f64,
    },
    /// A kind no model here creates (summaries).
    Other(String),
}

/// A scrape: `(family, labels, value)` in visiting order.
#[derive(Debug, Default)]
struct Scrape {
    family: String,
    series: Vec<(String, String, Val)>,
}

impl Visitor for Scrape {
    fn family(
        &mut self,
        name: &str,
        _kind: FamilyKind,
        _help: Option<&str>,
        _: &dyn Fn(&str) -> bool,
    ) -> bool {
        self.family = name.to_string();
        true
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        let v = match values {
            Values::Counter(v) => Val::Counter(v),
            Values::Gauge(v) => Val::Gauge(v),
            Values::Histogram {
                buckets,
                count,
                sum,
                ..
            } => Val::Histogram {
                buckets: buckets.to_vec(),
                count,
                sum,
            },
            other => Val::Other(format!("{other:?}")),
        };
        self.series
            .push((self.family.clone(), labels.to_string(), v));
    }
}

impl Scrape {
    /// Every series of `family` (a family renders each label set at most once).
    fn all(&self, family: &str) -> Vec<&Val> {
        self.series
            .iter()
            .filter(|(f, _, _)| f == family)
            .map(|(_, _, v)| v)
            .collect()
    }

    /// The one unlabelled series of `family`, if exported; panics on a duplicate.
    fn one(&self, family: &str) -> Option<Val> {
        let all = self.all(family);
        assert!(
            all.len() <= 1,
            "{family} exported {} times: {all:?}",
            all.len()
        );
        all.first().map(|v| (*v).clone())
    }
}

fn scrape(store: &Store) -> Scrape {
    let mut s = Scrape::default();
    store.visit(Duration::from_secs(60), &mut s);
    s
}

// ---------------------------------------------------------------------------------------------
// 1. Workers add to their shards while a scrape sums all shards.
// ---------------------------------------------------------------------------------------------

/// Two workers each add once to a counter that already has a value in both shards, while a
/// scrape sums the shards. Checks `Shard::add_f64` (single-writer load + store, no RMW) and
/// `read_series` (each shard's word read once): the scrape sees each worker's contribution
/// either before or after its add, never torn, lost or counted twice, and the final sum is
/// exact. Three threads, exhaustive.
#[test]
fn scrape_sums_counter_shards() {
    model(|| {
        let (store, _clock, live) = setup("");
        let mut w1 = Writer::new(&store, live.clone());
        let mut w2 = Writer::new(&store, live);
        w1.line(b"c:1|c");
        w2.line(b"c:10|c");
        let a = spawn(move || {
            w1.line(b"c:2|c");
            w1
        });
        let b = spawn(move || {
            w2.line(b"c:20|c");
            w2
        });
        let seen = scrape(&store).one("c_total");
        assert!(
            [11.0, 13.0, 31.0, 33.0]
                .iter()
                .any(|v| seen == Some(Val::Counter(*v))),
            "torn or double-counted: {seen:?}"
        );
        let (_w1, _w2) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(scrape(&store).one("c_total"), Some(Val::Counter(33.0)));
    });
}

/// A worker observes into a histogram (count, sum and a bucket: three words under the
/// series' seqlock) while a scrape reads it. Checks `Shard::write_begin` / `write_end` against
/// `Shard::read_consistent`: the scrape sees the histogram before or after the observation,
/// never count != sum of buckets or a sum from the other state. Two threads, exhaustive.
#[test]
fn scrape_sees_whole_histogram() {
    model(|| {
        // Classic: a native part (hundreds of words) would not fit loom's small segments.
        let (store, _clock, live) =
            setup("[defaults]\nhistogram_buckets = [1.0, 10.0]\nhistograms = \"classic\"\n");
        let mut w = Writer::new(&store, live);
        w.line(b"h:0.5|h");
        let t = spawn(move || {
            w.line(b"h:5|h");
            w
        });
        let before = Val::Histogram {
            buckets: vec![1.0, 0.0],
            count: 1.0,
            sum: 0.5,
        };
        let after = Val::Histogram {
            buckets: vec![1.0, 1.0],
            count: 2.0,
            sum: 5.5,
        };
        let seen = scrape(&store).one("h").expect("h is exported");
        assert!(seen == before || seen == after, "torn histogram: {seen:?}");
        let _w = t.join().unwrap();
        assert_eq!(scrape(&store).one("h"), Some(after));
    });
}

/// A gauge set in one shard (set time, value: two words under the seqlock) while a scrape
/// picks the newest set across shards. A torn read (the new set time with the old value)
/// would export 0 or mix the shards. Two threads, exhaustive.
#[test]
fn scrape_sees_whole_gauge() {
    model(|| {
        let (store, clock, live) = setup("");
        let mut w1 = Writer::new(&store, live.clone());
        w1.line(b"g:10|g");
        clock.advance(Duration::from_secs(1));
        let mut w2 = Writer::new(&store, live);
        w2.line(b"other:1|c"); // allocates w2's segment: the race is on the words alone.
        let t = spawn(move || {
            w2.line(b"g:20|g");
            w2
        });
        let seen = scrape(&store).one("g");
        assert!(
            seen == Some(Val::Gauge(10.0)) || seen == Some(Val::Gauge(20.0)),
            "torn gauge: {seen:?}"
        );
        let _w2 = t.join().unwrap();
        assert_eq!(scrape(&store).one("g"), Some(Val::Gauge(20.0)));
        drop(w1);
    });
}

// ---------------------------------------------------------------------------------------------
// 2. A new series is published while another worker and a scrape look it up.
// ---------------------------------------------------------------------------------------------

/// Two workers race to create the same series (registry mutex: one creates, the other finds
/// it) in fresh shards whose first segment neither has allocated yet (`OnceBox` publication
/// of the segment), while a scrape walks the registry and reads both shards. Nobody reads an
/// uninitialised segment (loom checks every atomic's creation happens-before its loads), the
/// scrape sees the series absent or with a sum of whole increments, and after both workers
/// finish the series is exported exactly once with every increment. Three threads,
/// exhaustive.
#[test]
fn new_series_is_published_whole() {
    model(|| {
        let (store, _clock, live) = setup("");
        let mut w1 = Writer::new(&store, live.clone());
        let mut w2 = Writer::new(&store, live);
        let a = spawn(move || {
            w1.line(b"n:1|c");
            w1
        });
        let b = spawn(move || {
            w2.line(b"n:2|c");
            w2
        });
        match scrape(&store).one("n_total") {
            None => {}
            Some(Val::Counter(v)) => assert!([0.0, 1.0, 2.0, 3.0].contains(&v), "{v}"),
            Some(v) => panic!("wrong type: {v:?}"),
        }
        let (_w1, _w2) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(scrape(&store).one("n_total"), Some(Val::Counter(3.0)));
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Expiry races a late increment through a stale cache entry.
// ---------------------------------------------------------------------------------------------

/// A series idle for its ttl is swept while a worker, in a batch that began before the sweep,
/// increments it through its cached offset, then starts a new batch (seeing the new epoch)
/// and increments it again through the registry. The sweeper runs two sweeps (mark, then
/// reclaim once every writer has seen the epoch) and one more after the worker is done.
/// Whatever the interleaving, both increments end up in the one exported series: the late
/// one resurrects the retiring series (the reclaiming sweep's second fingerprint differs, or
/// the lookup finds it retiring), never lands in a slot that is then zeroed, and the lookup
/// never creates a duplicate. Checks `Store::sweep` (mark, fingerprint, reclaim; its Acquire
/// load of `seen_epoch`), `Writer::begin_batch` (its Release store of `seen_epoch`) and
/// `Store::find_or_create`. Two threads, exhaustive.
#[test]
fn expiry_races_late_increment() {
    // Executions where the worker's second batch saw the sweep's epoch (the series had been
    // marked before it): the race the model is for does happen.
    static SAW_EPOCH: AtomicUsize = AtomicUsize::new(0);
    model(|| {
        let (store, clock, live) = setup("[defaults]\nttl = \"1s\"\n");
        let mut w = Writer::new(&store, live);
        w.line(b"e:1|c");
        clock.advance(Duration::from_secs(2));
        w.begin_batch(); // the batch the late increment belongs to, begun before the sweep
        let t = spawn(move || {
            w.line(b"e:1|c"); // through the cached offset
            w.begin_batch(); // sees the sweep's epoch (if any), clears the cache
            w.line(b"e:1|c"); // through the registry
            w
        });
        store.sweep();
        store.sweep();
        let mut w = t.join().unwrap();
        if w.stats.cache_misses == 2 {
            SAW_EPOCH.fetch_add(1, StdOrdering::Relaxed);
        }
        // Let the protocol finish: the worker's next batch sees the epoch (whatever it read
        // before), then a sweep settles every retiring series.
        w.begin_batch();
        store.sweep();
        assert_eq!(
            scrape(&store).one("e_total"),
            Some(Val::Counter(3.0)),
            "an increment was lost or duplicated"
        );
        drop(w);
    });
    assert!(SAW_EPOCH.load(StdOrdering::Relaxed) > 0);
}

/// The reclaim half of expiry: an idle series is reclaimed only after the worker has seen
/// the sweep's epoch, and its slot, reused by a new series, is zero: the new series holds
/// exactly its own increments, none of the old series' value. Two threads, exhaustive.
#[test]
fn expiry_reclaims_only_forgotten_slots() {
    static RECLAIMED: AtomicUsize = AtomicUsize::new(0);
    model(|| {
        let (store, clock, live) = setup("[defaults]\nttl = \"1s\"\n");
        let mut w = Writer::new(&store, live.clone());
        let mut w2 = Writer::new(&store, live);
        w.line(b"old:7|c");
        clock.advance(Duration::from_secs(2));
        let t = spawn(move || {
            w.begin_batch(); // the worker's next batch: it forgets `old`
            w
        });
        store.sweep();
        w2.begin_batch(); // the other worker has seen the epoch too
        store.sweep();
        let reclaimed = store.expired_total() == 1;
        if reclaimed {
            RECLAIMED.fetch_add(1, StdOrdering::Relaxed);
        }
        w2.line(b"new:5|c"); // reuses `old`'s words if they were reclaimed
        let _w = t.join().unwrap();
        let s = scrape(&store);
        assert_eq!(s.one("new_total"), Some(Val::Counter(5.0)));
        assert_eq!(s.one("old_total"), None, "an idle series is still exported");
        assert_eq!(store.series_count(), if reclaimed { 1 } else { 2 });
    });
    assert!(
        RECLAIMED.load(StdOrdering::Relaxed) > 0,
        "no execution reclaimed"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A config reload while workers read the config.
// ---------------------------------------------------------------------------------------------

const OLD_CONFIG: &str = "[defaults]\nttl = \"10s\"\nhistogram_buckets = [1.0]\n";
const NEW_CONFIG: &str = "[defaults]\nttl = \"20s\"\nhistogram_buckets = [1.0, 2.0]\n\
    [[mapping]]\nmatch = \"x\"\nname = \"y\"\n";

/// The whole of either config, never a mix.
fn assert_whole(s: &Snapshot) {
    let d = &s.config.defaults;
    let old = d.ttl == Duration::from_secs(10) && d.histogram_buckets == [1.0];
    let new = d.ttl == Duration::from_secs(20)
        && d.histogram_buckets == [1.0, 2.0]
        && s.config.mapping.len() == 1;
    assert!(old || new, "a mixed config: {d:?}");
}

/// A reload publishes a new config (`Live::publish`, i.e. `Cell::store`) while a worker starts
/// a batch (`Live::is_current` / `Live::load` in `Writer::begin_batch`) and resolves a name
/// through the mapping, and another reader loads the config directly. Every reader sees one
/// whole config; the worker's sample is mapped by exactly one of them; and the worker's next
/// batch uses the new config, not a cached resolution from the old one. Three threads,
/// exhaustive.
#[test]
fn config_reload_is_seen_whole() {
    model(|| {
        let (store, _clock, live) = setup(OLD_CONFIG);
        let new = parse(NEW_CONFIG);
        let mut w = Writer::new(&store, live.clone());
        w.line(b"x:1|c"); // caches `x` -> x_total under the old config
        let worker = spawn(move || {
            w.begin_batch();
            assert_whole(w.snapshot());
            w.line(b"x:1|c");
            w
        });
        let l = live.clone();
        let reader = spawn(move || assert_whole(&l.load()));
        live.publish(new);
        let mut w = worker.join().unwrap();
        reader.join().unwrap();
        w.begin_batch();
        assert!(
            live.is_current(w.snapshot()),
            "the worker kept the old config"
        );
        w.line(b"x:1|c");
        let s = scrape(&store);
        let (x, y) = (s.one("x_total"), s.one("y_total"));
        assert!(
            (x == Some(Val::Counter(2.0)) && y == Some(Val::Counter(1.0)))
                || (x == Some(Val::Counter(1.0)) && y == Some(Val::Counter(2.0))),
            "x_total {x:?}, y_total {y:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Readiness.
// ---------------------------------------------------------------------------------------------

/// State published with no lock of its own; loom checks every access to it for a data race.
struct Unlocked(UnsafeCell<u16>);

// SAFETY: a loom `UnsafeCell`: loom reports any access not ordered by happens-before, which is
// exactly what the model checks.
unsafe impl Sync for Unlocked {}

/// The daemon publishes the config and binds its listeners, then marks ready; a probe
/// (`/-/ready`, systemd) that sees ready must see all of it. The listener list goes through
/// `Readiness`'s own mutex and the config through `Live`; `bound` stands for any other state
/// the daemon published before `set_ready` with no lock of its own (a loom `UnsafeCell`, so
/// loom reports a read of it that does not happen after the write). The probe reads it first,
/// before taking any lock, so only the flag's Release store / Acquire load orders it (with
/// either Relaxed, loom reports the read). Two threads, exhaustive.
#[test]
fn ready_implies_published() {
    model(|| {
        let (_store, _clock, live) = setup(OLD_CONFIG);
        let ready = loom::sync::Arc::new(Readiness::new());
        let bound = loom::sync::Arc::new(Unlocked(UnsafeCell::new(0)));
        let (r, l, b) = (ready.clone(), live.clone(), bound.clone());
        let new = parse(NEW_CONFIG);
        let daemon = spawn(move || {
            l.publish(new);
            // SAFETY (test): the only write, before the Release store of the flag.
            b.0.with_mut(|p| unsafe { *p = 8125 });
            r.set_ready(vec!["udp 127.0.0.1:8125".into()]);
        });
        if ready.is_ready() {
            // SAFETY (test): read after the Acquire load that saw the flag.
            assert_eq!(bound.0.with(|p| unsafe { *p }), 8125);
            assert_eq!(
                live.load().config.mapping.len(),
                1,
                "ready before the config"
            );
            assert_eq!(ready.listeners(), ["udp 127.0.0.1:8125"]);
        }
        daemon.join().unwrap();
        assert!(ready.is_ready());
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Broken variants: the models catch the bugs they are for.
// ---------------------------------------------------------------------------------------------

/// `Shard::read_consistent` with the one ordering it depends on weakened: the first load of
/// the sequence is Relaxed instead of Acquire. Everything else is the real reader.
fn read_consistent_relaxed(shard: &Shard, seq: u32, out: &mut [u64]) {
    let seq_word = shard.peek(seq).expect("allocated");
    loop {
        let s1 = seq_word.load(Ordering::Relaxed); // BUG: must be Acquire
        if s1 & 1 == 1 {
            thread::yield_now();
            continue;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = shard.load(seq + 1 + i as u32);
        }
        fence(Ordering::Acquire);
        if seq_word.load(Ordering::Relaxed) == s1 {
            return;
        }
    }
}

/// `scrape_sees_whole_histogram` on a bare shard (the real writer side: `write_begin`,
/// `add_f64`, `write_end`, as `apply` does for a histogram), read by the broken reader above:
/// loom finds an execution where the reader returns the new count with the old sum/bucket.
#[test]
#[should_panic(expected = "torn")]
fn broken_seqlock_reader_tears_histogram() {
    model(|| {
        // [seq, count, sum, bucket]
        let shard = loom::sync::Arc::new(Shard::new(0));
        shard.word(0);
        let s = shard.clone();
        let t = spawn(move || {
            let seq = s.write_begin(0);
            s.add_f64(1, 1.0);
            s.add_f64(2, 5.0);
            s.add_f64(3, 1.0);
            s.write_end(0, seq);
        });
        let mut w = [0u64; 3];
        read_consistent_relaxed(&shard, 0, &mut w);
        let [count, sum, bucket] = w.map(f64::from_bits);
        assert!(
            (count, sum, bucket) == (0.0, 0.0, 0.0) || (count, sum, bucket) == (1.0, 5.0, 1.0),
            "torn: count {count}, sum {sum}, bucket {bucket}"
        );
        t.join().unwrap();
    });
}

/// The same model with the real reader passes: the control for the broken variant.
#[test]
fn seqlock_reader_keeps_histogram_whole() {
    model(|| {
        let shard = loom::sync::Arc::new(Shard::new(0));
        shard.word(0);
        let s = shard.clone();
        let t = spawn(move || {
            let seq = s.write_begin(0);
            s.add_f64(1, 1.0);
            s.add_f64(2, 5.0);
            s.add_f64(3, 1.0);
            s.write_end(0, seq);
        });
        let mut w = [0u64; 3];
        assert!(shard.read_consistent(0, &mut w));
        let [count, sum, bucket] = w.map(f64::from_bits);
        assert!(
            (count, sum, bucket) == (0.0, 0.0, 0.0) || (count, sum, bucket) == (1.0, 5.0, 1.0),
            "torn: count {count}, sum {sum}, bucket {bucket}"
        );
        t.join().unwrap();
    });
}

/// `tallyd::sync::OnceBox` with its reader's Acquire load weakened to Relaxed (a copy: the
/// real one is crate-private).
struct RelaxedOnceBox<T> {
    ptr: AtomicPtr<T>,
}

impl<T> RelaxedOnceBox<T> {
    fn get(&self) -> Option<&T> {
        // BUG: must be Acquire.
        let p = self.ptr.load(Ordering::Relaxed);
        // SAFETY (test): published from Box::into_raw, freed only in the model's Drop.
        unsafe { p.as_ref() }
    }

    fn get_or_init(&self, init: impl FnOnce() -> Box<T>) -> &T {
        if let Some(v) = self.get() {
            return v;
        }
        let new = Box::into_raw(init());
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY (test): as in OnceBox.
            Ok(_) => unsafe { &*new },
            Err(existing) => {
                // SAFETY (test): never shared.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY (test): published by the winner.
                unsafe { &*existing }
            }
        }
    }
}

impl<T> Drop for RelaxedOnceBox<T> {
    fn drop(&mut self) {
        let p = self.ptr.with_mut(|p| *p);
        if !p.is_null() {
            // SAFETY (test): published from Box::into_raw; `&mut self`, no reader left.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The segment publication of `new_series_is_published_whole` with the broken box: a writer
/// allocates a segment (atomics created and written) and publishes it while a scrape peeks
/// it. Loom reports the scrape reading words whose creation does not happen before its read
/// ("Causality violation"). The writer is the model's first thread so that loom's first
/// schedule publishes before the scrape looks (see `load_own` in `tallyd::sync` on loom's
/// handling of a load followed by a store).
#[test]
#[should_panic(expected = "Causality violation")]
fn broken_once_box_publishes_uninitialised_segment() {
    model(|| {
        let seg = loom::sync::Arc::new(RelaxedOnceBox::<[AtomicU64; 2]> {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        });
        let s = seg.clone();
        let scrape = spawn(move || {
            if let Some(words) = s.get() {
                assert!(words[0].load(Ordering::Relaxed) <= 1);
            }
        });
        let words = seg.get_or_init(|| Box::new([AtomicU64::new(0), AtomicU64::new(0)]));
        words[0].store(1, Ordering::Relaxed);
        scrape.join().unwrap();
    });
}
