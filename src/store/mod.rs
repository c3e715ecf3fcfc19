//! The aggregate store: a series registry and one cache-padded shard per ingest worker.
//!
//! The store owns where values live and how they are read back; it knows nothing of the
//! wire protocol or of Prometheus text. Its parts:
//!
//! - this module: the registry (series creation under one mutex, limits, the family claim
//!   checked against [`crate::naming`]'s rules), the store epoch and expiry ([`Store::sweep`]);
//! - [`arena`]: the shards, one per writer, their words in 128-byte aligned segments;
//! - `catalog`: series keys, families and their name order, packed for memory;
//! - [`write`](mod@write): how one observation lands in a shard's words, per layout (the hot path's last
//!   step, called by [`crate::pipeline`]);
//! - [`read`]: a scrape's chunked walk over the families in name order, summing the shards;
//! - [`sketch`]: the summary quantile sketch;
//! - [`census`]: series per family and a family's label values, for the status page;
//! - [`departed`]: the series that left the exposition (expired), for remote write's
//!   staleness markers.
//!
//! # Memory layout
//! A series is a family name, a rendered label set and a word range `offset..offset+len`
//! that is the same in every shard ([`arena::Shard`]). Each ingest worker owns one
//! [`crate::pipeline::Writer`], and the writer owns one shard: the only thread that ever
//! stores into that shard's words. Counters take 2 words per worker (value, last-seen stamp),
//! gauges 4, histograms 4 + buckets, sets 4 + 2 x 128 (two HyperLogLog halves). Words of
//! different shards live in different 128-byte aligned segments, so no two workers write one
//! cache line, and there is no per-series padding (a counter costs 16 bytes per worker, not
//! 128).
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
mod catalog;
pub mod census;
pub mod departed;
pub mod native;
pub mod read;
pub mod sketch;
pub mod write;

use std::collections::HashMap;

use std::time::Duration;

use arena::Shard;
use catalog::{Catalog, FamilyClaim, Placement, SeriesMeta, State};

use crate::clock::{Clock, Throttle};
use crate::naming::{self, FamilyKind};
// Immutable shared data (names, bounds, the store handle) uses std's `Arc`; what the loom
// models must track (shards, the config snapshot) goes through the `crate::sync` facade.
use std::sync::Arc;

use crate::sync::{self, AtomicU64, Mutex, Ordering, load_own, lock};

/// HyperLogLog precision of sets: 2^10 registers, standard error 1.04/sqrt(1024) = 3.25%.
pub(crate) const HLL_P: u32 = 10;
pub(crate) const HLL_WORDS: u32 = (1 << HLL_P) / 8;

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
    /// A histogram with a native part: `[seq, count, sum, bucket * n, stamp, native...]`
    /// (see [`native`]); its classic bucket count, initial schema and positive window. Its
    /// bounds (in the family and the writer's cache entry) end with the zero threshold.
    Native(u8, i8, u16),
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
            Self::Native(n, _, w) => 4 + u32::from(n) + native::words(w),
        }
    }

    /// Offset of the last-seen stamp within the series.
    pub(crate) fn stamp(self) -> u32 {
        match self {
            Self::Counter => 1,
            Self::Gauge | Self::Set => 3,
            Self::Summary(_) => 1,
            Self::Histogram(n) | Self::Native(n, ..) => 3 + u32::from(n),
        }
    }
}

/// The Prometheus type a family was claimed with.
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
/// then ([`Store::fingerprint`]). Kept beside the series, not in it: few series retire at a
/// time, and every series pays for its own fields.
#[derive(Debug, Clone, Copy)]
struct Mark {
    id: u32,
    epoch: u64,
    print: u64,
}

/// A series found or created: where it is, and the layout and bounds its writes follow.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub offset: u32,
    pub layout: Layout,
    pub buckets: Option<Arc<[f64]>>,
}

/// What a writer needs to create a series.
pub(crate) struct NewSeries<'a> {
    pub family: &'a str,
    pub kind: FamilyKind,
    pub labels: &'a str,
    pub layout: Layout,
    pub ttl: Duration,
    pub help: Option<Arc<str>>,
    pub buckets: Option<Arc<[f64]>>,
    pub window: Duration,
    pub limits: &'a crate::config::Limits,
}

struct Registry {
    cat: Catalog,
    free_words: HashMap<u32, Vec<u32>>,
    next_word: u32,
    /// Live + retiring series (the ones counted against limits).
    count: usize,
    retiring: Vec<Mark>,
    /// The "series limit reached" warning, at most once per 10 s of the store's clock.
    limit_log: Throttle,
}

/// The store: registry, shards, epoch and clock.
pub struct Store {
    registry: Mutex<Registry>,
    shards: Mutex<Vec<sync::Arc<Shard>>>,
    epoch: AtomicU64,
    hasher: foldhash::quality::RandomState,
    clock: std::sync::Arc<dyn Clock>,
    reserved: Vec<String>,
    /// Series count, readable without the registry lock (for `tallyd_series`).
    series_gauge: AtomicU64,
    expired: AtomicU64,
    /// Series that left the exposition, while someone wants to know.
    departures: departed::Departures,
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
                limit_log: Throttle::new(LIMIT_LOG_EVERY),
            }),
            shards: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            hasher: foldhash::quality::RandomState::default(),
            clock,
            reserved,
            series_gauge: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            departures: departed::Departures::default(),
        })
    }

    /// A new shard, registered for scrapes: one per writer ([`crate::pipeline::Writer`]),
    /// which is its only writer.
    pub fn new_shard(&self) -> sync::Arc<Shard> {
        let shard = sync::Arc::new(Shard::new(self.epoch.load(Ordering::Acquire)));
        lock(&self.shards).push(shard.clone());
        shard
    }

    /// The store epoch: a sweep that marks series idle bumps it, and every writer clears its
    /// cache of resolved offsets when it sees a new one (see *Expiry*).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The store's clock.
    pub fn now(&self) -> Duration {
        self.clock.now()
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

    /// Finds or creates the series. A series of a family that exists takes the family's
    /// layout and bounds (fixed by its first series), whatever `n` asks for.
    pub(crate) fn find_or_create(&self, n: NewSeries<'_>) -> Result<Found, Refusal> {
        let mut key = String::with_capacity(n.family.len() + 1 + n.labels.len());
        key.push_str(n.family);
        key.push('\0');
        key.push_str(n.labels);
        let mut reg = lock(&self.registry);
        let reg = &mut *reg;
        let hash = reg.cat.key_hash(&key);
        if let Some(id) = reg.cat.find(hash, &key) {
            let (kind, buckets) = {
                let f = reg.cat.family(reg.cat.family_of(id));
                (f.kind, f.buckets_arc())
            };
            let meta = reg.cat.series_mut(id);
            if kind != n.kind {
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
            return Ok(Found {
                offset: meta.offset,
                layout: meta.layout,
                buckets,
            });
        }
        // A new series: check the family claim and the limits.
        let fid = reg.cat.family_id(n.family);
        // The family's first series fixes the layout and bounds of the others.
        let (layout, buckets) = match fid.map(|f| reg.cat.family(f)) {
            Some(f) if f.kind == n.kind => match f.member(0) {
                Some(first) => (reg.cat.series(first).layout, f.buckets_arc()),
                None => (n.layout, n.buckets.clone()),
            },
            _ => (n.layout, n.buckets.clone()),
        };
        match fid.map(|f| reg.cat.family(f)) {
            Some(f) if f.kind != n.kind => return Err(Refusal::Conflict),
            Some(f)
                if n.limits.max_series_per_metric > 0
                    && f.len() >= n.limits.max_series_per_metric =>
            {
                log_limit(
                    &mut reg.limit_log,
                    self.clock.now(),
                    n.family,
                    "max_series_per_metric",
                );
                return Err(Refusal::MaxSeriesPerMetric);
            }
            Some(_) => {}
            None => {
                if naming::is_reserved(n.family, n.kind, &self.reserved) {
                    return Err(Refusal::ReservedName);
                }
                let cat = &reg.cat;
                if naming::collides(n.family, n.kind, |f| {
                    cat.family_id(f).map(|id| cat.family(id).kind)
                }) {
                    return Err(Refusal::Conflict);
                }
            }
        }
        if reg.count >= n.limits.max_series || !reg.cat.has_room(key.len()) {
            log_limit(&mut reg.limit_log, self.clock.now(), n.family, "max_series");
            return Err(Refusal::MaxSeries);
        }
        let len = layout.words();
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
            layout,
            ttl: u32::try_from(n.ttl.as_secs()).unwrap_or(u32::MAX),
        };
        reg.cat.insert(hash, &key, family, at);
        reg.count += 1;
        self.series_gauge.store(reg.count as u64, Ordering::Relaxed);
        Ok(Found {
            offset,
            layout,
            buckets,
        })
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
            self.departures.record(&reg.cat, id);
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
}

/// How often the series-limit warning may be logged.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

fn log_limit(throttle: &mut Throttle, now: Duration, family: &str, limit: &str) {
    if throttle.pass(now) {
        tracing::warn!(
            metric = family,
            limit,
            "series limit reached; new series are refused (logged at most every 10s)"
        );
    }
}

/// The index of the half-window `now` falls in (sets and summaries keep two halves), from 1.
pub(crate) fn half_window_index(now: Duration, window: Duration) -> u64 {
    let half = (window / 2).as_nanos().max(1);
    (now.as_nanos() / half) as u64 + 1
}
