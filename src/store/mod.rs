//! The aggregate store: a series registry and one cache-padded shard per ingest worker.
//!
//! # Memory layout
//! A series is a family name, a rendered label set and a word range `offset..offset+len`
//! that is the same in every shard ([`arena::Shard`]). Each ingest worker owns one
//! [`Writer`], and the writer owns one shard: the only thread that ever stores into that
//! shard's words. Counters take 2 words per worker (value, last-seen stamp), gauges 4,
//! histograms 4 + buckets, sets 4 + 2 x 128 (two HyperLogLog halves). Words of different
//! shards live in different 128-byte aligned segments, so no two workers write one cache line,
//! and there is no per-series padding (a counter costs 16 bytes per worker, not 128).
//!
//! # Finding a line's series
//! Each writer also keeps its own cache (`cache`: 4-byte slots, keys in one arena) from raw
//! keys to resolved series, filled on a miss from the registry (mutex) and emptied whole on a
//! config swap or store epoch. A line seen before is found by its bytes minus the value (its
//! *line key*), so only the value is parsed ([`Writer::line`]); the full parser runs on a miss
//! and for lines whose outcome depends on more than the value. Nothing in the cache is shared:
//! the hot path reads only the writer's own memory and writes only its own shard.
//!
//! # Why no increment is lost, torn or double-counted
//! Each claim names the model in `tests/loom.rs` that checks it against this code, built on
//! loom's atomics and locks through [`crate::sync`]. Every model explores all interleavings.
//!
//! - *Lost*: a word has one writer, so an increment is a load of its own word
//!   (`sync::load_own`) and a Relaxed store, with no read-modify-write race; nothing
//!   else stores into the word while the series is live (reclamation zeroes words only after
//!   every writer has let go of the slot; see *Expiry*). Under loom `load_own` is an
//!   `unsync_load`, so every model also fails if any other thread's store could race a
//!   writer's load. Two workers add while a scrape sums and the final sum is exact:
//!   `scrape_sums_counter_shards`.
//! - *Torn*: every value is one 64-bit atomic word (f64 bits), read whole by the scrape with
//!   a Relaxed load. Multi-word values (gauge set time + value, histogram count/sum/buckets,
//!   sets) are guarded by a single-writer seqlock per series per shard: the writer bumps the
//!   sequence to odd and issues a Release fence before writing, and stores the even sequence
//!   with Release after; the reader loads the sequence with Acquire, reads, issues an Acquire
//!   fence and retries if the sequence moved. The scrape never sees count != the sum of the
//!   buckets, or a sum from another state (`scrape_sees_whole_histogram`), nor a gauge's new
//!   set time with its old value (`scrape_sees_whole_gauge`). The reader's Acquire load is
//!   needed: with it Relaxed, loom finds the torn read (`broken_seqlock_reader_tears_histogram`).
//! - *Double-counted*: a scrape sums each shard's words once; shards are never merged or
//!   moved, so a value is in exactly one shard: the scrape sees each worker's add before or
//!   after, nothing else (`scrape_sums_counter_shards`).
//! - *Publication*: a series is created under the registry mutex and its offset reaches
//!   workers and the scrape only through that mutex (happens-before). A segment is published
//!   by `crate::sync::OnceBox` (Acquire load, AcqRel compare-exchange), so no reader sees
//!   uninitialised words. Two workers race to create one series in fresh segments while a
//!   scrape walks the registry: nobody reads a word whose creation it has not synchronised
//!   with, the series is exported once, with both increments
//!   (`new_series_is_published_whole`); with a Relaxed load in the box, loom reports the
//!   read (`broken_once_box_publishes_uninitialised_segment`).
//!
//! # Gauges across workers
//! A gauge set records the batch time in its shard; a scrape takes the newest set across the
//! shards and adds the deltas of shards that never saw a set. One sender's datagrams always
//! reach the same SO_REUSEPORT socket, hence the same worker, so one sender's sets and deltas
//! apply exactly in order (`g:333|g`, `g:-10|g`, `g:+4|g` ends at 327).
//!
//! # Expiry
//! A sweep, off the hot path ([`Store::sweep`]), holds the registry lock throughout and works
//! in two phases.
//!
//! 1. *Mark*: a live series whose newest last-seen stamp is `ttl` old becomes *retiring*: no
//!    longer exported, but still in the index. The sweep records a fingerprint of all its
//!    words in every shard (`Store::fingerprint`, taken on the same reads that decide it is
//!    idle) and bumps the store epoch (only sweeps store it, under the lock; its
//!    Release/Acquire is not what the argument below rests on, and the models pass without it).
//! 2. *Reclaim*, in a later sweep: a retiring series whose epoch every writer has seen (each
//!    shard's `seen_epoch`, loaded with Acquire) is fingerprinted again. If any word changed,
//!    it is *resurrected*, live again with the late increments in it; otherwise its words are
//!    zeroed, its slot freed and it leaves the index.
//!
//! Each writer, at the start of a batch, loads the epoch; on a new one it clears its cache of
//! resolved offsets and then stores the epoch it has seen in its shard's `seen_epoch`
//! (Release). So every write through an offset cached before the mark happens before that
//! store, hence before the reclaiming sweep's second fingerprint, which sees it: a late
//! increment is counted in the series, never silently lost. A lookup of a retiring series
//! (from a writer whose cache was cleared) finds it in the index and brings it back, so a
//! series never gets a second slot and is never exported twice. A worker incrementing an idle
//! series through its cache while sweeps mark and reclaim it, then again through the registry,
//! ends with every increment in the one exported series (`expiry_races_late_increment`;
//! with `seen_epoch` stored or loaded Relaxed, loom finds the reclaim zeroing words that the
//! late increment is still writing). Reclaimed words
//! are zeroed after every writer has let go and reach a new series' writer through the
//! registry mutex, so a reused slot starts at zero (`expiry_reclaims_only_forgotten_slots`).
//!
//! The fingerprint, not the stamps, decides: a late increment carries the stamp of its batch,
//! which began before the sweep, so it may be no newer than the mark. An earlier version
//! compared stamps with the mark time, and `expiry_races_late_increment` found it reclaiming
//! the series with the late increments in it.

pub mod arena;
mod cache;
mod catalog;
pub mod names;
pub mod sketch;

use std::collections::HashMap;

use std::time::Duration;

use arena::Shard;
use cache::{Cache, Entry, Hit, LINE_KEY, Target};
use catalog::{Catalog, Family, FamilyClaim, Placement, SeriesMeta, State};
use names::{TagError, TagErrors};

use crate::config::live::{Live, Snapshot};
use crate::config::mapping::Mapped;
use crate::parse::{self, LineInfo, LineSpan, MetricType, ParseError, Parsed, Sample, Special};
// Immutable shared data (names, bounds, the store handle) uses std's `Arc`; what the loom
// models must track (shards, the config snapshot) goes through the `crate::sync` facade.
use std::sync::Arc;

use crate::sync::{self, AtomicU64, Mutex, Ordering, load_own, lock};

/// HyperLogLog precision of sets: 2^10 registers, standard error 1.04/sqrt(1024) = 3.25%.
const HLL_P: u32 = 10;
const HLL_WORDS: u32 = (1 << HLL_P) / 8;

/// A source of monotonic time, injected so tests can step it.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The word layout of a series in each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[value, stamp]`.
    Counter,
    /// `[seq, set_time, value, stamp]`.
    Gauge,
    /// `[seq, count, sum, bucket * n, stamp]`.
    Histogram(u8),
    /// `[seq, half_a_index, half_b_index, stamp, registers_a, registers_b]`.
    Set,
    /// `[seq, stamp, count, sum, ...]`: see [`sketch`]. Carries its half-window in ms.
    Summary(u32),
}

impl Layout {
    /// Words per shard.
    pub fn words(self) -> u32 {
        match self {
            Self::Counter => 2,
            Self::Gauge => 4,
            Self::Histogram(n) => 4 + u32::from(n),
            Self::Set => 4 + 2 * HLL_WORDS,
            Self::Summary(_) => sketch::WORDS,
        }
    }

    /// Offset of the last-seen stamp within the series.
    fn stamp(self) -> u32 {
        match self {
            Self::Counter => 1,
            Self::Gauge | Self::Set => 3,
            Self::Summary(_) => 1,
            Self::Histogram(n) => 3 + u32::from(n),
        }
    }
}

/// The Prometheus type a family was claimed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// `counter`, name ends in `_total`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// A set's distinct-member estimate, exported as a `gauge`.
    Set,
    /// `summary`: quantiles from a sketch (opt-in per mapping rule).
    Summary,
}

/// Why a sample was not aggregated after it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The name is empty once tags are split off (counted as a parse error).
    EmptyName,
    /// The family was claimed by another type, or the histogram suffixes collide.
    Conflict,
    /// The name is one of tallyd's own metric names.
    ReservedName,
    /// A mapping rule with `action = "drop"` matched.
    MappingDrop,
    /// A mapping produced an empty name.
    InvalidMappedName,
    /// `[limits] max_series` reached.
    MaxSeries,
    /// `[limits] max_series_per_metric` reached.
    MaxSeriesPerMetric,
}

impl Refusal {
    /// Reasons counted in `tallyd_samples_dropped_total`, by index.
    pub const DROPPED: [Refusal; 4] = [
        Self::Conflict,
        Self::ReservedName,
        Self::MappingDrop,
        Self::InvalidMappedName,
    ];
    /// Reasons counted in `tallyd_series_refused_total`, by index.
    pub const REFUSED: [Refusal; 2] = [Self::MaxSeries, Self::MaxSeriesPerMetric];

    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::EmptyName => "empty_name",
            Self::Conflict => "conflict",
            Self::ReservedName => "reserved_name",
            Self::MappingDrop => "mapping_drop",
            Self::InvalidMappedName => "invalid_mapped_name",
            Self::MaxSeries => "max_series",
            Self::MaxSeriesPerMetric => "max_series_per_metric",
        }
    }
}

/// Per-writer counters, plain integers on the hot path; the ingest loop flushes them into
/// tallyd's self-metrics after every batch (one atomic add per non-zero counter).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Lines seen (including bad ones).
    pub lines: u64,
    /// By [`ParseError::index`].
    pub parse_errors: [u64; 12],
    /// By [`TagError`] index.
    pub tag_errors: [u64; 6],
    /// Aggregated samples by [`MetricType`] (counter, gauge, timer, histogram, distribution, set).
    pub samples: [u64; 6],
    /// By index of [`Refusal::DROPPED`].
    pub dropped: [u64; 4],
    /// By index of [`Refusal::REFUSED`].
    pub refused: [u64; 2],
    /// Samples no mapping rule matched (counted when the series is resolved).
    pub unmapped: u64,
    /// Series lookups answered by the writer's cache.
    pub cache_hits: u64,
    /// Series lookups that went to the registry.
    pub cache_misses: u64,
    /// DogStatsD events.
    pub events: u64,
    /// DogStatsD service checks.
    pub service_checks: u64,
    /// Fields after the type that tallyd does not know (ignored).
    pub unknown_fields: u64,
    /// Drops by mapping rule index.
    pub rule_drops: HashMap<usize, u64>,
}

impl Stats {
    fn sample_kind_index(t: MetricType) -> usize {
        t as usize
    }
}

/// A retiring series' mark: the store epoch it was marked at, and what its words hashed to
/// then ([`Store::fingerprint`]). Kept beside the series, not in it: few series retire at a
/// time, and every series pays for its own fields.
#[derive(Debug, Clone, Copy)]
struct Mark {
    id: u32,
    epoch: u64,
    print: u64,
}

/// What a writer needs to create a series.
struct NewSeries<'a> {
    family: &'a str,
    kind: FamilyKind,
    labels: &'a str,
    layout: Layout,
    ttl: Duration,
    help: Option<Arc<str>>,
    buckets: Option<Arc<[f64]>>,
    window: Duration,
    limits: &'a crate::config::Limits,
}

struct Registry {
    cat: Catalog,
    free_words: HashMap<u32, Vec<u32>>,
    next_word: u32,
    /// Live + retiring series (the ones counted against limits).
    count: usize,
    retiring: Vec<Mark>,
    last_limit_log: Option<std::time::Instant>,
}

/// The store: registry, shards, epoch and clock.
pub struct Store {
    registry: Mutex<Registry>,
    shards: Mutex<Vec<sync::Arc<Shard>>>,
    epoch: AtomicU64,
    hasher: ahash::RandomState,
    clock: std::sync::Arc<dyn Clock>,
    reserved: Vec<String>,
    /// Series count, readable without the registry lock (for `tallyd_series`).
    series_gauge: AtomicU64,
    expired: AtomicU64,
}

/// Values of one series as a scrape sees them.
#[derive(Debug, Clone, PartialEq)]
pub enum Values<'a> {
    /// A counter's total.
    Counter(f64),
    /// A gauge's value (also a set's estimate).
    Gauge(f64),
    /// A histogram: per-bucket (not cumulative) weights for the finite bounds, total weight, sum.
    Histogram {
        /// Finite upper bounds.
        bounds: &'a [f64],
        /// Weight per finite bucket (not cumulative).
        buckets: &'a [f64],
        /// Total weight (the `+Inf` bucket and `_count`).
        count: f64,
        /// Sum of weighted values.
        sum: f64,
    },
    /// A summary: quantile values over its window, cumulative count and sum.
    Summary {
        /// The quantiles asked for.
        quantiles: &'a [f64],
        /// Their values (NaN when the window holds no observation).
        values: &'a [f64],
        /// Total weight.
        count: f64,
        /// Sum of weighted values.
        sum: f64,
    },
}

/// Receives a scrape's families in name order.
pub trait Visitor {
    /// Starts a family.
    fn family(&mut self, name: &str, kind: FamilyKind, help: Option<&str>);
    /// Continues, at the start of a chunk of a walk ([`Store::visit_some`]), the family whose
    /// header an earlier chunk wrote: the series that follow are its, and no header is due.
    /// (Required, not defaulted: a visitor that ignored it would write the next series under
    /// no name, and a Prometheus scrape of that text fails whole.)
    fn resume(&mut self, name: &str, kind: FamilyKind);
    /// One series of the current family; `labels` is rendered `k="v",...` without braces.
    fn series(&mut self, labels: &str, values: Values<'_>);
}

impl Store {
    /// A store whose names must not collide with `reserved` (tallyd's own metric names;
    /// any name starting with `tallyd_` is reserved as well).
    pub fn new(clock: std::sync::Arc<dyn Clock>, reserved: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry {
                cat: Catalog::new(),
                free_words: HashMap::new(),
                next_word: 0,
                count: 0,
                retiring: Vec::new(),
                last_limit_log: None,
            }),
            shards: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            hasher: ahash::RandomState::new(),
            clock,
            reserved,
            series_gauge: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        })
    }

    /// A new writer with its own shard. One per ingest thread; never shared.
    pub fn writer(self: &Arc<Self>, live: sync::Arc<Live>) -> Writer {
        let shard = sync::Arc::new(Shard::new(self.epoch.load(Ordering::Acquire)));
        lock(&self.shards).push(shard.clone());
        let snap = live.load();
        let mut w = Writer {
            store: self.clone(),
            shard,
            live,
            snap,
            cache: Cache::new(),
            key: Vec::with_capacity(256),
            line_key: Vec::with_capacity(256),
            seps: parse::Separators::default(),
            ahead: Vec::with_capacity(AHEAD),
            has_line_key: false,
            pending: None,
            pending_key: Vec::with_capacity(256),
            line_samples: 0,
            line_kind: MetricType::Counter,
            line_rate: 1.0,
            epoch: u64::MAX,
            batch: Batch {
                stamp: 0,
                time_nanos: 1,
                set_half: 0,
            },
            stats: Stats::default(),
        };
        w.begin_batch();
        w
    }

    /// Live series (retiring ones included until reclaimed).
    pub fn series_count(&self) -> u64 {
        self.series_gauge.load(Ordering::Relaxed)
    }

    /// Series expired so far.
    pub fn expired_total(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// The clock's stamp: whole seconds since start, plus one (0 means "never").
    fn stamp_now(&self) -> u64 {
        self.clock.now().as_secs() + 1
    }

    fn is_reserved(&self, family: &str, kind: FamilyKind) -> bool {
        let hit = |n: &str| n.starts_with("tallyd_") || self.reserved.iter().any(|r| r == n);
        hit(family) || kind.suffixes().iter().any(|s| hit(&format!("{family}{s}")))
    }

    /// Finds or creates the series; returns its offset.
    fn find_or_create(&self, n: NewSeries<'_>) -> Result<u32, Refusal> {
        let mut key = String::with_capacity(n.family.len() + 1 + n.labels.len());
        key.push_str(n.family);
        key.push('\0');
        key.push_str(n.labels);
        let mut reg = lock(&self.registry);
        let reg = &mut *reg;
        let hash = reg.cat.key_hash(&key);
        if let Some(id) = reg.cat.find(hash, &key) {
            let meta = reg.cat.series_mut(id);
            if meta.layout != n.layout {
                return Err(Refusal::Conflict);
            }
            if meta.state() == State::Retiring {
                // A lookup of a retiring series brings it back; it was never unexported data.
                meta.set_state(State::Live);
                let pos = reg.retiring.iter().position(|r| r.id == id);
                if let Some(p) = pos {
                    reg.retiring.swap_remove(p);
                }
            }
            return Ok(meta.offset);
        }
        // A new series: check the family claim and the limits.
        let fid = reg.cat.family_id(n.family);
        match fid.map(|f| reg.cat.family(f)) {
            Some(f) if f.kind != n.kind => return Err(Refusal::Conflict),
            Some(f)
                if n.limits.max_series_per_metric > 0
                    && f.len() >= n.limits.max_series_per_metric =>
            {
                log_limit(&mut reg.last_limit_log, n.family, "max_series_per_metric");
                return Err(Refusal::MaxSeriesPerMetric);
            }
            Some(_) => {}
            None => {
                if self.is_reserved(n.family, n.kind) {
                    return Err(Refusal::ReservedName);
                }
                if collides(&reg.cat, n.family, n.kind) {
                    return Err(Refusal::Conflict);
                }
            }
        }
        if reg.count >= n.limits.max_series || !reg.cat.has_room(key.len()) {
            log_limit(&mut reg.last_limit_log, n.family, "max_series");
            return Err(Refusal::MaxSeries);
        }
        let len = n.layout.words();
        let offset = match reg.free_words.get_mut(&len).and_then(Vec::pop) {
            Some(o) => o,
            None => {
                let mut o = reg.next_word;
                if o % arena::SEG_WORDS + len > arena::SEG_WORDS {
                    o = (o / arena::SEG_WORDS + 1) * arena::SEG_WORDS;
                }
                if (o + len) as usize > arena::SEG_WORDS as usize * arena::MAX_SEGS {
                    return Err(Refusal::MaxSeries);
                }
                reg.next_word = o + len;
                o
            }
        };
        let family = fid.ok_or(FamilyClaim {
            kind: n.kind,
            help: n.help,
            buckets: n.buckets,
            window: n.window,
        });
        let at = Placement {
            offset,
            layout: n.layout,
            ttl: u32::try_from(n.ttl.as_secs()).unwrap_or(u32::MAX),
        };
        reg.cat.insert(hash, &key, family, at);
        reg.count += 1;
        self.series_gauge.store(reg.count as u64, Ordering::Relaxed);
        Ok(offset)
    }

    fn shards(&self) -> Vec<sync::Arc<Shard>> {
        lock(&self.shards).clone()
    }

    fn last_seen(shards: &[sync::Arc<Shard>], meta: &SeriesMeta) -> u64 {
        let at = meta.offset + meta.layout.stamp();
        shards.iter().map(|s| s.load(at)).max().unwrap_or(0)
    }

    /// Expires idle series (run it on a background tick; never on the write path). Returns
    /// how many series were reclaimed.
    pub fn sweep(&self) -> usize {
        let now = self.stamp_now();
        let shards = self.shards();
        let min_seen = shards
            .iter()
            .map(|s| s.seen_epoch.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        let mut reg = lock(&self.registry);
        let reg = &mut *reg;
        // Phase 2: reclaim series every writer has forgotten, unless touched since marked.
        let mut reclaimed = 0;
        let mut i = 0;
        while i < reg.retiring.len() {
            let Mark { id, epoch, print } = reg.retiring[i];
            let meta = reg.cat.series(id);
            if meta.state() != State::Retiring {
                reg.retiring.swap_remove(i);
                continue;
            }
            if min_seen < epoch {
                i += 1;
                continue;
            }
            reg.retiring.swap_remove(i);
            if self.fingerprint(&shards, meta).1 != print {
                // Written since it was marked (a late increment through a writer's cached
                // offset; every such write happens before this read, by `seen_epoch`): it
                // lives on, with the increment.
                reg.cat.series_mut(id).set_state(State::Live);
                continue;
            }
            self.reclaim(reg, &shards, id);
            reclaimed += 1;
        }
        reg.cat.settle();
        // Phase 1: mark idle series, fingerprinting their words so that phase 2 can tell
        // whether anything wrote to them after the mark, whatever that write's batch time.
        // Only sweeps store the epoch, under the registry lock we hold.
        let next_epoch = load_own(&self.epoch) + 1;
        let mut marked = false;
        for id in 0..reg.cat.slots() {
            let meta = reg.cat.series_mut(id);
            let ttl = u64::from(meta.ttl);
            if ttl == 0 || meta.state() != State::Live {
                continue;
            }
            if now.saturating_sub(Self::last_seen(&shards, meta)) < ttl {
                continue;
            }
            // Decide on the words fingerprinted: a write this read missed changes them.
            let (seen, print) = self.fingerprint(&shards, meta);
            if now.saturating_sub(seen) < ttl {
                continue;
            }
            meta.set_state(State::Retiring);
            reg.retiring.push(Mark {
                id,
                epoch: next_epoch,
                print,
            });
            marked = true;
        }
        if marked {
            self.epoch.store(next_epoch, Ordering::Release);
        }
        reclaimed
    }

    /// The newest last-seen stamp of a series across the shards, and a hash of all its
    /// non-zero words with their places (so a shard added since, all zero, changes nothing).
    /// A sweep fingerprints a series when it marks it idle and again once every writer has let
    /// go of it: any write in between (a collision aside, 2^-64) changes the hash. A write that
    /// changes no word loses nothing.
    fn fingerprint(&self, shards: &[sync::Arc<Shard>], meta: &SeriesMeta) -> (u64, u64) {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        let mut seen = 0;
        for (i, s) in shards.iter().enumerate() {
            for w in 0..meta.layout.words() {
                let v = s.load(meta.offset + w);
                if w == meta.layout.stamp() {
                    seen = seen.max(v);
                }
                if v != 0 {
                    h.write_usize(i);
                    h.write_u32(w);
                    h.write_u64(v);
                }
            }
        }
        (seen, h.finish())
    }

    fn reclaim(&self, reg: &mut Registry, shards: &[sync::Arc<Shard>], id: u32) {
        let meta = reg.cat.series(id);
        for s in shards {
            s.zero(meta.offset, meta.layout.words());
        }
        reg.free_words
            .entry(meta.layout.words())
            .or_default()
            .push(meta.offset);
        // Lookups find it no more; a writer that still wants it creates a new series. The
        // sweep settles the catalog before it lets go of the lock.
        reg.cat.remove(id);
        reg.count -= 1;
        self.series_gauge.store(reg.count as u64, Ordering::Relaxed);
        self.expired.fetch_add(1, Ordering::Relaxed);
    }

    /// Walks every live series in family-name order. `set_window` is the sets' window.
    pub fn visit(&self, set_window: Duration, v: &mut impl Visitor) {
        let mut cursor = Cursor::default();
        while !self.visit_some(set_window, &mut cursor, usize::MAX, v) {}
    }

    /// Walks at most `budget` series from `cursor`, holding the registry lock only for those,
    /// so a scrape of a million series never blocks series creation for long and can stream
    /// its output. Returns true when the walk is complete.
    ///
    /// Between calls series may come and go: a series appended during the walk is rendered if
    /// the walk has not passed it; a removal moves the family's last series into the gap
    /// (`swap_remove`), so a series can be missed by one scrape but never rendered twice.
    pub fn visit_some(
        &self,
        set_window: Duration,
        cursor: &mut Cursor,
        budget: usize,
        v: &mut impl Visitor,
    ) -> bool {
        let shards = self.shards();
        let now = self.clock.now();
        let half = half_window_index(now, set_window);
        let mut reg = lock(&self.registry);
        if cursor.family.is_none() {
            // A walk sees every family created before it began.
            reg.cat.settle();
        }
        let cat = &reg.cat;
        let mut words = Vec::new();
        let mut buckets = Vec::new();
        let mut left = budget;
        for &fid in cat.ordered_from(cursor.family.as_ref().map(|(n, _)| &**n)) {
            let (name, fam) = (cat.name(fid), cat.family(fid));
            let resuming = cursor.family.as_ref().is_some_and(|(n, _)| **n == *name);
            // The last chunk may have ended before this family's header (at its first series).
            let open = resuming && cursor.open;
            if open && cursor.family.as_ref().is_some_and(|(_, k)| *k != fam.kind) {
                // The family was re-created with another type since its header went out.
                continue;
            }
            let mut header = open;
            let mut announced = false;
            let from = if resuming { cursor.next } else { 0 };
            for i in from..fam.len() {
                let Some(id) = fam.member(i) else { break };
                let meta = cat.series(id);
                if meta.state() != State::Live {
                    continue;
                }
                if left == 0 {
                    cursor.family = Some((Box::from(name), fam.kind));
                    cursor.next = i;
                    cursor.open = header;
                    return false;
                }
                if !announced {
                    if header {
                        v.resume(name, fam.kind);
                    } else {
                        v.family(name, fam.kind, fam.help());
                        header = true;
                    }
                    announced = true;
                }
                let values = read_series(&shards, meta, fam, now, half, &mut words, &mut buckets);
                v.series(cat.labels(id), values);
                left -= 1;
            }
        }
        cursor.family = None;
        true
    }
}

/// Where a chunked walk ([`Store::visit_some`]) resumes.
#[derive(Debug, Default)]
pub struct Cursor {
    family: Option<(Box<str>, FamilyKind)>,
    next: usize,
    /// Whether the family's header went out (a chunk can end before its first series).
    open: bool,
}

/// True if creating family `name` of `kind` would collide with histogram suffixes: a new
/// histogram whose `_bucket`/`_sum`/`_count` names exist already, or a new family of any kind
/// (histograms included: `x_sum` as a histogram after the histogram `x`) whose name is one of
/// an existing histogram's suffixed names. Either would make the text parser attach one
/// family's samples or `# TYPE` line to the other, and the whole scrape would fail.
fn collides(cat: &Catalog, name: &str, kind: FamilyKind) -> bool {
    if kind
        .suffixes()
        .iter()
        .any(|s| cat.family_id(&format!("{name}{s}")).is_some())
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        name.strip_suffix(s)
            .and_then(|stem| cat.family_id(stem))
            .is_some_and(|f| cat.family(f).kind.suffixes().contains(s))
    })
}

impl FamilyKind {
    /// The sample-name suffixes a family of this kind writes besides its own name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Self::Histogram => &["_bucket", "_sum", "_count"],
            Self::Summary => &["_sum", "_count"],
            _ => &[],
        }
    }
}

fn log_limit(last: &mut Option<std::time::Instant>, family: &str, limit: &str) {
    let now = std::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
        *last = Some(now);
        tracing::warn!(
            metric = family,
            limit,
            "series limit reached; new series are refused (logged at most every 10s)"
        );
    }
}

fn half_window_index(now: Duration, window: Duration) -> u64 {
    let half = (window / 2).as_nanos().max(1);
    (now.as_nanos() / half) as u64 + 1
}

fn read_series<'a>(
    shards: &[sync::Arc<Shard>],
    meta: &SeriesMeta,
    fam: &'a Family,
    now: Duration,
    half: u64,
    words: &mut Vec<u64>,
    buckets: &'a mut Vec<f64>,
) -> Values<'a> {
    let o = meta.offset;
    match meta.layout {
        Layout::Counter => Values::Counter(shards.iter().map(|s| f64::from_bits(s.load(o))).sum()),
        Layout::Gauge => {
            let mut newest: Option<(u64, f64)> = None;
            let mut deltas = 0.0;
            words.resize(2, 0);
            for s in shards {
                s.read_consistent(o, words);
                let (set_time, value) = (words[0], f64::from_bits(words[1]));
                if set_time == 0 {
                    deltas += value;
                } else if newest.is_none_or(|(t, _)| set_time > t) {
                    newest = Some((set_time, value));
                }
            }
            Values::Gauge(newest.map_or(0.0, |(_, v)| v) + deltas)
        }
        Layout::Histogram(n) => {
            let n = n as usize;
            words.resize(2 + n, 0);
            buckets.clear();
            buckets.resize(n, 0.0);
            let (mut count, mut sum) = (0.0, 0.0);
            for s in shards {
                s.read_consistent(o, words);
                count += f64::from_bits(words[0]);
                sum += f64::from_bits(words[1]);
                for (b, w) in buckets.iter_mut().zip(&words[2..]) {
                    *b += f64::from_bits(*w);
                }
            }
            Values::Histogram {
                bounds: fam.buckets(),
                buckets,
                count,
                sum,
            }
        }
        Layout::Summary(_) => {
            let quantiles = fam.buckets();
            let m = sketch::merge(
                shards,
                o,
                half_window_index(now, fam.window()),
                quantiles,
                words,
            );
            buckets.clear();
            buckets.extend(m.quantiles);
            Values::Summary {
                quantiles,
                values: buckets,
                count: m.count,
                sum: m.sum,
            }
        }
        Layout::Set => {
            let mut regs = [0u8; 1 << HLL_P];
            words.resize(3 + 2 * HLL_WORDS as usize, 0);
            for s in shards {
                s.read_consistent(o, words);
                for h in 0..2 {
                    let idx = words[h];
                    if idx == 0 || (idx != half && idx + 1 != half) {
                        continue;
                    }
                    let start = 3 + h * HLL_WORDS as usize;
                    for (w, word) in words[start..start + HLL_WORDS as usize].iter().enumerate() {
                        for (b, byte) in word.to_le_bytes().iter().enumerate() {
                            let r = &mut regs[w * 8 + b];
                            *r = (*r).max(*byte);
                        }
                    }
                }
            }
            Values::Gauge(hll_estimate(&regs))
        }
    }
}

/// The HyperLogLog estimate with linear counting for small cardinalities, rounded.
fn hll_estimate(regs: &[u8]) -> f64 {
    let m = regs.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let zeros = regs.iter().filter(|&&r| r == 0).count() as f64;
    let e = alpha * m * m / sum;
    let e = if e <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        e
    };
    e.round()
}

/// What a writer reads from the clock once per batch.
#[derive(Debug, Clone, Copy)]
struct Batch {
    /// Last-seen stamp (seconds since start, plus one).
    stamp: u64,
    /// Gauge set time (nanoseconds since start, plus one).
    time_nanos: u64,
    /// The sets' current half-window index.
    set_half: u64,
}

/// A worker's handle: its shard, its cache of resolved raw keys, its counters.
///
/// Not `Clone` and not shared: exactly one thread writes through a writer, which is what makes
/// the shard single-writer.
pub struct Writer {
    store: Arc<Store>,
    shard: sync::Arc<Shard>,
    live: sync::Arc<Live>,
    snap: sync::Arc<Snapshot>,
    cache: Cache,
    /// The last sample key built.
    key: Vec<u8>,
    /// The current line's line key, if it has one ([`line_split`]).
    line_key: Vec<u8>,
    /// The separator index [`Writer::ingest`] reuses for every datagram.
    seps: parse::Separators,
    /// The lines [`Writer::ingest`] has split and hashed ahead of their lookups, with their
    /// hashes (kept, so a datagram of one line does not initialize room for [`AHEAD`]).
    ahead: Vec<(LineSpan, u64)>,
    has_line_key: bool,
    /// The entry of the current line's first sample, held back from the cache until the parse
    /// tells whether it is filed under the line key or its sample key (`pending_key`); `true`
    /// when the sample key is not cached yet.
    pending: Option<(Entry, bool)>,
    pending_key: Vec<u8>,
    /// Samples the parser handed out for the current line, and the last one's type and rate.
    line_samples: u32,
    line_kind: MetricType,
    line_rate: f64,
    epoch: u64,
    batch: Batch,
    /// Counters since the last flush.
    pub stats: Stats,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A gone writer holds no cached series: never block reclamation on it.
        self.shard.seen_epoch.store(u64::MAX, Ordering::Release);
    }
}

impl Stats {
    fn tag_errors(&mut self, t: TagErrors) {
        if !t.is_empty() {
            for (acc, n) in self.tag_errors.iter_mut().zip(t.0) {
                *acc += u64::from(n);
            }
        }
    }

    fn refusal(&mut self, reason: Refusal, rule: usize) {
        if reason == Refusal::EmptyName {
            self.parse_errors[ParseError::EmptyName.index()] += 1;
        } else if let Some(i) = Refusal::DROPPED.iter().position(|r| *r == reason) {
            self.dropped[i] += 1;
            if reason == Refusal::MappingDrop {
                *self.rule_drops.entry(rule).or_default() += 1;
            }
        } else if let Some(i) = Refusal::REFUSED.iter().position(|r| *r == reason) {
            self.refused[i] += 1;
        }
    }
}

/// What aggregating a sample reads of it: a [`Sample`] without its name and tags, small enough
/// to build per line on the line-key path.
#[derive(Debug, Clone, Copy)]
struct Obs<'a> {
    kind: MetricType,
    value: f64,
    rate: f64,
    delta: bool,
    member: &'a str,
}

impl<'a> From<&Sample<'a>> for Obs<'a> {
    fn from(s: &Sample<'a>) -> Self {
        Self {
            kind: s.kind,
            value: s.value,
            rate: s.rate,
            delta: s.delta,
            member: s.member,
        }
    }
}

/// Counts a resolved sample's outcome and, for a series, adds it to the shard.
#[inline]
fn settle(h: &Hit<'_>, shard: &Shard, batch: &Batch, stats: &mut Stats, s: Obs<'_>, counted: bool) {
    if let Some(t) = h.tag_errors {
        stats.tag_errors(*t);
    }
    match h.target {
        Target::Series { offset, layout } => {
            if counted {
                stats.samples[Stats::sample_kind_index(s.kind)] += 1;
            }
            apply(shard, batch, s, offset, layout, h.scale, h.buckets);
        }
        Target::Refused { reason, rule } => stats.refusal(reason, rule),
    }
}

/// Adds a sample to a shard: the hot path.
#[inline]
fn apply(
    shard: &Shard,
    batch: &Batch,
    s: Obs<'_>,
    o: u32,
    layout: Layout,
    scale: f64,
    bounds: Option<&[f64]>,
) {
    match layout {
        Layout::Counter => {
            // Exact either way (x * 1 / 1 == x); the common case skips the division's latency.
            let v = if scale == 1.0 && s.rate == 1.0 {
                s.value
            } else {
                s.value * scale / s.rate
            };
            // The stamp (the counter's second word) goes with the add.
            shard.add_counter(o, v, batch.stamp);
            return;
        }
        Layout::Gauge => {
            let seq = shard.write_begin(o);
            if s.delta {
                shard.add_f64(o + 2, s.value * scale);
            } else {
                shard.word(o + 1).store(batch.time_nanos, Ordering::Relaxed);
                shard
                    .word(o + 2)
                    .store((s.value * scale).to_bits(), Ordering::Relaxed);
            }
            shard.write_end(o, seq);
        }
        Layout::Histogram(n) => {
            let v = s.value * scale;
            let w = 1.0 / s.rate;
            let b = bounds.unwrap_or(&[]).partition_point(|&ub| ub < v);
            let seq = shard.write_begin(o);
            shard.add_f64(o + 1, w);
            shard.add_f64(o + 2, v * w);
            if b < n as usize {
                shard.add_f64(o + 3 + b as u32, w);
            }
            shard.write_end(o, seq);
        }
        Layout::Summary(half_ms) => {
            let half = batch.time_nanos / (u64::from(half_ms.max(1)) * 1_000_000) + 1;
            let seq = shard.write_begin(o);
            sketch::observe(shard, o, half, s.value * scale, 1.0 / s.rate);
            shard.write_end(o, seq);
        }
        Layout::Set => {
            let h = SET_HASHER.hash_one(s.member.as_bytes());
            let reg = (h >> (64 - HLL_P)) as u32;
            // Rank of the first set bit after the register bits, capped at 64 - P + 1.
            let rank = ((h << HLL_P) | (1 << (HLL_P - 1))).leading_zeros() as u8 + 1;
            let slot = (batch.set_half % 2) as u32;
            let seq = shard.write_begin(o);
            if shard.word(o + 1 + slot).load(Ordering::Relaxed) != batch.set_half {
                let base = o + 4 + slot * HLL_WORDS;
                for i in 0..HLL_WORDS {
                    shard.word(base + i).store(0, Ordering::Relaxed);
                }
                shard
                    .word(o + 1 + slot)
                    .store(batch.set_half, Ordering::Relaxed);
            }
            let w = shard.word(o + 4 + slot * HLL_WORDS + reg / 8);
            let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
            let byte = &mut bytes[(reg % 8) as usize];
            if rank > *byte {
                *byte = rank;
                w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
            shard.write_end(o, seq);
        }
    }
    shard
        .word(o + layout.stamp())
        .store(batch.stamp, Ordering::Relaxed);
}

impl Writer {
    /// Call before each batch (and at least every 100 ms while idle): picks up a new config
    /// or a store epoch (clearing the cache) and reads the clock once for the batch.
    pub fn begin_batch(&mut self) {
        if !self.live.is_current(&self.snap) {
            self.snap = self.live.load();
            self.cache.clear();
        }
        let epoch = self.store.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.cache.clear();
            self.epoch = epoch;
            self.shard.seen_epoch.store(epoch, Ordering::Release);
        }
        let now = self.store.clock.now();
        self.batch = Batch {
            stamp: now.as_secs() + 1,
            time_nanos: now.as_nanos() as u64 + 1,
            set_half: half_window_index(now, self.snap.config.defaults.set_window),
        };
        let cap = self
            .snap
            .config
            .limits
            .max_series
            .saturating_mul(2)
            .max(1024);
        if self.cache.len() > cap || self.cache.key_bytes() > CACHE_KEY_BYTES {
            self.cache.clear();
        }
    }

    /// The config snapshot this writer currently uses.
    pub fn snapshot(&self) -> &sync::Arc<Snapshot> {
        &self.snap
    }

    /// Parses and aggregates one datagram (or one stream line). With `truncated`, the last
    /// line was cut off by the buffer: it is counted as truncated and not parsed.
    pub fn ingest(&mut self, datagram: &[u8], truncated: bool) {
        if !truncated {
            // Lines are split and their keys hashed up to `AHEAD` at a time, then looked up:
            // two tight loops, in which one line's work (the hash's multiplies, the table's
            // loads) overlaps the next line's instead of waiting for it.
            let mut seps = std::mem::take(&mut self.seps);
            let mut ahead = std::mem::take(&mut self.ahead);
            let mut lines = parse::split_lines(datagram, &mut seps);
            loop {
                ahead.clear();
                self.hash_ahead(datagram, &mut lines, &mut ahead);
                self.lines_hashed(datagram, &ahead);
                if ahead.len() < AHEAD {
                    break;
                }
            }
            drop(lines);
            self.seps = seps;
            self.ahead = ahead;
            return;
        }
        let mut lines = parse::lines(datagram).peekable();
        while let Some(line) = lines.next() {
            if truncated && lines.peek().is_none() {
                self.stats.lines += 1;
                self.stats.parse_errors[ParseError::Truncated.index()] += 1;
                break;
            }
            self.line(line);
        }
    }

    /// Parses and aggregates one line.
    ///
    /// A line seen before skips the parser: its bytes without the value (the line key: up to
    /// the first `:`, and from the `|` after it) look up the entry its first full parse left,
    /// and only the value is parsed; a counter's value is then added inline. The full parse
    /// runs on a miss, and files its one sample's entry under the line key when nothing but
    /// the value can change its outcome: exactly one sample, not a set (whose "value" is the
    /// member), no unknown or excess fields (counted per line), a plain value (a `:` in it is
    /// a v1.1 pack). A hit whose value the fast check refuses (a bad number, a negative
    /// counter) takes the full parse too, which counts it by reason. The parse of everything
    /// but the value depends only on those bytes and the config, and a config swap clears the
    /// cache.
    pub fn line(&mut self, line: &[u8]) {
        let colon = parse::find_byte(b':', line);
        let bar =
            colon.and_then(|c| parse::find_byte(b'|', &line[c + 1..]).map(|b| (c, c + 1 + b)));
        let hash = self.line_hash(line, bar);
        self.split_line(line, bar, hash);
    }

    /// The hash of a line's line key (0 if it has none).
    #[inline(always)]
    fn line_hash(&self, line: &[u8], colon_bar: Option<(usize, usize)>) -> u64 {
        match colon_bar {
            Some((c, b)) => self.cache.line_hash(&line[..=c], &line[b..]),
            None => 0,
        }
    }

    /// The first pass of [`Writer::ingest`]: up to [`AHEAD`] lines split and hashed. Its own
    /// function, as is the second pass, so the compiler inlines each pass's steps into it.
    #[inline(never)]
    fn hash_ahead(
        &self,
        datagram: &[u8],
        lines: &mut impl Iterator<Item = LineSpan>,
        ahead: &mut Vec<(LineSpan, u64)>,
    ) {
        for span in lines.take(AHEAD) {
            let hash = self.line_hash(&datagram[span.start..span.end], span.colon_bar);
            ahead.push((span, hash));
        }
    }

    /// The second pass of [`Writer::ingest`]: the hashed lines looked up and settled.
    #[inline(never)]
    fn lines_hashed(&mut self, datagram: &[u8], lines: &[(LineSpan, u64)]) {
        for &(span, hash) in lines {
            self.split_line(&datagram[span.start..span.end], span.colon_bar, hash);
        }
    }

    /// [`Writer::line`] with the line's first `:` and the first `|` after it already found
    /// ([`parse::split_lines`]), and its line key's hash ([`Writer::line_hash`]).
    #[inline(always)]
    fn split_line(&mut self, line: &[u8], colon_bar: Option<(usize, usize)>, hash: u64) {
        self.stats.lines += 1;
        let found = match colon_bar {
            Some((colon, bar)) => self.cache.line_value(hash, &line[..=colon], &line[bar..]),
            None => None,
        };
        // The common case, a counter series fed by a counter line, inline and without a
        // `Hit`: what `settle` and `apply` do for it. (`counter_value` refuses a v1.1 pack's
        // `1:2`, so the value is a plain one.)
        if let (Some((colon, bar)), Some(offset)) =
            (colon_bar, found.and_then(cache::plain_counter))
            && let Some(v) = counter_value(&line[colon + 1..bar])
        {
            self.stats.cache_hits += 1;
            self.stats.samples[Stats::sample_kind_index(MetricType::Counter)] += 1;
            self.shard.add_counter(offset, v, self.batch.stamp);
            return;
        }
        self.other_line(line, colon_bar, found);
    }

    /// [`Writer::split_line`] for any line but a known counter's: a known line key's other
    /// entries (`found`: its filed value) settle through the `Hit` they decode to, the rest
    /// takes the full parse.
    #[inline(never)]
    fn other_line(&mut self, line: &[u8], colon_bar: Option<(usize, usize)>, found: Option<u32>) {
        let split = colon_bar.filter(|&(c, b)| plain_value(&line[c + 1..b]));
        self.has_line_key = split.is_some();
        if let Some((colon, bar)) = split {
            if let Some(h) = found.map(|v| self.cache.decode(v))
                && let Target::Series { .. } = h.target
                && let Some(s) = quick_sample(&line[colon + 1..bar], h.kind, h.rate)
            {
                self.stats.cache_hits += 1;
                settle(&h, &self.shard, &self.batch, &mut self.stats, s, true);
                return;
            }
            self.line_key.clear();
            self.line_key.push(LINE_KEY);
            self.line_key.extend_from_slice(&line[..=colon]);
            self.line_key.extend_from_slice(&line[bar..]);
        }
        self.line_samples = 0;
        let opts = parse::ParseOptions {
            dogstatsd_tags: self.snap.config.parse.dogstatsd_tags,
        };
        let parsed = parse::parse_line(line, &opts, &mut |s| self.record(s));
        let one_plain_sample = matches!(parsed, Ok(Parsed::Metric(info)) if info == LineInfo::default())
            && self.line_samples == 1;
        self.file_pending(one_plain_sample);
        self.has_line_key = false;
        match parsed {
            Ok(Parsed::Metric(info)) => self.line_info(info),
            Ok(Parsed::Special(sp)) => self.special(&sp),
            Err(e) => self.stats.parse_errors[e.index()] += 1,
        }
    }

    /// Files the held-back entry of the line's first sample: under the line key when the line
    /// was one plain sample of a series other than a set, else under its sample key (if that
    /// is not cached yet). One entry per series per writer in the common case.
    fn file_pending(&mut self, line_key: bool) {
        let Some((mut e, new)) = self.pending.take() else {
            return;
        };
        match &mut e {
            Entry::Series {
                layout, kind, rate, ..
            } if line_key && *layout != Layout::Set => {
                *kind = self.line_kind;
                *rate = self.line_rate;
                self.cache.insert(&self.line_key, e);
            }
            _ if new => self.cache.insert(&self.pending_key, e),
            _ => {}
        }
    }

    fn line_info(&mut self, info: LineInfo) {
        self.stats.unknown_fields += u64::from(info.unknown_fields);
        self.stats.tag_errors[TagError::TooManyFields as usize] +=
            u64::from(info.dropped_tag_fields);
    }

    /// Builds the cache key of a sample: type, raw name, raw tag fields, container id.
    fn build_key(&mut self, kind: u8, name: &str, tags: &[&str], extra: &str) {
        self.key.clear();
        self.key.push(kind);
        self.key.extend_from_slice(name.as_bytes());
        for t in tags {
            self.key.push(0xff);
            self.key.extend_from_slice(t.as_bytes());
        }
        self.key.push(0xfe);
        self.key.extend_from_slice(extra.as_bytes());
    }

    /// Looks the built key up in the cache, resolving and caching it on a miss, and settles
    /// the sample. The hit path clones nothing and takes no lock. The first sample of a line
    /// that has a line key is held back ([`Writer::file_pending`]) instead of cached.
    fn settle_key(
        &mut self,
        s: &Sample<'_>,
        counted: bool,
        resolve: impl FnOnce(&mut Self) -> Entry,
    ) {
        let hold = self.has_line_key && self.line_samples == 1 && counted;
        if let Some(h) = self.cache.get(self.key.as_slice()) {
            self.stats.cache_hits += 1;
            settle(
                &h,
                &self.shard,
                &self.batch,
                &mut self.stats,
                s.into(),
                counted,
            );
            if hold {
                self.pending = Some((h.to_entry(), false));
            }
            return;
        }
        self.stats.cache_misses += 1;
        let e = resolve(self);
        settle(
            &e.hit(),
            &self.shard,
            &self.batch,
            &mut self.stats,
            s.into(),
            counted,
        );
        // Limit refusals are not cached: the limit may free up, and an attacker's unique
        // names must not grow the cache.
        if matches!(
            e,
            Entry::Refused {
                reason: Refusal::MaxSeries | Refusal::MaxSeriesPerMetric,
                ..
            }
        ) {
            return;
        }
        if hold {
            self.pending_key.clone_from(&self.key);
            self.pending = Some((e, true));
        } else {
            self.cache.insert(&self.key, e);
        }
    }

    /// Aggregates one parsed sample.
    pub fn record(&mut self, s: &Sample<'_>) {
        if self.line_samples == 1 {
            // A second sample: the line is not one sample, and this one may share the key.
            self.file_pending(false);
        }
        self.line_samples += 1;
        self.line_kind = s.kind;
        self.line_rate = s.rate;
        let cid = if self.snap.config.parse.container_id_label {
            s.container_id.unwrap_or("")
        } else {
            ""
        };
        self.build_key(s.kind as u8, s.name, s.tags.as_slice(), cid);
        self.settle_key(s, true, |w| w.resolve(s));
    }

    /// Resolves a sample's raw name and tags to a series (the cache-miss path).
    fn resolve(&mut self, s: &Sample<'_>) -> Entry {
        let snap = self.snap.clone();
        let cfg = &snap.config;
        let mut errors = TagErrors::default();
        let mut tags = Vec::new();
        let base = names::split_name_tags(s.name, &cfg.parse, &mut tags, &mut errors);
        for t in s.tags.iter() {
            names::one_tag(t, ':', &mut tags, &mut errors);
        }
        if cfg.parse.container_id_label
            && let Some(c) = s.container_id.filter(|c| !c.is_empty())
        {
            tags.push(("container_id".into(), c.into()));
        }
        let refused = |reason, rule| Entry::Refused {
            reason,
            rule,
            tag_errors: errors,
        };
        if base.is_empty() {
            return refused(Refusal::EmptyName, 0);
        }
        let observer = s.kind.is_observer();
        let default_scale = if s.kind == MetricType::Timer {
            0.001
        } else {
            1.0
        };
        let default_buckets = || -> Arc<[f64]> {
            let b = if s.kind == MetricType::Timer {
                &cfg.defaults.timer_buckets
            } else {
                &cfg.defaults.histogram_buckets
            };
            Arc::from(b.as_slice())
        };
        let (name, ttl, buckets, help, scale, summary) = match snap.mapper.map(&base, s.kind) {
            Mapped::Unmapped => {
                self.stats.unmapped += 1;
                (
                    names::metric_name(&base),
                    cfg.defaults.ttl,
                    None,
                    None,
                    default_scale,
                    None,
                )
            }
            Mapped::Drop { rule } => return refused(Refusal::MappingDrop, rule),
            Mapped::Map {
                name,
                labels,
                ttl,
                buckets,
                help,
                scale,
                summary,
                ..
            } => {
                if name.is_empty() {
                    return refused(Refusal::InvalidMappedName, 0);
                }
                tags.extend(labels.into_iter().filter(|(_, v)| !v.is_empty()));
                (
                    names::metric_name(&name),
                    ttl.unwrap_or(cfg.defaults.ttl),
                    buckets,
                    help,
                    scale.unwrap_or(default_scale),
                    summary,
                )
            }
        };
        let (family, kind, layout) = match s.kind {
            MetricType::Counter => {
                let f = if name.ends_with("_total") {
                    name
                } else {
                    format!("{name}_total")
                };
                (f, FamilyKind::Counter, Layout::Counter)
            }
            MetricType::Gauge => (name, FamilyKind::Gauge, Layout::Gauge),
            MetricType::Set => (name, FamilyKind::Set, Layout::Set),
            _ => match &summary {
                Some(sm) => {
                    let half_ms = u32::try_from((sm.window / 2).as_millis()).unwrap_or(u32::MAX);
                    (name, FamilyKind::Summary, Layout::Summary(half_ms))
                }
                None => (name, FamilyKind::Histogram, Layout::Histogram(0)),
            },
        };
        let labels = names::render_labels(tags, observer, &mut errors);
        let (buckets, window) = match &summary {
            Some(sm) if observer => (Some(sm.quantiles.clone()), sm.window),
            _ => (
                observer.then(|| buckets.unwrap_or_else(default_buckets)),
                Duration::ZERO,
            ),
        };
        let layout = match (layout, &buckets) {
            (Layout::Histogram(_), Some(b)) => Layout::Histogram(b.len() as u8),
            (l, _) => l,
        };
        self.create(
            &family, kind, &labels, layout, ttl, help, buckets, window, scale, errors, s.kind,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        family: &str,
        kind: FamilyKind,
        labels: &str,
        layout: Layout,
        ttl: Duration,
        help: Option<Arc<str>>,
        buckets: Option<Arc<[f64]>>,
        window: Duration,
        scale: f64,
        tag_errors: TagErrors,
        sample: MetricType,
    ) -> Entry {
        let r = self.store.find_or_create(NewSeries {
            family,
            kind,
            labels,
            layout,
            ttl,
            help,
            buckets: buckets.clone(),
            window,
            limits: &self.snap.config.limits,
        });
        match r {
            Ok(offset) => Entry::Series {
                offset,
                layout,
                kind: sample,
                scale,
                rate: 1.0,
                buckets: if matches!(layout, Layout::Histogram(_)) {
                    buckets
                } else {
                    None
                },
                tag_errors,
            },
            Err(reason) => Entry::Refused {
                reason,
                rule: 0,
                tag_errors,
            },
        }
    }

    /// Aggregates an event or service check.
    fn special(&mut self, sp: &Special<'_>) {
        let (kind, name, tags, extra, value) = match sp {
            Special::Event {
                alert_type,
                priority,
                tags,
            } => {
                self.stats.events += 1;
                (b'E', *alert_type, tags, *priority, 1.0)
            }
            Special::ServiceCheck { name, status, tags } => {
                self.stats.service_checks += 1;
                (b'S', *name, tags, "", f64::from(*status))
            }
        };
        let sample = Sample {
            name,
            kind: if kind == b'E' {
                MetricType::Counter
            } else {
                MetricType::Gauge
            },
            value,
            delta: false,
            rate: 1.0,
            member: "",
            tags: *tags,
            container_id: None,
        };
        self.build_key(kind, name, tags.as_slice(), extra);
        // Events and checks are counted on their own, not as samples.
        self.settle_key(&sample, false, |w| {
            let mut errors = TagErrors::default();
            let mut labels = Vec::new();
            for t in tags.iter() {
                names::one_tag(t, ':', &mut labels, &mut errors);
            }
            let (family, fk, layout, fixed) = if kind == b'E' {
                (
                    "statsd_events_total",
                    FamilyKind::Counter,
                    Layout::Counter,
                    [("alert_type", name), ("priority", extra)],
                )
            } else {
                (
                    "statsd_service_check_status",
                    FamilyKind::Gauge,
                    Layout::Gauge,
                    [("check", name), ("", "")],
                )
            };
            // The fixed labels go last so a tag cannot override them.
            labels.extend(
                fixed
                    .iter()
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            let labels = names::render_labels(labels, false, &mut errors);
            let ttl = w.snap.config.defaults.ttl;
            w.create(
                family,
                fk,
                &labels,
                layout,
                ttl,
                None,
                None,
                Duration::ZERO,
                1.0,
                errors,
                sample.kind,
            )
        });
    }
}

/// Lines a writer splits and hashes ahead of looking them up ([`Writer::ingest`]).
const AHEAD: usize = 64;

/// A writer empties its cache when the keys in it pass this many bytes.
const CACHE_KEY_BYTES: usize = 256 << 20;

/// Whether a line's value (between its first `:` and the `|` after it) is one value: not empty,
/// and no `:` of a v1.1 pack.
#[inline]
fn plain_value(value: &[u8]) -> bool {
    // A value is a few bytes: a plain loop beats memchr's call here.
    !value.is_empty() && !value.contains(&b':')
}

/// The sample a known line key's value makes, if the value is one the parser accepts for
/// `kind` (the same checks as [`parse::parse_line`]); `None` sends the line to the parser.
#[inline]
fn quick_sample(raw: &[u8], kind: MetricType, rate: f64) -> Option<Obs<'static>> {
    let value = if kind == MetricType::Counter {
        counter_value(raw)?
    } else {
        parse::parse_value_bytes(raw).ok()?
    };
    Some(Obs {
        kind,
        value,
        delta: kind == MetricType::Gauge && matches!(raw[0], b'+' | b'-'),
        rate,
        member: "",
    })
}

/// A counter line's value, if the parser would take it: a number, not negative.
#[inline(always)]
fn counter_value(raw: &[u8]) -> Option<f64> {
    parse::parse_value_bytes(raw).ok().filter(|v| *v >= 0.0)
}

/// Set members hash the same in every worker, so their registers merge.
static SET_HASHER: std::sync::LazyLock<ahash::RandomState> = std::sync::LazyLock::new(|| {
    ahash::RandomState::with_seeds(
        0x7a11_d5e7,
        0x5e75_0f00,
        0x1234_5678_9abc_def0,
        0x0fed_cba9_8765_4321,
    )
});
